"""How many tokens each modality makes, without torch.

The model builds its adapters from these numbers and the data pipeline sizes its masks with them, so
both sides agree by construction. This module imports nothing heavier than the standard library:
DataLoader workers use it without pulling in ``torch.nn`` or the model.
"""

from __future__ import annotations

# wav2vec 2.0 feature extractor layers as (kernel, stride); 320 samples per frame, 400-sample receptive field.
AUDIO_CONV_LAYERS: tuple[tuple[int, int], ...] = ((10, 5),) + ((3, 2),) * 4 + ((2, 2),) * 2
AUDIO_HOP = 320  # product of the strides: samples between two frames
AUDIO_RECEPTIVE_FIELD = 400  # samples one frame sees; shorter clips make no frame

# The hMLP stem (k4s4, k2s2, k2s2) turns each 16x16 pixel patch into one image token.
IMAGE_PATCH = 16


def audio_frame_count(num_samples):
    """Frames the audio conv stack produces for ``num_samples`` waveform samples (0 if too short).

    Works on an int or elementwise on an integer tensor (anything with ``//`` and ``clamp``).
    """
    n = num_samples
    for kernel, stride in AUDIO_CONV_LAYERS:
        n = (n - kernel) // stride + 1
        n = n.clamp(min=0) if hasattr(n, "clamp") else max(n, 0)
    return n


def max_samples_for_frames(max_frames: int) -> int:
    """The longest waveform that makes at most ``max_frames`` frames."""
    return AUDIO_RECEPTIVE_FIELD + AUDIO_HOP * max_frames - 1


def image_grid(image_size: int, patch: int = IMAGE_PATCH) -> int:
    """Patches along each side of a square image: the image makes ``image_grid(size) ** 2`` tokens."""
    return image_size // patch
