"""A backbone on another program's weights: SMITE's modules read the host's tensors, never a copy.

A host such as ComfyUI has already loaded a Stable Diffusion 1.x/2.x checkpoint: its UNet and VAE in
the original (LDM) layout, possibly patched (a LoRA merged into some weights). This module turns
those tensors into the ``Components`` a :class:`~smite_core.model.backbone.Backbone` needs, without a
second copy of the weights:

- :func:`family_of` recognises SD 1.x / 2.x from the UNet's state dict (anything else is refused in
  one line: :data:`SUPPORTED`);
- :func:`shared_components` builds the diffusers UNet and VAE on the meta device, from the same
  configs the single-file loader derives (``checkpoints``), so the fingerprint of an unpatched
  model equals the loader's for the same file;
- :func:`bind` points every diffusers parameter at an *alias* of the host's tensor (same storage;
  a 1x1 convolution seen as a linear weight is a view of it), :func:`unbind` lets go of them. The
  host may move or patch its tensors between uses, so a caller binds right before each use and
  unbinds right after; :func:`shared_storage` checks that nothing was copied;
- the text encoder is :class:`PromptEncoding`: SMITE only ever encodes the empty prompt
  (``Components.empty_prompt_ids``), so the host encodes it once with its own text encoder.

Aliases are plain (non-inference) tensors even when the host made its tensors in
``torch.inference_mode``, so learning and guidance can differentiate through them. Nothing here
imports ComfyUI: the inputs are plain state dicts and tensors.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Mapping

import torch
from torch import nn

from ..errors import BackboneError
from .checkpoints import (
    UNET_PREFIX,
    VAE_PREFIX,
    assign_state,
    ddim_scheduler,
    first_line,
    parameters_on_meta,
    unet_config_from_state,
    vae_config_from_state,
)
from .components import Components, read_family_config

SUPPORTED = "SMITE supports Stable Diffusion 1.x and 2.x checkpoints"
CONTEXT_FAMILY = {768: "sd1", 1024: "sd2"}  # UNet cross-attention width -> family
PREDICTION_TYPES = ("epsilon", "v_prediction")
FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def refused(what: str) -> BackboneError:
    """The one-line refusal of a model SMITE cannot use."""
    return BackboneError(f"{SUPPORTED}; this MODEL is {what}")


def family_of(unet_state: Mapping[str, torch.Tensor], name: str | None = None) -> str:
    """``"sd1"`` or ``"sd2"`` for an LDM-layout UNet state dict (keys ``input_blocks.*`` ...), else a
    :class:`BackboneError` naming the model (``name``, else what the keys show)."""
    label = f"{name} " if name else ""
    conv_in = unet_state.get("input_blocks.0.0.weight")
    if conv_in is None:
        raise refused(f"{label}(not a Stable Diffusion UNet)".strip())
    if any(k.startswith("label_emb.") for k in unet_state):
        raise refused(f"{label}(a UNet with a class or image embedding: SDXL, unCLIP or similar)".strip())
    if int(conv_in.shape[1]) != 4:
        raise refused(f"{label}(a UNet with {int(conv_in.shape[1])} input channels: inpainting, instruct or "
                      "upscaling models are not supported)".strip())
    context = next((int(v.shape[1]) for k, v in unet_state.items() if k.endswith("attn2.to_k.weight")), None)
    family = CONTEXT_FAMILY.get(context)
    if family is None:
        raise refused(f"{label}(cross-attention width {context}; SD 1.x has 768, SD 2.x 1024)".strip())
    return family


def empty_prompt_ids(family: str) -> torch.Tensor:
    """The ``[1,77]`` token ids of the empty prompt for ``family``: what the host's text encoder encodes."""
    return torch.tensor([read_family_config(family)["smite"]["empty_prompt_ids"]], dtype=torch.long)


