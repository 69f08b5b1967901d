"""The pack's sampler uses what a graph connects (per-frame conditioning, a starting latent with a
denoise strength) the way ComfyUI's KSampler does, and refuses what it cannot use, with a message."""
import math

import pytest
import torch

from adapters import loading, sampling
from comfy_host import ComfyError

FRAMES = 3


@pytest.fixture(scope="module")
def video_model(tiny_files):
    return loading.load_video_model(tiny_files.checkpoint, tiny_files.motion_files["v2"])


def per_frame_text(n, seed=1):
    return torch.randn(n, 7, 32, generator=torch.Generator().manual_seed(seed))


def test_conditioning_batches_follow_comfyui(comfy):
    """One embedding serves every frame; other counts are repeated or cut like ComfyUI's
    repeat_to_batch_size does when a conditioning's batch differs from the latent's."""
    import comfy.utils
    for n in (1, 2, 3, 5):
        emb = per_frame_text(n)
        torch.testing.assert_close(sampling.per_frame(emb, 4), comfy.utils.repeat_to_batch_size(emb, 4),
                                   rtol=0, atol=0)


def comfy_model_sampling():
    """ComfyUI's EPS model sampling for AnimateDiff's betas (ADE's "sqrt_linear (AnimateDiff)")."""
    import comfy.model_sampling

    class Sampling(comfy.model_sampling.EPS, comfy.model_sampling.ModelSamplingDiscrete):  # as comfy.model_base builds it
        pass
    ms = Sampling()
    ms._register_schedule(beta_schedule="sqrt_linear", linear_start=0.00085, linear_end=0.012)
    return ms


@pytest.mark.parametrize("name", ["euler", "euler_ancestral"])
def test_euler_sigmas_and_timesteps_are_ksamplers(comfy, name):
    """KSampler "normal": sigmas interpolated in log-sigma at fractional timesteps, the UNet given
    the nearest integer timestep; the same for every step count and denoise."""
    import comfy.samplers
    ms = comfy_model_sampling()
    for steps, denoise in ((2, 1.0), (3, 1.0), (7, 1.0), (25, 1.0), (4, 0.6), (10, 0.35)):
        sched = sampling.make_scheduler(name)
        timesteps = sampling.set_steps(sched, steps, denoise, "cpu")
        total = steps if denoise == 1.0 else int(steps / denoise)
        theirs = comfy.samplers.calculate_sigmas(ms, "normal", total)[-(steps + 1):]
        ours = sched.sigmas[len(sched.sigmas) - steps - 1:]
        torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=0)
        assert timesteps.tolist() == [float(ms.timestep(s)) for s in theirs[:-1]]


def ksampler_euler(video_model, cond, init, seed, steps, denoise):
    """ComfyUI's KSampler path written with ComfyUI's own pieces: "normal" sigmas of the
    int(steps / denoise)-step schedule (its last steps), EPS noise scaling, k-diffusion Euler,
    the pack's UNet as the eps model."""
    import comfy.k_diffusion.sampling as kd
    import comfy.samplers
    ms = comfy_model_sampling()
    total = steps if denoise > 0.9999 else int(steps / denoise)
    sigmas = comfy.samplers.calculate_sigmas(ms, "normal", total)[-(steps + 1):].float()
    torch.manual_seed(seed)
    noise = torch.randn((init.shape[2], 4, init.shape[3], init.shape[4])).permute(1, 0, 2, 3).unsqueeze(0)
    x = ms.noise_scaling(sigmas[0], noise, init, max_denoise=denoise > 0.9999)
    emb = sampling.per_frame(cond, init.shape[2])

    def model(x, sigma, **_):
        s = sigma.reshape(-1)[0]
        with torch.no_grad():
            eps = video_model.unet(x / torch.sqrt(s * s + 1), ms.timestep(s), encoder_hidden_states=emb).sample
        return x - s * eps
    return kd.sample_euler(model, x, sigmas, disable=True)


@pytest.mark.parametrize("denoise", [1.0, 0.6])
def test_video_to_video_is_ksamplers(comfy, video_model, denoise):
    """A starting latent + denoise through the pack's sampler = ComfyUI's KSampler Euler path,
    with a prompt per frame."""
    cond = per_frame_text(FRAMES)
    init = torch.randn(1, 4, FRAMES, 8, 8, generator=torch.Generator().manual_seed(3))
    ours = sampling.sample(video_model, cond, None, seed=11, steps=3, cfg=1.0, scheduler="euler",
                           init_latents=init, denoise=denoise, frames=99, width=8, height=8)
    theirs = ksampler_euler(video_model, cond, init, 11, 3, denoise)
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)
    # the per-frame prompts matter: the first frame's prompt everywhere gives another video
    other = sampling.sample(video_model, cond[:1], None, seed=11, steps=3, cfg=1.0, scheduler="euler",
                            init_latents=init, denoise=denoise)
    assert (other - ours).abs().max() > 1e-3


