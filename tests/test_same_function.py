"""The pack's video model normalizes as AnimateDiff-Evolved does, and draws and scales the
initial noise as ComfyUI's KSampler does.

Normalization, per the version ADE reads a motion module as (adapters/norms.py):
  v2, v3, AnimateLCM with a mid block: every GroupNorm per frame, the motion modules' too
    (diffusers normalizes the motion modules' over all frames);
  v1 (and AnimateLCM without a mid block): every GroupNorm over all frames of each video
    (diffusers normalizes the spatial ones per frame).
The reference below computes GroupNorm by hand in float64 on the same weights and is hooked
onto the plain diffusers modules, so it shares no code with the pack's norms. Inputs have
frames of different scale and offset, so per-frame and per-video statistics differ.
"""
import copy
import math

import pytest
import torch

from adapters import export, loading, memory, norms, sampling
from adapters.files import read_state_dict

FRAMES = 4


def varied_frames(batch=1, frames=FRAMES, size=8, seed=0):
    """Latents whose frame k is scaled by 1 + k and shifted by k."""
    g = torch.Generator().manual_seed(seed)
    k = torch.arange(frames, dtype=torch.float32).view(1, 1, -1, 1, 1)
    return torch.randn(batch, 4, frames, size, size, generator=g) * (1 + k) + k


def text(batch=1, frames=FRAMES, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 7, 32, generator=g).repeat_interleave(frames, 0)


def group_norm_by_hand(x, module):
    """GroupNorm of (N, C, ...) over each group's channels and all trailing dims, in float64."""
    n, c = x.shape[:2]
    xs = x.double().reshape(n, module.num_groups, -1)
    mean = xs.mean(-1, keepdim=True)
    var = ((xs - mean) ** 2).mean(-1, keepdim=True)
    y = ((xs - mean) / torch.sqrt(var + module.eps)).reshape(x.shape)
    shape = (1, c) + (1,) * (x.ndim - 2)
    return (y * module.weight.double().view(shape) + module.bias.double().view(shape)).to(x.dtype)


def per_frame(x, module):
    """(B, C, F, H, W): each frame on its own."""
    return torch.stack([group_norm_by_hand(x[:, :, i], module) for i in range(x.shape[2])], 2)


