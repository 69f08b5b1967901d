"""Sampling with Spatial Adapters merged, unmerged, and without adapters.

The video model is the benchmark files (``adapters.loading.load_video_model``) with a customized
checkpoint injected: ``adapters.inject.inject_weights(base, custom["unet"], custom["clip"])`` with
the random "custom" parts ``scripts/random_models.py``: ``sd15_parts(size, seed=1)``. Spatial Adapters
(rank 8, every injected layer: target_mode "all", the training default) with random non-zero
factors are added as an ``AdapterPatch``:

* none:     the injected model alone (the reference);
* merged:   ``AdapterPatch(adapter, 1.0, merged=True)``: folded into the weights when
            ``model.patched()`` is entered (goal: per step <= 1.00x none);
* unmerged: ``AdapterPatch(adapter, 1.0, merged=False)``: ``adapter.attach`` (weights untouched; each
            layer call folds the adapter into a temporary weight or projects the output,
            whichever moves less data) (goal <= 1.05x none).

All three run ``adapters.sampling.sample`` with the same embeddings, noise, Euler sampler, steps
and CFG. Time per step = the median interval between step callbacks (from the 2nd step on: the
first interval also holds ``patched()`` entry, i.e. the merge), as wall time and as this process's
CPU time (``time.process_time``, steadier on a shared machine, best with ``--threads 1``), so
the merge is NOT in the per-step figures; it is timed on its own (entering and leaving ``model.patched((T2I,))``, repeated) and
shown with the whole-call times, which do include it. Variants rotate order every repeat. The
merged and unmerged outputs must agree (max |diff| <= 1e-4 of the largest |latent|: float32
order of operations, amplified by CFG), else exit 1.

    python benchmarks/bench_adapter_sampling.py                  # tiny, ~1 min
    python benchmarks/bench_adapter_sampling.py --size real      # 2 steps, 16 frames, 256 px: ~20+ min, ~14 GiB
"""
import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks import _common  # noqa: E402

VARIANTS = ("none", "merged", "unmerged")
DEFAULTS = {"tiny": dict(steps=4, frames=8, width=64, repeats=5, merge_repeats=5),
            "real": dict(steps=2, frames=16, width=256, repeats=1, merge_repeats=2)}


def parse():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", choices=_common.SIZES, default="tiny")
    ap.add_argument("--steps", type=int, help="denoising steps per call, >= 2 (tiny 4, real 2)")
    ap.add_argument("--frames", type=int, help="frames (tiny 8, real 16)")
    ap.add_argument("--width", type=int, help="width = height in pixels (tiny 64, real 256)")
    ap.add_argument("--cfg", type=float, default=7.5)
    ap.add_argument("--repeats", type=int, help="timed calls of each variant (tiny 5, real 1)")
    ap.add_argument("--merge-repeats", type=int, help="timed patched() entries per variant (tiny 5, real 2)")
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--target-mode", default="all")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default; 1 is steadier on a "
                    "busy machine, where 2 spinning OpenMP threads stall each other)")
    ap.add_argument("--limit-gib", type=float, default=21.0)
    a = ap.parse_args()
    for k, v in DEFAULTS[a.size].items():
        if getattr(a, k) is None:
            setattr(a, k, v)
    if a.steps < 2:
        ap.error("--steps must be at least 2 (the per-step time starts at the second step)")
    return a


