"""Training the Motion Adapter and Spatial Adapters inside ComfyUI, on the GPU ComfyUI uses."""
from pathlib import Path

import comfy.model_management as mm
import comfy.utils
import folder_paths
import torch

from ..adapters import lowrank, training
from ..adapters.files import safe_child
from ..adapters.motion_adapter import MotionAdapter, check_freezes
from ..adapters.spatial_adapters import SpatialAdapters
from . import comfy_glue, paths
from .adapter_nodes import ADAPTER
from .video_model_nodes import VIDEO_MODEL

CLIPS = "SM_CLIPS"
LOSS_EVENT = "still_moving.loss"


def settings_inputs(rank, lr, steps):
    return {
        "steps": ("INT", {"default": steps, "min": 1, "max": 100000,
                          "tooltip": "Training steps. The default is a reasonable first run; watch the loss curve "
                                     "and resume for more if it is still falling."}),
        "learning_rate": ("FLOAT", {"default": lr, "min": 1e-7, "max": 1.0, "step": 1e-6, "round": False,
                                    "tooltip": "How big each learning step is. Keep the default; lower it (e.g. by "
                                               "half) if the loss curve jumps around or the result degrades."}),
        "rank": ("INT", {"default": rank, "min": 1, "max": 256,
                         "tooltip": "Size of the adapter (low-rank size): higher can learn more detail but makes "
                                    "bigger files; the default suits most uses."}),
        "batch": ("INT", {"default": 1, "min": 1, "max": 64,
                          "tooltip": "Clips per training step. 1 works; raise it only if the GPU has memory to "
                                     "spare."}),
        "frames": ("INT", {"default": 16, "min": 2, "max": 32,
                           "tooltip": "Frames per training clip: 16 as AnimateDiff was trained; fewer saves "
                                      "memory."}),
        "width": ("INT", {"default": 256, "min": 64, "max": 1024, "step": 8,
                          "tooltip": "Training width in pixels: 256 is fast and enough to learn the adapter; 512 "
                                     "for finer detail if memory allows."}),
        "height": ("INT", {"default": 256, "min": 64, "max": 1024, "step": 8,
                           "tooltip": "Training height in pixels, like width."}),
        "seed": ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFF,
                         "tooltip": "Seeds the run's random choices (clips, noise, starting weights): the same "
                                    "seed and settings train the same adapter."}),
        "mixed_precision": (["bf16", "fp16", "no"], {
            "default": "bf16", "tooltip": "Faster, lighter training on a CUDA GPU: bf16 on recent GPUs, fp16 on "
                                          "older ones, no for full precision. The CPU always uses full precision."}),
        "gradient_checkpointing": ("BOOLEAN", {"default": True, "tooltip": "Uses far less GPU memory at the cost "
                                               "of slower steps (each layer is computed twice). Keep on unless "
                                               "the GPU has plenty of memory."}),
        "save_every": ("INT", {"default": 0, "min": 0, "max": 100000,
                               "tooltip": "Save the adapter every this many steps, so a long run can be resumed; "
                                          "0 saves at the end (and on Cancel)."}),
        "name": name_input("still_moving"),
    }


def name_input(default):
    return ("STRING", {"default": default, "tooltip": "File name (no folders); a number is added rather than "
                                                      "overwrite a file."})


def resume_input(kind):
    return (_resume_choices(kind), {"tooltip": "Continue a saved run of this kind from its last saved step up to "
                                               "`steps`, saving to the same file (use the same rank); 'none' "
                                               "starts a new adapter."})


def _out_path(kind, name):
    root = Path(folder_paths.get_folder_paths("still_moving")[0]) / kind
    root.mkdir(parents=True, exist_ok=True)
    stem = name.strip() or "still_moving"
    return safe_child(root, stem if stem.endswith(".safetensors") else f"{stem}.safetensors")


def _plain(clips):
    """Clips whose frames are ordinary tensors (frames made by other nodes are inference tensors)."""
    import dataclasses
    return [dataclasses.replace(c, frames=c.frames.clone()) if c.frames.is_inference() else c for c in clips]


