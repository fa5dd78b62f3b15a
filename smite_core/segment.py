"""Segmentation: a video, window by window, through inversion -> inflated UNet -> WAS -> masks.

Frames are read lazily per window (16 frames, overlap 8 by default; the last window is shifted
back to be full length; videos shorter than a window are one window). Frames covered by two
windows get a cross-faded blend of both windows' WAS, so labels do not jump at window
boundaries. WAS maps stay at latent resolution until a frame is finished; only then is it handed
to the caller, who upsamples it to the frame's own size (``was.labels_from_was``). Memory is
therefore flat in the video's length.

Temporal consistency (method.md 6.3 step 2, 7, 8; on by default): after the reference pass the
window is tracked (``tracking``), the noisy latent takes ``guide_steps`` DDIM steps of one timestep
each from the reference pass's own ``z_t`` and ``t`` (a fresh scheduler per call, never the shared
one, and every energy evaluated at the timestep of the latent it is applied to: defect D12); after
each step the latent is optimised against ``E_track`` (voted labels) and ``E_reg`` (low-pass DCT
against the reference WAS, whose overlap frames are the previous window's final WAS), and the
final WAS is voted along the tracks once more (``vote_output``). ``inflate=False`` is the paper's
per-frame Baseline-I: no inflation, tracking, voting or guidance.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, replace
from typing import Callable, Iterator

import torch

from .backbone import Backbone
from .embedding import SegmentEmbedding, build_context
from .checks import require_finite
from .errors import InputError, SmiteError
from .guidance import guide_latents, step_size
from .inversion import DEFAULT_TIMESTEPS, add_noise, encode_frames, sample_timestep, working_size
from .memory_budget import encode_batch, flushed_denormals, guide_slice
from .tracking import Tracker, make_tracker
from .unet_pass import unet_forward
from .voting import vote_tracks
from .was import was_inference

TRACKERS = ("none", "flow", "cotracker")
# Temporal defaults, tuned on the procedural suite (see README "Temporal consistency").
DEFAULT_TRACK_WEIGHT = 0.1
DEFAULT_LOWPASS_WEIGHT = 8.0
DEFAULT_GUIDE_STEPS = 1
DEFAULT_GUIDE_ITERS = 1
DEFAULT_GUIDE_LR = 10.0
REFINE_ZOOM = 2  # refine_crop: output grid per latent cell


@dataclass
class SegmentConfig:
    """Segmentation settings. ``inflate=False`` is per-frame segmentation (the paper's Baseline-I:
    no inflation, tracking, voting or guidance).

    Temporal consistency: ``tracker`` (``flow``, ``cotracker`` with ``tracker_checkpoint``, or
    ``none``) drives the vote (``vote_window`` frames, ``vote_output``) and ``E_track``;
    ``track_weight``/``lowpass_weight`` weigh ``E_track``/``E_reg`` (both 0: no latent update);
    ``guide_steps`` guided timesteps of ``guide_iters`` Adam iterations on ``guide_slice``-frame
    sub-slices with learning rate ``guide_lr`` (times ``beta_t / (1 - beta_t)``); ``E_reg`` keeps
    spatial DCT frequencies below ``lowpass_cutoff`` (``lowpass_first_cutoff`` at the first guided
    step). ``refine_crop``: a coarse pass first, then the window again on a crop around the foreground.
    """

    window: int = 16
    overlap: int = 8
    inflate: bool = True
    pool_norm: bool = True  # frame-pooled GroupNorm in the inflated UNet
    size: int | tuple[int, int] | None = None  # working size; None = the backbone's resolution
    timesteps: tuple[int, int] = DEFAULT_TIMESTEPS
    seed: int = 0
    tracker: str = "flow"
    track_weight: float = DEFAULT_TRACK_WEIGHT
    lowpass_weight: float = DEFAULT_LOWPASS_WEIGHT
    vote_window: int = 15
    vote_output: bool = True
    lowpass_cutoff: float = 0.4
    lowpass_first_cutoff: float = 0.999
    guide_steps: int = DEFAULT_GUIDE_STEPS
    guide_iters: int = DEFAULT_GUIDE_ITERS
    guide_slice: int = 4
    guide_lr: float = DEFAULT_GUIDE_LR
    tracker_checkpoint: str | None = None
    refine_crop: bool = False

    @property
    def temporal(self) -> bool:
        """Whether any temporal stage (tracking, voting, guidance) runs."""
        return self.inflate and (self.tracker != "none" or self.guided)

    @property
    def guided(self) -> bool:
        """Whether the latent is optimised (a non-zero weight and at least one guided step)."""
        return self.inflate and self.guide_steps > 0 and (self.lowpass_weight > 0 or
                                                          (self.track_weight > 0 and self.tracker != "none"))

    def validate(self) -> None:
        if self.window < 1:
            raise InputError(f"window: must be at least 1 frame (got {self.window})")
        if not 0 <= self.overlap < self.window:
            raise InputError(f"overlap: must be between 0 and window-1 = {self.window - 1} (got {self.overlap})")
        if self.tracker not in TRACKERS:
            raise InputError(f"tracker: {self.tracker!r} is not one of {', '.join(TRACKERS)}")
        for name in ("track_weight", "lowpass_weight", "guide_lr"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise InputError(f"{name.replace('_', '-')}: must be a finite number >= 0 (got {value})")
        for name in ("lowpass_cutoff", "lowpass_first_cutoff"):
            value = getattr(self, name)
            if not 0 < value <= 1:
                raise InputError(f"{name.replace('_', '-')}: must be in (0, 1] (got {value})")
        for name, low in (("vote_window", 1), ("guide_steps", 0), ("guide_iters", 1), ("guide_slice", 1)):
            value = getattr(self, name)
            if not isinstance(value, int) or value < low:
                raise InputError(f"{name.replace('_', '-')}: must be an integer >= {low} (got {value})")
        if self.tracker == "cotracker" and not self.tracker_checkpoint:
            raise InputError("tracker-checkpoint: the cotracker tracker needs a checkpoint file or models folder")


def window_spans(num_frames: int, window: int, overlap: int) -> list[tuple[int, int]]:
    """``[start, stop)`` of each window; the last is shifted back to be full length."""
    if num_frames <= window:
        return [(0, num_frames)]
    step = window - overlap
    spans = []
    start = 0
    while True:
        if start + window >= num_frames:
            spans.append((num_frames - window, num_frames))
            return spans
        spans.append((start, start + window))
        start += step


def blend_weights(span: tuple[int, int], previous: tuple[int, int] | None, following: tuple[int, int] | None) -> torch.Tensor:
    """Cross-fade weights ``[F]`` in (0, 1]: ramps up over the overlap with the previous window
    and down over the overlap with the next one."""
    start, stop = span
    n = stop - start
    pos = torch.arange(n, dtype=torch.float32)
    w = torch.ones(n)
    if previous is not None and previous[1] > start:
        w = torch.minimum(w, (pos + 1) / (previous[1] - start + 1))
    if following is not None and following[0] < stop:
        w = torch.minimum(w, (n - pos) / (stop - following[0] + 1))
    return w


@torch.no_grad()
def segment_window(backbone: Backbone, embedding: SegmentEmbedding, frames: torch.Tensor, config: SegmentConfig,
                   generator: torch.Generator, context: torch.Tensor | None = None,
                   latents: torch.Tensor | None = None, *, tracker: Tracker | None = None,
                   carry: torch.Tensor | None = None) -> torch.Tensor:
    """WAS ``[F,K,h,w]`` (latent resolution, CPU float32) of one window of frames ``[F,H,W,3]`` (0..1).

    ``latents``: the window's clean VAE latents ``[F,4,h,w]`` if already encoded (``InvertVideo``),
    else the frames are encoded here. ``tracker``: built from ``config`` when needed and not given.
    ``carry``: the previous window's final WAS ``[n,K,h,w]`` of this window's first ``n`` frames;
    it replaces their reference WAS (the low-pass target and the first vote).
    With ``config.refine_crop`` the result is on a grid ``REFINE_ZOOM`` times finer (``refine``).
    """
    if config.refine_crop and config.inflate:
        return _refined_window(backbone, embedding, frames, config, generator, context, latents, tracker, carry)
    return _window(backbone, embedding, frames, config, generator, context, latents, tracker, carry)


def _refined_window(backbone, embedding, frames, config, generator, context, latents, tracker, carry) -> torch.Tensor:
    """Coarse plain pass, then the window again on a crop around the foreground (``refine``)."""
    from .refine import crop_frames, crop_was, foreground_box, paste_was, to_canvas

    plain = replace(config, tracker="none", track_weight=0.0, lowpass_weight=0.0, refine_crop=False)
    fine_config = replace(config, refine_crop=False)
    coarse = _window(backbone, embedding, frames, plain, generator, context, latents, None, None)
    grid = tuple(coarse.shape[-2:])
    canvas_hw = (grid[0] * REFINE_ZOOM, grid[1] * REFINE_ZOOM)
    box = foreground_box(coarse)
    if box is None:  # no foreground, or all of the frame: the plain window, on the canvas grid
        small = None if carry is None else torch.nn.functional.interpolate(carry, size=grid, mode="bilinear",
                                                                          align_corners=False)
        return to_canvas(_window(backbone, embedding, frames, fine_config, generator, context, latents, tracker,
                                 small), canvas_hw)
    crop = crop_frames(frames, box)
    size = working_size(backbone, tuple(frames.shape[1:3]), config.size)  # the crop is zoomed to the working size
    fine = _window(backbone, embedding, crop, fine_config, generator, context, encode_frames(backbone, crop, size),
                   tracker, None if carry is None else crop_was(carry, box, grid))
    return paste_was(fine, box, canvas_hw)


def _window(backbone, embedding, frames, config, generator, context, latents, tracker, carry) -> torch.Tensor:
    """:func:`segment_window` without the refinement."""
    if context is None:
        context = build_context(backbone.encode_empty_prompt(), embedding.tokens.to(backbone.device))
    reference = reference_pass(backbone, embedding, frames, config, generator, context, latents)
    if not config.temporal:
        return reference.was
    return temporal_pass(backbone, embedding, frames, config, reference, context, tracker, carry)


@dataclass
class ReferencePass:
    """The plain forward of a window: timestep ``t``, noisy latent ``[F,4,h,w]``, model output, WAS (CPU)."""

    t: int
    noisy: torch.Tensor
    out: torch.Tensor
    was: torch.Tensor


def reference_pass(backbone: Backbone, embedding: SegmentEmbedding, frames: torch.Tensor, config: SegmentConfig,
                   generator: torch.Generator, context: torch.Tensor, latents: torch.Tensor | None = None) -> ReferencePass:
    """Encode (unless ``latents``), noise once at ``t ~ U(config.timesteps)`` and run the UNet over the window."""
    if latents is None:
        latents = encode_frames(backbone, frames, working_size(backbone, tuple(frames.shape[1:3]), config.size))
    t = sample_timestep(generator, config.timesteps)
    noisy = add_noise(backbone, latents.to(backbone.device, backbone.dtype), t, generator)
    out, record = unet_forward(backbone, noisy, t, context, embedding.num_segments, kv=embedding.kv,
                               inflate=config.inflate, pool_norm=config.pool_norm and config.inflate)
    return ReferencePass(t, noisy, out, was_inference(record).float().cpu())


def temporal_pass(backbone: Backbone, embedding: SegmentEmbedding, frames: torch.Tensor, config: SegmentConfig,
                  ref: ReferencePass, context: torch.Tensor, tracker: Tracker | None = None,
                  carry: torch.Tensor | None = None) -> torch.Tensor:
    """Tracking, guided denoising steps and the output vote after a :func:`reference_pass` -> WAS (CPU)."""
    reference = ref.was.clone()
    if carry is not None and len(carry):
        reference[:len(carry)] = carry.to(reference)
    tracks = None
    if config.tracker != "none":
        tracker = tracker or make_tracker(config.tracker, config.tracker_checkpoint, device=backbone.device)
        tracks = tracker.track(frames, tuple(reference.shape[-2:]), max_offset=config.vote_window // 2)
    current = reference
    if config.guided:
        from diffusers import DDIMScheduler

        scheduler = DDIMScheduler.from_config(backbone.scheduler.config)  # a copy: never the shared one (D12)
        scheduler.set_timesteps(scheduler.config.num_train_timesteps)
        z, out, t = ref.noisy, ref.out, ref.t
        for g in range(min(config.guide_steps, t - 1)):
            z = scheduler.step(out, t, z, eta=0.0).prev_sample  # one DDIM step: t -> t-1
            t -= 1
            labels = None
            if tracks is not None and config.track_weight > 0:
                labels = vote_tracks(current, tracks, config.vote_window).argmax(1)
            z = guide_latents(backbone, embedding, context, z, t, reference.to(backbone.device), labels,
                              track_weight=config.track_weight, lowpass_weight=config.lowpass_weight,
                              cutoff=config.lowpass_first_cutoff if g == 0 else config.lowpass_cutoff,
                              iterations=config.guide_iters, sub_slice=config.guide_slice,
                              step=step_size(scheduler, t, config.guide_lr), inflate=config.inflate,
                              pool_norm=config.pool_norm)
            out, record = unet_forward(backbone, z, t, context, embedding.num_segments, kv=embedding.kv,
                                       inflate=config.inflate, pool_norm=config.pool_norm)
            current = was_inference(record).float().cpu()
            del record
    if tracks is not None and config.vote_output:
        current = vote_tracks(current, tracks, config.vote_window)
    return current


def is_out_of_memory(err: BaseException) -> bool:
    """True for torch's out-of-memory errors (CUDA, MPS, CPU allocator), however they are raised."""
    kinds = tuple(k for k in (getattr(torch, "OutOfMemoryError", None), getattr(torch.cuda, "OutOfMemoryError", None))
                  if isinstance(k, type))
    if kinds and isinstance(err, kinds):
        return True
    return isinstance(err, RuntimeError) and "out of memory" in str(err).lower()


