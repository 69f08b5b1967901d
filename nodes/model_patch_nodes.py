"""Spatial Adapters on a native ComfyUI MODEL, as a weight patch that ComfyUI applies itself.

The patch is computed on the weight as already patched (checkpoint + every LoRA loaded before
it), so Load Checkpoint -> LoRA loaders -> this node -> AnimateDiff-Evolved -> KSampler gives
the adapters exactly as the pack applies them. The fold itself is the library's
(``LowRankAdapter.merged_weight``); this module only maps names and hands it to ComfyUI.
"""
import torch

import comfy.weight_adapter

from ..adapters import detect, keys
from ..adapters.spatial_adapters import SpatialAdapters
from .adapter_nodes import ADAPTER, AdapterFileNode, adapter_files, load_adapter
from .video_model_nodes import CATEGORY

PREFIX = "diffusion_model."


class SpatialAdapterWeight(comfy.weight_adapter.WeightAdapterBase):
    """One layer's Spatial Adapter as a ComfyUI weight patch: W' = W + s·A_upᵀ(A_downᵀ W) on the
    weight (or bias) it is given, i.e. after the patches added before it."""

    name = "still_moving_spatial"

    def __init__(self, adapter, module):
        self.adapter, self.module = adapter, module
        self.loaded_keys, self.weights = set(), []

    def calculate_weight(self, weight, key, strength, strength_model, offset, function,
                         intermediate_dtype=torch.float32, original_weight=None):
        if strength == 0:
            return weight
        with torch.no_grad():  # ComfyUI may patch outside inference mode; the adapter's tensors may be inference ones
            current = weight.float()
            delta = self.adapter.merged_weight(self.module, current, strength) - current
            weight += function(delta.to(weight.dtype))
        return weight


def model_patches(model, adapter, source="the adapter"):
    """{ComfyUI key: SpatialAdapterWeight} for every target of ``adapter`` in ``model`` (a
    ModelPatcher); refuses a target the MODEL has no weight for, or of another size."""
    sd = model.model.state_dict()
    ldm = {k[len(PREFIX):]: v for k, v in sd.items() if k.startswith(PREFIX)}
    layout, _ = detect.unet_layout(ldm, "the MODEL input")
    mapper = keys.unet_mapper(layout)
    patches, missing = {}, []
    for name in adapter.targets:
        ldm_name = mapper.backward(name)
        wkey = f"{PREFIX}{ldm_name}.weight" if ldm_name else None
        if wkey not in sd:
            missing.append(name)
            continue
        channels = adapter.down[name.replace(".", "__")].shape[0]
        if sd[wkey].shape[0] != channels:
            raise ValueError(f"{source}: layer '{name}' has {sd[wkey].shape[0]} output channels in this MODEL but "
                             f"{channels} in the Spatial Adapters: they were trained for another model. Connect the "
                             "customized SD1.5 checkpoint they were trained for.")
        patch = SpatialAdapterWeight(adapter, name)
        patches[wkey] = patch
        if f"{PREFIX}{ldm_name}.bias" in sd:
            patches[f"{PREFIX}{ldm_name}.bias"] = patch
    if missing:
        raise ValueError(f"{source}: {len(missing)} of the {len(adapter.targets)} layers the Spatial Adapters change "
                         f"have no weight in this MODEL (e.g. {', '.join(missing[:3])}). Connect an SD1.5 MODEL "
                         "(the customized checkpoint the adapters were trained for).")
    return patches


class ApplySpatialAdaptersToModel(AdapterFileNode):
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": ("MODEL", {"tooltip": "The customized SD1.5 model the Spatial Adapters were trained for, from "
                                           "Load Checkpoint (and any LoRA loaders you want under the adapters)."}),
            "adapter_name": (adapter_files("spatial"), {
                "tooltip": "Spatial Adapters from models/still_moving/spatial/. Ignored when the 'adapter' input "
                           "is linked."}),
            "strength": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 2.0, "step": 0.05,
                                   "tooltip": "1 = as trained. Lower keeps more of the customized model's look, "
                                              "and less of its motion fix."}),
        }, "optional": {
            "adapter": (ADAPTER, {"tooltip": "Spatial Adapters straight from the trainer or Load Still-Moving "
                                             "Adapter; used instead of the file choice."}),
        }}

    RETURN_TYPES = ("MODEL",)
    RETURN_NAMES = ("model",)
    OUTPUT_TOOLTIPS = ("The same model with the Spatial Adapters folded into its layers. Connect it to "
                       "AnimateDiff-Evolved and the KSampler like any MODEL.",)
    FUNCTION = "apply"
    CATEGORY = CATEGORY
    DESCRIPTION = ("Puts Still-Moving's Spatial Adapters on a normal ComfyUI MODEL, so a customized checkpoint "
                   "moves like the base model in AnimateDiff-Evolved graphs (any sampler, context options, "
                   "ControlNet...). Use the checkpoint the adapters were trained for; LoRAs loaded before this "
                   "node stay exact.")

    def apply(self, model, adapter_name, strength, adapter=None):
        adapter, path = load_adapter(SpatialAdapters, adapter_name, adapter)
        patches = model_patches(model, adapter, str(path))
        out = model.clone()
        added = set(out.add_patches(patches, strength))
        if added != set(patches):  # add_patches skips keys it does not know: never silently
            raise ValueError(f"{path}: ComfyUI refused {len(set(patches) - added)} of the adapter's patches "
                             f"(e.g. {sorted(set(patches) - added)[:2]}).")
        return (out,)
