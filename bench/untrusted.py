"""What the untrusted-input rules (data/untrusted.py) cost, each against the same work done without them.

    python bench/untrusted.py                 # 4,000 files, 25 Mpx image for the conversion
    python bench/untrusted.py --files 1000 --megapixels 10 --rounds 3    # quicker

Measured side by side, the minimum over --rounds alternating rounds (the machine is shared):
  1. listing a folder: `untrusted.walk_local` (lstat, realpath of symlinks, regular-file check per entry)
     vs `os.walk` yielding paths;
  2. reading every file: `untrusted.read` (realpath check, O_NOFOLLOW open, fstat, bounded read) vs `open().read()`;
  3. reading from S3 (moto on 127.0.0.1): `storage.read_bytes(url, max_bytes=)` (size checked from the response
     headers) vs `storage.read_bytes(url)`;
  4. refusing a 30000x30000 PNG bomb from its header vs decoding one ordinary 1 Mpx PNG;
  5. `images.load` of a large RGBA PNG, converted to RGB in bands vs in one piece: seconds, and the peak RSS
     of a fresh process that reads and loads it.
"""

from __future__ import annotations

import argparse
import io
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from data import images, storage, untrusted  # noqa: E402


def seconds(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def pair(name: str, checked, plain, rounds: int) -> None:
    a, b = [], []
    for _ in range(rounds):  # alternate, so a burst of load hits both
        a.append(seconds(checked))
        b.append(seconds(plain))
    print(f"{name:<44} checked {min(a) * 1e3:9.1f} ms   plain {min(b) * 1e3:9.1f} ms   ratio {min(a) / min(b):6.2f}")


def write_tree(root: Path, n: int) -> None:
    rng = np.random.default_rng(0)
    for i in range(n):
        d = root / f"d{i % 20:02d}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"img_{i:05d}.png").write_bytes(rng.integers(0, 256, 3000, np.uint8).tobytes())
    for i in range(0, n, 100):  # a few symlinks inside the root, as a real folder may have
        os.symlink(root / f"d{i % 20:02d}/img_{i:05d}.png", root / f"link_{i:05d}.png")


CONVERT = """
import resource, sys, time
sys.path.insert(0, {root!r})
from data import images
data = open({path!r}, "rb").read()
if {whole}:
    images.BAND_PIXELS = 1 << 62
t0 = time.perf_counter(); images.load(data, 64); dt = time.perf_counter() - t0
print(dt, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e3)
"""


def convert(path: str, whole: bool) -> tuple[float, float]:
    out = subprocess.run([sys.executable, "-c", CONVERT.format(root=str(ROOT), path=path, whole=whole)],
                         capture_output=True, text=True, check=True).stdout.split()
    return float(out[0]), float(out[1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--files", type=int, default=4000)
    ap.add_argument("--megapixels", type=float, default=25)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    print(f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs; {args.files} files, "
          f"min of {args.rounds} rounds")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp, "in")
        write_tree(root, args.files)
        paths = [str(p) for p in sorted(root.rglob("*.png"))]

        pair("1. list a folder", lambda: list(untrusted.walk_local(str(root))),
             lambda: [os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs], args.rounds)

        def plain_read():
            for p in paths:
                with open(p, "rb") as f:
                    f.read()
        pair("2. read every file (local)", lambda: [untrusted.read(p, str(root), 1 << 20) for p in paths],
             plain_read, args.rounds)

        from data.local_s3 import local_s3_server

        with local_s3_server("bench-untrusted") as s3:
            urls = [s3.url(f"in/{i:04d}.bin") for i in range(min(200, args.files))]
            for u in urls:
                storage.write_bytes_atomic(u, os.urandom(3000))
            pair(f"3. read {len(urls)} S3 objects",
                 lambda: [storage.read_bytes(u, max_bytes=1 << 20) for u in urls],
                 lambda: [storage.read_bytes(u) for u in urls], args.rounds)

        from tests.hostile_inputs import png_bomb

        bomb = png_bomb()
        buf = io.BytesIO()
        Image.fromarray(np.random.default_rng(1).integers(0, 256, (1000, 1000, 3), np.uint8)).save(buf, "PNG")
        ordinary = buf.getvalue()

        def refuse():
            try:
                images.load(bomb, 32)
            except images.ImageSkip:
                return
            raise AssertionError("the bomb was decoded")
        pair("4. refuse a 900 Mpx bomb vs decode 1 Mpx", refuse, lambda: images.load(ordinary, 32), args.rounds)

        side = int((args.megapixels * 1e6) ** 0.5)
        big = os.path.join(tmp, "big.png")
        rgba = np.zeros((side, side, 4), np.uint8)
        rgba[:, : side // 2] = (200, 30, 30, 128)
        Image.fromarray(rgba).save(big, compress_level=1)
        del rgba
        banded = [convert(big, False) for _ in range(2)]
        whole = [convert(big, True) for _ in range(2)]
        (tb, mb), (tw, mw) = min(banded), min(whole)
        print(f"5. load a {side}x{side} RGBA PNG                banded {tb:.2f} s {mb:5.0f} MB   "
              f"whole {tw:.2f} s {mw:5.0f} MB   time ratio {tb / tw:.2f}, peak RSS ratio {mb / mw:.2f}")
    print(f"peak RSS of this process {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e3:.0f} MB")


if __name__ == "__main__":
    main()
