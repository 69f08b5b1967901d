"""LoRA files of every common SD1.5 format, read into one canonical form.

Users bring LoRAs from kohya sd-scripts (diffusers- or LDM-style underscored names), diffusers
(``.lora.down`` and the old attention-processor layout), peft (``lora_A``/``lora_B``) and
AnimateDiff MotionLoRAs. All of them become a :class:`LoraWeights`: diffusers/transformers module
names mapped to :class:`LoraPart`, so injecting and merging need one code path. Files for other
model families (SDXL, SD2) and LyCORIS variants are refused with a message that says what they are.
"""
import json
import math
import re
from collections import Counter
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import torch

from . import keys
from .errors import ModelFileError
from .files import read_metadata, read_state_dict

FORMATS = ("kohya", "diffusers", "peft", "animatediff_motion_lora")
SD15_FIX = "AnimateDiff SD1.5 motion modules only work with SD1.5 models: pick a LoRA trained on SD1.5."


@dataclass
class LoraPart:
    """One adapted module: W_new = W + strength * delta."""
    down: torch.Tensor              # (r, in) linear; (r, in, kh, kw) conv
    up: torch.Tensor                # (out, r) linear; (out, r, 1, 1) conv
    alpha: float | None = None      # kohya network alpha; scale = alpha / r (1 when None)
    mid: torch.Tensor | None = None  # LoCon Tucker core (r, r, kh, kw); down/up are then 1x1
    bias: torch.Tensor | None = None  # a bias change (kohya ``diff_b``), added at strength, no alpha

    @property
    def rank(self):
        return self.down.shape[0]

    @property
    def scale(self):
        return 1.0 if self.alpha is None else self.alpha / self.rank

    def delta(self, weight_shape, dtype=torch.float32):
        """scale * up @ down in the weight's shape.

        Computed in float32; reshaping (not squeezing) lets a LoRA stored as linear apply to a
        1x1 conv (SD1.5's proj_in/proj_out) and the other way round.
        """
        up, down = self.up.flatten(1).float(), self.down.flatten(1).float()
        if self.mid is None:
            d = up @ down
        else:  # up(1x1) o mid(kxk) o down(1x1), as LyCORIS LoCon applies them
            d = torch.einsum("oa,abhw,bi->oihw", up, self.mid.float(), down)
        shape = tuple(weight_shape)
        if d.numel() != math.prod(shape):
            raise ValueError(f"a LoRA delta of shape {tuple(d.shape)} (up {tuple(self.up.shape)}, down "
                             f"{tuple(self.down.shape)}) does not fit a weight of shape {shape}")
        return (d * self.scale).reshape(shape).to(dtype)


@dataclass
class LoraWeights:
    unet: dict = field(default_factory=dict)          # diffusers UNet module name -> LoraPart
    text_encoder: dict = field(default_factory=dict)  # transformers CLIPTextModel module name -> LoraPart
    motion: dict = field(default_factory=dict)        # UNetMotionModel motion-module name -> LoraPart
    format: str = "kohya"
    path: str | None = None


def merged_weights(state_dict, parts, strength=1.0):
    """A copy of ``state_dict`` (module ``name.weight`` keys) with the LoRA deltas added."""
    out = dict(state_dict)
    for name, part in parts.items():
        if part.bias is not None:
            key = f"{name}.bias"
            if key not in out:
                raise KeyError(f"the model has no bias '{key}' for this LoRA")
            out[key] = out[key] + strength * part.bias.to(out[key].device, out[key].dtype)
        key = f"{name}.weight"
        if key not in out:
            raise KeyError(f"the model has no weight '{key}' for this LoRA")
        w = out[key]
        try:
            out[key] = w + strength * part.delta(w.shape, torch.float32).to(w.device, w.dtype)
        except ValueError as e:
            raise ValueError(f"{name}: {e}") from e
    return out


# ---------------------------------------------------------------- key parsing

_KOHYA = re.compile(r"^lora_(unet|te\d?)_(.+?)\.(lora_down\.weight|lora_up\.weight|lora_mid\.weight|alpha|diff_b)$")
_PEFT = re.compile(r"^(.+)\.lora_([AB])(?:\.[^.]+)?\.weight$")
_DIFFUSERS = re.compile(r"^(.+)\.(?:lora|lora_linear_layer)\.(down|up)\.weight$")
_ATTN_PROCS = re.compile(r"^(.+?)(?:\.processor)?\.(to_q|to_k|to_v|to_out)_lora\.(down|up)\.weight$")
_ALPHA = re.compile(r"^(.+)\.alpha$")
_PART = {"lora_down.weight": "down", "lora_up.weight": "up", "lora_mid.weight": "mid", "alpha": "alpha",
         "diff_b": "bias",
         "A": "down", "B": "up", "down": "down", "up": "up"}
