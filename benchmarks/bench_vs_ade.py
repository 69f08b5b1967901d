"""The same text-to-video inside one ComfyUI: AnimateDiff-Evolved (the reference) vs this pack's
nodes, on the same real-size random-weight files and settings, each in a fresh process.

    ade   CheckpointLoaderSimple -> ADE_AnimateDiffLoaderGen1 (beta "sqrt_linear (AnimateDiff)")
          -> CLIPTextEncode x2 -> EmptyLatentImage (batch = frames) -> KSampler (euler, normal)
          -> VAEDecode
    ours  SM_LoadVideoModel (dtype = --dtype) -> SM_SampleVideo (euler, beta "linear", no context
          windows; decodes inside the node)

"sqrt_linear" in ComfyUI/ADE is diffusers' "linear" (betas spaced linearly, AnimateDiff's
training schedule), which is what the pack's "linear" is; ComfyUI's "normal" scheduler spaces
the timesteps linearly from 999 to 0 like diffusers' Euler ("linspace"). Both batch the
conditional and unconditional passes (CFG), both run everything on the GPU.

Each variant runs in its own child process (ComfyUI imported in-process, scripts/comfy_host.py:
InProcessComfy with ``cpu=False`` on CUDA), with ADE linked under custom_nodes/ and the motion
module linked into models/animatediff_models. Timing comes from ComfyUI's own events, each
taken after ``torch.cuda.synchronize()``: ``executing`` (node boundaries) and ``progress`` (one
per sampling step, both samplers report through comfy.utils.ProgressBar).

    load      the loader nodes (ours: SM_LoadVideoModel; ade: CheckpointLoaderSimple + ADE loader)
    prep      everything else before the first step, less one step: text encoding, moving the
              weights to the GPU (ComfyUI does that lazily inside CLIPTextEncode/KSampler, the
              pack inside its sampler node)
    ready     load + prep: from the graph's start to the first step, less that step
    s/step    mean interval between step 2 .. N's progress events (step 1 excluded: warm-up);
              with --steps 1 the first step itself, overheads included
    decode    ade: the VAEDecode node; ours: sampler node end - last step
    peak      torch.cuda.max_memory_allocated / max_memory_reserved over the whole graph (the
              peak counters are read and reset at every event, so the sampling and decode peaks
              are printed too), and the child's largest ``used_memory`` in
              ``nvidia-smi --query-compute-apps``, polled every 0.2 s by the parent. On the CPU
              (--cpu): peak RSS of the child instead.

    python benchmarks/bench_vs_ade.py --ade /path/ComfyUI-AnimateDiff-Evolved             # CUDA
    python benchmarks/bench_vs_ade.py --cpu --width 64 --frames 2 --steps 2 --ade ...     # check

Model files: benchmarks/_common.py ensure_model_files("real") (written once under
$STILL_MOVING_HOME/bench/real, ~5.7 GiB). ComfyUI: --comfyui or $COMFYUI_PATH. ADE: --ade or
$ADE_PATH (an AnimateDiff-Evolved of the ComfyUI's era; 90fb133 goes with ComfyUI 0.3.75).
"""
import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks import _common  # noqa: E402

ADE_DIR_NAME = "ComfyUI-AnimateDiff-Evolved"
PROMPT = "a corgi running on the beach, waves, sunny day, best quality"
NEGATIVE = "blurry, low quality, deformed"
CKPT_NAME, MM_NAME = "sd15_random.safetensors", "mm_v2_random.safetensors"


# --- the two graphs (API format) ------------------------------------------------------------

