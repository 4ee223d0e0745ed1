"""Reading WebDataset tar shards that other people wrote: the one streaming tar reader, for re-sharding
(data.sources, under make_shards) and for training (ray_jobs.data's Ray datasource).

    reader = ShardReader(exts=("png", "txt"), max_image_bytes=untrusted.max_image_bytes(max_pixels))
    try:
        for sample in reader.samples(f):   # f: a binary stream; Sample(key, members {ext: bytes}, oversized)
            ...
    except DAMAGE as e:                    # the shard cannot be read on from here
        reader.cut                         # the key of the sample being read then (not yielded), or None

A sample is the run of adjacent members sharing a key (WebDataset's: the member name up to the first dot
of its base name). Only the members with an extension in `exts` are read, each within its limit (an
image's bytes at the pixel limit, MAX_TEXT_MEMBER_BYTES for the others) and, with `max_sample_bytes`,
the sample within the sum; a member over its limit is not read (the stream skips it), is reported in
`Sample.oversized`, and nothing more of its sample is read.

Damage is raised, never passed over (tarfile itself stops silently at most of it, losing the samples
after it unreported): a header that cannot be parsed, data ending without the end-of-archive marker, data
after that marker, a sample whose members are not adjacent, a member that appears twice; and whatever
tarfile or the stream raise. The sample being read at the damage may be incomplete, so it is not yielded.
"""

from __future__ import annotations

import tarfile
from collections.abc import Collection, Iterator
from dataclasses import dataclass, field
from typing import IO

from data import untrusted

# Extensions of the image members (the others are text), in the order make_shards prefers them.
IMAGE_EXTS = ("png", "jpg", "jpeg", "webp", "bmp", "tif", "tiff", "ppm", "gif")


class ShardDamaged(Exception):
    """A tar shard that cannot be read on from this point."""


# What reading a damaged or unreadable shard raises. ValueError: tarfile's bad sparse maps.
DAMAGE = (ShardDamaged, tarfile.TarError, EOFError, OSError, ValueError, RecursionError)


class _ShardTarInfo(tarfile.TarInfo):
    """Two things tarfile does not do for a file of unknown origin.

    Bounded: tarfile reads an extended header (pax, GNU long name) whole, whatever size it claims; this refuses
    one over untrusted.MAX_TAR_HEADER_BYTES first (a compressed "tar" could otherwise claim gigabytes).
    Strict: tarfile stops iterating, silently, at a header it cannot parse anywhere but at the start of the file,
    or at the end of the data without an end-of-archive marker: the samples after a damaged header, or of a shard
    cut at a member boundary, would be lost unreported. This raises instead. (An all-zero block is the marker.)
    """

    EXTENDED = (tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK, tarfile.XHDTYPE, tarfile.XGLTYPE,
                tarfile.SOLARIS_XHDTYPE)

    @classmethod
    def fromtarfile(cls, tar):
        try:
            return super().fromtarfile(tar)
        except tarfile.EmptyHeaderError:
            raise ShardDamaged(f"data ends at byte {tar.offset} without the end-of-archive marker "
                               "(truncated?)") from None
        except (tarfile.TruncatedHeaderError, tarfile.InvalidHeaderError) as e:
            raise ShardDamaged(f"{e} at byte {tar.offset}") from None

    def _proc_member(self, tar):
        if self.type in self.EXTENDED and self.size > untrusted.MAX_TAR_HEADER_BYTES:
            raise tarfile.HeaderError(f"extended header of {self.size} bytes; the limit is "
                                      f"{untrusted.MAX_TAR_HEADER_BYTES}")
        if len(tar.pax_headers) > untrusted.MAX_PAX_GLOBALS:  # global headers accumulate for the whole file
            raise tarfile.HeaderError(f"global pax headers set over {untrusted.MAX_PAX_GLOBALS} keys")
        return super()._proc_member(tar)


def split_name(name: str) -> tuple[str, str] | None:
    """WebDataset's sample key (the path up to the first dot of the base name) and extension, lower case;
    None for a name without an extension."""
    base = name.rsplit("/", 1)[-1]
    if "." not in base:
        return None
    stem, ext = base.split(".", 1)
    return name[:len(name) - len(base)] + stem, ext.lower()


@dataclass(frozen=True)
class Oversized:
    """A member left unread: over its own limit, or (`by_sample`) within it but not with the sample's members
    read before it."""

    member: str  # base name
    ext: str
    size: int
    limit: int  # the most it could have been
    by_sample: bool


@dataclass
class Sample:
    key: str
    members: dict[str, bytes] = field(default_factory=dict)  # extension -> bytes, of the members read
    oversized: Oversized | None = None  # the first member left unread; the members after it are not read


class ShardReader:
    """Samples of tar streams, read as the module docstring says. `cut` is the key of the sample being read
    when `samples` last raised (None if the damage came between samples)."""

    def __init__(self, exts: Collection[str], max_image_bytes: int, max_sample_bytes: int | None = None):
        self.exts, self.max_image_bytes, self.max_sample_bytes = frozenset(exts), max_image_bytes, max_sample_bytes
        self.cut: str | None = None

    def _room(self, ext: str, held: int) -> tuple[int, int]:
        """(the member's own limit, what the sample has room for)."""
        limit = self.max_image_bytes if ext in IMAGE_EXTS else untrusted.MAX_TEXT_MEMBER_BYTES
        return limit, limit if self.max_sample_bytes is None else min(limit, self.max_sample_bytes - held)

    def samples(self, f: IO[bytes]) -> Iterator[Sample]:
        self.cut = None
        seen: set[str] = set()
        sample: Sample | None = None
        held = 0
        with tarfile.open(fileobj=f, mode="r|*", tarinfo=_ShardTarInfo) as tar:
            while (m := tar.next()) is not None:
                tar.members.clear()  # a stream's TarFile keeps every header it has seen otherwise
                name = untrusted.printable(m.name)  # a name that is not UTF-8 must still fit in a report
                split = split_name(name) if m.isreg() else None
                if split is None:
                    continue
                key, ext = split
                if sample is None or key != sample.key:
                    if sample is not None:
                        self.cut = None
                        yield sample
                        seen.add(sample.key)
                    if key in seen:
                        raise ShardDamaged(f"the members of sample {key!r} are not contiguous "
                                           "(WebDataset needs them adjacent: build shards with data.make_shards)")
                    sample, held, self.cut = Sample(key), 0, key
                if ext in sample.members:
                    raise ShardDamaged(f"member {name!r} appears twice")
                if ext not in self.exts or sample.oversized:
                    continue  # not used, or its sample is already refused: never read
                limit, room = self._room(ext, held)
                if m.size > room:
                    sample.oversized = Oversized(name.rsplit("/", 1)[-1], ext, m.size, room, m.size <= limit)
                    continue
                sample.members[ext] = tar.extractfile(m).read()
                held += m.size
            if sample is not None:
                self.cut = None
                yield sample  # complete: the end-of-archive marker follows it
            # Only zeros (the record's padding) may follow the marker. Data there means a zeroed block mid-file,
            # or tars concatenated: tarfile would silently stop at it.
            for chunk in iter(lambda: tar.fileobj.read(1 << 20), b""):
                if chunk.count(0) != len(chunk):
                    raise ShardDamaged(f"data after an end-of-archive marker at byte {tar.offset}")


__all__ = ["IMAGE_EXTS", "DAMAGE", "ShardDamaged", "ShardReader", "Sample", "Oversized", "split_name"]
