"""Train the embedded toy models on the toy world (toyworld/world.py), deterministically, on a CPU.

Stages (each cached in --work, so a later stage can be re-run alone):
  1. vae       AutoencoderKL on base-world frames + as many general images (32 px -> 8x8x4
               latents, shifted to zero mean), then its decoder alone (the encoder, and so every
               cached latent, stays fixed)
  2. text      writes adapters/configs/toy_tokenizer (a token per toy word), then pre-trains the
               CLIP text encoder on the toy captions alone (every word, and every caption's
               colour, subject and motion, decodable from its states); frozen from then on, as
               CLIP is for SD and AnimateDiff
  3. t2i       UNet2DConditionModel on single frames (batch 64, EMA weights, offset noise)
  4. motion    AnimateDiff motion module (UNetMotionModel) on the clips, with the T2I UNet
               fine-tuned at a lower rate (the shipped base checkpoint is that T2I); with
               --frozen-t2i the motion modules alone, as AnimateDiff trains them (4b likewise)
  4b. direction  the motion stage continued with word-only pairs at high noise: a clip and its
               reverse with the direction word swapped, given the SAME noisy input (noised from
               their midpoint), each scored on its own clean clip; only the word can tell them
               apart, so the model learns to take the sign of the motion from it (without this
               the noise picked the sign: benchmarks/bench_toy_words.py, embedded/README.md)
  5. adapter   the pack's Motion Adapter (adapters.training.train) on frozen clips
  6. custom    DreamBooth-style fine-tune of the T2I UNet on the 'sks star' stills, with prior
               preservation on base-world frames and caption dropout (--custom-steps,
               --custom-lr, --custom-prior-share make stronger ones, --custom-prior-captions
               class captions the prior frames without their motion; benchmarks/README.md)
  unpack       (not in the default chain) rebuilds the work files stages 5-6 start from out of the
               files already in --out, e.g. a copy of embedded/: a stronger customization of the
               shipped models is then `--stages unpack,custom,measure` (minutes, not the chain's 76)
Then the files are written in the layouts users' files have (LDM single-file checkpoints, an
original-layout AnimateDiff v2 motion module, a still-moving-adapter/1 file), reloaded through
``load_video_model`` and measured with the pack's own sampler. Fixed seeds and a fixed thread
count: the same command gives the same weights. The shipped files:

    OMP_NUM_THREADS=2 python scripts/train_toy_models.py --out embedded --threads 2
"""
import argparse
import json
import math
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from adapters import export, norms  # noqa: E402
from toyworld import world as tw  # noqa: E402
from adapters.files import save_safetensors  # noqa: E402
from adapters.training import noise_schedule  # noqa: E402

SEED = 1234
# GroupNorm has 32 groups (SD's convention, which the loader assumes) and normalizes each group's
# amplitude away: with 32 channels a group is one channel (instance norm), and the UNet's last
# layer could hardly set a sample's mean per latent channel (with (32, 64), some seeds gave a
# grey or noise field for every prompt). 64 channels keep 2 a group (SD's UNet: 10).
UNET = dict(sample_size=8, in_channels=4, out_channels=4, block_out_channels=(64, 64), layers_per_block=1,
            cross_attention_dim=32, attention_head_dim=8, norm_num_groups=32,
            down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"))
# Three levels: 4x downscaling (SD's VAE has four, 8x): at 8x a subject is ~2x2 latent pixels
# and the autoencoder tints the background with its colour. 128 channels a level (4 a GroupNorm
# group). Half its data are general images, so it draws shapes beyond the world's circles; it
# learns the world's four colours, not colour in general (embedded/README.md).
VAE = dict(in_channels=3, out_channels=3, block_out_channels=(128, 128, 128), layers_per_block=1,
           latent_channels=4, norm_num_groups=32, down_block_types=("DownEncoderBlock2D",) * 3,
           up_block_types=("UpDecoderBlock2D",) * 3, sample_size=tw.SIZE, scaling_factor=0.18215)
CLIP = dict(vocab_size=562,  # adapters/configs/toy_tokenizer (write_toy_tokenizer)
            hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=1,
            max_position_embeddings=77, projection_dim=32, hidden_act="quick_gelu",
            bos_token_id=512, eos_token_id=513, pad_token_id=513)
MOTION = dict(motion_layers_per_block=1, motion_max_seq_length=32, use_motion_mid_block=True,
              motion_num_attention_heads=8, motion_transformer_layers_per_block=1)
# steps per stage (full run / --quick plumbing check)
# The shipped weights used these full-run numbers; a machine with time to spare gets better models
# from larger ones (the VAE above all).
STEPS = {"vae": (600, 20), "vae_decoder": (300, 5), "text": (400, 10), "t2i": (2500, 20), "motion": (2500, 20),
         "direction": (600, 6), "adapter": (400, 5), "custom": (400, 10)}
LR = {"vae": 1e-3, "vae_decoder": 5e-4, "text": 3e-3, "t2i": 1e-3, "motion": 1e-3, "video_t2i": 3e-4, "direction": 3e-4,
      "custom": 3e-4}
DIRECTION_T_MIN = 800   # the word-only pairs' noise levels: where the noisy input hardly shows the clip
VIDEO_T2I = "t2i_video.pt"
BATCH = {"t2i": 64, "motion": 4}
OFFSET_NOISE = 0.1
EVAL_PROMPTS = [tw.caption(c, s, m) for c, s, m in (("red", "circle", "left"), ("blue", "circle", "right"),
                                                     ("green", "circle", "up"), ("yellow", "circle", "down"),
                                                     ("blue", "circle", "still"))]

# Base-world prompts other than EVAL_PROMPTS, sampled at seeds used nowhere else: the Motion
# Adapter's check and its slider.
HELD_OUT_PROMPTS = [tw.caption(c, s, m) for c, s, m in (("green", "circle", "left"), ("yellow", "circle", "right"),
                                                         ("red", "circle", "up"), ("blue", "circle", "down"))]
HELD_OUT_SEEDS = (1000, 1001)


def log(*a):
    print(*a, flush=True)


def cosine_lr(opt, base, step, total, warmup=20):
    """Warm-up then cosine to a tenth; ``base``: one rate, or one per parameter group."""
    scale = min(1.0, (step + 1) / warmup) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / total)))
    bases = base if isinstance(base, (list, tuple)) else [base] * len(opt.param_groups)
    for g, b in zip(opt.param_groups, bases):
        g["lr"] = b * scale


