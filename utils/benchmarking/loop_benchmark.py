"""What bounds each training loop: the loop's images/s beside its bare model's and its data's alone.

For every torch kind of a config (and YOLO), on real prepared images, median of repeats:

- ``loop``: the engine's own ``train_one_epoch`` (data loader, forward, summed loss, backward, step,
  schedule: what ``metrics.csv`` records as ``train_images_per_s``) over ``steps`` batches of the fold's
  training images; timed from the first batch's arrival to the end, so the loader's start, which an epoch
  pays once over hundreds of steps, is left out;
- ``model``: forward + backward + optimiser step on one batch already in memory, same batch size, input
  size, precision and memory layout: the ceiling the loop can reach;
- ``data``: the same training loader with its augmentations and the config's ``workers``, no model.

``data_wait_share`` is the part of the loop's time spent waiting for a batch, ``loop_share_of_model``
the loop's rate over the bare model's (1.0: the loop costs nothing beyond the model). Variants
(``--compare``) rerun every figure with a kind's keys changed, alternating with the config's own in
each repeat, so a speed-up is measured beside its baseline in one run.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils.data import Subset

from utils.core.config import load_section, load_yaml_section
from utils.core.runtime import resolve_device, resolve_precision
from utils.kinds.base import TorchKind, split_fold
from utils.training.distributed import DistInfo
from utils.training.loaders import make_loader
from utils.training.loop import (
    batch_to_device,
    build_optimizer,
    lr_factor,
    prepare_model_for_training,
    train_one_epoch,
)
from utils.training.speed import RATES, TimedBatches, bare_steps_rate, loop_figures


@dataclass
class _Variant:
    """One setting of a kind measured: its config, model, optimiser, loaders and figures."""

    name: str
    config: object
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    loader: TimedBatches
    batch: tuple
    rates: dict = field(default_factory=lambda: {k: [] for k in RATES})


def _bare_steps(model, batch, optimizer, precision, device, steps: int) -> float:
    """Images per second of forward + backward + optimiser steps on one batch in memory (the engine's
    model contract: a dict whose ``loss*`` entries are summed)."""
    model.train()
    images, targets, _ = batch

    def step():
        with torch.autocast(device.type, dtype=precision.dtype, enabled=precision.enabled):
            outputs = model(images, targets)
        loss = sum(v for k, v in outputs.items() if k.startswith("loss"))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return bare_steps_rate(step, len(images), steps, device)


def _build_variant(kind: TorchKind, name: str, config, train_set, steps: int, seed_items: int):
    device = resolve_device(config.device)
    torch.manual_seed(config.seed)
    model = prepare_model_for_training(kind.build_model(config), config, device)
    optimizer = build_optimizer(model, config)
    # The first steps * batch_size images of one seeded shuffle: the same images for every variant.
    order = torch.randperm(len(train_set), generator=torch.Generator().manual_seed(seed_items))
    subset = Subset(train_set, order[:steps * config.batch_size].tolist())
    loader = TimedBatches(make_loader(subset, config.batch_size, train=True, seed=config.seed, info=DistInfo(),
                                      workers=config.workers, collate_fn=kind.collate))
    first = next(iter(make_loader(subset, config.batch_size, train=True, seed=config.seed, info=DistInfo(),
                                  workers=0, collate_fn=kind.collate)))
    batch = batch_to_device(first, device, config.channels_last)
    return _Variant(name, config, model, optimizer, loader, batch)


def benchmark_torch_kind(kind: TorchKind, config_path, prepared, *, fold: int = 0, steps: int = 8, repeats: int = 3,
                         overrides: dict | None = None, variants: dict[str, dict] | None = None) -> dict:
    """The three figures of one torch kind for the config's section (``overrides`` applied) and each of
    ``variants`` (name -> more overrides), alternating within each repeat; the first round is a
    warm-up and is dropped."""
    base = dict(overrides or {})
    configs = {"config": load_section(config_path, kind.name, kind.config_class, base)}
    for name, changes in (variants or {}).items():
        configs[name] = load_section(config_path, kind.name, kind.config_class, {**base, **changes})
    table = kind.load_table(Path(prepared), configs["config"])
    train, val, _ = split_fold(table, fold, prepared)
    measured = []
    for name, config in configs.items():
        train_set, _ = kind.datasets(kind.prepare_train(train, config), val, config)
        measured.append(_build_variant(kind, name, config, train_set, steps, seed_items=fold))
    for repeat in range(repeats + 1):
        for variant in measured:
            config = variant.config
            device = resolve_device(config.device)
            precision = resolve_precision(config.amp, device)
            scheduler = torch.optim.lr_scheduler.LambdaLR(variant.optimizer, lambda step: lr_factor(step, steps))
            scaler = torch.amp.GradScaler(device.type, enabled=precision.scaler)
            variant.loader.loader.sampler.set_epoch(repeat)
            train_one_epoch(variant.model, variant.loader, variant.optimizer, scheduler, scaler, device,
                            precision, epoch=repeat, epochs=repeats + 1, progress=False,
                            channels_last=config.channels_last)
            loop_rate, wait = variant.loader.steady_rate(), variant.loader.wait_share()
            bare = _bare_steps(variant.model, variant.batch, variant.optimizer, precision, device, steps)
            for _ in variant.loader:
                pass
            data_rate = variant.loader.delivery_rate()
            if repeat:
                for key, value in (("loop", loop_rate), ("model", bare), ("data", data_rate), ("wait", wait)):
                    variant.rates[key].append(value)
    return {variant.name: loop_figures(variant.rates, {
        "batch_size": variant.config.batch_size, "image_size": variant.config.image_size,
        "workers": variant.config.workers, "amp": variant.config.amp,
        "channels_last": variant.config.channels_last}) for variant in measured}


def describe_device(device: torch.device) -> str:
    """The GPU's name, or the CPU's model, threads and whether it has bf16 instructions (Linux)."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model, flags = "cpu", set()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and model == "cpu":
                model = value.strip()
            elif key.strip() == "flags" and not flags:
                flags = set(value.split())
    bf16 = sorted(f for f in flags if "bf16" in f or f.startswith("amx"))
    instructions = ", ".join(bf16) if bf16 else "no bf16 instructions"
    return f"{model}, {torch.get_num_threads()} threads ({instructions})"


