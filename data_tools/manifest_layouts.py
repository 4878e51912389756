"""Manifests in the layouts public datasets ship, read into the builder's rows (one module per concern:
the plain tsv/csv/jsonl reader stays in ``manifest``).

    wavcaps      WavCaps JSON: {"data": [{"id", "caption", ...}, ...]}; audio found with --audio-pattern
                 (default "{stem}.flac": the id without its extension)
    clotho       Clotho CSV: file_name, caption_1 .. caption_5 (all five kept)
    audiocaps    AudioCaps CSV: audiocap_id, youtube_id, start_time, caption; audio found with
                 --audio-pattern (fields {audiocap_id} {youtube_id} {start_time}, glob wildcards allowed)
    onepeace     the official ONE-PEACE TSVs: image_id, image, caption (image a path or base64) or
                 uniq_id, audio, text, duration
    columns      any tsv/csv/jsonl with --columns aliases (image=filepath,text=title); other columns ignored

A row with several captions carries them all (``Row.captions``); the builder writes them into the
sample's KEY.txt, one per line (docs/data_format.md).
"""

from __future__ import annotations

import base64
import binascii
import csv
import glob
import json
import os
import string
from dataclasses import dataclass, field
from typing import Iterator

from data_tools.manifest import ManifestError, Row, _check_utf8, _open_text
from onepeace.data.formats import KIND_COLUMNS, KINDS, MANIFEST_COLUMNS

LAYOUTS = ("wavcaps", "clotho", "audiocaps", "onepeace", "columns")
CLOTHO_CAPTIONS = tuple(f"caption_{i}" for i in range(1, 6))
AUDIOCAPS_HEADER = ("audiocap_id", "youtube_id", "start_time", "caption")
ONEPEACE_HEADERS = {("image_id", "image", "caption"): {"image_id": "id", "image": "image", "caption": "text"},
                    ("uniq_id", "audio", "text", "duration"): {"uniq_id": "id", "audio": "audio", "text": "text"}}


@dataclass
class LayoutRow(Row):
    captions: list[str] | None = None  # several captions of one sample (fields["text"] holds the first)
    inline: dict[str, bytes] = field(default_factory=dict)  # media carried in the manifest itself (base64)


def parse_aliases(text: str) -> dict[str, str]:
    """'image=filepath,text=title' -> {'filepath': 'image', 'title': 'text'} (manifest column -> ours)."""
    out: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        ours, sep, theirs = part.partition("=")
        ours, theirs = ours.strip().lower(), theirs.strip()
        if not sep or not theirs or ours not in MANIFEST_COLUMNS:
            raise ManifestError(f"--columns {text!r}: expected OURS=THEIRS pairs with OURS among "
                                f"{', '.join(MANIFEST_COLUMNS)}, e.g. image=filepath,text=title")
        out[theirs] = ours
    return out


def _first_line(path: str) -> str:
    with _open_text(path) as f:
        return f.readline()


def detect_layout(path: str) -> str | None:
    """The layout a manifest's suffix and header show, or None for our plain tsv/csv/jsonl."""
    suffix = os.path.splitext(path)[1].lower()
    if suffix == ".json":
        return "wavcaps"
    if suffix not in (".csv", ".tsv"):
        return None
    header = tuple(c.strip().lower() for c in next(csv.reader([_first_line(path)],
                                                              delimiter="\t" if suffix == ".tsv" else ",")) or [])
    if set(CLOTHO_CAPTIONS) <= set(header) and "file_name" in header:
        return "clotho"
    if set(AUDIOCAPS_HEADER) <= set(header):
        return "audiocaps"
    if header in ONEPEACE_HEADERS:
        return "onepeace"
    return None


def resolve_pattern(root: str, pattern: str, values: dict[str, str]) -> str | None:
    """The media file a pattern names for one row: format fields filled in, then glob wildcards matched
    under ``root`` (the first match in sorted order). None when nothing matches."""
    try:
        relative = pattern.format(**values)
    except (KeyError, IndexError) as exc:
        raise ManifestError(f"--audio-pattern {pattern!r}: unknown field {exc}; this layout has "
                            f"{', '.join('{' + k + '}' for k in values)}") from None
    if not glob.has_magic(relative):
        return relative
    matches = sorted(glob.glob(os.path.join(glob.escape(root), relative)))
    return os.path.relpath(matches[0], root) if matches else None


