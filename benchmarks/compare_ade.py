"""Does the pack compute what ComfyUI + AnimateDiff-Evolved compute? The same files, both ways.

Random-weight files in the real SD1.5 / AnimateDiff layouts and sizes (ADE builds SD1.5 motion
modules with the channels 320/640/1280/1280 fixed, so they cannot be smaller), written once in
fp16 under $STILL_MOVING_HOME/bench/ade_compare/, are run:

    ADE    CheckpointLoaderSimple [-> LoraLoaderModelOnly] -> ADE_AnimateDiffLoaderGen1 (beta
           "sqrt_linear (AnimateDiff)"[, motion_lora <- ADE_AnimateDiffLoRALoader]) ->
           CLIPTextEncode x2, then what KSampler runs (prepare_noise + comfy.sample.sample:
           euler, normal) with a callback that keeps each step's x and denoised estimate
    pack   adapters.loading.load_video_model [+ inject_lora / attach_motion_lora /
           inject_checkpoint] -> encode_text -> sampling.sample (euler, linear betas)

each case and side in a fresh process (ComfyUI 0.3.75 in-process: scripts/comfy_host.py
InProcessComfy, ADE linked under custom_nodes/), fp32 on the CPU, and compared by relative L2
difference (|a - b| / |b|, ADE as b) of
    noise   the initial latents x_T (same seed)
    eps     the CFG noise prediction of the first call (ADE: (x_T - denoised) / sigma_max)
    final   the latents after the whole run (--steps Euler steps)
for motion modules v1, v2, v3, AnimateLCM (a v2-layout file without positional tables; ADE
reads it as AnimateLCM) and v2 with a kohya LoRA, a MotionLoRA and an injected DreamBooth
checkpoint. ``effect`` is how much the case's extra (or the motion module, for the plain
cases: against v2) moves the pack's final latents, so a difference is read against it.
--previous also runs the pack's earlier function (diffusers' GroupNorms, noise scaled by
sigma_max; given the same noise values, though it drew others from a seed) and adds its columns.

    python benchmarks/compare_ade.py --ade /path/to/ComfyUI-AnimateDiff-Evolved
    python benchmarks/compare_ade.py --ade ... --cases v2,v2+lora --previous

The files take ~8 GiB of disk; one process runs at a time, holding one real-size model.
"""
import argparse
import asyncio
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks import _common  # noqa: E402

ADE_DIR_NAME = "ComfyUI-AnimateDiff-Evolved"
FILES_DIR = _common.BENCH_DIR / "ade_compare"
BASE, DREAMBOOTH = "sd15_random.safetensors", "dreambooth_random.safetensors"
LORA, MOTION_LORA = "kohya_lora_random.safetensors", "motion_lora_v2_random.safetensors"
MOTION = {v: f"mm_{v}_random.safetensors" for v in ("v1", "v2", "v3", "animatelcm")}
CASES = ("v1", "v2", "v3", "animatelcm", "v2+lora", "v2+motion_lora", "v2+dreambooth")
PROMPT = "a corgi running on the beach, waves, sunny day"
NEGATIVE = "blurry, low quality"
# kohya LoRA targets (diffusers module names) of several kinds: attention, feed-forward, 1x1 and
# 3x3 convolutions, the time embedding projection, in down, mid and up blocks
LORA_TARGETS = ("down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q",
                "down_blocks.0.attentions.1.transformer_blocks.0.attn2.to_k",
                "down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_v",
                "down_blocks.1.attentions.0.transformer_blocks.0.ff.net.0.proj",
                "down_blocks.0.attentions.0.proj_in",
                "down_blocks.0.resnets.0.conv1",
                "down_blocks.2.resnets.1.time_emb_proj",
                "mid_block.attentions.0.transformer_blocks.0.attn1.to_out.0",
                "up_blocks.1.attentions.2.transformer_blocks.0.attn2.to_q",
                "up_blocks.3.attentions.2.proj_out",
                "up_blocks.3.resnets.2.conv2")


# --- the files, written once ----------------------------------------------------------------

