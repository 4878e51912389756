"""Reading what existing WebDataset shards hold, without decoding any media: the scans behind
``data_tools.index_shards``.

A shard is read through its tar headers (members' data are skipped by seeking, except the small
``.txt`` and ``.json`` ones whose captions we check), one header at a time, so a shard of any size
costs little memory. Members are grouped into samples exactly as WebDataset groups them
(``webdataset.tariterators.base_plus_ext``: the key is the name up to the first dot of its last path
component, consecutive members with one key form one sample, extensions lowercased), so the counts
written into index.json are the counts the readers see.
"""

from __future__ import annotations

import json
import os
import re
import tarfile
from collections import Counter
from dataclasses import dataclass, field

from onepeace.data.layout import (
    AUDIO_EXTENSIONS,
    IMAGE_EXTENSIONS,
    Layout,
    MissingCaption,
    captions_of,
    parse_json_member,
)

_KEY_EXT = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")
_META = re.compile(r"__[^/]*__($|/)")
KNOWN_EXTENSIONS = frozenset((*IMAGE_EXTENSIONS, *AUDIO_EXTENSIONS, "txt", "json"))
PROBLEM_EXAMPLES = 3  # sample keys kept per problem and shard, for the report


def split_member(name: str) -> tuple[str, str] | tuple[None, None]:
    """(key, lowercased extension) as WebDataset splits a member name."""
    match = _KEY_EXT.match(name)
    if not match:
        return None, None
    return match.group(1), match.group(2).lower()


@dataclass
class SampleInfo:
    key: str
    extensions: set[str] = field(default_factory=set)
    txt: bytes | None = None
    json: bytes | None = None


def iter_samples(path: str, read_text: bool = True):
    """Samples of one shard, in order, with their member extensions (and the .txt/.json bytes).
    Raises tarfile.TarError, OSError or EOFError on a damaged or unreadable shard."""
    current: SampleInfo | None = None
    with tarfile.open(path, mode="r:*") as tar:
        for info in tar:
            tar.members = []  # keep memory flat: tarfile would remember every header
            if not info.isreg() or _META.match(info.name):
                continue
            key, ext = split_member(info.name)
            if key is None:
                continue
            if current is None or key != current.key:
                if current is not None:
                    yield current
                current = SampleInfo(key)
            current.extensions.add(ext)
            if read_text and ext in ("txt", "json") and info.size <= 1 << 20:
                data = tar.extractfile(info).read()
                setattr(current, ext, data)
    if current is not None:
        yield current


@dataclass
class ShardScan:
    """One shard: its samples' extension sets (in order) and what is wrong with some of them."""

    path: str
    bytes: int = 0
    samples: list[frozenset[str]] = field(default_factory=list)
    captions: Counter = field(default_factory=Counter)  # caption source -> samples where it gives a caption
    bad_json: list[str] = field(default_factory=list)  # keys of samples whose KEY.json does not parse
    no_caption: dict[str, list[str]] = field(default_factory=dict)  # caption source -> keys without a caption
    error: str | None = None  # the shard cannot be read (then it is left out of the index)


CAPTION_CANDIDATES = ("txt", "json:caption", "json:text")


def scan_shard(path: str, caption: str | None = None, limit: int | None = None) -> ShardScan:
    """Scan one shard (the first ``limit`` samples only when given). With ``caption`` None every
    candidate caption source is tried, so the caller can pick the one the shards use."""
    scan = ShardScan(path)
    sources = [caption] if caption else list(CAPTION_CANDIDATES)
    try:
        scan.bytes = os.path.getsize(path)
        for sample in iter_samples(path):
            if not sample.extensions & KNOWN_EXTENSIONS:
                continue
            scan.samples.append(frozenset(sample.extensions))
            meta = None
            if sample.json is not None:
                try:
                    meta = parse_json_member(sample.json)
                except ValueError:
                    scan.bad_json.append(sample.key)
            for source in sources:
                if source.startswith("json:") and "json" in sample.extensions and meta is None:
                    continue  # already counted as bad JSON
                try:
                    captions_of(source, sample.txt, meta)
                    scan.captions[source] += 1
                except MissingCaption:
                    scan.no_caption.setdefault(source, []).append(sample.key)
            if limit is not None and len(scan.samples) >= limit:
                break
    except (tarfile.TarError, OSError, EOFError, UnicodeDecodeError) as exc:
        scan.error = f"{type(exc).__name__}: {exc}"
    return scan


def usable_count(samples: list[frozenset[str]], layout: Layout, modalities: tuple[str, ...]) -> tuple[int, int]:
    """(samples a reader of ``layout`` sees, those among them without the media it needs)."""
    wanted = layout.members(modalities)
    seen = no_media = 0
    for exts in samples:
        if not exts & wanted:
            continue
        seen += 1
        if ("image" in modalities and not exts & set(layout.image)) or \
                ("audio" in modalities and not exts & set(layout.audio)):
            no_media += 1
    return seen, no_media


# -- sizes files written by other tools ------------------------------------------------------------


def declared_size(path: str) -> tuple[int, str] | None:
    """Samples of a shard as its producer recorded them: img2dataset's ``NNNNN_stats.json``
    (``successes``) or a ``sizes.json`` beside the shards (``{"0.tar": 512, ...}``, as the LAION
    audio-dataset and CLAP tools write). None when neither names this shard."""
    folder, name = os.path.split(path)
    sizes_file = os.path.join(folder, "sizes.json")
    sizes = _json_file(sizes_file)
    if isinstance(sizes, dict):
        for key, value in sizes.items():
            if os.path.basename(key) == name and isinstance(value, int) and value >= 0:
                return value, sizes_file
    stem = name[:-4] if name.endswith(".tar") else os.path.splitext(name)[0]
    stats_file = os.path.join(folder, f"{stem}_stats.json")
    stats = _json_file(stats_file)
    if isinstance(stats, dict) and isinstance(stats.get("successes"), int) and stats["successes"] >= 0:
        return stats["successes"], stats_file
    return None


_JSON_CACHE: dict[str, object] = {}


def _json_file(path: str):
    if path not in _JSON_CACHE:
        try:
            with open(path, encoding="utf-8") as f:
                _JSON_CACHE[path] = json.load(f)
        except (OSError, ValueError):
            _JSON_CACHE[path] = None
    return _JSON_CACHE[path]
