"""An exponential moving average of a model's weights, kept in fp32 beside the trained model.

The average is what the export ships and what validation scores: it smooths the last steps' noise, which
a short CPU run cannot anneal away with its learning rate alone. Its decay ramps up from 0 as
min(decay, (1 + n) / (10 + n)) after n updates, so early averages are not dominated by the random
initialisation.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


class EMA:
    def __init__(self, model: nn.Module, decay: float):
        if not 0 < decay < 1:
            raise ValueError(f"EMA decay must be in (0, 1), got {decay}")
        self.decay = decay
        self.num_updates = 0
        self.model = copy.deepcopy(model).float().eval().requires_grad_(False)

    def current_decay(self) -> float:
        return min(self.decay, (1 + self.num_updates) / (10 + self.num_updates))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        d = self.current_decay()
        averaged = list(self.model.parameters())
        live = list(model.parameters())
        assert len(averaged) == len(live), "the EMA and the trained model have different parameters"
        torch._foreach_lerp_(averaged, [p.detach().float() for p in live], 1 - d)
        for b_avg, b in zip(self.model.buffers(), model.buffers()):
            b_avg.copy_(b)
        self.num_updates += 1

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in self.model.state_dict().items()}

    def load_state_dict(self, state: dict[str, torch.Tensor], num_updates: int) -> None:
        self.model.load_state_dict(state)
        self.num_updates = num_updates


__all__ = ["EMA"]
