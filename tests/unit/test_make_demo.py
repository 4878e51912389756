"""data_tools.make_demo: a small corpus that verifies, has labels, distinct held-out captions and
captions whose attributes are really in the media."""

from __future__ import annotations

import io
import os

import numpy as np
import pytest
import soundfile as sf
from PIL import Image

from data_tools import demo_media
from data_tools.make_demo import main, make_demo
from data_tools.verify_shards import verify
from onepeace.data.tokenizer import Tokenizer


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("demo") / "demo")
    return out, make_demo(out, train_size=30, val_size=20, workers=2, log=lambda msg: None)


def test_every_part_is_built_and_verifies(demo):
    out, paths = demo
    for split in ("image-text/train", "image-text/val", "audio-text/train", "audio-text/val", "text/train"):
        assert verify(paths[split], progress=False, out=io.StringIO()) == 0, split
    tok = Tokenizer(paths["tokenizer"])
    assert tok.vocab_size <= 1000
    assert tok.decode(tok.encode("a small red circle")) == "a small red circle"
    assert open(paths["labels_image"]).read().split("\n")[:-1] == list(demo_media.SHAPES)
    assert open(paths["labels_audio"]).read().split("\n")[:-1] == list(demo_media.SOUNDS)


def rows(out: str, modality: str, split: str) -> list[list[str]]:
    with open(os.path.join(out, "raw", f"{modality}_text_{split}.tsv")) as f:
        header, *lines = f.read().splitlines()
    assert header.split("\t") == ["id", "image" if modality == "image" else "audio", "text", "label"]
    return [line.split("\t") for line in lines]


@pytest.mark.parametrize("modality", ["image", "audio"])
def test_validation_captions_are_distinct_and_labelled(demo, modality):
    out, _ = demo
    val = rows(out, modality, "val")
    assert len(val) == 20 and len({r[2] for r in val}) == 20
    names = demo_media.SHAPES if modality == "image" else demo_media.SOUNDS
    assert all(r[3] in names for r in val)


def test_same_seed_same_corpus(demo, tmp_path):
    out, _ = demo
    again = make_demo(str(tmp_path / "again"), train_size=30, val_size=20, workers=1, log=lambda msg: None)
    assert rows(out, "image", "val") == rows(str(tmp_path / "again"), "image", "val")
    import json

    first = json.load(open(os.path.join(out, "shards", "audio-text", "train", "index.json")))["shards"]
    second = json.load(open(os.path.join(again["audio-text/train"], "index.json")))["shards"]
    assert [s["sha256"] for s in first] == [s["sha256"] for s in second]


def test_image_captions_name_what_is_drawn():
    rng = np.random.default_rng(0)
    for _ in range(60):
        image, caption, label = demo_media.make_image(rng, 112)
        assert label in caption or demo_media._plural(label) in caption
        colour = next(c for c in demo_media.COLOURS if f" {c} " in f" {caption} ")
        pixels = np.asarray(image).reshape(-1, 3).astype(int)
        close = (np.abs(pixels - np.array(demo_media.COLOURS[colour])).max(axis=1) <= 25).mean()
        assert close > 0.01, caption  # the named colour covers part of the picture


def test_audio_captions_name_what_is_heard():
    rng = np.random.default_rng(0)
    for _ in range(40):
        wave, caption, label = demo_media.make_audio(rng, 16000)
        assert 1.0 <= wave.size / 16000 <= 4.0 and np.abs(wave).max() <= 1.0
        if label in ("tone", "pulses"):
            spectrum = np.abs(np.fft.rfft(wave))
            peak = np.fft.rfftfreq(wave.size, 1 / 16000)[spectrum.argmax()]
            pitch = next(p for p in demo_media.PITCHES if f" {p} " in f" {caption} ")
            lo, hi = demo_media.PITCHES[pitch]
            assert lo * 0.95 <= peak <= hi * 1.05, caption
        if "getting louder" in caption:
            half = wave.size // 2
            assert np.abs(wave[half:]).mean() > 2 * np.abs(wave[:half]).mean()


def test_cli_refuses_a_non_empty_folder(tmp_path, capsys):
    (tmp_path / "x").write_text("keep me")
    with pytest.raises(SystemExit):
        main(["--out", str(tmp_path)])
    assert "--force" in capsys.readouterr().err and (tmp_path / "x").exists()
