"""The ensemble's settings chosen out of fold: the search over fusion weights, score powers and the none
blending on one half of the patients, scored on the other half (and the reverse) beside the baselines,
and the report; ``python infer/calibrate.py`` runs it and writes the chosen settings into the manifest."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Annotated

import numpy as np
import pandas as pd
from pydantic import Field

from utils.core.config import Fraction, Seed
from utils.core.report import markdown_table, show
from utils.data.labels import IMAGE_CLASSES, STUDY_CLASSES
from utils.ensemble.assemble import assemble_submission
from utils.ensemble.config import WBF_CONF_TYPES, EnsembleConfig
from utils.ensemble.fusion import MemberOutputs, combine_image, fuse_detectors
from utils.scoring.baselines import baseline_rows
from utils.scoring.evaluation import image_predictions, oof_member_outputs, run_oof, submission_ids
from utils.scoring.metric import best_f1_threshold, class_detections, ground_truth_from_table, score

log = logging.getLogger("calibrate")

# The values each setting may take; a member's weight is relative to the best member of its kind (1).
SEARCH_GRID = {
    "model_weights": (0.0, 0.25, 0.5, 1.0, 2.0),
    "score_powers": (0.5, 0.75, 1.0, 1.5, 2.0, 3.0),
    "wbf_iou_thr": (0.4, 0.5, 0.55, 0.6, 0.7),
    "wbf_skip_box_thr": (0.0, 0.001, 0.01, 0.05, 0.1),
    "wbf_conf_type": WBF_CONF_TYPES,
    "box_none_power": (0.0, 0.1, 0.25, 0.5, 1.0),
    "none_classifier_weight": (0.0, 0.25, 0.5, 1.0, 2.0),
    "none_study_weight": (0.0, 0.25, 0.5, 1.0, 2.0),
    "none_boxes_weight": (0.0, 0.25, 0.5, 1.0, 2.0),
    "negative_classifier_weight": (0.0, 0.25, 0.5, 1.0, 2.0),
    "negative_boxes_weight": (0.0, 0.25, 0.5, 1.0, 2.0),
}
CLASSES = (*STUDY_CLASSES, *IMAGE_CLASSES)
# Equal APs differ by this much when only the arithmetic differs (a score power keeps the ranking but not the
# last bits of the sums): "at least" means at least, up to this.
FLOAT_TOLERANCE = 1e-6

CALIBRATE_SECTION = "calibrate"  # the calibration's section in a config file


@dataclass
class CalibrateConfig:
    """The ``calibrate`` section: infer/calibrate.py's search of the ensemble settings out of fold (the
    ``train_all`` stage after the CV report)."""

    enabled: bool = True
    """Run the stage (it needs out-of-fold predictions)."""
    seed: Seed = 0
    """Seeds the patient halves of a single held-out fold."""
    passes: Annotated[int, Field(ge=1, le=100)] = 2
    """Coordinate-search passes over every setting (stops early when one changes nothing)."""
    min_gain: Fraction = 0.001
    """Final mAP a change must add on the choosing part to be taken."""
    min_images: Annotated[int, Field(ge=0, le=10_000_000)] = 200
    """Fewer out-of-fold images than this: the search is reported but the config's settings are kept (on a
    few dozen images one image moves an AP by points, and the choice would follow the noise)."""



@dataclass
class Part:
    """Some of the out-of-fold images with everything needed to score settings on them."""

    rows: pd.DataFrame
    outputs: list[MemberOutputs]
    truth: dict
    sample: pd.DataFrame
    fused: dict = field(default_factory=dict)  # fusion key -> fused boxes of each image (see fusion_key)

    @property
    def image_ids(self) -> set[str]:
        return set(self.rows["image_id"])


def make_part(rows: pd.DataFrame, outputs_by_image: dict[str, MemberOutputs]) -> Part:
    return Part(rows, [outputs_by_image[i] for i in rows["image_id"]], ground_truth_from_table(rows),
                submission_ids(rows))


def detector_names(outputs: list[MemberOutputs]) -> list[str]:
    return sorted({name for o in outputs for name in o.boxes})


def classifier_names(outputs: list[MemberOutputs]) -> list[str]:
    return sorted({name for o in outputs for name in o.classifiers})


def fusion_key(config: EnsembleConfig, detectors: list[str]) -> tuple:
    """What the fused boxes depend on: the detectors kept with their weights and powers, and the fusion's
    settings only when two or more are kept (a single detector passes through)."""
    kept = tuple((name, config.model_weights.get(name, 1.0), config.score_powers.get(name, 1.0))
                 for name in detectors if config.model_weights.get(name, 1.0) > 0)
    fusion = (config.wbf_iou_thr, config.wbf_conf_type) if len(kept) > 1 else ()
    return kept, fusion, config.wbf_skip_box_thr, config.member_wbf_iou_thr


def part_submission(part: Part, config: EnsembleConfig) -> pd.DataFrame:
    """The part's submission under ``config`` through :func:`utils.ensemble.fusion.combine_image` (the fused boxes
    cached per :func:`fusion_key`: most steps of the search change only the blending)."""
    key = fusion_key(config, detector_names(part.outputs))
    if key not in part.fused:
        part.fused[key] = [fuse_detectors(o, config) for o in part.outputs]
    combined = [combine_image(o, config, fused) for o, fused in zip(part.outputs, part.fused[key])]
    return assemble_submission(image_predictions(part.rows, combined), part.sample, config)


def part_score(part: Part, config: EnsembleConfig) -> dict:
    return score(part_submission(part, config), part.truth)


def alone(config: EnsembleConfig, keep: list[str], members: list[str], has_classifier: bool) -> EnsembleConfig:
    """``config`` with only the models of ``keep`` (the others weight 0) and no blending beyond them:
    image none and study negative from the classifier when one is kept, else from the boxes."""
    return replace(config, model_weights={name: (1.0 if name in keep else 0.0) for name in members},
                   score_powers={}, box_none_power=0.0, none_classifier_weight=1.0, none_study_weight=0.0,
                   none_boxes_weight=0.0 if has_classifier else 1.0, negative_classifier_weight=1.0,
                   negative_boxes_weight=0.0 if has_classifier else 1.0)


@dataclass
class Members:
    """The part's models by kind and the best of each (by opacity AP, study mAP)."""

    detectors: list[str]
    classifiers: list[str]
    best_detector: str | None
    best_classifier: str | None
    alone: dict  # name -> its settings alone
    none_from_boxes: bool = False  # the best detector's boxes say "none" better than the best classifier
    negative_from_boxes: bool = False  # and "negative"

    @property
    def all(self) -> list[str]:
        return [*self.detectors, *self.classifiers]

    def best(self, config: EnsembleConfig) -> EnsembleConfig:
        """The best members, unblended: the best detector's boxes, the best classifier's study
        probabilities, and the image none and study negative each from whichever of the two says it
        better alone."""
        keep = [n for n in (self.best_detector, self.best_classifier) if n is not None]
        settings = alone(config, keep, self.all, self.best_classifier is not None)
        if self.none_from_boxes:
            settings = replace(settings, none_classifier_weight=0.0, none_boxes_weight=1.0)
        if self.negative_from_boxes:
            settings = replace(settings, negative_classifier_weight=0.0, negative_boxes_weight=1.0)
        return settings


