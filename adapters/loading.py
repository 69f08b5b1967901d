"""Loading SD1.5 checkpoints and AnimateDiff motion modules into one diffusers UNetMotionModel.

The video model is built on the meta device and its tensors are assigned from the file, so a
real-size checkpoint never exists twice in memory (diffusers' ``from_unet2d`` holds two copies
of the spatial weights). Architectures are derived from the tensors (see ``detect``).
"""
import json
import math
from pathlib import Path

import torch

from . import detect, keys, norms
from .errors import ModelFileError
from .files import read_state_dict

PACK_DIR = Path(__file__).resolve().parent.parent


def _motion_block_types(attention):
    down = ["CrossAttnDownBlockMotion" if a else "DownBlockMotion" for a in attention]
    up = ["CrossAttnUpBlockMotion" if a else "UpBlockMotion" for a in reversed(attention)]
    return down, up


def sinusoid_table(length, dim):
    position = torch.arange(length).unsqueeze(1)
    div = torch.exp(torch.arange(0, dim, 2) * (-math.log(10000.0) / dim))
    pe = torch.zeros(1, length, dim)
    pe[0, :, 0::2] = torch.sin(position * div)
    pe[0, :, 1::2] = torch.cos(position * div)
    return pe


def assign_weights(module, state, path, what, dtype):
    """Assign tensors into a meta-built module; fill positional tables; report what is missing."""
    result = module.load_state_dict(state, strict=False, assign=True)
    missing = []
    for name in result.missing_keys:
        if name.endswith("pos_embed.pe"):
            mod = module.get_submodule(name.rsplit(".", 1)[0])
            length, dim = mod.pe.shape[1], mod.pe.shape[2]
            mod.pe = sinusoid_table(length, dim).to(dtype)
        else:
            missing.append(name)
    if missing:
        raise ModelFileError(path, f"the {what} weights are incomplete: {len(missing)} tensors missing "
                             f"(e.g. {', '.join(missing[:3])}).",
                             "The file may be truncated or of another architecture.")
    if result.unexpected_keys:
        raise ModelFileError(path, f"the {what} has tensors this architecture does not use "
                             f"(e.g. {', '.join(result.unexpected_keys[:3])}).",
                             "It may be a different model type than this slot needs.")
    for name, t in list(module.named_buffers()) + list(module.named_parameters()):
        if t.is_meta:
            raise ModelFileError(path, f"the {what} is missing '{name}'.", "The file may be truncated.")
    return module


def read_checkpoint(path, dtype=torch.float32):
    """An SD1.5 single-file checkpoint as diffusers-named parts plus their configs."""
    sd = read_state_dict(path, dtype)
    detect.classify_checkpoint(sd, path)
    parts = detect.split_checkpoint(sd)
    del sd
    layout, unet_config = detect.unet_layout(parts["unet"], path)
    unet, unknown = keys.unet_ldm_to_diffusers(parts["unet"], layout)
    unknown = [k for k in unknown if not k.startswith("model_ema")]
    if unknown:
        raise ModelFileError(path, f"unexpected UNet tensors {unknown[:3]}.",
                             "This does not look like an SD1.5 UNet.")
    out = {"unet": unet, "unet_config": unet_config, "layout": layout}
    if parts["vae"]:
        vae_cfg, (levels, layers) = detect.vae_config(parts["vae"], path)
        out["vae"], _ = keys.vae_ldm_to_diffusers(parts["vae"], levels, layers)
        out["vae_config"] = vae_cfg
    if parts["clip"]:
        out["clip"] = keys.clip_ldm_to_transformers(parts["clip"])
        out["clip_config"] = detect.clip_config(out["clip"], path)
    return out


