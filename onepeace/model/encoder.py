"""Fusion layers: one shared attention, a GeGLU feed-forward network per modality, routed by slicing."""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..ops.attention import AttentionBias
from ..ops.fused import residual_update
from ..ops.norm import layer_norm
from .attention import SelfAttention

# A sequence is a list of (modality, length) segments laid end to end: [text, image] for a pair.
Segments = Sequence[tuple[str, int]]


class GeGLU(nn.Module):
    """``fc2(LN(gelu(W0 h) * W1 h))``; W0 and W1 are one fused projection."""

    def __init__(self, dim: int, hidden: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.wi = nn.Linear(dim, 2 * hidden, bias=False)
        self.inner_norm = layer_norm(hidden, eps)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        gate, up = self.wi(h).chunk(2, dim=-1)
        return self.fc2(self.inner_norm(F.gelu(gate) * up))


class FusionLayer(nn.Module):
    def __init__(
        self, dim: int, num_heads: int, ffn_dim: int, modalities: Sequence[str], layer_scale_init: float = 0.0,
        drop_path: float = 0.0, dropout: float = 0.0, eps: float = 1e-5,
    ) -> None:
        super().__init__()
        self.attn_norm = layer_norm(dim, eps)
        self.attn = SelfAttention(dim, num_heads, eps)
        self.ffn_norm = layer_norm(dim, eps)
        self.ffn = nn.ModuleDict({m: GeGLU(dim, ffn_dim, eps) for m in modalities})
        self.layer_scale_init = layer_scale_init
        if layer_scale_init > 0:
            self.gamma1 = nn.Parameter(torch.full((dim,), layer_scale_init))
            self.gamma2 = nn.Parameter(torch.full((dim,), layer_scale_init))
        else:
            self.gamma1 = self.gamma2 = None
        self.drop_path, self.dropout = drop_path, dropout

    def init_weights(self) -> None:
        for gamma in (self.gamma1, self.gamma2):
            if gamma is not None:
                nn.init.constant_(gamma, self.layer_scale_init)

    def forward(self, x: torch.Tensor, segments: Segments, bias: AttentionBias, backend: str) -> torch.Tensor:
        update = dict(drop_path=self.drop_path, dropout=self.dropout, training=self.training)
        x = residual_update(x, self.attn(self.attn_norm(x), bias, backend), self.gamma1, **update)
        h = self.ffn_norm(x)
        if len(segments) == 1:
            h = self.ffn[segments[0][0]](h)
        else:
            parts, start = [], 0
            for modality, length in segments:
                parts.append(self.ffn[modality](h[:, start : start + length]))
                start += length
            h = torch.cat(parts, dim=1)
        return residual_update(x, h, self.gamma2, **update)


class FusionEncoder(nn.Module):
    """A stack of fusion layers and a final LayerNorm per modality."""

    def __init__(
        self, dim: int, depth: int, num_heads: int, ffn_dim: int, modalities: Sequence[str],
        layer_scale_init: float = 0.0, drop_path_rate: float = 0.0, dropout: float = 0.0, eps: float = 1e-5,
    ) -> None:
        super().__init__()
        rates = [drop_path_rate * i / (depth - 1) if depth > 1 else drop_path_rate for i in range(depth)]
        self.layers = nn.ModuleList(
            FusionLayer(dim, num_heads, ffn_dim, modalities, layer_scale_init, rate, dropout, eps) for rate in rates
        )
        self.final_norm = nn.ModuleDict({m: layer_norm(dim, eps) for m in modalities})
        self.checkpoint_activations = False

    def forward(
        self, x: torch.Tensor, segments: Segments, biases: Sequence[AttentionBias], backend: str
    ) -> torch.Tensor:
        """``biases`` holds one bias per layer (the same object repeated when the table is shared)."""
        for layer, bias in zip(self.layers, biases):
            if self.checkpoint_activations and self.training and torch.is_grad_enabled():
                x = checkpoint(layer, x, segments, bias, backend, use_reentrant=False)
            else:
                x = layer(x, segments, bias, backend)
        parts, start = [], 0
        for modality, length in segments:
            parts.append(self.final_norm[modality](x[:, start : start + length]))
            start += length
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)
