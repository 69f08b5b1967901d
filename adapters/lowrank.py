"""Still-Moving's two adapters and their one file format.

* Motion Adapter (paper §3.2): on every temporal-attention Q, K, V projection,
  ``W + α · A_down · A_up`` (A_down random, A_up zero). Trained once on frozen videos of the
  base video model; at inference α is a motion slider: 0 = original, 1 = static, < 0 = more.
* Spatial Adapters (paper §3.3): after each injected customized T2I layer, a projection of
  the layer's OUTPUT channels, ``Y · (I + A_down · A_up)`` (identity at init). Not a weight
  LoRA, but linear, so it folds into the layer: ``W' = (I + M)ᵀ W``, ``b' = (I + M)ᵀ b``.

Three relatives reuse the Motion Adapter's weight update ``W + s · (A_down · A_up)ᵀ`` on other
targets (same class, same file, told apart by ``kind``):

* ``subject``: CustomCrafter's subject module, on Q/K/V of the SPATIAL self- and cross-attention.
* ``absorber``: Customize-A-Video's appearance absorber, on Q/K/V/out of the spatial attention.
* ``temporal``: Customize-A-Video's temporal LoRA, on Q/K/V/out of the temporal attention.

All are a ``LowRankAdapter`` (the factors per target module). They act on a video model in
two ways, like a peft tuner's unmerged/merged states: unmerged (``attach``: the layer's own
tensors untouched; training, and inference at a strength that may change) or a weight patch
applied while sampling (merged: zero inference cost). Unmerged, each call either projects the
layer's output or, without autograd and for large activations, runs the layer on a temporary
weight with the adapter folded in (``_WeightSideForward``), whichever moves less data.
"""
import hashlib
import json
import math
import re

import torch
from torch import nn

from .errors import ModelFileError

MOTION, SPATIAL = "motion", "spatial"
SUBJECT, ABSORBER, TEMPORAL = "subject", "absorber", "temporal"
KINDS = (MOTION, SPATIAL, SUBJECT, ABSORBER, TEMPORAL)
WEIGHT_KINDS = (MOTION, SUBJECT, ABSORBER, TEMPORAL)  # W + s·(down·up)ᵀ; SPATIAL projects outputs instead
SPATIAL_KINDS = (SPATIAL, SUBJECT, ABSORBER)          # customize the T2I layers (a sampler schedule scales them)
QKV, QKV_OUT = ("to_q", "to_k", "to_v"), ("to_q", "to_k", "to_v", "to_out.0")
# which fingerprints a file must match to attach: a subject module or absorber is a plain delta on
# spatial weights (like an image LoRA) and fits any motion module
_CHECKED = {"motion_fingerprint": (MOTION, SPATIAL, TEMPORAL), "base_fingerprint": (SPATIAL,)}
SPATIAL_TARGETS = ("all", "attention", "block_outputs")
FORMAT = "still-moving-adapter/1"
_TEMPORAL_QKV = re.compile(r".*\.motion_modules\.\d+\.transformer_blocks\.\d+\.attn[12]\.to_[qkv]$")


def motion_targets(unet):
    """The temporal-attention Q/K/V projections of every motion module."""
    return [n for n, m in unet.named_modules() if isinstance(m, nn.Linear) and _TEMPORAL_QKV.match(n)]


def attention_targets(unet, temporal, projections=QKV):
    """Attention projections of the spatial transformers (``attentions.N``: attn1 self-, attn2
    cross-attention) or, with ``temporal``, of the motion modules (both temporal self-attention)."""
    block = "motion_modules" if temporal else "attentions"
    proj = "|".join(re.escape(p) for p in projections)
    pattern = re.compile(rf"(?:.*\.)?{block}\.\d+\.transformer_blocks\.\d+\.attn[12]\.(?:{proj})$")
    return [n for n, m in unet.named_modules() if isinstance(m, nn.Linear) and pattern.match(n)]


def default_targets(kind, model):
    """The layers an adapter of ``kind`` goes on when none are given."""
    if kind == MOTION:
        return motion_targets(model.unet)
    if kind == SPATIAL:
        return spatial_targets(model)
    return attention_targets(model.unet, temporal=kind == TEMPORAL, projections=QKV if kind == SUBJECT else QKV_OUT)


