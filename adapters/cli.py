"""Train the adapters from a terminal: the same training the ComfyUI nodes do, from a JSON config,
on one device or on several through accelerate (no launcher of our own).

    python -m adapters.cli train CONFIG.json [--device cpu|cuda|cuda:N] [--dry-run]
    accelerate launch --multi_gpu --num_processes 4 -m adapters.cli train CONFIG.json
    python -m adapters.cli score VIDEO... [--prompt P] [--clip DIR] [--references DIR]   (score_cli.py)
    python -m adapters.cli export spatial-lora|merged-checkpoint ADAPTER --checkpoint BASE --motion-module MM
                                  --inject CUSTOM [--lora LORA] --out FILE.safetensors [--strength S]
    python -m adapters.cli export motion-lora ADAPTER --alpha A --out FILE.safetensors
    python -m adapters.cli report --checkpoint BASE --motion-module MM --inject CUSTOM [--adapter SPATIAL]
                                  [--prompt P ...]   (report_cli.py: the injection report)
    python -m adapters.cli check --checkpoint BASE --motion-module MM [--inject CUSTOM] --motion-adapter MA
                                 [--prompt P ...]   (report_cli.py: does the Motion Adapter freeze it?)

Run it from the pack's folder. Paths in the config are relative to the config file; nothing is
downloaded. See training_configs/train_motion.json and training_configs/train_spatial.json; keys
starting with "_" are comments. ``settings`` takes any field of
``adapters.training.TrainSettings``; its ``mixed_precision`` decides autocast (CUDA only), not
accelerate's ``--mixed_precision``.

Several processes on the CPU: ``accelerate launch --cpu --num_processes N`` starts ONE process
(accelerate's simple launcher spreads CPU processes only through mpirun, ``--mpirun_hostfile``).
Use ``accelerate launch --multi_gpu --num_processes N ... --device cpu`` instead: torchrun starts
the processes and this CLI asks accelerate for the CPU, which then talks over gloo.
"""
import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

KINDS = ("motion", "spatial")
TOP_KEYS = {"kind", "checkpoint", "motion_module", "tokenizer", "inject", "motion_adapter", "videos", "stills",
            "width", "height", "out", "resume", "settings", "check"}
SPATIAL_ONLY = ("inject", "motion_adapter", "stills")
# after training, short videos at α = 0 and 1 show whether the Motion Adapter freezes video: kind
# "motion" the trained one on the base model (prompts default to the videos' captions), kind
# "spatial" the one trained against on the injected model (the stills' captions); false skips it
CHECK = {"prompts": (list, None), "seeds": (list, [1000, 1001]), "steps": (int, 10), "cfg": (float, 7.5),
         "frames": (int, None)}
# sub-key -> (type, default); a default of ... means required
VIDEOS = {"folder": (str, ...), "frames": (int, None), "stride": (int, 1), "caption": (str, ""),
          "max_side": (int, 1024)}
STILLS = {"folder": (str, ...), "caption": (str, ""), "max_side": (int, 1024)}
INJECT_CKPT = {"checkpoint": (str, ...), "weight": (float, 1.0)}
INJECT_LORA = {"lora": (str, ...), "strength": (float, 1.0), "strength_text": (float, None)}


class ConfigError(ValueError):
    """A config the CLI refuses before loading anything; the message starts with the config file."""

    def __init__(self, config, problem):
        super().__init__(f"{config}: {problem}")


# --- the config --------------------------------------------------------------------------------

def _typed(cfg, value, kind, where):
    """bool is an int in Python, and JSON has one number type: check what a user would mean."""
    if kind in (int, float):
        ok = isinstance(value, (int, float) if kind is float else int) and not isinstance(value, bool)
    else:
        ok = isinstance(value, kind)
    if not ok:
        what = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(kind, kind.__name__)
        raise ConfigError(cfg, f"{where} must be {what}, got {json.dumps(value)}.")
    return float(value) if kind is float else value


