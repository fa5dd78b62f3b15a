"""Stable Diffusion 1.x / 2.x checkpoints, read offline: diffusers folders, original single files,
and the real architectures with random weights (for tests).

Architectures come from the configs shipped in ``configs/sd1`` (SD 1.5) and ``configs/sd2``
(SD 2.1-base). For a single file the shape fields (channels, blocks, context width, layer counts)
are read from the checkpoint itself and the rest (head rule, activations, norms) from the family
config, so the UNet always matches the file (docs/method.md D14). Nothing is downloaded or unpickled.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import re
from pathlib import Path

import torch
from torch import nn

from ..errors import BackboneError, InputError
from .components import TEXT_LENGTH, Components, read_family_config

FAMILIES = ("sd1", "sd2")
PREDICTION_TYPES = ("epsilon", "v_prediction")
CONTEXT_WIDTH = {"sd1": 768, "sd2": 1024}  # text hidden size = UNet cross-attention width
SAFETENSORS_SUFFIXES = (".safetensors", ".sft")
TORCH_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
CLIP_PREFIX = "cond_stage_model.transformer."  # SD 1.x: CLIP ViT-L/14 text tower
OPEN_CLIP_PREFIX = "cond_stage_model.model."  # SD 2.x: OpenCLIP ViT-H text tower
SDXL_PREFIX = "conditioner.embedders."
_WANTED_PREFIXES = (UNET_PREFIX, VAE_PREFIX, CLIP_PREFIX, OPEN_CLIP_PREFIX)

# Heuristic for SD 2.x files without a prediction-type marker: v-prediction fine-tunes (2.0-v, 2.1)
# leave this LayerNorm bias visibly spread out, epsilon models (2.0-base, 2.1-base) do not.
V_PRED_PROBE = "output_blocks.{last}.1.transformer_blocks.0.norm1.bias"  # {last} = 11 for SD
V_PRED_STD_THRESHOLD = 0.09
_V_WORDS = {"v", "v_prediction", "v-prediction", "vpred", "v_pred", "v-pred", "true"}
_EPS_WORDS = {"epsilon", "eps", "false"}
_METADATA_KEYS = ("modelspec.prediction_type", "prediction_type", "ss_v_parameterization")


# ----------------------------------------------------------------------------------------------
# public entry points


def load_checkpoint(path, dtype=torch.float32, prediction_type: str | None = None) -> Components:
    """Load a diffusers pipeline folder or one original-layout file, whichever ``path`` is."""
    p = Path(path).expanduser()
    if p.is_dir():
        return load_diffusers_folder(p, dtype=dtype, prediction_type=prediction_type)
    if p.is_file():
        return load_single_file(p, dtype=dtype, prediction_type=prediction_type)
    raise BackboneError(f"backbone checkpoint not found: {p}")


def load_diffusers_folder(path, dtype=torch.float32, prediction_type: str | None = None) -> Components:
    """Load a local diffusers pipeline folder (``unet/``, ``vae/``, ``text_encoder/``, optional
    ``tokenizer/`` and ``scheduler/``).

    The family follows the text encoder width (768 -> sd1, 1024 -> sd2); the prediction type is
    ``prediction_type`` if given, else the folder's scheduler config, else epsilon.
    """
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel

    root = Path(path).expanduser()
    if not root.is_dir():
        raise BackboneError(f"diffusers folder not found: {root}")
    for sub in ("unet", "vae", "text_encoder"):
        if not (root / sub).is_dir():
            raise BackboneError(f"{root}: not a diffusers pipeline folder (no {sub}/ subfolder)")
    _check_prediction_type(prediction_type)

    def load(what, fn):
        try:
            return fn()
        except Exception as err:  # library errors vary by version; keep the first line
            raise BackboneError(f"cannot load {root / what}: {first_line(err)}") from err

    opts = dict(local_files_only=True, torch_dtype=dtype, low_cpu_mem_usage=False)
    unet = load("unet", lambda: UNet2DConditionModel.from_pretrained(root, subfolder="unet", **opts))
    vae = load("vae", lambda: AutoencoderKL.from_pretrained(root, subfolder="vae", **opts))
    text_encoder = load("text_encoder", lambda: CLIPTextModel.from_pretrained(
        root / "text_encoder", local_files_only=True))
    unet, vae, text_encoder = unet.eval(), vae.eval(), text_encoder.to(dtype).eval()

    hidden = int(text_encoder.config.hidden_size)
    family = next((f for f, w in CONTEXT_WIDTH.items() if w == hidden), None)
    if family is None:
        raise BackboneError(
            f"{root}: text encoder width {hidden} is neither SD 1.x (768) nor SD 2.x (1024)")
    if int(unet.config.cross_attention_dim) != hidden:
        raise BackboneError(f"{root}: UNet cross-attention width {unet.config.cross_attention_dim} "
                            f"does not match the text encoder width {hidden}")
    base = read_family_config(family)

    sched_cfg = dict(base["scheduler"])
    sched_file = root / "scheduler" / "scheduler_config.json"
    if sched_file.is_file():
        try:
            found = json.loads(sched_file.read_text())
        except (OSError, ValueError) as err:
            raise BackboneError(f"cannot read {sched_file}: {first_line(err)}") from err
        sched_cfg.update({k: v for k, v in found.items() if not k.startswith("_")})
    pred = prediction_type or sched_cfg.get("prediction_type") or "epsilon"
    if pred not in PREDICTION_TYPES:
        raise BackboneError(f"{sched_file}: unsupported prediction_type {pred!r}")

    tokenizer = None
    if (root / "tokenizer").is_dir():
        from transformers import CLIPTokenizer

        tokenizer = load("tokenizer", lambda: CLIPTokenizer.from_pretrained(
            root / "tokenizer", local_files_only=True))
        empty = tokenizer("", padding="max_length", max_length=TEXT_LENGTH, truncation=True,
                          return_tensors="pt").input_ids.long()
    else:
        empty = torch.tensor([base["smite"]["empty_prompt_ids"]], dtype=torch.long)

    return Components(
        unet=unet, vae=vae, text_encoder=text_encoder, scheduler=ddim_scheduler(sched_cfg, pred),
        family=family, prediction_type=pred, empty_prompt_ids=empty,
        resolution=int(base["smite"]["resolution"]), source=str(root), tokenizer=tokenizer,
        extra={"format": "diffusers",
               "prediction_type_source": "argument" if prediction_type else "scheduler config"},
    )


def load_single_file(path, dtype=torch.float32, prediction_type: str | None = None) -> Components:
    """Load one original-layout SD 1.x / 2.x checkpoint (``.safetensors``, or ``.ckpt``/``.pt``/``.pth``
    read with ``torch.load(weights_only=True)``).

    SD 1.x (CLIP text tower, 768-wide context) or SD 2.x (OpenCLIP, 1024) is detected from the keys.
    Prediction type: ``prediction_type`` if given, else a ``v_pred`` key or safetensors metadata,
    else for SD 2.x a weight heuristic (``V_PRED_PROBE`` std > 0.09 -> v-prediction), else epsilon.
    """
    file = Path(path).expanduser()
    if not file.is_file():
        raise BackboneError(f"checkpoint file not found: {file}")
    _check_prediction_type(prediction_type)

    state, metadata = _read_state_dict(file, dtype)
    _normalise_keys(state)
    family = _detect_family(state, file)
    base = read_family_config(family)
    try:
        unet_cfg = unet_config_from_state(state, base["unet"], family)
        vae_cfg = vae_config_from_state(state, base["vae"])
        text_cfg = _text_config(state, base["text_encoder"], family)
    except (KeyError, IndexError, ValueError, AttributeError, StopIteration) as err:
        raise BackboneError(f"{file}: unrecognised {family} layout ({first_line(err)})") from err

    pred, pred_source = _detect_prediction(state, metadata, family, unet_cfg, prediction_type)
    if family == "sd2" and pred == "v_prediction":
        unet_cfg["upcast_attention"] = True  # as SD 2.x 768-v: avoids fp16 attention overflow

    unet, vae, text_encoder = _build_on_meta(unet_cfg, vae_cfg, text_cfg)
    try:
        unet_sd, vae_sd, text_sd = _convert(state, family, unet_cfg, vae_cfg, text_encoder)
    except Exception as err:  # the converters index keys they assume; any failure = bad layout
        raise BackboneError(f"{file}: cannot convert the {family} weights ({first_line(err)})") from err
    del state
    text_sd = _fit_text_keys(text_sd, text_encoder)
    assign_state(unet, unet_sd, file, "UNet")
    assign_state(vae, vae_sd, file, "VAE")
    assign_state(text_encoder, text_sd, file, "text encoder")

    return Components(
        unet=unet.eval(), vae=vae.eval(), text_encoder=text_encoder.eval(),
        scheduler=ddim_scheduler(base["scheduler"], pred), family=family, prediction_type=pred,
        empty_prompt_ids=torch.tensor([base["smite"]["empty_prompt_ids"]], dtype=torch.long),
        resolution=int(base["smite"]["resolution"]), source=str(file), tokenizer=None,
        extra={"format": "single_file", "prediction_type_source": pred_source,
               "metadata": dict(metadata or {})},
    )


def random_components(family: str, seed: int = 0, dtype=torch.float32) -> Components:
    """The real SD 1.5 (``"sd1"``) or SD 2.1-base (``"sd2"``) architecture with random weights.

    Deterministic for a seed: weights and biases are small normal noise (std 0.02, which keeps
    activations finite), GroupNorm/LayerNorm weights 1 and biases 0. Built on the meta device,
    then filled (see ``_fill_random_``).
    """
    if family not in FAMILIES:
        raise InputError(f"unknown backbone family {family!r} (expected one of {', '.join(FAMILIES)})")
    cfg = read_family_config(family)
    unet, vae, text_encoder = _build_on_meta(cfg["unet"], cfg["vae"], cfg["text_encoder"])
    g = torch.Generator().manual_seed(int(seed))
    for model in (unet, vae, text_encoder):
        _fill_random_(model, g, dtype)
    return Components(
        unet=unet.eval(), vae=vae.eval(), text_encoder=text_encoder.eval(),
        scheduler=ddim_scheduler(cfg["scheduler"], "epsilon"), family=family, prediction_type="epsilon",
        empty_prompt_ids=torch.tensor([cfg["smite"]["empty_prompt_ids"]], dtype=torch.long),
        resolution=int(cfg["smite"]["resolution"]), source=f"random-{family}", tokenizer=None,
        extra={"format": "random", "seed": int(seed)},
    )


# ----------------------------------------------------------------------------------------------
# reading and recognising a single file


def first_line(err: BaseException) -> str:
    """The first line of an exception's message (for one-line errors)."""
    text = str(err).strip().splitlines()
    line = text[0] if text else type(err).__name__
    return line[:300]


