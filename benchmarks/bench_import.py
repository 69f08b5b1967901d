"""What installing the pack adds to ComfyUI's start-up: seconds and heavy imports.

Each repeat is a fresh ``python`` that boots ComfyUI 0.3.75 in-process the way ``main.py`` does
(``--cpu``, built-in and extra nodes, a PromptServer), timing that boot: the reference run,
ComfyUI without the pack. Then the same process loads the pack with
``nodes.load_custom_node(custom_nodes/Still-Moving)`` -- the call ComfyUI times for its
"Import times for custom nodes" list -- and times it. The added seconds are the median of that
second timing (goal <= 0.3 s); the ratio is (boot + pack) / boot.

It also lists which heavy packages are in ``sys.modules`` after the pack loaded, and which of
those the pack imported (ComfyUI imports transformers itself, so only new submodules count
against the pack). diffusers and peft must not be imported at start-up.

    python benchmarks/bench_import.py                # 3 fresh boots, ~1 min on 2 cores
    python benchmarks/bench_import.py --repeats 5 --importtime   # + the slowest imports of the pack

``--size`` is accepted for symmetry with the other benchmarks and changes nothing.
Exit status 1 if the pack exists (has __init__.py) but fails to load, or imports diffusers/peft.
"""
import argparse
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks import _common  # noqa: E402

PACK_NAME = "Still-Moving"
GOAL_S = 0.3
FORBIDDEN = ("diffusers", "peft")          # never at start-up
HEAVY = ("diffusers", "transformers", "peft", "accelerate", "safetensors", "einops", "av", "imageio",
         "imageio_ffmpeg", "cv2", "scipy", "sklearn", "huggingface_hub", "tokenizers", "torchvision", "matplotlib",
         "pandas", "numba", "onnxruntime")

CHILD = r"""
import asyncio, json, logging, os, sys, time
T0 = time.perf_counter()
comfy_dir, base, pack, importtime = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4] == "1"
sys.path.insert(0, comfy_dir)
import comfy.options
from comfy.cli_args import args
args.cpu = True
args.base_directory = base
import folder_paths
import utils.extra_config, utils.install_util
import nodes, server
srv = server.PromptServer(asyncio.new_event_loop())
asyncio.run(nodes.init_extra_nodes(init_custom_nodes=False, init_api_nodes=False))
T1 = time.perf_counter()
builtin = set(nodes.NODE_CLASS_MAPPINGS)
before = set(sys.modules)
records = []
h = logging.Handler(); h.emit = lambda r: records.append(f"{r.levelname}: {r.getMessage()}")
logging.getLogger().addHandler(h)
if importtime:
    sys.stderr.write("@@PACK_START\n"); sys.stderr.flush()
T2 = time.perf_counter()
ok = asyncio.run(nodes.load_custom_node(pack, ignore=builtin)) if pack else None
T3 = time.perf_counter()
if importtime:
    sys.stderr.write("@@PACK_END\n"); sys.stderr.flush()
logging.getLogger().removeHandler(h)
new = sorted(set(sys.modules) - before)
print("RESULT " + json.dumps({
    "boot_s": T1 - T0, "pack_s": T3 - T2, "ok": ok, "new_modules": new, "all_modules": sorted(sys.modules),
    "pack_nodes": sorted(set(nodes.NODE_CLASS_MAPPINGS) - builtin), "log": records[-30:]}), flush=True)
"""


def parse():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", choices=_common.SIZES, default="tiny", help="no effect (symmetry)")
    ap.add_argument("--repeats", type=int, default=3, help="fresh ComfyUI processes (default 3)")
    ap.add_argument("--pack", default=str(_common.REPO), help="pack folder (default: this repo)")
    ap.add_argument("--importtime", action="store_true",
                    help="one more boot under -X importtime: the pack's slowest imports")
    ap.add_argument("--strict", action="store_true", help=f"exit 1 when the median exceeds {GOAL_S} s")
    return ap.parse_args()


def top_level(mods):
    return sorted({m.split(".")[0] for m in mods})


def heavy_report(res):
    lines, forbidden = [], []
    all_mods = set(res["all_modules"])
    new = set(res["new_modules"])
    for pkg in HEAVY:
        in_all = pkg in all_mods
        added = sorted(m for m in new if m == pkg or m.startswith(pkg + "."))
        if not in_all:
            state = "not imported"
        elif pkg in new:
            state = "IMPORTED BY THE PACK"
        elif added:
            state = f"imported by ComfyUI; the pack added {len(added)} submodules (e.g. {', '.join(added[:3])})"
        else:
            state = "imported by ComfyUI itself, nothing added by the pack"
        if pkg in FORBIDDEN and (pkg in new or added):
            forbidden.append(pkg)
        lines.append(f"  {pkg:16s} {state}")
    return lines, forbidden


