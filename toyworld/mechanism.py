"""Still-Moving's mechanism where the truth is known: a customization that is a known shift.

The paper's premise is that a customized T2I model draws what it should, but its features are
shifted away from those the temporal layers were trained on, and that Spatial Adapters, trained
on the customized model's stills with the Motion Adapter at α = 1 and on natural videos at α = 0,
learn to undo that shift. Here the shift is made by hand from the toy base model: each injected
layer's output goes through a known ``(I + P)``, ``P = s·U·Vᵀ`` with ``U``, ``V`` random orthonormal
(rank r, seeded per layer), so ``W' = (I + P)W`` and ``b' = (I + P)b``. A Spatial Adapter adds
``up(down(y))`` to its layer's output, so it undoes the shift exactly when
``(I + down·up)ᵀ = (I + P)⁻¹``, whose low-rank part has P's rank.

- ``shift_targets(model)``: the layers shifted (every Linear / Conv2d of the down, mid and up
  blocks, motion modules left out: conv_in, conv_out and the time embedding feed no temporal layer).
- ``make_shifts(model, rank, scale, seed)`` -> ``Shifts``; ``write_shifted_checkpoint(model,
  shifts, path)`` writes the customized model as an LDM checkpoint; ``shifted(base, folder)``
  makes, writes and injects it with ``inject.inject_checkpoint``, as a user's checkpoint would be.
- ``stream_scaled(base, folder, scale)``: the premise with nothing else: a customization whose
  T2I draws exactly the base's, but whose stream writes are ``scale`` times larger, so the motion
  modules move it less (see its section below).
- ``train_adapters``: Spatial Adapters trained as the paper says; ``exact_inverse``: the adapters
  that undo the shift, built by hand (what training should find).
- ``motion_scores``: travel and direction accuracy on base-world prompts and seeds.
- ``held_out_activations`` and ``undone``: how much of the shift adapters leave on activations of
  the base model they were not trained on.
- ``run``: all of it, with ``Setting``'s seeds and sizes (``benchmarks/bench_mechanism.py``).
"""
import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from adapters import data, export, sampling, training
from toyworld import world as tw

PROMPTS = (("red", "circle", "left"), ("blue", "circle", "right"), ("green", "circle", "up"),
           ("yellow", "circle", "down"))


def shift_targets(model):
    """Every Linear / Conv2d of the UNet's down, mid and up blocks, motion modules left out."""
    return [n for n, m in model.unet.named_modules()
            if isinstance(m, (nn.Linear, nn.Conv2d)) and n.startswith(("down_blocks.", "mid_block.", "up_blocks."))
            and ".motion_modules." not in n]


@dataclass
class Shifts:
    """``P = scale·U·Vᵀ`` per layer (``factors``: name -> (U, V), each C_out × rank, orthonormal)."""
    factors: dict
    rank: int
    scale: float
    seed: int

    def matrix(self, name):
        u, v = self.factors[name]
        return self.scale * u @ v.T

    def apply(self, name, y):
        """``(I + P) y`` for outputs ``y`` with channels last (N, C)."""
        u, v = self.factors[name]
        return y + self.scale * (y @ v) @ u.T


def _orthonormal(c, r, g):
    q, _ = torch.linalg.qr(torch.randn(c, r, generator=g, dtype=torch.float64))
    return q.float()


def make_shifts(model, rank=2, scale=2.0, seed=0, targets=None):
    """Random orthonormal ``U``, ``V`` (seeded) for each of ``targets`` (default: ``shift_targets``)."""
    modules = dict(model.unet.named_modules())
    g = torch.Generator().manual_seed(seed)
    factors = {}
    for name in targets or shift_targets(model):
        m = modules[name]
        c = m.out_features if isinstance(m, nn.Linear) else m.out_channels
        factors[name] = (_orthonormal(c, rank, g), _orthonormal(c, rank, g))
    return Shifts(factors, rank, float(scale), seed)


