"""What a newcomer meets first (issue #31): ranges checked from one definition, normal file modes, binary
masks and photos given as labels, colour keys wherever a colour means a part, help texts, stopping within
one pass."""

import argparse
import dataclasses
import json
import os
import stat

import cv2
import numpy as np
import pytest
import torch
from conftest import blob_reference
from PIL import Image

from smite_core.commands import cli
from smite_core.errors import InputError
from smite_core.io.label_png import palette, save_label_png
from smite_core.io.legend import key_font, segment_colors
from smite_core.io.references import load_reference_folder, reference_set_from_label_maps
from smite_core.method.learn import LearnConfig, learn_embedding
from smite_core.method.segment import SegmentConfig, segment_frames
from smite_core.settings import range_of

FAST = ["--tracker", "none", "--track-weight", "0", "--lowpass-weight", "0", "--guide-steps", "0",
        "--device", "cpu", "--overlay", "none"]


def _png(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A one-reference folder, a 3-frame video and an embedding learned in one step at 32 px."""
    root = tmp_path_factory.mktemp("newcomer")
    image, labels = blob_reference(32)
    _png(root / "refs" / "images" / "a.png", (image.numpy() * 255).astype(np.uint8))
    save_label_png(root / "refs" / "labels" / "a.png", labels.numpy())
    for t in range(3):
        _png(root / "video" / f"{t:05d}.png", (torch.roll(image, t, 1).numpy() * 255).astype(np.uint8))
    assert cli.main(["learn", "--refs", str(root / "refs"), "--out", str(root / "emb.safetensors"), "--steps", "1",
                     "--size", "32", "--device", "cpu"]) == 0
    return root


def _one_error_line(capsys) -> str:
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(err) == 1
    return err[0]


# ----------------------------------------------------------------------------- ranges


@pytest.mark.parametrize("args, culprit", [
    (["--size", "7"], "size"), (["--size", "-5"], "size"), (["--size", "4096"], "size"), (["--size", "40"], "size"),
    (["--steps", "0"], "steps"), (["--epochs", "0"], "epochs"), (["--seed", "-1"], "seed"),
    (["--checkpoint", "x.safetensors", "--checkpoint-every", "-1"], "checkpoint-every"),
])
def test_learn_refuses_out_of_range_options(workspace, capsys, args, culprit):
    out = workspace / "bad.safetensors"
    code = cli.main(["learn", "--refs", str(workspace / "refs"), "--out", str(out), "--device", "cpu", *args])
    assert code == 2 and _one_error_line(capsys).split(":")[1].strip().lstrip("-") == culprit
    assert not out.exists() and not list(workspace.glob(".bad*"))


def test_too_many_epochs_name_epochs_not_steps():
    with pytest.raises(InputError, match=r"^epochs: 10000 epochs x 20 references = 200000 steps"):
        LearnConfig(epochs=10_000).resolved(20)
    assert LearnConfig(epochs=10_000).resolved(10).steps == 100_000


@pytest.mark.parametrize("args, culprit", [
    (["--size", "7"], "size"), (["--size", "100"], "size"), (["--window", "0"], "window"),
    (["--window", "300"], "window"), (["--window", "4", "--overlap", "4"], "overlap"),
    (["--track-weight", "-1"], "track-weight"), (["--lowpass-weight", "nan"], "lowpass-weight"),
    (["--guide-steps", "51"], "guide-steps"), (["--guide-iters", "0"], "guide-iters"),
    (["--vote-window", "0"], "vote-window"), (["--seed", "-3"], "seed"),
])
def test_segment_refuses_out_of_range_options(workspace, capsys, args, culprit):
    out = workspace / "bad-seg"
    code = cli.main(["segment", "--video", str(workspace / "video"), "--embedding", str(workspace / "emb.safetensors"),
                     "--out", str(out), *FAST, *args])
    assert code == 2 and _one_error_line(capsys).split(":")[1].strip().lstrip("-") == culprit
    assert not out.exists() and not list(workspace.glob(".bad-seg*"))


def test_other_commands_refuse_out_of_range_options(workspace, tmp_path, capsys):
    assert cli.main(["demo", "--out", str(tmp_path / "d"), "--frames", "0"]) == 2
    assert _one_error_line(capsys).startswith("error: frames")
    assert cli.main(["demo", "--out", str(tmp_path / "d"), "--steps", "0"]) == 2
    assert _one_error_line(capsys).startswith("error: steps")
    assert not (tmp_path / "d").exists()
    assert cli.main(["vote", "--video", str(workspace / "video"), "--labels", str(workspace / "refs" / "labels"),
                     "--out", str(tmp_path / "v"), "--max-grid", "0"]) == 2
    assert "max-grid" in _one_error_line(capsys) and not (tmp_path / "v").exists()


def test_library_configs_and_node_widgets_share_one_range(tiny_backbone):
    with pytest.raises(InputError, match="size: must be a multiple of 16"):
        LearnConfig(size=7).validate(tiny_backbone)
    with pytest.raises(InputError, match="448 or 512 would do"):
        SegmentConfig(size=500).validate(type("SD", (), {"size_multiple": 64})())
    with pytest.raises(InputError, match="guide-iters"):
        SegmentConfig(guide_iters=0).validate()
    with pytest.raises(InputError, match="timesteps"):
        SegmentConfig(timesteps=(104, 95)).validate()
    LearnConfig(size=32).validate(tiny_backbone)
    SegmentConfig(size=(32, 48)).validate(tiny_backbone)
    from graph_runner import load_pack

    nodes = load_pack().NODE_CLASS_MAPPINGS
    widgets = {name: spec for node in ("SMITE_TrackVote", "SMITE_LowPassGuide", "SMITE_InflatedUNetSegment")
               for name, spec in nodes[node].INPUT_TYPES()["required"].items()}
    fields = {"first_step_cutoff": "lowpass_first_cutoff"}
    checked = 0
    for name, (kind, options) in widgets.items():
        if kind in ("INT", "FLOAT") and name != "size":
            field = fields.get(name, name)
            assert (options["min"], options["max"]) == range_of(SegmentConfig, field), name
            assert options["default"] == getattr(SegmentConfig(), field), name
            checked += 1
    assert checked == 8
    assert "must be" in nodes["SMITE_InflatedUNetSegment"].VALIDATE_INPUTS(window=0, overlap=0, guide_steps=1)


# ----------------------------------------------------------------------------- file modes


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_outputs_get_the_modes_of_the_users_umask(workspace, tmp_path, umask):
    previous = os.umask(umask)
    try:
        emb = tmp_path / "e.safetensors"
        assert cli.main(["learn", "--refs", str(workspace / "refs"), "--out", str(emb), "--steps", "1", "--size",
                         "32", "--device", "cpu"]) == 0
        out = tmp_path / "seg"
        assert cli.main(["segment", "--video", str(workspace / "video"), "--embedding", str(emb), "--out", str(out),
                         "--size", "32", *FAST[:-2], "--overlay", "mp4"]) == 0
    finally:
        os.umask(previous)
    files, folders = 0o666 & ~umask, 0o777 & ~umask
    assert _mode(emb) == files
    assert _mode(out) == folders and _mode(out / "labels") == folders
    for path in [out / "overlay.mp4", out / "segments.json", *(out / "labels").iterdir()]:
        assert _mode(path) == files, path


# ----------------------------------------------------------------------------- label codings


def _mask_folder(root, masks, mode="L"):
    """References whose labels are the given masks, saved in PIL ``mode`` (``L`` greyscale, ``1`` bilevel)."""
    (root / "labels").mkdir(parents=True, exist_ok=True)
    for i, mask in enumerate(masks):
        image = np.full((32, 32, 3), 40, np.uint8)
        image[mask > 0] = (200, 60, 60)
        _png(root / "images" / f"r{i}.png", image)
        Image.fromarray(mask).convert(mode).save(root / "labels" / f"r{i}.png")


def _disk_mask(value, shift=0):
    yy, xx = np.mgrid[0:32, 0:32]
    return np.where((yy - 16) ** 2 + (xx - 12 - shift) ** 2 < 60, value, 0).astype(np.uint8)


@pytest.mark.parametrize("value, mode", [(255, "L"), (1, "L"), (255, "1"), (128, "L")])
def test_black_and_white_masks_are_one_segment(tmp_path, value, mode):
    _mask_folder(tmp_path, [_disk_mask(value), _disk_mask(value, shift=4)], mode)
    refs = load_reference_folder(tmp_path)
    assert refs.num_segments == 2 and all(set(np.unique(m.numpy())) == {0, 1} for m in refs.labels)
    if value > 1 and mode != "1":
        assert any(f"binary masks: value {value} read as one segment" in note for note in refs.notes)


def test_named_segments_keep_their_ids_even_when_one_reference_shows_only_one(tmp_path):
    _mask_folder(tmp_path, [_disk_mask(2)])  # only "window" (id 2) is visible in this reference
    (tmp_path / "segments.json").write_text(json.dumps(["background", "wheel", "window"]))
    refs = load_reference_folder(tmp_path)
    assert refs.names == ["background", "wheel", "window"] and set(np.unique(refs.labels[0].numpy())) == {0, 2}


@pytest.mark.parametrize("names", [["background", "wheel", "window"], ["wheel", "window"]])
def test_a_mask_is_not_binary_when_segments_json_names_two_parts(tmp_path, names):
    """With or without the background in the list, two named parts keep the mask's values as ids."""
    _mask_folder(tmp_path, [_disk_mask(2)])
    (tmp_path / "segments.json").write_text(json.dumps(names))
    refs = load_reference_folder(tmp_path)
    assert refs.names == ["background", "wheel", "window"] and set(np.unique(refs.labels[0].numpy())) == {0, 2}
    assert not any("binary masks" in note for note in refs.notes)


def test_cli_says_how_it_read_a_binary_mask(tmp_path, capsys):
    _mask_folder(tmp_path / "refs", [_disk_mask(255)])
    assert cli.main(["learn", "--refs", str(tmp_path / "refs"), "--out", str(tmp_path / "e.safetensors"), "--steps",
                     "1", "--size", "32", "--device", "cpu"]) == 0
    err = capsys.readouterr().err
    assert "binary masks: value 255 read as one segment (id 1)" in err and "2 segments" in err


def test_a_photo_given_as_a_label_is_called_a_photo(tmp_path, capsys):
    rng = np.random.default_rng(0)
    for name, photo in (("colour", rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)),
                        ("grey", rng.integers(0, 256, (32, 32), dtype=np.uint8))):
        root = tmp_path / name
        _png(root / "images" / "a.png", np.zeros((32, 32, 3), np.uint8))
        _png(root / "labels" / "a.png", photo)
        with pytest.raises(InputError, match="looks like a photo"):
            load_reference_folder(root)
        assert cli.main(["learn", "--refs", str(root), "--out", str(tmp_path / "e.safetensors")]) == 2
        line = _one_error_line(capsys)
        assert "a.png" in line and "looks like a photo" in line


