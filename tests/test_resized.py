"""Resized copies of the competition (the 256/512/1024 px JPG/PNG datasets most competitors train on):
recognised by their contents, prepared into the same meta.csv as the DICOMs (boxes scaled per axis
with the original sizes), every bad item reported instead of a crash, the same pixels from a DICOM
as from its resized copy, and the whole path end to end on synthetic and on real radiographs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
from conftest import REPO, TINY_TRAIN_ALL

from infer import make_submission
from train import prepare as prepare_script
from train import train_all
from utils.data.decoding_cache import decode_one
from utils.data.dicom_writer import write_dicom
from utils.data.images_to_predict import find_test_images
from utils.data.inputs import LAYOUT_DICOM, LAYOUT_RESIZED, PreparationInputError, detect_layout
from utils.data.labels import load_image_labels
from utils.data.prepare import prepare_resized, write_resized_subset
from utils.data.resized_copy import make_resized_copy
from utils.data.submission import parse_prediction_string, read_submission, submission_problems
from utils.ensemble.manifest import read_manifest
from utils.scoring.detection import read_detection_table

REAL256 = REPO / "train" / "configs" / "real256.yaml"


@pytest.fixture(scope="session")
def resized_dataset(siim_dataset, tmp_path_factory) -> Path:
    """The synthetic competition folder as a 96 px resized copy."""
    out = tmp_path_factory.mktemp("resized")
    make_resized_copy(siim_dataset, out, size=96, progress=False)
    return out


def _copy(folder: Path, tmp_path: Path) -> Path:
    target = tmp_path / "copy"
    shutil.copytree(folder, target)
    return target


def test_the_layout_is_recognised_by_its_contents(siim_dataset, resized_dataset, tmp_path):
    assert detect_layout(siim_dataset) == LAYOUT_DICOM
    assert detect_layout(resized_dataset) == LAYOUT_RESIZED
    meta = pd.read_csv(resized_dataset / "meta.csv")
    assert list(meta.columns) == ["image_id", "dim0", "dim1", "split"]
    assert cv2.imread(str(next((resized_dataset / "train").glob("*.jpg"))), cv2.IMREAD_UNCHANGED).shape == (96, 96)
    (tmp_path / "train").mkdir()
    with pytest.raises(PreparationInputError, match="neither the competition's DICOM folder"):
        detect_layout(tmp_path)


def test_prepared_resized_copy_keeps_original_boxes_and_sizes(siim_dataset, resized_dataset, tmp_path):
    table = prepare_resized(resized_dataset, tmp_path, sizes=(64,), n_folds=3,
                            patients=resized_dataset / "train_meta.csv", progress=False)
    labels = load_image_labels(resized_dataset / "train_image_level.csv").set_index("image_id")
    meta = pd.read_csv(resized_dataset / "meta.csv", dtype={"image_id": str}).set_index("image_id")
    assert set(table["image_id"]) == set(labels.index)
    assert (tmp_path / "failures.csv").read_text().strip() == "path,reason"
    # The prepared contract is the DICOMs': original sizes from meta.csv, boxes in original pixels,
    # patients from the table (a patient never spans two folds).
    from utils.data.prepare import prepare_competition

    from_dicoms = prepare_competition(siim_dataset, tmp_path / "dicom", sizes=(64,), n_folds=3, progress=False)
    columns = ["image_id", "study_id", "patient_id", "original_height", "original_width", "boxes", "used", "fold"]
    pd.testing.assert_frame_equal(table[columns].sort_values("image_id").reset_index(drop=True),
                                  from_dicoms[columns].sort_values("image_id").reset_index(drop=True))
    assert (table.groupby("patient_id")["fold"].nunique() == 1).all()
    # Boxes normalised per axis by the original size are the boxes of the square resized image.
    detection = read_detection_table(tmp_path / "meta.csv", 64, 64).set_index("image_id")
    boxed = labels[labels["n_boxes"] > 0].index[0]
    height, width = meta.loc[boxed, ["dim0", "dim1"]]
    expected = labels.loc[boxed, "boxes"] / np.array([width, height, width, height])
    np.testing.assert_allclose(detection.loc[boxed, "boxes_norm"], expected, atol=1e-4)


def test_every_bad_item_of_a_resized_copy_is_reported_and_skipped(resized_dataset, tmp_path):
    data = _copy(resized_dataset, tmp_path)
    meta = pd.read_csv(data / "meta.csv", dtype={"image_id": str})
    train_ids = meta.loc[meta["split"] == "train", "image_id"].tolist()
    missing, zero_size, unreadable, unlisted = train_ids[:4]
    (data / "train" / f"{missing}.jpg").unlink()  # listed in meta.csv, no file: also a label row without image
    meta.loc[meta["image_id"] == zero_size, "dim0"] = 0
    jpeg = data / "train" / f"{unreadable}.jpg"
    jpeg.write_bytes(jpeg.read_bytes()[:20])  # cut inside the header
    meta = meta[meta["image_id"] != unlisted]  # a file without a meta.csv row
    meta.to_csv(data / "meta.csv", index=False)
    (data / "train" / "stray00000000.png").write_bytes(b"")  # neither listed nor labelled

    table = prepare_resized(data, tmp_path / "prepared", sizes=(64,), n_folds=3, progress=False)
    failures = pd.read_csv(tmp_path / "prepared" / "failures.csv")
    reasons = "\n".join(failures["path"] + ": " + failures["reason"])
    assert f"{missing}: listed in meta.csv but no image file" in reasons
    assert f"image {missing}: label row without an image" in reasons
    assert f"image {zero_size}: original size dim0=0" in reasons
    assert f"{unreadable}.jpg: not a DICOM, PNG or JPEG image" in reasons
    assert f"{unlisted}.jpg: no meta.csv row (original size unknown)" in reasons
    assert "stray00000000.png: no meta.csv row" in reasons
    bad = table.set_index("image_id").loc[[missing, zero_size, unreadable, unlisted]]
    assert (~bad["used"]).all() and (bad["excluded_reason"] == "no_decoded_image").all()
    assert table["used"].sum() == len(train_ids) - 4


def test_prepare_script_names_the_file_when_the_copy_cannot_be_used(resized_dataset, tmp_path):
    data = _copy(resized_dataset, tmp_path)
    (data / "train_image_level.csv").unlink()
    with pytest.raises(SystemExit, match="train_image_level.csv: file not found"):
        prepare_script.main(["--data-dir", str(data), "--out", str(tmp_path / "out"), "--size", "64"])
    with pytest.raises(SystemExit, match="patient table not found"):
        prepare_script.main(["--data-dir", str(resized_dataset), "--out", str(tmp_path / "out"), "--size", "64",
                             "--patients", str(tmp_path / "absent.csv")])


def test_resized_test_split_needs_its_study_table_and_builds_the_sample(resized_dataset):
    with pytest.raises(FileNotFoundError, match="--test-meta"):
        find_test_images(resized_dataset)
    sample, images = find_test_images(resized_dataset, resized_dataset / "test_meta.csv")
    table = pd.read_csv(resized_dataset / "test_meta.csv", dtype=str)
    assert len(sample) == table["studyid"].nunique() + len(table) == len(images) + table["studyid"].nunique()
    meta = pd.read_csv(resized_dataset / "meta.csv", dtype={"image_id": str}).set_index("image_id")
    assert all((i.original_height, i.original_width) == tuple(meta.loc[i.image_id, ["dim0", "dim1"]])
               for i in images)


# ------------------------------------------------------------------ a DICOM and its resized copy agree

ENCODINGS = {  # name -> how the display image is stored
    "8-bit": dict(bits=8),
    "MONOCHROME1": dict(bits=8, photometric="MONOCHROME1"),
    "12 in 16 bits, rescale and window": dict(bits=12, rescale=(2.0, -1024.0), window=True),
    "RLE": dict(bits=12, syntax="rle"),
    "JPEG 2000": dict(bits=12, rescale=(1.0, -1024.0), syntax="jpeg2000"),
}


@pytest.mark.parametrize("encoding", list(ENCODINGS))
def test_a_dicom_gives_the_prepared_pixels_of_its_resized_copy(encoding, shared, tmp_path):
    """The copies were made with VOI LUT, MONOCHROME1 inversion and min/max to 8 bits; the reader does
    the same, so a real image stored as a DICOM prepares to the pixels of the image itself."""
    folder = shared("siim-256", "train")
    image = cv2.imread(str(sorted(folder.glob("*.jpg"))[7]), cv2.IMREAD_GRAYSCALE)
    # The copies are min/max normalised before their JPEG encoding; restore the full range the
    # writer's min/max step would otherwise re-stretch.
    image = cv2.normalize(image, None, 0, 255, cv2.NORM_MINMAX)
    spec = ENCODINGS[encoding]
    photometric = spec.get("photometric", "MONOCHROME2")
    display = 255 - image if photometric == "MONOCHROME1" else image
    if spec["bits"] == 8:
        stored = display.astype(np.uint8)
    else:
        stored = (display.astype(np.uint16) * 16 + 7)  # 12 bits in a 16-bit word, not starting at 0
    window = None
    if spec.get("window"):
        slope, intercept = spec["rescale"]
        low, high = stored.min() * slope + intercept, stored.max() * slope + intercept
        window = ((low + high) / 2 + 0.5, high - low + 2)  # the whole range, no clipping
    dicom = write_dicom(tmp_path / "image.dcm", stored, photometric=photometric, bits_stored=spec["bits"],
                        rescale=spec.get("rescale"), window=window, syntax=spec.get("syntax", "explicit_le"))
    png = tmp_path / "image.png"
    cv2.imwrite(str(png), image)
    decode_one(png, tmp_path / "from_image", (256, 128))
    decode_one(dicom, tmp_path / "from_dicom", (256, 128))
    for size in (256, 128):
        ours = cv2.imread(str(tmp_path / "from_dicom" / f"images_{size}" / "image.png"), cv2.IMREAD_UNCHANGED)
        theirs = cv2.imread(str(tmp_path / "from_image" / f"images_{size}" / "image.png"), cv2.IMREAD_UNCHANGED)
        assert np.abs(ours.astype(int) - theirs.astype(int)).max() <= 1, (encoding, size)


# ------------------------------------------------------------------ end to end


def _train_and_submit(data: Path, test_table: Path, patients: Path, tmp_path: Path) -> tuple[pd.DataFrame, dict]:
    """train_all with the real256 recipe at a tiny size (up to the last model: the CV report is the main
    job's test), its pretrained Lite0 trunks kept, then make_submission on the test folder; returns the
    submission and the manifest."""
    run = tmp_path / "run"
    recipe_trunks = [f"{section}.arch=timm:tf_efficientnet_lite0" for section in ("study", "frcnn")]
    code = train_all.main(["--data-dir", str(data), "--out", str(run), "--config", str(REAL256), "--no-progress",
                           "--to-stage", "study", "--set", *TINY_TRAIN_ALL, *recipe_trunks,
                           f"prepare.patients={patients}"])
    assert code == 0, json.loads((run / "train_all.json").read_text())
    assert not (run / "report").exists()  # --to-stage study: the evaluate stage did not run
    out = tmp_path / "submission.csv"
    assert make_submission.main(["--data-dir", str(data), "--test-meta", str(test_table), "--weights-dir",
                                 str(run / "weights"), "--out", str(out), "--no-progress"]) == 0
    return read_submission(out), read_manifest(run / "weights")


def _check_submission(submission: pd.DataFrame, test_table: Path, sizes: pd.DataFrame) -> None:
    table = pd.read_csv(test_table, dtype=str)
    expected = {s + "_study" for s in table["studyid"]} | {i + "_image" for i in table["imageid"]}
    assert set(submission["id"]) == expected and len(submission) == len(expected)
    assert submission_problems(submission) == []
    size_of = sizes.set_index("image_id")
    boxes = 0
    for identifier, text in zip(submission["id"], submission["PredictionString"]):
        if identifier.endswith("_image"):
            height, width = size_of.loc[identifier[:-6], ["dim0", "dim1"]]
            for p in parse_prediction_string(text):
                if p.label == "opacity":
                    boxes += 1
                    x1, y1, x2, y2 = p.box
                    assert 0 <= x1 < x2 <= width and 0 <= y1 < y2 <= height
    assert boxes > 0  # boxes came back, in ORIGINAL pixels (checked against each image's own size)


@pytest.mark.slow
def test_resized_copy_end_to_end_on_real_radiographs_or_a_synthetic_copy(resized_dataset, tmp_path):
    """The resized path, training to submission: on 36 real training and 8 real test radiographs of
    ../shared/siim-256 when present, else (a fresh clone) on the synthetic copy. Once, not twice: the
    code path is the same and each run costs a minute and a half of the suite."""
    from conftest import SHARED

    real = SHARED / "siim-256"
    if real.is_dir() and (SHARED / "siim-labels" / "test_meta.csv").is_file():
        data = write_resized_subset(real, tmp_path / "siim-subset", 36, SHARED / "siim-labels" / "test_meta.csv", 8)
        patients = SHARED / "siim-labels" / "train_meta.csv"
    else:
        data, patients = resized_dataset, resized_dataset / "train_meta.csv"
    submission, manifest = _train_and_submit(data, data / "test_meta.csv", patients, tmp_path)
    assert set(manifest["models"]) == {"study", "frcnn", "yolo"}
    for name in ("study", "frcnn"):  # the manifest alone says how to feed the Lite weights
        config = manifest["models"][name]["config"]
        assert (config["arch"], config["backbone"], config["normalization"]) == (
            "timm:tf_efficientnet_lite0", "imagenet-lite", "lite")
    yolo = manifest["models"]["yolo"]["config"]  # the recipe's YOLO on the same trunk, predicted without the wheel
    assert (yolo["trunk"], yolo["pretrained"]) == ("timm:tf_efficientnet_lite0", "imagenet-lite")
    _check_submission(submission, data / "test_meta.csv", pd.read_csv(data / "meta.csv", dtype={"image_id": str}))
