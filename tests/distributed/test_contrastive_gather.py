"""contrastive_loss over 2 real gloo ranks equals the single-process loss on the concatenated batch.

Each rank encodes its half of a fixed big batch with a shared linear layer, backpropagates its local
loss and averages gradients like DDP/DeepSpeed; the result must match one process on the whole batch.
This file is also the rank script: ``python test_contrastive_gather.py RANK PORT OUT MODE``.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys

import torch
import torch.nn.functional as F

from onepeace.losses import contrastive_loss

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
WORLD, HALF, DIM = 2, 4, 6


def build():
    """The same model (two linear encoders and a logit scale) and the same big batch in every process."""
    gen = torch.Generator().manual_seed(1234)
    enc_a, enc_b = torch.nn.Linear(5, DIM).double(), torch.nn.Linear(7, DIM).double()
    with torch.no_grad():
        for p in [*enc_a.parameters(), *enc_b.parameters()]:
            p.copy_(torch.randn(p.shape, generator=gen, dtype=p.dtype))
    logit_scale = torch.nn.Parameter(torch.tensor(math.log(1 / 0.07), dtype=torch.float64))
    params = {"a." + k: v for k, v in enc_a.named_parameters()}
    params.update({"b." + k: v for k, v in enc_b.named_parameters()})
    params["logit_scale"] = logit_scale
    xa = torch.randn(WORLD * HALF, 5, generator=gen, dtype=torch.float64)
    xb = torch.randn(WORLD * HALF, 7, generator=gen, dtype=torch.float64)

    def loss_on(rows: slice, **kw):
        a, b = F.normalize(enc_a(xa[rows]), dim=-1), F.normalize(enc_b(xb[rows]), dim=-1)
        return contrastive_loss(a, b, logit_scale, **kw)

    return params, loss_on


def rank_main(rank: int, rendezvous: str, out: str, mode: str) -> None:
    # A file rendezvous: no port to pick, so no race with other processes for one.
    torch.distributed.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=WORLD)
    params, loss_on = build()
    if mode == "unequal":
        # Rank 0 has HALF rows, rank 1 one fewer: both ranks must stop with a ValueError, not hang.
        loss_on(slice(rank * HALF, (rank + 1) * HALF - rank))
        raise SystemExit("unequal batch sizes were accepted")
    mine = slice(rank * HALF, (rank + 1) * HALF)
    local_only = loss_on(mine, gather=False).detach()
    loss = loss_on(mine)
    loss.backward()
    for p in params.values():
        torch.distributed.all_reduce(p.grad)
        p.grad /= WORLD
    mean_loss = loss.detach().clone()
    torch.distributed.all_reduce(mean_loss)
    mean_loss /= WORLD
    if rank == 0:
        torch.save({"loss": mean_loss, "local_only": local_only,
                    "grads": {k: p.grad for k, p in params.items()}}, out)
    torch.distributed.barrier()  # without it gloo sometimes aborts a rank that tears down first
    torch.distributed.destroy_process_group()


def run_ranks(tmp_path, mode: str) -> list[subprocess.CompletedProcess]:
    rendezvous, out = str(tmp_path / "rendezvous"), str(tmp_path / "rank0.pt")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", "")}
    procs = [subprocess.Popen([sys.executable, os.path.abspath(__file__), str(r), rendezvous, out, mode],
                              cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for r in range(WORLD)]
    try:
        results = []
        for proc in procs:
            stdout, stderr = proc.communicate(timeout=60)
            results.append(subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr))
        return results
    finally:
        for proc in procs:  # a hang fails the test instead of blocking it
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def test_gathered_loss_and_averaged_gradients_equal_the_big_batch(tmp_path):
    for result in run_ranks(tmp_path, "equal"):
        assert result.returncode == 0, result.stderr
    got = torch.load(tmp_path / "rank0.pt")

    params, loss_on = build()
    big = loss_on(slice(None))
    big.backward()
    assert torch.allclose(got["loss"], big.detach(), rtol=0, atol=1e-10)
    for name, p in params.items():
        assert torch.allclose(got["grads"][name], p.grad, rtol=0, atol=1e-10), name
    # gather=False is the plain local loss on rank 0's own half.
    assert torch.allclose(got["local_only"], loss_on(slice(0, HALF)).detach(), rtol=0, atol=1e-12)


def test_unequal_batch_sizes_raise_on_every_rank(tmp_path):
    for result in run_ranks(tmp_path, "unequal"):
        assert result.returncode != 0
        assert "ValueError" in result.stderr and "same batch size on every rank" in result.stderr, result.stderr
        assert f"has {HALF}" in result.stderr and f"has {HALF - 1}" in result.stderr, result.stderr


if __name__ == "__main__":
    rank_main(int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4])
