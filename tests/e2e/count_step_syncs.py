"""Run ``onepeace.train`` in this process and record every host wait of the training loop.

    python tests/e2e/count_step_syncs.py OUT.json -- --config R.yaml --run-dir DIR [onepeace.train flags]

``benchmarks/_syncs.HostSyncCounter`` records every tensor-to-Python read (and, on CUDA, every call that
``set_sync_debug_mode`` reports) with its owner (deepspeed or onepeace) and site; this script adds the
step being computed and the trainer method it happened under (``_log``, ``save``, ...), which tells
logging, checkpoint and signal-check steps from ordinary ones.
"""

from __future__ import annotations

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from benchmarks._syncs import HostSyncCounter  # noqa: E402
from onepeace.train import cli  # noqa: E402
from onepeace.train.trainer import Trainer  # noqa: E402

# Trainer methods that run only on logging, evaluation, checkpoint, signal-check and skipped steps.
SYNC_STEPS = ("_log", "_evaluate", "save", "_stop_requested", "_nonfinite")


def main() -> int:
    out_path, argv = sys.argv[1], sys.argv[sys.argv.index("--") + 1:]
    events: list[dict] = []
    run = Trainer.run

    def counted_run(self: Trainer) -> str:
        def label(stack) -> dict:
            phase = next((f.name for f in stack if f.name in SYNC_STEPS and f.filename.endswith("trainer.py")), "step")
            return {"step": self.step + 1, "phase": phase}

        counter = HostSyncCounter(label)
        try:
            with counter:
                return run(self)
        finally:
            events.extend(counter.events)

    Trainer.run = counted_run
    code = cli.main(argv)
    with open(out_path, "w") as f:
        json.dump(events, f, indent=1)
    return code


if __name__ == "__main__":
    sys.exit(main())
