"""Seconds a training process takes to exit after its work is done, with and without the garbage
collection that interpreter shutdown runs over the whole heap.

``python -m onepeace.train`` freezes the heap before it exits (see ``onepeace.train.cli``); calling
``main(argv)`` with an explicit argument list, as an in-process caller does, leaves shutdown as it was.
Both train the tiny model for one step on a fresh demo corpus in one process; the time is from the log
line "finished at step" to the process's end.

    PYTHONPATH=. python benchmarks/process_exit.py --repeats 3
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, __file__.rsplit("/", 2)[0])  # run from a plain checkout

from benchmarks._common import print_table  # noqa: E402

IN_PROCESS = "import sys; from onepeace.train.cli import main; sys.exit(main(sys.argv[1:]))"
WAYS = {"python -m onepeace.train (heap frozen)": ["-m", "onepeace.train"],
        "main(argv) (shutdown collects)": ["-c", IN_PROCESS]}


def exit_seconds(how: list[str], recipe: str, run_dir: str) -> float:
    proc = subprocess.Popen([sys.executable, "-u", *how, "--config", recipe, "--run-dir", run_dir],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    finished = None
    for line in proc.stdout:
        if "finished at step" in line:
            finished = time.perf_counter()
    proc.wait()
    if proc.returncode != 0 or finished is None:
        raise SystemExit(f"training failed ({proc.returncode})")
    return time.perf_counter() - finished


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        corpus = os.path.join(tmp, "demo")
        subprocess.run([sys.executable, "-m", "data_tools.make_demo", "--out", corpus, "--train-size", "8",
                        "--val-size", "8", "--workers", "1"], check=True, capture_output=True)
        recipe = os.path.join(tmp, "r.yaml")
        with open(recipe, "w") as f:
            f.write(f"model: {{preset: tiny}}\ndata:\n  tokenizer: {corpus}/tokenizer.json\n  num_workers: 1\n"
                    f"  train:\n    image-text: {{batch_size: 4, sources: [{{shards: {corpus}/shards/image-text/train}}]}}\n"
                    "train: {steps: 1, precision: fp32, save_every: 100}\n")
        rows = []
        for name, how in WAYS.items():
            times = [exit_seconds(how, recipe, os.path.join(tmp, f"run{i}-{len(rows)}")) for i in range(args.repeats)]
            rows.append([name, statistics.median(times), min(times), max(times)])
    print_table(["process", "exit s (median)", "min", "max"], rows,
                title=f"Exit after training, {os.cpu_count()} CPU cores, {args.repeats} runs each")


if __name__ == "__main__":
    main()
