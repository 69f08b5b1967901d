"""Live previews: the sampling loop hands its callback each step's denoised estimate (x0), and
the sampler node shows it through ComfyUI's own previewer, as the user set it up
(--preview-method none / latent2rgb / taesd, --preview-size)."""
import sys

import numpy as np
import pytest
import torch

from adapters import loading, sampling

# where each scheduler's samples live: sigma space (x = x0 + sigma * eps, fed to the UNet as
# x / sqrt(1 + sigma^2)) or the unit-variance latent (x = sqrt(a) * x0 + sqrt(1 - a) * eps)
SIGMA_SPACE = {"euler", "euler_ancestral", "dpmpp_2m", "dpmpp_2m_karras"}
UNIT_VARIANCE = {"ddim", "lcm"}


@pytest.fixture(scope="module")
def tiny_model(tiny_files):
    return loading.load_video_model(tiny_files.checkpoint, tiny_files.motion_files["v2"])


def test_every_scheduler_is_covered():
    assert set(sampling.SCHEDULERS) == SIGMA_SPACE | UNIT_VARIANCE


@pytest.mark.parametrize("scheduler", sampling.SCHEDULERS)
def test_callback_gets_the_denoised_estimate(tiny_model, scheduler):
    """The estimate is x0 = (x_t - sqrt(1 - a_t) * eps) / sqrt(a_t), worked out here from the
    UNet's own input and output at each step and the scheduler's noise level."""
    model, steps = tiny_model, 3
    calls, seen = [], []
    hook = model.unet.register_forward_hook(lambda m, args, out: calls.append(
        (args[0].detach().float().clone(), out.sample.detach().float().clone())))
    try:
        cond = sampling.encode_text(model, ["a red circle"], "cpu")
        sampling.sample(model, cond, None, seed=5, steps=steps, cfg=1.0, scheduler=scheduler, width=32,
                        height=32, frames=4,
                        callback=lambda i, n, x, x0: seen.append((i, n, x.clone(), x0.clone())))
    finally:
        hook.remove()
    assert [(i, n) for i, n, _, _ in seen] == [(i + 1, steps) for i in range(steps)]
    assert len(calls) == steps  # cfg 1: one UNet call per step
    sched = sampling.make_scheduler(scheduler)
    sched.set_timesteps(steps)
    for i, ((x_in, eps), (_, _, x, x0)) in enumerate(zip(calls, seen)):
        if scheduler in SIGMA_SPACE:
            a = 1.0 / (1.0 + float(sched.sigmas[i]) ** 2)
        else:
            a = float(sched.alphas_cumprod[int(sched.timesteps[i])])
        expected = (x_in - (1 - a) ** 0.5 * eps) / a ** 0.5
        assert x0.shape == x.shape
        # lcm's estimate carries its boundary term c_skip * x, negligible at these timesteps
        torch.testing.assert_close(x0, expected, rtol=1e-4, atol=1e-4)
    x, x0 = seen[0][2], seen[0][3]
    assert float((x0 - x).norm() / x0.norm()) > 0.01, "the estimate must not be the noisy latents"


# --- in ComfyUI -------------------------------------------------------------------------------

STEPS, SIZE, FRAMES = 2, 64, 4


@pytest.fixture(scope="module")
def preview_host(comfy, comfy_files):
    comfy.add_model("checkpoints", comfy_files.BASE, comfy_files.base)
    comfy.add_model("animatediff_models", comfy_files.MOTION, comfy_files.motion)
    return comfy


def _graph(cf, seed):
    return {
        "load": {"class_type": "SM_LoadVideoModel", "inputs": {"ckpt_name": cf.BASE, "motion_module": cf.MOTION,
                                                               "dtype": "fp32"}},
        "s": {"class_type": "SM_SampleVideo", "inputs": {
            "video_model": ["load", 0], "prompt": "a dog running", "negative_prompt": "", "seed": seed,
            "steps": STEPS, "cfg": 5.0, "scheduler": "euler", "beta_schedule": "linear", "width": SIZE,
            "height": SIZE, "frames": FRAMES, "context_mode": "none", "context_length": 16,
            "context_overlap": 4}},
        "out": {"class_type": "PreviewImage", "inputs": {"images": ["s", 1]}}}


@pytest.fixture
def recorded(preview_host, monkeypatch):
    """Every (noisy latents, denoised estimate) the sampler node's loop hands its callback."""
    cls = preview_host.nodes.NODE_CLASS_MAPPINGS["SM_SampleVideo"]
    pack_sampling = sys.modules[cls.__module__].sampling  # the pack's own copy of adapters.sampling
    original, seen = pack_sampling.sample, []

    def sample(*args, callback=None, **kw):
        def spy(step, total, x, x0):
            seen.append((x.clone(), x0.clone()))
            callback(step, total, x, x0)
        return original(*args, callback=spy, **kw)
    monkeypatch.setattr(pack_sampling, "sample", sample)
    return seen


