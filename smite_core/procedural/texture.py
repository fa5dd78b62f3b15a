"""Layer 2 of the procedural generator: colours, value noise and textures.

Textures are functions of local (unit) coordinates, so they move with the part they paint:
:func:`make_texture` makes a :class:`Texture` spec of one family (stripes, checker, dots, noise,
gradient, radial, spokes, wheel, bricks, scales, wood), :func:`eval_texture` evaluates it on a grid,
:func:`random_texture` draws a generic one of any family and palette. Colours: :func:`hsv`,
:func:`rand_hsv`. Uses only layer 1 (:mod:`.geometry`).
"""

from __future__ import annotations

import colorsys
import math
from dataclasses import dataclass

import cv2
import numpy as np

from .geometry import smoothstep

# ----------------------------------------------------------------------------------------------
# colours


def hsv(h: float, s: float, v: float) -> np.ndarray:
    """HSV (hue wraps) -> RGB float32 [3] in 0..1."""
    return np.array(colorsys.hsv_to_rgb(h % 1.0, min(max(s, 0.0), 1.0), min(max(v, 0.0), 1.0)),
                    dtype=np.float32)


def rand_hsv(rng, h, s, v) -> np.ndarray:
    """A random colour: hue, saturation and value drawn uniformly from the ``(lo, hi)`` ranges ``h, s, v``."""
    return hsv(rng.uniform(*h), rng.uniform(*s), rng.uniform(*v))


# ----------------------------------------------------------------------------------------------
# value noise


@dataclass
class Noise:
    """Fractal value noise: one random grid per octave, ``cells`` units apart, starting at ``origin``."""

    grids: tuple
    cells: tuple
    origin: float


def make_noise(rng, cell, octaves=2, extent=(-160.0, 160.0)) -> Noise:
    """Value noise of ``octaves`` octaves (feature size ``cell`` units, halving) over ``extent``."""
    grids, cells = [], []
    for k in range(octaves):
        c = max(cell / 2**k, 0.6)
        n = min(int((extent[1] - extent[0]) / c) + 4, 2048)
        grids.append(rng.random((n, n), dtype=np.float32))
        cells.append(c)
    return Noise(tuple(grids), tuple(cells), float(extent[0]))


def sample_noise(noise: Noise, U, V) -> np.ndarray:
    """Fractal value noise at unit coordinates ``U, V``; float32, roughly 0..1 with mean 0.5."""
    acc = np.zeros(U.shape, np.float32)
    wsum = 0.0
    for k, (g, c) in enumerate(zip(noise.grids, noise.cells)):
        w = 0.5**k
        mx = ((U - noise.origin) / c).astype(np.float32)
        my = ((V - noise.origin) / c).astype(np.float32)
        acc += w * cv2.remap(g, mx, my, cv2.INTER_CUBIC, borderMode=cv2.BORDER_WRAP)
        wsum += w
    return np.clip((acc / wsum - 0.5) * (1.6 + 0.6 * (len(noise.grids) - 1)) + 0.5, 0.0, 1.0)


# ----------------------------------------------------------------------------------------------
# textures: functions of local (unit) coordinates, so they move with their part

_TEX_KINDS = ("stripes", "checker", "dots", "noise", "gradient", "radial", "spokes", "bricks",
              "scales", "wood")


@dataclass
class Texture:
    """A texture spec (see :func:`make_texture`); evaluate it with :func:`eval_texture`."""

    kind: str
    c1: np.ndarray
    c2: np.ndarray
    period: float = 6.0
    angle: float = 0.0
    soft: float = 0.3
    center: tuple = (0.0, 0.0)
    radius: float = 10.0
    count: int = 8
    warp: float = 0.0
    noise: Noise | None = None
    ramp: float = 0.0
    ramp_angle: float = 90.0
    grain: float = 0.08
    grain_noise: Noise | None = None
    c3: np.ndarray | None = None


def make_texture(rng, kind, c1, c2, *, cell=6.0, grain_cell=4.0, extent=(-160.0, 160.0), **kw) -> Texture:
    """A texture spec; ``cell`` sets the noise feature size (units) where the kind uses noise.

    Noise is defined without repetition over ``extent`` (units) in both coordinates.
    """
    uses_noise = kind in ("noise", "wood") or kw.get("warp", 0)
    noise = make_noise(rng, cell, 3, extent) if uses_noise else None
    return Texture(kind, np.asarray(c1, np.float32), np.asarray(c2, np.float32), noise=noise,
                   grain_noise=make_noise(rng, grain_cell, 2, extent), **kw)


