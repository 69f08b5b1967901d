"""The one training loop, for every adapter kind (Motion Adapter, Spatial Adapters, ...).

Everything but the adapter is frozen; gradients flow through the whole video UNet. What differs
between kinds (which clips, frozen or not, the Motion Adapter's α, temporal layers bypassed) is
the kind's ``TrainingRecipe``, read from its class. Each step draws its batch, noise and
timesteps from a generator seeded by (seed, step), so a run resumed from a saved file continues
exactly as the uninterrupted run would have.
"""
import contextlib
import dataclasses
import math
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from . import lowrank, memory
from .files import unique_path
from .lowrank import LowRankAdapter


@dataclass(frozen=True)
class TrainingRecipe:
    """How ``train`` trains one adapter kind (each adapter class carries one as ``recipe``)."""
    # how a custom clip becomes an example: True = one random frame repeated (a frozen video),
    # False = consecutive real frames, "unordered" = its frames in random order (a bag of images)
    frozen: object = True
    prior: bool = False            # mix in ``prior_clips`` (real frames, in order) by ``prior_ratio``
    motion_adapter: bool = False   # train under the Motion Adapter: α = 1 on custom clips, 0 on prior clips
    bypass_temporal: bool = False  # every motion module bypassed on every step

    def clip_frames(self, use_prior):
        """The ``frozen`` argument of ``_clip_latents`` for a prior or a custom example."""
        return False if use_prior else self.frozen


@dataclass
class TrainSettings:
    steps: int = 500
    learning_rate: float = 1e-4
    rank: int = 8
    batch: int = 1
    frames: int = 16
    seed: int = 0
    mixed_precision: str = "no"        # no | bf16 | fp16 (CUDA only)
    gradient_checkpointing: bool = False
    save_every: int = 0                # 0: only at the end (and on Cancel)
    weight_decay: float = 1e-2
    prior_ratio: float = 0.5           # spatial: share of steps on natural prior videos (α = 0)
    interleaved: bool = False          # the paper's baseline: stills with temporal layers off
    target_mode: str = "all"           # spatial: which injected layers get adapters
    # share of examples trained with the empty prompt. Adapters trained only on captioned stills
    # also move the unconditional prediction, which classifier-free guidance subtracts: on a
    # customized checkpoint whose empty prompt already draws the subject, that undoes the
    # customization
    caption_dropout: float = 0.0
    # timesteps drawn uniformly from [min_timestep, max_timestep) (kohya's names); a higher
    # minimum spends more steps where the noise is high and a video's layout and motion are set
    min_timestep: int = 0
    max_timestep: int = 1000

    @classmethod
    def from_inputs(cls, values, where="settings"):
        """Settings from a mapping of field names (node inputs, a config's settings section);
        a name that is not a setting is refused, so nothing given is dropped."""
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - fields)
        if unknown:
            raise ValueError(f"{where}: unknown training setting(s) {', '.join(unknown)}; "
                             f"known: {', '.join(sorted(fields))}")
        return cls(**values)

    def validate(self):
        if self.steps < 1 or self.batch < 1 or self.frames < 1 or self.rank < 1:
            raise ValueError("steps, batch, frames and rank must be at least 1")
        if not 0 <= self.caption_dropout <= 1:
            raise ValueError(f"caption_dropout must be in [0, 1], got {self.caption_dropout}")
        if not 0 <= self.min_timestep < self.max_timestep <= 1000:
            raise ValueError(f"timesteps must satisfy 0 <= min_timestep < max_timestep <= 1000, got "
                             f"{self.min_timestep} and {self.max_timestep}")
        if not 0 <= self.prior_ratio <= 1:
            raise ValueError(f"prior_ratio must be in [0, 1], got {self.prior_ratio}")
        if self.mixed_precision not in ("no", "bf16", "fp16"):
            raise ValueError(f"mixed_precision must be no, bf16 or fp16, got {self.mixed_precision}")


