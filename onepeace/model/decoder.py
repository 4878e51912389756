"""The small denoising decoder used in pretraining: mask tokens at dropped positions, 2 fusion layers."""

from __future__ import annotations

import torch
from torch import nn

from ..config import MODALITIES, ModelConfig
from ..ops.attention import compute_dtype, padding_only
from .encoder import FusionEncoder
from .init import trunc_normal_
from .outputs import ModalityOutput
from .position import num_positions


class DenoisingDecoder(nn.Module):
    """Encoder outputs (visible tokens) -> full sequences -> predictions of the encoder's unmasked output.

    No relative position bias, no LayerScale and no drop path. Every modality has its own ends, as in the
    official model: an input projection (encoder width -> decoder width), a mask token, learned absolute
    positions, a final LayerNorm (inside ``blocks``) and an output head (decoder width -> encoder width).
    Only the two fusion layers' shared parts (attention, pre-norms) are common to all modalities.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        d, dd = config.embed_dim, config.decoder_dim
        self.modalities = [m for m in MODALITIES if m in config.modalities]
        sizes = num_positions(config)
        self.in_proj = nn.ModuleDict({m: nn.Linear(d, dd) for m in self.modalities})
        self.mask_token = nn.ParameterDict({m: nn.Parameter(torch.zeros(1, 1, dd)) for m in self.modalities})
        self.pos_embed = nn.ParameterDict({m: nn.Parameter(torch.zeros(1, sizes[m], dd)) for m in self.modalities})
        self.blocks = FusionEncoder(dd, config.decoder_depth, config.decoder_heads, config.decoder_ffn_dim,
                                    self.modalities, eps=config.layer_norm_eps)
        self.out_proj = nn.ModuleDict({m: nn.Linear(dd, d) for m in self.modalities})

    def init_weights(self) -> None:
        for p in [*self.mask_token.values(), *self.pos_embed.values()]:
            trunc_normal_(p)

    def forward(self, outputs: dict[str, ModalityOutput], backend: str) -> dict[str, torch.Tensor]:
        """``{modality: [B, 1 + n, D]}`` predictions at every position of the full sequences."""
        seqs, segments, pads = [], [], []
        for modality in [m for m in MODALITIES if m in outputs]:
            out = outputs[modality]
            x = self.in_proj[modality](out.tokens)
            B, _, dd = x.shape
            n1 = out.num_tokens
            if out.keep is not None:
                # Scatter visible tokens into a sequence of mask tokens; padding slots (-1) land in an
                # extra slot at the end that is cut off.
                dest = torch.where(out.keep >= 0, out.keep + 1, n1)
                full = self.mask_token[modality].to(x.dtype).expand(B, n1 + 1, dd)
                full = full.scatter(1, dest[..., None].expand(-1, -1, dd), x[:, 1:])
                x = torch.cat([x[:, :1], full[:, 1:n1]], dim=1)
            seqs.append(x + self.pos_embed[modality][:, :n1].to(x.dtype))
            segments.append((modality, n1))
            pads.append(out.full_padding_mask)
        x = torch.cat(seqs, dim=1) if len(seqs) > 1 else seqs[0]
        key_padding = None
        if any(p is not None for p in pads):
            key_padding = torch.cat(
                [p if p is not None else torch.zeros(x.shape[0], n, dtype=torch.bool, device=x.device)
                 for p, (_, n) in zip(pads, segments)], dim=1)
        bias = padding_only(key_padding, x.shape[0], x.shape[1])
        bias.prepare(backend, compute_dtype(x), x.device.type)
        y = self.blocks(x, segments, [bias] * len(self.blocks.layers), backend)
        preds, start = {}, 0
        for modality, n in segments:
            preds[modality] = self.out_proj[modality](y[:, start : start + n])
            start += n
        return preds
