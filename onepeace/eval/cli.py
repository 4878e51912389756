"""``onepeace-eval MODEL --data SHARDS``: zero-shot retrieval and classification of a trained model.

    onepeace-eval exports/vl-base --data shards/coco-val                        # image<->text R@1/5/10
    onepeace-eval runs/al-base --data shards/clotho-val --json                  # a run's newest checkpoint
    onepeace-eval exports/al-base --data shards/esc50 --kind audio --labels esc50.txt --template "a sound of {}"
    torchrun --nproc_per_node 8 -m onepeace.eval.cli exports/vl-base --data shards/coco-val   # or srun

MODEL is an exported model directory (onepeace-export), a run directory (its newest complete
checkpoint) or one checkpoint directory. Pair shards (image-text, audio-text) give retrieval in both
directions, with every caption of every item (COCO/Clotho rule: an item counts as found when any of
its captions is retrieved); with --labels they also give classification of the image or audio. Several ranks split
the set (each sample is embedded once) and rank 0 prints the result. Exit status 2: bad input.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import dataclasses
import json
import logging
import os
import sys
import time
from dataclasses import dataclass

import torch

from ..config import ConfigError
from ..files import atomic_write
from ..data.config import DataConfig, SourceConfig, TaskConfig
from ..data.shards import ShardSpecError, resolve_shards
from ..data.tokenizer import Tokenizer, TokenizerError
from .. import distributed as dist_utils
from .errors import EvalError
from ..runs import EVAL_RUNTIME, LoadedModel, load_model
from .report import format_table, to_json
from .zeroshot import KINDS, Classifier, check_supported, default_template, evaluate_stream, needed_modalities

BAD_INPUT = (EvalError, ConfigError, ShardSpecError, TokenizerError, FileNotFoundError)
TIMEOUT_S = 1800  # a rank that died makes the others fail after this long instead of hanging


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="onepeace-eval", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", metavar="MODEL", help="exported model directory, run directory or checkpoint directory")
    p.add_argument("--data", required=True, metavar="SHARDS",
                   help="evaluation shards: a folder with index.json, an index.json, or tar paths with braces "
                        "(several joined with ::)")
    p.add_argument("--kind", choices=KINDS, default=None,
                   help="what to evaluate (default: the shards' kind). image-text/audio-text: retrieval; "
                        "image/audio: classification only (needs --labels), also from pair shards")
    p.add_argument("--labels", metavar="FILE", default=None,
                   help="class names, one per line: adds zero-shot classification against each sample's label")
    p.add_argument("--template", default=None,
                   help="prompt for each class name, with {} where the name goes "
                        "(default: 'a photo of {}' for images, 'a sound of {}' for audio)")
    p.add_argument("--tokenizer", metavar="SIDECAR", default=None,
                   help="tokenizer sidecar (PREFIX.json); default: the one saved with the export or named by the run")
    p.add_argument("--batch-size", type=int, default=32, help="samples per forward pass per rank (default: 32)")
    p.add_argument("--num-workers", type=int, default=2, help="DataLoader worker processes per rank (default: 2)")
    p.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32", help="weights and activations (default: fp32)")
    p.add_argument("--strict-captions", action="store_true",
                   help="retrieval: count an identical caption of another item as a miss (by default a retrieved "
                        "item or caption whose caption is identical to the true one counts as correct; either way "
                        "the output says how many captions are shared)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    p.add_argument("--out", metavar="FILE", default=None, help="also write the JSON object to FILE")
    return p


@dataclass
class Job:
    loaded: LoadedModel
    stream: object  # onepeace.data.EvalStream
    name: str
    kind: str
    tokenizer: Tokenizer | None
    classifier: Classifier | None


def _tokenizer(args: argparse.Namespace, loaded: LoadedModel, kind: str, classify: bool) -> Tokenizer | None:
    path = args.tokenizer or loaded.tokenizer
    if path is None:
        if "text" in needed_modalities(kind, classify):
            raise EvalError(f"the model {args.model} names no tokenizer: pass --tokenizer PREFIX.json")
        return None
    try:
        return Tokenizer(path)
    except TokenizerError as exc:
        hint = "" if args.tokenizer else f" (the tokenizer named by {loaded.source}; pass --tokenizer to use another)"
        raise TokenizerError(f"{exc}{hint}") from None


def prepare(args: argparse.Namespace, dist: dist_utils.DistEnv) -> Job:
    """Everything that can fail on bad input, before any process group or forward pass."""
    from ..data.loaders import build_eval_loader

    if args.batch_size < 1 or args.num_workers < 0:
        raise EvalError("--batch-size must be >= 1 and --num-workers >= 0")
    if args.template is not None and args.labels is None:
        raise EvalError("--template is for classification: give --labels FILE too")
    kind = args.kind or resolve_shards(args.data).kind
    if kind not in KINDS:
        raise EvalError(f"{args.data} holds {kind} shards; evaluation reads {', '.join(KINDS)} (choose with --kind)")
    classifier = Classifier.from_file(args.labels, args.template or default_template(kind)) if args.labels else None
    loaded = load_model(args.model, **EVAL_RUNTIME)
    name = args.data
    check_supported(loaded.model.config, kind, name, classifier is not None)
    tokenizer = _tokenizer(args, loaded, kind, classifier is not None)
    task = TaskConfig(kind=kind, sources=[SourceConfig(shards=args.data)], batch_size=args.batch_size)
    data = dataclasses.replace(loaded.data or DataConfig(), tokenizer="", train={}, eval={name: task},
                               num_workers=args.num_workers)
    stream = build_eval_loader(name, data, loaded.model.config, tokenizer, rank=dist.rank, world_size=dist.world_size)
    return Job(loaded, stream, name, kind, tokenizer, classifier)


@contextlib.contextmanager
def _stdout_to_stderr():
    """At the file descriptor level: Gloo prints its connection lines from C++, and stdout is for results."""
    libc = ctypes.CDLL(None)
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        yield
    finally:
        libc.fflush(None)
        os.dup2(saved, 1)
        os.close(saved)


def _start_process_group(dist: dist_utils.DistEnv) -> None:
    """Plain torch.distributed (gloo on CPUs, NCCL on GPUs): evaluation needs no DeepSpeed engine."""
    with _stdout_to_stderr():
        dist_utils.init(dist, TIMEOUT_S, use_deepspeed=False)


def _fail(message: str, dist: dist_utils.DistEnv | None) -> int:
    where = f" [rank {dist.rank}]" if dist is not None and dist.world_size > 1 else ""
    print(f"onepeace-eval{where}: error: {message}", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    dist = None
    try:
        dist = dist_utils.detect()
        job = prepare(args, dist)
    except (*BAD_INPUT, ValueError) as exc:  # detect() raises ValueError on a broken launcher environment
        return _fail(str(exc), dist)
    device = dist_utils.device_for(dist)
    model = job.loaded.model.to(device=device, dtype=torch.bfloat16 if args.dtype == "bf16" else None).eval()
    if dist.world_size > 1:
        _start_process_group(dist)
    start = time.time()
    try:
        result = evaluate_stream(model, job.stream, name=job.name, kind=job.kind, device=device,
                                 tokenizer=job.tokenizer, classifier=job.classifier, prompt_batch_size=args.batch_size,
                                 same_caption_is_correct=not args.strict_captions)
    except BAD_INPUT as exc:
        return _fail(str(exc), dist)
    finally:
        dist_utils.shutdown()
    if dist.is_main:
        _report(args, job, result, dist, time.time() - start)
    return 0


def _report(args: argparse.Namespace, job: Job, result, dist: dist_utils.DistEnv, seconds: float) -> None:
    header = {"model": job.loaded.source, "ranks": dist.world_size, "seconds": round(seconds, 2)}
    if job.classifier is not None:
        header.update(labels=os.path.abspath(job.classifier.label_file), template=job.classifier.template,
                      classes=len(job.classifier.classes))
    payload = to_json(result, header)
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        atomic_write(args.out, json.dumps(payload, indent=2))
    if args.json:
        print(json.dumps(payload))
    else:
        print(format_table(result, {"model": job.loaded.source, "ranks": str(dist.world_size),
                                    "time": f"{seconds:.1f} s"}))


if __name__ == "__main__":
    sys.exit(main())
