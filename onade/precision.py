"""Numeric precision of the network's body: bf16 autocast where the hardware runs it fast, fp32 elsewhere.

    precision = resolve_precision("auto", device)      # "bf16" or "fp32"
    with autocast(precision, device):
        logits = model(...)                             # always fp32: the head casts its output

Weights stay fp32 (so do optimizer state, EMA and exports); only the convolutions, matmuls and the
caption reader run in bf16 under autocast. The 256-way head's logits are cast to fp32 by the model, so
log-probabilities, losses and every metric are computed in fp32.
"""

from __future__ import annotations

import contextlib

import torch

from onade.config import PRECISIONS


def cpu_has_fast_bf16() -> bool:
    """AMX tiles or AVX512-BF16, as torch's own CPU capability queries report them. Plain AVX512 can run
    bf16 only by emulation, which is slower than fp32, so it does not count."""
    cpu = torch.cpu
    probes = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
    return any(bool(getattr(cpu, name, lambda: False)()) for name in probes)


def cuda_has_native_bf16(capability: tuple[int, int], hip: bool = False) -> bool:
    """bf16 in hardware: compute capability 8.0 (Ampere) or newer, or any ROCm GPU. Older NVIDIA GPUs only
    emulate it, slower than fp32, yet torch.cuda.is_bf16_supported() says yes for them by default
    (torch/cuda/__init__.py: including_emulation=True tries a bf16 tensor when the major version is < 8)."""
    return hip or capability[0] >= 8


def resolve_precision(requested: str, device: str | torch.device = "cpu") -> str:
    """"auto" is bf16 where the device computes it natively (a CUDA GPU of compute capability 8.0 or newer, a
    ROCm GPU, a CPU with AMX/AVX512-BF16), fp32 elsewhere."""
    if requested not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {requested!r}")
    if requested != "auto":
        return requested
    device = torch.device(device)
    if device.type == "cuda":
        native = cuda_has_native_bf16(torch.cuda.get_device_capability(device), bool(torch.version.hip))
        return "bf16" if native else "fp32"
    if device.type == "cpu":
        return "bf16" if cpu_has_fast_bf16() else "fp32"
    return "fp32"


def autocast(precision: str, device: str | torch.device = "cpu"):
    """A context running the model's body in bf16 (precision "bf16") or leaving it alone ("fp32")."""
    device = torch.device(device)
    if precision == "fp32":
        return contextlib.nullcontext()
    if precision != "bf16":
        raise ValueError(f"autocast takes a resolved precision ('bf16' or 'fp32'), got {precision!r}")
    return torch.autocast(device.type, dtype=torch.bfloat16)


class ComputeDtype:
    """The dtype the model's first convolution computed in, in the last forward pass since attached (a forward
    hook): what the forward really ran in, whichever autocast was asked for and whoever opened it.

        probe = ComputeDtype(model); ...forward...; probe.close() -> "bfloat16" (None: no forward ran)
    """

    def __init__(self, model: torch.nn.Module):
        conv = next((m for m in model.modules() if isinstance(m, torch.nn.Conv2d)), None)
        if conv is None:
            raise ValueError("ComputeDtype needs a model with a Conv2d")
        self.seen: str | None = None
        self._handle = conv.register_forward_hook(self._hook)

    def _hook(self, module, args, output) -> None:
        self.seen = str(output.dtype).removeprefix("torch.")

    def close(self) -> str | None:
        self._handle.remove()
        return self.seen


__all__ = ["PRECISIONS", "cpu_has_fast_bf16", "cuda_has_native_bf16", "resolve_precision", "autocast", "ComputeDtype"]
