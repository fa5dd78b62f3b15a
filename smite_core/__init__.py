"""SMITE: Segment Me In TimE - few-shot, any-granularity video segmentation on Stable Diffusion features.

The package by layer (ARCHITECTURE.md), each importing only the ones before it:
``errors``/``settings``/``checks`` (cross-cutting) -> ``io`` (files, label PNGs, references, video) and
``model`` (the SD backbone, the inflated UNet pass) -> ``temporal`` (tracking, voting) -> ``method``
(learning, inversion, WAS, guidance, segmentation, export) -> ``evaluation`` (metrics) -> ``batch``
(many videos) -> ``commands`` (the ``smite`` CLI); ``procedural`` (synthetic data) and ``tools``
(benchmarks, quality suite, pre-training) sit beside them.

The public names below import from here (``from smite_core import segment_stream``); each is loaded on
first use, so ``import smite_core`` is light. This package never imports ComfyUI, and importing it
changes nothing in the host process (no environment variables, threads or torch flags).
"""

import importlib

__version__ = "0.2.0"

# public name -> the module that defines it
_PUBLIC = {
    "load_backbone": "model.backbone", "Backbone": "model.backbone",
    "load_reference_folder": "io.references", "ReferenceSet": "io.references",
    "open_frames": "io.video_io", "FrameSource": "io.video_io",
    "LearnConfig": "method.learn", "learn_embedding": "method.learn",
    "SegmentEmbedding": "method.embedding",
    "SegmentConfig": "method.segment", "segment_stream": "method.segment", "segment_frames": "method.segment",
    "labels_from_was": "method.was", "export_segmentation": "method.export",
    "make_tracker": "temporal.tracking", "vote_video": "temporal.voting",
    "evaluate_folders": "evaluation.metrics",
    "segment_many": "batch",
    "SmiteError": "errors", "InputError": "errors", "EmbeddingError": "errors", "BackboneError": "errors",
}

__all__ = ["__version__", *_PUBLIC]


def __getattr__(name: str):
    """Load a public name's module on first use (PEP 562)."""
    if name not in _PUBLIC:
        raise AttributeError(f"module 'smite_core' has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_PUBLIC[name]}"), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_PUBLIC))
