"""How many examples fit in one forward pass, and inpainting a batch in pieces that fit.

    limit = forward_batch_limit(model.cfg, device)              # rows per forward pass (None: no cap known)
    run = inpaint_in_pieces(model, x, observed, tokens, lengths, config, seeds=seeds, max_rows=limit)
    run.images_BHWC, run.chain_FBHWC, run.rows_per_pass    # the last: what fitted; pass it on next time

A "row" is one example in the network's batch: a guided example (SampleConfig.guidance != 1) is two, its
captioned and uncaptioned copies. `inpaint_in_pieces` runs `onade.inpaint` on consecutive pieces of the
batch; on an out-of-memory error it halves the piece and runs it again. Each example's sample depends on its
own seed and input only (onade.sampling), so a split run gives the same samples as an unsplit one, up to
the network's rounding at another batch size (none measured in bf16 on a CPU; cuDNN may pick other kernels).

The estimate (`forward_bytes_per_row`) is an upper bound of an inference forward's activations per row,
written from the network's shapes and checked against torch.profiler's CPU allocation peak in the tests:
the body holds about six width-channel fp32 maps per pixel at its peak (measured 4.3-5.8), the mergers
their attention scores, and the head two fp32 copies of 3 x 256 logits per pixel it scores (here every pixel:
the confidence strategies score the whole hole, Gibbs resamples up to 90% of it). `forward_batch_limit`
spends FREE_FRACTION of the device's free memory on it, leaving the rest to the allocator's caching, cuDNN's
workspaces and the sampler's own tensors; the split on an out-of-memory error catches the estimate's misses.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from onade.config import NUM_CHANNELS, NUM_LEVELS, ModelConfig, SampleConfig

FP32 = 4
BODY_MAPS = 6  # width-channel fp32 maps alive at the body's peak, per pixel (an upper bound: 4.3-5.8 measured)
HEAD_COPIES = 3  # fp32 copies of a scored pixel's 3 x 256 logits (logits, softmax, its cumulative sum)
FREE_FRACTION = 0.5
MEMINFO = Path("/proc/meminfo")


def forward_bytes_per_row(cfg: ModelConfig, max_tokens: int = 64) -> int:
    """Upper estimate of the activation bytes one row (example) of an inference forward needs at its peak,
    with the head scoring every pixel, in fp32 or bf16."""
    pixels = cfg.image_size ** 2
    body = BODY_MAPS * cfg.width * FP32
    inputs = 3 * (3 * cfg.embed_dim + 2) * FP32  # the value embedding, coordinates, their NHWC copy
    attention = 3 * cfg.num_heads * max_tokens * FP32 if cfg.merge_every > 0 else 0  # scores, softmax, weights
    # The logistic head builds its 256-value table a chunk of subpixels at a time (a fixed scratch, about 66 MB
    # for 10 components, onade.mixture.TABLE_CHUNK), so a row keeps one copy of it: 4.1 MB a row measured for
    # small against the softmax head's 6.9.
    copies = 1 if cfg.head == "logistic" else HEAD_COPIES
    head = copies * NUM_CHANNELS * NUM_LEVELS * FP32
    return pixels * (body + inputs + attention + head)


def free_bytes(device: torch.device | str) -> int | None:
    """Memory this process could still allocate on `device`: the GPU's free memory, or on a Linux CPU the
    kernel's MemAvailable; None where unknown."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    if device.type == "cpu":
        try:
            for line in MEMINFO.read_text().splitlines():
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
        except (OSError, ValueError, IndexError):
            return None
    return None


