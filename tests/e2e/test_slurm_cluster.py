"""The test harness for the cluster: job submission, states and output, its record parser. SLURM's own
behaviour (node spans, exit codes, signals, requeue) is exercised by the tests of the scripts that rely on it."""

from __future__ import annotations

import pytest
from slurm_cluster import FINAL_STATES, parse_record

pytestmark = pytest.mark.slow


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


def test_parse_record_handles_keys_with_punctuation_and_empty_values():
    rec = parse_record("JobId=5 AllocNode:Sid=vm:1 CPUs/Task=1 Reason=None Comment= Command=/a b=c d ExitCode=0:15")
    assert rec == {"JobId": "5", "AllocNode:Sid": "vm:1", "CPUs/Task": "1", "Reason": "None", "Comment": "",
                   "Command": "/a", "b": "c d", "ExitCode": "0:15"}
    assert "COMPLETED" in FINAL_STATES and "PENDING" not in FINAL_STATES
