"""Lower training memory: activation checkpointing of the whole video UNet, block by block.

diffusers' ``enable_gradient_checkpointing()`` on a ``UNetMotionModel`` recomputes the resnets,
the spatial transformers and the mid-block motion module, but not the motion modules of the
down and up blocks, so their activations (the temporal attention of every resolution, on all
frames) stay saved for the backward pass (peaks in ``benchmarks/README.md``).

``checkpointed(unet)`` instead runs each down / mid / up block (resnets, spatial transformers,
motion modules, samplers, and the adapters' forward hooks on their layers, which run inside
the layers' forward) under ``torch.utils.checkpoint.checkpoint(use_reentrant=False)``: only the
blocks' inputs and outputs are kept, and each block is recomputed, hooks included, when the
backward pass reaches it. ``granularity="layer"`` checkpoints each resnet / transformer /
motion module / sampler inside the blocks instead (lower peak, more saved boundaries).

    with checkpointed(unet):
        loss = F.mse_loss(unet(x, t, encoder_hidden_states=emb).sample, noise)
        loss.backward()

Hooks are read at recomputation time, so anything they read (e.g. the Motion Adapter's α in
the training loop) must not change between a step's forward and its backward.

On the CPU, checkpointing alone barely lowers the peak RSS: glibc's malloc serves every block
under its dynamic mmap threshold (which climbs to 32 MiB as soon as a large tensor is freed)
from its heap and keeps what is freed there, fragmented, instead of giving it back, so the
activations recomputed and freed block after block pile up as retained heap
(``benchmarks/bench_training_memory.py``). ``release_freed_memory()`` (used by ``checkpointed`` on the
CPU) sets a fixed 64 KiB mmap threshold for the block, so every activation is its own mapping,
returned to the system when freed.
"""
import contextlib
import ctypes
import functools
import os
import re
import sys

import torch
from torch.utils.checkpoint import checkpoint

GRANULARITIES = ("block", "layer")
_BLOCK = re.compile(r"(down_blocks\.\d+|up_blocks\.\d+|mid_block)")
_LAYER = re.compile(r"(down_blocks\.\d+|up_blocks\.\d+|mid_block)\."
                    r"(resnets|attentions|motion_modules|downsamplers|upsamplers)\.\d+")


def checkpoint_units(unet, granularity="block"):
    """Names of the submodules ``checkpointed`` runs under activation checkpointing."""
    if granularity not in GRANULARITIES:
        raise ValueError(f"unknown granularity '{granularity}'; choose one of {', '.join(GRANULARITIES)}")
    pattern = _BLOCK if granularity == "block" else _LAYER
    return [n for n, _ in unet.named_modules() if pattern.fullmatch(n)]


def _checkpointing(forward):
    @functools.wraps(forward)
    def run(*args, **kwargs):
        if torch.is_grad_enabled():
            return checkpoint(forward, *args, use_reentrant=False, **kwargs)
        return forward(*args, **kwargs)
    run._still_moving_checkpoint = True
    return run


_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3   # glibc mallopt parameters
_GLIBC_DYNAMIC_MAX = 32 << 20                    # where glibc's dynamic mmap threshold tops out (64-bit)


def _glibc():
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.gnu_get_libc_version  # noqa: B018  (present in glibc only, not musl)
        return libc
    except (OSError, AttributeError):
        return None


_release_depth = [0]


