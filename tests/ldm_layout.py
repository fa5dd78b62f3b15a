"""Test helper: write diffusers/transformers weights in the original Stable Diffusion (LDM) layout.

The inverse of what the single-file converters expect, written for the tests from the published
layout of the original checkpoints: ``model.diffusion_model.*`` (UNet), ``first_stage_model.*``
(VAE), ``cond_stage_model.transformer.text_model.*`` (SD 1.x CLIP) or ``cond_stage_model.model.*``
(SD 2.x OpenCLIP, one more transformer layer than the diffusers text encoder, fused q/k/v).
"""

from __future__ import annotations

import re

import torch

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
CLIP_PREFIX = "cond_stage_model.transformer."
OPEN_CLIP_PREFIX = "cond_stage_model.model."

_UNET_TOP = {
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "conv_in": "input_blocks.0.0",
    "conv_norm_out": "out.0",
    "conv_out": "out.2",
}
_UNET_RESNET = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "time_emb_proj": "emb_layers.1",
    "conv_shortcut": "skip_connection",
}
_VAE_TOP = {
    "encoder.conv_norm_out": "encoder.norm_out",
    "decoder.conv_norm_out": "decoder.norm_out",
}
_VAE_ATTN = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}
_CLIP_LAYER = {
    "layer_norm1": "ln_1",
    "layer_norm2": "ln_2",
    "mlp.fc1": "mlp.c_fc",
    "mlp.fc2": "mlp.c_proj",
    "self_attn.out_proj": "attn.out_proj",
}


def _split_leaf(rest: str) -> tuple[str, str]:
    head, _, leaf = rest.rpartition(".")
    return head, leaf


def unet_to_ldm(state: dict, layers_per_block: int) -> dict:
    """diffusers ``UNet2DConditionModel`` state dict -> ``model.diffusion_model.*`` keys."""
    L = layers_per_block
    up_with_attn = {int(k.split(".")[1]) for k in state if re.match(r"up_blocks\.\d+\.attentions\.", k)}
    out = {}
    for key, value in state.items():
        head, leaf = _split_leaf(key)
        parts = head.split(".")
        if head in _UNET_TOP:
            new = _UNET_TOP[head]
        elif parts[0] == "down_blocks":
            b, kind = int(parts[1]), parts[2]
            if kind == "resnets":
                new = f"input_blocks.{1 + b * (L + 1) + int(parts[3])}.0.{_UNET_RESNET[parts[4]]}"
            elif kind == "attentions":
                new = f"input_blocks.{1 + b * (L + 1) + int(parts[3])}.1." + ".".join(parts[4:])
            else:  # downsamplers.0.conv
                new = f"input_blocks.{1 + b * (L + 1) + L}.0.op"
        elif parts[0] == "mid_block":
            if parts[1] == "resnets":
                new = f"middle_block.{2 * int(parts[2])}.{_UNET_RESNET[parts[3]]}"
            else:
                new = "middle_block.1." + ".".join(parts[3:])
        elif parts[0] == "up_blocks":
            b, kind = int(parts[1]), parts[2]
            if kind == "resnets":
                new = f"output_blocks.{b * (L + 1) + int(parts[3])}.0.{_UNET_RESNET[parts[4]]}"
            elif kind == "attentions":
                new = f"output_blocks.{b * (L + 1) + int(parts[3])}.1." + ".".join(parts[4:])
            else:  # upsamplers.0.conv
                slot = 2 if b in up_with_attn else 1
                new = f"output_blocks.{b * (L + 1) + L}.{slot}.conv"
        else:
            raise KeyError(f"unexpected UNet key {key}")
        out[UNET_PREFIX + new + "." + leaf] = value
    return out


def _vae_resnet(name: str) -> str:
    return "nin_shortcut" if name == "conv_shortcut" else name


def vae_to_ldm(state: dict) -> dict:
    """diffusers ``AutoencoderKL`` state dict -> ``first_stage_model.*`` keys (conv 1x1 attention)."""
    n_up = 1 + max(int(k.split(".")[2]) for k in state if k.startswith("decoder.up_blocks."))
    out = {}
    for key, value in state.items():
        head, leaf = _split_leaf(key)
        parts = head.split(".")
        side = parts[0]
        if head in _VAE_TOP:
            new = _VAE_TOP[head]
        elif len(parts) > 1 and parts[1] == "down_blocks":
            i = parts[2]
            if parts[3] == "resnets":
                new = f"{side}.down.{i}.block.{parts[4]}.{_vae_resnet(parts[5])}"
            else:
                new = f"{side}.down.{i}.downsample.conv"
        elif len(parts) > 1 and parts[1] == "up_blocks":
            i = n_up - 1 - int(parts[2])
            if parts[3] == "resnets":
                new = f"{side}.up.{i}.block.{parts[4]}.{_vae_resnet(parts[5])}"
            else:
                new = f"{side}.up.{i}.upsample.conv"
        elif len(parts) > 1 and parts[1] == "mid_block":
            if parts[2] == "resnets":
                new = f"{side}.mid.block_{int(parts[3]) + 1}.{_vae_resnet(parts[4])}"
            else:
                new = f"{side}.mid.attn_1." + _VAE_ATTN[".".join(parts[4:])]
                if leaf == "weight" and value.ndim == 2:
                    value = value[:, :, None, None]
        else:
            new = head  # quant_conv, post_quant_conv, encoder/decoder conv_in, conv_out
        out[VAE_PREFIX + new + "." + leaf] = value
    return out


