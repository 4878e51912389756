"""This rank's share of an evaluation pass, turned into embeddings (CPU, float32) with ids and labels.

With several ranks every rank runs the same number of forward passes: a rank that has run out of
batches encodes a one-sample filler while others still work, because under ZeRO-3 each forward
gathers parameters collectively and a rank that stopped early would leave the others waiting forever.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable

import torch

from ..distributed import any_rank, world_size


@dataclass
class Rows:
    """Samples in some order: ids, labels (None where a sample has none) and one embedding row per modality
    and sample, except text of pair sets, which has one row per caption: ``text_owner`` names the sample
    each text row belongs to and ``captions`` holds its normalised text (empty when unknown)."""

    ids: list[str] = field(default_factory=list)
    labels: list[str | None] = field(default_factory=list)
    emb: dict[str, torch.Tensor] = field(default_factory=dict)
    skipped: int = 0  # samples the data pipeline could not read
    text_owner: list[str] = field(default_factory=list)
    captions: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.ids)


def encode_batch(model, modality: str, batch: dict, device: torch.device) -> torch.Tensor:
    """Unmasked embeddings of one modality of a batch (the masks of the batch are for pretraining)."""
    if modality == "image":
        return model.encode_image(batch["images"].to(device, non_blocking=True))
    if modality == "audio":
        return model.encode_audio(batch["audio"].to(device, non_blocking=True),
                                  batch["audio_padding_mask"].to(device, non_blocking=True))
    if modality == "text" and "caption_tokens" in batch:  # every caption of an evaluation pair batch
        return model.encode_text(batch["caption_tokens"].to(device, non_blocking=True),
                                 batch["caption_padding_mask"].to(device, non_blocking=True))
    if modality == "text":
        return model.encode_text(batch["text_tokens"].to(device, non_blocking=True),
                                 batch["text_padding_mask"].to(device, non_blocking=True))
    raise ValueError(f"unknown modality {modality!r}")


def filler_batch(config, modalities: Iterable[str]) -> dict:
    """One neutral sample per modality; its embeddings are thrown away."""
    batch: dict = {"ids": []}
    for m in modalities:
        if m == "image":
            batch["images"] = torch.zeros(1, 3, config.image_size, config.image_size)
        elif m == "audio":
            batch["audio"] = torch.zeros(1, config.sample_rate)
            batch["audio_padding_mask"] = torch.zeros(1, config.sample_rate, dtype=torch.bool)
        elif m == "text":
            batch["text_tokens"] = torch.full((1, 1), (config.pad_id + 1) % config.vocab_size, dtype=torch.long)
            batch["text_padding_mask"] = torch.zeros(1, 1, dtype=torch.bool)
    return batch


def embed_batches(model, batches: Iterable[dict], modalities: tuple[str, ...], device: torch.device) -> Rows:
    """Embeddings of every batch of this rank (``skipped`` is left for the caller, who owns the stream)."""
    rows = Rows()
    parts: dict[str, list[torch.Tensor]] = {m: [] for m in modalities}
    lockstep = world_size() > 1
    it = iter(batches)
    done = False
    while True:
        batch = None if done else next(it, None)
        done = batch is None
        if lockstep and not any_rank(batch is not None, device):
            break
        if batch is None:
            if not lockstep:
                break
            filler = filler_batch(model.config, modalities)
            for m in modalities:
                encode_batch(model, m, filler, device)
            continue
        for m in modalities:
            parts[m].append(encode_batch(model, m, batch, device).float().cpu())
        rows.ids.extend(batch["ids"])
        rows.labels.extend(batch.get("labels") or [None] * len(batch["ids"]))
        if "text" in modalities:
            owner = batch["caption_owner"].tolist() if "caption_owner" in batch else range(len(batch["ids"]))
            rows.text_owner.extend(batch["ids"][i] for i in owner)
            rows.captions.extend(batch.get("captions") or [])
    dim = model.config.embed_dim
    rows.emb = {m: torch.cat(p) if p else torch.zeros(0, dim) for m, p in parts.items()}
    return rows
