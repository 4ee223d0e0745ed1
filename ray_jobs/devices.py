"""Which device a Ray process computes on: the GPU Ray granted it, or the CPU. One device per process.

A process computes on CUDA exactly when Ray granted it GPUs. Ray 2.60 no longer hides the node's GPUs from
a process that asked for none (it leaves CUDA_VISIBLE_DEVICES alone when num_gpus is 0), so
`torch.cuda.is_available()` says nothing about what this process may use: an actor asked for no GPU that
went by it would land on cuda:0 beside every other such actor. Where Ray granted GPUs and CUDA cannot be
used (a CPU-only torch on a GPU node, a driver older than the build), that is an error naming the torch
build and the driver, never a silent fall back to one CPU thread.

    device = actor_device()                  # in a Ray actor or task: cpu, or the granted cuda:N
    device = train_device()                  # in a Ray Train worker: ray.train.torch.get_device(), checked

A job whose workers ask for no GPU on a cluster that has GPUs runs, on CPUs; the driver says so in one line
(warn_idle_gpus) naming the flag that would use them.
"""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

NVIDIA_DRIVER_FILE = Path("/proc/driver/nvidia/version")  # written by the loaded NVIDIA kernel module


def check_gpus_per_process(gpus: float, flag: str, *, shareable: bool) -> None:
    """A per-process GPU request that one process can use. `shareable`: several processes may share a GPU
    (inference actors, which never talk to each other); training ranks may not (NCCL refuses two ranks of one
    communicator on one GPU)."""
    if gpus < 0:
        raise ValueError(f"{flag} must be >= 0, got {gpus:g}")
    if gpus > 1:
        raise ValueError(f"{flag} {gpus:g}: a process computes on one GPU, the others would sit idle; ask for "
                         f"more processes with 1 GPU each instead")
    if not shareable and 0 < gpus < 1:
        raise ValueError(f"{flag} {gpus:g}: each training worker needs a whole GPU (NCCL refuses two ranks on one "
                         "GPU); use 1, or 0 for CPU workers")


def idle_gpus_warning(resources: Mapping[str, float], gpus_per_worker: float,
                      flag: str = "--gpus-per-worker") -> str | None:
    """The warning for a job whose workers ask for no GPU on a cluster that has some (`resources`:
    ray.cluster_resources()), None otherwise: the job runs, on CPUs, often 10-100x slower than it could."""
    gpus = resources.get("GPU", 0)
    if gpus > 0 and gpus_per_worker == 0:
        return (f"warning: the cluster has {gpus:g} GPU{'' if gpus == 1 else 's'} but {flag} is 0: workers run on "
                f"CPU; pass {flag} 1")
    return None


def warn_idle_gpus(gpus_per_worker: float, flag: str = "--gpus-per-worker") -> None:
    """idle_gpus_warning for the Ray cluster this driver is connected to, printed to stderr."""
    import ray

    warning = idle_gpus_warning(ray.cluster_resources(), gpus_per_worker, flag)
    if warning:
        print(warning, file=sys.stderr, flush=True)


def cuda_problem() -> str | None:
    """Why this process cannot use CUDA (None when it can): the torch build and the driver, in words."""
    import torch

    if torch.version.cuda is None and torch.version.hip is None:
        return (f"this torch ({torch.__version__}) is a CPU-only build: install a CUDA build of torch on the GPU "
                "nodes (e.g. the rayproject/ray:*-gpu image's, or pip's index for your CUDA version)")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        available = torch.cuda.is_available()
    if available:
        return None
    said = "; ".join(str(w.message).strip() for w in caught)
    return (f"torch {torch.__version__} (built for CUDA {torch.version.cuda or torch.version.hip}) finds no usable "
            f"GPU; NVIDIA driver: {nvidia_driver()}" + (f"; torch says: {said}" if said else "")
            + ". Check nvidia-smi on the node, and that the driver supports that CUDA version")


def nvidia_driver() -> str:
    try:
        return NVIDIA_DRIVER_FILE.read_text().splitlines()[0].strip()
    except (OSError, IndexError):
        return f"none loaded ({NVIDIA_DRIVER_FILE} is missing)"


def granted_device(gpu_ids: Sequence, visible: str | None,
                   check: Callable[[], str | None] = cuda_problem) -> "torch.device":
    """The device of a process Ray granted `gpu_ids` (ray.get_gpu_ids()): the CPU when none, else the first
    granted GPU's index among CUDA_VISIBLE_DEVICES (`visible`; None: unset, so the ids are the physical
    indices), as Ray Train's get_device computes it
    (ray/air/_internal/device_manager/nvidia_gpu.py get_devices). A grant that CUDA cannot serve (`check()`
    says why) is an error."""
    import torch

    if not gpu_ids:
        return torch.device("cpu")
    problem = check()
    if problem:
        raise RuntimeError(f"Ray granted GPU(s) {list(gpu_ids)} to this process, but {problem}")
    first = str(gpu_ids[0])
    if visible is None:  # Ray told not to set it (RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES): ids are physical
        return torch.device("cuda", int(first))
    listed = [v.strip() for v in visible.split(",") if v.strip()]
    if first not in listed:
        raise RuntimeError(f"Ray granted GPU {first}, but CUDA_VISIBLE_DEVICES={visible!r} does not list it: "
                           "was CUDA_VISIBLE_DEVICES overridden in the runtime environment?")
    return torch.device("cuda", listed.index(first))


def actor_device() -> "torch.device":
    """This Ray actor's or task's device, from its GPU grant."""
    import ray

    return granted_device(ray.get_gpu_ids(), os.environ.get("CUDA_VISIBLE_DEVICES"))


def train_device() -> "torch.device":
    """This Ray Train worker's device (ray.train.torch.get_device(), from the worker's GPU grant), after
    checking that CUDA can serve it."""
    import ray.train.torch

    device = ray.train.torch.get_device()
    if device.type == "cuda":
        problem = cuda_problem()
        if problem:
            raise RuntimeError(f"this training worker was granted a GPU ({device}), but {problem}")
    return device


__all__ = ["check_gpus_per_process", "idle_gpus_warning", "warn_idle_gpus", "cuda_problem", "granted_device", "actor_device", "train_device"]
