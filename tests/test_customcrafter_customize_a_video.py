"""CustomCrafter (subject module, weight schedule) and Customize-A-Video (absorber, temporal
LoRAs) on tiny random models loaded from files in the real layouts."""
import dataclasses
import types

import pytest
import torch

from adapters import customize, inject, loading, lowrank, sampling, schedule, training
from adapters.customize import AppearanceAbsorber, SubjectModule, TemporalLoRA
from adapters.lowrank import LowRankAdapter
from adapters.motion_adapter import MotionAdapter
from adapters.spatial_adapters import SpatialAdapters
from adapters.schedule import WeightSchedule
from adapters.video_model import T2I, AdapterPatch, VideoModel
from model_files import randomize_up as _randomize


@pytest.fixture(scope="module")
def models(tiny_files):
    base = loading.load_video_model(tiny_files.checkpoint, tiny_files.motion_files["v2"])
    custom = inject.inject_checkpoint(base, tiny_files.custom_checkpoint)
    return base, custom


def _video(model, steps=2, **kw):
    c = sampling.encode_text(model, ["a red circle"], "cpu")
    u = sampling.encode_text(model, [""], "cpu")
    return sampling.sample(model, c, u, seed=2, steps=steps, cfg=5, width=32, height=32, frames=4, **kw)


def _stills(n=2, seed=11, caption="a photo of sks dog"):
    g = torch.Generator().manual_seed(seed)
    return [types.SimpleNamespace(latents=torch.randn(4, 1, 4, 4, generator=g), caption=caption) for _ in range(n)]


def _video_clip(frames=6, seed=21):
    """A latent "reference video": a pattern sliding one pixel per frame."""
    g = torch.Generator().manual_seed(seed)
    img = torch.randn(4, 4, 4 + frames, generator=g)
    lat = torch.stack([img[:, :, i:i + 4] for i in range(frames)], dim=1)
    return [types.SimpleNamespace(latents=lat.contiguous(), caption="a car driving")]


def _patched_params(model):
    with model.patched((T2I,)):
        return {n: p.detach().clone() for n, p in model.unet.named_parameters()}


# --- the new kinds --------------------------------------------------------------------------

def test_targets_of_the_new_kinds(models):
    base, _ = models
    sub = SubjectModule.for_model(base, 4).targets
    absorber = AppearanceAbsorber.for_model(base, 4).targets
    tem = TemporalLoRA.for_model(base, 4).targets
    assert sub and all(".attentions." in n and n.rsplit(".", 1)[1] in ("to_q", "to_k", "to_v") for n in sub)
    assert {n.split(".")[-2] for n in sub} == {"attn1", "attn2"}  # self- and cross-attention
    assert set(sub) < set(absorber) and all(".attentions." in n for n in absorber)
    assert any(n.endswith("to_out.0") for n in absorber)
    assert set(lowrank.motion_targets(base.unet)) < set(tem) and all(".motion_modules." in n for n in tem)
    assert any(n.startswith("mid_block.motion_modules") for n in tem)


@pytest.mark.parametrize("kind", [SubjectModule, AppearanceAbsorber, TemporalLoRA])
@pytest.mark.parametrize("merged", [True, False])
def test_fresh_modules_are_identity(models, kind, merged):
    _, custom = models
    ref = _video(custom)
    fresh = kind.for_model(custom, rank=4, seed=3)
    assert torch.equal(_video(fresh.add_to(custom, 1.0, merged)), ref)


@pytest.mark.parametrize("kind", [SubjectModule, AppearanceAbsorber])
def test_merged_equals_unmerged_over_an_injected_checkpoint(models, kind):
    """Folded into the weights or run as hooks: the same video (and biases stay the injected ones)."""
    _, custom = models
    a = _randomize(kind.for_model(custom, rank=4), std=0.1)
    merged, hooked = _video(a.add_to(custom, 0.8)), _video(a.add_to(custom, 0.8, merged=False))
    plain = _video(custom)
    assert float((merged - plain).norm() / plain.norm()) > 0.05  # the module moves the video
    torch.testing.assert_close(merged, hooked, rtol=1e-3, atol=1e-3)


