"""The ``shapes`` demo family: procedural media with captions that describe them: learnable, varied, and made on the spot.

Every attribute a caption names is visible (or audible) in the sample, so a small model can learn
the alignment; the attributes combine into thousands of distinct captions, so held-out captions are
nearly all different and retrieval by index is meaningful. Audio loudness is described as a change
over time (getting louder or quieter) because the pipeline layer-normalises each clip, which removes
overall volume.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw

DESCRIPTION = "filled shapes in colours on plain backgrounds; tones, chirps, pulses, noises and warbles"
SHAPES = ("circle", "square", "triangle", "star", "cross", "diamond")
COLOURS = {
    "red": (220, 30, 30), "green": (30, 170, 40), "blue": (30, 60, 220), "yellow": (240, 220, 30),
    "purple": (140, 40, 180), "orange": (250, 140, 20), "white": (250, 250, 250), "black": (15, 15, 15),
}
# Background names share no word with object colours, so "blue" in a caption is always the shapes.
BACKGROUNDS = {"grey": (128, 128, 128), "dark": (40, 40, 48), "beige": (225, 210, 175), "pink": (240, 185, 200)}
CLASHES = {("black", "dark"), ("white", "beige"), ("yellow", "beige"), ("white", "pink")}
POSITIONS = {"top left": (0.28, 0.28), "top right": (0.72, 0.28), "bottom left": (0.28, 0.72),
             "bottom right": (0.72, 0.72), "centre": (0.5, 0.5)}
NUMBERS = {1: "one", 2: "two", 3: "three"}
IMAGE_LABELS = SHAPES

SOUNDS = ("tone", "chirp", "pulses", "noise", "warble")
AUDIO_LABELS = SOUNDS
PITCHES = {"low": (140.0, 280.0), "medium": (450.0, 900.0), "high": (1500.0, 3000.0)}
ENVELOPES = ("at a steady volume", "getting louder", "getting quieter")
SECONDS_WORDS = {1.0: "one second", 1.5: "one and a half seconds", 2.0: "two seconds", 2.5: "two and a half seconds",
                 3.0: "three seconds", 3.5: "three and a half seconds", 4.0: "four seconds"}


def _plural(shape: str) -> str:
    return shape + ("es" if shape.endswith("s") else "s")


def _polygon(shape: str, cx: float, cy: float, r: float, turn: float) -> list[tuple[float, float]]:
    if shape == "square":
        corners = [(-1, -1), (1, -1), (1, 1), (-1, 1)]
        pts = [(x * 0.85, y * 0.85) for x, y in corners]
    elif shape == "diamond":
        pts = [(0, -1), (0.75, 0), (0, 1), (-0.75, 0)]
    elif shape == "triangle":
        pts = [(math.cos(a), math.sin(a)) for a in (-math.pi / 2, math.pi / 6, 5 * math.pi / 6)]
    elif shape == "star":
        pts = [((1.0 if i % 2 == 0 else 0.45) * math.cos(-math.pi / 2 + i * math.pi / 5),
                (1.0 if i % 2 == 0 else 0.45) * math.sin(-math.pi / 2 + i * math.pi / 5)) for i in range(10)]
    else:  # cross
        a, b = 1.0, 0.33
        pts = [(-b, -a), (b, -a), (b, -b), (a, -b), (a, b), (b, b), (b, a), (-b, a), (-b, b), (-a, b), (-a, -b), (-b, -b)]
    c, s = math.cos(turn), math.sin(turn)
    return [(cx + r * (x * c - y * s), cy + r * (x * s + y * c)) for x, y in pts]


def _draw(draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, r: float, colour, turn: float) -> None:
    if shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=colour)
    else:
        draw.polygon(_polygon(shape, cx, cy, r, turn), fill=colour)


def _jitter(rgb, rng: np.random.Generator, amount: int) -> tuple[int, int, int]:
    return tuple(int(np.clip(c + rng.integers(-amount, amount + 1), 0, 255)) for c in rgb)


def make_image(rng: np.random.Generator, px: int) -> tuple[Image.Image, str, str]:
    """An image of 1-3 same shapes, its caption and its label (the shape)."""
    shape = SHAPES[rng.integers(len(SHAPES))]
    while True:
        colour = list(COLOURS)[rng.integers(len(COLOURS))]
        background = list(BACKGROUNDS)[rng.integers(len(BACKGROUNDS))]
        if (colour, background) not in CLASHES:
            break
    count = int(rng.choice([1, 1, 2, 3]))
    size = "small" if rng.random() < 0.5 else "large"
    image = Image.new("RGB", (px, px), _jitter(BACKGROUNDS[background], rng, 10))
    draw = ImageDraw.Draw(image)
    fill = _jitter(COLOURS[colour], rng, 20)
    turn = float(rng.uniform(-0.2, 0.2))
    if count == 1:
        position = list(POSITIONS)[rng.integers(len(POSITIONS))]
        r = px * (0.13 if size == "small" else 0.24) * rng.uniform(0.9, 1.1)
        fx, fy = POSITIONS[position]
        cx = px * (fx + rng.uniform(-0.04, 0.04))
        cy = px * (fy + rng.uniform(-0.04, 0.04))
        _draw(draw, shape, cx, cy, r, fill, turn)
    else:
        position = None
        r = px * (0.1 if size == "small" else 0.16)
        cells = rng.permutation(9)[:count]  # one shape per cell of a 3x3 grid: they never overlap
        for cell in cells:
            cx = px * ((cell % 3) + 0.5 + rng.uniform(-0.1, 0.1)) / 3
            cy = px * ((cell // 3) + 0.5 + rng.uniform(-0.1, 0.1)) / 3
            _draw(draw, shape, cx, cy, r, fill, turn)
    return image, _image_caption(rng, shape, colour, background, count, size, position), shape


def _image_caption(rng, shape, colour, background, count, size, position) -> str:
    if count == 1:
        templates = (
            f"a {size} {colour} {shape} in the {position} on a {background} background",
            f"one {size} {colour} {shape} at the {position} of a {background} image",
            f"a {colour} {shape}, {size}, placed {position}, {background} background",
            f"a picture of a {size} {colour} {shape} in the {position}",
            f"{background} background with a {size} {colour} {shape} in the {position}",
        )
    else:
        n, shapes = NUMBERS[count], _plural(shape)
        templates = (
            f"{n} {size} {colour} {shapes} on a {background} background",
            f"a {background} image with {n} {colour} {shapes}",
            f"{n} {colour} {shapes}, all {size}, on {background}",
            f"a picture of {n} {size} {colour} {shapes}",
            f"there are {n} {colour} {shapes} on a {background} background",
        )
    return templates[rng.integers(len(templates))]


def make_audio(rng: np.random.Generator, sample_rate: int) -> tuple[np.ndarray, str, str]:
    """A 1-4 s clip (float32 in [-1, 1]), its caption and its label (the kind of sound)."""
    sound = SOUNDS[rng.integers(len(SOUNDS))]
    pitch = list(PITCHES)[rng.integers(len(PITCHES))]
    envelope = ENVELOPES[rng.integers(len(ENVELOPES))]
    seconds = float(rng.choice(list(SECONDS_WORDS)))
    n = int(seconds * sample_rate)
    t = np.arange(n, dtype=np.float64) / sample_rate
    lo, hi = PITCHES[pitch]
    f0 = rng.uniform(lo, hi)
    detail = ""
    if sound == "tone":
        wave = np.sin(2 * np.pi * f0 * t) + 0.3 * np.sin(4 * np.pi * f0 * t)
    elif sound == "chirp":
        rising = rng.random() < 0.5
        f1 = f0 * (2.0 if rising else 0.5)
        freq = np.geomspace(f0, f1, n)
        wave = np.sin(2 * np.pi * np.cumsum(freq) / sample_rate)
        detail = "rising" if rising else "falling"
    elif sound == "pulses":
        fast = rng.random() < 0.5
        rate = rng.uniform(6, 8) if fast else rng.uniform(1.5, 2.5)
        gate = (np.mod(t * rate, 1.0) < 0.4).astype(np.float64)
        wave = np.sin(2 * np.pi * f0 * t) * gate
        detail = "fast" if fast else "slow"
    elif sound == "noise":
        white = rng.standard_normal(n)
        spectrum = np.fft.rfft(white)
        freqs = np.fft.rfftfreq(n, 1 / sample_rate)
        spectrum *= np.exp(-0.5 * ((np.log(freqs + 1) - np.log(f0 * 2)) / 0.5) ** 2)  # a band around the pitch
        wave = np.fft.irfft(spectrum, n)
    else:  # warble: a vibrato tone
        depth, rate = rng.uniform(0.05, 0.1), rng.uniform(4, 7)
        freq = f0 * (1 + depth * np.sin(2 * np.pi * rate * t))
        wave = np.sin(2 * np.pi * np.cumsum(freq) / sample_rate)
    if envelope == "getting louder":
        wave = wave * np.linspace(0.05, 1.0, n)
    elif envelope == "getting quieter":
        wave = wave * np.linspace(1.0, 0.05, n)
    ramp = min(n // 2, int(0.01 * sample_rate))  # 10 ms fades: no clicks at the edges
    wave[:ramp] *= np.linspace(0, 1, ramp)
    wave[n - ramp:] *= np.linspace(1, 0, ramp)
    wave = wave / (np.abs(wave).max() + 1e-9) * rng.uniform(0.3, 0.9)
    wave += rng.standard_normal(n) * 0.0005  # a faint noise floor, as real recordings have
    caption = _audio_caption(rng, sound, pitch, envelope, seconds, detail)
    return wave.astype(np.float32), caption, sound


def _audio_caption(rng, sound, pitch, envelope, seconds, detail) -> str:
    name = {"tone": "tone", "chirp": f"{detail} chirp", "pulses": f"{detail} pulses", "noise": "noise",
            "warble": "warbling tone"}[sound]
    pitched = {"low": "low", "medium": "medium pitched", "high": "high pitched"}[pitch]
    if sound == "noise":
        name = {"low": "low rumbling noise", "medium": "medium hissing noise", "high": "high hissing noise"}[pitch]
        pitched = ""
    length = SECONDS_WORDS[seconds]
    short = "short" if seconds <= 2.0 else "long"
    article = "" if sound == "pulses" else "a "
    what = " ".join(w for w in (pitched, name) if w)
    templates = (
        f"{article}{what} {envelope}, lasting {length}",
        f"{article}{short} {what}, {envelope}",
        f"{length} of {what}, {envelope}",
        f"the sound of {article}{what} that is {envelope} for {length}",
        f"{article}{what} for about {length}, {envelope}",
    )
    return templates[rng.integers(len(templates))]
