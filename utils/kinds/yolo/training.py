"""Model kind "yolo": the ultralytics YOLO opacity detector, one model per fold, trained at
``image_size``, predicting the held-out fold at ``predict_size`` (1024 in full.yaml). ultralytics' own
trainer runs each fold (behind the same ``train_fold`` as the torch kinds) on the prepared folds exported
once to YOLO format; its results become the engine's metrics.csv and loss curve, its held-out predictions
the shared prediction rows. (ultralytics' offline setup and the weights files: ``network.py``;
prediction: ``member.py``.)

    python train/train_kind.py --kind yolo --prepared runs/prepared/meta.csv --out runs/yolo
        [--config train/configs/full.yaml] [--set model=yolov8m.yaml folds=[0,1] device=0,1]
        [--weights-dir runs/weights]

The prepared images are exported once to YOLO format under --out/dataset (``images/`` hard links,
``labels/`` with ``0 cx cy w h`` per box, an empty file for an image without opacity); each fold's
``data.yaml`` and image lists are written in its run folder. ultralytics runs offline with its
settings in --out/ultralytics_settings. Multi-GPU: ``--set device=0,1`` (ultralytics' own DDP).

Writes to --out: config.yaml, fold<k>/ (ultralytics' run: weights/best.pt, results.csv, args.yaml;
plus data.yaml and loss_curve.png), oof_predictions.csv and oof_scores.json / .txt (opacity AP@0.5
with the competition metric beside the fixed-box baseline, as Faster R-CNN's). Registers the fold
weights as model "yolo" in --weights-dir/manifest.json."""

from __future__ import annotations

import logging
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd

from utils.data.predictions import detection_rows
from utils.ensemble.manifest import mark_replacing_files, register_model
from utils.kinds.base import (
    DetectorKind,
    FoldResult,
    ModelKind,
    RunOptions,
    StagePlan,
    TrainingError,
    split_fold,
)
from utils.kinds.yolo.config import YoloConfig
from utils.kinds.yolo.fold_setup import (
    export_yolo_images,
    model_file,
    resolve_yolo_device,
    trainer_arguments,
    trainer_class,
    write_data_yaml,
)
from utils.kinds.yolo.member import YoloMember
from utils.kinds.yolo.network import (
    SETTINGS_DIR,
    YoloWeightsError,
    check_starting_weights,
    default_settings_dir,
    import_ultralytics,
    load_yolo,
    save_yolo_weights,
)
from utils.kinds.yolo.trunk import trunk_model_yaml
from utils.nets.models import PRETRAINED_NONE
from utils.scoring.detection import write_detector_report
from utils.training.checkpoints import copy_atomic
from utils.training.history import plot_loss_curve, write_metrics_csv

log = logging.getLogger(__name__)


def results_history(results_csv) -> list[dict]:
    """ultralytics' ``results.csv`` -> the engine's history rows (``epoch``, ``train_loss``,
    ``val_loss`` as the sum of the box, class and DFL losses, plus mAP50), for the loss curve."""
    frame = pd.read_csv(results_csv)
    frame.columns = [c.strip() for c in frame.columns]
    history = []
    for row in frame.to_dict("records"):
        history.append({
            "epoch": int(row["epoch"]),
            "train_loss": sum(float(row[c]) for c in row if c.startswith("train/") and c.endswith("_loss")),
            "val_loss": sum(float(row[c]) for c in row if c.startswith("val/") and c.endswith("_loss")),
            "val_map50": float(row.get("metrics/mAP50(B)", np.nan)),
        })
    return history


def predict_yolo(model, image_paths, *, image_size: int, score_threshold: float, nms_threshold: float,
                 max_detections: int, device: str, batch_size: int = 16, progress: bool = True):
    """Per image ``(XYXY_NORM boxes (n, 4), scores (n,))`` of a loaded ``ultralytics.YOLO`` at
    ``image_size``. Inputs are square, so normalised coordinates of the input are those of the DICOM."""
    from tqdm import tqdm

    detections = []
    paths = [str(p) for p in image_paths]
    for start in tqdm(range(0, len(paths), batch_size), desc="yolo predict", disable=not progress, leave=False):
        results = model.predict(paths[start:start + batch_size], imgsz=image_size, conf=score_threshold,
                                iou=nms_threshold, max_det=max_detections, device=device, verbose=False,
                                save=False)
        for result in results:
            boxes = result.boxes
            detections.append((boxes.xyxyn.float().cpu().numpy().astype(np.float64),
                               boxes.conf.float().cpu().numpy().astype(np.float64)))
    return detections


def describe(config: YoloConfig) -> str:
    return config.model if config.trunk is None else f"{config.model} on {config.trunk}"


