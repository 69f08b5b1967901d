"""Exports of what the pack trains into the files other ComfyUI graphs load: a LoRA for Load
LoRA, a MotionLoRA for AnimateDiff-Evolved, a merged checkpoint for Load Checkpoint."""
import folder_paths

from ..adapters import export
from ..adapters.customize import TemporalLoRA
from ..adapters.lowrank import LowRankAdapter
from ..adapters.motion_adapter import MotionAdapter
from ..adapters.spatial_adapters import SpatialAdapters
from . import paths
from .adapter_nodes import ADAPTER, FROM_INPUT, AdapterFileNode, adapter_files, load_adapter
from .video_model_nodes import CATEGORY, VIDEO_MODEL

EXPORT_CATEGORY = f"{CATEGORY}/export"
PATH_OUT = ("STRING",)
PATH_TOOLTIP = ("Where the file was written.",)


def _target(kind, name):
    """The file an export writes: ``name`` inside the first models/``kind`` folder, never an
    existing file and never outside that folder."""
    return export.export_path(folder_paths.get_folder_paths(kind)[0], name)


def _name_input(default, folder):
    return ("STRING", {"default": default, "tooltip": f"File name inside models/{folder}/ (a sub-folder is allowed). "
                                                      "An existing file is never overwritten: pick a new name."})


def _spatial_inputs(folder, default):
    return {"required": {
        "video_model": (VIDEO_MODEL, {"tooltip": "The video model with the customized model injected, exactly as "
                                                 "the Spatial Adapters were trained on it (Load -> Inject, nothing "
                                                 "else)."}),
        "adapter_name": (adapter_files("spatial"), {"tooltip": "Spatial Adapters from models/still_moving/spatial/ "
                                                               "(ignored when the adapter input is linked)."}),
        "strength": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 2.0, "step": 0.05,
                               "tooltip": "The adapter strength baked into the file."}),
        "filename": _name_input(default, folder),
    }, "optional": {"adapter": (ADAPTER, {"tooltip": "Spatial Adapters straight from the trainer node."})}}


class _Export(AdapterFileNode):
    """What every export node shares: one path out, shown on the node; re-run when the adapter file changes."""
    RETURN_TYPES = PATH_OUT
    RETURN_NAMES = ("path",)
    OUTPUT_TOOLTIPS = PATH_TOOLTIP
    OUTPUT_NODE = True
    FUNCTION = "export"
    CATEGORY = EXPORT_CATEGORY

    @staticmethod
    def written(path):
        return {"ui": {"text": [str(path)]}, "result": (str(path),)}


class _SpatialExport(_Export):
    """Spatial Adapters folded into a file for another graph: ``write`` is the library's export."""
    FOLDER, DEFAULT_NAME, DTYPES, write = None, None, None, None

    @classmethod
    def INPUT_TYPES(cls):
        inputs = _spatial_inputs(cls.FOLDER, cls.DEFAULT_NAME)
        default, tooltip = cls.DTYPES
        inputs["required"]["dtype"] = (["fp16", "fp32"], {"default": default, "tooltip": tooltip})
        return inputs

    def export(self, video_model, adapter_name, strength, filename, dtype, adapter=None):
        adapter, source = load_adapter(SpatialAdapters, adapter_name, adapter)
        path = type(self).write(video_model, adapter, _target(self.FOLDER, filename), strength, source, dtype)
        return self.written(path)


class ExportSpatialLoRA(_SpatialExport):
    FOLDER, DEFAULT_NAME = "loras", "still_moving_spatial_lora"
    DTYPES = ("fp32", "fp32 keeps it exact; fp16 is half the size.")
    write = staticmethod(export.export_spatial_lora)
    DESCRIPTION = ("Saves the Spatial Adapters as a standard LoRA in models/loras/, for Load LoRA in any graph. It is "
                   "exact only on the customized checkpoint it was exported from (named in the file): load that "
                   "checkpoint and apply the LoRA at strength 1.")


class ExportMergedCheckpoint(_SpatialExport):
    FOLDER, DEFAULT_NAME = "checkpoints", "still_moving_merged"
    DTYPES = ("fp16", "fp16 is the usual size of an SD1.5 checkpoint.")
    write = staticmethod(export.export_merged_checkpoint)
    DESCRIPTION = ("Saves the customized model with the Spatial Adapters folded in as an ordinary SD1.5 checkpoint in "
                   "models/checkpoints/ (UNet, VAE, text encoder), for Load Checkpoint or diffusers.")


MOTION_KINDS = (MotionAdapter.kind, TemporalLoRA.kind)  # the adapters a MotionLoRA can be made from


def _motion_files():
    files = [f for kind in MOTION_KINDS for f in adapter_files(kind) if f != "(none)"]
    return files or ["(none)"]


class ExportMotionLoRA(_Export):
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "adapter_name": (_motion_files(), {"tooltip": "A Motion Adapter (models/still_moving/motion/) or a "
                                                          "Customize-A-Video temporal LoRA (temporal/); ignored when "
                                                          "the adapter input is linked."}),
            "alpha": ("FLOAT", {"default": -0.3, "min": -2.0, "max": 2.0, "step": 0.05,
                                "tooltip": "The motion scale baked into the file, as on Attach Motion Adapter: 0 = no "
                                           "change, 1 = static, negative = more motion. For a temporal LoRA, its "
                                           "strength. Load the file at strength 1 to get exactly this."}),
            "filename": _name_input("still_moving_motion", "animatediff_motion_lora"),
            "dtype": (["fp16", "fp32"], {"default": "fp16", "tooltip": "fp16 like the published MotionLoRAs."}),
        }, "optional": {"adapter": (ADAPTER, {"tooltip": "A Motion Adapter or temporal LoRA straight from a "
                                                         "trainer node."})}}

    DESCRIPTION = ("Saves a Motion Adapter (or a temporal LoRA) as an AnimateDiff MotionLoRA in "
                   "models/animatediff_motion_lora/, with alpha baked in, for AnimateDiff-Evolved's Load AnimateDiff "
                   "LoRA (strength 1) or this pack's Load MotionLoRA. Use it with the motion module it was trained on.")

    def export(self, adapter_name, alpha, filename, dtype, adapter=None):
        if adapter is not None:
            source = "(from the graph)"
        elif adapter_name in (FROM_INPUT, "(none)"):
            raise ValueError("no Motion Adapter: link the 'adapter' input or pick a file from "
                             "models/still_moving/motion/ or temporal/.")
        else:
            source = paths.full_path("still_moving", adapter_name)
            adapter = LowRankAdapter.load(source)
        if adapter.kind not in MOTION_KINDS:
            raise ValueError(f"{source}: this is a {adapter.kind} adapter; a MotionLoRA is made from a Motion Adapter "
                             "or a temporal LoRA.")
        path = export.export_motion_lora(adapter, _target("animatediff_motion_lora", filename), alpha, source, dtype)
        return self.written(path)