def importtime_report(comfy, base, link, n=12):
    import subprocess
    proc = subprocess.run([sys.executable, "-X", "importtime", "-c", CHILD, str(comfy), str(base), str(link), "1"],
                          cwd=str(comfy), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    err = proc.stderr
    if "@@PACK_START" not in err:
        return ["  (no import-time data)"]
    seg = err.split("@@PACK_START", 1)[1].split("@@PACK_END", 1)[0]
    rows = []
    for line in seg.splitlines():
        if line.startswith("import time:") and "|" in line:
            parts = line[len("import time:"):].split("|")
            try:
                rows.append((int(parts[1]), parts[2].rstrip()))
            except ValueError:
                pass
    rows.sort(reverse=True)
    lines = [f"  {us / 1e6:7.3f} s cumulative  {name.replace(str(link), PACK_NAME)}" for us, name in rows[:n]]
    return lines or ["  (the pack imported nothing new)"]


def main():
    a = parse()
    comfy = _common.comfyui_path()
    pack = Path(a.pack).resolve()
    has_init = (pack / "__init__.py").is_file()
    with tempfile.TemporaryDirectory(prefix="bench_import_") as tmp:
        base = Path(tmp)
        for sub in ("input", "output", "temp", "user", "custom_nodes", "models"):
            (base / sub).mkdir()
        link = base / "custom_nodes" / PACK_NAME  # the folder name a user's install has
        link.symlink_to(pack, target_is_directory=True)
        print(f"pack: {pack} ({'has' if has_init else 'NO'} __init__.py); ComfyUI: {comfy}; "
              f"{a.repeats} fresh processes", flush=True)
        results = []
        for r in range(a.repeats):
            res, out = _common.run_child(["-c", CHILD, str(comfy), str(base), str(link), "0"], cwd=str(comfy))
            results.append(res)
            print(f"  run {r + 1}: ComfyUI boot {res['boot_s']:6.2f} s, + pack {res['pack_s']:.3f} s "
                  f"(loaded: {res['ok']}, {len(res['pack_nodes'])} nodes)", flush=True)
        imp = importtime_report(comfy, base, link) if a.importtime else None

    boot = _common.median([r["boot_s"] for r in results])
    added = _common.median([r["pack_s"] for r in results])
    last = results[-1]
    print(f"\nComfyUI boot without the pack (reference): median {boot:.2f} s")
    print(f"added by the pack (load_custom_node):      median {added:.3f} s "
          f"(min {min(r['pack_s'] for r in results):.3f}, goal <= {GOAL_S} s: {'OK' if added <= GOAL_S else 'OVER'})")
    print(f"pack nodes registered: {len(last['pack_nodes'])} {last['pack_nodes'][:12]}")
    if not last["ok"]:
        print("the pack did NOT load; its log:\n  " + "\n  ".join(last["log"][-10:] or ["(nothing logged)"]))
    new_top = [m for m in top_level(last["new_modules"]) if not m.startswith("/")]
    note = " (tomllib: ComfyUI itself reading pyproject.toml)" if "tomllib" in new_top else ""
    print(f"top-level packages first imported during load_custom_node: {new_top or 'none'}{note}")
    lines, forbidden = heavy_report(last)
    print("heavy packages in sys.modules after loading the pack:")
    print("\n".join(lines))
    if imp is not None:
        print("slowest imports while loading the pack (-X importtime, cumulative):")
        print("\n".join(imp))
    print(f"RATIO (boot + pack) / boot: {(boot + added) / boot:.3f}")

    status = 0
    if has_init and not last["ok"]:
        print("FAIL: the pack has an __init__.py but did not load", file=sys.stderr)
        status = 1
    if forbidden:
        print(f"FAIL: the pack imports {forbidden} at start-up", file=sys.stderr)
        status = 1
    if a.strict and added > GOAL_S:
        print(f"FAIL: the pack adds {added:.3f} s > {GOAL_S} s", file=sys.stderr)
        status = 1
    if not has_init:
        print("note: the pack has no __init__.py yet, so ComfyUI loads nothing from it (numbers are the floor)")
    return status


if __name__ == "__main__":
    sys.exit(main())
