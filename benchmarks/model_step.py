"""One training forward+backward of a preset: samples/s, tokens/s, achieved TFLOP/s and MFU.

The step is adapters -> fusion encoder -> heads on full (unmasked) inputs and a backward pass, with
fp32 master weights under bf16 autocast (or bf16 weights with ``--param-dtype bf16``). FLOPs come from
counting the model's own forward on the meta device, times 3 for forward+backward (recomputation by
activation checkpointing is not counted, as usual for MFU).

    PYTHONPATH=. python benchmarks/model_step.py --preset base --kinds image-text --batch 64
"""

from __future__ import annotations

import argparse
import sys

import torch

sys.path.insert(0, __file__.rsplit("/", 2)[0])  # run from a plain checkout

from benchmarks._common import (machine_name, parse_dtype, peak_memory, pick_device, print_table,  # noqa: E402
                                time_it, write_json)
from onepeace.config import MODEL_PRESETS, model_config  # noqa: E402
from onepeace.model import OnePeace  # noqa: E402
from onepeace.model.accounting import (SAMPLE_KINDS, device_peak_tflops, sample_inputs,  # noqa: E402
                                       sample_tokens, training_flops)


def make_inputs(config, kind: str, batch: int, device) -> dict:
    inputs = sample_inputs(config, kind, batch, device=device)
    g = torch.Generator(device="cpu").manual_seed(0)
    for key, value in inputs.items():
        if key == "text":
            inputs[key] = torch.randint(3, config.vocab_size, value.shape, generator=g).to(device)
        else:
            inputs[key] = torch.randn(value.shape, generator=g).to(device)
    return inputs


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="base", help=f"one of {', '.join(MODEL_PRESETS)}")
    p.add_argument("--kinds", default="image-text", help=f"comma separated from {', '.join(SAMPLE_KINDS)}")
    p.add_argument("--batch", type=int, default=None, help="samples per step (default: 64 on CUDA, 2 on CPU)")
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default=None, choices=["fp32", "bf16"], help="autocast dtype (default: bf16 on "
                   "CUDA, fp32 on CPU)")
    p.add_argument("--param-dtype", default="fp32", choices=["fp32", "bf16"])
    p.add_argument("--backend", default="auto", help="attention backend: auto, math, sdpa, flex, xformers")
    p.add_argument("--checkpointing", action="store_true", help="activation checkpointing of every layer")
    p.add_argument("--compile", action="store_true", help="torch.compile each fusion layer (CUDA)")
    p.add_argument("--peak-tflops", type=float, default=None,
                   help="device bf16 peak for MFU (default: known GPUs; none on CPU)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)

    device = pick_device(args.device)
    amp = parse_dtype(args.dtype or ("bf16" if device.type == "cuda" else "fp32"))
    config = model_config(args.preset, attention_backend=args.backend, checkpoint_activations=args.checkpointing,
                          compile_encoder=args.compile, drop_path_rate=0.0)
    model = OnePeace(config).to(device, parse_dtype(args.param_dtype)).train()
    backend = model.backend_for(device)
    batch = args.batch or (64 if device.type == "cuda" else 2)
    peak = args.peak_tflops or device_peak_tflops(device)

    rows, results = [], []
    for kind in args.kinds.split(","):
        inputs = make_inputs(config, kind, batch, device)

        def step(inputs=inputs):
            model.zero_grad(set_to_none=True)
            with torch.autocast(device.type, dtype=amp, enabled=amp != torch.float32):
                out = model.forward_encoder(**inputs)
                loss = sum(model.embed(m, o).sum() + o.tokens.float().mean() for m, o in out.items())
            loss.backward()

        seconds = time_it(step, device, args.warmup, args.repeats)
        mem = peak_memory(step, device)
        tokens = sample_tokens(config, kind)
        flops = training_flops(config, kind) * batch
        tflops = flops / seconds / 1e12
        row = dict(preset=args.preset, kind=kind, batch=batch, backend=backend, checkpointing=args.checkpointing,
                   step_ms=seconds * 1e3, samples_per_s=batch / seconds, tokens_per_s=batch * tokens / seconds,
                   tflops=tflops, mfu=(tflops / peak) if peak else None, peak_mib=mem)
        results.append(row)
        rows.append([args.preset, kind, batch, backend, "on" if args.checkpointing else "off",
                     f"{row['step_ms']:.1f}", f"{row['samples_per_s']:.1f}", f"{row['tokens_per_s']:,.0f}",
                     f"{tflops:.2f}", f"{100 * row['mfu']:.1f}%" if peak else None, mem and f"{mem:,.0f}"])
        del inputs

    title = (f"training fwd+bwd, autocast {str(amp).replace('torch.', '')}, params {args.param_dtype}, "
             f"{machine_name(device)}" + (f", peak {peak:g} TFLOP/s" if peak else ""))
    print_table(["preset", "kind", "batch", "attention", "ckpt", "step ms", "samples/s", "tokens/s", "TFLOP/s",
                 "MFU", "peak MiB"], rows, title)
    payload = {"machine": machine_name(device), "results": results}
    write_json(args.json, payload)
    return payload


if __name__ == "__main__":
    main()
