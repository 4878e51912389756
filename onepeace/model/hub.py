"""The exported-model directory: what ``OnePeace.save_pretrained`` writes and ``from_pretrained`` reads.

    config.yaml   {"model": <ModelConfig fields>, "tokenizer": "tokenizer/tokenizer.json", ...}
    model.pt      a plain state dict, loaded with ``weights_only=True`` (no pickled code runs)
    tokenizer/    the tokenizer sidecar and its model file (written by ``onepeace-export``)
"""

from __future__ import annotations

import os
from typing import Any

import torch
import yaml

from ..config import ConfigError, load_yaml, to_dict
from ..files import AtomicFile, atomic_write

CONFIG_FILE, WEIGHTS_FILE = "config.yaml", "model.pt"


def is_export(path: str) -> bool:
    return os.path.isfile(os.path.join(path, CONFIG_FILE)) and os.path.isfile(os.path.join(path, WEIGHTS_FILE))


def _require_export(path: str) -> None:
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        if not os.path.isfile(os.path.join(path, name)):
            raise FileNotFoundError(f"{path} is not an exported ONE-PEACE model: {name} is missing")


def read_export_config(path: str) -> dict[str, Any]:
    """The export's config: ``model`` (ModelConfig fields) plus whatever the exporter added."""
    _require_export(path)
    return load_yaml(os.path.join(path, CONFIG_FILE))


def load_export_state(path: str, map_location: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    _require_export(path)
    return torch.load(os.path.join(path, WEIGHTS_FILE), map_location=map_location, weights_only=True)


def export_tokenizer(path: str) -> str | None:
    """The tokenizer sidecar that ships with an export (absolute path), or None."""
    tokenizer = read_export_config(path).get("tokenizer")
    if tokenizer is None:
        return None
    if not isinstance(tokenizer, str):
        raise ConfigError(f"{os.path.join(path, CONFIG_FILE)}: 'tokenizer' must be a path, got {tokenizer!r}")
    return os.path.join(path, tokenizer)


def write_export(path: str, model_config, state: dict[str, torch.Tensor], extra: dict | None = None) -> None:
    os.makedirs(path, exist_ok=True)
    with AtomicFile(os.path.join(path, WEIGHTS_FILE), "wb") as f:
        torch.save(state, f)
    atomic_write(os.path.join(path, CONFIG_FILE),
                 yaml.safe_dump({"model": to_dict(model_config), **(extra or {})}, sort_keys=False))
