"""Injection is exact and reversible; the sampling loop handles CFG, schedulers and long videos."""
import types

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


def comfy_sampling(lcm=False):
    """ComfyUI's EPS model sampling for AnimateDiff's betas (ADE's "sqrt_linear (AnimateDiff)" =
    diffusers' "linear"); with ``lcm``, ComfyUI's LCM sampling (ModelSamplingDiscrete "lcm")."""
    import comfy.model_sampling
    from comfy_extras.nodes_model_advanced import LCM, ModelSamplingDiscreteDistilled
    config = types.SimpleNamespace(sampling_settings={"beta_schedule": "sqrt_linear"})
    if lcm:
        class Sampling(ModelSamplingDiscreteDistilled, LCM):  # as comfy_extras' ModelSamplingDiscrete builds it
            pass
    else:
        class Sampling(comfy.model_sampling.ModelSamplingDiscrete, comfy.model_sampling.EPS):
            pass
    return Sampling(config)


class ComfyDenoiser:
    """What ComfyUI's k-diffusion samplers call: the model sampling's input scaling, timestep and
    denoised output around the pack's UNet, with CFG on the denoised predictions (cfg_function)."""

    def __init__(self, unet, ms, cond, uncond, cfg):
        self.inner_model = types.SimpleNamespace(inner_model=types.SimpleNamespace(model_sampling=ms))
        self.unet, self.ms, self.cond, self.uncond, self.cfg = unet, ms, cond, uncond, cfg

    def __call__(self, x, sigma, **_):
        s = sigma.reshape(-1)[:1]
        xin, t = self.ms.calculate_input(s, x), self.ms.timestep(s)
        with torch.no_grad():
            c, u = (self.ms.calculate_denoised(s, self.unet(xin, t, encoder_hidden_states=e).sample, x)
                    for e in (self.cond, self.uncond))
        return u + (c - u) * self.cfg


# The pack's scheduler -> (ComfyUI k-diffusion sampler, ComfyUI scheduler, steps at which that
# scheduler picks the pack's timesteps; 3 steps give DPM++ 2M one second-order step).
COMFY_COUNTERPARTS = {"euler": ("sample_euler", "normal", 3),
                      "euler_ancestral": ("sample_euler_ancestral", "normal", 3),
                      "ddim": ("sample_euler", "ddim_uniform", 3),
                      "dpmpp_2m": ("sample_dpmpp_2m", "simple", 3),
                      "dpmpp_2m_karras": ("sample_dpmpp_2m", "karras", 3),
                      "lcm": ("sample_lcm", "simple", 2)}


@pytest.mark.parametrize("scheduler", sampling.SCHEDULERS)
def test_every_scheduler_is_comfyuis_sampler(comfy, base, scheduler):
    """Each scheduler's video with CFG = ComfyUI's k-diffusion sampler of that name on ComfyUI's
    sigmas, the pack's UNet as the model, from the same seed's noise (ancestral / LCM noise drawn
    from the same generator, as diffusers draws it). DDIM (eta 0) is Euler on the probability-flow
    ODE, ComfyUI's "ddim" sampler, with two differences of diffusers' DDIM kept here: it ends at
    t = 0's sigma, not 0, and starts from unit-variance noise where ComfyUI scales the noise by
    sigma alone when the first sigma is below sigma_max."""
    import comfy.k_diffusion.sampling as kd
    import comfy.samplers
    assert set(COMFY_COUNTERPARTS) == set(sampling.SCHEDULERS)
    name, comfy_scheduler, steps = COMFY_COUNTERPARTS[scheduler]
    c, u = _embeds(base)
    frames, cfg, seed = 4, 5.0, 3
    ours = sampling.sample(base, c, u, seed=seed, steps=steps, cfg=cfg, scheduler=scheduler,
                           width=32, height=32, frames=frames)

    ms = comfy_sampling(lcm=scheduler == "lcm")
    sigmas = comfy.samplers.calculate_sigmas(ms, comfy_scheduler, steps).float()
    sched = sampling.make_scheduler(scheduler)
    sampling.set_steps(sched, steps, 1.0, "cpu")
    abar = sched.alphas_cumprod[sched.timesteps.long()]
    pack_sigmas = sched.sigmas[:-1] if hasattr(sched, "sigmas") else ((1 - abar) / abar).sqrt()
    torch.testing.assert_close(pack_sigmas.float(), sigmas[:-1], rtol=1e-4, atol=0)
    if scheduler == "ddim":
        sigmas[-1] = ms.sigmas[0]
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn((frames, 4, 4, 4), generator=g).permute(1, 0, 2, 3).unsqueeze(0)
    x = ms.noise_scaling(sigmas[0], noise, torch.zeros_like(noise), max_denoise=True)
    model = ComfyDenoiser(base.unet, ms, sampling.per_frame(c, frames), sampling.per_frame(u, frames), cfg)
    extra = {} if name in ("sample_euler", "sample_dpmpp_2m") else \
        {"noise_sampler": lambda *_: torch.randn(x.shape, generator=g)}
    theirs = getattr(kd, name)(model, x, sigmas, disable=True, **extra)
    if scheduler == "ddim":  # diffusers' DDIM latents are unit-variance: x / sqrt(1 + sigma²)
        theirs = theirs / torch.sqrt(1 + sigmas[-1] ** 2)
    # float32 round-off only, on latents that reach ~100 with this random UNet at CFG 5
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-5 * float(theirs.abs().max()))


