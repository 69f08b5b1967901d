"""Motion measures on generated videos (latents or frames).

measured.md: the variance across frames of a single-step x0 prediction is not reliable once
a model has learned motion; measure on generated videos, as these do.
"""


def temporal_variance(video):
    """Mean over positions and channels of the variance across frames.

    ``video``: latents (B, C, F, h, w) or frames (F, H, W, 3).
    """
    v = video.float()
    if v.ndim == 4:  # frames (F, H, W, 3)
        return v.var(dim=0).mean().item()
    return v.var(dim=2).mean().item()


def temporal_share(video):
    """Share of the video's variance that varies across frames (0 = frozen video)."""
    v = video.float()
    dim = 0 if v.ndim == 4 else 2
    total = v.var(dim=tuple(range(v.ndim)) if v.ndim == 4 else (2, 3, 4)).mean()
    return (v.var(dim=dim).mean() / total.clamp_min(1e-12)).item()
