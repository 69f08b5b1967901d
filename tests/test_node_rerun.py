"""Nodes that read a file re-run when the file changes, and only then: ComfyUI's executor keeps
a node's cached output while the node's IS_CHANGED answer stays the same (e.g. an adapter
rewritten by a resumed training run is read again on the next Queue)."""
import asyncio
import copy
import os
import shutil
import time
import uuid

import pytest
import torch

from adapters.motion_adapter import MotionAdapter
from model_files import randomize_up


class CachingHost:
    """One PromptExecutor with its cache on, kept across runs as the server keeps it between
    prompts. ``run`` returns the ids of the nodes that executed and every node's outputs."""

    def __init__(self, comfy):
        import execution
        self.comfy = comfy
        self.executor = execution.PromptExecutor(comfy.server, cache_type=execution.CacheType.CLASSIC,
                                                 cache_args={"lru": 0, "ram": 0})

    def run(self, graph, outputs):
        self.comfy.messages = []
        self.executor.execute(copy.deepcopy(graph), str(uuid.uuid4()), {"client_id": "pytest"}, outputs)
        errors = [d for e, d in self.comfy.messages if e in ("execution_error", "execution_interrupted")]
        assert not errors, errors
        executed = {d["node"] for e, d in self.comfy.messages if e == "executing" and d.get("node")}
        results = {}
        for node_id in graph:
            entry = self.executor.caches.outputs.get(node_id)
            if entry is not None:
                results[node_id] = entry.outputs
        return executed, results


def is_changed(comfy, class_type, inputs):
    """A node's IS_CHANGED answer, asked the way the executor asks it (linked inputs are None)."""
    import execution
    from comfy_execution.graph import DynamicPrompt
    prompt = {"n": {"class_type": class_type, "inputs": inputs}}
    return asyncio.run(execution.IsChangedCache("probe", DynamicPrompt(prompt), None).get("n"))


def rewrite(path, data, atomic):
    """Replace a file's content: atomically (a new file renamed over it, as the pack's trainers
    save) or in place (as a copy over it does), a moment after the last write."""
    time.sleep(0.02)  # file times tick coarsely; real rewrites are further apart
    if atomic:
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)
    else:
        with open(path, "r+b") as f:
            f.write(data)


@pytest.fixture
def cleanup(comfy):
    """Paths to delete after the test, so other tests' file lists stay as they were."""
    paths = []
    yield paths
    for p in paths:
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists() or p.is_symlink():
            p.unlink()
    comfy.folder_paths.filename_list_cache.clear()


def test_rewritten_adapter_and_motion_module_rerun_their_nodes_only(comfy, comfy_files, cleanup, tmp_path):
    """A graph run twice unchanged executes nothing the second time; after the adapter file is
    rewritten only the Attach node runs again (and uses the new weights); after the motion
    module is rewritten the loader runs again too."""
    models = comfy.models_dir
    comfy.add_model("checkpoints", comfy_files.BASE, comfy_files.base)
    motion_copy = tmp_path / "rerun_mm.ckpt"
    shutil.copyfile(comfy_files.motion, motion_copy)
    cleanup.append(comfy.add_model("animatediff_models", "rerun_mm.ckpt", motion_copy))
    adapter_path = models / "still_moving" / "motion" / "rerun_probe.safetensors"
    cleanup.append(adapter_path)

    host = CachingHost(comfy)
    graph = {"load": {"class_type": "SM_LoadVideoModel", "inputs": {
        "ckpt_name": comfy_files.BASE, "motion_module": "rerun_mm.ckpt", "dtype": "fp32"}}}
    executed, out = host.run(graph, ["load"])
    assert executed == {"load"}
    adapter = randomize_up(MotionAdapter.for_model(out["load"][0][0], rank=2), seed=1)
    adapter.save(adapter_path, overwrite=True)
    graph["attach"] = {"class_type": "SM_AttachMotionAdapter", "inputs": {
        "video_model": ["load", 0], "adapter_name": "motion/rerun_probe.safetensors", "motion_scale": 0.5}}

    def attached_up(results):
        patch = results["attach"][0][0].patches[-1]
        return torch.cat([p.detach().flatten() for p in patch.adapter.up.values()])

    def file_up():
        return torch.cat([p.detach().flatten() for p in adapter.up.values()])

    executed, out = host.run(graph, ["attach"])
    assert executed == {"attach"}  # the loader's output is reused
    torch.testing.assert_close(attached_up(out), file_up())
    executed, _ = host.run(graph, ["attach"])
    assert executed == set(), "nothing changed, so nothing may run again"

    randomize_up(adapter, seed=2).save(adapter_path, overwrite=True)  # as a resumed training run does
    executed, out = host.run(graph, ["attach"])
    assert executed == {"attach"}
    torch.testing.assert_close(attached_up(out), file_up())  # the rewritten file's weights, not the first's

    rewrite(motion_copy, comfy_files.motion.read_bytes(), atomic=True)  # same content, a new file
    executed, _ = host.run(graph, ["attach"])
    assert executed == {"load", "attach"}
    executed, _ = host.run(graph, ["attach"])
    assert executed == set()