def read_unet_weights(path, dtype=torch.float32):
    """Only the UNet of a checkpoint (file or diffusers folder), diffusers names, plus its layout."""
    path = Path(path)
    if path.is_dir():
        folder = read_diffusers_folder(path, dtype, parts=("unet",))
        return folder["unet"], folder["layout"], folder.get("clip")
    ck = read_checkpoint(path, dtype)
    return ck["unet"], ck["layout"], ck.get("clip")


def read_diffusers_folder(folder, dtype=torch.float32, parts=("unet", "vae", "text_encoder")):
    """A diffusers pipeline folder (unet/, vae/, text_encoder/, tokenizer/)."""
    folder = Path(folder)
    out = {}

    def weights(sub):
        for name in ("diffusion_pytorch_model.safetensors", "model.safetensors",
                     "diffusion_pytorch_model.bin", "pytorch_model.bin"):
            p = folder / sub / name
            if p.exists():
                return read_state_dict(p, dtype)
        raise ModelFileError(folder / sub, "no weights file found.", "Expected diffusion_pytorch_model.safetensors.")

    def config(sub):
        p = folder / sub / "config.json"
        if not p.exists():
            raise ModelFileError(p, "missing config.json.", "A diffusers folder needs one per component.")
        return json.loads(p.read_text())

    if "unet" in parts:
        cfg = config("unet")
        if cfg.get("cross_attention_dim", 768) in (1024, 2048) or cfg.get("addition_embed_type"):
            raise ModelFileError(folder, "this diffusers UNet is not SD1.5 (SDXL/SD2).", "Pick an SD1.5 model.")
        out["unet"] = weights("unet")
        blocks = cfg["down_block_types"]
        out["layout"] = keys.UNetLayout(len(blocks), cfg.get("layers_per_block", 2),
                                        tuple(b.startswith("CrossAttn") for b in blocks))
        heads = cfg.get("attention_head_dim", 8)
        out["unet_config"] = {k: cfg[k] for k in (
            "in_channels", "out_channels", "block_out_channels", "layers_per_block", "cross_attention_dim",
            "norm_num_groups", "use_linear_projection", "down_block_types", "up_block_types") if k in cfg}
        out["unet_config"]["attention_head_dim"] = heads if isinstance(heads, int) else heads[0]
        out["unet_config"]["transformer_layers_per_block"] = cfg.get("transformer_layers_per_block", 1)
    if "vae" in parts:
        out["vae"] = weights("vae")
        out["vae_config"] = {k: v for k, v in config("vae").items() if not k.startswith("_")}
    if "text_encoder" in parts:
        out["clip"] = keys.clip_ldm_to_transformers(weights("text_encoder"))
        tcfg = config("text_encoder")
        out["clip_config"] = {k: tcfg[k] for k in (
            "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
            "max_position_embeddings", "projection_dim", "hidden_act") if k in tcfg}
        if (folder / "tokenizer").is_dir():
            out["tokenizer_dir"] = folder / "tokenizer"
    return out


def read_motion_module(path, dtype=torch.float32):
    """(version, motion config, diffusers-named tensors) from an original-layout file or a
    diffusers MotionAdapter folder."""
    path = Path(path)
    if path.is_dir():
        cfg_path = path / "config.json"
        if not cfg_path.exists():
            raise ModelFileError(path, "not a diffusers MotionAdapter folder (no config.json).", "")
        cfg = json.loads(cfg_path.read_text())
        wfile = next((path / n for n in ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")
                      if (path / n).exists()), None)
        if wfile is None:
            raise ModelFileError(path, "no weights file in the MotionAdapter folder.", "")
        sd = read_state_dict(wfile, dtype)
        mid = cfg.get("use_motion_mid_block", True)
        max_len = cfg.get("motion_max_seq_length", 32)
        version = "v2" if mid else ("v1" if max_len == 24 else "v3")
        chans = list(cfg["block_out_channels"])
        return version, {"block_out_channels": chans, "layers_per_block": cfg.get("motion_layers_per_block", 2),
                         "motion_max_seq_length": max_len, "use_motion_mid_block": mid,
                         "temporal_transformer_layers_per_block": cfg.get("motion_transformer_layers_per_block", 1),
                         "motion_num_attention_heads": cfg.get("motion_num_attention_heads", 8)}, sd
    sd = read_state_dict(path, dtype)
    version, cfg = detect.motion_module_config(sd, path)
    out = {}
    for k in list(sd):
        new = keys.motion_original_to_diffusers(k)
        v = sd.pop(k)
        if new is not None:
            out[new] = v
    return version, cfg, out


