"""Data benchmark: Ray Data pipeline vs a single-process webdataset + PIL loop, shard build rate, build memory.

    python bench/data.py                      # defaults: 8,000 64px images, 2 CPUs, 10,000-image memory run
    python bench/data.py --num 2000 --mem-images 2000   # quicker
    ray job submit --working-dir . -- python bench/data.py --cpus 0   # on a cluster (0 = use what Ray has)

Everything runs against a real S3 endpoint: a moto server on 127.0.0.1 (data.local_s3), so both
readers pay for HTTP. Measured, side by side in one run:
  1. make_shards build rate (synthetic image folder -> S3 shards) with 1 and with N worker processes;
  2. samples/s of `ray_jobs.data.shard_dataset(train=True)` consumed with `iter_torch_batches`
     (decode, random crop/flip, random caption, tokenize, torch batches) with 1 CPU and with N CPUs,
     against the same work done by one process with `webdataset.WebDataset` + PIL + the tokenizer;
  3. the same two readers over the same shards copied to a local folder (no HTTP server on the CPUs);
  4. peak RSS of make_shards (main process and its workers) on 1/10 and all of --mem-images small images,
     in the image phase (must be flat: the build streams) and including tokenizer training.
The machine's other load is printed first: on a shared box, compare only numbers from one run.

    python bench/data.py --tolerant --num 8000   # only: the shard reader of shard_dataset vs Ray's

`--tolerant` measures only the read stage (tar stream -> rows of raw bytes, no decode): rows/s of
`ray_jobs.data.read_shards` (TarShards, which survives damaged shards) against `ray.data.read_webdataset`
on the same intact shards, on S3 and in a local folder, the two readers alternating in one Ray session.
"""

from __future__ import annotations

import argparse
import importlib
import io
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from data import storage  # noqa: E402
from data.local_s3 import local_s3_server  # noqa: E402
from data.make_shards import make_shards  # noqa: E402
from data.synthetic import write_synthetic  # noqa: E402


def build_rate(images: str, dest: str, size: int, workers: int) -> float:
    t = time.perf_counter()
    summary = make_shards(images, dest, image_size=size, shard_size=1000, workers=workers, progress=False)
    return summary.num_samples / (time.perf_counter() - t)


class TreeCpu:
    """CPU seconds (user + system) used by this process and its descendants (Ray's raylet, GCS and
    workers) between start() and stop(), polled every 100 ms so that workers Ray retires mid-epoch
    still count with their last reading. Processes in `exclude` (the S3 server) are left out."""

    def __init__(self, exclude: set[int]):
        import psutil

        self.me, self.exclude = psutil.Process(), exclude
        self.before: dict[int, float] = {}
        self.last: dict[int, float] = {}

    def _poll(self) -> None:
        import psutil

        for p in [self.me, *self.me.children(recursive=True)]:
            if p.pid in self.exclude:
                continue
            try:
                cpu = sum(p.cpu_times()[:2])
            except psutil.Error:
                continue
            self.last[p.pid] = cpu

    def start(self) -> "TreeCpu":
        import threading

        self._poll()
        self.before = dict(self.last)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            self._poll()

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        self._poll()
        # A process first seen mid-run started after start(): all of its CPU is part of the run.
        return sum(cpu - self.before.get(pid, 0.0) for pid, cpu in self.last.items())


