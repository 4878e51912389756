"""Full stage-1 training steps per second: samples/s, achieved TFLOP/s and MFU.

One step is everything the trainer does for an image-text batch: text and image alone (contrastive
loss, denoising targets), the masked text, image and pair views through encoder and decoder, the
unmasked pair without gradient, backward, optimizer step. Masks come from the real masking code at the
reference ratios. The FLOPs of a step are counted once with FlopCounterMode.

With DeepSpeed importable the step runs in a single-rank DeepSpeed engine at the given ZeRO stage;
``--engine torch`` (or no DeepSpeed, as on the GPU image) runs the same step with torch AdamW.

    PYTHONPATH=. python benchmarks/train_step.py --preset base --batch 64 --zero 2 --checkpointing both
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import sys
import time

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, __file__.rsplit("/", 2)[0])  # run from a plain checkout

from benchmarks._common import machine_name, pick_device, print_table, synchronize, write_json  # noqa: E402
from onepeace.checks import set_value_checks  # noqa: E402
from onepeace.config import MODEL_PRESETS, model_config  # noqa: E402
from onepeace.data.masking import image_keeps, pad_keeps, text_keeps  # noqa: E402
from onepeace.model import OnePeace  # noqa: E402
from onepeace.model.accounting import device_peak_tflops  # noqa: E402
from onepeace.train.config import LossWeights, TrainConfig  # noqa: E402
from onepeace.train.objective import PretrainObjective  # noqa: E402


def make_step(config, batch: int, text_len: int, device, seed: int = 0) -> dict:
    """One image-text batch in the trainer's format (docs/data_format.md), masks at the reference ratios."""
    rng = np.random.default_rng(seed)
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(3, config.vocab_size, (batch, text_len), generator=g)
    tokens[:, -1] = 2  # EOS
    keeps, pair_keeps = [], []
    for _ in range(batch):
        word_start = rng.random(text_len - 1) < 0.7  # most pieces start a word; EOS comes after them
        word_start[0] = True
        keep, pair_keep = text_keeps(word_start, 0.15, 0.40, rng)  # EOS is always kept
        keeps.append(keep)
        pair_keeps.append(pair_keep)
    patches = config.image_grid**2
    image_keep, pair_image_keep = image_keeps(batch, patches, 0.75, 0.6875, rng)
    step = {"images": torch.randn(batch, 3, config.image_size, config.image_size, generator=g),
            "text_tokens": tokens, "text_padding_mask": torch.zeros(batch, text_len, dtype=torch.bool),
            "text_keep": pad_keeps(keeps), "pair_text_keep": pad_keeps(pair_keeps),
            "image_keep": image_keep, "pair_image_keep": pair_image_keep}
    return {"image-text": {k: v.to(device) for k, v in step.items()}}


class TorchEngine:
    """The same step without DeepSpeed: torch AdamW, bf16 autocast over fp32 weights."""

    def __init__(self, module, train: TrainConfig, device):
        from onepeace.train.engine import param_groups

        self.module = module.to(device)
        self.optimizer = torch.optim.AdamW(param_groups(module, train.weight_decay), lr=train.lr, betas=train.betas)
        self.amp = train.precision == "bf16"
        self.device = device

    def __call__(self, step):
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
            return self.module(step)

    def backward(self, loss):
        loss.backward()

    def step(self):
        torch.nn.utils.clip_grad_norm_(self.module.parameters(), 3.0)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)


def deepspeed_engine(module, train: TrainConfig, zero: int, batch: int, device):
    from onepeace import distributed
    from onepeace.train.engine import initialize, resolve_ds_config

    if not torch.distributed.is_initialized():
        distributed.init(distributed.detect(), 600)
    ds = resolve_ds_config({"zero_optimization": {"stage": zero}}, train, micro_batch=batch, world_size=1,
                           device_type=device.type)
    engine, _, _ = initialize(module, ds, train)
    return engine