def _two_tone(tx: Texture, U, V) -> np.ndarray:
    """Mix weight ``[h,w]`` (0 = ``c1``, 1 = ``c2``) of a two-colour texture family at ``U, V``."""
    a = math.radians(tx.angle)
    R = U * math.cos(a) + V * math.sin(a)
    S = -U * math.sin(a) + V * math.cos(a)
    p = max(tx.period, 1e-3)
    k = tx.kind
    if k == "stripes" or k == "wood":
        r = R
        if tx.noise is not None:
            r = R + tx.warp * (sample_noise(tx.noise, U, V) - 0.5)
        t = 0.5 + 0.5 * np.cos(2 * np.pi * r / p)
        t = smoothstep(0.5 - tx.soft / 2, 0.5 + tx.soft / 2 + 1e-3, t)
    elif k == "checker":
        s = np.sin(np.pi * R / p) * np.sin(np.pi * S / p)
        t = smoothstep(-tx.soft, tx.soft + 1e-3, s)
    elif k == "dots":
        row = np.floor(S / p)
        ru = R / p + 0.5 * (row % 2)
        d = np.hypot(ru - np.round(ru), S / p - row - 0.5) * p
        t = 1.0 - smoothstep(tx.radius - 0.4, tx.radius + 0.4, d)
    elif k == "noise":
        t = sample_noise(tx.noise, U, V)
        t = smoothstep(0.5 - tx.soft, 0.5 + tx.soft, t)
    elif k == "gradient":
        c = tx.center[0] * math.cos(a) + tx.center[1] * math.sin(a)
        t = np.clip((R - c) / (2 * tx.radius) + 0.5, 0.0, 1.0)
    elif k == "radial":
        d = np.hypot(U - tx.center[0], V - tx.center[1])
        t = smoothstep(tx.radius * (1 - tx.soft), tx.radius * (1 + tx.soft) + 1e-3, d)
    elif k == "spokes":
        th = np.arctan2(V - tx.center[1], U - tx.center[0])
        t = smoothstep(0.5 - tx.soft / 2, 0.5 + tx.soft / 2 + 1e-3,
                       0.5 + 0.5 * np.cos(tx.count * th + a))
    elif k == "scales":
        row = np.floor(S / p)
        x = R / p + 0.5 * (row % 2)
        d = np.hypot(x - np.round(x), (S / p - row) * 1.2)
        t = smoothstep(0.45, 0.75, d)
    else:  # pragma: no cover - internal kinds only
        raise ValueError(k)
    return t


def _wheel(tx: Texture, U, V) -> np.ndarray:
    """Colour ``[h,w,3]`` of a wheel: spoked rim (``c2``) inside a treaded tyre (``c1``)."""
    d = np.hypot(U - tx.center[0], V - tx.center[1])
    th = np.arctan2(V - tx.center[1], U - tx.center[0])
    spokes = smoothstep(0.55, 0.75, 0.5 + 0.5 * np.cos(tx.count * th))
    rim = tx.c2[None, None] * (1 - 0.55 * spokes[..., None] * (d > 0.25 * tx.radius)[..., None])
    tread = 0.75 + 0.5 * (0.5 + 0.5 * np.cos(tx.count * 3 * th))
    tyre = tx.c1[None, None] * tread[..., None]
    t_rim = smoothstep(0.6 * tx.radius, 0.66 * tx.radius, d)[..., None]
    return rim * (1 - t_rim) + tyre * t_rim


def _bricks(tx: Texture, U, V) -> np.ndarray:
    """Colour ``[h,w,3]`` of bricks (``c1``, each brick its own tone) in mortar (``c3``, else ``c2``)."""
    p = max(tx.period, 1e-3)
    bh = p * 0.45
    row = np.floor(V / bh)
    x = U / p + 0.5 * (row % 2)
    col = np.floor(x)
    fx, fy = (x - col) * p, (V / bh - row) * bh
    edge = np.minimum(np.minimum(fx, p - fx), np.minimum(fy, bh - fy))
    mortar = 1.0 - smoothstep(0.25, 0.75, edge)
    h = np.sin(row * 127.1 + col * 311.7) * 43758.5453
    tone = 0.8 + 0.4 * (h - np.floor(h))
    brick = tx.c1[None, None] * tone[..., None]
    mortar_c = tx.c3 if tx.c3 is not None else tx.c2
    return brick * (1 - mortar[..., None]) + mortar_c[None, None] * mortar[..., None]


def eval_texture(tx: Texture, U, V) -> np.ndarray:
    """Colour float32 ``[h,w,3]`` of texture ``tx`` at unit coordinates ``U, V`` ``[h,w]``."""
    if tx.kind == "wheel":
        colour = _wheel(tx, U, V)
    elif tx.kind == "bricks":
        colour = _bricks(tx, U, V)
    else:
        t = _two_tone(tx, U, V)[..., None].astype(np.float32)
        colour = tx.c1[None, None] * (1 - t) + tx.c2[None, None] * t
    if tx.ramp:
        ra = math.radians(tx.ramp_angle)
        proj = (U - tx.center[0]) * math.cos(ra) + (V - tx.center[1]) * math.sin(ra)
        colour = colour * (1 + tx.ramp * np.tanh(proj / 15.0))[..., None]
    if tx.grain and tx.grain_noise is not None:
        colour = colour * (1 + tx.grain * (2 * sample_noise(tx.grain_noise, U, V) - 1))[..., None]
    return np.clip(colour, 0.0, 1.0).astype(np.float32)


def random_texture(rng, unit: float, center=(0.0, 0.0), radius=10.0, extent=(-160.0, 160.0)
                   ) -> Texture:
    """A generic texture of any family and palette; ``unit`` scales its periods (pixels/units)."""
    kind = _TEX_KINDS[rng.integers(len(_TEX_KINDS))]
    h = rng.random()
    c1 = rand_hsv(rng, (h, h), (0.0, 0.9), (0.15, 1.0))
    c2 = rand_hsv(rng, (h + rng.uniform(-0.5, 0.5),) * 2, (0.0, 0.9), (0.15, 1.0))
    return make_texture(rng, kind, c1, c2, cell=rng.uniform(3, 12) * unit, grain_cell=3 * unit,
                        period=rng.uniform(3, 12) * unit, angle=rng.uniform(0, 180),
                        soft=rng.uniform(0.05, 0.8), center=center, radius=radius,
                        count=int(rng.integers(3, 12)), warp=rng.choice([0.0, rng.uniform(2, 8) * unit]),
                        ramp=rng.uniform(-0.3, 0.3), ramp_angle=rng.uniform(0, 360),
                        grain=rng.uniform(0.03, 0.15), c3=rand_hsv(rng, (0, 1), (0, 0.3), (0.3, 0.9)),
                        extent=extent)
