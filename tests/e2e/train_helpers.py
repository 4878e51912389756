"""Helpers for end-to-end training tests: recipes over a small demo corpus, real launchers, TensorBoard."""

from __future__ import annotations

import glob
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_recipe(path: Path, corpus: Path, tasks=("image-text",), batch_size: int = 8, model: dict | None = None,
                 **train) -> Path:
    """A tiny-model recipe over the demo corpus; ``train`` overrides the train section."""
    recipe = {
        "model": {"preset": "tiny", **(model or {})},
        "data": {
            "tokenizer": str(corpus / "tokenizer.json"),
            "num_workers": 1,
            "shuffle_buffer": 16,
            "train": {t: {"batch_size": batch_size, "sources": [{"shards": str(corpus / "shards" / t / "train")}]}
                      for t in tasks},
        },
        "train": {"steps": 6, "lr": 2e-3, "min_lr": 1e-3, "warmup_steps": 1, "precision": "fp32", "log_every": 1,
                  "save_every": 100, "deterministic": True, "data_segment_steps": 3,
                  "signal_check_every": 2, **train},
    }
    path.write_text(yaml.safe_dump(recipe))
    return path


def env() -> dict:
    out = dict(os.environ)
    out.setdefault("TORCH_EXTENSIONS_DIR", str(REPO_ROOT / ".venv" / "torch_extensions"))
    out["PYTHONUNBUFFERED"] = "1"
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        out.pop(key, None)
    return out


def deepspeed_cmd(args: list[str], nproc: int = 2, module: str | None = "onepeace.train",
                  script: str | None = None) -> list[str]:
    target = ["--module", module] if module else [script]
    return [str(BIN / "deepspeed"), "--num_gpus", str(nproc), "--master_port", str(free_port()), *target, *args]


def launch_cmd(args: list[str], nproc: int = 2) -> list[str]:
    """``onepeace-launch`` (the deepspeed launcher, stopped cleanly) running the trainer on ``nproc`` ranks."""
    return [sys.executable, "-m", "onepeace.launch", "--num_gpus", str(nproc), "--master_port", str(free_port()),
            "--module", "onepeace.train", *args]


def shm_leftovers(cmd: list[str]) -> list[str]:
    """DeepSpeed's shared-memory allreduce files of the run ``cmd`` started (by its --master_port) still in
    /dev/shm: each holds 66 MB of memory until removed."""
    port = cmd[cmd.index("--master_port") + 1]
    return glob.glob(f"/dev/shm/deepspeed_allreduce_buffer_{os.getuid()}_*_{port}_*")


def run(cmd: list[str], timeout: float = 300) -> subprocess.CompletedProcess:
    """Run to completion; the output is kept for the assertion messages."""
    return subprocess.run(cmd, cwd=REPO_ROOT, env=env(), capture_output=True, text=True, timeout=timeout)


def start(cmd: list[str], log_path: Path) -> subprocess.Popen:
    log = open(log_path, "w")
    return subprocess.Popen(cmd, cwd=REPO_ROOT, env=env(), stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)


def wait_for_text(path: Path, text: str, proc: subprocess.Popen, timeout: float = 240) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if path.exists() and text in path.read_text(errors="replace"):
            return
        if proc.poll() is not None:
            raise AssertionError(f"process exited ({proc.returncode}) before printing {text!r}:\n{path.read_text()[-3000:]}")
        time.sleep(0.2)
    raise AssertionError(f"{text!r} not seen in {timeout}s:\n{path.read_text()[-3000:]}")


def workers(proc: subprocess.Popen) -> list[psutil.Process]:
    """The ranks: the direct children of DeepSpeed's per-node launch process (not their data workers)."""
    for p in psutil.Process(proc.pid).children(recursive=True):
        if "deepspeed.launcher.launch" in " ".join(p.cmdline()):
            return p.children()
    raise AssertionError("no deepspeed.launcher.launch process under the launcher")


def kill_tree(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=30)


def scalars(run_dir: Path, tag: str) -> dict[int, float]:
    """step -> value of a TensorBoard scalar; a step written twice (a resumed run) keeps the last."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out: dict[int, float] = {}
    tb = run_dir / "tensorboard"
    for events in sorted(tb.glob("events.*"), key=lambda p: p.stat().st_mtime):
        acc = EventAccumulator(str(events), size_guidance={"scalars": 0})
        acc.Reload()
        if tag in acc.Tags()["scalars"]:
            for e in acc.Scalars(tag):
                out[e.step] = e.value
    return out


def tags(run_dir: Path) -> set[str]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    found: set[str] = set()
    for events in (run_dir / "tensorboard").glob("events.*"):
        acc = EventAccumulator(str(events))
        acc.Reload()
        found |= set(acc.Tags()["scalars"])
    return found
