"""The one sampling loop of the pack: text-to-video with CFG, any scheduler, context windows.

From a seed, computes what ComfyUI's KSampler computes with AnimateDiff-Evolved on the same
files (the same initial noise and scaling, Euler's sigmas and timesteps, denoise:
``benchmarks/compare_ade.py``, ``tests/test_sampler_inputs.py``), and matches diffusers'
AnimateDiffPipeline step for step from the same start (``benchmarks/bench_sampling.py``). It
works on a ``VideoModel`` with its patches, reports every step to a callback (progress, preview,
Cancel) and handles videos longer than the motion module's window with sliding context windows
or FreeNoise.
"""
import functools
import math
from dataclasses import dataclass

import torch

from .controlnet import control_context
from .schedule import scheduled_patching
from .video_model import TEXT

SCHEDULERS = ("euler", "euler_ancestral", "ddim", "dpmpp_2m", "dpmpp_2m_karras", "lcm")
BETA_SCHEDULES = ("linear", "scaled_linear")  # AnimateDiff was trained with "linear"
CONTEXT_MODES = ("none", "sliding", "freenoise")


def make_scheduler(name="euler", beta_schedule="linear"):
    import diffusers as d
    if name not in SCHEDULERS:
        raise ValueError(f"unknown scheduler '{name}'; choose one of {', '.join(SCHEDULERS)}")
    common = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                  beta_schedule=beta_schedule, steps_offset=1)
    if name == "ddim":
        return d.DDIMScheduler(**common, clip_sample=False, set_alpha_to_one=False)
    if name == "euler":
        return _comfy_stepping(d.EulerDiscreteScheduler)(**common)
    if name == "euler_ancestral":
        return _comfy_stepping(d.EulerAncestralDiscreteScheduler)(**common)
    if name.startswith("dpmpp_2m"):
        return d.DPMSolverMultistepScheduler(**common, algorithm_type="dpmsolver++", solver_order=2,
                                             use_karras_sigmas=name.endswith("karras"))
    return d.LCMScheduler(**common, clip_sample=False, set_alpha_to_one=True)


@dataclass
class ContextOptions:
    """How to denoise more frames than the motion module has positions for."""
    mode: str = "none"     # none | sliding | freenoise
    length: int = 16
    overlap: int = 4

    def validate(self, max_positions):
        if self.mode not in CONTEXT_MODES:
            raise ValueError(f"unknown context mode '{self.mode}'; choose one of {', '.join(CONTEXT_MODES)}")
        if self.length > max_positions:
            raise ValueError(f"context length {self.length} is longer than the motion module's "
                             f"{max_positions} positions; use at most {max_positions}.")
        if not 0 <= self.overlap < self.length:
            raise ValueError(f"context overlap must be in [0, {self.length - 1}], got {self.overlap}.")


def context_windows(frames, length, overlap):
    """Frame index lists covering ``frames``; the last window ends at the last frame."""
    if frames <= length:
        return [list(range(frames))]
    stride = length - overlap
    starts = list(range(0, frames - length + 1, stride))
    if starts[-1] != frames - length:
        starts.append(frames - length)
    return [list(range(s, s + length)) for s in starts]


def _window_weights(length, device, dtype):
    """Pyramid weights so overlapping windows blend instead of seaming."""
    i = torch.arange(length, device=device, dtype=dtype)
    return torch.minimum(i + 1, length - i).view(1, 1, length, 1, 1)


def initial_noise(shape, seed, context=None):
    """Seeded unit noise (batch, C, frames, h, w), drawn as ComfyUI's KSampler draws a video's:
    ``torch.manual_seed(seed)``, then ``randn((batch·frames, C, h, w))`` on the CPU (one latent
    image per frame). So a seed gives the same noise, frame for frame, in the pack and in a
    KSampler graph, on any device.

    FreeNoise reuses each earlier window's noise, shuffled, for the frames after it, so long
    videos keep the content of the first window.
    """
    batch, channels, frames, h, w = shape
    g = torch.Generator("cpu").manual_seed(int(seed))
    noise = torch.randn((batch * frames, channels, h, w), generator=g, dtype=torch.float32)
    noise = noise.view(batch, frames, channels, h, w).transpose(1, 2).contiguous()
    if context is not None and context.mode == "freenoise" and frames > context.length:
        stride = context.length - context.overlap
        for start in range(context.length, frames, stride):
            n = min(stride, frames - start)
            src = torch.arange(start - context.length, start - context.length + n)
            noise[:, :, start:start + n] = noise[:, :, src[torch.randperm(n, generator=g)]]
    return noise, g


