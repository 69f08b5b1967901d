"""The paper's comparison, measured on the toy world: Still-Moving against its baselines
and ablations, same prompts, same seeds, same training data and steps.

Rows (``--methods``):
  truth              the toy world's own rendering of each prompt (no model): the scores' ceiling
  base               the base T2V model, not customized (the motion every method should keep)
  naive              naive injection of the customized T2I (weight 1)
  interpolation      weights interpolated half way, w = 0.5
  interleaved        the interleaved baseline as the pack's trainer offers it: Spatial Adapters
                     trained on the stills with the temporal layers off, alternating with prior
                     videos with them on (no Motion Adapter)
  interleaved_full   the same with every injected T2I weight trained (the paper's description of
                     the baseline: the T2I weights are fine-tuned)
  still_moving       Motion Adapter (α = 1 on the stills, 0 on prior videos) + Spatial Adapters
  no_motion_adapter  ablation: the same, but the Motion Adapter is a fresh one (A_up = 0: the
                     identity), so the stills are learned as frozen VIDEOS by the plain model
  full_weights       ablation: every injected T2I weight trained (fullweights.FullDelta) instead
                     of Spatial Adapters, with the Motion Adapter
  no_prior           ablation: Still-Moving without prior videos (stills only)
  ``--motion-scale -0.5,...`` adds "naive α=-0.5" and "still_moving α=-0.5" rows: the same models
  sampled with the Motion Adapter kept as the motion slider (paper §3.2)

Training data, the same for every trained row: images SAMPLED FROM THE CUSTOMIZED T2I (the
customized UNet with its temporal layers bypassed, one frame, prompt "a sks star"), as the
paper does, and natural clips of the toy world (toyworld.dataset) as prior videos.

Scores (per video, then the mean over prompts x seeds):
  fidelity      how star-like the subject's silhouette is (toyworld.star_score: about 0.1 for the
                world's discs, 0.3 for the customization stills after the toy autoencoder's
                round trip): the toy world's CLIP-I
  colour        share of the subject's pixels in the customization's colours (magenta/white and
                their blend; toyworld.custom_colour_score). The shipped toy autoencoder cannot
                draw those colours (embedded/README.md), so expect about 0 for every model
  template      the subject's crop against the customization images' crops (mean-centred cosine,
                best match per frame): a second, shape-aware CLIP-I analogue
  dir_acc       share of videos whose subject moves the way the caption says ("sks" prompts)
  along_px      the subject's displacement along the caption's direction, first to last frame
                (truth: 9-12 px over 8 frames at 32 px)
  travel_px     how far the subject's centre got, first to last frame, any direction (the toy
                model picks the sign of a sideways or vertical path from the seed, which
                along_px averages away; a subject that wobbles in place has speed, not travel)
  speed_px      mean step of the subject's centre per frame, any direction
  frame_corr    mean correlation of consecutive frames (temporal consistency; 1 = frozen)
  colour_acc    base-world prompts ("a red circle moving left") on the customized model: share of
                the subject's pixels nearest the named colour (toyworld.colour_share;
                generalization beyond the subject)
  base_dir_acc  direction accuracy on those base-world prompts
  leak          the customization's star shape showing up in base-world prompts (star_score; lower
                is better)

Outputs (``--out``, a new folder each run): results.json, table.md, paired.md, plot.png,
grid_custom.png, grid_custom.gif, grid_base.png. ``--quick``: a cut-down setting for CI (a few
steps). paired.md: each method against Still-Moving on the same prompt and seed, the mean
difference and its standard error (the spread the means hide; 12 pairs in the full setting).
``--report results.json`` prints both tables again from a saved run.

``--train-seeds 0,1,2``: each trained row is trained once per seed and sampled on the same prompts
and seeds; its row is the mean over the training seeds with their standard error, and
results.json keeps each seed's scores and videos (``per_seed``). Untrained rows get the standard
error over their videos. ``--preregistered``: the comparison written into benchmarks/README.md
before it was run (rows base, naive, interpolation, still_moving; 10 prompt seeds; training seeds
0, 1, 2; the full setting), with the premise measured (naive injection's dir_acc against the
base's; the customized T2I's colour_acc on the base-world prompts, temporal layers off, single
frames) and a verdict per premise item and criterion, printed and written to verdict.md; flags
given beside it change the run and the verdict then says it is not the pre-registered one.
``--premise-only`` stops after the premise (base and naive on the "sks" prompts, the T2I frames).
``--diagnose RUN_DIR``: the injection report on a saved run's Spatial Adapters, per block (how far
naive injection moved the temporal layers' inputs, how far they are with the adapters, the share
closed), written to diagnosis.md: why a trained row did or did not mend naive injection.

    OMP_NUM_THREADS=1 python benchmarks/bench_toy_comparison.py            # shipped models in embedded/
    OMP_NUM_THREADS=1 python benchmarks/bench_toy_comparison.py --quick
    python benchmarks/bench_toy_comparison.py --report output/toy_comparison/results.json
    OMP_NUM_THREADS=1 python benchmarks/bench_toy_comparison.py --preregistered [--premise-only] --models DIR
"""
import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from adapters import data, inject, loading, sampling, scoring, training  # noqa: E402
from toyworld import world as tw  # noqa: E402
from adapters.files import unique_path, write_text, write_video  # noqa: E402
from toyworld.full_delta import FullDelta  # noqa: E402
from adapters.motion_adapter import MotionAdapter  # noqa: E402
from adapters.spatial_adapters import SpatialAdapters  # noqa: E402
from adapters.video_model import AdapterPatch  # noqa: E402

