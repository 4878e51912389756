"""Relative position bias: bucketing, CLS entries, 2D tables, diagonal blocks, unshare, resize."""

import math

import pytest
import torch

from onepeace.config import MODEL_PRESETS, ConfigError, model_config
from onepeace.model import OnePeace
from onepeace.model.position import (NUM_SPECIAL, bucket_1d, index_map_1d, index_map_2d, resize_table_2d,
                                     table_size_1d, table_size_2d)


def official_bucket(d: int, bucket_size: int, max_distance: int = 1024) -> int:
    """The official ONE-PEACE 1D bucket of a (query - key) distance, restated for one number: exact up to
    mid = bucket_size / 2, then mid + ceil(log(|d| / mid) / log((max_distance - 1) / mid) * (mid - 1)).
    The official tables cover |d| <= max_distance - 1; farther distances share the last bucket here."""
    mid = bucket_size // 2
    a = abs(d)
    if a <= mid:
        return d
    b = mid + math.ceil(math.log(a / mid) / math.log((max_distance - 1) / mid) * (mid - 1))
    return int(math.copysign(min(b, bucket_size - 1), d))


@pytest.mark.parametrize("bucket_size", [256, 512])
def test_bucket_1d_matches_the_official_formula(bucket_size):
    rel = torch.arange(-1100, 1101)
    got = bucket_1d(rel, bucket_size, 1024).tolist()
    assert got == [official_bucket(d, bucket_size) for d in rel.tolist()]
    mid = bucket_size // 2
    assert got[1100 + mid] == mid and got[1100 + mid + 1] == mid + 1  # exact up to mid inclusive
    assert got[1100 + 1023] == bucket_size - 1 and len(set(got)) == 2 * bucket_size - 1  # every bucket used


def test_official_table_sizes_for_every_preset():
    assert table_size_1d(256) == 514 and table_size_1d(512) == 1026
    for preset in MODEL_PRESETS:
        config = model_config(preset)
        assert (config.text_rel_buckets, config.audio_rel_buckets, config.rel_max_distance) == (256, 512, 1024)
    model = OnePeace(model_config("tiny"))
    assert model.rel_bias.tables["text"].shape[0] == 514 and model.rel_bias.tables["audio"].shape[0] == 1026


def test_reversed_official_rows_give_the_official_bias():
    """The official index is bucket(query - key) + bucket_size - 1; ours is bucket(key - query) + the same.
    An official table with its distance rows reversed (CLS rows kept) gives the same bias everywhere."""
    n, bs = 40, 8
    official_table = torch.randn(table_size_1d(bs), 2)
    ours_table = torch.cat([official_table[: 2 * bs - 1].flip(0), official_table[2 * bs - 1:]])
    idx = index_map_1d(n, bs, 32)
    for q in range(n + 1):
        for k in range(n + 1):
            if q == 0 or k == 0:
                row = 2 * bs - 1 + (2 if q == k == 0 else 0 if q == 0 else 1)
            else:
                row = official_bucket(q - k, bs, 32) + bs - 1
            assert torch.equal(ours_table[idx[q, k]], official_table[row]), (q, k)


def test_index_map_1d_cls_entries_and_distances():
    n, bs = 5, 4
    idx = index_map_1d(n, bs, 8)
    num_dist = 2 * bs - 1
    assert idx.shape == (n + 1, n + 1)
    assert (idx[0, 1:] == num_dist).all() and (idx[1:, 0] == num_dist + 1).all() and idx[0, 0] == num_dist + 2
    # token i at position i (1-based in the map), key j: bucket(j - i) + bs - 1
    assert idx[1, 1] == bs - 1  # distance 0
    assert idx[1, 2] == bs and idx[2, 1] == bs - 2
    assert idx.max() == table_size_1d(bs) - 1


def test_rel_bucket_config_is_validated():
    for bad in (255, 2, 1024):
        with pytest.raises(ConfigError, match="text_rel_buckets"):
            model_config("tiny", text_rel_buckets=bad)


def test_index_map_2d_matches_beit_formula():
    g = 3
    idx = index_map_2d(g)
    assert idx.shape == (g * g + 1, g * g + 1) and idx.max() == table_size_2d(g) - 1
    for qi in range(g * g):
        for ki in range(g * g):
            (qr, qc), (kr, kc) = divmod(qi, g), divmod(ki, g)
            assert idx[qi + 1, ki + 1] == (kr - qr + g - 1) * (2 * g - 1) + (kc - qc + g - 1)
    assert idx[0, 0] == (2 * g - 1) ** 2 + 2


def test_bias_only_inside_diagonal_blocks_and_cls_entries():
    model = OnePeace(model_config("tiny"))
    with torch.no_grad():
        for m, t in model.rel_bias.tables.items():
            t.copy_(torch.randn_like(t).abs() + 1)  # every real entry non-zero
    rb = model.rel_bias
    text_pos = rb.global_positions("text", torch.arange(6))
    image_pos = rb.global_positions("image", torch.arange(17))
    pos = torch.cat([text_pos, image_pos])[None]
    rows = rb.index_map[pos[:, :, None], pos[:, None, :]][0]
    bias = rb.table()[rows]  # [L, L, H]
    assert (bias[:6, 6:] == 0).all() and (bias[6:, :6] == 0).all()  # cross-modal blocks get 0
    assert (bias[:6, :6] != 0).all() and (bias[6:, 6:] != 0).all()
    # CLS entries are the last three rows of each table
    text_table = rb.tables["text"]
    assert torch.equal(bias[0, 3], text_table[-NUM_SPECIAL])  # CLS -> token
    assert torch.equal(bias[3, 0], text_table[-NUM_SPECIAL + 1])  # token -> CLS
    assert torch.equal(bias[6, 6], rb.tables["image"][-1])  # image CLS -> CLS


def test_resize_table_2d_keeps_specials_and_identity():
    t = torch.randn(table_size_2d(4), 3)
    assert torch.equal(resize_table_2d(t, 4, 4), t)
    r = resize_table_2d(t, 4, 6)
    assert r.shape == (table_size_2d(6), 3)
    assert torch.equal(r[-NUM_SPECIAL:], t[-NUM_SPECIAL:])
    # align_corners bicubic keeps the corner (farthest) and centre (distance 0) entries
    assert torch.allclose(r[0], t[0], atol=1e-5)
    assert torch.allclose(r[(11 * 11) // 2], t[(7 * 7) // 2], atol=1e-5)
