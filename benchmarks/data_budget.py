"""Can the data workers keep up with the GPU? Samples/s per GPU at a target MFU, from counted FLOPs.

For each preset, the FLOPs of one full stage-1 image-text step (every view, the decoder, the no-grad
pair target, backward; see benchmarks/train_step.py) are counted with FlopCounterMode on a real CPU step
at batch 1 and 2, so the per-sample part and the part that grows with the batch squared (the
contrastive and denoising similarity matrices) are both known; they are evaluated at the per-GPU
batch. At ``mfu`` x the device's bf16 peak that gives the samples per second one GPU consumes; divided
by what one data worker delivers (``--worker-rate``, measured by benchmarks/data_pipeline.py) and
times the headroom, the workers each GPU needs.

    PYTHONPATH=. python benchmarks/data_budget.py --presets base,large --worker-rate 595.8
"""

from __future__ import annotations

import argparse
import math
import sys

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, __file__.rsplit("/", 2)[0])  # run from a plain checkout

from benchmarks._common import print_table, write_json  # noqa: E402
from benchmarks.train_step import make_step  # noqa: E402
from onepeace.config import model_config  # noqa: E402
from onepeace.model import OnePeace  # noqa: E402
from onepeace.model.accounting import BF16_PEAK_TFLOPS  # noqa: E402
from onepeace.recipe import load_recipe  # noqa: E402
from onepeace.train.config import LossWeights  # noqa: E402
from onepeace.train.objective import PretrainObjective  # noqa: E402


def step_flops(module: PretrainObjective, config, batch: int, text_len: int) -> int:
    step = make_step(config, batch, text_len, torch.device("cpu"))
    with FlopCounterMode(display=False) as counter:
        loss, _ = module(step)
        loss.backward()
    module.zero_grad(set_to_none=True)
    return counter.get_total_flops()


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--presets", default="base,large")
    p.add_argument("--gpu", default="H100 SXM", help=f"bf16 peak from: {', '.join(BF16_PEAK_TFLOPS)}")
    p.add_argument("--mfu", type=float, default=0.45, help="target model FLOPs utilisation")
    p.add_argument("--batch", type=int, default=None,
                   help="image-text samples per GPU per step (default: the shipped stage1_vl_<preset> recipe's)")
    p.add_argument("--text-len", type=int, default=40)
    p.add_argument("--worker-rate", type=float, required=True,
                   help="image-text samples/s one data worker delivers (benchmarks/data_pipeline.py)")
    p.add_argument("--headroom", type=float, default=3.0)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    peak = BF16_PEAK_TFLOPS[args.gpu] * 1e12
    rows, results = [], []
    for preset in args.presets.split(","):
        shipped = load_recipe(f"stage1_vl_{preset}")
        batch = args.batch or shipped.data.train["image-text"].batch_size
        default_workers = shipped.data.num_workers
        config = model_config(preset, modalities=["text", "image"], attention_backend="sdpa")
        torch.manual_seed(0)
        module = PretrainObjective(OnePeace(config), {"image-text": "image-text"}, LossWeights())
        f1, f2 = step_flops(module, config, 1, args.text_len), step_flops(module, config, 2, args.text_len)
        quad = (f2 - 2 * f1) / 2  # flops(b) = lin * b + quad * b^2
        lin = f1 - quad
        per_sample = lin + quad * batch
        samples_per_s = args.mfu * peak / per_sample
        workers = math.ceil(args.headroom * samples_per_s / args.worker_rate)
        results.append(dict(preset=preset, batch=batch, flops_per_sample=per_sample, linear=lin, quadratic=quad,
                            samples_per_s=samples_per_s, workers=workers, recipe_workers=default_workers))
        rows.append([preset, batch, f"{per_sample / 1e12:.3f}", f"{samples_per_s:,.0f}", f"{args.worker_rate:.0f}",
                     workers, default_workers, "yes" if workers <= default_workers else "no"])
    print_table(["preset", "batch/GPU", "TFLOP/sample (step)", f"samples/s/GPU at {args.mfu:.0%} MFU", "samples/s/worker",
                 f"workers/GPU ({args.headroom:g}x)", "recipe num_workers", "within"], rows,
                f"stage-1 image-text (shipped stage1_vl_<preset> recipes), {args.gpu} bf16 peak {peak / 1e12:.0f} TFLOP/s")
    payload = {"gpu": args.gpu, "mfu": args.mfu, "results": results}
    write_json(args.json, payload)
    return payload


if __name__ == "__main__":
    main()
