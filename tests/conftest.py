"""Shared test fixtures.

The ComfyUI host itself (in-process and server) lives in scripts/comfy_host.py, shared with
the demo; tiny model files in model_files.py.
"""
from pathlib import Path

import pytest

from comfy_host import ComfyServer, InProcessComfy, comfyui_path, make_base
from model_files import comfy_files, tiny_files  # noqa: F401  (pytest fixtures)


@pytest.fixture(scope="session")
def comfy_base(tmp_path_factory) -> Path:
    """The session's ComfyUI base directory, shared by both hosts."""
    return make_base(tmp_path_factory.mktemp("comfy_base"))


@pytest.fixture(scope="session")
def comfy(comfy_base) -> InProcessComfy:
    """ComfyUI in this process (built-in nodes + the pack). Check .pack_loaded / .pack_log."""
    return InProcessComfy(comfy_base, comfyui_path())


@pytest.fixture(scope="session")
def comfy_server(comfy_base):
    """A real ComfyUI server on 127.0.0.1, killed at session end."""
    srv = ComfyServer(comfy_base, comfyui_path())
    yield srv
    srv.stop()
