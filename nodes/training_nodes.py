"""Training the Motion Adapter and Spatial Adapters inside ComfyUI, on the GPU ComfyUI uses."""
from pathlib import Path

import comfy.model_management as mm
import comfy.utils
import folder_paths

from ..adapters import data, lowrank, training
from ..adapters.files import safe_child
from . import comfy_glue
from .adapter_nodes import ADAPTER
from .video_model_nodes import VIDEO_MODEL

CLIPS = "SM_CLIPS"
LOSS_EVENT = "still_moving.loss"


def _settings_inputs(rank, lr, steps):
    return {
        "steps": ("INT", {"default": steps, "min": 1, "max": 100000}),
        "learning_rate": ("FLOAT", {"default": lr, "min": 1e-7, "max": 1.0, "step": 1e-6, "round": False}),
        "rank": ("INT", {"default": rank, "min": 1, "max": 256, "tooltip": "Low-rank size of the adapter."}),
        "batch": ("INT", {"default": 1, "min": 1, "max": 64}),
        "frames": ("INT", {"default": 16, "min": 2, "max": 32}),
        "width": ("INT", {"default": 256, "min": 64, "max": 1024, "step": 8}),
        "height": ("INT", {"default": 256, "min": 64, "max": 1024, "step": 8}),
        "seed": ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFF}),
        "mixed_precision": (["bf16", "fp16", "no"], {"default": "bf16", "tooltip": "CUDA only; fp32 on the CPU."}),
        "gradient_checkpointing": ("BOOLEAN", {"default": True, "tooltip": "Recompute each layer in the backward pass: a training step at SD1.5 + v2 size (16 frames, 256 px) peaked at 7.3 GiB instead of over 21 GiB, at the cost of running the forward pass twice."}),
        "save_every": ("INT", {"default": 0, "min": 0, "max": 100000, "tooltip": "0: save at the end (and on Cancel)."}),
        "name": ("STRING", {"default": "still_moving", "tooltip": "File name (no folders); a number is added "
                                                                  "rather than overwrite a file."}),
    }


def _out_path(kind, name):
    root = Path(folder_paths.get_folder_paths("still_moving")[0]) / kind
    root.mkdir(parents=True, exist_ok=True)
    stem = name.strip() or "still_moving"
    return safe_child(root, stem if stem.endswith(".safetensors") else f"{stem}.safetensors")


def comfy_glue_full_path(name):
    from . import paths
    return paths.full_path("still_moving", name)


def _plain(clips):
    """Clips whose frames are ordinary tensors (frames made by other nodes are inference tensors)."""
    import dataclasses
    return [dataclasses.replace(c, frames=c.frames.clone()) if c.frames.is_inference() else c for c in clips]


class _Trainer:
    CATEGORY = "Still-Moving/training"
    FUNCTION = "train"
    OUTPUT_NODE = True
    RETURN_TYPES = (ADAPTER, "STRING", "IMAGE")
    RETURN_NAMES = ("adapter", "path", "loss_curve")

    def _train(self, kind, video_model, custom, prior, motion_adapter, s, width, height, name, resume_from,
               unique_id):
        import numpy as np
        import torch
        from server import PromptServer
        device = comfy_glue.device()
        comfy_glue.make_room()
        resume = None if resume_from == "none" else comfy_glue_full_path(resume_from)
        bar = comfy.utils.ProgressBar(s.steps)

        def callback(step, total, loss, source):
            PromptServer.instance.send_sync(LOSS_EVENT, {"node": unique_id, "step": step, "total": total,
                                                         "loss": loss, "source": source})
            bar.update_absolute(step, total, None)

        # ComfyUI runs nodes under inference_mode; training needs autograd, and tensors made in
        # inference mode (the loaded weights, the clips) cannot take part in it.
        with torch.inference_mode(False), torch.enable_grad(), video_model.on_device(device):
            comfy_glue.leave_inference_mode(video_model, motion_adapter)
            with torch.no_grad():
                custom_l = data.encode_clips(video_model.vae, _plain(custom), width, height)
                prior_l = data.encode_clips(video_model.vae, _plain(prior), width, height) if prior else []
            result = training.train(
                video_model, kind, s, _out_path(kind, name), custom_clips=custom_l, prior_clips=prior_l,
                motion_adapter=motion_adapter, resume=resume, device=device, callback=callback,
                should_stop=mm.processing_interrupted)
        curve = training.loss_curve_image(result.losses)
        image = torch.from_numpy(np.asarray(curve, dtype=np.float32) / 255.0)[None]
        mm.throw_exception_if_processing_interrupted()  # Cancel: saved above, now stop the graph
        return (result.adapter, str(result.path), image)


