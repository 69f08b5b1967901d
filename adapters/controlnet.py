"""SD1.5 ControlNets driving the video model: loading users' files, attaching, and the per-step
residuals the sampler adds to the video UNet.

A ControlNet is a copy of the SD1.5 UNet encoder that reads a control image (depth, edges,
pose...). AnimateDiff runs it per frame, like its spatial layers, so a driving video's control
frames shape each generated frame while the motion module keeps them coherent. Files come in
lllyasviel's single-file layout (``control_model.`` + LDM names, or the same without the
prefix) or as diffusers ``ControlNetModel`` tensors/folders; the architecture is read from the
tensor shapes so real and tiny test models go through the same code.
"""
import contextlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from . import keys
from .detect import NORM_GROUPS, SD15_HEADS, block_tensor, encoder_layout, key_indices
from .errors import ModelFileError
from .files import read_state_dict

CONTROL = "controlnet"  # VideoModel patch target: read by the sampler, never merged into weights
FIX = "Put an SD1.5 ControlNet (e.g. control_v11p_sd15_canny.pth / .safetensors) in models/controlnet."


# ---------------------------------------------------------------- what a file is

def _refuse_non_controlnet(sd, path):
    """Name what a file that holds no SD1.5 ControlNet is, and where it belongs."""
    ks = list(sd)
    has = lambda *parts: any(p in k for k in ks for p in parts)  # noqa: E731
    if "lora_controlnet" in sd:
        raise ModelFileError(path, "this is a Control-LoRA (a LoRA-style ControlNet that needs ComfyUI's own "
                             "model patching), not a full ControlNet.", "Use a full SD1.5 ControlNet. " + FIX)
    if any(k.startswith(("adapter.", "body.")) for k in ks) or "style_embedding" in sd:
        raise ModelFileError(path, "this is a T2I-Adapter, not a ControlNet; this node loads ControlNets.",
                             "Use a ControlNet for the same control type. " + FIX)
    if any(k.startswith(keys.UNET_PREFIX) for k in ks):
        raise ModelFileError(path, "this is a full Stable Diffusion checkpoint, not a ControlNet.",
                             "Checkpoints go in the video model loader. " + FIX)
    if has(".motion_modules.", ".temporal_transformer."):
        raise ModelFileError(path, "this is an AnimateDiff motion module, not a ControlNet.",
                             "Put it in models/animatediff_models. " + FIX)
    if has("lora_down", "lora_up", ".lora_A.", ".lora_B.") or any(k.startswith(("lora_unet_", "lora_te")) for k in ks):
        raise ModelFileError(path, "this is a LoRA, not a ControlNet.", "Use the Inject LoRA node for it. " + FIX)
    if has("controlnet_blocks.", "transformer_blocks.", "after_proj_list", "controlnet_x_embedder", "double_blocks"):
        raise ModelFileError(path, "this is a ControlNet for a transformer model (Flux / SD3 / HunyuanDiT), "
                             "not for SD1.5.", FIX)
    raise ModelFileError(path, "no ControlNet weights found (no control_model.input_hint_block / "
                         "controlnet_cond_embedding tensors).", FIX)


def _refuse_other_base(sd, path):
    """SDXL / SD2 ControlNets share the layout; their shapes give them away."""
    if any(k.startswith(("label_emb.", "add_embedding.")) for k in sd):
        raise ModelFileError(path, "this is an SDXL ControlNet; the AnimateDiff video model is SD1.5.",
                             "Pick the SD1.5 version of this ControlNet (control_v11*_sd15_*).")
    ctx = next((v.shape[1] for k, v in sd.items() if k.endswith("attn2.to_k.weight")), None)
    kind = {1024: "SD2.x", 2048: "SDXL"}.get(ctx)
    if kind:
        raise ModelFileError(path, f"this is an {kind} ControlNet (text context {ctx}); the AnimateDiff video "
                             "model is SD1.5 (768).", "Pick the SD1.5 version of this ControlNet.")


def _ldm_layout(sd, path):
    """(UNetLayout, hint blocks) from LDM ControlNet tensors (prefix removed)."""
    for need in ("input_blocks.0.0.weight", "input_hint_block.0.weight", "middle_block_out.0.weight"):
        if need not in sd:
            raise ModelFileError(path, f"the ControlNet weights are incomplete (no {need}).",
                                 "The file may be truncated: copy it again.")
    levels, layers, attention = encoder_layout(sd)
    hint = key_indices(sd, r"input_hint_block\.(\d+)\.")
    if len(hint) < 2 or hint != list(range(0, 2 * len(hint), 2)):
        raise ModelFileError(path, f"unexpected ControlNet hint encoder (convs at {hint}).",
                             "This does not look like an SD1.5 ControlNet. " + FIX)
    return keys.UNetLayout(levels, layers, attention), len(hint) - 2


