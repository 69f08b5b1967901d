"""The injection report: how far a customized T2I model moves the features the temporal layers read.

Still-Moving's premise (paper §3): a customized T2I model injected into the video model shifts
the features its motion modules read, and Spatial Adapters undo that shift. The report measures
it directly, before any video is sampled. The inputs of every motion module
(``down_blocks.0.motion_modules.1``...) are recorded for the base model and the customized one on
the same noisy latents, prompts and timesteps. For each block it gives:

* ``shift``: relative L2 change of those features, ``‖f_custom − f_base‖ / ‖f_base‖``;
* ``cosine``: mean cosine of base and customized feature vectors, one vector per frame and pixel
  (what temporal attention attends over);
* with Spatial Adapters: ``shift_after`` and ``closed = 1 − shift_after / shift``, the share of
  the shift the adapters undid.

``overall`` is the mean over blocks. The base model is the video model without its customization
(patches that customize the T2I or text weights) and without Spatial Adapters, unless a separate
base video model is given. Every other patch (motion LoRAs, Motion Adapter) stays in all models.
Clean latents, unless given, are the base model's own estimate from the seed's noise at t = 999;
each timestep noises them with one shared noise. Costs one UNet call, then one per timestep and
model.
"""
import math
import re
import textwrap
from dataclasses import asdict, dataclass, field

import torch

from .spatial_adapters import SpatialAdapters
from .training import noise_schedule
from .video_model import AdapterPatch

DEFAULT_TIMESTEPS = (999, 700, 400)
DEFAULT_FRAMES = 8
_MOTION_MODULE = re.compile(r"(?:.+\.)?motion_modules\.\d+")
_BLOCK_ORDER = {"down_blocks": 0, "mid_block": 1, "up_blocks": 2}


# ---- which patch is what ------------------------------------------------------------------------
def is_spatial_adapters(patch):
    """Spatial Adapters attached to the video model (what the report's 'after' measures)."""
    return isinstance(patch, AdapterPatch) and isinstance(patch.adapter, SpatialAdapters)


def is_customization(patch):
    """A patch that customizes the T2I or text weights: an injected checkpoint, an image LoRA, a
    subject module. Motion LoRAs, the Motion Adapter and Spatial Adapters are not."""
    if isinstance(patch, AdapterPatch):
        return bool(getattr(patch.adapter, "customizes_t2i", False)) and not is_spatial_adapters(patch)
    return bool(getattr(patch, "injection", False))


def _without(model, drop):
    out = model.clone()
    out.patches = [p for p in model.patches if not drop(p)]
    return out


def motion_module_names(unet):
    """The motion modules of a UNetMotionModel, in the order the UNet runs them."""
    names = [n for n, _ in unet.named_modules() if _MOTION_MODULE.fullmatch(n)]

    def order(name):
        parts = name.split(".")
        head = _BLOCK_ORDER.get(parts[0], 3)
        nums = [int(p) for p in parts if p.isdigit()]
        return (head, *nums)
    return sorted(names, key=order)


# ---- the result -----------------------------------------------------------------------------------
@dataclass
class BlockShift:
    block: str                      # e.g. down_blocks.0.motion_modules.1
    channels: int
    shift: float                    # relative L2 change of the features, customized vs base
    cosine: float                   # mean per-token cosine, customized vs base
    shift_after: float = None       # the same with Spatial Adapters (None without)
    cosine_after: float = None
    closed: float = None            # 1 - shift_after / shift (None without adapters or shift)


@dataclass
class InjectionReport:
    blocks: list
    shift: float                    # mean of the blocks' shifts
    cosine: float
    shift_after: float = None
    closed: float = None
    by_timestep: dict = field(default_factory=dict)   # t -> {"shift": ..., "shift_after": ...}
    prompts: list = field(default_factory=list)
    timesteps: list = field(default_factory=list)
    seed: int = 0
    frames: int = DEFAULT_FRAMES
    width: int = 0
    height: int = 0
    customization: list = field(default_factory=list)   # what was compared against the base
    adapters: list = field(default_factory=list)        # the Spatial Adapters measured, if any
    notes: list = field(default_factory=list)

    def as_dict(self):
        return asdict(self)

    def text(self):
        return render(self)


def _closed(before, after):
    if after is None or before is None or before <= 1e-12:
        return None
    return 1.0 - after / before


