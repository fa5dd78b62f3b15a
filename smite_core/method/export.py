"""Writing a segmentation to disk, frame by frame, into a complete folder or nothing.

Layout: ``OUT/labels/00000.png ...`` (palette PNGs at the input frame size), ``OUT/overlay.mp4``
(or ``.gif``, with a colour key, at the source's frame rate), ``OUT/segments.json`` (``{"segments": names,
"colors": [[r,g,b], ...], "fps": ...}``: segment ``i`` is palette colour ``i`` in the PNGs and the overlay) and,
when asked, the mattes compositors read (``io.mattes``: ``mattes/<part>/<frame>.png``, ``exr/<frame>.exr``;
``segments.json`` then says how they are named under ``"mattes"``) and one part's matte as a video,
``matte_<part>.mp4`` (``MatteSettings.video``). The folder is assembled under a temporary
name and renamed at the end (``fileio.atomic_dir``).
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Iterable

import torch

from ..errors import InputError
from ..io.fileio import atomic_dir
from ..io.label_png import save_label_png
from ..io.legend import segment_colors
from ..io.mattes import MatteSettings, MatteWriter, safe_part_names
from ..io.video_io import open_video_writer, overlay
from .profiling import NO_PROFILER, Profiler
from .was import class_argmax, upsample_was


def export_segmentation(out_dir: str | os.PathLike, maps: Iterable[tuple[int, torch.Tensor]], source, names: list[str],
                        overlay_format: str | None = "mp4", overwrite: bool = False, edge_aware: bool = True,
                        profiler: Profiler = NO_PROFILER, mattes: MatteSettings | None = None) -> dict:
    """Consume ``(frame_index, WAS [K,h,w])`` pairs in order and write labels, overlay and names.

    ``edge_aware``: upsample the maps along the frame's edges (``edges``), else bilinearly.
    ``profiler`` receives the ``decode``, ``labels`` and ``write`` stages (``profiling``). ``mattes``: which
    matte files to write besides the label maps (``io.mattes.MatteSettings``, checked here; default none).

    ``source`` supplies the frames (``read``, ``height``, ``width``, ``fps``) for sizes and the overlay.
    Returns ``{"frames": n, "labels": dir, "overlay": path | None, "matte_video": path | None, "label_counts": [K]}``.
    A write that fails (a full disk) is one line (``InputError``) and leaves no folder behind.
    """
    out_dir = Path(out_dir)
    mattes = mattes or MatteSettings()
    mattes.validate()
    video_part = mattes.video_part(names)
    mattes.check_numbering(source.num_frames)
    return _export(out_dir, maps, source, names, overlay_format, overwrite, edge_aware, profiler, mattes, video_part)


@contextlib.contextmanager
def _writing(out_dir: Path):
    """A failed write (a full disk, a vanished folder) as one line; ``atomic_dir`` removes the partial folder."""
    try:
        yield
    except OSError as err:
        raise InputError(f"{out_dir}: writing failed ({err.strerror or err}); nothing was kept, run again to "
                         "write it whole") from err


def _export(out_dir: Path, maps, source, names, overlay_format, overwrite, edge_aware, profiler, mattes: MatteSettings,
            video_part: int | None) -> dict:
    size = (source.height, source.width)
    counts = torch.zeros(len(names), dtype=torch.long)
    written = 0
    # _writing outside the ExitStack: the video writers' last packets and trailers are writes too
    with atomic_dir(out_dir, overwrite=overwrite) as tmp, _writing(out_dir), contextlib.ExitStack() as stack:
        (tmp / "labels").mkdir()
        matte_writer = MatteWriter(tmp, names, mattes) if mattes.formats else None
        record = {"segments": list(names), "colors": segment_colors(len(names)), "fps": source.fps}
        if matte_writer is not None:
            record["mattes"] = matte_writer.record()
        part_video_name = f"matte_{safe_part_names(names)[video_part]}.mp4" if video_part is not None else None
        if part_video_name:
            record["matte_video"] = {"file": part_video_name, "segment": names[video_part], "kind": mattes.kind}
        (tmp / "segments.json").write_text(json.dumps(record, indent=1))
        overlay_name = f"overlay.{overlay_format}" if overlay_format else None
        writer = stack.enter_context(open_video_writer(tmp / overlay_name, fps=source.fps)) if overlay_name else None
        part_video = stack.enter_context(open_video_writer(tmp / part_video_name, fps=source.fps)) \
            if part_video_name else None
        for index, was in _read_through(maps, out_dir):
            frame = None
            if edge_aware or writer:
                with profiler.stage("decode"):
                    frame = source.read(index, index + 1)
            with profiler.stage("labels"):  # per-class scores at the frame size, one frame at a time
                scores = upsample_was(was[None], size, frame if edge_aware else None)[0]
                labels = class_argmax(scores)
            counts += torch.bincount(labels.flatten().long(), minlength=len(names))[: len(names)]
            with profiler.stage("write"):
                save_label_png(tmp / "labels" / f"{index:05d}.png", labels.numpy())
                if writer:
                    writer.write(overlay(frame, labels[None], names=names))
                if matte_writer is not None:
                    matte_writer.write(index, scores.numpy(), labels.numpy())
                if part_video is not None:
                    part_video.write(_part_matte(scores, labels, video_part, mattes.kind)[None, :, :, None]
                                     .expand(-1, -1, -1, 3))
            del scores  # [K,H,W] at the frame size: never two alive at once
            written += 1
    return {"frames": written, "labels": str(out_dir / "labels"),
            "overlay": str(out_dir / overlay_name) if overlay_name else None,
            "matte_video": str(out_dir / part_video_name) if part_video_name else None,
            "label_counts": counts.tolist()}


def _read_through(maps, out_dir: Path):
    """``maps`` with an OSError raised while computing them (not a write) kept apart from ``_writing``'s wording."""
    iterator = iter(maps)
    while True:
        try:
            item = next(iterator)
        except StopIteration:
            return
        except OSError as err:
            raise InputError(f"{out_dir}: reading the video failed ({err.strerror or err}); nothing was "
                             "kept") from err
        yield item


def _part_matte(scores: torch.Tensor, labels: torch.Tensor, part: int, kind: str, rows: int = 256) -> torch.Tensor:
    """One part's matte float32 ``[H,W]`` in 0..1: its softmax probability (``soft``, worked out ``rows`` rows at a
    time, so no second ``[K,H,W]`` is made) or its label (``hard``)."""
    if kind == "hard":
        return (labels == part).to(torch.float32)
    out = torch.empty(scores.shape[1:], dtype=torch.float32)
    for top in range(0, scores.shape[1], rows):
        band = scores[:, top:top + rows].float()
        out[top:top + rows] = torch.exp(band[part] - torch.logsumexp(band, dim=0))
    return out
