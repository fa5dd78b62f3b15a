"""Inversion: frames -> VAE latents (the posterior mean, defect D16) -> noised to a low timestep.

SMITE noises the clean video latent once with ``scheduler.add_noise`` at a low timestep
(t ~ U{95..104} by default, docs/method.md 6.3); segmentation reads the attention maps of the
denoiser at that step.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import InputError
from ..model.backbone import Backbone

DEFAULT_TIMESTEPS = (95, 104)  # inclusive range of the inference timestep
MAX_TIMESTEP = 999  # the last of the 1000 training timesteps of every supported scheduler


def check_timesteps(timesteps: tuple[int, int], what: str = "timesteps") -> None:
    """Refuse an inclusive timestep range unless ``1 <= low <= high <= MAX_TIMESTEP`` (integers)."""
    low, high = timesteps
    if not all(isinstance(t, int) and not isinstance(t, bool) for t in (low, high)) \
            or not 1 <= low <= high <= MAX_TIMESTEP:
        raise InputError(f"{what}: need integers 1 <= min <= max <= {MAX_TIMESTEP} (got {low}, {high})")


def working_size(backbone: Backbone, frame_hw: tuple[int, int], size: int | tuple[int, int] | None = None) -> tuple[int, int]:
    """The ``(H, W)`` frames are resized to: ``size`` or the backbone's square segmentation
    resolution, floored to the backbone's size multiple (at least one multiple)."""
    if size is None:
        size = backbone.segment_resolution
    h, w = (size, size) if isinstance(size, int) else size
    m = backbone.size_multiple
    return max(m, h // m * m), max(m, w // m * m)


def prepare_frames(frames: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``[n,H,W,3]`` 0..1 -> ``[n,3,h,w]`` in -1..1 at ``size`` (antialiased bilinear)."""
    x = frames.permute(0, 3, 1, 2).float()
    if tuple(x.shape[-2:]) != tuple(size):
        x = F.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)
    return x.clamp(0, 1) * 2 - 1


@torch.no_grad()
def encode_frames(backbone: Backbone, frames: torch.Tensor, size: tuple[int, int], batch: int = 8) -> torch.Tensor:
    """VAE-encode ``frames [n,H,W,3]`` (0..1) at ``size``: latent means ``[n,4,h/8,w/8]``, scaled."""
    vae = backbone.vae
    out = []
    for start in range(0, frames.shape[0], batch):
        x = prepare_frames(frames[start:start + batch], size).to(backbone.device, backbone.dtype)
        out.append(vae.encode(x).latent_dist.mean * vae.config.scaling_factor)
    return torch.cat(out)


def sample_timestep(generator: torch.Generator, timesteps: tuple[int, int] = DEFAULT_TIMESTEPS) -> int:
    """A timestep drawn uniformly from the inclusive range ``timesteps``."""
    low, high = timesteps
    return int(torch.randint(low, high + 1, (1,), generator=generator).item())


def add_noise(backbone: Backbone, latents: torch.Tensor, timestep: int, generator: torch.Generator) -> torch.Tensor:
    """``z_t = sqrt(a_t) z_0 + sqrt(1-a_t) eps`` with seeded noise (drawn on CPU: same on every device)."""
    noise = torch.randn(latents.shape, generator=generator, dtype=torch.float32).to(latents.device, latents.dtype)
    t = torch.tensor([timestep], dtype=torch.long)
    return backbone.scheduler.add_noise(latents, noise, t.to(latents.device))
