"""Writing models in the layouts users' files have (LDM single file, original AnimateDiff).

Used to make test fixtures, benchmark files and the toy models; the names come from the
inverse mappings in ``keys``, so what is written is read back by the users' path.
"""
import torch

from . import keys
from .files import save_safetensors, temp_file_beside


def checkpoint_tensors(unet_sd, vae_sd, clip_sd, layout, vae_levels_layers, dtype=None):
    """Diffusers-named parts -> one LDM-layout state dict (``model.diffusion_model.`` etc.)."""
    out = {}
    for k, v in keys.unet_diffusers_to_ldm(unet_sd, layout).items():
        out[keys.UNET_PREFIX + k] = v
    for k, v in keys.vae_diffusers_to_ldm(vae_sd, *vae_levels_layers).items():
        out[keys.VAE_PREFIX + k] = v
    for k, v in keys.clip_transformers_to_ldm(clip_sd).items():
        out[keys.CLIP_PREFIX + k] = v
    if dtype is not None:
        out = {k: v.to(dtype) if v.is_floating_point() else v for k, v in out.items()}
    return out


def motion_module_tensors(motion_sd, dtype=None):
    """Diffusers motion-module names -> original AnimateDiff names (both positional tables)."""
    out = {}
    for k, v in motion_sd.items():
        new = keys.motion_diffusers_to_original(k)
        out[new] = v
        if new.endswith("attention_blocks.0.pos_encoder.pe"):
            out[new.replace("attention_blocks.0", "attention_blocks.1")] = v.clone()
    if dtype is not None:
        out = {k: v.to(dtype) for k, v in out.items()}
    return out


def write_checkpoint(path, tensors, fmt="safetensors", overwrite=False):
    """Write a state dict as .safetensors (atomic) or a zip-format .ckpt with a state_dict wrapper."""
    if fmt == "safetensors":
        return save_safetensors(tensors, path, overwrite=overwrite)
    import os
    from pathlib import Path
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} already exists; refusing to overwrite it.")
    tmp = temp_file_beside(path)
    torch.save({"state_dict": tensors}, tmp)
    os.replace(tmp, path)
    return path


def controlnet_tensors(controlnet_sd, config, prefix=keys.CONTROLNET_PREFIX, dtype=None):
    """Diffusers ``ControlNetModel`` names -> lllyasviel's single-file layout
    (``control_model.input_blocks...``; ``prefix=""`` for the variant without it)."""
    layout = keys.UNetLayout(len(config["block_out_channels"]), config["layers_per_block"],
                             tuple(t.startswith("CrossAttn") for t in config["down_block_types"]))
    hint_blocks = 2 * (len(config["conditioning_embedding_out_channels"]) - 1)
    out = {prefix + k: v for k, v in keys.controlnet_diffusers_to_ldm(controlnet_sd, layout, hint_blocks).items()}
    if dtype is not None:
        out = {k: v.to(dtype) if v.is_floating_point() else v for k, v in out.items()}
    return out
