import pandas as pd
import pytest

from utils.data.submission import (
    SubmissionError,
    image_prediction_string,
    parse_prediction_string,
    read_submission,
    study_prediction_string,
    submission_problems,
    write_submission,
)

SAMPLE = pd.DataFrame({"id": ["s1_study", "i1_image"], "PredictionString": ["negative 1 0 0 1 1", "none 1 0 0 1 1"]})


def test_study_string_has_all_four_classes_with_the_dummy_box():
    text = study_prediction_string({"typical": 0.5, "negative": 0.25, "indeterminate": 0.125, "atypical": 0.125})
    assert text == "negative 0.25 0 0 1 1 typical 0.5 0 0 1 1 indeterminate 0.125 0 0 1 1 atypical 0.125 0 0 1 1"
    with pytest.raises(ValueError, match="atypical"):
        study_prediction_string({"negative": 1, "typical": 0, "indeterminate": 0})


def test_image_string_clips_drops_degenerate_and_adds_none():
    text = image_prediction_string([[-10, 5, 50, 60], [200, 10, 260, 40], [5, 5, 5, 9]], [0.9, 0.8, 0.7],
                                   none_probability=0.3, width=100, height=80)
    assert text == "opacity 0.9 0 5 50 60 none 0.3 0 0 1 1"
    assert image_prediction_string([], [], 0.75, 100, 80) == "none 0.75 0 0 1 1"
    parsed = parse_prediction_string(text)
    assert parsed[0].label == "opacity" and parsed[0].box == (0, 5, 50, 60) and parsed[1].confidence == 0.3


def test_valid_submission_has_no_problems_and_is_written_in_sample_order(tmp_path):
    submission = pd.DataFrame({"id": ["i1_image", "s1_study"],
                               "PredictionString": ["opacity 0.5 1 2 30 40 none 0.5 0 0 1 1",
                                                    study_prediction_string(dict.fromkeys(
                                                        ["negative", "typical", "indeterminate", "atypical"], 0.25))]})
    assert submission_problems(submission, SAMPLE) == []
    path = write_submission(submission, tmp_path / "out" / "submission.csv", SAMPLE)
    assert read_submission(path)["id"].tolist() == ["s1_study", "i1_image"]


@pytest.mark.parametrize("rows, fragment", [
    ([("s1_study", "negative 1 0 0 1 1")], "missing ids"),
    ([("s1_study", "negative 1 0 0 1 1"), ("i1_image", "none 1 0 0 1 1"), ("i2_image", "none 1 0 0 1 1")],
     "extra ids"),
    ([("s1_study", "negative 1 0 0 1 1"), ("s1_study", "negative 1 0 0 1 1"), ("i1_image", "none 1 0 0 1 1")],
     "duplicate id"),
    ([("s1_study", "opacity 1 0 0 1 1"), ("i1_image", "none 1 0 0 1 1")], "unknown class 'opacity'"),
    ([("s1_study", "negative 1 0 0 1 1"), ("i1_image", "typical 1 0 0 1 1")], "unknown class 'typical'"),
    ([("s1_study", "negative 1 0 0 1"), ("i1_image", "none 1 0 0 1 1")], "groups of six"),
    ([("s1_study", "negative one 0 0 1 1"), ("i1_image", "none 1 0 0 1 1")], "non-number"),
    ([("s1_study", "negative nan 0 0 1 1"), ("i1_image", "none 1 0 0 1 1")], "NaN or inf"),
    ([("s1_study", "negative 1 0 0 1 1"), ("i1_image", "opacity 0.5 0 0 inf 5")], "NaN or inf"),
    ([("s1_study", "negative 1.5 0 0 1 1"), ("i1_image", "none 1 0 0 1 1")], "outside [0, 1]"),
    ([("s1_study", "negative 1 0 0 1 1"), ("i1_image", "opacity 0.5 10 0 5 5")], "x1 < x2"),
    ([("s1_study", "negative 1 0 0 1 1"), ("i1_image", "")], "empty PredictionString"),
])
def test_each_problem_is_reported(rows, fragment):
    problems = submission_problems(pd.DataFrame(rows, columns=["id", "PredictionString"]), SAMPLE)
    assert any(fragment in p for p in problems), problems


def test_wrong_header_and_writer_refuses_invalid(tmp_path):
    assert "header" in submission_problems(pd.DataFrame({"id": [], "Prediction": []}))[0]
    with pytest.raises(SubmissionError) as info:
        write_submission(pd.DataFrame({"id": ["s1_study"], "PredictionString": ["bad"]}), tmp_path / "x.csv", SAMPLE)
    assert len(info.value.problems) == 2 and not (tmp_path / "x.csv").exists()


def test_validate_cli_exit_codes(tmp_path, capsys):
    from infer.validate_submission import main

    SAMPLE.to_csv(tmp_path / "sample.csv", index=False)
    SAMPLE.to_csv(tmp_path / "good.csv", index=False)
    assert main([str(tmp_path / "good.csv"), "--sample-submission", str(tmp_path / "sample.csv")]) == 0
    pd.DataFrame({"id": ["s1_study", "x"], "PredictionString": ["negative 2 0 0 1 1", ""]}).to_csv(
        tmp_path / "bad.csv", index=False)
    assert main([str(tmp_path / "bad.csv"), "--sample-submission", str(tmp_path / "sample.csv")]) == 1
    out = capsys.readouterr().out
    assert "missing ids" in out and "extra ids" in out and "outside [0, 1]" in out and "x: id ends in" in out


@pytest.mark.parametrize("text, message", [
    ("", "sample submission is empty"),
    ("id,PredictionString\n", "no rows"),
    ("image,PredictionString\ns1_study,x\n", "no 'id' column"),
])
def test_an_empty_or_idless_sample_is_an_error_naming_it(tmp_path, capsys, text, message):
    """make_submission (through find_test_images) and validate_submission both refuse it in one line."""
    from infer.validate_submission import main
    from utils.data.images_to_predict import find_test_images

    data = tmp_path / "data"
    (data / "test").mkdir(parents=True)
    (data / "sample_submission.csv").write_text(text)
    with pytest.raises(SubmissionError, match=rf"sample_submission.csv.*{message}"):
        find_test_images(data)
    empty = tmp_path / "sub.csv"
    empty.write_text("id,PredictionString\n")
    assert main([str(empty), "--sample-submission", str(data / "sample_submission.csv")]) == 1
    assert "sample_submission.csv" in capsys.readouterr().out


def test_an_empty_test_table_is_an_error_naming_it(tmp_path):
    from utils.data.inputs import PreparationInputError, read_id_table

    for text, message in (("", "is empty"), ("imageid,studyid\n", "has a header but no rows")):
        (tmp_path / "test_meta.csv").write_text(text)
        with pytest.raises(PreparationInputError, match=rf"test_meta.csv: test image table {message}"):
            read_id_table(tmp_path / "test_meta.csv", ("image_id", "study_id"), what="test image table")
