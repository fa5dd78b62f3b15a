"""Crop-and-zoom refinement (method.md section 9, simplified to one box per window).

A coarse pass (one plain inflated-UNet forward, no temporal stages) finds the foreground
(``argmax != 0``) of every frame of the window; the union of the frames' foreground boxes, grown by
``margin`` of its width and height on each side, is cropped from every frame and resized to the
working size (aspect not kept, as in the reference); the fine pass (with the user's temporal
settings) runs on that crop video; its WAS is resized into the box of a canvas whose background
channel holds the fine WAS's global maximum and whose other channels hold its global minimum, so
the background wins outside the box.

One box per window (the reference crops each frame separately) keeps the crop a coherent video for
the inflated UNet, the tracker and the vote. The canvas is ``zoom`` times the latent grid so the
zoomed detail survives until the labels are upsampled to the frame size. Not done: the reference's
special case for wide frames (aspect > 1.5) and face tiling.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

Box = tuple[float, float, float, float]  # (top, left, bottom, right) in fractions of the frame


def foreground_box(was: torch.Tensor, margin: float = 0.04, min_cells: int = 1) -> Box | None:
    """Union box of the foreground (``argmax != 0``) of ``was [F,K,h,w]`` over all frames, grown by
    ``margin`` of its size per side and clipped to the frame, in frame fractions; None when the
    foreground covers fewer than ``min_cells`` cells or the whole frame."""
    fg = (was.argmax(1) != 0).any(0)  # [h,w]
    h, w = fg.shape
    if int(fg.sum()) < min_cells:
        return None
    rows = torch.nonzero(fg.any(1)).flatten()
    cols = torch.nonzero(fg.any(0)).flatten()
    top, bottom = float(rows[0]) / h, float(rows[-1] + 1) / h
    left, right = float(cols[0]) / w, float(cols[-1] + 1) / w
    dy, dx = (bottom - top) * margin, (right - left) * margin
    box = (max(0.0, top - dy), max(0.0, left - dx), min(1.0, bottom + dy), min(1.0, right + dx))
    if box == (0.0, 0.0, 1.0, 1.0):
        return None
    return box


def _pixels(box: Box, hw: tuple[int, int]) -> tuple[int, int, int, int]:
    """Integer pixel rows/cols ``[y0, y1) x [x0, x1)`` of ``box`` on a ``hw`` grid (at least one cell)."""
    h, w = hw
    y0, x0 = min(h - 1, math.floor(box[0] * h)), min(w - 1, math.floor(box[1] * w))
    y1, x1 = max(y0 + 1, math.ceil(box[2] * h)), max(x0 + 1, math.ceil(box[3] * w))
    return y0, min(h, y1), x0, min(w, x1)


def crop_frames(frames: torch.Tensor, box: Box) -> torch.Tensor:
    """The ``box`` of every frame ``[F,H,W,3]`` -> ``[F,h',w',3]`` (the caller resizes to the working size)."""
    y0, y1, x0, x1 = _pixels(box, tuple(frames.shape[1:3]))
    return frames[:, y0:y1, x0:x1]


def paste_was(fine: torch.Tensor, box: Box, canvas_hw: tuple[int, int]) -> torch.Tensor:
    """Fine-pass WAS ``[F,K,hc,wc]`` of the crop -> canvas ``[F,K,*canvas_hw]`` of the whole frame."""
    frames, k = fine.shape[:2]
    canvas = fine.new_empty(frames, k, *canvas_hw)
    canvas[:, 0] = fine.amax()
    canvas[:, 1:] = fine.amin()
    y0, y1, x0, x1 = _pixels(box, canvas_hw)
    canvas[:, :, y0:y1, x0:x1] = F.interpolate(fine, size=(y1 - y0, x1 - x0), mode="bilinear", align_corners=False)
    return canvas


def crop_was(canvas: torch.Tensor, box: Box, size: tuple[int, int]) -> torch.Tensor:
    """The ``box`` of canvas WAS ``[n,K,H,W]`` resized to the crop's grid ``size`` (for the window carry)."""
    y0, y1, x0, x1 = _pixels(box, tuple(canvas.shape[-2:]))
    return F.interpolate(canvas[:, :, y0:y1, x0:x1], size=size, mode="bilinear", align_corners=False)


def to_canvas(was: torch.Tensor, canvas_hw: tuple[int, int]) -> torch.Tensor:
    """Full-frame WAS ``[F,K,h,w]`` resized to the canvas (windows without a usable box)."""
    if tuple(was.shape[-2:]) == tuple(canvas_hw):
        return was
    return F.interpolate(was, size=canvas_hw, mode="bilinear", align_corners=False)
