"""Exports load through the users' loaders (ComfyUI's LoraLoader and CheckpointLoaderSimple, the
pack's MotionLoRA loader, diffusers' from_single_file) and equal the pack's merged model; they
are written atomically, never over a file, never outside their folder."""
import logging

import pytest
import torch

from adapter_models import trained  # noqa: F401  (fixture)


@pytest.fixture(scope="module")
def host(comfy, comfy_files, trained):
    cf = comfy_files
    for kind, name, path in [("checkpoints", cf.BASE, cf.base), ("checkpoints", cf.CUSTOM, cf.custom),
                             ("animatediff_models", cf.MOTION, cf.motion)]:
        comfy.add_model(kind, name, path)
    for kind, path in trained.files.items():
        comfy.add_model("still_moving", f"{kind}/exports_{path.name}", path)
    return comfy


class Warnings(logging.Handler):
    """ComfyUI's log lines while a graph runs (it reports unloaded LoRA keys there)."""

    def __enter__(self):
        self.lines = []
        logging.getLogger().addHandler(self)
        return self

    def emit(self, record):
        self.lines.append(record.getMessage())

    def __exit__(self, *exc):
        logging.getLogger().removeHandler(self)


def _merged(model, adapter, strength=1.0):
    from adapters.video_model import AdapterPatch
    return model.with_patch(AdapterPatch(adapter, strength, True, "test"))


def _unet_tensors(model):
    with model.patched():
        return {k: v.clone() for k, v in model.unet.state_dict().items()}


def _load(cf):
    return {"load": {"class_type": "SM_LoadVideoModel", "inputs": {"ckpt_name": cf.BASE, "motion_module": cf.MOTION,
                                                                  "dtype": "fp32"}},
            "inj": {"class_type": "SM_InjectCheckpoint", "inputs": {"video_model": ["load", 0], "ckpt_name": cf.CUSTOM,
                                                                     "weight": 1.0, "inject_text_encoder": True}}}


def test_spatial_lora_export_loads_in_comfyui_and_equals_the_merged_model(host, comfy_files, trained):
    import comfy.lora
    from adapters import keys
    from adapters.files import read_metadata
    cf = comfy_files
    graph = _load(cf) | {"exp": {"class_type": "SM_ExportSpatialLoRA", "inputs": {
        "video_model": ["inj", 0], "adapter_name": "spatial/exports_spatial_adapters.safetensors", "strength": 1.0,
        "filename": "still_moving/spatial_lora", "dtype": "fp32"}}}
    path = host.run(graph).outputs["exp"][0][0]
    assert path.endswith("loras/still_moving/spatial_lora.safetensors")
    meta = read_metadata(path)
    assert meta["exact_for"] == cf.CUSTOM and meta["still_moving_export"] == "spatial_lora"

    def lora_loader(name):
        with Warnings() as log:
            result = host.run({"ck": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": cf.CUSTOM}},
                               "lora": {"class_type": "LoraLoader", "inputs": {
                                   "model": ["ck", 0], "clip": ["ck", 1], "lora_name": name, "strength_model": 1.0,
                                   "strength_clip": 1.0}},
                               "img": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8,
                                                                              "batch_size": 1, "color": 0}},
                               "out": {"class_type": "PreviewImage", "inputs": {"images": ["img", 0]}}},
                              outputs=["lora"])
        return result.outputs["lora"][0][0], [line for line in log.lines if "lora key not loaded" in line]
    patcher, unloaded = lora_loader("still_moving/spatial_lora.safetensors")
    assert not unloaded
    # (the check sees ComfyUI's warning when there is one)
    from adapters.files import read_state_dict, save_safetensors
    odd = read_state_dict(path) | {"lora_unet_no_such_layer.lora_down.weight": torch.zeros(4, 320)}
    save_safetensors(odd, host.models_dir / "loras" / "still_moving" / "odd.safetensors")
    assert lora_loader("still_moving/odd.safetensors")[1]
    pack = _unet_tensors(_merged(trained.custom, trained.spatial))
    mapper = keys.unet_mapper(trained.plain.info["layout"])
    sd = patcher.model.state_dict()
    expected = {f"diffusion_model.{mapper.backward(n)}.{leaf}": f"{n}.{leaf}" for n in trained.spatial.targets
                for leaf in ("weight", "bias") if f"{n}.{leaf}" in pack}
    assert set(patcher.patches) == set(expected)  # every layer patched, and nothing else
    worst = 0.0
    for key, name in expected.items():
        w = comfy.lora.calculate_weight(patcher.patches[key], sd[key].float().clone(), key)
        torch.testing.assert_close(w, pack[name], rtol=1e-5, atol=1e-6)
        worst = max(worst, (w - pack[name]).abs().max().item())
    bare = _unet_tensors(trained.custom)
    assert max((pack[n] - bare[n]).abs().max().item() for n in expected.values()) > 1000 * max(worst, 1e-9)


