"""Learning, saving and loading segment embeddings (files in ComfyUI/models/smite/)."""

from __future__ import annotations

import logging
import os
import re
import time

import torch

from smite_core.errors import InputError
from smite_core.io.references import ReferenceSet
from smite_core.method.embedding import SegmentEmbedding
from smite_core.method.learn import LearnConfig, learn_embedding
from smite_core.settings import MAX_SIDE, range_of

from . import host
from .wires import EMBEDDING, MODEL, REFERENCES, plain

log = logging.getLogger(__name__)

EMBEDDING_EXTENSIONS = (".safetensors",)
QUICK_STEPS = 200  # the learning node's default: a quick start for one reference (0: 300 per reference)


class LearnSegmentEmbedding:
    """Learn the segment tokens (and cross-attention K/V) that make the backbone see your parts."""

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": (MODEL, {"tooltip": "The backbone from SMITE Model Loader."}),
                "references": (REFERENCES, {"tooltip": "Annotated references from SMITE Load References."}),
                "steps": ("INT", {"default": QUICK_STEPS, "min": 0, "max": range_of(LearnConfig, "steps")[1],
                                  "tooltip": "Optimisation steps (one augmented reference per step); 0 = 300 per "
                                             "reference (the paper's 300 epochs, the CLI's default). "
                                             f"{QUICK_STEPS} is a quick start for one reference; give more references "
                                             "more steps."}),
                "random_seed": ("INT", {"default": 0, "min": 0, "max": 2**31 - 1,
                                        "tooltip": "Seed of the augmentations and noise: the same seed gives the same "
                                                   "embedding."}),
                "train_kv": ("BOOLEAN", {"default": True,
                                         "tooltip": "Also fine-tune the cross-attention K/V weights after the tokens "
                                                    "(the method's second phase). Off: tokens only (smaller file)."}),
                "size": ("INT", {"default": 0, "min": 0, "max": MAX_SIDE, "step": 16,
                                 "tooltip": "Training image side in pixels; 0 = the backbone's resolution (192 for "
                                            "tiny, 512 for SD); a multiple of 16 for tiny, 64 for SD."}),
            },
        }

    RETURN_TYPES = (EMBEDDING,)
    RETURN_NAMES = ("embedding",)
    OUTPUT_TOOLTIPS = ("The learned segment embedding, for InflatedUNetSegment or SMITE Save Embedding.",)
    FUNCTION = "learn"
    CATEGORY = "SMITE/embedding"
    DESCRIPTION = "Learns a segment embedding from the annotated references (progress per step; cancel any time)."

    def learn(self, model, references, steps=QUICK_STEPS, random_seed=0, train_kv=True, size=0):
        config = LearnConfig.for_backbone(model.backbone, steps=int(steps) or None, seed=int(random_seed),
                                          train_kv=bool(train_kv), size=int(size) or None)
        config = config.resolved(len(references.images))
        report = host.progress(config.steps)
        started = time.perf_counter()
        with torch.inference_mode(False), torch.enable_grad():  # ComfyUI runs nodes in inference mode
            references = ReferenceSet([plain(i) for i in references.images], [plain(m) for m in references.labels],
                                      list(references.names), list(references.files))
            missing = references.missing_ids()
            if missing:
                log.warning("SMITE: label id(s) %s appear in no reference; kept as empty segments",
                            ", ".join(map(str, missing)))
            with model.use() as backbone:
                embedding = learn_embedding(backbone, references, config, progress=report,
                                            interrupt=host.check_interrupt)
        log.info("SMITE: learned %d segments in %d steps (%.0f s)", embedding.num_segments, config.steps,
                 time.perf_counter() - started)
        return (embedding.to("cpu"),)


def _safe_name(filename: str) -> str:
    """A relative ``.safetensors`` name that stays inside the save folder."""
    name = str(filename or "").strip().replace("\\", "/")
    if not name or name.endswith("/"):
        raise InputError("filename: give a file name, e.g. my_parts")
    if "\x00" in name:
        raise InputError(f"filename: {filename!r} contains a NUL character")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if any(p == ".." for p in parts) or os.path.isabs(name) or re.match(r"^[A-Za-z]:", name):
        raise InputError(f"filename: {filename!r} must be a name inside the models/smite folder (no '..', no drive)")
    name = "/".join(parts)
    return name if name.lower().endswith(".safetensors") else name + ".safetensors"


