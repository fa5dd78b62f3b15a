"""What the nodes need from ComfyUI, looked up lazily, with plain fallbacks outside ComfyUI.

The nodes never import ComfyUI at module level and never import it themselves: inside ComfyUI its
modules (``folder_paths``, ``comfy.utils``, ``comfy.model_management``) are already loaded by the
time a custom-node pack is imported, so they are taken from ``sys.modules``. Outside ComfyUI (tests,
scripts) every helper falls back to plain behaviour: no progress bar, no interrupts, the device
``auto`` of the library, model files given as explicit paths.

ComfyUI's own MODEL, CLIP and VAE objects are read here too (their tensors, sampling type, loading
and offloading), so ``comfy_model.py`` and the library never depend on ComfyUI's internals.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from typing import Callable

import torch

from smite_core.errors import InputError

log = logging.getLogger(__name__)

SMITE_FOLDER = "smite"  # ComfyUI/models/smite: segment embeddings (.safetensors)
COTRACKER_FOLDER = "cotracker"  # ComfyUI/models/cotracker: optional CoTracker3 checkpoint (never bundled)
PACK_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLE_DIR = os.path.join(PACK_DIR, "example_inputs")  # the bundled example embedding


def comfy(name: str):
    """The ComfyUI module ``name`` if the host has loaded it, else ``None`` (never imports it)."""
    return sys.modules.get(name)


def inside_comfyui() -> bool:
    """True when running inside a ComfyUI process."""
    return comfy("folder_paths") is not None and comfy("comfy.model_management") is not None


# ----------------------------------------------------------------------------- model folders


def register_model_folders() -> None:
    """Register ``models/smite`` (default save location) and ``models/cotracker`` with folder_paths.

    Paths a user configured in ``extra_model_paths.yaml`` (loaded before custom nodes) are kept and
    stay first; ``models/smite`` is only made the default when the user configured none. The pack's
    bundled example embedding is listed too (after everything else). Nothing is created on disk.
    """
    folder_paths = comfy("folder_paths")
    if folder_paths is None:
        return
    known = getattr(folder_paths, "folder_names_and_paths", {})
    for name in (SMITE_FOLDER, COTRACKER_FOLDER):
        path = os.path.join(folder_paths.models_dir, name)
        folder_paths.add_model_folder_path(name, path, is_default=name not in known)
    if os.path.isdir(EXAMPLE_DIR):
        folder_paths.add_model_folder_path(SMITE_FOLDER, EXAMPLE_DIR, is_default=False)


def _outside_folders(folder: str) -> list[str]:
    """Outside ComfyUI only the pack's own example embedding folder is known."""
    return [EXAMPLE_DIR] if folder == SMITE_FOLDER and os.path.isdir(EXAMPLE_DIR) else []


def list_files(folder: str, extensions: tuple[str, ...]) -> list[str]:
    """Sorted file names (relative, ``/``-separated) of a registered model folder with these extensions."""
    folder_paths = comfy("folder_paths")
    if folder_paths is None:
        names = [name for root in _outside_folders(folder) for name in os.listdir(root)]
    else:
        try:
            names = folder_paths.get_filename_list(folder)
        except KeyError:
            return []
    return sorted(n for n in names if n.lower().endswith(extensions))


def model_name(folder: str, name) -> str:
    """``name`` checked to be a relative name inside a model folder (``/``-separated): not empty, no
    ``..``, not absolute, no drive letter, no NUL. Raises InputError naming the input otherwise."""
    text = str(name if name is not None else "").strip()
    if not text:
        raise InputError(f"{folder}: no file chosen (the list is empty until a file is in ComfyUI's "
                         f"models/{folder} folder)")
    norm = text.replace("\\", "/")
    parts = norm.split("/")
    if ("\x00" in text or os.path.isabs(text) or norm.startswith("/") or re.match(r"^[A-Za-z]:", norm)
            or ".." in parts):
        raise InputError(f"{text!r}: not a name inside ComfyUI's '{folder}' model folders "
                         "(no '..', no absolute paths or drives)")
    return norm


def _inside(path: str, roots: list[str]) -> bool:
    """Whether ``path`` lies in one of ``roots`` (lexically: symlinked model files stay allowed)."""
    path = os.path.normpath(os.path.abspath(path))
    for root in roots:
        root = os.path.normpath(os.path.abspath(root))
        try:
            if os.path.commonpath([path, root]) == root:
                return True
        except ValueError:  # another drive
            continue
    return False


