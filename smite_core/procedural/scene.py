"""Layer 5 of the procedural generator: scenes (pose, background, occluder, light) and their rendering.

:func:`make_scene` samples everything about one clip from independent child streams: an instance
(:func:`.categories.build`), its pose and motion, a panning and zooming cluttered background
(:func:`make_background`), a moving occluder and drifting lighting (:func:`sample_light`,
:func:`apply_light`). :func:`render_scene` composites the layers into frames, labels, the exact
forward motion and the occluder mask. Uses layers 1-4.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from .categories import Instance, build
from .geometry import blob, osc, poly, prims_bbox, rotate, rrect, scale, translate, uniform
from .parts import Part, part_matrices, random_shape_part, render_part, stamp
from .texture import eval_texture, make_noise, rand_hsv, random_texture, sample_noise

# ----------------------------------------------------------------------------------------------
# object pose


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
    s = p.s0 * (1 + osc(*p.s_osc, t))
    d = osc(*p.d_osc, t)
    th = p.th0 + osc(*p.th_osc, t)
    return (translate(*c) @ rotate(th) @ scale(s * (1 + d), s * (1 - d)) @ scale(p.mirror, 1.0)
            @ translate(-p.qc[0], -p.qc[1]))


def _sample_pose(rng, inst: Instance, H: int, W: int, still: bool) -> _Pose:
    lo, hi = np.full(2, np.inf), np.full(2, -np.inf)
    for part in inst.parts:
        a, b = prims_bbox(part.prims)
        lo, hi = np.minimum(lo, a), np.maximum(hi, b)
    ext = hi - lo
    frac = uniform(rng, 0.5, 0.78) if still else uniform(rng, 0.55, 0.72)
    s0 = frac * min(H, W) / max(ext)
    s_amp = 0.0 if still else uniform(rng, 0.03, 0.1)
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
                 s_osc=(s_amp, uniform(rng, 30, 80), uniform(rng, 0, 6.3)), th0=uniform(rng, -rot, rot),
                 th_osc=(0.0 if still else uniform(rng, .4, 1) * inst.rot_amp, uniform(rng, 30, 70),
                         uniform(rng, 0, 6.3)),
                 d_osc=(0.0 if still else uniform(rng, 0.0, 0.04), uniform(rng, 12, 30), uniform(rng, 0, 6.3)))


# ----------------------------------------------------------------------------------------------
# background


def make_background(rng, Hb: int, Wb: int, unit: float) -> np.ndarray:
    """Textured canvas float32 ``[Hb,Wb,3]`` with clutter shapes (all background)."""
    extent = (-8.0, max(Hb, Wb) + 8.0)
    tex = random_texture(rng, unit * uniform(rng, 2, 5), center=(Wb / 2, Hb / 2), radius=max(Hb, Wb) / 2,
                         extent=extent)
    tex.c1 = rand_hsv(rng, (0, 1), (.05, .55), (.35, .9))
    tex.c2 = np.clip(tex.c1 * rng.uniform(0.6, 1.3, 3), 0, 1).astype(np.float32)
    if tex.kind == "bricks":
        tex.c3 = np.clip(tex.c1 * 1.2, 0, 1).astype(np.float32)
    tex.grain_noise = make_noise(rng, 12 * unit, 3, extent)
    tex.grain = uniform(rng, 0.1, 0.3)
    U, V = np.meshgrid(np.arange(Wb, dtype=np.float32), np.arange(Hb, dtype=np.float32))
    canvas = eval_texture(tex, U, V)
    if rng.random() < 0.5:  # horizon split: ground vs sky-like halves
        cut = Hb * uniform(rng, .35, .75) + 15 * unit * (sample_noise(tex.grain_noise, U[:1], U[:1]) - .5)
        ground = (V > cut).astype(np.float32)[..., None]
        canvas = canvas * (1 - ground) + canvas * ground * rng.uniform(0.55, 1.2, 3).astype(np.float32)
    for _ in range(int(rng.integers(3, 11))):
        r = uniform(rng, .03, .14) * min(Hb, Wb)
        part = random_shape_part(rng, r, unit)
        patch, L = render_part(part, 1.0)
        M = translate(uniform(rng, 0, Wb), uniform(rng, 0, Hb)) @ rotate(uniform(rng, 0, 360)) @ L
        stamp(canvas, patch, M, uniform(rng, .5, 1.0))
    sigma = uniform(rng, 0, 1.2) * unit
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
    z = 1 + osc(*bg.zoom, t)
    return translate((W - 1) / 2, (H - 1) / 2) @ scale(z, z) @ translate(-o[0], -o[1])


# ----------------------------------------------------------------------------------------------
# occluder


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
    return translate(*c) @ rotate(o.angle) @ translate(-o.centre[0], -o.centre[1]) @ o.L


def _make_occluder(rng, H, W, pose: _Pose, T: int, unit: float) -> _Occluder:
    m = min(H, W)
    t_c = uniform(rng, .3, .7) * max(T - 1, 0)  # frame at which it crosses the object's centre
    phase = 2 * np.pi * t_c / pose.c_per + pose.c_ph
    c = pose.c_mid + pose.c_amp * np.sin(phase)
    c_vel = pose.c_amp * 2 * np.pi / pose.c_per * np.cos(phase)
    beta = (0.0 if rng.random() < 0.7 else 90.0) + uniform(rng, -25, 25)
    d = np.array([math.cos(math.radians(beta)), math.sin(math.radians(beta))])
    if d @ c_vel > 0:  # sweep against the object's motion so the occlusion stays short
        beta, d = beta + 180.0, -d
    n = np.array([-d[1], d[0]])
    if rng.random() < 0.6:  # pole spanning the frame, oriented along the normal
        w, ln = uniform(rng, .07, .13) * m, 2.5 * max(H, W)
        shape = Part(0, [poly(rrect(-w / 2, -ln / 2, w / 2, ln / 2, w * .3))],
                     random_texture(rng, unit, extent=(-ln / 2 - 10, ln / 2 + 10)), bevel=w * .3,
                     outline=.3)
        angle, extent_d, q_off = beta + uniform(rng, -10, 10), w * 0.8, 0.0
    else:  # big blob passing over part of the object
        r = uniform(rng, .11, .17) * m
        tex = random_texture(rng, unit, radius=r, extent=(-2 * r - 10, 2 * r + 10))
        shape = Part(0, [poly(blob(rng, 0, 0, r, .3))], tex, bevel=r * .2, outline=.3)
        angle, extent_d, q_off = uniform(rng, 0, 360), r * 1.6, uniform(rng, -.12, .12) * m
    patch, L = render_part(shape, 1.0)
    h, w_ = patch.shape[:2]
    centre = (L @ np.array([(w_ - 1) / 2, (h - 1) / 2, 1.0]))[:2]
    F = np.array([(W - 1) / 2, (H - 1) / 2])
    period = uniform(rng, 20, 32)
    length = abs(W * d[0]) + abs(H * d[1]) + 2 * extent_d + 4
    v = length / period
    return _Occluder(patch, L, centre, d, n, float((c - F) @ d), t_c, v, length,
                     float((c - F) @ n) + q_off, angle, F)


# ----------------------------------------------------------------------------------------------
# lighting


@dataclass
class Light:
    """Lighting of a clip: global gain, contrast, a shading ramp, colour temperature and noise over time."""

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


def sample_light(rng, still: bool) -> Light:
    """Random lighting; ``still`` (a reference) keeps it constant over time."""
    amp = 0.0 if still else 1.0
    return Light(gain=(amp * uniform(rng, 0, .12), uniform(rng, 20, 60), uniform(rng, 0, 6.3)),
                 contrast=(amp * uniform(rng, 0, .1), uniform(rng, 20, 60), uniform(rng, 0, 6.3)),
                 g0=uniform(rng, .85, 1.1), k0=uniform(rng, .85, 1.1), shade=uniform(rng, 0, .3),
                 psi0=uniform(rng, 0, 360), psi_rate=amp * uniform(rng, -3, 3), tau0=uniform(rng, -.06, .06),
                 tau=(amp * uniform(rng, 0, .04), uniform(rng, 20, 60), uniform(rng, 0, 6.3)),
                 noise=uniform(rng, .004, .018))


def apply_light(img, lt: Light, t: float, X, Y, rng) -> np.ndarray:
    """``img`` under lighting ``lt`` at time ``t`` (``X, Y``: pixel grids), with sensor noise from ``rng``."""
    H, W = img.shape[:2]
    g = lt.g0 + osc(*lt.gain, t)
    k = lt.k0 + osc(*lt.contrast, t)
    psi = math.radians(lt.psi0 + lt.psi_rate * t)
    ramp = ((X - W / 2) * math.cos(psi) + (Y - H / 2) * math.sin(psi)) / (0.5 * max(H, W))
    shade = (1 + lt.shade * ramp) * g
    tau = lt.tau0 + osc(*lt.tau, t)
    temp = np.array([1 + tau, 1.0, 1 - tau], np.float32)
    out = ((img - 0.5) * k + 0.5) * shade[..., None] * temp
    out += rng.standard_normal(img.shape, dtype=np.float32) * np.float32(lt.noise)
    return np.clip(out, 0.0, 1.0).astype(np.float32)


# ----------------------------------------------------------------------------------------------
# a clip: sampling and rendering


@dataclass
class Scene:
    """Everything sampled about one clip (:func:`make_scene`), ready for :func:`render_scene`."""

    inst: Instance
    patches: list  # (rgba, L) per part
    pose: _Pose
    bg: _Background
    occ: _Occluder | None
    light: Light
    t0: float
    noise_seed: int


def make_scene(ss: np.random.SeedSequence, category: str, H: int, W: int, T: int, still: bool,
               occluder: bool) -> Scene:
    """Sample everything about one clip (independent child streams per component).

    ``still`` samples a reference: random articulation time, no motion, no occluder.
    """
    r_inst, r_pose, r_bg, r_occ, r_light, r_noise, r_time = (np.random.default_rng(s)
                                                              for s in ss.spawn(7))
    unit = min(H, W) / 256.0
    inst = build(r_inst, category)
    pose = _sample_pose(r_pose, inst, H, W, still)
    ppu = max(pose.s0 * (1 + pose.s_osc[0]) * 1.15, 0.25)
    patches = [render_part(p, ppu) for p in inst.parts]
    margin = int(0.12 * max(H, W)) + 4
    canvas = make_background(r_bg, H + 2 * margin, W + 2 * margin, unit)
    amp = 0.0 if still else 0.7 * margin
    bg = _Background(canvas, r_bg.uniform(0, 1, 2) * amp, r_bg.uniform(40, 100, 2),
                     r_bg.uniform(0, 2 * np.pi, 2), (0.0 if still else uniform(r_bg, 0, .03),
                                                     uniform(r_bg, 30, 80), uniform(r_bg, 0, 6.3)))
    occ = _make_occluder(r_occ, H, W, pose, T, unit)
    t0 = uniform(r_time, 0, 200) if still else 0.0
    return Scene(inst, patches, pose, bg, occ if (occluder and T > 1) else None,
                 sample_light(r_light, still), t0, int(r_noise.integers(2**63)))


def _layer_matrices(sc: Scene, t: float, H: int, W: int) -> list[np.ndarray]:
    """Patch -> image matrices ``[background, part 1.., ]`` at time ``t`` (occluder excluded)."""
    O = _object_matrix(sc.pose, t)
    parts = part_matrices(sc.inst.parts, t)
    return [_bg_matrix(sc.bg, t, H, W)] + [O @ P @ L for P, (_, L) in zip(parts, sc.patches)]


def render_scene(sc: Scene, T: int, H: int, W: int, want_motion: bool):
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
            placed = stamp(img, patch, mats[j + 1])
            if placed is None:
                continue
            region, sel = placed
            lab[region][sel] = sc.inst.parts[j].label if j < n_parts else 0
            layer[region][sel] = j + 1
        if sc.occ is not None:
            occm[i] = layer == n_parts + 1
        frames[i] = apply_light(img, sc.light, t, X, Y, noise_rng)
        if want_motion and i + 1 < T:
            nxt = _layer_matrices(sc, t + 1, H, W)
            if sc.occ is not None:
                nxt.append(_occ_matrix(sc.occ, _occ_pos(sc.occ, i) + sc.occ.v))
            D = np.stack([b @ np.linalg.inv(a) for a, b in zip(mats, nxt)])[:, :2].astype(np.float32)
            A = D[layer]  # [H,W,2,3]
            motion[i, ..., 0] = A[..., 0, 0] * X + A[..., 0, 1] * Y + A[..., 0, 2] - X
            motion[i, ..., 1] = A[..., 1, 0] * X + A[..., 1, 1] * Y + A[..., 1, 2] - Y
    return frames, labels, motion, occm
