"""A model to evaluate, from an exported model directory or from a training run's checkpoint.

An export (``onepeace-export``) holds ``config.yaml`` (``model`` and an optional ``tokenizer`` path
relative to it) and ``model.pt``. A run directory, its ``checkpoints/`` or one ``stepNNNNNNNN/``
checkpoint gets its weights through ``warm_start.load_weights`` (ZeRO shards consolidated) and its
model config and tokenizer from the run's ``config.yaml`` (the full recipe).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import sys
from dataclasses import dataclass

from ..config import load_yaml
from ..data.config import DataConfig
from ..model import OnePeace
from ..model.onepeace import CONFIG_FILE, WEIGHTS_FILE
from ..recipe import build_recipe
from .errors import EvalError

# Evaluation compiles nothing (text lengths vary per batch) and keeps no activations for a backward pass.
EVAL_RUNTIME = {"compile_encoder": False, "checkpoint_activations": False}


@dataclass
class LoadedModel:
    model: OnePeace
    tokenizer: str | None  # the tokenizer sidecar that goes with the weights, if known
    data: DataConfig | None  # the run's data settings (audio lengths, crop...); None for an export
    source: str  # what was loaded, for the report


def is_export(path: str) -> bool:
    return os.path.isfile(os.path.join(path, CONFIG_FILE)) and os.path.isfile(os.path.join(path, WEIGHTS_FILE))


def load_model(path: str) -> LoadedModel:
    if not os.path.exists(path):
        raise EvalError(f"model {path} does not exist: pass an exported model directory (onepeace-export), "
                        "a run directory or a checkpoint directory")
    if is_export(path):
        return _load_export(path)
    return _load_checkpoint(path)


def _load_export(path: str) -> LoadedModel:
    config_file = os.path.join(path, CONFIG_FILE)
    try:
        model = OnePeace.from_pretrained(path, **EVAL_RUNTIME)
    except RuntimeError as exc:  # load_state_dict: missing, unexpected or wrongly shaped weights
        raise EvalError(f"{os.path.join(path, WEIGHTS_FILE)} does not fit {config_file}: {exc}") from None
    tokenizer = load_yaml(config_file).get("tokenizer")
    if tokenizer is not None and not isinstance(tokenizer, str):
        raise EvalError(f"{config_file}: 'tokenizer' must be a path, got {tokenizer!r}")
    return LoadedModel(model, os.path.join(path, tokenizer) if tokenizer else None, None, os.path.abspath(path))


def _load_checkpoint(path: str) -> LoadedModel:
    from ..train.checkpoint import find_checkpoint
    from ..train.warm_start import load_weights

    ckpt_dir, tag = find_checkpoint(path)
    run_dir = os.path.dirname(ckpt_dir) if os.path.basename(ckpt_dir) == "checkpoints" else ckpt_dir
    config_file = os.path.join(run_dir, CONFIG_FILE)
    if not os.path.isfile(config_file):
        raise EvalError(f"{run_dir} has no {CONFIG_FILE}: is {path} a run made by onepeace-pretrain?")
    recipe = build_recipe(load_yaml(config_file), source=config_file)
    model = OnePeace(dataclasses.replace(recipe.model, **EVAL_RUNTIME))
    checkpoint = os.path.join(ckpt_dir, tag)
    with contextlib.redirect_stdout(sys.stderr):  # DeepSpeed's consolidation prints; stdout is for results
        state = load_weights(checkpoint)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise EvalError(f"checkpoint {checkpoint} does not fit the model of {config_file}: {exc}") from None
    return LoadedModel(model, recipe.data.tokenizer or None, recipe.data, checkpoint)
