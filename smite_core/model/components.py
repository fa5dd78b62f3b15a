"""What a checkpoint loader hands to :mod:`backbone`: the SD components and the shipped family configs.

Kept apart from ``backbone`` so that ``checkpoints`` (the SD 1.x/2.x file and folder readers) and
``backbone`` (device handling, fingerprint, the tiny backbone) both import it and not each other.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from importlib import resources

import torch

CONFIG_PACKAGE = "smite_core.model.configs"
TEXT_LENGTH = 77  # CLIP context length of every supported text encoder


@dataclass
class Components:
    """What a checkpoint loader returns; ``Backbone`` adds device handling and a fingerprint.

    ``empty_prompt_ids`` is the ``[1,77]`` token-id sequence of the empty prompt ``""`` (BOS, EOS,
    padding); it needs no vocabulary, so a missing tokenizer never blocks loading.
    """

    unet: "torch.nn.Module"
    vae: "torch.nn.Module"
    text_encoder: "torch.nn.Module"
    scheduler: object
    family: str  # "sd1", "sd2" or "tiny"
    prediction_type: str  # "epsilon" or "v_prediction"
    empty_prompt_ids: torch.Tensor
    resolution: int  # working image side in pixels (512 for SD, smaller for tiny): learning
    source: str  # what was loaded: "tiny", a folder or a file path
    tokenizer: object | None = None
    extra: dict = field(default_factory=dict)
    segment_resolution: int | None = None  # working side for segmentation; None = ``resolution``


def read_family_config(family: str) -> dict:
    """Read ``configs/<family>/{unet,vae,text_encoder,scheduler,smite}.json`` shipped in the package."""
    root = resources.files(CONFIG_PACKAGE) / family
    out = {}
    for part in ("unet", "vae", "text_encoder", "scheduler", "smite"):
        out[part] = json.loads((root / f"{part}.json").read_text())
    return out
