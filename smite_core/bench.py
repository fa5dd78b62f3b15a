"""``smite bench``: seconds per pipeline stage on a procedural video, and peak memory.

The stages are run exactly as ``segment.segment_stream`` runs them, but timed one by one:
decode (frame reading), VAE encode, UNet forward, WAS maps, labels (upsampling + argmax) and
writing (label PNGs). Numbers are measured, never asserted by tests.
"""

from __future__ import annotations

import resource
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Callable

import torch


def peak_rss_mb() -> float:
    """Peak resident memory of this process in MiB (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def run_bench(frames: int = 16, size: int | None = None, model: str = "tiny", device: str = "auto",
              dtype: str = "auto", inflate: bool = True, seed: int = 0,
              say: Callable[[str], None] = print) -> dict:
    """Segment a procedural video of ``frames`` frames and time every stage; returns a flat dict."""
    from .backbone import load_backbone
    from .embedding import SegmentEmbedding, build_context
    from .inversion import add_noise, encode_frames, sample_timestep, working_size
    from .label_png import save_label_png
    from .procedural import make_video
    from .segment import SegmentConfig, window_spans
    from .unet_pass import unet_forward
    from .video_io import FrameSource
    from .was import labels_from_was, was_inference

    t0 = time.perf_counter()
    backbone = load_backbone(model, device=device, dtype=dtype)
    load_s = time.perf_counter() - t0
    side = size or backbone.resolution
    say(f"bench: {frames} frames of {side}x{side} on {backbone.device} ({backbone.dtype}), model {model}")
    video = make_video("car", seed=seed, num_frames=frames, size=(side, side))
    source = FrameSource.from_tensor(torch.from_numpy(video.frames))
    g = torch.Generator().manual_seed(seed)
    k = len(video.names)
    embedding = SegmentEmbedding(tokens=torch.randn(k - 1, backbone.context_dim, generator=g), names=video.names,
                                 backbone_fingerprint=backbone.fingerprint)
    config = SegmentConfig(inflate=inflate, seed=seed)
    context = build_context(backbone.encode_empty_prompt(), embedding.tokens.to(backbone.device))
    work = working_size(backbone, (side, side), config.size)
    times: dict[str, float] = defaultdict(float)
    dev = backbone.device

    def timed(stage, fn, *args, **kwargs):
        _sync(dev)
        start = time.perf_counter()
        out = fn(*args, **kwargs)
        _sync(dev)
        times[stage] += time.perf_counter() - start
        return out

    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    total_start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        spans = window_spans(frames, config.window, config.overlap)
        for span in spans:
            window = timed("decode", source.read, *span)
            latents = timed("vae_encode", encode_frames, backbone, window, work)
            t = sample_timestep(g, config.timesteps)
            noisy = add_noise(backbone, latents, t, g)
            _, record = timed("unet", unet_forward, backbone, noisy, t, context, k, kv=embedding.kv,
                              inflate=inflate, pool_norm=inflate)
            was = timed("was", was_inference, record).float().cpu()
            labels = timed("labels", labels_from_was, was, (side, side))
            for j, index in enumerate(range(*span)):
                timed("write", save_label_png, Path(tmp) / f"{index:05d}.png", labels[j].numpy(), overwrite=True)
    total_s = time.perf_counter() - total_start
    result = {"frames": frames, "size": side, "device": str(dev), "model": model, "inflate": inflate,
              "windows": len(spans), "load_s": round(load_s, 3)}
    result.update({f"{stage}_s": round(v, 3) for stage, v in times.items()})
    result.update({"total_s": round(total_s, 3), "unet_s": round(times["unet"], 3),
                   "s_per_frame": round(total_s / frames, 4), "peak_rss_mb": round(peak_rss_mb(), 1)})
    if dev.type == "cuda":
        result["peak_cuda_mb"] = round(torch.cuda.max_memory_allocated(dev) / 2 ** 20, 1)
    return result
