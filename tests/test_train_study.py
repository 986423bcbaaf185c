"""train/train_kind.py --kind study: a real tiny run per fold from the backbone checkpoint; OOF predictions,
scores through the competition metric, and the weights manifest."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import classifier_scores_by_hand

from train import fold_averaging, train_kind
from utils.data.labels import STUDY_CLASSES
from utils.data.predictions import (
    PREDICTION_COLUMNS,
    PredictionFileError,
    classifier_rows,
    detection_rows,
    read_predictions,
    write_predictions,
)
from utils.data.prepare import prepare_competition
from utils.ensemble.manifest import read_manifest
from utils.kinds.registry import KINDS
from utils.kinds.study.network import StudyClassifier
from utils.scoring.classification import classifier_submission, study_classifier_scores


def train_study(argv: list[str]) -> int:
    """The training script on the study kind."""
    return train_kind.main(["--kind", "study", *argv])


@pytest.fixture(scope="module")
def prepared(siim_dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("prepared")
    prepare_competition(siim_dataset, out, sizes=(64,), workers=1, n_folds=3, progress=False)
    return out / "meta.csv"


@pytest.fixture(scope="module")
def study_run(prepared, backbone_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("study")
    argv = ["--prepared", str(prepared), "--out", str(out / "run"), "--weights-dir", str(out / "weights"),
            "--config", "train/configs/demo.yaml", "--no-progress", "--set", "epochs=1", "image_size=48",
            "batch_size=8", "workers=0", "amp=off", "device=cpu", "folds=[0, 1]",
            f"backbone={backbone_run / 'best.pt'}"]
    assert train_study(argv) == 0
    return out


def test_out_of_fold_predictions_cover_every_image_of_the_trained_folds(study_run, prepared):
    table = pd.read_csv(prepared, dtype={"image_id": str, "study_id": str})
    oof = read_predictions(study_run / "run" / "oof_predictions.csv")
    assert list(oof.columns) == list(PREDICTION_COLUMNS)
    expected = set(table.loc[table["fold"].isin([0, 1]), "image_id"])
    assert set(oof["image_id"]) == expected and len(oof) == len(expected)
    assert set(oof["fold"]) == {0, 1} and set(oof["model"]) == {"study"}
    for fold in (0, 1):  # each image is predicted by the model that did not train on it
        assert set(oof.loc[oof["fold"] == fold, "image_id"]) == set(table.loc[table["fold"] == fold, "image_id"])
    probs = oof[[f"prob_{c}" for c in STUDY_CLASSES]].to_numpy()
    assert probs.sum(axis=1) == pytest.approx(1.0, abs=1e-5)


def test_scores_and_per_fold_runs(study_run, prepared):
    scores = json.loads((study_run / "run" / "oof_scores.json").read_text())
    # The same scores computed another way, from the out-of-fold predictions it wrote.
    oof = read_predictions(study_run / "run" / "oof_predictions.csv")
    table = pd.read_csv(prepared, dtype={"image_id": str, "study_id": str})
    by_hand = classifier_scores_by_hand(oof, table[table["fold"].isin([0, 1])])
    assert scores["study_map"] == pytest.approx(by_hand["study_map"], abs=1e-9)
    assert scores["none_ap"] == pytest.approx(by_hand["none_ap"], abs=1e-9)
    assert {c: scores["ap"][c] for c in by_hand["ap"]} == pytest.approx(by_hand["ap"], abs=1e-9)
    assert set(scores["per_fold"]) == {"0", "1"}
    assert "study mAP" in (study_run / "run" / "oof_scores.txt").read_text()
    for fold in (0, 1):
        metrics = pd.read_csv(study_run / "run" / f"fold{fold}" / "metrics.csv")
        assert {"val_study_map", "val_none_ap", "train_loss_study", "train_loss_none"} <= set(metrics.columns)


def test_weights_are_registered_and_load(study_run):
    manifest = read_manifest(study_run / "weights")
    entry = manifest["models"]["study"]
    assert entry["kind"] == "study" and entry["folds"] == [0, 1] and entry["input_size"] == 48
    model = StudyClassifier.from_config(entry["config"], None)
    model.load_state_dict(torch.load(study_run / "weights" / entry["files"]["1"], weights_only=True))


def _peeking_run(prepared, backbone_run, out, monkeypatch, overrides: list[str]) -> dict:
    """A 3-epoch run whose held-out fold "scores" best at epoch 1 and worse after: a checkpoint choice
    that looks at the scored fold keeps epoch 1; one that does not keeps the schedule's last epoch."""
    epochs = iter(range(1, 100))
    monkeypatch.setattr(KINDS["study"], "val_scores", lambda predictions, val: {"study_map": 1.0 / next(epochs)})
    argv = ["--prepared", str(prepared), "--out", str(out), "--config", "train/configs/demo.yaml", "--no-progress",
            "--set", "epochs=3", "image_size=32", "batch_size=16", "workers=0", "amp=off", "device=cpu", "folds=[0]",
            f"backbone={backbone_run / 'best.pt'}", "seg_weight=0", "tta_views=[identity]", *overrides]
    assert train_study(argv) == 0
    return torch.load(out / "fold0" / "best.pt", weights_only=True)