_TEXT_PROJ = {"to_q": "q_proj", "to_k": "k_proj", "to_v": "v_proj", "to_out": "out_proj"}
_UNSUPPORTED = ((re.compile(r"\.hada_(w[12]_[ab]|t[12])$"), "LyCORIS LoHa"),
                (re.compile(r"\.lokr_(w[12](_[ab])?|t2)$"), "LyCORIS LoKr"),
                (re.compile(r"\.(dora_scale|lora_magnitude_vector(\.[^.]+)?)$"), "DoRA"),
                (re.compile(r"\.(diff|w_norm|b_norm)$"), "LyCORIS full/norm"),
                (re.compile(r"\.on_input$"), "(IA)^3"))


def _split_section(name):
    """'unet' | 'text' | 'text2' and the module name without its model prefix."""
    if name.startswith("base_model.model."):
        name = name[len("base_model.model."):]
    for prefix, section in (("text_encoder_2.", "text2"), ("text_encoder.", "text"), ("unet.", "unet")):
        if name.startswith(prefix):
            return section, name[len(prefix):]
    # unprefixed CLIP names: transformers 4 has a text_model. level, transformers 5 has none
    text = name.startswith(("text_model.", "encoder.layers.", "embeddings.", "final_layer_norm"))
    return ("text" if text else "unet"), name


def _parse(key):
    """(format, kohya?, section, name, part) for one tensor name, or None if it is no LoRA tensor."""
    m = _KOHYA.match(key)
    if m:
        kind = m.group(1)
        section = {"unet": "unet", "te": "text"}.get(kind, kind)  # te1/te2: SDXL, refused later
        return "kohya", True, section, m.group(2), _PART[m.group(3)]
    if ".motion_modules." in key and ".processor." in key:
        r = keys.motion_lora_original_to_module(key)
        if r:
            return "animatediff_motion_lora", False, "unet", r[0], r[1]
    m = _PEFT.match(key)
    if m:
        return ("peft", False, *_split_section(m.group(1)), _PART[m.group(2)])
    m = _DIFFUSERS.match(key)
    if m:
        return ("diffusers", False, *_split_section(m.group(1)), m.group(2))
    m = _ATTN_PROCS.match(key)
    if m:
        section, base = _split_section(m.group(1))
        proj = _TEXT_PROJ[m.group(2)] if section != "unet" else (
            "to_out.0" if m.group(2) == "to_out" else m.group(2))
        return "diffusers", False, section, f"{base}.{proj}", m.group(3)
    m = _ALPHA.match(key)
    if m:
        return (None, False, *_split_section(m.group(1)), "alpha")
    return None


def _group(sd, path):
    """{(kohya?, section, name): {part: tensor}} and the format; refuses unsupported variants."""
    groups, formats, ignored = {}, Counter(), []
    for key, tensor in sd.items():
        for rx, kind in _UNSUPPORTED:
            if rx.search(key):
                raise ModelFileError(path, f"this is a {kind} file (tensor '{key}'), which is not supported "
                                     "yet; only plain LoRA and LoCon are.", "Use a plain LoRA version of it.")
        parsed = _parse(key)
        if parsed is None:
            ignored.append(key)
            continue
        fmt, kohya, section, name, part = parsed
        if fmt:
            formats[fmt] += 1
        groups.setdefault((kohya, section, name), {})[part] = tensor
    if not formats:
        raise ModelFileError(path, f"this is not a LoRA: none of its {len(sd)} tensors has a LoRA name "
                             f"(first: {', '.join(list(sd)[:3])}). {_guess_kind(sd)}",
                             "Pick a LoRA file (kohya, diffusers, peft or AnimateDiff MotionLoRA).")
    strange = [k for k in ignored if "lora" in k.lower()]
    if strange:
        raise ModelFileError(path, f"unrecognised LoRA tensors: {', '.join(strange[:4])}.",
                             "This LoRA variant is not supported yet.")
    # bundled embeddings and other extras (ignored) are not LoRA modules
    fmt = "animatediff_motion_lora" if "animatediff_motion_lora" in formats else formats.most_common(1)[0][0]
    return groups, fmt


def _guess_kind(sd):
    names = list(sd)
    if any(k.startswith("model.diffusion_model.") for k in names):
        return "It looks like a full checkpoint."
    if any(".temporal_transformer." in k for k in names):
        return "It looks like an AnimateDiff motion module."
    if any(k in ("emb_params", "string_to_param") or k.startswith("string_to_param.") for k in names):
        return "It looks like a textual-inversion embedding."
    return ""


