"""Scores for generated videos: how much they move, how steady they stay, and, with a CLIP
model the user keeps locally, how well they follow the prompt (CLIP-T) and the customization
images (CLIP-I).

The paper scores with CLIP-T and CLIP-I but notes that a frozen video of the customized T2I
model scores highest on both (method notes), so every score here comes with motion scores.
The motion scores need no optical flow and no download: the mean absolute frame difference,
the track of the foreground's centroid (a subject on a plain background, as in the toy world
or product shots; on busy footage trust the frame difference and CLIP consistency instead),
and the mean correlation of consecutive frames.

Frames are ComfyUI's IMAGE layout, (F, H, W, 3) floats in [0, 1]; latents are (1, C, F, h, w)
(the sampler's output) or (C, F, h, w).
"""
import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F

from .errors import ModelFileError

DIRECTIONS = ("left", "right", "up", "down", "still")
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")
TOKENIZER_FILES = ("vocab.json", "merges.txt")


# --- motion ------------------------------------------------------------------------------------

def _as_video(video):
    """(F, C, H, W) float and whether it is pixels (frames) or latents."""
    v = torch.as_tensor(video).detach().float().cpu()
    if v.ndim == 5:
        if v.shape[0] != 1:
            raise ValueError(f"latents must hold one video (1, C, F, h, w), got {tuple(v.shape)}.")
        return v[0].permute(1, 0, 2, 3), False
    if v.ndim == 4 and v.shape[-1] in (3, 4):
        return v[..., :3].permute(0, 3, 1, 2), True
    if v.ndim == 4:
        return v.permute(1, 0, 2, 3), False
    raise ValueError(f"expected frames (F, H, W, 3) or latents (1, C, F, h, w), got {tuple(v.shape)}.")


def temporal_variance(video):
    """Variance across frames, averaged over positions and channels (0 for a frozen video).
    Measure it on generated videos: one denoising step's estimate does not show learned motion."""
    v, _ = _as_video(video)
    return v.var(dim=0).mean().item() if v.shape[0] > 1 else 0.0


def frame_difference(video):
    """Mean absolute change between consecutive frames (0 for a frozen video)."""
    v, _ = _as_video(video)
    if v.shape[0] < 2:
        return 0.0
    return (v[1:] - v[:-1]).abs().mean().item()


def frame_correlation(video, size=32):
    """Mean Pearson correlation of consecutive frames (downscaled to ``size``): 1 for a frozen
    video, near 0 for unrelated frames. An optical-flow-free temporal-consistency measure."""
    v, _ = _as_video(video)
    if v.shape[0] < 2:
        return 1.0
    if max(v.shape[-2:]) > size:
        v = F.interpolate(v, size=(size, size), mode="area")
    x = v.flatten(1)
    x = x - x.mean(1, keepdim=True)
    norm = x.norm(dim=1)
    corr = (x[1:] * x[:-1]).sum(1) / (norm[1:] * norm[:-1]).clamp_min(1e-12)
    flat = (norm[1:] < 1e-6) | (norm[:-1] < 1e-6)  # a plain frame has no correlation: same frame or not
    same = (v[1:] - v[:-1]).flatten(1).abs().amax(1) < 1e-6
    return torch.where(flat, same.float(), corr).mean().item()


