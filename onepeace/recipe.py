"""A recipe is one YAML file with ``model``, ``data`` and ``train`` sections; ``--set`` overrides it.

A recipe may hold one more top-level section, ``presets``: for each model preset, the dotted keys whose
values depend on the model size (batch sizes, workers, activation checkpointing, where stage 1 of that
size lives). The row of the chosen ``model.preset`` is filled in first, then ``--set`` overrides win:

    --config stage1_vl --set model.preset=large

Such a recipe also answers to ``<name>_<size>`` (``stage1_vl_large``, ``stage2_al_4b``): the same recipe
at that preset, which is also the run's name (``runs/stage1_vl_large`` by default).
"""

from __future__ import annotations

import copy
import logging
import os
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, Sequence

import yaml

from .config import (MODEL_PRESETS, ConfigError, ModelConfig, apply_overrides, from_dict, load_yaml,
                     resolve_model_config, set_dotted, to_dict)
from .data.config import DataConfig
from .files import atomic_write
from .train.config import TrainConfig

log = logging.getLogger(__name__)

SECTIONS = ("model", "data", "train")
PRESETS_KEY = "presets"


@dataclass
class Recipe:
    model: ModelConfig
    data: DataConfig
    train: TrainConfig
    name: str = "recipe"
    source: str = ""
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    def to_dict(self) -> dict[str, Any]:
        """Fully resolved, plain data: what ``config.yaml`` in a run directory holds (loadable again)."""
        return {"model": to_dict(self.model), "data": to_dict(self.data), "train": to_dict(self.train)}


def size_name(preset: str) -> str:
    """The short size in recipe names: ``onepeace-4b`` -> ``4b``."""
    return preset.removeprefix("onepeace-")


def _shipped_file(name: str):
    return resources.files("onepeace.recipes") / f"{name}.yaml"


def _shipped_files() -> list[str]:
    return sorted(p.name[:-5] for p in resources.files("onepeace.recipes").iterdir() if p.name.endswith(".yaml"))


def _preset_rows(path: str) -> dict[str, Any]:
    return load_yaml(path).get(PRESETS_KEY) or {}


def shipped_recipes() -> list[str]:
    """Every name ``--config`` takes: the shipped files, and ``<name>_<size>`` for each of their presets."""
    names = []
    for stem in _shipped_files():
        names.append(stem)
        names += [f"{stem}_{size_name(preset)}" for preset in _preset_rows(str(_shipped_file(stem)))]
    return names


def _alias(name: str) -> tuple[str, str] | None:
    """``stage1_vl_large`` -> (path of stage1_vl.yaml, "large") when stage1_vl has a ``large`` row."""
    stem, _, size = name.rpartition("_")
    if not stem or not _shipped_file(stem).is_file():
        return None
    presets = {size_name(p): p for p in _preset_rows(str(_shipped_file(stem)))}
    return (str(_shipped_file(stem)), presets[size]) if size in presets else None


def recipe_path(name_or_path: str) -> str:
    """A file path, or the name of a recipe shipped in ``onepeace/recipes``."""
    return _resolve(name_or_path)[0]


def _resolve(name_or_path: str) -> tuple[str, str | None]:
    """(file, preset the name fixes or None)."""
    if os.path.exists(name_or_path):
        return name_or_path, None
    if _shipped_file(name_or_path).is_file():
        return str(_shipped_file(name_or_path)), None
    alias = _alias(name_or_path)
    if alias is not None:
        return alias
    raise ConfigError(f"recipe {name_or_path!r} is neither a file nor a shipped recipe "
                      f"(shipped: {', '.join(shipped_recipes())})")


def _renamed_keys(data: dict[str, Any], source: str) -> dict[str, Any]:
    """Recipes and run configs written before ``model.checkpoint_activations`` became the one switch said
    ``train.activation_checkpointing``, which then overrode the model's field: it still does."""
    train = data.get("train")
    if not isinstance(train, dict) or "activation_checkpointing" not in train:
        return data
    data = copy.deepcopy(data)
    value = data["train"].pop("activation_checkpointing")
    log.warning("%s: train.activation_checkpointing is now model.checkpoint_activations", source or "recipe")
    set_dotted(data, ["model", "checkpoint_activations"], value, source or "recipe")
    return data


def build_recipe(data: dict[str, Any], name: str = "recipe", source: str = "") -> Recipe:
    data = _renamed_keys(data, source)
    unknown = sorted(set(data) - set(SECTIONS))
    if unknown:
        raise ConfigError(f"{source or name}: unknown top-level key{'s' if len(unknown) > 1 else ''} "
                          f"{', '.join(unknown)}; a recipe has {', '.join(SECTIONS)}")
    try:
        model = resolve_model_config(data.get("model"), "model")
        data_cfg = from_dict(DataConfig, data.get("data") or {}, "data")
        train = from_dict(TrainConfig, data.get("train") or {}, "train")
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}" if source else str(exc)) from None
    return Recipe(model, data_cfg, train, name=name, source=source, raw=data)


def apply_preset_row(data: dict[str, Any], rows: Any, preset: str, source: str) -> dict[str, Any]:
    """``data`` with the dotted keys of ``rows[preset]`` set (a copy)."""
    if not isinstance(rows, dict) or not all(isinstance(r, dict) for r in rows.values()):
        raise ConfigError(f"{source}: {PRESETS_KEY} must map each model preset to dotted keys and values")
    unknown = sorted(set(rows) - set(MODEL_PRESETS))
    if unknown:
        raise ConfigError(f"{source}: {PRESETS_KEY} names unknown model presets {', '.join(unknown)}; "
                          f"available: {', '.join(MODEL_PRESETS)}")
    if preset not in rows:
        raise ConfigError(f"{source}: {PRESETS_KEY} has no row for model.preset {preset!r}; it has "
                          f"{', '.join(rows)}")
    out = copy.deepcopy(data)
    for key, value in rows[preset].items():
        set_dotted(out, str(key).split("."), value, f"{source}: {PRESETS_KEY}.{preset}.{key}")
    return out


def load_recipe(name_or_path: str, overrides: Sequence[str] = ()) -> Recipe:
    path, preset = _resolve(name_or_path)
    overrides = ([f"model.preset={preset}"] if preset else []) + list(overrides)
    data = load_yaml(path)
    rows = data.pop(PRESETS_KEY, None)
    name = os.path.basename(path).rsplit(".", 1)[0]
    if rows is not None:
        chosen = (apply_overrides(data, overrides).get("model") or {}).get("preset")
        if not isinstance(chosen, str):
            raise ConfigError(f"{path}: a recipe with {PRESETS_KEY} needs model.preset (one of {', '.join(rows)})")
        data = apply_preset_row(data, rows, chosen, path)
        name = f"{name}_{size_name(chosen)}"
    return build_recipe(apply_overrides(data, overrides), name=name, source=path)


def dump_recipe(recipe: Recipe, path: str) -> None:
    atomic_write(path, yaml.safe_dump(recipe.to_dict(), sort_keys=False))
