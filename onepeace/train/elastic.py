"""Elastic resume: continue a run on another number of ranks, or with another ``train.grad_accum``.

Three things tie a checkpoint to the launch that wrote it, and each is handled here:

* **The optimizer state.** ZeRO partitions the fp32 master weights and Adam moments by data-parallel
  rank, and DeepSpeed's loader refuses a checkpoint of another world size. DeepSpeed's *universal
  checkpoint* (``deepspeed.checkpoint.ds_to_universal``) rewrites those partitions as one folder per
  parameter, which its ZeRO-1/2/3 optimizers load for any world size (``"checkpoint": {"load_universal":
  true}``). :func:`load_universal` converts a checkpoint once, into ``stepNNNNNNNN/universal/`` next to
  the files it came from (rank 0 converts, the others wait; the next resume reuses it), and loads it. The
  conversion and the load run inside :func:`~onepeace.safe_load.weights_only_loading`, like every other
  checkpoint load of this project. Parameters outside the optimizer (frozen by ``train.trainable``) are
  not in a universal checkpoint's optimizer groups: they are restored from the checkpoint's own weights.
  Under ZeRO-3 two slips of DeepSpeed's load are undone (see :func:`repair_zero3_optimizer`).
* **The global batch.** ``micro batch x grad_accum x ranks`` is recorded with each checkpoint.
  :func:`plan_batch` keeps it on another number of ranks by choosing ``grad_accum`` (2 ranks x 1 ->
  1 rank x 2), unless ``train.grad_accum`` itself was changed since (then the new value is used, and a
  different global batch is logged). The learning-rate schedule counts optimizer steps, so it continues
  from the checkpoint's step either way.
* **The data position.** Each rank's stream depends on the rank and the world size (shards are split by
  rank), so a position within the current data segment means nothing on another topology. The trainer
  then starts the next data segment (new seeds) instead: no sample of the interrupted segment is seen
  twice, and at most the rest of that one segment is skipped.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import glob
import io
import json
import logging
import os
import shutil
import time
from dataclasses import asdict, dataclass
from typing import Any

import torch

from .. import distributed as dist_utils
from ..config import ConfigError
from ..files import atomic_write
from ..runs import COMPLETE, ENGINE_PREFIX, consolidate
from ..safe_load import CheckpointFileError, weights_only_loading

log = logging.getLogger(__name__)

UNIVERSAL = "universal"  # inside a step directory: its universal conversion
UNIVERSAL_MARKER = "UNIVERSAL.json"  # written last: a conversion without it is incomplete
# Ranks wait this long for rank 0's conversion (a side group: the run's own timeout is for collectives).
CONVERSION_WAIT = datetime.timedelta(hours=12)


# -------------------------------------------------------------------------------------------------
# The global batch
# -------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class BatchPlan:
    """How a launch splits the global batch; recorded in each checkpoint's ``COMPLETE.json``."""

    world_size: int
    grad_accum: int  # what this launch runs with
    micro_batch: int  # samples per rank and micro-batch (all tasks)
    recipe_grad_accum: int  # train.grad_accum as the recipe gave it (tells a user's change from ours)

    @property
    def global_batch(self) -> int:
        return self.micro_batch * self.grad_accum * self.world_size

    def record(self) -> dict[str, int]:
        return asdict(self)


def saved_plan(marker: dict[str, Any]) -> BatchPlan | None:
    """The batch plan a checkpoint was saved with (None for a marker from before plans were recorded)."""
    batch = marker.get("batch")
    if not isinstance(batch, dict):
        return None
    try:
        return BatchPlan(**{k: int(batch[k]) for k in BatchPlan.__dataclass_fields__})
    except (KeyError, TypeError, ValueError):
        return None


