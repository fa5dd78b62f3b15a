"""Temporal consistency inside segmentation (tracking, guidance, output vote, window carry) and `smite vote`."""

import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image

from smite_core.commands.cli import main
from smite_core.io.label_png import read_label_png, save_label_png
from smite_core.io.video_io import FrameSource
from smite_core.method.embedding import SegmentEmbedding
from smite_core.method.segment import SegmentConfig, segment_frames, segment_stream, segment_window
from smite_core.temporal.tracking import FlowTracker
from smite_core.temporal.voting import vote_tracks

PLAIN = dict(tracker="none", track_weight=0.0, lowpass_weight=0.0)


@pytest.fixture(scope="module")
def embedding(tiny_backbone):
    g = torch.Generator().manual_seed(0)
    return SegmentEmbedding(tokens=torch.randn(2, tiny_backbone.context_dim, generator=g),
                            names=["background", "a", "b"], backbone_fingerprint=tiny_backbone.fingerprint)


def moving_video(frames, size=32, seed=0):
    """A smooth random texture sliding one pixel per frame: [T,size,size,3]."""
    g = torch.Generator().manual_seed(seed)
    texture = torch.nn.functional.interpolate(torch.rand(1, 3, 12, 12, generator=g), size=(2 * size, 2 * size),
                                              mode="bilinear", align_corners=False)[0].permute(1, 2, 0)
    return torch.stack([texture[t % size:t % size + size, t % size:t % size + size] for t in range(frames)])


@pytest.mark.parametrize("frames", [1, 7, 15, 40])
def test_any_length_segments_with_tracking_and_guidance_on(tiny_backbone, embedding, frames):
    video = moving_video(frames)
    config = SegmentConfig(size=32)
    assert config.temporal and config.guided and config.tracker == "flow"
    got = list(segment_stream(tiny_backbone, embedding, FrameSource.from_tensor(video), config))
    assert [i for i, _ in got] == list(range(frames))
    side = 32 // tiny_backbone.latent_factor
    assert all(m.shape == (3, side, side) and torch.isfinite(m).all() for _, m in got)


def test_guided_path_is_deterministic_differs_and_leaves_the_scheduler_alone(tiny_backbone, embedding):
    video = moving_video(6)
    scheduler = tiny_backbone.scheduler
    before = (dict(scheduler.config), None if scheduler.timesteps is None else scheduler.timesteps.clone(),
              scheduler.num_inference_steps)
    config = SegmentConfig(size=32, window=6, overlap=2, track_weight=1.0, lowpass_weight=1.0, guide_steps=2,
                           guide_lr=1000.0)
    guided = segment_frames(tiny_backbone, embedding, video, config)
    assert torch.equal(guided, segment_frames(tiny_backbone, embedding, video, config))
    plain = segment_frames(tiny_backbone, embedding, video, replace(config, **PLAIN))
    voted_only = segment_frames(tiny_backbone, embedding, video, replace(config, track_weight=0.0, lowpass_weight=0.0))
    assert not torch.allclose(guided, voted_only, atol=1e-4)  # the latent update changes the maps
    assert not torch.allclose(plain, voted_only, atol=1e-4)
    after = (dict(scheduler.config), None if scheduler.timesteps is None else scheduler.timesteps.clone(),
             scheduler.num_inference_steps)
    assert before[0] == after[0] and before[2] == after[2]  # a copy was stepped, never the shared one (D12)
    assert (before[1] is None and after[1] is None) or torch.equal(before[1], after[1])


def test_output_vote_is_the_vote_of_the_plain_maps(tiny_backbone, embedding):
    video = moving_video(5)
    config = SegmentConfig(size=32, window=5, overlap=0, track_weight=0.0, lowpass_weight=0.0)
    assert config.temporal and not config.guided
    voted = segment_window(tiny_backbone, embedding, video, config, torch.Generator().manual_seed(0))
    plain = segment_window(tiny_backbone, embedding, video, replace(config, **PLAIN), torch.Generator().manual_seed(0))
    tracks = FlowTracker().track(video, tuple(plain.shape[-2:]), max_offset=7)
    assert torch.allclose(voted, vote_tracks(plain, tracks, 15))
    no_vote = segment_window(tiny_backbone, embedding, video, replace(config, vote_output=False),
                             torch.Generator().manual_seed(0))
    assert torch.equal(no_vote, plain)
    baseline = segment_window(tiny_backbone, embedding, video, SegmentConfig(size=32, inflate=False),
                              torch.Generator().manual_seed(0))
    assert torch.equal(baseline, segment_window(tiny_backbone, embedding, video,
                                                SegmentConfig(size=32, inflate=False, **PLAIN),
                                                torch.Generator().manual_seed(0)))  # Baseline-I is per frame


