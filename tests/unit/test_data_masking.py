"""Each view's mask against a plain re-statement of the reference recipe's rule; audio blocks."""

from __future__ import annotations

import math
from collections import Counter
from fractions import Fraction

import numpy as np
import pytest
import torch

from onepeace.data.batching import CollateSpec, collate
from onepeace.data.config import MaskConfig
from onepeace.data.masking import (
    block_keep,
    image_keeps,
    image_mask_counts,
    pad_keeps,
    text_keeps,
    word_ids,
)

# ---- plain re-statements of the reference recipe's mask rules ----------------------------------------------
# Image-only view: int(0.75 * N) random patches masked. Image-text pair: int(0.6875 * N) masked, namely
# every patch the image-only view kept plus random ones among those it masked.
# Text-only view: ceil(0.15 * words) random words masked whole.
# Image-text pair text: int(0.40 * tokens) single tokens, random, first among the tokens the text-only
# view kept, then among the ones it masked. Audio-text pair text: ceil(0.40 * words) whole words, drawn
# without regard to the text-only view.


def reference_image_visible(num_patches: int, ratio: float = 0.75, pair_ratio: float = 0.6875) -> tuple[int, int]:
    return num_patches - int(num_patches * ratio), num_patches - int(num_patches * pair_ratio)


def reference_word_count(words: int, ratio: float) -> int:
    return math.ceil(Fraction(ratio).limit_denominator(1000) * words)


def reference_pair_token_count(tokens: int, ratio: float = 0.40) -> int:
    return int(Fraction(ratio).limit_denominator(1000) * tokens)


def masked_set(keep, length: int) -> set:
    return set(range(length)) - {int(k) for k in keep if k >= 0}


@pytest.mark.parametrize("side", [16, 14, 4])  # 256 px (the reference), 224 px, the tiny preset's 64 px
def test_image_pair_view_masks_all_the_image_view_kept_so_views_are_disjoint(side):
    n = side * side
    visible, pair_visible = reference_image_visible(n)
    rng = np.random.default_rng(side)
    rank_counts = np.zeros(n - visible)
    position_counts = np.zeros(n)
    draws = 0
    for _ in range(40):
        keep, pair_keep = image_keeps(32, n, 0.75, 0.6875, rng)
        assert keep.shape == (32, visible) and pair_keep.shape == (32, pair_visible) and keep.dtype == torch.int64
        for k, pk in zip(keep.tolist(), pair_keep.tolist()):
            assert k == sorted(set(k)) and pk == sorted(set(pk))
            image_masked = sorted(set(range(n)) - set(k))
            assert set(pk) <= set(image_masked)  # pair visible ⊂ image-only masked: disjoint views
            assert masked_set(pk, n) >= set(k)  # the pair masks every patch the image-only view kept
            # Which of the image-masked patches the pair sees: a uniform choice, not a fixed rank.
            rank_counts[[image_masked.index(p) for p in pk]] += 1
            position_counts[k] += 1
            draws += 1
    assert rank_counts / draws == pytest.approx(np.full(n - visible, pair_visible / (n - visible)), abs=0.08)
    assert position_counts / draws == pytest.approx(np.full(n, visible / n), abs=0.08)


def test_image_mask_counts_at_the_reference_and_tiny_grids():
    assert image_mask_counts(256, 0.75, 0.6875) == (192, 176)  # the pair sees 80 of the 192 image-masked
    assert image_mask_counts(16, 0.75, 0.6875) == (12, 11)  # tiny 4x4: the pair sees 5 of the 12
    with pytest.raises(ValueError, match="must mask all 64 that the image-only view keeps"):
        image_mask_counts(256, 0.75, 0.2)


def test_word_ids_group_pieces():
    assert word_ids(np.array([True, False, True, True, False, False])).tolist() == [0, 0, 1, 2, 2, 2]
    assert word_ids(np.array([False, True])).tolist() == [0, 1]


STARTS = np.array([True, False, True, True, False, True, True, False, False, True] * 3)  # 30 tokens, 18 words


def assert_whole_words(keep: np.ndarray, wid: np.ndarray) -> None:
    kept = keep[:-1]
    assert set(np.flatnonzero(np.isin(wid, wid[kept])).tolist()) == set(kept.tolist())


@pytest.mark.parametrize("starts", [STARTS, STARTS[:7], STARTS[:2], np.ones(100, dtype=bool)])
def test_image_text_pair_masks_single_tokens_first_among_the_text_kept(starts):
    rng = np.random.default_rng(len(starts))
    n, wid = starts.size, word_ids(starts)
    words = int(wid[-1]) + 1
    pair_counts = np.zeros(n)
    split_words = 0
    for _ in range(500):
        keep, pair_keep = text_keeps(starts, 0.15, 0.40, rng)
        assert keep[-1] == n and pair_keep[-1] == n  # EOS stays
        assert_whole_words(keep, wid)
        text_masked, pair_masked = masked_set(keep[:-1], n), masked_set(pair_keep[:-1], n)
        assert len({int(w) for w in wid[list(text_masked)]}) == reference_word_count(words, 0.15)
        assert len(pair_masked) == reference_pair_token_count(n)
        text_kept = set(range(n)) - text_masked
        # Chosen first among what the text-only view kept: all from there, or all of it and then more.
        assert pair_masked <= text_kept or text_kept <= pair_masked
        pair_counts[list(pair_masked)] += 1
        masked_pieces = np.bincount(wid[list(pair_masked)], minlength=words)
        split_words += bool(((masked_pieces > 0) & (masked_pieces < np.bincount(wid))).any())
    if n >= 30:
        assert (pair_counts > 0).all()
    if n >= 30 and words < n:
        assert split_words > 0  # single tokens: a word's pieces are masked on their own


