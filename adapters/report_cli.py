"""The checks to run before training, from a terminal: ``report`` (the injection report node's
table) and ``check`` (the Motion Adapter Check node's freeze check).

    python -m adapters.cli report --checkpoint BASE --motion-module MM --inject CUSTOM [--weight W]
        [--lora LORA] [--adapter SPATIAL.safetensors] [--strength S] [--prompt P ...]
        [--seed N] [--timesteps 999,700,400] [--frames 8] [--width 512 --height 512] [--json OUT]
    python -m adapters.cli check --checkpoint BASE --motion-module MM [--inject CUSTOM] --motion-adapter MA
        [--prompt P ...] [--seed 1000] [--videos-per-prompt 2] [--steps 10] [--cfg 7.5]
        [--frames 16] [--width 256 --height 256]

Both build the video model as the training CLI does (base checkpoint + motion module, the
customized checkpoints and LoRAs injected in order). ``report`` prints how far the customization
moves the features entering the temporal layers, per block; with ``--adapter``, how much of it
the Spatial Adapters close. ``check`` samples each prompt at α = 0 and α = 1 and says whether the
Motion Adapter freezes this model's videos, as Train Spatial Adapters assumes. Nothing is downloaded.
"""
import json
import sys
from pathlib import Path


def _model_arguments(p):
    p.add_argument("--checkpoint", required=True, help="the base SD1.5 checkpoint (file or diffusers folder)")
    p.add_argument("--motion-module", required=True, help="the AnimateDiff motion module")
    p.add_argument("--inject", action="append", default=[], help="a customized checkpoint to inject; repeatable")
    p.add_argument("--weight", type=float, default=1.0,
                   help="interpolation weight of the injected checkpoints (1: naive injection)")
    p.add_argument("--lora", action="append", default=[], help="an image LoRA injected after the checkpoints")
    p.add_argument("--lora-strength", type=float, default=1.0, help="the LoRAs' strength")
    p.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda if available, else cpu)")


def _model(args):
    """The video model the arguments name, and the device to use."""
    import torch

    from . import inject, loading
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model = loading.load_video_model(Path(args.checkpoint).expanduser(), Path(args.motion_module).expanduser())
    for item in args.inject:
        model = inject.inject_checkpoint(model, Path(item).expanduser(), weight=args.weight)
    for item in args.lora:
        model = inject.inject_lora(model, Path(item).expanduser(), args.lora_strength, args.lora_strength)
    return model, device


def add_check_parser(sub):
    p = sub.add_parser("check", help="does a Motion Adapter freeze this (customized) video model's videos, as "
                                     "Train Spatial Adapters assumes? samples each prompt at α = 0 and α = 1")
    _model_arguments(p)
    p.add_argument("--motion-adapter", required=True, help="the Motion Adapter (.safetensors) to check")
    p.add_argument("--prompt", action="append", default=[],
                   help="a prompt (repeatable): the captions of your customized stills")
    p.add_argument("--seed", type=int, default=1000, help="first seed; each prompt gets --videos-per-prompt seeds")
    p.add_argument("--videos-per-prompt", type=int, default=2)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--cfg", type=float, default=7.5)
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--width", type=int, default=256)
    p.add_argument("--height", type=int, default=256)
    return p


def run_check(args):
    from .motion_adapter import MotionAdapter, check_freezes
    if args.videos_per_prompt < 1 or args.steps < 1:
        raise ValueError("--videos-per-prompt and --steps must be at least 1.")
    path = Path(args.motion_adapter).expanduser()
    adapter = MotionAdapter.load(path)
    model, device = _model(args)
    adapter.check(model, path)  # as the training CLI does: a file that does not fit is named
    with model.on_device(device):
        result = check_freezes(model, adapter, args.prompt or [""], device=device, steps=args.steps, cfg=args.cfg,
                               seeds=tuple(range(args.seed, args.seed + args.videos_per_prompt)),
                               width=args.width, height=args.height, frames=args.frames)
    print(result.summary())
    return 0


def add_parser(sub):
    p = sub.add_parser("report", help="how far a customized model moves what the temporal layers read (and how much "
                                      "Spatial Adapters close), per block; no video is sampled")
    _model_arguments(p)
    p.add_argument("--adapter", help="Spatial Adapters (.safetensors) trained for this customization")
    p.add_argument("--strength", type=float, default=1.0, help="the Spatial Adapters' strength")
    p.add_argument("--prompt", action="append", default=[],
                   help="a prompt (repeatable); include the customization's trigger word")
    p.add_argument("--seed", type=int, default=0, help="the noise the models are compared on")
    p.add_argument("--timesteps", default="999,700,400", help="noise levels, comma-separated, 0 to 999")
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--width", type=int, default=512)
    p.add_argument("--height", type=int, default=512)
    p.add_argument("--json", help="also write every figure here; an existing file is not overwritten (a numbered "
                                  "name is used)")
    return p


def timesteps(text):
    try:
        return [int(t) for t in text.replace(" ", "").split(",") if t]
    except ValueError:
        raise ValueError(f"--timesteps {text!r}: give whole numbers separated by commas, e.g. 999,700,400.") from None


def run(args):
    from .files import unique_path, write_text
    from .injection_report import injection_report
    ts = timesteps(args.timesteps)
    adapters = None
    if args.adapter:
        from .spatial_adapters import SpatialAdapters
        adapters = SpatialAdapters.load(Path(args.adapter).expanduser())
    model, device = _model(args)
    with model.on_device(device):
        rep = injection_report(model, adapters=adapters, strength=args.strength, prompts=args.prompt or [""],
                               seed=args.seed, timesteps=ts, frames=args.frames, width=args.width,
                               height=args.height, device=device)
    print(rep.text())
    if args.json:
        path = write_text(unique_path(Path(args.json).expanduser()), json.dumps(rep.as_dict(), indent=1))
        print(f"wrote {path}", file=sys.stderr)
    return 0
