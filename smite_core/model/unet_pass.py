"""One forward of the (inflated) UNet over a window of frames, with attention capture.

The segment embedding's cross-attention weights are applied for this call only through
``torch.func.functional_call``: the shared backbone is never modified.
"""

from __future__ import annotations

import torch
from torch.func import functional_call

from .attention import AttentionRecord, CaptureLayers, inflated_unet
from .backbone import Backbone
from .memory_budget import checkpointing_wanted, gradient_checkpointing


def unet_forward(backbone: Backbone, latents: torch.Tensor, timestep: int | torch.Tensor, context: torch.Tensor,
                 num_segments: int, kv: dict[str, torch.Tensor] | None = None, inflate: bool = True,
                 pool_norm: bool = True, layers: CaptureLayers | None = None,
                 checkpointing: bool | None = None) -> tuple[torch.Tensor, AttentionRecord]:
    """Run the UNet on one window and record the maps the WAS stage needs.

    ``latents [F,C,h,w]`` (one window, frames folded into the batch), ``context [1,77,D]`` (repeated
    per frame), ``kv`` the learned ``attn2.to_k``/``to_v`` weights (or None for the base weights).
    With ``inflate`` every frame's self-attention sees all F frames; without it (and F = 1) this is
    the plain 2-D Stable Diffusion UNet. Returns the model output ``[F,C,h,w]`` and the record.
    ``checkpointing``: recompute the ResNet activations in the backward pass (None: when gradients
    are recorded on a GPU, see ``memory_budget.gradient_checkpointing``).
    """
    frames, _, h, w = latents.shape
    record = AttentionRecord(num_tokens=num_segments, latent_hw=(h, w))
    dtype = backbone.dtype
    latents = latents.to(backbone.device, dtype)
    context = context.to(backbone.device, dtype).expand(frames, -1, -1)
    t = torch.as_tensor(timestep, device=backbone.device).reshape(-1).expand(frames)
    overrides = {name: value.to(backbone.device, dtype) for name, value in (kv or {}).items()}
    if checkpointing is None:
        checkpointing = torch.is_grad_enabled() and checkpointing_wanted(backbone)
    with inflated_unet(backbone.unet, frames, record=record, inflate=inflate, pool_norm=pool_norm, layers=layers), \
            gradient_checkpointing(backbone.unet, enabled=checkpointing):
        out = functional_call(backbone.unet, overrides, (latents, t), {"encoder_hidden_states": context,
                                                                      "return_dict": False}, strict=False)[0]
    return out, record
