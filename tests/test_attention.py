"""Inflated UNet: layer selection, equivalence with the plain UNet, cross-frame coupling, restore."""

import json
from importlib import resources

import pytest
import torch
from diffusers import UNet2DConditionModel

from smite_core.model.attention import AttentionRecord, inflated_unet, layer_hw, select_capture_layers


def _sd_unet_layers(family):
    cfg = json.loads((resources.files("smite_core.model.configs") / family / "unet.json").read_text())
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(cfg)
    return select_capture_layers(unet)


@pytest.mark.parametrize("family", ["sd1", "sd2"])
def test_sd_layers_match_the_reference(family):
    layers = _sd_unet_layers(family)
    assert layers.cross == (
        "up_blocks.1.attentions.0.transformer_blocks.0.attn2",
        "up_blocks.1.attentions.1.transformer_blocks.0.attn2",
        "up_blocks.1.attentions.2.transformer_blocks.0.attn2",
        "up_blocks.2.attentions.0.transformer_blocks.0.attn2",
        "up_blocks.2.attentions.1.transformer_blocks.0.attn2",
    )
    assert layers.self == tuple(f"up_blocks.3.attentions.{i}.transformer_blocks.0.attn1" for i in range(3))


def test_tiny_layers_by_resolution(tiny_backbone):
    from smite_core.model.attention import up_block_resolutions

    unet = tiny_backbone.unet
    factors = up_block_resolutions(unet)
    layers = select_capture_layers(unet)
    assert layers.cross and layers.self
    assert all(n.endswith("attn2") and factors[int(n.split(".")[1])] in (2, 4) for n in layers.cross)
    assert all(n.endswith("attn1") and factors[int(n.split(".")[1])] == 1 for n in layers.self)


def _forward(unet, latents, context, **kw):
    frames = latents.shape[0]
    record = AttentionRecord(num_tokens=3, latent_hw=tuple(latents.shape[-2:]))
    with torch.no_grad(), inflated_unet(unet, frames, record=record, **kw):
        out = unet(latents, torch.full((frames,), 100), encoder_hidden_states=context.expand(frames, -1, -1)).sample
    return out, record


def test_single_frame_is_the_plain_unet_and_processors_are_restored(tiny_backbone):
    unet = tiny_backbone.unet
    before = {k: type(v) for k, v in unet.attn_processors.items()}
    torch.manual_seed(0)
    latents, context = torch.randn(1, 4, 32, 32), torch.randn(1, 77, 128)
    with torch.no_grad():
        plain = unet(latents, torch.tensor([100]), encoder_hidden_states=context).sample
    inflated, record = _forward(unet, latents, context)
    assert torch.allclose(plain, inflated, atol=1e-5)
    assert {k: type(v) for k, v in unet.attn_processors.items()} == before
    assert not any("forward" in vars(m) for m in unet.modules())  # pooled GroupNorm undone
    assert len(record.cross) == 4 and len(record.self_qk) == 2


def test_inflation_couples_frames_and_baseline_does_not(tiny_backbone):
    unet = tiny_backbone.unet
    torch.manual_seed(1)
    latents, context = torch.randn(3, 4, 32, 32), torch.randn(1, 77, 128)
    changed = latents.clone()
    changed[2] += 1.0  # perturb only the last frame
    a, _ = _forward(unet, latents, context)
    b, _ = _forward(unet, changed, context)
    assert (a[0] - b[0]).abs().max() > 1e-3  # frame 0 sees frame 2 through attention / pooled norms
    a, _ = _forward(unet, latents, context, inflate=False, pool_norm=False)
    b, _ = _forward(unet, changed, context, inflate=False, pool_norm=False)
    assert torch.allclose(a[0], b[0], atol=1e-6)  # per frame: frame 0 is independent


def test_inflated_attention_matches_explicit_concatenation(tiny_backbone):
    """Self-attention over all frames equals attention with every frame's keys concatenated."""
    from smite_core.model.attention import _full_frame_attention

    torch.manual_seed(2)
    q, k, v = (torch.randn(3, 2, 16, 8) for _ in range(3))
    out = _full_frame_attention(q, k, v, 3, 8 ** -0.5)
    keys = k.transpose(0, 1).reshape(2, 48, 8)
    values = v.transpose(0, 1).reshape(2, 48, 8)
    for f in range(3):
        probs = torch.softmax(q[f] @ keys.transpose(-1, -2) * 8 ** -0.5, -1)
        assert torch.allclose(out[f], probs @ values, atol=1e-5)


def test_captured_cross_logits_are_raw_token_scores(tiny_backbone):
    latents, context = torch.randn(2, 4, 32, 32), torch.randn(1, 77, 128)
    _, record = _forward(tiny_backbone.unet, latents, context)
    assert record.cross[0].shape == (2, 3, 8, 8) and record.cross[-1].shape == (2, 3, 16, 16)
    assert (record.cross[0] < 0).any()  # logits, not probabilities
    q, k, scale = record.self_qk[0]
    assert q.shape[0] == 2 and q.shape[2] == 32 * 32


def test_layer_hw_non_square():
    assert layer_hw(6 * 4, (12, 8)) == (6, 4)
    with pytest.raises(ValueError):
        layer_hw(7, (12, 8))
