"""Parameter initialisation: each module initialises the parameters it holds itself.

Our modules define ``init_weights()`` for their own parameters (CLS and mask tokens, positions, relative
tables, LayerScale, the logit scale); :func:`init_module` applies the reference rules to the standard
torch layers they are built from. :func:`reset_parameters` walks a model with both, for all parameters or
only some names, so a partial reset gives exactly what a fresh model gets.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable, Collection, ContextManager

import torch
from torch import nn

from ..ops.norm import is_layer_norm

INIT_STD = 0.02


def trunc_normal_(t: torch.Tensor, std: float = INIT_STD) -> torch.Tensor:
    """Truncated normal cut at one std (the reference: std 0.02, cut at +-0.02): linear and embedding
    weights, tokens and positions."""
    return nn.init.trunc_normal_(t, std=std, a=-std, b=std)


# The residual branches' output matrices (attention out, FFN fc2) and the FFN's input matrix, by name.
RESIDUAL_OUTPUTS = (".attn.out_proj", ".fc2")
FFN_INPUTS = (".wi",)
# The GeGLU product's RMS at init under ``width_scaled``: the FFN input is LayerNorm'd (RMS 1) and its
# matrix has std (2 width)^-0.5 over fan-in width, so both halves are N(0, 1/2) and gelu(a) * b has RMS
# sqrt(E[gelu(a)^2] / 2) = 0.308 at every width (tests/unit/test_model.py measures it).
GEGLU_RMS_WIDTH_SCALED = 0.308


@dataclass(frozen=True)
class InitScheme:
    """How Linear weights, token/CLS embeddings and positions are drawn (``ModelConfig.init_scheme``).

    - ``reference``: ONE-PEACE's truncated normal cut at one std, std ``linear_std`` (the model's
      ``init_std``, 0.02) for every Linear, 0.02 for embeddings and positions. Made for widths of 768+.
    - ``width_scaled``: open_clip's (GPT-2 style) per-matrix scheme, for small widths (the ``tiny``
      preset; docs/learning.md): plain normal, std width^-0.5 for a Linear (its fan-in), the residual
      branches' outputs width^-0.5 (2 depth)^-0.5 (width: their output), the FFN input (2 width)^-0.5;
      token and CLS embeddings std 0.02, positions 0.01. The FFN's Sub-LayerNorm starts with the gain
      :data:`GEGLU_RMS_WIDTH_SCALED`, the RMS its input has: the branch then leaves fc2 at the scale it
      has in open_clip's MLP, which has no such norm. With gain 1 the norm triples the FFN's output at
      init, and the tiny model learned contrastive alignment markedly slower (docs/learning.md).
      ``depth`` and ``decoder_depth`` give the depth of the encoder's and the decoder's (``decoder.``)
      layers.
    """

    kind: str = "reference"
    linear_std: float = INIT_STD
    depth: int = 1
    decoder_depth: int = 1

    @classmethod
    def from_config(cls, config) -> "InitScheme":
        return cls(config.init_scheme, config.init_std, config.depth, max(config.decoder_depth, 1))

    def linear_(self, name: str, module: nn.Linear) -> None:
        if self.kind == "reference":
            trunc_normal_(module.weight, self.linear_std)
            return
        if name.endswith(RESIDUAL_OUTPUTS):
            depth = self.decoder_depth if name.startswith("decoder.") else self.depth
            std = module.out_features**-0.5 * (2 * depth) ** -0.5
        elif name.endswith(FFN_INPUTS):
            std = (2 * module.in_features) ** -0.5
        else:
            std = module.in_features**-0.5
        nn.init.normal_(module.weight, std=std)

    def layer_norm_(self, name: str, weight: torch.Tensor) -> torch.Tensor:
        """A LayerNorm's gain: 1, but for the FFN's Sub-LayerNorm under ``width_scaled`` (see the class)."""
        if self.kind == "width_scaled" and ".ffn." in name and name.endswith(".inner_norm"):
            return nn.init.constant_(weight, GEGLU_RMS_WIDTH_SCALED)
        return nn.init.ones_(weight)

    def embedding_(self, t: torch.Tensor) -> torch.Tensor:
        """Token and CLS embeddings (no fan-in)."""
        return trunc_normal_(t) if self.kind == "reference" else nn.init.normal_(t, std=INIT_STD)

    def position_(self, t: torch.Tensor) -> torch.Tensor:
        """Learned absolute positions."""
        return trunc_normal_(t) if self.kind == "reference" else nn.init.normal_(t, std=INIT_STD / 2)


def init_module(module: nn.Module, scheme: InitScheme = InitScheme(), name: str = "") -> None:
    """Initialise the parameters ``module`` (called ``name`` in the model) holds itself (not its submodules').

    Our own modules define ``init_weights()`` for all they hold (including what they keep in a
    ``ParameterDict``). Torch layers: linear weights and embedding weights as ``scheme`` says (the
    reference: truncated normal, std the model's ``init_std`` for linear weights and 0.02 for embeddings,
    which have no fan-in); biases 0; LayerNorm gains as ``scheme`` says (1 but for ``width_scaled``'s FFN
    Sub-LayerNorm), biases 0; conv weights PyTorch's fan-in init.
    """
    with torch.no_grad():
        if callable(getattr(module, "init_weights", None)):
            module.init_weights()
            return
        if isinstance(module, nn.Linear):
            scheme.linear_(name, module)
        elif isinstance(module, nn.Embedding):
            scheme.embedding_(module.weight)
        elif isinstance(module, (nn.Conv1d, nn.Conv2d)):
            module.reset_parameters()
        elif is_layer_norm(module) and getattr(module, "weight", None) is not None:
            scheme.layer_norm_(name, module.weight)
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


def reset_parameters(model: nn.Module, only: Collection[str] | None = None, scheme: InitScheme = InitScheme(),
                     gather: Gather | None = None) -> None:
    """Initialise every parameter of ``model``, or only those named in ``only`` (the others keep their
    values exactly). Unknown names are an error. ``scheme``: see :func:`init_module`. ``gather`` wraps
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
            init_module(module, scheme, prefix)
            with torch.no_grad():
                for n, saved in keep.items():
                    own[n].copy_(saved)
