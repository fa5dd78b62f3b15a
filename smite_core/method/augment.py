"""Joint augmentations of a reference image and its label map for embedding training.

Torch only, driven by a ``torch.Generator`` so that a seed reproduces the exact sequence. Order of
the SMITE recipe: zoom-out -> resize -> Gaussian blur -> coarse dropout -> horizontal flip ->
part-keeping square crop (resized back) -> rotation. Label maps are only ever sampled with
nearest neighbour, so every output id is an input id (or 0, the background, for filled areas).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..errors import InputError


@dataclass
class AugmentConfig:
    """Probabilities and ranges; sizes in pixels of a ``hole_canvas``-sized image.

    ``blur_p``/``rotate_p`` default to 0.5 (the albumentations defaults of the reference recipe);
    a blur kernel of 1 leaves the image unchanged.
    """

    zoom_out_p: float = 0.1
    zoom_out_scale: tuple[float, float] = (0.5, 0.8)
    blur_p: float = 0.5
    blur_max_kernel: int = 5
    holes_p: float = 0.3
    holes_count: tuple[int, int] = (1, 8)
    hole_size: tuple[int, int] = (16, 128)
    hole_canvas: int = 512
    flip: bool = True
    flip_p: float = 0.5
    crop: bool = True
    min_crop_ratio: float = 0.6
    crop_tries: int = 20
    crop_keep: float = 0.3
    rotate_p: float = 0.5
    rotate_degrees: float = 30.0

    @classmethod
    def none(cls) -> "AugmentConfig":
        """No augmentation: :func:`augment_pair` only resizes."""
        return cls(zoom_out_p=0.0, blur_p=0.0, holes_p=0.0, flip=False, crop=False, rotate_p=0.0)


# ----------------------------------------------------------------------------- random draws


def _uniform(gen: torch.Generator, low: float, high: float) -> float:
    return low + (high - low) * float(torch.rand((), generator=gen))


def _randint(gen: torch.Generator, low: int, high: int) -> int:
    """Integer in ``low..high`` inclusive."""
    return int(torch.randint(int(low), int(high) + 1, (1,), generator=gen))


def _chance(gen: torch.Generator, p: float) -> bool:
    return float(torch.rand((), generator=gen)) < p


# ----------------------------------------------------------------------------- geometry


def _resize(image: torch.Tensor, labels: torch.Tensor, size: tuple[int, int]):
    """Image ``[3,H,W]`` bilinear (antialiased), labels ``[H,W]`` nearest -> ``size`` (h, w)."""
    size = (int(size[0]), int(size[1]))
    if tuple(image.shape[1:]) == size:
        return image, labels
    image = F.interpolate(image[None], size=size, mode="bilinear", align_corners=False,
                          antialias=True)[0]
    labels = F.interpolate(labels[None, None].to(torch.float32), size=size, mode="nearest-exact")
    return image.clamp(0.0, 1.0), labels[0, 0].round().to(torch.int64)


def _zoom_out(image, labels, gen, scale_range):
    """Shrink by U(scale_range) and paste at a random position on a black canvas."""
    _, height, width = image.shape
    scale = _uniform(gen, *scale_range)
    h, w = max(1, round(height * scale)), max(1, round(width * scale))
    small_image, small_labels = _resize(image, labels, (h, w))
    top, left = _randint(gen, 0, height - h), _randint(gen, 0, width - w)
    canvas = torch.zeros_like(image)
    canvas_labels = torch.zeros_like(labels)
    canvas[:, top:top + h, left:left + w] = small_image
    canvas_labels[top:top + h, left:left + w] = small_labels
    return canvas, canvas_labels


def _gaussian_blur(image: torch.Tensor, kernel: int) -> torch.Tensor:
    """Separable Gaussian blur, OpenCV's sigma for the kernel size, replicated borders."""
    if kernel <= 1:
        return image
    sigma = 0.3 * ((kernel - 1) * 0.5 - 1) + 0.8
    x = torch.arange(kernel, dtype=torch.float32) - (kernel - 1) / 2
    weights = torch.exp(-(x ** 2) / (2 * sigma ** 2))
    weights = (weights / weights.sum()).to(image.dtype)
    pad = kernel // 2
    out = F.pad(image[None], (pad, pad, pad, pad), mode="replicate")
    out = F.conv2d(out, weights.view(1, 1, 1, -1).repeat(3, 1, 1, 1), groups=3)
    out = F.conv2d(out, weights.view(1, 1, -1, 1).repeat(3, 1, 1, 1), groups=3)
    return out[0]


