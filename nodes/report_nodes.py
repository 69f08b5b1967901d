"""Checks to run before training: how far a customization moves what the temporal layers read
(the injection report), and whether a Motion Adapter freezes a video model (the freeze check)."""
import contextlib
import json

import comfy.model_management as mm
import comfy.utils

from ..adapters import injection_report as ir
from ..adapters.motion_adapter import MotionAdapter, check_freezes
from ..adapters.spatial_adapters import SpatialAdapters
from . import comfy_glue
from .adapter_nodes import ADAPTER
from .video_model_nodes import CATEGORY, VIDEO_MODEL


def parse_timesteps(text):
    """'999, 700, 400' -> [999, 700, 400], with a message that says what to type."""
    try:
        return [int(t) for t in text.replace(";", ",").replace(" ", ",").split(",") if t.strip()]
    except ValueError:
        raise ValueError(f"timesteps: {text!r} is not a list of whole numbers; type e.g. 999, 700, 400.") from None


def prompt_lines(text):
    lines = [p.strip() for p in text.splitlines() if p.strip()]
    if not lines:
        raise ValueError("prompts: give at least one prompt (one per line).")
    return lines


class InjectionReport:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "video_model": (VIDEO_MODEL, {"tooltip": "The video model with the customized model injected, with or "
                                                     "without Spatial Adapters attached."}),
            "prompts": ("STRING", {"multiline": True, "default": "a photo of a sks dog running on the beach\n"
                                                                 "a sks dog walking in a park",
                                   "tooltip": "One prompt per line, as you would prompt the video: include the "
                                              "customization's trigger word."}),
            "seed": ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFFFFFFFFFF, "control_after_generate": False,
                             "tooltip": "The noise the models are compared on: the same seed compares "
                                        "customizations fairly."}),
            "timesteps": ("STRING", {"default": "999, 700, 400",
                                     "tooltip": "Noise levels to compare at (0 to 999), early ones decide the "
                                                "layout and motion. Each adds one UNet call per model."}),
            "width": ("INT", {"default": 512, "min": 8, "max": 2048, "step": 8,
                              "tooltip": "Width of the noisy latents in pixels; lower is faster. A connected "
                                         "latent sets it."}),
            "height": ("INT", {"default": 512, "min": 8, "max": 2048, "step": 8,
                               "tooltip": "Height of the noisy latents in pixels. A connected latent sets it."}),
            "frames": ("INT", {"default": ir.DEFAULT_FRAMES, "min": 1, "max": 32,
                               "tooltip": "Frames per video; a few are enough. A connected latent sets it."}),
            "adapter_strength": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 2.0, "step": 0.05,
                                           "tooltip": "Strength of the Spatial Adapters linked to the adapter "
                                                      "input (adapters already attached keep their own)."}),
        }, "optional": {
            "base_video_model": (VIDEO_MODEL, {"tooltip": "The base video model to compare with. Leave it "
                                                          "unlinked: the base is then the video model above "
                                                          "without its customization and Spatial Adapters."}),
            "adapter": (ADAPTER, {"tooltip": "Spatial Adapters (from Train Spatial Adapters or Load Adapter) to "
                                             "measure how much of the shift they close."}),
            "latent": ("LATENT", {"tooltip": "Clean video latents to noise, e.g. the base model's video from the "
                                             "sampler; else the base model's own first estimate is used."}),
        }}

    RETURN_TYPES = ("STRING", "STRING", "FLOAT", "FLOAT")
    RETURN_NAMES = ("report", "report_json", "shift", "closed")
    OUTPUT_TOOLTIPS = ("The table shown on the node: per block, how far the features moved and how much the "
                       "adapters closed.",
                       "Every figure of the report as JSON (per block and per timestep).",
                       "Overall shift: mean relative change of the temporal layers' input features (0 = none).",
                       "Share of the shift the Spatial Adapters closed (1 = all); 0 without adapters.")
    FUNCTION = "report"
    CATEGORY = CATEGORY
    OUTPUT_NODE = True
    DESCRIPTION = ("Before training, tells whether naive injection will hold: how far the customized model moves "
                   "the features entering the temporal layers, per block. With Spatial Adapters, how much of that "
                   "shift they close. No video is sampled.")

    def report(self, video_model, prompts, seed, timesteps, width, height, frames, adapter_strength,
               base_video_model=None, adapter=None, latent=None):
        lines = prompt_lines(prompts)
        ts = parse_timesteps(timesteps)
        if adapter is not None:
            SpatialAdapters.expect(adapter)
        device = comfy_glue.device()
        comfy_glue.make_room()
        latents = None
        if latent is not None:
            latents = comfy_glue.from_comfy_latent(latent, video_model.vae.config.scaling_factor)
        bar = comfy.utils.ProgressBar(1)

        def progress(done, total):
            mm.throw_exception_if_processing_interrupted()
            bar.update_absolute(done, total)

        with contextlib.ExitStack() as stack:
            stack.enter_context(video_model.on_device(device))
            if base_video_model is not None and base_video_model.unet is not video_model.unet:
                stack.enter_context(base_video_model.on_device(device))
            rep = ir.injection_report(video_model, base=base_video_model, adapters=adapter,
                                      strength=adapter_strength, prompts=lines, seed=seed, timesteps=ts,
                                      frames=frames, width=width, height=height, latents=latents, device=device,
                                      callback=progress)
        text = rep.text()
        closed = rep.closed if rep.closed is not None else 0.0
        out = (text, json.dumps(rep.as_dict(), indent=1), float(rep.shift), float(closed))
        return {"ui": {"text": [text]}, "result": out}


