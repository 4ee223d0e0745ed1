"""One API over a local folder and S3 (AWS or any S3-compatible store), for `data/` and `ray_jobs/`.

URLs are either local paths or `s3://bucket/key`. Credentials, region and endpoint come from the
standard AWS chain (environment, ~/.aws/config and credentials, instance roles), including
`AWS_ENDPOINT_URL` / `AWS_ENDPOINT_URL_S3` for MinIO, Ceph, R2 or a local moto server; nothing is
hard-coded. Failures a user can cause (unreachable endpoint, missing bucket, denied access, missing
object) raise `StorageError` (a ValueError) whose message names the URL and the endpoint, never a
credential.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import os
import random
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlparse, urlunparse

PARTIAL_SUFFIX = ".partial"
# Parts of 64 MiB: a 10 GB shard stays under S3's 10,000-part limit and memory stays bounded.
MULTIPART_CHUNK = 64 * 1024 * 1024


class StorageError(ValueError):
    """Storage is unreachable, missing or denied; the message says which URL and how to fix it."""


class TooLarge(StorageError):
    """An object is over the size its reader allows (known before its bytes are read)."""

    def __init__(self, url: str, size: int, limit: int):
        super().__init__(f"{url!r} is {size} bytes, over the limit of {limit}")
        self.size, self.limit = size, limit


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


# ---- S3 clients ---------------------------------------------------------------------------------

_clients: dict[tuple, Any] = {}
# A client is reused while these are unchanged (a test or demo may point the environment elsewhere).
_CLIENT_ENV = ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_PROFILE", "AWS_DEFAULT_REGION", "AWS_REGION",
               "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_CONFIG_FILE",
               "AWS_SHARED_CREDENTIALS_FILE", "AWS_MAX_ATTEMPTS", "AWS_RETRY_MODE")
# Total attempts per request when the user configured none: the defaults of botocore's modes.
_DEFAULT_ATTEMPTS = {"legacy": 5, "standard": 3, "adaptive": 3}


def _sessions():
    """(boto3 session, its botocore session) from the standard AWS configuration."""
    import boto3
    import botocore.session

    core = botocore.session.get_session()
    return boto3.session.Session(botocore_session=core), core


def _user_retry_mode(core) -> str | None:
    return os.environ.get("AWS_RETRY_MODE") or core.get_scoped_config().get("retry_mode")


def retry_settings() -> tuple[str, int]:
    """(retry mode, total attempts per request) as botocore resolves them: AWS_RETRY_MODE / AWS_MAX_ATTEMPTS,
    else the profile's `retry_mode` / `max_attempts` in ~/.aws/config, else "standard" and its 3 attempts.
    botocore reads these itself; pyarrow's S3 client does not, so pyarrow_fs passes them on."""
    _, core = _sessions()
    mode = _user_retry_mode(core) or "standard"
    attempts = core.get_config_variable("max_attempts")
    return mode, int(attempts) if attempts else _DEFAULT_ATTEMPTS.get(mode, 3)


def s3_client():
    """A boto3 S3 client from the standard AWS configuration (cached per process and environment).

    Retries are botocore's own, from the same configuration (AWS_MAX_ATTEMPTS, AWS_RETRY_MODE or the
    profile's max_attempts / retry_mode). Only the mode gets a default here, "standard" (it retries S3's
    SlowDown, 500s and dropped connections), for botocore releases whose default is still "legacy"; a client
    Config value overrides the user's own setting, so none is passed when they made one.
    """
    pid = (os.getpid(), hash(tuple(os.environ.get(k) for k in _CLIENT_ENV)))
    if pid not in _clients:
        from botocore.config import Config

        session, core = _sessions()
        config = Config(retries={"mode": "standard"}) if not _user_retry_mode(core) else None
        _clients[pid] = session.client("s3", config=config)
    return _clients[pid]


