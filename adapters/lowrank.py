"""The shared base of every Still-Moving adapter, and their one file format.

An adapter is a pair of low-rank factors ``down`` (d_in × r) and ``up`` (r × d_out) per target
layer of the video UNet, saved as one safetensors file (format ``still-moving-adapter/1``) whose
``kind`` metadata names the adapter's class. Each kind is a subclass, found by its name:

* ``MotionAdapter`` (motion_adapter.py): the paper's Motion Adapter (§3.2).
* ``SpatialAdapters`` (spatial_adapters.py): the paper's Spatial Adapters (§3.3).
* ``SubjectModule``, ``AppearanceAbsorber``, ``TemporalLoRA`` (customize.py): CustomCrafter's
  subject module and Customize-A-Video's appearance absorber and temporal LoRA.

A subclass says how it acts on a layer (``WeightLoRA``: ``W + s·(down·up)ᵀ`` on the layer's weight;
``SpatialAdapters``: a projection of the layer's output), where it goes by default
(``default_targets``), what a file must match to attach (``fingerprints``) and how the training
loop trains it (``recipe``, a ``training.TrainingRecipe``). Defining a subclass with a ``kind``
registers it, so ``LowRankAdapter.load`` returns the right class for any adapter file.

Adapters act on a video model in two ways, like a peft tuner's unmerged/merged states: unmerged
(``attach``: the layer's own tensors untouched; training, and inference at a strength that may
change) or a weight patch applied while sampling (merged, ``merged_weight``: zero inference
cost). Unmerged, each call either adds the low-rank term to the layer's output or, without
autograd and for large activations, runs the layer on a temporary weight with the adapter folded
in (``_WeightSideForward``), whichever moves less data.
"""
import hashlib
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .errors import ModelFileError
from .video_model import T2I, AdapterPatch

FORMAT = "still-moving-adapter/1"
ADAPTER_KINDS = {}  # the ``kind`` stored in a file -> its LowRankAdapter subclass (filled by subclassing)
QKV, QKV_OUT = ("to_q", "to_k", "to_v"), ("to_q", "to_k", "to_v", "to_out.0")
SPATIAL_TARGETS = ("all", "attention", "block_outputs")
_FILE_KEYS = ("format", "kind", "rank", "targets")


# ---- where adapters go in the video UNet ----------------------------------------------------
def attention_targets(unet, temporal, projections=QKV):
    """Attention projections of the spatial transformers (``attentions.N``: attn1 self-, attn2
    cross-attention) or, with ``temporal``, of the motion modules (both temporal self-attention)."""
    block = "motion_modules" if temporal else "attentions"
    proj = "|".join(re.escape(p) for p in projections)
    pattern = re.compile(rf"(?:.*\.)?{block}\.\d+\.transformer_blocks\.\d+\.attn[12]\.(?:{proj})$")
    return [n for n, m in unet.named_modules() if isinstance(m, nn.Linear) and pattern.match(n)]


def motion_targets(unet):
    """The temporal-attention Q/K/V projections of every motion module."""
    return attention_targets(unet, temporal=True, projections=QKV)


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


def target_modules(unet, targets, what):
    """[(name, module)] of the target layers in ``unet``, all checked before any is used."""
    modules = dict(unet.named_modules())
    missing = [name for name in targets if name not in modules]
    if missing:
        raise ValueError(f"the video model has no layer '{missing[0]}' for this {what}")
    return [(name, modules[name]) for name in targets]


def module_key(name):
    """A module name as a ParameterDict key (which may not contain dots)."""
    return name.replace(".", "__")


# ---- the one file format ---------------------------------------------------------------------
@dataclass
class AdapterFile:
    """What an adapter file holds: its kind, rank, target layers, metadata and tensors."""
    kind: str
    rank: int
    targets: list
    metadata: dict
    tensors: dict


def write_adapter_file(path, kind, rank, targets, tensors, metadata, overwrite=False):
    """Write ``tensors`` with the format/kind/rank/targets header and ``metadata`` (JSON where
    not a string), atomically and without clobbering unless ``overwrite``."""
    from .files import save_safetensors
    meta = {"format": FORMAT, "kind": kind, "rank": str(rank), "targets": json.dumps(list(targets))}
    meta.update({k: v if isinstance(v, str) else json.dumps(v) for k, v in metadata.items()})
    return save_safetensors(tensors, path, metadata=meta, overwrite=overwrite)


