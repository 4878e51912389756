"""The ``gpt2-bpe`` tokenizer kind against a plain re-statement of GPT-2 byte-level BPE and the official
caption rules, on tiny BPE files written here."""

from __future__ import annotations

import itertools
import json
import math
import pickle
import re

import pytest
from data_fixtures import gpt2_byte_alphabet, write_gpt2_bpe

from onepeace.data.tokenizer import (
    Tokenizer,
    TokenizerError,
    copy_tokenizer,
    install_gpt2_bpe,
)

# ---------------------------------------------------------------------------------------------------------
# The reference, restated: GPT-2's byte alphabet, its pre-tokenising regex (ASCII-and-Latin form, enough for
# these captions), merging the lowest-ranked adjacent pair until none applies, fairseq's dict lookup.
# ---------------------------------------------------------------------------------------------------------


REF_SPLIT = re.compile(r"""'s|'t|'re|'ve|'m|'ll|'d| ?[^\W\d_]+| ?\d+| ?(?:[^\s\w]|_)+|\s+(?!\S)|\s+""")


def ref_bpe(word: str, ranks: dict[tuple[str, str], int]) -> list[str]:
    parts = list(word)
    while len(parts) > 1:
        best = min(itertools.pairwise(parts), key=lambda pair: ranks.get(pair, math.inf))
        if best not in ranks:
            break
        out, i = [], 0
        while i < len(parts):
            if i + 1 < len(parts) and (parts[i], parts[i + 1]) == best:
                out.append(parts[i] + parts[i + 1])
                i += 2
            else:
                out.append(parts[i])
                i += 1
        parts = out
    return parts


def ref_encode(caption: str, encoder: dict[str, int], merges: list[tuple[str, str]], dict_lines: list[str],
               max_tokens: int = 70) -> list[int]:
    text = caption.lower().lstrip(",.!?*#:;~")
    text = " " + re.sub(r"\s{2,}|\t", " ", text).rstrip("\n").strip(" ")
    alphabet, ranks = gpt2_byte_alphabet(), {m: r for r, m in enumerate(merges)}
    model_id = {line.split()[0]: 4 + n for n, line in enumerate(dict_lines)}  # after <s> <pad> </s> <unk>
    ids = []
    for piece in REF_SPLIT.findall(text):
        word = "".join(alphabet[b] for b in piece.encode("utf-8"))
        ids += [model_id.get(str(encoder[t]), 3) for t in ref_bpe(word, ranks)]
    return ids[:max_tokens] + [2]


# ---------------------------------------------------------------------------------------------------------
# Tiny official-format files
# ---------------------------------------------------------------------------------------------------------

MERGES = [("Ġ", "a"), ("h", "e"), ("r", "e"), ("Ġ", "t"), ("Ġt", "he"), ("e", "r"), ("Ġ", "c"), ("i", "r"),
          ("Ġc", "ir"), ("c", "l"), ("cl", "e"), ("Ġ", "r"), ("Ġr", "ed"), ("e", "d"), ("Ġ", "s"), ("q", "u"),
          ("a", "r"), ("Ġ", "b"), ("l", "u"), ("Ġb", "lu"), ("Ġblu", "e"), ("o", "n"), ("Ġ", "o"), ("Ġo", "n"),
          ("Ġ", "d"), ("o", "g"), ("Ġd", "og"), ("'", "s"), ("Ġ", "4"), ("Ġ4", "2"), ("Ã", "©")]
CAPTIONS = ["A red circle on a grey background", "  ...Two  small, BLUE squares!\tthere", "#the dog's ball 42",
            "café, caféé\nnew line", "there there the", "", "Ünïcödé ≠ ascii", " ".join(["red"] * 100)]


@pytest.fixture(scope="module")
def bpe_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("bpe")
    # dict.txt leaves out the bytes that start "≠", so that they map to <unk>.
    unknown = {gpt2_byte_alphabet()[0xE2], gpt2_byte_alphabet()[0x89]}
    encoder, lines = write_gpt2_bpe(str(root), MERGES, in_dict=lambda i, token: token not in unknown)
    return root, encoder, lines


@pytest.fixture(scope="module")
def tok(bpe_dir, tmp_path_factory) -> Tokenizer:
    return Tokenizer(install_gpt2_bpe(str(bpe_dir[0]), str(tmp_path_factory.mktemp("installed"))))


