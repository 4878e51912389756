"""slurm/pretrain.sh on the test cluster (nodes n1 and n2, 2 CPUs each, both this machine): the tiny preset
trains on 2 nodes x 1 task over gloo, and a job preempted with ``scancel --signal=USR1 --batch`` checkpoints,
requeues itself, resumes and finishes with the same loss curve as an uninterrupted run."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from slurm_cluster import REPO_ROOT, SlurmCluster, SlurmJob
from train_helpers import free_port, scalars, write_recipe

pytestmark = pytest.mark.slow

SCRIPT = REPO_ROOT / "slurm" / "pretrain.sh"
TWO_NODES = ["-N2", "--ntasks-per-node=1"]


def job_env(**more: str) -> dict[str, str]:
    # A free port rather than the trainer's 20000 + job id: other test clusters on this machine number
    # their jobs from 1 too.
    return {"MASTER_PORT": str(free_port()), "PYTHONUNBUFFERED": "1", **more}


def checkpoint_steps(run_dir: Path) -> list[int]:
    ckpts = run_dir / "checkpoints"
    return sorted(int(p.name[4:]) for p in ckpts.glob("step*") if (p / "COMPLETE.json").is_file())


def wait_for_log(slurm: SlurmCluster, job: SlurmJob, path: Path, text: str, timeout: float = 240) -> None:
    """Until ``text`` is in ``path`` (the trainer's log.txt); fails at once if the job ended first."""
    deadline = time.monotonic() + timeout
    while not (path.exists() and text in path.read_text(errors="replace")):
        state = slurm.state(job.job_id)
        if state in {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL"} or time.monotonic() > deadline:
            raise AssertionError(f"{text!r} not in {path} (job {job.job_id}: {state or 'unknown'}):\n"
                                 f"{job.output()[-4000:]}")
        time.sleep(0.2)


def test_two_nodes_train_the_tiny_preset_and_exit_0(slurm, tmp_path, demo_corpus):
    recipe = write_recipe(tmp_path / "tiny.yaml", demo_corpus, steps=100)
    run_dir = tmp_path / "run"
    # The way a user runs it: RECIPE RUN_DIR and trainer flags as arguments, relative to the submit directory.
    job = slurm.submit(SCRIPT, "tiny.yaml", "run", "--set", "train.steps=4", cwd=tmp_path, env=job_env(),
                       options=[*TWO_NODES, "--cpus-per-task=2"], timeout=300)
    out = job.output()
    assert job.returncode == 0 and job.states == ["COMPLETED"], out[-4000:]
    assert f"{recipe} -> {run_dir} with 2 task(s) on n[1-2]" in out
    assert "2 rank(s) via slurm" in out and "device cpu" in out
    assert "finished at step 4" in out and "requeue" not in out
    assert checkpoint_steps(run_dir) == [4] and (run_dir / "checkpoints" / "latest").read_text() == "step00000004"
    assert sorted(scalars(run_dir, "loss/total")) == [1, 2, 3, 4]


def test_usage_errors_exit_2(slurm, tmp_path):
    logs = tmp_path / "logs"
    logs.mkdir()
    small = ["--ntasks-per-node=1", "-c1"]  # the header asks for 8 tasks of 8 CPUs
    none = slurm.submit(SCRIPT, options=[*small, f"--output={logs}/none.out"], cwd=tmp_path, timeout=60)
    assert none.returncode == 2 and "expected RECIPE RUN_DIR" in none.output()
    missing = slurm.submit(SCRIPT, "nope.yaml", "run", options=[*small, f"--output={logs}/missing.out"], cwd=tmp_path,
                           timeout=60)
    assert missing.returncode == 2, missing.output()
    assert f"recipe nope.yaml does not exist (relative paths are taken from {tmp_path})" in missing.output()
    assert "shipped recipes: " in missing.output() and "stage1_vl_tiny" in missing.output()
    bad_ds = slurm.submit(SCRIPT, "stage1_vl_tiny", "run", env={"DS_CONFIG": "nope.json"}, cwd=tmp_path,
                          options=[*small, f"--output={logs}/ds.out"], timeout=60)
    assert bad_ds.returncode == 2 and "DS_CONFIG=nope.json does not exist" in bad_ds.output()
    assert not (tmp_path / "run").exists()


def test_preemption_checkpoints_requeues_and_resumes_where_it_stopped(slurm, tmp_path, demo_corpus):
    steps = 12
    recipe = write_recipe(tmp_path / "tiny.yaml", demo_corpus, steps=steps, log_every=1, save_every=1000)
    # One CPU per task, so the uninterrupted reference (same recipe, same script, same 2 ranks and threads:
    # bit-identical on CPU) runs on the same nodes at the same time as the preempted job.
    options = [*TWO_NODES, "--cpus-per-task=1"]
    reference = slurm.submit(SCRIPT, str(recipe), str(tmp_path / "reference"), env=job_env(), options=options,
                             wait=False)
    # RECIPE, RUN_DIR, DS_CONFIG and OVERRIDES from the environment this time.
    run_dir = tmp_path / "preempted"
    job = slurm.submit(SCRIPT, env=job_env(RECIPE=str(recipe), RUN_DIR=str(run_dir), DS_CONFIG="ds_configs/cpu.json",
                                           OVERRIDES=f"train.steps={steps} train.log_every=1"),
                       options=options, wait=False)

    wait_for_log(slurm, job, run_dir / "log.txt", f"step 3/{steps}")
    slurm.signal(job.job_id, "USR1")  # scancel --signal=USR1 --batch: only the batch shell's trap gets it
    job.wait(timeout=400)
    reference.wait(timeout=400)
    out = job.output()  # --open-mode=append: both runs of the job
    assert reference.returncode == 0, reference.output()[-4000:]
    assert job.returncode == 0 and job.states == ["COMPLETED"], out[-4000:]

    # The first run: the trap forwarded USR1, the ranks checkpointed at step K and exited, the job requeued itself.
    assert "received SIGUSR1: asking the ranks to save a checkpoint" in out
    log = (run_dir / "log.txt").read_text()
    stop = int(log.split("received SIGUSR1: saving a checkpoint at step ")[1].split()[0])
    assert 3 <= stop < steps, log
    assert f"stopped at step {stop}" in log and f"stopped at step {stop}: requeueing job {job.job_id}" in out
    assert checkpoint_steps(run_dir) == [stop, steps]

    # SLURM ran it twice: the requeued run is recorded as PENDING, the second ended COMPLETED.
    (record,) = job.records
    assert record["Restarts"] == "1" and record["ExitCode"] == "0:0"
    runs = [c["JobState"] for c in slurm.completions() if c["JobId"] == job.job_id]
    assert runs == ["PENDING", "COMPLETED"], runs

    # The second run resumed from that checkpoint by itself and finished at exactly the requested step.
    assert f"restart 1 of job {job.job_id}: resuming" in out
    assert f"resumed from {run_dir}/checkpoints/step{stop:08d} at step {stop}" in log
    assert log.count("2 rank(s) via slurm") == 2 and f"finished at step {steps}" in log
    assert (run_dir / "checkpoints" / "latest").read_text() == f"step{steps:08d}"

    # The loss curve: every step once, and each equal to the uninterrupted run, before and after the stop.
    expected, got = scalars(tmp_path / "reference", "loss/total"), scalars(run_dir, "loss/total")
    assert sorted(got) == sorted(expected) == list(range(1, steps + 1))
    assert [got[s] for s in range(stop + 1, steps + 1)] == [expected[s] for s in range(stop + 1, steps + 1)]
    assert got == expected
    for tag in ("train/lr", "loss/image-text/itc"):
        assert scalars(run_dir, tag)[steps] == scalars(tmp_path / "reference", tag)[steps], tag


def test_sigterm_checkpoints_and_ends_without_requeue(slurm, tmp_path, demo_corpus):
    """TERM to the batch shell (a cancel, or a site's own preemption notice) still checkpoints, but the job ends."""
    recipe = write_recipe(tmp_path / "tiny.yaml", demo_corpus, steps=1000, save_every=1000)
    run_dir = tmp_path / "run"
    job = slurm.submit(SCRIPT, str(recipe), str(run_dir), env=job_env(), options=[*TWO_NODES, "--cpus-per-task=2"],
                       wait=False)
    wait_for_log(slurm, job, run_dir / "log.txt", "step 2/1000")
    slurm.signal(job.job_id, "TERM")
    job.wait(timeout=240)
    out = job.output()
    # srun would kill the tasks on TERM: the script passes it on as USR1, which the trainer treats alike.
    assert job.returncode == 0 and job.states == ["COMPLETED"], out[-4000:]
    (stop,) = checkpoint_steps(run_dir)
    assert 2 <= stop < 1000 and f"stopped at step {stop} after SIGTERM; not requeued" in out
    assert job.records[0]["Restarts"] == "0" and "requeueing" not in out
