"""Segmentation metrics: DAVIS J / F, per-class IoU and mIoU, temporal flicker.

Label maps are integer ``[H,W]`` arrays with 0 = background and classes ``0..K-1``. Frames are
identified by string ids (file stems). Every score is a plain float (``None`` when undefined), so
the dicts returned here can be written with :func:`write_metrics_json` as they are.

Definitions (docs/method.md section 10, defects D10/D11):

- **J** (DAVIS region similarity): per object (each label > 0 found in the sequence's ground
  truth) per frame, ``|P & G| / |P | G|``, 1 when the union is empty; averaged over all
  (object, frame) cells, i.e. mean over objects then frames.
- **F** (DAVIS boundary measure): boundary maps of ``P`` and ``G``; a boundary pixel matches when
  the other boundary lies within a disk of radius ``ceil(bound_th * diagonal)`` (6 px at 512x512);
  F = 2PR/(P+R) with the DAVIS conventions for empty boundaries; averaged like J.
- **mIoU**: per class (background included), IoU averaged over the frames where the class is in
  the ground truth; mean over the classes present in the ground truth (absent classes are
  excluded, D10). ``mIoU_all_classes`` is the reference code's biased variant in which a class
  absent from every ground-truth frame counts as 0. MAE over label indices is not computed (D11).
- **flicker**: over pairs of consecutive frames, the fraction of points whose ground-truth label
  stays the same but whose predicted label changes (optionally followed along the true motion).
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path
from typing import Any, Mapping

import cv2
import numpy as np

from ..errors import InputError
from ..io.fileio import atomic_path
from ..io.references import natural_key

__all__ = [
    "region_jaccard",
    "boundary_f",
    "confusion_matrix",
    "evaluate_sequence",
    "evaluate_folders",
    "write_metrics_json",
]

DEFAULT_BOUND_TH = 0.008


# --------------------------------------------------------------------------------------------
# Array level
# --------------------------------------------------------------------------------------------


def _check_pair(pred: np.ndarray, gt: np.ndarray, what: str) -> tuple[np.ndarray, np.ndarray]:
    pred = np.asarray(pred)
    gt = np.asarray(gt)
    if pred.ndim != 2 or gt.ndim != 2 or pred.shape != gt.shape:
        raise InputError(
            f"{what}: prediction and ground truth must be 2-D arrays of one shape, "
            f"got {pred.shape} and {gt.shape}"
        )
    return pred, gt


def region_jaccard(pred: np.ndarray, gt: np.ndarray) -> float:
    """DAVIS J of two masks ``[H,W]`` (any dtype, nonzero = inside): |P&G|/|P|G| in [0,1].

    An empty union (both masks empty) counts as 1.
    """
    pred, gt = _check_pair(pred, gt, "region_jaccard")
    pred = pred.astype(bool)
    gt = gt.astype(bool)
    union = int(np.count_nonzero(pred | gt))
    if union == 0:
        return 1.0
    return float(np.count_nonzero(pred & gt) / union)


def _boundary_map(mask: np.ndarray) -> np.ndarray:
    """One-pixel boundary of a bool mask ``[H,W]`` -> bool ``[H,W]``.

    A pixel is on the boundary when it differs from its right, lower or lower-right neighbour
    (the boundary sits half a pixel towards the origin), with the image extended by edge
    replication, so the last row/column only compare along the image border and the bottom-right
    pixel is never a boundary. This is the DAVIS ``seg2bmap`` definition at full resolution.
    """
    padded = np.pad(mask, ((0, 1), (0, 1)), mode="edge")
    right = padded[:-1, 1:]
    down = padded[1:, :-1]
    diag = padded[1:, 1:]
    return (mask != right) | (mask != down) | (mask != diag)


def _disk(radius: int) -> np.ndarray:
    """Structuring element ``[2r+1,2r+1]`` uint8: 1 where x^2 + y^2 <= r^2."""
    r = np.arange(-radius, radius + 1)
    return ((r[:, None] ** 2 + r[None, :] ** 2) <= radius * radius).astype(np.uint8)


def _bound_pixels(shape: tuple[int, int], bound_th: float) -> int:
    """Tolerance radius in pixels: ``bound_th`` itself if >= 1, else ceil(bound_th * diagonal)."""
    if bound_th >= 1:
        return int(round(bound_th))
    return int(math.ceil(bound_th * math.hypot(shape[0], shape[1])))


def boundary_f(pred: np.ndarray, gt: np.ndarray, bound_th: float = DEFAULT_BOUND_TH) -> float:
    """DAVIS boundary F-measure of two masks ``[H,W]`` (nonzero = inside), in [0,1].

    ``bound_th`` < 1 is a fraction of the image diagonal (radius = ceil(bound_th * diag));
    ``bound_th`` >= 1 is a radius in pixels. Empty boundaries: none in both -> 1; only one of
    them empty -> precision/recall (1, 0) or (0, 1) -> F = 0.
    """
    pred, gt = _check_pair(pred, gt, "boundary_f")
    if bound_th <= 0:
        raise InputError(f"boundary_f: bound_th must be > 0, got {bound_th}")
    pred_b = _boundary_map(pred.astype(bool))
    gt_b = _boundary_map(gt.astype(bool))
    n_pred = int(np.count_nonzero(pred_b))
    n_gt = int(np.count_nonzero(gt_b))
    if n_pred == 0 and n_gt == 0:
        return 1.0
    if n_pred == 0 or n_gt == 0:
        return 0.0
    kernel = _disk(_bound_pixels(pred.shape, bound_th))
    pred_dil = cv2.dilate(pred_b.astype(np.uint8), kernel) > 0
    gt_dil = cv2.dilate(gt_b.astype(np.uint8), kernel) > 0
    precision = np.count_nonzero(pred_b & gt_dil) / n_pred
    recall = np.count_nonzero(gt_b & pred_dil) / n_gt
    if precision + recall == 0:
        return 0.0
    return float(2 * precision * recall / (precision + recall))


def confusion_matrix(pred: np.ndarray, gt: np.ndarray, num_classes: int) -> np.ndarray:
    """Confusion matrix int64 ``[K,K]``: entry ``[g, p]`` counts pixels with GT ``g`` and pred ``p``.

    ``pred``, ``gt``: integer ``[H,W]`` with values in ``0..K-1`` (else InputError).
    """
    pred, gt = _check_pair(pred, gt, "confusion_matrix")
    k = int(num_classes)
    if k < 1:
        raise InputError(f"confusion_matrix: num_classes must be >= 1, got {num_classes}")
    for name, arr in (("prediction", pred), ("ground truth", gt)):
        if arr.size and (arr.min() < 0 or arr.max() >= k):
            raise InputError(
                f"confusion_matrix: {name} labels must lie in 0..{k - 1}, "
                f"found {int(arr.min())}..{int(arr.max())}"
            )
    idx = gt.astype(np.int64).ravel() * k + pred.astype(np.int64).ravel()
    return np.bincount(idx, minlength=k * k).astype(np.int64).reshape(k, k)


# --------------------------------------------------------------------------------------------
# Sequence level
# --------------------------------------------------------------------------------------------


def _frame_number(frame_id: str) -> tuple[str, int] | None:
    m = re.fullmatch(r"(.*?)(\d+)", frame_id)
    return (m.group(1), int(m.group(2))) if m else None


def _adjacent(a: str, b: str) -> bool:
    """Whether ``b`` is the frame right after ``a`` (ids sorted naturally, ``a`` before ``b``).

    Ids ending in a number (``00012``, ``frame_12``) are adjacent when the prefixes agree and the
    numbers differ by one; ids without a trailing number are adjacent when consecutive in order.
    """
    na, nb = _frame_number(a), _frame_number(b)
    if na is None or nb is None:
        return na is None and nb is None
    return na[0] == nb[0] and nb[1] == na[1] + 1


def _resize_nearest(labels: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of ``[h,w]`` to ``shape`` (pixel centres, like PIL NEAREST)."""
    h, w = labels.shape
    H, W = shape
    rows = np.minimum(((np.arange(H) + 0.5) * h / H).astype(np.int64), h - 1)
    cols = np.minimum(((np.arange(W) + 0.5) * w / W).astype(np.int64), w - 1)
    return labels[rows[:, None], cols[None, :]]


