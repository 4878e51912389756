"""Run directories and the weights in them: the one place that knows their layout.

A run (``onepeace-pretrain --run-dir RUN``) holds ``config.yaml`` (the fully resolved recipe) and
``checkpoints/stepNNNNNNNN/``; a checkpoint counts only once rank 0 has written its ``COMPLETE.json``
marker. An export (``onepeace-export``) holds consolidated weights, the model config and the tokenizer
(see ``OnePeace.save_pretrained``).

Training (resume, warm start, export) and evaluation both come here, so neither imports the other.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fnmatch
import json
import logging
import os
import re
import sys
from dataclasses import dataclass
from typing import Callable, Sequence, TypeVar

import torch

from .config import ConfigError, load_yaml
from .data.config import DataConfig
from .model import OnePeace
from . import zero3
from .model.hub import export_tokenizer, is_export, lazy_export_state, load_export_state
from .recipe import Recipe, build_recipe
from .safe_load import CheckpointFileError, weights_only_loading

T = TypeVar("T")

log = logging.getLogger(__name__)

RUN_CONFIG = "config.yaml"  # the resolved recipe of a run
CHECKPOINTS = "checkpoints"
COMPLETE = "COMPLETE.json"
TAG_RE = re.compile(r"^step(\d{8})$")
# The DeepSpeed module is the PretrainObjective, which holds the model as ``model``.
ENGINE_PREFIX = "model."
# Evaluation compiles nothing (text lengths vary per batch) and keeps no activations for a backward pass.
EVAL_RUNTIME = {"compile_encoder": False, "checkpoint_activations": False}


# -------------------------------------------------------------------------------------------------
# Checkpoint tags
# -------------------------------------------------------------------------------------------------

def tag_for(step: int) -> str:
    return f"step{step:08d}"


def complete_tags(ckpt_dir: str) -> list[tuple[int, str]]:
    """(step, tag) of complete checkpoints, oldest first."""
    if not os.path.isdir(ckpt_dir):
        return []
    out = []
    for name in os.listdir(ckpt_dir):
        m = TAG_RE.match(name)
        if m and os.path.isfile(os.path.join(ckpt_dir, name, COMPLETE)):
            out.append((int(m.group(1)), name))
    return sorted(out)


def step_dirs(ckpt_dir: str) -> list[str]:
    """Every ``stepNNNNNNNN`` directory, complete or not, oldest first."""
    if not os.path.isdir(ckpt_dir):
        return []
    return sorted(name for name in os.listdir(ckpt_dir)
                  if TAG_RE.match(name) and os.path.isdir(os.path.join(ckpt_dir, name)))


def checkpoint_files(path: str) -> dict[str, int]:
    """Every file of a checkpoint directory with its size: what its COMPLETE marker records."""
    return {name: os.path.getsize(os.path.join(path, name)) for name in sorted(os.listdir(path))
            if name != COMPLETE and os.path.isfile(os.path.join(path, name))}


def checkpoint_problem(path: str) -> str | None:
    """Why a complete checkpoint cannot be loaded as saved (a file missing or of another size than its
    marker records: a lost ZeRO shard of some rank, a truncated copy), or None. Only stats files."""
    try:
        with open(os.path.join(path, COMPLETE), encoding="utf-8") as f:
            recorded = json.load(f).get("files")
    except (OSError, ValueError, AttributeError) as exc:
        return f"{os.path.join(path, COMPLETE)} cannot be read ({exc})"
    if not isinstance(recorded, dict):
        return None  # a marker from before file lists: nothing to compare with
    for name, size in recorded.items():
        file = os.path.join(path, name)
        if not os.path.isfile(file):
            return f"{file} is missing"
        actual = os.path.getsize(file)
        if actual != size:
            return f"{file} is {actual} bytes, {size} when saved ({'truncated' if actual < size else 'changed'})"
    return None


def checkpoint_candidates(path: str) -> tuple[list[tuple[str, str]], bool]:
    """The checkpoints ``path`` stands for, newest first, and whether it named one explicitly.

    One checkpoint directory: just that one. A run or checkpoints directory: its complete checkpoints,
    newest first, so a loader can fall back when the newest is damaged."""
    ckpt_dir, tag = find_checkpoint(path)
    if TAG_RE.match(os.path.basename(os.path.abspath(path))):
        return [(ckpt_dir, tag)], True
    return [(ckpt_dir, t) for _, t in reversed(complete_tags(ckpt_dir))], False


def load_with_fallback(path: str, load: Callable[[str], T]) -> tuple[T, str]:
    """``load(checkpoint_dir)`` on the checkpoint ``path`` stands for; returns its result and the directory.

    A damaged checkpoint (see :func:`checkpoint_problem`, or a file that fails to load) named explicitly
    raises :class:`CheckpointFileError` naming the file. When ``path`` is a run, its newest complete
    checkpoint that is damaged is reported (a warning naming the file) and the previous one is tried.
    """
    candidates, explicit = checkpoint_candidates(path)
    for i, (ckpt_dir, tag) in enumerate(candidates):
        where = os.path.join(ckpt_dir, tag)
        try:
            problem = checkpoint_problem(where)
            if problem is not None:
                raise CheckpointFileError(where, f"damaged checkpoint: {problem}")
            return load(where), where
        except CheckpointFileError as exc:
            if explicit or i + 1 == len(candidates):
                raise
            log.warning("checkpoint %s cannot be loaded: %s; falling back to the previous complete checkpoint %s",
                        where, exc, candidates[i + 1][1])
    raise AssertionError("unreachable: find_checkpoint found at least one checkpoint")


def find_checkpoint(path: str) -> tuple[str, str]:
    """``(checkpoints dir, tag)`` from a run directory, a checkpoints directory or one checkpoint."""
    path = os.path.abspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no such run or checkpoint: {path}")
    if TAG_RE.match(os.path.basename(path)):
        if not os.path.isfile(os.path.join(path, COMPLETE)):
            raise ConfigError(f"checkpoint {path} is incomplete (no {COMPLETE}): its save was interrupted")
        return os.path.dirname(path), os.path.basename(path)
    for ckpt_dir in (os.path.join(path, CHECKPOINTS), path):
        tags = complete_tags(ckpt_dir)
        if tags:
            return ckpt_dir, tags[-1][1]
    raise ConfigError(f"{path} holds no complete checkpoint")


def run_dir_of(ckpt_dir: str) -> str:
    """The run directory that owns a checkpoints directory."""
    return os.path.dirname(ckpt_dir) if os.path.basename(ckpt_dir) == CHECKPOINTS else ckpt_dir


def run_recipe(ckpt_dir: str, source: str) -> tuple[Recipe, str]:
    """The recipe a run was trained with, and the file it came from."""
    run_dir = run_dir_of(ckpt_dir)
    config_file = os.path.join(run_dir, RUN_CONFIG)
    if not os.path.isfile(config_file):
        raise ConfigError(f"{run_dir} has no {RUN_CONFIG}: is {source} a run made by onepeace-pretrain?")
    return build_recipe(load_yaml(config_file), source=config_file), config_file


# -------------------------------------------------------------------------------------------------
# Weights
# -------------------------------------------------------------------------------------------------

def matches(name: str, patterns: Sequence[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def load_weights(path: str) -> dict[str, torch.Tensor]:
    """Full-precision weights from an exported model directory, a run, or a ZeRO checkpoint (a run's
    damaged newest checkpoint falls back to the previous one, see :func:`load_with_fallback`)."""
    if is_export(path):
        return load_export_state(path)
    return load_with_fallback(path, consolidate)[0]


def consolidate(checkpoint: str) -> dict[str, torch.Tensor]:
    """One checkpoint directory's ZeRO partitions as full fp32 weights, every file loaded weights-only."""
    ckpt_dir, tag = os.path.split(os.path.abspath(checkpoint))
    # DeepSpeed prints, and its logger writes to the stdout of when it is first imported: stdout is for results.
    with contextlib.redirect_stdout(sys.stderr), weights_only_loading():
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        try:
            state = get_fp32_state_dict_from_zero_checkpoint(ckpt_dir, tag=tag)
        except CheckpointFileError:
            raise
        except (ValueError, FileNotFoundError, KeyError) as exc:  # files missing or not what they should be
            raise CheckpointFileError(checkpoint, f"cannot be consolidated ({exc})") from None
    return {k[len(ENGINE_PREFIX):] if k.startswith(ENGINE_PREFIX) else k: v for k, v in state.items()}


