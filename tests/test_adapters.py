"""Motion Adapter and Spatial Adapters: identity at init, merged == unmerged, one file format
whose loader refuses what does not fit."""
import types
from pathlib import Path

import pytest
import torch

from adapters import inject, loading, lowrank, sampling, training
from adapters.errors import ModelFileError
from adapters.lowrank import LowRankAdapter
from adapters.motion_adapter import MotionAdapter
from adapters.spatial_adapters import SpatialAdapters
from adapters.video_model import AdapterPatch
from model_files import randomize_up as _randomize


@pytest.fixture(scope="module")
def models(tiny_files):
    base = loading.load_video_model(tiny_files.checkpoint, tiny_files.motion_files["v2"])
    custom = inject.inject_checkpoint(base, tiny_files.custom_checkpoint)
    return base, custom


def _embeds(model):
    return sampling.encode_text(model, ["a red circle"], "cpu"), sampling.encode_text(model, [""], "cpu")


def _video(model, **kw):
    c, u = _embeds(model)
    return sampling.sample(model, c, u, seed=2, steps=2, cfg=5, width=32, height=32, frames=4, **kw)


def test_motion_targets_are_temporal_qkv(models):
    base, _ = models
    names = lowrank.motion_targets(base.unet)
    assert names and all(".motion_modules." in n and n.rsplit(".", 1)[1] in ("to_q", "to_k", "to_v") for n in names)
    assert any(n.startswith("mid_block.") for n in names)  # v2 has a mid-block motion module
    assert len(names) == 6 * sum(1 for n, _ in base.unet.named_modules() if n.endswith(".transformer_blocks.0")
                                 and ".motion_modules." in n)


def test_spatial_targets_need_injection_and_follow_mode(models):
    base, custom = models
    with pytest.raises(ValueError, match="inject"):
        lowrank.spatial_targets(base)
    every = lowrank.spatial_targets(custom, "all")
    attn = lowrank.spatial_targets(custom, "attention")
    blocks = lowrank.spatial_targets(custom, "block_outputs")
    assert set(attn) < set(every) and set(blocks) < set(every)
    assert all(n.endswith(("proj_out", "conv2")) for n in blocks)
    assert not any(".motion_modules." in n for n in every)


@pytest.mark.parametrize("merged", [True, False])
def test_fresh_adapters_leave_output_bit_identical(models, merged):
    base, custom = models
    ref = _video(custom)
    sp = SpatialAdapters.for_model(custom, rank=4)
    mo = MotionAdapter.for_model(base, rank=4)
    m = custom.with_patch(AdapterPatch(mo, 1.0, merged)).with_patch(AdapterPatch(sp, 1.0, merged))
    assert torch.equal(_video(m), ref)


def test_spatial_merged_equals_unmerged(models):
    _, custom = models
    sp = _randomize(SpatialAdapters.for_model(custom, rank=4))
    merged = _video(custom.with_patch(AdapterPatch(sp, 0.7, True)))
    hooked = _video(custom.with_patch(AdapterPatch(sp, 0.7, False)))
    plain = _video(custom)
    assert float((merged - plain).norm() / plain.norm()) > 0.05  # the adapter moves the video
    torch.testing.assert_close(merged, hooked, rtol=1e-3, atol=1e-3)  # float32 order of operations, after CFG