def controlnet_config(sd, path=None):
    """diffusers ``ControlNetModel`` kwargs from diffusers-named tensors (as ``detect`` does for UNets)."""
    if "conv_in.weight" not in sd or "controlnet_cond_embedding.conv_in.weight" not in sd:
        raise ModelFileError(path, "the ControlNet weights are incomplete (no conv_in).",
                             "The file may be truncated: copy it again.")
    levels = key_indices(sd, r"down_blocks\.(\d+)\.resnets\.")
    channels, attention = [], []
    for i in levels:
        channels.append(block_tensor(sd, [f"down_blocks.{i}.resnets.0.conv2.weight"], path, "ControlNet").shape[0])
        attention.append(f"down_blocks.{i}.attentions.0.proj_in.weight" in sd)
    blocks = len(key_indices(sd, r"controlnet_cond_embedding\.blocks\.(\d+)\."))
    hint = [sd["controlnet_cond_embedding.conv_in.weight"].shape[0]]
    hint += [sd[f"controlnet_cond_embedding.blocks.{j}.weight"].shape[0] for j in range(1, blocks, 2)]
    ctx = next((v.shape[1] for k, v in sd.items() if k.endswith("attn2.to_k.weight")), 768)
    proj = next((v for k, v in sd.items() if k.endswith("proj_in.weight")), None)
    first = next((i for i, a in enumerate(attention) if a), 0)
    depth = len(key_indices(sd, rf"down_blocks\.{first}\.attentions\.0\.transformer_blocks\.(\d+)\.")) or 1
    return {
        "in_channels": sd["conv_in.weight"].shape[1],
        "conditioning_channels": sd["controlnet_cond_embedding.conv_in.weight"].shape[1],
        "block_out_channels": tuple(channels),
        "layers_per_block": len(key_indices(sd, r"down_blocks\.0\.resnets\.(\d+)\.")),
        "down_block_types": tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attention),
        "cross_attention_dim": ctx,
        "attention_head_dim": SD15_HEADS,
        "norm_num_groups": NORM_GROUPS,
        "use_linear_projection": proj is not None and proj.ndim == 2,
        "transformer_layers_per_block": depth,
        "conditioning_embedding_out_channels": tuple(hint),
    }


# config.json entries shapes cannot tell
_CONFIG_EXTRAS = ("attention_head_dim", "global_pool_conditions", "upcast_attention",
                  "controlnet_conditioning_channel_order", "norm_num_groups", "norm_eps")


def _diffusers_config_file(path):
    """A diffusers folder's (or the file beside it's) config.json, if any."""
    cfg = (path if path.is_dir() else path.parent) / "config.json"
    if not cfg.is_file():
        return {}
    try:
        data = json.loads(cfg.read_text())
    except ValueError as e:
        raise ModelFileError(cfg, f"not valid JSON ({e}).", "Copy the diffusers folder again.") from e
    if data.get("_class_name") not in (None, "ControlNetModel"):
        raise ModelFileError(path, f"this diffusers folder holds a {data['_class_name']}, not a ControlNetModel.", FIX)
    return data


