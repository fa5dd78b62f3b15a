"""The ``smite`` command: ``demo``, ``learn``, ``segment``, ``batch``, ``vote``, ``eval``, ``bench``.

Bad input ends with one line ``error: ...`` naming the file or option at fault and exit code 2;
nothing is written or overwritten in that case (outputs are checked before any work starts and
written atomically). ``SMITE_DEBUG=1`` shows tracebacks of unexpected errors.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from .. import __version__
from ..errors import SmiteError


def _progress_bar(desc: str, total: int, unit: str):
    from tqdm import tqdm

    bar = tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, dynamic_ncols=True, leave=True)

    def update(done: int, _total: int) -> None:
        bar.update(done - bar.n)
        if done >= _total:
            bar.close()

    return update


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _load_backbone(args):
    from ..model.backbone import load_backbone

    _say(f"loading backbone {args.model} ...")
    return load_backbone(args.model, device=args.device, dtype=args.dtype, prediction_type=args.prediction_type)


def _segment_config(args):
    from ..method.segment import SegmentConfig

    return SegmentConfig(window=args.window, overlap=args.overlap, inflate=not args.no_inflate, size=args.size,
                         seed=args.seed, tracker=args.tracker, vote_window=args.vote_window,
                         vote_output=not args.no_vote_output, tracker_checkpoint=args.tracker_checkpoint,
                         track_weight=args.track_weight, lowpass_weight=args.lowpass_weight,
                         guide_steps=args.guide_steps, guide_iters=args.guide_iters)


def _matte_settings(args):
    """``io.mattes.MatteSettings`` of ``--mattes`` and its options, checked (one line, before any work)."""
    from ..io.mattes import MatteSettings

    settings = MatteSettings(formats=tuple(args.mattes or ()), kind=args.matte_kind, start_frame=args.start_frame,
                             frame_padding=args.frame_padding, exr_compression=args.exr_compression,
                             video=args.matte_video or "")
    settings.validate()
    return settings


# ----------------------------------------------------------------------------- commands


def cmd_learn(args) -> int:
    from ..io.fileio import check_writable
    from ..io.references import load_reference_folder
    from ..method.learn import LearnConfig, learn_embedding

    out = check_writable(args.out, args.overwrite, "file")
    if out.suffix != ".safetensors":
        raise SmiteError(f"{out}: the embedding file must end in .safetensors")
    checkpoint = args.checkpoint
    if checkpoint is not None:
        from pathlib import Path

        if Path(checkpoint).suffix != ".safetensors":
            raise SmiteError(f"--checkpoint: {checkpoint} must end in .safetensors")
        if Path(checkpoint).resolve() == out.resolve():
            raise SmiteError(f"--checkpoint: {checkpoint} is the output file; give the learning state its own file")
        if args.checkpoint_every < 0:
            raise SmiteError(f"--checkpoint-every: must be 0 or more steps (got {args.checkpoint_every})")
    references = load_reference_folder(args.refs)
    _say(f"{len(references)} reference image(s), {references.num_segments} segments: {', '.join(references.names)}")
    for note in references.notes:
        _say(note)
    missing = references.missing_ids()
    if missing:
        _say(f"note: label id(s) {', '.join(map(str, missing))} appear in no reference; kept as empty segments "
             f"({', '.join(references.names[i] for i in missing)})")
    backbone = _load_backbone(args)
    config = LearnConfig.for_backbone(backbone, steps=args.steps, epochs=args.epochs, seed=args.seed, size=args.size,
                                      train_kv=False if args.tokens_only else None).resolved(len(references))
    config.validate(backbone)  # the training size against this backbone, before the progress bar starts
    try:
        embedding = learn_embedding(backbone, references, config,
                                    progress=_progress_bar("learning", config.steps, "step"),
                                    checkpoint=checkpoint, checkpoint_every=args.checkpoint_every,
                                    replace_other_checkpoint=args.overwrite, say=_say)
    except KeyboardInterrupt:
        _say(f"interrupted; {out} was not written")
        return 130
    embedding.save(out, overwrite=args.overwrite)
    _say(f"wrote {out}")
    if checkpoint is not None and os.path.isfile(checkpoint):
        os.remove(checkpoint)
        _say(f"removed the learning state {checkpoint} (learning finished)")
    return 0


def cmd_segment(args) -> int:
    from ..io.fileio import check_writable
    from ..io.video_io import open_frames
    from ..method.embedding import SegmentEmbedding
    from ..method.export import export_segmentation
    from ..method.segment import segment_stream

    check_writable(args.out, args.overwrite, "folder")
    config = _segment_config(args)
    config.validate()
    mattes = _matte_settings(args)
    embedding = SegmentEmbedding.load(args.embedding)
    mattes.video_part(embedding.names)  # --matte-video names a segment of this embedding
    with open_frames(args.video) as source:
        _say(f"{source.num_frames} frame(s) of {source.width}x{source.height}; segments: {', '.join(embedding.names)}")
        backbone = _load_backbone(args)
        embedding.check_backbone(backbone)
        config.validate(backbone)  # the working size against this backbone, before any work
        maps = segment_stream(backbone, embedding, source, config,
                              progress=_progress_bar("segmenting", source.num_frames, "frame"),
                              say=lambda message: _say(f"note: {message}"))
        overlay = _overlay_format(args)
        summary = export_segmentation(args.out, maps, source, embedding.names, overlay_format=overlay,
                                      overwrite=args.overwrite, edge_aware=not args.no_edge_aware, mattes=mattes)
    _say(f"wrote {summary['frames']} label maps to {summary['labels']}"
         + (f" and {summary['overlay']}" if summary["overlay"] else "")
         + (f"; mattes ({', '.join(mattes.formats)}) beside them" if mattes.formats else "")
         + (f"; {summary['matte_video']}" if summary["matte_video"] else ""))
    return 0


def cmd_batch(args) -> int:
    from ..batch import segment_many

    try:
        result = segment_many(args.videos, args.embedding, args.out, _segment_config(args), model=args.model,
                              device=args.device, dtype=args.dtype, prediction_type=args.prediction_type,
                              overlay=_overlay_format(args), mattes=_matte_settings(args),
                              edge_aware=not args.no_edge_aware, workers=args.workers, ray=args.ray,
                              gpus_per_video=args.gpus_per_video, overwrite=args.overwrite, say=_say)
    except KeyboardInterrupt:  # segment_many has said what is done and that the same command resumes
        _say("interrupted")
        return 130
    if result.failed:
        _say(f"{len(result.failed)} video(s) failed: {', '.join(result.failed[:10])}"
             + (" ..." if len(result.failed) > 10 else "") + f"; their errors are in {result.out / 'batch.json'}")
        return 1
    if result.pending:  # the run stopped early (a worker was cancelled): the same command resumes
        _say(f"{len(result.pending)} video(s) not segmented; run the same command again to finish them")
        return 1
    return 0


def cmd_eval(args) -> int:
    from ..evaluation.metrics import evaluate_folders, write_metrics_json
    from ..io.fileio import check_writable

    if args.json:
        check_writable(args.json, args.overwrite, "file")
    metrics = evaluate_folders(args.pred, args.gt)
    _print_metrics(metrics)
    if args.json:
        write_metrics_json(metrics, args.json, overwrite=args.overwrite)
        _say(f"wrote {args.json}")
    return 0


def _print_metrics(metrics: dict) -> None:
    def fmt(v):
        return "n/a" if v is None else f"{v:.4f}"

    print(f"frames {metrics['frames']}  J {fmt(metrics['J'])}  F {fmt(metrics['F'])}  J&F {fmt(metrics['J&F'])}  "
          f"mIoU {fmt(metrics['mIoU'])}  flicker {fmt(metrics['flicker'])}")
    for name, iou in metrics["per_class_iou"].items():
        print(f"  {name:>16s}  IoU {fmt(iou)}")


def cmd_vote(args) -> int:
    import contextlib
    import shutil
    from pathlib import Path

    import torch

    from ..errors import InputError
    from ..evaluation.metrics import label_files
    from ..io.fileio import atomic_dir, check_writable
    from ..io.label_png import read_label_png, save_label_png
    from ..io.references import complete_names, natural_key, read_segments_json
    from ..io.video_io import open_frames, open_video_writer, overlay
    from ..model.backbone import resolve_device
    from ..temporal.tracking import make_tracker
    from ..temporal.voting import iter_vote_labels, window_offsets

    check_writable(args.out, args.overwrite, "folder")
    window_offsets(args.vote_window)
    if args.max_grid < 1:
        raise InputError(f"--max-grid: must be at least 1 (got {args.max_grid})")
    files = label_files(Path(args.labels), "labels")
    names = sorted(files, key=natural_key)
    paths = [files[n] for n in names]
    with open_frames(args.video) as source:
        if len(paths) != source.num_frames:
            raise InputError(f"{args.labels}: {len(paths)} label maps for {source.num_frames} video frames")
        num_classes, shape = 1, None
        for path in paths:  # check every map before any work
            labels = read_label_png(path)
            if shape is not None and labels.shape != shape:
                raise InputError(f"{path}: label map is {labels.shape[1]}x{labels.shape[0]}, "
                                 f"{paths[0].name} is {shape[1]}x{shape[0]}")
            shape, num_classes = labels.shape, max(num_classes, int(labels.max()) + 1)
        tracker = make_tracker(args.tracker, args.tracker_checkpoint, device=resolve_device(args.device))
        _say(f"voting {len(paths)} label maps ({num_classes} labels) along {args.tracker} tracks, "
             f"window {args.vote_window}")
        cache: dict[int, torch.Tensor] = {}

        def read_labels(a: int, b: int) -> torch.Tensor:
            for i in [i for i in cache if i < a - args.vote_window]:
                del cache[i]
            for i in range(a, b):
                if i not in cache:
                    cache[i] = torch.from_numpy(read_label_png(paths[i]))
            return torch.stack([cache[i] for i in range(a, b)])

        segments = Path(args.labels) / "segments.json"
        key = complete_names(read_segments_json(segments)[0] if segments.is_file() else [], num_classes)  # colour key
        with atomic_dir(args.out, overwrite=args.overwrite) as tmp, contextlib.ExitStack() as stack:
            (tmp / "labels").mkdir()
            if segments.is_file():
                shutil.copyfile(segments, tmp / "segments.json")
            overlay_name = _overlay_format(args) and f"overlay.{args.overlay}"
            writer = (stack.enter_context(open_video_writer(tmp / overlay_name, fps=source.fps))
                      if overlay_name else None)
            stream = iter_vote_labels(source.read, read_labels, len(paths), num_classes, tracker, args.vote_window,
                                      args.max_grid, progress=_progress_bar("voting", len(paths), "frame"))
            changed = 0
            for index, voted in stream:
                changed += int((voted != read_labels(index, index + 1)[0]).sum())
                save_label_png(tmp / "labels" / f"{names[index]}.png", voted.numpy())
                if writer:
                    frame = source.read(index, index + 1)
                    shown = torch.nn.functional.interpolate(voted[None, None].float(), size=tuple(frame.shape[1:3]),
                                                            mode="nearest")[0].long()
                    writer.write(overlay(frame, shown, names=key))
    _say(f"wrote {len(paths)} label maps to {Path(args.out) / 'labels'} ({changed} pixels changed)")
    return 0


def cmd_demo(args) -> int:
    from .demo import run_demo

    run_demo(args.out, steps=args.steps, frames=args.frames, seed=args.seed, overwrite=args.overwrite,
             device=args.device, progress_factory=_progress_bar, say=_say)
    return 0


def cmd_bench(args) -> int:
    if args.quality:
        return _bench_quality(args)
    if args.batch is not None:
        return _bench_batch(args)
    from ..tools.bench import BENCH_FRAMES, FLOPS_SIZE, format_result, result_line, run_bench, sd21_estimate

    if args.vote_ref_queries is not None and args.vote_ref_queries < 0:
        raise SmiteError(f"--vote-ref-queries: must be 0 (the full loop) or more (got {args.vote_ref_queries})")
    if args.flops:
        _say("counting SD 2.1 FLOPs on the meta device ...")
        result = sd21_estimate(size=args.size or FLOPS_SIZE)
    else:
        if args.size is not None and args.size < 8:
            raise SmiteError(f"--size: must be at least 8 pixels (got {args.size})")
        result = run_bench(frames=BENCH_FRAMES if args.frames is None else args.frames, frame_size=args.frame_size,
                           model=args.model, device=args.device, dtype=args.dtype, inflate=not args.no_inflate,
                           seed=args.seed, size=args.size, video=args.video,
                           overlay=_overlay_format(args), voting=not args.no_vote,
                           vote_ref_queries=args.vote_ref_queries or None, say=_say, progress_factory=_progress_bar)
    if args.json:
        print(result_line(result))
    else:
        print(format_result(result))
    return 0


def _bench_batch(args) -> int:
    from ..tools.bench import format_result, result_line, run_batch_bench

    result = run_batch_bench(frames=args.batch_frames, workers=args.batch, frame_size=args.frame_size, size=args.size,
                             model=args.model, device=args.device, dtype=args.dtype, seed=args.seed,
                             overlay=_overlay_format(args), say=_say)
    print(result_line(result) if args.json else format_result(result))
    return 0


def _bench_quality(args) -> int:
    from ..tools.quality import SUITE_FRAMES, format_table, result_json, run_quality

    try:
        shots = [int(v) for v in args.shots.split(",") if v.strip()]
    except ValueError:
        raise SmiteError(f"--shots: {args.shots!r} is not a comma-separated list of integers") from None
    categories = [c.strip() for c in args.categories.split(",") if c.strip()] if args.categories else None
    if args.workers < 1:  # checked before a possibly large backbone is loaded (run_quality checks it too)
        raise SmiteError(f"--workers: must be an integer >= 1 (got {args.workers})")
    backbone = _load_backbone(args)
    result = run_quality(backbone, shots=shots, categories=categories, videos=args.videos,
                         frames=args.frames or SUITE_FRAMES,
                         learn_overrides={"steps": args.steps} if args.steps else None, say=_say,
                         edge_aware=not args.no_edge_aware, workers=args.workers)
    table = f"{format_table(result)}\n({result.seconds:.0f} s)"
    if args.json:  # stdout holds only the JSON, as in the other bench modes; the table goes to stderr
        print(table, file=sys.stderr)
        print(json.dumps(result_json(result)))
    else:
        print(table)
    return 0


# ----------------------------------------------------------------------------- parser
#
# Every default shown or used here comes from the library's config dataclasses and constants
# (SegmentConfig, LearnConfig, voting, tracking, demo, tools): one source for each setting.

OVERLAYS = ("mp4", "gif", "none")
LEARN_EXAMPLES = """\
reference layout: REFS/images/<name>.png|jpg and REFS/labels/<name>.png, paired by name; optional
REFS/segments.json (a list of names, background first). A label is a single-channel or palette PNG
whose pixel value is the segment id (0 = background, 1, 2, ...), or a colour-coded RGB PNG (one flat
colour per segment, black = background). A black-and-white mask (0/255 or 0/1) is one segment.