def test_the_kept_checkpoint_never_sees_the_scored_fold(prepared, backbone_run, tmp_path, monkeypatch):
    kept = _peeking_run(prepared, backbone_run, tmp_path / "honest", monkeypatch, [])  # the config's default
    last = torch.load(tmp_path / "honest" / "fold0" / "last.pt", weights_only=True)
    assert kept["epoch"] == 3 and kept["metrics"]["monitor"] == "last"
    assert all(torch.equal(kept["model"][k], last["model"][k]) for k in last["model"])
    # The old choice, by the scored fold's metric, is what this test exists to catch.
    peeking = _peeking_run(prepared, backbone_run, tmp_path / "peeking", monkeypatch, ["monitor=study_map"])
    assert peeking["epoch"] == 1 and peeking["metrics"]["best_epoch"] == 1


def test_folds_trained_in_separate_sessions_join_one_run_through_resume(prepared, backbone_run, tmp_path):
    """Fold 0 in one session, then the fold list widened with --resume: fold 0 is only predicted again
    (its checkpoint untouched, the same out-of-fold rows), fold 1 trains, and the report and the manifest
    cover both; any other change of the config is still refused."""
    def run(folds: str, *overrides: str, resume: bool = False) -> int:
        return train_study(["--resume"] * resume + [
                                 "--prepared", str(prepared), "--out", str(tmp_path / "run"), "--weights-dir",
                                 str(tmp_path / "weights"), "--config", "train/configs/demo.yaml", "--no-progress",
                                 "--set", "epochs=1", "image_size=32", "batch_size=16", "workers=0", "amp=off",
                                 "device=cpu", f"backbone={backbone_run / 'best.pt'}", "seg_weight=0",
                                 "tta_views=[identity]", f"folds={folds}", *overrides])

    assert run("[0]") == 0
    fold0 = tmp_path / "run" / "fold0"
    first_checkpoint = (fold0 / "last.pt").read_bytes()
    first_oof = read_predictions(tmp_path / "run" / "oof_predictions.csv")
    assert run("[0, 1]", resume=True) == 0
    assert (fold0 / "last.pt").read_bytes() == first_checkpoint
    assert len(pd.read_csv(fold0 / "metrics.csv")) == 1  # one epoch: not trained again
    oof = read_predictions(tmp_path / "run" / "oof_predictions.csv")
    assert set(oof["fold"]) == {0, 1}
    again = oof[oof["fold"] == 0].reset_index(drop=True)
    pd.testing.assert_frame_equal(again, first_oof.reset_index(drop=True), check_exact=False, atol=1e-6)
    scores = json.loads((tmp_path / "run" / "oof_scores.json").read_text())
    assert set(scores["per_fold"]) == {"0", "1"}
    assert read_manifest(tmp_path / "weights")["models"]["study"]["folds"] == [0, 1]
    with pytest.raises(SystemExit, match=r"changed: \['lr'\]"):
        run("[0, 1]", "lr=0.5", resume=True)