def _start(sched):
    """(index of the first step in the scheduler's schedule, its sigma, whether the scheduler
    works in sigma space: Euler & co., diffusers' ``init_noise_sigma`` is not 1)."""
    start = getattr(sched, "_sm_start", 0)
    sigma_space = float(sched.init_noise_sigma) != 1.0
    if sigma_space:
        return start, float(sched.sigmas[start]), True
    abar = sched.alphas_cumprod.double()[int(sched.timesteps[start])]
    return start, float(((1 - abar) / abar).sqrt()), False


def noise_scale(sched):
    """The factor ComfyUI's EPS ``noise_scaling`` gives unit noise at the first step, in the
    scheduler's own space. Sigma space: sqrt(1 + sigma²) on a full schedule (max_denoise), sigma
    when it starts part-way (denoise < 1). Unit-variance latents (DDIM, DPM++, LCM): the same
    divided by sqrt(1 + sigma²), i.e. 1 on a full schedule."""
    start, sigma, sigma_space = _start(sched)
    if sigma_space:
        return math.sqrt(1.0 + sigma * sigma) if start == 0 else sigma
    return 1.0 if start == 0 else sigma / math.sqrt(1.0 + sigma * sigma)


def start_latents(sched, noise, init=None):
    """The latents the first step starts from: the scaled noise plus ``init`` (video-to-video,
    diffusers-scaled, same shape), which ComfyUI adds to the scaled noise in sigma space."""
    x = noise * noise_scale(sched)
    if init is not None:
        _, sigma, sigma_space = _start(sched)
        x = x + init.to(x) * (1.0 if sigma_space else 1.0 / math.sqrt(1.0 + sigma * sigma))
    return x


@functools.lru_cache(maxsize=None)
def _comfy_stepping(cls):
    """A diffusers sigma-space scheduler class whose ``set_timesteps`` ends with ComfyUI's sigmas and
    timesteps (``comfy_sigmas``), so any loop driving it, ours or diffusers' pipeline, steps alike."""
    class ComfyStepping(cls):
        def set_timesteps(self, *args, **kwargs):
            super().set_timesteps(*args, **kwargs)
            comfy_sigmas(self)
    ComfyStepping.__name__ = ComfyStepping.__qualname__ = cls.__name__
    return ComfyStepping


def comfy_sigmas(sched):
    """Sigma-space schedulers step as ComfyUI's KSampler does: the sigma of each (possibly
    fractional) timestep interpolated in log-sigma (ModelSamplingDiscrete.sigma; diffusers
    interpolates sigma linearly), and the UNet given the integer timestep nearest that sigma
    (ModelSamplingDiscrete.timestep). The table is built in float64 as ComfyUI builds it."""
    cfg = sched.config
    n = cfg.num_train_timesteps
    if cfg.beta_schedule == "linear":
        betas = torch.linspace(cfg.beta_start, cfg.beta_end, n, dtype=torch.float64)
    else:  # scaled_linear
        betas = torch.linspace(cfg.beta_start ** 0.5, cfg.beta_end ** 0.5, n, dtype=torch.float64) ** 2
    abar = torch.cumprod(1 - betas, 0)
    log_sigmas = ((1 - abar) / abar).sqrt().log().float()
    t = sched.timesteps.detach().float().cpu().clamp(0, n - 1)
    low, high, w = t.floor().long(), t.ceil().long(), t.frac()
    inner = ((1 - w) * log_sigmas[low] + w * log_sigmas[high]).exp()
    nearest = (inner.log()[None, :] - log_sigmas[:, None]).abs().argmin(dim=0)
    device = sched.sigmas.device
    sched.sigmas = torch.cat([inner, sched.sigmas[-1:].cpu()]).to(device)
    sched.timesteps = nearest.to(device, torch.float32)


