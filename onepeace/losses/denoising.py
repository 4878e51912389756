"""Intra-modal denoising contrastive loss (DCL): masked predictions against the local batch's target tokens."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..checks import value_checks


def target_positions(full_padding_mask: Tensor | None, batch: int, num_tokens: int, device) -> Tensor:
    """``[B, N]`` bool: the candidate keys of ``denoising_loss``, every position but CLS and padding."""
    valid = torch.ones(batch, num_tokens, dtype=torch.bool, device=device)
    valid[:, 0] = False
    if full_padding_mask is not None:
        if full_padding_mask.shape != (batch, num_tokens):
            raise ValueError(f"full_padding_mask has shape {tuple(full_padding_mask.shape)}, expected "
                             f"({batch}, {num_tokens})")
        valid &= ~full_padding_mask.to(device=device, dtype=torch.bool)
    return valid


def denoising_loss(pred: Tensor, target: Tensor, masked: Tensor, target_valid: Tensor, *,
                   temperature: float = 0.4, label_smoothing: float = 0.1) -> Tensor:
    """Cross-entropy of each masked prediction over all valid target tokens of the local batch.

    ``pred`` and ``target`` are ``[B, N, D]`` (position 0 = CLS); ``masked`` (the queries: dropped from
    the encoder) and ``target_valid`` (the keys: non-CLS, non-padding) are ``[B, N]`` bool. The positive
    is the target at the same sample and position. The target gets no gradient (it is the same model's
    output on the unmasked input). With nothing masked the result is a zero that still reaches ``pred``,
    so every rank runs the same backward.
    """
    if pred.ndim != 3 or pred.shape != target.shape:
        raise ValueError(f"denoising_loss expects pred and target of one [B, N, D] shape; got "
                         f"{tuple(pred.shape)} and {tuple(target.shape)}")
    if masked.shape != pred.shape[:2] or target_valid.shape != pred.shape[:2]:
        raise ValueError(f"masked {tuple(masked.shape)} and target_valid {tuple(target_valid.shape)} must be "
                         f"[B, N] = {tuple(pred.shape[:2])}")
    masked, target_valid = masked.bool(), target_valid.bool()
    if value_checks() and (masked & ~target_valid).any():
        bad = (masked & ~target_valid).nonzero()[0].tolist()
        raise ValueError(f"masked position (sample {bad[0]}, position {bad[1]}) is not a valid target "
                         f"(CLS or padding): a masked token must have a target to be predicted")
    # The index of each masked position among the keys, in the same row-major order as boolean indexing.
    key_index = target_valid.flatten().cumsum(0) - 1
    labels = key_index[masked.flatten()]
    dtype = torch.promote_types(pred.dtype, torch.float32)
    q = F.normalize(pred[masked].to(dtype), dim=-1)
    k = F.normalize(target.detach()[target_valid].to(dtype), dim=-1)
    # The reference smooths as fairseq does: the positive keeps 1 - eps and each of the other N - 1 keys
    # gets eps / (N - 1). PyTorch spreads its smoothing over all N keys, so it is given eps * N / (N - 1).
    num_keys = k.shape[0]
    smoothing = label_smoothing * num_keys / (num_keys - 1) if num_keys > 1 else 0.0
    # A sum over the masked queries divided by their count (at least 1): with nothing masked this is a zero
    # that still reaches ``pred``, and deciding so never reads a device value.
    total = F.cross_entropy(q @ k.T / temperature, labels, label_smoothing=smoothing, reduction="sum")
    return total / masked.sum().clamp(min=1)