def test_new_kinds_round_trip_the_one_file_format(models, tmp_path):
    base, _ = models
    for cls in (SubjectModule, AppearanceAbsorber, TemporalLoRA):
        a = _randomize(cls.for_model(base, rank=2))
        path = a.save(tmp_path / f"{cls.kind}.safetensors")
        back = LowRankAdapter.load(path)  # the class named by the file's kind
        assert type(back) is cls and back.kind == cls.kind and back.targets == a.targets
        assert all(torch.equal(back.factors(n)[1], a.factors(n)[1]) for n in a.targets)
        other = SubjectModule if cls is not SubjectModule else TemporalLoRA
        with pytest.raises(Exception, match=f"this is a {cls.kind} adapter, but this slot needs a {other.kind}"):
            other.load(path)


# --- CustomCrafter: subject module ----------------------------------------------------------

def test_subject_module_changes_spatial_qkv_only_and_trains(models, tmp_path):
    base, _ = models
    before = _patched_params(base)
    sub = _randomize(SubjectModule.for_model(base, rank=4), std=0.1)
    after = _patched_params(sub.add_to(base, 1.0))
    changed = {n for n in before if not torch.equal(before[n], after[n])}
    assert changed == {f"{t}.weight" for t in sub.targets}
    assert not any(".motion_modules." in n for n in changed)  # temporal layers untouched

    s = training.TrainSettings(steps=6, learning_rate=3e-3, rank=4, frames=4, seed=1, prior_ratio=0.5)
    prior = _stills(4, seed=12, caption="a photo of a dog")
    res = customize.train_subject_module(base, _stills(), s, tmp_path / "subject.safetensors", prior_clips=prior)
    assert {src for _, _, src in res.losses} == {"custom", "prior"}
    saved = SubjectModule.load(res.path)
    assert saved.targets == sub.targets
    assert any(saved.factors(n)[1].abs().sum() > 0 for n in saved.targets)  # it learned something
    trained = _patched_params(saved.add_to(base, 1.0))
    assert all(torch.equal(before[n], trained[n]) for n in before if ".motion_modules." in n)


# --- CustomCrafter: Dynamic Weighted Video Sampling ------------------------------------------

def _spatial_and_temporal(models):
    """The customized model with a subject module, a LoRA-like Spatial Adapter and a temporal LoRA."""
    base, custom = models
    sub = _randomize(SubjectModule.for_model(custom, rank=4), seed=1, std=0.1)
    tem = _randomize(TemporalLoRA.for_model(custom, rank=4), seed=2, std=0.1)
    sp = _randomize(SpatialAdapters.for_model(custom, rank=4, targets=lowrank.spatial_targets(
        custom, "block_outputs")), seed=3, std=0.1)  # proj_out / conv2: apart from the layers read below
    m = tem.add_to(sub.add_to(custom, 0.9), 1.0)
    return m.with_patch(AdapterPatch(sp, 0.5, True)), sub, tem, sp


def _record_scales(model, base, custom_params, sub, tem, monkeypatch):
    """A forward pre-hook on the UNet reading, at every call, the weights the sampler is
    running with, and solving for the effective strength of each customization."""
    base_params = _patched_params(base)
    mods = dict(model.unet.named_modules())
    q = sub.targets[0]                                    # a subject-module target
    tq = tem.targets[0]                                   # a temporal-LoRA target
    inj = next(n for n in custom_params if ".resnets." in n and n.endswith("conv1.weight")
               and not torch.equal(custom_params[n], base_params[n]))  # injected, not adapted
    d_sub = (sub.factors(q)[0] @ sub.factors(q)[1]).T.detach()
    d_tem = (tem.factors(tq)[0] @ tem.factors(tq)[1]).T.detach()
    d_inj = custom_params[inj] - base_params[inj]
    params = dict(model.unet.named_parameters())
    seen = []

    def proj(delta, direction):
        return float((delta * direction).sum() / (direction * direction).sum())

    def hook(module, args, kwargs):
        w_inj = params[inj].detach()
        lam_inj = proj(w_inj - base_params[inj], d_inj)
        # the subject target also carries the injection at the same λ: take it out first
        w_q = mods[q].weight.detach()
        lam_q = proj(w_q - torch.lerp(base_params[f"{q}.weight"], custom_params[f"{q}.weight"], lam_inj), d_sub) / 0.9
        lam_t = proj(mods[tq].weight.detach() - base_params[f"{tq}.weight"], d_tem)
        seen.append((round(lam_inj, 4), round(lam_q, 4), round(lam_t, 4)))
    handle = model.unet.register_forward_pre_hook(hook, with_kwargs=True)
    entries = []
    real = VideoModel.patched

    def counting(self, targets=("unet", "text_encoder")):
        entries.append(tuple(targets))
        return real(self, targets)
    monkeypatch.setattr(VideoModel, "patched", counting)
    return seen, entries, handle


