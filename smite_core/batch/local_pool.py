"""Where the work runs on this machine: in this process (``workers=1``) or in a pool of spawned processes.

``workers=N``: a ``concurrent.futures.ProcessPoolExecutor`` of N spawned processes, each building one
:class:`~smite_core.batch.worker.VideoWorker` (``torch.get_num_threads() // N`` threads) in its initializer.
Ctrl-C stops the video being segmented and nothing else; a killed driver ends its workers too.
"""

from __future__ import annotations

import contextlib
import os
from typing import Callable

from ..errors import SmiteError
from .record import RunRecord, VideoTask
from .worker import BatchSettings, VideoWorker


class InProcess:
    """``workers=1``: the videos one after another in this process."""

    name = "local"

    def __init__(self, settings: BatchSettings, data: bytes, embedding_name: str, say: Callable[[str], None]):
        say(f"loading backbone {settings.model} ...")
        self.worker = VideoWorker(settings, data, embedding_name)
        if self.worker.fatal:
            raise SmiteError(self.worker.fatal)
        self.workers = 1

    def run(self, run: RunRecord, tasks: list[VideoTask]) -> None:
        run.worker_ready(self.worker.ready())
        for task in tasks:
            entry = self.worker.run(task)
            if entry.get("status") == "cancelled":
                raise KeyboardInterrupt
            run.finished(task, entry)

    def close(self) -> None:
        pass



class LocalPool:
    """``workers=N``: a pool of N spawned processes, each loading the backbone once (``_init_pool_worker``)."""

    name = "local"

    def __init__(self, settings: BatchSettings, data: bytes, embedding_name: str, workers: int):
        self.args, self.workers = (settings, data, embedding_name), workers

    def run(self, run: RunRecord, tasks: list[VideoTask]) -> None:
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
