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

    OMP_NUM_THREADS=1 python benchmarks/bench_toy_comparison.py            # shipped models in embedded/
    OMP_NUM_THREADS=1 python benchmarks/bench_toy_comparison.py --quick
    python benchmarks/bench_toy_comparison.py --report output/toy_comparison/results.json
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


def prior_videos(n):
    return [data.Clip(tw.to_float(c.frames), c.caption, f"toy clip {i}") for i, c in enumerate(tw.dataset(n, seed=7))]


# --- scoring -------------------------------------------------------------------------------------

def _u8(frames):
    return np.clip(np.rint(frames.numpy() * 255), 0, 255).astype(np.uint8)


def motion_of(frames_u8, motion):
    centres, area = tw.locate(frames_u8)
    seen = area > 0
    pts = centres[seen]
    speed = float(np.linalg.norm(np.diff(pts, axis=0), axis=1).mean()) if len(pts) > 1 else 0.0
    dx, dy = (pts[-1] - pts[0]).tolist() if len(pts) > 1 else (0.0, 0.0)
    ux, uy = tw.MOTIONS[motion]
    went = scoring.direction_of(dx / tw.SIZE, dy / tw.SIZE)
    return {"along_px": dx * ux + dy * uy, "travel_px": float(np.hypot(dx, dy)), "speed_px": speed,
            "dir_ok": float(went == motion), "went": went}


def score_custom(frames, motion, refs):
    u8 = _u8(frames)
    m = motion_of(u8, motion)
    return {"fidelity": tw.star_score(u8), "colour": tw.custom_colour_score(u8),
            "template": tw.template_score(u8, refs),
            "dir_acc": m["dir_ok"], "along_px": m["along_px"], "travel_px": m["travel_px"], "speed_px": m["speed_px"],
            "frame_corr": scoring.frame_correlation(frames), "went": m["went"]}


def score_base(frames, colour, motion):
    u8 = _u8(frames)
    m = motion_of(u8, motion)
    return {"colour_acc": tw.colour_share(u8, colour), "base_dir_acc": m["dir_ok"], "leak": tw.star_score(u8),
            "went": m["went"]}


# --- the methods -----------------------------------------------------------------------------------

def build_methods(names, base, custom_path, motion_adapter, stills, prior, s, out, device):
    """name -> (video model to sample, training seconds)."""
    naive = inject.inject_checkpoint(base, custom_path, 1.0)
    models = {}
    for name in names:
        t0 = time.time()
        if name == "truth":
            models[name] = (None, 0.0)
            continue
        if name == "base":
            models[name] = (base, 0.0)
            continue
        if name == "naive":
            models[name] = (naive, 0.0)
            continue
        if name == "interpolation":
            models[name] = (inject.inject_checkpoint(base, custom_path, 0.5), 0.0)
            continue
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
                                          interleaved=interleaved, caption_dropout=s["caption_dropout"])
        res = training.train(naive, kind, settings, out / "adapters" / f"{name}.safetensors", custom_clips=stills,
                             prior_clips=prior if ratio > 0 else (), motion_adapter=ma, device=device)
        model = res.adapter.apply(naive) if kind is FullDelta else naive.with_patch(AdapterPatch(res.adapter, 1.0, True))
        last = [l for _, l, src in res.losses if src == "custom"][-20:]
        log(f"  trained {name}: {res.step} steps in {res.seconds:.1f} s (custom loss {np.mean(last):.4f})")
        models[name] = (model, time.time() - t0)
    return models


def evaluate(models, s, refs, device):
    results, videos = {}, {}
    for name, (model, train_s) in models.items():
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
        agg = {k: float(np.mean([r[k] for r in rows_c])) for k in CUSTOM_COLUMNS}
        agg.update({k: float(np.mean([r[k] for r in rows_b])) for k in BASE_COLUMNS})
        agg["train_s"] = round(train_s, 1)
        results[name] = {"scores": agg, "custom_videos": rows_c, "base_videos": rows_b,
                         "sample_s": round(time.time() - t0, 1)}
        log(f"  scored {name}: " + ", ".join(f"{k} {agg[k]:.3f}" for k in COLUMNS))
    return results, videos


# --- reporting -------------------------------------------------------------------------------------

