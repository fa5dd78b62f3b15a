"""SMITE_ModelFromCheckpoint: ComfyUI's own MODEL, CLIP and VAE as SMITE's backbone, without a second copy.

Load Checkpoint (and LoraLoader or any other weight patch after it) gives a MODEL, a CLIP and a VAE.
This node turns them into a ``SMITE_MODEL`` whose UNet and VAE parameters are aliases of ComfyUI's
tensors (``smite_core.model.shared_weights``): every time a SMITE node uses it, the MODEL and VAE are loaded
by ComfyUI's model management (patches applied), SMITE's modules are bound to those tensors, and
afterwards unbound and (unless ``keep_loaded``) offloaded again. The CLIP encodes the empty prompt
once. Only Stable Diffusion 1.x and 2.x are accepted.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from dataclasses import dataclass, field
from typing import Iterator

import torch

from smite_core.errors import BackboneError
from smite_core.model.backbone import Backbone, backbone_fingerprint
from smite_core.model.components import Components
from smite_core.model.shared_weights import bind, empty_prompt_ids, family_of, refused, shared_components, unbind

from . import host
from .wires import MODEL

log = logging.getLogger(__name__)


@dataclass(eq=False)
class SharedModel:
    """A ``SMITE_MODEL`` on ComfyUI's MODEL/VAE tensors (the wire value of SMITE_ModelFromCheckpoint).

    Between uses the backbone's UNet and VAE hold no weights (meta tensors), so nothing keeps ComfyUI's
    tensors alive after ComfyUI unpatches or offloads them. ``fingerprint`` is taken from the bound
    weights at the first use (the same as the SMITE loader's for the same unpatched file).
    """

    components: Components
    model: object  # ComfyUI's ModelPatcher
    vae: object  # ComfyUI's VAE
    source: str
    keep_loaded: bool = False
    _fingerprint: str | None = field(default=None, repr=False)
    _device: torch.device = field(default_factory=lambda: torch.device("cpu"), repr=False)
    _dtype: torch.dtype = torch.float32

    @property
    def backbone(self) -> Backbone:
        """The backbone as it is between uses (settings and configs; no weights)."""
        return Backbone(components=self.components, device=self._device, dtype=self._dtype,
                        fingerprint=self._fingerprint or "")

    @property
    def fingerprint(self) -> str:
        if self._fingerprint is None:
            with self.use():
                pass
        return self._fingerprint

    @property
    def load_device(self) -> torch.device:
        return torch.device(getattr(self.model, "load_device", self._device))

    @property
    def size_bytes(self) -> int:
        return 0  # no weights of its own: ComfyUI's model management accounts for them

    @contextlib.contextmanager
    def use(self) -> Iterator[Backbone]:
        """The backbone on ComfyUI's loaded (and patched) tensors for the duration of the ``with`` block."""
        with torch.inference_mode(False):
            host.load_models(self.model, self.vae)
            try:
                self._device, self._dtype = bind(self.components, host.unet_state(self.model),
                                                 host.vae_state(self.vae))
                fingerprint = backbone_fingerprint(self.components)
            except BaseException:
                self.release()
                raise
        if self._fingerprint is not None and fingerprint != self._fingerprint:
            log.warning("SMITE: the MODEL's weights changed since it was first used (fingerprint %s, now %s)",
                        self._fingerprint, fingerprint)
        self._fingerprint = fingerprint
        try:
            yield dataclasses.replace(self.backbone, device=self._device, dtype=self._dtype)
        finally:
            self.release()

    def release(self) -> None:
        """Drop the aliases of ComfyUI's tensors and, unless ``keep_loaded``, offload the MODEL and VAE."""
        unbind(self.components)
        if not self.keep_loaded:
            host.unload_models(self.model, self.vae)

    def __repr__(self) -> str:
        return f"SharedModel({self.source}, {self.components.family}, {self.components.prediction_type})"


class ModelFromCheckpoint:
    """Use the checkpoint ComfyUI has loaded (Load Checkpoint, after LoRAs) as SMITE's backbone."""

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": ("MODEL", {
                    "tooltip": "The MODEL of core Load Checkpoint (or after LoraLoader, model merges, ...): a Stable "
                               "Diffusion 1.x or 2.x checkpoint (SD 1.5, SD 2.1, 768-v). Its weights are shared, not "
                               "copied, and weight patches such as LoRAs are in effect; patches that change the "
                               "sampler's forward pass (FreeU, attention replacements) are not."}),
                "clip": ("CLIP", {
                    "tooltip": "The CLIP of the same checkpoint: it encodes the empty prompt once (at its own "
                               "layer; CLIP Set Last Layer does not apply)."}),
                "vae": ("VAE", {"tooltip": "The VAE of the same checkpoint (encodes the video frames)."}),
                "keep_loaded": ("BOOLEAN", {
                    "default": False,
                    "tooltip": "Leave the MODEL and VAE loaded after each SMITE node (faster repeats, holds VRAM). "
                               "Off: ComfyUI offloads them after each use."}),
            },
        }

    RETURN_TYPES = (MODEL,)
    RETURN_NAMES = ("smite_model",)
    OUTPUT_TOOLTIPS = ("The checkpoint as SMITE's backbone, for Learn Segment Embedding, Invert Video and Inflated "
                       "UNet Segment. Its fingerprint equals SMITE Model Loader's for the same file, so embeddings "
                       "work with both; with a LoRA applied it differs (the LoRA changes the weights).",)
    FUNCTION = "convert"
    CATEGORY = "SMITE/loaders"
    DESCRIPTION = ("Makes SMITE use the checkpoint ComfyUI already loaded (MODEL, CLIP, VAE of Load Checkpoint, "
                   "LoRAs included) without loading it a second time. Stable Diffusion 1.x and 2.x only.")

    def convert(self, model, clip, vae, keep_loaded=False):
        name = host.model_kind(model)
        family = family_of(host.unet_state(model), name)  # refuses SDXL, SD3, Flux, ... in one line
        prediction = host.prediction_type(model)
        if prediction is None:
            raise refused(f"{name} with a sampling objective other than epsilon or v-prediction")
        with torch.inference_mode(False):
            prompt = host.encode_prompt_ids(clip, empty_prompt_ids(family)).detach().float().cpu().clone()
            components = shared_components(host.unet_state(model), host.vae_state(vae), prompt, prediction,
                                           source=f"ComfyUI {name} MODEL", name=name)
        if components.family != family:
            raise BackboneError(f"model: recognised as {family} and as {components.family}")
        log.info("SMITE: using ComfyUI's %s MODEL, CLIP and VAE (%s, %s; weights shared, not copied)", name,
                 family, prediction)
        return (SharedModel(components=components, model=model, vae=vae, source=components.source,
                            keep_loaded=bool(keep_loaded)),)


NODE_CLASS_MAPPINGS = {"SMITE_ModelFromCheckpoint": ModelFromCheckpoint}
NODE_DISPLAY_NAME_MAPPINGS = {"SMITE_ModelFromCheckpoint": "SMITE Model From Checkpoint"}