# ----------------------------------------------------------------------------- colour keys


def _find_text(image: np.ndarray, text: str, size: int) -> float:
    """Best normalised match of ``text`` drawn in the key font (black on white) anywhere in ``image``."""
    font = key_font(size)
    left, top, right, bottom = font.getbbox(text)
    stamp = Image.new("L", (right - left + 2, bottom - top + 2), 255)
    from PIL import ImageDraw

    ImageDraw.Draw(stamp).text((1 - left, 1 - top), text, fill=0, font=font)
    grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    return float(cv2.matchTemplate(grey, np.asarray(stamp), cv2.TM_CCOEFF_NORMED).max())


def test_summary_picture_has_titles_a_ground_truth_row_and_a_key_from_segments_json(tmp_path):
    from smite_core.commands.demo import SUMMARY_TEXT, summary_picture

    segments = tmp_path / "segments.json"  # as segmentation writes it
    segments.write_text(json.dumps({"segments": ["background", "wheel", "window"], "colors": segment_colors(3)}))
    names = json.loads(segments.read_text())["segments"]
    image, labels = blob_reference(32)
    frame = (image.numpy() * 255).astype(np.uint8)
    gt = labels.numpy()
    sheet = np.asarray(summary_picture(frame, gt, [frame, frame], [gt, np.zeros_like(gt)], names,
                                       ground_truth=[gt, gt], frame_numbers=[0, 7]))
    for text in [*names, "reference", "frame 7", "image", "ground truth", "prediction"]:
        assert _find_text(sheet, text, SUMMARY_TEXT) > 0.9, text
    assert _find_text(sheet, "helicopter", SUMMARY_TEXT) < 0.9  # the check can fail
    colours = {tuple(c) for c in sheet.reshape(-1, 3)}
    assert all(tuple(c) in colours for c in segment_colors(len(names)))  # every segment's swatch is drawn


