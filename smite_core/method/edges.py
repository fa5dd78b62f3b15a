"""Edge-aware upsampling of the WAS maps to the frame size (the last step before the masks).

WAS maps live on the latent grid (a cell is 8 pixels for SD, 4 for the tiny backbone), so plain
bilinear upsampling puts every part boundary at the grid's resolution. With the frame at hand the
maps are instead upsampled with a guided filter (He, Sun and Tang, "Guided Image Filtering",
TPAMI 2013; colour guide): inside each window the output is a linear function of the frame's RGB,
so a map's edges snap to the colour edges nearby while flat regions keep the map's values.

The filter runs on a grid ``WORK_CELL`` times finer than the maps (or the frame's own size, if
smaller), and its linear coefficients are upsampled to the frame ("fast guided filter"): only that
last per-pixel combination grows with the frame size. This is not part of the paper's method; it is
on by default for masks (``edge_aware``) and can be turned off, giving the paper's bilinear upsampling.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

WORK_CELL = 4  # guided-filter grid: this many pixels per map cell
DEFAULT_RADIUS = 3.0  # filter radius, in map cells
DEFAULT_EPS = 3e-4  # regularisation (colour variance, frames in 0..1): lower snaps to weaker edges


def _window_mean(x: torch.Tensor, radius: int, dim: int) -> torch.Tensor:
    """Mean of ``x`` over ``[i-r, i+r]`` along ``dim`` (clipped at the borders), from a float64 running sum."""
    n = x.shape[dim]
    total = torch.cat([torch.zeros_like(x.narrow(dim, 0, 1), dtype=torch.float64),
                       x.to(torch.float64).cumsum(dim)], dim)  # total[i] = sum of x[:i]
    i = torch.arange(n, device=x.device)
    hi, lo = (i + radius + 1).clamp(max=n), (i - radius).clamp(min=0)
    shape = [1] * x.dim()
    shape[dim] = n
    count = (hi - lo).reshape(shape)
    return ((total.index_select(dim, hi) - total.index_select(dim, lo)) / count).to(x.dtype)


def _box(x: torch.Tensor, radius: int) -> torch.Tensor:
    """Mean over a ``(2r+1)^2`` window (clipped at the borders) of ``x [N,C,H,W]``: rows, then columns,
    O(1) per pixel whatever the radius."""
    return _window_mean(_window_mean(x, radius, 2), radius, 3)


def guided_coefficients(guide: torch.Tensor, maps: torch.Tensor, radius: int,
                        eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Coefficients ``(a [N,3,K,H,W], b [N,K,H,W])`` of the colour guided filter, box-averaged, so that
    the output is ``sum_c a[:, c] * guide[:, c] + b``. ``guide [N,3,H,W]`` (0..1), ``maps [N,K,H,W]``."""
    n, k, h, w = maps.shape
    mean_i = _box(guide, radius)  # [N,3,H,W]
    mean_p = _box(maps, radius)  # [N,K,H,W]
    ii = (guide[:, :, None] * guide[:, None, :]).reshape(n, 9, h, w)
    cov_ii = _box(ii, radius).reshape(n, 3, 3, h, w) - mean_i[:, :, None] * mean_i[:, None, :]
    ip = (guide[:, :, None] * maps[:, None, :]).reshape(n, 3 * k, h, w)
    cov_ip = _box(ip, radius).reshape(n, 3, k, h, w) - mean_i[:, :, None] * mean_p[:, None]
    sigma = cov_ii.permute(0, 3, 4, 1, 2) + eps * torch.eye(3, dtype=maps.dtype, device=maps.device)  # [N,H,W,3,3]
    a = torch.linalg.solve(sigma, cov_ip.permute(0, 3, 4, 1, 2))  # [N,H,W,3,K]
    b = mean_p - torch.einsum("nhwck,nchw->nkhw", a, mean_i)
    a = _box(a.permute(0, 3, 4, 1, 2).reshape(n, 3 * k, h, w), radius).reshape(n, 3, k, h, w)
    return a, _box(b, radius)


def edge_aware_upsample(maps: torch.Tensor, frames: torch.Tensor, radius: float = DEFAULT_RADIUS,
                        eps: float = DEFAULT_EPS) -> torch.Tensor:
    """Maps ``[n,K,h,w]`` -> ``[n,K,H,W]`` at the size of ``frames [n,H,W,3]`` (0..1), guided by the frames.

    ``radius`` is in map cells (at least one pixel of the work grid); ``eps`` > 0.
    """
    if frames.shape[0] != maps.shape[0]:
        raise ValueError(f"edge_aware_upsample: {maps.shape[0]} maps but {frames.shape[0]} frames")
    size = tuple(frames.shape[1:3])
    maps = maps.float()
    work = (min(size[0], maps.shape[-2] * WORK_CELL), min(size[1], maps.shape[-1] * WORK_CELL))
    cell = work[0] / maps.shape[-2]
    guide_full = frames[..., :3].permute(0, 3, 1, 2).to(maps.device, torch.float32)
    guide = guide_full if work == size else F.interpolate(guide_full, size=work, mode="bilinear", antialias=True,
                                                           align_corners=False)
    up = F.interpolate(maps, size=work, mode="bilinear", align_corners=False)
    a, b = guided_coefficients(guide, up, max(1, round(radius * cell)), eps)
    if work == size:
        return (a * guide_full[:, :, None]).sum(1) + b

    def to_frame(x):
        return F.interpolate(x, size=size, mode="bilinear", align_corners=False)

    out = to_frame(b)  # one colour channel at a time: at most three [n,K,H,W] tensors at the frame size
    for c in range(3):
        out += to_frame(a[:, c]) * guide_full[:, c:c + 1]
    return out
