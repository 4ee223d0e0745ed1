"""Rules for inputs that other people fill (folders, buckets, caption files): where a name derived from an
input may point, which files may be read, and how big anything read may be.

Paths. An input's path relative to its root (an S3 key minus the prefix, a folder entry, the `file` of a
captions line, a COCO `file_name`) must be a plain relative path: no leading `/`, no empty, `.` or `..`
segment, no backslash or control character, each segment at most MAX_NAME_BYTES. Anything else is
refused rather than normalised: such a name does not denote a file on any file system, could climb out of
the output, and once normalised could collide with another input's outputs.

Symlinks in a local input folder are followed only when their target lies inside the folder (the target
is checked again, after resolving, when the file is opened); only regular files are read (a FIFO would
block a reader forever).

Sizes. Every read is bounded before the bytes arrive: an image file by 4 bytes per allowed pixel (an
uncompressed 8-bit RGBA image of the largest allowed size), a caption file by MAX_CAPTION_FILE_BYTES, a
line of a captions JSONL by MAX_CAPTION_FILE_BYTES, a shard's text member by MAX_TEXT_MEMBER_BYTES, a COCO
captions JSON by MAX_JSON_BYTES; a caption by MAX_CAPTION_CHARS. The pixel limit itself is PIL's
(`data.images.pixel_limit`): the header is checked before anything is decoded, so a decompression bomb costs
a few KB of reading.
"""

from __future__ import annotations

import contextlib
import functools
import os
import stat
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO

from data import storage

MAX_NAME_BYTES = 200  # one path segment; leaves room for output suffixes and temp names under NAME_MAX (255)
MAX_CAPTION_FILE_BYTES = 64_000  # a sidecar caption file, or one line of a captions JSONL
MAX_CAPTION_CHARS = 2000  # one caption; models read at most a few dozen tokens of it
MAX_TEXT_MEMBER_BYTES = 1_000_000  # a shard's txt or json member: captions plus metadata
MAX_TAR_HEADER_BYTES = 1_000_000  # a pax or GNU long-name header in a tar (tarfile reads it whole)
MAX_JSON_BYTES = 250_000_000  # a COCO captions JSON, parsed whole (~6x in memory; COCO 2017 train: 92 MB)
MAX_MANIFEST_BYTES = 100_000_000  # a shard manifest.json (~150 bytes per shard)
MAX_TOKENIZER_BYTES = 50_000_000  # a shard set's tokenizer.model (sentencepiece models are a few MB)
MAX_BAD_LINE_ROWS = 100  # unusable lines of a captions file listed one by one; the rest are counted
MAX_PAX_GLOBALS = 10_000  # keys a tar's global pax headers may set (tarfile keeps them all)
# 100 Mpx, a 12000x8000 photo: decoding one peaks at 0.4 GB (RGB) to 0.85 GB (RGBA) (bench/untrusted.py).
DEFAULT_MAX_IMAGE_PIXELS = 100_000_000
BYTES_PER_PIXEL_LIMIT = 4


class UnsafeInput(ValueError):
    """This input may not be used; the message is the reason recorded in its error row."""


IMAGE_SIZE_HINT = f" ({BYTES_PER_PIXEL_LIMIT} bytes per allowed pixel; --max-image-pixels raises it)"


def max_image_bytes(max_pixels: int) -> int:
    return BYTES_PER_PIXEL_LIMIT * max_pixels


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 1_000_000 else f"{n / 1e3:.0f} KB" if n >= 1000 else f"{n} bytes"


