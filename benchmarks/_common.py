"""Shared helpers of the benchmarks: paths, model files written once, memory probes.

Model files are random weights in the users' real layouts (LDM single-file SD1.5 checkpoint,
original-layout AnimateDiff motion module), written by ``adapters.export`` from
``scripts/random_models.py``. Real-size files (4.3 GB + 1.8 GB in fp32) are written once, in a
subprocess so the benchmark's own memory stays clean, under ``$STILL_MOVING_HOME/bench/``
(default ``~/.cache/still-moving/bench/``).
"""
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
for _p in (REPO / "scripts", REPO):  # the pack's library, the toy world, random models, the ComfyUI host
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

HOME = Path(os.environ.get("STILL_MOVING_HOME", Path.home() / ".cache" / "still-moving"))
BENCH_DIR = HOME / "bench"
SIZES = ("tiny", "real")
GIB = 1024 ** 3


def comfyui_path():
    path = Path(os.environ.get("COMFYUI_PATH", HOME / "comfyui"))
    if not (path / "main.py").is_file():
        sys.exit(f"no ComfyUI at {path}; run scripts/setup.sh or set COMFYUI_PATH")
    return path


def sd1_tokenizer_dir():
    """ComfyUI's SD1.5 CLIP tokenizer (49408 tokens), needed by the real-size text encoder."""
    return comfyui_path() / "comfy" / "sd1_tokenizer"


def model_paths(size, mm_format="safetensors"):
    folder = BENCH_DIR / size
    return folder / "sd15_random.safetensors", folder / f"mm_v2_random.{mm_format}"


def ensure_model_files(size, mm_format="safetensors"):
    """Paths of the checkpoint and v2 motion module of ``size``, writing whichever is missing.

    Each part is written by a child process (real size needs ~9 GiB while writing), atomically,
    so an interrupted run never leaves a half file that a later run would trust.
    """
    ckpt, mm = model_paths(size, mm_format)
    for part, path in (("checkpoint", ckpt), ("motion", mm)):
        if path.is_file():
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        print(f"[setup] writing {size} {part} -> {path} (once; real size takes a minute or two)", flush=True)
        t = time.perf_counter()
        subprocess.run([sys.executable, str(Path(__file__).resolve()), "--write", size, part, str(path)],
                       check=True, cwd=str(REPO))
        print(f"[setup] wrote {path.name} ({path.stat().st_size / GIB:.2f} GiB) in "
              f"{time.perf_counter() - t:.0f} s", flush=True)
    return ckpt, mm


def _write(size, part, path):
    import torch

    from adapters import export
    import random_models
    path = Path(path)
    fmt = "ckpt" if path.suffix == ".ckpt" else "safetensors"
    with torch.no_grad():
        if part == "checkpoint":
            p = random_models.sd15_parts(size, seed=0)
            tensors = export.checkpoint_tensors(p["unet"], p["vae"], p["clip"], p["layout"], p["vae_levels_layers"])
        else:
            tensors = export.motion_module_tensors(random_models.motion_module_parts("v2", size, seed=3))
    if path.exists():  # another run wrote it meanwhile
        return
    try:
        export.write_checkpoint(path, tensors, fmt=fmt)
    except FileExistsError:
        pass


# --- memory -------------------------------------------------------------------------------------

