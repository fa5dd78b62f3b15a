"""The learned segment embedding: what the learning stage produces and segmentation consumes.

Class k (1..K-1) is one learned vector ``tokens[k-1]`` that replaces the text-encoder *output* at
position k; class 0 (background) is the BOS position, which only adapts through the fine-tuned
cross-attention ``to_k``/``to_v`` weights. The conditioning sequence is, for every stage alike
(learning, reference pass, guidance - no train/test mismatch, defect D7)::

    [E("")[0], tokens[0], ..., tokens[K-2], E("")[K:77]]

Saved as one safetensors file holding only what was trained plus metadata (format version, K,
names, backbone fingerprint, resolution, steps, seed). Loading checks all of it.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..errors import EmbeddingError, reason
from ..io.fileio import atomic_path
from ..model.backbone import Backbone
from ..model.components import TEXT_LENGTH

FORMAT = "smite-embedding"
# 2 (SMITE 0.2): learned with the WAS of docs/method.md 4, summed over the key index as the reference does (C17).
# 1 (SMITE 0.1): learned with the WAS summed over the query index; such a file still loads, with a note
# (:attr:`SegmentEmbedding.outdated`): its maps differ from what it was learned for, so learn it again.
FORMAT_VERSION = 2
MAX_SEGMENTS = TEXT_LENGTH - 1  # positions 1..76 can carry a segment token


@dataclass
class SegmentEmbedding:
    """K-1 segment tokens ``[K-1, D]`` plus optional cross-attention weights ``{param name: tensor}``."""

    tokens: torch.Tensor
    names: list[str]
    backbone_fingerprint: str
    kv: dict[str, torch.Tensor] = field(default_factory=dict)
    meta: dict = field(default_factory=dict)

    @property
    def num_segments(self) -> int:
        """K, background included."""
        return len(self.names)

    @property
    def outdated(self) -> str | None:
        """A one-line note when this embedding was learned by SMITE before 0.2 (format version 1), else None."""
        version = self.meta.get("format_version", FORMAT_VERSION)
        if version >= FORMAT_VERSION:
            return None
        return (f"{self.meta.get('source', 'embedding')} was learned with the WAS of SMITE 0.1 (embedding format "
                f"{version}); this SMITE's maps differ from those it was learned with: learn it again "
                "(docs/changes.md)")

    def check_backbone(self, backbone: Backbone) -> None:
        """Raise :class:`EmbeddingError` unless this embedding was learned on ``backbone``."""
        source = self.meta.get("source", "embedding")
        for name, t in [("tokens", self.tokens), *self.kv.items()]:
            if not bool(torch.isfinite(t).all()):
                raise EmbeddingError(f"{source}: {name} holds NaN or infinite values (learning diverged?)")
        if self.backbone_fingerprint != backbone.fingerprint:
            raise EmbeddingError(
                f"{source} was learned on another backbone ({self.meta.get('backbone', '?')}, fingerprint "
                f"{self.backbone_fingerprint}); the loaded backbone {backbone.components.source} has "
                f"fingerprint {backbone.fingerprint}")
        if self.tokens.shape[1] != backbone.context_dim:
            raise EmbeddingError(f"{source}: token width {self.tokens.shape[1]} does not match the backbone's "
                                 f"{backbone.context_dim}")
        params = dict(backbone.unet.named_parameters())
        for name, value in self.kv.items():
            if name not in params or params[name].shape != value.shape:
                raise EmbeddingError(f"{source}: weight {name} does not fit the backbone's UNet")

    def to(self, device, dtype=None) -> "SegmentEmbedding":
        """A copy with tensors on ``device`` (and ``dtype``)."""
        move = (lambda t: t.to(device=device, dtype=dtype)) if dtype else (lambda t: t.to(device))
        return SegmentEmbedding(move(self.tokens), list(self.names), self.backbone_fingerprint,
                                {k: move(v) for k, v in self.kv.items()}, dict(self.meta))

    def save(self, path: str | os.PathLike, overwrite: bool = False, half: bool = True) -> Path:
        """Write one safetensors file atomically (fp16 tensors unless ``half=False``)."""
        from safetensors.torch import save_file

        cast = (lambda t: t.detach().to("cpu", torch.float16)) if half else (lambda t: t.detach().to("cpu", torch.float32))
        tensors = {"tokens": cast(self.tokens).contiguous()}
        tensors.update({f"kv.{k}": cast(v).contiguous() for k, v in self.kv.items()})
        meta = {k: v for k, v in self.meta.items() if k not in ("source", "format_version")}
        metadata = {
            "format": FORMAT, "format_version": str(min(FORMAT_VERSION, self.meta.get("format_version", FORMAT_VERSION))),
            "num_segments": str(self.num_segments),
            "names": json.dumps(self.names), "backbone_fingerprint": self.backbone_fingerprint,
            "meta": json.dumps(meta, default=str),
        }
        path = Path(path)
        with atomic_path(path, overwrite=overwrite) as tmp:
            save_file(tensors, str(tmp), metadata=metadata)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "SegmentEmbedding":
        """Read and validate a file written by :meth:`save`; any defect is an :class:`EmbeddingError`."""
        from safetensors import safe_open

        path = Path(path)
        if not path.is_file():
            raise EmbeddingError(f"{path}: no such embedding file")
        try:
            with safe_open(str(path), framework="pt") as f:
                metadata = f.metadata() or {}
                tensors = {k: f.get_tensor(k) for k in f.keys()}
        except Exception as exc:  # safetensors raises several types for damaged files
            raise EmbeddingError(f"{path}: not a readable safetensors embedding file ({reason(exc, 160)})") from None
        if metadata.get("format") != FORMAT:
            raise EmbeddingError(f"{path}: not a SMITE embedding file (format {metadata.get('format')!r})")
        try:
            version = int(metadata["format_version"])
            names = json.loads(metadata["names"])
            k = int(metadata["num_segments"])
            fingerprint = metadata["backbone_fingerprint"]
            meta = json.loads(metadata.get("meta", "{}"))
        except (KeyError, ValueError, TypeError, RecursionError) as exc:
            raise EmbeddingError(f"{path}: damaged metadata ({reason(exc, 160)})") from None
        if not isinstance(meta, dict):
            raise EmbeddingError(f"{path}: damaged metadata ('meta' is not an object)")
        if version > FORMAT_VERSION:
            raise EmbeddingError(f"{path}: format version {version} is newer than this SMITE ({FORMAT_VERSION})")
        tokens = tensors.pop("tokens", None)
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names) or len(names) != k:
            raise EmbeddingError(f"{path}: damaged segment names")
        if not 2 <= k <= MAX_SEGMENTS + 1 or tokens is None or tokens.ndim != 2 or tokens.shape[0] != k - 1:
            raise EmbeddingError(f"{path}: tokens do not match its {k} segments")
        kv = {}
        for key, value in tensors.items():
            if not key.startswith("kv.") or not (".attn2.to_k." in key or ".attn2.to_v." in key):
                raise EmbeddingError(f"{path}: unexpected tensor {key!r}")
            kv[key[3:]] = value
        for name, t in [("tokens", tokens), *kv.items()]:
            if not t.is_floating_point():
                raise EmbeddingError(f"{path}: tensor {name} is {t.dtype}, not floating point")
            if not torch.isfinite(t.float()).all():
                raise EmbeddingError(f"{path}: tensor {name} holds NaN or infinite values")
        meta.update(source=str(path), format_version=version)
        return cls(tokens=tokens.float(), names=names, backbone_fingerprint=fingerprint,
                   kv={n: v.float() for n, v in kv.items()}, meta=meta)


def build_context(empty_prompt: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Conditioning ``[1,77,D]``: ``E("")`` with positions 1..K-1 replaced by ``tokens [K-1,D]``."""
    k = tokens.shape[0] + 1
    return torch.cat([empty_prompt[:, :1], tokens[None].to(empty_prompt.dtype), empty_prompt[:, k:]], dim=1)


def initial_tokens(backbone: Backbone, names: list[str]) -> torch.Tensor:
    """Starting vectors ``[K-1, D]`` for segments 1..K-1 (fixes the reference's off-by-one, D8).

    With a tokenizer, segment k starts from the encoder output at its *own* word's last token in
    the prompt of all segment names. Without one (no vocabulary shipped), it starts from the
    empty prompt's output at position k.
    """
    empty = backbone.encode_empty_prompt()[0].float()
    k = len(names)
    tokenizer = backbone.components.tokenizer
    if tokenizer is None:
        return empty[1:k].clone()
    ids, last = [tokenizer.bos_token_id], []
    for name in names[1:]:
        word_ids = tokenizer(name.replace("_", " "), add_special_tokens=False)["input_ids"] or [tokenizer.unk_token_id]
        ids += word_ids
        last.append(len(ids) - 1)
    ids = ids[: TEXT_LENGTH - 1] + [tokenizer.eos_token_id]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    ids += [pad] * (TEXT_LENGTH - len(ids))
    if last[-1] >= TEXT_LENGTH - 1:
        return empty[1:k].clone()
    with torch.no_grad():
        out = backbone.text_encoder(torch.tensor([ids], device=backbone.device))[0][0].float()
    return out[last].clone()