def rank_members(part: Part, config: EnsembleConfig) -> tuple[Members, dict]:
    """Each model alone scored on ``part`` and the best of each kind."""
    detectors, classifiers = detector_names(part.outputs), classifier_names(part.outputs)
    everyone = [*detectors, *classifiers]
    settings = {name: alone(config, [name], everyone, name in classifiers) for name in everyone}
    scores = {name: part_score(part, s) for name, s in settings.items()}

    def best_of(names, key):
        values = {n: (scores[n][key] if key == "study_map" else scores[n]["ap"][key]) or 0.0 for n in names}
        return max(names, key=lambda n: (values[n], n)) if names else None

    members = Members(detectors, classifiers, best_of(detectors, "opacity"), best_of(classifiers, "study_map"),
                      settings)
    if members.best_detector and members.best_classifier:
        boxes, classifier = scores[members.best_detector]["ap"], scores[members.best_classifier]["ap"]
        members.none_from_boxes = (boxes["none"] or 0.0) > (classifier["none"] or 0.0)
        members.negative_from_boxes = (boxes["negative"] or 0.0) > (classifier["negative"] or 0.0)
    return members, scores


def coordinates(members: Members) -> list[tuple[tuple[str, str | None], tuple]]:
    """Every setting the search moves, with its grid: ``((key, model name or None), values)``. The best
    member of each kind keeps weight 1 (weights are relative)."""
    others = [n for n in members.all if n not in (members.best_detector, members.best_classifier)]
    # A detector joins the fusion only under some confidence type, so its weight moves with the type: the
    # two in one step (a weak detector that only an unweighted 'avg' dilutes still gets its chance).
    with_type = tuple((w, conf) for w in SEARCH_GRID["model_weights"] for conf in (WBF_CONF_TYPES if w else ("avg",)))
    items = [(("model_weights", n), with_type if n in members.detectors else SEARCH_GRID["model_weights"])
             for n in others]
    items += [(("score_powers", n), SEARCH_GRID["score_powers"]) for n in members.detectors]
    if len(members.detectors) > 1:
        items += [((k, None), SEARCH_GRID[k]) for k in ("wbf_iou_thr", "wbf_conf_type")]
    if members.detectors:
        items.append((("wbf_skip_box_thr", None), SEARCH_GRID["wbf_skip_box_thr"]))
    if members.classifiers and members.detectors:
        items += [((k, None), SEARCH_GRID[k]) for k in ("box_none_power", "none_classifier_weight", "none_study_weight",
                                                         "none_boxes_weight", "negative_classifier_weight",
                                                         "negative_boxes_weight")]
    elif members.classifiers:
        items.append((("none_study_weight", None), SEARCH_GRID["none_study_weight"]))
    return items