def _as_labels(arr: Any, what: str) -> np.ndarray:
    arr = np.asarray(arr)
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim != 2 or arr.size == 0:
        raise InputError(f"{what} must be a non-empty 2-D label map [H,W], got shape {arr.shape}")
    if arr.dtype == bool:
        return arr.astype(np.int64)
    if not np.issubdtype(arr.dtype, np.integer):
        raise InputError(f"{what} must hold integer labels, got dtype {arr.dtype}")
    if arr.min() < 0:
        raise InputError(f"{what} has negative label {int(arr.min())}")
    return arr.astype(np.int64, copy=False)


def _mean_or_none(values: np.ndarray) -> float | None:
    return float(np.mean(values)) if values.size else None


def _flicker_counts(
    pred_a: np.ndarray,
    pred_b: np.ndarray,
    gt_a: np.ndarray,
    gt_b: np.ndarray,
    motion: np.ndarray | None,
) -> tuple[int, int]:
    """(unstable, stable) counts: points with stable GT, and those of them whose pred changes."""
    if motion is None:
        stable = gt_a == gt_b
        changed = pred_a != pred_b
    else:
        h, w = gt_a.shape
        ys, xs = np.mgrid[0:h, 0:w]
        tx = np.floor(xs + motion[..., 0].astype(np.float64) + 0.5)
        ty = np.floor(ys + motion[..., 1].astype(np.float64) + 0.5)
        valid = np.isfinite(tx) & np.isfinite(ty)
        valid &= (tx >= 0) & (tx <= w - 1) & (ty >= 0) & (ty <= h - 1)
        txi = tx[valid].astype(np.int64)
        tyi = ty[valid].astype(np.int64)
        stable = gt_a[valid] == gt_b[tyi, txi]
        changed = pred_a[valid] != pred_b[tyi, txi]
    return int(np.count_nonzero(stable & changed)), int(np.count_nonzero(stable))


