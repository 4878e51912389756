"""TrainMetrics.log over 2 real gloo ranks: losses are averaged, per-rank counts (bad samples) summed.

This file is also the rank script: ``python test_train_metrics_ranks.py RANK RENDEZVOUS RUN_DIR OUT``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import torch

from onepeace.train.metrics import TrainMetrics

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def rank_main(rank: int, rendezvous: str, run_dir: str, out: str) -> None:
    torch.distributed.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=2)
    metrics = TrainMetrics(run_dir, rank == 0, torch.device("cpu"), None)
    metrics.record(loss=1.0 + rank, terms={"itc": 2.0 * rank}, samples=4, tokens=10, step_s=1.0, data_s=0.1)
    written = metrics.log(1, 10, {"train/lr": 0.5}, summed={"data/bad_samples": [3.0, 4.0][rank]})
    metrics.close()
    torch.distributed.destroy_process_group()
    with open(out, "w") as f:
        json.dump(written, f)


def test_bad_samples_are_summed_over_ranks_and_losses_averaged(tmp_path):
    procs = [subprocess.Popen([sys.executable, __file__, str(rank), str(tmp_path / "store"), str(tmp_path / "run"),
                               str(tmp_path / f"rank{rank}.json")], cwd=REPO, stderr=subprocess.PIPE, text=True,
                              env={**os.environ, "OMP_NUM_THREADS": "1"})
             for rank in (0, 1)]
    for proc in procs:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
    for rank in (0, 1):
        written = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert written["data/bad_samples"] == 7.0  # 3 + 4, not rank 0's 3
        assert written["loss/total"] == 1.5 and written["loss/itc"] == 1.0
        assert written["train/lr"] == 0.5


if __name__ == "__main__":
    rank_main(int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4])
