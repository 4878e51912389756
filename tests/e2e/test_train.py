"""Pretraining through the real CLI and the real ``deepspeed`` launcher, 2 CPU ranks over gloo."""

from __future__ import annotations

import json
import math
import os
import signal
import sys
import time

import pytest
import torch

from onepeace.train.cli import main as train_main
from train_helpers import (BIN, REPO_ROOT, deepspeed_cmd, free_port, kill_tree, run, scalars, shm_leftovers, start,
                           tags, wait_for_text, workers, write_recipe)

pytestmark = pytest.mark.slow


def ds_config(tmp_path, stage: int, precision: str = "bf16"):
    path = tmp_path / f"zero{stage}.json"
    path.write_text(json.dumps({"train_micro_batch_size_per_gpu": "auto", "gradient_accumulation_steps": "auto",
                                "gradient_clipping": "auto", "bf16": {"enabled": "auto"},
                                "zero_optimization": {"stage": stage}}))
    return path


# The shipped GPU configs, by name, as users pass them (their bucket and sub-group settings included).
# ZeRO-1 is cpu.json's stage, which every other end-to-end run here uses (and test_demo checks that it learns).
@pytest.mark.parametrize("stage", [2, 3])
def test_zero_stages_train_and_the_loss_falls(tmp_path, demo_corpus, stage):
    steps = 12 if stage < 3 else 8  # ZeRO-3 gathers every layer's weights over gloo: slow on CPU
    recipe = write_recipe(tmp_path / "r.yaml", demo_corpus, steps=steps, precision="bf16", lr=3e-3, min_lr=2e-3)
    run_dir = tmp_path / "run"
    out = run(deepspeed_cmd(["--config", str(recipe), "--run-dir", str(run_dir), "--deepspeed_config",
                             f"zero{stage}_bf16"]), timeout=600)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-4000:]
    assert f"ZeRO stage {stage}" in out.stdout and "2 rank(s) via deepspeed" in out.stdout
    losses = scalars(run_dir, "loss/total")
    assert sorted(losses) == list(range(1, steps + 1))
    first, last = sum(losses[s] for s in (1, 2, 3)) / 3, sum(losses[s] for s in (steps - 2, steps - 1, steps)) / 3
    assert last < first - 0.2, losses
    assert (run_dir / "checkpoints" / f"step{steps:08d}" / "COMPLETE.json").is_file()
    assert (run_dir / "checkpoints" / "latest").read_text() == f"step{steps:08d}"
    if stage == 2:  # every metric the issue names reaches TensorBoard
        expected = {"loss/total", "loss/image-text/itc", "loss/image-text/dcl_text", "loss/image-text/dcl_image",
                    "loss/image-text/dcl_pair_text", "loss/image-text/dcl_pair_image", "train/lr", "train/grad_norm",
                    "train/logit_scale", "perf/samples_per_s", "perf/tokens_per_s", "perf/step_time_s",
                    "perf/data_wait_fraction", "data/bad_samples", "train/nonfinite_skipped",
                    "perf/tflops_per_device"}
        assert expected <= tags(run_dir)
        assert (run_dir / "config.yaml").is_file() and "step 12/12" in (run_dir / "log.txt").read_text()


def test_zero3_built_partitioned_follows_the_zero1_loss_curve(tmp_path, demo_corpus):
    """ZeRO-3 builds the model under zero.Init and initialises it module by module: same weights, same
    losses as ZeRO-1 (to float tolerance: the gradient reductions differ in order)."""
    recipe = write_recipe(tmp_path / "r.yaml", demo_corpus, steps=4)
    curves = {}
    for stage in (1, 3):
        run_dir = tmp_path / f"zero{stage}"
        out = run(deepspeed_cmd(["--config", str(recipe), "--run-dir", str(run_dir), "--deepspeed_config",
                                 str(ds_config(tmp_path, stage))]), timeout=600)
        assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-4000:]
        curves[stage] = scalars(run_dir, "loss/total")
    assert sorted(curves[3]) == [1, 2, 3, 4]
    for step, loss in curves[1].items():
        assert math.isclose(curves[3][step], loss, rel_tol=1e-4), (step, curves)


