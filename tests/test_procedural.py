"""Procedural data: determinism, layout, ground-truth consistency (labels vs. motion), occlusion."""

import json

import cv2
import numpy as np
import pytest

from smite_core import procedural as P
from smite_core.errors import InputError, OutputExistsError

SMALL = (128, 128)


def _warp_agreement(video) -> float:
    """Fraction of object pixels of frame t whose motion lands on the same label in frame t+1.

    Only pixels that stay in frame and are not under the occluder in frame t+1 count.
    """
    T, H, W = video.labels.shape
    agree = total = 0
    for t in range(T - 1):
        ys, xs = np.nonzero(video.labels[t] > 0)
        x2 = np.round(xs + video.motion[t, ys, xs, 0]).astype(int)
        y2 = np.round(ys + video.motion[t, ys, xs, 1]).astype(int)
        inside = (x2 >= 0) & (x2 < W) & (y2 >= 0) & (y2 < H)
        src = video.labels[t, ys[inside], xs[inside]]
        x2, y2 = x2[inside], y2[inside]
        keep = ~video.occluder[t + 1, y2, x2]
        agree += int((video.labels[t + 1, y2, x2] == src)[keep].sum())
        total += int(keep.sum())
    return agree / max(total, 1)


def test_category_tables():
    assert set(P.TRAIN_CATEGORIES).isdisjoint(P.HELDOUT_CATEGORIES)
    assert P.HELDOUT_CATEGORIES and P.TRAIN_CATEGORIES
    assert set(P.TRAIN_CATEGORIES) | set(P.HELDOUT_CATEGORIES) == set(P.CATEGORIES)
    assert len(P.CATEGORIES) >= 5
    for cat, parts in P.CATEGORY_PARTS.items():
        assert 3 <= len(parts) <= 6 and len(set(parts)) == len(parts)
        assert P.category_names(cat) == ["background", *parts]
    held = {P.CATEGORY_PARTS[c] for c in P.HELDOUT_CATEGORIES}
    assert held.isdisjoint({P.CATEGORY_PARTS[c] for c in P.TRAIN_CATEGORIES})