def shifted_unet_state(model, shifts):
    """The base UNet's T2I tensors (diffusers names) with ``W' = (I + P)W``, ``b' = (I + P)b``."""
    with torch.no_grad():
        sd = {k: v.detach().clone().float() for k, v in model.unet.state_dict().items() if ".motion_modules." not in k}
        for name in shifts.factors:
            p = shifts.matrix(name).double()
            for part in ("weight", "bias"):
                key = f"{name}.{part}"
                if key in sd:
                    t = sd[key].double()
                    sd[key] = (t + torch.tensordot(p, t, dims=([1], [0]))).float()
    return sd


def write_checkpoint(model, unet_state, path):
    """A customization (the UNet's T2I tensors, diffusers names) as a single-file LDM checkpoint
    with the base's VAE and text encoder (fp32: the untouched layers read back equal to the base,
    so exactly the changed layers are injected). Never overwrites."""
    cfg = model.vae.config
    tensors = export.checkpoint_tensors(unet_state, model.vae.state_dict(), model.text_encoder.state_dict(),
                                        model.info["layout"], (len(cfg.block_out_channels), cfg.layers_per_block),
                                        torch.float32)
    return export.write_checkpoint(path, tensors)


def write_shifted_checkpoint(model, shifts, path):
    """The shifted customization as a single-file LDM checkpoint."""
    return write_checkpoint(model, shifted_unet_state(model, shifts), path)


# --- a customization the T2I cannot see ------------------------------------------------------------
# The premise in its purest form: every spatial layer that writes into the UNet's residual stream
# writes ``c`` times larger, and every layer that reads the stream without a GroupNorm first (skip
# convs, down- and upsamplers) reads it ``1/c`` times. GroupNorm is blind to the scale, so the
# customized T2I draws exactly what the base draws; the motion modules, which add their output to
# the stream, now move it ``c`` times less. No Spatial Adapter undoes this exactly (the re-scaled
# readers keep ``c`` times their bias), so the figures are the recipe's, not an inverse's.

def stream_layers(model):
    """(writers, readers without a GroupNorm) of the UNet's residual stream: conv_in, resnet conv2
    and skip convs, transformer proj_out, down- and upsampler convs; skip, down- and upsampler convs."""
    writers, readers = ["conv_in"], []
    for n, m in model.unet.named_modules():
        parts = n.split(".")
        if ".motion_modules." in n or len(parts) < 2:
            continue
        if parts[-2] == "resnets":
            writers.append(f"{n}.conv2")
            if m.conv_shortcut is not None:
                writers.append(f"{n}.conv_shortcut")
                readers.append(f"{n}.conv_shortcut")
        elif parts[-2] == "attentions":
            writers.append(f"{n}.proj_out")
        elif parts[-2] in ("downsamplers", "upsamplers"):
            writers.append(f"{n}.conv")
            readers.append(f"{n}.conv")
    return writers, readers


def stream_scaled_unet_state(model, scale):
    """The base UNet's T2I tensors with every stream writer's output times ``scale`` and every
    GroupNorm-less reader's input divided by it."""
    writers, readers = stream_layers(model)
    with torch.no_grad():
        sd = {k: v.detach().clone().float() for k, v in model.unet.state_dict().items() if ".motion_modules." not in k}
        for name in readers:
            sd[f"{name}.weight"] = sd[f"{name}.weight"] / scale
        for name in writers:
            for part in ("weight", "bias"):
                if f"{name}.{part}" in sd:
                    sd[f"{name}.{part}"] = sd[f"{name}.{part}"] * scale
    return sd


def stream_scaled(base, folder, scale):
    """The stream-scaled customization written in ``folder`` and injected through the users' path.
    Returns (naive injection, checkpoint path)."""
    from pathlib import Path

    from adapters import inject
    path = write_checkpoint(base, stream_scaled_unet_state(base, scale), Path(folder) / f"stream_x{scale:g}.safetensors")
    return inject.inject_checkpoint(base, path), path


# --- videos and their motion ---------------------------------------------------------------------