def warm_start(model: OnePeace, path: str, exclude: Sequence[str] = (), reset: Sequence[str] = ()) -> dict:
    """Load ``path`` into ``model`` except parameters matching ``exclude``; re-initialise ``reset`` ones.

    Every model parameter must be either loaded or excluded, and shapes must agree: a silently half-loaded
    model would waste a whole run. An export is read one tensor at a time and copied one module at a
    time, so a model partitioned by ZeRO-3 is never whole on any rank (a ZeRO checkpoint as the source is
    still consolidated in memory first).
    """
    loaded = lazy_export_state(path) if is_export(path) else load_weights(path)
    names = [k for k in loaded if not matches(k, exclude)]
    shape = loaded.shape if hasattr(loaded, "shape") else (lambda k: tuple(loaded[k].shape))
    own = {k: tuple(zero3.full_shape(v)) for k, v in model.state_dict(keep_vars=True).items()}
    wrong_shape = [f"{k}: {shape(k)} in {path}, {own[k]} here" for k in names if k in own and shape(k) != own[k]]
    if wrong_shape:
        raise ConfigError("train.init_from: shapes differ: " + "; ".join(wrong_shape[:5]))
    missing = [k for k in own if k not in set(names) and not matches(k, exclude)]
    if missing:
        raise ConfigError(f"train.init_from: {path} lacks {len(missing)} parameters of this model (e.g. "
                          f"{', '.join(missing[:4])}); list them in train.init_exclude to keep their fresh values")
    unused = [k for k in names if k not in own]
    _copy_by_module(model, loaded, {k for k in names if k in own})
    to_reset = [n for n, _ in model.named_parameters() if matches(n, reset)]
    if reset and not to_reset:
        raise ConfigError(f"train.reset: {list(reset)} matches no parameter")
    model.reset_parameters(only=set(to_reset), gather=zero3.gathered)
    report = {"loaded": len(names) - len(unused), "excluded": sum(matches(k, exclude) for k in own),
              "unused": len(unused), "reset": len(to_reset)}
    log.info("warm start from %s: %s", path, report)
    return report


