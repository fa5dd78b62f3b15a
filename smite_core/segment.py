"""Segmentation: a video, window by window, through inversion -> inflated UNet -> WAS -> masks.

Frames are read lazily per window (16 frames, overlap 8 by default; the last window is shifted
back to be full length; videos shorter than a window are one window). Frames covered by two
windows get a cross-faded blend of both windows' WAS, so labels do not jump at window
boundaries. WAS maps stay at latent resolution until a frame is finished; only then is it handed
to the caller, who upsamples it to the frame's own size (``was.labels_from_was``). Memory is
therefore flat in the video's length.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator

import torch

from .backbone import Backbone
from .embedding import SegmentEmbedding, build_context
from .errors import InputError
from .inversion import DEFAULT_TIMESTEPS, add_noise, encode_frames, sample_timestep, working_size
from .unet_pass import unet_forward
from .was import was_inference

TRACKERS = ("none", "flow", "cotracker")


@dataclass
class SegmentConfig:
    """Segmentation settings. ``inflate=False`` is per-frame segmentation (the paper's Baseline-I)."""

    window: int = 16
    overlap: int = 8
    inflate: bool = True
    pool_norm: bool = True  # frame-pooled GroupNorm in the inflated UNet
    size: int | tuple[int, int] | None = None  # working size; None = the backbone's resolution
    timesteps: tuple[int, int] = DEFAULT_TIMESTEPS
    seed: int = 0
    tracker: str = "none"
    track_weight: float = 0.0
    lowpass_weight: float = 0.0

    def validate(self) -> None:
        if self.window < 1:
            raise InputError(f"window: must be at least 1 frame (got {self.window})")
        if not 0 <= self.overlap < self.window:
            raise InputError(f"overlap: must be between 0 and window-1 = {self.window - 1} (got {self.overlap})")
        if self.tracker not in TRACKERS:
            raise InputError(f"tracker: {self.tracker!r} is not one of {', '.join(TRACKERS)}")
        if self.tracker != "none" or self.track_weight != 0 or self.lowpass_weight != 0:
            raise InputError("tracker/track-weight/lowpass-weight: temporal guidance is not implemented in this "
                             "version yet; use --tracker none with both weights 0")


def window_spans(num_frames: int, window: int, overlap: int) -> list[tuple[int, int]]:
    """``[start, stop)`` of each window; the last is shifted back to be full length."""
    if num_frames <= window:
        return [(0, num_frames)]
    step = window - overlap
    spans = []
    start = 0
    while True:
        if start + window >= num_frames:
            spans.append((num_frames - window, num_frames))
            return spans
        spans.append((start, start + window))
        start += step


def blend_weights(span: tuple[int, int], previous: tuple[int, int] | None, following: tuple[int, int] | None) -> torch.Tensor:
    """Cross-fade weights ``[F]`` in (0, 1]: ramps up over the overlap with the previous window
    and down over the overlap with the next one."""
    start, stop = span
    n = stop - start
    pos = torch.arange(n, dtype=torch.float32)
    w = torch.ones(n)
    if previous is not None and previous[1] > start:
        w = torch.minimum(w, (pos + 1) / (previous[1] - start + 1))
    if following is not None and following[0] < stop:
        w = torch.minimum(w, (n - pos) / (stop - following[0] + 1))
    return w


@torch.no_grad()
def segment_window(backbone: Backbone, embedding: SegmentEmbedding, frames: torch.Tensor, config: SegmentConfig,
                   generator: torch.Generator, context: torch.Tensor | None = None,
                   latents: torch.Tensor | None = None) -> torch.Tensor:
    """WAS ``[F,K,h,w]`` (latent resolution) of one window of frames ``[F,H,W,3]`` (0..1).

    ``latents``: the window's clean VAE latents ``[F,4,h,w]`` if already encoded (``InvertVideo``),
    else the frames are encoded here.
    """
    if context is None:
        context = build_context(backbone.encode_empty_prompt(), embedding.tokens.to(backbone.device))
    if latents is None:
        latents = encode_frames(backbone, frames, working_size(backbone, tuple(frames.shape[1:3]), config.size))
    t = sample_timestep(generator, config.timesteps)
    noisy = add_noise(backbone, latents.to(backbone.device, backbone.dtype), t, generator)
    _, record = unet_forward(backbone, noisy, t, context, embedding.num_segments, kv=embedding.kv,
                             inflate=config.inflate, pool_norm=config.pool_norm and config.inflate)
    return was_inference(record).float().cpu()


def segment_stream(backbone: Backbone, embedding: SegmentEmbedding, source, config: SegmentConfig | None = None,
                   progress: Callable[[int, int], None] | None = None,
                   latents: torch.Tensor | None = None) -> Iterator[tuple[int, torch.Tensor]]:
    """Yield ``(frame_index, WAS [K,h,w])`` for every frame of ``source`` in order, window by window.

    ``source`` is a ``video_io.FrameSource`` (anything with ``num_frames`` and ``read(start, stop)``).
    ``latents``: optional clean VAE latents ``[T,4,h,w]`` of the whole video (from ``InvertVideo``);
    without them each window's frames are encoded as they are read.
    ``progress(done_frames, total_frames)`` is called as frames are finished.
    """
    config = config or SegmentConfig()
    config.validate()
    embedding.check_backbone(backbone)
    total = source.num_frames
    if total < 1:
        raise InputError("video: has no frames")
    if latents is not None and latents.shape[0] != total:
        raise InputError(f"latents: {latents.shape[0]} frames, but the video has {total}")
    spans = window_spans(total, config.window, config.overlap)
    generator = torch.Generator().manual_seed(config.seed)
    context = build_context(backbone.encode_empty_prompt(), embedding.tokens.to(backbone.device))
    pending: dict[int, tuple[torch.Tensor, float]] = {}
    done = 0
    for i, span in enumerate(spans):
        window_latents = latents[span[0]:span[1]] if latents is not None else None
        was = segment_window(backbone, embedding, source.read(*span), config, generator, context, window_latents)
        weights = blend_weights(span, spans[i - 1] if i else None, spans[i + 1] if i + 1 < len(spans) else None)
        for j, index in enumerate(range(*span)):
            acc, wsum = pending.get(index, (0.0, 0.0))
            pending[index] = (acc + weights[j] * was[j], wsum + float(weights[j]))
        finished_upto = spans[i + 1][0] if i + 1 < len(spans) else total
        while done < finished_upto:
            acc, wsum = pending.pop(done)
            yield done, acc / wsum
            done += 1
            if progress:
                progress(done, total)


def segment_frames(backbone: Backbone, embedding: SegmentEmbedding, frames: torch.Tensor,
                   config: SegmentConfig | None = None, progress: Callable[[int, int], None] | None = None,
                   latents: torch.Tensor | None = None) -> torch.Tensor:
    """WAS ``[T,K,h,w]`` for an in-memory video ``frames [T,H,W,3]`` (0..1)."""
    from .video_io import FrameSource

    stream = segment_stream(backbone, embedding, FrameSource.from_tensor(frames), config, progress, latents)
    return torch.stack([was for _, was in stream])
