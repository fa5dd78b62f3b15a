"""``smite batch`` / ``batch.segment_many``: many videos with one embedding, locally and on a real Ray cluster.

The local tests use the session's tiny backbone in this process. The Ray tests start a cluster of their own on
this machine (a head node without CPUs and two worker nodes of one CPU each: two worker processes), run the
``smite`` command against it in a subprocess and stop the cluster at the end; they are skipped when Ray is
not installed (``pip install -e ".[ray]"``; the ``test`` extra includes it).
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from smite_core import batch
from smite_core.commands.cli import main
from smite_core.errors import InputError
from smite_core.io.label_png import read_label_png
from smite_core.io.video_io import open_video_writer
from smite_core.method.embedding import SegmentEmbedding
from smite_core.method.segment import SegmentConfig
from smite_core.procedural import make_video

ROOT = Path(__file__).resolve().parents[1]
FAST = ["--size", "32", "--guide-steps", "0", "--device", "cpu"]  # tracking and voting on, no latent update
FAST_CONFIG = SegmentConfig(size=32, guide_steps=0)
GOOD = ["shot0", "shot1", "shot2", "shot3", "frames4"]


def _write_mp4(path: Path, frames: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open_video_writer(path, fps=24) as writer:
        for frame in frames:
            writer.write(frame)
    return path


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, tiny_backbone):
    """Six short procedural videos (four mp4 files, one folder of frames, one corrupt file) and an embedding."""
    from PIL import Image

    root = tmp_path_factory.mktemp("batch-in")
    for i in range(4):
        _write_mp4(root / "shots" / f"shot{i}.mp4", make_video("car", 100 + i, num_frames=4 + i, size=(40, 48)).frames)
    folder = root / "shots" / "frames4"
    folder.mkdir()
    for t, frame in enumerate(make_video("car", 104, num_frames=5, size=(40, 48)).frames):
        Image.fromarray((frame * 255).round().astype(np.uint8)).save(folder / f"{t:05d}.png")
    (root / "shots" / "bad.mp4").write_bytes(b"\x00\x01garbage" * 300)  # a corrupt video file
    names = list(make_video("car", 100, num_frames=1, size=(40, 48)).names)
    g = torch.Generator().manual_seed(0)
    embedding = SegmentEmbedding(tokens=torch.randn(len(names) - 1, tiny_backbone.context_dim, generator=g),
                                 names=names, backbone_fingerprint=tiny_backbone.fingerprint)
    return {"root": root, "videos": sorted((root / "shots").iterdir()),
            "embedding": embedding.save(root / "parts.safetensors")}


@pytest.fixture
def fast_backbone(monkeypatch, tiny_backbone):
    """The session's tiny backbone instead of a fresh load in this process (other processes load their own)."""
    import smite_core.model.backbone as backbone_module

    real = backbone_module.load_backbone
    monkeypatch.setattr(backbone_module, "load_backbone",
                        lambda model="tiny", *a, **k: tiny_backbone if str(model) == "tiny" else real(model, *a, **k))


@pytest.fixture(scope="module")
def expected(inputs, tmp_path_factory, tiny_backbone):
    """Label maps of ``smite segment`` (same settings) for every good video: {name: [H,W] arrays}."""
    import smite_core.model.backbone as backbone_module

    real, out = backbone_module.load_backbone, tmp_path_factory.mktemp("batch-expected")
    backbone_module.load_backbone = lambda *a, **k: tiny_backbone
    try:
        for video in inputs["videos"]:
            if video.stem != "bad":
                assert main(["segment", "--video", str(video), "--embedding", str(inputs["embedding"]),
                             "--out", str(out / batch.video_name(video)), *FAST]) == 0
    finally:
        backbone_module.load_backbone = real
    return {name: _labels(out / name) for name in GOOD}


def _labels(folder: Path) -> list[np.ndarray]:
    return [read_label_png(p) for p in sorted((folder / "labels").glob("*.png"))]


def _same_labels(out: Path, expected: dict, names=GOOD) -> None:
    for name in names:
        got, want = _labels(out / name), expected[name]
        assert len(got) == len(want) > 0, name
        assert all(np.array_equal(a, b) for a, b in zip(got, want)), f"{name}: labels differ from smite segment"


def _no_leftovers(out: Path) -> None:
    hidden = [p.name for p in out.iterdir() if p.name.startswith(".")]
    assert not hidden, f"temporary files or folders left in {out}: {hidden}"


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert err and err[-1].startswith("error: ") and "Traceback" not in "\n".join(err), err
    return err[-1]


