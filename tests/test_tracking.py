"""Trackers: flow accuracy against the procedural videos' true motion, the CoTracker3 adapter against a
stand-in module with the real call signature, and the errors for a missing package or checkpoint."""

import sys
import textwrap

import numpy as np
import pytest
import torch

from smite_core.errors import InputError
from smite_core.procedural import make_video
from smite_core.temporal.tracking import (
    FlowTracker,
    StaticTracker,
    TrackerError,
    find_cotracker_checkpoint,
    grid_points,
    make_tracker,
)


def true_tracks(video, grid, query, frames):
    """Grid cell centres of frame ``query`` carried along the true motion -> {frame: [N,2] grid coordinates}."""
    _, height, width = video.labels.shape
    cell = np.array([width / grid[1], height / grid[0]])
    p = (grid_points(grid).numpy() + 0.5) * cell - 0.5
    out = {query: p.copy()}
    for t in range(query, frames - 1):
        xi = np.clip(np.floor(p[:, 0] + 0.5).astype(int), 0, width - 1)
        yi = np.clip(np.floor(p[:, 1] + 0.5).astype(int), 0, height - 1)
        p = p + video.motion[t][yi, xi]
        out[t + 1] = p.copy()
    return {t: (q + 0.5) / cell - 0.5 for t, q in out.items()}


@pytest.fixture(scope="module")
def moving():
    return make_video("robot", 21, 9, (256, 256), occluder=False)


def test_flow_tracks_follow_the_true_motion(moving):
    tracks = FlowTracker().track(torch.from_numpy(moving.frames), (32, 32))
    assert tracks.positions.shape == (9, 9, 1024, 2) and tracks.visible.shape == (9, 9, 1024)
    assert torch.equal(tracks.positions[3, 3], grid_points((32, 32)))  # a query sits at its cell centre
    assert tracks.visible[torch.arange(9), torch.arange(9)].all()
    truth = true_tracks(moving, (32, 32), 0, 9)
    for d in (1, 4, 8):
        vis = tracks.visible[0, d].numpy()
        err = np.linalg.norm(tracks.positions[0, d].numpy() - truth[d], axis=1)[vis]
        assert vis.mean() > 0.8
        assert np.median(err) < 0.15 and np.mean(err < 1.0) > 0.9  # in cells of 8 pixels
    # backward: frame 8's queries followed back to frame 0 land where frame 0's points went
    back = tracks.positions[8, 0][tracks.visible[8, 0]]
    assert ((back >= -0.5) & (back <= 31.5)).all()


def test_occluded_points_are_invisible():
    video = make_video("car", 0, 12, (256, 256))
    tracks = FlowTracker().track(torch.from_numpy(video.frames), (32, 32))
    hidden, shown = [], []
    for q in range(12):
        truth = true_tracks(video, (32, 32), q, 12)
        clean = np.ones(1024, bool)  # the true track has not been under the occluder yet (so it is exact)
        for t in range(q, 12):
            xy = np.floor((truth[t] + 0.5) * 8).astype(int)
            inside = ((xy >= 0) & (xy < 256)).all(1)
            clean &= inside
            under = np.zeros(1024, bool)
            under[clean] = video.occluder[t][xy[clean, 1], xy[clean, 0]]
            if t > q:
                vis = tracks.visible[q, t].numpy()
                hidden.append(vis[clean & under])  # first frame under the occluder
                shown.append(vis[clean & ~under])
            clean &= ~under
    hidden, shown = np.concatenate(hidden), np.concatenate(shown)
    assert len(hidden) > 100
    assert hidden.mean() < 0.2 < shown.mean()


def test_query_subset_and_max_offset_match_the_full_tracks(moving):
    frames = torch.from_numpy(moving.frames)
    tracker = FlowTracker()
    full = tracker.track(frames, (16, 16))
    part = tracker.track(frames, (16, 16), query_frames=[2, 5], max_offset=2)
    assert part.positions.shape == (2, 9, 256, 2)
    for i, q in enumerate([2, 5]):
        near = slice(q - 2, q + 3)
        assert torch.allclose(part.positions[i, near], full.positions[q, near])
        assert torch.equal(part.visible[i, near], full.visible[q, near])
        far = (torch.arange(9) - q).abs() > 2
        assert not part.visible[i, far].any()


def test_static_tracker_and_input_checks():
    tracks = StaticTracker().track(torch.rand(4, 8, 8, 3), (2, 3), max_offset=1)
    assert torch.equal(tracks.positions[1, 3], grid_points((2, 3)))
    assert tracks.visible[0, 1].all() and not tracks.visible[0, 2].any()
    with pytest.raises(InputError, match="frames"):
        FlowTracker().track(torch.rand(4, 8, 8), (2, 2))
    with pytest.raises(InputError, match="grid"):
        FlowTracker().track(torch.rand(4, 8, 8, 3), (0, 2))
    with pytest.raises(InputError, match="query"):
        FlowTracker().track(torch.rand(4, 8, 8, 3), (2, 2), query_frames=[4])
    with pytest.raises(InputError, match="tracker"):
        make_tracker("raft")
    one = FlowTracker().track(torch.rand(1, 8, 8, 3), (2, 2))  # a single frame: only the queries themselves
    assert one.visible.all() and one.positions.shape == (1, 1, 4, 2)


# ----------------------------------------------------------------------------- CoTracker3 adapter