def _free_cached_memory(device: torch.device) -> None:
    if device.type == "cuda" and torch.cuda.is_available():
        torch.cuda.empty_cache()
    elif device.type == "mps" and hasattr(torch, "mps"):
        torch.mps.empty_cache()


def smaller_config(config: SegmentConfig, span: tuple[int, int]) -> tuple[SegmentConfig, str] | None:
    """The next setting to try after running out of memory on ``span``: half the guidance sub-slice
    (while guided and above 1 frame), else half the window (overlap scaled with it); None at 1 frame."""
    if config.guided and config.guide_slice > 1:
        n = config.guide_slice // 2
        return replace(config, guide_slice=n), f"guidance sub-slices of {n} frame(s)"
    length = min(config.window, span[1] - span[0])
    if length > 1:
        window = length // 2
        overlap = min(config.overlap * window // config.window, window - 1)
        return replace(config, window=window, overlap=overlap), f"windows of {window} frame(s), overlap {overlap}"
    return None


def segment_stream(backbone: Backbone, embedding: SegmentEmbedding, source, config: SegmentConfig | None = None,
                   progress: Callable[[int, int], None] | None = None,
                   latents: torch.Tensor | None = None,
                   say: Callable[[str], None] | None = None) -> Iterator[tuple[int, torch.Tensor]]:
    """Yield ``(frame_index, WAS [K,h,w])`` for every frame of ``source`` in order, window by window.

    ``source`` is a ``video_io.FrameSource`` (anything with ``num_frames`` and ``read(start, stop)``).
    ``latents``: optional clean VAE latents ``[T,4,h,w]`` of the whole video (from ``InvertVideo``);
    without them each window's frames are encoded as they are read.
    ``progress(done_frames, total_frames)`` is called as frames are finished. Each window after the
    first gets the previous window's result for the frames they share (``carry``). With
    ``config.refine_crop`` the maps are on a grid ``REFINE_ZOOM`` times finer than the latent.

    Out of memory in a window is not fatal: the window is retried with half the guidance sub-slice,
    then with half the window length (the rest of the video keeps the smaller setting), and
    ``say(message)`` (default: a ``RuntimeWarning``) tells the user. Only a 1-frame window that still
    does not fit raises :class:`SmiteError`.
    """
    config = config or SegmentConfig()
    config.validate()
    embedding.check_backbone(backbone)
    total = source.num_frames
    if total < 1:
        raise InputError("video: has no frames")
    if latents is not None and latents.shape[0] != total:
        raise InputError(f"latents: {latents.shape[0]} frames, but the video has {total}")
    spans = window_spans(total, config.window, config.overlap)
    generator = torch.Generator().manual_seed(config.seed)
    context = build_context(backbone.encode_empty_prompt(), embedding.tokens.to(backbone.device))
    if config.guided and backbone.device.type == "cuda":  # sub-slices no larger than the free memory holds
        work_hw = working_size(backbone, (source.height, source.width), config.size)
        latent_hw = (work_hw[0] // backbone.latent_factor, work_hw[1] // backbone.latent_factor)
        fits = guide_slice(backbone, latent_hw, context, embedding.num_segments, config.guide_slice, embedding.kv)
        config = replace(config, guide_slice=fits) if fits < config.guide_slice else config
    tracker = None
    if config.temporal and config.tracker != "none":
        tracker = make_tracker(config.tracker, config.tracker_checkpoint, device=backbone.device)
    pending: dict[int, tuple[torch.Tensor, float]] = {}
    previous: tuple[tuple[int, int], torch.Tensor] | None = None
    done = 0
    encoded: dict[int, torch.Tensor] = {}  # clean latents of the current window: each frame is encoded once
    i = 0
    while i < len(spans):
        span = spans[i]
        rng_state = generator.get_state()
        out_of_memory = None
        try:
            with flushed_denormals(backbone.device):  # CPU speed; no-op on GPUs
                frames = source.read(*span)
                if latents is not None:
                    window_latents = latents[span[0]:span[1]]
                    require_finite(window_latents, "latents", "frame", first=span[0])
                else:
                    first_new = max([span[0]] + [index + 1 for index in encoded])
                    if first_new < span[1]:
                        size = working_size(backbone, tuple(frames.shape[1:3]), config.size)
                        new = encode_frames(backbone, frames[first_new - span[0]:], size,
                                            batch=encode_batch(backbone, size))
                        encoded.update({first_new + j: z for j, z in enumerate(new)})
                    window_latents = torch.stack([encoded[index] for index in range(*span)])
                carry = None
                if previous is not None and previous[0][1] > span[0]:  # the overlap carries the last window's result
                    carry = previous[1][span[0] - previous[0][0]:span[1] - previous[0][0]]
                was = segment_window(backbone, embedding, frames, config, generator, context, window_latents,
                                     tracker=tracker, carry=carry)
        except Exception as err:  # only out-of-memory is handled; everything else propagates
            if not is_out_of_memory(err):
                raise
            out_of_memory = " ".join(str(err).split())[:120]
        if out_of_memory is not None:  # outside the except block: the failed window's tensors are freed
            frames = window_latents = None
            _free_cached_memory(backbone.device)
            smaller = smaller_config(config, span)
            if smaller is None:
                raise SmiteError(f"out of memory on frame {span[0]} even with 1-frame windows ({out_of_memory}); "
                                 "lower the working size or use another device")
            shrunk = smaller[0].window != config.window
            config, what = smaller
            message = f"out of memory on frames {span[0]}-{span[1] - 1}; retrying with {what}"
            if say is not None:
                say(message)
            else:
                warnings.warn(message, RuntimeWarning, stacklevel=2)
            generator.set_state(rng_state)
            if shrunk:  # this window and the rest of the video: shorter windows
                spans = spans[:i] + [(span[0] + a, span[0] + b) for a, b in
                                     window_spans(total - span[0], config.window, config.overlap)]
            continue
        if latents is None:
            encoded = {index: z for index, z in encoded.items() if i + 1 < len(spans) and index >= spans[i + 1][0]}
        previous = (span, was)
        weights = blend_weights(span, spans[i - 1] if i else None, spans[i + 1] if i + 1 < len(spans) else None)
        for j, index in enumerate(range(*span)):
            acc, wsum = pending.get(index, (0.0, 0.0))
            pending[index] = (acc + weights[j] * was[j], wsum + float(weights[j]))
        finished_upto = spans[i + 1][0] if i + 1 < len(spans) else total
        while done < finished_upto:
            acc, wsum = pending.pop(done)
            yield done, acc / wsum
            done += 1
            if progress:
                progress(done, total)
        i += 1


def segment_frames(backbone: Backbone, embedding: SegmentEmbedding, frames: torch.Tensor,
                   config: SegmentConfig | None = None, progress: Callable[[int, int], None] | None = None,
                   latents: torch.Tensor | None = None, say: Callable[[str], None] | None = None) -> torch.Tensor:
    """WAS ``[T,K,h,w]`` for an in-memory video ``frames [T,H,W,3]`` (0..1); ``say`` as in :func:`segment_stream`."""
    from .video_io import FrameSource

    stream = segment_stream(backbone, embedding, FrameSource.from_tensor(frames), config, progress, latents, say)
    return torch.stack([was for _, was in stream])
