"""Evaluation during training: zero-shot retrieval on every pair set of ``data.eval``.

The trainer calls the returned function on all ranks (model in eval mode, no grad) and logs its
``{"eval/<set>/<metric>": value}`` to TensorBoard. Each call reads one fresh finite pass of each set,
with the recipe's data settings and tokenizer. Sets that are not image-text or audio-text are
skipped with a warning: classification needs a label file, which a recipe does not name.
"""

from __future__ import annotations

import logging
import time
from typing import Callable

import torch

from ..config import ConfigError
from ..data.loaders import build_eval_loader
from ..data.tokenizer import Tokenizer
from .errors import EvalError
from .zeroshot import PAIR_KINDS, check_supported, evaluate_stream

log = logging.getLogger(__name__)


def build_periodic_eval(recipe, dist, device: torch.device) -> Callable[[object, int], dict[str, float]] | None:
    """None when ``data.eval`` names no set; otherwise checks every set now, before training starts."""
    if not recipe.data.eval:
        return None
    sets = {name: task for name, task in recipe.data.eval.items() if task.kind in PAIR_KINDS}
    for name, task in recipe.data.eval.items():
        if name not in sets:
            log.warning("data.eval.%s (%s) is not evaluated during training: periodic evaluation is retrieval "
                        "on image-text and audio-text sets; use onepeace-eval --labels for classification",
                        name, task.kind)
    if not sets:
        return None
    if not recipe.data.tokenizer:
        raise ConfigError("data.eval: retrieval encodes captions, so data.tokenizer must name the tokenizer sidecar")
    tokenizer = Tokenizer(recipe.data.tokenizer)

    def stream(name: str):
        return build_eval_loader(name, recipe.data, recipe.model, tokenizer, rank=dist.rank, world_size=dist.world_size)

    for name, task in sets.items():
        try:
            check_supported(recipe.model, task.kind, f"data.eval.{name}", classify=False)
        except EvalError as exc:
            raise ConfigError(str(exc)) from None
        stream(name)  # resolves the shards: a wrong path fails now, not hours into the run

    def evaluate(model, step: int) -> dict[str, float]:
        results: dict[str, float] = {}
        for name, task in sets.items():
            start = time.time()
            try:
                result = evaluate_stream(model, stream(name), name=name, kind=task.kind, device=device)
            except EvalError as exc:  # raised alike on every rank (after the gather): skip the set, keep training
                log.error("eval %s at step %d skipped: %s", name, step, exc)
                continue
            results.update({f"eval/{name}/{k}": v for k, v in result.metrics.items()})
            summary = ", ".join(f"{k} {100 * v:.1f}%" for k, v in result.metrics.items() if k.endswith("R@1"))
            log.info("eval %s at step %d: %d samples, %d captions, %s (chance %.2f%% image/audio->text) in %.1fs%s",
                     name, step, result.samples, result.captions, summary, 100 * next(
                         (v for k, v in result.chance.items() if k.endswith("_to_text/R@1")), 0.0),
                     time.time() - start, "".join(f"; {n}" for n in result.notes))
        return results

    return evaluate