def _keys(cfg, d, allowed, where):
    if not isinstance(d, dict):
        raise ConfigError(cfg, f"{where} must be an object {{...}}, got {json.dumps(d)}.")
    unknown = sorted(k for k in d if k not in allowed and not k.startswith("_"))
    if unknown:
        raise ConfigError(cfg, f"unknown key{'s' * (len(unknown) > 1)} {', '.join(map(repr, unknown))} in {where}; "
                          f"allowed: {', '.join(sorted(allowed))}.")


def _section(cfg, d, schema, where):
    """A sub-object checked against ``schema``, with defaults filled in."""
    _keys(cfg, d, schema, where)
    out = {}
    for key, (kind, default) in schema.items():
        if d.get(key) is None:
            if default is ...:
                raise ConfigError(cfg, f"{where} needs '{key}'.")
            out[key] = default
        else:
            out[key] = _typed(cfg, d[key], kind, f"{where}.{key}")
    return out


def _check_section(cfg, d, interleaved):
    if d is False or interleaved:
        if d not in (None, False):
            raise ConfigError(cfg, "'check' needs a Motion Adapter, which an interleaved run does not train "
                                   "with: leave 'check' out.")
        return None
    sec = _section(cfg, d or {}, CHECK, "check")
    for key, item in (("prompts", str), ("seeds", int)):
        for i, v in enumerate(sec[key] or []):
            _typed(cfg, v, item, f"check.{key}[{i}]")
    if sec["seeds"] == [] or sec["prompts"] == []:
        raise ConfigError(cfg, "check.prompts and check.seeds may not be empty lists (leave a key out for its default).")
    return sec


def _path(cfg, value, where, need="file"):
    """A path from the config, relative to the config's folder, that must exist as ``need``
    (file, dir, any: a file or a diffusers folder; None: may not exist yet)."""
    _typed(cfg, value, str, where)
    p = Path(value).expanduser()
    p = Path(os.path.normpath(p if p.is_absolute() else cfg.parent / p))
    if need and not p.exists():
        raise ConfigError(cfg, f"{where} {value!r} not found (looked for {p}).")
    if need == "file" and not p.is_file() or need == "dir" and not p.is_dir():
        raise ConfigError(cfg, f"{where} {value!r} must be a {'folder' if need == 'dir' else 'file'} ({p}).")
    return p


def _settings(cfg, d):
    from .lowrank import SPATIAL_TARGETS
    from .training import TrainSettings
    fields = {f.name: type(f.default) for f in dataclasses.fields(TrainSettings)}
    _keys(cfg, d, fields, "settings")
    s = TrainSettings.from_inputs({k: _typed(cfg, v, fields[k], f"settings.{k}") for k, v in d.items()
                                   if not k.startswith("_")})
    try:
        s.validate()
    except ValueError as e:
        raise ConfigError(cfg, f"settings: {e}") from None
    if s.target_mode not in SPATIAL_TARGETS:
        raise ConfigError(cfg, f"settings.target_mode must be one of {', '.join(SPATIAL_TARGETS)}, "
                          f"got {s.target_mode!r}.")
    return s


def _count(folder, exts, subfolders=False):
    return sum(1 for p in folder.iterdir() if not p.name.startswith(".")
               and (p.is_file() and p.suffix.lower() in exts or subfolders and p.is_dir()))