def endpoint_url() -> str:
    """The S3 endpoint in use, with any user:password part removed so it is safe to print."""
    url = s3_client().meta.endpoint_url
    p = urlparse(url)
    if p.username or p.password:
        p = p._replace(netloc=p.hostname + (f":{p.port}" if p.port else ""))
    return urlunparse(p)


def _is_aws_endpoint(url: str) -> bool:
    host = urlparse(url).hostname or ""
    return host.endswith(".amazonaws.com") or host.endswith(".amazonaws.com.cn")


def _error(e: Exception, url: str, action: str) -> StorageError:
    """Translate a botocore error into a message a user can act on (no credentials in it)."""
    from botocore.exceptions import (ClientError, EndpointConnectionError, NoCredentialsError,
                                     PartialCredentialsError)

    where = f"{action} {url} (endpoint {endpoint_url()})"
    if isinstance(e, (NoCredentialsError, PartialCredentialsError)):
        return StorageError(f"cannot {where}: no AWS credentials found; set AWS_ACCESS_KEY_ID and "
                            "AWS_SECRET_ACCESS_KEY or configure a profile (~/.aws/credentials)")
    if isinstance(e, EndpointConnectionError):
        return StorageError(f"cannot {where}: the endpoint is unreachable; check AWS_ENDPOINT_URL "
                            "and that the store is running")
    if isinstance(e, ClientError):
        code = str(e.response.get("Error", {}).get("Code", ""))
        if code in ("NoSuchBucket",):
            return StorageError(f"cannot {where}: bucket {split_s3(url)[0]!r} does not exist; create it "
                                "or fix the URL")
        if code in ("NoSuchKey", "404", "NotFound"):
            return StorageError(f"cannot {where}: no such object")
        if code in ("AccessDenied", "403", "InvalidAccessKeyId", "SignatureDoesNotMatch", "Forbidden"):
            return StorageError(f"cannot {where}: access denied ({code}); check the AWS credentials "
                                "and the bucket policy")
        return StorageError(f"cannot {where}: S3 error {code or type(e).__name__}")
    return StorageError(f"cannot {where}: {type(e).__name__}: {e}")


def _s3_errors():
    from botocore.exceptions import BotoCoreError, ClientError

    return (BotoCoreError, ClientError)


# ---- reading ------------------------------------------------------------------------------------

def exists(url: str) -> bool:
    if not is_s3(url):
        return os.path.exists(url)
    bucket, key = split_s3(url)
    try:
        s3_client().head_object(Bucket=bucket, Key=key)
        return True
    except _s3_errors() as e:
        code = str(getattr(e, "response", {}).get("Error", {}).get("Code", ""))
        if code in ("404", "NoSuchKey", "NotFound"):
            return False
        raise _error(e, url, "check") from None


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
    bucket, key = split_s3(url)
    prefix = key.rstrip("/") + "/" if key else ""
    out = []
    kwargs = dict(Bucket=bucket, Prefix=prefix)
    if not recursive:
        kwargs["Delimiter"] = "/"
    try:
        for page in s3_client().get_paginator("list_objects_v2").paginate(**kwargs):
            for obj in page.get("Contents", []):
                k = obj["Key"]
                if suffix is None or k.endswith(suffix):
                    out.append(f"s3://{bucket}/{k}")
    except _s3_errors() as e:
        raise _error(e, url, "list") from None
    return sorted(out)


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
    bucket, key = split_s3(url)
    try:
        obj = s3_client().get_object(Bucket=bucket, Key=key)
        if max_bytes is not None and obj["ContentLength"] > max_bytes:
            obj["Body"].close()
            raise TooLarge(url, obj["ContentLength"], max_bytes)
        return obj["Body"].read()
    except _s3_errors() as e:
        raise _error(e, url, "read") from None


def open_read(url: str) -> IO[bytes]:
    """A readable binary stream (for tar files read sequentially, never fully in memory)."""
    if not is_s3(url):
        try:
            return open(url, "rb")
        except FileNotFoundError:
            raise StorageError(f"file {url!r} does not exist") from None
    bucket, key = split_s3(url)
    try:
        return s3_client().get_object(Bucket=bucket, Key=key)["Body"]
    except _s3_errors() as e:
        raise _error(e, url, "read") from None


