"""Modality adapters: raw inputs to token sequences, each starting with its own CLS token."""

from __future__ import annotations

import torch

# wav2vec 2.0 feature extractor: (channels, kernel, stride); 320 samples per frame, 400-sample receptive field.
AUDIO_CONV_LAYERS: tuple[tuple[int, int], ...] = ((10, 5),) + ((3, 2),) * 4 + ((2, 2),) * 2
AUDIO_RECEPTIVE_FIELD = 400


def audio_frame_count(num_samples: int | torch.Tensor) -> int | torch.Tensor:
    """Frames the audio conv stack produces for ``num_samples`` waveform samples (0 if too short)."""
    n = num_samples
    for kernel, stride in AUDIO_CONV_LAYERS:
        if isinstance(n, torch.Tensor):
            n = torch.div(n - kernel, stride, rounding_mode="floor") + 1
            n = n.clamp(min=0)
        else:
            n = max((n - kernel) // stride + 1, 0)
    return n
