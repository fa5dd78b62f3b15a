"""Segmentation: windows, blending, any length and size, streaming order, Baseline-I switch."""

import pytest
import torch
from conftest import blob_reference

from smite_core.errors import InputError
from smite_core.method.embedding import SegmentEmbedding
from smite_core.method.segment import SegmentConfig, blend_weights, segment_frames, segment_stream, window_spans
from smite_core.method.was import labels_from_was


@pytest.mark.parametrize("frames,expected", [
    (1, [(0, 1)]), (16, [(0, 16)]), (20, [(0, 16), (4, 20)]),
    (40, [(0, 16), (8, 24), (16, 32), (24, 40)]), (30, [(0, 16), (8, 24), (14, 30)]),
])
def test_window_spans(frames, expected):
    assert window_spans(frames, 16, 8) == expected


def test_blend_weights_cross_fade():
    w_prev = blend_weights((0, 16), None, (8, 24))
    w_next = blend_weights((8, 24), (0, 16), None)
    assert (w_prev[:8] == 1).all() and (w_next[8:] == 1).all()
    overlap_prev, overlap_next = w_prev[8:], w_next[:8]
    assert (overlap_prev > 0).all() and (overlap_next > 0).all()
    assert (overlap_prev.diff() < 0).all() and (overlap_next.diff() > 0).all()


@pytest.fixture(scope="module")
def embedding(tiny_backbone):
    g = torch.Generator().manual_seed(0)
    return SegmentEmbedding(tokens=torch.randn(2, tiny_backbone.context_dim, generator=g),
                            names=["background", "a", "b"], backbone_fingerprint=tiny_backbone.fingerprint)


class CountingSource:
    """A FrameSource stand-in that records which ranges were read."""

    def __init__(self, frames):
        self.frames, self.reads = frames, []
        self.num_frames, self.height, self.width = frames.shape[0], frames.shape[1], frames.shape[2]

    def read(self, start, stop):
        self.reads.append((start, stop))
        return self.frames[start:stop]


@pytest.mark.parametrize("num_frames", [1, 7, 20])
def test_any_length_streams_in_order(tiny_backbone, embedding, num_frames):
    image, _ = blob_reference(64)
    frames = image[None].repeat(num_frames, 1, 1, 1)
    source = CountingSource(frames)
    config = SegmentConfig(window=8, overlap=4, size=64)
    got = list(segment_stream(tiny_backbone, embedding, source, config))
    assert [i for i, _ in got] == list(range(num_frames))
    side = 64 // tiny_backbone.latent_factor
    assert all(m.shape == (3, side, side) and torch.isfinite(m).all() for _, m in got)
    assert source.reads == window_spans(num_frames, 8, 4)  # each window read once, in order


