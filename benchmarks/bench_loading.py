"""Loading an SD1.5 checkpoint + AnimateDiff v2 motion module: ours vs ComfyUI's own loader.

Every measurement is a fresh ``python`` process that imports what it needs first (not timed),
then times one load and reports its wall time and peak RSS (``getrusage(RUSAGE_SELF).ru_maxrss``,
which includes the ~0.4 GiB of torch & co. already resident before the load; the RSS growth
over that is printed too). The files are read once beforehand so every run reads from the page
cache.

safetensors hands out tensors that are views of the mmapped file: a loader that keeps them
(ours does) returns before any weight is in memory, and the first sampling step pages them in.
So after the load call each child reads every weight once ("touch") and the headline numbers
are "ready": load + touch time, and the peak RSS after the touch (file-backed pages included:
they are page cache shared with the OS, but they are resident). Variants:

* ``comfy``       ``comfy.sd.load_checkpoint_guess_config(ckpt, output_vae=True, output_clip=True,
                  embedding_directory=None)`` -- the reference (CheckpointLoaderSimple). It loads
                  the checkpoint only: AnimateDiff-Evolved loads the motion module separately
                  (1.7 GiB more in fp32).
* ``comfy+mm``    the above plus ``comfy.utils.load_torch_file(motion module)`` kept in memory:
                  a lower bound for ComfyUI + ADE (ADE also builds its motion model from it).
* ``comfy-read``  ``comfy.utils.load_torch_file`` of both files, nothing built: the default
                  reference at tiny size, where ComfyUI's model detection rejects the toy shapes.
* ``ours``        ``adapters.loading.load_video_model(ckpt, mm)``: the UNetMotionModel with the
                  motion module, VAE, text encoder, tokenizer -- what the pack's loader node does.
* ``ours-ckpt``   checkpoint only: ``read_checkpoint`` + ``build_vae`` + ``build_text_encoder`` +
                  tokenizer, the UNet kept as its (renamed) tensors; comparable to ``comfy``.

    python benchmarks/bench_loading.py                 # tiny files, < 1 min
    python benchmarks/bench_loading.py --size real     # real SD1.5 / v2 sizes, fp32 (~3 min)
"""
import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks import _common  # noqa: E402

VARIANTS = ("comfy", "ours", "ours-ckpt", "comfy+mm", "comfy-read")
# ComfyUI detects SD1.5 by its exact architecture, so it cannot load the tiny files: at tiny size
# the reference is its file reader alone (comfy-read), which exercises the same plumbing.
DEFAULT_VARIANTS = {"tiny": ("comfy-read", "ours", "ours-ckpt"), "real": ("comfy", "ours", "ours-ckpt", "comfy+mm")}
DEFAULT_REPEATS = {"tiny": 1, "real": 2}


def _tensors(obj, seen):
    """Every tensor reachable from what a loader returned (modules, dicts, ComfyUI wrappers)."""
    import torch
    if id(obj) in seen or obj is None:
        return
    seen.add(id(obj))
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, torch.nn.Module):
        for t in list(obj.parameters()) + list(obj.buffers()):
            yield from _tensors(t, seen)
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _tensors(v, seen)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from _tensors(v, seen)
    else:  # VideoModel, ComfyUI ModelPatcher / CLIP / VAE
        for attr in ("unet", "vae", "text_encoder", "model", "patcher", "cond_stage_model", "first_stage_model"):
            yield from _tensors(getattr(obj, attr, None), seen)


def touch(held):
    """Read every weight once. safetensors hands out tensors that are views of the mmapped file,
    so a loader that keeps them returns before the weights are in memory; the first sampling
    step would page them in. Timing this makes 'ready to sample' comparable across loaders."""
    total = 0
    n = 0
    for t in _tensors(held, set()):
        if t.numel():
            total += float(t.float().sum()) if not t.is_floating_point() else float(t.sum())
            n += t.numel() * t.element_size()
    return n


def child(variant, ckpt, mm, size):
    """Runs in the fresh process: import, then time exactly one load."""
    import gc
    import os
    t_import = time.perf_counter()
    if variant.startswith("comfy"):
        comfy_dir = str(_common.comfyui_path())
        sys.path.insert(0, comfy_dir)
        os.chdir(comfy_dir)
        import comfy.options  # noqa: F401
        from comfy.cli_args import args
        args.cpu = True
        import comfy.model_management  # noqa: F401
        import comfy.sd
        import comfy.utils
    else:
        import torch
        from diffusers import AutoencoderKL, UNetMotionModel  # noqa: F401
        from transformers import CLIPTextModel, CLIPTokenizer  # noqa: F401

        from adapters import loading
        tok_dirs = [_common.sd1_tokenizer_dir()] if size == "real" else []
    import_s = time.perf_counter() - t_import
    gc.collect()
    rss_before = _common.proc_status("VmRSS")

    t = time.perf_counter()
    if variant == "comfy-read":
        held = [comfy.utils.load_torch_file(str(ckpt), safe_load=True),
                comfy.utils.load_torch_file(str(mm), safe_load=True)]
    elif variant.startswith("comfy"):
        out = comfy.sd.load_checkpoint_guess_config(str(ckpt), output_vae=True, output_clip=True,
                                                    embedding_directory=None)
        held = [out]
        if variant == "comfy+mm":
            held.append(comfy.utils.load_torch_file(str(mm), safe_load=True))
    elif variant == "ours":
        held = [loading.load_video_model(ckpt, mm, torch.float32, tokenizer_dirs=tok_dirs)]
    else:
        parts = loading.read_checkpoint(ckpt, torch.float32)
        vae = loading.build_vae(parts.pop("vae"), parts["vae_config"], torch.float32, ckpt)
        te = loading.build_text_encoder(parts.pop("clip"), parts["clip_config"], torch.float32, ckpt)
        tok = loading.load_tokenizer(parts["clip_config"]["vocab_size"], tok_dirs)
        held = [parts["unet"], vae, te, tok]
    load_s = time.perf_counter() - t
    after_load = {"rss": _common.proc_status("VmRSS"), "anon": _common.proc_status("RssAnon"),
                  "file": _common.proc_status("RssFile"), "peak": _common.peak_rss()}
    t = time.perf_counter()
    nbytes = touch(held)
    touch_s = time.perf_counter() - t
    _common.emit({"variant": variant, "import_s": import_s, "load_s": load_s, "touch_s": touch_s,
                  "ready_s": load_s + touch_s, "bytes": nbytes, "rss_before": rss_before,
                  "after_load": after_load, "rss_after": _common.proc_status("VmRSS"),
                  "anon_after": _common.proc_status("RssAnon"), "file_after": _common.proc_status("RssFile"),
                  "peak": _common.peak_rss(), "hwm": _common.proc_status("VmHWM")})
    del held


