"""Our training loop (``adapters.training.train``, Motion Adapter) vs a minimal diffusers + peft loop.

Both train a rank-8 low-rank adapter on the temporal-attention Q/K/V projections of the SAME
``UNetMotionModel`` (loaded by ``adapters.loading.load_video_model`` from the benchmark files),
batch 1, the same frames and resolution, fp32, AdamW (lr 1e-4, weight decay 1e-2), MSE on the
noise, all other weights frozen:

* ours: ``train(vm, "motion", TrainSettings(steps=N, rank=8, ...), custom_clips=...)``: forward
  hooks (``MotionAdapter.attach``), the per-step seeded generator, ``model.patched()``, the
  text embedding computed inside the call, the adapter file written at the end;
* reference: ``peft.inject_adapter_in_model(LoraConfig(r=8, lora_alpha=8, target_modules=<the
  temporal to_q/to_k/to_v>), unet)``, then the textbook loop: ``torch.randn_like`` noise,
  ``DDPMScheduler.add_noise`` (linear betas), ``unet(...)``, ``F.mse_loss``, ``backward``,
  ``AdamW.step``, ``zero_grad``; the text embedding computed once before. The peft wrappers are
  taken out again after each reference round (the original ``nn.Linear`` modules put back), so
  both loops run on the very same module objects.

Time per step = the interval between consecutive steps' ends (ours: its progress callback), the
first ``--warmup`` steps of each round excluded, as wall time and as this process's CPU time
(``time.process_time``: all its threads; steadier than wall time on a shared machine, where
other jobs take the cores away, best with ``--threads 1``). ``--rounds`` rounds alternate which
loop goes first; each round gives a ratio, and the medians are reported. ``train()``'s fixed cost per call
(text encoding, patching, adapter set-up, writing the file) is reported separately.

Before timing, one forward/backward of each on identical inputs (peft's A copied from ours)
checks that the two compute the same adapter gradients (else exit 1).

    python benchmarks/bench_training.py                    # tiny, ~1 min
    python benchmarks/bench_training.py --size real        # SD1.5 + v2 sizes, 8 frames 256 px: ~15+ min
"""
import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks import _common  # noqa: E402
from benchmarks._common import PeftLoRA, textbook_steps  # noqa: E402

DEFAULTS = {"tiny": dict(frames=8, width=64, steps=8, warmup=2, rounds=4),
            "real": dict(frames=8, width=256, steps=3, warmup=1, rounds=1)}
LR, WD = 1e-4, 1e-2


def parse():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", choices=_common.SIZES, default="tiny")
    ap.add_argument("--frames", type=int, help="frames (tiny 8, real 8; 16 at real size peaks near 20 GiB)")
    ap.add_argument("--width", type=int, help="width = height in pixels (tiny 64, real 256)")
    ap.add_argument("--steps", type=int, help="steps per loop per round, warm-up included (tiny 8, real 3)")
    ap.add_argument("--warmup", type=int, help="first steps of each round not timed (tiny 2, real 1)")
    ap.add_argument("--rounds", type=int, help="rounds, alternating which loop goes first (tiny 4, real 1)")
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default; 1 is steadier on a "
                    "busy machine, where 2 spinning OpenMP threads stall each other)")
    ap.add_argument("--limit-gib", type=float, default=21.0, help="stop if this process's RSS passes it")
    ap.add_argument("--profile", action="store_true", help="cProfile one round of each and print the top entries")
    a = ap.parse_args()
    for k, v in DEFAULTS[a.size].items():
        if getattr(a, k) is None:
            setattr(a, k, v)
    if a.steps <= a.warmup:
        ap.error("--steps must be larger than --warmup")
    return a


def reference_loop(unet, lat, emb, a, marks, seed):
    """The textbook diffusers + peft step, ``a.steps`` times; ``marks`` gets each step's end."""
    import torch
    torch.manual_seed(seed)
    with PeftLoRA(unet, a.rank, f"ref{seed}") as lora:
        enc = emb.repeat_interleave(a.frames, 0)
        marks.append(_now())
        textbook_steps(unet, lora.params, [(lat, enc)] * a.steps, lr=LR, weight_decay=WD,
                       on_step=lambda _: marks.append(_now()))


