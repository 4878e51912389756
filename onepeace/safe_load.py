"""Loading checkpoint files without running the code a pickle can carry.

``torch.load(weights_only=False)`` unpickles arbitrary objects, so a checkpoint from elsewhere could run
any code. DeepSpeed loads its own files that way (its checkpoint engine, ``zero_to_fp32`` and the
universal-checkpoint code all pass ``weights_only=False``). Inside :func:`weights_only_loading` every
``torch.load`` (DeepSpeed's included) runs with ``weights_only=True``, allowing beyond torch's own
allowlist only the few plain DeepSpeed classes its ZeRO optimizer states hold. A file that needs
anything else, or that cannot be read at all, raises :class:`CheckpointFileError` naming the file.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import threading
import zipfile
from typing import Iterator

import torch

from .config import ConfigError

# Honoured by torch.load itself even where a caller passes weights_only=False.
FORCE_ENV = "TORCH_FORCE_WEIGHTS_ONLY_LOAD"
_lock = threading.RLock()  # nested use is fine; concurrent use waits


class CheckpointFileError(ConfigError):
    """A checkpoint file that cannot be loaded (damaged, truncated, or holding unsafe objects)."""

    def __init__(self, path: str, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = path


def deepspeed_safe_globals() -> list:
    """The non-tensor classes DeepSpeed pickles into checkpoints: a loss scaler, the ZeRO stage enum and
    the fragment addresses of its flat partitions (plain data, no code runs when they are rebuilt)."""
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [LossScaler, DynamicLossScaler, ZeroStageEnum, fragment_address]


def _reason(exc: BaseException) -> str:
    text = str(exc).strip()
    if isinstance(exc, pickle.UnpicklingError):
        found = [line.strip() for line in text.splitlines() if "Unsupported global" in line or "GLOBAL" in line]
        what = found[0] if found else text.splitlines()[0] if text else type(exc).__name__
        return (f"refused: it holds Python objects beyond tensors and plain data ({what}); checkpoints are "
                "loaded with weights_only=True, so only load checkpoints from a source you trust")
    first = text.splitlines()[0] if text else type(exc).__name__
    return f"cannot be read, the file is damaged or truncated ({type(exc).__name__}: {first})"


@contextlib.contextmanager
def weights_only_loading() -> Iterator[None]:
    """Every ``torch.load`` inside runs with ``weights_only=True`` and DeepSpeed's safe globals; a file
    that fails to load raises :class:`CheckpointFileError` naming it."""
    original = torch.load

    def safe_load(f, *args, **kwargs):
        kwargs["weights_only"] = True
        kwargs.pop("pickle_module", None)
        try:
            return original(f, *args, **kwargs)
        except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError) as exc:
            raise CheckpointFileError(str(f), _reason(exc)) from None

    with _lock:
        saved_env = os.environ.get(FORCE_ENV)
        os.environ[FORCE_ENV] = "1"
        torch.load = safe_load
        try:
            with torch.serialization.safe_globals(deepspeed_safe_globals()):
                yield
        finally:
            torch.load = original
            if saved_env is None:
                os.environ.pop(FORCE_ENV, None)
            else:
                os.environ[FORCE_ENV] = saved_env
