import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from utils.data.boxes import as_boxes
from utils.data.submission import read_submission
from utils.scoring.metric import ClassDetections, average_precision, ground_truth_from_files, score


def ap(truths, predictions):
    return average_precision(ClassDetections({k: as_boxes(v) for k, v in truths.items()}, predictions))


def test_hand_computed_ranking():
    truths = {"a": [[0, 0, 10, 10]], "b": [[0, 0, 10, 10]]}
    predictions = [(0.9, "a", (0, 0, 10, 10)), (0.8, "b", (50, 50, 60, 60)), (0.7, "b", (0, 0, 10, 10))]
    # TP, FP, TP: precision 1, 1/2, 2/3 at recall 1/2, 1/2, 1 -> 0.5 * 1 + 0.5 * 2/3.
    assert ap(truths, predictions) == pytest.approx(0.5 + 0.5 * 2 / 3)
    # FP first: precision 0, 1/2, 2/3 at recall 0, 1/2, 1 -> envelope 2/3 everywhere.
    reordered = [(0.95, "b", (50, 50, 60, 60)), (0.9, "a", (0, 0, 10, 10)), (0.7, "b", (0, 0, 10, 10))]
    assert ap(truths, reordered) == pytest.approx(2 / 3)


def test_iou_just_above_and_just_below_one_half():
    truths = {"a": [[0, 0, 10, 10]]}
    assert ap(truths, [(0.9, "a", (0, 0, 10, 20))]) == 0.0  # IoU = 0.5 exactly: not > 0.5
    assert ap(truths, [(0.9, "a", (0, 0, 10, 19))]) == 1.0  # IoU = 100/190
    assert ap(truths, [(0.9, "a", (0, 0, 10, 10.5))]) == 1.0


def test_duplicates_of_one_true_box_are_one_tp_and_the_rest_fp():
    truths = {"a": [[0, 0, 10, 10]], "b": [[20, 20, 40, 40]]}
    predictions = [(0.9, "a", (0, 0, 10, 10)), (0.8, "a", (0, 0, 10, 10)), (0.7, "b", (20, 20, 40, 40))]
    assert ap(truths, predictions) == pytest.approx(0.5 + 0.5 * 2 / 3)


def test_prediction_on_another_id_never_matches():
    assert ap({"a": [[0, 0, 10, 10]]}, [(0.9, "b", (0, 0, 10, 10))]) == 0.0
    assert ap({}, [(0.9, "b", (0, 0, 10, 10))]) is None


def _truth():
    return {
        "s1_study": [("typical", (0, 0, 1, 1))],
        "s2_study": [("negative", (0, 0, 1, 1))],
        "i1_image": [("opacity", (10, 10, 50, 50)), ("opacity", (60, 10, 90, 50))],
        "i2_image": [("none", (0, 0, 1, 1))],
    }


def test_score_perfect_partial_and_null_classes():
    perfect = pd.DataFrame({"id": ["s1_study", "s2_study", "i1_image", "i2_image"], "PredictionString": [
        "typical 0.9 0 0 1 1 negative 0.1 0 0 1 1", "negative 0.8 0 0 1 1 typical 0.2 0 0 1 1",
        "opacity 0.9 10 10 50 50 opacity 0.8 60 10 90 50 none 0.1 0 0 1 1", "none 0.9 0 0 1 1"]})
    result = score(perfect, _truth())
    assert result["ap"]["indeterminate"] is None and result["ap"]["atypical"] is None
    assert result["map"] == 1.0 and result["study_map"] == 1.0 and result["image_map"] == 1.0
    assert (result["n_studies"], result["n_images"]) == (2, 2)
    # Missing ids predict nothing; classes on the wrong row kind are ignored.
    partial = pd.DataFrame({"id": ["s1_study", "i2_image"],
                            "PredictionString": ["typical 0.9 0 0 1 1 opacity 1 0 0 1 1", "none 0.9 0 0 1 1"]})
    result = score(partial, _truth())
    assert result["ap"]["typical"] == 1.0 and result["ap"]["negative"] == 0.0 and result["ap"]["opacity"] == 0.0