def full_path(folder: str, name: str) -> str:
    """Absolute path of ``name`` in a registered model folder. Outside ComfyUI ``name`` is a path, or a
    file of the pack's example folder.

    Inside ComfyUI a name that tries to leave the model folders (``..``, absolute paths, drives) is
    refused, and so is any lookup result outside them.
    """
    folder_paths = comfy("folder_paths")
    if folder_paths is None:
        if not str(name or "").strip():
            raise InputError(f"{folder}: no file given")
        if not os.path.exists(name):
            for root in _outside_folders(folder):
                if os.path.isfile(os.path.join(root, name)):
                    return os.path.join(root, name)
        return name
    name = model_name(folder, name)
    path = folder_paths.get_full_path(folder, name)
    if path is None:
        raise InputError(f"{name}: not found in ComfyUI's '{folder}' model folders "
                         f"({', '.join(folder_paths.get_folder_paths(folder))})")
    if not _inside(path, folder_paths_of(folder)):
        raise InputError(f"{name}: resolves outside ComfyUI's '{folder}' model folders")
    return path


def folder_paths_of(folder: str) -> list[str]:
    """The directories registered for a model folder (empty outside ComfyUI)."""
    folder_paths = comfy("folder_paths")
    if folder_paths is None:
        return []
    try:
        return folder_paths.get_folder_paths(folder)
    except KeyError:
        return []


def diffusers_folders() -> list[str]:
    """Diffusers pipeline folders (with ``model_index.json`` or ``unet/``) under ``models/diffusers``."""
    out = []
    for root in folder_paths_of("diffusers"):
        if not os.path.isdir(root):
            continue
        for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
            if "model_index.json" in filenames or {"unet", "vae", "text_encoder"} <= set(dirnames):
                out.append(os.path.relpath(dirpath, root).replace(os.sep, "/"))
                dirnames[:] = []  # a pipeline's subfolders are not pipelines
    return sorted(set(out))


def diffusers_folder_path(name: str) -> str:
    if inside_comfyui():
        name = model_name("diffusers", name)
    for root in folder_paths_of("diffusers"):
        path = os.path.join(root, name)
        if os.path.isdir(path):
            return path
    if not inside_comfyui():
        return name
    raise InputError(f"{name}: no such diffusers folder in ComfyUI's models/diffusers")


def save_directory(folder: str = SMITE_FOLDER) -> str:
    """Where new files of a model folder go: its first registered path (``models/smite`` by default)."""
    paths = folder_paths_of(folder)
    if not paths:
        raise InputError("no output directory: outside ComfyUI give the node an explicit directory")
    return paths[0]


# ----------------------------------------------------------------------------- progress, interrupts


def check_interrupt() -> None:
    """Raise ComfyUI's interrupt exception if the user pressed Cancel (no-op outside ComfyUI)."""
    mm = comfy("comfy.model_management")
    if mm is not None:
        mm.throw_exception_if_processing_interrupted()


def progress(total: int, node_id: str | None = None) -> Callable[[int, int], None]:
    """A ``progress(done, total)`` callback for the library's loops.

    Inside ComfyUI it drives a ``comfy.utils.ProgressBar`` (shown on the node, sent to the UI) and is
    an interrupt point; outside it only checks nothing and returns.
    """
    utils = comfy("comfy.utils")
    bar = utils.ProgressBar(max(1, int(total)), node_id=node_id) if utils is not None else None

    def update(done: int, new_total: int | None = None) -> None:
        check_interrupt()
        if bar is not None:
            bar.update_absolute(int(done), int(new_total) if new_total else None)

    return update


# ----------------------------------------------------------------------------- devices, memory


def compute_device(choice: str = "auto") -> torch.device:
    """``auto``: ComfyUI's torch device (honours ``--cpu``), or the library's choice outside it."""
    if choice == "cpu":
        return torch.device("cpu")
    mm = comfy("comfy.model_management")
    if mm is not None:
        return torch.device(mm.get_torch_device())
    from smite_core.model.backbone import resolve_device

    return resolve_device("auto")


