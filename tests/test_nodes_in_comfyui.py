"""The pack inside a real ComfyUI: nodes register, graphs run, errors are clear. (The shipped
workflows run in the real editor: test_workflows_in_browser.py.)"""
import json

import pytest
import torch

from comfy_host import ComfyError

PACK_NODES = {"SM_LoadVideoModel", "SM_LoadMotionLoRA", "SM_InjectCheckpoint", "SM_InjectLoRA",
              "SM_InjectComfyModel", "SM_SampleVideo", "SM_AttachMotionAdapter", "SM_AttachSpatialAdapters",
              "SM_TrainMotionAdapter", "SM_TrainSpatialAdapters", "SM_LoadAdapter", "SM_ClipsFromImages", "SM_ImageFolderClips",
              "SM_VideoFolderClips", "SM_GeneratePriorClips", "SM_MergeClips", "SM_LoadControlNet", "SM_ApplyControlNet", "SM_ScoreVideo",
              "SM_WeightSchedule", "SM_TrainSubjectModule", "SM_AttachSubjectModule", "SM_TrainAppearanceAbsorber",
              "SM_TrainTemporalLoRA", "SM_AttachTemporalLoRA", "SM_ApplySpatialAdaptersToModel",
              "SM_ExportSpatialLoRA", "SM_ExportMotionLoRA", "SM_ExportMergedCheckpoint", "SM_InjectionReport",
              "SM_MotionAdapterCheck"}


@pytest.fixture(scope="module")
def host(comfy, comfy_files):
    for kind, name, path in [("checkpoints", comfy_files.BASE, comfy_files.base),
                             ("checkpoints", comfy_files.CUSTOM, comfy_files.custom),
                             ("animatediff_models", comfy_files.MOTION, comfy_files.motion),
                             ("loras", comfy_files.LORA, comfy_files.lora),
                             ("controlnet", comfy_files.CONTROLNET, comfy_files.controlnet)]:
        comfy.add_model(kind, name, path)
    return comfy


def test_every_node_registers(comfy):
    assert comfy.pack_loaded, comfy.pack_log
    assert comfy.pack_nodes == PACK_NODES
    for name in PACK_NODES:
        cls = comfy.nodes.NODE_CLASS_MAPPINGS[name]
        assert cls.INPUT_TYPES()["required"] and cls.CATEGORY.startswith("Still-Moving")
    assert comfy.nodes.EXTENSION_WEB_DIRS  # js/ is served


def _sample_graph(video_model_ref, extra=None, positive=None):
    g = {"s": {"class_type": "SM_SampleVideo", "inputs": dict(
        video_model=video_model_ref, prompt="a dog", negative_prompt="", seed=5, steps=2, cfg=6.0,
        scheduler="euler", beta_schedule="linear", width=64, height=64, frames=4, context_mode="none",
        context_length=16, context_overlap=4)},
        "out": {"class_type": "PreviewImage", "inputs": {"images": ["s", 1]}}}
    if positive:
        g["s"]["inputs"].update(positive)
    g.update(extra or {})
    return g


def _load(cf):
    return {"load": {"class_type": "SM_LoadVideoModel", "inputs": {
        "ckpt_name": cf.BASE, "motion_module": cf.MOTION, "dtype": "auto"}}}


def test_comfy_model_with_native_lora_matches_file_injection(host, comfy_files):
    """ComfyUI's MODEL/CLIP (with a LoRA stacked by ComfyUI's own LoraLoader) as the customized
    source gives the same video as injecting the file and the LoRA with our nodes."""
    cf = comfy_files
    native = _load(cf) | {
        "ck": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": cf.CUSTOM}},
        "lora": {"class_type": "LoraLoader", "inputs": {"model": ["ck", 0], "clip": ["ck", 1],
                                                        "lora_name": cf.LORA, "strength_model": 0.8,
                                                        "strength_clip": 1.0}},
        "inj": {"class_type": "SM_InjectComfyModel", "inputs": {"video_model": ["load", 0], "model": ["lora", 0],
                                                                 "weight": 1.0, "clip": ["lora", 1]}}}
    ours = _load(cf) | {
        "inj0": {"class_type": "SM_InjectCheckpoint", "inputs": {"video_model": ["load", 0], "ckpt_name": cf.CUSTOM,
                                                                  "weight": 1.0, "inject_text_encoder": True}},
        "inj": {"class_type": "SM_InjectLoRA", "inputs": {"video_model": ["inj0", 0], "lora_name": cf.LORA,
                                                           "strength_model": 0.8, "strength_clip": 1.0}}}
    a = host.run(_sample_graph(["inj", 0], native)).outputs["s"][0][0]["samples"]
    b = host.run(_sample_graph(["inj", 0], ours)).outputs["s"][0][0]["samples"]
    plain = host.run(_sample_graph(["load", 0], _load(cf))).outputs["s"][0][0]["samples"]
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    assert float((a - plain).norm() / plain.norm()) > 0.2  # the customized model is really in the video