def set_steps(sched, steps, denoise, device):
    """Set and return the timesteps for ``steps`` steps at ``denoise`` strength, as ComfyUI's
    KSampler picks them: the last ``steps`` of an ``int(steps / denoise)``-step schedule."""
    if not 0.0 < denoise <= 1.0:
        raise ValueError(f"denoise must be in (0, 1], got {denoise}.")
    total = steps if denoise > 0.9999 else int(steps / denoise)
    sched.set_timesteps(total, device=device)
    start = (total - steps) * sched.order
    sched._sm_start = start
    if start and hasattr(sched, "set_begin_index"):
        sched.set_begin_index(start)
    return sched.timesteps[start:]


def per_frame(embedding, frames):
    """Text embeddings (1 or N, seq, dim) -> one per frame (frames, seq, dim). One embedding serves
    every frame; N (e.g. a prompt schedule) is repeated or cut to the frame count, as ComfyUI does
    when a conditioning's batch differs from the latent's."""
    n = embedding.shape[0]
    if n == frames:
        return embedding
    if n == 1:
        return embedding.expand(frames, *embedding.shape[1:])
    reps = math.ceil(frames / n)
    return embedding.repeat(reps, *([1] * (embedding.dim() - 1)))[:frames]


def encode_text(model, prompts, device):
    """CLIP last hidden states, 77 tokens per prompt, as SD1.5 and AnimateDiff use them."""
    tok = model.tokenizer(list(prompts), padding="max_length", max_length=77, truncation=True,
                          return_tensors="pt")
    te = model.text_encoder
    te_device = next(te.parameters()).device
    with model.patched((TEXT,)), torch.no_grad():
        out = te(tok.input_ids.to(te_device))[0]
    return out.to(device)


