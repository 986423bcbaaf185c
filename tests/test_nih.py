"""NIH ChestX-ray14 labels and splits: the file's quirks, bad input, the real official lists."""

from __future__ import annotations

import numpy as np
import pytest

from utils.data.nih import (
    NIH_FINDINGS,
    NIH_HEADER,
    NihLabelError,
    assign_nih_splits,
    findings_to_targets,
    load_nih_entries,
)


def test_findings_to_multi_hot():
    target = findings_to_targets("Cardiomegaly|Emphysema")
    assert target.dtype == np.float32 and target.sum() == 2
    assert target[NIH_FINDINGS.index("Cardiomegaly")] == 1 and target[NIH_FINDINGS.index("Emphysema")] == 1
    assert findings_to_targets("No Finding").sum() == 0
    with pytest.raises(NihLabelError, match="unknown finding 'Covid'"):
        findings_to_targets("Covid")


def _folder(tmp_path, rows: list[str], images: list[str]):
    (tmp_path / "images_001" / "images").mkdir(parents=True)
    for name in images:
        (tmp_path / "images_001" / "images" / name).write_bytes(b"")
    (tmp_path / "Data_Entry_2017.csv").write_text(NIH_HEADER + "\n" + "\n".join(rows) + "\n")
    return tmp_path


def test_rows_with_a_trailing_comma_and_missing_images(tmp_path, caplog):
    folder = _folder(tmp_path, [
        "00000001_000.png,Cardiomegaly|Emphysema,0,1,58,M,PA,2894,2729,0.143,0.143,",
        "00000001_001.png,No Finding,1,1,58,M,PA,2894,2729,0.143,0.143,",
        "00000002_000.png,Hernia,0,2,80,F,AP,2500,2048,0.168,0.168,",
    ], ["00000001_000.png", "00000001_001.png"])
    entries = load_nih_entries(folder)
    assert list(entries["image_index"]) == ["00000001_000.png", "00000001_001.png"]
    assert list(entries["patient_id"]) == ["1", "1"]
    assert entries["targets"].iloc[0].sum() == 2 and entries["targets"].iloc[1].sum() == 0
    assert "1 of 3 listed images not found" in caplog.text


def test_bad_files_name_the_file(tmp_path):
    with pytest.raises(NihLabelError, match="Data_Entry_2017.csv: file not found"):
        load_nih_entries(tmp_path)
    (tmp_path / "Data_Entry_2017.csv").write_text("id,label\n")
    with pytest.raises(NihLabelError, match="unexpected header"):
        load_nih_entries(tmp_path)


def test_synthetic_splits_are_patient_wise(nih_dataset):
    entries = load_nih_entries(nih_dataset)
    split = assign_nih_splits(entries, nih_dataset, val_fraction=0.2, seed=0)
    assert set(split) == {"train", "val", "test"}
    official_test = set((nih_dataset / "test_list.txt").read_text().split())
    assert set(entries["image_index"][split == "test"]) == official_test
    patients = {s: set(entries["patient_id"][split == s]) for s in ("train", "val", "test")}
    assert not (patients["train"] & patients["val"]) and not (patients["train"] & patients["test"])
    # Without the lists, a patient-wise test split is made.
    split = assign_nih_splits(entries, None, val_fraction=0.2, seed=0)
    assert not set(entries["patient_id"][split == "test"]) & set(entries["patient_id"][split == "train"])


def test_the_real_official_lists_are_patient_wise(shared):
    lists = shared("nih-labels")
    train_val = (lists / "train_val_list.txt").read_text().split()
    test = (lists / "test_list.txt").read_text().split()
    assert len(train_val) + len(test) == 112120
    patients = {name.split("_")[0] for name in train_val}
    assert not patients & {name.split("_")[0] for name in test}
