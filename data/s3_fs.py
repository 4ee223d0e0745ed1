"""The S3 client behind data.storage: a pyarrow S3FileSystem configured from the standard AWS settings, its
errors turned into messages a user can act on, and reads retried where pyarrow does not retry them.

pyarrow is the one S3 stack because Ray Data and Ray Train (RunConfig storage_filesystem) take a
pyarrow.fs.FileSystem; bench/storage.py measures it against boto3. pyarrow's AWS SDK reads credentials itself
(environment, profiles, roles, SSO) but neither AWS_ENDPOINT_URL nor the retry settings, so those are read
here from the environment and ~/.aws/config as botocore reads them, and passed on explicitly.
"""

from __future__ import annotations

import configparser
import functools
import io
import os
import random
import re
import time
from typing import Any
from urllib.parse import urlparse, urlunparse


class StorageError(ValueError):
    """Storage is unreachable, missing or denied; the message says which URL and how to fix it."""


class TooLarge(StorageError):
    """An object is over the size its reader allows (known before its bytes are read)."""

    def __init__(self, url: str, size: int, limit: int):
        super().__init__(f"{url!r} is {size} bytes, over the limit of {limit}")
        self.size, self.limit = size, limit


# ---- the AWS configuration ----------------------------------------------------------------------------

# A filesystem is reused while these are unchanged (a test or demo may point the environment elsewhere).
_ENV = ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_IGNORE_CONFIGURED_ENDPOINT_URLS", "AWS_PROFILE",
        "AWS_DEFAULT_PROFILE", "AWS_DEFAULT_REGION", "AWS_REGION", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN", "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE", "AWS_MAX_ATTEMPTS", "AWS_RETRY_MODE")
# Total attempts per request when the user configured none: the defaults of botocore's modes.
_DEFAULT_ATTEMPTS = {"legacy": 5, "standard": 3, "adaptive": 3}


def _profile_name() -> str:
    return os.environ.get("AWS_PROFILE") or os.environ.get("AWS_DEFAULT_PROFILE") or "default"


def _ini(env: str, default: str, section: str) -> dict[str, str]:
    parser = configparser.RawConfigParser()
    parser.read(os.path.expanduser(os.environ.get(env) or default))
    return dict(parser[section]) if parser.has_section(section) else {}


def _config() -> dict[str, str]:
    """The profile's section of ~/.aws/config (AWS_CONFIG_FILE), with its `services` s3 settings as s3_*."""
    name = _profile_name()
    prof = _ini("AWS_CONFIG_FILE", "~/.aws/config", "default" if name == "default" else f"profile {name}")
    if prof.get("services"):
        nested = _ini("AWS_CONFIG_FILE", "~/.aws/config", f"services {prof['services']}").get("s3", "")
        for line in nested.splitlines():  # "s3 =\n  endpoint_url = ..." is a nested block
            key, _, value = line.partition("=")
            if value:
                prof[f"s3_{key.strip()}"] = value.strip()
    return prof


def retry_settings() -> tuple[str, int]:
    """(retry mode, total attempts per request) as botocore resolves them: AWS_RETRY_MODE / AWS_MAX_ATTEMPTS,
    else the profile's `retry_mode` / `max_attempts` in ~/.aws/config, else "standard" and its 3 attempts."""
    prof = _config()
    mode = os.environ.get("AWS_RETRY_MODE") or prof.get("retry_mode") or "standard"
    attempts = os.environ.get("AWS_MAX_ATTEMPTS") or prof.get("max_attempts")
    return mode, int(attempts) if attempts else _DEFAULT_ATTEMPTS.get(mode, 3)


def _region(prof: dict[str, str]) -> str:
    return os.environ.get("AWS_DEFAULT_REGION") or os.environ.get("AWS_REGION") or prof.get("region") or "us-east-1"


def _endpoint(prof: dict[str, str]) -> str | None:
    """The configured endpoint (service-specific first), None for AWS's own."""
    if os.environ.get("AWS_IGNORE_CONFIGURED_ENDPOINT_URLS", "").lower() == "true":
        return None
    return (os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
            or prof.get("s3_endpoint_url") or prof.get("endpoint_url") or None)


