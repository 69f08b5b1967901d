"""Does the injection report predict which customizations lose motion? Measured on the toy world.

For customizations of different kinds and strengths of the shipped toy models, the script takes
the injection report's overall shift (``adapters.injection_report``: how far the features
entering the temporal layers moved from the base model's; no video sampled) and then samples
videos from the video model with each customization naively injected, and measures how far the
subject travels (``toyworld.locate``, first to last frame). It prints both for every
customization and the rank correlation (Spearman) between the shift and the motion lost.

Customizations (all of ``embedded/toy_custom_sks_star.safetensors``, or ``--custom``):
  interp w        weight interpolation base -> customized (``inject_checkpoint(weight=w)``)
  delta x s       the customization's weight change scaled by s > 1 (a stronger fine-tune)
  lora r x s      each changed weight's change cut to rank r (SVD, weights of 2 or more dims,
                  biases and norms left as the base's), scaled by s: a LoRA of that customization
  down / up x s   the change on the down and mid blocks only, or on the up blocks only
  noise x s       a random change of the same layers, each tensor's norm s times the
                  customization's (a change that learned nothing)

Motion, per video ("a sks star moving left/right/up/down" x seeds; 20 Euler steps, CFG 4):
  travel_px   how far the subject's centre got, any direction
  along_px    its displacement along the caption's direction
  dir_acc     share of videos that go the caption's way
  lost        1 - travel_px / the base model's travel_px (the same prompts and seeds)

``--spatial-steps N`` also trains Spatial Adapters (as ``bench_toy_comparison.py`` trains its
still_moving row: stills sampled from the customized T2I at α = 1, toy clips as prior videos at
α = 0, the shipped Motion Adapter) for naive injection and for ``delta x 2``, and reports how much
of the shift they closed (``closed``) beside the travel they got back.

    OMP_NUM_THREADS=1 python benchmarks/bench_injection_report.py              # 4 seeds
    OMP_NUM_THREADS=1 python benchmarks/bench_injection_report.py --spatial-steps 300

``--real``: the cost at SD1.5 size instead: one report on the real-size random files
(``_common.ensure_model_files("real")``) with a random change of the spatial attention weights
injected, timed against one plain UNet call of the same batch (``--real-width``, 8 frames).

    python benchmarks/bench_injection_report.py --real --threads 2 --real-width 256
    OMP_NUM_THREADS=1 python benchmarks/bench_injection_report.py --quick      # 1 seed, fewer rows
"""
import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from adapters import inject, loading, sampling, scoring  # noqa: E402
from toyworld import world as tw  # noqa: E402
from adapters.injection_report import injection_report  # noqa: E402
from adapters.loading import read_unet_weights  # noqa: E402

MOTIONS = ("left", "right", "up", "down")
FULL = {"interp": (0.25, 0.5, 0.75, 1.0), "delta": (1.5, 2.0, 3.0), "lora": ((4, 1.0), (4, 2.0), (4, 4.0)),
        "part": (("down", 1.0), ("up", 1.0), ("down", 2.0), ("up", 2.0)), "noise": (0.5, 1.0)}
QUICK = {"interp": (0.5, 1.0), "delta": (2.0,), "lora": ((4, 2.0),), "part": (("up", 2.0),), "noise": (1.0,)}
PARTS = {"down": ("down_blocks.", "mid_block."), "up": ("up_blocks.",)}


def log(*a):
    print(*a, flush=True)


def rank(xs):
    """Ranks from 1, ties given their mean rank."""
    xs = np.asarray(xs, dtype=float)
    order = np.argsort(xs, kind="stable")
    ranks = np.empty(len(xs))
    ranks[order] = np.arange(1, len(xs) + 1)
    for v in np.unique(xs):
        tie = xs == v
        ranks[tie] = ranks[tie].mean()
    return ranks