def test_comfy_conditioning_matches_prompt_text(host, comfy_files):
    cf = comfy_files
    enc = {"ck": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": cf.BASE}},
           "pos": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["ck", 1], "text": "a dog"}},
           "neg": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["ck", 1], "text": ""}}}
    with_cond = host.run(_sample_graph(["load", 0], _load(cf) | enc,
                                       {"positive": ["pos", 0], "negative": ["neg", 0]}))
    with_text = host.run(_sample_graph(["load", 0], _load(cf)))
    torch.testing.assert_close(with_cond.outputs["s"][0][0]["samples"], with_text.outputs["s"][0][0]["samples"],
                               rtol=1e-3, atol=1e-3)


def test_cancel_stops_sampling(host, comfy_files):
    import comfy.model_management as mm
    import comfy.utils
    cf = comfy_files
    hook = comfy.utils.PROGRESS_BAR_HOOK

    def cancel_after_first(value, total, preview, prompt_id=None, node_id=None):
        hook(value, total, preview, prompt_id, node_id)
        mm.interrupt_current_processing(True)
    comfy.utils.set_progress_bar_global_hook(cancel_after_first)
    try:
        graph = _sample_graph(["load", 0], _load(cf))
        graph["s"]["inputs"]["steps"] = 5
        result = host.run(graph, raise_on_error=False)
    finally:
        comfy.utils.set_progress_bar_global_hook(hook)
        mm.interrupt_current_processing(False)
    assert result.events("execution_interrupted")
    assert len([p for p in result.events("progress") if p["node"] == "s"]) == 1
    # the model is intact afterwards: the same graph still runs to the end
    assert host.run(_sample_graph(["load", 0], _load(cf))).error is None


def test_broken_file_error_reaches_the_user_and_server_keeps_serving(comfy_server, comfy_files, tmp_path):
    cf = comfy_files
    broken = tmp_path / "broken_model.safetensors"
    broken.write_bytes(cf.base.read_bytes()[:4096])
    comfy_server.add_model("checkpoints", "broken_model.safetensors", broken)
    comfy_server.add_model("animatediff_models", cf.MOTION, cf.motion)
    comfy_server.add_model("checkpoints", cf.BASE, cf.base)
    graph = _sample_graph(["load", 0], {"load": {"class_type": "SM_LoadVideoModel", "inputs": {
        "ckpt_name": "broken_model.safetensors", "motion_module": cf.MOTION, "dtype": "auto"}}})
    with pytest.raises(ComfyError) as err:
        comfy_server.run(graph)
    text = json.dumps(err.value.error)
    assert "broken_model.safetensors" in text and "truncated" in text
    graph["load"]["inputs"]["ckpt_name"] = cf.BASE
    entry = comfy_server.run(graph)
    assert entry["outputs"]["out"]["images"]


def test_sdxl_motion_module_error(host, tmp_path):
    from adapters.export import write_checkpoint
    p = write_checkpoint(tmp_path / "mm_sdxl_v10_beta.safetensors", {
        f"down_blocks.{i}.motion_modules.0.temporal_transformer.proj_in.weight": torch.zeros(c, c)
        for i, c in enumerate((320, 640, 1280))})
    host.add_model("animatediff_models", p.name, p)
    graph = _sample_graph(["load", 0], {"load": {"class_type": "SM_LoadVideoModel", "inputs": {
        "ckpt_name": ComfyFilesNames.BASE, "motion_module": p.name, "dtype": "auto"}}})
    result = host.run(graph, raise_on_error=False)
    assert "SDXL motion module" in result.error["exception_message"]
    assert p.name in result.error["exception_message"]


