"""The one place where tensor names are translated between file layouts.

Layouts: the original LDM layout of SD1.5 single-file checkpoints (``model.diffusion_model.``,
``first_stage_model.``, ``cond_stage_model.transformer.``), the original AnimateDiff motion
module / MotionLoRA layout, and the diffusers module names used inside this pack. Each
mapping is built from the architecture (``UNetLayout``) rather than a fixed table, so tiny
test models and real-size files go through the same code. Every mapping has its inverse, used
to write files in the users' layouts (tests, benchmarks, exports).
"""
from dataclasses import dataclass

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
CLIP_PREFIX = "cond_stage_model.transformer."

# LDM ResBlock sub-modules -> diffusers ResnetBlock2D sub-modules
_RESNET = {"in_layers.0": "norm1", "in_layers.2": "conv1", "emb_layers.1": "time_emb_proj",
           "out_layers.0": "norm2", "out_layers.3": "conv2", "skip_connection": "conv_shortcut"}
# LDM VAE sub-modules -> diffusers
_VAE_RESNET = {"norm1": "norm1", "conv1": "conv1", "norm2": "norm2", "conv2": "conv2",
               "nin_shortcut": "conv_shortcut"}
_VAE_ATTN = {"norm": "group_norm", "q": "to_q", "k": "to_k", "v": "to_v", "proj_out": "to_out.0"}


@dataclass(frozen=True)
class UNetLayout:
    """What the name mapping needs to know about a SD-style UNet."""
    levels: int                 # number of resolution levels (4 for SD1.5)
    layers_per_block: int       # resnets per down level (2 for SD1.5)
    attention_levels: tuple     # per down level: has spatial transformers

    def up_has_attention(self, i):
        return self.attention_levels[self.levels - 1 - i]


def _unet_module_pairs(layout):
    """(ldm_prefix, diffusers_prefix, kind) for every UNet sub-module; kind says how the rest maps."""
    n, L = layout.levels, layout.layers_per_block
    pairs = [("time_embed.0", "time_embedding.linear_1", "same"),
             ("time_embed.2", "time_embedding.linear_2", "same"),
             ("input_blocks.0.0", "conv_in", "same"),
             ("out.0", "conv_norm_out", "same"), ("out.2", "conv_out", "same")]
    k = 1
    for i in range(n):
        for j in range(L):
            pairs.append((f"input_blocks.{k}.0", f"down_blocks.{i}.resnets.{j}", "resnet"))
            if layout.attention_levels[i]:
                pairs.append((f"input_blocks.{k}.1", f"down_blocks.{i}.attentions.{j}", "same"))
            k += 1
        if i < n - 1:
            pairs.append((f"input_blocks.{k}.0.op", f"down_blocks.{i}.downsamplers.0.conv", "same"))
            k += 1
    pairs += [("middle_block.0", "mid_block.resnets.0", "resnet"),
              ("middle_block.1", "mid_block.attentions.0", "same"),
              ("middle_block.2", "mid_block.resnets.1", "resnet")]
    k = 0
    for i in range(n):
        attn = layout.up_has_attention(i)
        for j in range(L + 1):
            pairs.append((f"output_blocks.{k}.0", f"up_blocks.{i}.resnets.{j}", "resnet"))
            if attn:
                pairs.append((f"output_blocks.{k}.1", f"up_blocks.{i}.attentions.{j}", "same"))
            if j == L and i < n - 1:
                pairs.append((f"output_blocks.{k}.{2 if attn else 1}.conv",
                              f"up_blocks.{i}.upsamplers.0.conv", "same"))
            k += 1
    return pairs


def _map_key(key, pairs, sub_maps, reverse=False):
    """Translate one key by its longest matching module prefix; None if no prefix matches."""
    best = None
    for ldm, dif, kind in pairs:
        src = dif if reverse else ldm
        if (key == src or key.startswith(src + ".")) and (best is None or len(src) > len(best[0])):
            best = (src, dif if not reverse else ldm, kind)
    if best is None:
        return None
    src, dst, kind = best
    rest = key[len(src) + 1:]
    sub = sub_maps.get(kind)
    if sub:
        table = {v: k for k, v in sub.items()} if reverse else sub
        for a, b in table.items():
            if rest == a or rest.startswith(a + "."):
                rest = b + rest[len(a):]
                break
    return f"{dst}.{rest}" if rest else dst


class _Mapper:
    def __init__(self, pairs, sub_maps):
        self.pairs, self.sub_maps = pairs, sub_maps

    def forward(self, key):
        return _map_key(key, self.pairs, self.sub_maps)

    def backward(self, key):
        return _map_key(key, self.pairs, self.sub_maps, reverse=True)

    def to_diffusers(self, sd):
        """Renames (popping from ``sd``) every tensor it knows; returns (renamed, unknown keys)."""
        out, unknown = {}, []
        for k in list(sd):
            new = self.forward(k)
            if new is None:
                unknown.append(k)
            else:
                out[new] = sd.pop(k)
        return out, unknown

    def to_ldm(self, sd, what):
        out = {}
        for k, v in sd.items():
            new = self.backward(k)
            if new is None:
                raise KeyError(f"no LDM name for {what} tensor {k}")
            out[new] = v
        return out


