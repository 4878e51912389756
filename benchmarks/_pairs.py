"""Pair data held in memory, and retrieval scores, for the learning benchmarks.

The learning benchmarks compare models and objectives, not data pipelines: every sample of a shard
split is decoded once through our own evaluation loader (deterministic resize, tokenisation, padding)
and training draws random batches from those tensors. That isolates what the model and the loss do
with a step from everything else, and costs nothing per step.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from onepeace.config import from_dict, model_config
from onepeace.data import DataConfig, build_eval_loader


@dataclass
class Pairs:
    """``other`` is images [N, 3, S, S] or waveforms [N, n] (with ``other_padding``); text is padded."""

    kind: str  # image-text | audio-text
    other: torch.Tensor
    other_padding: torch.Tensor | None
    text: torch.Tensor
    text_padding: torch.Tensor

    def __len__(self) -> int:
        return self.text.shape[0]

    def batch(self, index: torch.Tensor) -> dict[str, torch.Tensor]:
        """Rows ``index``, trimmed to the longest text (and clip) among them."""
        text, pad = self.text[index], self.text_padding[index]
        width = int((~pad).sum(1).max())
        out = {"text": text[:, :width], "text_padding": pad[:, :width], "other": self.other[index], "other_padding": None}
        if self.other_padding is not None:
            opad = self.other_padding[index]
            n = int((~opad).sum(1).max())
            out["other"], out["other_padding"] = out["other"][:, :n], opad[:, :n]
        return out


def _pad_cat(tensors: list[torch.Tensor], value) -> torch.Tensor:
    width = max(t.shape[1] for t in tensors)
    return torch.cat([torch.nn.functional.pad(t, (0, width - t.shape[1]), value=value) for t in tensors])


def load_pairs(corpus: str, kind: str, split: str, *, image_size: int = 64, max_audio_seconds: float = 2.0,
               limit: int | None = None) -> Pairs:
    """Every sample of ``corpus/shards/<kind>/<split>`` (a ``data_tools.make_demo`` folder) in memory."""
    shards = os.path.join(corpus, "shards", kind, split)
    data = from_dict(DataConfig, {"tokenizer": os.path.join(corpus, "tokenizer.json"), "num_workers": 0,
                                  "max_audio_seconds": max_audio_seconds,
                                  "eval": {kind: {"batch_size": 256, "sources": [{"shards": shards}]}}}, "data")
    model = model_config("tiny", image_size=image_size)
    other, other_pad, text, text_pad = [], [], [], []
    for batch in build_eval_loader(kind, data, model, rank=0, world_size=1):
        if kind == "image-text":
            other.append(batch["images"])
        else:
            other.append(batch["audio"])
            other_pad.append(batch["audio_padding_mask"])
        text.append(batch["text_tokens"])
        text_pad.append(batch["text_padding_mask"])
        if limit is not None and sum(t.shape[0] for t in text) >= limit:
            break
    pairs = Pairs(kind, torch.cat(other) if kind == "image-text" else _pad_cat(other, 0.0),
                  _pad_cat(other_pad, True) if other_pad else None, _pad_cat(text, 0), _pad_cat(text_pad, True))
    if limit is not None and len(pairs) > limit:
        pairs = Pairs(kind, pairs.other[:limit], None if pairs.other_padding is None else pairs.other_padding[:limit],
                      pairs.text[:limit], pairs.text_padding[:limit])
    return pairs


def recall_at(a: torch.Tensor, b: torch.Tensor, ks=(1, 5, 10)) -> dict[int, float]:
    """Row i of ``a`` should retrieve row i of ``b``; rank = how many candidates score at least as high
    as the true one (pessimistic on ties, as onepeace.eval)."""
    sims = a @ b.T
    true = sims.diagonal()[:, None]
    rank = (sims >= true).sum(1)  # 1 = first
    return {k: float((rank <= k).float().mean()) for k in ks}


def mean_pairwise_cosine(x: torch.Tensor) -> float:
    """Mean cosine between different rows of L2-normalised ``x``: 1.0 means every input embeds the same."""
    n = x.shape[0]
    sims = x @ x.T
    return float((sims.sum() - sims.diagonal().sum()) / (n * (n - 1)))
