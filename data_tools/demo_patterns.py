"""The ``patterns`` demo family: textures filling the whole image, telephone keys (DTMF) as audio.

Unlike ``shapes`` (one object on a background) and ``glyphs`` (a character's form), an image here is a
texture over the whole frame: what matters is its kind, orientation, scale and two colours. The audio
is dual-tone key presses: each key is a sum of two exact frequencies, and the caption names the keys
in order and how fast they were pressed.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

DESCRIPTION = "stripes, checks, dots and rings in two colours; telephone key presses (DTMF)"
TEXTURES = ("stripes", "checks", "dots", "rings", "waves")
IMAGE_LABELS = TEXTURES
COLOURS = {"red": (220, 30, 30), "green": (30, 170, 40), "blue": (30, 60, 220), "yellow": (240, 220, 30),
           "black": (15, 15, 15), "white": (250, 250, 250), "orange": (250, 140, 20)}
ORIENTATIONS = ("horizontal", "vertical", "diagonal")
SCALES = {"fine": 6.0, "coarse": 16.0}  # period in pixels at 64 px; scaled with the image size

KEYS = "123456789*0#"
KEY_NAMES = {"*": "star", "#": "hash"}
ROWS, COLUMNS = (697.0, 770.0, 852.0, 941.0), (1209.0, 1336.0, 1477.0)
AUDIO_LABELS = tuple(KEY_NAMES.get(k, k) for k in KEYS)
PACES = {"quickly": (0.09, 0.06), "slowly": (0.22, 0.14)}  # (tone, gap) seconds per key


def _field(texture: str, orientation: str, period: float, px: int, rng: np.random.Generator) -> np.ndarray:
    """A [px, px] mask in {0, 1}: where the first colour goes."""
    y, x = np.mgrid[0:px, 0:px].astype(np.float64)
    phase = rng.uniform(0, period)
    if orientation == "vertical":
        u, v = x, y
    elif orientation == "horizontal":
        u, v = y, x
    else:
        u, v = (x + y) / np.sqrt(2), (x - y) / np.sqrt(2)
    if texture == "stripes":
        return (np.mod(u + phase, period) < period / 2).astype(np.float64)
    if texture == "checks":
        return ((np.floor((x + phase) / period) + np.floor((y + phase) / period)) % 2).astype(np.float64)
    if texture == "dots":
        cu, cv = np.mod(x + phase, period) - period / 2, np.mod(y + phase, period) - period / 2
        return (cu**2 + cv**2 < (period * 0.3) ** 2).astype(np.float64)
    if texture == "rings":
        cx, cy = px * rng.uniform(0.35, 0.65), px * rng.uniform(0.35, 0.65)
        r = np.sqrt((x - cx) ** 2 + (y - cy) ** 2)
        return (np.mod(r + phase, period) < period / 2).astype(np.float64)
    # waves: stripes along u that bend with v
    return (np.mod(u + 0.25 * period * np.sin(2 * np.pi * v / (2 * period)) + phase, period) < period / 2).astype(
        np.float64)


def make_image(rng: np.random.Generator, px: int) -> tuple[Image.Image, str, str]:
    """A texture over the whole frame; returns the image, its caption and its label (the texture)."""
    texture = TEXTURES[rng.integers(len(TEXTURES))]
    first, second = (list(COLOURS)[i] for i in rng.choice(len(COLOURS), 2, replace=False))
    scale = list(SCALES)[rng.integers(len(SCALES))]
    orientation = ORIENTATIONS[rng.integers(len(ORIENTATIONS))] if texture in ("stripes", "waves") else ""
    period = SCALES[scale] * px / 64 * rng.uniform(0.9, 1.1)
    mask = _field(texture, orientation or "vertical", period, px, rng)[..., None]
    a = np.array(COLOURS[first], dtype=np.float64) + rng.integers(-12, 13, 3)
    b = np.array(COLOURS[second], dtype=np.float64) + rng.integers(-12, 13, 3)
    pixels = mask * a + (1 - mask) * b + rng.normal(0, 4, (px, px, 3))
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    kind = f"{orientation} {texture}".strip()
    templates = (f"{scale} {kind} of {first} and {second}",
                 f"{'an' if first[0] in 'aeiou' else 'a'} {first} and {second} pattern of {scale} {kind}",
                 f"{kind}, {scale}, in {first} on {second}")
    return image, templates[rng.integers(len(templates))], texture


def make_audio(rng: np.random.Generator, sample_rate: int) -> tuple[np.ndarray, str, str]:
    """Two to four key presses, at most 2 s; returns the clip, its caption and its label (the first key)."""
    keys = [KEYS[i] for i in rng.integers(len(KEYS), size=int(rng.integers(2, 5)))]
    pace = list(PACES)[rng.integers(len(PACES))]
    tone, gap = (s * rng.uniform(0.9, 1.1) for s in PACES[pace])
    lead = rng.uniform(0.05, 0.15)
    seconds = max(1.0, lead + len(keys) * (tone + gap) + 0.05)
    n = int(seconds * sample_rate)
    wave = np.zeros(n)
    ramp = int(0.005 * sample_rate)
    for i, key in enumerate(keys):
        index = KEYS.index(key)
        low, high = ROWS[index // 3], COLUMNS[index % 3]
        a = int((lead + i * (tone + gap)) * sample_rate)
        m = int(tone * sample_rate)
        t = np.arange(m) / sample_rate
        burst = np.sin(2 * np.pi * low * t) + np.sin(2 * np.pi * high * t)
        burst[:ramp] *= np.linspace(0, 1, ramp)
        burst[-ramp:] *= np.linspace(1, 0, ramp)
        wave[a : a + m] += burst[: n - a]
    wave = wave / (np.abs(wave).max() + 1e-9) * rng.uniform(0.3, 0.9) + rng.standard_normal(n) * 0.002
    names = " ".join(KEY_NAMES.get(k, k) for k in keys)
    count = {2: "two", 3: "three", 4: "four"}[len(keys)]
    templates = (f"telephone keys {names} pressed {pace}",
                 f"{count} phone key tones, {names}, {pace}",
                 f"someone dials {names} {pace}")
    return wave.astype(np.float32), templates[rng.integers(len(templates))], KEY_NAMES.get(keys[0], keys[0])