def test_spatial_lora_export_loads_through_the_packs_inject_lora(comfy_files, trained, tmp_path):
    """The exported LoRA (bias changes as diff_b) is read by the pack's own LoRA reader: injected on
    the customized model it gives the merged model, biases included."""
    from adapters import export, inject
    from adapters.files import read_state_dict
    path = export.export_spatial_lora(trained.custom, trained.spatial, tmp_path / "sa_lora.safetensors")
    assert any(k.endswith(".diff_b") for k in read_state_dict(path))
    ours = _unet_tensors(inject.inject_lora(trained.custom, path))
    pack = _unet_tensors(_merged(trained.custom, trained.spatial))
    changed = [k for k in pack if not torch.equal(pack[k], _unet_tensors(trained.custom)[k])]
    assert any(k.endswith(".bias") for k in changed) and any(k.endswith(".weight") for k in changed)
    for k in pack:
        torch.testing.assert_close(ours[k], pack[k], rtol=1e-5, atol=1e-6)


def test_spatial_lora_export_refuses_what_it_cannot_carry(host, comfy_files, trained, tmp_path):
    from adapters import export, inject
    from adapters.video_model import AdapterPatch
    with pytest.raises(ValueError, match="needs Spatial Adapters, got a motion adapter"):
        export.export_spatial_lora(trained.custom, trained.motion, tmp_path / "x.safetensors")
    slider = trained.custom.with_patch(AdapterPatch(trained.motion, -0.3, True, "motion_adapter.safetensors"))
    with pytest.raises(ValueError, match="motion_adapter.safetensors.*would leave it out"):
        export.export_spatial_lora(slider, trained.spatial, tmp_path / "x.safetensors")
    with pytest.raises(ValueError, match="trained for another customized T2I model"):
        export.export_spatial_lora(inject.inject_lora(trained.custom, comfy_files.lora), trained.spatial,
                                   tmp_path / "x.safetensors", source="sa.safetensors")
    assert not list(tmp_path.iterdir())


