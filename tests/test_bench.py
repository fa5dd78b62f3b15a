"""``smite bench``: stage accounting, the voting baseline, the FLOP estimate and the CLI's JSON line."""

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from smite_core.method.profiling import STAGES
from smite_core.temporal.tracking import Tracks
from smite_core.temporal.voting import vote_tracks
from smite_core.tools import bench
from smite_core.tools.bench import StageTimer, clip_index, reference_vote_loop, voting_problem


def test_reference_loop_gives_the_vectorised_vote():
    maps, tracks = voting_problem(frames=6, classes=3, grid=5, seed=1)
    assert not tracks.visible.all() and (tracks.positions < -0.5).any()  # occlusions and tracks leaving the grid
    looped = reference_vote_loop(maps, tracks, window=5)
    voted = vote_tracks(maps, tracks, window=5)
    assert torch.allclose(voted.permute(0, 2, 3, 1).reshape(-1, 3), looped, atol=1e-6)
    some = [0, 7, 31, 149]
    assert torch.equal(reference_vote_loop(maps, tracks, window=5, queries=some), looped[some])


def test_reference_loop_breaks_ties_towards_the_smallest_label():
    # one point, 2 frames, window 3: frame 0 votes label 1, frame 1 votes label 0 -> tie -> label 0
    maps = torch.tensor([[[[0.0]], [[2.0]]], [[[3.0]], [[1.0]]]])  # [F=2,K=2,1,1]
    tracks = Tracks(torch.zeros(2, 2, 1, 2), torch.ones(2, 2, 1, dtype=torch.bool), torch.arange(2), (1, 1))
    looped = reference_vote_loop(maps, tracks, window=3)
    assert torch.equal(looped, torch.tensor([[3.0, 1.0], [3.0, 1.0]]))
    assert torch.equal(vote_tracks(maps, tracks, window=3).reshape(2, 2), looped)


def test_stage_timer_keeps_each_stage_own_time(monkeypatch):
    clock = [0.0]
    monkeypatch.setattr(bench.time, "perf_counter", lambda: clock[0])
    timer = StageTimer("cpu")

    def tick(seconds):
        clock[0] += seconds

    def guidance(frames):  # 1 s of its own around a 2 s UNet pass, twice
        with timer.stage("guidance_backward", items=frames):
            tick(0.5)
            with timer.stage("unet"):
                tick(2.0)
            tick(0.5)

    guidance(4)
    guidance(3)
    assert timer.seconds["unet"] == 4.0 and timer.seconds["guidance_backward"] == 2.0
    assert timer.calls["unet"] == 2 and timer.items["guidance_backward"] == 7
    with pytest.raises(ValueError):
        with timer.stage("nap"):
            pass


def test_segmentation_reports_every_stage_to_its_profiler(tiny_backbone):
    """The pipeline's own profiler hook (no monkeypatching): each stage is reported where it runs."""
    from smite_core.io.video_io import FrameSource
    from smite_core.method.embedding import SegmentEmbedding
    from smite_core.method.export import export_segmentation
    from smite_core.method.profiling import Profiler
    from smite_core.method.segment import SegmentConfig, segment_stream

    class Recorder(Profiler):
        def __init__(self):
            self.seen = []

        def stage(self, name, items=0):
            self.seen.append((name, items))
            return super().stage(name, items)

    g = torch.Generator().manual_seed(0)
    embedding = SegmentEmbedding(torch.randn(2, tiny_backbone.context_dim, generator=g), ["background", "a", "b"],
                                 tiny_backbone.fingerprint)
    video = FrameSource.from_tensor(torch.rand(5, 32, 32, 3, generator=g))
    recorder = Recorder()
    maps = segment_stream(tiny_backbone, embedding, video, SegmentConfig(size=32, window=4, overlap=2),
                          profiler=recorder)
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        export_segmentation(Path(tmp) / "out", maps, video, embedding.names, overlay_format=None, profiler=recorder)
    names = {name for name, _ in recorder.seen}
    assert names == set(STAGES)
    assert sum(items for name, items in recorder.seen if name == "vae_encode") == 5  # each frame encoded once
    assert [name for name, _ in recorder.seen].count("tracking") == 2  # one tracker call per window


