"""Byte-for-byte reproducible, atomically published WebDataset shards."""

from __future__ import annotations

import hashlib
import io
import os
import tarfile

from onepeace.files import AtomicFile

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


class ShardWriter:
    """Writes one shard under a hidden temporary name and renames it into place on :meth:`close`.

    Headers carry no time, owner or mode of the build machine, so equal samples make equal bytes.
    """

    def __init__(self, path: str):
        self.path = path
        self._out = AtomicFile(path, "wb")  # a hidden .NAME.tmp until close() renames it into place
        self._tar = tarfile.open(fileobj=self._out.file, mode="w", format=tarfile.USTAR_FORMAT)
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
        self._out.commit()
        return {"samples": self.samples, "bytes": os.path.getsize(self.path), "sha256": file_sha256(self.path)}

    def abort(self) -> None:
        try:
            self._tar.close()
        finally:
            self._out.abort()
