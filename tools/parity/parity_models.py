"""The SD 1.5 and SD 2.1 architectures at reduced width, with deterministic random weights.

Used by ``tools/parity/generate.py`` (which writes the diffusers folders that both the reference code
and ``smite_core`` load) and by ``tests/test_parity.py`` (which rebuilds the same folders from these
configs and the seed, so no weights are committed).

Block structure, layers per block, attention heads (SD 1.5: 8 heads; SD 2.1: head dim 64, which is 1,
2, 4, 4 heads at these widths), ``use_linear_projection`` and the cross-attention width (768 / 1024)
are SD's; only the channel widths are reduced (320-640-1280-1280 -> 64-128-256-256) and the text
encoder has 2 layers instead of 12 / 23 (its width, vocabulary and 77 positions are SD's).

Every parameter is filled from its own generator, seeded by the model seed and the CRC-32 of the
parameter's name, so the weights depend only on names and shapes (the checkpoint format), never on
the order in which a library version creates its modules. Matrices get N(0, gain / sqrt(fan_in)),
with a larger gain on the attention queries and keys so that attention maps are not flat; norms get
weight 1 + N(0, 0.1) and biases N(0, 0.05).

This module imports only torch, diffusers and transformers, so it runs in either environment.
"""

from __future__ import annotations

import copy
import json
import math
import zlib
from pathlib import Path

import torch
from safetensors.torch import save_file

SEED = 20250
WIDTHS = [64, 128, 256, 256]
K_SEGMENTS = 4

_UNET_COMMON = {
    "_class_name": "UNet2DConditionModel", "act_fn": "silu", "block_out_channels": WIDTHS,
    "center_input_sample": False,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "downsample_padding": 1, "dual_cross_attention": False, "flip_sin_to_cos": True, "freq_shift": 0,
    "in_channels": 4, "layers_per_block": 2, "mid_block_scale_factor": 1, "norm_eps": 1e-05,
    "norm_num_groups": 32, "num_class_embeds": None, "only_cross_attention": False, "out_channels": 4,
    "sample_size": 64,
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    "upcast_attention": False,
}

