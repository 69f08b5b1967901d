"""CustomCrafter's Dynamic Weighted Video Sampling, as a general sampler input.

A video model forms motion in the early denoising steps and appearance details in the late
ones, and a strong spatial customization in the early steps stiffens the motion. So every
attached SPATIAL customization runs at weight ``early`` (λs) for the first steps and ``late``
(λl) for the last ``last_steps`` (K) steps (paper: 0.4, 0.8, K = 5 of 50).

What is scaled: the weights of the T2I layers a customization changes, i.e. an injected
checkpoint (its interpolation weight), an injected LoRA or MODEL (its strength), Spatial
Adapters, a CustomCrafter subject module, a Customize-A-Video absorber. Untouched: motion-module
patches (Motion Adapter, temporal LoRAs, MotionLoRAs) and the text encoder (the prompt is
encoded once, before sampling).

How: the sampler patches the model scaled for the early phase and, at step ``steps - K``,
undoes that patching and applies the late one: one switch, no per-step work.
"""
import contextlib
import dataclasses
from dataclasses import dataclass

from .video_model import T2I, AdapterPatch, LoraPatch, ReplaceWeights


@dataclass(frozen=True)
class WeightSchedule:
    early: float = 0.4       # λs, the first steps
    late: float = 0.8        # λl, the last ``last_steps`` steps
    last_steps: int = 5      # K

    def validate(self):
        if self.last_steps < 0:
            raise ValueError(f"last_steps must be at least 0, got {self.last_steps}")
        for name in ("early", "late"):
            if not 0.0 <= getattr(self, name) <= 2.0:
                raise ValueError(f"the schedule's {name} weight must be in [0, 2], got {getattr(self, name)}")

    def switch_step(self, total):
        """Index of the first step at the late weight (``total - K``, at least 0)."""
        return max(0, int(total) - int(self.last_steps))

    def weight_at(self, step, total):
        return self.late if step >= self.switch_step(total) else self.early


def scales_with_schedule(patch):
    """True for a patch that customizes the T2I (spatial) layers of the video UNet."""
    if isinstance(patch, AdapterPatch):
        return patch.adapter.customizes_t2i
    return isinstance(patch, (ReplaceWeights, LoraPatch)) and patch.target == T2I


def scaled(model, weight):
    """A clone of ``model`` whose spatial customizations run at ``weight`` times their own
    strength (λ = 1: the very same patches)."""
    out = model.clone()
    if weight == 1.0:
        return out
    patches = []
    for p in model.patches:
        if scales_with_schedule(p):
            field = {ReplaceWeights: "weight", LoraPatch: "strength", AdapterPatch: "scale"}[type(p)]
            p = dataclasses.replace(p, **{field: getattr(p, field) * weight})
        patches.append(p)
    out.patches = patches
    return out


@contextlib.contextmanager
def scheduled_patching(model, schedule, total, targets=(T2I,)):
    """``model.patched(targets)`` for the sampling loop, following ``schedule``.

    Yields ``at_step(i)``, to call before step ``i``; it re-patches only when the weight
    changes (once, at ``schedule.switch_step(total)``). No schedule: plain patching.
    """
    if schedule is None:
        with model.patched(targets):
            yield lambda i: None
        return
    schedule.validate()
    state = {"weight": None, "stack": contextlib.ExitStack()}

    def at_step(i):
        weight = schedule.weight_at(i, total)
        if weight == state["weight"]:
            return
        state["stack"].close()  # undo the early patching before applying the late one
        state["stack"] = contextlib.ExitStack()
        state["stack"].enter_context(scaled(model, weight).patched(targets))
        state["weight"] = weight

    try:
        at_step(0)
        yield at_step
    finally:
        state["stack"].close()
