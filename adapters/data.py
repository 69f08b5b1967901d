"""Training data for the adapters: stills and videos in pixel space, then VAE latents.

Still-Moving trains its Spatial Adapters on two kinds of clips (method notes, paper §3.3):
frozen videos built from stills of the customized T2I model, and natural "prior" videos. The
Motion Adapter is trained on natural videos turned into frozen ones. This module reads those
from image/video folders or from the graph, generates prior videos with the base model when the
user has none, and encodes everything to latents once, before training.

Pixel clips are (F, H, W, 3) float32 in [0, 1] on the CPU, ComfyUI's IMAGE layout; a still is a
1-frame clip. Latent clips are (C, F, h, w), diffusers-scaled, float32 on the CPU.
"""
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from .errors import ModelFileError

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".webp")
VIDEO_EXTS = (".mp4", ".webm", ".mov", ".mkv", ".gif", ".avi", ".m4v")


@dataclass
class Clip:
    frames: torch.Tensor   # (F, H, W, 3) float32 in [0, 1]; F == 1 for a still image
    caption: str
    source: str = ""       # file or "graph", for error messages

    def __repr__(self):  # ComfyUI prints node inputs in error reports: keep it to one line
        shape = "x".join(str(s) for s in self.frames.shape)
        return f"Clip({self.source or '?'}, {shape}, {self.caption[:40]!r})"


@dataclass
class LatentClip:
    latents: torch.Tensor  # (C, F, h, w), diffusers-scaled (vae.config.scaling_factor), float32 on CPU
    caption: str
    source: str = ""

    def __repr__(self):
        shape = "x".join(str(s) for s in self.latents.shape)
        return f"LatentClip({self.source or '?'}, {shape}, {self.caption[:40]!r})"


# --- from the graph --------------------------------------------------------------------------

def clips_from_images(images, captions, source="graph"):
    """ComfyUI IMAGE (N, H, W, 3) -> one 1-frame Clip per image.

    ``captions``: one string for all images, or a list with one caption per image.
    """
    if images.dim() == 3:
        images = images.unsqueeze(0)
    if images.dim() != 4 or images.shape[-1] not in (3, 4):
        raise ValueError(f"expected images shaped (N, H, W, 3), got {tuple(images.shape)}.")
    n = images.shape[0]
    if isinstance(captions, str):
        captions = [captions] * n
    captions = list(captions)
    if len(captions) != n:
        raise ValueError(f"{len(captions)} captions for {n} images: give one caption, or one per image.")
    frames = images[..., :3].detach().float().cpu().clamp(0, 1)
    return [Clip(frames[i:i + 1].clone(), str(captions[i]).strip(), f"{source} image {i}") for i in range(n)]


# --- files -----------------------------------------------------------------------------------