def ade_graph(a):
    """Returns (graph, loader node ids, sampler node id, decode node id)."""
    g = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": CKPT_NAME}},
        "2": {"class_type": "ADE_AnimateDiffLoaderGen1",
              "inputs": {"model": ["1", 0], "model_name": MM_NAME,
                         "beta_schedule": "sqrt_linear (AnimateDiff)"}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"text": PROMPT, "clip": ["1", 1]}},
        "4": {"class_type": "CLIPTextEncode", "inputs": {"text": NEGATIVE, "clip": ["1", 1]}},
        "5": {"class_type": "EmptyLatentImage",
              "inputs": {"width": a.width, "height": a.height, "batch_size": a.frames}},
        "6": {"class_type": "KSampler",
              "inputs": {"model": ["2", 0], "seed": a.seed, "steps": a.steps, "cfg": a.cfg,
                         "sampler_name": "euler", "scheduler": "normal", "positive": ["3", 0],
                         "negative": ["4", 0], "latent_image": ["5", 0], "denoise": 1.0}},
        "7": {"class_type": "VAEDecode", "inputs": {"samples": ["6", 0], "vae": ["1", 2]}},
        "8": {"class_type": "PreviewImage", "inputs": {"images": ["7", 0]}},  # validation only
    }
    return g, ("1", "2"), "6", "7"


def ours_graph(a):
    g = {
        "1": {"class_type": "SM_LoadVideoModel",
              "inputs": {"ckpt_name": CKPT_NAME, "motion_module": MM_NAME, "dtype": a.dtype}},
        "2": {"class_type": "SM_SampleVideo",
              "inputs": {"video_model": ["1", 0], "prompt": PROMPT, "negative_prompt": NEGATIVE,
                         "seed": a.seed, "steps": a.steps, "cfg": a.cfg, "scheduler": "euler",
                         "beta_schedule": "linear", "width": a.width, "height": a.height,
                         "frames": a.frames, "context_mode": "none", "context_length": 16,
                         "context_overlap": 4}},
        "3": {"class_type": "PreviewImage", "inputs": {"images": ["2", 1]}},  # validation only
    }
    return g, ("1",), "2", "2"


# --- child: one variant in a fresh process --------------------------------------------------

