"""Checkpoints through ``engine.save_checkpoint``, made safe to resume from.

A checkpoint is ``checkpoints/stepNNNNNNNN/``. Every rank writes its part (DeepSpeed's files and its
own RNG state); after a barrier rank 0 writes ``COMPLETE.json`` and only then moves ``latest`` (atomic
rename). A save interrupted at any point therefore has no marker and is never resumed from.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from typing import Any, NamedTuple

import torch

from ..config import ConfigError, ModelConfig, to_dict
from .. import distributed as dist_utils
from ..files import atomic_write
from ..runs import COMPLETE, checkpoint_files, checkpoint_problem, complete_tags, tag_for
from ..safe_load import CheckpointFileError, weights_only_loading

log = logging.getLogger(__name__)

# Tests only: seconds every rank sleeps inside each save, to stand for a large ZeRO-3 save.
TEST_SLOW_SAVE_ENV = "ONEPEACE_TEST_SLOW_SAVE_S"
# Fields that do not change parameters or their shapes: a resume may change them.
RUNTIME_FIELDS = {"attention_backend", "checkpoint_activations", "compile_encoder", "drop_path_rate", "dropout"}


def capture_rng() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def check_compatible(saved: dict[str, Any], current: ModelConfig, where: str) -> None:
    """A resume must rebuild the same parameters: compare every structural model field."""
    now = to_dict(current)
    diffs = [f"model.{k}: checkpoint {saved.get(k)!r}, now {now[k]!r}" for k in now
             if k not in RUNTIME_FIELDS and saved.get(k) != now[k]]
    if diffs:
        raise ConfigError(f"cannot resume from {where}: the model config differs ({'; '.join(diffs)}). Resume with "
                          "the recipe of that run, or start a new run directory")


def rank_state_file(path: str, rank: int) -> str:
    """This rank's own small state (its data stream position): DeepSpeed keeps one client state, rank 0's."""
    return os.path.join(path, f"state_rank{rank:05d}.json")


class CheckpointSaveError(RuntimeError):
    """A save that failed part-way (a full disk or quota, a write error, a rank lost during it). The
    message gives the free space, the usual suspect; a directory left without a COMPLETE marker is never
    resumed from."""

    def __init__(self, path: str, cause: BaseException):
        reason = " ".join(str(cause).split()) or type(cause).__name__
        try:
            free = f"{shutil.disk_usage(path).free / 2**20:,.0f} MiB free there now"
        except OSError:
            free = "free space unknown"
        after = ("it was marked complete before the failure" if os.path.isfile(os.path.join(path, COMPLETE)) else
                 "it has no COMPLETE marker, so --resume auto continues from the previous complete checkpoint")
        super().__init__(f"could not save checkpoint {path}: {reason} ({free}); {after}")


def save(engine, ckpt_dir: str, step: int, client_state: dict[str, Any], model_config: ModelConfig,
         keep_last: int, rank: int, rank_state: dict[str, Any] | None = None) -> str:
    """Save on every rank; a failure raises :class:`CheckpointSaveError` naming the checkpoint (torch's
    zip writer reports a failed write only as an "unexpected pos" mismatch, gloo a lost rank as a
    RuntimeError)."""
    try:
        return _save(engine, ckpt_dir, step, client_state, model_config, keep_last, rank, rank_state)
    except (OSError, RuntimeError) as exc:
        raise CheckpointSaveError(os.path.join(ckpt_dir, tag_for(step)), exc) from exc


def _save(engine, ckpt_dir: str, step: int, client_state: dict[str, Any], model_config: ModelConfig,
          keep_last: int, rank: int, rank_state: dict[str, Any] | None) -> str:
    tag = tag_for(step)
    path = os.path.join(ckpt_dir, tag)
    os.makedirs(ckpt_dir, exist_ok=True)
    start = time.time()
    if os.path.isdir(path):  # saving over an older save of this step (a run resumed from before it)
        if rank == 0 and os.path.exists(os.path.join(path, COMPLETE)):
            os.remove(os.path.join(path, COMPLETE))  # until the new save is whole, it is not complete
        dist_utils.barrier()
    engine.save_checkpoint(ckpt_dir, tag=tag, client_state=client_state, save_latest=False)
    torch.save(capture_rng(), os.path.join(path, f"rng_rank{rank:05d}.pt"))
    if rank_state is not None:
        atomic_write(rank_state_file(path, rank), json.dumps(rank_state))
    if os.environ.get(TEST_SLOW_SAVE_ENV):  # tests only: a save as slow as a large real one
        time.sleep(float(os.environ[TEST_SLOW_SAVE_ENV]))
    dist_utils.barrier()
    if rank == 0:
        marker = {"step": step, "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S"), "seconds": time.time() - start,
                  "model": to_dict(model_config), "world_size": dist_utils.world_size(),
                  "files": checkpoint_files(path)}  # what a damaged copy is checked against
        atomic_write(os.path.join(path, COMPLETE), json.dumps(marker, indent=2))
        atomic_write(os.path.join(ckpt_dir, "latest"), tag)
        _prune(ckpt_dir, keep_last)
        log.info("saved checkpoint %s in %.1fs", path, time.time() - start)
    dist_utils.barrier()
    return path


def load(engine, ckpt_dir: str, tag: str, model_config: ModelConfig, rank: int) -> dict[str, Any]:
    """Load a complete checkpoint into the engine; returns the client state, with this rank's own state
    (see :func:`rank_state_file`) under ``"rank_state"`` when the checkpoint has one."""
    path = os.path.join(ckpt_dir, tag)
    with open(os.path.join(path, COMPLETE), encoding="utf-8") as f:
        marker = json.load(f)
    check_compatible(marker["model"], model_config, path)
    if marker.get("world_size") not in (None, dist_utils.world_size()):
        log.warning("checkpoint %s was saved with %s ranks, resuming with %s: DeepSpeed reshapes the optimizer "
                    "state; the data order will differ from an uninterrupted run", path, marker["world_size"],
                    dist_utils.world_size())
    with weights_only_loading():  # DeepSpeed's own torch.load calls included
        loaded, client_state = engine.load_checkpoint(ckpt_dir, tag=tag)
    if loaded is None:
        raise CheckpointFileError(path, "DeepSpeed could not load this checkpoint (see its warning above)")
    rng_file = os.path.join(path, f"rng_rank{rank:05d}.pt")
    if os.path.isfile(rng_file):
        restore_rng(torch.load(rng_file, weights_only=True))
    client_state = dict(client_state or {})
    if os.path.isfile(rank_state_file(path, rank)):
        with open(rank_state_file(path, rank), encoding="utf-8") as f:
            client_state["rank_state"] = json.load(f)
    return client_state


class Resume(NamedTuple):
    """Where a run resumes: a checkpoint, and whether it was named explicitly (no fallback then)."""

    ckpt_dir: str
    tag: str
    explicit: bool = False

    def candidates(self) -> list[str]:
        """The tag to resume from, then (not explicit) the older complete ones to fall back to."""
        if self.explicit:
            return [self.tag]
        return [t for _, t in reversed(complete_tags(self.ckpt_dir)) if t <= self.tag]


def first_intact(ckpt_dir: str, candidates: list[str], device) -> str:
    """The first candidate every rank finds intact (files as its COMPLETE marker lists them); damaged
    ones are logged, naming the file. A damaged explicitly named checkpoint (one candidate) raises."""
    for i, tag in enumerate(candidates):
        path = os.path.join(ckpt_dir, tag)
        problem = checkpoint_problem(path)
        if not dist_utils.any_rank(problem is not None, device):
            return tag
        problem = problem or "a file is missing or truncated on another rank's view of the checkpoint"
        if i + 1 == len(candidates):
            raise CheckpointFileError(path, f"damaged checkpoint: {problem}"
                                      + ("; no older complete checkpoint to fall back to" if i else ""))
        log.warning("checkpoint %s is damaged: %s; falling back to the previous complete checkpoint %s", path,
                    problem, candidates[i + 1])
    raise AssertionError("no candidates")


def _prune(ckpt_dir: str, keep_last: int) -> None:
    """Keep the newest ``keep_last`` complete checkpoints and drop older complete ones.

    Only complete checkpoints are ever removed: the run that saves here either started in an empty
    checkpoints directory or resumed from it, so they are its own. A directory without a COMPLETE marker
    may be anything (a save in progress elsewhere, a copy being restored) and is left alone.
    """
    tags = complete_tags(ckpt_dir)
    doomed = [tag for _, tag in tags[:-keep_last]]
    for tag in doomed:
        # The marker goes first: a kill during the removal leaves a directory that is plainly incomplete.
        os.remove(os.path.join(ckpt_dir, tag, COMPLETE))
        shutil.rmtree(os.path.join(ckpt_dir, tag), ignore_errors=True)
        log.info("removed old checkpoint %s", tag)
