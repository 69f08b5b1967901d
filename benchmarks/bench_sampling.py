"""Our sampling loop (``adapters.sampling.sample``) vs diffusers' ``AnimateDiffPipeline``.

Both run on the SAME modules (the ``VideoModel`` loaded by ``adapters.loading.load_video_model``
from LDM/original-layout files), the same text embeddings, the same initial latents
(``adapters.sampling.initial_noise``), scheduler (Euler, linear betas), steps and CFG. The final
latents must agree (max |diff| <= 1e-4, else exit 1); the time per denoising step of each and
the ratio ours / diffusers are printed.

    python benchmarks/bench_sampling.py                       # tiny, < 1 min
    python benchmarks/bench_sampling.py --size real --steps 1 # SD1.5 + AnimateDiff v2 sizes, minutes

Timing: a warm-up call of each at 2 frames first (first-touch of the weights, kernel set-up),
then ``--repeats`` timed calls of each, alternating which goes first (ABBA). Time per step is
the wall time of the whole call divided by the steps (with output_type="latent" neither
decodes); the RATIO uses the fastest call of each (the least disturbed by other work on a
shared machine), the medians are printed too, and the median interval between step callbacks
when there are >= 2 steps.
"""
import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks import _common  # noqa: E402

TOLERANCE = 1e-4
DEFAULTS = {"tiny": dict(steps=3, frames=8, width=64, repeats=5),
            "real": dict(steps=1, frames=16, width=256, repeats=1)}


def parse():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", choices=_common.SIZES, default="tiny")
    ap.add_argument("--steps", type=int, help="denoising steps (tiny 3, real 1)")
    ap.add_argument("--frames", type=int, help="frames (tiny 8, real 16)")
    ap.add_argument("--width", type=int, help="width = height in pixels (tiny 64, real 256)")
    ap.add_argument("--cfg", type=float, default=7.5)
    ap.add_argument("--repeats", type=int, help="timed calls of each (tiny 5, real 1)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-warmup", action="store_true")
    args = ap.parse_args()
    for k, v in DEFAULTS[args.size].items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    return args


class StepClock:
    def __init__(self):
        self.start = time.perf_counter()
        self.marks = []

    def mark(self):
        self.marks.append(time.perf_counter())

    def intervals(self):
        return [b - a for a, b in zip(self.marks, self.marks[1:])]


def make_pipeline(vm):
    """The pipeline registers the very same module objects: no copy, no from_unet2d."""
    from diffusers import AnimateDiffPipeline

    from adapters.sampling import make_scheduler
    pipe = AnimateDiffPipeline(vae=vm.vae, text_encoder=vm.text_encoder, tokenizer=vm.tokenizer, unet=vm.unet,
                               motion_adapter=None, scheduler=make_scheduler("euler", "linear"))
    pipe.set_progress_bar_config(disable=True)
    assert pipe.unet is vm.unet
    return pipe


def run_ours(vm, cond, uncond, noise, a, frames, width, device="cpu"):
    from adapters.sampling import sample
    clock = StepClock()
    out = sample(vm, cond, uncond, seed=a.seed, steps=a.steps, cfg=a.cfg, scheduler="euler",
                 beta_schedule="linear", width=width, height=width, frames=frames, device=device,
                 callback=lambda i, n, x, x0: clock.mark())  # its noise: the seed's, as ``noise``
    return out, time.perf_counter() - clock.start, clock.intervals()


def run_diffusers(pipe, cond, uncond, noise, a, frames, width, device="cpu"):
    import torch

    from adapters.sampling import make_scheduler, noise_scale
    def on_step(p, i, t, kw):
        clock.mark()
        return {}

    clock = StepClock()
    pipe.scheduler = make_scheduler("euler", "linear")  # fresh state; ours makes one per call too
    # the pipeline scales the latents by init_noise_sigma (sigma_max), ours as ComfyUI does
    pipe.scheduler.set_timesteps(a.steps)
    start = noise * (noise_scale(pipe.scheduler) / float(pipe.scheduler.init_noise_sigma))
    out = pipe(prompt_embeds=cond, negative_prompt_embeds=uncond, num_frames=frames, height=width, width=width,
               num_inference_steps=a.steps, guidance_scale=a.cfg,
               latents=start.to(device, pipe.unet.dtype),  # the pipeline keeps latents in the dtype given
               generator=torch.Generator("cpu").manual_seed(a.seed), output_type="latent",
               callback_on_step_end=on_step).frames
    return out, time.perf_counter() - clock.start, clock.intervals()


