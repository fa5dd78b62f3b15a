"""SMITE_SegmentVideoToFiles: a core VIDEO streamed window by window into a folder of ComfyUI's output.

The production path for long or large shots: the video is decoded from its stream source a window at a time
(never a whole-video IMAGE batch), segmented with ``segment_stream`` and written frame by frame with
``export_segmentation``: label PNGs, ``segments.json``, the overlay video and the mattes compositors read. Memory
is that of one window at the frame size, whatever the video's length.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import time

import torch

from smite_core.errors import InputError
from smite_core.io.mattes import EXR_COMPRESSIONS, MATTE_FORMATS, MATTE_KINDS, MatteSettings, part_index
from smite_core.io.video_io import DEFAULT_FPS, FrameSource, open_video_stream
from smite_core.method.export import export_segmentation
from smite_core.method.inversion import DEFAULT_TIMESTEPS, check_timesteps
from smite_core.method.segment import SegmentConfig, segment_stream
from smite_core.settings import MAX_SIDE, check_value, widget

from . import host
from .segment import (
    DEFAULTS,
    InflatedUNetSegment,
    InvertVideo,
    PassProgress,
    guided_config,
    plain_embedding,
    planned_unet_passes,
    widget_problem,
)
from .wires import EMBEDDING, MODEL

log = logging.getLogger(__name__)

DEFAULT_FOLDER = "smite"
MATTES = MatteSettings()  # the widgets' defaults: the library's matte defaults
_NUMBERED = re.compile(r"^(?P<name>.+)_(?P<n>\d{5,})$")


def check_folder_name(name) -> str:
    """``name`` as one folder name inside ComfyUI's output folder: not empty, no path separators, no ``..``, no
    drive or NUL, not hidden. Raises InputError naming the input otherwise."""
    text = str(name if name is not None else "").strip()
    if not text:
        raise InputError("folder_name: empty; give a name for the output folder (e.g. shot010)")
    if ("/" in text or "\\" in text or "\x00" in text or ".." in text or text.startswith(".")
            or re.match(r"^[A-Za-z]:", text)):
        raise InputError(f"folder_name: {text!r} is not a plain folder name (no '/', '\\', '..', drive or leading "
                         "'.'); the folder is made inside ComfyUI's output folder")
    return text


def reserve_folder(root: str, name: str) -> str:
    """Make and return ``<root>/<name>_00001``, or the next number after those already there (names compared as a
    case-insensitive file system would): made with an exclusive ``mkdir``, so two ComfyUI servers sharing an output
    folder never pick the same one, and a run never replaces an earlier one."""
    os.makedirs(root, exist_ok=True)
    matches = [_NUMBERED.match(entry) for entry in os.listdir(root)]
    numbers = [int(m["n"]) for m in matches if m and m["name"].casefold() == name.casefold()]
    number = max(numbers, default=0) + 1
    while True:
        path = os.path.join(root, f"{name}_{number:05d}")
        try:
            os.mkdir(path)
            return path
        except FileExistsError:
            number += 1


def frame_source(video) -> FrameSource:
    """A VIDEO as a FrameSource read window by window: a file or stream ComfyUI holds is decoded as it is read; a
    video made of frames in memory (``VideoFromComponents``) is read from them."""
    kind, source, fps = host.video_stream(video)
    if kind == "stream":
        return open_video_stream(source, f"video {os.path.basename(source)}" if isinstance(source, str) else "video")
    if not isinstance(source, torch.Tensor):
        raise InputError(f"video: its frames are a {type(source).__name__}, not an IMAGE batch")
    return FrameSource.from_tensor(source, fps=fps if fps and fps > 0 else DEFAULT_FPS)


def _matte_widgets() -> dict:
    d = MATTES
    return {
        **{f"{fmt}_mattes": ("BOOLEAN", {"default": fmt in d.formats, "tooltip": tip}) for fmt, tip in (
            ("png8", "Per-part 8-bit greyscale PNG sequences, mattes/<part>/<frame>.png."),
            ("png16", "Per-part 16-bit greyscale PNG sequences (mattes_16bit/ when 8-bit is written too)."),
            ("exr", "One multi-layer half-float EXR per frame, exr/<frame>.exr, a layer <part>.A per part "
                    "(needs the OpenEXR package: pip install openexr)."))},
        "matte_kind": (list(MATTE_KINDS), {"default": d.kind,
                                           "tooltip": "soft: each part's probability (a pixel's parts sum to white); "
                                                      "hard: the label map's parts."}),
        "start_frame": ("INT", {**widget(MatteSettings, "start_frame"),
                                "tooltip": "Frame number of the first frame in the matte file names (e.g. 1001)."}),
        "frame_padding": ("INT", {**widget(MatteSettings, "frame_padding"),
                                  "tooltip": "Digits of the frame number in the matte file names."}),
        "exr_compression": (list(EXR_COMPRESSIONS), {"default": d.exr_compression,
                                                     "tooltip": "Compression of the EXR files."}),
    }


class SegmentVideoToFiles:
    """Segment a VIDEO into a folder of files, streaming it window by window (flat memory for long 1080p/4K shots)."""

    @classmethod
    def INPUT_TYPES(cls):
        invert, segment = InvertVideo.INPUT_TYPES()["required"], InflatedUNetSegment.INPUT_TYPES()
        return {
            "required": {
                "model": (MODEL, {"tooltip": "The backbone the embedding was learned on."}),
                "embedding": (EMBEDDING, {"tooltip": "Learned (or loaded) segment embedding."}),
                "video": ("VIDEO", {"tooltip": "A core VIDEO (Load Video): decoded window by window, never whole."}),
                **{name: invert[name] for name in ("size", "random_seed", "timestep_min", "timestep_max")},
                **{name: segment["required"][name] for name in ("inflate", "window", "overlap", "guide_steps")},
                "edge_aware": ("BOOLEAN", {"default": True, "tooltip": "Upsample the maps along the frame's edges "
                                                                       "(off: bilinear, faster on large frames)."}),
                "folder_name": ("STRING", {"default": DEFAULT_FOLDER,
                                           "tooltip": "Output sub-folder (a plain name): each run writes "
                                                      "<output>/<name>_00001, _00002, ..."}),
                **_matte_widgets(),
                "preview": ("STRING", {"default": "overlay",
                                       "tooltip": "The VIDEO output: 'overlay' (overlay.mp4), a part (name or index) "
                                                  "whose matte is written as a greyscale video, matte_<part>.mp4, or "
                                                  "'none' (no video: the fastest, for farms that want only the "
                                                  "files)."}),
            },
            "optional": dict(segment["optional"]),
        }

    RETURN_TYPES = ("VIDEO", "STRING")
    RETURN_NAMES = ("video", "folder")
    OUTPUT_TOOLTIPS = ("The overlay video (or the chosen part's matte video), for Save Video / Preview.",
                       "The output folder's path: labels/, segments.json, overlay.mp4, mattes.")
    OUTPUT_NODE = True
    FUNCTION = "segment"
    CATEGORY = "SMITE/segment"
    DESCRIPTION = ("Streams a VIDEO through SMITE window by window and writes the label PNGs, segments.json, an "
                   "overlay video and per-part mattes (PNG sequences, multi-layer EXR) into ComfyUI's output folder. "
                   "Memory stays flat in the video's length.")

    @classmethod
    def VALIDATE_INPUTS(cls, size=None, timestep_min=None, timestep_max=None, window=None, overlap=None,
                        guide_steps=None, folder_name=None, start_frame=None, frame_padding=None):
        return widget_problem(
            ((size,), lambda s: check_value("size", s, 0, MAX_SIDE, integer=True)),
            ((timestep_min, timestep_max), lambda a, b: check_timesteps((a, b))),
            ((window, overlap, guide_steps),
             lambda w, o, g: SegmentConfig(window=w, overlap=o, guide_steps=g).validate()),
            ((start_frame, frame_padding), lambda s, f: MatteSettings(start_frame=s, frame_padding=f).validate()),
            ((folder_name,), check_folder_name))

    def segment(self, model, embedding, video, size=0, random_seed=0, timestep_min=DEFAULT_TIMESTEPS[0],
                timestep_max=DEFAULT_TIMESTEPS[1], inflate=True, window=DEFAULTS.window, overlap=DEFAULTS.overlap,
                guide_steps=DEFAULTS.guide_steps, edge_aware=True,
                folder_name=DEFAULT_FOLDER, png8_mattes=False, png16_mattes=False, exr_mattes=False,
                matte_kind=MATTES.kind, start_frame=MATTES.start_frame, frame_padding=MATTES.frame_padding,
                exr_compression=MATTES.exr_compression, preview="overlay", track_vote=None, low_pass=None):
        config = guided_config(int(size) or None, (timestep_min, timestep_max), random_seed, inflate, window, overlap,
                               guide_steps, track_vote, low_pass)
        chosen = dict(zip(MATTE_FORMATS, (png8_mattes, png16_mattes, exr_mattes)))
        shown = str(preview).strip()
        part = "" if shown.lower() in ("", "overlay", "none") else shown
        mattes = MatteSettings(formats=tuple(f for f in MATTE_FORMATS if chosen[f]), kind=matte_kind,
                               start_frame=int(start_frame), frame_padding=int(frame_padding),
                               exr_compression=exr_compression, video=part)
        mattes.validate()
        if part:  # the preview names a segment: said before any work, naming the node's input
            part_index(embedding.names, part, "preview", ", 'overlay' or 'none'")
        root = host.output_directory()
        name = check_folder_name(folder_name)
        overlay = "mp4" if shown.lower() in ("", "overlay") else None
        with frame_source(video) as source:
            mattes.check_numbering(source.num_frames, "frame_padding")
            out = reserve_folder(root, name)
            try:  # the reserved (empty) folder is replaced by the complete one, or removed
                summary = self._run(model, embedding, source, config, mattes, bool(edge_aware), overlay, out)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.rmdir(out)
                raise
        written = summary["matte_video"] or summary["overlay"]
        if written is None:
            blocked = host.blocked_output("SMITE Segment Video To Files: preview is 'none', no video was written")
            return {"ui": {}, "result": (blocked, out)}
        subfolder = os.path.relpath(out, root).replace(os.sep, "/")
        ui = {"images": [{"filename": os.path.basename(written), "subfolder": subfolder, "type": "output"}],
              "animated": (True,)}
        return {"ui": ui, "result": (host.video_from_file(written), out)}

    @staticmethod
    def _run(model, embedding, source: FrameSource, config: SegmentConfig, mattes: MatteSettings, edge_aware: bool,
             overlay: str | None, out: str) -> dict:
        total = source.num_frames
        bar = PassProgress(planned_unet_passes(config, total) + total, steps=("unet", "write"))
        started = time.perf_counter()
        with torch.inference_mode(False):  # guidance needs gradients; ComfyUI runs nodes in inference mode
            with model.use() as backbone:
                maps = segment_stream(backbone, plain_embedding(embedding), source, config,
                                      say=lambda message: log.warning("SMITE: %s", message), profiler=bar,
                                      interrupt=host.check_interrupt)
                summary = export_segmentation(out, maps, source, embedding.names, overlay_format=overlay,
                                              overwrite=True, edge_aware=edge_aware, profiler=bar, mattes=mattes)
        log.info("SMITE: segmented %d frames of %dx%d into %s (%.0f s%s)", total, source.width, source.height, out,
                 time.perf_counter() - started, ", guided" if config.temporal else "")
        return summary


NODE_CLASS_MAPPINGS = {"SMITE_SegmentVideoToFiles": SegmentVideoToFiles}
NODE_DISPLAY_NAME_MAPPINGS = {"SMITE_SegmentVideoToFiles": "SMITE Segment Video To Files"}
