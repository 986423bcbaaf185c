"""infer/calibrate.py: the ensemble's settings chosen out of fold, reported on images the choice never
saw, and carried by the manifest into the predictor; evaluate and the predictor combine alike."""

from __future__ import annotations

import json
from dataclasses import asdict

import numpy as np
import pandas as pd
import pytest

from infer import calibrate
from utils.data.labels import STUDY_CLASSES, boxes_from_json
from utils.data.predictions import classifier_rows, detection_rows, write_predictions
from utils.data.training_table import read_meta
from utils.ensemble.config import EnsembleConfig
from utils.scoring import calibration
from utils.scoring.calibration import CalibrateConfig
from utils.scoring.evaluation import evaluated_rows, fused_predictions, load_oof

QUICK = CalibrateConfig(passes=1, min_images=0)  # the constructed runs have a few dozen images


def constructed_meta(path, n_patients=150, n_folds=3, seed=0):
    """A prepared meta.csv of made-up radiographs (no pixels: the calibration reads predictions): patients
    with one or two studies of one or two images, opacities in the non-negative studies, patient folds."""
    rng = np.random.default_rng(seed)
    rows = []
    for patient in range(n_patients):
        for study in range(rng.integers(1, 3)):
            study_class = rng.choice(STUDY_CLASSES, p=[0.3, 0.4, 0.2, 0.1])
            for image in range(rng.integers(1, 3)):
                height, width = rng.integers(2000, 3000, 2)
                n_boxes = 0 if study_class == "negative" or rng.random() < 0.25 else rng.integers(1, 3)
                corner = rng.uniform(0.1, 0.5, (n_boxes, 2)) * [width, height]
                boxes = np.hstack([corner, corner + rng.uniform(0.15, 0.4, (n_boxes, 2)) * [width, height]])
                rows.append({"image_id": f"i{patient}_{study}_{image}", "study_id": f"s{patient}_{study}",
                             "series_id": f"r{patient}_{study}", "patient_id": f"p{patient}",
                             "original_height": height, "original_width": width, "fold": patient % n_folds,
                             "study_class": study_class, "study_label": STUDY_CLASSES.index(study_class),
                             "boxes": json.dumps(boxes.round(1).tolist()), "n_boxes": n_boxes,
                             "has_box": n_boxes > 0, "used": True, "excluded_reason": "",
                             "path_256": f"images_256/i{patient}_{study}_{image}.png"})
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def constructed_run(root, folds, seed=0):
    """A run folder whose out-of-fold predictions are made up from the truth of :func:`constructed_meta`:
    a good detector (the true boxes, jittered, scored high, plus one low-scored false box per image), a
    detector of pure noise and a classifier that leans towards the true class and says "none" less
    well than the good detector's boxes."""
    rng = np.random.default_rng(seed)
    table = read_meta(constructed_meta(root / "prepared" / "meta.csv", seed=seed), 0)
    rows = table[table["fold"].isin(folds)]
    good, noise = [], []
    for row in rows.itertuples(index=False):
        size = np.array([row.original_width, row.original_height] * 2, dtype=np.float64)
        truth = boxes_from_json(row.boxes) / size if isinstance(row.boxes, str) else np.zeros((0, 4))
        jittered = np.clip(truth + rng.normal(0, 0.01, truth.shape), 0, 1)
        false = np.array([[0.05, 0.05, 0.3, 0.3]]) + rng.uniform(0, 0.5, (1, 1))
        boxes = np.vstack([jittered, np.clip(false, 0, 1)])
        scores = np.concatenate([rng.uniform(0.6, 0.95, len(jittered)), rng.uniform(0.05, 0.5, 1)])
        good.append((boxes, scores))
        xs, ys = np.sort(rng.uniform(0, 1, (2, 3, 2)), axis=2)
        noise.append((np.stack([xs[:, 0], ys[:, 0], xs[:, 1], ys[:, 1]], axis=1), rng.uniform(0, 1, 3)))
    onehot = np.eye(len(STUDY_CLASSES))[[STUDY_CLASSES.index(c) for c in rows["study_class"]]]
    probs = 0.5 * onehot + 0.5 * rng.dirichlet(np.ones(len(STUDY_CLASSES)), len(rows))
    none = np.where(rows["has_box"].astype(bool), 0.35, 0.65) + rng.uniform(-0.3, 0.3, len(rows))
    for folder, frame in (
            ("frcnn", detection_rows(rows["image_id"], rows["study_id"], "good", 0, good)),
            ("yolo", detection_rows(rows["image_id"], rows["study_id"], "noise", 0, noise)),
            ("study", classifier_rows(rows["image_id"], rows["study_id"], "study", 0, probs, none))):
        (root / folder).mkdir()
        frame = frame.assign(fold=rows.set_index("image_id").loc[frame["image_id"], "fold"].to_numpy())
        write_predictions(frame, root / folder / "oof_predictions.csv")
    return root


@pytest.fixture(scope="module")
def one_fold_run(tmp_path_factory):
    return constructed_run(tmp_path_factory.mktemp("calibrate_one_fold"), [0])


