"""A training run evaluated out of fold: every stage's out-of-fold predictions read back and combined by the
ensemble's own code, submissions built as at test time and scored with the competition metric beside
the trivial baselines, the report (JSON, markdown) and its plots (precision-recall, loss curves);
``python infer/evaluate.py`` writes it."""

from __future__ import annotations

import json
import logging
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd

from utils.core.kind_names import kind_names
from utils.core.report import figure, markdown_table, show
from utils.data.boxes import as_boxes
from utils.data.labels import IMAGE_CLASSES, IMAGE_SUFFIX, STUDY_CLASSES, STUDY_SUFFIX
from utils.data.predictions import BOX_COLUMNS, NONE_PROB_COLUMN, STUDY_PROB_COLUMNS, read_predictions
from utils.data.training_table import read_meta
from utils.ensemble.assemble import assemble_submission
from utils.ensemble.config import EnsembleConfig
from utils.ensemble.fusion import (
    CombinedImage,
    ImagePrediction,
    MemberOutputs,
    MemberPrediction,
    add_member_prediction,
    combine_images,
)
from utils.scoring.baselines import baseline_rows
from utils.scoring.classification import study_classifier_scores
from utils.scoring.detection import box_submission, detector_scores
from utils.scoring.metric import class_detections, ground_truth_from_table, precision_recall, score

log = logging.getLogger("evaluate")

STAGE_FOLDERS = kind_names()  # each kind's run folder under the run


def load_oof(run_dir: Path) -> dict[str, pd.DataFrame]:
    """Model name -> its out-of-fold predictions, for every stage folder that has them."""
    oof = {}
    for folder in STAGE_FOLDERS:
        path = run_dir / folder / "oof_predictions.csv"
        if path.is_file():
            frame = read_predictions(path)
            for name, part in frame.groupby("model"):
                oof[str(name)] = part
    return oof


