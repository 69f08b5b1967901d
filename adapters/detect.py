"""Architecture detection from tensor names and shapes, as ComfyUI's model detection does.

Deriving configs from the file (instead of assuming SD1.5's numbers) lets the same loader
take users' real-size files and the tests' tiny files, and lets us refuse SDXL/SD2 files
with a message that says what they are.
"""
import re

from .errors import ModelFileError
from .keys import CLIP_PREFIX, UNET_PREFIX, VAE_PREFIX, UNetLayout

# SD1.5 conventions that shapes cannot tell: heads per attention and GroupNorm groups.
SD15_HEADS = 8
NORM_GROUPS = 32


def key_indices(keys, pattern):
    """The sorted integers that ``pattern``'s first group matches in ``keys`` (e.g. block numbers)."""
    rx = re.compile(pattern)
    return sorted({int(m.group(1)) for k in keys if (m := rx.match(k))})


def block_tensor(sd, names, path, what):
    """The first of ``names`` present in ``sd``; a missing one means a truncated file."""
    for name in names:
        if name in sd:
            return sd[name]
    block = re.search(r"blocks\.(\d+)\.", names[0])
    raise ModelFileError(path, f"the {what} is incomplete (down block {block.group(1) if block else '?'}).",
                         "The file may be truncated: copy it again.")


def classify_checkpoint(sd, path=None):
    """Refuse anything that is not an SD1.x checkpoint, naming what it is instead."""
    keys = sd.keys()
    if any(k.startswith("conditioner.embedders.") for k in keys) or f"{UNET_PREFIX}label_emb.0.0.weight" in sd:
        raise ModelFileError(path, "this is an SDXL checkpoint; this slot needs a Stable Diffusion 1.5 "
                             "checkpoint.", "AnimateDiff v1/v2/v3 motion modules only work with SD1.5 models.")
    if any(k.startswith("cond_stage_model.model.") for k in keys):
        raise ModelFileError(path, "this is a Stable Diffusion 2.x checkpoint (OpenCLIP text encoder); "
                             "this slot needs SD1.5.", "Pick an SD1.5-based checkpoint.")
    if any(k.startswith(("model.diffusion_model.double_blocks", "double_blocks.", "joint_blocks."))
           for k in keys) or any(".joint_blocks." in k for k in keys):
        raise ModelFileError(path, "this is a Flux/SD3 (transformer) model, not an SD1.5 UNet.",
                             "Pick an SD1.5-based checkpoint.")
    if not any(k.startswith(UNET_PREFIX) for k in keys):
        if any(".temporal_transformer." in k for k in keys):
            raise ModelFileError(path, "this is an AnimateDiff motion module, not a checkpoint.",
                                 "Put it in models/animatediff_models and pick it in the motion module slot.")
        if any(k.startswith(("lora_", "lora_unet_")) or ".lora_" in k or "lora_down" in k for k in keys):
            raise ModelFileError(path, "this is a LoRA, not a full checkpoint.",
                                 "Use the LoRA injection node instead.")
        raise ModelFileError(path, "no SD1.5 UNet weights found (no 'model.diffusion_model.' keys).",
                             "This slot needs a full SD1.5 single-file checkpoint.")


def encoder_layout(sd):
    """(levels, resnets per level, attention per level) from LDM ``input_blocks`` tensors:
    the encoder a UNet and a ControlNet share."""
    inputs = key_indices(list(sd), r"input_blocks\.(\d+)\.")
    down_at = [k for k in inputs if f"input_blocks.{k}.0.op.weight" in sd]
    levels = len(down_at) + 1
    layers = down_at[0] - 1 if down_at else len(inputs) - 1
    attention = tuple(f"input_blocks.{1 + i * (layers + 1)}.1.proj_in.weight" in sd for i in range(levels))
    return levels, layers, attention


