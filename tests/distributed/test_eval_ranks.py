"""Two real ranks (gloo) x two DataLoader workers over real shards: evaluation embeds each sample exactly
once, every rank ends with all rows (and every caption of each) in the same order, and the numbers equal
a single-process run.

25 samples in shards of 4 split 13/12 over the ranks; with batches of 3 from two workers rank 0 has 5
batches (7 + 6 samples) and rank 1 has 4 (6 + 6), so rank 1 must join rank 0's last forward with a
filler (ZeRO-3 gathers parameters in every forward). Each rank runs this file as a script.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "unit"))

from data_fixtures import build, caption, make_tokenizer, write_image  # noqa: E402

from onepeace.config import from_dict, model_config  # noqa: E402
from onepeace.data import DataConfig, Tokenizer, build_eval_loader  # noqa: E402
from onepeace.eval.embeddings import embed_batches  # noqa: E402
from onepeace.eval.gather import gather_rows, in_dataset_order  # noqa: E402
from onepeace.eval.zeroshot import Classifier, evaluate_stream  # noqa: E402
from onepeace.model import OnePeace  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CPU = torch.device("cpu")


def evaluate_twice(model, spec: dict, world_size: int) -> dict:
    """Rows from embed + gather, then the full set evaluation; placement from torch.distributed if started."""
    cfg = from_dict(DataConfig, spec["data"], "data")
    tokenizer = Tokenizer(spec["tokenizer"])
    place = {} if world_size > 1 else {"rank": 0, "world_size": 1}
    stream = build_eval_loader("val", cfg, model.config, tokenizer, **place)
    with torch.no_grad():
        local = embed_batches(model, stream, ("image", "text"), CPU)
    local.skipped = stream.bad_samples
    rows = in_dataset_order(gather_rows(local), stream.total_samples, "val")
    result = evaluate_stream(model, build_eval_loader("val", cfg, model.config, tokenizer, **place), name="val",
                             kind="image-text", device=CPU, tokenizer=tokenizer,
                             classifier=Classifier.from_file(spec["labels"], "a photo of {}"))
    return {"local": local.ids, "expected": stream.num_samples, "ids": rows.ids, "labels": rows.labels,
            "emb": rows.emb, "metrics": result.metrics, "samples": result.samples, "text_owner": rows.text_owner,
            "captions": rows.captions, "caption_rows": result.captions}


def make_multi_caption(root: str, n: int, per_shard: int) -> str:
    """Sample i (id it-i) has 1 + i % 3 captions; the last caption of it-3 repeats it-0's (a shared caption)."""
    lines = []
    for i in range(n):
        write_image(os.path.join(root, "media", f"it{i}.png"), 36 + i % 9, 28 + i % 7, seed=i)
        texts = [caption(10 * i + j) for j in range(1 + i % 3)]
        if i == 3:
            texts[-1] = caption(0)
        lines.append(json.dumps({"id": f"it-{i}", "image": f"media/it{i}.png", "texts": texts, "label": f"class{i % 3}"}))
    manifest = os.path.join(root, "it.jsonl")
    with open(manifest, "w") as f:
        f.write("\n".join(lines) + "\n")
    out = os.path.join(root, "shards", "it")
    assert build("--manifest", manifest, "--out", out, "--samples-per-shard", str(per_shard), "--workers", "1",
                 "--columns", "id=id,image=image,text=texts,label=label") == 0
    return out


def rank_main(spec_path: str) -> None:
    spec = json.load(open(spec_path))
    rank = int(os.environ["TEST_RANK"])
    torch.distributed.init_process_group("gloo", init_method=spec["init"], rank=rank, world_size=2)
    model = OnePeace(model_config("tiny"))
    model.load_state_dict(torch.load(spec["weights"], weights_only=True))
    forwards = []
    model.eval().proj["image"].register_forward_hook(lambda *_: forwards.append(1))
    out = evaluate_twice(model, spec, world_size=2)
    torch.distributed.destroy_process_group()
    torch.save({**out, "forwards": len(forwards)}, spec["out"] % rank)


def test_two_ranks_embed_each_sample_once_and_match_one_process(tmp_path):
    root = str(tmp_path)
    shards = make_multi_caption(root, 25, per_shard=4)
    labels = tmp_path / "classes.txt"
    labels.write_text("class0\nclass1\nclass2\n")
    torch.manual_seed(3)
    model = OnePeace(model_config("tiny")).eval()
    torch.save(model.state_dict(), tmp_path / "model.pt")
    spec = {"init": f"file://{tmp_path}/store", "out": str(tmp_path / "rank%d.pt"),
            "weights": str(tmp_path / "model.pt"),
            "tokenizer": make_tokenizer(root, [shards]), "labels": str(labels),
            "data": {"num_workers": 2, "eval": {"val": {"kind": "image-text", "batch_size": 3,
                                                        "sources": [{"shards": shards}]}}}}
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    procs = []
    for rank in (0, 1):
        env = {**os.environ, "TEST_RANK": str(rank), "OMP_NUM_THREADS": "1"}
        for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
            env.pop(key, None)
        procs.append(subprocess.Popen([sys.executable, os.path.abspath(__file__), str(tmp_path / "spec.json")],
                                      cwd=REPO, env=env, stderr=subprocess.PIPE, text=True))
    for proc in procs:
        _, err = proc.communicate(timeout=240)
        assert proc.returncode == 0, err
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]

    everything = sorted(f"it-{i}" for i in range(25))
    local = [r["local"] for r in ranks]
    assert [len(ids) for ids in local] == [r["expected"] for r in ranks] == [13, 12]
    assert not set(local[0]) & set(local[1]) and sorted(local[0] + local[1]) == everything
    # 5 batches on rank 0, 4 and a filler on rank 1 (the second pass, for the metrics, adds as many again).
    assert ranks[0]["forwards"] == ranks[1]["forwards"] == 2 * 5
    for r in ranks:
        assert r["ids"] == everything and r["samples"] == 25
    assert ranks[0]["labels"] == [f"class{int(i[3:]) % 3}" for i in everything]

    single = evaluate_twice(model, {**spec, "data": {**spec["data"], "num_workers": 0}}, world_size=1)
    assert single["ids"] == everything
    for m in ("image", "text"):
        torch.testing.assert_close(ranks[0]["emb"][m], single["emb"][m], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(ranks[1]["emb"][m], ranks[0]["emb"][m], rtol=0, atol=0)
    assert ranks[0]["metrics"] == ranks[1]["metrics"] == single["metrics"]
    # Every caption once, after its sample, the same on every rank: 25 samples with 1, 2, 3, 1, 2, 3... captions.
    assert single["caption_rows"] == ranks[0]["caption_rows"] == sum(1 + i % 3 for i in range(25)) == 49
    assert ranks[0]["text_owner"] == ranks[1]["text_owner"] == single["text_owner"]
    assert ranks[0]["captions"] == single["captions"] and single["emb"]["text"].shape[0] == 49
    assert single["text_owner"][:3] == ["it-0", "it-1", "it-1"]
    assert set(single["metrics"]) == {f"{d}/R@{k}" for d in ("image_to_text", "text_to_image") for k in (1, 5, 10)} | {
        "classification/top1", "classification/top3"}


if __name__ == "__main__":
    rank_main(sys.argv[1])
