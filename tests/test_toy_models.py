"""The toy world and the embedded toy models (issue 4): the shipped files load through the users'
path, generate the captioned motion with the pack's sampler, and the customized T2I carries the
customization. Thresholds are set from the values measured when the models were trained
(embedded/toy_models.json), with margin."""
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from adapters import inject, loading, sampling, toyworld as tw
from adapters.lowrank import LowRankAdapter
from adapters.video_model import AdapterPatch

EMBEDDED = Path(__file__).resolve().parent.parent / "embedded"
FILES = json.loads((EMBEDDED / "toy_models.json").read_text())["files"]
STEPS = 12
# measured at training time with 20 steps (embedded/toy_models.json); here 12 steps, one seed
MIN_MOTION_PX = 6.0
MAX_STILL_PX = 6.0
CUSTOM_DISTANCE_RATIO = 0.5


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


def _video(vm, prompt, seed=0, steps=STEPS):
    cond, uncond = sampling.encode_text(vm, [prompt], "cpu"), sampling.encode_text(vm, [""], "cpu")
    lat = sampling.sample(vm, cond, uncond, seed=seed, steps=steps, cfg=4.0, width=tw.SIZE, height=tw.SIZE,
                          frames=tw.FRAMES)
    return sampling.decode(vm, lat)


def _along(frames, motion):
    dx, dy = tw.displacement(frames)
    ux, uy = tw.MOTIONS[motion]
    return dx * ux + dy * uy


def test_shipped_models_are_detected_like_user_files(toy_model):
    vm = toy_model
    assert vm.info["motion_version"] == "v2"
    assert list(vm.unet.config.block_out_channels) == [32, 64]
    assert vm.vae.config.scaling_factor == pytest.approx(0.18215)
    assert vm.text_encoder.config.vocab_size == len(vm.tokenizer) == 514
    adapter = LowRankAdapter.load(EMBEDDED / FILES["adapter"], "motion")
    adapter.check(vm, EMBEDDED / FILES["adapter"])  # trained for this very motion module


def test_shipped_model_moves_as_captioned(toy_model):
    left = _video(toy_model, "a red circle moving left")
    up = _video(toy_model, "a green triangle moving up")
    still = _video(toy_model, "a blue square standing still")
    assert tw.locate(left)[1].min() > 20  # a subject is drawn in every frame
    assert _along(left, "left") > MIN_MOTION_PX, tw.displacement(left)
    assert _along(up, "up") > MIN_MOTION_PX, tw.displacement(up)
    assert math.hypot(*tw.displacement(still)) < MAX_STILL_PX, tw.displacement(still)


def _as_rendered_by(vm, frames):
    """The customization stills as the model's own VAE reproduces them (the toy VAE cannot draw
    the exact stripes, so the target is what the customized model could at best generate)."""
    with torch.no_grad():
        x = tw.to_float(frames).permute(0, 3, 1, 2) * 2 - 1
        return ((vm.vae.decode(vm.vae.encode(x).latent_dist.mean).sample + 1) / 2).clamp(0, 1).permute(0, 2, 3, 1)


def test_customized_checkpoint_carries_the_customization(toy_model):
    custom = inject.inject_checkpoint(toy_model, EMBEDDED / FILES["custom"])
    assert custom.injected_layers()
    target = tw.mean_colour(_as_rendered_by(toy_model, np.concatenate([s.frames for s in tw.custom_stills(6)])))

    def distance(vm):
        return np.mean([np.linalg.norm(tw.mean_colour(_video(vm, tw.CUSTOM_CLASS_CAPTION, s)) - target)
                        for s in (0, 1)])
    base, customized = distance(toy_model), distance(custom)
    assert customized < CUSTOM_DISTANCE_RATIO * base, (base, customized, target)


def test_shipped_motion_adapter_freezes_motion(toy_model):
    adapter = LowRankAdapter.load(EMBEDDED / FILES["adapter"], "motion")
    frozen = toy_model.with_patch(AdapterPatch(adapter, 1.0, True, "toy motion adapter"))
    moving = abs(_along(_video(toy_model, "a red circle moving left"), "left"))
    still = math.hypot(*tw.displacement(_video(frozen, "a red circle moving left")))
    assert still < 0.5 * moving, (still, moving)
