"""``onepeace-eval`` end to end on a real exported tiny model and real demo shards: the console script
with --json, two ranks under torchrun giving the same numbers, the table, and bad input (exit status 2)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from onepeace.config import model_config
from onepeace.eval.cli import main
from onepeace.model import OnePeace
from train_helpers import free_port

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("evaldemo") / "demo"
    subprocess.run([sys.executable, "-m", "data_tools.make_demo", "--out", str(out), "--train-size", "8",
                    "--val-size", "24", "--workers", "1"], check=True, capture_output=True, text=True, cwd=REPO)
    return out


@pytest.fixture(scope="module")
def export(demo, tmp_path_factory) -> Path:
    """What onepeace-export writes: config.json (model + tokenizer path), model.safetensors, tokenizer/."""
    out = tmp_path_factory.mktemp("export") / "tiny"
    (out / "tokenizer").mkdir(parents=True)
    for name in ("tokenizer.json", "tokenizer.model"):
        shutil.copy(demo / name, out / "tokenizer" / name)
    torch.manual_seed(0)
    OnePeace(model_config("tiny")).save_pretrained(str(out), extra={"tokenizer": "tokenizer/tokenizer.json"})
    return out


def env() -> dict:
    out = {**os.environ, "OMP_NUM_THREADS": "1"}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        out.pop(key, None)
    return out


def test_console_script_json_and_two_ranks_agree(demo, export, tmp_path):
    args = [str(export), "--data", str(demo / "shards" / "image-text" / "val"), "--labels",
            str(demo / "labels_image.txt"), "--batch-size", "5", "--num-workers", "1", "--json"]
    single = subprocess.run([str(BIN / "onepeace-eval"), *args, "--out", str(tmp_path / "one.json")],
                            capture_output=True, text=True, env=env(), cwd=tmp_path, timeout=180)
    assert single.returncode == 0, single.stderr
    result = json.loads(single.stdout)  # stdout is exactly one JSON object
    assert result == json.loads((tmp_path / "one.json").read_text())
    assert (result["kind"], result["samples"], result["skipped"], result["ranks"]) == ("image-text", 24, 0, 1)
    assert (result["classes"], result["template"]) == (6, "a photo of {}")
    keys = [f"{d}/R@{k}" for d in ("image_to_text", "text_to_image") for k in (1, 5, 10)]
    assert list(result["metrics"]) == keys + ["classification/top1", "classification/top5"]
    assert all(0.0 <= v <= 1.0 for v in result["metrics"].values())
    assert result["chance"]["image_to_text/R@1"] == pytest.approx(1 / 24)
    assert result["chance"]["classification/top1"] == pytest.approx(1 / 6)

    two = subprocess.run([str(BIN / "torchrun"), "--nproc_per_node", "2", "--master_port", str(free_port()),
                          "-m", "onepeace.eval.cli", *args], capture_output=True, text=True, env=env(), cwd=REPO,
                         timeout=240)
    assert two.returncode == 0, two.stderr
    both = json.loads(two.stdout)  # Gloo's connection lines must not reach stdout
    assert (both["ranks"], both["samples"]) == (2, 24)
    assert both["metrics"] == pytest.approx(result["metrics"])


def test_table_for_audio_classification_out_of_pair_shards(demo, export, capsys):
    code = main([str(export), "--data", str(demo / "shards" / "audio-text" / "val"), "--kind", "audio",
                 "--labels", str(demo / "labels_audio.txt"), "--template", "the sound of {}", "--num-workers", "0"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "(audio, 24 samples, 0 skipped)" in out
    assert "top-1 accuracy" in out and "20.00%" in out  # chance with 5 classes
    assert "R@1" not in out  # --kind audio: classification only


def _error(capsys, *argv) -> str:
    assert main([*map(str, argv)]) == 2
    return capsys.readouterr().err


def test_bad_input_exits_2_naming_the_problem(demo, export, tmp_path, capsys):
    val = demo / "shards" / "image-text" / "val"
    assert "model /nonexistent/model does not exist" in _error(capsys, "/nonexistent/model", "--data", val)
    empty = tmp_path / "empty"
    empty.mkdir()
    assert f"{empty}/index.json: no such index" in _error(capsys, export, "--data", empty)
    assert "no complete checkpoint" in _error(capsys, empty, "--data", val)
    assert "label file /no/labels.txt does not exist" in _error(capsys, export, "--data", val, "--labels",
                                                               "/no/labels.txt")
    assert "zero-shot classification needs a label file" in _error(capsys, export, "--data", val, "--kind", "image")
    assert "--template is for classification" in _error(capsys, export, "--data", val, "--template", "x {}")
    assert "has no {} where the class name goes" in _error(capsys, export, "--data", val, "--labels",
                                                           demo / "labels_image.txt", "--template", "a photo")
    assert "no such tokenizer sidecar" in _error(capsys, export, "--data", val, "--tokenizer", tmp_path / "tok.json")
    # A label file that lacks one of the samples' labels: found after the pass, named with the file.
    labels = [line for line in (demo / "labels_image.txt").read_text().split() if line != "circle"]
    partial = tmp_path / "partial.txt"
    partial.write_text("\n".join(labels) + "\n")
    err = _error(capsys, export, "--data", val, "--labels", partial, "--num-workers", "0")
    assert f"labels missing from label file {partial}: 'circle'" in err