class YoloKind(DetectorKind, ModelKind):
    name = "yolo"
    member_class = YoloMember
    config_class = YoloConfig
    title = "YOLO"
    resumable = False  # ultralytics' runs restart

    def toy_overrides(self) -> list[str]:
        return ["image_size=64", "predict_size=64", "epochs=1", "batch_size=8", "workers=0"]

    def speed_run_overrides(self, smoke: bool) -> list[str]:
        return super().speed_run_overrides(smoke) + (["model=yolov8n.yaml"] if smoke else [])

    def first_epoch_figures(self, run_dir: Path) -> dict:
        """Fold 0's first epoch from ultralytics' results.csv (its ``time``: seconds, validation
        included) and the fold's training list."""
        run_dir = Path(run_dir)
        results = sorted((run_dir / "fold0").rglob("results.csv"))
        if not results:
            return {}
        frame = pd.read_csv(results[0])
        frame.columns = [c.strip() for c in frame.columns]
        seconds = pd.to_numeric(frame["time"], errors="coerce").iloc[0] if "time" in frame and len(frame) else None
        if seconds is None or pd.isna(seconds) or not seconds:
            return {}
        train_list = run_dir / "fold0" / "train.txt"
        images = len(train_list.read_text().split()) if train_list.is_file() else 0
        return {"images_per_s": round(images / float(seconds), 1) if images else None,
                "epoch_seconds_with_validation": round(float(seconds), 1), "train_images": images}

    def loop_benchmark(self, config_path, prepared, *, fold: int, steps: int, repeats: int,
                       overrides: dict | None = None, variants: dict[str, dict] | None = None) -> dict:
        from utils.kinds.yolo.speed import benchmark_yolo

        return benchmark_yolo(self, config_path, prepared, fold=fold, steps=steps, repeats=repeats,
                              overrides=overrides, variants=variants)

    def check_files(self, config: YoloConfig, plan: StagePlan) -> None:
        try:
            config.check_files()
        except FileNotFoundError as err:
            raise FileNotFoundError(f"model: {err}") from None

    def untrained_weights(self, config: YoloConfig, path) -> None:
        import_ultralytics(default_settings_dir())
        from ultralytics.nn.tasks import DetectionModel

        model = config.model if config.trunk is None else trunk_model_yaml(config.model, config.trunk, PRETRAINED_NONE)
        save_yolo_weights(DetectionModel(model, nc=1, verbose=False), path)

    def start(self, table: pd.DataFrame, config: YoloConfig, options: RunOptions) -> None:
        """ultralytics imported offline (settings in the run folder); the used images exported once
        for every fold at the training size."""
        config.check_files()
        import_ultralytics((options.out / SETTINGS_DIR).resolve())
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
        ultralytics = import_ultralytics((options.out / SETTINGS_DIR).resolve())
        model = ultralytics.YOLO(model_file(config, run_dir))
        model.train(trainer=trainer_class(config), **trainer_arguments(config, data_yaml, run_dir, device))
        # After training, ultralytics holds its best checkpoint's network (its last when none was best, and
        # with val=False, since the fitness then exists only at the last epoch):
        # kept as data (model yaml + state dict), and the held-out images predicted through the same
        # loader as every consumer of a weights folder.
        best = save_yolo_weights(model.model, run_dir / "weights" / "best_state.pt")
        history = results_history(run_dir / "results.csv")
        write_metrics_csv(history, run_dir / "metrics.csv")
        plot_loss_curve(history, run_dir / "loss_curve.png", f"YOLO ({describe(config)}), fold {fold}")
        detections = predict_yolo(load_yolo(ultralytics, best), held_out["predict_path"],
                                  image_size=config.predict_size, score_threshold=config.score_threshold,
                                  nms_threshold=config.nms_threshold, max_detections=config.detections_per_image,
                                  device=device, progress=options.progress)
        return FoldResult(best, detection_rows(held_out["image_id"], held_out["study_id"], self.name, fold,
                                               detections))

    def write_report(self, oof, table, out) -> dict:
        return write_detector_report(oof, table, out)

    def register(self, best: dict[int, Path], config: YoloConfig, weights_dir: Path) -> Path:
        """Each fold's weights as data (:func:`utils.kinds.yolo.network.save_yolo_weights`) copied to
        ``yolo/fold<k>.pt``."""
        files = {}
        mark_replacing_files(weights_dir, self.name)
        for fold, source in sorted(best.items()):
            relative = Path(self.name) / f"fold{fold}.pt"
            copy_atomic(source, Path(weights_dir) / relative)
            files[fold] = str(relative)
        return register_model(weights_dir, self.name, files, config.predict_size, asdict(config))


KIND = YoloKind()