def test_sigusr1_saves_a_checkpoint_and_exits_cleanly(tmp_path, demo_corpus):
    recipe = write_recipe(tmp_path / "r.yaml", demo_corpus, steps=1000)
    log = tmp_path / "run.log"
    proc = start(deepspeed_cmd(["--config", str(recipe), "--run-dir", str(tmp_path / "run")]), log)
    try:
        wait_for_text(log, "step 2/1000", proc)
        ranks = workers(proc)
        assert len(ranks) == 2, [p.cmdline() for p in ranks]
        ranks[-1].send_signal(signal.SIGUSR1)  # one rank is enough: the ranks agree at the next step
        assert proc.wait(timeout=120) == 0, log.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            kill_tree(proc)
    text = log.read_text()
    assert "received" in text and "saving a checkpoint" in text
    latest = (tmp_path / "run" / "checkpoints" / "latest").read_text()
    step = int(latest[4:])
    assert 2 <= step < 1000 and (tmp_path / "run" / "checkpoints" / latest / "COMPLETE.json").is_file()
    assert f"stopped at step {step}" in text


def test_sigterm_to_the_whole_process_group_still_checkpoints(tmp_path, demo_corpus):
    """What scancel or a time limit does: every process, data workers included, gets SIGTERM. The step it
    stops at was just saved (save_every=1): it is not saved again, which would first unmark it."""
    recipe = write_recipe(tmp_path / "r.yaml", demo_corpus, steps=1000, save_every=1)
    log = tmp_path / "run.log"
    proc = start([sys.executable, "-m", "onepeace.train", "--config", str(recipe), "--run-dir", str(tmp_path / "run")],
                 log)
    try:
        wait_for_text(log, "step 2/1000", proc)
        os.killpg(proc.pid, signal.SIGTERM)
        assert proc.wait(timeout=120) == 0, log.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            kill_tree(proc)
    text = log.read_text()
    newest = tmp_path / "run" / "checkpoints" / (tmp_path / "run" / "checkpoints" / "latest").read_text()
    assert "received SIGTERM" in text and (newest / "COMPLETE.json").is_file()
    assert text.count(f"saved checkpoint {newest} ") == 1, text[-3000:]


def test_torchrun_launcher(tmp_path, demo_corpus):
    recipe = write_recipe(tmp_path / "r.yaml", demo_corpus, steps=2)
    out = run([str(BIN / "torchrun"), "--nproc_per_node", "2", "--master_port", str(free_port()), "-m",
               "onepeace.train", "--config", str(recipe), "--run-dir", str(tmp_path / "run")])
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "2 rank(s) via torchrun" in out.stdout


def test_resume_refuses_another_model(tmp_path, demo_corpus, capsys):
    recipe = write_recipe(tmp_path / "r.yaml", demo_corpus, steps=1)
    first = run([sys.executable, "-m", "onepeace.train", "--config", str(recipe), "--run-dir", str(tmp_path / "run")])
    assert first.returncode == 0, first.stdout[-3000:]
    assert train_main(["--config", str(recipe), "--run-dir", str(tmp_path / "run")]) == 2  # in-process: no launcher
    assert "already has checkpoints: pass --resume auto" in capsys.readouterr().err
    other = run([sys.executable, "-m", "onepeace.train", "--config", str(recipe), "--run-dir", str(tmp_path / "run"),
                 "--resume", "auto", "--set", "train.steps=2", "--set", "model.ffn_dim=128"])
    assert other.returncode == 2
    assert "the model config differs (model.ffn_dim: checkpoint 256, now 128)" in other.stdout


