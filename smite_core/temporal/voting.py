"""Bidirectional temporal voting along point tracks (docs/method.md section 7, Algorithm 1, vectorised).

For query frame ``i`` and grid cell ``n`` (its query point), look at the frames ``j`` of a window
of ``window`` frames around ``i`` (clipped to the frames that exist) where the track is visible;
gather the class vectors ``v_j = maps[j, :, cell of the track in j]``; the voted label ``P`` is the
most frequent ``argmax v_j`` (ties: the smallest label) and the voted vector is the mean of the
``v_j`` whose argmax is ``P``. The query's own cell in its own frame always takes part.

Everything is gathers, one scatter-add and masked sums over ``[Fq, W, N, K]`` tensors: no Python
loop over points (defect D4). :func:`vote_video` applies the vote to a whole video of per-frame
probabilities or labels (e.g. masks from another segmenter) as a flicker filter, window by window.
"""

from __future__ import annotations

from typing import Callable, Iterator

import torch
import torch.nn.functional as F

from ..errors import InputError
from .tracking import DEFAULT_TRACKER, Tracker, Tracks, make_tracker

DEFAULT_WINDOW = 15  # frames a vote looks at (the reference code's Algorithm 1)
WINDOW_RANGE = (1, 99)  # the vote window's range (SegmentConfig.vote_window, smite vote --vote-window)
DEFAULT_MAX_GRID = 256  # label videos: voting cells on the long side
# Elements of the gathered [Fq, W, N, K] block formed at a time (query frames are chunked to fit).
CHUNK_ELEMENTS = 1 << 25


def window_offsets(window: int) -> tuple[int, int]:
    """Frames ``(before, after)`` the query frame that a voting window of ``window`` frames covers."""
    low, high = WINDOW_RANGE
    if isinstance(window, bool) or not isinstance(window, int) or not low <= window <= high:
        raise InputError(f"vote window: must be a whole number of frames between {low} and {high} (got {window!r})")
    before = (window - 1) // 2
    return before, window - 1 - before