def test_motion_lora_export_loads_as_a_motion_lora_with_alpha_baked_in(host, comfy_files, trained, tmp_path):
    import re
    from adapters import export, inject
    from adapters.customize import TemporalLoRA
    from adapters.files import read_metadata, read_state_dict
    cf = comfy_files
    graph = {"exp": {"class_type": "SM_ExportMotionLoRA", "inputs": {
        "adapter_name": "motion/exports_motion_adapter.safetensors", "alpha": -0.5,
        "filename": "motion_adapter_minus_half", "dtype": "fp32"}}}
    path = host.run(graph).outputs["exp"][0][0]
    assert path.endswith("animatediff_motion_lora/motion_adapter_minus_half.safetensors")
    meta = read_metadata(path)
    assert meta["motion_module"] == cf.MOTION and meta["alpha"] == "-0.5"
    layout = re.compile(r"^(down_blocks\.\d+|mid_block|up_blocks\.\d+)\.motion_modules\.\d+\.temporal_transformer\."
                        r"transformer_blocks\.0\.attention_blocks\.[01]\.processor\.to_(q|k|v|out)_lora\."
                        r"(down|up)\.weight$")
    sd = read_state_dict(path)
    assert all(layout.match(k) for k in sd) and len(sd) == 2 * len(trained.motion.targets)
    assert any(k.startswith("mid_block.") for k in sd)  # v2: the mid block's motion module too

    # the pack's Load MotionLoRA at strength 1 = the Motion Adapter attached at α = -0.5 (merged)
    loaded = host.run(_load(cf) | {"ml": {"class_type": "SM_LoadMotionLoRA", "inputs": {
        "video_model": ["load", 0], "lora_name": "motion_adapter_minus_half.safetensors", "strength": 1.0}},
        "img": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}},
        "out": {"class_type": "PreviewImage", "inputs": {"images": ["img", 0]}}}, outputs=["ml"]).outputs["ml"][0][0]
    got, want = _unet_tensors(loaded), _unet_tensors(_merged(trained.plain, trained.motion, -0.5))
    plain = _unet_tensors(trained.plain)
    changed = [f"{n}.weight" for n in trained.motion.targets]
    for k in changed:
        torch.testing.assert_close(got[k], want[k], rtol=1e-5, atol=1e-6)
        # the weight moved by the Motion Adapter's own update at α = -0.5, and by a visible amount
        torch.testing.assert_close(got[k] - plain[k], want[k] - plain[k], rtol=1e-5, atol=1e-7)
        assert float((got[k] - plain[k]).norm() / plain[k].norm()) > 0.03

    # a Customize-A-Video temporal LoRA (Q/K/V/out) goes the same way, to_out included
    temporal = TemporalLoRA.for_model(trained.plain, rank=4, seed=5)
    with torch.no_grad():
        for p in temporal.up.values():
            p.normal_(0, 0.1)
    out = export.export_motion_lora(temporal, tmp_path / "temporal.safetensors", alpha=0.8, dtype="fp32")
    assert any(".to_out_lora." in k for k in read_state_dict(out))
    got = _unet_tensors(inject.attach_motion_lora(trained.plain, out, 1.0))
    want = _unet_tensors(_merged(trained.plain, temporal, 0.8))
    for n in temporal.targets:
        torch.testing.assert_close(got[f"{n}.weight"], want[f"{n}.weight"], rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="MotionLoRA export needs a Motion Adapter"):
        export.export_motion_lora(trained.spatial, tmp_path / "no.safetensors")


def test_merged_checkpoint_loads_in_comfyui_in_the_pack_and_in_diffusers(host, comfy_files, trained, tmp_path):
    from diffusers import StableDiffusionPipeline
    from adapters import export, keys, loading
    cf = comfy_files
    path = export.export_merged_checkpoint(trained.custom, trained.spatial, tmp_path / "merged.safetensors",
                                           source="spatial_adapters.safetensors", dtype="fp32")
    pack = _unet_tensors(_merged(trained.custom, trained.spatial))
    pack_spatial = {k: v for k, v in pack.items() if ".motion_modules." not in k}

    host.add_model("checkpoints", "still_moving_merged.safetensors", path)
    result = host.run({"ck": {"class_type": "CheckpointLoaderSimple", "inputs": {
        "ckpt_name": "still_moving_merged.safetensors"}},
        "img": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}},
        "out": {"class_type": "PreviewImage", "inputs": {"images": ["img", 0]}}}, outputs=["ck"])
    sd = result.outputs["ck"][0][0].model.state_dict()
    mapper = keys.unet_mapper(trained.plain.info["layout"])
    for name, value in pack_spatial.items():
        torch.testing.assert_close(sd[f"diffusion_model.{mapper.backward(name)}"].float(), value, rtol=0, atol=0)

    # the pack's own loader reads it back: its UNet is the merged one, the motion module untouched
    again = _unet_tensors(loading.load_video_model(path, cf.motion))
    for name, value in pack.items():
        torch.testing.assert_close(again[name], value, rtol=0, atol=0)
    with trained.custom.patched():
        text = {k: v.clone() for k, v in trained.custom.text_encoder.state_dict().items()}

    # diffusers, offline: the configs come from a local folder the library writes
    config = export.write_diffusers_config(trained.plain, tmp_path / "sd15_config")
    pipe = StableDiffusionPipeline.from_single_file(str(path), config=str(config), local_files_only=True,
                                                    safety_checker=None, requires_safety_checker=False)
    for name, value in pipe.unet.state_dict().items():
        torch.testing.assert_close(value.float(), pack_spatial[name], rtol=0, atol=0)
    te = pipe.text_encoder.state_dict()
    for name, value in text.items():
        other = te.get(name, te.get(f"text_model.{name}"))
        if other is not None:
            torch.testing.assert_close(other.float(), value.float(), rtol=0, atol=0)


