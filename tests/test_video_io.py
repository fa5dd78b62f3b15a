from fractions import Fraction

import av
import numpy as np
import pytest
import torch
from PIL import Image

from smite_core.errors import InputError, OutputExistsError
from smite_core.io.label_png import palette
from smite_core.io.video_io import FrameSource, open_frames, open_video_writer, overlay


def _ramp(t, h, w):
    """Frames whose red level encodes the frame index; smooth so codecs keep it."""
    frames = torch.full((t, h, w, 3), 0.2)
    frames[..., 0] = torch.linspace(0.05, 0.95, t)[:, None, None]
    frames[..., 1] = torch.linspace(0.1, 0.6, w)[None, None, :]
    return frames


def _write(path, frames, fps=12.0):
    with open_video_writer(path, fps) as writer:
        writer.write(frames[: len(frames) // 2])
        writer.write(frames[len(frames) // 2:])
    return path


def _count_decodes(source):
    calls = []
    original = source._decode_next

    def counting():
        calls.append(1)
        return original()

    source._decode_next = counting
    return calls


# ----------------------------------------------------------------------------- folders


def test_folder_frames_natural_order(tmp_path):
    frames = _ramp(12, 5, 7)
    for i in range(12):
        Image.fromarray((frames[i].numpy() * 255).round().astype(np.uint8)).save(tmp_path / f"f{i}.png")
    (tmp_path / "notes.txt").write_text("ignored")
    source = open_frames(tmp_path)
    assert (source.num_frames, source.height, source.width, source.fps) == (12, 5, 7, 24.0)
    assert source.names[:3] == ["f0", "f1", "f2"] and source.names[10] == "f10"
    window = source.read(8, 12)
    assert window.shape == (4, 5, 7, 3) and window.dtype == torch.float32
    assert torch.allclose(window, frames[8:12], atol=1 / 255)
    assert source.read(3, 3).shape == (0, 5, 7, 3)
    with pytest.raises(ValueError):
        source.read(10, 13)


def test_folder_errors(tmp_path):
    with pytest.raises(InputError, match="missing"):
        open_frames(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="empty"):
        open_frames(tmp_path / "empty")
    odd = tmp_path / "odd"
    odd.mkdir()
    for name, size in [("a1.png", (8, 6)), ("a2.png", (8, 6)), ("a3.png", (9, 6)), ("a4.png", (9, 6))]:
        Image.new("RGB", size).save(odd / name)
    with pytest.raises(InputError, match="a3.png"):
        open_frames(odd)
    bad = tmp_path / "bad"
    bad.mkdir()
    Image.new("RGB", (4, 4)).save(bad / "0.png")
    (bad / "1.png").write_bytes(b"not an image")
    with pytest.raises(InputError, match="1.png"):
        open_frames(bad)


def test_from_tensor():
    frames = torch.rand(5, 3, 4, 3)
    source = FrameSource.from_tensor(frames)
    assert source.num_frames == 5 and source.names[4] == "00004"
    assert torch.equal(source.read(1, 3), frames[1:3])
    with pytest.raises(InputError, match="frames"):
        FrameSource.from_tensor(torch.rand(5, 3, 4))


# ----------------------------------------------------------------------------- video files


@pytest.mark.parametrize("ext", ["mp4", "gif"])
def test_video_windows_are_decoded_forward_once(tmp_path, ext):
    frames = _ramp(40, 32, 48)
    path = _write(tmp_path / f"clip.{ext}", frames)
    source = open_frames(path)
    assert (source.num_frames, source.height, source.width) == (40, 32, 48)
    assert source.fps == pytest.approx(12.0, rel=0.05)
    assert source.names[0] == "00000"
    calls = _count_decodes(source)
    windows = [source.read(s, min(s + 16, 40)) for s in range(0, 32, 8)]
    assert len(calls) == 40 - 1  # frame 0 was decoded at open; nothing decoded twice
    assert len(source._buffer) <= 16
    red = torch.cat([w[:, :, :, 0].mean(dim=(1, 2)) for w in windows[:1]] + [
        w[8:, :, :, 0].mean(dim=(1, 2)) for w in windows[1:]])
    assert torch.allclose(red, frames[:, 0, 0, 0], atol=0.03)  # frame i really is frame i
    for a, b in zip(windows, windows[1:]):
        assert torch.equal(a[8:], b[: len(a) - 8])
    back = source.read(2, 6)  # further back than the buffer: re-open and decode again
    assert len(calls) == 40 - 1 + 6
    assert torch.equal(back, windows[0][2:6])
    source.close()


def test_buffer_grows_to_the_largest_window(tmp_path):
    source = open_frames(_write(tmp_path / "clip.mp4", _ramp(40, 16, 16)), buffer_frames=4)
    calls = _count_decodes(source)
    for start in (0, 16):
        window = source.read(start, start + 24)
        for i in range(start, start + 24):  # e.g. an exporter re-reading each frame of the window
            assert torch.equal(source.read(i, i + 1)[0], window[i - start])
    assert len(calls) == 40 - 1


def test_odd_sized_video(tmp_path):
    frames = _ramp(6, 37, 51)
    mp4 = open_frames(_write(tmp_path / "odd.mp4", frames))
    assert (mp4.height, mp4.width) == (38, 52)  # padded to even for yuv420p
    assert torch.allclose(mp4.read(0, 6)[:, :37, :51], frames, atol=0.06)
    assert torch.allclose(mp4.read(0, 6)[:, 37], mp4.read(0, 6)[:, 36], atol=0.06)  # edge repeat
    gif = open_frames(_write(tmp_path / "odd.gif", frames))
    assert (gif.height, gif.width, gif.num_frames) == (37, 51, 6)
    assert torch.allclose(gif.read(0, 6), frames, atol=0.03)


def test_display_rotation_is_applied(tmp_path):
    path = tmp_path / "rot.mp4"
    image = np.zeros((16, 32, 3), np.uint8)
    image[:, :8] = 255  # white left band
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=Fraction(10))
        stream.width, stream.height, stream.pix_fmt = 32, 16, "yuv420p"
        stream.set_display_rotation(90)
        for _ in range(3):
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    source = open_frames(path)
    assert (source.height, source.width) == (32, 16)
    frame = source.read(0, 1)[0].mean(dim=2)
    assert frame[-8:].mean() > 0.8 and frame[:-8].mean() < 0.2  # left band rotated to the bottom


def test_video_errors(tmp_path):
    with pytest.raises(InputError, match="clip.txt"):
        (tmp_path / "clip.txt").write_text("x")
        open_frames(tmp_path / "clip.txt")
    (tmp_path / "garbage.mp4").write_bytes(b"\x00\x01garbage" * 100)
    with pytest.raises(InputError, match="garbage.mp4"):
        open_frames(tmp_path / "garbage.mp4")
    data = _write(tmp_path / "good.mp4", _ramp(10, 16, 16)).read_bytes()
    (tmp_path / "trunc.mp4").write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="trunc.mp4"):
        open_frames(tmp_path / "trunc.mp4")
    container = av.open(str(tmp_path / "empty.avi"), "w")  # a video stream without a frame
    stream = container.add_stream("mpeg4", rate=10)
    stream.width, stream.height, stream.pix_fmt = 16, 16, "yuv420p"
    container.start_encoding()
    container.close()
    with pytest.raises(InputError, match="empty.avi: video has no frames"):
        open_frames(tmp_path / "empty.avi")


# ----------------------------------------------------------------------------- writer


def test_writer_is_atomic_and_refuses_existing(tmp_path):
    path = tmp_path / "out.mp4"
    with pytest.raises(RuntimeError):
        with open_video_writer(path, 10) as writer:
            writer.write(_ramp(3, 8, 8))
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(InputError, match="out.mp4"):
        with open_video_writer(path, 10):
            pass  # no frames
    assert list(tmp_path.iterdir()) == []
    _write(path, _ramp(4, 8, 8))
    with pytest.raises(OutputExistsError):
        open_video_writer(path, 10).__enter__()
    with pytest.raises(OutputExistsError):
        _write(path, torch.zeros(6, 8, 8, 3))
    assert open_frames(path).num_frames == 4  # untouched: overwrite was not asked for
    with open_video_writer(path, 10, overwrite=True) as writer:
        writer.write(torch.zeros(7, 8, 8, 3))
    assert open_frames(path).num_frames == 7
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.mp4"]


def test_writer_rejects_bad_input(tmp_path):
    with pytest.raises(InputError, match="clip.avi"):
        open_video_writer(tmp_path / "clip.avi", 10).__enter__()
    with pytest.raises(InputError, match="x.gif"):
        with open_video_writer(tmp_path / "x.gif", 10) as writer:
            writer.write(torch.zeros(2, 8, 8, 3))
            writer.write(torch.zeros(1, 9, 8, 3))
    assert not (tmp_path / "x.gif").exists()


# ----------------------------------------------------------------------------- overlay


def test_overlay_colours_foreground_and_darkens_boundaries():
    frames = torch.full((1, 6, 6, 3), 0.5)
    labels = torch.zeros(1, 6, 6, dtype=torch.long)
    labels[0, 2:5, 2:5] = 1
    out = overlay(frames, labels, alpha=0.5)
    red = torch.tensor(palette(2)[1] / 255.0, dtype=torch.float32)
    assert torch.allclose(out[0, 3, 3], 0.25 + 0.5 * red)  # interior: blended
    assert torch.equal(out[0, 0, 0], frames[0, 0, 0])  # background away from the edge: unchanged
    assert (out[0, 4, 3] < out[0, 3, 3]).all()  # bottom row of the square borders background
    assert (out[0, 1, 3] < frames[0, 1, 3]).all()  # background pixel above the square
    assert torch.equal(out[0, 0, 3], frames[0, 0, 3])  # but only a 1-pixel line
    with pytest.raises(InputError):
        overlay(frames, labels[:, :5])
