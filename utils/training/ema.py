"""An exponential moving average of a model's weights (``ema_decay``), with a warm-up of the decay."""

from __future__ import annotations

import copy

import torch

from utils.training.distributed import unwrap


class ModelEma:
    """Exponential moving average of a model's weights and buffers, updated after each optimiser step.

    The decay ramps up as ``min(decay, (1 + n) / (10 + n))`` after ``n`` updates, so the random
    initial weights are forgotten quickly in short runs (a fixed 0.997 would still weigh them after
    hundreds of steps). Integer buffers (BatchNorm's batch counter) are copied.
    """

    def __init__(self, model: torch.nn.Module, decay: float, updates: int = 0):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"ema_decay must be in (0, 1), got {decay}")
        self.module = copy.deepcopy(unwrap(model)).eval()
        for parameter in self.module.parameters():
            parameter.requires_grad_(False)
        self.decay = decay
        self.updates = updates

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        self.updates += 1
        decay = min(self.decay, (1.0 + self.updates) / (10.0 + self.updates))
        current = unwrap(model).state_dict()
        for name, average in self.module.state_dict().items():
            if average.dtype.is_floating_point:
                average.lerp_(current[name].detach(), 1.0 - decay)
            else:
                average.copy_(current[name])
