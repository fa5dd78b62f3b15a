"""Layer 1 of the procedural generator (the bottom one): plane geometry.

3x3 affine matrices (:func:`affine`, :func:`translate`, :func:`rotate`, :func:`scale`), the
time functions of every motion (:func:`osc`, :func:`smoothstep`), the random helper
:func:`uniform`, shape outlines as float polygons (:func:`ellipse`, :func:`rrect`, :func:`blob`,
:func:`star`, :func:`leaf`) and drawing primitives (:func:`poly`, :func:`stroke`) with their bounding
box and antialiased coverage. Imports nothing from the other layers.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

# ----------------------------------------------------------------------------------------------
# affine maps and time functions


def smoothstep(e0, e1, x):
    """Hermite step from 0 at ``e0`` to 1 at ``e1`` (elementwise, clipped)."""
    t = np.clip((x - e0) / (e1 - e0), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def affine(a=1.0, b=0.0, c=0.0, d=0.0, e=1.0, f=0.0) -> np.ndarray:
    """The 3x3 matrix ``[[a, b, c], [d, e, f], [0, 0, 1]]``."""
    return np.array([[a, b, c], [d, e, f], [0.0, 0.0, 1.0]])


def translate(x, y) -> np.ndarray:
    """3x3 translation by ``(x, y)``."""
    return affine(c=x, f=y)


def rotate(deg) -> np.ndarray:
    """3x3 rotation by ``deg`` degrees (clockwise on screen, where y points down)."""
    r = math.radians(deg)
    return affine(math.cos(r), -math.sin(r), 0.0, math.sin(r), math.cos(r), 0.0)


def scale(sx, sy) -> np.ndarray:
    """3x3 scaling by ``sx``, ``sy``."""
    return affine(a=sx, e=sy)


def osc(amp, period, phase, t):
    """Oscillation ``amp * sin(2 pi t / period + phase)`` at time ``t`` (frames)."""
    return amp * math.sin(2.0 * math.pi * t / period + phase)


def uniform(rng, lo, hi):
    """One uniform float in ``[lo, hi)`` from ``rng`` (one draw)."""
    return float(rng.uniform(lo, hi))


# ----------------------------------------------------------------------------------------------
# shapes (polygons in float coordinates)


def ellipse(cx, cy, ax, ay, ang=0.0, n=40) -> np.ndarray:
    """Ellipse outline ``[n,2]`` centred on ``(cx, cy)`` with half-axes ``ax, ay``, rotated ``ang`` degrees."""
    a = np.linspace(0, 2 * np.pi, n, endpoint=False)
    p = np.stack([ax * np.cos(a), ay * np.sin(a)], 1)
    r = math.radians(ang)
    rot = np.array([[math.cos(r), -math.sin(r)], [math.sin(r), math.cos(r)]])
    return p @ rot.T + (cx, cy)


def rrect(x0, y0, x1, y1, r=0.0, n=5) -> np.ndarray:
    """Axis-aligned rectangle outline with corner radius ``r`` (``n`` segments per corner)."""
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


def blob(rng, cx, cy, r, wobble=0.25, n=36) -> np.ndarray:
    """Wobbly closed outline of radius about ``r`` (random harmonics of strength ``wobble``)."""
    a = np.linspace(0, 2 * np.pi, n, endpoint=False)
    rad = np.ones(n)
    for k in (2, 3, 5):
        rad += wobble / k * rng.uniform(-1, 1) * np.cos(k * a + rng.uniform(0, 2 * np.pi))
    return np.stack([cx + r * rad * np.cos(a), cy + r * rad * np.sin(a)], 1)


def star(cx, cy, r_out, r_in, n, ang=0.0) -> np.ndarray:
    """Star outline with ``n`` points between radii ``r_out`` and ``r_in``, rotated ``ang`` degrees."""
    a = np.linspace(0, 2 * np.pi, 2 * n, endpoint=False) + math.radians(ang)
    rad = np.where(np.arange(2 * n) % 2 == 0, r_out, r_in)
    return np.stack([cx + rad * np.cos(a), cy + rad * np.sin(a)], 1)


def leaf(bx, by, ang, length, width, n=16) -> np.ndarray:
    """Lens-shaped leaf/petal from base (bx, by) pointing along ``ang`` degrees."""
    t = np.linspace(0, 1, n)
    r = math.radians(ang)
    d = np.array([math.cos(r), math.sin(r)])
    p = np.array([-d[1], d[0]])
    half = width / 2 * np.sin(np.pi * t) ** 0.8
    side1 = (bx, by) + t[:, None] * length * d + half[:, None] * p
    side2 = (bx, by) + t[::-1, None] * length * d - half[::-1, None] * p
    return np.concatenate([side1, side2[1:-1]])


# ----------------------------------------------------------------------------------------------
# drawing primitives: ("poly", pts[N,2]) or ("stroke", pts[N,2], width)


def poly(pts) -> tuple:
    """A filled polygon primitive ``("poly", pts[N,2])``."""
    return ("poly", np.asarray(pts, dtype=np.float64))


def stroke(pts, width) -> tuple:
    """An open polyline primitive ``("stroke", pts[N,2], width)``."""
    return ("stroke", np.asarray(pts, dtype=np.float64), float(width))


def prims_bbox(prims) -> tuple[np.ndarray, np.ndarray]:
    """Bounding box ``(lo, hi)`` of primitives, stroke widths included."""
    lo, hi = np.full(2, np.inf), np.full(2, -np.inf)
    for prim in prims:
        pad = prim[2] / 2 if prim[0] == "stroke" else 0.0
        lo = np.minimum(lo, prim[1].min(0) - pad)
        hi = np.maximum(hi, prim[1].max(0) + pad)
    return lo, hi


def draw_prims(prims, lo, ppu, shape_hw) -> np.ndarray:
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