def _check_prediction_type(prediction_type):
    if prediction_type is not None and prediction_type not in PREDICTION_TYPES:
        raise InputError(f"prediction_type must be one of {', '.join(PREDICTION_TYPES)}, "
                         f"got {prediction_type!r}")


def _read_state_dict(file: Path, dtype) -> tuple[dict, dict]:
    """Tensors under the SD prefixes (plus ``v_pred`` and SDXL markers), cast to ``dtype``."""

    def wanted(key: str) -> bool:
        return key.startswith(_WANTED_PREFIXES) or key == "v_pred"

    def cast(t):
        return t.to(dtype) if torch.is_tensor(t) and t.is_floating_point() else t

    def marker(key: str) -> bool:  # SDXL text towers: only their presence matters
        return key.startswith(SDXL_PREFIX)

    suffix = file.suffix.lower()
    if suffix in SAFETENSORS_SUFFIXES:
        from safetensors import safe_open

        try:
            with safe_open(str(file), framework="pt", device="cpu") as f:
                metadata = f.metadata() or {}
                state = {k: torch.empty(0) if marker(k) else cast(f.get_tensor(k))
                         for k in f.keys() if wanted(k) or marker(k)}
        except Exception as err:  # SafetensorError, OSError, ...: a damaged or foreign file
            raise BackboneError(f"cannot read {file} as safetensors: {first_line(err)}") from err
        return state, metadata
    if suffix in TORCH_SUFFIXES:
        try:
            obj = torch.load(str(file), map_location="cpu", weights_only=True)
        except Exception as err:
            raise BackboneError(
                f"cannot read {file} with torch.load(weights_only=True) (nothing is unpickled; "
                f"convert it to .safetensors): {first_line(err)}") from err
        if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
            obj = obj["state_dict"]
        if not isinstance(obj, dict):
            raise BackboneError(f"{file}: not a state dict (found {type(obj).__name__})")
        state = {}
        for k in list(obj):
            value = obj.pop(k)
            if isinstance(k, str) and torch.is_tensor(value) and (wanted(k) or marker(k)):
                state[k] = torch.empty(0) if marker(k) else cast(value)
        return state, {}
    raise BackboneError(f"{file}: unknown checkpoint type {file.suffix!r} (expected "
                        f"{', '.join(SAFETENSORS_SUFFIXES + TORCH_SUFFIXES)} or a diffusers folder)")


