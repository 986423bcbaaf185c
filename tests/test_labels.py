import numpy as np
import pandas as pd
import pytest

from utils.data.labels import (
    LabelFileError,
    assign_folds,
    build_image_table,
    load_competition_labels,
    load_image_labels,
    load_study_labels,
    parse_kaggle_boxes,
)


def _real_table(shared):
    folder = shared("siim-labels")
    meta = pd.read_csv(folder / "train_meta.csv", dtype=str)
    patients = meta.rename(columns={"imageid": "image_id", "patientid": "patient_id"})[["image_id", "patient_id"]]
    return load_competition_labels(folder, patients)


def test_real_label_files_counts(shared):
    table = _real_table(shared)
    assert len(table) == 6334
    assert table["study_id"].nunique() == 6054
    assert int(table["n_boxes"].sum()) == 7853
    assert table["patient_id"].nunique() == 3261
    assert int((table["n_boxes"] == 0).sum()) == 2040
    studies = table.drop_duplicates("study_id")["study_class"].value_counts().to_dict()
    assert studies == {"negative": 1676, "typical": 2855, "indeterminate": 1049, "atypical": 474}
    assert (table.loc[table["study_class"] == "negative", "n_boxes"] == 0).all()
    # Un-annotated duplicates of positive studies are marked, not dropped.
    excluded = table[~table["used"]]
    assert len(excluded) > 0 and set(excluded["excluded_reason"]) == {"unlabelled_duplicate"}
    assert (excluded["n_boxes"] == 0).all()


def test_real_folds_are_grouped_by_patient_and_stratified(shared):
    table = _real_table(shared)
    folds = assign_folds(table, 5, seed=42)
    assert set(folds) == {0, 1, 2, 3, 4}
    assert (pd.Series(folds).groupby(table["patient_id"].to_numpy()).nunique() == 1).all()
    shares = pd.crosstab(folds, table["study_class"], normalize="index")
    assert (shares.max() - shares.min()).max() < 0.05
    np.testing.assert_array_equal(folds, assign_folds(table, 5, seed=42))


def test_boxes_parse_from_the_python_literal():
    boxes = parse_kaggle_boxes("[{'x': 1.5, 'y': 2.0, 'width': 10.0, 'height': 20.0}]")
    np.testing.assert_allclose(boxes, [[1.5, 2.0, 11.5, 22.0]])
    assert parse_kaggle_boxes(float("nan")).shape == (0, 4)
    assert parse_kaggle_boxes("").shape == (0, 4)


def test_duplicate_policy_and_missing_study(tmp_path):
    images = pd.DataFrame({"image_id": ["a", "b", "c", "d"], "study_id": ["s1", "s1", "s2", "s2"],
                           "boxes": [np.ones((1, 4)), np.zeros((0, 4)), np.zeros((0, 4)), np.zeros((0, 4))],
                           "n_boxes": [1, 0, 0, 0]})
    studies = pd.DataFrame({"study_id": ["s1", "s2"], "study_class": ["typical", "negative"], "study_label": [1, 0]})
    kept = build_image_table(images, studies)
    assert kept["used"].tolist() == [True, False, True, True]
    assert build_image_table(images, studies, duplicates="keep_all")["used"].all()
    with pytest.raises(LabelFileError, match="s2"):
        build_image_table(images, studies.iloc[:1])


def test_bad_label_files_name_the_file(tmp_path):
    bad = tmp_path / "train_study_level.csv"
    bad.write_text("id,Negative for Pneumonia,Typical Appearance,Indeterminate Appearance,Atypical Appearance\n"
                   "x_study,1,1,0,0\n")
    with pytest.raises(LabelFileError, match="not one-hot"):
        load_study_labels(bad)
    (tmp_path / "img.csv").write_text("id,label\n")
    with pytest.raises(LabelFileError, match="img.csv: missing columns"):
        load_image_labels(tmp_path / "img.csv")
