"""Deterministic WebDataset tar shards, written so a shard only exists under its final name once complete.

Tar members carry no timestamps, owners or permissions that vary between runs, so the same samples
give byte-identical shards. A shard is spooled to memory (or disk past SPOOL_BYTES), hashed, and then
written whole (storage.write_file_atomic: one S3 PUT or multipart upload, or a local rename). If a shard
with the same name and sha256 is already there (a re-run after an interruption), it is kept as is.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
import tempfile
from dataclasses import dataclass, field

from data import storage

SPOOL_BYTES = 256 * 1024 * 1024


def shard_name(index: int) -> str:
    return f"shard-{index:06d}.tar"


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 0
    info.mode = 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    tar.addfile(info, io.BytesIO(data))


@dataclass
class ShardRecord:
    name: str
    num_samples: int
    sha256: str
    bytes: int
    reused: bool = False  # already present from an earlier, interrupted run

    def to_json(self) -> dict:
        return {"name": self.name, "num_samples": self.num_samples, "sha256": self.sha256, "bytes": self.bytes}


@dataclass
class ShardWriter:
    """Collects samples into shards of `shard_size` and writes each one as soon as it is full."""

    dest: str
    shard_size: int
    image_ext: str
    records: list[ShardRecord] = field(default_factory=list)
    _buf: tempfile.SpooledTemporaryFile | None = None
    _tar: tarfile.TarFile | None = None
    _count: int = 0

    def add(self, key: str, image: bytes, captions: list[str], meta: dict) -> None:
        if self._tar is None:
            self._buf = tempfile.SpooledTemporaryFile(max_size=SPOOL_BYTES)
            self._tar = tarfile.open(fileobj=self._buf, mode="w", format=tarfile.USTAR_FORMAT)
        # Members in a fixed order, all under one key: the WebDataset grouping convention.
        _add(self._tar, f"{key}.{self.image_ext}", image)
        _add(self._tar, f"{key}.json", json.dumps(meta, sort_keys=True, ensure_ascii=False).encode("utf-8"))
        _add(self._tar, f"{key}.txt", "\n".join(captions).encode("utf-8"))
        self._count += 1
        if self._count >= self.shard_size:
            self.flush()

    def flush(self) -> None:
        if self._tar is None:
            return
        self._tar.close()
        buf, count = self._buf, self._count
        self._tar, self._buf, self._count = None, None, 0
        try:
            buf.seek(0)
            h = hashlib.sha256()
            for chunk in storage.iter_chunks(buf):
                h.update(chunk)
            size = buf.tell()
            sha = h.hexdigest()
            name = shard_name(len(self.records))
            url = storage.join(self.dest, name)
            reused = storage.sha256_of(url) == sha
            if not reused:
                buf.seek(0)
                storage.write_file_atomic(url, buf)
            self.records.append(ShardRecord(name, count, sha, size, reused))
        finally:
            buf.close()

    @property
    def num_samples(self) -> int:
        return sum(r.num_samples for r in self.records) + self._count


__all__ = ["ShardWriter", "ShardRecord", "shard_name", "SPOOL_BYTES"]
