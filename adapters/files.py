"""Reading and writing files safely: tensors, text and videos.

Pickled checkpoints are read with ``weights_only=True`` so no file can run code; writes go to
a temporary file that is renamed into place, and never over an existing file unless asked.
"""
import os
import tempfile
from pathlib import Path

import torch

from .errors import ModelFileError

WRAPPER_KEYS = ("state_dict", "module", "model")


def read_state_dict(path, dtype=None):
    """All tensors of a .safetensors/.ckpt/.pt/.bin file, unwrapped from a training wrapper.

    ``dtype`` converts floating tensors one at a time, so a fp16 file read as fp32 never
    holds two full copies.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(path, "file not found.", "Check the name and the models folder.")
    if path.stat().st_size == 0:
        raise ModelFileError(path, "the file is empty.", "Download or copy it again.")
    suffix = path.suffix.lower()
    if suffix in (".safetensors", ".sft"):
        sd = _read_safetensors(path, dtype)
    elif suffix in (".ckpt", ".pt", ".pth", ".bin"):
        sd = _read_pickle(path, dtype)
    else:
        raise ModelFileError(path, f"unknown file type '{suffix}'.",
                             "Use a .safetensors or .ckpt file.")
    if not sd:
        raise ModelFileError(path, "the file holds no tensors.", "It is not a model file.")
    return sd


def read_metadata(path):
    """The string metadata of a safetensors file ({} for other formats)."""
    path = Path(path)
    if path.suffix.lower() not in (".safetensors", ".sft"):
        return {}
    from safetensors import safe_open
    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except Exception as e:  # noqa: BLE001 - safetensors raises several types
        raise ModelFileError(path, f"not a readable safetensors file ({e}).",
                             "The file may be truncated: download or copy it again.") from e


def _convert(t, dtype):
    if dtype is not None and t.is_floating_point() and t.dtype != dtype:
        return t.to(dtype)
    return t


def _read_safetensors(path, dtype):
    from safetensors import safe_open
    try:
        out = {}
        with safe_open(str(path), framework="pt") as f:
            for k in f.keys():
                out[k] = _convert(f.get_tensor(k), dtype)
        return out
    except ModelFileError:
        raise
    except Exception as e:  # noqa: BLE001
        raise ModelFileError(path, f"not a readable safetensors file ({e}).",
                             "The file may be truncated: download or copy it again.") from e


def _read_pickle(path, dtype):
    try:
        try:
            obj = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as e:
            if "mmap" not in str(e) and "zip" not in str(e):
                raise
            obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001
        text = str(e)
        if "Weights only load failed" in text or "Unsupported global" in text:
            raise ModelFileError(
                path, "this pickled checkpoint contains objects other than tensors, and "
                "loading it could run code.",
                "Convert it to .safetensors with a tool you trust, or get a .safetensors "
                "version.") from e
        raise ModelFileError(path, f"cannot be read as a PyTorch checkpoint ({text[:200]}).",
                             "The file may be truncated or not a model: copy it again.") from e
    for _ in range(3):
        if isinstance(obj, dict) and not any(torch.is_tensor(v) for v in obj.values()):
            inner = next((obj[k] for k in WRAPPER_KEYS if isinstance(obj.get(k), dict)), None)
            if inner is None:
                break
            obj = inner
    if not isinstance(obj, dict):
        raise ModelFileError(path, "the checkpoint does not hold a dictionary of tensors.")
    return {k: _convert(v, dtype) for k, v in obj.items() if torch.is_tensor(v)}


def safe_child(folder, name):
    """``folder/name`` for a name typed by a user, refusing anything that leaves ``folder``."""
    folder = Path(folder).resolve()
    if not name or os.path.isabs(name):
        raise ValueError(f"'{name}' is not a valid file name: give a name inside {folder}.")
    target = (folder / name).resolve()
    if folder != target and folder not in target.parents:
        raise ValueError(f"'{name}' points outside {folder}: give a plain file name.")
    return target


def unique_path(path):
    """``path`` itself if free, else ``stem_00001.ext``, ``stem_00002.ext``... never an existing file."""
    path = Path(path)
    if not path.exists():
        return path
    i = 1
    while True:
        candidate = path.with_name(f"{path.stem}_{i:05d}{path.suffix}")
        if not candidate.exists():
            return candidate
        i += 1


def temp_file_beside(path):
    """A temp file in ``path``'s folder (so the final rename is atomic), with the permissions a
    normal file would get (mkstemp makes it owner-only)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{Path(path).name}.", suffix=".tmp", dir=str(Path(path).parent))
    os.close(fd)
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(tmp, 0o666 & ~mask)
    return tmp