def table(results):
    head = "| method | " + " | ".join(COLUMNS) + " | train s |"
    lines = [head, "|" + "---|" * (len(COLUMNS) + 2)]
    for name, r in results.items():
        sc = r["scores"]
        lines.append(f"| {name} | " + " | ".join(f"{sc[k]:.3f}" for k in COLUMNS) + f" | {sc['train_s']:.0f} |")
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
            row[k] = (float(d.mean()), se, len(d))
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
        vals = [results[n]["scores"][key] for n in names]
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
        rows = [(n, _u8(videos[(which, n)]).repeat(zoom, 1).repeat(zoom, 2)) for n in names if (which, n) in videos]
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
        clips = data.encode_clips(base.vae, prior_videos(s["prior"]), tw.SIZE, tw.SIZE)
        settings = training.TrainSettings(steps=s["motion_adapter_steps"], learning_rate=1e-3, rank=s["rank"],
                                          frames=tw.FRAMES, seed=s["seed"])
        ma = training.train(base, MotionAdapter, settings, out / "adapters" / "motion.safetensors", custom_clips=clips,
                            device=device).adapter
        log(f"Motion Adapter: none in {models_dir}, trained one ({settings.steps} steps)")
    return base, models_dir / tw.MODEL_FILES["custom"], ma


def run(args):
    quick = 1 if args.quick else 0
    s = {k: v[quick] for k, v in SETTINGS.items()}
    for key in ("train_steps", "sample_steps"):
        if getattr(args, key) is not None:
            s[key] = getattr(args, key)
    if args.seeds is not None:
        s["seeds"] = tuple(range(args.seeds))
    s.update(cfg=args.cfg, lr=args.lr, full_lr=args.full_lr, rank=args.rank, seed=0, prior_ratio=args.prior_ratio,
             caption_dropout=args.caption_dropout)
    if args.batch is not None:
        s["batch"] = args.batch
    names = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in names if m not in METHODS]
    if unknown:
        sys.exit(f"unknown methods {unknown}; choose from {', '.join(METHODS)}")
    if args.motion_scale and not {"naive", "still_moving"} & set(names):
        sys.exit("--motion-scale adds rows of naive and still_moving: put one of them in --methods")
    out = unique_path(Path(args.out))
    (out / "adapters").mkdir(parents=True)
    t0 = time.time()
    device = args.device
    log(f"toy comparison ({'quick' if quick else 'full'}): {len(names)} methods, "
        f"{len(s['custom_motions']) + len(s['base_prompts'])} prompts x {len(s['seeds'])} seeds -> {out}")
    base, custom_path, ma = load_models(args.models, s, out, device)
    naive = inject.inject_checkpoint(base, custom_path, 1.0)
    t1 = time.time()
    stills = data.encode_clips(base.vae, m1_stills(naive, s["stills"], s["sample_steps"], s["cfg"], device),
                               tw.SIZE, tw.SIZE)
    prior = data.encode_clips(base.vae, prior_videos(s["prior"]), tw.SIZE, tw.SIZE)
    log(f"data: {len(stills)} stills sampled from the customized T2I, {len(prior)} prior clips "
        f"({time.time() - t1:.1f} s)")
    refs = tw.custom_templates()
    models = build_methods(names, base, custom_path, ma, stills, prior, s, out, device)
    # the Motion Adapter kept at inference as the motion slider (paper §3.2: α < 0, more motion),
    # on naive injection too, so a gain can be told apart from the slider's own
    for name in [n for n in ("naive", "still_moving") if n in models]:
        model, train_s = models[name]
        for alpha in args.motion_scale:
            models[f"{name} α={alpha:+g}"] = (model.with_patch(AdapterPatch(ma, alpha)), train_s)
    results, videos = evaluate(models, s, refs, device)
    text = table(results)
    log("\n" + text)
    report = {"setting": "quick" if quick else "full", "models": str(Path(args.models).resolve()),
              "settings": {k: (list(v) if isinstance(v, tuple) else v) for k, v in s.items()},
              "threads": torch.get_num_threads(), "seconds": round(time.time() - t0, 1), "results": results}
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
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--seeds", type=int, help="number of seeds (0..n-1)")
    ap.add_argument("--train-steps", dest="train_steps", type=int)
    ap.add_argument("--sample-steps", dest="sample_steps", type=int)
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
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--report", type=Path, help="print the tables of a saved run's results.json; runs nothing")
    return ap.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if args.report:
        results = json.loads(args.report.read_text())["results"]
        print(table(results) + "\n\n" + paired_table(results))
        return 0
    run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
