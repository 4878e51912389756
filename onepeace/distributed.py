"""The one place that reads rank, world size, local rank and the master address from the environment,
starts and stops the process group, and answers "which rank am I, how many are we".

Works under the ``deepspeed`` launcher and ``torchrun`` (both set RANK/WORLD_SIZE/LOCAL_RANK/MASTER_*),
under ``srun`` (SLURM_* variables, mapped here because DeepSpeed never reads them), and as a plain
single process.
"""

from __future__ import annotations

import datetime
import logging
import os
import re
import shutil
import socket
import subprocess
from dataclasses import dataclass

import torch

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistEnv:
    rank: int
    world_size: int
    local_rank: int
    master_addr: str
    master_port: int
    launcher: str  # deepspeed | torchrun | slurm | single

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _resolves(host: str) -> bool:
    try:
        socket.gethostbyname(host)
    except OSError:
        return False
    return True


def first_host(nodelist: str) -> str:
    """First host of a SLURM node list ('n[1-4],m7' -> 'n1'), via scontrol when available."""
    if shutil.which("scontrol"):
        try:
            out = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True,
                                 timeout=30, check=True).stdout.split()
            if out:
                return out[0]
        except (subprocess.SubprocessError, OSError):
            pass
    first = re.split(r",(?![^\[]*\])", nodelist)[0]
    match = re.match(r"^(.*?)\[([^\]]+)\](.*)$", first)
    if not match:
        return first
    prefix, ranges, suffix = match.groups()
    start = ranges.split(",")[0].split("-")[0]
    return f"{prefix}{start}{suffix}"


def _int_env(env: dict, name: str) -> int:
    try:
        return int(env[name])
    except ValueError:
        raise ValueError(f"environment variable {name}={env[name]!r} is not an integer") from None


def detect(env: dict | None = None) -> DistEnv:
    """Where this process sits, from the environment of whichever launcher started it."""
    env = dict(os.environ if env is None else env)
    if "RANK" in env and "WORLD_SIZE" in env:
        launcher = "torchrun" if "TORCHELASTIC_RUN_ID" in env else "deepspeed"
        rank, world = _int_env(env, "RANK"), _int_env(env, "WORLD_SIZE")
        local = _int_env(env, "LOCAL_RANK") if "LOCAL_RANK" in env else 0
        addr = env.get("MASTER_ADDR", "127.0.0.1")
        port = _int_env(env, "MASTER_PORT") if "MASTER_PORT" in env else 29500
    elif "SLURM_PROCID" in env and ("SLURM_STEP_NUM_TASKS" in env or "SLURM_NTASKS" in env):
        launcher = "slurm"
        rank = _int_env(env, "SLURM_PROCID")
        world = _int_env(env, "SLURM_STEP_NUM_TASKS" if "SLURM_STEP_NUM_TASKS" in env else "SLURM_NTASKS")
        local = _int_env(env, "SLURM_LOCALID") if "SLURM_LOCALID" in env else 0
        nodes = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST") or "127.0.0.1"
        addr = env.get("MASTER_ADDR") or first_host(nodes)
        if not _resolves(addr):
            log.warning("master host %r does not resolve; using 127.0.0.1 (single-machine cluster)", addr)
            addr = "127.0.0.1"
        job = int(env.get("SLURM_JOB_ID", "0") or 0)
        port = _int_env(env, "MASTER_PORT") if "MASTER_PORT" in env else 20000 + job % 20000
    else:
        launcher, rank, world, local = "single", 0, 1, 0
        addr = env.get("MASTER_ADDR", "127.0.0.1")
        port = _int_env(env, "MASTER_PORT") if "MASTER_PORT" in env else free_port()
    if not 0 <= rank < world:
        raise ValueError(f"rank {rank} is not in [0, world size {world}) ({launcher} environment)")
    return DistEnv(rank, world, local, addr, port, launcher)