def write_file(name):
    """One model file (fp16, atomic); run in a child process, real size needs a few GiB."""
    import torch

    from adapters import export
    import random_models
    path = FILES_DIR / name
    if path.exists():
        return
    g = torch.Generator().manual_seed(100)
    with torch.no_grad():
        if name in (BASE, DREAMBOOTH):
            p = random_models.sd15_parts("real", seed=0)
            if name == DREAMBOOTH:  # a fine-tune of the base: every UNet and text tensor moved a little
                for part in ("unet", "clip"):
                    for v in p[part].values():
                        if v.is_floating_point() and v.ndim >= 1:
                            spread = float(v.float().std()) if v.numel() > 1 else 0.01
                            v.add_(torch.randn(v.shape, generator=g) * 0.1 * spread)
            tensors = export.checkpoint_tensors(p["unet"], p["vae"], p["clip"], p["layout"], p["vae_levels_layers"],
                                                torch.float16)
        elif name in MOTION.values():
            version = next(v for v, n in MOTION.items() if n == name)
            sd = random_models.motion_module_parts("v2" if version == "animatelcm" else version, "real", seed=3)
            tensors = export.motion_module_tensors(sd)
            if version == "animatelcm":  # AnimateLCM files carry no positional tables
                tensors = {k: v for k, v in tensors.items() if "pos_encoder" not in k}
            tensors = {k: v.half() for k, v in tensors.items()}
        elif name == LORA:
            tensors = kohya_lora(g)
        elif name == MOTION_LORA:
            tensors = motion_lora(g)
        else:
            raise ValueError(name)
    tmp = path.with_name(path.name + ".partial")
    tmp.unlink(missing_ok=True)
    export.write_checkpoint(tmp, tensors)
    os.replace(tmp, path)


def kohya_lora(g, rank=8):
    """A kohya LoRA (lora_unet_* names, alpha) on LORA_TARGETS, strong enough to be seen."""
    import torch

    import random_models
    with torch.device("meta"):
        from diffusers import UNet2DConditionModel
        unet = UNet2DConditionModel(**random_models.REAL_UNET)
    out = {}
    for module in LORA_TARGETS:
        w = unet.get_submodule(module).weight
        name = "lora_unet_" + module.replace(".", "_")
        fan_in = w[0].numel()
        if w.ndim == 4:
            down = torch.randn(rank, w.shape[1], w.shape[2], w.shape[3], generator=g) / math.sqrt(fan_in)
            up = torch.randn(w.shape[0], rank, 1, 1, generator=g) * 0.5 / math.sqrt(rank)
        else:
            down = torch.randn(rank, w.shape[1], generator=g) / math.sqrt(fan_in)
            up = torch.randn(w.shape[0], rank, generator=g) * 0.5 / math.sqrt(rank)
        out[f"{name}.lora_down.weight"] = down.half()
        out[f"{name}.lora_up.weight"] = up.half()
        out[f"{name}.alpha"] = torch.tensor(float(rank / 2)).half()
    return out


def motion_lora(g, rank=8):
    """An AnimateDiff v2 MotionLoRA: every temporal attention's q/k/v/out, the original key layout."""
    import torch
    chans = {"down_blocks.0": 320, "down_blocks.1": 640, "down_blocks.2": 1280, "down_blocks.3": 1280,
             "mid_block": 1280, "up_blocks.0": 1280, "up_blocks.1": 1280, "up_blocks.2": 640, "up_blocks.3": 320}
    out = {}
    for block, c in chans.items():
        modules = 1 if block == "mid_block" else (2 if block.startswith("down") else 3)
        for j in range(modules):
            for a in (0, 1):
                for proj in ("to_q", "to_k", "to_v", "to_out"):
                    key = (f"{block}.motion_modules.{j}.temporal_transformer.transformer_blocks.0."
                           f"attention_blocks.{a}.processor.{proj}_lora")
                    out[f"{key}.down.weight"] = (torch.randn(rank, c, generator=g) / math.sqrt(c)).half()
                    out[f"{key}.up.weight"] = (torch.randn(c, rank, generator=g) * 0.5 / math.sqrt(rank)).half()
    return out


def ensure_files(names):
    FILES_DIR.mkdir(parents=True, exist_ok=True)
    for name in names:
        if (FILES_DIR / name).exists():
            continue
        print(f"[setup] writing {name} (once)", flush=True)
        t = time.perf_counter()
        subprocess.run([sys.executable, str(Path(__file__).resolve()), "--write", name], check=True,
                       cwd=str(_common.REPO))
        print(f"[setup] wrote {name} ({(FILES_DIR / name).stat().st_size / _common.GIB:.2f} GiB) in "
              f"{time.perf_counter() - t:.0f} s", flush=True)


