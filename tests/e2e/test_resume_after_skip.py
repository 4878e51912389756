"""A resume stays exact after a non-finite loss: the engine drops that update (its gradients are NaN) and
the checkpoint records where each rank's data stream stands, and how many micro-batches of the current
data segment were consumed (grad_accum more than steps x grad_accum here)."""

from __future__ import annotations

import subprocess
import sys

import pytest
from train_helpers import REPO_ROOT, env, kill_tree, scalars, wait_for_text, write_recipe

pytestmark = [pytest.mark.slow, pytest.mark.timeout(3600)]  # several runs; a loaded machine is slow


def train_cmd(recipe, run_dir, *extra):
    return [sys.executable, "-m", "onepeace.train", "--config", str(recipe), "--run-dir", str(run_dir), *extra]


def test_resume_after_a_skipped_non_finite_update_is_bit_identical(tmp_path, demo_corpus):
    # Segments of 3 updates: the skip (update 3, 0-based) and the checkpoint (after update 4) share segment 1.
    recipe = write_recipe(tmp_path / "r.yaml", demo_corpus, steps=6, save_every=4, grad_accum=2, batch_size=4)
    nan_env = {**env(), "ONEPEACE_TEST_NONFINITE_AT_STEP": "3"}
    whole = subprocess.run(train_cmd(recipe, tmp_path / "whole"), cwd=REPO_ROOT, env=nan_env, capture_output=True,
                           text=True, timeout=1800)
    assert whole.returncode == 0, whole.stdout[-3000:] + whole.stderr[-3000:]
    assert whole.stdout.count("skipping this update") == 1

    log = tmp_path / "cut.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(train_cmd(recipe, tmp_path / "cut"), cwd=REPO_ROOT, env=nan_env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for_text(log, "saved checkpoint", proc, timeout=1800)
    finally:
        kill_tree(proc)
    assert "skipping this update" in log.read_text()
    again = subprocess.run(train_cmd(recipe, tmp_path / "cut", "--resume", "auto"), cwd=REPO_ROOT, env=env(),
                           capture_output=True, text=True, timeout=1800)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "at step 4" in again.stdout
    expected, got = scalars(tmp_path / "whole", "loss/total"), scalars(tmp_path / "cut", "loss/total")
    assert [got[s] for s in (5, 6)] == [expected[s] for s in (5, 6)]  # bit-identical on CPU
    assert scalars(tmp_path / "cut", "train/nonfinite_skipped")[6] == 1.0