def _vote_chunk(maps: torch.Tensor, labels: torch.Tensor, positions: torch.Tensor, visible: torch.Tensor,
                query: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """Votes of the queries of some query frames. ``maps [F,K,h,w]``, ``labels [F*h*w]`` (argmax of
    maps), ``positions [Fq,F,N,2]``, ``visible [Fq,F,N]``, ``query [Fq]`` -> ``[Fq,K,h,w]``."""
    frames, k, h, w = maps.shape
    fq, n = positions.shape[0], positions.shape[2]
    target = query[:, None] + offsets[None]  # [Fq,W]
    valid = (target >= 0) & (target < frames)
    target = target.clamp(0, frames - 1)
    rows = torch.arange(fq)[:, None]
    pos = positions[rows, target]  # [Fq,W,N,2]
    cell = torch.floor(pos + 0.5).long()
    u, v = cell[..., 0], cell[..., 1]
    vis = visible[rows, target] & valid[..., None] & (u >= 0) & (u < w) & (v >= 0) & (v < h)
    own = offsets == 0  # the query itself: its own cell, always visible
    flat_cell = torch.where(own[None, :, None], torch.arange(n)[None, None], v.clamp(0, h - 1) * w + u.clamp(0, w - 1))
    vis = vis | own[None, :, None]
    index = target[..., None] * (h * w) + flat_cell  # [Fq,W,N] into the F*h*w cells
    lab = labels[index]
    counts = torch.zeros(fq * n * k, dtype=torch.float32)
    slot = (torch.arange(fq)[:, None, None] * n + torch.arange(n)[None, None]) * k + lab
    counts.scatter_add_(0, slot.flatten(), vis.flatten().float())
    mode = counts.view(fq, n, k).argmax(-1)  # first maximum: ties go to the smallest label
    agree = vis & (lab == mode[:, None])
    values = maps.permute(0, 2, 3, 1).reshape(frames * h * w, k)[index]  # [Fq,W,N,K]
    total = (values * agree[..., None]).sum(1)
    mean = total / agree.sum(1).clamp_min(1)[..., None].to(total.dtype)
    return mean.transpose(1, 2).reshape(fq, k, h, w)


def vote_tracks(maps: torch.Tensor, tracks: Tracks, window: int = DEFAULT_WINDOW,
                chunk_elements: int = CHUNK_ELEMENTS) -> torch.Tensor:
    """Voted maps ``[Fq,K,h,w]`` of the query frames of ``tracks`` from ``maps [F,K,h,w]``.

    ``tracks`` must be of the same ``F`` frames on the ``(h, w)`` grid of ``maps``.
    """
    if maps.ndim != 4:
        raise InputError(f"maps: expected [F,K,h,w], got shape {tuple(maps.shape)}")
    frames, k, h, w = maps.shape
    if tracks.num_frames != frames or tuple(tracks.grid_hw) != (h, w):
        raise InputError(f"tracks: {tracks.num_frames} frames on a {tracks.grid_hw[0]}x{tracks.grid_hw[1]} grid do "
                         f"not match maps of {frames} frames on {h}x{w}")
    before, after = window_offsets(window)
    offsets = torch.arange(-before, after + 1)
    maps = maps.detach().float().cpu()
    labels = maps.argmax(1).flatten()
    per_frame = len(offsets) * h * w * k
    step = max(1, chunk_elements // max(1, per_frame))
    out = []
    for s in range(0, len(tracks.query_frames), step):
        out.append(_vote_chunk(maps, labels, tracks.positions[s:s + step], tracks.visible[s:s + step],
                               tracks.query_frames[s:s + step], offsets))
    return torch.cat(out) if out else maps.new_zeros(0, k, h, w)


# ----------------------------------------------------------------------------- whole videos


def _grid_for(hw: tuple[int, int], max_grid: int) -> tuple[int, int]:
    h, w = hw
    scale = min(1.0, max_grid / max(h, w))
    return max(1, round(h * scale)), max(1, round(w * scale))


def _one_hot_fractions(labels: torch.Tensor, k: int, grid: tuple[int, int]) -> torch.Tensor:
    """Labels ``[n,H,W]`` -> class fractions ``[n,K,gh,gw]`` (area pooling of the one-hot maps)."""
    out = []
    for frame in labels:  # [H,W]: one frame's one-hot at a time
        onehot = F.one_hot(frame.long(), k).permute(2, 0, 1)[None].float()
        out.append(F.adaptive_avg_pool2d(onehot, grid) if tuple(frame.shape) != tuple(grid) else onehot)
    return torch.cat(out)


def iter_votes(read_frames: Callable[[int, int], torch.Tensor], read_maps: Callable[[int, int], torch.Tensor],
               num_frames: int, tracker: Tracker, window: int = DEFAULT_WINDOW, chunk: int = 16,
               progress: Callable[[int, int], None] | None = None) -> Iterator[tuple[int, torch.Tensor]]:
    """Yield ``(index, voted maps [K,h,w])`` for every frame, ``chunk`` query frames at a time.

    ``read_frames(a, b)`` -> frames ``[b-a,H,W,3]`` 0..1, ``read_maps(a, b)`` -> ``[b-a,K,h,w]``.
    Each chunk is tracked together with the ``window // 2`` frames on either side it votes over,
    so memory is flat in the video's length.
    """
    before, after = window_offsets(window)
    for start in range(0, num_frames, chunk):
        stop = min(num_frames, start + chunk)
        lo, hi = max(0, start - before), min(num_frames, stop + after)
        maps = read_maps(lo, hi)
        tracks = tracker.track(read_frames(lo, hi), tuple(maps.shape[-2:]),
                               query_frames=torch.arange(start - lo, stop - lo), max_offset=max(before, after))
        voted = vote_tracks(maps, tracks, window)
        for j in range(stop - start):
            yield start + j, voted[j]
        if progress:
            progress(stop, num_frames)


def _labels_back(original: torch.Tensor, voted: torch.Tensor, grid_labels: torch.Tensor) -> torch.Tensor:
    """Full-size labels after a vote on a coarser grid: the voted label where the vote changed the
    grid cell's label, else the original pixel. ``original [H,W]``, ``voted [K,gh,gw]``, ``grid_labels [gh,gw]``."""
    size = tuple(original.shape)
    new = voted.argmax(0)
    if tuple(new.shape) == size:
        return new.to(original.dtype)
    changed = F.interpolate((new != grid_labels)[None, None].float(), size=size, mode="nearest")[0, 0] > 0
    up = F.interpolate(voted[None], size=size, mode="bilinear", align_corners=False)[0].argmax(0)
    return torch.where(changed, up.to(original.dtype), original)


def vote_video(frames: torch.Tensor, maps: torch.Tensor, tracker: str | Tracker = DEFAULT_TRACKER,
               window: int = DEFAULT_WINDOW, progress: Callable[[int, int], None] | None = None, *, checkpoint=None,
               max_grid: int = DEFAULT_MAX_GRID, chunk: int = 16, device: str | torch.device = "cpu") -> torch.Tensor:
    """Temporal vote over a whole video as a flicker filter.

    ``frames [T,H,W,3]`` 0..1 drive the tracker; ``maps`` is either per-class scores or
    probabilities float ``[T,K,h,w]`` (returned voted, same shape) or integer labels ``[T,H',W']``
    (returned as voted labels of the same size and dtype). Label videos are voted on a grid of at
    most ``max_grid`` cells on the long side (class fractions); pixels keep their own label unless
    the vote changed their cell. ``tracker``: ``flow``, ``cotracker`` (with ``checkpoint``),
    ``static`` or a :class:`~smite_core.temporal.tracking.Tracker`.
    """
    frames = torch.as_tensor(frames)
    maps = torch.as_tensor(maps)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape[0] < 1:
        raise InputError(f"frames: expected [T,H,W,3] in 0..1, got shape {tuple(frames.shape)}")
    if maps.shape[0] != frames.shape[0]:
        raise InputError(f"maps: {maps.shape[0]} frames, but the video has {frames.shape[0]}")
    tracker = make_tracker(tracker, checkpoint, device=device)
    total = frames.shape[0]
    window_offsets(window)
    if maps.ndim == 4 and maps.is_floating_point():
        stream = iter_votes(lambda a, b: frames[a:b].cpu(), lambda a, b: maps[a:b].float().cpu(), total, tracker,
                            window, chunk, progress)
        return torch.stack([m for _, m in stream]).to(maps.device, maps.dtype)
    if maps.ndim != 3 or maps.is_floating_point() or maps.dtype == torch.bool:
        raise InputError(f"maps: expected float scores [T,K,h,w] or integer labels [T,H,W], got {maps.dtype} "
                         f"{tuple(maps.shape)}")
    if maps.numel() and maps.min() < 0:
        raise InputError(f"labels: negative label {int(maps.min())}")
    out = torch.empty(maps.shape, dtype=maps.dtype)
    for index, labels in iter_vote_labels(lambda a, b: frames[a:b].cpu(), lambda a, b: maps[a:b].cpu(), total,
                                          int(maps.max()) + 1, tracker, window, max_grid, chunk, progress):
        out[index] = labels
    return out.to(maps.device)


def iter_vote_labels(read_frames: Callable[[int, int], torch.Tensor], read_labels: Callable[[int, int], torch.Tensor],
                     num_frames: int, num_classes: int, tracker: Tracker, window: int = DEFAULT_WINDOW,
                     max_grid: int = DEFAULT_MAX_GRID, chunk: int = 16,
                     progress: Callable[[int, int], None] | None = None) -> Iterator[tuple[int, torch.Tensor]]:
    """Yield ``(index, voted labels [H,W])`` of a label video read lazily with ``read_labels(a, b)`` ->
    integer ``[b-a,H,W]`` (values below ``num_classes``); see :func:`vote_video`."""
    first = read_labels(0, 1)
    grid = _grid_for(tuple(first.shape[1:]), max_grid)
    fractions = lambda a, b: _one_hot_fractions(read_labels(a, b), num_classes, grid)
    for index, voted in iter_votes(read_frames, fractions, num_frames, tracker, window, chunk, progress):
        original = read_labels(index, index + 1)
        grid_labels = _one_hot_fractions(original, num_classes, grid)[0].argmax(0)
        yield index, _labels_back(original[0], voted, grid_labels)
