"""Readers of media and captions as other tools store them: any audio rate, channel count and format,
captions from .txt or a JSON field, the members spec of index.json."""

from __future__ import annotations

import io

import numpy as np
import pytest
import soundfile as sf
import torch
import torchaudio.functional as AF
from foreign_shards import audio_bytes, image_bytes

from onepeace.data.decode import BadSample, decode_audio, decode_image, decode_sample
from onepeace.data.layout import Layout, LayoutError, MissingCaption, captions_of


@pytest.mark.parametrize("fmt,subtype,rate,channels", [
    ("FLAC", "PCM_16", 48000, 2), ("WAV", "PCM_16", 22050, 1), ("WAV", "FLOAT", 16000, 3),
    ("OGG", "VORBIS", 44100, 2), ("MP3", "MPEG_LAYER_III", 44100, 2)])
def test_audio_of_any_format_rate_and_channels_becomes_16k_mono(fmt, subtype, rate, channels):
    if fmt not in sf.available_formats():
        pytest.skip(f"this libsndfile ({sf.__libsndfile_version__}) has no {fmt}")
    data = audio_bytes(3, rate=rate, channels=channels, seconds=0.5, fmt=fmt, subtype=subtype)
    got = decode_audio(data, 16000)
    wave, file_rate = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)  # the plain statement
    want = AF.resample(torch.from_numpy(wave.mean(axis=1)), file_rate, 16000).numpy() if file_rate != 16000 \
        else wave.mean(axis=1)
    assert got.dtype == np.float32 and got.ndim == 1
    assert got.shape == want.shape and np.allclose(got, want, atol=1e-6)
    assert abs(got.size - 8000) <= 1200  # lossy codecs pad a little


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
def test_images_in_every_accepted_format(fmt):
    assert decode_image(image_bytes(1, fmt)).size == (48, 40)


def test_captions_from_txt_lines_and_json_fields():
    assert captions_of("txt", b" a  red\nsquare ", None) == ["a red square"]
    assert captions_of("txt-lines", b"one\n\n two \n", None) == ["one", "two"]
    assert captions_of("json:text", None, {"text": ["x", " ", "y  z"]}) == ["x", "y z"]
    assert captions_of("json:caption", None, {"caption": "hello"}) == ["hello"]
    for spec, txt, meta, match in (("json:text", None, {"text": []}, "empty caption"),
                                   ("json:text", None, {"caption": "x"}, "no 'text' field"),
                                   ("json:text", None, {"text": 5}, "not a string or list"),
                                   ("txt", None, {}, "no .txt member"), ("txt", b"\xff", None, "not UTF-8")):
        with pytest.raises(MissingCaption, match=match):
            captions_of(spec, txt, meta)


def test_a_sample_follows_its_layout_and_bad_ones_are_bad_samples():
    layout = Layout(image=("jpg", "webp"), caption="json:caption", id="key")
    sample = {"__key__": "000001", "webp": image_bytes(2, "WEBP"), "json": b'{"caption": "a cat"}'}
    d = decode_sample(sample, "image-text", 16000, None, layout)
    assert d["id"] == "000001" and d["captions"] == ["a cat"] and d["image"].size == (48, 40)
    for broken, match in (({"json": b"{oops"}, "not JSON"), ({"json": b"[1]"}, "not an object"),
                          ({"webp": None}, "no image member"), ({"json": b"{}"}, "no 'caption' field")):
        bad = {**sample, **broken}
        bad = {k: v for k, v in bad.items() if v is not None}
        with pytest.raises(BadSample, match=match):
            decode_sample(bad, "image-text", 16000, None, layout)


def test_members_spec_is_validated():
    assert Layout.from_json(None, "x") == Layout()
    assert Layout.from_json({"audio": ["mp3", "flac"], "caption": "json:text", "id": "key"}, "x").audio == ("mp3", "flac")
    for bad, match in (({"image": ["gif"]}, "image"), ({"caption": "csv"}, "caption source"),
                       ({"id": "name"}, "members.id"), ({"colour": 1}, "unknown members field")):
        with pytest.raises(LayoutError, match=match):
            Layout.from_json(bad, "index.json")
