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


def best_match_ranks(queries: torch.Tensor, candidates: torch.Tensor, match_query: torch.Tensor,
                     match_candidate: torch.Tensor) -> torch.Tensor:
    """1-based rank of the best-scoring correct candidate of each query, when a query may have several
    correct candidates: pair ``e`` says candidate ``match_candidate[e]`` is correct for query
    ``match_query[e]``. Pessimistic as :func:`target_ranks`: ``1 + (incorrect candidates scoring >= the
    best correct one)``; NaN scores count against the query; every query needs at least one pair."""
    if queries.dim() != 2 or candidates.dim() != 2 or queries.shape[1] != candidates.shape[1]:
        raise ValueError(f"need [Q, D] queries and [C, D] candidates, got {tuple(queries.shape)} and "
                         f"{tuple(candidates.shape)}")
    num_queries, num_candidates = queries.shape[0], candidates.shape[0]
    if num_queries and (not match_query.numel() or torch.bincount(match_query, minlength=num_queries).min() == 0):
        raise ValueError("every query needs at least one correct candidate")
    order = torch.argsort(match_query, stable=True)
    match_query, match_candidate = match_query[order].long(), match_candidate[order].long()
    candidates_t = candidates.float().t()
    out = []
    for start in range(0, num_queries, CHUNK):
        scores = queries[start:start + CHUNK].float() @ candidates_t
        n = scores.shape[0]
        lo, hi = torch.searchsorted(match_query, torch.tensor([start, start + n]))
        q, c = match_query[lo:hi] - start, match_candidate[lo:hi]
        correct = scores[q, c]
        correct_or_low = torch.where(correct.isnan(), torch.full_like(correct, -torch.inf), correct)
        best = torch.full((n,), -torch.inf).scatter_reduce(0, q, correct_or_low, "amax")
        beaten = ((scores >= best[:, None]) | scores.isnan()).sum(1)
        correct_beaten = torch.zeros(n, dtype=torch.long).scatter_add(
            0, q, ((correct_or_low >= best[q]) | correct.isnan()).long())
        ranks = beaten - correct_beaten + 1
        out.append(torch.where(best == -torch.inf, torch.full_like(ranks, num_candidates), ranks))
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.long)


def hits_at(ranks: torch.Tensor, k: int) -> float:
    """Share of queries whose true match is among the top ``k``."""
    return float((ranks <= k).double().mean()) if ranks.numel() else 0.0
