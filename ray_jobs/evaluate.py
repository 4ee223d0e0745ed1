r"""Evaluate an exported checkpoint on shards: bits per subpixel, printed and written as JSON.

Locally (starts a local Ray when RAY_ADDRESS is unset; uses every CPU of the machine):

    python -m ray_jobs.evaluate --checkpoint runs/debug1/export --data val_shards/ --num-images 512 \
        --exact-images 32 --output metrics.json

On a cluster:

    ray job submit --working-dir . -- python -m ray_jobs.evaluate \
        --checkpoint s3://bucket/runs/base1/export --data s3://bucket/shards/val --gpus-per-actor 1

Ray Data decodes the shards; a pool of actors (by default one per GPU of the cluster, or on CPU one per
CPU of the cluster, sharing out its CPUs and leaving some for decoding), each loading the checkpoint once,
scores batches with onade.metrics.evaluate_batch, in bf16 where the hardware runs it fast (`--precision`).
The JSON holds, averaged over images: `bits_per_dim` (orderless estimate over random masks),
`center_bits_true_caption` and `center_bits_shuffled_caption` (one-shot centre NLL with each image's
caption vs. another image's), `num_images`; and `exact_bits_per_dim` (chain rule over the centre hole in
one random ordering: one forward pass per hole subpixel per image, so it runs on the first
`--exact-images` images only, default 64) with `exact_num_images`. Masks are seeded by each batch's
content, so the numbers do not depend on how many actors ran.
"""

from __future__ import annotations

import argparse
import json
import time
import zlib

import numpy as np
import torch

from onade.precision import PRECISIONS

METRICS = ("bits_per_dim", "center_bits_true_caption", "center_bits_shuffled_caption")
EXACT = "exact_bits_per_dim"
DEFAULT_EXACT_IMAGES = 64
DATA_CPUS = (0.25, 0.5)  # a shard read task, a decode task: light next to scoring


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m ray_jobs.evaluate", description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True, help="exported checkpoint: folder or s3://bucket/prefix")
    p.add_argument("--data", required=True, help="shards: folder/prefix, manifest.json, brace pattern or comma list")
    p.add_argument("--num-images", type=int, default=0, help="evaluate the first N images (default: all)")
    p.add_argument("--output", help="write the metrics JSON here (local path)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--num-masks", type=int, default=4, help="random masks per image for bits_per_dim")
    p.add_argument("--exact-images", type=int, default=DEFAULT_EXACT_IMAGES, metavar="N",
                   help=f"exact chain-rule NLL on the first N images (0 = skip; default {DEFAULT_EXACT_IMAGES}): "
                        "it costs one forward pass per hole subpixel per image")
    p.add_argument("--precision", default="auto", choices=PRECISIONS,
                   help="auto (default): bf16 on GPUs with it and CPUs with AMX/AVX512-BF16, else fp32")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--actors", type=int, default=0, help="scoring actors (default: one per GPU, or per CPU)")
    p.add_argument("--cpus-per-actor", type=float, default=0, help="default: the CPUs shared out among the actors")
    p.add_argument("--gpus-per-actor", type=float, default=0)
    args = p.parse_args(argv)
    for flag in ("num_images", "batch_size", "num_masks", "actors", "exact_images"):
        if getattr(args, flag) < (1 if flag in ("batch_size", "num_masks") else 0):
            p.error(f"--{flag.replace('_', '-')} must be positive")
    return args


class Scorer:
    """A Ray Data actor: loads the checkpoint once, maps a batch to one row of per-batch metrics."""

    def __init__(self, checkpoint: str, num_masks: int, seed: int, precision: str, exact: bool, threads: int):
        import onade
        from ray_jobs.train_loop import evaluate

        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        if self.device == "cpu" and threads > 0:
            torch.set_num_threads(threads)
        self.model = onade.load_checkpoint(checkpoint, device=self.device).model
        self.precision = onade.resolve_precision(precision, self.device)
        self.evaluate, self.num_masks, self.seed, self.exact = evaluate, num_masks, seed, exact

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        tensors = {k: torch.from_numpy(np.array(batch[k])) for k in ("image", "tokens", "length")}
        # Seeded by the batch's content: masks differ across batches, and a rerun, with any number of actors,
        # gives the same numbers.
        seed = zlib.crc32(np.ascontiguousarray(batch["image"]).tobytes(), self.seed)
        n = len(batch["image"])
        if self.exact:
            # The costly metric alone (the cheap ones came from the first pass); seed + 1 is the ordering
            # train_loop.evaluate draws for it.
            from onade.metrics import exact_center_bits
            from onade.precision import autocast

            x, tokens, lengths = (tensors[k].to(self.device) for k in ("image", "tokens", "length"))
            with autocast(self.precision, self.device):
                bits = exact_center_bits(self.model, x, tokens, lengths, torch.Generator().manual_seed(seed + 1))
            out = {EXACT: bits}
        else:
            out = self.evaluate(self.model, [tensors], num_masks=self.num_masks, seed=seed, precision=self.precision)
        keys = (EXACT,) if self.exact else METRICS
        return {**{k: np.array([out[k]]) for k in keys}, "num_images": np.array([n]),
                "precision": np.array([self.precision])}


