"""Where the work runs on a Ray cluster: one actor per worker, videos as actor tasks.

``ray=ADDRESS`` (``"auto"``, ``host:6379``, ``ray://host:10001``): each actor asks Ray for ``gpus_per_video``
GPUs (else one CPU). The embedding file's bytes travel through Ray's object store; videos and ``OUT`` must be
on storage every node can reach. A worker process that dies is restarted by Ray and its video retried
(``MAX_RESTARTS``, ``MAX_TASK_RETRIES``).
"""

from __future__ import annotations

import contextlib
import os
from typing import Callable

from ..errors import InputError, SmiteError
from .record import RunRecord, VideoTask, new_entry, short_reason
from .worker import BatchSettings, VideoWorker

DEFAULT_GPUS = 0.0  # GPUs a Ray worker asks for (0: one CPU)

MAX_RESTARTS = 4  # times Ray restarts one worker (actor) whose process died

MAX_TASK_RETRIES = 2  # times Ray retries a video whose worker died while segmenting it

WAIT_NOTE_S = 120.0  # a note when no Ray worker is ready after this long (and after every such wait)

CANCEL_WAIT_S = 30.0  # on Ctrl-C, how long the driver waits for the Ray workers it stopped to be gone

RAY_INSTALL = 'pip install -e ".[ray]" or pip install ray'



class RayEngine:
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

    def run(self, run: RunRecord, tasks: list[VideoTask]) -> None:
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
        raise InputError(f"--ray {address}: cannot connect to a Ray cluster ({short_reason(err)})") from None
    return ray, True



def _ray_slots(ray, gpus: float) -> int:
    """Workers the cluster holds now: one per ``gpus`` GPUs, else one per CPU."""
    resources = ray.cluster_resources()
    slots = int(resources.get("GPU", 0) // gpus) if gpus > 0 else int(resources.get("CPU", 0))
    if slots < 1:
        raise InputError(f"--ray: the cluster has no {'GPU' if gpus > 0 else 'CPU'} free for a worker")
    return slots



def _dispatch_ray(ray, run: RunRecord, tasks: list[VideoTask], actors: list, embedding: list) -> None:
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
                    result = new_entry("failed", error=f"internal error in the Ray worker: {short_reason(err)}")
                elif getattr(err, "actor_init_failed", False):  # restarted after dying in this video, it could
                    # not start again: the video is failed, the worker gone
                    run.finished(task, new_entry("failed", error=f"its worker process died and could not be restarted "
                                                              f"(killed, out of memory?): {short_reason(err)}"))
                    continue
                else:
                    error = f"its worker process died and Ray's retries ran out (killed, out of memory?): {short_reason(err)}"
                    run.finished(task, new_entry("failed", error=error))
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



def _drop_ray_worker(ray, run: RunRecord, actor, err: BaseException, last: bool) -> None:
    """Give no more videos to ``actor``, which could not get ready (its process died or could not start, or
    ``ready()`` raised); when it was the ``last`` worker and none could start, stop with one line."""
    from ray.exceptions import RayActorError

    with contextlib.suppress(Exception):
        ray.kill(actor, no_restart=True)
    if last and (getattr(err, "actor_init_failed", False) or not isinstance(err, RayActorError)):
        raise SmiteError(f"no Ray worker could start ({short_reason(err)})") from None
    run.say(f"note: a Ray worker could not get ready, the others go on without it ({short_reason(err)})")