examples:
  smite learn --refs refs --out parts.safetensors
  smite learn --refs refs --out parts.safetensors --model sd21.safetensors --device cuda --steps 600"""
DEMO_EXAMPLES = """\
examples:
  smite demo
  smite demo --out /tmp/smite-demo --frames 48 --overwrite"""
VOTE_EXAMPLES = """\
examples:
  smite vote --video clip.mp4 --labels other-segmenter/labels --out deflickered
  smite vote --video frames/ --labels masks/ --out voted --tracker static --vote-window 7 --overlay none"""
EVAL_EXAMPLES = """\
examples:
  smite eval --pred clip-parts --gt ground-truth
  smite eval --pred clip-parts/labels --gt gt/labels --json metrics.json"""
BENCH_EXAMPLES = """\
examples:
  smite bench --frames 64 --json
  smite bench --quality --shots 1 --categories car,bird --workers 2"""
SEGMENT_EXAMPLES = """\
examples:
  smite segment --video clip.mp4 --embedding parts.safetensors --out clip-parts
  smite segment --video frames/ --embedding parts.safetensors --out out --guide-steps 0 --overlay none"""
BATCH_EXAMPLES = """\
output: OUT/<video name>/ per video (the 'smite segment' layout) and OUT/batch.json (status, frames,
seconds and error of each video). Running the same command again skips the complete videos and redoes
the rest. With --ray, the videos and OUT must be on storage every node can reach.