def _resume_choices(kind):
    from .adapter_nodes import adapter_files
    return ["none"] + [f for f in adapter_files(kind) if f != "(none)"]


class TrainMotionAdapter(_Trainer):
    @classmethod
    def INPUT_TYPES(cls):
        req = {"video_model": (VIDEO_MODEL, {"tooltip": "The BASE video model (no customization injected)."}),
               "videos": (CLIPS, {"tooltip": "Natural videos; each step freezes one random frame of one video."})}
        req.update(_settings_inputs(rank=8, lr=1e-4, steps=2000))
        req["name"] = ("STRING", {"default": "motion_adapter"})
        return {"required": req, "optional": {"resume_from": (_resume_choices("motion"),)},
                "hidden": {"unique_id": "UNIQUE_ID"}}

    DESCRIPTION = "Trains the Motion Adapter on frozen videos (paper §3.2); saved to models/still_moving/motion/."

    def train(self, video_model, videos, steps, learning_rate, rank, batch, frames, width, height, seed,
              mixed_precision, gradient_checkpointing, save_every, name, resume_from="none", unique_id=None):
        s = training.TrainSettings(steps, learning_rate, rank, batch, frames, seed, mixed_precision,
                                   gradient_checkpointing, save_every)
        return self._train(lowrank.MOTION, video_model, videos, [], None, s, width, height, name,
                           resume_from, unique_id)


class TrainSpatialAdapters(_Trainer):
    @classmethod
    def INPUT_TYPES(cls):
        req = {"video_model": (VIDEO_MODEL, {"tooltip": "The video model WITH the customized model injected."}),
               "motion_adapter": (ADAPTER, {"tooltip": "From Train Motion Adapter (or loaded): kept at α = 1 on the "
                                                       "customized stills so the adapters learn appearance, not stillness."}),
               "customized_stills": (CLIPS, {"tooltip": "Images made by the customized T2I model, with captions."}),
               "prior_videos": (CLIPS, {"tooltip": "Natural videos for prior preservation (α = 0)."})}
        req.update(_settings_inputs(rank=16, lr=1e-4, steps=1000))
        req["name"] = ("STRING", {"default": "spatial_adapters"})
        req["prior_ratio"] = ("FLOAT", {"default": 0.5, "min": 0.0, "max": 1.0, "step": 0.05,
                                        "tooltip": "Share of steps on the prior videos."})
        req["target_layers"] = (list(lowrank.SPATIAL_TARGETS), {"default": "all", "tooltip": "all: after every "
                                "injected linear/conv (the paper's wording); attention: spatial-transformer "
                                "linears only; block_outputs: the last layer of each spatial block."})
        req["interleaved"] = ("BOOLEAN", {"default": False, "tooltip": "The paper's baseline instead: stills with "
                                          "the temporal layers off, alternating with videos."})
        return {"required": req, "optional": {
            "resume_from": (_resume_choices("spatial"),),
            "caption_dropout": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 1.0, "step": 0.05, "tooltip":
                                "Share of steps trained with the empty prompt. Try 0.1-0.2 if the trained "
                                "adapters lose the customization at your CFG but keep it at CFG 1: the "
                                "customized checkpoint's empty prompt then draws the subject too."})},
                "hidden": {"unique_id": "UNIQUE_ID"}}

    DESCRIPTION = "Trains Spatial Adapters for an injected customized model (paper §3.3); saved to models/still_moving/spatial/."

    def train(self, video_model, motion_adapter, customized_stills, prior_videos, steps, learning_rate, rank, batch,
              frames, width, height, seed, mixed_precision, gradient_checkpointing, save_every, name, prior_ratio,
              target_layers, interleaved, resume_from="none", caption_dropout=0.0, unique_id=None):
        s = training.TrainSettings(steps, learning_rate, rank, batch, frames, seed, mixed_precision,
                                   gradient_checkpointing, save_every, prior_ratio=prior_ratio,
                                   interleaved=interleaved, target_mode=target_layers,
                                   caption_dropout=caption_dropout)
        return self._train(lowrank.SPATIAL, video_model, customized_stills, prior_videos, motion_adapter,
                           s, width, height, name, resume_from, unique_id)
