"""Memory: streaming (frames read lazily, labels written window by window), sizes chosen from free
memory, gradient checkpointing, and peak RSS that stays flat in the video's length (slow tests run
``smite bench`` in a subprocess so each peak belongs to one run)."""

import json
import os
import subprocess
import sys

import pytest
import torch

from smite_core.method import guidance
from smite_core.model import memory_budget
from smite_core.model.memory_budget import available_ram, fit_count, gradient_checkpointing


def test_fit_count_only_lowers_the_configured_value():
    gib = 1 << 30
    assert fit_count(None, 1e9, cap=4) == 4  # unknown free memory: the configured value stands
    assert fit_count(10 * gib, 0, cap=4) == 4  # unknown cost
    assert fit_count(100 * gib, gib, cap=4) == 4
    assert fit_count(10 * gib, gib, cap=16, share=0.5) == 4  # 5 fit -> the power of two below
    assert fit_count(gib, 10 * gib, cap=4) == 1  # never below one frame
    assert fit_count(gib, 10 * gib, cap=4, floor=2) == 2


def test_available_ram_reads_meminfo(tmp_path):
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       24684000 kB\nMemFree:  100 kB\nMemAvailable:   18880000 kB\n")
    assert available_ram(str(meminfo)) == 18880000 * 1024
    meminfo.write_text("MemTotal: 1 kB\n")
    assert available_ram(str(meminfo)) is None
    assert available_ram(str(tmp_path / "missing")) is None


def test_denormals_are_flushed_only_inside_the_block_on_cpu():
    from smite_core.model.memory_budget import flushed_denormals

    tiny = torch.tensor([1e-39])  # an fp32 denormal
    cpu = torch.device("cpu")
    assert float(tiny * 1.0) != 0.0
    with flushed_denormals(cpu):
        if float(tiny * 1.0) != 0.0:
            pytest.skip("this CPU cannot flush denormals")
    assert float(tiny * 1.0) != 0.0  # off again afterwards
    with pytest.raises(ValueError):  # off again when the block raises
        with flushed_denormals(cpu):
            raise ValueError
    assert float(tiny * 1.0) != 0.0
    with flushed_denormals(torch.device("meta")):  # not a CPU: untouched
        assert float(tiny * 1.0) != 0.0


def _flushing() -> bool:
    return float(torch.tensor([1e-39]) * 1.0) == 0.0


def test_learning_and_segmentation_run_with_denormals_flushed_on_cpu(tiny_backbone, monkeypatch):
    from conftest import blob_reference

    from smite_core.io.references import reference_set_from_label_maps
    from smite_core.method import segment as S
    from smite_core.method.learn import LearnConfig, learn_embedding
    from smite_core.model.memory_budget import flushed_denormals

    with flushed_denormals(torch.device("cpu")):
        if not _flushing():
            pytest.skip("this CPU cannot flush denormals")
    image, labels = blob_reference(32)
    refs = reference_set_from_label_maps(image[None], labels[None], ["background", "disk", "corner"])
    during_learning = []
    embedding = learn_embedding(tiny_backbone, refs, LearnConfig(steps=2, size=32),
                                on_step=lambda step, losses: during_learning.append(_flushing()))
    assert during_learning == [True, True] and not _flushing()
    during_windows = []
    real = S.WindowRunner.run
    monkeypatch.setattr(S.WindowRunner, "run", lambda *a, **k: during_windows.append(_flushing()) or real(*a, **k))
    S.segment_frames(tiny_backbone, embedding, image[None].repeat(2, 1, 1, 1), S.SegmentConfig(inflate=False, size=32))
    assert during_windows and all(during_windows)
    assert not _flushing()


def test_cpu_keeps_the_configured_batch_and_slice(tiny_backbone):
    assert memory_budget.encode_batch(tiny_backbone, (512, 512), cap=8) == 8
    context = torch.zeros(1, 77, tiny_backbone.context_dim)
    assert guidance.guide_slice(tiny_backbone, (8, 8), context, 3, cap=4) == 4
    assert not memory_budget.checkpointing_wanted(tiny_backbone) and not memory_budget.half_precision(tiny_backbone)


