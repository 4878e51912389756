"""The one LayerNorm factory: apex's fused kernel when it is importable and useful, torch otherwise."""

from __future__ import annotations

import logging
from functools import lru_cache

import torch
from torch import nn

log = logging.getLogger(__name__)


@lru_cache(maxsize=1)
def _apex_layer_norm() -> type[nn.Module] | None:
    """Apex is optional (not on PyPI); it only helps on CUDA. Detected and logged once."""
    if not torch.cuda.is_available():
        return None
    try:
        from apex.normalization import FusedLayerNorm  # type: ignore[import-not-found]
    except Exception:  # noqa: BLE001 - any import failure means "not available"
        log.info("LayerNorm: apex not importable, using torch.nn.LayerNorm")
        return None
    log.info("LayerNorm: using apex FusedLayerNorm")
    return FusedLayerNorm


def layer_norm(dim: int, eps: float = 1e-5, elementwise_affine: bool = True) -> nn.Module:
    fused = _apex_layer_norm()
    if fused is not None:
        return fused(dim, eps=eps, elementwise_affine=elementwise_affine)
    return nn.LayerNorm(dim, eps=eps, elementwise_affine=elementwise_affine)


def is_layer_norm(module: nn.Module) -> bool:
    fused = _apex_layer_norm()
    return isinstance(module, nn.LayerNorm) or (fused is not None and isinstance(module, fused))
