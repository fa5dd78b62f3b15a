"""Segmentation: a video, window by window, through inversion -> inflated UNet -> WAS -> masks.

Frames are read lazily per window (16 frames, overlap 8 by default; the last window is shifted
back to be full length; videos shorter than a window are one window). Frames covered by two
windows get a cross-faded blend of both windows' WAS, so labels do not jump at window
boundaries. WAS maps stay at latent resolution until a frame is finished; only then is it handed
to the caller, who upsamples it to the frame's own size (``was.labels_from_was``). Memory is
therefore flat in the video's length.

One window (:class:`WindowRunner`, docs/method.md 6.3): the reference pass noises the window's clean
latent once at ``t ~ U(timesteps)`` and reads the WAS of one inflated-UNet forward. With the
temporal stages on (the default), the window is then tracked (``tracking``), the noisy latent
takes ``guide_steps`` DDIM steps of one timestep each from the reference pass's own ``z_t`` and
``t`` (a fresh scheduler per call, never the shared one, and every energy evaluated at the
timestep of the latent it is applied to: defect D12); after each step the latent is optimised
against ``E_track`` (voted labels) and ``E_reg`` (low-pass DCT against the reference WAS, whose
overlap frames are the previous window's final WAS), and the final WAS is voted along the tracks
once more (``vote_output``). ``inflate=False`` is the paper's per-frame Baseline-I: no inflation,
tracking, voting or guidance.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, replace
from typing import Callable, Iterator

import torch

from ..checks import require_finite
from ..errors import InputError, SmiteError, reason
from ..model.backbone import Backbone
from ..model.memory_budget import encode_batch, flushed_denormals
from ..model.unet_pass import unet_forward
from ..settings import MAX_SEED, check_ranges, check_side, ranged
from ..temporal.tracking import DEFAULT_TRACKER, NO_TRACKING, TRACKERS, Tracker, Tracks, make_tracker
from ..temporal.voting import DEFAULT_WINDOW, WINDOW_RANGE, vote_tracks
from .embedding import SegmentEmbedding, build_context
from .guidance import GuidanceEnergy, guide_latents, guide_slice, step_size
from .inversion import DEFAULT_TIMESTEPS, add_noise, check_timesteps, encode_frames, sample_timestep, working_size
from .profiling import NO_PROFILER, Profiler
from .was import was_inference

SEGMENT_TRACKERS = (*TRACKERS, NO_TRACKING)


@dataclass
class SegmentConfig:
    """Segmentation settings: the one source of their defaults (the CLI and the nodes read them here).

    ``inflate=False`` is per-frame segmentation (the paper's Baseline-I: no inflation, tracking,
    voting or guidance). ``window``/``overlap``: frames per inflated-UNet window and frames shared by
    consecutive windows. ``size``: working size (None: the backbone's segmentation resolution).

    Temporal consistency: ``tracker`` (``flow``, ``cotracker`` with ``tracker_checkpoint``, ``static``:
    vote at the same pixel, or ``none``: no tracking and no vote) drives the vote (``vote_window``
    frames, ``vote_output``) and ``E_track``; ``track_weight``/``lowpass_weight`` weigh
    ``E_track``/``E_reg`` (both 0: no latent update); ``guide_steps`` guided timesteps of
    ``guide_iters`` Adam iterations on ``guide_slice``-frame sub-slices with learning rate
    ``guide_lr`` (times ``beta_t / (1 - beta_t)``); ``E_reg`` keeps spatial DCT frequencies below
    ``lowpass_cutoff`` (``lowpass_first_cutoff`` at the first guided step). The defaults were checked
    on the procedural suite (docs/experiments.md).
    """

    window: int = ranged(16, 1, 256)
    overlap: int = ranged(8, 0, 255)
    inflate: bool = True
    pool_norm: bool = True  # frame-pooled GroupNorm in the inflated UNet
    size: int | tuple[int, int] | None = None  # working size; None = the backbone's segmentation resolution
    timesteps: tuple[int, int] = DEFAULT_TIMESTEPS
    seed: int = ranged(0, 0, MAX_SEED)
    tracker: str = DEFAULT_TRACKER
    track_weight: float = ranged(0.1, 0.0, 100.0)
    lowpass_weight: float = ranged(8.0, 0.0, 1000.0)
    vote_window: int = ranged(DEFAULT_WINDOW, *WINDOW_RANGE)
    vote_output: bool = True
    lowpass_cutoff: float = ranged(0.4, 0.01, 1.0)
    lowpass_first_cutoff: float = ranged(0.999, 0.01, 1.0)
    guide_steps: int = ranged(1, 0, 50)
    guide_iters: int = ranged(1, 1, 100)
    guide_slice: int = ranged(4, 1, 256)
    guide_lr: float = ranged(10.0, 0.0, 10000.0)
    tracker_checkpoint: str | None = None

    @property
    def temporal(self) -> bool:
        """Whether any temporal stage (tracking, voting, guidance) runs."""
        return self.inflate and (self.tracker != NO_TRACKING or self.guided)

    @property
    def guided(self) -> bool:
        """Whether the latent is optimised (a non-zero weight and at least one guided step)."""
        return self.inflate and self.guide_steps > 0 and (self.lowpass_weight > 0 or
                                                          (self.track_weight > 0 and self.tracker != NO_TRACKING))

    def validate(self, backbone: Backbone | None = None) -> None:
        """Refuse a setting outside its range (one line naming it); with ``backbone`` also the working size."""
        check_ranges(self)
        if self.overlap >= self.window:
            raise InputError(f"overlap: must be between 0 and window-1 = {self.window - 1} (got {self.overlap})")
        if self.tracker not in SEGMENT_TRACKERS:
            raise InputError(f"tracker: {self.tracker!r} is not one of {', '.join(SEGMENT_TRACKERS)}")
        check_timesteps(self.timesteps)
        if self.tracker == "cotracker" and not self.tracker_checkpoint:
            raise InputError("tracker-checkpoint: the cotracker tracker needs a checkpoint file or models folder")
        if backbone is not None:
            check_side(self.size, backbone.size_multiple)


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


def blend_weights(span: tuple[int, int], previous: tuple[int, int] | None,
                  following: tuple[int, int] | None) -> torch.Tensor:
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


# ----------------------------------------------------------------------------- one window


@dataclass
class ReferencePass:
    """The plain forward of a window: timestep ``t``, noisy latent ``[F,4,h,w]``, model output, WAS (CPU)."""

    t: int
    noisy: torch.Tensor
    out: torch.Tensor
    was: torch.Tensor


def _carry_on() -> None:
    """The default ``interrupt`` hook: never stops."""


@dataclass
class WindowRunner:
    """What every window of one video needs, built once (:meth:`build`): the backbone, the embedding and
    its conditioning ``context [1,77,D]``, the settings, the seeded noise ``generator`` shared by the
    windows in order, the tracker (None when nothing is tracked), the stage ``profiler`` and the
    ``interrupt()`` hook called before every UNet pass and tracker call (it stops the work by raising)."""

    backbone: Backbone
    embedding: SegmentEmbedding
    config: SegmentConfig
    context: torch.Tensor
    generator: torch.Generator
    tracker: Tracker | None = None
    profiler: Profiler = NO_PROFILER
    interrupt: Callable[[], None] = _carry_on

    @classmethod
    def build(cls, backbone: Backbone, embedding: SegmentEmbedding, config: SegmentConfig,
              generator: torch.Generator | None = None, frame_hw: tuple[int, int] | None = None,
              profiler: Profiler | None = None, tracker: Tracker | None = None,
              interrupt: Callable[[], None] | None = None) -> "WindowRunner":
        """A runner for ``config`` (validated by the caller). ``generator``: default seeded with
        ``config.seed``. ``frame_hw``: the video's frame size; on CUDA the guidance sub-slice is then
        lowered to what the free memory holds (``guidance.guide_slice``)."""
        context = build_context(backbone.encode_empty_prompt(), embedding.tokens.to(backbone.device))
        if frame_hw is not None and config.guided and backbone.device.type == "cuda":
            work_hw = working_size(backbone, frame_hw, config.size)
            latent_hw = (work_hw[0] // backbone.latent_factor, work_hw[1] // backbone.latent_factor)
            fits = guide_slice(backbone, latent_hw, context, embedding.num_segments, config.guide_slice, embedding.kv)
            config = replace(config, guide_slice=fits) if fits < config.guide_slice else config
        if tracker is None and config.temporal and config.tracker != NO_TRACKING:
            tracker = make_tracker(config.tracker, config.tracker_checkpoint, device=backbone.device)
        return cls(backbone, embedding, config, context,
                   generator if generator is not None else torch.Generator().manual_seed(config.seed),
                   tracker, profiler or NO_PROFILER, interrupt or _carry_on)

    def work_size(self, frame_hw: tuple[int, int]) -> tuple[int, int]:
        """The working ``(H, W)`` frames of size ``frame_hw`` are resized to."""
        return working_size(self.backbone, frame_hw, self.config.size)

    def encode(self, frames: torch.Tensor) -> torch.Tensor:
        """Clean VAE latents ``[n,4,h,w]`` of ``frames [n,H,W,3]`` (0..1) at the working size."""
        size = self.work_size(tuple(frames.shape[1:3]))
        with self.profiler.stage("vae_encode", items=frames.shape[0]):
            return encode_frames(self.backbone, frames, size, batch=encode_batch(self.backbone, size))

    def forward(self, latents: torch.Tensor, t: int) -> tuple[torch.Tensor, torch.Tensor]:
        """One (inflated) UNet pass over ``latents [F,4,h,w]`` at ``t``: model output and inference WAS."""
        config = self.config
        self.interrupt()
        with self.profiler.stage("unet"):
            out, record = unet_forward(self.backbone, latents, t, self.context, self.embedding.num_segments,
                                       kv=self.embedding.kv, inflate=config.inflate,
                                       pool_norm=config.pool_norm and config.inflate)
        with self.profiler.stage("was"):
            return out, was_inference(record)

    @torch.no_grad()
    def run(self, frames: torch.Tensor, latents: torch.Tensor | None = None,
            carry: torch.Tensor | None = None) -> torch.Tensor:
        """WAS ``[F,K,h,w]`` (latent resolution, CPU float32) of one window of frames ``[F,H,W,3]`` (0..1).

        ``latents``: the window's clean VAE latents ``[F,4,h,w]`` if already encoded, else the frames
        are encoded here. ``carry``: the previous window's final WAS ``[n,K,h,w]`` of this window's
        first ``n`` frames; it replaces their reference WAS (the low-pass target and the first vote).
        """
        reference = self.reference_pass(frames, latents)
        if not self.config.temporal:
            return reference.was
        return self.temporal_pass(frames, reference, carry)

    def reference_pass(self, frames: torch.Tensor, latents: torch.Tensor | None = None) -> ReferencePass:
        """Encode (unless ``latents``), noise once at ``t ~ U(config.timesteps)`` and run the UNet."""
        if latents is None:
            latents = self.encode(frames)
        t = sample_timestep(self.generator, self.config.timesteps)
        noisy = add_noise(self.backbone, latents.to(self.backbone.device, self.backbone.dtype), t, self.generator)
        out, was = self.forward(noisy, t)
        return ReferencePass(t, noisy, out, was.float().cpu())

    def temporal_pass(self, frames: torch.Tensor, ref: ReferencePass,
                      carry: torch.Tensor | None = None) -> torch.Tensor:
        """Tracking, guided denoising steps and the output vote after :meth:`reference_pass` -> WAS (CPU)."""
        reference = ref.was.clone()
        if carry is not None and len(carry):
            reference[:len(carry)] = carry.to(reference)
        tracks = self.track(frames, tuple(reference.shape[-2:]))
        current = self.guided_steps(ref, reference, tracks) if self.config.guided else reference
        if tracks is not None and self.config.vote_output:
            current = self.vote(current, tracks)
        return current

    def track(self, frames: torch.Tensor, grid_hw: tuple[int, int]) -> Tracks | None:
        """Dense tracks of the window's grid cells, or None when nothing is tracked (tracker ``none``:
        :meth:`build` made no tracker)."""
        if self.tracker is None:
            return None
        self.interrupt()
        with self.profiler.stage("tracking"):
            return self.tracker.track(frames, grid_hw, max_offset=self.config.vote_window // 2)

    def vote(self, maps: torch.Tensor, tracks: Tracks) -> torch.Tensor:
        with self.profiler.stage("voting"):
            return vote_tracks(maps, tracks, self.config.vote_window)

    def guided_steps(self, ref: ReferencePass, reference: torch.Tensor, tracks: Tracks | None) -> torch.Tensor:
        """``guide_steps`` DDIM steps from the reference pass's ``z_t``, each followed by the latent update
        and a fresh UNet pass; returns the last pass's WAS (CPU)."""
        from diffusers import DDIMScheduler

        config = self.config
        scheduler = DDIMScheduler.from_config(self.backbone.scheduler.config)  # a copy: never the shared one (D12)
        scheduler.set_timesteps(scheduler.config.num_train_timesteps)
        was_of = lambda z, t: self.forward(z, t)[1]  # noqa: E731 - the guidance's differentiable maps
        z, out, t = ref.noisy, ref.out, ref.t
        current = reference
        for g in range(min(config.guide_steps, t - 1)):
            z = scheduler.step(out, t, z, eta=0.0).prev_sample  # one DDIM step: t -> t-1
            t -= 1
            labels = None
            if tracks is not None and config.track_weight > 0:
                labels = self.vote(current, tracks).argmax(1)
            energy = GuidanceEnergy(config.track_weight, config.lowpass_weight,
                                    config.lowpass_first_cutoff if g == 0 else config.lowpass_cutoff)
            with self.profiler.stage("guidance_backward"):
                z = guide_latents(was_of, z, t, reference.to(self.backbone.device), labels, energy,
                                  step=step_size(scheduler, t, config.guide_lr), iterations=config.guide_iters,
                                  sub_slice=config.guide_slice)
            out, was = self.forward(z, t)
            current = was.float().cpu()
            del was
        return current