def main():
    a = parse()
    import torch

    from adapters.loading import load_video_model
    from adapters.sampling import encode_text, initial_noise

    ckpt, mm = _common.ensure_model_files(a.size)
    tok_dirs = [_common.sd1_tokenizer_dir()] if a.size == "real" else []
    print(f"size={a.size} steps={a.steps} frames={a.frames} {a.width}x{a.width}px cfg={a.cfg} fp32 "
          f"threads={torch.get_num_threads()} repeats={a.repeats}", flush=True)
    t = time.perf_counter()
    vm = load_video_model(ckpt, mm, torch.float32, tokenizer_dirs=tok_dirs)
    rss = _common.gib(_common.proc_status("VmRSS"))
    print(f"loaded the video model in {time.perf_counter() - t:.1f} s (RSS {rss}; weights not yet paged in)",
          flush=True)

    cond = encode_text(vm, ["a red fox running through snow, cinematic"], "cpu")
    uncond = encode_text(vm, [""], "cpu")
    pipe = make_pipeline(vm)

    def noise_for(frames, width):
        shape = (1, vm.unet.config.in_channels, frames, width // 8, width // 8)
        return initial_noise(shape, a.seed)[0]

    if not a.no_warmup:
        t = time.perf_counter()
        n2 = noise_for(2, a.width)
        run_ours(vm, cond, uncond, n2, a, 2, a.width)
        run_diffusers(pipe, cond, uncond, n2, a, 2, a.width)
        print(f"warm-up (2 frames, both) {time.perf_counter() - t:.1f} s", flush=True)

    noise = noise_for(a.frames, a.width)
    runs = {"ours": [], "diffusers": []}
    outs = {}
    for r in range(a.repeats):
        order = ("ours", "diffusers") if r % 2 == 0 else ("diffusers", "ours")
        for name in order:
            fn = run_ours if name == "ours" else run_diffusers
            out, total, steps = fn(vm if name == "ours" else pipe, cond, uncond, noise, a, a.frames, a.width)
            runs[name].append((total, steps))
            outs.setdefault(name, out)
            print(f"  run {r + 1} {name:9s} {total:8.3f} s  ({total / a.steps:.3f} s/step)", flush=True)

    diff = (outs["ours"].float() - outs["diffusers"].float()).abs().max().item()
    scale = outs["diffusers"].float().abs().max().item()
    print(f"\noutputs: max |ours - diffusers| = {diff:.3e} (max |latent| {scale:.3f}); "
          f"bit-identical: {torch.equal(outs['ours'], outs['diffusers'])}")

    per_step = {k: _common.median([tot / a.steps for tot, _ in v]) for k, v in runs.items()}
    print(f"time per step (whole call / steps, median of {a.repeats}): ours {per_step['ours']:.3f} s, "
          f"diffusers {per_step['diffusers']:.3f} s")
    best = {k: min(tot / a.steps for tot, _ in v) for k, v in runs.items()}
    if a.repeats >= 3:
        print(f"fastest call per step: ours {best['ours']:.3f} s, diffusers {best['diffusers']:.3f} s")
    if a.steps >= 2:
        inner = {k: _common.median([s for _, st in v for s in st]) for k, v in runs.items()}
        print(f"median step-to-step interval: ours {inner['ours']:.3f} s, diffusers {inner['diffusers']:.3f} s")
    print(f"peak RSS of this process: {_common.gib(_common.peak_rss())}")
    # the fastest of several calls is the estimate least disturbed by other work on a shared machine
    print(f"RATIO ours/diffusers time per step: {best['ours'] / best['diffusers']:.3f} "
          f"({'fastest' if a.repeats > 1 else 'single'} call of each; medians give "
          f"{per_step['ours'] / per_step['diffusers']:.3f})")
    if not diff <= TOLERANCE:
        print(f"FAIL: outputs differ by {diff:.3e} > {TOLERANCE:g}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