def test_stage2_trains_the_recipe_s_set_and_nothing_else(tmp_path, demo_corpus):
    """Through the CLI: the stage-2 recipe's trainable set moves (the audio bias table from its zero start,
    the reset logit scale), everything else keeps its stage-1 value."""
    from onepeace.model import OnePeace
    from onepeace.recipe import load_recipe, shipped_recipes
    from onepeace.runs import matches

    shipped = load_recipe(next(n for n in shipped_recipes() if n.startswith("stage2"))).train
    stage1 = write_recipe(tmp_path / "s1.yaml", demo_corpus, steps=2, model={"modalities": ["text", "image"]})
    out = run([sys.executable, "-m", "onepeace.train", "--config", str(stage1), "--run-dir", str(tmp_path / "s1")])
    assert out.returncode == 0, out.stdout[-3000:]
    stage2 = write_recipe(
        tmp_path / "s2.yaml", demo_corpus, tasks=("audio-text",), steps=3, model={"modalities": ["text", "audio"]},
        init_from=str(tmp_path / "s1"), init_exclude=shipped.init_exclude, reset=shipped.reset,
        trainable=shipped.trainable, loss_weights=vars(shipped.loss_weights))
    out = run(deepspeed_cmd(["--config", str(stage2), "--run-dir", str(tmp_path / "s2"), "--deepspeed_config",
                             str(ds_config(tmp_path, 2))]), timeout=600)
    assert out.returncode == 0, out.stdout[-3000:]
    for name in ("s1", "s2"):
        exported = run([str(BIN / "onepeace-export"), str(tmp_path / name), str(tmp_path / f"{name}-export")])
        assert exported.returncode == 0, exported.stderr
    before = OnePeace.from_pretrained(str(tmp_path / "s1-export")).state_dict()
    after_model = OnePeace.from_pretrained(str(tmp_path / "s2-export"))
    after = after_model.state_dict()
    trainable = {n for n in after if matches(n, shipped.trainable)}
    frozen = [n for n in after if n not in trainable]
    assert frozen and all(n in before for n in frozen)  # everything frozen came from stage 1
    assert all(torch.equal(after[n], before[n]) for n in frozen), \
        [n for n in frozen if not torch.equal(after[n], before[n])][:5]
    assert {"rel_bias.tables.audio", "logit_scale", "decoder.mask_token.audio"} <= trainable
    assert not (after["rel_bias.tables.audio"] == 0).all()  # trained from its zero start
    assert after["logit_scale"].item() != pytest.approx(math.log(1 / 0.07), abs=1e-6)  # reset, then trained
    shared_trainable = [n for n in trainable if n in before]  # the decoder's text part came from stage 1
    assert shared_trainable and all(not torch.equal(after[n], before[n]) for n in shared_trainable
                                    if n.endswith("weight") and "norm" not in n)
    assert "image" not in after_model.adapters and "audio" in after_model.adapters


def test_export_then_from_pretrained_gives_the_same_embeddings(tmp_path, demo_corpus):
    """The exported model equals the model DeepSpeed itself restores from the checkpoint."""
    recipe = write_recipe(tmp_path / "r.yaml", demo_corpus, tasks=("image-text", "audio-text"), steps=2)
    out = run(deepspeed_cmd(["--config", str(recipe), "--run-dir", str(tmp_path / "run"), "--deepspeed_config",
                             str(ds_config(tmp_path, 3))]), timeout=600)
    assert out.returncode == 0, out.stdout[-3000:]
    exported = run([str(BIN / "onepeace-export"), str(tmp_path / "run"), str(tmp_path / "export")])
    assert exported.returncode == 0, exported.stderr
    assert {"model.safetensors", "config.json", "tokenizer"} <= set(os.listdir(tmp_path / "export"))
    assert json.loads((tmp_path / "export" / "config.json").read_text())["tokenizer"] == "tokenizer/tokenizer.json"
    script = REPO_ROOT / "tests" / "e2e" / "engine_embeddings.py"
    out = run(deepspeed_cmd([str(recipe), str(tmp_path / "run"), str(tmp_path / "export"),
                             str(ds_config(tmp_path, 3))], module=None, script=str(script)), timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "max difference 0.0" in out.stdout, out.stdout[-2000:]


def test_non_finite_losses_are_skipped_then_stop_the_run(tmp_path, demo_corpus):
    recipe = write_recipe(tmp_path / "r.yaml", demo_corpus, steps=50, lr=1e30, min_lr=1e30, warmup_steps=0,
                          max_nonfinite_in_a_row=3)
    out = run([sys.executable, "-m", "onepeace.train", "--config", str(recipe), "--run-dir", str(tmp_path / "run")])
    assert out.returncode != 0
    assert out.stdout.count("skipping this update") >= 3  # dropped by the engine's own gradient check
    assert "3 non-finite losses in a row" in out.stdout + out.stderr


def test_a_dead_rank_makes_the_run_fail_instead_of_hang(tmp_path, demo_corpus):
    recipe = write_recipe(tmp_path / "r.yaml", demo_corpus, steps=1000, dist_timeout_s=60)
    log = tmp_path / "run.log"
    cmd = deepspeed_cmd(["--config", str(recipe), "--run-dir", str(tmp_path / "run")])
    proc = start(cmd, log)
    try:
        wait_for_text(log, "step 1/1000", proc)
        ranks = workers(proc)
        ranks[-1].kill()
        start_time = time.time()
        code = proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            kill_tree(proc)
    assert code != 0 and time.time() - start_time < 90, log.read_text()[-2000:]
    time.sleep(2)
    assert not [p for p in ranks if p.is_running() and p.status() != "zombie"]
    assert not shm_leftovers(cmd)  # DeepSpeed never removes them; the ranks do, even when killed
