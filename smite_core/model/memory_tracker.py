"""Peak device memory of a piece of code, counted from the tensors it makes: on real tensors or on fake ones.

:class:`LiveBytes` is a dispatch mode that adds up the bytes of every tensor storage an operation allocates while
the mode is on, drops them when the storage is freed, and keeps the peak. Views and in-place results allocate
nothing and are not counted; tensors made before the mode (weights, inputs) are not counted either. Under
``torch._subclasses.fake_tensor.FakeTensorMode`` the same code runs without memory or a GPU and gives the same
peak (``tests/test_memory_tracker.py``): the first step of planning the memory of a run before it starts.

``block`` rounds each allocation up as an allocator does (512 bytes for CUDA's caching allocator, whose
``torch.cuda.max_memory_allocated`` counts such blocks); what the count leaves out (library workspaces,
fragmentation, the allocator's reserve) is for the caller to add.
"""

from __future__ import annotations

import contextlib
import weakref
from typing import Callable

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

CUDA_BLOCK = 512  # bytes: the CUDA caching allocator rounds every block up to a multiple of this


class LiveBytes(TorchDispatchMode):
    """``with LiveBytes() as t: ...`` then ``t.peak``: the most bytes of storages made inside the block alive at once
    (``t.current``: alive now). ``block``: allocation rounding in bytes (1: exact)."""

    def __init__(self, block: int = 1):
        super().__init__()
        self.block = max(1, int(block))
        self.current = self.peak = 0
        self._live: dict[int, int] = {}

    def _size(self, nbytes: int) -> int:
        return -(-max(nbytes, 1) // self.block) * self.block

    def _allocated(self, storage) -> None:
        key = storage._cdata  # the storage itself (real or fake), not its Python wrapper
        if key in self._live:
            return
        size = self._size(storage.nbytes())
        self._live[key] = size
        self.current += size
        self.peak = max(self.peak, self.current)
        weakref.finalize(storage, self._freed, key)

    def _freed(self, key: int) -> None:
        self.current -= self._live.pop(key, 0)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if getattr(func, "is_view", False):  # a view shares its input's storage
            return out
        inputs = {a.untyped_storage()._cdata for a in tree_leaves((args, kwargs)) if isinstance(a, torch.Tensor)}
        for tensor in tree_leaves(out):
            if isinstance(tensor, torch.Tensor):
                storage = tensor.untyped_storage()
                if storage._cdata not in inputs and storage.nbytes() > 0:  # in-place results and aliases: no allocation
                    self._allocated(storage)
        return out


def peak_bytes(fn: Callable[[], object], fake: bool = False, block: int = 1) -> int:
    """The peak of :class:`LiveBytes` over ``fn()``; with ``fake`` inside a ``FakeTensorMode`` (tensors ``fn`` makes
    are fake: no memory is used, no kernel runs; real weights it reads are taken as fake)."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    mode = FakeTensorMode(allow_non_fake_inputs=True) if fake else contextlib.nullcontext()
    with mode:
        with LiveBytes(block) as tracker:
            fn()
    return tracker.peak
