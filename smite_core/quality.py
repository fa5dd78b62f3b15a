"""``smite bench --quality``: the procedural quality suite (what the pipeline achieves, measured).

For every category (the held-out ``procedural.HELDOUT_CATEGORIES`` included) and every shot count:
references from ``procedural.make_references`` and a held-out video from ``procedural.make_video``
(other seeds: never an instance of the references, never a pre-training seed, see
``pretrain.SEED_BASE``), learning with the backbone's recommended settings, then segmentation
per frame (``SegmentConfig(inflate=False)``, the paper's Baseline-I) and with the full method
(``SegmentConfig()`` defaults), scored by ``metrics.evaluate_sequence`` against the exact labels,
flicker measured along the true motion.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from .errors import InputError

SUITE_SEED = 7000  # references use SUITE_SEED + 100 * i, videos SUITE_SEED + 100 * i + 50 (< pretrain.SEED_BASE)
METHODS = ("per-frame", "full")


@dataclass
class SuiteCase:
    """One (category, video index, shots) case: reference stills and a held-out video."""

    category: str
    index: int
    shots: int
    references: object  # references.ReferenceSet
    video: object  # procedural.ProceduralVideo


def make_case(category: str, shots: int, index: int = 0, frames: int = 24, size: int = 256) -> SuiteCase:
    """The suite's case ``index`` of ``category`` with ``shots`` references (deterministic)."""
    from .procedural import make_references, make_video
    from .references import reference_set_from_label_maps

    seed = SUITE_SEED + 100 * index
    images, labels, names = make_references(category, seed, shots, (size, size))
    refs = reference_set_from_label_maps(torch.from_numpy(np.stack(images)),
                                         torch.from_numpy(np.stack(labels).astype(np.int64)), names)
    video = make_video(category, seed + 50, num_frames=frames, size=(size, size))
    return SuiteCase(category, index, shots, refs, video)


def score(video, labels: np.ndarray) -> dict:
    """Metrics of predicted ``labels [T,H,W]`` on a procedural video (flicker along its true motion)."""
    from .metrics import evaluate_sequence

    ids = [f"{t:05d}" for t in range(len(labels))]
    return evaluate_sequence({i: labels[t] for t, i in enumerate(ids)}, {i: video.labels[t] for t, i in enumerate(ids)},
                             class_names=list(video.names),
                             motion={ids[t]: video.motion[t] for t in range(len(video.motion))})


def run_case(backbone, case: SuiteCase, methods=METHODS, learn_overrides: dict | None = None, seed: int = 0,
             progress: Callable[[int, int], None] | None = None, edge_aware: bool = True) -> dict:
    """Learn on the case's references and segment its video with each method: ``{method: metrics}``
    (masks upsampled along the frames' edges unless ``edge_aware`` is False)."""
    from .learn import LearnConfig, learn_embedding
    from .segment import SegmentConfig, segment_frames
    from .was import labels_from_was

    config = LearnConfig.for_backbone(backbone, seed=seed, **(learn_overrides or {}))
    started = time.perf_counter()
    embedding = learn_embedding(backbone, case.references, config, progress=progress)
    out = {"learn_s": time.perf_counter() - started}
    frames = torch.from_numpy(case.video.frames)
    size = tuple(frames.shape[1:3])
    for method in methods:
        seg = SegmentConfig(inflate=False, seed=seed) if method == "per-frame" else SegmentConfig(seed=seed)
        started = time.perf_counter()
        was = segment_frames(backbone, embedding, frames, seg)
        labels = labels_from_was(was, size, frames if edge_aware else None).numpy()
        out[method] = score(case.video, labels)
        out[method]["segment_s"] = time.perf_counter() - started
    return out


@dataclass
class QualityResult:
    """Per (shots, method, category) metrics, averaged over the suite's videos."""

    rows: dict = field(default_factory=dict)  # (shots, method, category) -> {"mIoU", "J", "F", "flicker"}
    seconds: float = 0.0

    def mean(self, shots: int, method: str, categories=None) -> dict:
        cats = [c for (s, m, c) in self.rows if s == shots and m == method and (categories is None or c in categories)]
        keys = ("mIoU", "J", "F", "flicker")
        return {k: float(np.mean([self.rows[(shots, method, c)][k] for c in cats])) for k in keys} if cats else {}


def run_quality(backbone, shots=(1, 3), categories=None, videos: int = 1, frames: int = 24, methods=METHODS,
                learn_overrides: dict | None = None, say: Callable[[str], None] = print,
                edge_aware: bool = True) -> QualityResult:
    """Run the suite; ``say`` gets one line per case; ``edge_aware`` as in :func:`run_case`."""
    from .procedural import CATEGORIES

    categories = list(categories or CATEGORIES)
    for c in categories:
        if c not in CATEGORIES:
            raise InputError(f"--categories: unknown category {c!r}; known: {', '.join(CATEGORIES)}")
    for s in shots:
        if not 1 <= int(s) <= 10:
            raise InputError(f"--shots: {s} is not between 1 and 10")
    result = QualityResult()
    started = time.perf_counter()
    for s in shots:
        for c in categories:
            acc: dict[str, list] = {m: [] for m in methods}
            for i in range(videos):
                out = run_case(backbone, make_case(c, s, i, frames), methods, learn_overrides, edge_aware=edge_aware)
                for m in methods:
                    acc[m].append(out[m])
                say(f"{s}-shot {c:>7s} video {i}: " + "  ".join(
                    f"{m} mIoU {out[m]['mIoU']:.3f}" for m in methods) + f"  (learn {out['learn_s']:.0f} s)")
            for m in methods:
                result.rows[(s, m, c)] = {k: float(np.mean([a[k] for a in acc[m] if a[k] is not None] or [np.nan]))
                                          for k in ("mIoU", "J", "F", "flicker")}
    result.seconds = time.perf_counter() - started
    return result


def format_table(result: QualityResult, heldout=None) -> str:
    """A plain-text table: rows shots x method (means), then one line per category."""
    from .procedural import HELDOUT_CATEGORIES

    heldout = set(heldout or HELDOUT_CATEGORIES)
    lines = [f"{'shots':>5s}  {'method':<10s} {'mIoU':>6s} {'J':>6s} {'F':>6s} {'flicker':>8s}"]
    keys = sorted({(s, m) for (s, m, _) in result.rows}, key=lambda k: (k[0], METHODS.index(k[1])))
    for s, m in keys:
        v = result.mean(s, m)
        lines.append(f"{s:>5d}  {m:<10s} {v['mIoU']:6.3f} {v['J']:6.3f} {v['F']:6.3f} {v['flicker']:8.4f}")
    lines.append("")
    cats = list(dict.fromkeys(c for (_, _, c) in result.rows))
    lines.append("mIoU per category: " + "  ".join(f"{s}-shot {m}" for s, m in keys))
    for c in cats:
        tag = f"{c} (held out)" if c in heldout else c
        lines.append(f"  {tag:<17s} " + "  ".join(f"{result.rows[(s, m, c)]['mIoU']:.3f}".rjust(len(f'{s}-shot {m}'))
                                                 for s, m in keys))
    return "\n".join(lines)


def result_json(result: QualityResult) -> dict:
    """JSON-ready summary: means per (shots, method) and per-category rows."""
    return {
        "seconds": round(result.seconds, 1),
        "mean": {f"{s}-shot/{m}": result.mean(s, m) for s, m in sorted({(s, m) for (s, m, _) in result.rows})},
        "rows": [{"shots": s, "method": m, "category": c, **v} for (s, m, c), v in result.rows.items()],
    }
