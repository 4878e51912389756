"""An ordered, bounded parallel map: results come back in input order so builds stay reproducible.

``multiprocessing.Pool.imap`` would read the whole input ahead of the workers; here only a few
blocks are in flight, so a manifest of millions of rows never sits in memory at once.
"""

from __future__ import annotations

import multiprocessing as mp
import signal
from collections import deque
from itertools import islice
from typing import Callable, Iterable, Iterator, TypeVar

T = TypeVar("T")
R = TypeVar("R")


def ordered_map(fn: Callable[[T], R], items: Iterable[T], *, workers: int,
                initializer: Callable[..., None] | None = None, initargs: tuple = (),
                chunksize: int = 8, blocks_ahead: int = 3) -> Iterator[tuple[T, R]]:
    """Yield ``(item, fn(item))`` in input order, computing ``fn`` in ``workers`` processes."""
    if workers <= 1:
        if initializer is not None:
            initializer(*initargs)
        for item in items:
            yield item, fn(item)
        return
    it = iter(items)
    block_size = chunksize * workers * 2
    with mp.get_context("fork").Pool(workers, _worker_start, (initializer, initargs)) as pool:
        pending: deque = deque()

        def submit() -> None:
            block = list(islice(it, block_size))
            if block:
                pending.append((block, pool.map_async(fn, block, chunksize=chunksize)))

        for _ in range(blocks_ahead):
            submit()
        while pending:
            block, result = pending.popleft()
            submit()
            yield from zip(block, result.get())


def _worker_start(initializer: Callable[..., None] | None, initargs: tuple) -> None:
    """A forked worker starts with the default SIGTERM and SIGUSR1 actions. It would otherwise inherit the
    handlers of a parent that runs the trainer in the same process, which only note the signal: then the
    pool's terminate() (SIGTERM) never ends the worker and the build hangs at its end."""
    for sig in (signal.SIGTERM, signal.SIGUSR1):
        signal.signal(sig, signal.SIG_DFL)
    if initializer is not None:
        initializer(*initargs)