def test_a_noise_detector_is_dropped_and_the_good_one_kept(one_fold_run):
    deployed, report = calibration.calibrate_run(one_fold_run, EnsembleConfig(), QUICK, progress=False)
    assert deployed.model_weights.get("noise", 1.0) <= 0.25 and deployed.model_weights.get("good", 1.0) == 1.0
    for part in [*(s["rows"] for s in report["splits"]), report["mean_of_reporting_parts"]]:
        good_alone = part["good alone"]["ap"]["opacity"]
        assert good_alone > part["noise alone"]["ap"]["opacity"] + 0.3  # the construction did what it says
        assert part["chosen"]["ap"]["opacity"] == pytest.approx(good_alone, abs=0.02)
        assert part["chosen"]["map"] >= part["best members (unblended)"]["map"] - 0.02
        assert part["config's settings"]["ap"]["opacity"] < good_alone - 0.05  # equal-weight WBF with noise loses
    mean = report["mean_of_reporting_parts"]["chosen"]["map"]
    assert mean == pytest.approx(np.mean([s["rows"]["chosen"]["map"] for s in report["splits"]]))
    assert 0.0 < deployed.display_threshold < 1.0


def test_the_reporting_part_is_never_the_choosing_part(one_fold_run, tmp_path):
    _, report = calibration.calibrate_run(one_fold_run, EnsembleConfig(), QUICK, progress=False)
    everything = set(evaluated_rows(read_meta(one_fold_run / "prepared" / "meta.csv", 0),
                                    load_oof(one_fold_run))["image_id"])
    assert [s["name"] for s in report["splits"]] == ["half A -> half B", "half B -> half A"]
    for split in report["splits"]:
        choosing, reporting = set(split["choosing_images"]), set(split["reporting_images"])
        assert not choosing & reporting and choosing | reporting == everything
    first, second = report["splits"]
    assert set(first["choosing_images"]) == set(second["reporting_images"])
    # patients never straddle the halves
    table = read_meta(one_fold_run / "prepared" / "meta.csv", 0).set_index("image_id")
    halves = [set(table.loc[sorted(s["choosing_images"]), "patient_id"]) for s in report["splits"]]
    assert not halves[0] & halves[1]
    # with several folds, each fold reports what the others chose
    folds = constructed_run(tmp_path / "three", [0, 1, 2])
    _, report = calibration.calibrate_run(folds, EnsembleConfig(), QUICK, progress=False)
    table = read_meta(folds / "prepared" / "meta.csv", 0).set_index("image_id")
    for split, fold in zip(report["splits"], (0, 1, 2)):
        assert split["name"] == f"fold {fold}"
        assert set(table.loc[sorted(split["reporting_images"]), "fold"]) == {fold}
        assert fold not in set(table.loc[sorted(split["choosing_images"]), "fold"])


def test_a_search_that_finds_nothing_keeps_the_best_members(one_fold_run):
    """With a gain no change can reach, the search stays where it started, and the deployed settings are
    the best detector and classifier alone, said so in the report."""
    deployed, report = calibration.calibrate_run(one_fold_run, EnsembleConfig(),
                                               CalibrateConfig(passes=1, min_gain=1.0, min_images=0), progress=False)
    assert report["deployed"] == "best members" and "nothing better" in report["deployed_reason"]
    assert deployed.model_weights == {"good": 1.0, "noise": 0.0, "study": 1.0}
    # the image none from whichever says it better alone: here the good detector's boxes (every image with
    # an opacity has a box over 0.6, every other one none over 0.5: the construction)
    assert deployed.none_study_weight == 0
    assert (deployed.none_classifier_weight, deployed.none_boxes_weight) == (0.0, 1.0)
    text = calibration.markdown_report(report)
    assert "**best members**" in text and "half A -> half B" in text


def test_too_few_images_keep_the_configs_settings(one_fold_run):
    config = EnsembleConfig(none_study_weight=0.5)
    deployed, report = calibration.calibrate_run(one_fold_run, config, CalibrateConfig(passes=1, min_images=10_000),
                                               progress=False)
    assert report["deployed"] == "config's settings" and "fewer than min_images 10000" in report["deployed_reason"]
    assert deployed == config  # the display threshold too: measured and reported, not written
    assert report["display_threshold"]["threshold"] > 0
    assert report["splits"] and "chosen" in report["mean_of_reporting_parts"]  # still measured and reported


def test_a_run_without_out_of_fold_predictions_is_left_as_it_is(tmp_path, caplog):
    assert calibrate.main(["--run-dir", str(tmp_path), "--out", str(tmp_path / "report"), "--config",
                           "train/configs/demo.yaml", "--no-progress"]) == 0
    assert "no out-of-fold predictions" in caplog.text and not (tmp_path / "report").exists()


