"""The one training loop for every torch model of the project (classifiers and detectors alike).

Model contract: ``model(images, targets)`` returns a dict of tensors. Entries whose name starts with
``loss`` are summed into the training loss (torchvision's detection models already name theirs
``loss_*``); any other entry (``logits``, ...) is an output that validation hands to the stage's
metric function. Datasets yield ``(image, target, index)``; a ``None`` item (an unreadable file,
already logged by the dataset) is dropped by :func:`collate_skip_none`.

What :func:`fit` does for every stage: SGD with Nesterov momentum, the report's cosine schedule with
a floor (:func:`lr_factor`, stepped per iteration, optional linear warm-up), mixed precision
(``torch.amp.autocast`` + ``GradScaler`` on CUDA, optional bf16 on the CPU), a clear stop on a
non-finite loss, progress bars, ``metrics.csv`` and ``loss_curve.png`` per epoch, atomic
checkpoints (``last.pt`` each epoch; ``best.pt`` the kept epoch: the last one under ``monitor="last"``,
so that the choice never sees the validation images, else the best by the monitored metric) with
fixed keys, exact resume, an
optional exponential moving average of the weights (``ema_decay``: then validation, ``best.pt``'s
``model`` and so every exported file are the average's), and DistributedDataParallel when started
by ``torchrun``.

Resume is exact because every random choice of an epoch is a function of (seed, epoch, rank): the
sampler's shuffle, torch's global generator (reseeded at each epoch start) and the augmentations
(seeded per item by the dataset from seed, epoch and index). A checkpoint therefore needs no RNG state.

The loop's parts, one job per module beside this one: :mod:`utils.training.checkpoints`,
:mod:`utils.training.distributed`, :mod:`utils.training.loaders`, :mod:`utils.training.ema` and
:mod:`utils.training.history` (metrics.csv, the loss curve).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Callable, Literal

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import Dataset
from tqdm import tqdm

from utils.core.files import remove_stale_temporaries
from utils.core.loop_config import TrainConfig
from utils.core.runtime import Precision, resolve_device, resolve_precision
from utils.training.checkpoints import (
    BEST_CHECKPOINT,
    LAST_CHECKPOINT,
    RUN_LEVEL_KEYS,
    CheckpointError,
    copy_atomic,
    load_checkpoint,
    save_checkpoint,
)
from utils.training.distributed import DistInfo, all_reduce_sum, init_distributed, unwrap
from utils.training.ema import ModelEma
from utils.training.history import LOSS_CURVE_PNG, METRICS_CSV, plot_loss_curve, write_metrics_csv
from utils.training.loaders import collate_skip_none, make_loader, to_device

log = logging.getLogger(__name__)
# fit's monitor that keeps the last epoch of the fixed schedule: the validation images are then only
# watched (metrics.csv, the loss curve), never used to choose, so they can be scored honestly afterwards.
LAST_EPOCH = "last"


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN or infinite loss; the run stops instead of writing broken weights."""


def lr_factor(step: int, total_steps: int, floor: float = 0.05, warmup_steps: int = 0) -> float:
    """Multiplier of the base learning rate at iteration ``step`` of ``total_steps``.

    Linear warm-up over ``warmup_steps``, then the report's cosine decay with a floor:
    ``0.5 * (1 + cos(pi * t / T)) * (1 - floor) + floor``; with floor 0.05 this is 1.0 at t = 0,
    0.525 at T/2 and 0.05 at T (t and T counted after the warm-up).
    """
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    span = max(1, total_steps - warmup_steps)
    t = min(max(step - warmup_steps, 0), span)
    return 0.5 * (1.0 + math.cos(math.pi * t / span)) * (1.0 - floor) + floor


def _sum_losses(outputs: dict, where: str) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    if not isinstance(outputs, dict):
        raise TypeError(f"{where}: the model must return a dict of losses, got {type(outputs).__name__}")
    losses = {k: v for k, v in outputs.items() if k.startswith("loss")}
    if not losses:
        raise TypeError(f"{where}: the model returned no 'loss*' entry (keys: {sorted(outputs)})")
    return sum(losses.values()), losses


