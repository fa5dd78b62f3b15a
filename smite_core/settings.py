"""Ranges of the numeric settings: one definition, read by the config checks, the CLI and the node widgets.

A config dataclass declares a bounded field with :func:`ranged` (``window: int = ranged(16, 1, 256)``);
:func:`check_ranges` refuses a value outside it with one line naming the setting, ``smite --help``
shows the range, and the ComfyUI widgets take their ``min``/``max`` from :func:`widget`. Image sides
have one more rule that needs the backbone (:func:`check_side`): a multiple of what its VAE and UNet
downsample by, between one such multiple and :data:`MAX_SIDE`.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from .errors import InputError

MAX_SIDE = 2048  # largest working or training side in pixels
MAX_SEED = 2 ** 63 - 1


def ranged(default: Any, low: float, high: float, *, optional: bool = False) -> Any:
    """A dataclass field with the inclusive range ``[low, high]``: an integer setting when both bounds are
    ``int``, else a number (``optional``: None is allowed too)."""
    integer = isinstance(low, int) and isinstance(high, int)
    return dataclasses.field(default=default, metadata={"range": (low, high), "optional": optional,
                                                        "integer": integer})


def range_of(config_cls, name: str) -> tuple[float, float]:
    """The ``(low, high)`` of the field ``name`` of a config dataclass."""
    return {f.name: f for f in dataclasses.fields(config_cls)}[name].metadata["range"]


def option_name(name: str) -> str:
    """A field's name as the CLI spells it (``track_weight`` -> ``track-weight``)."""
    return name.replace("_", "-")


def check_value(name: str, value: Any, low: float, high: float, integer: bool) -> None:
    """Refuse ``value`` unless it is a finite number (an integer when ``integer``) in ``[low, high]``."""
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not number or (integer and not isinstance(value, int)) or not math.isfinite(value) or not low <= value <= high:
        kind, bounds = ("an integer", f"{low} and {high}") if integer else ("a number", f"{low:g} and {high:g}")
        raise InputError(f"{option_name(name)}: must be {kind} between {bounds} (got {value!r})")


def check_ranges(config) -> None:
    """Check every :func:`ranged` field of the dataclass instance ``config``."""
    for field in dataclasses.fields(config):
        if "range" not in field.metadata:
            continue
        value = getattr(config, field.name)
        if value is None and field.metadata["optional"]:
            continue
        check_value(field.name, value, *field.metadata["range"], integer=field.metadata["integer"])


def widget(config_cls, name: str, **options) -> dict:
    """ComfyUI widget options for the field ``name``: its default, min and max (plus ``options``)."""
    field = {f.name: f for f in dataclasses.fields(config_cls)}[name]
    low, high = field.metadata["range"]
    return {"default": field.default, "min": low, "max": high, **options}


def check_side(side: int | tuple[int, int] | None, multiple: int, what: str = "size") -> None:
    """Refuse an image side (or ``(H, W)``) that is not a multiple of ``multiple`` between ``multiple``
    and :data:`MAX_SIDE` (None: the backbone's own size). The message names the nearest valid sides."""
    if side is None:
        return
    for value in (side if isinstance(side, tuple) else (side,)):
        valid = isinstance(value, int) and not isinstance(value, bool)
        if not (valid and multiple <= value <= MAX_SIDE and value % multiple == 0):
            raise InputError(f"{what}: must be a multiple of {multiple} pixels between {multiple} and {MAX_SIDE} "
                             f"for this backbone (got {value!r}{_nearest_sides(value, multiple)})")


def _nearest_sides(value: Any, multiple: int) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return ""
    below = int(value) // multiple * multiple
    sides = sorted({min(MAX_SIDE, max(multiple, side)) for side in (below, below + multiple)})
    return "; " + " or ".join(map(str, sides)) + " would do"
