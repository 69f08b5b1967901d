"""The paper's ablation "training all T2I weights instead of Spatial Adapters".

A full-size delta on the weight and bias of every injected T2I layer (zero at the start), so
training it with the one training loop (``training.train(model, FullDelta, ...)``) is fine-tuning
those weights themselves, under exactly the same data, noise and optimizer as the Spatial
Adapters it is compared with. It has the same interface as ``LowRankAdapter`` (attach / save /
load, metadata, training recipe) and the same adapter file (``still-moving-adapter/1``, kind
``full``), but it is an ablation: no node loads it, and ``LowRankAdapter.load`` does not return
it. ``apply(model)`` gives the fine-tuned video model.
"""
import torch
import torch.nn.functional as F
from torch import nn

from adapters.errors import ModelFileError
from adapters.lowrank import (check_fingerprints, module_key, read_adapter_file, spatial_targets, target_modules,
                              write_adapter_file)
from adapters.spatial_adapters import SpatialAdapters

FULL = "full"


class FullDelta(nn.Module):
    """``W + ΔW``, ``b + Δb`` per target layer (Linear or Conv2d)."""

    kind = FULL
    rank = 0
    fingerprints = SpatialAdapters.fingerprints  # trained like Spatial Adapters, for the same model
    recipe = SpatialAdapters.recipe

    def __init__(self, shapes, metadata=None):
        super().__init__()
        self.targets = list(shapes)
        self.metadata = dict(metadata or {})
        self.extra_tensors = {}
        self.weight, self.bias = nn.ParameterDict(), nn.ParameterDict()
        for name, (w, b) in shapes.items():
            self.weight[module_key(name)] = nn.Parameter(torch.zeros(w))
            if b is not None:
                self.bias[module_key(name)] = nn.Parameter(torch.zeros(b))

    @classmethod
    def for_training(cls, model, settings):
        return cls.for_model(model, spatial_targets(model, settings.target_mode))

    @classmethod
    def for_model(cls, model, targets=None, metadata=None):
        modules = dict(model.unet.named_modules())
        targets = targets or spatial_targets(model, "all")
        shapes = {}
        for n in targets:
            m = modules[n]
            shapes[n] = (tuple(m.weight.shape), tuple(m.bias.shape) if m.bias is not None else None)
        return cls(shapes, metadata)

    def _deltas(self, name):
        k = module_key(name)
        return self.weight[k], (self.bias[k] if k in self.bias else None)

    def attach(self, unet, scale=1.0):
        """Forward hooks adding ``layer(x; ΔW, Δb)`` to each target's output; returns handles."""
        handles = []
        for name, mod in target_modules(unet, self.targets, "full-weights delta"):
            dw, db = self._deltas(name)
            handles.append(mod.register_forward_hook(self._hook(dw, db, scale)))
        return handles

    @staticmethod
    def _hook(dw, db, scale):
        def hook(module, args, out):
            s = scale() if callable(scale) else scale
            x = args[0]
            w, b = dw.to(x.dtype), (db.to(x.dtype) if db is not None else None)
            if isinstance(module, nn.Conv2d):
                extra = F.conv2d(x, w, b, module.stride, module.padding, module.dilation, module.groups)
            else:
                extra = F.linear(x, w, b)
            return out + s * extra
        return hook

    def apply(self, model, scale=1.0):
        """``model`` with the fine-tuned weights injected (its current T2I weights + delta)."""
        from adapters.video_model import T2I, ReplaceWeights
        params = dict(model.unet.named_parameters())
        tensors = {}
        with model.patched((T2I,)), torch.no_grad():
            for name in self.targets:
                dw, db = self._deltas(name)
                w = params[f"{name}.weight"]
                tensors[f"{name}.weight"] = (w.data.float() + scale * dw.float().cpu()).to(w.dtype).clone()
                if db is not None:
                    b = params[f"{name}.bias"]
                    tensors[f"{name}.bias"] = (b.data.float() + scale * db.float().cpu()).to(b.dtype).clone()
        return model.with_patch(ReplaceWeights(T2I, tensors, 1.0, "full fine-tune"))

    def save(self, path, overwrite=False, extra_tensors=None):
        tensors = {}
        for name in self.targets:
            dw, db = self._deltas(name)
            tensors[f"{name}.weight_delta"] = dw.detach().float().cpu()
            if db is not None:
                tensors[f"{name}.bias_delta"] = db.detach().float().cpu()
        tensors.update(extra_tensors or {})
        return write_adapter_file(path, FULL, 0, self.targets, tensors, self.metadata, overwrite)

    @classmethod
    def load(cls, path):
        f = read_adapter_file(path, FULL)
        tensors = f.tensors
        missing = [n for n in f.targets if f"{n}.weight_delta" not in tensors]
        if missing:
            raise ModelFileError(path, f"the delta of '{missing[0]}' is missing.", "The file may be truncated.")
        shapes = {n: (tuple(tensors[f"{n}.weight_delta"].shape),
                      tuple(tensors[f"{n}.bias_delta"].shape) if f"{n}.bias_delta" in tensors else None)
                  for n in f.targets}
        out = cls(shapes, f.metadata)
        with torch.no_grad():
            for n in f.targets:
                dw, db = out._deltas(n)
                dw.copy_(tensors[f"{n}.weight_delta"])
                if db is not None:
                    db.copy_(tensors[f"{n}.bias_delta"])
        out.extra_tensors = {k: v for k, v in tensors.items() if not k.endswith(("_delta",))}
        return out

    def check(self, model, path=None):
        check_fingerprints(self, model, path)
        modules = dict(model.unet.named_modules())
        for n in self.targets:
            if n not in modules or tuple(modules[n].weight.shape) != tuple(self._deltas(n)[0].shape):
                raise ModelFileError(path, f"layer '{n}' does not fit this video model.", "")
