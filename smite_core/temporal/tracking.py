"""Point trackers for temporal voting (docs/method.md section 7): dense grid tracks of a window of frames.

Every cell of a ``h x w`` grid (the latent grid of the WAS maps, or the grid of a label video) is
a query on every query frame; a tracker follows each query forward *and* backward to every frame
of the window and says where it is visible. One interface, three backends:

- ``flow`` (default, offline, no weights): dense optical flow (OpenCV DIS) between consecutive
  frames at a moderate resolution, chained forward and backward; a point stays visible while
  every link passes the forward-backward consistency check and stays inside the frame.
- ``cotracker``: CoTracker3 (offline model) from an *installed* ``cotracker`` package with a local
  checkpoint; one call per window with the grid queries of all frames, backward tracking on,
  frames in 0..255. Its licence is CC BY-NC 4.0: it is never bundled and never downloaded.
- ``static``: every point stays in its own cell and is always visible (voting at the same pixel,
  for a locked-off camera or as a baseline).

Segmentation also accepts ``none`` (:data:`NO_TRACKING`): no tracks at all, so no vote and no
``E_track``; that is a setting of ``segment.SegmentConfig``, not a tracker.

Grid coordinates: cell ``(u, v)`` (column, row) has its centre at ``(u, v)``; a position maps to the
cell ``floor(x + 0.5), floor(y + 0.5)``. Pixel coordinates have pixel centres at integers.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import InputError, SmiteError

# The trackers by name, with what each means (CLI help and node tooltips are built from this).
TRACKERS = {
    "flow": "dense optical flow (OpenCV DIS), offline, no weights",
    "cotracker": "CoTracker3 (the installed 'cotracker' package and its checkpoint; CC BY-NC, never downloaded)",
    "static": "no motion: each point votes at its own pixel",
}
DEFAULT_TRACKER = "flow"
NO_TRACKING = "none"  # segmentation only: no tracks, no vote, no E_track

# File names looked for when the CoTracker checkpoint is given as a folder (first match wins).
COTRACKER_FILES = ("cotracker3_offline.safetensors", "scaled_offline.safetensors", "scaled_offline.pth",
                   "cotracker3_offline.pth", "cotracker3.safetensors", "cotracker3.pth")
COTRACKER_HELP = ("CoTracker3 needs the 'cotracker' package (pip install "
                  "git+https://github.com/facebookresearch/co-tracker; CC BY-NC 4.0, never bundled) and its "
                  "offline checkpoint scaled_offline.pth (or a .safetensors copy) in the models folder or given as "
                  "a path; nothing is downloaded at run time")


class TrackerError(SmiteError):
    """A tracker cannot be built or run (missing package or checkpoint, bad input)."""


@dataclass
class Tracks:
    """Dense tracks of one window.

    ``positions`` float32 ``[Fq,Ft,N,2]``: ``(x, y)`` in grid coordinates of query ``n`` of query
    frame ``query_frames[i]`` in frame ``j`` (``N = h*w``, row-major cells). ``visible`` bool
    ``[Fq,Ft,N]``. ``query_frames`` long ``[Fq]`` indexes the window's ``Ft`` frames.
    """

    positions: torch.Tensor
    visible: torch.Tensor
    query_frames: torch.Tensor
    grid_hw: tuple[int, int]

    @property
    def num_frames(self) -> int:
        return self.positions.shape[1]


def grid_points(grid_hw: tuple[int, int]) -> torch.Tensor:
    """Cell centres ``[N,2]`` (x, y) in grid coordinates, row-major."""
    h, w = grid_hw
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
    return torch.stack([xs.flatten(), ys.flatten()], dim=1)


def _check_frames(frames: torch.Tensor, grid_hw) -> tuple[torch.Tensor, tuple[int, int]]:
    frames = torch.as_tensor(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape[0] < 1:
        raise InputError(f"frames: expected [F,H,W,3] in 0..1, got shape {tuple(frames.shape)}")
    h, w = (int(grid_hw[0]), int(grid_hw[1]))
    if h < 1 or w < 1:
        raise InputError(f"grid: must be at least 1x1 cells (got {h}x{w})")
    return frames, (h, w)


def _query_frames(query_frames, num_frames: int) -> torch.Tensor:
    if query_frames is None:
        return torch.arange(num_frames)
    q = torch.as_tensor(query_frames, dtype=torch.long).reshape(-1)
    if q.numel() and (q.min() < 0 or q.max() >= num_frames):
        raise InputError(f"query frames: must lie in 0..{num_frames - 1}")
    return q


class Tracker:
    """Base class: ``track(frames [F,H,W,3] 0..1, grid_hw, query_frames=None, max_offset=None) -> Tracks``.

    ``query_frames`` (default all) selects the query frames; ``max_offset`` lets a tracker skip
    frames further than that from their query frame (they are then reported invisible).
    """

    name = "base"

    def track(self, frames: torch.Tensor, grid_hw: tuple[int, int], query_frames=None,
              max_offset: int | None = None) -> Tracks:
        raise NotImplementedError


class StaticTracker(Tracker):
    """``static``: every point stays in its own cell and is visible in every frame."""

    name = "static"

    def track(self, frames, grid_hw, query_frames=None, max_offset=None) -> Tracks:
        frames, grid_hw = _check_frames(frames, grid_hw)
        t = frames.shape[0]
        q = _query_frames(query_frames, t)
        pts = grid_points(grid_hw)
        positions = pts.expand(len(q), t, -1, -1).clone()
        visible = torch.ones(len(q), t, pts.shape[0], dtype=torch.bool)
        if max_offset is not None:
            visible &= ((torch.arange(t)[None] - q[:, None]).abs() <= max_offset)[..., None]
        return Tracks(positions, visible, q, grid_hw)


# ----------------------------------------------------------------------------- optical flow


def _sample(field: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Bilinear samples of ``field [B,2,H,W]`` at pixel positions ``points [B,N,2]`` -> ``[B,N,2]``."""
    h, w = field.shape[-2:]
    scale = torch.tensor([2.0 / w, 2.0 / h])
    grid = ((points + 0.5) * scale - 1.0)[:, :, None, :]
    return F.grid_sample(field, grid, mode="bilinear", padding_mode="border", align_corners=False)[..., 0].transpose(1, 2)


