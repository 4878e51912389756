"""Training metrics: averaged over a logging window and over ranks, to TensorBoard and the console."""

from __future__ import annotations

import logging
import os
from collections import defaultdict

import numpy as np
import torch

from .. import distributed
from ..geometry import audio_frame_count

log = logging.getLogger(__name__)


def count_tokens(step: dict[str, dict], image_tokens: int) -> int:
    """Input tokens of a step (non-padding text tokens, image patches, audio frames), CLS excluded.

    Counted on the host copies of the batch, through numpy: never a tensor-to-Python read."""
    total = 0
    for batch in step.values():
        if "text_padding_mask" in batch:
            mask = batch["text_padding_mask"].numpy()
            total += mask.size - int(np.count_nonzero(mask))
        if "images" in batch:
            total += batch["images"].shape[0] * image_tokens
        if "audio_padding_mask" in batch:
            mask = batch["audio_padding_mask"].numpy()
            lengths = mask.shape[1] - np.count_nonzero(mask, axis=1)
            total += sum(audio_frame_count(int(n)) for n in lengths)
    return total


def count_samples(step: dict[str, dict]) -> int:
    return sum(len(batch["ids"]) if "ids" in batch else next(iter(batch.values())).shape[0]
               for batch in step.values())


class TrainMetrics:
    """Sums per step, reduced over ranks at each log: losses are averaged, throughput is global."""

    def __init__(self, run_dir: str, is_main: bool, device: torch.device, peak_tflops: float | None) -> None:
        self.device, self.peak_tflops, self.is_main = device, peak_tflops, is_main
        self.writer = None
        if is_main:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(os.path.join(run_dir, "tensorboard"))
        self.flops_per_step: float | None = None  # per rank, counted on the first step
        self._reset()

    def _reset(self) -> None:
        self.sums: dict[str, float] = defaultdict(float)
        self.device_sums: dict[str, torch.Tensor] = {}  # losses stay on the device until they are logged
        self.steps = 0

    def _add(self, key: str, value: float | torch.Tensor) -> None:
        if torch.is_tensor(value):
            value = value.detach().to(torch.float64)
            self.device_sums[key] = value if key not in self.device_sums else self.device_sums[key] + value
        else:
            self.sums[key] += value

    def record(self, loss: float | torch.Tensor, terms: dict[str, float | torch.Tensor], samples: int, tokens: int,
               step_s: float, data_s: float) -> None:
        """One step's mean losses (floats or 0-d device tensors: these are summed on the device and read
        only in :meth:`log`) and its counts and times."""
        self.steps += 1
        self._add("loss/total", loss)
        for k, v in terms.items():
            self._add(f"loss/{k}", v)
        self.sums["perf/samples"] += samples
        self.sums["perf/tokens"] += tokens
        self.sums["perf/seconds"] += step_s
        self.sums["perf/data_seconds"] += data_s

    def log(self, step: int, total_steps: int, extra: dict[str, float],
            summed: dict[str, float] | None = None) -> dict[str, float]:
        """Reduce the window over ranks, write it, reset it; returns what was written.

        ``extra`` values are the same on every rank (or rank 0's are meant); ``summed`` ones are per-rank
        counts (bad samples) written as their total over all ranks. Host sums, device sums (the losses)
        and ``summed`` travel in one all-reduce and are read once.
        """
        summed = summed or {}
        host_keys, device_keys, summed_keys = sorted(self.sums), sorted(self.device_sums), sorted(summed)
        values = torch.tensor([self.sums[k] for k in host_keys] + [summed[k] for k in summed_keys],
                              dtype=torch.float64, device=self.device)
        if device_keys:
            values = torch.cat([values, torch.stack([self.device_sums[k].reshape(()) for k in device_keys])
                                .to(self.device)])
        keys = host_keys + summed_keys + device_keys
        world = distributed.world_size()
        if world > 1:
            torch.distributed.all_reduce(values)
        sums = dict(zip(keys, values.tolist()))
        extra = {**extra, **{k: sums.pop(k) for k in summed_keys}}
        n = max(self.steps, 1)
        seconds = sums["perf/seconds"] / world  # ranks run in lockstep: the mean step time
        out = {k: v / (n * world) for k, v in sums.items() if k.startswith("loss/")}
        out.update({
            "perf/samples_per_s": sums["perf/samples"] / max(seconds, 1e-9),
            "perf/tokens_per_s": sums["perf/tokens"] / max(seconds, 1e-9),
            "perf/step_time_s": seconds / n,
            "perf/data_wait_fraction": sums["perf/data_seconds"] / max(sums["perf/seconds"], 1e-9),
        })
        if self.flops_per_step:
            tflops = self.flops_per_step / (seconds / n) / 1e12  # per rank (per device)
            out["perf/tflops_per_device"] = tflops
            if self.peak_tflops:
                out["perf/mfu"] = tflops / self.peak_tflops
        if self.device.type == "cuda":
            out["memory/max_allocated_gib"] = torch.cuda.max_memory_allocated(self.device) / 2**30
            out["memory/max_reserved_gib"] = torch.cuda.max_memory_reserved(self.device) / 2**30
        out.update(extra)
        if self.writer is not None:
            for k, v in out.items():
                self.writer.add_scalar(k, v, step)
            self.writer.flush()
        if self.is_main:
            log.info(self.console_line(step, total_steps, out))
        self._reset()
        return out

    @staticmethod
    def console_line(step: int, total: int, m: dict[str, float]) -> str:
        terms = " ".join(f"{k[5:]}={v:.3f}" for k, v in m.items() if k.startswith("loss/") and k != "loss/total")
        parts = [f"step {step}/{total}", f"loss {m['loss/total']:.4f} ({terms})", f"lr {m.get('train/lr', 0):.2e}",
                 f"gnorm {m.get('train/grad_norm', float('nan')):.2f}", f"scale {m.get('train/logit_scale', 0):.1f}",
                 f"{m['perf/samples_per_s']:.1f} samples/s", f"{m['perf/tokens_per_s']:,.0f} tok/s",
                 f"{m['perf/step_time_s']:.2f} s/step", f"data {100 * m['perf/data_wait_fraction']:.0f}%",
                 f"bad {int(m.get('data/bad_samples', 0))}", f"nonfinite {int(m.get('train/nonfinite_skipped', 0))}"]
        if "perf/mfu" in m:
            parts.append(f"mfu {100 * m['perf/mfu']:.1f}%")
        if "memory/max_allocated_gib" in m:
            parts.append(f"mem {m['memory/max_allocated_gib']:.1f} GiB")
        return " | ".join(parts)

    def scalars(self, step: int, values: dict[str, float]) -> None:
        """Write extra scalars (evaluation results) from rank 0."""
        if self.writer is not None:
            for k, v in values.items():
                self.writer.add_scalar(k, v, step)
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