def read_adapter_file(path, kind=None):
    """Read an adapter file, refusing one that is not an adapter or not of ``kind`` (if given)."""
    from .files import read_metadata, read_state_dict
    meta = read_metadata(path)
    if meta.get("format") != FORMAT:
        raise ModelFileError(path, "this is not a Still-Moving adapter file (no 'format' metadata).",
                             "Pick a file written by this pack's training nodes (models/still_moving/).")
    if kind and meta.get("kind") != kind:
        raise ModelFileError(path, f"this is a {meta.get('kind')} adapter, but this slot needs a {kind} adapter.",
                             f"Pick a file from models/still_moving/{kind}/.")
    extra = {k: _maybe_json(v) for k, v in meta.items() if k not in _FILE_KEYS}
    return AdapterFile(meta["kind"], int(meta["rank"]), json.loads(meta["targets"]), extra,
                       read_state_dict(path, torch.float32))


def adapter_class(kind):
    """The adapter class for ``kind`` (a class is returned as is)."""
    if isinstance(kind, type):
        return kind
    cls = ADAPTER_KINDS.get(kind)
    if cls is None:
        raise ValueError(f"unknown adapter kind '{kind}'; the kinds are {', '.join(sorted(ADAPTER_KINDS))}.")
    return cls


# ---- the base class ----------------------------------------------------------------------------
class LowRankAdapter(nn.Module):
    """Low-rank factors ``down`` (d_in × r) and ``up`` (r × d_out) per target layer.

    Subclasses set ``kind`` and say how the factors act on a layer (``factor_shape``,
    ``merged_weight``, ``_add_update``); this class holds what every kind shares.
    """

    kind = None               # the file's 'kind' metadata, and the models/still_moving/<kind>/ folder
    merged_tensors = ("weight",)  # the layer tensors the adapter changes
    fingerprints = ()         # 'motion_fingerprint' / 'base_fingerprint': what a file must match to attach
    customizes_t2i = False    # acts on the T2I (spatial) layers, so a sampler weight schedule scales it
    recipe = None             # training.TrainingRecipe: how ``training.train`` trains this kind

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "kind" in cls.__dict__:
            ADAPTER_KINDS[cls.kind] = cls

    def __init__(self, shapes, rank, seed=0, metadata=None):
        super().__init__()
        if self.kind is None:
            raise TypeError("LowRankAdapter is the shared base; make a MotionAdapter, SpatialAdapters, ... instead.")
        self.rank, self.targets = int(rank), list(shapes)
        self.metadata = dict(metadata or {})
        self.extra_tensors = {}
        self.file = None  # the file last read or written: named in what is trained with this adapter
        g = torch.Generator().manual_seed(seed)
        self.down, self.up = nn.ParameterDict(), nn.ParameterDict()
        for name, (d_in, d_out) in shapes.items():
            bound = 1 / math.sqrt(d_in)  # nn.Linear's default range: output variance ~ input's
            self.down[module_key(name)] = nn.Parameter((torch.rand(d_in, rank, generator=g) * 2 - 1) * bound)
            self.up[module_key(name)] = nn.Parameter(torch.zeros(rank, d_out))

    @classmethod
    def default_targets(cls, model):
        """The layers this kind goes on when none are given."""
        raise NotImplementedError

    @classmethod
    def factor_shape(cls, module):
        """(d_in, d_out) of the factors for ``module``."""
        raise NotImplementedError

    @classmethod
    def for_model(cls, model, rank, targets=None, seed=0, metadata=None):
        """A fresh adapter (identity: ``up`` is zero) on ``targets`` or the kind's default layers."""
        modules = dict(model.unet.named_modules())
        targets = targets or cls.default_targets(model)
        return cls({n: cls.factor_shape(modules[n]) for n in targets}, rank, seed, metadata)

    @classmethod
    def for_training(cls, model, settings):
        """The fresh adapter a training run starts from (``settings``: a ``training.TrainSettings``)."""
        return cls.for_model(model, settings.rank, seed=settings.seed)

    @classmethod
    def expect(cls, adapter):
        """Refuse an adapter of another kind given where this kind is needed (e.g. a node input).
        Compared by kind, so an adapter made by another copy of this library passes."""
        if adapter.kind != cls.kind:
            raise ValueError(f"this input needs a {cls.kind} adapter, got a {adapter.kind} adapter.")
        return adapter

    def factors(self, name):
        return self.down[module_key(name)], self.up[module_key(name)]

    def add_to(self, model, scale=1.0, merged=True, source=""):
        """``model`` plus this adapter at ``scale`` (a new model; ``model`` is unchanged), after
        checking that it fits. Merged: folded into the weights while sampling; else hooks.
        Several adapters stack: merged ones add their weight changes in turn."""
        self.check(model, source or None)
        return model.with_patch(AdapterPatch(self, float(scale), merged, str(source)))

    # ---- unmerged ---------------------------------------------------------------------------
    def attach(self, unet, scale=1.0):
        """Add the adapter to ``unet`` without touching its tensors; returns handles (``h.remove()``).

        ``scale`` may be a float or a 0-d tensor / callable read at every call, so a training
        loop can switch α between batches without re-attaching.
        """
        handles = []
        for name, mod in target_modules(unet, self.targets, f"{self.kind} adapter"):
            down, up = self.factors(name)
            hook = self._hook(down, up, scale, isinstance(mod, nn.Conv2d))
            if type(mod) in (nn.Linear, nn.Conv2d) and "forward" not in mod.__dict__ and not mod._forward_hooks:
                handles.append(_WeightSideForward(self, name, mod, hook, scale))
            else:  # a layer someone else already wraps: stack after them, on the output
                handles.append(mod.register_forward_hook(hook))
        return handles

    def _hook(self, down, up, scale, conv):
        def hook(module, args, out):
            s = _scale_now(scale)
            if isinstance(s, (int, float)) and s == 0:
                return out
            # without autograd, write into the layer's fresh output (no new tensor)
            inplace = isinstance(s, (int, float)) and out.is_contiguous() and not torch.is_grad_enabled()
            return self._add_update(args[0], out, down.to(out.dtype), up.to(out.dtype), s, conv, inplace)
        return hook

    def _add_update(self, x, out, down, up, s, conv, inplace):
        """The layer's output ``out`` (input ``x``) plus ``s`` times the adapter's term."""
        raise NotImplementedError

    def effective_parameters(self, name, module, scale):
        """The layer's (weight, bias) with the adapter folded in, from its current tensors."""
        weight = self.merged_weight(name, module.weight, scale)
        bias = module.bias
        if bias is not None and "bias" in self.merged_tensors:
            bias = self.merged_weight(name, bias, scale)
        return weight, bias

    # ---- merged: weight patch -------------------------------------------------------------
    def merged_weight(self, name, weight, scale):
        """The layer tensor ``weight`` (a weight or a bias in ``merged_tensors``) with the adapter folded in."""
        raise NotImplementedError

    # ---- file format ------------------------------------------------------------------------
    def save(self, path, overwrite=False, extra_tensors=None):
        tensors = {}
        for name in self.targets:
            down, up = self.factors(name)
            tensors[f"{name}.down"] = down.detach().float().cpu()
            tensors[f"{name}.up"] = up.detach().float().cpu()
        tensors.update(extra_tensors or {})
        self.file = write_adapter_file(path, self.kind, self.rank, self.targets, tensors, self.metadata, overwrite)
        return self.file

    @classmethod
    def load(cls, path, kind=None):
        """Read an adapter file as its own class, checking it is one and of the expected kind
        (``kind``, or the class's own when called on a subclass; no model checks)."""
        f = read_adapter_file(path, kind or cls.kind)
        try:
            klass = adapter_class(f.kind)
        except ValueError as e:
            raise ModelFileError(path, str(e), "Pick a file written by this pack's training nodes.") from None
        shapes = {}
        for name in f.targets:
            down, up = f.tensors.get(f"{name}.down"), f.tensors.get(f"{name}.up")
            if down is None or up is None:
                raise ModelFileError(path, f"the adapter is missing the factors of '{name}'.", "The file may be truncated.")
            if down.shape[1] != f.rank or up.shape[0] != f.rank:
                raise ModelFileError(path, f"'{name}' has rank {down.shape[1]}/{up.shape[0]} but the file says {f.rank}.",
                                     "The file is inconsistent; train it again.")
            shapes[name] = (down.shape[0], up.shape[1])
        adapter = klass(shapes, f.rank, metadata=f.metadata)
        with torch.no_grad():
            for name in f.targets:
                d, u = adapter.factors(name)
                d.copy_(f.tensors[f"{name}.down"])
                u.copy_(f.tensors[f"{name}.up"])
        adapter.extra_tensors = {k: v for k, v in f.tensors.items() if not k.endswith((".down", ".up"))}
        adapter.file = Path(path)
        return adapter

    def check(self, model, path=None):
        """Refuse a file that does not fit this video model, saying what differs."""
        check_fingerprints(self, model, path)
        modules = dict(model.unet.named_modules())
        for name in self.targets:
            m = modules.get(name)
            if m is None:
                raise ModelFileError(path, f"the video model has no layer '{name}' (adapter trained for a different "
                                     f"architecture or motion-module version: {self.metadata.get('motion_version', '?')} "
                                     f"vs {model.info.get('motion_version')}).", "")
            d_in, d_out = self.down[module_key(name)].shape[0], self.up[module_key(name)].shape[1]
            try:
                size = self.factor_shape(m)
            except ValueError as e:
                raise ModelFileError(path, str(e), "") from None
            if (d_in, d_out) != size:
                raise ModelFileError(path, f"layer '{name}' is {size} in this model but {(d_in, d_out)} in the adapter.", "")