STAND_IN = '''
"""Stand-in for cotracker.predictor with CoTracker3's constructor and call signature (test only)."""
import torch

calls = []
SHIFT = (3.0, -2.0)  # true motion of the test video, original pixels per frame


class _Model(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(3))


class CoTrackerPredictor(torch.nn.Module):
    def __init__(self, checkpoint="./checkpoints/scaled_offline.pth", offline=True, v2=False, window_len=60):
        super().__init__()
        assert checkpoint is None and offline and not v2
        self.model = _Model()
        self.interp_shape = (48, 64)

    @torch.no_grad()
    def forward(self, video, queries=None, segm_mask=None, grid_size=0, grid_query_frame=0, backward_tracking=False):
        calls.append({"video": video.clone(), "queries": queries.clone(), "backward": backward_tracking})
        b, t, c, h, w = video.shape
        frames = torch.arange(t, dtype=torch.float32)[None, :, None, None]
        scale = torch.tensor([w / ORIGINAL[1], h / ORIGINAL[0]])
        step = torch.tensor(SHIFT) * scale
        tracks = queries[:, None, :, 1:] + (frames - queries[:, None, :, :1]) * step
        visible = torch.ones(b, t, queries.shape[1], dtype=torch.bool)
        visible[:, -1, ::2] = False
        return tracks, visible


ORIGINAL = (96, 128)
'''


@pytest.fixture
def stand_in(tmp_path, monkeypatch):
    package = tmp_path / "pkg" / "cotracker"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "predictor.py").write_text(textwrap.dedent(STAND_IN))
    monkeypatch.syspath_prepend(str(tmp_path / "pkg"))
    for name in [m for m in sys.modules if m == "cotracker" or m.startswith("cotracker.")]:
        monkeypatch.delitem(sys.modules, name)
    import cotracker.predictor as module

    yield module
    for name in [m for m in sys.modules if m == "cotracker" or m.startswith("cotracker.")]:
        sys.modules.pop(name)  # not through monkeypatch: its undo would put the stand-in back


def test_cotracker_adapter_with_a_stand_in_model(stand_in, tmp_path):
    from safetensors.torch import save_file

    models = tmp_path / "models" / "smite"
    models.mkdir(parents=True)
    save_file({"weight": torch.tensor([1.0, 2.0, 3.0])}, str(models / "scaled_offline.safetensors"))
    tracker = make_tracker("cotracker", models)  # a models folder: the checkpoint is found in it
    assert torch.equal(tracker.predictor.model.weight.detach(), torch.tensor([1.0, 2.0, 3.0]))

    frames = torch.rand(5, 96, 128, 3) * 0.5
    tracks = tracker.track(frames, (6, 8))
    (call,) = stand_in.calls
    video, queries = call["video"], call["queries"]
    assert call["backward"] is True
    assert video.shape == (1, 5, 3, 48, 64) and video.max() > 100 and video.max() <= 255  # 0-255 (defect D2)
    assert queries.shape == (1, 5 * 48, 3)  # one call, every cell of every frame
    assert torch.equal(queries[0, :48, 0], torch.zeros(48)) and torch.equal(queries[0, -48:, 0], torch.full((48,), 4.0))
    assert torch.allclose(queries[0, :8, 1], (torch.arange(8) + 0.5) * 8 - 0.5)  # cell centres in model pixels

    assert tracks.positions.shape == (5, 5, 48, 2)
    assert torch.allclose(tracks.positions[2, 2], grid_points((6, 8)), atol=1e-5)
    step = torch.tensor([3.0 * 8 / 128, -2.0 * 6 / 96])  # grid cells per frame
    for q, t in [(0, 4), (4, 0), (2, 3)]:
        assert torch.allclose(tracks.positions[q, t], grid_points((6, 8)) + (t - q) * step, atol=1e-4)
    assert not tracks.visible[:, 4, ::2].any() and tracks.visible[:, 4, 1::2].all()


def test_cotracker_checkpoint_as_pth_and_errors(stand_in, tmp_path):
    pth = tmp_path / "scaled_offline.pth"
    torch.save({"model": {"weight": torch.tensor([4.0, 5.0, 6.0])}}, pth)  # the official layout
    tracker = make_tracker("cotracker", pth)
    assert torch.equal(tracker.predictor.model.weight.detach(), torch.tensor([4.0, 5.0, 6.0]))
    with pytest.raises(TrackerError, match="no checkpoint given"):
        make_tracker("cotracker")
    with pytest.raises(TrackerError, match="no CoTracker3 checkpoint"):
        make_tracker("cotracker", tmp_path / "pkg")
    with pytest.raises(TrackerError, match="no such CoTracker checkpoint"):
        make_tracker("cotracker", tmp_path / "missing.pth")
    wrong = tmp_path / "wrong.pth"
    torch.save({"other": torch.zeros(2)}, wrong)
    with pytest.raises(TrackerError, match="does not fit"):
        make_tracker("cotracker", wrong)
    damaged = tmp_path / "damaged.safetensors"
    damaged.write_bytes(b"not a checkpoint")
    with pytest.raises(TrackerError, match="not a readable"):
        make_tracker("cotracker", damaged)
    assert find_cotracker_checkpoint(pth) == pth


def test_missing_cotracker_package_says_where_to_get_it(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "cotracker", None)  # import fails
    monkeypatch.setitem(sys.modules, "cotracker.predictor", None)
    with pytest.raises(TrackerError, match="package is not installed.*CC BY-NC.*scaled_offline.pth"):
        make_tracker("cotracker", tmp_path)
