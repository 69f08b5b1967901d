"""The Motion Adapter (paper §3.2): a motion slider on the motion module's temporal attention.

On every temporal-attention Q, K, V projection, ``W + α · (A_down · A_up)ᵀ`` (A_down random,
A_up zero, so a fresh adapter changes nothing). Trained once, on the base video model, on
frozen videos (one frame of a natural video repeated over all frames), so at α = 1 the model
makes static videos; at inference α is a motion slider: 0 = the model's own motion, 1 = static,
< 0 = more motion. Spatial Adapters train with it at α = 1 on the customized stills, so they
learn appearance rather than stillness.
"""
from dataclasses import dataclass

from .lowrank import WeightLoRA, motion_targets
from .training import TrainingRecipe

# A Motion Adapter "freezes" when α = 1 keeps at most this share of the frame-to-frame change
# the model makes on its own (α = 0); a few sampling steps leave some flicker even in still
# videos. Spatial Adapters trained against one that does not freeze learn to damp motion.
FREEZE_LIMIT = 0.25


class MotionAdapter(WeightLoRA):
    """The Motion Adapter: a LoRA on every temporal-attention Q/K/V, trained on frozen videos."""

    kind = "motion"
    fingerprints = ("motion_fingerprint",)
    recipe = TrainingRecipe(frozen=True)

    @classmethod
    def default_targets(cls, model):
        return motion_targets(model.unet)


@dataclass
class FreezeCheck:
    """The motion of short generated videos with the Motion Adapter at α = 0 (the model's own)
    and α = 1 (which should be still): mean absolute change between consecutive frames.
    ``customized``: measured on a video model with a customized checkpoint injected (before
    Spatial Adapters train against it) rather than on the base model it was trained on."""
    motion: dict          # α -> mean frame difference over the prompts and seeds
    prompts: tuple
    seeds: tuple
    steps: int
    limit: float = FREEZE_LIMIT
    customized: bool = False

    @property
    def share(self):
        """How much of the model's own motion α = 1 leaves (0 = frozen, 1 = no effect)."""
        return self.motion[1.0] / max(self.motion[0.0], 1e-12)

    @property
    def freezes(self):
        return self.share <= self.limit

    def summary(self):
        where = f"{len(self.prompts)} prompt(s) x {len(self.seeds)} seed(s), {self.steps} steps"
        model = "the customized model's" if self.customized else "the model's"
        head = (f"Motion Adapter check ({where}): at α = 1 the videos keep {100 * self.share:.0f} % of "
                f"{model} own motion (frame difference {self.motion[1.0]:.4f} vs {self.motion[0.0]:.4f} at α = 0).")
        if self.freezes:
            return head + (" It freezes this customized model: its stills teach appearance, not stillness."
                           if self.customized else " It freezes video: ready for Train Spatial Adapters.")
        if self.customized:
            return (head + f"\nWARNING: the Motion Adapter does not freeze this customized model (more than "
                    f"{100 * self.limit:.0f} % of its frame-to-frame change is left), as the training assumes: the "
                    "stills also asked the adapters to remove that change. Sample the result and naive injection "
                    "and compare before using the adapters.")
        return (head + f"\nWARNING: this Motion Adapter does not freeze video (more than {100 * self.limit:.0f} % "
                "of the motion is left). Spatial Adapters trained with it would learn to damp motion. Resume it "
                "for more steps, or train again with a higher learning rate or rank.")


def check_freezes(model, adapter, prompts, *, seeds=(1000, 1001), steps=10, cfg=7.5, width=256, height=256,
                  frames=16, device="cpu", should_stop=None, on_video=None):
    """Sample each prompt and seed at α = 0 and α = 1 and compare their motion (``FreezeCheck``).
    Use prompts and seeds the adapter was not trained on; ``should_stop()`` ends it early (None);
    ``on_video(alpha, prompt, seed, video)`` sees each video (to measure more from the same ones).
    On a model with a customized checkpoint injected, the check says so in its summary."""
    from . import sampling, scoring
    prompts = tuple(dict.fromkeys(prompts)) or ("",)
    motion = {}
    for alpha in (0.0, 1.0):
        m = adapter.add_to(model, alpha, source="Motion Adapter check") if alpha else model
        values = []
        for prompt in prompts:
            for seed in seeds:
                if should_stop is not None and should_stop():
                    return None
                video = sampling.text_to_video(m, prompt, device=device, seed=seed, steps=steps, cfg=cfg,
                                               width=width, height=height, frames=frames)
                values.append(scoring.frame_difference(video))
                if on_video is not None:
                    on_video(alpha, prompt, seed, video)
        motion[alpha] = sum(values) / len(values)
    return FreezeCheck(motion, prompts, tuple(seeds), steps, customized=bool(model.injections()))
