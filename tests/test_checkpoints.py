"""Tests for smite_core.model.checkpoints: single-file and diffusers-folder loading, detection, errors.

Fast tests use small UNet/VAE/text encoders in the SD layout (real context widths 768/1024, few
channels), written through ``tests/ldm_layout.py``; the full SD 1.5 / 2.1-base architectures with
random weights run under ``-m slow``.
"""

from __future__ import annotations

import json
import os
import re
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch
from ldm_layout import UNET_PREFIX, to_ldm_checkpoint
from safetensors.torch import save_file

from smite_core.errors import BackboneError, InputError
from smite_core.model.checkpoints import (
    load_checkpoint,
    load_diffusers_folder,
    load_single_file,
    random_components,
)
from smite_core.model.components import read_family_config

TEXT = {
    "sd1": dict(hidden_size=768, num_attention_heads=12, num_hidden_layers=2, hidden_act="quick_gelu"),
    "sd2": dict(hidden_size=1024, num_attention_heads=16, num_hidden_layers=1, hidden_act="gelu"),
}


def tiny_models(family: str, seed: int = 0, text_overrides: dict | None = None):
    """Small UNet / VAE / CLIP text encoder shaped like ``family`` (SD head rules, real widths)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    if family == "sd1":
        unet = UNet2DConditionModel(
            sample_size=8, block_out_channels=(32, 64), layers_per_block=2,
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=768, attention_head_dim=8, norm_num_groups=32)
    else:
        unet = UNet2DConditionModel(
            sample_size=8, block_out_channels=(64, 128), layers_per_block=1,
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=1024, attention_head_dim=(1, 2), use_linear_projection=True,
            norm_num_groups=32)
    vae = AutoencoderKL(
        block_out_channels=(32, 64), down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2, layers_per_block=1, latent_channels=4,
        norm_num_groups=32, sample_size=32)
    text_cfg = dict(TEXT[family], intermediate_size=64, vocab_size=1000, max_position_embeddings=77,
                    bos_token_id=0, eos_token_id=2, pad_token_id=1)
    text_cfg.update(text_overrides or {})
    text = CLIPTextModel(CLIPTextConfig(**text_cfg))
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for model in (unet, vae, text):  # every tensor distinct, so a swapped mapping shows
            for p in model.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return unet.eval(), vae.eval(), text.eval()


def set_probe_bias(unet, std: float, seed: int = 0):
    """Set the LayerNorm bias the SD 2.x v-prediction heuristic looks at."""
    g = torch.Generator().manual_seed(seed)
    bias = unet.up_blocks[-1].attentions[-1].transformer_blocks[0].norm1.bias
    with torch.no_grad():
        bias.copy_(torch.randn(bias.shape, generator=g) * std)


def assert_same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sorted(sa) == sorted(sb)
    for k in sa:
        assert sa[k].dtype == sb[k].dtype, k
        assert torch.equal(sa[k], sb[k]), k


def write_single(tmp_path, models, family, name="model.safetensors", metadata=None, edit=None):
    state = to_ldm_checkpoint(*models, family)
    if edit:
        edit(state)
    path = tmp_path / name
    if path.suffix == ".safetensors":
        save_file(state, str(path), metadata=metadata)
    else:
        torch.save({"state_dict": state, "global_step": 5}, str(path))
    return path


@pytest.fixture(scope="module", params=["sd1", "sd2"])
def family_models(request):
    family = request.param
    models = tiny_models(family)
    set_probe_bias(models[0], 0.02)
    return family, models


def _forward(unet, text, ids):
    with torch.no_grad():
        context = text(ids).last_hidden_state
        g = torch.Generator().manual_seed(3)
        x = torch.randn(1, 4, 8, 8, generator=g)
        return context, unet(x, torch.tensor([500]), encoder_hidden_states=context).sample


# ---------------------------------------------------------------------------------------------
# single file


def test_single_file_round_trip(tmp_path, family_models):
    family, models = family_models
    path = write_single(tmp_path, models, family)
    comps = load_single_file(path)
    assert comps.family == family
    assert comps.prediction_type == "epsilon"
    assert comps.extra["prediction_type_source"] == ("heuristic" if family == "sd2" else "default")
    for original, loaded in zip(models, (comps.unet, comps.vae, comps.text_encoder)):
        assert_same_weights(original, loaded)
    # same architecture, not only same tensors: heads, activations and projections agree
    ids = comps.empty_prompt_ids.clamp(max=999)
    ctx_a, out_a = _forward(models[0], models[2], ids)
    ctx_b, out_b = _forward(comps.unet, comps.text_encoder, ids)
    torch.testing.assert_close(ctx_b, ctx_a, rtol=0, atol=0)
    torch.testing.assert_close(out_b, out_a, rtol=1e-5, atol=1e-6)  # kernels may sum differently
    with torch.no_grad():
        img = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
        torch.testing.assert_close(comps.vae.encode(img).latent_dist.mean,
                                   models[1].encode(img).latent_dist.mean, rtol=1e-5, atol=1e-6)

    smite = read_family_config(family)["smite"]
    assert comps.empty_prompt_ids.shape == (1, 77) and comps.empty_prompt_ids.dtype == torch.long
    assert comps.empty_prompt_ids[0].tolist() == smite["empty_prompt_ids"]
    assert comps.empty_prompt_ids[0, 2].item() == (49407 if family == "sd1" else 0)
    assert comps.resolution == 512 and comps.tokenizer is None and comps.source == str(path)
    sched = comps.scheduler
    assert type(sched).__name__ == "DDIMScheduler"
    assert sched.config.beta_schedule == "scaled_linear" and sched.config.num_train_timesteps == 1000
    assert sched.config.steps_offset == 1 and not sched.config.clip_sample
    assert not sched.config.set_alpha_to_one and sched.config.prediction_type == "epsilon"
    assert comps.vae.config.scaling_factor == 0.18215
    assert comps.unet.config.cross_attention_dim == (768 if family == "sd1" else 1024)


def test_single_file_clip_without_text_model_level(tmp_path):
    models = tiny_models("sd1", seed=10)

    def flatten(state):
        for k in [k for k in state if k.startswith("cond_stage_model.transformer.text_model.")]:
            state[k.replace("transformer.text_model.", "transformer.")] = state.pop(k)

    comps = load_single_file(write_single(tmp_path, models, "sd1", edit=flatten))
    assert comps.family == "sd1"
    assert_same_weights(models[2], comps.text_encoder)


def test_single_file_ckpt_and_dtype(tmp_path):
    models = tiny_models("sd1", seed=4)
    path = write_single(tmp_path, models, "sd1", name="model.ckpt")
    comps = load_checkpoint(path, dtype=torch.float16)
    assert comps.family == "sd1"
    for original, loaded in zip(models, (comps.unet, comps.vae, comps.text_encoder)):
        assert_same_weights(original.to(torch.float16), loaded)
        assert all(p.dtype == torch.float16 for p in loaded.parameters())


@pytest.mark.parametrize("std, expected", [(0.2, "v_prediction"), (0.02, "epsilon")])
def test_v_prediction_heuristic(tmp_path, std, expected):
    models = tiny_models("sd2", seed=1)
    set_probe_bias(models[0], std)
    path = write_single(tmp_path, models, "sd2")
    comps = load_single_file(path)
    assert comps.prediction_type == expected
    assert comps.extra["prediction_type_source"] == "heuristic"
    assert comps.scheduler.config.prediction_type == expected
    assert comps.unet.config.upcast_attention == (expected == "v_prediction")
    assert_same_weights(models[0], comps.unet)
    # the explicit argument wins over the heuristic
    other = "epsilon" if expected == "v_prediction" else "v_prediction"
    forced = load_checkpoint(path, prediction_type=other)
    assert forced.prediction_type == other and forced.scheduler.config.prediction_type == other
    assert forced.extra["prediction_type_source"] == "argument"


def test_sd1_ignores_heuristic_but_honours_markers(tmp_path):
    models = tiny_models("sd1", seed=2)
    set_probe_bias(models[0], 0.3)
    assert load_single_file(write_single(tmp_path, models, "sd1")).prediction_type == "epsilon"
    marked = write_single(tmp_path, models, "sd1", name="vpred.safetensors",
                          edit=lambda s: s.__setitem__("v_pred", torch.zeros(0)))
    comps = load_single_file(marked)
    assert comps.prediction_type == "v_prediction"
    assert comps.extra["prediction_type_source"] == "v_pred key"


@pytest.mark.parametrize("metadata, expected", [
    ({"modelspec.prediction_type": "v"}, "v_prediction"),
    ({"ss_v_parameterization": "True"}, "v_prediction"),
    ({"prediction_type": "epsilon"}, "epsilon"),
])
def test_prediction_from_metadata(tmp_path, metadata, expected):
    models = tiny_models("sd2", seed=3)
    set_probe_bias(models[0], 0.3 if expected == "epsilon" else 0.01)  # metadata beats heuristic
    comps = load_single_file(write_single(tmp_path, models, "sd2", metadata=metadata))
    assert comps.prediction_type == expected
    assert comps.extra["prediction_type_source"].startswith("metadata")


def test_bad_prediction_type_argument(tmp_path, family_models):
    family, models = family_models
    with pytest.raises(InputError, match="prediction_type"):
        load_single_file(write_single(tmp_path, models, family), prediction_type="sample")


# ---------------------------------------------------------------------------------------------
# diffusers folder


def _save_folder(root, models, scheduler: dict | None = None, tokenizer=None):
    unet, vae, text = models
    unet.save_pretrained(root / "unet")
    vae.save_pretrained(root / "vae")
    text.save_pretrained(root / "text_encoder")
    if scheduler is not None:
        (root / "scheduler").mkdir()
        (root / "scheduler" / "scheduler_config.json").write_text(json.dumps(scheduler))
    if tokenizer is not None:
        tokenizer.save_pretrained(root / "tokenizer")
    return root


def test_diffusers_folder_round_trip_without_tokenizer(tmp_path, family_models):
    family, models = family_models
    root = _save_folder(tmp_path / "pipe", models)
    comps = load_checkpoint(root)
    assert comps.family == family and comps.prediction_type == "epsilon"
    assert comps.tokenizer is None and comps.source == str(root) and comps.resolution == 512
    assert comps.empty_prompt_ids[0].tolist() == read_family_config(family)["smite"]["empty_prompt_ids"]
    assert type(comps.scheduler).__name__ == "DDIMScheduler"
    assert comps.scheduler.config.steps_offset == 1 and not comps.scheduler.config.clip_sample
    for original, loaded in zip(models, (comps.unet, comps.vae, comps.text_encoder)):
        assert_same_weights(original, loaded)


def test_diffusers_folder_scheduler_and_tokenizer(tmp_path):
    from transformers import CLIPTokenizer

    models = tiny_models("sd2", seed=5)
    vocab = {"!": 0, "a</w>": 1, "b</w>": 2, "<|startoftext|>": 49406, "<|endoftext|>": 49407}
    tokenizer = CLIPTokenizer(vocab=vocab, merges=[], pad_token="!")  # SD 2.x pads with "!"
    pndm = {"_class_name": "PNDMScheduler", "beta_end": 0.012, "beta_schedule": "scaled_linear",
            "beta_start": 0.00085, "num_train_timesteps": 1000, "prediction_type": "v_prediction",
            "set_alpha_to_one": False, "skip_prk_steps": True, "steps_offset": 1}
    root = _save_folder(tmp_path / "pipe", models, scheduler=pndm, tokenizer=tokenizer)
    comps = load_diffusers_folder(root)
    assert comps.prediction_type == "v_prediction"
    assert comps.scheduler.config.prediction_type == "v_prediction"
    assert comps.scheduler.config.clip_sample is False  # from the shipped DDIM defaults
    assert comps.tokenizer is not None
    assert comps.empty_prompt_ids[0].tolist() == read_family_config("sd2")["smite"]["empty_prompt_ids"]
    assert load_diffusers_folder(root, prediction_type="epsilon").prediction_type == "epsilon"


def test_diffusers_folder_unknown_width(tmp_path):
    models = tiny_models("sd1", seed=6, text_overrides=dict(hidden_size=64, num_attention_heads=1))
    root = _save_folder(tmp_path / "pipe", models)
    with pytest.raises(BackboneError, match=re.escape(str(root))):
        load_diffusers_folder(root)


# ---------------------------------------------------------------------------------------------
# errors


def _raises_naming(path, fn=load_checkpoint, **kwargs):
    with pytest.raises(BackboneError, match=re.escape(str(path))) as info:
        fn(path, **kwargs)
    assert "\n" not in str(info.value)
    return str(info.value)


def test_missing_paths(tmp_path):
    for fn in (load_checkpoint, load_single_file, load_diffusers_folder):
        _raises_naming(tmp_path / "nope.safetensors", fn)
    (tmp_path / "half").mkdir()
    assert "unet" in _raises_naming(tmp_path / "half")


def test_garbage_and_truncated_files(tmp_path):
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(os.urandom(4096))
    _raises_naming(garbage)
    bad_ckpt = tmp_path / "garbage.ckpt"
    bad_ckpt.write_bytes(os.urandom(4096))
    _raises_naming(bad_ckpt)
    odd = tmp_path / "weights.txt"
    odd.write_text("hello")
    _raises_naming(odd)

    good = write_single(tmp_path, tiny_models("sd1", seed=7), "sd1")
    data = good.read_bytes()
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(data[: len(data) // 2])
    _raises_naming(truncated)
    header_only = tmp_path / "header.safetensors"
    header_only.write_bytes(data[:20])
    _raises_naming(header_only)


class NotAllowed:
    pass


def test_ckpt_with_pickled_object_is_refused(tmp_path):
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {"x": torch.zeros(1)}, "callback": NotAllowed()}, str(path))
    assert "weights_only" in _raises_naming(path)


def test_foreign_layouts(tmp_path):
    models = tiny_models("sd1", seed=8)

    def sdxl(state):
        old, new = "cond_stage_model.transformer.", "conditioner.embedders.0.transformer."
        for k in [k for k in state if k.startswith(old)]:
            state[new + k[len(old):]] = state.pop(k)

    assert "SDXL" in _raises_naming(write_single(tmp_path, models, "sd1", "xl.safetensors", edit=sdxl))

    def no_unet(state):
        for k in [k for k in state if k.startswith(UNET_PREFIX)]:
            del state[k]

    _raises_naming(write_single(tmp_path, models, "sd1", "nounet.safetensors", edit=no_unet))

    def no_text(state):
        for k in [k for k in state if k.startswith("cond_stage_model.")]:
            del state[k]

    _raises_naming(write_single(tmp_path, models, "sd1", "notext.safetensors", edit=no_text))

    def drop_one(state):
        del state[UNET_PREFIX + "output_blocks.0.0.in_layers.2.weight"]

    msg = _raises_naming(write_single(tmp_path, models, "sd1", "missing.safetensors", edit=drop_one))
    assert "missing" in msg and "up_blocks.0.resnets.0.conv1.weight" in msg

    def wrong_shape(state):
        key = UNET_PREFIX + "time_embed.2.weight"
        state[key] = torch.zeros(state[key].shape[0], state[key].shape[1] + 1)

    _raises_naming(write_single(tmp_path, models, "sd1", "shape.safetensors", edit=wrong_shape))

    # SD 1.x text tower with an SD 2.x context width: an unknown combination
    odd = tiny_models("sd1", seed=9, text_overrides=dict(hidden_size=1024, num_attention_heads=16))
    _raises_naming(write_single(tmp_path, odd, "sd1", "odd.safetensors"))


# ---------------------------------------------------------------------------------------------
# full architectures with random weights


def test_random_sd2_builds_and_runs():
    start = time.perf_counter()
    comps = random_components("sd2", seed=0)
    built = time.perf_counter() - start
    assert comps.family == "sd2" and comps.source == "random-sd2" and comps.tokenizer is None
    assert sum(p.numel() for p in comps.unet.parameters()) == 865_910_724
    assert comps.text_encoder.config.num_hidden_layers == 23
    assert comps.unet.config.attention_head_dim == [5, 10, 20, 20]
    assert not any(p.is_meta for p in comps.unet.parameters())
    with torch.no_grad():
        x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
        context = torch.randn(1, 77, 1024, generator=torch.Generator().manual_seed(1))
        out = comps.unet(x, torch.tensor([10]), encoder_hidden_states=context).sample
    assert out.shape == (1, 4, 8, 8) and torch.isfinite(out).all()
    print(f"random_components('sd2') built in {built:.1f} s, "
          f"forward done at {time.perf_counter() - start:.1f} s")
    assert built < 120


def test_random_components_rejects_unknown_family():
    with pytest.raises(InputError):
        random_components("sdxl")


@pytest.mark.slow
@pytest.mark.parametrize("family", ["sd1", "sd2"])
def test_full_architecture_single_file_round_trip(tmp_path, family):
    start = time.perf_counter()
    original = random_components(family, seed=1, dtype=torch.float16)
    built = time.perf_counter() - start
    again = random_components(family, seed=1, dtype=torch.float16)  # deterministic
    for name in ("conv_in.weight", "up_blocks.3.attentions.2.proj_out.weight"):
        assert torch.equal(original.unet.state_dict()[name], again.unet.state_dict()[name])
    del again
    path = tmp_path / f"{family}.safetensors"
    state = to_ldm_checkpoint(original.unet, original.vae, original.text_encoder, family)
    save_file(state, str(path))
    del state
    loaded = load_single_file(path, dtype=torch.float16)
    assert loaded.family == family and loaded.prediction_type == "epsilon"
    shipped = read_family_config(family)
    for key in ("block_out_channels", "attention_head_dim", "cross_attention_dim",
                "use_linear_projection", "layers_per_block", "down_block_types", "up_block_types"):
        value = loaded.unet.config[key]
        assert (list(value) if isinstance(value, (list, tuple)) else value) == shipped["unet"][key], key
    assert loaded.text_encoder.config.num_hidden_layers == shipped["text_encoder"]["num_hidden_layers"]
    assert loaded.text_encoder.config.hidden_act == shipped["text_encoder"]["hidden_act"]
    for a, b in zip((original.unet, original.vae, original.text_encoder),
                    (loaded.unet, loaded.vae, loaded.text_encoder)):
        assert_same_weights(a, b)
    del original
    unet, text = loaded.unet.float(), loaded.text_encoder.float()
    with torch.no_grad():
        context = text(loaded.empty_prompt_ids).last_hidden_state
        x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
        out = unet(x, torch.tensor([981]), encoder_hidden_states=context).sample
    assert context.shape == (1, 77, 768 if family == "sd1" else 1024)
    assert out.shape == (1, 4, 8, 8) and torch.isfinite(out).all()
    print(f"{family}: random build {built:.1f} s, whole test {time.perf_counter() - start:.1f} s")
