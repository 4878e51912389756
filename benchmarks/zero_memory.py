"""Peak resident memory and model-state bytes per rank for ZeRO-0/1/2/3, model build included.

Each stage runs as its own 2-rank job (torchrun, gloo on CPU). A rank builds the model exactly as the
trainer does (under ``zero.Init`` for ZeRO-3, initialised module by module), wraps it in the DeepSpeed
engine with our AdamW and runs one image-text step, so gradients and optimizer states exist. It reports
its peak RSS over the whole run (``ru_maxrss``: the model build, the engine, the step) and the bytes of
model state it holds: parameters, gradients and optimizer states, each storage counted once.

    PYTHONPATH=. python benchmarks/zero_memory.py --preset base --stages 0,1,2,3
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile

sys.path.insert(0, __file__.rsplit("/", 2)[0])  # run from a plain checkout

from benchmarks._common import print_table, write_json  # noqa: E402
from onepeace.distributed import free_port  # noqa: E402

GIB = 2**30


def model_state_bytes(engine) -> int:
    import torch

    storages: dict[int, int] = {}

    def add(t) -> None:
        if torch.is_tensor(t) and t.numel():
            storage = t.untyped_storage()
            storages[storage.data_ptr()] = storage.nbytes()

    for p in engine.module.parameters():
        add(p.ds_tensor if hasattr(p, "ds_tensor") else p.data)
        add(p.grad)
        add(getattr(p.ds_tensor, "grad", None) if hasattr(p, "ds_tensor") else None)
    opt, depth = engine.optimizer, 0
    while opt is not None and depth < 4:
        for group in getattr(opt, "param_groups", []):
            for p in group["params"]:
                add(p)
                add(p.grad)
        for state in getattr(opt, "state", {}).values():
            for v in state.values():
                add(v)
        for name in ("averaged_gradients", "fp32_partitioned_groups_flat", "single_partition_of_fp32_groups",
                     "bit16_groups_flat", "fp16_partitioned_groups_flat"):
            value = getattr(opt, name, None)
            for t in (value.values() if isinstance(value, dict) else value or []):
                for x in (t if isinstance(t, (list, tuple)) else [t]):
                    add(x)
        opt, depth = getattr(opt, "optimizer", None), depth + 1
    return sum(storages.values())


def worker(args) -> None:
    import torch

    from benchmarks.train_step import make_step
    from onepeace.config import model_config
    from onepeace.model import OnePeace
    from onepeace import distributed, zero3
    from onepeace.train.config import LossWeights, TrainConfig
    from onepeace.train.engine import initialize, resolve_ds_config
    from onepeace.train.objective import PretrainObjective

    dist = distributed.detect()
    distributed.init(dist, 600)
    train = TrainConfig(precision="fp32", lr=1e-4, warmup_steps=0)
    zero = {"stage": args.stage}
    if args.bucket:  # DeepSpeed's defaults (5e8-element reduce/all-gather buckets, 1e9 live parameters) suit GPUs
        zero.update(reduce_bucket_size=args.bucket, allgather_bucket_size=args.bucket,
                    stage3_prefetch_bucket_size=args.bucket, stage3_max_live_parameters=args.bucket)
    ds = resolve_ds_config({"zero_optimization": zero}, train, micro_batch=args.batch,
                           world_size=dist.world_size, device_type="cpu")
    config = model_config(args.preset)
    torch.manual_seed(0)
    with zero3.build_context(ds):
        model = OnePeace(config)
    zero3.initialize(model)
    built = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    engine, _, _ = initialize(PretrainObjective(model, {"image-text": "image-text"}, LossWeights()), ds, train)
    step = make_step(config, args.batch, 24, torch.device("cpu"), seed=dist.rank)
    loss, _ = engine(step)
    engine.backward(loss)
    engine.step()
    out = {"stage": args.stage, "rank": dist.rank, "build_peak": built,
           "peak": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
           "model_state": model_state_bytes(engine), "loss": float(loss.detach())}
    with open(os.path.join(args.out, f"stage{args.stage}_rank{dist.rank}.json"), "w") as f:
        json.dump(out, f)
    torch.distributed.destroy_process_group()


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="base")
    p.add_argument("--stages", default="0,1,2,3")
    p.add_argument("--batch", type=int, default=1, help="image-text samples in the one step")
    p.add_argument("--bucket", type=int, default=0,
                   help="elements per ZeRO reduce/all-gather/prefetch bucket and live-parameter cap (0: DeepSpeed's)")
    p.add_argument("--json", default=None)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--stage", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--out", default="", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        worker(args)
        return {}
    out = tempfile.mkdtemp(prefix="zero-memory-")
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    for stage in args.stages.split(","):
        subprocess.run([torchrun, "--nproc_per_node", "2", "--master_port", str(free_port()), __file__, "--worker",
                        "--preset", args.preset, "--batch", str(args.batch), "--stage", stage, "--out", out,
                        "--bucket", str(args.bucket)],
                       check=True)
    results = [json.load(open(os.path.join(out, f))) for f in sorted(os.listdir(out))]
    zero0 = {r["rank"]: r["peak"] for r in results if r["stage"] == 0}
    rows = [[f"ZeRO-{r['stage']}", r["rank"], f"{r['build_peak'] / GIB:.2f}", f"{r['peak'] / GIB:.2f}",
             f"{r['model_state'] / GIB:.2f}", f"{r['peak'] / zero0[r['rank']]:.2f}x" if r["rank"] in zero0 else None]
            for r in results]
    print_table(["stage", "rank", "peak RSS after build (GiB)", "peak RSS (GiB)", "model state (GiB)",
                 "peak vs ZeRO-0"], rows, f"{args.preset}, fp32, 2 CPU ranks (gloo), one image-text step")
    payload = {"preset": args.preset, "results": results}
    write_json(args.json, payload)
    return payload


if __name__ == "__main__":
    main()