@pytest.mark.parametrize("kind", [SpatialAdapters, MotionAdapter])
def test_unmerged_folds_into_the_weight_only_for_large_outputs_without_autograd(kind, monkeypatch):
    torch.manual_seed(0)
    layers = torch.nn.ModuleDict({"lin": torch.nn.Linear(6, 5), "conv": torch.nn.Conv2d(3, 4, 3, padding=1)})
    if kind is MotionAdapter:  # a weight update: on linears only (the temporal Q/K/V)
        del layers["conv"]
    shapes = {"lin": (6, 5) if kind is MotionAdapter else (5, 5), "conv": (4, 4)}
    adapter = _randomize(kind({n: shapes[n] for n in layers}, rank=2), std=0.5)
    before = {k: v.clone() for k, v in layers.state_dict().items()}

    def expected(name, x):
        d, u = (t.detach() for t in adapter.factors(name))
        layer = layers[name]
        if kind is MotionAdapter:
            return torch.nn.functional.linear(x, layer.weight + 0.7 * (d @ u).T, layer.bias)
        y = layer._conv_forward(x, layer.weight, layer.bias) if name == "conv" else torch.nn.functional.linear(
            x, layer.weight, layer.bias)
        proj = torch.eye(d.shape[0]) + 0.7 * d @ u
        return torch.einsum("bchw,cd->bdhw", y, proj) if name == "conv" else y @ proj

    folded = []
    real = adapter.effective_parameters
    monkeypatch.setattr(adapter, "effective_parameters", lambda *a: folded.append(a[0]) or real(*a))
    handles = adapter.attach(layers, 0.7)
    assert all("forward" in layers[n].__dict__ for n in layers) and not any(m._forward_hooks for m in layers.values())
    inputs = {"lin": (torch.randn(40, 6), torch.randn(3, 6)),             # rows 40 > fan-in 6; 3 <= 6
              "conv": (torch.randn(2, 3, 5, 5), torch.randn(1, 3, 2, 2))}  # rows 50 > 27; 4 <= 27
    for name in layers:
        large, small = inputs[name]
        with torch.no_grad():
            torch.testing.assert_close(layers[name](large), expected(name, large), rtol=1e-5, atol=1e-5)
            assert folded == [name]
            torch.testing.assert_close(layers[name](small), expected(name, small), rtol=1e-5, atol=1e-5)
            assert folded == [name]
        out = layers[name](large)                                          # autograd: the output projection
        torch.testing.assert_close(out, expected(name, large), rtol=1e-5, atol=1e-5)
        assert folded == [name]
        out.sum().backward()
        assert adapter.factors(name)[1].grad is not None and adapter.factors(name)[1].grad.abs().sum() > 0
        folded.clear()
    for h in handles:
        h.remove()
    assert not any("forward" in m.__dict__ for m in layers.values())
    assert all(torch.equal(before[k], v) for k, v in layers.state_dict().items())


def test_motion_merged_equals_unmerged_and_zero_scale_is_identity(models):
    base, _ = models
    mo = _randomize(MotionAdapter.for_model(base, rank=4), std=0.2)
    for alpha in (1.0, -1.0):
        torch.testing.assert_close(_video(base.with_patch(AdapterPatch(mo, alpha, True))),
                                   _video(base.with_patch(AdapterPatch(mo, alpha, False))), rtol=1e-3, atol=1e-3)
    assert torch.equal(_video(base.with_patch(AdapterPatch(mo, 0.0, True))), _video(base))


def test_patches_are_undone(models):
    _, custom = models
    before = {k: v.clone() for k, v in custom.unet.state_dict().items()}
    sp = _randomize(SpatialAdapters.for_model(custom, rank=4))
    _video(custom.with_patch(AdapterPatch(sp, 1.0, True)))
    after = custom.unet.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not custom.unet._forward_hooks and all(not m._forward_hooks for m in custom.unet.modules())
    _video(custom.with_patch(AdapterPatch(sp, 1.0, False)))
    assert all(torch.equal(before[k], v) for k, v in custom.unet.state_dict().items())
    assert all(not m._forward_hooks and "forward" not in m.__dict__ for m in custom.unet.modules())


def test_file_round_trip_and_refusals(models, tiny_files, tmp_path):
    base, custom = models
    sp = _randomize(SpatialAdapters.for_model(custom, rank=4, metadata={
        "base_fingerprint": lowrank.t2i_fingerprint(custom), "motion_fingerprint": lowrank.motion_fingerprint(custom),
        "customized": "custom.safetensors"}))
    path = sp.save(tmp_path / "sp.safetensors")
    back = LowRankAdapter.load(path, "spatial")
    assert type(back) is SpatialAdapters and back.rank == 4 and back.targets == sp.targets
    assert all(torch.equal(back.factors(n)[1], sp.factors(n)[1]) for n in sp.targets)
    back.check(custom, path)
    with pytest.raises(FileExistsError):
        sp.save(path)
    with pytest.raises(ModelFileError, match="spatial adapter, but this slot needs a motion"):
        MotionAdapter.load(path)
    # another customized model (interpolated instead of replaced) is refused
    other = inject.inject_checkpoint(base, tiny_files.custom_checkpoint, weight=0.5)
    with pytest.raises(ModelFileError, match="another customized T2I model"):
        back.check(other, path)
    # another motion-module version is refused
    v3 = inject.inject_checkpoint(loading.load_video_model(tiny_files.checkpoint, tiny_files.motion_files["v3"]),
                                  tiny_files.custom_checkpoint)
    with pytest.raises(ModelFileError, match="another motion module"):
        back.check(v3, path)
    with pytest.raises(ModelFileError, match="not a Still-Moving adapter"):
        LowRankAdapter.load(tiny_files.checkpoint)


