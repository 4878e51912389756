"""The official ONE-PEACE text encoding: GPT-2 byte-level BPE ids, mapped to model ids by a fairseq ``dict.txt``.

Three files, as the official release ships them:

- ``encoder.json``: BPE token (byte-level unicode string) -> BPE id;
- ``vocab.bpe``: the merges, one ``left right`` pair per line, highest priority first;
- ``dict.txt``: fairseq's dictionary, one ``SYMBOL COUNT`` line per model id. SYMBOL is a BPE id written in
  decimal. Model ids 0-3 are fairseq's ``<s>``, ``<pad>``, ``</s>``, ``<unk>``; line ``n`` (from 0) is model
  id ``4 + n``. A BPE id with no line becomes ``<unk>``.

A caption becomes model ids as in the official datasets: lowercase, strip the leading characters
``,.!?*#:;~``, replace runs of whitespace (and tabs) with one space, strip; then BPE-encode
``' ' + caption``, cut to ``max_tokens`` and append ``</s>``. No ``<s>``: the text adapter prepends CLS.
The BPE itself runs in the ``tokenizers`` library, built from the two BPE files (nothing is downloaded).
"""

from __future__ import annotations

import json
import os
import re

import numpy as np

from .tokenizer import TokenizerError

BOS_ID, PAD_ID, EOS_ID, UNK_ID = 0, 1, 2, 3
SPECIALS = ("<s>", "<pad>", "</s>", "<unk>")
FILES = {"encoder_file": "encoder.json", "vocab_file": "vocab.bpe", "dict_file": "dict.txt"}
_LEADING = ",.!?*#:;~"
_SPACES = re.compile(r"\s{2,}|\t")
_OVERWRITE = "#fairseq:overwrite"


class BPEFileError(TokenizerError):
    """A BPE or dictionary file is missing or malformed; the message names the file and line."""


def official_caption(text: str) -> str:
    """The caption text the official datasets feed to BPE, including the leading space."""
    text = text.lower().lstrip(_LEADING)
    text = _SPACES.sub(" ", text).rstrip("\n").strip(" ")
    return " " + text


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from bytes to printable unicode characters (the alphabet of the BPE files)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return chars


def read_dict(path: str) -> list[str]:
    """Model id -> symbol, as fairseq's ``Dictionary.load`` builds it (the 4 specials first)."""
    symbols, index = list(SPECIALS), {s: i for i, s in enumerate(SPECIALS)}
    with open(path, encoding="utf-8") as f:
        for lineno, raw in enumerate(f, 1):
            line = raw.rstrip()
            if not line:
                continue
            parts = line.rsplit(" ", 1)
            overwrite = len(parts) == 2 and parts[1] == _OVERWRITE
            if overwrite:
                parts = parts[0].rsplit(" ", 1)
            if len(parts) != 2 or not parts[1].lstrip("-").isdigit():
                raise BPEFileError(f"{path}:{lineno}: expected 'SYMBOL COUNT', got {line!r}")
            word = parts[0]
            if word in index and not overwrite:
                raise BPEFileError(f"{path}:{lineno}: duplicate symbol {word!r} (mark it '{_OVERWRITE}' to allow)")
            index[word] = len(symbols)
            symbols.append(word)
    return symbols


def read_encoder(path: str) -> dict[str, int]:
    try:
        with open(path, encoding="utf-8") as f:
            vocab = json.load(f)
    except json.JSONDecodeError as exc:
        raise BPEFileError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(vocab, dict) or not all(isinstance(v, int) for v in vocab.values()):
        raise BPEFileError(f"{path}: expected a JSON object mapping BPE tokens to integer ids")
    return vocab


def read_merges(path: str) -> list[tuple[str, str]]:
    merges = []
    with open(path, encoding="utf-8") as f:
        for lineno, raw in enumerate(f, 1):
            if lineno == 1 and raw.startswith("#version"):
                continue
            parts = raw.split()
            if not parts:
                continue
            if len(parts) != 2:
                raise BPEFileError(f"{path}:{lineno}: expected a merge 'LEFT RIGHT', got {raw.rstrip()!r}")
            merges.append((parts[0], parts[1]))
    return merges


class GPT2BPE:
    """Caption -> model ids with the official BPE files. Picklable (DataLoader workers)."""

    pad_id, unk_id, eos_id, bos_id = PAD_ID, UNK_ID, EOS_ID, BOS_ID

    def __init__(self, encoder_file: str, vocab_file: str, dict_file: str) -> None:
        for path in (encoder_file, vocab_file, dict_file):
            if not os.path.isfile(path):
                raise BPEFileError(f"{path}: no such file")
        self._build(read_encoder(encoder_file), read_merges(vocab_file), read_dict(dict_file))

    def _build(self, vocab: dict[str, int], merges: list[tuple[str, str]], symbols: list[str]) -> None:
        from tokenizers import Tokenizer as _HFTokenizer
        from tokenizers import models, pre_tokenizers

        self._state = (vocab, merges, symbols)
        known = set(vocab)
        for left, right in merges:
            if left + right not in known:
                raise BPEFileError(f"vocab.bpe: merge {left!r} {right!r} gives {left + right!r}, which encoder.json lacks")
        bpe = _HFTokenizer(models.BPE(vocab=vocab, merges=merges))
        bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        self._bpe = bpe
        self.symbols = symbols
        self.vocab_size = len(symbols)
        model_id = {s: i for i, s in enumerate(symbols)}
        # BPE id -> model id (unk where dict.txt has no line for it).
        self._to_model = np.full(max(vocab.values()) + 1, UNK_ID, dtype=np.int64)
        for bpe_id in vocab.values():
            self._to_model[bpe_id] = model_id.get(str(bpe_id), UNK_ID)
        byte_of = {c: b for b, c in bytes_to_unicode().items()}
        token_of = {i: t for t, i in vocab.items()}
        self._bytes = [self._symbol_bytes(s, token_of, byte_of) for s in symbols]
        # As fairseq's whole-word masking: specials and non-BPE symbols start a word, a BPE token does when
        # its text starts with a space.
        self.word_start = np.array([i < len(SPECIALS) or b is None or b.startswith(b" ")
                                    for i, b in enumerate(self._bytes)])

    @staticmethod
    def _symbol_bytes(symbol: str, token_of: dict[int, str], byte_of: dict[str, int]) -> bytes | None:
        if not symbol.isdigit() or int(symbol) not in token_of:
            return None
        return bytes(byte_of[c] for c in token_of[int(symbol)])

    def __getstate__(self) -> tuple:
        return self._state

    def __setstate__(self, state: tuple) -> None:
        self._build(*state)

    def normalize(self, text: str) -> str:
        return official_caption(text)

    def bpe_ids(self, text: str) -> list[int]:
        """GPT-2 BPE ids of already normalised text."""
        return self._bpe.encode(text, add_special_tokens=False).ids

    def ids(self, text: str) -> list[int]:
        """Model ids (no EOS) of already normalised text."""
        return self._to_model[np.asarray(self.bpe_ids(text), dtype=np.int64)].tolist()

    def decode(self, ids) -> str:
        parts = []
        for i in ids:
            i = int(i)
            if i in (BOS_ID, PAD_ID, EOS_ID):
                continue
            b = self._bytes[i]
            parts.append(b if b is not None else f" {self.symbols[i]}".encode())
        return b"".join(parts).decode("utf-8", errors="replace").removeprefix(" ")