def segment_window(backbone: Backbone, embedding: SegmentEmbedding, frames: torch.Tensor, config: SegmentConfig,
                   generator: torch.Generator, latents: torch.Tensor | None = None,
                   carry: torch.Tensor | None = None) -> torch.Tensor:
    """WAS ``[F,K,h,w]`` of a single window (:meth:`WindowRunner.run`); for a video use :func:`segment_stream`."""
    config.validate(backbone)
    return WindowRunner.build(backbone, embedding, config, generator).run(frames, latents, carry)


# ----------------------------------------------------------------------------- a video


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


class _WindowLatents:
    """Clean latents of each window: sliced from the given video latents ``[T,4,h,w]``, or encoded as the
    windows are read, each frame once (the frames the next window shares are kept, no others)."""

    def __init__(self, runner: WindowRunner, latents: torch.Tensor | None):
        self.runner, self.latents, self.encoded = runner, latents, {}

    def of(self, span: tuple[int, int], frames: torch.Tensor) -> torch.Tensor:
        if self.latents is not None:
            window = self.latents[span[0]:span[1]]
            require_finite(window, "latents", "frame", first=span[0])
            return window
        first_new = max([span[0]] + [index + 1 for index in self.encoded])
        if first_new < span[1]:
            new = self.runner.encode(frames[first_new - span[0]:])
            self.encoded.update({first_new + j: z for j, z in enumerate(new)})
        return torch.stack([self.encoded[index] for index in range(*span)])

    def keep_from(self, start: int | None) -> None:
        """Forget the latents of frames before ``start`` (None: all)."""
        self.encoded = {i: z for i, z in self.encoded.items() if start is not None and i >= start}


