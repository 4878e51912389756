"""``python -m onepeace.train`` / ``onepeace-pretrain``: pretraining under deepspeed, torchrun or srun.

    deepspeed --num_gpus 8 --module onepeace.train --config stage1_vl_base \\
        --deepspeed_config zero2_bf16 --run-dir runs/vl-base --resume auto
    srun python -m onepeace.train --config my_recipe.yaml --set train.steps=1000 --run-dir runs/x
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import sys
import time

import torch

from ..config import ConfigError
from ..data import check_data
from ..data.shards import ShardSpecError
from ..data.tokenizer import TokenizerError
from ..recipe import Recipe, dump_recipe, load_recipe, shipped_recipes
from .. import distributed as dist_utils, runs
from . import checkpoint
from .engine import load_ds_config, resolve_ds_config
from .signals import StopRequest

log = logging.getLogger("onepeace.train")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="onepeace-pretrain", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True,
                   help=f"recipe: a YAML file or a shipped recipe name ({', '.join(shipped_recipes())})")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a recipe value, e.g. --set train.steps=500 --set model.preset=base (repeatable)")
    p.add_argument("--deepspeed_config", "--deepspeed-config", dest="deepspeed_config", default=None,
                   help="DeepSpeed JSON file, or a shipped config by name (zero2_bf16, ...: onepeace/ds_configs); "
                        "'auto' values are filled from the recipe. "
                        "Default: ZeRO stage 1 with everything from the recipe")
    p.add_argument("--run-dir", default=None,
                   help="where config.yaml, log.txt, tensorboard/ and checkpoints/ go (default: runs/<recipe name>)")
    p.add_argument("--resume", default="none",
                   help="'auto': continue from the newest complete checkpoint of --run-dir if there is one; "
                        "a run or checkpoint directory; 'none' (default): start fresh (refused if --run-dir "
                        "already has checkpoints)")
    p.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)  # deepspeed
    return p


def setup_logging(run_dir: str, rank: int) -> None:
    fmt = logging.Formatter(f"%(asctime)s [rank {rank}] %(levelname)s %(name)s: %(message)s", "%H:%M:%S")
    root = logging.getLogger()
    root.handlers.clear()
    root.setLevel(logging.INFO if rank == 0 else logging.WARNING)
    console = logging.StreamHandler(sys.stdout)
    console.setFormatter(fmt)
    root.addHandler(console)
    if rank == 0:
        file = logging.FileHandler(os.path.join(run_dir, "log.txt"))
        file.setFormatter(fmt)
        root.addHandler(file)
    for noisy in ("DeepSpeed", "deepspeed", "torch.distributed"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _named(tags: list[str]) -> str:
    return ", ".join(tags[:5]) + (f" and {len(tags) - 5} more" if len(tags) > 5 else "")


def resolve_resume(arg: str, run_dir: str) -> checkpoint.Resume | None:
    """The checkpoint to resume from, or None for a fresh start.

    A fresh start is only made in a run directory without step directories: starting over an earlier
    run's checkpoints (complete or not) would mix two runs' checkpoints and could prune the other's.
    """
    ckpt_dir = os.path.join(run_dir, "checkpoints")
    existing = runs.step_dirs(ckpt_dir)
    complete = runs.complete_tags(ckpt_dir)
    if arg in ("none", "auto"):
        if complete and arg == "auto":
            return checkpoint.Resume(ckpt_dir, complete[-1][1])
        if complete:
            raise ConfigError(f"{run_dir} already has checkpoints: pass --resume auto to continue that run, or "
                              "choose another --run-dir")
        if existing:
            raise ConfigError(f"{ckpt_dir} holds step directories but no complete checkpoint ({_named(existing)}: "
                              "saves that were interrupted, or not made by onepeace-pretrain); refusing to start "
                              "a fresh run over them. Move or delete them, or choose another --run-dir")
        return None
    found, explicit = runs.find_checkpoint(arg), bool(runs.TAG_RE.match(os.path.basename(os.path.abspath(arg))))
    if existing and os.path.abspath(found[0]) != os.path.abspath(ckpt_dir):
        raise ConfigError(f"--resume {arg}: {ckpt_dir} already holds another run's step directories "
                          f"({_named(existing)}); pick an empty --run-dir to continue from {os.path.join(*found)}")
    return checkpoint.Resume(*found, explicit=explicit)


def micro_batch_size(recipe: Recipe) -> int:
    return sum(task.batch_size for task in recipe.data.train.values())


def check_run_dir(run_dir: str) -> None:
    if os.path.exists(run_dir) and not os.path.isdir(run_dir):
        raise ConfigError(f"--run-dir {run_dir} is a file, not a directory")
    parent = os.path.dirname(run_dir)
    while parent and not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if parent and not os.path.isdir(parent):
        raise ConfigError(f"--run-dir {run_dir}: {parent} is a file, not a directory")


def prepare(args: argparse.Namespace, where: dict | None = None
            ) -> tuple[Recipe, dict, str, tuple[str, str] | None, dist_utils.DistEnv]:
    """Everything that can fail on bad input, before any process group starts. ``where`` learns the run
    directory as soon as it is known, so that an error after that can go to its log.txt too."""
    where = {} if where is None else where
    dist = dist_utils.detect()
    where["rank"] = dist.rank
    if args.run_dir:
        where["run_dir"] = os.path.abspath(args.run_dir)
    recipe = load_recipe(args.config, args.overrides)
    run_dir = where["run_dir"] = os.path.abspath(args.run_dir or os.path.join("runs", recipe.name))
    check_run_dir(run_dir)
    if not recipe.data.train:
        raise ConfigError(f"{recipe.source}: data.train names no tasks")
    device_type = "cuda" if torch.cuda.is_available() else "cpu"
    ds_raw, ds_source = load_ds_config(args.deepspeed_config)
    ds = resolve_ds_config(ds_raw, recipe.train, micro_batch=micro_batch_size(recipe), world_size=dist.world_size,
                           device_type=device_type, source=ds_source)
    check_data(recipe.data, recipe.model)
    resume = resolve_resume(args.resume, run_dir)
    return recipe, ds, run_dir, resume, dist


def log_early_error(message: str, where: dict) -> None:
    """Append an error found before logging starts to the run's log.txt, in the format of the log lines
    after it (rank 0, and only into an existing run directory: a relaunched run's log is where its
    errors are looked for, and a mistyped command should not leave a new directory behind)."""
    run_dir = where.get("run_dir")
    if where.get("rank", 0) != 0 or not run_dir or not os.path.isdir(run_dir):
        return
    try:
        with open(os.path.join(run_dir, "log.txt"), "a", encoding="utf-8") as f:
            f.write(f"{time.strftime('%H:%M:%S')} [rank 0] ERROR onepeace.train: {message}\n")
    except OSError:
        pass  # the run directory is unusable (that may be the error itself): stderr has the message


def main(argv: list[str] | None = None) -> int:
    stop = StopRequest()
    try:
        return _main(argv, stop)
    finally:
        stop.restore()


def _main(argv: list[str] | None, stop: StopRequest) -> int:
    args = build_parser().parse_args(argv)
    where: dict = {}
    try:
        recipe, ds, run_dir, resume, dist = prepare(args, where)
    except (ConfigError, ShardSpecError, TokenizerError, FileNotFoundError, ValueError) as exc:
        message = " ".join(str(exc).split("\n"))  # one line
        print(f"onepeace-pretrain: error: {message}", file=sys.stderr)
        log_early_error(message, where)
        return 2
    os.makedirs(run_dir, exist_ok=True)
    setup_logging(run_dir, dist.rank)
    device = dist_utils.device_for(dist)
    dist_utils.init(dist, recipe.train.dist_timeout_s)
    try:
        return _train(recipe, ds, run_dir, resume, dist, device, stop)
    except ConfigError as exc:
        log.error("%s", exc)
        return 2
    except checkpoint.CheckpointSaveError as exc:
        log.error("%s", exc)
        return 1
    finally:
        dist_utils.shutdown()
        if argv is None:  # the process's own command line: it ends now
            _skip_collection_at_exit()


def _skip_collection_at_exit() -> None:
    """Interpreter shutdown garbage-collects the whole heap (torch, DeepSpeed, the model) again and again:
    about 8 s per rank on CPU, after the work is done. Frozen objects are skipped; files and logs are
    already closed. Not for in-process callers, whose frozen garbage would never be freed."""
    gc.freeze()


def _train(recipe: Recipe, ds: dict, run_dir: str, resume, dist, device, stop) -> int:
    from ..eval.periodic import build_periodic_eval
    from ..model import OnePeace
    from .trainer import Trainer
    from .. import zero3
    from ..runs import freeze_all_but, warm_start

    if dist.is_main:
        dump_recipe(recipe, os.path.join(run_dir, runs.RUN_CONFIG))
        log.info("run %s: recipe %s, %d rank(s) via %s, device %s, ZeRO stage %s, %s", run_dir, recipe.source,
                 dist.world_size, dist.launcher, device.type, ds.get("zero_optimization", {}).get("stage", 0),
                 recipe.train.precision)
    if recipe.train.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    torch.manual_seed(recipe.train.seed)  # identical initial weights on every rank
    with zero3.build_context(ds):  # ZeRO-3: partitioned as it is built, never whole on any rank
        model = OnePeace(recipe.model)
    zero3.initialize(model)
    if recipe.train.init_from and resume is None:
        warm_start(model, recipe.train.init_from, recipe.train.init_exclude, recipe.train.reset)
    trainable, frozen = freeze_all_but(model, recipe.train.trainable)
    log.info("model: %s parameters trainable, %s frozen", f"{trainable:,}", f"{frozen:,}")
    torch.manual_seed(recipe.train.seed * 1000 + dist.rank)  # per-rank dropout and drop path
    trainer = Trainer(recipe, ds, run_dir, dist, device, model, resume,
                      evaluate=build_periodic_eval(recipe, dist, device), stop=stop)
    start = time.time()
    outcome = trainer.run()
    trainer.stream.close()
    trainer.metrics.close()
    log.info("%s at step %d after %.0fs; checkpoints in %s", outcome, trainer.step, time.time() - start,
             trainer.ckpt_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