def with_value(config: EnsembleConfig, key: tuple[str, str | None], value) -> EnsembleConfig:
    """``config`` with the setting ``key`` at ``value`` (a detector's weight comes with the fusion's
    confidence type: ``(weight, conf_type)``)."""
    name, model = key
    if model is None:
        return replace(config, **{name: value})
    if isinstance(value, tuple):
        value, conf_type = value
        config = replace(config, wbf_conf_type=conf_type)
    return replace(config, **{name: {**getattr(config, name), model: value}})


def current_value(config: EnsembleConfig, key: tuple[str, str | None], like=None):
    name, model = key
    value = getattr(config, name) if model is None else getattr(config, name).get(model, 1.0)
    return (value, config.wbf_conf_type) if isinstance(like, tuple) else value


@dataclass
class SearchResult:
    config: EnsembleConfig
    scores: dict  # on the choosing part
    members: Members
    start: str  # "best members" or "config"
    changes: list  # (setting, value, final mAP) of each step taken
    opacity_floor: float | None  # the best single detector's opacity AP on the choosing part
    evaluations: int = 0
    tried: list = field(default_factory=list)  # (setting, value, opacity AP, final mAP, taken) of every step

    @property
    def is_best_members(self) -> bool:
        return self.start == "best members" and not self.changes


def search(part: Part, config: EnsembleConfig, calibrate: CalibrateConfig, progress: bool = True) -> SearchResult:
    """The coordinate search on ``part`` (see the module docstring)."""
    from tqdm import tqdm

    members, alone_scores = rank_members(part, config)
    floor = (alone_scores[members.best_detector]["ap"]["opacity"] or 0.0) if members.best_detector else None

    def admissible(result: dict) -> bool:
        return floor is None or (result["ap"]["opacity"] or 0.0) >= floor - FLOAT_TOLERANCE

    starts = {"best members": members.best(config), "config": config}
    scored = {label: part_score(part, s) for label, s in starts.items()}
    start = max((label for label in starts if admissible(scored[label])),
                key=lambda label: scored[label]["map"], default="best members")
    current, best = starts[start], scored[start]
    changes, evaluations, tried = [], len(alone_scores) + 2, []
    grid = coordinates(members)
    with tqdm(total=calibrate.passes * sum(len(v) for _, v in grid), desc="calibrate", unit="setting",
              disable=not progress, leave=False) as bar:
        for _ in range(calibrate.passes):
            changed = False
            for key, values in grid:
                for value in values:
                    bar.update(1)
                    if value == current_value(current, key, value):
                        continue
                    candidate = with_value(current, key, value)
                    result = part_score(part, candidate)
                    evaluations += 1
                    setting = f"{key[0]}[{key[1]}]" if key[1] else key[0]
                    taken = admissible(result) and result["map"] > best["map"] + calibrate.min_gain
                    tried.append((setting, value, result["ap"]["opacity"], result["map"], taken))
                    if taken:
                        current, best, changed = candidate, result, True
                        changes.append((setting, value, result["map"]))
            if not changed:
                break
    return SearchResult(current, best, members, start, changes, floor, evaluations, tried)