def test_the_overlap_carries_the_previous_window(tiny_backbone, embedding):
    video = moving_video(4)
    config = SegmentConfig(size=32, window=4, overlap=0, tracker="none", track_weight=0.0, lowpass_weight=5.0,
                           guide_lr=2000.0)
    run = lambda carry: segment_window(tiny_backbone, embedding, video, config, torch.Generator().manual_seed(0),
                                       carry=carry)
    plain = segment_window(tiny_backbone, embedding, video, replace(config, lowpass_weight=0.0),
                           torch.Generator().manual_seed(0))
    without = run(None)
    other = torch.flip(plain[:2], dims=[-1]) * 3
    with_carry = run(other)
    assert not torch.allclose(with_carry[:2], without[:2], atol=1e-5)  # the carried maps are the low-pass target
    # the stream hands each window the previous window's result for the shared frames
    seen = []
    import smite_core.method.segment as segment_module

    original = segment_module.WindowRunner.run

    def spy(runner, frames, latents=None, carry=None):
        seen.append(None if carry is None else carry.shape[0])
        return original(runner, frames, latents, carry)

    try:
        segment_module.WindowRunner.run = spy
        list(segment_stream(tiny_backbone, embedding, FrameSource.from_tensor(moving_video(10)),
                            SegmentConfig(size=32, window=4, overlap=2, **PLAIN)))
    finally:
        segment_module.WindowRunner.run = original
    assert seen == [None, 2, 2, 2]


# ----------------------------------------------------------------------------- smite vote


def _png(path, image):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((image.numpy() * 255).astype(np.uint8)).save(path)


def test_smite_vote_cli(tmp_path, capsys):
    video = moving_video(8, size=48)
    labels = torch.zeros(8, 48, 48, dtype=torch.uint8)
    labels[:, 10:30, 10:30] = 1
    noisy = labels.clone()
    noisy[3, 0:6, 40:48] = 2  # a one-frame flicker
    for t in range(8):
        _png(tmp_path / "video" / f"f{t:03d}.png", video[t])
        save_label_png(tmp_path / "masks" / f"m{t:03d}.png", noisy[t].numpy())
    (tmp_path / "masks" / "segments.json").write_text(json.dumps(["background", "thing", "noise"]))
    out = tmp_path / "voted"
    assert main(["vote", "--video", str(tmp_path / "video"), "--labels", str(tmp_path / "masks"), "--out", str(out),
                 "--tracker", "static", "--overlay", "gif"]) == 0
    names = sorted(p.name for p in (out / "labels").iterdir())
    assert names == [f"m{t:03d}.png" for t in range(8)]  # the input's names
    voted = np.stack([read_label_png(out / "labels" / n) for n in names])
    assert np.array_equal(voted, labels.numpy())
    assert json.loads((out / "segments.json").read_text())[1] == "thing" and (out / "overlay.gif").is_file()
    assert main(["vote", "--video", str(tmp_path / "video"), "--labels", str(tmp_path / "masks"), "--out",
                 str(tmp_path / "flow"), "--overlay", "none", "--vote-window", "5"]) == 0  # the default flow tracker
    assert len(list((tmp_path / "flow" / "labels").iterdir())) == 8

    capsys.readouterr()
    args = ["vote", "--video", str(tmp_path / "video"), "--labels", str(tmp_path / "masks")]
    assert main(args + ["--out", str(out)]) == 2  # exists
    assert "already exists" in capsys.readouterr().err
    assert main(args + ["--out", str(tmp_path / "x"), "--vote-window", "0"]) == 2
    assert "vote window" in capsys.readouterr().err
    assert main(args + ["--out", str(tmp_path / "x"), "--tracker", "cotracker"]) == 2
    assert "cotracker" in capsys.readouterr().err
    (tmp_path / "masks" / "m007.png").unlink()
    assert main(args + ["--out", str(tmp_path / "x")]) == 2
    assert "7 label maps for 8 video frames" in capsys.readouterr().err
    save_label_png(tmp_path / "masks" / "m007.png", np.zeros((10, 10), np.uint8))
    assert main(args + ["--out", str(tmp_path / "x")]) == 2
    assert "m007.png" in capsys.readouterr().err
    assert main(["vote", "--video", str(tmp_path / "video"), "--labels", str(tmp_path / "none"), "--out",
                 str(tmp_path / "x")]) == 2
    assert not (tmp_path / "x").exists()


def test_segment_cli_accepts_the_temporal_flags(tmp_path):
    from conftest import blob_reference

    image, labels = blob_reference(32)
    _png(tmp_path / "refs" / "images" / "a.png", image)
    save_label_png(tmp_path / "refs" / "labels" / "a.png", labels.numpy())
    for t, frame in enumerate(moving_video(3)):
        _png(tmp_path / "video" / f"{t:05d}.png", frame)
    emb = tmp_path / "emb.safetensors"
    assert main(["learn", "--refs", str(tmp_path / "refs"), "--out", str(emb), "--steps", "1", "--size", "32",
                 "--device", "cpu"]) == 0
    common = ["segment", "--video", str(tmp_path / "video"), "--embedding", str(emb), "--size", "32",
              "--device", "cpu", "--overlay", "none"]
    assert main(common + ["--out", str(tmp_path / "a"), "--tracker", "flow", "--track-weight", "0.5",
                          "--lowpass-weight", "2", "--vote-window", "3", "--guide-steps", "2",
                          "--guide-iters", "1"]) == 0
    assert len(list((tmp_path / "a" / "labels").iterdir())) == 3
    assert main(common + ["--out", str(tmp_path / "b"), "--track-weight", "-1"]) == 2
    assert main(common + ["--out", str(tmp_path / "b"), "--tracker", "cotracker"]) == 2
    assert not (tmp_path / "b").exists()