def read_controlnet(path, dtype=torch.float32):
    """(diffusers-named tensors, ControlNetModel config) from any supported ControlNet file or folder."""
    path = Path(path)
    file_cfg = {}
    if path.is_dir():
        file_cfg = _diffusers_config_file(path)
        names = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin", "model.safetensors")
        wfile = next((path / n for n in names if (path / n).is_file()), None)
        if wfile is None:
            raise ModelFileError(path, "no weights file in this diffusers ControlNet folder.",
                                 "Expected diffusion_pytorch_model.safetensors next to config.json.")
        sd = read_state_dict(wfile, dtype)
    else:
        sd = read_state_dict(path, dtype)
    if "difference" in sd:
        raise ModelFileError(path, "this is a 'difference' ControlNet (stored as a difference to the base "
                             "model's weights).", "Use a standard (non-difference) SD1.5 ControlNet.")
    if any(k.startswith(keys.CONTROLNET_PREFIX) for k in sd):
        # lllyasviel's layout; v1.0 files also carry the whole SD model, which is not needed
        n = len(keys.CONTROLNET_PREFIX)
        sd = {k[n:]: v for k, v in sd.items() if k.startswith(keys.CONTROLNET_PREFIX)}
    if "input_hint_block.0.weight" in sd and "time_embed.0.weight" in sd:
        _refuse_other_base(sd, path)
        layout, hint_blocks = _ldm_layout(sd, path)
        sd, unknown = keys.controlnet_ldm_to_diffusers(sd, layout, hint_blocks)
        if unknown:
            raise ModelFileError(path, f"unexpected ControlNet tensors {unknown[:3]}.",
                                 "This does not look like an SD1.5 ControlNet. " + FIX)
    elif "controlnet_cond_embedding.conv_in.weight" in sd:
        if not path.is_dir():
            file_cfg = _diffusers_config_file(path)
        _refuse_other_base(sd, path)
    else:
        _refuse_non_controlnet(sd, path)
    config = controlnet_config(sd, path)
    config.update({k: file_cfg[k] for k in _CONFIG_EXTRAS if k in file_cfg})
    if isinstance(config["attention_head_dim"], (list, tuple)):
        config["attention_head_dim"] = tuple(config["attention_head_dim"])
    stem = (path.name if path.is_dir() else path.stem).lower()
    if stem.endswith(("_shuffle", "_shuffle_fp16")):
        config.setdefault("global_pool_conditions", True)  # as ComfyUI does: shuffle pools its output
    return sd, config


@dataclass(repr=False)
class ControlNet:
    """A loaded ControlNet (diffusers ``ControlNetModel``) and where it came from."""
    net: torch.nn.Module
    path: str = ""

    def __repr__(self):
        return f"ControlNet({Path(self.path).name or '?'})"

    @property
    def config(self):
        return self.net.config


def build_controlnet(sd, config, dtype=torch.float32, path=None):
    """ControlNetModel built on the meta device whose tensors ARE the given ones (no copies)."""
    from diffusers import ControlNetModel
    from .loading import assign_weights
    with torch.device("meta"):
        net = ControlNetModel(**config)
    assign_weights(net, sd, path, "ControlNet", dtype)
    return net.eval().requires_grad_(False)


def load_controlnet(path, dtype=torch.float32):
    """A :class:`ControlNet` from lllyasviel's single file (with or without ``control_model.``), a
    diffusers-layout file, or a diffusers ControlNetModel folder."""
    sd, config = read_controlnet(path, dtype)
    return ControlNet(build_controlnet(sd, config, dtype, path), str(path))


# ---------------------------------------------------------------- attaching and applying

@dataclass(repr=False)
class ControlPatch:
    """A ControlNet with its control frames on a video model; the sampler runs it on every step
    whose share of the schedule lies in [start, end] (diffusers' control_guidance_start/end rule)."""
    controlnet: ControlNet
    image: torch.Tensor          # ComfyUI IMAGE: (N, H, W, C) in [0, 1]
    strength: float = 1.0
    start: float = 0.0
    end: float = 1.0
    target: str = CONTROL
    injection = False

    def __repr__(self):
        return f"ControlPatch({self.source}, strength={self.strength}, {self.start}-{self.end})"

    @property
    def source(self):
        return self.controlnet.path

    def names(self):
        return set()  # changes no weights

    def apply(self, name, current):
        return current

    def active(self, step, total):
        """Step ``step`` (0-based) of ``total``: on when it starts at or after ``start`` and ends at
        or before ``end``, so end=0 never runs and start=0, end=1 always does."""
        eps = 1e-9
        return self.strength != 0 and step / total >= self.start - eps and (step + 1) / total <= self.end + eps


def attach(model, controlnet, image, strength=1.0, start=0.0, end=1.0):
    """A copy of the video model that samples with ``controlnet`` driven by ``image`` frames."""
    if not 0.0 <= start <= end <= 1.0:
        raise ValueError(f"ControlNet start/end must satisfy 0 <= start <= end <= 1, got {start} and {end}.")
    if image.ndim == 3:
        image = image[None]
    if image.ndim != 4 or image.shape[-1] not in (1, 3, 4):
        raise ValueError(f"control images must be ComfyUI IMAGE frames (N, H, W, 3), got shape {tuple(image.shape)}.")
    cc, uc = controlnet.config, model.unet.config
    mine = (tuple(cc.block_out_channels), cc.layers_per_block, cc.cross_attention_dim, cc.in_channels)
    theirs = (tuple(uc.block_out_channels), uc.layers_per_block, uc.cross_attention_dim, uc.in_channels)
    if mine != theirs:
        raise ModelFileError(controlnet.path, f"this ControlNet is for a UNet with channels {list(mine[0])}, "
                             f"{mine[1]} layers per block and text context {mine[2]}, but the video model's UNet "
                             f"has {list(theirs[0])}, {theirs[1]} and {theirs[2]}.",
                             "Use a ControlNet made for the video model's base (SD1.5).")
    return model.with_patch(ControlPatch(controlnet, image.detach().float().cpu(), float(strength),
                                         float(start), float(end)))