class FlowTracker(Tracker):
    """Chained dense optical flow (OpenCV DIS) with a forward-backward consistency check.

    Flow is computed between consecutive frames at ``max_side`` pixels on the long side (never
    upscaled). A link from ``p`` with flow ``f`` to ``p + f`` is consistent when the reverse flow
    ``b`` there satisfies ``|f + b|^2 <= alpha (|f|^2 + |b|^2) + (beta * cell)^2``, with ``cell`` the
    grid cell size in flow pixels. Once a link fails (occlusion, leaving the frame) the point stays
    invisible further along that direction.
    """

    name = "flow"

    def __init__(self, max_side: int = 256, preset: str = "medium", alpha: float = 0.05, beta: float = 0.25):
        presets = {"ultrafast": 0, "fast": 1, "medium": 2}
        if preset not in presets:
            raise InputError(f"flow preset: {preset!r} is not one of {', '.join(presets)}")
        self.max_side, self.preset, self.alpha, self.beta = int(max_side), presets[preset], alpha, beta

    def flow_size(self, frame_hw: tuple[int, int]) -> tuple[int, int]:
        """``(H, W)`` the flow is computed at."""
        h, w = frame_hw
        scale = min(1.0, self.max_side / max(h, w))
        return max(8, round(h * scale)), max(8, round(w * scale))

    def flows(self, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, tuple[int, int]]:
        """Forward flows ``[F-1,2,h,w]`` (frame t -> t+1) and backward flows (t+1 -> t) in flow pixels."""
        import cv2

        size = self.flow_size(tuple(frames.shape[1:3]))
        grey = (frames.float().clamp(0, 1) @ torch.tensor([0.299, 0.587, 0.114]) * 255).round().to(torch.uint8).numpy()
        small = [cv2.resize(g, (size[1], size[0]), interpolation=cv2.INTER_AREA) if g.shape != size else g for g in grey]
        dis = cv2.DISOpticalFlow_create(self.preset)
        fwd = [dis.calc(a, b, None) for a, b in zip(small[:-1], small[1:])]
        bwd = [dis.calc(b, a, None) for a, b in zip(small[:-1], small[1:])]
        as_tensor = lambda fl: torch.from_numpy(np.stack(fl)).permute(0, 3, 1, 2).float() if fl else torch.zeros(0, 2, *size)
        return as_tensor(fwd), as_tensor(bwd), size

    def track(self, frames, grid_hw, query_frames=None, max_offset=None) -> Tracks:
        frames, grid_hw = _check_frames(frames, grid_hw)
        t = frames.shape[0]
        q = _query_frames(query_frames, t)
        fwd, bwd, size = self.flows(frames)
        gh, gw = grid_hw
        cell = torch.tensor([size[1] / gw, size[0] / gh])  # flow pixels per cell (x, y)
        start = (grid_points(grid_hw) + 0.5) * cell - 0.5  # cell centres in flow pixels [N,2]
        n = start.shape[0]
        positions = start.expand(len(q), t, n, 2).clone()
        visible = torch.zeros(len(q), t, n, dtype=torch.bool)
        rows = torch.arange(len(q))
        visible[rows, q] = True
        tol = (self.beta * float(cell.max())) ** 2
        reach = t - 1 if max_offset is None else min(int(max_offset), t - 1)
        for direction, step_flows, back_flows in ((1, fwd, bwd), (-1, bwd, fwd)):
            for d in range(1, reach + 1):
                target = q + direction * d
                sel = (target >= 0) & (target < t)
                if not sel.any():
                    continue
                i, tgt = rows[sel], target[sel]
                prev = tgt - direction
                link = torch.minimum(prev, tgt)  # flow index between frames prev and tgt
                src = positions[i, prev]
                step = _sample(step_flows[link], src)
                dst = src + step
                back = _sample(back_flows[link], dst)
                err = (step + back).square().sum(-1)
                ok = err <= self.alpha * (step.square().sum(-1) + back.square().sum(-1)) + tol
                inside = ((dst >= -0.5) & (dst <= torch.tensor([size[1], size[0]]) - 0.5)).all(-1)
                positions[i, tgt] = dst
                visible[i, tgt] = visible[i, prev] & ok & inside
        positions = (positions + 0.5) / cell - 0.5
        return Tracks(positions, visible, q, grid_hw)


