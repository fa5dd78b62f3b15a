"""Many videos, one embedding: ``smite batch`` and :func:`segment_many`.

Every video gets ``OUT/<name>/`` in the ``smite segment`` layout (``name``: the file's stem or the
frames folder's name; two videos with one name are refused before any work) and ``OUT/batch.json``
records each video: ``status`` (``done``, ``failed``, ``skipped``: complete from an earlier run, or
``pending``: not finished yet), ``frames``, ``seconds``, ``error`` (one line), ``source`` (size and
modification time of the input) and the ``worker`` (``host:pid``) that did it. The record is
rewritten atomically after every video, so a crash or Ctrl-C leaves a consistent one.

Where the work runs (each worker loads the backbone and the embedding once, then takes videos):

- ``workers=1``: in this process.
- ``workers=N``: a local pool of N spawned processes (``concurrent.futures.ProcessPoolExecutor``),
  each with ``torch.get_num_threads() // N`` threads.
- ``ray=ADDRESS`` (``"auto"``, ``host:6379``, ``ray://host:10001``): one Ray actor per worker on an
  existing cluster, asking Ray for ``gpus_per_video`` GPUs (else one CPU). The embedding file's bytes
  travel through Ray's object store; videos and ``OUT`` must be on storage every node can reach. A
  worker process that dies is restarted by Ray and its video retried (``MAX_RESTARTS``,
  ``MAX_TASK_RETRIES``).

A video's result is written by its worker into a temporary folder beside ``OUT/<name>`` and renamed
when complete (``fileio.atomic_dir``). Resuming: a video whose record says done with the same
``source``, made with the same settings and embedding, and whose folder holds its ``frames`` label
maps (and overlay) is skipped; anything else is redone. Leftover temporary folders of killed workers
are removed. Videos are never split into window ranges: each is one task, longest (largest) first,
so results equal ``smite segment``'s (docs/performance.md, "Many videos: smite batch").
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import os
import shutil
import socket
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from .errors import InputError, SmiteError, reason
from .fileio import TEMPORARY_NAME, atomic_path, check_writable
from .segment import SegmentConfig, segment_stream

BATCH_FILE = "batch.json"
FORMAT = "smite-batch"
FORMAT_VERSION = 1
STATUSES = ("done", "failed", "skipped", "pending")
DEFAULT_WORKERS = 1  # without Ray: videos one after another in this process
DEFAULT_GPUS = 0.0  # GPUs a Ray worker asks for (0: one CPU)
MAX_RESTARTS = 4  # times Ray restarts one worker (actor) whose process died
MAX_TASK_RETRIES = 2  # times Ray retries a video whose worker died while segmenting it
WAIT_NOTE_S = 120.0  # a note when no Ray worker is ready after this long (and after every such wait)
CANCEL_WAIT_S = 30.0  # on Ctrl-C, how long the driver waits for the Ray workers it stopped to be gone
RAY_INSTALL = 'pip install -e ".[ray]" or pip install ray'
LOCK_FILE = ".smite-batch.lock"
OVERLAYS = ("mp4", "gif")


@dataclass
class BatchSettings:
    """What every worker needs besides the embedding: segmentation settings, backbone and export options."""

    config: SegmentConfig = field(default_factory=SegmentConfig)
    model: str = "tiny"
    device: str = "auto"
    dtype: str = "auto"
    prediction_type: str | None = None
    overlay: str | None = "mp4"
    edge_aware: bool = True

    def compared(self, embedding_sha256: str) -> dict:
        """The settings an output depends on, as JSON values (the backbone is pinned by the embedding)."""
        values = {"segment": asdict(self.config), "dtype": self.dtype, "prediction_type": self.prediction_type,
                  "overlay": self.overlay, "edge_aware": self.edge_aware, "embedding_sha256": embedding_sha256}
        return json.loads(json.dumps(values))


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


# ----------------------------------------------------------------------------- inputs


def find_videos(specs: str | os.PathLike | Sequence[str | os.PathLike], exclude: str | os.PathLike | None = None
                ) -> list[Path]:
    """Expand ``specs``: video files, frames folders, glob patterns (``"shots/*.mp4"``, only video files and
    folders kept) and ``.txt`` lists (one path or pattern a line, relative to the list; ``#`` comments).

    ``exclude``: a folder left out of pattern matches (the output folder). Refuses a path that does not
    exist and a pattern or list that gives no video. The same video given twice is kept once.
    """
    from .video_io import VIDEO_EXTENSIONS

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


# ----------------------------------------------------------------------------- the output folder


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
        raise InputError(f"{path}: not a readable batch record ({_short(err, 120)})") from None
    if not isinstance(record, dict) or record.get("format") != FORMAT or not isinstance(record.get("videos"), dict):
        raise InputError(f"{path}: not a smite batch record")
    if not isinstance(record.get("format_version"), int) or record["format_version"] > FORMAT_VERSION:
        raise InputError(f"{path}: batch record version {record.get('format_version')!r} is not one this SMITE "
                         f"reads ({FORMAT_VERSION})")
    return record


def write_record(out: Path, record: dict) -> None:
    """Replace ``OUT/batch.json`` atomically."""
    record["updated"] = _now()
    with atomic_path(Path(out) / BATCH_FILE, overwrite=True) as tmp:
        tmp.write_text(json.dumps(record, indent=1))


def _short(err: BaseException, limit: int = 200) -> str:
    """``err`` as one line of at most ``limit`` characters (its type's name when it says nothing)."""
    return reason(err, limit)


def _first_line(err: BaseException) -> str:
    """``"TypeName: first line of the message"``."""
    lines = str(err).strip().splitlines()
    return f"{type(err).__name__}: {lines[0].strip()[:200]}" if lines else type(err).__name__


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def _start_record(out: Path, old: dict | None, compared: dict, overwrite: bool) -> dict:
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
    record.update(started=_now(), finished=None, interrupted=False)
    return record


def _flat(settings: dict) -> dict:
    """``{"segment": {"size": 32}, "dtype": ...}`` -> ``{"size": 32, "dtype": ...}`` (the options' names)."""
    flat = {k: v for k, v in settings.items() if not isinstance(v, dict)}
    for value in settings.values():
        if isinstance(value, dict):
            flat.update(value)
    return flat


class _Lock:
    """An exclusive lock on ``OUT`` for one run (POSIX ``flock``; no lock where it is missing)."""

    def __init__(self, out: Path):
        self.path, self.fd = Path(out) / LOCK_FILE, None

    def __enter__(self) -> "_Lock":
        try:
            import fcntl
        except ImportError:  # Windows: one run per folder is up to the user
            return self
        try:
            self.fd = os.open(self.path, os.O_CREAT | os.O_RDWR)
        except OSError as err:
            raise InputError(f"{self.path.parent}: cannot write here ({err.strerror or _short(err)})") from None
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(self.fd)
            self.fd = None
            raise InputError(f"{self.path.parent}: another smite batch is writing there") from None
        return self

    def __exit__(self, *exc) -> None:
        if self.fd is not None:
            self.path.unlink(missing_ok=True)
            os.close(self.fd)


# ----------------------------------------------------------------------------- one worker


def segment_video(backbone, embedding, task: VideoTask, settings: BatchSettings,
                  cancelled: Callable[[], bool] | None = None) -> dict:
    """Segment one video into ``task.out`` (written atomically; an earlier result is replaced only when
    the new one is complete) and return its record entry. Bad input becomes a ``failed`` entry with one
    line; ``cancelled()`` is asked before every UNet pass (``segment_stream``'s ``interrupt`` hook) and stops
    the work with ``KeyboardInterrupt``."""
    from .export import export_segmentation
    from .video_io import open_frames

    out = Path(task.out)
    remove_leftovers(out.parent, out.name)  # what a killed earlier attempt left
    notes: list[str] = []

    def interrupt() -> None:
        if cancelled():
            raise KeyboardInterrupt

    started = time.perf_counter()
    try:
        with open_frames(task.video) as source:
            maps = segment_stream(backbone, embedding, source, settings.config, say=notes.append,
                                  interrupt=interrupt if cancelled is not None else None)
            summary = export_segmentation(out, maps, source, embedding.names, overlay_format=settings.overlay,
                                          overwrite=True, edge_aware=settings.edge_aware)
    except SmiteError as err:
        return _entry("failed", seconds=time.perf_counter() - started, error=str(err), notes=notes)
    except Exception as err:  # noqa: BLE001 - one video's unexpected failure never stops the others
        message = f"internal error {type(err).__name__}: {_short(err, 300)}"
        return _entry("failed", seconds=time.perf_counter() - started, error=message, notes=notes)
    return _entry("done", frames=summary["frames"], seconds=time.perf_counter() - started, notes=notes)


def _entry(status: str, frames: int | None = None, seconds: float | None = None, error: str | None = None,
           notes: list[str] | None = None) -> dict:
    entry = {"status": status, "frames": frames, "seconds": None if seconds is None else round(seconds, 2),
             "error": error}
    if notes:
        entry["notes"] = notes
    return entry


class VideoWorker:
    """One worker: loads the backbone and the embedding once, then segments videos (:meth:`run`).

    Used in this process, in the local pool's processes and as the Ray actor. ``embedding``: the
    embedding file's bytes, or (on Ray) ``[ObjectRef]`` of them, given to the constructor or to the
    first :meth:`ready` / :meth:`run` (a Ray actor gets it with its tasks, so that a restarted actor
    fetches it again and its constructor holds no object-store argument). A setup problem (the
    backbone cannot be loaded, the embedding belongs to another backbone) is kept as ``fatal`` and
    returned by every call, so that the driver stops the batch with that one line.
    """

    def __init__(self, settings: BatchSettings, embedding=None, embedding_name: str = "embedding",
                 threads: int | None = None, on_ray: bool = False):
        started = time.perf_counter()
        self.settings, self.name, self.on_ray = settings, embedding_name, on_ray
        self.fatal, self.embedding, self.backbone = None, None, None
        self.id = f"{socket.gethostname()}:{os.getpid()}"
        try:
            import torch

            from .backbone import load_backbone

            if threads:
                torch.set_num_threads(threads)
            self.backbone = load_backbone(settings.model, device=settings.device, dtype=settings.dtype,
                                          prediction_type=settings.prediction_type)
        except SmiteError as err:
            self.fatal = str(err)
        except Exception as err:  # noqa: BLE001 - a device this machine lacks (torch's AssertionError), ...
            self.fatal = f"{settings.model}: cannot load the backbone on {settings.device} ({_first_line(err)})"
        self.load_s = round(time.perf_counter() - started, 2)
        self._use(embedding)

    def _use(self, embedding) -> None:
        """Load and check the embedding unless it is loaded already (or nothing is given)."""
        if self.fatal or self.embedding is not None or embedding is None:
            return
        started = time.perf_counter()
        try:
            if not isinstance(embedding, bytes):  # [ObjectRef] on Ray
                import ray

                embedding = ray.get(embedding[0])
            self.embedding = embedding_from_bytes(embedding, self.name)
            self.embedding.check_backbone(self.backbone)
            self.settings.config.validate(self.backbone)  # the working size against this backbone
        except SmiteError as err:
            self.fatal = str(err)
        self.load_s = round(self.load_s + time.perf_counter() - started, 2)

    def ready(self, embedding=None) -> dict:
        """``{"worker", "load_s", "fatal"}``: whether this worker could start."""
        self._use(embedding)
        return {"worker": self.id, "load_s": self.load_s, "fatal": self.fatal}

    def run(self, task: VideoTask, cancelled: Callable[[], bool] | None = None, embedding=None) -> dict:
        """Segment ``task``: its record entry, or ``{"fatal": ...}``, or ``{"status": "cancelled"}``."""
        self._use(embedding)
        if self.fatal:
            return {"fatal": self.fatal}
        try:
            entry = segment_video(self.backbone, self.embedding, task, self.settings, cancelled)
        except KeyboardInterrupt:  # Ctrl-C or a cancel: the temporary folder is already gone
            return {"status": "cancelled"}
        entry.update(worker=self.id, load_s=self.load_s)
        if self.on_ray:
            import ray

            entry["restarted"] = bool(ray.get_runtime_context().was_current_actor_reconstructed)
        return entry


def embedding_from_bytes(data: bytes, name: str):
    """A :class:`~smite_core.embedding.SegmentEmbedding` from a file's bytes (validated as
    ``SegmentEmbedding.load`` does; errors name ``name``)."""
    import tempfile

    from .embedding import SegmentEmbedding
    from .errors import EmbeddingError

    fd, tmp = tempfile.mkstemp(suffix=".safetensors")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        embedding = SegmentEmbedding.load(tmp)
    except EmbeddingError as err:
        raise EmbeddingError(str(err).replace(tmp, name)) from None
    finally:
        os.unlink(tmp)
    embedding.meta["source"] = name
    return embedding


# ----------------------------------------------------------------------------- the driver


class _Run:
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


class _InProcess:
    """``workers=1``: the videos one after another in this process."""

    name = "local"

    def __init__(self, settings: BatchSettings, data: bytes, embedding_name: str, say: Callable[[str], None]):
        say(f"loading backbone {settings.model} ...")
        self.worker = VideoWorker(settings, data, embedding_name)
        if self.worker.fatal:
            raise SmiteError(self.worker.fatal)
        self.workers = 1

    def run(self, run: _Run, tasks: list[VideoTask]) -> None:
        run.worker_ready(self.worker.ready())
        for task in tasks:
            entry = self.worker.run(task)
            if entry.get("status") == "cancelled":
                raise KeyboardInterrupt
            run.finished(task, entry)

    def close(self) -> None:
        pass


class _LocalPool:
    """``workers=N``: a pool of N spawned processes, each loading the backbone once (``_init_pool_worker``)."""

    name = "local"

    def __init__(self, settings: BatchSettings, data: bytes, embedding_name: str, workers: int):
        self.args, self.workers = (settings, data, embedding_name), workers

    def run(self, run: _Run, tasks: list[VideoTask]) -> None:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor, as_completed

        import torch

        context = multiprocessing.get_context("spawn")
        cancel = context.Event()
        workers = min(self.workers, len(tasks))
        threads = max(1, torch.get_num_threads() // workers)
        with _sigint_ignored():  # the processes start (on submit) ignoring Ctrl-C until their initializer runs
            pool = ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=_init_pool_worker,
                                       initargs=(*self.args, threads, cancel))
            futures = {pool.submit(_run_pool_task, task): task for task in tasks}
        reported = set()
        try:
            for future in as_completed(futures):
                reported.add(future)
                run.finished(futures[future], _pool_result(future))
        except BaseException:  # Ctrl-C, a setup error or a dead worker: stop the rest, keep what finished
            cancel.set()
            pool.shutdown(wait=True, cancel_futures=True)
            for future, task in futures.items():
                if future not in reported and future.done() and not future.cancelled() and not future.exception():
                    run.finished(task, future.result(), notify=False)
            raise
        pool.shutdown(wait=True)

    def close(self) -> None:
        pass


@contextlib.contextmanager
def _sigint_ignored():
    """Ignore SIGINT in this process meanwhile (in the main thread, when Python handles SIGINT; else nothing).

    Spawned processes inherit the ignored signal, so a Ctrl-C while they import torch and unpickle the
    initializer's arguments does not print their tracebacks; the initializer installs their handler.
    """
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGINT) is None:
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _pool_result(future) -> dict:
    from concurrent.futures.process import BrokenProcessPool

    try:
        entry = future.result()
    except BrokenProcessPool:
        raise SmiteError("a worker process ended unexpectedly (killed, or out of memory?); run the same command "
                         "again to resume the videos not done (or use --ray, which retries them)") from None
    if entry.get("fatal"):
        raise SmiteError(entry["fatal"])
    if entry.get("status") == "cancelled":  # a worker got Ctrl-C (or the cancel event) on its own: stop the run
        raise KeyboardInterrupt
    return entry


class _PoolState:
    """A pool worker process's worker, the run's cancel event and whether a video is being segmented."""

    def __init__(self, worker: VideoWorker, cancel):
        self.worker, self.cancel, self.busy = worker, cancel, False


# Set once by the initializer in each process of the local pool (never in the driver): the worker is
# built once per process, not once per video.
_POOL: _PoolState | None = None


def _init_pool_worker(settings: BatchSettings, data: bytes, embedding_name: str, threads: int, cancel) -> None:
    import signal

    global _POOL
    exit_with_parent()
    _POOL = _PoolState(None, cancel)
    signal.signal(signal.SIGINT, _pool_interrupt)  # Ctrl-C stops a video being segmented, nothing else
    _POOL.worker = VideoWorker(settings, data, embedding_name, threads)


def _pool_interrupt(signum, frame) -> None:
    _POOL.cancel.set()
    if _POOL.busy:
        raise KeyboardInterrupt


def _run_pool_task(task: VideoTask) -> dict:
    if _POOL.cancel.is_set():
        return {"status": "cancelled"}
    _POOL.busy = True
    try:
        return _POOL.worker.run(task, _POOL.cancel.is_set)
    finally:
        _POOL.busy = False


def exit_with_parent() -> None:
    """In a worker process of a ``multiprocessing`` pool: end it when its parent dies (a ``kill``, not only
    Ctrl-C, which reaches the whole process group), so that no orphan keeps working (nothing elsewhere)."""
    import multiprocessing
    import threading

    parent = multiprocessing.parent_process()
    if parent is not None:
        threading.Thread(target=lambda: (parent.join(), os._exit(1)), name="exit-with-parent", daemon=True).start()


class _RayEngine:
    """``ray=ADDRESS``: one actor per worker on an existing Ray cluster, videos as actor tasks.

    Each actor asks Ray for ``gpus_per_video`` GPUs (else one CPU), holds the backbone and the embedding
    (whose bytes come from the object store) and takes a new video when it has finished one. Ray restarts
    an actor whose process died (``MAX_RESTARTS``) and retries the video it had (``MAX_TASK_RETRIES``).
    """

    name = "ray"

    def __init__(self, settings: BatchSettings, data: bytes, embedding_name: str, address: str,
                 workers: int | None, gpus: float, say: Callable[[str], None]):
        self.ray, self.owned = _connect_ray(address)
        self.args, self.gpus, self.actors = (settings, data, embedding_name), gpus, []
        try:
            self.workers = workers or _ray_slots(self.ray, gpus)
            resources = self.ray.cluster_resources()
            if gpus > 0 and resources.get("GPU", 0) < gpus:
                raise InputError(f"--gpus-per-video {gpus:g}: the Ray cluster has {resources.get('GPU', 0):g} GPU(s)")
        except BaseException:
            self.close()
            raise
        say(f"ray: {self.workers} worker(s) on a cluster of {resources.get('CPU', 0):g} CPU(s) and "
            f"{resources.get('GPU', 0):g} GPU(s)")

    def run(self, run: _Run, tasks: list[VideoTask]) -> None:
        ray = self.ray
        settings, data, name = self.args
        options = {"num_cpus": 1, "num_gpus": self.gpus, "max_restarts": MAX_RESTARTS,
                   "max_task_retries": MAX_TASK_RETRIES}
        env = {key: os.environ[key] for key in ("MKL_CBWR",) if key in os.environ}  # the driver's reproducibility
        if env:
            options["runtime_env"] = {"env_vars": env}
        actor_class = ray.remote(VideoWorker).options(**options)
        # The embedding's bytes go into the object store once; each actor fetches them with its first task
        # (again after a restart: the reference is held here until the run ends).
        embedding = [ray.put(data)]
        threads = None if self.gpus > 0 else 1
        self.actors = [actor_class.remote(settings, None, name, threads, True)
                       for _ in range(min(self.workers, len(tasks)))]
        _dispatch_ray(ray, run, tasks, self.actors, embedding)

    def close(self) -> None:
        for actor in self.actors:
            self.ray.kill(actor, no_restart=True)
        self.actors = []
        if self.owned:
            self.ray.shutdown()


def _connect_ray(address: str):
    """``(ray, owned)``: the ``ray`` module connected to the cluster at ``address`` (an existing connection
    of this process is used as it is; ``owned``: this call made the connection)."""
    try:
        import ray
    except ImportError:
        raise InputError(f"--ray: Ray is not installed; {RAY_INSTALL}") from None
    if ray.is_initialized():
        return ray, False
    import logging

    try:
        ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING)
    except Exception as err:  # ConnectionError, ValueError (ray:// without ray[client]), ...
        raise InputError(f"--ray {address}: cannot connect to a Ray cluster ({_short(err)})") from None
    return ray, True


