"""Loading the AnimateDiff video model and putting a customized SD1.5 model into it."""
from ..adapters import inject, loading
from ..adapters.errors import ModelFileError
from . import comfy_glue, paths

VIDEO_MODEL = "SM_VIDEO_MODEL"
CATEGORY = "Still-Moving"


class LoadVideoModel:
    """SD1.5 checkpoint + AnimateDiff motion module -> video model."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "ckpt_name": (paths.checkpoints_and_folders(), {
                "tooltip": "The base SD1.5 checkpoint the motion module was trained with (usually plain SD1.5). "
                           "Customized models are injected later."}),
            "motion_module": (paths.files("animatediff_models"), {
                "tooltip": "AnimateDiff SD1.5 motion module (v1, v2 or v3) from models/animatediff_models."}),
            "dtype": (["auto", "fp32", "fp16", "bf16"], {
                "default": "auto", "tooltip": "Number precision of the weights. Leave on auto: fp16 or bf16 "
                                              "on a CUDA GPU, fp32 on the CPU."}),
        }}

    RETURN_TYPES = (VIDEO_MODEL,)
    RETURN_NAMES = ("video_model",)
    OUTPUT_TOOLTIPS = ("The video model: connect it to an Inject or Attach node, or straight to the "
                       "Still-Moving Sampler.",)
    FUNCTION = "load"
    CATEGORY = CATEGORY
    DESCRIPTION = ("Loads an AnimateDiff text-to-video model: the plain SD1.5 checkpoint the motion module was "
                   "trained with, plus the motion module. Start every Still-Moving graph here.")

    @classmethod
    def IS_CHANGED(cls, ckpt_name=None, motion_module=None, **_):
        return paths.fingerprint("checkpoints", ckpt_name) + paths.fingerprint("animatediff_models", motion_module)

    def load(self, ckpt_name, motion_module, dtype="auto"):
        model = loading.load_video_model(paths.full_path("checkpoints", ckpt_name),
                                         paths.full_path("animatediff_models", motion_module),
                                         dtype=comfy_glue.default_dtype(dtype),
                                         tokenizer_dirs=[comfy_glue.tokenizer_dir()])
        return (model,)


class LoadMotionLoRA:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "video_model": (VIDEO_MODEL, {"tooltip": "The video model to add the camera motion to."}),
            "lora_name": (paths.files("animatediff_motion_lora"), {
                "tooltip": "An AnimateDiff MotionLoRA (zoom, pan, roll...) from models/animatediff_motion_lora."}),
            "strength": ("FLOAT", {"default": 1.0, "min": -10.0, "max": 10.0, "step": 0.05,
                                   "tooltip": "How strong the camera motion is: 1 as trained, 0.5-1 for a gentler "
                                              "move. Negative values reverse it."}),
        }}

    RETURN_TYPES = (VIDEO_MODEL,)
    OUTPUT_TOOLTIPS = ("The video model with the camera motion added.",)
    FUNCTION = "apply"
    CATEGORY = CATEGORY
    DESCRIPTION = "Adds an AnimateDiff MotionLoRA (a camera move such as zoom or pan) to the video model."

    @classmethod
    def IS_CHANGED(cls, lora_name=None, **_):
        return paths.fingerprint("animatediff_motion_lora", lora_name)

    def apply(self, video_model, lora_name, strength):
        return (inject.attach_motion_lora(video_model, paths.full_path("animatediff_motion_lora", lora_name),
                                          strength),)


class InjectCheckpoint:
    """Naive injection (weight 1) or weight interpolation (weight < 1) of a customized checkpoint."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "video_model": (VIDEO_MODEL, {"tooltip": "The video model from Load AnimateDiff Video Model."}),
            "ckpt_name": (paths.checkpoints_and_folders(), {
                "tooltip": "The customized SD1.5 checkpoint (DreamBooth, fine-tune, merged style)."}),
            "weight": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.05,
                                 "tooltip": "1: naive injection (use the customized weights). Below 1: interpolate "
                                            "between base and customized weights; 0 leaves the base model."}),
            "inject_text_encoder": ("BOOLEAN", {"default": True,
                                                "tooltip": "Also use the checkpoint's text encoder (DreamBooth "
                                                           "often trains it, and its trigger word needs it)."}),
        }}

    RETURN_TYPES = (VIDEO_MODEL,)
    OUTPUT_TOOLTIPS = ("The video model drawing the customized subject or style; add Spatial Adapters trained "
                       "for this checkpoint to keep the motion.",)
    FUNCTION = "inject"
    CATEGORY = CATEGORY
    DESCRIPTION = ("Puts a customized SD1.5 checkpoint's weights into the video model, so its videos show the "
                   "customized subject or style. Alone this often freezes or garbles the motion; Still-Moving's "
                   "Spatial Adapters fix that.")

    @classmethod
    def IS_CHANGED(cls, ckpt_name=None, **_):
        return paths.fingerprint("checkpoints", ckpt_name)

    def inject(self, video_model, ckpt_name, weight, inject_text_encoder):
        return (inject.inject_checkpoint(video_model, paths.full_path("checkpoints", ckpt_name), weight,
                                         inject_text_encoder),)


