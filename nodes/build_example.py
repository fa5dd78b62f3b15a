"""Rebuild the bundled example embedding ``example_inputs/smite_example_car.safetensors`` and the example clip
``example_inputs/smite_example_car.mp4`` (template 5's Load Video).

Run from the pack folder whenever the embedded backbone changes (the tests say so)::

    python -m nodes.build_example

It is learned exactly as example workflow 1 learns it (same procedural reference, seed, steps and
size), on the CPU, deterministically, so workflow 2 can load it on a fresh ComfyUI.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np
import torch

from smite_core import procedural
from smite_core.io.references import reference_set_from_label_maps
from smite_core.method.learn import LearnConfig, learn_embedding
from smite_core.model.backbone import load_backbone

from .examples import (
    EXAMPLE_CATEGORY,
    EXAMPLE_EMBEDDING,
    EXAMPLE_LEARN_SIZE,
    EXAMPLE_SIZE,
    EXAMPLE_STEPS,
    EXAMPLE_VARIANT,
)
from .host import EXAMPLE_DIR

__all__ = ["EXAMPLE_CLIP", "EXAMPLE_EMBEDDING", "build_example_clip", "build_example_embedding"]

EXAMPLE_CLIP = "smite_example_car.mp4"
CLIP_FRAMES, CLIP_FPS = 24, 12  # the clip: the example video of workflow 1, longer, at its frame rate


def build_example_clip(path) -> str:
    """Write the example clip: the procedural car video of the examples as H.264."""
    from smite_core.io.video_io import open_video_writer

    video = procedural.make_video(EXAMPLE_CATEGORY, EXAMPLE_VARIANT, CLIP_FRAMES, (EXAMPLE_SIZE, EXAMPLE_SIZE))
    with open_video_writer(path, fps=CLIP_FPS, overwrite=True) as writer:
        writer.write(video.frames)
    return str(path)


def build_example_embedding(path, steps: int = EXAMPLE_STEPS, overwrite: bool = True):
    """Learn the bundled example embedding on the embedded backbone (CPU, deterministic) and save it."""

    images, labels, names = procedural.make_references(EXAMPLE_CATEGORY, EXAMPLE_VARIANT, 1,
                                                       (EXAMPLE_SIZE, EXAMPLE_SIZE))
    references = reference_set_from_label_maps(torch.from_numpy(images[0])[None],
                                               torch.from_numpy(labels[0].astype(np.int64))[None], names)
    backbone = load_backbone("tiny", device="cpu", dtype="fp32")
    config = LearnConfig.for_backbone(backbone, steps=steps, seed=0, size=EXAMPLE_LEARN_SIZE)
    embedding = learn_embedding(backbone, references, config)
    return embedding.save(path, overwrite=overwrite)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Rebuild the pack's example embedding on the embedded backbone.")
    parser.add_argument("--out", default=os.path.join(EXAMPLE_DIR, EXAMPLE_EMBEDDING))
    parser.add_argument("--steps", type=int, default=EXAMPLE_STEPS)
    args = parser.parse_args(argv)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    path = build_example_embedding(args.out, steps=args.steps)
    clip = build_example_clip(os.path.join(os.path.dirname(os.path.abspath(args.out)), EXAMPLE_CLIP))
    sys.stdout.write(f"wrote {path} and {clip}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
