import dataclasses

import pytest
import torch

from smite_core.errors import InputError
from smite_core.method.augment import AugmentConfig, _pick_crop, augment_pair


def _scene(h=64, w=80):
    image = torch.rand(3, h, w, generator=torch.Generator().manual_seed(0))
    labels = torch.zeros(h, w, dtype=torch.int64)
    labels[2:8, 2:8] = 5  # small part in a corner
    labels[30:60, 30:75] = 9
    labels[40:50, 10:20] = 42
    return image, labels


def _only(**changes):
    return dataclasses.replace(AugmentConfig.none(), **changes)


def _run(config, seed, out_size=(48, 56), part_index=0, scene=None):
    image, labels = scene or _scene()
    return augment_pair(image, labels, out_size, torch.Generator().manual_seed(seed), config,
                        part_index)


ALL_ON = AugmentConfig(zoom_out_p=0.5, blur_p=1.0, holes_p=1.0, rotate_p=1.0)


def test_same_seed_same_result_and_seeds_differ():
    a_img, a_lab = _run(ALL_ON, 3)
    b_img, b_lab = _run(ALL_ON, 3)
    assert torch.equal(a_img, b_img) and torch.equal(a_lab, b_lab)
    c_img, _ = _run(ALL_ON, 4)
    assert not torch.equal(a_img, c_img)


def test_shapes_types_and_label_values_preserved():
    for seed in range(25):
        image, labels = _run(ALL_ON, seed)
        assert image.shape == (3, 48, 56) and image.dtype == torch.float32
        assert labels.shape == (48, 56) and labels.dtype == torch.int64
        assert 0.0 <= float(image.min()) and float(image.max()) <= 1.0
        assert set(labels.unique().tolist()) <= {0, 5, 9, 42}


def test_none_only_resizes():
    image, labels = _scene()
    out_img, out_lab = _run(AugmentConfig.none(), 0, out_size=(64, 80))
    assert torch.equal(out_img, image) and torch.equal(out_lab, labels)
    _, small = _run(AugmentConfig.none(), 0, out_size=(32, 40))
    assert torch.equal(small, labels[1::2, 1::2])  # nearest (pixel-centre) 2x downscale


def test_flip():
    image, labels = _scene()
    out_img, out_lab = _run(_only(flip=True, flip_p=1.0), 0, out_size=(64, 80))
    assert torch.equal(out_img, image.flip(-1)) and torch.equal(out_lab, labels.flip(-1))


def test_holes_fill_image_and_labels_with_zero():
    scene = (torch.full((3, 64, 64), 0.5), torch.ones(64, 64, dtype=torch.int64))
    image, labels = _run(_only(holes_p=1.0), 1, out_size=(64, 64), scene=scene)
    holes = labels == 0
    assert holes.any() and not holes.all()
    assert torch.equal(image[0] == 0, holes)
    # a hole side is at least 16 px on 512 -> 2 px at 64
    assert int(holes.sum()) >= 4


def test_zoom_out_leaves_black_background_border():
    scene = (torch.ones(3, 64, 64), torch.ones(64, 64, dtype=torch.int64))
    image, labels = _run(_only(zoom_out_p=1.0), 2, out_size=(64, 64), scene=scene)
    kept = int(labels.sum())
    assert 0.25 * 64 * 64 - 200 <= kept <= 0.64 * 64 * 64 + 200  # area scaled by 0.5..0.8 squared
    assert torch.equal(image[0] > 0.5, labels == 1)


def test_rotation_zero_corners_and_nearest_labels():
    scene = (torch.ones(3, 64, 64), torch.full((64, 64), 7, dtype=torch.int64))
    config = _only(rotate_p=1.0, rotate_degrees=30.0)
    rotated = 0
    for seed in range(6):
        image, labels = _run(config, seed, out_size=(64, 64), scene=scene)
        assert set(labels.unique().tolist()) <= {0, 7}
        assert int(labels[32, 32]) == 7 and float(image[:, 32, 32].min()) > 0.99
        rotated += int(labels[0, 0] == 0)
    assert rotated >= 5  # every angle except ~0 uncovers the corners


def test_blur_smooths():
    scene = ((torch.arange(64 * 64).reshape(64, 64) % 2).float().expand(3, 64, 64).clone(),
             torch.ones(64, 64, dtype=torch.int64))
    variances = {float(_run(_only(blur_p=1.0), s, (64, 64), scene=scene)[0].var()) for s in range(12)}
    assert min(variances) < 0.1 < max(variances)  # kernels 3/5 blur, kernel 1 leaves the image


def test_crop_keeps_the_requested_part():
    _, labels = _scene()
    config = AugmentConfig(min_crop_ratio=0.3)
    crops = set()
    for seed in range(40):
        top, left, side = _pick_crop(labels, torch.Generator().manual_seed(seed), config, 5)
        kept = int((labels[top:top + side, left:left + side] == 5).sum()) / int((labels == 5).sum())
        assert kept > 0.3
        crops.add((top, left, side))
    assert len(crops) > 20  # still random crops
    lost = 0
    for seed in range(40):
        _, out = _run(_only(crop=True, min_crop_ratio=0.3), seed, part_index=9)
        lost += int(not (out == 5).any())
    assert lost > 0  # without asking for part 5 it is sometimes cropped away...
    for seed in range(40):
        _, out = _run(_only(crop=True, min_crop_ratio=0.3), seed, part_index=5)
        assert (out == 5).any()  # ...but never when it is the part to keep


def test_crop_with_absent_part_still_crops():
    image, labels = _run(_only(crop=True, min_crop_ratio=0.5), 0, out_size=(32, 32), part_index=77)
    assert image.shape == (3, 32, 32) and labels.shape == (32, 32)


def test_bad_shapes_rejected():
    with pytest.raises(InputError, match="augment_pair"):
        augment_pair(torch.rand(64, 64, 3), torch.zeros(64, 64, dtype=torch.int64), (32, 32),
                     torch.Generator(), AugmentConfig())