def main():
    a = parse()
    import torch

    from adapters import inject
    import random_models
    from adapters.loading import load_video_model
    from adapters.spatial_adapters import SpatialAdapters
    from adapters.sampling import encode_text, sample
    from adapters.video_model import T2I, AdapterPatch

    if a.threads:
        torch.set_num_threads(a.threads)
    ckpt, mm = _common.ensure_model_files(a.size)
    tok_dirs = [_common.sd1_tokenizer_dir()] if a.size == "real" else []
    print(f"size={a.size} steps={a.steps} frames={a.frames} {a.width}x{a.width}px cfg={a.cfg} fp32 "
          f"threads={torch.get_num_threads()} repeats={a.repeats} load avg {_common.load_average():.1f}", flush=True)
    dog = _common.RssWatchdog(int(a.limit_gib * _common.GIB), result={"bench": "adapter_sampling"}).__enter__()
    base = load_video_model(ckpt, mm, torch.float32, tokenizer_dirs=tok_dirs)
    parts = random_models.sd15_parts(a.size, seed=1)
    t = time.perf_counter()
    custom = inject.inject_weights(base, parts["unet"], parts["clip"], source="custom_random")
    del parts
    print(f"injected the custom checkpoint in {time.perf_counter() - t:.1f} s: "
          f"{len(custom.injected_layers())} layers", flush=True)
    adapter = SpatialAdapters.for_model(custom, a.rank, lowrank_targets(custom, a.target_mode), seed=0)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in adapter.up.values():
            p.copy_(torch.randn(p.shape, generator=g) * 0.02)
    print(f"Spatial Adapters: {len(adapter.targets)} layers, {sum(p.numel() for p in adapter.parameters()) / 1e6:.2f} M "
          f"params (rank {a.rank}, {a.target_mode})", flush=True)
    models = {"none": custom,
              "merged": custom.with_patch(AdapterPatch(adapter, 1.0, merged=True, source="bench")),
              "unmerged": custom.with_patch(AdapterPatch(adapter, 1.0, merged=False, source="bench"))}
    cond = encode_text(custom, ["a photo of sks dog running on a beach"], "cpu")
    uncond = encode_text(custom, [""], "cpu")

    def call(name, frames=a.frames, width=a.width):
        marks = []
        t0 = time.perf_counter()
        out = sample(models[name], cond, uncond, seed=0, steps=a.steps, cfg=a.cfg, scheduler="euler", width=width,
                     height=width, frames=frames,  # every variant starts from seed 0's noise
                     callback=lambda i, n, x, x0: marks.append((time.perf_counter(), time.process_time())))
        total = time.perf_counter() - t0
        return (out, total, [y[0] - x[0] for x, y in zip(marks, marks[1:])],
                [y[1] - x[1] for x, y in zip(marks, marks[1:])])

    # warm-up at 2 frames: first touch of every weight, the merged tensors' first allocation
    t = time.perf_counter()
    for name in VARIANTS:
        call(name, 2)
    print(f"warm-up (2 frames, each variant) {time.perf_counter() - t:.1f} s", flush=True)

    merge = {name: [] for name in VARIANTS}
    for r in range(a.merge_repeats):
        for name in VARIANTS:
            t0 = time.perf_counter()
            with models[name].patched((T2I,)):
                t1 = time.perf_counter()
            merge[name].append((t1 - t0, time.perf_counter() - t1))
    for name in VARIANTS:
        enter = _common.median([x for x, _ in merge[name]])
        leave = _common.median([y for _, y in merge[name]])
        print(f"patched() entry {name:8s} {enter:.3f} s, exit {leave:.3f} s (median of {a.merge_repeats})", flush=True)

    runs = {name: [] for name in VARIANTS}
    outs = {}
    for r in range(a.repeats):
        order = VARIANTS[r % 3:] + VARIANTS[:r % 3]
        for name in order:
            out, total, intervals, cpu = call(name)
            runs[name].append((total, intervals, cpu))
            outs.setdefault(name, out)
            print(f"  run {r + 1} {name:8s} whole call {total:8.3f} s; per step (2nd on) "
                  f"{_common.median(intervals):.3f} s wall, {_common.median(cpu):.3f} s CPU", flush=True)
    dog.__exit__()

    diff_mu = (outs["merged"] - outs["unmerged"]).abs().max().item()
    diff_none = (outs["merged"] - outs["none"]).abs().max().item()
    scale = outs["none"].abs().max().item()
    print(f"\noutputs: max |merged - unmerged| = {diff_mu:.3e}; max |merged - none| = {diff_none:.3e} "
          f"(the adapters change the video); max |latent| {scale:.3f}")
    step = {n: _common.median([s for _, iv, _ in v for s in iv]) for n, v in runs.items()}
    cpu = {n: _common.median([s for _, _, c in v for s in c]) for n, v in runs.items()}
    call_t = {n: _common.median([tot for tot, _, _ in v]) for n, v in runs.items()}
    enter = {n: _common.median([x for x, _ in merge[n]]) for n in VARIANTS}
    for n in VARIANTS:
        print(f"{n:8s} per step {step[n]:.3f} s wall, {cpu[n]:.3f} s CPU | whole call {call_t[n]:.3f} s ({call_t[n] / a.steps:.3f} s/step, "
              f"patched() entry included: {enter[n]:.3f} s)")
    print(f"merging at patched() entry costs {enter['merged'] - enter['none']:.3f} s more than the injection alone "
          f"(= {(enter['merged'] - enter['none']) / step['none']:.2f} steps without adapters)")
    print(f"peak RSS of this process: {_common.gib(_common.peak_rss())}")
    print(f"RATIO merged/none time per step: {step['merged'] / step['none']:.3f} wall, "
          f"{cpu['merged'] / cpu['none']:.3f} CPU (goal <= 1.00; whole calls, merge included: "
          f"{call_t['merged'] / call_t['none']:.3f})")
    print(f"RATIO unmerged/none time per step: {step['unmerged'] / step['none']:.3f} wall, "
          f"{cpu['unmerged'] / cpu['none']:.3f} CPU (goal <= 1.05; whole calls: "
          f"{call_t['unmerged'] / call_t['none']:.3f}); unmerged/merged {step['unmerged'] / step['merged']:.3f} wall, "
          f"{cpu['unmerged'] / cpu['merged']:.3f} CPU")
    if not diff_mu <= 1e-4 * scale:
        print(f"FAIL: merged and unmerged outputs differ by {diff_mu:.3e} > 1e-4 x {scale:.3f}", file=sys.stderr)
        return 1
    return 0


def lowrank_targets(model, mode):
    from adapters.lowrank import spatial_targets
    return spatial_targets(model, mode)


if __name__ == "__main__":
    sys.exit(main())