def test_clip_plays_forth_and_back():
    assert [clip_index(i, 4) for i in range(10)] == [0, 1, 2, 3, 2, 1, 0, 1, 2, 3]
    assert [clip_index(i, 1) for i in range(3)] == [0, 0, 0]


def test_bench_cli_prints_every_stage_as_the_last_json_line(capsys):
    from smite_core.commands.cli import main

    code = main(["bench", "--frames", "20", "--frame-size", "64", "--size", "64", "--overlay", "none",
                 "--vote-ref-queries", "64", "--device", "cpu", "--json"])
    assert code == 0
    captured = capsys.readouterr()
    result = json.loads(captured.out.strip().splitlines()[-1])
    assert "bench: 100%" in captured.err and "20/20" in captured.err  # a progress bar over the frames
    for key in [f"{s}_s" for s in STAGES] + ["total_s", "unet_s", "peak_rss_mb", "vote_ms", "vote_ref_ms"]:
        assert isinstance(result[key], (int, float)) and result[key] >= 0, key
    assert result["frames"] == 20 and result["windows"] == 2  # 16-frame windows, overlap 8
    assert result["tracker_calls"] == 2  # one tracker call per window
    assert result["vae_frames"] == 20  # every frame VAE-encoded once, overlaps included
    assert result["unet_calls"] > 2 and result["guidance_backward_s"] > 0 and result["voting_s"] > 0
    assert sum(result[f"{s}_s"] for s in STAGES) <= result["total_s"] + 0.01
    assert result["vote_ref_queries"] == 64 and result["vote_max_diff"] < 1e-5
    assert "peak_cuda_mb" not in result


