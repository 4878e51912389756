"""``onepeace-launch`` (``python -m onepeace.launch``): the ``deepspeed`` launcher, stopped cleanly.

    onepeace-launch --num_gpus 8 --module onepeace.train --config stage1_vl_base --run-dir runs/x --resume auto

Takes exactly the arguments of ``deepspeed`` and runs it. Why not ``deepspeed`` itself: on SIGTERM to
its process group (what a scheduler or a container runtime sends) the ``deepspeed`` command returns 143
at once while the ranks are still saving, and its per-node launcher SIGKILLs every rank still alive
30 s after forwarding the signal, which a large ZeRO-3 save can outlast. Here ``deepspeed`` runs in a
session of its own, so such a signal reaches only this process; it forwards SIGTERM, SIGINT (as
SIGTERM) and SIGUSR1 to the training ranks alone, which checkpoint at the end of their step and exit,
and it returns only when ``deepspeed`` has: 0 after a clean stop, however long the save took.
Single-node runs; across nodes use ``srun`` (slurm/pretrain.sh).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time

import psutil

FORWARDED = {signal.SIGTERM: signal.SIGTERM, signal.SIGINT: signal.SIGTERM, signal.SIGUSR1: signal.SIGUSR1}
LAUNCH_MODULE = "deepspeed.launcher.launch"  # DeepSpeed's per-node launcher: its children are the ranks


def deepspeed_command() -> list[str]:
    """The ``deepspeed`` script next to this interpreter (a venv's bin), else the one on PATH."""
    beside = os.path.join(os.path.dirname(sys.executable), "deepspeed")
    found = beside if os.path.isfile(beside) else shutil.which("deepspeed")
    if found is None:
        raise SystemExit("onepeace-launch: error: the deepspeed command is not installed")
    return [sys.executable, found]


def training_ranks(launcher_pid: int) -> list[psutil.Process]:
    """The rank processes: direct children of DeepSpeed's per-node launch process (not their workers)."""
    try:
        for proc in psutil.Process(launcher_pid).children(recursive=True):
            try:
                if LAUNCH_MODULE in " ".join(proc.cmdline()):
                    return proc.children()
            except psutil.Error:
                continue
    except psutil.Error:
        pass
    return []


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0 if argv else 2
    pending: list[signal.Signals] = []
    for signum in FORWARDED:
        signal.signal(signum, lambda s, _frame: pending.append(signal.Signals(s)))
    child = subprocess.Popen(deepspeed_command() + argv, start_new_session=True)
    signalled: dict[int, set[int]] = {}  # rank pid -> the signals it was sent
    announced = False
    while child.poll() is None:
        if pending:
            wanted = {FORWARDED[s] for s in pending}
            ranks = training_ranks(child.pid)
            for rank in ranks:
                for signum in wanted - signalled.setdefault(rank.pid, set()):
                    try:
                        rank.send_signal(signum)
                    except psutil.Error:
                        continue
                    signalled[rank.pid].add(signum)
            if ranks and not announced:
                announced = True
                print(f"onepeace-launch: {pending[0].name}: asked {len(ranks)} rank(s) to checkpoint and stop; "
                      "waiting for them", file=sys.stderr, flush=True)
        time.sleep(0.2)
    return child.returncode if child.returncode >= 0 else 128 - child.returncode


if __name__ == "__main__":
    sys.exit(main())
