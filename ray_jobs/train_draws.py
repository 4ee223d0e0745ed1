"""The random draws of training micro-batches: each one's masks (with the mask kind each example drew) and
the captions it drops, made ready without stalling the device.

    draws = DrawStream(cfg.masks, micro_batch, image_size, mask_generator, caption_dropout, caption_generator,
                       device)
    d = draws.next()          # Draws on `device`, for the next micro-batch

They are drawn on the CPU from the worker's two generators, in the order the micro-batches use them, so they
are a function of the worker's seed alone, never of its device (a CUDA generator gives other numbers than a
CPU one). On CUDA the next micro-batch's draws are made on a background thread, into pinned memory, while
the device computes the current one, and are copied without blocking the host; the draw itself calls
`.sum()`/`.any()` on CPU tensors only. On the CPU they are drawn when needed: a thread would only compete
with the step for the same cores.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import torch

from onade.caption import caption_drops
from onade.config import MaskConfig
from onade.masks import draw_observed


@dataclass
class Draws:
    observed_BHWC: torch.Tensor  # True where observed
    kind_B: torch.Tensor  # index into onade.config.MASK_KINDS
    drop_B: torch.Tensor | None  # captions replaced by the empty one; None without caption dropout

    def to(self, device: torch.device) -> "Draws":
        move = lambda t: None if t is None else t.to(device, non_blocking=True)  # noqa: E731
        return Draws(move(self.observed_BHWC), move(self.kind_B), move(self.drop_B))

    def pinned(self) -> "Draws":
        pin = lambda t: None if t is None else t.pin_memory()  # noqa: E731
        return Draws(pin(self.observed_BHWC), pin(self.kind_B), pin(self.drop_B))


class DrawStream:
    def __init__(self, mask_cfg: MaskConfig, batch_size: int, image_size: int, generator: torch.Generator,
                 caption_dropout: float = 0.0, caption_generator: torch.Generator | None = None,
                 device: torch.device | str = "cpu", prefetch: bool | None = None):
        self.mask_cfg, self.batch_size, self.image_size = mask_cfg, batch_size, image_size
        self.generator, self.caption_dropout, self.caption_generator = generator, caption_dropout, caption_generator
        self.device = torch.device(device)
        self.pin = self.device.type == "cuda"
        self.prefetch = self.device.type == "cuda" if prefetch is None else prefetch
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="onade-draws") if self.prefetch else None
        self._ahead: Future | None = None

    def draw(self) -> Draws:
        """The next micro-batch's draws, on the CPU."""
        observed_BHWC, kind_B = draw_observed(self.mask_cfg, self.batch_size, self.image_size, self.generator)
        d = Draws(observed_BHWC, kind_B, caption_drops(self.batch_size, self.caption_dropout, self.caption_generator))
        return d.pinned() if self.pin else d

    def next(self) -> Draws:
        if self._pool is None:
            return self.draw().to(self.device)
        # One thread draws in order: the k-th result is the k-th draw, as inline.
        current = self._ahead or self._pool.submit(self.draw)
        self._ahead = self._pool.submit(self.draw)
        return current.result().to(self.device)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None


__all__ = ["Draws", "DrawStream"]
