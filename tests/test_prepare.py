import itertools
import os
import shutil
import signal

import cv2
import pandas as pd
import pytest
from conftest import leftover_children_after_kill

from utils.data.inputs import find_dicoms
from utils.data.labels import boxes_from_json
from utils.data.prepare import prepare_competition


def test_prepare_writes_pngs_meta_and_skips_a_bad_dicom(siim_dataset, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(siim_dataset, data)
    victim = find_dicoms(data / "train")[0]
    victim.write_bytes(victim.read_bytes()[:300])  # truncated
    out = tmp_path / "prepared"
    meta = prepare_competition(data, out, sizes=(64, 32), workers=2, n_folds=3, progress=False)

    failures = pd.read_csv(out / "failures.csv")
    assert failures["path"].tolist() == [str(victim)] and failures["reason"].iloc[0]
    saved = pd.read_csv(out / "meta.csv", dtype={"image_id": str})
    assert len(saved) == len(meta) == len(find_dicoms(data / "train"))
    bad = saved[saved["image_id"] == victim.stem].iloc[0]
    assert not bad["used"] and bad["excluded_reason"] == "no_decoded_image"
    good = saved[saved["image_id"] != victim.stem]
    for _, row in good.iterrows():
        for size in (64, 32):
            image = cv2.imread(str(out / row[f"path_{size}"]), cv2.IMREAD_UNCHANGED)
            assert image.shape == (size, size)
        assert row["original_height"] > 0 and row["original_width"] > 0
        assert len(boxes_from_json(row["boxes"])) == row["n_boxes"]
    assert set(saved["fold"]) == {0, 1, 2}
    assert (saved.groupby("patient_id")["fold"].nunique() == 1).all()


def test_prepare_resumes_without_decoding_again(siim_dataset, tmp_path):
    out = tmp_path / "prepared"
    prepare_competition(siim_dataset, out, sizes=(48,), progress=False)
    png = next((out / "images_48").glob("*.png"))
    before = png.stat().st_mtime_ns
    lines = (out / "headers.jsonl").read_text().count("\n")
    png.unlink()  # one image lost: only that one is decoded again
    # a run killed mid-write left a temporary file (its pid is gone); a live process's is kept
    stale = out / "images_48" / f"{png.stem}.tmp-{2**22 + 12345}.png"
    live = out / "images_48" / f"another.tmp-{os.getpid()}.png"
    stale.write_bytes(b"half")
    live.write_bytes(b"half")
    second = next(p for p in (out / "images_48").glob("*.png") if ".tmp-" not in p.name)
    second_mtime = second.stat().st_mtime_ns
    meta = prepare_competition(siim_dataset, out, sizes=(48,), progress=False)
    assert png.is_file() and png.stat().st_mtime_ns != before
    assert not stale.exists() and live.exists()
    live.unlink()
    assert second.stat().st_mtime_ns == second_mtime
    assert (out / "headers.jsonl").read_text().count("\n") == lines + 1
    assert meta["used"].sum() > 0 and not meta["image_id"].duplicated().any()


def test_a_line_cut_short_by_a_killed_run_is_decoded_again(siim_dataset, tmp_path):
    out = tmp_path / "prepared"
    prepare_competition(siim_dataset, out, sizes=(32,), progress=False)
    lines = (out / "headers.jsonl").read_text().splitlines()
    (out / "headers.jsonl").write_text("\n".join(lines[:-1]) + "\n" + lines[-1][:20])
    meta = prepare_competition(siim_dataset, out, sizes=(32,), progress=False)
    assert meta["used"].sum() > 0 and not meta["original_height"].isna().any()
    records = (out / "headers.jsonl").read_text().splitlines()
    assert records[-1] == lines[-1] and records[-2] == lines[-1][:20]


def test_an_image_id_in_two_series_is_kept_once_with_a_warning(siim_dataset, tmp_path, caplog):
    split = tmp_path / "test"
    shutil.copytree(siim_dataset / "test", split)
    first = find_dicoms(split)[0]
    twin = first.parent.parent / "zzz-other-series" / first.name
    twin.parent.mkdir()
    shutil.copy(first, twin)
    with caplog.at_level("WARNING"):
        found = find_dicoms(split)
    assert [p for p in found if p.stem == first.stem] == [min(first, twin)]
    assert f"image id {first.stem} found twice" in caplog.text
    assert len(found) == len(find_dicoms(siim_dataset / "test"))


@pytest.mark.parametrize("workers", [1, 2])
def test_a_full_disk_stops_prepare_in_one_line_and_a_rerun_finishes(siim_dataset, tmp_path, monkeypatch, capsys,
                                                                    workers):
    """The disk fills at the fourth PNG: the run fails (before, the image was listed as a failure and the
    run exited 0 with the rest of the data missing), in one line naming the file; what was written stays,
    no temporary is left, and the rerun with room decodes only what is missing."""
    from train import prepare as prepare_script

    real_imwrite = cv2.imwrite
    written = []

    def imwrite_until_full(path, pixels):
        if len(written) >= 3:
            return False  # what OpenCV answers when the disk is full
        written.append(path)
        return real_imwrite(path, pixels)

    monkeypatch.setattr(cv2, "imwrite", imwrite_until_full)
    out = tmp_path / "prepared"
    argv = ["--data-dir", str(siim_dataset), "--out", str(out), "--size", "48", "--workers", str(workers)]
    with pytest.raises(SystemExit) as stop:
        prepare_script.main(argv)
    message = str(stop.value)
    assert message.startswith(f"error: {out / 'images_48'}/") and "the PNG could not be written" in message
    assert "MiB free there" in message and "\n" not in message
    kept = sorted(p.name for p in (out / "images_48").iterdir())
    assert 1 <= len(kept) <= 3 * workers and not any(".tmp-" in name for name in kept)  # 3 per process
    assert not (out / "meta.csv").exists()
    monkeypatch.setattr(cv2, "imwrite", real_imwrite)
    prepare_script.main(argv)
    meta = pd.read_csv(out / "meta.csv")
    assert meta["used"].sum() > 0 and len(pd.read_csv(out / "failures.csv")) == 0
    assert len(list((out / "images_48").glob("*.png"))) == len(find_dicoms(siim_dataset / "train"))


@pytest.mark.parametrize("workers", [1, 2])
def test_a_file_name_that_is_not_utf8_is_listed_not_a_crash(siim_dataset, tmp_path, workers):
    """Linux allows any bytes in a name; before, such a training DICOM crashed prepare on every run (a
    segfault in the PNG write with one worker, BrokenProcessPool with two)."""
    data = tmp_path / "data"
    shutil.copytree(siim_dataset, data)
    victim = find_dicoms(data / "train")[0]
    renamed = os.path.join(os.fsencode(victim.parent), b"\xff\xfeimage.dcm")
    os.rename(victim, renamed)
    out = tmp_path / "prepared"
    meta = prepare_competition(data, out, sizes=(32,), workers=workers, n_folds=3, progress=False)
    failures = pd.read_csv(out / "failures.csv")
    assert failures["path"].tolist() == [f"{victim.parent}/\\xff\\xfeimage.dcm"]
    assert failures["reason"].tolist() == ["its file or folder name is not valid UTF-8: rename it"]
    assert meta["used"].sum() > 0
    assert len(list((out / "images_32").glob("*.png"))) == len(find_dicoms(data / "train")) - 1


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_a_killed_prepare_leaves_no_worker_behind(shared, tmp_path, sig):
    """prepare with two workers on the real images, killed while they decode (SIGKILL runs no cleanup):
    its pool workers die with it (before: they waited forever)."""
    argv = ["train/prepare.py", "--data-dir", str(shared("siim-256")), "--out", str(tmp_path / "prepared"),
            "--size", "64", "--workers", "2"]
    pngs = tmp_path / "prepared" / "images_64"

    def busy() -> bool:  # both workers past their start-up: a few chunks of 4 images written
        return pngs.is_dir() and len(list(itertools.islice(pngs.iterdir(), 40))) >= 40

    assert leftover_children_after_kill(argv, sig, children=2, busy=busy) == []


def test_a_training_folder_that_cannot_be_read_is_listed(siim_dataset, tmp_path, monkeypatch):
    """A study folder that cannot be listed (no permission: simulated, the tests may run as root) hides
    its images from the search; they are listed in failures.csv by folder (before: silently missing)."""
    real_scandir = os.scandir
    study = sorted((siim_dataset / "train").iterdir())[0]

    def scandir(path="."):
        if os.fspath(path) == str(study):
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    out = tmp_path / "prepared"
    prepare_competition(siim_dataset, out, sizes=(32,), n_folds=3, progress=False)
    failures = pd.read_csv(out / "failures.csv")
    assert failures.values.tolist() == [[str(study), "folder cannot be read (Permission denied): its images are left "
                                                     "out"]]