def _normalise_keys(state: dict) -> None:
    """Some SD 1.x files store the CLIP tower without its ``text_model.`` level: add it."""
    flat = [k for k in state if k.startswith(CLIP_PREFIX) and not k.startswith(CLIP_PREFIX + "text_model.")]
    for key in flat:
        state[CLIP_PREFIX + "text_model." + key[len(CLIP_PREFIX):]] = state.pop(key)


def _detect_family(state: dict, file: Path) -> str:
    """``"sd1"`` or ``"sd2"`` from the text tower keys and the UNet context width."""
    if any(k.startswith(SDXL_PREFIX) for k in state):
        raise BackboneError(f"{file}: SDXL checkpoints are not supported (only SD 1.x/2.x)")
    if UNET_PREFIX + "input_blocks.0.0.weight" not in state:
        raise BackboneError(f"{file}: not a Stable Diffusion 1.x/2.x checkpoint (no UNet weights "
                            f"'{UNET_PREFIX}input_blocks.*')")
    if not any(k.startswith(VAE_PREFIX) for k in state):
        raise BackboneError(f"{file}: no VAE weights ('{VAE_PREFIX}*') in the checkpoint")
    if any(k.startswith(OPEN_CLIP_PREFIX + "transformer.") for k in state):
        family, tower = "sd2", "OpenCLIP"
        token = OPEN_CLIP_PREFIX + "token_embedding.weight"
    elif any(k.startswith(CLIP_PREFIX + "text_model.") for k in state):
        family, tower = "sd1", "CLIP"
        token = CLIP_PREFIX + "text_model.embeddings.token_embedding.weight"
    else:
        raise BackboneError(f"{file}: no text encoder weights ('cond_stage_model.*') in the checkpoint")
    context = next((v.shape[1] for k, v in state.items()
                    if k.startswith(UNET_PREFIX) and k.endswith("attn2.to_k.weight")), None)
    width = state[token].shape[1] if token in state else None
    if context != CONTEXT_WIDTH[family] or width != CONTEXT_WIDTH[family]:
        raise BackboneError(f"{file}: unknown architecture ({tower} text tower of width {width}, UNet "
                            f"context width {context}; expected {CONTEXT_WIDTH[family]} for {family})")
    return family