def per_video(x, module, frames):
    """(B·F, C, H, W): statistics over all frames of each video."""
    n, c, h, w = x.shape
    v = x.reshape(n // frames, frames, c, h, w).permute(0, 2, 1, 3, 4)
    return group_norm_by_hand(v, module).permute(0, 2, 1, 3, 4).reshape(n, c, h, w)


def diffusers_unet(unet):
    """A copy of ``unet`` with diffusers' own GroupNorms (the pack's previous function)."""
    ref = copy.deepcopy(unet)
    for m in ref.modules():
        if isinstance(m, torch.nn.GroupNorm):
            m.__class__ = torch.nn.GroupNorm
    ref._forward_pre_hooks.clear()
    return ref


def reference_unet(unet, mode, frames):
    """diffusers' modules with hand-written GroupNorms hooked in, as ADE normalizes in ``mode``."""
    ref = diffusers_unet(unet)
    for name, m in ref.named_modules():
        if not isinstance(m, torch.nn.GroupNorm):
            continue
        motion = ".motion_modules." in f".{name}" and name.endswith("norm") and "transformer_blocks" not in name
        if mode == "frame" and motion:
            m.register_forward_hook(lambda mod, args, out: per_frame(args[0], mod))
        elif mode == "video" and not motion:
            m.register_forward_hook(lambda mod, args, out: per_video(args[0], mod, frames))
        # video + motion norm: diffusers already normalizes the (B, C, F, H, W) input over the video
        # frame + spatial norm: diffusers already normalizes each (C, H, W) image
    return ref


def run(unet, x, emb, t=500):
    with torch.no_grad():
        return unet(x, torch.tensor(t), encoder_hidden_states=emb).sample


def rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


@pytest.fixture(scope="module")
def models(tiny_files):
    return {v: loading.load_video_model(tiny_files.checkpoint, tiny_files.motion_files[v]) for v in ("v1", "v2", "v3")}


@pytest.mark.parametrize("version,mode", [("v1", "video"), ("v2", "frame"), ("v3", "frame")])
def test_each_version_normalizes_as_ade(models, version, mode):
    vm = models[version]
    assert vm.info["normalization"] == mode
    x, emb = varied_frames(), text()
    ours = run(vm.unet, x, emb)
    want = run(reference_unet(vm.unet, mode, FRAMES), x, emb)
    assert rel(ours, want) < 1e-5
    # the previous function (diffusers' normalization) is measurably another one on these inputs
    assert rel(run(diffusers_unet(vm.unet), x, emb), want) > 1e-2
    # and so is the other mode
    other = reference_unet(vm.unet, "frame" if mode == "video" else "video", FRAMES)
    assert rel(run(other, x, emb), want) > 1e-2


def test_state_dict_keys_unchanged(models, tiny_files):
    for vm in models.values():
        plain = diffusers_unet(vm.unet)
        assert list(vm.unet.state_dict()) == list(plain.state_dict())
        for (ka, a), (kb, b) in zip(vm.unet.state_dict().items(), plain.state_dict().items()):
            assert ka == kb and torch.equal(a, b)


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_each_video_of_a_batch_is_normalized_on_its_own(models, version):
    """Classifier-free guidance runs two videos in one call: each is a video of its own."""
    unet = models[version].unet
    a, b = varied_frames(seed=0), varied_frames(seed=5) * 0.3 - 1
    ea, eb = text(seed=1), text(seed=2)
    both = run(unet, torch.cat([a, b]), torch.cat([ea, eb]))
    torch.testing.assert_close(both[:1], run(unet, a, ea), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(both[1:], run(unet, b, eb), rtol=1e-5, atol=1e-5)


def test_v1_frame_count_follows_each_call(models):
    """A context window is a video: the count comes from each call's sample, not the last one."""
    unet = models["v1"].unet
    long, short = varied_frames(frames=6), varied_frames(frames=3, seed=3)
    run(unet, long, text(frames=6))
    torch.testing.assert_close(run(unet, short, text(frames=3)),
                               run(reference_unet(unet, "video", 3), short, text(frames=3)), rtol=1e-5, atol=1e-5)


def test_animatelcm_follows_ade_for_its_layout(tiny_files, tmp_path):
    """ADE reads a file without positional tables as v2 when it has a mid block, else as v1."""
    for source, mid, mode in (("v2", True, "frame"), ("v3", False, "video")):
        tensors = {k: v for k, v in export.motion_module_tensors(tiny_files.motion[source]).items()
                   if "pos_encoder" not in k}
        path = export.write_checkpoint(tmp_path / f"lcm_{source}.safetensors", tensors)
        vm = loading.load_video_model(tiny_files.checkpoint, path)
        assert vm.unet.config.use_motion_mid_block is mid
        assert vm.info["normalization"] == mode
        x, emb = varied_frames(), text()
        assert rel(run(vm.unet, x, emb), run(reference_unet(vm.unet, mode, FRAMES), x, emb)) < 1e-5


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_norms_in_half_precision(dtype):
    """The two norms in fp16/bf16 against the float64 reference on the same weights."""
    g = torch.Generator().manual_seed(0)
    gn = torch.nn.GroupNorm(8, 32, eps=1e-6)
    with torch.no_grad():
        gn.weight.copy_(1 + 0.1 * torch.randn(32, generator=g))
        gn.bias.copy_(0.1 * torch.randn(32, generator=g))
    gn = gn.to(dtype)
    x5 = (torch.randn(2, 32, FRAMES, 4, 4, generator=g) * torch.arange(1, FRAMES + 1).view(1, 1, -1, 1, 1)).to(dtype)
    frame = copy.deepcopy(gn)
    frame.__class__ = norms.FrameGroupNorm
    tol = dict(rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(frame(x5).float(), per_frame(x5.double(), frame).float(), **tol)
    video = copy.deepcopy(gn)
    video.__class__ = norms.VideoGroupNorm
    video.count = norms.FrameCount()
    video.count.frames = FRAMES
    x4 = x5.permute(0, 2, 1, 3, 4).reshape(2 * FRAMES, 32, 4, 4)
    torch.testing.assert_close(video(x4).float(), per_video(x4.double(), video, FRAMES).float(), **tol)


def test_bf16_model_keeps_the_normalization(tiny_files):
    vm = loading.load_video_model(tiny_files.checkpoint, tiny_files.motion_files["v1"], dtype=torch.bfloat16)
    assert vm.info["normalization"] == "video"
    ref = loading.load_video_model(tiny_files.checkpoint, tiny_files.motion_files["v1"])
    x, emb = varied_frames(), text()
    out = run(vm.unet, x.bfloat16(), emb.bfloat16()).float()
    assert rel(out, run(ref.unet, x, emb)) < 0.05


def test_v1_training_with_checkpointing_sees_the_frames(models):
    """Checkpointed blocks recompute their forward in backward: the gradients must not change."""
    unet = models["v1"].unet
    x, emb = varied_frames(batch=2), text(batch=2)
    param = dict(unet.named_parameters())["down_blocks.0.resnets.0.conv1.weight"]

    def grad(checkpointed):
        param.requires_grad_(True)
        try:
            with memory.checkpointed(unet, "layer") if checkpointed else torch.enable_grad():
                loss = unet(x, torch.tensor([100, 900]), encoder_hidden_states=emb).sample.square().mean()
                g, = torch.autograd.grad(loss, param)
            return g
        finally:
            param.requires_grad_(False)

    torch.testing.assert_close(grad(True), grad(False), rtol=1e-5, atol=1e-6)


# --- initial noise ---------------------------------------------------------------------------

def test_initial_noise_is_comfyui_noise_per_frame():
    """ComfyUI's prepare_noise: torch.manual_seed(seed), randn((frames, C, h, w)) on the CPU."""
    for seed in (0, 123456789, 2 ** 63 + 5):
        noise, _ = sampling.initial_noise((1, 4, 5, 6, 7), seed)
        torch.manual_seed(seed)
        comfy = torch.randn((5, 4, 6, 7))
        assert noise.shape == (1, 4, 5, 6, 7)
        assert torch.equal(noise[0], comfy.permute(1, 0, 2, 3))


def test_noise_scaling_is_comfyuis():
    """EPS.noise_scaling(max_denoise=True): noise · sqrt(1 + sigma_max²), sigma of t = 999 for
    AnimateDiff's linear betas; samplers on the unit-variance latent take the noise as it is."""
    betas = torch.linspace(0.00085, 0.012, 1000, dtype=torch.float64)
    abar = torch.cumprod(1 - betas, 0)
    sigma_max = math.sqrt((1 - abar[-1].item()) / abar[-1].item())
    sched = sampling.make_scheduler("euler", "linear")
    sched.set_timesteps(4)
    assert sampling.noise_scale(sched) == pytest.approx(math.sqrt(1 + sigma_max ** 2), rel=1e-6)
    assert sampling.noise_scale(sched) / sigma_max == pytest.approx(1.00079, abs=1e-5)
    for name in ("ddim", "dpmpp_2m", "lcm"):
        s = sampling.make_scheduler(name, "linear")
        s.set_timesteps(4)
        assert sampling.noise_scale(s) == 1.0


def test_euler_steps_are_comfyuis(models):
    """Two Euler steps (ComfyUI "normal": t = 999 then 0) from the same seed's noise: x starts
    at noise·sqrt(1 + σ0²), the model sees x / sqrt(1 + σ²), and x += (σ_next - σ)·eps."""
    vm = models["v2"]
    cond = text(frames=1, seed=4)
    out = sampling.sample(vm, cond, None, seed=7, steps=2, cfg=1.0, width=32, height=32, frames=3)
    betas = torch.linspace(0.00085, 0.012, 1000, dtype=torch.float64)
    abar = torch.cumprod(1 - betas, 0)
    sigmas = [math.sqrt((1 - abar[t].item()) / abar[t].item()) for t in (999, 0)] + [0.0]
    torch.manual_seed(7)
    x = torch.randn((3, 4, 4, 4)).permute(1, 0, 2, 3)[None] * math.sqrt(1 + sigmas[0] ** 2)
    for t, sigma, nxt in zip((999, 0), sigmas, sigmas[1:]):
        eps = run(vm.unet, x / math.sqrt(1 + sigma ** 2), cond.repeat_interleave(3, 0), t=t)
        x = x + (nxt - sigma) * eps
    assert rel(out, x) < 1e-5  # float32 sigmas and updates against float64 sigmas here
    torch.testing.assert_close(out, x, rtol=1e-4, atol=1e-4)