def unet_mapper(layout):
    return _Mapper(_unet_module_pairs(layout), {"resnet": _RESNET})


def unet_ldm_to_diffusers(sd, layout):
    """LDM UNet tensors (prefix already removed) -> diffusers names. Unknown keys are returned apart."""
    return unet_mapper(layout).to_diffusers(sd)


def unet_diffusers_to_ldm(sd, layout):
    return unet_mapper(layout).to_ldm(sd, "UNet")


# ---------------------------------------------------------------- VAE

def _vae_module_pairs(levels, layers):
    pairs = [("encoder.conv_in", "encoder.conv_in", "same"),
             ("encoder.norm_out", "encoder.conv_norm_out", "same"),
             ("encoder.conv_out", "encoder.conv_out", "same"),
             ("decoder.conv_in", "decoder.conv_in", "same"),
             ("decoder.norm_out", "decoder.conv_norm_out", "same"),
             ("decoder.conv_out", "decoder.conv_out", "same"),
             ("quant_conv", "quant_conv", "same"), ("post_quant_conv", "post_quant_conv", "same")]
    for part in ("encoder", "decoder"):
        pairs += [(f"{part}.mid.block_1", f"{part}.mid_block.resnets.0", "resnet"),
                  (f"{part}.mid.block_2", f"{part}.mid_block.resnets.1", "resnet"),
                  (f"{part}.mid.attn_1", f"{part}.mid_block.attentions.0", "attn")]
    for i in range(levels):
        for j in range(layers):
            pairs.append((f"encoder.down.{i}.block.{j}", f"encoder.down_blocks.{i}.resnets.{j}", "resnet"))
        if i < levels - 1:
            pairs.append((f"encoder.down.{i}.downsample.conv",
                          f"encoder.down_blocks.{i}.downsamplers.0.conv", "same"))
        up = levels - 1 - i  # decoder.up is stored lowest resolution last
        for j in range(layers + 1):
            pairs.append((f"decoder.up.{up}.block.{j}", f"decoder.up_blocks.{i}.resnets.{j}", "resnet"))
        if i < levels - 1:
            pairs.append((f"decoder.up.{up}.upsample.conv",
                          f"decoder.up_blocks.{i}.upsamplers.0.conv", "same"))
    return pairs


def vae_ldm_to_diffusers(sd, levels, layers):
    m = _Mapper(_vae_module_pairs(levels, layers), {"resnet": _VAE_RESNET, "attn": _VAE_ATTN})
    out, unknown = {}, []
    for k in list(sd):
        new = m.forward(k)
        if new is None:
            unknown.append(k)
            continue
        v = sd.pop(k)
        if ".attentions.0.to_" in new and new.endswith("weight") and v.ndim == 4:
            v = v[:, :, 0, 0]  # LDM stores the VAE attention projections as 1x1 convs
        out[new] = v
    return out, unknown


def vae_diffusers_to_ldm(sd, levels, layers):
    m = _Mapper(_vae_module_pairs(levels, layers), {"resnet": _VAE_RESNET, "attn": _VAE_ATTN})
    out = {}
    for k, v in sd.items():
        new = m.backward(k)
        if new is None:
            raise KeyError(f"no LDM name for VAE tensor {k}")
        if ".mid.attn_1." in new and new.endswith("weight") and v.ndim == 2:
            v = v[:, :, None, None]
        out[new] = v
    return out


# ---------------------------------------------------------------- CLIP text encoder

def clip_ldm_to_transformers(sd):
    """``cond_stage_model.transformer.*`` (prefix removed) -> CLIPTextModel names without the
    ``text_model.`` level (transformers 5 dropped it; ``loading`` adds it back for 4.x)."""
    out = {}
    for k, v in sd.items():
        if k.endswith("position_ids") or k in ("text_projection.weight", "logit_scale"):
            continue  # ComfyUI's CLIP state carries these; the SD1.5 text encoder does not use them
        out[k[len("text_model."):] if k.startswith("text_model.") else k] = v
    return out


def clip_transformers_to_ldm(sd):
    """Inverse of :func:`clip_ldm_to_transformers`: the ``text_model.`` level real files have."""
    return {"text_model." + (k[len("text_model."):] if k.startswith("text_model.") else k): v
            for k, v in sd.items() if not k.endswith("position_ids")}


# ---------------------------------------------------------------- AnimateDiff motion modules

_MOTION_RENAMES = ((".attention_blocks.0.", ".attn1."), (".attention_blocks.1.", ".attn2."),
                   (".norms.0.", ".norm1."), (".norms.1.", ".norm2."), (".ff_norm.", ".norm3."))


def motion_original_to_diffusers(key):
    """Original AnimateDiff motion-module name -> diffusers UNetMotionModel name.

    Returns None for the duplicate positional table of the second attention block: diffusers
    keeps one table per transformer block and applies it before both attentions.
    """
    k = key.replace(".temporal_transformer.", ".")
    if ".pos_encoder.pe" in k:
        if ".attention_blocks.0." not in k:
            return None
        return k.replace(".attention_blocks.0.pos_encoder.pe", ".pos_embed.pe")
    for a, b in _MOTION_RENAMES:
        k = k.replace(a, b)
    return k


