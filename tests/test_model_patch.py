"""Apply Spatial Adapters to MODEL: on ComfyUI's own checkpoint + LoRA stack, the patched weights
and a UNet call equal the pack's merged model; names map as ComfyUI maps them; bad input is refused."""
import pytest
import torch

from adapter_models import plain_unet, trained  # noqa: F401  (fixture)

STRENGTH, LORA_STRENGTH = 0.7, 0.8


@pytest.fixture(scope="module")
def host(comfy, comfy_files, trained):
    cf = comfy_files
    comfy.add_model("checkpoints", cf.CUSTOM, cf.custom)
    comfy.add_model("loras", cf.LORA, cf.lora)
    for kind, path in trained.files.items():
        comfy.add_model("still_moving", f"{kind}/model_patch_{path.name}", path)
    return comfy


def _graph(cf, adapter_name, strength=STRENGTH, lora=True):
    g = {"ck": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": cf.CUSTOM}},
         "sa": {"class_type": "SM_ApplySpatialAdaptersToModel", "inputs": {
             "model": ["lora" if lora else "ck", 0], "adapter_name": adapter_name, "strength": strength}},
         "img": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}},
         "out": {"class_type": "PreviewImage", "inputs": {"images": ["img", 0]}}}
    if lora:
        g["lora"] = {"class_type": "LoraLoader", "inputs": {"model": ["ck", 0], "clip": ["ck", 1], "lora_name": cf.LORA,
                                                           "strength_model": LORA_STRENGTH, "strength_clip": 1.0}}
    return g


def _pack_model(trained, comfy_files, strength=STRENGTH):
    """The pack's own: customized checkpoint + the same LoRA injected, Spatial Adapters merged."""
    from adapters import inject
    from adapters.video_model import AdapterPatch
    with_lora = inject.inject_lora(trained.custom, comfy_files.lora, LORA_STRENGTH, 1.0)
    return with_lora.with_patch(AdapterPatch(trained.spatial, strength, True, "test"))


def test_patched_model_equals_the_packs_merged_model(host, comfy_files, trained):
    import comfy.lora
    import comfy.model_management
    from adapters import keys
    cf = comfy_files
    patched = host.run(_graph(cf, "spatial/model_patch_spatial_adapters.safetensors"),
                       outputs=["sa"]).outputs["sa"][0][0]
    ours = _pack_model(trained, cf)
    sd = patched.model.state_dict()
    mapper = keys.unet_mapper(trained.plain.info["layout"])
    with ours.patched():
        pack = {k: v.clone() for k, v in trained.plain.unet.state_dict().items()}
    checked = 0
    for name in trained.spatial.targets:
        for leaf in ("weight", "bias"):
            key = f"diffusion_model.{mapper.backward(name)}.{leaf}"
            if f"{name}.{leaf}" not in pack:
                continue  # attention projections have no bias
            kinds = [type(p[1]).__name__ for p in patched.patches[key]]
            assert kinds[-1] == "SpatialAdapterWeight", kinds  # after the LoRA: folded on the LoRA'd weight
            w = comfy.lora.calculate_weight(patched.patches[key], sd[key].float().clone(), key)
            torch.testing.assert_close(w, pack[f"{name}.{leaf}"], rtol=1e-5, atol=1e-6)
            checked += 1
    assert checked == sum(f"{n}.{leaf}" in pack for n in trained.spatial.targets for leaf in ("weight", "bias"))
    # the LoRA really is under the adapters in both (its layers differ from the checkpoint's)
    lora_layer = mapper.backward("down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q")
    lora_key = f"diffusion_model.{lora_layer}.weight"
    assert len(patched.patches[lora_key]) == 2

    # one UNet call through ComfyUI's patched model (as KSampler loads it) = the pack's spatial UNet
    g = torch.Generator().manual_seed(0)
    x, t, ctx = torch.randn(2, 4, 8, 8, generator=g), torch.tensor([999.0, 301.0]), torch.randn(2, 7, 768, generator=g)
    comfy.model_management.load_models_gpu([patched])
    with torch.no_grad():
        native = patched.model.diffusion_model(x, timesteps=t, context=ctx)
        mine = plain_unet(trained.plain, ours)(x, t, ctx).sample
        bare = plain_unet(trained.plain, trained.custom)(x, t, ctx).sample
    torch.testing.assert_close(native, mine, rtol=1e-4, atol=1e-4)
    assert (native - bare).abs().max() > 100 * (native - mine).abs().max()  # the adapters changed the output


