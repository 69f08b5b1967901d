"""What every node needs from ComfyUI: the device, progress with a preview, and Cancel."""
import torch

import comfy.model_management as mm
import comfy.utils

# SD1.5 latent -> RGB (a linear fit, good enough for a live preview)
_LATENT_RGB = torch.tensor([[0.3512, 0.2297, 0.3227], [0.3250, 0.4974, 0.2350],
                            [-0.2829, 0.1762, 0.2721], [-0.2120, -0.2616, -0.7177]])


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


def preview(latents):
    """A small RGB image of the middle frame of (1, C, F, h, w) latents, for the progress bar."""
    from PIL import Image
    frame = latents[0, :, latents.shape[2] // 2].float().cpu()
    rgb = torch.einsum("chw,cr->hwr", frame, _LATENT_RGB)
    rgb = ((rgb + 1) / 2).clamp(0, 1).mul(255).byte().numpy()
    return ("JPEG", Image.fromarray(rgb), 512)


def step_callback(total):
    """Progress + preview + Cancel between steps."""
    bar = comfy.utils.ProgressBar(total)

    def callback(step, total_steps, latents):
        mm.throw_exception_if_processing_interrupted()
        bar.update_absolute(step, total_steps, preview(latents))
    return callback


def to_comfy_latent(latents, scaling_factor):
    """(1, C, F, h, w) diffusers-scaled -> ComfyUI LATENT (frames in the batch, unscaled)."""
    return {"samples": (latents[0].permute(1, 0, 2, 3) / scaling_factor).contiguous()}


def conditioning_tensor(cond):
    """The text embedding of a ComfyUI CONDITIONING (first entry)."""
    if not cond:
        return None
    return cond[0][0]


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
