"""The ComfyUI test host works: graphs of built-in nodes run in-process and on a real server,
and the pack loads the way ComfyUI loads it. (Editor workflows are converted by the real
frontend: tests/test_workflows_in_browser.py.)"""
import pytest

from comfy_host import ComfyError


def image_graph(prefix="smoke"):
    """EmptyImage 64x48 -> ImageScale to 32x24 -> PreviewImage + SaveImage."""
    return {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 48, "batch_size": 2, "color": 0xFF0000}},
        "2": {"class_type": "ImageScale", "inputs": {"image": ["1", 0], "upscale_method": "nearest-exact",
                                                      "width": 32, "height": 24, "crop": "disabled"}},
        "3": {"class_type": "PreviewImage", "inputs": {"images": ["2", 0]}},
        "4": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": prefix}},
    }


def test_pack_loads(comfy):
    assert comfy.pack_loaded, f"ComfyUI could not load the pack:\n{comfy.pack_log}"


def test_in_process_run(comfy):
    result = comfy.run(image_graph("inproc"))
    assert tuple(result.outputs["2"][0][0].shape) == (2, 24, 32, 3)  # raw IMAGE output
    assert result.outputs["2"][0][0][0, 0, 0].tolist() == [1.0, 0.0, 0.0]
    saved = result.ui["4"]["images"]
    assert len(saved) == 2 and all((comfy.output_dir / i["subfolder"] / i["filename"]).is_file() for i in saved)
    assert result.ui["3"]["images"][0]["type"] == "temp"
    assert {d["node"] for d in result.events("executed")} == {"3", "4"}
    assert result.events("execution_success") and result.error is None


def test_in_process_progress_and_errors(comfy, monkeypatch):
    """A node's ProgressBar reaches the recorded messages; validation and execution errors raise."""
    import comfy.utils as cu

    class Steps:
        RETURN_TYPES, FUNCTION, OUTPUT_NODE = ("IMAGE",), "go", True
        INPUT_TYPES = classmethod(lambda cls: {"required": {"image": ("IMAGE",), "fail": ("BOOLEAN", {"default": False})}})

        def go(self, image, fail):
            bar = cu.ProgressBar(3)
            for _ in range(3):
                bar.update(1)
            if fail:
                raise ValueError("boom")
            return (image,)

    monkeypatch.setitem(comfy.nodes.NODE_CLASS_MAPPINGS, "TestSteps", Steps)
    graph = {"1": image_graph()["1"], "2": {"class_type": "TestSteps", "inputs": {"image": ["1", 0], "fail": False}}}
    result = comfy.run(graph)
    assert [(p["value"], p["max"], p["node"]) for p in result.events("progress")] == [(1, 3, "2"), (2, 3, "2"), (3, 3, "2")]

    graph["2"]["inputs"]["fail"] = True
    with pytest.raises(ComfyError, match="boom") as err:
        comfy.run(graph)
    assert err.value.error["node_id"] == "2" and err.value.error["exception_type"] == "ValueError"
    assert comfy.run(graph, raise_on_error=False).error["exception_message"].strip() == "boom"

    bad = image_graph()
    bad["2"]["inputs"]["upscale_method"] = "no-such-method"
    with pytest.raises(ComfyError, match="invalid prompt"):
        comfy.run(bad)


def test_server_run(comfy_server):
    entry = comfy_server.run(image_graph("server"))
    images = entry["outputs"]["4"]["images"]
    assert len(images) == 2
    assert all((comfy_server.base / "output" / i["subfolder"] / i["filename"]).is_file() for i in images)
    assert "upscale_method" in comfy_server.object_info("ImageScale")["input"]["required"]
    with pytest.raises(ComfyError, match="400"):
        comfy_server.post_prompt({"1": image_graph()["1"]})  # no output node


def test_model_folders(comfy, comfy_server, tmp_path):
    """Files dropped with add_model are listed by both hosts, built-in and extra folder kinds."""
    src = tmp_path / "linked.safetensors"
    src.write_bytes(b"x")
    comfy.add_model("checkpoints", "smoke_written.safetensors", b"x")
    comfy.add_model("still_moving", "smoke_linked.safetensors", src)
    assert "smoke_written.safetensors" in comfy.folder_paths.get_filename_list("checkpoints")
    assert comfy.folder_paths.get_full_path("still_moving", "smoke_linked.safetensors")
    ckpts = comfy_server.object_info("CheckpointLoaderSimple")["input"]["required"]["ckpt_name"]
    assert "smoke_written.safetensors" in ckpts[0]


def test_server_has_the_pack_nodes(comfy, comfy_server):
    assert comfy.pack_loaded, comfy.pack_log
    missing = [n for n in sorted(comfy.pack_nodes) if not comfy_server.object_info(n)]
    assert not missing, f"not registered by the server: {missing}\n{comfy_server.log()}"