def read_config(path):
    """The validated job: resolved paths, TrainSettings, data sections with defaults. Reads no
    model, image or video, so a wrong key fails in a second and not after minutes of loading."""
    from .data import IMAGE_EXTS, VIDEO_EXTS
    cfg = Path(path).resolve()
    if not cfg.is_file():
        raise ConfigError(cfg, "config file not found.")
    try:
        raw = json.loads(cfg.read_text(encoding="utf-8"))
    except ValueError as e:
        raise ConfigError(cfg, f"not valid JSON ({e}).") from None
    _keys(cfg, raw, TOP_KEYS, "the config")
    kind = raw.get("kind")
    if kind not in KINDS:
        raise ConfigError(cfg, f"'kind' must be \"motion\" or \"spatial\", got {json.dumps(kind)}.")
    settings = _settings(cfg, raw.get("settings") or {})
    needed = ["checkpoint", "motion_module", "out"] + (["videos"] if kind == "motion" else ["stills", "inject"])
    if kind == "spatial" and not settings.interleaved:
        needed.append("motion_adapter")
    missing = [k for k in needed if raw.get(k) in (None, "", [])]
    if missing:
        raise ConfigError(cfg, f"missing {', '.join(map(repr, missing))} (required for kind \"{kind}\").")
    if kind == "motion" and any(raw.get(k) is not None for k in SPATIAL_ONLY):
        wrong = [k for k in SPATIAL_ONLY if raw.get(k) is not None]
        raise ConfigError(cfg, f"{', '.join(map(repr, wrong))} only apply to kind \"spatial\": the Motion Adapter "
                          "trains on the plain (non-customized) video model.")
    job = {"config": cfg, "kind": kind, "settings": settings,
           "check": _check_section(cfg, raw.get("check"), settings.interleaved),
           "checkpoint": _path(cfg, raw["checkpoint"], "checkpoint", "any"),
           "motion_module": _path(cfg, raw["motion_module"], "motion_module", "any"),
           "out": _path(cfg, raw["out"], "out", None),
           "resume": _path(cfg, raw["resume"], "resume") if raw.get("resume") else None,
           "motion_adapter": _path(cfg, raw["motion_adapter"], "motion_adapter") if raw.get("motion_adapter") else None,
           "tokenizer": _path(cfg, raw["tokenizer"], "tokenizer", "dir") if raw.get("tokenizer") else None,
           "width": _typed(cfg, raw.get("width", 256), int, "width"),
           "height": _typed(cfg, raw.get("height", 256), int, "height")}
    if job["width"] % 8 or job["height"] % 8 or min(job["width"], job["height"]) <= 0:
        raise ConfigError(cfg, f"width and height must be positive multiples of 8, got {job['width']}x{job['height']}.")
    if job["tokenizer"] and not all((job["tokenizer"] / f).is_file() for f in ("vocab.json", "merges.txt")):
        raise ConfigError(cfg, f"tokenizer folder {job['tokenizer']} needs vocab.json and merges.txt.")
    if job["out"].suffix != ".safetensors":
        raise ConfigError(cfg, f"out must end in .safetensors, got {raw['out']!r}.")
    items = raw.get("inject") or []
    job["inject"] = []
    for i, item in enumerate(items if isinstance(items, list) else [items]):
        where = f"inject[{i}]" if isinstance(items, list) else "inject"
        lora = isinstance(item, dict) and "lora" in item
        sec = _section(cfg, item, INJECT_LORA if lora else INJECT_CKPT, where)
        key = "lora" if lora else "checkpoint"
        sec["path"] = _path(cfg, sec.pop(key), f"{where}.{key}", "file" if lora else "any")
        sec["lora"] = lora
        if not lora and not 0 <= sec["weight"] <= 1:
            raise ConfigError(cfg, f"{where}.weight must be in [0, 1] (1: replace, less: interpolate).")
        job["inject"].append(sec)
    for key, schema, exts in (("videos", VIDEOS, VIDEO_EXTS), ("stills", STILLS, IMAGE_EXTS)):
        if raw.get(key) is None:
            job[key] = None
            continue
        sec = _section(cfg, raw[key], schema, key)
        sec["folder"] = _path(cfg, sec["folder"], f"{key}.folder", "dir")
        if not _count(sec["folder"], exts, subfolders=key == "videos"):
            raise ConfigError(cfg, f"{key}.folder {sec['folder']} holds no {'videos' if key == 'videos' else 'images'} "
                              f"({', '.join(exts)}).")
        if key == "videos":
            sec["frames"] = sec["frames"] or max(2, settings.frames)
            if sec["frames"] < 2 or sec["stride"] < 1:
                raise ConfigError(cfg, "videos.frames must be at least 2 and videos.stride at least 1.")
        sec["max_side"] = sec["max_side"] or None  # 0: keep the files' size
        job[key] = sec
    if job["motion_adapter"]:
        from .files import read_metadata
        meta_kind = read_metadata(job["motion_adapter"]).get("kind")
        if meta_kind != "motion":
            raise ConfigError(cfg, f"motion_adapter {job['motion_adapter']} is not a Motion Adapter file "
                              f"(kind {meta_kind!r}).")
    return job


