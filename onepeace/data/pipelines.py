"""One task's stream inside one DataLoader worker: shards -> samples -> transformed samples -> batches.

Training reads an endless weighted resampling of shards, so no rank ever runs dry or waits for
another at an epoch end. Evaluation reads every shard once, in order; each rank keeps the samples
whose position in the dataset equals its rank modulo the world size, so ranks together see each
sample exactly once and their counts differ by at most one.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Iterable, Iterator

import numpy as np
import webdataset as wds

from onepeace.config import ConfigError
from onepeace.data.batching import CollateSpec, collate
from onepeace.data.config import DataConfig, TaskConfig
from onepeace.data.decode import BadSample, SkipCounter, decode_sample
from onepeace.data.formats import KIND_MODALITIES, shard_kinds_for_task
from onepeace.data.layout import Layout
from onepeace.data.masking import image_mask_counts
from onepeace.data.shards import Shard, ShardSet, ShardSpecError, resolve_shards
from onepeace.data.tokenizer import Tokenizer, normalize_caption
from onepeace.geometry import AUDIO_RECEPTIVE_FIELD
from onepeace.data.transforms import AudioTransform, ImageTransform, max_audio_samples

SKIPPED = "_skipped"  # batch key carrying the worker's newly skipped samples to the main process
POSITION = "_position"  # batch key: raw samples this stream had taken when the batch was complete
WORKER = "_worker"  # batch key: the (logical) worker whose stream made the batch


@dataclass(frozen=True)
class Placement:
    """Where a stream runs: rank among ranks, DataLoader worker among workers."""

    rank: int = 0
    world_size: int = 1
    worker: int = 0
    num_workers: int = 1

    @property
    def slot(self) -> int:
        return self.rank * self.num_workers + self.worker

    @property
    def slots(self) -> int:
        return self.world_size * self.num_workers


def resolve_task_sources(name: str, task: TaskConfig) -> list[ShardSet]:
    sets = []
    for i, source in enumerate(task.sources):
        found = resolve_shards(source.shards)
        if found.kind not in shard_kinds_for_task(task.kind):
            raise ShardSpecError(f"task {name} ({task.kind}): source {i} ({source.shards}) holds {found.kind} shards; "
                                 f"this task reads {' or '.join(shard_kinds_for_task(task.kind))}")
        if found.total == 0:
            raise ShardSpecError(f"task {name}: source {i} ({source.shards}) has no samples")
        sets.append(found)
    return sets


def caption_choice(num_captions: int, key: str, seed: int, epoch: int) -> int:
    """Which of a sample's captions training uses in this epoch (data segment): a pure function of the
    sample key, the seed and the epoch, so a resumed run draws the same captions as an unbroken one."""
    if num_captions == 1:
        return 0
    digest = hashlib.blake2b(f"{seed}/{epoch}/{key}".encode("utf-8", "surrogateescape"), digest_size=8).digest()
    return int.from_bytes(digest, "little") % num_captions


def shuffled(items: Iterable, size: int, rng: np.random.Generator) -> Iterator:
    """A shuffle buffer: once full, each new item takes the place of a random one that goes out."""
    buf: list = []
    for item in items:
        if len(buf) < size:
            buf.append(item)
            continue
        i = int(rng.integers(size))
        yield buf[i]
        buf[i] = item
    rng.shuffle(buf)
    yield from buf


class TaskPipeline:
    """Decoding, transforms and collation of one task; picklable, so it travels to DataLoader workers."""

    def __init__(self, name: str, task: TaskConfig, *, data: DataConfig, model, tokenizer: Tokenizer | None,
                 train: bool):
        self.name, self.kind, self.batch_size, self.train = name, task.kind, task.batch_size, train
        self.sources = resolve_task_sources(name, task)
        self.weights = np.array([s.weight for s in task.sources], dtype=np.float64)
        self.shuffle_buffer = data.shuffle_buffer
        self.sample_rate = model.sample_rate
        self.tokenizer = tokenizer
        if "text" in self.kind and tokenizer is None:
            raise ValueError(f"task {name} ({self.kind}) needs a tokenizer (data.tokenizer)")
        self.max_text_tokens = model.max_text_tokens - 1  # the model's limit counts EOS
        self.image = ImageTransform(model.image_size, train, data.image_crop_scale)
        # A training crop keeps at least sqrt(min area * 3/4) of the shorter side (aspect ratio <= 4/3):
        # big JPEGs are decoded only as large as still gives that crop image_size pixels.
        crop_side = math.sqrt(data.image_crop_scale[0] * 3 / 4) if train else 1.0
        self.image_min_side = math.ceil(model.image_size / crop_side)
        self.audio = AudioTransform(max_audio_samples(model.sample_rate, data.max_audio_seconds, model.max_audio_frames),
                                    int(data.min_audio_seconds * model.sample_rate), train)
        if "audio" in self.kind and self.audio.min_samples < AUDIO_RECEPTIVE_FIELD:
            # checked here, once, so the model need not read every batch's lengths on the device
            raise ValueError(f"task {name}: data.min_audio_seconds gives {self.audio.min_samples} samples, fewer than "
                             f"the audio conv stack's receptive field ({AUDIO_RECEPTIVE_FIELD} samples)")
        word_start = tokenizer.word_start if tokenizer is not None else np.zeros(1, dtype=bool)
        self.spec = CollateSpec(kind=self.kind, pad_id=model.pad_id, word_start=word_start,
                                num_patches=model.image_grid ** 2, masks=data.masks,
                                all_captions=not train and "-" in self.kind)
        if self.kind == "image-text":  # refuse at start-up a ratio pair this grid cannot honour
            try:
                image_mask_counts(self.spec.num_patches, data.masks.image, data.masks.pair_image)
            except ValueError as exc:
                raise ConfigError(f"task {name}: {exc}") from None
        self.modalities = KIND_MODALITIES[self.kind]
        self.layouts: dict[str, Layout] = {s.url: s.layout for found in self.sources for s in found.shards}
        self.wanted = frozenset().union(*(layout.members(self.modalities) for layout in set(self.layouts.values())))

    @property
    def total_samples(self) -> int:
        return sum(s.total for s in self.sources)

    # -- shards ------------------------------------------------------------------------------------

    def train_urls(self, place: Placement, rng: np.random.Generator) -> Iterator[dict]:
        """Endless draws: a source by weight, then a shard by its sample count. A source with enough
        shards is split so each (rank, worker) draws from its own disjoint part."""
        parts: list[tuple[tuple[Shard, ...], np.ndarray]] = []
        for found in self.sources:
            shards = found.shards[place.slot::place.slots] if len(found.shards) >= place.slots else found.shards
            sizes = np.array([s.samples for s in shards], dtype=np.float64)
            parts.append((shards, sizes / sizes.sum() if sizes.sum() > 0 else np.full(len(shards), 1 / len(shards))))
        source_p = self.weights / self.weights.sum()
        while True:
            shards, p = parts[int(rng.choice(len(parts), p=source_p))]
            yield {"url": shards[int(rng.choice(len(shards), p=p))].url}

    def eval_shards(self) -> list[tuple[Shard, int]]:
        """All shards in order with the dataset position of their first sample."""
        out, offset = [], 0
        for found in self.sources:
            for shard in found.shards:
                out.append((shard, offset))
                offset += shard.samples
        return out

    def _raw_samples(self, urls: Iterable[dict], skip: SkipCounter) -> Iterator[dict]:
        select = lambda fname: fname.rpartition(".")[2].lower() in self.wanted  # noqa: E731
        return wds.tarfile_samples(urls, handler=skip, select_files=select)

    # -- samples and batches -----------------------------------------------------------------------

    def process(self, raw: dict, rng: np.random.Generator, seed_epoch: tuple[int, int] = (0, 0)) -> dict:
        """Decode and transform one raw sample; raises on anything wrong with it. Training encodes one
        caption of several (:func:`caption_choice`); evaluation encodes them all (``caption_tokens``)."""
        layout = self.layouts.get(raw.get("__url__"), Layout())
        d = decode_sample(raw, self.kind, self.sample_rate, self.image_min_side, layout)
        out = {"id": d["id"], "label": d["label"]}
        if "image" in self.modalities:
            out["image"] = self.image(d["image"], rng)
        if "audio" in self.modalities:
            out["audio"] = self.audio(d["audio"], rng)
        if "text" in self.modalities:
            captions = d["captions"]
            if self.spec.all_captions:
                out["caption_tokens"] = [self.tokenizer.encode(c, self.max_text_tokens) for c in captions]
                out["captions"] = [normalize_caption(c, self.tokenizer.lowercase) for c in captions]
                out["tokens"] = out["caption_tokens"][0]
            else:
                pick = caption_choice(len(captions), raw.get("__key__", ""), *seed_epoch) if self.train else 0
                out["tokens"] = self.tokenizer.encode(captions[pick], self.max_text_tokens)
        return out

    def _batches(self, raw: Iterable[dict], skip: SkipCounter, entropy: list[int], partial: bool,
                 start: int = 0, seed_epoch: tuple[int, int] = (0, 0)) -> Iterator[dict]:
        """Batches from ``raw`` (whose first ``start`` samples were already consumed). Raw sample ``i``
        is transformed with its own generator seeded by ``entropy + [i]``, and the batch completed at raw
        sample ``i`` is masked with ``entropy + [i, 1]``: a stream resumed at a raw position makes the
        same batches as one that never stopped, without decoding what it skipped."""
        batch: list[dict] = []
        reported = 0
        position = start
        for position, sample in enumerate(raw, start + 1):
            try:
                batch.append(self.process(sample, np.random.default_rng([*entropy, position - 1]), seed_epoch))
            except Exception as exc:  # a bad sample must never stop training: count it and go on
                skip(exc if isinstance(exc, BadSample) else BadSample(f"{type(exc).__name__}: {exc}"),
                     sample.get("__key__"), sample.get("__url__"))
                continue
            skip.ok()
            if len(batch) == self.batch_size:
                out = collate(batch, self.spec, np.random.default_rng([*entropy, position - 1, 1]))
                out[SKIPPED], reported = skip.count - reported, skip.count
                out[POSITION] = position
                yield out
                batch = []
        if batch and partial:
            out = collate(batch, self.spec, np.random.default_rng([*entropy, position, 1]))
            out[SKIPPED] = skip.count - reported
            out[POSITION] = position
            yield out

    def train_batches(self, place: Placement, seed: int, epoch: int, task_index: int,
                      start: int = 0) -> Iterator[dict]:
        """Endless full batches, seeded by (seed, epoch, rank, worker, task). ``start``: raw samples of
        this stream to pass over first (a resume): they are read from the shards and shuffled as
        before, but never decoded."""
        entropy = [seed, epoch, place.rank, place.worker, task_index]
        urls_rng, shuffle_rng = (np.random.default_rng(s) for s in np.random.SeedSequence(entropy).spawn(2))
        skip = SkipCounter(f"{self.name} (rank {place.rank}, worker {place.worker})")
        raw = shuffled(self._raw_samples(self.train_urls(place, urls_rng), skip), self.shuffle_buffer, shuffle_rng)
        for _ in range(start):
            next(raw)
        return self._batches(raw, skip, entropy, partial=False, start=start, seed_epoch=(seed, epoch))

    def eval_batches(self, place: Placement, seed: int) -> Iterator[dict]:
        """This (rank, worker)'s share of one ordered pass; the last batch may be short."""
        mine = [(s, off) for i, (s, off) in enumerate(self.eval_shards()) if i % place.num_workers == place.worker]
        offsets = {s.url: off for s, off in mine}
        skip = SkipCounter(f"{self.name} eval (rank {place.rank}, worker {place.worker})")

        def positioned() -> Iterator[dict]:
            url, pos = None, 0
            for raw in self._raw_samples(({"url": s.url} for s, _ in mine), skip):
                if raw["__url__"] != url:
                    url, pos = raw["__url__"], offsets[raw["__url__"]]
                else:
                    pos += 1
                if pos % place.world_size == place.rank:
                    yield raw

        return self._batches(positioned(), skip, [seed, place.rank, place.worker], partial=True)
