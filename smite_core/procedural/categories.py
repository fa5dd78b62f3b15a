"""Layer 4 of the procedural generator: the object categories.

Every category has fixed part names (``CATEGORY_PARTS``; segment id = position + 1, 0 =
background) and a builder that draws one random :class:`Instance` of it: its parts (in drawing
order) authored in units (an object is about 100 units), each with a characteristic texture family
and colour tendency while shapes, proportions, counts and palettes vary per instance
(:func:`build`). ``TRAIN_CATEGORIES`` may be shown to the backbone in pre-training,
``HELDOUT_CATEGORIES`` never. Uses layers 1-3 (:mod:`.geometry`, :mod:`.texture`, :mod:`.parts`).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Callable

import numpy as np

from ..errors import InputError
from .geometry import ellipse, leaf, poly, rrect, stroke, uniform
from .parts import Part
from .texture import hsv, make_texture, rand_hsv

# ----------------------------------------------------------------------------------------------
# category names and parts

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


def category_names(category: str) -> list[str]:
    """Segment names of ``category``: ``["background", part1, ...]`` (index = segment id)."""
    return ["background", *CATEGORY_PARTS[check_category(category)]]


def check_category(category) -> str:
    """``category`` if it is a known category, else :class:`InputError`."""
    if not isinstance(category, str) or category not in CATEGORY_PARTS:
        raise InputError(f"unknown procedural category {category!r}; known: {', '.join(CATEGORIES)}")
    return category


# ----------------------------------------------------------------------------------------------
# builders: each returns an Instance authored in units (object about 100 units)


@dataclass
class Instance:
    """One random object: its parts in drawing order and how much it may rotate."""

    parts: list
    rot_range: float  # base rotation drawn from +-rot_range degrees
    rot_amp: float  # rotation oscillation amplitude over a video, degrees


def _robot(rng, lab) -> Instance:
    tw, th = uniform(rng, 34, 46), uniform(rng, 38, 50)
    hue = uniform(rng, 0.0, 0.1)
    torso = Part(lab["torso"], [poly(rrect(-tw / 2, -th / 2, tw / 2, th / 2, uniform(rng, 2, 8)))],
                 make_texture(rng, "stripes", hsv(hue, uniform(rng, .6, .9), uniform(rng, .75, .95)),
                              hsv(hue, uniform(rng, .6, .9), uniform(rng, .4, .55)), period=uniform(rng, 5, 8),
                              angle=90 + uniform(rng, -8, 8), soft=0.35, ramp=0.15, ramp_angle=-90),
                 stretch=(uniform(rng, 0.0, 0.03), uniform(rng, 15, 30), uniform(rng, 0, 6.3), 90.0))
    for _ in range(int(rng.integers(1, 4))):
        cx, cy, r = uniform(rng, -tw / 3, tw / 3), uniform(rng, -th / 3, th / 3), uniform(rng, 1.5, 3)
        torso.deco.append((poly(ellipse(cx, cy, r, r, n=16)), rand_hsv(rng, (0, 1), (.6, 1),
                                                                       (.8, 1))))
    hw, hh = uniform(rng, 20, 30), uniform(rng, 15, 22)
    top = -th / 2
    head_prims = [poly(rrect(-hw / 2, top - 3 - hh, hw / 2, top - 3, uniform(rng, 1, 6))),
                  poly(rrect(-4, top - 5, 4, top + 2))]
    if rng.random() < 0.7:
        ax = uniform(rng, -hw / 4, hw / 4)
        tip = top - 3 - hh - uniform(rng, 6, 10)
        head_prims += [stroke([(ax, top - hh), (ax, tip)], 1.6), poly(ellipse(ax, tip, 2.2, 2.2))]
    eye_c = rand_hsv(rng, (0, 1), (.7, 1), (.9, 1)) if rng.random() < 0.6 else hsv(0, 0, .05)
    ey, er = top - 3 - hh * uniform(rng, .5, .65), uniform(rng, 2, 3.2)
    deco = [(poly(ellipse(s * hw * 0.22, ey, er, er, n=16)), eye_c) for s in (-1, 1)]
    deco.append((stroke([(-hw * 0.2, top - 3 - hh * 0.22), (hw * 0.2, top - 3 - hh * 0.22)], 1.2),
                 hsv(0, 0, 0.15)))
    h2 = uniform(rng, .55, .65)
    head = Part(lab["head"], head_prims,
                make_texture(rng, "dots", hsv(h2, uniform(rng, .1, .3), uniform(rng, .75, .95)),
                             hsv(h2, uniform(rng, .5, .8), uniform(rng, .35, .55)), period=uniform(rng, 4, 6),
                             radius=uniform(rng, 1.0, 1.6), angle=uniform(rng, -20, 20)),
                pivot=(0.0, top), swing=(uniform(rng, 5, 12), uniform(rng, 18, 40), uniform(rng, 0, 6.3)), deco=deco)
    aw, al = uniform(rng, 8, 12), uniform(rng, 28, 38)
    ah = uniform(rng, .11, .16)
    arm_tex = make_texture(rng, "stripes", hsv(ah, uniform(rng, .7, .95), uniform(rng, .85, 1)),
                           hsv(ah, uniform(rng, .3, .8), uniform(rng, .1, .25)), period=uniform(rng, 6, 9),
                           angle=45 + uniform(rng, -10, 10), soft=0.12)
    lw, ll = uniform(rng, 10, 14), uniform(rng, 20, 28)
    lh = uniform(rng, .28, .4)
    leg_tex = make_texture(rng, "noise", hsv(lh, uniform(rng, .3, .6), uniform(rng, .25, .4)),
                           hsv(lh + .05, uniform(rng, .3, .6), uniform(rng, .55, .75)), cell=uniform(rng, 6, 10),
                           soft=0.25)
    arm_amp, arm_per, ph = uniform(rng, 10, 22), uniform(rng, 18, 32), uniform(rng, 0, 6.3)
    leg_amp, leg_per = uniform(rng, 5, 12), uniform(rng, 14, 30)
    legs, arms = [], []
    for i, side in enumerate((-1, 1)):
        hx, hy = side * uniform(rng, .18, .3) * tw, th / 2 - 3
        legs.append(Part(lab["leg"], [poly(rrect(hx - lw / 2, hy - 3, hx + lw / 2, hy + ll, 2)),
                                      poly(rrect(hx - lw * .8 + side * 2, hy + ll - 5,
                                                 hx + lw * .8 + side * 2, hy + ll + 2, 2))],
                         leg_tex, pivot=(hx, hy), swing=(leg_amp, leg_per, ph + i * math.pi)))
        sx, sy = side * (tw / 2 + aw / 2 - 1), top + aw / 2 + 2
        cr = aw * 0.65
        arms.append(Part(lab["arm"], [poly(rrect(sx - aw / 2, sy - aw / 2, sx + aw / 2, sy + al,
                                                 aw / 2.5)),
                                      poly(ellipse(sx, sy + al, cr, cr * 0.8, n=24))],
                         arm_tex, pivot=(sx, sy), rest=-side * uniform(rng, 8, 28),
                         swing=(arm_amp, arm_per, ph + i * math.pi)))
    return Instance(legs + [torso, head] + arms, rot_range=12, rot_amp=8)


def _fish(rng, lab) -> Instance:
    L, Hh = uniform(rng, 60, 78), uniform(rng, 26, 36)
    a = np.linspace(0, 2 * np.pi, 60, endpoint=False)
    x = L / 2 * np.cos(a)
    taper = 1 - 0.5 * np.clip(-x / (L / 2), 0, 1) ** 1.5
    body_pts = np.stack([x, Hh / 2 * np.sin(a) * taper], 1)
    bh = uniform(rng, .45, .62)
    body = Part(lab["body"], [poly(body_pts)],
                make_texture(rng, "scales", hsv(bh, uniform(rng, .35, .65), uniform(rng, .6, .85)),
                             hsv(bh + .04, uniform(rng, .5, .8), uniform(rng, .3, .45)), period=uniform(rng, 4.5, 6.5),
                             angle=uniform(rng, -5, 5), ramp=0.3, ramp_angle=90),
                stretch=(uniform(rng, 0.01, 0.04), uniform(rng, 10, 18), uniform(rng, 0, 6.3), 0.0))
    fh = uniform(rng, .9, 1.02)
    fin_tex = make_texture(rng, "spokes", hsv(fh, uniform(rng, .5, .8), uniform(rng, .7, .9)),
                           hsv(fh, uniform(rng, .15, .35), uniform(rng, .9, 1)), count=int(rng.integers(16, 26)),
                           soft=0.5, center=(0.0, -Hh / 4))
    dx = uniform(rng, -L * .12, L * .05)
    dorsal_base = [(dx - L * .16, -Hh / 2 * .75), (dx + L * .14, -Hh / 2 * .8)]
    apex = (dx - uniform(rng, 6, 14), -Hh / 2 - uniform(rng, 9, 15))
    dorsal = Part(lab["fin"], [poly([dorsal_base[0], apex, dorsal_base[1]])], fin_tex,
                  pivot=(dx, -Hh / 2 * .8), swing=(uniform(rng, 4, 9), uniform(rng, 12, 24), uniform(rng, 0, 6.3)))
    fins = [dorsal]
    if rng.random() < 0.6:
        ax = uniform(rng, -L * .3, -L * .15)
        fins.append(Part(lab["fin"], [poly([(ax - 5, Hh / 2 * .5), (ax - uniform(rng, 7, 11),
                                                                       Hh / 2 + uniform(rng, 5, 9)),
                                            (ax + 5, Hh / 2 * .55)])], fin_tex,
                         pivot=(ax, Hh / 2 * .55), swing=(uniform(rng, 5, 10), uniform(rng, 10, 20), 0.0)))
    tl, tspan = uniform(rng, 15, 22), uniform(rng, 20, 30)
    px = -L / 2 + 5
    fork = uniform(rng, 0.35, 0.8)
    tail_pts = [(px + 3, -3), (px - tl, -tspan / 2), (px - tl * fork, 0), (px - tl, tspan / 2),
                (px + 3, 3)]
    th_ = uniform(rng, .04, .14)
    tail = Part(lab["tail"], [poly(tail_pts)],
                make_texture(rng, "stripes", hsv(th_, uniform(rng, .7, .95), uniform(rng, .85, 1)),
                             hsv(th_ - .03, uniform(rng, .8, 1), uniform(rng, .45, .6)), period=uniform(rng, 3.5, 5.5),
                             angle=uniform(rng, -10, 10), soft=0.3),
                pivot=(px, 0.0), swing=(uniform(rng, 12, 22), uniform(rng, 10, 16), uniform(rng, 0, 6.3)))
    pcx, pcy = L * uniform(rng, .0, .12), Hh * uniform(rng, .05, .18)
    pect = Part(lab["fin"], [poly(leaf(pcx, pcy, 150 + uniform(rng, -15, 15), uniform(rng, 11, 15),
                                       uniform(rng, 6, 8)))],
                fin_tex, pivot=(pcx, pcy), swing=(uniform(rng, 12, 25), uniform(rng, 10, 16), uniform(rng, 0, 6.3)))
    er = uniform(rng, 4.2, 5.5)
    ex, ey = L * uniform(rng, .27, .33), -Hh * uniform(rng, .08, .16)
    eye = Part(lab["eye"], [poly(ellipse(ex, ey, er, er, n=28))],
               make_texture(rng, "radial", hsv(0, 0, .04), rand_hsv(rng, (.1, .17), (0, .5), (.9, 1)),
                            center=(ex, ey), radius=er * uniform(rng, .45, .6), soft=0.12, grain=0.02),
               deco=[(poly(ellipse(ex + er * .2, ey - er * .25, er * .18, er * .18, n=12)),
                      hsv(0, 0, 1))], bevel=1.0, outline=0.6)
    return Instance(fins[::-1] + [tail, body, pect, eye], rot_range=20, rot_amp=12)


def _car(rng, lab) -> Instance:
    L, bh, ch = uniform(rng, 80, 95), uniform(rng, 17, 23), uniform(rng, 14, 19)
    c0, c1 = -L * uniform(rng, .3, .4), L * uniform(rng, .15, .3)
    cab = [(c0, 1.0), (c0 + uniform(rng, 5, 10), -ch), (c1 - uniform(rng, 8, 14), -ch), (c1, 1.0)]
    hue = rng.choice([0.0, 0.58, 0.75]) + uniform(rng, -.04, .04)
    body_tex = make_texture(rng, "gradient", hsv(hue, uniform(rng, .55, .8), uniform(rng, .85, 1)),
                            hsv(hue, uniform(rng, .7, .95), uniform(rng, .35, .5)), angle=90,
                            center=(0.0, bh / 2 - ch / 2), radius=(bh + ch) / 2, grain=0.05)
    stripe_c = hsv(0, 0, .95) if rng.random() < 0.5 else hsv(0, 0, .1)
    body = Part(lab["body"], [poly(rrect(-L / 2, 0, L / 2, bh, uniform(rng, 3, 7))), poly(cab)],
                body_tex, pivot=(0.0, bh),
                stretch=(uniform(rng, .01, .025), uniform(rng, 8, 14), uniform(rng, 0, 6.3), 90.0),
                deco=[(stroke([(-L / 2 + 3, bh * .45), (L / 2 - 3, bh * .45)], uniform(rng, 1, 2)),
                       stripe_c)])
    nwin = 2 if (c1 - c0) > 40 or rng.random() < 0.5 else 1
    inset = 2.5
    x0w, x1w = c0 + inset + 2, c1 - inset - 2
    top_l, top_r = cab[1][0] + inset * .6, cab[2][0] - inset * .6
    y_top, y_bot = -ch + inset, -1.5
    wh = uniform(rng, .5, .58)
    win_tex = make_texture(rng, "stripes", hsv(wh, uniform(rng, .15, .4), uniform(rng, .85, 1)),
                           hsv(wh + .03, uniform(rng, .4, .7), uniform(rng, .45, .6)), period=uniform(rng, 7, 11),
                           angle=uniform(rng, 50, 70), soft=0.55, grain=0.04)
    windows = []
    if nwin == 1:
        windows.append([(x0w, y_bot), (top_l, y_top), (top_r, y_top), (x1w, y_bot)])
    else:
        mid = (x0w + x1w) / 2 + uniform(rng, -4, 4)
        windows.append([(x0w, y_bot), (top_l, y_top), (mid - 1.5, y_top), (mid - 1.5, y_bot)])
        windows.append([(mid + 1.5, y_bot), (mid + 1.5, y_top), (top_r, y_top), (x1w, y_bot)])
    parts = [body] + [Part(lab["window"], [poly(w)], win_tex, parent=0, bevel=1.5) for w in windows]
    lt = make_texture(rng, "radial", hsv(uniform(rng, .12, .16), uniform(rng, 0, .2), 1.0),
                      hsv(uniform(rng, .08, .13), uniform(rng, .7, 1), uniform(rng, .85, 1)), radius=3.0, soft=0.9,
                      grain=0.02)
    hx, hy = L / 2 - 4.5, bh * uniform(rng, .2, .35)
    lt.center = (hx, hy)
    parts.append(Part(lab["light"], [poly(ellipse(hx, hy, uniform(rng, 3.5, 4.5), uniform(rng, 2.5, 3.5)))],
                      lt, parent=0, bevel=1.0))
    tx_, ty_ = -L / 2 + 3.5, bh * uniform(rng, .2, .35)
    lt2 = make_texture(rng, "radial", lt.c1, lt.c2, radius=2.5, soft=0.9, center=(tx_, ty_), grain=0.02)
    parts.append(Part(lab["light"], [poly(rrect(tx_ - 2.5, ty_ - 3, tx_ + 2.5, ty_ + 3, 1))],
                      lt2, parent=0, bevel=1.0))
    rw = uniform(rng, 9, 12)
    spin = uniform(rng, 8, 20) * rng.choice([-1, 1])
    tyre, rim = hsv(0, 0, uniform(rng, .08, .16)), hsv(uniform(rng, 0, 1), uniform(rng, 0, .15), uniform(rng, .7, .9))
    nsp = int(rng.integers(4, 7))
    for wx in (-L * uniform(rng, .26, .32), L * uniform(rng, .26, .32)):
        t = make_texture(rng, "wheel", tyre, rim, center=(wx, bh), radius=rw, count=nsp, grain=0.04)
        parts.append(Part(lab["wheel"], [poly(ellipse(wx, bh, rw, rw, n=40))], t,
                          pivot=(wx, bh), spin=spin, bevel=2.0))
    return Instance(parts, rot_range=8, rot_amp=6)


def _flower(rng, lab) -> Instance:
    hc = (0.0, -16.0)
    base = (uniform(rng, -6, 6), 44.0)
    bend = uniform(rng, -8, 8)
    ts = np.linspace(0, 1, 12)
    stem_pts = np.stack([hc[0] + (base[0] - hc[0]) * ts + bend * np.sin(np.pi * ts),
                         hc[1] + (base[1] - hc[1]) * ts], 1)
    sh = uniform(rng, .27, .36)
    stem = Part(lab["stem"], [stroke(stem_pts, uniform(rng, 3.5, 5.5))],
                make_texture(rng, "stripes", hsv(sh, uniform(rng, .6, .85), uniform(rng, .4, .55)),
                             hsv(sh, uniform(rng, .7, .9), uniform(rng, .22, .32)), period=uniform(rng, 1.8, 2.6),
                             angle=0, soft=0.6),
                pivot=base, swing=(uniform(rng, 3, 7), uniform(rng, 30, 60), uniform(rng, 0, 6.3)), bevel=1.5)
    parts = [stem]
    lh = uniform(rng, .2, .29)
    leaf_tex = make_texture(rng, "stripes", hsv(lh, uniform(rng, .5, .8), uniform(rng, .6, .85)),
                            hsv(lh + .03, uniform(rng, .6, .9), uniform(rng, .35, .5)), period=uniform(rng, 3, 4.5),
                            angle=uniform(rng, 20, 70), soft=0.35, warp=1.5, cell=8.0)
    nleaf = int(rng.integers(1, 3))
    sides = rng.permutation([-1, 1])
    for i in range(nleaf):
        k = int(np.clip(round(uniform(rng, .45, .8) * 11), 1, 10))
        bx, by = stem_pts[k]
        side = sides[i]
        ang = -90 + side * uniform(rng, 40, 75)
        parts.append(Part(lab["leaf"], [poly(leaf(bx, by, ang, uniform(rng, 15, 22), uniform(rng, 7, 10)))],
                          leaf_tex, pivot=(bx, by), parent=0,
                          swing=(uniform(rng, 6, 14), uniform(rng, 16, 30), uniform(rng, 0, 6.3))))
    rc = uniform(rng, 7, 10)
    n = int(rng.integers(5, 10))
    pl, pw = uniform(rng, 13, 19), uniform(rng, 7, 11) * (7 / max(n, 7)) ** 0.5
    ph_ = uniform(rng, .75, 1.0)
    petal_tex = make_texture(rng, "radial", hsv(ph_, uniform(rng, .7, .95), uniform(rng, .5, .7)),
                             hsv(ph_ + uniform(rng, -.05, .05), uniform(rng, .2, .5), uniform(rng, .9, 1)), center=hc,
                             radius=rc + pl * .45, soft=0.6, grain=0.1)
    a0 = uniform(rng, 0, 360)
    breathe = (uniform(rng, 2, 5), uniform(rng, 20, 36), uniform(rng, 0, 6.3))
    centre_index = len(parts) + n  # petals first, the centre is drawn after them
    for i in range(n):
        ang = a0 + 360 * i / n + uniform(rng, -6, 6)
        bx = hc[0] + (rc - 3) * math.cos(math.radians(ang))
        by = hc[1] + (rc - 3) * math.sin(math.radians(ang))
        parts.append(Part(lab["petal"], [poly(leaf(bx, by, ang, pl, pw))], petal_tex,
                          pivot=(bx, by), parent=centre_index, swing=breathe, bevel=2.5))
    ch = uniform(rng, .07, .13)
    center = Part(lab["center"], [poly(ellipse(hc[0], hc[1], rc, rc, n=32))],
                  make_texture(rng, "dots", hsv(ch, uniform(rng, .6, .9), uniform(rng, .3, .5)),
                               hsv(ch + .04, uniform(rng, .6, .9), uniform(rng, .8, 1)), period=uniform(rng, 2.6, 3.4),
                               radius=uniform(rng, .7, 1.0), angle=uniform(rng, 0, 90)),
                  pivot=hc, parent=0, spin=uniform(rng, 0.5, 2.0) * rng.choice([-1, 1]), bevel=2.5)
    parts.append(center)
    return Instance(parts, rot_range=12, rot_amp=6)


def _house(rng, lab) -> Instance:
    ww, wh = uniform(rng, 52, 70), uniform(rng, 34, 46)
    top, bot = -wh / 2 + 10, wh / 2 + 10
    wall = Part(lab["wall"], [poly(rrect(-ww / 2, top, ww / 2, bot))],
                make_texture(rng, "bricks", rand_hsv(rng, (.02, .1), (.35, .75), (.5, .8)),
                             hsv(0, 0, .8), c3=rand_hsv(rng, (.08, .12), (0, .15), (.7, .9)),
                             period=uniform(rng, 6, 9)), bevel=2.0)
    ov, rh = uniform(rng, 3, 7), uniform(rng, 18, 28)
    skew = uniform(rng, -4, 4)
    if rng.random() < 0.6:
        roof_pts = [(-ww / 2 - ov, top + 1), (skew, top - rh), (ww / 2 + ov, top + 1)]
    else:
        tw = ww * uniform(rng, .15, .3)
        roof_pts = [(-ww / 2 - ov, top + 1), (-tw + skew, top - rh), (tw + skew, top - rh),
                    (ww / 2 + ov, top + 1)]
    roof_prims = [poly(roof_pts)]
    if rng.random() < 0.5:
        cxh = uniform(rng, .15, .3) * ww * rng.choice([-1, 1])
        roof_prims.insert(0, poly(rrect(cxh - 3.5, top - rh * .9, cxh + 3.5, top - rh * .3)))
    rhue = rng.choice([uniform(rng, .55, .68), uniform(rng, .95, 1.03)])
    roof = Part(lab["roof"], roof_prims,
                make_texture(rng, "scales", hsv(rhue, uniform(rng, .25, .55), uniform(rng, .45, .65)),
                             hsv(rhue, uniform(rng, .3, .6), uniform(rng, .15, .3)), period=uniform(rng, 4, 5.5),
                             angle=uniform(rng, -3, 3)), bevel=2.0)
    nslot = 3 if ww < 60 else 4
    slot = ww / nslot
    door_slot = int(rng.integers(nslot))
    dw, dh = min(uniform(rng, 10, 15), slot - 3), uniform(rng, 16, 23)
    dx = -ww / 2 + slot * (door_slot + .5)
    if rng.random() < 0.5:  # arched top
        a = np.linspace(np.pi, 2 * np.pi, 17)
        arc = np.stack([dx + dw / 2 * np.cos(a), bot - dh + dw / 2 + dw / 2 * np.sin(a)], 1)
        door_poly = np.concatenate([[[dx - dw / 2, bot]], arc, [[dx + dw / 2, bot]]])
    else:
        door_poly = rrect(dx - dw / 2, bot - dh, dx + dw / 2, bot, 1)
    dhue = uniform(rng, .05, .1)
    knob_x = dx + dw * .3 * rng.choice([-1, 1])
    door = Part(lab["door"], [poly(door_poly)],
                make_texture(rng, "wood", hsv(dhue, uniform(rng, .5, .8), uniform(rng, .45, .6)),
                             hsv(dhue, uniform(rng, .6, .9), uniform(rng, .2, .32)), period=uniform(rng, 2.5, 4),
                             angle=0, soft=0.5, warp=uniform(rng, 2, 4), cell=12.0),
                pivot=(dx - dw / 2, bot), stretch=(uniform(rng, .04, .1), uniform(rng, 20, 40), 0.0, 0.0),
                deco=[(poly(ellipse(knob_x, bot - dh * .45, 1.2, 1.2, n=10)), hsv(.13, .8, .95))],
                bevel=1.5)
    whue = rng.choice([uniform(rng, .5, .6), uniform(rng, .12, .16)])
    win_tex = make_texture(rng, "gradient", hsv(whue, uniform(rng, .15, .4), uniform(rng, .9, 1)),
                           hsv(whue, uniform(rng, .5, .8), uniform(rng, .55, .75)), angle=uniform(rng, 30, 60),
                           radius=7.0, grain=0.05)
    frame_c = hsv(0, 0, .95) if rng.random() < 0.5 else hsv(.08, .5, .25)
    windows = []
    ws = min(uniform(rng, 9, 13), slot - 3)
    cy = top + wh * uniform(rng, .3, .4)
    free = [i for i in range(nslot) if i != door_slot]
    nwin = int(rng.integers(1, len(free) + 1))
    for i in sorted(rng.choice(free, nwin, replace=False)):
        cx = -ww / 2 + slot * (i + .5)
        t = dataclasses.replace(win_tex, center=(cx, cy))
        windows.append(Part(lab["window"], [poly(rrect(cx - ws / 2, cy - ws / 2, cx + ws / 2,
                                                       cy + ws / 2))], t, bevel=1.2,
                            deco=[(stroke([(cx, cy - ws / 2), (cx, cy + ws / 2)], 1.3), frame_c),
                                  (stroke([(cx - ws / 2, cy), (cx + ws / 2, cy)], 1.3), frame_c)]))
    return Instance([wall, roof, door] + windows, rot_range=6, rot_amp=4)


def _bird(rng, lab) -> Instance:
    bl, bh = uniform(rng, 40, 50), uniform(rng, 24, 30)
    tilt = uniform(rng, -20, -8)
    hue = uniform(rng, .52, .66)
    body_prims = [poly(ellipse(0, 0, bl / 2, bh / 2, tilt)),
                  poly([(-bl * .3, -bh * .05), (-bl * .5 - uniform(rng, 10, 16), bh * uniform(rng, .05, .3)),
                        (-bl * .45 - uniform(rng, 6, 12), bh * uniform(rng, .35, .55)), (-bl * .2, bh * .3)])]
    body = Part(lab["body"], body_prims,
                make_texture(rng, "scales", hsv(hue, uniform(rng, .45, .75), uniform(rng, .55, .8)),
                             hsv(hue + .03, uniform(rng, .5, .8), uniform(rng, .3, .45)), period=uniform(rng, 3.5, 5),
                             angle=tilt, ramp=0.35, ramp_angle=90),
                stretch=(uniform(rng, .01, .03), uniform(rng, 14, 24), uniform(rng, 0, 6.3), 0.0))
    r = uniform(rng, 10, 13)
    hx, hy = bl * .42, -bh * .45
    eye_x, eye_y = hx + r * .35, hy - r * .15
    head = Part(lab["head"], [poly(ellipse(hx, hy, r, r * .95, n=32))],
                make_texture(rng, "noise",
                             hsv(uniform(rng, -.03, .04), uniform(rng, .65, .9), uniform(rng, .55, .75)),
                             hsv(uniform(rng, .02, .07), uniform(rng, .5, .8), uniform(rng, .8, .95)),
                             cell=uniform(rng, 4, 7), soft=0.3, center=(hx, hy)),
                pivot=(bl * .3, -bh * .25), parent=0,
                swing=(uniform(rng, 6, 12), uniform(rng, 14, 28), uniform(rng, 0, 6.3)),
                deco=[(poly(ellipse(eye_x, eye_y, 2.3, 2.3, n=14)), hsv(0, 0, .03)),
                      (poly(ellipse(eye_x + .6, eye_y - .7, .7, .7, n=8)), hsv(0, 0, 1))])
    blen = uniform(rng, 8, 13)
    bx0 = hx + r * .8
    beak = Part(lab["beak"], [poly([(bx0 - 2, hy - r * .35), (bx0 + blen, hy + r * uniform(rng, 0, .2)),
                                    (bx0 - 2, hy + r * .35)])],
                make_texture(rng, "gradient", hsv(uniform(rng, .11, .15), uniform(rng, .7, 1), 1.0),
                             hsv(uniform(rng, .06, .09), uniform(rng, .8, 1), uniform(rng, .6, .75)), angle=0,
                             center=(bx0 + blen / 2, hy), radius=blen / 2, grain=0.04),
                pivot=(bx0, hy), parent=1, swing=(uniform(rng, 2, 5), uniform(rng, 8, 14), 0.0), bevel=1.5)
    wh = uniform(rng, .6, .7)
    sx, sy = bl * .15, -bh * .2
    wing = Part(lab["wing"], [poly(leaf(sx, sy, 180 + uniform(rng, -5, 20), bl * uniform(rng, .75, .95),
                                        bh * uniform(rng, .45, .6), n=20))],
                make_texture(rng, "stripes", hsv(wh, uniform(rng, .4, .7), uniform(rng, .2, .35)),
                             hsv(wh, uniform(rng, 0, .2), uniform(rng, .8, .95)), period=uniform(rng, 4, 6),
                             angle=uniform(rng, -20, 20), soft=0.2),
                pivot=(sx, sy), parent=0, swing=(uniform(rng, 12, 22), uniform(rng, 14, 22), uniform(rng, 0, 6.3)))
    lh = uniform(rng, .05, .1)
    leg_tex = make_texture(rng, "stripes", hsv(lh, uniform(rng, .4, .7), uniform(rng, .35, .55)),
                           hsv(lh, uniform(rng, .5, .8), uniform(rng, .15, .25)), period=uniform(rng, 1.8, 2.5),
                           angle=90, soft=0.5)
    legs = []
    ll = uniform(rng, 12, 17)
    for i, lx in enumerate((-bl * .12, bl * .08)):
        ly = bh * .38
        foot = ly + ll
        legs.append(Part(lab["leg"], [stroke([(lx, ly - 3), (lx, foot)], 2.4),
                                      stroke([(lx - 3, foot + 1), (lx, foot), (lx + 5, foot + 1)],
                                             1.8)],
                         leg_tex, pivot=(lx, ly), swing=(uniform(rng, 4, 10), uniform(rng, 14, 26), i * 3.0),
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
    return Instance(out, rot_range=15, rot_amp=10)


_BUILDERS: dict[str, Callable] = {"robot": _robot, "fish": _fish, "car": _car, "flower": _flower,
                                  "house": _house, "bird": _bird}


def build(rng, category) -> Instance:
    """A random instance of ``category`` drawn from ``rng`` (labels from ``CATEGORY_PARTS``)."""
    lab = {name: i + 1 for i, name in enumerate(CATEGORY_PARTS[category])}
    return _BUILDERS[category](rng, lab)
