"""What the trainer calls: a training loader of mixed steps and finite evaluation loaders.

A training step is ``{task_name: batch}`` with every task of ``data.train`` at its own batch size.
Each DataLoader worker builds whole steps from its own stream of every task, so one set of workers
serves the whole mixture.
"""

from __future__ import annotations

import atexit
import os
import signal
import weakref
from dataclasses import dataclass, field
from typing import Iterator

import torch
from torch.utils.data import DataLoader, IterableDataset

from onepeace.data.config import DataConfig
from onepeace.data.pipelines import POSITION, SKIPPED, WORKER, Placement, TaskPipeline, resolve_task_sources
from onepeace.data.shards import ShardSpecError
from onepeace.data.tokenizer import Tokenizer
from onepeace.distributed import rank_and_world_size


def worker_and_count() -> tuple[int, int]:
    """This DataLoader worker's id and the number of workers ((0, 1) in the main process)."""
    info = torch.utils.data.get_worker_info()
    return (0, 1) if info is None else (info.id, info.num_workers)


class _TrainSteps(IterableDataset):
    def __init__(self, pipelines: dict[str, TaskPipeline], seed: int, rank: int, world_size: int):
        self.pipelines, self.seed, self.rank, self.world_size = pipelines, seed, rank, world_size
        self.epoch = 0
        self.resume: StreamPosition | None = None

    def __iter__(self) -> Iterator[dict]:
        worker, workers = worker_and_count()
        # A resumed stream rotates the workers so that the first batch comes from the worker whose turn
        # it was (the DataLoader asks its workers in turn), and each worker passes over its raw samples.
        offset = self.resume.micro_batches % workers if self.resume else 0
        logical = (worker + offset) % workers
        starts = self.resume.raw.get(logical, {}) if self.resume else {}
        place = Placement(self.rank, self.world_size, logical, workers)
        streams = {name: p.train_batches(place, self.seed, self.epoch, i, start=starts.get(name, 0))
                   for i, (name, p) in enumerate(self.pipelines.items())}
        while True:
            step = {name: next(stream) for name, stream in streams.items()}
            for batch in step.values():
                batch[WORKER] = logical
            yield step


@dataclass
class StreamPosition:
    """Where a training stream stands within one epoch (a data segment): the micro-batches taken, and for
    each worker and task the raw samples its stream had read. Small, JSON-friendly, saved in checkpoints."""

    epoch: int
    workers: int
    micro_batches: int = 0
    raw: dict[int, dict[str, int]] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"epoch": self.epoch, "workers": self.workers, "micro_batches": self.micro_batches,
                "raw": {str(w): dict(t) for w, t in self.raw.items()}}

    @classmethod
    def from_dict(cls, d: dict) -> "StreamPosition":
        return cls(int(d["epoch"]), int(d["workers"]), int(d["micro_batches"]),
                   {int(w): {k: int(v) for k, v in t.items()} for w, t in d["raw"].items()})


class _EvalBatches(IterableDataset):
    def __init__(self, pipeline: TaskPipeline, seed: int, rank: int, world_size: int):
        self.pipeline, self.seed, self.rank, self.world_size = pipeline, seed, rank, world_size

    def __iter__(self) -> Iterator[dict]:
        worker, workers = worker_and_count()
        yield from self.pipeline.eval_batches(Placement(self.rank, self.world_size, worker, workers), self.seed)


# Seconds a worker keeps serving after SIGTERM: enough for the trainer to finish its step and save.
TERM_GRACE_S = 120


def _term_with_grace(signum, frame) -> None:  # noqa: ARG001
    signal.alarm(TERM_GRACE_S)  # SIGALRM's default action ends the worker then, if nobody stopped it


def _defer_stop_signals(worker_id: int) -> None:  # noqa: ARG001
    """A SIGTERM to the whole process group (scancel, a time limit) also reaches the workers: they keep
    serving for a grace period so the trainer can finish the step and checkpoint, then stops them the
    polite way. SIGUSR1 is the trainer's alone. A plain terminate still ends a worker, only later."""
    signal.signal(signal.SIGTERM, _term_with_grace)
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)


_LIVE_ITERATORS: "weakref.WeakSet" = weakref.WeakSet()


@atexit.register
def _stop_live_workers() -> None:
    """Stop DataLoader workers the polite way before multiprocessing's own exit hook runs (atexit runs
    hooks last-registered first), which would SIGTERM and then join them: an endless training stream
    still open at exit, with workers that wait out their SIGTERM grace period, would delay the exit."""
    for iterator in list(_LIVE_ITERATORS):
        iterator._shutdown_workers()


