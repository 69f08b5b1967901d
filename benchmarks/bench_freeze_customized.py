"""Does a Motion Adapter that freezes the base toy model also freeze a customized one?

Spatial Adapters train on the customized T2I's stills with the Motion Adapter at α = 1, which
assumes the injected model makes still videos there. This samples, at α = 0 and α = 1, the base
model and each customized checkpoint injected naively (``inject.inject_checkpoint``), on two
"sks" prompts and two base-world prompts, seeds 500-502, 20 Euler steps, CFG 4, and prints the
subject's travel (first to last frame, ``toyworld.locate``) and ``check_freezes``'s share (the
frame-to-frame change α = 1 keeps; the Train Spatial Adapters check warns above 25 %).

``--train-on-injected`` also trains a Motion Adapter (the shipped one's settings: rank 8, 400
steps, lr 1e-3, batch 2) on the first customized checkpoint injected, on 40 natural toy clips,
and with ``+stills`` also on the customized T2I's 8 stills that the toy comparison trains Spatial
Adapters on, then checks it the same way; ``--write DIR`` saves it as DIR's Motion Adapter (a copy
of the models folder), for ``bench_toy_comparison.py --models DIR``.

    OMP_NUM_THREADS=1 python benchmarks/bench_freeze_customized.py --custom embedded/toy_custom_sks_star.safetensors
    OMP_NUM_THREADS=1 python benchmarks/bench_freeze_customized.py --custom D1/toy_custom_sks_star.safetensors \
        --train-on-injected clips+stills --write output/D1_ma_stills
"""
import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks import _common  # noqa: E402

SEEDS = (500, 501, 502)


def measure(name, model, adapter, prompt_sets):
    """One table row per prompt set: travel from the very videos ``check_freezes`` samples."""
    import torch
    from adapters.motion_adapter import check_freezes
    from toyworld import world as tw
    with torch.no_grad():
        for kind, prompts in prompt_sets.items():
            moved = {0.0: [], 1.0: []}

            def travel(alpha, prompt, seed, video):
                moved[alpha].append(tw.motion_of(video, tw.parse_caption(prompt)["motion"])["travel_px"])
            check = check_freezes(model, adapter, prompts, seeds=SEEDS, steps=20, cfg=4.0, width=tw.SIZE,
                                  height=tw.SIZE, frames=tw.FRAMES, on_video=travel)
            print(f"| {name} | {kind} | {np.mean(moved[0.0]):.2f} | {np.mean(moved[1.0]):.2f} | "
                  f"{100 * check.share:.0f} % |", flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", type=Path, default=_common.REPO / "embedded", help="base, motion module, Motion Adapter")
    ap.add_argument("--custom", type=Path, action="append", required=True, help="a customized checkpoint (repeatable)")
    ap.add_argument("--train-on-injected", dest="train", choices=("clips", "clips+stills"))
    ap.add_argument("--write", type=Path, help="with --train-on-injected: a new models folder holding that adapter")
    a = ap.parse_args()
    import torch
    from adapters import inject, loading, training
    from adapters.motion_adapter import MotionAdapter
    from benchmarks.bench_toy_comparison import m1_stills
    from toyworld import world as tw
    base = loading.load_video_model(a.models / tw.MODEL_FILES["base"], a.models / tw.MODEL_FILES["motion"])
    adapter = MotionAdapter.load(a.models / tw.MODEL_FILES["adapter"])
    prompt_sets = {"sks": [tw.custom_caption(m) for m in ("left", "up")],
                   "base-world": [tw.caption("red", "circle", "left"), tw.caption("blue", "circle", "up")]}
    injected = [(p, inject.inject_checkpoint(base, p)) for p in a.custom]
    t0 = time.time()
    if a.train:
        naive = injected[0][1]
        clips = tw.prior_videos(40) + (m1_stills(naive, 8, 20, 4.0, "cpu") if a.train == "clips+stills" else [])
        s = training.TrainSettings(steps=400, learning_rate=1e-3, rank=8, batch=2, frames=tw.FRAMES, seed=0)
        out = Path(a.write) if a.write else Path(tempfile.mkdtemp())
        if a.write:
            shutil.copytree(a.models, out)  # refuses an existing folder: nothing is overwritten
            shutil.copyfile(injected[0][0], out / tw.MODEL_FILES["custom"])
            (out / tw.MODEL_FILES["adapter"]).unlink()
        adapter = training.train_on_clips(naive, MotionAdapter, s, out / tw.MODEL_FILES["adapter"], clips,
                                          width=tw.SIZE, height=tw.SIZE).adapter
        print(f"Motion Adapter trained on {injected[0][0].name} injected, {a.train}: {time.time() - t0:.0f} s")
    print(f"\n{torch.get_num_threads()} thread(s)\n\n| model | prompts | travel α = 0 (px) | travel α = 1 | "
          "frame change kept at α = 1 |\n|---|---|---|---|---|")
    measure("base", base, adapter, prompt_sets)
    for path, model in injected:
        measure(f"{path.parent.name}/{path.name} injected", model, adapter, prompt_sets)
    print(f"\n{time.time() - t0:.0f} s")


if __name__ == "__main__":
    import torch
    torch.set_num_threads(int(__import__("os").environ.get("OMP_NUM_THREADS", "1")))
    main()