def _pct(x):
    return "-" if x is None else f"{100 * x:.0f}%"


def _num(x, digits=3):
    return "-" if x is None else f"{x:.{digits}f}"


def render(report):
    """A table an artist can read: block, shift, cosine and, with adapters, after and closed."""
    r = report
    after = r.shift_after is not None
    width = max([len("overall (mean of blocks)")] + [len(b.block) for b in r.blocks])
    lines = [
        "Injection report: how far the features entering the temporal layers moved from the base model's",
        f"shift = relative L2 change (0: unchanged); {len(r.prompts)} prompt(s) x t = "
        f"{', '.join(str(t) for t in r.timesteps)}; seed {r.seed}; {r.frames} frames at {r.width}x{r.height}",
    ]
    if r.customization:
        lines.append("customization: " + "; ".join(r.customization))
    if r.adapters:
        lines.append("Spatial Adapters: " + "; ".join(r.adapters))
    head = f"{'block':<{width}}  {'shift':>6}  {'cosine':>6}"
    if after:
        head += f"  {'after':>6}  {'closed':>6}"
    lines += ["", head, "-" * len(head)]
    for b in r.blocks:
        row = f"{b.block:<{width}}  {_num(b.shift):>6}  {_num(b.cosine):>6}"
        if after:
            row += f"  {_num(b.shift_after):>6}  {_pct(b.closed):>6}"
        lines.append(row)
    lines.append("-" * len(head))
    row = f"{'overall (mean of blocks)':<{width}}  {_num(r.shift):>6}  {_num(r.cosine):>6}"
    if after:
        row += f"  {_num(r.shift_after):>6}  {_pct(r.closed):>6}"
    lines.append(row)
    if r.by_timestep:
        parts = []
        for t, v in r.by_timestep.items():
            s = f"t={t}: {_num(v['shift'])}"
            if v.get("shift_after") is not None:
                s += f" -> {_num(v['shift_after'])}"
            parts.append(s)
        lines.append("by timestep (overall): " + ", ".join(parts))
    prose = ["Reading it: the larger the shift, the more the temporal layers see features they were not "
             "trained on, and the more motion naive injection tends to lose; compare customizations with the "
             "same prompts and seed."]
    if after:
        prose.append("closed: the share of the shift the Spatial Adapters undid (100% = the base model's "
                     "features again; near 0 = they did not act where the temporal layers read).")
    prose += [f"note: {n}" for n in r.notes]
    lines.append("")
    lines += [textwrap.fill(p, 96, subsequent_indent="  ") for p in prose]
    return "\n".join(lines)


# ---- measuring ------------------------------------------------------------------------------------
class _Recorder:
    """Forward pre-hooks on every motion module: store the base model's inputs, or compare a
    customized model's inputs with them, accumulating per-block sums."""

    def __init__(self, unets, names):
        self.names = names
        self.mode = None
        self.key = None
        self.base = {}
        self.sums = {}  # (key, block) -> [sum diff², sum base², sum cosine, tokens]
        self.channels = {}
        self.handles = []
        for unet in {id(u): u for u in unets}.values():
            modules = dict(unet.named_modules())
            for n in names:
                self.handles.append(modules[n].register_forward_pre_hook(self._hook(n)))

    def _hook(self, name):
        def hook(module, args):
            if self.mode is None:
                return None
            x = args[0].detach()
            if self.mode == "store":
                self.base[name] = x.clone()
                self.channels[name] = x.shape[1]
                return None
            b = self.base.get(name)
            if b is None or b.shape != x.shape:
                raise ValueError(f"the features entering {name} have shape {tuple(x.shape)} in this video model "
                                 f"but {None if b is None else tuple(b.shape)} in the base: the two models must "
                                 "share the architecture and motion module.")
            bf, xf = b.float(), x.float()
            n, c = bf.shape[:2]
            bt, xt = bf.reshape(n, c, -1), xf.reshape(n, c, -1)
            dot = (bt * xt).sum(1)
            cos = dot / (bt.norm(dim=1) * xt.norm(dim=1)).clamp_min(1e-12)
            s = self.sums.setdefault((self.key, name), [0.0, 0.0, 0.0, 0])
            s[0] += float((xf - bf).pow(2).sum())
            s[1] += float(bf.pow(2).sum())
            s[2] += float(cos.sum())
            s[3] += cos.numel()
            return None
        return hook

    def remove(self):
        for h in self.handles:
            h.remove()
        self.handles = []


