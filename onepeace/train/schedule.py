"""Learning-rate schedule: linear warm-up, then cosine decay to a minimum."""

from __future__ import annotations

import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR


def cosine_factor(step: int, total: int, warmup: int, min_ratio: float) -> float:
    """Multiplier of the peak lr after ``step`` updates."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def cosine_schedule(optimizer: Optimizer, total: int, warmup: int, lr: float, min_lr: float) -> LambdaLR:
    return LambdaLR(optimizer, lambda step: cosine_factor(step, total, warmup, min_lr / lr))
