"""Two real ranks (gloo) x two DataLoader worker processes each, over real shards.

Evaluation: the ranks together see every sample exactly once. Training: each rank gets its own
stream. The ranks learn their place from torch.distributed, not from RANK/WORLD_SIZE.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "unit"))

from data_fixtures import corpus  # noqa: E402,F401 (fixture)

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

RANK_SCRIPT = r"""
import json, os, sys
import torch.distributed as dist
from onepeace.config import from_dict, model_config
from onepeace.data import DataConfig, build_eval_loader, build_train_loader
from onepeace.distributed import rank_and_world_size

spec = json.load(open(sys.argv[1]))
rank = int(os.environ["TEST_RANK"])
dist.init_process_group("gloo", init_method=spec["init"], rank=rank, world_size=2)
place = rank_and_world_size()
model = model_config("tiny")
cfg = from_dict(DataConfig, spec["data"], "data")
evaluation = build_eval_loader("image-text", cfg, model)
eval_ids = [i for batch in evaluation for i in batch["ids"]]
stream = iter(build_train_loader(cfg, model))
train_ids = [i for _ in range(4) for i in next(stream)["image-text"]["ids"]]
dist.barrier()
dist.destroy_process_group()
with open(spec["out"] % rank, "w") as f:
    json.dump({"place": place, "eval": eval_ids, "expected": evaluation.num_samples,
               "train": train_ids, "bad": evaluation.bad_samples}, f)
"""


def test_two_ranks_two_workers_cover_the_eval_set_exactly_once(corpus, tmp_path):
    task = {"batch_size": 3, "sources": [{"shards": corpus["image-text"]}]}
    spec = {"init": f"file://{tmp_path}/store", "out": str(tmp_path / "rank%d.json"),
            "data": {"tokenizer": corpus["tokenizer"], "num_workers": 2, "shuffle_buffer": 4,
                     "train": {"image-text": task}, "eval": {"image-text": task}}}
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    (tmp_path / "rank.py").write_text(RANK_SCRIPT)
    procs = []
    for rank in (0, 1):
        # RANK/WORLD_SIZE say something else on purpose: an initialised process group wins.
        env = {**os.environ, "TEST_RANK": str(rank), "RANK": "0", "WORLD_SIZE": "1", "OMP_NUM_THREADS": "1"}
        procs.append(subprocess.Popen([sys.executable, str(tmp_path / "rank.py"), str(tmp_path / "spec.json")],
                                      cwd=REPO, env=env, stderr=subprocess.PIPE, text=True))
    for proc in procs:
        _, err = proc.communicate(timeout=180)
        assert proc.returncode == 0, err
    results = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]

    assert [r["place"] for r in results] == [[0, 2], [1, 2]]
    everything = [f"it-{i}" for i in range(24)]
    seen = results[0]["eval"] + results[1]["eval"]
    assert len(seen) == len(set(seen)) == 24 and sorted(seen) == sorted(everything)
    assert [len(r["eval"]) for r in results] == [r["expected"] for r in results] == [12, 12]
    assert all(r["bad"] == 0 for r in results)
    # Training: 4 steps of 3 from 2 workers per rank; the ranks draw from disjoint shard sets.
    assert all(len(r["train"]) == 12 for r in results)
    assert not set(results[0]["train"]) & set(results[1]["train"])
