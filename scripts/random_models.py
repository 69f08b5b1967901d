"""Random-weight models of the real SD1.5 / AnimateDiff architectures, at tiny or real size.

Tests, benchmarks and the README demo (until the toy world's trained weights exist) need
models without any download: these have the real classes and key layouts, just random values.
"""
import math

import torch

from adapters import keys

TINY_UNET = dict(block_out_channels=(32, 64), layers_per_block=2, cross_attention_dim=32,
                 attention_head_dim=8, norm_num_groups=32,
                 down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                 up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"))
REAL_UNET = dict(block_out_channels=(320, 640, 1280, 1280), layers_per_block=2, cross_attention_dim=768,
                 attention_head_dim=8, norm_num_groups=32,
                 down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                 up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3)
# The smallest UNet ComfyUI's own loader still detects as SD1.5 (model_channels 320, context 768):
# with the real-size VAE and CLIP-L it makes checkpoints that ComfyUI's native nodes can load.
COMFY_UNET = dict(block_out_channels=(320,), layers_per_block=1, cross_attention_dim=768,
                  attention_head_dim=8, norm_num_groups=32,
                  down_block_types=("CrossAttnDownBlock2D",), up_block_types=("CrossAttnUpBlock2D",))
TINY_VAE = dict(block_out_channels=(32, 32, 32, 32), layers_per_block=1, latent_channels=4, norm_num_groups=32,
                down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4)
REAL_VAE = dict(block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4,
                norm_num_groups=32, down_block_types=("DownEncoderBlock2D",) * 4,
                up_block_types=("UpDecoderBlock2D",) * 4)
# text-encoder heads cannot be read from shapes: the loader assumes SD1.5's 64 channels per head
TINY_CLIP = dict(vocab_size=514, hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                 num_attention_heads=1, max_position_embeddings=77, projection_dim=32, hidden_act="quick_gelu",
                 bos_token_id=512, eos_token_id=513, pad_token_id=513)
REAL_CLIP = dict(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                 num_attention_heads=12, max_position_embeddings=77, projection_dim=768, hidden_act="quick_gelu")
SIZES = {"tiny": (TINY_UNET, TINY_VAE, TINY_CLIP), "comfy": (COMFY_UNET, REAL_VAE, REAL_CLIP),
         "real": (REAL_UNET, REAL_VAE, REAL_CLIP)}
MOTION = {"v1": dict(motion_max_seq_length=24, use_motion_mid_block=False),
          "v2": dict(motion_max_seq_length=32, use_motion_mid_block=True),
          "v3": dict(motion_max_seq_length=32, use_motion_mid_block=False)}


def random_state(module, seed, std=0.05):
    """Random values for every tensor of a meta-built module, without running its init code.

    Matrices get fan-in scaled noise (as default inits do, so activations stay O(1) through
    the whole UNet instead of blowing up), vectors ``std`` noise, norm scales 1 + noise: no
    tensor is zero (default init zeroes the temporal proj_out, which would hide a wrong
    motion-module mapping).
    """
    g = torch.Generator().manual_seed(seed)
    norms = {n for n, m in module.named_modules()
             if isinstance(m, (torch.nn.GroupNorm, torch.nn.LayerNorm))}
    out = {}
    for name, p in module.named_parameters():
        owner, _, leaf = name.rpartition(".")
        if p.ndim >= 2:
            fan_in = p[0].numel()
            out[name] = torch.randn(p.shape, generator=g) / math.sqrt(fan_in)
        else:
            noise = torch.randn(p.shape, generator=g) * std
            out[name] = noise + 1 if owner in norms and leaf == "weight" else noise
    return out


def build_on_meta(cls, *args, **kwargs):
    """``cls(*args, **kwargs)`` built on the meta device: its layout without memory for weights."""
    with torch.device("meta"):
        return cls(*args, **kwargs)


def layout_of(unet_config):
    return keys.UNetLayout(len(unet_config["block_out_channels"]), unet_config["layers_per_block"],
                           tuple(t.startswith("CrossAttn") for t in unet_config["down_block_types"]))


def sd15_parts(size="tiny", seed=0):
    """Diffusers-named state dicts of a random SD1.5-style UNet, VAE and CLIP text encoder."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel
    ucfg, vcfg, ccfg = SIZES[size]
    unet = random_state(build_on_meta(UNet2DConditionModel, **ucfg), seed)
    vae = random_state(build_on_meta(AutoencoderKL, **vcfg), seed + 1, 0.02)
    clip = random_state(build_on_meta(CLIPTextModel, CLIPTextConfig(**ccfg)), seed + 2, 0.02)
    clip = {(k[len("text_model."):] if k.startswith("text_model.") else k): v for k, v in clip.items()}
    return {"unet": unet, "vae": vae, "clip": clip, "unet_config": dict(ucfg),
            "layout": layout_of(ucfg), "vae_levels_layers": (len(vcfg["block_out_channels"]), vcfg["layers_per_block"])}


def motion_module_parts(version="v2", size="tiny", seed=0):
    """Diffusers-named tensors of a random motion module of the given version."""
    from diffusers import UNetMotionModel
    from adapters.loading import motion_model_config, sinusoid_table
    ucfg = SIZES[size][0]
    mcfg = dict(MOTION[version], block_out_channels=list(ucfg["block_out_channels"]),
                temporal_transformer_layers_per_block=1, motion_num_attention_heads=8)
    full = dict(ucfg, in_channels=4, out_channels=4, use_linear_projection=False)
    model = build_on_meta(UNetMotionModel, **motion_model_config(full, mcfg))
    sd = {k: v for k, v in random_state(model, seed).items() if ".motion_modules." in k}
    for name, buf in model.named_buffers():
        if ".motion_modules." in name and name.endswith("pos_embed.pe"):
            sd[name] = sinusoid_table(buf.shape[1], buf.shape[2])
    return sd


# the hint encoder of lllyasviel's SD1.5 ControlNets; tiny models use narrower convs, same depth
CONTROLNET_HINT = {"tiny": (16, 16, 32, 32), "comfy": (16, 32, 96, 256), "real": (16, 32, 96, 256)}


def controlnet_config(size="tiny"):
    """diffusers ``ControlNetModel`` kwargs matching the UNet of ``sd15_parts(size)``."""
    u = SIZES[size][0]
    return dict(block_out_channels=tuple(u["block_out_channels"]), layers_per_block=u["layers_per_block"],
                cross_attention_dim=u["cross_attention_dim"], attention_head_dim=u["attention_head_dim"],
                norm_num_groups=u["norm_num_groups"], down_block_types=tuple(u["down_block_types"]),
                conditioning_embedding_out_channels=CONTROLNET_HINT[size])


def controlnet_parts(size="tiny", seed=0):
    """Diffusers-named tensors of a random SD1.5-style ControlNet (zero convs random too, so
    it visibly acts) and its config."""
    from diffusers import ControlNetModel
    cfg = controlnet_config(size)
    return random_state(build_on_meta(ControlNetModel, **cfg), seed), cfg
