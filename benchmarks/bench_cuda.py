"""Real-size speed and GPU memory on CUDA: our sampling loop vs diffusers' AnimateDiffPipeline, and
our training loop vs a minimal diffusers + peft loop, on the same modules in one process.

The CPU benchmarks (bench_sampling.py, bench_training.py) measure wall time and RSS; this one
measures what a user with a GPU sees: seconds per denoising step and per training step (CUDA
events around the work, after a warm-up) and the peak of ``torch.cuda.max_memory_allocated``
over the call, total and above the weights already resident.

    python benchmarks/bench_cuda.py                      # SD1.5 + v2 sizes, 512 px, 16 frames, fp16
    python benchmarks/bench_cuda.py --parts sampling --steps 25 --width 512

Parts (``--parts``, comma list):
* ``sampling``: Euler, linear betas, CFG batched, ``--steps``; ours vs the pipeline built on the
  very same modules (``motion_adapter=None``, ``unet=vm.unet``), same embeddings and initial
  latents; their outputs must agree (relative L2 < 1e-2 in half precision) or the run fails.
* ``decode``: the 16 frames through the VAE, ours (``sampling.decode``, 8 at a time) vs the
  pipeline's ``decode_latents`` (16 at a time).
* ``training``: a rank-8 Motion Adapter, batch 1, autocast ``--amp``; ours
  (``training.train``) vs peft LoRA on the same temporal q/k/v in the textbook loop. Then ours
  alone with gradient checkpointing, and Spatial Adapters (rank 8 on every injected layer)
  trained with a Motion Adapter attached, as the Train Spatial Adapters node does. Also a few
  steps with fp16 autocast (GradScaler) to check the losses stay finite.

Weights: the random real-layout files of ``_common.ensure_model_files("real")``, loaded by
``adapters.loading.load_video_model`` in ``--dtype`` and moved to the GPU.
"""
import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks import _common  # noqa: E402
from benchmarks.bench_sampling import make_pipeline, run_diffusers, run_ours  # noqa: E402
from benchmarks._common import PeftLoRA, textbook_steps  # noqa: E402

PARTS = ("sampling", "decode", "training")
MIB = 1024 ** 2


