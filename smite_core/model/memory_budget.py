"""Device memory: free memory, batch and sub-slice sizes chosen from it, mixed precision and
gradient checkpointing for the passes that need gradients.

- :func:`free_memory` reads what the device has left (``torch.cuda.mem_get_info`` on CUDA,
  ``MemAvailable`` of ``/proc/meminfo`` on Linux CPUs; None where it cannot be known).
- :func:`encode_batch` picks how many frames the VAE encodes at once, :func:`fit_count` how many
  items of a measured cost fit (``guidance.guide_slice`` uses it for the guidance sub-slice). Both
  only ever lower the configured value, so CPU results never depend on the machine's load.
- :func:`autocast` is fp16/bf16 autocast on GPUs when the backbone runs in half precision (losses,
  softmaxes and reductions then stay in fp32).
- :func:`gradient_checkpointing` makes the UNet's down/mid/up blocks recompute their ResNet
  activations in the backward pass instead of storing them. The transformer blocks are left alone:
  their attention processors record the maps the WAS needs, and a recomputation would record them
  a second time.

Every choice is a pure function of numbers (tested without a GPU); the device queries are thin.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch

# Share of the free memory a batch or sub-slice may plan to use (the rest: allocator slack, other tensors).
USABLE_SHARE = 0.6
# Live full-resolution activations of the VAE encoder's first stage per image (input, two
# ResNet branches, GroupNorm temporaries), in units of ``channels x H x W`` elements.
VAE_LIVE_TENSORS = 8


def free_memory(device: torch.device | str) -> int | None:
    """Bytes the device can still allocate, or None when unknown."""
    device = torch.device(device)
    if device.type == "cuda" and torch.cuda.is_available():
        free, _total = torch.cuda.mem_get_info(device)
        return int(free) + int(torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device))
    if device.type == "cpu":
        return available_ram()
    return None


def available_ram(meminfo: str = "/proc/meminfo") -> int | None:
    """``MemAvailable`` in bytes (Linux), else None."""
    try:
        with open(meminfo) as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def fit_count(free_bytes: int | None, bytes_each: float, cap: int, floor: int = 1,
              share: float = USABLE_SHARE) -> int:
    """How many items of ``bytes_each`` fit in ``share`` of ``free_bytes``, between ``floor`` and ``cap``.

    Unknown free memory (None) or an unknown cost (<= 0) gives ``cap``: the configured value stands.
    Powers of two are preferred below ``cap`` so windows split into equal slices.
    """
    cap = max(floor, int(cap))
    if free_bytes is None or bytes_each <= 0:
        return cap
    n = int(free_bytes * share // bytes_each)
    if n >= cap:
        return cap
    if n < floor:
        return floor
    return max(floor, 1 << (n.bit_length() - 1))


def encode_batch(backbone, size: tuple[int, int], cap: int = 8) -> int:
    """Frames the VAE encodes at once at working ``size`` on the backbone's device (at most ``cap``)."""
    if backbone.device.type == "cpu":
        return cap
    channels = int(backbone.vae.config.block_out_channels[0])
    itemsize = torch.finfo(backbone.dtype).bits // 8
    per_image = VAE_LIVE_TENSORS * channels * size[0] * size[1] * itemsize
    return fit_count(free_memory(backbone.device), per_image, cap)


def half_precision(backbone) -> bool:
    """Whether the backbone computes in fp16/bf16 on a GPU (autocast and checkpointing apply)."""
    return backbone.device.type in ("cuda", "mps") and backbone.dtype in (torch.float16, torch.bfloat16)


def autocast(backbone):
    """fp16/bf16 autocast on the backbone's GPU when it runs in half precision; else a no-op."""
    if not half_precision(backbone) or backbone.device.type != "cuda":
        return contextlib.nullcontext()
    return torch.autocast(device_type="cuda", dtype=backbone.dtype)


@contextlib.contextmanager
def flushed_denormals(device: torch.device) -> Iterator[None]:
    """On a CPU ``device``, flush fp32 denormals to zero inside the block (off again afterwards).

    Sharpened attention drives many activations and gradients into the denormal range, which CPUs
    process several times slower (learning on the tiny backbone: 1.5x faster with 2 threads, 3x with
    one; the flag is set in the calling thread); they carry no information here. A no-op elsewhere.
    """
    if device.type != "cpu" or not torch.set_flush_denormal(True):
        yield
        return
    try:
        yield
    finally:
        torch.set_flush_denormal(False)


@contextlib.contextmanager
def _norm_forwards(saved: list[tuple[torch.nn.Module, object]]) -> Iterator[None]:
    """Install the given per-instance ``forward`` overrides (None: the class's own), then restore."""
    before = [(m, m.__dict__.get("forward")) for m, _ in saved]
    for module, forward in saved:
        _set_forward(module, forward)
    try:
        yield
    finally:
        for module, forward in before:
            _set_forward(module, forward)


def _set_forward(module: torch.nn.Module, forward) -> None:
    if forward is None:
        module.__dict__.pop("forward", None)
    else:
        module.forward = forward


def _checkpoint(fn, *args):
    """``torch.utils.checkpoint`` of a ResNet call that recomputes it exactly as it first ran.

    The backward pass runs after ``attention.inflated_unet`` has put the UNet back, so the
    frame-pooled GroupNorm forwards in effect now are captured here and re-installed for the
    recomputation (without this the recomputed activations would use per-frame statistics).
    """
    from torch.utils.checkpoint import checkpoint

    modules = fn.modules() if isinstance(fn, torch.nn.Module) else []
    norms = [(m, m.__dict__.get("forward")) for m in modules if isinstance(m, torch.nn.GroupNorm)]

    def run(*inputs):
        with _norm_forwards(norms):
            return fn(*inputs)

    return checkpoint(run, *args, use_reentrant=False)


def checkpointable_blocks(unet) -> list[torch.nn.Module]:
    """The UNet's blocks whose ResNets diffusers can checkpoint (not the transformers: see module doc)."""
    try:
        from diffusers.models.transformers.transformer_2d import Transformer2DModel
    except ImportError:  # older diffusers
        from diffusers.models.transformer_2d import Transformer2DModel
    return [m for m in unet.modules() if m is not unet and hasattr(m, "gradient_checkpointing")
            and not isinstance(m, Transformer2DModel)]


@contextlib.contextmanager
def gradient_checkpointing(unet, enabled: bool = True) -> Iterator[int]:
    """Within the block, the UNet's ResNets recompute activations in the backward pass.

    Yields the number of blocks switched. The UNet's own settings are restored on exit.
    """
    blocks = checkpointable_blocks(unet) if enabled else []
    saved = [(b, b.gradient_checkpointing, b.__dict__.get("_gradient_checkpointing_func")) for b in blocks]
    for block in blocks:
        block._gradient_checkpointing_func = _checkpoint
        block.gradient_checkpointing = True
    try:
        yield len(blocks)
    finally:
        for block, flag, func in saved:
            block.gradient_checkpointing = flag
            if func is None:
                block.__dict__.pop("_gradient_checkpointing_func", None)
            else:
                block._gradient_checkpointing_func = func


def checkpointing_wanted(backbone) -> bool:
    """Gradient checkpointing is worth its recomputation where memory is scarce: GPUs, not CPU RAM."""
    return backbone.device.type != "cpu"
