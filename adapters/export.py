"""Writing models in the layouts users' files have (LDM single file, original AnimateDiff,
kohya LoRA, AnimateDiff MotionLoRA): the pack's exports, and the test fixtures and toy models.

The names come from the inverse mappings in ``keys``, so what is written is read back by the
users' loaders (ComfyUI's Load Checkpoint and LoraLoader, AnimateDiff-Evolved's Load
AnimateDiff LoRA, diffusers' ``from_single_file``). Exports are written atomically and never
over an existing file.
"""
import json
from pathlib import Path

import torch

from . import keys
from .files import save_safetensors, write_atomic


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
    return write_atomic(path, lambda tmp: torch.save({"state_dict": tensors}, tmp), overwrite)


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


# ---------------------------------------------------------------- exports of what the pack trains

EXPORT_FORMAT = "still-moving-export/1"
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def _name(source):
    return Path(str(source)).name if source else "(from the graph)"


def _only_customization(model, what):
    """Refuse a video model carrying anything besides its customization (injected checkpoints,
    image LoRAs): an export of ``what`` would leave it out."""
    others = [p for p in model.patches if not getattr(p, "injection", False)]
    if others:
        listed = ", ".join(f"{type(p).__name__} ({_name(p.source)})" for p in others)
        raise ValueError(f"the video model carries {listed} besides the customized model, and {what} would leave "
                         "it out. Connect the video model straight from the inject nodes (Load -> Inject).")


def customized_state(model):
    """The customized T2I model inside ``model``: UNet tensors (diffusers names, motion modules
    left out) and text-encoder tensors, with the injection patches applied."""
    from .video_model import T2I, TEXT
    with model.patched((T2I, TEXT)):
        unet = {k: v for k, v in model.unet.state_dict().items() if ".motion_modules." not in k}
        text = dict(model.text_encoder.state_dict())
    return unet, text


def _spatial_adapter(adapter, what):
    from .spatial_adapters import SpatialAdapters
    if adapter.kind != SpatialAdapters.kind:
        raise ValueError(f"{what} needs Spatial Adapters, got a {adapter.kind} adapter "
                         "(pick a file from models/still_moving/spatial/).")


def spatial_lora_name(module):
    """kohya's name of a UNet layer (diffusers-style, which ComfyUI's LoraLoader maps)."""
    return "lora_unet_" + keys.underscored(module)


def spatial_lora_tensors(adapter, unet_tensors, strength=1.0, dtype=torch.float32):
    """Spatial Adapters as a standard LoRA, exact on the weights ``unet_tensors`` (diffusers
    names): W + s·A_upᵀ(A_downᵀ W) = W + up·down with ``lora_up`` = s·A_upᵀ, ``lora_down`` =
    A_downᵀ·W; the bias's change b·(I + s·M) - b is stored whole as ``diff_b``."""
    _spatial_adapter(adapter, "a LoRA export")
    out = {}
    for name in adapter.targets:
        w, b = unet_tensors.get(f"{name}.weight"), unet_tensors.get(f"{name}.bias")
        if w is None:
            raise ValueError(f"the customized model has no layer '{name}' for these Spatial Adapters.")
        down, up = (t.detach().float().cpu() for t in adapter.factors(name))
        w = w.detach().float().cpu()
        if down.shape[0] != w.shape[0]:
            raise ValueError(f"layer '{name}' has {w.shape[0]} output channels, the adapter {down.shape[0]}.")
        key, r = spatial_lora_name(name), adapter.rank
        out[f"{key}.lora_down.weight"] = (down.T @ w.reshape(w.shape[0], -1)).reshape(r, *w.shape[1:]).to(dtype)
        out[f"{key}.lora_up.weight"] = (float(strength) * up.T).reshape(w.shape[0], r, *[1] * (w.ndim - 2)).to(dtype)
        if b is not None:
            b = b.detach().float().cpu()
            out[f"{key}.diff_b"] = (float(strength) * (up.T @ (down.T @ b))).to(dtype)
    return out


def _check(adapter, model, source):
    adapter.check(model, str(source) if source else None)


def export_spatial_lora(model, adapter, path, strength=1.0, source=None, dtype="fp32"):
    """Write Spatial Adapters as a kohya LoRA for the customized model injected in ``model``
    (image LoRAs injected there included). Exact only on that model's weights: its metadata
    names it. Never over an existing file."""
    _spatial_adapter(adapter, "a LoRA export")
    _check(adapter, model, source)
    _only_customization(model, "a LoRA export")
    unet, _ = customized_state(model)
    tensors = spatial_lora_tensors(adapter, unet, strength, DTYPES[dtype])
    meta = _meta(adapter, source, "spatial_lora", strength=float(strength),
                 exact_for=adapter.metadata.get("customized", "?"),
                 note="Spatial Adapters folded into the weights of the customized model named in 'exact_for'; "
                      "exact on that model only (apply it to that checkpoint, at strength 1).")
    return save_safetensors(tensors, path, metadata=meta)