def export(dist: DistEnv) -> None:
    """Set the variables torch.distributed and DeepSpeed read, so every library agrees."""
    os.environ.update(RANK=str(dist.rank), WORLD_SIZE=str(dist.world_size), LOCAL_RANK=str(dist.local_rank),
                      MASTER_ADDR=dist.master_addr, MASTER_PORT=str(dist.master_port))


def device_for(dist: DistEnv) -> torch.device:
    if torch.cuda.is_available():
        torch.cuda.set_device(dist.local_rank % torch.cuda.device_count())
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def init(dist: DistEnv, timeout_s: int, use_deepspeed: bool = True) -> None:
    """Start the process group (NCCL on GPUs, gloo on CPUs) with a bounded collective timeout, so a dead
    rank makes the others fail instead of hang. Without DeepSpeed (evaluation) plain torch.distributed."""
    export(dist)
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    timeout = datetime.timedelta(seconds=timeout_s)
    if not use_deepspeed:
        torch.distributed.init_process_group(backend, rank=dist.rank, world_size=dist.world_size, timeout=timeout)
        return
    import deepspeed

    deepspeed.init_distributed(dist_backend=backend, auto_mpi_discovery=False, verbose=False, timeout=timeout,
                               rank=dist.rank, world_size=dist.world_size)
    if backend == "gloo":
        _unlink_shm_buffer(dist.rank)


SHM_BUFFER = "/dev/shm/deepspeed_allreduce_buffer_{uid}_{addr}_{port}_{rank}"


def shm_buffer(rank: int, env: dict | None = None) -> str:
    """The shared-memory file DeepSpeed's CPU allreduce creates for ``rank`` (its shm.cpp names it so)."""
    env = os.environ if env is None else env
    return SHM_BUFFER.format(uid=os.getuid(), addr=env.get("MASTER_ADDR", ""), port=env.get("MASTER_PORT", ""),
                             rank=rank)


def _unlink_shm_buffer(rank: int) -> None:
    """DeepSpeed's shared-memory allreduce on CPU (all ranks on one machine) gives each rank a 66 MB file
    in /dev/shm and never removes it: every run, however it ends, left them behind, in memory, until the
    machine ran out. Each rank maps every rank's file while DeepSpeed starts; after a barrier all have,
    so each rank removes the name of its own. The memory stays mapped until the ranks exit, then is freed."""
    torch.distributed.barrier()
    try:
        os.unlink(shm_buffer(rank))
    except FileNotFoundError:
        pass  # no shared-memory allreduce (ranks on several machines, or no LOCAL_SIZE: not DeepSpeed's launcher)


def shutdown() -> None:
    if initialized():
        torch.distributed.destroy_process_group()


def initialized() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def world_size() -> int:
    """Ranks in the process group; 1 when there is none (a single process)."""
    return torch.distributed.get_world_size() if initialized() else 1


def rank() -> int:
    """This process's rank in the process group; 0 when there is none."""
    return torch.distributed.get_rank() if initialized() else 0


def rank_and_world_size() -> tuple[int, int]:
    """The process group's placement when it is started, else RANK/WORLD_SIZE (a launcher that has not
    started the group yet), else (0, 1). Data loaders call it once in the main process to split shards."""
    if initialized():
        return rank(), world_size()
    env = os.environ
    placement = (_int_env(env, "RANK") if "RANK" in env else 0, _int_env(env, "WORLD_SIZE") if "WORLD_SIZE" in env else 1)
    if not 0 <= placement[0] < placement[1]:
        raise ValueError(f"RANK={placement[0]} is not in [0, WORLD_SIZE={placement[1]})")
    return placement


def any_rank(flag: bool, device: torch.device) -> bool:
    """True on every rank when ``flag`` is true on any rank."""
    if world_size() == 1:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
    return bool(t.item() > 0)


def barrier() -> None:
    if initialized():
        torch.distributed.barrier()
