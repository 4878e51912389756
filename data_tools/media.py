"""Turning one manifest row's media into normalised shard members, or a reason to leave it out.

Runs inside builder worker processes, so everything here is a pure function of its inputs: the same
row always gives the same bytes, which is what makes builds reproducible.
"""

from __future__ import annotations

import io
import math
import re
import struct

import numpy as np
import soundfile as sf
from PIL import Image, ImageFile, ImageOps

from onepeace.data.decode import to_8bit

ImageFile.LOAD_TRUNCATED_IMAGES = False  # a truncated file must fail, not decode half grey

_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


class Reject(Exception):
    """This sample cannot be used; ``reason`` is a code from REJECT_REASONS."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def read_file(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise Reject("missing_file", f"no such file: {path}") from None
    except IsADirectoryError:
        raise Reject("unreadable_file", f"is a directory: {path}") from None
    except OSError as exc:
        raise Reject("unreadable_file", f"{path}: {exc.strerror or exc}") from None


def clean_text(text: str) -> str:
    """Strip, drop control characters, collapse whitespace; case is kept (the pipeline lowercases)."""
    if any("\udc80" <= ch <= "\udcff" for ch in text):
        raise Reject("invalid_utf8", "text is not valid UTF-8")
    text = " ".join(_CONTROL.sub(" ", text).split())
    if not text:
        raise Reject("empty_text", "text is empty after stripping whitespace")
    return text


# -- images -------------------------------------------------------------------------------------------


def _to_rgb(im: Image.Image) -> Image.Image:
    if im.mode == "RGB":
        return im
    im = to_8bit(im)  # 16-bit and float greyscale: scaled, not clipped to white
    if im.mode in ("RGBA", "LA") or (im.mode == "P" and "transparency" in im.info):
        im = im.convert("RGBA")
        background = Image.new("RGBA", im.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, im).convert("RGB")
    return im.convert("RGB")


def process_image(data: bytes, image_size: int, quality: int) -> tuple[bytes, int, int]:
    """JPEG bytes (RGB, upright, shorter side <= image_size) and the stored width and height."""
    try:
        im = Image.open(io.BytesIO(data))
        width, height = im.size
        scale = image_size / min(width, height)
        drafted = False
        if im.format == "JPEG" and scale <= 0.5:
            # Let libjpeg decode at 1/2, 1/4 or 1/8 size: big photos then cost a fraction of the time.
            im.draft("RGB", (math.ceil(width * scale), math.ceil(height * scale)))
            drafted = im.size != (width, height)
        im.load()
        orientation = im.getexif().get(0x0112, 1)
        if (im.format == "JPEG" and not drafted and im.mode == "RGB" and orientation in (None, 1)
                and scale >= 1):
            return data, width, height  # already what we store: keep the original bytes
        im = _to_rgb(ImageOps.exif_transpose(im))
        w, h = im.size
        if min(w, h) > image_size:
            s = image_size / min(w, h)
            size = (image_size, max(1, round(h * s))) if w <= h else (max(1, round(w * s)), image_size)
            im = im.resize(size, Image.BICUBIC, reducing_gap=3.0)
        out = io.BytesIO()
        im.save(out, format="JPEG", quality=quality)
    except Exception as exc:  # PIL raises many types for bad input (OSError, SyntaxError, ValueError, ...)
        raise Reject("corrupt_image", f"cannot decode image: {exc}") from None
    return out.getvalue(), im.size[0], im.size[1]


# -- audio --------------------------------------------------------------------------------------------


def _wav_truncation(data: bytes) -> str | None:
    """libsndfile silently shortens a truncated WAV; the RIFF data chunk tells how long it should be."""
    if len(data) < 12 or data[:4] not in (b"RIFF", b"RIFX") or data[8:12] != b"WAVE":
        return None
    fmt = "<I" if data[:4] == b"RIFF" else ">I"
    pos = 12
    while pos + 8 <= len(data):
        chunk, size = data[pos:pos + 4], struct.unpack(fmt, data[pos + 4:pos + 8])[0]
        if chunk == b"data":
            available = len(data) - pos - 8
            if size != 0xFFFFFFFF and size > available:
                return f"truncated WAV: the data chunk declares {size} bytes but only {available} follow"
            return None
        pos += 8 + size + (size & 1)
    return None


def _resample(wave: np.ndarray, orig: int, new: int) -> np.ndarray:
    import torch
    import torchaudio.functional as AF

    torch.set_num_threads(1)  # builder workers are processes; threads inside them only contend
    return AF.resample(torch.from_numpy(wave), orig, new).numpy()


def process_audio(data: bytes, sample_rate: int, max_seconds: float, min_seconds: float) -> tuple[bytes, float]:
    """16-bit mono FLAC at ``sample_rate``, cut to ``max_seconds``, and its length in seconds."""
    problem = _wav_truncation(data)
    if problem:
        raise Reject("corrupt_audio", problem)
    try:
        with sf.SoundFile(io.BytesIO(data)) as f:
            rate = f.samplerate
            cap = int(math.ceil(max_seconds * rate))  # never decode more than we keep
            wave = f.read(frames=min(f.frames, cap) if f.frames > 0 else cap, dtype="float32", always_2d=True)
    except Exception as exc:  # libsndfile errors for truncated, unknown or damaged files
        raise Reject("corrupt_audio", f"cannot decode audio: {exc}") from None
    wave = wave.mean(axis=1) if wave.shape[1] > 1 else wave[:, 0]
    if not np.isfinite(wave).all():
        raise Reject("corrupt_audio", "audio contains NaN or infinite samples")
    try:
        if rate != sample_rate and wave.size:
            wave = _resample(np.ascontiguousarray(wave), rate, sample_rate)
        wave = wave[: int(round(max_seconds * sample_rate))]
        seconds = wave.size / sample_rate
        if seconds < min_seconds:
            raise Reject("audio_too_short", f"{seconds:.3f} s is shorter than the minimum {min_seconds} s")
        peak = float(np.abs(wave).max())
        if peak > 1.0:
            # The pipeline layer-normalises every clip, so scaling loses nothing that clipping would.
            wave = wave / peak
        out = io.BytesIO()
        sf.write(out, wave, sample_rate, format="FLAC", subtype="PCM_16")
    except Reject:
        raise
    except Exception as exc:  # a sample rate or layout the encoder refuses: this sample only
        raise Reject("corrupt_audio", f"cannot convert audio: {exc}") from None
    return out.getvalue(), round(seconds, 4)
