"""The video model handed between nodes: shared weights plus a list of weight patches.

Nodes never modify a model they received (ComfyUI caches node outputs and re-runs parts of a
graph). Injection, interpolation and LoRAs are recorded as patches on a shallow clone and
applied only while sampling or training, then undone, as ComfyUI's ModelPatcher does.
"""
import contextlib
from dataclasses import dataclass, field

import torch

T2I = "unet"            # spatial (text-to-image) layers of the video UNet
TEXT = "text_encoder"


@dataclass
class ReplaceWeights:
    """Naive injection (weight=1) or interpolation lerp(base, custom, weight) of whole tensors."""
    target: str
    tensors: dict
    weight: float = 1.0
    source: str = ""

    injection = True  # a customization of the T2I / text weights (Spatial Adapters attach to it)

    def apply(self, name, current):
        new = self.tensors.get(name)
        if new is None:
            return current
        if self.weight == 1.0:
            return new.to(current.device, current.dtype)
        return torch.lerp(current, new.to(current.device, current.dtype), float(self.weight))

    def names(self):
        return set(self.tensors)


@dataclass
class LoraPatch:
    """W + strength * delta for every module of one LoRA part (unet / text_encoder / motion)."""
    target: str
    parts: dict  # module name -> adapters.lora.LoraPart
    strength: float = 1.0
    source: str = ""

    @property
    def injection(self):
        return self.target in (T2I, TEXT)

    def apply(self, name, current):
        module, _, leaf = name.rpartition(".")
        part = self.parts.get(module)
        if part is None or self.strength == 0:
            return current
        if leaf == "bias":
            return current if part.bias is None else current + self.strength * part.bias.to(current)
        return current + self.strength * part.delta(current.shape, current.dtype).to(current.device)

    def names(self):
        return {f"{m}.weight" for m in self.parts} | {f"{m}.bias" for m, p in self.parts.items()
                                                      if p.bias is not None}


@dataclass(repr=False)
class AdapterPatch:
    """An adapter (``lowrank.LowRankAdapter``: Motion Adapter at scale α, Spatial Adapters, ...)
    on the video UNet, at ``scale``.

    Merged: the adapter's ``merged_weight`` folds it into the tensors it changes while sampling
    (zero cost). Unmerged: ``adapter.attach`` (the weights stay as they are).
    """
    adapter: object  # adapters.lowrank.LowRankAdapter
    scale: float = 1.0
    merged: bool = True
    source: str = ""
    target: str = T2I
    injection = False

    def names(self):
        if not self.merged or self.scale == 0:
            return set()
        return {f"{m}.{leaf}" for m in self.adapter.targets for leaf in self.adapter.merged_tensors}

    def apply(self, name, current):
        module, _, leaf = name.rpartition(".")
        if not self.merged or self.scale == 0 or module not in self.adapter.targets:
            return current  # another patch's tensor (patches are applied per tensor, in order)
        if leaf not in self.adapter.merged_tensors:
            return current  # e.g. a weight update (W + s·ΔW) leaves the layer's bias alone
        return self.adapter.merged_weight(module, current, self.scale)

    def hooks(self, unet):
        if self.merged or self.scale == 0:
            return []
        return self.adapter.attach(unet, self.scale)


@dataclass
class VideoModel:
    unet: torch.nn.Module            # diffusers UNetMotionModel
    text_encoder: torch.nn.Module    # transformers CLIPTextModel
    tokenizer: object
    vae: torch.nn.Module             # diffusers AutoencoderKL
    info: dict = field(default_factory=dict)
    patches: list = field(default_factory=list)

    def __repr__(self):  # ComfyUI prints node inputs in error reports: keep it to one line
        kinds = ", ".join(f"{type(p).__name__}({p.target}, {p.source or '?'})" for p in self.patches)
        return (f"VideoModel({self.info.get('checkpoint', '?')} + {self.info.get('motion_module', '?')} "
                f"[{self.info.get('motion_version', '?')}], patches=[{kinds}])")

    def clone(self):
        return VideoModel(self.unet, self.text_encoder, self.tokenizer, self.vae, dict(self.info), list(self.patches))

    def with_patch(self, patch):
        m = self.clone()
        m.patches.append(patch)
        return m

    def injections(self):
        """The patches that customize the T2I / text weights (injected checkpoints and LoRAs)."""
        return [p for p in self.patches if getattr(p, "injection", False)]

    def injected_layers(self):
        """Modules of the T2I part whose weights a customization replaced or changed."""
        names = set()
        for p in self.patches:
            if p.target == T2I and p.injection:
                names |= {n.rsplit(".", 1)[0] for n in p.names()}
        return sorted(names)

    def _module(self, target):
        return self.text_encoder if target == TEXT else self.unet

    @contextlib.contextmanager
    def on_device(self, device):
        """Move the networks to ``device`` for the block and back to the CPU after (ComfyUI's
        offloading habit: the GPU is shared with the rest of the graph)."""
        device = torch.device(device)
        nets = (self.unet, self.text_encoder, self.vae)
        if device.type == "cpu":
            yield self
            return
        try:
            for n in nets:
                n.to(device)
            yield self
        finally:
            for n in nets:
                n.to("cpu")

    @property
    def vae_scale(self):
        """Pixels per latent pixel: 8 for SD's VAE (four levels), 4 for the toy models' three."""
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def dtype(self):
        return next(self.unet.parameters()).dtype

    @contextlib.contextmanager
    def patched(self, targets=(T2I, TEXT)):
        """Apply the patches in order for the duration of the block, then restore the originals.

        Only references to the original tensors are kept, so patching costs one tensor per
        patched weight, and nothing when a replacement can be used as is. ``T2I`` covers the
        whole video UNet, motion-module patches included.
        """
        backups = []  # (param, original data)
        handles = []
        try:
            for target in (TEXT, T2I):
                if target not in targets:
                    continue
                module = self._module(target)
                wanted = [p for p in self.patches if (p.target == target or
                          (target == T2I and p.target == "motion"))]
                if not wanted:
                    continue
                params = dict(module.named_parameters())
                names = set().union(*(p.names() for p in wanted))
                for name in names:
                    param = params.get(name)
                    if param is None:
                        continue
                    value = param.data
                    for p in wanted:
                        value = p.apply(name, value)
                    original = param.data
                    if value is not original and value.data_ptr() != original.data_ptr():
                        backups.append((param, original))
                        param.data = value
                if target == T2I:
                    for p in wanted:
                        handles += p.hooks(module) if hasattr(p, "hooks") else []
            yield self
        finally:
            for h in handles:
                h.remove()
            for param, data in reversed(backups):
                param.data = data
