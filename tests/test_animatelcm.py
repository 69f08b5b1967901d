"""AnimateLCM motion modules (original layout, no positional-encoding keys) load as AnimateLCM:
a computed sinusoidal table of 64 positions, as AnimateDiff-Evolved builds it."""
import math

import torch

from adapters import export, loading
from adapters.detect import motion_module_config
from adapters.files import read_state_dict


def ade_positional_table(length, dim):
    """The table AnimateDiff-Evolved's PositionalEncoding computes (written out independently)."""
    pe = torch.zeros(1, length, dim)
    for pos in range(length):
        for i in range(0, dim, 2):
            angle = pos / (10000.0 ** (i / dim))
            pe[0, pos, i] = math.sin(angle)
            pe[0, pos, i + 1] = math.cos(angle)
    return pe


def write_animatelcm(tiny_files, path):
    tensors = export.motion_module_tensors(tiny_files.motion["v2"])
    tensors = {k: v for k, v in tensors.items() if "pos_encoder" not in k}
    assert tensors and all(".motion_modules." in k for k in tensors)
    export.write_checkpoint(path, tensors)
    return path


def test_animatelcm_detected_with_64_computed_positions(tiny_files, tmp_path):
    path = write_animatelcm(tiny_files, tmp_path / "AnimateLCM_sd15_t2v.ckpt.safetensors")
    version, cfg = motion_module_config(read_state_dict(path), path)
    assert version == "animatelcm" and cfg["motion_max_seq_length"] == 64
    vm = loading.load_video_model(tiny_files.checkpoint, path)
    assert vm.info["motion_version"] == "animatelcm"
    assert vm.unet.config.motion_max_seq_length == 64
    tables = [m.pe for name, m in vm.unet.named_modules() if name.endswith("pos_embed")]
    assert tables
    for pe in tables:
        torch.testing.assert_close(pe, ade_positional_table(64, pe.shape[-1]), rtol=0, atol=1e-5)


def test_animatelcm_computes_what_the_same_weights_with_that_table_compute(tiny_files, tmp_path):
    """Same motion weights: the AnimateLCM file equals a v2 file holding the computed table's
    first 32 rows, so nothing but the table's origin differs."""
    lcm = write_animatelcm(tiny_files, tmp_path / "lcm.safetensors")
    v2_sd = dict(tiny_files.motion["v2"])
    for k, v in v2_sd.items():
        if k.endswith("pos_embed.pe"):
            v2_sd[k] = ade_positional_table(32, v.shape[-1])
    v2 = tmp_path / "v2_table.safetensors"
    export.write_checkpoint(v2, export.motion_module_tensors(v2_sd))
    a = loading.load_video_model(tiny_files.checkpoint, lcm).unet
    b = loading.load_video_model(tiny_files.checkpoint, v2).unet
    g = torch.Generator().manual_seed(0)
    frames = 6
    x = torch.randn(1, 4, frames, 8, 8, generator=g) * torch.linspace(0.5, 2.0, frames).view(1, 1, -1, 1, 1)
    emb = torch.randn(frames, 7, 32, generator=g)
    with torch.no_grad():
        out_a = a(x, torch.tensor(500), encoder_hidden_states=emb).sample
        out_b = b(x, torch.tensor(500), encoder_hidden_states=emb).sample
    torch.testing.assert_close(out_a, out_b, rtol=1e-5, atol=1e-5)
    # and the table matters: without it (zeros) the output moves
    for name, m in b.named_modules():
        if name.endswith("pos_embed"):
            m.pe = torch.zeros_like(m.pe)
    with torch.no_grad():
        out_c = b(x, torch.tensor(500), encoder_hidden_states=emb).sample
    assert (out_c - out_b).abs().max() > 1e-3