def _refuse_other_families(groups, path):
    """SDXL and SD2 LoRAs have tell-tale names or widths; say so instead of 'names do not match'."""
    for (kohya, section, name), parts in groups.items():
        why, family = None, "SDXL"
        down = parts.get("down")
        width = down.shape[1] if down is not None and down.ndim >= 2 else None
        if section in ("te1", "te2", "text2"):
            why = "it has two text encoders"
        elif re.search(r"(^|[._])(label_emb|add_embedding)([._]|$)", name):
            why = "it adapts the SDXL size embedding"
        elif re.search(r"attn2[._]to_k$", name) and width in (1024, 2048):
            family = "SD2.x" if width == 1024 else "SDXL"
            why = f"its cross-attention takes {width}-wide text features, SD1.5 uses 768"
        elif section == "text" and re.search(r"q_proj$", name) and width in (1024, 1280):
            family = "SD2.x" if width == 1024 else "SDXL"
            why = f"its text encoder is {width} wide, SD1.5's is 768"
        if why:
            raise ModelFileError(path, f"this is an {family} LoRA ({why}); this pack needs a Stable "
                                 "Diffusion 1.5 LoRA.", SD15_FIX)


# ---------------------------------------------------------------- module names

@lru_cache(maxsize=1)
def _sd15_unet_names():
    """SD1.5 UNet module names, from a diffusers UNet built on the meta device (no memory used)."""
    from diffusers import UNet2DConditionModel
    with torch.device("meta"):
        unet = UNet2DConditionModel(cross_attention_dim=768)  # the other defaults are SD1.5's
    return frozenset(n for n, _ in unet.named_modules() if n)


@lru_cache(maxsize=1)
def _sd15_text_names():
    """SD1.5 text-encoder module names, from a CLIPTextModel built on the meta device.

    Built rather than listed because transformers 5 dropped the ``text_model.`` level that
    transformers 4 (and every LoRA file) has; the resolver accepts either spelling.
    """
    from transformers import CLIPTextConfig, CLIPTextModel
    with torch.device("meta"):
        model = CLIPTextModel(CLIPTextConfig(num_hidden_layers=12))
    return frozenset(n for n, _ in model.named_modules() if n)


def _layout_from_names(names):
    """UNetLayout read off diffusers module names (what kohya LDM-style names need), or None."""
    levels = {int(m.group(1)) for n in names if (m := re.match(r"down_blocks\.(\d+)\.", n))}
    if not levels:
        return None
    n = max(levels) + 1
    layers = len({m.group(1) for x in names if (m := re.match(r"down_blocks\.0\.resnets\.(\d+)", x))})
    attention = tuple(any(x.startswith(f"down_blocks.{i}.attentions.") for x in names) for i in range(n))
    return keys.UNetLayout(n, layers, attention)


class _Resolver:
    """Canonical module name for a LoRA name, checked against the model's module names."""

    def __init__(self, unet_names, text_names, layout):
        self.unet, self.text, self.layout = unet_names, text_names, layout
        self.mapper = keys.unet_mapper(layout) if layout is not None else None
        self.unet_u = {keys.underscored(n): n for n in unet_names}
        self.text_u = {keys.underscored(n): n for n in text_names}
        # motion names are checked only when the caller's names include motion modules
        self.check_motion = any(".motion_modules." in n for n in unet_names)

    def __call__(self, kohya, section, name):
        if section == "text":  # with or without transformers 4's "text_model." level
            table, prefix = (self.text_u, "text_model_") if kohya else (self.text, "text_model.")
            bare = name[len(prefix):] if name.startswith(prefix) else name
            for candidate in (name, prefix + bare, bare):
                if candidate in table:
                    return table[candidate] if kohya else candidate
            return None
        if kohya:
            found = self.unet_u.get(name)
            if found is None and self.layout is not None:
                found = self.unet_u.get(keys.unet_ldm_underscored_to_diffusers(name, self.layout) or "")
            return found
        if name in self.unet or (".motion_modules." in name and not self.check_motion):
            return name
        if self.layout is not None and name.startswith(("input_blocks.", "middle_block.", "output_blocks.")):
            mapped = self.mapper.forward(name)  # LDM names with dots
            return mapped if mapped in self.unet else None
        return None


# ---------------------------------------------------------------- peft scale

def _peft_configs(path, metadata):
    """{'unet': cfg, 'text': cfg} from diffusers' ``lora_adapter_metadata`` or a sibling
    ``adapter_config.json`` (peft's save_pretrained); {} when neither is there."""
    cfg = None
    raw = metadata.get("lora_adapter_metadata")
    try:
        if raw:
            cfg = json.loads(raw)
        elif path is not None and Path(path).stem == "adapter_model":
            sibling = Path(path).parent / "adapter_config.json"
            cfg = json.loads(sibling.read_text()) if sibling.is_file() else None
    except (ValueError, OSError):
        cfg = None
    if not isinstance(cfg, dict):
        return {}
    if any(k.startswith(("unet.", "text_encoder.")) for k in cfg):
        split = {}
        for k, v in cfg.items():
            head, _, rest = k.partition(".")
            split.setdefault(head, {})[rest] = v
        return {"unet": split.get("unet"), "text": split.get("text_encoder")}
    return {"unet": cfg, "text": cfg}


