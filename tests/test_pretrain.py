"""Pre-training of the tiny backbone: data, captions, losses, determinism, a loadable weights file."""

import json
from importlib import resources

import numpy as np
import pytest
import torch

from smite_core import procedural as P
from smite_core.errors import InputError
from smite_core.tools import pretrain as PT


def test_vocabulary_is_the_shipped_one_and_fits_the_text_encoder():
    shipped = json.loads((resources.files("smite_core.model.configs") / "tiny" / "vocab.json").read_text())["words"]
    assert shipped == PT.vocabulary()
    te = json.loads((resources.files("smite_core.model.configs") / "tiny" / "text_encoder.json").read_text())
    assert te["vocab_size"] == len(shipped)
    held_only = {p for c in P.HELDOUT_CATEGORIES for p in P.CATEGORY_PARTS[c]} - \
        {p for c in P.TRAIN_CATEGORIES for p in P.CATEGORY_PARTS[c]}
    assert not held_only & set(shipped) and not set(P.HELDOUT_CATEGORIES) & set(shipped)


def test_tokenizer_interface():
    from smite_core.model.tokenizer import WordTokenizer

    tok = WordTokenizer.from_json()
    ids = tok("Wheel, body  WINDOW", add_special_tokens=False)["input_ids"]
    assert [tok.words[i] for i in ids] == ["wheel", "body", "window"]
    assert tok("beak", add_special_tokens=False)["input_ids"] == [tok.unk_token_id]
    seq = tok.encode_prompt("red wheel")
    assert len(seq) == 77 and seq[0] == tok.bos_token_id and seq[3] == tok.eos_token_id and seq[4] == tok.pad_token_id
    assert tok.encode_prompt("") == [1, 2] + [0] * 75  # configs/tiny/smite.json empty_prompt_ids


def test_generic_scene_is_deterministic_and_annotated():
    a, b = PT.generic_scene(5, 96), PT.generic_scene(5, 96)
    assert np.array_equal(a["image"], b["image"]) and np.array_equal(a["seg"], b["seg"])
    assert a["image"].shape == (96, 96, 3) and a["seg"].dtype == np.int16
    ids = set(np.unique(a["seg"]).tolist()) - {0, PT.IGNORE}
    assert ids and max(ids) <= len(a["regions"])
    for i in ids:
        r = a["regions"][i - 1]
        assert r["colour"] in PT.COLOURS and r["shape"] in PT.SHAPE_WORDS
    assert not np.array_equal(a["image"], PT.generic_scene(6, 96)["image"])


def test_captions_point_at_region_words():
    rng = np.random.default_rng(0)
    rec = PT.category_samples("car", PT.SEED_BASE, 1, 0, 0, 96)[0]
    scene = PT.generic_scene(3, 96)
    for record in (rec, scene):
        for _ in range(20):
            words, where = PT.sample_caption(rng, record)
            for region, pos in where.items():
                r = record["regions"][region - 1]
                assert words[pos - 1] == r.get("name", r.get("shape"))  # position 0 is BOS


def test_heldout_category_is_refused():
    with pytest.raises(InputError, match="bird"):
        PT.category_samples("bird", PT.SEED_BASE, 1, 0, 0, 64)


def test_auxiliary_losses_prefer_the_right_maps():
    seg = torch.tensor([[0, 0, 1, 1]])
    good = torch.tensor([[[.5, .5, 0, 0], [.5, .5, 0, 0], [0, 0, .5, .5], [0, 0, .5, .5]]])
    flat = torch.full((1, 4, 4), 0.25)
    g_good, _ = PT.self_attention_losses(good, seg)
    g_flat, _ = PT.self_attention_losses(flat, seg)
    assert g_good < g_flat
    ca = torch.zeros(1, 77, 2, 2)
    ca[0, 0] = torch.tensor([[3.0, 3.0], [0.0, 0.0]])
    ca[0, 5] = torch.tensor([[0.0, 0.0], [3.0, 3.0]])
    right = PT.cross_attention_loss(ca, seg.reshape(1, 2, 2), [{1: 5}])
    wrong = PT.cross_attention_loss(ca.flip(2), seg.reshape(1, 2, 2), [{1: 5}])
    assert right < wrong
    assert PT.was_inference_loss(ca, good, seg, [{1: 5}]) < PT.was_inference_loss(ca.flip(2), good, seg, [{1: 5}])


def _tiny_run(seed):
    config = PT.PretrainConfig(seed=seed, minutes=0.2, size=64, vae_steps=2, unet_steps=3, unet_batch=2, vae_batch=2,
                               vae_crop=32, threads=1)
    return PT.pretrain(config, say=lambda m: None)


