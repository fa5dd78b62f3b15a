"""SMITE_LoadExample: the procedural example (reference, its label map, a video, a flickery mask video).

Everything is rendered in memory from ``smite_core.procedural`` (deterministic in category and
variant), so the example workflows run on a fresh ComfyUI with nothing to download or copy.

The bundled example embedding for workflow 2 is made by ``nodes/build_example.py``.
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from smite_core import procedural
from smite_core.errors import InputError

from .labelmaps import ids_to_image

log = logging.getLogger(__name__)

EXAMPLE_EMBEDDING = "smite_example_car.safetensors"
# The example embedding is learned exactly as workflow 1 learns it (same reference, seed, steps and size).
EXAMPLE_CATEGORY, EXAMPLE_VARIANT, EXAMPLE_SIZE = "car", 0, 256
EXAMPLE_STEPS, EXAMPLE_LEARN_SIZE = 100, 128


def flicker(labels: np.ndarray, variant: int) -> np.ndarray:
    """A deliberately flickery mask video of the object (``labels > 0``): per-frame random growth or
    shrinkage, holes and false blobs, as a per-frame segmenter might produce. float32 ``[T,H,W]``."""
    import cv2

    rng = np.random.default_rng(np.random.SeedSequence([int(variant), 0x5F11C]))
    t, h, w = labels.shape
    unit = max(1, round(min(h, w) / 128))
    out = np.zeros((t, h, w), np.float32)
    for i in range(t):
        mask = (labels[i] > 0).astype(np.uint8)
        radius = int(rng.integers(-2, 3)) * unit
        if radius:
            kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * abs(radius) + 1, 2 * abs(radius) + 1))
            mask = cv2.dilate(mask, kernel) if radius > 0 else cv2.erode(mask, kernel)
        if rng.random() < 0.35:  # a hole
            ys, xs = np.nonzero(mask)
            if len(ys):
                j = int(rng.integers(len(ys)))
                cv2.circle(mask, (int(xs[j]), int(ys[j])), int(rng.integers(4, 10)) * unit, 0, -1)
        if rng.random() < 0.35:  # a false blob
            cv2.circle(mask, (int(rng.integers(w)), int(rng.integers(h))), int(rng.integers(4, 10)) * unit, 1, -1)
        out[i] = mask
    return out


class LoadExample:
    """The procedural example: a reference image with its parts, a video of another instance, a mask video."""

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "category": (list(procedural.CATEGORIES), {
                    "default": EXAMPLE_CATEGORY,
                    "tooltip": "Object category (its parts: " + "; ".join(
                        f"{c}: {', '.join(p)}" for c, p in procedural.CATEGORY_PARTS.items()) + ")."}),
                "variant": ("INT", {"default": EXAMPLE_VARIANT, "min": 0, "max": 2**31 - 1,
                                    "tooltip": "Which procedural instance, background and motion (deterministic)."}),
                "frames": ("INT", {"default": 24, "min": 1, "max": 240,
                                   "tooltip": "Number of video frames."}),
                "size": ("INT", {"default": EXAMPLE_SIZE, "min": 64, "max": 1024, "step": 8,
                                 "tooltip": "Side of the square reference and video in pixels."}),
            },
        }

    RETURN_TYPES = ("IMAGE", "IMAGE", "STRING", "IMAGE", "MASK")
    RETURN_NAMES = ("reference", "reference_labels", "segment_names", "video", "flickery_masks")
    OUTPUT_TOOLTIPS = (
        "One reference image [1,H,W,3] (another instance than the video's).",
        "Its label map in SMITE's palette colours, for SMITE Load References.",
        "The segment names, comma separated, in id order.",
        "The video [T,H,W,3].",
        "A flickery mask video of the object [T,H,W], to try TrackVote's de-flickering on.",
    )
    FUNCTION = "make"
    CATEGORY = "SMITE/examples"
    DESCRIPTION = "Renders SMITE's procedural example in memory (nothing to download or copy)."

    def make(self, category=EXAMPLE_CATEGORY, variant=EXAMPLE_VARIANT, frames=24, size=EXAMPLE_SIZE):
        if category not in procedural.CATEGORIES:
            raise InputError(f"category: {category!r} is not one of {', '.join(procedural.CATEGORIES)}")
        images, labels, names = procedural.make_references(category, int(variant), 1, (int(size), int(size)))
        video = procedural.make_video(category, int(variant), int(frames), (int(size), int(size)))
        reference = torch.from_numpy(np.ascontiguousarray(images[0]))[None]
        reference_labels = ids_to_image(torch.from_numpy(labels[0].astype(np.int64))[None])
        return (reference, reference_labels, ", ".join(names[1:]), torch.from_numpy(video.frames),
                torch.from_numpy(flicker(video.labels, int(variant))))


NODE_CLASS_MAPPINGS = {"SMITE_LoadExample": LoadExample}
NODE_DISPLAY_NAME_MAPPINGS = {"SMITE_LoadExample": "SMITE Load Example"}