def test_encodes_like_the_official_code(bpe_dir, tok):
    _, encoder, lines = bpe_dir
    assert (tok.pad_id, tok.eos_id, tok.unk_id, tok.vocab_size) == (1, 2, 3, 4 + len(lines))
    for caption in CAPTIONS:
        assert tok.encode(caption).tolist() == ref_encode(caption, encoder, MERGES, lines), caption
    assert 3 in tok.encode("Ünïcödé ≠ ascii").tolist()  # BPE ids without a dict line are <unk>
    assert tok.encode(CAPTIONS[-1]).size == 71 and tok.encode(CAPTIONS[-1], max_tokens=5).size == 6
    assert tok.encode("").tolist() == ref_encode("", encoder, MERGES, lines)  # ' ' alone is one BPE token


def test_normalisation_and_decode(tok):
    # As the official code: leading punctuation is stripped before leading spaces, so spaces protect it.
    assert tok.normalize("...Two  small, BLUE\t squares!\n") == " two small, blue squares!"
    assert tok.normalize("  ...two") == " ...two"
    assert tok.normalize("#the dog") == " the dog"
    assert tok.decode(tok.encode("A red circle on a grey background")) == "a red circle on a grey background"


def test_word_starts_follow_the_leading_space(bpe_dir, tok):
    ids = tok.encode("the red circle")[:-1]
    # " the", " ", "re", "d", " cir", "cle": "r e" outranks "Ġ r", so " red" splits after its space.
    assert tok.word_start[ids].tolist() == [True, True, False, False, True, False]
    assert tok.word_start[:4].all()  # fairseq treats its specials as word starts
    _, encoder, lines = bpe_dir
    token_of = {i: t for t, i in encoder.items()}
    for n, line in enumerate(lines):
        assert tok.word_start[4 + n] == token_of[int(line.split()[0])].startswith("Ġ")


def test_pickles_and_copies(tok, tmp_path):
    clone = pickle.loads(pickle.dumps(tok))
    assert clone.encode(CAPTIONS[1]).tolist() == tok.encode(CAPTIONS[1]).tolist()
    copied = Tokenizer(copy_tokenizer(tok.sidecar, str(tmp_path / "export" / "tokenizer")))
    assert copied.kind == "gpt2-bpe" and sorted(p.name for p in (tmp_path / "export" / "tokenizer").iterdir()) == \
        ["dict.txt", "encoder.json", "tokenizer.json", "vocab.bpe"]
    assert copied.encode(CAPTIONS[2]).tolist() == tok.encode(CAPTIONS[2]).tolist()


def test_bad_files_are_named(bpe_dir, tmp_path):
    root = bpe_dir[0]
    with pytest.raises(TokenizerError, match="lacks vocab.bpe"):
        (tmp_path / "a").mkdir()
        (tmp_path / "a" / "encoder.json").write_text("{}")
        (tmp_path / "a" / "dict.txt").write_text("")
        install_gpt2_bpe(str(tmp_path / "a"), str(tmp_path / "out"))
    (tmp_path / "b").mkdir()
    for name in ("encoder.json", "vocab.bpe"):
        (tmp_path / "b" / name).write_bytes((root / name).read_bytes())
    (tmp_path / "b" / "dict.txt").write_text("5 10\n7\n")
    with pytest.raises(TokenizerError, match=r"dict.txt:2: expected 'SYMBOL COUNT'"):
        install_gpt2_bpe(str(tmp_path / "b"), str(tmp_path / "out"))
    (tmp_path / "b" / "dict.txt").write_text("5 10\n5 9\n")
    with pytest.raises(TokenizerError, match=r"dict.txt:2: duplicate symbol '5'"):
        install_gpt2_bpe(str(tmp_path / "b"), str(tmp_path / "out"))
    sidecar = tmp_path / "s.json"
    sidecar.write_text(json.dumps({"kind": "gpt2-bpe", "encoder_file": "e", "vocab_file": "v", "dict_file": "d",
                                   "max_tokens": 70, "lowercase": False}))
    with pytest.raises(TokenizerError, match="always lowercases"):
        Tokenizer(str(sidecar))
    sidecar.write_text(json.dumps({"kind": "wordpiece", "max_tokens": 70}))
    with pytest.raises(TokenizerError, match="unknown tokenizer kind 'wordpiece'"):
        Tokenizer(str(sidecar))