def spearman(a, b):
    ra, rb = rank(a), rank(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    den = np.sqrt((ra ** 2).sum() * (rb ** 2).sum())
    return float((ra * rb).sum() / den) if den > 0 else float("nan")


def low_rank(delta, r):
    """``delta`` cut to rank ``r`` (a 2-D view: out x everything else), or None for 1-D tensors."""
    if delta.ndim < 2:
        return None
    flat = delta.reshape(delta.shape[0], -1).double()
    u, s, vh = torch.linalg.svd(flat, full_matrices=False)
    return ((u[:, :r] * s[:r]) @ vh[:r]).reshape(delta.shape).float()


def customizations(base, custom_path, plan):
    """(name, video model) for every customization of the plan, base first."""
    yield "base", base
    for w in plan["interp"]:
        yield f"interp {w:g}", inject.inject_checkpoint(base, custom_path, weight=w)
    params = dict(base.unet.named_parameters())
    custom, _, _ = read_unet_weights(custom_path, base.dtype)
    deltas = {k: v - params[k].data for k, v in custom.items() if k in params and not torch.equal(v, params[k].data)}
    for s in plan["delta"]:
        tensors = {k: params[k].data + s * d for k, d in deltas.items()}
        yield f"delta x {s:g}", inject.inject_weights(base, tensors, source=f"delta x {s:g}")
    cut = {}
    for r, s in plan["lora"]:
        if r not in cut:
            cut[r] = {k: low_rank(d, r) for k, d in deltas.items()}
        tensors = {k: params[k].data + s * d for k, d in cut[r].items() if d is not None}
        yield f"lora {r} x {s:g}", inject.inject_weights(base, tensors, source=f"lora {r} x {s:g}")
    for part, s in plan["part"]:
        tensors = {k: params[k].data + s * d for k, d in deltas.items() if k.startswith(PARTS[part])}
        yield f"{part} x {s:g}", inject.inject_weights(base, tensors, source=f"{part} x {s:g}")
    g = torch.Generator().manual_seed(0)
    noise = {k: torch.randn(d.shape, generator=g) for k, d in deltas.items()}
    noise = {k: n * (d.norm() / n.norm().clamp_min(1e-12)) for (k, n), d in zip(noise.items(), deltas.values())}
    for s in plan["noise"]:
        tensors = {k: params[k].data + s * n for k, n in noise.items()}
        yield f"noise x {s:g}", inject.inject_weights(base, tensors, source=f"noise x {s:g}")


def weight_change(base, model):
    """The naive predictor: relative L2 change of the spatial UNet weights, sqrt(sum |dW|^2 / sum |W|^2)."""
    ref = {n: p.data.clone() for n, p in base.unet.named_parameters() if ".motion_modules." not in n}
    diff = 0.0
    with model.patched(), torch.no_grad():
        for n, p in model.unet.named_parameters():
            if n in ref:
                diff += float((p.data.float() - ref[n].float()).pow(2).sum())
    return (diff / sum(float(t.float().pow(2).sum()) for t in ref.values())) ** 0.5


def motion(model, seeds, steps, cfg):
    rows = []
    for m in MOTIONS:
        for seed in seeds:
            frames = sampling.text_to_video(model, tw.custom_caption(m), seed=seed, steps=steps, cfg=cfg,
                                            width=tw.SIZE, height=tw.SIZE, frames=tw.FRAMES)
            u8 = np.clip(np.rint(frames.numpy() * 255), 0, 255).astype(np.uint8)
            centres, area = tw.locate(u8)
            pts = centres[area > 0]
            dx, dy = (pts[-1] - pts[0]).tolist() if len(pts) > 1 else (0.0, 0.0)
            ux, uy = tw.MOTIONS[m]
            went = scoring.direction_of(dx / tw.SIZE, dy / tw.SIZE)
            rows.append({"travel_px": float(np.hypot(dx, dy)), "along_px": dx * ux + dy * uy,
                         "dir_acc": float(went == m)})
    return {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}


def real_cost(args):
    """Seconds for one report at SD1.5 size on the CPU against one UNet call (the report makes one
    call for the clean estimate, then one per timestep for the base and one for the customization)."""
    import _common
    ckpt, mm = _common.ensure_model_files("real")
    t0 = time.perf_counter()
    base = loading.load_video_model(ckpt, mm, tokenizer_dirs=[_common.sd1_tokenizer_dir()])
    log(f"loaded the real-size random files in {time.perf_counter() - t0:.0f} s")
    g = torch.Generator().manual_seed(0)
    tensors = {}
    for n, p in base.unet.named_parameters():
        if ".attentions." in n and ".motion_modules." not in n and n.endswith(("to_q.weight", "to_v.weight")):
            tensors[n] = p.data + 0.05 * p.data.norm() / p.numel() ** 0.5 * torch.randn(p.shape, generator=g)
    custom = inject.inject_weights(base, tensors, source="random change of the attention weights")
    w = args.real_width
    x = torch.randn(1, 4, tw.FRAMES, w // 8, w // 8)
    emb = sampling.encode_text(base, ["a photo of a dog"], "cpu").repeat_interleave(tw.FRAMES, 0)
    with torch.no_grad():
        t0 = time.perf_counter()
        base.unet(x, torch.tensor([999]), encoder_hidden_states=emb)
        call = time.perf_counter() - t0
    t0 = time.perf_counter()
    rep = injection_report(custom, prompts=["a photo of a sks dog running"], seed=0, width=w, height=w,
                           frames=tw.FRAMES)
    took = time.perf_counter() - t0
    calls = 1 + 2 * len(rep.timesteps)
    log(rep.text())
    log(f"REAL report {took:.1f} s for {calls} UNet calls at {w}x{w}, {tw.FRAMES} frames, 1 prompt; one plain "
        f"UNet call {call:.1f} s (RATIO report / call {took / call:.1f}); peak RSS {_common.gib(_common.peak_rss())}; "
        f"{torch.get_num_threads()} threads")
    return took, call


def run(args):
    torch.set_num_threads(args.threads)
    if args.real:
        return real_cost(args)
    models = Path(args.models)
    custom_path = Path(args.custom) if args.custom else models / tw.MODEL_FILES["custom"]
    base = loading.load_video_model(models / tw.MODEL_FILES["base"], models / tw.MODEL_FILES["motion"])
    plan = QUICK if args.quick else FULL
    if args.spatial_steps and not (models / tw.MODEL_FILES["adapter"]).is_file():
        sys.exit(f"--spatial-steps needs the Motion Adapter {tw.MODEL_FILES['adapter']} in {models}")
    seeds = list(range(args.seeds or (1 if args.quick else 4)))
    prompts = [tw.custom_caption(m) for m in MOTIONS]
    log(f"customizations of {custom_path.name}; report: {len(prompts)} prompts, t = 999/700/400, seed 0; "
        f"motion: {len(prompts)} prompts x seeds {seeds}, {args.steps} Euler steps, CFG {args.cfg}")
    rows = []
    for name, model in customizations(base, custom_path, plan):
        t0 = time.perf_counter()
        rep = injection_report(model, prompts=prompts, seed=0, width=tw.SIZE, height=tw.SIZE, frames=tw.FRAMES)
        t_report = time.perf_counter() - t0
        t0 = time.perf_counter()
        mo = motion(model, seeds, args.steps, args.cfg)
        rows.append({"name": name, "shift": rep.shift, "cosine": rep.cosine, "report_s": t_report,
                     "weight_change": weight_change(base, model),
                     "sample_s": time.perf_counter() - t0, **mo,
                     "blocks": {b.block: b.shift for b in rep.blocks}})
        log(f"  {name:<14} shift {rep.shift:.3f}  travel {mo['travel_px']:.2f} px  along {mo['along_px']:.2f} px  "
            f"dir {mo['dir_acc']:.2f}  (report {t_report:.1f} s, videos {rows[-1]['sample_s']:.0f} s)")
    base_travel, base_along = rows[0]["travel_px"], rows[0]["along_px"]
    for r in rows:
        r["lost"] = 1 - r["travel_px"] / base_travel
        r["lost_along"] = 1 - r["along_px"] / base_along
    custom_rows = rows[1:]
    corr = {"travel": spearman([r["shift"] for r in custom_rows], [r["lost"] for r in custom_rows]),
            "along": spearman([r["shift"] for r in custom_rows], [r["lost_along"] for r in custom_rows]),
            "dir_acc": spearman([r["shift"] for r in custom_rows], [-r["dir_acc"] for r in custom_rows]),
            "weight_change_travel": spearman([r["weight_change"] for r in custom_rows], [r["lost"] for r in custom_rows]),
            "weight_change_along": spearman([r["weight_change"] for r in custom_rows],
                                            [r["lost_along"] for r in custom_rows])}
    print(table(rows, corr))
    adapted = spatial(base, custom_path, models, prompts, seeds, args) if args.spatial_steps else []
    if adapted:
        print(adapted_table(adapted, base_travel))
    if args.json:
        from adapters.files import unique_path, write_text
        path = write_text(unique_path(Path(args.json)), json.dumps({"rows": rows, "spearman": corr,
                                                                    "adapted": adapted, "seeds": seeds}, indent=1))
        log(f"wrote {path}")
    return rows, corr


def spatial(base, custom_path, models, prompts, seeds, args):
    """Spatial Adapters trained for naive injection and for ``delta x 2``: the shift they closed
    and the motion they got back."""
    import importlib.util
    import tempfile

    from adapters import data, training
    from adapters.motion_adapter import MotionAdapter
    from adapters.spatial_adapters import SpatialAdapters
    spec = importlib.util.spec_from_file_location("bench_toy_comparison", REPO / "benchmarks" / "bench_toy_comparison.py")
    comparison = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(comparison)
    ma_path = models / tw.MODEL_FILES["adapter"]
    ma = MotionAdapter.load(ma_path)
    ma.check(base, ma_path)
    prior = data.encode_clips(base.vae, tw.prior_videos(40), tw.SIZE, tw.SIZE)
    out = []
    targets = dict(customizations(base, custom_path, {"interp": (1.0,), "delta": (2.0,), "lora": (), "part": (), "noise": ()}))
    for name in ("interp 1", "delta x 2"):
        custom = targets[name]
        t0 = time.perf_counter()
        stills = data.encode_clips(base.vae, comparison.m1_stills(custom, 8, args.steps, args.cfg, "cpu"), tw.SIZE,
                                   tw.SIZE)
        settings = training.TrainSettings(steps=args.spatial_steps, learning_rate=1e-3, rank=4, batch=2,
                                          frames=tw.FRAMES, seed=0, prior_ratio=0.5)
        with tempfile.TemporaryDirectory() as tmp:
            res = training.train(custom, SpatialAdapters, settings, Path(tmp) / "spatial.safetensors",
                                 custom_clips=stills, prior_clips=prior, motion_adapter=ma)
        train_s = time.perf_counter() - t0
        rep = injection_report(custom, adapters=res.adapter, prompts=prompts, seed=0, width=tw.SIZE, height=tw.SIZE,
                               frames=tw.FRAMES)
        mo = motion(res.adapter.add_to(custom, 1.0), seeds, args.steps, args.cfg)
        out.append({"name": name, "shift": rep.shift, "shift_after": rep.shift_after, "closed": rep.closed,
                    "train_s": train_s, **mo, "blocks": {b.block: [b.shift, b.shift_after] for b in rep.blocks}})
        log(f"  Spatial Adapters for {name}: shift {rep.shift:.3f} -> {rep.shift_after:.3f} (closed "
            f"{100 * rep.closed:.0f}%), travel {mo['travel_px']:.2f} px, along {mo['along_px']:.2f} px, dir "
            f"{mo['dir_acc']:.2f} ({train_s:.0f} s stills + training)")
        log(rep.text())
    return out


def adapted_table(adapted, base_travel):
    lines = ["| Spatial Adapters for | shift | after | closed | travel_px | lost | along_px | dir_acc |",
             "|---|---|---|---|---|---|---|---|"]
    for r in adapted:
        lines.append(f"| {r['name']} | {r['shift']:.3f} | {r['shift_after']:.3f} | {100 * r['closed']:.0f}% | "
                     f"{r['travel_px']:.2f} | {1 - r['travel_px'] / base_travel:+.2f} | {r['along_px']:.2f} | "
                     f"{r['dir_acc']:.2f} |")
    return "\n".join(lines)


def table(rows, corr):
    lines = ["| customization | shift | cosine | weight change | travel_px | lost | along_px | dir_acc | report s |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['name']} | {r['shift']:.3f} | {r['cosine']:.3f} | {r['weight_change']:.4f} | "
                     f"{r['travel_px']:.2f} | {r['lost']:+.2f} | {r['along_px']:.2f} | {r['dir_acc']:.2f} | "
                     f"{r['report_s']:.1f} |")
    n = len(rows) - 1
    lines.append("")
    lines.append(f"SPEARMAN over {n} customizations: shift vs travel lost {corr['travel']:+.2f}, "
                 f"vs along-the-caption lost {corr['along']:+.2f}, vs direction accuracy lost {corr['dir_acc']:+.2f}")
    lines.append(f"SPEARMAN weight change (the naive predictor) vs travel lost {corr['weight_change_travel']:+.2f}, "
                 f"vs along-the-caption lost {corr['weight_change_along']:+.2f}")
    return "\n".join(lines)


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default=str(REPO / "embedded"), help="folder of the toy models")
    ap.add_argument("--custom", help="another customized checkpoint (default: the folder's)")
    ap.add_argument("--seeds", type=int, help="sampling seeds 0..n-1 per prompt (default 4; quick 1)")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--cfg", type=float, default=4.0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--quick", action="store_true", help="fewer customizations and one seed")
    ap.add_argument("--real", action="store_true", help="time one report at SD1.5 size (real-size random files)")
    ap.add_argument("--real-width", dest="real_width", type=int, default=256, help="--real: width and height")
    ap.add_argument("--spatial-steps", dest="spatial_steps", type=int, default=0,
                    help="also train Spatial Adapters this many steps for two customizations and report the "
                         "shift they closed (0: skip)")
    ap.add_argument("--json", help="also write the rows here (a numbered name if it exists)")
    return ap.parse_args(argv)


def main(argv=None):
    run(parse_args(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
