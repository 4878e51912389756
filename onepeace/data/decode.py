"""Decoding shard members, and the handler that skips (and counts) samples that fail to decode.

Only the member types of docs/data_format.md are ever decoded: pickle, .pth and the like in a
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

from onepeace.data.formats import task_members

ImageFile.LOAD_TRUNCATED_IMAGES = False
log = logging.getLogger("onepeace.data")


class BadSample(ValueError):
    """A sample that cannot be used; skipped and counted by :class:`SkipCounter`."""


# Modes whose samples are wider than 8 bits. ``convert("RGB")`` clips them (every 16-bit value above
# 255 becomes white), so they are rescaled to 8 bits first.
HIGH_DEPTH_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")


def to_8bit(im: Image.Image) -> Image.Image:
    """A greyscale image with more than 8 bits per sample scaled to mode ``L``; other images unchanged.

    ``I;16`` (16-bit PNG and TIFF) and ``I`` (32-bit integers, in practice 16-bit data) are mapped from
    [0, 65535] to [0, 255]; ``F`` from [0, 1]. Values outside that nominal range (negative, or above it)
    leave no fixed scale to use, so the image is stretched from its own minimum to its maximum.
    """
    if im.mode not in HIGH_DEPTH_MODES:
        return im
    a = np.asarray(im, dtype=np.float64)
    if not np.isfinite(a).all():
        raise ValueError(f"mode {im.mode} image holds NaN or infinite values")
    top = 1.0 if im.mode == "F" else 65535.0
    lo, hi = (float(a.min()), float(a.max())) if a.size else (0.0, top)
    if lo < 0 or hi > top:
        top = hi - lo
        a = a - lo
    scaled = np.rint(a * (255.0 / top)) if top > 0 else np.zeros_like(a)
    return Image.fromarray(np.clip(scaled, 0, 255).astype(np.uint8))  # mode L


def decode_image(data: bytes, min_side: int | None = None) -> Image.Image:
    """RGB image; with ``min_side``, a JPEG at least twice that size is decoded at 1/2, 1/4 or 1/8
    scale in the DCT domain (much cheaper), never below ``min_side`` on its shorter side."""
    im = Image.open(io.BytesIO(data))
    if min_side and im.format == "JPEG" and 2 * min_side <= min(im.size):
        scale = min_side / min(im.size)
        im.draft("RGB", (math.ceil(im.size[0] * scale), math.ceil(im.size[1] * scale)))
    im.load()
    return im if im.mode == "RGB" else to_8bit(im).convert("RGB")


def decode_audio(data: bytes, sample_rate: int) -> np.ndarray:
    wave, rate = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    if rate != sample_rate:
        raise BadSample(f"audio at {rate} Hz, expected {sample_rate} Hz (rebuild the shards with --sample-rate {sample_rate})")
    return wave[:, 0] if wave.shape[1] == 1 else wave.mean(axis=1)


def decode_text(data: bytes) -> str:
    return data.decode("utf-8")


def decode_meta(data: bytes) -> dict:
    meta = json.loads(data)
    if not isinstance(meta, dict) or not isinstance(meta.get("id"), str):
        raise BadSample("KEY.json is not an object with a string 'id'")
    return meta


def decode_sample(sample: dict, kind: str, sample_rate: int, image_min_side: int | None = None) -> dict:
    """The decoded members a task of ``kind`` needs: image (PIL), audio (float32), text, id, label."""
    for ext in task_members(kind):
        if ext not in sample:
            raise BadSample(f"no .{ext} member")
    meta = decode_meta(sample["json"])
    out = {"id": meta["id"], "label": meta.get("label")}
    try:
        if "jpg" in sample and "jpg" in task_members(kind):
            out["image"] = decode_image(sample["jpg"], image_min_side)
        if "flac" in sample and "flac" in task_members(kind):
            out["audio"] = decode_audio(sample["flac"], sample_rate)
        if "txt" in task_members(kind):
            out["text"] = decode_text(sample["txt"])
    except BadSample:
        raise
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
