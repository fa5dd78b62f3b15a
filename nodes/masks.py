"""SMITE_MaskToVideo: segments -> MASK batch of one segment, label-map IMAGE, coloured overlay IMAGE."""

from __future__ import annotations

import torch

from smite_core.errors import InputError
from smite_core.io.video_io import overlay

from .labelmaps import ids_to_image
from .wires import SEGMENTS

CHUNK = 16  # frames turned into full-size outputs at a time


class MaskToVideo:
    """Turn SMITE's segments into ComfyUI masks and images, ready for mask nodes and video saving."""

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "segments": (SEGMENTS, {"tooltip": "Output of SMITE Inflated UNet Segment."}),
                "segment": ("STRING", {
                    "default": "1",
                    "tooltip": "Which segment the MASK shows: its name (e.g. wheel), its index (1 = first "
                               "after the background), or 'all' for every non-background segment."}),
                "soft": ("BOOLEAN", {
                    "default": False,
                    "tooltip": "MASK as the segment's probability (0..1, soft edges) instead of its hard label."}),
                "overlay_alpha": ("FLOAT", {
                    "default": 0.5, "min": 0.0, "max": 1.0, "step": 0.05,
                    "tooltip": "Opacity of the segment colours in the overlay."}),
            },
        }

    RETURN_TYPES = ("MASK", "IMAGE", "IMAGE")
    RETURN_NAMES = ("mask", "label_map", "overlay")
    OUTPUT_TOOLTIPS = (
        "MASK batch [T,H,W] of the chosen segment, at the frames' size (for GrowMask, compositing, ...).",
        "Every segment in SMITE's palette colours [T,H,W,3] (background black); SMITE Load References reads it back.",
        "The frames with the segments painted on and a colour key of their names [T,H,W,3], ready for Create "
        "Video / Save Video.",
    )
    FUNCTION = "convert"
    CATEGORY = "SMITE/masks"
    DESCRIPTION = "Converts SMITE segments to a MASK batch for one segment, a label-map video and an overlay video."

    def convert(self, segments, segment="1", soft=False, overlay_alpha=0.5):
        if not 0.0 <= overlay_alpha <= 1.0:
            raise InputError(f"overlay_alpha: must be in 0..1 (got {overlay_alpha})")
        index = segments.segment_index(segment)
        labels = segments.labels
        total = labels.shape[0]
        if soft:
            mask = torch.cat([segments.probabilities(index, s, min(total, s + CHUNK)) for s in range(0, total, CHUNK)])
        elif index is None:
            mask = (labels > 0).to(torch.float32)
        else:
            mask = (labels == index).to(torch.float32)
        label_map = ids_to_image(labels)
        frames = segments.frames
        if tuple(frames.shape[1:3]) != tuple(labels.shape[1:]):
            raise InputError("segments: frames and labels differ in size")
        painted = torch.cat([overlay(frames[s:s + CHUNK].float(), labels[s:s + CHUNK], alpha=float(overlay_alpha),
                                     names=segments.names) for s in range(0, total, CHUNK)])
        return (mask, label_map, painted)


NODE_CLASS_MAPPINGS = {"SMITE_MaskToVideo": MaskToVideo}
NODE_DISPLAY_NAME_MAPPINGS = {"SMITE_MaskToVideo": "SMITE Mask To Video"}
