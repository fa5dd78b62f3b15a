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

from smite_core.batch import exit_with_parent
from smite_core.errors import InputError

SUITE_SEED = 7000  # references use SUITE_SEED + 100 * i, videos SUITE_SEED + 100 * i + 50 (< pretrain.SEED_BASE)
METHODS = ("per-frame", "full")
SUITE_FRAMES = 24  # frames per suite video
SUITE_SHOTS = (1, 3)  # reference counts the suite learns from


@dataclass
class SuiteCase:
    """One (category, video index, shots) case: reference stills and a held-out video."""

    category: str
    index: int
    shots: int
    references: object  # references.ReferenceSet
    video: object  # procedural.ProceduralVideo


def make_case(category: str, shots: int, index: int = 0, frames: int = SUITE_FRAMES, size: int = 256) -> SuiteCase:
    """The suite's case ``index`` of ``category`` with ``shots`` references (deterministic)."""
    from smite_core.io.references import reference_set_from_label_maps
    from smite_core.procedural import make_references, make_video

    seed = SUITE_SEED + 100 * index
    images, labels, names = make_references(category, seed, shots, (size, size))
    refs = reference_set_from_label_maps(torch.from_numpy(np.stack(images)),
                                         torch.from_numpy(np.stack(labels).astype(np.int64)), names)
    video = make_video(category, seed + 50, num_frames=frames, size=(size, size))
    return SuiteCase(category, index, shots, refs, video)


def score(video, labels: np.ndarray) -> dict:
    """Metrics of predicted ``labels [T,H,W]`` on a procedural video (flicker along its true motion)."""
    from smite_core.evaluation.metrics import evaluate_sequence

    ids = [f"{t:05d}" for t in range(len(labels))]
    return evaluate_sequence({i: labels[t] for t, i in enumerate(ids)}, {i: video.labels[t] for t, i in enumerate(ids)},
                             class_names=list(video.names),
                             motion={ids[t]: video.motion[t] for t in range(len(video.motion))})


def run_case(backbone, case: SuiteCase, methods=METHODS, learn_overrides: dict | None = None, seed: int = 0,
             progress: Callable[[int, int], None] | None = None, edge_aware: bool = True) -> dict:
    """Learn on the case's references and segment its video with each method: ``{method: metrics}``
    (masks upsampled along the frames' edges unless ``edge_aware`` is False)."""
    from smite_core.method.learn import LearnConfig, learn_embedding
    from smite_core.method.segment import SegmentConfig, segment_frames
    from smite_core.method.was import labels_from_was

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


def run_quality(backbone, shots=SUITE_SHOTS, categories=None, videos: int = 1, frames: int = SUITE_FRAMES,
                methods=METHODS, learn_overrides: dict | None = None, say: Callable[[str], None] = print,
                edge_aware: bool = True, workers: int = 1) -> QualityResult:
    """Run the suite; ``say`` gets one line per case; ``edge_aware`` as in :func:`run_case`.

    ``workers > 1`` (CPU backbones only) runs the cases in that many processes, each with
    ``torch.get_num_threads() // workers`` threads (at least 1): on a small CPU, one-thread processes
    side by side finish the suite about twice as fast as one process using every core. The result
    does not depend on the order in which cases finish. The workers are spawned processes: a script
    that calls this with ``workers > 1`` needs the ``if __name__ == "__main__":`` guard.
    """
    from smite_core.procedural import CATEGORIES

    categories = list(categories or CATEGORIES)
    for c in categories:
        if c not in CATEGORIES:
            raise InputError(f"--categories: unknown category {c!r}; known: {', '.join(CATEGORIES)}")
    for s in shots:
        if not 1 <= int(s) <= 10:
            raise InputError(f"--shots: {s} is not between 1 and 10")
    if not isinstance(workers, int) or workers < 1:
        raise InputError(f"--workers: must be an integer >= 1 (got {workers})")
    if workers > 1 and backbone.device.type != "cpu":
        raise InputError(f"--workers: parallel cases are for CPU backbones (this one is on {backbone.device})")
    cases = [(int(s), c, i) for s in shots for c in categories for i in range(videos)]
    started = time.perf_counter()
    outputs: dict[tuple, dict] = {}

    def report(case, out):
        outputs[case] = out
        s, c, i = case
        say(f"{s}-shot {c:>7s} video {i}: " + "  ".join(f"{m} mIoU {out[m]['mIoU']:.3f}" for m in methods)
            + f"  (learn {out['learn_s']:.0f} s)")

    task = {"frames": frames, "methods": tuple(methods), "learn_overrides": learn_overrides, "edge_aware": edge_aware}
    if workers == 1 or len(cases) == 1:
        for case in cases:
            report(case, _run_suite_case(backbone, case, task))
    else:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor, as_completed

        threads = max(1, torch.get_num_threads() // workers)
        longest_first = sorted(cases, key=lambda case: -case[0])  # more shots, longer learning
        with ProcessPoolExecutor(max_workers=min(workers, len(cases)), mp_context=multiprocessing.get_context("spawn"),
                                 initializer=_init_worker, initargs=(backbone, threads)) as pool:
            futures = {pool.submit(_run_in_worker, case, task): case for case in longest_first}
            try:
                for future in as_completed(futures):
                    report(futures[future], future.result())
            except BaseException:  # a failed case (or Ctrl-C): the cases not yet started are dropped
                pool.shutdown(wait=True, cancel_futures=True)
                raise

    result = QualityResult()
    for s, c in dict.fromkeys((s, c) for s, c, _ in cases):
        runs = [outputs[(s, c, i)] for i in range(videos)]
        for m in methods:
            result.rows[(s, m, c)] = {k: float(np.mean([r[m][k] for r in runs if r[m][k] is not None] or [np.nan]))
                                      for k in ("mIoU", "J", "F", "flicker")}
    result.seconds = time.perf_counter() - started
    return result


def _run_suite_case(backbone, case: tuple, task: dict) -> dict:
    """One suite case ``(shots, category, video index)`` -> :func:`run_case`'s output."""
    shots, category, index = case
    return run_case(backbone, make_case(category, shots, index, task["frames"]), task["methods"],
                    task["learn_overrides"], edge_aware=task["edge_aware"])


# The backbone of a worker process of run_quality's pool, set once by its initializer (pickled once per
# worker, not once per case); the main process never sets it.
_WORKER_BACKBONE = None


def _init_worker(backbone, threads: int) -> None:
    global _WORKER_BACKBONE
    exit_with_parent()  # a kill of smite bench ends this worker too: no orphan computes its case to the end
    torch.set_num_threads(threads)
    _WORKER_BACKBONE = backbone


def _run_in_worker(case: tuple, task: dict) -> dict:
    return _run_suite_case(_WORKER_BACKBONE, case, task)


def format_table(result: QualityResult, heldout=None) -> str:
    """A plain-text table: rows shots x method (means), then one line per category."""
    from smite_core.procedural import HELDOUT_CATEGORIES

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
