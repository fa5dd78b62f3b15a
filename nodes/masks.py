"""Segments -> ComfyUI values, one node per output so a graph pays only for what it uses (docs/comfyui.md lists the
bytes per frame): SMITE_MaskToVideo (MASK batch of one segment), SMITE_LabelMapImage (the label map as a palette
IMAGE), SMITE_Overlay (the frames with the segments painted on)."""

from __future__ import annotations

import torch

from smite_core.errors import InputError
from smite_core.io.video_io import overlay

from .labelmaps import ids_to_image
from .wires import SEGMENTS

CHUNK = 16  # frames turned into full-size outputs at a time
SEGMENTS_INPUT = (SEGMENTS, {"tooltip": "Output of SMITE Inflated UNet Segment."})


class MaskToVideo:
    """One segment of every frame as a ComfyUI MASK batch, ready for mask nodes and compositing."""

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "segments": SEGMENTS_INPUT,
                "segment": ("STRING", {
                    "default": "1",
                    "tooltip": "Which segment the MASK shows: its name (e.g. wheel), its index (1 = first "
                               "after the background), or 'all' for every non-background segment."}),
                "soft": ("BOOLEAN", {
                    "default": False,
                    "tooltip": "MASK as the segment's probability (0..1, soft edges) instead of its hard label."}),
            },
        }

    RETURN_TYPES = ("MASK",)
    RETURN_NAMES = ("mask",)
    OUTPUT_TOOLTIPS = ("MASK batch [T,H,W] of the chosen segment, at the frames' size (for GrowMask, compositing, "
                       "...).",)
    FUNCTION = "convert"
    CATEGORY = "SMITE/masks"
    DESCRIPTION = ("A MASK batch of one segment (hard or soft). SMITE Label Map and SMITE Overlay give the images; "
                   "each costs memory only when used.")

    def convert(self, segments, segment="1", soft=False):
        index = segments.segment_index(segment)
        labels = segments.labels
        total = labels.shape[0]
        if soft:
            mask = torch.cat([segments.probabilities(index, s, min(total, s + CHUNK)) for s in range(0, total, CHUNK)])
        elif index is None:
            mask = (labels > 0).to(torch.float32)
        else:
            mask = (labels == index).to(torch.float32)
        return (mask,)


class LabelMapImage:
    """Every segment of every frame in SMITE's palette colours, as an IMAGE batch."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"segments": SEGMENTS_INPUT}}

    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("label_map",)
    OUTPUT_TOOLTIPS = ("Every segment in SMITE's palette colours [T,H,W,3] (background black); SMITE Load References "
                       "reads it back.",)
    FUNCTION = "convert"
    CATEGORY = "SMITE/masks"
    DESCRIPTION = "The label maps as a palette-coloured IMAGE batch (segment i = palette colour i)."

    def convert(self, segments):
        return (ids_to_image(segments.labels),)


class Overlay:
    """The frames with the segments painted on and a colour key of their names, as an IMAGE batch."""

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "segments": SEGMENTS_INPUT,
                "overlay_alpha": ("FLOAT", {"default": 0.5, "min": 0.0, "max": 1.0, "step": 0.05,
                                            "tooltip": "Opacity of the segment colours in the overlay."}),
            },
        }

    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("overlay",)
    OUTPUT_TOOLTIPS = ("The frames with the segments painted on and a colour key of their names [T,H,W,3], ready for "
                       "Create Video / Save Video.",)
    FUNCTION = "paint"
    CATEGORY = "SMITE/masks"
    DESCRIPTION = "Paints the segments over the frames (palette colours, boundaries, a colour key)."

    def paint(self, segments, overlay_alpha=0.5):
        if not 0.0 <= overlay_alpha <= 1.0:
            raise InputError(f"overlay_alpha: must be in 0..1 (got {overlay_alpha})")
        labels, frames = segments.labels, segments.frames
        if tuple(frames.shape[1:3]) != tuple(labels.shape[1:]):
            raise InputError("segments: frames and labels differ in size")
        total = labels.shape[0]
        return (torch.cat([overlay(frames[s:s + CHUNK].float(), labels[s:s + CHUNK], alpha=float(overlay_alpha),
                                   names=segments.names) for s in range(0, total, CHUNK)]),)


NODE_CLASS_MAPPINGS = {"SMITE_MaskToVideo": MaskToVideo, "SMITE_LabelMapImage": LabelMapImage, "SMITE_Overlay": Overlay}
NODE_DISPLAY_NAME_MAPPINGS = {"SMITE_MaskToVideo": "SMITE Mask To Video", "SMITE_LabelMapImage": "SMITE Label Map",
                              "SMITE_Overlay": "SMITE Overlay"}