def single_process_loop(urls: list[str], tok, size: int, max_tokens: int,
                        batch_size: int) -> tuple[int, float, float]:
    """The natural baseline: one process, webdataset's tar reader over the same S3 objects, PIL, tokenizer.

    Returns (samples, wall seconds, CPU seconds)."""
    import torch
    import webdataset as wds
    from PIL import Image

    # webdataset has no S3 opener of its own (it shells out to the aws CLI); give it data.storage's stream.
    importlib.import_module("webdataset.gopen").gopen_schemes["s3"] = \
        lambda url, mode="rb", bufsize=8192, **kw: storage.open_read(url)
    rng = np.random.default_rng(0)
    n, imgs, caps = 0, [], []
    t, cpu = time.perf_counter(), time.process_time()
    for sample in wds.WebDataset(urls, shardshuffle=False, empty_check=False):
        img = np.asarray(Image.open(io.BytesIO(sample["png"])).convert("RGB"))
        h, w = img.shape[:2]
        top, left = int(rng.integers(0, h - size + 1)), int(rng.integers(0, w - size + 1))
        img = img[top:top + size, left:left + size]
        if rng.random() < 0.5:
            img = img[:, ::-1]
        lines = sample["txt"].decode().splitlines()
        imgs.append(img)
        caps.append(lines[int(rng.integers(len(lines)))])
        if len(imgs) == batch_size:
            # Same batching as the Ray pipeline: fill a preallocated array (np.stack over flipped
            # views is ~20x slower and would make the baseline look worse than it need be).
            image = np.empty((len(imgs), size, size, 3), np.uint8)
            for i, im in enumerate(imgs):
                image[i] = im
            batch = {"image": torch.from_numpy(image)}
            batch["tokens"], batch["length"] = tok.encode_batch(caps, max_tokens)
            n += len(imgs)
            imgs, caps = [], []
    n += len(imgs)
    return n, time.perf_counter() - t, time.process_time() - cpu


def ray_pipeline(prefix: str, tok, size: int, max_tokens: int, batch_size: int, cpus: int,
                 exclude: set[int]) -> dict:
    import ray
    import ray.data

    from ray_jobs.data import shard_dataset

    # Ray starts its workers at nice 15; the baseline runs at nice 0. On a machine other jobs share,
    # that alone decides the comparison, so both run at the same priority here (as `ray job submit`
    # does for its driver).
    os.environ["RAY_worker_niceness"] = "0"
    ray.init(num_cpus=cpus or None, include_dashboard=False, log_to_driver=False,
             _temp_dir=tempfile.mkdtemp(prefix="ray_", dir="/tmp"), ignore_reinit_error=True)
    try:
        ray.data.DataContext.get_current().enable_progress_bars = False
        ds = shard_dataset(prefix, size, max_tokens, tok, train=True)
        out = {}
        for epoch in ("cold", "warm"):  # cold includes starting Ray's worker processes
            t, cpu, n = time.perf_counter(), TreeCpu(exclude).start(), 0
            for batch in ds.iter_torch_batches(batch_size=batch_size):
                n += len(batch["length"])
            out[epoch] = n / (time.perf_counter() - t)
            out[f"{epoch}_cpu_ms_per_sample"] = 1000 * cpu.stop() / n
            out["samples"] = n
        return out
    finally:
        ray.shutdown()


def compare_readers(urls: list[str], cpus: int, rounds: int = 5) -> dict:
    """Rows/s of the read stage alone (no decode) for shard_dataset's tolerant reader and Ray's WebDataset
    reader over the same shards, alternating so that load from other jobs falls on both; best of `rounds`."""
    import ray
    import ray.data

    from ray_jobs.data import read_shards

    os.environ["RAY_worker_niceness"] = "0"
    ray.init(num_cpus=cpus or None, include_dashboard=False, log_to_driver=False,
             _temp_dir=tempfile.mkdtemp(prefix="ray_", dir="/tmp"), ignore_reinit_error=True)
    try:
        ray.data.DataContext.get_current().enable_progress_bars = False
        fs, _ = storage.pyarrow_fs(urls[0])
        paths = [u[len("s3://"):] if storage.is_s3(u) else u for u in urls]
        readers = {"tolerant": lambda: read_shards(urls),
                   "ray": lambda: ray.data.read_webdataset(paths, filesystem=fs, decoder=None, num_cpus=0.25)}
        best = {k: 0.0 for k in readers}
        n = {}
        for _ in range(rounds + 1):  # the first round warms Ray's workers up and is not counted
            for name, make in readers.items():
                t, rows = time.perf_counter(), 0
                for batch in make().iter_batches(batch_size=256, batch_format="numpy"):
                    rows += len(batch["__key__"])
                rate = rows / (time.perf_counter() - t)
                if name in n:
                    best[name] = max(best[name], rate)
                n[name] = rows
        assert n["tolerant"] == n["ray"], n
        return {**best, "rows": n["ray"], "ratio": best["tolerant"] / best["ray"]}
    finally:
        ray.shutdown()