def test_outputs_carry_the_segment_colours_and_the_overlay_a_key(workspace, tmp_path):
    out = tmp_path / "seg"
    frames = np.tile(np.linspace(0, 255, 256, dtype=np.uint8)[None, :, None], (256, 1, 3))
    for t in range(2):
        _png(tmp_path / "video" / f"{t}.png", frames)
    assert cli.main(["segment", "--video", str(tmp_path / "video"), "--embedding", str(workspace / "emb.safetensors"),
                     "--out", str(out), "--size", "32", *FAST[:-2], "--overlay", "gif"]) == 0
    data = json.loads((out / "segments.json").read_text())
    assert data["colors"] == palette(256)[:len(data["segments"])].tolist()
    from smite_core.io.video_io import open_frames, overlay

    with open_frames(out / "overlay.gif") as video:
        shown = (video.read(0, 1)[0].numpy() * 255).round().astype(np.uint8)
    plain = (overlay(torch.from_numpy(frames / 255.0)[None], torch.zeros(1, 256, 256, dtype=torch.long))[0].numpy()
             * 255).round().astype(np.uint8)
    corner = np.abs(shown[:40, :80].astype(int) - plain[:40, :80].astype(int)).mean()
    elsewhere = np.abs(shown[200:, 150:].astype(int) - plain[200:, 150:].astype(int)).mean()
    assert corner > 20 * max(elsewhere, 1)  # the key is drawn in the top-left corner