METHODS = ("truth", "base", "naive", "interpolation", "interleaved", "interleaved_full", "still_moving",
           "no_motion_adapter", "full_weights", "no_prior")
TRAINED = {"interleaved", "interleaved_full", "still_moving", "no_motion_adapter", "full_weights", "no_prior"}
CUSTOM_MOTIONS = ("left", "right", "up", "down")
BASE_PROMPTS = (("red", "circle", "left"), ("blue", "circle", "right"), ("green", "circle", "up"),
                ("yellow", "circle", "down"))
CUSTOM_COLUMNS = ("fidelity", "colour", "template", "dir_acc", "along_px", "travel_px", "speed_px", "frame_corr")
BASE_COLUMNS = ("colour_acc", "base_dir_acc", "leak")
COLUMNS = CUSTOM_COLUMNS + BASE_COLUMNS
HIGHER_IS_BETTER = {"leak": False}
PAIRED_COLUMNS = ("template", "fidelity", "dir_acc", "along_px", "travel_px", "speed_px", "frame_corr", "colour_acc", "leak")
SETTINGS = {  # full / quick
    "seeds": ((0, 1, 2), (0,)),
    "custom_motions": (CUSTOM_MOTIONS, ("left",)),
    "base_prompts": (BASE_PROMPTS, BASE_PROMPTS[1:2]),
    "sample_steps": (20, 4),
    "train_steps": (300, 4),
    "stills": (8, 2),
    "prior": (40, 4),
    "motion_adapter_steps": (200, 8),   # only when the models folder has no Motion Adapter
    "batch": (2, 1),
}
# The pre-registered comparison (benchmarks/README.md): its rows, seeds and settings, the premise
# its customization must meet and its pass criteria. A run that differs is labelled so.
PREREGISTERED = {"methods": ("base", "naive", "interpolation", "still_moving"), "seeds": tuple(range(10)),
                 "train_seeds": (0, 1, 2), "custom_motions": CUSTOM_MOTIONS, "sample_steps": 20, "cfg": 4.0,
                 "train_steps": 300, "stills": 8, "prior": 40, "batch": 2, "rank": 4, "lr": 1e-3,
                 "prior_ratio": 0.5, "caption_dropout": 0.0, "target_mode": "all", "min_timestep": 0}
PREMISE_LOSS = 0.75     # (a) naive dir_acc <= 0.75 x base dir_acc on the "sks" prompts
PREMISE_COLOUR = 0.8    # (b) the customized T2I's colour_acc on the base-world prompts
EPS = 1e-9              # scores are means of 0/1 outcomes: compare thresholds without float noise


def log(*a):
    print(*a, flush=True)


# --- generating --------------------------------------------------------------------------------

def generate(model, prompt, seed, steps, cfg, frames=tw.FRAMES, device="cpu"):
    return sampling.text_to_video(model, prompt, seed=seed, steps=steps, cfg=cfg, width=tw.SIZE, height=tw.SIZE,
                                  frames=frames, device=device)


def video(model, prompt, seed, s, device):
    """A generated video, or with ``model`` None the toy world's own clip for the prompt."""
    if model is None:
        return tw.to_float(tw.render_caption(prompt, seed).frames)
    return generate(model, prompt, seed, s["sample_steps"], s["cfg"], device=device)


def m1_stills(customized, n, steps, cfg, device):
    """Images of the customized T2I model (temporal layers bypassed, one frame): the paper's
    spatial training data."""
    clips = []
    with training.temporal_layers_off(customized.unet):
        for i in range(n):
            frame = generate(customized, tw.CUSTOM_CLASS_CAPTION, 100 + i, steps, cfg, frames=1, device=device)
            clips.append(data.Clip(frame, tw.CUSTOM_CLASS_CAPTION, f"customized T2I sample {i}"))
    return clips


# --- scoring -------------------------------------------------------------------------------------

def score_custom(frames, motion, refs):
    u8 = tw.as_uint8(frames)
    m = tw.motion_of(u8, motion)
    return {"fidelity": tw.star_score(u8), "colour": tw.custom_colour_score(u8),
            "template": tw.template_score(u8, refs),
            "dir_acc": m["dir_ok"], "along_px": m["along_px"], "travel_px": m["travel_px"], "speed_px": m["speed_px"],
            "frame_corr": scoring.frame_correlation(frames), "went": m["went"]}