@dataclass
class TrainResult:
    adapter: LowRankAdapter
    path: Path
    step: int
    losses: list = field(default_factory=list)   # (step, loss, source)
    cancelled: bool = False
    seconds: float = 0.0


class NonFiniteLoss(RuntimeError):
    pass


def _step_generator(seed, step):
    return torch.Generator().manual_seed((int(seed) * 1_000_003 + int(step)) % (2 ** 63))


def noise_schedule(dtype=torch.float32):
    """Cumulative alphas of AnimateDiff's training: linear betas 0.00085 -> 0.012 over 1000 steps."""
    betas = torch.linspace(0.00085, 0.012, 1000, dtype=torch.float64)
    return torch.cumprod(1 - betas, 0).to(dtype)


def train_on_clips(model, adapter_cls, settings, path, custom, prior=(), *, width, height, **train_kw):
    """Encode pixel clips (``data.Clip``) with the model's VAE at ``width`` x ``height``, then
    ``train`` on them: the one path from clips to an adapter for the nodes, the CLI and the demo."""
    from .data import encode_clips
    with torch.no_grad():
        custom_l = encode_clips(model.vae, custom, width, height)
        prior_l = encode_clips(model.vae, prior, width, height) if prior else []
    return train(model, adapter_cls, settings, path, custom_clips=custom_l, prior_clips=prior_l, **train_kw)


def _clip_latents(clip, frames, frozen, g):
    """(C, F, h, w) for one training example: a frozen clip (one random frame repeated) or a
    window of ``frames`` consecutive frames of a natural clip. ``frozen="unordered"``: ``frames``
    frames in random order (Customize-A-Video's absorber sees a video as a bag of images)."""
    lat = clip.latents
    n = lat.shape[1]
    if frozen == "unordered" and n > 1:
        order = torch.randperm(n, generator=g).repeat(math.ceil(frames / n))[:frames]
        return lat[:, order]
    if frozen or n == 1:
        i = int(torch.randint(n, (1,), generator=g))
        return lat[:, i:i + 1].expand(-1, frames, -1, -1)
    if n >= frames:
        start = int(torch.randint(n - frames + 1, (1,), generator=g))
        return lat[:, start:start + frames]
    reps = math.ceil(frames / n)
    return lat.repeat(1, reps, 1, 1)[:, :frames]


@contextlib.contextmanager
def temporal_layers_off(unet):
    """Bypass every motion module (each returns its input): the video UNet acts as the T2I model."""
    handles = [m.register_forward_hook(lambda mod, args, out: args[0])
               for n, m in unet.named_modules() if re.fullmatch(r".*\.motion_modules\.\d+", n)]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def _optimizer_state(opt, params):
    out = {}
    for i, p in enumerate(params):
        st = opt.state.get(p)
        if st:
            for k, v in st.items():
                out[f"trainer.opt.{i}.{k}"] = v.detach().float().cpu() if torch.is_tensor(v) else torch.tensor(float(v))
    return out


def _load_optimizer_state(opt, params, tensors):
    for i, p in enumerate(params):
        keys = {k.rsplit(".", 1)[1]: v for k, v in tensors.items() if k.startswith(f"trainer.opt.{i}.")}
        if keys:
            opt.state[p] = {k: (v.to(p.device) if k != "step" else v.clone()) for k, v in keys.items()}


def _embed_all(model, clips, device):
    from .sampling import encode_text
    captions = sorted({c.caption for c in clips} | {""})
    return {c: encode_text(model, [c], device) for c in captions}


def _average_gradients(accelerator, params):
    """Data parallelism by hand: the adapter lives in hooks outside the UNet, so there is no module
    for DDP to wrap. One all-reduce of all adapter gradients keeps every process's copy equal."""
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = accelerator.reduce(torch.cat([g.flatten() for g in grads]), reduction="mean")
    for p, g in zip(params, flat.split([p.numel() for p in params])):
        p.grad = g.view_as(p)


