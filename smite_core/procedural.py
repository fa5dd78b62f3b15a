"""Procedural data with exact ground truth: multi-part objects, videos, references, generic images.

No real data set or Stable Diffusion weights are needed: the tiny backbone is pre-trained on
:func:`generic_image` (random shapes and textures, none of the benchmark categories) and SMITE is
benchmarked on :func:`make_video` / :func:`make_references` with exact labels and exact motion.

Every object category has fixed part names (``CATEGORY_PARTS``; segment id = position + 1, 0 =
background). Each part keeps a characteristic texture family and colour tendency while shapes,
proportions, counts and palettes vary per instance. Parts are drawn once per video in object
coordinates (an RGBA patch) and placed in every frame by one affine map (object pose composed
with per-part articulation), so the true forward motion of every visible pixel is the affine map
``M(t+1) @ inv(M(t))`` of the layer it belongs to (background pan, a part, or the occluder).

Conventions: ``size`` is ``(H, W)``; images float32 ``[H,W,3]`` in 0..1; labels uint8; motion
float32 ``(dx, dy)`` pixels. Everything is a pure function of ``(category, seed, ...)``.
"""

from __future__ import annotations

import colorsys
import dataclasses
import json
import math
import os
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import cv2
import numpy as np
from PIL import Image

from .errors import InputError
from .fileio import atomic_dir

CATEGORY_PARTS: dict[str, tuple[str, ...]] = {
    "robot": ("head", "torso", "arm", "leg"),
    "fish": ("body", "fin", "tail", "eye"),
    "car": ("body", "window", "wheel", "light"),
    "flower": ("petal", "center", "stem", "leaf"),
    "house": ("wall", "roof", "door", "window"),
    "bird": ("body", "head", "wing", "beak", "leg"),
}
CATEGORIES: tuple[str, ...] = tuple(CATEGORY_PARTS)
HELDOUT_CATEGORIES: tuple[str, ...] = ("bird",)  # never shown to the backbone in pre-training
TRAIN_CATEGORIES: tuple[str, ...] = tuple(c for c in CATEGORIES if c not in HELDOUT_CATEGORIES)

_STREAM_VIDEO, _STREAM_REF, _STREAM_GENERIC = 1, 2, 3
_MIN_SIDE = 32
_TEX_KINDS = ("stripes", "checker", "dots", "noise", "gradient", "radial", "spokes", "bricks",
              "scales", "wood")


# ----------------------------------------------------------------------------------------------
# public results


@dataclass
class ProceduralVideo:
    """A rendered video with exact ground truth.

    ``frames`` float32 ``[T,H,W,3]`` 0..1; ``labels`` uint8 ``[T,H,W]`` (0 = background, also
    under the occluder); ``motion`` float32 ``[T-1,H,W,2]`` forward ``(dx, dy)`` in pixels of the
    content visible at ``(x, y)`` in frame t into frame t+1; ``occluder`` bool ``[T,H,W]`` where
    the moving occluder is visible; ``names`` K segment names with ``names[0] == "background"``.
    """

    frames: np.ndarray
    labels: np.ndarray
    motion: np.ndarray
    occluder: np.ndarray
    names: list[str]
    category: str
    seed: int


def category_names(category: str) -> list[str]:
    """Segment names of ``category``: ``["background", part1, ...]`` (index = segment id)."""
    return ["background", *CATEGORY_PARTS[_check_category(category)]]


# ----------------------------------------------------------------------------------------------
# input checks and seeding


def _check_category(category) -> str:
    if not isinstance(category, str) or category not in CATEGORY_PARTS:
        raise InputError(f"unknown procedural category {category!r}; known: {', '.join(CATEGORIES)}")
    return category


def _check_seed(seed) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or int(seed) < 0:
        raise InputError(f"seed must be a non-negative integer, got {seed!r}")
    return int(seed)


def _check_size(size) -> tuple[int, int]:
    if isinstance(size, (int, np.integer)) and not isinstance(size, bool):
        size = (int(size), int(size))
    try:
        h, w = (int(v) for v in size)
        ok = all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in size)
    except (TypeError, ValueError):
        ok = False
    if not ok or h < _MIN_SIDE or w < _MIN_SIDE:
        raise InputError(f"size must be (H, W) integers >= {_MIN_SIDE}, got {size!r}")
    return h, w


def _check_count(value, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or int(value) < minimum:
        raise InputError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _seed_seq(seed: int, tag: str, *stream: int) -> np.random.SeedSequence:
    return np.random.SeedSequence([seed, zlib.crc32(tag.encode()), *stream])


# ----------------------------------------------------------------------------------------------
# small maths helpers


def _hsv(h: float, s: float, v: float) -> np.ndarray:
    """HSV (hue wraps) -> RGB float32 [3] in 0..1."""
    return np.array(colorsys.hsv_to_rgb(h % 1.0, min(max(s, 0.0), 1.0), min(max(v, 0.0), 1.0)),
                    dtype=np.float32)


def _rand_hsv(rng, h, s, v) -> np.ndarray:
    return _hsv(rng.uniform(*h), rng.uniform(*s), rng.uniform(*v))


def _smoothstep(e0, e1, x):
    t = np.clip((x - e0) / (e1 - e0), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def _affine(a=1.0, b=0.0, c=0.0, d=0.0, e=1.0, f=0.0) -> np.ndarray:
    return np.array([[a, b, c], [d, e, f], [0.0, 0.0, 1.0]])


def _T(x, y) -> np.ndarray:
    return _affine(c=x, f=y)


def _R(deg) -> np.ndarray:
    r = math.radians(deg)
    return _affine(math.cos(r), -math.sin(r), 0.0, math.sin(r), math.cos(r), 0.0)


def _S(sx, sy) -> np.ndarray:
    return _affine(a=sx, e=sy)


def _osc(amp, period, phase, t):
    return amp * math.sin(2.0 * math.pi * t / period + phase)


# ----------------------------------------------------------------------------------------------
# shapes (polygons in float coordinates)


def _ellipse(cx, cy, ax, ay, ang=0.0, n=40) -> np.ndarray:
    a = np.linspace(0, 2 * np.pi, n, endpoint=False)
    p = np.stack([ax * np.cos(a), ay * np.sin(a)], 1)
    r = math.radians(ang)
    rot = np.array([[math.cos(r), -math.sin(r)], [math.sin(r), math.cos(r)]])
    return p @ rot.T + (cx, cy)


def _rrect(x0, y0, x1, y1, r=0.0, n=5) -> np.ndarray:
    r = float(min(max(r, 0.0), (x1 - x0) / 2, (y1 - y0) / 2))
    if r <= 0:
        return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], dtype=np.float64)
    pts = []
    for cx, cy, a0 in ((x1 - r, y0 + r, -90), (x1 - r, y1 - r, 0), (x0 + r, y1 - r, 90),
                       (x0 + r, y0 + r, 180)):
        for k in range(n + 1):
            a = math.radians(a0 + 90 * k / n)
            pts.append((cx + r * math.cos(a), cy + r * math.sin(a)))
    return np.array(pts)


def _blob(rng, cx, cy, r, wobble=0.25, n=36) -> np.ndarray:
    a = np.linspace(0, 2 * np.pi, n, endpoint=False)
    rad = np.ones(n)
    for k in (2, 3, 5):
        rad += wobble / k * rng.uniform(-1, 1) * np.cos(k * a + rng.uniform(0, 2 * np.pi))
    return np.stack([cx + r * rad * np.cos(a), cy + r * rad * np.sin(a)], 1)


def _star(cx, cy, r_out, r_in, n, ang=0.0) -> np.ndarray:
    a = np.linspace(0, 2 * np.pi, 2 * n, endpoint=False) + math.radians(ang)
    rad = np.where(np.arange(2 * n) % 2 == 0, r_out, r_in)
    return np.stack([cx + rad * np.cos(a), cy + rad * np.sin(a)], 1)


def _leaf(bx, by, ang, length, width, n=16) -> np.ndarray:
    """Lens-shaped leaf/petal from base (bx, by) pointing along ``ang`` degrees."""
    t = np.linspace(0, 1, n)
    r = math.radians(ang)
    d = np.array([math.cos(r), math.sin(r)])
    p = np.array([-d[1], d[0]])
    half = width / 2 * np.sin(np.pi * t) ** 0.8
    side1 = (bx, by) + t[:, None] * length * d + half[:, None] * p
    side2 = (bx, by) + t[::-1, None] * length * d - half[::-1, None] * p
    return np.concatenate([side1, side2[1:-1]])


# primitives: ("poly", pts[N,2]) or ("stroke", pts[N,2], width)
def _poly(pts) -> tuple:
    return ("poly", np.asarray(pts, dtype=np.float64))


def _stroke(pts, width) -> tuple:
    return ("stroke", np.asarray(pts, dtype=np.float64), float(width))


def _prims_bbox(prims) -> tuple[np.ndarray, np.ndarray]:
    lo, hi = np.full(2, np.inf), np.full(2, -np.inf)
    for prim in prims:
        pad = prim[2] / 2 if prim[0] == "stroke" else 0.0
        lo = np.minimum(lo, prim[1].min(0) - pad)
        hi = np.maximum(hi, prim[1].max(0) + pad)
    return lo, hi


def _draw_prims(prims, lo, ppu, shape_hw) -> np.ndarray:
    """Antialiased coverage of ``prims`` in a patch whose pixel (0,0) is local ``lo``; float32 0..1."""
    mask = np.zeros(shape_hw, np.uint8)
    for prim in prims:
        pts = np.round((prim[1] - lo) * ppu * 16).astype(np.int32).reshape(-1, 1, 2)
        if prim[0] == "poly":
            cv2.fillPoly(mask, [pts], 255, cv2.LINE_AA, shift=4)
        else:
            thick = max(1, int(round(prim[2] * ppu)))
            cv2.polylines(mask, [pts], False, 255, thick, cv2.LINE_AA, shift=4)
    return mask.astype(np.float32) / 255.0


