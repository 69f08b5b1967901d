"""adapters.lora: every LoRA format reads into the same canonical form and merges to peft's output.

Tiny models are built in-test; a peft adapter is the reference, and the same weights are written
in each file format, read back and merged into fresh base weights.
"""
import math

import pytest
import torch
import torch.nn.functional as F

from adapters import keys
from adapters.errors import ModelFileError
from adapters.files import save_safetensors
from adapters.lora import LoraPart, merged_weights, read_lora

diffusers = pytest.importorskip("diffusers")
peft = pytest.importorskip("peft")
transformers = pytest.importorskip("transformers")

UNET_CFG = dict(block_out_channels=(32, 64), layers_per_block=2,
                down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32,
                attention_head_dim=8, norm_num_groups=32, sample_size=8)
LAYOUT = keys.UNetLayout(2, 2, (True, False))
CLIP_CFG = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, vocab_size=1000,
                intermediate_size=37)
R, ALPHA = 4, 8.0
SCALE = ALPHA / R


def _lora_layers(model, prefix=""):
    """{module name: (A, B)} of a peft-injected model, B made non-zero so the LoRA does something."""
    from peft.tuners.lora import LoraLayer
    out = {}
    for name, m in model.named_modules():
        if isinstance(m, LoraLayer):
            with torch.no_grad():
                m.lora_B["default"].weight.normal_(0, 0.2)
            out[name[len(prefix):]] = (m.lora_A["default"].weight.detach().clone(),
                                       m.lora_B["default"].weight.detach().clone())
    return out


def _module_names(model):
    return {n for n, _ in model.named_modules() if n}


@pytest.fixture(scope="module")
def tiny_unet_names():
    with torch.device("meta"):
        return _module_names(diffusers.UNet2DConditionModel(**UNET_CFG))


@pytest.fixture(scope="module")
def unet_case():
    """Base weights, module names, peft LoRA tensors, inputs and the peft reference output."""
    from peft import LoraConfig
    torch.manual_seed(0)
    unet = diffusers.UNet2DConditionModel(**UNET_CFG).eval()
    base = {k: v.clone() for k, v in unet.state_dict().items()}
    names = _module_names(unet)
    inputs = dict(sample=torch.randn(1, 4, 8, 8), timestep=torch.tensor([10]),
                  encoder_hidden_states=torch.randn(1, 5, 32))
    with torch.no_grad():
        plain = unet(**inputs).sample
    unet.add_adapter(LoraConfig(r=R, lora_alpha=ALPHA, target_modules=["to_q", "to_k", "to_v", "to_out.0",
                                                                       "proj_in", "conv1"]))
    lora = _lora_layers(unet)
    with torch.no_grad():
        ref = unet(**inputs).sample
    assert (ref - plain).abs().max() > 1e-2  # the LoRA must change the output, or the test proves nothing
    return dict(unet=unet, base=base, names=names, lora=lora, inputs=inputs, ref=ref)


def _write_unet_lora(fmt, lora, path):
    t = {}
    for name, (a, b) in lora.items():
        if fmt in ("kohya", "kohya_ldm"):
            src = name if fmt == "kohya" else keys.unet_mapper(LAYOUT).backward(name)
            k = "lora_unet_" + src.replace(".", "_")
            if name.endswith("proj_in"):  # as a LoRA trained on a linear proj_in stores it
                a, b = a.flatten(1), b.flatten(1)
            t[f"{k}.lora_down.weight"], t[f"{k}.lora_up.weight"] = a, b
            t[f"{k}.alpha"] = torch.tensor(ALPHA)
        elif fmt == "diffusers":
            t[f"unet.{name}.lora.down.weight"], t[f"unet.{name}.lora.up.weight"] = a, b * SCALE
        elif fmt == "peft":
            t[f"unet.{name}.lora_A.weight"], t[f"unet.{name}.lora_B.weight"] = a, b * SCALE
    return save_safetensors(t, path)


def _run_merged(case, parts):
    unet = diffusers.UNet2DConditionModel(**UNET_CFG).eval()
    unet.load_state_dict(merged_weights(case["base"], parts))
    with torch.no_grad():
        return unet(**case["inputs"]).sample


@pytest.mark.parametrize("fmt", ["kohya", "kohya_ldm", "diffusers", "peft"])
def test_unet_lora_formats_match_peft(unet_case, tmp_path, fmt):
    path = _write_unet_lora(fmt, unet_case["lora"], tmp_path / f"{fmt}.safetensors")
    lw = read_lora(path, unet_module_names=unet_case["names"])
    assert lw.format == fmt.replace("_ldm", "")
    assert set(lw.unet) == set(unet_case["lora"]) and not lw.text_encoder and not lw.motion
    assert any(n.startswith("up_blocks.1.attentions") for n in lw.unet)  # up-path LDM names too
    torch.testing.assert_close(_run_merged(unet_case, lw.unet), unet_case["ref"], atol=1e-5, rtol=1e-5)


