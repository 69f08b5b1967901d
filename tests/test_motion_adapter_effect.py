"""The Motion Adapter does what the paper says, measured on generated videos of a tiny model:
trained on frozen clips, α = 1 makes videos much stiller than α = 0, and α = −1 moves the other way.

How large the drop is depends on the random model and on the function it computes, not on the
loop (``benchmarks/bench_motion_effect.py`` compares ours with a plain diffusers + peft loop on the
same tiny model); the bound asks for a clear drop, which an adapter that does nothing (ratio 1)
cannot pass.
"""
import types

import pytest
import torch

from adapters import loading, sampling, scoring, training
from adapters.video_model import AdapterPatch


@pytest.fixture(scope="module")
def trained(tiny_files, tmp_path_factory):
    model = loading.load_video_model(tiny_files.checkpoint, tiny_files.motion_files["v2"])
    g = torch.Generator().manual_seed(0)
    videos = [types.SimpleNamespace(latents=torch.randn(4, 8, 4, 4, generator=g), caption=f"clip {i % 2}")
              for i in range(8)]
    settings = training.TrainSettings(steps=STEPS, learning_rate=LR, rank=RANK, frames=8, seed=0)
    result = training.train(model, "motion", settings, tmp_path_factory.mktemp("motion") / "m.safetensors",
                            custom_clips=videos)
    return model, result


STEPS, LR, RANK = 300, 1e-2, 8


def motion(model, adapter, alpha, seeds=3):
    m = model.with_patch(AdapterPatch(adapter, alpha))
    c, u = sampling.encode_text(m, ["clip 0"], "cpu"), sampling.encode_text(m, [""], "cpu")
    vals = [scoring.temporal_variance(sampling.sample(m, c, u, seed=s, steps=8, cfg=1.0, width=32, height=32,
                                                      frames=8)) for s in range(seeds)]
    return sum(vals) / len(vals)


def test_motion_scale_controls_motion(trained):
    model, result = trained
    base, still, more = (motion(model, result.adapter, a) for a in (0.0, 1.0, -1.0))
    print(f"temporal variance: alpha=0 {base:.1f}, alpha=1 {still:.1f} ({still / base - 1:+.0%}), "
          f"alpha=-1 {more:.1f} ({more / base - 1:+.0%})")
    assert still < THRESHOLD * base
    assert more > base
    first = sum(l for _, l, _ in result.losses[:20]) / 20
    last = sum(l for _, l, _ in result.losses[-20:]) / 20
    assert last < first


THRESHOLD = 0.8
