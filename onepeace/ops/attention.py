"""One attention entry point with four backends that agree to tolerance.

* ``math``: explicit softmax, the reference.
* ``sdpa``: ``F.scaled_dot_product_attention`` with the bias materialised as a float mask.
* ``flex``: FlexAttention; the bias is read from the small table inside ``score_mod`` and padding is a
  block mask, so no ``[B, H, L, L]`` tensor is ever built. Compiled on CUDA, eager elsewhere.
* ``xformers``: ``memory_efficient_attention`` with a dense bias whose rows are padded to a multiple of 8.

The bias is described, not materialised, by :class:`AttentionBias`: a table of learned values, a map
from (query position, key position) to a table row, the position of every token, and which keys are
padding. Dense backends materialise it once per forward; ``flex`` never does.
"""

from __future__ import annotations

import functools
import logging
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)

BACKENDS = ("math", "sdpa", "flex", "xformers")


@dataclass
class AttentionBias:
    """Relative position bias and key padding for one forward pass.

    ``table[index_map[positions[b, i], positions[b, j]], h]`` is the bias between tokens ``i`` and ``j``
    of sample ``b`` for head ``h``. ``table`` may be ``None`` (no position bias, only padding).
    ``positions`` may have a leading dimension of 1 when all samples share their positions.
    """

    table: torch.Tensor | None  # [E, H], float
    index_map: torch.Tensor | None  # [P, P], int64
    positions: torch.Tensor | None  # [B or 1, L], int64
    key_padding: torch.Tensor | None  # [B, L], bool, True = padded key
    batch_size: int
    seq_len: int
    _dense: torch.Tensor | None = field(default=None, repr=False)
    _block_mask: Any = field(default=None, repr=False)
    _block_mask_built: bool = field(default=False, repr=False)

    def with_table(self, table: torch.Tensor) -> "AttentionBias":
        """Same positions and padding with another layer's table (the block mask is shared)."""
        return AttentionBias(table, self.index_map, self.positions, self.key_padding, self.batch_size,
                             self.seq_len, None, self._block_mask, self._block_mask_built)

    def bias_indices(self) -> torch.Tensor:
        """``[B or 1, L, L]`` table rows."""
        assert self.index_map is not None and self.positions is not None
        pos = self.positions
        return self.index_map[pos[:, :, None], pos[:, None, :]]

    def dense(self, dtype: torch.dtype) -> torch.Tensor | None:
        """``[B or 1, H or 1, L, L]`` additive mask: table values, ``-inf`` on padded keys."""
        if self._dense is not None:
            return self._dense if self._dense.dtype == dtype else self._dense.to(dtype)
        bias = None
        if self.table is not None:
            bias = self.table[self.bias_indices()].permute(0, 3, 1, 2).to(dtype)  # [B, H, L, L]
        if self.key_padding is not None:  # all-False padding adds zeros: the same bias, and no host sync
            pad = torch.zeros(self.key_padding.shape, dtype=dtype, device=self.key_padding.device)
            pad = pad.masked_fill(self.key_padding, float("-inf"))[:, None, None, :]
            bias = pad if bias is None else bias + pad
        return bias

    def materialize(self, dtype: torch.dtype) -> None:
        """Build the dense mask once so every layer sharing this bias reuses it."""
        self._dense = self.dense(dtype)

    def prepare(self, backend: str, compute_dtype: torch.dtype, device_type: str) -> None:
        """The per-forward work, done once before the layers: the dense mask for dense backends, the
        block mask for flex."""
        if backend == "flex":
            self.block_mask(flex_compiles(device_type))
        else:
            self.materialize(torch.float32 if backend == "math" else compute_dtype)

    def block_mask(self, compiled: bool) -> Any:
        """FlexAttention block mask for padded keys (None when nothing is padded); built once, before the
        layers, so compiled layers never look at the padding themselves."""
        if self._block_mask_built:
            return self._block_mask
        self._block_mask_built = True
        if self.key_padding is not None:
            from torch.nn.attention.flex_attention import create_block_mask

            valid = ~self.key_padding

            def keep_key(b, h, q_idx, kv_idx):
                return valid[b, kv_idx]

            self._block_mask = create_block_mask(
                keep_key, self.batch_size, None, self.seq_len, self.seq_len,
                device=self.key_padding.device, _compile=compiled,
            )
        return self._block_mask


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype matmuls run in: autocast's when it is on, else the tensor's."""
    if not x.is_meta and torch.is_autocast_enabled(x.device.type):
        return torch.get_autocast_dtype(x.device.type)
    return x.dtype


def padding_only(key_padding: torch.Tensor | None, batch_size: int, seq_len: int) -> AttentionBias:
    return AttentionBias(None, None, None, key_padding, batch_size, seq_len)


# --------------------------------------------------------------------------------------------------
# Backend availability and selection
# --------------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def flex_available() -> bool:
    try:
        from torch.nn.attention.flex_attention import flex_attention  # noqa: F401
    except Exception:  # noqa: BLE001
        return False
    return True


@functools.lru_cache(maxsize=None)
def xformers_available(device_type: str) -> bool:
    """xformers has no CPU kernels; on CUDA its kernels must also load for this torch build."""
    if device_type != "cuda":
        return False
    try:
        import xformers.ops as xops
    except Exception:  # noqa: BLE001
        return False
    try:
        q = torch.zeros(1, 8, 1, 64, device="cuda", dtype=torch.float16)
        xops.memory_efficient_attention(q, q, q)
    except Exception as exc:  # noqa: BLE001
        log.info("xformers is installed but its kernels do not run here: %s", exc)
        return False
    return True


@functools.lru_cache(maxsize=None)
def flex_backward_supported(device_type: str) -> bool:
    """Whether FlexAttention can train on this device type (torch 2.11 refuses backward on CPU; 2.10's
    eager path allowed it). Probed once with a tiny call rather than guessed from version numbers."""
    if not flex_available():
        return False
    if device_type != "cpu":
        return True
    q = torch.zeros(1, 1, 4, 16, requires_grad=True)
    try:
        _eager_flex(q, q, q).sum().backward()
    except NotImplementedError:
        return False
    return True


def available_backends(device_type: str) -> list[str]:
    out = ["math", "sdpa"]
    if flex_available():
        out.append("flex")
    if xformers_available(device_type):
        out.append("xformers")
    return out


@functools.lru_cache(maxsize=None)
def resolve_backend(name: str, device_type: str) -> str:
    """``auto`` means flex on CUDA (compiled FlexAttention), sdpa elsewhere; logged once per device."""
    if name not in BACKENDS + ("auto",):
        raise ValueError(f"unknown attention backend {name!r}; expected auto or one of {', '.join(BACKENDS)}")
    if name == "auto":
        chosen = "flex" if device_type == "cuda" and flex_available() else "sdpa"
        log.info("attention backend auto -> %s on %s", chosen, device_type)
        return chosen
    if name == "xformers" and not xformers_available(device_type):
        raise ValueError(f"attention backend 'xformers' is not available on {device_type} "
                         "(xformers needs CUDA and a build matching this torch); use auto, sdpa or flex")
    if name == "flex" and not flex_available():
        raise ValueError("attention backend 'flex' needs torch.nn.attention.flex_attention (torch >= 2.5)")
    return name


@functools.lru_cache(maxsize=None)
def _compiled_flex() -> Callable:
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=False)


def flex_compiles(device_type: str) -> bool:
    """torch.compile of FlexAttention works on CUDA; on CPU (torch 2.10) inductor fails, so run eagerly."""
    return device_type == "cuda"


# --------------------------------------------------------------------------------------------------
# Backends: q, k, v are [B, H, L, Dh]; the result is [B, H, L, Dh]
# --------------------------------------------------------------------------------------------------


def _math(q, k, v, bias: AttentionBias, scale: float) -> torch.Tensor:
    scores = torch.matmul(q * scale, k.transpose(-2, -1)).float()
    mask = bias.dense(torch.float32)
    if mask is not None:
        scores = scores + mask
    probs = torch.softmax(scores, dim=-1)
    probs = torch.nan_to_num(probs, nan=0.0)  # a query whose keys are all padding attends to nothing
    return torch.matmul(probs.to(v.dtype), v)


def _sdpa(q, k, v, bias: AttentionBias, scale: float) -> torch.Tensor:
    mask = bias.dense(q.dtype)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)


def _flex(q, k, v, bias: AttentionBias, scale: float) -> torch.Tensor:
    if not torch.is_grad_enabled():  # torch 2.11 refuses CPU inputs that merely carry requires_grad
        q, k, v = q.detach(), k.detach(), v.detach()
    needs_grad = q.requires_grad or k.requires_grad or v.requires_grad
    if needs_grad and not torch.compiler.is_compiling() and not flex_backward_supported(q.device.type):
        raise ValueError(f"attention backend 'flex' cannot train on {q.device.type} with torch {torch.__version__} "
                         "(FlexAttention has no backward there); use 'auto' or 'sdpa' for training on "
                         f"{q.device.type}, 'flex' still works for inference")
    compiled = flex_compiles(q.device.type)
    if torch.compiler.is_compiling():  # inside a compiled layer: dynamo captures FlexAttention itself
        from torch.nn.attention.flex_attention import flex_attention as fn
    else:
        fn = _compiled_flex() if compiled else _eager_flex
    score_mod = None
    if bias.table is not None:
        table, index_map = bias.table, bias.index_map
        positions = bias.positions.expand(bias.batch_size, -1)

        def score_mod(score, b, h, q_idx, kv_idx):
            row = index_map[positions[b, q_idx], positions[b, kv_idx]]
            return score + table[row, h].to(score.dtype)

    return fn(q, k, v, score_mod=score_mod, block_mask=bias.block_mask(compiled), scale=scale)


def _xformers(q, k, v, bias: AttentionBias, scale: float) -> torch.Tensor:
    import xformers.ops as xops

    B, H, L, _ = q.shape
    mask = bias.dense(q.dtype)
    attn_bias = None
    if mask is not None:
        # xformers wants the bias rows 8-aligned in memory: allocate padded, use a slice.
        padded = (L + 7) // 8 * 8
        storage = torch.zeros(B, H, L, padded, dtype=q.dtype, device=q.device)
        storage[:, :, :, :L] = mask.expand(B, H, L, L)
        attn_bias = storage[:, :, :, :L]
    out = xops.memory_efficient_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_bias=attn_bias, scale=scale
    )
    return out.transpose(1, 2)


def _eager_flex(*args, **kwargs):
    """Eager FlexAttention (CPU); its 'called without torch.compile' warning is expected here."""
    from torch.nn.attention.flex_attention import flex_attention

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="flex_attention called without torch.compile")
        return flex_attention(*args, **kwargs)


_IMPLS = {"math": _math, "sdpa": _sdpa, "flex": _flex, "xformers": _xformers}


def attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: AttentionBias, backend: str,
    scale: float | None = None,
) -> torch.Tensor:
    """Scaled dot-product attention with relative position bias and key padding."""
    if q.dim() != 4 or q.shape != k.shape or q.shape != v.shape:
        raise ValueError(f"q, k, v must all be [B, H, L, Dh]; got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    if q.shape[0] != bias.batch_size or q.shape[2] != bias.seq_len:
        raise ValueError(f"attention bias is for batch {bias.batch_size} x length {bias.seq_len}, "
                         f"got q of shape {tuple(q.shape)}")
    if backend not in _IMPLS:
        raise ValueError(f"unknown attention backend {backend!r}; expected one of {', '.join(BACKENDS)}")
    return _IMPLS[backend](q, k, v, bias, q.shape[-1] ** -0.5 if scale is None else scale)
