"""A real S3 endpoint on 127.0.0.1 for tests, benchmarks and `make demo`: moto's ThreadedMotoServer.

    with local_s3_server("onade") as s3:      # sets AWS_* in os.environ, restores them on exit
        make_shards(["demo_images", s3.url("shards")])

The server speaks the S3 REST API over HTTP, so pyarrow in this process and in Ray workers started inside the
`with` block (they inherit os.environ) talk to it exactly as they would to AWS or MinIO. It runs in a thread
of this process (port chosen by the OS when it binds: nothing to probe), so it lives as long as the `with`
block, and a driver's Ray workers and `ray job submit` jobs reach it while the driver runs. Everything is in
the server's memory and is dropped when it stops.
"""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

# Dummy credentials: moto accepts any, and fixed values keep runs reproducible.
ENV = {
    "AWS_ACCESS_KEY_ID": "onade-local-key",
    "AWS_SECRET_ACCESS_KEY": "onade-local-secret",
    "AWS_DEFAULT_REGION": "us-east-1",
    # pyarrow's AWS SDK otherwise probes the EC2 metadata service for a region/credentials.
    "AWS_EC2_METADATA_DISABLED": "true",
}
# Variables that would point the client elsewhere (a profile, a session token) are removed while the server runs.
_CLEARED = ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_ENDPOINT_URL_S3", "AWS_REGION")


@dataclass(frozen=True)
class LocalS3:
    endpoint_url: str
    bucket: str
    pid: int  # the process serving it: this one, or the child of own_process=True

    def url(self, *parts: str) -> str:
        """`s3://<bucket>/<parts joined by />`."""
        key = "/".join(p.strip("/") for p in parts if p.strip("/"))
        return f"s3://{self.bucket}/{key}" if key else f"s3://{self.bucket}"


_running_here = 0  # threaded servers of this process: they share moto's backends, reset when the last stops


@contextlib.contextmanager
def _threaded_server() -> Iterator[str]:
    """moto's server in a thread of this process; yields its endpoint URL."""
    global _running_here
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one INFO line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    _running_here += 1
    host, port = server.get_host_and_port()
    url = f"http://{host}:{port}"
    try:
        yield url
    finally:
        # moto's backends are per process, not per server: the last server to stop empties them, so that the
        # memory goes with it and another server's buckets stay while it runs.
        _running_here -= 1
        if not _running_here:
            with contextlib.suppress(OSError):
                urllib.request.urlopen(urllib.request.Request(url + "/moto-api/reset", method="POST"), timeout=10)
        server.stop()


@contextlib.contextmanager
def _server_process() -> Iterator[tuple[str, int]]:
    """The same server in a child process (`python -m data.local_s3`): it prints its URL, and serves until its
    stdin closes, so it also ends when this process dies."""
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.Popen([sys.executable, "-m", "data.local_s3"], cwd=root, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    try:
        url = proc.stdout.readline().strip()
        if not url.startswith("http://"):
            raise RuntimeError(f"moto S3 server process did not start (exit code {proc.poll()})")
        yield url, proc.pid
    finally:
        proc.stdin.close()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


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
def local_s3_server(bucket: str = "onade", *, own_process: bool = False) -> Iterator[LocalS3]:
    """Run a moto S3 server with `bucket` created and the AWS environment pointing at it.

    own_process: serve from a child process rather than a thread here, for a benchmark that must not count
    the server's CPU as its own or share its GIL with it."""
    with contextlib.ExitStack() as stack:
        if own_process:
            url, pid = stack.enter_context(_server_process())
        else:
            url, pid = stack.enter_context(_threaded_server()), os.getpid()
        stack.enter_context(aws_env(url))
        from data import storage

        storage.create_bucket(f"s3://{bucket}")
        yield LocalS3(endpoint_url=url, bucket=bucket, pid=pid)


if __name__ == "__main__":  # the child of local_s3_server(own_process=True)
    import argparse

    about = "Serve S3 on 127.0.0.1 until stdin closes; prints the endpoint URL (local_s3_server(own_process=True))."
    argparse.ArgumentParser(prog="python -m data.local_s3", description=about).parse_args()
    with _threaded_server() as served:
        print(served, flush=True)
        sys.stdin.read()

__all__ = ["LocalS3", "local_s3_server", "aws_env", "patched_environ", "ENV"]