def _coarse_dropout(image, labels, gen, config: AugmentConfig):
    """Zero 1-8 rectangles (sides from ``hole_size`` on the canvas, scaled to this image)."""
    image, labels = image.clone(), labels.clone()
    _, height, width = image.shape
    for _ in range(_randint(gen, *config.holes_count)):
        hole_h = max(1, round(_randint(gen, *config.hole_size) * height / config.hole_canvas))
        hole_w = max(1, round(_randint(gen, *config.hole_size) * width / config.hole_canvas))
        hole_h, hole_w = min(hole_h, height), min(hole_w, width)
        top, left = _randint(gen, 0, height - hole_h), _randint(gen, 0, width - hole_w)
        image[:, top:top + hole_h, left:left + hole_w] = 0.0
        labels[top:top + hole_h, left:left + hole_w] = 0
    return image, labels


def _pick_crop(labels, gen, config: AugmentConfig, part_index: int) -> tuple[int, int, int]:
    """(top, left, side) of a random square crop keeping > ``crop_keep`` of part
    ``part_index``'s pixels (rejection sampling, ``crop_tries`` tries); if every try misses, the
    largest side drawn is centred on the part's bounding box. Any crop if the part is absent."""
    height, width = labels.shape
    part = labels == part_index
    total = int(part.sum())
    largest = 1
    for _ in range(max(1, config.crop_tries)):
        side = max(1, round(_uniform(gen, config.min_crop_ratio, 1.0) * min(height, width)))
        top, left = _randint(gen, 0, height - side), _randint(gen, 0, width - side)
        if total == 0:
            return top, left, side
        if int(part[top:top + side, left:left + side].sum()) / total > config.crop_keep:
            return top, left, side
        largest = max(largest, side)
    rows, cols = part.any(dim=1).nonzero()[:, 0], part.any(dim=0).nonzero()[:, 0]
    centre_y = (int(rows.min()) + int(rows.max()) + 1) // 2
    centre_x = (int(cols.min()) + int(cols.max()) + 1) // 2
    top = min(max(centre_y - largest // 2, 0), height - largest)
    left = min(max(centre_x - largest // 2, 0), width - largest)
    return top, left, largest


def _rotate(image, labels, degrees: float):
    """Rotate about the centre by ``degrees``; uncovered corners become 0 (image and labels)."""
    _, height, width = image.shape
    c, s = math.cos(math.radians(degrees)), math.sin(math.radians(degrees))
    theta = torch.tensor([[c, -s * height / width, 0.0], [s * width / height, c, 0.0]],
                         dtype=torch.float32)[None]
    grid = F.affine_grid(theta, [1, 3, height, width], align_corners=False)
    image = F.grid_sample(image[None], grid, mode="bilinear", padding_mode="zeros",
                          align_corners=False)[0]
    labels = F.grid_sample(labels[None, None].to(torch.float32), grid, mode="nearest",
                           padding_mode="zeros", align_corners=False)[0, 0]
    return image.clamp(0.0, 1.0), labels.round().to(torch.int64)


# ----------------------------------------------------------------------------- entry point


def augment_pair(image: torch.Tensor, labels: torch.Tensor, out_size: tuple[int, int],
                 gen: torch.Generator, config: AugmentConfig,
                 part_index: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Augment an image float ``[3,H,W]`` in 0..1 and its int64 labels ``[H,W]`` jointly.

    Returns image float32 ``[3,h,w]`` in 0..1 and labels int64 ``[h,w]``, ``(h, w) = out_size``.
    The square crop keeps part ``part_index`` in view where it can (see :func:`_pick_crop`).
    """
    if image.ndim != 3 or image.shape[0] != 3 or tuple(labels.shape) != tuple(image.shape[1:]):
        raise InputError(
            f"augment_pair: expected image [3,H,W] and labels [H,W], got "
            f"{tuple(image.shape)} and {tuple(labels.shape)}"
        )
    image = image.detach().to(torch.float32)
    labels = labels.detach().to(torch.int64)
    if _chance(gen, config.zoom_out_p):
        image, labels = _zoom_out(image, labels, gen, config.zoom_out_scale)
    image, labels = _resize(image, labels, out_size)
    if _chance(gen, config.blur_p):
        image = _gaussian_blur(image, 2 * _randint(gen, 0, (config.blur_max_kernel - 1) // 2) + 1)
    if _chance(gen, config.holes_p):
        image, labels = _coarse_dropout(image, labels, gen, config)
    if config.flip and _chance(gen, config.flip_p):
        image, labels = image.flip(-1), labels.flip(-1)
    if config.crop:
        top, left, side = _pick_crop(labels, gen, config, part_index)
        image = image[:, top:top + side, left:left + side]
        labels = labels[top:top + side, left:left + side]
        image, labels = _resize(image, labels, out_size)
    if config.rotate_degrees and _chance(gen, config.rotate_p):
        angle = _uniform(gen, -config.rotate_degrees, config.rotate_degrees)
        image, labels = _rotate(image, labels, angle)
    return image.contiguous(), labels.contiguous()