def child(a):
    ckpt, mm = _common.model_paths("real")
    comfy_dir = Path(a.comfyui).resolve()
    base = Path(tempfile.mkdtemp(prefix=f"sm_bench_{a.child}_"))
    from comfy_host import InProcessComfy, add_model_file, make_base
    make_base(base)
    add_model_file(base, "checkpoints", CKPT_NAME, ckpt)
    add_model_file(base, "animatediff_models", MM_NAME, mm)

    # ComfyUI's precision flags, read when it picks a dtype: UNet and text encoder as --dtype
    # (on CUDA ComfyUI would pick fp16 for SD1.5 by itself); the VAE as ComfyUI picks it unless
    # --comfy-vae-dtype same.
    sys.path.insert(0, str(comfy_dir))
    import comfy.options  # noqa: F401  (must precede cli_args: no argv parsing)
    from comfy.cli_args import args as cargs
    # No graph editor is served here: without comfyui-frontend-package (none on the GPU machine)
    # point ComfyUI's own --front-end-root option at an empty folder, or PromptServer() exits.
    import importlib.util
    if importlib.util.find_spec("comfyui_frontend_package") is None:
        (base / "frontend").mkdir(exist_ok=True)
        cargs.front_end_root = str(base / "frontend")
    if not a.cpu:
        setattr(cargs, f"{a.dtype}_unet", True)
        setattr(cargs, f"{a.dtype}_text_enc", True)
        if a.comfy_vae_dtype == "same":
            setattr(cargs, f"{a.dtype}_vae", True)

    t0 = time.perf_counter()
    host = InProcessComfy(base, comfy_dir, cpu=a.cpu)
    boot_s = time.perf_counter() - t0
    if not host.pack_loaded:
        raise SystemExit(f"the pack did not load:\n{host.pack_log}")
    import nodes
    import torch
    cuda = not a.cpu
    if cuda and not torch.cuda.is_available():
        raise SystemExit("no CUDA device; use --cpu")
    if a.child == "ade":
        link = base / "custom_nodes" / ADE_DIR_NAME
        link.symlink_to(Path(a.ade).resolve(), target_is_directory=True)
        before = set(nodes.NODE_CLASS_MAPPINGS)
        ok = asyncio.run(nodes.load_custom_node(str(link), ignore=before))
        if not ok or "ADE_AnimateDiffLoaderGen1" not in nodes.NODE_CLASS_MAPPINGS:
            raise SystemExit(f"AnimateDiff-Evolved did not load from {a.ade}")
        graph, loaders, sampler, decode = ade_graph(a)
    else:
        graph, loaders, sampler, decode = ours_graph(a)
    import comfy.model_management as mm_
    device = str(mm_.get_torch_device())
    print(f"[{a.child}] ComfyUI booted in {boot_s:.1f} s on {device}", flush=True)

    # Events with timestamps; the peak-memory counters are read and reset at each one, so every
    # interval between two events has its own peak.
    events = []  # (t, event, node or step, peak_alloc, peak_reserved) for the interval ending here
    orig_send = host.server.send_sync

    def record(event, data, sid=None):
        if event in ("executing", "progress", "execution_success", "execution_error",
                     "execution_interrupted"):
            pa = pr = None
            if cuda:
                torch.cuda.synchronize()
                pa, pr = torch.cuda.max_memory_allocated(), torch.cuda.max_memory_reserved()
                torch.cuda.reset_peak_memory_stats()
            tag = data.get("node") if event == "executing" else data.get("value")
            events.append((time.perf_counter(), event, tag, pa, pr))
        orig_send(event, data, sid)

    host.server.send_sync = record
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    t_start = time.perf_counter()
    run = host.run(graph, raise_on_error=False, outputs=[decode])  # PreviewImage not run
    t_end = time.perf_counter()
    if run.error:
        raise SystemExit(f"graph failed: {run.error.get('exception_message')}\n"
                         + "".join(run.error.get("traceback") or []))
    end_alloc = end_reserved = None
    tail_peak = (0, 0)
    if cuda:
        torch.cuda.synchronize()
        end_alloc, end_reserved = torch.cuda.memory_allocated(), torch.cuda.memory_reserved()
        tail_peak = (torch.cuda.max_memory_allocated(), torch.cuda.max_memory_reserved())

    # node intervals: an "executing" event opens a node; the next executing/success event closes it
    spans, cur = {}, None  # node -> [start, end, peak_alloc, peak_reserved]
    steps = []  # (t, peak_alloc, peak_reserved) of each progress event inside the sampler
    peak_a, peak_r = tail_peak  # since the last event; the rest is read per interval below
    for t, ev, tag, pa, pr in events:
        peak_a, peak_r = max(peak_a, pa or 0), max(peak_r, pr or 0)
        if cur is not None:
            span = spans[cur]
            span[2], span[3] = max(span[2], pa or 0), max(span[3], pr or 0)
        if ev == "progress" and cur == sampler:
            steps.append((t, pa or 0, pr or 0))
        if ev in ("executing", "execution_success"):
            if cur is not None:
                spans[cur][1] = t
            cur = tag if ev == "executing" else None
            if cur is not None:
                spans[cur] = [t, None, 0, 0]
    for span in spans.values():
        span[1] = span[1] or t_end
    if len(steps) < a.steps:
        raise SystemExit(f"saw {len(steps)} progress events for {a.steps} steps; events: {events}")
    steps = steps[-a.steps:]  # the sampler's own bar (ignore any earlier ones in the node)
    step_t = [t for t, _, _ in steps]
    first = step_t[0] - spans[sampler][0]
    if a.steps >= 2:
        intervals = [b - c for b, c in zip(step_t[1:], step_t[:-1])]
        s_step = (step_t[-1] - step_t[0]) / (a.steps - 1)
    else:
        intervals, s_step = [], first
    load_s = sum(spans[n][1] - spans[n][0] for n in loaders if n in spans)
    graph_start = min(s[0] for s in spans.values())
    prep_s = (step_t[0] - graph_start) - load_s - s_step
    if decode == sampler:
        decode_s = spans[sampler][1] - step_t[-1]
    else:
        decode_s = spans[decode][1] - spans[decode][0]
    sampling_peak = (max(p for _, p, _ in steps), max(r for _, _, r in steps)) if cuda else (None, None)
    # the peak of the decode interval: ours' last interval of the sampler node; ADE's decode node
    if cuda:
        if decode == sampler:
            tail = [e for e in events if e[0] > step_t[-1]]
            decode_peak = (tail[0][3], tail[0][4]) if tail else (None, None)
        else:
            decode_peak = (spans[decode][2], spans[decode][3])
    else:
        decode_peak = (None, None)

    dtypes = describe_dtypes(a.child, run.outputs, loaders)
    result = {
        "variant": a.child, "device": device, "boot_s": boot_s,
        "load_s": load_s, "prep_s": prep_s, "first_step_s": first, "s_per_step": s_step,
        "step_intervals": intervals, "decode_s": decode_s, "graph_s": t_end - t_start,
        "nodes": {n: {"class": graph[n]["class_type"], "s": s[1] - s[0], "peak_alloc": s[2],
                      "peak_reserved": s[3]} for n, s in spans.items()},
        "peak_alloc": peak_a if cuda else None, "peak_reserved": peak_r if cuda else None,
        "sampling_peak_alloc": sampling_peak[0], "sampling_peak_reserved": sampling_peak[1],
        "decode_peak_alloc": decode_peak[0], "decode_peak_reserved": decode_peak[1],
        "end_alloc": end_alloc, "end_reserved": end_reserved,
        "peak_rss": _common.peak_rss(), "dtypes": dtypes, "pid": os.getpid(),
        "events": [(round(t - t_start, 4), ev, tag, pa, pr) for t, ev, tag, pa, pr in events],
        "gpu": torch.cuda.get_device_name() if cuda else None,
        "torch": torch.__version__,
    }
    _common.emit(result)
    shutil.rmtree(base, ignore_errors=True)


