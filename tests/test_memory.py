"""Activation checkpointing of whole blocks: same loss and gradients as without, adapters'
hooks recomputed, everything restored afterwards."""
import contextlib

import pytest
import torch
import torch.nn.functional as F

from adapters import inject, loading, memory
from adapters.motion_adapter import MotionAdapter
from adapters.spatial_adapters import SpatialAdapters


@pytest.fixture(scope="module")
def custom(tiny_files):
    base = loading.load_video_model(tiny_files.checkpoint, tiny_files.motion_files["v2"])
    return inject.inject_checkpoint(base, tiny_files.custom_checkpoint)


def _randomized(adapter, seed, std):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in adapter.up.values():
            p.copy_(torch.randn(p.shape, generator=g) * std)
    return adapter


def _inputs(model, frames=4, size=8):
    g = torch.Generator().manual_seed(5)
    unet = model.unet
    x = torch.randn(1, unet.config.in_channels, frames, size, size, generator=g)
    emb = torch.randn(1, 77, unet.config.cross_attention_dim, generator=g).repeat_interleave(frames, 0)
    noise = torch.randn(x.shape, generator=g)
    return x, emb, noise


def _loss_and_grads(model, adapters, ctx):
    """One training step's loss and the adapters' gradients (Spatial trained, Motion at α=1 via a
    callable as in the training loop)."""
    x, emb, noise = _inputs(model)
    alpha = {"value": 1.0}
    unet = model.unet
    with model.patched():
        handles = []
        for a in adapters:
            a.zero_grad(set_to_none=True)
            handles += a.attach(unet, (lambda: alpha["value"]) if isinstance(a, MotionAdapter) else 1.0)
        unet.train()
        try:
            with ctx(unet):
                loss = F.mse_loss(unet(x, torch.tensor([321]), encoder_hidden_states=emb).sample, noise)
                loss.backward()
        finally:
            unet.eval()
            for h in handles:
                h.remove()
    grads = {f"{a.kind}.{n}": p.grad.clone() for a in adapters for n, p in a.named_parameters()}
    return loss.detach(), grads


@pytest.mark.parametrize("granularity", memory.GRANULARITIES)
def test_gradients_equal_uncheckpointed_with_adapter_hooks(custom, granularity):
    spatial = _randomized(SpatialAdapters.for_model(custom, rank=4, seed=1), 1, 0.05)
    motion = _randomized(MotionAdapter.for_model(custom, rank=4, seed=2), 2, 0.1).requires_grad_(True)
    ref_loss, ref = _loss_and_grads(custom, [spatial, motion], lambda unet: contextlib.nullcontext())
    loss, got = _loss_and_grads(custom, [spatial, motion], lambda unet: memory.checkpointed(unet, granularity))
    assert torch.equal(loss, ref_loss)
    assert set(got) == set(ref)
    nonzero = 0
    for k in ref:
        torch.testing.assert_close(got[k], ref[k], rtol=1e-5, atol=1e-7, msg=k)  # in practice bit-identical
        nonzero += bool(ref[k].abs().sum() > 0)
    # every factor of both adapters gets a gradient (the hooks ran in the recomputation too)
    assert nonzero == len(ref)


def test_checkpointing_saves_less_and_restores_the_model(custom):
    unet = custom.unet
    units = [unet.get_submodule(n) for n in memory.checkpoint_units(unet, "block")]
    assert len(units) == len(unet.down_blocks) + len(unet.up_blocks) + 1
    spatial = _randomized(SpatialAdapters.for_model(custom, rank=4), 1, 0.05)
    x, emb, _ = _inputs(custom)

    def saved(ctx):
        with custom.patched():
            handles = spatial.attach(unet, 1.0)
            try:
                with memory.SavedTensors(exclude=list(unet.parameters())) as s, ctx:
                    unet(x, torch.tensor([321]), encoder_hidden_states=emb)
            finally:
                for h in handles:
                    h.remove()
        return s.bytes

    plain = saved(contextlib.nullcontext())
    unet.enable_gradient_checkpointing()  # diffusers' flags are switched off inside and restored after
    try:
        blocks = saved(memory.checkpointed(unet))
        assert all(getattr(m, "gradient_checkpointing", True) for m in units)
    finally:
        unet.disable_gradient_checkpointing()
    assert blocks < plain / 10
    assert all("forward" not in m.__dict__ for m in units)
    with torch.no_grad(), memory.checkpointed(unet):  # no-grad: plain calls, nothing recomputed
        assert all("forward" in m.__dict__ for m in units)
        unet(x, torch.tensor([321]), encoder_hidden_states=emb)
    assert all("forward" not in m.__dict__ for m in units)


def test_restored_after_an_error(custom):
    unet = custom.unet
    with pytest.raises(RuntimeError, match="boom"):
        with memory.checkpointed(unet, "layer"):
            raise RuntimeError("boom")
    assert not any("forward" in m.__dict__ for m in unet.modules())
    with pytest.raises(ValueError, match="granularity"):
        with memory.checkpointed(unet, "tensor"):
            pass


def test_release_freed_memory_is_scoped():
    from adapters.memory import release_freed_memory
    with release_freed_memory() as applied:
        assert isinstance(applied, bool)
        x = [torch.ones(1 << 18) for _ in range(8)]  # 1 MiB each: own mappings while active
        del x
    from adapters import memory as m
    with release_freed_memory() as outer:
        with release_freed_memory() as inner:  # nests: the outermost one sets and restores
            assert inner == outer
        assert m._release_depth[0] == (1 if outer else 0)
    assert m._release_depth[0] == 0
