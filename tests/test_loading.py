"""Tiny models written in the users' layouts load through the user path and behave identically."""

import pytest
import torch

from adapters import export, keys, loading, norms
import random_models
from adapters.errors import ModelFileError
from adapters.files import read_state_dict


def reference_unet(tiny_files, version, unet_sd=None):
    """A UNetMotionModel built the ordinary way (constructor + strict load) from the source tensors,
    normalizing as the version asks (tests/test_same_function.py pins that normalization)."""
    from diffusers import UNetMotionModel
    cfg = dict(random_models.TINY_UNET, in_channels=4, out_channels=4, use_linear_projection=False)
    mcfg = dict(random_models.MOTION[version], block_out_channels=list(cfg["block_out_channels"]),
                temporal_transformer_layers_per_block=1, motion_num_attention_heads=8)
    model = UNetMotionModel(**loading.motion_model_config(cfg, mcfg))
    state = dict(unet_sd or tiny_files.parts["unet"])
    state.update(tiny_files.motion[version])
    model.load_state_dict(state, strict=True)
    return norms.install(model, norms.mode_for(mcfg)).eval()


def same(a, b):
    """Equal up to float summation order: tensors read from a file sit at other memory
    alignments than freshly built ones, and CPU kernels then reduce in another order (~1e-6)."""
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    return True


def run_unet(unet, frames=4):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 4, frames, 8, 8, generator=g)
    emb = torch.randn(frames, 7, 32, generator=g)
    with torch.no_grad():
        return unet(x, torch.tensor(500), encoder_hidden_states=emb).sample


@pytest.mark.parametrize("version", ["v1", "v2", "v3"])
def test_video_model_matches_source(tiny_files, version):
    vm = loading.load_video_model(tiny_files.checkpoint, tiny_files.motion_files[version])
    assert vm.info["motion_version"] == version
    ref = reference_unet(tiny_files, version)
    assert same(run_unet(vm.unet), run_unet(ref))
    assert vm.unet.config.motion_max_seq_length == (24 if version == "v1" else 32)


def test_ldm_names_agree_with_diffusers_converter(tiny_files):
    """Our LDM layout is the one diffusers' own single-file converter reads."""
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint, convert_ldm_vae_checkpoint
    sd = read_state_dict(tiny_files.checkpoint)
    cfg = dict(random_models.TINY_UNET, in_channels=4, out_channels=4, sample_size=8)
    theirs = convert_ldm_unet_checkpoint(dict(sd), cfg)
    assert set(theirs) == set(tiny_files.parts["unet"])
    for k, v in theirs.items():
        assert torch.equal(v, tiny_files.parts["unet"][k]), k
    vae_cfg = dict(random_models.TINY_VAE)
    vae_theirs = convert_ldm_vae_checkpoint({k: v for k, v in sd.items() if k.startswith("first_stage_model.")}, vae_cfg)
    assert set(vae_theirs) == set(tiny_files.parts["vae"])
    for k, v in vae_theirs.items():
        assert torch.equal(v.reshape(tiny_files.parts["vae"][k].shape), tiny_files.parts["vae"][k]), k


def test_text_encoder_and_vae_match_source(tiny_files):
    from diffusers import AutoencoderKL
    from transformers import CLIPTextConfig, CLIPTextModel
    vm = loading.load_video_model(tiny_files.checkpoint, tiny_files.motion_files["v2"])
    ref_te = CLIPTextModel(CLIPTextConfig(**random_models.TINY_CLIP)).eval()
    ref_te.load_state_dict(tiny_files.parts["clip"], strict=False)
    ids = torch.tensor([[0, 5, 9, 12, 513]])
    with torch.no_grad():
        assert same(vm.text_encoder(ids)[0], ref_te(ids)[0])
    ref_vae = AutoencoderKL(**random_models.TINY_VAE).eval()
    ref_vae.load_state_dict(tiny_files.parts["vae"])
    z = torch.randn(1, 4, 4, 4)
    with torch.no_grad():
        assert same(vm.vae.decode(z).sample, ref_vae.decode(z).sample)


def test_fp16_ckpt_with_wrapper_and_ema(tiny_files, tmp_path):
    parts = tiny_files.parts
    tensors = export.checkpoint_tensors(parts["unet"], parts["vae"], parts["clip"], parts["layout"],
                                        parts["vae_levels_layers"], torch.float16)
    tensors["model_ema.decay"] = torch.tensor(0.999)
    tensors["model_ema.diffusion_modelinput_blocks00weight"] = torch.zeros(3)
    path = export.write_checkpoint(tmp_path / "half.ckpt", tensors, fmt="ckpt")
    vm = loading.load_video_model(path, tiny_files.motion_files["v2"])
    assert next(vm.unet.parameters()).dtype == torch.float32
    half_ref = {k: v.half().float() for k, v in parts["unet"].items()}
    ref = reference_unet(tiny_files, "v2", half_ref)
    for k, v in dict(ref.named_parameters()).items():
        if ".motion_modules." not in k:
            assert torch.equal(dict(vm.unet.named_parameters())[k], v), k


