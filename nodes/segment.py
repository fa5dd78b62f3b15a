"""SMITE_InvertVideo and SMITE_InflatedUNetSegment: frames -> video latent -> per-segment maps."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time

import torch

from smite_core.checks import require_finite
from smite_core.errors import InputError
from smite_core.io.video_io import FrameSource
from smite_core.method.embedding import SegmentEmbedding
from smite_core.method.inversion import DEFAULT_TIMESTEPS, MAX_TIMESTEP, check_timesteps, encode_frames, working_size
from smite_core.method.profiling import Profiler
from smite_core.method.segment import SegmentConfig, segment_stream, window_spans
from smite_core.method.was import labels_from_was
from smite_core.settings import MAX_SIDE, check_side, check_value, widget
from smite_core.temporal.tracking import NO_TRACKING

from . import host
from .wires import EMBEDDING, LATENT, LOW_PASS, MODEL, SEGMENTS, TRACK_VOTE, Segments, VideoLatent, plain

log = logging.getLogger(__name__)

ENCODE_BATCH = 8  # frames VAE-encoded at a time on a GPU (one at a time on a CPU: the bar moves per frame)
DEFAULTS = SegmentConfig()  # the widgets' defaults: the library's segmentation defaults


def frames_of(images, what: str = "images") -> torch.Tensor:
    """An IMAGE batch ``[T,H,W,C]`` -> float32 ``[T,H,W,3]``: RGBA loses its alpha, a 1-channel (grey)
    batch is replicated; one ``[H,W,C]`` image is T=1. Empty batches and NaN/infinite values are refused."""
    if not isinstance(images, torch.Tensor):
        raise InputError(f"{what}: expected an IMAGE batch, got {type(images).__name__}")
    if images.ndim == 3:
        images = images[None]
    if images.ndim != 4 or images.shape[-1] not in (1, 3, 4):
        raise InputError(f"{what}: expected an IMAGE batch [T,H,W,3], got shape {tuple(images.shape)}")
    if min(images.shape) == 0:
        raise InputError(f"{what}: empty IMAGE batch (shape {tuple(images.shape)})")
    require_finite(images, what, "frame")
    images = images.to(torch.float32)
    return images.expand(-1, -1, -1, 3) if images.shape[-1] == 1 else images[..., :3]


def make_config(fields: dict) -> SegmentConfig:
    """A validated SegmentConfig from ``fields``; fields this library version does not have are dropped
    (and logged) so older/newer guide settings never break a workflow."""
    known = {f.name for f in dataclasses.fields(SegmentConfig)}
    dropped = sorted(k for k in fields if k not in known)
    if dropped:
        log.warning("SMITE: this smite_core has no segmentation setting(s) %s; ignored", ", ".join(dropped))
    config = SegmentConfig(**{k: v for k, v in fields.items() if k in known})
    config.validate()
    return config


def widget_problem(*checks) -> str | bool:
    """What ``VALIDATE_INPUTS`` returns: the first failing check's one line, else True. ``checks``: ``(values,
    check)`` pairs. An input fed by a link reaches ``VALIDATE_INPUTS`` as None (ComfyUI knows its value only when
    it runs): a check with a None value is left to the node, which checks again when it runs."""
    try:
        for values, check in checks:
            if None not in values:
                check(*values)
    except InputError as err:
        return str(err)
    return True


def guided_config(size, timesteps, seed, inflate, window, overlap, guide_steps, track_vote=None,
                  low_pass=None) -> SegmentConfig:
    """The SegmentConfig of a segmentation node's widgets and its optional TrackVote / LowPassGuide wires. With no
    guide connected it is the plain inflated UNet (no tracking, voting or latent updates)."""
    fields = {"window": int(window), "overlap": int(overlap), "inflate": bool(inflate), "size": size,
              "timesteps": tuple(timesteps), "seed": int(seed), "tracker": NO_TRACKING, "track_weight": 0.0,
              "lowpass_weight": 0.0, "vote_output": False, "guide_steps": int(guide_steps)}
    if track_vote is not None:
        fields.update(track_vote.config_fields())
    if low_pass is not None:
        fields.update(low_pass.config_fields())
    return make_config(fields)


def planned_unet_passes(config: SegmentConfig, num_frames: int) -> int:
    """The UNet passes ``segment_stream`` makes for ``num_frames`` frames: one reference pass per window,
    plus per guided step ``guide_iters`` passes per sub-slice of ``guide_slice`` frames and one after it."""
    passes = 0
    for start, stop in window_spans(num_frames, config.window, config.overlap):
        passes += 1
        if config.temporal and config.guided:
            steps = max(0, min(config.guide_steps, config.timesteps[0] - 1))
            slices = -(-(stop - start) // config.guide_slice)
            passes += steps * (config.guide_iters * slices + 1)
    return passes


class PassProgress(Profiler):
    """ComfyUI's progress bar over UNet passes: the profiler hears a ``unet`` stage for every pass
    (reference passes, guidance iterations), and each finished pass moves the bar (an interrupt point
    too). The total grows if the run makes more passes than planned (an out-of-memory retry). ``steps``: the
    stages that count (``write``, too, when each frame written to disk is a step of the bar)."""

    def __init__(self, total: int, steps: tuple[str, ...] = ("unet",)):
        self.total, self.done, self.steps = max(1, int(total)), 0, steps
        self.report = host.progress(self.total)

    @contextlib.contextmanager
    def stage(self, name: str, items: int = 0):
        yield
        if name in self.steps:
            self.done += 1
            self.total = max(self.total, self.done)
            self.report(self.done, self.total)


def plain_embedding(embedding: SegmentEmbedding) -> SegmentEmbedding:
    """A copy whose tensors can take part in autograd (see ``wires.plain``)."""
    return SegmentEmbedding(plain(embedding.tokens), list(embedding.names), embedding.backbone_fingerprint,
                            {k: plain(v) for k, v in embedding.kv.items()}, dict(embedding.meta))


class InvertVideo:
    """Encode video frames with the backbone's VAE: the latent SMITE noises and reads attention from."""

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": (MODEL, {"tooltip": "The backbone from SMITE Model Loader."}),
                "images": ("IMAGE", {"tooltip": "Video frames [T,H,W,3] (e.g. from Load Video + Get Video Components, "
                                                "or VideoHelperSuite)."}),
                "size": ("INT", {"default": 0, "min": 0, "max": MAX_SIDE, "step": 16,
                                 "tooltip": "Working side in pixels (frames are resized to size x size); 0 = the "
                                            "backbone's (256 for tiny, 512 for SD). Masks always come back at "
                                            "the frames' own size."}),
                "random_seed": ("INT", {"default": 0, "min": 0, "max": 2**31 - 1,
                                        "tooltip": "Seed of the inversion noise (same seed, same masks)."}),
                "timestep_min": ("INT", {"default": DEFAULT_TIMESTEPS[0], "min": 1, "max": MAX_TIMESTEP,
                                         "tooltip": "The latent is noised to a timestep drawn from [min, max] per "
                                                    "window (the method uses about 100)."}),
                "timestep_max": ("INT", {"default": DEFAULT_TIMESTEPS[1], "min": 1, "max": MAX_TIMESTEP,
                                         "tooltip": "Upper end of the noise timestep range."}),
            },
        }

    RETURN_TYPES = (LATENT,)
    RETURN_NAMES = ("latent",)
    OUTPUT_TOOLTIPS = ("The video latent with its noise settings, for InflatedUNetSegment.",)
    FUNCTION = "invert"
    CATEGORY = "SMITE/segment"
    DESCRIPTION = "VAE-encodes the frames (posterior mean, each frame once) and sets how they are noised."

    @classmethod
    def VALIDATE_INPUTS(cls, size=None, timestep_min=None, timestep_max=None):
        return widget_problem(((size,), lambda s: check_value("size", s, 0, MAX_SIDE, integer=True)),
                              ((timestep_min, timestep_max), lambda a, b: check_timesteps((a, b))))

    def invert(self, model, images, size=0, random_seed=0, timestep_min=DEFAULT_TIMESTEPS[0],
               timestep_max=DEFAULT_TIMESTEPS[1]):
        check_timesteps((timestep_min, timestep_max))
        frames = frames_of(images)
        total = frames.shape[0]
        report = host.progress(total)
        out = []
        with model.use() as backbone:
            check_side(int(size) or None, backbone.size_multiple)
            hw = working_size(backbone, tuple(frames.shape[1:3]), int(size) or None)
            batch = ENCODE_BATCH if backbone.device.type != "cpu" else 1
            for start in range(0, total, batch):
                host.check_interrupt()
                stop = min(total, start + batch)
                out.append(encode_frames(backbone, frames[start:stop], hw).float().cpu())
                report(stop, total)
        latent = VideoLatent(latents=torch.cat(out), frames=frames, size=hw,
                             timesteps=(int(timestep_min), int(timestep_max)), seed=int(random_seed),
                             fingerprint=model.fingerprint)
        return (latent,)


