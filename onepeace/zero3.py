"""ZeRO-3: build the model already partitioned, and write its weights one module at a time.

Under ``deepspeed.zero.Init`` every module's parameters are split across the ranks as soon as the
module is built, so no rank ever holds the whole fp32 model: a rank's peak is its shard plus the
largest single module. Whatever writes weights after that (our initialisation, a warm start) does it
module by module inside ``GatheredParameters(..., modifier_rank=0)``: the module is made whole, rank 0's
values are kept, and it is partitioned again. Without ZeRO-3 every helper here is a plain no-op, and
DeepSpeed is imported only when a ZeRO-3 parameter is seen.
"""

from __future__ import annotations

import contextlib
from typing import Any, ContextManager, Iterable

import torch
from torch import nn


def build_context(ds: dict[str, Any]) -> ContextManager:
    """The context to build the model in: ``zero.Init`` for ZeRO-3 (parameters partitioned at birth)."""
    if int(ds.get("zero_optimization", {}).get("stage", 0)) != 3:
        return contextlib.nullcontext()
    import deepspeed

    return deepspeed.zero.Init(config_dict_or_path=ds)


def is_partitioned(p: torch.Tensor) -> bool:
    return hasattr(p, "ds_id")


def full_shape(p: torch.Tensor) -> torch.Size:
    return p.ds_shape if is_partitioned(p) else p.shape


def full_numel(p: torch.Tensor) -> int:
    return p.ds_numel if is_partitioned(p) else p.numel()


def gathered(params: Iterable[nn.Parameter], modifier_rank: int | None = 0) -> ContextManager:
    """Make these parameters whole for the block; with ``modifier_rank``, that rank's writes are kept."""
    params = [p for p in params if is_partitioned(p)]
    if not params:
        return contextlib.nullcontext()
    import deepspeed

    return deepspeed.zero.GatheredParameters(params, modifier_rank=modifier_rank)


def initialize(model: nn.Module) -> None:
    """Our initialisation of a model built under ``zero.Init`` (its own ``__init__`` could only write the
    empty local tensors): the same values, in the same random order, one module at a time."""
    if any(is_partitioned(p) for p in model.parameters()):
        with torch.no_grad():
            model.reset_parameters(gather=gathered)


def outside_forward(model: nn.Module) -> list[nn.Parameter]:
    """Parameters the model reads outside the ``forward`` of the module that owns them: the logit scale
    (the objective reads it) and the relative bias tables (``forward_encoder`` reads them before the
    layers). ZeRO-3 fetches a module's parameters in its forward hooks, so these need help."""
    return [model.logit_scale, *model.rel_bias.parameters()]


def register_outside_forward(objective: nn.Module, model: nn.Module) -> None:
    """Training: have ZeRO-3 fetch those parameters with the objective, whose forward the engine calls.
    (Below ``stage3_param_persistence_threshold`` they are never partitioned anyway; this keeps them
    right at any threshold.)"""
    params = [p for p in outside_forward(model) if is_partitioned(p)]
    if params:
        import deepspeed  # its ``zero`` is an attribute, not an importable submodule

        for p in params:
            deepspeed.zero.register_external_parameter(objective, p)
