"""Peak resident memory and model-state bytes per rank for ZeRO-0/1/2/3, model build included.

Each stage runs as its own 2-rank job (torchrun, gloo on CPU). A rank builds the model exactly as the
trainer does (under ``zero.Init`` for ZeRO-3, initialised module by module), wraps it in the DeepSpeed
engine with our AdamW and runs one image-text step, so gradients and optimizer states exist. Stage N
uses the ``zero_optimization`` section of the shipped ``zeroN_bf16.json`` (stage 0: none), in the
recipes' bf16 unless ``--precision fp32``.

It reports each rank's peak resident memory over the whole run and per phase (build, engine set-up,
forward, backward, optimizer step; the kernel's high-water mark, reset between phases through
``/proc/self/clear_refs``) and the bytes of model state it holds: parameters, gradients and optimizer
states, each storage counted once.

Resident memory counts what glibc's allocator keeps after a free, not only live tensors: its dynamic
mmap threshold serves big blocks from the heap after the first big free, and the heap does not shrink
past a live block. ZeRO frees and reallocates big buffers (gathered parameters, buckets) all the time,
so the ranks run with ``MALLOC_MMAP_THRESHOLD_=65536`` by default (blocks of 64 KiB and more are mapped
and unmapped one by one), which makes the figures measure what is live. ``--malloc-mmap-threshold 0``
keeps glibc's default.

    PYTHONPATH=. python benchmarks/zero_memory.py --preset base --stages 0,1,2,3
"""

from __future__ import annotations

import argparse
import json
import os
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


def _rss() -> tuple[int, int]:
    """(current, peak since the last :func:`_reset_peak`) resident bytes of this process."""
    fields = dict(line.split(":", 1) for line in open("/proc/self/status"))
    return (int(fields["VmRSS"].split()[0]) * 1024, int(fields["VmHWM"].split()[0]) * 1024)


def _reset_peak() -> None:
    """Start a new peak: writing 5 to clear_refs resets VmHWM (Linux >= 4.0)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def worker(args) -> None:
    import torch

    from benchmarks.train_step import make_step
    from onepeace.config import model_config
    from onepeace.model import OnePeace
    from onepeace import distributed, zero3
    from onepeace.train.config import LossWeights, TrainConfig
    from onepeace.train.engine import ds_config_path, initialize, load_ds_config, resolve_ds_config
    from onepeace.train.objective import PretrainObjective

    dist = distributed.detect()
    distributed.init(dist, 600)
    train = TrainConfig(precision=args.precision, lr=1e-4, warmup_steps=0)
    zero = {"stage": 0}
    if args.stage:
        ds_file, _ = load_ds_config(ds_config_path(f"zero{args.stage}_bf16"))
        zero = dict(ds_file["zero_optimization"])
    if args.bucket:  # DeepSpeed's defaults (5e8-element reduce/all-gather buckets, 1e9 live parameters) suit GPUs
        zero.update(reduce_bucket_size=args.bucket, allgather_bucket_size=args.bucket,
                    stage3_prefetch_bucket_size=args.bucket, stage3_max_live_parameters=args.bucket)
    if args.sub_group:  # ZeRO-3 runs the optimizer one sub-group at a time; DeepSpeed's default is 1e9 elements
        zero.update(sub_group_size=args.sub_group)
    ds = resolve_ds_config({"zero_optimization": zero}, train, micro_batch=args.batch,
                           world_size=dist.world_size, device_type="cpu")
    config = model_config(args.preset, **({"depth": args.depth} if args.depth else {}))
    phases: dict[str, tuple[int, int]] = {}

    def phase(name: str) -> None:
        phases[name] = _rss()
        _reset_peak()

    torch.manual_seed(0)
    _reset_peak()
    with zero3.build_context(ds):
        model = OnePeace(config)
    zero3.initialize(model)
    phase("build")
    engine, _, _ = initialize(PretrainObjective(model, {"image-text": "image-text"}, LossWeights()), ds, train)
    phase("engine")
    step = make_step(config, args.batch, 24, torch.device("cpu"), seed=dist.rank)
    loss, _ = engine(step)
    phase("forward")
    engine.backward(loss)
    phase("backward")
    engine.step()
    phase("step")
    out = {"stage": args.stage, "rank": dist.rank, "build_peak": phases["build"][1],
           "peak": max(peak for _, peak in phases.values()), "phases": phases,
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
                   help="elements per ZeRO reduce/all-gather/prefetch bucket and live-parameter cap "
                        "(0: the shipped file's, else DeepSpeed's)")
    p.add_argument("--sub-group", type=int, default=0,
                   help="ZeRO-3 sub_group_size: elements the optimizer steps at once (0: the shipped file's 5e7)")
    p.add_argument("--precision", default="bf16", choices=("bf16", "fp32"))
    p.add_argument("--malloc-mmap-threshold", type=int, default=65536,
                   help="glibc's MALLOC_MMAP_THRESHOLD_ for the ranks, in bytes (0: glibc's dynamic default)")
    p.add_argument("--depth", type=int, default=0, help="override the preset's depth (0: keep it)")
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
    env = dict(os.environ)
    if args.malloc_mmap_threshold:
        env["MALLOC_MMAP_THRESHOLD_"] = str(args.malloc_mmap_threshold)
    settings = ", ".join(f"{name} {value:g}" for name, value in (("buckets", args.bucket),
                                                                  ("sub_group_size", args.sub_group)) if value)
    for stage in args.stages.split(","):
        subprocess.run([torchrun, "--nproc_per_node", "2", "--master_port", str(free_port()), __file__, "--worker",
                        "--preset", args.preset, "--batch", str(args.batch), "--stage", stage, "--out", out,
                        "--bucket", str(args.bucket), "--depth", str(args.depth), "--precision", args.precision,
                        "--sub-group", str(args.sub_group)],
                       check=True, env=env)
    results = [json.load(open(os.path.join(out, f))) for f in sorted(os.listdir(out))]
    zero0 = {r["rank"]: r["peak"] for r in results if r["stage"] == 0}
    rows = [[f"ZeRO-{r['stage']}", r["rank"], f"{r['build_peak'] / GIB:.2f}", f"{r['peak'] / GIB:.2f}",
             f"{r['model_state'] / GIB:.2f}", f"{r['peak'] / zero0[r['rank']]:.2f}x" if r["rank"] in zero0 else None]
            for r in results]
    print_table(["stage", "rank", "peak RSS after build (GiB)", "peak RSS (GiB)", "model state (GiB)",
                 "peak vs ZeRO-0"], rows, f"{args.preset}, {args.precision}, 2 CPU ranks (gloo), one image-text step, shipped zeroN_bf16 "
                 f"settings{' with ' + settings if settings else ''}, MALLOC_MMAP_THRESHOLD_="
                 f"{args.malloc_mmap_threshold or 'glibc default'}")
    print_table(["stage", "rank", *(f"{name}: peak / after (GiB)" for name in results[0]["phases"])],
                [[f"ZeRO-{r['stage']}", r["rank"], *(f"{peak / GIB:.2f} / {now / GIB:.2f}"
                                                    for now, peak in r["phases"].values())] for r in results],
                "resident memory per phase: the peak within the phase and what is left after it")
    payload = {"preset": args.preset, "results": results}
    write_json(args.json, payload)
    return payload


if __name__ == "__main__":
    main()