def our_loop(vm, clips, a, marks, seed, out_dir):
    from adapters.training import TrainSettings, train
    settings = TrainSettings(steps=a.steps, learning_rate=LR, weight_decay=WD, rank=a.rank, batch=1,
                             frames=a.frames, seed=seed)
    t0 = time.perf_counter()
    first = []
    res = train(vm, "motion", settings, Path(out_dir) / f"motion_{seed}.safetensors", custom_clips=clips,
                should_stop=lambda: (not first and first.append(_now())) and False,
                callback=lambda *args: marks.append(_now()))
    total = time.perf_counter() - t0
    marks.insert(0, first[0])
    return total, res


def _now():
    return time.perf_counter(), time.process_time()


def _intervals(marks, warmup):
    wall = [b[0] - x[0] for x, b in zip(marks, marks[1:])][warmup:]
    cpu = [b[1] - x[1] for x, b in zip(marks, marks[1:])][warmup:]
    return wall, cpu


def check_same_gradients(vm, lat, emb, a):
    """One forward/backward of our hooks and of peft's LoRA with the same A, B and inputs."""
    import torch
    import torch.nn.functional as F

    from adapters.motion_adapter import MotionAdapter
    unet = vm.unet
    g = torch.Generator().manual_seed(123)
    noisy = torch.randn(lat.shape, generator=g)
    noise = torch.randn(lat.shape, generator=g)
    t = torch.tensor([400])
    enc = emb.repeat_interleave(a.frames, 0)
    ours = MotionAdapter.for_model(vm, a.rank, seed=0)
    with torch.no_grad():
        for p in ours.up.values():
            p.copy_(torch.randn(p.shape, generator=g) * 0.02)
    handles = ours.attach(unet, 1.0)
    try:
        loss_ours = F.mse_loss(unet(noisy, t, encoder_hidden_states=enc).sample, noise)
        loss_ours.backward()
    finally:
        for h in handles:
            h.remove()
    with PeftLoRA(unet, a.rank, "check"):
        modules = dict(unet.named_modules())
        with torch.no_grad():
            for name in ours.targets:
                down, up = ours.factors(name)
                modules[name].lora_A["check"].weight.copy_(down.T)
                modules[name].lora_B["check"].weight.copy_(up.T)
        loss_ref = F.mse_loss(unet(noisy, t, encoder_hidden_states=enc).sample, noise)
        loss_ref.backward()
        worst = 0.0
        for name in ours.targets:
            down, up = ours.factors(name)
            gb = modules[name].lora_B["check"].weight.grad.T
            ga = modules[name].lora_A["check"].weight.grad.T
            scale = max(up.grad.abs().max().item(), down.grad.abs().max().item(), 1e-12)
            worst = max(worst, (gb - up.grad).abs().max().item() / scale, (ga - down.grad).abs().max().item() / scale)
    return abs(loss_ours.item() - loss_ref.item()), worst, len(ours.targets)


def profile_once(fn, label):
    import cProfile
    import pstats
    prof = cProfile.Profile()
    prof.enable()
    fn()
    prof.disable()
    print(f"\n--- cProfile, {label} (top 18 by own time) ---")
    pstats.Stats(prof).sort_stats("tottime").print_stats(18)


