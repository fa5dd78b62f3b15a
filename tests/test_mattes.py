"""Mattes compositors read (``io.mattes``, ``export_segmentation(mattes=...)``): per-part PNG sequences, multi-layer
EXRs, safe part names, frame numbering, exact sums and argmax, and one-line errors."""

import json
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from smite_core.errors import InputError
from smite_core.io.label_png import read_label_png
from smite_core.io.mattes import MatteSettings, exr_layers, probabilities, quantized_partition, safe_part_names
from smite_core.io.video_io import FrameSource
from smite_core.method.export import export_segmentation

NAMES = ["background", "hair/top", "../skin", "", "Hair top", "eyes"]


def test_part_names_become_safe_distinct_file_names():
    assert safe_part_names(NAMES) == ["background", "hair_top", "skin", "part3", "Hair_top_2", "eyes"]


def test_soft_mattes_of_a_pixel_sum_to_exactly_full_white():
    g = torch.Generator().manual_seed(0)
    probs = probabilities(torch.randn(5, 7, 9, generator=g).numpy() * 4)
    for total, dtype in ((255, np.uint8), (65535, np.uint16)):
        q = quantized_partition(probs, total)
        assert q.dtype == dtype and (q.astype(np.int64).sum(0) == total).all()
        assert np.abs(q - probs * total).max() < 1.0  # each value within one step of its probability


def test_exr_layers_keep_the_label_maps_argmax_through_half_float():
    probs = np.full((3, 2, 2), 1 / 3, dtype=np.float32)  # a three-way tie everywhere
    probs[1, 0, 0] += 1e-6  # below half float's resolution: rounds to the same value
    labels = np.array([[1, 2], [0, 2]])
    layers = exr_layers(probs, labels)
    assert layers.dtype == np.float16 and (layers.argmax(0) == labels).all()
    assert np.abs(layers.astype(np.float32) - probs).max() < 1e-3


def _export(tmp_path, mattes, names=NAMES, frames=3, size=(20, 24), edge_aware=True):
    g = torch.Generator().manual_seed(1)
    video = torch.rand(frames, *size, 3, generator=g)
    maps = [(i, torch.randn(len(names), 5, 6, generator=g) * 3) for i in range(frames)]
    source = FrameSource.from_tensor(video, fps=12.5)
    out = tmp_path / "out"
    export_segmentation(out, maps, source, names, overlay_format=None, edge_aware=edge_aware, mattes=mattes)
    return out


def test_segment_writes_png_and_exr_mattes_that_agree_with_the_labels(tmp_path):
    openexr = pytest.importorskip("OpenEXR")
    out = _export(tmp_path, MatteSettings(formats=("png8", "png16", "exr"), start_frame=1001, frame_padding=4))
    record = json.loads((out / "segments.json").read_text())
    parts = record["mattes"]["parts"]
    assert record["fps"] == 12.5 and parts == safe_part_names(NAMES) and record["segments"] == NAMES
    assert record["mattes"]["folders"] == {"png8": "mattes_8bit", "png16": "mattes_16bit"}
    for t in range(3):
        labels = read_label_png(out / "labels" / f"{t:05d}.png")
        name = f"{1001 + t:04d}"
        m16 = np.stack([np.asarray(Image.open(out / "mattes_16bit" / p / f"{name}.png")) for p in parts])
        m8 = np.stack([np.asarray(Image.open(out / "mattes_8bit" / p / f"{name}.png")) for p in parts])
        assert (m16.astype(np.int64).sum(0) == 65535).all() and (m8.astype(np.int64).sum(0) == 255).all()
        assert (m16.argmax(0) == labels).mean() > 0.99  # ties can round either way in 16 bits
        with openexr.File(str(out / "exr" / f"{name}.exr")) as f:
            channels = f.channels()
            assert sorted(channels) == sorted(f"{p}.A" for p in parts)
            assert str(f.header()["compression"]).endswith("ZIP_COMPRESSION")
            layers = np.stack([channels[f"{p}.A"].pixels for p in parts])
        assert layers.dtype == np.float16 and (layers.argmax(0) == labels).all()
        assert np.allclose(layers.astype(np.float32).sum(0), 1.0, atol=1e-2)


def test_hard_mattes_are_the_label_maps_parts(tmp_path):
    out = _export(tmp_path, MatteSettings(formats=("png8",), kind="hard"), names=["background", "a", "b"])
    for t in range(3):
        labels = read_label_png(out / "labels" / f"{t:05d}.png")
        for i, part in enumerate(["background", "a", "b"]):
            matte = np.asarray(Image.open(out / "mattes" / part / f"{t:05d}.png"))
            assert matte.dtype == np.uint8 and set(np.unique(matte)) <= {0, 255}
            assert ((matte == 255) == (labels == i)).all()


def test_mattes_leave_the_label_maps_as_they_were(tmp_path):
    plain = _export(tmp_path / "a", None)
    with_mattes = _export(tmp_path / "b", MatteSettings(formats=("png16",)))
    for t in range(3):
        assert (read_label_png(plain / "labels" / f"{t:05d}.png") ==
                read_label_png(with_mattes / "labels" / f"{t:05d}.png")).all()


def test_bad_matte_settings_are_one_line_and_nothing_is_written(tmp_path, monkeypatch):
    for settings, message in ((MatteSettings(formats=("tiff",)), "mattes: 'tiff' is not one of png8, png16, exr"),
                              (MatteSettings(formats=("png8", "png8")), "names a format twice"),
                              (MatteSettings(formats=("png8",), kind="fuzzy"), "matte-kind"),
                              (MatteSettings(formats=("png8",), frame_padding=12), "frame-padding"),
                              (MatteSettings(formats=("exr",), exr_compression="lzw"), "exr-compression")):
        with pytest.raises(InputError, match=message):
            _export(tmp_path, settings)
        assert not (tmp_path / "out").exists()
    monkeypatch.setitem(sys.modules, "OpenEXR", None)  # the vfx extra not installed
    with pytest.raises(InputError, match=r"OpenEXR package is not installed; pip install \"smite-segment\[vfx\]\""):
        _export(tmp_path, MatteSettings(formats=("exr",)))
    assert not (tmp_path / "out").exists()


