"""Run ``onepeace.train`` in this process and record every tensor-to-Python read of the training loop.

    python tests/e2e/count_step_syncs.py OUT.json -- --config R.yaml --run-dir DIR [onepeace.train flags]

Every conversion of a tensor value to a Python number goes through ``aten._local_scalar_dense`` (``item``,
``int()``, ``float()``, ``bool()``); a ``TorchDispatchMode`` sees each one. On a GPU that read makes the
host wait for the device. Each read is attributed by its Python stack: the innermost frame outside torch
decides whether DeepSpeed or this project asked for it, and the trainer method it happened under
(``_log``, ``save``, ...) whether it belongs to a logging, checkpoint or signal-check step. With CUDA,
``torch.cuda.set_sync_debug_mode("warn")`` additionally reports synchronising CUDA calls that are not
value reads (a ``nonzero``, a blocking copy), attributed the same way; "error" would stop at DeepSpeed's
own reads, which are by design.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
import warnings

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from onepeace.train import cli
from onepeace.train.trainer import Trainer

READS = {torch.ops.aten._local_scalar_dense.default, torch.ops.aten.item.default}
# Trainer methods that run only on logging, evaluation, checkpoint, signal-check and skipped steps.
SYNC_STEPS = ("_log", "_evaluate", "save", "_stop_requested", "_nonfinite")


def attribute(stack: list[traceback.FrameSummary], step: int) -> dict:
    owner, site = "other", "?"
    for frame in reversed(stack):
        path = frame.filename.replace(os.sep, "/")
        if "/torch/" in path or path.endswith(__file__.rsplit("/", 1)[-1]):
            continue
        if "/deepspeed/" in path:
            owner = "deepspeed"
        elif "/onepeace/" in path or "/data_tools/" in path:
            owner = "onepeace"
        site = f"{path.split('/site-packages/')[-1].split('/wt/')[-1]}:{frame.lineno} ({frame.name})"
        break
    phase = next((f.name for f in stack if f.name in SYNC_STEPS and f.filename.endswith("trainer.py")), "step")
    return {"step": step, "owner": owner, "site": site, "phase": phase}


class ReadCounter(TorchDispatchMode):
    def __init__(self, trainer: Trainer) -> None:
        super().__init__()
        self.trainer, self.reads = trainer, []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in READS:
            self.reads.append(attribute(traceback.extract_stack()[:-1], self.trainer.step + 1))
        return func(*args, **(kwargs or {}))


def main() -> int:
    out_path, argv = sys.argv[1], sys.argv[sys.argv.index("--") + 1:]
    found: dict = {"reads": [], "cuda_syncs": []}
    run = Trainer.run

    def counted_run(self: Trainer) -> str:
        counter = ReadCounter(self)
        if torch.cuda.is_available():
            torch.cuda.set_sync_debug_mode("warn")
            shown = warnings.showwarning

            def record(message, category, filename, lineno, file=None, line=None):
                if "synchronizing" in str(message):
                    found["cuda_syncs"].append(attribute(traceback.extract_stack()[:-1], self.step + 1))
                else:
                    shown(message, category, filename, lineno, file, line)

            warnings.showwarning = record
            warnings.simplefilter("always")
        try:
            with counter:
                return run(self)
        finally:
            found["reads"] = counter.reads
            if torch.cuda.is_available():
                torch.cuda.set_sync_debug_mode(0)

    Trainer.run = counted_run
    code = cli.main(argv)
    with open(out_path, "w") as f:
        json.dump(found, f, indent=1)
    return code


if __name__ == "__main__":
    sys.exit(main())