class InflatedUNetSegment:
    """Segment every frame: the inflated UNet reads the learned segments' attention, window by window."""

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": (MODEL, {"tooltip": "The backbone the embedding was learned on."}),
                "embedding": (EMBEDDING, {"tooltip": "Learned (or loaded) segment embedding."}),
                "latent": (LATENT, {"tooltip": "The video latent from SMITE Invert Video."}),
                "inflate": ("BOOLEAN", {"default": True,
                                        "tooltip": "Inflated UNet: self-attention across all frames of a window and "
                                                   "frame-pooled GroupNorm. Off: each frame alone (the paper's "
                                                   "Baseline-I; no tracking or guidance)."}),
                "window": ("INT", {**widget(SegmentConfig, "window"),
                                   "tooltip": "Frames per window (memory grows with the square of it)."}),
                "overlap": ("INT", {**widget(SegmentConfig, "overlap"),
                                    "tooltip": "Frames shared by consecutive windows (cross-faded); below window."}),
                "guide_steps": ("INT", {**widget(SegmentConfig, "guide_steps"),
                                        "tooltip": "Denoising steps during which connected guides optimise the "
                                                   "latent (each costs a few UNet passes). 0: guides only vote."}),
            },
            "optional": {
                "track_vote": (TRACK_VOTE, {"tooltip": "Tracking + voting guide (SMITE TrackVote): temporal "
                                                       "consistency inside the denoising loop."}),
                "low_pass": (LOW_PASS, {"tooltip": "Low-pass regulariser guide (SMITE LowPassGuide): keeps the "
                                                   "coarse layout of the first pass while the latent is guided."}),
            },
        }

    RETURN_TYPES = (SEGMENTS,)
    RETURN_NAMES = ("segments",)
    OUTPUT_TOOLTIPS = ("Per-segment probabilities and labels of every frame, for SMITE Mask To Video.",)
    FUNCTION = "segment"
    CATEGORY = "SMITE/segment"
    DESCRIPTION = ("Segments the video into the embedding's parts with the inflated UNet (windows of frames, "
                   "cross-faded). Connect TrackVote / LowPassGuide for the method's temporal guidance.")

    @classmethod
    def VALIDATE_INPUTS(cls, window=None, overlap=None, guide_steps=None):
        # the library's own ranges (smite_core.settings): one definition
        return widget_problem(((window, overlap, guide_steps),
                               lambda w, o, g: SegmentConfig(window=w, overlap=o, guide_steps=g).validate()))

    def segment(self, model, embedding, latent, inflate=True, window=DEFAULTS.window, overlap=DEFAULTS.overlap,
                guide_steps=DEFAULTS.guide_steps, track_vote=None, low_pass=None):
        if latent.fingerprint != model.fingerprint:
            raise InputError("latent: it was made with another backbone; invert the video with this model")
        config = guided_config(latent.size, latent.timesteps, latent.seed, inflate, window, overlap, guide_steps,
                               track_vote, low_pass)
        total = latent.num_frames
        bar = PassProgress(planned_unet_passes(config, total))  # moves after every UNet pass
        started = time.perf_counter()
        with torch.inference_mode(False):  # guidance needs gradients; ComfyUI runs nodes in inference mode
            frames, latents = plain(latent.frames), plain(latent.latents)
            with model.use() as backbone:
                stream = segment_stream(backbone, plain_embedding(embedding), FrameSource.from_tensor(frames), config,
                                        latents=latents, say=lambda message: log.warning("SMITE: %s", message),
                                        profiler=bar, interrupt=host.check_interrupt)
                was = torch.stack([maps for _, maps in stream])
        labels = labels_from_was(was, tuple(latent.frames.shape[1:3]), latent.frames)  # edge-aware
        log.info("SMITE: segmented %d frames into %d segments (%.0f s%s)", total, embedding.num_segments,
                 time.perf_counter() - started, ", guided" if config.temporal else "")
        return (Segments(scores=was.to(torch.float16), labels=labels, names=list(embedding.names),
                         frames=latent.frames),)


NODE_CLASS_MAPPINGS = {
    "SMITE_InvertVideo": InvertVideo,
    "SMITE_InflatedUNetSegment": InflatedUNetSegment,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "SMITE_InvertVideo": "SMITE Invert Video",
    "SMITE_InflatedUNetSegment": "SMITE Inflated UNet Segment",
}