def test_gradient_checkpointing_recomputes_the_pooled_window_exactly(tiny_backbone, monkeypatch):
    from smite_core.method.was import was_inference
    from smite_core.model.unet_pass import unet_forward

    calls = []
    real = memory_budget._checkpoint
    monkeypatch.setattr(memory_budget, "_checkpoint", lambda fn, *args: calls.append(1) or real(fn, *args))
    g = torch.Generator().manual_seed(0)
    context = torch.randn(1, 77, tiny_backbone.context_dim, generator=g)
    start = torch.randn(3, 4, 8, 8, generator=g)
    grads = {}
    for on in (False, True):
        z = start.clone().requires_grad_(True)
        out, record = unet_forward(tiny_backbone, z, 100, context, 3, inflate=True, pool_norm=True, checkpointing=on)
        energy = was_inference(record).square().mean() + out.square().mean()
        grads[on] = torch.autograd.grad(energy, z)[0]
    assert calls  # the ResNets really were checkpointed (frame-pooled GroupNorm inside)
    assert grads[False].abs().max() > 0
    assert torch.allclose(grads[True], grads[False], atol=1e-6)
    blocks = memory_budget.checkpointable_blocks(tiny_backbone.unet)
    assert blocks and not any(b.gradient_checkpointing for b in blocks)  # restored
    with gradient_checkpointing(tiny_backbone.unet) as switched:
        assert switched == len(blocks) and all(b.gradient_checkpointing for b in blocks)
    assert not any(b.gradient_checkpointing for b in blocks)


def test_labels_are_written_window_by_window(tiny_backbone, tmp_path, monkeypatch):
    """Frames are read one window at a time and each frame's labels are on disk before the frames
    two windows later are read: nothing of the whole video's length is held."""
    from smite_core.io.video_io import FrameSource
    from smite_core.method import export
    from smite_core.method.embedding import SegmentEmbedding
    from smite_core.method.export import export_segmentation
    from smite_core.method.segment import SegmentConfig, segment_stream

    events = []
    source = FrameSource.from_tensor(torch.rand(14, 48, 48, 3, generator=torch.Generator().manual_seed(0)))
    real_read, real_save = source.read, export.save_label_png
    source.read = lambda a, b: events.append(("read", a, b)) or real_read(a, b)
    monkeypatch.setattr(export, "save_label_png",
                        lambda path, labels, **kw: events.append(("write", int(path.stem))) or real_save(path, labels, **kw))
    g = torch.Generator().manual_seed(0)
    embedding = SegmentEmbedding(torch.randn(2, tiny_backbone.context_dim, generator=g), ["background", "a", "b"],
                                 tiny_backbone.fingerprint)
    config = SegmentConfig(window=4, overlap=2, size=64)  # tracking, voting and guidance on
    maps = segment_stream(tiny_backbone, embedding, source, config)
    summary = export_segmentation(tmp_path / "out", maps, source, embedding.names, overlay_format="mp4")
    assert summary["frames"] == 14 and len(list((tmp_path / "out" / "labels").iterdir())) == 14
    reads = [e for e in events if e[0] == "read" and e[2] - e[1] > 1]  # window reads (the overlay reads 1 frame)
    writes = [e[1] for e in events if e[0] == "write"]
    assert writes == list(range(14)) and [r[1:] for r in reads] == [(0, 4), (2, 6), (4, 8), (6, 10), (8, 12), (10, 14)]
    for read in reads:  # when a window is read, every frame before it is already on disk
        written = {e[1] for e in events[:events.index(read)] if e[0] == "write"}
        assert written == set(range(read[1]))


def _bench(*args: str, timeout: int) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "2"))
    proc = subprocess.run([sys.executable, "-m", "smite_core.commands.cli", "bench", "--device", "cpu", "--no-vote", "--json",
                           *args], capture_output=True, text=True, timeout=timeout, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_peak_rss_at_64_frames_is_at_most_1_3_times_that_at_16():
    # working size 192 (docs/performance.md's numbers; the bound is about growth with length, not the working size)
    short = _bench("--frames", "16", "--frame-size", "512", "--size", "192", timeout=3600)
    long = _bench("--frames", "64", "--frame-size", "512", "--size", "192", timeout=3600)
    assert long["frames"] == 64 and long["windows"] == 7
    assert long["peak_rss_mb"] <= 1.3 * short["peak_rss_mb"], (short["peak_rss_mb"], long["peak_rss_mb"])


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("SMITE_LONG_TESTS") != "1",
                    reason="about an hour on 2 CPU cores, more than CI's budget: set SMITE_LONG_TESTS=1")
def test_a_1000_frame_512_video_stays_within_3_gb():
    result = _bench("--frames", "1000", "--frame-size", "512", "--size", "192", timeout=4 * 3600)
    assert result["frames"] == 1000
    assert result["peak_rss_mb"] <= 3 * 1024, result["peak_rss_mb"]