def evaluate_sequence(
    pred: Mapping[str, np.ndarray],
    gt: Mapping[str, np.ndarray],
    num_classes: int | None = None,
    class_names: list[str] | None = None,
    motion: Mapping[str, np.ndarray] | None = None,
    bound_th: float = DEFAULT_BOUND_TH,
) -> dict:
    """Score one video. Returns a JSON-serialisable dict (scores in [0,1], ``None`` = undefined).

    ``pred``, ``gt``: frame id -> integer label map ``[H,W]``; only ids in both are scored, in
    natural order. A prediction of another size is nearest-resized to its ground truth.
    ``num_classes`` K defaults to ``len(class_names)``, else to the largest label seen + 1; labels
    must lie in ``0..K-1``. ``motion``: frame id ``t`` -> float ``[H,W,2]`` true forward
    displacement (dx, dy) in pixels from frame ``t`` to the next frame.

    Keys: ``J``, ``F``, ``J&F`` (DAVIS, over GT objects > 0; ``None`` when the GT has none),
    ``per_object`` {name: {J, F}}, ``mIoU`` (over classes present in the GT), ``mIoU_all_classes``
    (absent classes count 0), ``per_class_iou`` {name: IoU or None if never in the GT},
    ``flicker`` (fraction of stable-GT points whose predicted label changes between adjacent
    frames, along ``motion[t]`` when given, points leaving the frame skipped; pooled over pairs;
    ``None`` when no pair), ``flicker_pairs``, ``flicker_motion_pairs`` (pairs that used motion),
    ``frames``, ``num_classes``, ``class_names``.
    """
    ids = sorted(set(pred) & set(gt), key=natural_key)
    if not ids:
        raise InputError("no frame id is in both the prediction and the ground truth")
    gts, preds = [], []
    for fid in ids:
        g = _as_labels(gt[fid], f"ground-truth frame {fid!r}")
        p = _as_labels(pred[fid], f"predicted frame {fid!r}")
        gts.append(g)
        preds.append(p if p.shape == g.shape else _resize_nearest(p, g.shape))
    k = _num_classes(ids, gts, preds, num_classes, class_names)
    names = [str(n) for n in class_names] if class_names is not None else [str(c) for c in range(k)]
    out = _region_scores(gts, preds, k, names, bound_th)
    out.update(_flicker(ids, gts, preds, motion or {}))
    out.update({"frames": len(ids), "num_classes": k, "class_names": names, "bound_th": float(bound_th)})
    return out


