"""Spatio-temporal guidance of the video latent (docs/method.md sections 6.3 step 2 and 8).

Two energies of a window's inference WAS ``S = WAS(z) [f,K,h,w]`` (differentiable in the latent
``z`` through the UNet; the backbone itself stays frozen):

- ``E_track``: weighted cross-entropy of ``S`` (as logits) against the labels voted along the point
  tracks (background weight 1, present foreground classes ``N_fg / N_c``, as in learning);
- ``E_reg``: mean ``|M * DCT3(S) - M * DCT3(S_ref)|`` with an orthonormal 3-D DCT-II over
  (frames, rows, columns) and ``M`` keeping rows and columns below ``floor(n * cutoff)`` and every
  temporal frequency: a spatial low-pass that keeps the reference pass's coarse layout.

:func:`guide_latents` runs the Adam-style update of the reference code on sub-slices of
``guide_slice`` frames (4 by default, fewer on a GPU short of memory):
``z <- z - lr * sigma_t * m_hat / (sqrt(v_hat) + 1e-5)`` with ``sigma_t = beta_t / (1 - beta_t)``
(the per-step alpha, not the cumulative one) and moments reset per guided timestep and kept per
sub-slice (so ragged last slices work, defect D5).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from ..model.memory_budget import fit_count, free_memory
from ..model.unet_pass import unet_forward
from .losses import class_weights
from .was import was_inference


def dct_basis(n: int, dtype=torch.float32, device=None) -> torch.Tensor:
    """Orthonormal DCT-II matrix ``[n,n]``: ``X = D @ x`` along one axis, ``D @ D.T = I``."""
    k = torch.arange(n, dtype=torch.float64)[:, None]
    i = torch.arange(n, dtype=torch.float64)[None]
    basis = torch.cos(math.pi * (2 * i + 1) * k / (2 * n)) * math.sqrt(2.0 / n)
    basis[0] /= math.sqrt(2.0)
    return basis.to(dtype=dtype, device=device)


def dct3(x: torch.Tensor) -> torch.Tensor:
    """Orthonormal 3-D DCT-II over the last three axes ``[..., f, h, w]``."""
    f, h, w = x.shape[-3:]
    df, dh, dw = (dct_basis(n, x.dtype, x.device) for n in (f, h, w))
    return torch.einsum("af,bh,cw,...fhw->...abc", df, dh, dw, x)


def lowpass_mask(shape: tuple[int, int, int], cutoff: float, device=None) -> torch.Tensor:
    """Bool ``[f,h,w]``: rows ``< floor(h*cutoff)`` and columns ``< floor(w*cutoff)`` (at least 1), all frames."""
    f, h, w = shape
    keep_h, keep_w = max(1, math.floor(h * cutoff)), max(1, math.floor(w * cutoff))
    rows = torch.arange(h, device=device) < keep_h
    cols = torch.arange(w, device=device) < keep_w
    return (rows[:, None] & cols[None]).expand(f, h, w)


def energy_reg(was: torch.Tensor, reference: torch.Tensor, cutoff: float) -> torch.Tensor:
    """``E_reg``: mean absolute low-passed 3-D DCT difference of ``was`` and ``reference`` ``[f,K,h,w]``."""
    diff = dct3((was - reference.to(was)).transpose(0, 1))  # [K,f,h,w]
    mask = lowpass_mask(tuple(diff.shape[1:]), cutoff, diff.device)
    return (diff * mask).abs().mean()


def energy_track(was: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``E_track``: weighted cross-entropy of ``was [f,K,h,w]`` (logits) against voted ``labels [f,h,w]``."""
    labels = labels.to(was.device).long()
    return F.cross_entropy(was, labels, weight=class_weights(labels, was.shape[1]).to(was))


def step_size(scheduler, timestep: int, lr: float) -> float:
    """``lr * sigma_t`` with ``sigma_t = (1 - alpha_t) / alpha_t`` for the per-step ``alpha_t = 1 - beta_t``."""
    beta = float(scheduler.betas[int(timestep)])
    return lr * beta / (1.0 - beta)


