"""Where this process sits: rank and world size for splitting shards, and the DataLoader worker."""

from __future__ import annotations

import os

import torch


def rank_and_world_size() -> tuple[int, int]:
    """torch.distributed when it is initialised (the trainer sets it up), else RANK/WORLD_SIZE, else (0, 1).

    Called once in the main process when a loader is built; workers get the values it returned.
    """
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    if not 0 <= rank < world:
        raise ValueError(f"RANK={rank} is not in [0, WORLD_SIZE={world})")
    return rank, world


def worker_and_count() -> tuple[int, int]:
    """This DataLoader worker's id and the number of workers ((0, 1) in the main process)."""
    info = torch.utils.data.get_worker_info()
    return (0, 1) if info is None else (info.id, info.num_workers)