def train(model, kind, settings, out_path, *, custom_clips=(), prior_clips=(), motion_adapter=None,
          resume=None, device="cpu", callback=None, should_stop=None, metadata=None, accelerator=None):
    """Train an adapter of ``kind``: its class (``MotionAdapter``, ``SpatialAdapters``, ...) or
    the kind string stored in its files (``"motion"``, ``"spatial"``, ...).

    The class's ``recipe`` says what the clips are for:
    motion:  ``custom_clips`` are natural videos; each example is one random frame frozen, α = 1.
    spatial: ``custom_clips`` are stills of the customized model (frozen, Motion Adapter at α = 1),
             ``prior_clips`` natural videos (Motion Adapter at α = 0), mixed by ``prior_ratio``.
    subject (CustomCrafter): ``custom_clips`` are the subject's reference images (frozen),
             ``prior_clips`` class images for prior preservation, mixed by ``prior_ratio``.
    absorber (Customize-A-Video): ``custom_clips`` is the reference video, seen as unordered
             frames with the temporal layers bypassed.
    temporal (Customize-A-Video): ``custom_clips`` is the reference video, real frames in order;
             give ``model`` with the trained absorber attached (a patch: loaded, frozen).
    ``callback(step, total, loss, source)`` reports progress; ``should_stop()`` ends the run at
    the next step with what was trained saved. Returns a ``TrainResult``.

    ``accelerator`` (an ``accelerate.Accelerator``, e.g. under ``accelerate launch``): data-parallel
    training on ``accelerator.device``. Each process draws its own batches, the loss and the adapter
    gradients are averaged over the processes every step, and only the main process reports and
    writes files; ``should_stop`` must then answer alike on every process. With one process the run
    is the same as without an accelerator.
    """
    settings.validate()
    cls = lowrank.adapter_class(kind)
    recipe = cls.recipe
    if not custom_clips:
        raise ValueError("no training clips given")
    if prior_clips and not recipe.prior:
        raise ValueError(f"a {cls.kind} adapter trains on custom_clips alone; prior_clips would be ignored: "
                         "leave them out.")
    if recipe.motion_adapter and motion_adapter is None and not settings.interleaved:
        raise ValueError("Spatial Adapters train with the Motion Adapter at α = 1 on the frozen stills "
                         "(without it the model learns static videos); give one, or use interleaved=True.")
    procs, rank = (accelerator.num_processes, accelerator.process_index) if accelerator is not None else (1, 0)
    main = accelerator is None or accelerator.is_main_process
    device = torch.device(accelerator.device if accelerator is not None else device)
    cuda = device.type == "cuda"
    amp = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(settings.mixed_precision) if cuda else None
    info = dict(metadata or {})
    info.update({"settings": asdict(settings), "motion_version": model.info.get("motion_version"),
                 "motion_module": Path(model.info.get("motion_module", "?")).name,
                 "checkpoint": Path(model.info.get("checkpoint", "?")).name})
    info.update(lowrank.model_fingerprints(cls, model))
    if "base_fingerprint" in info:
        info["customized"] = ", ".join(sorted({Path(p.source).name for p in model.injections() if p.source})) or "?"
    start = 0
    if resume is not None:
        adapter = cls.load(resume)
        if isinstance(adapter, LowRankAdapter) and adapter.rank != settings.rank:
            raise ValueError(f"{resume}: the adapter has rank {adapter.rank} but the settings ask for rank "
                             f"{settings.rank}; resume with rank {adapter.rank} or start a new run.")
        adapter.check(model, resume)
        start = int(adapter.metadata.get("step", 0))
        path = Path(resume)
    else:
        adapter = cls.for_training(model, settings)
        path = unique_path(out_path)
    adapter.metadata.update(info)
    adapter.to(device)
    params = list(adapter.parameters())
    opt = torch.optim.AdamW(params, lr=settings.learning_rate, weight_decay=settings.weight_decay)
    if resume is not None:
        _load_optimizer_state(opt, params, adapter.extra_tensors)
    losses = []
    if resume is not None and "trainer.losses" in adapter.extra_tensors:
        losses = [tuple(r) for r in adapter.extra_tensors["trainer.losses"].tolist()]
        losses = [(int(s), l, "prior" if src else "custom") for s, l, src in losses]
    alphas = noise_schedule().to(device)
    scaler = torch.amp.GradScaler("cuda") if amp == torch.float16 else None
    unet = model.unet
    t0 = time.time()

    def save(step):
        if not main:
            return
        adapter.metadata["step"] = step
        extra = _optimizer_state(opt, params)
        if losses:
            extra["trainer.losses"] = torch.tensor([[s, l, 1.0 if src == "prior" else 0.0] for s, l, src in losses])
        adapter.save(path, overwrite=path.exists(), extra_tensors=extra)

    alpha_now = {"value": 1.0}
    with model.patched(), contextlib.ExitStack() as stack:
        embeds = _embed_all(model, list(custom_clips) + list(prior_clips), device)
        handles = adapter.attach(unet, 1.0)
        if motion_adapter is not None and recipe.motion_adapter:
            motion_adapter.to(device).requires_grad_(False)
            handles += motion_adapter.attach(unet, lambda: alpha_now["value"])
        stack.callback(lambda: [h.remove() for h in handles])
        if settings.gradient_checkpointing:
            # every block, motion modules and adapter hooks included (diffusers' own switch
            # leaves the down/up motion modules' activations saved)
            stack.enter_context(memory.checkpointed(unet, "layer"))
        unet.train()
        stack.callback(unet.eval)
        step = start
        cancelled = False
        try:
            while step < settings.steps:
                if should_stop is not None and should_stop():
                    cancelled = True
                    break
                g = _step_generator(settings.seed, step * procs + rank)  # one process: step
                use_prior = bool(recipe.prior and prior_clips
                                 and float(torch.rand(1, generator=g)) < settings.prior_ratio)
                pool = prior_clips if use_prior else custom_clips
                idx = torch.randint(len(pool), (settings.batch,), generator=g).tolist()
                frozen = recipe.clip_frames(use_prior)
                lat = torch.stack([_clip_latents(pool[i], settings.frames, frozen, g) for i in idx]).to(device)
                captions = [pool[i].caption for i in idx]
                noise = torch.randn(lat.shape, generator=g).to(device)
                t = torch.randint(settings.min_timestep, settings.max_timestep, (settings.batch,),
                                  generator=g).to(device)
                if settings.caption_dropout > 0:
                    drop = (torch.rand(settings.batch, generator=g) < settings.caption_dropout).tolist()
                    captions = ["" if d else c for c, d in zip(captions, drop)]
                emb = torch.cat([embeds[c] for c in captions])
                a = alphas[t].view(-1, 1, 1, 1, 1)
                noisy = a.sqrt() * lat + (1 - a).sqrt() * noise
                alpha_now["value"] = 0.0 if use_prior else 1.0
                # held through backward(): checkpointed blocks recompute their forward there
                bypass = (settings.interleaved and not use_prior) or recipe.bypass_temporal
                off = temporal_layers_off(unet) if bypass else contextlib.nullcontext()
                with off:
                    with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
                        pred = unet(noisy.to(model.dtype), t, encoder_hidden_states=emb.to(model.dtype)
                                    .repeat_interleave(settings.frames, 0)).sample
                        loss = F.mse_loss(pred.float(), noise.float())
                    # averaged so every process logs the same value and a NaN anywhere stops them all
                    shown = accelerator.reduce(loss.detach(), reduction="mean") if procs > 1 else loss.detach()
                    if not torch.isfinite(shown):
                        save(step)
                        raise NonFiniteLoss(f"the loss became {shown.item()} at step {step}: lower the learning rate "
                                            f"({settings.learning_rate}) or use bf16/fp32 instead of fp16. What was trained "
                                            f"before this step is saved in {path}.")
                    opt.zero_grad(set_to_none=True)
                    (scaler.scale(loss) if scaler is not None else loss).backward()
                    if procs > 1:
                        _average_gradients(accelerator, params)
                    if scaler is not None:
                        scaler.step(opt)
                        scaler.update()
                    else:
                        opt.step()
                step += 1
                losses.append((step, float(shown), "prior" if use_prior else "custom"))
                if callback is not None and main:
                    callback(step, settings.steps, float(shown), "prior" if use_prior else "custom")
                if settings.save_every and step % settings.save_every == 0 and step < settings.steps:
                    save(step)
        except NonFiniteLoss:
            raise
        except BaseException:
            save(step)  # Cancel raised by a progress hook, Ctrl-C on the CLI: keep what was trained
            raise
        if accelerator is not None:
            accelerator.wait_for_everyone()
        save(step)
    adapter.to("cpu")
    return TrainResult(adapter, path, step, losses, cancelled, time.time() - t0)


