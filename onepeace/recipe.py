"""A recipe is one YAML file with ``model``, ``data`` and ``train`` sections; ``--set`` overrides it."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, Sequence

import yaml

from .config import ConfigError, ModelConfig, apply_overrides, from_dict, load_yaml, resolve_model_config, to_dict
from .data.config import DataConfig
from .files import atomic_write
from .train.config import TrainConfig

SECTIONS = ("model", "data", "train")


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


def shipped_recipes() -> list[str]:
    return sorted(p.name[:-5] for p in resources.files("onepeace.recipes").iterdir() if p.name.endswith(".yaml"))


def recipe_path(name_or_path: str) -> str:
    """A file path, or the name of a recipe shipped in ``onepeace/recipes``."""
    if os.path.exists(name_or_path):
        return name_or_path
    candidate = resources.files("onepeace.recipes") / f"{name_or_path}.yaml"
    if candidate.is_file():
        return str(candidate)
    raise ConfigError(f"recipe {name_or_path!r} is neither a file nor a shipped recipe "
                      f"(shipped: {', '.join(shipped_recipes())})")


def build_recipe(data: dict[str, Any], name: str = "recipe", source: str = "") -> Recipe:
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


def load_recipe(name_or_path: str, overrides: Sequence[str] = ()) -> Recipe:
    path = recipe_path(name_or_path)
    data = apply_overrides(load_yaml(path), overrides)
    name = os.path.basename(path).rsplit(".", 1)[0]
    return build_recipe(data, name=name, source=path)


def dump_recipe(recipe: Recipe, path: str) -> None:
    atomic_write(path, yaml.safe_dump(recipe.to_dict(), sort_keys=False))
