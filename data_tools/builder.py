"""The shard build loop: rows in manifest order, media in worker processes, shards written in order.

Resumability: after each shard is renamed into place, a line is appended to a journal
(``.build-journal.jsonl``) with the shard's entry, the rejects seen since the previous shard and the
next row to read. A killed build restarts from the last journal line; the finished index.json and
rejects.jsonl are written from the journal at the end, and the journal is removed.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import os
import sys
import time
from collections import Counter
from typing import Callable, Iterator

from tqdm import tqdm

from data_tools.indexes import make_index, write_index, write_rejects
from data_tools.manifest import Manifest, Row
from data_tools.parallel import ordered_map
from data_tools.samples import BuildSettings, SampleContext, init_worker, process_row
from data_tools.tarwriter import ShardWriter, file_sha256, member_bytes
from onepeace.data.formats import sample_key, shard_name
from onepeace.data.shards import load_index
from onepeace.files import atomic_write

JOURNAL = ".build-journal.jsonl"


class BuildError(RuntimeError):
    """The build cannot go on; the message says why and what to do."""


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


class Journal:
    def __init__(self, path: str):
        self.path = path

    def read(self) -> tuple[dict | None, list[dict]]:
        if not os.path.exists(self.path):
            return None, []
        header, records = None, []
        with open(self.path, encoding="utf-8") as f:
            for i, line in enumerate(f):
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError:
                    break  # a line cut short by the kill: everything before it is good
                if i == 0:
                    header = obj
                else:
                    records.append(obj)
        return header, records

    def rewrite(self, header: dict, records: list[dict]) -> None:
        atomic_write(self.path, "".join(json.dumps(obj, ensure_ascii=False) + "\n" for obj in [header, *records]))

    def append(self, record: dict) -> None:
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())


@dataclasses.dataclass
class BuildPlan:
    manifest: Manifest
    out_dir: str
    name: str
    settings: BuildSettings
    root: str
    workers: int = 1
    num_splits: int = 1
    split_index: int = 0

    def header(self) -> dict:
        return {
            "name": self.name, "kind": self.manifest.kind, "settings": dataclasses.asdict(self.settings),
            "source": self.source(), "manifest_sha256": file_sha256(self.manifest.path),
        }

    def source(self) -> dict:
        return {"manifest": self.manifest.path, "format": self.manifest.format, "root": self.root,
                "num_splits": self.num_splits, "split_index": self.split_index}

    def mine(self, row: int) -> bool:
        return row % self.num_splits == self.split_index

    def rows_in_split(self, below: int | None = None) -> int:
        """How many of this split's rows have a number below ``below`` (default: all of them)."""
        n, k, i = self.manifest.num_rows if below is None else below, self.num_splits, self.split_index
        return (n - i + k - 1) // k if n > i else 0


def _our_files(out_dir: str, name: str) -> list[str]:
    return [*glob.glob(os.path.join(out_dir, f"{glob.escape(name)}-*.tar")),
            *glob.glob(os.path.join(out_dir, f".{glob.escape(name)}-*.tar.tmp")),
            *(os.path.join(out_dir, f) for f in ("index.json", "rejects.jsonl", JOURNAL) if os.path.exists(os.path.join(out_dir, f)))]


def _prepare(plan: BuildPlan, journal: Journal, resume: bool, overwrite: bool) -> list[dict] | None:
    """The journal records to continue from, or None when a finished build is simply kept."""
    header = plan.header()
    done = os.path.exists(os.path.join(plan.out_dir, "index.json"))
    old_header, records = journal.read()
    if (done or old_header is not None) and not (resume or overwrite):
        raise BuildError(f"{plan.out_dir} already holds a build{' in progress' if not done else ''} "
                         f"({'index.json' if done else JOURNAL}); pass --resume to continue it or --overwrite to start over")
    if overwrite:
        for path in _our_files(plan.out_dir, plan.name):
            os.remove(path)
        old_header, records = None, []
    elif resume and done and old_header is None:
        return None
    if old_header is not None and old_header != header:
        changed = sorted(k for k in header if header.get(k) != old_header.get(k))
        raise BuildError(f"cannot --resume in {plan.out_dir}: {', '.join(changed)} changed since the build started; "
                         "use the same manifest and flags, or --overwrite to start over")
    # Keep the journal prefix whose shards are still intact on disk.
    good = []
    for record in records:
        shard = record.get("shard")
        if shard is not None:
            path = os.path.join(plan.out_dir, shard["path"])
            if not os.path.exists(path) or os.path.getsize(path) != shard["bytes"]:
                break
        good.append(record)
    for tmp in glob.glob(os.path.join(plan.out_dir, f".{glob.escape(plan.name)}-*.tar.tmp")):
        os.remove(tmp)
    journal.rewrite(header, good)
    return good


def _rows_to_process(plan: BuildPlan, ctx: SampleContext, start_row: int) -> Iterator[tuple[Row, str]]:
    """Rows of this split from ``start_row`` on; marks duplicate ids (the earliest row of an id wins,
    whichever split or earlier run it was in, so splits and resumes agree with one plain build)."""
    seen: set[str] = set()
    for row in plan.manifest.rows():
        todo = plan.mine(row.row) and row.row >= start_row
        if ctx.has_id and row.problem is None:
            rid = row.fields.get("id", "")
            if rid:
                if rid in seen:
                    if todo:
                        row.problem = ("duplicate_id", f"id {rid!r} was used by an earlier row")
                else:
                    seen.add(rid)
        if todo:
            yield row, sample_key(row.row)


