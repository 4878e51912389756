"""One manifest row to one shard sample (members + metadata), in a builder worker process."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

from data_tools.manifest import Row
from data_tools.media import Reject, clean_text, process_audio, process_image, read_file
from onepeace.data.formats import KIND_COLUMNS


@dataclass(frozen=True)
class BuildSettings:
    """Everything that changes the bytes written; recorded in index.json and checked on --resume."""

    image_size: int = 384
    max_audio_seconds: float = 30.0
    min_audio_seconds: float = 0.1
    sample_rate: int = 16000
    samples_per_shard: int = 1000
    max_shard_bytes: int = 1_000_000_000
    jpeg_quality: int = 90


@dataclass(frozen=True)
class SampleContext:
    kind: str
    root: str
    source_name: str  # manifest file name recorded in KEY.json (not its path: moving a corpus keeps bytes)
    has_id: bool
    settings: BuildSettings


def sample_id(row: Row, ctx: SampleContext, key: str) -> str:
    return row.fields.get("id", "") if ctx.has_id else key


def caption_text(row: Row) -> str:
    """KEY.txt: the cleaned caption, or several cleaned captions one per line (a cleaned caption never
    holds a newline); empty ones among several are dropped."""
    captions = getattr(row, "captions", None)
    if not captions:
        return clean_text(row.fields["text"])
    cleaned = []
    for caption in captions:
        try:
            cleaned.append(clean_text(caption))
        except Reject as r:
            if r.reason != "empty_text":
                raise
    if not cleaned:
        raise Reject("empty_text", f"all {len(captions)} captions are empty")
    return "\n".join(cleaned)


def make_sample(row: Row, key: str, ctx: SampleContext) -> tuple[dict[str, bytes], dict]:
    """Members ({ext: bytes}) and the KEY.json metadata; raises :class:`Reject`."""
    if row.problem:
        raise Reject(*row.problem)
    needed = KIND_COLUMNS[ctx.kind] + (("id",) if ctx.has_id else ())
    for column in needed:
        if column == "text":
            if row.fields.get(column) is None:
                raise Reject("missing_column", f"row has no value for column {column!r}")
        elif not (row.fields.get(column) or "").strip():
            raise Reject("missing_column", f"row has no value for column {column!r}")
    s = ctx.settings
    members: dict[str, bytes] = {}
    meta: dict = {"id": sample_id(row, ctx, key), "source": f"{ctx.source_name}:{row.line}"}
    if "text" in KIND_COLUMNS[ctx.kind]:
        members["txt"] = caption_text(row).encode("utf-8")
    inline = getattr(row, "inline", {})  # media carried in the manifest itself (base64 in ONE-PEACE TSVs)
    if "image" in KIND_COLUMNS[ctx.kind]:
        data = inline.get("image") or read_file(os.path.join(ctx.root, row.fields["image"].strip()))
        members["jpg"], meta["width"], meta["height"] = process_image(data, s.image_size, s.jpeg_quality)
    if "audio" in KIND_COLUMNS[ctx.kind]:
        data = inline.get("audio") or read_file(os.path.join(ctx.root, row.fields["audio"].strip()))
        members["flac"], meta["seconds"] = process_audio(
            data, s.sample_rate, s.max_audio_seconds, s.min_audio_seconds)
    if row.fields.get("label"):
        meta["label"] = clean_text(row.fields["label"])
    members["json"] = json.dumps(meta, ensure_ascii=False, sort_keys=True).encode("utf-8")
    return members, meta


_CTX: SampleContext | None = None


def init_worker(ctx: SampleContext) -> None:
    global _CTX
    _CTX = ctx


def process_row(task: tuple[Row, str]) -> tuple:
    """Worker entry: ("ok", members) or ("reject", reason, detail)."""
    row, key = task
    try:
        members, _ = make_sample(row, key, _CTX)
        return ("ok", members)
    except Reject as r:
        return ("reject", r.reason, r.detail)