# ----------------------------------------------------------------------------- inputs and bad options


def test_videos_from_paths_globs_and_lists(tmp_path):
    shots = tmp_path / "shots"
    for name in ("a.mp4", "b.MOV", "notes.txt", "c.png"):
        (shots / name).parent.mkdir(exist_ok=True)
        (shots / name).write_bytes(b"x")
    (shots / "d").mkdir()
    (shots / "out").mkdir()  # the output folder is never an input
    found = batch.find_videos([str(shots / "*")], exclude=shots / "out")
    assert sorted(p.name for p in found) == ["a.mp4", "b.MOV", "d"]  # only video files and folders from a pattern
    listing = tmp_path / "list.txt"
    listing.write_text("# shots to do\nshots/a.mp4\n\nshots/d\nshots/a.mp4\n")
    assert [p.name for p in batch.find_videos([str(listing), str(shots / "a.mp4")])] == ["a.mp4", "d"]  # once each
    assert [batch.video_name(p) for p in found] == ["a", "b", "d"]
    with pytest.raises(InputError, match="matches no video"):
        batch.find_videos(str(tmp_path / "none" / "*.mp4"))
    with pytest.raises(InputError, match="missing.mp4"):
        batch.find_videos([str(shots / "a.mp4"), str(shots / "missing.mp4")])
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "a.mkv").write_bytes(b"x")
    with pytest.raises(InputError, match="would both write"):
        batch.plan_tasks([shots / "a.mp4", tmp_path / "other" / "a.mkv"], tmp_path / "out")