# ----------------------------------------------------------------------------- CoTracker3


def find_cotracker_checkpoint(checkpoint: str | os.PathLike | None) -> Path:
    """The checkpoint file: ``checkpoint`` itself, or the first of ``COTRACKER_FILES`` in that folder
    (or its ``cotracker/`` subfolder)."""
    if checkpoint is None or str(checkpoint) == "":
        raise TrackerError(f"cotracker: no checkpoint given. {COTRACKER_HELP}")
    path = Path(checkpoint)
    if path.is_dir():
        for folder in (path, path / "cotracker"):
            for name in COTRACKER_FILES:
                if (folder / name).is_file():
                    return folder / name
        raise TrackerError(f"{path}: no CoTracker3 checkpoint ({', '.join(COTRACKER_FILES[:3])}, ...) in this folder. "
                           f"{COTRACKER_HELP}")
    if not path.is_file():
        raise TrackerError(f"{path}: no such CoTracker checkpoint. {COTRACKER_HELP}")
    return path


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a ``.safetensors`` file, or of a ``.pth`` read with ``torch.load(weights_only=True)``
    (nothing is unpickled beyond tensors); a ``{"model": ...}`` wrapper is unwrapped."""
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # several types for damaged files
        raise TrackerError(f"{path}: not a readable CoTracker checkpoint ({' '.join(str(exc).split())[:160]})") from None
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise TrackerError(f"{path}: not a CoTracker state dict")
    return state


class CoTrackerTracker(Tracker):
    """CoTracker3 offline from the installed ``cotracker`` package and a local checkpoint.

    One call per window: queries ``(t, x, y)`` at every grid cell centre of every query frame,
    ``backward_tracking=True``, frames resized to the model's resolution and passed in 0..255.
    ``chunk``: at most this many queries per call (None: all in one call).
    """

    name = "cotracker"

    def __init__(self, checkpoint: str | os.PathLike | None, device: str | torch.device = "cpu",
                 chunk: int | None = None):
        try:
            from cotracker.predictor import CoTrackerPredictor
        except ImportError:
            raise TrackerError(f"cotracker: the package is not installed. {COTRACKER_HELP}") from None
        path = find_cotracker_checkpoint(checkpoint)
        state = read_state_dict(path)
        try:
            predictor = CoTrackerPredictor(checkpoint=None, offline=True, window_len=60)
        except TypeError:
            raise TrackerError("cotracker: the installed package is older than CoTracker3 (no offline model)") from None
        try:
            predictor.model.load_state_dict(state)
        except RuntimeError as exc:
            raise TrackerError(f"{path}: does not fit the CoTracker3 offline model "
                               f"({' '.join(str(exc).split())[:160]})") from None
        self.device = torch.device(device)
        self.predictor = predictor.eval().to(self.device)
        self.checkpoint = path
        self.chunk = chunk

    @torch.no_grad()
    def track(self, frames, grid_hw, query_frames=None, max_offset=None) -> Tracks:
        frames, grid_hw = _check_frames(frames, grid_hw)
        t = frames.shape[0]
        q = _query_frames(query_frames, t)
        shape = tuple(int(s) for s in getattr(self.predictor, "interp_shape", frames.shape[1:3]))
        video = frames.permute(0, 3, 1, 2).float().clamp(0, 1)
        if tuple(video.shape[-2:]) != shape:
            video = F.interpolate(video, size=shape, mode="bilinear", antialias=True, align_corners=False)
        video = (video * 255.0)[None].to(self.device)  # [1,F,3,H,W] in 0..255 (D2)
        gh, gw = grid_hw
        hh, ww = shape
        cell = torch.tensor([ww / gw, hh / gh])
        pts = (grid_points(grid_hw) + 0.5) * cell - 0.5  # pixel coordinates [N,2]
        n = pts.shape[0]
        queries = torch.cat([q.float()[:, None, None].expand(-1, n, 1), pts.expand(len(q), n, 2)], dim=2).reshape(1, -1, 3)
        chunk = self.chunk or queries.shape[1]
        tracks, visible = [], []
        for s in range(0, queries.shape[1], chunk):
            tr, vis = self.predictor(video, queries=queries[:, s:s + chunk].to(self.device), backward_tracking=True)
            tracks.append(tr[0].float().cpu())
            visible.append(vis[0].cpu().bool())
        tracks = torch.cat(tracks, dim=1).reshape(t, len(q), n, 2).transpose(0, 1)
        visible = torch.cat(visible, dim=1).reshape(t, len(q), n).transpose(0, 1).clone()
        if max_offset is not None:
            visible &= ((torch.arange(t)[None] - q[:, None]).abs() <= max_offset)[..., None]
        return Tracks(((tracks + 0.5) / cell - 0.5).contiguous(), visible, q, grid_hw)


def make_tracker(name: str, checkpoint: str | os.PathLike | None = None, device: str | torch.device = "cpu") -> Tracker:
    """A tracker by name (:data:`TRACKERS`): ``flow`` (default), ``cotracker`` (needs ``checkpoint``: file or
    folder) or ``static``."""
    if isinstance(name, Tracker):
        return name
    if name == "flow":
        return FlowTracker()
    if name == "static":
        return StaticTracker()
    if name == "cotracker":
        return CoTrackerTracker(checkpoint, device=device)
    raise InputError(f"tracker: {name!r} is not one of {', '.join(TRACKERS)}")
