"""Zero-shot retrieval between text and images or audio: recall@k in both directions, several captions
per item allowed (the COCO / Clotho protocol).

Caption ``c`` belongs to item ``owners[c]``. Item -> text: an item is found at rank k when any of its
captions is among the top k. Text -> item: each caption has exactly one correct item, its owner.
Ranks are pessimistic (see ``ranking``): a caption that happens to fit another item equally well counts
as a miss.

One exception, on by default: **identical captions**. When two items carry the same caption (after the
tokenizer's normalisation), the two caption rows have identical embeddings and no model can tell them
apart, so under the pessimistic rule neither could ever be retrieved first. A retrieved caption that is
identical to one of the query item's captions, or a retrieved item that carries a caption identical to the
query caption, therefore counts as correct; :func:`caption_twins` counts how often that applies, and the
evaluation report says so. ``same_caption_is_correct=False`` restores the strict rule.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .ranking import best_match_ranks, hits_at

RECALL_AT = (1, 5, 10)


def _directions(other: str) -> tuple[str, str]:
    return f"{other}_to_text", f"text_to_{other}"


@dataclass(frozen=True)
class Matches:
    """Correct (item, caption) pairs, and how many of them come from identical captions of other items."""

    item: torch.Tensor  # [E] item index of each correct pair
    caption: torch.Tensor  # [E] caption index
    twin_captions: int = 0  # captions identical to a caption of another item
    twin_items: int = 0  # items sharing at least one caption with another item
    twin_groups: int = 0  # distinct caption texts carried by more than one item


def caption_matches(owners: torch.Tensor, captions: list[str] | None = None,
                    same_caption_is_correct: bool = True) -> Matches:
    """The correct pairs: each caption with its owner, plus (with ``captions`` and
    ``same_caption_is_correct``) each caption with every other item carrying an identical caption."""
    owners = owners.long()
    own = Matches(owners, torch.arange(owners.numel()))
    if captions is None:
        return own
    if len(captions) != owners.numel():
        raise ValueError(f"{len(captions)} caption texts for {owners.numel()} caption rows")
    groups: dict[str, list[int]] = {}
    for c, text in enumerate(captions):
        groups.setdefault(text, []).append(c)
    items, rows, twin_captions, twin_items, twin_groups = [], [], 0, set(), 0
    for members in groups.values():
        holders = sorted({int(owners[c]) for c in members})
        if len(holders) < 2:
            continue
        twin_groups += 1
        twin_captions += len(members)
        twin_items.update(holders)
        for c in members:
            for item in holders:
                if item != int(owners[c]):
                    items.append(item)
                    rows.append(c)
    if not same_caption_is_correct or not items:
        return Matches(own.item, own.caption, twin_captions, len(twin_items), twin_groups)
    return Matches(torch.cat([own.item, torch.tensor(items)]), torch.cat([own.caption, torch.tensor(rows)]),
                   twin_captions, len(twin_items), twin_groups)


def retrieval_ranks(other_emb: torch.Tensor, text_emb: torch.Tensor, matches: Matches,
                    other: str) -> dict[str, torch.Tensor]:
    forward, backward = _directions(other)
    return {forward: best_match_ranks(other_emb, text_emb, matches.item, matches.caption),
            backward: best_match_ranks(text_emb, other_emb, matches.caption, matches.item)}


def retrieval_metrics(other_emb: torch.Tensor, text_emb: torch.Tensor, other: str,
                      ks: tuple[int, ...] = RECALL_AT, owners: torch.Tensor | None = None,
                      matches: Matches | None = None) -> dict[str, float]:
    """``{"<other>_to_text/R@k": ..., "text_to_<other>/R@k": ...}`` as fractions in [0, 1]. Without
    ``owners`` or ``matches``, text row i pairs with item row i and nothing else."""
    if matches is None:
        if owners is None:
            if other_emb.shape[0] != text_emb.shape[0]:
                raise ValueError(f"retrieval pairs row i with row i: {other_emb.shape[0]} {other} rows, "
                                 f"{text_emb.shape[0]} text rows")
            owners = torch.arange(other_emb.shape[0])
        matches = caption_matches(owners)
    check_matches(matches, other_emb.shape[0], text_emb.shape[0], other)
    ranks = retrieval_ranks(other_emb, text_emb, matches, other)
    return {f"{d}/R@{k}": hits_at(r, k) for d, r in ranks.items() for k in ks}


def check_matches(matches: Matches, num_items: int, num_captions: int, other: str) -> None:
    if matches.item.numel() and (int(matches.item.max()) >= num_items or int(matches.caption.max()) >= num_captions):
        raise ValueError(f"caption owners point past the {num_items} {other} rows or {num_captions} text rows")
    if num_items and torch.bincount(matches.item, minlength=num_items).min() == 0:
        raise ValueError(f"every {other} row needs at least one caption")


def chance_at(num_candidates: int, num_correct: torch.Tensor, k: int) -> float:
    """Mean chance that a random ranking of ``num_candidates`` puts one of a query's ``num_correct``
    correct candidates among the top ``k``: ``1 - C(n - m, k) / C(n, k)``."""
    if num_candidates == 0 or num_correct.numel() == 0:
        return 0.0
    m = num_correct.double()
    miss = torch.ones_like(m)
    for j in range(min(k, num_candidates)):
        miss = miss * ((num_candidates - m - j) / (num_candidates - j)).clamp(min=0)
    return float((1 - miss).mean())


def retrieval_chance(num_pairs: int, other: str, ks: tuple[int, ...] = RECALL_AT,
                     matches: Matches | None = None, num_items: int | None = None,
                     num_captions: int | None = None) -> dict[str, float]:
    """What a random ranking scores on average (k / N with one caption per item)."""
    if matches is None:
        matches = caption_matches(torch.arange(num_pairs))
        num_items = num_captions = num_pairs
    per_item = torch.bincount(matches.item, minlength=num_items)
    per_caption = torch.bincount(matches.caption, minlength=num_captions)
    forward, backward = _directions(other)
    out = {f"{forward}/R@{k}": chance_at(num_captions, per_item, k) for k in ks}
    out.update({f"{backward}/R@{k}": chance_at(num_items, per_caption, k) for k in ks})
    return out
