"""Frames in and videos out: lazy frame sources, label overlays and streaming video writers.

A :class:`FrameSource` gives frames float32 ``[n,H,W,3]`` in 0..1 on demand from a folder of
images, a video file (PyAV) or a tensor. Video files are decoded forward only, keeping a small
buffer of the last decoded frames, so memory stays flat in the video length when windows are read
in increasing, overlapping order. :func:`open_video_writer` streams frames to ``.mp4``/``.gif``.
"""

from __future__ import annotations

import contextlib
import os
from collections import OrderedDict
from fractions import Fraction
from pathlib import Path
from typing import Iterator

import av
import numpy as np
import torch
from PIL import Image

from ..checks import require_finite
from ..errors import InputError, reason
from .fileio import atomic_path
from .label_png import palette
from .legend import with_key
from .references import load_image, natural_key

FRAME_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
VIDEO_EXTENSIONS = (".mp4", ".mov", ".webm", ".mkv", ".avi", ".gif")
DEFAULT_FPS = 24.0
_AV_ERRORS = (av.error.FFmpegError, OSError, ValueError, EOFError)


# ----------------------------------------------------------------------------- sources


class FrameSource:
    """Random-access frames ``float32 [n,H,W,3]`` in 0..1 with ``num_frames``, ``height``,
    ``width``, ``fps`` and ``names`` (one name per frame, for output files).

    Make one with :meth:`open_frames` (folder or video file) or :meth:`from_tensor`.
    """

    def __init__(self, num_frames: int, height: int, width: int, fps: float, names: list[str]):
        self._num_frames, self._height, self._width = num_frames, height, width
        self._fps, self._names = float(fps), list(names)

    num_frames = property(lambda self: self._num_frames, doc="Number of frames T.")
    height = property(lambda self: self._height, doc="Frame height H in pixels.")
    width = property(lambda self: self._width, doc="Frame width W in pixels.")
    fps = property(lambda self: self._fps, doc="Frames per second (24.0 for folders/tensors).")
    names = property(lambda self: list(self._names), doc="Per-frame names (stems or 00000..).")

    def __len__(self) -> int:
        return self._num_frames

    @staticmethod
    def open_frames(path: str | os.PathLike, buffer_frames: int = 16) -> "FrameSource":
        """See :func:`open_frames`."""
        return open_frames(path, buffer_frames)

    @staticmethod
    def from_tensor(frames: torch.Tensor, fps: float = DEFAULT_FPS) -> "FrameSource":
        """Wrap frames float ``[T,H,W,3]`` in 0..1 (e.g. a ComfyUI IMAGE batch)."""
        return _TensorFrames(frames, fps)

    def read(self, start: int, stop: int) -> torch.Tensor:
        """Frames ``start..stop-1`` as float32 ``[stop-start,H,W,3]`` in 0..1."""
        if not 0 <= start <= stop <= self._num_frames:
            raise ValueError(f"frame range {start}..{stop} outside 0..{self._num_frames}")
        return self._read(start, stop)

    def _read(self, start: int, stop: int) -> torch.Tensor:
        raise NotImplementedError

    def close(self) -> None:
        """Release open files (video sources); reading afterwards re-opens them."""

    def __enter__(self) -> "FrameSource":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class _TensorFrames(FrameSource):
    """Frames ``[T,H,W,C]``: C = 3, 1 (grey, replicated) or 4 (alpha dropped); integer frames are
    uint8 0..255. A window holding NaN or infinite values is refused when it is read."""

    def __init__(self, frames: torch.Tensor, fps: float):
        frames = torch.as_tensor(frames)
        if frames.ndim != 4 or frames.shape[3] not in (1, 3, 4):
            raise InputError(f"frames: expected a [T,H,W,3] batch, got shape {tuple(frames.shape)}")
        if min(frames.shape) == 0:
            raise InputError(f"frames: empty batch (shape {tuple(frames.shape)}), no frames to segment")
        if not (frames.is_floating_point() or frames.dtype in (torch.uint8, torch.bool)):
            raise InputError(f"frames: {frames.dtype} frames; give float 0..1 or uint8 0..255")
        t, h, w, _ = frames.shape
        super().__init__(t, h, w, fps, [f"{i:05d}" for i in range(t)])
        self._frames = frames

    def _read(self, start: int, stop: int) -> torch.Tensor:
        out = self._frames[start:stop]
        if out.dtype == torch.bool:
            out = out.to(torch.float32)
        elif not out.is_floating_point():
            out = out.to(torch.float32) / 255.0
        require_finite(out, "frames", "frame", first=start)
        out = out.to(torch.float32)
        return out.expand(-1, -1, -1, 3) if out.shape[3] == 1 else out[..., :3]


