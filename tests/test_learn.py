"""Learning stage: what is trained, determinism, the two phases, bad settings."""

import os

import pytest
import torch
from conftest import blob_reference

from smite_core.errors import InputError
from smite_core.io.references import reference_set_from_label_maps
from smite_core.method.learn import LearnConfig, learn_embedding
from smite_core.method.losses import class_weights


@pytest.fixture(scope="module")
def refs():
    image, labels = blob_reference(64)
    return reference_set_from_label_maps(image[None], labels[None], ["background", "disk", "corner"])


def test_class_weights_follow_the_reference_rule():
    labels = torch.tensor([[0, 0, 1, 1], [1, 1, 2, 0]])
    w = class_weights(labels, 4)
    assert w.tolist() == [1.0, 5 / 4, 5 / 1, 0.0]


def test_only_tokens_and_cross_attention_kv_are_trained(tiny_backbone, refs):
    before = {n: p.detach().clone() for n, p in tiny_backbone.unet.named_parameters()}
    config = LearnConfig(steps=4, token_phase=0.5, lr_kv=1e-2, size=64, seed=3)
    emb = learn_embedding(tiny_backbone, refs, config)
    for n, p in tiny_backbone.unet.named_parameters():  # the shared backbone is untouched
        assert torch.equal(p, before[n]) and p.grad is None and not p.requires_grad
    assert set(emb.kv) == set(tiny_backbone.cross_attention_kv_names())
    assert all(".attn2.to_k." in n or ".attn2.to_v." in n for n in emb.kv)
    changed = [n for n, v in emb.kv.items() if not torch.equal(v, before[n])]
    assert len(changed) == len(emb.kv)  # phase 2 moved every K/V matrix
    assert emb.tokens.shape == (2, tiny_backbone.context_dim)
    assert emb.meta["steps"] == 4 and emb.meta["seed"] == 3 and emb.meta["resolution"] == 64


def test_tokens_only_and_determinism(tiny_backbone, refs):
    config = LearnConfig(steps=2, train_kv=False, size=64, seed=7)
    a = learn_embedding(tiny_backbone, refs, config)
    b = learn_embedding(tiny_backbone, refs, config)
    assert a.kv == {} and torch.equal(a.tokens, b.tokens)
    c = learn_embedding(tiny_backbone, refs, LearnConfig(steps=2, train_kv=False, size=64, seed=8))
    assert not torch.equal(a.tokens, c.tokens)
    from smite_core.method.embedding import initial_tokens

    assert not torch.equal(a.tokens, initial_tokens(tiny_backbone, refs.names))  # tokens did move


def test_losses_decrease_on_a_single_reference(tiny_backbone, refs):
    from smite_core.method.augment import AugmentConfig

    seen = []
    config = LearnConfig(steps=30, train_kv=False, size=64, augment=AugmentConfig.none(), timesteps=(50, 50))
    learn_embedding(tiny_backbone, refs, config, on_step=lambda step, losses: seen.append(losses["ce"]))
    assert sum(seen[-5:]) / 5 < sum(seen[:5]) / 5


def test_default_steps_are_epochs_over_the_references(tiny_backbone, refs):
    assert LearnConfig().steps is None and LearnConfig().resolved(3).steps == 900  # the paper's 300 epochs
    assert LearnConfig(steps=7, epochs=2).resolved(3).steps == 7  # explicit steps win
    two = reference_set_from_label_maps(torch.stack([refs.images[0], refs.images[0].flip(1)]),
                                        torch.stack([refs.labels[0], refs.labels[0].flip(1)]), refs.names)
    emb = learn_embedding(tiny_backbone, two, LearnConfig(epochs=2, train_kv=False, size=64))
    assert emb.meta["steps"] == 4 and emb.meta["references"] == 2


def test_bad_settings(tiny_backbone, refs):
    with pytest.raises(InputError, match="epochs"):
        learn_embedding(tiny_backbone, refs, LearnConfig(epochs=0))
    with pytest.raises(InputError, match="steps"):
        learn_embedding(tiny_backbone, refs, LearnConfig(steps=0))


def test_the_cli_makes_mkl_reproducible_unless_the_user_chose(monkeypatch, tmp_path):
    """MKL_CBWR: without it MKL's results depend on memory alignment on some CPUs (runs differ in the last
    bits). The ``smite`` command owns its process and sets it; the library never does (see test_repo)."""
    from smite_core.commands import cli

    missing = str(tmp_path / "missing")
    monkeypatch.delenv("MKL_CBWR", raising=False)
    assert cli.main(["eval", "--pred", missing, "--gt", missing]) == 2
    assert os.environ["MKL_CBWR"] == "AUTO,STRICT"
    monkeypatch.setenv("MKL_CBWR", "COMPATIBLE")
    assert cli.main(["eval", "--pred", missing, "--gt", missing]) == 2
    assert os.environ["MKL_CBWR"] == "COMPATIBLE"