def main():
    a = parse()
    import tempfile

    import torch

    from adapters.data import LatentClip
    from adapters.loading import load_video_model
    from adapters.sampling import encode_text

    if a.threads:
        torch.set_num_threads(a.threads)
    ckpt, mm = _common.ensure_model_files(a.size)
    tok_dirs = [_common.sd1_tokenizer_dir()] if a.size == "real" else []
    print(f"size={a.size} frames={a.frames} {a.width}x{a.width}px batch 1 rank {a.rank} fp32 "
          f"threads={torch.get_num_threads()} steps/round={a.steps} (warm-up {a.warmup}) rounds={a.rounds} "
          f"load avg {_common.load_average():.1f}", flush=True)
    dog = _common.RssWatchdog(int(a.limit_gib * _common.GIB), result={"bench": "training"}).__enter__()
    vm = load_video_model(ckpt, mm, torch.float32, tokenizer_dirs=tok_dirs)
    h = a.width // 8
    g = torch.Generator().manual_seed(0)
    video = torch.randn(4, a.frames, h, h, generator=g)   # a "natural" clip: ours freezes one random frame
    caption = "a red fox running through snow"
    clips = [LatentClip(video, caption, "bench")]
    emb = encode_text(vm, [caption], "cpu")
    lat = video[:, 3:4].expand(-1, a.frames, -1, -1).unsqueeze(0).contiguous()  # the reference's frozen clip

    dloss, worst, n = check_same_gradients(vm, lat, emb, a)
    print(f"same work: {n} temporal q/k/v projections; |loss ours - peft| = {dloss:.2e}, "
          f"max relative gradient difference {worst:.2e}", flush=True)
    if not (dloss <= 1e-5 and worst <= 1e-4):
        print("FAIL: our hooks and peft's LoRA do not compute the same gradients", file=sys.stderr)
        return 1

    out_dir = tempfile.mkdtemp()
    if a.profile:
        profile_once(lambda: our_loop(vm, clips, a, [], 999, out_dir), "ours")
        profile_once(lambda: reference_loop(vm.unet, lat, emb, a, [], 999), "diffusers + peft")

    per_round, overheads = [], []
    for r in range(a.rounds):
        order = ("ours", "ref") if r % 2 == 0 else ("ref", "ours")
        steps = {}
        for name in order:
            marks = []
            if name == "ours":
                total, res = our_loop(vm, clips, a, marks, r, out_dir)
                overheads.append(total - (marks[-1][0] - marks[0][0]))
            else:
                reference_loop(vm.unet, lat, emb, a, marks, r)
            wall, cpu = _intervals(marks, a.warmup)
            steps[name] = _common.median(wall)
            steps[name + "_cpu"] = _common.median(cpu)
            print(f"  round {r + 1} {name:4s} {steps[name]:.3f} s/step wall, {steps[name + '_cpu']:.3f} s CPU "
                  f"(median of {len(wall)}; wall: {', '.join(f'{s:.3f}' for s in wall)})", flush=True)
        per_round.append(steps)
        print(f"  round {r + 1} ratio ours/reference {steps['ours'] / steps['ref']:.3f} wall, "
              f"{steps['ours_cpu'] / steps['ref_cpu']:.3f} CPU (load avg {_common.load_average():.1f})", flush=True)
    dog.__exit__()

    ours = _common.median([s["ours"] for s in per_round])
    ref = _common.median([s["ref"] for s in per_round])
    ratio = _common.median([s["ours"] / s["ref"] for s in per_round])
    ratio_cpu = _common.median([s["ours_cpu"] / s["ref_cpu"] for s in per_round])
    ours_cpu = _common.median([s["ours_cpu"] for s in per_round])
    ref_cpu = _common.median([s["ref_cpu"] for s in per_round])
    print(f"\ntime per step (median over rounds): ours {ours:.3f} s, diffusers + peft {ref:.3f} s "
          f"(CPU time: ours {ours_cpu:.3f} s, diffusers + peft {ref_cpu:.3f} s)")
    print(f"train() fixed cost per call (text encoding, patching, adapter set-up, saving): "
          f"median {_common.median(overheads):.3f} s")
    print(f"peak RSS of this process: {_common.gib(_common.peak_rss())}")
    print(f"RATIO ours/reference time per step: {ratio:.3f} wall, {ratio_cpu:.3f} CPU (medians of {a.rounds} "
          f"per-round ratios; ratio of medians {ours / ref:.3f} wall; goal <= 1.05)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
