"""The training loop's settings (:class:`TrainConfig`), the base of every torch kind's config section.
Free of torch and of training code, so that prediction can read a kind's config stored in a manifest
through the same schema that training checked it with."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from utils.config import MAX_IMAGE_SIZE, MAX_WORKERS, device_problems


@dataclass
class TrainConfig:
    """Settings of the loop shared by every stage; each stage's config extends it."""

    epochs: int = 35
    batch_size: int = 32
    lr: float = 0.01
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 1e-4
    warmup_epochs: float = 0.0
    lr_floor: float = 0.05
    amp: Literal["auto", "off", "fp16", "bf16"] = "auto"
    grad_clip: float | None = None
    ema_decay: float | None = None
    workers: int = 2
    seed: int = 42
    device: str = "auto"

    def __post_init__(self):
        """Ranges the types cannot say (a config file gets a ConfigError naming it and the key)."""
        problems = [f"{name} must be at least 1, got {getattr(self, name)}"
                    for name in ("epochs", "batch_size") if getattr(self, name) < 1]
        problems += [f"{name} must be in 1-{MAX_IMAGE_SIZE}, got {getattr(self, name)}"
                     for name in ("image_size", "resize") if not 1 <= getattr(self, name, 1) <= MAX_IMAGE_SIZE]
        if self.lr <= 0:
            problems.append(f"lr must be > 0, got {self.lr}")
        if not 0.0 <= self.momentum < 1.0 or not 0.0 <= self.lr_floor <= 1.0:
            problems.append(f"momentum must be in [0, 1) and lr_floor in [0, 1]; got {self.momentum}, {self.lr_floor}")
        if self.weight_decay < 0 or self.warmup_epochs < 0:
            problems.append("weight_decay and warmup_epochs must be >= 0")
        if not 0 <= self.workers <= MAX_WORKERS:
            problems.append(f"workers must be in 0-{MAX_WORKERS}, got {self.workers}")
        if self.grad_clip is not None and self.grad_clip <= 0:
            problems.append(f"grad_clip must be > 0 or null, got {self.grad_clip}")
        if self.ema_decay is not None and not 0.0 < self.ema_decay < 1.0:
            problems.append(f"ema_decay must be in (0, 1) or null, got {self.ema_decay}")
        problems += device_problems(self.device)
        if problems:
            raise ValueError("; ".join(problems))
