"""Evaluation of a real training run: the periodic evaluation the trainer logs to TensorBoard, then
``onepeace-eval`` on the run's ZeRO checkpoint (same weights, same numbers), then ``slurm/eval.sh`` on
two SLURM nodes. The run is two steps of the tiny preset on the demo corpus."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from train_helpers import REPO_ROOT, run, scalars, write_recipe

SCRIPT = REPO_ROOT / "slurm" / "eval.sh"
BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("evalrun")
    demo = root / "demo"
    subprocess.run([sys.executable, "-m", "data_tools.make_demo", "--out", str(demo), "--train-size", "16",
                    "--val-size", "24", "--workers", "1"], check=True, capture_output=True, cwd=REPO_ROOT)
    recipe = write_recipe(root / "recipe.yaml", demo, steps=2, save_every=2)
    data = yaml.safe_load(recipe.read_text())
    data["data"]["eval"] = {"val": {"kind": "image-text", "batch_size": 8,
                                    "sources": [{"shards": str(demo / "shards" / "image-text" / "val")}]}}
    recipe.write_text(yaml.safe_dump(data))
    run_dir = root / "run"
    res = run([sys.executable, "-m", "onepeace.train", "--config", str(recipe), "--run-dir", str(run_dir)])
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return {"demo": demo, "run": run_dir, "val": demo / "shards" / "image-text" / "val"}


@pytest.mark.slow
def test_cli_on_the_run_gives_what_the_trainer_logged(trained, tmp_path):
    res = run([str(BIN / "onepeace-eval"), str(trained["run"]), "--data", str(trained["val"]), "--json",
               "--num-workers", "1"])
    assert res.returncode == 0, res.stderr[-3000:]
    result = json.loads(res.stdout)
    assert result["model"].endswith("checkpoints/step00000002") and result["samples"] == 24
    for key, value in result["metrics"].items():
        assert scalars(trained["run"], f"eval/val/{key}") == {2: pytest.approx(value)}, key


@pytest.mark.slow
def test_eval_sh_on_two_nodes(trained, slurm, tmp_path):
    out = tmp_path / "result.json"
    job = slurm.submit(SCRIPT, str(trained["run"]), str(trained["val"]), "--out", str(out),
                       options=["-N2", "--ntasks-per-node=1", "--cpus-per-task=1"], timeout=300)
    assert job.returncode == 0, job.output()
    result = json.loads(out.read_text())
    assert (result["ranks"], result["samples"]) == (2, 24)
    assert "image->text R@1" in job.output()  # the table, from task 0
    for key, value in result["metrics"].items():
        assert scalars(trained["run"], f"eval/val/{key}") == {2: pytest.approx(value)}, key


def test_eval_sh_usage_errors(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    res = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, env=env)
    assert res.returncode == 2 and "expected MODEL SHARDS" in res.stderr and "Arguments" in res.stderr
    res = subprocess.run(["bash", str(SCRIPT), "runs/x", "shards/val"], capture_output=True, text=True, env=env)
    assert res.returncode == 2 and "not a SLURM job" in res.stderr
    res = subprocess.run(["bash", str(SCRIPT), str(tmp_path / "missing"), "shards/val"], capture_output=True,
                         text=True, env={**env, "SLURM_JOB_ID": "1"})
    assert res.returncode == 2 and "missing does not exist" in res.stderr
