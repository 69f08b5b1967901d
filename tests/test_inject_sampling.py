"""Injection is exact and reversible; the sampling loop handles CFG, schedulers and long videos."""
import pytest
import torch

from adapters import inject, loading, sampling
from adapters.errors import ModelFileError


@pytest.fixture(scope="module")
def base(tiny_files):
    return loading.load_video_model(tiny_files.checkpoint, tiny_files.motion_files["v2"])


def params(module):
    return {k: v.detach().clone() for k, v in module.named_parameters()}


def test_replace_gives_customized_weights_and_restores(base, tiny_files):
    before = params(base.unet)
    injected = inject.inject_checkpoint(base, tiny_files.custom_checkpoint, weight=1.0)
    custom = tiny_files.custom["unet"]
    with injected.patched():
        now = dict(base.unet.named_parameters())
        for k, v in custom.items():
            assert torch.equal(now[k], v), k
        for k, v in now.items():
            if ".motion_modules." in k:
                assert torch.equal(v, before[k]), k
        te = dict(base.text_encoder.named_parameters())
        assert torch.equal(te["encoder.layers.0.mlp.fc1.weight"] if "encoder.layers.0.mlp.fc1.weight" in te
                           else te["text_model.encoder.layers.0.mlp.fc1.weight"],
                           tiny_files.custom["clip"]["encoder.layers.0.mlp.fc1.weight"])
    after = params(base.unet)
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert len(injected.injected_layers()) > 0
    assert all(".motion_modules." not in n for n in injected.injected_layers())


@pytest.mark.parametrize("w", [0.0, 0.5, 1.0])
def test_interpolation_endpoints_exact(base, tiny_files, w):
    injected = inject.inject_checkpoint(base, tiny_files.custom_checkpoint, weight=w, text_encoder=False)
    base_w = tiny_files.parts["unet"]
    custom = tiny_files.custom["unet"]
    with injected.patched():
        now = dict(base.unet.named_parameters())
        for k in list(custom)[:50]:
            expect = {0.0: base_w[k], 1.0: custom[k]}.get(w, torch.lerp(base_w[k], custom[k], 0.5))
            assert torch.equal(now[k], expect), k


def test_injecting_the_base_itself_changes_nothing(base, tiny_files):
    same = inject.inject_checkpoint(base, tiny_files.checkpoint)
    assert same.patches == [] and same.injected_layers() == []


def test_sdxl_checkpoint_refused_for_injection(base, tmp_path):
    from adapters.export import write_checkpoint
    p = write_checkpoint(tmp_path / "xl.safetensors", {"conditioner.embedders.0.x": torch.zeros(2),
                                                       "model.diffusion_model.label_emb.0.0.weight": torch.zeros(2)})
    with pytest.raises(ModelFileError, match="SDXL"):
        inject.inject_checkpoint(base, p)


def test_interpolation_weight_range(base, tiny_files):
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        inject.inject_checkpoint(base, tiny_files.custom_checkpoint, weight=1.5)


def _embeds(model):
    return sampling.encode_text(model, ["a red circle"], "cpu"), sampling.encode_text(model, [""], "cpu")


@pytest.mark.parametrize("scheduler", sampling.SCHEDULERS)
def test_every_scheduler_runs(base, scheduler):
    c, u = _embeds(base)
    out = sampling.sample(base, c, u, seed=3, steps=2, cfg=5, scheduler=scheduler, width=32, height=32, frames=4)
    assert out.shape == (1, 4, 4, 4, 4) and torch.isfinite(out).all()


def test_seed_is_reproducible_and_matters(base):
    c, u = _embeds(base)
    kw = dict(steps=2, cfg=5, width=32, height=32, frames=4)
    a = sampling.sample(base, c, u, seed=1, **kw)
    assert torch.equal(a, sampling.sample(base, c, u, seed=1, **kw))
    assert not torch.equal(a, sampling.sample(base, c, u, seed=2, **kw))


def test_injection_changes_the_video(base, tiny_files):
    c, u = _embeds(base)
    kw = dict(seed=0, steps=2, cfg=5, width=32, height=32, frames=4)
    plain = sampling.sample(base, c, u, **kw)
    custom = inject.inject_checkpoint(base, tiny_files.custom_checkpoint, text_encoder=False)
    assert not torch.allclose(plain, sampling.sample(custom, c, u, **kw))
    zero = inject.inject_checkpoint(base, tiny_files.custom_checkpoint, weight=0.0, text_encoder=False)
    assert torch.equal(plain, sampling.sample(zero, c, u, **kw))


def test_windows_cover_every_frame():
    for frames, length, overlap in [(40, 16, 4), (17, 16, 0), (16, 16, 4), (100, 8, 7)]:
        wins = sampling.context_windows(frames, length, overlap)
        assert sorted({i for w in wins for i in w}) == list(range(frames))
        assert all(len(w) == min(length, frames) for w in wins)


def test_long_video_needs_context(base):
    c, u = _embeds(base)
    with pytest.raises(ValueError, match="context mode"):
        sampling.sample(base, c, u, steps=1, width=32, height=32, frames=40)
    for mode in ("sliding", "freenoise"):
        ctx = sampling.ContextOptions(mode, 16, 4)
        out = sampling.sample(base, c, u, steps=1, width=32, height=32, frames=40, context=ctx)
        assert out.shape[2] == 40 and torch.isfinite(out).all()


def test_freenoise_reuses_first_window_noise():
    ctx = sampling.ContextOptions("freenoise", 8, 2)
    noise, _ = sampling.initial_noise((1, 4, 20, 2, 2), 0, ctx)
    first = {tuple(noise[0, :, i].flatten().tolist()) for i in range(8)}
    later = {tuple(noise[0, :, i].flatten().tolist()) for i in range(8, 20)}
    assert later <= first


def test_decode_gives_frames(base):
    c, u = _embeds(base)
    lat = sampling.sample(base, c, u, steps=1, width=32, height=48, frames=3)
    frames = sampling.decode(base, lat)
    assert frames.shape == (3, 48, 32, 3) and frames.min() >= 0 and frames.max() <= 1