def offload_device() -> torch.device:
    """Where models wait between uses: ComfyUI's UNet offload device, else the CPU."""
    mm = comfy("comfy.model_management")
    if mm is not None:
        return torch.device(mm.unet_offload_device())
    return torch.device("cpu")


def auto_dtype(device: torch.device, num_params: int = 0) -> torch.dtype:
    """fp32 on CPU; otherwise bf16 or fp16 as ComfyUI recommends for the device (fp32 if neither)."""
    if device.type == "cpu":
        return torch.float32
    mm = comfy("comfy.model_management")
    if mm is None:
        from smite_core.model.backbone import resolve_dtype

        return resolve_dtype("auto", device)
    if mm.should_use_bf16(device, model_params=num_params):
        return torch.bfloat16
    if mm.should_use_fp16(device, model_params=num_params):
        return torch.float16
    return torch.float32


def free_memory_for(num_bytes: int, device: torch.device) -> None:
    """Ask ComfyUI to unload its own models until ``num_bytes`` are free on ``device`` (GPUs only)."""
    mm = comfy("comfy.model_management")
    if mm is not None and device.type != "cpu":
        mm.free_memory(num_bytes, device)


def soft_empty_cache() -> None:
    """Return cached GPU memory to the driver (ComfyUI's helper; plain torch outside ComfyUI)."""
    mm = comfy("comfy.model_management")
    if mm is not None:
        mm.soft_empty_cache()
    elif torch.cuda.is_available():
        torch.cuda.empty_cache()


# ----------------------------------------------------------------------------- ComfyUI's MODEL, CLIP and VAE


class Blocked:
    """Outside ComfyUI: what ``blocked_output`` returns (ComfyUI's ``ExecutionBlocker`` has the same field)."""

    def __init__(self, message: str):
        self.message = message

    def __repr__(self) -> str:
        return f"Blocked({self.message!r})"


def blocked_output(message: str):
    """An output value that stops every node using it with ``message`` (ComfyUI's ``ExecutionBlocker``);
    for outputs that have nothing valid to give in this use of the node."""
    graph_utils = comfy("comfy_execution.graph_utils")
    if graph_utils is not None and hasattr(graph_utils, "ExecutionBlocker"):
        return graph_utils.ExecutionBlocker(message)
    return Blocked(message)


def model_kind(model) -> str:
    """What ComfyUI recognised a MODEL as (its model config's class: SD15, SD20, SDXL, Flux, ...)."""
    base = getattr(model, "model", None)
    config = getattr(base, "model_config", None)
    return type(config).__name__ if config is not None else type(base).__name__


def unet_state(model) -> dict:
    """The MODEL's UNet weights as they are now (LDM layout, ComfyUI's own tensors, no copy)."""
    unet = getattr(getattr(model, "model", None), "diffusion_model", None)
    if unet is None:
        raise InputError(f"model: not a ComfyUI MODEL with a diffusion UNet ({type(model).__name__})")
    return unet.state_dict()


def vae_state(vae) -> dict:
    """The VAE's weights as they are now (LDM layout, ComfyUI's own tensors, no copy)."""
    first_stage = getattr(vae, "first_stage_model", None)
    if first_stage is None:
        raise InputError(f"vae: not a ComfyUI VAE ({type(vae).__name__})")
    return first_stage.state_dict()


def prediction_type(model) -> str | None:
    """``epsilon`` or ``v_prediction`` from the MODEL's sampling object (ModelSamplingDiscrete patches
    included); None for any other objective (EDM, flow, x0, ...)."""
    sampling = comfy("comfy.model_sampling")
    if sampling is None:  # outside ComfyUI (tests): the model type's name
        kind = getattr(getattr(getattr(model, "model", None), "model_type", None), "name", "")
        return {"EPS": "epsilon", "V_PREDICTION": "v_prediction"}.get(kind)
    obj = model.get_model_object("model_sampling")
    if not isinstance(obj, sampling.ModelSamplingDiscrete):
        return None
    other = tuple(getattr(sampling, n) for n in ("EDM", "X0", "CONST") if hasattr(sampling, n))
    if isinstance(obj, other):
        return None
    if isinstance(obj, sampling.V_PREDICTION):
        return "v_prediction"
    return "epsilon" if isinstance(obj, sampling.EPS) else None