def _text_keys(state: dict) -> dict:
    """Strip the ``text_model.`` prefix (present before transformers 5, absent after)."""
    return {k[len("text_model."):] if k.startswith("text_model.") else k: v for k, v in state.items()}


def clip_to_ldm(state: dict, with_position_ids: bool = True) -> dict:
    """transformers ``CLIPTextModel`` state dict -> SD 1.x ``cond_stage_model.transformer.*`` keys."""
    state = _text_keys(state)
    out = {CLIP_PREFIX + "text_model." + k: v for k, v in state.items()}
    if with_position_ids:
        n = state["embeddings.position_embedding.weight"].shape[0]
        out[CLIP_PREFIX + "text_model.embeddings.position_ids"] = torch.arange(n)[None]
    return out


def open_clip_to_ldm(state: dict, projection_dim: int = 16, seed: int = 0) -> dict:
    """transformers ``CLIPTextModel`` state dict -> SD 2.x ``cond_stage_model.model.*`` (OpenCLIP).

    Adds what the original file holds and the diffusers model drops: one extra final resblock,
    ``text_projection`` ``[width, projection_dim]`` and ``logit_scale`` (random values).
    """
    state = _text_keys(state)
    p = OPEN_CLIP_PREFIX
    out = {
        p + "token_embedding.weight": state["embeddings.token_embedding.weight"],
        p + "positional_embedding": state["embeddings.position_embedding.weight"],
        p + "ln_final.weight": state["final_layer_norm.weight"],
        p + "ln_final.bias": state["final_layer_norm.bias"],
    }
    layers = sorted({int(k.split(".")[2]) for k in state if k.startswith("encoder.layers.")})
    for i in layers:
        src = f"encoder.layers.{i}."
        dst = f"{p}transformer.resblocks.{i}."
        for kind in ("weight", "bias"):
            out[dst + f"attn.in_proj_{kind}"] = torch.cat(
                [state[src + f"self_attn.{q}_proj.{kind}"] for q in ("q", "k", "v")]
            )
            for a, b in _CLIP_LAYER.items():
                out[dst + f"{b}.{kind}"] = state[src + f"{a}.{kind}"]
    g = torch.Generator().manual_seed(seed)
    last = f"{p}transformer.resblocks.{layers[-1]}."
    extra = f"{p}transformer.resblocks.{layers[-1] + 1}."
    for k in [k for k in out if k.startswith(last)]:
        v = out[k]
        out[extra + k[len(last):]] = (torch.randn(v.shape, generator=g) * 0.02).to(v.dtype)
    width = state["embeddings.token_embedding.weight"].shape[1]
    dtype = state["embeddings.token_embedding.weight"].dtype
    out[p + "text_projection"] = (torch.randn(width, projection_dim, generator=g) * 0.02).to(dtype)
    out[p + "logit_scale"] = torch.tensor(4.6052, dtype=dtype)
    return out


def to_ldm_checkpoint(unet, vae, text_encoder, family: str, extras: bool = True) -> dict:
    """Whole single-file state dict of an SD 1.x (``family="sd1"``) or 2.x (``"sd2"``) model.

    ``extras`` adds the non-model entries real files carry (``betas``, ``alphas_cumprod``,
    ``model_ema.*`` counters) that a loader must ignore.
    """
    out = {}
    out.update(unet_to_ldm(unet.state_dict(), unet.config.layers_per_block))
    out.update(vae_to_ldm(vae.state_dict()))
    text = text_encoder.state_dict()
    out.update(clip_to_ldm(text) if family == "sd1" else open_clip_to_ldm(text))
    if extras:
        betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
        out["betas"] = betas.float()
        out["alphas_cumprod"] = torch.cumprod(1 - betas, 0).float()
        out["model_ema.decay"] = torch.tensor(0.9999)
        out["model_ema.num_updates"] = torch.tensor(0, dtype=torch.int32)
    return {k: v.contiguous() for k, v in out.items()}