def test_denoise_keeps_the_input(video_model):
    """The lower the denoise, the closer the video stays to its starting latent."""
    init = torch.randn(1, 4, FRAMES, 8, 8, generator=torch.Generator().manual_seed(3))
    cond = per_frame_text(1)
    dist = [float((sampling.sample(video_model, cond, None, seed=1, steps=4, cfg=1.0, init_latents=init,
                                   denoise=d, scheduler=s) - init).norm())
            for s in ("ddim", "euler") for d in (0.25, 0.75)]
    assert dist[0] < dist[1] and dist[2] < dist[3]


@pytest.fixture(scope="module")
def host(comfy, comfy_files):
    for kind, name, path in [("checkpoints", comfy_files.BASE, comfy_files.base),
                             ("animatediff_models", comfy_files.MOTION, comfy_files.motion),
                             ("controlnet", comfy_files.CONTROLNET, comfy_files.controlnet)]:
        comfy.add_model(kind, name, path)
    return comfy


def sampler_graph(cf, positive, extra, **inputs):
    g = {"load": {"class_type": "SM_LoadVideoModel", "inputs": {"ckpt_name": cf.BASE, "motion_module": cf.MOTION,
                                                                "dtype": "auto"}},
         "ck": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": cf.BASE}},
         "enc": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["ck", 1], "text": "a dog"}},
         "s": {"class_type": "SM_SampleVideo", "inputs": dict(
             video_model=["load", 0], prompt="", negative_prompt="", seed=5, steps=2, cfg=6.0, scheduler="euler",
             beta_schedule="linear", width=64, height=64, frames=FRAMES, context_mode="none", context_length=16,
             context_overlap=4, positive=positive, **inputs)},
         "out": {"class_type": "PreviewImage", "inputs": {"images": ["s", 1]}}}
    g.update(extra)
    return g


@pytest.mark.parametrize("node, named", [
    ({"class_type": "ControlNetApply", "inputs": {"conditioning": ["enc", 0], "control_net": ["cn", 0],
                                                   "image": ["img", 0], "strength": 1.0}}, "ControlNet"),
    ({"class_type": "ConditioningSetArea", "inputs": {"conditioning": ["enc", 0], "width": 64, "height": 64,
                                                       "x": 0, "y": 0, "strength": 1.0}}, "'area'"),
    ({"class_type": "ConditioningCombine", "inputs": {"conditioning_1": ["enc", 0], "conditioning_2": ["enc", 0]}},
     "2 entries"),
], ids=["controlnet", "area", "combine"])
def test_unusable_conditioning_is_refused(host, comfy_files, node, named):
    extra = {"c": node, "cn": {"class_type": "ControlNetLoader", "inputs": {"control_net_name": comfy_files.CONTROLNET}},
             "img": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": 0}}}
    with pytest.raises(ComfyError) as err:
        host.run(sampler_graph(comfy_files, ["c", 0], extra))
    message = err.value.error["exception_message"]
    assert named in message and "positive conditioning" in message


def test_vae_encoded_video_is_redrawn(host, comfy_files):
    """VAE Encode of frames -> the sampler at denoise 0.5: the latent's size sets the video's; a latent
    with a noise mask is refused, and denoise < 1 without a latent too."""
    extra = {"img": {"class_type": "EmptyImage", "inputs": {"width": 48, "height": 32, "batch_size": 5,
                                                            "color": 0x336699}},
             "vae": {"class_type": "VAEEncode", "inputs": {"pixels": ["img", 0], "vae": ["ck", 2]}}}
    result = host.run(sampler_graph(comfy_files, ["enc", 0], extra, latent=["vae", 0], denoise=0.5))
    assert tuple(result.outputs["s"][0][0]["samples"].shape) == (5, 4, 4, 6)
    assert tuple(result.outputs["s"][1][0].shape) == (5, 32, 48, 3)
    extra["mask"] = {"class_type": "SetLatentNoiseMask", "inputs": {"samples": ["vae", 0], "mask": ["m", 0]}}
    extra["m"] = {"class_type": "SolidMask", "inputs": {"value": 1.0, "width": 48, "height": 32}}
    with pytest.raises(ComfyError, match="noise_mask"):
        host.run(sampler_graph(comfy_files, ["enc", 0], extra, latent=["mask", 0], denoise=0.5))
    with pytest.raises(ComfyError, match="needs a latent"):
        host.run(sampler_graph(comfy_files, ["enc", 0], {}, denoise=0.5))