@pytest.mark.parametrize("names", [["background", "wheel", "window"], ["wheel", "window"]])
def test_vote_overlay_key_names_each_id_as_references_do(tmp_path, monkeypatch, names):
    """smite vote's colour key reads segments.json as the references do: a list without the background
    names ids 1.. (never id 0)."""
    import smite_core.io.video_io as video_io

    for t in range(2):
        _png(tmp_path / "video" / f"{t}.png", np.full((32, 32, 3), 90, np.uint8))
        labels = np.zeros((32, 32), np.uint8)
        labels[4:12, 4:12], labels[20:28, 20:28] = 1, 2
        save_label_png(tmp_path / "labels" / f"{t}.png", labels)
    (tmp_path / "labels" / "segments.json").write_text(json.dumps(names))
    keys = []
    real = video_io.overlay
    monkeypatch.setattr(video_io, "overlay", lambda *a, **k: keys.append(k.get("names")) or real(*a, **k))
    assert cli.main(["vote", "--video", str(tmp_path / "video"), "--labels", str(tmp_path / "labels"),
                     "--out", str(tmp_path / "out"), "--tracker", "static", "--overlay", "gif"]) == 0
    assert keys and all(key == ["background", "wheel", "window"] for key in keys), keys


# ----------------------------------------------------------------------------- help


def _subparsers(parser):
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return action.choices


