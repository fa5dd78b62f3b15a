"""``smite demo``: the whole pipeline offline on a procedural example, in one command.

Makes a procedural reference image and video (with exact ground truth), learns a segment
embedding on the embedded backbone, segments the video, scores it and writes:
``example/`` (inputs and ground truth), ``embedding.safetensors``, ``segmentation/`` (label PNGs,
overlay video with a colour key), ``metrics.json`` and ``summary.png`` (titled columns: the reference
and four frames; rows: image, ground truth, prediction; a colour key of the segment names).
"""

from __future__ import annotations

import os
import time
from typing import Callable

import numpy as np
from PIL import Image, ImageDraw

from ..io.fileio import atomic_dir, check_writable
from ..io.label_png import palette, read_label_png
from ..io.legend import key_font, key_image
from ..method.learn import LearnConfig, learn_embedding
from ..settings import check_value, range_of

DEMO_CATEGORY = "car"
DEMO_SIZE = (256, 256)
# The demo fits in 3 minutes on 2 CPU cores: it learns 200 steps (the default: 300 per reference) and segments at
# the tiny backbone's training size (the default 256 px gives finer masks but takes ~2.5x as long).
DEMO_WORK_SIZE = 192
DEMO_STEPS = 200
DEMO_FRAMES = 24
DEMO_MAX_FRAMES = 240
DEMO_OUT = "smite-demo"


SUMMARY_TILE = 160  # pixels per picture in summary.png
SUMMARY_TEXT = 14  # title and key text size in summary.png


def _colour(labels: np.ndarray) -> np.ndarray:
    return palette(256)[labels.astype(np.uint8)]


