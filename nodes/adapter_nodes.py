"""Attaching Still-Moving's Motion Adapter and Spatial Adapters to a video model."""
from ..adapters import lowrank
from ..adapters.video_model import AdapterPatch
from . import paths
from .video_model_nodes import CATEGORY, VIDEO_MODEL

ADAPTER = "SM_ADAPTER"


def adapter_files(kind):
    files = [f for f in paths.files("still_moving") if f.replace("\\", "/").startswith(kind)
             and not f.replace("\\", "/").startswith("clip_scoring/")]  # the scoring node's CLIP folders
    return files or ["(none)"]


FROM_INPUT = "(adapter input)"   # a file choice that stands for the linked 'adapter' input


def load_adapter(kind, name, adapter):
    """The adapter from the graph if linked (checked to be of ``kind``), else the chosen file."""
    if adapter is not None:
        if adapter.kind != kind:
            raise ValueError(f"this input needs a {kind} adapter, got a {adapter.kind} adapter.")
        return adapter, "(from the graph)"
    if name in (FROM_INPUT, "(none)"):
        raise ValueError(f"no {kind} adapter: link the 'adapter' input or pick a file from "
                         f"models/still_moving/{kind}/.")
    path = paths.full_path("still_moving", name)
    return lowrank.LowRankAdapter.load(path, kind), path


class AttachMotionAdapter:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "video_model": (VIDEO_MODEL,),
            "adapter_name": (adapter_files("motion"), {"tooltip": "A Motion Adapter from models/still_moving/motion/."}),
            "motion_scale": ("FLOAT", {"default": 0.0, "min": -2.0, "max": 2.0, "step": 0.05,
                                       "tooltip": "α: 0 = the model's own motion, 1 = frozen (static) video, "
                                                  "negative = more motion than the original. Behind Spatial Adapters "
                                                  "whose motion came out weak, try -0.3 to -0.5."}),
        }, "optional": {"adapter": (ADAPTER, {"tooltip": "A Motion Adapter straight from the trainer node."})}}

    RETURN_TYPES = (VIDEO_MODEL,)
    FUNCTION = "attach"
    CATEGORY = CATEGORY

    def attach(self, video_model, adapter_name, motion_scale, adapter=None):
        adapter, path = load_adapter(lowrank.MOTION, adapter_name, adapter)
        adapter.check(video_model, path)
        return (video_model.with_patch(AdapterPatch(adapter, motion_scale, True, str(path))),)


class AttachSpatialAdapters:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "video_model": (VIDEO_MODEL,),
            "adapter_name": (adapter_files("spatial"), {"tooltip": "Spatial Adapters from models/still_moving/spatial/, "
                                                                  "trained for the customized model injected above."}),
            "strength": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 2.0, "step": 0.05}),
            "merge": ("BOOLEAN", {"default": True, "tooltip": "Fold the adapters into the weights while sampling "
                                                             "(no extra cost); off computes them on the fly."}),
        }, "optional": {"adapter": (ADAPTER, {"tooltip": "Spatial Adapters straight from the trainer node."})}}

    RETURN_TYPES = (VIDEO_MODEL,)
    FUNCTION = "attach"
    CATEGORY = CATEGORY

    def attach(self, video_model, adapter_name, strength, merge, adapter=None):
        adapter, path = load_adapter(lowrank.SPATIAL, adapter_name, adapter)
        adapter.check(video_model, path)
        return (video_model.with_patch(AdapterPatch(adapter, strength, merge, str(path))),)


class LoadAdapter:
    """A saved Motion Adapter or Spatial Adapters as a graph value (e.g. to train Spatial Adapters)."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"adapter_name": (adapter_files(""), {"tooltip": "A file from models/still_moving/."})}}

    RETURN_TYPES = (ADAPTER,)
    RETURN_NAMES = ("adapter",)
    FUNCTION = "load"
    CATEGORY = CATEGORY

    def load(self, adapter_name):
        return (lowrank.LowRankAdapter.load(paths.full_path("still_moving", adapter_name)),)