class Trainer:
    CATEGORY = "Still-Moving/training"
    FUNCTION = "train"
    OUTPUT_NODE = True
    RETURN_TYPES = (ADAPTER, "STRING", "IMAGE")
    RETURN_NAMES = ("adapter", "path", "loss_curve")
    OUTPUT_TOOLTIPS = ("The trained adapter, for an Attach node or another trainer in the same graph.",
                       "Where the adapter file was saved (under models/still_moving/).",
                       "The loss per step as an image: it should fall and then level off.")

    @classmethod
    def IS_CHANGED(cls, resume_from="none", **_):
        """A resumed run re-runs when the file it resumes from changes."""
        return "none" if resume_from in (None, "none") else paths.fingerprint("still_moving", resume_from)

    def _train(self, cls, video_model, custom, prior, motion_adapter, inputs, after=None, metadata=None):
        """Encode the clips and train an adapter of class ``cls`` into models/still_moving/<kind>/;
        ``inputs``: the node's settings inputs (``settings_inputs``), name, resume_from, unique_id.
        ``after(result, device)`` runs without gradients while the model is still on the device;
        ``metadata`` is added to the adapter file's.
        Returns the ``TrainResult`` and what ``after`` returned."""
        from server import PromptServer
        inputs = dict(inputs)
        name, resume_from = inputs.pop("name"), inputs.pop("resume_from", "none")
        unique_id, width, height = inputs.pop("unique_id", None), inputs.pop("width"), inputs.pop("height")
        s = training.TrainSettings.from_inputs(inputs, f"{cls.__name__} node")
        device = comfy_glue.device()
        comfy_glue.make_room()
        resume = None if resume_from in (None, "none") else paths.full_path("still_moving", resume_from)
        bar = comfy.utils.ProgressBar(s.steps)

        def callback(step, total, loss, source):
            PromptServer.instance.send_sync(LOSS_EVENT, {"node": unique_id, "step": step, "total": total,
                                                         "loss": loss, "source": source})
            bar.update_absolute(step, total, None)

        # ComfyUI runs nodes under inference_mode; training needs autograd, and tensors made in
        # inference mode (the loaded weights, the clips) cannot take part in it.
        with torch.inference_mode(False), torch.enable_grad(), video_model.on_device(device):
            comfy_glue.leave_inference_mode(video_model, motion_adapter)
            result = training.train_on_clips(
                video_model, cls, s, _out_path(cls.kind, name), _plain(custom), _plain(prior), width=width,
                height=height, motion_adapter=motion_adapter, resume=resume, device=device, callback=callback,
                should_stop=mm.processing_interrupted, metadata=metadata)
            extra = None
            if after is not None and not mm.processing_interrupted():
                with torch.no_grad():
                    extra = after(result, device)
        mm.throw_exception_if_processing_interrupted()  # Cancel: saved above, now stop the graph
        return result, extra

    @staticmethod
    def outputs(result):
        """The node's outputs: the adapter, its path and the loss curve as an image."""
        import numpy as np
        curve = training.loss_curve_image(result.losses)
        image = torch.from_numpy(np.asarray(curve, dtype=np.float32) / 255.0)[None]
        return (result.adapter, str(result.path), image)


def _resume_choices(kind):
    from .adapter_nodes import adapter_files
    return ["none"] + [f for f in adapter_files(kind) if f != "(none)"]


class CheckingTrainer(Trainer):
    """A trainer that ends with the Motion Adapter's freeze check: a 4th output and text on the node."""
    RETURN_TYPES = Trainer.RETURN_TYPES + ("STRING",)
    RETURN_NAMES = Trainer.RETURN_NAMES + ("check",)

    @staticmethod
    def freeze_check(video_model, clips, inputs, motion_adapter=None):
        """An ``after`` hook for ``_train``: ``check_freezes`` of ``motion_adapter`` (default: the one
        just trained) on ``video_model`` with two of the clips' captions, at seeds no step used."""
        prompts = list(dict.fromkeys(c.caption for c in clips))[:2]

        def check(result, device):
            adapter = result.adapter if motion_adapter is None else motion_adapter
            return check_freezes(video_model, adapter, prompts, width=inputs["width"],
                                 height=inputs["height"], frames=inputs["frames"], device=device,
                                 should_stop=mm.processing_interrupted)
        return check

    def with_check(self, result, text):
        return {"ui": {"text": [text]}, "result": self.outputs(result) + (text,)}