def unet_config_from_state(state: dict, base: dict, family: str) -> dict:
    """The family UNet config with every shape field read from the ``model.diffusion_model.*`` keys."""
    p = UNET_PREFIX
    blocks = {".".join(k.split(".")[2:5]) for k in state if k.startswith(p)}  # e.g. input_blocks.4.1
    levels, current, i = [], None, 1
    while f"input_blocks.{i}.0" in blocks:
        if p + f"input_blocks.{i}.0.op.weight" in state:  # downsampler closes a level
            levels.append(current)
            current = None
        else:
            current = current or {"res": 0, "attn": False}
            current["res"] += 1
            current["ch"] = int(state[p + f"input_blocks.{i}.0.out_layers.3.weight"].shape[0])
            current["attn"] |= f"input_blocks.{i}.1" in blocks
        i += 1
    if current is not None:
        levels.append(current)
    if not levels or any(lv is None for lv in levels) or len({lv["res"] for lv in levels}) != 1:
        raise ValueError("irregular input_blocks")
    first_attn = next(k for k in state if k.startswith(p) and ".transformer_blocks." in k)
    attn_root = first_attn.split(".transformer_blocks.")[0]
    depth = len({k.split(".transformer_blocks.")[1].split(".")[0]
                 for k in state if k.startswith(attn_root + ".transformer_blocks.")})
    proj_in = state[attn_root + ".proj_in.weight"]
    channels = [lv["ch"] for lv in levels]
    cfg = dict(base)
    cfg.update(
        in_channels=int(state[p + "input_blocks.0.0.weight"].shape[1]),
        out_channels=int(state[p + "out.2.weight"].shape[0]),
        block_out_channels=channels,
        layers_per_block=levels[0]["res"],
        down_block_types=["CrossAttnDownBlock2D" if lv["attn"] else "DownBlock2D" for lv in levels],
        up_block_types=["CrossAttnUpBlock2D" if lv["attn"] else "UpBlock2D" for lv in levels[::-1]],
        cross_attention_dim=int(next(v.shape[1] for k, v in state.items()
                                     if k.startswith(p) and k.endswith("attn2.to_k.weight"))),
        use_linear_projection=proj_in.ndim == 2,
        transformer_layers_per_block=depth,
    )
    if family == "sd2":  # SD 2.x: 64-channel heads (LDM num_head_channels=64)
        if any(c % 64 for c in channels):
            raise ValueError(f"channels {channels} are not multiples of 64")
        cfg["attention_head_dim"] = [c // 64 for c in channels]
    # SD 1.x keeps 8 heads per layer (LDM num_heads=8) from the family config.
    if cfg["in_channels"] != 4 or cfg["out_channels"] != 4:
        raise ValueError(f"UNet with {cfg['in_channels']} input channels (inpainting/depth models "
                         f"are not supported)")
    return cfg


def vae_config_from_state(state: dict, base: dict) -> dict:
    """The family VAE config with channels and depth read from the ``first_stage_model.*`` keys."""
    p = VAE_PREFIX + "encoder.down."
    n = 1 + max(int(k[len(p):].split(".")[0]) for k in state if k.startswith(p))
    res = {int(k[len(p):].split(".")[2]) for k in state if k.startswith(p + "0.block.")}
    cfg = dict(base)
    cfg.update(
        in_channels=int(state[VAE_PREFIX + "encoder.conv_in.weight"].shape[1]),
        out_channels=int(state[VAE_PREFIX + "decoder.conv_out.weight"].shape[0]),
        block_out_channels=[int(state[f"{p}{i}.block.0.conv2.weight"].shape[0]) for i in range(n)],
        down_block_types=["DownEncoderBlock2D"] * n,
        up_block_types=["UpDecoderBlock2D"] * n,
        layers_per_block=len(res),
        latent_channels=int(state[VAE_PREFIX + "quant_conv.weight"].shape[0]) // 2,
    )
    return cfg


def _text_config(state: dict, base: dict, family: str) -> dict:
    """The family text-encoder config with sizes read from the ``cond_stage_model.*`` keys.

    SD 2.x uses the penultimate OpenCLIP layer, so the model gets one layer fewer than the file.
    """
    if family == "sd1":
        p = CLIP_PREFIX + "text_model."
        token = state[p + "embeddings.token_embedding.weight"]
        position = state[p + "embeddings.position_embedding.weight"]
        layer_re = re.compile(re.escape(p) + r"encoder\.layers\.(\d+)\.")
        fc1 = "encoder.layers.0.mlp.fc1.weight"
        drop_last = 0
    else:
        p = OPEN_CLIP_PREFIX
        token = state[p + "token_embedding.weight"]
        position = state[p + "positional_embedding"]
        layer_re = re.compile(re.escape(p) + r"transformer\.resblocks\.(\d+)\.")
        fc1 = "transformer.resblocks.0.mlp.c_fc.weight"
        drop_last = 1
    layers = {int(m.group(1)) for m in map(layer_re.match, state) if m}
    hidden = int(token.shape[1])
    cfg = dict(base)
    cfg.update(
        vocab_size=int(token.shape[0]),
        hidden_size=hidden,
        max_position_embeddings=int(position.shape[0]),
        num_hidden_layers=len(layers) - drop_last,
        intermediate_size=int(state[p + fc1].shape[0]),
        num_attention_heads=max(1, hidden // 64),  # both towers use 64-wide heads
    )
    if cfg["num_hidden_layers"] < 1 or cfg["max_position_embeddings"] < TEXT_LENGTH:
        raise ValueError("text encoder too small")
    return cfg


def _parse_prediction(value) -> str | None:
    word = str(value).strip().lower()
    return "v_prediction" if word in _V_WORDS else "epsilon" if word in _EPS_WORDS else None


def _detect_prediction(state, metadata, family, unet_cfg, explicit) -> tuple[str, str]:
    """(prediction type, where it came from)."""
    if explicit:
        return explicit, "argument"
    if "v_pred" in state:
        return "v_prediction", "v_pred key"
    for key in _METADATA_KEYS:
        found = _parse_prediction(metadata.get(key)) if key in (metadata or {}) else None
        if found:
            return found, f"metadata {key}"
    if family == "sd2":
        last = len(unet_cfg["block_out_channels"]) * (unet_cfg["layers_per_block"] + 1) - 1
        bias = state.get(UNET_PREFIX + V_PRED_PROBE.format(last=last))
        if bias is not None:
            spread = float(bias.float().std(unbiased=False))
            return ("v_prediction" if spread > V_PRED_STD_THRESHOLD else "epsilon"), "heuristic"
    return "epsilon", "default"


# ----------------------------------------------------------------------------------------------
# building models


@contextlib.contextmanager
def parameters_on_meta():
    """While building: put parameters on the meta device (no memory, no random init) but keep
    buffers real (e.g. CLIP's non-persistent ``position_ids``). Patches ``nn.Module`` briefly."""
    register = nn.Module.register_parameter

    def register_on_meta(module, name, param):
        if param is not None and param.device.type != "meta":
            param = nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)
        register(module, name, param)

    nn.Module.register_parameter = register_on_meta
    try:
        yield
    finally:
        nn.Module.register_parameter = register


def _build_on_meta(unet_cfg: dict, vae_cfg: dict, text_cfg: dict):
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    with parameters_on_meta():
        unet = UNet2DConditionModel.from_config(unet_cfg)
        vae = AutoencoderKL.from_config(vae_cfg)
        text_encoder = CLIPTextModel(CLIPTextConfig.from_dict(text_cfg))
    return unet, vae, text_encoder


def _convert(state, family, unet_cfg, vae_cfg, text_encoder):
    """diffusers' own LDM -> diffusers key converters, applied per component."""
    from diffusers.loaders.single_file_utils import (
        convert_ldm_clip_checkpoint,
        convert_ldm_unet_checkpoint,
        convert_ldm_vae_checkpoint,
        convert_open_clip_checkpoint,
    )

    unet_sd = convert_ldm_unet_checkpoint(state, unet_cfg)
    vae_sd = convert_ldm_vae_checkpoint(state, vae_cfg)
    if family == "sd1":
        text_sd = convert_ldm_clip_checkpoint(state)
    else:
        text_sd = convert_open_clip_checkpoint(text_encoder, state)
    return unet_sd, vae_sd, text_sd


def _fit_text_keys(text_sd: dict, text_encoder) -> dict:
    """Match the ``text_model.`` prefix to the installed transformers (dropped in v5) and drop what
    the diffusers text encoder does not hold (``position_ids``, projection, layers past the last)."""
    model_keys = text_encoder.state_dict().keys()
    prefixed = any(k.startswith("text_model.") for k in model_keys)
    n_layers = text_encoder.config.num_hidden_layers
    out = {}
    for key, value in text_sd.items():
        bare = key[len("text_model."):] if key.startswith("text_model.") else key
        m = re.match(r"encoder\.layers\.(\d+)\.", bare)
        if bare.endswith("position_ids") or bare.startswith("text_projection") or (
                m and int(m.group(1)) >= n_layers):
            continue
        out[("text_model." + bare) if prefixed else bare] = value
    return out


def assign_state(model: nn.Module, state: dict, file: Path, what: str):
    """Load converted weights into a meta-built model by assignment; any mismatch is an error."""
    try:
        missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    except RuntimeError as err:  # size mismatch
        lines = [ln.strip() for ln in str(err).splitlines() if "size mismatch" in ln]
        raise BackboneError(f"{file}: {what} weights do not fit the architecture: "
                            f"{(lines or [first_line(err)])[0]}") from err
    if missing or unexpected:
        raise BackboneError(f"{file}: {what} weights do not match the architecture: "
                            f"{len(missing)} missing {sorted(missing)[:3]}, "
                            f"{len(unexpected)} unexpected {sorted(unexpected)[:3]}")
    left = [n for n, t in list(model.named_parameters()) + list(model.named_buffers()) if t.is_meta]
    if left:
        raise BackboneError(f"{file}: {what} weights missing for {left[:3]}")


_NOISE_PERIOD = 4_194_301  # prime, so the tiled noise never lines up with rows or channels


def _fill_random_(model: nn.Module, generator: torch.Generator, dtype):
    """Materialise meta parameters: norms weight 1 / bias 0, everything else N(0, 0.02).

    The noise is one seeded block of ``_NOISE_PERIOD`` normals read cyclically from a random offset
    per tensor: deterministic, and about memcpy speed (drawing 1.3 G normals one by one is slow).
    """
    block = torch.randn(_NOISE_PERIOD, generator=generator) * 0.02
    block = torch.cat([block, block])
    norms = (nn.GroupNorm, nn.LayerNorm)
    for module in model.modules():
        for name, param in list(module._parameters.items()):
            if param is None:
                continue
            if isinstance(module, norms):
                value = torch.full(param.shape, 1.0 if name == "weight" else 0.0, dtype=dtype)
            else:
                value = torch.empty(param.numel(), dtype=dtype)
                start = int(torch.randint(_NOISE_PERIOD, (1,), generator=generator))
                done = 0
                while done < value.numel():
                    n = min(_NOISE_PERIOD, value.numel() - done)
                    value[done:done + n] = block[start:start + n]
                    done, start = done + n, (start + n) % _NOISE_PERIOD
                value = value.view(param.shape)
            setattr(module, name, nn.Parameter(value, requires_grad=param.requires_grad))


def ddim_scheduler(cfg: dict, prediction_type: str):
    """A ``DDIMScheduler`` from a config dict, keeping only the keys DDIM understands."""
    from diffusers import DDIMScheduler

    accepted = set(inspect.signature(DDIMScheduler.__init__).parameters) - {"self"}
    kept = {k: v for k, v in cfg.items() if k in accepted}
    kept["prediction_type"] = prediction_type
    return DDIMScheduler.from_config(kept)
