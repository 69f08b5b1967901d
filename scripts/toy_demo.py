"""The whole Still-Moving path on the embedded toy models, on a CPU in a few minutes.

Base video model = the shipped toy T2I + toy motion module; customized T2I = the shipped
DreamBooth-style 'sks star' checkpoint. Steps (paper §3):
  1. naive injection of the customized T2I into the video model;
  2. stills sampled from the customized T2I (temporal layers bypassed: the T2I alone);
  3. the shipped Motion Adapter; Spatial Adapters trained on the stills as frozen videos
     (Motion Adapter α = 1) mixed with natural toy-world videos (α = 0) for prior preservation;
  4. videos for the same prompts and seeds: base model, naive injection and Still-Moving at the
     paper's inference (Spatial Adapters kept, Motion Adapter removed), written side by side as
     GIF, WebP and MP4 with the subject's measured motion and customization scores.
Uses only the library (``adapters``), i.e. the code the ComfyUI nodes call.
"""
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

EMBEDDED = ROOT / "embedded"


def _label(img, text):
    from PIL import Image, ImageDraw
    out = Image.new("RGB", (img.width, img.height + 14), (0, 0, 0))
    out.paste(img, (0, 14))
    ImageDraw.Draw(out).text((2, 1), text, fill=(230, 230, 230))
    return out


def side_by_side(videos, labels, scale=6):
    """Frames (F, H, W, 3) in [0, 1] of several videos -> PIL frames, videos left to right."""
    from PIL import Image
    frames = []
    for i in range(min(v.shape[0] for v in videos)):
        tiles = []
        for v, lab in zip(videos, labels):
            a = (v[i].numpy() * 255).round().astype(np.uint8)
            img = Image.fromarray(a).resize((a.shape[1] * scale, a.shape[0] * scale), Image.NEAREST)
            tiles.append(_label(img, lab))
        row = Image.new("RGB", (sum(t.width for t in tiles) + 4 * (len(tiles) - 1), tiles[0].height), (60, 60, 60))
        x = 0
        for t in tiles:
            row.paste(t, (x, 0))
            x += t.width + 4
        frames.append(row)
    return frames


def save_animation(frames, path, fps=6):
    """The same frames as GIF, WebP and MP4 (H.264) beside each other."""
    from adapters.files import VIDEO_FORMATS, unique_path, write_video
    return [write_video(frames, unique_path(path.with_suffix(ext)), fps) for ext in VIDEO_FORMATS]


def scores(frames, prompt):
    from toyworld import world as tw
    motion = tw.parse_caption(prompt)["motion"] or "still"
    return {"motion_along_caption_px": round(tw.motion_along(frames, motion), 2),
            "displacement_px": round(math.hypot(*tw.displacement(frames)), 2),
            "star_shape": round(tw.star_score(frames), 3), "template": round(tw.template_score(frames), 3),
            "custom_colour": round(tw.custom_colour_score(frames), 3)}