class _CrossFade:
    """Weighted sums of the windows' WAS per frame, handed out once no later window covers the frame."""

    def __init__(self):
        self.pending: dict[int, tuple[torch.Tensor, float]] = {}
        self.done = 0

    def add(self, span: tuple[int, int], was: torch.Tensor, weights: torch.Tensor) -> None:
        for j, index in enumerate(range(*span)):
            acc, wsum = self.pending.get(index, (0.0, 0.0))
            self.pending[index] = (acc + weights[j] * was[j], wsum + float(weights[j]))

    def finished(self, upto: int) -> Iterator[tuple[int, torch.Tensor]]:
        while self.done < upto:
            acc, wsum = self.pending.pop(self.done)
            yield self.done, acc / wsum
            self.done += 1


def segment_stream(backbone: Backbone, embedding: SegmentEmbedding, source, config: SegmentConfig | None = None,
                   progress: Callable[[int, int], None] | None = None, latents: torch.Tensor | None = None,
                   say: Callable[[str], None] | None = None, profiler: Profiler | None = None,
                   interrupt: Callable[[], None] | None = None) -> Iterator[tuple[int, torch.Tensor]]:
    """Yield ``(frame_index, WAS [K,h,w])`` for every frame of ``source`` in order, window by window.

    The settings, the embedding's backbone and ``latents`` are checked when this is called, before
    anything is computed; the windows are computed as the caller iterates.

    ``source`` is a ``video_io.FrameSource`` (anything with ``num_frames``, ``height``, ``width`` and
    ``read(start, stop)``). ``latents``: optional clean VAE latents ``[T,4,h,w]`` of the whole video
    (from ``InvertVideo``); without them each window's frames are encoded as they are read.
    ``progress(done_frames, total_frames)`` is called as frames are finished. Each window after the
    first gets the previous window's result for the frames they share (``carry``). ``profiler``
    receives the stages (``profiling``); ``interrupt()`` is called before every UNet pass (guidance
    iterations included) and stops the work by raising (ComfyUI's Cancel).

    Out of memory in a window is not fatal: the window is retried with half the guidance sub-slice,
    then with half the window length (the rest of the video keeps the smaller setting), and
    ``say(message)`` (default: a ``RuntimeWarning``) tells the user; it also hears that an embedding
    learned by SMITE before 0.2 is ``outdated``. Only a 1-frame window that still
    does not fit raises :class:`SmiteError`.
    """
    config = config or SegmentConfig()
    config.validate(backbone)
    embedding.check_backbone(backbone)
    if embedding.outdated:
        _tell(say, embedding.outdated)
    total = source.num_frames
    if total < 1:
        raise InputError("video: has no frames")
    if latents is not None and latents.shape[0] != total:
        raise InputError(f"latents: {latents.shape[0]} frames, but the video has {total}")
    runner = WindowRunner.build(backbone, embedding, config, frame_hw=(source.height, source.width),
                                profiler=profiler, interrupt=interrupt)
    return _windows(runner, source, latents, progress, say)  # checked now, computed as the caller iterates


