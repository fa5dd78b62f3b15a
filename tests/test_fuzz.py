"""Fuzzing the readers of untrusted files: whatever the bytes, only clean, one-line SMITE errors come out.

Covers the embedding loader (random bytes, mutated real files, random metadata and tensors), the label
reader (random bytes, mutated PNGs, images in every PIL mode), ``segments.json`` and whole reference
folders, and the label-map IMAGE decoder of the nodes. Example counts are small so the file runs in
seconds and examples are derandomised (the same every run); ``HYPOTHESIS_PROFILE=long`` runs random ones,
``HYPOTHESIS_EXAMPLES`` of each (2000 by default).
"""

import io
import json
import os
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from graph_runner import load_pack
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from PIL import Image
from safetensors.torch import save_file

from smite_core.errors import EmbeddingError, InputError
from smite_core.io.label_png import read_label_png, save_label_png
from smite_core.io.references import MAX_SEGMENTS, load_reference_folder, read_segments_json
from smite_core.method.embedding import SegmentEmbedding

settings.register_profile("quick", max_examples=40, deadline=None, derandomize=True,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("long", max_examples=int(os.environ.get("HYPOTHESIS_EXAMPLES", "2000")), deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
PROFILE = os.environ.get("HYPOTHESIS_PROFILE", "quick")
quick = settings.get_profile(PROFILE)

WORK = Path(tempfile.mkdtemp(prefix="smite-fuzz-"))


def _one_line(err: Exception) -> str:
    text = str(err)
    assert text and "\n" not in text, repr(text)
    return text


def _valid_embedding_bytes() -> bytes:
    path = WORK / "valid.safetensors"
    if not path.exists():
        SegmentEmbedding(tokens=torch.randn(2, 8), names=["background", "a", "b"], backbone_fingerprint="f" * 16,
                         kv={"down.attn2.to_k.weight": torch.randn(4, 8)}, meta={"steps": 3}).save(path)
    return path.read_bytes()


def _load_embedding(data: bytes, name: str):
    path = WORK / name
    path.write_bytes(data)
    try:
        emb = SegmentEmbedding.load(path)
    except EmbeddingError as err:
        assert path.name in _one_line(err)
        event("refused")
        return None
    event("loaded")
    assert emb.num_segments == emb.tokens.shape[0] + 1 and torch.isfinite(emb.tokens).all()
    return emb


# ----------------------------------------------------------------------------- embedding loader


@quick
@given(st.binary(max_size=2048))
def test_embedding_loader_random_bytes(data):
    _load_embedding(data, "random.safetensors")


@quick
@given(st.data())
def test_embedding_loader_mutated_files(data):
    raw = bytearray(_valid_embedding_bytes())
    for _ in range(data.draw(st.integers(1, 4))):
        kind = data.draw(st.sampled_from(["flip", "truncate", "insert", "header"]))
        if kind == "flip":
            at = data.draw(st.integers(0, len(raw) - 1))
            raw[at] = data.draw(st.integers(0, 255))
        elif kind == "truncate":
            del raw[data.draw(st.integers(0, len(raw) - 1)):]
            if not raw:
                break
        elif kind == "insert":
            at = data.draw(st.integers(0, len(raw)))
            raw[at:at] = data.draw(st.binary(min_size=1, max_size=16))
        else:  # rewrite the header length: too big, zero, or beyond the file
            raw[:8] = data.draw(st.integers(0, 2**64 - 1)).to_bytes(8, "little")
    _load_embedding(bytes(raw), "mutated.safetensors")


_text = st.text(max_size=12)
_metadata_values = st.one_of(_text, st.integers(-5, 100).map(str), st.just("1"), st.just("smite-embedding"),
                             st.lists(_text, max_size=5).map(json.dumps),
                             st.recursive(st.none() | st.booleans() | st.integers() | _text,
                                          lambda inner: st.lists(inner, max_size=3)
                                          | st.dictionaries(_text, inner, max_size=3), max_leaves=8).map(json.dumps))


@quick
@given(
    metadata=st.fixed_dictionaries({}, optional={
        "format": st.sampled_from(["smite-embedding", "other"]) | _text, "format_version": _metadata_values,
        "num_segments": _metadata_values, "names": _metadata_values, "backbone_fingerprint": _metadata_values,
        "meta": _metadata_values}),
    shapes=st.dictionaries(st.sampled_from(["tokens", "kv.x.attn2.to_k.weight", "kv.bad", "other"]),
                           st.lists(st.integers(0, 4), max_size=3), max_size=3),
    dtype=st.sampled_from([torch.float16, torch.float32, torch.int32, torch.bool, torch.bfloat16]),
    special=st.sampled_from([None, float("nan"), float("inf")]),
)
def test_embedding_loader_random_metadata_and_tensors(metadata, shapes, dtype, special):
    tensors = {}
    for name, shape in shapes.items():
        t = torch.ones(shape).to(dtype)
        if special is not None and t.is_floating_point() and t.numel():
            t.view(-1)[0] = special
        tensors[name] = t
    path = WORK / "crafted.safetensors"
    try:
        save_file(tensors, str(path), metadata=metadata)
    except Exception:  # safetensors itself refuses some combinations: nothing to load then
        return
    _load_embedding(path.read_bytes(), "crafted.safetensors")


# ----------------------------------------------------------------------------- label reader


def _read_label(data: bytes, name: str = "label.png"):
    path = WORK / name
    path.write_bytes(data)
    try:
        ids = read_label_png(path)
    except InputError as err:
        assert name in _one_line(err)
        event("refused")
        return None
    event("read")
    assert ids.dtype == np.int64 and ids.ndim == 2 and (ids.size == 0 or ids.min() >= 0)
    return ids


def _png_bytes(image: Image.Image, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt)
    return buf.getvalue()


@quick
@given(st.binary(max_size=1024))
def test_label_reader_random_bytes(data):
    _read_label(data)
    _read_label(b"\x89PNG\r\n\x1a\n" + data, "signed.png")  # past the signature check


@quick
@given(st.data())
def test_label_reader_mutated_pngs(data):
    labels = np.zeros((9, 7), np.uint8)
    labels[2:5, 1:4] = 3
    raw = bytearray(_png_bytes(Image.fromarray(labels, mode="L")))
    for _ in range(data.draw(st.integers(1, 3))):
        at = data.draw(st.integers(0, len(raw) - 1))
        if data.draw(st.booleans()):
            raw[at] = data.draw(st.integers(0, 255))
        else:
            del raw[at:]
            if not raw:
                break
    _read_label(bytes(raw), "mutated.png")


_MODES = ["1", "L", "LA", "P", "PA", "I", "I;16", "F", "RGB", "RGBA", "CMYK", "YCbCr", "HSV", "LAB"]


@quick
@given(mode=st.sampled_from(_MODES), h=st.integers(1, 6), w=st.integers(1, 6), seed=st.integers(0, 2**16),
       fmt=st.sampled_from(["PNG", "TIFF", "BMP", "GIF", "WEBP"]))
def test_label_reader_random_images(mode, h, w, seed, fmt):
    rng = np.random.default_rng(seed)
    image = Image.frombytes(mode, (w, h), rng.integers(0, 256, 64 * h * w, dtype=np.uint8).tobytes()[
        :len(Image.new(mode, (w, h)).tobytes())])
    try:
        data = _png_bytes(image, fmt)
    except Exception:  # PIL cannot write this mode in this format
        return
    _read_label(data, f"random.{fmt.lower()}")


# ----------------------------------------------------------------------------- segments.json and folders


_json = st.recursive(st.none() | st.booleans() | st.integers(-300, 300) | st.floats(allow_nan=False) | _text,
                     lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
                         st.sampled_from(["segments", "colors", "x"]) | _text, inner, max_size=3),
                     max_leaves=12)


@quick
@given(st.one_of(_json.map(json.dumps), st.binary(max_size=64).map(lambda b: b.decode("latin-1"))))
def test_segments_json_random_content(text):
    path = WORK / "segments.json"
    path.write_text(text, encoding="utf-8")
    try:
        names, colors = read_segments_json(path)
    except InputError as err:
        assert "segments.json" in _one_line(err)
        event("refused")
        return
    event("read")
    assert all(isinstance(n, str) for n in names)
    assert colors is None or all(len(c) == 3 and 0 <= i for c, i in colors.items())


@quick
@given(ids=st.lists(st.integers(0, 120), min_size=1, max_size=6), coded=st.booleans(),
       segments=st.none() | _json.map(json.dumps), h=st.integers(1, 5), w=st.integers(1, 5))
def test_reference_folder_random_labels(ids, coded, segments, h, w):
    root = Path(tempfile.mkdtemp(dir=WORK))
    (root / "images").mkdir()
    Image.new("RGB", (w, h), (10, 20, 30)).save(root / "images" / "a.png")
    flat = np.resize(np.array(ids), h * w).reshape(h, w)
    if coded:  # colour-coded RGB: id -> some colour
        rgb = np.stack([flat * 2 % 256, flat * 7 % 256, flat * 13 % 256], -1).astype(np.uint8)
        (root / "labels").mkdir()
        Image.fromarray(rgb).save(root / "labels" / "a.png")
    else:
        save_label_png(root / "labels" / "a.png", np.minimum(flat, 255))
    if segments is not None:
        (root / "segments.json").write_text(segments)
    try:
        refs = load_reference_folder(root)
    except InputError as err:
        assert str(root) in _one_line(err)
        event("refused")
        return
    event("loaded")
    assert 2 <= refs.num_segments <= MAX_SEGMENTS and refs.labels[0].shape == (h, w) and refs.notes


# ----------------------------------------------------------------------------- the nodes' label-map decoder


@pytest.fixture(scope="module")
def image_to_ids():
    load_pack()
    from smite_pack_under_test.nodes.labelmaps import image_to_ids

    return image_to_ids


@quick
@given(data=st.data())
def test_label_map_image_decoder(image_to_ids, data):
    n, h, w = data.draw(st.integers(1, 2)), data.draw(st.integers(1, 5)), data.draw(st.integers(1, 5))
    c = data.draw(st.sampled_from([1, 3, 4]))
    values = data.draw(st.lists(st.sampled_from([0.0, 1.0, 0.5, 1 / 255, 2 / 255, -3.0, 7.0, float("nan"),
                                                 float("inf")]) | st.floats(0, 1), min_size=n * h * w * c,
                                max_size=n * h * w * c))
    image = torch.tensor(values, dtype=torch.float32).reshape(n, h, w, c)
    try:
        ids = image_to_ids(image)
    except InputError as err:
        _one_line(err)
        event("refused")
        return
    event("decoded")
    assert ids.shape == (n, h, w) and ids.dtype == torch.int64 and int(ids.min()) >= 0
