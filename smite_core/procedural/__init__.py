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

The package is organised by layer; a layer imports only the layers below it:

1. :mod:`.geometry`: affine matrices, motion time functions, shape outlines, drawing primitives;
2. :mod:`.texture`: colours, value noise, textures (functions of a part's local coordinates);
3. :mod:`.parts`: a part (shape + texture + articulation), its RGBA patch, placing patches;
4. :mod:`.categories`: the object categories and their random instances;
5. :mod:`.scene`: pose, background, occluder, light; a clip's frames, labels and motion;
6. :mod:`.generate`: the public entry points, re-exported here.

The lower layers' public names (e.g. ``geometry.ellipse``, ``parts.Part``,
``texture.random_texture``, ``scene.make_background``) are the building blocks other generators
(``smite_core.tools.pretrain``) use.
"""

from . import categories, generate, geometry, parts, scene, texture
from .categories import CATEGORIES, CATEGORY_PARTS, HELDOUT_CATEGORIES, TRAIN_CATEGORIES, category_names
from .generate import ProceduralVideo, generic_image, make_references, make_video, write_example

__all__ = [
    "CATEGORIES", "CATEGORY_PARTS", "HELDOUT_CATEGORIES", "TRAIN_CATEGORIES", "ProceduralVideo", "category_names",
    "generic_image", "make_references", "make_video", "write_example",
    "categories", "generate", "geometry", "parts", "scene", "texture",
]