def spatial_targets(model, mode="all"):
    """Injected T2I layers to put Spatial Adapters after.

    ``all``: every injected linear/conv (the paper's "each injected layer"); ``attention``: the
    injected linears of the spatial transformers; ``block_outputs``: the last layer of each
    spatial block (transformer proj_out, resnet conv2), i.e. what the temporal layers read.
    """
    if mode not in SPATIAL_TARGETS:
        raise ValueError(f"unknown target mode '{mode}'; choose one of {', '.join(SPATIAL_TARGETS)}")
    injected = set(model.injected_layers())
    if not injected:
        raise ValueError("Spatial Adapters attach to the layers a customized model replaced, and this video "
                         "model has none: inject a customized checkpoint, LoRA or MODEL first.")
    modules = dict(model.unet.named_modules())
    names = [n for n in sorted(injected) if isinstance(modules.get(n), (nn.Linear, nn.Conv2d))
             and ".motion_modules." not in n]
    if mode == "attention":
        names = [n for n in names if ".attentions." in n and isinstance(modules[n], nn.Linear)]
    elif mode == "block_outputs":
        names = [n for n in names if (".attentions." in n and n.endswith(".proj_out"))
                 or (".resnets." in n and n.endswith(".conv2"))]
    if not names:
        raise ValueError(f"no injected layer fits target mode '{mode}'; try 'all'.")
    return names


def _key(name):
    return name.replace(".", "__")


