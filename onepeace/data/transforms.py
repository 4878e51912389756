"""Per-sample transforms as in the reference: image crops, audio crops and padding.

Images are resized in torch (uint8, antialiased bicubic, which matches PIL's bicubic to a grey level
at half the cost); CLIP normalisation is applied to whole batches in :mod:`onepeace.data.batching`.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from onepeace.geometry import max_samples_for_frames

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

def random_resized_crop_box(width: int, height: int, scale: tuple[float, float], rng: np.random.Generator,
                            ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> tuple[int, int, int, int]:
    """(left, top, crop width, crop height) drawn as torchvision's RandomResizedCrop does."""
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(*log_ratio))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            return int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1)), w, h
    in_ratio = width / height  # fallback: a centre crop at the nearest allowed aspect ratio
    if in_ratio < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        w, h = int(round(height * ratio[1])), height
    else:
        w, h = width, height
    return (width - w) // 2, (height - h) // 2, w, h


def image_to_tensor(image: Image.Image, size: int, box: tuple[int, int, int, int] | None = None) -> torch.Tensor:
    """uint8 [3, size, size]: the box (left, top, w, h; default the whole image) resized bicubically."""
    with warnings.catch_warnings():
        # np.asarray(PIL image) is read-only; nothing below writes to it, so a copy would be wasted.
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        pixels = torch.from_numpy(np.asarray(image)).permute(2, 0, 1)
    if box is not None:
        left, top, w, h = box
        pixels = pixels[:, top:top + h, left:left + w]
    if pixels.shape[1:] == (size, size):
        return pixels.contiguous()
    return F.interpolate(pixels[None], size=(size, size), mode="bicubic", antialias=True)[0]


class ImageTransform:
    """Training: RandomResizedCrop(size, scale, bicubic). Evaluation: bicubic resize of the whole image."""

    def __init__(self, size: int, train: bool, scale: tuple[float, float] = (0.9, 1.0)):
        self.size, self.train, self.scale = size, train, tuple(scale)

    def __call__(self, image: Image.Image, rng: np.random.Generator) -> torch.Tensor:
        box = random_resized_crop_box(*image.size, self.scale, rng) if self.train else None
        return image_to_tensor(image, self.size, box)


def max_audio_samples(sample_rate: int, max_seconds: float, max_frames: int) -> int:
    """Longest clip: ``max_seconds`` or what the model's ``max_audio_frames`` holds, whichever is shorter."""
    limit = int(max_seconds * sample_rate)
    return min(limit, max_samples_for_frames(max_frames))


class AudioTransform:
    """Crop to at most ``max_samples`` (random in training, the start in evaluation), repeat short clips
    up to ``min_samples``, then layer-normalise the clip the model sees."""

    def __init__(self, max_samples: int, min_samples: int, train: bool):
        self.max_samples, self.min_samples, self.train = max_samples, min_samples, train

    def __call__(self, wave: np.ndarray, rng: np.random.Generator) -> torch.Tensor:
        n = wave.shape[0]
        if n == 0:
            raise ValueError("empty audio")
        if n > self.max_samples:
            start = int(rng.integers(0, n - self.max_samples + 1)) if self.train else 0
            wave = wave[start:start + self.max_samples]
        elif n < self.min_samples:
            wave = np.tile(wave, -(-self.min_samples // n))[: self.min_samples]
        x = torch.from_numpy(np.ascontiguousarray(wave, dtype=np.float32))
        return F.layer_norm(x, x.shape)