def encode_prompt_ids(clip, ids: torch.Tensor) -> torch.Tensor:
    """ComfyUI's CLIP output ``[1,77,D]`` for the token ids ``ids [1,77]`` at the text encoder's own layer
    (CLIP Set Last Layer is not applied, as the single-file loader uses that layer too); LoRA patches on
    the CLIP are in effect. Loads the CLIP through ComfyUI's model management."""
    if clip is None or not hasattr(clip, "encode_from_tokens"):
        raise InputError("clip: not a ComfyUI CLIP (the checkpoint has no text encoder?)")
    clip = clip.clone()
    clip.layer_idx = None
    keys = list(clip.tokenize(""))
    if len(keys) != 1:
        raise InputError(f"clip: {len(keys)} text encoders ({', '.join(keys)}); SMITE needs the one of SD 1.x/2.x")
    tokens = {keys[0]: [[(int(i), 1.0) for i in ids[0].tolist()]]}
    return clip.encode_from_tokens(tokens)


def _patchers(model, vae) -> list:
    return [model] + ([vae.patcher] if getattr(vae, "patcher", None) is not None else [])


def load_models(model, vae) -> None:
    """Load the MODEL (its weight patches applied) and the VAE with ComfyUI's model management, whole:
    SMITE runs its own modules on these tensors, so a partial (low-VRAM) load is refused."""
    mm = comfy("comfy.model_management")
    if mm is None:
        return
    patchers = _patchers(model, vae)
    mm.load_models_gpu(patchers, force_full_load=True)
    for patcher in patchers:
        if getattr(getattr(patcher, "model", None), "model_lowvram", False):
            raise InputError("model: ComfyUI loaded it only partly (low-VRAM mode); SMITE needs the whole model on "
                             "one device: free VRAM, or start ComfyUI without --lowvram/--novram")


def unload_models(model, vae) -> None:
    """Offload the MODEL and VAE again (their patches removed) through ComfyUI's model management."""
    mm = comfy("comfy.model_management")
    if mm is None:
        return
    patchers = _patchers(model, vae)
    for loaded in list(getattr(mm, "current_loaded_models", [])):
        if any(loaded.model is p for p in patchers) and loaded.model_unload():
            mm.current_loaded_models.remove(loaded)
    mm.soft_empty_cache()


# ----------------------------------------------------------------------------- output folder, VIDEO values


def output_directory() -> str:
    """ComfyUI's output folder (``--output-directory`` honoured); outside ComfyUI ``./output``."""
    folder_paths = comfy("folder_paths")
    if folder_paths is not None:
        return folder_paths.get_output_directory()
    return os.path.join(os.getcwd(), "output")


def _video_from_file_class():
    """ComfyUI's ``VideoFromFile`` class, or None outside ComfyUI."""
    impl = comfy("comfy_api.latest._input_impl") or comfy("comfy_api.input_impl")
    return getattr(impl, "VideoFromFile", None)


class FileVideo:
    """Outside ComfyUI: a video file as a VIDEO value (the part of ComfyUI's ``VideoInput`` the pack reads)."""

    def __init__(self, path: str):
        self.path = path

    def get_stream_source(self) -> str:
        return self.path

    def __repr__(self) -> str:
        return f"FileVideo({self.path!r})"


def video_from_file(path: str):
    """A VIDEO value for a video file: ComfyUI's ``VideoFromFile`` inside ComfyUI (for Save Video, Preview,
    Get Video Components), :class:`FileVideo` outside it."""
    from_file = _video_from_file_class()
    return from_file(path) if from_file is not None else FileVideo(path)


def video_stream(video):
    """How to read a VIDEO without decoding it whole: ``("stream", path or BytesIO, None)`` for a video ComfyUI
    holds as a file (``VideoFromFile``, e.g. from core Load Video), else ``("frames", images [T,H,W,C], fps)`` from
    its components (``VideoFromComponents``: already frames in memory, so nothing is encoded again)."""
    from_file = _video_from_file_class()
    if isinstance(video, FileVideo) or (from_file is not None and isinstance(video, from_file)):
        return "stream", video.get_stream_source(), None
    if hasattr(video, "get_components"):
        components = video.get_components()
        return "frames", components.images, float(components.frame_rate)
    if hasattr(video, "get_stream_source"):
        return "stream", video.get_stream_source(), None
    raise InputError(f"video: expected a VIDEO (e.g. from Load Video), got {type(video).__name__}")