def run(out_dir, embedded=EMBEDDED, prompts=None, seeds=(0, 1), steps=20, cfg=4.0, train_steps=120,
        n_stills=8, n_prior=24, log=print):
    """Run the demo; returns {"files": [...], "scores": {...}, "seconds": ...}."""
    from adapters import inject, loading, sampling
    from toyworld import world as tw
    from adapters.data import Clip
    from adapters.motion_adapter import MotionAdapter
    from adapters.spatial_adapters import SpatialAdapters
    from adapters.training import TrainSettings, temporal_layers_off, train_on_clips
    from adapters.video_model import AdapterPatch
    t0 = time.time()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    embedded = Path(embedded)
    missing = [n for n in tw.MODEL_FILES.values() if not (embedded / n).is_file()]
    if missing:
        raise FileNotFoundError(f"embedded toy models missing in {embedded}: {', '.join(missing)}; "
                                "run scripts/train_toy_models.py --out embedded")
    prompts = prompts or [tw.custom_caption("left"), tw.custom_caption("up")]
    size, frames = tw.SIZE, tw.FRAMES
    log(f"toy demo: loading the embedded base model, motion module and customized checkpoint from {embedded}")
    base = loading.load_video_model(embedded / tw.MODEL_FILES["base"], embedded / tw.MODEL_FILES["motion"])
    naive = inject.inject_checkpoint(base, embedded / tw.MODEL_FILES["custom"])

    def generate(vm, prompt, seed, n=frames):
        return sampling.text_to_video(vm, prompt, seed=seed, steps=steps, cfg=cfg, width=size, height=size, frames=n)

    log(f"toy demo: sampling {n_stills} stills of '{tw.CUSTOM_CLASS_CAPTION}' from the customized T2I")
    with temporal_layers_off(naive.unet):
        stills = generate(naive, tw.CUSTOM_CLASS_CAPTION, 1000, n_stills)
    still_clips = [Clip(stills[i:i + 1], tw.CUSTOM_CLASS_CAPTION, f"customized T2I still {i}") for i in range(n_stills)]
    prior = [Clip(tw.to_float(c.frames), c.caption, "toy world video") for c in tw.dataset(n_prior, seed=777)]
    motion_adapter = MotionAdapter.load(embedded / tw.MODEL_FILES["adapter"])
    motion_adapter.check(base, embedded / tw.MODEL_FILES["adapter"])
    log(f"toy demo: training Spatial Adapters ({train_steps} steps)...")
    settings = TrainSettings(steps=train_steps, learning_rate=1e-3, rank=4, batch=2, frames=frames, seed=0,
                             prior_ratio=0.5, min_timestep=500)  # the Train Spatial Adapters node's default
    res = train_on_clips(naive, SpatialAdapters, settings, out_dir / "toy_spatial_adapters.safetensors", still_clips,
                         prior, width=size, height=size, motion_adapter=motion_adapter)
    log(f"toy demo: trained in {res.seconds:.0f} s -> {res.path}")
    still_moving = naive.with_patch(AdapterPatch(res.adapter, 1.0, True, str(res.path)))
    rows = (("base", base), ("naive injection", naive), ("Still-Moving", still_moving))
    written, table = [], {}
    for prompt in prompts:
        for seed in seeds:
            vids = {name: generate(vm, prompt, seed) for name, vm in rows}
            for name, v in vids.items():
                table.setdefault(name, []).append(scores(v, prompt))
            stem = prompt.replace(" ", "_") + f"_seed{seed}"
            written += save_animation(side_by_side(list(vids.values()), list(vids)), out_dir / stem)
    summary = {name: {k: round(float(np.mean([r[k] for r in rows])), 3) for k in rows[0]} for name, rows in table.items()}
    (out_dir / "toy_demo_scores.json").write_text(json.dumps({"prompts": prompts, "seeds": list(seeds),
                                                              "mean": summary, "runs": table}, indent=1) + "\n")
    log("toy demo: mean over prompts and seeds (the subject's displacement first to last frame in px; "
        "likeness to the customization stills' subject, about 0.9 for them and 0.3-0.6 for a disc or blob; "
        "star shape, 0.1 for a disc; custom colour share 0-1):")
    for name, s in summary.items():
        log(f"  {name:24s} moved {s['displacement_px']:5.2f} px ({s['motion_along_caption_px']:6.2f} along the caption)   "
            f"likeness {s['template']:.3f}   star shape {s['star_shape']:.3f}   "
            f"custom colour {s['custom_colour']:.3f}")
    return {"files": written + [res.path, out_dir / "toy_demo_scores.json"], "scores": summary,
            "seconds": time.time() - t0}


if __name__ == "__main__":
    import argparse
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", type=Path, default=ROOT / "output" / "demo")
    ap.add_argument("--embedded", type=Path, default=EMBEDDED)
    ap.add_argument("--train-steps", type=int, default=120)
    a = ap.parse_args()
    torch.set_num_threads(1)
    r = run(a.out, a.embedded, train_steps=a.train_steps)
    print(f"toy demo: done in {r['seconds']:.0f} s; wrote:")
    for p in r["files"]:
        print(f"  {p}")