def describe_dtypes(variant, outputs, loaders):
    """What precision each part actually ran in, read off the loader nodes' outputs."""
    def out(node):
        return outputs.get(node)
    try:
        if variant == "ade":
            model, clip, vae = (o[0] for o in out(loaders[0])[:3])
            return {"unet": str(model.model.get_dtype()).replace("torch.", ""),
                    "unet_compute": str(model.model.manual_cast_dtype or model.model.get_dtype()).replace("torch.", ""),
                    "text_encoder": str(next(clip.cond_stage_model.parameters()).dtype).replace("torch.", ""),
                    "vae": str(vae.vae_dtype).replace("torch.", "")}
        vm = out(loaders[0])[0][0]
        dt = lambda m: str(next(m.parameters()).dtype).replace("torch.", "")  # noqa: E731
        return {"unet": dt(vm.unet), "text_encoder": dt(vm.text_encoder), "vae": dt(vm.vae)}
    except Exception as e:  # a report, not a reason to fail the run
        return {"error": repr(e)}


# --- parent: files, children, nvidia-smi, table ---------------------------------------------

class SmiPoller:
    """Largest used_memory (MiB) nvidia-smi reports for one pid, and for all compute apps."""

    def __init__(self, every=0.2):
        self.every, self.pid = every, None
        self.peak_pid = self.peak_all = 0
        self.ok = shutil.which("nvidia-smi") is not None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.wait(self.every):
            try:
                out = subprocess.run(["nvidia-smi", "--query-compute-apps=pid,used_memory",
                                      "--format=csv,noheader,nounits"], capture_output=True,
                                     text=True, timeout=10).stdout
            except (OSError, subprocess.SubprocessError):
                continue
            total = 0
            for line in out.splitlines():
                parts = [p.strip() for p in line.split(",")]
                if len(parts) != 2 or not parts[1].isdigit():
                    continue
                total += int(parts[1])
                if self.pid is not None and parts[0] == str(self.pid):
                    self.peak_pid = max(self.peak_pid, int(parts[1]))
            self.peak_all = max(self.peak_all, total)

    def __enter__(self):
        if self.ok:
            self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        if self.ok:
            self._thread.join(timeout=15)
        return False