def video(model, prompt, seed, steps=20, cfg=4.0, frames=tw.FRAMES, device="cpu"):
    return sampling.text_to_video(model, prompt, seed=seed, steps=steps, cfg=cfg, width=tw.SIZE, height=tw.SIZE,
                                  frames=frames, device=device)


def motion_scores(model, seeds, prompts=PROMPTS, steps=20, cfg=4.0, device="cpu"):
    """Mean travel and direction accuracy over ``prompts`` x ``seeds``, and the rows behind them."""
    rows = []
    for colour, shape, motion in prompts:
        prompt = tw.caption(colour, shape, motion)
        for seed in seeds:
            rows.append(dict(tw.motion_of(video(model, prompt, seed, steps, cfg, device=device), motion),
                             prompt=prompt, seed=seed))
    return {"travel_px": float(np.mean([r["travel_px"] for r in rows])),
            "dir_acc": float(np.mean([r["dir_ok"] for r in rows])), "rows": rows}


# --- training data -------------------------------------------------------------------------------

def stills(customized, captions, seeds, steps=20, cfg=4.0, device="cpu"):
    """Images of the customized T2I (temporal layers bypassed, one frame), as ``data.Clip``: the
    paper's spatial training data."""
    clips = []
    with training.temporal_layers_off(customized.unet):
        for text in captions:
            for seed in seeds:
                frame = video(customized, text, seed, steps, cfg, frames=1, device=device)
                clips.append(data.Clip(frame, text, f"customized T2I, '{text}', seed {seed}"))
    return clips


# --- the learned projection against the known shift ------------------------------------------------

def channels_last(out):
    """A layer's output as (N, C): conv outputs (B, C, H, W) with channels moved last."""
    return out.movedim(1, -1).reshape(-1, out.shape[1]) if out.ndim == 4 else out.reshape(-1, out.shape[-1])


def held_out_activations(base, names, captions, seeds, timesteps=(900, 600, 300), device="cpu"):
    """Outputs of layers ``names`` of the base video model (channels last, (N, C) per layer) on toy
    clips rendered for ``captions`` x ``seeds``, encoded and noised at ``timesteps``."""
    modules = dict(base.unet.named_modules())
    clips = [data.Clip(tw.to_float(tw.render_caption(c, s).frames), c, "") for c in captions for s in seeds]
    latents = data.encode_clips(base.vae, clips, tw.SIZE, tw.SIZE)
    alphas = training.noise_schedule()
    acts = {n: [] for n in names}

    def keep(name):
        return lambda mod, args, out: acts[name].append(channels_last(out.detach().float()))

    handles = [modules[n].register_forward_hook(keep(n)) for n in names]
    try:
        with base.patched(), torch.no_grad():
            for i, clip in enumerate(latents):
                emb = sampling.encode_text(base, [clip.caption], device)
                g = torch.Generator().manual_seed(10_000 + i)
                lat = clip.latents.unsqueeze(0)
                f = lat.shape[2]
                for t in timesteps:
                    a = alphas[t]
                    noisy = a.sqrt() * lat + (1 - a).sqrt() * torch.randn(lat.shape, generator=g)
                    base.unet(noisy.to(device), torch.tensor([t], device=device),
                              encoder_hidden_states=emb.repeat_interleave(f, 0))
    finally:
        for h in handles:
            h.remove()
    return {n: torch.cat(v) for n, v in acts.items()}


def undone(adapter, shifts, activations):
    """How much of the shift the adapter leaves, on ``activations`` (base outputs y per layer):
    ‖(I + UD)(I + P)y − y‖ / ‖Py‖ per layer, 0 = undone exactly, 1 = not at all (as without the
    adapter). Returns (per-layer dict, the same pooled over every layer)."""
    per, num, den = {}, 0.0, 0.0
    with torch.no_grad():
        for name, y in activations.items():
            shifted = shifts.apply(name, y)
            down, up = (t.detach().float() for t in adapter.factors(name))
            back = shifted + (shifted @ down) @ up
            e, d = float((back - y).pow(2).sum()), float((shifted - y).pow(2).sum())
            per[name] = math.sqrt(e / d)
            num, den = num + e, den + d
    return per, math.sqrt(num / den)