class MotionAdapterCheck:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "video_model": (VIDEO_MODEL, {"tooltip": "The video model with your customized model injected (checks "
                                                     "the assumption Train Spatial Adapters makes), or the base."}),
            "motion_adapter": (ADAPTER, {"tooltip": "The Motion Adapter to check (from Train Motion Adapter or "
                                                    "Load Adapter)."}),
            "prompts": ("STRING", {"multiline": True, "default": "a photo of a sks dog\na sks dog in a park",
                                   "tooltip": "One prompt per line: the captions of your customized stills."}),
            "seed": ("INT", {"default": 1000, "min": 0, "max": 0xFFFFFFFFFFFFFFFF, "control_after_generate": False,
                             "tooltip": "First seed of the videos; each prompt gets videos_per_prompt seeds from "
                                        "here."}),
            "videos_per_prompt": ("INT", {"default": 2, "min": 1, "max": 16,
                                          "tooltip": "Seeds per prompt; each is sampled at α = 0 and at α = 1."}),
            "steps": ("INT", {"default": 10, "min": 1, "max": 100,
                              "tooltip": "Sampling steps per video: a few show the motion."}),
            "cfg": ("FLOAT", {"default": 7.5, "min": 1.0, "max": 30.0, "step": 0.5,
                              "tooltip": "Guidance scale, as you sample."}),
            "width": ("INT", {"default": 256, "min": 8, "max": 2048, "step": 8,
                              "tooltip": "Video width in pixels; lower is faster."}),
            "height": ("INT", {"default": 256, "min": 8, "max": 2048, "step": 8,
                               "tooltip": "Video height in pixels; lower is faster."}),
            "frames": ("INT", {"default": 16, "min": 2, "max": 64, "tooltip": "Frames per video."}),
        }}

    RETURN_TYPES = ("STRING", "FLOAT")
    RETURN_NAMES = ("check", "motion_kept")
    OUTPUT_TOOLTIPS = ("The check shown on the node, with a warning when α = 1 does not freeze the videos.",
                       "Share of the frame-to-frame change the videos keep at α = 1 (0 = frozen, 1 = as at α = 0).")
    FUNCTION = "check"
    CATEGORY = CATEGORY
    OUTPUT_NODE = True
    DESCRIPTION = ("Before Train Spatial Adapters: samples the prompts at α = 0 and α = 1 and says whether the "
                   "Motion Adapter freezes this video model's videos, as that training assumes. A customization "
                   "can weaken the temporal layers and the Motion Adapter in them alike.")

    def check(self, video_model, motion_adapter, prompts, seed, videos_per_prompt, steps, cfg, width, height,
              frames):
        lines = list(dict.fromkeys(prompt_lines(prompts)))
        MotionAdapter.expect(motion_adapter)
        seeds = tuple(range(seed, seed + videos_per_prompt))
        bar = comfy.utils.ProgressBar(2 * len(lines) * len(seeds))
        device = comfy_glue.device()
        comfy_glue.make_room()
        with video_model.on_device(device):
            result = check_freezes(video_model, motion_adapter, lines, seeds=seeds, steps=steps, cfg=cfg,
                                   width=width, height=height, frames=frames, device=device,
                                   should_stop=mm.processing_interrupted, on_video=lambda *_: bar.update(1))
        mm.throw_exception_if_processing_interrupted()
        text = result.summary()
        return {"ui": {"text": [text]}, "result": (text, float(result.share))}
