"""Peak memory of ONE Spatial-Adapter training step, without and with activation checkpointing.

Each variant runs in a fresh child process (so its peak RSS is its own), one after the other:

    none       (a) no gradient checkpointing
    diffusers  (b) diffusers' ``unet.enable_gradient_checkpointing()`` (what plain diffusers + peft
                   loops use)
    block      (c) ``adapters.memory.checkpointed(unet)``: every down / mid / up block, motion
                   modules and adapter hooks included, recomputed in the backward pass
    layer      (c') ``checkpointed(unet, "layer")``: each resnet / transformer / motion module;
                   this is what ``TrainSettings(gradient_checkpointing=True)`` does, and the variant
                   runs it through that setting

On the CPU the allocator matters as much as checkpointing: glibc keeps freed activations as
fragmented heap. ``checkpointed`` therefore applies ``adapters.memory.release_freed_memory()``
(a fixed 64 KiB mmap threshold) on the CPU. The suffix ``+release`` adds it to none / diffusers,
``-release`` takes it off block / layer (``checkpointed(..., release_memory=False)``), e.g.
``--variants none+release,block-release``.

The step is our loop, ``adapters.training.train(kind="spatial", steps=1)``, with Spatial Adapters
on every injected layer (rank 8, target_mode "all") and a Motion Adapter (rank 8) attached at
α = 1 (a frozen still of the customized model: the heavier of the two kinds of steps), AdamW,
batch 1, fp32, CPU. The video model is the real-layout random SD1.5 + AnimateDiff v2 files of
``_common.ensure_model_files`` (memory-mapped), with a random customized UNet (seed 1) injected as
a ``ReplaceWeights`` patch built directly: ``inject_weights`` would first compare it with the
base, paging in the base's T2I weights (3.2 GiB of file pages the step never reads again, but
which RSS counts). The clips are latents already and the text encoder is replaced by a stub
returning a fixed embedding ("precomputed"), so neither the VAE nor the text encoder is resident:
what is measured is the step itself. Each child first reads the motion module's weights once, so
"RSS before the step" is the resident weights.

A watchdog ends a child whose RSS passes ``--limit-gib`` (default 21) or when the machine has
less than 1 GiB available; that variant is then reported as stopped, with the RSS reached.

    python benchmarks/bench_training_memory.py                   # tiny (8 frames, 64 px), ~1 min
    python benchmarks/bench_training_memory.py --size real       # 16 frames, 256 px: 10-20 min per variant on 2 busy cores
    python benchmarks/bench_training_memory.py --size real --variants layer,block
"""
import argparse
import contextlib
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks import _common  # noqa: E402

BASES = ("none", "diffusers", "block", "layer")
LABELS = {"none": "(a) no checkpointing", "diffusers": "(b) diffusers enable_gradient_checkpointing()",
          "block": "(c) checkpointed(unet): whole blocks", "layer": "(c') checkpointed(unet, 'layer')"}
VARIANTS = BASES + ("none+release", "diffusers+release", "block-release", "layer-release")


def label(variant):
    base = variant.split("+")[0].split("-")[0]
    return LABELS[base] + (", glibc freed memory released" if variant.endswith("+release") else
                           ", glibc defaults" if variant.endswith("-release") else "")


def releases(variant):
    """Whether the variant runs with adapters.memory.release_freed_memory()."""
    return variant.endswith("+release") or variant in ("block", "layer")
DEFAULTS = {"tiny": dict(frames=8, width=64), "real": dict(frames=16, width=256)}
# lowest peak first: if the last, largest one has to be stopped, the others are measured already
ORDER = ("layer", "block", "diffusers", "none")


