"""Ray Data input pipeline: WebDataset shards (local or S3) -> fixed-shape numpy batches for training.

    from ray_jobs.data import build_dataset, tokenizer_for
    tok = tokenizer_for("s3://bucket/run1")                   # the tokenizer.model shipped with the shards
    ds = build_dataset("s3://bucket/run1", image_size=32, max_tokens=32, tokenizer=tok, train=True)
    for batch in ds.iter_torch_batches(batch_size=64):        # or ray.train.get_dataset_shard("train")
        batch["image"]   # uint8 [B, H, W, 3]
        batch["tokens"]  # int64 [B, T], padded with tokenizer.pad_id
        batch["length"]  # int64 [B]

Run as a check of a shard set (reads everything, prints counts, corrupt samples and samples/s):
    python -m ray_jobs.data s3://bucket/run1 --image-size 32
    ray job submit --working-dir . -- python -m ray_jobs.data "s3://bucket/run1/shard-{000000..000099}.tar"

A spec is a folder or s3:// prefix (its manifest.json if any), a manifest, shard URLs, a brace
pattern (expanded here: Ray's reader does not) or a comma list of those. S3 access uses a pyarrow
filesystem built from the same AWS settings as boto3 (AWS_ENDPOINT_URL included).
Training takes a random crop (when shards are larger than `image_size`), a random horizontal flip
and a random caption among a sample's captions; validation takes the centre, no flip and the first
caption, so the same sample always gives the same row. Samples that cannot be decoded or have no
caption are logged, counted (see `make_skip_counter`) and dropped; they never stop the pipeline.
"""

from __future__ import annotations

import argparse
import collections
import functools
import logging
import os
import sys
import time
from typing import Any

import numpy as np
import ray

from data import images, shard_spec, storage
from data.shard_spec import expand_braces, resolve_shards  # noqa: F401 - re-exported for callers
from data.untrusted import MAX_MANIFEST_BYTES, MAX_TOKENIZER_BYTES, UnsafeInput, check_captions
from onade.tokenizer import Tokenizer

log = logging.getLogger(__name__)

IMAGE_COLUMNS = ("png", "jpg", "jpeg", "webp")
MAX_EXAMPLES = 20


def tokenizer_for(spec: str | list[str]) -> Tokenizer:
    """The `tokenizer.model` that make_shards wrote beside the shards of `spec`."""
    url = storage.join(shard_spec.shards_home(spec), shard_spec.TOKENIZER)
    if not storage.exists(url):
        raise ValueError(f"no {shard_spec.TOKENIZER} at {url}: build the shards with `python -m data.make_shards`, "
                         "or load a tokenizer with Tokenizer.from_file and pass it yourself")
    return Tokenizer.from_bytes(storage.read_bytes(url, max_bytes=MAX_TOKENIZER_BYTES))


@ray.remote(num_cpus=0)
class SkipCounter:
    """Collects the samples the pipeline dropped, from every Ray Data task."""

    def __init__(self):
        self.by_reason: collections.Counter = collections.Counter()
        self.examples: list[dict[str, str]] = []

    def add(self, skips: list[tuple[str, str]]) -> None:
        for where, reason in skips:
            self.by_reason[reason] += 1
            if len(self.examples) < MAX_EXAMPLES:
                self.examples.append({"sample": where, "reason": reason})

    def summary(self) -> dict[str, Any]:
        return {"total": sum(self.by_reason.values()), "by_reason": dict(self.by_reason),
                "examples": list(self.examples)}


def make_skip_counter():
    """An actor handle to pass as `build_dataset(..., skip_counter=)`; read it with `skip_summary`."""
    return SkipCounter.remote()


def skip_summary(counter) -> dict[str, Any]:
    return ray.get(counter.summary.remote())


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
    # Shards smaller than the requested size: upsample (centre crop) rather than drop them.
    from PIL import Image

    return np.asarray(images.fit(Image.fromarray(img), size, "crop"), dtype=np.uint8)


