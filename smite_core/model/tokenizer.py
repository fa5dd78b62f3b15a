"""A word-level tokenizer for the tiny backbone (vocabulary shipped as ``configs/tiny/vocab.json``).

It offers the small part of the Hugging Face tokenizer interface that SMITE uses
(``embedding.initial_tokens``): ``tok(text, add_special_tokens=False)["input_ids"]`` and the
``bos/eos/pad/unk_token_id`` attributes. Text is lower-cased and split into words (runs of letters
and digits); each word is one token, unknown words map to ``<unk>``. ``encode_prompt`` gives the
``[77]`` CLIP-style sequence ``BOS words EOS PAD...`` the text encoder reads.
"""

from __future__ import annotations

import json
import re
from importlib import resources

from ..errors import BackboneError

SPECIALS = ("<pad>", "<bos>", "<eos>", "<unk>")  # ids 0..3, as in configs/tiny/smite.json
_WORD = re.compile(r"[a-z0-9]+")


class WordTokenizer:
    """Word -> id lookup with CLIP-style special tokens; ``words`` is the vocabulary in id order."""

    def __init__(self, words: list[str], model_max_length: int = 77):
        if list(words[: len(SPECIALS)]) != list(SPECIALS) or len(set(words)) != len(words):
            raise BackboneError("tokenizer vocabulary: must start with <pad> <bos> <eos> <unk> and have no duplicates")
        self.words = list(words)
        self.ids = {w: i for i, w in enumerate(self.words)}
        self.pad_token_id, self.bos_token_id, self.eos_token_id, self.unk_token_id = 0, 1, 2, 3
        self.model_max_length = model_max_length

    @classmethod
    def from_json(cls, path=None) -> "WordTokenizer":
        """Read a vocabulary file (``{"words": [...]}``); default: the tiny backbone's ``vocab.json``."""
        text = (resources.files("smite_core.model.configs") / "tiny" / "vocab.json").read_text() if path is None \
            else open(path, encoding="utf-8").read()
        try:
            words = json.loads(text)["words"]
        except (ValueError, KeyError, TypeError):
            raise BackboneError(f"{path or 'configs/tiny/vocab.json'}: not a vocabulary file") from None
        return cls(words)

    def __len__(self) -> int:
        return len(self.words)

    def split(self, text: str) -> list[str]:
        """Lower-cased words of ``text``."""
        return _WORD.findall(str(text).lower())

    def word_ids(self, text: str) -> list[int]:
        """One id per word, ``unk_token_id`` for words not in the vocabulary."""
        return [self.ids.get(w, self.unk_token_id) for w in self.split(text)]

    def __call__(self, text: str, add_special_tokens: bool = True, **_) -> dict:
        """``{"input_ids": [...]}``: the word ids, with BOS/EOS around them if ``add_special_tokens``."""
        ids = self.word_ids(text)
        if add_special_tokens:
            ids = [self.bos_token_id] + ids[: self.model_max_length - 2] + [self.eos_token_id]
        return {"input_ids": ids}

    def encode_prompt(self, text_or_ids, length: int = 77) -> list[int]:
        """``[length]`` ids: BOS, the words (truncated), EOS, then padding."""
        ids = self.word_ids(text_or_ids) if isinstance(text_or_ids, str) else list(text_or_ids)
        ids = [self.bos_token_id] + ids[: length - 2] + [self.eos_token_id]
        return ids + [self.pad_token_id] * (length - len(ids))