class ComfyFilesNames:
    BASE = "v1-5-pruned-emaonly.safetensors"


def test_cancel_training_keeps_what_was_trained(host, comfy_files):
    """Cancel during training: the graph stops, and the adapter trained so far is saved and loads."""
    import comfy.model_management as mm
    from server import PromptServer
    from adapters.lowrank import LowRankAdapter
    cf = comfy_files
    sent = PromptServer.instance.send_sync

    def cancel_on_second_step(event, data, sid=None):
        sent(event, data, sid)
        if event == "still_moving.loss" and data["step"] == 2:
            mm.interrupt_current_processing(True)
    PromptServer.instance.send_sync = cancel_on_second_step
    graph = _load(cf) | {
        "vids": {"class_type": "SM_GeneratePriorClips", "inputs": {
            "video_model": ["load", 0], "prompts": "a dog", "count": 1, "seed": 0, "frames": 4, "width": 64,
            "height": 64, "steps": 1, "cfg": 5.0}},
        "train": {"class_type": "SM_TrainMotionAdapter", "inputs": {
            "video_model": ["load", 0], "videos": ["vids", 0], "steps": 50, "learning_rate": 1e-4, "rank": 4,
            "batch": 1, "frames": 4, "width": 64, "height": 64, "seed": 0, "mixed_precision": "no",
            "gradient_checkpointing": False, "save_every": 0, "name": "cancelled_run"}},
        "out": {"class_type": "PreviewImage", "inputs": {"images": ["train", 2]}}}
    try:
        result = host.run(graph, raise_on_error=False)
    finally:
        PromptServer.instance.send_sync = sent
        mm.interrupt_current_processing(False)
    assert result.events("execution_interrupted")
    saved = sorted((host.models_dir / "still_moving" / "motion").glob("cancelled_run*.safetensors"))
    assert saved, "Cancel must leave the adapter trained so far"
    adapter = LowRankAdapter.load(saved[-1], "motion")
    assert 2 <= int(adapter.metadata["step"]) < 50


def test_controlnet_nodes_drive_the_video_and_refuse_wrong_files(host, comfy_files):
    """Through the nodes, in one graph (one model load): strength 0 gives the plain video,
    strength 1 changes it; a checkpoint picked in the ControlNet loader fails naming the file."""
    cf = comfy_files

    def controlled(tag, strength, name=cf.CONTROLNET):
        g = _sample_graph([f"apply{tag}", 0], {
            f"cn{tag}": {"class_type": "SM_LoadControlNet", "inputs": {"control_net_name": name, "dtype": "auto"}},
            f"apply{tag}": {"class_type": "SM_ApplyControlNet", "inputs": {
                "video_model": ["load", 0], "control_net": [f"cn{tag}", 0], "image": ["img", 0],
                "strength": strength, "start_percent": 0.0, "end_percent": 1.0}}})
        return {(k + tag if k in ("s", "out") else k): v for k, v in g.items()} | {
            "out" + tag: {"class_type": "PreviewImage", "inputs": {"images": ["s" + tag, 1]}}}
    graph = _sample_graph(["load", 0], _load(cf)) | controlled("0", 0.0) | controlled("1", 1.0) | {
        "img": {"class_type": "EmptyImage", "inputs": {"width": 80, "height": 64, "batch_size": 1, "color": 0xFFFFFF}}}
    out = host.run(graph).outputs
    plain, zero, one = (out[k][0][0]["samples"] for k in ("s", "s0", "s1"))
    torch.testing.assert_close(zero, plain, rtol=0, atol=1e-6)
    assert float((one - plain).norm() / plain.norm()) > 0.1
    host.add_model("controlnet", "oops_checkpoint.safetensors", cf.base)
    bad = controlled("x", 1.0, "oops_checkpoint.safetensors")
    bad["imgx"] = graph["img"]
    bad["applyx"]["inputs"]["image"] = ["imgx", 0]
    result = host.run(_load(cf) | bad, raise_on_error=False)
    message = result.error["exception_message"]
    assert "oops_checkpoint.safetensors" in message and "not a ControlNet" in message