class LowRankAdapter(nn.Module):
    """Low-rank factors ``down`` (d_in × r) and ``up`` (r × d_out) per target module.

    For the weight kinds (motion, subject, absorber, temporal) d_in/d_out are the projection's
    in/out features; for Spatial Adapters both are the layer's output channels.
    """

    def __init__(self, kind, shapes, rank, seed=0, metadata=None):
        super().__init__()
        if kind not in KINDS:
            raise ValueError(f"unknown adapter kind {kind}")
        self.kind, self.rank, self.targets = kind, int(rank), list(shapes)
        self.metadata = dict(metadata or {})
        g = torch.Generator().manual_seed(seed)
        self.down, self.up = nn.ParameterDict(), nn.ParameterDict()
        for name, (d_in, d_out) in shapes.items():
            bound = 1 / math.sqrt(d_in)  # nn.Linear's default range: output variance ~ input's
            self.down[_key(name)] = nn.Parameter((torch.rand(d_in, rank, generator=g) * 2 - 1) * bound)
            self.up[_key(name)] = nn.Parameter(torch.zeros(rank, d_out))

    @classmethod
    def for_model(cls, kind, model, rank, targets=None, seed=0, metadata=None):
        modules = dict(model.unet.named_modules())
        targets = targets or default_targets(kind, model)
        shapes = {}
        for n in targets:
            m = modules[n]
            out = m.out_features if isinstance(m, nn.Linear) else m.out_channels
            shapes[n] = (m.in_features, out) if kind in WEIGHT_KINDS else (out, out)
        return cls(kind, shapes, rank, seed, metadata)

    def factors(self, name):
        return self.down[_key(name)], self.up[_key(name)]

    # ---- unmerged ---------------------------------------------------------------------------
    def attach(self, unet, scale=1.0):
        """Add the adapter to ``unet`` without touching its tensors; returns handles (``h.remove()``).

        ``scale`` may be a float or a 0-d tensor / callable read at every call, so a training
        loop can switch α between batches without re-attaching.
        """
        modules = dict(unet.named_modules())
        handles = []
        for name in self.targets:
            mod = modules.get(name)
            if mod is None:
                raise ValueError(f"the video model has no layer '{name}' for this {self.kind} adapter")
            down, up = self.factors(name)
            hook = self._hook(down, up, scale, isinstance(mod, nn.Conv2d))
            if type(mod) in (nn.Linear, nn.Conv2d) and "forward" not in mod.__dict__ and not mod._forward_hooks:
                handles.append(_WeightSideForward(self, name, mod, hook, scale))
            else:  # a layer someone else already wraps: stack after them, on the output
                handles.append(mod.register_forward_hook(hook))
        return handles

    def _hook(self, down, up, scale, conv):
        kind = self.kind

        def hook(module, args, out):
            s = _scale_now(scale)
            if isinstance(s, (int, float)) and s == 0:
                return out
            d, u = down.to(out.dtype), up.to(out.dtype)
            if not isinstance(s, (int, float)):  # a scale that itself needs gradients
                src = args[0] if kind in WEIGHT_KINDS else out
                if conv:
                    return out + s * torch.einsum("bchw,cr,rd->bdhw", src, d, u)
                return out + s * ((src @ d) @ u)
            # fused multiply-adds: at SD1.5 size they cost a fifth of an einsum plus a separate
            # add. Without autograd they write into the layer's fresh output (no new tensor).
            inplace = out.is_contiguous() and not torch.is_grad_enabled()
            if conv and kind not in WEIGHT_KINDS:
                b, c = out.shape[:2]
                o3 = out.reshape(b, c, -1)
                low, up_t = torch.matmul(d.T, o3), u.T.expand(b, -1, -1)
                if inplace:
                    o3.baddbmm_(up_t, low, alpha=s)
                    return out
                return torch.baddbmm(o3, up_t, low, alpha=s).view_as(out)
            o2 = out.reshape(-1, out.shape[-1])
            src = args[0].reshape(-1, args[0].shape[-1]) if kind in WEIGHT_KINDS else o2
            low = src @ d
            if inplace:
                o2.addmm_(low, u, alpha=s)
                return out
            return torch.addmm(o2, low, u, alpha=s).view_as(out)
        return hook

    def effective_parameters(self, name, module, scale):
        """The layer's (weight, bias) with the adapter folded in, from its current tensors."""
        weight = self.merged_weight(name, module.weight, scale)
        bias = module.bias
        if bias is not None and self.kind not in WEIGHT_KINDS:
            bias = self.merged_weight(name, bias, scale)
        return weight, bias

    # ---- merged: weight patch -------------------------------------------------------------
    def merged_weight(self, name, weight, scale):
        down, up = (t.detach().to(weight.device, torch.float32) for t in self.factors(name))
        w = weight.float()
        if self.kind in WEIGHT_KINDS:
            return torch.addmm(w, up.T, down.T, alpha=float(scale)).to(weight.dtype)
        # (I + s·down·up)ᵀ W, kept low-rank: a C×C projection would cost C²·K per layer
        # (minutes for SD1.5's 282 layers on a CPU) instead of 2·r·C·K
        flat = w.reshape(w.shape[0], -1) if w.ndim > 1 else w.unsqueeze(1)
        return torch.addmm(flat, up.T, down.T @ flat, alpha=float(scale)).reshape(w.shape).to(weight.dtype)

    # ---- file format ------------------------------------------------------------------------
    def save(self, path, overwrite=False, extra_tensors=None):
        from .files import save_safetensors
        tensors = {}
        for name in self.targets:
            down, up = self.factors(name)
            tensors[f"{name}.down"] = down.detach().float().cpu()
            tensors[f"{name}.up"] = up.detach().float().cpu()
        tensors.update(extra_tensors or {})
        meta = {"format": FORMAT, "kind": self.kind, "rank": str(self.rank), "targets": json.dumps(self.targets)}
        meta.update({k: v if isinstance(v, str) else json.dumps(v) for k, v in self.metadata.items()})
        return save_safetensors(tensors, path, metadata=meta, overwrite=overwrite)

    @classmethod
    def load(cls, path, kind=None):
        """Read an adapter file, checking it is one and of the expected kind (no model checks)."""
        from .files import read_metadata, read_state_dict
        meta = read_metadata(path)
        if meta.get("format") != FORMAT:
            raise ModelFileError(path, "this is not a Still-Moving adapter file (no 'format' metadata).",
                                 "Pick a file written by this pack's training nodes (models/still_moving/).")
        if kind and meta.get("kind") != kind:
            raise ModelFileError(path, f"this is a {meta.get('kind')} adapter, but this slot needs a {kind} adapter.",
                                 f"Pick a file from models/still_moving/{kind}/.")
        tensors = read_state_dict(path, torch.float32)
        targets = json.loads(meta["targets"])
        rank = int(meta["rank"])
        shapes = {}
        for name in targets:
            down, up = tensors.get(f"{name}.down"), tensors.get(f"{name}.up")
            if down is None or up is None:
                raise ModelFileError(path, f"the adapter is missing the factors of '{name}'.", "The file may be truncated.")
            if down.shape[1] != rank or up.shape[0] != rank:
                raise ModelFileError(path, f"'{name}' has rank {down.shape[1]}/{up.shape[0]} but the file says {rank}.",
                                     "The file is inconsistent; train it again.")
            shapes[name] = (down.shape[0], up.shape[1])
        extra = {k: v for k, v in meta.items() if k not in ("format", "kind", "rank", "targets")}
        adapter = cls(meta["kind"], shapes, rank, metadata={k: _maybe_json(v) for k, v in extra.items()})
        with torch.no_grad():
            for name in targets:
                d, u = adapter.factors(name)
                d.copy_(tensors[f"{name}.down"])
                u.copy_(tensors[f"{name}.up"])
        adapter.extra_tensors = {k: v for k, v in tensors.items() if not k.endswith((".down", ".up"))}
        return adapter

    def check(self, model, path=None):
        """Refuse a file that does not fit this video model, saying what differs."""
        modules = dict(model.unet.named_modules())
        for key, what in (("motion_fingerprint", "motion module"), ("base_fingerprint", "customized T2I model")):
            want = self.metadata.get(key)
            if want is None or self.kind not in _CHECKED[key]:
                continue
            have = motion_fingerprint(model) if key == "motion_fingerprint" else t2i_fingerprint(model)
            if want != have:
                trained = self.metadata.get("motion_module" if key == "motion_fingerprint" else "customized", "?")
                raise ModelFileError(path, f"this {self.kind} adapter was trained for another {what} ({trained}, "
                                     f"fingerprint {want}; this graph has {have}).",
                                     "Use the adapter trained for this model, or train one for it.")
        for name in self.targets:
            m = modules.get(name)
            if m is None:
                raise ModelFileError(path, f"the video model has no layer '{name}' (adapter trained for a different "
                                     f"architecture or motion-module version: {self.metadata.get('motion_version', '?')} "
                                     f"vs {model.info.get('motion_version')}).", "")
            d_in, d_out = self.down[_key(name)].shape[0], self.up[_key(name)].shape[1]
            size = (m.in_features, m.out_features) if isinstance(m, nn.Linear) else (m.out_channels, m.out_channels)
            if self.kind == SPATIAL:
                size = (size[1], size[1]) if isinstance(m, nn.Linear) else size
            if (d_in, d_out) != size:
                raise ModelFileError(path, f"layer '{name}' is {size} in this model but {(d_in, d_out)} in the adapter.", "")


