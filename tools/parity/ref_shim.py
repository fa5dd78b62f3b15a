"""Import-time shims that let the reference code run on this CPU-only machine, without editing it.

Imported by ``ref_runner.py`` (in the reference's own virtual environment) *before* any module of the
reference checkout. Every shim is listed in ``tools/parity/README.md``; none changes a formula that
the parity goldens compare:

1. ``torchvision._meta_registrations`` is replaced by an empty module: the only torchvision wheel
   built for torch 2.13 here is a CUDA build whose C++ operators cannot load on this machine, and
   the reference uses torchvision only for pure-Python helpers (``gaussian_blur``, ``ToPILImage``).
2. ``xformers``: the reference's cross-attention returns ``(hidden, query, key)`` only through its
   ``XFormersAttnProcessor2``, which calls ``xformers.ops.memory_efficient_attention``; xformers has no
   CPU build, so an exact PyTorch equivalent (``softmax(q k^T * scale) v``) stands in for that call.
3. ``cuda`` -> ``cpu``: ``Tensor.to('cuda')`` / ``Module.to('cuda')`` / ``.cuda()`` are redirected to
   the CPU (the reference hard-codes its device, D19).
"""

from __future__ import annotations

import sys
import types

import torch

# 1. torchvision: skip the C++ operator registrations (pure-Python parts keep working)
sys.modules.setdefault("torchvision._meta_registrations", types.ModuleType("torchvision._meta_registrations"))


# 2. xformers: an exact attention in PyTorch with xformers' call signature
def memory_efficient_attention(query, key, value, attn_bias=None, op=None, scale=None, **_):
    scale = query.shape[-1] ** -0.5 if scale is None else scale
    scores = (query @ key.transpose(-1, -2)) * scale
    if attn_bias is not None:
        scores = scores + attn_bias
    return scores.softmax(dim=-1) @ value


xformers = types.ModuleType("xformers")
xformers.ops = types.SimpleNamespace(memory_efficient_attention=memory_efficient_attention)


def install_xformers(unet) -> int:
    """Give every reference cross-attention the processor its forward expects; returns how many."""
    import models.attention as ref_attention

    ref_attention.xformers = xformers
    count = 0
    for module in unet.modules():
        if isinstance(module, ref_attention.CrossAttentionModified):
            module.set_processor(ref_attention.XFormersAttnProcessor2())
            count += 1
    return count


# 3. cuda -> cpu
def _cpu(device):
    if isinstance(device, str) and device.startswith("cuda"):
        return "cpu"
    if isinstance(device, torch.device) and device.type == "cuda":
        return torch.device("cpu")
    return device


_tensor_to = torch.Tensor.to
_module_to = torch.nn.Module.to


def _tensor_to_cpu(self, *args, **kwargs):
    args = tuple(_cpu(a) for a in args)
    if "device" in kwargs:
        kwargs["device"] = _cpu(kwargs["device"])
    return _tensor_to(self, *args, **kwargs)


def _module_to_cpu(self, *args, **kwargs):
    args = tuple(_cpu(a) for a in args)
    if "device" in kwargs:
        kwargs["device"] = _cpu(kwargs["device"])
    return _module_to(self, *args, **kwargs)


torch.Tensor.to = _tensor_to_cpu
torch.nn.Module.to = _module_to_cpu
torch.Tensor.cuda = lambda self, *a, **k: self
torch.nn.Module.cuda = lambda self, *a, **k: self
