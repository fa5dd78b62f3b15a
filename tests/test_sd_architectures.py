"""Learning and segmentation on the real SD 1.5 and SD 2.1-base architectures (random weights, tiny images)."""

import pytest
import torch
from conftest import blob_reference

from smite_core.io.references import reference_set_from_label_maps
from smite_core.method.learn import LearnConfig, learn_embedding
from smite_core.method.segment import SegmentConfig, segment_frames
from smite_core.method.was import labels_from_was
from smite_core.model.backbone import backbone_from_components
from smite_core.model.checkpoints import random_components


@pytest.mark.parametrize("family,context_dim", [("sd1", 768), ("sd2", 1024)])
def test_learn_and_segment_on_sd_architecture(family, context_dim):
    backbone = backbone_from_components(random_components(family, seed=0), torch.device("cpu"), torch.float32)
    assert backbone.context_dim == context_dim and backbone.size_multiple == 64
    image, labels = blob_reference(64)
    refs = reference_set_from_label_maps(image[None], labels[None], ["background", "disk", "corner"])
    kv_names = backbone.cross_attention_kv_names()
    assert len(kv_names) == 32  # to_k and to_v of the 16 cross-attention blocks of SD
    snapshot = {n: p.detach().clone() for n, p in backbone.unet.named_parameters() if n in kv_names[:4]}

    emb = learn_embedding(backbone, refs, LearnConfig(steps=2, token_phase=0.5, size=64, lr_kv=1e-4))
    assert emb.tokens.shape == (2, context_dim) and set(emb.kv) == set(kv_names)
    for name, before in snapshot.items():  # trained copies moved, the backbone did not
        assert not torch.equal(emb.kv[name], before)
        assert torch.equal(dict(backbone.unet.named_parameters())[name], before)
    assert all(p.grad is None for p in backbone.unet.parameters())

    frames = torch.rand(3, 70, 90, 3)
    for inflate in (True, False):
        was = segment_frames(backbone, emb, frames, SegmentConfig(size=64, inflate=inflate))
        assert was.shape == (3, 3, 8, 8) and torch.isfinite(was).all()
        assert labels_from_was(was, (70, 90)).shape == (3, 70, 90)