def proc_status(field, pid="self"):
    """A ``/proc/PID/status`` field (VmRSS, VmHWM...) in bytes; None if unavailable."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def peak_rss():
    """Peak resident set size of this process so far, in bytes (ru_maxrss is KiB on Linux)."""
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def mem_available():
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return None


def gib(n):
    return "n/a" if n is None else f"{n / GIB:.2f} GiB"


def median(xs):
    return statistics.median(xs) if xs else float("nan")


def run_child(argv, cwd=None, env=None, timeout=None):
    """Run ``python argv...``; the child prints one line ``RESULT {json}``. Returns (dict, output)."""
    proc = subprocess.run([sys.executable, *argv], cwd=cwd, env=env, timeout=timeout,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    result = None
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            result = json.loads(line[len("RESULT "):])
    if proc.returncode != 0 or result is None:
        tail = "\n".join(proc.stdout.splitlines()[-25:])
        raise RuntimeError(f"child {' '.join(map(str, argv[:3]))} failed (exit {proc.returncode}):\n{tail}")
    return result, proc.stdout


def emit(result):
    print("RESULT " + json.dumps(result), flush=True)


def warm_page_cache(*paths):
    """Read files once so every timed run reads them from the page cache, not the disk."""
    for p in paths:
        with open(p, "rb") as f:
            while f.read(64 << 20):
                pass


def load_average():
    try:
        return os.getloadavg()[0]
    except OSError:
        return float("nan")


def rss_parts():
    """Current RSS split into anonymous memory and file-backed pages (mapped weights), in bytes."""
    return {k: proc_status(k) for k in ("VmRSS", "RssAnon", "RssFile", "VmHWM")}


class RssWatchdog:
    """A daemon thread that ends this process (exit 3, after printing ``RESULT {aborted...}``)
    as soon as its RSS passes ``limit`` bytes or the machine's MemAvailable falls under
    ``min_available``: real-size training steps come close to the 24 GiB of a shared machine."""

    def __init__(self, limit, min_available=1 * GIB, every=0.2, result=None):
        import threading
        self.limit, self.min_available, self.every = limit, min_available, every
        self.result = dict(result or {})
        self.seen = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def _watch(self):
        while not self._stop.wait(self.every):
            rss = proc_status("VmRSS") or 0
            self.seen = max(self.seen, rss)
            avail = mem_available()
            why = None
            if rss > self.limit:
                why = f"RSS {gib(rss)} passed the limit {gib(self.limit)}"
            elif avail is not None and avail < self.min_available:
                why = f"the machine has only {gib(avail)} available (RSS {gib(rss)})"
            if why:
                print(f"[watchdog] stopping: {why}", flush=True)
                emit(dict(self.result, aborted=why, rss_at_abort=rss, peak_rss=peak_rss()))
                os._exit(3)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        return False


def run_child_live(argv, cwd=None, env=None, prefix="    | "):
    """Like ``run_child`` but echoes the child's output as it comes (real-size children run for
    minutes) and returns (result dict or None, exit code) instead of raising."""
    proc = subprocess.Popen([sys.executable, *argv], cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, bufsize=1)
    result = None
    for line in proc.stdout:
        if line.startswith("RESULT "):
            result = json.loads(line[len("RESULT "):])
        elif line.strip() and "[transformers]" not in line:
            print(prefix + line.rstrip(), flush=True)
    return result, proc.wait()


if __name__ == "__main__" and len(sys.argv) == 5 and sys.argv[1] == "--write":
    _write(*sys.argv[2:])


# --- the reference training loop: textbook diffusers + peft ------------------------------------

TEMPORAL_QKV = r".*motion_modules\.\d+\.transformer_blocks\.\d+\.attn[12]\.to_[qkv]"


class PeftLoRA:
    """peft LoRA on ``unet``'s temporal Q/K/V for a block, then the original modules put back."""

    def __init__(self, unet, rank, name):
        self.unet, self.rank, self.name = unet, rank, name

    def __enter__(self):
        import re
        from peft import LoraConfig, inject_adapter_in_model
        self.originals = {n: m for n, m in self.unet.named_modules() if re.fullmatch(TEMPORAL_QKV, n)}
        self.had_config = hasattr(self.unet, "peft_config")
        cfg = LoraConfig(r=self.rank, lora_alpha=self.rank, lora_dropout=0.0, target_modules=TEMPORAL_QKV,
                         init_lora_weights=True)
        inject_adapter_in_model(cfg, self.unet, adapter_name=self.name)
        self.params = [p for n, p in self.unet.named_parameters() if "lora_" in n]
        assert self.params and all(p.requires_grad for p in self.params)
        return self

    def __exit__(self, *exc):
        for n, m in self.originals.items():
            parent, _, child = n.rpartition(".")
            setattr(self.unet.get_submodule(parent), child, m)
        if not self.had_config and hasattr(self.unet, "peft_config"):
            del self.unet.peft_config
        assert not any("lora_" in n for n, _ in self.unet.named_modules())
        return False


def textbook_steps(unet, params, batches, *, lr, weight_decay=1e-2, generator=None, amp=None, on_step=None):
    """The textbook diffusers + peft training step for each ``(latents (1, C, F, h, w), text
    embedding per frame)`` in ``batches``: DDPMScheduler.add_noise at a uniform timestep, MSE on
    the noise, AdamW on ``params``; ``generator`` draws noise and timesteps (CPU), ``amp`` is an
    autocast dtype, ``on_step(loss)`` runs after each step. Returns the losses."""
    import torch
    import torch.nn.functional as F
    from diffusers import DDPMScheduler
    sched = DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="linear")
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    losses = []
    unet.train()
    try:
        for lat, enc in batches:
            if generator is None:
                noise, t = torch.randn_like(lat), torch.randint(0, 1000, (lat.shape[0],), device=lat.device)
            else:
                noise = torch.randn(lat.shape, generator=generator).to(lat.device, lat.dtype)
                t = torch.randint(0, 1000, (lat.shape[0],), generator=generator).to(lat.device)
            noisy = sched.add_noise(lat, noise, t)
            with torch.autocast(lat.device.type, dtype=amp, enabled=amp is not None):
                pred = unet(noisy.to(unet.dtype), t, encoder_hidden_states=enc.to(unet.dtype)).sample
                loss = F.mse_loss(pred.float(), noise.float())
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            losses.append(loss.item())
            if on_step is not None:
                on_step(losses[-1])
    finally:
        unet.eval()
    return losses