def run_variant(a, variant):
    argv = [str(Path(__file__).resolve()), "--child", variant, "--comfyui", a.comfyui,
            "--ade", a.ade or "", "--steps", str(a.steps), "--frames", str(a.frames),
            "--width", str(a.width), "--height", str(a.height), "--cfg", str(a.cfg),
            "--seed", str(a.seed), "--dtype", a.dtype, "--comfy-vae-dtype", a.comfy_vae_dtype]
    if a.cpu:
        argv.append("--cpu")
    print(f"\n=== {variant}: fresh process", flush=True)
    t = time.perf_counter()
    with SmiPoller() as smi:
        proc = subprocess.Popen([sys.executable, *argv], stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, bufsize=1, cwd=str(_common.REPO))
        smi.pid = proc.pid
        result, seen = None, {}
        for line in proc.stdout:
            if line.startswith("RESULT "):
                result = json.loads(line[len("RESULT "):])
            elif line.strip():
                seen[line] = seen.get(line, 0) + 1
                if seen[line] == 1:  # ComfyUI repeats some warnings once per module it loads
                    print("    | " + line.rstrip(), flush=True)
        code = proc.wait()
    repeated = {k: n for k, n in seen.items() if n > 1 and k.startswith(("WARNING", "ERROR"))}
    for line, n in repeated.items():
        print(f"    | ({n}x) {line.rstrip()[:160]}", flush=True)
    if result is None or code != 0:
        print(f"=== {variant}: FAILED (exit {code})", flush=True)
        return None
    result["wall_s"] = time.perf_counter() - t
    # nvidia-smi names the child by pid; if its pid namespace differs, the sum over all compute
    # apps (the child is the only one) stands in
    result["smi_peak_mib"] = (smi.peak_pid or smi.peak_all) if smi.ok else None
    result["smi_peak_all_mib"] = smi.peak_all if smi.ok else None
    result["smi_by_pid"] = bool(smi.peak_pid)
    return result


def fmt(x, unit="", nd=2):
    return "n/a" if x is None else f"{x:.{nd}f}{unit}"


def gib(n):
    return None if n is None else n / _common.GIB


def report(a, results):
    mem_label = "peak RSS" if a.cpu else "max_alloc"
    print("\n" + "=" * 100)
    print(f"Settings: {a.width}x{a.height}, {a.frames} frames, {a.steps} steps, CFG {a.cfg}, seed {a.seed}, "
          f"{'CPU' if a.cpu else 'CUDA'} dtype {a.dtype}; real-size random weights (SD1.5 + AnimateDiff v2)")
    head = (f"{'variant':8} {'load s':>7} {'prep s':>7} {'s/step':>8} {'decode s':>9} {'graph s':>8} "
            f"{'ready s':>8} {mem_label + ' GiB':>14} {'reserved GiB':>13} {'smi MiB':>8} {'samp alloc':>11} {'dec alloc':>10} {'RSS GiB':>8}")
    print(head)
    for r in results.values():
        peak = gib(r["peak_rss"]) if a.cpu else gib(r["peak_alloc"])
        print(f"{r['variant']:8} {r['load_s']:7.2f} {r['prep_s']:7.2f} {r['s_per_step']:8.3f} "
              f"{r['decode_s']:9.2f} {r['graph_s']:8.2f} {r['load_s'] + r['prep_s']:8.2f} {fmt(peak):>14} {fmt(gib(r['peak_reserved'])):>13} "
              f"{fmt(r.get('smi_peak_mib'), nd=0):>8} {fmt(gib(r['sampling_peak_alloc'])):>11} "
              f"{fmt(gib(r['decode_peak_alloc'])):>10} {fmt(gib(r['peak_rss'])):>8}")
    for r in results.values():
        print(f"  {r['variant']}: {r['device']} {r.get('gpu') or ''} torch {r['torch']}; dtypes {r['dtypes']}; "
              f"first step {r['first_step_s']:.2f} s; ComfyUI boot {r['boot_s']:.1f} s; "
              f"child wall {r['wall_s']:.1f} s; nodes "
              + ", ".join(f"{v['class']} {v['s']:.2f}s" for v in r["nodes"].values()))
    if "ade" in results and "ours" in results:
        o, d = results["ours"], results["ade"]
        print(f"RATIO ours/ADE s/step: {o['s_per_step'] / d['s_per_step']:.3f} "
              f"({o['s_per_step']:.3f} / {d['s_per_step']:.3f} s)")
        if a.cpu:
            print(f"RATIO ours/ADE peak VRAM: n/a on the CPU; peak RSS instead: "
                  f"{o['peak_rss'] / d['peak_rss']:.3f} ({gib(o['peak_rss']):.2f} / {gib(d['peak_rss']):.2f} GiB)")
        else:
            parts = [f"max_memory_allocated {o['peak_alloc'] / d['peak_alloc']:.3f} "
                     f"({gib(o['peak_alloc']):.2f} / {gib(d['peak_alloc']):.2f} GiB)",
                     f"max_memory_reserved {o['peak_reserved'] / d['peak_reserved']:.3f} "
                     f"({gib(o['peak_reserved']):.2f} / {gib(d['peak_reserved']):.2f} GiB)"]
            if o.get("smi_peak_mib") and d.get("smi_peak_mib"):
                parts.append(f"nvidia-smi {o['smi_peak_mib'] / d['smi_peak_mib']:.3f} "
                             f"({o['smi_peak_mib']} / {d['smi_peak_mib']} MiB)")
            print("RATIO ours/ADE peak VRAM: " + "; ".join(parts))
        print(f"RATIO ours/ADE load: {o['load_s'] / d['load_s']:.3f}; prep: "
              f"{fmt(o['prep_s'] / d['prep_s'] if d['prep_s'] > 0 else None, nd=3)}; decode: "
              f"{o['decode_s'] / d['decode_s']:.3f}")