def exact_inverse(base, shifts, rank=None):
    """Spatial Adapters that undo the shift exactly: in the adapter's row form ``y + (y·down)·up``
    is ``(I + Pᵀ)⁻¹ y`` with ``down = V`` and ``up = −s(I + s·UᵀV)⁻¹Uᵀ`` (Woodbury). The yardstick
    for what training should find; ``rank`` (at least the shift's) pads with zero columns."""
    from adapters.spatial_adapters import SpatialAdapters
    rank = rank or shifts.rank
    if rank < shifts.rank:
        raise ValueError(f"an exact inverse needs rank {shifts.rank} or more, got {rank}")
    out = SpatialAdapters.for_model(base, rank, list(shifts.factors))
    with torch.no_grad():
        for name, (u, v) in shifts.factors.items():
            down, up = out.factors(name)
            down.zero_()
            up.zero_()
            inner = torch.eye(shifts.rank) + shifts.scale * u.T @ v
            down[:, :shifts.rank] = v
            up[:shifts.rank] = -shifts.scale * torch.linalg.solve(inner, u.T)
    return out


# --- the whole experiment --------------------------------------------------------------------------

@dataclass
class Setting:
    """One run of the experiment. Seeds of the evaluation videos, of the stills and of the
    held-out activations are disjoint, so every figure is measured on data the adapters never saw."""
    rank: int = 4                 # of each P
    scale: float = 3.0            # s: the singular values of each P
    shift_seed: int = 0
    adapter_rank: int = 4         # Spatial Adapters (at least ``rank``: the exact inverse fits)
    steps: int = 300
    learning_rate: float = 1e-3
    batch: int = 2
    prior: int = 40               # natural toy clips for prior preservation
    prior_ratio: float = 0.5
    train_seed: int = 0
    still_seeds: tuple = (100,)   # one still per base-world caption and seed
    eval_seeds: tuple = (20, 21)  # videos: PROMPTS x these seeds
    act_captions: tuple = ("a red circle moving right", "a blue circle moving up", "a yellow circle moving left")
    act_seeds: tuple = (50, 51)
    sample_steps: int = 20
    cfg: float = 4.0
    stream_scale: float = 0.0     # > 0: the T2I-invisible stream scale instead of the (I + P) shift
    min_timestep: int = 0         # Spatial Adapters' training timesteps start here


def colour_kept(clips):
    """Share of the subject's pixels in the colour each still's caption names (the T2I's quality)."""
    return float(np.mean([tw.colour_share(tw.as_uint8(c.frames), tw.parse_caption(c.caption)["colour"])
                          for c in clips]))


def shifted(base, folder, setting=None):
    """The customization: shifts made, written as a checkpoint in ``folder`` and injected through
    the users' path. Returns (shifts, naive injection, checkpoint path)."""
    from pathlib import Path

    from adapters import inject
    s = setting or Setting()
    shifts = make_shifts(base, s.rank, s.scale, s.shift_seed)
    path = write_shifted_checkpoint(base, shifts, Path(folder) / f"shifted_r{s.rank}_s{s.scale:g}.safetensors")
    return shifts, inject.inject_checkpoint(base, path), path


def training_data(base, naive, setting=None, device="cpu"):
    """The paper's training data: stills of the customized T2I (one per base-world caption and
    still seed) and natural toy clips. Returns (the stills as ``data.Clip``, their latents, the
    clips' latents)."""
    s = setting or Setting()
    custom = stills(naive, tw.all_captions(), s.still_seeds, s.sample_steps, s.cfg, device)
    return (custom, data.encode_clips(base.vae, custom, tw.SIZE, tw.SIZE),
            data.encode_clips(base.vae, tw.prior_videos(s.prior), tw.SIZE, tw.SIZE))