def _unet_call(model, x, t, emb, frames):
    unet = model.unet
    tt = torch.full((x.shape[0],), int(t), device=x.device, dtype=torch.long)
    with model.patched(), torch.no_grad():
        return unet(x.to(model.dtype), tt, encoder_hidden_states=emb.repeat_interleave(frames, 0)).sample.float()


def _check_timesteps(timesteps):
    ts = [int(t) for t in timesteps]
    if not ts:
        raise ValueError("give at least one timestep (e.g. 999, 700, 400).")
    bad = [t for t in ts if not 0 <= t <= 999]
    if bad:
        raise ValueError(f"timesteps must be integers from 0 to 999 (the training schedule's), got {bad}.")
    return list(dict.fromkeys(ts))


def _describe(patches):
    """One line per patch, as an artist named it: what, where, how strong, from which file."""
    where = {"unet": "UNet", "text_encoder": "text encoder", "motion": "motion module"}
    out = []
    for p in patches:
        src = str(p.source).replace("\\", "/").rsplit("/", 1)[-1] or "(from the graph)"
        if isinstance(p, AdapterPatch):
            what, strength = f"{p.adapter.kind} adapter", p.scale
        elif hasattr(p, "weight"):
            what, strength = "checkpoint weights" if p.weight == 1 else "interpolated weights", p.weight
        else:
            what, strength = "LoRA", p.strength
        out.append(f"{what} ({where.get(p.target, p.target)}, {strength:g}): {src}")
    return out


