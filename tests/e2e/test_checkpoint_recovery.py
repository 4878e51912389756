"""Damaged and tampered checkpoints of a real 2-rank run (the deepspeed launcher, ZeRO-1, CPU).

The newest checkpoint loses one rank's ZeRO shard or is truncated: ``--resume auto``, ``onepeace-export``
and ``onepeace-eval`` fall back to the previous complete one and say which file is damaged; naming the
damaged checkpoint explicitly is a one-line error. A checkpoint with a planted pickle payload is refused
(weights-only loading, DeepSpeed's loader included) and the payload never runs.
"""

from __future__ import annotations

import json
import os
import shutil
import sys

import pytest
import torch
from train_helpers import BIN, deepspeed_cmd, run, write_recipe

from onepeace import runs

pytestmark = [pytest.mark.slow, pytest.mark.timeout(3600)]  # several runs; a loaded machine is slow


@pytest.fixture(scope="module")
def trained(tmp_path_factory, demo_corpus):
    """A 2-rank run with complete checkpoints at steps 1, 2 and 3."""
    root = tmp_path_factory.mktemp("recovery")
    recipe = write_recipe(root / "r.yaml", demo_corpus, steps=3, save_every=1, keep_last=5)
    out = run(deepspeed_cmd(["--config", str(recipe), "--run-dir", str(root / "run")]), timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return {"recipe": recipe, "run": root / "run", "val": demo_corpus / "shards" / "image-text" / "val"}


def one_error_line(stderr: str, prog: str) -> bool:
    """The error is one line (DeepSpeed's own notices may come before it), with no traceback."""
    return [line.startswith(f"{prog}: error: ") for line in stderr.splitlines()].count(True) == 1 \
        and "Traceback" not in stderr and stderr.rstrip().splitlines()[-1].startswith(f"{prog}: error: ")


def copy_run(trained, dest):
    shutil.copytree(trained["run"], dest)
    return dest, dest / "checkpoints" / "step00000003"


def test_resume_auto_falls_back_from_a_lost_zero_shard(trained, tmp_path):
    run_dir, newest = copy_run(trained, tmp_path / "run")
    lost = newest / "zero_pp_rank_1_mp_rank_00_optim_states.pt"
    assert lost.is_file()
    lost.unlink()
    out = run(deepspeed_cmd(["--config", str(trained["recipe"]), "--run-dir", str(run_dir), "--resume", "auto",
                             "--set", "train.steps=4"]), timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    log = (run_dir / "log.txt").read_text()
    assert f"{lost} is missing" in log and "falling back to the previous complete checkpoint step00000002" in log
    assert "resumed from" in log and "step00000002 at step 2" in log
    assert (run_dir / "checkpoints" / "step00000004" / runs.COMPLETE).is_file()


def test_export_and_eval_fall_back_and_an_explicit_damaged_checkpoint_is_one_line(trained, tmp_path):
    run_dir, newest = copy_run(trained, tmp_path / "run")
    shard = newest / "zero_pp_rank_0_mp_rank_00_optim_states.pt"
    with open(shard, "r+b") as f:
        f.truncate(shard.stat().st_size // 2)
    out = run([str(BIN / "onepeace-export"), str(run_dir), str(tmp_path / "export")])
    assert out.returncode == 0, out.stderr
    assert f"{shard} is" in out.stderr and "truncated" in out.stderr and "falling back" in out.stderr
    assert "step00000002" in out.stdout
    out = run([str(BIN / "onepeace-eval"), str(run_dir), "--data", str(trained["val"]), "--json",
               "--num-workers", "0"])
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.startswith("{"), out.stdout[:3000]  # stdout holds the JSON result alone
    assert f"{shard} is" in out.stderr and json.loads(out.stdout)["model"].endswith("step00000002")

    out = run([str(BIN / "onepeace-export"), str(newest), str(tmp_path / "export2")])
    assert out.returncode == 2 and one_error_line(out.stderr, "onepeace-export"), out.stderr
    assert str(shard) in out.stderr and "truncated" in out.stderr
    out = run([sys.executable, "-m", "onepeace.train", "--config", str(trained["recipe"]), "--run-dir",
               str(tmp_path / "again"), "--resume", str(newest), "--set", "train.steps=4"])
    assert out.returncode == 2, out.stdout[-3000:] + out.stderr[-3000:]
    errors = [line for line in (tmp_path / "again" / "log.txt").read_text().splitlines() if " ERROR " in line]
    assert len(errors) == 1 and str(shard) in errors[0] and "Traceback" not in out.stderr


class Payload:
    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_planted_pickle_payload_is_refused_on_resume_and_export(trained, tmp_path):
    run_dir, newest = copy_run(trained, tmp_path / "run")
    marker = tmp_path / "pwned"
    states = newest / "mp_rank_00_model_states.pt"
    planted = torch.load(states, weights_only=False)
    planted["payload"] = Payload(str(marker))
    torch.save(planted, states)
    complete = json.loads((newest / runs.COMPLETE).read_text())
    complete["files"] = runs.checkpoint_files(str(newest))  # a careful attacker fixes the sizes too
    (newest / runs.COMPLETE).write_text(json.dumps(complete))

    out = run([str(BIN / "onepeace-export"), str(newest), str(tmp_path / "export")])
    assert out.returncode == 2 and one_error_line(out.stderr, "onepeace-export"), out.stderr
    assert str(states) in out.stderr and "refused" in out.stderr and "trust" in out.stderr
    out = run([sys.executable, "-m", "onepeace.train", "--config", str(trained["recipe"]), "--run-dir",
               str(tmp_path / "again"), "--resume", str(newest), "--set", "train.steps=4"])
    assert out.returncode == 2, out.stdout[-3000:] + out.stderr[-3000:]
    assert str(states) in (tmp_path / "again" / "log.txt").read_text() and "refused" in out.stdout
    assert not marker.exists()