def calibration_splits(rows: pd.DataFrame, seed: int) -> list[tuple[str, pd.DataFrame, pd.DataFrame]]:
    """``(name, choosing rows, reporting rows)``: each fold against the others when the rows hold several
    folds, else the patients (studies without a patient id) in two seeded halves, both ways."""
    folds = sorted(int(f) for f in rows["fold"].unique())
    if len(folds) > 1:
        return [(f"fold {f}", rows[rows["fold"].astype(int) != f], rows[rows["fold"].astype(int) == f])
                for f in folds]
    group = rows["patient_id"] if "patient_id" in rows else rows["study_id"]
    group = group.fillna(rows["study_id"]).astype(str)
    patients = np.array(sorted(group.unique()))
    np.random.default_rng(seed).shuffle(patients)
    first = set(patients[: len(patients) // 2])
    in_first = group.isin(first).to_numpy()
    a, b = rows[in_first], rows[~in_first]
    return [("half A -> half B", a, b), ("half B -> half A", b, a)]


def baselines(part: Part, table: pd.DataFrame) -> dict[str, dict]:
    sizes = {r.image_id: (r.original_width, r.original_height) for r in part.rows.itertuples(index=False)}
    return {label: score(baseline_rows(part.sample["id"], sizes, table, kind), part.truth)
            for kind, label in (("prior", "baseline: class prior"), ("prior-boxes", "baseline: prior + fixed boxes"))}


def report_rows(part: Part, config: EnsembleConfig, chosen: EnsembleConfig, members: Members,
                table: pd.DataFrame) -> dict[str, dict]:
    """Every row of a reporting part's table: each member alone, the best members, the config's settings,
    the chosen settings, the baselines."""
    rows = {f"{name} alone": part_score(part, s) for name, s in members.alone.items()}
    rows["best members (unblended)"] = part_score(part, members.best(config))
    rows["config's settings"] = part_score(part, config)
    rows["chosen"] = part_score(part, chosen)
    rows.update(baselines(part, table))
    return rows


def guarantee(rows: dict[str, dict], members: Members) -> dict:
    """Whether the chosen settings kept the promise on a reporting part: opacity AP at least the best
    single detector's, final mAP at least every member's and the best members'."""
    chosen = rows["chosen"]
    detector_best = max([(rows[f"{n} alone"]["ap"]["opacity"] or 0.0) for n in members.detectors], default=None)
    member_best = max([rows[f"{n} alone"]["map"] for n in members.all] + [rows["best members (unblended)"]["map"]])
    opacity_held = detector_best is None or (chosen["ap"]["opacity"] or 0.0) >= detector_best - FLOAT_TOLERANCE
    return {"opacity_held": bool(opacity_held), "map_held": bool(chosen["map"] >= member_best - FLOAT_TOLERANCE),
            "best_detector_opacity": detector_best, "best_member_map": member_best}


def mean_scores(parts: list[dict[str, dict]]) -> dict[str, dict]:
    """Per row label, the mean over ``parts`` of each AP and mAP (a class without truth in a part is
    left out of that class's mean)."""

    def mean(values):
        values = [v for v in values if v is not None]
        return float(np.mean(values)) if values else None

    return {label: {"map": mean([p[label]["map"] for p in parts]),
                    "study_map": mean([p[label]["study_map"] for p in parts]),
                    "image_map": mean([p[label]["image_map"] for p in parts]),
                    "ap": {c: mean([p[label]["ap"][c] for p in parts]) for c in CLASSES}}
            for label in parts[0]}


def settings_summary(config: EnsembleConfig) -> dict:
    keys = ("model_weights", "score_powers", "wbf_iou_thr", "wbf_skip_box_thr", "wbf_conf_type", "box_none_power",
            "none_classifier_weight", "none_study_weight", "none_boxes_weight", "negative_classifier_weight",
            "negative_boxes_weight", "display_threshold")
    return {k: getattr(config, k) for k in keys}


def calibrate_run(run_dir: Path, config: EnsembleConfig, calibrate: CalibrateConfig,
                  progress: bool = True) -> tuple[EnsembleConfig, dict]:
    """``(settings to deploy, report)`` of a run's out-of-fold predictions (see the module docstring)."""
    table, oof, rows = run_oof(run_dir)
    outputs = dict(zip(rows["image_id"], oof_member_outputs(oof, rows)))
    report = {"folds": sorted(int(f) for f in rows["fold"].unique()), "n_images": int(len(rows)),
              "seed": calibrate.seed, "grid": {k: list(v) for k, v in SEARCH_GRID.items()}, "splits": []}
    for name, choosing, reporting in calibration_splits(rows, calibrate.seed):
        choose_part, report_part = make_part(choosing, outputs), make_part(reporting, outputs)
        if choose_part.image_ids & report_part.image_ids:
            raise AssertionError(f"{name}: the reporting part overlaps the choosing part")
        log.info("%s: choosing on %d images, reporting on %d", name, len(choosing), len(reporting))
        found = search(choose_part, config, calibrate, progress)
        members = found.members
        scored = report_rows(report_part, config, found.config, members, table)
        report["splits"].append({
            "name": name, "choosing_images": sorted(choose_part.image_ids), "reporting_images": sorted(
                report_part.image_ids), "start": found.start, "changes": found.changes,
            "evaluations": found.evaluations, "tried": found.tried, "chosen_on_choosing_part": found.scores["map"],
            "settings": settings_summary(found.config), "rows": scored, "guarantee": guarantee(scored, members)})
    # The parts' scores are averaged, not their predictions pooled: each part's settings put its scores on
    # their own scale, and one ranking across parts would mix the scales.
    report["mean_of_reporting_parts"] = mean_scores([s["rows"] for s in report["splits"]])
    everything = make_part(rows, outputs)
    log.info("searching the settings to deploy on all %d images", len(rows))
    final = search(everything, config, calibrate, progress)
    members = final.members
    held = all(s["guarantee"]["opacity_held"] and s["guarantee"]["map_held"] for s in report["splits"])
    if len(rows) < calibrate.min_images:
        deployed, report["deployed"] = config, "config's settings"
        report["deployed_reason"] = (f"only {len(rows)} out-of-fold images, fewer than min_images "
                                     f"{calibrate.min_images}: too few to choose on")
    elif not held:
        deployed, report["deployed"] = members.best(config), "best members"
        report["deployed_reason"] = "the search's settings lost to a member on a reporting part"
    elif final.is_best_members:
        deployed, report["deployed"] = final.config, "best members"
        report["deployed_reason"] = "the search found nothing better than the best members"
    else:
        deployed, report["deployed"] = final.config, "chosen"
        report["deployed_reason"] = "the search's settings kept the guarantee on every reporting part"
    report["final_search"] = {"start": final.start, "changes": final.changes, "evaluations": final.evaluations,
                              "map_on_all": final.scores["map"], "tried": final.tried}
    shown = best_f1_threshold(class_detections(part_submission(everything, deployed), everything.truth)["opacity"])
    report["display_threshold"] = shown
    if shown is not None and len(rows) >= calibrate.min_images:  # too few images: the config's stays too
        deployed = replace(deployed, display_threshold=round(shown["threshold"], 4))
    report["settings"] = settings_summary(deployed)
    return deployed, report


def _score_cells(result: dict) -> tuple:
    return (*(result["ap"][c] for c in CLASSES), result["study_map"], result["image_map"],
            f"**{show(result['map'], 3)}**")


def markdown_report(report: dict) -> str:
    header = ("settings", *(f"{c}" for c in CLASSES), "study mAP", "image mAP", "**final mAP**")
    lines = ["# Calibration of the ensemble (out of fold)\n",
             f"Folds {report['folds']}, {report['n_images']} images. Each table is scored on a reporting part "
             "that the search never saw; APs at IoU 0.5.\n"]
    lines += ["## Mean over the reporting parts (each under the settings chosen without it)\n",
              *markdown_table(header, [(label, *_score_cells(r))
                                       for label, r in report["mean_of_reporting_parts"].items()], numeric_from=1), ""]
    for split in report["splits"]:
        held = split["guarantee"]
        lines += [f"## {split['name']} ({len(split['choosing_images'])} images choose, "
                  f"{len(split['reporting_images'])} report)\n",
                  *markdown_table(header, [(label, *_score_cells(r)) for label, r in split["rows"].items()],
                                  numeric_from=1), "",
                  f"Started from {split['start']}; changes taken: "
                  + (", ".join(f"{k}={v} ({m:.3f})" for k, v, m in split["changes"]) or "none")
                  + f". Guarantee on the reporting part: opacity AP >= best detector's "
                  f"({show(held['best_detector_opacity'], 3)}): {'held' if held['opacity_held'] else 'NOT held'}; "
                  f"final mAP >= every member's ({show(held['best_member_map'], 3)}): "
                  f"{'held' if held['map_held'] else 'NOT held'}.\n"]
    shown = report["display_threshold"]
    lines += ["## Deployed settings\n",
              f"**{report['deployed']}** ({report['deployed_reason']}); searched on all images from "
              f"{report['final_search']['start']}, changes: "
              + (", ".join(f"{k}={v}" for k, v, _ in report["final_search"]["changes"]) or "none") + ".\n",
              "```json", json.dumps(report["settings"], indent=2), "```\n",
              "Display threshold (box score of best F1 out of fold; written above unless too few images): "
              + ("n/a" if shown is None else f"{shown['threshold']:.3f} (F1 {shown['f1']:.3f}, precision "
                 f"{shown['precision']:.3f}, recall {shown['recall']:.3f})") + "."]
    return "\n".join(lines) + "\n"
