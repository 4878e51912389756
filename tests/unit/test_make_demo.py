"""data_tools.make_demo: a small corpus that verifies, has labels, distinct held-out captions and
captions whose attributes are really in the media."""

from __future__ import annotations

import io
import os

import numpy as np
import pytest

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


# --------------------------------------------------------------------------------------------------
# The other families: glyphs (letters; Morse code) and patterns (textures; telephone keys)
# --------------------------------------------------------------------------------------------------

from data_tools import demo_glyphs, demo_patterns  # noqa: E402
from data_tools.make_demo import FAMILIES  # noqa: E402


@pytest.mark.parametrize("family", ["glyphs", "patterns"])
def test_family_corpus_builds_with_distinct_held_out_captions(family, tmp_path):
    out = str(tmp_path / family)
    paths = make_demo(out, family=family, train_size=12, val_size=40, image_px=64, workers=1, log=lambda msg: None)
    for split in ("image-text/val", "audio-text/val", "text/train"):
        assert verify(paths[split], progress=False, out=io.StringIO()) == 0, split
    media = FAMILIES[family]
    for modality, names in (("image", media.IMAGE_LABELS), ("audio", media.AUDIO_LABELS)):
        val = rows(out, modality, "val")
        assert len(val) == 40 and len({r[2] for r in val}) == 40
        assert all(r[3] in names for r in val)
    assert open(paths["labels_audio"]).read().split("\n")[:-1] == list(media.AUDIO_LABELS)


def test_cli_builds_a_named_family(tmp_path):
    assert main(["--out", str(tmp_path / "p"), "--family", "patterns", "--train-size", "4", "--val-size", "4",
                 "--image-px", "64", "--workers", "1"]) == 0
    assert "telephone" in open(tmp_path / "p" / "raw" / "text_train.txt").read() or \
        "dials" in open(tmp_path / "p" / "raw" / "text_train.txt").read() or \
        "phone" in open(tmp_path / "p" / "raw" / "text_train.txt").read()
    with pytest.raises(ValueError, match="unknown demo family"):
        make_demo(str(tmp_path / "q"), family="nope")


def test_glyph_images_show_the_named_colour_and_morse_has_the_named_timing():
    rng = np.random.default_rng(1)
    for _ in range(30):
        image, caption, char = demo_glyphs.make_image(rng, 64)
        assert f" {char}" in f" {caption}"
        colour = next(c for c in demo_glyphs.COLOURS if f" {c} " in f" {caption.replace(',', ' ')} ")
        pixels = np.asarray(image).reshape(-1, 3).astype(int)
        assert (np.abs(pixels - np.array(demo_glyphs.COLOURS[colour])).max(axis=1) <= 20).sum() >= 12, caption
    for _ in range(30):
        wave, caption, letter = demo_glyphs.make_audio(rng, 16000)
        assert 1.0 <= wave.size / 16000 <= 2.0 and np.abs(wave).max() <= 1.0
        assert f" {letter}" in caption
        on = np.convolve(np.abs(wave) > 0.1, np.ones(16), "same") > 0  # beeping, ignoring zero crossings
        beeps = int((np.diff(on.astype(int)) == 1).sum())
        letters = [w for w in caption.replace(",", " ").split() if len(w) == 1 and w in demo_glyphs.MORSE]
        assert beeps == sum(len(demo_glyphs.MORSE[x]) for x in letters), caption
        spectrum = np.abs(np.fft.rfft(wave))
        peak = np.fft.rfftfreq(wave.size, 1 / 16000)[spectrum.argmax()]
        pitch = next(p for p in demo_glyphs.PITCHES if f" {p} " in f" {caption.replace(',', ' ')} ")
        assert abs(peak / demo_glyphs.PITCHES[pitch] - 1) < 0.06, caption


def test_pattern_colours_and_key_tones_are_as_named():
    rng = np.random.default_rng(2)
    for _ in range(30):
        image, caption, texture = demo_patterns.make_image(rng, 64)
        assert texture in caption
        pixels = np.asarray(image).reshape(-1, 3).astype(int)
        for colour in (c for c in demo_patterns.COLOURS if f" {c} " in f" {caption.replace(',', ' ')} "):
            assert (np.abs(pixels - np.array(demo_patterns.COLOURS[colour])).max(axis=1) <= 30).mean() > 0.05, caption
    for _ in range(20):
        wave, caption, first = demo_patterns.make_audio(rng, 16000)
        assert 1.0 <= wave.size / 16000 <= 2.0
        names = [demo_patterns.KEY_NAMES.get(k, k) for k in demo_patterns.KEYS]
        keys = [w for w in caption.replace(",", " ").split() if w in names]
        assert keys[0] == first and 2 <= len(keys) <= 4
        # the first press holds exactly its row and column frequencies
        key = demo_patterns.KEYS[names.index(first)]
        row, col = demo_patterns.ROWS[demo_patterns.KEYS.index(key) // 3], demo_patterns.COLUMNS[demo_patterns.KEYS.index(key) % 3]
        start = int(np.argmax(np.abs(wave) > 0.05))
        burst = wave[start : start + 1200]  # 75 ms: inside the first press at either pace
        spectrum = np.abs(np.fft.rfft(burst, 16000))
        top = sorted(np.argsort(spectrum)[-2:])
        assert abs(top[0] - row) < 15 and abs(top[1] - col) < 15, caption
