"""Elastic resume through the real ``deepspeed`` launcher on CPU: a run moves 2 ranks -> 1 rank -> 2 ranks
with ``--resume auto`` and nothing else changed, under ZeRO-1 and ZeRO-3.

Each change goes through DeepSpeed's universal checkpoint (converted once, kept next to the checkpoint),
keeps the global batch (grad_accum 1 -> 2 -> 1) and the learning-rate schedule, keeps the Adam state (its
step count runs on), restores frozen parameters, and the loss goes on from where it was instead of
jumping back towards its initial value.
"""

from __future__ import annotations

import json

import pytest
import torch

from onepeace.train import elastic
from onepeace.train.schedule import cosine_factor
from train_helpers import deepspeed_cmd, kill_tree, run, scalars, start, wait_for_text, write_recipe

pytestmark = pytest.mark.slow

STEPS, LR, MIN_LR, WARMUP, MICRO = 8, 2e-3, 1e-3, 1, 8
# Frozen: the text adapter (used by every step) and the unused audio adapter.
TRAINABLE = ["encoder.*", "decoder.*", "adapters.image.*", "proj.*", "logit_scale", "rel_bias.*"]


def ds_config(tmp_path, stage: int):
    path = tmp_path / f"zero{stage}.json"
    path.write_text(json.dumps({"train_micro_batch_size_per_gpu": "auto", "gradient_accumulation_steps": "auto",
                                "gradient_clipping": "auto", "zero_optimization": {"stage": stage}}))
    return path


def run_until_saved(cmd, log):
    """Start a run and SIGKILL it once it has saved its first checkpoint (a preempted allocation)."""
    proc = start(cmd, log)
    try:
        wait_for_text(log, "saved checkpoint", proc, timeout=900)
    finally:
        kill_tree(proc)
    return log.read_text()


def optimizer_states(path) -> list[dict]:
    from onepeace.safe_load import weights_only_loading

    with weights_only_loading():
        return [torch.load(file, map_location="cpu")["optimizer_state_dict"]
                for file in elastic.partitioned_files(str(path))]


def weight_decays(path) -> list[float]:
    """Each AdamW group's weight decay as a checkpoint's first optimizer partition holds it."""
    state = optimizer_states(path)[0]
    inner = state.get("base_optimizer_state") or state["optimizer_state_dict"]  # ZeRO-1/2, ZeRO-3
    return [group["weight_decay"] for group in inner["param_groups"]]


def adam_steps(path) -> set[int]:
    """The Adam step counts held in a checkpoint's optimizer partitions."""
    found = set()

    def walk(obj):
        if isinstance(obj, dict):
            for k, v in obj.items():
                if k == "step" and (torch.is_tensor(v) or isinstance(v, (int, float))):
                    found.add(int(v))
                else:
                    walk(v)
        elif isinstance(obj, (list, tuple)):
            for v in obj:
                walk(v)

    for state in optimizer_states(path):
        walk(state)
    return found