def score_base(frames, colour, motion):
    u8 = tw.as_uint8(frames)
    m = tw.motion_of(u8, motion)
    return {"colour_acc": tw.colour_share(u8, colour), "base_dir_acc": m["dir_ok"], "leak": tw.star_score(u8),
            "went": m["went"]}


# --- the methods -----------------------------------------------------------------------------------

def build_methods(names, base, custom_path, motion_adapter, stills, prior, s, out, device):
    """name -> [(training seed or None, video model to sample, training seconds)]: a trained row
    once per seed of ``s["train_seeds"]``, the others once."""
    naive = inject.inject_checkpoint(base, custom_path, 1.0)
    fixed = {"truth": lambda: None, "base": lambda: base, "naive": lambda: naive,
             "interpolation": lambda: inject.inject_checkpoint(base, custom_path, 0.5)}
    models = {}
    for name in names:
        if name in fixed:
            models[name] = [(None, fixed[name](), 0.0)]
            continue
        seeds = s["train_seeds"]
        models[name] = []
        for seed in seeds:
            file = f"{name}.safetensors" if len(seeds) == 1 else f"{name}_seed{seed}.safetensors"
            models[name].append((seed,) + train_row(name, naive, base, motion_adapter, stills, prior,
                                                    dict(s, seed=seed), out / "adapters" / file, device))
    return models


def train_row(name, naive, base, motion_adapter, stills, prior, s, path, device):
    """One trained row with training seed ``s["seed"]``: (video model, training seconds)."""
    t0 = time.time()
    kind, ma, ratio, interleaved = SpatialAdapters, motion_adapter, s["prior_ratio"], False
    if name in ("interleaved", "interleaved_full"):
        ma, interleaved = None, True
        kind = FullDelta if name == "interleaved_full" else kind
    elif name == "no_motion_adapter":
        ma = MotionAdapter.for_model(base, motion_adapter.rank, seed=s["seed"])  # A_up = 0: identity
    elif name == "full_weights":
        kind = FullDelta
    elif name == "no_prior":
        ratio = 0.0
    lr = s["full_lr"] if kind is FullDelta else s["lr"]
    settings = training.TrainSettings(steps=s["train_steps"], learning_rate=lr, rank=s["rank"], batch=s["batch"],
                                      frames=tw.FRAMES, seed=s["seed"], prior_ratio=ratio,
                                      interleaved=interleaved, caption_dropout=s["caption_dropout"],
                                      target_mode=s["target_mode"], min_timestep=s["min_timestep"])
    res = training.train(naive, kind, settings, path, custom_clips=stills,
                         prior_clips=prior if ratio > 0 else (), motion_adapter=ma, device=device)
    model = res.adapter.apply(naive) if kind is FullDelta else naive.with_patch(AdapterPatch(res.adapter, 1.0, True))
    last = [l for _, l, src in res.losses if src == "custom"][-20:]
    log(f"  trained {name} (seed {s['seed']}): {res.step} steps in {res.seconds:.1f} s "
        f"(custom loss {np.mean(last):.4f})")
    return model, time.time() - t0


def _mean_se(values):
    """Mean and standard error (nan for fewer than 2 values; both nan for none)."""
    v = np.asarray(values, dtype=float)
    if not len(v):
        return float("nan"), float("nan")
    return float(v.mean()), float(v.std(ddof=1) / math.sqrt(len(v))) if len(v) > 1 else float("nan")


def score_run(model, s, refs, device, name, videos):
    """One model on every prompt and seed: {"scores", "se" (over the videos), "custom_videos",
    "base_videos", "sample_s"}."""
    t0 = time.time()
    rows_c, rows_b = [], []
    for motion in s["custom_motions"]:
        prompt = tw.custom_caption(motion)
        for seed in s["seeds"]:
            frames = video(model, prompt, seed, s, device)
            rows_c.append(dict(score_custom(frames, motion, refs), prompt=prompt, seed=seed))
            videos.setdefault(("custom", name), frames)
    for colour, shape, motion in s["base_prompts"]:
        prompt = tw.caption(colour, shape, motion)
        for seed in s["seeds"]:
            frames = video(model, prompt, seed, s, device)
            rows_b.append(dict(score_base(frames, colour, motion), prompt=prompt, seed=seed))
            videos.setdefault(("base", name), frames)
    agg, se = {}, {}
    for k in COLUMNS:
        agg[k], se[k] = _mean_se([r[k] for r in (rows_c if k in CUSTOM_COLUMNS else rows_b)])
    return {"scores": agg, "se": se, "custom_videos": rows_c, "base_videos": rows_b,
            "sample_s": round(time.time() - t0, 1)}


