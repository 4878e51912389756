"""Official weights end to end: a checkpoint in the official layout at the ``tiny`` preset's sizes, through
``onepeace-convert-official``, then ``--set train.init_from=`` of a real training run
with the official text encoding."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch
import yaml
from train_helpers import run, write_recipe

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "unit"))
from data_fixtures import write_gpt2_bpe
from official_layout import OfficialSize, official_checkpoint

# The tiny preset in the official layout: its relative tables at the official bucket sizes (256, 512).
TINY = OfficialSize(d=64, heads=4, layers=2, ffn=256, vocab=300, text_buckets=256, audio_buckets=512, grid=4,
                    conv=32, pos_convs=2, pos_kernel=19, pos_groups=4, dec_d=64, dec_layers=2, dec_ffn=128)


@pytest.mark.slow
def test_convert_then_continue_pretraining(tmp_path: Path, demo_corpus):
    torch.save({"model": official_checkpoint(TINY)}, tmp_path / "one-peace.pt")
    _, lines = write_gpt2_bpe(str(tmp_path / "bpe"), [("Ġ", "a"), ("r", "e"), ("Ġ", "c")])
    vocab = 4 + len(lines)
    assert vocab <= TINY.vocab
    # python -m runs the console script's main (onepeace-convert-official).
    out = run([sys.executable, "-m", "onepeace.integrations.official", str(tmp_path / "one-peace.pt"),
               str(tmp_path / "export"), "--bpe-dir", str(tmp_path / "bpe")])
    assert out.returncode == 0, out.stderr
    assert f"vocab_size {TINY.vocab}, pad_id 1" in out.stdout

    recipe = write_recipe(tmp_path / "r.yaml", demo_corpus, steps=2,
                          model={"modalities": ["text", "image"], "vocab_size": TINY.vocab, "pad_id": 1},
                          init_from=str(tmp_path / "export"))
    data = yaml.safe_load(recipe.read_text())
    data["data"]["tokenizer"] = str(tmp_path / "export" / "tokenizer" / "tokenizer.json")
    recipe.write_text(yaml.safe_dump(data))
    train = run([sys.executable, "-m", "onepeace.train", "--config", str(recipe), "--run-dir", str(tmp_path / "run")],
                timeout=600)
    assert train.returncode == 0, train.stdout[-3000:] + train.stderr[-3000:]
    log = train.stdout + train.stderr
    assert "warm start from" in log and "'unused': " in log, log[-3000:]
