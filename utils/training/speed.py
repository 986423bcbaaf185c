"""The pieces every training-speed measurement shares (``infer/benchmark.py loop``): batches timed as a
loop draws them, the bare model's steps on one batch in memory, and the figures their medians give."""

from __future__ import annotations

import statistics
import time

import torch


class TimedBatches:
    """A loader whose batches are timed: when each was asked for and when it arrived (the loop's wait for
    data is the difference; its time with a batch in hand, the gap to the next request)."""

    def __init__(self, loader):
        self.loader = loader
        self.requested: list[float] = []
        self.delivered: list[float] = []
        self.images: list[int] = []

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        self.requested, self.delivered, self.images = [], [], []
        batches = iter(self.loader)
        while True:
            self.requested.append(time.perf_counter())
            try:
                batch = next(batches)
            except StopIteration:
                return
            self.delivered.append(time.perf_counter())
            self.images.append(0 if batch is None else len(batch[0]))
            yield batch

    def steady_rate(self) -> float:
        """Images per second from the first batch's arrival to the last request: the loader's start and
        first batch, which an epoch pays once over hundreds of steps, left out."""
        span = self.requested[-1] - self.delivered[0]
        return sum(self.images) / span if span > 0 else 0.0

    def wait_share(self) -> float:
        """The part of that span spent waiting for batches."""
        span = self.requested[-1] - self.delivered[0]
        waits = sum(d - r for r, d in zip(self.requested[1:], self.delivered[1:]))
        return waits / span if span > 0 else 0.0

    def delivery_rate(self) -> float:
        """Images per second between the first and the last batch's arrival (the loader drawn alone)."""
        span = self.delivered[-1] - self.delivered[0]
        return sum(self.images[1:]) / span if span > 0 else 0.0


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bare_steps_rate(step, images: int, steps: int, device: torch.device) -> float:
    """Images per second of ``steps`` calls of ``step()`` (forward, backward and optimiser step on one
    batch of ``images`` already in memory)."""
    synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    synchronize(device)
    return steps * images / (time.perf_counter() - start)


RATES = ("loop", "model", "data", "wait")


def loop_figures(rates: dict[str, list[float]], settings: dict) -> dict:
    """The medians of each figure's repeats (``rates``: :data:`RATES` -> values) and the shares they give:
    ``loop_share_of_model`` is the loop's rate over its bare model's (1.0: the loop costs nothing beyond
    the model), ``data_wait_share`` the part of the loop's time spent waiting for a batch."""
    medians = {k: statistics.median(v) for k, v in rates.items()}
    return {
        "loop_images_per_s": round(medians["loop"], 2),
        "model_images_per_s": round(medians["model"], 2),
        "data_images_per_s": round(medians["data"], 2),
        "data_wait_share": round(medians["wait"], 3),
        "loop_share_of_model": round(medians["loop"] / medians["model"], 3) if medians["model"] else None,
        **settings,
    }
