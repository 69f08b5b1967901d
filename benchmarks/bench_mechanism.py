"""Still-Moving's mechanism on a customization that is a known shift (``toyworld.mechanism``).

The toy base model with each injected layer's output passed through ``(I + P)``, ``P`` random and
low-rank, written as a checkpoint and injected as a user's would be; Spatial Adapters trained as
the paper says (stills of the customized T2I at α = 1, natural toy clips at α = 0, the shipped
Motion Adapter); then, on prompts and seeds none of the training saw:

  travel_px / kept   how far the subject got (first to last frame), and that over the base's
  dir_acc            share of videos that go the caption's way
  left               ‖(I + UD)(I + P)y − y‖ / ‖Py‖ on held-out base activations y (0: the adapters
                     undo the shift exactly; 1: not at all), pooled over every shifted layer
  t2i colour         the customized T2I's stills in the caption's colour (the paper's premise is a
                     customized T2I that still draws well)

Rows: base, naive injection, Still-Moving at the paper's inference (α = 0, no Motion Adapter) and
the exact inverse (the adapters that undo ``(I + P)``, built by hand: the target of training).
``--stream-scale C`` customizes instead by writing C times larger into the UNet's stream, which
the T2I cannot see (no exact inverse, no ``left``).

    OMP_NUM_THREADS=1 python benchmarks/bench_mechanism.py
    OMP_NUM_THREADS=1 python benchmarks/bench_mechanism.py --stream-scale 10 --adapter-rank 64
    OMP_NUM_THREADS=1 python benchmarks/bench_mechanism.py --rank 2 --scale 4 --prior-ratio 0.9
"""
import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from adapters import loading  # noqa: E402
from adapters.motion_adapter import MotionAdapter  # noqa: E402
from toyworld import mechanism as mech  # noqa: E402
from toyworld import world as tw  # noqa: E402


def main(argv=None):
    d = mech.Setting()
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", type=Path, default=REPO / "embedded", help="folder of the toy models")
    ap.add_argument("--rank", type=int, default=d.rank)
    ap.add_argument("--scale", type=float, default=d.scale)
    ap.add_argument("--adapter-rank", type=int, default=d.adapter_rank)
    ap.add_argument("--steps", type=int, default=d.steps)
    ap.add_argument("--lr", type=float, default=d.learning_rate)
    ap.add_argument("--batch", type=int, default=d.batch)
    ap.add_argument("--prior-ratio", type=float, default=d.prior_ratio)
    ap.add_argument("--min-timestep", type=int, default=d.min_timestep)
    ap.add_argument("--train-seed", type=int, default=d.train_seed)
    ap.add_argument("--stream-scale", type=float, default=d.stream_scale,
                    help="customize by scaling the UNet's stream writes by this (the T2I cannot see it) "
                         "instead of the (I + P) shift")
    ap.add_argument("--seeds", type=int, default=len(d.eval_seeds), help="evaluation seeds per prompt (from 20)")
    ap.add_argument("--json", type=Path, help="also write the figures here (a new file)")
    a = ap.parse_args(argv)
    s = mech.Setting(rank=a.rank, scale=a.scale, adapter_rank=a.adapter_rank, steps=a.steps, learning_rate=a.lr,
                     batch=a.batch, prior_ratio=a.prior_ratio, min_timestep=a.min_timestep,
                     train_seed=a.train_seed, stream_scale=a.stream_scale, eval_seeds=tuple(range(20, 20 + a.seeds)))
    t0 = time.time()
    base = loading.load_video_model(a.models / tw.MODEL_FILES["base"], a.models / tw.MODEL_FILES["motion"])
    ma = MotionAdapter.load(a.models / tw.MODEL_FILES["adapter"])
    with tempfile.TemporaryDirectory() as tmp:
        out = mech.run(base, ma, tmp, s)
    ref = out["motion"]["base"]["travel_px"]
    what = (f"stream writes x{s.stream_scale:g}" if s.stream_scale else f"shift: rank {s.rank}, s = {s.scale:g}")
    print(f"\n{what}, {out['layers']} layers; adapters rank {s.adapter_rank}, seed {s.train_seed}, "
          f"{s.steps} steps, lr {s.learning_rate:g}, batch {s.batch}, prior ratio {s.prior_ratio:g}, "
          f"t >= {s.min_timestep}; "
          f"{torch.get_num_threads()} thread(s), {time.time() - t0:.0f} s")
    print("\n| model | travel_px | kept | dir_acc |\n|---|---|---|---|")
    for name, m in out["motion"].items():
        print(f"| {name} | {m['travel_px']:.2f} | {m['travel_px'] / ref:.2f} | {m['dir_acc']:.2f} |")
    if "left" in out:
        left = out["left"]
        print(f"\nshift left on held-out activations: {left['pooled']:.3f} pooled, {left['median']:.3f} median "
              f"layer (exact inverse {left['exact_inverse']:.1e})")
    print(f"T2I stills in the caption's colour: base {out['t2i']['colour_base']:.2f}, customized "
          f"{out['t2i']['colour_customized']:.2f}; largest pixel difference from the base's {out['t2i']['max_diff']:.1e}")
    print("\ndiffusion loss (the training objective's halves): stills at α = 1 / prior videos at α = 0: " + ", ".join(
        f"{name} {v['stills_at_1']:.4f} / {v['prior_at_0']:.4f}" for name, v in out["loss"].items()))
    if a.json:
        from adapters.files import write_text
        write_text(a.json, json.dumps(out, indent=1, default=str))
    return out


if __name__ == "__main__":
    torch.set_num_threads(int(__import__("os").environ.get("OMP_NUM_THREADS", "1")))
    main()
