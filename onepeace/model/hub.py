"""The exported-model directory, laid out the way the Hugging Face Hub expects.

    config.json         the ModelConfig fields, plus ``tokenizer`` (path of the sidecar, relative to the
                        directory), ``source`` (what the export was made from) and ``conversion`` (what
                        onepeace-convert-official filled in), when known
    model.safetensors   the weights (safetensors: no pickled code, memory-mapped loading)
    tokenizer/          the tokenizer sidecar and its model file (written by ``onepeace-export``)
    README.md           a model card (written by ``huggingface_hub``)

``OnePeace.save_pretrained`` writes it and ``OnePeace.from_pretrained`` reads it from a local directory
or a Hub repository (``HF_HUB_OFFLINE=1`` keeps it off the network). Exports made before this layout,
``config.yaml`` (``model:`` fields, ``tokenizer``) plus ``model.pt`` (a state dict), still load.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from typing import Any

import torch

from ..config import ConfigError, ModelConfig, from_dict, load_yaml, to_dict
from ..files import atomic_write

CONFIG_FILE, WEIGHTS_FILE = "config.json", "model.safetensors"
LEGACY_CONFIG_FILE, LEGACY_WEIGHTS_FILE = "config.yaml", "model.pt"
METADATA_KEYS = ("tokenizer", "source", "conversion")  # config.json keys that are not ModelConfig fields
MODEL_FIELDS = tuple(f.name for f in dataclasses.fields(ModelConfig))


def _is_legacy(path: str) -> bool:
    return not os.path.isfile(os.path.join(path, CONFIG_FILE)) and \
        os.path.isfile(os.path.join(path, LEGACY_CONFIG_FILE))


def is_export(path: str) -> bool:
    """An exported model directory, in the current layout or the older ``config.yaml`` + ``model.pt`` one."""
    return any(os.path.isfile(os.path.join(path, c)) and os.path.isfile(os.path.join(path, w))
               for c, w in ((CONFIG_FILE, WEIGHTS_FILE), (LEGACY_CONFIG_FILE, LEGACY_WEIGHTS_FILE)))


def _require_export(path: str) -> None:
    if not is_export(path):
        have = CONFIG_FILE if os.path.isfile(os.path.join(path, CONFIG_FILE)) else None
        missing = WEIGHTS_FILE if have else f"{CONFIG_FILE} and {WEIGHTS_FILE}"
        raise FileNotFoundError(f"{path} is not an exported ONE-PEACE model: {missing} missing")


def read_export_config(path: str) -> tuple[ModelConfig, dict[str, Any]]:
    """(model config, metadata such as ``tokenizer``) of an export."""
    _require_export(path)
    if _is_legacy(path):
        where = os.path.join(path, LEGACY_CONFIG_FILE)
        raw = load_yaml(where)
        model, meta = raw.get("model") or {}, {k: v for k, v in raw.items() if k != "model"}
    else:
        where = os.path.join(path, CONFIG_FILE)
        try:
            with open(where, encoding="utf-8") as f:
                raw = json.load(f)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{where}: not valid JSON: {exc}") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"{where}: the top level must be an object")
        model = {k: v for k, v in raw.items() if k not in METADATA_KEYS}
        meta = {k: raw[k] for k in METADATA_KEYS if k in raw}
    try:
        return from_dict(ModelConfig, model, "model"), meta
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def load_export_state(path: str, map_location: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    _require_export(path)
    if _is_legacy(path):
        return torch.load(os.path.join(path, LEGACY_WEIGHTS_FILE), map_location=map_location, weights_only=True)
    from safetensors.torch import load_file

    return load_file(os.path.join(path, WEIGHTS_FILE), device=str(map_location))


class LazyExportState(Mapping):
    """An export's weights read one tensor at a time, when asked for (a warm start copies them module by
    module, so no process holds a second copy of the whole model); ``shape(name)`` reads no data."""

    def __init__(self, path: str) -> None:
        from safetensors import safe_open

        self._file = safe_open(os.path.join(path, WEIGHTS_FILE), framework="pt", device="cpu")
        self._names = list(self._file.keys())
        self._known = set(self._names)

    def __getitem__(self, name: str) -> torch.Tensor:
        if name not in self._known:
            raise KeyError(name)
        return self._file.get_tensor(name)

    def __iter__(self):
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._file.get_slice(name).get_shape())


def lazy_export_state(path: str) -> Mapping[str, torch.Tensor]:
    """Like :func:`load_export_state`, but tensors are read from the file only when accessed (legacy
    ``model.pt`` files are memory-mapped)."""
    _require_export(path)
    if _is_legacy(path):
        return torch.load(os.path.join(path, LEGACY_WEIGHTS_FILE), map_location="cpu", weights_only=True, mmap=True)
    return LazyExportState(path)


def export_tokenizer(path: str) -> str | None:
    """The tokenizer sidecar that ships with an export (a path under it), or None."""
    tokenizer = read_export_config(path)[1].get("tokenizer")
    if tokenizer is None:
        return None
    if not isinstance(tokenizer, str):
        raise ConfigError(f"{path}: 'tokenizer' must be a path, got {tokenizer!r}")
    return os.path.join(path, tokenizer)


def write_export(path: str, config: ModelConfig, state: dict[str, torch.Tensor], extra: dict | None = None) -> None:
    """``model.safetensors`` and ``config.json`` (``extra`` may add ``tokenizer`` and ``source``)."""
    from safetensors.torch import save

    unknown = sorted(set(extra or {}) - set(METADATA_KEYS))
    if unknown:
        raise ValueError(f"save_pretrained: extra may hold {', '.join(METADATA_KEYS)}, not {', '.join(unknown)}")
    os.makedirs(path, exist_ok=True)
    # Tied or shared tensors must be separate, contiguous storage for safetensors.
    atomic_write(os.path.join(path, WEIGHTS_FILE),
                 save({k: v.detach().cpu().contiguous().clone() for k, v in state.items()}, metadata={"format": "pt"}))
    atomic_write(os.path.join(path, CONFIG_FILE), json.dumps({**to_dict(config), **(extra or {})}, indent=2) + "\n")


def local_copy(model_id: str, revision: str | None, cache_dir, force_download: bool, local_files_only: bool,
               token) -> str:
    """A local directory holding ``model_id``: itself when it is one, else the Hub snapshot (downloaded once)."""
    if os.path.isdir(model_id):
        return model_id
    from huggingface_hub import snapshot_download

    return snapshot_download(repo_id=model_id, revision=revision, cache_dir=cache_dir, force_download=force_download,
                             local_files_only=local_files_only, token=token)