def unet_layout(unet_sd, path=None):
    """UNetLayout and diffusers UNet config from LDM UNet tensors (prefix removed)."""
    keys = list(unet_sd)
    w = unet_sd.get("input_blocks.0.0.weight")
    if w is None:
        raise ModelFileError(path, "the UNet weights are incomplete (no input_blocks.0.0).",
                             "The file may be truncated or not an SD1.5 model.")
    ctx = [v.shape[1] for k, v in unet_sd.items() if k.endswith("attn2.to_k.weight")]
    if ctx and ctx[0] != 768:
        kind = {1024: "SD2.x", 2048: "SDXL"}.get(ctx[0])
        if kind:
            raise ModelFileError(path, f"this is an {kind} UNet (text context {ctx[0]}); this slot needs SD1.5 (768).",
                                 "Pick an SD1.5-based checkpoint.")
    if "label_emb.0.0.weight" in unet_sd:
        raise ModelFileError(path, "this is an SDXL UNet; this slot needs SD1.5.", "Pick an SD1.5-based checkpoint.")
    levels, layers, attention = encoder_layout(unet_sd)
    channels = []
    for i in range(levels):
        first = 1 + i * (layers + 1)
        conv = unet_sd.get(f"input_blocks.{first}.0.out_layers.3.weight")
        if conv is None:
            raise ModelFileError(path, f"the UNet weights are incomplete (input block {first}).",
                                 "The file may be truncated: copy it again.")
        channels.append(conv.shape[0])
    proj = next((v for k, v in unet_sd.items() if k.endswith("proj_in.weight")), None)
    depth = len(key_indices(keys, r"input_blocks\.1\.1\.transformer_blocks\.(\d+)\.")) or 1
    layout = UNetLayout(levels, layers, tuple(attention))
    config = {
        "sample_size": 64,
        "in_channels": w.shape[1],
        "out_channels": unet_sd["out.2.weight"].shape[0],
        "block_out_channels": channels,
        "layers_per_block": layers,
        "cross_attention_dim": ctx[0] if ctx else 768,
        "attention_head_dim": SD15_HEADS,
        "norm_num_groups": NORM_GROUPS,
        "use_linear_projection": proj is not None and proj.ndim == 2,
        "transformer_layers_per_block": depth,
        "down_block_types": ["CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attention],
        "up_block_types": ["CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attention)],
    }
    if "time_embed.cond_proj.weight" in unet_sd:
        config["time_cond_proj_dim"] = unet_sd["time_embed.cond_proj.weight"].shape[1]
    if config["in_channels"] != 4:
        raise ModelFileError(path, f"this UNet takes {config['in_channels']} input channels (an inpainting "
                             "or instruct model); AnimateDiff needs a plain 4-channel SD1.5 model.",
                             "Pick a non-inpainting SD1.5 checkpoint.")
    return layout, config


def vae_config(vae_sd, path=None):
    """Diffusers AutoencoderKL config and (levels, layers) from LDM VAE tensors."""
    levels = len(key_indices(vae_sd, r"encoder\.down\.(\d+)\."))
    layers = len(key_indices(vae_sd, r"encoder\.down\.0\.block\.(\d+)\."))
    if levels == 0:
        raise ModelFileError(path, "the checkpoint holds no VAE weights (first_stage_model.*).",
                             "Use a checkpoint with a baked-in VAE.")
    channels = [vae_sd[f"encoder.down.{i}.block.0.conv1.weight"].shape[0] for i in range(levels)]
    return {
        "in_channels": vae_sd["encoder.conv_in.weight"].shape[1],
        "out_channels": vae_sd["decoder.conv_out.weight"].shape[0],
        "latent_channels": vae_sd["quant_conv.weight"].shape[0] // 2,
        "block_out_channels": channels,
        "layers_per_block": layers,
        "norm_num_groups": NORM_GROUPS,
        "down_block_types": ["DownEncoderBlock2D"] * levels,
        "up_block_types": ["UpDecoderBlock2D"] * levels,
        "sample_size": 512,
        "scaling_factor": 0.18215,
    }, (levels, layers)


def clip_config(clip_sd, path=None):
    """transformers CLIPTextConfig kwargs from CLIPTextModel tensors."""
    emb = clip_sd.get("embeddings.token_embedding.weight")
    if emb is None:
        raise ModelFileError(path, "the text encoder weights are incomplete.", "The file may be truncated.")
    layers = len(key_indices(clip_sd, r"encoder\.layers\.(\d+)\."))
    width = emb.shape[1]
    return {
        "vocab_size": emb.shape[0],
        "hidden_size": width,
        "intermediate_size": clip_sd["encoder.layers.0.mlp.fc1.weight"].shape[0],
        "num_hidden_layers": layers,
        "num_attention_heads": max(1, width // 64),
        "max_position_embeddings": clip_sd["embeddings.position_embedding.weight"].shape[0],
        "projection_dim": width,
        "hidden_act": "quick_gelu",
        # CLIP's vocabularies end with <|startoftext|>, <|endoftext|> (49406, 49407 in SD1.5's)
        "bos_token_id": emb.shape[0] - 2,
        "eos_token_id": emb.shape[0] - 1,
        "pad_token_id": emb.shape[0] - 1,
    }


def split_checkpoint(sd):
    """Split a single-file checkpoint into UNet / VAE / text-encoder dicts (prefixes removed).

    Tensors are moved, not copied. EMA copies (``model_ema.*``) are dropped.
    """
    parts = {"unet": {}, "vae": {}, "clip": {}}
    for k in list(sd):
        for name, prefix in (("unet", UNET_PREFIX), ("vae", VAE_PREFIX), ("clip", CLIP_PREFIX)):
            if k.startswith(prefix):
                parts[name][k[len(prefix):]] = sd.pop(k)
                break
    return parts


MOTION_VERSIONS = ("v1", "v2", "v3", "animatelcm")
# AnimateLCM files carry no positional tables; AnimateDiff-Evolved then computes a sinusoidal one
# of 64 positions, so the pack does the same (the loader fills missing tables with that sinusoid).
ANIMATELCM_POSITIONS = 64


def motion_module_config(mm_sd, path=None):
    """Version and diffusers UNetMotionModel motion settings from original-layout keys.

    v1: positional table of 24, no mid block; v2: 32 with a mid block; v3: 32, no mid block;
    AnimateLCM: no positional-encoding keys at all (read as AnimateDiff-Evolved reads it).
    """
    keys = list(mm_sd)
    if not any(".motion_modules." in k for k in keys):
        if any("temporal_attentions" in k or "temporal_layers" in k for k in keys):
            raise ModelFileError(path, "this is a HotshotXL (SDXL) motion model; this slot needs an "
                                 "AnimateDiff SD1.5 motion module (v1, v2 or v3).", "")
        raise ModelFileError(path, "no AnimateDiff motion-module weights found.",
                             "Put an AnimateDiff SD1.5 motion module (mm_sd_v15*.ckpt, v3_sd15_mm.ckpt) here.")
    if any(".processor." in k and "_lora." in k for k in keys):
        raise ModelFileError(path, "this is a MotionLoRA, not a motion module.",
                             "Put it in models/animatediff_motion_lora and use the MotionLoRA node.")
    down = key_indices(keys, r"down_blocks\.(\d+)\.motion_modules\.")
    chans = []
    for i in down:
        w = block_tensor(mm_sd, [f"down_blocks.{i}.motion_modules.0.temporal_transformer.proj_in.weight",
                                 f"down_blocks.{i}.motion_modules.0.proj_in.weight"], path, "motion module")
        chans.append(w.shape[1])
    if chans == [320, 640, 1280]:
        raise ModelFileError(path, f"this is an SDXL motion module (levels {chans}); this slot needs an "
                             "SD1.5 one (v1, v2 or v3).", "SDXL motion modules do not work with SD1.5 checkpoints.")
    pe = next((v for k, v in mm_sd.items() if k.endswith("pos_encoder.pe") or k.endswith("pos_embed.pe")), None)
    mid = any(k.startswith("mid_block.motion_modules.") for k in keys)
    if not any("pos_encoder" in k or "pos_embed" in k for k in keys):
        version, max_len = "animatelcm", ANIMATELCM_POSITIONS
    else:
        max_len = pe.shape[1] if pe is not None else 32
        version = "v2" if mid else ("v1" if max_len == 24 else "v3")
    up_layers = len(key_indices(keys, r"up_blocks\.0\.motion_modules\.(\d+)\."))
    depth = len(key_indices(keys, r"down_blocks\.0\.motion_modules\.0\.(?:temporal_transformer\.)?transformer_blocks\.(\d+)\.")) or 1
    return version, {
        "block_out_channels": chans,
        "layers_per_block": up_layers - 1,
        "motion_max_seq_length": max_len,
        "use_motion_mid_block": mid,
        "temporal_transformer_layers_per_block": depth,
        "motion_num_attention_heads": SD15_HEADS,
    }
