"""SMITE_TrackVote and SMITE_LowPassGuide: the temporal guides, as settings for InflatedUNetSegment.

Both act inside InflatedUNetSegment's denoising loop (the method's guidance, not post-processing).
TrackVote also works on its own: with frames and a MASK video connected it de-flickers the masks by
voting along point tracks (``smite_core.temporal.voting.vote_video``).
"""

from __future__ import annotations

import logging
import os

import torch

from smite_core.checks import require_finite
from smite_core.errors import InputError
from smite_core.method.segment import SegmentConfig
from smite_core.settings import widget
from smite_core.temporal.tracking import DEFAULT_TRACKER, TRACKERS, Tracker, make_tracker

from . import host
from .segment import frames_of
from .wires import LOW_PASS, TRACK_VOTE, LowPassSettings, TrackVoteSettings

log = logging.getLogger(__name__)

DEFAULTS = SegmentConfig()  # the widgets' defaults: the library's segmentation defaults
NO_MASKS = ("SMITE TrackVote: its masks output is empty when the node is used as a guide; connect frames and masks "
            "to de-flicker a mask video")


class _Interruptible(Tracker):
    """A tracker that stops at ComfyUI's Cancel before each tracker call (the bar moves after each)."""

    def __init__(self, inner: Tracker):
        self.inner, self.name = inner, inner.name

    def track(self, *args, **kwargs):
        host.check_interrupt()
        return self.inner.track(*args, **kwargs)


def cotracker_checkpoint() -> str | None:
    """The first registered ``models/cotracker`` folder holding a CoTracker3 checkpoint (or None)."""
    from smite_core.temporal.tracking import COTRACKER_FILES

    for folder in host.folder_paths_of(host.COTRACKER_FOLDER):
        for name in COTRACKER_FILES:
            if os.path.isfile(os.path.join(folder, name)):
                return folder
    return None


def _masks_of(masks) -> torch.Tensor:
    masks = torch.as_tensor(masks)
    if masks.ndim == 2:
        masks = masks[None]
    if masks.ndim != 3 or min(masks.shape) < 1:
        raise InputError(f"masks: expected a MASK batch [T,H,W], got shape {tuple(masks.shape)}")
    require_finite(masks, "masks", "frame")
    return masks.float()


