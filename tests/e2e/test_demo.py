"""`make demo`'s driver end to end, at a size that takes a minute: corpus, launcher, evaluation, report."""

import subprocess
import sys

import pytest
from train_helpers import REPO_ROOT, env

pytestmark = pytest.mark.slow


def test_demo_driver_runs_every_stage(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "onepeace.demo", "--work", str(tmp_path / "work"), "--corpus", "glyphs", "--train-size", "48",
         "--val-size", "16", "--set", "train.steps=4", "--set", "train.eval_every=0", "--set", "train.log_every=2",
         "--no-check"], cwd=REPO_ROOT, env=env(), capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-4000:]
    text = out.stdout
    for stage in ("1/3 demo corpus", "2/3 pretraining the tiny model (2 CPU ranks", "3/3 zero-shot retrieval"):
        assert stage in text
    for metric in ("image->text R@1", "text->image R@1", "audio->text R@1", "text->audio R@1"):
        assert metric in text
    assert "x chance" in text and "held-out glyphs image-text" in text
    assert "chance  6.25%" in text  # 16 held-out samples
    assert f"TensorBoard: tensorboard --logdir {tmp_path / 'work' / 'run' / 'tensorboard'}" in text
    assert (tmp_path / "work" / "results" / "image-text.json").is_file()