def test_each_kind_is_its_own_class_and_files_load_as_it(models, tmp_path):
    """Files as every earlier version wrote them (the header by hand, not through ``save``) load as
    the class their 'kind' names; the shipped Motion Adapter is one of them."""
    import json

    from safetensors.torch import save_file
    from adapters.customize import AppearanceAbsorber, SubjectModule, TemporalLoRA
    assert lowrank.ADAPTER_KINDS == {"motion": MotionAdapter, "spatial": SpatialAdapters, "subject": SubjectModule,
                                     "absorber": AppearanceAbsorber, "temporal": TemporalLoRA}
    base, custom = models
    for kind, cls in lowrank.ADAPTER_KINDS.items():
        model = custom if cls is SpatialAdapters else base
        fresh = cls.for_model(model, rank=2)
        g = torch.Generator().manual_seed(1)
        tensors = {}
        for n in fresh.targets:
            d, u = fresh.factors(n)
            tensors[f"{n}.down"], tensors[f"{n}.up"] = torch.randn(d.shape, generator=g), torch.randn(u.shape, generator=g)
        tensors["trainer.opt.0.step"] = torch.tensor(3.0)
        path = tmp_path / f"old_{kind}.safetensors"
        save_file(tensors, str(path), metadata={"format": "still-moving-adapter/1", "kind": kind, "rank": "2",
                                                "targets": json.dumps(fresh.targets), "step": "3"})
        back = LowRankAdapter.load(path)
        assert type(back) is cls and back.kind == kind and back.metadata == {"step": 3}
        assert all(torch.equal(back.factors(n)[0], tensors[f"{n}.down"]) for n in fresh.targets)
        assert set(back.extra_tensors) == {"trainer.opt.0.step"}
        back.check(model, path)
        assert cls.recipe is not None and cls.default_targets(model) == fresh.targets
    shipped = LowRankAdapter.load(Path(__file__).resolve().parent.parent / "embedded" / "toy_motion_adapter.safetensors")
    assert type(shipped) is MotionAdapter and shipped.rank == 8
    with pytest.raises(TypeError, match="shared base"):
        LowRankAdapter({}, 2)
    with pytest.raises(ValueError, match="unknown adapter kind 'nope'"):
        training.train(base, "nope", training.TrainSettings(steps=1), tmp_path / "x.safetensors", custom_clips=_clips())
    with pytest.raises(ValueError, match="prior_clips would be ignored"):
        training.train(base, MotionAdapter, training.TrainSettings(steps=1), tmp_path / "x.safetensors",
                       custom_clips=_clips(), prior_clips=_clips())