def _num_classes(ids: list[str], gts: list[np.ndarray], preds: list[np.ndarray], num_classes: int | None,
                 class_names: list[str] | None) -> int:
    """K from the class names, else ``num_classes``, else the largest label + 1; every label must be < K."""
    max_label = max(max(int(g.max()) for g in gts), max(int(p.max()) for p in preds))
    if class_names is not None:
        if num_classes is not None and len(class_names) != int(num_classes):
            raise InputError(f"{len(class_names)} class names given for num_classes={num_classes}")
        k = len(class_names)
    elif num_classes is not None:
        k = int(num_classes)
    else:
        k = max_label + 1
    if k < 1:
        raise InputError(f"num_classes must be >= 1, got {k}")
    if max_label >= k:
        for fid, g, p in zip(ids, gts, preds):
            for what, arr in (("ground-truth", g), ("predicted", p)):
                if int(arr.max()) >= k:
                    raise InputError(f"{what} frame {fid!r} has label {int(arr.max())}, "
                                     f"but there are only {k} classes (0..{k - 1})")
    return k


def _region_scores(gts: list[np.ndarray], preds: list[np.ndarray], k: int, names: list[str],
                   bound_th: float) -> dict:
    """Per-class IoU, mIoU (present classes and all classes) and DAVIS J / F over the GT's objects."""
    # Per-frame confusion matrices [T,K,K] -> intersections and unions [T,K].
    cms = np.stack([confusion_matrix(p, g, k) for p, g in zip(preds, gts)])
    inter = np.diagonal(cms, axis1=1, axis2=2)
    gt_count = cms.sum(axis=2)
    pred_count = cms.sum(axis=1)
    union = gt_count + pred_count - inter
    in_gt = gt_count > 0  # [T,K]
    iou = np.where(union > 0, inter / np.maximum(union, 1), 1.0)  # J convention for empty union

    per_class: dict[str, float | None] = {}
    present_ious = []
    for c in range(k):
        frames_c = in_gt[:, c]
        if frames_c.any():
            v = float(iou[frames_c, c].mean())
            present_ious.append(v)
            per_class[names[c]] = v
        else:
            per_class[names[c]] = None

    # DAVIS J and F over objects (labels > 0 present in the sequence's GT), every frame.
    objects = [c for c in range(1, k) if in_gt[:, c].any()]
    j_tab = iou[:, objects]  # [T,O]
    f_tab = np.array(
        [[boundary_f(p == c, g == c, bound_th) for c in objects] for p, g in zip(preds, gts)],
        dtype=np.float64,
    ).reshape(len(gts), len(objects))
    j_mean = _mean_or_none(j_tab)
    f_mean = _mean_or_none(f_tab)
    return {
        "J": j_mean,
        "F": f_mean,
        "J&F": None if j_mean is None else (j_mean + f_mean) / 2,
        "per_object": {names[c]: {"J": float(j_tab[:, i].mean()), "F": float(f_tab[:, i].mean())}
                       for i, c in enumerate(objects)},
        "mIoU": float(np.mean(present_ious)) if present_ious else None,
        "mIoU_all_classes": float(np.sum(present_ious) / k),
        "per_class_iou": per_class,
    }


def _flicker(ids: list[str], gts: list[np.ndarray], preds: list[np.ndarray],
             motion: Mapping[str, np.ndarray]) -> dict:
    """Flicker over adjacent frame pairs (along ``motion`` where given): ``flicker``, ``flicker_pairs``,
    ``flicker_motion_pairs``."""
    unstable = stable = pairs = motion_pairs = 0
    for t in range(len(ids) - 1):
        a, b = ids[t], ids[t + 1]
        if not _adjacent(a, b):
            continue
        if gts[t].shape != gts[t + 1].shape:
            raise InputError(f"ground-truth frames {a!r} and {b!r} differ in size "
                             f"({gts[t].shape} vs {gts[t + 1].shape})")
        flow = motion.get(a)
        if flow is not None:
            flow = np.asarray(flow)
            if flow.shape != gts[t].shape + (2,) or not np.issubdtype(flow.dtype, np.floating):
                raise InputError(f"motion of frame {a!r} must be a float array {gts[t].shape + (2,)}, "
                                 f"got {flow.dtype} {flow.shape}")
            motion_pairs += 1
        u, s = _flicker_counts(preds[t], preds[t + 1], gts[t], gts[t + 1], flow)
        unstable += u
        stable += s
        pairs += 1
    return {"flicker": float(unstable / stable) if stable > 0 else None, "flicker_pairs": pairs,
            "flicker_motion_pairs": motion_pairs}


# --------------------------------------------------------------------------------------------
# Folder level
# --------------------------------------------------------------------------------------------


