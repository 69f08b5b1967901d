"""What every node needs from ComfyUI: the device, progress with a preview, and Cancel."""
import torch

import comfy.latent_formats
import comfy.model_management as mm
import comfy.utils
import latent_preview


def tokenizer_dir():
    """ComfyUI's own SD1.5 CLIP tokenizer files (so the pack ships none)."""
    import os
    import comfy.sd1_clip
    return os.path.join(os.path.dirname(comfy.sd1_clip.__file__), "sd1_tokenizer")


def device():
    return mm.get_torch_device()


def default_dtype(choice="auto"):
    if choice != "auto":
        return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[choice]
    dev = mm.get_torch_device()
    if dev.type == "cuda":
        return torch.bfloat16 if mm.should_use_bf16(dev) else torch.float16
    return torch.float32


def make_room():
    """Ask ComfyUI to unload its own models before we put ours on the GPU."""
    if mm.get_torch_device().type != "cpu":
        mm.unload_all_models()
        mm.soft_empty_cache()


def preview_frame(latents):
    """The middle frame of (1, C, F, h, w) diffusers-scaled latents as ComfyUI's sampler hands
    latents to its previewer: (1, C, h, w), SD1.5-scaled (the same scaling diffusers uses)."""
    return latents[:, :, latents.shape[2] // 2].float()


def step_callback(total):
    """Progress + preview + Cancel between steps. The preview is ComfyUI's own previewer (the
    user's --preview-method and --preview-size; none sends no image) of the step's denoised
    estimate, as ComfyUI's KSampler shows it."""
    bar = comfy.utils.ProgressBar(total)
    previewer = latent_preview.get_previewer(device(), comfy.latent_formats.SD15())

    def callback(step, total_steps, latents, denoised):
        mm.throw_exception_if_processing_interrupted()
        image = None
        if previewer is not None:
            image = previewer.decode_latent_to_preview_image("JPEG", preview_frame(denoised).to(device()))
        bar.update_absolute(step, total_steps, image)
    return callback


def to_comfy_latent(latents, scaling_factor):
    """(1, C, F, h, w) diffusers-scaled -> ComfyUI LATENT (frames in the batch, unscaled)."""
    return {"samples": (latents[0].permute(1, 0, 2, 3) / scaling_factor).contiguous()}


# Conditioning keys that only carry what the pack already uses (the text embedding itself).
_USED_CONDITIONING_KEYS = {"pooled_output"}


def conditioning_tensor(cond, name="positive"):
    """The text embedding of a ComfyUI CONDITIONING: (1, seq, dim), or one per frame (N, seq, dim,
    e.g. from a prompt schedule). Anything the pack's sampler cannot use (several entries, areas,
    masks, a ControlNet, hooks) is refused with what to do instead."""
    if not cond:
        return None
    if len(cond) > 1:
        raise ValueError(f"the {name} conditioning has {len(cond)} entries (combined or area conditioning); "
                         "the Still-Moving sampler takes one. Use a single CLIP Text Encode (or a prompt "
                         "schedule), or sample with KSampler on the native route (Apply Spatial Adapters to MODEL).")
    extra = sorted(set(cond[0][1]) - _USED_CONDITIONING_KEYS)
    if "control" in extra:
        raise ValueError(f"the {name} conditioning carries a ControlNet (Apply ControlNet), which the Still-Moving "
                         "sampler does not read. Use 'Apply ControlNet to Video Model (Still-Moving)' instead, or "
                         "KSampler on the native route.")
    if extra:
        raise ValueError(f"the {name} conditioning carries {', '.join(repr(k) for k in extra)}, which the "
                         "Still-Moving sampler does not use. Connect plain CLIP Text Encode output, or sample "
                         "with KSampler on the native route (Apply Spatial Adapters to MODEL).")
    return cond[0][0]


def from_comfy_latent(latent, scaling_factor):
    """ComfyUI LATENT (frames in the batch, unscaled) -> (1, C, F, h, w) diffusers-scaled; keys the
    sampler cannot honour (an inpainting mask, batch indices) are refused."""
    extra = sorted(set(latent) - {"samples"})
    if extra:
        raise ValueError(f"the latent input carries {', '.join(repr(k) for k in extra)} (e.g. a noise mask "
                         "for inpainting), which the Still-Moving sampler does not use. Connect the latents "
                         "of VAE Encode or of an earlier sampler directly.")
    return (latent["samples"].float() * scaling_factor).permute(1, 0, 2, 3).unsqueeze(0).contiguous()


def leave_inference_mode(video_model, *adapters):
    """Swap inference tensors (created while ComfyUI ran the loader nodes) for ordinary copies,
    once, so autograd can use the frozen weights; values are unchanged."""
    import torch
    modules = [video_model.unet, video_model.text_encoder, video_model.vae] + [a for a in adapters if a is not None]
    with torch.inference_mode(False):
        for module in modules:
            for sub in module.modules():
                for name, p in list(sub._parameters.items()):
                    if p is not None and p.is_inference():
                        sub._parameters[name] = torch.nn.Parameter(p.detach().clone(), requires_grad=p.requires_grad)
                for name, b in list(sub._buffers.items()):
                    if b is not None and b.is_inference():
                        sub._buffers[name] = b.clone()
        for patch in video_model.patches:
            tensors = getattr(patch, "tensors", None)
            if tensors:
                for k, v in tensors.items():
                    if v.is_inference():
                        tensors[k] = v.clone()


def model_extras(patcher):
    """What a ComfyUI MODEL carries beyond its weights and weight patches (object patches, attention
    patches, wrappers, callbacks, injections, hooks), as readable names; empty for a plain MODEL."""
    found = []
    found += [f"object patch '{k}'" for k in getattr(patcher, "object_patches", {})]
    options = getattr(patcher, "model_options", {}) or {}
    for key, value in options.items():
        if key == "transformer_options":
            for tkey, tvalue in (value or {}).items():
                if tvalue:
                    found.append(f"transformer option '{tkey}'")
        elif value:
            found.append(f"model option '{key}'")
    for attr in ("wrappers", "callbacks"):
        for kind, groups in (getattr(patcher, attr, {}) or {}).items():
            if any(groups.values()) if isinstance(groups, dict) else groups:
                found.append(f"{attr[:-1]} '{kind}'")
    for attr, what in (("injections", "injection"), ("additional_models", "additional model"),
                       ("hook_patches", "hook patch"), ("weight_wrapper_patches", "weight wrapper")):
        found += [f"{what} '{k}'" for k in (getattr(patcher, attr, {}) or {})]
    return found
