"""How much each caption word steers the toy video model: flip the direction word, and as the
reference in the same process, flip the colour word.

Why: a toy model can move the way its seed says instead of the way "left/right/up/down" says;
this finds where the word is lost (figures in embedded/README.md). It measures, on the files the
user's path loads:

- the text encoder: how far the word's position moves in the last hidden state;
- the video UNet: relative change of its noise prediction for the same noisy latents;
- the denoising loss on world clips: true caption against the caption with the word swapped.

It prints ``RATIO direction/colour`` for the UNet's change: near 0 means the model does not
hear the direction word at all; a model that follows the caption's direction needs it well
above 0.

It also asks whether the video UNet knows the arrow of time: it runs the same noisy clips with
their frames reversed (and, as the reference, shuffled) and compares the prediction, put back
in order, with the one for the clips as they are. Without words the toy world is symmetric in
time (a "left" clip played backwards is a "right" clip), so the arrow can only come from the
caption; a ``reverse`` change far below the ``shuffle`` change means the model treats a clip
and its reverse alike, and then nothing but the noise can pick left over right.

Last, where the sign is decided: from the same pure noise (the sampler's start), the clean clip
the UNet implies at t = 999 and 700 (x0 = (x_t - sqrt(1 - a) eps) / sqrt(a)), decoded, for each
direction word. ``SEED_DECIDES``: the share of noises whose clip goes the same way for "left" and
"right" (and for "up" and "down"): 1 when the noise alone picks the sign, 0 when the word does.

    python benchmarks/bench_toy_words.py [--base F --motion F] [--clips 24]
"""
import argparse
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from adapters import data, loading, sampling  # noqa: E402
from toyworld import world as tw  # noqa: E402
from adapters.training import noise_schedule  # noqa: E402

FLIP = {"direction": tw.OPPOSITE,
        "colour": {"red": "blue", "blue": "green", "green": "yellow", "yellow": "red"}}
TIMESTEPS = (999, 700, 300)


def flipped(spec, word):
    colour, motion = spec.colour, spec.motion
    if word == "direction":
        motion = FLIP["direction"][motion]
    else:
        colour = FLIP["colour"][colour]
    return tw.caption(colour, spec.shape, motion)


def word_position(vm, a, b):
    """The first token where two captions differ."""
    ta, tb = (vm.tokenizer(c).input_ids for c in (a, b))
    return next(i for i, (x, y) in enumerate(zip(ta, tb)) if x != y)


@torch.no_grad()
def measure(vm, n_clips=24, seed=0):
    clips = [c for c in tw.dataset(n_clips * 2, seed=seed) if c.spec.motion in FLIP["direction"]][:n_clips]
    encoded = data.encode_clips(vm, [data.Clip(tw.to_float(c.frames), c.caption) for c in clips], tw.SIZE, tw.SIZE)
    lat = torch.stack([c.latents for c in encoded])                                     # (B, C, F, h, w)
    b, f = lat.shape[0], lat.shape[2]
    alphas = noise_schedule()
    true = sampling.encode_text(vm, [c.caption for c in clips], "cpu")
    g = torch.Generator().manual_seed(seed)
    noises = {t: torch.randn(lat.shape, generator=g) for t in TIMESTEPS}
    vm.unet.eval()

    def predict(emb, t):
        a = alphas[t]
        noisy = a.sqrt() * lat + (1 - a).sqrt() * noises[t]
        return vm.unet(noisy, torch.full((b,), t), encoder_hidden_states=emb.repeat_interleave(f, 0)).sample

    base = {t: predict(true, t) for t in TIMESTEPS}
    rows = {}
    for word in FLIP:
        caps = [flipped(c.spec, word) for c in clips]
        other = sampling.encode_text(vm, caps, "cpu")
        pos = [word_position(vm, c.caption, o) for c, o in zip(clips, caps)]
        at = [((true[i, p] - other[i, p]).norm() / true[i, p].norm()).item() for i, p in enumerate(pos)]
        row = {"text_at_word": float(np.mean(at))}
        for t in TIMESTEPS:
            pred = predict(other, t)
            row[f"unet_change_t{t}"] = ((pred - base[t]).norm() / base[t].norm()).item()
            lt = ((base[t] - noises[t]) ** 2).mean().item()
            lw = ((pred - noises[t]) ** 2).mean().item()
            row[f"loss_gap_t{t}"] = (lw - lt) / lt
        rows[word] = row
    rows["frame order"] = frame_order(vm, lat, true, noises, alphas, base)
    return rows


@torch.no_grad()
def frame_order(vm, lat, emb, noises, alphas, base, seed=0):
    """Relative change of the UNet's prediction (``base``: t -> the one in order) when the frames
    go in reversed / shuffled (the prediction is put back in the clips' order before comparing)."""
    b, f = lat.shape[0], lat.shape[2]
    perm = torch.randperm(f, generator=torch.Generator().manual_seed(seed + 1))
    orders = {"reverse": torch.arange(f - 1, -1, -1), "shuffle": perm}
    row = {}
    for t in TIMESTEPS:
        a = alphas[t]
        noisy = a.sqrt() * lat + (1 - a).sqrt() * noises[t]
        ts, e = torch.full((b,), t), emb.repeat_interleave(f, 0)
        for name, order in orders.items():
            pred = vm.unet(noisy[:, :, order], ts, encoder_hidden_states=e).sample[:, :, torch.argsort(order)]
            row[f"{name}_t{t}"] = ((pred - base[t]).norm() / base[t].norm()).item()
    return row