class LayoutManifest:
    """A manifest in one of :data:`LAYOUTS`, with the interface the builder uses (see ``Manifest``)."""

    def __init__(self, path: str, layout: str, *, root: str | None = None, kind: str | None = None,
                 audio_pattern: str | None = None, aliases: dict[str, str] | None = None):
        self.path = os.path.abspath(path)
        if not os.path.isfile(self.path):
            raise ManifestError(f"{path}: no such file")
        if layout not in LAYOUTS:
            raise ManifestError(f"unknown layout {layout!r}; expected one of {', '.join(LAYOUTS)}")
        self.layout, self.format = layout, layout
        self.root = os.path.abspath(root or os.path.dirname(self.path))
        self.audio_pattern = audio_pattern
        self.aliases = aliases or {}
        if layout == "columns" and not self.aliases:
            raise ManifestError("layout columns needs --columns OURS=THEIRS,...")
        self.text_file = False
        self.columns = self._columns()
        self.num_rows = sum(1 for _ in self.rows())
        if self.num_rows == 0:
            raise ManifestError(f"{path}: no data rows")
        self.kind = kind or next((k for k in KINDS if set(KIND_COLUMNS[k]) == {c for c in self.columns
                                                                               if c in ("image", "audio", "text")}), None)
        if self.kind is None:
            raise ManifestError(f"{path}: cannot tell the kind from columns {', '.join(self.columns)}; pass --kind")
        missing = [c for c in KIND_COLUMNS[self.kind] if c not in self.columns]
        if missing:
            raise ManifestError(f"{path}: kind {self.kind} needs {', '.join(missing)}, which layout {layout} lacks")

    @property
    def source(self) -> str:
        return self.path

    def _columns(self) -> tuple[str, ...]:
        if self.layout in ("wavcaps", "clotho", "audiocaps"):
            return ("id", "audio", "text")
        if self.layout == "onepeace":
            header = tuple(c.strip().lower() for c in _first_line(self.path).rstrip("\r\n").split("\t"))
            if header not in ONEPEACE_HEADERS:
                raise ManifestError(f"{self.path}:1: an official ONE-PEACE TSV starts with the header "
                                    "'image_id, image, caption' or 'uniq_id, audio, text, duration' (tab-separated)")
            return tuple(ONEPEACE_HEADERS[header].values())
        return tuple(c for c in MANIFEST_COLUMNS if c in set(self.aliases.values()))

    def rows(self) -> Iterator[LayoutRow]:
        return {"wavcaps": self._wavcaps, "clotho": self._clotho, "audiocaps": self._audiocaps,
                "onepeace": self._onepeace, "columns": self._aliased}[self.layout]()

    # -- one reader per layout -------------------------------------------------------------------------

    def _wavcaps(self) -> Iterator[LayoutRow]:
        try:
            with _open_text(self.path) as f:
                doc = json.load(f)
        except json.JSONDecodeError as exc:
            raise ManifestError(f"{self.path}:{exc.lineno}: not valid JSON ({exc.msg})") from None
        entries = doc.get("data") if isinstance(doc, dict) else None
        if not isinstance(entries, list):
            raise ManifestError(f"{self.path}: a WavCaps manifest is an object with a 'data' list")
        pattern = self.audio_pattern or "{stem}.flac"
        for n, entry in enumerate(entries):
            row = LayoutRow(row=n, line=n + 1)  # line: the entry's number in 'data', 1-based
            if not isinstance(entry, dict) or not isinstance(entry.get("id"), (str, int)):
                row.problem = ("bad_row", f"data[{n}] is not an object with an 'id'")
                yield row
                continue
            sample_id = str(entry["id"])
            values = {k: str(v) for k, v in entry.items() if isinstance(v, (str, int, float))}
            values.update(id=sample_id, stem=os.path.splitext(sample_id)[0])
            captions = entry.get("caption")
            captions = [captions] if isinstance(captions, str) else captions
            yield self._finish(row, sample_id, pattern, values, captions)

    def _clotho(self) -> Iterator[LayoutRow]:
        pattern = self.audio_pattern or "{file_name}"
        for row, cells in self._csv_dicts(","):
            if row.problem is None:
                name = cells.get("file_name", "")
                row = self._finish(row, name, pattern, {**cells, "stem": os.path.splitext(name)[0]},
                                   [cells.get(c, "") for c in CLOTHO_CAPTIONS])
            yield row

    def _audiocaps(self) -> Iterator[LayoutRow]:
        if not self.audio_pattern:
            raise ManifestError("layout audiocaps: pass --audio-pattern, e.g. 'audio/{youtube_id}_{start_time}.wav' "
                                "or 'Y{youtube_id}*.wav' (fields: audiocap_id, youtube_id, start_time)")
        for row, cells in self._csv_dicts(","):
            if row.problem is None:
                row = self._finish(row, cells.get("audiocap_id", ""), self.audio_pattern, cells, [cells.get("caption")])
            yield row

    def _onepeace(self) -> Iterator[LayoutRow]:
        with _open_text(self.path, newline="\n") as f:
            header = f.readline().rstrip("\r\n").split("\t")
            names = ONEPEACE_HEADERS[tuple(c.strip().lower() for c in header)]
            n = 0
            for lineno, line in enumerate(f, start=2):
                if not line.strip():
                    continue
                cells = dict(zip(header, line.rstrip("\r\n").split("\t", len(header) - 1)))
                row = LayoutRow(row=n, line=lineno)
                n += 1
                row.fields = {ours: cells.get(theirs, "") for theirs, ours in names.items()}
                media = "image" if "image" in row.fields else "audio"
                value = row.fields[media].strip()
                if value and not os.path.exists(os.path.join(self.root, value)):
                    data = _base64(value)
                    if data is not None:
                        row.inline[media] = data
                yield _check_utf8(row)

    def _aliased(self) -> Iterator[LayoutRow]:
        suffix = os.path.splitext(self.path)[1].lower()
        if suffix == ".jsonl":
            with _open_text(self.path) as f:
                n = 0
                for lineno, line in enumerate(f, start=1):
                    if not line.strip():
                        continue
                    row = LayoutRow(row=n, line=lineno)
                    n += 1
                    try:
                        obj = json.loads(line)
                    except json.JSONDecodeError as exc:
                        row.problem = ("bad_row", f"not valid JSON: {exc.msg}")
                        yield row
                        continue
                    if not isinstance(obj, dict):
                        row.problem = ("bad_row", "expected a JSON object")
                        yield row
                        continue
                    yield self._renamed(row, {k: v for k, v in obj.items()})
            return
        for row, cells in self._csv_dicts("\t" if suffix == ".tsv" else ","):
            yield row if row.problem else self._renamed(row, cells)

    # -- helpers -----------------------------------------------------------------------------------------

    def _renamed(self, row: LayoutRow, cells: dict) -> LayoutRow:
        for theirs, ours in self.aliases.items():
            value = cells.get(theirs)
            if isinstance(value, list) and ours == "text":
                row.captions = [str(v) for v in value]
                value = row.captions[0] if row.captions else ""
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                value = str(value)
            if value is not None and not isinstance(value, str):
                row.problem = ("bad_row", f"column {theirs!r} must be a string, got {type(value).__name__}")
                return row
            if value is not None:
                row.fields[ours] = value
        return _check_utf8(row)

    def _csv_dicts(self, delimiter: str) -> Iterator[tuple[LayoutRow, dict[str, str]]]:
        with _open_text(self.path, newline="") as f:
            reader = csv.reader(f, delimiter=delimiter)
            header, n, lineno = None, 0, 0
            for cells in reader:
                start, lineno = lineno + 1, reader.line_num
                if header is None:
                    header = [c.strip() for c in cells]
                    continue
                if not cells or (len(cells) == 1 and not cells[0].strip()):
                    continue
                row = LayoutRow(row=n, line=start)
                n += 1
                if len(cells) > len(header):
                    row.problem = ("bad_row", f"{len(cells)} fields but the header has {len(header)}")
                yield row, dict(zip(header, cells))
            if header is None:
                raise ManifestError(f"{self.path}: empty file; expected a header line")

    def _finish(self, row: LayoutRow, sample_id: str, pattern: str, values: dict[str, str],
                captions: list | None) -> LayoutRow:
        row.fields["id"] = sample_id
        if not isinstance(captions, list) or not all(isinstance(c, str) for c in captions):
            row.problem = ("bad_row", "captions must be strings")
            return row
        captions = [c for c in captions if c.strip()]
        row.captions = captions
        row.fields["text"] = captions[0] if captions else ""
        audio = resolve_pattern(self.root, pattern, values)
        row.fields["audio"] = audio if audio is not None else pattern.format(**values)
        return _check_utf8(row)


def _base64(value: str) -> bytes | None:
    if len(value) < 16 or any(c not in string.ascii_letters + string.digits + "+/=_-\n" for c in value):
        return None
    try:
        return base64.b64decode(value.replace("-", "+").replace("_", "/"), validate=True)
    except (binascii.Error, ValueError):
        return None
