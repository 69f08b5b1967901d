"""The Motion Adapter (paper §3.2): a motion slider on the motion module's temporal attention.

On every temporal-attention Q, K, V projection, ``W + α · (A_down · A_up)ᵀ`` (A_down random,
A_up zero, so a fresh adapter changes nothing). Trained once, on the base video model, on
frozen videos (one frame of a natural video repeated over all frames), so at α = 1 the model
makes static videos; at inference α is a motion slider: 0 = the model's own motion, 1 = static,
< 0 = more motion. Spatial Adapters train with it at α = 1 on the customized stills, so they
learn appearance rather than stillness.
"""
from .lowrank import WeightLoRA, motion_targets
from .training import TrainingRecipe


class MotionAdapter(WeightLoRA):
    """The Motion Adapter: a LoRA on every temporal-attention Q/K/V, trained on frozen videos."""

    kind = "motion"
    fingerprints = ("motion_fingerprint",)
    recipe = TrainingRecipe(frozen=True)

    @classmethod
    def default_targets(cls, model):
        return motion_targets(model.unet)
