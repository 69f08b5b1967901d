"""Attaching Still-Moving's Motion Adapter and Spatial Adapters to a video model."""
from ..adapters.lowrank import LowRankAdapter
from ..adapters.motion_adapter import MotionAdapter
from ..adapters.spatial_adapters import SpatialAdapters
from . import paths
from .video_model_nodes import CATEGORY, VIDEO_MODEL

ADAPTER = "SM_ADAPTER"


def adapter_files(kind):
    files = [f for f in paths.files("still_moving") if f.replace("\\", "/").startswith(kind)
             and not f.replace("\\", "/").startswith("clip_scoring/")]  # the scoring node's CLIP folders
    return files or ["(none)"]


FROM_INPUT = "(adapter input)"   # a file choice that stands for the linked 'adapter' input


def load_adapter(cls, name, adapter):
    """The adapter from the graph if linked (checked to be a ``cls``), else the chosen file."""
    if adapter is not None:
        return cls.expect(adapter), "(from the graph)"
    if name in (FROM_INPUT, "(none)"):
        raise ValueError(f"no {cls.kind} adapter: link the 'adapter' input or pick a file from "
                         f"models/still_moving/{cls.kind}/.")
    path = paths.full_path("still_moving", name)
    return cls.load(path), path


class AdapterFileNode:
    """A node reading an adapter file chosen in ``adapter_name``: re-run when that file changes."""
    CATEGORY = CATEGORY

    @classmethod
    def IS_CHANGED(cls, adapter_name=None, **_):
        return paths.fingerprint("still_moving", adapter_name)


class AttachNode(AdapterFileNode):
    """An Attach node: the linked adapter or the chosen file of ``ADAPTER_CLASS``, on the video model."""
    ADAPTER_CLASS = None
    RETURN_TYPES = (VIDEO_MODEL,)
    FUNCTION = "attach"

    def attach(self, video_model, adapter_name, strength, merge, adapter=None):
        """The linked adapter or the chosen file, checked to fit the video model, added to it at
        ``strength`` (merged or as hooks)."""
        adapter, path = load_adapter(self.ADAPTER_CLASS, adapter_name, adapter)
        return (adapter.add_to(video_model, strength, merge, str(path)),)


class AttachMotionAdapter(AttachNode):
    ADAPTER_CLASS = MotionAdapter

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "video_model": (VIDEO_MODEL, {"tooltip": "The video model, usually after the customized model and its "
                                                     "Spatial Adapters."}),
            "adapter_name": (adapter_files(MotionAdapter.kind), {
                "tooltip": "A Motion Adapter from models/still_moving/motion/ (ignored when the adapter input is "
                           "linked)."}),
            "motion_scale": ("FLOAT", {"default": 0.0, "min": -2.0, "max": 2.0, "step": 0.05,
                                       "tooltip": "α: 0 = the model's own motion, 1 = frozen (static) video, "
                                                  "negative = more motion than the original. On a naively injected "
                                                  "model whose motion came out weak, try -0.3 to -0.5."}),
        }, "optional": {"adapter": (ADAPTER, {"tooltip": "A Motion Adapter straight from the trainer node."})}}

    OUTPUT_TOOLTIPS = ("The video model with the Motion Adapter as a motion slider.",)
    DESCRIPTION = ("Attaches a Motion Adapter, a slider for the amount of motion: 0 keeps the model's own motion, "
                   "1 freezes the video, negative values add motion.")

    def attach(self, video_model, adapter_name, motion_scale, adapter=None):
        return super().attach(video_model, adapter_name, motion_scale, True, adapter)


class AttachSpatialAdapters(AttachNode):
    ADAPTER_CLASS = SpatialAdapters

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "video_model": (VIDEO_MODEL, {"tooltip": "The video model with the customized model injected (the same "
                                                     "one the adapters were trained for)."}),
            "adapter_name": (adapter_files(SpatialAdapters.kind), {
                "tooltip": "Spatial Adapters from models/still_moving/spatial/, trained for the customized model "
                           "injected above (ignored when the adapter input is linked)."}),
            "strength": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 2.0, "step": 0.05,
                                   "tooltip": "1 as trained. Lower it if the subject looks weak in the video, "
                                              "raise it a little if the motion still looks frozen."}),
            "merge": ("BOOLEAN", {"default": True, "tooltip": "Fold the adapters into the weights while sampling "
                                                             "(no extra cost); off computes them on the fly."}),
        }, "optional": {"adapter": (ADAPTER, {"tooltip": "Spatial Adapters straight from the trainer node."})}}

    OUTPUT_TOOLTIPS = ("The customized video model with its motion restored: connect it to the sampler.",)
    DESCRIPTION = ("Attaches Spatial Adapters, which let an injected customized model (DreamBooth, LoRA, style) "
                   "move naturally in the video while keeping its look.")


class LoadAdapter(AdapterFileNode):
    """A saved Motion Adapter or Spatial Adapters as a graph value (e.g. to train Spatial Adapters)."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"adapter_name": (adapter_files(""), {
            "tooltip": "A saved adapter from models/still_moving/ (motion/, spatial/, subject/, temporal/ or "
                       "absorber/)."})}}

    RETURN_TYPES = (ADAPTER,)
    RETURN_NAMES = ("adapter",)
    OUTPUT_TOOLTIPS = ("The adapter, for a trainer's adapter input or an Attach node's adapter input.",)
    FUNCTION = "load"
    DESCRIPTION = ("Loads a saved Still-Moving adapter as a graph value, e.g. the Motion Adapter that Train Spatial "
                   "Adapters needs.")

    def load(self, adapter_name):
        return (LowRankAdapter.load(paths.full_path("still_moving", adapter_name)),)