def test_fold_averaging_scores_one_model_and_the_mean_on_a_fold_none_saw(prepared, backbone_run, tmp_path):
    """Held-out fold 2: the inner models train without its images (over two calls, the second only adding
    fold 1), and the table's "mean of 2 models" is the mean of their two prediction files, scored apart."""
    out = tmp_path / "averaging"

    def run(*inner: int) -> int:
        return fold_averaging.main(["--prepared", str(prepared), "--held-out-fold", "2", "--inner-folds",
                                    *map(str, inner), "--out", str(out), "--config", "train/configs/demo.yaml",
                                    "--no-progress", "--set", "epochs=1", "image_size=32", "batch_size=16",
                                    "workers=0", "amp=off", "device=cpu", f"backbone={backbone_run / 'best.pt'}",
                                    "seg_weight=0.5", "tta_views=[identity]"])  # the recipe's head: masks

    assert run(0) == 0
    first = (out / "inner" / "fold0" / "last.pt").read_bytes()
    assert run(0, 1) == 0
    assert (out / "inner" / "fold0" / "last.pt").read_bytes() == first  # resumed, not trained again
    table = pd.read_csv(prepared, dtype={"image_id": str, "study_id": str})
    held_out = table[table["fold"] == 2]
    inner = pd.read_csv(out / "inner" / "meta.csv", dtype={"image_id": str})
    assert not set(inner["image_id"]) & set(held_out["image_id"]) and set(inner["fold"]) == {0, 1}
    rows = json.loads((out / "fold_averaging.json").read_text())["rows"]
    assert [(r["models"], r["subsets"]) for r in rows] == [(0, 1), (1, 2), (2, 1)]
    singles = [read_predictions(out / f"held_out_fold{k}.csv") for k in (0, 1)]
    for single in singles:
        assert set(single["image_id"]) == set(held_out["image_id"])
    mean = singles[0].copy()
    columns = [f"prob_{c}" for c in (*STUDY_CLASSES, "none")]
    mean[columns] = (singles[0].set_index("image_id")[columns] + singles[1].set_index("image_id")[columns]).loc[
        singles[0]["image_id"]].to_numpy() / 2
    assert rows[2]["study_map"] == pytest.approx(classifier_scores_by_hand(mean, held_out)["study_map"], abs=1e-9)
    each = [classifier_scores_by_hand(single, held_out)["study_map"] for single in singles]
    assert rows[1]["study_map"] == pytest.approx(sum(each) / 2, abs=1e-9)
    assert "Command: `python train/fold_averaging.py" in (out / "fold_averaging.md").read_text()


def test_unknown_fold_is_refused(prepared, tmp_path):
    with pytest.raises(SystemExit, match="folds \\[7\\] not in meta.csv"):
        train_study(["--prepared", str(prepared), "--out", str(tmp_path), "--config", "train/configs/demo.yaml",
                          "--set", "folds=[7]"])


def _table():
    return pd.DataFrame({
        "image_id": ["i1", "i2", "i3", "i4"], "study_id": ["s1", "s1", "s2", "s3"],
        "study_class": ["typical", "typical", "negative", "atypical"], "study_label": [1, 1, 0, 3],
        "boxes": ["[[10, 10, 50, 50]]", "[]", "[]", "[[0, 0, 5, 5]]"], "used": [True, False, True, True],
    })


def test_perfect_classifier_scores_one():
    table = _table()
    study_probs = [[0, 1, 0, 0], [0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 1]]
    predictions = classifier_rows(table["image_id"], table["study_id"], "m", 0, study_probs, [0.1, 0.9, 0.8, 0.2])
    scores = study_classifier_scores(predictions, table)
    assert scores["study_map"] == pytest.approx(1.0) and scores["none_ap"] == pytest.approx(1.0)
    # i2 is an un-annotated duplicate: predicted (its none row is written) but never scored as truth.
    assert scores["n_images"] == 3 and "i2_image" in set(classifier_submission(predictions)["id"])


def test_study_probability_is_the_mean_over_its_images():
    table = _table()
    predictions = classifier_rows(["i1", "i2"], ["s1", "s1"], "m", 0, [[0.2, 0.8, 0, 0], [0.6, 0.4, 0, 0]], [0.5, 0.5])
    row = classifier_submission(predictions).set_index("id").loc["s1_study", "PredictionString"]
    assert row.startswith("negative 0.4 0 0 1 1 typical 0.6 0 0 1 1")
    assert study_classifier_scores(predictions, table)["n_studies"] == 1


def test_prediction_schema_round_trip_and_checks(tmp_path):
    frame = pd.concat([detection_rows(["i1"], ["s1"], "frcnn", 2, [([[0.1, 0.2, 0.5, 0.6]], [0.7])]),
                       classifier_rows(["i1"], ["s1"], "study", 2, [[0.1, 0.2, 0.3, 0.4]], [0.5])])
    back = read_predictions(write_predictions(frame, tmp_path / "p.csv"))
    assert back.shape == (2, len(PREDICTION_COLUMNS)) and back["score"].iloc[0] == pytest.approx(0.7)
    with pytest.raises(PredictionFileError, match="not normalised"):
        write_predictions(detection_rows(["i1"], ["s1"], "m", 0, [([[10, 20, 50, 60]], [0.7])]), tmp_path / "bad.csv")
    with pytest.raises(PredictionFileError, match="missing columns"):
        read_predictions(write_text(tmp_path / "x.csv", "image_id,score\ni,1\n"))


