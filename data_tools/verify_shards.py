"""python -m data_tools.verify_shards DIR: decode every sample and check the shards against index.json.

Uses the same decoders as the training pipeline, so "verified" means "the trainer can read it".
Exit code 0 when everything matches, 1 on any problem, 2 when DIR has no readable index.
"""

from __future__ import annotations

import argparse
import os
import sys
import tarfile
from collections import defaultdict

from tqdm import tqdm

from data_tools.parallel import ordered_map
from data_tools.tarwriter import file_sha256
from data_tools.shard_scan import split_member
from onepeace.data.decode import BadSample, decode_audio, decode_image, decode_meta, decode_sample
from onepeace.data.formats import KIND_MEMBERS, KIND_MODALITIES, MEMBER_EXTENSIONS
from onepeace.data.layout import Layout
from onepeace.data.shards import ShardSpecError, load_index

PROG = "python -m data_tools.verify_shards"
MAX_LISTED = 20  # problems listed per shard before "... and N more"


def _text(data: bytes) -> str:
    text = data.decode("utf-8")
    if not text.strip():
        raise ValueError("empty text")
    return text


def check_sample(key: str, members: dict[str, bytes], kind: str, sample_rate: int) -> list[str]:
    """Problems with one sample (empty when it is fine)."""
    expected = set(KIND_MEMBERS[kind]) | {"json"}
    problems = []
    extra = sorted(set(members) - expected)
    if extra:
        problems.append(f"{key}: unexpected member{'s' * (len(extra) > 1)} {', '.join('.' + e for e in extra)}")
    missing = sorted(expected - set(members))
    if missing:
        problems.append(f"{key}: missing member{'s' * (len(missing) > 1)} {', '.join('.' + e for e in missing)}")
    decoders = {"json": decode_meta, "jpg": decode_image, "txt": _text,
                "flac": lambda b: decode_audio(b, sample_rate)}
    for ext in sorted(expected & set(members)):
        try:
            decoders[ext](members[ext])
        except Exception as exc:
            problems.append(f"{key}.{ext}: does not decode ({type(exc).__name__}: {exc})")
    return problems


def check_indexed_shard(path: str, entry: dict, kind: str, sample_rate: int, layout: Layout) -> dict:
    """A shard another tool wrote (index.json has ``members``): every sample the readers see is decoded
    where the members say; members the readers ignore are not problems."""
    problems: list[str] = []
    keys: list[str] = []
    wanted = layout.members(KIND_MODALITIES[kind])
    current: dict | None = None

    def finish(sample: dict | None) -> None:
        if sample is None or not set(sample) - {"__key__"}:
            return
        keys.append(sample["__key__"])
        try:
            decode_sample(sample, kind, sample_rate, None, layout)
        except BadSample as exc:
            problems.append(f"{sample['__key__']}: {exc}")

    try:
        with tarfile.open(path, mode="r|*") as tar:
            for info in tar:
                key, ext = split_member(info.name)
                if not info.isreg() or key is None:
                    continue
                if current is None or key != current["__key__"]:
                    finish(current)
                    current = {"__key__": key}
                if ext in wanted:
                    current[ext] = tar.extractfile(info).read()
    except (tarfile.TarError, OSError, EOFError) as exc:
        problems.append(f"tar is damaged after {len(keys)} samples: {exc}")
    finish(current)
    if len(keys) != entry.get("samples"):
        problems.append(f"{len(keys)} samples, index.json says {entry.get('samples')}")
    return {"path": entry["path"], "keys": keys, "problems": problems}


