"""One worker: loads the backbone and the embedding once, then segments videos, each into its own folder.

The same :class:`VideoWorker` runs in the driver's process, in the local pool's processes and as a Ray actor.
A video's result is written into a temporary folder beside ``OUT/<name>`` and renamed when complete
(``io.fileio.atomic_dir``); what a killed earlier attempt left is removed first.
"""

from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from ..errors import SmiteError
from ..io.mattes import MatteSettings
from ..method.segment import SegmentConfig, segment_stream
from ..method.was import WAS_VERSION
from .record import VideoTask, new_entry, remove_leftovers, short_reason

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
    mattes: MatteSettings = field(default_factory=MatteSettings)

    def compared(self, embedding_sha256: str) -> dict:
        """The settings an output depends on, as JSON values (the backbone is pinned by the embedding)."""
        values = {"segment": asdict(self.config), "dtype": self.dtype, "prediction_type": self.prediction_type,
                  "overlay": self.overlay, "edge_aware": self.edge_aware, "embedding_sha256": embedding_sha256,
                  "was_version": WAS_VERSION}
        m = self.mattes
        if m.formats or m.video:  # named as the options; nothing when no mattes are written (older records resume)
            values["mattes"] = {"mattes": list(m.formats), "matte_kind": m.kind, "start_frame": m.start_frame,
                                "frame_padding": m.frame_padding, "exr_compression": m.exr_compression}
            if m.video:
                values["mattes"]["matte_video"] = m.video
        return json.loads(json.dumps(values))



def segment_video(backbone, embedding, task: VideoTask, settings: BatchSettings,
                  cancelled: Callable[[], bool] | None = None) -> dict:
    """Segment one video into ``task.out`` (written atomically; an earlier result is replaced only when
    the new one is complete) and return its record entry. Bad input becomes a ``failed`` entry with one
    line; ``cancelled()`` is asked before every UNet pass (``segment_stream``'s ``interrupt`` hook) and stops
    the work with ``KeyboardInterrupt``."""
    from ..io.video_io import open_frames
    from ..method.export import export_segmentation

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
                                          overwrite=True, edge_aware=settings.edge_aware, mattes=settings.mattes)
    except SmiteError as err:
        return new_entry("failed", seconds=time.perf_counter() - started, error=str(err), notes=notes)
    except Exception as err:  # noqa: BLE001 - one video's unexpected failure never stops the others
        message = f"internal error {type(err).__name__}: {short_reason(err, 300)}"
        return new_entry("failed", seconds=time.perf_counter() - started, error=message, notes=notes)
    return new_entry("done", frames=summary["frames"], seconds=time.perf_counter() - started, notes=notes)



def first_line(err: BaseException) -> str:
    """``"TypeName: first line of the message"``."""
    lines = str(err).strip().splitlines()
    return f"{type(err).__name__}: {lines[0].strip()[:200]}" if lines else type(err).__name__



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

            from ..model.backbone import load_backbone

            if threads:
                torch.set_num_threads(threads)
            self.backbone = load_backbone(settings.model, device=settings.device, dtype=settings.dtype,
                                          prediction_type=settings.prediction_type)
        except SmiteError as err:
            self.fatal = str(err)
        except Exception as err:  # noqa: BLE001 - a device this machine lacks (torch's AssertionError), ...
            self.fatal = f"{settings.model}: cannot load the backbone on {settings.device} ({first_line(err)})"
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
    """A :class:`~smite_core.method.embedding.SegmentEmbedding` from a file's bytes (validated as
    ``SegmentEmbedding.load`` does; errors name ``name``)."""
    import tempfile

    from ..errors import EmbeddingError
    from ..method.embedding import SegmentEmbedding

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