def aggregate(runs):
    """One row from a row's runs [(training seed or None, run)]: a single run as it is (standard
    errors over its videos); several training seeds as the mean over the seeds with the standard
    error over the seeds, each video's scores the mean over the seeds (for the paired table), and
    every seed's run kept under ``per_seed``."""
    if len(runs) == 1:
        seed, run = runs[0]
        row = dict(run, se_over="videos")
        if seed is not None:
            row["train_seeds"] = [seed]
        return row
    scores, se = {}, {}
    for k in COLUMNS:
        scores[k], se[k] = _mean_se([r["scores"][k] for _, r in runs])
    row = {"scores": scores, "se": se, "se_over": "training seeds", "train_seeds": [seed for seed, _ in runs],
           "sample_s": round(sum(r["sample_s"] for _, r in runs), 1)}
    for part in ("custom_videos", "base_videos"):
        merged = []
        for i, first in enumerate(runs[0][1][part]):
            each = [r[part][i] for _, r in runs]
            assert all((e["prompt"], e["seed"]) == (first["prompt"], first["seed"]) for e in each)
            merged.append({k: (v if k in ("prompt", "seed") else float(np.mean([e[k] for e in each])))
                           for k, v in first.items() if k != "went"})
        row[part] = merged
    row["per_seed"] = {str(seed): run for seed, run in runs}
    return row


def evaluate(models, s, refs, device):
    results, videos = {}, {}
    for name, entries in models.items():
        runs = []
        for seed, model, train_s in entries:
            run = score_run(model, s, refs, device, name, videos)
            run["scores"]["train_s"] = round(train_s, 1)
            runs.append((seed, run))
            tag = "" if seed is None or len(entries) == 1 else f" (training seed {seed})"
            log(f"  scored {name}{tag}: " + ", ".join(f"{k} {run['scores'][k]:.3f}" for k in COLUMNS))
        results[name] = aggregate(runs)
        results[name]["scores"]["train_s"] = round(float(np.mean([r["scores"]["train_s"] for _, r in runs])), 1)
    return results, videos


def t2i_colour(customized, s, device):
    """The customized T2I model itself (temporal layers bypassed, one frame) on the base-world
    prompts: [{prompt, seed, colour_acc}], colour_acc the share of the subject's pixels nearest
    the named colour. The premise that the customization left the base world drawable."""
    rows = []
    with training.temporal_layers_off(customized.unet):
        for colour, shape, motion in BASE_PROMPTS:
            prompt = tw.caption(colour, shape, motion)
            for seed in s["seeds"]:
                frame = generate(customized, prompt, seed, s["sample_steps"], s["cfg"], frames=1, device=device)
                rows.append({"prompt": prompt, "seed": seed, "colour_acc": tw.colour_share(tw.as_uint8(frame), colour)})
    return rows


def premise(results, t2i_rows):
    """The pre-registered premise: (a) naive injection loses direction on the "sks" prompts
    (dir_acc at most PREMISE_LOSS x the base's); (b) the customized T2I still draws the
    base-world prompts' colours (mean colour_acc at least PREMISE_COLOUR)."""
    base, naive = results["base"]["scores"]["dir_acc"], results["naive"]["scores"]["dir_acc"]
    colour, colour_se = _mean_se([r["colour_acc"] for r in t2i_rows])
    return {"base_dir_acc": base, "naive_dir_acc": naive, "naive_over_base": naive / base if base else float("nan"),
            "a_met": bool(naive <= PREMISE_LOSS * base + EPS),
            "t2i_colour_acc": colour, "t2i_colour_acc_se": colour_se, "t2i_images": len(t2i_rows),
            "b_met": bool(colour >= PREMISE_COLOUR - EPS)}


def criteria(results):
    """The four pass criteria: [(label, holds)] on the rows' means."""
    sm, nv, ip = (results[n]["scores"] for n in ("still_moving", "naive", "interpolation"))
    return [
        (f"(1) dir_acc(still_moving) − dir_acc(naive) = {sm['dir_acc']:.3f} − {nv['dir_acc']:.3f} = "
         f"{sm['dir_acc'] - nv['dir_acc']:+.3f} ≥ 0.15", sm["dir_acc"] - nv["dir_acc"] >= 0.15 - EPS),
        (f"(2) template(still_moving) = {sm['template']:.3f} ≥ template(naive) − 0.03 = "
         f"{nv['template'] - 0.03:.3f}",
         sm["template"] >= nv["template"] - 0.03 - EPS),
        (f"(3) template(still_moving) = {sm['template']:.3f} > template(interpolation) = {ip['template']:.3f}",
         sm["template"] > ip["template"] + EPS),
        (f"(4) dir_acc(still_moving) = {sm['dir_acc']:.3f} ≥ dir_acc(interpolation) − 0.05 = "
         f"{ip['dir_acc'] - 0.05:.3f}", sm["dir_acc"] >= ip["dir_acc"] - 0.05 - EPS),
    ]


