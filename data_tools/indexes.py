"""Writing index.json and rejects.jsonl, and merging the indexes of split builds."""

from __future__ import annotations

import json
import os
import time
from collections import Counter

from onepeace.files import atomic_write
from onepeace import __version__
from onepeace.data.formats import FORMAT_VERSION
from onepeace.data.shards import load_index


class MergeError(ValueError):
    """Parts that cannot be merged; the message names the part and the problem."""


def make_index(*, kind: str, name: str, shards: list[dict], settings: dict, source: dict,
               rejected: dict[str, int], build_seconds: float) -> dict:
    return {
        "format_version": FORMAT_VERSION,
        "kind": kind,
        "name": name,
        "shards": shards,
        "total_samples": sum(s["samples"] for s in shards),
        "total_bytes": sum(s["bytes"] for s in shards),
        "settings": settings,
        "source": source,
        "rejected": dict(sorted(rejected.items())),
        "build_seconds": round(build_seconds, 3),
        "tool_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def write_index(out_dir: str, index: dict) -> str:
    path = os.path.join(out_dir, "index.json")
    atomic_write(path, json.dumps(index, indent=1, ensure_ascii=False) + "\n")
    return path


def write_rejects(out_dir: str, rejects: list[dict]) -> str:
    path = os.path.join(out_dir, "rejects.jsonl")
    atomic_write(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rejects))
    return path


def merge(out_dir: str, parts: list[str]) -> dict:
    """One index (and rejects.jsonl) over several build folders; shard paths become relative to ``out_dir``."""
    if not parts:
        raise MergeError("merge needs at least one build folder")
    out_abs = os.path.abspath(out_dir)
    indexes = []
    for part in parts:
        if os.path.abspath(part) == out_abs:
            raise MergeError(f"{part}: the merged index cannot be written into one of its parts; pick another --out")
        indexes.append(load_index(part))
    first = indexes[0]
    seen_sources: dict[tuple, str] = {}
    for part, index in zip(parts, indexes):
        if index["kind"] != first["kind"]:
            raise MergeError(f"{part}: kind {index['kind']} differs from {parts[0]} ({first['kind']})")
        if index.get("settings") != first.get("settings"):
            raise MergeError(f"{part}: build settings differ from {parts[0]}; rebuild the parts with the same flags")
        for sub in index["source"].get("parts", [index["source"]]):
            ident = (sub.get("manifest"), sub.get("num_splits"), sub.get("split_index"))
            if ident in seen_sources:
                raise MergeError(f"{part}: holds the same split of {ident[0]} as {seen_sources[ident]}")
            seen_sources[ident] = part
    shards, rejected, rejects = [], Counter(), []
    for part, index in zip(parts, indexes):
        base = os.path.dirname(os.path.abspath(os.path.join(part, "index.json")))
        for entry in index["shards"]:
            shards.append({**entry, "path": os.path.relpath(os.path.join(base, entry["path"]), out_abs)})
        rejected.update(index.get("rejected", {}))
        rejects_path = os.path.join(base, "rejects.jsonl")
        if os.path.exists(rejects_path):
            with open(rejects_path, encoding="utf-8") as f:
                rejects.extend(json.loads(line) for line in f if line.strip())
    sources = [s for index in indexes for s in index["source"].get("parts", [index["source"]])]
    os.makedirs(out_abs, exist_ok=True)
    merged = make_index(kind=first["kind"], name=first["name"], shards=shards, settings=first.get("settings", {}),
                        source={"parts": sources}, rejected=dict(rejected),
                        build_seconds=sum(i.get("build_seconds", 0.0) for i in indexes))
    write_rejects(out_abs, rejects)
    write_index(out_abs, merged)
    return merged
