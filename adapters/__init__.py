"""Still-Moving library: loading, injection, adapters, sampling and training.

Kept free of ComfyUI imports so the CLI, the tests and a multi-GPU launcher can use it
as is. Heavy packages (diffusers, transformers, peft) are imported inside the modules
that need them, never here, so importing the pack stays cheap.
"""
# Each adapter kind registers itself with lowrank.LowRankAdapter when its module is imported;
# importing them here lets LowRankAdapter.load return the right class for every adapter file.
from . import customize, motion_adapter, spatial_adapters  # noqa: F401