@dataclass
class _Meter:
    """Sample-weighted means of named values."""

    sums: dict = field(default_factory=dict)
    count: float = 0.0

    def add(self, values: dict[str, float], n: int) -> None:
        for k, v in values.items():
            self.sums[k] = self.sums.get(k, 0.0) + v * n
        self.count += n

    def means(self, device: torch.device, info: DistInfo) -> tuple[dict[str, float], int]:
        names = sorted(self.sums)
        totals = all_reduce_sum([self.sums[k] for k in names] + [self.count], device, info)
        count = totals[-1]
        return ({k: t / count for k, t in zip(names, totals[:-1])} if count else {}), int(count)


def seed_initialisation(seed: int) -> None:
    """Seeds torch's generator before a model is built, so its new layers start the same in every run
    with this seed (``fit`` seeds again for the training itself)."""
    torch.manual_seed(seed)


def prepare_model_for_training(model: torch.nn.Module, config: TrainConfig, device: torch.device) -> torch.nn.Module:
    """``model`` on ``device``, in the channels-last memory layout when the config asks for it (a convolution
    whose weights are channels-last gives a channels-last output, so the whole network follows)."""
    model = model.to(device)
    return model.to(memory_format=torch.channels_last) if config.channels_last else model


def batch_to_device(batch, device: torch.device, channels_last: bool = False):
    """A loader's batch on ``device``; a 4-d image tensor channels-last when asked."""
    images, targets, indices = to_device(batch, device)
    if channels_last and torch.is_tensor(images) and images.ndim == 4:
        images = images.contiguous(memory_format=torch.channels_last)
    return images, targets, indices