def test_schedule_switches_once_at_steps_minus_k(models, monkeypatch):
    base, custom = models
    model, sub, tem, _ = _spatial_and_temporal(models)
    custom_params = _patched_params(custom)
    seen, entries, handle = _record_scales(model, base, custom_params, sub, tem, monkeypatch)
    try:
        _video(model, steps=6, schedule=WeightSchedule(early=0.4, late=0.8, last_steps=2))
    finally:
        handle.remove()
    assert len(seen) == 6  # CFG batched: one UNet call per step
    assert [s[0] for s in seen] == [0.4] * 4 + [0.8] * 2  # injected checkpoint (interpolation weight)
    assert [s[1] for s in seen] == [0.4] * 4 + [0.8] * 2  # subject module
    assert [s[2] for s in seen] == [1.0] * 6              # temporal LoRA: not a spatial customization
    assert entries.count((T2I,)) == 2  # patched once for the early steps, re-patched once at the switch


def test_schedule_of_ones_equals_no_schedule_and_constant_equals_scaled_patches(models):
    model, sub, tem, sp = _spatial_and_temporal(models)
    _, custom = models
    plain = _video(model, steps=3)
    assert torch.equal(_video(model, steps=3, schedule=WeightSchedule(1.0, 1.0, 1)), plain)
    # a constant λ is the same as building the model with every spatial strength times λ
    by_hand = inject.inject_checkpoint(models[0], custom.patches[0].source, weight=0.5, text_encoder=False)
    by_hand = by_hand.with_patch(custom.patches[1])  # the prompt is encoded once: text weights stay
    by_hand = tem.add_to(sub.add_to(by_hand, 0.45), 1.0).with_patch(AdapterPatch(sp, 0.25, True))
    const = _video(model, steps=3, schedule=WeightSchedule(0.5, 0.5, 1))
    torch.testing.assert_close(const, _video(by_hand, steps=3), rtol=1e-5, atol=1e-5)
    assert float((const - plain).norm() / plain.norm()) > 0.2  # halving the customizations shows


def test_scaled_touches_only_spatial_customizations(models):
    model, *_ = _spatial_and_temporal(models)
    half = schedule.scaled(model, 0.5)
    assert model.patches[0].weight == 1.0  # the original is unchanged
    kinds = [(type(p).__name__, getattr(getattr(p, "adapter", None), "kind", p.target)) for p in half.patches]
    values = [getattr(p, "weight", getattr(p, "scale", None)) for p in half.patches]
    assert kinds == [("ReplaceWeights", T2I), ("ReplaceWeights", "text_encoder"), ("AdapterPatch", "subject"),
                     ("AdapterPatch", "temporal"), ("AdapterPatch", "spatial")]
    assert values == [0.5, 1.0, 0.45, 1.0, 0.25]
    with pytest.raises(ValueError, match="last_steps"):
        _video(model, schedule=WeightSchedule(0.4, 0.8, -1))


# --- Customize-A-Video ----------------------------------------------------------------------

def test_absorber_training_bypasses_the_temporal_layers(models, tmp_path):
    """With the temporal layers bypassed, changing them changes nothing in the absorber's run;
    the temporal LoRA's run (layers on) does change."""
    base, _ = models
    shaken = base.with_patch(AdapterPatch(_randomize(MotionAdapter.for_model(base, 4), std=0.5), 1.0))
    s = training.TrainSettings(steps=2, learning_rate=1e-3, rank=2, frames=4, seed=4)
    runs = [customize.train_absorber(m, _video_clip(), s, tmp_path / f"a{i}.safetensors") for i, m in
            enumerate((base, shaken))]
    assert [l for _, l, _ in runs[0].losses] == [l for _, l, _ in runs[1].losses]
    assert all(torch.equal(a, b) for a, b in zip(runs[0].adapter.parameters(), runs[1].adapter.parameters()))
    tl = [customize.train_temporal_lora(m, _video_clip(), s, tmp_path / f"t{i}.safetensors").losses[0][1]
          for i, m in enumerate((base, shaken))]
    assert abs(tl[0] - tl[1]) / tl[0] > 0.005