def test_the_script_writes_the_report_and_the_manifest(one_fold_run, tmp_path):
    from utils.ensemble.manifest import read_manifest
    from utils.prediction.predictor import checked_manifest

    weights = tmp_path / "weights"
    weights.mkdir()
    for name in ("good", "noise", "study"):  # the manifest's models (not loaded: checked_manifest only)
        (weights / f"{name}.pt").write_bytes(b"")
    kinds = {"good": "frcnn", "noise": "yolo", "study": "study"}
    (weights / "manifest.json").write_text(json.dumps({"models": {
        n: {"kind": k, "folds": [0], "files": {"0": f"{n}.pt"}, "input_size": 64, "config": {}}
        for n, k in kinds.items()}}))
    assert calibrate.main(["--run-dir", str(one_fold_run), "--weights-dir", str(weights), "--out", str(tmp_path),
                           "--config", "train/configs/demo.yaml", "--set", "passes=1", "min_images=0", "--ensemble-set",
                           "tta_hflip=false", "--no-progress"]) == 0
    report = json.loads((tmp_path / "calibration.json").read_text())
    manifest = read_manifest(weights)
    assert manifest["calibration"]["deployed"] == report["deployed"]
    _, config = checked_manifest(weights)
    assert asdict(config) == manifest["ensemble"]  # the predictor reads back what was chosen
    assert config.tta_hflip is False and config.model_weights["noise"] <= 0.25
    assert config.display_threshold == pytest.approx(report["display_threshold"]["threshold"], abs=1e-4)
    assert "## Deployed settings" in (tmp_path / "calibration.md").read_text()


def test_the_reports_never_write_over_the_runs_own_files(one_fold_run, tmp_path):
    """A report file of --out that is (through a link) one of the run's files is refused before any work
    and the file is left as it was, for the CV report and the calibration alike."""
    from infer import evaluate

    meta = one_fold_run / "prepared" / "meta.csv"
    before = meta.read_bytes()
    for script, name in ((calibrate, "calibration.md"), (evaluate, "cv_report.json")):
        out = tmp_path / script.__name__.rsplit(".", 1)[-1]
        out.mkdir()
        (out / name).symlink_to(meta)
        with pytest.raises(SystemExit, match=rf"--out .*{name} is an input of this run \(.*prepared/meta.csv\)"):
            script.main(["--run-dir", str(one_fold_run), "--out", str(out), "--config", "train/configs/demo.yaml",
                         "--no-progress"])
        assert meta.read_bytes() == before


@pytest.mark.slow
def test_evaluate_combines_as_the_predictor_does(trained_run, siim_dataset):
    """The same member outputs give the same fused boxes, scores and probabilities through the
    out-of-fold report's path (prediction tables -> evaluate) as through the predictor."""
    from utils.data.inputs import find_dicoms
    from utils.prediction.predictor import Ensemble, InputImageDataset

    config_overrides = {"tta_hflip": False, "wbf_skip_box_thr": 0.0, "box_none_power": 0.5,
                        "model_weights": {"yolo": 0.5}, "score_powers": {"frcnn": 1.5}}
    ensemble = Ensemble(trained_run / "weights", overrides={**config_overrides, "device": "cpu", "workers": 0})
    images = [InputImageDataset(find_dicoms(siim_dataset / "test")[:6], ensemble.sizes)[k] for k in range(6)]
    outputs = ensemble.run_models(images)
    predicted = ensemble.predict_batch(images)
    frames = {}
    ids = [i.image_id for i in outputs.readable]
    studies = [i.study_id for i in outputs.readable]
    for name in ("frcnn", "yolo"):
        found = [o.boxes[name][0] for o in outputs.members]  # one fold, no flip: one source each
        frames[name] = detection_rows(ids, studies, name, 0, found)
    study = np.stack([o.classifiers["study"][0] for o in outputs.members])
    none = [o.classifiers["study"][1] for o in outputs.members]
    frames["study"] = classifier_rows(ids, studies, "study", 0, study, none)
    rows = pd.DataFrame({"image_id": ids, "study_id": studies,
                         "original_height": [i.original_height for i in outputs.readable],
                         "original_width": [i.original_width for i in outputs.readable]})
    from_tables = fused_predictions(frames, rows, ensemble.config)
    assert any(len(p.scores) for p in predicted)
    for a, b in zip(predicted, from_tables):
        np.testing.assert_allclose(a.boxes, b.boxes, atol=1e-6)
        np.testing.assert_allclose(a.scores, b.scores, atol=1e-6)
        np.testing.assert_allclose(a.study_probs, b.study_probs, atol=1e-9)
        assert a.none_prob == pytest.approx(b.none_prob)


@pytest.mark.slow
def test_train_all_writes_a_calibrated_weights_folder(trained_run):
    manifest = json.loads((trained_run / "weights" / "manifest.json").read_text())
    report = json.loads((trained_run / "report" / "calibration.json").read_text())
    assert manifest["calibration"]["deployed"] == report["deployed"]
    assert manifest["ensemble"]["model_weights"] == report["settings"]["model_weights"]
    assert manifest["ensemble"]["batch_size"] == 4  # the config's other keys are kept
    from utils.prediction.predictor import Ensemble

    ensemble = Ensemble(trained_run / "weights")  # the predictor takes the calibrated section as it is
    assert asdict(ensemble.config) == manifest["ensemble"]
    dropped = {n for n, w in manifest["ensemble"]["model_weights"].items() if w == 0}
    assert {m.name for m in ensemble.members} == set(manifest["models"]) - dropped
