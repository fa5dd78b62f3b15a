"""Bytes per frame of the pack's ComfyUI paths: the growth of peak memory with the video's length.

    python tools/image_path_memory.py [--frames 16 48] [--paths mask label_map overlay all stream] [--pack DIR]

Each path runs in a fresh process per frame count, in-process as ComfyUI runs the nodes (inference mode, every
output kept alive as ComfyUI's cache keeps it), on the tiny backbone at a 64 px working size with 1920x1080 frames:

- ``mask``, ``label_map``, ``overlay``, ``all``: an IMAGE batch (what Load Video -> Get Video Components holds) ->
  SMITE Invert Video -> SMITE Inflated UNet Segment -> SMITE Mask To Video (+ SMITE Label Map, SMITE Overlay);
- ``stream``: the same frames as an H.264 file -> SMITE Segment Video To Files (label maps only);
- ``before``: the pack at ``--pack`` (e.g. a checkout of SMITE 0.2.0's first commit) whose Mask To Video made the
  mask, label map and overlay together.

Prints one JSON line per run and the bytes per frame of each path: (peak at the larger count - peak at the smaller)
/ (difference in frames). docs/comfyui.md quotes its output.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HEIGHT, WIDTH = 1080, 1920
PATHS = ("mask", "label_map", "overlay", "all", "stream", "before")


def synthetic_frames(count: int):
    """float32 ``[T,1080,1920,3]`` in 0..1: a gradient with a moving red box."""
    import torch

    yy, xx = torch.meshgrid(torch.linspace(0, 1, HEIGHT), torch.linspace(0, 1, WIDTH), indexing="ij")
    background = torch.stack([xx, yy, torch.full_like(xx, 0.4)], -1)
    frames = background.expand(count, -1, -1, -1).clone()
    for t in range(count):
        x = (t * 13) % (WIDTH - 600)
        frames[t, 400:700, x:x + 600] = torch.tensor([0.8, 0.1, 0.1])
    return frames


def load_pack(root: Path):
    """The pack's ``__init__.py`` imported by file location, as ComfyUI imports it."""
    spec = importlib.util.spec_from_file_location("smite_pack_measured", root / "__init__.py",
                                                  submodule_search_locations=[str(root)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def run_path(path: str, count: int, pack_root: Path, video: str | None) -> dict:
    """One path on ``count`` frames in this process; the peak RSS in bytes."""
    import torch

    nodes = {name: cls() for name, cls in load_pack(pack_root).NODE_CLASS_MAPPINGS.items()}
    host = sys.modules["smite_pack_measured.nodes.host"]
    kept = []  # every output stays alive, as in ComfyUI's cache
    with torch.inference_mode():
        model = nodes["SMITE_ModelLoader"].load("tiny", "fp32", False, "cpu")[0]
        embedding = nodes["SMITE_LoadEmbedding"].load("smite_example_car.safetensors")[0]
        if path == "stream":
            with tempfile.TemporaryDirectory() as out:
                os.chdir(out)
                kept.append(nodes["SMITE_SegmentVideoToFiles"].segment(
                    model, embedding, host.video_from_file(video), size=64, window=16, overlap=0, guide_steps=0,
                    edge_aware=False, preview="none"))
                return {"path": path, "frames": count, "peak": _peak_rss()}
        frames = synthetic_frames(count)
        latent = nodes["SMITE_InvertVideo"].invert(model, frames, size=64)[0]
        segments = nodes["SMITE_InflatedUNetSegment"].segment(model, embedding, latent, window=16, overlap=0,
                                                              guide_steps=0)[0]
        kept += [frames, latent, segments]
        if path == "before":
            kept += list(nodes["SMITE_MaskToVideo"].convert(segments, "all"))
        if path in ("mask", "all"):
            kept += list(nodes["SMITE_MaskToVideo"].convert(segments, "all"))
        if path in ("label_map", "all"):
            kept += list(nodes["SMITE_LabelMapImage"].convert(segments))
        if path in ("overlay", "all"):
            kept += list(nodes["SMITE_Overlay"].paint(segments))
    return {"path": path, "frames": count, "peak": _peak_rss()}


def _peak_rss() -> int:
    """This process's peak resident set size in bytes."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def write_video(path: Path, count: int) -> None:
    sys.path.insert(0, str(ROOT))
    from smite_core.io.video_io import open_video_writer

    frames = synthetic_frames(count)
    with open_video_writer(path, fps=25) as writer:
        for start in range(0, count, 16):
            writer.write(frames[start:start + 16])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, nargs=2, default=[16, 48], metavar=("FEW", "MANY"))
    parser.add_argument("--paths", nargs="+", choices=PATHS, default=["mask", "label_map", "overlay", "all", "stream"])
    parser.add_argument("--pack", type=Path, default=ROOT, help="the pack to measure (default: this checkout)")
    parser.add_argument("--child", nargs=3, metavar=("PATH", "FRAMES", "VIDEO"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        path, count, video = args.child
        print(json.dumps(run_path(path, int(count), args.pack.resolve(), video)))
        return 0
    results = {}
    with tempfile.TemporaryDirectory() as scratch:
        videos = {}
        if "stream" in args.paths:
            for count in args.frames:
                videos[count] = Path(scratch) / f"clip_{count}.mp4"
                write_video(videos[count], count)
        for path in args.paths:
            for count in args.frames:
                done = subprocess.run([sys.executable, __file__, "--pack", str(args.pack), "--child", path, str(count),
                                       str(videos.get(count, "-"))], capture_output=True, text=True, cwd=scratch)
                if done.returncode != 0:
                    sys.stderr.write(done.stderr[-3000:])
                    return 1
                line = done.stdout.strip().splitlines()[-1]
                print(line, flush=True)
                results[(path, count)] = json.loads(line)["peak"]
    few, many = args.frames
    print(f"\n| path ({WIDTH}x{HEIGHT}) | peak at {few} frames | peak at {many} frames | MB per frame |")
    print("|---|---|---|---|")
    for path in args.paths:
        a, b = results[(path, few)], results[(path, many)]
        print(f"| {path} | {a / 2**30:.2f} GiB | {b / 2**30:.2f} GiB | {(b - a) / (many - few) / 1e6:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