@dataclass(frozen=True)
class GuidanceEnergy:
    """``E = track_weight * E_track + lowpass_weight * E_reg`` with the low-pass ``cutoff`` of this step."""

    track_weight: float
    lowpass_weight: float
    cutoff: float

    def __call__(self, was: torch.Tensor, reference: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        """The energy of one sub-slice: ``was``/``reference [f,K,h,w]``, voted ``labels [f,h,w]`` or None."""
        energy = was.new_zeros(())
        if self.lowpass_weight:
            energy = energy + self.lowpass_weight * energy_reg(was, reference, self.cutoff)
        if self.track_weight and labels is not None:
            energy = energy + self.track_weight * energy_track(was, labels)
        return energy


def guide_latents(was_of: Callable[[torch.Tensor, int], torch.Tensor], latents: torch.Tensor, timestep: int,
                  reference: torch.Tensor, labels: torch.Tensor | None, energy: GuidanceEnergy, *, step: float,
                  iterations: int, sub_slice: int,
                  on_energy: Callable[[int, int, float], None] | None = None) -> torch.Tensor:
    """Optimise the noisy window latent ``latents [F,4,h,w]`` at ``timestep``; returns the new latent.

    ``was_of(z [f,4,h,w], t)`` is the differentiable inference WAS ``[f,K,h,w]`` of a sub-slice (the
    inflated UNet with the segment embedding, see ``segment.WindowRunner``). ``reference [F,K,h,w]``:
    the reference WAS for ``E_reg``; ``labels [F,h,w]`` the voted labels for ``E_track`` (None: no
    tracking energy). ``step``: ``lr * sigma_t`` (see :func:`step_size`). Each sub-slice of
    ``sub_slice`` frames gets its own UNet forward (attention and GroupNorm then pool over that slice
    only, defect D13) and its own Adam moments. ``on_energy(iteration, slice, energy)`` receives the
    energy before each update. Gradients reach only the latent.
    """
    out = latents.detach().float().clone()
    frames = out.shape[0]
    with torch.enable_grad():
        for s_index, start in enumerate(range(0, frames, sub_slice)):
            stop = min(frames, start + sub_slice)
            z = out[start:stop].clone()
            m = torch.zeros_like(z)
            v = torch.zeros_like(z)
            for n in range(1, iterations + 1):
                z.requires_grad_(True)
                was = was_of(z, timestep).float()
                value = energy(was, reference[start:stop], None if labels is None else labels[start:stop])
                if not value.requires_grad:
                    break
                (grad,) = torch.autograd.grad(value, z)
                if on_energy:
                    on_energy(n, s_index, float(value.detach()))
                z = z.detach()
                grad = grad.float()
                m = 0.9 * m + 0.1 * grad
                v = 0.999 * v + 0.001 * grad.square()
                m_hat = m / (1 - 0.9 ** n)
                v_hat = v / (1 - 0.999 ** n)
                z = z - step * m_hat / (v_hat.sqrt() + 1e-5)
            out[start:stop] = z.detach()
    return out.to(latents.dtype)


def probe_grad_bytes(backbone, latent_hw: tuple[int, int], context: torch.Tensor, num_segments: int,
                     kv: dict | None = None) -> int | None:
    """Peak CUDA bytes of a one-frame UNet forward + WAS + backward to the latent (None off CUDA).

    Resets the device's peak-memory statistics. Running out of memory on one frame gives the
    device's whole free memory (so the caller falls back to one-frame slices).
    """
    device = backbone.device
    if device.type != "cuda":
        return None
    torch.cuda.synchronize(device)
    base = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    z = torch.zeros(1, backbone.unet.config.in_channels, *latent_hw, device=device, requires_grad=True)
    try:
        with torch.enable_grad():
            _, record = unet_forward(backbone, z, 100, context, num_segments, kv=kv)
            (grad,) = torch.autograd.grad(was_inference(record).float().square().mean(), z)
        del record, grad
        torch.cuda.synchronize(device)
        return max(1, torch.cuda.max_memory_allocated(device) - base)
    except torch.cuda.OutOfMemoryError:
        torch.cuda.empty_cache()
        return free_memory(device)


def guide_slice(backbone, latent_hw: tuple[int, int], context: torch.Tensor, num_segments: int, cap: int,
                kv: dict | None = None) -> int:
    """Frames per guidance sub-slice: ``cap`` (the configured slice) unless the measured cost of a
    frame's forward + backward says fewer fit in the free memory. Off CUDA: ``cap``."""
    if backbone.device.type != "cuda" or cap <= 1:
        return max(1, cap)
    per_frame = probe_grad_bytes(backbone, latent_hw, context, num_segments, kv)
    return fit_count(free_memory(backbone.device), per_frame or 0, cap)
