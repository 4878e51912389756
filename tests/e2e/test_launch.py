"""onepeace-launch: SIGTERM to the command's process group (a scheduler, a container runtime) under the
real ``deepspeed`` launcher returns only once the checkpoint is complete, with exit 0, even when the
save takes longer than the 30 s after which DeepSpeed's per-node launcher SIGKILLs ranks."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest
from train_helpers import env, kill_tree, launch_cmd, wait_for_text, write_recipe

from onepeace.train.checkpoint import TEST_SLOW_SAVE_ENV

pytestmark = [pytest.mark.slow, pytest.mark.timeout(3600)]  # several runs; a loaded machine is slow
SLOW_SAVE_S = 40


def test_sigterm_to_the_group_waits_for_a_slow_save_and_exits_0(tmp_path, demo_corpus):
    recipe = write_recipe(tmp_path / "r.yaml", demo_corpus, steps=1000, save_every=1000)
    run_dir = tmp_path / "run"
    cmd = launch_cmd(["--config", str(recipe), "--run-dir", str(run_dir)])
    log = tmp_path / "run.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, env={**env(), TEST_SLOW_SAVE_ENV: str(SLOW_SAVE_S)}, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for_text(log, "step 2/1000", proc, timeout=600)
        os.killpg(proc.pid, signal.SIGTERM)  # the whole group of the command the user ran
        stopped_at = time.time()
        code = proc.wait(timeout=600)
        waited = time.time() - stopped_at
        latest = (run_dir / "checkpoints" / "latest").read_text()
        complete_when_returned = (run_dir / "checkpoints" / latest / "COMPLETE.json").is_file()
    finally:
        if proc.poll() is None:
            kill_tree(proc)
    text = log.read_text()
    assert code == 0, text[-4000:]
    assert complete_when_returned and waited > SLOW_SAVE_S  # returned after the save, not at once
    assert "received SIGTERM" in text and "saved checkpoint" in text and "asked 2 rank(s)" in text
    assert "Killing subprocess" not in text  # DeepSpeed's launcher never had to kill a rank
