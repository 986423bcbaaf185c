"""A run's history: ``metrics.csv`` (one row per epoch) and ``loss_curve.png``, rewritten after each epoch."""

from __future__ import annotations

import csv

import numpy as np

from utils.core.files import atomic_path
from utils.core.report import figure

METRICS_CSV = "metrics.csv"
LOSS_CURVE_PNG = "loss_curve.png"


def write_metrics_csv(history: list[dict], path) -> None:
    """Every epoch's row (union of columns, in first-seen order) rewritten atomically."""
    columns: list[str] = []
    for row in history:
        columns += [k for k in row if k not in columns]
    with atomic_path(path) as temporary, open(temporary, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(history)


def plot_loss_curve(history: list[dict], path, title: str = "") -> None:
    """Training and validation loss per epoch (the report's Figures 1 and 2)."""
    epochs = [row["epoch"] for row in history]
    with figure(figsize=(6, 4), dpi=100, path=path) as (_, axes):
        for key, label in (("train_loss", "training loss"), ("val_loss", "validation loss")):
            axes.plot(epochs, [row.get(key, np.nan) for row in history], marker="o", label=label)
        axes.set(xlabel="epoch", ylabel="loss", title=title)
        axes.grid(alpha=0.3)
        axes.legend()