def _clips(n=4, frames=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [types.SimpleNamespace(latents=torch.randn(4, frames, 4, 4, generator=g), caption=f"clip {i % 2}")
            for i in range(n)]


def test_resume_after_cancel_matches_uninterrupted_run(models, tmp_path):
    base, _ = models
    s = training.TrainSettings(steps=6, learning_rate=1e-3, rank=4, frames=4, seed=3)
    full = training.train(base, MotionAdapter, s, tmp_path / "full.safetensors", custom_clips=_clips())
    calls = {"n": 0}

    def stop_after_three():
        calls["n"] += 1
        return calls["n"] > 3
    part = training.train(base, MotionAdapter, s, tmp_path / "part.safetensors", custom_clips=_clips(),
                          should_stop=stop_after_three)
    assert part.cancelled and part.step == 3
    saved = MotionAdapter.load(part.path)  # Cancel left a loadable adapter
    assert int(saved.metadata["step"]) == 3
    resumed = training.train(base, MotionAdapter, s, tmp_path / "unused.safetensors", custom_clips=_clips(), resume=part.path)
    assert resumed.step == 6 and not resumed.cancelled
    for n in full.adapter.targets:
        for a, b in zip(full.adapter.factors(n), resumed.adapter.factors(n)):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    assert [round(l, 5) for _, l, _ in full.losses] == [round(l, 5) for _, l, _ in resumed.losses]


def test_resume_with_another_rank_is_refused(models, tmp_path):
    base, _ = models
    s = training.TrainSettings(steps=1, rank=4, frames=4)
    res = training.train(base, MotionAdapter, s, tmp_path / "r4.safetensors", custom_clips=_clips())
    with pytest.raises(ValueError, match="rank 4 but the settings ask for rank 8"):
        training.train(base, MotionAdapter, training.TrainSettings(steps=2, rank=8, frames=4), tmp_path / "x.safetensors",
                       custom_clips=_clips(), resume=res.path)


def test_caption_dropout_trains_on_the_empty_prompt(models, tmp_path):
    """caption_dropout = 1 is training every example with the empty prompt: same noise, same
    timesteps, same result as clips captioned "" (the draw comes after them); 0 leaves captions."""
    base, _ = models

    def run(clips, dropout, name):
        s = training.TrainSettings(steps=3, learning_rate=1e-3, rank=4, frames=4, seed=5, caption_dropout=dropout)
        res = training.train(base, MotionAdapter, s, tmp_path / f"{name}.safetensors", custom_clips=clips)
        return torch.cat([torch.cat([f.flatten() for f in res.adapter.factors(n)]) for n in res.adapter.targets])
    empty = [types.SimpleNamespace(latents=c.latents, caption="") for c in _clips()]
    dropped, plain_empty, kept = run(_clips(), 1.0, "dropped"), run(empty, 0.0, "empty"), run(_clips(), 0.0, "kept")
    torch.testing.assert_close(dropped, plain_empty, rtol=0, atol=1e-6)
    assert (dropped - kept).abs().max() > 1e-4
    with pytest.raises(ValueError, match="caption_dropout"):
        training.TrainSettings(caption_dropout=1.5).validate()


def test_timesteps_are_drawn_from_the_settings_range(models, tmp_path):
    base, _ = models
    seen = []
    hook = base.unet.register_forward_pre_hook(lambda mod, args: seen.extend(args[1].tolist()))
    try:
        for lo, hi in ((0, 1000), (900, 1000), (0, 100)):
            s = training.TrainSettings(steps=8, rank=4, frames=4, batch=2, min_timestep=lo, max_timestep=hi)
            del seen[:]
            training.train(base, MotionAdapter, s, tmp_path / f"t{lo}.safetensors", custom_clips=_clips())
            assert len(seen) == 16 and all(lo <= t < hi for t in seen), (lo, hi, seen)
            if (lo, hi) == (0, 1000):
                assert min(seen) < 900 and max(seen) >= 100  # the default range is not one of the narrow ones
    finally:
        hook.remove()
    with pytest.raises(ValueError, match="min_timestep < max_timestep"):
        training.TrainSettings(min_timestep=500, max_timestep=500).validate()


def test_nan_loss_stops_with_a_clear_error(models, tmp_path):
    base, _ = models
    bad = _clips()
    bad[0].latents[:] = float("nan")
    bad = [bad[0]]
    with pytest.raises(training.NonFiniteLoss, match="lower the learning rate"):
        training.train(base, MotionAdapter, training.TrainSettings(steps=2, rank=4, frames=4), tmp_path / "n.safetensors",
                       custom_clips=bad)


def test_spatial_training_fits_the_customized_stills_and_keeps_the_prior(models, tmp_path):
    """Training lowers the loss on the customized frozen stills (Motion Adapter at α = 1) while
    the loss on natural prior videos (α = 0) rises by at most 5 % (the bound we state)."""
    base, custom = models
    motion = _randomize(MotionAdapter.for_model(base, rank=4), seed=5, std=0.02)
    g = torch.Generator().manual_seed(11)
    stills = [types.SimpleNamespace(latents=torch.randn(4, 1, 4, 4, generator=g), caption="sks dog") for _ in range(2)]
    prior = _clips(n=4, frames=4, seed=12)
    s = training.TrainSettings(steps=40, learning_rate=3e-3, rank=4, frames=4, seed=1, prior_ratio=0.5)

    def losses(model_with_spatial):
        still = training.mean_loss(model_with_spatial.with_patch(AdapterPatch(motion, 1.0)), stills, 4, True, samples=12)
        nat = training.mean_loss(model_with_spatial.with_patch(AdapterPatch(motion, 0.0)), prior, 4, False, samples=12)
        return still, nat
    before = losses(custom)
    res = training.train(custom, SpatialAdapters, s, tmp_path / "sp.safetensors", custom_clips=stills, prior_clips=prior,
                         motion_adapter=motion)
    after = losses(custom.with_patch(AdapterPatch(res.adapter, 1.0)))
    print(f"customized stills loss {before[0]:.4f} -> {after[0]:.4f}; prior videos {before[1]:.4f} -> {after[1]:.4f}")
    assert after[0] < 0.9 * before[0]
    assert after[1] < 1.05 * before[1]
    assert {src for _, _, src in res.losses} == {"custom", "prior"}


def test_interleaved_baseline_turns_temporal_layers_off_for_stills(models, tmp_path):
    """The paper's interleaved baseline: with the temporal layers off each frame is denoised on
    its own (changing one frame's input leaves the others' output alone); training runs."""
    base, custom = models
    x = torch.randn(1, 4, 4, 4, 4)
    y = x.clone()
    y[:, :, 0] += 1.0
    emb = torch.randn(4, 7, 32)
    with torch.no_grad(), training.temporal_layers_off(base.unet):
        a = base.unet(x, torch.tensor(500), encoder_hidden_states=emb).sample
        b = base.unet(y, torch.tensor(500), encoder_hidden_states=emb).sample
    assert torch.equal(a[:, :, 1:], b[:, :, 1:]) and not torch.equal(a[:, :, 0], b[:, :, 0])
    with torch.no_grad():
        a = base.unet(x, torch.tensor(500), encoder_hidden_states=emb).sample
        b = base.unet(y, torch.tensor(500), encoder_hidden_states=emb).sample
    # with them on, frames talk to each other: the untouched frames' output moves too
    assert float((a[:, :, 1:] - b[:, :, 1:]).norm() / a[:, :, 1:].norm()) > 0.1
    g = torch.Generator().manual_seed(1)
    stills = [types.SimpleNamespace(latents=torch.randn(4, 1, 4, 4, generator=g), caption="sks dog")]
    s = training.TrainSettings(steps=4, learning_rate=1e-3, rank=4, frames=4, interleaved=True, prior_ratio=0.5)
    res = training.train(custom, SpatialAdapters, s, tmp_path / "il.safetensors", custom_clips=stills, prior_clips=_clips())
    assert res.step == 4 and res.adapter.metadata["settings"]["interleaved"] is True


@pytest.mark.parametrize("interleaved", [False, True])
def test_gradient_checkpointing_trains_the_same_adapter(models, tmp_path, interleaved):
    """TrainSettings.gradient_checkpointing recomputes every block in backward(), adapter hooks and
    the Motion Adapter's per-step α included, and the interleaved baseline's temporal bypass: the
    trained adapter must match the run without it."""
    base, custom = models
    motion = _randomize(MotionAdapter.for_model(base, rank=4), seed=5, std=0.05)
    g = torch.Generator().manual_seed(2)
    stills = [types.SimpleNamespace(latents=torch.randn(4, 1, 4, 4, generator=g), caption="sks dog") for _ in range(2)]
    runs = []
    for ckpt in (False, True):
        s = training.TrainSettings(steps=5, learning_rate=1e-2, rank=4, frames=4, seed=4, prior_ratio=0.5,
                                   interleaved=interleaved, gradient_checkpointing=ckpt)
        runs.append(training.train(custom, SpatialAdapters, s, tmp_path / f"gc{ckpt}.safetensors", custom_clips=stills,
                                   prior_clips=_clips(), motion_adapter=None if interleaved else motion))
    plain, ckpt = runs
    assert {src for _, _, src in plain.losses} == {"custom", "prior"}
    assert any(float(plain.adapter.factors(n)[1].abs().max()) > 0 for n in plain.adapter.targets)  # it trained
    for n in plain.adapter.targets:
        for a, b in zip(plain.adapter.factors(n), ckpt.adapter.factors(n)):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    assert not any(getattr(m.forward, "_still_moving_checkpoint", False) for m in custom.unet.modules())
