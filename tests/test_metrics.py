"""Tests for smite_core.evaluation.metrics: hand-computed cases, a DAVIS cross-check, folder evaluation."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import ndimage

from smite_core.errors import InputError, OutputExistsError
from smite_core.evaluation.metrics import (
    boundary_f,
    confusion_matrix,
    evaluate_folders,
    evaluate_sequence,
    region_jaccard,
    write_metrics_json,
)


def square(h, w, y0, x0, size, label=1, base=None):
    out = np.zeros((h, w), np.int64) if base is None else base.copy()
    out[y0:y0 + size, x0:x0 + size] = label
    return out


def random_blob(rng, h, w):
    kind = rng.integers(0, 5)
    if kind == 0:
        return np.zeros((h, w), bool)
    if kind == 1:
        return np.ones((h, w), bool)
    field = ndimage.gaussian_filter(rng.random((h, w)), rng.uniform(0.7, 4.0))
    return field > np.quantile(field, rng.uniform(0.3, 0.95))


# ------------------------------------------------------------------ array level


def test_region_jaccard_shifted_square():
    gt = square(40, 40, 10, 10, 10).astype(bool)
    pred = square(40, 40, 10, 12, 10).astype(bool)  # 8x10 overlap, union 120
    assert region_jaccard(pred, gt) == pytest.approx(80 / 120)
    assert region_jaccard(gt, gt) == 1.0
    empty = np.zeros_like(gt)
    assert region_jaccard(empty, empty) == 1.0
    assert region_jaccard(empty, gt) == 0.0


def test_boundary_f_basic():
    gt = square(64, 64, 20, 20, 16).astype(bool)
    assert boundary_f(gt, gt) == 1.0
    empty = np.zeros_like(gt)
    assert boundary_f(empty, empty) == 1.0
    assert boundary_f(empty, gt) == 0.0
    assert boundary_f(gt, empty) == 0.0
    # radius ceil(0.008 * 90.5) = 1 px: a 1 px shift matches fully, a 5 px shift does not
    assert boundary_f(square(64, 64, 20, 21, 16).astype(bool), gt) == 1.0
    assert boundary_f(square(64, 64, 20, 25, 16).astype(bool), gt) < 0.7
    # tolerance given in pixels
    assert boundary_f(square(64, 64, 20, 25, 16).astype(bool), gt, bound_th=5) == 1.0


def test_array_metrics_reject_shape_mismatch():
    with pytest.raises(InputError):
        region_jaccard(np.zeros((4, 4), bool), np.zeros((4, 5), bool))
    with pytest.raises(InputError):
        boundary_f(np.zeros((4, 4), bool), np.zeros((5, 4), bool))


def test_confusion_matrix_matches_brute_force():
    rng = np.random.default_rng(1)
    pred = rng.integers(0, 4, (13, 17))
    gt = rng.integers(0, 4, (13, 17))
    cm = confusion_matrix(pred, gt, 4)
    assert cm.dtype == np.int64 and cm.shape == (4, 4)
    for g in range(4):
        for p in range(4):
            assert cm[g, p] == np.count_nonzero((gt == g) & (pred == p))
    assert cm.sum() == pred.size
    with pytest.raises(InputError):
        confusion_matrix(pred, gt, 3)


def test_cross_check_with_vos_benchmark():
    cv2 = pytest.importorskip("cv2")
    try:
        from skimage.morphology import disk
        from vos_benchmark.evaluator import get_iou
        from vos_benchmark.utils import _seg2bmap
    except ImportError:
        pytest.skip("vos_benchmark (pip install vos-benchmark) is not installed")

    def davis_f(mask, gt, th=0.008):
        # same steps as vos_benchmark.evaluator.Evaluator.feed_frame
        kernel = disk(np.ceil(th * np.linalg.norm(mask.shape)))
        mb, gb = _seg2bmap(mask), _seg2bmap(gt)
        md = cv2.dilate(mb.astype(np.uint8), kernel)
        gd = cv2.dilate(gb.astype(np.uint8), kernel)
        n_fg, n_gt = np.sum(mb), np.sum(gb)
        if n_fg == 0 and n_gt > 0:
            p, r = 1, 0
        elif n_fg > 0 and n_gt == 0:
            p, r = 0, 1
        elif n_fg == 0 and n_gt == 0:
            p, r = 1, 1
        else:
            p, r = np.sum(mb * gd) / n_fg, np.sum(gb * md) / n_gt
        return 0 if p + r == 0 else 2 * p * r / (p + r)

    rng = np.random.default_rng(0)
    cases = [(np.zeros((30, 40), bool), np.zeros((30, 40), bool))]
    for _ in range(60):
        h, w = (int(v) for v in rng.integers(8, 150, 2))
        cases.append((random_blob(rng, h, w), random_blob(rng, h, w)))
    for pred, gt in cases:
        j_ref = get_iou(np.sum(pred * gt), pred.sum() + gt.sum())
        assert region_jaccard(pred, gt) == pytest.approx(j_ref, abs=1e-6)
        assert boundary_f(pred, gt) == pytest.approx(davis_f(pred, gt), abs=1e-6)


def test_sequence_j_f_match_vos_benchmark_evaluator():
    try:
        from vos_benchmark.evaluator import Evaluator
    except ImportError:
        pytest.skip("vos_benchmark (pip install vos-benchmark) is not installed")
    rng = np.random.default_rng(3)
    gt, pred = {}, {}
    for t in range(4):
        g = np.zeros((60, 80), np.int64)
        p = np.zeros((60, 80), np.int64)
        for obj in (1, 2, 3):
            g[random_blob(rng, 60, 80)] = obj
            p[random_blob(rng, 60, 80)] = obj
        if t == 0:  # every GT object in frame 0, so the Evaluator keeps a value for every frame
            g[0:3, 0:3], g[0:3, 5:8], g[0:3, 10:13] = 1, 2, 3
        p[p == 3] = 4 if t == 2 else 3  # an object that is not in the GT is ignored
        gt[f"{t:05d}"], pred[f"{t:05d}"] = g, p
    ev = Evaluator()
    for fid in sorted(gt):
        ev.feed_frame(pred[fid].astype(np.uint8), gt[fid].astype(np.uint8))
    iou, bf = ev.conclude()
    res = evaluate_sequence(pred, gt)
    assert res["J"] == pytest.approx(np.mean(list(iou.values())) / 100, abs=1e-6)
    assert res["F"] == pytest.approx(np.mean(list(bf.values())) / 100, abs=1e-6)


# ------------------------------------------------------------------ sequence level


def test_perfect_prediction():
    gt = {f"{t:03d}": square(32, 32, 4 + t, 6, 10, 1, base=square(32, 32, 20, 20, 8, 2))
          for t in range(5)}
    res = evaluate_sequence(dict(gt), gt, class_names=["background", "a", "b"])
    assert res["J"] == res["F"] == res["J&F"] == 1.0
    assert res["mIoU"] == res["mIoU_all_classes"] == 1.0
    assert res["per_class_iou"] == {"background": 1.0, "a": 1.0, "b": 1.0}
    assert res["flicker"] == 0.0 and res["flicker_pairs"] == 4
    assert res["frames"] == 5 and res["num_classes"] == 3
    json.dumps(res, allow_nan=False)


def test_shifted_square_sequence():
    gt = {"0": square(40, 40, 10, 10, 10)}
    pred = {"0": square(40, 40, 10, 12, 10)}
    res = evaluate_sequence(pred, gt)
    assert res["J"] == pytest.approx(2 / 3)
    bg = (1600 - 120) / (1600 - 80)  # background intersection / union
    assert res["per_class_iou"]["1"] == pytest.approx(2 / 3)
    assert res["per_class_iou"]["0"] == pytest.approx(bg)
    assert res["mIoU"] == pytest.approx((2 / 3 + bg) / 2)
    assert res["flicker"] is None and res["flicker_pairs"] == 0


def test_absent_class_excluded_from_miou():
    gt = {"0": square(20, 20, 2, 2, 6), "1": square(20, 20, 3, 3, 6)}
    res = evaluate_sequence(dict(gt), gt, num_classes=3)
    assert res["per_class_iou"]["2"] is None
    assert res["mIoU"] == 1.0
    assert res["mIoU_all_classes"] == pytest.approx(2 / 3)
    # a class that is in the GT of one frame only is averaged over that frame only
    gt2 = {"0": square(20, 20, 2, 2, 6), "1": np.zeros((20, 20), np.int64)}
    pred2 = {"0": square(20, 20, 2, 2, 6), "1": square(20, 20, 2, 2, 6)}
    res2 = evaluate_sequence(pred2, gt2)
    assert res2["per_class_iou"]["1"] == 1.0
    # DAVIS J counts frame 1 (absent in GT, present in pred) as 0
    assert res2["J"] == pytest.approx(0.5)


def test_flicker_single_flipping_region():
    gt = {f"{t}": square(20, 20, 5, 5, 8) for t in range(3)}
    pred = {k: v.copy() for k, v in gt.items()}
    pred["1"][0:2, 0:2] = 1  # 4 pixels flip on in frame 1 and off again in frame 2
    res = evaluate_sequence(pred, gt)
    assert res["flicker_pairs"] == 2
    assert res["flicker"] == pytest.approx(8 / 800)
    # a prediction that changes only where the GT changes does not flicker
    gt_moving = {f"{t}": square(20, 20, 5, 5 + t, 8) for t in range(3)}
    assert evaluate_sequence(dict(gt_moving), gt_moving)["flicker"] == 0.0


def test_flicker_pairs_only_adjacent_frames():
    gt = {k: square(10, 10, 2, 2, 3) for k in ("f_0001", "f_0002", "f_0004", "f_0005", "f_0006")}
    res = evaluate_sequence(dict(gt), gt)
    assert res["flicker_pairs"] == 3


def test_flicker_along_motion():
    h, w, dx = 24, 40, 3
    gt, pred, motion = {}, {}, {}
    for t in range(4):
        gt[f"{t:04d}"] = square(h, w, 6, 4 + dx * t, 10)
        pred[f"{t:04d}"] = square(h, w, 6, 5 + dx * t, 10)  # 1 px off, but moving correctly
        flow = np.zeros((h, w, 2), np.float32)
        flow[..., 0] = dx  # the whole frame moves right; points leaving it are skipped
        motion[f"{t:04d}"] = flow
    with_motion = evaluate_sequence(pred, gt, motion=motion)
    assert with_motion["flicker"] == 0.0
    assert with_motion["flicker_pairs"] == 3 and with_motion["flicker_motion_pairs"] == 3
    without = evaluate_sequence(pred, gt)
    assert without["flicker"] > 0
    # a prediction that stands still while the content moves flickers along the motion
    still = {k: square(h, w, 6, 5, 10) for k in gt}
    assert evaluate_sequence(still, gt, motion=motion)["flicker"] > 0
    with pytest.raises(InputError, match="motion"):
        evaluate_sequence(pred, gt, motion={"0000": np.zeros((h, w), np.float32)})


def test_prediction_resized_to_gt():
    gt = {"0": square(8, 8, 0, 0, 4)}
    pred = {"0": square(4, 4, 0, 0, 2)}
    res = evaluate_sequence(pred, gt)
    assert res["J"] == 1.0 and res["mIoU"] == 1.0


def test_sequence_errors():
    a = square(8, 8, 0, 0, 4)
    with pytest.raises(InputError, match="no frame id"):
        evaluate_sequence({"0": a}, {"1": a})
    with pytest.raises(InputError, match="'0'"):
        evaluate_sequence({"0": a.astype(np.float32)}, {"0": a})
    with pytest.raises(InputError, match="label 1"):
        evaluate_sequence({"0": a}, {"0": a}, num_classes=1)
    with pytest.raises(InputError):
        evaluate_sequence({"0": a}, {"0": a}, num_classes=3, class_names=["x", "y"])


# ------------------------------------------------------------------ folders


@pytest.fixture
def label_png():
    return pytest.importorskip("smite_core.io.label_png")


def test_evaluate_folders(tmp_path, label_png):
    gt_dir, pred_dir = tmp_path / "gt", tmp_path / "pred"
    h, w = 20, 30
    for t in range(3):
        label_png.save_label_png(gt_dir / "labels" / f"{t:05d}.png",
                                 square(h, w, 4, 4 + 2 * t, 6, 1, base=square(h, w, 12, 20, 4, 2)))
        pred_lab = square(h, w, 4, 4 + 2 * t, 6)
        label_png.save_label_png(pred_dir / f"{t:05d}.png", pred_lab)
        flow = np.zeros((h, w, 2), np.float16)
        flow[..., 0] = 2
        (gt_dir / "motion").mkdir(parents=True, exist_ok=True)
        np.save(gt_dir / "motion" / f"{t:05d}.npy", flow)
    label_png.save_label_png(pred_dir / "00099.png", np.zeros((h, w), np.int64))  # no GT: ignored
    (gt_dir / "segments.json").write_text(json.dumps({"segments": ["background", "head", "tail"]}))

    res = evaluate_folders(pred_dir, gt_dir)
    assert res["frames"] == 3
    assert res["class_names"] == ["background", "head", "tail"]
    assert res["per_class_iou"]["head"] == 1.0
    assert res["per_class_iou"]["tail"] == 0.0
    assert res["mIoU"] == res["mIoU_all_classes"]
    assert res["per_object"]["head"]["J"] == 1.0
    assert res["flicker_motion_pairs"] == 2
    assert res["flicker"] == 0.0

    out = tmp_path / "m" / "metrics.json"
    write_metrics_json(res, out)
    assert json.loads(out.read_text()) == json.loads(json.dumps(res))
    with pytest.raises(OutputExistsError):
        write_metrics_json(res, out)
    write_metrics_json({"J": 0.5}, out, overwrite=True)
    assert json.loads(out.read_text()) == {"J": 0.5}


def test_evaluate_folders_errors(tmp_path, label_png):
    gt_dir, pred_dir = tmp_path / "gt", tmp_path / "pred"
    lab = square(10, 10, 2, 2, 4)
    with pytest.raises(InputError, match="prediction folder"):
        evaluate_folders(pred_dir, gt_dir)
    pred_dir.mkdir()
    gt_dir.mkdir()
    with pytest.raises(InputError, match="has no .png"):
        evaluate_folders(pred_dir, gt_dir)
    label_png.save_label_png(pred_dir / "00001.png", lab)
    with pytest.raises(InputError, match="has no .png"):
        evaluate_folders(pred_dir, gt_dir)
    label_png.save_label_png(gt_dir / "00002.png", lab)
    with pytest.raises(InputError, match="no frame"):
        evaluate_folders(pred_dir, gt_dir)
    label_png.save_label_png(gt_dir / "00001.png", lab)
    assert evaluate_folders(pred_dir, gt_dir)["frames"] == 1
    (pred_dir / "segments.json").write_text("{not json")
    with pytest.raises(InputError, match="segments.json"):
        evaluate_folders(pred_dir, gt_dir)
    (pred_dir / "segments.json").write_text(json.dumps(["bg", "obj"]))
    assert evaluate_folders(pred_dir, gt_dir)["class_names"] == ["bg", "obj"]
    with pytest.raises(InputError, match="segments.json"):
        evaluate_folders(pred_dir, gt_dir, num_classes=3)
    (gt_dir / "motion").mkdir()
    np.save(gt_dir / "motion" / "00001.npy", np.zeros((10, 10, 3), np.float32))
    with pytest.raises(InputError, match="00001.npy"):
        evaluate_folders(pred_dir, gt_dir)