def _static_credentials(prof: dict[str, str]) -> dict[str, str]:
    """Keys from the environment or the profile, passed explicitly so that they travel with a pickled
    filesystem to Ray workers. Anything else (roles, SSO, web identity) is left to pyarrow's own AWS chain,
    which keeps refreshing it in long jobs."""
    env = os.environ
    if env.get("AWS_ACCESS_KEY_ID") and env.get("AWS_SECRET_ACCESS_KEY"):
        src = {"key": env["AWS_ACCESS_KEY_ID"], "secret": env["AWS_SECRET_ACCESS_KEY"],
               "token": env.get("AWS_SESSION_TOKEN")}
    else:
        creds = _ini("AWS_SHARED_CREDENTIALS_FILE", "~/.aws/credentials", _profile_name()) or prof
        src = {"key": creds.get("aws_access_key_id"), "secret": creds.get("aws_secret_access_key"),
               "token": creds.get("aws_session_token")}
    if not (src["key"] and src["secret"]):
        return {}
    out = {"access_key": src["key"], "secret_key": src["secret"]}
    if src["token"]:
        out["session_token"] = src["token"]
    return out


def endpoint_url() -> str:
    """The S3 endpoint in use, with any user:password part removed so it is safe to print."""
    prof = _config()
    url = _endpoint(prof) or f"https://s3.{_region(prof)}.amazonaws.com"
    p = urlparse(url)
    if p.username or p.password:
        p = p._replace(netloc=p.hostname + (f":{p.port}" if p.port else ""))
    return urlunparse(p)


_filesystems: dict[tuple, Any] = {}


def s3_filesystem():
    """A pyarrow S3FileSystem from the standard AWS configuration (cached per process and environment)."""
    key = (os.getpid(), tuple(os.environ.get(k) for k in _ENV))
    if key not in _filesystems:
        prof = _config()
        # Small objects go up in one PUT (on close) rather than as a multipart upload of one part.
        kwargs: dict[str, Any] = {"region": _region(prof), "allow_delayed_open": True, **_static_credentials(prof)}
        endpoint = _endpoint(prof)
        if endpoint:
            p = urlparse(endpoint)
            kwargs["endpoint_override"] = p.netloc.rpartition("@")[2]
            kwargs["scheme"] = p.scheme or "https"
        mode, attempts = retry_settings()
        _filesystems[key] = _retrying_s3_class()(retry_mode=mode, max_attempts=attempts, **kwargs)
    return _filesystems[key]


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


def max_attempts_of(filesystem) -> int:
    """The attempts per request a filesystem of s3_filesystem() was built with (else the environment's)."""
    return getattr(filesystem, "_kwargs", {}).get("max_attempts") or retry_settings()[1]


# ---- errors ---------------------------------------------------------------------------------------------

_DENIED = ("ACCESS_DENIED", "INVALID_ACCESS_KEY_ID", "SIGNATURE_DOES_NOT_MATCH", "MISSING_AUTHENTICATION_TOKEN",
           "INVALID_SIGNATURE", "UNRECOGNIZED_CLIENT", "EXPIRED_TOKEN")


def error_code(e: BaseException) -> str:
    """The AWS error of a pyarrow S3 failure ("NO_SUCH_BUCKET", "ACCESS_DENIED", "HTTP 403", ...), or ""."""
    msg = str(e)
    if m := re.search(r"AWS Error (\w+)", msg):
        code = m.group(1)
        if code == "UNKNOWN" and (s := re.search(r"HTTP status (\d+)", msg)):
            return f"HTTP {s.group(1)}"
        return code
    return ""


