"""SMITE_ModelLoader: the embedded tiny backbone, an SD 1.x/2.x checkpoint or a diffusers folder."""

from __future__ import annotations

import logging
import os

import torch

from smite_core.errors import BackboneError, InputError
from smite_core.model.backbone import load_backbone, resolve_dtype

from . import host
from .wires import MODEL, SmiteModel

log = logging.getLogger(__name__)

TINY = "tiny (demo: synthetic examples only)"
OLD_TINY = ("tiny (embedded)", "tiny")  # earlier names of the same choice (saved workflows keep working)
DEMO_NOTE = ("SMITE: the embedded 'tiny' backbone is a 10 MB demo model trained on procedural pictures only, for the "
             "synthetic examples; on real footage use a Stable Diffusion 1.x/2.x checkpoint (SMITE Model From "
             "Checkpoint after Load Checkpoint, or a checkpoint in this list)")
CHECKPOINT_PREFIX = "checkpoints/"
DIFFUSERS_PREFIX = "diffusers/"
CHECKPOINT_EXTENSIONS = (".safetensors", ".ckpt", ".pt", ".pth")
DTYPES = ["auto", "fp32", "fp16", "bf16"]
PREDICTION_TYPES = ["auto", "epsilon", "v_prediction"]


def model_choices() -> list[str]:
    """The loader's list: the embedded backbone, then ComfyUI's checkpoints, then diffusers folders."""
    return ([TINY]
            + [CHECKPOINT_PREFIX + name for name in host.list_files("checkpoints", CHECKPOINT_EXTENSIONS)]
            + [DIFFUSERS_PREFIX + name for name in host.diffusers_folders()])


def resolve_model(choice: str) -> str:
    """``tiny``, or the absolute path of the chosen checkpoint file or diffusers folder.

    Inside ComfyUI the choice is looked up in the registered model folders (``extra_model_paths.yaml``
    included); outside ComfyUI a choice that is not ``tiny`` is used as a path.
    """
    choice = str(choice if choice is not None else "").strip()
    if not choice:
        raise InputError(f"model: no backbone chosen (pick {TINY!r}, a checkpoint or a diffusers folder)")
    if choice == TINY or choice in OLD_TINY:
        return "tiny"
    if choice.startswith(CHECKPOINT_PREFIX) and host.inside_comfyui():
        return host.full_path("checkpoints", choice[len(CHECKPOINT_PREFIX):])
    if choice.startswith(DIFFUSERS_PREFIX) and host.inside_comfyui():
        return host.diffusers_folder_path(choice[len(DIFFUSERS_PREFIX):])
    if host.inside_comfyui():
        raise InputError(f"model: {choice!r} is not the embedded model, a checkpoint or a diffusers folder")
    return choice


class ModelLoader:
    """Load the diffusion backbone SMITE reads its features from. Nothing is ever downloaded."""

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": (model_choices(), {
                    "default": TINY,
                    "tooltip": "The backbone. 'tiny' is a demo model shipped with the pack, trained on procedural "
                               "pictures only: it is for the synthetic examples and does not work on real footage. "
                               "For real video pick a Stable Diffusion 1.x/2.x file from ComfyUI/models/checkpoints or "
                               "a diffusers folder from ComfyUI/models/diffusers (extra_model_paths.yaml is "
                               "respected), or use SMITE Model From Checkpoint after core Load Checkpoint."}),
                "dtype": (DTYPES, {
                    "default": "auto",
                    "tooltip": "Precision of the backbone. auto: fp32 on CPU, bf16/fp16 on GPUs as ComfyUI "
                               "recommends."}),
                "keep_loaded": ("BOOLEAN", {
                    "default": False,
                    "tooltip": "Keep the backbone on the GPU between nodes and runs (faster repeats, holds VRAM). "
                               "Off: it is moved back to the offload device and the cache emptied after each use."}),
            },
            "optional": {
                "device": (["auto", "cpu"], {
                    "default": "auto",
                    "tooltip": "auto: ComfyUI's device (honours --cpu); cpu: always run SMITE on the CPU."}),
                "prediction_type": (PREDICTION_TYPES, {
                    "default": "auto",
                    "tooltip": "Override what the checkpoint predicts (SD 2.x 768-v models: v_prediction). "
                               "auto: read it from the checkpoint."}),
            },
        }

    RETURN_TYPES = (MODEL,)
    RETURN_NAMES = ("model",)
    OUTPUT_TOOLTIPS = ("The loaded backbone, for LearnSegmentEmbedding, InvertVideo and InflatedUNetSegment.",)
    FUNCTION = "load"
    CATEGORY = "SMITE/loaders"
    DESCRIPTION = ("Loads the backbone for SMITE from a file: an SD 1.x/2.x checkpoint, a diffusers folder or the "
                   "embedded tiny demo model (synthetic examples only). To use the checkpoint ComfyUI has already "
                   "loaded, use SMITE Model From Checkpoint instead. Offline only.")

    @classmethod
    def VALIDATE_INPUTS(cls, model):
        """The list, plus the earlier names of the tiny choice (workflows saved before it was renamed)."""
        if model in OLD_TINY or model in model_choices():
            return True
        return f"model: {model!r} is not in the list (the tiny demo model, ComfyUI's checkpoints, diffusers folders)"

    @classmethod
    def IS_CHANGED(cls, model, dtype="auto", keep_loaded=False, device="auto", prediction_type="auto"):
        try:
            path = resolve_model(model)
        except Exception:
            return model
        if path == "tiny" or not os.path.exists(path):
            return f"{model}|{dtype}|{keep_loaded}|{device}|{prediction_type}"
        stat = os.stat(path)
        return f"{path}|{stat.st_mtime_ns}|{stat.st_size}|{dtype}|{keep_loaded}|{device}|{prediction_type}"

    def load(self, model, dtype="auto", keep_loaded=False, device="auto", prediction_type="auto"):
        source = resolve_model(model)
        if dtype not in DTYPES:
            raise InputError(f"dtype: {dtype!r} is not one of {', '.join(DTYPES)}")
        load_device = host.compute_device(device)
        offload = host.offload_device() if load_device.type != "cpu" else torch.device("cpu")
        wanted = host.auto_dtype(load_device) if dtype == "auto" else resolve_dtype(dtype, load_device)
        if load_device.type == "cpu" and wanted != torch.float32:
            log.warning("SMITE: %s on the CPU is slow or unsupported for some layers; using it as asked", dtype)
        prediction = None if prediction_type == "auto" else prediction_type
        log.info("SMITE: loading backbone %s (%s) for %s", source, wanted, load_device)
        try:
            with torch.inference_mode(False):  # weights made in inference mode could never be trained against
                backbone = load_backbone(source, device=offload, dtype=wanted, prediction_type=prediction)
        except (OSError, RuntimeError) as exc:
            raise BackboneError(f"{source}: cannot load ({type(exc).__name__}: {exc})") from exc
        handle = SmiteModel(backbone=backbone, source=source, load_device=load_device, offload_device=offload,
                            keep_loaded=bool(keep_loaded))
        if source == "tiny":
            log.warning(DEMO_NOTE)
        if not backbone.components.extra.get("trained", True):
            log.warning("SMITE: the embedded backbone's trained weights are not in this build; it is a random "
                        "initialisation, so masks will not be meaningful")
        return (handle,)


NODE_CLASS_MAPPINGS = {"SMITE_ModelLoader": ModelLoader}
NODE_DISPLAY_NAME_MAPPINGS = {"SMITE_ModelLoader": "SMITE Model Loader"}