def _real_perfect_submission(folder):
    images = pd.read_csv(folder / "train_image_level.csv", keep_default_na=False)
    studies = pd.read_csv(folder / "train_study_level.csv")
    names = ["negative", "typical", "indeterminate", "atypical"]
    study_strings = [" ".join(f"{n} {float(v)} 0 0 1 1" for n, v in zip(names, row[1:])) for row in
                     studies.itertuples(index=False)]
    return pd.DataFrame({"id": list(studies["id"]) + list(images["id"]),
                         "PredictionString": study_strings + list(images["label"])})


def test_real_labels_scored_against_themselves_and_against_nothing(shared):
    folder = shared("siim-labels")
    truth = ground_truth_from_files(folder / "train_image_level.csv", folder / "train_study_level.csv")
    perfect = score(_real_perfect_submission(folder), truth)
    assert all(v == 1.0 for v in perfect["ap"].values()) and perfect["map"] == 1.0
    assert (perfect["n_studies"], perfect["n_images"]) == (6054, 6334)
    nothing = score(pd.DataFrame({"id": [], "PredictionString": []}), truth)
    assert nothing["map"] == 0.0 and all(v == 0.0 for v in nothing["ap"].values())


def test_cli_json_and_table(tmp_path, capsys):
    from infer.score import main

    truth_images = tmp_path / "img.csv"
    truth_images.write_text("id,boxes,label,StudyInstanceUID\n"
                            "i1_image,\"[{'x': 10, 'y': 10, 'width': 40, 'height': 40}]\",opacity 1 10 10 50 50,s1\n")
    truth_studies = tmp_path / "study.csv"
    truth_studies.write_text("id,Negative for Pneumonia,Typical Appearance,Indeterminate Appearance,"
                             "Atypical Appearance\ns1_study,0,1,0,0\n")
    submission = tmp_path / "sub.csv"
    submission.write_text("id,PredictionString\ns1_study,typical 0.7 0 0 1 1\ni1_image,opacity 0.5 10 10 50 50\n")
    result = main([str(submission), "--image-labels", str(truth_images), "--study-labels", str(truth_studies),
                   "--json"])
    assert result["map"] == 1.0 and '"map": 1.0' in capsys.readouterr().out
    main([str(submission), "--image-labels", str(truth_images), "--study-labels", str(truth_studies)])
    assert "final mAP" in capsys.readouterr().out


# ---- properties ---------------------------------------------------------------------------------------

coordinate = st.integers(0, 90)
box = st.tuples(coordinate, coordinate, st.integers(5, 40), st.integers(5, 40)).map(
    lambda b: (b[0], b[1], b[0] + b[2], b[1] + b[3]))
image_id = st.sampled_from(["a_image", "b_image", "c_image"])
prediction = st.tuples(image_id, st.floats(0.01, 1.0, allow_nan=False), box)


@st.composite
def cases(draw):
    truth = {i: [("opacity", draw(box)) for _ in range(draw(st.integers(0, 3)))] or [("none", (0, 0, 1, 1))]
             for i in ["a_image", "b_image", "c_image"]}
    predictions = draw(st.lists(prediction, max_size=10))
    return truth, predictions


def _frame(predictions, shuffle_seed=None):
    rows = {}
    for identifier, confidence, b in predictions:
        rows.setdefault(identifier, []).append(f"opacity {confidence} {b[0]} {b[1]} {b[2]} {b[3]}")
    frame = pd.DataFrame({"id": list(rows), "PredictionString": [" ".join(v) for v in rows.values()]})
    return frame.sample(frac=1.0, random_state=shuffle_seed) if shuffle_seed is not None else frame


@settings(max_examples=60, deadline=None)
@given(cases(), st.integers(0, 1000))
def test_row_order_and_unknown_ids_do_not_change_the_score(case, seed):
    truth, predictions = case
    base = score(_frame(predictions), truth)
    assert score(_frame(predictions, seed), truth) == base
    extra = pd.concat([_frame(predictions), pd.DataFrame({"id": ["zzz_image"],
                                                          "PredictionString": ["opacity 1 0 0 10 10"]})])
    assert score(extra, truth) == base


@settings(max_examples=60, deadline=None)
@given(cases(), box)
def test_a_false_positive_below_every_prediction_never_raises_ap(case, fp_box):
    truth, predictions = case
    before = score(_frame(predictions), truth)["ap"]["opacity"]
    lowest = min([p[1] for p in predictions], default=1.0)
    # A box on an id with no opacity truth is always a false positive.
    truth = {**truth, "d_image": [("none", (0, 0, 1, 1))]}
    after = score(_frame(predictions + [("d_image", lowest / 2, fp_box)]), truth)["ap"]["opacity"]
    if before is None:
        assert after is None
    else:
        assert after <= before + 1e-12


