"""Which content tokens each view keeps (the rest are dropped from the encoder and predicted).

Every function returns *kept* indices, sorted ascending, into a modality's content tokens (CLS
excluded), because that is what the model's masked-token dropping gathers.
"""

from __future__ import annotations

import numpy as np
import torch


def _stochastic_round(x: float, rng: np.random.Generator) -> int:
    """floor or ceil with the odds that make the expectation exactly ``x`` (short captions stay unbiased)."""
    low = int(np.floor(x))
    return low + int(rng.random() < x - low)


def image_keeps(batch: int, num_patches: int, ratio: float, pair_ratio: float,
                rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """[B, K] kept patches of the image-only view (``ratio`` masked) and of the pair view
    (``pair_ratio`` masked, all among the patches the image-only view masked)."""
    order = np.argsort(rng.random((batch, num_patches)), axis=1)  # a random permutation per row
    masked, pair_masked = int(round(ratio * num_patches)), int(round(pair_ratio * num_patches))
    # The first `masked` of each permutation are masked in the image view; the pair masks a prefix of them.
    keep = np.sort(order[:, masked:], axis=1)
    pair_keep = np.sort(order[:, pair_masked:], axis=1)
    return torch.from_numpy(keep), torch.from_numpy(pair_keep)


def word_ids(word_start: np.ndarray) -> np.ndarray:
    """Word number of each token; a first token that does not start a word still opens word 0."""
    ids = np.cumsum(word_start) - 1
    if word_start.size and not word_start[0]:
        ids += 1
    return ids


def text_keeps(word_start: np.ndarray, ratio: float, pair_ratio: float,
               rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Kept tokens of the text-only view (``ratio`` of the words masked whole) and of the pair view
    (``pair_ratio`` of the words, taken first from those the text-only view kept).

    ``word_start`` covers the tokens before EOS; EOS (index ``len(word_start)``) is always kept.
    """
    length = word_start.shape[0]
    eos = np.array([length])
    if length == 0:
        return eos, eos
    wid = word_ids(word_start)
    words = int(wid[-1]) + 1
    order = rng.permutation(words)
    masked = _stochastic_round(ratio * words, rng)
    pair_masked = _stochastic_round(pair_ratio * words, rng)
    # Pair view: words the text view kept come first (in random order), then the ones it masked.
    pair_order = np.concatenate([order[masked:], order[:masked]])
    out = []
    for chosen in (order[:masked], pair_order[:pair_masked]):
        word_masked = np.zeros(words, dtype=bool)
        word_masked[chosen] = True
        out.append(np.concatenate([np.flatnonzero(~word_masked[wid]), eos]))
    return out[0], out[1]


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
