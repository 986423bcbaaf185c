import re
from pathlib import Path

import numpy as np
import pandas as pd

from utils.data.dicom import read_dicom
from utils.data.inputs import find_dicoms
from utils.data.labels import STUDY_COLUMNS, load_image_labels, load_study_labels
from utils.data.nih import NIH_HEADER
from utils.data.synthetic import make_nih_dataset, make_rsna_dataset, make_siim_dataset

HEX12 = re.compile(r"^[0-9a-f]{12}$")


# The competition's CSV headers (../shared/formats.md), checked against the real files where present.
COMPETITION_HEADERS = {
    "train_image_level.csv": "id,boxes,label,StudyInstanceUID",
    "train_study_level.csv": "id,Negative for Pneumonia,Typical Appearance,Indeterminate Appearance,"
                             "Atypical Appearance",
    "sample_submission.csv": "id,PredictionString",
}


def test_competition_layout_and_csv_headers(siim_dataset):
    """Needs nothing from ../shared: the layout, ids and headers of the competition folder."""
    data = siim_dataset
    for name in ("train_image_level.csv", "train_study_level.csv", "sample_submission.csv",
                 "test_image_level.csv", "test_study_level.csv"):
        assert (data / name).is_file()
    for name, header in COMPETITION_HEADERS.items():
        assert (data / name).read_text().splitlines()[0] == header, name
    dicoms = find_dicoms(data / "train")
    images = load_image_labels(data / "train_image_level.csv")
    assert sorted(p.stem for p in dicoms) == sorted(images["image_id"])
    for path in dicoms:
        study, series, image = path.parent.parent.name, path.parent.name, path.stem
        assert all(HEX12.match(x) for x in (study, series, image))
        header = read_dicom(path).header
        assert (header.study_uid, header.series_uid, header.image_uid) == (study, series, image)
        assert HEX12.match(header.patient_id)


def test_the_headers_are_those_of_the_real_files(shared):
    real = shared("siim-labels")
    for name in ("train_image_level.csv", "train_study_level.csv"):
        assert (real / name).read_text().splitlines()[0] == COMPETITION_HEADERS[name], name


def test_label_content_is_like_the_competition(siim_dataset):
    table = load_image_labels(siim_dataset / "train_image_level.csv").merge(
        load_study_labels(siim_dataset / "train_study_level.csv"), on="study_id")
    assert (table.loc[table["study_class"] == "negative", "n_boxes"] == 0).all()
    positive = table[table["study_class"] != "negative"]
    assert positive["n_boxes"].between(0, 3).all() and (positive["n_boxes"] > 0).mean() > 0.6
    multi = table.groupby("study_id").size()
    assert (multi > 1).any(), "some studies must hold several images"
    for study_id in multi[multi > 1].index:
        assert (table.loc[table["study_id"] == study_id, "n_boxes"] > 0).sum() <= 1
    # The label column is in submission form with the Kaggle number format.
    raw = pd.read_csv(siim_dataset / "train_image_level.csv", keep_default_na=False)
    assert set(raw.loc[raw["boxes"] == "", "label"]) <= {"none 1 0 0 1 1"}
    sample = pd.read_csv(siim_dataset / "sample_submission.csv")
    test_images = load_image_labels(siim_dataset / "test_image_level.csv")
    assert len(sample) == len(test_images) + test_images["study_id"].nunique()


def test_patients_have_several_studies_and_styles_vary(siim_dataset):
    headers = [read_dicom(p).header for p in find_dicoms(siim_dataset / "train")]
    per_patient = pd.Series([h.study_uid for h in headers]).groupby([h.patient_id for h in headers]).nunique()
    assert per_patient.max() >= 2
    assert {h.photometric for h in headers} == {"MONOCHROME1", "MONOCHROME2"}
    assert len({h.transfer_syntax for h in headers}) >= 3
    assert len({h.bits_stored for h in headers}) >= 3


