"""Retrieval with several captions per item (COCO / Clotho rule) and with identical captions shared by
items, against a plain loop over the definition."""

from __future__ import annotations

import math

import pytest
import torch

from onepeace.eval.embeddings import Rows
from onepeace.eval.gather import in_dataset_order
from onepeace.eval.ranking import best_match_ranks, target_ranks
from onepeace.eval.report import format_table, to_json
from onepeace.eval.retrieval import (
    caption_matches,
    chance_at,
    retrieval_chance,
    retrieval_metrics,
)
from onepeace.eval.zeroshot import SetResult, _retrieval


def plain_ranks(scores: torch.Tensor, correct: list[set[int]]) -> list[int]:
    """1 + number of incorrect candidates scoring at least as high as the best correct one."""
    out = []
    for q, row in enumerate(scores.tolist()):
        best = max(row[c] for c in correct[q])
        out.append(1 + sum(1 for c, s in enumerate(row) if c not in correct[q] and s >= best))
    return out


def test_best_match_ranks_equal_the_definition():
    g = torch.Generator().manual_seed(0)
    items = torch.randn(7, 4, generator=g)
    owners = torch.tensor([0, 0, 1, 2, 2, 2, 3, 4, 5, 6, 6, 1])
    texts = torch.randn(len(owners), 4, generator=g).round(decimals=0)  # coarse values: many ties
    scores = items @ texts.t()
    item_correct = [{c for c, o in enumerate(owners.tolist()) if o == i} for i in range(7)]
    assert best_match_ranks(items, texts, owners, torch.arange(len(owners))).tolist() == \
        plain_ranks(scores, item_correct)
    caption_correct = [{o} for o in owners.tolist()]
    assert best_match_ranks(texts, items, torch.arange(len(owners)), owners).tolist() == \
        plain_ranks(scores.t(), caption_correct)


def test_one_correct_candidate_gives_the_target_rank():
    g = torch.Generator().manual_seed(1)
    q, c = torch.randn(9, 3, generator=g), torch.randn(5, 3, generator=g).round()
    targets = torch.randint(0, 5, (9,), generator=g)
    assert torch.equal(best_match_ranks(q, c, torch.arange(9), targets), target_ranks(q, c, targets))


def test_an_item_is_found_when_any_of_its_captions_is():
    items = torch.eye(3)
    # Item 0 has captions 0 and 1; caption 1 matches it exactly, caption 0 points at item 2.
    texts = torch.tensor([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    owners = torch.tensor([0, 0, 1, 2])
    m = retrieval_metrics(items, texts, "image", ks=(1,), owners=owners)
    # Item 0 is found through caption 1 although caption 0 misses; item 2's caption ties with caption 0
    # (owned by item 0): a miss under the pessimistic rule.
    assert m["image_to_text/R@1"] == pytest.approx(2 / 3)
    assert m["text_to_image/R@1"] == pytest.approx(3 / 4)  # only caption 0 retrieves the wrong item
    with pytest.raises(ValueError, match="needs at least one caption"):
        retrieval_metrics(torch.eye(4), texts, "image", owners=owners)


def test_identical_captions_count_as_correct_and_are_counted():
    """Tied embeddings: items 0 and 1 carry the same caption text, so their caption rows are identical."""
    items = torch.tensor([[1.0, 0.0, 0.0], [0.9, 0.1, 0.0], [0.0, 0.0, 1.0]])
    texts = torch.tensor([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])  # captions 0 and 1 are twins
    owners = torch.tensor([0, 1, 2])
    captions = ["a red square", "a red square", "a blue circle"]
    strict = caption_matches(owners, captions, same_caption_is_correct=False)
    assert (strict.twin_captions, strict.twin_items, strict.twin_groups) == (2, 2, 1)
    m = retrieval_metrics(items, texts, "image", ks=(1,), matches=strict)
    # Strict: item 0 ties its own caption with item 1's (rank 2), item 1 likewise; caption 1 prefers item 0.
    assert m["image_to_text/R@1"] == pytest.approx(1 / 3)
    assert m["text_to_image/R@1"] == pytest.approx(2 / 3)
    lenient = caption_matches(owners, captions)
    m = retrieval_metrics(items, texts, "image", ks=(1,), matches=lenient)
    assert m == {"image_to_text/R@1": 1.0, "text_to_image/R@1": 1.0}
    # Item 0 has two correct captions of three now, each twin caption two correct items of three.
    chance = retrieval_chance(3, "image", ks=(1,), matches=lenient, num_items=3, num_captions=3)
    assert chance["image_to_text/R@1"] == pytest.approx((2 / 3 + 2 / 3 + 1 / 3) / 3)
    assert chance["text_to_image/R@1"] == pytest.approx((2 / 3 + 2 / 3 + 1 / 3) / 3)


def test_chance_is_the_hypergeometric_complement():
    for n, m, k in ((10, 1, 1), (10, 5, 3), (25, 5, 10), (4, 1, 10)):
        want = 1 - (math.comb(n - m, k) / math.comb(n, k) if k <= n - m else 0.0)
        assert chance_at(n, torch.tensor([m]), k) == pytest.approx(want)


def test_a_set_with_duplicates_reports_them():
    # Item b's second caption is the same text as item a's only caption: identical embeddings.
    rows = Rows(ids=["b", "a", "c"], labels=[None] * 3,
                emb={"image": torch.eye(3)[[1, 0, 2]], "text": torch.tensor([[0, 1.0, 0], [1.0, 0, 0], [1.0, 0, 0], [0, 0, 1.0]])},
                text_owner=["b", "a", "b", "c"], captions=["dog", "cat", "cat", "bird"])
    rows = in_dataset_order(rows, 3, "set")
    assert rows.ids == ["a", "b", "c"] and rows.text_owner == ["a", "b", "b", "c"]
    assert rows.captions == ["cat", "dog", "cat", "bird"]
    assert rows.emb["text"].tolist()[:2] == [[1.0, 0, 0], [0, 1.0, 0]]
    result = SetResult("set", "image-text", 3, 0)
    _retrieval(result, rows, "image", same_caption_is_correct=True)
    assert result.captions == 4
    assert result.duplicates == {"captions": 2, "items": 2, "texts": 1, "counted_as_correct": True}
    assert result.metrics["image_to_text/R@1"] == 1.0 and result.metrics["text_to_image/R@1"] == 1.0
    table = format_table(result, {})
    assert "3 samples, 4 captions" in table and "identical to the true one counts as correct" in table
    assert to_json(result, {})["duplicate_captions"]["items"] == 2
    strict = SetResult("set", "image-text", 3, 0)
    _retrieval(strict, rows, "image", same_caption_is_correct=False)
    assert strict.metrics["text_to_image/R@1"] == 0.75 and "strict rule" in format_table(strict, {})
