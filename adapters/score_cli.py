"""``python -m adapters.cli score``: the scoring node's numbers for video files, from a terminal.

    python -m adapters.cli score clip.mp4 [more videos or frame folders] --prompt "a sks dog running"
        [--clip models/still_moving/clip_scoring/clip-vit-large-patch14] [--references stills/]
        [--json scores.json]

Without ``--clip`` only the motion scores are computed. Nothing is downloaded.
"""
import json
import sys
from pathlib import Path


def add_parser(sub):
    p = sub.add_parser("score", help="motion scores, CLIP-T and CLIP-I of videos (a local CLIP model)")
    p.add_argument("videos", nargs="+", help="video files (.mp4, .gif, ...) or folders of frame images")
    p.add_argument("--prompt", default="", help="the prompt, for CLIP-T")
    p.add_argument("--clip", help="a transformers CLIPModel folder (save_pretrained); none: motion scores only")
    p.add_argument("--references", help="a folder of the customization images, for CLIP-I")
    p.add_argument("--frames", type=int, default=64, help="score at most this many frames per video")
    p.add_argument("--max-side", type=int, default=512, help="scale frames down to this longest side first")
    p.add_argument("--mask-threshold", type=float, default=0.2, help="subject mask: distance from the border colour")
    p.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda if available, else cpu)")
    p.add_argument("--json", help="also write every score (per-frame CLIP values included) here; "
                                  "an existing file is not overwritten (a numbered name is used)")
    return p


def read_video(path, frames, max_side):
    """(F, H, W, 3) in [0, 1] from a video file or a folder of frame images."""
    import torch

    from . import data
    from .errors import ModelFileError
    path = Path(path)
    if path.is_dir():
        kept = data.read_frame_folder(path, frames, 1, max_side)
    elif path.is_file() and path.suffix.lower() in data.VIDEO_EXTS:
        kept = data.decode_video(path, frames, 1, max_side)
    elif path.is_file() and path.suffix.lower() in data.IMAGE_EXTS:
        kept = [data.read_image(path, max_side)]
    else:
        raise ModelFileError(path, "not found." if not path.exists() else "is neither a video nor a frame folder.",
                             f"Give a {', '.join(data.VIDEO_EXTS)} file or a folder of frame images.")
    if not kept:
        raise ModelFileError(path, "has no frames.", "Give a video or a folder of frame images.")
    if any(f.shape != kept[0].shape for f in kept):
        raise ModelFileError(path, "the frames differ in size.", "Give frames of one size.")
    return torch.stack(kept)


def run(args):
    import torch

    from . import data, scoring
    from .files import unique_path, write_text
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    clip = scoring.ClipScorer.load(args.clip, device) if args.clip else None
    refs = None
    if args.references:
        refs = torch.cat([c.frames for c in data.load_image_folder(args.references, max_side=args.max_side)])
    if refs is not None and clip is None:
        print("note: --references needs --clip for CLIP-I; scoring motion only", file=sys.stderr)
    results = {}
    for v in args.videos:
        frames = read_video(v, args.frames, args.max_side)
        s = scoring.score_video(frames, args.prompt, refs, clip, args.mask_threshold)
        results[str(v)] = s
        print(f"{v}: {scoring.summary_line(s)}")
    if args.json:
        path = write_text(unique_path(args.json), json.dumps(results, indent=1))
        print(f"scores written to {path}")
    return 0
