"""Label maps as ComfyUI IMAGEs: segment ids <-> colours.

SMITE writes label maps as IMAGEs in its palette colours (the DAVIS/VOC palette of
``smite_core.io.label_png.palette``: id 1 dark red, 2 green, 3 olive, ...). Reading an IMAGE back
accepts the same palette, greyscale ids (pixel value = id; a black/white mask is id 1) or any other
colour coding (each distinct non-black colour is a segment, numbered in sorted RGB order).
"""

from __future__ import annotations

import torch

from smite_core.checks import require_finite
from smite_core.errors import InputError
from smite_core.io.label_png import palette
from smite_core.io.references import MAX_SEGMENTS


def _palette_tensor() -> torch.Tensor:
    return torch.from_numpy(palette(256)).to(torch.int64)


def ids_to_image(labels: torch.Tensor) -> torch.Tensor:
    """Integer labels ``[T,H,W]`` -> palette-coloured IMAGE float32 ``[T,H,W,3]``."""
    colours = _palette_tensor().to(torch.float32) / 255.0
    return colours[labels.to(torch.int64).clamp(0, 255)]


def image_to_ids(image: torch.Tensor, what: str = "label_map", notes: list | None = None) -> torch.Tensor:
    """A label-map IMAGE ``[N,H,W,3]`` (or ``[H,W,3]``; 1-channel and RGBA accepted) -> int64 ids
    ``[N,H,W]`` (see module doc). With ``notes`` (a list) one line saying how it was read is appended."""
    image = torch.as_tensor(image)
    if image.ndim == 3:
        image = image[None]
    if image.ndim != 4 or image.shape[-1] not in (1, 3, 4):
        raise InputError(f"{what}: expected an IMAGE [N,H,W,3], got shape {tuple(image.shape)}")
    if min(image.shape) == 0:
        raise InputError(f"{what}: empty IMAGE (shape {tuple(image.shape)})")
    require_finite(image, what, "image")
    notes = notes if notes is not None else []
    image = image.expand(-1, -1, -1, 3) if image.shape[-1] == 1 else image
    rgb = (image[..., :3].detach().cpu().float().clamp(0, 1) * 255.0).round().to(torch.int64)
    codes = rgb[..., 0] * 65536 + rgb[..., 1] * 256 + rgb[..., 2]
    found = torch.unique(codes)
    if found.numel() > MAX_SEGMENTS + 1:
        raise InputError(f"{what}: {found.numel()} different colours; a label map has at most {MAX_SEGMENTS} "
                         "segments plus black background (use a lossless PNG, not a JPEG)")
    r, g, b = found // 65536, (found // 256) % 256, found % 256
    if bool(((r == g) & (g == b)).all()):  # greyscale: the value is the id, unless it is a 0/255 mask
        levels = r
        if int(levels.max()) >= MAX_SEGMENTS:
            ids = torch.zeros_like(levels)
            foreground = levels[levels > 0]
            ids[levels > 0] = torch.arange(1, foreground.numel() + 1)
            notes.append(f"{what}: greyscale with {foreground.numel()} bright level(s) (a mask); "
                         "each non-black level is a segment, darkest first")
            return _lookup(codes, found, ids)
        notes.append(f"{what}: greyscale ids (pixel value = segment id)")
        return _lookup(codes, found, levels)
    pal = _palette_tensor()
    pal_codes = pal[:, 0] * 65536 + pal[:, 1] * 256 + pal[:, 2]
    match = found[:, None] == pal_codes[None]
    if bool(match.any(1).all()):
        notes.append(f"{what}: SMITE palette colours (ids from the palette)")
        return _lookup(codes, found, match.to(torch.int64).argmax(1))
    ids = torch.zeros_like(found)
    ids[found > 0] = torch.arange(1, int((found > 0).sum()) + 1)  # sorted RGB order, black = 0
    pairs = ", ".join(f"{[int(r[j]), int(g[j]), int(b[j])]}={int(ids[j])}"
                      for j in range(found.numel()) if ids[j] > 0)
    notes.append(f"{what}: colour-coded (each colour a segment, black = background, sorted RGB order): {pairs}")
    return _lookup(codes, found, ids)


def _lookup(codes: torch.Tensor, found: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Replace each colour code by its id (``found`` is sorted, as ``torch.unique`` returns it)."""
    return ids[torch.searchsorted(found, codes)]
