"""What the encoder returns per modality."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class ModalityOutput:
    tokens: torch.Tensor  # [B, 1 + k, D] after the modality's final LayerNorm; CLS first
    padding_mask: torch.Tensor | None  # [B, 1 + k], True = padding
    keep: torch.Tensor | None  # [B, k] visible content indices (-1 = padding slot); None = all tokens
    full_padding_mask: torch.Tensor | None  # [B, 1 + n] padding of the sequence before dropping
    num_tokens: int  # 1 + n, the full length with CLS

    @property
    def cls(self) -> torch.Tensor:
        return self.tokens[:, 0]

    def masked_positions(self) -> torch.Tensor:
        """``[B, 1 + n]`` bool: content positions that were dropped and are not padding."""
        B = self.tokens.shape[0]
        visible = torch.zeros(B, self.num_tokens + 1, dtype=torch.bool, device=self.tokens.device)
        if self.keep is None:
            return visible[:, :-1]
        visible.scatter_(1, torch.where(self.keep >= 0, self.keep + 1, self.num_tokens), True)
        masked = ~visible[:, : self.num_tokens]
        masked[:, 0] = False
        if self.full_padding_mask is not None:
            masked &= ~self.full_padding_mask
        return masked
