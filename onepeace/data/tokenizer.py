"""The caption tokenizer: a SentencePiece BPE model plus the JSON sidecar that fixes its conventions.

The sidecar (docs/data_format.md) is what the pipeline and the model agree on: fixed pad/unk/eos ids,
lowercasing and the 70-token limit, so a tokenizer file alone cannot silently change them.
"""

from __future__ import annotations

import json
import os
import string

import numpy as np
import sentencepiece as spm

PAD_ID, UNK_ID, EOS_ID = 0, 1, 2
WORD_START = "\u2581"  # SentencePiece's "▁": the piece starts a new word
_LEADING = string.punctuation + string.whitespace


class TokenizerError(ValueError):
    """A tokenizer file or sidecar is missing or inconsistent; the message names it."""


def normalize_caption(text: str, lowercase: bool = True) -> str:
    """As in the reference: lowercase, strip leading punctuation, collapse whitespace."""
    text = " ".join(text.split())
    if lowercase:
        text = text.lower()
    return text.lstrip(_LEADING)


class Tokenizer:
    """``encode`` gives token ids ending in EOS; ``word_start`` marks tokens that begin a word."""

    def __init__(self, sidecar: str):
        self.sidecar = os.path.abspath(sidecar)
        try:
            with open(self.sidecar, encoding="utf-8") as f:
                meta = json.load(f)
        except FileNotFoundError:
            raise TokenizerError(f"{sidecar}: no such tokenizer sidecar (make one with python -m data_tools.train_tokenizer)") from None
        except json.JSONDecodeError as exc:
            raise TokenizerError(f"{sidecar}: not valid JSON ({exc})") from None
        for key in ("model_file", "pad_id", "unk_id", "eos_id", "max_tokens"):
            if key not in meta:
                raise TokenizerError(f"{sidecar}: missing key {key!r}")
        self.meta = meta
        model_path = os.path.join(os.path.dirname(self.sidecar), meta["model_file"])
        try:
            with open(model_path, "rb") as f:
                proto = f.read()
        except OSError as exc:
            raise TokenizerError(f"{sidecar}: cannot read model_file {model_path}: {exc.strerror}") from None
        self._load(proto)

    def _load(self, proto: bytes) -> None:
        self._proto = proto
        self.sp = spm.SentencePieceProcessor(model_proto=proto)
        meta = self.meta
        self.pad_id, self.unk_id, self.eos_id = meta["pad_id"], meta["unk_id"], meta["eos_id"]
        self.max_tokens = int(meta["max_tokens"])
        self.lowercase = bool(meta.get("lowercase", True))
        actual = (self.sp.pad_id(), self.sp.unk_id(), self.sp.eos_id())
        if actual != (self.pad_id, self.unk_id, self.eos_id):
            raise TokenizerError(f"{self.sidecar}: the model's pad/unk/eos ids {actual} differ from the sidecar's "
                                 f"{(self.pad_id, self.unk_id, self.eos_id)}")
        self.vocab_size = self.sp.get_piece_size()
        pieces = [self.sp.id_to_piece(i) for i in range(self.vocab_size)]
        special = {self.pad_id, self.unk_id, self.eos_id}
        self.word_start = np.array([p.startswith(WORD_START) and i not in special for i, p in enumerate(pieces)])

    # Picklable for DataLoader workers started with spawn: ship the model bytes, not the C++ object.
    def __getstate__(self) -> dict:
        return {"sidecar": self.sidecar, "meta": self.meta, "proto": self._proto}

    def __setstate__(self, state: dict) -> None:
        self.sidecar, self.meta = state["sidecar"], state["meta"]
        self._load(state["proto"])

    def encode(self, text: str, max_tokens: int | None = None) -> np.ndarray:
        """int64 ids of the normalised text, at most ``max_tokens`` (default: the sidecar's) plus EOS."""
        limit = self.max_tokens if max_tokens is None else min(max_tokens, self.max_tokens)
        ids = self.sp.encode(normalize_caption(text, self.lowercase), out_type=int)[:limit]
        out = np.empty(len(ids) + 1, dtype=np.int64)
        out[:-1] = ids
        out[-1] = self.eos_id
        return out

    def decode(self, ids) -> str:
        keep = [int(i) for i in ids if int(i) not in (self.pad_id, self.eos_id)]
        return self.sp.decode(keep)