def storage_error(e: BaseException, url: str, action: str) -> StorageError:
    """Translate a pyarrow failure into a message a user can act on (no credentials in it)."""
    where = f"{action} {url} (endpoint {endpoint_url()})"
    code = error_code(e)
    if isinstance(e, FileNotFoundError):  # pyarrow says the same for a missing bucket: tell them apart
        return StorageError(f"cannot {where}: " + ("no such object" if _bucket_exists(url) else
                                                    "the bucket does not exist; create it or fix the URL"))
    if code == "NO_SUCH_BUCKET":
        return StorageError(f"cannot {where}: the bucket does not exist; create it or fix the URL")
    if code in ("NETWORK_CONNECTION", "REQUEST_TIMEOUT"):
        return StorageError(f"cannot {where}: the endpoint is unreachable; check AWS_ENDPOINT_URL "
                            "and that the store is running")
    if code in _DENIED or code == "HTTP 403":
        if not _static_credentials(_config()) and not _other_credentials():
            return StorageError(f"cannot {where}: access denied ({code}) and no AWS credentials are configured "
                                "(at most an instance role was tried); set AWS_ACCESS_KEY_ID and "
                                "AWS_SECRET_ACCESS_KEY or configure a profile (~/.aws/credentials)")
        return StorageError(f"cannot {where}: access denied ({code}); check the AWS credentials "
                            "and the bucket policy")
    first = str(e).splitlines()[0] if str(e) else type(e).__name__
    return StorageError(f"cannot {where}: S3 error {code or type(e).__name__}: {first}")


def _bucket_exists(url: str) -> bool:
    import pyarrow.fs as pafs

    bucket = url[len("s3://"):].partition("/")[0]
    try:
        return s3_filesystem().get_file_info(bucket).type != pafs.FileType.NotFound
    except failures():
        return True  # unknown: say what pyarrow said


def _other_credentials() -> bool:
    """Whether a credential source that pyarrow's AWS chain resolves by itself is configured (the instance
    metadata service is not counted: it is tried everywhere, configured or not)."""
    prof = _config()
    env = ("AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
           "AWS_CONTAINER_CREDENTIALS_FULL_URI")
    return any(os.environ.get(k) for k in env) or any(k in prof for k in ("role_arn", "sso_session", "sso_start_url",
                                                                          "credential_process"))


def failures():
    """The exceptions a pyarrow filesystem raises for a failed request or an unusable path."""
    import pyarrow as pa

    return (OSError, pa.ArrowException)


# ---- reads pyarrow does not retry ------------------------------------------------------------------------

# The AWS SDK for C++ (pyarrow's S3 client) reads a ranged GET into a buffer of the range's size and writes an
# error's body there too: the XML of a 500 or 503 does not fit the read of a file smaller than it (a few hundred
# bytes: DeepSpeed's `latest`, train_state.json) or the last few hundred bytes of a larger one, and the SDK
# reports the overflow as an INTERNAL_FAILURE it marks non-retryable, so no retry strategy sees it
# (apache/doris#66557 traces the mechanism; bench/storage.py shows pyarrow alone giving up). Such a read is
# retried here, as the SDK retries a 503; a read never changes the store, so that is always safe. Drop this
# once pyarrow retries it (tests/test_flaky_train.py then fails where it shows pyarrow giving up).
_UNRETRIED_PYARROW_ERROR = "Failed to flush response stream"


def read_at(f, nbytes: int, offset: int, attempts: int, what: str) -> bytes:
    """`f.read_at(nbytes, offset)` of a pyarrow random-access file, retried as above."""
    attempt = 1
    while True:
        try:
            return f.read_at(nbytes, offset)
        except OSError as e:
            if _UNRETRIED_PYARROW_ERROR not in str(e) or attempt >= attempts:
                raise OSError(f"cannot read {what} after {attempt} attempt(s): {e}") from e
        time.sleep(random.random() * min(20.0, 2.0 ** (attempt - 1)))  # botocore's standard-mode backoff
        attempt += 1


class RetryingReader(io.RawIOBase):
    """A pyarrow random-access file as a sequential Python stream whose reads go through read_at (wrap it in
    io.BufferedReader: each readinto is one ranged GET)."""

    def __init__(self, f, attempts: int, what: str):
        self._f, self._attempts, self._what = f, attempts, what
        self._size, self._pos = f.size(), 0

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        n = min(len(b), self._size - self._pos)
        if n <= 0:
            return 0
        data = read_at(self._f, n, self._pos, self._attempts, self._what)
        b[:len(data)] = data
        self._pos += len(data)
        return len(data)

    def close(self) -> None:
        if not self.closed:
            self._f.close()
        super().close()


__all__ = ["StorageError", "TooLarge", "retry_settings", "endpoint_url", "s3_filesystem", "max_attempts_of",
           "error_code", "storage_error", "failures", "read_at", "RetryingReader"]