def test_bad_options_one_line_and_nothing_written(inputs, tmp_path, capsys, monkeypatch):
    out = tmp_path / "out"
    common = ["--embedding", str(inputs["embedding"]), "--out", str(out)]
    video = str(inputs["videos"][0])
    cases = [
        (["--videos", str(tmp_path / "nothing" / "*.mp4"), *common], "matches no video"),
        (["--videos", video, "--embedding", str(tmp_path / "none.safetensors"), "--out", str(out)], "none.safetensors"),
        (["--videos", video, *common, "--workers", "0"], "--workers"),
        (["--videos", video, *common, "--gpus-per-video", "1"], "--gpus-per-video"),
        (["--videos", video, *common, "--gpus-per-video", "-1", "--ray", "auto"], "--gpus-per-video"),
        (["--videos", video, *common, "--window", "0"], "window"),
    ]
    for args, culprit in cases:
        assert main(["batch", *args]) == 2
        assert culprit in _error_line(capsys)
    monkeypatch.setitem(sys.modules, "ray", None)  # as if Ray were not installed
    assert main(["batch", "--videos", video, *common, "--ray", "auto"]) == 2
    line = _error_line(capsys)
    assert "Ray is not installed" in line and 'pip install -e ".[ray]"' in line
    assert not out.exists()
    (out / "mine").mkdir(parents=True)  # an existing folder that is not a batch folder is not written into
    assert main(["batch", "--videos", video, *common]) == 2
    assert "not a smite batch folder" in _error_line(capsys)
    assert sorted(p.name for p in out.iterdir()) == ["mine"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_a_device_this_machine_lacks_is_one_line_and_nothing_written(inputs, tmp_path, capsys):
    """--device cuda without CUDA (torch raises its own AssertionError while loading): one error line naming the
    model and the device, in this process and in a pool worker, and no folder left behind."""
    out = tmp_path / "new" / "out"
    args = ["batch", "--videos", str(inputs["videos"][0]), "--embedding", str(inputs["embedding"]), "--out", str(out),
            "--size", "32", "--guide-steps", "0", "--device", "cuda"]
    for workers in ("1", "2"):  # 2: a pool (of one process: one video)
        assert main([*args, "--workers", workers]) == 2
        line = _error_line(capsys)
        assert "tiny: cannot load the backbone on cuda" in line and "worker process ended" not in line, line
        assert not out.parent.exists()


def test_a_second_run_is_refused_before_it_loads_anything(inputs, tmp_path, monkeypatch):
    """The lock is taken before the record is read and the backbone loaded: a second run into a folder being
    written stops at once and writes nothing."""
    import smite_core.model.backbone as backbone_module

    def no_load(*args, **kwargs):
        raise AssertionError("the backbone was loaded")

    monkeypatch.setattr(backbone_module, "load_backbone", no_load)
    out = tmp_path / "out"
    out.mkdir()
    with batch.FolderLock(out):  # a run in progress
        with pytest.raises(InputError, match="another smite batch is writing there"):
            batch.segment_many([str(inputs["videos"][0])], inputs["embedding"], out, FAST_CONFIG, device="cpu")
        assert [p.name for p in out.iterdir()] == [batch.LOCK_FILE]


def test_an_embedding_or_folder_of_smite_0_1_is_named_once(inputs, tmp_path, fast_backbone):
    """An embedding learned by SMITE 0.1 gets one note for the batch; a folder made with the other WAS (its record
    has no ``was_version``) is not resumed into."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    old = tmp_path / "old.safetensors"
    with safe_open(str(inputs["embedding"]), framework="pt") as f:
        metadata, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    save_file(tensors, str(old), metadata={**metadata, "format_version": "1"})
    out, lines, video = tmp_path / "out", [], inputs["root"] / "shots" / "shot0.mp4"
    result = batch.segment_many([str(video)], old, out, FAST_CONFIG, device="cpu", overlay=None,
                                say=lines.append)
    assert result.done == ["shot0"] and result.record["settings"]["was_version"] == 2, (lines, result.record)
    notes = [line for line in lines if "learned with the WAS of SMITE 0.1" in line]
    assert len(notes) == 1 and notes[0].startswith("note: ") and "learn it again" in notes[0], lines
    record = json.loads((out / batch.BATCH_FILE).read_text())
    del record["settings"]["was_version"]  # as SMITE 0.1 recorded it
    (out / batch.BATCH_FILE).write_text(json.dumps(record))
    with pytest.raises(InputError, match=r"other settings \(was_version\)"):
        batch.segment_many([str(video)], old, out, FAST_CONFIG, device="cpu", overlay=None)


def test_batch_help_shows_every_default(capsys):
    with pytest.raises(SystemExit):
        main(["batch", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for shown in (f"default {batch.DEFAULT_WORKERS}", f"default {batch.DEFAULT_GPUS:g}", "default: none",
                  f"default {SegmentConfig().window}", "default flow", "default mp4", "default tiny"):
        assert shown in text, shown


# ----------------------------------------------------------------------------- local runs


def test_local_batch_records_failures_and_resumes(inputs, expected, tmp_path, capsys, fast_backbone):
    """Six videos, one corrupt, in this process: five equal to smite segment, one failed with its error line,
    batch.json complete; a second run skips the complete ones; other settings are refused without --overwrite."""
    out = tmp_path / "out"
    args = ["batch", "--videos", str(inputs["root"] / "shots" / "*"), "--embedding", str(inputs["embedding"]),
            "--out", str(out), *FAST]
    assert main(args) == 1  # a video failed: the others are done and the exit code says so
    record = json.loads((out / "batch.json").read_text())
    videos = record["videos"]
    assert sorted(videos) == sorted(GOOD + ["bad"]) and record["counts"] == {"done": 5, "failed": 1, "skipped": 0,
                                                                              "pending": 0}
    for name in GOOD:
        entry = videos[name]
        assert entry["status"] == "done" and entry["error"] is None and entry["seconds"] >= 0
        assert entry["frames"] == len(expected[name]) and entry["source"].startswith(("file:", "folder:"))
    assert videos["bad"]["status"] == "failed" and videos["bad"]["frames"] is None
    assert "bad.mp4" in videos["bad"]["error"] and "\n" not in videos["bad"]["error"]
    assert record["settings"]["embedding_sha256"] and record["finished"] and not record["interrupted"]
    _same_labels(out, expected)
    _no_leftovers(out)
    assert not (out / "bad").exists()
    capsys.readouterr()

    assert main(args) == 1  # again: the complete videos are skipped, the failed one is tried again
    record = json.loads((out / "batch.json").read_text())
    assert record["counts"] == {"done": 0, "failed": 1, "skipped": 5, "pending": 0}
    assert "5 complete from an earlier run, 1 to segment" in capsys.readouterr().err

    assert main(args[:-len(FAST)] + ["--size", "48", "--guide-steps", "0", "--device", "cpu"]) == 2
    assert "other settings (size)" in _error_line(capsys)


def test_interrupted_run_resumes_with_only_the_rest(inputs, expected, tmp_path, fast_backbone):
    """Ctrl-C after two videos: batch.json says which are done; the same call again segments only the others,
    redoes a video whose output was damaged and removes what a killed writer left."""
    out, lines = tmp_path / "out", []
    good = [v for v in inputs["videos"] if v.stem != "bad"]

    def stop_after_two(done, total):
        if done == 2:
            raise KeyboardInterrupt

    call = dict(videos=[str(v) for v in good], embedding=inputs["embedding"], out=out, config=FAST_CONFIG,
                device="cpu")
    with pytest.raises(KeyboardInterrupt):
        batch.segment_many(**call, progress=stop_after_two)
    record = json.loads((out / "batch.json").read_text())
    first = [n for n, e in record["videos"].items() if e["status"] == "done"]
    assert len(first) == 2 and record["interrupted"] and record["counts"]["pending"] == 3
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == sorted(first + ["batch.json"])
    _no_leftovers(out)
    stamps = {n: (out / n / "labels" / "00000.png").stat().st_mtime_ns for n in first}

    (out / f".{GOOD[0]}.k3j4h5g6.tmp").mkdir()  # what a killed worker leaves beside its output
    result = batch.segment_many(**call, say=lines.append)
    assert sorted(result.skipped) == sorted(first) and sorted(result.done) == sorted(set(GOOD) - set(first))
    assert not result.failed and not result.pending
    assert {n: (out / n / "labels" / "00000.png").stat().st_mtime_ns for n in first} == stamps  # not redone
    assert any("left by an interrupted run" in line for line in lines)
    _same_labels(out, expected)
    _no_leftovers(out)

    damaged = first[0]
    (out / damaged / "labels" / "00001.png").unlink()  # a partial output is redone
    result = batch.segment_many(**call)
    assert result.done == [damaged] and len(result.skipped) == 4
    _same_labels(out, expected)


def test_an_error_mid_run_leaves_the_record_unfinished(inputs, tmp_path, fast_backbone):
    """A run that stops on an error after a video (here the caller's progress callback) keeps that video, the
    others pending, and is not stamped finished (only a run that went to its end is)."""
    out = tmp_path / "out"

    def broken_display(done, total):
        raise RuntimeError("the progress display broke")

    with pytest.raises(RuntimeError, match="display broke"):
        batch.segment_many([str(inputs["root"] / "shots" / f"{name}.mp4") for name in GOOD[:2]], inputs["embedding"],
                           out, FAST_CONFIG, device="cpu", progress=broken_display)
    record = json.loads((out / "batch.json").read_text())
    assert record["counts"] == {"done": 1, "failed": 0, "skipped": 0, "pending": 1}
    assert record["finished"] is None and not record["interrupted"]
    _no_leftovers(out)


def test_a_video_cancelled_in_one_pool_worker_ends_the_run_as_interrupted(inputs, tmp_path, capsys, monkeypatch):
    """Ctrl-C that reaches one pool worker only sets the run's cancel event, so the workers hand back their videos
    cancelled: the run ends as interrupted (exit 130, the record not finished, the videos pending), never as if it
    had finished. The pool is replaced by one whose workers hand back every video so (no processes started)."""
    import concurrent.futures

    class CancelledPool:
        def __init__(self, **kwargs):
            pass

        def submit(self, fn, task):
            future = concurrent.futures.Future()
            future.set_result({"status": "cancelled"})
            return future

        def shutdown(self, wait=True, cancel_futures=False):
            pass

    monkeypatch.setattr(concurrent.futures, "ProcessPoolExecutor", CancelledPool)
    out = tmp_path / "out"
    videos = [str(inputs["root"] / "shots" / f"{name}.mp4") for name in GOOD[:3]]
    assert main(["batch", "--videos", *videos, "--embedding", str(inputs["embedding"]), "--out", str(out),
                 "--workers", "2", *FAST]) == 130
    assert "run the same command again to resume" in capsys.readouterr().err
    record = json.loads((out / "batch.json").read_text())
    assert record["interrupted"] and record["finished"] is None
    assert record["counts"] == {"done": 0, "failed": 0, "skipped": 0, "pending": 3}
    _no_leftovers(out)


def _cli(*args, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "smite_core.commands.cli", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kwargs)


LONG = ["--size", "64", "--device", "cpu"]
LONG_FRAMES = 32


@pytest.fixture(scope="module")
def long_videos(tmp_path_factory):
    """Four videos long enough (32 frames at 64 px, every temporal stage on: seconds each) to be caught
    mid-segmentation."""
    root = tmp_path_factory.mktemp("batch-long")
    for i in range(4):
        _write_mp4(root / f"long{i}.mp4", make_video("car", 200 + i, num_frames=LONG_FRAMES, size=(64, 64)).frames)
    return root


def _wait_for(condition, timeout: float, proc: subprocess.Popen) -> None:
    end = time.monotonic() + timeout
    while not condition():
        assert proc.poll() is None, f"the batch ended early: {proc.communicate()}"
        assert time.monotonic() < end, "timed out"
        time.sleep(0.05)


def test_ctrl_c_stops_the_local_pool_cleanly(inputs, long_videos, tmp_path):
    """Ctrl-C (SIGINT to the command's process group, as a terminal sends it) while two pool workers segment:
    exit 130, no temporary folder, batch.json consistent with the folders that exist."""
    out = tmp_path / "out"
    proc = _cli("batch", "--videos", long_videos / "*.mp4", "--embedding", inputs["embedding"], "--out", out,
                "--workers", "2", *LONG, start_new_session=True)
    try:
        _wait_for(lambda: out.is_dir() and any(p.name.endswith(".tmp") for p in out.iterdir()), 240, proc)
        time.sleep(1.0)
        os.killpg(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "run the same command again to resume" in err
    record = json.loads((out / "batch.json").read_text())
    assert record["interrupted"] and set(e["status"] for e in record["videos"].values()) <= {"done", "pending"}
    for name, entry in record["videos"].items():
        assert (out / name).is_dir() == (entry["status"] == "done") or entry["status"] == "pending", name
        if entry["status"] == "done":
            assert len(list((out / name / "labels").glob("*.png"))) == entry["frames"] == LONG_FRAMES
    assert record["counts"]["pending"] >= 2
    _no_leftovers(out)


# ----------------------------------------------------------------------------- a real Ray cluster


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ray_cluster():
    """A Ray cluster on this machine: a head node (no CPUs for work) and two worker nodes of one CPU each,
    started as ``ray start --block`` processes and stopped (SIGTERM to each) at the end. Yields its address."""
    pytest.importorskip("ray")
    ray_cli = Path(sys.executable).with_name("ray")
    if not ray_cli.exists():
        pytest.skip("the ray command is not installed beside this Python")
    temp = Path(tempfile.mkdtemp(prefix="ray", dir="/tmp"))  # short: Ray's socket paths must stay under 107 bytes
    port = _free_port()
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    common = ["--block", "--disable-usage-stats", "--node-ip-address", "127.0.0.1", "--temp-dir", str(temp),
              "--object-store-memory", str(80 * 2 ** 20), "--dashboard-agent-listen-port", "0"]

    def start(*args) -> subprocess.Popen:
        with open(temp / f"start-{len(nodes)}.log", "a") as log:
            return subprocess.Popen([str(ray_cli), "start", *args, *common], env=env, stdout=log,
                                    stderr=subprocess.STDOUT, start_new_session=True)

    def status() -> str:
        return subprocess.run([str(ray_cli), "status", "--address", f"127.0.0.1:{port}"], env=env,
                              capture_output=True, text=True).stdout

    nodes: list[subprocess.Popen] = []
    try:
        nodes.append(start("--head", "--port", str(port), "--num-cpus", "0", "--include-dashboard=false"))
        _wait(lambda: "Autoscaler status" in status(), 90, "the Ray head node did not start", nodes[0])
        nodes += [start("--address", f"127.0.0.1:{port}", "--num-cpus", "1") for _ in range(2)]

        def joined() -> bool:
            for i, node in enumerate(nodes[1:], 1):
                if node.poll() is not None:  # it could not join yet (the head still starting): again
                    nodes[i] = start("--address", f"127.0.0.1:{port}", "--num-cpus", "1")
            return "/2.0 CPU" in status()

        _wait(joined, 120, "the Ray worker nodes did not join", nodes[0])
        yield f"127.0.0.1:{port}"
    finally:
        for node in reversed(nodes):
            node.send_signal(signal.SIGTERM)  # `ray start --block` stops the processes it started
        for node in nodes:
            try:
                node.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(node.pid, signal.SIGKILL)
        shutil.rmtree(temp, ignore_errors=True)


def _wait(condition, timeout: float, what: str, head: subprocess.Popen) -> None:
    end = time.monotonic() + timeout
    while not condition():
        assert head.poll() is None and time.monotonic() < end, what
        time.sleep(0.5)


def test_ray_cluster_segments_videos_like_segment(inputs, expected, ray_cluster, tmp_path):
    """Six videos, one corrupt, on the cluster's two workers: five equal to smite segment, one failed with its
    error line, batch.json complete."""
    out = tmp_path / "out"
    proc = _cli("batch", "--videos", inputs["root"] / "shots" / "*", "--embedding", inputs["embedding"],
                "--out", out, "--ray", ray_cluster, *FAST)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 1, err  # one video failed
    assert "ray: 2 worker(s)" in err and "Traceback" not in err
    record = json.loads((out / "batch.json").read_text())
    assert record["engine"] == "ray" and record["workers"] == 2
    assert record["counts"] == {"done": 5, "failed": 1, "skipped": 0, "pending": 0}
    bad = record["videos"]["bad"]
    assert bad["status"] == "failed" and "bad.mp4" in bad["error"] and "\n" not in bad["error"]
    for name in GOOD:
        assert record["videos"][name]["frames"] == len(expected[name])
    # every video was done by a worker of the cluster that got ready (on a busy machine one may do them all)
    assert {e["worker"] for e in record["videos"].values()} <= set(record["worker_load_s"])
    _same_labels(out, expected)
    _no_leftovers(out)


def _ray_worker_running_a_video() -> int | None:
    """The pid of a Ray worker process executing ``VideoWorker.run`` (Ray names its process so)."""
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if Path(f"/proc/{pid}/cmdline").read_bytes().startswith(b"ray::VideoWorker.run"):
                return int(pid)
        except OSError:
            continue
    return None


def test_ray_retries_the_video_of_a_killed_worker(inputs, long_videos, ray_cluster, tmp_path, tiny_backbone):
    """A worker process killed (SIGKILL) in the middle of a video: Ray restarts it and retries the video; every
    output is complete and equal to an uninterrupted run's, and no partial folder remains."""
    if not Path("/proc").is_dir():
        pytest.skip("finds the Ray worker process through /proc (Linux)")
    out = tmp_path / "out"
    proc = _cli("batch", "--videos", long_videos / "*.mp4", "--embedding", inputs["embedding"], "--out", out,
                "--ray", ray_cluster, *LONG)
    try:
        _wait_for(lambda: out.is_dir() and any(p.name.endswith(".tmp") for p in out.iterdir()), 240, proc)
        time.sleep(0.5)  # the worker is writing its video's temporary folder
        victim = _ray_worker_running_a_video()
        assert victim is not None
        os.kill(victim, signal.SIGKILL)
        _, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    record = json.loads((out / "batch.json").read_text())
    assert record["counts"] == {"done": 4, "failed": 0, "skipped": 0, "pending": 0}
    assert f"{socket.gethostname()}:{victim}" not in {e["worker"] for e in record["videos"].values()}
    assert len(record["worker_load_s"]) >= 3  # two workers, and the one Ray restarted
    retried = [name for name, e in record["videos"].items() if e.get("restarted")]
    assert retried, "no video was retried on a restarted worker"
    for name, entry in record["videos"].items():
        assert len(_labels(out / name)) == entry["frames"] == LONG_FRAMES
    _no_leftovers(out)

    import smite_core.model.backbone as backbone_module

    reference, real, threads = tmp_path / "reference", backbone_module.load_backbone, torch.get_num_threads()
    backbone_module.load_backbone = lambda *a, **k: tiny_backbone
    torch.set_num_threads(1)  # as the Ray workers (the labels are the same with 2 threads, only slower here)
    try:
        assert not batch.segment_many([str(long_videos / f"{name}.mp4") for name in retried], inputs["embedding"],
                                      reference, SegmentConfig(size=64), device="cpu").failed
    finally:
        backbone_module.load_backbone = real
        torch.set_num_threads(threads)
    for name in retried:  # the retried video equals an uninterrupted run
        assert all(np.array_equal(a, b) for a, b in zip(_labels(out / name), _labels(reference / name))), name


# ----------------------------------------------------------------------------- the benchmark


def test_bench_batch_times_fresh_commands(capsys):
    """``smite bench --batch``: bad lists are one line; a small run reports the keys docs/performance.md lists."""
    from smite_core.tools.bench import run_batch_bench

    assert main(["bench", "--batch", "0"]) == 2
    assert "--batch" in _error_line(capsys)
    assert main(["bench", "--batch", "--batch-frames", "2,x"]) == 2
    assert "--batch-frames" in _error_line(capsys)
    result = run_batch_bench(frames=(2, 3), workers=(1,), frame_size=32, size=16, device="cpu", overlay=None,
                             separate=False, say=lambda line: None)
    assert result["videos"] == 2 and result["frames"] == [2, 3] and result["w1_s"] > 0
    assert result["w1_videos_per_min"] > 0 and 0 < result["w1_busy"] <= 1 and result["worker_load_s"] > 0