class DataStream:
    """An iterable over training steps or evaluation batches that also counts skipped bad samples.

    ``bad_samples``: samples skipped (undecodable, unreadable) so far on this rank, for logging.
    """

    def __init__(self, dataset: IterableDataset, data: DataConfig, *, rank: int, world_size: int,
                 pin_memory: bool = False):
        self.dataset, self.rank, self.world_size = dataset, rank, world_size
        self.bad_samples = 0
        workers = data.num_workers
        self._workers = max(workers, 1)
        self._position = StreamPosition(0, self._workers)
        self.loader = DataLoader(dataset, batch_size=None, num_workers=workers,
                                 prefetch_factor=data.prefetch_factor if workers > 0 else None,
                                 persistent_workers=False, pin_memory=pin_memory,
                                 worker_init_fn=_defer_stop_signals if workers > 0 else None)

    def set_epoch(self, epoch: int, resume: StreamPosition | None = None) -> None:
        """New random streams from the next ``iter()`` on (training): seeds use (seed, epoch, rank, worker).
        ``resume``: a :meth:`position` of this epoch; the stream continues from there without decoding
        the samples before it."""
        if resume is not None and (resume.epoch != epoch or resume.workers != self._workers):
            raise ValueError(f"cannot resume epoch {epoch} with {self._workers} workers from a position in epoch "
                             f"{resume.epoch} with {resume.workers} workers")
        self.dataset.epoch = epoch
        self.dataset.resume = resume
        self._position = StreamPosition(epoch, self._workers, resume.micro_batches if resume else 0,
                                        {w: dict(t) for w, t in resume.raw.items()} if resume else {})

    def position(self) -> StreamPosition:
        """Where the training stream stands: what :meth:`set_epoch` needs to continue exactly from here."""
        return StreamPosition.from_dict(self._position.to_dict())

    def _count(self, batch: dict, name: str | None = None) -> dict:
        self.bad_samples += int(batch.pop(SKIPPED, 0))
        position, worker = batch.pop(POSITION, None), batch.pop(WORKER, None)
        if worker is not None:
            self._position.raw.setdefault(worker, {})[name] = position
        return batch

    def close(self) -> None:
        """Stop this stream's worker processes now (they also stop at exit or when the stream is dropped)."""
        for iterator in list(_LIVE_ITERATORS):
            if getattr(iterator, "_owner", None) is self:
                iterator._shutdown_workers()
                _LIVE_ITERATORS.discard(iterator)

    def __iter__(self) -> Iterator[dict]:
        iterator = iter(self.loader)
        if hasattr(iterator, "_shutdown_workers"):  # worker processes: make sure they stop at exit
            iterator._owner = self
            _LIVE_ITERATORS.add(iterator)
        for item in iterator:
            if SKIPPED in item:
                item.pop(POSITION, None)
                yield self._count(item)
            else:
                step = {name: self._count(batch, name) for name, batch in item.items()}
                self._position.micro_batches += 1
                yield step


class EvalStream(DataStream):
    """One finite ordered pass over an evaluation set; ranks together see each sample exactly once."""

    def __init__(self, pipeline: TaskPipeline, data: DataConfig, *, rank: int, world_size: int,
                 pin_memory: bool = False):
        super().__init__(_EvalBatches(pipeline, data.seed, rank, world_size), data, rank=rank, world_size=world_size,
                         pin_memory=pin_memory)
        self.total_samples = pipeline.total_samples
        # Positions p with p % world_size == rank, according to index.json.
        self.num_samples = len(range(rank, self.total_samples, world_size))


def _tokenizer(data: DataConfig, tokenizer: Tokenizer | None, model) -> Tokenizer | None:
    if tokenizer is None and data.tokenizer:
        tokenizer = Tokenizer(data.tokenizer)
    if tokenizer is not None:
        if tokenizer.vocab_size > model.vocab_size:
            raise ValueError(f"tokenizer {tokenizer.sidecar} has {tokenizer.vocab_size} pieces but model.vocab_size "
                             f"is {model.vocab_size}; raise model.vocab_size or train a smaller tokenizer")
        if tokenizer.pad_id != model.pad_id:
            raise ValueError(f"tokenizer pad_id {tokenizer.pad_id} != model.pad_id {model.pad_id}")
    return tokenizer


def check_data(data: DataConfig, model) -> None:
    """What the loaders would refuse, checked before any process group or worker starts: the tokenizer,
    and every train and eval task's shards (index.json, kinds, and each tar file on disk)."""
    _tokenizer(data, None, model)
    for section in (data.train, data.eval):
        for name, task in section.items():
            for found in resolve_task_sources(name, task):
                for shard in found.shards:
                    if not os.path.isfile(shard.url):
                        raise ShardSpecError(f"task {name}: shard {shard.url} is listed in its index.json but "
                                             "missing on disk")


def _placement(rank: int | None, world_size: int | None) -> tuple[int, int]:
    if rank is None or world_size is None:
        return rank_and_world_size()
    return rank, world_size


def build_train_loader(data: DataConfig, model, tokenizer: Tokenizer | None = None, *, epoch: int = 0,
                       rank: int | None = None, world_size: int | None = None,
                       pin_memory: bool = False) -> DataStream:
    """Endless ``{task_name: batch}`` steps over ``data.train`` (``model``: a ModelConfig). ``rank`` and
    ``world_size`` default to :func:`rank_and_world_size`; ``pin_memory`` for fast copies to a GPU."""
    if not data.train:
        raise ValueError("data.train names no tasks")
    rank, world_size = _placement(rank, world_size)
    tokenizer = _tokenizer(data, tokenizer, model)
    pipelines = {name: TaskPipeline(name, task, data=data, model=model, tokenizer=tokenizer, train=True)
                 for name, task in data.train.items()}
    stream = DataStream(_TrainSteps(pipelines, data.seed, rank, world_size), data, rank=rank, world_size=world_size,
                        pin_memory=pin_memory)
    stream.set_epoch(epoch)
    return stream


def build_eval_loader(name: str, data: DataConfig, model, tokenizer: Tokenizer | None = None, *,
                      rank: int | None = None, world_size: int | None = None, pin_memory: bool = False) -> EvalStream:
    """Batches of ``data.eval[name]`` in one ordered pass (the last batch may be short)."""
    if name not in data.eval:
        raise KeyError(f"no evaluation set {name!r} in data.eval (have: {', '.join(data.eval) or 'none'})")
    rank, world_size = _placement(rank, world_size)
    pipeline = TaskPipeline(name, data.eval[name], data=data, model=model,
                            tokenizer=_tokenizer(data, tokenizer, model), train=False)
    return EvalStream(pipeline, data, rank=rank, world_size=world_size, pin_memory=pin_memory)

