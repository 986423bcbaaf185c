"""Model kind "yolo": the ultralytics YOLO opacity detector. ultralytics' own trainer runs each fold
(behind the same ``train_fold`` as the torch kinds) on the prepared folds exported once to YOLO format;
its results become the engine's metrics.csv and loss curve, its held-out predictions the shared
prediction rows. (ultralytics' offline setup and the weights files: ``network.py``; prediction:
``member.py``.)"""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from utils.core.files import atomic_path
from utils.data.boxes import keep_valid_boxes, xyxy_norm_to_cxcywh
from utils.data.predictions import detection_rows
from utils.ensemble.manifest import register_model
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
from utils.kinds.yolo.trunk import timm_name, trunk_model_yaml
from utils.nets.models import PRETRAINED_NONE
from utils.scoring.detection import write_detector_report
from utils.training.checkpoints import copy_atomic
from utils.training.history import plot_loss_curve, write_metrics_csv

log = logging.getLogger(__name__)

CLASS_NAMES = {0: "opacity"}


# ----------------------------------------------------------------------------- the YOLO-format dataset


def resolve_yolo_device(device: str) -> str:
    """``auto`` -> ``"0"`` on a GPU machine, else ``"cpu"``; anything else is ultralytics' device list."""
    if device != "auto":
        return device
    import torch

    return "0" if torch.cuda.is_available() else "cpu"


def _link_or_copy(source: Path, destination: Path) -> None:
    if destination.exists():
        return
    try:
        os.link(source, destination)  # same file system: no copy
    except OSError:
        shutil.copyfile(source, destination)


def label_lines(boxes_norm) -> str:
    """XYXY_NORM boxes -> YOLO label text (``0 cx cy w h`` per line); empty for an image without
    opacity (a negative)."""
    kept, _ = keep_valid_boxes(boxes_norm, 1.0, 1.0, min_size=1e-4)
    return "".join(f"0 {cx:.6f} {cy:.6f} {w:.6f} {h:.6f}\n" for cx, cy, w, h in xyxy_norm_to_cxcywh(kept))


def export_yolo_images(table: pd.DataFrame, out_dir) -> pd.Series:
    """``images/<id>.png`` (hard links to the prepared PNGs of ``table["image_path"]``) and
    ``labels/<id>.txt`` under ``out_dir``, once for all folds; returns each row's exported image path.
    ultralytics finds a label by replacing ``/images/`` with ``/labels/`` in the image path."""
    out_dir = Path(out_dir)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    (out_dir / "labels").mkdir(parents=True, exist_ok=True)
    paths = []
    # A pseudo-labelled image has one row (and label) per round-one fold that labelled it: own names.
    names = [f"{i}.pseudo{f}" if p else i for i, p, f in zip(
        table["image_id"], table.get("pseudo", pd.Series(False, index=table.index)),
        table.get("pseudo_fold", pd.Series(-1, index=table.index)))]
    for name, source, boxes in zip(names, table["image_path"], table["boxes_norm"]):
        image = out_dir / "images" / f"{name}.png"
        _link_or_copy(Path(source), image)
        label = out_dir / "labels" / f"{name}.txt"
        text = label_lines(boxes)
        if not label.is_file() or label.read_text() != text:
            with atomic_path(label) as temporary:
                temporary.write_text(text)
        paths.append(str(image.resolve()))
    return pd.Series(paths, index=table.index)


def write_data_yaml(run_dir, train_images, val_images) -> Path:
    """A fold's ``data.yaml`` with its train/val image lists beside it (in the run folder)."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    lists = {}
    for split, images in (("train", train_images), ("val", val_images)):
        lists[split] = run_dir / f"{split}.txt"
        lists[split].write_text("".join(f"{p}\n" for p in images))
    data = {"path": str(run_dir.resolve()), "train": str(lists["train"].resolve()),
            "val": str(lists["val"].resolve()), "names": CLASS_NAMES}
    path = run_dir / "data.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


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


def model_file(config: YoloConfig, run_dir: Path) -> str:
    """What ultralytics builds the fold's network from: ``config.model``, or with a trunk the model yaml
    :func:`utils.kinds.yolo.trunk.trunk_model_yaml` writes into the run folder (named after the model,
    so that ultralytics reads the scale from the name: ``yolov8n-tf_efficientnet_lite0.yaml``)."""
    if config.trunk is None:
        return config.model
    document = trunk_model_yaml(config.model, config.trunk, config.pretrained)
    path = Path(run_dir) / f"{Path(config.model).stem}-{timm_name(config.trunk)}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as temporary:
        temporary.write_text(yaml.safe_dump(document, sort_keys=False))
    return str(path)


def describe(config: YoloConfig) -> str:
    return config.model if config.trunk is None else f"{config.model} on {config.trunk}"


class YoloKind(DetectorKind, ModelKind):
    name = "yolo"
    member_class = YoloMember
    config_class = YoloConfig
    title = "YOLO"
    resumable = False  # ultralytics' runs restart

    script = "train/train_yolo.py"

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
        from utils.kinds.yolo.trainer import DetectionTrainer

        model = ultralytics.YOLO(model_file(config, run_dir))
        model.train(
            trainer=DetectionTrainer, data=str(data_yaml), project=str(run_dir.parent), name=run_dir.name,
            exist_ok=True,
            imgsz=config.image_size, epochs=config.epochs, batch=config.batch_size, device=device,
            workers=config.workers, seed=config.seed, deterministic=True, optimizer=config.optimizer,
            lr0=config.lr, lrf=config.lr_floor, cos_lr=True, momentum=config.momentum,
            weight_decay=config.weight_decay, warmup_epochs=config.warmup_epochs, mosaic=config.mosaic,
            fliplr=config.fliplr, amp=config.amp, single_cls=True, plots=False, verbose=False,
            val=config.monitor == "fitness",
        )
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
        for fold, source in sorted(best.items()):
            relative = Path(self.name) / f"fold{fold}.pt"
            copy_atomic(source, Path(weights_dir) / relative)
            files[fold] = str(relative)
        return register_model(weights_dir, self.name, files, config.predict_size,
                              asdict(config))


KIND = YoloKind()
