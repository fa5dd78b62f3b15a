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
  worker process that dies is restarted by Ray and its video retried (``ray_engine.MAX_RESTARTS``,
  ``ray_engine.MAX_TASK_RETRIES``).

A video's result is written by its worker into a temporary folder beside ``OUT/<name>`` and renamed
when complete (``fileio.atomic_dir``). Resuming: a video whose record says done with the same
``source``, made with the same settings and embedding, and whose folder holds its ``frames`` label
maps (and overlay) is skipped; anything else is redone. Leftover temporary folders of killed workers
are removed. Videos are never split into window ranges: each is one task, longest (largest) first,
so results equal ``smite segment``'s (docs/performance.md, "Many videos: smite batch").

The package, one module per part: ``record`` (videos, output names, ``batch.json``), ``lock`` (one run per
folder), ``worker`` (one worker, one video), ``local_pool`` (this process or a pool of processes),
``ray_engine`` (Ray actors) and ``many`` (:func:`segment_many`, which ties them together).
"""

from .local_pool import exit_with_parent
from .lock import LOCK_FILE, FolderLock
from .many import DEFAULT_WORKERS, segment_many
from .ray_engine import DEFAULT_GPUS, RAY_INSTALL
from .record import BATCH_FILE, BatchResult, VideoTask, find_videos, plan_tasks, read_record, video_name
from .worker import OVERLAYS, BatchSettings, VideoWorker, segment_video

__all__ = ["BATCH_FILE", "DEFAULT_GPUS", "DEFAULT_WORKERS", "LOCK_FILE", "OVERLAYS", "RAY_INSTALL", "BatchResult",
           "BatchSettings", "FolderLock", "VideoTask", "VideoWorker", "exit_with_parent", "find_videos",
           "plan_tasks", "read_record", "segment_many", "segment_video", "video_name"]