def test_exports_never_overwrite_never_escape_and_write_atomically(host, comfy_files, trained, tmp_path,
                                                                    monkeypatch):
    import safetensors.torch
    from adapters import export
    cf = comfy_files
    graph = {"exp": {"class_type": "SM_ExportMotionLoRA", "inputs": {
        "adapter_name": "motion/exports_motion_adapter.safetensors", "alpha": 0.0, "filename": "taken",
        "dtype": "fp16"}}}
    first = host.run(graph).outputs["exp"][0][0]
    before = open(first, "rb").read()
    message = host.run(graph, raise_on_error=False).error["exception_message"]
    assert "taken.safetensors already exists" in message and "refusing to overwrite" in message
    assert open(first, "rb").read() == before
    graph["exp"]["inputs"]["filename"] = "../checkpoints/escaped"
    message = host.run(graph, raise_on_error=False).error["exception_message"]
    assert "points outside" in message
    assert not (host.models_dir / "checkpoints" / "escaped.safetensors").exists()

    # a write that fails half-way leaves neither the file nor a temporary file behind
    real = safetensors.torch.save_file

    def half(tensors, filename, metadata=None):
        real(dict(list(tensors.items())[:2]), filename, metadata)
        raise OSError("disk full")
    monkeypatch.setattr(safetensors.torch, "save_file", half)
    with pytest.raises(OSError, match="disk full"):
        export.export_motion_lora(trained.motion, tmp_path / "broken.safetensors", -0.3)
    assert not list(tmp_path.iterdir())
    monkeypatch.undo()

    # the CLI: the same export, and the same refusal
    from adapters import cli
    out = tmp_path / "cli_motion.safetensors"
    assert cli.main(["export", "motion-lora", str(trained.files["motion"]), "--alpha", "-0.25", "--out", str(out)]) == 0
    assert cli.main(["export", "motion-lora", str(trained.files["motion"]), "--alpha", "-0.25", "--out", str(out)]) == 1
    from adapters.files import read_state_dict
    sd = read_state_dict(out)
    name = trained.motion.targets[0]
    up = sd[export.keys.motion_lora_module_to_original(name, "up")].float()
    torch.testing.assert_close(up, -0.25 * trained.motion.factors(name)[1].detach().T, rtol=1e-3, atol=1e-4)


def test_cli_spatial_exports_build_the_model_they_need(comfy_files, trained, tmp_path, capsys):
    from adapters import cli
    from adapters.files import read_metadata
    cf = comfy_files
    out = tmp_path / "cli_lora.safetensors"
    args = ["export", "spatial-lora", str(trained.files["spatial"]), "--checkpoint", str(cf.base), "--motion-module",
            str(cf.motion), "--inject", str(cf.custom), "--out", str(out)]
    assert cli.main(args) == 0 and read_metadata(out)["exact_for"] == cf.CUSTOM
    assert cli.main(["export", "spatial-lora", str(trained.files["spatial"]), "--out", str(tmp_path / "y.safetensors")]) == 1
    assert "needs --checkpoint, --motion-module, --inject" in capsys.readouterr().err
