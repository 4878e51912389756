"""Cross-modal contrastive loss (CLIP style), exact across ranks: features are gathered with gradient."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from ..checks import value_checks
from .. import distributed

if torch.distributed.is_available():
    # Imported here, not at first use: importing torch.distributed.nn after init_process_group made a
    # gloo rank abort at exit now and then ("terminate called without an active exception", torch 2.10).
    from torch.distributed.nn.functional import all_gather

LOGIT_SCALE_MAX = math.log(100.0)


def _check_same_batch(batch: int, rank: int, world: int, device: torch.device) -> None:
    # all_gather needs equal shapes; a mismatch would hang or fail deep inside the backend, so say it here.
    sizes = [torch.zeros(1, dtype=torch.long, device=device) for _ in range(world)]
    torch.distributed.all_gather(sizes, torch.tensor([batch], dtype=torch.long, device=device))
    sizes = [int(s.item()) for s in sizes]
    if len(set(sizes)) > 1:
        other = next(s for s in sizes if s != batch)
        raise ValueError(
            f"contrastive_loss needs the same batch size on every rank: this rank (rank {rank}) has {batch}, "
            f"another has {other} (all ranks: {sizes}); use a fixed per-rank batch size and drop_last")


def contrastive_loss(a: Tensor, b: Tensor, logit_scale: Tensor, *, gather: bool = True) -> Tensor:
    """Symmetric CLIP cross-entropy of ``exp(logit_scale) * a @ b.T``; row i of ``a`` pairs with row i of ``b``.

    ``a`` and ``b`` are ``[B, D]`` and already L2-normalised by the caller (``OnePeace.embed`` does it).
    With ``gather`` and more than one rank, every rank scores its own rows against the columns of all
    ranks (gathered with gradient): the mean of the per-rank losses is the loss of the concatenated
    batch, and rank-averaged gradients (DDP, DeepSpeed) are its gradients. Computed in (at least) fp32.
    """
    if a.ndim != 2 or a.shape != b.shape:
        raise ValueError(f"contrastive_loss expects two [B, D] tensors of one shape; got {tuple(a.shape)} "
                         f"and {tuple(b.shape)}")
    dtype = torch.promote_types(torch.promote_types(a.dtype, b.dtype), torch.float32)  # fp64 stays fp64
    a, b = a.to(dtype), b.to(dtype)
    batch = a.shape[0]
    labels = torch.arange(batch, device=a.device)
    rank, world = (distributed.rank(), distributed.world_size()) if gather else (0, 1)
    if world > 1:
        if value_checks():  # a collective and a host read; training batches are full by construction
            _check_same_batch(batch, rank, world, a.device)
        all_a, all_b = torch.cat(all_gather(a)), torch.cat(all_gather(b))
        labels = labels + rank * batch
    else:
        all_a, all_b = a, b
    scale = logit_scale.to(dtype).exp()
    loss_ab = F.cross_entropy(scale * a @ all_b.T, labels)
    loss_ba = F.cross_entropy(scale * b @ all_a.T, labels)
    return (loss_ab + loss_ba) / 2


class _BoundedLogitScale(torch.autograd.Function):
    """Clamp to [0, ln 100] as the reference does every step, without touching the parameter: DeepSpeed
    keeps fp32 master weights, so an in-place clamp of the module's copy would be overwritten. Outside
    the range only gradients that point back inside pass, so the parameter never drifts further out."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x.clamp(0.0, LOGIT_SCALE_MAX)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        inward = ((x > LOGIT_SCALE_MAX) & (grad > 0)) | ((x < 0) & (grad < 0))
        inside = (x >= 0) & (x <= LOGIT_SCALE_MAX)
        return torch.where(inside | inward, grad, torch.zeros_like(grad))


def bounded_logit_scale(param: Tensor) -> Tensor:
    """The logit scale the loss uses: ``param`` clamped to [0, ln 100] (temperature in [0.01, 1])."""
    return _BoundedLogitScale.apply(param)