def parse():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", choices=_common.SIZES, default="tiny")
    ap.add_argument("--repeats", type=int, help="fresh processes per variant (tiny 1, real 2)")
    ap.add_argument("--variants", help=f"comma-separated subset of {VARIANTS} "
                    f"(tiny: {','.join(DEFAULT_VARIANTS['tiny'])}; real: {','.join(DEFAULT_VARIANTS['real'])})")
    ap.add_argument("--child", nargs=4, metavar=("VARIANT", "CKPT", "MM", "SIZE"), help=argparse.SUPPRESS)
    return ap.parse_args()


def main():
    a = parse()
    if a.child:
        child(*a.child)
        return 0
    variants = [v for v in (a.variants or ",".join(DEFAULT_VARIANTS[a.size])).split(",") if v]
    unknown = set(variants) - set(VARIANTS)
    if unknown:
        sys.exit(f"unknown variants {sorted(unknown)}; choose from {VARIANTS}")
    a.repeats = a.repeats or DEFAULT_REPEATS[a.size]
    ckpt, mm = _common.ensure_model_files(a.size)
    print(f"size={a.size}: {ckpt.name} {ckpt.stat().st_size / _common.GIB:.2f} GiB, "
          f"{mm.name} {mm.stat().st_size / _common.GIB:.2f} GiB (fp32, random weights, real key layouts); "
          f"MemAvailable {_common.gib(_common.mem_available())}", flush=True)
    _common.warm_page_cache(ckpt, mm)
    me = str(Path(__file__).resolve())
    runs = {v: [] for v in variants}
    failed = {}
    for r in range(a.repeats):
        order = variants if r % 2 == 0 else list(reversed(variants))
        for v in order:
            if v in failed:
                continue
            try:
                res, _ = _common.run_child([me, "--child", v, str(ckpt), str(mm), a.size], cwd=str(_common.REPO))
            except RuntimeError as e:
                failed[v] = str(e)
                last = [ln for ln in str(e).splitlines() if ln.strip()][-1]
                print(f"  run {r + 1} {v:10s} FAILED: {last[:300]}", flush=True)
                continue
            runs[v].append(res)
            al = res["after_load"]
            print(f"  run {r + 1} {v:10s} load {res['load_s']:6.2f} s (peak {_common.gib(al['peak'])}, "
                  f"RSS {_common.gib(al['rss'])} of which file-backed {_common.gib(al['file'])}) | "
                  f"+ touch {res['bytes'] / _common.GIB:.2f} GiB of weights {res['touch_s']:5.2f} s -> "
                  f"ready {res['ready_s']:6.2f} s, peak {_common.gib(res['peak'])}, "
                  f"RSS {_common.gib(res['rss_after'])} (anon {_common.gib(res['anon_after'])}, "
                  f"file {_common.gib(res['file_after'])}) | imports {res['import_s']:.1f} s", flush=True)

    summary = {}
    print(f"\nmedians of {a.repeats}:")
    for v, rs in runs.items():
        if not rs:
            continue
        med = lambda f: _common.median([f(x) for x in rs])  # noqa: E731
        s = summary[v] = {"load_s": med(lambda x: x["load_s"]), "ready_s": med(lambda x: x["ready_s"]),
                          "peak_load": med(lambda x: x["after_load"]["peak"]),
                          "peak": med(lambda x: x["peak"]),
                          "grow": med(lambda x: x["peak"] - x["rss_before"])}
        print(f"  {v:10s} load {s['load_s']:6.2f} s, peak {_common.gib(s['peak_load'])} | ready (weights read) "
              f"{s['ready_s']:6.2f} s, peak {_common.gib(s['peak'])}, "
              f"growth over pre-load RSS {_common.gib(s['grow'])}")
    pairs = [("ours", "comfy", "ours incl. motion module / ComfyUI checkpoint only"),
             ("ours-ckpt", "comfy", "ours checkpoint only / ComfyUI checkpoint only"),
             ("ours", "comfy+mm", "ours incl. motion module / ComfyUI ckpt + motion-module file"),
             ("ours", "comfy-read", "ours incl. motion module / ComfyUI reading both files")]
    for ours, ref, label in pairs:
        if ours in summary and ref in summary:
            o, c = summary[ours], summary[ref]
            print(f"RATIO {label}: ready time {o['ready_s'] / c['ready_s']:.2f}x, "
                  f"peak RSS {o['peak'] / c['peak']:.2f}x (load call alone: time {o['load_s'] / c['load_s']:.2f}x, "
                  f"peak {o['peak_load'] / c['peak_load']:.2f}x)")
    return 1 if any(v.startswith("ours") for v in failed) else 0


if __name__ == "__main__":
    sys.exit(main())
