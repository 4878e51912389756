"""Zero-shot retrieval between text and images or audio: recall@k in both directions.

Row ``i`` of one side pairs with row ``i`` of the other and with nothing else, so a caption that happens
to fit another image equally well still counts as a miss. Ranks are pessimistic (see ``ranking``).
"""

from __future__ import annotations

import torch

from .ranking import hits_at, target_ranks

RECALL_AT = (1, 5, 10)


def _directions(other: str) -> tuple[str, str]:
    return f"{other}_to_text", f"text_to_{other}"


def retrieval_metrics(other_emb: torch.Tensor, text_emb: torch.Tensor, other: str,
                      ks: tuple[int, ...] = RECALL_AT) -> dict[str, float]:
    """``{"<other>_to_text/R@k": ..., "text_to_<other>/R@k": ...}`` as fractions in [0, 1]."""
    if other_emb.shape[0] != text_emb.shape[0]:
        raise ValueError(f"retrieval pairs row i with row i: {other_emb.shape[0]} {other} rows, "
                         f"{text_emb.shape[0]} text rows")
    targets = torch.arange(other_emb.shape[0])
    forward, backward = _directions(other)
    ranks = {forward: target_ranks(other_emb, text_emb, targets), backward: target_ranks(text_emb, other_emb, targets)}
    return {f"{d}/R@{k}": hits_at(r, k) for d, r in ranks.items() for k in ks}


def retrieval_chance(num_pairs: int, other: str, ks: tuple[int, ...] = RECALL_AT) -> dict[str, float]:
    """What a random ranking scores on average: k / N (1 once k >= N)."""
    return {f"{d}/R@{k}": min(k, num_pairs) / num_pairs if num_pairs else 0.0
            for d in _directions(other) for k in ks}
