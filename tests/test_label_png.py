import numpy as np
import pytest
import torch
from PIL import Image

from smite_core.errors import InputError, OutputExistsError
from smite_core.io.label_png import (
    is_color_label_png,
    palette,
    read_color_label_png,
    read_label_png,
    save_label_png,
)


def test_palette_is_distinct_deterministic_and_starts_black():
    colours = palette()
    assert colours.shape == (256, 3) and colours.dtype == np.uint8
    assert tuple(colours[0]) == (0, 0, 0)
    assert tuple(colours[1]) == (128, 0, 0) and tuple(colours[2]) == (0, 128, 0)
    assert len({tuple(c) for c in colours}) == 256
    assert np.array_equal(palette(10), colours[:10])


@pytest.mark.parametrize("make", [np.asarray, torch.from_numpy])
def test_round_trip_all_values(tmp_path, make):
    labels = np.arange(256 * 3, dtype=np.int64).reshape(24, 32) % 256
    path = save_label_png(tmp_path / "a.png", make(labels))
    with Image.open(path) as image:
        assert image.mode == "P"
        assert np.array_equal(np.asarray(image.getpalette()[:30]).reshape(10, 3), palette(10))
    back = read_label_png(path)
    assert back.dtype == np.int64 and np.array_equal(back, labels)
    assert [p.name for p in tmp_path.iterdir()] == ["a.png"]  # no temporary left behind


def test_save_refuses_existing_and_bad_values(tmp_path):
    path = save_label_png(tmp_path / "a.png", np.zeros((4, 4), np.uint8))
    with pytest.raises(OutputExistsError):
        save_label_png(path, np.ones((4, 4), np.uint8))
    assert read_label_png(path).max() == 0
    save_label_png(path, np.ones((4, 4), np.uint8), overwrite=True)
    assert read_label_png(path).max() == 1
    for bad in (np.full((4, 4), 256), np.full((4, 4), -1), np.zeros((4, 4, 3), np.uint8),
                np.zeros((4, 4), np.float32)):
        with pytest.raises(InputError, match="b.png"):
            save_label_png(tmp_path / "b.png", bad)
    assert not (tmp_path / "b.png").exists()


@pytest.mark.parametrize("mode", ["L", "I;16", "I"])
def test_reads_grey_values(tmp_path, mode):
    values = np.array([[0, 1, 2], [7, 200, 255]])
    if mode == "I;16":
        values = values * 100  # values above 255 survive in 16-bit files
        image = Image.fromarray(values.astype(np.uint16))
    else:
        image = Image.fromarray(values.astype(np.uint8 if mode == "L" else np.int32))
    name = "g.tif" if mode == "I" else "g.png"  # PNG cannot hold 32-bit "I"; TIFF can
    image.save(tmp_path / name)
    with Image.open(tmp_path / name) as check:
        assert check.mode == mode
    assert np.array_equal(read_label_png(tmp_path / name), values)


def test_reads_one_bit(tmp_path):
    mask = np.array([[0, 1], [1, 0]], dtype=bool)
    Image.fromarray(mask).convert("1").save(tmp_path / "b.png")
    assert np.array_equal(read_label_png(tmp_path / "b.png"), mask.astype(np.int64))


def test_reads_grey_saved_as_rgb_and_rgba(tmp_path):
    values = np.array([[0, 3], [5, 0]], dtype=np.uint8)
    Image.fromarray(np.repeat(values[..., None], 3, 2)).save(tmp_path / "rgb.png")
    rgba = np.concatenate([np.repeat(values[..., None], 3, 2), np.full((2, 2, 1), 255, np.uint8)], 2)
    Image.fromarray(rgba).save(tmp_path / "rgba.png")
    assert np.array_equal(read_label_png(tmp_path / "rgb.png"), values)
    assert np.array_equal(read_label_png(tmp_path / "rgba.png"), values)
    assert not is_color_label_png(tmp_path / "rgb.png")


def test_colour_coded_label(tmp_path):
    rgb = np.zeros((3, 4, 3), np.uint8)
    rgb[0, :2] = (255, 0, 0)
    rgb[2, 3] = (0, 0, 255)
    Image.fromarray(rgb).save(tmp_path / "c.png")
    assert is_color_label_png(tmp_path / "c.png")
    with pytest.raises(InputError, match="c.png"):
        read_label_png(tmp_path / "c.png")
    assert np.array_equal(read_color_label_png(tmp_path / "c.png"), rgb)
    ids = read_label_png(tmp_path / "c.png", colors={(255, 0, 0): 1, (0, 0, 255): 2})
    expected = np.zeros((3, 4), np.int64)
    expected[0, :2], expected[2, 3] = 1, 2
    assert np.array_equal(ids, expected)
    with pytest.raises(InputError, match=r"c\.png.*\(0, 0, 255\)"):
        read_label_png(tmp_path / "c.png", colors={(255, 0, 0): 1})


def test_palette_colours_read_by_colour(tmp_path):
    path = save_label_png(tmp_path / "p.png", np.array([[0, 1], [2, 0]]))
    assert np.array_equal(read_color_label_png(path)[0, 1], palette()[1])
    assert np.array_equal(read_color_label_png(path)[1, 0], palette()[2])


def test_unreadable_files_name_the_file(tmp_path):
    with pytest.raises(InputError, match="missing.png"):
        read_label_png(tmp_path / "missing.png")
    (tmp_path / "garbage.png").write_bytes(b"this is not a png at all")
    with pytest.raises(InputError, match="garbage.png"):
        read_label_png(tmp_path / "garbage.png")
    good = save_label_png(tmp_path / "good.png", np.random.default_rng(0).integers(0, 9, (64, 64)))
    data = good.read_bytes()
    (tmp_path / "trunc.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="trunc.png"):
        read_label_png(tmp_path / "trunc.png")