def plan_batch(saved: BatchPlan | None, recipe_grad_accum: int, micro_batch: int,
               world_size: int) -> tuple[BatchPlan, str | None]:
    """This launch's batch plan, and a line for the log when it differs from the checkpoint's.

    On another number of ranks the saved global batch is kept by choosing ``grad_accum``, when it divides
    evenly. A ``train.grad_accum`` the user changed since the checkpoint (or a global batch that does not
    divide) is used as given, and the change of the global batch is said.
    """
    plan = BatchPlan(world_size, recipe_grad_accum, micro_batch, recipe_grad_accum)
    if saved is None:
        return plan, None
    user_changed = recipe_grad_accum != saved.recipe_grad_accum
    per_step = micro_batch * world_size
    if not user_changed and saved.global_batch % per_step == 0:
        plan = BatchPlan(world_size, saved.global_batch // per_step, micro_batch, recipe_grad_accum)
    if (saved.world_size, saved.grad_accum, saved.micro_batch) == (world_size, plan.grad_accum, micro_batch):
        return plan, None
    was = (f"{saved.world_size} rank(s) x grad_accum {saved.grad_accum} x micro batch {saved.micro_batch} = "
           f"global batch {saved.global_batch}")
    now = (f"{world_size} rank(s) x grad_accum {plan.grad_accum} x micro batch {micro_batch} = global batch "
           f"{plan.global_batch}")
    if plan.global_batch == saved.global_batch:
        how = ("grad_accum chosen to keep the global batch" if plan.grad_accum != recipe_grad_accum
               else "the global batch is kept")
        return plan, f"elastic resume: {was} -> {now} ({how})"
    why = ("train.grad_accum was changed" if user_changed else
           f"{saved.global_batch} is not a multiple of micro batch x ranks = {per_step}")
    return plan, (f"elastic resume: {was} -> {now}: the global batch changes ({why}); the learning-rate "
                  "schedule continues by optimizer step")


def read_marker(path: str) -> dict[str, Any]:
    with open(os.path.join(path, COMPLETE), encoding="utf-8") as f:
        return json.load(f)


def topology_changed(marker: dict[str, Any], plan: BatchPlan) -> bool:
    """Whether the per-rank data positions of a checkpoint no longer apply (ranks or grad_accum changed)."""
    saved = saved_plan(marker)
    if saved is None:
        return marker.get("world_size") not in (None, plan.world_size)
    return (saved.world_size, saved.grad_accum, saved.micro_batch) != (plan.world_size, plan.grad_accum,
                                                                       plan.micro_batch)


# -------------------------------------------------------------------------------------------------
# The optimizer state: DeepSpeed's universal checkpoint
# -------------------------------------------------------------------------------------------------

def partitioned_files(path: str) -> list[str]:
    """The files holding optimizer state partitioned by rank (ZeRO, DeepSpeed's bf16 optimizer)."""
    return sorted(glob.glob(os.path.join(path, "*optim_states.pt")))


def needs_universal(path: str, marker: dict[str, Any], world_size: int) -> bool:
    """A checkpoint whose optimizer state is partitioned over another number of ranks than now."""
    saved = marker.get("world_size")
    return saved is not None and saved != world_size and bool(partitioned_files(path))


def universal_dir(path: str) -> str:
    return os.path.join(path, UNIVERSAL)


def converted(path: str) -> dict[str, Any] | None:
    """The marker of a finished conversion of the checkpoint ``path``, or None."""
    try:
        with open(os.path.join(universal_dir(path), UNIVERSAL_MARKER), encoding="utf-8") as f:
            done = json.load(f)
    except (OSError, ValueError):
        return None
    return done if isinstance(done, dict) else None


def convert(path: str) -> dict[str, Any]:
    """Convert the checkpoint directory ``path`` into ``path/universal`` (atomically: a partial conversion
    is written under another name and renamed when whole). Returns the conversion's marker."""
    from deepspeed.checkpoint import ds_to_universal

    start = time.time()
    out, partial = universal_dir(path), universal_dir(path) + ".partial"
    for stale in (out, partial):  # an attempt that did not finish; DeepSpeed would read its files as input
        shutil.rmtree(stale, ignore_errors=True)
    # DeepSpeed's script: one process (its workers would not inherit the weights-only loading), and the
    # version key it wants in a checkpoint that names no tensor- or pipeline-parallel layout (ours).
    args = argparse.Namespace(input_folder=path, output_folder=partial, num_extract_workers=1, num_merge_workers=1,
                              keep_temp_folder=False, strict=True, inject_missing_state=True)
    chatter = io.StringIO()  # its prints and progress bars
    try:
        with weights_only_loading(), contextlib.redirect_stdout(chatter), contextlib.redirect_stderr(chatter):
            ds_to_universal.main(args)
    except CheckpointFileError:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    except (AssertionError, KeyError, ValueError, FileNotFoundError, RuntimeError, NotImplementedError) as exc:
        shutil.rmtree(partial, ignore_errors=True)
        raise CheckpointFileError(path, f"DeepSpeed's universal-checkpoint conversion failed ({type(exc).__name__}: "
                                        f"{exc}); {chatter.getvalue().strip()[-500:]}") from None
    with contextlib.suppress(FileNotFoundError):
        os.remove(os.path.join(path, "latest_universal"))  # the script points its parent folder at it
    done = {"source_world_size": read_marker(path).get("world_size"), "seconds": round(time.time() - start, 1),
            "converted_at": time.strftime("%Y-%m-%dT%H:%M:%S")}
    atomic_write(os.path.join(partial, UNIVERSAL_MARKER), json.dumps(done, indent=2))
    os.replace(partial, out)
    return done


def ensure_universal(path: str) -> str:
    """``path/universal``, converted by rank 0 unless an earlier resume did; every rank returns once it
    exists. A failed conversion raises on every rank."""
    error: BaseException | None = None
    if dist_utils.rank() == 0:
        done = converted(path)
        if done is not None:
            log.info("elastic resume: reusing the universal checkpoint %s (converted %s)", universal_dir(path),
                     done.get("converted_at"))
        else:
            log.info("elastic resume: converting %s (saved on %s rank(s)) to DeepSpeed's universal checkpoint "
                     "for %d rank(s), once", path, read_marker(path).get("world_size"), dist_utils.world_size())
            try:
                done = convert(path)
                log.info("elastic resume: converted in %.1fs; kept in %s for later resumes", done["seconds"],
                         universal_dir(path))
            except Exception as exc:  # every rank must learn of it, or the others would wait forever
                error = exc
    if _failed_anywhere(error is not None):
        if error is not None:
            raise error
        raise CheckpointFileError(path, "rank 0 could not convert it to a universal checkpoint (see its log)")
    return universal_dir(path)


def _failed_anywhere(failed: bool) -> bool:
    """Agree on an outcome after rank 0's conversion, which may outlast the run's collective timeout: the
    vote goes through a gloo group of its own with a long timeout."""
    if dist_utils.world_size() == 1:
        return failed
    group = torch.distributed.new_group(backend="gloo", timeout=CONVERSION_WAIT)
    try:
        flag = torch.tensor([1.0 if failed else 0.0])
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX, group=group)
        return bool(flag.item() > 0)
    finally:
        torch.distributed.destroy_process_group(group)