def test_smite_segment_and_smite_batch_write_the_same_mattes(tmp_path, tiny_backbone, monkeypatch, capsys):
    """``--mattes`` in both commands gives the same files as the library; a bad option is one line, exit 2."""
    pytest.importorskip("OpenEXR")
    import smite_core.model.backbone as backbone_module
    from smite_core.commands.cli import main
    from smite_core.method.embedding import SegmentEmbedding

    monkeypatch.setattr(backbone_module, "load_backbone", lambda *a, **k: tiny_backbone)
    video = tmp_path / "shot"
    video.mkdir()
    g = torch.Generator().manual_seed(3)
    for t in range(3):
        Image.fromarray((torch.rand(32, 40, 3, generator=g) * 255).byte().numpy()).save(video / f"{t}.png")
    embedding = tmp_path / "e.safetensors"
    SegmentEmbedding(tokens=torch.randn(2, tiny_backbone.context_dim, generator=g), names=["background", "a b", "c"],
                     backbone_fingerprint=tiny_backbone.fingerprint).save(embedding)
    options = ["--size", "32", "--no-inflate", "--overlay", "none", "--device", "cpu", "--mattes", "png16",
               "--mattes", "exr", "--start-frame", "1", "--frame-padding", "3"]
    assert main(["segment", "--video", str(video), "--embedding", str(embedding), "--out", str(tmp_path / "seg"),
                 *options]) == 0
    assert main(["batch", "--videos", str(video), "--embedding", str(embedding), "--out", str(tmp_path / "many"),
                 *options]) == 0
    one, many = tmp_path / "seg", tmp_path / "many" / "shot"
    files = sorted(str(p.relative_to(one)) for p in one.rglob("*") if p.is_file())
    assert "mattes/a_b/001.png" in files and "exr/003.exr" in files and "labels/00002.png" in files
    assert files == sorted(str(p.relative_to(many)) for p in many.rglob("*") if p.is_file())
    for name in files:
        if not name.endswith(".json"):
            assert (one / name).read_bytes() == (many / name).read_bytes(), name
    capsys.readouterr()
    batch_args = ["batch", "--videos", str(video), "--embedding", str(embedding), "--out", str(tmp_path / "many")]
    assert main([*batch_args, *options]) == 0 and "1 complete from an earlier run" in capsys.readouterr().err
    assert main([*batch_args, *options, "--matte-kind", "hard"]) == 2  # other mattes: not resumed into
    assert "other settings (matte_kind)" in capsys.readouterr().err
    assert main(["segment", "--video", str(video), "--embedding", str(embedding), "--out", str(tmp_path / "bad"),
                 "--mattes", "png8", "--frame-padding", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "frame-padding" in err and not (tmp_path / "bad").exists()


def test_part_names_lose_accents_length_and_reserved_names():
    names = ["background", "Köpf", "頭髪", "con", "NUL", "x" * 300]
    safe = safe_part_names(names)
    assert safe[:5] == ["background", "Kopf", "part2", "con_", "NUL_"] and safe[5] == "x" * 100


def test_bands_of_rows_give_the_same_mattes_as_one_band(tmp_path, monkeypatch):
    import smite_core.io.mattes as mattes_module

    settings = MatteSettings(formats=("png8", "png16"))
    whole = _export(tmp_path / "whole", settings)
    monkeypatch.setattr(mattes_module, "BAND_BYTES", 8 * len(NAMES) * 24 * 3)  # 3 rows a band
    banded = _export(tmp_path / "banded", settings)
    files = sorted(p.relative_to(whole) for p in whole.rglob("*.png"))
    assert len(files) == 3 * (1 + 2 * len(NAMES))
    assert all((whole / f).read_bytes() == (banded / f).read_bytes() for f in files)


def test_frame_numbers_that_outgrow_the_padding_are_refused_before_writing(tmp_path):
    with pytest.raises(InputError, match="frame-padding: 1 digits cannot number frame 10 .* use 2 or more"):
        _export(tmp_path, MatteSettings(formats=("png8",), start_frame=8, frame_padding=1))
    assert not (tmp_path / "out").exists()
    _export(tmp_path, MatteSettings(formats=("png8",), start_frame=7, frame_padding=1))  # 7, 8, 9: fits


def test_a_part_matte_video_is_the_parts_probability_or_label(tmp_path):
    from smite_core.io.video_io import open_frames

    names = ["background", "a", "b"]
    for kind in ("soft", "hard"):
        out = _export(tmp_path / kind, MatteSettings(kind=kind, video="B"), names=names, size=(32, 48))
        record = json.loads((out / "segments.json").read_text())
        assert record["matte_video"] == {"file": "matte_b.mp4", "segment": "b", "kind": kind}
        video = open_frames(out / "matte_b.mp4").read(0, 3)
        labels = torch.stack([torch.from_numpy(read_label_png(out / "labels" / f"{t:05d}.png")) for t in range(3)])
        assert torch.allclose(video[..., 0], video[..., 2], atol=0.02)  # grey
        agree = ((video[..., 0] > 0.5) == (labels == 2)).float().mean()
        assert agree > (0.97 if kind == "hard" else 0.9), (kind, agree)
    with pytest.raises(InputError, match="matte-video: 'c' is not one of background, a, b"):
        _export(tmp_path / "bad", MatteSettings(video="c"), names=names)
