"""Time from start to the first trained step when resuming at the start vs the end of a data segment.

A resume continues the data stream of the current segment (``train.data_segment_steps`` updates). With
the stream position saved in the checkpoint it passes over the consumed raw samples without decoding
them; without one (``--legacy``, or checkpoints from before positions were saved) it decodes and drops
every consumed micro-batch.

The script trains the tiny model for one step on a demo corpus, then makes two resumable checkpoints
from that one: at the first step of a segment and at its last step (``segment - 1`` micro-batches
consumed, the stream position taken from a real pass over the segment's stream). It then times
``python -m onepeace.train --resume`` from process start to the log line of the first trained step,
alternating the cases, best of ``--rounds``.

    PYTHONPATH=. python benchmarks/resume.py --segment 500 --rounds 3
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, __file__.rsplit("/", 2)[0])  # run from a plain checkout

from benchmarks._common import print_table, write_json  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def recipe(corpus: str, segment: int, batch: int, workers: int) -> dict:
    return {"model": {"preset": "tiny"},
            "data": {"tokenizer": os.path.join(corpus, "tokenizer.json"), "num_workers": workers,
                     "shuffle_buffer": 100,
                     "train": {"image-text": {"batch_size": batch,
                                              "sources": [{"shards": os.path.join(corpus, "shards", "image-text",
                                                                                  "train")}]}}},
            "train": {"steps": 1, "precision": "fp32", "log_every": 1, "save_every": 10**6,
                      "data_segment_steps": segment, "lr": 1e-3, "min_lr": 1e-4}}


def env() -> dict:
    out = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR",
                                                            "MASTER_PORT")}
    out.update(PYTHONPATH=REPO + os.pathsep + out.get("PYTHONPATH", ""), PYTHONUNBUFFERED="1")
    return out


def train(args: list[str]) -> None:
    out = subprocess.run([sys.executable, "-m", "onepeace.train", *args], cwd=REPO, env=env(), capture_output=True,
                         text=True)
    if out.returncode:
        raise SystemExit(out.stdout[-3000:] + out.stderr[-3000:])


def retag(src: str, ckpt_dir: str, step: int, position: dict | None) -> str:
    """A copy of checkpoint ``src`` that says it was taken at ``step`` (with this data position)."""
    import torch

    dst = os.path.join(ckpt_dir, f"step{step:08d}")
    shutil.copytree(src, dst)
    states = os.path.join(dst, "mp_rank_00_model_states.pt")
    state = torch.load(states, weights_only=False)
    state["step"] = step
    torch.save(state, states)
    marker = json.load(open(os.path.join(dst, "COMPLETE.json")))
    marker["step"] = step
    json.dump(marker, open(os.path.join(dst, "COMPLETE.json"), "w"))
    rank_state = os.path.join(dst, "state_rank00000.json")
    if position is None:
        if os.path.exists(rank_state):
            os.remove(rank_state)
    else:
        json.dump({"data_position": position}, open(rank_state, "w"))
    return dst


def segment_position(spec: dict, epoch: int, micro_batches: int) -> dict:
    """The stream position after ``micro_batches`` of segment ``epoch``, from a real pass over it."""
    from onepeace.config import from_dict
    from onepeace.data import DataConfig, build_train_loader
    from onepeace.config import model_config

    data = from_dict(DataConfig, spec["data"], "data")
    stream = build_train_loader(data, model_config("tiny"), epoch=epoch, rank=0, world_size=1)
    it = iter(stream)
    for _ in range(micro_batches):
        next(it)
    position = stream.position().to_dict()
    stream.close()
    return position


def time_to_first_step(recipe_path: str, ckpt: str, run_dir: str, step: int) -> float:
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "onepeace.train", "--config", recipe_path, "--run-dir", run_dir,
                             "--resume", ckpt, "--set", f"train.steps={step + 2}"], cwd=REPO, env=env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    wanted, seconds = f"step {step + 1}/", None
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if seconds is None and wanted in line:
            seconds = time.perf_counter() - start
    if proc.wait() or seconds is None:
        raise SystemExit("".join(lines[-40:]))
    return seconds


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--segment", type=int, default=500, help="train.data_segment_steps")
    p.add_argument("--batch", type=int, default=16, help="image-text samples per micro-batch")
    p.add_argument("--workers", type=int, default=1, help="data.num_workers")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--legacy", action="store_true", help="also time the end-of-segment resume without a position")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    import yaml

    work = tempfile.mkdtemp(prefix="onepeace-resume-")
    try:
        corpus = os.path.join(work, "demo")
        subprocess.run([sys.executable, "-m", "data_tools.make_demo", "--out", corpus, "--workers", "2"], cwd=REPO,
                       env=env(), check=True, capture_output=True)
        spec = recipe(corpus, args.segment, args.batch, args.workers)
        recipe_path = os.path.join(work, "recipe.yaml")
        with open(recipe_path, "w") as f:
            yaml.safe_dump(spec, f)
        train(["--config", recipe_path, "--run-dir", os.path.join(work, "seed")])
        src = os.path.join(work, "seed", "checkpoints", "step00000001")
        ckpts = os.path.join(work, "ckpts")
        seg = args.segment
        cases = {"segment start (step %d)" % (seg + 1): retag(src, ckpts, seg, None),
                 "segment end (step %d)" % (2 * seg): retag(src, ckpts, 2 * seg - 1,
                                                             segment_position(spec, 1, seg - 1))}
        if args.legacy:
            legacy = os.path.join(work, "legacy")
            cases["segment end, no position (decode skip)"] = retag(src, legacy, 2 * seg - 1, None)
        steps = {name: int(os.path.basename(path)[4:]) for name, path in cases.items()}
        best: dict[str, float] = {}
        for r in range(args.rounds):
            for name, path in cases.items():
                s = time_to_first_step(recipe_path, path, os.path.join(work, f"run-{r}-{len(best)}"), steps[name])
                best[name] = min(best.get(name, s), s)
                print(f"round {r + 1}: {name}: {s:.2f}s", flush=True)
                shutil.rmtree(os.path.join(work, f"run-{r}-{len(best) - 1}"), ignore_errors=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    base = next(iter(best.values()))
    rows = [[name, f"{s:.2f}", f"{s / base:.2f}x"] for name, s in best.items()]
    print_table(["resume at", "start to first step (s)", "vs segment start"], rows,
                f"tiny, image-text batch {args.batch}, {args.workers} data worker(s), segment {seg} steps, "
                f"best of {args.rounds}")
    payload = {"segment": seg, "batch": args.batch, "workers": args.workers, "seconds": best}
    write_json(args.json, payload)
    return payload


if __name__ == "__main__":
    main()
