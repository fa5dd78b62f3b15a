"""``segment_many`` (``smite batch``): plan the videos, lock and read the record, run an engine, keep the record true."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path
from typing import Callable

from ..errors import InputError, SmiteError
from ..io.fileio import TEMPORARY_NAME, check_writable
from ..io.mattes import MatteSettings
from ..method.segment import SegmentConfig
from .local_pool import InProcess, LocalPool
from .lock import LOCK_FILE, FolderLock
from .ray_engine import DEFAULT_GPUS, RayEngine
from .record import (
    BATCH_FILE,
    STATUSES,
    BatchResult,
    RunRecord,
    VideoTask,
    find_videos,
    output_complete,
    plan_tasks,
    read_record,
    remove_leftovers,
    short_reason,
    source_key,
    start_record,
    timestamp,
    write_record,
)
from .worker import OVERLAYS, BatchSettings

DEFAULT_WORKERS = 1  # without Ray: videos one after another in this process



def segment_many(videos, embedding: str | os.PathLike, out: str | os.PathLike, config: SegmentConfig | None = None, *,
                 model: str = "tiny", device: str = "auto", dtype: str = "auto", prediction_type: str | None = None,
                 overlay: str | None = "mp4", edge_aware: bool = True, mattes: MatteSettings | None = None,
                 workers: int | None = None,
                 ray: str | None = None, gpus_per_video: float = DEFAULT_GPUS, overwrite: bool = False,
                 say: Callable[[str], None] | None = None,
                 progress: Callable[[int, int], None] | None = None) -> BatchResult:
    """Segment many videos with one embedding into ``out`` (see the module documentation).

    ``videos``: paths, glob patterns or ``.txt`` lists (:func:`find_videos`). ``config``, ``model``,
    ``device``, ``dtype``, ``prediction_type``, ``overlay`` (``"mp4"``, ``"gif"`` or None), ``edge_aware`` and
    ``mattes`` (``io.mattes.MatteSettings``): as ``smite segment``. ``workers``: processes (default ``DEFAULT_WORKERS``: this one) or,
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
    settings = BatchSettings(config or SegmentConfig(), str(model), device, dtype, prediction_type, overlay, edge_aware,
                             mattes or MatteSettings())
    _check_options(settings, workers, ray, gpus_per_video)
    out = check_writable(out, True, "folder")
    tasks = plan_tasks(find_videos(videos, exclude=out), out)
    data, sha = _read_embedding(embedding, say, settings.mattes)
    made = _make_folder(out)
    try:
        with FolderLock(out):  # before the record is read: a second run is refused before it loads anything
            record = start_record(out, read_record(out), settings.compared(sha), overwrite)
            sources = {task.name: source_key(task.video) for task in tasks}
            entries = record["videos"]
            done = {t.name for t in tasks if not overwrite
                    and output_complete(Path(t.out), entries.get(t.name), sources[t.name], settings.overlay)}
            pending = sorted((t for t in tasks if t.name not in done), key=lambda t: -t.size)  # longest first
            engine = None
            if pending:  # connect or load before anything is written: a setup error leaves nothing behind
                engine = (RayEngine(settings, data, str(embedding), ray, workers, gpus_per_video, say) if ray else
                          InProcess(settings, data, str(embedding), say) if (workers or DEFAULT_WORKERS) == 1 else
                          LocalPool(settings, data, str(embedding), workers))
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
        raise InputError(f"{out}: cannot write here ({err.strerror or short_reason(err)})") from None
    return made



def _check_options(settings: BatchSettings, workers, ray, gpus_per_video) -> None:
    settings.config.validate()
    settings.mattes.validate()
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



def _read_embedding(path: str | os.PathLike, say: Callable[[str], None],
                    mattes: MatteSettings) -> tuple[bytes, str]:
    """The embedding file's bytes (checked as ``SegmentEmbedding.load`` checks it, and against the matte video's
    part) and their SHA-256; an embedding learned by SMITE 0.1 is noted once with ``say``."""
    from ..method.embedding import SegmentEmbedding

    loaded = SegmentEmbedding.load(path)
    mattes.video_part(loaded.names)
    outdated = loaded.outdated
    if outdated:
        say(f"note: {outdated}")
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
    run = RunRecord(out, record, len(pending), say, progress)
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
    record["finished"] = timestamp() if completed else None
    record["counts"] = {s: sum(1 for n in record["run"] if record["videos"][n]["status"] == s) for s in STATUSES}
    write_record(out, record)
