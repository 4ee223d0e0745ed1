"""A real S3 endpoint on 127.0.0.1 for tests, benchmarks and `make demo`: moto's server in a subprocess.

    with local_s3_server("onade") as s3:      # sets AWS_* in os.environ, restores them on exit
        make_shards(["demo_images", s3.url("shards")])

The server speaks the S3 REST API over HTTP, so boto3, pyarrow and Ray workers started inside the
`with` block (they inherit os.environ) talk to it exactly as they would to AWS or MinIO.
Everything is in the server's memory and disappears when it stops.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass

# Dummy credentials: moto accepts any, and fixed values keep runs reproducible.
ENV = {
    "AWS_ACCESS_KEY_ID": "onade-local-key",
    "AWS_SECRET_ACCESS_KEY": "onade-local-secret",
    "AWS_DEFAULT_REGION": "us-east-1",
    # pyarrow's AWS SDK otherwise probes the EC2 metadata service for a region/credentials.
    "AWS_EC2_METADATA_DISABLED": "true",
}
# Variables that would point boto3 elsewhere (a profile, a session token) are removed while the server runs.
_CLEARED = ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_ENDPOINT_URL_S3", "AWS_REGION")


@dataclass(frozen=True)
class LocalS3:
    endpoint_url: str
    bucket: str
    pid: int

    def url(self, *parts: str) -> str:
        """`s3://<bucket>/<parts joined by />`."""
        key = "/".join(p.strip("/") for p in parts if p.strip("/"))
        return f"s3://{self.bucket}/{key}" if key else f"s3://{self.bucket}"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_until_up(url: str, proc: subprocess.Popen, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        try:
            with urllib.request.urlopen(url + "/moto-api/", timeout=1):
                return True
        except urllib.error.HTTPError:
            return True  # the server answered, even if not with 200
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
            time.sleep(0.1)
    return False


def start_server(timeout: float = 30.0, attempts: int = 3) -> tuple[subprocess.Popen, str]:
    """Start moto's S3 server on a free 127.0.0.1 port; returns (process, endpoint URL)."""
    last = ""
    for _ in range(attempts):
        port = free_port()
        env = {**os.environ, **ENV}
        proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
        url = f"http://127.0.0.1:{port}"
        if _wait_until_up(url, proc, timeout):
            # Nothing reads stderr from here on; discard it so a chatty server never blocks on a full pipe.
            proc.stderr.close()
            proc.stderr = None
            return proc, url
        # The port may have been taken between free_port() and the bind: try another one.
        stop_server(proc)
        last = proc.stderr.read().decode(errors="replace")[-2000:] if proc.stderr else ""
    raise RuntimeError(f"moto S3 server did not start after {attempts} attempts: {last}")


def stop_server(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@contextlib.contextmanager
def aws_env(endpoint_url: str) -> Iterator[None]:
    """Point the standard AWS variables at `endpoint_url` for the duration; restore them after."""
    with patched_environ({**{k: None for k in _CLEARED}, **ENV, "AWS_ENDPOINT_URL": endpoint_url}):
        yield


@contextlib.contextmanager
def patched_environ(values: dict[str, str | None]) -> Iterator[None]:
    """os.environ with `values` set (None: removed) for the duration, restored after."""
    saved = {k: os.environ.get(k) for k in values}
    try:
        for k, v in values.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextlib.contextmanager
def local_s3_server(bucket: str = "onade") -> Iterator[LocalS3]:
    """Run a moto S3 server with `bucket` created and the AWS environment pointing at it."""
    proc, url = start_server()
    try:
        with aws_env(url):
            from data import storage

            storage.s3_client().create_bucket(Bucket=bucket)
            yield LocalS3(endpoint_url=url, bucket=bucket, pid=proc.pid)
    finally:
        stop_server(proc)


__all__ = ["LocalS3", "local_s3_server", "start_server", "stop_server", "aws_env", "patched_environ", "free_port",
           "ENV"]