def high_noise_timesteps(n, g):
    """Half uniform, half with density rising with t: more of the steps where colour, layout and
    motion are decided, without starving the last denoising steps (with t ~ 999·sqrt(u) alone,
    a T2I left some samples as coloured noise)."""
    u = torch.rand(n, generator=g)
    return (999 * torch.where(torch.rand(n, generator=g) < 0.5, u, u.sqrt())).long()


def pixels(u8):
    return torch.from_numpy(np.ascontiguousarray(u8)).float().permute(0, 3, 1, 2) / 127.5 - 1


# --- 1. VAE -------------------------------------------------------------------------------------

def train_vae(steps, steps_decoder, work):
    """Phase 1: encoder and decoder; phase 2: the decoder alone, with a penalty on every pixel far
    off (phase 1 leaves the background tinted by the subject, which ``tw.locate`` counts as
    subject)."""
    from diffusers import AutoencoderKL
    torch.manual_seed(SEED)
    clips = tw.dataset(240, seed=SEED + 1)
    frames = np.concatenate([c.frames for c in clips])
    data = np.concatenate([frames, tw.generic_images(len(frames), seed=SEED)])
    # the subject covers ~5% of a frame: weight its pixels up, or the autoencoder first learns
    # the background and a grey blob
    weight = torch.from_numpy(1.0 + 9.0 * tw.foreground(data, 20.0)).float()[:, None]
    held = np.concatenate([s.frames for s in tw.custom_stills(4, seed=99)])  # monitoring only
    vae = AutoencoderKL(**VAE)
    g = torch.Generator().manual_seed(SEED + 2)
    for phase, n, lr, params in (("vae", steps, LR["vae"], list(vae.parameters())),
                                 ("vae decoder", steps_decoder, LR["vae_decoder"],
                                  list(vae.decoder.parameters()) + list(vae.post_quant_conv.parameters()))):
        vae.requires_grad_(False)
        for p in params:
            p.requires_grad_(True)
        opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
        for step in range(n):
            cosine_lr(opt, lr, step, n)
            idx = torch.randint(len(data), (8,), generator=g)
            x, w = pixels(data[idx.numpy()]), weight[idx]
            post = vae.encode(x).latent_dist
            if phase == "vae":
                rec = vae.decode(post.mean + post.std * torch.randn(post.mean.shape, generator=g)).sample
                loss = (w * ((rec - x) ** 2 + 0.2 * (rec - x).abs())).mean() / w.mean() + 1e-6 * post.kl().mean()
            else:  # a little noise on the latents: the sampler's latents are never exact
                z = post.mean.detach()
                err = vae.decode(z + 0.05 * z.std() * torch.randn(z.shape, generator=g)).sample - x
                loss = ((w * (err ** 2 + 0.2 * err.abs())).mean() / w.mean()
                        + 2.0 * torch.relu(err.norm(dim=1, keepdim=True) - 0.15).mean())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            if step % 100 == 0 or step == n - 1:
                with torch.no_grad():
                    r = vae.decode(vae.encode(pixels(held)).latent_dist.mean).sample.clamp(-1, 1)
                r = ((r + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()
                log(f"  {phase} {step:4d} loss {loss.item():.4f}  held-out star colour score "
                    f"{tw.custom_colour_score(r):.2f} (original {tw.custom_colour_score(held):.2f})")
        if phase == "vae":
            _rescale_latents(vae, frames)
    vae.eval().requires_grad_(False)
    with torch.no_grad():
        test = tw.dataset(16, seed=SEED + 50)
        x = pixels(np.concatenate([c.frames for c in test]))
        rec = vae.decode(vae.encode(x).latent_dist.mean).sample.clamp(-1, 1)
        psnr = 10 * math.log10(4 / F.mse_loss(rec, x).item())
        u8 = ((rec + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy().reshape(16, tw.FRAMES, tw.SIZE, tw.SIZE, 3)
        err = float(np.mean([abs(np.subtract(tw.displacement(u8[i]), tw.displacement(c.frames))).sum()
                             for i, c in enumerate(test)]))
    log(f"  vae: held-out clips' PSNR {psnr:.1f} dB, motion error of the round trip {err:.2f} px")
    torch.save(vae.state_dict(), work / "vae.pt")
    return {"reconstruction_psnr_db": round(psnr, 2), "round_trip_motion_error_px": round(err, 2),
            "steps_decoder": steps_decoder}


def _rescale_latents(vae, frames):
    """SD's convention: latents * 0.18215 have unit variance. An exact reparametrization:
    quant_conv's mean rows and log-variance bias, post_quant_conv's input and bias."""
    vae.eval()
    with torch.no_grad():
        z = torch.cat([vae.encode(pixels(frames[i:i + 64])).latent_dist.mean for i in range(0, 512, 64)])
        s = 1.0 / (z.std().item() * VAE["scaling_factor"])
        c = VAE["latent_channels"]
        vae.quant_conv.weight[:c] *= s
        vae.quant_conv.bias[:c] *= s
        vae.quant_conv.bias[c:] += 2 * math.log(s)
        vae.post_quant_conv.weight /= s
        # ... and zero mean per channel. The flat background is most of a toy latent; with a
        # non-zero mean, a weak T2I left some seeds' samples as a grey or noise field for every
        # prompt (it could not recover the constant part from noise).
        m = torch.cat([vae.encode(pixels(frames[i:i + 64])).latent_dist.mean
                       for i in range(0, 512, 64)]).mean(dim=(0, 2, 3))
        vae.quant_conv.bias[:c] -= m
        vae.post_quant_conv.bias += vae.post_quant_conv.weight[:, :, 0, 0] @ m
    log(f"  vae latent rescale x{s:.3f}, shift {(-m * VAE['scaling_factor']).numpy().round(3).tolist()}")
    vae.train()


def load_vae(work):
    from diffusers import AutoencoderKL
    vae = AutoencoderKL(**VAE)
    vae.load_state_dict(torch.load(work / "vae.pt", weights_only=True))
    return vae.eval().requires_grad_(False)


def encode(vae, u8, chunk=64):
    with torch.no_grad():
        return torch.cat([vae.encode(pixels(u8[i:i + chunk])).latent_dist.mean
                          for i in range(0, len(u8), chunk)]) * VAE["scaling_factor"]


TOKENIZER_DIR = ROOT / "adapters" / "configs" / "toy_tokenizer"


def toy_words():
    return sorted({w for c in tw.all_captions() + [tw.custom_caption(m) for m in tw.MOTIONS] for w in c.split()})


def write_toy_tokenizer(dst=TOKENIZER_DIR):
    """The pack's byte-level tiny tokenizer plus one token per toy-world word. With single
    characters only, a 2-layer text encoder trained from scratch hardly told "red" from "blue"
    (a T2I made the same image for every prompt of a seed)."""
    from transformers import CLIPTokenizer
    src = ROOT / "adapters" / "configs" / "tiny_tokenizer"
    vocab = json.loads((src / "vocab.json").read_text(encoding="utf-8"))
    merges = []
    dst.mkdir(parents=True, exist_ok=True)
    pieces = {w: list(w[:-1]) + [w[-1] + "</w>"] for w in toy_words()}
    while pieces:  # merge each word's current pieces left to right, after every earlier merge
        for parts in pieces.values():
            while len(parts) > 1:
                pair, parts = (parts[0], parts[1]), [parts[0] + parts[1]] + parts[2:]
                if pair not in merges:
                    merges.append(pair)
                vocab.setdefault(parts[0], len(vocab))
        (dst / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
        (dst / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges),
                                        encoding="utf-8")
        tok = CLIPTokenizer(str(dst / "vocab.json"), str(dst / "merges.txt"), model_max_length=77)
        pieces = {w: tok.tokenize(w) for w in pieces if len(tok.tokenize(w)) > 1}
    return len(tok)


def text_encoder_captions():
    """Every caption the toy models are prompted with, and the partial ones a user types."""
    caps = {""}
    for colour in [None, *sorted(tw.COLOURS)]:
        for motion in [None, *sorted(tw.MOTIONS)]:
            tail = f" {tw.MOTION_PHRASES[motion]}" if motion else ""
            caps.add(f"a {colour + ' ' if colour else ''}circle{tail}")
            caps.add(tw.custom_caption(motion))
    return sorted(caps)


def train_text(steps, work):
    """The toy stand-in for CLIP's pre-training. Trained from scratch with the T2I on single
    frames, the encoder mapped "left", "right", "up" and "down" to one vector (a direction flip
    changed its states 0.0135, a colour flip 1.48; benchmarks/bench_toy_words.py): no frame shows
    a direction, so nothing kept the words apart, and the motion module had no word to follow.
    Here every real token's state names its own word, and the states from the end-of-text token
    on (what cross-attention mostly reads) name the caption's colour, subject and motion."""
    from transformers import CLIPTextConfig, CLIPTextModel
    caps = text_encoder_captions()
    tok = tokenizer()
    ids = tokens(tok, caps)
    parsed = [tw.parse_caption(c) for c in caps]
    targets = {"colour": [None, *sorted(tw.COLOURS)], "motion": [None, *sorted(tw.MOTIONS)],
               "subject": [None, tw.SHAPES[0], tw.CUSTOM_SHAPE]}
    y = {k: torch.tensor([v.index(p["shape" if k == "subject" else k]) for p in parsed]) for k, v in targets.items()}
    end = (ids == CLIP["eos_token_id"]).int().argmax(1)          # the first end-of-text token
    positions = torch.arange(ids.shape[1])[None]
    words = (positions <= end[:, None])                            # BOS, the words, EOS
    tail = positions >= end[:, None]                               # EOS and the padding after it
    n_tail = tail.sum(1)
    torch.manual_seed(SEED + 10)
    te = CLIPTextModel(CLIPTextConfig(**CLIP))
    heads = torch.nn.ModuleDict({"token": torch.nn.Linear(CLIP["hidden_size"], CLIP["vocab_size"]),
                                 **{k: torch.nn.Linear(CLIP["hidden_size"], len(v)) for k, v in targets.items()}})
    params = list(te.parameters()) + list(heads.parameters())
    opt = torch.optim.AdamW(params, lr=LR["text"], weight_decay=1e-2)
    te.train()
    for step in range(steps):
        cosine_lr(opt, LR["text"], step, steps)
        h = te(ids)[0]
        loss = F.cross_entropy(heads["token"](h[words]), ids[words])
        for k in targets:
            loss = loss + F.cross_entropy(heads[k](h[tail]), y[k].repeat_interleave(n_tail))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 100 == 0 or step == steps - 1:
            log(f"  text {step:4d} loss {loss.item():.4f}")
    te.eval().requires_grad_(False)
    with torch.no_grad():
        def change(a, b):
            ea, eb = te(tokens(tok, [a]))[0], te(tokens(tok, [b]))[0]
            return ((ea - eb).norm() / ea.norm()).item()
        flips = {"direction": change(tw.caption("red", "circle", "left"), tw.caption("red", "circle", "right")),
                 "colour": change(tw.caption("red", "circle", "left"), tw.caption("blue", "circle", "left"))}
    log(f"  text encoder: relative change of a caption's states, direction flip {flips['direction']:.3f}, "
        f"colour flip {flips['colour']:.3f}")
    torch.save(te.state_dict(), work / "text.pt")
    return {"captions": len(caps), "state_change_direction_flip": round(flips["direction"], 3),
            "state_change_colour_flip": round(flips["colour"], 3)}


def load_text(work):
    from transformers import CLIPTextConfig, CLIPTextModel
    te = CLIPTextModel(CLIPTextConfig(**CLIP))
    te.load_state_dict(torch.load(work / "text.pt", weights_only=True))
    return te.eval().requires_grad_(False)


def caption_table(te, tok, captions):
    """The frozen encoder's states of each distinct caption, once: (table, the empty prompt's
    states, each caption's row in the table)."""
    uniq = sorted(set(captions))
    with torch.no_grad():
        table, empty = te(tokens(tok, uniq))[0], te(tokens(tok, [""]))[0]
    return table, empty, torch.tensor([uniq.index(c) for c in captions])


def tokenizer():
    from transformers import CLIPTokenizer
    return CLIPTokenizer(str(TOKENIZER_DIR / "vocab.json"), str(TOKENIZER_DIR / "merges.txt"), model_max_length=77)


def tokens(tok, captions):
    return tok(list(captions), padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids


def world_latents(work, vae):
    """Latents of the training clips (C, F, h, w each) and their captions, cached."""
    path = work / "clips.pt"
    if path.exists():
        d = torch.load(path, weights_only=True)
        return d["latents"], d["captions"]
    clips = tw.dataset(240, seed=SEED + 3)
    lat = torch.stack([encode(vae, c.frames).permute(1, 0, 2, 3) for c in clips])
    caps = [c.caption for c in clips]
    torch.save({"latents": lat, "captions": caps}, path)
    return lat, caps


class EMA:
    """Exponential moving average of parameters; the saved weights are the average (a small
    diffusion model's samples from its raw weights at a high rate are noticeably worse)."""

    def __init__(self, params, decay=0.999):
        self.params = list(params)
        self.shadow = [p.detach().clone() for p in self.params]
        self.decay, self.count = decay, 0

    @torch.no_grad()
    def update(self):
        self.count += 1
        d = min(self.decay, (1 + self.count) / (10 + self.count))
        for s, p in zip(self.shadow, self.params):
            s.lerp_(p.detach(), 1 - d)

    @torch.no_grad()
    def copy_to_params(self):
        for s, p in zip(self.shadow, self.params):
            p.copy_(s)


def diffusion_loss(unet, lat, emb, g, alphas, frames=None, high_noise=False, offset=OFFSET_NOISE):
    """Epsilon loss. ``offset``: noise constant per sample and channel added on top (offset noise),
    so the model learns to move a latent's mean, which plain noise hardly teaches."""
    noise = torch.randn(lat.shape, generator=g)
    if offset:
        noise = noise + offset * torch.randn(lat.shape[:2] + (1,) * (lat.ndim - 2), generator=g)
    t = high_noise_timesteps(lat.shape[0], g) if high_noise else torch.randint(0, 1000, (lat.shape[0],), generator=g)
    a = alphas[t].view(-1, *([1] * (lat.ndim - 1)))
    noisy = a.sqrt() * lat + (1 - a).sqrt() * noise
    if frames:
        emb = emb.repeat_interleave(frames, 0)
    return F.mse_loss(unet(noisy, t, encoder_hidden_states=emb).sample, noise)


# --- 2. T2I -------------------------------------------------------------------------------------

def train_t2i(steps, work):
    from diffusers import UNet2DConditionModel
    vae = load_vae(work)
    lat, caps = world_latents(work, vae)
    frames = lat.permute(0, 2, 1, 3, 4).reshape(-1, *lat.shape[1:2], *lat.shape[3:])  # (N*F, C, h, w)
    frame_caps = [c for c in caps for _ in range(lat.shape[2])]
    tok = tokenizer()
    te = load_text(work)
    table, empty, cap_idx = caption_table(te, tok, frame_caps)
    torch.manual_seed(SEED + 4)
    unet = UNet2DConditionModel(**UNET)
    params = list(unet.parameters())
    ema = EMA(params)
    opt = torch.optim.AdamW(params, lr=LR["t2i"], weight_decay=1e-2)
    alphas = noise_schedule()
    g = torch.Generator().manual_seed(SEED + 5)
    unet.train()
    for step in range(steps):
        cosine_lr(opt, LR["t2i"], step, steps)
        idx = torch.randint(len(frames), (BATCH["t2i"],), generator=g)
        emb = table[cap_idx[idx]]
        drop = torch.rand(len(idx), generator=g) < 0.1     # caption dropout: classifier-free guidance works
        emb = torch.where(drop.view(-1, 1, 1), empty, emb)
        loss = diffusion_loss(unet, frames[idx], emb, g, alphas, high_noise=True)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        ema.update()
        if step % 100 == 0 or step == steps - 1:
            log(f"  t2i {step:4d} loss {loss.item():.4f}")
    ema.copy_to_params()
    torch.save({"unet": unet.state_dict(), "text": te.state_dict()}, work / "t2i.pt")
    return {}


def load_t2i(work, name="t2i.pt"):
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel
    d = torch.load(work / name, weights_only=True)
    unet, te = UNet2DConditionModel(**UNET), CLIPTextModel(CLIPTextConfig(**CLIP))
    unet.load_state_dict(d["unet"])
    te.load_state_dict(d["text"])
    return unet, te.eval().requires_grad_(False)


# --- 3. motion module -----------------------------------------------------------------------------

def train_motion(steps, work, frozen_t2i=False):
    """Motion modules, with the T2I UNet fine-tuned at a lower rate (the text encoder stays
    frozen). The UNet was trained on single frames, where the direction word carries nothing, so
    it must learn to pass it on. The shipped base is this video-tuned T2I. ``frozen_t2i``: the
    motion modules alone, on the T2I as the t2i stage left it (AnimateDiff's recipe)."""
    from diffusers import MotionAdapter
    vae = load_vae(work)
    lat, caps = world_latents(work, vae)
    unet2d, te = load_t2i(work)
    tok = tokenizer()
    uniq = sorted(set(caps)) + [""]
    ids = tokens(tok, uniq)
    cap_idx = torch.tensor([uniq.index(c) for c in caps])
    torch.manual_seed(SEED + 6)
    adapter = MotionAdapter(block_out_channels=UNET["block_out_channels"], **MOTION)
    for n, p in adapter.named_parameters():   # AnimateDiff starts every motion module as the identity
        if n.endswith("proj_out.weight") or n.endswith("proj_out.bias"):
            torch.nn.init.zeros_(p)
    unet = video_unet(unet2d, adapter)
    with torch.no_grad():
        table = te(ids)[0]
    motion, spatial, opt = video_optimizer(unet, LR["motion"], frozen_t2i)
    ema = EMA(motion + spatial)
    alphas = noise_schedule()
    g = torch.Generator().manual_seed(SEED + 7)
    unet.train()
    b, f = BATCH["motion"], lat.shape[2]
    run = []
    for step in range(steps):
        cosine_lr(opt, [LR["motion"], LR["video_t2i"]], step, steps)
        idx = torch.randint(len(lat), (b,), generator=g)
        ci = cap_idx[idx].clone()
        ci[torch.rand(b, generator=g) < 0.1] = len(uniq) - 1
        loss = diffusion_loss(unet, lat[idx], table[ci], g, alphas, frames=f, high_noise=True)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(motion + spatial, 1.0)
        opt.step()
        ema.update()
        run.append(loss.item())
        if step % 100 == 0 or step == steps - 1:
            log(f"  motion {step:4d} loss (last 100) {np.mean(run[-100:]):.4f}")
    ema.copy_to_params()
    save_video_unet(unet, te, work)
    return {"video_t2i_lr": 0.0 if frozen_t2i else LR["video_t2i"]}


def video_optimizer(unet, lr, frozen_t2i=False):
    """AdamW with the motion modules and the rest of the video UNet as two groups (two rates);
    with ``frozen_t2i`` the motion modules alone, the rest of the UNet frozen."""
    motion = [p for n, p in unet.named_parameters() if ".motion_modules." in n]
    spatial = [] if frozen_t2i else [p for n, p in unet.named_parameters() if ".motion_modules." not in n]
    unet.requires_grad_(False)
    for p in motion + spatial:
        p.requires_grad_(True)
    groups = [{"params": motion}] + ([{"params": spatial}] if spatial else [])
    return motion, spatial, torch.optim.AdamW(groups, lr=lr, weight_decay=1e-2)


def video_unet(unet2d, motion_adapter):
    """The video UNet the stages train: the T2I with the motion modules, normalizing as the
    users' loader (and AnimateDiff-Evolved) does for this motion module."""
    from diffusers import UNetMotionModel
    return norms.install(UNetMotionModel.from_unet2d(unet2d, motion_adapter), norms.mode_for(MOTION))


def save_video_unet(unet, te, work):
    """The motion modules to motion.pt, the rest of the UNet (the video-tuned T2I) to VIDEO_T2I."""
    from diffusers import UNet2DConditionModel
    state = unet.state_dict()
    torch.save({k: v for k, v in state.items() if ".motion_modules." in k}, work / "motion.pt")
    video_t2i = UNet2DConditionModel(**UNET)
    video_t2i.load_state_dict({k: v for k, v in state.items() if ".motion_modules." not in k})
    torch.save({"unet": video_t2i.state_dict(), "text": te.state_dict()}, work / VIDEO_T2I)


def train_direction(steps, work, frozen_t2i=False):
    """Continue the video UNet (motion.pt + VIDEO_T2I) with its epsilon loss plus word-only pairs.

    Without words the world is symmetric in time, and at high noise the input shows almost
    nothing of the clip, so an epsilon loss let the noise pick the sign of the motion. Each pair
    here is a moving clip and its reverse with the direction word swapped, given one noisy input
    (noised from the two clips' midpoint, t >= DIRECTION_T_MIN) and scored in x0 space on its own
    clip: nothing but the word separates the targets. Raw weights, no EMA: 600 steps is too few
    for a 0.999 average to leave the start."""
    from diffusers import MotionAdapter
    vae = load_vae(work)
    lat, caps = world_latents(work, vae)
    unet2d, te = load_t2i(work, VIDEO_T2I)
    tok = tokenizer()
    uniq = sorted(set(caps)) + [""]
    ids = tokens(tok, uniq)
    cap_idx = torch.tensor([uniq.index(c) for c in caps])

    def swapped(c):
        words = c.split()
        return " ".join(words[:-1] + [tw.OPPOSITE.get(words[-1], words[-1])])

    flip_idx = torch.tensor([uniq.index(swapped(c)) for c in caps])
    moving = torch.tensor([i for i, c in enumerate(caps) if c.split()[-1] in tw.OPPOSITE])
    unet = video_unet(unet2d, MotionAdapter(block_out_channels=UNET["block_out_channels"], **MOTION))
    missing, unexpected = unet.load_state_dict(torch.load(work / "motion.pt", weights_only=True), strict=False)
    assert not unexpected and all(".motion_modules." not in k for k in missing)
    with torch.no_grad():
        table = te(ids)[0]
    motion, spatial, opt = video_optimizer(unet, LR["direction"], frozen_t2i)
    alphas = noise_schedule()
    g = torch.Generator().manual_seed(SEED + 70)
    unet.train()
    b, f = BATCH["motion"], lat.shape[2]
    half = b // 2
    run, run_x0 = [], []
    for step in range(steps):
        cosine_lr(opt, LR["direction"], step, steps)
        idx = torch.randint(len(lat), (b,), generator=g)
        ci = cap_idx[idx].clone()
        ci[torch.rand(b, generator=g) < 0.1] = len(uniq) - 1
        loss = diffusion_loss(unet, lat[idx], table[ci], g, alphas, frames=f, high_noise=True)
        idx = moving[torch.randint(len(moving), (half,), generator=g)]
        ci = torch.cat([cap_idx[idx], flip_idx[idx]])
        x0 = torch.cat([lat[idx], lat[idx].flip(2)])
        noise = torch.randn((half,) + x0.shape[1:], generator=g) \
            + OFFSET_NOISE * torch.randn((half,) + x0.shape[1:2] + (1, 1, 1), generator=g)
        t = torch.randint(DIRECTION_T_MIN, 1000, (half,), generator=g)
        noise, t = torch.cat([noise, noise]), torch.cat([t, t])
        a = alphas[t].view(-1, 1, 1, 1, 1)
        midpoint = 0.5 * (x0 + x0.roll(half, 0))            # each clip's pair partner, averaged in
        noisy = a.sqrt() * midpoint + (1 - a).sqrt() * noise
        eps = unet(noisy, t, encoder_hidden_states=table[ci].repeat_interleave(f, 0)).sample
        loss_x0 = F.mse_loss((noisy - (1 - a).sqrt() * eps) / a.sqrt(), x0)
        opt.zero_grad(set_to_none=True)
        (loss + loss_x0).backward()
        torch.nn.utils.clip_grad_norm_(motion + spatial, 1.0)
        opt.step()
        run.append(loss.item())
        run_x0.append(loss_x0.item())
        if step % 100 == 0 or step == steps - 1:
            log(f"  direction {step:4d} loss (last 100) {np.mean(run[-100:]):.4f} word-only x0 {np.mean(run_x0[-100:]):.4f}")
    save_video_unet(unet, te, work)
    return {"lr": LR["direction"], "t_min": DIRECTION_T_MIN, "frozen_t2i": frozen_t2i}


# --- writing the files ----------------------------------------------------------------------------

def write_checkpoint(path, unet_sd, te, vae):
    from random_models import layout_of
    tensors = export.checkpoint_tensors(unet_sd, vae.state_dict(), te.state_dict(), layout_of(UNET),
                                        (len(VAE["block_out_channels"]), VAE["layers_per_block"]), torch.float16)
    path.unlink(missing_ok=True)
    export.write_checkpoint(path, tensors)


def write_base(work, out):
    unet, te = load_t2i(work, VIDEO_T2I)
    write_checkpoint(out / tw.MODEL_FILES["base"], unet.state_dict(), te, load_vae(work))
    motion = torch.load(work / "motion.pt", weights_only=True)
    (out / tw.MODEL_FILES["motion"]).unlink(missing_ok=True)
    save_safetensors(export.motion_module_tensors(motion, torch.float16), out / tw.MODEL_FILES["motion"])


def unpack_files(work, out):
    """The work files the later stages start from (vae.pt, text.pt, VIDEO_T2I, motion.pt), read
    back from the files in --out through the users' loader and written by the chain's own
    save_video_unet, so a stronger customization or a new Motion Adapter can be made from the
    shipped files without the 76-minute chain. The shipped files are fp16: these are the fp16
    weights in fp32, not the fp32 state the chain ended with."""
    from adapters import loading
    vm = loading.load_video_model(out / tw.MODEL_FILES["base"], out / tw.MODEL_FILES["motion"])
    save_video_unet(vm.unet, vm.text_encoder, work)
    torch.save(vm.vae.state_dict(), work / "vae.pt")
    torch.save(vm.text_encoder.state_dict(), work / "text.pt")
    return {"from": str(out), "motion_tensors": sum(".motion_modules." in k for k in vm.unet.state_dict())}


# --- 4. Motion Adapter (the pack's trainer on the shipped files) ----------------------------------

def train_adapter(steps, work, out):
    """The pack's Motion Adapter trainer on frozen toy clips, then its freeze check and the motion
    slider on base prompts and seeds it was not trained on."""
    from adapters import loading
    from adapters.data import LatentClip
    from adapters.motion_adapter import MotionAdapter, check_freezes
    from adapters.training import TrainSettings, train
    vae = load_vae(work)
    lat, caps = world_latents(work, vae)
    clips = [LatentClip(lat[i], caps[i], f"toy clip {i}") for i in range(0, len(lat), 5)]
    vm = loading.load_video_model(out / tw.MODEL_FILES["base"], out / tw.MODEL_FILES["motion"])
    tmp = work / "adapter"
    shutil.rmtree(tmp, ignore_errors=True)
    settings = TrainSettings(steps=steps, learning_rate=1e-3, rank=8, batch=2, frames=lat.shape[2], seed=SEED)
    res = train(vm, MotionAdapter, settings, tmp / tw.MODEL_FILES["adapter"], custom_clips=clips,
                metadata={"trained_by": "scripts/train_toy_models.py", "data": "toy world clips (frozen)"})
    check = check_freezes(vm, res.adapter, HELD_OUT_PROMPTS[:2], cfg=4.0, width=tw.SIZE, height=tw.SIZE,
                          frames=tw.FRAMES)
    log("  " + check.summary())
    travel, speed = {}, {}
    for alpha in (-1.0, -0.5, 0.0, 0.5, 1.0):
        m = res.adapter.add_to(vm, alpha) if alpha else vm
        centres = [tw.locate(generate(m, p, s))[0] for p in HELD_OUT_PROMPTS for s in HELD_OUT_SEEDS]
        travel[alpha] = round(float(np.mean([np.hypot(*(c[-1] - c[0])) for c in centres])), 2)
        speed[alpha] = round(float(np.mean([np.linalg.norm(np.diff(c, axis=0), axis=1).mean() for c in centres])), 2)
        log(f"  α = {alpha:+.1f}: travel {travel[alpha]} px, speed {speed[alpha]} px/frame (held-out prompts, seeds)")
    (out / tw.MODEL_FILES["adapter"]).unlink(missing_ok=True)
    shutil.copyfile(res.path, out / tw.MODEL_FILES["adapter"])
    return {"final_loss": round(float(np.mean([l for _, l, _ in res.losses[-20:]])), 4), "rank": settings.rank,
            "learning_rate": settings.learning_rate, "check_share": round(check.share, 3),
            "check_freezes": check.freezes, "travel_px_by_alpha": {str(a): v for a, v in travel.items()},
            "speed_px_by_alpha": {str(a): v for a, v in speed.items()}}


# --- 5. DreamBooth-style customization ------------------------------------------------------------

def train_custom(steps, work, lr=LR["custom"], prior_share=0.5, prior_captions="clip"):
    """``prior_share`` of each batch of 8 is base-world frames (DreamBooth's prior preservation);
    0 fine-tunes on the stills alone, a stronger customization. ``prior_captions``: "clip", the
    frames' own captions, motion words included; "class", "a <colour> <shape>" (DreamBooth's class
    prompt: a still says nothing of motion)."""
    vae = load_vae(work)
    lat, caps = world_latents(work, vae)
    if prior_captions == "class":
        caps = [" ".join(["a", *(tw.parse_caption(c)[k] for k in ("colour", "shape"))]) for c in caps]
    stills = tw.custom_stills(6, seed=0)
    custom = encode(vae, np.concatenate([s.frames for s in stills]))
    prior = lat[:, :, 0]
    unet, te = load_t2i(work, VIDEO_T2I)
    tok = tokenizer()
    with torch.no_grad():
        custom_emb = te(tokens(tok, [tw.CUSTOM_CLASS_CAPTION]))[0]
    table, empty, prior_idx = caption_table(te, tok, caps)
    torch.manual_seed(SEED + 8)
    opt = torch.optim.AdamW(unet.parameters(), lr=lr, weight_decay=1e-2)
    n_prior = round(8 * prior_share)
    alphas = noise_schedule()
    g = torch.Generator().manual_seed(SEED + 9)
    unet.train()
    for step in range(steps):
        ci = torch.randint(len(custom), (8 - n_prior,), generator=g)
        pi = torch.randint(len(prior), (n_prior,), generator=g)
        x = torch.cat([custom[ci], prior[pi]])
        emb = torch.cat([custom_emb.expand(8 - n_prior, -1, -1), table[prior_idx[pi]]])
        # caption dropout as in the base T2I's training: without it the empty prompt drifts to the
        # new subject (it drew stars), and classifier-free guidance, which subtracts it, broke
        # every prompt of the customized model
        emb = torch.where((torch.rand(len(x), generator=g) < 0.1).view(-1, 1, 1), empty, emb)
        loss = diffusion_loss(unet, x, emb, g, alphas)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        if step % 50 == 0 or step == steps - 1:
            log(f"  custom {step:4d} loss {loss.item():.4f}")
    torch.save({"unet": unet.state_dict(), "text": te.state_dict()}, work / "custom.pt")
    return {"stills": len(stills), "caption": tw.CUSTOM_CLASS_CAPTION, "learning_rate": lr, "prior_share": prior_share,
            "prior_captions": prior_captions}


def write_custom(work, out):
    unet, te = load_t2i(work, "custom.pt")
    write_checkpoint(out / tw.MODEL_FILES["custom"], unet.state_dict(), te, load_vae(work))


# --- measuring the shipped files with the pack's sampler ------------------------------------------

def generate(vm, prompt, seed, steps=20, cfg=4.0, frames=tw.FRAMES):
    from adapters import sampling
    return sampling.text_to_video(vm, prompt, seed=seed, steps=steps, cfg=cfg, width=tw.SIZE, height=tw.SIZE,
                                  frames=frames)


def measure(out, seeds=(0, 1, 2, 3)):
    """The shipped files through the users' path and the pack's sampler: captioned motion of the
    base video model, and the customization's colour in the customized T2I's stills against the
    base T2I's (the numbers the tests' thresholds are set from)."""
    from adapters import inject, loading, scoring, training
    vm = loading.load_video_model(out / tw.MODEL_FILES["base"], out / tw.MODEL_FILES["motion"])
    rows = {}
    lo, hi = (v * (tw.FRAMES - 1) for v in tw.SPEED)
    for prompt in EVAL_PROMPTS:
        p = tw.parse_caption(prompt)
        videos = [generate(vm, prompt, s) for s in seeds]
        along = [tw.motion_along(v, p["motion"]) for v in videos]
        went = [scoring.direction_of(*(d / tw.SIZE for d in tw.displacement(v))) for v in videos]
        colour = [np.linalg.norm(tw.mean_colour(v) - tw.COLOURS[p["colour"]]) for v in videos]
        rows[prompt] = {"along_px": round(float(np.mean(along)), 2),
                        "direction_right": round(float(np.mean([w == p["motion"] for w in went])), 2),
                        "colour_error_rgb": round(float(np.mean(colour)), 1)}
        log(f"  {prompt!r}: along the caption {rows[prompt]['along_px']} px (truth {lo:.0f}-{hi:.0f}; still: 0), "
            f"went {went}, colour off by {rows[prompt]['colour_error_rgb']} (RGB distance)")
    custom = inject.inject_checkpoint(vm, out / tw.MODEL_FILES["custom"])
    prompt = tw.CUSTOM_CLASS_CAPTION

    def stills(model):
        with training.temporal_layers_off(model.unet):
            frames = [generate(model, prompt, s, frames=1) for s in seeds]
        return (float(np.mean([tw.star_score(f) for f in frames])),
                float(np.mean([tw.custom_colour_score(f) for f in frames])))
    (base_s, base_c), (cust_s, cust_c) = stills(vm), stills(custom)
    log(f"  '{prompt}' stills: star shape base {base_s:.3f}, customized {cust_s:.3f}; "
        f"custom colour base {base_c:.3f}, customized {cust_c:.3f}")
    moving = [np.hypot(*tw.displacement(generate(custom, tw.custom_caption(m), s))) for m in ("left", "up")
              for s in seeds[:2]]
    log(f"  naive injection, '{tw.custom_caption('left')}' etc.: displacement {np.round(moving, 1).tolist()} px")
    return {"motion": rows, "star_shape_base": round(base_s, 3), "star_shape_customized": round(cust_s, 3),
            "custom_colour_base": round(base_c, 3), "custom_colour_customized": round(cust_c, 3),
            "naive_injection_displacement_px": round(float(np.mean(moving)), 2), "seeds": list(seeds)}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=ROOT / "embedded")
    ap.add_argument("--work", type=Path, default=ROOT / "output" / "toy_training")
    ap.add_argument("--stages", default="vae,text,t2i,motion,direction,adapter,custom,measure")
    ap.add_argument("--threads", type=int, default=2, help="CPU threads (results depend on it; the shipped weights: 2)")
    ap.add_argument("--quick", action="store_true", help="a few steps per stage (plumbing check)")
    ap.add_argument("--frozen-t2i", dest="frozen_t2i", action="store_true",
                    help="motion and direction stages train the motion modules alone, the T2I frozen "
                         "(AnimateDiff's recipe; the shipped base is a video-tuned T2I)")
    ap.add_argument("--custom-steps", dest="custom_steps", type=int, help=f"custom stage steps ({STEPS['custom'][0]})")
    ap.add_argument("--custom-lr", dest="custom_lr", type=float, default=LR["custom"])
    ap.add_argument("--custom-prior-share", dest="custom_prior_share", type=float, default=0.5,
                    help="share of each custom-stage batch from the base world (0: no prior preservation)")
    ap.add_argument("--custom-prior-captions", dest="custom_prior_captions", choices=("clip", "class"), default="clip",
                    help="the prior frames' captions: their clip's (motion words included) or the class prompt "
                         "'a <colour> <shape>'")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    args.work.mkdir(parents=True, exist_ok=True)
    args.out.mkdir(parents=True, exist_ok=True)
    which = 1 if args.quick else 0
    record_path = args.out / "toy_models.json"
    record = json.loads(record_path.read_text()) if record_path.exists() else {}
    record.update({"script": "scripts/train_toy_models.py", "seed": SEED, "threads": args.threads,
                   "torch": torch.__version__, "files": tw.MODEL_FILES, "unet": UNET, "vae": VAE, "clip": CLIP,
                   "motion_module": MOTION, "world": {"size": tw.SIZE, "frames": tw.FRAMES}})
    record.setdefault("stages", {})
    for stage in args.stages.split(","):
        t0 = time.time()
        log(f"stage {stage}...")
        steps = STEPS.get(stage, (0, 0))[which]
        if stage == "custom" and args.custom_steps:
            steps = args.custom_steps
        if stage == "vae":
            info = train_vae(steps, STEPS["vae_decoder"][which], args.work)
        elif stage == "text":
            vocab = write_toy_tokenizer()
            if vocab != CLIP["vocab_size"]:
                sys.exit(f"the toy tokenizer has {vocab} tokens but CLIP['vocab_size'] is {CLIP['vocab_size']}")
            info = train_text(steps, args.work)
        elif stage == "t2i":
            info = train_t2i(steps, args.work)
        elif stage == "motion":
            info = train_motion(steps, args.work, args.frozen_t2i)
            write_base(args.work, args.out)
        elif stage == "direction":
            info = train_direction(steps, args.work, args.frozen_t2i)
            write_base(args.work, args.out)
        elif stage == "unpack":
            info = unpack_files(args.work, args.out)
        elif stage == "adapter":
            info = train_adapter(steps, args.work, args.out)
        elif stage == "custom":
            info = train_custom(steps, args.work, args.custom_lr, args.custom_prior_share, args.custom_prior_captions)
            write_custom(args.work, args.out)
        elif stage == "measure":
            info = measure(args.out)
        else:
            sys.exit(f"unknown stage {stage}")
        secs = time.time() - t0
        log(f"stage {stage}: {secs:.0f} s")
        record["stages"][stage] = dict(info, steps=steps, seconds=round(secs, 1))
        record_path.write_text(json.dumps(record, indent=1) + "\n")
    record["total_seconds"] = round(sum(s["seconds"] for s in record["stages"].values()), 1)
    record_path.write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()
