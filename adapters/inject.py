"""Putting a customized T2I model into the video model: naive injection, interpolation, LoRAs.

Each returns a new ``VideoModel`` with a patch; the base weights are never touched. Only
tensors that differ from the base are kept, so a checkpoint that changed a few layers costs
memory for those layers alone, and ``injected_layers()`` names exactly the layers that changed
(the ones Spatial Adapters attach to).
"""
import torch

from .errors import ModelFileError
from .video_model import T2I, TEXT, LoraPatch, ReplaceWeights


def _changed(module, tensors, source, what):
    params = dict(module.named_parameters())
    changed = {}
    for name, new in tensors.items():
        base = params.get(name)
        if base is None:
            raise ModelFileError(source, f"the customized {what} has a tensor '{name}' the video model lacks.",
                                 "The customized model must be SD1.5 of the same architecture as the base.")
        if base.shape != new.shape:
            raise ModelFileError(source, f"the customized {what}'s '{name}' has shape {tuple(new.shape)}, the "
                                 f"base {tuple(base.shape)}.", "Both models must be SD1.5.")
        new = new.to(base.dtype)
        # the model may already sit on the GPU; the patch keeps the file's tensor where it is
        if not torch.equal(new.to(base.device), base.data):
            changed[name] = new
    return changed


def inject_weights(model, unet_tensors, text_tensors=None, weight=1.0, source=""):
    """Replace (weight 1) or interpolate (0 < weight < 1) the T2I and text-encoder weights."""
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"interpolation weight must be in [0, 1], got {weight}")
    out = model
    unet_changed = _changed(model.unet, unet_tensors, source, "UNet")
    if unet_changed:
        out = out.with_patch(ReplaceWeights(T2I, unet_changed, weight, str(source)))
    if text_tensors:
        text_changed = _changed(model.text_encoder, text_tensors, source, "text encoder")
        if text_changed:
            out = out.with_patch(ReplaceWeights(TEXT, text_changed, weight, str(source)))
    return out if out is not model else model.clone()


def inject_checkpoint(model, path, weight=1.0, text_encoder=True):
    """Naive injection / interpolation of a customized SD1.5 checkpoint (file or diffusers folder)."""
    from .loading import read_unet_weights
    dtype = next(model.unet.parameters()).dtype
    unet, layout, clip = read_unet_weights(path, dtype)
    if layout != model.info.get("layout"):
        raise ModelFileError(path, f"its UNet layout {layout} differs from the base model's "
                             f"{model.info.get('layout')}.", "Both models must be SD1.5.")
    return inject_weights(model, unet, clip if text_encoder else None, weight, path)


def inject_lora(model, path, strength_unet=1.0, strength_text=1.0):
    """A kohya / diffusers / peft LoRA on the T2I layers (and text encoder) with a strength."""
    lora = _read(model, path)
    out = model.clone()
    if lora.unet and strength_unet != 0:
        out = out.with_patch(LoraPatch(T2I, lora.unet, strength_unet, str(path)))
    if lora.text_encoder and strength_text != 0:
        out = out.with_patch(LoraPatch(TEXT, lora.text_encoder, strength_text, str(path)))
    if lora.motion:
        raise ModelFileError(path, "this LoRA targets the motion module (a MotionLoRA).",
                             "Load it with the MotionLoRA node instead.")
    return out


def attach_motion_lora(model, path, strength=1.0):
    """An AnimateDiff MotionLoRA on the temporal layers; negative strength reverses it."""
    lora = _read(model, path)
    if not lora.motion:
        raise ModelFileError(path, "this LoRA has no motion-module weights.",
                             "Use the LoRA injection node for image LoRAs.")
    return model.with_patch(LoraPatch("motion", lora.motion, strength, str(path)))


def _read(model, path):
    from .lora import read_lora
    unet_names = {n for n, _ in model.unet.named_modules()}
    text_names = {n for n, _ in model.text_encoder.named_modules()}
    return read_lora(path, unet_module_names=unet_names, text_module_names=text_names,
                     layout=model.info.get("layout"))
