"""Label-map PNG files: palette PNGs written and read the way DAVIS-style datasets store them.

A label map is an integer array ``[H,W]`` with 0 = background and ids 1..255 for segments.
Written files are palette PNGs (mode ``"P"``) whose pixel values are the ids and whose palette is
:func:`palette`, so they open as coloured images anywhere and round-trip exactly.

Reading accepts the layouts label files come in: palette PNGs (the indices), greyscale ``"L"``,
16/32-bit ``"I;16"``/``"I"``, 1-bit ``"1"``, and RGB/RGBA whose three channels are equal (grey
saved as colour). Colour-coded RGB labels (channels differ) need an explicit colour -> id map
(``read_label_png(path, colors=...)``) or are read as colours with :func:`read_color_label_png`.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..errors import InputError, reason
from .fileio import atomic_path

_GREY_MODES = ("L", "LA", "I;16", "I;16B", "I;16L", "I", "1", "P", "PA")
_COLOR_MODES = ("RGB", "RGBA", "RGBX")


def palette(num_colors: int = 256) -> np.ndarray:
    """Deterministic distinct colours, uint8 ``[num_colors,3]``; index 0 is black.

    Bit-interleaving scheme (as in PASCAL VOC / DAVIS): bit ``3j+c`` of the index sets bit
    ``7-j`` of channel ``c``, so small ids get strong, well separated colours.
    """
    if not 0 <= num_colors <= 256:
        raise ValueError(f"num_colors must be in 0..256, got {num_colors}")
    ids = np.arange(num_colors, dtype=np.int64)
    colours = np.zeros((num_colors, 3), dtype=np.int64)
    for j in range(8):
        for c in range(3):
            bit = (ids >> (3 * j + c)) & 1
            colours[:, c] |= bit << (7 - j)
    return colours.astype(np.uint8)


def _as_label_array(labels, name: str) -> np.ndarray:
    """Validate an integer ``[H,W]`` array/tensor with values 0..255; return uint8 numpy."""
    if isinstance(labels, torch.Tensor):
        labels = labels.detach().cpu().numpy()
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise InputError(f"{name}: label map must be [H,W], got shape {tuple(labels.shape)}")
    if labels.dtype == np.bool_:
        return labels.astype(np.uint8)
    if not np.issubdtype(labels.dtype, np.integer):
        raise InputError(f"{name}: label map must be integer, got dtype {labels.dtype}")
    if labels.size and (labels.min() < 0 or labels.max() > 255):
        raise InputError(
            f"{name}: label values must be in 0..255, got {int(labels.min())}..{int(labels.max())}"
        )
    return labels.astype(np.uint8)


def save_label_png(path: str | os.PathLike, labels, overwrite: bool = False) -> Path:
    """Write ``labels`` (integer ``[H,W]``, values 0..255, numpy or torch) as a palette PNG.

    The file is written atomically; an existing ``path`` is refused unless ``overwrite``.
    Returns the path written.
    """
    path = Path(path)
    array = _as_label_array(labels, str(path))
    image = Image.fromarray(array)
    image.putpalette(palette(256).tobytes())
    with atomic_path(path, overwrite=overwrite) as tmp:
        image.save(tmp, format="PNG", optimize=False)
    return path


def _open_image(path: str | os.PathLike) -> Image.Image:
    """Open and fully decode an image file; unreadable/garbage/truncated -> InputError."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: label file does not exist")
    try:
        with Image.open(path) as image:
            image.load()
            return image.copy()
    except Exception as err:  # PIL raises OSError, SyntaxError, ValueError, zlib.error, ...
        raise InputError(f"{path}: cannot read label image ({reason(err)})") from err


def _rgb_channels(image: Image.Image) -> np.ndarray:
    """uint8 ``[H,W,3]`` of an RGB/RGBA image (alpha dropped)."""
    return np.asarray(image.convert("RGB"), dtype=np.uint8)


def _is_color_coded(rgb: np.ndarray) -> bool:
    return bool(np.any(rgb[..., 0] != rgb[..., 1]) or np.any(rgb[..., 0] != rgb[..., 2]))