class _WeightSideForward:
    """Unmerged adapter on a plain Linear/Conv2d, with a handle like a hook's (``remove()``).

    Without autograd, when the layer's output has more rows (tokens or pixels × batch) than its
    weight has fan-in, the adapter is folded into a temporary copy of the weight for this call
    (cost ~ C·K·r) instead of projecting the output (cost ~ N·C·r plus another pass over a large
    activation, which made unmerged sampling 14 % slower at SD1.5 size on a CPU). The module's
    own tensors are never written. With autograd, or small activations, the output is projected
    (the forward hook's arithmetic), so training and its gradients are unchanged.
    """

    def __init__(self, adapter, name, module, hook, scale):
        self.module = module
        conv = isinstance(module, nn.Conv2d)
        fan_in = module.weight[0].numel()
        own = type(module).forward

        def forward(x, *args, **kwargs):
            s = _scale_now(scale)
            if (torch.is_grad_enabled() or not isinstance(s, (int, float)) or args or kwargs
                    or _rows(module, x, conv) <= fan_in):
                return hook(module, (x,), own(module, x, *args, **kwargs))
            if s == 0:
                return own(module, x)
            weight, bias = adapter.effective_parameters(name, module, s)
            return module._conv_forward(x, weight, bias) if conv else nn.functional.linear(x, weight, bias)

        module.forward = forward

    def remove(self):
        self.module.__dict__.pop("forward", None)


def _scale_now(scale):
    """The scale for this call: a float, or a tensor when it needs gradients."""
    s = scale() if callable(scale) else scale
    if isinstance(s, torch.Tensor) and not s.requires_grad and s.ndim == 0:
        s = float(s)
    return s


def _rows(module, x, conv):
    """Output rows of a layer call: batch × output pixels for a conv, leading elements for a linear."""
    if not conv:
        return x.numel() // max(1, x.shape[-1])
    if x.ndim != 4:
        return 0
    out = []
    for i, size in enumerate(x.shape[-2:]):
        k, st, d = module.kernel_size[i], module.stride[i], module.dilation[i]
        pad = module.padding
        if isinstance(pad, str):
            out.append(size if pad == "same" else (size - d * (k - 1) - 1) // st + 1)
        else:
            out.append((size + 2 * pad[i] - d * (k - 1) - 1) // st + 1)
    return x.shape[0] * out[0] * out[1]


def _maybe_json(v):
    try:
        return json.loads(v)
    except (ValueError, TypeError):
        return v


def _fingerprint(named):
    h = hashlib.sha256()
    for name, t in named:
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.detach().flatten()[:256].float().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def motion_fingerprint(model):
    """Identity of the motion module (its version and a sample of its weights)."""
    params = [(n, p) for n, p in model.unet.named_parameters() if ".motion_modules." in n]
    return f"{model.info.get('motion_version', '?')}-{_fingerprint(params[:16])}"


def t2i_fingerprint(model):
    """Identity of the effective T2I weights (base + injection patches, without adapters)."""
    from .video_model import T2I
    bare = model.clone()
    bare.patches = [p for p in model.patches if getattr(p, "injection", False)]
    with bare.patched((T2I,)):
        params = [(n, p) for n, p in model.unet.named_parameters() if ".motion_modules." not in n]
        injected = set(bare.injected_layers())
        chosen = [(n, p) for n, p in params if n.rsplit(".", 1)[0] in injected][:16] or params[:16]
        return _fingerprint(chosen)
