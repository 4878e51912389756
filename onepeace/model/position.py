"""Relative position bias: 1D log-bucketed tables (text, audio), a 2D table (image), one index map.

The 1D buckets are the official ONE-PEACE ones (text bucket size 256: 514 rows; audio 512: 1026 rows).

Every token has a *global position*: its position inside its modality (0 is the modality's CLS) plus
an offset that stacks the modalities' position ranges ``[text | image | audio]``. One ``[P, P]`` index
map sends any pair of global positions to a row of the concatenated tables; pairs from different
modalities go to a final all-zero row. So the bias of any sequence, with dropped tokens or not, is
``table[index_map[pos_i, pos_j]]``: a gather the dense backends use once per forward and FlexAttention
uses inside its kernel.
"""

from __future__ import annotations

import math

import torch
from torch import nn
import torch.nn.functional as F

from ..config import MODALITIES, ModelConfig

# The three entries after each table's distance entries: CLS -> token, token -> CLS, CLS -> CLS.
NUM_SPECIAL = 3


def bucket_1d(rel: torch.Tensor, bucket_size: int, max_distance: int) -> torch.Tensor:
    """Signed bucket in ``[-(bucket_size - 1), bucket_size - 1]`` of a relative distance, as the official
    ONE-PEACE bucketing: with ``mid = bucket_size // 2``, distances up to ``mid`` are exact; beyond, bucket
    ``mid + ceil(log(d / mid) / log((max_distance - 1) / mid) * (mid - 1))``, so ``mid - 1`` log-spaced
    buckets per side reach ``max_distance - 1``. Farther distances share the last bucket (the official
    tables stop there). The log is taken in float32 like the official code, so every bucket matches it.

    The official index is query - key; this is used with key - query. The bucket of ``-d`` is minus the
    bucket of ``d``, so the two conventions differ by a reversal of the distance rows."""
    mid = bucket_size // 2
    dist = rel.abs()
    ratio = dist.clamp(min=mid).to(torch.float32) / mid
    far = mid + torch.ceil(torch.log(ratio) / math.log((max_distance - 1) / mid) * (mid - 1)).long()
    bucket = torch.where(dist <= mid, dist, far.clamp(max=bucket_size - 1))
    return bucket * rel.sign()


def table_size_1d(bucket_size: int) -> int:
    """``2 * bucket_size - 1`` signed distance buckets plus the 3 CLS entries (514 rows for 256)."""
    return 2 * bucket_size - 1 + NUM_SPECIAL


def table_size_2d(grid: int) -> int:
    return (2 * grid - 1) ** 2 + NUM_SPECIAL


def _with_cls(content: torch.Tensor, num_distances: int) -> torch.Tensor:
    """Pad a ``[n, n]`` content index map to ``[n+1, n+1]`` with the CLS entries in front."""
    n = content.shape[0]
    out = torch.empty(n + 1, n + 1, dtype=torch.long)
    out[1:, 1:] = content
    out[0, 1:] = num_distances  # CLS -> token
    out[1:, 0] = num_distances + 1  # token -> CLS
    out[0, 0] = num_distances + 2  # CLS -> CLS
    return out


def index_map_1d(num_tokens: int, bucket_size: int, max_distance: int) -> torch.Tensor:
    """``[n+1, n+1]`` table rows for a CLS and ``num_tokens`` tokens in a line (key - query buckets)."""
    pos = torch.arange(num_tokens)
    rel = pos[None, :] - pos[:, None]
    content = bucket_1d(rel, bucket_size, max_distance) + bucket_size - 1
    return _with_cls(content, 2 * bucket_size - 1)


def index_map_2d(grid: int) -> torch.Tensor:
    """``[g*g+1, g*g+1]`` table rows for a CLS and a ``grid x grid`` patch grid (BEiT style)."""
    rows, cols = torch.div(torch.arange(grid * grid), grid, rounding_mode="floor"), torch.arange(grid * grid) % grid
    dr = rows[None, :] - rows[:, None] + grid - 1
    dc = cols[None, :] - cols[:, None] + grid - 1
    return _with_cls(dr * (2 * grid - 1) + dc, (2 * grid - 1) ** 2)


def resize_table_2d(table: torch.Tensor, old_grid: int, new_grid: int) -> torch.Tensor:
    """Bicubic resampling of the ``(2g-1) x (2g-1)`` distance part of a 2D table; specials kept."""
    if old_grid == new_grid:
        return table
    lead = table.shape[:-2]
    heads = table.shape[-1]
    n_old = 2 * old_grid - 1
    dist = table[..., : n_old * n_old, :].reshape(-1, n_old, n_old, heads).permute(0, 3, 1, 2)
    n_new = 2 * new_grid - 1
    dist = F.interpolate(dist.float(), size=(n_new, n_new), mode="bicubic", align_corners=True).to(table.dtype)
    dist = dist.permute(0, 2, 3, 1).reshape(*lead, n_new * n_new, heads)
    return torch.cat([dist, table[..., n_old * n_old:, :]], dim=-2)


