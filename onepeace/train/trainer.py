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

from ..data import build_train_loader
from ..losses import LOGIT_SCALE_MAX
from ..model import OnePeace
from ..model.accounting import device_peak_tflops
from ..recipe import Recipe
from .. import distributed as dist_utils
from . import checkpoint
from ..distributed import DistEnv
from .engine import initialize
from .metrics import TrainMetrics, count_samples, count_tokens
from .objective import PretrainObjective
from .signals import StopRequest

log = logging.getLogger(__name__)

class NonFiniteLossError(RuntimeError):
    pass


def to_device(step: dict[str, dict], device: torch.device) -> dict[str, dict]:
    return {task: {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}
            for task, batch in step.items()}


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
        self.metrics = TrainMetrics(run_dir, dist.is_main, device, device_peak_tflops(device))
        self.evaluate = evaluate
        self.stop = stop or StopRequest()
        self.step = 0
        self.samples_seen = 0
        self.nonfinite_total = 0
        # Micro-batches drawn from the stream of data segment ``segment``: more than steps x grad_accum once
        # a non-finite one was skipped, so a checkpoint records it for the resume to skip exactly as many.
        self._data_position: dict[str, int] | None = None
        self._nan_at_step = _test_nonfinite_step()
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
        self._bad_samples_before = 0

    # ---------------------------------------------------------------------------------------------

    def _batches(self):
        """Micro-batches from the current step on, restarting the stream at every segment boundary."""
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
            self.stream.set_epoch(segment)
            iterator = iter(self.stream)
            for _ in range(skip):
                next(iterator)
            for micro in iterator:
                self._data_position["micro_batches"] += 1
                yield micro
                if self.step // seg != segment:
                    break

    def _client_state(self) -> dict[str, Any]:
        return {"step": self.step, "samples_seen": self.samples_seen, "nonfinite_total": self.nonfinite_total,
                "flops_per_step": self.metrics.flops_per_step, "recipe": self.recipe.name,
                "data_position": dict(self._data_position) if self._data_position else None}

    def save(self) -> None:
        checkpoint.save(self.engine, self.ckpt_dir, self.step, self._client_state(), self.recipe.model,
                        self.train.keep_last, self.dist.rank)

    # ---------------------------------------------------------------------------------------------

    def run(self) -> str:
        """Train to ``train.steps``; returns "finished" or "stopped" (signal)."""
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
            data_s, done, terms_sum, loss_sum, samples, tokens = 0.0, 0, {}, 0.0, 0, 0
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
                    finite = not dist_utils.any_rank(not bool(torch.isfinite(loss)), self.device)
                    if finite:
                        self.engine.backward(loss)
                if counter is not None and finite:  # FLOPs of one forward+backward, counted once
                    self.metrics.flops_per_step = counter.get_total_flops() * self.train.grad_accum
                if not finite:
                    self.nonfinite_total += 1
                    nonfinite_in_a_row += 1
                    log.warning("non-finite loss at step %d (%s); skipping this micro-batch", self.step,
                                {k: float(v) for k, v in terms.items()})
                    if nonfinite_in_a_row >= self.train.max_nonfinite_in_a_row:
                        raise NonFiniteLossError(
                            f"{nonfinite_in_a_row} non-finite losses in a row at step {self.step}: the run diverged "
                            "or the data is broken. Lower train.lr, check the data, or resume from an earlier "
                            "checkpoint")
                    continue
                nonfinite_in_a_row = 0
                self.engine.step()
                done += 1
                loss_sum += float(loss.detach())
                for k, v in terms.items():
                    terms_sum[k] = terms_sum.get(k, 0.0) + float(v)
            self.step += 1
            self.samples_seen += samples * self.dist.world_size
            step_s = time.perf_counter() - start
            self.metrics.record(loss_sum / done, {k: v / done for k, v in terms_sum.items()}, samples, tokens,
                                step_s, data_s)
            if self.step == 1 or self.step % self.train.log_every == 0 or self.step == total:
                self._log()
            if self.evaluate is not None and self.train.eval_every and self.step % self.train.eval_every == 0:
                self._evaluate()
                last_eval = self.step
            saved = self.step % self.train.save_every == 0 and self.step < total
            if saved:
                self.save()
            if dist_utils.any_rank(self.stop.signum is not None, self.device):
                name = signal.Signals(self.stop.signum).name if self.stop.signum else "a signal on another rank"
                log.warning("received %s: saving a checkpoint at step %d and exiting", name, self.step)
                if not saved:  # saving this step again would first unmark its complete checkpoint
                    self.save()
                return "stopped"
        self.save()
        if self.evaluate is not None and last_eval != self.step:
            self._evaluate()
        return "finished"

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
        with torch.no_grad():
            results = self.evaluate(self.engine.module.model, self.step)
        self.engine.train()
        self.metrics.scalars(self.step, results)


TEST_NONFINITE_ENV = "ONEPEACE_TEST_NONFINITE_AT_STEP"


def _test_nonfinite_step() -> int | None:
    """Tests only: with ONEPEACE_TEST_NONFINITE_AT_STEP=N the first micro-batch of update N (0-based) gets a
    non-finite loss once, so a test can check that skipping it keeps resumption exact."""
    value = os.environ.get(TEST_NONFINITE_ENV)
    return int(value) if value else None


def _logit_scale(model: OnePeace) -> float:
    p = model.logit_scale
    if hasattr(p, "ds_tensor"):  # ZeRO-3 partitioned
        import deepspeed

        with deepspeed.zero.GatheredParameters([p]):
            return float(p.detach().reshape(-1)[0])
    return float(p.detach().reshape(-1)[0])
