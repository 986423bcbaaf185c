"""The ultralytics YOLO opacity detector: offline setup, the YOLO-format export of the prepared folds,
and predictions in the shared schema.

ultralytics reads its settings file and network switches when it is first imported, so
:func:`import_ultralytics` sets them first: ``YOLO_OFFLINE=true`` (no hub probe, no AMP-check or font
download attempt that could hang) and ``YOLO_CONFIG_DIR`` inside the run folder (not the user's
home). Models come from a bundled yaml (random init) or a local ``.pt``; nothing is downloaded.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from utils.boxes import keep_valid_boxes, xyxy_norm_to_cxcywh
from utils.files import atomic_path

log = logging.getLogger(__name__)

CLASS_NAMES = {0: "opacity"}
SETTINGS_DIR = "ultralytics_settings"


def import_ultralytics(settings_dir):
    """``ultralytics``, imported offline with its settings under ``settings_dir``.

    When it was imported earlier in this process (tests), its settings stay where they are and
    this is logged; the offline switch and ``sync=False`` are applied either way.
    """
    os.environ["YOLO_OFFLINE"] = "true"  # the one value every ultralytics version reads as on (8.3: only "true")
    if "ultralytics" in sys.modules:
        current = os.environ.get("YOLO_CONFIG_DIR")
        if current != str(settings_dir):
            log.info("ultralytics already imported; its settings stay in %s", current or "its default folder")
    else:
        Path(settings_dir).mkdir(parents=True, exist_ok=True)
        os.environ["YOLO_CONFIG_DIR"] = str(settings_dir)
    import ultralytics
    import ultralytics.engine.trainer as trainer
    from ultralytics.utils import SETTINGS

    SETTINGS.update({"sync": False})
    # ultralytics checks AMP on CUDA by downloading yolo11n.pt (urllib, then curl, with retries): offline
    # that stalls. The trainer calls the name it imported, so replacing it there disables only that.
    trainer.check_amp = amp_without_download
    return ultralytics


def amp_without_download(model) -> bool:
    """Mixed precision on CUDA, full precision elsewhere, without ultralytics' download-based check."""
    device = next(model.parameters()).device
    if device.type != "cuda":
        return False
    log.info("AMP on %s without ultralytics' yolo11n.pt check (offline); set amp=false if losses turn NaN", device)
    return True


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
    for image_id, source, boxes in zip(table["image_id"], table["image_path"], table["boxes_norm"]):
        image = out_dir / "images" / f"{image_id}.png"
        _link_or_copy(Path(source), image)
        label = out_dir / "labels" / f"{image_id}.txt"
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