def _run(host, cf, method, monkeypatch, seed):
    from comfy.cli_args import LatentPreviewMethod, args
    monkeypatch.setattr(args, "preview_method", LatentPreviewMethod(method))
    result = host.run(_graph(cf, seed))
    progress = [p for p in result.events("progress") if p["node"] == "s"]
    assert [p["value"] for p in progress] == list(range(1, STEPS + 1))
    return [p["image"] for p in result.events("preview_image") if p["node"] == "s"]


def _pixels(image):
    return np.asarray(image.convert("RGB"))


def test_no_preview_with_preview_method_none(preview_host, comfy_files, recorded, monkeypatch):
    assert _run(preview_host, comfy_files, "none", monkeypatch, seed=1) == []
    assert len(recorded) == STEPS  # the steps ran; they just sent no image


def test_latent2rgb_previews_the_denoised_estimate(preview_host, comfy_files, recorded, monkeypatch):
    """One preview per step, made by ComfyUI's Latent2RGB previewer from the middle frame of the
    step's denoised estimate (not of the noisy latents), sized by --preview-size."""
    import comfy.latent_formats
    import latent_preview
    monkeypatch.setattr(latent_preview, "MAX_PREVIEW_RESOLUTION", 256)  # what --preview-size 256 sets
    decoded, decode = [], latent_preview.Latent2RGBPreviewer.decode_latent_to_preview
    monkeypatch.setattr(latent_preview.Latent2RGBPreviewer, "decode_latent_to_preview",
                        lambda self, x0: decoded.append(x0.clone()) or decode(self, x0))
    sent = _run(preview_host, comfy_files, "latent2rgb", monkeypatch, seed=2)
    assert len(sent) == STEPS == len(recorded) == len(decoded)
    fmt = comfy.latent_formats.SD15()
    direct = latent_preview.Latent2RGBPreviewer(fmt.latent_rgb_factors, fmt.latent_rgb_factors_bias)
    for (kind, image, max_size), (x, x0), given in zip(sent, recorded, decoded):
        assert torch.equal(given.cpu(), x0[:, :, FRAMES // 2])  # exactly the estimate's middle frame
        assert (kind, max_size) == ("JPEG", 256)
        assert image.size == (SIZE // 8, SIZE // 8)  # latent2rgb: one pixel per latent pixel
        np.testing.assert_array_equal(_pixels(image), _pixels(decode(direct, x0[:, :, FRAMES // 2])))
    # what was shown is the estimate, not the noisy latents: with the seed's starting latents the
    # first Euler step is x1 = x0 + sigma1 / sigma0 * (x_start - x0)
    sched = sampling.make_scheduler("euler")
    sampling.set_steps(sched, STEPS, 1.0, "cpu")
    x_start = sampling.start_latents(sched, sampling.initial_noise((1, 4, FRAMES, SIZE // 8, SIZE // 8), 2)[0])
    x1, x0 = recorded[0]
    s0, s1 = float(sched.sigmas[0]), float(sched.sigmas[1])
    torch.testing.assert_close(x1, x0 + s1 / s0 * (x_start - x0), rtol=0, atol=1e-4)  # float32 round-off


@pytest.fixture
def taesd_decoder(preview_host):
    """A TAESD decoder for SD1.5 (random weights, the real layout) in models/vae_approx."""
    from comfy.taesd.taesd import Decoder
    from safetensors.torch import save_file
    folder = preview_host.models_dir / "vae_approx"
    folder.mkdir(exist_ok=True)
    path = folder / "taesd_decoder.safetensors"
    torch.manual_seed(0)
    save_file({k: v.contiguous() for k, v in Decoder(latent_channels=4).state_dict().items()}, str(path))
    preview_host.folder_paths.filename_list_cache.clear()
    yield path
    path.unlink()
    preview_host.folder_paths.filename_list_cache.clear()


def test_taesd_previews_through_the_users_taesd_decoder(preview_host, comfy_files, recorded, taesd_decoder,
                                                        monkeypatch):
    import latent_preview
    from comfy.taesd.taesd import TAESD
    sent = _run(preview_host, comfy_files, "taesd", monkeypatch, seed=3)
    assert len(sent) == STEPS == len(recorded)
    direct = latent_preview.TAESDPreviewerImpl(TAESD(None, str(taesd_decoder), latent_channels=4))
    for (kind, image, max_size), (x, x0) in zip(sent, recorded):
        assert (kind, max_size) == ("JPEG", latent_preview.MAX_PREVIEW_RESOLUTION)
        assert image.size == (SIZE, SIZE)  # TAESD decodes to full resolution
        np.testing.assert_array_equal(_pixels(image),
                                      _pixels(direct.decode_latent_to_preview(x0[:, :, FRAMES // 2])))