def _grey_values(image: Image.Image, path: Path) -> np.ndarray:
    """int64 ``[H,W]`` values of a palette / greyscale / 16-bit / 1-bit image."""
    mode = image.mode
    if mode in ("LA", "PA"):
        values = np.asarray(image, dtype=np.int64)[..., 0]
    else:
        values = np.asarray(image).astype(np.int64)
    if values.size and values.min() < 0:
        raise InputError(f"{path}: label values must not be negative (mode {mode})")
    return values


def _map_colors(rgb: np.ndarray, colors: dict, path: Path) -> np.ndarray:
    """Map each pixel colour of ``rgb`` ``[H,W,3]`` to its id; black is 0 unless mapped."""
    table = {(0, 0, 0): 0}
    table.update({tuple(int(v) for v in colour): int(i) for colour, i in colors.items()})
    flat = rgb.reshape(-1, 3)
    codes = (flat[:, 0].astype(np.int64) << 16) | (flat[:, 1].astype(np.int64) << 8) | flat[:, 2]
    unique, inverse = np.unique(codes, return_inverse=True)
    ids = np.empty(len(unique), dtype=np.int64)
    for n, code in enumerate(unique.tolist()):
        colour = ((code >> 16) & 255, (code >> 8) & 255, code & 255)
        if colour not in table:
            raise InputError(f"{path}: unknown label colour {colour} (not in the colour map)")
        ids[n] = table[colour]
    return ids[inverse.reshape(-1)].reshape(rgb.shape[:2])


def read_label_png(
    path: str | os.PathLike, colors: dict[tuple[int, int, int], int] | None = None
) -> np.ndarray:
    """Read a label file -> int64 ``[H,W]`` ids (0 = background).

    Palette PNGs give their indices; ``L``/``I;16``/``I``/``1`` images their values; RGB/RGBA
    with equal channels their grey value. With ``colors`` (RGB tuple -> id, black = 0 unless
    listed) RGB/RGBA images are decoded by colour and an unlisted colour raises InputError.
    Without ``colors`` a colour-coded RGB label raises InputError (see
    :func:`read_color_label_png`).
    """
    path = Path(path)
    image = _open_image(path)
    if image.mode in _GREY_MODES:
        return _grey_values(image, path)
    if image.mode not in _COLOR_MODES:
        raise InputError(f"{path}: unsupported label image mode {image.mode}")
    rgb = _rgb_channels(image)
    if colors is not None:
        return _map_colors(rgb, colors, path)
    if _is_color_coded(rgb):
        raise InputError(
            f"{path}: colour-coded RGB label; give a colour -> id map "
            "(segments.json 'colors') or save it as a palette/greyscale PNG"
        )
    return rgb[..., 0].astype(np.int64)


def read_color_label_png(path: str | os.PathLike) -> np.ndarray:
    """Read a label file as colours -> uint8 ``[H,W,3]`` (alpha dropped, palette expanded)."""
    path = Path(path)
    image = _open_image(path)
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        raise InputError(f"{path}: {image.mode} image has no colours to read")
    return _rgb_channels(image)


def describe_label_png(path: str | os.PathLike) -> str:
    """How :func:`read_label_png` reads this file, in words (for messages to the user)."""
    image = _open_image(path)
    mode = image.mode
    if mode in ("P", "PA"):
        return "palette PNG (ids = palette indices)"
    if mode in ("L", "LA"):
        return "greyscale (ids = grey values)"
    if mode in ("I;16", "I;16B", "I;16L", "I"):
        return "16/32-bit greyscale (ids = values)"
    if mode == "1":
        return "1-bit (white = id 1)"
    if mode in _COLOR_MODES:
        if _is_color_coded(_rgb_channels(image)):
            return "colour-coded RGB (each colour a segment, black = background)"
        return "grey saved as RGB (ids = grey values)"
    return f"unsupported mode {mode}"


def is_color_label_png(path: str | os.PathLike) -> bool:
    """True when ``path`` is an RGB/RGBA image whose channels differ (a colour-coded label)."""
    path = Path(path)
    image = _open_image(path)
    if image.mode not in _COLOR_MODES:
        return False
    return _is_color_coded(_rgb_channels(image))
