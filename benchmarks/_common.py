"""Timing, memory and table helpers shared by the benchmark scripts (no third-party imports)."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import statistics
import time
from typing import Callable, Sequence

import torch


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def machine_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}"
    cpu = platform.processor() or platform.machine()
    return f"CPU {cpu} x{os.cpu_count()} ({torch.get_num_threads()} threads), torch {torch.__version__}"


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_it(fn: Callable[[], object], device: torch.device, warmup: int, repeats: int) -> float:
    """Median seconds per call."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


class SavedBytes:
    """Bytes autograd keeps for backward (a device-independent view of activation memory)."""

    def __init__(self, exclude: Sequence[torch.Tensor] = ()) -> None:
        """``exclude``: inputs, parameters and buffers, which live on whether or not autograd saves them."""
        self.total = 0
        self._seen: set[int] = {id(t.untyped_storage()) for t in exclude if t.device.type != "meta"}

    def pack(self, t: torch.Tensor):
        key = id(t.untyped_storage()) if t.device.type != "meta" else id(t)
        if key not in self._seen:
            self._seen.add(key)
            self.total += t.untyped_storage().nbytes()
        return t

    @contextlib.contextmanager
    def track(self):
        with torch.autograd.graph.saved_tensors_hooks(self.pack, lambda t: t):
            yield self


def peak_memory(fn: Callable[[], object], device: torch.device) -> float | None:
    """Peak CUDA memory of one call above what was allocated before it, in MiB (None on CPU)."""
    if device.type != "cuda":
        return None
    synchronize(device)
    torch.cuda.empty_cache()
    base = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    synchronize(device)
    return (torch.cuda.max_memory_allocated(device) - base) / 2**20


def print_table(headers: Sequence[str], rows: Sequence[Sequence[object]], title: str = "") -> str:
    cells = [[str(h) for h in headers]] + [[_fmt(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = [title] if title else []
    lines.append("| " + " | ".join(c.ljust(w) for c, w in zip(cells[0], widths)) + " |")
    lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in cells[1:]:
        lines.append("| " + " | ".join(c.rjust(w) for c, w in zip(row, widths)) + " |")
    text = "\n".join(lines)
    print(text, flush=True)
    return text


def _fmt(value: object) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 100 else f"{value:,.0f}"
    return str(value)


def write_json(path: str | None, payload: dict) -> None:
    if path:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, "w") as f:
            json.dump(payload, f, indent=2)


def parse_dtype(name: str) -> torch.dtype:
    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[name]
