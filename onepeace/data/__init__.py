"""Streaming data for pretraining: shard specs -> per-task batches (docs/data_format.md).

    from onepeace.data import DataConfig, build_train_loader, build_eval_loader
    train = build_train_loader(data_cfg, model_cfg)          # endless {task: batch} steps
    for step, batches in zip(range(num_steps), train): ...
    val = build_eval_loader("image-text", data_cfg, model_cfg)  # one ordered pass, split over ranks

Names are imported lazily so that the data_tools CLIs can use the format helpers without loading torch.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "DataConfig": "config", "TaskConfig": "config", "SourceConfig": "config", "MaskConfig": "config",
    "build_train_loader": "loaders", "build_eval_loader": "loaders", "DataStream": "loaders", "EvalStream": "loaders",
    "StreamPosition": "loaders",
    "Tokenizer": "tokenizer", "TokenizerError": "tokenizer", "normalize_caption": "tokenizer",
    "check_data": "loaders", "resolve_shards": "shards", "load_index": "shards", "ShardSpecError": "shards",
    "KINDS": "formats",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'onepeace.data' has no attribute {name!r}")
    return getattr(importlib.import_module(f"onepeace.data.{_EXPORTS[name]}"), name)