def preprocess_batch(batch: dict[str, np.ndarray], *, image_size: int, max_tokens: int, tokenizer: Tokenizer,
                     train: bool, random_flip: bool = True, skip_counter=None) -> dict[str, np.ndarray]:
    """Raw WebDataset columns (bytes) -> {"image" uint8 [B,H,W,3], "tokens" int64 [B,T], "length" int64 [B]}."""
    keys = batch.get("__key__")
    n = len(keys) if keys is not None else len(next(iter(batch.values())))
    urls = _column(batch, "__url__", n)
    txts = _column(batch, "txt", n)
    img_cols = [batch[c] for c in IMAGE_COLUMNS if c in batch]
    # Training draws fresh randomness every batch so each epoch sees different crops, flips and captions.
    rng = np.random.default_rng() if train else np.random.default_rng(0)
    out_images, captions, skips = [], [], []
    for i in range(n):
        where = f"{storage.basename(str(urls[i]))}#{keys[i] if keys is not None else i}"
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
        if train and random_flip and rng.random() < 0.5:
            img = img[:, ::-1]
        out_images.append(img)
        captions.append(caps[int(rng.integers(len(caps)))] if train else caps[0])
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


def build_dataset(spec: str | list[str], image_size: int, max_tokens: int, tokenizer: Tokenizer, train: bool,
                  seed: int = 0, *, random_flip: bool = True, skip_counter=None, num_cpus: float = 1.0,
                  read_num_cpus: float = 0.25, batch_size: int = 256) -> "ray.data.Dataset":
    """A Ray Dataset of fixed-shape rows `image` uint8 [H,W,3], `tokens` int64 [T], `length` int64.

    `seed` fixes the training file order (reshuffled each epoch, reproducibly); validation keeps the
    shard order. `num_cpus` is per decode task: decoding is CPU-bound, and packing several decode
    tasks onto one core measured 2-3x slower (bench/data.py). Reading a tar stream is mostly waiting
    on storage, hence the small `read_num_cpus`. Data tasks need CPUs the training workers leave free
    (e.g. `--cpus-per-worker 0.5`); lower `num_cpus` if only a fraction of a CPU is left.
    """
    if image_size < 1 or max_tokens < 1:
        raise ValueError(f"image_size and max_tokens must be >= 1, got {image_size} and {max_tokens}")
    if not isinstance(tokenizer, Tokenizer):
        raise ValueError(f"tokenizer must be an onade Tokenizer (see tokenizer_for), got {type(tokenizer).__name__}")
    urls = resolve_shards(spec)
    fs, _ = storage.pyarrow_fs(urls[0])  # resolve_shards guarantees one kind: all local or all S3
    paths = [u[len("s3://"):] if storage.is_s3(u) else os.path.abspath(u) for u in urls]
    from ray.data.datasource import FileShuffleConfig

    ds = ray.data.read_webdataset(
        paths, filesystem=fs, decoder=None, num_cpus=read_num_cpus,
        shuffle=FileShuffleConfig(seed=seed) if train else None)
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
    ap.add_argument("--image-size", type=int, default=None, help="default: the manifest's image size")
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--train", action="store_true", help="training augmentations (default: validation)")
    args = ap.parse_args(argv)
    try:
        size = args.image_size or _manifest_size(args.spec)
        tok = tokenizer_for(args.spec)
        ray.init(ignore_reinit_error=True)
        counter = make_skip_counter()
        ds = build_dataset(args.spec, size, args.max_tokens, tok, train=args.train, skip_counter=counter)
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
    return 0


def _manifest_size(spec: str) -> int:
    import json

    url = storage.join(shard_spec.shards_home(spec), shard_spec.MANIFEST)
    if not storage.exists(url):
        raise ValueError(f"no manifest at {url}: pass --image-size")
    return int(json.loads(storage.read_bytes(url, max_bytes=MAX_MANIFEST_BYTES))["image_size"])


if __name__ == "__main__":
    sys.exit(main())
