"""Writing a segmentation to disk, frame by frame, into a complete folder or nothing.

Layout: ``OUT/labels/00000.png ...`` (palette PNGs at the input frame size), ``OUT/overlay.mp4``
(or ``.gif``, with a colour key) and ``OUT/segments.json`` (``{"segments": names, "colors": [[r,g,b],
...]}``: segment ``i`` is palette colour ``i`` in the PNGs and the overlay). The folder is assembled
under a temporary name and renamed at the end (``fileio.atomic_dir``).
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Iterable

import torch

from ..io.fileio import atomic_dir
from ..io.label_png import save_label_png
from ..io.legend import segment_colors
from ..io.video_io import open_video_writer, overlay
from .profiling import NO_PROFILER, Profiler
from .was import labels_from_was


def export_segmentation(out_dir: str | os.PathLike, maps: Iterable[tuple[int, torch.Tensor]], source, names: list[str],
                        overlay_format: str | None = "mp4", overwrite: bool = False, edge_aware: bool = True,
                        profiler: Profiler = NO_PROFILER) -> dict:
    """Consume ``(frame_index, WAS [K,h,w])`` pairs in order and write labels, overlay and names.

    ``edge_aware``: upsample the maps along the frame's edges (``edges``), else bilinearly.
    ``profiler`` receives the ``decode``, ``labels`` and ``write`` stages (``profiling``).

    ``source`` supplies the frames (``read``, ``height``, ``width``, ``fps``) for sizes and the overlay.
    Returns ``{"frames": n, "labels": dir, "overlay": path | None, "label_counts": [K]}``.
    """
    out_dir = Path(out_dir)
    size = (source.height, source.width)
    counts = torch.zeros(len(names), dtype=torch.long)
    written = 0
    with atomic_dir(out_dir, overwrite=overwrite) as tmp, contextlib.ExitStack() as stack:
        (tmp / "labels").mkdir()
        (tmp / "segments.json").write_text(json.dumps({"segments": list(names), "colors": segment_colors(len(names))},
                                                      indent=1))
        overlay_name = f"overlay.{overlay_format}" if overlay_format else None
        writer = stack.enter_context(open_video_writer(tmp / overlay_name, fps=source.fps)) if overlay_name else None
        for index, was in maps:
            frame = None
            if edge_aware or writer:
                with profiler.stage("decode"):
                    frame = source.read(index, index + 1)
            with profiler.stage("labels"):
                labels = labels_from_was(was[None], size, frame if edge_aware else None)[0]
            counts += torch.bincount(labels.flatten().long(), minlength=len(names))[: len(names)]
            with profiler.stage("write"):
                save_label_png(tmp / "labels" / f"{index:05d}.png", labels.numpy())
                if writer:
                    writer.write(overlay(frame, labels[None], names=names))
            written += 1
    return {"frames": written, "labels": str(out_dir / "labels"),
            "overlay": str(out_dir / overlay_name) if overlay_name else None, "label_counts": counts.tolist()}
