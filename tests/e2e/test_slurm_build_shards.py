"""slurm/build_shards.sh on the test cluster: a job array of split builds plus a dependent merge job gives
the same samples as one plain build of the same manifest."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from slurm_cluster import REPO_ROOT

pytestmark = pytest.mark.slow

SCRIPT = REPO_ROOT / "slurm" / "build_shards.sh"


def write_manifest(root: Path, good: int) -> Path:
    """``good`` small noise images with captions, plus one row whose image is missing (a reject)."""
    rng = np.random.default_rng(0)
    rows = ["id\timage\ttext"]
    for i in range(good):
        pixels = rng.integers(0, 256, size=(12 + i, 16 + 2 * i, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / f"img{i}.png")
        rows.append(f"sample{i}\timg{i}.png\tA  caption of picture {i} ")
    rows.append("gone\tmissing.png\ta caption")
    manifest = root / "train.tsv"
    manifest.write_text("\n".join(rows) + "\n")
    return manifest


def samples(build_dir: Path) -> dict[str, tuple]:
    """key -> (KEY.json decoded, KEY.txt, KEY.jpg bytes) over every shard the build's index lists."""
    index = json.loads((build_dir / "index.json").read_text())
    members: dict[str, dict[str, bytes]] = {}
    for shard in index["shards"]:
        with tarfile.open(build_dir / shard["path"]) as tar:
            for member in tar.getmembers():
                key, ext = member.name.split(".", 1)
                members.setdefault(key, {})[ext] = tar.extractfile(member).read()
    return {key: (json.loads(m["json"]), m["txt"].decode(), m["jpg"]) for key, m in members.items()}


def test_array_job_and_merge_give_the_same_samples_as_one_build(slurm, tmp_path):
    media = tmp_path / "media"
    media.mkdir()
    manifest = write_manifest(media, good=9)
    flags = ["--samples-per-shard", "2"]

    subprocess.run([sys.executable, "-m", "data_tools.build_shards", "--manifest", str(manifest),
                    "--out", str(tmp_path / "single"), "--workers", "1", "--quiet", *flags],
                   cwd=REPO_ROOT, check=True, capture_output=True, timeout=120)

    logs = tmp_path / "logs"
    logs.mkdir()
    out = tmp_path / "sharded"
    # Submitted from elsewhere with relative paths: they resolve against the submit directory, and the
    # script finds the repository from its own submitted path.
    job = slurm.submit(SCRIPT, "media/train.tsv", "sharded", *flags, env={"PYTHON": sys.executable}, cwd=tmp_path,
                       options=["--array=0-2", "--cpus-per-task=1", f"--output={logs}/%x-%A_%a.out"], timeout=180)
    assert job.returncode == 0 and job.states == ["COMPLETED"] * 3, job.output()
    assert [p.name for p in job.output_paths()] == [f"build_shards-{job.job_id}_{i}.out" for i in range(3)]

    found = re.search(r"merge job (\d+) will write", job.output())
    assert found, job.output()
    (merge_record,) = slurm.wait(found.group(1), timeout=120)
    merge_log = Path(merge_record["StdOut"])
    assert merge_record["JobState"] == "COMPLETED" and merge_record["ExitCode"] == "0:0", merge_log.read_text()
    assert merge_log.parent == logs and merge_record["JobName"] == "build_shards-merge"

    single = json.loads((tmp_path / "single" / "index.json").read_text())
    merged = json.loads((out / "index.json").read_text())
    assert [p["split_index"] for p in merged["source"]["parts"]] == [0, 1, 2]
    assert all(p["num_splits"] == 3 for p in merged["source"]["parts"])
    assert all(s["path"].startswith(f"split-00{i // 2}/") for i, s in enumerate(merged["shards"]))
    assert merged["total_samples"] == single["total_samples"] == 9
    assert merged["rejected"] == single["rejected"] == {"missing_file": 1}
    assert merged["kind"] == single["kind"] and merged["settings"] == single["settings"]

    expected = samples(tmp_path / "single")
    assert {meta["id"] for meta, _, _ in expected.values()} == {f"sample{i}" for i in range(9)}
    assert samples(out) == expected  # same keys, metadata, captions and image bytes


def test_usage_errors_and_a_failed_split_leave_no_merge_job_behind(slurm, tmp_path):
    manifest = write_manifest(tmp_path, good=2)
    logs = tmp_path / "logs"
    logs.mkdir()
    common = dict(env={"PYTHON": sys.executable}, cwd=tmp_path, timeout=60)

    gappy = slurm.submit(SCRIPT, str(manifest), "out", options=["--array=0,2", "-c1", f"--output={logs}/gappy-%a.out"],
                         **common)
    assert gappy.returncode == 2
    assert "the array must be 0-1" in gappy.output() and "NUM_SPLITS" in gappy.output()

    missing = slurm.submit(SCRIPT, "nope.tsv", "out", options=["--array=0-1", "-c1", f"--output={logs}/missing-%a.out"],
                           **common)
    assert missing.returncode == 2 and "manifest" in missing.output() and "does not exist" in missing.output()

    # Every split fails in the builder (a flag it rejects) after the merge job was submitted: SLURM
    # cancels the merge job since its dependency can never be met.
    failed = slurm.submit(SCRIPT, str(manifest), "out", "--image-size", "big",
                          options=["--array=0-1", "-c1", f"--output={logs}/failed-%a.out"], **common)
    assert failed.returncode == 2 and "--image-size" in failed.output()
    merge_id = re.search(r"merge job (\d+) will write", failed.output()).group(1)
    (merge,) = slurm.wait(merge_id, timeout=60)
    assert merge["JobState"] == "CANCELLED" and not (tmp_path / "out" / "index.json").exists()
