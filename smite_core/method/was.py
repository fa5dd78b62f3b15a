"""WAS: Weighted Accumulated Self-attention maps (docs/method.md section 4).

From one UNet forward's :class:`~smite_core.model.attention.AttentionRecord`:

- ``cross_attention_logits``: CA ``[F,K,h,w]``, the raw token logits averaged over heads and
  layers, resized to the self-attention resolution ``(h, w)`` (the latent's).
- ``accumulate_self_attention``: ``A[f,k,q] = sum_p SA_f[q,p] * W[f,k,p]`` where ``SA_f[q,p]`` is
  frame f's self-attention of query pixel q on key pixel p (softmax over the keys p, averaged over
  heads and layers): each pixel takes the weights of the pixels it attends to, summed over the key
  index as in the reference implementation (docs/method.md 4, choice C17). The ``n x n`` matrix is
  never stored: it is formed in query chunks, each giving those queries' maps (and recomputed in the
  backward pass when gradients are needed).
- ``was_train`` (learning, L_MSE): ``W = softmax_K(CA)``, no rescaling (each pixel's classes then sum to one).
- ``was_inference`` (video, validation, energies): background logits thresholded at their mean,
  ``W = CA~`` (raw logits), then each class map linearly remapped into its logit range.
- ``labels_from_was``: upsampling to the frame size (edge-aware when the frames are given,
  ``edges``; bilinear otherwise), then argmax over K.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from ..model.attention import AttentionRecord

# Which WAS this is: 2 sums over the key index (the reference's, since SMITE 0.2); 1 was SMITE 0.1's sum over the
# query index. Outputs that depend on it record it (embedding files through their format version, batch records).
WAS_VERSION = 2
# Elements of one [F, heads, chunk, n] block of attention probabilities formed at a time.
CHUNK_ELEMENTS = 1 << 25


def cross_attention_logits(record: AttentionRecord) -> torch.Tensor:
    """CA ``[F,K,h,w]``: head-averaged token logits of the hooked layers, resized and averaged."""
    if not record.cross:
        raise ValueError("no cross-attention maps were recorded")
    h, w = record.latent_hw
    maps = [F.interpolate(m.float(), size=(h, w), mode="bilinear", align_corners=False) for m in record.cross]
    return torch.stack(maps).mean(0)


def _chunk_product(weights: torch.Tensor, q: torch.Tensor, k: torch.Tensor, scale: float) -> torch.Tensor:
    """``sum_p softmax(q_c . k * scale)[c,p] * weights[f,k,p]`` for one chunk of queries c, summed over heads.

    ``weights [F,K,n]``, ``q [F,H,c,d]``, ``k [F,H,n,d]`` -> ``[F,K,c]``.
    """
    probs = torch.softmax((q @ k.transpose(-1, -2)).float() * scale, dim=-1)  # [F,H,c,n]: rows sum to one
    return torch.einsum("fkn,fhcn->fkc", weights, probs)


def accumulate_self_attention(weights: torch.Tensor, self_qk, chunk_elements: int = CHUNK_ELEMENTS) -> torch.Tensor:
    """``A[f,k,q] = sum_p SA_f[q,p] W[f,k,p]`` with SA averaged over heads and layers. ``weights [F,K,n]`` ->
    ``[F,K,n]``."""
    if not self_qk:
        raise ValueError("no self-attention maps were recorded")
    weights = weights.float()
    total = 0.0
    for q, k, scale in self_qk:
        frames, heads, n, _ = q.shape
        chunk = max(1, chunk_elements // max(1, frames * heads * n))
        differentiable = torch.is_grad_enabled() and (weights.requires_grad or q.requires_grad or k.requires_grad)
        parts = []
        for start in range(0, n, chunk):
            args = (weights, q[:, :, start:start + chunk], k, scale)
            parts.append(checkpoint(_chunk_product, *args, use_reentrant=False) if differentiable
                         else _chunk_product(*args))
        total = total + torch.cat(parts, dim=2) / heads
    return total / len(self_qk)


def was_train(record: AttentionRecord) -> torch.Tensor:
    """Training WAS ``[F,K,h,w]``: ``A[k,q] = sum_p SA[q,p] softmax_K(CA)[k,p]`` (docs/method.md 4.1), differentiable."""
    ca = cross_attention_logits(record)
    frames, k, h, w = ca.shape
    weights = torch.softmax(ca, dim=1).reshape(frames, k, h * w)
    return accumulate_self_attention(weights, record.self_qk).reshape(frames, k, h, w)


def was_inference(record: AttentionRecord) -> torch.Tensor:
    """Inference WAS ``[F,K,h,w]`` in each class's logit range (docs/method.md 4.2)."""
    ca = cross_attention_logits(record)
    frames, k, h, w = ca.shape
    flat = ca.reshape(frames, k, h * w)
    low, high = flat.amin(dim=2, keepdim=True), flat.amax(dim=2, keepdim=True)
    background = flat[:, :1]
    weights = torch.cat([background * (background > background.mean(dim=2, keepdim=True)), flat[:, 1:]], dim=1)
    acc = accumulate_self_attention(weights, record.self_qk)
    acc_low, acc_high = acc.amin(dim=2, keepdim=True), acc.amax(dim=2, keepdim=True)
    unit = (acc - acc_low) / (acc_high - acc_low).clamp_min(1e-12)
    return (unit * (high - low) + low).reshape(frames, k, h, w)


def upsample_was(was: torch.Tensor, size: tuple[int, int], frames: torch.Tensor | None = None) -> torch.Tensor:
    """WAS ``[n,K,h,w]`` -> ``[n,K,H,W]`` at frame ``size``: guided by ``frames [n,H,W,3]`` (0..1,
    ``edges.edge_aware_upsample``) when given, else bilinear."""
    if frames is not None:
        from .edges import edge_aware_upsample

        if tuple(frames.shape[1:3]) != tuple(size):
            raise ValueError(f"upsample_was: frames are {tuple(frames.shape[1:3])}, not {tuple(size)}")
        return edge_aware_upsample(was, frames)
    return F.interpolate(was.float(), size=size, mode="bilinear", align_corners=False)


def class_argmax(scores: torch.Tensor) -> torch.Tensor:
    """Labels ``uint8 [H,W]`` of per-class scores ``[K,H,W]`` (K <= 256): exactly ``scores.argmax(0)`` (the first
    class on ties; the first NaN wins, as in torch), computed one class at a time: about 5x faster on a CPU for a
    full-HD frame."""
    best = scores[0].clone()
    labels = torch.zeros(scores.shape[1:], dtype=torch.uint8, device=scores.device)
    for k in range(1, scores.shape[0]):
        better = (scores[k] > best) | (scores[k].isnan() & ~best.isnan())
        torch.maximum(best, scores[k], out=best)
        labels.masked_fill_(better, k)
    return labels


def labels_from_was(was: torch.Tensor, size: tuple[int, int], frames: torch.Tensor | None = None) -> torch.Tensor:
    """Labels ``uint8 [F,H,W]`` at frame ``size`` from WAS ``[F,K,h,w]``: upsampled (edge-aware along
    ``frames [F,H,W,3]`` when given, else bilinear), then argmax over K."""
    out = []
    for i, frame in enumerate(was):  # one frame at a time: [K,H,W] at full size is the largest tensor held
        guide = None if frames is None else frames[i:i + 1]
        out.append(class_argmax(upsample_was(frame[None], size, guide)[0]))
    return torch.stack(out)