@torch.no_grad()
def _copy_by_module(model: OnePeace, state, wanted: set[str]) -> None:
    """Copy ``state[name]`` for the ``wanted`` names, one module at a time: under ZeRO-3 only that module
    is ever whole (gathered, rank 0's copy kept)."""
    for prefix, module in model.named_modules():
        prefix = f"{prefix}." if prefix else ""
        params = {prefix + n: p for n, p in module.named_parameters(recurse=False) if prefix + n in wanted}
        with zero3.gathered(params.values()):
            for name, p in params.items():
                p.copy_(state[name])
        for n, b in module.named_buffers(recurse=False):
            if prefix + n in wanted:
                b.copy_(state[prefix + n])


def freeze_all_but(model: OnePeace, trainable: Sequence[str]) -> tuple[int, int]:
    """``requires_grad`` only for parameters matching ``trainable`` (all when empty); (trainable, frozen)."""
    if not trainable:
        n = sum(zero3.full_numel(p) for p in model.parameters())
        return n, 0
    for name, p in model.named_parameters():
        p.requires_grad_(matches(name, trainable))
    train_n = sum(zero3.full_numel(p) for p in model.parameters() if p.requires_grad)
    if train_n == 0:
        raise ConfigError(f"train.trainable: {list(trainable)} matches no parameter")
    return train_n, sum(zero3.full_numel(p) for p in model.parameters() if not p.requires_grad)


# -------------------------------------------------------------------------------------------------
# One loader for every kind of source
# -------------------------------------------------------------------------------------------------

@dataclass
class LoadedModel:
    model: OnePeace
    tokenizer: str | None  # the tokenizer sidecar that goes with the weights, if known
    data: DataConfig | None  # the run's data settings (audio lengths, crop...); None for an export
    source: str  # what was loaded: the export directory or the checkpoint directory
    recipe_file: str | None = None  # the run's config.yaml; None for an export


def load_model(path: str, **runtime: object) -> LoadedModel:
    """A model from an exported model directory, a run directory, its ``checkpoints/`` or one checkpoint.

    ``runtime`` overrides fields that do not change parameters (``attention_backend``, ``compile_encoder``,
    ...). Weights must fit the config exactly; a mismatch names both files.
    """
    if not os.path.exists(path):
        raise FileNotFoundError(f"model {path} does not exist: pass an exported model directory (onepeace-export), "
                                "a run directory or a checkpoint directory")
    if is_export(path):
        try:
            model = OnePeace.from_pretrained(path, **runtime)
        except RuntimeError as exc:  # load_state_dict: missing, unexpected or wrongly shaped weights
            raise ConfigError(f"the weights in {path} do not fit its config: {exc}") from None
        return LoadedModel(model, export_tokenizer(path), None, os.path.abspath(path))
    ckpt_dir, _ = find_checkpoint(path)
    recipe, config_file = run_recipe(ckpt_dir, path)
    model = OnePeace(dataclasses.replace(recipe.model, **runtime))
    state, checkpoint = load_with_fallback(path, consolidate)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ConfigError(f"checkpoint {checkpoint} does not fit the model of {config_file}: {exc}") from None
    return LoadedModel(model, recipe.data.tokenizer or None, recipe.data, checkpoint, config_file)