def test_bench_cli_errors_are_one_line(capsys):
    from smite_core.commands.cli import main

    assert main(["bench", "--frames", "0", "--device", "cpu", "--no-vote"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: --frames") and "Traceback" not in "\n".join(err)


def test_flop_estimate_counts_inflated_attention_and_the_guidance_budget():
    out = bench.sd21_estimate(size=64, num_segments=3, family="tiny")
    single, window = out["sd21_unet_tflop_1frame"], out["sd21_unet_tflop_window"]
    assert 0 < single and window > 16 * single * 0.99  # cross-frame attention grows faster than the frames
    assert out["sd21_plain_tflop_per_frame"] < out["sd21_ours_tflop_per_frame"] < out["sd21_reference_tflop_per_frame"]
    assert out["sd21_ours_fps_h100"] > out["sd21_ours_fps_a100"] > 0


@pytest.mark.slow
def test_sd21_unet_flops_match_the_known_size():
    out = bench.sd21_estimate()  # the real SD 2.1 configs at 512 (meta device)
    assert 0.7 < out["sd21_unet_tflop_1frame"] < 1.0  # about 0.8 TFLOP per 64x64 latent
    assert out["sd21_unet_tflop_window"] > 16 * out["sd21_unet_tflop_1frame"]


def test_bench_quality_passes_edge_aware_choice(monkeypatch, capsys):
    """`smite bench --quality --no-edge-aware` reaches the suite (bilinear masks), the default does not."""
    from smite_core.commands import cli
    from smite_core.tools import quality

    seen = []

    def fake_run_quality(backbone, **kwargs):
        seen.append(kwargs["edge_aware"])
        return quality.QualityResult()

    monkeypatch.setattr(quality, "run_quality", fake_run_quality)
    monkeypatch.setattr(cli, "_load_backbone", lambda args: None)
    assert cli.main(["bench", "--quality", "--shots", "1"]) == 0
    assert cli.main(["bench", "--quality", "--shots", "1", "--no-edge-aware"]) == 0
    assert seen == [True, False]


def test_bench_quality_json_writes_only_json_on_stdout(monkeypatch, capsys):
    """`smite bench --quality --json | jq` works: the table goes to stderr, stdout is one JSON document."""
    from smite_core.commands import cli
    from smite_core.tools import quality

    result = quality.QualityResult()
    result.rows[(1, "full", "car")] = {"mIoU": 0.75, "J": 0.7, "F": 0.68, "flicker": 0.01}
    monkeypatch.setattr(quality, "run_quality", lambda backbone, **kwargs: result)
    monkeypatch.setattr(cli, "_load_backbone", lambda args: None)
    assert cli.main(["bench", "--quality", "--shots", "1", "--json"]) == 0
    out, err = capsys.readouterr()
    data = json.loads(out)
    assert data["mean"]["1-shot/full"]["mIoU"] == 0.75 and data["rows"][0]["category"] == "car"
    assert "mIoU" in err and "car" in err
    assert cli.main(["bench", "--quality", "--shots", "1"]) == 0
    out, _ = capsys.readouterr()
    assert out.startswith("shots") and "car" in out


def test_quality_suite_in_worker_processes_matches_one_process(tiny_backbone, monkeypatch):
    """`--workers 2`: the same rows as one process (cases finish in any order), for every case."""
    from smite_core.tools import quality

    kwargs = dict(shots=(1, 2), categories=["car", "bird"], frames=2, methods=("per-frame",),
                  learn_overrides={"steps": 2}, say=lambda m: None)
    serial = quality.run_quality(tiny_backbone, **kwargs)

    def not_here(*args):
        raise AssertionError("with workers=2 the cases run in the worker processes, not in this one")

    monkeypatch.setattr(quality, "_run_suite_case", not_here)  # spawned workers import their own copy
    lines = []
    parallel = quality.run_quality(tiny_backbone, **{**kwargs, "say": lines.append}, workers=2)
    assert sorted(serial.rows) == sorted(parallel.rows) and len(serial.rows) == 4
    for key, row in serial.rows.items():
        for metric, value in row.items():
            assert abs(parallel.rows[key][metric] - value) < 1e-3, (key, metric)
    assert len(lines) == 4 and all("per-frame mIoU" in line for line in lines)


def test_quality_suite_in_worker_processes_reports_a_failed_case(tiny_backbone):
    """An error in a worker reaches the caller as itself (here: learning refuses 0 steps)."""
    from smite_core.errors import InputError
    from smite_core.tools import quality

    with pytest.raises(InputError, match="steps"):
        quality.run_quality(tiny_backbone, shots=(1,), categories=["car", "bird", "fish"], frames=2,
                            methods=("per-frame",), learn_overrides={"steps": 0}, say=lambda m: None, workers=2)


_ORPHAN_SCRIPT = """
import multiprocessing, os, sys, time
from concurrent.futures import ProcessPoolExecutor
from smite_core.tools import quality
pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"),
                           initializer=quality._init_worker, initargs=(None, 1))
print(pool.submit(os.getpid).result(), flush=True)
pool.submit(time.sleep, 300)
time.sleep(300)
"""


def _running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has ended
    except FileNotFoundError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_quality_worker_ends_when_the_bench_process_is_killed():
    """`kill -9` of `smite bench` must not leave a worker computing its case for minutes."""
    parent = subprocess.Popen([sys.executable, "-c", _ORPHAN_SCRIPT], stdout=subprocess.PIPE, text=True,
                              stderr=subprocess.DEVNULL,  # the killed parent's resource tracker warns of leaks
                              cwd=str(Path(__file__).resolve().parents[1]))
    try:
        line = parent.stdout.readline()
        assert line.strip().isdigit(), f"the pool did not start (printed {line!r}); run the script by hand"
        worker = int(line)
        assert _running(worker)
        parent.kill()
        parent.wait(30)
        deadline = time.monotonic() + 30
        while _running(worker) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not _running(worker), "the worker outlived its parent"
    finally:
        parent.kill()


def test_quality_workers_are_checked(tiny_backbone, capsys):
    from smite_core.commands import cli
    from smite_core.errors import InputError
    from smite_core.tools import quality

    with pytest.raises(InputError, match="--workers"):
        quality.run_quality(tiny_backbone, shots=(1,), categories=["car"], workers=0)
    assert cli.main(["bench", "--quality", "--workers", "0"]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith("error: --workers")
