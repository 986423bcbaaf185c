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
    batch_size: BatchSize = 32
    lr: LearningRate = 0.01
    momentum: FractionBelowOne = 0.9
    nesterov: bool = True
    weight_decay: Fraction = 1e-4
    warmup_epochs: WarmupEpochs = 0.0
    lr_floor: Fraction = 0.05
    # The pretrained trunk's learning rate as a fraction of ``lr`` (its parameters named trunk.*; the
    # heads keep ``lr``): fine-tuning a pretrained trunk more gently than the new heads.
    trunk_lr_scale: Annotated[float, Field(gt=0.0, le=1.0)] = 1.0
    amp: Literal["auto", "off", "fp16", "bf16"] = "auto"
    grad_clip: Annotated[float, Field(gt=0.0, le=1e6)] | None = None
    ema_decay: Annotated[float, Field(gt=0.0, lt=1.0)] | None = None
    # Weights and image batches in the channels-last memory layout (NHWC), which the CPU's and the GPU's
    # convolution kernels run faster (docs/benchmarks.md, "What bounds each training loop").
    channels_last: bool = False
    workers: Workers = 2
    seed: Seed = 42
    device: str = "auto"

    def __post_init__(self):
        """What the declared ranges cannot say (a config file gets a ConfigError naming it and the key)."""
        problems = device_problems(self.device)
        if problems:
            raise ValueError("; ".join(problems))