def evaluated_rows(table: pd.DataFrame, oof: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """The prepared rows of the folds that every model predicted out of fold."""
    folds = set(table["fold"].astype(int))
    for frame in oof.values():
        folds &= set(frame["fold"].astype(int))
    if not folds:
        raise ValueError("no fold was predicted out of fold by every model")
    return table[table["fold"].astype(int).isin(folds)]


def run_oof(run_dir: Path) -> tuple[pd.DataFrame, dict[str, pd.DataFrame], pd.DataFrame]:
    """``(prepared table, model name -> out-of-fold predictions, the table's rows every model
    predicted)`` of a train_all run; real labels only (:func:`utils.data.training_table.read_meta` leaves
    pseudo-labelled rows out). ``FileNotFoundError`` when no model has out-of-fold predictions."""
    table = read_meta(run_dir / "prepared" / "meta.csv", 0)
    oof = load_oof(run_dir)
    if not oof:
        raise FileNotFoundError(f"{run_dir}: no out-of-fold predictions under {', '.join(STAGE_FOLDERS)}/")
    return table, oof, evaluated_rows(table, oof)


def oof_member_outputs(oof: dict[str, pd.DataFrame], rows: pd.DataFrame) -> list[MemberOutputs]:
    """Per image of ``rows``, what each model said about it out of fold, as the predictor collects it at
    test time (each model's :class:`~utils.ensemble.fusion.MemberPrediction` merged by the same function): one box
    source per detector (empty when it found nothing), and each classifier's probabilities."""
    outputs = [MemberOutputs() for _ in range(len(rows))]
    for name, frame in oof.items():
        add_member_prediction(outputs, name, oof_member_prediction(frame, rows["image_id"]))
    return outputs


def oof_member_prediction(frame: pd.DataFrame, image_ids: pd.Series) -> MemberPrediction:
    """One model's out-of-fold prediction rows as the :class:`~utils.ensemble.fusion.MemberPrediction` of the
    images ``image_ids``: a classifier's probabilities (NaN for an image it did not predict) when its
    rows have a none probability, else a detector's boxes."""
    probs = frame.dropna(subset=[NONE_PROB_COLUMN])
    if len(probs):
        table = probs.groupby("image_id")[[*STUDY_PROB_COLUMNS, NONE_PROB_COLUMN]].mean().reindex(image_ids)
        values = table.to_numpy(dtype=np.float64)
        return MemberPrediction(study_probs=values[:, :-1], none_probs=values[:, -1])
    boxes = frame.dropna(subset=list(BOX_COLUMNS))
    by_image = {k: (g[list(BOX_COLUMNS)].to_numpy(), g["score"].to_numpy()) for k, g in boxes.groupby("image_id")}
    empty = (as_boxes([]), np.zeros(0))
    return MemberPrediction(boxes=[[by_image.get(image_id, empty)] for image_id in image_ids])


def image_predictions(rows: pd.DataFrame, combined: list[CombinedImage]) -> list[ImagePrediction]:
    """The predictor's :class:`ImagePrediction` of each image of ``rows`` from its combined outputs."""
    return [ImagePrediction(row.image_id, row.study_id, int(row.original_height), int(row.original_width),
                            found.boxes, found.scores, found.study_probs, found.none_prob)
            for row, found in zip(rows.itertuples(index=False), combined)]


def fused_predictions(oof: dict[str, pd.DataFrame], rows: pd.DataFrame,
                      config: EnsembleConfig) -> list[ImagePrediction]:
    """One :class:`ImagePrediction` per image of ``rows``, combined from the out-of-fold predictions by
    :func:`utils.ensemble.fusion.combine_image`, as the predictor combines its test predictions."""
    return image_predictions(rows, combine_images(oof_member_outputs(oof, rows), config))


def submission_ids(rows: pd.DataFrame) -> pd.DataFrame:
    studies = [f"{s}{STUDY_SUFFIX}" for s in rows["study_id"].drop_duplicates()]
    return pd.DataFrame({"id": studies + [f"{i}{IMAGE_SUFFIX}" for i in rows["image_id"]]})


def evaluate_run(run_dir: Path, config: EnsembleConfig) -> tuple[dict, dict, dict]:
    """``(report, submissions, truth)``: the scores, each scored submission table and the truth they
    were scored against (for the curves)."""
    table, oof, rows = run_oof(run_dir)
    truth = ground_truth_from_table(rows)
    sample = submission_ids(rows)
    report = {"folds": sorted(int(f) for f in rows["fold"].unique()), "n_studies": int(rows["study_id"].nunique()),
              "n_images": int(len(rows)), "ensemble_config": asdict(config), "models": {}}
    backbone = run_dir / "backbone" / "eval_test.json"
    if backbone.is_file():
        report["backbone"] = {"mean_auc": json.loads(backbone.read_text()).get("mean_auc")}
    submissions = {}
    for name, frame in oof.items():
        frame = frame[frame["image_id"].isin(set(rows["image_id"]))]
        if frame[NONE_PROB_COLUMN].notna().any():
            scores = study_classifier_scores(frame, rows)
            report["models"][name] = {"study_map": scores["study_map"], "none_ap": scores["none_ap"],
                                      "ap": scores["ap"]}
        else:
            scores = detector_scores(frame, rows)
            report["models"][name] = {"opacity_ap": scores["opacity_ap"]}
            submissions[name] = box_submission(frame, rows[rows["used"].astype(bool)])
    predictions = fused_predictions(oof, rows, config)
    submissions["ensemble"] = assemble_submission(predictions, sample, config)
    report["ensemble"] = score(submissions["ensemble"], truth)
    sizes = {r.image_id: (r.original_width, r.original_height) for r in rows.itertuples(index=False)}
    for kind, label in (("prior", "baseline_prior"), ("prior-boxes", "baseline_prior_fixed_boxes")):
        submissions[label] = baseline_rows(sample["id"], sizes, table, kind)  # priors of the whole training set
        report[label] = score(submissions[label], truth)
    return report, submissions, truth


def markdown_report(report: dict) -> str:
    lines = ["# Cross-validation report\n",
             f"Folds {report['folds']}: {report['n_studies']} studies, {report['n_images']} images "
             "(out-of-fold predictions; the ensemble fused without test-time flips).\n"]
    if "backbone" in report:
        lines.append(f"NIH backbone: mean test AUC over the 14 findings {show(report['backbone']['mean_auc'], 3)}.\n")
    lines += markdown_table(("model", "study mAP", "none AP", "opacity AP"),
                            [(name, *(m.get(key) for key in ("study_map", "none_ap", "opacity_ap")))
                             for name, m in report["models"].items()], numeric_from=1)
    classes = (*STUDY_CLASSES, *IMAGE_CLASSES)
    header = ("submission", "study mAP", "image mAP", "**final mAP**", *(f"{c} AP" for c in classes))
    lines += ["", *markdown_table(header,
                                  [(label, report[label]["study_map"], report[label]["image_map"],
                                    f"**{show(report[label]['map'], 3)}**", *(report[label]["ap"][c] for c in classes))
                                   for label in ("ensemble", "baseline_prior", "baseline_prior_fixed_boxes")],
                                  numeric_from=1)]
    return "\n".join(lines) + "\n"


def plot_pr_curves(submissions: dict, truth: dict, path: Path) -> None:
    """Opacity precision-recall per detector and for the ensemble; the ensemble's study classes and none."""
    with figure(1, 2, figsize=(11, 4.5), dpi=110, path=path) as (_, (left, right)):
        _draw_pr_curves(left, right, submissions, truth)


def _draw_pr_curves(left, right, submissions: dict, truth: dict) -> None:
    for name, submission in submissions.items():
        if name.startswith("baseline") and name != "baseline_prior_fixed_boxes":
            continue
        curve = precision_recall(class_detections(submission, truth)["opacity"])
        if curve is not None and len(curve[0]):
            left.plot(curve[0], curve[1], label=name)
    left.set(title="opacity (IoU > 0.5)", xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02))
    left.legend()
    per_class = class_detections(submissions["ensemble"], truth)
    for name in (*STUDY_CLASSES, "none"):
        curve = precision_recall(per_class[name])
        if curve is not None and len(curve[0]):
            right.plot(curve[0], curve[1], label=name)
    right.set(title="ensemble: study classes and none", xlabel="recall", xlim=(0, 1), ylim=(0, 1.02))
    right.legend()


def plot_loss_curves(run_dir: Path, path: Path) -> bool:
    """Training and validation loss per epoch of every stage's runs (one panel per stage, a line per
    fold); False when no run has a metrics.csv yet."""
    runs = {}
    for stage in ("backbone", *STAGE_FOLDERS):
        files = sorted((run_dir / stage).glob("fold*/metrics.csv")) or sorted((run_dir / stage).glob("metrics.csv"))
        if files:
            runs[stage] = files
    if not runs:
        return False
    with figure(1, len(runs), figsize=(4.2 * len(runs), 3.6), squeeze=False, dpi=110, path=path) as (_, axes):
        for axis, (stage, files) in zip(axes[0], runs.items()):
            for k, file in enumerate(files):
                history = pd.read_csv(file)
                label = file.parent.name if file.parent.name.startswith("fold") else ""
                for column, style in (("train_loss", "-"), ("val_loss", "--")):
                    if column in history and history[column].notna().any():
                        axis.plot(history["epoch"], history[column], style, color=f"C{k}",
                                  label=f"{label} {column.split('_')[0]}".strip())
            axis.set(title=stage, xlabel="epoch", ylabel="loss")
            axis.legend(fontsize=7)
    return True
