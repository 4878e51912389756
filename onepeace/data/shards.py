"""Finding shards and their sizes: index.json files and shard specs with brace expansion.

Sizes always come from index.json, never from opening tars, so a rank only touches the shards it reads.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

import braceexpand

from onepeace.data.formats import FORMAT_VERSION, KINDS
from onepeace.data.layout import BUILT, Layout, LayoutError


class ShardSpecError(ValueError):
    """A shard spec or index.json cannot be used; the message names the path and the problem."""


@dataclass(frozen=True)
class Shard:
    url: str  # a local path
    samples: int
    layout: Layout = BUILT  # which members hold what (index.json "members"; absent for our own builds)


@dataclass(frozen=True)
class ShardSet:
    kind: str
    shards: tuple[Shard, ...]

    @property
    def total(self) -> int:
        return sum(s.samples for s in self.shards)


def index_path(path: str) -> str:
    return os.path.join(path, "index.json") if os.path.isdir(path) else path


def load_index(path: str) -> dict:
    """A validated index.json (``path`` is the file or the folder holding it)."""
    path = index_path(path)
    try:
        with open(path, encoding="utf-8") as f:
            index = json.load(f)
    except FileNotFoundError:
        raise ShardSpecError(f"{path}: no such index (build shards with python -m data_tools.build_shards, "
                             "or index existing WebDataset shards with onepeace-index-shards)") from None
    except json.JSONDecodeError as exc:
        raise ShardSpecError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(index, dict):
        raise ShardSpecError(f"{path}: expected a JSON object")
    if index.get("format_version") != FORMAT_VERSION:
        raise ShardSpecError(f"{path}: format_version {index.get('format_version')!r}, this code reads {FORMAT_VERSION}")
    if index.get("kind") not in KINDS:
        raise ShardSpecError(f"{path}: kind {index.get('kind')!r} is not one of {', '.join(KINDS)}")
    shards = index.get("shards")
    if not isinstance(shards, list):
        raise ShardSpecError(f"{path}: 'shards' must be a list")
    for i, entry in enumerate(shards):
        if not (isinstance(entry, dict) and isinstance(entry.get("path"), str)
                and isinstance(entry.get("samples"), int) and entry["samples"] >= 0):
            raise ShardSpecError(f"{path}: shards[{i}] needs a 'path' string and a 'samples' count")
    try:
        Layout.from_json(index.get("members"), path)
    except LayoutError as exc:
        raise ShardSpecError(str(exc)) from None
    return index


def index_shards(path: str) -> ShardSet:
    index = load_index(path)
    base = os.path.dirname(os.path.abspath(index_path(path)))
    layout = Layout.from_json(index.get("members"), path)
    return ShardSet(index["kind"], tuple(Shard(os.path.normpath(os.path.join(base, e["path"])), e["samples"], layout)
                                         for e in index["shards"]))


def resolve_shards(spec: str) -> ShardSet:
    """Shards named by ``spec``: a folder or index.json, or tar paths with braces (``a-{000..009}.tar``);
    several specs may be joined with ``::``. Each tar must be listed in the index.json beside it."""
    kind = None
    shards: list[Shard] = []
    folders: dict[str, tuple[str, dict[str, Shard]]] = {}  # folder -> (kind, shards by path)
    for part in spec.split("::"):
        part = part.strip()
        if not part:
            continue
        for path in braceexpand.braceexpand(part):
            if path.endswith(".tar"):
                folder = os.path.dirname(os.path.abspath(path))
                if folder not in folders:
                    found = index_shards(folder)
                    folders[folder] = (found.kind, {os.path.abspath(s.url): s for s in found.shards})
                part_kind, listed = folders[folder][0], folders[folder][1].get(os.path.abspath(path))
                if listed is None:
                    raise ShardSpecError(f"{path}: not listed in {os.path.join(folder, 'index.json')}")
                part_shards = [listed]
            else:
                found = index_shards(path)
                part_kind, part_shards = found.kind, list(found.shards)
            if kind is not None and part_kind != kind:
                raise ShardSpecError(f"{spec}: mixes shards of kind {kind} and {part_kind}")
            kind = part_kind
            shards.extend(part_shards)
    if not shards:
        raise ShardSpecError(f"{spec!r}: names no shards")
    return ShardSet(kind, tuple(shards))