def test_non_square_odd_frames_give_labels_of_their_own_size(tiny_backbone, embedding):
    frames = torch.rand(3, 45, 71, 3)
    was = segment_frames(tiny_backbone, embedding, frames, SegmentConfig(size=(64, 128)))
    f = tiny_backbone.latent_factor
    assert was.shape == (3, 3, 64 // f, 128 // f)
    assert labels_from_was(was, (45, 71)).shape == (3, 45, 71)


def test_inflation_changes_the_maps_and_baseline_is_per_frame(tiny_backbone, embedding):
    torch.manual_seed(0)
    frames = torch.rand(4, 64, 64, 3)
    inflated = segment_frames(tiny_backbone, embedding, frames, SegmentConfig(size=64))
    baseline = segment_frames(tiny_backbone, embedding, frames, SegmentConfig(size=64, inflate=False))
    assert not torch.allclose(inflated, baseline, atol=1e-4)
    # Baseline-I: a frame's maps do not depend on the other frames of its window
    changed = frames.clone()
    changed[3] = torch.rand(64, 64, 3)
    again = segment_frames(tiny_backbone, embedding, changed, SegmentConfig(size=64, inflate=False))
    assert torch.allclose(again[:3], baseline[:3], atol=1e-5)
    inflated_changed = segment_frames(tiny_backbone, embedding, changed, SegmentConfig(size=64))
    assert not torch.allclose(inflated_changed[:3], inflated[:3], atol=1e-5)


def test_temporal_settings_are_on_by_default_and_validated():
    config = SegmentConfig()
    config.validate()
    assert config.tracker == "flow" and config.track_weight > 0 and config.lowpass_weight > 0
    assert config.temporal and config.guided and config.vote_window == 15
    assert not SegmentConfig(inflate=False).temporal  # Baseline-I is per-frame
    assert not SegmentConfig(tracker="none", track_weight=0, lowpass_weight=0).temporal
    for bad, match in [(dict(tracker="raft"), "tracker"), (dict(track_weight=-1), "track-weight"),
                       (dict(lowpass_weight=float("nan")), "lowpass-weight"), (dict(lowpass_cutoff=0), "lowpass-cutoff"),
                       (dict(vote_window=0), "vote-window"), (dict(guide_slice=0), "guide-slice"),
                       (dict(tracker="cotracker"), "tracker-checkpoint"), (dict(window=4, overlap=4), "overlap")]:
        with pytest.raises(InputError, match=match):
            SegmentConfig(**bad).validate()


def test_embedding_from_another_backbone_is_refused(tiny_backbone, embedding):
    from smite_core.errors import EmbeddingError

    other = SegmentEmbedding(embedding.tokens, embedding.names, "ffffffffffffffff")
    with pytest.raises(EmbeddingError):
        segment_frames(tiny_backbone, other, torch.rand(1, 64, 64, 3))


def test_precomputed_latents_give_the_same_maps(tiny_backbone, embedding):
    from smite_core.method.inversion import encode_frames

    torch.manual_seed(3)
    frames = torch.rand(5, 64, 64, 3)
    # no latent optimisation: Adam's normalised steps would amplify float noise of batched VAE encoding
    config = SegmentConfig(size=64, window=4, overlap=2, track_weight=0.0, lowpass_weight=0.0)
    direct = segment_frames(tiny_backbone, embedding, frames, config)
    latents = encode_frames(tiny_backbone, frames, (64, 64))
    assert torch.allclose(segment_frames(tiny_backbone, embedding, frames, config, latents=latents), direct, atol=1e-4)  # batched VAE float noise
    with pytest.raises(InputError, match="latents"):
        segment_frames(tiny_backbone, embedding, frames, config, latents=latents[:3])


def test_each_frame_is_vae_encoded_once(tiny_backbone, embedding, monkeypatch):
    import smite_core.method.segment as segment_module

    encoded = []
    real = segment_module.encode_frames

    def counting(backbone, frames, size, *args, **kwargs):
        encoded.append(frames.shape[0])
        return real(backbone, frames, size, *args, **kwargs)

    monkeypatch.setattr(segment_module, "encode_frames", counting)
    frames = torch.rand(11, 64, 64, 3)
    config = SegmentConfig(size=64, window=4, overlap=2, tracker="none", track_weight=0.0, lowpass_weight=0.0)
    was = segment_frames(tiny_backbone, embedding, frames, config)
    assert was.shape[0] == 11 and sum(encoded) == 11


def test_tiny_backbone_learns_at_192_and_segments_at_256(tiny_backbone):
    """The tiny backbone's maps are finer at 256 px (docs/quality.md); SD keeps one resolution."""
    from dataclasses import replace

    from smite_core.method.inversion import working_size
    from smite_core.method.learn import LearnConfig

    assert tiny_backbone.resolution == 192 and tiny_backbone.segment_resolution == 256
    assert working_size(tiny_backbone, (300, 400)) == (256, 256)
    assert working_size(tiny_backbone, (300, 400), 200) == (192, 192)  # an explicit size wins (floored)
    assert LearnConfig.for_backbone(tiny_backbone).size is None  # learning: the backbone's resolution
    # a checkpoint without a segmentation size (every SD file) segments at its learning resolution
    single = replace(tiny_backbone, components=replace(tiny_backbone.components, segment_resolution=None))
    assert single.segment_resolution == 192 and working_size(single, (300, 400)) == (192, 192)
