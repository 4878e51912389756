"""The self-attention shared by all modalities, with Sub-LayerNorm before the output projection."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..ops.attention import AttentionBias, attention
from ..ops.norm import layer_norm


class SelfAttention(nn.Module):
    """q and v have biases, k has none; q, k, v come from one fused projection."""

    def __init__(self, dim: int, num_heads: int, eps: float = 1e-5, inner_norm: bool = True) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.q_bias = nn.Parameter(torch.zeros(dim))
        self.v_bias = nn.Parameter(torch.zeros(dim))
        self.inner_norm = layer_norm(dim, eps) if inner_norm else nn.Identity()
        self.out_proj = nn.Linear(dim, dim)

    def init_weights(self) -> None:
        nn.init.zeros_(self.q_bias)
        nn.init.zeros_(self.v_bias)

    def forward(self, x: torch.Tensor, bias: AttentionBias, backend: str) -> torch.Tensor:
        B, L, D = x.shape
        qkv_bias = torch.cat([self.q_bias, torch.zeros_like(self.q_bias), self.v_bias])
        qkv = F.linear(x, self.qkv.weight, qkv_bias).view(B, L, 3, self.num_heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # [B, H, L, Dh] each
        out = attention(q, k, v, bias, backend)
        out = out.transpose(1, 2).reshape(B, L, D)
        return self.out_proj(self.inner_norm(out))
