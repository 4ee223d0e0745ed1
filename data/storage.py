"""One API over a local folder and S3 (AWS or any S3-compatible store), for `data/` and `ray_jobs/`.

URLs are either local paths or `s3://bucket/key`. Credentials, region and endpoint come from the
standard AWS chain (environment, ~/.aws/config and credentials, instance roles), including
`AWS_ENDPOINT_URL` / `AWS_ENDPOINT_URL_S3` for MinIO, Ceph, R2 or a local moto server; nothing is
hard-coded. Failures a user can cause (unreachable endpoint, missing bucket, denied access, missing
object) raise `StorageError` (a ValueError) whose message names the URL and the endpoint, never a
credential. S3 goes through pyarrow (data/s3_fs.py), the filesystem Ray Data and Ray Train take.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from data.s3_fs import (RetryingReader, StorageError, TooLarge, endpoint_url, failures, max_attempts_of, read_at,
                        retry_settings, s3_filesystem, storage_error)

PARTIAL_SUFFIX = ".partial"
_CHUNK = 64 * 1024 * 1024  # per ranged GET of a whole-object read, as Ray Train's own checkpoint download
_STREAM_BUFFER = 8 * 1024 * 1024  # per ranged GET of a sequential read (open_read)
ONE_PUT_BYTES = 10 * 1024 * 1024  # pyarrow's S3 part size: an object up to this goes up in one PUT


# ---- URLs -------------------------------------------------------------------------------------

def is_s3(url: str | os.PathLike) -> bool:
    return str(url).startswith("s3://")


def split_s3(url: str) -> tuple[str, str]:
    """`s3://bucket/a/b` -> ("bucket", "a/b")."""
    if not is_s3(url):
        raise StorageError(f"{url!r} is not an s3:// URL")
    rest = url[len("s3://"):]
    bucket, _, key = rest.partition("/")
    if not bucket:
        raise StorageError(f"{url!r} has no bucket name: use s3://bucket/prefix")
    return bucket, key


def join(url: str | os.PathLike, *parts: str) -> str:
    url = str(url)
    if is_s3(url):
        out = url.rstrip("/")
        for p in parts:
            if p.strip("/"):
                out += "/" + p.strip("/")
        return out
    return os.path.join(url, *parts)


def dirname(url: str) -> str:
    if is_s3(url):
        bucket, key = split_s3(url)
        head = key.rstrip("/").rpartition("/")[0]
        return f"s3://{bucket}/{head}" if head else f"s3://{bucket}"
    return os.path.dirname(os.path.abspath(url))


def basename(url: str) -> str:
    return str(url).rstrip("/").rpartition("/")[2]


# ---- S3 -----------------------------------------------------------------------------------------

def _path(url: str) -> str:
    """`s3://bucket/key` -> "bucket/key", a path in s3_filesystem()."""
    bucket, key = split_s3(url)
    return f"{bucket}/{key}".rstrip("/")


def create_bucket(url: str) -> None:
    """Create the bucket of `s3://bucket/...` (for local stores: tests, the demo)."""
    fs = s3_filesystem()
    try:
        type(fs)(**{**fs._kwargs, "allow_bucket_creation": True}).create_dir(split_s3(url)[0])
    except failures() as e:
        raise storage_error(e, url, "create bucket") from None


# ---- reading ------------------------------------------------------------------------------------

def exists(url: str) -> bool:
    """Whether `url` is a file (a local path may also be a folder)."""
    if not is_s3(url):
        return os.path.exists(url)
    import pyarrow.fs as pafs

    try:
        return s3_filesystem().get_file_info(_path(url)).type == pafs.FileType.File
    except failures() as e:
        raise storage_error(e, url, "check") from None


def list_files(url: str, suffix: str | None = None, recursive: bool = False) -> list[str]:
    """Sorted URLs of the files under `url` (a folder or prefix), optionally only those ending in `suffix`."""
    url = str(url)
    if not is_s3(url):
        root = Path(url)
        if not root.is_dir():
            raise StorageError(f"folder {url!r} does not exist")
        it = root.rglob("*") if recursive else root.iterdir()
        out = [str(p) for p in it if p.is_file() and (suffix is None or p.name.endswith(suffix))]
        return sorted(out)
    import pyarrow.fs as pafs

    selector = pafs.FileSelector(_path(url), recursive=recursive, allow_not_found=True)
    try:
        infos = s3_filesystem().get_file_info(selector)
    except failures() as e:
        raise storage_error(e, url, "list") from None
    # pyarrow reports "directory marker" keys (ending in /, left by Ray and others) as folders: not files.
    return sorted(f"s3://{i.path}" for i in infos
                  if i.type == pafs.FileType.File and (suffix is None or i.path.endswith(suffix)))


def read_bytes(url: str, max_bytes: int | None = None) -> bytes:
    """The whole object; with `max_bytes`, TooLarge for a bigger one, raised before its bytes are read."""
    if not is_s3(url):
        try:
            with open(url, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                if max_bytes is not None and size > max_bytes:
                    raise TooLarge(url, size, max_bytes)
                return f.read() if max_bytes is None else f.read(max_bytes)
        except FileNotFoundError:
            raise StorageError(f"file {url!r} does not exist") from None
    fs = s3_filesystem()
    try:
        with fs.open_input_file(_path(url)) as f:
            size = f.size()
            if max_bytes is not None and size > max_bytes:
                raise TooLarge(url, size, max_bytes)
            attempts = max_attempts_of(fs)
            return b"".join(read_at(f, min(_CHUNK, size - off), off, attempts, url) for off in range(0, size, _CHUNK))
    except failures() as e:
        raise storage_error(e, url, "read") from None


def open_read(url: str) -> IO[bytes]:
    """A readable binary stream (for tar files read sequentially, never fully in memory)."""
    if not is_s3(url):
        try:
            return open(url, "rb")
        except FileNotFoundError:
            raise StorageError(f"file {url!r} does not exist") from None
    fs = s3_filesystem()
    try:
        f = fs.open_input_file(_path(url))
    except failures() as e:
        raise storage_error(e, url, "read") from None
    return io.BufferedReader(RetryingReader(f, max_attempts_of(fs), url), _STREAM_BUFFER)


def sha256_of(url: str) -> str | None:
    """The sha256 of an existing file, None if there is none.

    Computed from the content, on S3 too: pyarrow cannot write or read S3 user metadata (where a sha256 could
    be recorded at write time), so an object is read back to be hashed. Only a re-run that finds a shard in
    place pays that read, in place of an upload."""
    if not is_s3(url):
        if not os.path.isfile(url):
            return None
    elif not exists(url):
        return None
    h = hashlib.sha256()
    try:
        with open_read(url) as f:
            for chunk in iter_chunks(f):
                h.update(chunk)
    except failures() as e:
        raise storage_error(e, url, "read") from None
    return h.hexdigest()


# ---- writing ------------------------------------------------------------------------------------

def check_writable(url: str) -> None:
    """Fail early, before any work, when the destination cannot be written."""
    if not is_s3(url):
        try:
            os.makedirs(url, exist_ok=True)
        except OSError as e:
            raise StorageError(f"cannot create output folder {url!r}: {e.strerror}") from None
        if not os.access(url, os.W_OK):
            raise StorageError(f"output folder {url!r} is not writable")
        return
    import pyarrow.fs as pafs

    bucket, _ = split_s3(url)
    try:
        found = s3_filesystem().get_file_info(bucket).type != pafs.FileType.NotFound
    except failures() as e:
        raise storage_error(e, url, "write to") from None
    if not found:
        raise StorageError(f"bucket {bucket!r} does not exist (endpoint {endpoint_url()}): create it "
                           "or fix the URL")


@contextlib.contextmanager
def _local_atomic(path: str | os.PathLike, fsync: bool = False) -> Iterator[IO[bytes]]:
    """A file open for writing at `<path>.partial-<id>`, renamed over `path` once the block ends without an
    error (and, with `fsync`, synced first); removed otherwise. A file under its final name is complete."""
    tmp = f"{path}{PARTIAL_SUFFIX}-{uuid.uuid4().hex[:8]}"
    try:
        with open(tmp, "wb") as f:
            yield f
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_bytes_atomic(url: str, data: bytes) -> None:
    write_file_atomic(url, io.BytesIO(data))


def _read_up_to(f: IO[bytes], size: int) -> bytes:
    """`size` bytes of `f`, fewer only at its end (a raw stream's read may return less before then)."""
    parts, got = [], 0
    while got < size and (part := f.read(size - got)):
        parts.append(part)
        got += len(part)
    return b"".join(parts)


def write_file_atomic(url: str, fileobj: IO[bytes]) -> None:
    """Write a stream to `url` so that `url` only ever holds complete content.

    On S3 that is the store's own guarantee: a PUT, or a multipart upload once completed, replaces the object
    whole or not at all, so the object is written directly; a process killed mid-way completes nothing. But
    pyarrow's output streams cannot abort an upload (closing one, as its destructor also does, completes it),
    so a source that fails after the stream is open would publish a partial object. A source up to one part
    (ONE_PUT_BYTES) is therefore read whole before the stream opens: its failure leaves the old object as it
    was. A larger one that fails mid-way (an interrupt while a spooled shard uploads) has its incomplete
    object deleted at once, and with it the object it replaced.
    A local file is written to `<url>.partial-<id>`, synced and renamed over `url`; a crash leaves at most a
    `.partial-` file, which no reader takes for a shard.
    """
    if not is_s3(url):
        os.makedirs(os.path.dirname(os.path.abspath(url)), exist_ok=True)
        with _local_atomic(url, fsync=True) as f:
            shutil.copyfileobj(fileobj, f, 1 << 20)
        return
    head = _read_up_to(fileobj, ONE_PUT_BYTES + 1)
    fs = s3_filesystem()
    try:
        out = fs.open_output_stream(_path(url))
    except failures() as e:
        raise storage_error(e, url, "write") from None
    try:
        out.write(head)
        if len(head) > ONE_PUT_BYTES:
            shutil.copyfileobj(fileobj, out, 1 << 20)
    except BaseException:
        # pyarrow's output streams have no abort: closing (as their destructor also does) completes the upload
        # with what was written, so the incomplete object is deleted at once.
        with contextlib.suppress(*failures()):
            out.close()
            fs.delete_file(_path(url))
        raise
    try:
        out.close()
    except failures() as e:
        raise storage_error(e, url, "write") from None


def delete(url: str) -> None:
    if not is_s3(url):
        if os.path.exists(url):
            os.unlink(url)
        return
    try:
        s3_filesystem().delete_file(_path(url))
    except FileNotFoundError:
        pass
    except failures() as e:
        raise storage_error(e, url, "delete") from None


def upload_dir(local: str | os.PathLike, url: str) -> list[str]:
    """Copy every file under a local folder to `url`, keeping relative paths; returns the written URLs."""
    root = Path(local)
    out = []
    for p in sorted(root.rglob("*")):
        if p.is_file():
            dst = join(url, *p.relative_to(root).parts)
            with open(p, "rb") as f:
                write_file_atomic(dst, f)
            out.append(dst)
    return out


def download_dir(url: str, local: str | os.PathLike) -> list[str]:
    """Copy every file under `url` into a local folder, keeping relative paths; returns the local paths."""
    if is_s3(url):
        fs, path = pyarrow_fs(url)
        return download_from_fs(fs, path, local)
    out = []
    base = str(url).rstrip("/")
    for src in list_files(url, recursive=True):
        dst = Path(local, *src[len(base):].lstrip("/").split("/"))
        dst.parent.mkdir(parents=True, exist_ok=True)
        with _local_atomic(dst) as f, open(src, "rb") as r:
            shutil.copyfileobj(r, f, 1 << 20)
        out.append(str(dst))
    return out


# ---- pyarrow filesystems (Ray Data, Ray Train) ----------------------------------------------------------

def pyarrow_fs(url: str):
    """(pyarrow filesystem, path inside it) for `url`: the S3 filesystem of data.s3_fs (endpoint, region,
    static credentials and retries from the AWS configuration, kept when pickled), or the local one."""
    import pyarrow.fs as pafs

    url = str(url)
    if not is_s3(url):
        return pafs.LocalFileSystem(), os.path.abspath(url)
    return s3_filesystem(), _path(url)


def is_local_fs(filesystem) -> bool:
    import pyarrow.fs as pafs

    return isinstance(filesystem, pafs.LocalFileSystem)


def fs_is_file(filesystem, path: str) -> bool:
    import pyarrow.fs as pafs

    return filesystem.get_file_info(path).type == pafs.FileType.File


def fs_list(filesystem, path: str, dirs: bool = False) -> list[str]:
    """Base names of the files (or, with `dirs`, folders) directly in `path` of a pyarrow filesystem."""
    import pyarrow.fs as pafs

    want = pafs.FileType.Directory if dirs else pafs.FileType.File
    return sorted(i.base_name for i in filesystem.get_file_info(pafs.FileSelector(path, allow_not_found=True))
                  if i.type == want)


def fs_read_into(filesystem, path: str, out: IO[bytes]) -> bool:
    """Copy a file of a pyarrow filesystem into `out`, retrying what pyarrow does not; False if there is none."""
    if not fs_is_file(filesystem, path):
        return False
    with filesystem.open_input_file(path) as f, io.BufferedReader(
            RetryingReader(f, max_attempts_of(filesystem), path), _STREAM_BUFFER) as r:
        shutil.copyfileobj(r, out, 1 << 20)
    return True


def fs_write_from(filesystem, path: str, src: IO[bytes]) -> None:
    """Copy `src` to a file of a pyarrow filesystem (its folder created first where folders exist)."""
    filesystem.create_dir(path.rpartition("/")[0], recursive=True)
    with filesystem.open_output_stream(path) as out:
        shutil.copyfileobj(src, out, 1 << 20)


def download_from_fs(filesystem, path: str, local: str | os.PathLike) -> list[str]:
    """Copy a file, or every file under a folder, of a pyarrow filesystem (pyarrow_fs) to the local `local`
    (the file itself, or the folder that receives the folder's contents); returns the local paths.

    For reads whose settings travel with a pickled filesystem (Ray Train workers) rather than with the
    process's AWS environment. Unlike pyarrow.fs.copy_files (which Ray's Checkpoint.as_directory uses), a read
    answered 500/503 is retried even when the file is smaller than the error (see data.s3_fs.read_at).
    A file under its final local name is complete.
    """
    import pyarrow.fs as pafs

    path = path.rstrip("/")
    local_fs = is_local_fs(filesystem)
    url = path if local_fs else f"s3://{path}"
    try:
        info = filesystem.get_file_info(path)
        if info.type == pafs.FileType.NotFound:
            raise StorageError(f"{url} does not exist" + ("" if local_fs else f" (endpoint {endpoint_url()})"))
        if info.type == pafs.FileType.File:
            files = [(info, Path(local))]
        else:
            files = [(i, Path(local, *i.path[len(path) + 1:].split("/")))
                     for i in filesystem.get_file_info(pafs.FileSelector(path, recursive=True))
                     if i.type == pafs.FileType.File]
        attempts = max_attempts_of(filesystem)
        out = []
        for info, dst in sorted(files, key=lambda f: f[0].path):
            dst.parent.mkdir(parents=True, exist_ok=True)
            with filesystem.open_input_file(info.path) as f, _local_atomic(dst) as w:
                for offset in range(0, info.size, _CHUNK):
                    w.write(read_at(f, min(_CHUNK, info.size - offset), offset, attempts, info.path))
            out.append(str(dst))
    except failures() as e:
        if local_fs:
            raise
        raise storage_error(e, url, "read") from None
    return out


@contextlib.contextmanager
def local_dir(filesystem, path: str) -> Iterator[Path]:
    """A folder of a pyarrow filesystem as a local folder: the folder itself on a LocalFileSystem, else a
    temporary copy (download_from_fs), removed on exit."""
    if is_local_fs(filesystem):
        yield Path(path)
        return
    with tempfile.TemporaryDirectory(prefix="onade_fs_") as tmp:
        download_from_fs(filesystem, path, tmp)
        yield Path(tmp)


def iter_chunks(f: IO[bytes], size: int = 1 << 20) -> Iterator[bytes]:
    return iter(lambda: f.read(size), b"")


__all__ = [
    "StorageError", "TooLarge", "PARTIAL_SUFFIX", "is_s3", "split_s3", "join", "dirname", "basename",
    "retry_settings", "endpoint_url", "create_bucket", "exists", "list_files", "read_bytes", "open_read",
    "sha256_of", "check_writable", "write_bytes_atomic", "write_file_atomic", "delete", "upload_dir",
    "download_dir", "pyarrow_fs", "is_local_fs", "fs_is_file", "fs_list", "fs_read_into", "fs_write_from",
    "download_from_fs", "local_dir", "iter_chunks",
]