def write_text(path, text):
    path.write_text(text)
    return path


def test_students_learn_the_teachers_probabilities_and_refuse_a_wrong_teacher(study_run, prepared, backbone_run,
                                                                              tmp_path):
    """Self-distillation (issue 57): the first run's out-of-fold predictions teach a second run. Each
    image the teacher predicted gets the mixed target, the others keep their label; the student trains
    and registers like any study run; a teacher that is missing, not a predictions table or of other
    images is one line naming it."""
    from utils.core.config import ConfigError, load_section, parse_overrides
    from utils.kinds.study.training import KIND

    teacher = study_run / "run" / "oof_predictions.csv"  # folds 0 and 1 of the three
    overrides = ["image_size=48", "seg_weight=0", f"teacher={teacher}", "distill_weight=3",
                 "distill_temperature=0.5"]
    config = load_section("train/configs/demo.yaml", "study", KIND.config_class, parse_overrides(overrides))
    table = KIND.load_table(prepared, config)
    oof = read_predictions(teacher).set_index("image_id")
    taught = table["image_id"].isin(oof.index)
    assert taught.any() and not taught.all()
    row = table[taught].iloc[0]
    probs = oof.loc[row["image_id"], [f"prob_{c}" for c in STUDY_CLASSES]].to_numpy(dtype=float) ** 2
    expected = (np.eye(4)[row["study_label"]] + 3 * probs / probs.sum()) / 4
    assert row["targets"]["study_probs"] == pytest.approx(expected, abs=1e-6)
    for target, label in zip(table.loc[~taught, "targets"], table.loc[~taught, "study_label"]):
        assert target["study_probs"].tolist() == np.eye(4)[label].tolist()

    argv = ["--prepared", str(prepared), "--out", str(tmp_path / "student"), "--weights-dir",
            str(tmp_path / "weights"), "--config", "train/configs/demo.yaml", "--no-progress", "--set", "epochs=1",
            "batch_size=8", "workers=0", "amp=off", "device=cpu", "folds=[2]", f"backbone={backbone_run / 'best.pt'}",
            *overrides]
    assert train_study(argv) == 0
    entry = read_manifest(tmp_path / "weights")["models"]["study"]
    assert entry["config"]["teacher"] == str(teacher) and entry["config"]["distill_weight"] == 3.0
    assert pd.read_csv(tmp_path / "student" / "fold2" / "metrics.csv")["train_loss_study"].notna().all()

    wrong = tmp_path / "other.csv"
    write_predictions(classifier_rows(["nobody"], ["s"], "study", 0, [[0.25] * 4], [0.5]), wrong)
    not_csv = tmp_path / "notes.csv"
    not_csv.write_text("a,b\n1,2,3,4,5\n")
    for path, problem in ((tmp_path / "absent.csv", "file not found"), (not_csv, "notes.csv: "),
                          (wrong, "predicts none of the")):
        config = load_section("train/configs/demo.yaml", "study", KIND.config_class,
                              parse_overrides([f"teacher={path}", "distill_weight=1"]))
        with pytest.raises(ConfigError, match=f"study.teacher: .*{problem}"):
            KIND.load_table(prepared, config)
    with pytest.raises(SystemExit, match=r"^error: study.teacher: .*absent.csv: file not found$"):
        train_study([*argv[:argv.index("--set")], "--set", f"teacher={tmp_path / 'absent.csv'}",
                          "distill_weight=1"])


def test_two_identical_runs_train_identical_weights(prepared, backbone_run, tmp_path):
    """Every random thing is seeded before it is built (the heads' initialisation too: before, three
    identical runs started from three different heads), so a rerun reproduces a run on the CPU."""
    def run(out) -> dict:
        assert train_study(["--prepared", str(prepared), "--out", str(out), "--config", "train/configs/demo.yaml",
                                 "--no-progress", "--set", "epochs=1", "image_size=32", "batch_size=16", "workers=0",
                                 "amp=off", "device=cpu", "folds=[0]", f"backbone={backbone_run / 'best.pt'}",
                                 "seg_weight=0.5", "tta_views=[identity]"]) == 0
        return torch.load(out / "fold0" / "last.pt", weights_only=True)["model"]

    torch.manual_seed(123)  # whatever ran before in this process
    first = run(tmp_path / "a")
    torch.rand(7)
    second = run(tmp_path / "b")
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)


