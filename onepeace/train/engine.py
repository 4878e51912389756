"""DeepSpeed: the one place that resolves a ds_config against the recipe, and builds the engine.

A ds_config value written ``"auto"`` is filled from the recipe (micro batch, accumulation, clipping,
precision, optimizer hyper-parameters). A concrete value that contradicts the recipe is an error before
any training starts: the recipe is the single source of truth, the ds_config only adds ZeRO settings.
"""

from __future__ import annotations

import copy
import json
import logging
import os
from importlib import resources
from typing import Any

import torch
from torch import nn

from ..config import ConfigError
from ..model.parameters import takes_weight_decay
from ..runs import ENGINE_PREFIX
from .config import TrainConfig
from .schedule import cosine_schedule

log = logging.getLogger(__name__)

# Used when no --deepspeed_config is given: ZeRO stage 1, everything from the recipe.
DEFAULT_DS_CONFIG: dict[str, Any] = {
    "train_micro_batch_size_per_gpu": "auto",
    "gradient_accumulation_steps": "auto",
    "gradient_clipping": "auto",
    "bf16": {"enabled": "auto"},
    "fp16": {"enabled": "auto"},
    "zero_optimization": {"stage": 1},
}

# Parameters that never get weight decay besides 1-D ones: positions, CLS and mask tokens.


def shipped_ds_configs() -> list[str]:
    """Names of the DeepSpeed configs shipped in ``onepeace/ds_configs`` (``zero2_bf16``, ...)."""
    return sorted(p.name[:-5] for p in resources.files("onepeace").joinpath("ds_configs").iterdir()
                  if p.name.endswith(".json"))


def ds_config_path(name_or_path: str) -> str:
    """A JSON file, or a shipped config by name from any directory: ``zero2_bf16``, ``zero2_bf16.json``
    and ``ds_configs/zero2_bf16.json`` all name ``onepeace/ds_configs/zero2_bf16.json``."""
    if os.path.isfile(name_or_path):
        return name_or_path
    folder, base = os.path.split(name_or_path)
    name = base[:-5] if base.endswith(".json") else base
    if folder in ("", "ds_configs") and name in shipped_ds_configs():
        return str(resources.files("onepeace").joinpath("ds_configs", f"{name}.json"))
    raise ConfigError(f"DeepSpeed config not found: {name_or_path} (a JSON file, or a shipped config: "
                      f"{', '.join(shipped_ds_configs())})")


def load_ds_config(path: str | None) -> tuple[dict[str, Any], str]:
    if not path:
        return copy.deepcopy(DEFAULT_DS_CONFIG), "the default DeepSpeed config"
    if os.path.isdir(path):
        raise ConfigError(f"DeepSpeed config {path} is a directory, not a JSON file")
    path = ds_config_path(path)
    try:
        with open(path, encoding="utf-8") as f:
            ds = json.load(f)
    except FileNotFoundError:
        raise ConfigError(f"DeepSpeed config not found: {path}") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: not valid JSON: {exc}") from None
    if not isinstance(ds, dict):
        raise ConfigError(f"{path}: a DeepSpeed config must be a JSON object ({{...}}), got {type(ds).__name__}")
    return ds, path