def loss_curve_image(losses, width=512, height=256):
    """A small loss plot (PIL image): raw losses faint, a running mean bold; prior steps orange."""
    from PIL import Image, ImageDraw
    img = Image.new("RGB", (width, height), (24, 26, 30))
    d = ImageDraw.Draw(img)
    if not losses:
        return img
    steps = [s for s, _, _ in losses]
    vals = [max(v, 1e-8) for _, v, _ in losses]
    lo, hi = math.log10(min(vals)), math.log10(max(vals))
    hi = hi if hi > lo else lo + 1
    x = lambda s: 30 + (width - 40) * (s - steps[0]) / max(1, steps[-1] - steps[0])  # noqa: E731
    y = lambda v: 10 + (height - 30) * (hi - math.log10(max(v, 1e-8))) / (hi - lo)  # noqa: E731
    for s, v, src in losses:
        d.point((x(s), y(v)), fill=(200, 130, 60) if src == "prior" else (90, 110, 140))
    k = max(1, len(vals) // 20)
    mean = [sum(vals[max(0, i - k):i + 1]) / len(vals[max(0, i - k):i + 1]) for i in range(len(vals))]
    d.line([(x(s), y(m)) for s, m in zip(steps, mean)], fill=(120, 200, 255), width=2)
    d.text((32, height - 16), f"steps {steps[0]}-{steps[-1]}  loss {mean[-1]:.4f}", fill=(220, 220, 220))
    return img


def mean_loss(model, clips, frames, frozen, seed=0, samples=8, device="cpu"):
    """Diffusion loss of ``model`` (with its patches: injection, adapters at their scales) on
    ``clips``, over a fixed set of noises and timesteps: a yardstick comparable across runs."""
    from .sampling import encode_text
    device = torch.device(device)
    alphas = noise_schedule().to(device)
    total = 0.0
    with model.patched(), torch.no_grad():
        embeds = {c.caption: encode_text(model, [c.caption], device) for c in clips}
        for i in range(samples):
            g = _step_generator(seed + 7919, i)
            clip = clips[int(torch.randint(len(clips), (1,), generator=g))]
            lat = _clip_latents(clip, frames, frozen, g)[None].to(device)
            noise = torch.randn(lat.shape, generator=g).to(device)
            t = torch.randint(0, 1000, (1,), generator=g).to(device)
            a = alphas[t].view(-1, 1, 1, 1, 1)
            noisy = a.sqrt() * lat + (1 - a).sqrt() * noise
            pred = model.unet(noisy.to(model.dtype), t, encoder_hidden_states=embeds[clip.caption].to(model.dtype)
                              .repeat_interleave(frames, 0)).sample
            total += F.mse_loss(pred.float(), noise.float()).item()
    return total / samples