def safe_rel(rel: str, what: str = "path") -> str:
    """`rel` unchanged if it is a plain relative path (see the module docstring), else UnsafeInput."""
    if not rel:
        raise UnsafeInput(f"empty {what}")
    if rel.startswith("/"):
        raise UnsafeInput(f"{what} {rel!r} is absolute; inputs must lie under their root")
    if "\\" in rel:
        raise UnsafeInput(f"{what} {rel!r} contains a backslash (a path separator on Windows)")
    if any(ord(c) < 32 or ord(c) == 127 for c in rel):
        raise UnsafeInput(f"{what} {rel!r} contains a control character")
    if not _utf8(rel):  # a file name that was not UTF-8 on disk (Python keeps its bytes as surrogates)
        raise UnsafeInput(f"{what} {printable(rel)!r} is not valid UTF-8")
    for seg in rel.split("/"):
        if seg in ("", ".", ".."):
            raise UnsafeInput(f"{what} {rel!r} has {'a ' + repr(seg) if seg else 'an empty'} segment; '..' could "
                              "climb out of the output, and '.' or '//' would collide with another name")
        if not seg.strip(". "):  # '...', '.. ': Windows and SMB shares strip trailing dots and spaces
            raise UnsafeInput(f"{what} {rel!r} has a segment of only dots and spaces ({seg!r})")
        if len(seg.encode("utf-8")) > MAX_NAME_BYTES:
            raise UnsafeInput(f"{what} has a name of {len(seg.encode('utf-8'))} bytes; at most {MAX_NAME_BYTES}")
    return rel


def printable(name: str) -> str:
    """A name as it can be shown and written to UTF-8 files: bytes that were not UTF-8 (kept by Python as
    surrogates) become visible escapes such as `\\udce9`."""
    return name.encode("utf-8", "backslashreplace").decode("utf-8")


def check_s3_root(url: str, flag: str) -> None:
    """A storage root given on the command line must itself be a plain prefix (S3 keeps `..` literally)."""
    if storage.is_s3(url):
        _, key = storage.split_s3(url)
        key = key.rstrip("/")
        if key:
            try:
                safe_rel(key, "key")
            except UnsafeInput as e:
                raise ValueError(f"{flag} {url!r}: {e}") from None


def check_run_name(name: str) -> str:
    """A run name is one folder under the storage root."""
    try:
        safe_rel(name, "run name")
    except UnsafeInput as e:
        raise ValueError(f"--name: {e}") from None
    if "/" in name:
        raise ValueError(f"--name {name!r}: a run name is one folder name under --output, without '/'")
    return name


def inside(path: str, root: str) -> bool:
    """Whether the local `path`, with every symlink resolved, lies in (or is) the local folder `root`."""
    return _under(os.path.realpath(path), os.path.realpath(root))


def _real_root(root: str) -> str:
    return _cached_realpath(os.path.abspath(root))


@functools.lru_cache(maxsize=64)
def _cached_realpath(path: str) -> str:  # an input root, resolved once per process instead of once per file
    return os.path.realpath(path)


def _under(real: str, base: str) -> bool:
    return real == base or real.startswith(base.rstrip(os.sep) + os.sep)


# ---- listing ------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Entry:
    rel: str  # relative to the root, '/'-separated
    url: str  # what to read (local path or s3:// URL)
    problem: str = ""  # non-empty: this entry may not be used, and why


def walk_local(root: str, exclude: tuple[str, ...] = (), recursive: bool = True) -> Iterator[Entry]:
    """Every entry under a local folder that could be an input, in a deterministic order (a folder's files,
    then its sub-folders, depth first), each with a problem when it may not be read. Symlinked folders are not
    descended into (those inside the root are listed under their own path already); one pointing outside is
    reported. Plain files and folders cost no system call beyond reading their folder (scandir's d_type).
    A name that is not UTF-8 is reported under its printable form. No recursion: any depth is fine."""
    base = _real_root(root)
    ex = {os.path.abspath(e) for e in exclude}
    stack = [(root, "")]
    while stack:
        folder, rel = stack.pop()
        try:
            with os.scandir(folder) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as e:
            yield Entry(printable(rel) or ".", printable(folder), f"folder unreadable ({e.strerror})")
            continue
        subdirs = []
        for e in entries:
            if ex and os.path.abspath(e.path) in ex:
                continue
            r = f"{rel}{e.name}"
            if not e.name.isascii() and not _utf8(e.name):
                yield Entry(printable(r), printable(e.path), "name is not valid UTF-8; not read")
            elif e.is_dir(follow_symlinks=False):
                subdirs.append((e.path, r + "/"))
            elif e.is_file(follow_symlinks=False):
                yield Entry(r, e.path)
            elif e.is_symlink():
                if (entry := _symlink_entry(e.path, r, base)) is not None:
                    yield entry
            else:
                yield Entry(r, e.path, "not a regular file")
        if recursive:
            stack.extend(reversed(subdirs))


