"""Spatio-temporal guidance of the video latent (method.md sections 6.3 step 2 and 8).

Two energies of a window's inference WAS ``S = WAS(z) [f,K,h,w]`` (differentiable in the latent
``z`` through the UNet; the backbone itself stays frozen):

- ``E_track``: weighted cross-entropy of ``S`` (as logits) against the labels voted along the point
  tracks (background weight 1, present foreground classes ``N_fg / N_c``, as in learning);
- ``E_reg``: mean ``|M * DCT3(S) - M * DCT3(S_ref)|`` with an orthonormal 3-D DCT-II over
  (frames, rows, columns) and ``M`` keeping rows and columns below ``floor(n * cutoff)`` and every
  temporal frequency: a spatial low-pass that keeps the reference pass's coarse layout.

:func:`guide_latents` runs the Adam-style update of the reference code on 4-frame sub-slices:
``z <- z - lr * sigma_t * m_hat / (sqrt(v_hat) + 1e-5)`` with ``sigma_t = beta_t / (1 - beta_t)``
(the per-step alpha, not the cumulative one) and moments reset per guided timestep and kept per
sub-slice (so ragged last slices work, defect D5).
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F

from .learn import class_weights
from .unet_pass import unet_forward
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


def guide_latents(backbone, embedding, context: torch.Tensor, latents: torch.Tensor, timestep: int,
                  reference: torch.Tensor, labels: torch.Tensor | None, *, track_weight: float, lowpass_weight: float,
                  cutoff: float, iterations: int, sub_slice: int, step: float, inflate: bool = True,
                  pool_norm: bool = True, on_energy: Callable[[int, int, float], None] | None = None) -> torch.Tensor:
    """Optimise the noisy window latent ``latents [F,4,h,w]`` at ``timestep``; returns the new latent.

    ``reference [F,K,h,w]``: the reference WAS for ``E_reg``; ``labels [F,h,w]`` the voted labels for
    ``E_track`` (None: no tracking energy). ``step``: ``lr * sigma_t`` (see :func:`step_size`).
    Each sub-slice of ``sub_slice`` frames gets its own UNet forward (attention and GroupNorm then
    pool over that slice only, defect D13) and its own Adam moments. ``on_energy(iteration, slice,
    energy)`` receives the energy before each update. Gradients reach only the latent.
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
                _, record = unet_forward(backbone, z, timestep, context, embedding.num_segments, kv=embedding.kv,
                                         inflate=inflate, pool_norm=pool_norm and inflate)
                was = was_inference(record).float()
                energy = was.new_zeros(())
                if lowpass_weight:
                    energy = energy + lowpass_weight * energy_reg(was, reference[start:stop], cutoff)
                if track_weight and labels is not None:
                    energy = energy + track_weight * energy_track(was, labels[start:stop])
                if not energy.requires_grad:
                    break
                (grad,) = torch.autograd.grad(energy, z)
                if on_energy:
                    on_energy(n, s_index, float(energy.detach()))
                z = z.detach()
                grad = grad.float()
                m = 0.9 * m + 0.1 * grad
                v = 0.999 * v + 0.001 * grad.square()
                m_hat = m / (1 - 0.9 ** n)
                v_hat = v / (1 - 0.999 ** n)
                z = z - step * m_hat / (v_hat.sqrt() + 1e-5)
            out[start:stop] = z.detach()
    return out.to(latents.dtype)