def _numbered(path: str) -> str:
    stem, ext = os.path.splitext(path)
    counter = 1
    while os.path.exists(f"{stem}_{counter:05d}{ext}"):
        counter += 1
    return f"{stem}_{counter:05d}{ext}"


class SaveEmbedding:
    """Save a segment embedding as one safetensors file in ComfyUI/models/smite/; never overwrites unasked."""

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "embedding": (EMBEDDING, {"tooltip": "The learned embedding."}),
                "filename": ("STRING", {"default": "smite_parts",
                                        "tooltip": "File name inside ComfyUI/models/smite/ (subfolders allowed); "
                                                   ".safetensors is added."}),
                "overwrite": ("BOOLEAN", {"default": False,
                                          "tooltip": "Replace a file of that name. Off (default): a new file gets a "
                                                     "number (_00001, ...); the file output says which."}),
            },
        }

    RETURN_TYPES = ("STRING",)
    RETURN_NAMES = ("file",)
    OUTPUT_TOOLTIPS = ("The name of the file written, as SMITE Load Embedding lists it (connect Preview Any to see "
                       "it).",)
    FUNCTION = "save"
    OUTPUT_NODE = True
    CATEGORY = "SMITE/embedding"
    DESCRIPTION = ("Saves the embedding to ComfyUI/models/smite/ (the first 'smite' path of extra_model_paths.yaml "
                   "if you set one) under a new name unless overwrite is on, and says which file it wrote; SMITE "
                   "Load Embedding lists it after a refresh (R).")

    def save(self, embedding, filename="smite_parts", overwrite=False, directory=None):
        name = _safe_name(filename)
        root = directory or host.save_directory(host.SMITE_FOLDER)
        path = os.path.join(root, *name.split("/"))
        existed = os.path.exists(path)
        if existed and not overwrite:
            path = _numbered(path)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        embedding.save(path, overwrite=True)
        written = os.path.relpath(path, root).replace(os.sep, "/")
        log.info("SMITE: saved embedding %s%s (%d segments: %s)", path, " (replaced)" if existed and overwrite else "",
                 embedding.num_segments, ", ".join(embedding.names))
        return {"ui": {"text": [written]}, "result": (written,)}


class LoadEmbedding:
    """Load a segment embedding file from ComfyUI/models/smite/."""

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "embedding": (host.list_files(host.SMITE_FOLDER, EMBEDDING_EXTENSIONS), {
                    "tooltip": "An embedding file from ComfyUI/models/smite/ (or a 'smite' path of "
                               "extra_model_paths.yaml). smite_example_car is the pack's example for the procedural "
                               "car video."}),
            },
        }

    RETURN_TYPES = (EMBEDDING,)
    RETURN_NAMES = ("embedding",)
    OUTPUT_TOOLTIPS = ("The segment embedding (segment names included), for InflatedUNetSegment.",)
    FUNCTION = "load"
    CATEGORY = "SMITE/embedding"
    DESCRIPTION = "Loads a segment embedding saved by SMITE Save Embedding or the smite CLI."

    @classmethod
    def IS_CHANGED(cls, embedding):
        try:
            path = host.full_path(host.SMITE_FOLDER, embedding)
            stat = os.stat(path)
        except (OSError, InputError):
            return embedding
        return f"{path}|{stat.st_mtime_ns}|{stat.st_size}"

    def load(self, embedding):
        loaded = SegmentEmbedding.load(host.full_path(host.SMITE_FOLDER, embedding))
        if loaded.outdated:
            log.warning("SMITE: %s", loaded.outdated)
        return (loaded,)


NODE_CLASS_MAPPINGS = {
    "SMITE_LearnSegmentEmbedding": LearnSegmentEmbedding,
    "SMITE_SaveEmbedding": SaveEmbedding,
    "SMITE_LoadEmbedding": LoadEmbedding,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "SMITE_LearnSegmentEmbedding": "SMITE Learn Segment Embedding",
    "SMITE_SaveEmbedding": "SMITE Save Embedding",
    "SMITE_LoadEmbedding": "SMITE Load Embedding",
}