class TrainMotionAdapter(CheckingTrainer):
    @classmethod
    def INPUT_TYPES(cls):
        req = {"video_model": (VIDEO_MODEL, {"tooltip": "The BASE video model (no customization injected)."}),
               "videos": (CLIPS, {"tooltip": "Natural videos; each step freezes one random frame of one video."})}
        req.update(settings_inputs(rank=8, lr=1e-4, steps=2000))
        req["name"] = name_input("motion_adapter")
        return {"required": req, "optional": {"resume_from": resume_input(MotionAdapter.kind)},
                "hidden": {"unique_id": "UNIQUE_ID"}}

    DESCRIPTION = ("Trains the Motion Adapter: it learns to make the base video model output still videos, which "
                   "later lets Spatial Adapters learn from still images. Train it once per motion module (paper "
                   "§3.2); saved to models/still_moving/motion/.")

    OUTPUT_TOOLTIPS = Trainer.OUTPUT_TOOLTIPS + (
        "The check after training: how much of the model's own motion the adapter leaves at α = 1 (it should "
        "freeze video), with a warning when it does not.",)

    def train(self, video_model, videos, **inputs):
        result, freeze = self._train(MotionAdapter, video_model, videos, [], None, inputs,
                                     after=self.freeze_check(video_model, videos, inputs))
        return self.with_check(result, freeze.summary())


class TrainSpatialAdapters(CheckingTrainer):
    @classmethod
    def INPUT_TYPES(cls):
        req = {"video_model": (VIDEO_MODEL, {"tooltip": "The video model WITH the customized model injected."}),
               "motion_adapter": (ADAPTER, {"tooltip": "From Train Motion Adapter (or loaded): kept at α = 1 on the "
                                                       "customized stills so the adapters learn appearance, not stillness."}),
               "customized_stills": (CLIPS, {"tooltip": "Images made by the customized T2I model, with captions."}),
               "prior_videos": (CLIPS, {"tooltip": "Natural videos for prior preservation (α = 0)."})}
        req.update(settings_inputs(rank=16, lr=1e-4, steps=1000))
        req["name"] = name_input("spatial_adapters")
        req["prior_ratio"] = ("FLOAT", {"default": 0.5, "min": 0.0, "max": 1.0, "step": 0.05,
                                        "tooltip": "Share of steps on the prior videos, which keep the model's "
                                                   "natural motion; 0.5 is the paper's. On the toy models 1.0 (no "
                                                   "stills) kept more motion and as much of the customization."})
        req["target_layers"] = (list(lowrank.SPATIAL_TARGETS), {"default": "all", "tooltip": "Where the adapters "
                                "sit. all (the paper's): after every customized layer; attention: the "
                                "transformer blocks' layers only (smaller files); block_outputs: the last layer of each "
                                "block. On the toy models none did better than all beyond the training seed's spread."})
        req["interleaved"] = ("BOOLEAN", {"default": False, "tooltip": "Leave off. On: the paper's baseline "
                                          "instead (stills with the temporal layers off, alternating with videos), "
                                          "for comparisons."})
        return {"required": req, "optional": {
            "resume_from": resume_input(SpatialAdapters.kind),
            "caption_dropout": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 1.0, "step": 0.05, "tooltip":
                                "Share of steps trained with the empty prompt. Try 0.1-0.2 if the trained "
                                "adapters lose the customization at your CFG but keep it at CFG 1: the "
                                "customized checkpoint's empty prompt then draws the subject too."}),
            "min_timestep": ("INT", {"default": 500, "min": 0, "max": 999, "step": 50, "tooltip":
                             "Train on noise levels from this timestep up (0: all, as the paper). 500 kept more "
                             "of the motion and of the customization than 0 on the toy models."})},
                "hidden": {"unique_id": "UNIQUE_ID"}}

    DESCRIPTION = ("Trains Spatial Adapters for an injected customized model, so it keeps its look and moves "
                   "naturally (paper §3.3); saved to models/still_moving/spatial/. Ends with a check of whether "
                   "the Motion Adapter froze this customized model's videos, as the training assumes; Motion Adapter "
                   "Check tells before training.")

    OUTPUT_TOOLTIPS = Trainer.OUTPUT_TOOLTIPS + (
        "How much of the customized model's frame-to-frame change the Motion Adapter leaves at α = 1, with a "
        "warning when it does not freeze it, as the training assumes.",)

    def train(self, video_model, motion_adapter, customized_stills, prior_videos, target_layers, **inputs):
        inputs["target_mode"] = target_layers
        interleaved = inputs.get("interleaved", False)
        check = None if interleaved else self.freeze_check(video_model, customized_stills, inputs, motion_adapter)
        result, freeze = self._train(SpatialAdapters, video_model, customized_stills, prior_videos, motion_adapter,
                                     inputs, after=check)
        return self.with_check(result, "No Motion Adapter check: an interleaved run trains without it."
                               if interleaved else freeze.summary())
