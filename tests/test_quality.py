"""Quality floors of the shipped tiny backbone on held-out procedural videos (these can fail).

The floors sit a little below what was measured (README "Quality"); a regression in the backbone,
the learning defaults or the WAS maps shows up here.
"""

import os

import pytest
import torch

from smite_core import quality as Q
from smite_core.backbone import build_tiny_components

pytestmark = pytest.mark.skipif(not build_tiny_components().extra["trained"],
                                reason="the trained tiny weights are not shipped in this checkout")

# Measured with the shipped weights; the floors keep a margin for platform differences.
FAST_FLOOR = 0.52  # measured 0.571 (car 0.632, bird 0.510); 0.487 with bilinear upsampling
SUITE_FLOOR_1SHOT = 0.68  # measured 0.701 (the first video of each category; README, Quality)
SUITE_FLOOR_3SHOT = 0.69  # measured 0.713 (300 learning steps per reference)


def test_suite_cases_are_deterministic_and_disjoint_from_pretraining():
    from smite_core.pretrain import SEED_BASE

    a, b = Q.make_case("fish", 2, 0, frames=3, size=64), Q.make_case("fish", 2, 0, frames=3, size=64)
    assert torch.equal(a.references.images[0], b.references.images[0])
    assert (a.video.frames == b.video.frames).all()
    assert Q.SUITE_SEED + 100 * 50 + 50 < SEED_BASE


def test_one_shot_floor_on_a_heldout_video(tiny_backbone):
    """1-shot, per-frame, a short video of a training category and of the held-out one."""
    scores = []
    for category in ("car", "bird"):
        case = Q.make_case(category, 1, 0, frames=FAST_FRAMES)
        out = Q.run_case(tiny_backbone, case, methods=("per-frame",), learn_overrides={"steps": FAST_STEPS})
        scores.append(out["per-frame"]["mIoU"])
    assert sum(scores) / len(scores) >= FAST_FLOOR, scores


@pytest.mark.slow
def test_suite_floors(tiny_backbone):
    """The whole suite (all categories, 1 and 3 shots, full method) stays above its floors."""
    workers = 2 if (os.cpu_count() or 1) >= 2 else 1  # one-thread processes side by side: about half the time
    result = Q.run_quality(tiny_backbone, shots=(1, 3), methods=("full",), say=print, workers=workers)
    assert result.mean(1, "full")["mIoU"] >= SUITE_FLOOR_1SHOT
    assert result.mean(3, "full")["mIoU"] >= SUITE_FLOOR_3SHOT


FAST_FRAMES = 6
FAST_STEPS = 60
