"""``smite bench``: seconds per pipeline stage, peak memory, the voting benchmark and an SD 2.1 estimate.

**Pipeline timing.** :func:`run_bench` writes a procedural video to an mp4 file (a ``CLIP_FRAMES``
clip rendered once and played back and forth, so the test video costs the same memory at any
length), then runs exactly what ``smite segment`` runs: ``segment.segment_stream`` (lazy decoding,
VAE, inflated UNet, WAS, tracking, voting, guidance) consumed by ``export.export_segmentation``
(labels at frame size, label PNGs and the overlay video) into a temporary folder. The stages are
timed through the pipeline's profiler hook (``smite_core.method.profiling``; :class:`StageTimer`);
each stage gets its *own* time (a UNet forward inside the guidance counts as ``unet``, what is
left of the guidance - energies, backward pass, latent update - as ``guidance_backward``). Time in
no stage (noise, DDIM step, window blending) is ``other_s``.

**Voting.** :func:`bench_voting` times ``voting.vote_tracks`` on the standard problem (16 frames,
6 classes, 64x64 grid, window 15, every cell of every frame a query) against
:func:`reference_vote_loop`, our per-query Python loop with the structure of the reference
implementation's voting, kept here only as the comparison baseline.

**SD 2.1 estimate.** :func:`sd21_estimate` counts the FLOPs of the real SD 2.1 UNet and VAE
configurations (``configs/sd2``) built on the meta device (no weights, no memory) with
``torch.utils.flop_counter.FlopCounterMode`` and turns them into frames per second at a stated
share of a GPU's peak.

Numbers are measured and reported (docs/performance.md), never asserted by tests.
"""

from __future__ import annotations

import contextlib
import json
import math
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Callable, Iterator

import numpy as np
import torch

from smite_core.method.profiling import STAGES, Profiler

BENCH_FRAMES = 16  # frames of the procedural video timed by default
VOTE_REF_QUERIES = 1024  # queries the Python-loop voting baseline is timed on (scaled to the full problem)
CLIP_FRAMES = 16  # frames rendered for the procedural test video; longer videos play it back and forth
VOTE_PROBLEM = {"frames": 16, "classes": 6, "grid": 64, "window": 15}
# Dense bf16 tensor-core peaks (no sparsity), TFLOP/s, from the vendors' data sheets (SXM parts).
GPU_PEAK_TFLOPS = {"H100": 989.4, "A100": 312.0}
ASSUMED_MFU = 0.35  # share of the peak an SD UNet reaches with SDPA in bf16 (an assumption, stated)