def test_unet_lora_saved_by_diffusers_uses_metadata_alpha(unet_case, tmp_path):
    """diffusers' save_lora_adapter keeps B unscaled and r/lora_alpha in the safetensors metadata."""
    unet_case["unet"].save_lora_adapter(str(tmp_path))
    path = next(tmp_path.glob("*.safetensors"))
    lw = read_lora(path, unet_module_names=unet_case["names"])
    assert lw.format == "peft"
    assert all(p.alpha == ALPHA for p in lw.unet.values())
    torch.testing.assert_close(_run_merged(unet_case, lw.unet), unet_case["ref"], atol=1e-5, rtol=1e-5)


def test_unet_kohya_lora_with_default_sd15_names(tmp_path):
    """Without module names, SD1.5's are used; LDM-style kohya names resolve through them."""
    t = {}
    for k in ("lora_unet_input_blocks_1_1_proj_in", "lora_unet_middle_block_1_transformer_blocks_0_attn2_to_out_0",
              "lora_unet_output_blocks_3_0_skip_connection", "lora_unet_down_blocks_2_resnets_1_conv2"):
        t[k + ".lora_down.weight"], t[k + ".lora_up.weight"] = torch.randn(2, 8), torch.randn(8, 2)
    t.update(_kohya("lora_te_text_model_encoder_layers_11_mlp_fc2", (2, 8), (8, 2)))
    lw = read_lora(save_safetensors(t, tmp_path / "l.safetensors"))
    # the installed transformers decides whether names keep the "text_model." level
    assert [n.removeprefix("text_model.") for n in lw.text_encoder] == ["encoder.layers.11.mlp.fc2"]
    assert set(lw.unet) == {"down_blocks.0.attentions.0.proj_in",
                            "mid_block.attentions.0.transformer_blocks.0.attn2.to_out.0",
                            "up_blocks.1.resnets.0.conv_shortcut", "down_blocks.2.resnets.1.conv2"}


def test_every_sd15_module_resolves_from_kohya_ldm_names(tmp_path):
    """Every linear/conv of the real-size SD1.5 UNet, written under its LDM-style kohya name, reads back."""
    with torch.device("meta"):
        unet = diffusers.UNet2DConditionModel(cross_attention_dim=768)
    layout = keys.UNetLayout(4, 2, (True, True, True, False))
    mapper = keys.unet_mapper(layout)
    leaves = {n for n, m in unet.named_modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))}
    t = {}
    for n in leaves:
        t.update(_kohya("lora_unet_" + keys.underscored(mapper.backward(n)), (1, 1), (1, 1)))
    lw = read_lora(save_safetensors(t, tmp_path / "all.safetensors"), layout=layout)
    assert set(lw.unet) == leaves and len(leaves) > 250


@pytest.fixture(scope="module")
def clip_case():
    from peft import LoraConfig, get_peft_model
    torch.manual_seed(1)
    model = transformers.CLIPTextModel(transformers.CLIPTextConfig(**CLIP_CFG)).eval()
    base = {k: v.clone() for k, v in model.state_dict().items()}
    names = _module_names(model)
    ids = torch.randint(0, 1000, (1, 7))
    peft_model = get_peft_model(model, LoraConfig(r=R, lora_alpha=ALPHA, target_modules=[
        "q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"]))
    lora = _lora_layers(peft_model, prefix="base_model.model.")
    with torch.no_grad():
        ref = peft_model(input_ids=ids).last_hidden_state
    return dict(peft=peft_model, base=base, names=names, lora=lora, ids=ids, ref=ref)


def _run_clip(case, parts):
    model = transformers.CLIPTextModel(transformers.CLIPTextConfig(**CLIP_CFG)).eval()
    model.load_state_dict(merged_weights(case["base"], parts))
    with torch.no_grad():
        return model(input_ids=case["ids"]).last_hidden_state


