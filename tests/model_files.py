"""Tiny random models written to disk in the users' real layouts, shared by the whole suite; and
the loader for the repository's scripts (benchmarks/, scripts/), which are not a package."""
import importlib.util
from pathlib import Path

import pytest
import torch

from adapters import export
import random_models


REPO = Path(__file__).resolve().parent.parent


def load_script(relpath):
    """A script of the repository (e.g. "benchmarks/bench_toy_words.py") imported as a module."""
    path = REPO / relpath
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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


class ComfyFiles:
    """Checkpoints small enough for CI that ComfyUI's own loader still takes as SD1.5
    (UNet with 320 channels and context 768, real-size VAE and CLIP-L, all random, fp16),
    named as the example workflows name them, plus a kohya LoRA and a motion module."""

    BASE, MOTION, CUSTOM = "v1-5-pruned-emaonly.safetensors", "mm_sd_v15_v2.ckpt", "my_dreambooth_subject.safetensors"
    LORA = "style_kohya.safetensors"
    CONTROLNET, DRIVING_VIDEO = "control_v11p_sd15_canny.pth", "driving_video.mp4"

    def __init__(self, root):
        from adapters import keys
        self.root = root
        base = random_models.sd15_parts("comfy", seed=10)
        custom = random_models.sd15_parts("comfy", seed=11)
        self.base = self._write(self.BASE, base)
        self.custom = self._write(self.CUSTOM, custom)
        del base, custom
        mm = random_models.motion_module_parts("v2", "comfy", seed=12)
        self.motion = export.write_checkpoint(root / self.MOTION, export.motion_module_tensors(mm), fmt="ckpt")
        g = torch.Generator().manual_seed(13)
        lora = {}
        for module, (out_f, in_f) in {"down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q": (320, 320),
                                      "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k": (320, 768),
                                      "up_blocks.0.attentions.1.proj_out": (320, 320)}.items():
            name = "lora_unet_" + module.replace(".", "_")
            lora[f"{name}.lora_down.weight"] = torch.randn(4, in_f, generator=g) * 0.1
            lora[f"{name}.lora_up.weight"] = torch.randn(out_f, 4, generator=g) * 0.1
            lora[f"{name}.alpha"] = torch.tensor(2.0)
        self.lora = export.write_checkpoint(root / self.LORA, lora)
        self.layout = keys.UNetLayout(1, 1, (True,))
        cn, cn_cfg = random_models.controlnet_parts("comfy", seed=14)
        self.controlnet = root / self.CONTROLNET  # lllyasviel's .pth: a plain dict of control_model.* tensors
        torch.save(export.controlnet_tensors(cn, cn_cfg, dtype=torch.float16), self.controlnet)
        self.driving_video = write_driving_video(root / self.DRIVING_VIDEO)

    def _write(self, name, parts):
        tensors = export.checkpoint_tensors(parts["unet"], parts["vae"], parts["clip"], parts["layout"],
                                            parts["vae_levels_layers"], torch.float16)
        return export.write_checkpoint(self.root / name, tensors)


def write_driving_video(path, frames=10, width=96, height=64):
    """A short mp4 (a bright bar sliding over a dark background) for ComfyUI's Load Video node."""
    import av
    import numpy as np
    with av.open(str(path), "w") as out:
        stream = out.add_stream("mpeg4", rate=8)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for i in range(frames):
            img = np.full((height, width, 3), 30, np.uint8)
            img[16:48, 4 + 6 * i:20 + 6 * i] = 230
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


@pytest.fixture(scope="session")
def comfy_files(tmp_path_factory):
    return ComfyFiles(tmp_path_factory.mktemp("comfy_models"))


def randomize_up(adapter, seed=0, std=0.05):
    """Non-zero A_up factors (fresh adapters are the identity), seeded."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in adapter.up.values():
            p.copy_(torch.randn(p.shape, generator=g) * std)
    return adapter
