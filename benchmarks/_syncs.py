"""Counting the host's waits for the device, each attributed to the code that asked for it.

Every conversion of a tensor value to a Python number goes through ``aten._local_scalar_dense``
(``item``, ``int()``, ``float()``, ``bool()``): a ``TorchDispatchMode`` sees each one, on any device.
On CUDA, ``torch.cuda.set_sync_debug_mode("warn")`` also reports synchronising calls that are not value
reads (a ``nonzero``, a blocking copy); "error" would stop at the first one, DeepSpeed's own included.
Each event is attributed by its Python stack: the innermost frame outside torch names the owner
(deepspeed, onepeace, other) and the site; ``phase_of`` may name the phase of the caller's loop.
"""

from __future__ import annotations

import os
import traceback
import warnings
from typing import Callable

import torch
from torch.utils._python_dispatch import TorchDispatchMode

READS = {torch.ops.aten._local_scalar_dense.default, torch.ops.aten.item.default}


def attribute(stack: list[traceback.FrameSummary], skip_files: tuple[str, ...] = ()) -> dict:
    for frame in reversed(stack):
        path = frame.filename.replace(os.sep, "/")
        if "/torch/" in path or path.endswith(("/_syncs.py", *skip_files)):
            continue
        owner = ("deepspeed" if "/deepspeed/" in path else
                 "onepeace" if "/onepeace/" in path or "/data_tools/" in path else "other")
        site = path.split("/site-packages/")[-1]
        site = site[site.rindex("/onepeace/") + 1:] if "/onepeace/" in site else site
        return {"owner": owner, "site": f"{site}:{frame.lineno} ({frame.name})"}
    return {"owner": "other", "site": "?"}


class HostSyncCounter(TorchDispatchMode):
    """``with HostSyncCounter(label=...) as c:`` records ``c.events``: value reads (``kind`` "read") and,
    on CUDA, synchronising calls (``kind`` "cuda sync"), each with ``label()``, owner and site."""

    def __init__(self, label: Callable[[list[traceback.FrameSummary]], dict] = lambda stack: {}) -> None:
        super().__init__()
        self.label, self.events = label, []
        self._shown = None

    def _record(self, kind: str) -> None:
        stack = traceback.extract_stack()[:-2]
        self.events.append({"kind": kind, **attribute(stack), **self.label(stack)})

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in READS:
            self._record("read")
        return func(*args, **(kwargs or {}))

    def __enter__(self):
        if torch.cuda.is_available():
            torch.cuda.set_sync_debug_mode("warn")
            self._shown, self._filters = warnings.showwarning, list(warnings.filters)
            shown = self._shown

            def record(message, category, filename, lineno, file=None, line=None):
                if "synchroniz" in str(message):
                    self._record("cuda sync")
                else:
                    shown(message, category, filename, lineno, file, line)

            warnings.showwarning = record
            warnings.simplefilter("always")
        return super().__enter__()

    def __exit__(self, *exc):
        out = super().__exit__(*exc)
        if self._shown is not None:
            torch.cuda.set_sync_debug_mode(0)
            warnings.showwarning, warnings.filters[:] = self._shown, self._filters
        return out