@pytest.mark.timeout(3600)
@pytest.mark.parametrize("stage", [1, 3])
def test_resume_on_another_number_of_ranks_continues_the_run(tmp_path, demo_corpus, stage):
    recipe = write_recipe(tmp_path / "r.yaml", demo_corpus, steps=STEPS, lr=LR, min_lr=MIN_LR, warmup_steps=WARMUP,
                          save_every=2, trainable=TRAINABLE, batch_size=MICRO)
    run_dir = tmp_path / "run"
    ckpts = run_dir / "checkpoints"
    base = ["--config", str(recipe), "--run-dir", str(run_dir), "--deepspeed_config", str(ds_config(tmp_path, stage))]

    # 2 ranks: steps 1-4, killed after the save at 4 (2 and 4 are saved; the run was at 4 when killed).
    first = run_until_saved(deepspeed_cmd(base + ["--set", "train.save_every=4"], nproc=2), tmp_path / "a.log")
    assert "2 rank(s) via deepspeed" in first and (ckpts / "step00000004" / "COMPLETE.json").is_file(), first[-3000:]

    # 1 rank, another seed (frozen parameters then start elsewhere, and must come back): steps 5-6.
    second = run_until_saved(deepspeed_cmd(base + ["--resume", "auto", "--set", "train.seed=1"], nproc=1),
                             tmp_path / "b.log")
    assert "resumed from" in second and "at step 4" in second, second[-4000:]
    assert "converting" in second and "saved on 2 rank(s)" in second, second[-4000:]
    assert ("2 rank(s) x grad_accum 1 x micro batch 8 = global batch 16 -> 1 rank(s) x grad_accum 2 x micro "
            "batch 8 = global batch 16 (grad_accum chosen to keep the global batch)") in second
    assert "segment 2 starts now" in second  # step 4 was inside segment 1 (steps 3-5): its rest is skipped
    assert elastic.converted(str(ckpts / "step00000004"))["source_world_size"] == 2
    assert "restored" in second and "frozen parameters" in second

    # 2 ranks again, to the end.
    third = run(deepspeed_cmd(base + ["--resume", "auto", "--set", "train.seed=2"], nproc=2), timeout=1200)
    assert third.returncode == 0, third.stdout[-4000:] + third.stderr[-3000:]
    out = third.stdout
    assert "at step 6" in out and "saved on 1 rank(s)" in out and "global batch 16 (" in out, out[-4000:]
    assert "starts now" not in out  # step 6 ends segment 1: nothing to skip

    # The Adam state came along both times: its step count is the run's, not the steps since a resume.
    assert adam_steps(ckpts / f"step{STEPS:08d}") == {STEPS}
    assert weight_decays(ckpts / f"step{STEPS:08d}") == weight_decays(ckpts / "step00000004") == [0.05, 0.0]
    # The schedule and the samples counted follow the uninterrupted run's, step for step.
    lrs, seen = scalars(run_dir, "train/lr"), scalars(run_dir, "train/samples_seen")
    assert sorted(lrs) == list(range(1, STEPS + 1))
    for s in range(1, STEPS + 1):
        assert lrs[s] == pytest.approx(LR * cosine_factor(s, STEPS, WARMUP, MIN_LR / LR), rel=1e-5), s
        assert seen[s] == 16 * s, (s, seen)
    # The loss goes on: each change moves it by no more than the largest step-to-step change of the
    # uninterrupted 2-rank steps, and it stays nearer to where it was than to where it started. Measured on
    # the denoising terms: their keys are the micro batch's tokens, 8 samples in every layout here. The
    # contrastive term's negatives are gathered across ranks (16 on 2 ranks, 8 on 1), so its value moves
    # with the layout by design (by ln 2 at chance), however exact the resume.
    terms = [scalars(run_dir, f"loss/image-text/{t}") for t in ("dcl_text", "dcl_image", "dcl_pair_text",
                                                                 "dcl_pair_image")]
    loss = {s: sum(term[s] for term in terms) for s in range(1, STEPS + 1)}
    noise = max(abs(loss[s + 1] - loss[s]) for s in (1, 2, 3))
    for before in (4, 6):
        assert abs(loss[before + 1] - loss[before]) <= noise, (before, loss)
        assert loss[before + 1] < (loss[1] + loss[before]) / 2, (before, loss)
    # Frozen parameters are the run's, whatever the seed of the launch that resumed.
    start_state, end_state = (elastic.saved_weights(str(ckpts / tag)) for tag in ("step00000004", f"step{STEPS:08d}"))
    frozen = [k for k in start_state if k.startswith(("model.adapters.text.", "model.adapters.audio."))]
    assert frozen and all(torch.equal(start_state[k], end_state[k]) for k in frozen)
    assert not all(torch.equal(start_state[k], end_state[k]) for k in start_state if k.startswith("model.encoder."))
