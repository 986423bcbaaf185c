"""The training loop's settings (:class:`TrainConfig`), the base of every torch kind's config section.
Free of torch and of training code, so that prediction can read a kind's config stored in a manifest
through the same schema that training checked it with."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal

from pydantic import Field

from utils.core.config import (
    BatchSize,
    Epochs,
    Fraction,
    FractionBelowOne,
    LearningRate,
    Seed,
    WarmupEpochs,
    Workers,
    device_problems,
)


@dataclass
class TrainConfig:
    """Settings of the loop shared by every stage; each stage's config extends it."""

    epochs: Epochs = 35
    """Passes over the training images of a fold."""
    batch_size: BatchSize = 32
    """Images per step and per process."""
    lr: LearningRate = 0.01
    """Base learning rate of SGD."""
    momentum: FractionBelowOne = 0.9
    """SGD momentum."""
    nesterov: bool = True
    """Nesterov momentum."""
    weight_decay: Fraction = 1e-4
    """L2 on weights (not on biases and norm layers)."""
    warmup_epochs: WarmupEpochs = 0.0
    """Linear warm-up length in epochs (0: none)."""
    lr_floor: Fraction = 0.05
    """Cosine schedule ends at this fraction of lr."""
    trunk_lr_scale: Annotated[float, Field(gt=0.0, le=1.0)] = 1.0
    """The pretrained trunk's learning rate as a fraction of lr (its parameters named trunk.*; the heads keep
    lr): fine-tuning a pretrained trunk more gently than the new heads."""
    amp: Literal["auto", "off", "fp16", "bf16"] = "auto"
    """auto (fp16 on CUDA, off on CPU) | off | fp16 | bf16."""
    grad_clip: Annotated[float, Field(gt=0.0, le=1e6)] | None = None
    """Clip the gradient norm to this value."""
    ema_decay: Annotated[float, Field(gt=0.0, lt=1.0)] | None = None
    """EMA of the weights (e.g. 0.997; validation and exported weights use it)."""
    channels_last: bool = False
    """Weights and image batches channels-last (NHWC), which the convolution kernels run faster (1.6x on this
    project's CPU; docs/benchmarks.md, "What bounds each training loop")."""
    workers: Workers = 2
    """Data loading processes."""
    seed: Seed = 42
    """Seeds shuffling, augmentation and initialisation."""
    device: str = "auto"
    """auto | cpu | cuda | cuda:N."""

    def __post_init__(self):
        """What the declared ranges cannot say (a config file gets a ConfigError naming it and the key)."""
        problems = device_problems(self.device)
        if problems:
            raise ValueError("; ".join(problems))