def train_adapters(base, naive, motion_adapter, folder, setting=None, device="cpu", prepared=None):
    """Spatial Adapters as the paper trains them: the stills with the Motion Adapter at α = 1, the
    natural clips at α = 0 (``prepared``: ``training_data``'s result, else made here).
    Returns (training.TrainResult, the stills as ``data.Clip``)."""
    from pathlib import Path

    from adapters.spatial_adapters import SpatialAdapters
    s = setting or Setting()
    custom, latents, prior = prepared or training_data(base, naive, s, device)
    settings = training.TrainSettings(steps=s.steps, learning_rate=s.learning_rate, rank=s.adapter_rank,
                                      batch=s.batch, frames=tw.FRAMES, seed=s.train_seed, prior_ratio=s.prior_ratio,
                                      min_timestep=s.min_timestep)
    res = training.train(naive, SpatialAdapters, settings, Path(folder) / "spatial_adapters.safetensors",
                         custom_clips=latents, prior_clips=prior, motion_adapter=motion_adapter, device=device)
    return res, custom


def run(base, motion_adapter, folder, setting=None, log=print, device="cpu"):
    """Customize the base model (the (I + P) shift, or with ``stream_scale`` the T2I-invisible
    stream scale), inject it as a user would, train Spatial Adapters as the paper says and measure:
    travel and direction accuracy of base, naive injection, Still-Moving at α = 0 (and for the
    shift the exact inverse, and how much of the shift the adapters leave on held-out
    activations); the customized T2I against the base's (the paper's premise: it still draws well)."""
    from adapters.video_model import AdapterPatch
    s = setting or Setting()
    if s.stream_scale:
        shifts = None
        naive, path = stream_scaled(base, folder, s.stream_scale)
        layers = len(stream_layers(base)[0])
    else:
        shifts, naive, path = shifted(base, folder, s)
        layers = len(shifts.factors)
    out = {"setting": s.__dict__, "checkpoint": str(path), "layers": layers, "injected": len(naive.injected_layers())}
    prepared = training_data(base, naive, s, device)
    res, custom = train_adapters(base, naive, motion_adapter, folder, s, device, prepared)
    _, still_latents, prior = prepared
    base_stills = stills(base, tw.all_captions(), s.still_seeds, s.sample_steps, s.cfg, device)
    out["t2i"] = {"colour_base": colour_kept(base_stills), "colour_customized": colour_kept(custom),
                  "max_diff": max(float((a.frames - b.frames).abs().max()) for a, b in zip(custom, base_stills))}
    out["train_s"] = res.seconds
    log(f"trained {res.step} steps in {res.seconds:.0f} s")
    models = {"base": base, "naive": naive, "still_moving": naive.with_patch(AdapterPatch(res.adapter, 1.0, True))}
    if shifts is not None:
        oracle = exact_inverse(base, shifts, s.adapter_rank)
        acts = held_out_activations(base, list(shifts.factors), s.act_captions, s.act_seeds, device=device)
        per, pooled = undone(res.adapter, shifts, acts)
        out["left"] = {"pooled": pooled, "median": float(np.median(list(per.values()))), "per_layer": per,
                       "exact_inverse": undone(oracle, shifts, acts)[1]}
        log(f"shift left on held-out activations: {pooled:.3f} pooled, {out['left']['median']:.3f} median layer")
        models["exact_inverse"] = naive.with_patch(AdapterPatch(oracle, 1.0, True))
    # the training objective's two halves, for every model
    out["loss"] = {name: {"stills_at_1": training.mean_loss(model.with_patch(AdapterPatch(motion_adapter, 1.0, False)),
                                                            still_latents, tw.FRAMES, True, samples=48, device=device),
                          "prior_at_0": training.mean_loss(model, prior, tw.FRAMES, False, samples=48, device=device)}
                   for name, model in models.items()}
    out["motion"] = {}
    for name, model in models.items():
        m = motion_scores(model, s.eval_seeds, steps=s.sample_steps, cfg=s.cfg, device=device)
        out["motion"][name] = m
        log(f"{name}: travel {m['travel_px']:.2f} px, direction accuracy {m['dir_acc']:.2f}")
    return out