def default_ade(comfyui):
    env = os.environ.get("ADE_PATH")
    if env:
        return env
    for cand in (Path(comfyui).parent / ADE_DIR_NAME, Path(comfyui) / "custom_nodes" / ADE_DIR_NAME):
        if (cand / "__init__.py").is_file():
            return str(cand)
    return None


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--comfyui", default=None, help="ComfyUI tree (default $COMFYUI_PATH)")
    p.add_argument("--ade", default=None, help="AnimateDiff-Evolved folder (default $ADE_PATH, or "
                   f"{ADE_DIR_NAME} beside the ComfyUI tree or in its custom_nodes)")
    p.add_argument("--cpu", action="store_true", help="run on the CPU (fp32), to check the script")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--width", type=int, default=512)
    p.add_argument("--height", type=int, default=None, help="default: --width")
    p.add_argument("--cfg", type=float, default=7.5)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--dtype", choices=("fp16", "bf16", "fp32"), default=None,
                   help="UNet + text encoder precision of both (default fp16 on CUDA, fp32 with --cpu)")
    p.add_argument("--comfy-vae-dtype", choices=("auto", "same"), default="auto",
                   help="ComfyUI's VAE: its own choice (auto: bf16 on recent GPUs) or --dtype (same); "
                        "the pack's VAE always runs in --dtype")
    p.add_argument("--variants", default="ade,ours")
    p.add_argument("--json", default=None, help="also write the results here")
    p.add_argument("--child", choices=("ade", "ours"), help=argparse.SUPPRESS)
    a = p.parse_args()
    a.height = a.height or a.width
    a.dtype = a.dtype or ("fp32" if a.cpu else "fp16")
    a.comfyui = str(Path(a.comfyui) if a.comfyui else _common.comfyui_path())
    a.ade = a.ade or default_ade(a.comfyui)
    if a.child:
        return child(a)

    variants = [v.strip() for v in a.variants.split(",") if v.strip()]
    if "ade" in variants and not (a.ade and (Path(a.ade) / "__init__.py").is_file()):
        sys.exit(f"no AnimateDiff-Evolved at {a.ade!r}; pass --ade PATH")
    t = time.perf_counter()
    ckpt, mm = _common.ensure_model_files("real")
    _common.warm_page_cache(ckpt, mm)
    print(f"[setup] model files ready and in the page cache in {time.perf_counter() - t:.0f} s: {ckpt}, {mm}",
          flush=True)
    results = {}
    for v in variants:
        r = run_variant(a, v)
        if r is not None:
            results[v] = r
    if results:
        report(a, results)
    if a.json:
        Path(a.json).write_text(json.dumps({"settings": vars(a), "results": results}, indent=1))
    if len(results) != len(variants):
        sys.exit(1)


if __name__ == "__main__":
    main()