def differences(s, names, premise_only):
    """The run's settings that differ from the pre-registration."""
    mine = dict(s, methods=tuple(names))
    keys = [k for k in PREREGISTERED if not (premise_only and k in ("methods", "train_seeds", "train_steps", "stills",
                                                                     "prior", "batch", "rank", "lr", "prior_ratio",
                                                                     "caption_dropout", "target_mode",
                                                                     "min_timestep"))]
    return [k for k in keys if (tuple(mine[k]) if isinstance(mine[k], (list, tuple)) else mine[k])
            != PREREGISTERED[k]]


def verdict(results, prem, differ, premise_only=False):
    """The verdict's lines: the premise items, then (unless ``premise_only``) each criterion and
    the outcome."""
    ok = {True: "met", False: "NOT met"}
    lines = []
    if differ:
        lines.append(f"NOT the pre-registered run: {', '.join(differ)} differ from benchmarks/README.md")
    lines += [f"premise (a): dir_acc(naive) = {prem['naive_dir_acc']:.3f} ≤ {PREMISE_LOSS} × dir_acc(base) = "
              f"{PREMISE_LOSS * prem['base_dir_acc']:.3f}: {ok[prem['a_met']]}",
              f"premise (b): the customized T2I's colour_acc on the base-world prompts = {prem['t2i_colour_acc']:.3f} "
              f"± {prem['t2i_colour_acc_se']:.3f} ({prem['t2i_images']} images) ≥ {PREMISE_COLOUR}: "
              f"{ok[prem['b_met']]}"]
    if premise_only:
        return lines
    if not (prem["a_met"] and prem["b_met"]):
        lines.append("the premise is not met: this customization does not fit the pre-registration")
    held = criteria(results)
    lines += [f"{label}: {'PASS' if holds else 'FAIL'}" for label, holds in held]
    failed = [label.split(" ")[0] for label, holds in held if not holds]
    lines.append("outcome: PASS (all four criteria hold)" if not failed
                 else f"outcome: FAIL ({', '.join(failed)} fail)")
    return lines


# --- reporting -------------------------------------------------------------------------------------

def table(results, columns=COLUMNS):
    """Means, and ± their standard errors where the run has them (over the training seeds for a
    row trained with several, else over its videos)."""
    head = "| method | " + " | ".join(columns) + " | train s |"
    lines = [head, "|" + "---|" * (len(columns) + 2)]
    for name, r in results.items():
        sc, se = r["scores"], r.get("se", {})
        cell = [f"{sc[k]:.3f}" + (f" ± {se[k]:.3f}" if math.isfinite(se.get(k, float("nan"))) else "")
                for k in columns]
        lines.append(f"| {name} | " + " | ".join(cell) + f" | {sc['train_s']:.0f} |")
    return "\n".join(lines)


def paired(results, ref="still_moving"):
    """Each method minus ``ref`` on the same prompt and seed: {method: {column: (mean, standard
    error, pairs)}}. The seeds are shared, so pairing removes most of the seed's own spread."""
    ref = ref if ref in results else next(iter(results))

    def keyed(r, part):
        return {(v["prompt"], v["seed"]): v for v in r[part]}

    theirs = {part: keyed(results[ref], part) for part in ("custom_videos", "base_videos")}
    rows = {}
    for name, r in results.items():
        if name == ref:
            continue
        mine = {part: keyed(r, part) for part in theirs}
        row = {}
        for k in PAIRED_COLUMNS:
            part = "custom_videos" if k in CUSTOM_COLUMNS else "base_videos"
            d = np.array([v[k] - theirs[part][key][k] for key, v in mine[part].items() if key in theirs[part]],
                         dtype=float)
            se = float(d.std(ddof=1) / math.sqrt(len(d))) if len(d) > 1 else float("nan")
            row[k] = (float(d.mean()) if len(d) else float("nan"), se, len(d))
        rows[name] = row
    return ref, rows


def paired_table(results, ref="still_moving"):
    ref, rows = paired(results, ref)
    n = next((c[2] for row in rows.values() for c in row.values()), 0)
    lines = [f"each method minus {ref}, same prompt and seed: mean ± standard error over {n} pairs",
             "", "| method | " + " | ".join(PAIRED_COLUMNS) + " |", "|" + "---|" * (len(PAIRED_COLUMNS) + 1)]
    for name, row in rows.items():
        lines.append(f"| {name} | " + " | ".join(
            f"{m:+.3f} ± {se:.3f}" if math.isfinite(se) else f"{m:+.3f}" for m, se, _ in row.values()) + " |")
    return "\n".join(lines)