def _windows(runner: WindowRunner, source, latents: torch.Tensor | None, progress: Callable[[int, int], None] | None,
             say: Callable[[str], None] | None) -> Iterator[tuple[int, torch.Tensor]]:
    """The generator behind :func:`segment_stream`, once its inputs are checked."""
    total, device = source.num_frames, runner.backbone.device
    spans = window_spans(total, runner.config.window, runner.config.overlap)
    window_latents, fade = _WindowLatents(runner, latents), _CrossFade()
    previous: tuple[tuple[int, int], torch.Tensor] | None = None
    i = 0
    while i < len(spans):
        span = spans[i]
        rng_state = runner.generator.get_state()
        carry = None
        if previous is not None and previous[0][1] > span[0]:  # the overlap carries the last window's result
            carry = previous[1][span[0] - previous[0][0]:span[1] - previous[0][0]]
        out_of_memory = None
        try:
            with flushed_denormals(device):  # CPU speed; no-op on GPUs
                with runner.profiler.stage("decode"):
                    frames = source.read(*span)
                was = runner.run(frames, window_latents.of(span, frames), carry)
        except Exception as err:  # only out-of-memory is handled; everything else propagates
            if not is_out_of_memory(err):
                raise
            out_of_memory = reason(err, 120)
        if out_of_memory is not None:  # outside the except block: the failed window's tensors are freed
            frames = None
            runner, spans = _retry_smaller(runner, spans, i, total, out_of_memory, say)
            runner.generator.set_state(rng_state)
            continue
        following = spans[i + 1] if i + 1 < len(spans) else None
        if latents is None:
            window_latents.keep_from(following[0] if following else None)
        previous = (span, was)
        fade.add(span, was, blend_weights(span, spans[i - 1] if i else None, following))
        for index, maps in fade.finished(following[0] if following else total):
            yield index, maps
            if progress:
                progress(index + 1, total)
        i += 1


