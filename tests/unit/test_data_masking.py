"""Mask ratios, the pair/single-view complement properties, whole words and audio blocks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from onepeace.data.masking import block_keep, image_keeps, pad_keeps, text_keeps, word_ids


def test_image_ratios_and_pair_masks_chosen_among_image_masked():
    rng = np.random.default_rng(0)
    keep, pair_keep = image_keeps(64, 256, 0.75, 0.6875, rng)
    assert keep.shape == (64, 64) and pair_keep.shape == (64, 80) and keep.dtype == torch.int64
    for k, pk in zip(keep.tolist(), pair_keep.tolist()):
        assert k == sorted(set(k)) and pk == sorted(set(pk))
        assert set(k) <= set(pk)  # pair-masked patches are all image-masked: image-kept stay kept
    # Masks differ between samples and cover all positions over a batch.
    assert len({tuple(k) for k in keep.tolist()}) == 64
    assert set(keep.flatten().tolist()) == set(range(256))


def test_word_ids_group_pieces():
    assert word_ids(np.array([True, False, True, True, False, False])).tolist() == [0, 0, 1, 2, 2, 2]
    assert word_ids(np.array([False, True])).tolist() == [0, 1]


def test_text_masks_whole_words_keep_eos_and_prefer_text_kept_words():
    rng = np.random.default_rng(1)
    starts = np.array([True, False, True, True, False, True, True, False, False, True] * 3)  # 18 words
    wid = word_ids(starts)
    masked_words, pair_masked_words = [], []
    for _ in range(2000):
        keep, pair_keep = text_keeps(starts, 0.15, 0.40, rng)
        eos = starts.size
        assert keep[-1] == eos and pair_keep[-1] == eos
        for kept in (keep[:-1], pair_keep[:-1]):
            kept_words = set(wid[kept].tolist())
            assert set(np.flatnonzero(np.isin(wid, list(kept_words))).tolist()) == set(kept.tolist())  # whole words
        text_masked = set(range(eos)) - set(keep.tolist())
        pair_masked = set(range(eos)) - set(pair_keep.tolist())
        # 40% of 18 words fits in the 85% the text view kept: the two views mask disjoint words.
        assert not (text_masked & pair_masked)
        masked_words.append(18 - len(set(wid[keep[:-1]].tolist())))
        pair_masked_words.append(18 - len(set(wid[pair_keep[:-1]].tolist())))
    assert np.mean(masked_words) / 18 == pytest.approx(0.15, abs=0.01)
    assert np.mean(pair_masked_words) / 18 == pytest.approx(0.40, abs=0.01)


def test_pair_text_takes_text_masked_words_only_when_it_must():
    rng = np.random.default_rng(2)
    starts = np.ones(4, dtype=bool)
    for _ in range(200):
        keep, pair_keep = text_keeps(starts, 0.5, 0.75, rng)  # 2 masked, then 3: one must repeat
        text_masked = set(range(4)) - set(keep.tolist())
        pair_masked = set(range(4)) - set(pair_keep.tolist())
        assert len(text_masked) == 2 and len(pair_masked) == 3
        assert set(range(4)) - text_masked <= pair_masked


def test_empty_text_keeps_only_eos():
    keep, pair_keep = text_keeps(np.zeros(0, dtype=bool), 0.15, 0.4, np.random.default_rng(0))
    assert keep.tolist() == [0] and pair_keep.tolist() == [0]


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
