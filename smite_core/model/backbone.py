"""Stage 0 - the diffusion backbone: UNet, VAE, text encoder and DDIM scheduler, loaded offline.

``load_backbone("tiny")`` gives the embedded default backbone; ``load_backbone(PATH)`` a Stable
Diffusion 1.x / 2.x checkpoint (a diffusers folder or one original-layout ``.safetensors`` file,
see ``checkpoints.py``). Nothing is ever downloaded.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import torch

from ..errors import BackboneError
from .components import Components, read_family_config

TINY_WEIGHTS = "weights/tiny.safetensors"  # inside the smite_core.model package (the embedded backbone)


@dataclass
class Backbone:
    """A loaded backbone on one device: the SD components, working resolution and a fingerprint.

    The backbone is shared and never modified: learned segment weights are applied per call
    (``torch.func.functional_call``), attention hooks only inside ``attention.inflated_unet``.
    """

    components: Components
    device: torch.device
    dtype: torch.dtype
    fingerprint: str

    unet = property(lambda self: self.components.unet)
    vae = property(lambda self: self.components.vae)
    text_encoder = property(lambda self: self.components.text_encoder)
    scheduler = property(lambda self: self.components.scheduler)
    family = property(lambda self: self.components.family)
    resolution = property(lambda self: self.components.resolution)

    @property
    def segment_resolution(self) -> int:
        """Default working side for segmentation (the tiny backbone segments at 256, above its 192
        training size: its maps are finer there); the learning ``resolution`` for SD."""
        return self.components.segment_resolution or self.components.resolution

    @property
    def latent_factor(self) -> int:
        """Pixels per latent cell (8 for every SD VAE)."""
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def size_multiple(self) -> int:
        """Image sides must be multiples of this (latent factor x UNet downsampling)."""
        return self.latent_factor * 2 ** (len(self.unet.config.block_out_channels) - 1)

    @property
    def context_dim(self) -> int:
        return int(self.text_encoder.config.hidden_size)

    @torch.no_grad()
    def encode_empty_prompt(self) -> torch.Tensor:
        """Text-encoder output of the empty prompt ``""``: ``[1,77,D]`` on the backbone device."""
        ids = self.components.empty_prompt_ids.to(self.device)
        return self.text_encoder(ids)[0].to(self.dtype)

    def cross_attention_kv_names(self) -> list[str]:
        """Parameter names of every cross-attention ``to_k``/``to_v`` weight in the UNet."""
        return [n for n, _ in self.unet.named_parameters() if ".attn2.to_k." in n or ".attn2.to_v." in n]


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` -> cuda, else mps, else cpu; anything else is passed to ``torch.device``."""
    if str(device) != "auto":
        return torch.device(device)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def resolve_dtype(dtype: str | torch.dtype, device: torch.device) -> torch.dtype:
    """``"auto"`` -> fp32 on CPU, bf16 on GPUs that support it, else fp16."""
    if isinstance(dtype, torch.dtype):
        return dtype
    names = {"fp32": torch.float32, "float32": torch.float32, "fp16": torch.float16, "float16": torch.float16,
             "bf16": torch.bfloat16, "bfloat16": torch.bfloat16}
    if dtype in names:
        return names[dtype]
    if dtype != "auto":
        raise BackboneError(f"unknown dtype {dtype!r} (use auto, fp32, fp16 or bf16)")
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "mps":
        return torch.float16
    return torch.float32


def backbone_fingerprint(components: Components) -> str:
    """A short id of the backbone's architecture and weights.

    Hashes the UNet config and the weights of the input/output convolutions and every
    cross-attention ``to_k``, rounded to fp16: a checkpoint and its fp16 conversion share an id
    (so do fp32 and fp16 loads of it), different checkpoints do not.
    """
    unet = components.unet
    config = {k: v for k, v in dict(unet.config).items() if not k.startswith("_")}
    h = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode())
    h.update(components.family.encode())
    for name, param in unet.named_parameters():
        if name.startswith(("conv_in.", "conv_out.")) or ".attn2.to_k." in name:
            h.update(name.encode())
            h.update(param.detach().to("cpu", torch.float16).numpy().tobytes())
    return h.hexdigest()[:16]


def build_tiny_components(weights_path: str | Path | None | bool = None) -> Components:
    """The embedded default backbone: SD component classes built from ``configs/tiny``.

    Loads the shipped trained weights (``smite_core/model/weights/tiny.safetensors``, made by
    ``python -m smite_core.tools.pretrain``) when present, or ``weights_path``; ``weights_path=False``
    (pre-training) or a missing shipped file gives a deterministic random initialisation (seed 0).
    The word-level tokenizer reads ``configs/tiny/vocab.json``.
    """
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from .tokenizer import WordTokenizer

    cfg = read_family_config("tiny")
    devnull = torch.random.fork_rng(devices=[])
    with devnull:
        torch.manual_seed(0)
        unet = UNet2DConditionModel.from_config(cfg["unet"])
        vae = AutoencoderKL.from_config(cfg["vae"])
        text_encoder = CLIPTextModel(CLIPTextConfig(**cfg["text_encoder"]))
    scheduler = DDIMScheduler.from_config(cfg["scheduler"])
    path = Path(weights_path) if weights_path else Path(str(resources.files("smite_core.model") / TINY_WEIGHTS))
    trained = weights_path is not False and path.is_file()
    if trained:
        from safetensors.torch import load_file

        state = load_file(str(path))
        for prefix, model in (("unet.", unet), ("vae.", vae), ("text_encoder.", text_encoder)):
            part = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
            missing, unexpected = model.load_state_dict(part, strict=False)
            if missing or unexpected:
                raise BackboneError(f"{path}: does not match the tiny backbone config "
                                    f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    elif weights_path:
        raise BackboneError(f"{weights_path}: no such file")
    return Components(
        unet=unet, vae=vae, text_encoder=text_encoder, scheduler=scheduler, family="tiny",
        prediction_type=scheduler.config.prediction_type,
        empty_prompt_ids=torch.tensor([cfg["smite"]["empty_prompt_ids"]], dtype=torch.long),
        resolution=int(cfg["smite"]["resolution"]), source="tiny", tokenizer=WordTokenizer.from_json(),
        extra={"trained": trained, "learn": cfg["smite"].get("learn", {})},
        segment_resolution=cfg["smite"].get("segment_resolution"),
    )


def load_backbone(model: str | Path = "tiny", device: str | torch.device = "auto",
                  dtype: str | torch.dtype = "auto", prediction_type: str | None = None) -> Backbone:
    """Load a backbone offline: ``"tiny"`` (embedded default), a diffusers folder, or one SD file.

    Models are put in eval mode, frozen, and moved to ``device`` in ``dtype``.
    """
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    if str(model) == "tiny":
        components = build_tiny_components()
    else:
        from .checkpoints import load_checkpoint

        components = load_checkpoint(model, dtype=torch.float32, prediction_type=prediction_type)
    fingerprint = backbone_fingerprint(components)
    return backbone_from_components(components, dev, dt, fingerprint)


def backbone_from_components(components: Components, device: torch.device, dtype: torch.dtype,
                             fingerprint: str | None = None) -> Backbone:
    """Wrap loaded components: eval mode, no gradients, on ``device`` in ``dtype``."""
    fingerprint = fingerprint or backbone_fingerprint(components)
    for model in (components.unet, components.vae, components.text_encoder):
        model.eval().requires_grad_(False).to(device)
        if next(model.parameters()).dtype != dtype:
            model.to(dtype=dtype)
    return Backbone(components=components, device=device, dtype=dtype, fingerprint=fingerprint)
