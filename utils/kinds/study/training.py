"""Model kind "study": the study-level classifier (negative / typical / indeterminate / atypical, plus
the image-level "none"), optionally with the auxiliary opacity segmentation head, EMA and TTA views; one
model per fold, trunk initialised from the NIH backbone.

    python train/train_kind.py --kind study --prepared runs/prepared/meta.csv --out runs/study
        [--config train/configs/full.yaml] [--set backbone=runs/backbone/best.pt folds=[0,1]]
        [--weights-dir runs/weights] [--resume]

Writes to --out: config.yaml, fold<k>/ (engine run folder: last.pt, best.pt, metrics.csv,
loss_curve.png), oof_predictions.csv (every image of each trained fold, shared prediction schema),
oof_scores.json / oof_scores.txt (study mAP, none AP, per-class AP with the competition metric).
The held-out fold is predicted through the config's ``tta_views`` (:mod:`utils.kinds.study.tta`), as at
test time. Registers each fold's best weights as model "study" in --weights-dir/manifest.json."""

from __future__ import annotations

import logging
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd

from utils.core.config import ConfigError
from utils.core.files import write_json_atomic, write_text_atomic
from utils.data.datasets import StudyDataset
from utils.data.labels import STUDY_CLASSES
from utils.data.predictions import classifier_rows, write_predictions
from utils.data.presets import build_transform
from utils.kinds.base import FoldResult, RunOptions, StagePlan, TorchKind
from utils.kinds.study.config import StudyConfig
from utils.kinds.study.distillation import add_teacher_targets, read_teacher
from utils.kinds.study.member import StudyMember
from utils.kinds.study.network import StudyClassifier
from utils.kinds.study.tta import StudyTTA
from utils.nets.models import PRETRAINED_NONE, check_trunk_file
from utils.scoring.classification import study_accuracy, study_classifier_scores
from utils.scoring.detection import read_detection_table
from utils.scoring.metric import format_score_table
from utils.training.loop import LAST_EPOCH

log = logging.getLogger(__name__)


def load_study_table(meta_csv, image_size: int, with_boxes: bool = False) -> pd.DataFrame:
    """meta.csv (see :func:`utils.data.training_table.read_meta`, pseudo-labelled rows included) with the targets per
    image: the study class and "none"; where the table has pseudo-labelled rows, every row also gets
    ``study_probs`` (their soft study target, a real label's one-hot) and theirs a soft "none".
    ``with_boxes`` adds the boxes (XYXY_NORM, drawn into the auxiliary head's mask by the dataset) and
    ``mask_valid``: 0 where the boxes are unknown (an un-annotated duplicate, a pseudo-labelled image
    whose boxes were not confident enough to be a label)."""
    table = read_detection_table(meta_csv, image_size, image_size, pseudo=True)
    pseudo = table["pseudo"].to_numpy(dtype=bool)
    table["targets"] = [{"study": int(label), "none": float(n == 0)}
                        for label, n in zip(table["study_label"], table["n_boxes"].astype(int))]
    if pseudo.any():
        for target, row in zip(table["targets"], table.itertuples(index=False)):
            if row.pseudo:
                target.update(study=int(np.argmax(row.pseudo_study)), study_probs=row.pseudo_study,
                              none=float(row.pseudo_none))
            else:
                target["study_probs"] = np.eye(len(STUDY_CLASSES))[target["study"]]
    if with_boxes:
        boxes_known = table["pseudo_boxes"].to_numpy(dtype=bool) if pseudo.any() else pseudo
        known = table["used"].to_numpy(dtype=bool) & (~pseudo | boxes_known)
        for target, boxes, valid in zip(table["targets"], table["boxes_norm"], known):
            target.update(boxes=boxes, mask_valid=float(valid))
    return table