def load_universal(engine, path: str) -> dict[str, Any]:
    """Load the checkpoint directory ``path`` into ``engine`` through its universal conversion (made
    here if needed); returns the client state."""
    folder = ensure_universal(path)
    if not engine.zero_optimization():
        raise ConfigError(f"cannot resume {path} on {dist_utils.world_size()} rank(s): its optimizer state is "
                          f"partitioned over {read_marker(path).get('world_size')} ranks, and DeepSpeed loads a "
                          "universal checkpoint only into ZeRO stages 1-3 (this run has no ZeRO stage)")
    engine._config.load_universal_checkpoint = True  # what engine.load_universal_checkpoint() reads
    try:
        with weights_only_loading():
            loaded, client_state = engine.load_checkpoint(path, tag=os.path.basename(folder))
    finally:
        engine._config.load_universal_checkpoint = False
    if loaded is None:
        raise CheckpointFileError(folder, "DeepSpeed could not load this universal checkpoint (see its warning above)")
    if engine.zero_optimization_partition_weights():
        repair_zero3_optimizer(engine, folder)
    restore_frozen(engine, path)
    return client_state or {}


def repair_zero3_optimizer(engine, folder: str) -> None:
    """Undo two slips of DeepSpeed's ZeRO-3 universal load: it gives every parameter group the first
    group's settings (the group without weight decay would get the decay of the first), and one shared
    Adam step tensor to all sub-groups (each update would then count once per sub-group)."""
    with weights_only_loading():
        saved = torch.load(os.path.join(folder, "zero", "optimizer_state.pt"), map_location="cpu")["param_groups"]
    groups = engine.optimizer.optimizer.param_groups
    if len(saved) != len(groups):
        raise CheckpointFileError(folder, f"has {len(saved)} optimizer parameter groups, this run {len(groups)}")
    for group, own in zip(groups, saved):
        group.update({k: v for k, v in own.items() if k != "params"})
    state = engine.optimizer.optimizer.state
    for flat in engine.optimizer.fp32_partitioned_groups_flat:
        if torch.is_tensor(state.get(flat, {}).get("step")):
            state[flat]["step"] = state[flat]["step"].clone()


def restore_frozen(engine, path: str) -> None:
    """Copy the parameters no optimizer holds (frozen by ``train.trainable``) from the checkpoint: a
    universal load restores only the optimizer's parameters."""
    frozen = [(name, p) for name, p in engine.module.named_parameters() if not p.requires_grad]
    if not frozen:
        return
    import deepspeed

    state = saved_weights(path)
    missing = [name for name, _ in frozen if name not in state]
    if missing:
        raise CheckpointFileError(path, f"lacks {len(missing)} frozen parameters (e.g. {', '.join(missing[:3])})")
    params = [p for _, p in frozen]
    gather = (deepspeed.zero.GatheredParameters(params, modifier_rank=0)  # ZeRO-3: whole, then re-partitioned
              if any(hasattr(p, "ds_tensor") for p in params) else contextlib.nullcontext())
    with gather, torch.no_grad():
        for name, p in frozen:
            p.copy_(state[name].to(p.dtype))
    log.info("elastic resume: restored %d frozen parameters from %s", len(frozen), path)


def saved_weights(path: str) -> dict[str, torch.Tensor]:
    """Every parameter of a checkpoint, full and fp32, under the engine's names (``model.`` ...)."""
    return {ENGINE_PREFIX + k: v for k, v in consolidate(path).items()}
