"""A training step reads no tensor value on the host except on logging, evaluation, checkpoint and
signal-check steps: on a GPU every such read drains the launch queue.

The real CLI runs in one process under a dispatch mode that sees every ``aten._local_scalar_dense`` /
``aten.item`` (tests/e2e/count_step_syncs.py, benchmarks/_syncs.py) and attributes each by its Python
stack; on CUDA ``torch.cuda.set_sync_debug_mode`` adds the synchronising calls that are not reads."""

from __future__ import annotations

import json
import sys

import pytest
import torch
import yaml
from train_helpers import REPO_ROOT, run, write_recipe

pytestmark = pytest.mark.slow

# Reads DeepSpeed itself makes once per update (ZeRO-1/2), by the function that makes them:
# - is_invalid_grad_norm: the global gradient norm checked for inf/NaN, which decides whether the update
#   is dropped (our non-finite skip relies on it) and scales the clipping. Inherent to host-driven
#   skipping; `zero_optimization.compute_grad_norm: false` with `gradient_clipping: 0` (fp32) removes it,
#   and with it the skip.
# - _optimizer_step: torch AdamW reads its step counter, which torch keeps in a CPU tensor (not fused,
#   not capturable): a host read, not a device sync.
DEEPSPEED_READS = {"is_invalid_grad_norm", "_optimizer_step"}


def count_reads(tmp_path, corpus, steps: int, **train) -> list[dict]:
    recipe = write_recipe(tmp_path / "r.yaml", corpus, batch_size=4, steps=steps, log_every=100, save_every=100,
                          signal_check_every=100, data_segment_steps=100, **train)
    spec = yaml.safe_load(recipe.read_text())
    spec["data"]["num_workers"] = 0  # the data work is host-only; keep it in this process to show it reads nothing
    recipe.write_text(yaml.safe_dump(spec))
    out_json = tmp_path / "reads.json"
    out = run([sys.executable, str(REPO_ROOT / "tests" / "e2e" / "count_step_syncs.py"), str(out_json), "--",
               "--config", str(recipe), "--run-dir", str(tmp_path / "run")], timeout=900)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return json.loads(out_json.read_text())


def test_steps_between_logging_steps_read_nothing_from_the_device(tmp_path, demo_corpus):
    steps = 5
    reads = count_reads(tmp_path, demo_corpus, steps)
    middle = [r for r in reads if 2 <= r["step"] <= steps - 1 and r["phase"] == "step"]
    ours = [r for r in middle if r["owner"] != "deepspeed"]
    assert not ours, f"host reads in steps 2..{steps - 1} outside DeepSpeed: {ours}"
    theirs = {r["site"].rsplit("(", 1)[-1].rstrip(")") for r in middle}
    assert theirs == DEEPSPEED_READS, theirs  # a new one must be named above and in docs/benchmarks.md
    assert any(r["phase"] == "_log" for r in reads)  # the counter does see the logging steps' reads
    assert any(r["phase"] == "save" for r in reads)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA: set_sync_debug_mode reports device syncs")
def test_on_cuda_no_synchronising_call_between_logging_steps(tmp_path, demo_corpus):
    """The same run on a GPU, where torch.cuda.set_sync_debug_mode also reports syncs that are not value
    reads (a boolean-mask index's nonzero, a blocking copy)."""
    steps = 5
    reads = count_reads(tmp_path, demo_corpus, steps, precision="bf16")
    middle = [r for r in reads if 2 <= r["step"] <= steps - 1 and r["phase"] == "step" and r["owner"] != "deepspeed"]
    assert not middle, middle