class WeightLoRA(LowRankAdapter):
    """A LoRA on each target linear layer's weight, ``W + s · (down · up)ᵀ`` (bias unchanged):
    the Motion Adapter, CustomCrafter's subject module, Customize-A-Video's absorber and temporal LoRA."""

    @classmethod
    def factor_shape(cls, module):
        if not isinstance(module, nn.Linear):
            raise ValueError(f"a {cls.kind} adapter goes on linear layers, not on a {type(module).__name__}.")
        return module.in_features, module.out_features

    def _add_update(self, x, out, down, up, s, conv, inplace):
        if not isinstance(s, (int, float)):  # a scale that itself needs gradients
            return out + s * ((x @ down) @ up)
        return add_low_rank_rows(out, x.reshape(-1, x.shape[-1]) @ down, up, s, inplace)

    def merged_weight(self, name, weight, scale):
        down, up = (t.detach().to(weight.device, torch.float32) for t in self.factors(name))
        return torch.addmm(weight.float(), up.T, down.T, alpha=float(scale)).to(weight.dtype)


class _WeightSideForward:
    """Unmerged adapter on a plain Linear/Conv2d, with a handle like a hook's (``remove()``).

    Without autograd, when the layer's output has more rows (tokens or pixels × batch) than its
    weight has fan-in, the adapter is folded into a temporary copy of the weight for this call
    (cost ~ C·K·r) instead of adding the low-rank term to the output (cost ~ N·C·r plus another
    pass over a large activation). The module's own tensors are never written. With autograd, or
    small activations, the hook's arithmetic runs, so training and its gradients are unchanged.
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


def add_low_rank_rows(out, low, up, s, inplace):
    """``out + s · low @ up`` over ``out``'s last dimension (``low``: one row per position of
    ``out``) as one fused multiply-add: at SD1.5 size a fifth of an einsum plus a separate add."""
    o2 = out.reshape(-1, out.shape[-1])
    if inplace:
        o2.addmm_(low, up, alpha=s)
        return out
    return torch.addmm(o2, low, up, alpha=s).view_as(out)


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


# ---- which video model a file was trained for ---------------------------------------------------
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
    bare = model.clone()
    bare.patches = model.injections()
    with bare.patched((T2I,)):
        params = [(n, p) for n, p in model.unet.named_parameters() if ".motion_modules." not in n]
        injected = set(bare.injected_layers())
        chosen = [(n, p) for n, p in params if n.rsplit(".", 1)[0] in injected][:16] or params[:16]
        return _fingerprint(chosen)


_FINGERPRINTS = {"motion_fingerprint": (motion_fingerprint, "motion module", "motion_module"),
                 "base_fingerprint": (t2i_fingerprint, "customized T2I model", "customized")}


def model_fingerprints(adapter_cls, model):
    """The fingerprints a file of ``adapter_cls`` records: the motion module's always, and those
    the class checks at attach (the customized T2I model's for Spatial Adapters)."""
    keys = dict.fromkeys(("motion_fingerprint",) + tuple(adapter_cls.fingerprints))
    return {k: _FINGERPRINTS[k][0](model) for k in keys}


def check_fingerprints(adapter, model, path=None):
    """Refuse an adapter whose recorded fingerprints (those its class checks) differ from ``model``'s."""
    for key in adapter.fingerprints:
        want = adapter.metadata.get(key)
        if want is None:
            continue
        compute, what, name_key = _FINGERPRINTS[key]
        have = compute(model)
        if want != have:
            raise ModelFileError(path, f"this {adapter.kind} adapter was trained for another {what} "
                                 f"({adapter.metadata.get(name_key, '?')}, fingerprint {want}; this graph has {have}).",
                                 "Use the adapter trained for this model, or train one for it.")