def injection_report(model, *, base=None, adapters=None, strength=1.0, prompts=("",), seed=0,
                     timesteps=DEFAULT_TIMESTEPS, frames=DEFAULT_FRAMES, width=512, height=512,
                     latents=None, device="cpu", callback=None):
    """Measure how far the customization in ``model`` moves the motion modules' inputs.

    ``model``: a ``VideoModel`` with a customization injected, optionally with Spatial Adapters
    attached. ``base``: the base ``VideoModel`` (default: ``model`` without its customization and
    Spatial Adapters). ``adapters``: Spatial Adapters to measure on top, at ``strength``.
    ``latents``: clean diffusers-scaled latents (1 or len(prompts), C, F, h, w), e.g. a base
    video; they set frames and size (else ``frames``, ``width``, ``height``: SD1.5's 512 by default).
    ``callback(done, total)`` after every UNet call (it may raise to cancel).
    Returns an ``InjectionReport``; ``.text()`` is the table.
    """
    from .lowrank import motion_fingerprint
    from .sampling import encode_text, initial_noise
    prompts = [str(p) for p in prompts] or [""]
    ts = _check_timesteps(timesteps)
    device = torch.device(device)
    notes = []

    spatial = [p for p in model.patches if is_spatial_adapters(p)]
    custom = [p for p in model.patches if is_customization(p)]
    naive = _without(model, is_spatial_adapters)
    if base is None:
        base_model = _without(model, lambda p: is_spatial_adapters(p) or is_customization(p))
        if not custom:
            notes.append("this video model has no customization injected (or it equals the base): nothing to "
                         "compare; inject a customized checkpoint, LoRA or MODEL first.")
    else:
        base_model = base
        if motion_fingerprint(base) != motion_fingerprint(model):
            raise ValueError("the base video model has another motion module than the customized one; load both "
                             "with the same motion module (or leave the base out: it is then the customized "
                             "model without its customization).")
        if base.unet.config.block_out_channels != model.unet.config.block_out_channels:
            raise ValueError("the base and the customized video model have different UNet architectures; both "
                             "must be SD1.5 with the same motion module.")
    after = model if spatial else None
    adapter_desc = _describe(spatial)
    if adapters is not None:
        SpatialAdapters.expect(adapters)
        after = adapters.add_to(after or model, strength, merged=True, source="(adapters input)")
        adapter_desc.append(f"spatial adapter (UNet, {strength:g}): (adapters input)")

    unet = model.unet
    f = model.vae_scale
    if latents is not None:
        latents = latents.float()
        if latents.ndim != 5 or latents.shape[1] != unet.config.in_channels:
            raise ValueError(f"the latents have shape {tuple(latents.shape)}; this model needs "
                             f"(1 or {len(prompts)}, {unet.config.in_channels}, frames, h, w).")
        if latents.shape[0] not in (1, len(prompts)):
            raise ValueError(f"{latents.shape[0]} latent videos for {len(prompts)} prompts: give one, or one per "
                             "prompt.")
        frames, h, w = latents.shape[2], latents.shape[3], latents.shape[4]
    else:
        w, h = int(width) // f, int(height) // f
        if width % f or height % f or w < 1 or h < 1:
            raise ValueError(f"width and height must be positive multiples of {f} (this VAE's downscaling), "
                             f"got {width}x{height}.")
    max_frames = unet.config.motion_max_seq_length
    if not 1 <= frames <= max_frames:
        raise ValueError(f"frames must be from 1 to {max_frames} (this motion module's positions), got {frames}.")

    names = motion_module_names(unet)
    if not names:
        raise ValueError("this video model has no motion modules to report on.")
    variants = [("naive", naive)] + ([("after", after)] if after is not None else [])
    total = (latents is None) + len(ts) * (1 + len(variants))
    done = 0

    def step():
        nonlocal done
        done += 1
        if callback is not None:
            callback(done, total)

    n = len(prompts)
    shape = (n, unet.config.in_channels, frames, h, w)
    noise, g = initial_noise(shape, seed)
    renoise = torch.randn(shape, generator=g)
    alphas = noise_schedule(torch.float64)
    embeds = {"base": encode_text(base_model, prompts, device)}
    for key, m in variants:
        embeds[key] = encode_text(m, prompts, device)
    noise, renoise = noise.to(device), renoise.to(device)
    if latents is None:
        a = float(alphas[999])
        eps = _unet_call(base_model, noise, 999, embeds["base"].to(base_model.dtype), frames)
        clean = (noise - math.sqrt(1 - a) * eps) / math.sqrt(a)
        step()
    else:
        clean = latents.to(device).expand(n, -1, -1, -1, -1)

    rec = _Recorder([base_model.unet] + [m.unet for _, m in variants], names)
    try:
        for t in ts:
            a = float(alphas[t])
            x = math.sqrt(a) * clean + math.sqrt(1 - a) * renoise
            rec.mode = "store"
            _unet_call(base_model, x, t, embeds["base"].to(base_model.dtype), frames)
            step()
            for key, m in variants:
                rec.mode, rec.key = "compare", (key, t)
                _unet_call(m, x, t, embeds[key].to(m.dtype), frames)
                step()
            rec.mode = None
            rec.base.clear()
    finally:
        rec.remove()

    def shift_of(key, block, times):
        sums = [rec.sums[((key, t), block)] for t in times]
        diff, ref = sum(s[0] for s in sums), sum(s[1] for s in sums)
        return math.sqrt(diff / ref) if ref > 0 else 0.0

    def cosine_of(key, block):
        sums = [rec.sums[((key, t), block)] for t in ts]
        return sum(s[2] for s in sums) / max(1, sum(s[3] for s in sums))

    blocks = []
    for b in names:
        before = shift_of("naive", b, ts)
        row = BlockShift(b, int(rec.channels[b]), before, cosine_of("naive", b))
        if after is not None:
            row.shift_after = shift_of("after", b, ts)
            row.cosine_after = cosine_of("after", b)
            row.closed = _closed(before, row.shift_after)
        blocks.append(row)
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    overall = mean([b.shift for b in blocks])
    overall_after = mean([b.shift_after for b in blocks]) if after is not None else None
    by_t = {}
    for t in ts:
        by_t[t] = {"shift": mean([shift_of("naive", b, [t]) for b in names])}
        if after is not None:
            by_t[t]["shift_after"] = mean([shift_of("after", b, [t]) for b in names])
    if after is not None and overall <= 1e-12:
        notes.append("there is no shift to close: 'closed' is left out.")
    return InjectionReport(
        blocks=blocks, shift=overall, cosine=mean([b.cosine for b in blocks]), shift_after=overall_after,
        closed=_closed(overall, overall_after), by_timestep=by_t, prompts=prompts, timesteps=ts, seed=int(seed),
        frames=int(frames), width=int(w * f), height=int(h * f),
        customization=_describe(custom) if base is None else ["the linked base video model against this one"],
        adapters=adapter_desc, notes=notes)
