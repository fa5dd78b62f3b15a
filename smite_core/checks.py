"""Checks on tensors handed to the library (by the CLI, the ComfyUI nodes or scripts).

A NaN or infinite value in an image, mask or latent would silently turn into garbage masks (NaN
compares false, ``clamp`` maps infinities to 0 or 1), so the entry points refuse them with one line
naming the input and the first frame or item at fault.
"""

from __future__ import annotations

import torch

from .errors import InputError


def require_finite(tensor, what: str, item: str | None = "frame", first: int = 0, chunk: int = 16) -> None:
    """Raise :class:`InputError` if ``tensor`` holds NaN or infinite values.

    ``what`` names the input (``"images"``, ``"mask_2"`` ...). With ``item`` (``"frame"``) the first
    bad index along dim 0 is reported as ``frame <first + i>``; ``item=None`` reports the tensor as a whole.
    Integer and boolean tensors are always finite. Checked ``chunk`` items at a time, so a long video
    never needs a second full-size boolean tensor.
    """
    if not isinstance(tensor, torch.Tensor) or not (tensor.is_floating_point() or tensor.is_complex()):
        return
    batch = tensor if item is not None and tensor.ndim > 0 else tensor.reshape(1, -1)
    for start in range(0, batch.shape[0], chunk):
        part = batch[start:start + chunk]
        finite = torch.isfinite(part)
        if bool(finite.all()):
            continue
        bad = (~finite).reshape(part.shape[0], -1)
        index = start + int(bad.any(1).to(torch.uint8).argmax())
        count = int(bad[index - start].sum())
        where = f"{what}: {item} {first + index}" if item is not None else what
        raise InputError(f"{where} holds {count} NaN or infinite value(s) (whatever produced it is broken; "
                         "fix it upstream)")