def summary_picture(reference: np.ndarray, reference_labels: np.ndarray, frames: list[np.ndarray],
                    predictions: list[np.ndarray], names: list[str], ground_truth: list[np.ndarray] | None = None,
                    frame_numbers: list[int] | None = None, tile: int = SUMMARY_TILE) -> Image.Image:
    """The result at a glance, uint8 inputs: column titles (``reference``, ``frame N``), rows ``image``,
    ``ground truth`` (when given) and ``prediction`` (the reference's own labels under the reference),
    and a colour key with the segment ``names`` (background first) below."""
    font = key_font(SUMMARY_TEXT)
    numbers = frame_numbers if frame_numbers is not None else list(range(len(frames)))
    rows = [("image", [reference, *frames])]
    if ground_truth is not None:
        rows.append(("ground truth", [_colour(reference_labels), *map(_colour, ground_truth)]))
        rows.append(("prediction", [None, *map(_colour, predictions)]))
    else:
        rows.append(("prediction", [_colour(reference_labels), *map(_colour, predictions)]))
    gap, left, top = 4, SUMMARY_TEXT * 8, SUMMARY_TEXT * 2
    key = key_image(names, SUMMARY_TEXT)
    width = max(left + (tile + gap) * (len(frames) + 1), key.shape[1] + left)
    height = top + (tile + gap) * len(rows) + key.shape[0] + gap
    sheet = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    titles = ["reference"] + [f"frame {n}" for n in numbers]
    for c, title in enumerate(titles):
        draw.text((left + c * (tile + gap) + tile // 2, top // 2), title, fill=(0, 0, 0), font=font, anchor="mm")
    for r, (title, tiles) in enumerate(rows):
        y = top + r * (tile + gap)
        draw.text((gap, y + tile // 2), title, fill=(0, 0, 0), font=font, anchor="lm")
        for c, picture in enumerate(tiles):
            if picture is not None:
                sheet.paste(Image.fromarray(picture).resize((tile, tile), Image.NEAREST),
                            (left + c * (tile + gap), y))
    sheet.paste(Image.fromarray(key), (left, top + (tile + gap) * len(rows)))
    return sheet


def run_demo(out: str | os.PathLike = DEMO_OUT, steps: int | None = None, frames: int = DEMO_FRAMES, seed: int = 0,
             overwrite: bool = False, device: str = "auto", progress_factory: Callable | None = None,
             say: Callable[[str], None] = print) -> dict:
    """Run the demo into the folder ``out`` (complete or not at all); returns the metrics."""
    from ..evaluation.metrics import evaluate_folders, write_metrics_json
    from ..io.references import load_image, load_reference_folder
    from ..io.video_io import open_frames
    from ..method.embedding import SegmentEmbedding
    from ..method.export import export_segmentation
    from ..method.segment import SegmentConfig, segment_stream
    from ..model.backbone import load_backbone
    from ..procedural import write_example

    out = check_writable(out, overwrite)
    check_value("frames", frames, 1, DEMO_MAX_FRAMES, integer=True)
    steps = DEMO_STEPS if steps is None else steps
    check_value("steps", steps, *range_of(LearnConfig, "steps"), integer=True)
    started = time.time()
    bar = progress_factory or (lambda desc, total, unit: None)
    with atomic_dir(out, overwrite=overwrite) as tmp:
        say(f"[1/5] making a procedural '{DEMO_CATEGORY}' reference and a {frames}-frame video ...")
        example = tmp / "example"
        write_example(example, DEMO_CATEGORY, seed=seed, num_refs=1, num_frames=frames, size=DEMO_SIZE)
        references = load_reference_folder(example / "references")

        say("[2/5] loading the embedded backbone ...")
        backbone = load_backbone("tiny", device=device)
        config = LearnConfig.for_backbone(backbone, steps=steps, seed=seed)
        say(f"[3/5] learning {references.num_segments} segments ({', '.join(references.names)}) "
            f"in {config.steps} steps ...")
        embedding = learn_embedding(backbone, references, config, progress=bar("learning", config.steps, "step"))
        embedding.save(tmp / "embedding.safetensors")
        embedding = SegmentEmbedding.load(tmp / "embedding.safetensors")

        say(f"[4/5] segmenting the video (full method, working size {DEMO_WORK_SIZE} px) ...")
        with open_frames(example / "video") as source:
            maps = segment_stream(backbone, embedding, source, SegmentConfig(seed=seed, size=DEMO_WORK_SIZE),
                                  progress=bar("segmenting", source.num_frames, "frame"))
            export_segmentation(tmp / "segmentation", maps, source, embedding.names, overlay_format="mp4")

        say("[5/5] scoring against the ground truth ...")
        metrics = evaluate_folders(tmp / "segmentation", example / "gt")
        metrics.update(pred_dir=str(out / "segmentation"), gt_dir=str(out / "example" / "gt"))  # the final paths
        write_metrics_json(metrics, tmp / "metrics.json")
        ref_image = sorted((example / "references" / "images").iterdir())[0]
        picks = np.linspace(0, frames - 1, num=min(4, frames)).round().astype(int)
        video_frames = sorted((example / "video").glob("*.png"))
        summary_picture(
            (load_image(ref_image).numpy() * 255).astype(np.uint8),
            references.labels[0].numpy(),
            [(load_image(video_frames[i]).numpy() * 255).astype(np.uint8) for i in picks],
            [read_label_png(tmp / "segmentation" / "labels" / f"{i:05d}.png") for i in picks],
            embedding.names,
            ground_truth=[read_label_png(example / "gt" / "labels" / f"{i:05d}.png") for i in picks],
            frame_numbers=[int(i) for i in picks],
        ).save(tmp / "summary.png")
    elapsed = time.time() - started

    def fmt(v):
        return "n/a" if v is None else f"{v:.3f}"

    say(f"done in {elapsed:.0f} s: mIoU {fmt(metrics['mIoU'])}, J {fmt(metrics['J'])}, F {fmt(metrics['F'])}, "
        f"flicker {fmt(metrics['flicker'])}")
    if not backbone.components.extra.get("trained", True):
        say("note: the embedded backbone's trained weights are not shipped in this build; it runs on a "
            "deterministic random initialisation, so the masks are not meaningful yet")
    say(f"outputs in {out}/: summary.png, segmentation/overlay.mp4, segmentation/labels/, metrics.json")
    return metrics