def tolerant_only(work: Path, args) -> int:
    with local_s3_server("onade-bench", own_process=True) as s3:
        images = str(work / "images")
        write_synthetic(images, args.num, image_size=args.image_size, seed=0)
        prefix, local = s3.url("shards"), str(work / "local_shards")
        for dest in (prefix, local):  # the same bytes: make_shards is deterministic
            make_shards(images, dest, image_size=args.image_size, shard_size=1000, workers=args.cpus or 1,
                        progress=False)
        from ray_jobs.data import resolve_shards

        on_s3 = compare_readers(resolve_shards(prefix), args.cpus)
        on_disk = compare_readers(resolve_shards(local), args.cpus)
    for where, r in (("S3", on_s3), ("local folder", on_disk)):
        print(f"read stage, {where}, {r['rows']} samples of {args.image_size}px: tolerant reader {r['tolerant']:.0f} "
              f"rows/s, Ray read_webdataset {r['ray']:.0f} rows/s", flush=True)
    print(json.dumps({"s3": on_s3, "local": on_disk}))
    print(f"RESULT tolerant reader / Ray read_webdataset, read stage ({args.cpus} CPUs): S3 x{on_s3['ratio']:.2f}, "
          f"local folder x{on_disk['ratio']:.2f}")
    return 0


