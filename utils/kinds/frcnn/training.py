"""Model kind "frcnn": the torchvision Faster R-CNN opacity detector on a ResNet/ResNeXt FPN (trunk from
the NIH backbone), one model per fold, trained at ``image_size`` (512 in full.yaml) and predicting the
held-out fold at ``predict_size`` (1024).

    python train/train_kind.py --kind frcnn --prepared runs/prepared/meta.csv --out runs/frcnn
        [--config train/configs/full.yaml] [--set backbone=runs/backbone/best.pt folds=[0,1]]
        [--set pretrain_rsna=RSNA_DIR | --set init_from=CHECKPOINT] [--weights-dir runs/weights] [--resume]

With ``pretrain_rsna`` (train_all sets it from ``--rsna-dir``) it first trains on an RSNA Pneumonia
folder (``stage_2_train_labels.csv``, ``stage_2_train_images/``; report section 2.2) for
``pretrain_epochs``, holding out fold 0, and every SIIM fold starts from that run's best weights;
``init_from`` starts from any detector checkpoint instead (e.g. an earlier pre-training run).

Writes to --out: config.yaml, fold<k>/ (engine run folder: last.pt, best.pt, metrics.csv,
loss_curve.png), oof_predictions.csv (boxes of every image of the trained folds, shared schema),
oof_scores.json / oof_scores.txt (opacity AP@0.5 with the competition metric, beside the fixed-box
baseline); with pretrain_rsna also rsna/ (prepared images and the same files). Registers the fold
weights as model "frcnn" in --weights-dir/manifest.json."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import pandas as pd
import torch

from utils.data.datasets import DetectionDataset
from utils.data.predictions import detection_rows
from utils.data.prepare import prepare_rsna
from utils.data.presets import build_transform
from utils.kinds.base import (
    DetectorKind,
    RunOptions,
    StagePlan,
    TorchKind,
    TrainingError,
)
from utils.kinds.frcnn.config import FrcnnConfig
from utils.kinds.frcnn.member import FasterRCNNMember
from utils.kinds.frcnn.network import (
    FasterRCNNDetector,
    detector_from_config,
    load_detector_state,
    unpad_detections,
)
from utils.nets.models import PRETRAINED_NONE, check_trunk_file
from utils.scoring.detection import detector_scores, write_detector_report
from utils.training.checkpoints import load_checkpoint
from utils.training.distributed import init_distributed
from utils.training.loaders import collate_detection
from utils.training.loop import LAST_EPOCH

log = logging.getLogger(__name__)


def keep_negatives(train: pd.DataFrame, fraction: float, seed: int) -> pd.DataFrame:
    """The training images with boxes and a ``fraction`` of those without (drawn with ``seed``): on a
    CPU budget the box-free images cost as much as the others but teach the detector less."""
    negative = train["n_boxes"].astype(int) == 0
    if fraction >= 1.0 or not negative.any():
        return train
    kept = train[negative].sample(frac=fraction, random_state=seed)
    log.info("training on %d images with boxes and %d of %d without (negative_fraction=%g)",
             int((~negative).sum()), len(kept), int(negative.sum()), fraction)
    return pd.concat([train[~negative], kept]).sort_index().reset_index(drop=True)


class FrcnnKind(DetectorKind, TorchKind):
    name = "frcnn"
    member_class = FasterRCNNMember
    trunk_from_backbone = True
    config_class = FrcnnConfig
    title = "Faster R-CNN"
    collate = staticmethod(collate_detection)

    def toy_overrides(self) -> list[str]:
        return ["image_size=64", "predict_size=64", "epochs=1", "batch_size=4", "val_batch_size=4", "workers=0",
                "proposals=50", "roi_samples=32"]

    def speed_run_overrides(self, smoke: bool) -> list[str]:
        return super().speed_run_overrides(smoke) + (["arch=resnet18"] if smoke else [])

    def plan_overrides(self, plan: StagePlan) -> list[str]:
        return [f"pretrain_rsna={plan.rsna_dir}"] if plan.rsna_dir else []

    def check_files(self, config: FrcnnConfig, plan: StagePlan) -> None:
        if plan.nih_dir is None:  # without the NIH stage the trunk starts from what the config names
            check_trunk_file("backbone", config.arch, config.backbone)
        if config.pretrain_rsna and not Path(config.pretrain_rsna).is_dir():
            raise FileNotFoundError(f"pretrain_rsna: folder {config.pretrain_rsna!r} not found")
        if not config.pretrain_rsna and config.init_from and not Path(config.init_from).is_file():
            raise ValueError(f"init_from: file {config.init_from!r} not found")

    def before_folds(self, config: FrcnnConfig, options: RunOptions) -> FrcnnConfig:
        """With ``pretrain_rsna``, the RSNA run first: every fold starts from its best weights."""
        if not config.pretrain_rsna:
            return config
        return dataclasses.replace(config, init_from=str(self.pretrain_on_rsna(Path(config.pretrain_rsna), config,
                                                                                options)))

    def untrained_model(self, config: FrcnnConfig) -> FasterRCNNDetector:
        return detector_from_config(dataclasses.asdict(config), PRETRAINED_NONE, config.predict_size)

    def build_model(self, config: FrcnnConfig) -> FasterRCNNDetector:
        """The detector of ``config``: the trunk from ``backbone``, or everything from ``init_from``."""
        trunk = PRETRAINED_NONE if config.init_from else config.backbone
        if config.freeze_bn and trunk in (None, "", PRETRAINED_NONE) and not config.init_from:
            log.warning("freeze_bn with a random trunk keeps untrained normalisation; set freeze_bn=false")
        model = detector_from_config(dataclasses.asdict(config), trunk, config.image_size)
        if config.init_from:
            load_detector_state(model, load_checkpoint(config.init_from)["model"], config.init_from)
        return model

    def prepare_train(self, train, config: FrcnnConfig):
        return keep_negatives(train, config.negative_fraction, config.seed)

    def _dataset(self, frame, preset: str, size: int, config: FrcnnConfig, column: str = "image_path"):
        return DetectionDataset(frame[column], frame["boxes_norm"], build_transform(preset, size), seed=config.seed)

    def datasets(self, train, val, config: FrcnnConfig):
        return (self._dataset(train, "frcnn_train", config.image_size, config),
                self._dataset(val, "detector_eval", config.image_size, config))

    def held_out_dataset(self, held_out, config: FrcnnConfig):
        return self._dataset(held_out, "detector_eval", config.predict_size, config, "predict_path")

    def prediction_model(self, model: FasterRCNNDetector, config: FrcnnConfig):
        model.set_image_size(config.predict_size)
        return model

    def batch_size(self, config: FrcnnConfig) -> int:
        return config.val_batch_size

    def rows(self, frame, fold, outputs):
        return detection_rows(frame["image_id"], frame["study_id"], self.name, fold,
                              unpad_detections(outputs))

    def val_scores(self, predictions, val) -> dict[str, float]:
        return {"opacity_ap": detector_scores(predictions, val)["opacity_ap"]}

    def monitor(self, config: FrcnnConfig) -> tuple[str, str]:
        return {"last": (LAST_EPOCH, "max"), "opacity_ap": ("val_opacity_ap", "max")}.get(config.monitor,
                                                                                          ("val_loss", "min"))

    def write_report(self, oof, table, out) -> dict:
        return write_detector_report(oof, table, out)

    def pretrain_on_rsna(self, rsna_dir: Path, config: FrcnnConfig, options: RunOptions) -> Path:
        """Prepare the RSNA folder (cached under OUT/rsna/prepared), train ``pretrain_epochs`` with fold 0
        held out, and return the best checkpoint (every SIIM fold then starts from it)."""
        out = options.out / "rsna"
        info = init_distributed(config.device)
        if info.is_main:
            prepare_rsna(rsna_dir, out / "prepared", sizes=tuple(sorted(self.sizes(config))),
                         workers=max(1, config.workers), progress=options.progress)
        if info.enabled:
            torch.distributed.barrier()
        pre_config = dataclasses.replace(config, epochs=config.pretrain_epochs)
        pre_options = dataclasses.replace(options, prepared=out / "prepared" / "meta.csv", out=out)
        try:
            table = self.load_table(pre_options.prepared, pre_config)
        except (OSError, ValueError) as err:
            raise TrainingError(str(err)) from err
        result = self.train_fold(table, 0, pre_config, pre_options, title="RSNA pre-training")
        if info.is_main:
            write_detector_report(result.predictions, table[table["fold"] == 0], out)
        return result.best


KIND = FrcnnKind()
