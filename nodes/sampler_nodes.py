"""The Still-Moving sampler node: text-to-video on a video model, LATENT + IMAGE out."""
from ..adapters import sampling
from . import comfy_glue
from .video_model_nodes import CATEGORY, VIDEO_MODEL


class SampleVideo:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "video_model": (VIDEO_MODEL,),
            "prompt": ("STRING", {"multiline": True, "default": "a photo of a cat walking on the beach"}),
            "negative_prompt": ("STRING", {"multiline": True, "default": "blurry, low quality"}),
            "seed": ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFFFFFFFFFF, "control_after_generate": True}),
            "steps": ("INT", {"default": 25, "min": 1, "max": 200}),
            "cfg": ("FLOAT", {"default": 7.5, "min": 1.0, "max": 30.0, "step": 0.1}),
            "scheduler": (list(sampling.SCHEDULERS), {"default": "euler"}),
            "beta_schedule": (list(sampling.BETA_SCHEDULES), {
                "default": "linear", "tooltip": "AnimateDiff was trained with 'linear'; 'scaled_linear' (SD's) "
                                               "often looks washed out with motion modules."}),
            "width": ("INT", {"default": 512, "min": 64, "max": 2048, "step": 8}),
            "height": ("INT", {"default": 512, "min": 64, "max": 2048, "step": 8}),
            "frames": ("INT", {"default": 16, "min": 1, "max": 1024}),
            "context_mode": (list(sampling.CONTEXT_MODES), {
                "default": "none", "tooltip": "For videos longer than the motion module's window: 'sliding' "
                                              "denoises overlapping windows, 'freenoise' also reuses the first "
                                              "window's noise so content stays consistent."}),
            "context_length": ("INT", {"default": 16, "min": 2, "max": 32,
                                       "tooltip": "Frames per window (16 is what the motion modules were trained on)."}),
            "context_overlap": ("INT", {"default": 4, "min": 0, "max": 31}),
        }, "optional": {
            "positive": ("CONDITIONING", {"tooltip": "From ComfyUI's CLIP Text Encode: replaces the prompt text, "
                                                     "so prompt weighting and embeddings work."}),
            "negative": ("CONDITIONING",),
            "weight_schedule": ("SM_WEIGHT_SCHEDULE", {"tooltip": "From Weight Schedule (CustomCrafter): the weight "
                                                                  "of the spatial customizations per step."}),
        }}

    RETURN_TYPES = ("LATENT", "IMAGE")
    RETURN_NAMES = ("latent", "frames")
    FUNCTION = "sample"
    CATEGORY = CATEGORY
    DESCRIPTION = "Generates a video with the (customized) AnimateDiff model."

    def sample(self, video_model, prompt, negative_prompt, seed, steps, cfg, scheduler, beta_schedule, width,
               height, frames, context_mode, context_length, context_overlap, positive=None, negative=None,
               weight_schedule=None):
        device = comfy_glue.device()
        comfy_glue.make_room()
        context = sampling.ContextOptions(context_mode, context_length, context_overlap)
        with video_model.on_device(device):
            cond = comfy_glue.conditioning_tensor(positive)
            if cond is None:
                cond = sampling.encode_text(video_model, [prompt], device)
            uncond = comfy_glue.conditioning_tensor(negative)
            if uncond is None:
                uncond = sampling.encode_text(video_model, [negative_prompt], device)
            latents = sampling.sample(video_model, cond, uncond, seed=seed, steps=steps, cfg=cfg,
                                      scheduler=scheduler, beta_schedule=beta_schedule, width=width,
                                      height=height, frames=frames, context=context, device=device,
                                      callback=comfy_glue.step_callback(steps), schedule=weight_schedule)
            images = sampling.decode(video_model, latents)
        return (comfy_glue.to_comfy_latent(latents, video_model.vae.config.scaling_factor), images)
