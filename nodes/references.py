"""SMITE_LoadReferences: annotated reference images -> SMITE references."""

from __future__ import annotations

import logging
import os

import torch
import torch.nn.functional as F

from smite_core.errors import InputError
from smite_core.io.references import (
    ReferenceSet,
    load_reference_folder,
    reference_set_from_label_maps,
    reference_set_from_segment_masks,
)
from smite_core.io.video_io import overlay

from .labelmaps import image_to_ids
from .wires import REFERENCES

log = logging.getLogger(__name__)

MASK_SLOTS = 8


def parse_names(text: str) -> list[str]:
    """``"hair, skin; eyes"`` or one name per line -> ``["hair", "skin", "eyes"]``."""
    parts = [p.strip() for chunk in str(text or "").splitlines() for p in chunk.replace(";", ",").split(",")]
    return [p for p in parts if p]


def preview(references: ReferenceSet) -> torch.Tensor:
    """The references with their segments painted on, as one IMAGE batch at the first image's size."""
    h, w = references.images[0].shape[:2]
    out = []
    for image, labels in zip(references.images, references.labels):
        painted = overlay(image[None], labels[None])[0]
        if tuple(painted.shape[:2]) != (h, w):
            painted = F.interpolate(painted.permute(2, 0, 1)[None], size=(h, w), mode="bilinear",
                                    align_corners=False)[0].permute(1, 2, 0)
        out.append(painted)
    return torch.stack(out)


class LoadReferences:
    """Reference images and their annotation: one MASK per segment, a label-map image, or a folder."""

    @classmethod
    def INPUT_TYPES(cls):
        optional = {
            "images": ("IMAGE", {"tooltip": "Reference image batch [N,H,W,3] (1-10 images is typical). "
                                            "Not needed when a folder is given."}),
            "label_map": ("IMAGE", {"tooltip": "Label map(s) for the images, same size: SMITE palette colours, "
                                               "greyscale ids (value = segment id) or any colour coding (each "
                                               "non-black colour a segment, in sorted RGB order). Use this or the "
                                               "masks."}),
        }
        for i in range(1, MASK_SLOTS + 1):
            optional[f"mask_{i}"] = ("MASK", {"tooltip": f"Mask of segment {i} for every reference image "
                                                          "([N,H,W], > 0.5 is inside). Smaller masks win where masks "
                                                          "overlap."})
        optional["folder"] = ("STRING", {
            "default": "",
            "tooltip": "Instead of images: a folder in the CLI layout (images/, labels/, optional segments.json)."})
        return {
            "required": {
                "segment_names": ("STRING", {
                    "default": "",
                    "tooltip": "Segment names in id order, comma separated (mask_1, mask_2, ... or label ids 1, "
                               "2, ...). Empty: segment1, segment2, ... (a folder's segments.json is used if "
                               "present)."}),
            },
            "optional": optional,
        }

    RETURN_TYPES = (REFERENCES, "IMAGE")
    RETURN_NAMES = ("references", "preview")
    OUTPUT_TOOLTIPS = ("The annotated references, for LearnSegmentEmbedding.",
                       "The reference images with their segments painted on, to check the annotation.")
    FUNCTION = "load"
    CATEGORY = "SMITE/references"
    DESCRIPTION = ("Reference images with the parts you want, at any granularity: give one MASK per segment, a "
                   "label-map image, or a folder in the CLI layout.")

    @classmethod
    def VALIDATE_INPUTS(cls, folder=""):
        if folder and str(folder).strip() and not os.path.isdir(str(folder).strip()):
            return f"folder: {folder} does not exist"
        return True

    def load(self, segment_names="", images=None, label_map=None, folder="", **masks):
        names = parse_names(segment_names)
        given_masks = [masks[f"mask_{i}"] for i in range(1, MASK_SLOTS + 1) if masks.get(f"mask_{i}") is not None]
        unknown = sorted(set(masks) - {f"mask_{i}" for i in range(1, MASK_SLOTS + 1)})
        if unknown:
            raise InputError(f"LoadReferences: unknown inputs {', '.join(unknown)}")
        folder = str(folder or "").strip()
        if folder:
            if images is not None or label_map is not None or given_masks:
                raise InputError("LoadReferences: give either a folder or images with masks/label map, not both")
            references = load_reference_folder(folder)
            for note in references.notes:
                log.info("SMITE: %s", note)
            if names:
                from smite_core.io.references import complete_names

                references = ReferenceSet(references.images, references.labels,
                                          complete_names(names, references.num_segments), references.files,
                                          references.notes)
            return (references, preview(references))
        if images is None:
            raise InputError("LoadReferences: connect the reference images (or give a folder)")
        if label_map is not None and given_masks:
            raise InputError("LoadReferences: connect either a label map or segment masks, not both")
        if label_map is not None:
            notes: list[str] = []
            ids = image_to_ids(label_map, notes=notes)
            for note in notes:
                log.info("SMITE: %s", note)
            if ids.shape[0] == 1 and images.shape[0] > 1:
                raise InputError(f"label_map: 1 label map for {images.shape[0]} images; give one per image")
            if tuple(ids.shape[1:]) != tuple(images.shape[1:3]):
                raise InputError(f"label_map: size {ids.shape[2]}x{ids.shape[1]} differs from the images "
                                 f"({images.shape[2]}x{images.shape[1]})")
            references = reference_set_from_label_maps(images, ids, names)
        elif given_masks:
            given_masks = [m[None] if m.ndim == 2 else m for m in given_masks]
            references = reference_set_from_segment_masks(images, given_masks, names)
        else:
            raise InputError("LoadReferences: connect a label map or at least one segment mask (mask_1)")
        return (references, preview(references))


NODE_CLASS_MAPPINGS = {"SMITE_LoadReferences": LoadReferences}
NODE_DISPLAY_NAME_MAPPINGS = {"SMITE_LoadReferences": "SMITE Load References"}