def resize_abs_positions(pos: torch.Tensor, new_grid: int) -> torch.Tensor:
    """Bicubic resampling of ``[1, 1 + g*g, D]`` absolute positions (CLS first) to another grid."""
    old_grid = math.isqrt(pos.shape[1] - 1)
    if old_grid == new_grid:
        return pos
    d = pos.shape[-1]
    body = pos[:, 1:].reshape(1, old_grid, old_grid, d).permute(0, 3, 1, 2).float()
    body = F.interpolate(body, size=(new_grid, new_grid), mode="bicubic", align_corners=False)
    body = body.permute(0, 2, 3, 1).reshape(1, new_grid * new_grid, d).to(pos.dtype)
    return torch.cat([pos[:, :1], body], dim=1)


def num_positions(config: ModelConfig) -> dict[str, int]:
    """Positions of each modality including its CLS (the length of its position range)."""
    return {
        "text": config.max_text_tokens + 1,
        "image": config.image_grid**2 + 1,
        "audio": config.max_audio_frames + 1,
    }


class RelativePositionBias(nn.Module):
    """Per-modality bias tables ``[entries, heads]``, shared by all layers or one per layer."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.modalities = [m for m in MODALITIES if m in config.modalities]
        self.num_layers = config.depth
        self.shared = True
        self.tables = nn.ParameterDict(
            {m: nn.Parameter(torch.zeros(self._table_size(m), config.num_heads)) for m in self.modalities}
        )
        self._build_index_map()
        if not config.share_rel_bias:
            self.unshare()

    def _table_size(self, modality: str) -> int:
        c = self.config
        if modality == "text":
            return table_size_1d(c.text_rel_buckets)
        if modality == "audio":
            return table_size_1d(c.audio_rel_buckets)
        return table_size_2d(c.image_grid)

    def _local_index_map(self, modality: str) -> torch.Tensor:
        c = self.config
        n = num_positions(c)[modality] - 1
        if modality == "text":
            return index_map_1d(n, c.text_rel_buckets, c.rel_max_distance)
        if modality == "audio":
            return index_map_1d(n, c.audio_rel_buckets, c.rel_max_distance)
        return index_map_2d(c.image_grid)

    def _build_index_map(self) -> None:
        with torch.device("cpu"):  # real values even when the model is built on the meta device
            self._build_index_map_cpu()

    def _build_index_map_cpu(self) -> None:
        sizes = num_positions(self.config)
        self.position_offset: dict[str, int] = {}
        total_pos = 0
        for m in MODALITIES:  # every modality gets a range, so positions do not depend on which are built
            self.position_offset[m] = total_pos
            total_pos += sizes[m]
        table_offset, total_rows = {}, 0
        for m in self.modalities:
            table_offset[m] = total_rows
            total_rows += self._table_size(m)
        index = torch.full((total_pos, total_pos), total_rows, dtype=torch.long, device="cpu")
        for m in self.modalities:
            start, end = self.position_offset[m], self.position_offset[m] + sizes[m]
            index[start:end, start:end] = self._local_index_map(m) + table_offset[m]
        self.register_buffer("index_map", index, persistent=False)

    def init_weights(self) -> None:
        for table in self.tables.values():
            nn.init.zeros_(table)

    def unshare(self) -> None:
        """Copy the shared tables into one table per layer (for fine-tuning); outputs do not change."""
        if not self.shared:
            return
        for m in self.modalities:
            t = self.tables[m].data
            self.tables[m] = nn.Parameter(t.unsqueeze(0).repeat(self.num_layers, 1, 1).contiguous())
        self.shared = False

    def resize_image_grid(self, new_grid: int) -> None:
        """Resample the image table for another grid; the config must already name the new size."""
        if "image" in self.tables:
            old = int(round((math.sqrt(self.tables["image"].shape[-2] - NUM_SPECIAL) + 1) / 2))
            self.tables["image"] = nn.Parameter(resize_table_2d(self.tables["image"].data, old, new_grid))
        device = self.index_map.device
        self._build_index_map()
        self.index_map = self.index_map.to(device)

    def table(self, layer: int | None = None) -> torch.Tensor:
        """``[rows + 1, heads]``: all modality tables of ``layer`` and the zero row for cross-modal pairs."""
        parts = [self.tables[m] if self.shared else self.tables[m][layer] for m in self.modalities]
        zero = parts[0].new_zeros(1, parts[0].shape[-1])
        return torch.cat(parts + [zero], dim=0)

    def global_positions(self, modality: str, local: torch.Tensor) -> torch.Tensor:
        return local + self.position_offset[modality]
