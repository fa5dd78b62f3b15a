"""Bidirectional temporal voting: exact agreement with a naive loop, clipped windows, whole videos."""

import numpy as np
import pytest
import torch

from smite_core.errors import InputError
from smite_core.temporal.tracking import StaticTracker, Tracks
from smite_core.temporal.voting import vote_tracks, vote_video, window_offsets


def naive_vote(maps, tracks, window):
    """Algorithm 1 of docs/method.md as plain loops (the reference code's form)."""
    frames, k, h, w = maps.shape
    before, after = window_offsets(window)
    out = torch.zeros(len(tracks.query_frames), k, h, w)
    for qi, i in enumerate(tracks.query_frames.tolist()):
        for n in range(h * w):
            vectors = []
            for j in range(max(0, i - before), min(frames, i + after + 1)):
                if j == i:
                    vectors.append(maps[j, :, n // w, n % w])
                    continue
                x, y = tracks.positions[qi, j, n].tolist()
                u, v = int(np.floor(x + 0.5)), int(np.floor(y + 0.5))
                if tracks.visible[qi, j, n] and 0 <= u < w and 0 <= v < h:
                    vectors.append(maps[j, :, v, u])
            labels = [int(vec.argmax()) for vec in vectors]
            counts = [labels.count(c) for c in range(k)]
            mode = counts.index(max(counts))  # first maximum: the smallest label wins ties
            total = torch.zeros(k)
            agreeing = 0
            for vec, lab in zip(vectors, labels):
                if lab == mode:
                    total = total + vec
                    agreeing += 1
            out[qi, :, n // w, n % w] = total / agreeing
    return out


def random_problem(frames=9, k=4, h=5, w=7, seed=0, query=None):
    g = torch.Generator().manual_seed(seed)
    # multiples of 1/8 in a small range: sums are exact in float32, so any summation order agrees
    maps = torch.randint(-8, 9, (frames, k, h, w), generator=g).float() / 8
    q = torch.arange(frames) if query is None else torch.as_tensor(query)
    positions = torch.rand(len(q), frames, h * w, 2, generator=g) * torch.tensor([w + 2.0, h + 2.0]) - 1.5
    visible = torch.rand(len(q), frames, h * w, generator=g) > 0.3
    return maps, Tracks(positions, visible, q, (h, w))


@pytest.mark.parametrize("window", [1, 2, 5, 15])
def test_vote_equals_naive_loop_exactly(window):
    maps, tracks = random_problem(seed=window)
    assert torch.equal(vote_tracks(maps, tracks, window), naive_vote(maps, tracks, window))


def test_vote_on_query_subset_and_in_small_chunks():
    maps, tracks = random_problem(frames=6, query=[1, 4, 5], seed=3)
    expected = naive_vote(maps, tracks, 15)
    assert torch.equal(vote_tracks(maps, tracks, 15), expected)
    assert torch.equal(vote_tracks(maps, tracks, 15, chunk_elements=1), expected)  # one query frame at a time


def test_ties_go_to_the_smallest_label_and_the_own_cell_always_counts():
    maps = torch.zeros(2, 3, 1, 1)
    maps[0, 2, 0, 0] = 1.0  # frame 0 says class 2
    maps[1, 1, 0, 0] = 1.0  # frame 1 says class 1
    visible = torch.ones(2, 2, 1, dtype=torch.bool)
    tracks = Tracks(torch.zeros(2, 2, 1, 2), visible, torch.arange(2), (1, 1))
    out = vote_tracks(maps, tracks, 3)
    assert out.argmax(1).flatten().tolist() == [1, 1]  # one vote each: class 1 < class 2
    tracks.visible[:] = False  # nothing visible: each query keeps its own vector
    assert torch.equal(vote_tracks(maps, tracks, 3), maps)


@pytest.mark.parametrize("frames", [1, 7, 15, 40])
def test_clipped_windows_on_short_and_long_videos(frames):
    g = torch.Generator().manual_seed(frames)
    video = torch.rand(frames, 8, 8, 3, generator=g)
    labels = torch.randint(0, 3, (frames, 6, 6), generator=g)
    out = vote_video(video, labels, tracker="static", window=15)
    assert out.shape == labels.shape and out.dtype == labels.dtype
    before, after = window_offsets(15)
    for i in (0, frames // 2, frames - 1):  # the static vote is the per-pixel mode over the clipped window
        window = labels[max(0, i - before):i + after + 1]
        counts = torch.nn.functional.one_hot(window, 3).sum(0)
        assert torch.equal(out[i], counts.argmax(-1))
    if frames == 1:
        assert torch.equal(out, labels)


def test_vote_video_removes_a_flicker_and_keeps_maps_and_labels_kinds():
    video = torch.rand(9, 16, 16, 3)
    labels = torch.zeros(9, 16, 16, dtype=torch.uint8)
    labels[:, 4:12, 4:12] = 1
    flickered = labels.clone()
    flickered[4, 0:3, 0:3] = 2  # a blob in one frame only
    out = vote_video(video, flickered, tracker="static")
    assert out.dtype == torch.uint8 and torch.equal(out, labels)
    maps = torch.nn.functional.one_hot(flickered.long(), 3).permute(0, 3, 1, 2).float()
    voted = vote_video(video, maps, tracker="static")
    assert voted.shape == maps.shape and voted.dtype == maps.dtype
    assert torch.equal(voted.argmax(1), labels.long())


def test_large_label_maps_vote_on_a_grid_and_keep_their_detail():
    video = torch.rand(5, 32, 32, 3)
    labels = torch.zeros(5, 64, 64, dtype=torch.long)
    labels[:, 10:50, 10:50] = 1
    labels[:, 20, 20] = 2  # a one-pixel detail present in every frame
    flickered = labels.clone()
    flickered[2, 40:64, 40:64] = 3  # a large blob in one frame
    out = vote_video(video, flickered, tracker="static", max_grid=16)  # 4x4 pixels per voting cell
    assert out.shape == labels.shape
    assert torch.equal(out[:, 20, 20], torch.full((5,), 2))  # unchanged cells keep their own pixels
    assert (out[2] == 3).sum() == 0


def test_flow_voting_reduces_flicker_on_a_moving_procedural_video():
    from smite_core.procedural import make_video
    from smite_core.tools.quality import score

    size = 192
    video = make_video("car", 11, 10, (size, size), occluder=False)
    rng = np.random.default_rng(0)
    noisy = video.labels.astype(np.int64).copy()
    yy, xx = np.mgrid[:size, :size]
    for t in range(len(noisy)):  # a wrong-class disc in every frame, somewhere else each time
        y, x = rng.integers(8, size - 8, 2)
        noisy[t][(yy - y) ** 2 + (xx - x) ** 2 < (size / 16) ** 2] = rng.integers(0, len(video.names))
    before = score(video, noisy)
    out = vote_video(torch.from_numpy(video.frames), torch.from_numpy(noisy), tracker="flow").numpy()
    after = score(video, out)
    assert after["flicker"] < 0.6 * before["flicker"]
    assert after["mIoU"] > before["mIoU"] - 0.01
    static = score(video, vote_video(torch.from_numpy(video.frames), torch.from_numpy(noisy), tracker="static").numpy())
    assert after["mIoU"] > static["mIoU"]  # following the motion beats voting at the same pixel


def test_bad_inputs_are_refused():
    video = torch.rand(3, 8, 8, 3)
    with pytest.raises(InputError, match="frames"):
        vote_video(torch.rand(3, 8, 8), torch.zeros(3, 8, 8, dtype=torch.long))
    with pytest.raises(InputError, match="maps: 2 frames"):
        vote_video(video, torch.zeros(2, 8, 8, dtype=torch.long))
    with pytest.raises(InputError, match="negative"):
        vote_video(video, -torch.ones(3, 8, 8, dtype=torch.long))
    with pytest.raises(InputError, match="window"):
        vote_video(video, torch.zeros(3, 8, 8, dtype=torch.long), window=0)
    with pytest.raises(InputError, match="float scores"):
        vote_video(video, torch.zeros(3, 2, 8, 8, dtype=torch.long))
    with pytest.raises(InputError, match="tracker"):
        vote_video(video, torch.zeros(3, 8, 8, dtype=torch.long), tracker="raft")
    maps, tracks = random_problem(frames=4)
    with pytest.raises(InputError, match="do not match"):
        vote_tracks(maps[:3], tracks)
    assert isinstance(StaticTracker().track(video, (2, 2)), Tracks)
