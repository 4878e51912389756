"""Parameter initialisation: each module initialises the parameters it holds itself.

Our modules define ``init_weights()`` for their own parameters (CLS and mask tokens, positions, relative
tables, LayerScale, the logit scale); :func:`init_module` applies the reference rules to the standard
torch layers they are built from. :func:`reset_parameters` walks a model with both, for all parameters or
only some names, so a partial reset gives exactly what a fresh model gets.
"""

from __future__ import annotations

import contextlib
from typing import Callable, Collection, ContextManager

import torch
from torch import nn

from ..ops.norm import is_layer_norm

INIT_STD = 0.02


def trunc_normal_(t: torch.Tensor, std: float = INIT_STD) -> torch.Tensor:
    """Truncated normal cut at one std (the reference: std 0.02, cut at +-0.02): linear and embedding
    weights, tokens and positions."""
    return nn.init.trunc_normal_(t, std=std, a=-std, b=std)


def init_module(module: nn.Module, linear_std: float = INIT_STD) -> None:
    """Initialise the parameters ``module`` holds itself (not its submodules').

    Our own modules define ``init_weights()`` for all they hold (including what they keep in a
    ``ParameterDict``). Torch layers: linear weights truncated normal with ``linear_std`` (the model's
    ``init_std``: 0.02 as the reference, larger in the tiny preset, see docs/learning.md), embedding
    weights with the reference's 0.02 (they have no fan-in); biases 0; LayerNorm 1/0; conv weights
    PyTorch's fan-in init.
    """
    with torch.no_grad():
        if callable(getattr(module, "init_weights", None)):
            module.init_weights()
            return
        if isinstance(module, nn.Linear):
            trunc_normal_(module.weight, linear_std)
        elif isinstance(module, nn.Embedding):
            trunc_normal_(module.weight)
        elif isinstance(module, (nn.Conv1d, nn.Conv2d)):
            module.reset_parameters()
        elif is_layer_norm(module) and getattr(module, "weight", None) is not None:
            nn.init.ones_(module.weight)
        has_bias = isinstance(getattr(module, "bias", None), torch.Tensor)
        if has_bias and (isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d)) or is_layer_norm(module)):
            nn.init.zeros_(module.bias)


def _own_parameters(module: nn.Module, prefix: str) -> dict[str, nn.Parameter]:
    """The parameters a module initialises: its direct ones and those of its ParameterDict/List children."""
    dot = f"{prefix}." if prefix else ""
    own = {dot + n: p for n, p in module.named_parameters(recurse=False)}
    for child_name, child in module.named_children():
        if isinstance(child, (nn.ParameterDict, nn.ParameterList)):
            own.update({f"{dot}{child_name}.{n}": p for n, p in child.named_parameters()})
    return own


# A context that makes the given parameters whole while a block writes them (ZeRO-3 partitions them).
Gather = Callable[[list[nn.Parameter]], ContextManager]


def reset_parameters(model: nn.Module, only: Collection[str] | None = None, linear_std: float = INIT_STD,
                     gather: Gather | None = None) -> None:
    """Initialise every parameter of ``model``, or only those named in ``only`` (the others keep their
    values exactly). Unknown names are an error. ``linear_std``: see :func:`init_module`. ``gather`` wraps
    each module's initialisation: with it a model partitioned by ZeRO-3 is initialised one module at a
    time, to the same values drawn in the same random order as without it."""
    gather = gather or (lambda params: contextlib.nullcontext())
    if only is not None:
        unknown = set(only) - {name for name, _ in model.named_parameters()}
        if unknown:
            raise ValueError(f"reset_parameters: no parameters named {sorted(unknown)[:5]}")
    for prefix, module in model.named_modules():
        if isinstance(module, (nn.ParameterDict, nn.ParameterList)):
            continue  # initialised by the module that holds it
        own = _own_parameters(module, prefix)
        if not own or only is not None and not own.keys() & set(only):
            continue
        with gather(list(own.values())):
            keep = {n: p.detach().clone() for n, p in own.items() if only is not None and n not in only}
            init_module(module, linear_std)
            with torch.no_grad():
                for n, saved in keep.items():
                    own[n].copy_(saved)