def test_video_deterministic_and_seed_dependent():
    a = P.make_video("fish", 3, num_frames=5, size=(96, 112))
    b = P.make_video("fish", 3, num_frames=5, size=(96, 112))
    c = P.make_video("fish", 4, num_frames=5, size=(96, 112))
    for name in ("frames", "labels", "motion", "occluder"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    assert not np.array_equal(a.frames, c.frames)
    assert not np.array_equal(a.labels, c.labels)


@pytest.mark.parametrize("category", P.CATEGORIES)
def test_video_shapes_parts_and_motion(category):
    T, (H, W) = 16, (160, 160)
    v = P.make_video(category, 11, num_frames=T, size=(H, W))
    assert v.category == category and v.names == P.category_names(category)
    assert v.frames.shape == (T, H, W, 3) and v.frames.dtype == np.float32
    assert v.labels.shape == (T, H, W) and v.labels.dtype == np.uint8
    assert v.motion.shape == (T - 1, H, W, 2) and v.motion.dtype == np.float32
    assert v.occluder.shape == (T, H, W) and v.occluder.dtype == bool
    assert 0.0 <= v.frames.min() and v.frames.max() <= 1.0
    assert np.isfinite(v.motion).all()
    assert int(v.labels.max()) <= len(v.names) - 1
    assert not v.labels[v.occluder].any()  # occluded pixels are background
    for k in range(1, len(v.names)):  # every part visible in most frames
        assert (v.labels == k).any(axis=(1, 2)).mean() >= 0.75, v.names[k]
    assert np.ptp(v.frames, axis=(1, 2)).min() > 0.2  # not a flat image
    assert np.abs(np.diff(v.frames, axis=0)).mean() > 0.005  # things move
    assert _warp_agreement(v) >= 0.95


@pytest.mark.parametrize("category,seed", [("robot", 1), ("car", 2), ("bird", 0)])
def test_motion_consistency_full_size(category, seed):
    assert _warp_agreement(P.make_video(category, seed, num_frames=12, size=(256, 256))) >= 0.95


def test_background_motion_is_pan():
    v = P.make_video("house", 5, num_frames=6, size=SMALL)
    ys, xs = np.nonzero((v.labels[0] == 0) & ~v.occluder[0])
    flow = v.motion[0, ys, xs]
    assert np.abs(flow).max() > 0.05  # the background moves too
    design = np.stack([xs, ys, np.ones_like(xs)], 1).astype(np.float64)
    coef, *_ = np.linalg.lstsq(design, flow.astype(np.float64), rcond=None)
    assert np.abs(design @ coef - flow).max() < 1e-2  # one affine pan/zoom for all of it


def test_occlusion_happens():
    for cat, seed in (("robot", 2), ("house", 2)):
        occ = P.make_video(cat, seed, num_frames=24, size=SMALL)
        clean = P.make_video(cat, seed, num_frames=24, size=SMALL, occluder=False)
        assert not clean.occluder.any() and occ.occluder.any()
        np.testing.assert_array_equal(occ.labels[~occ.occluder], clean.labels[~occ.occluder])
        never = ~cv2.dilate(occ.occluder.any(0).astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
        np.testing.assert_array_equal(occ.frames[:, never], clean.frames[:, never])
        hidden = ((clean.labels > 0) & (occ.labels == 0)).sum(axis=(1, 2))
        area = (clean.labels > 0).sum(axis=(1, 2))
        assert (hidden > 0).any()  # occluded in some frames ...
        assert (hidden == 0).any()  # ... but not all
        assert (hidden < 0.7 * area).all()  # and only partly


@pytest.mark.parametrize("size", [(96, 176), (176, 96)])
def test_non_square(size):
    v = P.make_video("car", 7, num_frames=4, size=size)
    assert v.frames.shape == (4, *size, 3) and v.motion.shape == (3, *size, 2)
    assert all((v.labels[0] == k).any() for k in range(1, len(v.names)))
    imgs, labs, _ = P.make_references("flower", 7, 2, size=size)
    assert imgs[0].shape == (*size, 3) and labs[1].shape == size
    assert P.generic_image(7, size).shape == (*size, 3)


def test_single_frame_video():
    v = P.make_video("robot", 0, num_frames=1, size=SMALL)
    assert v.frames.shape == (1, *SMALL, 3) and v.motion.shape == (0, *SMALL, 2)


def test_references():
    imgs, labs, names = P.make_references("robot", 9, 3, size=SMALL)
    assert names == P.category_names("robot") and len(imgs) == len(labs) == 3
    for im, lb in zip(imgs, labs):
        assert im.shape == (*SMALL, 3) and im.dtype == np.float32 and 0 <= im.min() <= im.max() <= 1
        assert lb.shape == SMALL and lb.dtype == np.uint8
        assert all((lb == k).any() for k in range(1, len(names)))
    assert not np.array_equal(imgs[0], imgs[1]) and not np.array_equal(labs[0], labs[1])
    again, again_l, _ = P.make_references("robot", 9, 3, size=SMALL)
    np.testing.assert_array_equal(np.stack(imgs), np.stack(again))
    np.testing.assert_array_equal(np.stack(labs), np.stack(again_l))
    # a prefix of the references is the same whatever the count
    np.testing.assert_array_equal(P.make_references("robot", 9, 1, size=SMALL)[0][0], imgs[0])
    video = P.make_video("robot", 9, num_frames=1, size=SMALL)
    assert not any(np.array_equal(video.labels[0], lb) for lb in labs)
    assert P.make_references("robot", 9, 0, size=SMALL)[0] == []


def test_generic_image():
    a = P.generic_image(0, (96, 128))
    assert a.shape == (96, 128, 3) and a.dtype == np.float32
    assert 0.0 <= a.min() and a.max() <= 1.0 and a.std() > 0.03
    np.testing.assert_array_equal(a, P.generic_image(0, (96, 128)))
    assert not np.array_equal(a, P.generic_image(1, (96, 128)))
    assert P.generic_image(3, 64).shape == (64, 64, 3)


@pytest.mark.parametrize("call", [
    lambda: P.make_video("dragon", 0),
    lambda: P.make_video("fish", -1),
    lambda: P.make_video("fish", 0, num_frames=0),
    lambda: P.make_video("fish", 0, size=(8, 8)),
    lambda: P.make_video("fish", 0, size="big"),
    lambda: P.make_references("fish", 0, -1),
    lambda: P.generic_image(1.5),
])
def test_bad_input(call):
    with pytest.raises(InputError):
        call()


def test_write_example(tmp_path):
    from PIL import Image

    from smite_core.io.label_png import palette

    out = tmp_path / "ex"
    paths = P.write_example(out, "flower", 4, num_refs=2, num_frames=4, size=(64, 96))
    names = P.category_names("flower")
    assert paths["root"] == out
    assert json.loads((out / "references/segments.json").read_text()) == names
    assert json.loads((out / "gt/segments.json").read_text()) == names
    assert sorted(p.name for p in (out / "references/images").iterdir()) == ["ref000.png", "ref001.png"]
    assert sorted(p.name for p in (out / "references/labels").iterdir()) == ["ref000.png", "ref001.png"]
    assert sorted(p.name for p in (out / "video").iterdir()) == [f"{t:05d}.png" for t in range(4)]
    assert sorted(p.name for p in (out / "gt/labels").iterdir()) == [f"{t:05d}.png" for t in range(4)]
    assert sorted(p.name for p in (out / "gt/motion").iterdir()) == [f"{t:05d}.npy" for t in range(3)]
    for key, path in paths.items():
        assert path.exists(), key
    video = P.make_video("flower", 4, num_frames=4, size=(64, 96))
    frame = np.asarray(Image.open(out / "video/00002.png"))
    assert frame.shape == (64, 96, 3) and frame.dtype == np.uint8
    assert np.abs(frame / 255.0 - video.frames[2]).max() <= 0.5 / 255 + 1e-6
    label_img = Image.open(out / "gt/labels/00001.png")
    assert label_img.mode == "P"
    np.testing.assert_array_equal(np.asarray(label_img), video.labels[1])
    assert bytes(label_img.getpalette()[:9]) == palette(3).tobytes()
    motion = np.load(out / "gt/motion/00000.npy", allow_pickle=False)
    assert motion.dtype == np.float16 and motion.shape == (64, 96, 2)
    np.testing.assert_allclose(motion, video.motion[0], atol=0.05, rtol=1e-2)
    ref_lab = np.asarray(Image.open(out / "references/labels/ref001.png"))
    np.testing.assert_array_equal(ref_lab, P.make_references("flower", 4, 2, size=(64, 96))[1][1])

    with pytest.raises(OutputExistsError):
        P.write_example(out, "flower", 4, num_frames=2, size=(64, 96))
    P.write_example(out, "fish", 5, num_frames=2, size=(64, 96), overwrite=True)
    assert json.loads((out / "gt/segments.json").read_text()) == P.category_names("fish")
    assert len(list((out / "video").iterdir())) == 2
    assert not list(tmp_path.glob(".ex*"))  # no temporary folders left behind
