"""The training loop: data segments, micro-batches, non-finite skips, logging, checkpoints, signals.

Resumption is exact: the data streams restart every ``train.data_segment_steps`` updates with seeds
derived from the segment number, so a run resumed at step s rebuilds segment ``s // seg`` and skips the
micro-batches already consumed in it; model RNG states are restored per rank.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import signal
import time
from typing import Any, Callable

import torch
from torch.utils.flop_counter import FlopCounterMode

from ..checks import set_value_checks
from ..data import StreamPosition, build_train_loader
from ..losses import LOGIT_SCALE_MAX
from ..model import OnePeace
from ..model.accounting import device_peak_tflops
from ..recipe import Recipe
from .. import distributed as dist_utils, zero3
from . import checkpoint
from ..distributed import DistEnv
from .engine import initialize, skips_nonfinite_steps
from .metrics import TrainMetrics, count_samples, count_tokens
from .objective import PretrainObjective
from .signals import StopRequest

log = logging.getLogger(__name__)


class NonFiniteLossError(RuntimeError):
    pass


def to_device(step: dict[str, dict], device: torch.device) -> dict[str, dict]:
    return {task: {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}
            for task, batch in step.items()}


def poison_nonfinite(loss: torch.Tensor) -> torch.Tensor:
    """``loss`` itself when finite (times 1.0: bit-identical values and gradients); otherwise NaN
    everywhere, so every gradient it reaches is NaN and the engine's own per-update check drops the
    update on every rank. Decided on the device: the host never waits for the loss."""
    ok = torch.isfinite(loss)
    return loss * torch.where(ok, torch.ones_like(loss), torch.full_like(loss, float("nan")))


class Trainer:
    def __init__(self, recipe: Recipe, ds_config: dict[str, Any], run_dir: str, dist: DistEnv,
                 device: torch.device, model: OnePeace, resume_from: checkpoint.Resume | None,
                 evaluate: Callable[[OnePeace, int], dict[str, float]] | None = None,
                 stop: StopRequest | None = None) -> None:
        self.recipe, self.run_dir, self.dist, self.device = recipe, run_dir, dist, device
        self.train = recipe.train
        self.ckpt_dir = os.path.join(run_dir, "checkpoints")
        self.model = model
        kinds = {name: task.kind for name, task in recipe.data.train.items()}
        self.objective = PretrainObjective(model, kinds, self.train.loss_weights)
        self.engine, self.optimizer, self.scheduler = initialize(self.objective, ds_config, self.train)
        zero3.register_outside_forward(self.objective, model)
        self.engine_skips_nonfinite = skips_nonfinite_steps(ds_config)
        set_value_checks(self.train.debug_checks)  # batches come validated from the data pipeline
        self.metrics = TrainMetrics(run_dir, dist.is_main, device, device_peak_tflops(device))
        self.evaluate = evaluate
        self.stop = stop or StopRequest()
        self.step = 0
        self.samples_seen = 0
        self.nonfinite_total = 0
        # Micro-batches drawn from the stream of data segment ``segment``: more than steps x grad_accum once
        # a non-finite one was skipped. A resume continues from this rank's saved stream position without
        # decoding; where that position does not fit, it decodes and drops exactly this many.
        self._data_position: dict[str, int] | None = None
        self._nan_at_step = _test_nonfinite_step()
        state: dict[str, Any] = {}
        if resume_from is not None:
            tag = checkpoint.first_intact(resume_from.ckpt_dir, resume_from.candidates(), device)
            state = checkpoint.load(self.engine, resume_from.ckpt_dir, tag, recipe.model, dist.rank)
            self.step = int(state.get("step", 0))
            self.samples_seen = int(state.get("samples_seen", 0))
            self.nonfinite_total = int(state.get("nonfinite_total", 0))
            self.metrics.flops_per_step = state.get("flops_per_step")  # counting would perturb the next step
            self._data_position = state.get("data_position")
            log.info("resumed from %s at step %d", os.path.join(resume_from.ckpt_dir, tag), self.step)
        self.stream = build_train_loader(recipe.data, recipe.model, rank=dist.rank, world_size=dist.world_size)
        saved_position = state.get("rank_state", {}).get("data_position")
        self._resume_position = StreamPosition.from_dict(saved_position) if saved_position else None
        self._bad_samples_before = 0

    # ---------------------------------------------------------------------------------------------

    def _batches(self):
        """Micro-batches from the current step on, restarting the stream at every segment boundary. A
        resume continues the segment from the stream position saved in the checkpoint (nothing already
        consumed is decoded again); without one it decodes and drops the consumed micro-batches."""
        seg = self.train.data_segment_steps
        per_step = self.train.grad_accum
        while True:
            segment = self.step // seg
            saved = self._data_position
            if saved is not None and saved.get("segment") == segment:
                skip = int(saved["micro_batches"])  # recorded by the checkpoint: exact after skipped ones
            elif saved is not None:
                skip = 0  # the checkpoint ended its segment: this one starts afresh
            else:
                skip = (self.step - segment * seg) * per_step  # a checkpoint from before data positions
            self._data_position = {"segment": segment, "micro_batches": skip}
            self._bad_samples_before += self.stream.bad_samples
            self.stream.bad_samples = 0
            resume, self._resume_position = self._usable_position(segment), None
            self.stream.set_epoch(segment, resume)
            iterator = iter(self.stream)
            if resume is None:
                for _ in range(skip):
                    next(iterator)
            for micro in iterator:
                self._data_position["micro_batches"] += 1
                yield micro
                if self.step // seg != segment:
                    break

    def _usable_position(self, segment: int) -> StreamPosition | None:
        saved = self._resume_position
        if saved is None or saved.micro_batches == 0:
            return None
        if saved.epoch != segment or saved.workers != self.stream.position().workers:
            log.warning("the checkpoint's data position (segment %d, %d workers) does not fit this run (segment %d, "
                        "%d workers): re-reading the segment's consumed batches instead", saved.epoch, saved.workers,
                        segment, self.stream.position().workers)
            return None
        return saved

    def _client_state(self) -> dict[str, Any]:
        return {"step": self.step, "samples_seen": self.samples_seen, "nonfinite_total": self.nonfinite_total,
                "flops_per_step": self.metrics.flops_per_step, "recipe": self.recipe.name,
                "data_position": dict(self._data_position) if self._data_position else None}

    def save(self) -> None:
        checkpoint.save(self.engine, self.ckpt_dir, self.step, self._client_state(), self.recipe.model,
                        self.train.keep_last, self.dist.rank,
                        rank_state={"data_position": self.stream.position().to_dict()})

    # ---------------------------------------------------------------------------------------------

    def run(self) -> str:
        """Train to ``train.steps``; returns "finished" or "stopped" (signal).

        A step never waits for the device except on logging, evaluation, checkpoint and signal-check
        steps: losses are summed on the device and read when logged; non-finite losses are left to the
        engine's own per-update gradient check (see :func:`poison_nonfinite`), whose verdict is host state.
        """
        total = self.train.steps
        if self.step >= total:
            log.info("nothing to do: already at step %d of %d", self.step, total)
            return "finished"
        batches = self._batches()
        image_tokens = self.recipe.model.image_grid ** 2
        nonfinite_in_a_row = 0
        last_eval = self.step
        self.engine.train()
        while self.step < total:
            start = time.perf_counter()
            data_s, done, samples, tokens = 0.0, 0, 0, 0
            window: dict[str, torch.Tensor] = {}  # this update's loss sums, on the device
            while done < self.train.grad_accum:
                t0 = time.perf_counter()
                micro = next(batches)
                data_s += time.perf_counter() - t0
                samples += count_samples(micro)
                tokens += count_tokens(micro, image_tokens)
                micro = to_device(micro, self.device)
                counter = FlopCounterMode(display=False) if self.metrics.flops_per_step is None else None
                with counter or contextlib.nullcontext():
                    loss, terms = self.engine(micro)
                    if self._nan_at_step == self.step and done == 0 and not nonfinite_in_a_row:
                        loss = loss * float("nan")  # test hook: see _test_nonfinite_step
                    if self.engine_skips_nonfinite:
                        self.engine.backward(poison_nonfinite(loss))
                    elif dist_utils.any_rank(not bool(torch.isfinite(loss)), self.device):
                        # fp32 without ZeRO applies any gradient: this engine needs the check on the host
                        nonfinite_in_a_row = self._nonfinite(nonfinite_in_a_row, {"total": loss, **terms},
                                                             "micro-batch")
                        continue
                    else:
                        self.engine.backward(loss)
                if counter is not None:  # FLOPs of one forward+backward, counted once
                    self.metrics.flops_per_step = counter.get_total_flops() * self.train.grad_accum
                self.engine.step()
                done += 1
                for k, v in {"total": loss, **terms}.items():
                    v = v.detach()
                    window[k] = v if k not in window else window[k] + v
            self.samples_seen += samples * self.dist.world_size
            if self.engine_skips_nonfinite and not self.engine.was_step_applied():
                nonfinite_in_a_row = self._nonfinite(nonfinite_in_a_row, window, "update")
                continue
            nonfinite_in_a_row = 0
            self.step += 1
            step_s = time.perf_counter() - start
            mean = {k: v / done for k, v in window.items()}
            self.metrics.record(mean.pop("total"), mean, samples, tokens, step_s, data_s)
            if self.step == 1 or self.step % self.train.log_every == 0 or self.step == total:
                self._log()
            if self.evaluate is not None and self.train.eval_every and self.step % self.train.eval_every == 0:
                self._evaluate()
                last_eval = self.step
            saved = self.step % self.train.save_every == 0 and self.step < total
            if saved:
                self.save()
            if self.step % self.train.signal_check_every == 0 and self._stop_requested(saved):
                return "stopped"
        self.save()
        if self.evaluate is not None and last_eval != self.step:
            self._evaluate()
        return "finished"

    def _nonfinite(self, in_a_row: int, losses: dict[str, torch.Tensor], what: str) -> int:
        """Count a skipped micro-batch or update (reading its losses is fine: this is the rare path)."""
        self.nonfinite_total += 1
        in_a_row += 1
        log.warning("non-finite loss or gradients at step %d (%s); skipping this %s", self.step + 1,
                    {k: float(v) for k, v in losses.items()}, what)
        if in_a_row >= self.train.max_nonfinite_in_a_row:
            raise NonFiniteLossError(
                f"{in_a_row} non-finite losses in a row at step {self.step + 1}: the run diverged or the data is "
                "broken. Lower train.lr, check the data, or resume from an earlier checkpoint")
        return in_a_row

    def _stop_requested(self, saved: bool) -> bool:
        """Whether any rank got a stop signal; if so, checkpoint (unless this step was just ``saved``:
        saving it again would first unmark its complete checkpoint). All ranks ask at the same steps."""
        if not dist_utils.any_rank(self.stop.signum is not None, self.device):
            return False
        name = signal.Signals(self.stop.signum).name if self.stop.signum else "a signal on another rank"
        log.warning("received %s: saving a checkpoint at step %d and exiting", name, self.step)
        if not saved:
            self.save()
        return True

    def _log(self) -> None:
        model = self.engine.module.model
        grad_norm = self.engine.get_global_grad_norm()
        bad = self._bad_samples_before + self.stream.bad_samples
        scale = math.exp(min(max(_logit_scale(model), 0.0), LOGIT_SCALE_MAX))
        extra = {"train/lr": self.scheduler.get_last_lr()[0], "train/logit_scale": scale,
                 "train/nonfinite_skipped": float(self.nonfinite_total),
                 "train/samples_seen": float(self.samples_seen)}
        if grad_norm is not None:
            extra["train/grad_norm"] = float(grad_norm)
        # Each rank reads its own shards: the run's bad samples are the sum over ranks.
        self.metrics.log(self.step, self.train.steps, extra, summed={"data/bad_samples": float(bad)})

    def _evaluate(self) -> None:
        self.engine.eval()
        model = self.engine.module.model
        with torch.no_grad(), zero3.gathered(zero3.outside_forward(model), modifier_rank=None):
            results = self.evaluate(model, self.step)
        self.engine.train()
        self.metrics.scalars(self.step, results)


TEST_NONFINITE_ENV = "ONEPEACE_TEST_NONFINITE_AT_STEP"


def _test_nonfinite_step() -> int | None:
    """Tests only: with ONEPEACE_TEST_NONFINITE_AT_STEP=N the first micro-batch of update N (0-based) gets a
    non-finite loss once, so a test can check that skipping it keeps resumption exact."""
    value = os.environ.get(TEST_NONFINITE_ENV)
    return int(value) if value else None


def _logit_scale(model: OnePeace) -> float:
    with zero3.gathered([model.logit_scale], modifier_rank=None):
        return float(model.logit_scale.detach().reshape(-1)[0])