def _utf8(name: str) -> bool:
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _symlink_entry(path: str, rel: str, base: str) -> Entry | None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return Entry(rel, path, "broken symlink")
    except OSError as e:
        return Entry(rel, path, f"unreadable symlink ({e.strerror})")
    folder = stat.S_ISDIR(st.st_mode)
    if not _under(os.path.realpath(path), base):
        return Entry(rel, path, ("symlinked folder" if folder else "symlink") + " pointing outside the input "
                                "folder; not followed")
    if folder:  # inside the root: its files are listed under their own path (and it could loop)
        return None
    if not stat.S_ISREG(st.st_mode):
        return Entry(rel, path, "not a regular file")
    return Entry(rel, path)


def list_inputs(root: str) -> Iterator[Entry]:
    """Entries under a local folder or an s3:// prefix; a key that is not a plain relative path is an entry
    with a problem (nothing derived from it is ever read or written)."""
    if not storage.is_s3(root):
        if os.path.isdir(root):
            yield from walk_local(root)
        return
    prefix = root.rstrip("/") + "/"
    for url in storage.list_files(root, recursive=True):
        rel = url[len(prefix):]
        if url.endswith("/"):  # an S3 "directory marker"; not a file
            continue
        try:
            safe_rel(rel, "key")
            yield Entry(rel, url)
        except UnsafeInput as e:
            yield Entry(rel, url, str(e))


# ---- reading ------------------------------------------------------------------------------------------

