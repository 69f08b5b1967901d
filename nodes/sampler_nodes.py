"""The Still-Moving sampler node: text-to-video on a video model, LATENT + IMAGE out."""
from ..adapters import sampling
from . import comfy_glue
from .video_model_nodes import CATEGORY, VIDEO_MODEL


class SampleVideo:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "video_model": (VIDEO_MODEL, {"tooltip": "The video model, with any customization and adapters "
                                                     "attached."}),
            "prompt": ("STRING", {"multiline": True, "default": "a photo of a cat walking on the beach",
                                  "tooltip": "What the video shows and how it moves; include the customization's "
                                             "trigger words. Ignored when positive is linked."}),
            "negative_prompt": ("STRING", {"multiline": True, "default": "blurry, low quality",
                                           "tooltip": "What to avoid. Ignored when negative is linked."}),
            "seed": ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFFFFFFFFFF, "control_after_generate": True,
                             "tooltip": "The starting noise: the same seed and settings give the same video."}),
            "steps": ("INT", {"default": 25, "min": 1, "max": 200,
                              "tooltip": "Denoising steps: 20-30 for euler, ddim and dpmpp_2m; 4-8 for lcm."}),
            "cfg": ("FLOAT", {"default": 7.5, "min": 1.0, "max": 30.0, "step": 0.1,
                              "tooltip": "How closely the video follows the prompt: 7-8 usually; about 1.5 for lcm."}),
            "scheduler": (list(sampling.SCHEDULERS), {
                "default": "euler", "tooltip": "The sampling method. euler or dpmpp_2m are good defaults; lcm only "
                                               "with an AnimateLCM motion module."}),
            "beta_schedule": (list(sampling.BETA_SCHEDULES), {
                "default": "linear", "tooltip": "AnimateDiff was trained with 'linear'; 'scaled_linear' (SD's) "
                                               "often looks washed out with motion modules."}),
            "width": ("INT", {"default": 512, "min": 64, "max": 2048, "step": 8,
                              "tooltip": "Video width in pixels; SD1.5 models look best around 512. A connected latent sets it."}),
            "height": ("INT", {"default": 512, "min": 64, "max": 2048, "step": 8,
                               "tooltip": "Video height in pixels; SD1.5 models look best around 512. A connected latent sets it."}),
            "frames": ("INT", {"default": 16, "min": 1, "max": 1024,
                               "tooltip": "Number of frames; 16 is what the motion modules were trained on. "
                                          "Beyond the motion module's length (24 for v1, 32 for v2 and v3) set a "
                                          "context mode. A connected latent sets it."}),
            "context_mode": (list(sampling.CONTEXT_MODES), {
                "default": "none", "tooltip": "For videos longer than the motion module's window: 'sliding' "
                                              "denoises overlapping windows, 'freenoise' also reuses the first "
                                              "window's noise so content stays consistent."}),
            "context_length": ("INT", {"default": 16, "min": 2, "max": 32,
                                       "tooltip": "Frames per window (16 is what the motion modules were trained on)."}),
            "context_overlap": ("INT", {"default": 4, "min": 0, "max": 31,
                                        "tooltip": "Frames shared by neighbouring windows, so they blend without "
                                                   "seams; about a quarter of context_length."}),
        }, "optional": {
            "positive": ("CONDITIONING", {"tooltip": "From ComfyUI's CLIP Text Encode: replaces the prompt text, "
                                                     "so prompt weighting and embeddings work. A prompt "
                                                     "schedule (one embedding per frame) is followed frame "
                                                     "by frame."}),
            "negative": ("CONDITIONING", {"tooltip": "From ComfyUI's CLIP Text Encode: replaces the "
                                                     "negative_prompt text."}),
            "weight_schedule": ("SM_WEIGHT_SCHEDULE", {"tooltip": "From Weight Schedule (CustomCrafter): the weight "
                                                                  "of the spatial customizations per step."}),
            "latent": ("LATENT", {"tooltip": "Video-to-video: the video to start from, e.g. VAE Encode of its "
                                             "frames (one latent per frame). Its size replaces width, height and "
                                             "frames."}),
            "denoise": ("FLOAT", {"default": 1.0, "min": 0.01, "max": 1.0, "step": 0.01,
                                  "tooltip": "With a latent: how much of it to redraw. 1 redraws everything; "
                                             "0.4-0.7 keeps the input's layout and motion."}),
        }}

    RETURN_TYPES = ("LATENT", "IMAGE")
    RETURN_NAMES = ("latent", "frames")
    OUTPUT_TOOLTIPS = ("The video as latents, one per frame, for ComfyUI's latent nodes (e.g. VAE Decode).",
                       "The decoded frames as an image batch, for Save Animated WEBP, Video Combine or Preview "
                       "Image.")
    FUNCTION = "sample"
    CATEGORY = CATEGORY
    DESCRIPTION = ("Generates a video with the (customized) AnimateDiff model. Shows a live preview of each step "
                   "when ComfyUI's preview method is set (e.g. --preview-method auto).")

    def sample(self, video_model, prompt, negative_prompt, seed, steps, cfg, scheduler, beta_schedule, width,
               height, frames, context_mode, context_length, context_overlap, positive=None, negative=None,
               weight_schedule=None, latent=None, denoise=1.0):
        device = comfy_glue.device()
        comfy_glue.make_room()
        context = sampling.ContextOptions(context_mode, context_length, context_overlap)
        with video_model.on_device(device):
            cond = comfy_glue.conditioning_tensor(positive, "positive")
            if cond is None:
                cond = sampling.encode_text(video_model, [prompt], device)
            uncond = comfy_glue.conditioning_tensor(negative, "negative")
            if uncond is None:
                uncond = sampling.encode_text(video_model, [negative_prompt], device)
            init = None
            if latent is not None:
                init = comfy_glue.from_comfy_latent(latent, video_model.vae.config.scaling_factor)
            elif denoise < 1.0:
                raise ValueError("denoise below 1 needs a latent to start from: connect one (e.g. VAE Encode of "
                                 "a video's frames), or set denoise to 1.")
            latents = sampling.sample(video_model, cond, uncond, seed=seed, steps=steps, cfg=cfg,
                                      scheduler=scheduler, beta_schedule=beta_schedule, width=width,
                                      height=height, frames=frames, context=context, device=device,
                                      callback=comfy_glue.step_callback(steps), schedule=weight_schedule,
                                      init_latents=init, denoise=denoise)
            images = sampling.decode(video_model, latents)
        return (comfy_glue.to_comfy_latent(latents, video_model.vae.config.scaling_factor), images)