def parse(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--parts", default=",".join(PARTS))
    ap.add_argument("--steps", type=int, default=20, help="denoising steps")
    ap.add_argument("--frames", type=int, default=16)
    ap.add_argument("--width", type=int, default=512, help="sampling width = height")
    ap.add_argument("--cfg", type=float, default=7.5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeats", type=int, default=3, help="timed sampling calls of each (ABBA order)")
    ap.add_argument("--dtype", choices=("fp16", "bf16", "fp32"), default="fp16", help="weights on the GPU")
    ap.add_argument("--train-width", dest="train_width", type=int, default=256,
                    help="training resolution (AnimateDiff trained at 256 px)")
    ap.add_argument("--train-steps", dest="train_steps", type=int, default=8, help="per training run, warm-up included")
    ap.add_argument("--train-warmup", dest="train_warmup", type=int, default=3)
    ap.add_argument("--amp", choices=("bf16", "fp16", "no"), default="bf16", help="training autocast")
    ap.add_argument("--tokenizer", help="SD1.5 tokenizer folder (default: ComfyUI's comfy/sd1_tokenizer)")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--size", choices=_common.SIZES, default="real", help="tiny: a quick check on any device")
    return ap.parse_args(argv)


class Gpu:
    """Synchronized timing and peak-memory probes around a block. On the CPU (``--size tiny
    --device cpu``, a check that the script runs) the memory figures are 0."""

    def __init__(self, device):
        import torch
        self.torch, self.device = torch, torch.device(device)
        self.cuda = self.device.type == "cuda"

    def sync(self):
        if self.cuda:
            self.torch.cuda.synchronize(self.device)

    def allocated(self):
        return self.torch.cuda.memory_allocated(self.device) if self.cuda else 0

    def reset_peak(self):
        self.sync()
        if self.cuda:
            self.torch.cuda.empty_cache()
            self.torch.cuda.reset_peak_memory_stats(self.device)

    def peak(self):
        self.sync()
        if not self.cuda:
            return 0, 0
        return self.torch.cuda.max_memory_allocated(self.device), self.torch.cuda.max_memory_reserved(self.device)

    def timed(self, fn):
        """(result, seconds, peak allocated, peak reserved, resident before)."""
        self.reset_peak()
        base = self.allocated()
        t0 = time.perf_counter()
        out = fn()
        self.sync()
        dt = time.perf_counter() - t0
        peak, reserved = self.peak()
        return out, dt, peak, reserved, base


def gib(n):
    return f"{n / 1024 ** 3:.2f} GiB"


def ratio(x, y):
    return f"{x / y:.3f}" if y else "n/a"


# --- sampling --------------------------------------------------------------------------------------

def bench_sampling(vm, a, gpu, results):
    from adapters.sampling import encode_text, initial_noise
    dev = gpu.device
    cond = encode_text(vm, ["a red fox running through snow, cinematic"], dev)
    uncond = encode_text(vm, [""], dev)
    pipe = make_pipeline(vm)

    def ours(frames, noise, steps):
        return run_ours(vm, cond, uncond, noise, argparse.Namespace(**{**vars(a), "steps": steps}),
                        frames, a.width, dev)[0]

    def theirs(frames, noise, steps):
        return run_diffusers(pipe, cond, uncond, noise, argparse.Namespace(**{**vars(a), "steps": steps}),
                             frames, a.width, dev)[0]

    h = a.width // vm.vae_scale
    noise = initial_noise((1, vm.unet.config.in_channels, a.frames, h, h), a.seed)[0]
    ours(a.frames, noise, 2)  # warm-up: kernels, cuDNN/cuBLAS handles, allocator
    theirs(a.frames, noise, 2)
    runs = {"ours": [], "diffusers": []}
    outs = {}
    for r in range(a.repeats):
        for name in (("ours", "diffusers") if r % 2 == 0 else ("diffusers", "ours")):
            fn = ours if name == "ours" else theirs
            out, dt, peak, reserved, base = gpu.timed(lambda: fn(a.frames, noise, a.steps))
            outs.setdefault(name, out.float().cpu())
            runs[name].append((dt / a.steps, peak, reserved, base))
            print(f"  sampling run {r + 1} {name:9s} {dt / a.steps * 1000:7.1f} ms/step  peak {gib(peak)} "
                  f"(reserved {gib(reserved)}; weights etc. resident before {gib(base)})", flush=True)
    ref = outs["diffusers"]
    rel = ((outs["ours"] - ref).norm() / ref.norm()).item()
    print(f"  outputs: relative L2 ours vs diffusers {rel:.2e}", flush=True)
    best = {k: min(v, key=lambda x: x[0]) for k, v in runs.items()}
    peak = {k: max(x[1] for x in v) for k, v in runs.items()}
    base = runs["ours"][0][3]
    results["sampling"] = dict(ours_s_per_step=best["ours"][0], diffusers_s_per_step=best["diffusers"][0],
                               ours_peak=peak["ours"], diffusers_peak=peak["diffusers"], resident=base, rel_l2=rel)
    print(f"RATIO sampling ours/diffusers time per step: {best['ours'][0] / best['diffusers'][0]:.3f} "
          f"({best['ours'][0] * 1000:.1f} vs {best['diffusers'][0] * 1000:.1f} ms, fastest of {a.repeats})")
    print(f"RATIO sampling ours/diffusers peak GPU memory: {ratio(peak['ours'], peak['diffusers'])} "
          f"({gib(peak['ours'])} vs {gib(peak['diffusers'])}; above the resident weights "
          f"{gib(peak['ours'] - base)} vs {gib(peak['diffusers'] - base)})", flush=True)
    if not rel < 1e-2:
        print(f"FAIL: our sampling and diffusers' differ (relative L2 {rel:.2e})", flush=True)
        results["failed"] = True
    return outs["ours"], pipe


def bench_decode(vm, pipe, latents, gpu, results):
    from adapters.sampling import decode
    decode(vm, latents[:, :, :2])
    pipe.decode_latents(latents[:, :, :2].to(gpu.device, vm.dtype), 16)  # scales by 1/scaling_factor itself
    _, t_ours, p_ours, _, base = gpu.timed(lambda: decode(vm, latents))
    _, t_ref, p_ref, _, _ = gpu.timed(lambda: pipe.decode_latents(latents.to(gpu.device, vm.dtype), 16))
    results["decode"] = dict(ours_s=t_ours, diffusers_s=t_ref, ours_peak=p_ours, diffusers_peak=p_ref)
    print(f"  decode {latents.shape[2]} frames: ours {t_ours:.2f} s peak {gib(p_ours)}, diffusers {t_ref:.2f} s "
          f"peak {gib(p_ref)} (resident before {gib(base)})")
    print(f"RATIO decode ours/diffusers time: {t_ours / t_ref:.3f}; peak GPU memory: {ratio(p_ours, p_ref)}", flush=True)


# --- training --------------------------------------------------------------------------------------

def peft_loop(vm, lat, emb, a, gpu, amp):
    """The textbook loop: peft LoRA on the temporal q/k/v, DDPMScheduler.add_noise, MSE, AdamW."""
    enc = emb.repeat_interleave(a.frames, 0).to(vm.dtype)
    marks = []

    def tick(_):
        gpu.sync()
        marks.append(time.perf_counter())
    with PeftLoRA(vm.unet, 8, "ref") as lora:
        for p in lora.params:   # trained in fp32, as our adapters are, whatever the weights' dtype
            p.data = p.data.float()
        gpu.sync()
        marks.append(time.perf_counter())
        textbook_steps(vm.unet, lora.params, [(lat, enc)] * a.train_steps, lr=1e-4, weight_decay=1e-2,
                       amp=amp if gpu.cuda else None, on_step=tick)
    times = [b - a_ for a_, b in zip(marks, marks[1:])]
    return times[a.train_warmup:]


def our_train(vm, kind, clips, a, gpu, out_dir, amp_name, checkpointing=False, motion_adapter=None, prior=()):
    from adapters.training import TrainSettings, train
    s = TrainSettings(steps=a.train_steps, learning_rate=1e-4, rank=8, batch=1, frames=a.frames, seed=0,
                      mixed_precision=amp_name, gradient_checkpointing=checkpointing, prior_ratio=0.5 if prior else 0)
    marks = []

    def tick(*_):
        gpu.sync()
        marks.append(time.perf_counter())
    first = []
    res = train(vm, kind, s, Path(out_dir) / f"{kind}.safetensors", custom_clips=clips, prior_clips=list(prior),
                motion_adapter=motion_adapter, device=gpu.device, callback=tick,
                should_stop=lambda: (not first and (gpu.sync() or first.append(time.perf_counter()))) and False)
    marks.insert(0, first[0])
    times = [b - x for x, b in zip(marks, marks[1:])][a.train_warmup:]
    return times, res


def bench_training(vm, a, gpu, results):
    import torch

    from adapters import inject
    import random_models
    from adapters.data import LatentClip
    from adapters.motion_adapter import MotionAdapter
    from adapters.sampling import encode_text
    amp = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(a.amp)
    h = a.train_width // vm.vae_scale
    g = torch.Generator().manual_seed(0)
    video = torch.randn(4, a.frames, h, h, generator=g)
    caption = "a red fox running through snow"
    clips = [LatentClip(video, caption, "bench")]
    stills = [LatentClip(torch.randn(4, 1, h, h, generator=g), "a sks fox", "bench")]
    emb = encode_text(vm, [caption], gpu.device)
    lat = video[:, 3:4].expand(-1, a.frames, -1, -1).unsqueeze(0).contiguous().to(gpu.device)
    out_dir = tempfile.mkdtemp()
    where = f"{a.frames} frames, {a.train_width} px, batch 1, rank 8, weights {a.dtype}, autocast {a.amp}"
    print(f"\ntraining ({where}); times are medians after {a.train_warmup} warm-up steps", flush=True)

    rows = []

    def run(label, fn):
        gpu.reset_peak()
        base = gpu.allocated()
        times = fn()
        peak, reserved = gpu.peak()
        med = _common.median(times)
        rows.append((label, med, peak, base))
        print(f"  {label:44s} {med * 1000:8.1f} ms/step  peak {gib(peak)} (reserved {gib(reserved)}, "
              f"resident before {gib(base)})", flush=True)
        return med, peak

    ref_t, ref_p = run("reference: peft LoRA, textbook loop", lambda: peft_loop(vm, lat, emb, a, gpu, amp))
    our_t, our_p = run("ours: Motion Adapter", lambda: our_train(vm, "motion", clips, a, gpu, out_dir, a.amp)[0])
    print(f"RATIO training ours/peft time per step: {our_t / ref_t:.3f}; peak GPU memory: {ratio(our_p, ref_p)}",
          flush=True)
    run("ours: Motion Adapter, gradient checkpointing",
        lambda: our_train(vm, "motion", clips, a, gpu, out_dir, a.amp, checkpointing=True)[0])
    ma = MotionAdapter.for_model(vm, 8, seed=1)
    # Spatial Adapters sit on the layers a customized checkpoint replaced: inject a random one
    custom = inject.inject_weights(vm, random_models.sd15_parts(a.size, seed=1)["unet"], source="custom_random")
    run("ours: Spatial Adapters + MA, checkpointing",
        lambda: our_train(custom, "spatial", stills, a, gpu, out_dir, a.amp, checkpointing=True, motion_adapter=ma,
                          prior=clips)[0])
    times, res = our_train(vm, "motion", clips, a, gpu, out_dir, "fp16", checkpointing=True)
    finite = all(torch.isfinite(torch.tensor(loss)) for _, loss, _ in res.losses)
    print(f"  fp16 autocast + GradScaler, {len(res.losses)} steps: losses "
          f"{', '.join(f'{loss:.4f}' for _, loss, _ in res.losses)}; all finite: {finite}", flush=True)
    results["training"] = dict(rows=[(label, t, p, b) for label, t, p, b in rows], fp16_finite=finite)
    if gpu.cuda and not finite:
        print("FAIL: fp16 training produced a non-finite loss", flush=True)
        results["failed"] = True


def main(argv=None):
    a = parse(argv)
    import torch

    from adapters.loading import load_video_model
    gpu = Gpu(a.device)
    if gpu.cuda and not torch.cuda.is_available():
        sys.exit("no CUDA GPU is visible to PyTorch (torch.cuda.is_available() is False); --device cpu --size tiny "
                 "checks that the script runs")
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[a.dtype]
    ckpt, mm = _common.ensure_model_files(a.size)
    tok = [a.tokenizer or str(_common.sd1_tokenizer_dir())] if a.size == "real" else []
    name = torch.cuda.get_device_name(gpu.device) if gpu.cuda else "CPU"
    print(f"{name}, torch {torch.__version__}, size {a.size}, "
          f"SDPA backends flash={torch.backends.cuda.flash_sdp_enabled()} "
          f"mem_efficient={torch.backends.cuda.mem_efficient_sdp_enabled()}; weights {a.dtype}", flush=True)
    t0 = time.perf_counter()
    vm = load_video_model(ckpt, mm, dtype, tokenizer_dirs=tok)
    for net in (vm.unet, vm.text_encoder, vm.vae):
        net.to(gpu.device)
    gpu.sync()
    print(f"loaded and moved to the GPU in {time.perf_counter() - t0:.1f} s; resident {gib(gpu.allocated())}",
          flush=True)
    parts = [p for p in a.parts.split(",") if p]
    bad = set(parts) - set(PARTS)
    if bad:
        sys.exit(f"unknown parts {sorted(bad)}; choose from {PARTS}")
    results = {}
    if "sampling" in parts or "decode" in parts:
        print(f"\nsampling: {a.frames} frames, {a.width}x{a.width} px, {a.steps} Euler steps, CFG {a.cfg}", flush=True)
        latents, pipe = bench_sampling(vm, a, gpu, results)
        if "decode" in parts:
            bench_decode(vm, pipe, latents, gpu, results)
        del pipe
    if "training" in parts:
        bench_training(vm, a, gpu, results)
    return 1 if results.get("failed") else 0


if __name__ == "__main__":
    sys.exit(main())
