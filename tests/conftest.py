"""Shared test fixtures, imported here so every test module sees them.

The ComfyUI host (in-process `comfy`, real server `comfy_server`, their shared `comfy_base`
directory) lives in comfy_host.py; tiny model files in model_files.py.
"""
from comfy_host import comfy, comfy_base, comfy_server  # noqa: F401  (pytest fixtures)
from model_files import tiny_files  # noqa: F401