# --- running -------------------------------------------------------------------------------------

def _device(name):
    import torch
    try:
        return torch.device(name or ("cuda" if torch.cuda.is_available() else "cpu"))
    except RuntimeError:
        raise ValueError(f"--device {name!r} is not a device; use cpu, cuda or cuda:N.") from None


def make_accelerator(device, mixed_precision):
    """An Accelerator on ``device`` (default: CUDA if there is one). Under accelerate launch it
    gives each process its own GPU (or gloo on the CPU); alone it is a plain single device."""
    import torch
    from accelerate import Accelerator
    device = _device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA GPU is visible to PyTorch here; use --device cpu.")
    if device.type == "cuda" and device.index is not None:
        torch.cuda.set_device(device.index)  # one process; under accelerate launch pick GPUs with --gpu_ids
    cpu = device.type == "cpu"
    if cpu and os.environ.get("ACCELERATE_USE_CPU") == "True" and "MASTER_ADDR" in os.environ and not any(
            k in os.environ for k in ("WORLD_SIZE", "LOCAL_RANK", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE")):
        print("note: `accelerate launch --cpu --num_processes N` starts a single process without mpirun; for N CPU "
              "processes use `accelerate launch --multi_gpu --num_processes N -m adapters.cli train ... --device cpu`.",
              file=sys.stderr)
    return Accelerator(cpu=cpu, mixed_precision=mixed_precision if device.type == "cuda" else "no")


def _load(job, say):
    """The video model (injected for spatial), the Motion Adapter, and the clips as pixels."""
    from . import data, inject, loading
    from .lowrank import LowRankAdapter
    say(f"loading {job['checkpoint'].name} + {job['motion_module'].name}")
    model = loading.load_video_model(job["checkpoint"], job["motion_module"],
                                     tokenizer_dirs=[job["tokenizer"]] if job["tokenizer"] else ())
    for item in job["inject"]:
        say(f"injecting {item['path'].name}")
        if item["lora"]:
            text = item["strength"] if item["strength_text"] is None else item["strength_text"]
            model = inject.inject_lora(model, item["path"], item["strength"], text)
        else:
            model = inject.inject_checkpoint(model, item["path"], item["weight"])
    motion = None
    if job["motion_adapter"]:
        motion = LowRankAdapter.load(job["motion_adapter"], "motion")
        motion.check(model, job["motion_adapter"])
    v, st = job["videos"], job["stills"]
    videos = data.load_video_folder(v["folder"], v["frames"], v["stride"], v["caption"], v["max_side"]) if v else []
    stills = data.load_image_folder(st["folder"], st["caption"], st["max_side"]) if st else []
    custom, prior = (videos, []) if job["kind"] == "motion" else (stills, videos)
    return model, motion, custom, prior


def train(job, device=None):
    """Run one config; returns the process exit code (0, or 130 after Ctrl-C)."""
    from tqdm import tqdm
    from . import training
    from .files import read_metadata, unique_path
    s = job["settings"]
    acc = make_accelerator(device, s.mixed_precision)
    main = acc.is_main_process

    def say(msg):
        if main:
            print(msg, flush=True)
    say(f"{job['kind']} adapter: {s.steps} steps on {acc.device}"
        + (f", {acc.num_processes} processes (batch {s.batch} each)" if acc.num_processes > 1 else ""))
    # every process computes the same name before any process can write it (steps synchronise)
    path = job["resume"] or unique_path(job["out"])
    start = int(read_metadata(path).get("step", 0)) if job["resume"] else 0
    done = {"step": start}
    bar = None

    def progress(step, total, loss, source):  # called on the main process only
        done["step"] = step
        bar.set_postfix_str(f"loss {loss:.4f} ({source})", refresh=False)
        bar.update(step - bar.n)

    t0 = time.time()
    try:
        model, motion, custom, prior = _load(job, say)
        if job["kind"] == "spatial" and not prior:
            say("note: no 'videos' given, so no prior preservation (paper §3.3): training on the stills only.")
        with model.on_device(acc.device):
            say(f"encoding {len(custom) + len(prior)} clips at {job['width']}x{job['height']}")
            bar = tqdm(total=s.steps, initial=start, unit="step", disable=not main, dynamic_ncols=True)
            result = training.train_on_clips(model, job["kind"], s, path, custom, prior, width=job["width"],
                                             height=job["height"], motion_adapter=motion, resume=job["resume"],
                                             callback=progress, metadata={"processes": acc.num_processes},
                                             accelerator=acc)
            bar.close()
            last = [loss for _, loss, _ in result.losses[-10:]]
            say(f"saved {result.path}\n  steps {result.step}, {result.seconds:.1f} s training ({time.time() - t0:.1f} s "
                f"with loading), mean loss of the last {len(last)} steps {sum(last) / max(1, len(last)):.5f}")
            if job["check"] and main:  # while the model is still on the device
                say(_freeze_check(job, model, result.adapter if motion is None else motion, custom,
                                  acc.device).summary())
    except KeyboardInterrupt:
        if bar is not None:
            bar.close()
        if main:
            saved = f"what was trained is saved in {path}; set \"resume\": \"{path}\" in {job['config']} to go on." \
                if path.exists() else "nothing was saved."
            print(f"\ninterrupted at step {done['step']}: {saved}", file=sys.stderr)
        return 130
    return 0


def _freeze_check(job, model, adapter, clips, device):
    """The Motion Adapter's freeze check on the config's prompts (default: the training clips'
    captions), with ``model`` already on ``device``."""
    from .motion_adapter import check_freezes
    c = job["check"]
    prompts = c["prompts"] or list(dict.fromkeys(v.caption for v in clips))[:2]
    return check_freezes(model, adapter, prompts, seeds=c["seeds"], steps=c["steps"], cfg=c["cfg"],
                         width=job["width"], height=job["height"], frames=c["frames"] or job["settings"].frames,
                         device=device)


def dry_run(job, device=None):
    """What a run would do, from the config alone."""
    from .files import unique_path
    s = job["settings"]
    print(f"config OK: {job['config']}")
    print(f"  {job['kind']} adapter, {s.steps} steps, rank {s.rank}, lr {s.learning_rate}, batch {s.batch}, "
          f"{s.frames} frames at {job['width']}x{job['height']}")
    print(f"  model: {job['checkpoint']} + {job['motion_module']}")
    for item in job["inject"]:
        print(f"  inject: {item['path']}")
    for key in ("motion_adapter", "resume"):
        if job[key]:
            print(f"  {key}: {job[key]}")
    for key in ("videos", "stills"):
        if job[key]:
            print(f"  {key}: {job[key]['folder']}")
    print(f"  out: {job['resume'] or unique_path(job['out'])}")
    print(f"  device: {_device(device)} (nothing loaded: dry run)")
    return 0


# --- exports ---------------------------------------------------------------------------------------

EXPORTS = {"spatial-lora": "Spatial Adapters as a kohya LoRA for the customized model (ComfyUI's Load LoRA)",
           "merged-checkpoint": "the customized checkpoint with the Spatial Adapters folded in (SD1.5 single file)",
           "motion-lora": "a Motion Adapter or temporal LoRA as an AnimateDiff MotionLoRA, alpha baked in"}


def add_export_parser(sub):
    e = sub.add_parser("export", help="write a trained adapter in a layout other tools load (LoRA, MotionLoRA, "
                                      "merged checkpoint)")
    e.add_argument("what", choices=list(EXPORTS), help="; ".join(f"{k}: {v}" for k, v in EXPORTS.items()))
    e.add_argument("adapter", help="the adapter file (.safetensors written by this pack)")
    e.add_argument("--out", required=True, help="the file to write (.safetensors); an existing file is never replaced")
    e.add_argument("--checkpoint", help="spatial exports: the base SD1.5 checkpoint the video model was built from")
    e.add_argument("--motion-module", help="spatial exports: the AnimateDiff motion module the adapters trained with")
    e.add_argument("--inject", action="append", default=[],
                   help="spatial exports: the customized checkpoint (file or diffusers folder) injected for training; "
                        "repeat in the order they were injected")
    e.add_argument("--lora", action="append", default=[],
                   help="spatial exports: an image LoRA injected (strength 1) after the checkpoints; repeatable")
    e.add_argument("--strength", type=float, default=1.0, help="spatial exports: the adapter strength baked in")
    e.add_argument("--alpha", type=float, help="motion-lora: the motion scale baked in (0 none, 1 static, < 0 more)")
    e.add_argument("--dtype", choices=["fp32", "fp16", "bf16"],
                   help="tensor type in the file (default: fp32 for spatial-lora, fp16 otherwise)")


def export(args):
    """One export from the command line; the same library calls as the export nodes."""
    from . import export as ex
    from .lowrank import LowRankAdapter
    out = Path(args.out).expanduser()
    if out.suffix != ".safetensors":
        raise ValueError(f"--out must end in .safetensors, got {args.out!r}.")
    if out.exists():
        raise FileExistsError(f"{out} already exists; refusing to overwrite it. Choose another --out.")
    adapter_path = Path(args.adapter).expanduser()
    dtype = args.dtype or ("fp32" if args.what == "spatial-lora" else "fp16")
    if args.what == "motion-lora":
        if args.alpha is None:
            raise ValueError("motion-lora needs --alpha (the motion scale to bake in, e.g. -0.3).")
        adapter = LowRankAdapter.load(adapter_path)
        path = ex.export_motion_lora(adapter, out, args.alpha, adapter_path, dtype)
    else:
        missing = [f"--{k.replace('_', '-')}" for k in ("checkpoint", "motion_module", "inject") if not getattr(args, k)]
        if missing:
            raise ValueError(f"{args.what} needs {', '.join(missing)}: the video model the Spatial Adapters were "
                             "trained in (base checkpoint, motion module, the customized checkpoint injected).")
        from . import inject, loading
        adapter = LowRankAdapter.load(adapter_path, "spatial")
        model = loading.load_video_model(args.checkpoint, args.motion_module)
        for item in args.inject:
            model = inject.inject_checkpoint(model, item)
        for item in args.lora:
            model = inject.inject_lora(model, item)
        write = ex.export_spatial_lora if args.what == "spatial-lora" else ex.export_merged_checkpoint
        path = write(model, adapter, out, args.strength, adapter_path, dtype)
    print(f"wrote {path}")
    return 0


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m adapters.cli", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train a Motion Adapter or Spatial Adapters from a JSON config")
    t.add_argument("config", help="the JSON config (see training_configs/train_motion.json)")
    t.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda if available, else cpu)")
    t.add_argument("--dry-run", action="store_true", help="check the config and the files it names; load nothing")
    from . import score_cli
    score_cli.add_parser(sub)
    add_export_parser(sub)
    from . import report_cli
    report_cli.add_parser(sub)
    report_cli.add_check_parser(sub)
    args = parser.parse_args(argv)
    from .errors import ModelFileError
    try:
        if args.command == "score":
            return score_cli.run(args)
        if args.command == "export":
            return export(args)
        if args.command == "report":
            return report_cli.run(args)
        if args.command == "check":
            return report_cli.run_check(args)
        job = read_config(args.config)
        return dry_run(job, args.device) if args.dry_run else train(job, args.device)
    except (ConfigError, ModelFileError, FileExistsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except ValueError as e:  # settings or data the library refused
        print(f"error ({getattr(args, 'config', None) or args.command}): {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