def _oriented_size(path: Path) -> tuple[int, int]:
    """(height, width) of an image after EXIF orientation, reading only its header."""
    try:
        with Image.open(path) as image:
            width, height = image.size
            orientation = image.getexif().get(0x0112, 1)
    except Exception as err:  # PIL raises OSError, SyntaxError, ValueError, ...
        raise InputError(f"{path}: cannot read frame ({reason(err)})") from err
    return (width, height) if orientation in (5, 6, 7, 8) else (height, width)


class _FolderFrames(FrameSource):
    def __init__(self, folder: Path):
        files = sorted(
            (p for p in folder.iterdir()
             if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in FRAME_EXTENSIONS),
            key=lambda p: natural_key(p.name),
        )
        if not files:
            raise InputError(f"{folder}: no frames ({', '.join(FRAME_EXTENSIONS)})")
        height, width = _oriented_size(files[0])
        for path in files[1:]:
            size = _oriented_size(path)
            if size != (height, width):
                raise InputError(
                    f"{path}: frame is {size[1]}x{size[0]} but {files[0].name} is {width}x{height}"
                )
        super().__init__(len(files), height, width, DEFAULT_FPS, [p.stem for p in files])
        self._files = files

    def _read(self, start: int, stop: int) -> torch.Tensor:
        out = torch.empty(stop - start, self.height, self.width, 3, dtype=torch.float32)
        for i in range(start, stop):
            out[i - start] = load_image(self._files[i])
        return out


def _open_container(source):
    """``av.open`` of a path or a binary file object (rewound first: it may have been read before)."""
    if hasattr(source, "seek"):
        source.seek(0)
    return av.open(source if hasattr(source, "read") else str(source))


def _count_video_frames(source, label: str) -> tuple[int, float]:
    """(frame count, fps) of the first video stream, demuxing packets without decoding."""
    try:
        with _open_container(source) as container:
            if not container.streams.video:
                raise InputError(f"{label}: no video stream")
            stream = container.streams.video[0]
            rate = stream.average_rate or stream.guessed_rate
            count = sum(1 for packet in container.demux(stream)
                        if packet.size > 0 and not packet.is_discard)
    except InputError:
        raise
    except _AV_ERRORS as err:
        raise InputError(f"{label}: cannot read video ({reason(err)})") from err
    fps = float(rate) if rate and float(rate) > 0 else DEFAULT_FPS
    return count, fps


class _VideoFrames(FrameSource):
    """Forward-only decoding with a buffer of the last ``buffer_frames`` frames (uint8). ``source``: a path or a
    seekable binary file object; ``label`` names it in errors."""

    def __init__(self, source, buffer_frames: int, label: str):
        self._label = label
        count, fps = _count_video_frames(source, label)
        if count == 0:
            raise InputError(f"{label}: video has no frames")
        self._source = source
        self._buffer: OrderedDict[int, np.ndarray] = OrderedDict()
        self._buffer_frames = max(1, int(buffer_frames))
        self._container = None
        self._decoder = None
        self._next = 0  # index of the frame the decoder yields next
        self._coded_size = None  # (height, width) before rotation
        self._rotation = 0
        first = self._frame(0)
        height, width = first.shape[:2]
        super().__init__(count, height, width, fps, [f"{i:05d}" for i in range(count)])

    def _reopen(self) -> None:
        self.close()
        try:
            self._container = _open_container(self._source)
            self._decoder = self._container.decode(self._container.streams.video[0])
        except _AV_ERRORS as err:
            raise InputError(f"{self._label}: cannot read video ({reason(err)})") from err
        self._next = 0

    def close(self) -> None:
        if self._container is not None:
            self._container.close()
        self._container, self._decoder = None, None

    def _decode_next(self) -> np.ndarray | None:
        """Decode the next frame -> uint8 ``[H,W,3]`` (display orientation), None at the end."""
        try:
            frame = next(self._decoder)
        except StopIteration:
            return None
        except _AV_ERRORS as err:
            raise InputError(f"{self._label}: cannot decode frame {self._next} ({reason(err)})") from err
        if self._coded_size is None:
            self._coded_size = (frame.height, frame.width)
            self._rotation = int(round((frame.rotation or 0) / 90.0)) % 4
        height, width = self._coded_size
        if (frame.height, frame.width) != (height, width):
            raise InputError(f"{self._label}: frame {self._next} is {frame.width}x{frame.height} but the first frame is "
                             f"{width}x{height} (a variable frame size; re-encode the video at one size)")
        array = frame.to_ndarray(format="rgb24", width=width, height=height)
        return np.ascontiguousarray(np.rot90(array, k=self._rotation))

    def _remember(self, index: int, array: np.ndarray) -> None:
        self._buffer[index] = array
        while len(self._buffer) > self._buffer_frames:
            self._buffer.popitem(last=False)

    def _frame(self, index: int) -> np.ndarray:
        """uint8 ``[H,W,3]`` of frame ``index``: from the buffer, decoding on, or re-opening."""
        if index in self._buffer:
            return self._buffer[index]
        if self._decoder is None or index < self._next:
            self._reopen()
        while self._next <= index:
            array = self._decode_next()
            if array is None:  # fewer decodable frames than packets: repeat the last one
                if not self._buffer:
                    raise InputError(f"{self._label}: no decodable frame at index {index}")
                array = next(reversed(self._buffer.values()))
            self._remember(self._next, array)
            self._next += 1
        return self._buffer[index]

    def _read(self, start: int, stop: int) -> torch.Tensor:
        self._buffer_frames = max(self._buffer_frames, stop - start)  # hold the largest window
        out = torch.empty(stop - start, self.height, self.width, 3, dtype=torch.float32)
        for i in range(start, stop):
            out[i - start] = torch.from_numpy(self._frame(i)).to(torch.float32) / 255.0
        return out