def forward_batch_limit(cfg: ModelConfig, device: torch.device | str, max_tokens: int = 64,
                        free: int | None = None) -> int | None:
    """Rows per forward pass that fit in FREE_FRACTION of `free` bytes (default: free_bytes(device) now);
    None when the free memory is unknown."""
    free = free_bytes(device) if free is None else free
    if free is None:
        return None
    return max(1, int(free * FREE_FRACTION) // forward_bytes_per_row(cfg, max_tokens))


def rows_per_example(config: SampleConfig) -> int:
    return 1 if config.guidance == 1 else 2


def is_out_of_memory(error: BaseException) -> bool:
    """A CUDA out-of-memory error, or the CPU allocator's failure (a plain RuntimeError)."""
    return isinstance(error, torch.OutOfMemoryError) or (
        isinstance(error, RuntimeError) and "can't allocate memory" in str(error))


class OutOfMemoryAtOneExample(ValueError):
    """Even one example per forward pass does not fit: a smaller model, hole or fewer tokens would."""


@dataclass
class PieceRun:
    images_BHWC: torch.Tensor
    chain_FBHWC: torch.Tensor
    rows_per_pass: int  # the largest piece, in rows, that ran without running out of memory
    forward_passes: int
    splits: int  # out-of-memory errors recovered from


def inpaint_in_pieces(model: torch.nn.Module, x_BHWC: torch.Tensor, observed_BHWC: torch.Tensor,
                      tokens_BT: torch.Tensor, lengths_B: torch.Tensor, config: SampleConfig, *, seeds: Sequence[int],
                      max_rows: int | None, record_every: int = 0, profile=None,
                      on_frame: Callable[[int, torch.Tensor], None] | None = None) -> PieceRun:
    """onade.inpaint over the batch in pieces of at most `max_rows` rows (None: the whole batch at first),
    halving a piece that runs out of memory. `seeds` has one int per example (onade.sampling.example_seeds):
    a piece must not derive its examples' seeds from its own size. `on_frame(start, frame)` receives each
    piece's recorded frames as they come (onade.inpaint's on_frame), `start` the piece's first example."""
    from onade.sampling import inpaint

    B = x_BHWC.shape[0]
    if len(seeds) != B:
        raise ValueError(f"inpaint_in_pieces needs one seed per example: {len(seeds)} seeds for {B} examples")
    per = rows_per_example(config)
    examples = B if max_rows is None else max(1, max_rows // per)
    images, chains, passes, splits, start = [], [], 0, 0, 0
    while start < B:
        end = min(B, start + examples)
        stats: dict = {}
        failed = None
        try:
            out, chain = inpaint(model, x_BHWC[start:end], observed_BHWC[start:end], tokens_BT[start:end],
                                 lengths_B[start:end], config, seed=list(seeds[start:end]),
                                 record_every=record_every, profile=profile, stats=stats,
                                 on_frame=None if on_frame is None else functools.partial(on_frame, start))
        except RuntimeError as e:  # torch.OutOfMemoryError is one
            if not is_out_of_memory(e):
                raise
            failed = str(e).splitlines()[0]
        if failed is not None:  # outside the handler, so its traceback no longer holds the piece's tensors
            if next(model.parameters()).device.type == "cuda":
                torch.cuda.empty_cache()
            if end - start == 1:
                raise OutOfMemoryAtOneExample(f"out of memory with one example ({per} row(s)) per forward pass: "
                                              f"{failed}")
            examples = math.ceil((end - start) / 2)
            splits += 1
            continue
        images.append(out)
        chains.append(chain)
        passes += stats["forward_passes"]
        start = end
    return PieceRun(torch.cat(images), _join_chains(chains), examples * per, passes, splits)


def _join_chains(chains: list[torch.Tensor]) -> torch.Tensor:
    """The pieces' chains [F_i, B_i, ...] as one [F, B, ...]: a piece that finished in fewer frames holds its
    final state in the frames it lacks, as its examples would have in the whole batch (an example that is
    done stays as it is while the batch runs on)."""
    frames = max(c.shape[0] for c in chains)
    if frames == 0:
        return torch.cat(chains, dim=1)
    padded = [torch.cat([c, c[-1:].expand(frames - c.shape[0], *c.shape[1:])]) if c.shape[0] < frames else c
              for c in chains]
    return torch.cat(padded, dim=1)


__all__ = ["forward_bytes_per_row", "free_bytes", "forward_batch_limit", "inpaint_in_pieces", "PieceRun",
           "OutOfMemoryAtOneExample", "is_out_of_memory", "rows_per_example", "FREE_FRACTION"]
