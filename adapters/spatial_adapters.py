"""Spatial Adapters (paper §3.3): a projection after each injected customized T2I layer.

After each layer the customized T2I model replaced, a low-rank projection of the layer's OUTPUT
channels, ``Y · (I + A_down · A_up)`` (identity at init). Not a weight LoRA, but linear, so it
folds into the layer: ``W' = (I + M)ᵀ W``, ``b' = (I + M)ᵀ b``. Trained on stills sampled from
the customized model, seen as frozen videos, with the Motion Adapter at α = 1, mixed with
natural videos for prior preservation (Motion Adapter at α = 0).
"""
import torch
from torch import nn

from .lowrank import LowRankAdapter, add_low_rank_rows, spatial_targets
from .training import TrainingRecipe


class SpatialAdapters(LowRankAdapter):
    """Spatial Adapters: an output projection after each injected layer, trained on frozen stills."""

    kind = "spatial"
    merged_tensors = ("weight", "bias")
    fingerprints = ("motion_fingerprint", "base_fingerprint")
    customizes_t2i = True
    recipe = TrainingRecipe(frozen=True, prior=True, motion_adapter=True)

    @classmethod
    def default_targets(cls, model):
        return spatial_targets(model)

    @classmethod
    def for_training(cls, model, settings):
        return cls.for_model(model, settings.rank, spatial_targets(model, settings.target_mode), seed=settings.seed)

    @classmethod
    def factor_shape(cls, module):
        out = module.out_features if isinstance(module, nn.Linear) else module.out_channels
        return out, out

    def _add_update(self, x, out, down, up, s, conv, inplace):
        if not isinstance(s, (int, float)):  # a scale that itself needs gradients
            if conv:
                return out + s * torch.einsum("bchw,cr,rd->bdhw", out, down, up)
            return out + s * ((out @ down) @ up)
        # fused multiply-adds: at SD1.5 size they cost a fifth of an einsum plus a separate add
        if conv:
            b, c = out.shape[:2]
            o3 = out.reshape(b, c, -1)
            low, up_t = torch.matmul(down.T, o3), up.T.expand(b, -1, -1)
            if inplace:
                o3.baddbmm_(up_t, low, alpha=s)
                return out
            return torch.baddbmm(o3, up_t, low, alpha=s).view_as(out)
        return add_low_rank_rows(out, out.reshape(-1, out.shape[-1]) @ down, up, s, inplace)

    def merged_weight(self, name, weight, scale):
        # (I + s·down·up)ᵀ W, kept low-rank: a C×C projection would cost C²·K per layer instead of 2·r·C·K
        down, up = (t.detach().to(weight.device, torch.float32) for t in self.factors(name))
        w = weight.float()
        flat = w.reshape(w.shape[0], -1) if w.ndim > 1 else w.unsqueeze(1)
        return torch.addmm(flat, up.T, down.T @ flat, alpha=float(scale)).reshape(w.shape).to(weight.dtype)
