"""The two S3 client stacks side by side: boto3 and pyarrow, against one moto server, in one run.

    python -m bench.storage            # ~2 min on 2 cores; --quick for a smoke run

Both stacks talk to a moto S3 server on 127.0.0.1 in this process (data.local_s3), which shares the GIL with
them: the Python client (boto3) competes with the Python server for it, the C++ one (pyarrow) much less, so
on a real store boto3's figures would be somewhat better than here. Operations (best of `--repeat` runs):
- listing 10k keys (boto3's list_objects_v2 pages; pyarrow's recursive FileSelector);
- reading 20 shards of 4 MB, whole and streamed in 1 MiB reads;
- writing a checkpoint folder (a 50 MB file and four small ones): boto3's upload_fileobj per file, pyarrow's
  copy_files (what Ray Train does with a RunConfig storage_filesystem);
- retries: behind tests/fixtures/flaky_s3.py failing 10% of requests with a 500 or 503 (AWS_MAX_ATTEMPTS=10),
  whether each stack finishes reading files (small ones included: a 9-byte DeepSpeed `latest` is smaller
  than the error's XML), writing, and listing, and how many requests it made. `data.storage` is the
  repository's own API over the stack it chose, with its workarounds (its column in the timings too).
`--own-process` serves from a child process instead, for figures without the shared GIL.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data import storage  # noqa: E402
from data.local_s3 import local_s3_server  # noqa: E402

MiB = 1 << 20


def best(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def boto3_client():
    """A boto3 client from the standard AWS configuration (AWS_ENDPOINT_URL, AWS_MAX_ATTEMPTS), standard mode."""
    import boto3
    from botocore.config import Config

    mode = os.environ.get("AWS_RETRY_MODE", "standard")
    return boto3.session.Session().client("s3", config=Config(retries={"mode": mode}))


def fill_keys(s3, prefix: str, n: int) -> None:
    """n one-byte objects: put straight into moto's backend when it is in this process (10k PUTs would take
    most of the run), else PUT from a thread pool."""
    keys = [f"{prefix}/k{i:05d}" for i in range(n)]
    if s3.pid == os.getpid():
        from moto.core import DEFAULT_ACCOUNT_ID
        from moto.s3.models import s3_backends

        backend = s3_backends[DEFAULT_ACCOUNT_ID]["aws"]
        for k in keys:
            backend.put_object(s3.bucket, k, b"x")
        return
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda k: storage.write_bytes_atomic(s3.url(k), b"x"), keys))


# ---- the operations, once per stack -------------------------------------------------------------------

def b_list(c, url):
    bucket, key = storage.split_s3(url)
    return [o["Key"] for page in c.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=key + "/")
            for o in page.get("Contents", [])]


def p_list(fs, url):
    import pyarrow.fs as pafs

    return [i.path for i in fs.get_file_info(pafs.FileSelector(_path(url), recursive=True))
            if i.type == pafs.FileType.File]


def b_read(c, url):
    return c.get_object(Bucket=storage.split_s3(url)[0], Key=storage.split_s3(url)[1])["Body"].read()


def p_read(fs, url):
    with fs.open_input_file(_path(url)) as f:
        return f.read()


def b_stream(c, url):
    body = c.get_object(Bucket=storage.split_s3(url)[0], Key=storage.split_s3(url)[1])["Body"]
    return sum(len(b) for b in iter(lambda: body.read(MiB), b""))


def p_stream(fs, url):
    with fs.open_input_stream(_path(url)) as f:
        return sum(len(b) for b in iter(lambda: f.read(MiB), b""))


def b_write_dir(c, local: Path, url):
    from boto3.s3.transfer import TransferConfig

    cfg = TransferConfig(multipart_threshold=64 * MiB, multipart_chunksize=64 * MiB, max_concurrency=4)
    bucket, key = storage.split_s3(url)
    for p in sorted(local.rglob("*")):
        if p.is_file():
            with open(p, "rb") as f:
                c.upload_fileobj(f, bucket, f"{key}/{p.relative_to(local).as_posix()}", Config=cfg)


def p_write_dir(fs, local: Path, url):
    import pyarrow.fs as pafs

    pafs.copy_files(str(local), _path(url), destination_filesystem=fs)


def b_write(c, url, data: bytes):
    c.upload_fileobj(io.BytesIO(data), *storage.split_s3(url))


def p_write(fs, url, data: bytes):
    with fs.open_output_stream(_path(url)) as f:
        f.write(data)


def _path(url: str) -> str:
    return "/".join(storage.split_s3(url)).rstrip("/")


def checkpoint_folder(root: Path) -> Path:
    """What a DeepSpeed checkpoint of a small model holds: one big file and small ones."""
    (root / "deepspeed").mkdir(parents=True)
    (root / "deepspeed" / "mp_rank_00_model_states.pt").write_bytes(os.urandom(50 * MiB))
    (root / "latest").write_bytes(b"deepspeed")
    (root / "train_state.json").write_bytes(b'{"step": 100, "world_size": 2, "epoch": 0, "samples": 6400}')
    (root / "config.json").write_bytes(b"{" + b'"k": 1, ' * 120 + b'"z": 0}')
    (root / "deepspeed" / "rng.pt").write_bytes(os.urandom(16 * 1024))
    return root


# ---- the run ------------------------------------------------------------------------------------------

def s_stream(url):
    with storage.open_read(url) as f:
        return sum(len(b) for b in storage.iter_chunks(f, MiB))


def timings(s3, args, work: Path) -> list[tuple[str, float, float, float]]:
    c, (fs, _) = boto3_client(), storage.pyarrow_fs(s3.url())
    rows = []

    listing = s3.url("list")
    fill_keys(s3, "list", args.keys)
    assert len(b_list(c, listing)) == len(p_list(fs, listing)) == args.keys
    rows.append((f"list {args.keys} keys", best(lambda: b_list(c, listing), args.repeat),
                 best(lambda: p_list(fs, listing), args.repeat),
                 best(lambda: storage.list_files(listing, recursive=True), args.repeat)))

    shards = [s3.url("shards", f"shard-{i:06d}.tar") for i in range(args.shards)]
    blob = os.urandom(args.shard_mb * MiB)
    for u in shards:
        p_write(fs, u, blob)
    assert all(b_read(c, u) == p_read(fs, u) == blob for u in shards[:2])
    rows.append((f"read {args.shards} x {args.shard_mb} MB whole",
                 best(lambda: [b_read(c, u) for u in shards], args.repeat),
                 best(lambda: [p_read(fs, u) for u in shards], args.repeat),
                 best(lambda: [storage.read_bytes(u) for u in shards], args.repeat)))
    rows.append((f"read {args.shards} x {args.shard_mb} MB streamed (1 MiB reads)",
                 best(lambda: [b_stream(c, u) for u in shards], args.repeat),
                 best(lambda: [p_stream(fs, u) for u in shards], args.repeat),
                 best(lambda: [s_stream(u) for u in shards], args.repeat)))

    ckpt = checkpoint_folder(work / "ckpt")
    n = iter(range(1000))
    rows.append(("write a checkpoint folder (50 MB + 4 small files)",
                 best(lambda: b_write_dir(c, ckpt, s3.url("ckpt-b", str(next(n)))), args.repeat),
                 best(lambda: p_write_dir(fs, ckpt, s3.url("ckpt-p", str(next(n)))), args.repeat),
                 best(lambda: storage.upload_dir(ckpt, s3.url("ckpt-s", str(next(n)))), args.repeat)))
    return rows


def under_faults(s3, args) -> list[tuple[str, str, str]]:
    """(operation, stack, outcome) behind the flaky proxy, 10% of requests failing with a 500 or 503."""
    from tests.fixtures.flaky_s3 import FlakyS3

    small = [s3.url("retry", f"small-{i:02d}") for i in range(20)]
    mid = [s3.url("retry", f"mid-{i:02d}") for i in range(5)]
    data = {u: b"deepspeed" for u in small} | {u: os.urandom(256 * 1024) for u in mid}
    for u, d in data.items():
        storage.write_bytes_atomic(u, d)
    rows = []
    with FlakyS3(s3) as flaky, flaky.environment():
        c, (fs, _) = boto3_client(), storage.pyarrow_fs(s3.url())
        stacks = {
            "boto3": dict(read=lambda u: b_read(c, u), write=lambda u, d: b_write(c, u, d),
                          list=lambda u: b_list(c, u)),
            "pyarrow": dict(read=lambda u: p_read(fs, u), write=lambda u, d: p_write(fs, u, d),
                            list=lambda u: p_list(fs, u)),
            "data.storage": dict(read=storage.read_bytes, write=storage.write_bytes_atomic,
                                 list=lambda u: storage.list_files(u, recursive=True)),
        }
        big = os.urandom(8 * MiB)
        ops = {
            "read 20 x 9 B + 5 x 256 KB": lambda s: all(s["read"](u) == d for u, d in data.items()),
            "write 20 x 9 B + 8 MB": lambda s: [s["write"](s3.url("retry-w", f"w{i}"), b"deepspeed")
                                                for i in range(20)] + [s["write"](s3.url("retry-w", "big"), big)],
            f"list {args.keys} keys": lambda s: len(s["list"](s3.url("list"))) == args.keys,
        }
        for op, fn in ops.items():
            for name, stack in stacks.items():
                flaky.arm(0.1, seed=args.seed, kinds=("500", "503"), slow=0)
                try:
                    ok = fn(stack)
                    outcome = "finished" if ok is not False else "finished, wrong result"
                except Exception as e:  # noqa: BLE001 - a stack giving up is what is measured
                    outcome = f"FAILED ({type(e).__name__}: {str(e).splitlines()[0][:90]})"
                finally:
                    requests, faults = flaky.requests, flaky.faults
                    flaky.disarm()
                rows.append((op, name, f"{outcome}; {requests} requests, {faults} faults"))
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--keys", type=int, default=10_000)
    p.add_argument("--shards", type=int, default=20)
    p.add_argument("--shard-mb", type=int, default=4)
    p.add_argument("--repeat", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="1k keys, 4 shards, one repeat")
    p.add_argument("--own-process", action="store_true",
                   help="the server in a child process: no GIL shared with the clients (10k keys PUT one by one)")
    args = p.parse_args(argv)
    if args.quick:
        args.keys, args.shards, args.repeat = 1000, 4, 1
    start = time.perf_counter()
    with (tempfile.TemporaryDirectory(prefix="bench_storage_") as tmp,
          local_s3_server("bench-storage", own_process=args.own_process) as s3):
        rows = timings(s3, args, Path(tmp))
        print(f"{'operation':<52} {'boto3 s':>8} {'pyarrow s':>9} {'storage s':>9} {'pyarrow/boto3':>13} "
              f"{'storage/boto3':>13}")
        for op, b, a, st in rows:
            print(f"{op:<52} {b:8.3f} {a:9.3f} {st:9.3f} {a / b:13.2f} {st / b:13.2f}", flush=True)
        print("\nretries: 10% of requests answered 500/503 by tests/fixtures/flaky_s3.py, AWS_MAX_ATTEMPTS=10")
        for op, name, outcome in under_faults(s3, args):
            print(f"{op:<30} {name:<13} {outcome}", flush=True)
    print(f"\n{time.perf_counter() - start:.0f} s in all")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
