"""All ranks' rows on every rank, in one order that does not depend on ranks or workers, each sample once.

``all_gather_object`` of CPU tensors is plenty at evaluation scale (10k x 1k floats is 40 MB) and
works on gloo and NCCL alike. Rows are sorted by sample id: ranks and DataLoader workers interleave
batches in ways that vary with their counts, ids do not. Metrics do not depend on the order anyway
(ties are ranked pessimistically); the sort makes outputs comparable across launches.
"""

from __future__ import annotations

from collections import Counter

import torch

from .. import distributed
from .embeddings import Rows
from .errors import EvalError


def gather_rows(local: Rows) -> Rows:
    """Every rank's rows concatenated (rank 0's first) on every rank; collective when world size > 1."""
    world = distributed.world_size()
    if world == 1:
        return local
    parts: list = [None] * world
    torch.distributed.all_gather_object(parts, (local.ids, local.labels, local.emb, local.skipped, local.text_owner,
                                                local.captions))
    merged = Rows(skipped=sum(p[3] for p in parts))
    for ids, labels, _, _, text_owner, captions in parts:
        merged.ids.extend(ids)
        merged.labels.extend(labels)
        merged.text_owner.extend(text_owner)
        merged.captions.extend(captions)
    merged.emb = {m: torch.cat([p[2][m] for p in parts]) for m in local.emb}
    return merged


def in_dataset_order(rows: Rows, total_samples: int, set_name: str) -> Rows:
    """Rows sorted by id, after checking that the pass produced each of ``total_samples`` exactly once
    (samples the pipeline skipped as unreadable are accounted for, not silently dropped)."""
    counts = Counter(rows.ids)
    repeated = [(i, n) for i, n in counts.items() if n > 1]
    if repeated:
        listed = ", ".join(f"{i} ({n} times)" for i, n in repeated[:5])
        raise EvalError(f"evaluation set {set_name}: {len(repeated)} sample id(s) came back more than once: {listed}. "
                        "Either the ranks overlapped (a data splitting bug) or two sources of the set share ids "
                        "(give their manifests an id column with distinct ids)")
    if len(rows) + rows.skipped != total_samples:
        raise EvalError(f"evaluation set {set_name}: the ranks produced {len(rows)} samples and skipped "
                        f"{rows.skipped} unreadable ones, but index.json lists {total_samples}: samples were "
                        f"{'missed' if len(rows) + rows.skipped < total_samples else 'added'} (shards changed "
                        "since their index was written, or a sizes file trusted by onepeace-index-shards --trust-sizes "
                        "is wrong: index them again without --trust-sizes)")
    order = sorted(range(len(rows)), key=rows.ids.__getitem__)
    index = torch.tensor(order, dtype=torch.long)
    # Text rows (one per caption) follow their samples; a sample's captions keep their order.
    text_order = sorted(range(len(rows.text_owner)), key=rows.text_owner.__getitem__)
    text_index = torch.tensor(text_order, dtype=torch.long)
    return Rows(ids=[rows.ids[i] for i in order], labels=[rows.labels[i] for i in order],
                emb={m: e[text_index if m == "text" and rows.text_owner else index] for m, e in rows.emb.items()},
                skipped=rows.skipped, text_owner=[rows.text_owner[i] for i in text_order],
                captions=[rows.captions[i] for i in text_order] if rows.captions else [])