def sha256_of(url: str) -> str | None:
    """The sha256 of an existing object: recorded in S3 metadata at write time, computed for local files."""
    if not is_s3(url):
        if not os.path.isfile(url):
            return None
        h = hashlib.sha256()
        with open(url, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        return h.hexdigest()
    bucket, key = split_s3(url)
    try:
        head = s3_client().head_object(Bucket=bucket, Key=key)
    except _s3_errors() as e:
        code = str(getattr(e, "response", {}).get("Error", {}).get("Code", ""))
        if code in ("404", "NoSuchKey", "NotFound"):
            return None
        raise _error(e, url, "check") from None
    return head.get("Metadata", {}).get("sha256")


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
    bucket, _ = split_s3(url)
    try:
        s3_client().head_bucket(Bucket=bucket)
    except _s3_errors() as e:
        code = str(getattr(e, "response", {}).get("Error", {}).get("Code", ""))
        if code in ("404", "NoSuchBucket", "NotFound"):
            raise StorageError(f"bucket {bucket!r} does not exist (endpoint {endpoint_url()}): create it "
                               "or fix the URL") from None
        raise _error(e, url, "write to") from None


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


def write_bytes_atomic(url: str, data: bytes, metadata: dict[str, str] | None = None) -> None:
    write_file_atomic(url, io.BytesIO(data), metadata)


def write_file_atomic(url: str, fileobj: IO[bytes], metadata: dict[str, str] | None = None) -> None:
    """Write a stream to `url` so that `url` only ever holds complete content.

    On S3 that is the store's own guarantee: a PUT, or a multipart upload once completed (above
    MULTIPART_CHUNK), replaces the object whole or not at all, so the object is written directly. A local
    file is written to `<url>.partial-<id>`, synced and renamed over `url`; a crash leaves at most a
    `.partial-` file, which no reader takes for a shard. `metadata` is S3 user metadata (local: ignored).
    """
    if not is_s3(url):
        os.makedirs(os.path.dirname(os.path.abspath(url)), exist_ok=True)
        with _local_atomic(url, fsync=True) as f:
            shutil.copyfileobj(fileobj, f, 1 << 20)
        return
    from boto3.s3.transfer import TransferConfig

    bucket, key = split_s3(url)
    cfg = TransferConfig(multipart_threshold=MULTIPART_CHUNK, multipart_chunksize=MULTIPART_CHUNK,
                         max_concurrency=4)
    try:
        s3_client().upload_fileobj(fileobj, bucket, key, ExtraArgs={"Metadata": dict(metadata or {})}, Config=cfg)
    except _s3_errors() as e:
        raise _error(e, url, "write") from None
    except Exception as e:  # s3transfer wraps some failures in its own exception types
        if isinstance(e.__cause__, _s3_errors()):
            raise _error(e.__cause__, url, "write") from None
        raise


def delete(url: str) -> None:
    if not is_s3(url):
        if os.path.exists(url):
            os.unlink(url)
        return
    bucket, key = split_s3(url)
    try:
        s3_client().delete_object(Bucket=bucket, Key=key)
    except _s3_errors() as e:
        raise _error(e, url, "delete") from None


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
    """Copy every file under `url` into a local folder, keeping relative paths; returns the local paths.

    boto3's download_fileobj fetches each object, with botocore's retries and s3transfer's own for a body
    cut mid-way. Not pyarrow's copy_files: its ranged reads into a buffer of the object's size cannot hold
    the XML of a 500/503 answer for an object smaller than it (a few hundred bytes), and fail unretried
    ("Failed to flush response stream", AWS SDK for C++, as in apache/doris#66557).
    """
    out = []
    base = str(url).rstrip("/")
    for src in list_files(url, recursive=True):
        if src.endswith("/"):  # a "directory marker" key that pyarrow and Ray leave in S3; not a file
            continue
        rel = src[len(base):].lstrip("/")
        dst = Path(local, *rel.split("/"))
        dst.parent.mkdir(parents=True, exist_ok=True)
        try:
            with _local_atomic(dst) as f:
                if is_s3(src):
                    s3_client().download_fileobj(*split_s3(src), f)
                else:
                    with open(src, "rb") as r:
                        shutil.copyfileobj(r, f, 1 << 20)
        except _s3_errors() as e:
            raise _error(e, src, "read") from None
        out.append(str(dst))
    return out


# ---- pyarrow (Ray Data) ---------------------------------------------------------------------------

def pyarrow_fs(url: str):
    """(pyarrow filesystem, path inside it) for `url`, honouring the same AWS settings as boto3.

    pyarrow's S3 client ignores AWS_ENDPOINT_URL and the retry settings, so the endpoint, region, (static)
    credentials and retry mode and attempts (retry_settings) are taken from the boto3 configuration and
    passed explicitly. Refreshable credentials (roles, SSO) are left to pyarrow's own AWS chain so they keep
    refreshing in long jobs.
    """
    import pyarrow.fs as pafs

    url = str(url)
    if not is_s3(url):
        return pafs.LocalFileSystem(), os.path.abspath(url)
    from botocore.credentials import RefreshableCredentials

    session, _ = _sessions()
    kwargs: dict[str, Any] = {"region": session.region_name or "us-east-1"}
    endpoint = s3_client().meta.endpoint_url
    if not _is_aws_endpoint(endpoint):
        p = urlparse(endpoint)
        kwargs["endpoint_override"] = p.netloc.rpartition("@")[2]
        kwargs["scheme"] = p.scheme or "https"
    creds = session.get_credentials()
    if creds is not None and not isinstance(creds, RefreshableCredentials):
        frozen = creds.get_frozen_credentials()
        kwargs.update(access_key=frozen.access_key, secret_key=frozen.secret_key)
        if frozen.token:
            kwargs["session_token"] = frozen.token
    mode, attempts = retry_settings()
    bucket, key = split_s3(url)
    fs = _retrying_s3_class()(retry_mode=mode, max_attempts=attempts, **kwargs)
    return fs, f"{bucket}/{key}".rstrip("/")


@functools.cache
def _retrying_s3_class():
    """Defined on first use, so that importing this module does not import pyarrow."""
    import pyarrow.fs as pafs

    class RetryingS3FileSystem(pafs.S3FileSystem):
        """pyarrow's S3FileSystem with its retry strategy from botocore's settings, kept when pickled.

        S3FileSystem.__reduce__ leaves retry_strategy out (apache/arrow#47348, fix open in #47350), so a
        filesystem sent to Ray tasks and Train workers would come back with pyarrow's default of 3 attempts.
        Drop this subclass once pyarrow pickles the strategy.
        """

        def __init__(self, *, retry_mode: str, max_attempts: int, **kwargs):
            if retry_mode == "legacy":  # the AWS SDK's DefaultRetryStrategy counts retries, not attempts
                strategy = pafs.AwsDefaultS3RetryStrategy(max_attempts=max(0, max_attempts - 1))
            else:  # pyarrow has no adaptive mode; standard is its retry logic without the client rate limit
                strategy = pafs.AwsStandardS3RetryStrategy(max_attempts=max_attempts)
            super().__init__(retry_strategy=strategy, **kwargs)
            self._kwargs = dict(kwargs, retry_mode=retry_mode, max_attempts=max_attempts)

        def __reduce__(self):
            return _make_retrying_s3, (self._kwargs,)

    return RetryingS3FileSystem


def _make_retrying_s3(kwargs: dict):
    return _retrying_s3_class()(**kwargs)


# The AWS SDK for C++ (pyarrow's S3 client) reads a ranged GET into a buffer of the range's size and writes an
# error's body there too: the XML of a 500 or 503 does not fit the read of a file smaller than it (a few hundred
# bytes: DeepSpeed's `latest`, train_state.json), and the SDK reports the overflow as an INTERNAL_FAILURE it marks
# non-retryable, so no retry strategy sees it (apache/doris#66557 traces the mechanism). Such a read is retried
# here, as the SDK retries a 503; a read never changes the store, so that is always safe. Drop this once pyarrow
# retries it (tests/test_flaky_train.py then fails where it shows pyarrow giving up).
_UNRETRIED_PYARROW_ERROR = "Failed to flush response stream"
_FS_READ_CHUNK = 64 * 1024 * 1024  # as Ray Train's own checkpoint download (copy_files)


def _read_at(f, nbytes: int, offset: int, attempts: int, what: str) -> bytes:
    attempt = 1
    while True:
        try:
            return f.read_at(nbytes, offset)
        except OSError as e:
            if _UNRETRIED_PYARROW_ERROR not in str(e) or attempt >= attempts:
                raise OSError(f"cannot read {what} after {attempt} attempt(s): {e}") from e
        time.sleep(random.random() * min(20.0, 2.0 ** (attempt - 1)))  # botocore's standard-mode backoff
        attempt += 1


def download_from_fs(filesystem, path: str, local: str | os.PathLike) -> list[str]:
    """Copy a file, or every file under a folder, of a pyarrow filesystem (pyarrow_fs) to the local `local`
    (the file itself, or the folder that receives the folder's contents); returns the local paths.

    For reads whose settings travel with a pickled filesystem (Ray Train workers) rather than with the
    process's AWS environment. Unlike pyarrow.fs.copy_files (which Ray's Checkpoint.as_directory uses), a read
    answered 500/503 is retried even when the file is smaller than the error (see _UNRETRIED_PYARROW_ERROR).
    A file under its final local name is complete.
    """
    import pyarrow.fs as pafs

    path = path.rstrip("/")
    info = filesystem.get_file_info(path)
    if info.type == pafs.FileType.NotFound:
        raise StorageError(f"{path!r} does not exist in {filesystem.type_name} storage")
    if info.type == pafs.FileType.File:
        files = [(info, Path(local))]
    else:
        files = [(i, Path(local, *i.path[len(path) + 1:].split("/")))
                 for i in filesystem.get_file_info(pafs.FileSelector(path, recursive=True))
                 if i.type == pafs.FileType.File]
    attempts = getattr(filesystem, "_kwargs", {}).get("max_attempts") or retry_settings()[1]
    out = []
    for info, dst in sorted(files, key=lambda f: f[0].path):
        dst.parent.mkdir(parents=True, exist_ok=True)
        with filesystem.open_input_file(info.path) as f, _local_atomic(dst) as w:
            for offset in range(0, info.size, _FS_READ_CHUNK):
                w.write(_read_at(f, min(_FS_READ_CHUNK, info.size - offset), offset, attempts, info.path))
        out.append(str(dst))
    return out


@contextlib.contextmanager
def local_dir(filesystem, path: str) -> Iterator[Path]:
    """A folder of a pyarrow filesystem as a local folder: the folder itself on a LocalFileSystem, else a
    temporary copy (download_from_fs), removed on exit."""
    import pyarrow.fs as pafs

    if isinstance(filesystem, pafs.LocalFileSystem):
        yield Path(path)
        return
    with tempfile.TemporaryDirectory(prefix="onade_fs_") as tmp:
        download_from_fs(filesystem, path, tmp)
        yield Path(tmp)


def iter_chunks(f: IO[bytes], size: int = 1 << 20) -> Iterator[bytes]:
    return iter(lambda: f.read(size), b"")


__all__ = [
    "StorageError", "TooLarge", "PARTIAL_SUFFIX", "is_s3", "split_s3", "join", "dirname", "basename", "s3_client",
    "retry_settings", "endpoint_url", "exists", "list_files", "read_bytes", "open_read", "sha256_of",
    "check_writable", "write_bytes_atomic", "write_file_atomic", "delete", "upload_dir", "download_dir",
    "pyarrow_fs", "download_from_fs", "local_dir",
]
