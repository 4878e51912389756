"""onepeace-index-shards (python -m data_tools.index_shards): existing WebDataset shards -> our index.json,
without re-encoding anything, so training and onepeace-eval read the shards as they are.

    onepeace-index-shards /data/laion400m                       # img2dataset output: 00000.tar, 00001.tar, ...
    onepeace-index-shards "/data/audio/{0..511}.tar" --out indexes/laion-audio --trust-sizes
    onepeace-index-shards a/0.tar a/1.tar b/0.tar --out indexes/mix --caption json:text

It counts the samples of every shard (from the tar headers, streaming; or, with --trust-sizes, from
img2dataset's NNNNN_stats.json or a sizes.json beside the shards), finds which members hold the media
and the captions (``members`` in index.json, docs/data_format.md), and reports shards that cannot be
read (left out of the index) and samples without usable media or caption (kept in the counts: the
readers skip and count them). Exit status: 0 index written, 1 no readable shard, 2 bad arguments.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import re
import sys
import tempfile
import time
from collections import Counter

import braceexpand
from tqdm import tqdm

from data_tools.indexes import write_index
from data_tools.parallel import ordered_map
from data_tools.shard_scan import (
    CAPTION_CANDIDATES,
    PROBLEM_EXAMPLES,
    ShardScan,
    declared_size,
    scan_shard,
    usable_count,
)
from onepeace import __version__
from onepeace.data.formats import FORMAT_VERSION, KIND_MODALITIES, KINDS
from onepeace.data.layout import (
    AUDIO_EXTENSIONS,
    IMAGE_EXTENSIONS,
    Layout,
    LayoutError,
    check_caption_spec,
)

PROG = "onepeace-index-shards"
PROBE_SAMPLES = 64  # samples of the first readable shard that choose the layout under --trust-sizes


class IndexError_(ValueError):
    """The shards cannot be indexed as asked; the message says why."""


def _natural(path: str):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", path)]


def shard_paths(specs: list[str]) -> list[str]:
    """Tar paths from folders (every *.tar, in natural order), brace patterns and plain paths."""
    out: list[str] = []
    for spec in specs:
        if os.path.isdir(spec):
            found = sorted(glob.glob(os.path.join(glob.escape(spec), "*.tar")), key=_natural)
            if not found:
                raise IndexError_(f"{spec}: no .tar files in this folder")
            out.extend(found)
        else:
            out.extend(braceexpand.braceexpand(spec))
    seen: set[str] = set()
    unique = []
    for path in (os.path.abspath(p) for p in out):
        if path not in seen:
            seen.add(path)
            unique.append(path)
    if not unique:
        raise IndexError_("no shards named")
    return unique


def choose_layout(scans: list[ShardScan], kind: str | None, caption: str | None, media: set[str]) -> tuple[str, Layout]:
    """The kind and members of the shards, from what the scanned samples hold (or what was asked)."""
    has_image = bool(media & set(IMAGE_EXTENSIONS))
    has_audio = bool(media & set(AUDIO_EXTENSIONS))
    if caption is None:
        counts = Counter()
        for scan in scans:
            counts.update(scan.captions)
        caption = next((c for c in CAPTION_CANDIDATES if counts[c]), None)
    if kind is None:
        if has_image and has_audio:
            raise IndexError_("the shards hold both images and audio: pass --kind")
        text = caption is not None
        kind = ("image-text" if text else "image") if has_image else ("audio-text" if text else "audio") \
            if has_audio else ("text" if text else None)
        if kind is None:
            raise IndexError_("found no image (.jpg .jpeg .png .webp), audio (.flac .wav .mp3 .ogg) or caption "
                              "(.txt, or a JSON 'caption' or 'text' field) in the shards")
    modalities = KIND_MODALITIES[kind]
    if "text" in modalities and caption is None:
        raise IndexError_(f"kind {kind} needs captions, and none were found: name the source with --caption "
                          "(txt, or json:FIELD)")
    image = tuple(e for e in IMAGE_EXTENSIONS if e in media) or ("jpg",)
    audio = tuple(e for e in AUDIO_EXTENSIONS if e in media) or ("flac",)
    if "image" in modalities and not has_image:
        raise IndexError_(f"kind {kind}: no image members (.jpg .jpeg .png .webp) in the shards")
    if "audio" in modalities and not has_audio:
        raise IndexError_(f"kind {kind}: no audio members (.flac .wav .mp3 .ogg) in the shards")
    return kind, Layout(image=image, audio=audio, caption=caption or "txt", id="key")


def _scan_task(task: tuple[str, str | None]) -> ShardScan:
    path, caption = task
    return scan_shard(path, caption)


def index_shards(paths: list[str], out_dir: str, *, name: str, kind: str | None = None, caption: str | None = None,
                 trust_sizes: bool = False, workers: int = 1, progress: bool = True, log=print) -> dict:
    """Scan (or trust) ``paths``, write ``out_dir/index.json`` and return it."""
    start = time.monotonic()
    sizes: dict[str, tuple[int, str]] = {}
    if trust_sizes:
        sizes = {p: s for p in paths if (s := declared_size(p)) is not None}
        untrusted = [p for p in paths if p not in sizes]
        if untrusted:
            log(f"index_shards: no sizes file names {len(untrusted)} shard(s) (e.g. {untrusted[0]}): scanning them")
    to_scan = [p for p in paths if p not in sizes]
    scans: dict[str, ShardScan] = {}
    bar = tqdm(total=len(to_scan), unit="shard", file=sys.stderr, disable=not progress or not to_scan,
               desc="index shards", dynamic_ncols=True)
    for (path, _), scan in ordered_map(_scan_task, ((p, caption) for p in to_scan), workers=workers, chunksize=1):
        scans[path] = scan
        bar.update(1)
    bar.close()
    probes = list(scans.values())
    if not any(s.samples for s in probes):  # everything trusted: look at the first readable shard's start
        for path in paths:
            probe = scan_shard(path, caption, limit=PROBE_SAMPLES)
            if probe.error is None and probe.samples:
                probes.append(probe)
                break
            if probe.error is not None:
                scans[path] = probe  # unreadable: reported and left out
    media = {ext for scan in probes for exts in scan.samples for ext in exts}
    kind, layout = choose_layout([s for s in probes if s.error is None], kind, caption, media)
    modalities = KIND_MODALITIES[kind]

    entries, unreadable, problems, examples = [], [], Counter(), {}
    index_dir = os.path.abspath(out_dir)
    for path in paths:
        scan = scans.get(path)
        if scan is not None and scan.error is not None:
            unreadable.append({"path": path, "error": scan.error})
            continue
        if path in sizes:
            samples, _ = sizes[path]
            size_bytes = os.path.getsize(path) if os.path.exists(path) else None
            if size_bytes is None:
                unreadable.append({"path": path, "error": "no such file (named by a sizes file)"})
                continue
        else:
            samples, no_media = usable_count(scan.samples, layout, modalities)
            size_bytes = scan.bytes
            _count(problems, examples, path, "no_media", no_media, [])
            if "text" in modalities:
                missing = scan.no_caption.get(layout.caption, [])
                _count(problems, examples, path, "no_caption", len(missing), missing)
            _count(problems, examples, path, "bad_json", len(scan.bad_json), scan.bad_json)
        entries.append({"path": os.path.relpath(path, index_dir), "samples": samples, "bytes": size_bytes})
    if not entries or not sum(e["samples"] for e in entries):
        listed = "; ".join(f"{u['path']}: {u['error']}" for u in unreadable[:3])
        raise IndexError_(f"no readable samples in {len(paths)} shard(s){': ' + listed if listed else ''}")
    index = {
        "format_version": FORMAT_VERSION,
        "kind": kind,
        "name": name,
        "shards": entries,
        "total_samples": sum(e["samples"] for e in entries),
        "total_bytes": sum(e["bytes"] for e in entries),
        "members": layout.to_json(),
        "settings": {},
        "source": {"indexed_by": "index_shards", "sizes": _sizes_origin(paths, sizes, unreadable)},
        "problems": {"unreadable_shards": unreadable, **dict(problems), "examples": examples},
        "rejected": {},
        "build_seconds": round(time.monotonic() - start, 3),
        "tool_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    write_index(index_dir, index)
    _report(index, index_dir, log)
    return index


def _count(problems: Counter, examples: dict, path: str, what: str, n: int, keys: list[str]) -> None:
    if n:
        problems[what] += n
        if keys:
            examples.setdefault(what, []).extend(f"{os.path.basename(path)}:{k}" for k in keys[:PROBLEM_EXAMPLES])
            examples[what] = examples[what][:PROBLEM_EXAMPLES]


def _sizes_origin(paths: list[str], sizes: dict, unreadable: list) -> str:
    if not sizes:
        return "scanned"
    return "trusted" if len(sizes) == len(paths) else "trusted where a sizes file names the shard, else scanned"


def _report(index: dict, index_dir: str, log) -> None:
    p = index["problems"]
    m = index["members"]
    media = {"image-text": m["image"], "image": m["image"], "audio-text": m["audio"], "audio": m["audio"]}.get(index["kind"], [])
    log(f"index_shards: {index['total_samples']} samples in {len(index['shards'])} shard(s), kind {index['kind']}, "
        f"media {' '.join('.' + e for e in media) or '-'}, captions {m['caption'] if 'text' in index['kind'] else '-'}, "
        f"sizes {index['source']['sizes']} -> {os.path.join(index_dir, 'index.json')}")
    for u in p["unreadable_shards"]:
        log(f"index_shards: unreadable shard left out: {u['path']}: {u['error']}")
    labels = {"no_media": "without usable media", "no_caption": f"without a caption ({m['caption']})",
              "bad_json": "whose .json is not a JSON object"}
    for what, label in labels.items():
        if p.get(what):
            eg = p["examples"].get(what)
            log(f"index_shards: {p[what]} sample(s) {label}{' (e.g. ' + ', '.join(eg) + ')' if eg else ''}: "
                "training and evaluation skip and count them")


def _ours(index_file: str) -> bool:
    """Whether an existing index.json was written by this tool (so re-indexing may replace it)."""
    try:
        with open(index_file, encoding="utf-8") as f:
            return json.load(f).get("source", {}).get("indexed_by") == "index_shards"
    except (OSError, ValueError, AttributeError):
        return False


def writable(folder: str) -> bool:
    """Whether a file can be created in ``folder`` (tried for real: permissions, read-only mounts)."""
    try:
        fd, path = tempfile.mkstemp(dir=folder, prefix=".index-shards-")
    except OSError:
        return False
    os.close(fd)
    os.remove(path)
    return True


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("shards", nargs="+", metavar="SHARDS",
                   help="a folder of .tar shards, a brace pattern (\"/data/{00000..00099}.tar\") or tar paths")
    p.add_argument("--out", metavar="DIR", default=None,
                   help="folder for index.json (default: the shards' folder; needed when it is read-only or the "
                        "shards lie in several folders); shard paths in it are relative to this folder")
    p.add_argument("--name", default=None, help="dataset name recorded in index.json (default: the folder's name)")
    p.add_argument("--kind", choices=KINDS, default=None,
                   help="what each sample holds (default: detected from the members)")
    p.add_argument("--caption", default=None, metavar="SOURCE",
                   help="where captions are: txt (the .txt member), json:FIELD (a string or list of strings in the "
                        ".json member, e.g. json:caption or json:text) or txt-lines (one caption per line); "
                        "default: detected, in that order of preference")
    p.add_argument("--trust-sizes", action="store_true",
                   help="take sample counts from img2dataset's NNNNN_stats.json ('successes') or a sizes.json "
                        "beside the shards instead of scanning every tar (a shard no sizes file names is scanned)")
    p.add_argument("--overwrite", action="store_true", help="replace an index.json that data_tools.build_shards wrote")
    p.add_argument("--workers", type=int, default=1, help="shards scanned in parallel processes (default: 1)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    def log(msg: str) -> None:
        print(msg, file=sys.stderr)

    try:
        if args.caption is not None:
            check_caption_spec(args.caption)
        paths = shard_paths(args.shards)
        out_dir = args.out
        if out_dir is None:
            folders = {os.path.dirname(p) for p in paths}
            if len(folders) > 1:
                raise IndexError_("the shards lie in several folders: choose where index.json goes with --out")
            out_dir = folders.pop()
            if not writable(out_dir):
                raise IndexError_(f"{out_dir} is read-only: write the index elsewhere with --out DIR")
        os.makedirs(out_dir, exist_ok=True)
        existing = os.path.join(out_dir, "index.json")
        if os.path.exists(existing) and not args.overwrite and not _ours(existing):
            raise IndexError_(f"{existing} already exists and was not written by {PROG}; pass --overwrite to "
                              "replace it, or --out to write elsewhere")
        name = args.name or os.path.basename(os.path.dirname(paths[0])) or "shards"
        index_shards(paths, out_dir, name=name, kind=args.kind, caption=args.caption, trust_sizes=args.trust_sizes,
                     workers=args.workers, progress=not args.quiet, log=log)
    except (IndexError_, LayoutError) as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 1 if isinstance(exc, IndexError_) and str(exc).startswith("no readable") else 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
