"""Starting from another run's weights (stage 2 from stage 1), re-initialising some, freezing the rest."""

from __future__ import annotations

import fnmatch
import logging
import os
from typing import Sequence

import torch

from ..config import ConfigError
from ..model import OnePeace
from ..model.onepeace import WEIGHTS_FILE
from .checkpoint import find_checkpoint
from .zero3 import full_numel, full_shape, gathered

log = logging.getLogger(__name__)

# The DeepSpeed module is the PretrainObjective, which holds the model as ``model``.
ENGINE_PREFIX = "model."


def matches(name: str, patterns: Sequence[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def load_weights(path: str) -> dict[str, torch.Tensor]:
    """Full-precision weights from an exported model directory, a run, or a ZeRO checkpoint."""
    if os.path.isfile(os.path.join(path, WEIGHTS_FILE)):
        # mmap: tensors are read from the file when copied, one module at a time, and the page cache is
        # shared by the ranks of a node instead of every rank holding the whole model
        return torch.load(os.path.join(path, WEIGHTS_FILE), map_location="cpu", weights_only=True, mmap=True)
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    ckpt_dir, tag = find_checkpoint(path)
    state = get_fp32_state_dict_from_zero_checkpoint(ckpt_dir, tag=tag)
    return {k[len(ENGINE_PREFIX):] if k.startswith(ENGINE_PREFIX) else k: v for k, v in state.items()}


def warm_start(model: OnePeace, path: str, exclude: Sequence[str] = (), reset: Sequence[str] = ()) -> dict:
    """Load ``path`` into ``model`` except parameters matching ``exclude``; re-initialise ``reset`` ones.

    Every model parameter must be either loaded or excluded, and shapes must agree: a silently half-loaded
    model would waste a whole run.
    """
    state = {k: v for k, v in load_weights(path).items() if not matches(k, exclude)}
    own = {k: full_shape(v) for k, v in model.state_dict(keep_vars=True).items()}
    wrong_shape = [f"{k}: {tuple(v.shape)} in {path}, {tuple(own[k])} here"
                   for k, v in state.items() if k in own and v.shape != own[k]]
    if wrong_shape:
        raise ConfigError("train.init_from: shapes differ: " + "; ".join(wrong_shape[:5]))
    missing = [k for k in own if k not in state and not matches(k, exclude)]
    if missing:
        raise ConfigError(f"train.init_from: {path} lacks {len(missing)} parameters of this model (e.g. "
                          f"{', '.join(missing[:4])}); list them in train.init_exclude to keep their fresh values")
    unused = [k for k in state if k not in own]
    _copy_by_module(model, state)
    to_reset = [n for n, _ in model.named_parameters() if matches(n, reset)]
    if reset and not to_reset:
        raise ConfigError(f"train.reset: {list(reset)} matches no parameter")
    model.reset_parameters(only=set(to_reset), gather=gathered)
    report = {"loaded": len(state) - len(unused), "excluded": sum(matches(k, exclude) for k in own),
              "unused": len(unused), "reset": len(to_reset)}
    log.info("warm start from %s: %s", path, report)
    return report


@torch.no_grad()
def _copy_by_module(model: OnePeace, state: dict[str, torch.Tensor]) -> None:
    """Copy ``state`` into the model one module at a time: under ZeRO-3 only that module is ever whole."""
    for prefix, module in model.named_modules():
        prefix = f"{prefix}." if prefix else ""
        params = {prefix + n: p for n, p in module.named_parameters(recurse=False) if prefix + n in state}
        with gathered(params.values()):
            for name, p in params.items():
                p.copy_(state[name])
        for n, b in module.named_buffers(recurse=False):
            if prefix + n in state:
                b.copy_(state[prefix + n])


def freeze_all_but(model: OnePeace, trainable: Sequence[str]) -> tuple[int, int]:
    """``requires_grad`` only for parameters matching ``trainable`` (all when empty); (trainable, frozen)."""
    if not trainable:
        n = sum(full_numel(p) for p in model.parameters())
        return n, 0
    for name, p in model.named_parameters():
        p.requires_grad_(matches(name, trainable))
    train_n = sum(full_numel(p) for p in model.parameters() if p.requires_grad)
    if train_n == 0:
        raise ConfigError(f"train.trainable: {list(trainable)} matches no parameter")
    return train_n, sum(full_numel(p) for p in model.parameters() if not p.requires_grad)
