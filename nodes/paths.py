"""Model folders: where users already keep AnimateDiff files, plus the pack's own folder."""
import hashlib
import os

import folder_paths

EXTENSIONS = {".ckpt", ".pt", ".pth", ".safetensors", ".sft", ".bin"}
FOLDERS = ("animatediff_models", "animatediff_motion_lora", "still_moving")


def register():
    """Add our folder kinds unless another pack (AnimateDiff-Evolved) already did; never replace."""
    for name in FOLDERS:
        path = os.path.join(folder_paths.models_dir, name)
        if name in folder_paths.folder_names_and_paths:
            paths, exts = folder_paths.folder_names_and_paths[name]
            if path not in paths:
                paths.append(path)
            exts.update(EXTENSIONS) if isinstance(exts, set) else None
        else:
            folder_paths.folder_names_and_paths[name] = ([path], set(EXTENSIONS))


def files(kind):
    try:
        return sorted(folder_paths.get_filename_list(kind))
    except KeyError:
        return []


def full_path(kind, name):
    """Resolve a listed name; names come from the graph (shared JSON), so refuse anything else."""
    if kind == "checkpoints" and name.startswith("diffusers/"):
        sub = name[len("diffusers/"):]
        for root in folder_paths.get_folder_paths("diffusers"):
            from ..adapters.files import safe_child
            target = safe_child(root, sub)
            if target.is_dir():
                return str(target)
    path = folder_paths.get_full_path(kind, name)
    if path is None:
        raise FileNotFoundError(f"'{name}' is not in models/{kind} (looked in "
                                f"{', '.join(folder_paths.get_folder_paths(kind))}). Put the file there "
                                "and press 'r' in ComfyUI to refresh the lists.")
    return path


def checkpoints_and_folders():
    """Single-file checkpoints plus diffusers pipeline folders (listed as ``diffusers/<name>``)."""
    names = files("checkpoints")
    try:
        roots = folder_paths.get_folder_paths("diffusers")
    except KeyError:
        roots = []
    for root in roots:
        if os.path.isdir(root):
            for sub in sorted(os.listdir(root)):
                if os.path.isdir(os.path.join(root, sub, "unet")):
                    names.append(f"diffusers/{sub}")
    return names


CLIP_SCORING = (("still_moving", "clip_scoring"), ("clip_vision", ""))  # (folder kind, sub-folder)


def clip_scoring_folders():
    """CLIPModel folders (transformers save_pretrained, with config.json) for the scoring node:
    ``models/still_moving/clip_scoring/<name>/``, or ``models/clip_vision/<name>/`` if a full
    CLIPModel folder is kept there. Listed as ``<kind>/<sub>/<name>``."""
    names = []
    for kind, sub in CLIP_SCORING:
        try:
            roots = folder_paths.get_folder_paths(kind)
        except KeyError:
            continue
        for root in roots:
            base = os.path.join(root, sub) if sub else root
            if os.path.isdir(base):
                for name in sorted(os.listdir(base)):
                    if os.path.isfile(os.path.join(base, name, "config.json")):
                        names.append("/".join(p for p in (kind, sub, name) if p))
    return sorted(set(names))


def clip_scoring_path(listed):
    """Resolve a name from ``clip_scoring_folders``. Names come from the graph (shared JSON), so
    only a single folder name directly inside those folders is accepted (it may be a symlink)."""
    for kind, sub in CLIP_SCORING:
        prefix = "/".join(p for p in (kind, sub) if p) + "/"
        name = listed[len(prefix):] if listed.startswith(prefix) else ""
        if not name or name in (".", "..") or "/" in name or "\\" in name:
            continue
        for root in folder_paths.get_folder_paths(kind):
            target = os.path.join(root, sub, name) if sub else os.path.join(root, name)
            if os.path.isdir(target):
                return target
    raise FileNotFoundError(f"'{listed}' is not a CLIP model folder under models/still_moving/clip_scoring/ or "
                            "models/clip_vision/. Put a CLIPModel folder (saved with save_pretrained) there and "
                            "press 'r' in ComfyUI to refresh the lists.")


def stat_fingerprint(path):
    """Path, size, dates and inode of a file, or of every file inside a folder: changes when the
    content is rewritten (in place or replaced), without reading multi-GB checkpoints."""
    path = os.path.realpath(path)
    targets = [path]
    if os.path.isdir(path):
        targets = []
        for dirpath, dirnames, filenames in os.walk(path, followlinks=True):
            dirnames.sort()
            targets += [os.path.join(dirpath, n) for n in sorted(filenames)]
    h = hashlib.sha256()
    for target in targets:
        st = os.stat(target)
        h.update(f"{target}:{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}:{st.st_ino}\n".encode())
    return h.hexdigest()


def fingerprint(kind, name):
    """What a node's IS_CHANGED returns for a file picked from models/<kind>: ComfyUI re-runs the
    node when it changes instead of reusing its cached output. Never raises (a missing file is
    reported when the node runs); a linked or placeholder value is returned as it is."""
    if not isinstance(name, str) or name.startswith("("):
        return repr(name)
    try:
        path = clip_scoring_path(name) if kind == "clip_scoring" else full_path(kind, name)
        return stat_fingerprint(path)
    except Exception as e:  # noqa: BLE001  (IS_CHANGED must answer; the node itself explains)
        return f"unreadable {kind}/{name}: {e}"