@contextlib.contextmanager
def release_freed_memory(threshold=64 << 10):
    """glibc on Linux: for the block, allocations of ``threshold`` bytes or more get their own
    mapping, given back to the system as soon as they are freed (``mallopt(M_MMAP_THRESHOLD)``),
    so freed activations do not stay resident as fragmented heap. Yields whether it applies.

    Process-wide while active (nested uses share the outermost one's setting). On exit the
    thresholds are set to where glibc's own dynamic adjustment ends up in a PyTorch process
    (mmap 32 MiB, trim 64 MiB) and the heap is trimmed. Does nothing (yields False) off glibc,
    or when the user set ``MALLOC_MMAP_THRESHOLD_`` themselves.
    """
    libc = _glibc()
    if libc is None or "MALLOC_MMAP_THRESHOLD_" in os.environ:
        yield False
        return
    outermost = _release_depth[0] == 0
    ok = True
    if outermost:
        ok = bool(libc.mallopt(_M_MMAP_THRESHOLD, int(threshold))) and bool(libc.mallopt(_M_TRIM_THRESHOLD, int(threshold)))
    _release_depth[0] += 1
    try:
        yield ok
    finally:
        _release_depth[0] -= 1
        if outermost:
            libc.mallopt(_M_MMAP_THRESHOLD, _GLIBC_DYNAMIC_MAX)
            libc.mallopt(_M_TRIM_THRESHOLD, 2 * _GLIBC_DYNAMIC_MAX)
            libc.malloc_trim(0)


@contextlib.contextmanager
def checkpointed(unet, granularity="block", release_memory=None):
    """Run ``unet``'s down / mid / up blocks under activation checkpointing for the block.

    The blocks' ``forward`` is replaced by an instance attribute that calls the original under
    ``checkpoint(..., use_reentrant=False)`` (only while gradients are enabled; under
    ``no_grad`` it is a plain call) and restored on exit, even on error. diffusers' own
    gradient checkpointing flags are switched off for the block, so nothing is recomputed twice,
    and restored after. Forward hooks on the blocks' submodules (Motion / Spatial Adapters) run
    inside the block's forward, so they are recomputed with it; gradients equal the
    un-checkpointed ones (``tests/test_memory.py``).

    ``release_memory`` (default: when the UNet is on the CPU) also applies
    ``release_freed_memory()`` for the block; without it glibc keeps the freed activations.
    """
    modules = dict(unet.named_modules())
    units = [modules[n] for n in checkpoint_units(unet, granularity)]
    if not units:
        raise ValueError("checkpointed() needs a diffusers UNet with down_blocks / mid_block / up_blocks")
    if release_memory is None:
        release_memory = next(unet.parameters()).device.type == "cpu"
    wrapped = []   # (module, previous instance-level forward or None)
    flags = []     # (module, previous gradient_checkpointing flag)
    with contextlib.ExitStack() as stack:
        if release_memory:
            stack.enter_context(release_freed_memory())
        try:
            for m in modules.values():
                if getattr(m, "gradient_checkpointing", False) is True:
                    flags.append((m, True))
                    m.gradient_checkpointing = False
            for m in units:
                if getattr(m.forward, "_still_moving_checkpoint", False):
                    continue  # already wrapped by an enclosing checkpointed()
                wrapped.append((m, m.__dict__.get("forward")))
                m.forward = _checkpointing(m.forward)
            yield unet
        finally:
            for m, previous in reversed(wrapped):
                if previous is None:
                    m.__dict__.pop("forward", None)
                else:
                    m.forward = previous
            for m, flag in flags:
                m.gradient_checkpointing = flag


class SavedTensors:
    """Bytes autograd keeps for the backward pass while active (parameters and their views not
    counted, each storage once): ``with SavedTensors() as s: loss = ...`` then ``s.bytes``.

    A deterministic stand-in for activation memory, for tests and estimates; tensors saved
    inside a checkpointed region are not kept, so they are not counted either.
    """

    def __init__(self, exclude=()):
        self._exclude = {t.untyped_storage().data_ptr() for t in exclude}
        self._seen = set()
        self.bytes = 0
        self._ctx = None

    def _pack(self, t):
        if isinstance(t, torch.Tensor) and not t.is_meta and t.device.type != "meta":
            try:
                st = t.untyped_storage()
                ptr = st.data_ptr()
            except (RuntimeError, NotImplementedError):
                return t
            if ptr and ptr not in self._exclude and ptr not in self._seen and not isinstance(t, torch.nn.Parameter):
                self._seen.add(ptr)
                self.bytes += st.nbytes()
        return t

    def __enter__(self):
        self._ctx = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t)
        self._ctx.__enter__()
        return self

    def __exit__(self, *exc):
        self._ctx.__exit__(*exc)
        return False