# ----------------------------------------------------------------------------------------------
# textures: functions of local (unit) coordinates, so they move with their part


@dataclass
class _Noise:
    grids: tuple
    cells: tuple
    origin: float


def _make_noise(rng, cell, octaves=2, extent=(-160.0, 160.0)) -> _Noise:
    grids, cells = [], []
    for k in range(octaves):
        c = max(cell / 2**k, 0.6)
        n = min(int((extent[1] - extent[0]) / c) + 4, 2048)
        grids.append(rng.random((n, n), dtype=np.float32))
        cells.append(c)
    return _Noise(tuple(grids), tuple(cells), float(extent[0]))


def _sample_noise(noise: _Noise, U, V) -> np.ndarray:
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


@dataclass
class _Tex:
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
    noise: _Noise | None = None
    ramp: float = 0.0
    ramp_angle: float = 90.0
    grain: float = 0.08
    grain_noise: _Noise | None = None
    c3: np.ndarray | None = None


def _tex(rng, kind, c1, c2, *, cell=6.0, grain_cell=4.0, extent=(-160.0, 160.0), **kw) -> _Tex:
    """A texture spec; ``cell`` sets the noise feature size (units) where the kind uses noise.

    Noise is defined without repetition over ``extent`` (units) in both coordinates.
    """
    uses_noise = kind in ("noise", "wood") or kw.get("warp", 0)
    noise = _make_noise(rng, cell, 3, extent) if uses_noise else None
    return _Tex(kind, np.asarray(c1, np.float32), np.asarray(c2, np.float32), noise=noise,
                grain_noise=_make_noise(rng, grain_cell, 2, extent), **kw)


def _eval_tex(tx: _Tex, U, V) -> np.ndarray:
    """Colour float32 ``[h,w,3]`` of texture ``tx`` at unit coordinates ``U, V`` ``[h,w]``."""
    a = math.radians(tx.angle)
    R = U * math.cos(a) + V * math.sin(a)
    S = -U * math.sin(a) + V * math.cos(a)
    p = max(tx.period, 1e-3)
    k = tx.kind
    colour = None
    if k == "stripes" or k == "wood":
        r = R
        if tx.noise is not None:
            r = R + tx.warp * (_sample_noise(tx.noise, U, V) - 0.5)
        t = 0.5 + 0.5 * np.cos(2 * np.pi * r / p)
        t = _smoothstep(0.5 - tx.soft / 2, 0.5 + tx.soft / 2 + 1e-3, t)
    elif k == "checker":
        s = np.sin(np.pi * R / p) * np.sin(np.pi * S / p)
        t = _smoothstep(-tx.soft, tx.soft + 1e-3, s)
    elif k == "dots":
        row = np.floor(S / p)
        ru = R / p + 0.5 * (row % 2)
        d = np.hypot(ru - np.round(ru), S / p - row - 0.5) * p
        t = 1.0 - _smoothstep(tx.radius - 0.4, tx.radius + 0.4, d)
    elif k == "noise":
        t = _sample_noise(tx.noise, U, V)
        t = _smoothstep(0.5 - tx.soft, 0.5 + tx.soft, t)
    elif k == "gradient":
        c = tx.center[0] * math.cos(a) + tx.center[1] * math.sin(a)
        t = np.clip((R - c) / (2 * tx.radius) + 0.5, 0.0, 1.0)
    elif k == "radial":
        d = np.hypot(U - tx.center[0], V - tx.center[1])
        t = _smoothstep(tx.radius * (1 - tx.soft), tx.radius * (1 + tx.soft) + 1e-3, d)
    elif k == "spokes":
        th = np.arctan2(V - tx.center[1], U - tx.center[0])
        t = _smoothstep(0.5 - tx.soft / 2, 0.5 + tx.soft / 2 + 1e-3,
                        0.5 + 0.5 * np.cos(tx.count * th + a))
    elif k == "wheel":
        d = np.hypot(U - tx.center[0], V - tx.center[1])
        th = np.arctan2(V - tx.center[1], U - tx.center[0])
        spokes = _smoothstep(0.55, 0.75, 0.5 + 0.5 * np.cos(tx.count * th))
        rim = tx.c2[None, None] * (1 - 0.55 * spokes[..., None] * (d > 0.25 * tx.radius)[..., None])
        tread = 0.75 + 0.5 * (0.5 + 0.5 * np.cos(tx.count * 3 * th))
        tyre = tx.c1[None, None] * tread[..., None]
        t_rim = _smoothstep(0.6 * tx.radius, 0.66 * tx.radius, d)[..., None]
        colour = rim * (1 - t_rim) + tyre * t_rim
    elif k == "bricks":
        bh = p * 0.45
        row = np.floor(V / bh)
        x = U / p + 0.5 * (row % 2)
        col = np.floor(x)
        fx, fy = (x - col) * p, (V / bh - row) * bh
        edge = np.minimum(np.minimum(fx, p - fx), np.minimum(fy, bh - fy))
        mortar = 1.0 - _smoothstep(0.25, 0.75, edge)
        h = np.sin(row * 127.1 + col * 311.7) * 43758.5453
        tone = 0.8 + 0.4 * (h - np.floor(h))
        brick = tx.c1[None, None] * tone[..., None]
        mortar_c = tx.c3 if tx.c3 is not None else tx.c2
        colour = brick * (1 - mortar[..., None]) + mortar_c[None, None] * mortar[..., None]
        t = None
    elif k == "scales":
        row = np.floor(S / p)
        x = R / p + 0.5 * (row % 2)
        d = np.hypot(x - np.round(x), (S / p - row) * 1.2)
        t = _smoothstep(0.45, 0.75, d)
    else:  # pragma: no cover - internal kinds only
        raise ValueError(k)
    if colour is None:
        t = t[..., None].astype(np.float32)
        colour = tx.c1[None, None] * (1 - t) + tx.c2[None, None] * t
    if tx.ramp:
        ra = math.radians(tx.ramp_angle)
        proj = (U - tx.center[0]) * math.cos(ra) + (V - tx.center[1]) * math.sin(ra)
        colour = colour * (1 + tx.ramp * np.tanh(proj / 15.0))[..., None]
    if tx.grain and tx.grain_noise is not None:
        colour = colour * (1 + tx.grain * (2 * _sample_noise(tx.grain_noise, U, V) - 1))[..., None]
    return np.clip(colour, 0.0, 1.0).astype(np.float32)


def _random_texture(rng, unit: float, center=(0.0, 0.0), radius=10.0, extent=(-160.0, 160.0)
                    ) -> _Tex:
    """A generic texture of any family and palette; ``unit`` scales its periods (pixels/units)."""
    kind = _TEX_KINDS[rng.integers(len(_TEX_KINDS))]
    h = rng.random()
    c1 = _rand_hsv(rng, (h, h), (0.0, 0.9), (0.15, 1.0))
    c2 = _rand_hsv(rng, (h + rng.uniform(-0.5, 0.5),) * 2, (0.0, 0.9), (0.15, 1.0))
    return _tex(rng, kind, c1, c2, cell=rng.uniform(3, 12) * unit, grain_cell=3 * unit,
                period=rng.uniform(3, 12) * unit, angle=rng.uniform(0, 180),
                soft=rng.uniform(0.05, 0.8), center=center, radius=radius,
                count=int(rng.integers(3, 12)), warp=rng.choice([0.0, rng.uniform(2, 8) * unit]),
                ramp=rng.uniform(-0.3, 0.3), ramp_angle=rng.uniform(0, 360),
                grain=rng.uniform(0.03, 0.15), c3=_rand_hsv(rng, (0, 1), (0, 0.3), (0.3, 0.9)),
                extent=extent)


# ----------------------------------------------------------------------------------------------
# parts and their rendering


@dataclass
class _Part:
    """One drawable part, authored in object coordinates at rest (units, y down).

    It rotates by ``swing``/``spin`` about ``pivot`` and squashes along ``str_axis``, then follows
    its ``parent`` (index into the part list, -1 = the object itself). ``deco`` paints
    ``(primitive, rgb)`` details on the texture without changing the mask.
    """

    label: int
    prims: list
    tex: _Tex
    pivot: tuple = (0.0, 0.0)
    parent: int = -1
    rest: float = 0.0
    swing: tuple = (0.0, 1.0, 0.0)  # amplitude deg, period frames, phase rad
    spin: float = 0.0  # deg per frame
    stretch: tuple = (0.0, 1.0, 0.0, 0.0)  # amplitude, period, phase, axis deg
    deco: list = field(default_factory=list)
    bevel: float = 3.0
    outline: float = 0.45


def _part_local(part: _Part, t: float) -> np.ndarray:
    ang = part.rest + _osc(*part.swing, t) + part.spin * t
    m = _T(*part.pivot) @ _R(ang)
    amp, per, ph, axis = part.stretch
    if amp:
        s = 1.0 + _osc(amp, per, ph, t)
        m = m @ _R(axis) @ _S(s, 1.0 / s) @ _R(-axis)
    return m @ _T(-part.pivot[0], -part.pivot[1])


def _part_matrices(parts, t: float) -> list[np.ndarray]:
    """Rest-object -> posed-object 3x3 matrix of every part at time ``t`` (parents applied)."""
    out: list = [None] * len(parts)

    def get(i):
        if out[i] is None:
            m = _part_local(parts[i], t)
            out[i] = m if parts[i].parent < 0 else get(parts[i].parent) @ m
        return out[i]

    return [get(i) for i in range(len(parts))]


