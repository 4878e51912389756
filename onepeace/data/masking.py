"""Which content tokens each view keeps (the rest are dropped from the encoder and predicted).

Every function returns *kept* indices, sorted ascending, into a modality's content tokens (CLS
excluded), because that is what the model's masked-token dropping gathers. The counts and the way the
two views of a pair relate follow the reference recipe (see docs/fidelity.md, "Training").
"""

from __future__ import annotations

import math

import numpy as np
import torch


def image_mask_counts(num_patches: int, ratio: float, pair_ratio: float) -> tuple[int, int]:
    """(patches masked in the image-only view, patches masked in the pair view): ``int(ratio * N)``
    each, as the reference counts them. The pair masks every patch the image-only view kept, so it must
    mask at least that many."""
    masked, pair_masked = int(num_patches * ratio), int(num_patches * pair_ratio)
    if pair_masked < num_patches - masked:
        raise ValueError(f"image masks: the pair view masks {pair_masked} of {num_patches} patches (pair_image "
                         f"{pair_ratio}) but must mask all {num_patches - masked} that the image-only view "
                         f"keeps (image {ratio}): raise data.masks.pair_image or data.masks.image")
    return masked, pair_masked


def image_keeps(batch: int, num_patches: int, ratio: float, pair_ratio: float,
                rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """[B, K] kept patches of the image-only view and of the image-text pair view.

    The image-only view masks ``int(ratio * N)`` random patches. The pair view masks every patch the
    image-only view kept plus a random share of those it masked, ``int(pair_ratio * N)`` in all, so the
    pair sees only patches the image-only view did not: the two views see disjoint patches.
    """
    masked, pair_masked = image_mask_counts(num_patches, ratio, pair_ratio)
    extra = pair_masked - (num_patches - masked)  # image-masked patches the pair masks too
    order = np.argsort(rng.random((batch, num_patches)), axis=1)  # a random permutation per row
    # The image view masks order[:, :masked]. The pair masks order[:, masked:] (what the image view
    # kept) and order[:, :extra] (a random share of what it masked), keeping order[:, extra:masked].
    keep = np.sort(order[:, masked:], axis=1)
    pair_keep = np.sort(order[:, extra:masked], axis=1)
    return torch.from_numpy(keep), torch.from_numpy(pair_keep)


def word_ids(word_start: np.ndarray) -> np.ndarray:
    """Word number of each token; a first token that does not start a word still opens word 0."""
    ids = np.cumsum(word_start) - 1
    if word_start.size and not word_start[0]:
        ids += 1
    return ids


def whole_word_mask(word_start: np.ndarray, ratio: float, rng: np.random.Generator) -> np.ndarray:
    """[n] bool: ``ceil(ratio * words)`` random words masked whole (every piece of each)."""
    wid = word_ids(word_start)
    words = int(wid[-1]) + 1 if wid.size else 0
    chosen = rng.permutation(words)[: math.ceil(ratio * words)]
    word_masked = np.zeros(words, dtype=bool)
    word_masked[chosen] = True
    return word_masked[wid]


def pair_token_mask(text_masked: np.ndarray, ratio: float, rng: np.random.Generator) -> np.ndarray:
    """[n] bool: ``int(ratio * n)`` single tokens, taken in random order first among the tokens the
    text-only view kept (``~text_masked``), then, only if those run out, among the ones it masked."""
    n = text_masked.shape[0]
    # Kept tokens score in [0, 1), masked ones in [1, 2): ascending order puts every kept one first.
    order = np.argsort(rng.random(n) + text_masked)
    masked = np.zeros(n, dtype=bool)
    masked[order[: int(n * ratio)]] = True
    return masked


def text_keeps(word_start: np.ndarray, ratio: float, pair_ratio: float, rng: np.random.Generator, *,
               pair_whole_words: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Kept tokens of the text-only view and of the pair view.

    The text-only view masks whole words (``whole_word_mask``). The pair view masks single tokens chosen
    first among those the text-only view kept (``pair_token_mask``; the image-text stage), or, with
    ``pair_whole_words``, whole words drawn on their own (the audio-text stage).
    ``word_start`` covers the tokens before EOS; EOS (index ``len(word_start)``) is always kept.
    """
    eos = np.array([word_start.shape[0]])
    if word_start.shape[0] == 0:
        return eos, eos
    masked = whole_word_mask(word_start, ratio, rng)
    pair_masked = (whole_word_mask(word_start, pair_ratio, rng) if pair_whole_words
                   else pair_token_mask(masked, pair_ratio, rng))
    return np.concatenate([np.flatnonzero(~masked), eos]), np.concatenate([np.flatnonzero(~pair_masked), eos])


def block_keep(num_frames: int, ratio: float, span: int, rng: np.random.Generator) -> np.ndarray:
    """Kept frames when ``round(ratio * num_frames)`` frames are masked in blocks of ``span``.

    Blocks lie on a grid with a random offset and are picked in random order; the last one picked is
    shortened so the masked count is exact (adjacent picks form longer spans, as in wav2vec 2.0).
    """
    masked = int(round(ratio * num_frames))
    if masked <= 0:
        return np.arange(num_frames)
    offset = int(rng.integers(span))
    starts = np.arange(-offset, num_frames, span)
    starts = starts[starts + span > 0]
    lo, hi = np.maximum(starts, 0), np.minimum(starts + span, num_frames)
    pick = rng.permutation(starts.size)
    ends = np.cumsum((hi - lo)[pick])
    count = int(np.searchsorted(ends, masked)) + 1  # blocks needed to reach `masked`
    chosen_lo, chosen_hi = lo[pick[:count]], hi[pick[:count]].copy()
    chosen_hi[-1] -= int(ends[count - 1]) - masked  # shorten the last block: exactly `masked` frames
    # Blocks never overlap, so +1 at each start and -1 at each end, summed, is 1 exactly inside blocks.
    edges = np.zeros(num_frames + 1, dtype=np.int32)
    edges[chosen_lo] += 1
    edges[chosen_hi] -= 1
    return np.flatnonzero(np.cumsum(edges[:-1]) == 0)


def pad_keeps(keeps: list[np.ndarray]) -> torch.Tensor:
    """[B, K] int64, right-padded with -1 where samples keep different numbers of tokens."""
    width = max((k.size for k in keeps), default=0)
    out = np.full((len(keeps), width), -1, dtype=np.int64)
    for i, k in enumerate(keeps):
        out[i, : k.size] = k
    return torch.from_numpy(out)
