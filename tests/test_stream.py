"""SMITE Segment Video To Files (``nodes/stream.py``): a core VIDEO streamed window by window into a numbered folder of
ComfyUI's output; the same files as ``smite segment``; every bad input one line with nothing half-written."""

import errno
import io
import json

import av
import numpy as np
import pytest
import torch
from graph_runner import load_pack

from smite_core.errors import InputError
from smite_core.io.label_png import read_label_png
from smite_core.io.video_io import open_frames, open_video_stream, open_video_writer

EXAMPLE = "smite_example_car.safetensors"
SMALL = {"size": 64, "window": 4, "overlap": 2}  # the working settings of these tests


@pytest.fixture(scope="module")
def pack():
    return load_pack()


@pytest.fixture(scope="module")
def host(pack):
    import sys

    return sys.modules[f"{pack.__name__}.nodes.host"]


@pytest.fixture(scope="module")
def stream_node(pack):
    return pack.NODE_CLASS_MAPPINGS["SMITE_SegmentVideoToFiles"]()


@pytest.fixture(scope="module")
def model_and_embedding(pack):
    nodes = pack.NODE_CLASS_MAPPINGS
    with torch.inference_mode():
        model = nodes["SMITE_ModelLoader"]().load("tiny", "fp32", False, "cpu")[0]
        embedding = nodes["SMITE_LoadEmbedding"]().load(EXAMPLE)[0]
    return model, embedding


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    """A 7-frame 96x128 H.264 clip of the procedural car at 25 fps."""
    from smite_core.procedural import make_video

    path = tmp_path_factory.mktemp("clip") / "car.mp4"
    with open_video_writer(path, fps=25) as writer:
        writer.write(make_video("car", 0, num_frames=7, size=(96, 128)).frames)
    return path


