"""The caption tokenizer: training, fixed special ids, normalisation, round trip, pickling."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
from data_fixtures import make_image_text

from data_tools.train_tokenizer import main
from onepeace.data.tokenizer import Tokenizer, TokenizerError, normalize_caption

SENTENCES = ["a red circle on a grey background", "two small blue squares", "a high pitched tone getting louder",
             "the quick brown fox jumps over the lazy dog", "three large green triangles in the top left"] * 20


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory) -> Tokenizer:
    root = tmp_path_factory.mktemp("tok")
    (root / "corpus.txt").write_text("\n".join(SENTENCES) + "\n")
    assert main(["--text-file", str(root / "corpus.txt"), "--out", str(root / "tok"), "--vocab-size", "150"]) == 0
    return Tokenizer(str(root / "tok.json"))


def test_sidecar_and_fixed_special_ids(tokenizer):
    meta = json.load(open(tokenizer.sidecar))
    assert meta == {"model_file": "tok.model", "vocab_size": tokenizer.vocab_size, "pad_id": 0, "unk_id": 1,
                    "eos_id": 2, "lowercase": True, "max_tokens": 70}
    assert tokenizer.vocab_size <= 150
    sp = tokenizer.codec.sp
    assert (sp.pad_id(), sp.unk_id(), sp.eos_id(), sp.bos_id()) == (0, 1, 2, -1)
    assert not tokenizer.word_start[[0, 1, 2]].any()


def test_round_trip_and_normalisation(tokenizer):
    for text in SENTENCES[:5]:
        ids = tokenizer.encode(text)
        assert ids.dtype == np.int64 and ids[-1] == tokenizer.eos_id and tokenizer.eos_id not in ids[:-1]
        assert tokenizer.decode(ids) == text
    assert tokenizer.decode(tokenizer.encode('  ..."A  Red CIRCLE')) == 'a red circle'
    assert tokenizer.encode('a red §').tolist()[-2] == tokenizer.unk_id  # unseen characters are unk
    assert normalize_caption("--- Hello,  World ") == "hello, world"
    assert normalize_caption("ABC", lowercase=False) == "ABC"


def test_word_starts_mark_whole_words(tokenizer):
    ids = tokenizer.encode("the lazy dog jumps")
    starts = tokenizer.word_start[ids[:-1]]
    assert starts[0] and starts.sum() == 4


def test_truncation_keeps_eos(tokenizer):
    long = " ".join(["fox"] * 200)
    assert tokenizer.encode(long).size == 71
    assert tokenizer.encode(long, max_tokens=10).size == 11
    assert tokenizer.encode("").tolist() == [tokenizer.eos_id]


def test_pickles_for_dataloader_workers(tokenizer):
    clone = pickle.loads(pickle.dumps(tokenizer))
    assert clone.encode("a red circle").tolist() == tokenizer.encode("a red circle").tolist()


def test_trains_from_shards(tmp_path):
    shards = make_image_text(str(tmp_path), 6, per_shard=3, labels=False)
    assert main(["--shards", shards, "--out", str(tmp_path / "t"), "--vocab-size", "60"]) == 0
    tok = Tokenizer(str(tmp_path / "t.json"))
    assert tok.decode(tok.encode("Red circle")) == "red circle"


def test_bad_sidecar_is_named(tmp_path):
    with pytest.raises(TokenizerError, match="no such tokenizer sidecar"):
        Tokenizer(str(tmp_path / "missing.json"))
    (tmp_path / "s.json").write_text(json.dumps({"model_file": "nope.model", "pad_id": 0, "unk_id": 1, "eos_id": 2,
                                                  "max_tokens": 70}))
    with pytest.raises(TokenizerError, match="cannot read model_file"):
        Tokenizer(str(tmp_path / "s.json"))
