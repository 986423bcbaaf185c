"""Model kind "yolo": the ultralytics YOLO opacity detector. ultralytics' own trainer runs each fold
(behind the same ``train_fold`` as the torch kinds); its results become the engine's metrics.csv and
loss curve, its held-out predictions the shared prediction rows."""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import torch

from utils.detection import write_detector_report
from utils.engine import Precision, copy_atomic, plot_loss_curve, write_metrics_csv
from utils.kinds.base import (
    Detections,
    DetectorKind,
    FoldResult,
    Member,
    ModelKind,
    RunOptions,
    TrainingError,
    model_input,
    split_fold,
    with_flipped,
)
from utils.manifest import ManifestError, register_model
from utils.predictions import detection_rows
from utils.yolo import (
    SETTINGS_DIR,
    YoloWeightsError,
    check_starting_weights,
    default_settings_dir,
    export_yolo_images,
    import_ultralytics,
    load_yolo,
    predict_yolo,
    resolve_yolo_device,
    results_history,
    save_yolo_weights,
    write_data_yaml,
)

log = logging.getLogger(__name__)


@dataclass
class YoloConfig:
    """The ``yolo`` section (train/configs/*.yaml document every key)."""

    model: str = "yolov8s.yaml"
    image_size: int = 512
    predict_size: int = 1024
    folds: list[int] | None = None
    epochs: int = 30
    batch_size: int = 16
    optimizer: Literal["SGD", "AdamW", "auto"] = "SGD"
    lr: float = 0.01
    lr_floor: float = 0.05
    momentum: float = 0.937
    weight_decay: float = 0.0005
    warmup_epochs: float = 3.0
    mosaic: float = 1.0
    fliplr: float = 0.5
    amp: bool = True
    score_threshold: float = 0.001
    nms_threshold: float = 0.6
    detections_per_image: int = 100
    workers: int = 8
    seed: int = 42
    device: str = "auto"

    def __post_init__(self):
        problems = [f"{name} must be at least 1, got {value}" for name, value in (
            ("epochs", self.epochs), ("batch_size", self.batch_size),
            ("detections_per_image", self.detections_per_image)) if value < 1]
        if self.image_size < 32:
            problems.append(f"image_size must be at least 32, got {self.image_size}")
        if self.predict_size < 32 or self.predict_size % 32:
            problems.append(f"predict_size must be a positive multiple of 32 (YOLO's stride), got {self.predict_size}")
        if self.lr <= 0 or self.workers < 0 or self.warmup_epochs < 0 or self.weight_decay < 0:
            problems.append("lr must be > 0 and workers, warmup_epochs, weight_decay >= 0")
        for name in ("lr_floor", "mosaic", "fliplr", "score_threshold", "nms_threshold"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                problems.append(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if problems:
            raise ValueError("; ".join(problems))

    def check_files(self) -> None:
        """The model must be a bundled yaml or a local .pt: nothing is downloaded."""
        if self.model.endswith(".pt") and not Path(self.model).is_file():
            raise FileNotFoundError(f"{self.model}: weights file not found (nothing is downloaded; pass a local .pt "
                                    f"or a model yaml such as yolov8s.yaml)")


class YoloKind(DetectorKind, ModelKind):
    section = "yolo"
    model_name = "yolo"
    manifest_kind = "yolo"
    config_class = YoloConfig
    title = "YOLO"
    resumable = False  # ultralytics' runs restart

    def start(self, table: pd.DataFrame, config: YoloConfig, options: RunOptions) -> None:
        """ultralytics imported offline (settings in the run folder); the used images exported once
        for every fold at the training size."""
        config.check_files()
        self.ultralytics = import_ultralytics((options.out / SETTINGS_DIR).resolve())
        if config.model.endswith(".pt"):
            try:
                check_starting_weights(config.model)
            except YoloWeightsError as err:
                raise TrainingError(str(err)) from None
        used = table[table["used"]]
        table.loc[used.index, "yolo_path"] = export_yolo_images(used, options.out / "dataset")
        log.info("%d used images exported to %s", len(used), options.out / "dataset")

    def train_fold(self, table: pd.DataFrame, fold: int, config: YoloConfig, options: RunOptions) -> FoldResult:
        """Train on the used images of the other folds, validate on this fold's used images, then predict
        every image of this fold at ``predict_size``."""
        train, val, held_out = split_fold(table, fold, options.prepared)
        run_dir = (options.out / f"fold{fold}").resolve()
        data_yaml = write_data_yaml(run_dir, train["yolo_path"], val["yolo_path"])
        device = resolve_yolo_device(config.device)
        model = self.ultralytics.YOLO(config.model)
        model.train(
            data=str(data_yaml), project=str(run_dir.parent), name=run_dir.name, exist_ok=True,
            imgsz=config.image_size, epochs=config.epochs, batch=config.batch_size, device=device,
            workers=config.workers, seed=config.seed, deterministic=True, optimizer=config.optimizer,
            lr0=config.lr, lrf=config.lr_floor, cos_lr=True, momentum=config.momentum,
            weight_decay=config.weight_decay, warmup_epochs=config.warmup_epochs, mosaic=config.mosaic,
            fliplr=config.fliplr, amp=config.amp, single_cls=True, plots=False, verbose=False, val=True,
        )
        # After training, ultralytics holds its best checkpoint's network (its last when none was best):
        # kept as data (model yaml + state dict), and the held-out images predicted through the same
        # loader as every consumer of a weights folder.
        best = save_yolo_weights(model.model, run_dir / "weights" / "best_state.pt")
        history = results_history(run_dir / "results.csv")
        write_metrics_csv(history, run_dir / "metrics.csv")
        plot_loss_curve(history, run_dir / "loss_curve.png", f"YOLO ({config.model}), fold {fold}")
        detections = predict_yolo(load_yolo(self.ultralytics, best), held_out["predict_path"],
                                  image_size=config.predict_size, score_threshold=config.score_threshold,
                                  nms_threshold=config.nms_threshold, max_detections=config.detections_per_image,
                                  device=device, progress=options.progress)
        return FoldResult(best, detection_rows(held_out["image_id"], held_out["study_id"], self.model_name, fold,
                                               detections))

    def write_report(self, oof, table, out) -> dict:
        return write_detector_report(oof, table, out)

    def register(self, best: dict[int, Path], config: YoloConfig, weights_dir: Path) -> Path:
        """Each fold's weights as data (:func:`utils.yolo.save_yolo_weights`) copied to ``yolo/fold<k>.pt``."""
        files = {}
        for fold, source in sorted(best.items()):
            relative = Path(self.model_name) / f"fold{fold}.pt"
            copy_atomic(source, Path(weights_dir) / relative)
            files[fold] = str(relative)
        return register_model(weights_dir, self.model_name, self.manifest_kind, files, config.predict_size,
                              asdict(config))


class YoloMember(Member):
    def __init__(self, name, spec, weights_dir, device: torch.device):
        super().__init__(name, spec, weights_dir, device)
        if self.input_size % 32:
            raise ManifestError(f"model {name!r}: YOLO input size {self.input_size} is not a multiple of 32")
        ultralytics = import_ultralytics(default_settings_dir())
        self.models = []
        for path in self.files:
            try:
                self.models.append(load_yolo(ultralytics, path))
            except YoloWeightsError as err:
                raise ManifestError(str(err)) from None
        self.options = {"imgsz": self.input_size, "conf": float(self.config.get("score_threshold", 0.001)),
                        "iou": float(self.config.get("nms_threshold", 0.6)),
                        "max_det": int(self.config.get("detections_per_image", 100))}

    def set_channels_last(self, enabled: bool) -> bool:
        return False  # ultralytics builds (and fuses) its own inference model: left as it makes it

    @torch.no_grad()
    def predict(self, images: torch.Tensor, tta: bool, precision: Precision) -> list[Detections]:
        batch = model_input(images).contiguous()  # a BCHW tensor in [0, 1] is taken as preprocessed
        inputs = torch.cat([batch, batch.flip(-1)]) if tta else batch
        device = "cpu" if self.device.type == "cpu" else str(self.device)
        per_input: list[Detections] = [[] for _ in range(len(inputs))]
        threads = torch.get_num_threads()
        for model in self.models:
            try:
                results = model.predict(inputs, device=device, verbose=False, save=False,
                                        quantize=16 if precision.enabled and precision.dtype == torch.float16
                                        else None, **self.options)
            finally:
                # ultralytics' select_device sets cpu_count - 1 threads on the CPU (half the cores of a
                # 2-core machine) for the whole process; the other models need them all.
                torch.set_num_threads(threads)
            for k, result in enumerate(results):
                per_input[k].append((result.boxes.xyxyn.float().cpu().numpy().astype(np.float64),
                                     result.boxes.conf.float().cpu().numpy().astype(np.float64)))
        n = len(images)
        return with_flipped(per_input[:n], per_input[n:]) if tta else per_input


YoloKind.member_class = YoloMember
KIND = YoloKind()
