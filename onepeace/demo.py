"""``python -m onepeace.demo`` (``make demo``): the whole system, small, on this machine.

1. ``data_tools.make_demo`` draws a procedural corpus (images of shapes, synthetic sounds, captions that
   describe them), builds it into shards with the real shard builder and trains the tokenizer;
2. the ``deepspeed`` launcher pretrains the ``tiny`` preset on it (2 CPU ranks, or every GPU);
3. ``onepeace-eval`` measures zero-shot retrieval on the held-out split;
4. the results are printed next to chance level, with where the TensorBoard logs are.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch

from .distributed import free_port

TARGET_TIMES_CHANCE = 5.0
HEADLINE = (("image-text", "image_to_text/R@1"), ("audio-text", "audio_to_text/R@1"))


def _bin(name: str) -> str:
    here = Path(sys.executable).parent / name
    return str(here) if here.exists() else name


def _run(step: str, cmd: list[str], **kwargs) -> None:
    print(f"\n=== {step}\n$ {' '.join(cmd)}", flush=True)
    start = time.time()
    result = subprocess.run(cmd, **kwargs)
    if result.returncode != 0:
        raise SystemExit(f"demo: {step} failed (exit code {result.returncode}); see the output above")
    print(f"=== {step}: done in {time.time() - start:.0f}s", flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m onepeace.demo", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", default="demo_work", help="folder for the corpus, the run and the results "
                   "(default: demo_work; the demo recipe reads demo_work/corpus)")
    p.add_argument("--train-size", type=int, default=2000, help="training samples per modality")
    p.add_argument("--val-size", type=int, default=256, help="held-out samples per modality")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override the demo recipe, e.g. --set train.steps=50 (repeatable)")
    p.add_argument("--ranks", type=int, default=None, help="training processes (default: every GPU, else 2)")
    p.add_argument("--no-check", action="store_true",
                   help=f"do not fail when R@1 stays below {TARGET_TIMES_CHANCE:g}x chance (short test runs)")
    args = p.parse_args(argv)

    work = Path(args.work).resolve()
    corpus, run_dir, results = work / "corpus", work / "run", work / "results"
    gpus = torch.cuda.device_count()
    ranks = args.ranks or (gpus if gpus else 2)
    overrides = [o for pair in (("--set", o) for o in _recipe_paths(corpus) + args.overrides) for o in pair]
    if gpus:
        overrides += ["--set", "train.precision=bf16"]
    started = time.time()

    _run("1/3 demo corpus, shards and tokenizer",
         [sys.executable, "-m", "data_tools.make_demo", "--out", str(corpus), "--train-size", str(args.train_size),
          "--val-size", str(args.val_size), "--force"])
    shutil.rmtree(run_dir, ignore_errors=True)
    _run(f"2/3 pretraining the tiny model ({ranks} {'GPU' if gpus else 'CPU'} ranks, deepspeed launcher)",
         [_bin("deepspeed"), "--num_gpus", str(ranks), "--master_port", str(free_port()), "--module",
          "onepeace.train", "--config", "demo", "--run-dir", str(run_dir), "--deepspeed_config",
          "cpu", *overrides],
         env={**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")})
    results.mkdir(parents=True, exist_ok=True)
    scores = {}
    for kind, _ in HEADLINE:
        out = results / f"{kind}.json"
        _run(f"3/3 zero-shot retrieval on the held-out {kind} split",
             [_bin("onepeace-eval"), str(run_dir), "--data", str(corpus / "shards" / kind / "val"), "--out", str(out)])
        scores[kind] = json.loads(out.read_text())

    print(f"\n=== demo finished in {(time.time() - started) / 60:.1f} min")
    ok = True
    for kind, metric in HEADLINE:
        value, chance = scores[kind]["metrics"][metric], scores[kind]["chance"][metric]
        times = value / chance
        ok &= times >= TARGET_TIMES_CHANCE
        print(f"{metric.replace('_to_', '->'):<18} {100 * value:6.2f}%   chance {100 * chance:5.2f}%   "
              f"{times:5.1f}x chance   (held-out {kind}, {scores[kind]['samples']} samples)")
    print(f"TensorBoard: tensorboard --logdir {run_dir / 'tensorboard'}")
    print(f"checkpoints: {run_dir / 'checkpoints'}   results: {results}")
    if not ok and not args.no_check:
        print(f"demo: R@1 stayed below {TARGET_TIMES_CHANCE:g}x chance: the model did not learn enough",
              file=sys.stderr)
        return 1
    return 0


def _recipe_paths(corpus: Path) -> list[str]:
    """Point the demo recipe at this corpus (it names demo_work/corpus relative to the repository)."""
    out = [f"data.tokenizer={corpus / 'tokenizer.json'}"]
    for section, split in (("train", "train"), ("eval", "val")):
        for kind in ("image-text", "audio-text"):
            out.append(f"data.{section}.{kind}.sources=[{{shards: {corpus / 'shards' / kind / split}}}]")
    return out


if __name__ == "__main__":
    sys.exit(main())