def label_files(root: Path, what: str) -> dict[str, Path]:
    """``{stem: path}`` of the label PNGs in ``root`` (or its ``labels/`` subfolder); ``what`` names it in errors."""
    if not root.is_dir():
        raise InputError(f"{what} folder {root} does not exist or is not a folder")
    folder = root / "labels" if (root / "labels").is_dir() else root
    files = {
        p.stem: p
        for p in sorted(folder.iterdir())
        if p.is_file() and p.suffix.lower() == ".png" and not p.name.startswith(".")
    }
    if not files:
        raise InputError(f"{what} folder {folder} has no .png label maps")
    return files


def read_segment_names(path: Path) -> list[str]:
    """Segment names from a ``segments.json``: a list of names, or ``{"segments": [...]}``."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InputError(f"{path} is not readable JSON ({err})") from None
    if isinstance(data, dict):
        data = data.get("segments")
    if not isinstance(data, list) or not data:
        raise InputError(f"{path} must hold a non-empty list of segment names or {{\"segments\": [...]}}")
    names = []
    for item in data:
        if isinstance(item, dict) and isinstance(item.get("name"), str):
            item = item["name"]
        if not isinstance(item, str):
            raise InputError(f"{path}: segment names must be strings, got {item!r}")
        names.append(item)
    return names


def _load_motion(path: Path, shape: tuple[int, int]) -> np.ndarray:
    try:
        flow = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise InputError(f"{path} is not a readable .npy array ({err})") from None
    if not isinstance(flow, np.ndarray) or flow.shape != tuple(shape) + (2,) or not np.issubdtype(
        flow.dtype, np.floating
    ):
        raise InputError(
            f"{path} must be a float array {tuple(shape) + (2,)}, got "
            f"{getattr(flow, 'dtype', type(flow))} {getattr(flow, 'shape', '')}"
        )
    return flow.astype(np.float32)


def evaluate_folders(
    pred_dir: str | os.PathLike,
    gt_dir: str | os.PathLike,
    num_classes: int | None = None,
) -> dict:
    """Score predicted label PNGs against ground-truth PNGs; see :func:`evaluate_sequence`.

    Labels come from ``<dir>/labels/*.png`` (or ``<dir>/*.png``), matched by file stem; true motion
    from ``gt_dir/motion/<stem>.npy`` (float ``[H,W,2]``) when present; class names from
    ``segments.json`` in ``gt_dir``, else ``pred_dir`` (a list, or ``{"segments": [...]}``).
    The result also holds ``pred_dir`` and ``gt_dir``.
    """
    from ..io.label_png import read_label_png

    pred_root, gt_root = Path(pred_dir), Path(gt_dir)
    pred_files = label_files(pred_root, "prediction")
    gt_files = label_files(gt_root, "ground-truth")
    common = sorted(set(pred_files) & set(gt_files), key=natural_key)
    if not common:
        raise InputError(
            f"no frame of {pred_files[next(iter(pred_files))].parent} matches a ground-truth "
            f"frame in {gt_files[next(iter(gt_files))].parent} by file name"
        )

    class_names = None
    for root in (gt_root, pred_root):
        seg_path = root / "segments.json"
        if seg_path.is_file():
            class_names = read_segment_names(seg_path)
            if num_classes is not None and len(class_names) != int(num_classes):
                raise InputError(
                    f"{seg_path} names {len(class_names)} segments but num_classes={num_classes}"
                )
            break

    gt = {s: read_label_png(gt_files[s]) for s in common}
    pred = {s: read_label_png(pred_files[s]) for s in common}
    motion = {}
    motion_dir = gt_root / "motion"
    if motion_dir.is_dir():
        for s in common:
            path = motion_dir / f"{s}.npy"
            if path.is_file():
                motion[s] = _load_motion(path, gt[s].shape)

    result = evaluate_sequence(pred, gt, num_classes=num_classes, class_names=class_names,
                               motion=motion)
    result["pred_dir"] = str(pred_root)
    result["gt_dir"] = str(gt_root)
    return result


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON-serialisable: {type(obj).__name__}")


def write_metrics_json(metrics: dict, path: str | os.PathLike, overwrite: bool = False) -> Path:
    """Write ``metrics`` as indented JSON to ``path`` atomically; return the path.

    Raises OutputExistsError if ``path`` exists and ``overwrite`` is False; NaN is refused.
    """
    text = json.dumps(metrics, indent=2, default=_json_default, allow_nan=False)
    with atomic_path(path, overwrite=overwrite) as tmp:
        tmp.write_text(text + "\n", encoding="utf-8")
    return Path(path)