class PromptEncoding(nn.Module):
    """Stands in for the text encoder: the host's encoding ``[1,77,D]`` of the empty prompt.

    SMITE conditions every UNet pass on ``E("")`` with the learned tokens in place of its first
    positions, and without a tokenizer starts the tokens from ``E("")`` too: the empty prompt's
    ids are the only input the text encoder ever gets. Any other input is refused.
    """

    def __init__(self, ids: torch.Tensor, hidden: torch.Tensor):
        super().__init__()
        if hidden.ndim != 3 or hidden.shape[0] != 1 or hidden.shape[1] != ids.shape[-1]:
            raise BackboneError(f"text encoder: the empty prompt's encoding has shape {tuple(hidden.shape)}, "
                                f"expected [1,{ids.shape[-1]},D]")
        if not torch.isfinite(hidden).all():
            raise BackboneError("text encoder: the empty prompt's encoding has NaN or infinite values")
        self.register_buffer("ids", ids.detach().clone().long())
        self.register_buffer("hidden", hidden.detach().float().clone())
        self.config = SimpleNamespace(hidden_size=int(hidden.shape[-1]))

    def forward(self, input_ids: torch.Tensor, *args, **kwargs) -> tuple[torch.Tensor]:
        if tuple(input_ids.shape) != tuple(self.ids.shape) or not torch.equal(input_ids.cpu(), self.ids.cpu()):
            raise BackboneError("text encoder: this backbone uses the host's text encoder, which only gave the "
                                "empty prompt's encoding")
        return (self.hidden.to(input_ids.device),)


def _prefixed(unet_state: Mapping[str, torch.Tensor], vae_state: Mapping[str, torch.Tensor]) -> dict:
    """The two state dicts as one single-file (LDM) state dict, as ``checkpoints`` reads files."""
    state = {UNET_PREFIX + k: v for k, v in unet_state.items()}
    state.update({VAE_PREFIX + k: v for k, v in vae_state.items()})
    return state


def shared_components(unet_state: Mapping[str, torch.Tensor], vae_state: Mapping[str, torch.Tensor],
                      prompt: torch.Tensor, prediction_type: str, source: str,
                      name: str | None = None) -> Components:
    """SD components whose UNet and VAE are built on the meta device (no weights yet: :func:`bind`).

    ``unet_state`` / ``vae_state``: LDM-layout state dicts (only their keys and shapes are read here);
    ``prompt``: the host's encoding ``[1,77,D]`` of :func:`empty_prompt_ids`; ``prediction_type``:
    what the host's model predicts; ``source``: what it is (messages, embedding metadata).
    """
    from diffusers import AutoencoderKL, UNet2DConditionModel

    family = family_of(unet_state, name)
    if prediction_type not in PREDICTION_TYPES:
        raise refused(f"{name or 'this model'} with the {prediction_type} objective (SD 1.x/2.x predict epsilon "
                      "or v)")
    base = read_family_config(family)
    state = _prefixed(unet_state, vae_state)
    try:
        unet_cfg = unet_config_from_state(state, base["unet"], family)
        vae_cfg = vae_config_from_state(state, base["vae"])
    except (KeyError, IndexError, ValueError, AttributeError, StopIteration) as err:
        raise BackboneError(f"{source}: unrecognised {family} layout ({first_line(err)})") from err
    if family == "sd2" and prediction_type == "v_prediction":
        unet_cfg["upcast_attention"] = True  # as the single-file loader does (checkpoints.load_single_file)
    context = int(unet_cfg["cross_attention_dim"])
    if prompt.shape[-1] != context:
        raise BackboneError(f"{source}: the text encoder's width {prompt.shape[-1]} does not match the UNet's "
                            f"cross-attention width {context} (a CLIP from another model?)")
    ids = empty_prompt_ids(family)
    with parameters_on_meta():
        unet = UNet2DConditionModel.from_config(unet_cfg)
        vae = AutoencoderKL.from_config(vae_cfg)
    _follow_the_unet(vae, unet)
    return Components(
        unet=unet.eval().requires_grad_(False), vae=vae.eval().requires_grad_(False),
        text_encoder=PromptEncoding(ids, prompt).eval(), scheduler=ddim_scheduler(base["scheduler"], prediction_type),
        family=family, prediction_type=prediction_type, empty_prompt_ids=ids,
        resolution=int(base["smite"]["resolution"]), source=source, tokenizer=None,
        extra={"format": "shared", "prediction_type_source": "host"},
    )


def _follow_the_unet(vae: nn.Module, unet: nn.Module) -> None:
    """The host may keep its VAE in another dtype or on another device than its UNet: cast the encoder's
    input to the VAE's own weights and hand the latent moments back on the UNet's device."""

    def to_vae(module, args):
        weight = module.conv_in.weight
        return (args[0].to(weight.device, weight.dtype),) + tuple(args[1:])

    def to_unet(module, args, output):
        return output.to(next(unet.parameters()).device)

    vae.encoder.register_forward_pre_hook(to_vae)
    vae.quant_conv.register_forward_hook(to_unet)


