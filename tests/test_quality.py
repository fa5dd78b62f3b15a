"""Quality floors of the shipped tiny backbone on held-out procedural videos (these can fail).

The floors sit a little below what was measured (docs/quality.md); a regression in the backbone,
the learning defaults, the WAS maps or the temporal stages shows up here. The whole suite (1 and 3
shots, both methods, two videos per category) is a benchmark command, ``smite bench --quality``,
whose numbers are in docs/quality.md; CI runs the 1-shot full method on the first video of each
category (about a third of the suite's time).
"""

import os

import pytest
import torch

from smite_core.model.backbone import build_tiny_components
from smite_core.procedural import CATEGORIES
from smite_core.tools import quality as Q

pytestmark = pytest.mark.skipif(not build_tiny_components().extra["trained"],
                                reason="the trained tiny weights are not shipped in this checkout")

# Measured with the shipped weights; the floors keep a margin for platform differences.
FAST_FLOOR = 0.50  # measured 0.537 (car 0.585, bird 0.489) since 0.2 (key-index WAS); 0.571 with 0.1's WAS
SUITE_FLOOR_1SHOT = 0.68  # measured 0.701 (full method, the first video of each category; docs/quality.md)


def test_suite_cases_are_deterministic_and_disjoint_from_pretraining():
    from smite_core.tools.pretrain import SEED_BASE

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
def test_one_shot_suite_floor(tiny_backbone):
    """1 shot, full method, all six categories (the held-out one included): the mean stays above its floor,
    and no category collapses (a broken stage drops the mean to about 0.3, a broken category below 0.3)."""
    workers = 2 if (os.cpu_count() or 1) >= 2 else 1  # one-thread processes side by side: about half the time
    result = Q.run_quality(tiny_backbone, shots=(1,), methods=("full",), say=print, workers=workers)
    assert len(result.rows) == len(CATEGORIES)
    assert result.mean(1, "full")["mIoU"] >= SUITE_FLOOR_1SHOT
    assert min(row["mIoU"] for row in result.rows.values()) >= CATEGORY_FLOOR


FAST_FRAMES = 6
FAST_STEPS = 60
CATEGORY_FLOOR = 0.40  # the weakest category measured 0.482 (flower) over both videos
