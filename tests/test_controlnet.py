"""SD1.5 ControlNets: every file layout loads to the same network (checked against diffusers' own
converter), wrong files are refused by name, and the sampler applies strength, start/end, frame
matching and sliding windows as documented."""

import pytest
import torch

from adapters import controlnet, export, keys, loading, sampling
import random_models
from adapters.errors import ModelFileError


@pytest.fixture(scope="module")
def cn_parts():
    return random_models.controlnet_parts("tiny", seed=7)


@pytest.fixture(scope="module")
def cn_file(cn_parts, tmp_path_factory):
    sd, cfg = cn_parts
    path = tmp_path_factory.mktemp("cn") / "control_v11p_sd15_canny.safetensors"
    return export.write_checkpoint(path, export.controlnet_tensors(sd, cfg))


@pytest.fixture(scope="module")
def cn(cn_file):
    return controlnet.load_controlnet(cn_file)


@pytest.fixture(scope="module")
def base(tiny_files):
    return loading.load_video_model(tiny_files.checkpoint, tiny_files.motion_files["v2"])


@pytest.fixture(scope="module")
def prompts(base):
    return sampling.encode_text(base, ["a dog"], "cpu"), sampling.encode_text(base, [""], "cpu")


def _inputs(cfg, seed=0, n=2, size=32):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, 4, size // 8, size // 8, generator=g), torch.tensor(500.0),
            torch.randn(n, 77, cfg["cross_attention_dim"], generator=g), torch.rand(n, 3, size, size, generator=g))


def _run(net, inputs):
    x, t, emb, hint = inputs
    with torch.no_grad():
        down, mid = net(x, t, encoder_hidden_states=emb, controlnet_cond=hint, return_dict=False)
    return list(down) + [mid]


def test_ldm_file_equals_diffusers_conversion(cn, cn_parts, cn_file):
    """Our keys.py mapping gives the tensors diffusers' convert_controlnet_checkpoint gives, and
    the same outputs; the derived config is the one the model was made with."""
    from diffusers import ControlNetModel
    from diffusers.loaders.single_file_utils import convert_controlnet_checkpoint
    from adapters.files import read_state_dict
    sd, cfg = cn_parts
    for k, v in cfg.items():
        assert tuple(getattr(cn.config, k)) == tuple(v) if isinstance(v, tuple) else getattr(cn.config, k) == v, k
    ours = cn.net.state_dict()
    theirs = convert_controlnet_checkpoint(read_state_dict(cn_file), {"layers_per_block": cfg["layers_per_block"]})
    assert set(ours) == set(theirs) == set(sd)
    for k in ours:
        assert torch.equal(ours[k], theirs[k]) and torch.equal(ours[k], sd[k]), k
    ref = ControlNetModel(**cfg).eval()
    ref.load_state_dict(theirs)
    inputs = _inputs(cfg)
    for a, b in zip(_run(cn.net, inputs), _run(ref, inputs)):
        assert torch.equal(a, b)


def test_every_layout_loads_the_same_network(cn, cn_parts, tmp_path, tiny_files):
    from diffusers import ControlNetModel
    sd, cfg = cn_parts
    files = {
        "no_prefix": export.write_checkpoint(tmp_path / "cn_noprefix.safetensors",
                                             export.controlnet_tensors(sd, cfg, prefix="")),
        "pth": tmp_path / "control_sd15_depth.pth",
        "diffusers_file": export.write_checkpoint(tmp_path / "diffusion_pytorch_model.safetensors", dict(sd)),
        "v1.0_with_sd_model": export.write_checkpoint(tmp_path / "control_sd15_full.safetensors", {
            **export.controlnet_tensors(sd, cfg), **export.checkpoint_tensors(
                tiny_files.parts["unet"], tiny_files.parts["vae"], tiny_files.parts["clip"],
                tiny_files.parts["layout"], tiny_files.parts["vae_levels_layers"])}),
    }
    torch.save(export.controlnet_tensors(sd, cfg), files["pth"])  # lllyasviel's .pth: a plain dict
    folder = tmp_path / "diffusers_controlnet"
    ref = ControlNetModel(**cfg)
    ref.load_state_dict(sd)
    ref.save_pretrained(folder)
    files["diffusers_folder"] = folder
    expect = _run(cn.net, _inputs(cfg, seed=1))
    for name, path in files.items():
        other = controlnet.load_controlnet(path)
        for a, b in zip(_run(other.net, _inputs(cfg, seed=1)), expect):
            assert torch.equal(a, b), name


def test_fp16_file_and_shuffle_pooling(cn_parts, tmp_path):
    sd, cfg = cn_parts
    p = export.write_checkpoint(tmp_path / "control_v11e_sd15_shuffle.safetensors",
                                export.controlnet_tensors(sd, cfg, dtype=torch.float16))
    net = controlnet.load_controlnet(p, torch.float32).net
    assert net.dtype == torch.float32 and net.config.global_pool_conditions  # as ComfyUI decides by name
    assert not controlnet.load_controlnet(p.rename(tmp_path / "control_v11p_sd15_canny.safetensors")
                                          ).net.config.global_pool_conditions


