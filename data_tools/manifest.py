"""Streaming manifest readers: rows come one at a time so a build never holds a whole manifest.

A row-level problem (a line that does not parse, undecodable bytes) is carried on the row for the
builder to reject; only problems with the file as a whole raise :class:`ManifestError`.
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass, field
from typing import Iterable, Iterator

from onepeace.data.formats import KIND_COLUMNS, KINDS, MANIFEST_COLUMNS

MANIFEST_SUFFIXES = (".tsv", ".csv", ".jsonl")


class ManifestError(Exception):
    """The manifest as a whole cannot be used; the message names the file and the problem."""


@dataclass
class Row:
    row: int  # 0-based number among data rows: the sample's key
    line: int  # 1-based physical line where the row starts, for people
    fields: dict[str, str] = field(default_factory=dict)
    problem: tuple[str, str] | None = None  # (reason code, detail) when the row itself is unusable


def _has_bad_utf8(text: str) -> bool:
    # Files are read with errors="surrogateescape": undecodable bytes become lone surrogates.
    return any("\udc80" <= ch <= "\udcff" for ch in text)


def _check_utf8(row: Row) -> Row:
    for name, value in row.fields.items():
        if _has_bad_utf8(value):
            row.problem = ("invalid_utf8", f"column {name!r} is not valid UTF-8")
            break
    return row


def _open_text(path: str, newline: str | None = None):
    return open(path, encoding="utf-8-sig", errors="surrogateescape", newline=newline)


# A quoted CSV field may hold line breaks, but no caption spans this many lines: a quote still open after
# them was never closed, and the lines after it are rows of their own.
MAX_LINES_PER_CSV_ROW = 32


def csv_records(lines: Iterable[str]) -> Iterator[tuple[int, list[str] | None, str | None]]:
    """``(first line, cells, None)`` per CSV record, or ``(first line, None, problem)`` for a malformed one.

    ``csv.reader`` alone lets an unterminated quote swallow every following row into one caption (up to
    the next stray quote or the end of the file). Here each record is parsed strictly on its own; one
    whose quote never closes (by the end of the file or within :data:`MAX_LINES_PER_CSV_ROW` lines), whose
    quoting is malformed, or that spans lines and ends with the wrong number of fields, is reported on its
    first line, and reading resumes on the line after that one, so the rows that follow are kept.
    """
    source = iter(lines)
    pushed_back: list[str] = []  # lines read ahead of a bad record, the next one last
    record: list[str] = []  # the physical lines of the record being parsed

    def feed() -> Iterator[str]:
        while len(record) < MAX_LINES_PER_CSV_ROW:
            line = pushed_back.pop() if pushed_back else next(source, None)
            if line is None:
                return
            record.append(line)
            yield line

    lineno = 0  # physical lines consumed
    width: int | None = None  # fields per record, from the header
    while True:
        record.clear()
        cells: list[str] | None = None
        problem = None
        try:
            cells = next(csv.reader(feed(), strict=True))
        except StopIteration:
            return
        except csv.Error as exc:
            if "unexpected end of data" in str(exc):
                problem = f"unterminated quote: the quoted field opened on line {lineno + 1} is never closed"
            elif len(record) > 1:
                problem = (f"unterminated quote: the quoted field opened on line {lineno + 1} runs into line "
                           f"{lineno + len(record)} and breaks there ({exc})")
            else:
                problem = f"malformed quoting: {exc}"
        if problem is None and len(record) > 1 and width is not None and len(cells) != width:
            problem = (f"a quoted field spans lines {lineno + 1}-{lineno + len(record)} and leaves {len(cells)} "
                       f"fields where the header has {width}: probably an unterminated quote")
        if problem is not None and len(record) > 1:
            pushed_back.extend(reversed(record[1:]))  # the lines after the bad one are rows of their own
            del record[1:]
        start = lineno + 1
        lineno += len(record)
        if problem is None and width is None:
            width = len(cells)
        yield start, (None if problem else cells), problem


class Manifest:
    """A manifest file (or a plain text file) that can be iterated any number of times."""

    def __init__(self, path: str, *, text_file: bool = False, kind: str | None = None):
        self.path = os.path.abspath(path)
        self.text_file = text_file
        if os.path.isdir(self.path):
            raise ManifestError(f"{path} is a directory; pass a manifest file (.tsv, .csv or .jsonl)")
        if not os.path.isfile(self.path):
            raise ManifestError(f"{path}: no such file")
        if not os.access(self.path, os.R_OK):
            raise ManifestError(f"{path}: not readable (check its permissions)")
        if text_file:
            self.format = "text"
        else:
            suffix = os.path.splitext(self.path)[1].lower()
            if suffix not in MANIFEST_SUFFIXES:
                raise ManifestError(
                    f"{path}: unknown manifest type {suffix or '(no suffix)'!r}; use .tsv, .csv or .jsonl, "
                    "or --text-file for one text sample per line")
            self.format = suffix[1:]
        self.columns, self.num_rows = self._scan()
        if self.num_rows == 0:
            raise ManifestError(f"{path}: no data rows")
        self.kind = self._resolve_kind(kind)

    # -- file-level checks -------------------------------------------------------------------------

    def _header(self, cells: list[str]) -> tuple[str, ...]:
        names = tuple(c.strip().lower() for c in cells)
        if not any(names):
            raise ManifestError(f"{self.path}:1: empty header; expected column names among {', '.join(MANIFEST_COLUMNS)}")
        unknown = [n for n in names if n not in MANIFEST_COLUMNS]
        if unknown:
            raise ManifestError(
                f"{self.path}:1: unknown column{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}; "
                f"known columns: {', '.join(MANIFEST_COLUMNS)}")
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ManifestError(f"{self.path}:1: column {dupes[0]!r} appears more than once in the header")
        return names

    def _scan(self) -> tuple[tuple[str, ...], int]:
        """One cheap pass: validate the header (or every JSON object's keys) and count rows."""
        if self.format == "text":
            count = sum(1 for _ in self._text_rows())
            return ("text",), count
        if self.format == "jsonl":
            seen: set[str] = set()
            count = 0
            for row in self._jsonl_rows():
                count += 1
                unknown = [k for k in row.fields if k not in MANIFEST_COLUMNS]
                if unknown:
                    raise ManifestError(
                        f"{self.path}:{row.line}: unknown key{'s' if len(unknown) > 1 else ''} "
                        f"{', '.join(map(repr, unknown))}; known keys: {', '.join(MANIFEST_COLUMNS)}")
                seen.update(row.fields)
            return tuple(c for c in MANIFEST_COLUMNS if c in seen), count
        count = sum(1 for _ in self.rows())
        return self.columns_from_header, count

    def _resolve_kind(self, kind: str | None) -> str:
        media = {c for c in self.columns if c in ("image", "audio", "text")}
        if kind is not None:
            if kind not in KINDS:
                raise ManifestError(f"unknown kind {kind!r}; expected one of {', '.join(KINDS)}")
            missing = [c for c in KIND_COLUMNS[kind] if c not in self.columns]
            if missing:
                raise ManifestError(
                    f"{self.path}: kind {kind} needs column{'s' if len(missing) > 1 else ''} "
                    f"{', '.join(missing)}, but the manifest has only {', '.join(self.columns) or 'none'}")
            return kind
        for candidate in KINDS:
            if set(KIND_COLUMNS[candidate]) == media:
                return candidate
        raise ManifestError(
            f"{self.path}: cannot tell the kind from columns {', '.join(sorted(media)) or '(none)'}; "
            f"pass --kind (one of {', '.join(KINDS)})")

    # -- rows ----------------------------------------------------------------------------------------

    def rows(self) -> Iterator[Row]:
        if self.format == "text":
            return self._text_rows()
        if self.format == "jsonl":
            return self._jsonl_rows()
        return self._delimited_rows("\t" if self.format == "tsv" else ",")

    def _text_rows(self) -> Iterator[Row]:
        with _open_text(self.path, newline="\n") as f:
            for i, line in enumerate(f):
                yield _check_utf8(Row(row=i, line=i + 1, fields={"text": line.rstrip("\r\n")}))

    def _jsonl_rows(self) -> Iterator[Row]:
        n = 0
        with _open_text(self.path) as f:
            for lineno, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                row = Row(row=n, line=lineno)
                n += 1
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as exc:
                    row.problem = ("bad_row", f"not valid JSON: {exc.msg} at column {exc.colno}")
                    yield row
                    continue
                if not isinstance(obj, dict):
                    row.problem = ("bad_row", f"expected a JSON object, got {type(obj).__name__}")
                    yield row
                    continue
                for key, value in obj.items():
                    if value is None:
                        continue
                    if isinstance(value, (int, float)) and not isinstance(value, bool) and key in ("id", "label"):
                        value = str(value)
                    if not isinstance(value, str):
                        row.problem = ("bad_row", f"key {key!r} must be a string, got {type(value).__name__}")
                        break
                    row.fields[key] = value
                yield row if row.problem else _check_utf8(row)

    def _delimited_rows(self, delimiter: str) -> Iterator[Row]:
        with _open_text(self.path, newline="") as f:
            if delimiter == "\t":
                # Plain TSV: no quoting, a tab never occurs inside a field.
                records = ((i, line.rstrip("\r\n").split("\t"), None) for i, line in enumerate(f, start=1))
            else:
                records = csv_records(f)
            header = None
            n = 0
            for start, cells, problem in records:
                if header is None:
                    if problem is not None:
                        raise ManifestError(f"{self.path}:{start}: header line: {problem}")
                    header = self._header(cells)
                    self.columns_from_header = header
                    continue
                if problem is None and (not cells or (len(cells) == 1 and not cells[0].strip())):
                    continue
                row = Row(row=n, line=start)
                n += 1
                if problem is not None:
                    row.problem = ("bad_row", problem)
                    yield row
                    continue
                row.fields = dict(zip(header, cells))
                _check_utf8(row)
                if len(cells) > len(header):
                    row.problem = ("bad_row", f"{len(cells)} fields but the header has {len(header)}")
                yield row
            if header is None:
                raise ManifestError(f"{self.path}: empty file; expected a header line with column names")

    @property
    def source(self) -> str:
        return self.path
