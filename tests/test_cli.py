"""The smite command end to end on the tiny backbone, and its bad-input behaviour."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import blob_reference
from PIL import Image

from smite_core.commands.cli import main
from smite_core.io.label_png import read_label_png, save_label_png


def _png(path, image):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((image.numpy() * 255).astype(np.uint8)).save(path)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    image, labels = blob_reference(64)
    _png(root / "refs" / "images" / "a.png", image)
    save_label_png(root / "refs" / "labels" / "a.png", labels.numpy())
    (root / "refs" / "segments.json").write_text(json.dumps(["background", "disk", "corner"]))
    for t in range(5):  # a non-square video: the reference shape, shifted
        frame = torch.roll(torch.nn.functional.pad(image, (0, 0, 0, 16)), shifts=t, dims=1)
        _png(root / "video" / f"{t:05d}.png", frame)
        gt = torch.roll(torch.nn.functional.pad(labels, (0, 16)), shifts=t, dims=1)
        save_label_png(root / "gt" / f"{t:05d}.png", gt.numpy())
    return root


def test_learn_segment_eval(workspace, capsys):
    emb = workspace / "emb.safetensors"
    assert main(["learn", "--refs", str(workspace / "refs"), "--out", str(emb), "--steps", "3", "--size", "64",
                 "--device", "cpu"]) == 0
    assert emb.is_file()
    out = workspace / "seg"
    assert main(["segment", "--video", str(workspace / "video"), "--embedding", str(emb), "--out", str(out),
                 "--size", "64", "--window", "4", "--overlap", "2", "--device", "cpu"]) == 0
    pngs = sorted((out / "labels").glob("*.png"))
    assert [p.name for p in pngs] == [f"{t:05d}.png" for t in range(5)]
    assert read_label_png(pngs[0]).shape == (64, 80)
    segments = json.loads((out / "segments.json").read_text())
    assert segments["segments"] == ["background", "disk", "corner"] and len(segments["colors"]) == 3
    assert (out / "overlay.mp4").stat().st_size > 0
    metrics_file = workspace / "m.json"
    assert main(["eval", "--pred", str(out), "--gt", str(workspace / "gt"), "--json", str(metrics_file)]) == 0
    metrics = json.loads(metrics_file.read_text())
    assert metrics["frames"] == 5 and 0 <= metrics["mIoU"] <= 1 and "flicker" in metrics
    assert "mIoU" in capsys.readouterr().out

    # without --steps: --epochs passes over the references (one reference here)
    from smite_core.method.embedding import SegmentEmbedding

    by_epochs = workspace / "epochs.safetensors"
    assert main(["learn", "--refs", str(workspace / "refs"), "--out", str(by_epochs), "--epochs", "2", "--size", "64",
                 "--tokens-only", "--device", "cpu"]) == 0
    assert SegmentEmbedding.load(by_epochs).meta["steps"] == 2
    assert main(["learn", "--refs", str(workspace / "refs"), "--out", str(workspace / "e0.safetensors"),
                 "--epochs", "0"]) == 2

    # nothing is overwritten without --overwrite, and the refusal comes before any work
    before = emb.read_bytes()
    assert main(["learn", "--refs", str(workspace / "refs"), "--out", str(emb), "--steps", "1"]) == 2
    assert emb.read_bytes() == before
    assert main(["segment", "--video", str(workspace / "video"), "--embedding", str(emb), "--out", str(out)]) == 2
    assert main(["eval", "--pred", str(out), "--gt", str(workspace / "gt"), "--json", str(metrics_file)]) == 2
    assert main(["segment", "--video", str(workspace / "video"), "--embedding", str(emb), "--out", str(out),
                 "--size", "64", "--no-inflate", "--overlay", "none", "--overwrite", "--device", "cpu",
                 "--no-edge-aware"]) == 0
    assert not (out / "overlay.mp4").exists() and len(list((out / "labels").glob("*.png"))) == 5


def _error_line(capsys):
    err = capsys.readouterr().err.strip().splitlines()
    assert err and err[-1].startswith("error: ") and "Traceback" not in "\n".join(err)
    return err[-1]


def test_bad_inputs_name_the_culprit_and_write_nothing(workspace, tmp_path, capsys):
    refs = workspace / "refs"
    out = tmp_path / "e.safetensors"

    assert main(["learn", "--refs", str(tmp_path / "nope"), "--out", str(out)]) == 2
    assert "nope" in _error_line(capsys)

    empty = tmp_path / "empty"
    (empty / "images").mkdir(parents=True)
    assert main(["learn", "--refs", str(empty), "--out", str(out)]) == 2
    assert "empty" in _error_line(capsys)

    bad = tmp_path / "badsize"
    _png(bad / "images" / "x.png", torch.rand(32, 32, 3))
    save_label_png(bad / "labels" / "x.png", np.ones((16, 16), np.uint8))
    assert main(["learn", "--refs", str(bad), "--out", str(out)]) == 2
    assert "x.png" in _error_line(capsys)

    nofg = tmp_path / "nofg"
    _png(nofg / "images" / "y.png", torch.rand(32, 32, 3))
    save_label_png(nofg / "labels" / "y.png", np.zeros((32, 32), np.uint8))
    assert main(["learn", "--refs", str(nofg), "--out", str(out)]) == 2
    assert "y.png" in _error_line(capsys)
    assert not out.exists()

    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x00" * 64)
    seg_out = tmp_path / "seg"
    assert main(["segment", "--video", str(workspace / "video"), "--embedding", str(garbage), "--out", str(seg_out)]) == 2
    assert "garbage.safetensors" in _error_line(capsys)

    (tmp_path / "novideo").mkdir()
    emb = tmp_path / "ok.safetensors"
    assert main(["learn", "--refs", str(refs), "--out", str(emb), "--steps", "1", "--size", "64", "--device", "cpu"]) == 0
    capsys.readouterr()
    assert main(["segment", "--video", str(tmp_path / "novideo"), "--embedding", str(emb), "--out", str(seg_out)]) == 2
    assert "novideo" in _error_line(capsys)
    assert main(["segment", "--video", str(tmp_path / "missing.mp4"), "--embedding", str(emb), "--out", str(seg_out)]) == 2
    assert "missing.mp4" in _error_line(capsys)
    assert main(["segment", "--video", str(workspace / "video"), "--embedding", str(emb), "--out", str(seg_out),
                 "--track-weight", "-1"]) == 2
    assert "track-weight" in _error_line(capsys)
    assert not seg_out.exists()

    assert main(["eval", "--pred", str(tmp_path / "nopred"), "--gt", str(workspace / "gt")]) == 2
    assert "nopred" in _error_line(capsys)

    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(emb.read_bytes()[:-10])
    assert main(["segment", "--video", str(workspace / "video"), "--embedding", str(truncated), "--out", str(seg_out)]) == 2
    assert "truncated.safetensors" in _error_line(capsys)

    from smite_core.method.embedding import SegmentEmbedding

    other = SegmentEmbedding.load(emb)
    other.backbone_fingerprint = "0" * 16
    other.save(tmp_path / "other.safetensors")
    assert main(["segment", "--video", str(workspace / "video"), "--embedding", str(tmp_path / "other.safetensors"),
                 "--out", str(seg_out), "--device", "cpu"]) == 2
    assert "another backbone" in _error_line(capsys)
    assert not seg_out.exists()


def test_console_entry_point_prints_one_line_without_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "smite_core.commands.cli", "segment", "--video", str(tmp_path / "none.mp4"),
                           "--embedding", str(tmp_path / "none.safetensors"), "--out", str(tmp_path / "o")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and proc.stderr.startswith("error: ")
    assert "none.safetensors" in proc.stderr


def test_learn_and_segment_with_a_single_file_checkpoint(workspace, tmp_path):
    """--model PATH: an original-layout SD 1.x file (small widths) goes through learn and segment."""
    from test_checkpoints import tiny_models, write_single

    models = tiny_models("sd1", text_overrides={"vocab_size": 49408, "bos_token_id": 49406, "eos_token_id": 49407})
    checkpoint = write_single(tmp_path, models, "sd1", name="small-sd1.safetensors")
    emb = tmp_path / "emb.safetensors"
    common = ["--model", str(checkpoint), "--device", "cpu", "--size", "64"]
    assert main(["learn", "--refs", str(workspace / "refs"), "--out", str(emb), "--steps", "2", *common]) == 0
    out = tmp_path / "seg"
    assert main(["segment", "--video", str(workspace / "video"), "--embedding", str(emb), "--out", str(out),
                 "--overlay", "none", *common]) == 0
    assert len(list((out / "labels").glob("*.png"))) == 5
    # the same embedding on the embedded backbone is refused
    assert main(["segment", "--video", str(workspace / "video"), "--embedding", str(emb), "--out",
                 str(tmp_path / "seg2"), "--device", "cpu"]) == 2