def peak_rss_mb() -> float:
    """Peak resident memory of this process in MiB (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ----------------------------------------------------------------------------- stage timing


class StageTimer(Profiler):
    """A :class:`~smite_core.method.profiling.Profiler` that adds up each stage's own (exclusive) seconds, calls
    and items: time spent in a stage nested inside another is taken off the outer one."""

    def __init__(self, device: torch.device | str = "cpu"):
        self.device = torch.device(device)
        self.seconds = dict.fromkeys(STAGES, 0.0)
        self.calls = dict.fromkeys(STAGES, 0)
        self.items = dict.fromkeys(STAGES, 0)  # frames handled, where the pipeline says
        self._children: list[float] = []

    @contextlib.contextmanager
    def stage(self, name: str, items: int = 0) -> Iterator[None]:
        if name not in self.seconds:
            raise ValueError(f"unknown stage {name!r}")
        _sync(self.device)
        start = time.perf_counter()
        self._children.append(0.0)
        try:
            yield
        finally:
            _sync(self.device)
            elapsed = time.perf_counter() - start
            inner = self._children.pop()
            self.seconds[name] += elapsed - inner
            self.calls[name] += 1
            self.items[name] += int(items)
            if self._children:
                self._children[-1] += elapsed


# ----------------------------------------------------------------------------- test video


def clip_index(i: int, clip: int) -> int:
    """Frame of a ``clip``-frame clip shown at position ``i`` when it is played forth and back."""
    if clip <= 1:
        return 0
    period = 2 * (clip - 1)
    j = i % period
    return j if j < clip else period - j


def write_procedural_video(path: str | Path, frames: int, size: int, seed: int = 0, fps: float = 24.0) -> list[str]:
    """Write a ``frames``-frame ``size x size`` procedural car video to ``path`` (mp4), streaming.

    Only a ``CLIP_FRAMES`` clip is rendered; longer videos play it forth and back. Returns the
    segment names of the category.
    """
    from smite_core.io.video_io import open_video_writer
    from smite_core.procedural import make_video

    clip = make_video("car", seed=seed, num_frames=min(frames, CLIP_FRAMES), size=(size, size))
    n = clip.frames.shape[0]
    with open_video_writer(path, fps=fps, overwrite=True) as writer:
        for i in range(frames):
            writer.write(clip.frames[clip_index(i, n)])
    return list(clip.names)


# ----------------------------------------------------------------------------- pipeline


def run_bench(frames: int = BENCH_FRAMES, frame_size: int | None = None, model: str = "tiny",
              device: str = "auto", dtype: str = "auto", inflate: bool = True, seed: int = 0, size: int | None = None,
              video: str | None = None, overlay: str | None = "mp4", voting: bool = True,
              vote_ref_queries: int | None = VOTE_REF_QUERIES, say: Callable[[str], None] = print,
              progress_factory: Callable[[str, int, str], Callable[[int, int], None]] | None = None) -> dict:
    """Segment a video (procedural unless ``video``) as ``smite segment`` does and time every stage.

    ``frame_size``: side of the procedural frames (default: the backbone's segmentation size);
    ``size``: the working size, as ``smite segment --size`` (default: the same). ``voting``: also run
    :func:`bench_voting`. ``progress_factory(desc, total, unit)``: a progress callback for the frames
    (the CLI's bar). Returns a flat dict (docs/performance.md lists the keys).
    """
    from smite_core.errors import InputError
    from smite_core.io.video_io import open_frames
    from smite_core.method.embedding import SegmentEmbedding
    from smite_core.method.export import export_segmentation
    from smite_core.method.segment import SegmentConfig, segment_stream, window_spans
    from smite_core.model.backbone import load_backbone

    if frames < 1:
        raise InputError(f"--frames: must be at least 1 (got {frames})")
    t0 = time.perf_counter()
    backbone = load_backbone(model, device=device, dtype=dtype)
    load_s = time.perf_counter() - t0
    dev = backbone.device
    side = frame_size or backbone.segment_resolution
    if side < 32:
        raise InputError(f"--frame-size: frames must be at least 32 pixels (got {side})")
    config = SegmentConfig(inflate=inflate, seed=seed, size=size)
    config.validate(backbone)  # before the video is written and the bar starts
    timer = StageTimer(dev)
    with tempfile.TemporaryDirectory(prefix="smite-bench-") as tmp:
        t0 = time.perf_counter()
        if video is None:
            video = str(Path(tmp) / "bench.mp4")
            names = write_procedural_video(video, frames, side, seed)
        else:
            names = None
        setup_s = time.perf_counter() - t0
        with open_frames(video) as source:
            total_frames = source.num_frames
            if names is None:
                names = ["background"] + [f"part{i}" for i in range(1, 5)]
            say(f"bench: {total_frames} frames of {source.width}x{source.height} on {dev} ({backbone.dtype}), "
                f"model {model}")
            g = torch.Generator().manual_seed(seed)
            embedding = SegmentEmbedding(tokens=torch.randn(len(names) - 1, backbone.context_dim, generator=g),
                                         names=names, backbone_fingerprint=backbone.fingerprint)
            if dev.type == "cuda":
                torch.cuda.reset_peak_memory_stats(dev)
            start = time.perf_counter()
            progress = progress_factory("bench", total_frames, "frame") if progress_factory else None
            maps = segment_stream(backbone, embedding, source, config, progress=progress, say=say, profiler=timer)
            summary = export_segmentation(Path(tmp) / "out", maps, source, names, overlay_format=overlay,
                                          profiler=timer)
            _sync(dev)
            total_s = time.perf_counter() - start
    staged = sum(timer.seconds.values())
    result = {"frames": summary["frames"], "frame_size": side, "size": size or backbone.segment_resolution,
              "device": str(dev), "dtype": str(backbone.dtype).replace("torch.", ""), "model": model,
              "inflate": inflate, "windows": len(window_spans(total_frames, config.window, config.overlap)),
              "load_s": round(load_s, 3), "setup_s": round(setup_s, 3)}
    result.update({f"{stage}_s": round(timer.seconds[stage], 3) for stage in STAGES})
    result.update({"other_s": round(max(0.0, total_s - staged), 3), "total_s": round(total_s, 3),
                   "s_per_frame": round(total_s / max(1, summary["frames"]), 4),
                   "tracker_calls": timer.calls["tracking"], "unet_calls": timer.calls["unet"],
                   "vae_frames": timer.items["vae_encode"], "peak_rss_mb": round(peak_rss_mb(), 1)})
    if dev.type == "cuda":
        result["peak_cuda_mb"] = round(torch.cuda.max_memory_allocated(dev) / 2 ** 20, 1)
    if voting:
        result.update(bench_voting(ref_queries=vote_ref_queries))
    return result


# ----------------------------------------------------------------------------- many videos


BATCH_FRAMES = (16,) * 6  # frames of each procedural video `smite bench --batch` segments
BATCH_WORKERS = (1, 2)  # worker counts `smite bench --batch` compares


def int_list(value, option: str) -> tuple[int, ...]:
    """``"1,2"`` (or a sequence) -> ``(1, 2)``: positive integers, else an :class:`InputError` naming ``option``."""
    from smite_core.errors import InputError

    try:
        values = tuple(int(v) for v in (value.split(",") if isinstance(value, str) else value) if str(v).strip())
    except ValueError:
        raise InputError(f"{option}: {value!r} is not a comma-separated list of integers") from None
    if not values or min(values) < 1:
        raise InputError(f"{option}: give positive integers (got {value!r})")
    return values


def _timed_smite(args: list[str]) -> float:
    """Wall seconds of one ``smite`` command in a fresh process (start-up, imports and model load included)."""
    import subprocess

    from smite_core.errors import SmiteError

    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "smite_core.commands.cli", *map(str, args)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SmiteError(f"bench: 'smite {args[0]}' failed: {(proc.stderr.strip().splitlines() or ['?'])[-1]}")
    return time.perf_counter() - start


def run_batch_bench(frames=BATCH_FRAMES, workers=BATCH_WORKERS, frame_size: int | None = None,
                    size: int | None = None, model: str = "tiny", device: str = "auto", dtype: str = "auto",
                    seed: int = 0, overlay: str | None = "mp4", separate: bool | None = None,
                    say: Callable[[str], None] = print) -> dict:
    """Time ``smite batch`` on procedural videos of ``frames`` frames each (one seed per video), once per count
    of ``workers`` local processes, and (``separate``; default: when 1 is among ``workers``) one
    ``smite segment`` call per video; every command in a fresh process, as a user runs it.

    Keys: ``videos``, ``frames``, ``frame_size``, ``size``, ``model``, ``device``; per worker count ``n``:
    ``w<n>_s`` (wall), ``w<n>_videos_per_min``, ``w<n>_busy`` (share of the workers' time spent segmenting:
    start-up and the idle tail of the run show here); ``worker_load_s`` (backbone and embedding load in a
    worker, from ``batch.json``); with ``separate``: ``separate_s`` (the ``smite segment`` calls one after
    another), ``separate_videos_per_min`` and ``load_saved_s_per_video`` (``separate_s`` minus ``w1_s``, per
    video: the start-up and model load a batch pays once instead of once per video).
    """
    from smite_core.method.embedding import SegmentEmbedding
    from smite_core.model.backbone import load_backbone

    frames, workers = int_list(frames, "--batch-frames"), int_list(workers, "--batch")
    separate = 1 in workers if separate is None else separate
    backbone = load_backbone(model, device=device, dtype=dtype)
    side = frame_size or backbone.segment_resolution
    result = {"videos": len(frames), "frames": list(frames), "frame_size": side,
              "size": size or backbone.segment_resolution, "model": model, "device": str(backbone.device)}
    common = ["--model", model, "--device", device, "--dtype", dtype, "--seed", seed, "--overlay", overlay or "none"]
    common += ["--size", size] if size else []
    with tempfile.TemporaryDirectory(prefix="smite-bench-batch-") as tmp:
        videos = [Path(tmp) / "in" / f"video{i}.mp4" for i in range(len(frames))]
        videos[0].parent.mkdir()
        for i, (path, count) in enumerate(zip(videos, frames)):
            names = write_procedural_video(path, count, side, seed + i)
        g = torch.Generator().manual_seed(seed)
        embedding = SegmentEmbedding(tokens=torch.randn(len(names) - 1, backbone.context_dim, generator=g),
                                     names=names, backbone_fingerprint=backbone.fingerprint)
        embedding_file = embedding.save(Path(tmp) / "embedding.safetensors")
        del backbone
        loads = []
        for n in workers:
            say(f"bench: smite batch --workers {n} on {len(videos)} videos ...")
            out = Path(tmp) / f"batch{n}"
            wall = _timed_smite(["batch", "--videos", *videos, "--embedding", embedding_file, "--out", out,
                                 "--workers", n, *common])
            record = json.loads((out / "batch.json").read_text())
            busy = sum(e["seconds"] for e in record["videos"].values())
            loads += list(record.get("worker_load_s", {}).values())
            result.update({f"w{n}_s": round(wall, 2), f"w{n}_videos_per_min": round(60 * len(videos) / wall, 2),
                           f"w{n}_busy": round(busy / (min(n, len(videos)) * wall), 3)})
        result["worker_load_s"] = round(statistics.mean(loads), 2) if loads else None
        if separate:
            say(f"bench: smite segment, once per video ({len(videos)} calls) ...")
            wall = sum(_timed_smite(["segment", "--video", video, "--embedding", embedding_file,
                                     "--out", Path(tmp) / "segment" / video.stem, *common]) for video in videos)
            result.update(separate_s=round(wall, 2), separate_videos_per_min=round(60 * len(videos) / wall, 2))
            if "w1_s" in result:
                result["load_saved_s_per_video"] = round((wall - result["w1_s"]) / len(videos), 2)
    return result


# ----------------------------------------------------------------------------- voting


def voting_problem(frames: int = 16, classes: int = 6, grid: int = 64, seed: int = 0):
    """The standard voting problem: maps ``[F,K,g,g]`` and dense tracks of every cell of every frame.

    Tracks drift with a per-point velocity (up to about half a cell per frame) plus jitter, so some
    leave the grid; about 10 % of the other frames' points are occluded.
    """
    from smite_core.temporal.tracking import Tracks, grid_points

    g = torch.Generator().manual_seed(seed)
    maps = torch.randn(frames, classes, grid, grid, generator=g)
    points = grid_points((grid, grid))  # [N,2]
    n = points.shape[0]
    velocity = torch.randn(n, 2, generator=g) * 0.25
    offsets = (torch.arange(frames)[None, :] - torch.arange(frames)[:, None]).float()  # [Fq,F]
    positions = points + offsets[..., None, None] * velocity + torch.randn(frames, frames, n, 2, generator=g) * 0.3
    visible = torch.rand(frames, frames, n, generator=g) > 0.1
    return maps, Tracks(positions, visible, torch.arange(frames), (grid, grid))


def reference_vote_loop(maps: torch.Tensor, tracks, window: int = 15, queries: list[int] | None = None) -> torch.Tensor:
    """COMPARISON BASELINE ONLY (``smite bench``): the vote one query at a time in Python.

    Same structure as the reference implementation's voting loop (for every query frame, for every
    point: gather the visible tracked class vectors over the window, take the most frequent
    argmax with ``np.unique``, average the vectors that agree), written with the conventions of
    :func:`~smite_core.temporal.voting.vote_tracks` (window clipped to the video, the query's own cell always
    counted) so both give the same numbers. ``queries``: flat indices ``qi * N + n`` to vote
    (default all). Returns ``[len(queries), K]``.
    """
    from smite_core.temporal.voting import window_offsets

    frames, k, h, w = maps.shape
    n_points = h * w
    before, after = window_offsets(window)
    cells = torch.floor(tracks.positions + 0.5).long()  # [Fq,F,N,2]: track -> grid cell, as the tracker post-processing
    inside = (cells[..., 0] >= 0) & (cells[..., 0] < w) & (cells[..., 1] >= 0) & (cells[..., 1] < h)
    visible = tracks.visible & inside
    if queries is None:
        queries = range(len(tracks.query_frames) * n_points)
    out = []
    for flat in queries:
        qi, n = divmod(int(flat), n_points)
        i = int(tracks.query_frames[qi])
        feats = []
        for j in range(max(0, i - before), min(frames, i + after + 1)):
            if j == i:
                feats.append(maps[j, :, n // w, n % w])
            elif visible[qi, j, n]:
                u, v = cells[qi, j, n]
                feats.append(maps[j, :, v, u])
        feats = torch.stack(feats)
        labels = feats.argmax(dim=1)
        values, counts = np.unique(labels.numpy(), return_counts=True)
        mode = int(values[np.argmax(counts)])
        agree = labels == mode
        out.append(feats[agree].sum(dim=0) / agree.sum())
    return torch.stack(out)


def bench_voting(repeats: int = 5, ref_queries: int | None = VOTE_REF_QUERIES, seed: int = 0) -> dict:
    """``vote_ms`` (median of ``repeats``) of :func:`~smite_core.temporal.voting.vote_tracks` on the standard
    problem and ``vote_ref_ms`` of :func:`reference_vote_loop`: timed on ``ref_queries`` queries
    spread evenly over all of them and scaled to the full problem (None: the full loop), plus
    the largest difference between the two on the queries both computed."""
    from smite_core.temporal.voting import vote_tracks

    p = VOTE_PROBLEM
    maps, tracks = voting_problem(p["frames"], p["classes"], p["grid"], seed)
    times = []
    for _ in range(max(1, repeats)):
        start = time.perf_counter()
        voted = vote_tracks(maps, tracks, p["window"])
        times.append(time.perf_counter() - start)
    vote_ms = statistics.median(times) * 1000
    total = p["frames"] * p["grid"] ** 2
    count = total if ref_queries is None else max(1, min(int(ref_queries), total))
    queries = [int(q) for q in np.linspace(0, total - 1, count).round().astype(int)]
    start = time.perf_counter()
    looped = reference_vote_loop(maps, tracks, p["window"], queries)
    ref_ms = (time.perf_counter() - start) * 1000 * total / count
    flat = voted.permute(0, 2, 3, 1).reshape(total, p["classes"])[queries]
    return {"vote_ms": round(vote_ms, 2), "vote_ref_ms": round(ref_ms, 1), "vote_ref_queries": count,
            "vote_speedup": round(ref_ms / vote_ms, 1) if vote_ms > 0 else None,
            "vote_max_diff": float((flat - looped).abs().max())}


# ----------------------------------------------------------------------------- SD 2.1 estimate


def _meta_models(family: str = "sd2"):
    from diffusers import AutoencoderKL, UNet2DConditionModel

    from smite_core.model.components import read_family_config

    cfg = read_family_config(family)
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(cfg["unet"])
        vae = AutoencoderKL.from_config(cfg["vae"])
    return unet, vae, cfg


def _count_flops(fn: Callable[[], object]) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


FLOPS_SIZE = 512  # working size of the SD 2.1 estimate (SD's own)


def sd21_estimate(size: int = FLOPS_SIZE, num_segments: int = 6, family: str = "sd2", mfu: float = ASSUMED_MFU) -> dict:
    """FLOPs of SMITE on SD 2.1 at ``size`` and the frames per second they allow on an H100 / A100.

    Counted with ``FlopCounterMode`` on the meta device (matmuls, convolutions and attention; the
    elementwise ops and norms are not counted, which the ``mfu`` share absorbs), with the default
    ``SegmentConfig`` (16-frame windows, overlap 8, guidance steps/iterations/sub-slices) and,
    for comparison, the reference code's budget (a CFG reference pass, 4 denoising forwards,
    3 x 15 iterations of 4 sub-slices) and a plain pass without guidance. Per window
    ``window - overlap`` frames are new, each VAE-encoded once.
    """
    from smite_core.method.segment import SegmentConfig
    from smite_core.method.was import was_inference
    from smite_core.model.unet_pass import unet_forward

    unet, vae, cfg = _meta_models(family)
    backbone = SimpleNamespace(unet=unet, device=torch.device("meta"), dtype=torch.float32)
    latent = size // 8
    context = torch.zeros(1, 77, int(cfg["unet"]["cross_attention_dim"]), device="meta")

    def forward(frames: int):
        with torch.no_grad():
            _, record = unet_forward(backbone, torch.zeros(frames, 4, latent, latent, device="meta"), 100, context,
                                     num_segments)
            was_inference(record)

    def forward_backward(frames: int):  # with the ResNet recomputation of gradient checkpointing, as on GPUs
        z = torch.zeros(frames, 4, latent, latent, device="meta", requires_grad=True)
        with torch.enable_grad():
            _, record = unet_forward(backbone, z, 100, context, num_segments, checkpointing=True)
            was_inference(record).float().square().mean().backward()  # (autograd.grad trips the flop counter's hooks)

    def encode():
        with torch.no_grad():
            vae.encode(torch.zeros(1, 3, size, size, device="meta"))

    c = SegmentConfig()
    window, new = c.window, c.window - c.overlap
    slices = math.ceil(window / c.guide_slice)
    fwd_window = _count_flops(lambda: forward(window))
    fb_slice = _count_flops(lambda: forward_backward(c.guide_slice))
    vae_frame = _count_flops(encode)
    single = _count_flops(lambda: forward(1))
    # ours: reference pass, then per guided step its iterations over the sub-slices and one forward
    ours = fwd_window + c.guide_steps * (c.guide_iters * slices * fb_slice + fwd_window)
    # the reference code: a CFG reference pass (2 windows), 4 denoising forwards, 3 x 15 guided iterations
    reference = 6 * fwd_window + 3 * 15 * slices * fb_slice
    per_frame = {"ours": (ours + new * vae_frame) / new, "reference": (reference + new * vae_frame) / new,
                 "plain": (fwd_window + new * vae_frame) / new}
    tera = lambda flops: _sig(flops / 1e12)  # noqa: E731
    out = {"sd21_size": size, "sd21_unet_tflop_1frame": tera(single), "sd21_unet_tflop_window": tera(fwd_window),
           "sd21_fwd_bwd_tflop_slice": tera(fb_slice), "sd21_vae_tflop_frame": tera(vae_frame), "sd21_mfu": mfu}
    for name, flops in per_frame.items():
        out[f"sd21_{name}_tflop_per_frame"] = tera(flops)
        for gpu, peak in GPU_PEAK_TFLOPS.items():
            out[f"sd21_{name}_fps_{gpu.lower()}"] = _sig(peak * mfu * 1e12 / flops)
    return out


def _sig(x: float, digits: int = 4) -> float:
    return float(f"{x:.{digits}g}")


def format_result(result: dict) -> str:
    """Aligned ``key  value`` lines."""
    return "\n".join(f"{key:>30s}  {value}" for key, value in result.items())


def result_line(result: dict) -> str:
    """The one-line JSON object ``--json`` prints last."""
    return json.dumps(result)
