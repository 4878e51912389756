"""onepeace-pretrain refuses bad input before any process group or DeepSpeed starts: one line on stderr,
the same line in the run's log.txt. ``main(argv)`` is called in-process: none of these gets far enough to
need a launcher."""

from __future__ import annotations

import json
import os

import pytest
import yaml
from data_fixtures import corpus  # noqa: F401 (fixture)

from onepeace.config import ConfigError
from onepeace.recipe import load_recipe
from onepeace.train.cli import main


def recipe(tmp_path, shards: str, tokenizer: str = "", **train) -> str:
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump({
        "model": {"preset": "tiny"},
        "data": {"tokenizer": tokenizer, "num_workers": 0,
                 "train": {"image-text": {"batch_size": 2, "sources": [{"shards": shards}]}}},
        "train": {"steps": 2, "precision": "fp32", **train}}))
    return str(path)


def fails(argv: list[str], capsys, run_dir, *words: str) -> str:
    assert main([*argv, "--run-dir", str(run_dir)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("onepeace-pretrain: error: ") and err.count("\n") == 1, err
    for word in words:
        assert word in err, err
    return err.strip()


def test_missing_tokenizer_shards_and_shard_files(tmp_path, capsys, corpus):  # noqa: F811
    run = tmp_path / "run"
    run.mkdir()  # a run being relaunched: its log.txt gets the error too
    err = fails(["--config", recipe(tmp_path, corpus["image-text"], str(tmp_path / "nope.json"))], capsys, run,
                "nope.json", "no such tokenizer")
    assert err.split("error: ", 1)[1] in (run / "log.txt").read_text()  # the same line in log.txt
    assert not (run / "checkpoints").exists()
    fails(["--config", recipe(tmp_path, str(tmp_path / "no-shards"), corpus["tokenizer"])], capsys, run,
          "no-shards", "no such index")
    # A shard listed in index.json but gone from disk.
    shards = tmp_path / "copy"
    shards.mkdir()
    with open(os.path.join(corpus["image-text"], "index.json")) as f:
        index = json.load(f)
    for entry in index["shards"][1:]:
        os.symlink(os.path.join(corpus["image-text"], entry["path"]), shards / entry["path"])
    (shards / "index.json").write_text(json.dumps(index))
    fails(["--config", recipe(tmp_path, str(shards), corpus["tokenizer"])], capsys, run,
          index["shards"][0]["path"], "missing on disk")


def test_ds_config_recipe_and_run_dir_that_are_the_wrong_thing(tmp_path, capsys):
    good = recipe(tmp_path, str(tmp_path / "unused"))
    (tmp_path / "run").mkdir()
    (tmp_path / "list.json").write_text("[1, 2]")
    fails(["--config", good, "--deepspeed_config", str(tmp_path / "list.json")], capsys, tmp_path / "run",
          "list.json", "must be a JSON object")
    assert "must be a JSON object" in (tmp_path / "run" / "log.txt").read_text()
    fails(["--config", str(tmp_path)], capsys, tmp_path / "run", str(tmp_path), "is a directory")
    assert main(["--config", good, "--deepspeed_config", str(tmp_path / "list.json"), "--run-dir",
                 str(tmp_path / "new")]) == 2
    assert not (tmp_path / "new").exists()  # a mistyped command leaves no run directory behind
    capsys.readouterr()
    (tmp_path / "afile").write_text("x")
    fails(["--config", good], capsys, tmp_path / "afile", "afile", "is a file")
    fails(["--config", good], capsys, tmp_path / "afile" / "run", "afile", "is a file")
    assert (tmp_path / "afile").read_text() == "x"


def test_scientific_notation_and_non_finite_numbers(tmp_path):
    path = recipe(tmp_path, "x")
    assert load_recipe(path, ["train.lr=1e-3"]).train.lr == 1e-3
    assert load_recipe(path, ["train.min_lr=2E-6", "train.eps=.5e-8"]).train.min_lr == 2e-6
    for bad in ("train.lr=.nan", "train.grad_clip=.inf", "train.lr=nan"):
        with pytest.raises(ConfigError, match="train.(lr|grad_clip): expected a (finite )?number"):
            load_recipe(path, [bad])
    (tmp_path / "sci.yaml").write_text("model: {preset: tiny}\ntrain: {lr: 3e-4}\n")
    assert load_recipe(str(tmp_path / "sci.yaml")).train.lr == 3e-4


def test_eval_out_that_is_a_directory(tmp_path, capsys):
    from onepeace.eval.cli import main as eval_main

    assert eval_main([str(tmp_path / "model"), "--data", str(tmp_path), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "--out" in err and "is a directory" in err and err.count("\n") == 1


def test_the_cli_gives_back_the_signal_handlers_it_replaced(tmp_path):
    """Its handlers only note a stop signal; left installed, they made later worker pools unkillable."""
    import signal

    from onepeace.train.cli import main

    mine = {sig: (lambda signum, frame: None) for sig in (signal.SIGTERM, signal.SIGUSR1)}
    before = {sig: signal.signal(sig, handler) for sig, handler in mine.items()}
    try:
        assert main(["--config", str(tmp_path)]) == 2  # a recipe path that is a directory
        assert {sig: signal.getsignal(sig) for sig in mine} == mine
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)
