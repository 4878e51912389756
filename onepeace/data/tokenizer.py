"""The caption tokenizer: a JSON sidecar that fixes the conventions, plus the files of one tokenizer kind.

The sidecar (docs/data_format.md) is what the pipeline and the model agree on: the special ids, the
normalisation and the 70-token limit, so a tokenizer file alone cannot silently change them. Two kinds:

- ``sentencepiece`` (the default, for new models): a SentencePiece BPE model trained on the user's
  captions by ``data_tools.train_tokenizer``; pad 0, unk 1, eos 2.
- ``gpt2-bpe``: the official ONE-PEACE encoding (GPT-2 BPE files and a fairseq ``dict.txt``;
  :mod:`onepeace.data.gpt2_bpe`); bos 0, pad 1, eos 2, unk 3. Models converted from the released
  weights use it.
"""

from __future__ import annotations

import json
import os
import shutil
import string

import numpy as np

PAD_ID, UNK_ID, EOS_ID = 0, 1, 2
WORD_START = "\u2581"  # SentencePiece's "▁": the piece starts a new word
_LEADING = string.punctuation + string.whitespace
SENTENCEPIECE, GPT2_BPE = "sentencepiece", "gpt2-bpe"
KINDS = (SENTENCEPIECE, GPT2_BPE)
# Sidecar keys that name files, relative to the sidecar, per kind.
FILE_KEYS = {SENTENCEPIECE: ("model_file",), GPT2_BPE: ("encoder_file", "vocab_file", "dict_file")}


class TokenizerError(ValueError):
    """A tokenizer file or sidecar is missing or inconsistent; the message names it."""


def normalize_caption(text: str, lowercase: bool = True) -> str:
    """For SentencePiece tokenizers: lowercase, strip leading punctuation, collapse whitespace."""
    text = " ".join(text.split())
    if lowercase:
        text = text.lower()
    return text.lstrip(_LEADING)


class SentencePieceCodec:
    """Normalised text <-> ids with a SentencePiece model (shipped as bytes, so it pickles)."""

    def __init__(self, proto: bytes, lowercase: bool) -> None:
        import sentencepiece as spm

        self._proto, self.lowercase = proto, lowercase
        self.sp = spm.SentencePieceProcessor(model_proto=proto)
        self.pad_id, self.unk_id, self.eos_id = self.sp.pad_id(), self.sp.unk_id(), self.sp.eos_id()
        self.vocab_size = self.sp.get_piece_size()
        pieces = [self.sp.id_to_piece(i) for i in range(self.vocab_size)]
        special = {self.pad_id, self.unk_id, self.eos_id}
        self.word_start = np.array([p.startswith(WORD_START) and i not in special for i, p in enumerate(pieces)])

    def __getstate__(self) -> tuple:
        return self._proto, self.lowercase

    def __setstate__(self, state: tuple) -> None:
        self.__init__(*state)

    def normalize(self, text: str) -> str:
        return normalize_caption(text, self.lowercase)

    def ids(self, text: str) -> list[int]:
        return self.sp.encode(text, out_type=int)

    def decode(self, ids) -> str:
        return self.sp.decode([int(i) for i in ids if int(i) not in (self.pad_id, self.eos_id)])


def _read_sidecar(sidecar: str) -> dict:
    try:
        with open(sidecar, encoding="utf-8") as f:
            meta = json.load(f)
    except FileNotFoundError:
        raise TokenizerError(f"{sidecar}: no such tokenizer sidecar (make one with python -m data_tools.train_tokenizer)") from None
    except json.JSONDecodeError as exc:
        raise TokenizerError(f"{sidecar}: not valid JSON ({exc})") from None
    if not isinstance(meta, dict):
        raise TokenizerError(f"{sidecar}: expected a JSON object")
    kind = meta.get("kind", SENTENCEPIECE)
    if kind not in KINDS:
        raise TokenizerError(f"{sidecar}: unknown tokenizer kind {kind!r}; expected one of {', '.join(KINDS)}")
    required = FILE_KEYS[kind] + (("pad_id", "unk_id", "eos_id") if kind == SENTENCEPIECE else ()) + ("max_tokens",)
    for key in required:
        if key not in meta:
            raise TokenizerError(f"{sidecar}: missing key {key!r}")
    if kind == GPT2_BPE and meta.get("lowercase", True) is not True:
        raise TokenizerError(f"{sidecar}: a gpt2-bpe tokenizer always lowercases, as the official code does; "
                             "remove 'lowercase' or set it to true")
    return meta


def _build_codec(sidecar: str, meta: dict):
    kind = meta.get("kind", SENTENCEPIECE)
    paths = {key: os.path.join(os.path.dirname(sidecar), meta[key]) for key in FILE_KEYS[kind]}
    if kind == SENTENCEPIECE:
        try:
            with open(paths["model_file"], "rb") as f:
                proto = f.read()
        except OSError as exc:
            raise TokenizerError(f"{sidecar}: cannot read model_file {paths['model_file']}: {exc.strerror}") from None
        return SentencePieceCodec(proto, bool(meta.get("lowercase", True)))
    from .gpt2_bpe import GPT2BPE

    try:
        return GPT2BPE(**paths)
    except (TokenizerError, OSError) as exc:
        raise TokenizerError(f"{sidecar}: {exc}") from None


