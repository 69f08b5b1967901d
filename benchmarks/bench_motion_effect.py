"""How strongly a trained Motion Adapter controls motion: our loop vs a plain diffusers + peft loop.

Both train a rank-``--rank`` low-rank update of the temporal-attention Q/K/V projections of the
SAME tiny ``UNetMotionModel`` (the benchmark's tiny SD1.5 + AnimateDiff v2 files, loaded by
``adapters.loading.load_video_model``) on the same frozen clips (one random frame of a random
clip repeated over the frames; the clips are random latents), the same steps, learning rate,
AdamW, MSE on the noise:

* ours: ``adapters.training.train(vm, "motion", TrainSettings(...))``; α set by ``AdapterPatch``;
* reference: ``peft.inject_adapter_in_model(LoraConfig(r, lora_alpha=r, target_modules=<temporal
  to_q/to_k/to_v>))`` and the textbook loop (``torch.randn_like`` noise, ``DDPMScheduler.add_noise``
  with linear betas); α set through the LoRA layers' ``scaling``.

Then each model generates videos with our sampler (Euler, 8 steps, CFG 1, 32 px, 8 frames, seeds
0..2) at α = 0, 1 and −1, and the temporal variance of the latents (``adapters.scoring.temporal_variance``) is
compared with α = 0. The paper: α = 1 freezes the video, α = −1 adds motion. The RATIO line
divides our change at α = 1 by the reference's (above 1: ours freezes more).

    python benchmarks/bench_motion_effect.py                       # 300 steps, ~2-6 min
    python benchmarks/bench_motion_effect.py --steps 150 --lr 1e-2
"""
import argparse
import json
import sys
import time
import types
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks import _common  # noqa: E402
from benchmarks._common import PeftLoRA, textbook_steps  # noqa: E402


def parse():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--lr", type=float, default=1e-2)
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--clips", type=int, default=8)
    ap.add_argument("--seeds", type=int, default=3, help="sampling seeds per α")
    ap.add_argument("--threads", type=int, default=1)
    return ap.parse_args()


def clips(n, frames, seed=0):
    import torch
    g = torch.Generator().manual_seed(seed)
    return [types.SimpleNamespace(latents=torch.randn(4, frames, 4, 4, generator=g), caption=f"clip {i % 2}")
            for i in range(n)]


def motion_at(model, a, alphas, set_alpha):
    from adapters import sampling, scoring
    out = {}
    for alpha in alphas:
        m = set_alpha(alpha)
        c, u = sampling.encode_text(m, ["clip 0"], "cpu"), sampling.encode_text(m, [""], "cpu")
        vals = [scoring.temporal_variance(sampling.sample(m, c, u, seed=s, steps=8, cfg=1.0, width=32, height=32,
                                                          frames=a.frames)) for s in range(a.seeds)]
        out[alpha] = sum(vals) / len(vals)
    return out


def reference(vm, data, a):
    """The textbook loop; returns temporal variance per α (the peft layers removed afterwards)."""
    import torch
    from peft.tuners.lora import LoraLayer
    g = torch.Generator().manual_seed(0)
    unet = vm.unet
    from adapters.sampling import encode_text
    enc = {c: encode_text(vm, [c], "cpu") for c in {d.caption for d in data}}

    def frozen_clips():  # one random frame of a random clip, repeated over the frames
        for _ in range(a.steps):
            clip = data[int(torch.randint(len(data), (1,), generator=g))]
            f = int(torch.randint(clip.latents.shape[1], (1,), generator=g))
            yield (clip.latents[:, f:f + 1].expand(-1, a.frames, -1, -1).unsqueeze(0),
                   enc[clip.caption].repeat_interleave(a.frames, 0))
    with PeftLoRA(unet, a.rank, "ref") as lora:
        with vm.patched():
            losses = textbook_steps(unet, lora.params, frozen_clips(), lr=a.lr, generator=g)
        layers = [m for m in unet.modules() if isinstance(m, LoraLayer)]

        def set_alpha(alpha):
            for m in layers:
                m.scaling["ref"] = alpha  # lora_alpha / r = 1
            return vm
        with torch.no_grad():
            result = motion_at(vm, a, (0.0, 1.0, -1.0), set_alpha)
    return result, losses


def ours(vm, data, a, out_dir):
    from adapters.training import TrainSettings, train
    from adapters.video_model import AdapterPatch
    s = TrainSettings(steps=a.steps, learning_rate=a.lr, rank=a.rank, frames=a.frames, seed=0)
    res = train(vm, "motion", s, Path(out_dir) / "motion.safetensors", custom_clips=data)
    return motion_at(vm, a, (0.0, 1.0, -1.0), lambda alpha: vm.with_patch(AdapterPatch(res.adapter, alpha))), \
        [l for _, l, _ in res.losses]


def main():
    a = parse()
    import tempfile
    import torch
    from adapters import loading
    torch.set_num_threads(a.threads)
    ckpt, mm = _common.ensure_model_files("tiny")
    vm = loading.load_video_model(ckpt, mm)
    data = clips(a.clips, a.frames)
    print(f"tiny SD1.5 + v2, {a.steps} steps, lr {a.lr}, rank {a.rank}, {a.frames} frames, {a.clips} random clips")
    rows = {}
    for name, fn in (("ours", lambda: ours(vm, data, a, tempfile.mkdtemp())), ("diffusers+peft", lambda: reference(vm, data, a))):
        t0 = time.perf_counter()
        var, losses = fn()
        rows[name] = var
        first, last = sum(losses[:20]) / 20, sum(losses[-20:]) / 20
        print(f"{name:15s} α=0 {var[0.0]:8.1f}  α=1 {var[1.0]:8.1f} ({var[1.0] / var[0.0] - 1:+.1%})  "
              f"α=-1 {var[-1.0]:8.1f} ({var[-1.0] / var[0.0] - 1:+.1%})  loss {first:.3f}->{last:.3f}  "
              f"{time.perf_counter() - t0:.0f} s", flush=True)
    o, r = rows["ours"], rows["diffusers+peft"]
    drop_o, drop_r = 1 - o[1.0] / o[0.0], 1 - r[1.0] / r[0.0]
    print(f"RATIO drop at α=1 ours/reference: {drop_o / drop_r if drop_r else float('nan'):.3f} "
          f"({drop_o:.1%} vs {drop_r:.1%}); rise at α=-1: {o[-1.0] / o[0.0] - 1:+.1%} vs {r[-1.0] / r[0.0] - 1:+.1%}")
    print("JSON " + json.dumps({"ours": {str(k): v for k, v in o.items()},
                                "reference": {str(k): v for k, v in r.items()}, "steps": a.steps, "lr": a.lr}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
