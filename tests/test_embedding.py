"""Segment-embedding files: round trip, conditioning layout, and every kind of bad file."""

import json

import pytest
import torch
from safetensors.torch import save_file

from smite_core.errors import EmbeddingError, OutputExistsError
from smite_core.method.embedding import SegmentEmbedding, build_context, initial_tokens


def _embedding(backbone, k=3):
    name = backbone.cross_attention_kv_names()[0]
    weight = dict(backbone.unet.named_parameters())[name]
    return SegmentEmbedding(tokens=torch.randn(k - 1, backbone.context_dim),
                            names=["background"] + [f"part{i}" for i in range(1, k)],
                            backbone_fingerprint=backbone.fingerprint,
                            kv={name: weight.detach() + 0.01}, meta={"steps": 5, "seed": 1})


def test_round_trip_in_half_precision(tmp_path, tiny_backbone):
    emb = _embedding(tiny_backbone)
    path = emb.save(tmp_path / "e.safetensors")
    back = SegmentEmbedding.load(path)
    assert back.names == emb.names and back.meta["steps"] == 5
    assert torch.allclose(back.tokens, emb.tokens, atol=1e-2)
    assert back.kv.keys() == emb.kv.keys()
    back.check_backbone(tiny_backbone)
    with pytest.raises(OutputExistsError):
        emb.save(path)
    emb.save(path, overwrite=True)


def test_context_replaces_only_the_segment_positions(tiny_backbone):
    empty = tiny_backbone.encode_empty_prompt()
    tokens = torch.randn(4, tiny_backbone.context_dim)
    ctx = build_context(empty, tokens)
    assert ctx.shape == empty.shape
    assert torch.equal(ctx[0, 0], empty[0, 0]) and torch.equal(ctx[0, 5:], empty[0, 5:])
    assert torch.equal(ctx[0, 1:5], tokens)


def test_initial_tokens_without_tokenizer_are_distinct(tiny_backbone):
    tokens = initial_tokens(tiny_backbone, ["background", "a", "b", "c"])
    assert tokens.shape == (3, tiny_backbone.context_dim)
    assert torch.cdist(tokens, tokens).fill_diagonal_(1).min() > 0


def test_other_backbone_is_refused(tmp_path, tiny_backbone):
    emb = _embedding(tiny_backbone)
    emb.backbone_fingerprint = "0123456789abcdef"
    path = emb.save(tmp_path / "other.safetensors")
    with pytest.raises(EmbeddingError, match="another backbone"):
        SegmentEmbedding.load(path).check_backbone(tiny_backbone)


def test_garbage_truncated_and_foreign_files(tmp_path):
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"this is not a safetensors file at all")
    with pytest.raises(EmbeddingError, match="garbage.safetensors"):
        SegmentEmbedding.load(garbage)

    good = tmp_path / "good.safetensors"
    save_file({"tokens": torch.zeros(2, 8)}, str(good), metadata={
        "format": "smite-embedding", "format_version": "1", "num_segments": "3",
        "names": json.dumps(["background", "a", "b"]), "backbone_fingerprint": "x", "meta": "{}"})
    SegmentEmbedding.load(good)
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(good.read_bytes()[:-20])
    with pytest.raises(EmbeddingError, match="truncated.safetensors"):
        SegmentEmbedding.load(truncated)

    foreign = tmp_path / "lora.safetensors"
    save_file({"w": torch.zeros(2)}, str(foreign))
    with pytest.raises(EmbeddingError, match="not a SMITE embedding"):
        SegmentEmbedding.load(foreign)

    mismatched = tmp_path / "mismatch.safetensors"
    save_file({"tokens": torch.zeros(5, 8)}, str(mismatched), metadata={
        "format": "smite-embedding", "format_version": "1", "num_segments": "3",
        "names": json.dumps(["background", "a", "b"]), "backbone_fingerprint": "x", "meta": "{}"})
    with pytest.raises(EmbeddingError, match="do not match"):
        SegmentEmbedding.load(mismatched)

    nan = tmp_path / "nan.safetensors"
    save_file({"tokens": torch.full((2, 8), float("nan"))}, str(nan), metadata={
        "format": "smite-embedding", "format_version": "1", "num_segments": "3",
        "names": json.dumps(["background", "a", "b"]), "backbone_fingerprint": "x", "meta": "{}"})
    with pytest.raises(EmbeddingError, match="NaN"):
        SegmentEmbedding.load(nan)

    with pytest.raises(EmbeddingError, match="no such"):
        SegmentEmbedding.load(tmp_path / "missing.safetensors")


def test_fingerprint_is_stable_across_fp16_conversion(tiny_backbone):
    from smite_core.model.backbone import backbone_fingerprint, build_tiny_components

    comps = build_tiny_components()
    fp32 = backbone_fingerprint(comps)
    comps.unet.half()
    assert backbone_fingerprint(comps) == fp32 == tiny_backbone.fingerprint
    with torch.no_grad():
        next(p for n, p in comps.unet.named_parameters() if ".attn2.to_k." in n).mul_(1.01)
    assert backbone_fingerprint(comps) != fp32


def _with_format_version(path, version: str):
    """Rewrite an embedding file's format version (as an older or newer SMITE wrote it)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        metadata, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    save_file(tensors, str(path), metadata={**metadata, "format_version": version})
    return path


def test_an_embedding_learned_before_0_2_loads_with_a_note(tmp_path, tiny_backbone):
    """Format 1 (SMITE 0.1: the WAS summed over the query index) still loads, and every segmentation says to learn
    it again; the current format says nothing; a newer format is refused."""
    from smite_core.io.video_io import FrameSource
    from smite_core.method.segment import SegmentConfig, segment_stream

    current = SegmentEmbedding.load(_embedding(tiny_backbone).save(tmp_path / "new.safetensors"))
    assert current.outdated is None and current.meta["format_version"] == 2
    old = SegmentEmbedding.load(_with_format_version(_embedding(tiny_backbone).save(tmp_path / "old.safetensors"), "1"))
    assert "old.safetensors was learned with the WAS of SMITE 0.1" in old.outdated and "learn it again" in old.outdated
    frames = FrameSource.from_tensor(torch.rand(2, 64, 64, 3))
    for embedding, expected in ((old, [old.outdated]), (current, [])):
        said = []
        segment_stream(tiny_backbone, embedding, frames, SegmentConfig(size=64, inflate=False), say=said.append)
        assert said == expected  # said when called, before any window is computed
    with pytest.warns(RuntimeWarning, match="learn it again"):  # without say: a warning
        segment_stream(tiny_backbone, old, frames, SegmentConfig(size=64, inflate=False))
    old.save(tmp_path / "resaved.safetensors")  # saving never stamps an old embedding with the current format
    assert "learn it again" in SegmentEmbedding.load(tmp_path / "resaved.safetensors").outdated
    with pytest.raises(EmbeddingError, match="format version 3 is newer"):
        SegmentEmbedding.load(_with_format_version(tmp_path / "new.safetensors", "3"))