def train_one_epoch(model, loader, optimizer, scheduler, scaler, device, precision: Precision, *,
                    epoch: int, epochs: int, info: DistInfo = DistInfo(), grad_clip: float | None = None,
                    progress: bool = True, ema: ModelEma | None = None,
                    channels_last: bool = False) -> dict[str, float]:
    """One pass over ``loader``: forward under autocast, summed loss, scaled backward, step, schedule.

    Returns the sample-weighted mean of each loss (``loss`` is their sum), ``n_images`` across ranks
    and ``images_per_s`` (and ``peak_gpu_memory_gib`` on CUDA). Raises :class:`NonFiniteLossError`
    on a NaN/inf loss on any rank.
    """
    model.train()
    meter = _Meter()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    bar = tqdm(loader, desc=f"epoch {epoch + 1}/{epochs} train", disable=not (progress and info.is_main),
               leave=False, dynamic_ncols=True)
    for step, batch in enumerate(bar):
        if batch is None:
            continue
        images, targets, _ = batch_to_device(batch, device, channels_last)
        with torch.autocast(device.type, dtype=precision.dtype, enabled=precision.enabled):
            total, losses = _sum_losses(model(images, targets), "model output")
        finite = torch.isfinite(total.detach()).float()
        if info.enabled:
            dist.all_reduce(finite, op=dist.ReduceOp.MIN)
        if not bool(finite.item()):
            shown = ", ".join(f"{k}={v.item():.4g}" for k, v in losses.items())
            raise NonFiniteLossError(
                f"non-finite loss at epoch {epoch + 1} step {step + 1} on some rank ({shown}); stopped "
                f"before updating the weights. Lower the learning rate, set grad_clip, or set amp=off.")
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(total).backward()
        if grad_clip:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        if ema is not None:
            ema.update(model)
        values = {"loss": total.item(), **{k: v.item() for k, v in losses.items()}}
        meter.add(values, len(images))
        bar.set_postfix(loss=f"{values['loss']:.4f}", lr=f"{optimizer.param_groups[0]['lr']:.2e}")
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    means, n_images = meter.means(device, info)
    result = {**means, "n_images": n_images, "images_per_s": n_images / seconds if seconds > 0 else 0.0}
    if device.type == "cuda":
        result["peak_gpu_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    return result


def _gather_outputs(indices: list, outputs: dict[str, list], info: DistInfo):
    indices = torch.cat(indices) if indices else torch.zeros(0, dtype=torch.long)
    merged = {k: torch.cat(v) for k, v in outputs.items()}
    if info.enabled:
        parts = [None] * info.world_size
        dist.all_gather_object(parts, (indices, merged))
        indices = torch.cat([p[0] for p in parts])
        merged = {k: torch.cat([p[1][k] for p in parts]) for k in merged}
    order = torch.argsort(indices)
    return indices[order], {k: v[order] for k, v in merged.items()}


@torch.no_grad()
def validate(model, loader, device, precision: Precision, *, info: DistInfo = DistInfo(),
             collect_outputs: bool = True, progress: bool = True, desc: str = "validate",
             channels_last: bool = False):
    """Mean losses over ``loader`` (model in eval mode, ``model(images, targets)``) and, when
    ``collect_outputs``, every non-loss output gathered from all ranks and ordered by dataset index.

    Returns ``(losses, indices, outputs)``; outputs are float32 CPU tensors.
    """
    model.eval()
    meter = _Meter()
    indices, outputs = [], {}
    for batch in tqdm(loader, desc=desc, disable=not (progress and info.is_main), leave=False, dynamic_ncols=True):
        if batch is None:
            continue
        images, targets, batch_indices = batch_to_device(batch, device, channels_last)
        with torch.autocast(device.type, dtype=precision.dtype, enabled=precision.enabled):
            result = model(images, targets)
        total, losses = _sum_losses(result, "model output")
        meter.add({"loss": total.item(), **{k: v.item() for k, v in losses.items()}}, len(images))
        if collect_outputs:
            indices.append(batch_indices.cpu())
            for k, v in result.items():
                if not k.startswith("loss"):
                    outputs.setdefault(k, []).append(v.detach().float().cpu())
    means, _ = meter.means(device, info)
    if not collect_outputs:
        return means, None, None
    gathered_indices, gathered = _gather_outputs(indices, outputs, info)
    return means, gathered_indices, gathered


def predict(model, dataset: Dataset, *, batch_size: int, workers: int, device: torch.device, precision: Precision,
            collate_fn=collate_skip_none, progress: bool = True, desc: str = "predict"):
    """:func:`validate` over a whole dataset in this process alone (after training, on rank 0)."""
    loader = make_loader(dataset, batch_size, train=False, seed=0, info=DistInfo(), workers=workers,
                         collate_fn=collate_fn)
    return validate(model.to(device), loader, device, precision, progress=progress, desc=desc)


@dataclass
class FitResult:
    run_dir: Path
    best_checkpoint: Path
    last_checkpoint: Path
    history: list[dict]
    best_epoch: int
    best_value: float


def _checkpoint_epoch(path: Path) -> int | None:
    """The epoch a checkpoint file holds; None when there is no readable one."""
    try:
        return load_checkpoint(path)["epoch"] if path.is_file() else None
    except CheckpointError:
        return None


def _is_better(value: float, best: float | None, mode: str, monitor: str = "") -> bool:
    if monitor == LAST_EPOCH:
        return True
    if value is None or not math.isfinite(value):
        return False
    return best is None or (value < best if mode == "min" else value > best)


# The pretrained trunk's parameter names: every classifier keeps it as ``trunk``; a model that keeps it
# elsewhere says where in a class attribute ``trunk_parameters`` (the Faster R-CNN).
TRUNK_PARAMETERS = "trunk."


def build_optimizer(model: torch.nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """SGD with Nesterov momentum; no weight decay on biases and normalisation weights (1-d tensors);
    with ``trunk_lr_scale`` the trunk's parameters (:data:`TRUNK_PARAMETERS`) learn at that fraction of the rate
    (the schedule scales every group alike). Without it the groups are the two they always were, so
    checkpoints written before the key resume."""
    scale = config.trunk_lr_scale
    prefix = getattr(model, "trunk_parameters", TRUNK_PARAMETERS)
    groups: dict[tuple[bool, bool], list] = {(False, False): [], (False, True): []}
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            in_trunk = scale != 1.0 and name.startswith(prefix)
            groups.setdefault((in_trunk, parameter.ndim <= 1), []).append(parameter)
    if scale != 1.0 and not (groups.get((True, False)) or groups.get((True, True))):
        raise ValueError(f"trunk_lr_scale {scale}: {type(model).__name__} has no trainable {prefix}* parameters")
    return torch.optim.SGD([{"params": params, "weight_decay": 0.0 if no_decay else config.weight_decay,
                             "lr": config.lr * (scale if in_trunk else 1.0)}
                            for (in_trunk, no_decay), params in groups.items()],
                           lr=config.lr, momentum=config.momentum, nesterov=config.nesterov)


def fit(model: torch.nn.Module, train_set: Dataset, val_set: Dataset, config: TrainConfig, run_dir, *,
        evaluate: Callable[[torch.Tensor, dict], dict] | None = None, monitor: str = "val_loss",
        mode: Literal["min", "max"] = "min", resume: bool = False, collate_fn=collate_skip_none,
        val_batch_size: int | None = None, progress: bool = True, title: str = "") -> FitResult:
    """Train ``model`` for ``config.epochs`` epochs and keep the best epoch by ``monitor`` (a logged
    metric such as ``val_loss``), or the last epoch with ``monitor=LAST_EPOCH``.

    ``evaluate(indices, outputs)`` turns the validation outputs (ordered by dataset index) into
    metrics such as ``{"mean_auc": ...}``; they are logged as ``val_<name>``. With ``resume`` the run
    continues from ``run_dir/last.pt`` (which must come from the same config). Only rank 0 writes
    files. Datasets with a ``set_epoch`` method get it called each epoch (augmentation seeds).
    ``val_batch_size`` defaults to ``config.batch_size``.
    """
    run_dir = Path(run_dir)
    info = init_distributed(config.device)
    device = resolve_device(config.device, info.local_rank)
    precision = resolve_precision(config.amp, device)
    if mode not in ("min", "max"):
        raise ValueError(f"mode must be 'min' or 'max', got {mode!r}")
    if info.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(run_dir)  # a killed run's half-written checkpoints and tables

    torch.manual_seed(config.seed)
    model = prepare_model_for_training(model, config, device)
    optimizer = build_optimizer(model, config)
    train_loader = make_loader(train_set, config.batch_size, train=True, seed=config.seed, info=info,
                               workers=config.workers, collate_fn=collate_fn)
    val_loader = make_loader(val_set, val_batch_size or config.batch_size, train=False, seed=config.seed, info=info,
                             workers=config.workers, collate_fn=collate_fn)
    steps_per_epoch = len(train_loader)
    if steps_per_epoch == 0:
        raise ValueError(f"{run_dir}: the training set is empty")
    total_steps = steps_per_epoch * config.epochs
    warmup_steps = int(round(config.warmup_epochs * steps_per_epoch))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, total_steps, config.lr_floor, warmup_steps))
    scaler = torch.amp.GradScaler(device.type, enabled=precision.scaler)
    config_dict = asdict(config)
    ema = ModelEma(model, config.ema_decay) if config.ema_decay else None

    start_epoch, history, best_value, best_epoch = 0, [], None, -1
    last_path, best_path = run_dir / LAST_CHECKPOINT, run_dir / BEST_CHECKPOINT
    if resume and last_path.is_file():
        state = load_checkpoint(last_path)
        # a key the checkpoint lacks was added since, with the default that keeps the behaviour it had
        defaults = {f.name: f.default for f in fields(config) if f.default is not MISSING}
        changed = sorted(k for k in config_dict.keys() | state["config"].keys()
                         if k not in RUN_LEVEL_KEYS and state["config"].get(k, defaults.get(k)) != config_dict.get(k))
        if changed:
            raise CheckpointError(f"{last_path}: cannot resume with a different config (changed: {changed})")
        if ema is not None:
            unwrap(model).load_state_dict(state["ema"]["train_model"])
            ema.module.load_state_dict(state["model"])
            ema.updates = state["ema"]["updates"]
        else:
            unwrap(model).load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        start_epoch = state["epoch"]
        history = list(state["metrics"]["history"])
        best_value, best_epoch = state["metrics"]["best_value"], state["metrics"]["best_epoch"]
        if info.is_main:
            log.info("resumed %s at epoch %d/%d", last_path, start_epoch, config.epochs)
            if best_epoch == start_epoch and _checkpoint_epoch(best_path) != best_epoch:
                # killed (or out of space) between last.pt and its copy to best.pt: finish the copy
                copy_atomic(last_path, best_path)
                log.info("%s: copied from %s (epoch %d), which a stopped run had not finished", best_path,
                         last_path, best_epoch)
    elif resume and info.is_main:
        log.info("no %s yet: starting from scratch", last_path)

    if info.enabled:
        ddp_device = [device.index] if device.type == "cuda" else None
        model = DistributedDataParallel(model, device_ids=ddp_device)
    if info.is_main:
        log.info("training on %s (world size %d, precision %s, %d steps/epoch)", device, info.world_size,
                 precision.dtype if precision.enabled else "fp32", steps_per_epoch)

    for epoch in range(start_epoch, config.epochs):
        # Everything random in this epoch derives from (seed, epoch, rank): see the module docstring.
        torch.manual_seed(config.seed + 1009 * epoch + info.rank)
        train_loader.sampler.set_epoch(epoch)
        for dataset in (train_set, val_set):
            if hasattr(dataset, "set_epoch"):
                dataset.set_epoch(epoch)
        started = time.perf_counter()
        train = train_one_epoch(model, train_loader, optimizer, scheduler, scaler, device, precision,
                                epoch=epoch, epochs=config.epochs, info=info, grad_clip=config.grad_clip,
                                progress=progress, ema=ema, channels_last=config.channels_last)
        val_losses, indices, outputs = validate(ema.module if ema is not None else model, val_loader, device,
                                                precision, info=info,
                                                collect_outputs=evaluate is not None, progress=progress,
                                                desc=f"epoch {epoch + 1}/{config.epochs} validate",
                                                channels_last=config.channels_last)
        row = {"epoch": epoch + 1, "lr": optimizer.param_groups[0]["lr"]}
        row.update({f"train_{k}": v for k, v in train.items()})
        row.update({f"val_{k}": v for k, v in val_losses.items()})
        if evaluate is not None and info.is_main:
            row.update({f"val_{k}": v for k, v in evaluate(indices, outputs).items()})
        row["seconds"] = time.perf_counter() - started
        history.append(row)
        if info.is_main:
            value = float(epoch + 1) if monitor == LAST_EPOCH else row.get(monitor)
            improved = _is_better(value, best_value, mode, monitor)
            if improved:
                best_value, best_epoch = value, epoch + 1
            state = {
                "model": (ema.module if ema is not None else unwrap(model)).state_dict(),
                "ema": None if ema is None else {"train_model": unwrap(model).state_dict(), "updates": ema.updates},
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(), "epoch": epoch + 1,
                "config": config_dict,
                "metrics": {"history": history, "monitor": monitor, "mode": mode, "best_value": best_value,
                            "best_epoch": best_epoch},
            }
            save_checkpoint(last_path, state)
            if improved:
                copy_atomic(last_path, best_path)
            write_metrics_csv(history, run_dir / METRICS_CSV)
            plot_loss_curve(history, run_dir / LOSS_CURVE_PNG, title)
            shown = "  ".join(f"{k}={v:.4g}" for k, v in row.items() if isinstance(v, float) and k != "lr")
            log.info("epoch %d/%d  %s%s", epoch + 1, config.epochs, shown, "  (best)" if improved else "")
    if info.enabled:
        dist.barrier()
    if info.is_main and best_epoch < 0:
        # No epoch had a finite monitored value: keep the last weights as the result rather than none.
        copy_atomic(last_path, best_path)
    return FitResult(run_dir, best_path, last_path, history, best_epoch,
                     float("nan") if best_value is None else best_value)