# (node, its inputs, where the file it reads lies relative to the ComfyUI base, the input that names it)
FILE_NODES = [
    ("SM_LoadVideoModel", {"motion_module": "x", "dtype": "auto"}, "models/checkpoints/probe.safetensors",
     "ckpt_name"),
    ("SM_LoadVideoModel", {"ckpt_name": "x", "dtype": "auto"}, "models/animatediff_models/probe.ckpt",
     "motion_module"),
    ("SM_LoadVideoModel", {"motion_module": "x", "dtype": "auto"}, "models/diffusers/probe/unet/model.bin",
     "ckpt_name"),
    ("SM_LoadMotionLoRA", {"video_model": ["0", 0], "strength": 1.0},
     "models/animatediff_motion_lora/probe.safetensors", "lora_name"),
    ("SM_InjectCheckpoint", {"video_model": ["0", 0], "weight": 1.0, "inject_text_encoder": True},
     "models/checkpoints/probe.safetensors", "ckpt_name"),
    ("SM_InjectLoRA", {"video_model": ["0", 0], "strength_model": 1.0, "strength_clip": 1.0},
     "models/loras/probe.safetensors", "lora_name"),
    ("SM_AttachMotionAdapter", {"video_model": ["0", 0], "motion_scale": 0.0},
     "models/still_moving/motion/probe.safetensors", "adapter_name"),
    ("SM_AttachSpatialAdapters", {"video_model": ["0", 0], "strength": 1.0, "merge": True},
     "models/still_moving/spatial/probe.safetensors", "adapter_name"),
    ("SM_LoadAdapter", {}, "models/still_moving/spatial/probe.safetensors", "adapter_name"),
    ("SM_AttachSubjectModule", {"video_model": ["0", 0], "strength": 1.0, "merge": True},
     "models/still_moving/subject/probe.safetensors", "adapter_name"),
    ("SM_AttachTemporalLoRA", {"video_model": ["0", 0], "strength": 1.0, "merge": True},
     "models/still_moving/temporal/probe.safetensors", "adapter_name"),
    ("SM_LoadControlNet", {"dtype": "auto"}, "models/controlnet/probe.pth", "control_net_name"),
    ("SM_ScoreVideo", {"frames": ["0", 0], "prompt": "", "mask_threshold": 0.2},
     "models/still_moving/clip_scoring/probe/config.json", "clip_model"),
    ("SM_TrainMotionAdapter", {"video_model": ["0", 0], "videos": ["1", 0]},
     "models/still_moving/motion/probe.safetensors", "resume_from"),
    ("SM_TrainSpatialAdapters", {"video_model": ["0", 0]}, "models/still_moving/spatial/probe.safetensors",
     "resume_from"),
    ("SM_TrainSubjectModule", {"video_model": ["0", 0]}, "models/still_moving/subject/probe.safetensors",
     "resume_from"),
    ("SM_TrainAppearanceAbsorber", {"video_model": ["0", 0]}, "models/still_moving/absorber/probe.safetensors",
     "resume_from"),
    ("SM_TrainTemporalLoRA", {"video_model": ["0", 0]}, "models/still_moving/temporal/probe.safetensors",
     "resume_from"),
    ("SM_ImageFolderClips", {"default_caption": "", "max_side": 1024}, "input/probe_images/a.png", "folder"),
    ("SM_VideoFolderClips", {"frames": 16, "stride": 1, "default_caption": "", "max_side": 1024},
     "input/probe_videos/a.mp4", "folder"),
]


def _listed_name(rel, field):
    """The value the node's input holds for the file at ``rel``."""
    parts = rel.split("/")
    if field == "folder":
        return parts[1]                          # a folder under input/
    if field == "clip_model":
        return "still_moving/clip_scoring/probe"  # as paths.clip_scoring_folders lists it
    if parts[1] == "diffusers":
        return "diffusers/probe"                 # a diffusers pipeline folder
    return "/".join(parts[2:])                   # a file under models/<kind>/


@pytest.mark.parametrize("class_type, inputs, rel, field", FILE_NODES,
                         ids=[f"{c}.{f}:{r.split('/')[1]}" for c, _, r, f in FILE_NODES])
def test_is_changed_follows_the_file(comfy, cleanup, class_type, inputs, rel, field):
    """Through the executor's own IsChangedCache: the same answer while the file is untouched, a
    new one after it is rewritten (replaced or overwritten in place) or when it appears."""
    path = comfy.base / rel
    assert not path.exists(), f"{path} is left over from an earlier run"
    created = path  # the outermost folder this test creates, removed afterwards
    while not created.parent.exists():
        created = created.parent
    cleanup.append(created)
    inputs = {**inputs, field: _listed_name(rel, field)}

    absent = is_changed(comfy, class_type, inputs)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"first version")
    comfy.folder_paths.filename_list_cache.clear()
    first = is_changed(comfy, class_type, inputs)
    assert first != absent
    assert is_changed(comfy, class_type, inputs) == first  # untouched: ComfyUI reuses the output
    rewrite(path, b"second version", atomic=True)   # same size, a new file renamed over it
    second = is_changed(comfy, class_type, inputs)
    assert second != first
    rewrite(path, b"third  version", atomic=False)  # same size, written into the same file
    third = is_changed(comfy, class_type, inputs)
    assert third not in (first, second)