def case_files(case):
    version, _, extra = case.partition("+")
    names = [DREAMBOOTH if extra == "dreambooth" else BASE, MOTION[version]]
    if extra == "dreambooth":
        names.append(BASE)
    if extra == "lora":
        names.append(LORA)
    if extra == "motion_lora":
        names.append(MOTION_LORA)
    return version, extra, names


# --- ComfyUI + ADE --------------------------------------------------------------------------

def run_ade(a, cases, out_dir):
    import torch
    comfy_dir = Path(a.comfyui).resolve()
    base = Path(tempfile.mkdtemp(prefix="sm_compare_ade_"))
    from comfy_host import InProcessComfy, add_model_file, make_base
    make_base(base)
    for name in (BASE, DREAMBOOTH, LORA):
        add_model_file(base, "checkpoints" if name != LORA else "loras", name, FILES_DIR / name)
    for name in MOTION.values():
        add_model_file(base, "animatediff_models", name, FILES_DIR / name)
    add_model_file(base, "animatediff_motion_lora", MOTION_LORA, FILES_DIR / MOTION_LORA)
    sys.path.insert(0, str(comfy_dir))
    import comfy.options  # noqa: F401  (must precede cli_args)
    from comfy.cli_args import args as cargs
    import importlib.util
    if importlib.util.find_spec("comfyui_frontend_package") is None:
        (base / "frontend").mkdir(exist_ok=True)
        cargs.front_end_root = str(base / "frontend")
    host = InProcessComfy(base, comfy_dir, cpu=True)
    import nodes
    link = base / "custom_nodes" / ADE_DIR_NAME
    link.symlink_to(Path(a.ade).resolve(), target_is_directory=True)
    ok = asyncio.run(nodes.load_custom_node(str(link), ignore=set(nodes.NODE_CLASS_MAPPINGS)))
    if not ok or "ADE_AnimateDiffLoaderGen1" not in nodes.NODE_CLASS_MAPPINGS:
        raise SystemExit(f"AnimateDiff-Evolved did not load from {a.ade}")
    import comfy.sample
    import comfy.samplers

    for case in cases:
        version, extra, _ = case_files(case)
        t = time.perf_counter()
        g = {"1": {"class_type": "CheckpointLoaderSimple",
                   "inputs": {"ckpt_name": DREAMBOOTH if extra == "dreambooth" else BASE}}}
        model = ["1", 0]
        if extra == "lora":
            g["L"] = {"class_type": "LoraLoaderModelOnly",
                      "inputs": {"model": model, "lora_name": LORA, "strength_model": 1.0}}
            model = ["L", 0]
        ad = {"model": model, "model_name": MOTION[version], "beta_schedule": "sqrt_linear (AnimateDiff)"}
        if extra == "motion_lora":
            g["M"] = {"class_type": "ADE_AnimateDiffLoRALoader", "inputs": {"name": MOTION_LORA, "strength": 1.0}}
            ad["motion_lora"] = ["M", 0]
        g["2"] = {"class_type": "ADE_AnimateDiffLoaderGen1", "inputs": ad}
        g["3"] = {"class_type": "CLIPTextEncode", "inputs": {"text": PROMPT, "clip": ["1", 1]}}
        g["4"] = {"class_type": "CLIPTextEncode", "inputs": {"text": NEGATIVE, "clip": ["1", 1]}}
        # validation needs an output node; only the nodes above are executed
        g["5"] = {"class_type": "EmptyLatentImage", "inputs": {"width": a.width, "height": a.height, "batch_size": a.frames}}
        g["6"] = {"class_type": "KSampler", "inputs": {
            "model": ["2", 0], "seed": a.seed, "steps": a.steps, "cfg": a.cfg, "sampler_name": "euler",
            "scheduler": "normal", "positive": ["3", 0], "negative": ["4", 0], "latent_image": ["5", 0], "denoise": 1.0}}
        g["7"] = {"class_type": "VAEDecode", "inputs": {"samples": ["6", 0], "vae": ["1", 2]}}
        g["8"] = {"class_type": "PreviewImage", "inputs": {"images": ["7", 0]}}
        run = host.run(g, raise_on_error=False, outputs=["2", "3", "4", "5"])
        if run.error:
            raise SystemExit(f"{case}: graph failed: {run.error.get('exception_message')}\n"
                             + "".join(run.error.get("traceback") or []))
        model = run.outputs["2"][0][0]
        pos, neg = run.outputs["3"][0][0], run.outputs["4"][0][0]
        latent = run.outputs["5"][0][0]["samples"]
        # what nodes.common_ksampler does, with a callback that keeps x and the denoised estimate
        latent_image = comfy.sample.fix_empty_latent_channels(model, latent)
        noise = comfy.sample.prepare_noise(latent_image, a.seed, None)
        steps = []
        samples = comfy.sample.sample(model, noise, a.steps, a.cfg, "euler", "normal", pos, neg, latent_image,
                                      denoise=1.0, callback=lambda i, x0, x, n: steps.append((x0.clone(), x.clone())),
                                      disable_pbar=True, seed=a.seed)
        sampling = model.get_model_object("model_sampling")
        sigmas = comfy.samplers.calculate_sigmas(sampling, "normal", a.steps)
        x0, x_t = steps[0]
        final = model.model.process_latent_in(samples)  # back into the space the sampler worked in
        info = _ade_info(model)
        read_as = f"{getattr(info, 'mm_version', '?')}/{getattr(info, 'mm_format', '?')}"
        torch.save({"noise": x_t.float(), "eps": ((x_t - x0) / sigmas[0]).float(), "final": final.float(),
                    "sigmas": sigmas, "unet_dtype": str(model.model.get_dtype()), "ade_reads": read_as},
                   out_dir / f"ade_{case}.pt")
        print(f"[ade] {case}: {time.perf_counter() - t:.1f} s, UNet {model.model.get_dtype()}, ADE reads the "
              f"motion module as {read_as}", flush=True)
    shutil.rmtree(base, ignore_errors=True)