def _render_part(part: _Part, ppu: float) -> tuple[np.ndarray, np.ndarray]:
    """Premultiplied RGBA patch float32 ``[h,w,4]`` and its patch -> local 3x3 matrix."""
    lo, hi = _prims_bbox(part.prims)
    lo = lo - 1.0 - 2.0 / ppu
    hi = hi + 1.0 + 2.0 / ppu
    w = int(math.ceil((hi[0] - lo[0]) * ppu)) + 1
    h = int(math.ceil((hi[1] - lo[1]) * ppu)) + 1
    mask = _draw_prims(part.prims, lo, ppu, (h, w))
    U, V = np.meshgrid((lo[0] + np.arange(w) / ppu).astype(np.float32),
                       (lo[1] + np.arange(h) / ppu).astype(np.float32))
    colour = _eval_tex(part.tex, U, V)
    for prim, rgb in part.deco:
        m = _draw_prims([prim], lo, ppu, (h, w))[..., None]
        colour = colour * (1 - m) + np.asarray(rgb, np.float32) * m
    dist = cv2.distanceTransform((mask > 0.5).astype(np.uint8), cv2.DIST_L2, 5) / ppu
    shade = 1.0 - 0.3 * (1.0 - _smoothstep(0.0, part.bevel, dist))
    if part.outline:
        shade = shade * (1.0 - part.outline * (1.0 - _smoothstep(0.4, 1.2, dist)))
    colour = colour * shade[..., None]
    rgba = np.concatenate([colour * mask[..., None], mask[..., None]], axis=2).astype(np.float32)
    return rgba, _affine(1 / ppu, 0, lo[0], 0, 1 / ppu, lo[1])


