"""What each parameter of the model is, from its name: its component and whether it takes weight decay.

One table serves the optimizer (weight decay) and the summary (parameters per component), so the two
never disagree about a name. The first rule whose pattern matches the whole name wins; ``{m}`` in a
component is the modality the pattern captured. 1-D tensors (biases, norms, LayerScale) never decay,
whatever their rule says.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class ParamRule:
    pattern: re.Pattern
    component: str
    decay: bool  # False for positions, special tokens, relative bias tables and the logit scale


def _rule(pattern: str, component: str, decay: bool = True) -> ParamRule:
    return ParamRule(re.compile(pattern), component, decay)


PARAMETER_RULES: tuple[ParamRule, ...] = (
    _rule(r"adapters\.(?P<m>\w+)\.(pos_embed|cls_token|cls_pos)", "{m} adapter", decay=False),
    _rule(r"adapters\.(?P<m>\w+)\..+", "{m} adapter"),
    _rule(r"rel_bias\.tables\.(?P<m>\w+)(\..+)?", "{m} relative position table", decay=False),
    _rule(r"encoder\.layers\.\d+\.ffn\.(?P<m>\w+)\..+", "{m} FFNs"),
    _rule(r"encoder\.layers\.\d+\..+", "shared attention"),  # attention, its two pre-norms, LayerScale
    _rule(r"encoder\.final_norm\..+", "final norms"),
    _rule(r"proj\..+", "heads"),
    _rule(r"logit_scale", "heads", decay=False),
    _rule(r"decoder\.(pos_embed|mask_token)\..+", "decoder", decay=False),
    _rule(r"decoder\..+", "decoder"),
)


def classify(name: str) -> tuple[str, bool]:
    """(component, takes weight decay by name) of a parameter of :class:`OnePeace`."""
    for rule in PARAMETER_RULES:
        match = rule.pattern.fullmatch(name)
        if match:
            return rule.component.format(**match.groupdict()), rule.decay
    raise KeyError(f"parameter {name} belongs to no component: add a rule to PARAMETER_RULES")


def component_of(name: str) -> str:
    return classify(name)[0]


def takes_weight_decay(name: str, param: torch.Tensor) -> bool:
    ndim = len(getattr(param, "ds_shape", param.shape))  # a ZeRO-3 partition is flat; ds_shape is its full shape
    return ndim > 1 and classify(name)[1]
