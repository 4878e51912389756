"""Byte-for-byte reproducible, atomically published WebDataset shards."""

from __future__ import annotations

import hashlib
import io
import os
import tarfile

BLOCK = 512


def member_bytes(members: dict[str, bytes]) -> int:
    """Bytes a sample adds to a tar: a header block per member plus its data padded to a block."""
    return sum(BLOCK + -(-len(data) // BLOCK) * BLOCK for data in members.values())


def file_sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def fsync_dir(path: str) -> None:
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


def atomic_write_text(path: str, text: str) -> None:
    """Readers see the old file or the new one, never half of one."""
    tmp = os.path.join(os.path.dirname(path) or ".", f".{os.path.basename(path)}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class ShardWriter:
    """Writes one shard under a hidden temporary name and renames it into place on :meth:`close`.

    Headers carry no time, owner or mode of the build machine, so equal samples make equal bytes.
    """

    def __init__(self, path: str):
        self.path = path
        self.tmp_path = os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.tmp")
        self._file = open(self.tmp_path, "wb")
        self._tar = tarfile.open(fileobj=self._file, mode="w", format=tarfile.USTAR_FORMAT)
        self.samples = 0
        self.bytes = 2 * BLOCK  # the end-of-archive marker

    def add(self, key: str, members: dict[str, bytes]) -> None:
        for ext in sorted(members):
            data = members[ext]
            info = tarfile.TarInfo(f"{key}.{ext}")
            info.size = len(data)
            info.mtime = 0
            info.mode = 0o644
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            self._tar.addfile(info, io.BytesIO(data))
        self.samples += 1
        self.bytes += member_bytes(members)

    def close(self) -> dict:
        """Publish the shard; returns its index entry without the path."""
        self._tar.close()
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        os.replace(self.tmp_path, self.path)
        fsync_dir(os.path.dirname(self.path) or ".")
        return {"samples": self.samples, "bytes": os.path.getsize(self.path), "sha256": file_sha256(self.path)}

    def abort(self) -> None:
        try:
            self._tar.close()
            self._file.close()
        finally:
            if os.path.exists(self.tmp_path):
                os.remove(self.tmp_path)
