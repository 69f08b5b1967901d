"""CustomCrafter and Customize-A-Video on this pack's adapter machinery.

Both are recipes over the one adapter class (``lowrank.LowRankAdapter``, new kinds ``subject``,
``absorber``, ``temporal``), the one training loop (``training.train``) and the one sampler
(``sampling.sample``, whose ``schedule`` is CustomCrafter's Dynamic Weighted Video Sampling):

* CustomCrafter: a subject module (low-rank update on Q/K/V of the spatial self- and
  cross-attention) trained on the subject's reference images as still clips, with class images
  for prior preservation. The paper also learns a new token; this pack does not (use a rare
  word such as "sks" in the captions, as DreamBooth does).
* Customize-A-Video: an appearance absorber (spatial Q/K/V/out update) trained on the reference
  video's frames as unordered images with the temporal layers bypassed; then a temporal LoRA
  (temporal Q/K/V/out) trained on the video itself, frames in order, with the absorber attached
  and frozen, so the temporal LoRA learns the motion and the absorber takes the appearance. At
  inference only temporal LoRAs are attached, each at its own strength; they add up.
"""
from pathlib import Path

from . import training
from .lowrank import ABSORBER, SUBJECT, TEMPORAL, LowRankAdapter
from .video_model import AdapterPatch


def attach(model, adapter, strength=1.0, merged=True, kind=None, source=""):
    """``model`` plus ``adapter`` at ``strength`` (a new model; ``model`` is unchanged).

    Several adapters stack: merged ones add their weight deltas in turn.
    """
    if kind is not None and adapter.kind != kind:
        raise ValueError(f"this needs a {kind} adapter, got a {adapter.kind} adapter.")
    adapter.check(model, source or None)
    return model.with_patch(AdapterPatch(adapter, float(strength), merged, str(source)))


def train_subject_module(model, reference_clips, settings, out_path, prior_clips=(), **kw):
    """CustomCrafter's subject module, trained in the video model on still clips of the
    reference images (each repeated over all frames) mixed with prior clips by ``prior_ratio``."""
    return training.train(model, SUBJECT, settings, out_path, custom_clips=reference_clips,
                          prior_clips=prior_clips, **kw)


def train_absorber(model, video_clips, settings, out_path, **kw):
    """Customize-A-Video's appearance absorber: the reference video's frames as unordered
    images, temporal layers bypassed."""
    return training.train(model, ABSORBER, settings, out_path, custom_clips=video_clips, **kw)


def with_absorber(model, absorber, source="appearance absorber"):
    """``model`` with the absorber attached at strength 1, merged: its weights are folded into
    the patched layers, so nothing of it can be trained."""
    return attach(model, absorber, 1.0, merged=True, kind=ABSORBER, source=source)


def train_temporal_lora(model, video_clips, settings, out_path, absorber=None, absorber_source="", metadata=None,
                        **kw):
    """Customize-A-Video's temporal LoRA on the reference video (real frames, in order), with the
    absorber attached and frozen for the run. The saved file holds only the temporal LoRA."""
    meta = dict(metadata or {})
    if absorber is not None:
        model = with_absorber(model, absorber, absorber_source or "appearance absorber")
        meta["absorber"] = Path(absorber_source).name if absorber_source else "(from the graph)"
    return training.train(model, TEMPORAL, settings, out_path, custom_clips=video_clips, metadata=meta, **kw)


def load(path, kind):
    return LowRankAdapter.load(path, kind)
