"""Layer 6 of the procedural generator (the top one): the public entry points.

Input checks and seeding (every result is a pure function of its arguments), :func:`make_video`
(:class:`ProceduralVideo`), :func:`make_references`, :func:`generic_image` and
:func:`write_example`. Re-exported by the package (:mod:`smite_core.procedural`). Uses layers 1-5.
"""

from __future__ import annotations

import json
import os
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import InputError
from ..io.fileio import atomic_dir
from .categories import category_names, check_category
from .geometry import rotate, translate, uniform
from .parts import random_shape_part, render_part, stamp
from .scene import apply_light, make_background, make_scene, render_scene, sample_light

# ----------------------------------------------------------------------------------------------
# constants and results

_STREAM_VIDEO, _STREAM_REF, _STREAM_GENERIC = 1, 2, 3
_MIN_SIDE = 32


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


# ----------------------------------------------------------------------------------------------
# input checks and seeding


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
# entry points


def make_video(category: str, seed: int, num_frames: int = 24, size: tuple[int, int] = (256, 256),
               occluder: bool = True) -> ProceduralVideo:
    """Render a ``num_frames`` video of one instance of ``category`` at ``size = (H, W)``.

    The object translates, rotates, scales, articulates (swinging limbs/tail, spinning wheels) and
    is swept over by a moving occluder for some frames (``occluder=False`` renders the identical
    video without it). The background pans and the lighting drifts.
    """
    category = check_category(category)
    seed = _check_seed(seed)
    H, W = _check_size(size)
    T = _check_count(num_frames, "num_frames", 1)
    scene = make_scene(_seed_seq(seed, category, _STREAM_VIDEO), category, H, W, T, False, occluder)
    frames, labels, motion, occm = render_scene(scene, T, H, W, True)
    return ProceduralVideo(frames, labels, motion, occm, category_names(category), category, seed)


def make_references(category: str, seed: int, count: int, size: tuple[int, int] = (256, 256)
                    ) -> tuple[list[np.ndarray], list[np.ndarray], list[str]]:
    """``count`` annotated stills of other instances of ``category`` (never the video's instance).

    Returns images float32 ``[H,W,3]`` 0..1, labels uint8 ``[H,W]`` and the K segment names.
    Each reference has its own instance, pose, articulation, background and lighting, no occluder.
    """
    category = check_category(category)
    seed = _check_seed(seed)
    H, W = _check_size(size)
    count = _check_count(count, "count", 0)
    images, labels = [], []
    for i in range(count):
        scene = make_scene(_seed_seq(seed, category, _STREAM_REF, i), category, H, W, 1, True, False)
        frames, labs, _, _ = render_scene(scene, 1, H, W, False)
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
    img = make_background(rng, H + 2 * margin, W + 2 * margin, unit)[margin:-margin, margin:-margin]
    img = np.ascontiguousarray(img)
    m = min(H, W)
    for _ in range(int(rng.integers(2, 7))):  # composite objects: touching shapes
        cx, cy, ang = uniform(rng, 0, W), uniform(rng, 0, H), uniform(rng, 0, 360)
        r0 = uniform(rng, .08, .22) * m
        for k in range(int(rng.integers(1, 5))):
            r = r0 * (1.0 if k == 0 else uniform(rng, .3, .8))
            off = np.zeros(2) if k == 0 else rng.uniform(-1, 1, 2) * r0
            patch, L = render_part(random_shape_part(rng, r, unit), 1.0)
            stamp(img, patch, translate(cx, cy) @ rotate(ang) @ translate(*off) @ rotate(uniform(rng, 0, 360)) @ L)
    for _ in range(int(rng.integers(1, 6))):
        patch, L = render_part(random_shape_part(rng, uniform(rng, .04, .15) * m, unit), 1.0)
        stamp(img, patch, translate(uniform(rng, 0, W), uniform(rng, 0, H)) @ L, uniform(rng, .6, 1))
    X, Y = np.meshgrid(np.arange(W, dtype=np.float32), np.arange(H, dtype=np.float32))
    return apply_light(img, sample_light(rng, True), 0.0, X, Y, rng)


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
    from ..io.label_png import save_label_png

    category = check_category(category)
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