def parse(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", choices=_common.SIZES, default="tiny")
    ap.add_argument("--variants", default=",".join(ORDER), help=f"comma list of {', '.join(VARIANTS)} (run in this order)")
    ap.add_argument("--frames", type=int, help="frames (16)")
    ap.add_argument("--width", type=int, help="width = height in pixels (256, i.e. 32x32 latents)")
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--target-mode", default="all")
    ap.add_argument("--repeats", type=int, default=1, help="fresh processes per variant")
    ap.add_argument("--limit-gib", type=float, default=21.0)
    ap.add_argument("--threads", type=int, default=0, help="torch threads in the children (0: torch's default)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    for k, v in DEFAULTS[a.size].items():
        if getattr(a, k) is None:
            setattr(a, k, v)
    a.variants = [v.strip() for v in a.variants.split(",") if v.strip()]
    bad = [v for v in a.variants if v not in VARIANTS]
    if bad:
        ap.error(f"unknown variant(s) {bad}; choose from {VARIANTS}")
    return a


def child(a):
    """One training step in this (fresh) process; prints RESULT {...}."""
    import tempfile
    import torch
    from diffusers import UNet2DConditionModel

    from adapters import loading, memory
    import random_models
    from adapters.data import LatentClip
    from adapters.motion_adapter import MotionAdapter
    from adapters.training import TrainSettings, train
    from adapters.video_model import T2I, ReplaceWeights

    variant = a.child
    if a.threads:
        torch.set_num_threads(a.threads)
    result = {"variant": variant, "size": a.size, "frames": a.frames, "width": a.width,
              "threads": torch.get_num_threads()}
    with _common.RssWatchdog(int(a.limit_gib * _common.GIB), result=result) as dog:
        ckpt, mm = _common.model_paths(a.size)
        tok = [_common.sd1_tokenizer_dir()] if a.size == "real" else []
        vm = loading.load_video_model(ckpt, mm, torch.float32, tokenizer_dirs=tok)
        # the customized T2I model: random weights of the real architecture, as anonymous memory
        with torch.device("meta"):
            shell = UNet2DConditionModel(**random_models.SIZES[a.size][0])
        custom_unet = random_models.random_state(shell, seed=1)
        del shell
        model = vm.with_patch(ReplaceWeights(T2I, custom_unet, 1.0, "custom_random.safetensors"))
        dim = vm.unet.config.cross_attention_dim
        model.text_encoder = _PrecomputedText(torch.randn(1, 77, dim, generator=torch.Generator().manual_seed(7)))
        with torch.no_grad():  # page the motion module in: what the step reads besides the custom UNet
            for n, p in vm.unet.named_parameters():
                if ".motion_modules." in n:
                    p.sum()
        motion = MotionAdapter.for_model(vm, a.rank, seed=2)
        with torch.no_grad():
            for p in motion.up.values():
                p.normal_(0, 0.01)
        h = a.width // 8
        clips = [LatentClip(torch.randn(4, 1, h, h, generator=torch.Generator().manual_seed(11 + i)),
                            "a photo of sks dog", f"still {i}") for i in range(2)]
        settings = TrainSettings(steps=1, rank=a.rank, frames=a.frames, batch=1, seed=0,
                                 gradient_checkpointing=variant == "layer", target_mode=a.target_mode,
                                 prior_ratio=0.0)
        before = _common.rss_parts()
        marks = {}
        out = Path(tempfile.mkdtemp()) / "spatial.safetensors"
        base = variant.split("+")[0].split("-")[0]
        if variant == "layer":
            ctx = contextlib.nullcontext(True)  # the library's own setting, above
        elif base in ("block", "layer"):
            ctx = memory.checkpointed(vm.unet, base, release_memory=releases(variant))
        elif base == "diffusers":
            ctx = _diffusers_checkpointing(vm.unet, releases(variant))
        else:
            ctx = memory.release_freed_memory() if releases(variant) else contextlib.nullcontext()
        t0 = time.perf_counter()
        with ctx as applied:
            res = train(model, "spatial", settings, out, custom_clips=clips, motion_adapter=motion,
                        should_stop=lambda: marks.setdefault("start", (time.perf_counter(), time.process_time())) and False,
                        callback=lambda *args: marks.setdefault("end", (time.perf_counter(), time.process_time())))
        total = time.perf_counter() - t0
        after = _common.rss_parts()
        result.update({
            "step_s": marks["end"][0] - marks["start"][0], "step_cpu_s": marks["end"][1] - marks["start"][1],
            "call_s": total,
            "loss": res.losses[-1][1], "adapter_params": sum(p.numel() for p in res.adapter.parameters()),
            "targets": len(res.adapter.targets),
            "rss_before": before["VmRSS"], "anon_before": before["RssAnon"], "file_before": before["RssFile"],
            "peak_rss": max(_common.peak_rss(), after["VmHWM"] or 0, dog.seen),
            "rss_after": after["VmRSS"], "load": _common.load_average(),
            "released": bool(applied) if base not in ("block", "layer") else releases(variant),
        })
    _common.emit(result)


@contextlib.contextmanager
def _diffusers_checkpointing(unet, release):
    from adapters import memory
    unet.enable_gradient_checkpointing()
    try:
        with (memory.release_freed_memory() if release else contextlib.nullcontext()) as applied:
            yield applied
    finally:
        unet.disable_gradient_checkpointing()


def _PrecomputedText(embedding):
    """A text encoder that returns a precomputed embedding for any prompt (no CLIP weights)."""
    import torch

    class PrecomputedText(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("embedding", embedding)
            self.anchor = torch.nn.Parameter(torch.zeros(()), requires_grad=False)  # for .device lookups

        def forward(self, input_ids):
            return (self.embedding.expand(input_ids.shape[0], -1, -1),)

    return PrecomputedText()


def main():
    a = parse()
    if a.child:
        return child(a)
    ckpt, mm = _common.ensure_model_files(a.size)
    _common.warm_page_cache(ckpt, mm) if a.size == "tiny" else _common.warm_page_cache(mm)
    print(f"size={a.size} frames={a.frames} {a.width}x{a.width}px ({a.width // 8}x{a.width // 8} latents) fp32 CPU "
          f"batch 1, Spatial Adapters rank {a.rank} ({a.target_mode}) + Motion Adapter rank {a.rank} at α=1; "
          f"limit {a.limit_gib} GiB; MemAvailable {_common.gib(_common.mem_available())}", flush=True)
    runs = {v: [] for v in a.variants}
    for r in range(a.repeats):
        for v in a.variants:
            print(f"\n{label(v)} (run {r + 1}, load {_common.load_average():.1f}) ...", flush=True)
            argv = [str(Path(__file__).resolve()), "--child", v, "--size", a.size, "--frames", str(a.frames),
                    "--width", str(a.width), "--rank", str(a.rank), "--target-mode", a.target_mode,
                    "--limit-gib", str(a.limit_gib), "--threads", str(a.threads)]
            res, code = _common.run_child_live(argv, cwd=str(_common.REPO))
            if res is None:
                print(f"  child failed (exit {code})", flush=True)
                continue
            runs[v].append(res)
            if res.get("aborted"):
                print(f"  STOPPED: {res['aborted']}; peak RSS so far {_common.gib(res['peak_rss'])}", flush=True)
            else:
                print(f"  peak RSS {_common.gib(res['peak_rss'])} (before the step {_common.gib(res['rss_before'])}: "
                      f"anon {_common.gib(res['anon_before'])} + file {_common.gib(res['file_before'])}), "
                      f"step {res['step_s']:.1f} s (CPU {res.get('step_cpu_s', float('nan')):.1f} s), train() call {res['call_s']:.1f} s, loss {res['loss']:.4f}, "
                      f"{res['targets']} spatial targets / {res['adapter_params'] / 1e6:.2f} M params, "
                      f"load avg {res['load']:.1f}", flush=True)
    print(f"\n{'variant':72s} peak RSS    step time (wall, CPU; median over runs)")
    peak, step = {}, {}
    for v in a.variants:
        done = [r for r in runs[v] if not r.get("aborted")]
        if done:
            peak[v] = _common.median([r["peak_rss"] for r in done])
            step[v] = _common.median([r["step_s"] for r in done])
            cpu = _common.median([r.get("step_cpu_s", float("nan")) for r in done])
            print(f"{label(v):72s} {_common.gib(peak[v]):>10s}  {step[v]:8.1f} s, {cpu:8.1f} s")
        elif runs[v]:
            print(f"{label(v):72s} stopped above {_common.gib(max(r['rss_at_abort'] for r in runs[v]))}")
    for ref in ("none", "diffusers"):
        if ref not in peak:
            continue
        for v in peak:
            if v != ref and v != "none":
                print(f"RATIO {v}/{ref}: peak RSS {peak[v] / peak[ref]:.3f}, step time {step[v] / step[ref]:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
