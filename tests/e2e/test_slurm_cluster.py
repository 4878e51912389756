"""The test cluster itself: two nodes, exit codes, job output, signals to the batch shell and requeue."""

from __future__ import annotations

import pytest
from slurm_cluster import FINAL_STATES, parse_record, wait_for

pytestmark = pytest.mark.slow


def test_two_node_job_spans_n1_and_n2(slurm):
    job = slurm.submit(wrap="srun -l bash -c 'echo node=$SLURMD_NODENAME procid=$SLURM_PROCID'",
                       options=["-N2", "--ntasks-per-node=1", "-J", "two-nodes"])
    assert job.returncode == 0, job.output()
    lines = sorted(line.split(":", 1)[1].strip() for line in job.output().splitlines() if ":" in line)
    assert lines == ["node=n1 procid=0", "node=n2 procid=1"], job.output()


def test_sbatch_wait_returns_the_job_exit_code(slurm):
    res = slurm.run("sbatch", "--wait", f"--output={slurm.jobs_dir}/%x-%j.out", "--wrap", "exit 7",
                    check=False, timeout=60)
    assert res.returncode == 7, res.stdout + res.stderr


def test_submit_waits_and_reports_exit_code_state_and_output(slurm):
    ok = slurm.submit(wrap="echo to-stdout; echo to-stderr >&2; test -n \"$SLURM_CONF\"", options=["-J", "ok"])
    assert ok.returncode == 0 and ok.states == ["COMPLETED"]
    assert ok.output() == "to-stdout\nto-stderr\n"
    assert ok.output_paths() == [slurm.jobs_dir / f"ok-{ok.job_id}.out"]

    bad = slurm.submit(wrap="exit 3")
    assert bad.returncode == 3 and bad.states == ["FAILED"]
    # Finished jobs are also kept in the job-completion log.
    assert {"JobState": "FAILED", "ExitCode": "3:0"}.items() <= next(
        r for r in slurm.completions() if r["JobId"] == bad.job_id).items()


def test_usr1_to_batch_shell_then_requeue_reruns_job(slurm, tmp_path):
    script = tmp_path / "requeue.sh"
    script.write_text(
        "#!/bin/bash\n"
        "#SBATCH --requeue\n"
        "#SBATCH --open-mode=append\n"  # a requeued job truncates its output file otherwise
        'echo "run restart=${SLURM_RESTART_COUNT:-0}"\n'
        "if [ \"${SLURM_RESTART_COUNT:-0}\" -ge 1 ]; then exit 0; fi\n"
        'trap \'echo got USR1; scontrol requeue "$SLURM_JOB_ID"; exit 0\' USR1\n'
        "touch \"$1\"\n"
        "for i in $(seq 600); do sleep 0.1; done\n"
        "exit 9\n")
    ready = tmp_path / "ready"
    job = slurm.submit(script, str(ready), wait=False)
    slurm.wait_state(job.job_id, "RUNNING")
    wait_for(ready.exists, timeout=30, what="the script to set its trap")
    slurm.signal(job.job_id, "USR1")
    job.wait(timeout=90)
    assert job.returncode == 0 and job.states == ["COMPLETED"]
    assert job.records[0]["Restarts"] == "1"
    # `scontrol requeue` kills what is left of the first run (slurmstepd may say so in the output): in a
    # real script, requeue only once the checkpoint is written.
    lines = [line for line in job.output().splitlines() if not line.startswith("slurmstepd")]
    assert lines == ["run restart=0", "got USR1", "run restart=1"], job.output()


def test_parse_record_handles_keys_with_punctuation_and_empty_values():
    rec = parse_record("JobId=5 AllocNode:Sid=vm:1 CPUs/Task=1 Reason=None Comment= Command=/a b=c d ExitCode=0:15")
    assert rec == {"JobId": "5", "AllocNode:Sid": "vm:1", "CPUs/Task": "1", "Reason": "None", "Comment": "",
                   "Command": "/a", "b": "c d", "ExitCode": "0:15"}
    assert "COMPLETED" in FINAL_STATES and "PENDING" not in FINAL_STATES
