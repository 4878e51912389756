"""Decoding shard members, and the handler that skips (and counts) samples that fail to decode.

Only images, audio, text and JSON are ever decoded (see ``layout``): pickle, .pth and the like in a
shard are ignored, so a shard from elsewhere cannot run code in a training job.
"""

from __future__ import annotations

import io
import json
import logging
import math

import numpy as np
import soundfile as sf
from PIL import Image, ImageFile

from onepeace.data.formats import KIND_MODALITIES
from onepeace.data.layout import BUILT, Layout, MissingCaption, captions_of, field_value, first_member, parse_json_member

ImageFile.LOAD_TRUNCATED_IMAGES = False
log = logging.getLogger("onepeace.data")


class BadSample(ValueError):
    """A sample that cannot be used; skipped and counted by :class:`SkipCounter`."""


def decode_image(data: bytes, min_side: int | None = None) -> Image.Image:
    """RGB image; with ``min_side``, a JPEG at least twice that size is decoded at 1/2, 1/4 or 1/8
    scale in the DCT domain (much cheaper), never below ``min_side`` on its shorter side."""
    im = Image.open(io.BytesIO(data))
    if min_side and im.format == "JPEG" and 2 * min_side <= min(im.size):
        scale = min_side / min(im.size)
        im.draft("RGB", (math.ceil(im.size[0] * scale), math.ceil(im.size[1] * scale)))
    im.load()
    return im if im.mode == "RGB" else im.convert("RGB")


def decode_audio(data: bytes, sample_rate: int) -> np.ndarray:
    """Mono float32 at ``sample_rate`` from FLAC, WAV, OGG/Vorbis or MP3 bytes at any rate and channel
    count: channels are averaged, then the rate converted with torchaudio's windowed-sinc resampler."""
    wave, rate = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    wave = wave[:, 0] if wave.shape[1] == 1 else wave.mean(axis=1)
    if rate != sample_rate and wave.size:
        wave = resample(wave, rate, sample_rate)
    return wave


def resample(wave: np.ndarray, orig: int, new: int) -> np.ndarray:
    import torch
    import torchaudio.functional as AF

    return AF.resample(torch.from_numpy(np.ascontiguousarray(wave)), orig, new).numpy()


def decode_meta(data: bytes) -> dict:
    meta = json.loads(data)
    if not isinstance(meta, dict) or not isinstance(meta.get("id"), str):
        raise BadSample("KEY.json is not an object with a string 'id'")
    return meta


def decode_sample(sample: dict, kind: str, sample_rate: int, image_min_side: int | None = None,
                  layout: Layout = BUILT) -> dict:
    """What a task of ``kind`` needs from one raw sample, found where ``layout`` says: image (PIL),
    audio (float32 at ``sample_rate``), captions (a non-empty list), id and label."""
    try:
        meta = parse_json_member(sample["json"]) if "json" in sample else None
    except ValueError as exc:
        raise BadSample(str(exc)) from None
    key = sample.get("__key__")
    sample_id = field_value(layout.id, meta, key)
    if sample_id is None:
        raise BadSample(f"no sample id ({layout.id}{' and no KEY.json' if meta is None else ''})")
    out = {"id": sample_id, "label": field_value(layout.label, meta, key)}
    modalities = KIND_MODALITIES[kind]
    try:
        if "image" in modalities:
            ext = first_member(sample, layout.image)
            if ext is None:
                raise BadSample(f"no image member (.{', .'.join(layout.image)})")
            out["image"] = decode_image(sample[ext], image_min_side)
        if "audio" in modalities:
            ext = first_member(sample, layout.audio)
            if ext is None:
                raise BadSample(f"no audio member (.{', .'.join(layout.audio)})")
            out["audio"] = decode_audio(sample[ext], sample_rate)
        if "text" in modalities:
            out["captions"] = captions_of(layout.caption, sample.get("txt"), meta)
    except BadSample:
        raise
    except MissingCaption as exc:
        raise BadSample(str(exc)) from None
    except Exception as exc:  # decoders raise many types on damaged bytes
        raise BadSample(f"{type(exc).__name__}: {exc}") from None
    return out


class SkipCounter:
    """Logs and counts what was skipped, then lets the stream go on (the webdataset handler contract).

    Only a long run of failures with no good sample between them stops the stream: then every shard
    is likely unreadable, and going on would spin forever without producing a batch.
    """

    def __init__(self, where: str, log_first: int = 10, log_every: int = 1000, max_in_a_row: int = 1000):
        self.where = where
        self.count = 0
        self.in_a_row = 0
        self.log_first, self.log_every, self.max_in_a_row = log_first, log_every, max_in_a_row

    def ok(self) -> None:
        self.in_a_row = 0

    def __call__(self, exc: BaseException, key: str | None = None, url: str | None = None) -> bool:
        self.count += 1
        self.in_a_row += 1
        if self.count <= self.log_first or self.count % self.log_every == 0:
            at = " ".join(x for x in (url and f"in {url}", key and f"sample {key}") if x)
            log.warning("%s: skipped a bad sample %s: %s (%d skipped so far)", self.where, at, exc, self.count)
        if self.in_a_row >= self.max_in_a_row:
            raise RuntimeError(f"{self.where}: {self.in_a_row} bad samples or shards in a row, the last: {exc}; "
                               "check the shards with python -m data_tools.verify_shards") from exc
        return True