def sample(model, cond, uncond=None, *, seed=0, steps=20, cfg=7.5, scheduler="euler",
           beta_schedule="linear", width=512, height=512, frames=16, context=None,
           device="cpu", callback=None, init_latents=None, denoise=1.0, schedule=None):
    """Denoise a video; returns diffusers-scaled latents (1, C, F, h, w) on the CPU.

    ``cond``/``uncond`` are text embeddings (1, seq, dim), or one per frame (frames, seq, dim:
    prompt travel; other counts are repeated or cut as ComfyUI does). ``init_latents``
    (1, C, F, h, w, diffusers-scaled) with ``denoise`` < 1: video-to-video from those latents;
    their size then sets frames, height and width. ``callback(step, total, latents,
    denoised)`` is called after every step with the noisy latents and the step's denoised
    estimate (x0, same shape and scaling, for previews); it may raise to cancel (patches are
    undone either way).
    ``schedule``: a ``schedule.WeightSchedule`` for the spatial customizations' weight per step.
    """
    unet = model.unet
    dtype = next(unet.parameters()).dtype
    device = torch.device(device)
    f = model.vae_scale
    if init_latents is not None:
        frames, height, width = init_latents.shape[2], init_latents.shape[3] * f, init_latents.shape[4] * f
    max_positions = unet.config.motion_max_seq_length
    context = context or ContextOptions("none", min(frames, max_positions), 0)
    if context.mode == "none":
        if frames > max_positions:
            raise ValueError(f"{frames} frames is more than this motion module's {max_positions} positions "
                             "(v1: 24 but trained on 16, v2/v3: 32). Use a context mode (sliding or freenoise) "
                             "for longer videos.")
        context = ContextOptions("none", frames, 0)
    context.validate(max_positions)
    if width % f or height % f:
        raise ValueError(f"width and height must be multiples of {f} (this VAE's downscaling), got {width}x{height}.")
    sched = make_scheduler(scheduler, beta_schedule)
    timesteps = set_steps(sched, steps, denoise, device)
    shape = (1, unet.config.in_channels, frames, height // f, width // f)
    noise, generator = initial_noise(shape, seed, context)
    init = None if init_latents is None else init_latents.float().to(device)
    if init is not None and tuple(init.shape[:2]) != shape[:2]:
        raise ValueError(f"the input latents have shape {tuple(init.shape)}; this model needs (1, "
                         f"{shape[1]}, frames, h, w).")
    x = start_latents(sched, noise.to(device), init)
    use_cfg = cfg != 1.0 and uncond is not None
    windows = context_windows(frames, context.length, context.overlap)
    cond = per_frame(cond.to(device, dtype), frames)
    uncond = per_frame(uncond.to(device, dtype), frames) if use_cfg else None
    batched = use_cfg and uncond.shape[1] == cond.shape[1]

    def run(xw, t, embs, idx, step):
        """One UNet call on the videos ``xw`` (frames ``idx``), one per-frame embedding each;
        attached ControlNets add their residuals (same embeddings)."""
        emb = torch.cat([e[idx] for e in embs])
        return unet(xw, t, encoder_hidden_states=emb, **control(xw, t, emb, idx, step, total)).sample

    def predict(xw, t, idx, step):
        if batched:
            eps_u, eps_c = run(torch.cat([xw, xw]), t, (uncond, cond), idx, step).chunk(2)
        else:
            eps_c = run(xw, t, (cond,), idx, step)
            if not use_cfg:
                return eps_c
            eps_u = run(xw, t, (uncond,), idx, step)
        return eps_u + cfg * (eps_c - eps_u)

    total = len(timesteps)
    with scheduled_patching(model, schedule, total) as at_step, torch.no_grad(), \
            control_context(model, frames, height, width, device) as control:
        for i, t in enumerate(timesteps):
            at_step(i)
            xin = sched.scale_model_input(x, t).to(dtype)
            if len(windows) == 1:
                eps = predict(xin, t, windows[0], i).float()
            else:
                eps = torch.zeros_like(x)
                weight = torch.zeros(1, 1, frames, 1, 1, device=device)
                for idx in windows:
                    w = _window_weights(len(idx), device, torch.float32)
                    eps[:, :, idx] += predict(xin[:, :, idx], t, idx, i).float() * w
                    weight[:, :, idx] += w
                eps = eps / weight
            out = sched.step(eps, t, x, generator=generator)
            x = out.prev_sample
            if callback is not None:
                callback(i + 1, total, x, denoised_estimate(sched, out))
    return x.cpu()


def denoised_estimate(sched, out):
    """The clean latents (x0) a scheduler step predicted from the noise estimate, in the latents'
    own space: what a preview shows, since the noisy latents look like noise until the end."""
    x0 = getattr(out, "pred_original_sample", None)  # euler, euler_ancestral, ddim
    if x0 is None:
        x0 = getattr(out, "denoised", None)  # lcm
    if x0 is None and getattr(sched.config, "algorithm_type", "") in ("dpmsolver++", "sde-dpmsolver++"):
        x0 = sched.model_outputs[-1]  # DPM-Solver++ turns eps into x0 before it steps
    if x0 is None:
        raise TypeError(f"{type(sched).__name__} gives no denoised estimate; add it to denoised_estimate")
    return x0


def text_to_video(model, prompt, negative_prompt="", *, device="cpu", **sample_kw):
    """A prompt's video as frames (F, H, W, 3) in [0, 1]: ``encode_text`` + ``sample`` + ``decode``."""
    cond = encode_text(model, [prompt], device)
    uncond = encode_text(model, [negative_prompt], device)
    return decode(model, sample(model, cond, uncond, device=device, **sample_kw))


def decode(model, latents, chunk=8):
    """Diffusers-scaled latents (1, C, F, h, w) -> frames (F, H, W, 3) in [0, 1], a few at a time."""
    vae = model.vae
    vdev = next(vae.parameters()).device
    vdtype = next(vae.parameters()).dtype
    z = latents[0].permute(1, 0, 2, 3) / vae.config.scaling_factor
    out = []
    with torch.no_grad():
        for s in range(0, z.shape[0], chunk):
            img = vae.decode(z[s:s + chunk].to(vdev, vdtype)).sample
            out.append(((img.float() / 2 + 0.5).clamp(0, 1)).permute(0, 2, 3, 1).cpu())
    return torch.cat(out)
