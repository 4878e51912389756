"""Attention backends: forward+backward time and memory at the sequence lengths ONE-PEACE sees.

Each case is a real layout with its relative position bias and padding: text (72 tokens), image (257),
image-text pair (329), audio 15 s (750) and 30 s (1500). One call = build the bias for that call
(dense mask or block mask), attention forward, backward into q, k, v and the bias table: the cost of one
layer with its own table. Ratios are to the explicit ``math`` reference.

    PYTHONPATH=. python benchmarks/attention.py                  # every backend available here
    PYTHONPATH=. python benchmarks/attention.py --dtype bf16 --batch 32 --json out.json
"""

from __future__ import annotations

import argparse
import sys

import torch

sys.path.insert(0, __file__.rsplit("/", 2)[0])  # run from a plain checkout

from benchmarks._common import (SavedBytes, machine_name, parse_dtype, peak_memory, pick_device,  # noqa: E402
                                print_table, time_it, write_json)
from onepeace.config import model_config  # noqa: E402
from onepeace.model.position import RelativePositionBias  # noqa: E402
from onepeace.ops.attention import (AttentionBias, attention, available_backends,  # noqa: E402
                                    flex_backward_supported)

# length -> segments of (modality, tokens including CLS)
CASES = {
    72: [("text", 72)],
    257: [("image", 257)],
    329: [("text", 72), ("image", 257)],
    750: [("audio", 750)],
    1500: [("audio", 1500)],
}


def build_case(length: int, batch: int, heads: int, head_dim: int, device, dtype):
    cfg = model_config("base", num_heads=heads, embed_dim=heads * head_dim, max_audio_frames=1500,
                       ffn_dim=4 * heads * head_dim, depth=1)
    rel = RelativePositionBias(cfg)
    g = torch.Generator().manual_seed(0)
    table = (torch.randn(rel.table().shape, generator=g) * 0.5).to(device, dtype).requires_grad_(True)
    positions, padding = [], []
    for modality, n in CASES[length]:
        positions.append(rel.global_positions(modality, torch.arange(n)))
        pad = torch.zeros(batch, n, dtype=torch.bool)
        if modality in ("text", "audio"):  # a quarter of the batch is padded to 3/4 length
            pad[-max(1, batch // 4):, (3 * n) // 4:] = True
        padding.append(pad)
    positions_t = torch.cat(positions)[None].to(device)
    padding_t = torch.cat(padding, dim=1).to(device)
    q, k, v = (torch.randn(batch, heads, length, head_dim, generator=g).to(device, dtype).requires_grad_(True)
               for _ in range(3))
    return q, k, v, table, rel.index_map.to(device), positions_t, padding_t


def run_once(backend, case, dtype, saved: SavedBytes | None = None):
    q, k, v, table, index_map, positions, padding = case
    for t in (q, k, v, table):
        t.grad = None
    bias = AttentionBias(table, index_map, positions, padding, q.shape[0], q.shape[2])
    if saved is not None:
        with saved.track():
            bias.prepare(backend, dtype, q.device.type)
            out = attention(q, k, v, bias, backend)
    else:
        bias.prepare(backend, dtype, q.device.type)
        out = attention(q, k, v, bias, backend)
    out.backward(torch.ones_like(out))
    return out.detach()


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--dtype", default=None, choices=["fp32", "bf16", "fp16"],
                   help="default: bf16 on CUDA, fp32 on CPU")
    p.add_argument("--batch", type=int, default=None, help="default: 32 on CUDA, 2 on CPU")
    p.add_argument("--heads", type=int, default=12)
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument("--lengths", default="72,257,329,750,1500", help="comma separated, from 72,257,329,750,1500")
    p.add_argument("--backends", default=None, help="comma separated (default: all available here)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--json", default=None, help="also write the results to this file")
    args = p.parse_args(argv)

    device = pick_device(args.device)
    dtype = parse_dtype(args.dtype or ("bf16" if device.type == "cuda" else "fp32"))
    batch = args.batch or (32 if device.type == "cuda" else 2)
    backends = args.backends.split(",") if args.backends else available_backends(device.type)
    if "flex" in backends and not flex_backward_supported(device.type):
        print(f"note: flex left out: FlexAttention has no backward on {device.type} in torch {torch.__version__}")
        backends.remove("flex")
    if "math" not in backends:
        backends.insert(0, "math")
    lengths = [int(x) for x in args.lengths.split(",")]
    for n in lengths:
        if n not in CASES:
            p.error(f"--lengths: {n} is not one of {sorted(CASES)}")

    rows, results = [], []
    for length in lengths:
        case = build_case(length, batch, args.heads, args.head_dim, device, dtype)
        ref_time = ref_mem = ref_saved = ref_out = None
        for backend in backends:
            try:
                out = run_once(backend, case, dtype)
                seconds = time_it(lambda backend=backend, case=case: run_once(backend, case, dtype), device, args.warmup, args.repeats)
                mem = peak_memory(lambda backend=backend, case=case: run_once(backend, case, dtype), device)
                saved = SavedBytes(exclude=[t for t in case if t is not None])
                run_once(backend, case, dtype, saved)
            except Exception as exc:  # noqa: BLE001 - report and go on with the other backends
                rows.append([length, backend, f"failed: {type(exc).__name__}: {str(exc)[:60]}"] + [None] * 6)
                continue
            if backend == "math":
                ref_time, ref_mem, ref_saved, ref_out = seconds, mem, saved.total, out
            err = (out.float() - ref_out.float()).abs().max().item()
            row = dict(length=length, backend=backend, batch=batch, dtype=str(dtype).replace("torch.", ""),
                       ms=seconds * 1e3, speedup=ref_time / seconds, peak_mib=mem,
                       mem_ratio=(mem / ref_mem) if mem is not None and ref_mem else None,
                       saved_mib=saved.total / 2**20, saved_ratio=saved.total / ref_saved if ref_saved else None,
                       max_abs_diff=err)
            results.append(row)
            rows.append([length, backend, f"{row['ms']:.2f}", f"{row['speedup']:.2f}x", row["peak_mib"],
                         row["mem_ratio"] and f"{row['mem_ratio']:.2f}x", f"{row['saved_mib']:.1f}",
                         row["saved_ratio"] and f"{row['saved_ratio']:.2f}x", f"{err:.1e}"])
        del case
        if device.type == "cuda":
            torch.cuda.empty_cache()

    title = (f"attention fwd+bwd, batch {batch}, {args.heads} heads x {args.head_dim}, "
             f"{str(dtype).replace('torch.', '')}, {machine_name(device)}")
    print_table(["tokens", "backend", "ms", "speed vs math", "peak MiB", "mem vs math", "saved MiB",
                 "saved vs math", "max |diff|"], rows, title)
    payload = {"machine": machine_name(device), "results": results}
    write_json(args.json, payload)
    return payload


if __name__ == "__main__":
    main()