def _warp_into(patch: np.ndarray, M: np.ndarray, H: int, W: int):
    """Warp a patch by 3x3 ``M`` (patch px -> image px); returns (y0, x0, warped) or None."""
    h, w = patch.shape[:2]
    corners = np.array([[0, 0, 1], [w, 0, 1], [0, h, 1], [w, h, 1]], float) - (0.5, 0.5, 0)
    pts = corners @ M[:2].T
    x0, y0 = np.floor(pts.min(0)).astype(int) - 1
    x1, y1 = np.ceil(pts.max(0)).astype(int) + 2
    x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, W), min(y1, H)
    if x1 <= x0 or y1 <= y0:
        return None
    Mr = _T(-x0, -y0) @ M
    out = cv2.warpAffine(patch, Mr[:2], (x1 - x0, y1 - y0), flags=cv2.INTER_LINEAR,
                         borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    if out.ndim == 2:
        out = out[..., None]
    return y0, x0, out


def _stamp(img: np.ndarray, patch: np.ndarray, M: np.ndarray, opacity: float = 1.0) -> None:
    """Composite a premultiplied RGBA patch into ``img`` ``[H,W,3]`` in place."""
    res = _warp_into(patch, M, *img.shape[:2])
    if res is None:
        return
    y0, x0, out = res
    roi = img[y0:y0 + out.shape[0], x0:x0 + out.shape[1]]
    a = out[..., 3:4] * opacity
    roi *= 1 - a
    roi += out[..., :3] * opacity


# ----------------------------------------------------------------------------------------------
# categories: each builder returns an _Instance authored in units (object about 100 units)


@dataclass
class _Instance:
    parts: list
    rot_range: float  # base rotation drawn from +-rot_range degrees
    rot_amp: float  # rotation oscillation amplitude over a video, degrees


def _u(rng, lo, hi):
    return float(rng.uniform(lo, hi))


def _robot(rng, lab) -> _Instance:
    tw, th = _u(rng, 34, 46), _u(rng, 38, 50)
    hue = _u(rng, 0.0, 0.1)
    torso = _Part(lab["torso"], [_poly(_rrect(-tw / 2, -th / 2, tw / 2, th / 2, _u(rng, 2, 8)))],
                  _tex(rng, "stripes", _hsv(hue, _u(rng, .6, .9), _u(rng, .75, .95)),
                       _hsv(hue, _u(rng, .6, .9), _u(rng, .4, .55)), period=_u(rng, 5, 8),
                       angle=90 + _u(rng, -8, 8), soft=0.35, ramp=0.15, ramp_angle=-90),
                  stretch=(_u(rng, 0.0, 0.03), _u(rng, 15, 30), _u(rng, 0, 6.3), 90.0))
    for _ in range(int(rng.integers(1, 4))):
        cx, cy, r = _u(rng, -tw / 3, tw / 3), _u(rng, -th / 3, th / 3), _u(rng, 1.5, 3)
        torso.deco.append((_poly(_ellipse(cx, cy, r, r, n=16)), _rand_hsv(rng, (0, 1), (.6, 1),
                                                                          (.8, 1))))
    hw, hh = _u(rng, 20, 30), _u(rng, 15, 22)
    top = -th / 2
    head_prims = [_poly(_rrect(-hw / 2, top - 3 - hh, hw / 2, top - 3, _u(rng, 1, 6))),
                  _poly(_rrect(-4, top - 5, 4, top + 2))]
    if rng.random() < 0.7:
        ax = _u(rng, -hw / 4, hw / 4)
        tip = top - 3 - hh - _u(rng, 6, 10)
        head_prims += [_stroke([(ax, top - hh), (ax, tip)], 1.6), _poly(_ellipse(ax, tip, 2.2, 2.2))]
    eye_c = _rand_hsv(rng, (0, 1), (.7, 1), (.9, 1)) if rng.random() < 0.6 else _hsv(0, 0, .05)
    ey, er = top - 3 - hh * _u(rng, .5, .65), _u(rng, 2, 3.2)
    deco = [(_poly(_ellipse(s * hw * 0.22, ey, er, er, n=16)), eye_c) for s in (-1, 1)]
    deco.append((_stroke([(-hw * 0.2, top - 3 - hh * 0.22), (hw * 0.2, top - 3 - hh * 0.22)], 1.2),
                 _hsv(0, 0, 0.15)))
    h2 = _u(rng, .55, .65)
    head = _Part(lab["head"], head_prims,
                 _tex(rng, "dots", _hsv(h2, _u(rng, .1, .3), _u(rng, .75, .95)),
                      _hsv(h2, _u(rng, .5, .8), _u(rng, .35, .55)), period=_u(rng, 4, 6),
                      radius=_u(rng, 1.0, 1.6), angle=_u(rng, -20, 20)),
                 pivot=(0.0, top), swing=(_u(rng, 5, 12), _u(rng, 18, 40), _u(rng, 0, 6.3)), deco=deco)
    aw, al = _u(rng, 8, 12), _u(rng, 28, 38)
    ah = _u(rng, .11, .16)
    arm_tex = _tex(rng, "stripes", _hsv(ah, _u(rng, .7, .95), _u(rng, .85, 1)),
                   _hsv(ah, _u(rng, .3, .8), _u(rng, .1, .25)), period=_u(rng, 6, 9),
                   angle=45 + _u(rng, -10, 10), soft=0.12)
    lw, ll = _u(rng, 10, 14), _u(rng, 20, 28)
    lh = _u(rng, .28, .4)
    leg_tex = _tex(rng, "noise", _hsv(lh, _u(rng, .3, .6), _u(rng, .25, .4)),
                   _hsv(lh + .05, _u(rng, .3, .6), _u(rng, .55, .75)), cell=_u(rng, 6, 10),
                   soft=0.25)
    arm_amp, arm_per, ph = _u(rng, 10, 22), _u(rng, 18, 32), _u(rng, 0, 6.3)
    leg_amp, leg_per = _u(rng, 5, 12), _u(rng, 14, 30)
    legs, arms = [], []
    for i, side in enumerate((-1, 1)):
        hx, hy = side * _u(rng, .18, .3) * tw, th / 2 - 3
        legs.append(_Part(lab["leg"], [_poly(_rrect(hx - lw / 2, hy - 3, hx + lw / 2, hy + ll, 2)),
                                       _poly(_rrect(hx - lw * .8 + side * 2, hy + ll - 5,
                                                    hx + lw * .8 + side * 2, hy + ll + 2, 2))],
                          leg_tex, pivot=(hx, hy), swing=(leg_amp, leg_per, ph + i * math.pi)))
        sx, sy = side * (tw / 2 + aw / 2 - 1), top + aw / 2 + 2
        cr = aw * 0.65
        arms.append(_Part(lab["arm"], [_poly(_rrect(sx - aw / 2, sy - aw / 2, sx + aw / 2, sy + al,
                                                    aw / 2.5)),
                                       _poly(_ellipse(sx, sy + al, cr, cr * 0.8, n=24))],
                          arm_tex, pivot=(sx, sy), rest=-side * _u(rng, 8, 28),
                          swing=(arm_amp, arm_per, ph + i * math.pi)))
    return _Instance(legs + [torso, head] + arms, rot_range=12, rot_amp=8)


def _fish(rng, lab) -> _Instance:
    L, Hh = _u(rng, 60, 78), _u(rng, 26, 36)
    a = np.linspace(0, 2 * np.pi, 60, endpoint=False)
    x = L / 2 * np.cos(a)
    taper = 1 - 0.5 * np.clip(-x / (L / 2), 0, 1) ** 1.5
    body_pts = np.stack([x, Hh / 2 * np.sin(a) * taper], 1)
    bh = _u(rng, .45, .62)
    body = _Part(lab["body"], [_poly(body_pts)],
                 _tex(rng, "scales", _hsv(bh, _u(rng, .35, .65), _u(rng, .6, .85)),
                      _hsv(bh + .04, _u(rng, .5, .8), _u(rng, .3, .45)), period=_u(rng, 4.5, 6.5),
                      angle=_u(rng, -5, 5), ramp=0.3, ramp_angle=90),
                 stretch=(_u(rng, 0.01, 0.04), _u(rng, 10, 18), _u(rng, 0, 6.3), 0.0))
    fh = _u(rng, .9, 1.02)
    fin_tex = _tex(rng, "spokes", _hsv(fh, _u(rng, .5, .8), _u(rng, .7, .9)),
                   _hsv(fh, _u(rng, .15, .35), _u(rng, .9, 1)), count=int(rng.integers(16, 26)),
                   soft=0.5, center=(0.0, -Hh / 4))
    dx = _u(rng, -L * .12, L * .05)
    dorsal_base = [(dx - L * .16, -Hh / 2 * .75), (dx + L * .14, -Hh / 2 * .8)]
    apex = (dx - _u(rng, 6, 14), -Hh / 2 - _u(rng, 9, 15))
    dorsal = _Part(lab["fin"], [_poly([dorsal_base[0], apex, dorsal_base[1]])], fin_tex,
                   pivot=(dx, -Hh / 2 * .8), swing=(_u(rng, 4, 9), _u(rng, 12, 24), _u(rng, 0, 6.3)))
    fins = [dorsal]
    if rng.random() < 0.6:
        ax = _u(rng, -L * .3, -L * .15)
        fins.append(_Part(lab["fin"], [_poly([(ax - 5, Hh / 2 * .5), (ax - _u(rng, 7, 11),
                                                                       Hh / 2 + _u(rng, 5, 9)),
                                              (ax + 5, Hh / 2 * .55)])], fin_tex,
                          pivot=(ax, Hh / 2 * .55), swing=(_u(rng, 5, 10), _u(rng, 10, 20), 0.0)))
    tl, tspan = _u(rng, 15, 22), _u(rng, 20, 30)
    px = -L / 2 + 5
    fork = _u(rng, 0.35, 0.8)
    tail_pts = [(px + 3, -3), (px - tl, -tspan / 2), (px - tl * fork, 0), (px - tl, tspan / 2),
                (px + 3, 3)]
    th_ = _u(rng, .04, .14)
    tail = _Part(lab["tail"], [_poly(tail_pts)],
                 _tex(rng, "stripes", _hsv(th_, _u(rng, .7, .95), _u(rng, .85, 1)),
                      _hsv(th_ - .03, _u(rng, .8, 1), _u(rng, .45, .6)), period=_u(rng, 3.5, 5.5),
                      angle=_u(rng, -10, 10), soft=0.3),
                 pivot=(px, 0.0), swing=(_u(rng, 12, 22), _u(rng, 10, 16), _u(rng, 0, 6.3)))
    pcx, pcy = L * _u(rng, .0, .12), Hh * _u(rng, .05, .18)
    pect = _Part(lab["fin"], [_poly(_leaf(pcx, pcy, 150 + _u(rng, -15, 15), _u(rng, 11, 15),
                                          _u(rng, 6, 8)))],
                 fin_tex, pivot=(pcx, pcy), swing=(_u(rng, 12, 25), _u(rng, 10, 16), _u(rng, 0, 6.3)))
    er = _u(rng, 4.2, 5.5)
    ex, ey = L * _u(rng, .27, .33), -Hh * _u(rng, .08, .16)
    eye = _Part(lab["eye"], [_poly(_ellipse(ex, ey, er, er, n=28))],
                _tex(rng, "radial", _hsv(0, 0, .04), _rand_hsv(rng, (.1, .17), (0, .5), (.9, 1)),
                     center=(ex, ey), radius=er * _u(rng, .45, .6), soft=0.12, grain=0.02),
                deco=[(_poly(_ellipse(ex + er * .2, ey - er * .25, er * .18, er * .18, n=12)),
                       _hsv(0, 0, 1))], bevel=1.0, outline=0.6)
    return _Instance(fins[::-1] + [tail, body, pect, eye], rot_range=20, rot_amp=12)


def _car(rng, lab) -> _Instance:
    L, bh, ch = _u(rng, 80, 95), _u(rng, 17, 23), _u(rng, 14, 19)
    c0, c1 = -L * _u(rng, .3, .4), L * _u(rng, .15, .3)
    cab = [(c0, 1.0), (c0 + _u(rng, 5, 10), -ch), (c1 - _u(rng, 8, 14), -ch), (c1, 1.0)]
    hue = rng.choice([0.0, 0.58, 0.75]) + _u(rng, -.04, .04)
    body_tex = _tex(rng, "gradient", _hsv(hue, _u(rng, .55, .8), _u(rng, .85, 1)),
                    _hsv(hue, _u(rng, .7, .95), _u(rng, .35, .5)), angle=90,
                    center=(0.0, bh / 2 - ch / 2), radius=(bh + ch) / 2, grain=0.05)
    stripe_c = _hsv(0, 0, .95) if rng.random() < 0.5 else _hsv(0, 0, .1)
    body = _Part(lab["body"], [_poly(_rrect(-L / 2, 0, L / 2, bh, _u(rng, 3, 7))), _poly(cab)],
                 body_tex, pivot=(0.0, bh),
                 stretch=(_u(rng, .01, .025), _u(rng, 8, 14), _u(rng, 0, 6.3), 90.0),
                 deco=[(_stroke([(-L / 2 + 3, bh * .45), (L / 2 - 3, bh * .45)], _u(rng, 1, 2)),
                        stripe_c)])
    nwin = 2 if (c1 - c0) > 40 or rng.random() < 0.5 else 1
    inset = 2.5
    x0w, x1w = c0 + inset + 2, c1 - inset - 2
    top_l, top_r = cab[1][0] + inset * .6, cab[2][0] - inset * .6
    y_top, y_bot = -ch + inset, -1.5
    wh = _u(rng, .5, .58)
    win_tex = _tex(rng, "stripes", _hsv(wh, _u(rng, .15, .4), _u(rng, .85, 1)),
                   _hsv(wh + .03, _u(rng, .4, .7), _u(rng, .45, .6)), period=_u(rng, 7, 11),
                   angle=_u(rng, 50, 70), soft=0.55, grain=0.04)
    windows = []
    if nwin == 1:
        windows.append([(x0w, y_bot), (top_l, y_top), (top_r, y_top), (x1w, y_bot)])
    else:
        mid = (x0w + x1w) / 2 + _u(rng, -4, 4)
        windows.append([(x0w, y_bot), (top_l, y_top), (mid - 1.5, y_top), (mid - 1.5, y_bot)])
        windows.append([(mid + 1.5, y_bot), (mid + 1.5, y_top), (top_r, y_top), (x1w, y_bot)])
    parts = [body] + [_Part(lab["window"], [_poly(w)], win_tex, parent=0, bevel=1.5) for w in windows]
    lt = _tex(rng, "radial", _hsv(_u(rng, .12, .16), _u(rng, 0, .2), 1.0),
              _hsv(_u(rng, .08, .13), _u(rng, .7, 1), _u(rng, .85, 1)), radius=3.0, soft=0.9,
              grain=0.02)
    hx, hy = L / 2 - 4.5, bh * _u(rng, .2, .35)
    lt.center = (hx, hy)
    parts.append(_Part(lab["light"], [_poly(_ellipse(hx, hy, _u(rng, 3.5, 4.5), _u(rng, 2.5, 3.5)))],
                       lt, parent=0, bevel=1.0))
    tx_, ty_ = -L / 2 + 3.5, bh * _u(rng, .2, .35)
    lt2 = _tex(rng, "radial", lt.c1, lt.c2, radius=2.5, soft=0.9, center=(tx_, ty_), grain=0.02)
    parts.append(_Part(lab["light"], [_poly(_rrect(tx_ - 2.5, ty_ - 3, tx_ + 2.5, ty_ + 3, 1))],
                       lt2, parent=0, bevel=1.0))
    rw = _u(rng, 9, 12)
    spin = _u(rng, 8, 20) * rng.choice([-1, 1])
    tyre, rim = _hsv(0, 0, _u(rng, .08, .16)), _hsv(_u(rng, 0, 1), _u(rng, 0, .15), _u(rng, .7, .9))
    nsp = int(rng.integers(4, 7))
    for wx in (-L * _u(rng, .26, .32), L * _u(rng, .26, .32)):
        t = _tex(rng, "wheel", tyre, rim, center=(wx, bh), radius=rw, count=nsp, grain=0.04)
        parts.append(_Part(lab["wheel"], [_poly(_ellipse(wx, bh, rw, rw, n=40))], t,
                           pivot=(wx, bh), spin=spin, bevel=2.0))
    return _Instance(parts, rot_range=8, rot_amp=6)


def _flower(rng, lab) -> _Instance:
    hc = (0.0, -16.0)
    base = (_u(rng, -6, 6), 44.0)
    bend = _u(rng, -8, 8)
    ts = np.linspace(0, 1, 12)
    stem_pts = np.stack([hc[0] + (base[0] - hc[0]) * ts + bend * np.sin(np.pi * ts),
                         hc[1] + (base[1] - hc[1]) * ts], 1)
    sh = _u(rng, .27, .36)
    stem = _Part(lab["stem"], [_stroke(stem_pts, _u(rng, 3.5, 5.5))],
                 _tex(rng, "stripes", _hsv(sh, _u(rng, .6, .85), _u(rng, .4, .55)),
                      _hsv(sh, _u(rng, .7, .9), _u(rng, .22, .32)), period=_u(rng, 1.8, 2.6),
                      angle=0, soft=0.6),
                 pivot=base, swing=(_u(rng, 3, 7), _u(rng, 30, 60), _u(rng, 0, 6.3)), bevel=1.5)
    parts = [stem]
    lh = _u(rng, .2, .29)
    leaf_tex = _tex(rng, "stripes", _hsv(lh, _u(rng, .5, .8), _u(rng, .6, .85)),
                    _hsv(lh + .03, _u(rng, .6, .9), _u(rng, .35, .5)), period=_u(rng, 3, 4.5),
                    angle=_u(rng, 20, 70), soft=0.35, warp=1.5, cell=8.0)
    nleaf = int(rng.integers(1, 3))
    sides = rng.permutation([-1, 1])
    for i in range(nleaf):
        k = int(np.clip(round(_u(rng, .45, .8) * 11), 1, 10))
        bx, by = stem_pts[k]
        side = sides[i]
        ang = -90 + side * _u(rng, 40, 75)
        parts.append(_Part(lab["leaf"], [_poly(_leaf(bx, by, ang, _u(rng, 15, 22), _u(rng, 7, 10)))],
                           leaf_tex, pivot=(bx, by), parent=0,
                           swing=(_u(rng, 6, 14), _u(rng, 16, 30), _u(rng, 0, 6.3))))
    rc = _u(rng, 7, 10)
    n = int(rng.integers(5, 10))
    pl, pw = _u(rng, 13, 19), _u(rng, 7, 11) * (7 / max(n, 7)) ** 0.5
    ph_ = _u(rng, .75, 1.0)
    petal_tex = _tex(rng, "radial", _hsv(ph_, _u(rng, .7, .95), _u(rng, .5, .7)),
                     _hsv(ph_ + _u(rng, -.05, .05), _u(rng, .2, .5), _u(rng, .9, 1)), center=hc,
                     radius=rc + pl * .45, soft=0.6, grain=0.1)
    a0 = _u(rng, 0, 360)
    breathe = (_u(rng, 2, 5), _u(rng, 20, 36), _u(rng, 0, 6.3))
    centre_index = len(parts) + n  # petals first, the centre is drawn after them
    for i in range(n):
        ang = a0 + 360 * i / n + _u(rng, -6, 6)
        bx = hc[0] + (rc - 3) * math.cos(math.radians(ang))
        by = hc[1] + (rc - 3) * math.sin(math.radians(ang))
        parts.append(_Part(lab["petal"], [_poly(_leaf(bx, by, ang, pl, pw))], petal_tex,
                           pivot=(bx, by), parent=centre_index, swing=breathe, bevel=2.5))
    ch = _u(rng, .07, .13)
    center = _Part(lab["center"], [_poly(_ellipse(hc[0], hc[1], rc, rc, n=32))],
                   _tex(rng, "dots", _hsv(ch, _u(rng, .6, .9), _u(rng, .3, .5)),
                        _hsv(ch + .04, _u(rng, .6, .9), _u(rng, .8, 1)), period=_u(rng, 2.6, 3.4),
                        radius=_u(rng, .7, 1.0), angle=_u(rng, 0, 90)),
                   pivot=hc, parent=0, spin=_u(rng, 0.5, 2.0) * rng.choice([-1, 1]), bevel=2.5)
    parts.append(center)
    return _Instance(parts, rot_range=12, rot_amp=6)


def _house(rng, lab) -> _Instance:
    ww, wh = _u(rng, 52, 70), _u(rng, 34, 46)
    top, bot = -wh / 2 + 10, wh / 2 + 10
    wall = _Part(lab["wall"], [_poly(_rrect(-ww / 2, top, ww / 2, bot))],
                 _tex(rng, "bricks", _rand_hsv(rng, (.02, .1), (.35, .75), (.5, .8)),
                      _hsv(0, 0, .8), c3=_rand_hsv(rng, (.08, .12), (0, .15), (.7, .9)),
                      period=_u(rng, 6, 9)), bevel=2.0)
    ov, rh = _u(rng, 3, 7), _u(rng, 18, 28)
    skew = _u(rng, -4, 4)
    if rng.random() < 0.6:
        roof_pts = [(-ww / 2 - ov, top + 1), (skew, top - rh), (ww / 2 + ov, top + 1)]
    else:
        tw = ww * _u(rng, .15, .3)
        roof_pts = [(-ww / 2 - ov, top + 1), (-tw + skew, top - rh), (tw + skew, top - rh),
                    (ww / 2 + ov, top + 1)]
    roof_prims = [_poly(roof_pts)]
    if rng.random() < 0.5:
        cxh = _u(rng, .15, .3) * ww * rng.choice([-1, 1])
        roof_prims.insert(0, _poly(_rrect(cxh - 3.5, top - rh * .9, cxh + 3.5, top - rh * .3)))
    rhue = rng.choice([_u(rng, .55, .68), _u(rng, .95, 1.03)])
    roof = _Part(lab["roof"], roof_prims,
                 _tex(rng, "scales", _hsv(rhue, _u(rng, .25, .55), _u(rng, .45, .65)),
                      _hsv(rhue, _u(rng, .3, .6), _u(rng, .15, .3)), period=_u(rng, 4, 5.5),
                      angle=_u(rng, -3, 3)), bevel=2.0)
    nslot = 3 if ww < 60 else 4
    slot = ww / nslot
    door_slot = int(rng.integers(nslot))
    dw, dh = min(_u(rng, 10, 15), slot - 3), _u(rng, 16, 23)
    dx = -ww / 2 + slot * (door_slot + .5)
    if rng.random() < 0.5:  # arched top
        a = np.linspace(np.pi, 2 * np.pi, 17)
        arc = np.stack([dx + dw / 2 * np.cos(a), bot - dh + dw / 2 + dw / 2 * np.sin(a)], 1)
        door_poly = np.concatenate([[[dx - dw / 2, bot]], arc, [[dx + dw / 2, bot]]])
    else:
        door_poly = _rrect(dx - dw / 2, bot - dh, dx + dw / 2, bot, 1)
    dhue = _u(rng, .05, .1)
    knob_x = dx + dw * .3 * rng.choice([-1, 1])
    door = _Part(lab["door"], [_poly(door_poly)],
                 _tex(rng, "wood", _hsv(dhue, _u(rng, .5, .8), _u(rng, .45, .6)),
                      _hsv(dhue, _u(rng, .6, .9), _u(rng, .2, .32)), period=_u(rng, 2.5, 4),
                      angle=0, soft=0.5, warp=_u(rng, 2, 4), cell=12.0),
                 pivot=(dx - dw / 2, bot), stretch=(_u(rng, .04, .1), _u(rng, 20, 40), 0.0, 0.0),
                 deco=[(_poly(_ellipse(knob_x, bot - dh * .45, 1.2, 1.2, n=10)), _hsv(.13, .8, .95))],
                 bevel=1.5)
    whue = rng.choice([_u(rng, .5, .6), _u(rng, .12, .16)])
    win_tex = _tex(rng, "gradient", _hsv(whue, _u(rng, .15, .4), _u(rng, .9, 1)),
                   _hsv(whue, _u(rng, .5, .8), _u(rng, .55, .75)), angle=_u(rng, 30, 60),
                   radius=7.0, grain=0.05)
    frame_c = _hsv(0, 0, .95) if rng.random() < 0.5 else _hsv(.08, .5, .25)
    windows = []
    ws = min(_u(rng, 9, 13), slot - 3)
    cy = top + wh * _u(rng, .3, .4)
    free = [i for i in range(nslot) if i != door_slot]
    nwin = int(rng.integers(1, len(free) + 1))
    for i in sorted(rng.choice(free, nwin, replace=False)):
        cx = -ww / 2 + slot * (i + .5)
        t = dataclasses.replace(win_tex, center=(cx, cy))
        windows.append(_Part(lab["window"], [_poly(_rrect(cx - ws / 2, cy - ws / 2, cx + ws / 2,
                                                          cy + ws / 2))], t, bevel=1.2,
                             deco=[(_stroke([(cx, cy - ws / 2), (cx, cy + ws / 2)], 1.3), frame_c),
                                   (_stroke([(cx - ws / 2, cy), (cx + ws / 2, cy)], 1.3), frame_c)]))
    return _Instance([wall, roof, door] + windows, rot_range=6, rot_amp=4)


def _bird(rng, lab) -> _Instance:
    bl, bh = _u(rng, 40, 50), _u(rng, 24, 30)
    tilt = _u(rng, -20, -8)
    hue = _u(rng, .52, .66)
    body_prims = [_poly(_ellipse(0, 0, bl / 2, bh / 2, tilt)),
                  _poly([(-bl * .3, -bh * .05), (-bl * .5 - _u(rng, 10, 16), bh * _u(rng, .05, .3)),
                         (-bl * .45 - _u(rng, 6, 12), bh * _u(rng, .35, .55)), (-bl * .2, bh * .3)])]
    body = _Part(lab["body"], body_prims,
                 _tex(rng, "scales", _hsv(hue, _u(rng, .45, .75), _u(rng, .55, .8)),
                      _hsv(hue + .03, _u(rng, .5, .8), _u(rng, .3, .45)), period=_u(rng, 3.5, 5),
                      angle=tilt, ramp=0.35, ramp_angle=90),
                 stretch=(_u(rng, .01, .03), _u(rng, 14, 24), _u(rng, 0, 6.3), 0.0))
    r = _u(rng, 10, 13)
    hx, hy = bl * .42, -bh * .45
    eye_x, eye_y = hx + r * .35, hy - r * .15
    head = _Part(lab["head"], [_poly(_ellipse(hx, hy, r, r * .95, n=32))],
                 _tex(rng, "noise", _hsv(_u(rng, -.03, .04), _u(rng, .65, .9), _u(rng, .55, .75)),
                      _hsv(_u(rng, .02, .07), _u(rng, .5, .8), _u(rng, .8, .95)), cell=_u(rng, 4, 7),
                      soft=0.3, center=(hx, hy)),
                 pivot=(bl * .3, -bh * .25), parent=0,
                 swing=(_u(rng, 6, 12), _u(rng, 14, 28), _u(rng, 0, 6.3)),
                 deco=[(_poly(_ellipse(eye_x, eye_y, 2.3, 2.3, n=14)), _hsv(0, 0, .03)),
                       (_poly(_ellipse(eye_x + .6, eye_y - .7, .7, .7, n=8)), _hsv(0, 0, 1))])
    blen = _u(rng, 8, 13)
    bx0 = hx + r * .8
    beak = _Part(lab["beak"], [_poly([(bx0 - 2, hy - r * .35), (bx0 + blen, hy + r * _u(rng, 0, .2)),
                                      (bx0 - 2, hy + r * .35)])],
                 _tex(rng, "gradient", _hsv(_u(rng, .11, .15), _u(rng, .7, 1), 1.0),
                      _hsv(_u(rng, .06, .09), _u(rng, .8, 1), _u(rng, .6, .75)), angle=0,
                      center=(bx0 + blen / 2, hy), radius=blen / 2, grain=0.04),
                 pivot=(bx0, hy), parent=1, swing=(_u(rng, 2, 5), _u(rng, 8, 14), 0.0), bevel=1.5)
    wh = _u(rng, .6, .7)
    sx, sy = bl * .15, -bh * .2
    wing = _Part(lab["wing"], [_poly(_leaf(sx, sy, 180 + _u(rng, -5, 20), bl * _u(rng, .75, .95),
                                           bh * _u(rng, .45, .6), n=20))],
                 _tex(rng, "stripes", _hsv(wh, _u(rng, .4, .7), _u(rng, .2, .35)),
                      _hsv(wh, _u(rng, 0, .2), _u(rng, .8, .95)), period=_u(rng, 4, 6),
                      angle=_u(rng, -20, 20), soft=0.2),
                 pivot=(sx, sy), parent=0, swing=(_u(rng, 12, 22), _u(rng, 14, 22), _u(rng, 0, 6.3)))
    lh = _u(rng, .05, .1)
    leg_tex = _tex(rng, "stripes", _hsv(lh, _u(rng, .4, .7), _u(rng, .35, .55)),
                   _hsv(lh, _u(rng, .5, .8), _u(rng, .15, .25)), period=_u(rng, 1.8, 2.5), angle=90,
                   soft=0.5)
    legs = []
    ll = _u(rng, 12, 17)
    for i, lx in enumerate((-bl * .12, bl * .08)):
        ly = bh * .38
        foot = ly + ll
        legs.append(_Part(lab["leg"], [_stroke([(lx, ly - 3), (lx, foot)], 2.4),
                                       _stroke([(lx - 3, foot + 1), (lx, foot), (lx + 5, foot + 1)],
                                               1.8)],
                          leg_tex, pivot=(lx, ly), swing=(_u(rng, 4, 10), _u(rng, 14, 26), i * 3.0),
                          bevel=1.0, outline=0.3))
    # part list order = drawing order; parent indices refer to it: 0 body, 1 head
    parts = [body, head, beak, wing] + legs
    order = [4, 5, 0, 3, 1, 2]  # legs, body, wing, head, beak
    remap = {old: new for new, old in enumerate(order)}
    out = []
    for old in order:
        p = parts[old]
        if p.parent >= 0:
            p.parent = remap[p.parent]
        out.append(p)
    return _Instance(out, rot_range=15, rot_amp=10)


_BUILDERS: dict[str, Callable] = {"robot": _robot, "fish": _fish, "car": _car, "flower": _flower,
                                  "house": _house, "bird": _bird}


def _build(rng, category) -> _Instance:
    lab = {name: i + 1 for i, name in enumerate(CATEGORY_PARTS[category])}
    return _BUILDERS[category](rng, lab)


# ----------------------------------------------------------------------------------------------
# scene: object pose, background, occluder, lighting


@dataclass
class _Pose:
    qc: np.ndarray  # object rest-centre (units)
    mirror: float
    c_mid: np.ndarray
    c_amp: np.ndarray
    c_per: np.ndarray
    c_ph: np.ndarray
    s0: float
    s_osc: tuple
    th0: float
    th_osc: tuple
    d_osc: tuple  # slight anisotropic squash of the whole object


def _object_matrix(p: _Pose, t: float) -> np.ndarray:
    c = p.c_mid + p.c_amp * np.sin(2 * np.pi * t / p.c_per + p.c_ph)
    s = p.s0 * (1 + _osc(*p.s_osc, t))
    d = _osc(*p.d_osc, t)
    th = p.th0 + _osc(*p.th_osc, t)
    return (_T(*c) @ _R(th) @ _S(s * (1 + d), s * (1 - d)) @ _S(p.mirror, 1.0)
            @ _T(-p.qc[0], -p.qc[1]))


def _sample_pose(rng, inst: _Instance, H: int, W: int, still: bool) -> _Pose:
    lo, hi = np.full(2, np.inf), np.full(2, -np.inf)
    for part in inst.parts:
        a, b = _prims_bbox(part.prims)
        lo, hi = np.minimum(lo, a), np.maximum(hi, b)
    ext = hi - lo
    frac = _u(rng, 0.5, 0.78) if still else _u(rng, 0.55, 0.72)
    s0 = frac * min(H, W) / max(ext)
    s_amp = 0.0 if still else _u(rng, 0.03, 0.1)
    half = 0.5 * np.hypot(*ext) * s0 * (1 + s_amp) * 0.8
    lo_c = np.array([half, half])
    hi_c = np.array([W - half, H - half])
    mid = (lo_c + hi_c) / 2
    span = np.maximum(hi_c - lo_c, 0.0) / 2
    if still:
        c_amp = np.zeros(2)
        c_mid = mid + span * rng.uniform(-1, 1, 2)
    else:
        c_amp = span * rng.uniform(0.3, 1.0, 2)
        c_mid = mid + (span - c_amp) * rng.uniform(-1, 1, 2)
    rot = inst.rot_range * (1.6 if still else 1.0)
    return _Pose(qc=(lo + hi) / 2, mirror=float(rng.choice([-1.0, 1.0])), c_mid=c_mid, c_amp=c_amp,
                 c_per=rng.uniform(40, 90, 2), c_ph=rng.uniform(0, 2 * np.pi, 2), s0=s0,
                 s_osc=(s_amp, _u(rng, 30, 80), _u(rng, 0, 6.3)), th0=_u(rng, -rot, rot),
                 th_osc=(0.0 if still else _u(rng, .4, 1) * inst.rot_amp, _u(rng, 30, 70),
                         _u(rng, 0, 6.3)),
                 d_osc=(0.0 if still else _u(rng, 0.0, 0.04), _u(rng, 12, 30), _u(rng, 0, 6.3)))


def _random_shape_part(rng, r: float, unit: float) -> _Part:
    """A generic textured shape of radius about ``r`` centred on the origin (label 0)."""
    kind = int(rng.integers(7))
    if kind == 0:
        prims = [_poly(_ellipse(0, 0, r, r * _u(rng, .4, 1), _u(rng, 0, 180)))]
    elif kind == 1:
        ar = _u(rng, .3, 1)
        prims = [_poly(_rrect(-r, -r * ar, r, r * ar, r * _u(rng, 0, .4)) @ _R(_u(rng, 0, 90))[:2, :2].T)]
    elif kind == 2:
        prims = [_poly(_star(0, 0, r, r * _u(rng, .35, .7), int(rng.integers(4, 9)), _u(rng, 0, 90)))]
    elif kind == 3:
        prims = [_poly(_blob(rng, 0, 0, r * .85, _u(rng, .2, .6)))]
    elif kind == 4:
        n = int(rng.integers(3, 7))
        a = np.sort(rng.uniform(0, 2 * np.pi, n))
        prims = [_poly(np.stack([r * np.cos(a), r * np.sin(a)], 1))]
    elif kind == 5:
        pts = _ellipse(0, 0, r * .8, r * _u(rng, .4, .8), _u(rng, 0, 180), n=40)
        prims = [_stroke(np.concatenate([pts, pts[:1]]), max(r * _u(rng, .1, .3), 1.0))]
    else:
        n = int(rng.integers(3, 6))
        pts = np.cumsum(rng.uniform(-r, r, (n, 2)) * 0.7, 0)
        prims = [_stroke(pts - pts.mean(0), max(r * _u(rng, .1, .3), 1.0))]
    ext = (-1.6 * r - 20.0, 1.6 * r + 20.0)
    return _Part(0, prims, _random_texture(rng, unit, radius=r, extent=ext), bevel=r * _u(rng, .05, .3),
                 outline=_u(rng, 0, .4))


def _make_background(rng, Hb: int, Wb: int, unit: float) -> np.ndarray:
    """Textured canvas float32 ``[Hb,Wb,3]`` with clutter shapes (all background)."""
    extent = (-8.0, max(Hb, Wb) + 8.0)
    tex = _random_texture(rng, unit * _u(rng, 2, 5), center=(Wb / 2, Hb / 2), radius=max(Hb, Wb) / 2,
                          extent=extent)
    tex.c1 = _rand_hsv(rng, (0, 1), (.05, .55), (.35, .9))
    tex.c2 = np.clip(tex.c1 * rng.uniform(0.6, 1.3, 3), 0, 1).astype(np.float32)
    if tex.kind == "bricks":
        tex.c3 = np.clip(tex.c1 * 1.2, 0, 1).astype(np.float32)
    tex.grain_noise = _make_noise(rng, 12 * unit, 3, extent)
    tex.grain = _u(rng, 0.1, 0.3)
    U, V = np.meshgrid(np.arange(Wb, dtype=np.float32), np.arange(Hb, dtype=np.float32))
    canvas = _eval_tex(tex, U, V)
    if rng.random() < 0.5:  # horizon split: ground vs sky-like halves
        cut = Hb * _u(rng, .35, .75) + 15 * unit * (_sample_noise(tex.grain_noise, U[:1], U[:1]) - .5)
        ground = (V > cut).astype(np.float32)[..., None]
        canvas = canvas * (1 - ground) + canvas * ground * rng.uniform(0.55, 1.2, 3).astype(np.float32)
    for _ in range(int(rng.integers(3, 11))):
        r = _u(rng, .03, .14) * min(Hb, Wb)
        part = _random_shape_part(rng, r, unit)
        patch, L = _render_part(part, 1.0)
        M = _T(_u(rng, 0, Wb), _u(rng, 0, Hb)) @ _R(_u(rng, 0, 360)) @ L
        _stamp(canvas, patch, M, _u(rng, .5, 1.0))
    sigma = _u(rng, 0, 1.2) * unit
    if sigma > 0.3:
        canvas = cv2.GaussianBlur(canvas, (0, 0), sigma)
    return np.clip(canvas, 0, 1).astype(np.float32)


@dataclass
class _Background:
    canvas: np.ndarray
    pan_amp: np.ndarray
    pan_per: np.ndarray
    pan_ph: np.ndarray
    zoom: tuple


def _bg_matrix(bg: _Background, t: float, H: int, W: int) -> np.ndarray:
    Hb, Wb = bg.canvas.shape[:2]
    o = np.array([(Wb - 1) / 2, (Hb - 1) / 2]) + bg.pan_amp * np.sin(2 * np.pi * t / bg.pan_per + bg.pan_ph)
    z = 1 + _osc(*bg.zoom, t)
    return _T((W - 1) / 2, (H - 1) / 2) @ _S(z, z) @ _T(-o[0], -o[1])


@dataclass
class _Occluder:
    patch: np.ndarray
    L: np.ndarray
    centre: np.ndarray  # local centre (pixels)
    d: np.ndarray  # sweep direction
    n: np.ndarray  # normal
    p_c: float  # sweep position at t_c
    t_c: float
    v: float  # pixels per frame
    length: float  # sweep length (wrap period, pixels)
    q: float  # offset along the normal
    angle: float
    F: np.ndarray


def _occ_pos(o: _Occluder, i: int) -> float:
    p = o.p_c + o.v * (i - o.t_c) + o.length / 2
    return p - math.floor(p / o.length) * o.length - o.length / 2


def _occ_matrix(o: _Occluder, p: float) -> np.ndarray:
    c = o.F + o.d * p + o.n * o.q
    return _T(*c) @ _R(o.angle) @ _T(-o.centre[0], -o.centre[1]) @ o.L


def _make_occluder(rng, H, W, pose: _Pose, T: int, unit: float) -> _Occluder:
    m = min(H, W)
    t_c = _u(rng, .3, .7) * max(T - 1, 0)  # frame at which it crosses the object's centre
    phase = 2 * np.pi * t_c / pose.c_per + pose.c_ph
    c = pose.c_mid + pose.c_amp * np.sin(phase)
    c_vel = pose.c_amp * 2 * np.pi / pose.c_per * np.cos(phase)
    beta = (0.0 if rng.random() < 0.7 else 90.0) + _u(rng, -25, 25)
    d = np.array([math.cos(math.radians(beta)), math.sin(math.radians(beta))])
    if d @ c_vel > 0:  # sweep against the object's motion so the occlusion stays short
        beta, d = beta + 180.0, -d
    n = np.array([-d[1], d[0]])
    if rng.random() < 0.6:  # pole spanning the frame, oriented along the normal
        w, ln = _u(rng, .07, .13) * m, 2.5 * max(H, W)
        shape = _Part(0, [_poly(_rrect(-w / 2, -ln / 2, w / 2, ln / 2, w * .3))],
                      _random_texture(rng, unit, extent=(-ln / 2 - 10, ln / 2 + 10)), bevel=w * .3,
                      outline=.3)
        angle, extent_d, q_off = beta + _u(rng, -10, 10), w * 0.8, 0.0
    else:  # big blob passing over part of the object
        r = _u(rng, .11, .17) * m
        tex = _random_texture(rng, unit, radius=r, extent=(-2 * r - 10, 2 * r + 10))
        shape = _Part(0, [_poly(_blob(rng, 0, 0, r, .3))], tex, bevel=r * .2, outline=.3)
        angle, extent_d, q_off = _u(rng, 0, 360), r * 1.6, _u(rng, -.12, .12) * m
    patch, L = _render_part(shape, 1.0)
    h, w_ = patch.shape[:2]
    centre = (L @ np.array([(w_ - 1) / 2, (h - 1) / 2, 1.0]))[:2]
    F = np.array([(W - 1) / 2, (H - 1) / 2])
    period = _u(rng, 20, 32)
    length = abs(W * d[0]) + abs(H * d[1]) + 2 * extent_d + 4
    v = length / period
    return _Occluder(patch, L, centre, d, n, float((c - F) @ d), t_c, v, length,
                     float((c - F) @ n) + q_off, angle, F)


@dataclass
class _Light:
    gain: tuple
    contrast: tuple
    g0: float
    k0: float
    shade: float
    psi0: float
    psi_rate: float
    tau0: float
    tau: tuple
    noise: float


def _sample_light(rng, still: bool) -> _Light:
    amp = 0.0 if still else 1.0
    return _Light(gain=(amp * _u(rng, 0, .12), _u(rng, 20, 60), _u(rng, 0, 6.3)),
                  contrast=(amp * _u(rng, 0, .1), _u(rng, 20, 60), _u(rng, 0, 6.3)),
                  g0=_u(rng, .85, 1.1), k0=_u(rng, .85, 1.1), shade=_u(rng, 0, .3),
                  psi0=_u(rng, 0, 360), psi_rate=amp * _u(rng, -3, 3), tau0=_u(rng, -.06, .06),
                  tau=(amp * _u(rng, 0, .04), _u(rng, 20, 60), _u(rng, 0, 6.3)),
                  noise=_u(rng, .004, .018))


def _apply_light(img, lt: _Light, t: float, X, Y, rng) -> np.ndarray:
    H, W = img.shape[:2]
    g = lt.g0 + _osc(*lt.gain, t)
    k = lt.k0 + _osc(*lt.contrast, t)
    psi = math.radians(lt.psi0 + lt.psi_rate * t)
    ramp = ((X - W / 2) * math.cos(psi) + (Y - H / 2) * math.sin(psi)) / (0.5 * max(H, W))
    shade = (1 + lt.shade * ramp) * g
    tau = lt.tau0 + _osc(*lt.tau, t)
    temp = np.array([1 + tau, 1.0, 1 - tau], np.float32)
    out = ((img - 0.5) * k + 0.5) * shade[..., None] * temp
    out += rng.standard_normal(img.shape, dtype=np.float32) * np.float32(lt.noise)
    return np.clip(out, 0.0, 1.0).astype(np.float32)


@dataclass
class _Scene:
    inst: _Instance
    patches: list  # (rgba, L) per part
    pose: _Pose
    bg: _Background
    occ: _Occluder | None
    light: _Light
    t0: float
    noise_seed: int


def _make_scene(ss: np.random.SeedSequence, category: str, H: int, W: int, T: int, still: bool,
                occluder: bool) -> _Scene:
    """Sample everything about one clip (independent child streams per component).

    ``still`` samples a reference: random articulation time, no motion, no occluder.
    """
    r_inst, r_pose, r_bg, r_occ, r_light, r_noise, r_time = (np.random.default_rng(s)
                                                              for s in ss.spawn(7))
    unit = min(H, W) / 256.0
    inst = _build(r_inst, category)
    pose = _sample_pose(r_pose, inst, H, W, still)
    ppu = max(pose.s0 * (1 + pose.s_osc[0]) * 1.15, 0.25)
    patches = [_render_part(p, ppu) for p in inst.parts]
    margin = int(0.12 * max(H, W)) + 4
    canvas = _make_background(r_bg, H + 2 * margin, W + 2 * margin, unit)
    amp = 0.0 if still else 0.7 * margin
    bg = _Background(canvas, r_bg.uniform(0, 1, 2) * amp, r_bg.uniform(40, 100, 2),
                     r_bg.uniform(0, 2 * np.pi, 2), (0.0 if still else _u(r_bg, 0, .03),
                                                     _u(r_bg, 30, 80), _u(r_bg, 0, 6.3)))
    occ = _make_occluder(r_occ, H, W, pose, T, unit)
    t0 = _u(r_time, 0, 200) if still else 0.0
    return _Scene(inst, patches, pose, bg, occ if (occluder and T > 1) else None,
                  _sample_light(r_light, still), t0, int(r_noise.integers(2**63)))


def _layer_matrices(sc: _Scene, t: float, H: int, W: int) -> list[np.ndarray]:
    """Patch -> image matrices ``[background, part 1.., ]`` at time ``t`` (occluder excluded)."""
    O = _object_matrix(sc.pose, t)
    parts = _part_matrices(sc.inst.parts, t)
    return [_bg_matrix(sc.bg, t, H, W)] + [O @ P @ L for P, (_, L) in zip(parts, sc.patches)]


def _render(sc: _Scene, T: int, H: int, W: int, want_motion: bool):
    """Frames ``[T,H,W,3]``, labels ``[T,H,W]``, motion ``[T-1,H,W,2]``, occluder ``[T,H,W]``.

    Layers (background, parts in drawing order, occluder) are composited with premultiplied
    alpha; a pixel's label/layer is the topmost layer with coverage > 0.5, and its motion is that
    layer's affine map from frame t to t+1.
    """
    frames = np.empty((T, H, W, 3), np.float32)
    labels = np.zeros((T, H, W), np.uint8)
    occm = np.zeros((T, H, W), bool)
    motion = np.zeros((max(T - 1, 0) if want_motion else 0, H, W, 2), np.float32)
    X, Y = np.meshgrid(np.arange(W, dtype=np.float32), np.arange(H, dtype=np.float32))
    noise_rng = np.random.default_rng(sc.noise_seed)
    n_parts = len(sc.patches)
    for i in range(T):
        t = sc.t0 + i
        mats = _layer_matrices(sc, t, H, W)
        if sc.occ is not None:
            mats.append(_occ_matrix(sc.occ, _occ_pos(sc.occ, i)))
        img = cv2.warpAffine(sc.bg.canvas, mats[0][:2], (W, H), flags=cv2.INTER_LINEAR,
                             borderMode=cv2.BORDER_REFLECT_101)
        lab = labels[i]
        layer = np.zeros((H, W), np.uint8)
        for j in range(n_parts + (sc.occ is not None)):
            patch = sc.patches[j][0] if j < n_parts else sc.occ.patch
            res = _warp_into(patch, mats[j + 1], H, W)
            if res is None:
                continue
            y0, x0, out = res
            h, w = out.shape[:2]
            a = out[..., 3]
            roi = img[y0:y0 + h, x0:x0 + w]
            roi *= 1 - a[..., None]
            roi += out[..., :3]
            sel = a > 0.5
            lab[y0:y0 + h, x0:x0 + w][sel] = sc.inst.parts[j].label if j < n_parts else 0
            layer[y0:y0 + h, x0:x0 + w][sel] = j + 1
        if sc.occ is not None:
            occm[i] = layer == n_parts + 1
        frames[i] = _apply_light(img, sc.light, t, X, Y, noise_rng)
        if want_motion and i + 1 < T:
            nxt = _layer_matrices(sc, t + 1, H, W)
            if sc.occ is not None:
                nxt.append(_occ_matrix(sc.occ, _occ_pos(sc.occ, i) + sc.occ.v))
            D = np.stack([b @ np.linalg.inv(a) for a, b in zip(mats, nxt)])[:, :2].astype(np.float32)
            A = D[layer]  # [H,W,2,3]
            motion[i, ..., 0] = A[..., 0, 0] * X + A[..., 0, 1] * Y + A[..., 0, 2] - X
            motion[i, ..., 1] = A[..., 1, 0] * X + A[..., 1, 1] * Y + A[..., 1, 2] - Y
    return frames, labels, motion, occm


# ----------------------------------------------------------------------------------------------
# public API


def make_video(category: str, seed: int, num_frames: int = 24, size: tuple[int, int] = (256, 256),
               occluder: bool = True) -> ProceduralVideo:
    """Render a ``num_frames`` video of one instance of ``category`` at ``size = (H, W)``.

    The object translates, rotates, scales, articulates (swinging limbs/tail, spinning wheels) and
    is swept over by a moving occluder for some frames (``occluder=False`` renders the identical
    video without it). The background pans and the lighting drifts.
    """
    category = _check_category(category)
    seed = _check_seed(seed)
    H, W = _check_size(size)
    T = _check_count(num_frames, "num_frames", 1)
    scene = _make_scene(_seed_seq(seed, category, _STREAM_VIDEO), category, H, W, T, False, occluder)
    frames, labels, motion, occm = _render(scene, T, H, W, True)
    return ProceduralVideo(frames, labels, motion, occm, category_names(category), category, seed)


def make_references(category: str, seed: int, count: int, size: tuple[int, int] = (256, 256)
                    ) -> tuple[list[np.ndarray], list[np.ndarray], list[str]]:
    """``count`` annotated stills of other instances of ``category`` (never the video's instance).

    Returns images float32 ``[H,W,3]`` 0..1, labels uint8 ``[H,W]`` and the K segment names.
    Each reference has its own instance, pose, articulation, background and lighting, no occluder.
    """
    category = _check_category(category)
    seed = _check_seed(seed)
    H, W = _check_size(size)
    count = _check_count(count, "count", 0)
    images, labels = [], []
    for i in range(count):
        scene = _make_scene(_seed_seq(seed, category, _STREAM_REF, i), category, H, W, 1, True, False)
        frames, labs, _, _ = _render(scene, 1, H, W, False)
        images.append(frames[0])
        labels.append(labs[0])
    return images, labels, category_names(category)


def generic_image(seed: int, size: tuple[int, int] | int = (256, 256)) -> np.ndarray:
    """A random image of generic textured shapes (no benchmark category), float32 ``[H,W,3]`` 0..1.

    Meant for pre-training the backbone: varied textures, shapes, groups of touching shapes
    (generic "parts"), occlusions, backgrounds and lighting.
    """
    seed = _check_seed(seed)
    H, W = _check_size(size)
    rng = np.random.default_rng(_seed_seq(seed, "generic", _STREAM_GENERIC))
    unit = min(H, W) / 256.0
    margin = 8
    img = _make_background(rng, H + 2 * margin, W + 2 * margin, unit)[margin:-margin, margin:-margin]
    img = np.ascontiguousarray(img)
    m = min(H, W)
    for _ in range(int(rng.integers(2, 7))):  # composite objects: touching shapes
        cx, cy, ang = _u(rng, 0, W), _u(rng, 0, H), _u(rng, 0, 360)
        r0 = _u(rng, .08, .22) * m
        for k in range(int(rng.integers(1, 5))):
            r = r0 * (1.0 if k == 0 else _u(rng, .3, .8))
            off = np.zeros(2) if k == 0 else rng.uniform(-1, 1, 2) * r0
            patch, L = _render_part(_random_shape_part(rng, r, unit), 1.0)
            _stamp(img, patch, _T(cx, cy) @ _R(ang) @ _T(*off) @ _R(_u(rng, 0, 360)) @ L)
    for _ in range(int(rng.integers(1, 6))):
        patch, L = _render_part(_random_shape_part(rng, _u(rng, .04, .15) * m, unit), 1.0)
        _stamp(img, patch, _T(_u(rng, 0, W), _u(rng, 0, H)) @ L, _u(rng, .6, 1))
    X, Y = np.meshgrid(np.arange(W, dtype=np.float32), np.arange(H, dtype=np.float32))
    return _apply_light(img, _sample_light(rng, True), 0.0, X, Y, rng)


def _save_rgb(path: Path, image: np.ndarray) -> None:
    Image.fromarray(np.round(np.clip(image, 0, 1) * 255).astype(np.uint8)).save(path, format="PNG")


def write_example(out_dir: str | os.PathLike, category: str, seed: int, num_refs: int = 1,
                  num_frames: int = 24, size: tuple[int, int] = (256, 256),
                  overwrite: bool = False) -> dict[str, Path]:
    """Write one benchmark example in the DAVIS-like layout and return its paths.

    ``references/{images,labels}/refNNN.png`` + ``references/segments.json``, ``video/NNNNN.png``,
    ``gt/labels/NNNNN.png``, ``gt/motion/NNNNN.npy`` (float16 ``[H,W,2]``, frame t -> t+1) and
    ``gt/segments.json``. An existing ``out_dir`` is refused unless ``overwrite``.
    """
    from .label_png import save_label_png

    category = _check_category(category)
    num_refs = _check_count(num_refs, "num_refs", 1)
    video = make_video(category, seed, num_frames, size)
    ref_images, ref_labels, names = make_references(category, seed, num_refs, size)
    out_dir = Path(out_dir)
    with atomic_dir(out_dir, overwrite=overwrite) as tmp:
        dirs = {k: tmp / k for k in ("references/images", "references/labels", "video",
                                     "gt/labels", "gt/motion")}
        for d in dirs.values():
            d.mkdir(parents=True)
        for i, (im, lb) in enumerate(zip(ref_images, ref_labels)):
            _save_rgb(dirs["references/images"] / f"ref{i:03d}.png", im)
            save_label_png(dirs["references/labels"] / f"ref{i:03d}.png", lb)
        for t in range(video.frames.shape[0]):
            _save_rgb(dirs["video"] / f"{t:05d}.png", video.frames[t])
            save_label_png(dirs["gt/labels"] / f"{t:05d}.png", video.labels[t])
        for t in range(video.motion.shape[0]):
            np.save(dirs["gt/motion"] / f"{t:05d}.npy", video.motion[t].astype(np.float16),
                    allow_pickle=False)
        for rel in ("references/segments.json", "gt/segments.json"):
            (tmp / rel).write_text(json.dumps(names) + "\n")
    return {
        "root": out_dir,
        "ref_images": out_dir / "references/images",
        "ref_labels": out_dir / "references/labels",
        "ref_segments": out_dir / "references/segments.json",
        "video": out_dir / "video",
        "gt_labels": out_dir / "gt/labels",
        "gt_motion": out_dir / "gt/motion",
        "gt_segments": out_dir / "gt/segments.json",
    }