def check_shard(task: tuple[str, dict, str, int, dict | None]) -> dict:
    """Read one shard end to end; returns its sample keys and problems."""
    base, entry, kind, sample_rate, members = task
    path = os.path.join(base, entry["path"])
    if members is not None:
        if not os.path.isfile(path):
            return {"path": entry["path"], "keys": [], "problems": ["file is missing"]}
        return check_indexed_shard(path, entry, kind, sample_rate, Layout.from_json(members, "index.json"))
    problems: list[str] = []
    keys: list[str] = []
    if not os.path.isfile(path):
        return {"path": entry["path"], "keys": keys, "problems": ["file is missing"]}
    size = os.path.getsize(path)
    if "bytes" in entry and size != entry["bytes"]:
        problems.append(f"size {size} bytes, index.json says {entry['bytes']}")
    if "sha256" in entry and file_sha256(path) != entry["sha256"]:
        problems.append("sha256 differs from index.json (the file was changed after the build)")
    samples: dict[str, dict[str, bytes]] = defaultdict(dict)
    order: list[str] = []
    try:
        with tarfile.open(path, mode="r|") as tar:
            for info in tar:
                if not info.isreg():
                    problems.append(f"{info.name}: not a regular file")
                    continue
                key, _, ext = info.name.partition(".")
                if "/" in info.name or ext not in MEMBER_EXTENSIONS:
                    problems.append(f"{info.name}: not a member this format allows")
                    continue
                if key not in samples:
                    order.append(key)
                elif order[-1] != key:
                    problems.append(f"{info.name}: members of sample {key} are not adjacent")
                if ext in samples[key]:
                    problems.append(f"{info.name}: appears twice")
                samples[key][ext] = tar.extractfile(info).read()
    except (tarfile.TarError, OSError, EOFError) as exc:
        problems.append(f"tar is damaged after {len(order)} samples: {exc}")
    for key in order:
        problems.extend(check_sample(key, samples[key], kind, sample_rate))
    keys.extend(order)
    if len(order) != entry.get("samples"):
        problems.append(f"{len(order)} samples, index.json says {entry.get('samples')}")
    return {"path": entry["path"], "keys": keys, "problems": problems}


def verify(directory: str, workers: int = 1, progress: bool = True, out=None) -> int:
    """Print a report (to ``out``, default stdout); return the number of problems."""
    out = out or sys.stdout
    index = load_index(directory)
    base = os.path.dirname(os.path.abspath(os.path.join(directory, "index.json")))
    kind, sample_rate = index["kind"], index.get("settings", {}).get("sample_rate", 16000)
    members = index.get("members")
    tasks = [(base, entry, kind, sample_rate, members) for entry in index["shards"]]
    total_problems, total_samples, owner = 0, 0, {}
    bar = tqdm(total=len(tasks), unit="shard", file=sys.stderr, disable=not progress, desc="verify")
    for _, result in ordered_map(check_shard, tasks, workers=workers, chunksize=1):
        bar.update(1)
        problems = result["problems"]
        for key in result["keys"]:
            if key in owner and members is None:
                problems.append(f"{key}: sample key also in {owner[key]}")
            owner[key] = result["path"]
        total_samples += len(result["keys"])
        total_problems += len(problems)
        if problems:
            print(f"FAIL {result['path']}: {len(problems)} problem{'s' * (len(problems) > 1)}", file=out)
            for p in problems[:MAX_LISTED]:
                print(f"  {p}", file=out)
            if len(problems) > MAX_LISTED:
                print(f"  ... and {len(problems) - MAX_LISTED} more", file=out)
        else:
            print(f"ok   {result['path']}: {len(result['keys'])} samples", file=out)
    bar.close()
    listed = {os.path.normpath(os.path.join(base, e["path"])) for e in index["shards"]}
    for name in sorted(os.listdir(base)):
        if name.endswith(".tar") and os.path.normpath(os.path.join(base, name)) not in listed:
            print(f"FAIL {name}: a shard in the folder that index.json does not list", file=out)
            total_problems += 1
    if total_samples != index.get("total_samples"):
        print(f"FAIL total: {total_samples} samples read, index.json says {index.get('total_samples')}", file=out)
        total_problems += 1
    verdict = "OK" if total_problems == 0 else f"{total_problems} problem{'s' * (total_problems > 1)}"
    print(f"verify_shards: {directory}: {len(tasks)} shards, {total_samples} samples ({kind}): {verdict}", file=out)
    return total_problems


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG, description="Read every sample of a shard folder, check that it decodes as the training "
                               "pipeline decodes it, and that files, sizes, checksums and counts match index.json. "
                               "Prints a line per shard and exits non-zero on any problem.")
    p.add_argument("directory", metavar="DIR", help="a folder holding index.json (from build_shards or merge)")
    p.add_argument("--workers", type=int, default=1, help="shards checked in parallel processes (default: %(default)s)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        problems = verify(args.directory, workers=args.workers, progress=not args.quiet)
    except ShardSpecError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