def _ray_slots(ray, gpus: float) -> int:
    """Workers the cluster holds now: one per ``gpus`` GPUs, else one per CPU."""
    resources = ray.cluster_resources()
    slots = int(resources.get("GPU", 0) // gpus) if gpus > 0 else int(resources.get("CPU", 0))
    if slots < 1:
        raise InputError(f"--ray: the cluster has no {'GPU' if gpus > 0 else 'CPU'} free for a worker")
    return slots


def _dispatch_ray(ray, run: _Run, tasks: list[VideoTask], actors: list, embedding: list) -> None:
    """Give each ready actor one video at a time until every video is done; on any exception (Ctrl-C, a
    setup error) stop every actor, record the videos that finished meanwhile and re-raise."""
    from ray.exceptions import RayActorError, RayTaskError, TaskCancelledError

    queue, idle, waited = list(tasks), [], 0.0
    # a worker gets videos once it is ready
    inflight = {actor.ready.remote(embedding): (actor, None) for actor in actors}
    try:
        while queue or any(task is not None for _, task in inflight.values()):
            while idle and queue:
                actor, task = idle.pop(0), queue.pop(0)
                inflight[actor.run.remote(task, None, embedding)] = (actor, task)
            if not inflight:
                raise SmiteError(f"every Ray worker died; {len(queue)} video(s) not done: run the same command again "
                                 "to resume them")
            ready, _ = ray.wait(list(inflight), num_returns=1, timeout=WAIT_NOTE_S)
            if not ready:
                waited += WAIT_NOTE_S
                if run.count == 0 and not idle:
                    run.say(f"note: no Ray worker ready after {waited:.0f} s (is there a node with the resources "
                            "each asks for: one CPU and --gpus-per-video GPUs?)")
                continue
            actor, task = inflight.pop(ready[0])
            try:
                result = ray.get(ready[0])
            except (RayActorError, RayTaskError, TaskCancelledError) as err:
                if task is None:  # this worker could not get ready: the others go on without it
                    _drop_ray_worker(ray, run, actor, err, last=not idle and not inflight)
                    continue
                if not isinstance(err, RayActorError):
                    result = _entry("failed", error=f"internal error in the Ray worker: {_short(err)}")
                elif getattr(err, "actor_init_failed", False):  # restarted after dying in this video, it could
                    # not start again: the video is failed, the worker gone
                    run.finished(task, _entry("failed", error=f"its worker process died and could not be restarted "
                                                              f"(killed, out of memory?): {_short(err)}"))
                    continue
                else:
                    error = f"its worker process died and Ray's retries ran out (killed, out of memory?): {_short(err)}"
                    run.finished(task, _entry("failed", error=error))
                    inflight[actor.ready.remote(embedding)] = (actor, None)  # back to work if Ray restarted it
                    continue
            if result.get("fatal"):
                raise SmiteError(result["fatal"])
            idle.append(actor)
            if task is None:
                run.worker_ready(result)
            else:
                run.finished(task, result)
    except BaseException:  # Ctrl-C or a setup error: stop every worker now (Ray cannot interrupt a running
        # actor method), wait until they are gone, keep the videos that finished meanwhile; the driver then
        # removes the temporary folders of the videos that were cut short
        for actor in actors:
            ray.kill(actor, no_restart=True)
        running = [ref for ref, (_, task) in inflight.items() if task is not None]
        if running:
            ray.wait(running, num_returns=len(running), timeout=CANCEL_WAIT_S)
        for ref in running:
            with contextlib.suppress(Exception):
                run.finished(inflight[ref][1], ray.get(ref, timeout=0), notify=False)
        raise


def _drop_ray_worker(ray, run: _Run, actor, err: BaseException, last: bool) -> None:
    """Give no more videos to ``actor``, which could not get ready (its process died or could not start, or
    ``ready()`` raised); when it was the ``last`` worker and none could start, stop with one line."""
    from ray.exceptions import RayActorError

    with contextlib.suppress(Exception):
        ray.kill(actor, no_restart=True)
    if last and (getattr(err, "actor_init_failed", False) or not isinstance(err, RayActorError)):
        raise SmiteError(f"no Ray worker could start ({_short(err)})") from None
    run.say(f"note: a Ray worker could not get ready, the others go on without it ({_short(err)})")


# ----------------------------------------------------------------------------- segment_many


def segment_many(videos, embedding: str | os.PathLike, out: str | os.PathLike, config: SegmentConfig | None = None, *,
                 model: str = "tiny", device: str = "auto", dtype: str = "auto", prediction_type: str | None = None,
                 overlay: str | None = "mp4", edge_aware: bool = True, workers: int | None = None,
                 ray: str | None = None, gpus_per_video: float = DEFAULT_GPUS, overwrite: bool = False,
                 say: Callable[[str], None] | None = None,
                 progress: Callable[[int, int], None] | None = None) -> BatchResult:
    """Segment many videos with one embedding into ``out`` (see the module documentation).

    ``videos``: paths, glob patterns or ``.txt`` lists (:func:`find_videos`). ``config``, ``model``,
    ``device``, ``dtype``, ``prediction_type``, ``overlay`` (``"mp4"``, ``"gif"`` or None) and
    ``edge_aware``: as ``smite segment``. ``workers``: processes (default ``DEFAULT_WORKERS``: this one) or,
    with ``ray``, Ray actors (default: one per ``gpus_per_video`` GPUs or per CPU of the cluster). ``ray``:
    ``"auto"`` or a cluster address. ``overwrite``: redo every video (and accept a record made with other settings).
    ``say(line)`` hears one line per video; ``progress(done, total)`` is called after each video.

    A video that fails is recorded with its error and the others go on. Bad options, inputs or a worker
    that cannot start raise :class:`SmiteError` (nothing written when no video was done). Ctrl-C
    (``KeyboardInterrupt``) stops the workers, leaves no partial output and re-raises; ``batch.json`` says
    which videos are done, and the same call resumes. Spawned processes: scripts calling this with
    ``workers > 1`` need the ``if __name__ == "__main__":`` guard.
    """
    say = say or (lambda line: None)
    settings = BatchSettings(config or SegmentConfig(), str(model), device, dtype, prediction_type, overlay, edge_aware)
    _check_options(settings, workers, ray, gpus_per_video)
    out = check_writable(out, True, "folder")
    tasks = plan_tasks(find_videos(videos, exclude=out), out)
    data, sha = _read_embedding(embedding)
    made = _make_folder(out)
    try:
        with _Lock(out):  # before the record is read: a second run is refused before it loads anything
            record = _start_record(out, read_record(out), settings.compared(sha), overwrite)
            sources = {task.name: source_key(task.video) for task in tasks}
            entries = record["videos"]
            done = {t.name for t in tasks if not overwrite
                    and output_complete(Path(t.out), entries.get(t.name), sources[t.name], settings.overlay)}
            pending = sorted((t for t in tasks if t.name not in done), key=lambda t: -t.size)  # longest first
            engine = None
            if pending:  # connect or load before anything is written: a setup error leaves nothing behind
                engine = (_RayEngine(settings, data, str(embedding), ray, workers, gpus_per_video, say) if ray else
                          _InProcess(settings, data, str(embedding), say) if (workers or DEFAULT_WORKERS) == 1 else
                          _LocalPool(settings, data, str(embedding), workers))
            say(f"batch: {len(tasks)} video(s), {len(done)} complete from an earlier run, {len(pending)} to segment"
                + (f" with {min(engine.workers, len(pending))} worker(s)" if engine else ""))
            try:
                return _run_batch(out, bool(made), record, tasks, pending, done, sources, engine, str(embedding),
                                  say, progress)
            finally:
                if engine is not None:
                    engine.close()
    finally:
        for folder in made:  # the folders this call made and left empty (nothing written) go again
            try:
                folder.rmdir()
            except OSError:
                break


def _make_folder(out: Path) -> list[Path]:
    """Create ``out`` (and missing parents); return the folders this call created, deepest first."""
    made, folder = [], out
    while not folder.exists() and folder != folder.parent:
        made.append(folder)
        folder = folder.parent
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise InputError(f"{out}: cannot write here ({err.strerror or _short(err)})") from None
    return made


def _check_options(settings: BatchSettings, workers, ray, gpus_per_video) -> None:
    settings.config.validate()
    if workers is not None and (not isinstance(workers, int) or isinstance(workers, bool) or workers < 1):
        raise InputError(f"--workers: must be an integer >= 1 (got {workers})")
    if not isinstance(gpus_per_video, (int, float)) or not 0 <= gpus_per_video < float("inf"):
        raise InputError(f"--gpus-per-video: must be a number >= 0 (got {gpus_per_video})")
    if gpus_per_video > 0 and not ray:
        raise InputError("--gpus-per-video: GPUs are requested from Ray; use it with --ray (without Ray, --device "
                         "picks the device)")
    if ray is not None and (not isinstance(ray, str) or not ray.strip()):
        raise InputError(f"--ray: give 'auto' or a cluster address (got {ray!r})")
    if settings.overlay is not None and settings.overlay not in OVERLAYS:
        raise InputError(f"--overlay: {settings.overlay!r} is not one of {', '.join(OVERLAYS)} or none")


def _read_embedding(path: str | os.PathLike) -> tuple[bytes, str]:
    """The embedding file's bytes (checked as ``SegmentEmbedding.load`` checks it) and their SHA-256."""
    from .embedding import SegmentEmbedding

    SegmentEmbedding.load(path)
    data = Path(path).read_bytes()
    return data, hashlib.sha256(data).hexdigest()


def _run_batch(out: Path, created: bool, record: dict, tasks: list[VideoTask], pending: list[VideoTask],
               done: set[str], sources: dict[str, str], engine, embedding: str, say, progress) -> BatchResult:
    """Write the plan to ``batch.json``, run ``engine`` on the pending videos and keep the record true
    (``out``, which this run ``created`` or not, is locked)."""
    started, keep, completed = time.perf_counter(), True, False
    for leftover in remove_leftovers(out):
        say(f"note: removed {out / leftover}, left by an interrupted run")
    for task in tasks:
        old = record["videos"].get(task.name, {})
        record["videos"][task.name] = ({**old, "video": task.video, "status": "skipped"} if task.name in done
                                       else {"video": task.video, "status": "pending", "frames": None,
                                             "seconds": None, "error": None, "source": sources[task.name]})
    record.update(embedding=str(Path(embedding).resolve()), run=[t.name for t in tasks],
                  engine=engine.name if engine else None, workers=min(engine.workers, len(pending)) if engine else 0)
    write_record(out, record)
    run = _Run(out, record, len(pending), say, progress)
    try:
        if engine is not None:
            engine.run(run, pending)
        completed = True
    except KeyboardInterrupt:
        record["interrupted"] = True
        say(f"interrupted: {run.count} of {len(pending)} video(s) finished; {out / BATCH_FILE} says which; "
            "run the same command again to resume")
        raise
    except SmiteError:  # nothing was done in a folder this run made: leave nothing behind
        keep = not (created and run.count == 0 and all(p.name in (BATCH_FILE, LOCK_FILE)
                                                       or TEMPORARY_NAME.match(p.name) for p in out.iterdir()))
        raise
    finally:
        remove_leftovers(out)
        if keep:
            _finish_record(out, record, time.perf_counter() - started, completed)
        else:
            (out / BATCH_FILE).unlink(missing_ok=True)
    counts = record["counts"]
    say(f"batch: {counts['done']} done, {counts['failed']} failed, {counts['skipped']} skipped in "
        f"{record['seconds']:.0f} s; record: {out / BATCH_FILE}")
    return BatchResult(out, record)


def _finish_record(out: Path, record: dict, seconds: float, completed: bool) -> None:
    """Stamp the run's time and counts; ``finished`` only when it ``completed`` (no interrupt, no error)."""
    record["seconds"] = round(seconds, 2)
    record["finished"] = _now() if completed else None
    record["counts"] = {s: sum(1 for n in record["run"] if record["videos"][n]["status"] == s) for s in STATUSES}
    write_record(out, record)
