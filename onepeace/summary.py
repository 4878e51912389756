"""``onepeace-summary``: parameters per component and forward FLOPs per sample of a preset."""

from __future__ import annotations

import argparse
import json
import sys

import torch

from .config import MODEL_PRESETS, ConfigError, apply_overrides, resolve_model_config
from .model.accounting import (SAMPLE_KINDS, forward_flops, parameter_groups, sample_tokens,
                               vision_branch_params)


def summarize(preset: str, overrides: list[str] | None = None) -> dict:
    from .model import OnePeace

    data = apply_overrides({"preset": preset}, overrides or [])
    config = resolve_model_config(data)
    with torch.device("meta"):  # no memory: the 4B model is counted, not allocated
        model = OnePeace(config)
    groups = parameter_groups(model)
    flops = {kind: forward_flops(config, kind) for kind in SAMPLE_KINDS if _has(config, kind)}
    return {
        "preset": preset,
        "config": {k: getattr(config, k) for k in ("embed_dim", "depth", "num_heads", "ffn_dim", "decoder_dim",
                                                   "decoder_depth", "vocab_size", "image_size")},
        "params": dict(groups),
        "total_params": sum(groups.values()),
        "vision_branch_params": vision_branch_params(model),
        "forward_flops": flops,
        "tokens": {kind: sample_tokens(config, kind) for kind in flops},
    }


def _has(config, kind: str) -> bool:
    return all(m in config.modalities for m in kind.split("-"))


def _human(n: float, unit: str = "") -> str:
    for scale, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "K")):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{suffix}{unit}"
    return f"{n:.0f}{unit}"


def format_table(summary: dict) -> str:
    lines = [f"ONE-PEACE preset '{summary['preset']}': "
             + ", ".join(f"{k}={v}" for k, v in summary["config"].items()), ""]
    width = max(len(k) for k in summary["params"]) + 2
    lines.append(f"{'component':<{width}}{'parameters':>14}{'share':>8}")
    total = summary["total_params"]
    for name, n in summary["params"].items():
        lines.append(f"{name:<{width}}{n:>14,}{100 * n / total:>7.1f}%")
    lines.append(f"{'total':<{width}}{total:>14,}  ({_human(total)})")
    vb = summary["vision_branch_params"]
    lines.append(f"{'vision branch':<{width}}{vb:>14,}  ({_human(vb)}: adapter + shared attention + image FFNs "
                 "+ image norm)")
    lines += ["", f"{'forward per sample':<{width}}{'tokens':>8}{'FLOPs':>12}"]
    for kind, f in summary["forward_flops"].items():
        lines.append(f"{kind:<{width}}{summary['tokens'][kind]:>8}{_human(f):>12}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="onepeace-summary",
        description="Parameters per component and forward FLOPs per sample of a ONE-PEACE preset "
                    "(counted on the meta device: nothing is allocated).")
    parser.add_argument("--preset", required=True, help=f"model preset: {', '.join(MODEL_PRESETS)}")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a model field, e.g. --set vocab_size=32000 (repeatable)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    args = parser.parse_args(argv)
    try:
        summary = summarize(args.preset, args.overrides)
    except ConfigError as exc:
        print(f"onepeace-summary: error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=2) if args.json else format_table(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