def resolve_ds_config(ds: dict[str, Any], train: TrainConfig, *, micro_batch: int, world_size: int,
                      device_type: str, source: str = "ds_config") -> dict[str, Any]:
    """Fill ``"auto"`` values from the recipe; raise :class:`ConfigError` on contradictions."""
    ds = copy.deepcopy(ds)

    def settle(container: dict, key: str, wanted: Any, recipe_key: str, path: str) -> None:
        value = container.get(key, "auto")
        if value == "auto":
            container[key] = wanted
        elif value != wanted:
            raise ConfigError(f"{source}: {path} is {value!r} but the recipe gives {wanted!r} ({recipe_key}); "
                              f'write "auto" or make them agree')

    settle(ds, "train_micro_batch_size_per_gpu", micro_batch, "the data.train batch sizes summed",
           "train_micro_batch_size_per_gpu")
    settle(ds, "gradient_accumulation_steps", train.grad_accum, "train.grad_accum", "gradient_accumulation_steps")
    settle(ds, "train_batch_size", micro_batch * train.grad_accum * world_size,
           "micro batch x train.grad_accum x world size", "train_batch_size")
    settle(ds, "gradient_clipping", train.grad_clip, "train.grad_clip", "gradient_clipping")
    for name in ("bf16", "fp16"):
        section = ds.setdefault(name, {})
        if not isinstance(section, dict):
            raise ConfigError(f"{source}: {name} must be a mapping")
        settle(section, "enabled", train.precision == name, f"train.precision = {train.precision}", f"{name}.enabled")
    if ds.get("amp", {}).get("enabled"):
        raise ConfigError(f"{source}: amp (apex) is not supported; use bf16 or fp16 sections")
    if "scheduler" in ds:
        raise ConfigError(f"{source}: remove the 'scheduler' section: the recipe owns the learning-rate schedule "
                          "(train.lr, train.min_lr, train.warmup_steps)")
    if train.precision == "fp16" and device_type != "cuda":
        raise ConfigError(f"train.precision = fp16 needs CUDA (DeepSpeed refuses fp16 on {device_type}); use bf16 "
                          "or fp32")
    opt = ds.get("optimizer")
    if opt is not None:
        if str(opt.get("type", "")).lower() not in ("adamw", "adam"):
            raise ConfigError(f"{source}: optimizer.type must be AdamW (got {opt.get('type')!r})")
        params = opt.setdefault("params", {})
        settle(params, "lr", train.lr, "train.lr", "optimizer.params.lr")
        settle(params, "betas", list(train.betas), "train.betas", "optimizer.params.betas")
        settle(params, "eps", train.eps, "train.eps", "optimizer.params.eps")
        settle(params, "weight_decay", train.weight_decay, "train.weight_decay", "optimizer.params.weight_decay")
    zero = ds.setdefault("zero_optimization", {})
    offload = any(zero.get(k, {}).get("device", "none") not in ("none", None)
                  for k in ("offload_optimizer", "offload_param"))
    if offload and opt is None:
        raise ConfigError(f"{source}: ZeRO offload needs an 'optimizer' section (DeepSpeed's CPU Adam); add "
                          '{"type": "AdamW", "params": {"lr": "auto", ...}}')
    ds.setdefault("steps_per_print", 10**9)  # we log ourselves
    ds.setdefault("wall_clock_breakdown", False)
    return ds


def zero_stage(ds: dict[str, Any]) -> int:
    return int(ds.get("zero_optimization", {}).get("stage", 0))


def skips_nonfinite_steps(ds: dict[str, Any]) -> bool:
    """Whether DeepSpeed itself drops an update whose gradients are not finite (on every rank alike).

    Its optimizers already read the global gradient norm or an overflow flag on the host once per
    update (that is how they clip and scale): ZeRO-3 always; ZeRO-1/2 unless ``bf16.check_grad_overflow``
    or, in fp32, ``zero_optimization.compute_grad_norm`` is off; bf16 and fp16 without ZeRO through their
    own optimizers. The trainer relies on that check instead of adding a host sync of its own: a
    non-finite loss turns every gradient into NaN (see ``trainer.poison_nonfinite``) and the engine skips
    the update. Only fp32 without ZeRO applies whatever gradients it gets.
    """
    if ds.get("fp16", {}).get("enabled") is True:
        return True
    bf16 = ds.get("bf16", {}).get("enabled") is True
    stage = zero_stage(ds)
    if stage == 3:
        return True
    if stage in (1, 2):
        if bf16:
            return ds.get("bf16", {}).get("check_grad_overflow", True) is not False
        return ds.get("zero_optimization", {}).get("compute_grad_norm", True) is not False
    return bf16


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups: decay on matrices, none on 1-D tensors, positions, CLS/mask tokens, bias tables
    (``model/parameters.py``). ``model`` is a OnePeace or the objective that holds one as ``model``."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (decay if takes_weight_decay(name.removeprefix(ENGINE_PREFIX), p) else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay, "name": "decay"},
              {"params": no_decay, "weight_decay": 0.0, "name": "no_decay"}]
    return [g for g in groups if g["params"]]


def initialize(module: nn.Module, ds: dict[str, Any], train: TrainConfig):
    """DeepSpeed engine with our AdamW groups and cosine schedule (a torch optimizer, so nothing is
    JIT-compiled, unless the ds_config names its own optimizer, which ZeRO-Offload needs)."""
    import deepspeed

    groups = param_groups(module, train.weight_decay)
    if not groups:
        raise ConfigError("no trainable parameters: train.trainable matches nothing")
    if "optimizer" in ds:
        optimizer = None
        model_parameters = groups
    else:
        optimizer = torch.optim.AdamW(groups, lr=train.lr, betas=train.betas, eps=train.eps,
                                      weight_decay=train.weight_decay)
        model_parameters = None

    def scheduler(opt):
        return cosine_schedule(opt, train.steps, train.warmup, train.lr, train.min_lr)

    engine, optimizer, _, lr_scheduler = deepspeed.initialize(
        model=module, optimizer=optimizer, model_parameters=model_parameters, lr_scheduler=scheduler, config=ds)
    return engine, optimizer, lr_scheduler