def build(plan: BuildPlan, *, resume: bool = False, overwrite: bool = False, progress: bool = True,
          log: Callable[[str], None] = _stderr) -> dict:
    """Build (or finish) the shards of ``plan``; returns the index written to ``out_dir/index.json``."""
    os.makedirs(plan.out_dir, exist_ok=True)
    journal = Journal(os.path.join(plan.out_dir, JOURNAL))
    records = _prepare(plan, journal, resume, overwrite)
    if records is None:
        log(f"build_shards: {plan.out_dir} is already complete; nothing to do")
        return load_index(plan.out_dir)
    manifest = plan.manifest
    ctx = SampleContext(kind=manifest.kind, root=plan.root, source_name=os.path.basename(manifest.path),
                        has_id="id" in manifest.columns, settings=plan.settings)
    start_row = records[-1]["next_row"] if records else 0
    shard_no = sum(1 for r in records if r.get("shard"))
    elapsed_before = records[-1]["elapsed"] if records else 0.0
    if records:
        log(f"build_shards: resuming {plan.out_dir} at row {start_row} after {shard_no} finished shards")
    done_rows = plan.rows_in_split(below=min(start_row, manifest.num_rows))
    t0 = time.monotonic()
    writer: ShardWriter | None = None
    pending: list[dict] = []
    s = plan.settings

    def close(next_row: int) -> None:
        nonlocal writer, pending, shard_no
        record: dict = {"shard": None, "next_row": next_row, "rejects": pending,
                        "elapsed": elapsed_before + time.monotonic() - t0}
        if writer is not None:
            record["shard"] = {"path": os.path.basename(writer.path), **writer.close()}
            shard_no += 1
        journal.append(record)
        records.append(record)
        writer, pending = None, []

    bar = tqdm(total=plan.rows_in_split(), initial=done_rows, unit="sample", file=sys.stderr,
               disable=not progress, desc=f"build {plan.name}", dynamic_ncols=True, smoothing=0.1)
    rejected_now = 0
    try:
        for (row, key), result in ordered_map(process_row, _rows_to_process(plan, ctx, start_row),
                                              workers=plan.workers, initializer=init_worker, initargs=(ctx,)):
            bar.update(1)
            if result[0] == "reject":
                pending.append({"source": f"{ctx.source_name}:{row.line}", "id": row.fields.get("id", key)
                                if ctx.has_id else key, "reason": result[1], "detail": result[2]})
                rejected_now += 1
                bar.set_postfix(rejected=rejected_now, refresh=False)
                continue
            members = result[1]
            size = member_bytes(members)
            if writer is not None and writer.bytes + size > s.max_shard_bytes:
                close(next_row=row.row)
            if writer is None:
                writer = ShardWriter(os.path.join(plan.out_dir, shard_name(plan.name, shard_no)))
            writer.add(key, members)
            if writer.samples >= s.samples_per_shard:
                close(next_row=row.row + 1)
        if writer is not None or pending or not records:
            close(next_row=manifest.num_rows)
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    finally:
        bar.close()
    return _finish(plan, journal, records, log)


def _finish(plan: BuildPlan, journal: Journal, records: list[dict], log: Callable[[str], None]) -> dict:
    shards = [r["shard"] for r in records if r.get("shard")]
    rejects = [rej for r in records for rej in r["rejects"]]
    reasons = Counter(r["reason"] for r in rejects)
    seconds = records[-1]["elapsed"] if records else 0.0
    rejects_path = write_rejects(plan.out_dir, rejects)
    total = sum(s["samples"] for s in shards)
    if total == 0:
        os.remove(journal.path)
        raise BuildError(f"{plan.manifest.path}: no usable rows: all {len(rejects)} rows of this split were rejected "
                         f"({_reason_list(reasons)}); see {rejects_path}")
    index = make_index(kind=plan.manifest.kind, name=plan.name, shards=shards,
                       settings=dataclasses.asdict(plan.settings), source=plan.source(),
                       rejected=dict(reasons), build_seconds=seconds)
    write_index(plan.out_dir, index)
    os.remove(journal.path)
    mb = index["total_bytes"] / 1e6
    log(f"build_shards: wrote {total} samples in {len(shards)} shard{'s' * (len(shards) != 1)} ({mb:.1f} MB) "
        f"to {plan.out_dir} in {seconds:.1f} s ({total / max(seconds, 1e-9):.0f} samples/s)")
    if rejects:
        log(f"build_shards: rejected {len(rejects)} sample{'s' * (len(rejects) != 1)}: {_reason_list(reasons)} "
            f"(details in {rejects_path})")
    else:
        log("build_shards: rejected 0 samples")
    return index


def _reason_list(reasons: Counter) -> str:
    return ", ".join(f"{reason} {n}" for reason, n in reasons.most_common()) or "none"
