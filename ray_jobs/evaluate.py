r"""Evaluate an exported checkpoint on shards: bits per subpixel, printed and written as JSON.

Locally (starts a local Ray when RAY_ADDRESS is unset; uses every CPU of the machine):

    python -m ray_jobs.evaluate --checkpoint runs/debug1/export --data val_shards/ --num-images 512 \
        --exact-images 32 --output metrics.json

The loss profile of the checkpoint on this data (written as onade.plans.LossProfile JSON), and the NLL of
samplers of 1, 4, ... passes planned from it (the full row: one pass per hole subpixel):

    python -m ray_jobs.evaluate --checkpoint runs/debug1/export --data val_shards/ --exact-images 32 \
        --profile profile.json --budgets 1,4,16,64,256,full --hole box:4,4,16,8

On a cluster (8 actors with one A10G each; an autoscaling cluster adds the GPU nodes they ask for):

    ray job submit --working-dir . -- python -m ray_jobs.evaluate \
        --checkpoint s3://bucket/runs/base1/export --data s3://bucket/shards/val \
        --workers 8 --gpus-per-worker 1 --accelerator-type A10G --budgets 1,4,16,64,256,full

Ray Data decodes the shards; a pool of `--workers` actors, each loading the checkpoint once, scores batches
with onade.metrics.evaluate (what training's validation reports), in bf16 where the hardware runs it
natively (`--precision`). An actor computes on CUDA exactly when it was granted a GPU (`--gpus-per-worker`,
ray_jobs.devices); by default the pool has one actor per GPU in the cluster when the job starts (at least
one), or on CPU one per CPU of the cluster, sharing out its CPUs and leaving some for decoding.
The JSON holds, averaged over images: `bits_per_dim` (orderless estimate over random masks),
`center_bits_true_caption` and `center_bits_shuffled_caption` (one-shot centre NLL with each image's
caption vs. another image's), `num_images`; and `exact_center_bits` (chain rule over the centre hole in
one random ordering: one forward pass per hole subpixel per image, so it runs on the first
`--exact-images` images only, default 64) with `exact_num_images`. Masks are seeded by each batch's
content, so the numbers do not depend on how many actors ran. Damaged data does not stop the job:
`skipped_samples` (with `skipped_by_reason`) counts the samples that could not be used, and `bad_shards`
lists each shard that could not be read to its end as {shard, reason, samples_read} (its samples before
the damage are scored); both are printed as well. They cover what the first pass read.

Over the same first `--exact-images` images and the hole of `--hole` (center, the default, or box:X,Y,W,H
in model pixels or as fractions of the side):
- `--profile PATH` measures the loss profile L(t) (onade.metrics.loss_profile, 64 forward passes per image;
  the mean of each batch's profile) and writes it to PATH; the JSON gets `profile_bits_first` (L(0), the
  one-shot NLL) and `profile_bits_last` (the last hole subpixel's).
- `--budgets 1,4,...,full` scores K-pass samplers (onade.metrics.budget_bits: K forward passes per image)
  with the plan of OA-ARDM's dynamic programme on the profile (onade.plans.step_plan; the one --profile
  measured, else the checkpoint's `profile.json`) and with K equal chunks (uniform_plan), in the same
  random ordering: `budgets` is a list of {passes, dp_bits, uniform_bits}. With one pass, or one per hole
  subpixel (`full`), both plans are the same one and are scored once; `full` over the centre hole is the
  exact NLL above, not recomputed.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time
import zlib

import numpy as np
import torch

from onade.config import PRECISIONS
from onade.metrics import EXACT_CENTER, EXACT_SEED_OFFSET, METRICS, PROFILE_POINTS, PROFILE_SEED_OFFSET
from ray_jobs.cli import DeprecatedAlias, add_sampler_flags, describe_sampler, sample_config
from ray_jobs.devices import check_gpus_per_process, warn_idle_gpus
from ray_jobs.ray_env import print_versions

SAMPLES, ORIGINALS = "samples_texture", "originals_texture"  # per batch: onade.texture.Texture's fields
PROFILE = "profile_bits"  # per batch: the batch's loss profile [M]
PLAN_BITS = "plan_bits"  # per batch: bits per hidden subpixel under each plan scored [P]
FULL = "full"
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
    p.add_argument("--hole", default="center", metavar="SPEC",
                   help="the hole of --profile and --budgets: center (default), box:X,Y,W,H in model pixels "
                        "or box:0.25,0.25,0.5,0.5 as fractions of the side")
    p.add_argument("--profile", metavar="PATH",
                   help="measure the loss profile over the hole on the first --exact-images images; write it here")
    p.add_argument("--budgets", type=_budgets, metavar="K,K,...",
                   help="NLL of K-pass samplers (DP and uniform plans) on the first --exact-images images; "
                        "'full' = one pass per hole subpixel, e.g. 1,4,16,64,256,full")
    p.add_argument("--precision", default="auto", choices=PRECISIONS,
                   help="auto (default): bf16 on GPUs with it and CPUs with AMX/AVX512-BF16, else fp32")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=0,
                   help="actors in the pool (default: with --gpus-per-worker, one per GPU in the cluster now, at "
                        "least 1: on an autoscaling cluster that starts without GPUs, give the count; on CPU, one "
                        "per CPU of the cluster)")
    p.add_argument("--gpus-per-worker", type=float, default=0,
                   help="GPUs per actor, at most 1 (0.5: two actors share a GPU); 0 = CPU actors")
    p.add_argument("--cpus-per-worker", type=float, default=0,
                   help="default: 1 with GPUs; on CPU the cluster's CPUs shared out, leaving some for decoding")
    # The spellings before the jobs shared one vocabulary (ray_jobs.inpaint's); they still parse.
    for old, new, kind in (("--actors", "--workers", int), ("--gpus-per-actor", "--gpus-per-worker", float),
                           ("--cpus-per-actor", "--cpus-per-worker", float)):
        p.add_argument(old, dest=new[2:].replace("-", "_"), type=kind, action=DeprecatedAlias, new=new)
    p.add_argument("--accelerator-type", default=None, metavar="TYPE",
                   help="GPU type each actor needs (e.g. A10G): steers the autoscaler to that node type")
    p.add_argument("--samples", type=int, default=0, metavar="N",
                   help="fill the hole of every evaluated image N times with the sampler flags' settings (the "
                        "inpainting job's) and report how the fills look: hole roughness over the originals', "
                        "speck rates (onade.texture)")
    add_sampler_flags(p, precision=False)
    args = p.parse_args(argv)
    args.sample = dataclasses.replace(sample_config(p, args), precision=args.precision)
    for flag in ("num_images", "batch_size", "num_masks", "workers", "exact_images", "samples"):
        if getattr(args, flag) < (1 if flag in ("batch_size", "num_masks") else 0):
            p.error(f"--{flag.replace('_', '-')} must be positive")
    try:
        check_gpus_per_process(args.gpus_per_worker, "--gpus-per-worker", shareable=True)
    except ValueError as e:
        p.error(str(e))
    if args.accelerator_type and not args.gpus_per_worker:
        p.error("--accelerator-type picks the GPU type of each actor: give --gpus-per-worker too")
    if (args.profile or args.budgets) and not args.exact_images:
        p.error("--profile and --budgets score the first --exact-images images: it must be > 0")
    if args.hole != "center" and not (args.profile or args.budgets or args.samples):
        p.error("--hole is the hole of --profile, --budgets and --samples (the other metrics use the centre): "
                "give one of them")
    if args.profile and (args.profile.startswith("s3://") or not os.path.isdir(os.path.dirname(args.profile) or ".")):
        p.error(f"--profile {args.profile!r}: a local file in an existing folder (copy it to S3 afterwards)")
    return args


def _budgets(spec: str) -> list[int | str]:
    """--budgets: pass counts (positive integers) and `full`."""
    out: list[int | str] = []
    for item in (v.strip() for v in spec.split(",")):
        if item == FULL:
            out.append(FULL)
        elif item.isdigit() and int(item) > 0:
            out.append(int(item))
        else:
            raise argparse.ArgumentTypeError(f"{item!r} is neither a positive number of passes nor {FULL!r}")
    return out


def hole_pixels(spec: str, image_size: int) -> torch.Tensor:
    """The hidden pixels (bool [H,W]) of --hole: center, or box:X,Y,W,H in model pixels or as fractions."""
    from onade.holes import HoleSpec

    try:
        hole = HoleSpec.parse(spec)
        if hole.kind == "random-box":
            raise ValueError("random-box gives each image its own hole; --hole takes one hole for every image")
        return torch.from_numpy(hole.hidden(image_size, image_size))
    except ValueError as e:
        raise ValueError(f"--hole {e} (the model sees {image_size}x{image_size})") from None


def budget_plans(profile, budgets: list[int | str], hole_size: int) -> list[tuple[int, list[int], list[int]]]:
    """(passes, DP plan, uniform plan) per distinct pass count, fewest first; `full` and counts beyond the
    hole are one pass per hole subpixel."""
    from onade.plans import step_plan, uniform_plan

    counts = sorted({hole_size if k == FULL else min(int(k), hole_size) for k in budgets})
    return [(k, step_plan(profile, k, hole_size), uniform_plan(hole_size, k)) for k in counts]


class Scorer:
    """A Ray Data actor: loads the checkpoint once, maps a batch to one row of per-batch metrics: the cheap
    ones, or (on the first --exact-images images) any of the exact NLL, the loss profile over `hole` and
    the budgeted NLL under each of `plans`."""

    def __init__(self, checkpoint: str, num_masks: int, seed: int, precision: str, threads: int,
                 exact: bool = False, profile: bool = False, plans: list[list[int]] = (), hole: str = "center",
                 samples: int = 0, sample: dict | None = None):
        import onade
        from ray_jobs.devices import actor_device
        from ray_jobs.train_checkpoints import load_export

        self.device = actor_device()  # CUDA exactly when Ray granted this actor a GPU
        if self.device.type == "cpu" and threads > 0:
            torch.set_num_threads(threads)
        loaded = load_export(checkpoint, device=self.device)
        self.model, self.loss_profile = loaded.model, loaded.profile
        self.precision = onade.resolve_precision(precision, self.device)
        self.num_masks, self.seed = num_masks, seed
        self.exact, self.profile, self.plans = exact, profile, [list(p) for p in plans]
        self.cheap = not (exact or profile or self.plans)
        self.hole_HW = hole_pixels(hole, self.model.cfg.image_size).to(self.device)
        self.samples = samples
        self.sample = onade.SampleConfig(**(sample or {})).validate()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from onade.metrics import budget_bits, evaluate, exact_center_bits, loss_profile
        from onade.precision import autocast

        x, tokens, lengths = (torch.from_numpy(np.array(batch[k])).to(self.device, dtype)
                              for k, dtype in (("image", torch.uint8), ("tokens", torch.long), ("length", torch.long)))
        lengths = lengths.view(-1)
        # Seeded by the batch's content: masks differ across batches, and a rerun, with any number of actors,
        # gives the same numbers.
        seed = zlib.crc32(np.ascontiguousarray(batch["image"]).tobytes(), self.seed)
        n = len(batch["image"])
        out = {"num_images": np.array([n]), "precision": np.array([self.precision])}
        if self.cheap:
            metrics = evaluate(self.model, [(x, tokens, lengths)], num_masks=self.num_masks, seed=seed,
                               precision=self.precision)
            if self.samples:
                out.update(self.fill(x, tokens, lengths, seed))
            return {**{k: np.array([metrics[k]]) for k in METRICS}, **out}
        # The costly metrics (the cheap ones came from the first pass), in evaluate's orderings: the budgets
        # share the exact NLL's, so every plan is scored in the same ordering and the one-pass-per-subpixel
        # plan over the centre hole is the exact NLL.
        observed_BHWC = ~self.hole_HW[None, :, :, None].expand(*x.shape)
        with autocast(self.precision, self.device):
            if self.exact:
                out[EXACT_CENTER] = np.array([exact_center_bits(
                    self.model, x, tokens, lengths, torch.Generator().manual_seed(seed + EXACT_SEED_OFFSET))])
            if self.profile:
                profile = loss_profile(self.model, [(x, tokens, lengths)], self.hole_HW, PROFILE_POINTS,
                                       torch.Generator().manual_seed(seed + PROFILE_SEED_OFFSET))
                out[PROFILE] = np.array([profile.bits])
            if self.plans:
                out[PLAN_BITS] = np.array([[budget_bits(self.model, x, observed_BHWC, tokens, lengths, plan,
                                                        torch.Generator().manual_seed(seed + EXACT_SEED_OFFSET))
                                            for plan in self.plans]])
        return out

    def fill(self, x, tokens, lengths, seed: int) -> dict[str, np.ndarray]:
        """Texture sums (onade.texture) of `samples` fills of the hole per image, and of the originals."""
        import onade
        from onade.texture import Texture, texture

        observed_BHWC = ~self.hole_HW[None, :, :, None].expand(*x.shape)
        sums, stats, kl = Texture(), {}, 0.0
        for s in range(self.samples):
            filled, _ = onade.inpaint(self.model, x, observed_BHWC, tokens, lengths, self.sample,
                                      seed=(seed + s) % 2 ** 63, profile=self.loss_profile, stats=stats,
                                      measure_kl=True)
            sums += texture(filled, self.hole_HW)
            kl += stats["draw_kl_bits"] / self.samples
        out = {f"{SAMPLES}_{k}": np.array([v]) for k, v in dataclasses.asdict(sums).items()}
        originals = dataclasses.asdict(texture(x, self.hole_HW))
        out.update({f"{ORIGINALS}_{k}": np.array([v]) for k, v in originals.items()})
        out["forward_passes"] = np.array([stats.get("forward_passes", 0)])
        out["draw_kl_bits"] = np.array([kl])
        return out


def pool_size(args) -> tuple[int, float, int]:
    """(actors, CPUs per actor, torch threads per actor) for this cluster."""
    import ray

    resources = ray.cluster_resources()
    if args.gpus_per_worker > 0:
        actors = args.workers or max(1, int(resources.get("GPU", 0) // args.gpus_per_worker))
        return actors, args.cpus_per_worker or 1.0, 0
    total = resources.get("CPU", 1.0)
    actors = args.workers or max(1, int(total))
    # Leave room for one read and one decode task (DATA_CPUS) or the pipeline stalls.
    cpus = args.cpus_per_worker or max(0.25, (total - sum(DATA_CPUS)) / actors)
    return actors, cpus, max(1, int(total // actors))


def _score(ds, args, total: int, label: str, **tasks) -> list[dict]:
    """Score `ds` with a pool of Scorer actors doing `tasks` (Scorer's keywords; none: the cheap metrics)."""
    import ray.data

    actors, cpus, threads = pool_size(args)
    scored = ds.map_batches(
        Scorer, fn_constructor_kwargs={"checkpoint": args.checkpoint, "num_masks": args.num_masks,
                                       "seed": args.seed, "precision": args.precision, "threads": threads,
                                       "hole": args.hole, "samples": args.samples,
                                       "sample": dataclasses.asdict(args.sample), **tasks},
        batch_size=args.batch_size, batch_format="numpy", compute=ray.data.ActorPoolStrategy(size=actors),
        num_cpus=cpus, num_gpus=args.gpus_per_worker or None,
        **({"accelerator_type": args.accelerator_type} if args.accelerator_type else {}))
    rows, done, t0, shown = [], 0, time.perf_counter(), time.perf_counter()
    for row in scored.iter_rows():
        rows.append(row)
        done += int(row["num_images"])
        now = time.perf_counter()
        if now - shown > 10:
            of = f"/{total}" if total else ""
            print(f"{label}: {done}{of} images, {done / (now - t0):.1f} images/s", flush=True)
            shown = now
    print(f"{label}: {done} images in {time.perf_counter() - t0:.0f}s ({actors} worker(s))", flush=True)
    return rows


def fill_figures(rows: list[dict], args) -> dict:
    """onade.texture.sample_quality of the fills' pooled texture sums beside the originals', with the settings."""
    from onade.texture import Texture, sample_quality

    names = [f.name for f in dataclasses.fields(Texture)]

    def pooled(prefix: str) -> Texture:
        return sum((Texture(**{n: r[f"{prefix}_{n}"] for n in names}) for r in rows), Texture())

    return {**sample_quality(pooled(SAMPLES), pooled(ORIGINALS)), "samples_per_image": args.samples,
            "forward_passes": int(max(r["forward_passes"] for r in rows)),
            "draw_kl_bits": _mean(rows, ("draw_kl_bits",))["draw_kl_bits"], "hole": args.hole,
            "settings": dataclasses.asdict(args.sample)}


def _mean(rows: list[dict], keys) -> dict:
    """Image-weighted means of `keys` over the per-batch rows, and the image count."""
    counts = np.array([r["num_images"] for r in rows], dtype=np.float64)
    return {**{k: float(np.dot([r[k] for r in rows], counts) / counts.sum()) for k in keys},
            "num_images": int(counts.sum())}


def _mean_vector(rows: list[dict], key: str) -> np.ndarray:
    """The image-weighted mean of a per-batch vector column."""
    counts = np.array([r["num_images"] for r in rows], dtype=np.float64)
    return counts @ np.stack([np.asarray(r[key], np.float64) for r in rows]) / counts.sum()


def _budget_rows(plans, scored_rows: list[dict], full_bits: float | None) -> list[dict]:
    """{passes, dp_bits, uniform_bits} per entry of `plans` (budget_plans), from the per-batch rows that
    scored each of _distinct_plans(plans, ...) and, when given, the full row's bits (the exact NLL)."""
    distinct = _distinct_plans(plans, full_bits is not None)
    bits = _mean_vector(scored_rows, PLAN_BITS).tolist() if distinct else []
    scored = dict(zip(map(tuple, distinct), bits))
    rows = []
    for k, dp, uniform in plans:
        if full_bits is not None and k == dp[-1]:
            rows.append({"passes": k, "dp_bits": full_bits, "uniform_bits": full_bits})
        else:
            rows.append({"passes": k, "dp_bits": scored[tuple(dp)], "uniform_bits": scored[tuple(uniform)]})
    return rows


def _distinct_plans(plans, skip_full: bool) -> list[list[int]]:
    """Each plan to score once (a one-pass plan is the same for both, and so is the full one), without the
    full plan when its bits are known already."""
    out: list[list[int]] = []
    for k, dp, uniform in plans:
        if skip_full and k == dp[-1]:
            continue
        out += [p for p in (dp, uniform) if p not in out]
    return out


def _print_budgets(rows: list[dict], hole: str, hole_size: int, num_images: int) -> None:
    print(f"budgeted NLL, bits per hole subpixel ({num_images} images, hole {hole}: {hole_size} subpixels)")
    print(f"{'passes':>8} {'dp_bits':>9} {'uniform_bits':>13}")
    for r in rows:
        full = "  (full)" if r["passes"] == hole_size else ""
        print(f"{r['passes']:>8} {r['dp_bits']:>9.4f} {r['uniform_bits']:>13.4f}{full}")


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    print_versions()
    import ray
    import ray.data

    from onade.plans import LossProfile
    from ray_jobs.data import make_skip_counter, print_bad_shards, resolve_shards, shard_dataset, skip_summary
    from ray_jobs.ray_env import init_ray
    from ray_jobs.train_checkpoints import load_export

    loaded = load_export(args.checkpoint)  # fails fast on a path that is not a checkpoint
    cfg = loaded.config
    hole_size = 3 * int(hole_pixels(args.hole, cfg.model.image_size).sum())  # a bad --hole fails here too
    if args.budgets and not args.profile and loaded.profile is None:
        raise ValueError(f"--budgets plans its passes from a loss profile, and {args.checkpoint} ships none "
                         "(profile.json): pass --profile PATH to measure one on --data first")
    shards = resolve_shards(args.data)
    if not shards:
        raise ValueError(f"--data {args.data!r} holds no shards: build them with python -m data.make_shards")
    init_ray()
    warn_idle_gpus(args.gpus_per_worker)
    ray.data.DataContext.get_current().enable_progress_bars = False
    counter = make_skip_counter()
    ds = shard_dataset(shards, cfg.model.image_size, cfg.data.max_tokens, loaded.tokenizer, train=False,
                       seed=args.seed, read_num_cpus=DATA_CPUS[0], num_cpus=DATA_CPUS[1], skip_counter=counter,
                       batch_size=args.batch_size)  # blocks of one scoring batch: every actor gets work
    if args.num_images:
        ds = ds.limit(args.num_images)
    rows = _score(ds, args, args.num_images, "cheap metrics")
    # Read now: the exact pass reads its images again and would count their skips twice.
    dropped = skip_summary(counter)
    print_bad_shards(dropped)
    if dropped["total"]:
        print(f"skipped {dropped['total']} unusable sample(s): {dropped['by_reason']}", flush=True)
    if not rows or sum(int(r["num_images"]) for r in rows) == 0:
        raise ValueError(f"--data {args.data!r} gave no images to evaluate ({dropped['total']} samples skipped, "
                         f"{dropped['num_bad_shards']} unreadable shard(s), listed above)")
    result = _mean(rows, METRICS)
    if args.samples:
        result["samples"] = fill_figures(rows, args)
        print(f"fills ({args.samples} per image, {describe_sampler(args.sample)}): "
              + ", ".join(f"{k} {v:.4g}" for k, v in result["samples"].items() if isinstance(v, float)), flush=True)
    result.update(skipped_samples=dropped["total"], skipped_by_reason=dropped["by_reason"],
                  num_bad_shards=dropped["num_bad_shards"], bad_shards=dropped["bad_shards"])
    result["precision"] = str(rows[0]["precision"])
    exact_images = min(args.exact_images, result["num_images"])
    if exact_images:
        first = ds.limit(exact_images)
        # The full plan over the centre hole is the exact NLL of the same images in the same ordering.
        reuse_full = args.hole == "center"
        # Plans from the checkpoint's profile are scored in the exact NLL's pass; plans from the profile that
        # pass measures need a pass of their own.
        plans = budget_plans(loaded.profile, args.budgets, hole_size) if args.budgets and not args.profile else []
        label = "exact NLL" + (" + profile" if args.profile else "") + (" + budgets" if plans else "")
        rows = _score(first, args, exact_images, label, exact=True, profile=bool(args.profile),
                      plans=_distinct_plans(plans, reuse_full))
        exact = _mean(rows, (EXACT_CENTER,))
        result.update({EXACT_CENTER: exact[EXACT_CENTER], "exact_num_images": exact["num_images"]})
        if args.profile:
            profile = LossProfile(bits=[round(float(b), 5) for b in _mean_vector(rows, PROFILE)], mask=args.hole,
                                  image_size=cfg.model.image_size, num_images=exact["num_images"])
            with open(args.profile, "w") as f:
                f.write(profile.to_json() + "\n")
            result.update(profile=args.profile, profile_bits_first=profile.bits[0],
                          profile_bits_last=profile.bits[-1])
            if args.budgets:
                plans = budget_plans(profile, args.budgets, hole_size)
                if _distinct_plans(plans, reuse_full):
                    rows = _score(first, args, exact_images, "budgets", plans=_distinct_plans(plans, reuse_full))
        if plans:
            result["budgets"] = _budget_rows(plans, rows, exact[EXACT_CENTER] if reuse_full else None)
            _print_budgets(result["budgets"], args.hole, hole_size, exact["num_images"])
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