@torch.no_grad()
def first_estimate(vm, n_noises=16, seed=0, timesteps=(999, 700)):
    """Per t: each direction's mean travel along its caption (px) in the decoded x0 from pure
    noise, the share of noises where opposite words give the same sign, and the share whose
    travel is on the caption's axis."""
    alphas = noise_schedule()
    words = list(FLIP["direction"])
    size = tw.SIZE // vm.vae_scale
    noise = torch.randn(n_noises, vm.unet.config.in_channels, tw.FRAMES, size, size,
                        generator=torch.Generator().manual_seed(seed + 2))
    embs = {w: sampling.encode_text(vm, [tw.caption("red", "circle", w)], "cpu").repeat(n_noises * tw.FRAMES, 1, 1)
            for w in words}
    vm.unet.eval()
    rows = {}
    for t in timesteps:
        a = alphas[t]
        moved = {}
        for word in words:
            eps = vm.unet(noise, torch.full((n_noises,), t), encoder_hidden_states=embs[word]).sample
            x0 = (noise - (1 - a).sqrt() * eps) / a.sqrt()
            moved[word] = np.array([tw.displacement((sampling.decode(vm, x0[i:i + 1]).numpy() * 255).astype(np.uint8))
                                    for i in range(n_noises)])                        # (n, 2): dx, dy
        row = {f"along_{w}": float((moved[w] @ np.array(tw.MOTIONS[w])).mean()) for w in words}
        same = [np.sign(moved["left"][:, 0]) == np.sign(moved["right"][:, 0]),
                np.sign(moved["up"][:, 1]) == np.sign(moved["down"][:, 1])]
        row["seed_decides"] = float(np.mean(same))
        axis = [abs(moved[w][:, 0]) > abs(moved[w][:, 1]) for w in ("left", "right")] + \
               [abs(moved[w][:, 1]) > abs(moved[w][:, 0]) for w in ("up", "down")]
        row["on_axis"] = float(np.mean(axis))
        rows[t] = row
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", type=Path, default=ROOT / "embedded" / tw.MODEL_FILES["base"])
    ap.add_argument("--motion", type=Path, default=ROOT / "embedded" / tw.MODEL_FILES["motion"])
    ap.add_argument("--clips", type=int, default=24)
    ap.add_argument("--noises", type=int, default=16, help="pure noises for the first-estimate probe")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    vm = loading.load_video_model(args.base, args.motion)
    rows = measure(vm, args.clips)
    print(f"{len(FLIP)} flips x {args.clips} world clips; {args.base.name} + {args.motion.name}")
    print(f"{'word flipped':14s} {'text@word':>10s} " + " ".join(f"{'unet t=' + str(t):>12s}" for t in TIMESTEPS)
          + " " + " ".join(f"{'loss+ t=' + str(t):>12s}" for t in TIMESTEPS))
    for word in FLIP:
        r = rows[word]
        print(f"{word:14s} {r['text_at_word']:10.4f} "
              + " ".join(f"{r[f'unet_change_t{t}']:12.5f}" for t in TIMESTEPS) + " "
              + " ".join(f"{100 * r[f'loss_gap_t{t}']:11.3f}%" for t in TIMESTEPS))
    ratio = np.mean([rows["direction"][f"unet_change_t{t}"] / rows["colour"][f"unet_change_t{t}"] for t in TIMESTEPS])
    print(f"RATIO direction/colour UNet change (mean over t): {ratio:.4f}")
    fo = rows["frame order"]
    print("frames reversed / shuffled, UNet change at t=" + "/".join(map(str, TIMESTEPS)) + ": "
          + " ".join(f"{fo[f'reverse_t{t}']:.4f}/{fo[f'shuffle_t{t}']:.4f}" for t in TIMESTEPS))
    arrow = np.mean([fo[f"reverse_t{t}"] / fo[f"shuffle_t{t}"] for t in TIMESTEPS])
    print(f"ARROW reversed/shuffled UNet change (mean over t): {arrow:.4f}")
    rows["first estimate"] = first = first_estimate(vm, args.noises)
    for t, r in first.items():
        print(f"x0 from pure noise, t={t}: travel along the caption (px) "
              + " ".join(f"{w} {r[f'along_{w}']:+.1f}" for w in FLIP["direction"])
              + f"; on the caption's axis {r['on_axis']:.2f}")
    print("SEED_DECIDES same sign for opposite words, t=" + "/".join(map(str, first)) + ": "
          + "/".join(f"{r['seed_decides']:.2f}" for r in first.values()))
    return rows


if __name__ == "__main__":
    main()
