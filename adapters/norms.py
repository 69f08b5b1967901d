"""GroupNorm over a frame or over a whole video: the normalization AnimateDiff-Evolved computes.

diffusers' ``UNetMotionModel`` runs the spatial layers on (batch·frames, C, H, W), so their
GroupNorms see one frame, and hands each motion module's GroupNorm (B, C, F, H, W), so that one
sees the whole video. AnimateDiff-Evolved (ADE), which users' graphs run, does otherwise:

* ``"frame"`` (v2, v3, AnimateLCM with a mid block): every GroupNorm normalizes each frame
  on its own, the motion modules' too (ADE's and the original AnimateDiff's
  TemporalTransformer3DModel normalize their (batch·frames, C, H, W) input).
* ``"video"`` (what ADE classes as v1: no mid block and a positional table other than 32
  positions, i.e. v1 and AnimateLCM without a mid block): every GroupNorm of the UNet
  normalizes over all frames of each video, as the v1 UNet was trained. ADE does this by
  swapping ``torch.nn.GroupNorm.forward`` while the diffusion model runs, which reaches the
  motion modules' GroupNorms as well.

``install(unet, mode)`` changes the class of the UNet's GroupNorm modules in place: same
parameters, same state-dict keys, so loaders, LoRAs and adapters keep addressing them as before.
A forward pre-hook records the number of frames of each call (the 5-D sample's third dimension)
for the ``"video"`` GroupNorms, whose input arrives as (videos·frames, C, H, W). A CFG batch
(conditional and unconditional videos concatenated) and each context window are separate videos.
"""
import re

import torch
import torch.nn.functional as F

FRAME, VIDEO = "frame", "video"
MODES = (FRAME, VIDEO)


def ade_version(motion_config):
    """The version ADE reads a motion module as: v2 with a mid block, v3 with a 32-position
    table and no mid block, otherwise v1 (a 24-position table, or no table: AnimateLCM)."""
    if motion_config["use_motion_mid_block"]:
        return "v2"
    return "v3" if motion_config["motion_max_seq_length"] == 32 else "v1"


def mode_for(motion_config):
    """``"video"`` for a motion module ADE runs as v1, else ``"frame"``."""
    return VIDEO if ade_version(motion_config) == "v1" else FRAME


class FrameCount:
    """Frames per video of the UNet call in progress (set by ``RecordFrames``)."""

    def __init__(self):
        self.frames = None


class RecordFrames:
    """Forward pre-hook of the UNet: the sample is (batch, C, frames, H, W).

    A class, not a closure, so ``copy.deepcopy`` of the UNet gives the copy its own counter.
    Kept after the call: activation checkpointing recomputes blocks during backward.
    """

    def __init__(self, count):
        self.count = count

    def __call__(self, module, args, kwargs):
        sample = args[0] if args else kwargs.get("sample")
        if sample is not None and sample.ndim == 5:
            self.count.frames = sample.shape[2]


class FrameGroupNorm(torch.nn.GroupNorm):
    """A motion module's GroupNorm applied to each frame of its (B, C, F, H, W) input."""

    def forward(self, x):
        if x.ndim != 5:
            return super().forward(x)
        b, c, f, h, w = x.shape
        # diffusers passes a permuted view of a (B, F, C, H, W) tensor: this reshape is free
        y = F.group_norm(x.transpose(1, 2).reshape(b * f, c, h, w), self.num_groups, self.weight, self.bias, self.eps)
        return y.view(b, f, c, h, w).transpose(1, 2)


class VideoGroupNorm(torch.nn.GroupNorm):
    """A GroupNorm whose statistics span all frames of each video.

    4-D input is (videos·frames, C, H, W) with the frame count of the current UNet call; 5-D
    input (a motion module's, (B, C, F, H, W)) already holds whole videos.
    """

    count = None  # FrameCount, set by install()

    def forward(self, x):
        if x.ndim == 5:
            return super().forward(x)
        frames = self.count.frames if self.count is not None else None
        if frames is None:
            raise RuntimeError("this GroupNorm normalizes over the frames of a video, but no frame count "
                               "was recorded: call the whole video UNet with a (batch, C, frames, H, W) sample.")
        n, c, h, w = x.shape
        if n % frames:
            raise RuntimeError(f"this GroupNorm got {n} images, not a whole number of {frames}-frame videos.")
        v = x.view(n // frames, frames, c, h, w).transpose(1, 2)
        y = F.group_norm(v, self.num_groups, self.weight, self.bias, self.eps)
        return y.transpose(1, 2).reshape(n, c, h, w)


_MOTION_NORM = re.compile(r"(?:.+\.)?motion_modules\.\d+\.norm")


_SWAPPABLE = (torch.nn.GroupNorm, FrameGroupNorm, VideoGroupNorm)


def install(unet, mode):
    """Make ``unet`` (a diffusers UNetMotionModel) normalize as ADE does in ``mode``.

    Idempotent; a second call with another mode switches. Returns ``unet``.
    """
    if mode not in MODES:
        raise ValueError(f"unknown normalization mode '{mode}'; choose one of {', '.join(MODES)}")
    state = getattr(unet, "_still_moving_norms", None)
    if state is None:
        count = FrameCount()
        handle = unet.register_forward_pre_hook(RecordFrames(count), with_kwargs=True)
        state = {"count": count, "handle": handle}
        unet._still_moving_norms = state
    for name, m in unet.named_modules():
        if type(m) not in _SWAPPABLE:  # another GroupNorm subclass is left as it is
            continue
        if mode == VIDEO:
            m.__class__ = VideoGroupNorm
            m.count = state["count"]
        else:
            m.__class__ = FrameGroupNorm if _MOTION_NORM.fullmatch(name) else torch.nn.GroupNorm
            m.__dict__.pop("count", None)
    state["mode"] = mode
    return unet


def installed_mode(unet):
    """The mode ``install`` set on ``unet``, or None (diffusers' own normalization)."""
    state = getattr(unet, "_still_moving_norms", None)
    return state["mode"] if state else None
