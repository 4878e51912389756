"""Checkpoint files are loaded weights-only (DeepSpeed's own loader included), and a damaged checkpoint
is found from its COMPLETE marker's file list: a run falls back to its previous complete checkpoint,
an explicitly named one is an error naming the file."""

from __future__ import annotations

import json
import logging
import os

import pytest
import torch

from onepeace import runs
from onepeace.safe_load import CheckpointFileError, weights_only_loading


class Payload:
    """What an attacker would plant: unpickling it runs a command."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_pickle_payload_is_refused_even_where_deepspeed_asks_for_full_unpickling(tmp_path):
    from deepspeed.runtime.checkpoint_engine.torch_checkpoint_engine import TorchCheckpointEngine

    marker = tmp_path / "pwned"
    evil = tmp_path / "mp_rank_00_model_states.pt"
    torch.save({"module": {"w": torch.ones(2)}, "extra": Payload(str(marker))}, evil)
    engine = TorchCheckpointEngine()
    with weights_only_loading(), pytest.raises(CheckpointFileError) as exc:
        engine.load(str(evil), map_location="cpu")  # DeepSpeed passes weights_only=False here
    assert str(evil) in str(exc.value) and "refused" in str(exc.value) and "trust" in str(exc.value)
    assert "\n" not in str(exc.value)
    assert not marker.exists()
    assert torch.load is not None and os.environ.get("TORCH_FORCE_WEIGHTS_ONLY_LOAD") is None  # restored


def test_plain_deepspeed_state_still_loads_weights_only(tmp_path):
    from deepspeed.runtime.fp16.loss_scaler import LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    state = {"loss_scaler": LossScaler(1.0), "zero_stage": ZeroStageEnum.optimizer_states,
             "param_slice_mappings": [{"w": fragment_address(numel=4, start=0)}], "t": torch.arange(3)}
    torch.save(state, tmp_path / "optim.pt")
    with weights_only_loading():
        loaded = torch.load(tmp_path / "optim.pt", weights_only=False)
    assert loaded["zero_stage"] == ZeroStageEnum.optimizer_states and loaded["t"].tolist() == [0, 1, 2]
    assert loaded["param_slice_mappings"][0]["w"].numel == 4


def test_a_truncated_file_is_named(tmp_path):
    torch.save({"w": torch.ones(1000)}, tmp_path / "f.pt")
    with open(tmp_path / "f.pt", "r+b") as f:
        f.truncate(100)
    with weights_only_loading(), pytest.raises(CheckpointFileError, match="f.pt: cannot be read, the file is damaged"):
        torch.load(tmp_path / "f.pt")


def make_checkpoints(run, steps=(1, 2, 3)):
    ckpts = run / "checkpoints"
    for step in steps:
        d = ckpts / runs.tag_for(step)
        d.mkdir(parents=True)
        for rank in (0, 1):
            (d / f"zero_pp_rank_{rank}_mp_rank_00_optim_states.pt").write_bytes(bytes(100 + rank) * step)
        (d / runs.COMPLETE).write_text(json.dumps({"step": step, "files": runs.checkpoint_files(str(d))}))
    return ckpts


def test_a_run_falls_back_from_a_damaged_newest_checkpoint(tmp_path, caplog):
    ckpts = make_checkpoints(tmp_path / "run")
    os.remove(ckpts / "step00000003" / "zero_pp_rank_1_mp_rank_00_optim_states.pt")  # rank 1's shard lost
    with open(ckpts / "step00000002" / "zero_pp_rank_0_mp_rank_00_optim_states.pt", "r+b") as f:
        f.truncate(50)
    with caplog.at_level(logging.WARNING):
        result, used = runs.load_with_fallback(str(tmp_path / "run"), lambda d: os.path.basename(d))
    assert result == "step00000001" and used == str(ckpts / "step00000001")
    warned = [r.getMessage() for r in caplog.records]
    assert "zero_pp_rank_1_mp_rank_00_optim_states.pt is missing" in warned[0] and "falling back" in warned[0]
    assert "zero_pp_rank_0_mp_rank_00_optim_states.pt is 50 bytes, 200 when saved (truncated)" in warned[1]


def test_a_loader_error_also_falls_back_and_an_explicit_checkpoint_does_not(tmp_path):
    ckpts = make_checkpoints(tmp_path / "run", steps=(1, 2))

    def load(path):
        if path.endswith("step00000002"):
            raise CheckpointFileError(os.path.join(path, "mp_rank_00_model_states.pt"), "cannot be read")
        return "ok"

    assert runs.load_with_fallback(str(tmp_path / "run"), load) == ("ok", str(ckpts / "step00000001"))
    with pytest.raises(CheckpointFileError, match="step00000002/mp_rank_00_model_states.pt: cannot be read"):
        runs.load_with_fallback(str(ckpts / "step00000002"), load)
    os.remove(ckpts / "step00000001" / "zero_pp_rank_0_mp_rank_00_optim_states.pt")
    with pytest.raises(CheckpointFileError, match="step00000001.*zero_pp_rank_0_mp_rank_00_optim_states.pt is missing"):
        runs.load_with_fallback(str(tmp_path / "run"), load)  # nothing older left: the error names the file