def test_pretrain_is_deterministic_and_writes_a_loadable_file(tmp_path):
    from smite_core.model.backbone import backbone_fingerprint, build_tiny_components

    torch.set_num_threads(1)
    a, b = _tiny_run(0), _tiny_run(0)
    for name in ("unet", "vae", "text_encoder"):
        sa, sb = getattr(a, name).state_dict(), getattr(b, name).state_dict()
        assert all(torch.equal(sa[k], sb[k]) for k in sa), name
    fresh = build_tiny_components(weights_path=False)
    assert not torch.equal(fresh.unet.conv_in.weight, a.unet.conv_in.weight)  # training moved the weights
    path = PT.save_weights(a, tmp_path / "tiny.safetensors")
    loaded = build_tiny_components(path)
    assert loaded.extra["trained"]
    assert torch.allclose(loaded.unet.conv_in.weight, a.unet.conv_in.weight.half().float())
    assert backbone_fingerprint(loaded) != backbone_fingerprint(fresh)
    assert path.stat().st_size < 20 * 2**20
    assert PT.main(["--out", str(tmp_path / "x.bin")]) == 2  # only .safetensors is written


def test_denoiser_crops_larger_than_the_small_scale_use_only_the_pictures_they_fit():
    messages = []
    config = PT.PretrainConfig(seed=0, minutes=0.2, size=64, vae_steps=1, unet_steps=7, unet_batch=1, final_batch=1,
                               vae_batch=1, vae_crop=32, threads=1, scales=(96, 128), unet_crop=16, final_crop=32)
    PT.pretrain(config, say=messages.append)
    assert any("latents at [24, 32] cells" in m for m in messages)  # the tiny VAE downsamples 4x
    stages = [m for m in messages if m.startswith("unet 1/")]
    assert "(16x16)" in stages[0] and "(32x32)" in stages[1]  # whole 128 px latents; the 96 px ones are skipped


def test_shipped_weights_come_from_the_documented_command_and_current_defaults():
    """The weights README's command, with today's defaults, is the recipe recorded in the shipped file."""
    import dataclasses
    import re

    from safetensors import safe_open

    weights = resources.files("smite_core.model") / "weights"
    with safe_open(str(weights / "tiny.safetensors"), "pt") as f:
        recorded = json.loads(f.metadata()["pretrain"])
    command = re.search(r"python -m smite_core\.tools\.pretrain (.+)", (weights / "README.md").read_text()).group(1)
    minutes = float(re.search(r"--minutes (\S+)", command).group(1))
    seed = int(re.search(r"--seed (\S+)", command).group(1))
    config = dataclasses.asdict(PT.PretrainConfig(seed=seed, minutes=minutes))
    config["scales"] = list(config["scales"])
    steps = ("vae_steps", "unet_steps")  # recorded as the schedule resolved them
    assert {k: recorded[k] for k in config if k not in steps} == {k: v for k, v in config.items() if k not in steps}
    vae_steps, unet_steps, _ = PT.PretrainConfig(seed=seed, minutes=minutes).schedule()
    assert (recorded["vae_steps"], recorded["unet_steps"]) == (vae_steps, unet_steps)


def test_the_pretraining_was_loss_is_smites_inference_was():
    """The pre-training's WAS loss sees the maps ``method.was.was_inference`` makes (summed over the key index,
    docs/method.md 4), not their transpose."""
    import torch.nn.functional as F

    from smite_core.method.was import was_inference
    from smite_core.model.attention import AttentionRecord

    g = torch.Generator().manual_seed(0)
    q, k, scale = torch.randn(1, 1, 4, 8, generator=g), torch.randn(1, 1, 4, 8, generator=g), 8 ** -0.5
    probs = torch.softmax(q @ k.transpose(-1, -2) * scale, -1)[:, 0]  # [1, query, key], not symmetric
    ca = torch.randn(1, 77, 2, 2, generator=g)
    seg = torch.tensor([[[0, 0], [1, 1]]])
    record = AttentionRecord(num_tokens=2, latent_hw=(2, 2))
    record.cross, record.self_qk = [ca[:, [0, 5]]], [(q, k, scale)]
    ((_, _, target, weights),) = list(PT._named_regions(seg.flatten(1), [{1: 5}]))
    expected = F.cross_entropy(was_inference(record).flatten(2)[0].T, target.flatten(), weight=weights,
                               ignore_index=PT.IGNORE)
    loss = PT.was_inference_loss(ca, probs, seg, [{1: 5}])
    assert float(loss) == pytest.approx(float(expected), rel=1e-5)
    assert float(PT.was_inference_loss(ca, probs.transpose(1, 2), seg, [{1: 5}])) != pytest.approx(float(expected),
                                                                                                   rel=1e-3)