class Tokenizer:
    """``encode`` gives token ids ending in EOS; ``word_start`` marks tokens that begin a word."""

    def __init__(self, sidecar: str):
        self.sidecar = os.path.abspath(sidecar)
        self.meta = _read_sidecar(sidecar)
        self.codec = _build_codec(self.sidecar, self.meta)
        self._setup()

    def _setup(self) -> None:
        meta, codec = self.meta, self.codec
        self.kind = meta.get("kind", SENTENCEPIECE)
        self.pad_id, self.unk_id, self.eos_id = codec.pad_id, codec.unk_id, codec.eos_id
        declared = tuple(meta.get(k, v) for k, v in (("pad_id", codec.pad_id), ("unk_id", codec.unk_id),
                                                     ("eos_id", codec.eos_id)))
        if declared != (self.pad_id, self.unk_id, self.eos_id):
            raise TokenizerError(f"{self.sidecar}: the model's pad/unk/eos ids {(self.pad_id, self.unk_id, self.eos_id)} "
                                 f"differ from the sidecar's {declared}")
        self.max_tokens = int(meta["max_tokens"])
        self.lowercase = bool(meta.get("lowercase", True))
        self.vocab_size = codec.vocab_size
        self.word_start = codec.word_start

    # Picklable for DataLoader workers started with spawn: the codecs ship file contents, not C++ objects.
    def __getstate__(self) -> dict:
        return {"sidecar": self.sidecar, "meta": self.meta, "codec": self.codec}

    def __setstate__(self, state: dict) -> None:
        self.sidecar, self.meta, self.codec = state["sidecar"], state["meta"], state["codec"]
        self._setup()

    def normalize(self, text: str) -> str:
        """The text the codec encodes (for ``gpt2-bpe`` with the official leading space)."""
        return self.codec.normalize(text)

    def encode(self, text: str, max_tokens: int | None = None) -> np.ndarray:
        """int64 ids of the normalised text, at most ``max_tokens`` (default: the sidecar's) plus EOS."""
        limit = self.max_tokens if max_tokens is None else min(max_tokens, self.max_tokens)
        ids = self.codec.ids(self.codec.normalize(text))[:limit]
        out = np.empty(len(ids) + 1, dtype=np.int64)
        out[:-1] = ids
        out[-1] = self.eos_id
        return out

    def decode(self, ids) -> str:
        return self.codec.decode(ids)


def copy_tokenizer(sidecar: str, target_dir: str, name: str = "tokenizer.json") -> str:
    """Copy a sidecar and the files it names into ``target_dir`` (file names kept); returns the new sidecar.

    The copy is checked by loading it, so an export never carries a tokenizer that does not load.
    """
    meta = _read_sidecar(sidecar)
    os.makedirs(target_dir, exist_ok=True)
    for key in FILE_KEYS[meta.get("kind", SENTENCEPIECE)]:
        source = os.path.join(os.path.dirname(os.path.abspath(sidecar)), meta[key])
        if not os.path.isfile(source):
            raise TokenizerError(f"{sidecar}: {key} {source} does not exist")
        shutil.copy2(source, os.path.join(target_dir, os.path.basename(source)))
        meta[key] = os.path.basename(source)
    out = os.path.join(target_dir, name)
    with open(out, "w", encoding="utf-8") as f:
        json.dump(meta, f, indent=2)
        f.write("\n")
    Tokenizer(out)
    return out


def install_gpt2_bpe(bpe_dir: str, target_dir: str, max_tokens: int = 70, name: str = "tokenizer.json") -> str:
    """Copy the official ``encoder.json``, ``vocab.bpe`` and ``dict.txt`` from ``bpe_dir`` into ``target_dir``
    and write a ``gpt2-bpe`` sidecar next to them; returns its path. Checked by loading it."""
    from .gpt2_bpe import FILES, read_dict

    missing = [f for f in FILES.values() if not os.path.isfile(os.path.join(bpe_dir, f))]
    if missing:
        raise TokenizerError(f"{bpe_dir}: the official BPE folder lacks {', '.join(missing)} "
                             f"(expected {', '.join(FILES.values())})")
    os.makedirs(target_dir, exist_ok=True)
    for f in FILES.values():
        if os.path.abspath(os.path.join(bpe_dir, f)) != os.path.abspath(os.path.join(target_dir, f)):
            shutil.copy2(os.path.join(bpe_dir, f), os.path.join(target_dir, f))
    out = os.path.join(target_dir, name)
    vocab_size = len(read_dict(os.path.join(target_dir, FILES["dict_file"])))
    meta = {"kind": GPT2_BPE, **FILES, "vocab_size": vocab_size, "lowercase": True, "max_tokens": max_tokens}
    with open(out, "w", encoding="utf-8") as f:
        json.dump(meta, f, indent=2)
        f.write("\n")
    Tokenizer(out)
    return out
