"""Model folders: where users already keep AnimateDiff files, plus the pack's own folder."""
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