def test_text_encoder_kohya_lora_matches_peft(clip_case, tmp_path):
    t = {}
    for name, (a, b) in clip_case["lora"].items():
        # kohya names always have transformers 4's "text_model." level; transformers 5 has none
        k = "lora_te_text_model_" + name.removeprefix("text_model.").replace(".", "_")
        t[f"{k}.lora_down.weight"], t[f"{k}.lora_up.weight"], t[f"{k}.alpha"] = a, b, torch.tensor(ALPHA)
    lw = read_lora(save_safetensors(t, tmp_path / "te.safetensors"), text_module_names=clip_case["names"])
    assert lw.format == "kohya" and not lw.unet and set(lw.text_encoder) == set(clip_case["lora"])
    assert len(lw.text_encoder) == 12
    torch.testing.assert_close(_run_clip(clip_case, lw.text_encoder), clip_case["ref"], atol=1e-5, rtol=1e-5)


def test_text_encoder_peft_save_pretrained_matches_peft(clip_case, tmp_path):
    """peft's own files: base_model.model. prefix, alpha in the sibling adapter_config.json."""
    clip_case["peft"].save_pretrained(str(tmp_path))
    lw = read_lora(tmp_path / "adapter_model.safetensors", text_module_names=clip_case["names"])
    assert lw.format == "peft" and set(lw.text_encoder) == set(clip_case["lora"])
    assert all(p.alpha == ALPHA for p in lw.text_encoder.values())
    torch.testing.assert_close(_run_clip(clip_case, lw.text_encoder), clip_case["ref"], atol=1e-5, rtol=1e-5)


def test_old_diffusers_attn_procs_names(tmp_path):
    t = {}
    base = "down_blocks.0.attentions.0.transformer_blocks.0.attn1"
    for proj in ("to_q", "to_out"):
        t[f"{base}.processor.{proj}_lora.down.weight"] = torch.randn(2, 32)
        t[f"{base}.processor.{proj}_lora.up.weight"] = torch.randn(32, 2)
    te = "text_encoder.text_model.encoder.layers.0.self_attn"
    t[f"{te}.to_k_lora.down.weight"], t[f"{te}.to_k_lora.up.weight"] = torch.randn(2, 32), torch.randn(32, 2)
    t[f"{te}.v_proj.lora_linear_layer.down.weight"] = torch.randn(2, 32)
    t[f"{te}.v_proj.lora_linear_layer.up.weight"] = torch.randn(32, 2)
    text_names = {"text_model.encoder.layers.0.self_attn.k_proj", "text_model.encoder.layers.0.self_attn.v_proj"}
    lw = read_lora(save_safetensors(t, tmp_path / "procs.safetensors"), text_module_names=text_names)
    assert lw.format == "diffusers"
    assert set(lw.unet) == {f"{base}.to_q", f"{base}.to_out.0"}
    assert set(lw.text_encoder) == text_names
    p = lw.unet[f"{base}.to_q"]
    torch.testing.assert_close(p.delta((32, 32)), t[f"{base}.processor.to_q_lora.up.weight"]
                               @ t[f"{base}.processor.to_q_lora.down.weight"])


def test_motion_lora_original_layout_round_trip(tmp_path):
    adapter = diffusers.MotionAdapter(block_out_channels=(32, 64), motion_layers_per_block=2,
                                      motion_norm_num_groups=32, motion_num_attention_heads=2,
                                      motion_max_seq_length=8)
    modules = [n for n in _module_names(adapter) if n.endswith(("to_q", "to_k", "to_v", "to_out.0"))]
    assert "down_blocks.0.motion_modules.0.transformer_blocks.0.attn1.to_q" in modules
    t = {}
    for n in modules:
        t[keys.motion_lora_module_to_original(n, "down")] = torch.randn(2, 32)
        t[keys.motion_lora_module_to_original(n, "up")] = torch.randn(32, 2)
    assert ("down_blocks.0.motion_modules.0.temporal_transformer.transformer_blocks.0.attention_blocks.0"
            ".processor.to_q_lora.down.weight") in t
    path = save_safetensors(t, tmp_path / "motion.safetensors")
    for names in (None, _module_names(adapter)):  # default SD1.5 names know no motion modules: unchecked
        lw = read_lora(path, unet_module_names=names)
        assert lw.format == "animatediff_motion_lora" and not lw.unet and not lw.text_encoder
        assert set(lw.motion) == set(modules)
        back = {}
        for n, p in lw.motion.items():
            assert p.alpha is None and p.scale == 1.0
            back[keys.motion_lora_module_to_original(n, "down")] = p.down
            back[keys.motion_lora_module_to_original(n, "up")] = p.up
        assert back.keys() == t.keys() and all(torch.equal(back[k], t[k]) for k in t)


# ---------------------------------------------------------------- delta shapes

