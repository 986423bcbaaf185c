"""The trainer ultralytics runs for the ``yolo`` kind: its detection trainer, which first makes the
project's trunk layer known to ultralytics (:func:`utils.kinds.yolo.trunk.register_trunk_layer`).

ultralytics' multi-GPU training writes a script that imports the trainer's class from its module and
runs it in fresh worker processes, where nothing of the project ran: building the model there must
register the layer itself. Import it after :func:`utils.kinds.yolo.network.import_ultralytics` (the
worker processes inherit its environment switches)."""

from __future__ import annotations

import torch
from ultralytics.models.yolo.detect import DetectionTrainer as UltralyticsDetectionTrainer

from utils.kinds.yolo.trunk import register_trunk_layer


class DetectionTrainer(UltralyticsDetectionTrainer):
    """ultralytics' detection trainer; the trunk layer is registered before the network is built."""

    def get_model(self, cfg=None, weights=None, verbose=True):
        register_trunk_layer()
        return super().get_model(cfg=cfg, weights=weights, verbose=verbose)


class ChannelsLastDetectionTrainer(DetectionTrainer):
    """The same trainer with the network and each batch of images in the channels-last memory layout
    (``yolo.channels_last``), which ultralytics has no setting for; its EMA and checkpoints copy the
    network, so they follow. A class of its own (not a flag) so that DDP's worker processes, which import
    the trainer by name, build the same."""

    def get_model(self, cfg=None, weights=None, verbose=True):
        return super().get_model(cfg=cfg, weights=weights, verbose=verbose).to(memory_format=torch.channels_last)

    def preprocess_batch(self, batch: dict) -> dict:
        batch = super().preprocess_batch(batch)
        batch["img"] = batch["img"].contiguous(memory_format=torch.channels_last)
        return batch
