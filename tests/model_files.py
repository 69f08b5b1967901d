"""Tiny random models written to disk in the users' real layouts, shared by the whole suite."""
import pytest
import torch

from adapters import export, random_models


class TinyFiles:
    """Paths of tiny model files plus the diffusers-named tensors they were written from."""

    def __init__(self, root):
        self.root = root
        self.parts = random_models.sd15_parts("tiny", seed=0)
        self.custom = random_models.sd15_parts("tiny", seed=1)
        self.motion = {v: random_models.motion_module_parts(v, "tiny", seed=3) for v in ("v1", "v2", "v3")}
        self.checkpoint = self._ckpt("base.safetensors", self.parts)
        self.custom_checkpoint = self._ckpt("custom.safetensors", self.custom)
        self.motion_files = {}
        for v, sd in self.motion.items():
            p = root / f"mm_tiny_{v}.safetensors"
            export.write_checkpoint(p, export.motion_module_tensors(sd))
            self.motion_files[v] = p

    def _ckpt(self, name, parts, fmt="safetensors", dtype=None):
        p = self.root / name
        export.write_checkpoint(p, export.checkpoint_tensors(parts["unet"], parts["vae"], parts["clip"],
                                                            parts["layout"], parts["vae_levels_layers"], dtype),
                                fmt=fmt)
        return p


@pytest.fixture(scope="session")
def tiny_files(tmp_path_factory):
    torch.manual_seed(0)
    return TinyFiles(tmp_path_factory.mktemp("tiny_models"))