def test_seed_is_reproducible_and_matters(base):
    c, u = _embeds(base)
    kw = dict(steps=2, cfg=5, width=32, height=32, frames=4)
    a = sampling.sample(base, c, u, seed=1, **kw)
    assert torch.equal(a, sampling.sample(base, c, u, seed=1, **kw))
    other = sampling.sample(base, c, u, seed=2, **kw)
    assert float((other - a).norm() / a.norm()) > 0.5


def test_injection_changes_the_video(base, tiny_files):
    """The injected model samples the video of the customized checkpoint loaded with the same
    motion module; at weight 0 the base model's."""
    c, u = _embeds(base)
    kw = dict(seed=0, steps=2, cfg=5, width=32, height=32, frames=4)
    plain = sampling.sample(base, c, u, **kw)
    custom = inject.inject_checkpoint(base, tiny_files.custom_checkpoint, text_encoder=False)
    injected = sampling.sample(custom, c, u, **kw)
    loaded = loading.load_video_model(tiny_files.custom_checkpoint, tiny_files.motion_files["v2"])
    assert torch.equal(injected, sampling.sample(loaded, c, u, **kw))
    assert float((injected - plain).norm() / plain.norm()) > 0.2
    zero = inject.inject_checkpoint(base, tiny_files.custom_checkpoint, weight=0.0, text_encoder=False)
    assert torch.equal(plain, sampling.sample(zero, c, u, **kw))


def test_windows_cover_every_frame():
    for frames, length, overlap in [(40, 16, 4), (17, 16, 0), (16, 16, 4), (100, 8, 7)]:
        wins = sampling.context_windows(frames, length, overlap)
        assert sorted({i for w in wins for i in w}) == list(range(frames))
        assert all(len(w) == min(length, frames) for w in wins)


def test_long_video_needs_context(base):
    """Context windows change only what the motion modules see: with them bypassed every frame is
    denoised alone, so sliding windows give the plain video, and FreeNoise gives, frame for frame,
    the plain video's frame whose noise it reused. A window covering every frame is no context."""
    from adapters.training import temporal_layers_off
    c, u = _embeds(base)
    with pytest.raises(ValueError, match="context mode"):
        sampling.sample(base, c, u, steps=1, width=32, height=32, frames=40)
    kw = dict(seed=4, steps=2, cfg=5, width=32, height=32, frames=20)
    sliding, freenoise = sampling.ContextOptions("sliding", 8, 3), sampling.ContextOptions("freenoise", 8, 3)
    assert len(sampling.context_windows(20, 8, 3)) == 4
    with temporal_layers_off(base.unet):
        plain = sampling.sample(base, c, u, **kw)
        tol = dict(rtol=1e-5, atol=1e-6 * float(plain.abs().max()))  # float32 round-off of other batch sizes
        torch.testing.assert_close(sampling.sample(base, c, u, context=sliding, **kw), plain, **tol)
        fn = sampling.sample(base, c, u, context=freenoise, **kw)
    noise, _ = sampling.initial_noise((1, 4, 20, 4, 4), 4, freenoise)
    reused = [next(k for k in range(8) if torch.equal(noise[:, :, j], noise[:, :, k])) for j in range(20)]
    assert reused[:8] == list(range(8)) and len(set(reused[8:])) > 1
    torch.testing.assert_close(fn, plain[:, :, reused], **tol)
    # with the motion modules on, windows that see fewer frames give another video
    on = sampling.sample(base, c, u, **kw)
    assert float((sampling.sample(base, c, u, context=sliding, **kw) - on).norm() / on.norm()) > 0.1
    for mode in ("sliding", "freenoise"):
        whole = sampling.ContextOptions(mode, 20, 3)
        assert torch.equal(sampling.sample(base, c, u, context=whole, **kw), on)


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
