"""Does a Motion Adapter trained with given settings freeze the toy video model? The check the
Train Motion Adapter node and the CLI end with, plus the subject's travel and speed per α.

Trains a Motion Adapter on the shipped toy models (``embedded/``) through the nodes' path
(``training.train_on_clips`` on 40 toy clips as pixels, frozen as the recipe says), with the
Train Motion Adapter node's defaults unless told otherwise, then runs ``check_freezes`` (two
held-out base-world prompts, seeds 1000 and 1001, 10 steps) and samples four held-out prompts at
α = -1, -0.5, 0, 0.5, 1 (20 Euler steps, CFG 4) to measure travel (first to last frame) and mean
speed of the subject over the frames it is seen in (``toyworld.motion_of``).

    OMP_NUM_THREADS=2 python benchmarks/bench_motion_adapter_check.py                 # node defaults
    OMP_NUM_THREADS=2 python benchmarks/bench_motion_adapter_check.py --lr 1e-3 --steps 400 --batch 2
"""
import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks import _common  # noqa: E402

PROMPTS = [("green", "circle", "left"), ("yellow", "circle", "right"), ("red", "circle", "up"),
           ("blue", "circle", "down")]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    import torch
    from adapters import loading, sampling, training
    from adapters.motion_adapter import MotionAdapter, check_freezes
    from toyworld import world as tw
    models = _common.REPO / "embedded"
    vm = loading.load_video_model(models / tw.MODEL_FILES["base"], models / tw.MODEL_FILES["motion"])
    s = training.TrainSettings(steps=a.steps, learning_rate=a.lr, rank=a.rank, batch=a.batch, frames=tw.FRAMES,
                               seed=a.seed)
    t0 = time.time()
    res = training.train_on_clips(vm, MotionAdapter, s, Path(tempfile.mkdtemp()) / "motion.safetensors",
                                  tw.prior_videos(40), width=tw.SIZE, height=tw.SIZE)
    train_s = time.time() - t0
    prompts = [tw.caption(*p) for p in PROMPTS]
    with torch.no_grad():
        check = check_freezes(vm, res.adapter, prompts[:2], cfg=4.0, width=tw.SIZE, height=tw.SIZE,
                              frames=tw.FRAMES)
        print(f"settings: {a.steps} steps, lr {a.lr}, rank {a.rank}, batch {a.batch}; training {train_s:.0f} s "
              f"on {torch.get_num_threads()} threads")
        print(check.summary())
        for alpha in (-1.0, -0.5, 0.0, 0.5, 1.0):
            m = res.adapter.add_to(vm, alpha) if alpha else vm
            moved = [tw.motion_of(sampling.text_to_video(m, p, seed=seed, steps=20, cfg=4.0, width=tw.SIZE,
                                                         height=tw.SIZE, frames=tw.FRAMES), tw.parse_caption(p)["motion"])
                     for p in prompts for seed in (1000, 1001)]
            travel = np.mean([v["travel_px"] for v in moved])
            speed = np.mean([v["speed_px"] for v in moved])
            print(f"  α = {alpha:+.1f}: travel {travel:.2f} px, speed {speed:.2f} px/frame", flush=True)


if __name__ == "__main__":
    main()
