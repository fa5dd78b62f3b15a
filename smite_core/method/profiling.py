"""The stage-timing hook: the pipeline says which stage it is in, a profiler may listen.

Segmentation (``segment``, ``guidance`` through its callback) and export (``export``) wrap each piece
of work in ``profiler.stage(name, items)``. The default :data:`NO_PROFILER` does nothing;
``smite bench`` passes a ``tools.bench.StageTimer`` that adds up each stage's own time. Stages may
nest (a UNet pass inside the guidance): a timer gives the outer stage only the time not spent in
inner ones. The names are :data:`STAGES`.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

STAGES = ("decode", "vae_encode", "unet", "was", "tracking", "voting", "guidance_backward", "labels", "write")


class Profiler:
    """Receives the pipeline's stages; this base class ignores them (subclass :meth:`stage` to listen)."""

    @contextlib.contextmanager
    def stage(self, name: str, items: int = 0) -> Iterator[None]:
        """Around one piece of work of stage ``name`` (one of :data:`STAGES`) handling ``items`` frames."""
        yield


NO_PROFILER = Profiler()