def read(url: str, root: str, max_bytes: int, what: str = "file", hint: str = "") -> bytes:
    """The bytes of an input under `root`, refusing (UnsafeInput) anything the listing rules would refuse now:
    a local file that is not regular or that resolves outside the root (what was actually opened is checked,
    so a symlink swapped in since the listing is caught), an S3 key that is not plain, or more than
    `max_bytes` (checked before reading; `hint` is added to that message)."""
    if storage.is_s3(url):
        prefix = root.rstrip("/") + "/"
        if not url.startswith(prefix):
            raise UnsafeInput(f"{what} {url!r} is not under {root!r}")
        safe_rel(url[len(prefix):], "key")
        try:
            return storage.read_bytes(url, max_bytes=max_bytes)
        except storage.TooLarge as e:
            raise UnsafeInput(f"{what} is {_mb(e.size)}; the limit is {_mb(max_bytes)}{hint}") from None
    try:
        # O_NONBLOCK: opening a FIFO must not wait for a writer (it is refused below); no effect on files.
        fd = os.open(url, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise storage.StorageError(f"file {url!r} does not exist") from None
    except OSError as e:
        raise UnsafeInput(f"{what} cannot be opened ({e.strerror})") from None
    try:
        if not _under(_opened_path(fd, url), _real_root(root)):
            raise UnsafeInput(f"{what} resolves outside {root!r} (a symlink); not read")
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise UnsafeInput(f"{what} is not a regular file")
        if st.st_size > max_bytes:
            raise UnsafeInput(f"{what} is {_mb(st.st_size)}; the limit is {_mb(max_bytes)}{hint}")
        parts, n = [], 0
        while n <= max_bytes:  # os.read, not a buffered file: half the cost for small files
            part = os.read(fd, min(max_bytes + 1 - n, max(st.st_size - n, 0) + (1 << 16)))
            if not part:
                break
            parts.append(part)
            n += len(part)
    finally:
        os.close(fd)
    if n > max_bytes:  # grew since fstat
        raise UnsafeInput(f"{what} is over the limit of {_mb(max_bytes)}{hint}")
    return b"".join(parts)


def _opened_path(fd: int, path: str) -> str:
    """The real path of what `fd` is open on: Linux names it in /proc (one readlink, and no race with the
    open); elsewhere resolve `path` again."""
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return os.path.realpath(path)


def check_captions(captions: list[str], what: str = "caption") -> list[str]:
    for c in captions:
        if len(c) > MAX_CAPTION_CHARS:
            raise UnsafeInput(f"{what} is {len(c)} characters; at most {MAX_CAPTION_CHARS}")
        try:
            c.encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate from a JSON "\ud800" escape
            raise UnsafeInput(f"{what} is not valid Unicode text ({printable(c)[:40]!r}...)") from None
    return captions


class Capped:
    """Rows of one kind of problem in a file: the first MAX_BAD_LINE_ROWS kept, the rest only counted (a file
    of garbage must not become a million rows)."""

    def __init__(self):
        self.rows: list = []
        self.more = 0

    def add(self, row) -> None:
        if len(self.rows) < MAX_BAD_LINE_ROWS:
            self.rows.append(row)
        else:
            self.more += 1


def lines(f: IO[bytes], max_line: int = MAX_CAPTION_FILE_BYTES) -> Iterator[tuple[int, bytes | None]]:
    """(line number, line) of a stream without ever holding more than `max_line` bytes of one line; a longer
    line comes out as (number, None)."""
    pending, n, too_long = b"", 0, False
    for chunk in iter(lambda: f.read(1 << 16), b""):
        parts = chunk.split(b"\n")
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            if not too_long:
                pending += part
                if len(pending) > max_line:
                    pending, too_long = b"", True
            if not last:
                n += 1
                yield n, (None if too_long else pending)
                pending, too_long = b"", False
    if pending or too_long:
        yield n + 1, (None if too_long else pending)


def write_output(root: str, rel: str, data: bytes) -> str:
    """Write output `rel` under the output root, whole or not at all; returns its URL. On S3, a plain key
    under the root. Locally, every folder on the way is created and opened relative to the one before it,
    refusing symlinks (O_NOFOLLOW), and the file goes to a temporary name in that folder, then is renamed:
    no symlink in the output folder, present or swapped in while writing, can lead the write outside it."""
    safe_rel(rel, "output path")
    url = storage.join(root, rel)
    if storage.is_s3(root):
        storage.write_bytes_atomic(url, data)
        return url
    *folders, name = rel.split("/")
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for folder in folders:
            try:
                os.mkdir(folder, dir_fd=fd)
            except FileExistsError:
                pass
            try:
                sub = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
            except OSError as e:  # ELOOP: a symlink; ENOTDIR: a file where a folder should be
                raise UnsafeInput(f"output {rel!r}: {folder!r} in the output folder is not a plain folder "
                                  f"({e.strerror}); not written through") from None
            os.close(fd)
            fd = sub
        tmp = f"{name}{storage.PARTIAL_SUFFIX}-{uuid.uuid4().hex[:8]}"
        out = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o666, dir_fd=fd)
        try:
            with os.fdopen(out, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, name, src_dir_fd=fd, dst_dir_fd=fd)  # replaces a link at `name`, never follows it
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=fd)
            raise
    finally:
        os.close(fd)
    return url


__all__ = ["UnsafeInput", "Entry", "MAX_NAME_BYTES", "MAX_CAPTION_FILE_BYTES", "MAX_CAPTION_CHARS", "MAX_JSON_BYTES",
           "DEFAULT_MAX_IMAGE_PIXELS", "max_image_bytes", "safe_rel", "check_s3_root", "check_run_name", "inside",
           "walk_local", "list_inputs", "read", "check_captions", "Capped", "lines", "write_output", "printable"]
