"""Relative position bias: bucketing, CLS entries, 2D tables, diagonal blocks, unshare, resize."""

import torch

from onepeace.config import model_config
from onepeace.model import OnePeace
from onepeace.model.position import (NUM_SPECIAL, bucket_1d, index_map_1d, index_map_2d, resize_table_2d,
                                     table_size_1d, table_size_2d)


def test_bucket_1d_known_distances():
    rel = torch.tensor([0, 1, -1, 127, 128, -128, 129, -129, 200, 512, 1024, -1024, 5000, -5000])
    got = bucket_1d(rel, exact=128, max_distance=1024, log_buckets=32).tolist()
    # exact within +-128; log-spaced beyond; 1024 and farther share the last bucket (128 + 32).
    assert got[:6] == [0, 1, -1, 127, 128, -128]
    assert got[6:8] == [129, -129]
    assert got[10:] == [160, -160, 160, -160]
    assert 129 < got[8] < got[9] < 160  # 200 and 512 fall strictly between
    # log spacing: the bucket of d is 128 + ceil(32 * log(d/128) / log(8))
    assert got[8] == 128 + 7 and got[9] == 128 + 22


def test_bucket_1d_is_monotone_and_symmetric():
    rel = torch.arange(-3000, 3001)
    b = bucket_1d(rel, exact=256, max_distance=1024, log_buckets=32)
    assert torch.equal(b, -b.flip(0))
    assert bool((b[1:] >= b[:-1]).all())
    assert b.abs().max() == 256 + 32


def test_index_map_1d_cls_entries_and_distances():
    n, exact, logb = 5, 2, 2
    idx = index_map_1d(n, exact, 8, logb)
    num_dist = 2 * (exact + logb) + 1
    assert idx.shape == (n + 1, n + 1)
    assert (idx[0, 1:] == num_dist).all() and (idx[1:, 0] == num_dist + 1).all() and idx[0, 0] == num_dist + 2
    # token i at position i (1-based in the map), key j: bucket(j - i) + exact + logb
    assert idx[1, 1] == exact + logb  # distance 0
    assert idx[1, 2] == exact + logb + 1 and idx[2, 1] == exact + logb - 1
    assert idx.max() == table_size_1d(exact, logb) - 1


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
