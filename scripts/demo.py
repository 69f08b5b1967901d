"""The README's first command.

Without --models: the whole Still-Moving path on the embedded toy models (``embedded/``,
trained by scripts/train_toy_models.py on the toy world), through the library the nodes use:
naive injection vs Still-Moving side by side as GIF, WebP and MP4 (scripts/toy_demo.py).
With --models: runs an example workflow headless in a real ComfyUI on your files.
With --workflow but no --models: that workflow in ComfyUI on generated random weights in the
real file layouts (the video is noise; the point is the path: load, inject, sample, save).
"""
import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from comfy_host import InProcessComfy, comfyui_path, make_base  # noqa: E402

KINDS = ("checkpoints", "animatediff_models", "animatediff_motion_lora", "loras", "vae", "still_moving")


def random_models(cache):
    """Random SD1.5-layout checkpoints and a v2 motion module, named as the workflows name them."""
    import torch
    from adapters import export
    import random_models as rm
    names = {"base": "v1-5-pruned-emaonly.safetensors", "custom": "my_dreambooth_subject.safetensors",
             "motion": "mm_sd_v15_v2.ckpt"}
    cache.mkdir(parents=True, exist_ok=True)
    for role, seed in (("base", 10), ("custom", 11)):
        if not (cache / names[role]).exists():
            p = rm.sd15_parts("comfy", seed=seed)
            export.write_checkpoint(cache / names[role], export.checkpoint_tensors(
                p["unet"], p["vae"], p["clip"], p["layout"], p["vae_levels_layers"], torch.float16))
    if not (cache / names["motion"]).exists():
        export.write_checkpoint(cache / names["motion"],
                                export.motion_module_tensors(rm.motion_module_parts("v2", "comfy", seed=12)), fmt="ckpt")
    return {("checkpoints", names["base"]): cache / names["base"],
            ("checkpoints", names["custom"]): cache / names["custom"],
            ("animatediff_models", names["motion"]): cache / names["motion"]}


def shipped_graph(path):
    """The API graph of a shipped workflow, as scripts/make_workflows.py builds it (the tests
    check the real frontend queues the same graph from the file); other files need the editor."""
    import make_workflows
    graphs = make_workflows.build()
    if Path(path).stem not in graphs:
        sys.exit(f"demo: {path} is not one of the shipped workflows ({', '.join(sorted(graphs))}); "
                 "open other workflows in ComfyUI's editor and press Queue there.")
    return graphs[Path(path).stem].api()


def user_models(models_dir):
    found = {}
    for kind in KINDS:
        folder = models_dir / kind
        if folder.is_dir():
            for f in folder.rglob("*"):
                if f.is_file():
                    found[(kind, str(f.relative_to(folder)))] = f
    return found


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--workflow", type=Path, help="run this workflow in ComfyUI (default with --models: "
                    "workflows/text_to_video_naive_injection.json)")
    ap.add_argument("--models", type=Path, help="a ComfyUI models folder (default: generated random weights)")
    ap.add_argument("--out", type=Path, default=ROOT / "output" / "demo")
    ap.add_argument("--steps", type=int)
    ap.add_argument("--frames", type=int)
    ap.add_argument("--size", type=int, help="width and height")
    args = ap.parse_args()
    if not args.models and not args.workflow:
        import toy_demo
        print("demo: no --models given, so this runs Still-Moving on the embedded toy models (embedded/, "
              "trained on the toy world); use --models /path/to/ComfyUI/models to run a workflow on yours.")
        r = toy_demo.run(args.out, steps=args.steps or 20)
        print(f"demo: done in {r['seconds']:.0f} s; wrote:")
        for p in r["files"]:
            print(f"  {p}")
        return
    args.workflow = args.workflow or ROOT / "workflows" / "text_to_video_naive_injection.json"
    home = Path.home() / ".cache" / "still-moving"
    if args.models:
        models = user_models(args.models)
        print(f"demo: using your models from {args.models}")
    else:
        print("demo: no --models given, so this runs on GENERATED RANDOM WEIGHTS in the real SD1.5 / "
              "AnimateDiff v2 file layouts: the video will be noise. Use --models /path/to/ComfyUI/models "
              "for real output.")
        models = random_models(home / "demo_models")
        args.steps, args.frames, args.size = args.steps or 4, args.frames or 8, args.size or 128
    base = make_base(Path(tempfile.mkdtemp(prefix="still-moving-demo-")))
    t0 = time.time()
    comfy = InProcessComfy(base, comfyui_path())
    if not comfy.pack_loaded:
        sys.exit(f"demo: ComfyUI could not load the pack:\n{comfy.pack_log}")
    for (kind, name), path in models.items():
        comfy.add_model(kind, name, path)
    graph = shipped_graph(args.workflow)
    for node in graph.values():
        if node["class_type"] == "SM_SampleVideo":
            for key, value in (("steps", args.steps), ("frames", args.frames), ("width", args.size),
                               ("height", args.size)):
                if value:
                    node["inputs"][key] = value
    print(f"demo: running {args.workflow.name} in ComfyUI (headless, in-process)...")
    result = comfy.run(graph)
    args.out.mkdir(parents=True, exist_ok=True)
    written = []
    for ui in result.ui.values():
        for item in ui.get("images", []):
            if item.get("type") != "output":
                continue  # previews
            src = comfy.output_dir / item["subfolder"] / item["filename"]
            dst = args.out / item["filename"]
            shutil.copy2(src, dst)
            written.append(dst)
    print(f"demo: done in {time.time() - t0:.0f} s; wrote:")
    for p in written:
        print(f"  {p}")
    shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