def foreground_masks(frames, threshold=0.2):
    """(F, H, W) bool: pixels whose colour is over ``threshold`` (max over RGB) away from the
    frame's background, the median colour of its border ring."""
    v, pixels = _as_video(frames)
    if not pixels:
        raise ValueError("foreground masks need decoded frames (F, H, W, 3), not latents.")
    h, w = v.shape[-2:]
    r = max(1, min(h, w) // 16)
    ring = torch.cat([v[:, :, :r].flatten(2), v[:, :, -r:].flatten(2),
                      v[:, :, r:-r, :r].flatten(2), v[:, :, r:-r, -r:].flatten(2)], dim=2)
    background = ring.median(dim=2).values[:, :, None, None]
    return (v - background).abs().amax(1) > threshold


def centroid_track(frames, threshold=0.2, min_area=0.002):
    """(F, 2) centroid (x, y) of each frame's foreground, in [0, 1] of the width / height; NaN
    where the foreground covers less than ``min_area`` of the frame."""
    return mask_centroids(foreground_masks(frames, threshold), min_area)


def mask_centroids(masks, min_area=0.002):
    """(F, 2) centroid (x, y) of each of (F, H, W) masks, in [0, 1] of the width / height; NaN
    where a mask covers less than ``min_area`` of the frame."""
    masks = torch.as_tensor(masks).float()
    f, h, w = masks.shape
    area = masks.flatten(1).mean(1)
    ys = (torch.arange(h, dtype=torch.float32) + 0.5) / h
    xs = (torch.arange(w, dtype=torch.float32) + 0.5) / w
    total = masks.sum((1, 2)).clamp_min(1)
    cx = (masks.sum(1) * xs).sum(1) / total
    cy = (masks.sum(2) * ys).sum(1) / total
    track = torch.stack([cx, cy], 1)
    track[area < min_area] = float("nan")
    return track


def direction_of(dx, dy, still=0.05):
    """'left' / 'right' / 'up' / 'down' for a net displacement (image coordinates, y down), or
    'still' when it is shorter than ``still`` (a share of the frame size)."""
    if not (math.isfinite(dx) and math.isfinite(dy)) or math.hypot(dx, dy) < still:
        return "still"
    if abs(dx) >= abs(dy):
        return "right" if dx > 0 else "left"
    return "down" if dy > 0 else "up"


def subject_motion(frames, threshold=0.2):
    """The foreground centroid's motion: mean step length (``speed``, share of the frame per
    frame), net displacement first to last tracked frame (``dx``, ``dy``), its ``direction``,
    and the share of frames where a foreground was found (``tracked``)."""
    track = centroid_track(frames, threshold)
    ok = ~torch.isnan(track[:, 0])
    out = {"tracked": ok.float().mean().item()}
    pts = track[ok]
    if pts.shape[0] < 2:
        return dict(out, speed=0.0, dx=0.0, dy=0.0, direction="still")
    steps = (pts[1:] - pts[:-1]).norm(dim=1)
    dx, dy = (pts[-1] - pts[0]).tolist()
    return dict(out, speed=steps.mean().item(), dx=dx, dy=dy, direction=direction_of(dx, dy))


def motion_scores(video, threshold=0.2):
    """All motion scores of one video (frames or latents; subject scores need frames)."""
    v, pixels = _as_video(video)
    out = {"frames": int(v.shape[0]), "frame_difference": frame_difference(video),
           "frame_correlation": frame_correlation(video)}
    if pixels:
        sub = subject_motion(video, threshold)
        out.update({"subject_speed": sub["speed"], "subject_dx": sub["dx"], "subject_dy": sub["dy"],
                    "direction": sub["direction"], "subject_tracked": sub["tracked"]})
    return out


# --- CLIP --------------------------------------------------------------------------------------

def _fix_text():
    return ("Give a folder written by transformers' save_pretrained of a full CLIPModel (config.json, "
            "model.safetensors, tokenizer files, preprocessor_config.json), e.g. a local copy of "
            "openai/clip-vit-large-patch14, under models/still_moving/clip_scoring/.")


def check_clip_folder(folder):
    """The folder's config.json, refusing anything that is not a full CLIPModel (text + vision)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ModelFileError(folder, "is a file, not a folder." if folder.exists() else "folder not found.",
                             _fix_text())
    cfg_path = folder / "config.json"
    if not cfg_path.is_file():
        raise ModelFileError(folder, "has no config.json, so it is not a transformers model folder.", _fix_text())
    try:
        cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise ModelFileError(cfg_path, f"is not valid JSON ({e}).", "Copy the model folder again.") from e
    kind = cfg.get("model_type") if isinstance(cfg, dict) else None
    if kind == "clip_vision_model":
        raise ModelFileError(folder, "holds only CLIP's vision tower; CLIP-T needs the text tower too.",
                             _fix_text())
    if kind != "clip":
        archs = ", ".join(cfg.get("architectures") or []) if isinstance(cfg, dict) else ""
        raise ModelFileError(folder, f"is a '{kind or '?'}' model ({archs or 'no architectures listed'}), "
                             "not a CLIPModel.", _fix_text())
    if not any((folder / f).is_file() for f in WEIGHT_FILES):
        raise ModelFileError(folder, f"has a CLIP config but no weights ({' / '.join(WEIGHT_FILES[::2])}).",
                             _fix_text())
    return cfg


class ClipScorer:
    """A local CLIPModel with its tokenizer and image preprocessing: CLIP-T, CLIP-I and CLIP
    frame consistency (cosines of L2-normalized projected embeddings)."""

    def __init__(self, model, tokenizer, processor, path="", device="cpu"):
        self.model, self.tokenizer, self.processor = model, tokenizer, processor
        self.path, self.device = str(path), torch.device(device)
        self.max_length = int(model.config.text_config.max_position_embeddings)

    @classmethod
    def load(cls, folder, device="cpu", dtype=torch.float32):
        """Read a CLIPModel folder; never downloads (``local_files_only``)."""
        from transformers import AutoTokenizer, CLIPImageProcessor, CLIPModel
        folder = Path(folder)
        cfg = check_clip_folder(folder)
        try:
            model = CLIPModel.from_pretrained(str(folder), local_files_only=True)
        except Exception as e:  # noqa: BLE001 - transformers raises OSError/ValueError/RuntimeError
            raise ModelFileError(folder, f"the CLIP weights could not be loaded ({str(e)[:300]}).",
                                 "The folder may be incomplete: copy it again.") from e
        fix = "Save the CLIP tokenizer in the same folder (tokenizer.json, or vocab.json + merges.txt)."
        if not ((folder / "tokenizer.json").is_file() or all((folder / f).is_file() for f in TOKENIZER_FILES)):
            raise ModelFileError(folder, "has no tokenizer files (transformers would build an empty one).", fix)
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
        except Exception as e:  # noqa: BLE001
            raise ModelFileError(folder, f"has no usable tokenizer ({str(e)[:200]}).", fix) from e
        vocab = int(cfg.get("text_config", {}).get("vocab_size", model.config.text_config.vocab_size))
        if len(tokenizer) > vocab:
            raise ModelFileError(folder, f"the tokenizer has {len(tokenizer)} tokens but the text model only "
                                 f"{vocab}.", "The tokenizer belongs to another model: save the model's own.")
        if (folder / "preprocessor_config.json").is_file():
            processor = CLIPImageProcessor.from_pretrained(str(folder), local_files_only=True)
        else:  # CLIP's own preprocessing at the model's resolution
            side = int(model.config.vision_config.image_size)
            processor = CLIPImageProcessor(size={"shortest_edge": side}, crop_size={"height": side, "width": side})
        return cls(model.eval().requires_grad_(False).to(device, dtype), tokenizer, processor, folder, device)

    def _dtype(self):
        return next(self.model.parameters()).dtype

    def image_features(self, images, batch=16):
        """(N, H, W, 3) in [0, 1] -> (N, D) unit vectors."""
        images = torch.as_tensor(images).detach().float().cpu()
        if images.ndim == 3:
            images = images[None]
        arrays = [a for a in (images[..., :3].clamp(0, 1) * 255).round().to(torch.uint8).numpy()]
        out = []
        with torch.no_grad():
            for s in range(0, len(arrays), batch):
                px = self.processor(images=arrays[s:s + batch], return_tensors="pt")["pixel_values"]
                pooled = self.model.vision_model(pixel_values=px.to(self.device, self._dtype())).pooler_output
                out.append(F.normalize(self.model.visual_projection(pooled).float(), dim=-1).cpu())
        return torch.cat(out)

    def text_features(self, prompts):
        """Prompts -> (N, D) unit vectors (truncated to the text model's positions)."""
        tok = self.tokenizer(list(prompts), padding="max_length", max_length=self.max_length, truncation=True,
                             return_tensors="pt")
        with torch.no_grad():
            pooled = self.model.text_model(input_ids=tok["input_ids"].to(self.device),
                                           attention_mask=tok["attention_mask"].to(self.device)).pooler_output
            return F.normalize(self.model.text_projection(pooled).float(), dim=-1).cpu()

    def clip_t(self, frames, prompt):
        """(F,) cosine of each frame with the prompt."""
        return self.image_features(frames) @ self.text_features([prompt])[0]

    def clip_i(self, frames, references):
        """(F,) mean cosine of each frame with the customization images."""
        return (self.image_features(frames) @ self.image_features(references).T).mean(1)

    def consistency(self, frames):
        """Mean cosine of consecutive frames' CLIP embeddings (the usual temporal-consistency score)."""
        e = self.image_features(frames)
        return 1.0 if e.shape[0] < 2 else (e[1:] * e[:-1]).sum(1).mean().item()


def score_video(frames, prompt="", references=None, clip=None, threshold=0.2):
    """Motion scores, plus CLIP-T (with a prompt), CLIP-I (with reference images) and CLIP
    consistency when a ``ClipScorer`` is given. Per-frame CLIP values under ``per_frame``."""
    out = motion_scores(frames, threshold)
    if clip is None:
        return out
    e = clip.image_features(frames)  # once: CLIP-L on many frames is the slow part
    out["clip_consistency"] = 1.0 if e.shape[0] < 2 else (e[1:] * e[:-1]).sum(1).mean().item()
    per_frame = {}
    if prompt:
        t = e @ clip.text_features([prompt])[0]
        out["clip_t"], per_frame["clip_t"] = t.mean().item(), t.tolist()
    if references is not None and len(references):
        i = (e @ clip.image_features(references).T).mean(1)
        out["clip_i"], per_frame["clip_i"] = i.mean().item(), i.tolist()
    out["per_frame"] = per_frame
    out["clip_model"] = Path(clip.path).name
    return out


def summary_line(scores):
    """One readable line of the headline scores."""
    keys = ("clip_t", "clip_i", "frame_difference", "subject_speed", "frame_correlation", "clip_consistency")
    parts = [f"{k} {scores[k]:.4f}" for k in keys if isinstance(scores.get(k), float)]
    if "direction" in scores:
        parts.append(f"direction {scores['direction']}")
    return ", ".join(parts)