def test_submission_reader_keeps_empty_strings(tmp_path):
    path = tmp_path / "s.csv"
    path.write_text("id,PredictionString\na_image,\n")
    assert read_submission(path)["PredictionString"].tolist() == [""]


def test_cli_names_the_submission_for_a_malformed_string(tmp_path):
    from infer.score import main

    (tmp_path / "img.csv").write_text("id,boxes,label,StudyInstanceUID\ni1_image,,none 1 0 0 1 1,s1\n")
    (tmp_path / "study.csv").write_text("id,Negative for Pneumonia,Typical Appearance,Indeterminate Appearance,"
                                        "Atypical Appearance\ns1_study,1,0,0,0\n")
    (tmp_path / "sub.csv").write_text("id,PredictionString\ni1_image,none 1 0 0\n")
    with pytest.raises(SystemExit) as info:
        main([str(tmp_path / "sub.csv"), "--image-labels", str(tmp_path / "img.csv"),
              "--study-labels", str(tmp_path / "study.csv")])
    assert str(info.value).startswith(str(tmp_path / "sub.csv")) and "i1_image" in str(info.value)


def _labels(tmp_path):
    (tmp_path / "img.csv").write_text("id,boxes,label,StudyInstanceUID\ni1_image,,none 1 0 0 1 1,s1\n")
    (tmp_path / "study.csv").write_text("id,Negative for Pneumonia,Typical Appearance,Indeterminate Appearance,"
                                        "Atypical Appearance\ns1_study,1,0,0,0\n")
    return ["--image-labels", str(tmp_path / "img.csv"), "--study-labels", str(tmp_path / "study.csv")]


@pytest.mark.parametrize("rows, problem", [
    ("i1_image,none 1 0 0 1 1\ni1_image,none 0.5 0 0 1 1\n", "duplicate id"),
    ("i1_image,none 1.5 0 0 1 1\n", "i1_image"),
    ("i1_image,opacity 0.5 50 10 10 40\n", "i1_image"),
    ("i1_image,typical 0.5 0 0 1 1\n", "i1_image"),
])
def test_score_refuses_an_invalid_submission_instead_of_scoring_it(tmp_path, rows, problem):
    from infer.score import main

    (tmp_path / "sub.csv").write_text("id,PredictionString\ns1_study,negative 1 0 0 1 1\n" + rows)
    with pytest.raises(SystemExit, match=f"sub.csv: not scored(.|\\n)*{problem}"):
        main([str(tmp_path / "sub.csv"), *_labels(tmp_path)])


def test_score_names_a_label_file_it_cannot_use(tmp_path):
    from infer.score import main

    argv = _labels(tmp_path)
    (tmp_path / "img.csv").write_text("identifier,boxes\n")
    (tmp_path / "sub.csv").write_text("id,PredictionString\n")
    with pytest.raises(SystemExit, match="label files .*img.csv.*not usable"):
        main([str(tmp_path / "sub.csv"), *argv])
    (tmp_path / "img.csv").write_text("")
    with pytest.raises(SystemExit, match="not usable"):
        main([str(tmp_path / "sub.csv"), *argv])


@pytest.mark.parametrize("content, message", [
    (None, "file not found"),
    (b"", "empty file"),
    (b"\x89PNG\r\n\x1a\n\x00\x00\x00binary", "not UTF-8 text"),
    ("id,PredictionString\ns1_study,négatif 1 0 0 1 1\n".encode("latin-1"), "not UTF-8 text"),
    (b"id,PredictionString,extra\ns1_study,negative 1 0 0 1 1,x\n", "header is"),
    (b'id,PredictionString\n"s1_study,negative 1 0 0 1 1\n', "not a readable CSV"),
])
def test_validate_submission_reports_an_unreadable_file_in_one_line(tmp_path, capsys, content, message):
    from infer.validate_submission import main

    path = tmp_path / "sub.csv"
    if content is not None:
        path.write_bytes(content)
    assert main([str(path)]) == 1
    out = capsys.readouterr().out
    assert message in out and str(path) in out and "Traceback" not in out