class StudyKind(TorchKind):
    name = "study"
    member_class = StudyMember
    trunk_from_backbone = True
    config_class = StudyConfig
    title = "study classifier"

    def load_table(self, meta_csv, config: StudyConfig) -> pd.DataFrame:
        """The study table; with a ``teacher``, its labelled images' targets mixed with the teacher's
        probabilities (:mod:`utils.kinds.study.distillation`)."""
        table = load_study_table(meta_csv, config.image_size, with_boxes=config.seg_weight > 0)
        if config.teacher is not None:
            try:
                add_teacher_targets(table, read_teacher(config.teacher), config.distill_weight,
                                    config.distill_temperature, source=f"teacher {config.teacher}")
            except ValueError as err:  # PredictionFileError included: one line naming the file
                raise ConfigError(f"study.teacher: {err}") from None
        return table

    def toy_overrides(self) -> list[str]:
        return ["image_size=64", "epochs=1", "batch_size=8", "workers=0"]

    def speed_run_overrides(self, smoke: bool) -> list[str]:
        return super().speed_run_overrides(smoke) + (["arch=resnet18"] if smoke else [])

    def check_files(self, config: StudyConfig, plan: StagePlan) -> None:
        if config.teacher is not None and not Path(config.teacher).is_file():
            raise FileNotFoundError(f"teacher: {config.teacher} not found (a predictions CSV, e.g. an earlier run's "
                                    "oof_predictions.csv)")
        if plan.nih_dir is None:  # without the NIH stage the trunk starts from what the config names
            check_trunk_file("backbone", config.arch, config.backbone)

    def untrained_model(self, config: StudyConfig) -> StudyClassifier:
        return StudyClassifier.from_config(asdict(config), PRETRAINED_NONE)

    def build_model(self, config: StudyConfig) -> StudyClassifier:
        return StudyClassifier.from_config(vars(config), config.backbone)

    def _dataset(self, frame: pd.DataFrame, preset: str, config: StudyConfig) -> StudyDataset:
        return StudyDataset(frame["image_path"], frame["targets"], build_transform(preset, config.image_size),
                            seed=config.seed)

    def datasets(self, train, val, config):
        return self._dataset(train, "study_train", config), self._dataset(val, "study_eval", config)

    def held_out_dataset(self, held_out, config):
        return self._dataset(held_out, "study_eval", config)

    def prediction_model(self, model, config: StudyConfig):
        return StudyTTA(model, config.tta_views)

    def rows(self, frame: pd.DataFrame, fold: int, outputs: dict) -> pd.DataFrame:
        study_probs, none_probs = StudyClassifier.probabilities(outputs)
        return classifier_rows(frame["image_id"], frame["study_id"], self.name, fold, study_probs, none_probs)

    def val_scores(self, predictions, val) -> dict[str, float]:
        scores = study_classifier_scores(predictions, val)
        return {"study_map": scores["study_map"], "none_ap": scores["none_ap"],
                "study_accuracy": study_accuracy(predictions, val)}

    def monitor(self, config: StudyConfig) -> tuple[str, str]:
        return {"last": (LAST_EPOCH, "max"), "study_map": ("val_study_map", "max")}.get(config.monitor,
                                                                                       ("val_loss", "min"))

    def write_report(self, oof: pd.DataFrame, table: pd.DataFrame, out) -> dict:
        """oof_predictions.csv and the competition-metric scores of those predictions (json + table)."""
        write_predictions(oof, out / "oof_predictions.csv")
        scores = study_classifier_scores(oof, table)
        scores["study_accuracy"] = study_accuracy(oof, table)
        scores["per_fold"] = {int(fold): study_classifier_scores(part, table)["study_map"]
                              for fold, part in oof.groupby("fold")}
        write_json_atomic(out / "oof_scores.json", scores)
        text = format_score_table(scores)
        text += f"\nnone AP {scores['none_ap']:.4f}" if scores["none_ap"] is not None else ""
        text += f"\nstudy accuracy {scores['study_accuracy']:.4f}\n"
        write_text_atomic(out / "oof_scores.txt", text)
        log.info("out-of-fold scores (%s):\n%s", out / "oof_scores.json", text)
        return scores


KIND = StudyKind()
__all__ = ["KIND", "FoldResult", "RunOptions", "StudyConfig", "StudyMember", "load_study_table"]
