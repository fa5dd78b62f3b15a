"""The record of a batch run: the videos found, their output names, ``OUT/batch.json`` and each video's entry.

``batch.json`` records each video: ``status`` (``done``, ``failed``, ``skipped``: complete from an earlier
run, or ``pending``: not finished yet), ``frames``, ``seconds``, ``error`` (one line), ``source`` (size and
modification time of the input) and the ``worker`` (``host:pid``) that did it. It is rewritten atomically
after every video (:class:`RunRecord`), so a crash or Ctrl-C leaves a consistent one. Resuming: a video
whose entry says done with the same ``source``, made with the same settings and embedding, and whose folder
holds its ``frames`` label maps (and overlay) is skipped (:func:`output_complete`).
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from ..errors import InputError, reason
from ..io.fileio import TEMPORARY_NAME, atomic_path
from .lock import LOCK_FILE

BATCH_FILE = "batch.json"

FORMAT = "smite-batch"

FORMAT_VERSION = 1

STATUSES = ("done", "failed", "skipped", "pending")



@dataclass
class VideoTask:
    """One video: its output name, input path, output folder and size in bytes (for longest-first order)."""

    name: str
    video: str
    out: str
    size: int = 0



@dataclass
class BatchResult:
    """What :func:`segment_many` did: the output folder and the content of its ``batch.json``."""

    out: Path
    record: dict

    def names(self, status: str) -> list[str]:
        """Videos of this run with ``status`` (``done``, ``failed``, ``skipped`` or ``pending``)."""
        return [n for n in self.record.get("run", []) if self.record["videos"][n]["status"] == status]

    done = property(lambda self: self.names("done"))
    failed = property(lambda self: self.names("failed"))
    skipped = property(lambda self: self.names("skipped"))
    pending = property(lambda self: self.names("pending"))



def find_videos(specs: str | os.PathLike | Sequence[str | os.PathLike], exclude: str | os.PathLike | None = None
                ) -> list[Path]:
    """Expand ``specs``: video files, frames folders, glob patterns (``"shots/*.mp4"``, only video files and
    folders kept) and ``.txt`` lists (one path or pattern a line, relative to the list; ``#`` comments).

    ``exclude``: a folder left out of pattern matches (the output folder). Refuses a path that does not
    exist and a pattern or list that gives no video. The same video given twice is kept once.
    """
    from ..io.video_io import VIDEO_EXTENSIONS

    specs = [specs] if isinstance(specs, (str, os.PathLike)) else list(specs)
    if not specs:
        raise InputError("--videos: no video given")
    skip = Path(exclude).resolve() if exclude is not None else None
    found: dict[Path, Path] = {}

    def add(spec: str, base: Path | None, where: str) -> int:
        text = str(spec) if base is None or Path(spec).is_absolute() else str(base / spec)
        if any(c in str(spec) for c in "*?["):
            hits = [Path(p) for p in sorted(glob.glob(text, recursive=True))]
            hits = [p for p in hits if (p.is_dir() or p.suffix.lower() in VIDEO_EXTENSIONS)
                    and not (skip is not None and (p.resolve() == skip or skip in p.resolve().parents))]
            if not hits:
                raise InputError(f"{where}: {spec!r} matches no video file or frames folder")
        elif str(spec).lower().endswith(".txt") and Path(text).is_file():
            lines = [s.strip() for s in Path(text).read_text(errors="replace").splitlines()]
            count = sum(add(s, Path(text).parent, str(text)) for s in lines if s and not s.startswith("#"))
            if not count:
                raise InputError(f"{text}: lists no video")
            return count
        elif not Path(text).exists():
            raise InputError(f"{text}: no such video file or frames folder")
        else:
            hits = [Path(text)]
        for hit in hits:
            found.setdefault(hit.resolve(), hit)
        return len(hits)

    for spec in specs:
        add(spec, None, "--videos")
    return list(found.values())



def video_name(path: Path) -> str:
    """The output folder name of a video: the file's stem or the frames folder's name."""
    path = Path(path)
    return path.name if path.is_dir() else path.stem



def plan_tasks(paths: Sequence[Path], out: Path) -> list[VideoTask]:
    """One :class:`VideoTask` per video, refusing two videos with one output name."""
    tasks: dict[str, VideoTask] = {}
    given: dict[str, Path] = {}
    for path in paths:
        name = video_name(path)
        if not name or name.startswith(".") or name == BATCH_FILE:
            raise InputError(f"{path}: its output name {name!r} is reserved; rename the video")
        if name in tasks:
            raise InputError(f"{given[name]} and {path} would both write {out / name}; rename one "
                             "(a video's output is named by its file stem or folder name)")
        given[name] = path
        tasks[name] = VideoTask(name, str(Path(path).resolve()), str((out / name).resolve()), _input_size(path))
    return list(tasks.values())



def _input_size(path: Path) -> int:
    path = Path(path)
    if path.is_dir():
        return sum(p.stat().st_size for p in path.iterdir() if p.is_file())
    return path.stat().st_size



def source_key(path: str | os.PathLike) -> str:
    """Identity of an input as it is now: size and modification time of the file, or of every file of a
    frames folder (a changed video is redone on resume)."""
    path = Path(path)
    try:
        if path.is_dir():
            entries = sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in path.iterdir() if p.is_file())
            return "folder:" + hashlib.sha256(json.dumps(entries).encode()).hexdigest()[:32]
        stat = path.stat()
    except OSError:
        return "missing"
    return f"file:{stat.st_size}:{stat.st_mtime_ns}"



def remove_leftovers(out: Path, name: str | None = None) -> list[str]:
    """Remove the temporary files and folders a killed writer left in ``out`` (of the video ``name`` only,
    or all). Returns the names removed."""
    removed = []
    try:
        entries = list(Path(out).iterdir())
    except OSError:
        return removed
    for path in entries:
        match = TEMPORARY_NAME.match(path.name)
        if match and (name is None or match.group("name") == name):
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
            removed.append(path.name)
    return removed



def output_complete(folder: Path, entry: dict | None, source: str, overlay: str | None) -> bool:
    """Whether ``folder`` is the complete result its record ``entry`` describes for the input ``source``."""
    if not entry or entry.get("status") not in ("done", "skipped") or entry.get("source") != source:
        return False
    frames, labels = entry.get("frames"), Path(folder) / "labels"
    if not isinstance(frames, int) or frames < 1 or not labels.is_dir():
        return False
    if not (Path(folder) / "segments.json").is_file():
        return False
    if sum(1 for p in labels.iterdir() if p.suffix == ".png") != frames:
        return False
    return overlay is None or (Path(folder) / f"overlay.{overlay}").is_file()



def read_record(out: Path) -> dict | None:
    """The ``batch.json`` of ``out`` (None if there is none); a damaged one is an :class:`InputError`."""
    path = Path(out) / BATCH_FILE
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise InputError(f"{path}: not a readable batch record ({short_reason(err, 120)})") from None
    if not isinstance(record, dict) or record.get("format") != FORMAT or not isinstance(record.get("videos"), dict):
        raise InputError(f"{path}: not a smite batch record")
    if not isinstance(record.get("format_version"), int) or record["format_version"] > FORMAT_VERSION:
        raise InputError(f"{path}: batch record version {record.get('format_version')!r} is not one this SMITE "
                         f"reads ({FORMAT_VERSION})")
    return record



def write_record(out: Path, record: dict) -> None:
    """Replace ``OUT/batch.json`` atomically."""
    record["updated"] = timestamp()
    with atomic_path(Path(out) / BATCH_FILE, overwrite=True) as tmp:
        tmp.write_text(json.dumps(record, indent=1))



def short_reason(err: BaseException, limit: int = 200) -> str:
    """``err`` as one line of at most ``limit`` characters (its type's name when it says nothing)."""
    return reason(err, limit)



def timestamp() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")



def start_record(out: Path, old: dict | None, compared: dict, overwrite: bool) -> dict:
    """The record this run continues: the old one when it was made with the same settings, else a new one
    (other settings are refused without ``overwrite``)."""
    if old is not None and old.get("settings") != compared:
        if not overwrite:
            before = _flat(old.get("settings") if isinstance(old.get("settings"), dict) else {})
            now = _flat(compared)
            changed = sorted(k for k in set(before) | set(now) if before.get(k) != now.get(k))
            raise InputError(f"{out / BATCH_FILE}: its videos were made with other settings ({', '.join(changed)}); "
                             "use --overwrite to redo them with these, or another --out")
        old = None
    if old is None and Path(out).is_dir() and not overwrite:
        extra = [p.name for p in Path(out).iterdir() if p.name != LOCK_FILE and not TEMPORARY_NAME.match(p.name)]
        if extra:
            raise InputError(f"{out}: exists and is not a smite batch folder (no {BATCH_FILE}); use --overwrite to "
                             "write into it, or another --out")
    record = old or {"format": FORMAT, "format_version": FORMAT_VERSION, "settings": compared, "videos": {}}
    record.update(started=timestamp(), finished=None, interrupted=False)
    return record



def _flat(settings: dict) -> dict:
    """``{"segment": {"size": 32}, "dtype": ...}`` -> ``{"size": 32, "dtype": ...}`` (the options' names)."""
    flat = {k: v for k, v in settings.items() if not isinstance(v, dict)}
    for value in settings.values():
        if isinstance(value, dict):
            flat.update(value)
    return flat



def new_entry(status: str, frames: int | None = None, seconds: float | None = None, error: str | None = None,
           notes: list[str] | None = None) -> dict:
    entry = {"status": status, "frames": frames, "seconds": None if seconds is None else round(seconds, 2),
             "error": error}
    if notes:
        entry["notes"] = notes
    return entry



class RunRecord:
    """The driver's side of a run: records each finished video in ``batch.json`` and tells the user."""

    def __init__(self, out: Path, record: dict, total: int, say: Callable[[str], None],
                 progress: Callable[[int, int], None] | None):
        self.out, self.record, self.total, self.say, self.progress = out, record, total, say, progress
        self.count = 0

    def worker_ready(self, info: dict) -> None:
        self.record.setdefault("worker_load_s", {})[info["worker"]] = info["load_s"]

    def finished(self, task: VideoTask, entry: dict, notify: bool = True) -> None:
        """Record ``entry`` (a cancelled video stays pending) and rewrite ``batch.json``."""
        if entry.get("status") not in ("done", "failed"):
            return
        entry = dict(entry)
        if entry.get("worker") and entry.get("load_s") is not None:
            self.record.setdefault("worker_load_s", {})[entry["worker"]] = entry["load_s"]
        entry.pop("load_s", None)
        old = self.record["videos"].get(task.name, {})
        self.record["videos"][task.name] = {"video": task.video, **entry, "source": old.get("source")}
        write_record(self.out, self.record)
        self.count += 1
        if notify:
            what = (f"done, {entry['frames']} frames in {entry['seconds']:.1f} s" if entry["status"] == "done"
                    else f"failed: {entry['error']}")
            self.say(f"[{self.count}/{self.total}] {task.name}: {what}")
            if self.progress is not None:
                self.progress(self.count, self.total)