def _natural_key(path):
    """frame_2 before frame_10."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", path.name.lower())]


def _listing(folder):
    folder = Path(folder)
    if not folder.is_dir():
        what = "is a file, not a folder" if folder.exists() else "folder not found"
        raise ModelFileError(folder, f"{what}.", "Check the path; give a folder of images or videos.")
    return sorted((p for p in folder.iterdir() if not p.name.startswith(".")), key=_natural_key)


def _caption(candidates, default):
    for txt in candidates:
        if txt.is_file():
            text = txt.read_text(encoding="utf-8", errors="replace").strip()
            if text:
                return text
    return default


def _shrink(frame, max_side):
    """(H, W, 3) uint8 -> float32 [0, 1], scaled down (keeping the aspect) if its longest side
    is over ``max_side``, so a folder of HD videos does not fill the memory."""
    x = frame.float().div_(255)
    h, w = x.shape[:2]
    if max_side and max(h, w) > max_side:
        s = max_side / max(h, w)
        size = (max(1, round(h * s)), max(1, round(w * s)))
        x = F.interpolate(x.permute(2, 0, 1)[None], size=size, mode="bilinear", antialias=True,
                          align_corners=False)[0].permute(1, 2, 0).clamp_(0, 1)
    return x


def _rgb(img):
    """A PIL image (or animation frame) as a (H, W, 3) uint8 tensor; transparent areas white."""
    from PIL import Image
    import numpy as np
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        img = Image.new("RGB", rgba.size, (255, 255, 255))
        img.paste(rgba, mask=rgba.getchannel("A"))
    else:
        img = img.convert("RGB")
    return torch.from_numpy(np.asarray(img, dtype=np.uint8).copy())


def read_image(path, max_side=None):
    """One image file as (H, W, 3) float32 in [0, 1], upright (EXIF), its longest side at most
    ``max_side`` if given."""
    from PIL import Image, ImageOps
    try:
        with Image.open(path) as img:
            arr = _rgb(ImageOps.exif_transpose(img))
    except Exception as e:  # noqa: BLE001 - PIL raises many types for a bad file
        raise ModelFileError(path, f"cannot be read as an image ({str(e)[:200]}).",
                             "The file may be truncated or not an image: copy it again or remove it.") from e
    return _shrink(arr, max_side)


def load_image_folder(folder, default_caption="", max_side=None):
    """Every .png/.jpg/.jpeg/.webp in ``folder`` (not its sub-folders), in name order, as a
    1-frame Clip. Caption: the same-stem .txt beside the image, else ``default_caption``."""
    files = [p for p in _listing(folder) if p.is_file() and p.suffix.lower() in IMAGE_EXTS]
    if not files:
        raise ModelFileError(folder, "the folder has no images.",
                             f"Put {', '.join(IMAGE_EXTS)} files in it (captions in same-name .txt files).")
    return [Clip(read_image(p, max_side)[None], _caption([p.with_suffix(".txt")], default_caption), str(p))
            for p in files]


def decode_video(path, frames, stride, max_side):
    """Up to ``frames`` frames (every ``stride``-th) of a video file, each as ``read_image`` gives one."""
    import av
    kept = []
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise ModelFileError(path, "the file has no video stream.", "Use a video file.")
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            for i, frame in enumerate(container.decode(stream)):
                if i % stride == 0:
                    kept.append(_shrink(torch.from_numpy(frame.to_ndarray(format="rgb24")), max_side))
                    if len(kept) >= frames:
                        break
    except ModelFileError:
        raise
    except Exception as e:  # noqa: BLE001 - PyAV/FFmpeg raise many types for a bad file
        raise ModelFileError(path, f"cannot be decoded as a video ({str(e)[:200]}).",
                             "The file may be truncated or not a video: re-encode it (e.g. to H.264 .mp4), "
                             "copy it again, or remove it.") from e
    return kept


def _animated_webp(path):
    """True for a WebP with more than one frame (ComfyUI's Save Animated WEBP), which FFmpeg
    does not decode; a still WebP is an image."""
    from PIL import Image
    try:
        with Image.open(path) as img:
            return getattr(img, "n_frames", 1) > 1
    except Exception:  # noqa: BLE001 - a bad file is reported when it is read
        return False


def _decode_animated_webp(path, frames, stride, max_side):
    from PIL import Image, ImageSequence
    kept = []
    try:
        with Image.open(path) as img:
            for i, frame in enumerate(ImageSequence.Iterator(img)):
                if i % stride == 0:
                    kept.append(_shrink(_rgb(frame), max_side))
                    if len(kept) >= frames:
                        break
    except Exception as e:  # noqa: BLE001 - PIL raises many types for a bad file
        raise ModelFileError(path, f"cannot be decoded as an animated WebP ({str(e)[:200]}).",
                             "The file may be truncated: copy it again, re-encode it, or remove it.") from e
    return kept


def read_frame_folder(folder, frames, stride, max_side):
    """A folder of one video's frames: up to ``frames`` images (every ``stride``-th, in natural
    name order)."""
    files = [p for p in sorted(folder.iterdir(), key=_natural_key)
             if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTS]
    kept = [read_image(p, max_side) for p in files[::stride][:frames]]
    for p, f in zip(files[::stride], kept):
        if f.shape != kept[0].shape:
            raise ModelFileError(p, f"frame is {f.shape[1]}x{f.shape[0]} but the first frame of {folder.name} "
                                 f"is {kept[0].shape[1]}x{kept[0].shape[0]}.",
                                 "All frames of one clip must have the same size.")
    return kept


def load_video_folder(folder, frames=16, stride=1, default_caption="", max_side=None):
    """One Clip per video file (.mp4/.webm/.mov/.mkv/.gif/.avi/.m4v, decoded with PyAV; an
    animated .webp, with PIL) and per sub-folder of frame images (frames in name order), in name
    order.

    Keeps up to ``frames`` frames, one every ``stride``, from the start. A video with fewer
    keeps what it has if that is at least 2 frames, else it is skipped with a warning.
    Caption: the same-stem .txt beside a video; for a frame folder, caption.txt inside it or
    <folder>.txt beside it; else ``default_caption``.
    """
    if frames < 2:
        raise ValueError(f"frames must be at least 2 for a video clip, got {frames}.")
    if stride < 1:
        raise ValueError(f"stride must be at least 1, got {stride}.")
    clips, skipped = [], []
    for p in _listing(folder):
        if p.is_file() and (p.suffix.lower() in VIDEO_EXTS or (p.suffix.lower() == ".webp" and _animated_webp(p))):
            read = _decode_animated_webp if p.suffix.lower() == ".webp" else decode_video
            kept = read(p, frames, stride, max_side)
            caption = _caption([p.with_suffix(".txt")], default_caption)
        elif p.is_dir():
            kept = read_frame_folder(p, frames, stride, max_side)
            if not kept:
                continue  # not a frame folder
            caption = _caption([p / "caption.txt", p.with_name(p.name + ".txt")], default_caption)
        else:
            continue
        if len(kept) < 2:
            skipped.append(p)
            warnings.warn(f"{p}: skipped, it has {len(kept)} usable frame(s) at stride {stride}; "
                          "a training clip needs at least 2.", stacklevel=2)
            continue
        if any(f.shape != kept[0].shape for f in kept):
            raise ModelFileError(p, "the video changes size midway.", "Re-encode it at one size.")
        clips.append(Clip(torch.stack(kept), caption, str(p)))
    if not clips:
        why = f" ({len(skipped)} too short: {', '.join(s.name for s in skipped[:3])})" if skipped else ""
        raise ModelFileError(folder, f"the folder has no usable videos{why}.",
                             f"Put {', '.join(VIDEO_EXTS)} files in it, or sub-folders of "
                             f"{'/'.join(IMAGE_EXTS)} frames (captions in same-name .txt files).")
    return clips


# --- geometry and latents --------------------------------------------------------------------

def resize_crop(frames, width, height):
    """Centre-crop (F, H, W, 3) frames to the target aspect, then resize (bilinear, antialiased)
    to (F, height, width, 3)."""
    _, h, w, _ = frames.shape
    target = width / height
    if w / h > target:
        ch, cw = h, min(w, max(1, round(h * target)))
    else:
        ch, cw = min(h, max(1, round(w / target))), w
    top, left = (h - ch) // 2, (w - cw) // 2
    x = frames[:, top:top + ch, left:left + cw]
    if (ch, cw) != (height, width):
        x = F.interpolate(x.permute(0, 3, 1, 2).float(), size=(height, width), mode="bilinear",
                          antialias=True, align_corners=False).permute(0, 2, 3, 1).clamp(0, 1)
    return x.contiguous()


def encode_clips(vae, clips, width, height, chunk=8, callback=None):
    """Clips -> LatentClips: each resized with ``resize_crop`` to (width, height), scaled to
    [-1, 1] and encoded with the VAE on its own device and dtype, taking the posterior mean
    (deterministic) times ``scaling_factor``, a few frames at a time.

    ``vae``: a diffusers AutoencoderKL (or a VideoModel, whose VAE is used).
    ``callback(done, total)`` after each clip.
    """
    if width % 8 or height % 8 or width <= 0 or height <= 0:
        raise ValueError(f"width and height must be positive multiples of 8, got {width}x{height}.")
    vae = getattr(vae, "vae", vae)
    param = next(vae.parameters())
    device, dtype = param.device, param.dtype
    scale = vae.config.scaling_factor
    out = []
    with torch.no_grad():
        for n, clip in enumerate(clips):
            zs = []
            for s in range(0, clip.frames.shape[0], chunk):
                x = resize_crop(clip.frames[s:s + chunk], width, height)
                x = x.permute(0, 3, 1, 2).to(device, dtype) * 2 - 1
                zs.append(vae.encode(x).latent_dist.mean.float().cpu() * scale)
            out.append(LatentClip(torch.cat(zs).permute(1, 0, 2, 3).contiguous(), clip.caption, clip.source))
            if callback is not None:
                callback(n + 1, len(clips))
    return out


def frozen(latent_clip, generator):
    """A "frozen video" source frame (paper §3.2): one frame of the clip drawn with
    ``generator``, as (C, 1, h, w). The trainer repeats it F times."""
    z = latent_clip.latents if isinstance(latent_clip, LatentClip) else latent_clip
    i = int(torch.randint(z.shape[1], (1,), generator=generator))
    return z[:, i:i + 1].clone()


# --- prior videos made by the base model -----------------------------------------------------

def generate_prior_clips(model, prompts, count, seed, frames, width, height, steps=20, cfg=7.5,
                         callback=None, negative_prompt="", scheduler="euler"):
    """``count`` natural videos from the (non-customized) video model, for prior preservation.

    Prompts cycle; clip i uses seed + i. Runs on the device the model is on.
    ``callback(done, total, latents, denoised)`` counts steps over all clips (and may raise to cancel).
    """
    from . import sampling
    if isinstance(prompts, str):
        prompts = prompts.splitlines()
    prompts = [p.strip() for p in prompts if p and p.strip()]
    if not prompts:
        raise ValueError("no prompts: give at least one prompt describing a natural video.")
    if count < 1:
        raise ValueError(f"count must be at least 1, got {count}.")
    device = next(model.unet.parameters()).device
    uncond = sampling.encode_text(model, [negative_prompt], device)
    conds = {}
    clips = []
    for i in range(count):
        prompt = prompts[i % len(prompts)]
        if prompt not in conds:
            conds[prompt] = sampling.encode_text(model, [prompt], device)
        step_cb = None if callback is None else (
            lambda step, total, x, x0, i=i: callback(i * total + step, count * total, x, x0))
        latents = sampling.sample(model, conds[prompt], uncond, seed=seed + i, steps=steps, cfg=cfg,
                                  scheduler=scheduler, width=width, height=height, frames=frames,
                                  device=device, callback=step_cb)
        clips.append(Clip(sampling.decode(model, latents), prompt, f"generated prior {i} (seed {seed + i})"))
    return clips
