"""How much each caption word steers the toy video model: flip the direction word, and as the
reference in the same process, flip the colour word.

Why: the toy model shipped before its text encoder was pre-trained on its own moved the way its
seed said, not the way "left/right/up/down" said, and this found the word lost in the text
encoder (ratio 0.0045; embedded/README.md). The shipped one hears the word (0.15) but still
takes the sign of the motion from the seed. It measures, on the files the user's path loads:

- the text encoder: how far the word's position moves in the last hidden state;
- the video UNet: relative change of its noise prediction for the same noisy latents;
- the denoising loss on world clips: true caption against the caption with the word swapped.

It prints ``RATIO direction/colour`` for the UNet's change: near 0 means the model does not
hear the direction word at all; a model that follows the caption's direction needs it well
above 0.

    python benchmarks/bench_toy_words.py [--base F --motion F] [--clips 24]
"""
import argparse
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from adapters import data, loading, sampling, toyworld as tw  # noqa: E402
from adapters.training import _noise_schedule  # noqa: E402

FLIP = {"direction": {"left": "right", "right": "left", "up": "down", "down": "up"},
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
    alphas = _noise_schedule()
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
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", type=Path, default=ROOT / "embedded" / tw.MODEL_FILES["base"])
    ap.add_argument("--motion", type=Path, default=ROOT / "embedded" / tw.MODEL_FILES["motion"])
    ap.add_argument("--clips", type=int, default=24)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    vm = loading.load_video_model(args.base, args.motion)
    rows = measure(vm, args.clips)
    print(f"{len(FLIP)} flips x {args.clips} world clips; {args.base.name} + {args.motion.name}")
    print(f"{'word flipped':14s} {'text@word':>10s} " + " ".join(f"{'unet t=' + str(t):>12s}" for t in TIMESTEPS)
          + " " + " ".join(f"{'loss+ t=' + str(t):>12s}" for t in TIMESTEPS))
    for word, r in rows.items():
        print(f"{word:14s} {r['text_at_word']:10.4f} "
              + " ".join(f"{r[f'unet_change_t{t}']:12.5f}" for t in TIMESTEPS) + " "
              + " ".join(f"{100 * r[f'loss_gap_t{t}']:11.3f}%" for t in TIMESTEPS))
    ratio = np.mean([rows["direction"][f"unet_change_t{t}"] / rows["colour"][f"unet_change_t{t}"] for t in TIMESTEPS])
    print(f"RATIO direction/colour UNet change (mean over t): {ratio:.4f}")
    return rows


if __name__ == "__main__":
    main()
