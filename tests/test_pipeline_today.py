"""The stages that exist today, run for real on a tiny synthetic set: prepare -> baseline -> validate -> score,
and the benchmarks at toy sizes (they must run; their figures come from the commands in the README)."""

import shutil

import numpy as np
import pandas as pd
import pytest
from conftest import ranked_average_precision

from infer.baseline_submission import main as baseline_main
from infer.score import main as score_main
from infer.validate_submission import main as validate_main
from train.prepare import main as prepare_main
from utils.benchmarking.benchmarks import benchmark_grey_input, benchmark_reader, benchmark_training, one_channel_stem
from utils.data.inputs import find_dicoms
from utils.data.labels import STUDY_CLASSES


def test_prepare_baseline_validate_score(siim_dataset, tmp_path):
    # A corrupt test DICOM must not break the submission: it gets the no-box fallback.
    data = tmp_path / "data"
    shutil.copytree(siim_dataset, data)
    find_dicoms(data / "test")[0].write_bytes(b"garbage")
    prepare_main(["--data-dir", str(data), "--out", str(tmp_path / "prep"), "--size", "64", "--folds", "3"])
    out = tmp_path / "baseline.csv"
    baseline_main(["--data-dir", str(data), "--prepared", str(tmp_path / "prep" / "meta.csv"), "--out", str(out)])
    assert validate_main([str(out), "--sample-submission", str(data / "sample_submission.csv")]) == 0
    result = score_main([str(out), "--image-labels", str(data / "test_image_level.csv"),
                         "--study-labels", str(data / "test_study_level.csv"), "--json"])
    assert len(pd.read_csv(out)) == len(pd.read_csv(data / "sample_submission.csv"))
    # Exact references: every study of the prior baseline has the same probabilities and every image the
    # same none, so each AP is that of the truth ranked in id order (how the metric breaks ties).
    studies = pd.read_csv(data / "test_study_level.csv").sort_values("id")
    for column, name in zip(studies.columns[1:], STUDY_CLASSES):
        assert result["ap"][name] == pytest.approx(ranked_average_precision(np.zeros(len(studies)), studies[column]))
    images = pd.read_csv(data / "test_image_level.csv").sort_values("id")
    none = images["label"].str.startswith("none")
    assert result["ap"]["none"] == pytest.approx(ranked_average_precision(np.zeros(len(images)), none))
    assert result["map"] == pytest.approx(np.mean(list(result["ap"].values())))
    # ... and below the labels themselves written as a submission, which score exactly 1.
    perfect = tmp_path / "perfect.csv"
    pd.DataFrame({"id": list(studies["id"]) + list(images["id"]),
                  "PredictionString": [" ".join(f"{name} 1 0 0 1 1" for column, name in
                                                zip(studies.columns[1:], STUDY_CLASSES) if row[column])
                                       for _, row in studies.iterrows()] + list(images["label"])}).to_csv(perfect,
                                                                                                          index=False)
    best = score_main([str(perfect), "--image-labels", str(data / "test_image_level.csv"),
                       "--study-labels", str(data / "test_study_level.csv"), "--json"])
    assert best["map"] == pytest.approx(1.0) and result["map"] < best["map"] - 0.2


def test_reader_benchmark_runs_and_agrees_with_the_copied_recipe():
    result = benchmark_reader(files=2, repeats=1, size=256)
    assert result["max_mean_abs_difference_grey_levels"] <= 1.0
    assert result["project_images_per_s"] > 0 and result["baseline_images_per_s"] > 0


def test_training_benchmark_measures_both_precisions_through_the_engine():
    result = benchmark_training(image_size=32, batch_size=4, steps=1, repeats=1, amp="bf16", device_name="cpu")
    assert result["amp"] == "bf16" and result["fp32_images_per_s"] > 0 and result["amp_images_per_s"] > 0
    # the ratio of the unrounded rates, rounded to 0.01: the ratio of the rates as rounded (to 0.01 each)
    # may differ by what those roundings allow (a run gave 2.96 against 3.15 / 1.07 = 2.944)
    amp, fp32 = result["amp_images_per_s"], result["fp32_images_per_s"]
    slack = 0.005 + (amp / fp32) * (0.005 / amp + 0.005 / fp32)
    assert result["speedup"] == pytest.approx(amp / fp32, abs=slack)


def test_grey_input_benchmark_compares_two_equal_networks():
    result = benchmark_grey_input(image_size=32, batch_size=2, steps=1, repeats=1)
    assert result["max_logit_difference"] < 1e-4  # the one-channel stem computes the same function
    assert result["replicated_3ch_images_per_s"] > 0 and result["summed_stem_1ch_images_per_s"] > 0
    # With ImageNet's per-channel statistics summing the stem would change the model: refused.
    from utils.kinds.study.network import StudyClassifier

    with pytest.raises(ValueError, match="imagenet normalisation differs per channel"):
        one_channel_stem(StudyClassifier("resnet18", None))
