"""Residual update with dropout, LayerScale and per-sample drop path in as few kernels as possible."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def residual_update(
    x: torch.Tensor,
    branch: torch.Tensor,
    gamma: torch.Tensor | None = None,
    drop_path: float = 0.0,
    dropout: float = 0.0,
    training: bool = False,
) -> torch.Tensor:
    """``x + drop_path(gamma * dropout(branch))``.

    LayerScale and the drop-path keep mask are folded into one ``[B, 1, D]`` scale, so the update is a
    single ``addcmul`` instead of three elementwise passes over ``[B, L, D]``. Drop path keeps or drops a
    whole sample (a row of the batch), scaling kept samples by ``1 / (1 - p)``.
    """
    if training and dropout > 0.0:
        branch = F.dropout(branch, dropout, training=True)
    scale = gamma
    if training and drop_path > 0.0:
        keep_prob = 1.0 - drop_path
        shape = (x.shape[0],) + (1,) * (x.dim() - 1)
        keep = torch.empty(shape, dtype=x.dtype, device=x.device).bernoulli_(keep_prob).div_(keep_prob)
        scale = keep if scale is None else keep * scale
    if scale is None:
        return x + branch
    return torch.addcmul(x, branch, scale.to(branch.dtype))
