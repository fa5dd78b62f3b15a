"""Inflated UNet attention: cross-frame self-attention, frame-pooled GroupNorm and map capture.

Frames of a window are folded into the UNet's batch (``[B*F, C, h, w]``). Within a
:func:`inflated_unet` block the UNet behaves as SMITE's inflated UNet (docs/method.md section 5):

- every self-attention ``attn1`` lets each frame attend to all tokens of all frames of the window
  (fully-frame attention, through SDPA: no score matrix is materialised);
- cross-attention ``attn2`` stays per frame;
- the GroupNorms of the ResNet blocks (``norm1``, ``norm2``) and ``conv_norm_out`` pool their
  statistics over the window's frames;
- on the hooked layers (:func:`select_capture_layers`) the processor records what the WAS maps
  need into an explicit :class:`AttentionRecord`: the cross-attention *logits* of the K segment
  tokens (averaged over heads) and the per-frame query/key tensors of self-attention.

Everything is undone when the block exits: the UNet object is shared and keeps no state.
"""

from __future__ import annotations

import contextlib
import math
import types
from dataclasses import dataclass, field
from typing import Iterator

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class CaptureLayers:
    """Names of the attention modules whose maps are captured (diffusers naming)."""

    cross: tuple[str, ...]  # attn2 modules: cross-attention maps
    self: tuple[str, ...]  # attn1 modules: self-attention maps


@dataclass
class AttentionRecord:
    """What one UNet forward recorded for the WAS maps.

    ``cross``: per hooked cross-attention layer, head-averaged logits ``[BF, K, h_l, w_l]`` at that
    layer's resolution (raw ``q.k * scale``, no softmax). ``self_qk``: per hooked self-attention
    layer, ``(q, k)`` each ``[BF, heads, n, d]`` with the frame's own queries and keys.
    """

    num_tokens: int
    latent_hw: tuple[int, int]
    cross: list[torch.Tensor] = field(default_factory=list)
    self_qk: list[tuple[torch.Tensor, torch.Tensor, float]] = field(default_factory=list)


def up_block_resolutions(unet) -> list[int]:
    """Downsampling factor (relative to the latent) of each of ``unet.up_blocks``."""
    levels = len(unet.up_blocks)
    return [2 ** (levels - 1 - i) for i in range(levels)]


def select_capture_layers(unet) -> CaptureLayers:
    """Pick the hooked layers by resolution, so SD 1.x, 2.x and small backbones all work.

    Self-attention: ``attn1`` of every transformer in the up-block at latent resolution.
    Cross-attention: ``attn2`` of the up-blocks at 1/4 and 1/2 of the latent resolution, leaving out
    the last transformer of the 1/2 block when it has more than two (on SD this is exactly
    ``up_blocks.1.attentions.{0,1,2}`` and ``up_blocks.2.attentions.{0,1}``, as in the reference).
    Backbones without those resolutions fall back to the coarsest up-blocks with attention.
    """
    factors = up_block_resolutions(unet)
    with_attn = [i for i, b in enumerate(unet.up_blocks) if hasattr(b, "attentions") and len(b.attentions) > 0]
    if not with_attn:
        raise ValueError("the UNet has no attention layers in its up-blocks")

    def transformer_names(i: int, attn: str) -> list[str]:
        block = unet.up_blocks[i]
        names = []
        for j, t in enumerate(block.attentions):
            for b in range(len(t.transformer_blocks)):
                names.append(f"up_blocks.{i}.attentions.{j}.transformer_blocks.{b}.{attn}")
        return names

    finest = [i for i in with_attn if factors[i] == 1] or [with_attn[-1]]
    self_names = [n for i in finest for n in transformer_names(i, "attn1")]

    cross_names: list[str] = []
    for i in with_attn:
        if factors[i] == 4:
            cross_names += transformer_names(i, "attn2")
        elif factors[i] == 2:
            names = transformer_names(i, "attn2")
            cross_names += names[:-1] if len(unet.up_blocks[i].attentions) > 2 else names
    if not cross_names:  # small backbone: use every up-block with attention except the finest
        cross_names = [n for i in with_attn if i not in finest for n in transformer_names(i, "attn2")]
        cross_names = cross_names or [n for i in finest for n in transformer_names(i, "attn2")]
    return CaptureLayers(cross=tuple(cross_names), self=tuple(self_names))


