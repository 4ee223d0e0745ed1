"""The DeepSpeed engine of one training worker.

The ZeRO settings come from `cluster/deepspeed/zero{1,2,3}.json`; everything that follows from the run
(batch sizes, precision, clipping) is derived here and never written in the JSON, so one global batch size
means the same thing on 2 CPUs and on 64 GPUs. The optimizer is a torch AdamW (fused on CPU) handed to
`deepspeed.initialize` (a DeepSpeed "optimizer" section would JIT-build a C++ op), and the LR schedule is a
torch LambdaLR: linear warmup, then cosine decay to `min_lr_ratio * lr`. DeepSpeed steps both at each
gradient-accumulation boundary and saves both in its checkpoints.

Precision: DeepSpeed always holds fp32 weights; bf16 is torch autocast around the forward pass, set by the
`torch_autocast` section this module derives from `train.precision`, so DeepSpeed's engine opens the
autocast itself (deepspeed/runtime/torch_autocast.py autocast_if_enabled, entered by runtime/engine.py
forward) on its accelerator's device type, CPU or CUDA. An autocast opened *around* `engine(...)` does not
work: on CUDA the engine sees it enabled with its own section absent and runs the module under
`autocast(enabled=False)`, i.e. fp32. It keeps the optimizer, EMA and exports in fp32 without DeepSpeed's
bf16 optimizer wrapper, and on a CPU it ran as fast as bf16 weights (measured: `small` forward+backward,
AVX512-BF16 without AMX; docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import json
import math
import os
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch

from onade.config import Config, ConfigError, TrainConfig

DEEPSPEED_DIR = Path(__file__).resolve().parent.parent / "cluster" / "deepspeed"
# Keys this module derives; a JSON that sets them would silently disagree with the global batch size.
DERIVED_KEYS = ("train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps",
                "gradient_clipping", "optimizer", "scheduler", "bf16", "fp16", "torch_autocast", "checkpoint")


@dataclass(frozen=True)
class BatchSplit:
    global_batch: int
    micro_batch: int  # per worker per forward pass
    grad_accum: int
    world_size: int


def split_batch(global_batch: int, world_size: int, micro_batch: int = 0) -> BatchSplit:
    """global = micro * accumulation * world; micro 0 means no accumulation."""
    if world_size < 1:
        raise ValueError(f"world size must be >= 1, got {world_size}")
    micro = micro_batch or global_batch // world_size
    if micro < 1 or global_batch % (micro * world_size):
        raise ConfigError(
            f"data.global_batch_size={global_batch} must be a multiple of train.micro_batch_size x workers = "
            f"{micro_batch or '(global / workers)'} x {world_size}: change data.global_batch_size, "
            "train.micro_batch_size or --workers")
    return BatchSplit(global_batch, micro, global_batch // (micro * world_size), world_size)


def load_zero_json(stage: int, directory: str | Path = DEEPSPEED_DIR, path: str | Path | None = None) -> dict:
    """The ZeRO settings for `stage`: `path` (a user's JSON, e.g. other bucket sizes for their GPUs) or the
    shipped cluster/deepspeed/zero{stage}.json."""
    if stage not in (1, 2, 3):
        raise ConfigError(f"train.zero_stage must be 1, 2 or 3 (cluster/deepspeed/zero{{1,2,3}}.json), got {stage}")
    if path is None:
        path = Path(directory) / f"zero{stage}.json"
        if not path.is_file():
            raise ValueError(f"DeepSpeed config {path} is missing: it ships in the repository's cluster/deepspeed/")
    elif not Path(path).is_file():
        raise ValueError(f"--zero-config {path}: not a file")
    try:
        ds = json.loads(Path(path).read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"DeepSpeed config {path} is not JSON: {e}") from None
    if not isinstance(ds, dict):
        raise ValueError(f"DeepSpeed config {path} must hold a JSON object, not {type(ds).__name__}")
    bad = [k for k in DERIVED_KEYS if k in ds]
    if bad:
        raise ValueError(f"{path} sets {bad}: these are derived from the onade config (global batch size, "
                         "world size, train.precision, train.grad_clip, the resume); remove them from the JSON")
    zero = ds.get("zero_optimization")
    found = zero.get("stage") if isinstance(zero, dict) else None
    if found != stage:
        raise ConfigError(f"{path} has zero_optimization.stage {found!r}, but train.zero_stage is {stage}: "
                          "set one to the other (zero_optimization must be an object with a stage)")
    return ds


def deepspeed_config(zero_json: dict, split: BatchSplit, grad_clip: float, precision: str) -> dict:
    """The engine's config: the ZeRO settings plus what the run derives. `precision` is resolved ("bf16" or
    "fp32", onade.precision.resolve_precision on the worker's device)."""
    if precision not in ("bf16", "fp32"):
        raise ValueError(f"deepspeed_config takes a resolved precision ('bf16' or 'fp32'), got {precision!r}")
    ds = json.loads(json.dumps(zero_json))
    ds.update(
        train_batch_size=split.global_batch,
        train_micro_batch_size_per_gpu=split.micro_batch,
        gradient_accumulation_steps=split.grad_accum,
        gradient_clipping=grad_clip,
        # No lower-precision-safe modules: DeepSpeed would otherwise tag every Linear and Conv weight to reduce
        # its gradients (and, under ZeRO-3, gather the weight) in bf16 (init_autocast_params,
        # zero/stage_1_and_2.py and stage3.py ipg_buckets by comm dtype). Summing gradients over many ranks
        # in 8 bits of mantissa is a numerics change this project has not measured; fp32 communication is
        # what every run so far trained with.
        torch_autocast={"enabled": precision == "bf16", "dtype": "bfloat16", "lower_precision_safe_modules": []},
    )
    return ds


def lr_factor(step: int, warmup: int, total: int, min_ratio: float) -> float:
    """Multiplier of the peak LR after `step` optimizer steps: linear warmup, then cosine to min_ratio."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    # Decaying gains, biases and embeddings' norms pulls them towards zero for no benefit: only matrices
    # and conv kernels decay.
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


# Where the fused AdamW kernel is used: tested here on CPU. On CUDA torch's default (foreach) is kept until a
# resume through DeepSpeed's universal loader, which leaves Adam's step on the CPU, is tested on a GPU.
FUSED_ADAMW_DEVICES = ("cpu",)


def make_optimizer(model: torch.nn.Module, t: TrainConfig, device: str) -> torch.optim.AdamW:
    """AdamW over `param_groups`. On CPU the fused kernel takes one vectorised pass over each (flat, with ZeRO)
    parameter instead of a pass per elementwise op: about 9x faster per step on a ZeRO partition here
    (docs/benchmarks.md, `python -m bench.train --optimizer`)."""
    fused = True if device in FUSED_ADAMW_DEVICES else None
    return torch.optim.AdamW(param_groups(model, t.weight_decay), lr=t.lr, betas=tuple(t.betas), fused=fused)


def torch_optimizer(engine) -> torch.optim.Optimizer:
    """The torch optimizer `make_optimizer` built, inside the engine's ZeRO wrapper (if it has one)."""
    return getattr(engine.optimizer, "optimizer", engine.optimizer)


def skip_shm_comm_build() -> None:
    """DeepSpeed's TorchBackend JIT-compiles a shared-memory all-reduce for CPU (~30 s) that only its
    tensor-parallel inference path uses; training collectives go through torch.distributed (gloo here).
    Marking the op incompatible makes DeepSpeed skip the build (deepspeed/comm/torch.py:build_shm_op)."""
    import deepspeed.ops

    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False


def deepspeed_device(device: torch.device) -> tuple[argparse.Namespace, dict[str, str]]:
    """What puts DeepSpeed on `device` (the one Ray granted): `deepspeed.initialize(args=...)` and the
    environment to set first. Left alone, DeepSpeed takes cuda:LOCAL_RANK: the engine reads args.device_rank,
    else LOCAL_RANK (deepspeed/runtime/engine.py _set_distributed_vars), and ZeRO-3's parameter partitioning
    reads LOCAL_RANK alone (runtime/zero/partition_parameters.py Init: local_device, set_device). Ray Train's
    LOCAL_RANK orders a node's workers by GPU id, while the CUDA_VISIBLE_DEVICES it shares sorts the ids as
    strings ("10" before "2"), so past ten GPUs a worker's LOCAL_RANK is another worker's GPU. On CPU the index
    is 0 and the environment is left as it is (DeepSpeed's CPU accelerator ignores both)."""
    if device.type != "cuda":
        return argparse.Namespace(device_rank=0), {}
    if device.index is None:
        raise ValueError(f"a CUDA device needs its index (cuda:N, as ray.train.torch.get_device() gives), got {device}")
    return argparse.Namespace(device_rank=device.index), {"LOCAL_RANK": str(device.index)}


def build_engine(model: torch.nn.Module, cfg: Config, ds_config: dict, device: torch.device | str = "cpu"):
    """Wrap `model` with DeepSpeed on the process group Ray Train already initialised, on `device` (the one
    Ray granted: ray.train.torch.get_device())."""
    import deepspeed
    from deepspeed.accelerator import get_accelerator

    device = torch.device(device)
    if device.type != get_accelerator().device_name():
        raise ValueError(f"this worker's device is {device}, but DeepSpeed's accelerator is "
                         f"{get_accelerator().device_name()!r}: set DS_ACCELERATOR to match (cpu for CPU workers)")
    if device.type == "cpu":
        skip_shm_comm_build()
    t = cfg.train
    optimizer = make_optimizer(model, t, device.type)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, partial(lr_factor, warmup=t.warmup_steps, total=t.steps, min_ratio=t.min_lr_ratio))
    args, env = deepspeed_device(device)
    os.environ.update(env)
    engine, _, _, _ = deepspeed.initialize(args=args, model=model, optimizer=optimizer,
                                           lr_scheduler=schedule, config=ds_config, dist_init_required=False)
    return engine


__all__ = ["BatchSplit", "split_batch", "load_zero_json", "deepspeed_config", "lr_factor",
           "build_engine", "deepspeed_device", "make_optimizer", "torch_optimizer", "skip_shm_comm_build", "DEEPSPEED_DIR"]