def benchmark_loop(config_path, prepared, kinds: list[str] | None = None, *, fold: int = 0, steps: int = 8,
                   repeats: int = 3, variants: dict[str, dict[str, dict]] | None = None,
                   overrides: dict[str, dict] | None = None) -> dict:
    """:func:`benchmark_torch_kind` for each torch kind of ``kinds`` (default: every registered kind with a
    section in the config); a kind with a trainer of its own (YOLO) through its ``loop_benchmark``.
    ``variants``: name -> section -> keys, each measured beside the config's own settings; ``overrides``:
    section -> keys applied to all."""
    from utils.kinds.registry import KINDS

    variants, overrides = variants or {}, overrides or {}
    names = kinds or [name for name in KINDS if _has_section(config_path, name)]
    unknown = sorted(set(names) - set(KINDS))
    if unknown:
        raise ValueError(f"unknown kind(s) {unknown}; known: {sorted(KINDS)}")
    results = {}
    for name in names:
        kind = KINDS[name]
        mine = {variant: sections[name] for variant, sections in variants.items() if sections.get(name)}
        if isinstance(kind, TorchKind):
            figures = benchmark_torch_kind(kind, config_path, prepared, fold=fold, steps=steps, repeats=repeats,
                                           overrides=overrides.get(name), variants=mine)
        else:
            figures = kind.loop_benchmark(config_path, prepared, fold=fold, steps=steps, repeats=repeats,
                                          overrides=overrides.get(name), variants=mine)
        baseline = figures["config"]["loop_images_per_s"]
        for variant, values in figures.items():
            values["loop_speedup_over_config"] = round(values["loop_images_per_s"] / baseline, 2) if baseline else None
        results[name] = figures
    device = resolve_device(next(iter(overrides.values()), {}).get("device", "auto"))
    return {"benchmark": "loop", "device": describe_device(device), "config": str(config_path),
            "prepared": str(prepared), "fold": fold, "steps": steps, "repeats": repeats,
            "variants": variants, "kinds": results, "torch": torch.__version__}


def prepare_images(config_path, data_dir, out, kinds: list[str] | None = None, overrides: dict | None = None,
                   patients=None) -> Path:
    """``data_dir`` (the competition folder or a resized copy) prepared at every size the measured kinds read,
    into ``out``, in the config's folds; returns its meta.csv (the GPU check's part starts from a copy)."""
    from utils.data.prepare import prepare_data
    from utils.kinds.registry import KINDS

    overrides = overrides or {}
    names = kinds or [name for name in KINDS if _has_section(config_path, name)]
    sizes = sorted({size for name in names for size in KINDS[name].sizes(
        load_section(config_path, name, KINDS[name].config_class, overrides.get(name)))})
    folds = load_yaml_section(config_path, "prepare").get("folds", 5)
    prepare_data(data_dir, out, tuple(sizes), workers=1, n_folds=folds, patients=patients, progress=False)
    return Path(out) / "meta.csv"


def _has_section(config_path, name: str) -> bool:
    try:
        load_yaml_section(config_path, name)
    except ValueError:
        return False
    return True