def test_pack_names_match_comfyuis_mapping(host, comfy_files, trained):
    """The pack's one key module names every adapter target as ComfyUI's own unet_to_diffusers does."""
    import comfy.utils
    from adapters import keys
    patched = host.run(_graph(comfy_files, "spatial/model_patch_spatial_adapters.safetensors", lora=False),
                       outputs=["ck"]).outputs["ck"][0][0]
    comfy_map = comfy.utils.unet_to_diffusers(patched.model.model_config.unet_config)
    mapper = keys.unet_mapper(trained.plain.info["layout"])
    for name in trained.spatial.targets:
        for leaf in ("weight", "bias"):
            if f"{name}.{leaf}" in comfy_map:
                assert comfy_map[f"{name}.{leaf}"] == f"{mapper.backward(name)}.{leaf}"
    assert all(f"{n}.weight" in comfy_map for n in trained.spatial.targets)


def test_wrong_adapter_and_wrong_model_are_refused(host, comfy_files, trained, tmp_path):
    from adapters.spatial_adapters import SpatialAdapters
    cf = comfy_files
    result = host.run(_graph(cf, "motion/model_patch_motion_adapter.safetensors"), raise_on_error=False,
                      outputs=["sa"])
    message = result.error["exception_message"]
    assert "motion adapter" in message and "spatial" in message

    # an adapter with a layer the MODEL does not have: refused, naming it, never dropped
    shapes = {n: (trained.spatial.down[n.replace(".", "__")].shape[0],) * 2 for n in trained.spatial.targets}
    shapes["down_blocks.3.attentions.0.proj_in"] = (1280, 1280)
    odd = SpatialAdapters(shapes, 4)
    path = odd.save(tmp_path / "other_architecture.safetensors")
    host.add_model("still_moving", "spatial/model_patch_other_architecture.safetensors", path)
    result = host.run(_graph(cf, "spatial/model_patch_other_architecture.safetensors"), raise_on_error=False,
                      outputs=["sa"])
    message = result.error["exception_message"]
    assert "down_blocks.3.attentions.0.proj_in" in message and "no weight in this MODEL" in message
    assert "other_architecture" in message


def test_strength_zero_is_the_model_itself(host, comfy_files, trained):
    import comfy.lora
    patched = host.run(_graph(comfy_files, "spatial/model_patch_spatial_adapters.safetensors", strength=0.0,
                              lora=False), outputs=["sa"]).outputs["sa"][0][0]
    sd = patched.model.state_dict()
    key = next(iter(patched.patches))
    w = sd[key].float().clone()
    assert torch.equal(comfy.lora.calculate_weight(patched.patches[key], w.clone(), key), w)


def test_ade_workflow_runs_with_animatediff_evolved_left_out(host, comfy_files):
    """The shipped ADE workflow is what scripts/make_workflows.py builds; without ADE's nodes (not
    installed here) the rest of its chain, checkpoint -> Apply Spatial Adapters -> KSampler ->
    decode -> WebP, runs as saved."""
    from pathlib import Path
    from model_files import load_script
    g = load_script("scripts/make_workflows.py").still_moving_in_animatediff_evolved()
    shipped = Path(__file__).resolve().parent.parent / "workflows" / f"{g.name}.json"
    assert shipped.read_text() == g.text(), "regenerate it: python scripts/make_workflows.py"
    api = {k: v for k, v in g.api().items() if v["class_type"] != "Note"}
    ade = {k for k, v in api.items() if v["class_type"].startswith("ADE_")}
    assert {api[k]["class_type"] for k in ade} == {"ADE_LoadAnimateDiffModel", "ADE_AnimateDiffLoRALoader",
                                                   "ADE_ApplyAnimateDiffModelSimple", "ADE_UseEvolvedSampling"}
    sa = next(k for k, v in api.items() if v["class_type"] == "SM_ApplySpatialAdaptersToModel")
    ks = next(k for k, v in api.items() if v["class_type"] == "KSampler")
    evolved = api[ks]["inputs"]["model"][0]
    assert api[evolved]["class_type"] == "ADE_UseEvolvedSampling" and api[evolved]["inputs"]["model"] == [sa, 0]
    api = {k: v for k, v in api.items() if k not in ade}
    api[ks]["inputs"]["model"] = [sa, 0]  # what bypassing ADE's nodes in the editor does
    api[sa]["inputs"]["adapter_name"] = "spatial/model_patch_spatial_adapters.safetensors"
    api[ks]["inputs"]["steps"] = 1
    for v in api.values():
        if v["class_type"] == "EmptyLatentImage":
            v["inputs"].update(width=64, height=64, batch_size=2)
    host.add_model("checkpoints", comfy_files.CUSTOM, comfy_files.custom)
    result = host.run(api)
    saved = [v["images"] for v in result.ui.values() if "images" in v]
    assert saved and (host.output_dir / saved[0][0]["subfolder"] / saved[0][0]["filename"]).stat().st_size > 0
