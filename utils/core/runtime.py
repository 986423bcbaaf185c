"""Where and in which precision models run: the device and mixed-precision choices shared by training
(the engine) and prediction (the predictor, the web app), kept apart so prediction imports nothing of
training."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from utils.core.config import DeviceError, check_device_name


def resolve_device(name: str = "auto", local_rank: int = 0) -> torch.device:
    """``auto`` -> the local GPU when there is one, else the CPU; ``cuda`` or ``cuda:N`` that this
    machine does not have is a :class:`DeviceError`."""
    if check_device_name(name) == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(f"device {name!r} requested but torch sees no GPU (use auto or cpu)")
        if device.index is None:
            device = torch.device("cuda", local_rank)
        if device.index >= torch.cuda.device_count():
            raise DeviceError(f"device {name!r} requested but torch sees {torch.cuda.device_count()} GPU(s)")
    return device


@dataclass(frozen=True)
class Precision:
    enabled: bool
    dtype: torch.dtype
    scaler: bool  # GradScaler only for fp16: bf16 has fp32's exponent range


def resolve_precision(mode: str, device: torch.device) -> Precision:
    """``auto``: fp16 with a GradScaler on CUDA, full precision on the CPU; ``bf16`` works on both."""
    if mode == "auto":
        mode = "fp16" if device.type == "cuda" else "off"
    if mode == "off":
        return Precision(False, torch.float32, False)
    if mode == "bf16":
        return Precision(True, torch.bfloat16, False)
    if mode == "fp16":
        if device.type != "cuda":
            raise ValueError("amp 'fp16' needs a CUDA device; use 'bf16' or 'off' on the CPU")
        return Precision(True, torch.float16, True)
    raise ValueError(f"amp must be one of auto, off, fp16, bf16; got {mode!r}")