def test_image_text_pair_takes_text_masked_tokens_only_when_the_kept_run_out():
    rng = np.random.default_rng(2)
    one_word = np.array([True, False, False, False, False])  # the text view masks it all
    four_words = np.ones(4, dtype=bool)
    for _ in range(200):
        keep, pair_keep = text_keeps(one_word, 0.15, 0.40, rng)
        assert keep.tolist() == [5] and len(masked_set(pair_keep[:-1], 5)) == 2
        keep, pair_keep = text_keeps(four_words, 0.5, 0.75, rng)  # 2 words masked, then 3 tokens: one repeats
        text_masked, pair_masked = masked_set(keep[:-1], 4), masked_set(pair_keep[:-1], 4)
        assert len(text_masked) == 2 and len(pair_masked) == 3 and set(range(4)) - text_masked <= pair_masked
    counts = Counter(tuple(pair_keep.tolist()) for _ in range(400)
                     for pair_keep in [text_keeps(one_word, 0.15, 0.40, rng)[1]])
    assert len(counts) == 10  # then chosen at random among the others: every 2 of the 5 tokens


def test_audio_text_pair_masks_whole_words_on_their_own():
    rng = np.random.default_rng(3)
    wid = word_ids(STARTS)
    overlaps = 0
    for _ in range(500):
        keep, pair_keep = text_keeps(STARTS, 0.15, 0.40, rng, pair_whole_words=True)
        assert_whole_words(pair_keep, wid)
        pair_masked = masked_set(pair_keep[:-1], STARTS.size)
        assert len({int(w) for w in wid[list(pair_masked)]}) == reference_word_count(18, 0.40)
        overlaps += bool(masked_set(keep[:-1], STARTS.size) & pair_masked)
    assert overlaps > 0  # drawn without regard to the text-only view


def test_empty_text_keeps_only_eos():
    for whole in (False, True):
        keep, pair_keep = text_keeps(np.zeros(0, dtype=bool), 0.15, 0.4, np.random.default_rng(0),
                                     pair_whole_words=whole)
        assert keep.tolist() == [0] and pair_keep.tolist() == [0]


def test_collate_uses_each_pair_task_s_text_rule():
    """image-text batches get single-token pair masks, audio-text batches whole-word ones."""
    vocab_starts = np.array([True, False] * 50)  # even ids start a word, odd ids continue it
    tokens = np.array([10, 11, 13, 15, 20, 21, 30, 31, 40, 41, 2])  # 5 words of 2-4 pieces, then EOS
    wid = word_ids(vocab_starts[tokens[:-1]])
    rng = np.random.default_rng(4)
    split = {"image-text": 0, "audio-text": 0}
    for kind in split:
        spec = CollateSpec(kind=kind, pad_id=0, word_start=vocab_starts, num_patches=16, masks=MaskConfig())
        sample = {"tokens": tokens, "id": "a", "label": None, "image": torch.zeros(3, 64, 64, dtype=torch.uint8),
                  "audio": torch.zeros(16000)}
        for _ in range(100):
            batch = collate([sample], spec, rng)
            pair_masked = masked_set(batch["pair_text_keep"][0].tolist(), 10)
            pieces = [set(np.flatnonzero(wid == w)) for w in range(5)]
            split[kind] += any(0 < len(p & pair_masked) < len(p) for p in pieces)
            if kind == "image-text":
                assert len(pair_masked) == 4 and not set(batch["pair_image_keep"][0].tolist()) & set(
                    batch["image_keep"][0].tolist())
            else:
                assert len({int(w) for w in wid[list(pair_masked)]}) == 2  # ceil(0.4 * 5) words
    assert split["image-text"] > 0 and split["audio-text"] == 0


@pytest.mark.parametrize("frames, ratio", [(49, 0.55), (250, 0.45), (749, 0.55), (7, 0.55), (1, 0.55), (10, 0.0)])
def test_audio_block_masks_exact_count_in_spans(frames, ratio):
    rng = np.random.default_rng(frames)
    runs = []
    for _ in range(50):
        keep = block_keep(frames, ratio, 5, rng)
        assert keep.tolist() == sorted(set(keep.tolist())) and (keep < frames).all()
        masked = np.ones(frames, dtype=bool)
        masked[keep] = False
        assert masked.sum() == round(ratio * frames)
        edges = np.flatnonzero(np.diff(np.concatenate([[0], masked.astype(int), [0]])))
        runs.extend((edges[1::2] - edges[::2]).tolist())
    if frames >= 49:
        assert np.median(runs) >= 5  # masked in blocks, not scattered frames


def test_pad_keeps():
    out = pad_keeps([np.array([0, 3]), np.array([1]), np.array([], dtype=np.int64)])
    assert out.tolist() == [[0, 3], [1, -1], [-1, -1]] and out.dtype == torch.int64
