"""``onepeace-export SOURCE OUT_DIR``: consolidated weights (from ZeRO shards) + model config + tokenizer.

SOURCE is a run, one of its checkpoints, or an export in the older ``config.yaml`` + ``model.pt`` layout
(which this converts). OUT_DIR holds ``model.safetensors``, ``config.json`` and ``tokenizer/`` (see
``onepeace/model/hub.py``); it loads with ``OnePeace.from_pretrained(OUT_DIR)`` and carries the run's
tokenizer, so ``onepeace-eval`` and ``encode_text`` need nothing else.
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

from ..config import ConfigError
from ..data.tokenizer import TokenizerError, copy_tokenizer
from ..runs import load_model

TOKENIZER_DIR, TOKENIZER_SIDECAR = "tokenizer", "tokenizer.json"


def export(source: str, out_dir: str, dtype: str = "fp32") -> str:
    loaded = load_model(source)
    if os.path.abspath(out_dir) == loaded.source:
        raise ConfigError(f"{out_dir} is the export being read; write the new export elsewhere")
    extra = {"source": {"checkpoint": loaded.source, "recipe": loaded.recipe_file} if loaded.recipe_file
             else {"export": loaded.source}}
    if loaded.tokenizer:
        extra["tokenizer"] = _copy_tokenizer(loaded.tokenizer, out_dir)
    loaded.model.save_pretrained(out_dir, extra=extra, dtype={"fp32": None, "bf16": torch.bfloat16}[dtype])
    return loaded.source


def _copy_tokenizer(sidecar: str, out_dir: str) -> str:
    """Copy the tokenizer's sidecar and files next to the weights; returns the sidecar's path relative to them."""
    copy_tokenizer(sidecar, os.path.join(out_dir, TOKENIZER_DIR), TOKENIZER_SIDECAR)
    return os.path.join(TOKENIZER_DIR, TOKENIZER_SIDECAR)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="onepeace-export", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("source", help="a run directory (newest complete checkpoint), one checkpoint directory, or an "
                                  "export in the older config.yaml + model.pt layout")
    p.add_argument("out_dir", help="where model.safetensors, config.json and tokenizer/ are written")
    p.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32", help="dtype of the saved weights")
    args = p.parse_args(argv)
    try:
        used = export(args.source, args.out_dir, args.dtype)
    except (ConfigError, FileNotFoundError, TokenizerError) as exc:
        print(f"onepeace-export: error: {exc}", file=sys.stderr)
        return 2
    print(f"exported {used} -> {os.path.abspath(args.out_dir)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