def motion_diffusers_to_original(key):
    """Inverse of :func:`motion_original_to_diffusers` (a pos_embed maps to attention 0's table)."""
    head, sep, tail = key.partition(".motion_modules.")
    idx, _, rest = tail.partition(".")
    rest = "temporal_transformer." + rest
    rest = rest.replace(".pos_embed.pe", ".attention_blocks.0.pos_encoder.pe")
    for a, b in _MOTION_RENAMES:
        rest = rest.replace(b, a)
    return f"{head}{sep}{idx}.{rest}"


def motion_lora_original_to_module(key):
    """MotionLoRA key -> (diffusers module name, 'down'|'up'), e.g.
    ``...attention_blocks.0.processor.to_q_lora.down.weight`` -> (``...attn1.to_q``, 'down')."""
    base, _, tail = key.partition(".processor.")
    if not tail:
        return None
    proj, _, part = tail.partition("_lora.")
    part = part.split(".")[0]
    if part not in ("down", "up"):
        return None
    proj = "to_out.0" if proj == "to_out" else proj
    module = motion_original_to_diffusers(base + ".x").rsplit(".", 1)[0]
    return f"{module}.{proj}", part


def motion_lora_module_to_original(module, part):
    head, _, proj = module.rpartition(".to_")
    proj = "to_" + proj
    if proj == "to_out.0":
        proj = "to_out"
    base = motion_diffusers_to_original(head + ".x").rsplit(".", 1)[0]
    return f"{base}.processor.{proj}_lora.{part}.weight"


# ---------------------------------------------------------------- kohya LoRA names

def underscored(name):
    """kohya's spelling of a module name: dots become underscores."""
    return name.replace(".", "_")


def unet_ldm_underscored_to_diffusers(name, layout):
    """kohya's LDM-style LoRA module name -> the diffusers module name, still underscored.

    ``input_blocks_1_1_proj_in`` -> ``down_blocks_0_attentions_0_proj_in``;
    ``input_blocks_1_0_in_layers_2`` -> ``down_blocks_0_resnets_0_conv1``. Underscores cannot be
    turned back into dots blindly (``to_out_0``, ``transformer_blocks``), so only the block prefix
    (and the ResBlock sub-module) is translated; the caller matches the result against the model's
    module names with their dots replaced. None when no LDM block prefix matches.
    """
    mapper = unet_mapper(layout)
    best = None
    for ldm, _, kind in mapper.pairs:
        u = underscored(ldm)
        if (name == u or name.startswith(u + "_")) and (best is None or len(ldm) > len(best[0])):
            best = (ldm, kind)
    if best is None:
        return None
    ldm, kind = best
    rest = name[len(ldm) + 1:]
    for sub in mapper.sub_maps.get(kind) or {}:
        u = underscored(sub)
        if rest == u or rest.startswith(u + "_"):
            ldm, rest = f"{ldm}.{sub}", rest[len(u) + 1:]
            break
    out = underscored(mapper.forward(ldm))
    return f"{out}_{rest}" if rest else out


# ---------------------------------------------------------------- SD1.5 ControlNet

CONTROLNET_PREFIX = "control_model."


def _controlnet_module_pairs(layout, hint_blocks):
    """The UNet encoder's pairs (the ControlNet is a copy of it) plus the ControlNet's own parts:
    the hint encoder (``input_hint_block`` convs at even indices, SiLUs between them), one zero
    conv per encoder output, and the zero conv after the middle block."""
    pairs = [p for p in _unet_module_pairs(layout)
             if not p[0].startswith(("output_blocks.", "out."))]
    encoder_outputs = 1 + layout.levels * layout.layers_per_block + layout.levels - 1
    pairs += [(f"zero_convs.{n}.0", f"controlnet_down_blocks.{n}", "same") for n in range(encoder_outputs)]
    pairs += [("middle_block_out.0", "controlnet_mid_block", "same"),
              ("input_hint_block.0", "controlnet_cond_embedding.conv_in", "same"),
              (f"input_hint_block.{2 * (hint_blocks + 1)}", "controlnet_cond_embedding.conv_out", "same")]
    pairs += [(f"input_hint_block.{2 * (j + 1)}", f"controlnet_cond_embedding.blocks.{j}", "same")
              for j in range(hint_blocks)]
    return pairs


def controlnet_mapper(layout, hint_blocks):
    return _Mapper(_controlnet_module_pairs(layout, hint_blocks), {"resnet": _RESNET})


def controlnet_ldm_to_diffusers(sd, layout, hint_blocks):
    """LDM ControlNet tensors (``control_model.`` removed) -> diffusers ``ControlNetModel`` names.
    Unknown keys are returned apart."""
    return controlnet_mapper(layout, hint_blocks).to_diffusers(sd)


def controlnet_diffusers_to_ldm(sd, layout, hint_blocks):
    return controlnet_mapper(layout, hint_blocks).to_ldm(sd, "ControlNet")