def _ts(width: int, height: int, frames: int) -> bytes:
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="mpegts") as container:
        stream = container.add_stream("libx264", rate=24)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for i in range(frames):
            image = np.full((height, width, 3), 40 * i, np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return buffer.getvalue()


class ComponentsVideo:
    """ComfyUI's VideoFromComponents as far as the node reads it (frames already in memory)."""

    def __init__(self, images, frame_rate):
        self.images, self.frame_rate = images, frame_rate

    def get_components(self):
        from types import SimpleNamespace

        return SimpleNamespace(images=self.images, frame_rate=self.frame_rate, audio=None)


def _run(node, model_and_embedding, video, **widgets):
    model, embedding = model_and_embedding
    with torch.inference_mode():  # as ComfyUI runs nodes
        return node.segment(model, embedding, video, **{**SMALL, **widgets})


def _files(folder):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def test_a_video_file_streams_into_numbered_output_folders(stream_node, model_and_embedding, clip, host, tmp_path,
                                                          monkeypatch):
    pytest.importorskip("OpenEXR")
    monkeypatch.chdir(tmp_path)  # outside ComfyUI the output folder is ./output
    out = _run(stream_node, model_and_embedding, host.video_from_file(str(clip)), folder_name="shot010",
               png16_mattes=True, exr_mattes=True, start_frame=1001, frame_padding=4)
    video, folder = out["result"]
    assert folder == str(tmp_path / "output" / "shot010_00001")
    assert out["ui"] == {"images": [{"filename": "overlay.mp4", "subfolder": "shot010_00001", "type": "output"}],
                         "animated": (True,)}
    assert video.get_stream_source() == str(tmp_path / "output" / "shot010_00001" / "overlay.mp4")
    record = json.loads((tmp_path / "output" / "shot010_00001" / "segments.json").read_text())
    assert record["fps"] == 25.0 and record["mattes"]["formats"] == ["png16", "exr"]
    files = _files(tmp_path / "output" / "shot010_00001")
    assert len([f for f in files if f.startswith("labels/")]) == 7 and "exr/1007.exr" in files
    assert "mattes/body/1001.png" in files and "overlay.mp4" in files
    overlay = open_frames(tmp_path / "output" / "shot010_00001" / "overlay.mp4")
    assert (overlay.num_frames, overlay.height, overlay.width, overlay.fps) == (7, 96, 128, 25.0)
    # a second run never replaces the first; the preview can be one part's matte video
    out = _run(stream_node, model_and_embedding, host.video_from_file(str(clip)), folder_name="shot010",
               preview="wheel", matte_kind="hard")
    second = tmp_path / "output" / "shot010_00002"
    assert out["result"][1] == str(second) and out["ui"]["images"][0]["filename"] == "matte_wheel.mp4"
    assert not (second / "overlay.mp4").exists()  # the preview is the one video written
    matte = open_frames(second / "matte_wheel.mp4").read(0, 7)[..., 0]
    labels = torch.stack([torch.from_numpy(read_label_png(second / "labels" / f"{t:05d}.png")) for t in range(7)])
    assert ((matte > 0.5) == (labels == 3)).float().mean() > 0.97  # the wheel's label, through H.264
    out = _run(stream_node, model_and_embedding, host.video_from_file(str(clip)), folder_name="shot010",
               preview="none")  # no video at all: the VIDEO output stops whoever uses it, saying why
    third = tmp_path / "output" / "shot010_00003"
    assert out["ui"] == {} and "preview is 'none'" in out["result"][0].message and out["result"][1] == str(third)
    assert not list(third.glob("*.mp4")) and len(list((third / "labels").iterdir())) == 7


def test_the_node_writes_the_files_smite_segment_writes(stream_node, model_and_embedding, clip, host, tmp_path,
                                                        monkeypatch, tiny_backbone):
    """Same video and settings: the node and ``smite segment --mattes`` write the same label maps and mattes."""
    import smite_core.model.backbone as backbone_module
    from smite_core.commands.cli import main

    monkeypatch.chdir(tmp_path)
    _run(stream_node, model_and_embedding, host.video_from_file(str(clip)), folder_name="node", png8_mattes=True,
         png16_mattes=True, matte_kind="soft", start_frame=1, frame_padding=3)
    monkeypatch.setattr(backbone_module, "load_backbone", lambda *a, **k: tiny_backbone)
    example = host.full_path("smite", EXAMPLE)
    assert main(["segment", "--video", str(clip), "--embedding", example, "--out", str(tmp_path / "cli"),
                 "--size", "64", "--window", "4", "--overlap", "2", "--tracker", "none", "--track-weight", "0",
                 "--lowpass-weight", "0", "--no-vote-output", "--device", "cpu", "--mattes", "png8", "--mattes",
                 "png16", "--start-frame", "1", "--frame-padding", "3"]) == 0
    node, cli = tmp_path / "output" / "node_00001", tmp_path / "cli"
    assert _files(node) == _files(cli)
    for name in _files(node):
        if name.endswith(".png"):
            assert (node / name).read_bytes() == (cli / name).read_bytes(), name
    assert json.loads((node / "segments.json").read_text()) == json.loads((cli / "segments.json").read_text())


def test_a_video_of_frames_in_memory_is_read_from_its_components(stream_node, model_and_embedding, clip, host,
                                                                 tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    frames = open_frames(clip).read(0, 7)
    from_file = _run(stream_node, model_and_embedding, host.video_from_file(str(clip)), folder_name="a")
    from_components = _run(stream_node, model_and_embedding, ComponentsVideo(frames, 12), folder_name="b")
    a, b = (tmp_path / "output" / "a_00001", tmp_path / "output" / "b_00001")
    assert from_file["result"][1] == str(a) and from_components["result"][1] == str(b)
    for t in range(7):
        assert (read_label_png(a / "labels" / f"{t:05d}.png") == read_label_png(b / "labels" / f"{t:05d}.png")).all()
    assert json.loads((b / "segments.json").read_text())["fps"] == 12.0


@pytest.mark.parametrize("name", ["../up", "a/b", "a\\b", "..", ".hidden", "", "C:evil", "x..y"])
def test_an_output_name_that_leaves_the_folder_is_refused(stream_node, model_and_embedding, clip, host, tmp_path,
                                                          monkeypatch, name):
    monkeypatch.chdir(tmp_path)
    message = stream_node.VALIDATE_INPUTS(64, 95, 105, 4, 2, 1, name, 0, 5)
    assert isinstance(message, str) and message.startswith("folder_name:") and "\n" not in message
    with pytest.raises(InputError, match="^folder_name:"):
        _run(stream_node, model_and_embedding, host.video_from_file(str(clip)), folder_name=name)
    assert not (tmp_path / "output").exists() or not any((tmp_path / "output").iterdir())


def test_bad_videos_are_one_line_and_leave_nothing(stream_node, model_and_embedding, host, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "garbage.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 this is not a video" * 20)
    container = av.open(str(tmp_path / "empty.avi"), mode="w")  # a video stream without a frame
    stream = container.add_stream("mpeg4", rate=24)
    stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
    container.start_encoding()
    container.close()
    cases = [(host.video_from_file(str(tmp_path / "garbage.mp4")), "cannot read video"),
             (host.video_from_file(str(tmp_path / "missing.mp4")), "does not exist"),
             (io.BytesIO(b"garbage" * 100), "cannot read video"),
             (host.video_from_file(str(tmp_path / "empty.avi")), "video empty.avi: video has no frames"),
             (io.BytesIO(_ts(32, 32, 3) + _ts(48, 32, 3)), "frame 3 is 48x32 but the first frame is 32x32"),
             (ComponentsVideo(torch.zeros(0, 32, 32, 3), 24), "empty batch")]
    for video, message in cases:
        if isinstance(video, io.BytesIO):
            video = type("StreamVideo", (), {"get_stream_source": lambda self, v=video: v})()
        with pytest.raises(InputError, match=message) as caught:
            _run(stream_node, model_and_embedding, video, folder_name="bad")
        assert "\n" not in str(caught.value)
    assert not (tmp_path / "output").exists() or not any((tmp_path / "output").iterdir())


def test_a_variable_frame_size_stops_the_cli_in_one_line_too(tmp_path):
    (tmp_path / "v.ts").write_bytes(_ts(32, 32, 3) + _ts(48, 32, 3))
    source = open_video_stream(tmp_path / "v.ts", "v.ts")
    assert source.num_frames == 6
    with pytest.raises(InputError, match="v.ts: frame 3 is 48x32"):
        source.read(0, 6)


def test_a_full_disk_mid_run_removes_the_partial_folder(stream_node, model_and_embedding, clip, host, tmp_path,
                                                        monkeypatch):
    import smite_core.method.export as export_module

    monkeypatch.chdir(tmp_path)
    real, calls = export_module.save_label_png, []

    def fill_up(path, labels):
        calls.append(path)
        if len(calls) == 4:
            raise OSError(errno.ENOSPC, "No space left on device")
        real(path, labels)

    monkeypatch.setattr(export_module, "save_label_png", fill_up)
    with pytest.raises(InputError, match=r"shot_00001: writing failed \(No space left on device\); nothing was kept"):
        _run(stream_node, model_and_embedding, host.video_from_file(str(clip)), folder_name="shot")
    assert len(calls) == 4 and list((tmp_path / "output").iterdir()) == []  # no partial or temporary folder


def test_cancel_mid_run_leaves_nothing(stream_node, model_and_embedding, clip, host, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    passes = []

    def cancel_on_the_third_pass():
        passes.append(1)
        if len(passes) == 3:
            raise KeyboardInterrupt("Cancel")  # stands in for ComfyUI's InterruptProcessingException

    monkeypatch.setattr(host, "check_interrupt", cancel_on_the_third_pass)
    with pytest.raises(KeyboardInterrupt):
        _run(stream_node, model_and_embedding, host.video_from_file(str(clip)), folder_name="shot")
    assert len(passes) == 3 and list((tmp_path / "output").iterdir()) == []


def test_bad_preview_part_and_short_frame_padding_are_said_before_any_work(stream_node, model_and_embedding, clip,
                                                                           host, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(InputError, match="preview: 'tail' is not one of background, body.*'overlay' or 'none'"):
        _run(stream_node, model_and_embedding, host.video_from_file(str(clip)), preview="tail")
    with pytest.raises(InputError, match="frame_padding: 1 digits cannot number frame 15"):
        _run(stream_node, model_and_embedding, host.video_from_file(str(clip)), png8_mattes=True, start_frame=9,
             frame_padding=1)
    assert not (tmp_path / "output").exists() or not any((tmp_path / "output").iterdir())


def test_widgets_take_their_defaults_and_ranges_from_the_library(stream_node):
    from smite_core.io.mattes import MatteSettings
    from smite_core.method.segment import SegmentConfig

    spec = type(stream_node).INPUT_TYPES()
    required = spec["required"]
    assert required["video"][0] == "VIDEO" and set(spec["optional"]) == {"track_vote", "low_pass"}
    assert required["window"][1]["default"] == SegmentConfig.window
    assert required["start_frame"][1]["max"] == 999_999 and required["frame_padding"][1]["default"] == 5
    assert required["matte_kind"][1]["default"] == MatteSettings.kind
    assert type(stream_node).OUTPUT_NODE and type(stream_node).RETURN_TYPES == ("VIDEO", "STRING")


def test_inputs_fed_by_links_are_left_to_the_run_by_validation(stream_node, pack):
    """ComfyUI gives VALIDATE_INPUTS None for an input fed by a link (e.g. folder_name from a String node)."""
    node = type(stream_node)
    assert node.VALIDATE_INPUTS(size=None, timestep_min=None, timestep_max=104, window=None, overlap=2,
                                guide_steps=1, folder_name=None, start_frame=None, frame_padding=5) is True
    assert node.VALIDATE_INPUTS(size=64, timestep_min=95, timestep_max=104, window=4, overlap=2, guide_steps=1,
                                folder_name="../x", start_frame=0, frame_padding=5).startswith("folder_name:")
    assert "size" in node.VALIDATE_INPUTS(size=70000, folder_name="ok")
    segment, invert = (pack.NODE_CLASS_MAPPINGS[n] for n in ("SMITE_InflatedUNetSegment", "SMITE_InvertVideo"))
    assert segment.VALIDATE_INPUTS(window=None, overlap=32, guide_steps=1) is True
    assert "overlap" in segment.VALIDATE_INPUTS(window=16, overlap=32, guide_steps=1)
    assert invert.VALIDATE_INPUTS(size=None, timestep_min=95, timestep_max=None) is True


def test_output_folders_are_reserved_and_numbered_past_every_earlier_one(pack, tmp_path):
    import sys

    stream = sys.modules[f"{pack.__name__}.nodes.stream"]
    root = tmp_path / "output"
    root.mkdir()
    for name in ("Shot_00001", "shot_00007", "shot_123456", "shotx_00009", ".shot_00010.abc.tmp"):
        (root / name).mkdir()
    first = stream.reserve_folder(str(root), "shot")
    second = stream.reserve_folder(str(root), "shot")
    assert first == str(root / "shot_123457") and second == str(root / "shot_123458")
    assert (root / "shot_123457").is_dir()  # made at once: a second server cannot pick it
