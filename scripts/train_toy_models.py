"""Train the embedded toy models on the toy world (adapters/toyworld.py), deterministically, on a CPU.

Stages (each cached in --work, so a later stage can be re-run alone):
  1. vae       AutoencoderKL on base-world frames + generic shapes (64 px -> 8x8x4 latents)
  2. t2i       UNet2DConditionModel + CLIP text encoder (tiny tokenizer) on single frames
  3. motion    AnimateDiff motion module (UNetMotionModel) on the clips, T2I frozen
  4. adapter   the pack's Motion Adapter (adapters.training.train) on frozen clips
  5. custom    DreamBooth-style fine-tune of the T2I UNet on the 'sks star' stills, with prior
               preservation on base-world frames
Then the files are written in the layouts users' files have (LDM single-file checkpoints, an
original-layout AnimateDiff v2 motion module, a still-moving-adapter/1 file), reloaded through
``load_video_model`` and measured with the pack's own sampler. Everything runs on 1 thread with
fixed seeds: the same command gives the same weights.

    OMP_NUM_THREADS=1 python scripts/train_toy_models.py --out embedded
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

from adapters import export, toyworld as tw  # noqa: E402
from adapters.files import save_safetensors  # noqa: E402
from adapters.training import _noise_schedule  # noqa: E402

SEED = 1234
# GroupNorm has 32 groups (SD's convention, which the loader assumes): with 32 channels each group
# is one channel, i.e. instance norm, which wipes out absolute colour (a 32-channel VAE learned
# grey blobs). 64+ channels keep 2+ channels per group.
UNET = dict(sample_size=8, in_channels=4, out_channels=4, block_out_channels=(32, 64), layers_per_block=1,
            cross_attention_dim=32, attention_head_dim=8, norm_num_groups=32,
            down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"))
VAE = dict(in_channels=3, out_channels=3, block_out_channels=(64, 64, 128, 128), layers_per_block=1,
           latent_channels=4, norm_num_groups=32, down_block_types=("DownEncoderBlock2D",) * 4,
           up_block_types=("UpDecoderBlock2D",) * 4, sample_size=64, scaling_factor=0.18215)
CLIP = dict(vocab_size=514, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=1,
            max_position_embeddings=77, projection_dim=32, hidden_act="quick_gelu",
            bos_token_id=512, eos_token_id=513, pad_token_id=513)
MOTION = dict(motion_layers_per_block=1, motion_max_seq_length=32, use_motion_mid_block=True,
              motion_num_attention_heads=8, motion_transformer_layers_per_block=1)
# steps per stage (full run / --quick plumbing check)
# The shipped weights used these full-run numbers; a machine with time to spare gets better models
# from larger ones (the VAE above all: 400 steps leave it blurry, see embedded/README.md).
STEPS = {"vae": (400, 20), "vae_crops": (600, 10), "t2i": (800, 20), "motion": (1400, 20), "adapter": (100, 5),
         "custom": (150, 10)}
NAMES = {"base": "toy_base.safetensors", "custom": "toy_custom_sks_star.safetensors",
         "motion": "toy_mm_v2.safetensors", "adapter": "toy_motion_adapter.safetensors"}
EVAL_PROMPTS = [tw.caption(c, s, m) for c, s, m in (("red", "circle", "left"), ("blue", "square", "right"),
                                                     ("green", "triangle", "up"), ("yellow", "circle", "down"),
                                                     ("blue", "circle", "still"))]


def log(*a):
    print(*a, flush=True)


def cosine_lr(opt, base, step, total, warmup=20):
    lr = base * min(1.0, (step + 1) / warmup) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / total)))
    for g in opt.param_groups:
        g["lr"] = lr


def pixels(u8):
    return torch.from_numpy(np.ascontiguousarray(u8)).float().permute(0, 3, 1, 2) / 127.5 - 1


# --- 1. VAE -------------------------------------------------------------------------------------

def train_vae(steps, steps_crops, work):
    """Phase 1: whole 64 px frames; phase 2 (from phase 1's rescaled weights): random 32 px
    crops, 8 a batch, twice the images for the same cost per step (convolutions do not care)."""
    phase1 = work / "vae_phase1.pt"
    if not phase1.exists():
        _train_vae(steps, work, None, 64, 4, SEED)
        (work / "vae.pt").rename(phase1)
    if not steps_crops:
        shutil.copyfile(phase1, work / "vae.pt")
        return {"steps_crops": 0}
    return dict(_train_vae(steps_crops, work, phase1, 32, 8, SEED + 100), steps_crops=steps_crops)


def _train_vae(steps, work, init, crop, batch, seed):
    from diffusers import AutoencoderKL
    torch.manual_seed(seed)
    clips = tw.dataset(240, seed=SEED + 1)
    frames = np.concatenate([c.frames for c in clips])
    data = np.concatenate([frames, tw.generic_images(len(frames) // 4, seed=SEED)])
    # the subject covers ~5% of a frame: weight its pixels up, or the autoencoder first learns
    # the background and a grey blob (it did, in a first 200-step run)
    weight = torch.from_numpy(1.0 + 9.0 * tw.foreground(data, 20.0)).float()[:, None]
    held = np.concatenate([s.frames for s in tw.custom_stills(4, seed=99)])  # monitoring only
    vae = AutoencoderKL(**VAE)
    if init is not None:
        vae.load_state_dict(torch.load(init, weights_only=True))
    opt = torch.optim.AdamW(vae.parameters(), lr=1e-3, weight_decay=0.0)
    g = torch.Generator().manual_seed(seed + 2)
    for step in range(steps):
        cosine_lr(opt, 1e-3, step, steps)
        idx = torch.randint(len(data), (batch,), generator=g)
        x, w = pixels(data[idx.numpy()]), weight[idx]
        if crop < tw.SIZE:
            i, j = (int(v) for v in torch.randint(tw.SIZE - crop + 1, (2,), generator=g))
            x, w = x[:, :, i:i + crop, j:j + crop], w[:, :, i:i + crop, j:j + crop]
        post = vae.encode(x).latent_dist
        z = post.mean + post.std * torch.randn(post.mean.shape, generator=g)
        rec = vae.decode(z).sample
        loss = (w * ((rec - x) ** 2 + 0.2 * (rec - x).abs())).mean() / w.mean() + 1e-6 * post.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        if step % 50 == 0 or step == steps - 1:
            with torch.no_grad():
                r = vae.decode(vae.encode(pixels(held)).latent_dist.mean).sample.clamp(-1, 1)
            r = ((r + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()
            log(f"  vae {step:4d} loss {loss.item():.4f}  held-out star colour score "
                f"{tw.custom_colour_score(r):.2f} (original {tw.custom_colour_score(held):.2f})")
    vae.eval()
    # SD's convention: latents * 0.18215 have unit variance. Rescale the latent space (an exact
    # reparametrization: quant_conv's mean rows and log-variance bias, post_quant_conv's input)
    with torch.no_grad():
        z = torch.cat([vae.encode(pixels(frames[i:i + 64])).latent_dist.mean for i in range(0, 512, 64)])
        s = 1.0 / (z.std().item() * VAE["scaling_factor"])
        c = VAE["latent_channels"]
        vae.quant_conv.weight[:c] *= s
        vae.quant_conv.bias[:c] *= s
        vae.quant_conv.bias[c:] += 2 * math.log(s)
        vae.post_quant_conv.weight /= s
        x = pixels(frames[-64:])
        rec = vae.decode(vae.encode(x).latent_dist.mean).sample.clamp(-1, 1)
        psnr = 10 * math.log10(4 / F.mse_loss(rec, x).item())
    log(f"  vae latent rescale x{s:.3f}, reconstruction PSNR {psnr:.1f} dB")
    torch.save(vae.state_dict(), work / "vae.pt")
    return {"reconstruction_psnr_db": round(psnr, 2)}


def load_vae(work):
    from diffusers import AutoencoderKL
    vae = AutoencoderKL(**VAE)
    vae.load_state_dict(torch.load(work / "vae.pt", weights_only=True))
    return vae.eval().requires_grad_(False)


def encode(vae, u8, chunk=64):
    with torch.no_grad():
        return torch.cat([vae.encode(pixels(u8[i:i + chunk])).latent_dist.mean
                          for i in range(0, len(u8), chunk)]) * VAE["scaling_factor"]


def tokenizer():
    from transformers import CLIPTokenizer
    d = ROOT / "adapters" / "configs" / "tiny_tokenizer"
    return CLIPTokenizer(str(d / "vocab.json"), str(d / "merges.txt"), model_max_length=77)


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


def diffusion_loss(unet, lat, emb, g, alphas, frames=None):
    noise = torch.randn(lat.shape, generator=g)
    t = torch.randint(0, 1000, (lat.shape[0],), generator=g)
    a = alphas[t].view(-1, *([1] * (lat.ndim - 1)))
    noisy = a.sqrt() * lat + (1 - a).sqrt() * noise
    if frames:
        emb = emb.repeat_interleave(frames, 0)
    return F.mse_loss(unet(noisy, t, encoder_hidden_states=emb).sample, noise)


# --- 2. T2I -------------------------------------------------------------------------------------

def train_t2i(steps, work):
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel
    vae = load_vae(work)
    lat, caps = world_latents(work, vae)
    frames = lat.permute(0, 2, 1, 3, 4).reshape(-1, *lat.shape[1:2], *lat.shape[3:])  # (N*F, C, h, w)
    frame_caps = [c for c in caps for _ in range(lat.shape[2])]
    tok = tokenizer()
    ids = tokens(tok, frame_caps)
    empty = tokens(tok, [""])
    torch.manual_seed(SEED + 4)
    unet = UNet2DConditionModel(**UNET)
    te = CLIPTextModel(CLIPTextConfig(**CLIP))
    params = list(unet.parameters()) + list(te.parameters())
    opt = torch.optim.AdamW(params, lr=1e-3, weight_decay=1e-2)
    alphas = _noise_schedule()
    g = torch.Generator().manual_seed(SEED + 5)
    unet.train()
    te.train()
    for step in range(steps):
        cosine_lr(opt, 1e-3, step, steps)
        idx = torch.randint(len(frames), (16,), generator=g)
        batch_ids = ids[idx].clone()
        drop = torch.rand(16, generator=g) < 0.1     # caption dropout: classifier-free guidance works
        batch_ids[drop] = empty
        loss = diffusion_loss(unet, frames[idx], te(batch_ids)[0], g, alphas)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        if step % 50 == 0 or step == steps - 1:
            log(f"  t2i {step:4d} loss {loss.item():.4f}")
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

def train_motion(steps, work):
    from diffusers import MotionAdapter, UNetMotionModel
    vae = load_vae(work)
    lat, caps = world_latents(work, vae)
    unet2d, te = load_t2i(work)
    tok = tokenizer()
    uniq = sorted(set(caps)) + [""]
    with torch.no_grad():
        table = te(tokens(tok, uniq))[0]
    cap_idx = torch.tensor([uniq.index(c) for c in caps])
    torch.manual_seed(SEED + 6)
    adapter = MotionAdapter(block_out_channels=UNET["block_out_channels"], **MOTION)
    for n, p in adapter.named_parameters():   # AnimateDiff starts every motion module as the identity
        if n.endswith("proj_out.weight") or n.endswith("proj_out.bias"):
            torch.nn.init.zeros_(p)
    unet = UNetMotionModel.from_unet2d(unet2d, adapter)
    unet.requires_grad_(False)
    params = [p for n, p in unet.named_parameters() if ".motion_modules." in n]
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(params, lr=1e-3, weight_decay=1e-2)
    alphas = _noise_schedule()
    g = torch.Generator().manual_seed(SEED + 7)
    unet.train()
    b, f = 4, lat.shape[2]
    for step in range(steps):
        cosine_lr(opt, 1e-3, step, steps)
        idx = torch.randint(len(lat), (b,), generator=g)
        ci = cap_idx[idx].clone()
        ci[torch.rand(b, generator=g) < 0.1] = len(uniq) - 1
        loss = diffusion_loss(unet, lat[idx], table[ci], g, alphas, frames=f)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        if step % 50 == 0 or step == steps - 1:
            log(f"  motion {step:4d} loss {loss.item():.4f}")
    motion = {k: v for k, v in unet.state_dict().items() if ".motion_modules." in k}
    torch.save(motion, work / "motion.pt")
    return {}


# --- writing the files ----------------------------------------------------------------------------

def write_checkpoint(path, unet_sd, te, vae):
    from adapters.random_models import layout_of
    clip = {(k[len("text_model."):] if k.startswith("text_model.") else k): v for k, v in te.state_dict().items()}
    clip = {k: v for k, v in clip.items() if not k.endswith("position_ids")}
    tensors = export.checkpoint_tensors(unet_sd, vae.state_dict(), clip, layout_of(UNET),
                                        (len(VAE["block_out_channels"]), VAE["layers_per_block"]), torch.float16)
    path.unlink(missing_ok=True)
    export.write_checkpoint(path, tensors)


def write_base(work, out):
    unet, te = load_t2i(work)
    write_checkpoint(out / NAMES["base"], unet.state_dict(), te, load_vae(work))
    motion = torch.load(work / "motion.pt", weights_only=True)
    (out / NAMES["motion"]).unlink(missing_ok=True)
    save_safetensors(export.motion_module_tensors(motion, torch.float16), out / NAMES["motion"])


# --- 4. Motion Adapter (the pack's trainer on the shipped files) ----------------------------------

def train_adapter(steps, work, out):
    from adapters import loading
    from adapters.data import LatentClip
    from adapters.training import TrainSettings, train
    vae = load_vae(work)
    lat, caps = world_latents(work, vae)
    clips = [LatentClip(lat[i], caps[i], f"toy clip {i}") for i in range(0, len(lat), 5)]
    vm = loading.load_video_model(out / NAMES["base"], out / NAMES["motion"])
    tmp = work / "adapter"
    shutil.rmtree(tmp, ignore_errors=True)
    settings = TrainSettings(steps=steps, learning_rate=1e-3, rank=4, batch=2, frames=lat.shape[2], seed=SEED)
    res = train(vm, "motion", settings, tmp / NAMES["adapter"], custom_clips=clips,
                metadata={"trained_by": "scripts/train_toy_models.py", "data": "toy world clips (frozen)"})
    (out / NAMES["adapter"]).unlink(missing_ok=True)
    shutil.copyfile(res.path, out / NAMES["adapter"])
    return {"final_loss": round(float(np.mean([l for _, l, _ in res.losses[-20:]])), 4)}


# --- 5. DreamBooth-style customization ------------------------------------------------------------

def train_custom(steps, work):
    vae = load_vae(work)
    lat, caps = world_latents(work, vae)
    stills = tw.custom_stills(6, seed=0)
    custom = encode(vae, np.concatenate([s.frames for s in stills]))
    prior = lat[:, :, 0]
    unet, te = load_t2i(work)
    tok = tokenizer()
    with torch.no_grad():
        custom_emb = te(tokens(tok, [tw.CUSTOM_CLASS_CAPTION]))[0]
        uniq = sorted(set(caps))
        table = te(tokens(tok, uniq))[0]
    prior_idx = torch.tensor([uniq.index(c) for c in caps])
    torch.manual_seed(SEED + 8)
    opt = torch.optim.AdamW(unet.parameters(), lr=2e-4, weight_decay=1e-2)
    alphas = _noise_schedule()
    g = torch.Generator().manual_seed(SEED + 9)
    unet.train()
    for step in range(steps):
        ci = torch.randint(len(custom), (4,), generator=g)
        pi = torch.randint(len(prior), (4,), generator=g)
        x = torch.cat([custom[ci], prior[pi]])
        emb = torch.cat([custom_emb.expand(4, -1, -1), table[prior_idx[pi]]])
        loss = diffusion_loss(unet, x, emb, g, alphas)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        if step % 50 == 0 or step == steps - 1:
            log(f"  custom {step:4d} loss {loss.item():.4f}")
    torch.save({"unet": unet.state_dict(), "text": te.state_dict()}, work / "custom.pt")
    return {"stills": len(stills), "caption": tw.CUSTOM_CLASS_CAPTION}


def write_custom(work, out):
    unet, te = load_t2i(work, "custom.pt")
    write_checkpoint(out / NAMES["custom"], unet.state_dict(), te, load_vae(work))


# --- measuring the shipped files with the pack's sampler ------------------------------------------

def generate(vm, prompt, seed, steps=20, cfg=4.0, frames=tw.FRAMES):
    from adapters import sampling
    return sampling.text_to_video(vm, prompt, seed=seed, steps=steps, cfg=cfg, width=tw.SIZE, height=tw.SIZE,
                                  frames=frames)


def directional_motion(frames, motion):
    """Displacement (px) of the subject along the caption's direction, first to last frame."""
    dx, dy = tw.displacement(frames)
    ux, uy = tw.MOTIONS[motion]
    return dx * ux + dy * uy if motion != "still" else -math.hypot(dx, dy)


def measure(out, seeds=(0, 1)):
    from adapters import inject, loading
    vm = loading.load_video_model(out / NAMES["base"], out / NAMES["motion"])
    rows = {}
    for prompt in EVAL_PROMPTS:
        motion = tw.parse_caption(prompt)["motion"]
        scores = [directional_motion(generate(vm, prompt, s), motion) for s in seeds]
        rows[prompt] = round(float(np.mean(scores)), 2)
        log(f"  {prompt!r}: motion along caption {rows[prompt]} px (truth {2.5 * 7:.0f}-{3.5 * 7:.0f}; still: 0)")
    custom = inject.inject_checkpoint(vm, out / NAMES["custom"])
    prompt = tw.CUSTOM_CLASS_CAPTION
    base_c = float(np.mean([tw.custom_colour_score(generate(vm, prompt, s)) for s in seeds]))
    cust_c = float(np.mean([tw.custom_colour_score(generate(custom, prompt, s)) for s in seeds]))
    log(f"  custom colour score of '{prompt}': base {base_c:.3f}, customized {cust_c:.3f}")
    return {"motion_along_caption_px": rows, "custom_colour_base": round(base_c, 3),
            "custom_colour_customized": round(cust_c, 3)}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=ROOT / "embedded")
    ap.add_argument("--work", type=Path, default=ROOT / "output" / "toy_training")
    ap.add_argument("--stages", default="vae,t2i,motion,adapter,custom,measure")
    ap.add_argument("--threads", type=int, default=1, help="CPU threads (the shipped weights: 2)")
    ap.add_argument("--quick", action="store_true", help="a few steps per stage (plumbing check)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    args.work.mkdir(parents=True, exist_ok=True)
    args.out.mkdir(parents=True, exist_ok=True)
    which = 1 if args.quick else 0
    record_path = args.out / "toy_models.json"
    record = json.loads(record_path.read_text()) if record_path.exists() else {}
    record.update({"script": "scripts/train_toy_models.py", "seed": SEED, "threads": args.threads,
                   "torch": torch.__version__, "files": NAMES, "unet": UNET, "vae": VAE, "clip": CLIP,
                   "motion_module": MOTION, "world": {"size": tw.SIZE, "frames": tw.FRAMES}})
    record.setdefault("stages", {})
    for stage in args.stages.split(","):
        t0 = time.time()
        log(f"stage {stage}...")
        steps = STEPS.get(stage, (0, 0))[which]
        if stage == "vae":
            info = train_vae(steps, STEPS["vae_crops"][which], args.work)
        elif stage == "t2i":
            info = train_t2i(steps, args.work)
        elif stage == "motion":
            info = train_motion(steps, args.work)
            write_base(args.work, args.out)
        elif stage == "adapter":
            info = train_adapter(steps, args.work, args.out)
        elif stage == "custom":
            info = train_custom(steps, args.work)
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
