"""Where the true match ranks among all candidates: the one primitive behind recall@k and top-k accuracy.

The rank is pessimistic: ``1 + (number of other candidates scoring >= the true one)``, so a tie never
helps, results do not depend on the order of the rows, and a constant model scores chance or worse
rather than 100%. A NaN score (a diverged model) counts against the true match.
"""

from __future__ import annotations

import torch

CHUNK = 4096  # queries per similarity block: bounds memory at CHUNK x candidates floats


def target_ranks(queries: torch.Tensor, candidates: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """1-based rank of candidate ``targets[i]`` for query ``i`` by dot product ([Q, D] x [C, D] -> [Q])."""
    if queries.dim() != 2 or candidates.dim() != 2 or queries.shape[1] != candidates.shape[1]:
        raise ValueError(f"need [Q, D] queries and [C, D] candidates, got {tuple(queries.shape)} and "
                         f"{tuple(candidates.shape)}")
    if targets.shape != (queries.shape[0],):
        raise ValueError(f"need one target per query: {queries.shape[0]} queries, targets {tuple(targets.shape)}")
    num_candidates = candidates.shape[0]
    candidates_t = candidates.float().t()
    out = []
    for start in range(0, queries.shape[0], CHUNK):
        scores = queries[start:start + CHUNK].float() @ candidates_t
        true = scores.gather(1, targets[start:start + CHUNK, None].long())
        beaten = (scores >= true) | scores.isnan()  # includes the target itself unless its score is NaN
        ranks = beaten.sum(1)
        out.append(torch.where(true[:, 0].isnan(), torch.full_like(ranks, num_candidates), ranks))
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.long)


def hits_at(ranks: torch.Tensor, k: int) -> float:
    """Share of queries whose true match is among the top ``k``."""
    return float((ranks <= k).double().mean()) if ranks.numel() else 0.0