def _peft_alpha(cfg, name, rank):
    """The alpha that gives peft's scale (lora_alpha / r, or / sqrt(r) with rsLoRA) as alpha / rank."""
    alpha = cfg.get("lora_alpha")
    if alpha is None:
        return None
    for pattern, a in (cfg.get("alpha_pattern") or {}).items():
        if re.match(rf"(.*\.)?({pattern})$", name):
            alpha = a
            break
    if cfg.get("use_rslora"):
        alpha = alpha * math.sqrt(rank)
    return float(alpha)


# ---------------------------------------------------------------- reading

def read_lora(path, unet_module_names=None, text_module_names=None, layout=None):
    """Read a LoRA file of any supported format into :class:`LoraWeights`.

    ``unet_module_names`` / ``text_module_names`` are the model's module names (``named_modules``);
    kohya's underscored names are resolved against them, and every name is checked. Without them
    SD1.5's names are used. ``layout`` (a ``keys.UNetLayout``) maps kohya LDM-style names; it is
    read off the module names when not given.
    """
    sd = read_state_dict(path)
    metadata = read_metadata(path)
    groups, fmt = _group(sd, path)
    _refuse_other_families(groups, path)
    unet_names = frozenset(unet_module_names) if unet_module_names is not None else _sd15_unet_names()
    text_names = frozenset(text_module_names) if text_module_names is not None else _sd15_text_names()
    resolve = _Resolver(unet_names, text_names, layout or _layout_from_names(unet_names))
    peft_cfg = _peft_configs(path, metadata) if fmt == "peft" else {}

    out = LoraWeights(format=fmt, path=str(path) if path is not None else None)
    unresolved = []
    for (kohya, section, name), parts in groups.items():
        module = resolve(kohya, section, name)
        if module is None:
            unresolved.append(("lora_unet_" if kohya and section == "unet" else
                               "lora_te_" if kohya else "") + name)
            continue
        part = _make_part(path, module, parts)
        if part.alpha is None and peft_cfg.get(section):
            part.alpha = _peft_alpha(peft_cfg[section], module, part.rank)
        target = out.text_encoder if section == "text" else (
            out.motion if ".motion_modules." in module else out.unet)
        if module in target:
            raise ModelFileError(path, f"the LoRA adapts module {module} twice (under two names).",
                                 "The file is malformed: re-export it.")
        target[module] = part
    if unresolved:
        if any(re.search(r"transformer_blocks[._][1-9]", n) for n in unresolved):
            raise ModelFileError(path, "this is an SDXL LoRA (its transformers have several blocks, "
                                 "SD1.5's have one); this pack needs a Stable Diffusion 1.5 LoRA.", SD15_FIX)
        raise ModelFileError(path, f"{len(unresolved)} of {len(groups)} LoRA modules match no module of the "
                             f"model, e.g. {', '.join(sorted(unresolved)[:4])}.",
                             "Was it made for another model family? " + SD15_FIX)
    return out


def _make_part(path, module, parts):
    down, up, mid = parts.get("down"), parts.get("up"), parts.get("mid")
    if down is None or up is None:
        missing = "lora_down/lora_A" if down is None else "lora_up/lora_B"
        raise ModelFileError(path, f"the LoRA for {module} has no {missing} tensor.",
                             "The file is incomplete: download or copy it again.")
    if up.ndim < 2 or down.shape[0] != up.shape[1]:
        raise ModelFileError(path, f"rank mismatch in {module}: down has rank {down.shape[0]} but up has "
                             f"rank {up.shape[1] if up.ndim >= 2 else '?'} (shapes {tuple(down.shape)}, "
                             f"{tuple(up.shape)}).", "The file is malformed: re-export it.")
    if mid is not None and (mid.ndim != 4 or mid.shape[:2] != (down.shape[0], down.shape[0])):
        raise ModelFileError(path, f"the LoCon mid tensor of {module} has shape {tuple(mid.shape)}, "
                             f"expected ({down.shape[0]}, {down.shape[0]}, kh, kw).", "The file is malformed.")
    alpha, bias = parts.get("alpha"), parts.get("bias")
    if bias is not None and (bias.ndim != 1 or bias.shape[0] != up.shape[0]):
        raise ModelFileError(path, f"the bias change of {module} has shape {tuple(bias.shape)}, expected "
                             f"({up.shape[0]},).", "The file is malformed: re-export it.")
    return LoraPart(down=down, up=up, alpha=None if alpha is None else float(alpha.float().item()), mid=mid,
                    bias=bias)
