"""Training and evaluation on shards other tools wrote, read as they are: img2dataset's exact layout and
the LAION audio-dataset layout (48 kHz stereo FLAC, caption lists, sizes.json), each with broken samples,
indexed by the real onepeace-index-shards, trained 3 steps through the real deepspeed launcher, then
evaluated by onepeace-eval."""

from __future__ import annotations

import json
import shutil
import sys

import pytest
import yaml
from train_helpers import REPO_ROOT, deepspeed_cmd, run, scalars

sys.path.insert(0, str(REPO_ROOT / "tests" / "unit"))
from foreign_shards import write_img2dataset, write_laion_audio  # noqa: E402

pytestmark = pytest.mark.slow


def test_img2dataset_and_laion_audio_shards_train_and_evaluate(tmp_path):
    images, audio = tmp_path / "laion400m", tmp_path / "laion-audio"
    write_img2dataset(str(images), shards=2, per_shard=8, broken={"000000003": "no_txt", "000010005": "bad_json"})
    write_laion_audio(str(audio), shards=2, per_shard=6, captions_per_clip=2, broken={"4": "empty_text"})
    for args in ([str(images)], [str(audio), "--trust-sizes"]):
        out = run([sys.executable, "-m", "data_tools.index_shards", *args, "--quiet"])
        assert out.returncode == 0, out.stderr
    assert "1 sample(s) without a caption (txt)" in run([sys.executable, "-m", "data_tools.index_shards",
                                                         str(images), "--quiet"]).stderr
    tok = run([sys.executable, "-m", "data_tools.train_tokenizer", "--shards", str(images), str(audio),
               "--out", str(tmp_path / "tok"), "--vocab-size", "150"])
    assert tok.returncode == 0, tok.stderr

    recipe = {
        "model": {"preset": "tiny"},
        "data": {"tokenizer": str(tmp_path / "tok.json"), "num_workers": 1, "shuffle_buffer": 8,
                 "train": {k: {"batch_size": 4, "sources": [{"shards": str(p)}]}
                           for k, p in (("image-text", images), ("audio-text", audio))},
                 "eval": {"audio-val": {"kind": "audio-text", "batch_size": 4, "sources": [{"shards": str(audio)}]}}},
        "train": {"steps": 3, "lr": 1e-3, "warmup_steps": 1, "precision": "fp32", "log_every": 1, "save_every": 100,
                  "eval_every": 3, "data_segment_steps": 3},
    }
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe))
    run_dir = tmp_path / "run"
    out = run(deepspeed_cmd(["--config", str(tmp_path / "r.yaml"), "--run-dir", str(run_dir)]), timeout=600)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-4000:]
    assert sorted(scalars(run_dir, "loss/total")) == [1, 2, 3]
    assert scalars(run_dir, "eval/audio-val/audio_to_text/R@1")  # periodic multi-caption retrieval was logged

    def evaluate(data, *extra):
        return run([sys.executable, "-m", "onepeace.eval.cli", str(run_dir), "--data", str(data), "--json",
                    "--num-workers", "1", *extra])

    res = evaluate(audio)
    assert res.returncode == 0, res.stderr
    report = json.loads(res.stdout)
    assert report["samples"] == 11 and report["skipped"] == 1 and report["captions"] == 22  # two per clip
    assert report["duplicate_captions"]["counted_as_correct"] is True
    assert any("an item counts as found when any of its captions is retrieved" in n for n in report["notes"])
    res = evaluate(images)
    assert res.returncode == 0, res.stderr
    report = json.loads(res.stdout)
    assert report["samples"] == 14 and report["skipped"] == 2 and report["captions"] == 14

    # A sizes.json that lies: training only weighs shards by it; evaluation stops with a clear error.
    liar = tmp_path / "liar"
    shutil.copytree(audio, liar)
    (liar / "index.json").unlink()
    (liar / "sizes.json").write_text(json.dumps({"0.tar": 9, "1.tar": 6}))
    assert run([sys.executable, "-m", "data_tools.index_shards", str(liar), "--trust-sizes", "--quiet"]).returncode == 0
    res = evaluate(liar)
    assert res.returncode == 2 and "index.json lists 15" in res.stderr, res.stderr
