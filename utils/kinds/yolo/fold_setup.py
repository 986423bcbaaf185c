"""What one ultralytics training of a fold is given: the prepared images and boxes exported in YOLO format, a
data.yaml with the fold's lists, the model file (with the project's trunk), the project's trainer class
and its arguments. Shared by the kind's training (``training.py``) and its loop benchmark (``speed.py``)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pandas as pd
import yaml

from utils.core.files import atomic_path
from utils.data.boxes import keep_valid_boxes, xyxy_norm_to_cxcywh
from utils.kinds.yolo.config import YoloConfig
from utils.kinds.yolo.trunk import timm_name, trunk_model_yaml

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


def trainer_class(config: YoloConfig) -> type:
    """The project's ultralytics trainer for ``config`` (import after :func:`import_ultralytics`)."""
    from utils.kinds.yolo.trainer import ChannelsLastDetectionTrainer, DetectionTrainer

    return ChannelsLastDetectionTrainer if config.channels_last else DetectionTrainer


def trainer_arguments(config: YoloConfig, data_yaml, run_dir: Path, device: str) -> dict:
    """What ultralytics' ``YOLO.train`` gets for a fold of ``config`` (its run in ``run_dir``)."""
    return dict(
        data=str(data_yaml), project=str(run_dir.parent), name=run_dir.name, exist_ok=True,
        imgsz=config.image_size, epochs=config.epochs, batch=config.batch_size, device=device,
        workers=config.workers, seed=config.seed, deterministic=True, optimizer=config.optimizer,
        lr0=config.lr, lrf=config.lr_floor, cos_lr=True, momentum=config.momentum,
        weight_decay=config.weight_decay, warmup_epochs=config.warmup_epochs, mosaic=config.mosaic,
        fliplr=config.fliplr, amp=config.amp, single_cls=True, plots=False, verbose=False,
        val=config.monitor == "fitness",
    )