def test_absorber_is_frozen_while_the_temporal_lora_trains_and_absent_after(models, tmp_path):
    base, _ = models
    absorber = _randomize(AppearanceAbsorber.for_model(base, rank=4), seed=7, std=0.2)
    absorber.save(tmp_path / "absorber_x.safetensors")
    snapshot = {k: v.detach().clone() for k, v in absorber.state_dict().items()}
    s = training.TrainSettings(steps=3, learning_rate=1e-3, rank=4, frames=4, seed=5)
    with_abs = customize.train_temporal_lora(base, _video_clip(), s, tmp_path / "t.safetensors", absorber=absorber)
    without = customize.train_temporal_lora(base, _video_clip(), s, tmp_path / "t0.safetensors")
    # frozen: bit-identical, and no gradient was even computed for it
    assert all(torch.equal(snapshot[k], v) for k, v in absorber.state_dict().items())
    assert all(p.grad is None for p in absorber.parameters())
    # it took part in the training forward at strength 1: the first loss is that of a run on the
    # model with the absorber attached (as hooks), and not that of a run without it
    hooked = customize.train_temporal_lora(absorber.add_to(base, 1.0, merged=False), _video_clip(),
                                           dataclasses.replace(s, steps=1), tmp_path / "th.safetensors")
    assert with_abs.losses[0][1] == pytest.approx(hooked.losses[0][1], rel=1e-5)
    assert abs(with_abs.losses[0][1] - without.losses[0][1]) / without.losses[0][1] > 0.002
    # the file holds the temporal LoRA alone; attaching it brings no spatial change
    saved = TemporalLoRA.load(with_abs.path)
    assert saved.metadata["absorber"] == "absorber_x.safetensors"
    loaded = AppearanceAbsorber.load(tmp_path / "absorber_x.safetensors")
    assert customize.absorber_name(loaded) == "absorber_x.safetensors"
    assert customize.absorber_name(AppearanceAbsorber.for_model(base, rank=4)) == "(an absorber never saved)"
    assert all(".motion_modules." in n for n in saved.targets)
    assert all(k.startswith("trainer.") for k in saved.extra_tensors)
    before = _patched_params(base)
    attached = saved.add_to(base, 1.0)
    assert [type(p.adapter) for p in attached.patches] == [TemporalLoRA]
    after = _patched_params(attached)
    changed = {n for n in before if not torch.equal(before[n], after[n])}
    assert changed and all(".motion_modules." in n for n in changed)
    assert torch.equal(_video(saved.add_to(base, 0.0)), _video(base))


def test_two_temporal_loras_add_up(models):
    base, custom = models
    a = _randomize(TemporalLoRA.for_model(base, rank=4), seed=1, std=0.1)
    b = _randomize(TemporalLoRA.for_model(base, rank=2), seed=2, std=0.1)
    w0 = _patched_params(base)
    wa = _patched_params(a.add_to(base, 0.7))
    wb = _patched_params(b.add_to(base, -1.3))
    both = b.add_to(a.add_to(base, 0.7), -1.3)
    wab = _patched_params(both)
    for n in w0:
        torch.testing.assert_close(wab[n] - w0[n], (wa[n] - w0[n]) + (wb[n] - w0[n]), rtol=0, atol=1e-6)
    assert any(not torch.equal(wab[n], w0[n]) for n in w0)
    # unmerged (hooks) computes the same sum on the fly; with a customized checkpoint too
    on_custom = b.add_to(a.add_to(custom, 0.7, merged=False), -1.3, merged=False)
    merged = b.add_to(a.add_to(custom, 0.7), -1.3)
    torch.testing.assert_close(_video(on_custom), _video(merged), rtol=1e-3, atol=1e-3)
    with pytest.raises(ValueError, match="needs a temporal adapter"):
        TemporalLoRA.expect(SubjectModule.for_model(base, 2))
