import json

import numpy as np
import pytest
import torch
from PIL import Image

from smite_core.errors import InputError
from smite_core.io.label_png import save_label_png
from smite_core.io.references import (
    ReferenceSet,
    complete_names,
    load_image,
    load_reference_folder,
    natural_key,
    reference_set_from_label_maps,
    reference_set_from_segment_masks,
)


def _rgb(h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _labels(h, w, ids=(1, 2)):
    labels = np.zeros((h, w), np.uint8)
    for n, i in enumerate(ids):
        labels[n * 2:n * 2 + 2, 1:3] = i
    return labels


def _make_folder(root, stems=("a",), size=(6, 8), ids=(1, 2), ext=".png"):
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    for n, stem in enumerate(stems):
        Image.fromarray(_rgb(*size, seed=n)).save(root / "images" / f"{stem}{ext}")
        save_label_png(root / "labels" / f"{stem}.png", _labels(*size, ids))
    return root


# ----------------------------------------------------------------------------- load_image


def test_load_image_modes(tmp_path):
    rgb = _rgb(5, 7)
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    loaded = load_image(tmp_path / "rgb.png")
    assert loaded.dtype == torch.float32 and loaded.shape == (5, 7, 3)
    assert torch.allclose(loaded, torch.from_numpy(rgb).float() / 255)

    rgba = np.concatenate([rgb, np.zeros((5, 7, 1), np.uint8)], 2)  # fully transparent
    Image.fromarray(rgba).save(tmp_path / "rgba.png")
    assert torch.allclose(load_image(tmp_path / "rgba.png"), loaded)  # alpha dropped, not applied

    grey = rgb[..., 0]
    Image.fromarray(grey).save(tmp_path / "grey.png")
    g = load_image(tmp_path / "grey.png")
    assert g.shape == (5, 7, 3) and torch.equal(g[..., 0], g[..., 2])
    assert torch.allclose(g[..., 1], torch.from_numpy(grey).float() / 255)

    Image.fromarray(rgb).quantize(16).save(tmp_path / "pal.png")
    assert load_image(tmp_path / "pal.png").shape == (5, 7, 3)

    deep = np.array([[0, 65535], [32768, 1000]], dtype=np.uint16)
    Image.fromarray(deep).save(tmp_path / "deep.png")
    d = load_image(tmp_path / "deep.png")
    assert torch.allclose(d[..., 0], torch.from_numpy(deep.astype(np.float32) / 65535))


def test_load_image_applies_exif_orientation(tmp_path):
    rgb = _rgb(4, 10)
    image = Image.fromarray(rgb)
    exif = image.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise for display
    image.save(tmp_path / "o.jpg", exif=exif, quality=100)
    loaded = load_image(tmp_path / "o.jpg")
    assert loaded.shape == (10, 4, 3)


def test_load_image_errors_name_file(tmp_path):
    with pytest.raises(InputError, match="nope.png"):
        load_image(tmp_path / "nope.png")
    (tmp_path / "bad.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    with pytest.raises(InputError, match="bad.jpg"):
        load_image(tmp_path / "bad.jpg")


# ----------------------------------------------------------------------------- folders


def test_load_folder_pairs_by_stem_in_natural_order(tmp_path):
    root = _make_folder(tmp_path / "refs", stems=("img10", "img2", "img1"))
    (tmp_path / "refs" / "images" / ".hidden.png").write_bytes(b"junk")
    refs = load_reference_folder(root)
    assert [f.split("/")[-1] for f in refs.files] == ["img1.png", "img2.png", "img10.png"]
    assert refs.num_segments == 3 and refs.names == ["background", "segment1", "segment2"]
    assert refs.images[1].shape == (6, 8, 3) and refs.labels[1].dtype == torch.int64
    assert torch.allclose(refs.images[2], torch.from_numpy(_rgb(6, 8, seed=0)).float() / 255)
    assert torch.equal(refs.labels[0], torch.from_numpy(_labels(6, 8)).long())


def test_natural_key():
    assert sorted(["f10", "f9", "F1", "f100"], key=natural_key) == ["F1", "f9", "f10", "f100"]


@pytest.mark.parametrize(
    "segments, expected",
    [
        (["background", "hair", "face"], ["background", "hair", "face"]),
        (["hair", "face"], ["background", "hair", "face"]),
        (["BG", "hair"], ["background", "hair", "segment2"]),
        ({"segments": ["background", "hair", "face", "hand"]}, ["background", "hair", "face", "hand"]),
    ],
)
def test_segments_json_names(tmp_path, segments, expected):
    root = _make_folder(tmp_path / "r")
    (root / "segments.json").write_text(json.dumps(segments))
    assert load_reference_folder(root).names == expected


def test_colour_coded_labels_automatic_ids(tmp_path):
    root = tmp_path / "r"
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    colours = [(0, 255, 0), (255, 0, 0), (0, 0, 255)]  # sorted: blue, green, red -> 1, 2, 3
    for n in range(2):
        Image.fromarray(_rgb(4, 6, n)).save(root / "images" / f"{n}.jpg")
        rgb = np.zeros((4, 6, 3), np.uint8)
        rgb[0, 0] = colours[n]
        rgb[3, 5] = colours[2]
        Image.fromarray(rgb).save(root / "labels" / f"{n}.png")
    refs = load_reference_folder(root)
    assert refs.num_segments == 4
    assert int(refs.labels[0][0, 0]) == 2 and int(refs.labels[1][0, 0]) == 3
    assert int(refs.labels[0][3, 5]) == 1 and int(refs.labels[0].sum()) == 3


def test_colour_coded_labels_with_json_colours(tmp_path):
    root = tmp_path / "r"
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    Image.fromarray(_rgb(4, 6)).save(root / "images" / "a.png")
    rgb = np.zeros((4, 6, 3), np.uint8)
    rgb[1, 1] = (10, 20, 30)
    Image.fromarray(rgb).save(root / "labels" / "a.png")
    spec = {"segments": ["background", "x", "y"], "colors": [[0, 0, 0], [1, 1, 1], [10, 20, 30]]}
    (root / "segments.json").write_text(json.dumps(spec))
    refs = load_reference_folder(root)
    assert refs.names == ["background", "x", "y"] and int(refs.labels[0][1, 1]) == 2
    spec["colors"] = [[0, 0, 0], [1, 1, 1]]
    (root / "segments.json").write_text(json.dumps(spec))
    with pytest.raises(InputError, match=r"a\.png.*\(10, 20, 30\)"):
        load_reference_folder(root)


def test_folder_errors_name_the_path(tmp_path):
    with pytest.raises(InputError, match="nothere"):
        load_reference_folder(tmp_path / "nothere")
    (tmp_path / "noimages").mkdir()
    with pytest.raises(InputError, match="noimages/images"):
        load_reference_folder(tmp_path / "noimages")
    (tmp_path / "empty" / "images").mkdir(parents=True)
    (tmp_path / "empty" / "images" / "notes.txt").write_text("x")
    with pytest.raises(InputError, match="empty/images"):
        load_reference_folder(tmp_path / "empty")


def test_unpaired_files(tmp_path):
    root = _make_folder(tmp_path / "a", stems=("x", "y"))
    (root / "labels" / "y.png").unlink()
    with pytest.raises(InputError, match=r"images/y\.png"):
        load_reference_folder(root)
    root = _make_folder(tmp_path / "b", stems=("x", "y"))
    (root / "images" / "y.png").unlink()
    with pytest.raises(InputError, match=r"labels/y\.png"):
        load_reference_folder(root)


def test_bad_reference_contents(tmp_path):
    root = _make_folder(tmp_path / "a", stems=("x", "y"))
    (root / "images" / "y.png").write_bytes(b"garbage")
    with pytest.raises(InputError, match=r"images/y\.png"):
        load_reference_folder(root)

    root = _make_folder(tmp_path / "b", stems=("x", "y"))
    save_label_png(root / "labels" / "y.png", _labels(6, 9), overwrite=True)
    with pytest.raises(InputError, match=r"labels/y\.png.*9x6.*8x6"):
        load_reference_folder(root)

    root = _make_folder(tmp_path / "c", stems=("x", "y"))
    save_label_png(root / "labels" / "y.png", np.zeros((6, 8), np.uint8), overwrite=True)
    with pytest.raises(InputError, match=r"labels/y\.png.*no foreground"):
        load_reference_folder(root)

    root = _make_folder(tmp_path / "d", stems=("x", "y"))
    save_label_png(root / "labels" / "y.png", _labels(6, 8, ids=(1, 200)), overwrite=True)
    with pytest.raises(InputError, match=r"labels/y\.png"):
        load_reference_folder(root)

    root = _make_folder(tmp_path / "e")
    (root / "segments.json").write_text("{not json")
    with pytest.raises(InputError, match="segments.json"):
        load_reference_folder(root)


def test_many_references_accepted(tmp_path):
    refs = load_reference_folder(_make_folder(tmp_path / "r", stems=[f"f{i}" for i in range(12)]))
    assert len(refs) == 12


# ----------------------------------------------------------------------------- tensors


def test_from_label_maps_batch_and_list():
    images = torch.rand(2, 6, 8, 3)
    labels = torch.from_numpy(np.stack([_labels(6, 8), _labels(6, 8, ids=(3, 1))])).long()
    refs = reference_set_from_label_maps(images, labels, ["hair", "face", "hand"])
    assert refs.names == ["background", "hair", "face", "hand"] and len(refs) == 2
    assert torch.equal(refs.labels[1], labels[1])

    mixed = reference_set_from_label_maps(
        [torch.rand(6, 8, 3), torch.rand(5, 4, 3)],
        [torch.from_numpy(_labels(6, 8)), torch.from_numpy(_labels(5, 4))],
    )
    assert mixed.images[1].shape == (5, 4, 3) and mixed.num_segments == 3

    single = reference_set_from_label_maps(torch.rand(6, 8, 3), torch.from_numpy(_labels(6, 8)))
    assert len(single) == 1


def test_from_label_maps_errors():
    with pytest.raises(InputError, match="reference 1.*no foreground"):
        reference_set_from_label_maps(torch.rand(2, 6, 8, 3),
                                      torch.stack([torch.from_numpy(_labels(6, 8)).long(),
                                                   torch.zeros(6, 8, dtype=torch.long)]))
    with pytest.raises(InputError, match="reference 0"):
        reference_set_from_label_maps(torch.rand(1, 6, 8, 3), torch.ones(1, 5, 8, dtype=torch.long))
    with pytest.raises(InputError, match="reference 0"):
        reference_set_from_label_maps(torch.rand(1, 6, 8, 3), torch.full((1, 6, 8), 0.5))


def test_segment_masks_smallest_wins():
    big = torch.zeros(2, 6, 8)
    big[:, :4, :] = 1.0  # 32 pixels
    small = torch.zeros(2, 6, 8)
    small[:, 2:5, 2:4] = 0.9  # 6 pixels, overlapping big on rows 2-3
    small[1] = 0.0
    small[1, 0:6, :] = 1.0  # image 1: 48 pixels, now the larger one
    refs = reference_set_from_segment_masks(torch.rand(2, 6, 8, 3), [big, small], ["big", "small"])
    assert refs.names == ["background", "big", "small"]
    first = refs.labels[0]
    assert int(first[2, 2]) == 2 and int(first[0, 0]) == 1 and int(first[4, 3]) == 2
    assert int(first[5, 7]) == 0
    assert int(refs.labels[1][2, 2]) == 1  # big (32) smaller than small (48) in image 1
    assert int(refs.labels[1][5, 0]) == 2


def test_segment_masks_two_dimensional_and_threshold():
    mask = torch.zeros(4, 5)
    mask[1, 1] = 0.6
    mask[2, 2] = 0.4
    refs = reference_set_from_segment_masks(torch.rand(1, 4, 5, 3), [mask])
    assert refs.labels[0].sum() == 1 and refs.names == ["background", "segment1"]
    with pytest.raises(InputError, match="reference 0.*no foreground"):
        reference_set_from_segment_masks(torch.rand(1, 4, 5, 3), [torch.full((4, 5), 0.3)])
    with pytest.raises(InputError, match="mask 0"):
        reference_set_from_segment_masks(torch.rand(1, 4, 5, 3), [torch.ones(3, 5)])


def test_validate_checks_ids_and_counts():
    image, labels = torch.rand(4, 4, 3), torch.ones(4, 4, dtype=torch.long)
    with pytest.raises(InputError, match="ref.png.*outside"):
        ReferenceSet([image], [labels * 2], ["background", "a"], ["ref.png"])
    with pytest.raises(InputError, match="segments"):
        ReferenceSet([image], [labels], complete_names([], 80), ["ref.png"])
    with pytest.raises(InputError):
        ReferenceSet([image], [labels, labels], ["background", "a"], ["ref.png"])
    assert ReferenceSet([image], [labels], ["background", "a"], ["ref.png"]).num_segments == 2
