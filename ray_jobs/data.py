"""Ray Data input pipeline: WebDataset shards (local or S3) -> fixed-shape numpy batches for training.

    from ray_jobs.data import shard_dataset, tokenizer_for
    tok = tokenizer_for("s3://bucket/run1")                   # the tokenizer.model shipped with the shards
    ds = shard_dataset("s3://bucket/run1", image_size=32, max_tokens=32, tokenizer=tok, train=True)
    for batch in ds.iter_torch_batches(batch_size=64):        # or ray.train.get_dataset_shard("train")
        batch["image"]   # uint8 [B, H, W, 3]
        batch["tokens"]  # int64 [B, T], padded with tokenizer.pad_id
        batch["length"]  # int64 [B]

Run as a check of a shard set (reads everything, prints counts, corrupt samples, unreadable shards and
samples/s; exits 1 if a shard is unreadable):
    python -m ray_jobs.data s3://bucket/run1 --image-size 32
    ray job submit --working-dir . -- python -m ray_jobs.data "s3://bucket/run1/shard-{000000..000099}.tar"

A spec is a folder or s3:// prefix (its manifest.json if any), a manifest, shard URLs, a brace
pattern (expanded here: Ray's reader does not) or a comma list of those. S3 access uses a pyarrow
filesystem built by data.storage from the standard AWS settings (AWS_ENDPOINT_URL included).
Training takes a random crop (when shards are larger than `image_size`), a random caption among a
sample's captions and a random horizontal flip (only when that caption names no side: a mirrored "left
arrow" is a right arrow); validation takes the centre, no flip and the first caption, so the same sample
always gives the same row. Samples that cannot be decoded or have no caption are logged, counted (see
`make_skip_counter`) and dropped; they never stop the pipeline.

Shards are read by `TarShards` (with data.shard_reader), not Ray's `read_webdataset`: a shard that
cannot be read to its end (truncated, garbage bytes, a damaged header mid-file, deleted or unreadable
once the job runs) gives the samples before the damage and is recorded (URL, reason, samples read) in
the same counter; the rest of the data flows. A shard missing when the job starts is still an error
(resolve_shards): that is a wrong spec, not damage. Transient S3 errors (DataContext.retried_io_errors)
are retried first.
"""

from __future__ import annotations

import argparse
import collections
import functools
import io
import logging
import os
import re
import sys
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import numpy as np
import ray
from ray.data.block import BlockMetadata
from ray.data.datasource import Datasource, ReadTask

from data import images, shard_spec, storage
from data.shard_spec import resolve_shards
from data.shard_reader import ShardReader
from data.untrusted import (DEFAULT_MAX_IMAGE_PIXELS, MAX_MANIFEST_BYTES, MAX_TOKENIZER_BYTES, UnsafeInput,
                            check_captions, max_image_bytes)

if TYPE_CHECKING:
    # onade imports torch (~2 s): only the functions that need a tokenizer import it, so that the read tasks'
    # workers, which load this module to run the shard reader, start without it.
    from onade.tokenizer import Tokenizer

log = logging.getLogger(__name__)

IMAGE_COLUMNS = ("png", "jpg", "jpeg", "webp")
MAX_EXAMPLES = 20
MAX_BAD_SHARDS = 1000  # listed one by one in a summary; beyond that only counted
COUNTER_NAMESPACE = "onade"
READ_ATTEMPTS = 3  # per shard, for errors in DataContext.retried_io_errors (S3 throttling, dropped connections)
RETRY_DELAY_S = 1.0  # before the second attempt; doubled before each next one
ROWS_PER_BLOCK = 512  # as Ray's WebDataset reader


def tokenizer_for(spec: str | list[str]) -> Tokenizer:
    """The `tokenizer.model` that make_shards wrote beside the shards of `spec`."""
    from onade.tokenizer import Tokenizer

    url = storage.join(shard_spec.shards_home(spec), shard_spec.TOKENIZER)
    if not storage.exists(url):
        raise ValueError(f"no {shard_spec.TOKENIZER} at {url}: build the shards with `python -m data.make_shards`, "
                         "or load a tokenizer with Tokenizer.from_file and pass it yourself")
    return Tokenizer.from_bytes(storage.read_bytes(url, max_bytes=MAX_TOKENIZER_BYTES))