def open_frames(path: str | os.PathLike, buffer_frames: int = 16) -> FrameSource:
    """Open a folder of frames (naturally sorted png/jpg/jpeg/webp/bmp/tif/tiff, 24 fps) or a
    video file (mp4/mov/webm/mkv/avi/gif) as a lazy :class:`FrameSource`.

    Video files keep the last ``max(buffer_frames, largest range read so far)`` decoded frames
    (uint8), so every frame of the latest window can be read again cheaply; reading further back
    than that re-opens the file and decodes from the start. If a video decodes to fewer frames than it
    has packets (a damaged tail), the last decodable frame is repeated.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: frames folder or video file does not exist")
    if path.is_dir():
        return _FolderFrames(path)
    if path.suffix.lower() not in VIDEO_EXTENSIONS:
        raise InputError(
            f"{path}: unsupported video type {path.suffix or '(none)'} "
            f"(use a folder of frames or {', '.join(VIDEO_EXTENSIONS)})"
        )
    return _VideoFrames(path, buffer_frames, str(path))


def open_video_stream(source, label: str, buffer_frames: int = 16) -> FrameSource:
    """A video from a path or a seekable binary file object (``io.BytesIO``: e.g. ComfyUI's
    ``VideoInput.get_stream_source()``), decoded window by window as :func:`open_frames` does; ``label`` names
    it in errors. Refused in one line: no video stream, no frames, undecodable data, a variable frame size."""
    if not hasattr(source, "read"):
        path = Path(source)
        if not path.is_file():
            raise InputError(f"{label}: video file {path} does not exist")
        source = path
    return _VideoFrames(source, buffer_frames, label)


# ----------------------------------------------------------------------------- overlay


def _boundaries(labels: torch.Tensor) -> torch.Tensor:
    """bool ``[n,H,W]``: pixels whose right or lower neighbour has another label (1 px lines)."""
    edge = torch.zeros_like(labels, dtype=torch.bool)
    edge[:, :, :-1] |= labels[:, :, :-1] != labels[:, :, 1:]
    edge[:, :-1, :] |= labels[:, :-1, :] != labels[:, 1:, :]
    return edge


def overlay(frames: torch.Tensor, labels: torch.Tensor, alpha: float = 0.5,
            names: list[str] | None = None) -> torch.Tensor:
    """Blend palette colours over the foreground: frames float ``[n,H,W,3]`` 0..1, labels int
    ``[n,H,W]`` -> float32 ``[n,H,W,3]``; segment boundaries are drawn at 35 % brightness. With the
    segment ``names`` (background first) a colour key is drawn in the top-left corner (``legend``)."""
    frames = torch.as_tensor(frames).to(torch.float32)
    labels = torch.as_tensor(labels).to(torch.int64)
    if frames.ndim == 3 and labels.ndim == 2:  # a single frame
        frames, labels = frames[None], labels[None]
    if frames.shape[:3] != labels.shape:
        raise InputError(
            f"overlay: frames {tuple(frames.shape)} and labels {tuple(labels.shape)} differ in size"
        )
    colours = torch.from_numpy(palette(256)).to(torch.float32) / 255.0
    colour = colours[labels.clamp(0, 255)]
    foreground = (labels > 0)[..., None]
    out = torch.where(foreground, (1.0 - alpha) * frames + alpha * colour, frames)
    out = torch.where(_boundaries(labels)[..., None], out * 0.35, out)
    return out if not names else torch.from_numpy(with_key(out.numpy(), list(names)))


# ----------------------------------------------------------------------------- writers


def _to_uint8(frames) -> np.ndarray:
    """float ``[n,H,W,3]`` or ``[H,W,3]`` in 0..1 -> uint8 ``[n,H,W,3]``."""
    frames = torch.as_tensor(frames).detach().cpu().to(torch.float32)
    if frames.ndim == 3:
        frames = frames[None]
    if frames.ndim != 4 or frames.shape[3] != 3:
        raise InputError(f"video writer: expected frames [n,H,W,3], got {tuple(frames.shape)}")
    return (frames.clamp(0.0, 1.0) * 255.0 + 0.5).to(torch.uint8).numpy()


def _gif_frame(array: np.ndarray) -> av.VideoFrame:
    """uint8 ``[H,W,3]`` -> pal8 frame with its own adaptive 256-colour palette."""
    quantised = Image.fromarray(array).quantize(256, method=Image.Quantize.MEDIANCUT)
    rgb = np.asarray(quantised.getpalette()[:768], dtype=np.uint8).reshape(-1, 3)
    rgb = np.pad(rgb, ((0, 256 - len(rgb)), (0, 0)))
    argb = np.concatenate([np.full((256, 1), 255, np.uint8), rgb], axis=1)
    return av.VideoFrame.from_ndarray((np.asarray(quantised), argb), format="pal8")


class VideoWriter:
    """Streams frames into an open PyAV container; made by :func:`open_video_writer`."""

    def __init__(self, container, path: Path, fps: float, kind: str):
        self._container, self._path, self._kind = container, path, kind
        self._rate = Fraction(fps).limit_denominator(1001)
        self._stream = None
        self._size = None  # (height, width) of the first frame
        self.frames_written = 0

    def _add_stream(self, height: int, width: int) -> None:
        if self._kind == "gif":
            stream = self._container.add_stream("gif", rate=self._rate)
            stream.pix_fmt = "pal8"
        else:
            stream = self._add_h264_or_mpeg4()
            stream.pix_fmt = "yuv420p"
            height, width = height + height % 2, width + width % 2
        stream.height, stream.width = height, width
        self._stream = stream

    def _add_h264_or_mpeg4(self):
        try:
            return self._container.add_stream("libx264", rate=self._rate,
                                              options={"crf": "18", "preset": "fast"})
        except _AV_ERRORS:
            stream = self._container.add_stream("mpeg4", rate=self._rate)
            stream.bit_rate = 8_000_000
            return stream

    def write(self, frames) -> None:
        """Append frames float ``[n,H,W,3]`` (or one ``[H,W,3]``) in 0..1, all of one size."""
        for array in _to_uint8(frames):
            if self._stream is None:
                self._size = array.shape[:2]
                self._add_stream(*self._size)
            if array.shape[:2] != self._size:
                raise InputError(
                    f"{self._path}: frame {self.frames_written} is {array.shape[1]}x{array.shape[0]}"
                    f", earlier frames are {self._size[1]}x{self._size[0]}"
                )
            self._encode(array)
            self.frames_written += 1

    def _encode(self, array: np.ndarray) -> None:
        if self._kind == "gif":
            frame = _gif_frame(array)
        else:
            pad = ((0, array.shape[0] % 2), (0, array.shape[1] % 2), (0, 0))
            frame = av.VideoFrame.from_ndarray(np.pad(array, pad, mode="edge"), format="rgb24")
        for packet in self._stream.encode(frame):
            self._container.mux(packet)

    def _finish(self) -> None:
        if self.frames_written == 0:
            raise InputError(f"{self._path}: no frames were written")
        for packet in self._stream.encode(None):
            self._container.mux(packet)


_WRITER_FORMATS = {".mp4": ("mp4", "h264"), ".mov": ("mov", "h264"), ".mkv": ("matroska", "h264"),
                   ".gif": ("gif", "gif")}


@contextlib.contextmanager
def open_video_writer(path: str | os.PathLike, fps: float,
                      overwrite: bool = False) -> Iterator[VideoWriter]:
    """Context manager yielding a :class:`VideoWriter` whose ``write(frames)`` streams frames.

    ``.mp4``/``.mov``/``.mkv``: H.264 (libx264, else MPEG-4 Part 2), yuv420p, odd sizes padded
    to even by repeating the last row/column. ``.gif``: per-frame adaptive palettes. The file
    appears under ``path`` only when the block ends without error; an existing file is refused
    unless ``overwrite``.
    """
    path = Path(path)
    if path.suffix.lower() not in _WRITER_FORMATS:
        raise InputError(f"{path}: unsupported video type (use {', '.join(_WRITER_FORMATS)})")
    if not fps or fps <= 0:
        raise InputError(f"{path}: frame rate must be positive, got {fps}")
    container_format, kind = _WRITER_FORMATS[path.suffix.lower()]
    with atomic_path(path, overwrite=overwrite) as tmp:
        container = av.open(str(tmp), mode="w", format=container_format)
        try:
            writer = VideoWriter(container, path, fps, kind)
            yield writer
            writer._finish()
        except BaseException:
            with contextlib.suppress(Exception):
                container.close()
            raise
        container.close()