def _ade_info(model):
    """ADE's reading of the motion module (AnimateDiffInfo: version, format) on an injected MODEL."""
    for name, mod in list(sys.modules.items()):
        if name.endswith("animatediff.model_injection") and hasattr(mod, "ModelPatcherHelper"):
            try:
                return mod.ModelPatcherHelper(model).get_motion_models()[0].model.mm_info
            except Exception:
                return None
    return None


# --- the pack ---------------------------------------------------------------------------------

def previous_function(vm):
    """The pack's earlier UNet: diffusers' own GroupNorms (no frame-count hook)."""
    import torch
    for m in vm.unet.modules():
        if isinstance(m, torch.nn.GroupNorm):
            m.__class__ = torch.nn.GroupNorm
    state = getattr(vm.unet, "_still_moving_norms", None)
    if state:
        state["handle"].remove()
        del vm.unet._still_moving_norms
    return vm


def run_pack(a, cases, out_dir, previous=False):
    import torch

    from adapters import inject, sampling
    from adapters.loading import load_video_model
    tok = [_common.sd1_tokenizer_dir()]
    if previous:  # the earlier function started from the noise times diffusers' init_noise_sigma
        sampling.noise_scale = lambda sched: float(sched.init_noise_sigma)
    loaded = {}
    for case in cases:
        version, extra, _ = case_files(case)
        t = time.perf_counter()
        if version not in loaded:
            loaded.clear()
            loaded[version] = load_video_model(FILES_DIR / BASE, FILES_DIR / MOTION[version], torch.float32,
                                               tokenizer_dirs=tok)
            if previous:
                previous_function(loaded[version])
        vm = loaded[version]
        if extra == "lora":
            vm = inject.inject_lora(vm, FILES_DIR / LORA, 1.0, 1.0)
        elif extra == "motion_lora":
            vm = inject.attach_motion_lora(vm, FILES_DIR / MOTION_LORA, 1.0)
        elif extra == "dreambooth":
            vm = inject.inject_checkpoint(vm, FILES_DIR / DREAMBOOTH)
        cond = sampling.encode_text(vm, [PROMPT], "cpu")
        uncond = sampling.encode_text(vm, [NEGATIVE], "cpu")
        f = vm.vae_scale
        shape = (1, vm.unet.config.in_channels, a.frames, a.height // f, a.width // f)
        sched = sampling.make_scheduler("euler", "linear")
        sched.set_timesteps(a.steps)
        sigma = float(sched.sigmas[0])
        unit = sampling.initial_noise(shape, a.seed)[0]
        # the earlier function scaled by diffusers' init_noise_sigma (sigma_max); it also drew the
        # seed's noise as (1, C, F, h, w), other values altogether: the same values are given
        # here so that the columns show what the function itself changes
        scale = sampling.noise_scale(sched)
        x_t = unit * scale
        with vm.patched(), torch.no_grad():
            emb = torch.cat([uncond, cond]).repeat_interleave(a.frames, 0)
            eps_u, eps_c = vm.unet(torch.cat([x_t, x_t]) / math.sqrt(1 + sigma ** 2), sched.timesteps[0],
                                   encoder_hidden_states=emb).sample.chunk(2)
        eps = eps_u + a.cfg * (eps_c - eps_u)
        final = sampling.sample(vm, cond, uncond, seed=a.seed, steps=a.steps, cfg=a.cfg, scheduler="euler",
                                beta_schedule="linear", width=a.width, height=a.height, frames=a.frames)
        to_comfy = lambda z: z[0].permute(1, 0, 2, 3).contiguous()  # noqa: E731  (F, C, h, w)
        torch.save({"noise": to_comfy(x_t), "eps": to_comfy(eps), "final": to_comfy(final),
                    "normalization": vm.info.get("normalization"), "motion_version": vm.info.get("motion_version")},
                   out_dir / f"{'previous' if previous else 'pack'}_{case}.pt")
        print(f"[{'previous' if previous else 'pack'}] {case}: {time.perf_counter() - t:.1f} s", flush=True)


# --- parent -------------------------------------------------------------------------------------

def rel(a, b):
    return float((a.double() - b.double()).norm() / b.double().norm())


def child(a, what, cases, out_dir):
    argv = [sys.executable, str(Path(__file__).resolve()), "--child", what, "--out", str(out_dir),
            "--cases", ",".join(cases), "--ade", a.ade or "", "--comfyui", a.comfyui, "--steps", str(a.steps),
            "--frames", str(a.frames), "--width", str(a.width), "--height", str(a.height), "--cfg", str(a.cfg),
            "--seed", str(a.seed)]
    print(f"\n=== {what}: fresh process", flush=True)
    t = time.perf_counter()
    proc = subprocess.run(argv, cwd=str(_common.REPO), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen = set()
    for line in proc.stdout.splitlines():
        if line.strip() and line not in seen:
            seen.add(line)
            print("    | " + line, flush=True)
    print(f"=== {what}: {'ok' if proc.returncode == 0 else f'FAILED (exit {proc.returncode})'} in "
          f"{time.perf_counter() - t:.0f} s", flush=True)
    return proc.returncode == 0


def report(a, cases, out_dir, previous):
    import torch
    rows = []
    load = lambda p: torch.load(p, weights_only=True) if p.exists() else None  # noqa: E731
    pack_v2 = load(out_dir / "pack_v2.pt")
    print("\n" + "=" * 100)
    print(f"Settings: {a.width}x{a.height}, {a.frames} frames, {a.steps} Euler steps, CFG {a.cfg}, seed {a.seed}, "
          f"fp32 CPU; real-size random weights in fp16 files")
    head = f"{'case':16} {'ADE reads':18} {'pack norm':9} {'noise':>9} {'eps':>9} {'final':>9} {'effect':>9}"
    if previous:
        head += f" {'prev noise':>10} {'prev eps':>9} {'prev final':>10}"
    print(head)
    worst = 0.0
    for case in cases:
        ade, pack = load(out_dir / f"ade_{case}.pt"), load(out_dir / f"pack_{case}.pt")
        if ade is None or pack is None:
            print(f"{case:16} (missing)")
            continue
        version, extra, _ = case_files(case)
        ref = pack_v2 if extra or version != "v2" else None
        if extra:
            plain = load(out_dir / f"pack_{version}.pt")
            effect = rel(pack["final"], plain["final"]) if plain is not None else float("nan")
        else:
            effect = rel(pack["final"], ref["final"]) if ref is not None else None
        r = {"case": case, "ade": ade["ade_reads"], "norm": pack["normalization"],
             "noise": rel(pack["noise"], ade["noise"]), "eps": rel(pack["eps"], ade["eps"]),
             "final": rel(pack["final"], ade["final"]), "effect": effect}
        worst = max(worst, r["eps"], r["final"], r["noise"])
        shown = "-" if effect is None else f"{effect:.2e}"
        line = (f"{case:16} {r['ade']:18} {r['norm']:9} {r['noise']:9.2e} {r['eps']:9.2e} {r['final']:9.2e} "
                f"{shown:>9}")
        prev = load(out_dir / f"previous_{case}.pt") if previous else None
        if prev is not None:
            r["previous_noise"], r["previous_eps"] = rel(prev["noise"], ade["noise"]), rel(prev["eps"], ade["eps"])
            r["previous_final"] = rel(prev["final"], ade["final"])
            line += f" {r['previous_noise']:10.2e} {r['previous_eps']:9.2e} {r['previous_final']:10.2e}"
        print(line)
        rows.append(r)
    if len(rows) < len(cases):
        print(f"INCOMPLETE: {len(cases) - len(rows)} of {len(cases)} cases have no result")
        worst = float("nan")
    print(f"WORST relative L2 pack vs ADE: {worst:.2e}")
    return rows, worst


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ade", default=os.environ.get("ADE_PATH"), help="AnimateDiff-Evolved folder (90fb133 goes "
                   "with ComfyUI 0.3.75); default $ADE_PATH")
    p.add_argument("--comfyui", default=None, help="ComfyUI tree (default $COMFYUI_PATH)")
    p.add_argument("--cases", default=",".join(CASES), help=f"comma-separated, of {', '.join(CASES)}")
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--frames", type=int, default=4)
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--height", type=int, default=None, help="default: --width")
    p.add_argument("--cfg", type=float, default=7.5)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--previous", action="store_true", help="also the pack's earlier function, for contrast")
    p.add_argument("--json", default=None, help="also write the table here")
    p.add_argument("--keep", default=None, help="keep the saved tensors in this folder")
    p.add_argument("--reuse", action="store_true", help="with --keep: skip the runs whose tensors are there")
    p.add_argument("--write", help=argparse.SUPPRESS)
    p.add_argument("--child", choices=("ade", "pack", "previous"), help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    a.height = a.height or a.width
    if a.write:
        return write_file(a.write)
    a.comfyui = str(Path(a.comfyui) if a.comfyui else _common.comfyui_path())
    cases = [c.strip() for c in a.cases.split(",") if c.strip()]
    unknown = [c for c in cases if c not in CASES]
    if unknown:
        sys.exit(f"unknown case(s) {unknown}; choose from {', '.join(CASES)}")
    if a.child:
        out_dir = Path(a.out)
        if a.child == "ade":
            return run_ade(a, cases, out_dir)
        return run_pack(a, cases, out_dir, previous=a.child == "previous")
    if not (a.ade and (Path(a.ade) / "__init__.py").is_file()):
        sys.exit(f"no AnimateDiff-Evolved at {a.ade!r}; pass --ade PATH (e.g. git --git-dir=<mirror> archive "
                 "90fb133 | tar -x -C /tmp/ade)")
    if "v2" not in cases:
        cases = ["v2"] + cases  # the reference of the effect column, and the base of every extra
    ensure_files(sorted({n for c in cases for n in case_files(c)[2]}))
    out_dir = Path(a.keep) if a.keep else Path(tempfile.mkdtemp(prefix="sm_compare_"))
    out_dir.mkdir(parents=True, exist_ok=True)
    ok = True
    for case in cases:  # a fresh process per case and side: each holds one model at a time
        for what in ("ade", "pack") + (("previous",) if a.previous else ()):
            if a.reuse and (out_dir / f"{what}_{case}.pt").exists():
                continue
            ok = child(a, what, [case], out_dir) and ok
    rows, worst = report(a, cases, out_dir, a.previous)
    if a.json:
        Path(a.json).write_text(json.dumps({"settings": {k: v for k, v in vars(a).items()}, "rows": rows,
                                            "worst": worst}, indent=1))
    if not a.keep:
        shutil.rmtree(out_dir, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