@ray.remote(num_cpus=0)
class SkipCounter:
    """Collects what the pipeline dropped, from every Ray Data task: samples that cannot be used, and shards
    that could not be read to their end."""

    def __init__(self):
        self.by_reason: collections.Counter = collections.Counter()
        self.examples: list[dict[str, str]] = []
        self.bad: dict[str, dict] = {}  # shard URL -> its first record (training re-reads it every epoch)

    def add(self, skips: list[tuple[str, str]]) -> None:
        for where, reason in skips:
            self.by_reason[reason] += 1
            if len(self.examples) < MAX_EXAMPLES:
                self.examples.append({"sample": where, "reason": reason})

    def add_bad_shard(self, shard: str, reason: str, samples_read: int) -> None:
        self.bad.setdefault(shard, {"shard": shard, "reason": reason, "samples_read": samples_read})

    def summary(self) -> dict[str, Any]:
        return {"total": sum(self.by_reason.values()), "by_reason": dict(self.by_reason),
                "examples": list(self.examples), "num_bad_shards": len(self.bad),
                "bad_shards": list(self.bad.values())[:MAX_BAD_SHARDS]}


def _counter_name(run_name: str) -> str:
    return f"skips:{run_name}"


def make_skip_counter(run_name: str | None = None):
    """An actor handle to pass as `shard_dataset(..., skip_counter=)`; read it with `skip_summary`.

    With `run_name`, the actor is also named, so code that holds no handle (Ray Train workers) reads it with
    `skip_summary_named(run_name)`; a second call with the same name returns the same actor. It lives as long
    as the driver that made it, on the driver's node: placed on another node, it would die with that node
    (a spot node reclaimed mid-run) and take every later read task and training restart with it."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    options: dict[str, Any] = {
        "scheduling_strategy": NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)}
    if run_name is not None:
        options.update(name=_counter_name(run_name), namespace=COUNTER_NAMESPACE, get_if_exists=True)
    return SkipCounter.options(**options).remote()


def skip_summary(counter) -> dict[str, Any]:
    """{"total": samples dropped, "by_reason": {reason: count}, "examples": [{"sample", "reason"}],
    "num_bad_shards": n, "bad_shards": [{"shard": URL, "reason", "samples_read"}]}. Training counts a bad
    sample each epoch it is read again; a bad shard once."""
    return ray.get(counter.summary.remote())


def skip_summary_named(run_name: str) -> dict[str, Any] | None:
    """skip_summary of the counter `make_skip_counter(run_name)` made, from any process of the Ray cluster;
    None if there is none (the driver made no named counter, or has exited)."""
    try:
        counter = ray.get_actor(_counter_name(run_name), namespace=COUNTER_NAMESPACE)
    except ValueError:
        return None
    return skip_summary(counter)


# ---- reading tar shards, tolerating damage --------------------------------------------------------------

def iter_tar_rows(f, url: str, columns: tuple[str, ...] = (*IMAGE_COLUMNS, "txt")) -> Iterator[dict[str, Any]]:
    """The samples of one tar stream (data.shard_reader), as WebDataset rows {"__key__", "__url__", ext: bytes}
    with the members whose extension is in `columns` (others are never read). A member over its limit (an
    image's bytes at DEFAULT_MAX_IMAGE_PIXELS, MAX_TEXT_MEMBER_BYTES for text) is not read; its row gets
    "__skip__": reason. Raises (ShardDamaged, tarfile.TarError, OSError, ...) where the shard is damaged; the
    sample being read then is not yielded, as it may be incomplete."""
    reader = ShardReader(columns, max_image_bytes(DEFAULT_MAX_IMAGE_PIXELS))
    for sample in reader.samples(f):
        row = {"__key__": sample.key, "__url__": url, **sample.members}
        if (o := sample.oversized) is not None:
            # No member name: the skip counter groups reasons, and one per sample would not group.
            row["__skip__"] = f"member .{o.ext} of {o.size} bytes, over the limit of {o.limit}"
        yield row


def _transient(e: Exception) -> bool:
    from ray.data import DataContext

    return isinstance(e, OSError) and any(p in str(e) for p in DataContext.get_current().retried_io_errors)


def read_shard(fs, path: str, url: str, skip_counter=None) -> Iterator[dict[str, Any]]:
    """iter_tar_rows of one shard in `fs` (pyarrow), never raising for the shard's own faults: a shard that
    cannot be opened or read to its end yields what it could, then is logged and recorded in `skip_counter`
    as (url, reason, samples read). Transient storage errors first restart the read, skipping the samples
    already yielded, up to READ_ATTEMPTS times."""
    from ray.data import DataContext

    done = 0
    for attempt in range(1, READ_ATTEMPTS + 1):
        try:
            with fs.open_input_stream(path, buffer_size=DataContext.get_current().streaming_read_buffer_size) as f:
                for i, row in enumerate(iter_tar_rows(f, url)):
                    if i >= done:
                        done += 1
                        yield row
            return
        except Exception as e:  # noqa: BLE001 - whatever the damage, the other shards must flow
            if attempt < READ_ATTEMPTS and _transient(e):
                log.warning("retrying shard %s after %d samples: %s", url, done, e)
                time.sleep(RETRY_DELAY_S * 2 ** (attempt - 1))
                continue
            reason = f"{type(e).__name__}: {str(e)[:300]}"
            log.warning("unreadable shard %s (after %d samples): %s", url, done, reason)
            if skip_counter is not None:
                ray.get(skip_counter.add_bad_shard.remote(url, reason, done))
            return


def _read_shards(shards: list[tuple[str, str]], fs, skip_counter) -> Iterator[Any]:
    import pandas as pd

    rows = []
    for path, url in shards:
        for row in read_shard(fs, path, url, skip_counter):
            rows.append(row)
            if len(rows) >= ROWS_PER_BLOCK:
                yield pd.DataFrame.from_records(rows)
                rows = []
    if rows:
        yield pd.DataFrame.from_records(rows)


class TarShards(Datasource):
    """WebDataset tar shards as rows of raw bytes (iter_tar_rows), read tolerantly (read_shard). With
    `shuffle_seed`, the shard order is shuffled, differently each execution (epoch) and reproducibly, as Ray's
    FileShuffleConfig(seed) does; without it, shards are read in the order given."""

    def __init__(self, urls: list[str], filesystem, shuffle_seed: int | None = None, skip_counter=None):
        super().__init__()
        self._shards = [(u[len("s3://"):] if storage.is_s3(u) else os.path.abspath(u), u) for u in urls]
        self._fs, self._seed, self._counter = filesystem, shuffle_seed, skip_counter

    def estimate_inmemory_data_size(self) -> int | None:
        return None  # unknown without a request per shard (read_shards asks for one read task per shard)

    def get_read_tasks(self, parallelism: int, per_task_row_limit: int | None = None,
                       data_context=None) -> list[ReadTask]:
        shards = list(self._shards)
        if self._seed is not None:
            # Ray's own file shuffle reads the same private counter of executions (file_based_datasource.py).
            execution = getattr(data_context, "_execution_idx", 0) if data_context is not None else 0
            np.random.default_rng([self._seed, execution]).shuffle(shards)
        tasks = []
        for group in np.array_split(np.arange(len(shards)), max(1, min(parallelism, len(shards)))):
            part = [shards[i] for i in group]
            if part:
                meta = BlockMetadata(num_rows=None, size_bytes=None, input_files=[p for p, _ in part], exec_stats=None)
                tasks.append(ReadTask(functools.partial(_read_shards, part, self._fs, self._counter), meta,
                                      per_task_row_limit=per_task_row_limit))
        return tasks


def read_shards(urls: list[str], *, shuffle_seed: int | None = None, skip_counter=None,
                num_cpus: float = 0.25) -> "ray.data.Dataset":
    """A Ray Dataset of the raw WebDataset rows of `urls` (resolved shard URLs, all local or all S3)."""
    fs, _ = storage.pyarrow_fs(urls[0])
    # One read task per shard, each streaming blocks of ROWS_PER_BLOCK rows. Left to choose (no size estimate),
    # Ray asks for 200 blocks and cuts the tasks' output into that many: 4-7x slower on 4 shards (bench/data.py).
    return ray.data.read_datasource(TarShards(urls, fs, shuffle_seed, skip_counter), num_cpus=num_cpus,
                                    override_num_blocks=len(urls))


def _column(batch: dict[str, np.ndarray], name: str, n: int) -> np.ndarray:
    col = batch.get(name)
    return col if col is not None else np.full(n, None, dtype=object)


def _as_bytes(v: Any) -> bytes | None:
    if v is None or (isinstance(v, float) and np.isnan(v)):
        return None  # a column missing from this sample comes through pandas as NaN
    return bytes(v) if not isinstance(v, bytes) else v


def _fit(img: np.ndarray, size: int, train: bool, rng: np.random.Generator) -> np.ndarray:
    h, w = img.shape[:2]
    if h >= size and w >= size:
        if train:
            top, left = int(rng.integers(0, h - size + 1)), int(rng.integers(0, w - size + 1))
        else:
            top, left = (h - size) // 2, (w - size) // 2
        return img[top:top + size, left:left + size]
    # A sample smaller than the window (shards of mixed sizes from other tools; a shard set whose images are all
    # smaller is refused before training, ray_jobs.train.check_shard_size): upsample (centre crop), not drop it.
    from PIL import Image

    return np.asarray(images.fit(Image.fromarray(img), size, "crop"), dtype=np.uint8)


_SIDES = re.compile(r"\b(left|right)", re.IGNORECASE)


def flip_keeps_caption(caption: str) -> bool:
    """Whether a left-right mirror image still fits `caption`: not when it names a side ("left arrow",
    "person walking facing right", "rightwards")."""
    return _SIDES.search(caption) is None


def preprocess_batch(batch: dict[str, np.ndarray], *, image_size: int, max_tokens: int, tokenizer: Tokenizer,
                     train: bool, random_flip: bool = True, skip_counter=None) -> dict[str, np.ndarray]:
    """Raw WebDataset columns (bytes) -> {"image" uint8 [B,H,W,3], "tokens" int64 [B,T], "length" int64 [B]}."""
    keys = batch.get("__key__")
    n = len(keys) if keys is not None else len(next(iter(batch.values())))
    urls = _column(batch, "__url__", n)
    txts = _column(batch, "txt", n)
    marked = _column(batch, "__skip__", n)
    img_cols = [batch[c] for c in IMAGE_COLUMNS if c in batch]
    # Training draws fresh randomness every batch so each epoch sees different crops, flips and captions.
    rng = np.random.default_rng() if train else np.random.default_rng(0)
    out_images, captions, skips = [], [], []
    for i in range(n):
        where = f"{storage.basename(str(urls[i]))}#{keys[i] if keys is not None else i}"
        if isinstance(marked[i], str):
            skips.append((where, marked[i]))
            continue
        data = next((b for b in (_as_bytes(c[i]) for c in img_cols) if b), None)
        if data is None:
            skips.append((where, "no image"))
            continue
        txt = _as_bytes(txts[i])
        caps = [c.strip() for c in txt.decode("utf-8", errors="replace").splitlines() if c.strip()] if txt else []
        if not caps:
            skips.append((where, "no caption"))
            continue
        try:
            check_captions(caps)
        except UnsafeInput as e:
            skips.append((where, str(e)))
            continue
        try:
            img = images.decode_rgb(data)
        except Exception as e:  # noqa: BLE001 - any decoder failure means a corrupt sample, never a dead job
            skips.append((where, f"undecodable image ({type(e).__name__})"))
            continue
        img = _fit(img, image_size, train, rng)
        caption = caps[int(rng.integers(len(caps)))] if train else caps[0]
        if train and random_flip and rng.random() < 0.5 and flip_keeps_caption(caption):
            img = img[:, ::-1]
        out_images.append(img)
        captions.append(caption)
    if skips:
        for where, reason in skips:
            log.warning("skipping corrupt sample %s: %s", where, reason)
        if skip_counter is not None:
            # Wait for the count to land, so a summary read after the dataset is consumed includes it.
            ray.get(skip_counter.add.remote(skips))
    tokens, lengths = tokenizer.encode_batch_numpy(captions, max_tokens)
    # Filling a preallocated array is ~20x faster than np.stack over flipped (negative-stride) views.
    image = np.empty((len(out_images), image_size, image_size, 3), np.uint8)
    for i, img in enumerate(out_images):
        image[i] = img
    return {"image": image, "tokens": tokens, "length": lengths}


def shard_dataset(spec: str | list[str], image_size: int, max_tokens: int, tokenizer: Tokenizer, train: bool,
                  seed: int = 0, *, random_flip: bool = True, skip_counter=None, num_cpus: float = 1.0,
                  read_num_cpus: float = 0.25, batch_size: int = 256) -> "ray.data.Dataset":
    """The samples of the shards of `spec`, decoded for the model (training's or validation's): a Ray Dataset
    of fixed-shape rows `image` uint8 [H,W,3], `tokens` int64 [T], `length` int64 (read_shards gives the raw
    rows).

    `seed` fixes the training file order (reshuffled each epoch, reproducibly); validation keeps the
    shard order. `skip_counter` (make_skip_counter) receives the samples dropped and the shards that could
    not be read to their end (module docstring). `num_cpus` is per decode task: decoding is CPU-bound, and
    packing several decode tasks onto one core measured 2-3x slower (bench/data.py). Reading a tar stream
    is mostly waiting on storage, hence the small `read_num_cpus`. Data tasks need CPUs the training workers
    leave free (e.g. `--cpus-per-worker 0.5`); lower `num_cpus` if only a fraction of a CPU is left.
    """
    if image_size < 1 or max_tokens < 1:
        raise ValueError(f"image_size and max_tokens must be >= 1, got {image_size} and {max_tokens}")
    from onade.tokenizer import Tokenizer

    if not isinstance(tokenizer, Tokenizer):
        raise ValueError(f"tokenizer must be an onade Tokenizer (see tokenizer_for), got {type(tokenizer).__name__}")
    urls = resolve_shards(spec)  # one kind: all local or all S3
    ds = read_shards(urls, shuffle_seed=seed if train else None, skip_counter=skip_counter, num_cpus=read_num_cpus)
    fn = functools.partial(preprocess_batch, image_size=image_size, max_tokens=max_tokens, tokenizer=tokenizer,
                           train=train, random_flip=random_flip, skip_counter=skip_counter)
    ds = ds.map_batches(fn, batch_format="numpy", batch_size=batch_size, num_cpus=num_cpus)
    if not train:
        ds.context.execution_options.preserve_order = True
    return ds


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m ray_jobs.data", description="Read a shard set through the "
                                 "training pipeline and report samples, corrupt samples and throughput.")
    ap.add_argument("spec", help="folder, s3:// prefix, manifest.json, shard URLs or brace pattern")
    ap.add_argument("--image-size", type=int, default=None,
                    help="default: the shards' (their manifest's image_size, else their first image's)")
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--train", action="store_true", help="training augmentations (default: validation)")
    args = ap.parse_args(argv)
    try:
        found = None if args.image_size else shard_image_size(args.spec)
        if not (args.image_size or found):
            raise ValueError(f"the image size of {args.spec} is unknown (no manifest, first image unreadable): "
                             "pass --image-size")
        size = args.image_size or found[0]
        tok = tokenizer_for(args.spec)
        ray.init(ignore_reinit_error=True)
        counter = make_skip_counter()
        ds = shard_dataset(args.spec, size, args.max_tokens, tok, train=args.train, skip_counter=counter)
        t0, n, lengths = time.perf_counter(), 0, []
        for batch in ds.iter_batches(batch_size=args.batch_size, batch_format="numpy"):
            n += len(batch["length"])
            lengths.append(batch["length"])
        dt = time.perf_counter() - t0
    except ValueError as e:
        print(f"ray_jobs.data: error: {e}", file=sys.stderr)
        return 2
    skipped = skip_summary(counter)
    lens = np.concatenate(lengths) if lengths else np.zeros(0)
    print(f"{n} samples ({size}x{size}), {skipped['total']} corrupt skipped {skipped['by_reason']}, "
          f"caption tokens mean {lens.mean() if n else 0:.1f} max {int(lens.max()) if n else 0} "
          f"(truncated to {args.max_tokens}), {n / dt:.0f} samples/s (one pass, including Ray worker start-up)")
    print_bad_shards(skipped)
    return 1 if skipped["num_bad_shards"] else 0


def print_bad_shards(summary: dict[str, Any], file=None) -> None:
    """One line per shard a skip_summary lists as unreadable (to `file`, default stdout)."""
    file = file or sys.stdout
    if summary["num_bad_shards"]:
        print(f"{summary['num_bad_shards']} unreadable shard(s), read up to the damage:", file=file)
    for b in summary["bad_shards"]:
        print(f"  {b['shard']}: {b['reason']} ({b['samples_read']} samples read)", file=file)


def shard_image_size(spec: str | list[str], urls: list[str] | None = None) -> tuple[int, str] | None:
    """The side of the images in the shards of `spec` (`urls`: its resolved shards, when known) and where it
    was read: the `image_size` data.make_shards records in manifest.json, else the shorter side of the first
    image in the first shard (shards from other tools). None when neither can be read: a first shard that
    cannot be read is reported by the pipeline that reads it."""
    import json

    url = storage.join(shard_spec.shards_home(spec), shard_spec.MANIFEST)
    if storage.exists(url):
        try:
            return int(json.loads(storage.read_bytes(url, max_bytes=MAX_MANIFEST_BYTES))["image_size"]), \
                f"from {shard_spec.MANIFEST}"
        except (ValueError, KeyError, TypeError):
            pass  # a manifest of another format: look at a sample
    first = (urls or resolve_shards(spec))[0]
    try:
        with storage.open_read(first) as f:
            for row in iter_tar_rows(f, first):
                data = next((b for b in (_as_bytes(row.get(c)) for c in IMAGE_COLUMNS) if b), None)
                if data is not None and "__skip__" not in row:
                    from PIL import Image

                    with Image.open(io.BytesIO(data)) as img:  # the header: no pixels decoded
                        w, h = img.size
                    return min(h, w), f"the first image of {storage.basename(first)} is {w}x{h}"
    except Exception:  # noqa: BLE001 - damage is the reader's to report, with the shard named
        return None
    return None


if __name__ == "__main__":
    sys.exit(main())
