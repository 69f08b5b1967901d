"""Still-Moving library: loading, injection, adapters, sampling and training.

Kept free of ComfyUI imports so the CLI, the tests and a multi-GPU launcher can use it
as is. Heavy packages (diffusers, transformers, peft) are imported inside the modules
that need them, never here, so importing the pack stays cheap.
"""