class WindowAttnProcessor:
    """Attention processor for a window of ``num_frames`` frames folded into the batch.

    ``inflate`` (self-attention only): Q, K, V are regrouped from ``[b*f, heads, n, d]`` to
    ``[b, heads, f*n, d]`` so every token attends to all frames of its window. ``capture`` is
    ``None``, ``"cross"`` or ``"self"``; captured tensors go to ``record``.
    """

    def __init__(self, num_frames: int, inflate: bool = False, capture: str | None = None,
                 record: AttentionRecord | None = None):
        self.num_frames = num_frames
        self.inflate = inflate
        self.capture = capture
        self.record = record

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kwargs):
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch, channel, height * width).transpose(1, 2)
        batch = hidden_states.shape[0]
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)

        is_cross = encoder_hidden_states is not None
        context = encoder_hidden_states if is_cross else hidden_states
        if is_cross and attn.norm_cross:
            context = attn.norm_encoder_hidden_states(context)
        query, key, value = attn.to_q(hidden_states), attn.to_k(context), attn.to_v(context)
        head_dim = key.shape[-1] // attn.heads
        query = query.view(batch, -1, attn.heads, head_dim).transpose(1, 2)
        key = key.view(batch, -1, attn.heads, head_dim).transpose(1, 2)
        value = value.view(batch, -1, attn.heads, head_dim).transpose(1, 2)
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)

        if self.capture == "cross":
            self._record_cross(query, key, attn.scale)
        elif self.capture == "self":
            self.record.self_qk.append((query, key, attn.scale))

        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, context.shape[1], batch)
            attention_mask = attention_mask.view(batch, attn.heads, -1, attention_mask.shape[-1])

        frames = self.num_frames
        if self.inflate and not is_cross and frames > 1 and attention_mask is None:
            out = _full_frame_attention(query, key, value, frames, attn.scale)
        else:
            out = F.scaled_dot_product_attention(query, key, value, attn_mask=attention_mask, scale=attn.scale)
        out = out.transpose(1, 2).reshape(batch, -1, attn.heads * head_dim).to(query.dtype)
        out = attn.to_out[1](attn.to_out[0](out))
        if input_ndim == 4:
            out = out.transpose(-1, -2).reshape(batch, channel, height, width)
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor

    def _record_cross(self, query: torch.Tensor, key: torch.Tensor, scale: float) -> None:
        """Store head-averaged logits of the first K tokens as ``[BF, K, h, w]``."""
        k_tokens = key[:, :, : self.record.num_tokens]
        logits = (query @ k_tokens.transpose(-1, -2)).mul(scale).mean(dim=1)  # [BF, n, K]
        h, w = layer_hw(logits.shape[1], self.record.latent_hw)
        self.record.cross.append(logits.transpose(1, 2).reshape(logits.shape[0], -1, h, w))


def _full_frame_attention(q, k, v, frames: int, scale: float) -> torch.Tensor:
    """SDPA over all tokens of all ``frames`` frames of each window. In/out ``[b*f, heads, n, d]``."""
    bf, heads, n, d = q.shape
    b = bf // frames

    def group(t):  # [b*f, heads, n, d] -> [b, heads, f*n, d]
        return t.reshape(b, frames, heads, n, d).transpose(1, 2).reshape(b, heads, frames * n, d)

    out = F.scaled_dot_product_attention(group(q), group(k), group(v), scale=scale)
    return out.reshape(b, heads, frames, n, d).transpose(1, 2).reshape(bf, heads, n, d)


def layer_hw(tokens: int, latent_hw: tuple[int, int]) -> tuple[int, int]:
    """Spatial size of a layer with ``tokens`` positions, given the latent's ``(h, w)``."""
    lh, lw = latent_hw
    factor = math.sqrt(lh * lw / tokens)
    h, w = max(1, round(lh / factor)), max(1, round(lw / factor))
    if h * w != tokens:
        raise ValueError(f"cannot place {tokens} tokens on a grid with the latent's aspect {lh}x{lw}")
    return h, w


def _pooled_group_norm_forward(frames: int):
    """A GroupNorm forward whose statistics cover all ``frames`` frames of a window."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bf = x.shape[0]
        if frames <= 1 or bf % frames:
            return F.group_norm(x, self.num_groups, self.weight, self.bias, self.eps)
        rest = x.shape[1:]
        grouped = x.reshape(bf // frames, frames, *rest).transpose(1, 2)  # [b, C, f, ...]
        out = F.group_norm(grouped, self.num_groups, self.weight, self.bias, self.eps)
        return out.transpose(1, 2).reshape(bf, *rest)

    return forward


def pooled_norm_sites(unet) -> list[torch.nn.GroupNorm]:
    """The GroupNorms whose statistics SMITE pools over frames: ResNet norm1/norm2 and conv_norm_out."""
    from diffusers.models.resnet import ResnetBlock2D

    sites = []
    for module in unet.modules():
        if isinstance(module, ResnetBlock2D):
            sites += [m for m in (module.norm1, module.norm2) if isinstance(m, torch.nn.GroupNorm)]
    if isinstance(getattr(unet, "conv_norm_out", None), torch.nn.GroupNorm):
        sites.append(unet.conv_norm_out)
    return sites


@contextlib.contextmanager
def inflated_unet(unet, num_frames: int, record: AttentionRecord | None = None, inflate: bool = True,
                  pool_norm: bool = True, layers: CaptureLayers | None = None) -> Iterator[CaptureLayers]:
    """Turn ``unet`` into SMITE's inflated UNet for windows of ``num_frames`` frames, temporarily.

    ``inflate=False`` keeps self-attention per frame (the paper's Baseline-I); ``pool_norm=False``
    keeps GroupNorm per frame. With a ``record``, maps of the capture layers are recorded into it.
    Yields the capture layers. The UNet's own processors and norms are restored on exit.
    """
    layers = layers or select_capture_layers(unet)
    saved = unet.attn_processors
    processors = {}
    for key in saved:
        module = key[: -len(".processor")]
        is_self = module.endswith("attn1")
        capture = None
        if record is not None and module in layers.cross:
            capture = "cross"
        elif record is not None and module in layers.self:
            capture = "self"
        processors[key] = WindowAttnProcessor(num_frames, inflate=inflate and is_self, capture=capture, record=record)
    norms = pooled_norm_sites(unet) if pool_norm and num_frames > 1 else []
    unet.set_attn_processor(processors)
    for norm in norms:
        norm.forward = types.MethodType(_pooled_group_norm_forward(num_frames), norm)
    try:
        yield layers
    finally:
        for norm in norms:
            del norm.forward
        unet.set_attn_processor(saved)