MODELS = {
    # SD 1.5: 8 heads everywhere, conv proj_in/proj_out, CLIP ViT-L/14 text width 768 (quick_gelu)
    "sd15": {
        "unet": {**_UNET_COMMON, "attention_head_dim": 8, "cross_attention_dim": 768, "use_linear_projection": False},
        "text": {"hidden_size": 768, "num_attention_heads": 12, "hidden_act": "quick_gelu", "pad_token_id": 1},
        "empty_pad": 49407,
    },
    # SD 2.1: head dim 64 (attention_head_dim lists heads per block, as SD 2.1's [5, 10, 20, 20] does at
    # 320-640-1280-1280), linear proj_in/proj_out, OpenCLIP ViT-H text width 1024 (gelu)
    "sd21": {
        "unet": {**_UNET_COMMON, "attention_head_dim": [w // 64 for w in WIDTHS], "cross_attention_dim": 1024,
                 "use_linear_projection": True},
        "text": {"hidden_size": 1024, "num_attention_heads": 16, "hidden_act": "gelu", "pad_token_id": 1},
        "empty_pad": 0,
    },
}

VAE_CONFIG = {
    "_class_name": "AutoencoderKL", "act_fn": "silu", "block_out_channels": [32, 32, 64, 64],
    "down_block_types": ["DownEncoderBlock2D"] * 4, "in_channels": 3, "latent_channels": 4, "layers_per_block": 1,
    "norm_num_groups": 32, "out_channels": 3, "sample_size": 512, "scaling_factor": 0.18215,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
}

SCHEDULER_CONFIG = {
    "_class_name": "DDIMScheduler", "beta_end": 0.012, "beta_schedule": "scaled_linear", "beta_start": 0.00085,
    "clip_sample": False, "num_train_timesteps": 1000, "prediction_type": "epsilon", "set_alpha_to_one": False,
    "steps_offset": 1, "trained_betas": None,
}


def text_config(name: str) -> dict:
    t = MODELS[name]["text"]
    return {"architectures": ["CLIPTextModel"], "model_type": "clip_text_model", "attention_dropout": 0.0,
            "bos_token_id": 0, "eos_token_id": 2, "dropout": 0.0, "initializer_factor": 1.0,
            "initializer_range": 0.02, "intermediate_size": 2 * t["hidden_size"], "layer_norm_eps": 1e-05,
            "max_position_embeddings": 77, "num_hidden_layers": 2, "projection_dim": 512, "vocab_size": 49408,
            **t}


def empty_prompt_ids(name: str) -> torch.Tensor:
    """``[1,77]`` ids of ``""``: BOS, EOS, then SD's padding (EOS for SD 1.x, 0 for SD 2.x)."""
    pad = MODELS[name]["empty_pad"]
    return torch.tensor([[49406, 49407] + [pad] * 75], dtype=torch.long)


def _seed_for(seed: int, name: str) -> int:
    name = name.removeprefix("text_model.")  # transformers 4.x names CLIP's parameters text_model.*, 5.x not
    return (seed * 1_000_003 + zlib.crc32(name.encode())) % (2 ** 63)


def fill_(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Overwrite every parameter deterministically (see the module docstring)."""
    with torch.no_grad():
        for name, param in sorted(model.named_parameters()):
            g = torch.Generator().manual_seed(_seed_for(seed, name))
            noise = torch.randn(param.shape, generator=g, dtype=torch.float32)
            leaf = name.rsplit(".", 1)[-1]
            if "norm" in name and param.ndim == 1:
                value = 1.0 + 0.1 * noise if leaf == "weight" else 0.05 * noise
            elif param.ndim == 1:
                value = 0.05 * noise
            elif "embedding" in name:
                value = 0.5 * noise
            else:
                fan_in = math.prod(param.shape[1:])
                gain = 1.5 if leaf == "weight" and name.split(".")[-2] in ("to_q", "to_k", "q_proj", "k_proj") else 1.0
                value = noise * (gain / math.sqrt(fan_in))
            param.copy_(value.to(param.dtype))
    return model


def checksum(model: torch.nn.Module) -> list[float]:
    """``[sum, sum of squares]`` of all parameters in float64: a cheap check that two builds are the same weights."""
    total = square = 0.0
    with torch.no_grad():
        for _, param in sorted(model.named_parameters(), key=lambda item: item[0].removeprefix("text_model.")):
            p = param.detach().double()
            total += float(p.sum())
            square += float(p.square().sum())
    return [total, square]


def build(name: str, seed: int = SEED):
    """``(unet, vae, text_encoder)`` of model ``name`` (``"sd15"`` or ``"sd21"``), filled deterministically."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    unet = UNet2DConditionModel.from_config(copy.deepcopy(MODELS[name]["unet"]))
    vae = AutoencoderKL.from_config(copy.deepcopy(VAE_CONFIG))
    text = CLIPTextModel(CLIPTextConfig(**text_config(name)))
    for i, model in enumerate((unet, vae, text)):
        fill_(model, seed + i)
    return unet.eval(), vae.eval(), text.eval()


def write_folder(name: str, root: str | Path, seed: int = SEED) -> Path:
    """Write model ``name`` as a diffusers folder (unet/, vae/, text_encoder/, scheduler/) under ``root``."""
    root = Path(root) / name
    unet, vae, text = build(name, seed)
    unet.save_pretrained(root / "unet", safe_serialization=True)
    vae.save_pretrained(root / "vae", safe_serialization=True)
    text.save_pretrained(root / "text_encoder", safe_serialization=True)
    # the layout of real SD folders (and of transformers 4.x): every key under text_model.
    state = {("" if k.startswith("text_model.") else "text_model.") + k: v.contiguous()
             for k, v in text.state_dict().items() if not k.endswith("position_ids")}
    save_file(state, str(root / "text_encoder" / "model.safetensors"), metadata={"format": "pt"})
    (root / "scheduler").mkdir(parents=True, exist_ok=True)
    (root / "scheduler" / "scheduler_config.json").write_text(json.dumps(SCHEDULER_CONFIG, indent=1))
    (root / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    return root
