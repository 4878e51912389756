"""The ``glyphs`` demo family: letters and digits as images, Morse code as audio.

Unlike ``shapes`` (filled polygons, tones and noises), what matters here is a character's form and,
for audio, a timing pattern of one pitch: two letters differ only in the order of short and long beeps.
Every attribute a caption names is visible or audible; the attributes combine into thousands of
captions, so held-out captions can all be distinct.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFont

DESCRIPTION = "letters and digits in colours on plain backgrounds; Morse code of one or two letters"
CHARACTERS = tuple("abcdefghijklmnopqrstuvwxyz0123456789")
COLOURS = {"red": (220, 30, 30), "green": (30, 170, 40), "blue": (30, 60, 220), "yellow": (240, 220, 30),
           "purple": (140, 40, 180), "white": (250, 250, 250), "black": (15, 15, 15)}
BACKGROUNDS = {"grey": (128, 128, 128), "navy": (20, 30, 80), "cream": (245, 235, 200)}
CLASHES = {("yellow", "cream"), ("white", "cream"), ("blue", "navy"), ("black", "navy"), ("purple", "navy")}
PLACES = {"on the left": 0.3, "in the middle": 0.5, "on the right": 0.7}
IMAGE_LABELS = CHARACTERS

MORSE = {"a": ".-", "b": "-...", "c": "-.-.", "d": "-..", "e": ".", "f": "..-.", "g": "--.", "h": "....",
         "i": "..", "j": ".---", "k": "-.-", "l": ".-..", "m": "--", "n": "-.", "o": "---", "p": ".--.",
         "q": "--.-", "r": ".-.", "s": "...", "t": "-", "u": "..-", "v": "...-", "w": ".--", "x": "-..-",
         "y": "-.--", "z": "--.."}
AUDIO_LABELS = tuple(MORSE)
PITCHES = {"low": 300.0, "medium": 700.0, "high": 1600.0}
SPEEDS = {"slow": 0.055, "fast": 0.035}  # seconds per Morse unit: two letters always fit in 2 s

_FONTS: dict[int, ImageFont.FreeTypeFont] = {}


def _font(size: int):
    if size not in _FONTS:
        _FONTS[size] = ImageFont.load_default(size=size)
    return _FONTS[size]


def _jitter(rgb, rng: np.random.Generator, amount: int) -> tuple[int, int, int]:
    return tuple(int(np.clip(c + rng.integers(-amount, amount + 1), 0, 255)) for c in rgb)


def _name(char: str) -> str:
    return f"the digit {char}" if char.isdigit() else f"the letter {char}"


def make_image(rng: np.random.Generator, px: int) -> tuple[Image.Image, str, str]:
    """One or two characters drawn large; returns the image, its caption and its label (the first character)."""
    chars = [CHARACTERS[rng.integers(len(CHARACTERS))] for _ in range(1 if rng.random() < 0.6 else 2)]
    while True:
        colour = list(COLOURS)[rng.integers(len(COLOURS))]
        background = list(BACKGROUNDS)[rng.integers(len(BACKGROUNDS))]
        if (colour, background) not in CLASHES:
            break
    upper = rng.random() < 0.5
    image = Image.new("RGB", (px, px), _jitter(BACKGROUNDS[background], rng, 8))
    draw = ImageDraw.Draw(image)
    fill = _jitter(COLOURS[colour], rng, 15)
    if len(chars) == 1:
        place = list(PLACES)[rng.integers(len(PLACES))]
        size = "small" if rng.random() < 0.5 else "large"
        font = _font(int(px * (0.45 if size == "small" else 0.8)))
        cx, cy = px * (PLACES[place] + rng.uniform(-0.03, 0.03)), px * (0.5 + rng.uniform(-0.05, 0.05))
        draw.text((cx, cy), chars[0].upper() if upper else chars[0], fill=fill, font=font, anchor="mm")
    else:
        place = size = None
        font = _font(int(px * 0.55))
        for i, char in enumerate(chars):
            cx, cy = px * (0.28 + 0.44 * i + rng.uniform(-0.03, 0.03)), px * (0.5 + rng.uniform(-0.05, 0.05))
            draw.text((cx, cy), char.upper() if upper else char, fill=fill, font=font, anchor="mm")
    case = "capital" if upper else "lower case"
    if len(chars) == 1:
        what = f"digit {chars[0]}" if chars[0].isdigit() else f"{case} {chars[0]}"
        templates = (f"a {size} {colour} {what} {place} on {background}",
                     f"{_name(chars[0])} written {size} in {colour} {place}, {background} background",
                     f"{background} background, a {colour} {what}, {size}, {place}")
    else:
        a, b = chars
        templates = (f"{colour} {a} and {b} side by side on {background}",
                     f"two characters, {a} then {b}, {colour} on a {background} background",
                     f"the pair {a} {b} in {colour}, {background} background")
    return image, templates[rng.integers(len(templates))], chars[0]


def _beeps(code: str, unit: float, sample_rate: int) -> list[tuple[float, float]]:
    """(start, end) seconds of each beep of a space-separated Morse string."""
    out, t = [], 0.0
    for i, letter in enumerate(code.split(" ")):
        if i:
            t += 2 * unit  # letter gap is 3 units, one already follows every symbol
        for symbol in letter:
            length = unit if symbol == "." else 3 * unit
            out.append((t, t + length))
            t += length + unit
    return out


def make_audio(rng: np.random.Generator, sample_rate: int) -> tuple[np.ndarray, str, str]:
    """Morse code of one or two letters at one pitch and speed, at most 2 s; returns clip, caption, label."""
    letters = [AUDIO_LABELS[rng.integers(len(AUDIO_LABELS))] for _ in range(1 if rng.random() < 0.5 else 2)]
    pitch = list(PITCHES)[rng.integers(len(PITCHES))]
    speed = list(SPEEDS)[rng.integers(len(SPEEDS))]
    unit = SPEEDS[speed] * rng.uniform(0.92, 1.08)
    f0 = PITCHES[pitch] * rng.uniform(0.95, 1.05)
    beeps = _beeps(" ".join(MORSE[x] for x in letters), unit, sample_rate)
    lead = rng.uniform(0.05, 0.2)
    seconds = max(1.0, lead + beeps[-1][1] + 0.1)
    n = int(seconds * sample_rate)
    t = np.arange(n, dtype=np.float64) / sample_rate
    gate = np.zeros(n)
    ramp = int(0.004 * sample_rate)
    for start, end in beeps:
        a, b = int((lead + start) * sample_rate), int((lead + end) * sample_rate)
        g = np.ones(b - a)
        g[:ramp] = np.linspace(0, 1, ramp)
        g[-ramp:] = np.linspace(1, 0, ramp)
        gate[a:b] = g
    wave = np.sin(2 * np.pi * f0 * t) * gate * rng.uniform(0.3, 0.9)
    wave += rng.standard_normal(n) * 0.002
    spoken = " and ".join(letters)
    noun = "letters" if len(letters) > 1 else "letter"
    templates = (f"morse code for {spoken}, {speed}, {pitch} pitch",
                 f"{speed} {pitch} beeps spelling {spoken} in morse",
                 f"the {noun} {spoken} in {pitch} pitched morse code, sent {speed}")
    return wave.astype(np.float32), templates[rng.integers(len(templates))], letters[0]
