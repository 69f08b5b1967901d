"""CustomCrafter and Customize-A-Video: their adapters and how they are trained.

Both reuse the Motion Adapter's weight update ``W + s · (A_down · A_up)ᵀ`` (``lowrank.WeightLoRA``)
on other layers, the one adapter file format, the one training loop (``training.train``) and the
one sampler (``sampling.sample``, whose ``schedule`` is CustomCrafter's Dynamic Weighted Video
Sampling):

* CustomCrafter: a subject module trained on the subject's reference images as still clips,
  with class images for prior preservation. The paper also learns a new token; this pack does
  not (use a rare word such as "sks" in the captions, as DreamBooth does).
* Customize-A-Video: an appearance absorber trained on the reference video's frames as unordered
  images with the temporal layers bypassed; then a temporal LoRA trained on the video itself,
  frames in order, with the absorber attached and frozen, so the temporal LoRA learns the motion
  and the absorber takes the appearance. At inference only temporal LoRAs are attached, each at
  its own strength; they add up.
"""

from . import training
from .lowrank import QKV, QKV_OUT, WeightLoRA, attention_targets
from .training import TrainingRecipe


class SubjectModule(WeightLoRA):
    """CustomCrafter's subject module: a low-rank update of Q/K/V of the spatial self- and
    cross-attention (temporal layers untouched), trained on still clips of the subject's images.
    A plain change of spatial weights, like an image LoRA: it fits any motion module."""

    kind = "subject"
    customizes_t2i = True
    recipe = TrainingRecipe(frozen=True, prior=True)

    @classmethod
    def default_targets(cls, model):
        return attention_targets(model.unet, temporal=False, projections=QKV)


class AppearanceAbsorber(WeightLoRA):
    """Customize-A-Video's appearance absorber: a low-rank update of Q/K/V/out of the spatial
    attention, trained on the reference video's frames as a bag of images with the temporal
    layers bypassed. It soaks up the video's look while the temporal LoRA trains; not used at
    inference."""

    kind = "absorber"
    customizes_t2i = True
    recipe = TrainingRecipe(frozen="unordered", bypass_temporal=True)

    @classmethod
    def default_targets(cls, model):
        return attention_targets(model.unet, temporal=False, projections=QKV_OUT)


class TemporalLoRA(WeightLoRA):
    """Customize-A-Video's temporal LoRA: a low-rank update of Q/K/V/out of the temporal
    attention, trained on the reference video's real frames in order: the video's motion."""

    kind = "temporal"
    fingerprints = ("motion_fingerprint",)
    recipe = TrainingRecipe(frozen=False)

    @classmethod
    def default_targets(cls, model):
        return attention_targets(model.unet, temporal=True, projections=QKV_OUT)


def train_subject_module(model, reference_clips, settings, out_path, prior_clips=(), **kw):
    """CustomCrafter's subject module, trained in the video model on still clips of the
    reference images (each repeated over all frames) mixed with prior clips by ``prior_ratio``."""
    return training.train(model, SubjectModule, settings, out_path, custom_clips=reference_clips,
                          prior_clips=prior_clips, **kw)


def train_absorber(model, video_clips, settings, out_path, **kw):
    """Customize-A-Video's appearance absorber: the reference video's frames as unordered
    images, temporal layers bypassed."""
    return training.train(model, AppearanceAbsorber, settings, out_path, custom_clips=video_clips, **kw)


def with_absorber(model, absorber):
    """``model`` with the absorber attached at strength 1, merged: its weights are folded into
    the patched layers, so nothing of it can be trained."""
    return AppearanceAbsorber.expect(absorber).add_to(model, 1.0, merged=True, source=absorber_name(absorber))


def absorber_name(absorber):
    """What a temporal LoRA's metadata records of the absorber it was trained with: its file's name."""
    return absorber.file.name if absorber.file is not None else "(an absorber never saved)"


def absorbed(model, absorber, metadata=None):
    """The model and metadata a temporal LoRA trains with: ``absorber`` (or None) attached and
    frozen, and named in the metadata."""
    meta = dict(metadata or {})
    if absorber is None:
        return model, meta
    return with_absorber(model, absorber), dict(meta, absorber=absorber_name(absorber))


def train_temporal_lora(model, video_clips, settings, out_path, absorber=None, metadata=None, **kw):
    """Customize-A-Video's temporal LoRA on the reference video (real frames, in order), with the
    absorber attached and frozen for the run. The saved file holds only the temporal LoRA."""
    model, meta = absorbed(model, absorber, metadata)
    return training.train(model, TemporalLoRA, settings, out_path, custom_clips=video_clips, metadata=meta, **kw)
