r"""Train onade with Ray Train + DeepSpeed; checkpoints and run files in a local folder or S3.

Locally (starts a local Ray when RAY_ADDRESS is unset; CPU workers use gloo and DeepSpeed's CPU backend):

    python -m ray_jobs.train --data shards/ --val-data val_shards/ --output runs/ --name debug1 --preset debug

On a cluster:

    ray job submit --working-dir . -- python -m ray_jobs.train \
        --data s3://bucket/shards/train --val-data s3://bucket/shards/val --output s3://bucket/runs \
        --name base1 --preset base --workers 16 --gpus-per-worker 1

Running again with the same --output and --name resumes from the latest checkpoint (step, optimizer, LR
schedule, data position; at any worker count, see ray_jobs.resume); a crashed worker group restarts from it
up to --max-failures times. At the end the latest checkpoint is exported to STORAGE/RUN/export/ (see
ray_jobs.train_checkpoints); `--export-only [--checkpoint-step N]` exports a kept checkpoint without
training. Run files: STORAGE/RUN/metrics.jsonl, tb/ (TensorBoard), samples/ (PNG grids: original, masked,
one-shot prediction).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import uuid
from typing import NamedTuple

from onade.config import Config, ConfigError, PRESETS, get_preset, load_config
from ray_jobs.devices import check_gpus_per_process, warn_idle_gpus
from ray_jobs.ray_env import TRAIN_LOG_LEVEL, init_ray, print_versions, train_log_level

DEFAULT_PRESET = "debug"  # a smoke test: trains in minutes on CPUs, so a first run shows the whole pipeline
DEFAULT_MAX_FAILURES = 3
PREEMPTION_GRACE_S = 0.0  # Ray Train stops a drained node's workers at the deadline plus this
DATA_CPUS = 1.0  # what a local Ray keeps for Ray Data's read and decode tasks


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m ray_jobs.train", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", help="training shards: folder/prefix, manifest.json, brace pattern or comma list")
    p.add_argument("--val-data", help="validation shards (same forms as --data)")
    p.add_argument("--output", required=True, help="storage root: a local folder or s3://bucket/prefix")
    p.add_argument("--name", required=True, help="run name (one folder under --output); the same name resumes the run")
    # No argparse default: None says the user left it out, which the start of training says (preset_line).
    p.add_argument("--preset", choices=list(PRESETS), help=preset_help())
    p.add_argument("--config", help="YAML file with a partial config tree")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override, repeatable")
    p.add_argument("--steps", type=int, help="shortcut for --set train.steps=N")
    p.add_argument("--zero-config", metavar="JSON",
                   help="DeepSpeed JSON with the ZeRO settings, instead of cluster/deepspeed/zero{train.zero_stage}"
                        ".json (its stage must be train.zero_stage; batch sizes, precision, clipping and the "
                        "optimizer are derived from the onade config and refused)")
    p.add_argument("--workers", type=worker_range, default=WorkerRange(1, 1), metavar="N|MIN-MAX",
                   help="training workers; MIN-MAX trains elastically: it starts once MIN fit, grows to MAX as "
                        "nodes arrive and goes on with fewer when nodes leave (default 1)")
    p.add_argument("--gpus-per-worker", type=float, default=0,
                   help="0 (default): CPU workers over gloo; 1: one GPU per worker, over NCCL")
    p.add_argument("--accelerator-type", default=None, metavar="TYPE",
                   help="GPU type each worker needs (e.g. A100): steers the autoscaler to that node type")
    p.add_argument("--cpus-per-worker", type=float, default=None,
                   help="default: 1 with GPUs or on a cluster; on a local Ray, its CPUs shared among the workers "
                        "after one for the data pipeline")
    p.add_argument("--placement-strategy", default="PACK", choices=["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"])
    p.add_argument("--max-failures", type=int, default=DEFAULT_MAX_FAILURES,
                   help="worker-group restarts from the latest checkpoint before the run fails (a lost node is "
                        "one; a node drained for preemption is not)")
    p.add_argument("--elastic-check-s", type=float, default=60, metavar="S",
                   help="with --workers MIN-MAX: how often the run looks for room to grow (each growth restarts "
                        "the workers from the latest checkpoint; default 60)")
    p.add_argument("--stop-file", metavar="PATH",
                   help="a local or s3:// path: once it exists, the run ends at its next checkpoint (to stop a run "
                        "cleanly, e.g. before resuming it with other settings)")
    p.add_argument("--export-only", action="store_true", help="export a checkpoint of the run, do not train")
    p.add_argument("--checkpoint-step", type=int, help="with --export-only: the step to export (default latest)")
    p.add_argument("--export-to", help="where the export goes (default STORAGE/RUN/export, local or s3://)")
    p.add_argument("--export-weights", default="ema", choices=["ema", "raw"],
                   help="ema (default): the averaged weights when train.ema_decay > 0; raw: the trained ones")
    p.add_argument("--no-export", action="store_true", help="skip the export at the end of training")
    args = p.parse_args(argv)
    if not args.export_only and not args.data:
        p.error("--data is required (unless --export-only)")
    try:
        check_gpus_per_process(args.gpus_per_worker, "--gpus-per-worker", shareable=False)
    except ValueError as e:
        p.error(str(e))
    if args.elastic_check_s <= 0:
        p.error(f"--elastic-check-s must be > 0, got {args.elastic_check_s:g}")
    return args


def preset_help() -> str:
    """--preset's help: the default and each preset's image size (from onade.config, without importing torch:
    the parameter counts, which need a model built, are printed when training starts)."""
    sizes = ", ".join(f"{name} {get_preset(name).model.image_size} px" for name in PRESETS)
    return f"model and training preset (default {DEFAULT_PRESET}, a smoke test; images: {sizes})"


def preset_name(args: argparse.Namespace) -> str:
    return args.preset or DEFAULT_PRESET


def preset_line(args: argparse.Namespace, cfg: Config) -> str:
    """What the run trains, said at its start: the preset, its parameters and image size (after --config and
    --set), and, when --preset was not given, that it is the default and how to choose another."""
    import torch

    from onade.model import build_model, num_parameters

    with torch.device("meta"):  # shapes only: counting `large` allocates none of its ~470 M weights
        params = num_parameters(build_model(cfg.model))
    changed = " with --config/--set overrides" if args.config or args.set else ""
    line = f"preset {preset_name(args)}{changed} ({params / 1e6:.2f} M parameters, {cfg.model.image_size} px images)"
    if args.preset is None:
        line += f": the default; choose with --preset {'|'.join(PRESETS)}"
    return line


class WorkerRange(NamedTuple):
    min: int
    max: int

    def __str__(self) -> str:
        return str(self.min) if self.min == self.max else f"{self.min}-{self.max}"


def worker_range(text: str) -> WorkerRange:
    lo, dash, hi = text.partition("-")
    try:
        out = WorkerRange(int(lo), int(hi if dash else lo))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a worker count N or a range MIN-MAX (e.g. 1-4)") from None
    if not 1 <= out.min <= out.max:
        raise argparse.ArgumentTypeError(f"{text!r}: need 1 <= MIN <= MAX")
    return out


def check_batch_splits(cfg: Config, workers: WorkerRange) -> None:
    """The global batch must split evenly at every worker count the run may have."""
    from ray_jobs.engine import split_batch

    bad = []
    for n in range(workers.min, workers.max + 1):
        try:
            split_batch(cfg.data.global_batch_size, n, cfg.train.micro_batch_size)
        except ConfigError:
            bad.append(n)
    if bad:
        unit = math.lcm(*range(workers.min, workers.max + 1)) * max(1, cfg.train.micro_batch_size)
        raise ConfigError(f"data.global_batch_size={cfg.data.global_batch_size} does not split evenly over "
                          f"{bad} worker(s) (x train.micro_batch_size={cfg.train.micro_batch_size}), and --workers "
                          f"{workers} allows them: use a multiple of {unit} (e.g. --set data.global_batch_size="
                          f"{unit * max(1, round(cfg.data.global_batch_size / unit))}) or another range")


def build_config(args: argparse.Namespace) -> Config:
    sets = list(args.set)
    if args.steps is not None:
        sets.append(f"train.steps={args.steps}")
    return load_config(preset_name(args), args.config, sets)


def check_args(args: argparse.Namespace) -> tuple[Config, dict]:
    """Every check of the flags and the config that reads no data and starts nothing (a mistake costs a second,
    not a cluster start; the docs test runs it on every training command in the docs): (config, DeepSpeed JSON)."""
    from ray_jobs.engine import load_zero_json

    cfg = build_config(args)  # validated; a ConfigError names a bad key
    check_batch_splits(cfg, args.workers)
    return cfg, load_zero_json(cfg.train.zero_stage, path=args.zero_config)


def check_shard_size(shard_px: int, model_px: int, flag: str, where: str) -> str | None:
    """Shards against the model's window (model.image_size): a warning when their images are larger (training
    takes random crops of them, validation the centre crop), None when they match. Smaller ones are an error:
    the pipeline would upsample them, and the model learn from blurred images."""
    if shard_px == model_px:
        return None
    rebuild = f"python -m data.make_shards SRC DEST --image-size {model_px}"
    presets = [name for name in PRESETS if get_preset(name).model.image_size == shard_px]
    other = f"--preset {'|'.join(presets)} ({shard_px} px)" if presets else f"--set model.image_size={shard_px}"
    if shard_px < model_px:
        raise ValueError(f"{flag} holds {shard_px} px images ({where}), smaller than model.image_size "
                         f"{model_px}: the model would learn from upsampled images. Rebuild the shards with "
                         f"`{rebuild}`, or train at their size: {other}")
    crops = "training takes random" if flag == "--data" else "validation scores the centre"
    return (f"warning: {flag} holds {shard_px} px images ({where}) but model.image_size is {model_px}: {crops} "
            f"{model_px} px crops of them. For whole images, rebuild the shards with `{rebuild}`, or train at "
            f"their size: {other}")


def check_shard_sizes(args: argparse.Namespace, cfg: Config, train: list[str], val: list[str] | None) -> None:
    """check_shard_size for --data and --val-data, warnings printed; shards whose size cannot be read pass."""
    from ray_jobs.data import shard_image_size

    for flag, spec, urls in (("--data", args.data, train), ("--val-data", args.val_data, val)):
        found = shard_image_size(spec, urls) if urls else None
        if found is None:
            continue
        shard_px, where = found
        warning = check_shard_size(shard_px, cfg.model.image_size, flag, where)
        if warning:
            print(warning, file=sys.stderr, flush=True)


def check_inputs(args: argparse.Namespace) -> tuple[list[str], list[str] | None, object]:
    """Resolve shards and the tokenizer before Ray starts; a missing path fails here, naming it."""
    from ray_jobs.data import resolve_shards, tokenizer_for

    train = _shards(args.data, "--data", resolve_shards)
    val = _shards(args.val_data, "--val-data", resolve_shards) if args.val_data else None
    return train, val, tokenizer_for(args.data)


def _shards(spec: str, flag: str, resolve) -> list[str]:
    try:
        shards = resolve(spec)
    except ValueError as e:
        raise ValueError(f"{flag} {spec!r}: {e}") from e
    if not shards:
        raise ValueError(f"{flag} {spec!r} holds no shards: build them with python -m data.make_shards")
    return shards


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    print_versions()
    cfg, zero = check_args(args)
    from data import storage, untrusted
    from onade.export_format import EXPORT_DIR
    from ray_jobs.resume import check_resume
    from ray_jobs.train_checkpoints import export_run, run_url

    untrusted.check_run_name(args.name)  # a run folder cannot climb out of the storage root
    for flag in ("output", "export_to"):
        if getattr(args, flag):
            untrusted.check_s3_root(getattr(args, flag), "--" + flag.replace("_", "-"))
    run = run_url(args.output, args.name)
    if args.export_only:
        out = export_run(args.output, args.name, args.checkpoint_step, args.export_to, args.export_weights)
        print(f"exported {out}")
        return {"export": out}

    train_shards, val_shards, tokenizer = check_inputs(args)
    cfg.model.vocab_size = tokenizer.vocab_size
    cfg.validate()
    print(preset_line(args, cfg), flush=True)
    check_shard_sizes(args, cfg, train_shards, val_shards)
    storage.check_writable(args.output)
    resume_step = check_resume(cfg, run, args.workers)
    if resume_step >= cfg.train.steps:
        print(f"run {run} is already at step {resume_step} >= train.steps={cfg.train.steps}: nothing to train")
        metrics = {"step": resume_step}
    else:
        # Ray Train's placement-group cleaner polls the State API, which a local Ray serves from its dashboard.
        # RAY_ADDRESS names a cluster, whose autoscaler may still be adding nodes: only a Ray started here (or
        # by the caller, as tests do) is all there will be.
        fixed = init_ray(state_api=True) != "cluster"
        warn_idle_gpus(args.gpus_per_worker)
        args.cpus_per_worker = cpus_per_worker(args, fixed)
        if fixed:
            check_cpus_left_for_data(args)
        metrics = dict(fit(args, cfg, zero, tokenizer, train_shards, val_shards, run).metrics or {})
    if not args.no_export:
        metrics["export"] = export_run(args.output, args.name, out_url=args.export_to or storage.join(run, EXPORT_DIR),
                                       weights=args.export_weights)
        print(f"exported {metrics['export']}")
    print("final " + json.dumps(metrics, default=str))
    return metrics


def cpus_per_worker(args: argparse.Namespace, fixed: bool) -> float:
    """--cpus-per-worker, or its default: 1 with GPUs, on a cluster that may grow, or where the CPUs hold
    the most workers the run may have and one more for data; else the CPUs shared among those workers
    after one for data (the inpaint job shares them out the same way)."""
    if args.cpus_per_worker is not None:
        return args.cpus_per_worker
    import ray

    total = ray.cluster_resources().get("CPU", 0.0)
    if args.gpus_per_worker > 0 or not fixed or total >= args.workers.max + DATA_CPUS:
        return 1.0
    return max(0.1, math.floor((total - DATA_CPUS) / args.workers.max * 100) / 100)


def check_cpus_left_for_data(args: argparse.Namespace) -> None:
    """Ray Data's read and decode tasks need a free CPU somewhere; training workers holding every CPU of a
    local Ray would leave the input pipeline waiting forever. (Not checked on a cluster: an autoscaler may
    still be adding nodes.)"""
    import ray

    total = ray.cluster_resources().get("CPU", 0)
    held = args.workers.min * args.cpus_per_worker  # an elastic run starts with what fits, and waits for more
    # Ray Data's decode tasks each take a whole CPU (two sharing a core measured 2-3x slower).
    if total - held < DATA_CPUS:
        raise ValueError(f"{args.workers.min} workers x {args.cpus_per_worker} CPUs hold all {total:g} CPUs of the Ray "
                         "cluster, leaving none for the data pipeline: lower --cpus-per-worker (e.g. 0.5) or "
                         "--workers, or add nodes")


def scaling_config(args: argparse.Namespace):
    """Ray Train's ScalingConfig for --workers (a count, or MIN-MAX: elastic, looking for room to grow every
    --elastic-check-s), --cpus-per-worker (resolved), --gpus-per-worker and placement."""
    import ray.train

    use_gpu = args.gpus_per_worker > 0
    resources = {"CPU": args.cpus_per_worker, **({"GPU": args.gpus_per_worker} if use_gpu else {})}
    elastic = args.workers.min != args.workers.max
    return ray.train.ScalingConfig(num_workers=tuple(args.workers) if elastic else args.workers.min, use_gpu=use_gpu,
                                   resources_per_worker=resources, placement_strategy=args.placement_strategy,
                                   accelerator_type=args.accelerator_type,
                                   elastic_resize_monitor_interval_s=args.elastic_check_s)


def fit(args, cfg: Config, zero: dict, tokenizer, train_shards, val_shards, run: str):
    import ray.data
    import ray.train
    from ray.train.torch import TorchTrainer

    from data import storage
    from ray_jobs.data import make_skip_counter, print_bad_shards, shard_dataset, skip_summary
    from ray_jobs.run_spec import RunSpec
    from ray_jobs.train_loop import train_loop_per_worker

    # Unreadable shards and samples are dropped and counted here; rank 0 logs them (train_loop). A name of its
    # own per fit: a counter of an earlier fit in this process may still be on its way out.
    counter_name = f"{args.name}-{uuid.uuid4().hex[:8]}"
    skips = make_skip_counter(counter_name)

    def dataset(shards, train: bool):
        return shard_dataset(shards, cfg.model.image_size, cfg.data.max_tokens, tokenizer, train=train,
                             seed=cfg.train.seed, random_flip=cfg.data.random_flip, skip_counter=skips)

    # Progress bars redraw per block: unreadable in `ray job logs`; the loop prints its own progress.
    ray.data.DataContext.get_current().enable_progress_bars = False
    datasets = {"train": dataset(train_shards, True)}
    if val_shards:
        datasets["val"] = dataset(val_shards, False)
    fs, storage_path = storage.pyarrow_fs(args.output)
    scaling = scaling_config(args)
    env = {} if scaling.use_gpu else {"DS_ACCELERATOR": "cpu"}

    def train_worker(config: dict):
        # LoggingConfig (below) alone lets Ray's "Reporting training result ..." line per report through.
        train_log_level(TRAIN_LOG_LEVEL)
        train_loop_per_worker(config)

    trainer = TorchTrainer(
        train_worker,
        train_loop_config={"run": RunSpec(skip_counter=counter_name, config=cfg.to_dict(), zero=zero,
                                          tokenizer=tokenizer.to_bytes(),
                                          has_val=bool(val_shards), storage_fs=fs,
                                          run_path=f"{storage_path.rstrip('/')}/{args.name}",
                                          preemption_grace_s=PREEMPTION_GRACE_S, stop_file=args.stop_file)},
        scaling_config=scaling,
        run_config=ray.train.RunConfig(
            name=args.name, storage_path=storage_path, storage_filesystem=fs,
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=cfg.train.keep_checkpoints),
            # A drained node (spot preemption) stops the group at its deadline; those restarts are not failures.
            failure_config=ray.train.FailureConfig(max_failures=args.max_failures, max_preemption_failures=-1,
                                                   preemption_grace_s=PREEMPTION_GRACE_S),
            worker_runtime_env={"env_vars": env},
            # Ray Train's per-report INFO lines would drown the loop's own progress lines.
            logging_config=ray.train.LoggingConfig(log_level=TRAIN_LOG_LEVEL),
        ),
        datasets=datasets,
    )
    print(f"training {run}: preset {preset_name(args)}, {args.workers} worker(s) x {args.cpus_per_worker:g} CPU, "
          f"global batch {cfg.data.global_batch_size}, {cfg.train.steps} steps, ZeRO-{cfg.train.zero_stage}",
          flush=True)
    result = trainer.fit()
    skipped = skip_summary(skips)
    print_bad_shards(skipped)
    return result


if __name__ == "__main__":
    from ray_jobs.cli import run

    run(main)
