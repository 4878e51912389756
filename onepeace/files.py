"""Atomic file writes: a reader sees the old file or the new one, never half of one.

Everything that publishes a file others read while it may be rewritten (checkpoint markers, ``latest``,
exports, recipes, shard indexes, shards, evaluation results) goes through :class:`AtomicFile`: the
bytes go to a hidden temporary file next to the target, are flushed to disk, and are renamed into
place (``os.replace`` is atomic on POSIX). A failure removes the temporary file and leaves the target
untouched.
"""

from __future__ import annotations

import os


def fsync_dir(path: str) -> None:
    """Persist a rename: the directory entry itself must reach the disk."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class AtomicFile:
    """A file opened for writing under a temporary name; :meth:`commit` publishes it, :meth:`abort`
    discards it. As a context manager it commits on success and aborts on an exception."""

    def __init__(self, path: str, mode: str = "w"):
        if mode not in ("w", "wb"):
            raise ValueError(f"AtomicFile writes whole files: mode must be 'w' or 'wb', got {mode!r}")
        self.path = path
        self.tmp_path = os.path.join(os.path.dirname(path) or ".", f".{os.path.basename(path)}.tmp")
        self.file = open(self.tmp_path, mode, **({"encoding": "utf-8"} if mode == "w" else {}))

    def write(self, data) -> int:
        return self.file.write(data)

    def commit(self) -> None:
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()
        os.replace(self.tmp_path, self.path)
        fsync_dir(os.path.dirname(self.path) or ".")

    def abort(self) -> None:
        try:
            self.file.close()
        finally:
            if os.path.exists(self.tmp_path):
                os.remove(self.tmp_path)

    def __enter__(self):
        return self.file

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.abort()


def atomic_write(path: str, data: str | bytes) -> None:
    """Replace ``path`` with ``data`` (text as UTF-8) atomically."""
    with AtomicFile(path, "wb" if isinstance(data, bytes) else "w") as f:
        f.write(data)
