"""Mattes a compositor reads: one greyscale PNG sequence per part, and one multi-layer EXR per frame.

- ``png8`` / ``png16``: ``mattes/<part>/<frame>.png`` (with both: ``mattes_8bit/`` and ``mattes_16bit/``), 8- or
  16-bit greyscale. ``soft`` mattes are the part's
  probability (0..1 scaled to 255 or 65535); the parts of one pixel always sum to exactly 255 or 65535
  (:func:`quantized_partition`: each value rounded down, the rest given to the largest remainders, a tie to the
  lower segment id, so where two parts are within one quantisation step the mattes' argmax may differ from the label
  map; the EXR keeps it exactly). ``hard``
  mattes are the label map's part as 0 or full white.
- ``exr``: ``exr/<frame>.exr``, half float, one layer per part with its matte in the channel ``<part>.A``
  (Nuke, Resolve and Blender show each as a layer holding an alpha channel; Cryptomatte-style "every part its
  own named layer in one file"). Compression ZIP (default), DWAA or none (OpenEXR keeps channels named ``A``
  lossless under DWAA, so it is larger than ZIP here; it is there for pipelines that ask for it). Its argmax over
  the layers is the label map exactly: where rounding to half float made two parts tie, the labelled part is raised
  by one half-float step. Written with the OpenEXR package (the ``vfx`` extra).

``<part>`` is the segment's name made safe as a file and layer name (:func:`safe_part_names`); ``<frame>`` is
``start_frame + index`` zero-padded to ``frame_padding`` digits. Background (segment 0) gets a matte like any part.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import InputError
from ..settings import check_ranges, ranged

MATTE_FORMATS = ("png8", "png16", "exr")
MATTE_KINDS = ("soft", "hard")
EXR_COMPRESSIONS = ("zip", "dwaa", "none")
EXR_INSTALL = 'pip install "smite-segment[vfx]" (or pip install openexr)'
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")
BAND_BYTES = 64 * 2**20  # about this much float64 work memory per band of rows (a 4K frame of 20 parts: 45 rows)
MAX_NAME = 100  # characters of a part's file name
_RESERVED = {"con", "prn", "aux", "nul", *(f"com{i}" for i in range(10)), *(f"lpt{i}" for i in range(10))}


@dataclass
class MatteSettings:
    """Which mattes to write and how their frames are numbered (the one source of these defaults)."""

    formats: tuple[str, ...] = ()  # any of MATTE_FORMATS; empty: no mattes
    kind: str = "soft"  # soft: the part's probability; hard: the label map's part
    start_frame: int = ranged(0, 0, 999_999)
    frame_padding: int = ranged(5, 1, 9)  # digits of the frame number
    exr_compression: str = "zip"
    video: str = ""  # a part (name or index) whose matte is also written as a video, matte_<part>.mp4; "": none

    def validate(self) -> None:
        check_ranges(self)
        for fmt in self.formats:
            if fmt not in MATTE_FORMATS:
                raise InputError(f"mattes: {fmt!r} is not one of {', '.join(MATTE_FORMATS)}")
        if len(set(self.formats)) != len(self.formats):
            raise InputError(f"mattes: {', '.join(self.formats)} names a format twice")
        if self.kind not in MATTE_KINDS:
            raise InputError(f"matte-kind: {self.kind!r} is not one of {', '.join(MATTE_KINDS)}")
        if self.exr_compression not in EXR_COMPRESSIONS:
            raise InputError(f"exr-compression: {self.exr_compression!r} is not one of {', '.join(EXR_COMPRESSIONS)}")
        if "exr" in self.formats:
            require_openexr()

    def video_part(self, names: list[str]) -> int | None:
        """The segment index of ``video`` among ``names`` (background first), or None when no matte video is
        asked for; refused in one line when ``video`` names no segment."""
        return part_index(names, self.video, "matte-video") if str(self.video).strip() else None

    def check_numbering(self, num_frames: int, what: str = "frame-padding") -> None:
        """Refuse (one line naming ``what``) a ``frame_padding`` too short for the last frame number: the names would
        change width."""
        last = self.start_frame + max(1, int(num_frames)) - 1
        if self.formats and len(str(last)) > self.frame_padding:
            raise InputError(f"{what}: {self.frame_padding} digits cannot number frame {last} (start frame "
                             f"{self.start_frame} + {num_frames} frames); use {len(str(last))} or more")

    def frame_name(self, index: int) -> str:
        return f"{self.start_frame + index:0{self.frame_padding}d}"


def require_openexr():
    """The OpenEXR module, or one line saying how to install it."""
    try:
        import OpenEXR
    except ImportError:
        raise InputError(f"mattes exr: the OpenEXR package is not installed; {EXR_INSTALL}") from None
    return OpenEXR


def safe_part_names(names: list[str]) -> list[str]:
    """File and layer names for the segments: accents dropped (``Köpf`` -> ``Kopf``), letters, digits, ``_`` and
    ``-`` kept, other runs of characters become ``_``, at most ``MAX_NAME`` characters; an empty result is
    ``part<i>``, a name Windows reserves (``con``, ``nul``, ``com1``...) gets a ``_``; repeats get ``_2``, ``_3``...
    (case-insensitively, for file systems that ignore case)."""
    out, seen = [], set()
    for i, name in enumerate(names):
        ascii_name = unicodedata.normalize("NFKD", str(name)).encode("ascii", "ignore").decode()
        base = _UNSAFE.sub("_", ascii_name).strip("_")[:MAX_NAME].strip("_") or f"part{i}"
        if base.lower() in _RESERVED:
            base += "_"
        safe, n = base, 2
        while safe.lower() in seen:
            safe, n = f"{base}_{n}", n + 1
        seen.add(safe.lower())
        out.append(safe)
    return out


def part_index(names: list[str], choice, what: str = "segment", others: str = "") -> int:
    """The index of a segment given by its name (any case), its safe file name, or its number (0 = background);
    one line naming ``what`` otherwise (``others``: what else the input accepts, said in that line)."""
    text = str(choice).strip()
    for candidates in ([n.lower() for n in names], [n.lower() for n in safe_part_names(names)]):
        if text.lower() in candidates:
            return candidates.index(text.lower())
    if text.lstrip("-").isdigit():
        if 0 <= int(text) < len(names):
            return int(text)
        raise InputError(f"{what}: index {text} outside 0..{len(names) - 1} "
                         f"({', '.join(f'{i}={n}' for i, n in enumerate(names))})")
    raise InputError(f"{what}: {text!r} is not one of {', '.join(names)} (or an index 0..{len(names) - 1}{others})")


def probabilities(scores: np.ndarray) -> np.ndarray:
    """Softmax over the segments of per-pixel scores ``[K,H,W]`` -> float32 probabilities ``[K,H,W]``."""
    scores = np.asarray(scores, dtype=np.float32)
    e = np.exp(scores - scores.max(axis=0, keepdims=True))
    return e / e.sum(axis=0, keepdims=True)


def quantized_partition(probs: np.ndarray, total: int) -> np.ndarray:
    """Integers ``[K,H,W]`` proportional to ``probs`` (each pixel's sum 1) that sum to exactly ``total`` on every
    pixel: rounded down, then one more for the pixel's largest remainders (uint8 for 255, else uint16)."""
    scaled = np.asarray(probs, dtype=np.float64) * total
    base = np.floor(scaled)
    missing = np.clip((total - base.sum(axis=0)).round(), 0, len(probs)).astype(np.int64)  # 0..K-1 per pixel
    order = np.argsort(-(scaled - base), axis=0, kind="stable")  # largest remainder first
    ranks = np.empty_like(order)
    np.put_along_axis(ranks, order, np.arange(len(probs))[:, None, None], axis=0)
    out = base + (ranks < missing[None])
    return out.astype(np.uint8 if total == 255 else np.uint16)


def hard_mattes(labels: np.ndarray, num_segments: int, total: int) -> np.ndarray:
    """One-hot mattes ``[K,H,W]`` of a label map ``[H,W]``: ``total`` where the pixel is the part, else 0."""
    onehot = np.asarray(labels)[None] == np.arange(num_segments)[:, None, None]
    return (onehot * total).astype(np.uint8 if total == 255 else np.uint16)


def exr_layers(probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Half-float mattes ``[K,H,W]`` whose argmax is ``labels [H,W]`` exactly (ties after rounding broken
    toward the label by one half-float step)."""
    half = np.asarray(probs, dtype=np.float16)
    labels = np.asarray(labels).astype(np.int64)
    wrong = half.argmax(axis=0) != labels
    if wrong.any():
        ys, xs = np.nonzero(wrong)
        top = half[:, ys, xs].max(axis=0)
        half[labels[ys, xs], ys, xs] = np.nextafter(top, np.float16(np.inf))
    return half


def write_png_matte(path: Path, matte: np.ndarray) -> None:
    """An 8-bit (uint8) or 16-bit (uint16) greyscale PNG."""
    image = Image.fromarray(np.ascontiguousarray(matte))  # uint8: "L", uint16: "I;16"
    if image.mode not in ("L", "I;16"):
        raise ValueError(f"a matte must be uint8 or uint16, not {matte.dtype}")
    image.save(path, format="PNG", compress_level=1)


def write_exr(path: Path, layers: np.ndarray, names: list[str], compression: str) -> None:
    """One scanline EXR: channel ``<name>.A`` (half float) per layer of ``layers [K,H,W]``."""
    exr = require_openexr()
    codes = {"zip": exr.ZIP_COMPRESSION, "dwaa": exr.DWAA_COMPRESSION, "none": exr.NO_COMPRESSION}
    header = {"compression": codes[compression], "type": exr.scanlineimage}
    channels = {f"{name}.A": np.ascontiguousarray(layer) for name, layer in zip(names, layers)}
    with exr.File(header, channels) as f:
        f.write(str(path))


class MatteWriter:
    """Writes the mattes of :class:`MatteSettings` into ``folder`` frame by frame (:meth:`write`)."""

    def __init__(self, folder: Path, names: list[str], settings: MatteSettings):
        self.folder, self.settings = Path(folder), settings
        self.parts = safe_part_names(names)
        self.pngs = [f for f in settings.formats if f.startswith("png")]
        for fmt in self.pngs:
            for part in self.parts:
                (self.folder / self._png_root(fmt) / part).mkdir(parents=True, exist_ok=True)
        if "exr" in settings.formats:
            (self.folder / "exr").mkdir(parents=True, exist_ok=True)

    def _png_root(self, fmt: str) -> str:
        return "mattes" if len(self.pngs) == 1 else f"mattes_{fmt[3:]}bit"

    def record(self) -> dict:
        """What ``segments.json`` says of the mattes: formats, kind, numbering, and each part's file name."""
        s = self.settings
        return {"formats": list(s.formats), "kind": s.kind, "start_frame": s.start_frame,
                "frame_padding": s.frame_padding,
                "folders": {fmt: self._png_root(fmt) for fmt in self.pngs},
                "exr": {"folder": "exr", "compression": s.exr_compression, "channel": "<part>.A"}
                if "exr" in s.formats else None, "parts": self.parts}

    def write(self, index: int, scores: np.ndarray, labels: np.ndarray) -> None:
        """Frame ``index``: per-class ``scores [K,H,W]`` at the frame size (the upsampled WAS) and its label map
        ``[H,W]`` (their argmax). Worked in bands of rows (about ``BAND_BYTES`` of float64 each), so a 4K frame needs
        no float64 ``[K,H,W]``."""
        s, name = self.settings, self.settings.frame_name(index)
        k, height = len(self.parts), labels.shape[0]
        rows = max(1, BAND_BYTES // (8 * k * labels.shape[1]))
        pngs = {fmt: np.empty((k, *labels.shape), np.uint8 if fmt == "png8" else np.uint16) for fmt in self.pngs}
        exr = np.empty((k, *labels.shape), np.float16) if "exr" in s.formats else None
        for top in range(0, height, rows):
            band = slice(top, top + rows)
            probs = probabilities(scores[:, band]) if s.kind == "soft" else None
            for fmt, out in pngs.items():
                total = 255 if fmt == "png8" else 65535
                out[:, band] = quantized_partition(probs, total) if probs is not None else \
                    hard_mattes(labels[band], k, total)
            if exr is not None:
                exr[:, band] = exr_layers(probs, labels[band]) if probs is not None else \
                    hard_mattes(labels[band], k, 1).astype(np.float16)
        for fmt, out in pngs.items():
            for part, matte in zip(self.parts, out):
                write_png_matte(self.folder / self._png_root(fmt) / part / f"{name}.png", matte)
        if exr is not None:
            write_exr(self.folder / "exr" / f"{name}.exr", exr, self.parts, s.exr_compression)