def motion_model_config(unet_config, motion_config):
    down, up = _motion_block_types([t.startswith("CrossAttn") for t in unet_config["down_block_types"]])
    return {
        "in_channels": unet_config["in_channels"],
        "out_channels": unet_config["out_channels"],
        "block_out_channels": tuple(unet_config["block_out_channels"]),
        "layers_per_block": unet_config["layers_per_block"],
        "cross_attention_dim": unet_config["cross_attention_dim"],
        "num_attention_heads": unet_config["attention_head_dim"],
        "norm_num_groups": unet_config["norm_num_groups"],
        "use_linear_projection": unet_config["use_linear_projection"],
        "transformer_layers_per_block": unet_config.get("transformer_layers_per_block", 1),
        "down_block_types": tuple(down),
        "up_block_types": tuple(up),
        "motion_max_seq_length": motion_config["motion_max_seq_length"],
        "motion_num_attention_heads": motion_config["motion_num_attention_heads"],
        "use_motion_mid_block": motion_config["use_motion_mid_block"],
        "temporal_transformer_layers_per_block": motion_config["temporal_transformer_layers_per_block"],
        "time_cond_proj_dim": unet_config.get("time_cond_proj_dim"),
    }


def build_unet_motion(unet_sd, unet_config, motion_sd, motion_config, dtype, ckpt_path=None, mm_path=None):
    """UNetMotionModel whose tensors ARE the given ones (no copies)."""
    from diffusers import UNetMotionModel

    if list(motion_config["block_out_channels"]) != list(unet_config["block_out_channels"]):
        raise ModelFileError(mm_path, f"this motion module is for UNet channels {motion_config['block_out_channels']} "
                             f"but the checkpoint {Path(str(ckpt_path)).name} has {unet_config['block_out_channels']}.",
                             "Use an SD1.5 motion module with an SD1.5 checkpoint.")
    cfg = motion_model_config(unet_config, motion_config)
    with torch.device("meta"):
        unet = UNetMotionModel(**cfg)
    state = dict(unet_sd)
    state.update(motion_sd)
    assign_weights(unet, state, ckpt_path if not motion_sd else f"{ckpt_path} + {mm_path}", "video UNet", dtype)
    norms.install(unet, norms.mode_for(motion_config))  # normalize as AnimateDiff-Evolved does
    return unet.eval().requires_grad_(False)


def build_vae(vae_sd, vae_config, dtype, path=None):
    from diffusers import AutoencoderKL
    with torch.device("meta"):
        vae = AutoencoderKL(**vae_config)
    return assign_weights(vae, vae_sd, path, "VAE", dtype).eval().requires_grad_(False)


def build_text_encoder(clip_sd, clip_config, dtype, path=None):
    from transformers import CLIPTextConfig, CLIPTextModel
    cfg = CLIPTextConfig(**clip_config)
    with torch.device("meta"):
        te = CLIPTextModel(cfg)
    prefix = "text_model." if any(k.startswith("text_model.") for k in te.state_dict()) else ""
    sd = {prefix + k: v for k, v in clip_sd.items() if not k.endswith("position_ids")}
    te.load_state_dict(sd, strict=False, assign=True)
    for name, b in te.named_buffers():
        if b.is_meta and name.endswith("position_ids"):
            te.get_submodule(name.rsplit(".", 1)[0]).register_buffer(
                "position_ids", torch.arange(cfg.max_position_embeddings).unsqueeze(0), persistent=False)
    for name, t in list(te.named_parameters()) + list(te.named_buffers()):
        if t.is_meta:
            raise ModelFileError(path, f"the text encoder is missing '{name}'.", "The file may be truncated.")
    return te.eval().requires_grad_(False)


