"""Still-Moving for ComfyUI: customize AnimateDiff with DreamBooth / StyleDrop / LoRA models."""
try:
    import folder_paths  # noqa: F401  (exists only inside ComfyUI)
except ImportError:  # imported as a plain package (pytest collects it, the CLI): no nodes here
    NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS = {}, {}
else:
    from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

WEB_DIRECTORY = "./js"
__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "WEB_DIRECTORY"]