def plot(results, path):
    """One panel per score, a bar per method (PIL only)."""
    from PIL import Image, ImageDraw
    names = list(results)
    cols, pw, row_h = 3, 330, 16
    ph = 26 + row_h * len(names)
    rows = math.ceil(len(COLUMNS) / cols)
    img = Image.new("RGB", (cols * pw, rows * ph + 6), (250, 250, 250))
    d = ImageDraw.Draw(img)
    palette = [(90, 90, 90), (200, 80, 60), (230, 150, 50), (120, 120, 200), (40, 150, 80), (150, 90, 170),
               (60, 160, 190), (170, 170, 60)]
    for i, key in enumerate(COLUMNS):
        x0, y0 = (i % cols) * pw + 6, (i // cols) * ph + 4
        vals = [v if math.isfinite(v) else 0.0 for v in (results[n]["scores"][key] for n in names)]  # nan: not measured
        lo, hi = min(0.0, min(vals)), max(1e-9, max(vals))
        better = "higher" if HIGHER_IS_BETTER.get(key, True) else "lower"
        d.text((x0, y0), f"{key} ({better} is better)", fill=(0, 0, 0))
        for j, (n, v) in enumerate(zip(names, vals)):
            y = y0 + 18 + j * row_h
            d.text((x0, y), n[:17], fill=(40, 40, 40))
            bx = x0 + 118
            zero = bx + (150 * (0 - lo) / (hi - lo))
            end = bx + (150 * (v - lo) / (hi - lo))
            d.rectangle([min(zero, end), y + 2, max(zero, end), y + row_h - 4], fill=palette[j % len(palette)])
            d.text((bx + 156, y), f"{v:.3f}", fill=(40, 40, 40))
    img.save(path)


def grids(videos, names, out, zoom=4):
    """PNG grids (a row of frames per method) and an animated GIF (a tile per method), pixels
    enlarged ``zoom`` times (nearest: the 32 px frames stay sharp)."""
    from PIL import Image, ImageDraw
    label_w = 120
    for which in ("custom", "base"):
        rows = [(n, tw.as_uint8(videos[(which, n)]).repeat(zoom, 1).repeat(zoom, 2)) for n in names if (which, n) in videos]
        if not rows:
            continue
        f, h, w = rows[0][1].shape[:3]
        img = Image.new("RGB", (label_w + f * w, len(rows) * h), (255, 255, 255))
        d = ImageDraw.Draw(img)
        for r, (n, u8) in enumerate(rows):
            d.text((4, r * h + h // 2 - 6), n, fill=(0, 0, 0))
            for t in range(f):
                img.paste(Image.fromarray(u8[t]), (label_w + t * w, r * h))
        img.save(out / f"grid_{which}.png")
        if which == "custom":
            cols = 4
            tiles = []
            for t in range(f):
                frame = Image.new("RGB", (cols * w, math.ceil(len(rows) / cols) * (h + 12)), (255, 255, 255))
                dd = ImageDraw.Draw(frame)
                for k, (n, u8) in enumerate(rows):
                    x, y = (k % cols) * w, (k // cols) * (h + 12)
                    dd.text((x + 2, y), n, fill=(0, 0, 0))
                    frame.paste(Image.fromarray(u8[t]), (x, y + 12))
                tiles.append(frame)
            write_video(tiles, out / "grid_custom.gif", fps=1000 / 150)


# --- why: the injection report on the trained adapters ----------------------------------------------

def diagnose(run_dir):
    """The injection report (adapters.injection_report) for a saved run's Spatial Adapters: per
    block, how far naive injection moved the features entering the temporal layers from the
    base model's, how far they are with each seed's adapters, and the share closed. The 4 "sks"
    prompts, prompt seed 0, t = the report's defaults, 8 frames at 32 px."""
    from adapters.injection_report import injection_report
    from adapters.files import read_metadata
    run_dir = Path(run_dir)
    report = json.loads((run_dir / "results.json").read_text())
    models_dir = Path(report["models"])
    base = loading.load_video_model(models_dir / tw.MODEL_FILES["base"], models_dir / tw.MODEL_FILES["motion"])
    naive = inject.inject_checkpoint(base, models_dir / tw.MODEL_FILES["custom"], 1.0)
    prompts = [tw.custom_caption(m) for m in CUSTOM_MOTIONS]
    files = sorted(p for p in (run_dir / "adapters").glob("*.safetensors")
                   if read_metadata(p).get("kind") == SpatialAdapters.kind)
    if not files:
        sys.exit(f"{run_dir / 'adapters'} holds no Spatial Adapters: give a run with a trained Spatial Adapters row")
    reports = {p.stem: injection_report(naive, adapters=SpatialAdapters.load(p), prompts=prompts, seed=0,
                                        width=tw.SIZE, height=tw.SIZE, frames=tw.FRAMES) for p in files}
    first = next(iter(reports.values()))
    names = list(reports)
    lines = ["| block | shift (naive) | " + " | ".join(f"after: {n}" for n in names) + " | closed (mean) |",
             "|" + "---|" * (len(names) + 3)]
    rows = [(b.block, b.shift, [r.blocks[i] for r in reports.values()]) for i, b in enumerate(first.blocks)]
    rows.append(("overall (mean of blocks)", first.shift, list(reports.values())))
    for block, shift, each in rows:
        closed = [e.closed for e in each if e.closed is not None]
        lines.append(f"| {block} | {shift:.3f} | " + " | ".join(f"{e.shift_after:.3f}" for e in each)
                     + (f" | {100 * np.mean(closed):.0f}% |" if closed else " | - |"))
    text = "\n".join(lines)
    log(text)
    path = write_text(unique_path(run_dir / "diagnosis.md"), text + "\n")
    log(f"wrote {path}")
    return reports


# --- main ------------------------------------------------------------------------------------------

def load_models(models_dir, s, out, device):
    models_dir = Path(models_dir)
    missing = [f for k, f in tw.MODEL_FILES.items() if k != "adapter" and not (models_dir / f).is_file()]
    if missing:
        sys.exit(f"{models_dir} lacks {', '.join(missing)}: give --models the folder of the toy models "
                 "(scripts/train_toy_models.py writes them).")
    base = loading.load_video_model(models_dir / tw.MODEL_FILES["base"], models_dir / tw.MODEL_FILES["motion"])
    ma_path = models_dir / tw.MODEL_FILES["adapter"]
    if ma_path.is_file():
        ma = MotionAdapter.load(ma_path)
        ma.check(base, ma_path)
        log(f"Motion Adapter: {ma_path.name} (rank {ma.rank})")
    else:  # train one the way the toy models' script does: frozen toy clips
        clips = data.encode_clips(base.vae, tw.prior_videos(s["prior"]), tw.SIZE, tw.SIZE)
        settings = training.TrainSettings(steps=s["motion_adapter_steps"], learning_rate=1e-3, rank=s["rank"],
                                          frames=tw.FRAMES, seed=s["seed"])
        ma = training.train(base, MotionAdapter, settings, out / "adapters" / "motion.safetensors", custom_clips=clips,
                            device=device).adapter
        log(f"Motion Adapter: none in {models_dir}, trained one ({settings.steps} steps)")
    return base, models_dir / tw.MODEL_FILES["custom"], ma


def configure(args):
    """The run's settings and rows from the command line: (settings, row names)."""
    quick = 1 if args.quick else 0
    s = {k: v[quick] for k, v in SETTINGS.items()}
    prereg = args.preregistered or args.premise_only
    for key in ("train_steps", "sample_steps", "stills"):
        if getattr(args, key) is not None:
            s[key] = getattr(args, key)
    if args.seeds is not None:
        s["seeds"] = tuple(range(args.seeds))
    elif prereg:
        s["seeds"] = PREREGISTERED["seeds"]
    s.update(cfg=args.cfg, lr=args.lr, full_lr=args.full_lr, rank=args.rank, seed=0, prior_ratio=args.prior_ratio,
             caption_dropout=args.caption_dropout, target_mode=args.target_mode, min_timestep=args.min_timestep,
             train_seeds=args.train_seeds or (PREREGISTERED["train_seeds"] if prereg else (0,)))
    if args.batch is not None:
        s["batch"] = args.batch
    methods = args.methods or ",".join(PREREGISTERED["methods"] if prereg else METHODS)
    if args.premise_only:  # the premise needs base and naive on the "sks" prompts, and the T2I frames
        methods, s["base_prompts"] = "base,naive", ()
    names = [m.strip() for m in methods.split(",") if m.strip()]
    if prereg and not {"base", "naive"} <= set(names) or args.preregistered and not args.premise_only and not \
            set(PREREGISTERED["methods"]) <= set(names):
        sys.exit(f"--preregistered needs the rows {', '.join(PREREGISTERED['methods'])} in --methods")
    unknown = [m for m in names if m not in METHODS]
    if unknown:
        sys.exit(f"unknown methods {unknown}; choose from {', '.join(METHODS)}")
    if args.motion_scale and not {"naive", "still_moving"} & set(names):
        sys.exit("--motion-scale adds rows of naive and still_moving: put one of them in --methods")
    return s, names


def run(args):
    s, names = configure(args)
    quick = 1 if args.quick else 0
    prereg = args.preregistered or args.premise_only
    out = unique_path(Path(args.out))
    (out / "adapters").mkdir(parents=True)
    t0 = time.time()
    device = args.device
    log(f"toy comparison ({'quick' if quick else 'full'}): {len(names)} methods, "
        f"{len(s['custom_motions']) + len(s['base_prompts'])} prompts x {len(s['seeds'])} seeds -> {out}")
    base, custom_path, ma = load_models(args.models, s, out, device)
    naive = inject.inject_checkpoint(base, custom_path, 1.0)
    t1 = time.time()
    stills = prior = ()
    if TRAINED & set(names):
        stills = data.encode_clips(base.vae, m1_stills(naive, s["stills"], s["sample_steps"], s["cfg"], device),
                                   tw.SIZE, tw.SIZE)
        prior = data.encode_clips(base.vae, tw.prior_videos(s["prior"]), tw.SIZE, tw.SIZE)
        log(f"data: {len(stills)} stills sampled from the customized T2I, {len(prior)} prior clips "
            f"({time.time() - t1:.1f} s)")
    refs = tw.custom_templates()
    models = build_methods(names, base, custom_path, ma, stills, prior, s, out, device)
    # the Motion Adapter kept at inference as the motion slider (paper §3.2: α < 0, more motion),
    # on naive injection too, so a gain can be told apart from the slider's own
    for name in [n for n in ("naive", "still_moving") if n in models]:
        for alpha in args.motion_scale:
            models[f"{name} α={alpha:+g}"] = [(seed, model.with_patch(AdapterPatch(ma, alpha)), train_s)
                                              for seed, model, train_s in models[name]]
    results, videos = evaluate(models, s, refs, device)
    text = table(results)
    log("\n" + text)
    report = {"setting": "quick" if quick else "full", "models": str(Path(args.models).resolve()),
              "settings": {k: (list(v) if isinstance(v, tuple) else v) for k, v in s.items()},
              "threads": torch.get_num_threads(), "results": results}
    if prereg:
        t2i = t2i_colour(naive, s, device)
        prem = premise(results, t2i)
        lines = verdict(results, prem, differences(s, names, args.premise_only), args.premise_only)
        log("\n" + "\n".join(lines))
        report.update(premise=prem, t2i_images=t2i, verdict=lines)
        write_text(out / "verdict.md", "\n".join(f"- {l}" for l in lines) + "\n")
    report["seconds"] = round(time.time() - t0, 1)
    write_text(out / "results.json", json.dumps(report, indent=1, default=str))
    write_text(out / "table.md", text + "\n")
    pairs = paired_table(results)
    log("\n" + pairs)
    write_text(out / "paired.md", pairs + "\n")
    plot(results, out / "plot.png")
    grids(videos, list(models), out)
    log(f"wrote {out} in {time.time() - t0:.0f} s")
    return out


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default=str(REPO / "embedded"), help="folder of the toy models")
    ap.add_argument("--out", default=str(REPO / "output" / "toy_comparison"), help="a new folder is made per run")
    ap.add_argument("--quick", action="store_true", help="cut-down setting for CI (under ~3 min)")
    ap.add_argument("--methods", help=f"rows, comma-separated (default: all, {', '.join(METHODS)}; "
                    "with --preregistered its four)")
    ap.add_argument("--seeds", type=int, help="number of seeds (0..n-1)")
    ap.add_argument("--train-steps", dest="train_steps", type=int)
    ap.add_argument("--sample-steps", dest="sample_steps", type=int)
    ap.add_argument("--stills", type=int, help="images sampled from the customized T2I for the trained rows (full 8)")
    ap.add_argument("--cfg", type=float, default=4.0)
    ap.add_argument("--lr", type=float, default=1e-3, help="adapters' learning rate")
    ap.add_argument("--full-lr", dest="full_lr", type=float, default=2e-4, help="full_weights' learning rate")
    ap.add_argument("--rank", type=int, default=4)
    ap.add_argument("--batch", type=int, help="training batch (full 2, quick 1)")
    ap.add_argument("--prior-ratio", dest="prior_ratio", type=float, default=0.5)
    ap.add_argument("--caption-dropout", dest="caption_dropout", type=float, default=0.0,
                    help="share of training examples with the empty prompt")
    ap.add_argument("--motion-scale", dest="motion_scale", type=lambda v: [float(x) for x in v.split(",")],
                    default=[], help="e.g. -0.5,-1: also score naive and still_moving with the Motion Adapter kept at these α")
    ap.add_argument("--train-seeds", dest="train_seeds", type=lambda v: tuple(int(x) for x in v.split(",")),
                    help="e.g. 0,1,2: each trained row trained once per seed, reported as mean ± standard error "
                         "(default 0; with --preregistered 0,1,2)")
    ap.add_argument("--target-mode", dest="target_mode", default="all", choices=("all", "attention", "block_outputs"),
                    help="which injected layers get Spatial Adapters")
    ap.add_argument("--min-timestep", dest="min_timestep", type=int, default=0,
                    help="adapters train on timesteps drawn from [this, 1000)")
    ap.add_argument("--preregistered", action="store_true",
                    help="the comparison pre-registered in benchmarks/README.md: its rows and seeds, the premise "
                         "measured, a verdict per criterion (verdict.md)")
    ap.add_argument("--premise-only", dest="premise_only", action="store_true",
                    help="with --preregistered: measure the premise only (base, naive, the customized T2I)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--report", type=Path, help="print the tables of a saved run's results.json; runs nothing")
    ap.add_argument("--diagnose", type=Path, help="a saved run's folder: the injection report on its trained "
                                                  "Spatial Adapters, per block (diagnosis.md)")
    return ap.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if args.report:
        report = json.loads(args.report.read_text())
        print(table(report["results"]) + "\n\n" + paired_table(report["results"]))
        if report.get("verdict"):
            print("\n" + "\n".join(report["verdict"]))
        return 0
    if args.diagnose:
        diagnose(args.diagnose)
        return 0
    run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
