"""Data loaders of the loop: batches of the engine's item format ``(image, target, index)`` with unreadable
items (``None``) dropped, each process's share under DDP, and every random choice a function of (seed,
epoch, rank) so that a resumed run draws what an uninterrupted one would."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from torch.utils.data._utils.collate import default_collate

from utils.core.interrupt import dies_with_this_process
from utils.training.distributed import DistInfo, ShardSampler


def collate_skip_none(items):
    """Default collation of ``(image, target, index)`` items after dropping ``None`` (unreadable) ones;
    an all-bad batch gives ``None``."""
    items = [item for item in items if item is not None]
    return default_collate(items) if items else None


def collate_detection(items):
    """Detector batches (torchvision's input): ``(list of images, list of target dicts, indices)``,
    ``None`` items dropped; an all-bad batch gives ``None``."""
    items = [item for item in items if item is not None]
    if not items:
        return None
    images, targets, indices = zip(*items)
    return list(images), list(targets), torch.as_tensor(indices, dtype=torch.long)


def to_device(obj, device: torch.device):
    """Tensors inside nested lists, tuples and dicts moved to ``device``."""
    if torch.is_tensor(obj):
        return obj.to(device, non_blocking=True)
    if isinstance(obj, dict):
        return {k: to_device(v, device) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_device(v, device) for v in obj)
    return obj


def make_loader(dataset: Dataset, batch_size: int, *, train: bool, seed: int, info: DistInfo, workers: int,
                collate_fn=collate_skip_none) -> DataLoader:
    """Training: a seeded shuffle that depends on the epoch (``sampler.set_epoch``), split across ranks.
    Validation: each rank reads its own unpadded shard in order."""
    if train:
        sampler = DistributedSampler(dataset, num_replicas=info.world_size, rank=info.rank, shuffle=True, seed=seed)
    else:
        sampler = ShardSampler(len(dataset), info.rank, info.world_size)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=workers,
                      collate_fn=collate_fn, pin_memory=torch.cuda.is_available(),
                      persistent_workers=False, worker_init_fn=dies_with_this_process() if workers else None)