def _fit(x, height, width):
    """Center-crop to the target aspect ratio, then resize (nearest-exact, as ComfyUI does for
    control hints: edge and pose maps stay crisp)."""
    h, w = x.shape[-2:]
    if w * height > h * width:
        cw = max(1, round(h * width / height))
        x = x[..., (w - cw) // 2:(w - cw) // 2 + cw]
    elif w * height < h * width:
        ch = max(1, round(w * height / width))
        x = x[..., (h - ch) // 2:(h - ch) // 2 + ch, :]
    if x.shape[-2:] == (height, width):
        return x
    return torch.nn.functional.interpolate(x, size=(height, width), mode="nearest-exact")


def control_frames(image, frames, height, width, channels=3):
    """IMAGE (N, H, W, C) -> hints (frames, channels, height, width): one image is used for every
    frame, a longer driving video is cut to its first ``frames`` frames, a shorter one is an error."""
    n = image.shape[0]
    if 1 < n < frames:
        raise ValueError(f"the control images have {n} frames but the video has {frames}. Give at least {frames} "
                         f"control frames (or exactly one, used for every frame), or set the sampler's frames to {n}.")
    x = image[:1] if n == 1 else image[:frames]
    x = x.movedim(-1, 1).float()
    if x.shape[1] == 4:
        x = x[:, :3]  # drop alpha
    if x.shape[1] == 1 and channels != 1:
        x = x.expand(-1, channels, -1, -1)
    if x.shape[1] != channels:
        raise ValueError(f"the control images have {x.shape[1]} channels; this ControlNet takes {channels}.")
    x = _fit(x, height, width)
    return x.expand(frames, -1, -1, -1) if n == 1 else x


class ControlRunner:
    """The ControlNets of one sampling run with their hints prepared; called per UNet call."""

    def __init__(self, patches, frames, height, width, device):
        self.items = []
        for p in patches:
            net = p.controlnet.net
            hint = control_frames(p.image, frames, height, width, net.config.conditioning_channels)
            self.items.append((p, hint.to(device, net.dtype)))

    def __bool__(self):
        return bool(self.items)

    def __call__(self, x, t, emb, frame_idx, step, total):
        """Extra UNet kwargs for latents ``x`` (B, C, n, h, w) of frames ``frame_idx`` with per-frame
        text embeddings ``emb`` (B·n, seq, dim): the residuals of every active ControlNet, summed."""
        active = [(p, h) for p, h in self.items if p.active(step, total)]
        if not active:
            return {}
        b, c, n = x.shape[:3]
        flat = x.permute(0, 2, 1, 3, 4).reshape(b * n, c, *x.shape[3:])  # the UNet's frame order
        down = mid = None
        for p, hint in active:
            net = p.controlnet.net
            h = hint[list(frame_idx)].repeat(b, 1, 1, 1)
            d, m = net(flat.to(net.dtype), t, encoder_hidden_states=emb.to(net.dtype), controlnet_cond=h,
                       conditioning_scale=p.strength, return_dict=False)
            down = list(d) if down is None else [a + r for a, r in zip(down, d)]
            mid = m if mid is None else mid + m
        return {"down_block_additional_residuals": tuple(r.to(x.dtype) for r in down),
                "mid_block_additional_residual": mid.to(x.dtype)}


@contextlib.contextmanager
def control_context(model, frames, height, width, device):
    """The model's ControlNets on ``device`` for the block (back on the CPU after, as
    ``VideoModel.on_device`` does), as a :class:`ControlRunner`."""
    patches = [p for p in model.patches if p.target == CONTROL]
    device = torch.device(device)
    nets = list({id(p.controlnet.net): p.controlnet.net for p in patches}.values())
    moved = device.type != "cpu"
    try:
        if moved:
            for net in nets:
                net.to(device)
        yield ControlRunner(patches, frames, height, width, device)
    finally:
        if moved:
            for net in nets:
                net.to("cpu")
