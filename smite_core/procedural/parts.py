"""Layer 3 of the procedural generator: a part, its rendering and its placement.

A :class:`Part` is a textured shape authored in object coordinates, articulated over time
(:func:`part_matrices`); :func:`render_part` draws it once into a premultiplied RGBA patch,
:func:`warp_into` / :func:`stamp` place a patch into an image by a 3x3 affine map.
:func:`random_shape_part` is a generic textured shape (background clutter, generic pictures).
Uses layers 1-2 (:mod:`.geometry`, :mod:`.texture`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import cv2
import numpy as np

from .geometry import (
    affine,
    blob,
    draw_prims,
    ellipse,
    osc,
    poly,
    prims_bbox,
    rotate,
    rrect,
    scale,
    smoothstep,
    star,
    stroke,
    translate,
    uniform,
)
from .texture import Texture, eval_texture, random_texture

# ----------------------------------------------------------------------------------------------
# a part and its articulation


@dataclass
class Part:
    """One drawable part, authored in object coordinates at rest (units, y down).

    It rotates by ``swing``/``spin`` about ``pivot`` and squashes along ``str_axis``, then follows
    its ``parent`` (index into the part list, -1 = the object itself). ``deco`` paints
    ``(primitive, rgb)`` details on the texture without changing the mask.
    """

    label: int
    prims: list
    tex: Texture
    pivot: tuple = (0.0, 0.0)
    parent: int = -1
    rest: float = 0.0
    swing: tuple = (0.0, 1.0, 0.0)  # amplitude deg, period frames, phase rad
    spin: float = 0.0  # deg per frame
    stretch: tuple = (0.0, 1.0, 0.0, 0.0)  # amplitude, period, phase, axis deg
    deco: list = field(default_factory=list)
    bevel: float = 3.0
    outline: float = 0.45


def _part_local(part: Part, t: float) -> np.ndarray:
    ang = part.rest + osc(*part.swing, t) + part.spin * t
    m = translate(*part.pivot) @ rotate(ang)
    amp, per, ph, axis = part.stretch
    if amp:
        s = 1.0 + osc(amp, per, ph, t)
        m = m @ rotate(axis) @ scale(s, 1.0 / s) @ rotate(-axis)
    return m @ translate(-part.pivot[0], -part.pivot[1])


def part_matrices(parts, t: float) -> list[np.ndarray]:
    """Rest-object -> posed-object 3x3 matrix of every part at time ``t`` (parents applied)."""
    out: list = [None] * len(parts)

    def get(i):
        if out[i] is None:
            m = _part_local(parts[i], t)
            out[i] = m if parts[i].parent < 0 else get(parts[i].parent) @ m
        return out[i]

    return [get(i) for i in range(len(parts))]


# ----------------------------------------------------------------------------------------------
# rendering a part and placing patches


def render_part(part: Part, ppu: float) -> tuple[np.ndarray, np.ndarray]:
    """Premultiplied RGBA patch float32 ``[h,w,4]`` and its patch -> local 3x3 matrix."""
    lo, hi = prims_bbox(part.prims)
    lo = lo - 1.0 - 2.0 / ppu
    hi = hi + 1.0 + 2.0 / ppu
    w = int(math.ceil((hi[0] - lo[0]) * ppu)) + 1
    h = int(math.ceil((hi[1] - lo[1]) * ppu)) + 1
    mask = draw_prims(part.prims, lo, ppu, (h, w))
    U, V = np.meshgrid((lo[0] + np.arange(w) / ppu).astype(np.float32),
                       (lo[1] + np.arange(h) / ppu).astype(np.float32))
    colour = eval_texture(part.tex, U, V)
    for prim, rgb in part.deco:
        m = draw_prims([prim], lo, ppu, (h, w))[..., None]
        colour = colour * (1 - m) + np.asarray(rgb, np.float32) * m
    dist = cv2.distanceTransform((mask > 0.5).astype(np.uint8), cv2.DIST_L2, 5) / ppu
    shade = 1.0 - 0.3 * (1.0 - smoothstep(0.0, part.bevel, dist))
    if part.outline:
        shade = shade * (1.0 - part.outline * (1.0 - smoothstep(0.4, 1.2, dist)))
    colour = colour * shade[..., None]
    rgba = np.concatenate([colour * mask[..., None], mask[..., None]], axis=2).astype(np.float32)
    return rgba, affine(1 / ppu, 0, lo[0], 0, 1 / ppu, lo[1])


def warp_into(patch: np.ndarray, M: np.ndarray, H: int, W: int):
    """Warp a patch by 3x3 ``M`` (patch px -> image px); returns (y0, x0, warped) or None."""
    h, w = patch.shape[:2]
    corners = np.array([[0, 0, 1], [w, 0, 1], [0, h, 1], [w, h, 1]], float) - (0.5, 0.5, 0)
    pts = corners @ M[:2].T
    x0, y0 = np.floor(pts.min(0)).astype(int) - 1
    x1, y1 = np.ceil(pts.max(0)).astype(int) + 2
    x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, W), min(y1, H)
    if x1 <= x0 or y1 <= y0:
        return None
    Mr = translate(-x0, -y0) @ M
    out = cv2.warpAffine(patch, Mr[:2], (x1 - x0, y1 - y0), flags=cv2.INTER_LINEAR,
                         borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    if out.ndim == 2:
        out = out[..., None]
    return y0, x0, out


def stamp(img: np.ndarray, patch: np.ndarray, M: np.ndarray,
          opacity: float = 1.0) -> tuple[tuple[slice, slice], np.ndarray] | None:
    """Composite a premultiplied RGBA patch, placed by 3x3 ``M``, into ``img`` ``[H,W,3]`` in place.

    Returns the region it touched (rows, columns) and the pixels there it covers (alpha > 0.5), for
    labelling them; None when it misses the picture.
    """
    res = warp_into(patch, M, *img.shape[:2])
    if res is None:
        return None
    y0, x0, out = res
    region = (slice(y0, y0 + out.shape[0]), slice(x0, x0 + out.shape[1]))
    roi = img[region]
    a = out[..., 3:4] * opacity
    roi *= 1 - a
    roi += out[..., :3] * opacity
    return region, out[..., 3] > 0.5


# ----------------------------------------------------------------------------------------------
# generic shapes (background clutter, generic pictures)


def random_shape_part(rng, r: float, unit: float) -> Part:
    """A generic textured shape of radius about ``r`` centred on the origin (label 0)."""
    kind = int(rng.integers(7))
    if kind == 0:
        prims = [poly(ellipse(0, 0, r, r * uniform(rng, .4, 1), uniform(rng, 0, 180)))]
    elif kind == 1:
        ar = uniform(rng, .3, 1)
        prims = [poly(rrect(-r, -r * ar, r, r * ar, r * uniform(rng, 0, .4)) @ rotate(uniform(rng, 0, 90))[:2, :2].T)]
    elif kind == 2:
        prims = [poly(star(0, 0, r, r * uniform(rng, .35, .7), int(rng.integers(4, 9)), uniform(rng, 0, 90)))]
    elif kind == 3:
        prims = [poly(blob(rng, 0, 0, r * .85, uniform(rng, .2, .6)))]
    elif kind == 4:
        n = int(rng.integers(3, 7))
        a = np.sort(rng.uniform(0, 2 * np.pi, n))
        prims = [poly(np.stack([r * np.cos(a), r * np.sin(a)], 1))]
    elif kind == 5:
        pts = ellipse(0, 0, r * .8, r * uniform(rng, .4, .8), uniform(rng, 0, 180), n=40)
        prims = [stroke(np.concatenate([pts, pts[:1]]), max(r * uniform(rng, .1, .3), 1.0))]
    else:
        n = int(rng.integers(3, 6))
        pts = np.cumsum(rng.uniform(-r, r, (n, 2)) * 0.7, 0)
        prims = [stroke(pts - pts.mean(0), max(r * uniform(rng, .1, .3), 1.0))]
    ext = (-1.6 * r - 20.0, 1.6 * r + 20.0)
    return Part(0, prims, random_texture(rng, unit, radius=r, extent=ext), bevel=r * uniform(rng, .05, .3),
                outline=uniform(rng, 0, .4))
