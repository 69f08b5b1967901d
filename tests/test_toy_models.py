"""The toy world and the embedded toy models (issue 4): the world's ground truth, and the shipped
files loading through the users' path (architecture detected from the tensors, the Motion
Adapter matching the shipped motion module). Not tested yet, because the shipped models do not
do it yet (embedded/README.md): captioned motion and the customization's effect."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from adapters import loading, toyworld as tw
from adapters.lowrank import LowRankAdapter

EMBEDDED = Path(__file__).resolve().parent.parent / "embedded"
FILES = json.loads((EMBEDDED / "toy_models.json").read_text())["files"]


def test_toy_world_ground_truth_and_held_out_subject():
    clip = tw.render_caption("a green square moving right", seed=3)
    assert clip.frames.shape == (tw.FRAMES, tw.SIZE, tw.SIZE, 3) and clip.frames.dtype == np.uint8
    centres, areas = tw.locate(clip.frames)
    assert np.abs(centres - clip.positions).max() < 1.0 and (areas > 50).all()
    dx, dy = tw.displacement(clip.frames)
    assert dx > 2.5 * (tw.FRAMES - 1) - 1 and abs(dy) < 1
    again = tw.render_caption("a green square moving right", seed=3)
    assert np.array_equal(clip.frames, again.frames)  # deterministic
    world = tw.dataset(60, seed=5)
    assert sorted({c.caption for c in world}) == sorted(tw.all_captions())  # balanced: every caption once
    for c in world:
        assert tw.CUSTOM_TOKEN not in c.caption and tw.CUSTOM_SHAPE not in c.caption
        assert tw.custom_colour_score(c.frames) < 0.05
        assert tw.parse_caption(c.caption)["shape"] == c.spec.shape
    stills = tw.custom_stills(6)
    assert all(s.frames.shape[0] == 1 and s.caption == tw.CUSTOM_CLASS_CAPTION for s in stills)
    assert min(tw.custom_colour_score(s.frames) for s in stills) > 0.6


@pytest.fixture(scope="module")
def toy_model():
    torch.set_num_threads(1)
    return loading.load_video_model(EMBEDDED / FILES["base"], EMBEDDED / FILES["motion"])


def test_shipped_models_are_detected_like_user_files(toy_model):
    vm = toy_model
    assert vm.info["motion_version"] == "v2"
    assert list(vm.unet.config.block_out_channels) == [32, 64]
    assert vm.vae.config.scaling_factor == pytest.approx(0.18215)
    assert vm.text_encoder.config.vocab_size == len(vm.tokenizer) == 514
    adapter = LowRankAdapter.load(EMBEDDED / FILES["adapter"], "motion")
    adapter.check(vm, EMBEDDED / FILES["adapter"])  # trained for this very motion module