examples:
  smite batch --embedding parts.safetensors --videos 'shots/*.mp4' --out parts --workers 2
  smite batch --embedding parts.safetensors --videos shots.txt --out /shared/parts --ray auto --gpus-per-video 1"""


def _config_option(p: argparse.ArgumentParser, config_cls, name: str, text: str, note: str = "") -> None:
    """``--name`` for the config field ``name``: its type, default and range from the dataclass."""
    from ..settings import option_name, range_of

    default, (low, high) = getattr(config_cls(), name), range_of(config_cls, name)
    kind = int if isinstance(low, int) and isinstance(high, int) else float
    p.add_argument(f"--{option_name(name)}", type=kind, default=default,
                   help=f"{text} (default {default:g}{'; ' + note if note else ''}; {low:g} to {high:g})")


def _parser(sub, name: str, help: str, epilog: str | None = None) -> argparse.ArgumentParser:
    return sub.add_parser(name, help=help, description=help, epilog=epilog,
                          formatter_class=argparse.RawDescriptionHelpFormatter)


def _add_backbone_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="tiny",
                   help="backbone: 'tiny' (the embedded demo model for the synthetic examples), a diffusers folder, or "
                        "an SD 1.x/2.x .safetensors file (default tiny)")
    p.add_argument("--device", default="auto", help="auto (cuda, then mps, then cpu), cpu, cuda, cuda:1, mps "
                                                    "(default auto)")
    p.add_argument("--dtype", default="auto", choices=["auto", "fp32", "fp16", "bf16"],
                   help="auto: fp32 on CPU, bf16 or fp16 on GPU (default auto)")
    p.add_argument("--prediction-type", choices=["epsilon", "v_prediction"], default=None,
                   help="override the detected prediction type of a single-file checkpoint (default: detected)")


def _add_tracker_args(p: argparse.ArgumentParser, choices) -> None:
    from ..method.segment import SegmentConfig
    from ..temporal.tracking import DEFAULT_TRACKER, NO_TRACKING, TRACKERS

    meaning = {**TRACKERS, NO_TRACKING: "no tracking and no vote"}
    p.add_argument("--tracker", default=DEFAULT_TRACKER, choices=list(choices),
                   help="point tracker: " + "; ".join(f"{c}: {meaning[c]}" for c in choices)
                        + f" (default {DEFAULT_TRACKER})")
    p.add_argument("--tracker-checkpoint", default=None, metavar="PATH",
                   help="CoTracker3 checkpoint file, or a models folder holding scaled_offline.pth (needed by "
                        "--tracker cotracker)")
    _config_option(p, SegmentConfig, "vote_window", "frames a temporal vote looks at around each frame")


def _overlay_format(args) -> str | None:
    """The ``--overlay`` choice as the writers take it: a format, or None for no overlay."""
    return None if args.overlay == "none" else args.overlay


def _add_overlay_arg(p: argparse.ArgumentParser, what: str = "overlay video") -> None:
    p.add_argument("--overlay", default=OVERLAYS[0], choices=OVERLAYS, help=f"{what} format (default {OVERLAYS[0]})")


def _add_demo_parser(sub) -> None:
    from . import demo

    p = _parser(sub, "demo", "offline demo: make a procedural example, learn, segment, evaluate", DEMO_EXAMPLES)
    p.add_argument("--out", default=demo.DEMO_OUT, help=f"output folder (default {demo.DEMO_OUT})")
    p.add_argument("--steps", type=int, default=None,
                   help=f"learning steps (default {demo.DEMO_STEPS}, to fit 3 minutes on 2 CPU cores)")
    p.add_argument("--frames", type=int, default=demo.DEMO_FRAMES,
                   help=f"frames in the demo video (default {demo.DEMO_FRAMES})")
    p.add_argument("--seed", type=int, default=0, help="seed of the example, learning and noise (default 0)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, mps (default auto)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    p.set_defaults(func=cmd_demo)


def _add_learn_parser(sub) -> None:
    from ..method.learn import LearnConfig
    from ..method.learn_state import SAVE_EVERY

    d = LearnConfig()
    p = _parser(sub, "learn", "learn a segment embedding from annotated reference images", LEARN_EXAMPLES)
    p.add_argument("--refs", required=True, help="folder with images/ and labels/ (+ optional segments.json)")
    p.add_argument("--out", required=True, help="embedding file to write (.safetensors)")
    length = p.add_mutually_exclusive_group()
    length.add_argument("--steps", type=int, default=None,
                        help="optimisation steps, one augmented reference each (default: --epochs x the number of "
                             "references)")
    length.add_argument("--epochs", type=int, default=None,
                        help=f"passes over the references (default {d.epochs}, the paper's): {d.epochs} steps per "
                             "reference")
    p.add_argument("--seed", type=int, default=d.seed, help=f"seed of the augmentations and noise (default {d.seed})")
    p.add_argument("--size", type=int, default=None,
                   help="training image side in pixels, a multiple of 16 for tiny, 64 for SD (default: the "
                        "backbone's learning size, 192 for tiny, 512 for SD)")
    p.add_argument("--tokens-only", action="store_true", help="learn only the segment tokens, not cross-attention K/V")
    p.add_argument("--checkpoint", default=None, metavar="PATH",
                   help="resumable learning state (.safetensors): saved every --checkpoint-every steps and on "
                        "Ctrl-C; the same command resumes from it; removed when learning finishes")
    p.add_argument("--checkpoint-every", type=int, default=SAVE_EVERY, metavar="N",
                   help=f"steps between learning-state saves (default {SAVE_EVERY}; 0: only on interrupt)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing embedding file (and a --checkpoint state of another run)")
    _add_backbone_args(p)
    p.set_defaults(func=cmd_learn)


def _add_segment_parser(sub) -> None:
    p = _parser(sub, "segment", "segment a video with a learned embedding", SEGMENT_EXAMPLES)
    p.add_argument("--video", required=True, help="a video file (mp4, mov, webm, mkv, avi, gif) or a folder of frames")
    p.add_argument("--embedding", required=True, help="embedding file from 'smite learn'")
    p.add_argument("--out", required=True, help="output folder (labels/, overlay video, segments.json)")
    _add_segmentation_args(p)
    p.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    _add_backbone_args(p)
    p.set_defaults(func=cmd_segment)


def _add_segmentation_args(p: argparse.ArgumentParser) -> None:
    """The segmentation options of ``segment`` and ``batch`` (read back by ``_segment_config``)."""
    from ..method.segment import SEGMENT_TRACKERS, SegmentConfig

    d = SegmentConfig()
    _config_option(p, SegmentConfig, "window", "frames per inflated-UNet window")
    p.add_argument("--overlap", type=int, default=d.overlap,
                   help=f"frames shared by consecutive windows (default {d.overlap}; 0 to window-1)")
    p.add_argument("--no-inflate", action="store_true",
                   help="per-frame segmentation (the paper's Baseline-I: no inflation, tracking, voting or guidance)")
    p.add_argument("--size", type=int, default=None,
                   help="working size in pixels, a multiple of 16 for tiny, 64 for SD (default: the backbone's "
                        "segmentation size, 256 for tiny, 512 for SD)")
    p.add_argument("--seed", type=int, default=d.seed, help=f"seed of the inversion noise (default {d.seed})")
    _add_tracker_args(p, SEGMENT_TRACKERS)
    _config_option(p, SegmentConfig, "track_weight", "weight of the tracking energy E_track", "0: off")
    _config_option(p, SegmentConfig, "lowpass_weight", "weight of the low-pass DCT energy E_reg", "0: off")
    _config_option(p, SegmentConfig, "guide_steps", "guided timesteps per window", "0: no latent update")
    _config_option(p, SegmentConfig, "guide_iters", "latent update iterations per guided timestep")
    p.add_argument("--no-vote-output", action="store_true", help="do not vote the final maps along the tracks")
    p.add_argument("--no-edge-aware", action="store_true",
                   help="upsample the maps bilinearly (the paper's way) instead of along the frame's edges")
    _add_overlay_arg(p)
    _add_matte_args(p)


def _add_matte_args(p: argparse.ArgumentParser) -> None:
    """``--mattes`` and its options (read back by ``_matte_settings``; defaults from ``MatteSettings``)."""
    from ..io.mattes import EXR_COMPRESSIONS, EXR_INSTALL, MATTE_FORMATS, MATTE_KINDS, MatteSettings

    d = MatteSettings()
    p.add_argument("--mattes", action="append", choices=MATTE_FORMATS, default=None,
                   help="also write mattes for compositing, repeatable: png8 / png16 (mattes/<part>/<frame>.png, "
                        "greyscale; with both: mattes_8bit/ and mattes_16bit/) and exr (exr/<frame>.exr, one half-float layer <part>.A per part; needs "
                        f"OpenEXR: {EXR_INSTALL}) (default: none)")
    p.add_argument("--matte-kind", choices=MATTE_KINDS, default=d.kind,
                   help=f"soft: each part's probability (a pixel's parts sum to full white); hard: the label map's "
                        f"parts (default {d.kind})")
    _config_option(p, MatteSettings, "start_frame", "frame number of the first frame in the matte file names")
    _config_option(p, MatteSettings, "frame_padding", "digits of the frame number in the matte file names")
    p.add_argument("--exr-compression", choices=EXR_COMPRESSIONS, default=d.exr_compression,
                   help=f"compression of the EXR files (default {d.exr_compression})")
    p.add_argument("--matte-video", metavar="PART", default=d.video or None,
                   help="also write one part's matte (name or index; soft or hard as --matte-kind) as a greyscale "
                        "video, matte_<part>.mp4, at the source's frame rate")


def _add_batch_parser(sub) -> None:
    from .. import batch

    p = _parser(sub, "batch", "segment many videos with one embedding: a local pool of workers or a Ray cluster",
                BATCH_EXAMPLES)
    p.add_argument("--embedding", required=True, help="embedding file from 'smite learn'")
    p.add_argument("--videos", required=True, nargs="+", metavar="VIDEO",
                   help="video files, frames folders, quoted glob patterns ('shots/*.mp4') or .txt lists of them "
                        "(one a line)")
    p.add_argument("--out", required=True, help="output folder: OUT/<video name>/ per video and OUT/batch.json")
    p.add_argument("--workers", type=int, default=None,
                   help=f"workers, each loading the backbone once (default {batch.DEFAULT_WORKERS}; with --ray: one "
                        "per GPU slot, or per CPU, of the cluster)")
    p.add_argument("--ray", default=None, metavar="auto|ADDRESS",
                   help="run on an existing Ray cluster: 'auto' (the one this machine belongs to) or its address "
                        f"(host:6379, ray://host:10001); default: none, local processes. Needs Ray: "
                        f"{batch.RAY_INSTALL}")
    p.add_argument("--gpus-per-video", type=float, default=batch.DEFAULT_GPUS, metavar="G",
                   help=f"with --ray: GPUs each worker asks Ray for (default {batch.DEFAULT_GPUS:g}: one CPU each; "
                        "0.5: two workers share a GPU)")
    _add_segmentation_args(p)
    p.add_argument("--overwrite", action="store_true",
                   help="redo every video, also complete ones (and replace a batch made with other settings)")
    _add_backbone_args(p)
    p.set_defaults(func=cmd_batch)


def _add_vote_parser(sub) -> None:
    from ..temporal.tracking import TRACKERS
    from ..temporal.voting import DEFAULT_MAX_GRID

    p = _parser(sub, "vote", "temporal vote along point tracks: a flicker filter for any label video", VOTE_EXAMPLES)
    p.add_argument("--video", required=True, help="the video the labels belong to (file or folder of frames)")
    p.add_argument("--labels", required=True, help="folder of label PNGs (or its labels/ subfolder), one per frame")
    p.add_argument("--out", required=True, help="output folder (labels/, overlay video, segments.json if given)")
    _add_tracker_args(p, TRACKERS)
    p.add_argument("--max-grid", type=int, default=DEFAULT_MAX_GRID, metavar="N",
                   help=f"voting grid cells on the long side (default {DEFAULT_MAX_GRID})")
    _add_overlay_arg(p)
    p.add_argument("--device", default="auto", help="device of the cotracker tracker (default auto)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    p.set_defaults(func=cmd_vote)


def _add_eval_parser(sub) -> None:
    p = _parser(sub, "eval", "score predicted label maps against ground truth (J, F, mIoU, flicker)", EVAL_EXAMPLES)
    p.add_argument("--pred", required=True, help="folder of predicted label PNGs (or its labels/ subfolder)")
    p.add_argument("--gt", required=True, help="folder of ground-truth label PNGs (or its labels/ subfolder)")
    p.add_argument("--json", default=None, help="also write the metrics to this JSON file")
    p.add_argument("--overwrite", action="store_true", help="replace an existing JSON file")
    p.set_defaults(func=cmd_eval)


def _add_bench_parser(sub) -> None:
    from ..tools import bench, quality

    p = _parser(sub, "bench", "time each pipeline stage on a procedural video; --quality: the quality suite; "
                              "--flops: an SD 2.1 estimate", BENCH_EXAMPLES)
    p.add_argument("--frames", type=int, default=None,
                   help=f"video frames (default {bench.BENCH_FRAMES}; {quality.SUITE_FRAMES} with --quality)")
    p.add_argument("--frame-size", type=int, default=None,
                   help="side of the procedural frames in pixels (default: the backbone's segmentation size)")
    p.add_argument("--size", type=int, default=None,
                   help="working size in pixels, as in 'smite segment' (default: the backbone's segmentation size; "
                        f"{bench.FLOPS_SIZE} with --flops)")
    p.add_argument("--video", default=None,
                   help="time this video (file or folder of frames) instead of a procedural one")
    _add_overlay_arg(p, "overlay video written (as segment does):")
    p.add_argument("--no-inflate", action="store_true", help="time the per-frame Baseline-I instead")
    p.add_argument("--seed", type=int, default=0, help="seed of the video, segment tokens and noise (default 0)")
    p.add_argument("--no-vote", action="store_true", help="skip the voting benchmark (vote_ms)")
    p.add_argument("--vote-ref-queries", type=int, default=bench.VOTE_REF_QUERIES, metavar="N",
                   help="queries the Python-loop voting baseline is timed on, scaled to the full problem "
                        f"(default {bench.VOTE_REF_QUERIES}; 0: the full loop of 65,536 queries)")
    p.add_argument("--flops", action="store_true",
                   help="instead: count SD 2.1 FLOPs (meta device, no weights) and estimate H100/A100 frames per "
                        "second")
    p.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    p.add_argument("--quality", action="store_true",
                   help="procedural quality suite: held-out videos, learn from --shots references, mIoU/J/F/flicker "
                        "per frame and with the full method (docs/quality.md)")
    batch_workers, batch_frames = ",".join(map(str, bench.BATCH_WORKERS)), ",".join(map(str, bench.BATCH_FRAMES))
    p.add_argument("--batch", nargs="?", const=batch_workers, default=None, metavar="WORKERS",
                   help="instead: time 'smite batch' on procedural videos with each of these worker counts (default "
                        f"{batch_workers}): videos per minute, and with 1 among them the model-load time saved "
                        "against one 'smite segment' per video")
    p.add_argument("--batch-frames", default=batch_frames,
                   help=f"with --batch: frames of each video (default {batch_frames})")
    shots = ",".join(map(str, quality.SUITE_SHOTS))
    p.add_argument("--shots", default=shots, help=f"with --quality: reference counts (default {shots})")
    p.add_argument("--categories", default=None, help="with --quality: comma-separated categories (default: all)")
    p.add_argument("--videos", type=int, default=1, help="with --quality: videos per category (default 1)")
    p.add_argument("--steps", type=int, default=None,
                   help="with --quality: learning steps (default: 300 per reference, the learning default)")
    p.add_argument("--no-edge-aware", action="store_true",
                   help="with --quality: bilinear upsampling of the maps instead of edge-aware")
    p.add_argument("--workers", type=int, default=1,
                   help="with --quality: cases run in this many processes, sharing the CPU threads (default 1; "
                        "2 on a 2-core CPU finishes about twice as fast)")
    _add_backbone_args(p)
    p.set_defaults(func=cmd_bench)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="smite", description="SMITE: segment a video into your own parts, "
                                     "learned from 1-10 annotated reference images.")
    parser.add_argument("--version", action="version", version=f"smite {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (_add_demo_parser, _add_learn_parser, _add_segment_parser, _add_batch_parser, _add_vote_parser,
                _add_eval_parser, _add_bench_parser):
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    # The command owns its process: make MKL's results independent of memory alignment (without it, two
    # identical learning runs differ in the last bits on some CPUs). An explicit MKL_CBWR wins. Set before
    # any command runs torch; the library itself never touches the environment (it runs inside ComfyUI too).
    os.environ.setdefault("MKL_CBWR", "AUTO,STRICT")
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except SmiteError as err:
        _say(f"error: {err}")
        return 2
    except KeyboardInterrupt:
        _say("interrupted; nothing was written")
        return 130
    except Exception as err:  # an unexpected failure: one line unless debugging
        if os.environ.get("SMITE_DEBUG"):
            raise
        _say(f"error: internal error {type(err).__name__}: {' '.join(str(err).split())[:300]} "
             "(set SMITE_DEBUG=1 for details)")
        return 1


if __name__ == "__main__":
    sys.exit(main())