def test_delta_conv_kxk_and_linear_to_conv1x1():
    torch.manual_seed(2)
    x = torch.randn(1, 6, 5, 5)
    conv = LoraPart(down=torch.randn(3, 6, 3, 3), up=torch.randn(8, 3, 1, 1), alpha=6.0)  # scale 2
    expect = 2 * F.conv2d(F.conv2d(x, conv.down, padding=1), conv.up)
    torch.testing.assert_close(F.conv2d(x, conv.delta((8, 6, 3, 3)), padding=1), expect, atol=1e-4, rtol=1e-4)
    lin = LoraPart(down=torch.randn(3, 6), up=torch.randn(8, 3), alpha=None)
    d = lin.delta((8, 6, 1, 1), torch.float16)
    assert d.shape == (8, 6, 1, 1) and d.dtype == torch.float16
    with pytest.raises(ValueError, match="does not fit"):
        lin.delta((8, 7))


def test_delta_locon_mid():
    torch.manual_seed(3)
    x = torch.randn(1, 6, 5, 5)
    p = LoraPart(down=torch.randn(3, 6, 1, 1), up=torch.randn(8, 3, 1, 1), alpha=3.0,
                 mid=torch.randn(3, 3, 3, 3))
    expect = F.conv2d(F.conv2d(F.conv2d(x, p.down), p.mid, padding=1), p.up)
    torch.testing.assert_close(F.conv2d(x, p.delta((8, 6, 3, 3)), padding=1), expect, atol=1e-4, rtol=1e-4)


# ---------------------------------------------------------------- refusals

def _kohya(name, down_shape=(4, 32), up_shape=(32, 4)):
    return {f"{name}.lora_down.weight": torch.randn(*down_shape), f"{name}.lora_up.weight": torch.randn(*up_shape),
            f"{name}.alpha": torch.tensor(4.0)}


@pytest.mark.parametrize("tensors", [
    _kohya("lora_unet_input_blocks_4_1_transformer_blocks_1_attn1_to_q", (4, 640), (640, 4)),
    _kohya("lora_te1_text_model_encoder_layers_0_self_attn_q_proj", (4, 768), (768, 4)),
    {"unet.down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.lora_A.weight": torch.randn(4, 2048),
     "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.lora_B.weight": torch.randn(32, 4)},
], ids=["depth", "te1", "context_width"])
def test_sdxl_lora_refused(tmp_path, tiny_unet_names, tensors):
    path = save_safetensors(tensors, tmp_path / "xl.safetensors")
    with pytest.raises(ModelFileError, match="SDXL"):
        read_lora(path, unet_module_names=tiny_unet_names)


def test_rank_mismatch_names_module(tmp_path, tiny_unet_names):
    t = _kohya("lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q", (4, 32), (32, 8))
    with pytest.raises(ModelFileError, match=r"attn1\.to_q.*rank 4.*rank 8"):
        read_lora(save_safetensors(t, tmp_path / "r.safetensors"), unet_module_names=tiny_unet_names)


def test_unknown_module_names_listed(tmp_path, tiny_unet_names):
    t = {**_kohya("lora_unet_down_blocks_0_attentions_0_proj_in"), **_kohya("lora_unet_no_such_block_proj")}
    with pytest.raises(ModelFileError, match="1 of 2 .*lora_unet_no_such_block_proj"):
        read_lora(save_safetensors(t, tmp_path / "u.safetensors"), unet_module_names=tiny_unet_names)


def test_non_lora_file_refused(tmp_path):
    path = save_safetensors({"foo.weight": torch.randn(3, 3), "bar.bias": torch.randn(3)}, tmp_path / "x.safetensors")
    with pytest.raises(ModelFileError, match="not a LoRA"):
        read_lora(path)


def test_lycoris_loha_refused(tmp_path):
    t = {f"lora_unet_down_blocks_0_attentions_0_proj_in.hada_w{i}_{ab}": torch.randn(4, 4)
         for i in (1, 2) for ab in "ab"}
    with pytest.raises(ModelFileError, match="LoHa.*not supported"):
        read_lora(save_safetensors(t, tmp_path / "loha.safetensors"))


def test_truncated_file_names_the_file(tmp_path):
    path = save_safetensors(_kohya("lora_unet_down_blocks_0_attentions_0_proj_in", (4, 32), (32, 4)),
                            tmp_path / "cut.safetensors")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelFileError) as err:
        read_lora(path)
    assert str(path) in str(err.value)


def test_scale_conventions():
    assert LoraPart(torch.zeros(4, 2), torch.zeros(2, 4), alpha=8.0).scale == 2.0
    assert LoraPart(torch.zeros(4, 2), torch.zeros(2, 4), alpha=None).scale == 1.0
    assert math.isclose(LoraPart(torch.zeros(4, 2), torch.zeros(2, 4), alpha=1.0).scale, 0.25)