def test_opacities_are_drawn_inside_their_boxes(siim_dataset):
    images = load_image_labels(siim_dataset / "train_image_level.csv").set_index("image_id")
    checked = 0
    for path in find_dicoms(siim_dataset / "train"):
        boxes = images.loc[path.stem, "boxes"]
        if len(boxes) == 0:
            continue
        pixels = read_dicom(path).pixels.astype(float)
        x1, y1, x2, y2 = boxes[0].round().astype(int)
        core = pixels[(y1 * 3 + y2) // 4:(y1 + 3 * y2) // 4, (x1 * 3 + x2) // 4:(x1 + 3 * x2) // 4]
        ring = pixels[max(y1 - 6, 0):y1, x1:x2]
        if ring.size:
            assert core.mean() > ring.mean()
        checked += 1
    assert checked >= 5


def test_deterministic_for_a_seed(tmp_path):
    make_siim_dataset(tmp_path / "a", 5, 2, seed=11, max_size=96, progress=False)
    make_siim_dataset(tmp_path / "b", 5, 2, seed=11, max_size=96, progress=False)
    for name in ("train_image_level.csv", "train_study_level.csv", "sample_submission.csv"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    first = find_dicoms(tmp_path / "a" / "train")[0]
    twin = tmp_path / "b" / first.relative_to(tmp_path / "a")
    np.testing.assert_array_equal(read_dicom(first).pixels, read_dicom(twin).pixels)


def test_nih_and_rsna_formats(tmp_path):
    make_nih_dataset(tmp_path / "nih", 12, seed=1, image_size=64, progress=False)
    text = (tmp_path / "nih" / "Data_Entry_2017.csv").read_text().splitlines()
    assert text[0] == NIH_HEADER and all(len(row.split(",")) == 11 for row in text[1:])
    train_val = (tmp_path / "nih" / "train_val_list.txt").read_text().split()
    test = (tmp_path / "nih" / "test_list.txt").read_text().split()
    assert len(train_val) + len(test) == 12 and test
    assert not {n[:8] for n in train_val} & {n[:8] for n in test}, "the split must be patient-wise"
    assert all((tmp_path / "nih" / "images_001" / "images" / n).is_file() for n in train_val + test)

    make_rsna_dataset(tmp_path / "rsna", 8, seed=1, image_size=96, progress=False)
    labels = pd.read_csv(tmp_path / "rsna" / "stage_2_train_labels.csv")
    assert list(labels.columns) == ["patientId", "x", "y", "width", "height", "Target"]
    assert labels.loc[labels["Target"] == 0, ["x", "y", "width", "height"]].isna().all().all()
    assert labels.loc[labels["Target"] == 1, "width"].gt(0).all()
    for patient_id in labels["patientId"].unique():
        image = read_dicom(tmp_path / "rsna" / "stage_2_train_images" / f"{patient_id}.dcm")
        assert image.header.bits_stored == 8 and image.pixels.shape == (96, 96)


def test_cli_writes_the_folder(tmp_path):
    from train.make_synthetic import main

    main(["--out", str(tmp_path / "d"), "--train-studies", "3", "--test-studies", "2", "--max-size", "64"])
    assert len(find_dicoms(tmp_path / "d" / "test")) >= 2
    assert Path(tmp_path / "d" / "train_study_level.csv").read_text().startswith("id," + ",".join(STUDY_COLUMNS))


def _write_and_read_back(folder: str, syntax: str) -> None:
    import pydicom

    from utils.data.dicom_writer import write_dicom

    for photometric in ("MONOCHROME1", "MONOCHROME2"):
        for rows, cols in ((205, 205), (187, 165), (64, 64)):
            stored = np.random.default_rng(rows).integers(0, 256, size=(rows, cols)).astype(np.uint8)
            path = Path(folder) / f"{syntax}_{photometric}_{cols}.dcm"
            write_dicom(path, stored, bits_stored=8, photometric=photometric, syntax=syntax)
            ds = pydicom.dcmread(path)
            assert ds.file_meta.TransferSyntaxUID.is_compressed and ds.BitsStored == 8, path
            assert np.array_equal(ds.pixel_array, stored), path


def test_8_bit_rows_of_odd_length_are_written_in_every_syntax(tmp_path):
    """RLE and JPEG Lossless of 8-bit images with an odd number of columns: before, the default RLE encoder
    aborted the process and GDCM refused JPEG Lossless, so make_synthetic died for about one seed in six at
    its default sizes (1, 8, 13, 25, 26, ...). Each syntax runs in its own process: an abort fails it alone."""
    import multiprocessing

    context = multiprocessing.get_context("fork")
    for syntax in ("rle", "jpeg_lossless", "jpeg_ls", "jpeg2000"):
        case = context.Process(target=_write_and_read_back, args=(str(tmp_path), syntax))
        case.start()
        case.join(120)
        assert case.exitcode == 0, f"{syntax}: exit code {case.exitcode}"


def test_the_seeds_that_failed_now_write_their_dataset(tmp_path):
    for seed in (1, 8):
        counts = make_siim_dataset(tmp_path / str(seed), train_studies=60, test_studies=20, seed=seed, progress=False)
        assert len(find_dicoms(tmp_path / str(seed) / "train")) == counts["train"]