def _tell(say: Callable[[str], None] | None, message: str) -> None:
    """``say(message)``, or a ``RuntimeWarning`` when there is no ``say``."""
    if say is not None:
        say(message)
    else:
        warnings.warn(message, RuntimeWarning, stacklevel=3)


def _retry_smaller(runner: WindowRunner, spans: list[tuple[int, int]], i: int, total: int, reason: str,
                   say: Callable[[str], None] | None) -> tuple[WindowRunner, list[tuple[int, int]]]:
    """After running out of memory on ``spans[i]``: a runner with the next smaller setting and the spans
    left to do (this window and the rest in shorter windows when the window shrank); tells ``say``."""
    span = spans[i]
    _free_cached_memory(runner.backbone.device)
    smaller = smaller_config(runner.config, span)
    if smaller is None:
        raise SmiteError(f"out of memory on frame {span[0]} even with 1-frame windows ({reason}); "
                         "lower the working size or use another device")
    config, what = smaller
    _tell(say, f"out of memory on frames {span[0]}-{span[1] - 1}; retrying with {what}")
    if config.window != runner.config.window:  # this window and the rest of the video: shorter windows
        spans = spans[:i] + [(span[0] + a, span[0] + b)
                             for a, b in window_spans(total - span[0], config.window, config.overlap)]
    return replace(runner, config=config), spans


def segment_frames(backbone: Backbone, embedding: SegmentEmbedding, frames: torch.Tensor,
                   config: SegmentConfig | None = None, progress: Callable[[int, int], None] | None = None,
                   latents: torch.Tensor | None = None, say: Callable[[str], None] | None = None,
                   interrupt: Callable[[], None] | None = None) -> torch.Tensor:
    """WAS ``[T,K,h,w]`` for an in-memory video ``frames [T,H,W,3]`` (0..1); the rest as in :func:`segment_stream`."""
    from ..io.video_io import FrameSource

    stream = segment_stream(backbone, embedding, FrameSource.from_tensor(frames), config, progress, latents, say,
                            interrupt=interrupt)
    return torch.stack([was for _, was in stream])