def peak_rss(images: str, dest: str, workers: int) -> dict[str, float]:
    """Peak RSS (MiB) of a make_shards run into a local folder, polled every 20 ms, by phase.

    "stream" is the image phase (until skipped.jsonl is written), where memory must not grow with the
    input; "tokenizer" adds sentencepiece training, which holds the captions (at most
    Tokenizer.train's max_sentences of them). Children are the forkserver and its workers.
    """
    import psutil

    t = time.perf_counter()
    proc = psutil.Popen([sys.executable, "-m", "data.make_shards", images, dest, "--image-size", "16",
                         "--shard-size", "1000", "--workers", str(workers), "--no-progress"], cwd=ROOT,
                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    peak = {"stream_main": 0, "stream_children": 0, "main": 0, "all": 0}
    marker = Path(dest, "skipped.jsonl")
    while proc.poll() is None:
        try:
            main_rss = proc.memory_info().rss
            kids = [c.memory_info().rss for c in proc.children(recursive=True)]
        except psutil.Error:
            continue  # a process ended between listing and reading it
        if not marker.exists():
            peak["stream_main"] = max(peak["stream_main"], main_rss)
            peak["stream_children"] = max(peak["stream_children"], sum(kids))
        peak["main"] = max(peak["main"], main_rss)
        peak["all"] = max(peak["all"], main_rss + sum(kids))
        time.sleep(0.02)
    if proc.returncode != 0:
        raise RuntimeError(f"make_shards failed: {proc.stderr.read().decode()[-2000:]}")
    out = {k: v / 2**20 for k, v in peak.items()}
    out["images_per_s"] = len(os.listdir(images)) / 2 / (time.perf_counter() - t)
    return out


def main(argv: list[str] | None = None) -> int:
    import shutil

    work = Path(tempfile.mkdtemp(prefix="onade_bench_data_"))
    try:
        return run(work, argv)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run(work: Path, argv: list[str] | None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--num", type=int, default=8000, help="images for the throughput runs")
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--cpus", type=int, default=2, help="CPUs for the parallel runs (0: all Ray finds)")
    ap.add_argument("--mem-images", type=int, default=10_000, help="images for the memory run")
    ap.add_argument("--tolerant", action="store_true",
                    help="only compare shard_dataset's shard reader with Ray's read_webdataset (read stage)")
    args = ap.parse_args(argv)
    print(f"load average before the run: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs", flush=True)
    if args.tolerant:
        return tolerant_only(work, args)
    cpus = args.cpus or os.cpu_count()
    results: dict = {"num": args.num, "image_size": args.image_size, "cpus": cpus,
                     "load_average_before": os.getloadavg()}
    with local_s3_server("onade-bench", own_process=True) as s3:
        images = str(work / "images")
        t = time.perf_counter()
        write_synthetic(images, args.num, image_size=args.image_size, seed=0)
        print(f"wrote {args.num} synthetic {args.image_size}px images in {time.perf_counter() - t:.1f}s", flush=True)

        prefix = s3.url("shards")
        r1 = build_rate(images, s3.url("build1"), args.image_size, 1)
        rn = build_rate(images, prefix, args.image_size, cpus)
        results["build"] = {"workers_1": r1, f"workers_{cpus}": rn}
        print(f"make_shards -> S3: {r1:.0f} samples/s with 1 worker, {rn:.0f} with {cpus} "
              f"(x{rn / r1:.2f})", flush=True)

        from ray_jobs.data import resolve_shards, tokenizer_for

        tok = tokenizer_for(prefix)
        exclude = {s3.pid}  # the S3 server's CPU is storage, not either reader's cost
        n, dt, cpu = single_process_loop(resolve_shards(prefix), tok, args.image_size, args.max_tokens,
                                         args.batch_size)
        base = n / dt
        print(f"single process (webdataset + PIL): {n} samples, {base:.0f} samples/s, "
              f"{1000 * cpu / n:.3f} CPU ms/sample", flush=True)
        ray1 = ray_pipeline(prefix, tok, args.image_size, args.max_tokens, args.batch_size, 1, exclude)
        rayn = ray_pipeline(prefix, tok, args.image_size, args.max_tokens, args.batch_size, cpus, exclude)
        for c, r in ((1, ray1), (cpus, rayn)):
            print(f"Ray Data, {c} CPU: {r['warm']:.0f} samples/s warm ({r['cold']:.0f} cold, with worker start-up), "
                  f"{r['warm_cpu_ms_per_sample']:.3f} CPU ms/sample (all Ray processes)", flush=True)
        assert ray1["samples"] == rayn["samples"] == n, (ray1, rayn, n)
        results["read"] = {"single_process": base, "single_process_cpu_ms_per_sample": 1000 * cpu / n,
                           "ray_1cpu": ray1, f"ray_{cpus}cpu": rayn}

        local = str(work / "local_shards")
        storage.download_dir(prefix, local)
        n_l, dt_l, _ = single_process_loop(resolve_shards(local), tok, args.image_size, args.max_tokens,
                                           args.batch_size)
        rayn_l = ray_pipeline(local, tok, args.image_size, args.max_tokens, args.batch_size, cpus, exclude)
        results["read_local_folder"] = {"single_process": n_l / dt_l, f"ray_{cpus}cpu": rayn_l}
        print(f"same shards in a local folder: single process {n_l / dt_l:.0f} samples/s, Ray Data {cpus} CPUs "
              f"{rayn_l['warm']:.0f} warm ({rayn_l['cold']:.0f} cold)", flush=True)

    mem = {}
    for n in (max(1, args.mem_images // 10), args.mem_images):
        folder = str(work / f"small_{n}")
        write_synthetic(folder, n, image_size=16, seed=1)
        mem[n] = m = peak_rss(folder, str(work / f"small_{n}_shards"), cpus)
        print(f"make_shards peak RSS, {n} 16px images, {cpus} workers: image phase main {m['stream_main']:.0f} MiB "
              f"+ workers {m['stream_children']:.0f} MiB; with tokenizer training main {m['main']:.0f} MiB, "
              f"all {m['all']:.0f} MiB ({m['images_per_s']:.0f} images/s incl. start-up)", flush=True)
    results["memory_mib"] = mem
    small, big = mem[max(1, args.mem_images // 10)], mem[args.mem_images]

    print(json.dumps(results))
    print(f"RESULT Ray Data / single process (S3, {cpus} CPUs): x{rayn['warm'] / base:.2f} "
          f"[1 CPU: x{ray1['warm'] / base:.2f}; {cpus} vs 1 CPU: x{rayn['warm'] / ray1['warm']:.2f}; "
          f"local folder: x{rayn_l['warm'] / (n_l / dt_l):.2f}]; build {cpus} vs 1 worker: x{rn / r1:.2f}; "
          f"build memory x{args.mem_images // max(1, args.mem_images // 10)} images: image phase main "
          f"x{big['stream_main'] / small['stream_main']:.2f}, workers x{big['stream_children'] / small['stream_children']:.2f}"
          f", overall x{big['all'] / small['all']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
