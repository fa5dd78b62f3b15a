"""Colour keys: which colour is which segment, wherever a colour means a part.

Segment ``i`` is drawn in ``label_png.palette`` colour ``i`` everywhere (label PNGs, overlays, the
demo's summary); :func:`segment_colors` gives those colours for ``segments.json``, :func:`key_image`
draws a key (a swatch and the name per segment) and :func:`with_key` puts one in the corner of a
frame. Text uses Pillow's built-in font, so nothing is downloaded or looked up on the system.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .label_png import palette

KEY_OPACITY = 0.85  # of the key's white box over a frame


def segment_colors(count: int) -> list[list[int]]:
    """The RGB colour ``[r, g, b]`` (0..255) of segments ``0..count-1`` (segment 0, the background, is black)."""
    return palette(256)[:count].tolist()


def key_font(size: int) -> ImageFont.ImageFont:
    """Pillow's built-in font at ``size`` pixels (the fixed bitmap font on Pillow < 10.1)."""
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: one size only
        return ImageFont.load_default()


def key_image(names: list[str], size: int = 12) -> np.ndarray:
    """A key, uint8 ``[h,w,3]`` on white: one row per segment, its colour swatch (outlined) and its name."""
    font = key_font(size)
    pad, row = max(2, size // 3), size + max(3, size // 2)
    swatch = size
    width = pad * 3 + swatch + max(int(np.ceil(font.getlength(n))) for n in names)
    image = Image.new("RGB", (width, pad * 2 + row * len(names)), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    for i, (name, colour) in enumerate(zip(names, segment_colors(len(names)))):
        top = pad + i * row + (row - swatch) // 2
        draw.rectangle([pad, top, pad + swatch - 1, top + swatch - 1], fill=tuple(colour), outline=(96, 96, 96))
        draw.text((pad * 2 + swatch, top + swatch // 2), name, fill=(0, 0, 0), font=font, anchor="lm")
    return np.asarray(image)


def key_for_frame(names: list[str], height: int, width: int) -> np.ndarray | None:
    """A key sized for a ``height x width`` frame (text about 1/40 of its height, 8 to 24 px), or None
    when even the smallest one would cover more than half of the frame's width or height."""
    for size in range(min(24, max(8, round(height / 40))), 7, -2):
        key = key_image(names, size)
        if key.shape[0] <= height // 2 and key.shape[1] <= width // 2:
            return key
    return None


def with_key(frames: np.ndarray, names: list[str]) -> np.ndarray:
    """``frames`` uint8 ``[n,H,W,3]`` (or float in 0..1) with the key in the top-left corner of each.
    Frames too small for a legible key are returned unchanged."""
    key = key_for_frame(names, frames.shape[1], frames.shape[2])
    if key is None:
        return frames
    out = frames.copy()
    h, w = key.shape[:2]
    scale = 1.0 if out.dtype == np.uint8 else 255.0
    corner = out[:, :h, :w].astype(np.float32) * scale
    blended = KEY_OPACITY * key.astype(np.float32) + (1 - KEY_OPACITY) * corner
    out[:, :h, :w] = (blended / scale).astype(out.dtype) if scale != 1.0 else np.round(blended).astype(np.uint8)
    return out