def write_atomic(path, write, overwrite):
    """``write(tmp)`` fills a temp file in ``path``'s folder, then it takes ``path``'s name:
    replacing it with ``overwrite``, else refusing to clobber, even a file that appears meanwhile."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} already exists; refusing to overwrite it.")
    tmp = temp_file_beside(path)
    try:
        write(tmp)
        if overwrite:
            os.replace(tmp, path)
        else:
            os.link(tmp, path)  # fails if the name appeared meanwhile
            os.unlink(tmp)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def save_safetensors(tensors, path, metadata=None, overwrite=False):
    """Write atomically: a temp file in the same folder, then rename; refuse to clobber."""
    from safetensors.torch import save_file
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}

    def write(tmp):
        mode = os.stat(tmp).st_mode
        save_file(tensors, tmp, metadata={k: str(v) for k, v in (metadata or {}).items()})
        os.chmod(tmp, mode)  # save_file recreates the file owner-only
    return write_atomic(path, write, overwrite)


def write_text(path, text, overwrite=False):
    """A text file (JSON, a report) written like ``save_safetensors``: atomic, no clobbering."""
    def write(tmp):
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
    return write_atomic(path, write, overwrite)


VIDEO_FORMATS = {".gif": "GIF", ".webp": "WEBP", ".mp4": "mp4"}


def write_video(frames, path, fps=8, overwrite=False):
    """Frames (F, H, W, 3) uint8 (a numpy array or a list of PIL images) as an animated GIF,
    lossless WebP or H.264 MP4, by ``path``'s suffix, written like ``save_safetensors``.

    MP4 is yuv420p, which players expect and which needs even sides: odd frames get a black
    row/column. GIF and WebP loop forever."""
    import numpy as np
    from PIL import Image
    path = Path(path)
    kind = VIDEO_FORMATS.get(path.suffix.lower())
    if kind is None:
        raise ValueError(f"{path.name}: write videos as {', '.join(VIDEO_FORMATS)}")
    arrays = [np.asarray(f.convert("RGB") if isinstance(f, Image.Image) else f, dtype=np.uint8) for f in frames]
    if not arrays:
        raise ValueError(f"{path.name}: no frames to write")

    def write_pil(tmp):
        images = [Image.fromarray(a) for a in arrays]
        extra = {"lossless": True} if kind == "WEBP" else {}
        images[0].save(tmp, format=kind, save_all=True, append_images=images[1:], duration=round(1000 / fps),
                       loop=0, **extra)

    def write_mp4(tmp):
        import av
        h, w = arrays[0].shape[:2]
        with av.open(tmp, "w", format="mp4") as out:
            stream = out.add_stream("libx264", rate=int(round(fps)))
            stream.width, stream.height, stream.pix_fmt = w + w % 2, h + h % 2, "yuv420p"
            stream.options = {"crf": "18"}
            for a in arrays:
                a = np.pad(a, ((0, h % 2), (0, w % 2), (0, 0)))
                out.mux(stream.encode(av.VideoFrame.from_ndarray(a, format="rgb24")))
            out.mux(stream.encode())
    return write_atomic(path, write_mp4 if kind == "mp4" else write_pil, overwrite)
