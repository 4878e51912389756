"""The clip-benchmark package's own evaluation on an exported onepeace model, through
``python -m onepeace.integrations.clip_benchmark``, on local WebDataset datasets in its layout that the
test writes; its retrieval numbers must equal onepeace-eval's on the same shards."""

from __future__ import annotations

import io
import json
import sys
import tarfile

import pytest
import torch
from train_helpers import REPO_ROOT, run

sys.path.insert(0, str(REPO_ROOT / "tests" / "unit"))
from data_fixtures import caption  # noqa: E402
from foreign_shards import image_bytes  # noqa: E402

from data_tools import train_tokenizer  # noqa: E402
from onepeace.config import model_config  # noqa: E402
from onepeace.model import OnePeace  # noqa: E402

pytest.importorskip("clip_benchmark.cli", reason="pip install -e .[clip-benchmark] (clip-benchmark and requests)")
pytestmark = pytest.mark.slow


def _add(tar, name, data):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def write_wds(root, retrieval: bool, n: int = 12):
    (root / "test").mkdir(parents=True)
    (root / "test" / "nshards.txt").write_text("1")
    with tarfile.open(root / "test" / "0.tar", "w") as tar:
        for i in range(n):
            _add(tar, f"s{i:04d}.webp", image_bytes(i, "WEBP"))
            if retrieval:
                _add(tar, f"s{i:04d}.txt", "\n".join(caption(10 * i + j) for j in range(2)).encode())
            else:  # the class index for clip_benchmark, the class name for onepeace-eval
                _add(tar, f"s{i:04d}.cls", str(i % 3).encode())
                _add(tar, f"s{i:04d}.json", json.dumps({"label": ("red", "green", "blue")[i % 3]}).encode())
    if retrieval:
        (root / "dataset_type.txt").write_text("retrieval")
    else:
        (root / "classnames.txt").write_text("red\ngreen\nblue\n")
        (root / "zeroshot_classification_templates.txt").write_text("a photo of {c}\n")


def test_clip_benchmark_runs_on_an_export_and_agrees_with_onepeace_eval(tmp_path):
    retrieval, classes = tmp_path / "wds" / "pairs", tmp_path / "wds" / "colours"
    write_wds(retrieval, True)
    write_wds(classes, False)
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(caption(i) for i in range(200)) + "\nred green blue a photo of picture\n")
    export = tmp_path / "export"
    (export / "tokenizer").mkdir(parents=True)
    assert train_tokenizer.main(["--text-file", str(corpus), "--out", str(export / "tokenizer" / "tok"),
                                 "--vocab-size", "150"]) == 0
    torch.manual_seed(0)
    OnePeace(model_config("tiny")).save_pretrained(str(export), extra={"tokenizer": "tokenizer/tok.json"})

    def bench(dataset, root, task):
        out = tmp_path / f"{task}.json"
        res = run([sys.executable, "-m", "onepeace.integrations.clip_benchmark", "eval", "--pretrained", str(export),
                   "--dataset", f"wds/{dataset}", "--dataset_root", str(root), "--task", task, "--no_amp",
                   "--batch_size", "5", "--num_workers", "0", "--recall_k", "1", "5", "--output", str(out)])
        assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
        return json.loads(out.read_text())["metrics"]

    metrics = bench("pairs", retrieval, "zeroshot_retrieval")
    classification = bench("colours", classes, "zeroshot_classification")
    assert "mean_per_class_recall" in classification

    index = run([sys.executable, "-m", "data_tools.index_shards", str(retrieval / "test"), "--caption", "txt-lines",
                 "--quiet"])
    assert index.returncode == 0, index.stderr
    ours = run([sys.executable, "-m", "onepeace.eval.cli", str(export), "--data", str(retrieval / "test"), "--json",
                "--num-workers", "0", "--strict-captions"])
    assert ours.returncode == 0, ours.stderr
    report = json.loads(ours.stdout)
    assert report["captions"] == 24
    for k in (1, 5):  # clip_benchmark: image_retrieval = text->image, text_retrieval = image->text
        assert report["metrics"][f"text_to_image/R@{k}"] == pytest.approx(metrics[f"image_retrieval_recall@{k}"])
        assert report["metrics"][f"image_to_text/R@{k}"] == pytest.approx(metrics[f"text_retrieval_recall@{k}"])

    assert run([sys.executable, "-m", "data_tools.index_shards", str(classes / "test"), "--quiet"]).returncode == 0
    ours = run([sys.executable, "-m", "onepeace.eval.cli", str(export), "--data", str(classes / "test"), "--json",
                "--num-workers", "0", "--kind", "image", "--labels", str(classes / "classnames.txt"),
                "--template", "a photo of {}"])
    assert ours.returncode == 0, ours.stderr
    assert json.loads(ours.stdout)["metrics"]["classification/top1"] == pytest.approx(classification["acc1"])


def test_the_accuracy_fix_computes_what_clip_benchmark_means():
    from onepeace.integrations.clip_benchmark import topk_accuracy

    logits = torch.tensor([[0.1, 0.9, 0.0], [0.8, 0.1, 0.3], [0.2, 0.3, 0.5], [0.4, 0.35, 0.3]])
    target = torch.tensor([1, 2, 2, 2])
    # top-1: rows 0 and 2 right; top-2: row 1 too (0.3 is second); row 3's target is last.
    assert topk_accuracy(logits, target, topk=(1, 2)) == [0.5, 0.75]