def test_diffusers_folders(tiny_files, tmp_path):
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel
    root = tmp_path / "pipe"
    unet = UNet2DConditionModel(**random_models.TINY_UNET)
    unet.load_state_dict(tiny_files.parts["unet"])
    unet.save_pretrained(root / "unet")
    vae = AutoencoderKL(**random_models.TINY_VAE)
    vae.load_state_dict(tiny_files.parts["vae"])
    vae.save_pretrained(root / "vae")
    te = CLIPTextModel(CLIPTextConfig(**random_models.TINY_CLIP))
    te.load_state_dict(tiny_files.parts["clip"], strict=False)
    te.save_pretrained(root / "text_encoder")
    from diffusers import MotionAdapter
    adapter = MotionAdapter(block_out_channels=(32, 64), motion_layers_per_block=2, motion_num_attention_heads=8,
                            motion_norm_num_groups=32, motion_max_seq_length=32, use_motion_mid_block=True)
    adapter.load_state_dict(tiny_files.motion["v2"])
    adapter.save_pretrained(tmp_path / "mm")
    vm = loading.load_video_model(root, tmp_path / "mm")
    assert vm.info["motion_version"] == "v2"
    assert same(run_unet(vm.unet), run_unet(reference_unet(tiny_files, "v2")))


def _fake(path, tensors):
    return export.write_checkpoint(path, tensors)


def test_sdxl_checkpoint_refused(tmp_path):
    p = _fake(tmp_path / "sdxl.safetensors", {
        "conditioner.embedders.0.transformer.text_model.embeddings.token_embedding.weight": torch.zeros(4, 4),
        "model.diffusion_model.label_emb.0.0.weight": torch.zeros(4, 4)})
    with pytest.raises(ModelFileError, match="SDXL") as e:
        loading.read_checkpoint(p)
    assert "sdxl.safetensors" in str(e.value)


def test_sd2_context_refused(tiny_files, tmp_path):
    sd = read_state_dict(tiny_files.checkpoint)
    key = next(k for k in sd if k.endswith("attn2.to_k.weight"))
    sd[key] = torch.zeros(sd[key].shape[0], 1024)
    p = _fake(tmp_path / "sd2.safetensors", sd)
    with pytest.raises(ModelFileError, match="SD2"):
        loading.read_checkpoint(p)


def test_motion_modules_of_other_kinds_refused(tmp_path):
    sdxl = {f"down_blocks.{i}.motion_modules.0.temporal_transformer.proj_in.weight": torch.zeros(c, c)
            for i, c in enumerate((320, 640, 1280))}
    with pytest.raises(ModelFileError, match="SDXL motion module"):
        loading.read_motion_module(_fake(tmp_path / "mm_sdxl.safetensors", sdxl))
    hotshot = {"down_blocks.0.temporal_attentions.0.proj_in.weight": torch.zeros(2, 2)}
    with pytest.raises(ModelFileError, match="HotshotXL"):
        loading.read_motion_module(_fake(tmp_path / "hsxl.safetensors", hotshot))


def test_wrong_slot_messages(tiny_files):
    with pytest.raises(ModelFileError, match="motion module, not a checkpoint"):
        loading.read_checkpoint(tiny_files.motion_files["v2"])
    with pytest.raises(ModelFileError, match="no AnimateDiff motion-module"):
        loading.read_motion_module(tiny_files.checkpoint)


def test_truncated_and_empty_files(tiny_files, tmp_path):
    data = tiny_files.checkpoint.read_bytes()
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelFileError, match="truncated") as e:
        loading.load_video_model(cut, tiny_files.motion_files["v2"])
    assert "cut.safetensors" in str(e.value)
    empty = tmp_path / "empty.ckpt"
    empty.write_bytes(b"")
    with pytest.raises(ModelFileError, match="empty"):
        read_state_dict(empty)
    bad_ckpt = tmp_path / "cut.ckpt"
    export.write_checkpoint(bad_ckpt, {"a": torch.zeros(1000)}, fmt="ckpt")
    bad_ckpt.write_bytes(bad_ckpt.read_bytes()[:300])
    with pytest.raises(ModelFileError, match="cut.ckpt"):
        read_state_dict(bad_ckpt)


class Boom:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_pickle_with_code_is_refused(tmp_path, capsys):
    p = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(2)}, "extra": Boom()}, p)
    with pytest.raises(ModelFileError, match="could run code"):
        read_state_dict(p)
    assert "this must never run" not in capsys.readouterr().out


def test_key_mappings_invert():
    layout = keys.UNetLayout(4, 2, (True, True, True, False))
    m = keys.unet_mapper(layout)
    for ldm, dif, kind in m.pairs:
        assert m.forward(ldm + ".weight") == dif + ".weight"
        assert m.backward(dif + ".weight") == ldm + ".weight"
    assert m.forward("input_blocks.1.0.in_layers.2.weight") == "down_blocks.0.resnets.0.conv1.weight"
    assert m.forward("output_blocks.2.1.conv.weight") == "up_blocks.0.upsamplers.0.conv.weight"
    assert m.forward("output_blocks.5.2.conv.weight") == "up_blocks.1.upsamplers.0.conv.weight"
    orig = "up_blocks.1.motion_modules.2.temporal_transformer.transformer_blocks.0.attention_blocks.1.to_out.0.weight"
    new = keys.motion_original_to_diffusers(orig)
    assert new == "up_blocks.1.motion_modules.2.transformer_blocks.0.attn2.to_out.0.weight"
    assert keys.motion_diffusers_to_original(new) == orig