def measure(args, preset: str, checkpointing: bool, device) -> dict:
    config = model_config(preset, modalities=["text", "image"], attention_backend=args.backend,
                          checkpoint_activations=checkpointing, compile_encoder=args.compile)
    set_value_checks(False)  # as the trainer does: its batches come validated from the data pipeline
    torch.manual_seed(0)
    module = PretrainObjective(OnePeace(config), {"image-text": "image-text"}, LossWeights())
    train = TrainConfig(precision=args.precision, lr=1e-4, warmup_steps=0)
    use_ds = args.engine == "deepspeed" or (args.engine == "auto" and importlib.util.find_spec("deepspeed"))
    engine = deepspeed_engine(module, train, args.zero, args.batch, device) if use_ds else \
        TorchEngine(module, train, device)
    step = make_step(config, args.batch, args.text_len, device)

    def one(count_flops: bool = False) -> float:
        counter = FlopCounterMode(display=False) if count_flops else contextlib.nullcontext()
        with counter:
            loss, _ = engine(step)
            engine.backward(loss)
        engine.step()
        return counter.get_total_flops() if count_flops else 0.0

    flops = one(count_flops=True)
    for _ in range(args.warmup):
        one()
    synchronize(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    for _ in range(args.steps):
        one()
    synchronize(device)
    seconds = (time.perf_counter() - start) / args.steps
    syncs = None
    if args.sync_check:  # the same steps again, every host wait recorded with its site
        from benchmarks._syncs import HostSyncCounter

        with HostSyncCounter() as counter:
            for _ in range(args.steps):
                one()
        syncs = {}
        for e in counter.events:
            key = f"{e['kind']}: {e['owner']} {e['site']}"
            syncs[key] = syncs.get(key, 0) + 1 / args.steps
        print_table(["host wait (per step)", "count"], sorted(syncs.items()) or [["none", 0]],
                    f"host waits per {preset} step ({'set_sync_debug_mode + ' if device.type == 'cuda' else ''}"
                    "value reads)")
    peak = args.peak_tflops or device_peak_tflops(device)
    tflops = flops / seconds / 1e12
    return dict(preset=preset, engine=f"deepspeed zero{args.zero}" if use_ds else "torch",
                checkpointing=checkpointing, batch=args.batch, precision=args.precision,
                backend=module.model.backend_for(device), step_s=seconds, samples_per_s=args.batch / seconds,
                tflops=tflops, mfu=tflops / peak if peak else None,
                peak_gib=torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None,
                syncs=syncs)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--presets", default="base", help=f"comma separated, from {', '.join(MODEL_PRESETS)}")
    p.add_argument("--batch", type=int, default=None, help="image-text samples per step (default: 64 CUDA, 2 CPU)")
    p.add_argument("--text-len", type=int, default=40, help="text tokens per caption, EOS included")
    p.add_argument("--engine", default="auto", choices=["auto", "deepspeed", "torch"])
    p.add_argument("--zero", type=int, default=2, choices=[0, 1, 2, 3], help="ZeRO stage (DeepSpeed engine)")
    p.add_argument("--checkpointing", default="both", choices=["on", "off", "both"])
    p.add_argument("--precision", default=None, choices=["bf16", "fp32"], help="default: bf16 CUDA, fp32 CPU")
    p.add_argument("--backend", default="auto", help="attention backend")
    p.add_argument("--compile", action="store_true", help="torch.compile each fusion layer (CUDA)")
    p.add_argument("--device", default="auto")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--peak-tflops", type=float, default=None)
    p.add_argument("--sync-check", action="store_true",
                   help="repeat the steps recording every host wait (value reads; on CUDA set_sync_debug_mode too)")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    device = pick_device(args.device)
    args.precision = args.precision or ("bf16" if device.type == "cuda" else "fp32")
    args.batch = args.batch or (64 if device.type == "cuda" else 2)
    modes = {"on": [True], "off": [False], "both": [False, True]}[args.checkpointing]

    results = [measure(args, preset, ckpt, device) for preset in args.presets.split(",") for ckpt in modes]
    rows = [[r["preset"], r["engine"], "on" if r["checkpointing"] else "off", r["batch"], r["backend"],
             f"{r['step_s']:.3f}", f"{r['samples_per_s']:.1f}", f"{r['tflops']:.2f}",
             f"{100 * r['mfu']:.1f}%" if r["mfu"] else None, r["peak_gib"] and f"{r['peak_gib']:.1f}"]
            for r in results]
    print_table(["preset", "engine", "ckpt", "batch", "attention", "s/step", "samples/s", "TFLOP/s", "MFU",
                 "peak GiB"], rows, f"stage-1 training step, {args.precision}, {machine_name(device)}")
    payload = {"machine": machine_name(device), "results": results}
    write_json(args.json, payload)
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    return payload


if __name__ == "__main__":
    main()