def motion_lora_tensors(adapter, alpha=1.0, dtype=torch.float32):
    """A Motion Adapter (W + α·(A_down·A_up)ᵀ) or a Customize-A-Video temporal LoRA as an
    AnimateDiff MotionLoRA in the original v2 key layout, α baked into ``up`` (loaders that
    apply up·down at strength 1 then give α; ADE ignores alpha tensors, so none is written)."""
    from .customize import TemporalLoRA
    from .motion_adapter import MotionAdapter
    if adapter.kind not in (MotionAdapter.kind, TemporalLoRA.kind):
        raise ValueError(f"a MotionLoRA export needs a Motion Adapter or a temporal LoRA, got a {adapter.kind} "
                         "adapter.")
    out = {}
    for name in adapter.targets:
        if ".motion_modules." not in name:
            raise ValueError(f"'{name}' is not a motion-module layer; a MotionLoRA holds only those.")
        down, up = (t.detach().float().cpu() for t in adapter.factors(name))
        out[keys.motion_lora_module_to_original(name, "down")] = down.T.contiguous().to(dtype)
        out[keys.motion_lora_module_to_original(name, "up")] = (float(alpha) * up.T).contiguous().to(dtype)
    return out


def export_motion_lora(adapter, path, alpha=1.0, source=None, dtype="fp32"):
    """Write a Motion Adapter / temporal LoRA as a MotionLoRA (α baked in, negative allowed)
    whose metadata names the motion module it was trained on. Never over an existing file."""
    tensors = motion_lora_tensors(adapter, alpha, DTYPES[dtype])
    meta = _meta(adapter, source, "motion_lora", alpha=float(alpha),
                 note="apply at strength 1 for the alpha it was exported with; only on the motion module named "
                      "in 'motion_module'.")
    return save_safetensors(tensors, path, metadata=meta)


def merged_checkpoint_tensors(model, adapter, strength=1.0, source=None, dtype=None):
    """The customized model injected in ``model`` with the Spatial Adapters folded in (the
    pack's own merge), as one LDM-layout SD1.5 state dict (UNet, VAE, text encoder)."""
    from .video_model import AdapterPatch
    _spatial_adapter(adapter, "a merged checkpoint")
    _check(adapter, model, source)
    _only_customization(model, "a merged checkpoint")
    merged = model.with_patch(AdapterPatch(adapter, float(strength), True, str(source or "")))
    with merged.patched():
        unet = {k: v for k, v in model.unet.state_dict().items() if ".motion_modules." not in k}
        clip = dict(model.text_encoder.state_dict())
        cfg = model.vae.config
        return checkpoint_tensors(unet, model.vae.state_dict(), clip, model.info["layout"],
                                  (len(cfg.block_out_channels), cfg.layers_per_block), dtype)


def export_merged_checkpoint(model, adapter, path, strength=1.0, source=None, dtype="fp16"):
    """Write the merged checkpoint as a standard SD1.5 single-file .safetensors (atomic, never
    over an existing file)."""
    tensors = merged_checkpoint_tensors(model, adapter, strength, source, DTYPES[dtype])
    meta = _meta(adapter, source, "merged_checkpoint", strength=float(strength),
                 customized=adapter.metadata.get("customized", "?"),
                 note="the customized checkpoint with Still-Moving Spatial Adapters folded in.")
    return save_safetensors(tensors, path, metadata=meta)


def _meta(adapter, source, what, **extra):
    m = adapter.metadata
    meta = {"format": EXPORT_FORMAT, "still_moving_export": what, "adapter_kind": adapter.kind,
            "adapter": _name(source), "adapter_rank": str(adapter.rank)}
    for key in ("motion_module", "motion_version", "motion_fingerprint", "checkpoint", "customized",
                "base_fingerprint", "step"):
        if key in m:
            meta[key] = m[key] if isinstance(m[key], str) else json.dumps(m[key])
    meta.update({k: v if isinstance(v, str) else json.dumps(v) for k, v in extra.items()})
    return meta


def export_path(folder, name):
    """``folder/name.safetensors`` for a name typed by a user: refuses names that leave
    ``folder`` and a file that already exists (naming it)."""
    from .files import safe_child
    name = str(name).strip()
    if not name.endswith(".safetensors"):
        name += ".safetensors"
    path = safe_child(folder, name)
    if path.exists():
        raise FileExistsError(f"{path} already exists; refusing to overwrite it. Choose another name.")
    return path



def write_diffusers_config(model, folder):
    """A diffusers pipeline folder holding only configs and the tokenizer (no weights) for the
    model inside ``model``: what ``StableDiffusionPipeline.from_single_file(file, config=folder)``
    needs to load a merged checkpoint offline."""
    import diffusers
    from diffusers import PNDMScheduler
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    cfg = {k: v for k, v in model.info["unet_config"].items() if v is not None}
    _save_json(folder / "unet" / "config.json", dict(cfg, _class_name="UNet2DConditionModel"))
    model.vae.save_config(folder / "vae")
    model.text_encoder.config.save_pretrained(folder / "text_encoder")
    model.tokenizer.save_pretrained(folder / "tokenizer")
    PNDMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", skip_prk_steps=True,
                  steps_offset=1).save_config(folder / "scheduler")
    _save_json(folder / "model_index.json", {
        "_class_name": "StableDiffusionPipeline", "_diffusers_version": diffusers.__version__,
        "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"],
        "text_encoder": ["transformers", "CLIPTextModel"], "tokenizer": ["transformers", "CLIPTokenizer"],
        "scheduler": ["diffusers", "PNDMScheduler"], "safety_checker": [None, None],
        "feature_extractor": [None, None], "image_encoder": [None, None], "requires_safety_checker": False})
    return folder


def _save_json(path, data):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")