@pytest.mark.parametrize("command", ["demo", "learn", "segment", "vote", "eval", "bench"])
def test_help_shows_every_default_describes_every_option_and_ends_with_examples(command):
    sub = _subparsers(cli.build_parser())[command]
    text = sub.format_help()
    for action in sub._actions:
        if not action.option_strings or action.help == argparse.SUPPRESS or "-h" in action.option_strings:
            continue
        assert action.help and len(action.help) > 10, action.option_strings
        default = action.default
        if default in (None, False):
            continue
        shown = {str(default), f"{default:g}" if isinstance(default, float) else str(default)}
        assert any(f"default {s}" in action.help for s in shown), (action.option_strings, action.help)
    examples = text.split("examples:")[-1].strip().splitlines()
    assert "examples:" in text and len(examples) == 2 and all(e.strip().startswith("smite ") for e in examples)
    if command == "learn":
        assert "REFS/images/<name>" in text and "0 = background" in text and "0/255" in text


# ----------------------------------------------------------------------------- stopping within one pass


class _Stop(Exception):
    pass


def test_learning_stops_within_one_pass(tiny_backbone, monkeypatch):
    """The interrupt hook (ComfyUI's Cancel) runs after every forward and backward pass: asked to stop
    during the third UNet pass, learning raises before any further pass."""
    import smite_core.method.learn as learn

    image, labels = blob_reference(32)
    refs = reference_set_from_label_maps(image[None], labels[None], ["background", "a", "b"])
    passes, stop = [], {"asked": False}
    real = learn.unet_forward

    def counted(*args, **kwargs):
        passes.append(1)
        if len(passes) == 3:
            stop["asked"] = True
        return real(*args, **kwargs)

    def interrupt():
        if stop["asked"]:
            raise _Stop

    monkeypatch.setattr(learn, "unet_forward", counted)
    with pytest.raises(_Stop):
        learn_embedding(tiny_backbone, refs, LearnConfig(steps=10, size=32), interrupt=interrupt)
    assert len(passes) == 3


def test_segmentation_stops_within_one_pass(tiny_backbone, monkeypatch):
    import smite_core.method.segment as segment
    from smite_core.method.embedding import SegmentEmbedding

    g = torch.Generator().manual_seed(0)
    embedding = SegmentEmbedding(torch.randn(2, tiny_backbone.context_dim, generator=g), ["background", "a", "b"],
                                 tiny_backbone.fingerprint)
    passes, stop = [], {"asked": False}
    real = segment.unet_forward

    def counted(*args, **kwargs):
        passes.append(1)
        stop["asked"] = len(passes) == 2  # the guidance's first iteration
        return real(*args, **kwargs)

    def interrupt():
        if stop["asked"]:
            raise _Stop

    monkeypatch.setattr(segment, "unet_forward", counted)
    config = dataclasses.replace(SegmentConfig(size=32, window=4, overlap=2), guide_iters=3)
    with pytest.raises(_Stop):
        segment_frames(tiny_backbone, embedding, torch.rand(6, 32, 32, 3, generator=g), config, interrupt=interrupt)
    assert len(passes) == 2


def test_the_comfyui_overlay_has_the_key_too():
    from graph_runner import load_pack

    pack = load_pack()
    from smite_pack_under_test.nodes.wires import Segments

    names = ["background", "hair", "skin"]
    frames = torch.full((2, 256, 256, 3), 0.5)
    labels = torch.zeros(2, 256, 256, dtype=torch.uint8)
    segments = Segments(scores=torch.zeros(2, 3, 8, 8, dtype=torch.float16), labels=labels, names=names, frames=frames)
    (shown,) = pack.NODE_CLASS_MAPPINGS["SMITE_Overlay"]().paint(segments)
    corner = (shown[0, :40, :80] * 255).round().to(torch.uint8).numpy()
    assert _find_text(corner, "hair", 8) > 0.9 or _find_text(corner, "hair", 10) > 0.9
    assert torch.equal(shown[:, 200:, 200:], frames[:, 200:, 200:])  # the rest of the frame untouched
