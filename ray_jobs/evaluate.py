r"""Evaluate an exported checkpoint on shards: bits per subpixel, printed and written as JSON.

Locally (starts a local Ray when RAY_ADDRESS is unset):

    python -m ray_jobs.evaluate --checkpoint runs/debug1/export --data val_shards/ --num-images 512 \
        --output metrics.json

On a cluster:

    ray job submit --working-dir . -- python -m ray_jobs.evaluate \
        --checkpoint s3://bucket/runs/base1/export --data s3://bucket/shards/val --gpus-per-actor 1 --actors 4

Ray Data decodes the shards; a pool of actors, each loading the checkpoint once, scores batches with
onade.metrics.evaluate_batch. The JSON holds `bits_per_dim` (orderless estimate over random masks),
`exact_bits_per_dim` (chain rule over the centre hole in one random ordering), `center_bits_true_caption`,
`center_bits_shuffled_caption` (one-shot centre NLL with each image's caption vs. another image's) and
`num_images`, all averaged over images.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch

METRICS = ("bits_per_dim", "exact_bits_per_dim", "center_bits_true_caption", "center_bits_shuffled_caption")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m ray_jobs.evaluate", description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True, help="exported checkpoint: folder or s3://bucket/prefix")
    p.add_argument("--data", required=True, help="shards: folder/prefix, manifest.json, brace pattern or comma list")
    p.add_argument("--num-images", type=int, default=0, help="evaluate the first N images (default: all)")
    p.add_argument("--output", help="write the metrics JSON here (local path)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--num-masks", type=int, default=4, help="random masks per image for bits_per_dim")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--actors", type=int, default=1)
    p.add_argument("--cpus-per-actor", type=float, default=1)
    p.add_argument("--gpus-per-actor", type=float, default=0)
    args = p.parse_args(argv)
    for flag in ("num_images", "batch_size", "num_masks", "actors"):
        if getattr(args, flag) < (0 if flag == "num_images" else 1):
            p.error(f"--{flag.replace('_', '-')} must be positive")
    return args


class Scorer:
    """A Ray Data actor: loads the checkpoint once, maps a batch to one row of per-batch metrics."""

    def __init__(self, checkpoint: str, num_masks: int, seed: int):
        import onade
        from ray_jobs.train_loop import evaluate

        device = "cuda" if torch.cuda.is_available() else "cpu"
        self.model = onade.load_checkpoint(checkpoint, device=device).model
        self.evaluate, self.num_masks, self.seed, self.calls = evaluate, num_masks, seed, 0

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        tensors = {k: torch.from_numpy(np.array(batch[k])) for k in ("image", "tokens", "length")}
        # Each batch gets its own seed so masks differ across batches but a rerun gives the same numbers.
        self.calls += 1
        out = self.evaluate(self.model, [tensors], num_masks=self.num_masks, seed=self.seed * 100_003 + self.calls)
        return {k: np.array([out[k]]) for k in (*METRICS, "num_images")}


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
                       seed=args.seed)
    if args.num_images:
        ds = ds.limit(args.num_images)
    scored = ds.map_batches(
        Scorer, fn_constructor_kwargs={"checkpoint": args.checkpoint, "num_masks": args.num_masks, "seed": args.seed},
        batch_size=args.batch_size, batch_format="numpy", compute=ray.data.ActorPoolStrategy(size=args.actors),
        num_cpus=args.cpus_per_actor, num_gpus=args.gpus_per_actor or None)
    rows = scored.take_all()
    counts = np.array([r["num_images"] for r in rows], dtype=np.float64)
    if counts.sum() == 0:
        raise ValueError(f"--data {args.data!r} gave no images to evaluate")
    result = {k: float(np.dot([r[k] for r in rows], counts) / counts.sum()) for k in METRICS}
    result["num_images"] = int(counts.sum())
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