class TrackVote:
    """Tracking + voting: the temporal-consistency guide of SMITE, or a stand-alone mask de-flickerer."""

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "tracker": (list(TRACKERS), {
                    "default": DEFAULT_TRACKER,
                    "tooltip": "Point tracker. " + " ".join(f"{name}: {meaning}." for name, meaning in TRACKERS.items())
                               + " A CoTracker3 checkpoint goes in ComfyUI/models/cotracker."}),
                "track_weight": ("FLOAT", {
                    **widget(SegmentConfig, "track_weight"), "step": 0.01,
                    "tooltip": "Weight of the tracking energy that pulls the latent towards the voted labels during "
                               "denoising. 0: only vote the maps (no latent update)."}),
                "vote_window": ("INT", {
                    **widget(SegmentConfig, "vote_window"),
                    "tooltip": f"Frames voted over around each frame (the method uses {DEFAULTS.vote_window})."}),
                "vote_output": ("BOOLEAN", {
                    "default": DEFAULTS.vote_output,
                    "tooltip": "Vote the final maps once more along the tracks (less flicker)."}),
            },
            "optional": {
                "frames": ("IMAGE", {"tooltip": "Stand-alone use: the video frames the masks belong to (drive the "
                                                "tracker)."}),
                "masks": ("MASK", {"tooltip": "Stand-alone use: a mask video [T,H,W] from any segmenter to "
                                              "de-flicker (> 0.5 is inside)."}),
            },
        }

    RETURN_TYPES = (TRACK_VOTE, "MASK")
    RETURN_NAMES = ("track_vote", "masks")
    OUTPUT_TOOLTIPS = ("The guide, for InflatedUNetSegment's track_vote input.",
                       "Stand-alone use: the de-flickered masks [T,H,W]. Only with frames and masks connected; "
                       "otherwise a node using it stops with a message saying so.")
    FUNCTION = "run"
    CATEGORY = "SMITE/guides"
    DESCRIPTION = ("Temporal voting along point tracks. Connected to InflatedUNetSegment it guides the denoising "
                   "loop; with frames + masks connected it de-flickers any mask video on its own.")

    def run(self, tracker=DEFAULT_TRACKER, track_weight=DEFAULTS.track_weight, vote_window=DEFAULTS.vote_window,
            vote_output=DEFAULTS.vote_output, frames=None, masks=None):
        if tracker not in TRACKERS:
            raise InputError(f"tracker: {tracker!r} is not one of {', '.join(TRACKERS)}")
        SegmentConfig(track_weight=float(track_weight), vote_window=int(vote_window)).validate()  # the ranges
        checkpoint = None
        if tracker == "cotracker":
            checkpoint = cotracker_checkpoint()
            if checkpoint is None:
                folders = ", ".join(host.folder_paths_of(host.COTRACKER_FOLDER)) or "ComfyUI/models/cotracker"
                raise InputError(f"cotracker: no CoTracker3 checkpoint (scaled_offline.pth or a .safetensors copy) in "
                                 f"{folders}; it is never downloaded (CC BY-NC): put it there yourself, or use the "
                                 "flow tracker")
        guide = TrackVoteSettings(tracker=tracker, track_weight=float(track_weight), vote_window=int(vote_window),
                               vote_output=bool(vote_output), tracker_checkpoint=checkpoint)
        if frames is None and masks is None:  # a guide: no mask video to give (a node using it stops and says why)
            return (guide, host.blocked_output(NO_MASKS))
        if frames is None or masks is None:
            raise InputError("TrackVote: to de-flicker on its own connect both frames and masks")
        return (guide, self.deflicker(frames, masks, guide))

    @staticmethod
    def deflicker(frames, masks, guide: TrackVoteSettings) -> torch.Tensor:
        try:
            from smite_core.temporal.voting import vote_video
        except ImportError as exc:
            raise InputError("TrackVote: this smite_core has no temporal voting (smite_core.temporal.voting.vote_video); "
                             "update the pack") from exc
        frames = frames_of(frames, "frames")
        masks = _masks_of(masks)
        if masks.shape[0] != frames.shape[0]:
            raise InputError(f"masks: {masks.shape[0]} masks for {frames.shape[0]} frames")
        labels = (masks > 0.5).to(torch.int64)
        if int(labels.max()) == 0:
            return labels.float()
        report = host.progress(frames.shape[0])  # moves after every tracker call (16 frames)
        tracker = _Interruptible(make_tracker(guide.tracker, guide.tracker_checkpoint))
        voted = vote_video(frames, labels, tracker=tracker, window=guide.vote_window, progress=report)
        return (voted > 0).to(torch.float32)


class LowPassGuide:
    """The low-pass regulariser of SMITE's guidance: keeps the first pass's coarse layout while guiding."""

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "lowpass_weight": ("FLOAT", {
                    **widget(SegmentConfig, "lowpass_weight"), "step": 0.1,
                    "tooltip": "Weight of the low-pass energy (3-D DCT of the maps against the first pass). 0: off."}),
                "lowpass_cutoff": ("FLOAT", {
                    **widget(SegmentConfig, "lowpass_cutoff"), "step": 0.01,
                    "tooltip": "Share of the spatial frequencies kept (0.4 = the lowest 40 % of rows and columns)."}),
                "first_step_cutoff": ("FLOAT", {
                    **widget(SegmentConfig, "lowpass_first_cutoff"), "step": 0.001,
                    "tooltip": "Cutoff at the first guided step (almost everything kept, as in the method)."}),
            },
        }

    RETURN_TYPES = (LOW_PASS,)
    RETURN_NAMES = ("low_pass",)
    OUTPUT_TOOLTIPS = ("The guide, for InflatedUNetSegment's low_pass input.",)
    FUNCTION = "run"
    CATEGORY = "SMITE/guides"
    DESCRIPTION = "Low-pass regulariser settings for InflatedUNetSegment's guided denoising."

    def run(self, lowpass_weight=DEFAULTS.lowpass_weight, lowpass_cutoff=DEFAULTS.lowpass_cutoff,
            first_step_cutoff=DEFAULTS.lowpass_first_cutoff):
        SegmentConfig(lowpass_weight=float(lowpass_weight), lowpass_cutoff=float(lowpass_cutoff),
                      lowpass_first_cutoff=float(first_step_cutoff)).validate()  # the library's ranges
        return (LowPassSettings(lowpass_weight=float(lowpass_weight), lowpass_cutoff=float(lowpass_cutoff),
                             lowpass_first_cutoff=float(first_step_cutoff)),)


NODE_CLASS_MAPPINGS = {
    "SMITE_TrackVote": TrackVote,
    "SMITE_LowPassGuide": LowPassGuide,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "SMITE_TrackVote": "SMITE TrackVote",
    "SMITE_LowPassGuide": "SMITE LowPassGuide",
}