class InjectLoRA:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "video_model": (VIDEO_MODEL, {"tooltip": "The video model to customize."}),
            "lora_name": (paths.files("loras"), {"tooltip": "An SD1.5 LoRA (kohya, diffusers or peft format) "
                                                           "from models/loras."}),
            "strength_model": ("FLOAT", {"default": 1.0, "min": -10.0, "max": 10.0, "step": 0.05,
                                         "tooltip": "LoRA strength on the image model; use what works for stills "
                                                    "(usually 0.6-1)."}),
            "strength_clip": ("FLOAT", {"default": 1.0, "min": -10.0, "max": 10.0, "step": 0.05,
                                        "tooltip": "LoRA strength on the text encoder; usually the same as "
                                                   "strength_model, 0 if the LoRA has no text encoder part."}),
        }}

    RETURN_TYPES = (VIDEO_MODEL,)
    OUTPUT_TOOLTIPS = ("The video model with the LoRA's subject or style.",)
    FUNCTION = "inject"
    CATEGORY = CATEGORY
    DESCRIPTION = ("Puts an SD1.5 LoRA (a customized subject or style) into the video model, as Load LoRA does "
                   "for images. Pair it with Spatial Adapters trained for it to keep the motion.")

    @classmethod
    def IS_CHANGED(cls, lora_name=None, **_):
        return paths.fingerprint("loras", lora_name)

    def inject(self, video_model, lora_name, strength_model, strength_clip):
        return (inject.inject_lora(video_model, paths.full_path("loras", lora_name), strength_model,
                                   strength_clip),)


class InjectComfyModel:
    """Use a ComfyUI MODEL (with any LoRAs stacked on it natively) as the customized T2I model."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "video_model": (VIDEO_MODEL, {"tooltip": "The video model to customize."}),
            "model": ("MODEL", {"tooltip": "An SD1.5 MODEL, e.g. from Load Checkpoint + Load LoRA."}),
            "weight": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.05,
                                 "tooltip": "1 uses the MODEL's weights as they are; below 1 blends towards the "
                                            "base model, 0 leaves the base model."}),
        }, "optional": {
            "clip": ("CLIP", {"tooltip": "Its CLIP, to inject the text encoder too (needed for trigger words)."}),
        }}

    RETURN_TYPES = (VIDEO_MODEL,)
    OUTPUT_TOOLTIPS = ("The video model drawing what the MODEL draws.",)
    FUNCTION = "inject"
    CATEGORY = CATEGORY
    DESCRIPTION = ("Uses a ComfyUI MODEL (and optionally its CLIP) as the customized image model, with any LoRAs "
                   "stacked on it by ComfyUI's own nodes.")

    def inject(self, video_model, model, weight, clip=None):
        from ..adapters import detect, keys
        unet_ldm = _patched_state_dict(model, "diffusion_model.")
        layout, _ = detect.unet_layout(unet_ldm, "the MODEL input")
        unet, unknown = keys.unet_ldm_to_diffusers(unet_ldm, layout)
        if unknown:
            raise ModelFileError("the MODEL input", f"its UNet has {len(unknown)} tensors an SD1.5 UNet does not "
                                 f"have (e.g. {', '.join(sorted(unknown)[:3])}).",
                                 "Connect a plain SD1.5 MODEL (Load Checkpoint, LoRA loaders).")
        extras = comfy_glue.model_extras(model)
        if extras:
            raise ModelFileError("the MODEL input", "it carries parts the Still-Moving sampler cannot run: "
                                 + ", ".join(extras[:6]) + ".",
                                 "Connect the MODEL before those nodes (weights and LoRAs are taken), or use the "
                                 "native route: Apply Spatial Adapters to MODEL, then AnimateDiff-Evolved and KSampler.")
        text = None
        if clip is not None:
            sd = _patched_state_dict(clip.patcher, "clip_l.transformer.")
            text = keys.clip_ldm_to_transformers(sd) if sd else None
        return (inject.inject_weights(video_model, unet, text, weight, "the MODEL input"),)


def _patched_state_dict(patcher, prefix):
    """Weights of a ComfyUI ModelPatcher with its LoRA patches applied, without touching it."""
    import torch
    import comfy.lora
    sd = patcher.model.state_dict()
    out = {}
    for key, value in sd.items():
        full = key
        if not key.startswith(prefix):
            # CLIP patchers hold the text model under cond_stage_model / clip_l
            idx = key.find(prefix)
            if idx < 0:
                continue
            key = key[idx:]
        w = value.detach().to("cpu", torch.float32, copy=True)
        if full in patcher.patches:
            w = comfy.lora.calculate_weight(patcher.patches[full], w, full)
        out[key[len(prefix):]] = w
    return out
