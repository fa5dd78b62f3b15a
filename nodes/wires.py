"""The plain objects that travel along SMITE's custom wire types.

Every wire value is a small dataclass holding tensors and settings: nothing refers to ComfyUI, so
the nodes can be called directly in tests. Type names (``SMITE_MODEL`` ...) are what ComfyUI
matches sockets on.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from dataclasses import dataclass
from typing import Iterator

import torch

from smite_core.method.segment import SegmentConfig
from smite_core.model.backbone import Backbone

from . import host

log = logging.getLogger(__name__)

MODEL = "SMITE_MODEL"
REFERENCES = "SMITE_REFERENCES"
EMBEDDING = "SMITE_EMBEDDING"
LATENT = "SMITE_LATENT"
SEGMENTS = "SMITE_SEGMENTS"
TRACK_VOTE = "SMITE_TRACK_VOTE"
LOW_PASS = "SMITE_LOW_PASS"


def plain(tensor):
    """``tensor``, or a normal copy of it if it was made in inference mode (as every tensor made inside a
    ComfyUI node is). Call outside inference mode before a tensor takes part in autograd."""
    if isinstance(tensor, torch.Tensor) and tensor.is_inference():
        with torch.inference_mode(False):
            return tensor.clone()
    return tensor


def _module_bytes(backbone: Backbone) -> int:
    total = 0
    for model in (backbone.unet, backbone.vae, backbone.text_encoder):
        total += sum(p.numel() * p.element_size() for p in model.parameters())
        total += sum(b.numel() * b.element_size() for b in model.buffers())
    return total


@dataclass(eq=False)
class SmiteModel:
    """A loaded backbone plus how to place it: compute device, offload device, dtype, keep-loaded.

    The backbone's modules wait on ``offload_device`` and are moved to ``load_device`` only while a
    node uses them (:meth:`use`); afterwards they go back and ComfyUI's cache is emptied, unless
    ``keep_loaded``. ``source`` says what was loaded (for messages and the cache key).
    """

    backbone: Backbone
    source: str
    load_device: torch.device
    offload_device: torch.device
    keep_loaded: bool = False

    @property
    def fingerprint(self) -> str:
        return self.backbone.fingerprint

    @property
    def size_bytes(self) -> int:
        return _module_bytes(self.backbone)

    def _move(self, device: torch.device) -> Backbone:
        if self.backbone.device != device:
            with torch.inference_mode(False):  # ComfyUI runs nodes in inference mode; weights must stay normal
                for model in (self.backbone.unet, self.backbone.vae, self.backbone.text_encoder):
                    model.to(device)
            self.backbone = dataclasses.replace(self.backbone, device=device)
        return self.backbone

    @contextlib.contextmanager
    def use(self) -> Iterator[Backbone]:
        """The backbone on the compute device for the duration of the ``with`` block."""
        if self.backbone.device != self.load_device:
            host.free_memory_for(int(self.size_bytes * 1.5) + (512 << 20), self.load_device)
        backbone = self._move(self.load_device)
        try:
            yield backbone
        finally:
            self.release()

    def release(self) -> None:
        """Offload the modules and empty the device cache, unless ``keep_loaded``."""
        if self.keep_loaded:
            return
        if self.backbone.device != self.offload_device:
            self._move(self.offload_device)
        host.soft_empty_cache()

    def __repr__(self) -> str:
        return (f"SmiteModel({self.source}, {self.backbone.family}, {self.backbone.dtype}, "
                f"on {self.backbone.device}, keep_loaded={self.keep_loaded})")


@dataclass(eq=False)
class VideoLatent:
    """Output of InvertVideo: the frames' clean VAE latents and how to noise them.

    ``latents`` float32 ``[T,4,h,w]`` on the CPU (VAE posterior means at working size ``size``);
    ``frames`` the IMAGE batch ``[T,H,W,3]`` they came from (kept for the output size, tracking and
    overlays; the same tensor, not a copy). Segmentation noises the latents window by window to a
    timestep drawn from ``timesteps`` with ``seed`` (the method's single noised inversion step).
    """

    latents: torch.Tensor
    frames: torch.Tensor
    size: tuple[int, int]
    timesteps: tuple[int, int]
    seed: int
    fingerprint: str

    @property
    def num_frames(self) -> int:
        return int(self.latents.shape[0])


@dataclass(eq=False)
class Segments:
    """Output of InflatedUNetSegment: per-segment scores and labels of every frame.

    ``scores`` float16 ``[T,K,h,w]`` at latent resolution (WAS in each class's logit range;
    ``probabilities`` turns them into softmax probabilities at any size); ``labels`` uint8 ``[T,H,W]``
    at the frame size; ``names`` K segment names (``names[0] == "background"``); ``frames`` the video.
    """

    scores: torch.Tensor
    labels: torch.Tensor
    names: list[str]
    frames: torch.Tensor

    @property
    def num_segments(self) -> int:
        return len(self.names)

    def segment_index(self, choice: str) -> int | None:
        """Index of a segment given by name (any case) or number; ``None`` for ``all`` (every non-background)."""
        from smite_core.io.mattes import part_index

        if str(choice).strip().lower() in ("all", "*", "foreground"):
            return None
        return part_index(self.names, choice, "segment", ", or 'all'")

    def probabilities(self, index: int | None, start: int, stop: int) -> torch.Tensor:
        """Soft mask float32 ``[n,H,W]`` of frames ``start..stop-1``: the softmax probability of segment
        ``index`` (``None``: of any non-background segment), upsampled to the frame size along the
        frame's edges, as the labels are (``smite_core.method.edges``)."""
        from smite_core.method.was import upsample_was

        size = tuple(self.labels.shape[1:])
        out = []
        for i in range(start, stop):
            up = upsample_was(self.scores[i:i + 1].float(), size, self.frames[i:i + 1].float())
            prob = torch.softmax(up[0], dim=0)
            out.append(1.0 - prob[0] if index is None else prob[index])
        return torch.stack(out)


@dataclass(frozen=True)
class TrackVoteSettings:
    """TrackVote node settings for InflatedUNetSegment (fields named as in ``SegmentConfig``)."""

    tracker: str = SegmentConfig.tracker
    track_weight: float = SegmentConfig.track_weight
    vote_window: int = SegmentConfig.vote_window
    vote_output: bool = SegmentConfig.vote_output
    tracker_checkpoint: str | None = None

    def config_fields(self) -> dict:
        return {"tracker": self.tracker, "track_weight": self.track_weight, "vote_window": self.vote_window,
                "vote_output": self.vote_output, "tracker_checkpoint": self.tracker_checkpoint}


@dataclass(frozen=True)
class LowPassSettings:
    """LowPassGuide node settings for InflatedUNetSegment (fields named as in ``SegmentConfig``)."""

    lowpass_weight: float = SegmentConfig.lowpass_weight
    lowpass_cutoff: float = SegmentConfig.lowpass_cutoff
    lowpass_first_cutoff: float = SegmentConfig.lowpass_first_cutoff

    def config_fields(self) -> dict:
        return {"lowpass_weight": self.lowpass_weight, "lowpass_cutoff": self.lowpass_cutoff,
                "lowpass_first_cutoff": self.lowpass_first_cutoff}

