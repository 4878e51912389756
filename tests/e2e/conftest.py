"""Fixtures for the end-to-end tests: a real SLURM cluster shared by the whole session.

    def test_something(slurm):                       # slurm: a slurm_cluster.SlurmCluster
        job = slurm.submit("slurm/x.sh", "arg", options=["-N2"])
        assert job.returncode == 0, job.output()

Without the SLURM binaries the tests that use these fixtures skip, saying what to install; with
ONEPEACE_CI=1 (set by .ci/run) they fail instead, since CI installs the packages.
"""

from __future__ import annotations

import os

import pytest
from slurm_cluster import SlurmCluster, unavailable_reason


@pytest.fixture(scope="session")
def slurm_cluster():
    """One cluster (slurmctld + slurmd n1, n2) for the session; stopped and removed at the end."""
    reason = unavailable_reason()
    if reason:
        if os.environ.get("ONEPEACE_CI") == "1":
            pytest.fail(f"{reason}; ONEPEACE_CI=1, so this is a failure (.ci/run installs them)", pytrace=False)
        pytest.skip(reason)
    cluster = SlurmCluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def slurm(slurm_cluster):
    """The session's cluster, cleaned after each test: jobs it left are cancelled, nodes made idle again."""
    yield slurm_cluster
    slurm_cluster.cancel_all()
    slurm_cluster.ensure_nodes_idle()


@pytest.fixture(scope="session")
def demo_corpus(tmp_path_factory):
    """A small demo corpus (24 training and 16 validation samples per modality) built by the real tools."""
    import subprocess
    import sys

    out = tmp_path_factory.mktemp("corpus") / "demo"
    subprocess.run([sys.executable, "-m", "data_tools.make_demo", "--out", str(out), "--train-size", "24",
                    "--val-size", "16", "--workers", "1"], check=True, capture_output=True, text=True)
    return out