TOKENIZER_FILES = ("vocab.json", "merges.txt")


def tokenizer_dirs(candidates=()):
    """Folders that may hold CLIP vocab.json + merges.txt, best first: the model's own, ComfyUI's
    ``comfy/sd1_tokenizer``, then the pack's tiny tokenizers (the embedded toy models' and the
    tests' random models'; good only for those)."""
    import os
    import sys
    dirs = [Path(c) for c in candidates if c]
    comfy_root = os.environ.get("COMFYUI_PATH")
    if comfy_root:
        dirs.append(Path(comfy_root) / "comfy" / "sd1_tokenizer")
    mod = sys.modules.get("comfy")
    for root in getattr(mod, "__path__", []) if mod is not None else []:
        dirs.append(Path(root) / "sd1_tokenizer")
    dirs += [PACK_DIR / "adapters" / "configs" / d for d in ("toy_tokenizer", "tiny_tokenizer")]
    return [d for d in dirs if all((d / f).is_file() for f in TOKENIZER_FILES)]


def load_tokenizer(vocab_size, candidates=()):
    """The first CLIPTokenizer whose vocabulary is the text encoder's (SD1.5: 49408 tokens)."""
    from transformers import CLIPTokenizer
    for d in tokenizer_dirs(candidates):
        tok = CLIPTokenizer(str(d / "vocab.json"), str(d / "merges.txt"), model_max_length=77)
        if len(tok) == vocab_size:
            return tok
    raise ModelFileError(None, f"no CLIP tokenizer with {vocab_size} tokens (the text encoder's vocabulary) was found.",
                         "Install the pack inside ComfyUI (it uses comfy/sd1_tokenizer) or set COMFYUI_PATH.")


def load_video_model(checkpoint, motion_module, dtype=torch.float32, tokenizer_dirs=()):
    """An AnimateDiff ``VideoModel`` from an SD1.5 checkpoint (file or diffusers folder) and a
    motion module (v1/v2/v3 file or diffusers MotionAdapter folder)."""
    from .video_model import VideoModel
    checkpoint, motion_module = Path(checkpoint), Path(motion_module)
    if checkpoint.is_dir():
        parts = read_diffusers_folder(checkpoint, dtype)
        tokenizer_dirs = [parts.get("tokenizer_dir"), *tokenizer_dirs]
    else:
        parts = read_checkpoint(checkpoint, dtype)
    for need, what in (("vae", "VAE"), ("clip", "text encoder")):
        if need not in parts:
            raise ModelFileError(checkpoint, f"the checkpoint has no {what}.",
                                 "Use a full SD1.5 checkpoint (UNet, VAE and text encoder).")
    version, motion_cfg, motion_sd = read_motion_module(motion_module, dtype)
    unet = build_unet_motion(parts.pop("unet"), parts["unet_config"], motion_sd, motion_cfg, dtype,
                             checkpoint, motion_module)
    del motion_sd
    vae = build_vae(parts.pop("vae"), parts["vae_config"], dtype, checkpoint)
    text_encoder = build_text_encoder(parts.pop("clip"), parts["clip_config"], dtype, checkpoint)
    tokenizer = load_tokenizer(parts["clip_config"]["vocab_size"], tokenizer_dirs)
    info = {"checkpoint": str(checkpoint), "motion_module": str(motion_module), "motion_version": version,
            "layout": parts["layout"], "unet_config": parts["unet_config"], "dtype": str(dtype),
            "normalization": norms.installed_mode(unet)}
    return VideoModel(unet, text_encoder, tokenizer, vae, info)