def pool_size(args) -> tuple[int, float, int]:
    """(actors, CPUs per actor, torch threads per actor) for this cluster."""
    import ray

    resources = ray.cluster_resources()
    if args.gpus_per_actor > 0:
        actors = args.actors or max(1, int(resources.get("GPU", 1) // args.gpus_per_actor))
        return actors, args.cpus_per_actor or 1.0, 0
    total = resources.get("CPU", 1.0)
    actors = args.actors or max(1, int(total))
    # Leave room for one read and one decode task (DATA_CPUS) or the pipeline stalls.
    cpus = args.cpus_per_actor or max(0.25, (total - sum(DATA_CPUS)) / actors)
    return actors, cpus, max(1, int(total // actors))


def _score(ds, args, exact: bool, total: int, label: str) -> list[dict]:
    import ray.data

    actors, cpus, threads = pool_size(args)
    scored = ds.map_batches(
        Scorer, fn_constructor_kwargs={"checkpoint": args.checkpoint, "num_masks": args.num_masks,
                                       "seed": args.seed, "precision": args.precision, "exact": exact,
                                       "threads": threads},
        batch_size=args.batch_size, batch_format="numpy", compute=ray.data.ActorPoolStrategy(size=actors),
        num_cpus=cpus, num_gpus=args.gpus_per_actor or None)
    rows, done, t0, shown = [], 0, time.perf_counter(), time.perf_counter()
    for row in scored.iter_rows():
        rows.append(row)
        done += int(row["num_images"])
        now = time.perf_counter()
        if now - shown > 10:
            of = f"/{total}" if total else ""
            print(f"{label}: {done}{of} images, {done / (now - t0):.1f} images/s", flush=True)
            shown = now
    print(f"{label}: {done} images in {time.perf_counter() - t0:.0f}s ({actors} actor(s))", flush=True)
    return rows


def _mean(rows: list[dict], keys) -> dict:
    """Image-weighted means of `keys` over the per-batch rows, and the image count."""
    counts = np.array([r["num_images"] for r in rows], dtype=np.float64)
    return {**{k: float(np.dot([r[k] for r in rows], counts) / counts.sum()) for k in keys},
            "num_images": int(counts.sum())}


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    import onade
    import ray
    import ray.data

    from ray_jobs.data import build_dataset, resolve_shards
    from ray_jobs.ray_env import init_ray

    loaded = onade.load_checkpoint(args.checkpoint)  # fails fast on a path that is not a checkpoint
    cfg = loaded.config
    shards = resolve_shards(args.data)
    if not shards:
        raise ValueError(f"--data {args.data!r} holds no shards: build them with python -m data.make_shards")
    init_ray()
    ray.data.DataContext.get_current().enable_progress_bars = False
    ds = build_dataset(shards, cfg.model.image_size, cfg.data.max_tokens, loaded.tokenizer, train=False,
                       seed=args.seed, read_num_cpus=DATA_CPUS[0], num_cpus=DATA_CPUS[1],
                       batch_size=args.batch_size)  # blocks of one scoring batch: every actor gets work
    if args.num_images:
        ds = ds.limit(args.num_images)
    rows = _score(ds, args, exact=False, total=args.num_images, label="cheap metrics")
    if not rows or sum(int(r["num_images"]) for r in rows) == 0:
        raise ValueError(f"--data {args.data!r} gave no images to evaluate")
    result = _mean(rows, METRICS)
    result["precision"] = str(rows[0]["precision"])
    exact_images = min(args.exact_images, result["num_images"])
    if exact_images:
        exact = _mean(_score(ds.limit(exact_images), args, exact=True, total=exact_images, label="exact NLL"),
                      (EXACT,))
        result.update({EXACT: exact[EXACT], "exact_num_images": exact["num_images"]})
    result["checkpoint"] = args.checkpoint
    text = json.dumps(result, indent=2)
    print(text)
    if args.output:
        with open(args.output, "w") as f:
            f.write(text + "\n")
    return result


if __name__ == "__main__":
    from ray_jobs.cli import run

    run(main)