def test_a_full_disk_at_the_best_checkpoint_stops_in_one_line_and_resume_finishes_the_fold(
        prepared, backbone_run, tmp_path, monkeypatch):
    """ENOSPC while last.pt is copied to best.pt at the final epoch: one line naming the file (before: a
    traceback, and a fold that --resume could not finish or exported the previous epoch's weights);
    --resume with room finishes the copy and exports the final epoch."""
    import errno

    from utils.training import loop

    def run(*extra: str) -> int:
        return train_study([*extra, "--prepared", str(prepared), "--out", str(tmp_path / "run"), "--weights-dir",
                                 str(tmp_path / "weights"), "--config", "train/configs/demo.yaml", "--no-progress",
                                 "--set", "epochs=2", "image_size=32", "batch_size=16", "workers=0", "amp=off",
                                 "device=cpu", "folds=[0]", f"backbone={backbone_run / 'best.pt'}", "seg_weight=0",
                                 "tta_views=[identity]"])

    real_copy = loop.copy_atomic

    def full_at_the_second_copy(source, destination):
        if torch.load(source, weights_only=True)["epoch"] == 2:
            raise OSError(errno.ENOSPC, "No space left on device", str(destination))
        return real_copy(source, destination)

    monkeypatch.setattr(loop, "copy_atomic", full_at_the_second_copy)
    with pytest.raises(SystemExit) as stop:
        run()
    fold = tmp_path / "run" / "fold0"
    assert str(stop.value) == (f"error: {fold / 'best.pt'}: No space left on device; "
                               f"{str(stop.value).split('; ')[1]}; what was written before stays whole: make room "
                               "and run it again with --resume")
    assert torch.load(fold / "best.pt", weights_only=True)["epoch"] == 1  # the old state, whole
    assert torch.load(fold / "last.pt", weights_only=True)["epoch"] == 2
    monkeypatch.setattr(loop, "copy_atomic", real_copy)
    assert run("--resume") == 0
    best, last = (torch.load(fold / name, weights_only=True) for name in ("best.pt", "last.pt"))
    assert best["epoch"] == 2 and all(torch.equal(best["model"][k], last["model"][k]) for k in last["model"])
    entry = read_manifest(tmp_path / "weights")["models"]["study"]
    exported = torch.load(tmp_path / "weights" / entry["files"]["0"], weights_only=True)
    assert all(torch.equal(exported[k], last["model"][k]) for k in exported)


def test_a_kill_between_new_weights_and_their_registration_is_refused_until_the_stage_reruns(study_run, tmp_path,
                                                                                             monkeypatch):
    """Killed after fold 0's new weights were written and before the manifest said so: before, the new
    weights were served under the old entry (its input size, its config) and every command exited 0; now
    the entry is refused in one line until the stage registers again."""
    import shutil

    from utils.ensemble.manifest import ManifestError, entry_files
    from utils.kinds import base

    weights = tmp_path / "weights"
    shutil.copytree(study_run / "weights", weights)
    checkpoints = {fold: study_run / "run" / f"fold{fold}" / "best.pt" for fold in (0, 1)}
    entry = read_manifest(weights)["models"]["study"]
    real_export = base.export_weights

    def killed_after_the_first_file(checkpoint, path):
        real_export(checkpoint, path)
        raise KeyboardInterrupt  # the kill, after fold 0's file

    monkeypatch.setattr(base, "export_weights", killed_after_the_first_file)
    with pytest.raises(KeyboardInterrupt):
        base.register_fold_checkpoints(weights, "study", checkpoints, 96, entry["config"])
    spec = read_manifest(weights)["models"]["study"]
    assert spec["input_size"] == 48  # the old entry, marked
    with pytest.raises(ManifestError, match=r"manifest.json: model 'study': its training stage stopped while writing "
                                            r"new weights .*run that stage again with --resume$"):
        entry_files(weights, "study", spec)
    monkeypatch.setattr(base, "export_weights", real_export)
    base.register_fold_checkpoints(weights, "study", checkpoints, 96, entry["config"])
    spec = read_manifest(weights)["models"]["study"]
    assert spec["input_size"] == 96 and "replacing_files" not in spec
    assert entry_files(weights, "study", spec)[2] == 96