def alias(tensor: torch.Tensor) -> torch.Tensor:
    """A plain tensor on ``tensor``'s storage (same offset, shape and strides): no copy, and usable by
    autograd even when ``tensor`` was made in inference mode."""
    with torch.inference_mode(False):
        out = torch.empty(0, dtype=tensor.dtype, device=tensor.device)
        return out.set_(tensor.untyped_storage(), tensor.storage_offset(), tensor.shape, tensor.stride())


def _storages(state: Mapping[str, torch.Tensor]) -> set[tuple[str, int]]:
    return {(str(t.device), t.untyped_storage().data_ptr()) for t in state.values()}


def shared_storage(module: nn.Module, state: Mapping[str, torch.Tensor]) -> list[str]:
    """Names of ``module``'s parameters that do *not* live in one of ``state``'s tensors (empty: no copy)."""
    known = _storages(state)
    return [n for n, p in module.named_parameters()
            if (str(p.device), p.untyped_storage().data_ptr()) not in known]


def _check_dtypes(state: Mapping[str, torch.Tensor], what: str) -> None:
    floats = {t.dtype for t in state.values() if t.is_floating_point()}
    odd = floats - set(FLOAT_DTYPES)
    if odd or len(floats) > 1:
        raise BackboneError(f"{what}: weights in {', '.join(sorted(map(str, floats)))}; SMITE needs one of float32, "
                            "float16 or bfloat16 for the whole model (start ComfyUI without fp8 weight options)")
    devices = {t.device for t in state.values()}
    if len(devices) > 1:
        raise BackboneError(f"{what}: weights spread over {', '.join(sorted(map(str, devices)))}; SMITE needs the "
                            "whole model on one device (ComfyUI low-VRAM mode?)")


def bind(components: Components, unet_state: Mapping[str, torch.Tensor],
         vae_state: Mapping[str, torch.Tensor]) -> tuple[torch.device, torch.dtype]:
    """Point the UNet's and VAE's parameters at aliases of the host's tensors (LDM layout, as they are now).

    Raises :class:`BackboneError` if a tensor is missing or of another shape, the weights mix dtypes or
    devices, or anything would be copied. Returns the UNet's device and dtype (the backbone's).
    """
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint, convert_ldm_vae_checkpoint

    _check_dtypes(unet_state, "UNet")
    _check_dtypes(vae_state, "VAE")
    aliased_unet = {k: alias(v) for k, v in unet_state.items()}
    aliased_vae = {k: alias(v) for k, v in vae_state.items()}
    state = _prefixed(aliased_unet, aliased_vae)
    source = components.source
    try:
        unet_sd = convert_ldm_unet_checkpoint(state, dict(components.unet.config))
        vae_sd = convert_ldm_vae_checkpoint(state, dict(components.vae.config))
    except Exception as err:  # the converters index the keys they expect: any failure is a layout mismatch
        raise BackboneError(f"{source}: cannot map the weights ({first_line(err)})") from err
    try:
        with torch.inference_mode(False):
            assign_state(components.unet, unet_sd, source, "UNet")
            assign_state(components.vae, vae_sd, source, "VAE")
    except BackboneError:
        unbind(components)  # never half bound
        raise
    copied = shared_storage(components.unet, aliased_unet) + shared_storage(components.vae, aliased_vae)
    if copied:
        unbind(components)
        raise BackboneError(f"{source}: {len(copied)} weights would be copied ({copied[0]}, ...)")
    first = next(components.unet.parameters())
    return first.device, first.dtype


def unbind(components: Components) -> None:
    """Let go of the host's tensors: every UNet and VAE parameter becomes an empty meta tensor again."""
    for model in (components.unet, components.vae):
        for module in model.modules():
            for name, param in list(module._parameters.items()):
                if param is not None and not param.is_meta:
                    module._parameters[name] = nn.Parameter(torch.empty(param.shape, dtype=param.dtype, device="meta"),
                                                            requires_grad=False)


def is_bound(components: Components) -> bool:
    """Whether the UNet currently holds real weights."""
    return not next(components.unet.parameters()).is_meta
