"""Scoring a video in the graph: motion scores, and CLIP-T / CLIP-I from a local CLIP model."""
import json

from ..adapters import scoring
from . import comfy_glue, paths
from .video_model_nodes import CATEGORY

NO_CLIP = "(none: motion scores only)"
_CACHE = {}  # folder -> ClipScorer: one CLIP model kept between runs


def _scorer(name):
    path = paths.clip_scoring_path(name)
    device = comfy_glue.device()
    key = (path, paths.stat_fingerprint(path), str(device))  # a rewritten folder is loaded again
    if key not in _CACHE:
        _CACHE.clear()
        _CACHE[key] = scoring.ClipScorer.load(path, device)
    return _CACHE[key]


class ScoreVideo:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "frames": ("IMAGE", {"tooltip": "The video's frames (e.g. the Still-Moving Sampler's frames)."}),
            "prompt": ("STRING", {"multiline": True, "default": "",
                                  "tooltip": "The prompt for CLIP-T (per-frame text-image similarity)."}),
            "clip_model": ([NO_CLIP] + paths.clip_scoring_folders(), {
                "tooltip": "A transformers CLIPModel folder under models/still_moving/clip_scoring/ (or "
                           "models/clip_vision/), e.g. a local copy of openai/clip-vit-large-patch14. "
                           "Nothing is downloaded."}),
            "mask_threshold": ("FLOAT", {"default": 0.2, "min": 0.01, "max": 1.0, "step": 0.01,
                                         "tooltip": "How far from the border's colour a pixel must be to count "
                                                    "as the subject (for the subject-motion scores)."}),
        }, "optional": {
            "references": ("IMAGE", {"tooltip": "The customization images, for CLIP-I."}),
        }}

    RETURN_TYPES = ("STRING", "FLOAT", "FLOAT", "FLOAT", "FLOAT", "FLOAT")
    RETURN_NAMES = ("scores_json", "clip_t", "clip_i", "frame_difference", "subject_speed", "consistency")
    OUTPUT_TOOLTIPS = ("All scores as JSON (per-frame CLIP values included).",
                       "Mean cosine of frames and prompt (0 without a CLIP model or prompt).",
                       "Mean cosine of frames and reference images (0 without a CLIP model or references).",
                       "Mean absolute change between consecutive frames (0 = frozen video).",
                       "Mean step of the subject's centroid, as a share of the frame.",
                       "CLIP cosine of consecutive frames with a CLIP model, else their pixel correlation.")
    FUNCTION = "score"
    CATEGORY = CATEGORY
    OUTPUT_NODE = True
    DESCRIPTION = ("Scores a video: amount of motion and temporal consistency, and with a local CLIP model "
                   "CLIP-T (prompt) and CLIP-I (customization images), as in the Still-Moving paper.")

    @classmethod
    def IS_CHANGED(cls, clip_model=None, **_):
        return "" if clip_model == NO_CLIP else paths.fingerprint("clip_scoring", clip_model)

    def score(self, frames, prompt, clip_model, mask_threshold, references=None):
        clip = None if clip_model == NO_CLIP else _scorer(clip_model)
        s = scoring.score_video(frames, prompt.strip(), references, clip, mask_threshold)
        text = json.dumps(s, indent=1)
        consistency = s.get("clip_consistency", s["frame_correlation"])
        out = (text, float(s.get("clip_t", 0.0)), float(s.get("clip_i", 0.0)), float(s["frame_difference"]),
               float(s["subject_speed"]), float(consistency))
        return {"ui": {"text": [scoring.summary_line(s)]}, "result": out}