def _ldm_like(ctx=2048, extra=None):
    t = {"control_model.input_hint_block.0.weight": torch.zeros(16, 3, 3, 3),
         "control_model.time_embed.0.weight": torch.zeros(4, 4),
         "control_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": torch.zeros(320, ctx)}
    t.update(extra or {})
    return t


@pytest.mark.parametrize("name,tensors,words", [
    ("sdxl_cn.safetensors", _ldm_like(2048), "SDXL ControlNet"),
    ("sdxl_labels.safetensors", _ldm_like(768, {"control_model.label_emb.0.0.weight": torch.zeros(2, 2)}), "SDXL"),
    ("sd21_cn.safetensors", _ldm_like(1024), "SD2.x ControlNet"),
    ("t2iadapter_canny_sd15v2.safetensors", {"conv_in.weight": torch.zeros(2, 2), "body.0.block1.weight": torch.zeros(2)},
     "T2I-Adapter"),
    ("control-lora-canny-rank128.safetensors", {"lora_controlnet": torch.zeros(1),
                                                "input_blocks.1.0.in_layers.2.up": torch.zeros(2)}, "Control-LoRA"),
    ("style_lora.safetensors", {"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.zeros(2, 2)},
     "LoRA"),
    ("flux_cn.safetensors", {"controlnet_blocks.0.weight": torch.zeros(2), "transformer_blocks.0.x": torch.zeros(2)},
     "transformer model"),
    ("control_diff.safetensors", _ldm_like(768, {"difference": torch.zeros(1)}), "difference"),
    ("random.safetensors", {"foo.weight": torch.zeros(2)}, "no ControlNet weights"),
])
def test_wrong_files_refused(tmp_path, name, tensors, words):
    p = export.write_checkpoint(tmp_path / name, tensors)
    with pytest.raises(ModelFileError, match=words) as err:
        controlnet.load_controlnet(p)
    assert name in str(err.value)


def test_checkpoint_and_motion_module_in_the_controlnet_slot(tiny_files):
    with pytest.raises(ModelFileError, match="full Stable Diffusion checkpoint") as err:
        controlnet.load_controlnet(tiny_files.checkpoint)
    assert tiny_files.checkpoint.name in str(err.value) and "models/controlnet" in str(err.value)
    with pytest.raises(ModelFileError, match="motion module"):
        controlnet.load_controlnet(tiny_files.motion_files["v2"])


def test_truncated_file_refused(cn_parts, tmp_path):
    sd, cfg = cn_parts
    t = export.controlnet_tensors(sd, cfg)
    del t["control_model.middle_block_out.0.weight"]
    with pytest.raises(ModelFileError, match="incomplete"):
        controlnet.load_controlnet(export.write_checkpoint(tmp_path / "cut.safetensors", t))


def test_controlnet_for_another_unet_refused(base, tmp_path):
    cfg = dict(random_models.controlnet_config("tiny"), cross_attention_dim=64)
    from diffusers import ControlNetModel
    sd = random_models.random_state(random_models.build_on_meta(ControlNetModel, **cfg), 1)
    other = controlnet.load_controlnet(export.write_checkpoint(tmp_path / "other.safetensors",
                                                               export.controlnet_tensors(sd, cfg)))
    with pytest.raises(ModelFileError, match="text context 64"):
        controlnet.attach(base, other, torch.rand(1, 32, 32, 3))


# ---------------------------------------------------------------- sampling

KW = dict(seed=3, steps=4, cfg=5.0, width=32, height=32, frames=4)


def _sample(model, prompts, **kw):
    cond, uncond = prompts
    return sampling.sample(model, cond, uncond, **{**KW, **kw})


def _video(frames=4, size=48, seed=0):
    return torch.rand(frames, size, size, 3, generator=torch.Generator().manual_seed(seed))


def test_strength_and_schedule_window(base, cn, prompts):
    plain = _sample(base, prompts)
    video = _video()
    zero = _sample(controlnet.attach(base, cn, video, strength=0.0), prompts)
    assert torch.equal(zero, plain)
    never = _sample(controlnet.attach(base, cn, video, strength=1.0, start=0.0, end=0.0), prompts)
    assert torch.equal(never, plain)
    full = _sample(controlnet.attach(base, cn, video, strength=1.0), prompts)
    late = _sample(controlnet.attach(base, cn, video, strength=1.0, start=0.5, end=1.0), prompts)
    assert (full - plain).abs().max() > 1e-3 and (late - plain).abs().max() > 1e-3
    assert (late - full).abs().max() > 1e-4
    weak = _sample(controlnet.attach(base, cn, video, strength=0.5), prompts)
    assert 0 < (weak - plain).abs().mean() < (full - plain).abs().mean()
    assert base.patches == []  # attach never changes the model it was given


def test_active_steps_follow_start_end():
    p = controlnet.ControlPatch(None, torch.zeros(1, 8, 8, 3), 1.0, 0.25, 0.75)
    assert [p.active(i, 8) for i in range(8)] == [False, False, True, True, True, True, False, False]
    assert not any(controlnet.ControlPatch(None, None, 1.0, 0.0, 0.0).active(i, 5) for i in range(5))
    assert all(controlnet.ControlPatch(None, None, 1.0, 0.0, 1.0).active(i, 5) for i in range(5))
    assert not controlnet.ControlPatch(None, None, 0.0, 0.0, 1.0).active(0, 5)


def _record(net):
    """Capture what the ControlNet is called with (hint, embeddings, latents)."""
    calls = []

    def hook(module, args, kwargs):
        calls.append({"x": args[0].clone(), "hint": kwargs["controlnet_cond"].clone(),
                      "emb": kwargs["encoder_hidden_states"].clone(), "scale": kwargs["conditioning_scale"]})
    return calls, net.register_forward_pre_hook(hook, with_kwargs=True)


def test_controlnet_sees_each_frame_with_cfg_embeddings(base, cn, prompts):
    """Per frame, both CFG halves, the UNet's per-frame text embeddings, hints at the output size."""
    video = _video(frames=6, size=40)
    calls, h = _record(cn.net)
    try:
        _sample(controlnet.attach(base, cn, video, strength=0.7), prompts, steps=2)
    finally:
        h.remove()
    cond, uncond = prompts
    hints = controlnet.control_frames(video, 4, 32, 32)  # first 4 of the 6 driving frames
    assert len(calls) == 2
    for c in calls:
        assert c["x"].shape == (8, 4, 4, 4) and c["scale"] == 0.7
        torch.testing.assert_close(c["hint"], torch.cat([hints, hints]))
        torch.testing.assert_close(c["emb"], torch.cat([uncond, cond]).repeat_interleave(4, dim=0))


def test_sliding_windows_slice_control_frames(base, cn, prompts):
    video = _video(frames=10, size=32, seed=2)
    context = sampling.ContextOptions("sliding", 6, 2)
    calls, h = _record(cn.net)
    try:
        out = _sample(controlnet.attach(base, cn, video), prompts, steps=1, frames=10, context=context)
    finally:
        h.remove()
    windows = sampling.context_windows(10, 6, 2)
    assert len(windows) > 1 and len(calls) == len(windows)
    hints = controlnet.control_frames(video, 10, 32, 32)
    for c, idx in zip(calls, windows):
        torch.testing.assert_close(c["hint"], torch.cat([hints[idx], hints[idx]]))
    plain = _sample(base, prompts, steps=1, frames=10, context=context)
    assert (out - plain).abs().max() > 1e-4


def test_one_image_is_used_for_every_frame(base, cn, prompts):
    img = _video(frames=1, seed=4)
    one = _sample(controlnet.attach(base, cn, img), prompts, steps=2)
    repeated = _sample(controlnet.attach(base, cn, img.expand(4, -1, -1, -1)), prompts, steps=2)
    torch.testing.assert_close(one, repeated, rtol=0, atol=1e-6)


def test_too_few_control_frames_is_an_error(base, cn, prompts):
    with pytest.raises(ValueError, match="control images have 3 frames but the video has 4"):
        _sample(controlnet.attach(base, cn, _video(frames=3)), prompts, steps=1)


def test_control_frames_crop_and_resize():
    wide = torch.zeros(1, 20, 40, 3)
    wide[:, :, 10:30] = 1.0  # the centre square
    out = controlnet.control_frames(wide, 2, 16, 16)
    assert out.shape == (2, 3, 16, 16) and torch.equal(out, torch.ones_like(out))  # borders cropped away
    gray = controlnet.control_frames(torch.rand(2, 8, 8, 1), 2, 16, 24)
    assert gray.shape == (2, 3, 16, 24)
    rgba = controlnet.control_frames(torch.rand(2, 8, 8, 4), 2, 8, 8)
    assert rgba.shape == (2, 3, 8, 8)


def test_bad_start_end_and_image_refused(base, cn):
    with pytest.raises(ValueError, match="start <= end"):
        controlnet.attach(base, cn, _video(), start=0.8, end=0.2)
    with pytest.raises(ValueError, match="IMAGE"):
        controlnet.attach(base, cn, torch.rand(4, 3, 32, 32))


def test_roundtrip_names_cover_a_real_size_layout():
    """The real SD1.5 ControlNet layout (names only, no tensors): every lllyasviel key maps and back."""
    from diffusers import ControlNetModel
    cfg = random_models.controlnet_config("real")
    with torch.device("meta"):
        names = list(ControlNetModel(**cfg).state_dict())
    layout = random_models.layout_of(random_models.REAL_UNET)
    ldm = keys.controlnet_diffusers_to_ldm({n: None for n in names}, layout, 6)
    assert "input_hint_block.14.weight" in ldm and "zero_convs.11.0.weight" in ldm
    assert "middle_block_out.0.bias" in ldm and "input_blocks.11.0.out_layers.3.weight" in ldm
    back, unknown = keys.controlnet_ldm_to_diffusers(dict(ldm), layout, 6)
    assert not unknown and set(back) == set(names)
