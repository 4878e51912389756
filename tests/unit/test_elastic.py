"""Elastic resume without processes: the batch plan, when a checkpoint needs DeepSpeed's universal
conversion, and what a save over an old step does to a conversion of it. The conversion and the load
themselves run through the real launcher in ``tests/e2e/test_elastic_resume.py``."""

from __future__ import annotations

import json

import pytest

from onepeace import runs
from onepeace.config import model_config
from onepeace.train import checkpoint, elastic
from onepeace.train.elastic import BatchPlan, plan_batch


def saved(world_size, grad_accum, micro_batch=8, recipe_grad_accum=None):
    return BatchPlan(world_size, grad_accum, micro_batch, grad_accum if recipe_grad_accum is None else recipe_grad_accum)


def test_same_topology_changes_nothing_and_says_nothing():
    plan, note = plan_batch(saved(2, 1), recipe_grad_accum=1, micro_batch=8, world_size=2)
    assert plan == saved(2, 1) and note is None
    assert plan_batch(None, 3, 8, 4) == (BatchPlan(4, 3, 8, 3), None)  # a fresh run, or a marker without a plan


@pytest.mark.parametrize("before, ranks, grad_accum", [((2, 1), 1, 2), ((1, 2), 2, 1), ((4, 1), 1, 4),
                                                        ((8, 2), 4, 4), ((2, 4), 8, 1)])
def test_another_number_of_ranks_keeps_the_global_batch_through_grad_accum(before, ranks, grad_accum):
    old = saved(*before)
    plan, note = plan_batch(old, recipe_grad_accum=old.recipe_grad_accum, micro_batch=8, world_size=ranks)
    assert (plan.world_size, plan.grad_accum, plan.global_batch) == (ranks, grad_accum, old.global_batch)
    assert plan.recipe_grad_accum == old.recipe_grad_accum  # the user's value stays what a later resume compares
    assert f"global batch {old.global_batch} ->" in note and f"global batch {old.global_batch} (" in note


def test_a_run_moved_back_and_forth_keeps_its_global_batch():
    """2 ranks -> 1 (grad_accum 2, chosen) -> 1 again with the same command -> 2: the chosen grad_accum
    is not mistaken for the user's change."""
    plan, _ = plan_batch(saved(2, 1), recipe_grad_accum=1, micro_batch=8, world_size=1)
    again, note = plan_batch(plan, recipe_grad_accum=1, micro_batch=8, world_size=1)
    assert again == plan and note is None and again.grad_accum == 2
    back, _ = plan_batch(again, recipe_grad_accum=1, micro_batch=8, world_size=2)
    assert (back.grad_accum, back.global_batch) == (1, 16)


def test_a_changed_grad_accum_is_the_user_s_and_the_new_global_batch_is_said():
    plan, note = plan_batch(saved(2, 1), recipe_grad_accum=3, micro_batch=8, world_size=2)
    assert (plan.grad_accum, plan.global_batch) == (3, 48)
    assert "global batch changes (train.grad_accum was changed)" in note
    plan, note = plan_batch(saved(2, 2), recipe_grad_accum=1, micro_batch=8, world_size=4)  # the user's, and even
    assert (plan.grad_accum, plan.global_batch) == (1, 32) and "the global batch is kept" in note


def test_a_global_batch_that_does_not_divide_keeps_the_recipe_s_grad_accum_and_says_so():
    plan, note = plan_batch(saved(3, 1), recipe_grad_accum=1, micro_batch=8, world_size=2)
    assert (plan.grad_accum, plan.global_batch) == (1, 16)
    assert "24 is not a multiple of micro batch x ranks = 16" in note and "schedule continues" in note


def test_saved_plan_reads_the_marker_and_ignores_markers_without_one():
    assert elastic.saved_plan({"batch": saved(2, 1).record()}) == saved(2, 1)
    for marker in ({}, {"batch": None}, {"batch": {"world_size": 2}}, {"batch": {**saved(2, 1).record(),
                                                                                  "grad_accum": "x"}}):
        assert elastic.saved_plan(marker) is None


def test_topology_changed_on_ranks_or_grad_accum():
    marker = {"world_size": 2, "batch": saved(2, 1).record()}
    assert not elastic.topology_changed(marker, saved(2, 1))
    assert elastic.topology_changed(marker, saved(1, 2))
    assert elastic.topology_changed(marker, saved(2, 2))
    assert elastic.topology_changed({"world_size": 2}, saved(1, 1))  # an older marker: world size only
    assert not elastic.topology_changed({"world_size": 2}, saved(2, 1))


def test_only_partitioned_optimizer_state_of_another_world_size_needs_the_universal_conversion(tmp_path):
    (tmp_path / "mp_rank_00_model_states.pt").write_bytes(b"x")
    assert not elastic.needs_universal(str(tmp_path), {"world_size": 2}, 1)  # ZeRO-0: the full state in one file
    (tmp_path / "zero_pp_rank_0_mp_rank_00_optim_states.pt").write_bytes(b"x")
    assert elastic.needs_universal(str(tmp_path), {"world_size": 2}, 1)
    assert not elastic.needs_universal(str(tmp_path), {"world_size": 1}, 1)
    assert not elastic.needs_universal(str(tmp_path), {}, 1)  # a marker from before world sizes were recorded


def test_a_conversion_counts_only_with_its_marker(tmp_path):
    assert elastic.converted(str(tmp_path)) is None
    (tmp_path / elastic.UNIVERSAL).mkdir()
    assert elastic.converted(str(tmp_path)) is None  # interrupted: converted again
    (tmp_path / elastic.UNIVERSAL / elastic.UNIVERSAL_MARKER).write_text(json.dumps({"source_world_size": 2}))
    assert elastic.converted(str(tmp_path)) == {"source_world_size": 2}


def test_saving_over_a_step_drops_its_universal_conversion_and_records_the_batch_plan(tmp_path):
    """A conversion of the older save of step N would be reused by the next elastic resume: it must go
    with the save it was made from."""
    old = tmp_path / "step00000003"
    (old / elastic.UNIVERSAL).mkdir(parents=True)
    (old / elastic.UNIVERSAL / elastic.UNIVERSAL_MARKER).write_text("{}")
    (old / runs.COMPLETE).write_text(json.dumps({"step": 3, "files": {}}))

    class Engine:
        def save_checkpoint(self, ckpt_dir, tag, client_state, save_latest):
            (tmp_path / tag / "mp_rank_00_model_states.pt").write_bytes(b"x")

    checkpoint.save(Engine(), str(tmp_path), 3, {}, model_config("tiny"), keep_last=3, rank=0, batch=saved(1, 2))
    assert not (old / elastic.UNIVERSAL).exists()
    marker = json.loads((old / runs.COMPLETE).read_text())
    assert elastic.saved_plan(marker) == saved(1, 2) and marker["world_size"] == 1
