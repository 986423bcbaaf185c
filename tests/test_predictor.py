"""The ensemble predictor: the same pixels and preprocessing as training, exact flip TTA, fallbacks for
unreadable images, the submission it assembles, and clear errors for a bad weights folder."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import torch
from conftest import REPO, leftover_children_after_kill

from utils.benchmarking.benchmarks import write_untrained_weights
from utils.data.boxes import as_boxes, hflip_xyxy
from utils.data.decoding_cache import decode_one, image_path
from utils.data.inputs import find_dicoms
from utils.data.presets import build_transform
from utils.data.submission import parse_prediction_string, submission_problems
from utils.ensemble.assemble import assemble_submission
from utils.ensemble.config import EnsembleConfig
from utils.ensemble.fusion import UNINFORMED_NONE, ImagePrediction
from utils.ensemble.manifest import ManifestError
from utils.prediction.predictor import Ensemble, InputImage, decode_test_image, model_input

DEMO = REPO / "train" / "configs" / "demo.yaml"
# A ResNet-18 study trunk (the plumbing does not depend on it; ResNeXt-50 is 4x the work). The detector keeps
# ResNeXt-50: a random ResNet-18 one scores its boxes within thousandths of each other (0.50 to 0.53), so the
# rounding between an image and its mirror reorders them, the fusion groups them differently, and the exact
# flip check fails.
TINY_MODELS = {
    "study": {"image_size": 64, "arch": "resnet18"},
    "frcnn": {"image_size": 64, "predict_size": 96, "proposals": 50, "roi_samples": 32, "freeze_bn": False},
    "yolo": {"model": "yolov8n.yaml", "image_size": 64, "predict_size": 96},
    "ensemble": {"workers": 0, "device": "cpu", "batch_size": 4, "amp": "off"},
}


def _linked_copy(weights_dir, out):
    """The weights folder with its weights files hard-linked (hundreds of MB a copy otherwise) and its
    own manifest, so a test may rewrite the manifest or replace a file (:func:`_overwrite`) freely."""
    shutil.copytree(weights_dir, out, copy_function=os.link)
    manifest = out / "manifest.json"
    text = manifest.read_bytes()
    manifest.unlink()
    manifest.write_bytes(text)
    return out


def _overwrite(path, data: bytes) -> None:
    """Replace a (hard-linked) file's content without touching the file it is linked to."""
    path.unlink()
    path.write_bytes(data)


@pytest.fixture(scope="module")
def untrained_weights(tmp_path_factory):
    """Randomly initialised models of every kind, two folds each: enough to test the plumbing."""
    out = tmp_path_factory.mktemp("untrained_weights")
    write_untrained_weights(out, DEMO, folds=2, overrides=TINY_MODELS)
    return out


@pytest.fixture(scope="module")
def ensemble(untrained_weights):
    return Ensemble(untrained_weights)


def test_decoding_gives_the_pixels_the_models_were_trained_on(siim_dataset, tmp_path):
    for path in find_dicoms(siim_dataset / "test")[:3]:
        decode_one(path, tmp_path, (64, 96))
        image = decode_test_image(path, (64, 96), image_id=path.stem)
        assert image.error is None
        for size in (64, 96):
            np.testing.assert_array_equal(image.pixels[size], cv2.imread(str(image_path(tmp_path, size, path.stem)), 0))


def test_preprocessing_on_the_device_equals_the_evaluation_presets():
    rng = np.random.default_rng(0)
    gray = rng.integers(0, 256, (2, 64, 64), dtype=np.uint8)
    for k in range(2):
        rgb = np.repeat(gray[k][..., None], 3, axis=2)
        study = build_transform("study_eval", 64)(image=rgb)["image"]
        detector = build_transform("detector_eval", 64)(image=rgb, bboxes=np.zeros((0, 4)), labels=[])["image"]
        torch.testing.assert_close(model_input(torch.from_numpy(gray))[k], study, atol=1e-6, rtol=0)
        torch.testing.assert_close(model_input(torch.from_numpy(gray))[k], detector, atol=1e-6, rtol=0)


def test_the_manifest_decides_the_models_and_sizes(ensemble, untrained_weights):
    manifest = json.loads((untrained_weights / "manifest.json").read_text())
    assert {m.name: (m.kind, m.input_size, m.folds) for m in ensemble.members} == {
        "study": ("study", 64, [0, 1]), "frcnn": ("frcnn", 96, [0, 1]),
        "yolo": ("yolo", 96, [0, 1])}
    assert ensemble.sizes == (64, 96)
    assert ensemble.config.batch_size == manifest["ensemble"]["batch_size"] == 4


def test_a_weights_folder_written_under_the_older_names_predicts_the_same(untrained_weights, siim_dataset,
                                                                         tmp_path):
    """Before each kind had one name (2026-12-07) the manifest said model and kind ``faster_rcnn``, kind
    ``study_classifier``, and the ensemble's settings named ``faster_rcnn``: such a folder is read through
    utils.core.kind_names.LEGACY_NAMES and predicts exactly what the same weights do under today's names."""
    now, old = _linked_copy(untrained_weights, tmp_path / "now"), _linked_copy(untrained_weights, tmp_path / "old")
    for folder, name, kind in ((now, "frcnn", "frcnn"), (old, "faster_rcnn", "faster_rcnn")):
        manifest = json.loads((folder / "manifest.json").read_text())
        entry = manifest["models"].pop("frcnn")
        if folder == old:
            (folder / "faster_rcnn").mkdir()
            for fold, relative in entry["files"].items():
                os.rename(folder / relative, folder / "faster_rcnn" / f"fold{fold}.pt")
                entry["files"][fold] = f"faster_rcnn/fold{fold}.pt"
            manifest["models"]["study"]["kind"] = "study_classifier"
        manifest["models"][name] = {**entry, "kind": kind}
        manifest["ensemble"].update(model_weights={name: 0.7, "yolo": 0.4}, score_powers={name: 1.5})
        (folder / "manifest.json").write_text(json.dumps(manifest))
    paths = find_dicoms(siim_dataset / "test")[:3]
    ensembles = [Ensemble(folder) for folder in (now, old)]
    assert [sorted((m.name, m.kind) for m in e.members) for e in ensembles] == [
        [("frcnn", "frcnn"), ("study", "study"), ("yolo", "yolo")]] * 2
    assert ensembles[1].config.model_weights == {"frcnn": 0.7, "yolo": 0.4}
    assert ensembles[1].config.score_powers == {"frcnn": 1.5}
    for a, b in zip(*(e.predict_paths(paths, workers=0, progress=False) for e in ensembles)):
        np.testing.assert_array_equal(a.boxes, b.boxes)
        np.testing.assert_array_equal(a.scores, b.scores)
        np.testing.assert_array_equal(a.study_probs, b.study_probs)
        assert a.none_prob == b.none_prob
    manifest = json.loads((old / "manifest.json").read_text())
    manifest["models"]["frcnn"] = manifest["models"]["faster_rcnn"]
    (old / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ManifestError, match="models 'faster_rcnn' and 'frcnn' are one model"):
        Ensemble(old)


def test_a_stored_manifest_of_the_older_names_reads_under_todays(tmp_path):
    """tests/data/manifest_before_one_name.json: the manifest make demo wrote on 2026-12-07 before the
    rename (commit 95bce30); every entry and its stored config read as today's."""
    from utils.core.config import from_mapping
    from utils.ensemble.manifest import read_manifest
    from utils.kinds.members import MEMBER_TYPES

    shutil.copy(REPO / "tests" / "data" / "manifest_before_one_name.json", tmp_path / "manifest.json")
    raw = json.loads((tmp_path / "manifest.json").read_text())
    assert {spec["kind"] for spec in raw["models"].values()} == {"faster_rcnn", "study_classifier", "yolo"}
    manifest = read_manifest(tmp_path)
    assert {name: spec["kind"] for name, spec in manifest["models"].items()} == {
        "frcnn": "frcnn", "study": "study", "yolo": "yolo"}
    for spec in manifest["models"].values():  # each stored config through today's schema
        member = MEMBER_TYPES[spec["kind"]]
        from_mapping(member.config_class, {**member.legacy_defaults, **spec["config"]}, spec["kind"])
    assert EnsembleConfig(**manifest["ensemble"]).model_weights == {
        "frcnn" if k == "faster_rcnn" else k: v for k, v in raw["ensemble"]["model_weights"].items()}


def _mirror(image: InputImage) -> InputImage:
    return InputImage(image.image_id, image.study_id, image.original_height, image.original_width,
                     {size: np.ascontiguousarray(p[:, ::-1]) for size, p in image.pixels.items()})


def test_flip_tta_is_exact(ensemble, siim_dataset):
    """With the flip TTA the whole ensemble is mirror-symmetric: the mirror image's fused boxes are the
    image's fused boxes flipped, with the same scores and study probabilities. That holds only if the
    mirror image's boxes are flipped back exactly."""
    path = find_dicoms(siim_dataset / "test")[0]
    image = decode_test_image(path, ensemble.sizes, image_id=path.stem, study_id="s")
    original, mirrored = ensemble.predict_batch([image, _mirror(image)])
    assert len(original.scores) > 0
    order_a, order_b = np.lexsort(original.boxes.T[::-1]), np.lexsort(hflip_xyxy(mirrored.boxes, 1.0).T[::-1])
    np.testing.assert_allclose(hflip_xyxy(mirrored.boxes, 1.0)[order_b], original.boxes[order_a], atol=1e-5)
    np.testing.assert_allclose(mirrored.scores[order_b], original.scores[order_a], atol=1e-5)
    np.testing.assert_allclose(mirrored.study_probs, original.study_probs, atol=1e-5)
    assert mirrored.none_prob == pytest.approx(original.none_prob, abs=1e-5)


def test_the_predictor_applies_every_study_view_of_the_manifest(untrained_weights, siim_dataset, tmp_path):
    """A study model whose manifest lists the eight views: each fold model sees exactly those eight views
    of the batch, in order, and the study probabilities are their mean, whatever the detectors' flip
    switch says; with ``study_tta`` off, the image alone."""
    from utils.kinds.study.network import StudyClassifier
    from utils.kinds.study.tta import EIGHT_VIEWS, apply_view

    weights = tmp_path / "weights"
    _linked_copy(untrained_weights, weights)
    manifest = json.loads((weights / "manifest.json").read_text())
    manifest["models"] = {"study": manifest["models"]["study"]}
    manifest["models"]["study"]["config"]["tta_views"] = list(EIGHT_VIEWS)
    (weights / "manifest.json").write_text(json.dumps(manifest))
    paths = find_dicoms(siim_dataset / "test")[:2]
    for switches, views in (({"study_tta": True, "tta_hflip": False}, EIGHT_VIEWS),
                            ({"study_tta": False, "tta_hflip": True}, ("identity",))):
        ensemble = Ensemble(weights, overrides={"device": "cpu", "workers": 0, **switches})
        member = ensemble.members[0]
        seen = {id(model): [] for model in member.models}
        for model in member.models:
            model.register_forward_hook(lambda module, args, output: seen[id(module)].append(args[0].clone()))
        predictions = ensemble.predict_paths(paths, progress=False)
        batch = model_input(torch.from_numpy(np.stack([
            decode_test_image(p, (member.input_size,), image_id=p.stem).pixels[member.input_size] for p in paths])))
        expected_probs = 0.0
        for model in member.models:
            assert len(seen[id(model)]) == len(views)
            for view, given in zip(views, seen[id(model)]):
                torch.testing.assert_close(given, apply_view(batch, view))
            with torch.no_grad():
                expected_probs += np.mean([StudyClassifier.probabilities(model(apply_view(batch, v)))[0].numpy()
                                           for v in views], axis=0)
        np.testing.assert_allclose(np.stack([p.study_probs for p in predictions]),
                                   expected_probs / len(member.models), atol=1e-5)


def test_the_flip_switch_and_the_study_views_are_two_keys_and_old_manifests_keep_their_meaning():
    from utils.ensemble.config import ensemble_config

    assert ensemble_config({"ensemble": {"tta_hflip": False, "study_tta": True}}).study_tta is True
    # Before 2026-12 one switch did both: an old manifest's tta_hflip false still turns the study views off.
    old = ensemble_config({"ensemble": {"tta_hflip": False}})
    assert old.tta_hflip is False and old.study_tta is False
    assert ensemble_config({"ensemble": {"tta_hflip": False}}, {"study_tta": True}).study_tta is True
    assert ensemble_config({}).study_tta is True and ensemble_config({}).tta_hflip is True


def test_yolo_leaves_the_torch_thread_count_alone(untrained_weights, siim_dataset):
    """ultralytics sets min(8, cpu_count - 1) threads when it first picks the CPU; the predictor undoes it."""
    from ultralytics.utils import NUM_THREADS

    path = find_dicoms(siim_dataset / "test")[0]
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(NUM_THREADS + 1)
        Ensemble(untrained_weights).predict_source(path)  # a fresh YOLO: its first call picks the device
        assert torch.get_num_threads() == NUM_THREADS + 1
    finally:
        torch.set_num_threads(before)


def test_mixed_precision_predicts_the_same_boxes_roughly(untrained_weights, ensemble, siim_dataset):
    """The autocast path (fp16 on a GPU; bf16 is what the CPU offers) runs and stays close to fp32."""
    path = find_dicoms(siim_dataset / "test")[0]
    full = ensemble.predict_source(path)
    mixed = Ensemble(untrained_weights, overrides={"amp": "bf16"}).predict_source(path)
    assert mixed.error is None and np.isfinite(mixed.boxes).all() and len(mixed.scores) > 0
    np.testing.assert_allclose(mixed.study_probs, full.study_probs, atol=0.05)


def test_the_channels_last_setting_keeps_the_predictions(untrained_weights, ensemble, siim_dataset):
    """``ensemble.channels_last`` stores the torch members' weights channels-last (YOLO keeps its own) and
    predicts what the contiguous layout predicts."""
    path = find_dicoms(siim_dataset / "test")[0]
    plain = ensemble.predict_source(path)
    channels_last = Ensemble(untrained_weights, overrides={"channels_last": True})
    convolutions = [m for member in channels_last.members if member.kind != "yolo" for model in member.models
                    for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convolutions and all(c.weight.is_contiguous(memory_format=torch.channels_last) for c in convolutions)
    found = channels_last.predict_source(path)
    np.testing.assert_allclose(found.study_probs, plain.study_probs, atol=1e-4)
    np.testing.assert_allclose(found.scores, plain.scores, atol=1e-4)
    np.testing.assert_allclose(found.boxes, plain.boxes, atol=1e-4)


def test_an_unreadable_image_gets_its_error_and_the_others_are_predicted(ensemble, siim_dataset, tmp_path):
    good = find_dicoms(siim_dataset / "test")[0]
    bad = tmp_path / "study" / "series" / "broken.dcm"
    bad.parent.mkdir(parents=True)
    bad.write_bytes(good.read_bytes()[:400])
    predictions = ensemble.predict_paths([bad, good], progress=False)
    assert [p.image_id for p in predictions] == ["broken", good.stem]
    assert predictions[0].error and "broken.dcm" not in predictions[0].error  # the reason; the id names the file
    assert predictions[1].error is None and predictions[1].study_probs is not None


def test_a_bug_while_decoding_is_raised_not_turned_into_a_fallback_row(ensemble, siim_dataset, monkeypatch):
    import utils.prediction.predictor as predictor

    def broken_reader(*args, **kwargs):
        raise KeyError("a programming error, not a bad file")

    monkeypatch.setattr(predictor, "read_radiograph", broken_reader)
    path = find_dicoms(siim_dataset / "test")[0]
    with pytest.raises(KeyError, match="a programming error"):
        decode_test_image(path, (64,), image_id=path.stem)
    with pytest.raises(KeyError, match="a programming error"):
        ensemble.predict_paths([path], progress=False, workers=0)


def test_a_missing_decoder_is_its_own_reason_with_what_to_install(tmp_path, monkeypatch):
    from pydicom.pixels.decoders.base import get_decoder
    from pydicom.uid import RLELossless

    from utils.data.dicom_writer import write_dicom
    from utils.ensemble.assemble import describe_unreadable, unreadable_summary

    path = write_dicom(tmp_path / "rle.dcm", np.full((32, 32), 700, np.uint16), bits_stored=12, syntax="rle")
    assert decode_test_image(path, (16,), image_id="rle").error is None
    decoder = get_decoder(RLELossless)  # as on a machine without pylibjpeg-rle (pydicom's own plugin removed)
    monkeypatch.setattr(decoder, "_available", {})
    monkeypatch.setattr(decoder, "_unavailable", {"pylibjpeg": ("pylibjpeg>=2.0", "pylibjpeg-rle>=2.0")})
    reason = decode_test_image(path, (16,), image_id="rle").error
    assert reason.startswith("no decoder installed for RLE Lossless") and "pylibjpeg-rle>=2.0" in reason
    counted = unreadable_summary({"rle": reason, "a": "truncated: 10 of 20 pixel bytes",
                                  "b": "truncated: 0 of 20 pixel bytes"}, images=10)
    assert counted["count"] == 3 and counted["share"] == pytest.approx(0.3)
    assert {name: group["count"] for name, group in counted["groups"].items()} == {
        "truncated": 2, "no decoder installed for RLE Lossless": 1}
    line = describe_unreadable(counted)
    assert line == ("unreadable: 3 of 10 images (30.0%): truncated 2; no decoder installed for RLE Lossless 1 "
                    "(install: pydicom needs one of: pylibjpeg - requires pylibjpeg>=2.0 and pylibjpeg-rle>=2.0)")


def test_most_images_unreadable_fails_without_a_submission_unless_allowed(untrained_weights, siim_dataset, tmp_path,
                                                                         capsys):
    from infer import make_submission

    data = tmp_path / "data"
    shutil.copytree(siim_dataset, data)
    dicoms = find_dicoms(data / "test")
    for path in dicoms[1:]:
        path.write_bytes(path.read_bytes()[:300])  # cut inside the header
    out = tmp_path / "sub.csv"
    with pytest.raises(SystemExit, match=rf"error: unreadable: {len(dicoms) - 1} of {len(dicoms)} images .*: "
                                         r"truncated or corrupt DICOM \d+; that is more than max_unreadable_share "
                                         r"5%, so no submission was written.*--allow-unreadable"):
        make_submission.main(_submission_argv(data, untrained_weights, out))
    assert not out.exists()
    capsys.readouterr()
    assert make_submission.main(_submission_argv(data, untrained_weights, out) + ["--allow-unreadable"]) == 0
    last_line = capsys.readouterr().out.strip().splitlines()[-1]
    share = 100 * (len(dicoms) - 1) / len(dicoms)
    assert last_line == (f"unreadable: {len(dicoms) - 1} of {len(dicoms)} images ({share:.1f}%): "
                         f"truncated or corrupt DICOM {len(dicoms) - 1}")
    submission = pd.read_csv(out)
    fallback = submission[submission["id"] == f"{dicoms[1].stem}_image"]["PredictionString"].item()
    assert re.fullmatch(r"none \S+ 0 0 1 1", fallback)
    # Every image readable: written, and the last line says so.
    shutil.rmtree(data / "test")
    shutil.copytree(siim_dataset / "test", data / "test")
    assert make_submission.main(_submission_argv(data, untrained_weights, out)) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == f"unreadable: 0 of {len(dicoms)} images (0.0%)"


def test_test_images_without_a_file_count_as_unreadable(untrained_weights, siim_dataset, tmp_path):
    """The sample's images that have no file get fallback rows and count against max_unreadable_share
    (before, a submission of mostly fallback rows exited 0 saying "unreadable: 0.0%")."""
    from infer import make_submission

    data = tmp_path / "data"
    shutil.copytree(siim_dataset, data)
    dicoms = find_dicoms(data / "test")
    for path in dicoms[1:]:
        path.unlink()
    out = tmp_path / "sub.csv"
    missing = len(dicoms) - 1
    with pytest.raises(SystemExit, match=rf"error: unreadable: {missing} of {len(dicoms)} images .*: not found "
                                         rf"{missing}; that is more than max_unreadable_share"):
        make_submission.main(_submission_argv(data, untrained_weights, out))
    assert not out.exists()  # (with --allow-unreadable they get fallback rows: the test above)


def test_the_pipeline_keeps_the_order_with_decoding_and_fusion_processes(ensemble, siim_dataset, tmp_path):
    """Decoding in two processes (one image each) and fusion in another process give the plain loop's
    predictions, in order, an unreadable image among them included."""
    from dataclasses import replace

    from utils.prediction.predictor import decoded_batches

    good = find_dicoms(siim_dataset / "test")[:4]
    bad = tmp_path / "study" / "series" / "broken.dcm"
    bad.parent.mkdir(parents=True)
    bad.write_bytes(good[0].read_bytes()[:400])
    paths = good[:2] + [bad] + good[2:]
    batches = list(decoded_batches(paths, ensemble.sizes, batch_size=2, workers=2))
    assert [len(b) for b in batches] == [2, 2, 1]
    assert [i.image_id for b in batches for i in b] == [p.stem for p in paths]
    assert batches[1][0].error and all(i.pixels for b in batches for i in b if i.image_id != "broken")

    plain = ensemble.predict_paths(paths, batch_size=2, workers=0, progress=False)
    config, done = ensemble.config, []
    try:
        ensemble.config = replace(config, fusion_workers=1)
        piped = ensemble.predict_paths(paths, batch_size=2, workers=2, progress=False, on_batch=done.append)
        assert ensemble.fusion_executor() is ensemble.fusion_executor()  # started once, kept
    finally:
        ensemble.config = config
        ensemble.close()
    assert done == [2, 2, 1]
    assert [p.image_id for p in piped] == [p.image_id for p in plain] == [p.stem for p in paths]
    assert piped[2].error == plain[2].error and piped[2].error
    for a, b in zip(piped, plain):
        if a.error is None:
            np.testing.assert_allclose(a.boxes, b.boxes, atol=1e-6)
            np.testing.assert_allclose(a.scores, b.scores, atol=1e-6)
            np.testing.assert_allclose(a.study_probs, b.study_probs, atol=1e-6)


def test_an_ensemble_in_a_with_block_stops_its_fusion_processes_even_on_an_error(untrained_weights, siim_dataset):
    paths = find_dicoms(siim_dataset / "test")[:2]
    with pytest.raises(RuntimeError, match="stopped here"):
        with Ensemble(untrained_weights, overrides={"device": "cpu", "workers": 0, "fusion_workers": 1}) as ensemble:
            ensemble.predict_paths(paths, progress=False)
            pool = ensemble.fusion_executor()
            raise RuntimeError("stopped here")
    with pytest.raises(RuntimeError, match="shutdown"):
        pool.submit(int)


def test_predict_source_takes_bytes(ensemble, siim_dataset):
    path = find_dicoms(siim_dataset / "test")[0]
    prediction = ensemble.predict_source(path.read_bytes(), name="upload.dcm")
    assert prediction.error is None and prediction.original_width > 0
    assert "empty" in ensemble.predict_source(b"", name="empty.dcm").error


def test_submission_rows_follow_the_sample_and_fall_back_clearly():
    probs_a, probs_b = np.array([0.1, 0.6, 0.2, 0.1]), np.array([0.3, 0.4, 0.2, 0.1])
    predictions = [
        ImagePrediction("img1", "st1", 200, 100, np.array([[0.1, 0.2, 0.5, 0.6]]), np.array([0.9]), probs_a, 0.4),
        ImagePrediction("img2", "st1", 200, 100, as_boxes([]), np.zeros(0), probs_b, 0.8),
        ImagePrediction("img3", "st2", 0, 0, as_boxes([]), np.zeros(0), error="truncated"),
    ]
    sample = pd.DataFrame({"id": ["img3_image", "st2_study", "img1_image", "st1_study", "img4_image", "img2_image"]})
    config = EnsembleConfig(none_classifier_weight=1.0, none_study_weight=1.0, none_boxes_weight=2.0)
    submission = assemble_submission(predictions, sample, config)
    assert submission["id"].tolist() == sample["id"].tolist()
    rows = {i: parse_prediction_string(t) for i, t in zip(submission["id"], submission["PredictionString"])}
    study = {p.label: p.confidence for p in rows["st1_study"]}
    # the classifier's mean over the images; negative also with the images' mean (1 - best box score)
    assert study["typical"] == pytest.approx(0.5)
    assert study["negative"] == pytest.approx((0.2 + ((1 - 0.9) + 1.0) / 2) / 2)
    assert {p.confidence for p in rows["st2_study"]} == {0.25}  # no readable image: no information
    opacity, none = rows["img1_image"]
    assert opacity.label == "opacity" and opacity.box == pytest.approx((10, 40, 50, 120))  # original pixels
    assert none.label == "none" and none.confidence == pytest.approx((0.4 + 0.2 + 2 * (1 - 0.9)) / 4)
    none_without_boxes = parse_prediction_string(submission.set_index("id").loc["img2_image", "PredictionString"])
    assert none_without_boxes[0].confidence == pytest.approx((0.8 + 0.2 + 2 * 1.0) / 4)
    assert [(p.label, p.confidence) for p in rows["img3_image"]] == [("none", UNINFORMED_NONE)]
    assert [(p.label, p.confidence) for p in rows["img4_image"]] == [("none", UNINFORMED_NONE)]


def test_a_bad_weights_folder_is_refused_clearly(untrained_weights, tmp_path):
    with pytest.raises(ManifestError, match="no trained models"):
        Ensemble(tmp_path)
    with pytest.raises(ManifestError, match="not in the manifest"):
        Ensemble(untrained_weights, overrides={"model_weights": {"detr": 2.0}})
    broken = tmp_path / "broken"
    broken.mkdir()
    manifest = json.loads((untrained_weights / "manifest.json").read_text())
    (broken / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ManifestError, match="weights file"):
        Ensemble(broken)


def test_the_inference_benchmark_measures_every_stage(untrained_weights, tmp_path):
    from utils.benchmarking.benchmarks import benchmark_inference

    result = benchmark_inference(untrained_weights, images=2, repeats=1, scale=0.05, work_dir=tmp_path,
                                 fusion_workers=1)
    rates = result["images_per_s"]
    assert {"decode_1_process", "study", "study_tta", "frcnn", "frcnn_tta", "yolo", "yolo_tta",
            "models", "wbf_1_process", "end_to_end_1_fusion_workers", "end_to_end_inline_fusion"} <= set(rates)
    assert all(rate > 0 for rate in rates.values())
    # the models' combined rate: one over the sum of each one's seconds per image (with the flip TTA)
    assert 1 / rates["models"] == pytest.approx(sum(1 / rates[f"{m}_tta"] for m in ("study", "frcnn", "yolo")),
                                                rel=0.01)
    assert set(result["end_to_end_start_seconds"]) == {"end_to_end_1_fusion_workers", "end_to_end_inline_fusion"}
    minutes = result["estimated_notebook_minutes"]
    assert 0 < minutes["1263"] < minutes["6000"]


def _submission_argv(data, weights, out):
    return ["--data-dir", str(data), "--weights-dir", str(weights), "--out", str(out), "--no-progress"]


def test_a_full_disk_leaves_the_earlier_submission_whole_and_says_so_in_one_line(untrained_weights, siim_dataset,
                                                                                 tmp_path, monkeypatch, caplog):
    """ENOSPC at the submission's write: exit non-zero in one line, the earlier submission untouched, no
    temporary left; at the summary's write (after a valid submission): exit 0, and a warning says only
    the summary is lost (before: a traceback and exit 1 beside a valid submission)."""
    import errno

    from infer import make_submission

    out = tmp_path / "sub.csv"
    out.write_text("an earlier submission\n")
    real_to_csv = pd.DataFrame.to_csv

    def full_disk(self, path=None, *args, **kwargs):
        if path is not None and str(path).startswith(str(tmp_path)):
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real_to_csv(self, path, *args, **kwargs)

    monkeypatch.setattr(pd.DataFrame, "to_csv", full_disk)
    with pytest.raises(SystemExit) as stop:
        make_submission.main(_submission_argv(siim_dataset, untrained_weights, out))
    assert re.fullmatch(rf"error: {re.escape(str(tmp_path))}/sub\.csv: No space left on device; \d+ MiB "
                        r"free there; no submission was written \(an earlier sub\.csv is left as it was\)",
                        str(stop.value))
    assert out.read_text() == "an earlier submission\n" and sorted(p.name for p in tmp_path.iterdir()) == ["sub.csv"]
    monkeypatch.setattr(pd.DataFrame, "to_csv", real_to_csv)

    def full_at_summary(path, value):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(make_submission, "write_json_atomic", full_at_summary)
    assert make_submission.main(_submission_argv(siim_dataset, untrained_weights, out)) == 0
    assert submission_problems(pd.read_csv(out, keep_default_na=False)) == []
    assert "the summary was not written (the submission" in caplog.text


def test_make_submission_checks_what_it_can_before_predicting(untrained_weights, siim_dataset, tmp_path,
                                                              monkeypatch):
    """A bad output path or sample fails at once, before any image is predicted."""
    from infer import make_submission

    def no_prediction(*args, **kwargs):
        raise AssertionError("predicted before checking the inputs")

    monkeypatch.setattr(Ensemble, "predict_paths", no_prediction)
    with pytest.raises(SystemExit, match="is a folder"):
        make_submission.main(_submission_argv(siim_dataset, untrained_weights, tmp_path))
    with pytest.raises(SystemExit, match="cannot write under"):
        make_submission.main(_submission_argv(siim_dataset, untrained_weights, siim_dataset / "sample_submission.csv"
                                              / "sub.csv"))
    data = tmp_path / "data"
    shutil.copytree(siim_dataset, data)
    sample = pd.read_csv(data / "sample_submission.csv")
    bad = pd.concat([sample, sample.head(1), pd.DataFrame({"id": ["abc_series"], "PredictionString": ["x"]})])
    bad.to_csv(data / "sample_submission.csv", index=False)
    with pytest.raises(SystemExit, match=r"duplicate id .*\n.*abc_series' ends neither"):
        make_submission.main(_submission_argv(data, untrained_weights, tmp_path / "sub.csv"))


def test_make_submission_never_overwrites_its_own_inputs(untrained_weights, siim_dataset, tmp_path, monkeypatch):
    """--out (or its summary beside it) that is the manifest, a weights file, the sample or a test image,
    directly or through a link, is refused before any prediction and the file is left as it was."""
    from infer import make_submission

    monkeypatch.setattr(Ensemble, "predict_paths", lambda *a, **k: pytest.fail("predicted before the check"))
    weights_file = next(p for p in sorted(untrained_weights.rglob("*"))
                        if p.is_file() and p.parent != untrained_weights)
    test_image = next(p for p in sorted((siim_dataset / "test").rglob("*.dcm")))
    (tmp_path / "manifest_link.csv").symlink_to(untrained_weights / "manifest.json")
    (tmp_path / "weights_hard_link.csv").hardlink_to(weights_file)
    cases = [untrained_weights / "manifest.json", weights_file, siim_dataset / "sample_submission.csv", test_image,
             tmp_path / "manifest_link.csv", tmp_path / "weights_hard_link.csv"]
    before = {path: path.read_bytes() for path in cases}
    for out in cases:
        with pytest.raises(SystemExit, match=rf"--out .*{out.name} is an input of this run .*refusing to overwrite"):
            make_submission.main(_submission_argv(siim_dataset, untrained_weights, out))
        assert out.read_bytes() == before[out]
    # The summary JSON written beside the submission is checked too: sub.csv -> sub_summary.json.
    (tmp_path / "sub_summary.json").symlink_to(untrained_weights / "manifest.json")
    with pytest.raises(SystemExit, match=r"sub_summary.json is an input"):
        make_submission.main(_submission_argv(siim_dataset, untrained_weights, tmp_path / "sub.csv"))


def _flat_copy(weights_dir, out) -> dict:
    """``weights_dir`` with every fold file beside manifest.json (a valid manifest: files are relative)."""
    out.mkdir()
    manifest = json.loads((weights_dir / "manifest.json").read_text())
    for name, spec in manifest["models"].items():
        for fold, relative in spec["files"].items():
            spec["files"][fold] = f"{name}_fold{fold}{Path(relative).suffix}"
            os.link(weights_dir / relative, out / spec["files"][fold])
    (out / "manifest.json").write_text(json.dumps(manifest))
    return manifest


def test_make_submission_never_writes_into_a_weights_folder_even_a_flat_one(untrained_weights, siim_dataset,
                                                                           tmp_path, monkeypatch):
    """In a flat weights folder (fold files beside manifest.json), --out naming a fold file replaced the
    weights with the CSV and exited 0 on main. Every file the manifest names is an input wherever it
    sits (also through a hard link from outside), and nothing is written into a weights folder."""
    from infer import make_submission

    monkeypatch.setattr(Ensemble, "predict_paths", lambda *a, **k: pytest.fail("predicted before the check"))
    flat = tmp_path / "flat"
    manifest = _flat_copy(untrained_weights, flat)
    assert Ensemble(flat).describe()["models"]  # a usable folder
    weights_file = flat / manifest["models"]["study"]["files"]["1"]
    (tmp_path / "linked.csv").hardlink_to(weights_file)
    before = {path.name: path.read_bytes() for path in flat.iterdir()}
    for out, message in [(weights_file, r"is an input of this run \(.*study_fold1.pt\)"),
                         (tmp_path / "linked.csv", r"is an input of this run \(.*study_fold1.pt\)"),
                         (flat / "sub.csv", "is inside the weights folder .*flat of this run")]:
        with pytest.raises(SystemExit, match=rf"--out .*{out.name} {message}"):
            make_submission.main(_submission_argv(siim_dataset, flat, out))
    assert {path.name: path.read_bytes() for path in flat.iterdir()} == before
    with pytest.raises(SystemExit, match=r"--out .*test/.* is inside the test image folder"):
        make_submission.main(_submission_argv(siim_dataset, flat, siim_dataset / "test" / "sub.csv"))


def test_a_deflated_dicom_bomb_among_the_test_images_gets_a_fallback_row(untrained_weights, siim_dataset, tmp_path,
                                                                        capsys):
    """A deflated 9,000 x 9,000 DICOM in the test folder was decoded in full on main (162 MB of pixels from a
    small file); now the web app's pixel bound holds here too: refused before it inflates, logged, and
    the image gets its fallback row in a complete submission."""
    from test_dicom import _deflated_dicom

    from infer import make_submission

    data = tmp_path / "data"
    shutil.copytree(siim_dataset, data)
    bomb = find_dicoms(data / "test")[0]
    bomb.write_bytes(_deflated_dicom(9000, 9000))
    out = tmp_path / "sub.csv"
    assert make_submission.main(_submission_argv(data, untrained_weights, out) + ["--allow-unreadable"]) == 0
    printed = capsys.readouterr().out
    assert re.search(rf"unreadable \(fallback row\): {bomb.stem}: (image too large: 9000 x 9000 exceeds \d+ pixels|"
                     r"deflate-compressed DICOM expands beyond)", printed), printed
    submission = pd.read_csv(out)
    assert re.fullmatch(r"none \S+ 0 0 1 1", submission.set_index("id").loc[f"{bomb.stem}_image", "PredictionString"])
    assert not submission_problems(submission, pd.read_csv(data / "sample_submission.csv"))


def test_a_wrong_data_folder_fails_loudly_and_missing_images_are_counted(untrained_weights, siim_dataset, tmp_path,
                                                                         caplog, capsys):
    from infer import make_submission

    data = tmp_path / "data"
    shutil.copytree(siim_dataset, data)
    shutil.rmtree(data / "test")
    (data / "test").mkdir()
    with pytest.raises(SystemExit, match="none of the .* images of the sample submission was found"):
        make_submission.main(_submission_argv(data, untrained_weights, tmp_path / "sub.csv"))
    # Upper-case .DCM files are not the competition's layout either: still no image found.
    shutil.rmtree(data / "test")
    shutil.copytree(siim_dataset / "test", data / "test")
    dicoms = find_dicoms(data / "test")
    for path in dicoms:
        path.rename(path.with_suffix(".DCM"))
    with pytest.raises(SystemExit, match="none of the"):
        make_submission.main(_submission_argv(data, untrained_weights, tmp_path / "sub.csv"))
    # Some images missing: a warning with the count and the share; they count as unreadable (1 of 9 is over
    # the default 5%), so with a higher bound a complete submission whose last line counts them.
    shutil.rmtree(data / "test")
    shutil.copytree(siim_dataset / "test", data / "test")
    find_dicoms(data / "test")[0].unlink()
    with caplog.at_level("WARNING"):
        assert make_submission.main(_submission_argv(data, untrained_weights, tmp_path / "sub.csv")
                                    + ["--set", "max_unreadable_share=0.2"]) == 0
    assert re.search(r"1 of \d+ image\(s\) of the sample submission \(\d+%\) have no file", caplog.text)
    assert re.search(r"unreadable: 1 of \d+ images \(\d+\.\d%\): not found 1$", capsys.readouterr().out.strip())


@pytest.mark.parametrize("break_it, message", [
    (lambda m, w: _overwrite(w / m["models"]["study"]["files"]["0"], os.urandom(500)),
     "not a readable weights file"),
    (lambda m, w: _overwrite(w / m["models"]["frcnn"]["files"]["1"],
                             (w / m["models"]["frcnn"]["files"]["1"]).read_bytes()[:2000]),
     "not a readable weights file"),
    (lambda m, w: _overwrite(w / m["models"]["yolo"]["files"]["0"], b"PK\x03\x04junk"), "not a readable YOLO"),
    (lambda m, w: m["models"]["study"]["files"].update({"0": "/etc/passwd"}), "outside the weights folder"),
    (lambda m, w: m["models"]["study"]["files"].update({"0": "../../x.pt"}), "outside the weights folder"),
    (lambda m, w: m["models"]["study"].pop("input_size"), "'input_size' must be an integer in 1-4096"),
    (lambda m, w: m["models"]["study"].update(input_size=-64), "'input_size' must be an integer in 1-4096"),
    (lambda m, w: m["models"]["study"].update(input_size="64"), "'input_size' must be an integer in 1-4096"),
    (lambda m, w: m["models"]["study"].update(folds=[0, 1, 2]), "'files' must name a file for every fold"),
    (lambda m, w: m["models"].update(study=["not", "an", "object"]), "unknown kind"),
    (lambda m, w: m["models"]["study"]["files"].update({"1": m["models"]["study"]["files"]["0"]}),
     r"folds 0 and 1 name the same weights file .*study/fold0.pt; each fold needs its own"),
    (lambda m, w: m["models"]["study"].update(folds=[0, 0]), r"'folds' lists a fold twice: \[0, 0\]"),
])
def test_broken_weights_folders_are_errors_naming_the_file(untrained_weights, tmp_path, break_it, message):
    weights = tmp_path / "weights"
    _linked_copy(untrained_weights, weights)
    manifest = json.loads((weights / "manifest.json").read_text())
    break_it(manifest, weights)
    (weights / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ManifestError, match=message) as caught:
        Ensemble(weights)
    assert "weights_only=False" not in str(caught.value)


def _set_config(manifest, model, **values):
    manifest["models"][model]["config"].update(values)


@pytest.mark.parametrize("break_it, message", [
    (lambda m: m.update(ensemble=None), r"manifest.json \[ensemble\]: expected an object of settings, got NoneType"),
    (lambda m: m.update(ensemble="abc"), r"manifest.json \[ensemble\]: expected an object of settings, got str"),
    (lambda m: m["models"]["study"].update(config=[1, 2]), r"model 'study': 'config' must be an object, got list"),
    (lambda m: m["models"]["study"]["config"].pop("arch"),
     r"model 'study': .*study/fold0.pt does not fit the network its config builds \(arch 'resnext50_32x4d'\)"),
    (lambda m: _set_config(m, "frcnn", arch="resnet34"),
     r"model 'frcnn': .*frcnn/fold0.pt does not fit the network its config builds \(arch 'resnet34'\)"),
    (lambda m: _set_config(m, "study", arch="no_such_arch"), r"model 'study': .* \(arch 'no_such_arch'\)"),
    (lambda m: m["models"]["study"].update(kind="frcnn"), r"model 'study' config: unknown key\(s\)"),
    (lambda m: _set_config(m, "study", tta_views=["identity", "sideways"]),
     r"model 'study' config: unknown TTA view 'sideways'"),
    (lambda m: _set_config(m, "yolo", score_threshold="high"),
     r"model 'yolo' config: score_threshold: must be a valid number, got 'high'"),
    (lambda m: _set_config(m, "frcnn", nms_threshold=float("nan")),
     r"model 'frcnn' config: nms_threshold: .*finite"),
    (lambda m: m["models"]["study"]["files"].update({"0": "study/fold\x000.pt"}),
     r"model 'study': fold 0 file must be a path relative to the weights folder"),
    (lambda m: m["models"]["study"].update(input_size=65536), r"'input_size' must be an integer in 1-4096, got 65536"),
    (lambda m: m["models"]["study"].update(input_size=True), r"'input_size' must be an integer in 1-4096, got True"),
])
def test_a_hand_damaged_manifest_is_one_line_naming_the_model_and_the_key(untrained_weights, siim_dataset, tmp_path,
                                                                          monkeypatch, break_it, message):
    """What a hand edit can do to a manifest, through make_submission: each is a one-line error naming
    manifest.json (and the model and key where there is one) before the first image, never a traceback."""
    from infer import make_submission

    monkeypatch.setattr(Ensemble, "predict_paths", lambda *a, **k: pytest.fail("predicted before the check"))
    weights = tmp_path / "weights"
    _linked_copy(untrained_weights, weights)
    manifest = json.loads((weights / "manifest.json").read_text())
    break_it(manifest)
    (weights / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(SystemExit, match=message) as caught:
        make_submission.main(_submission_argv(siim_dataset, weights, tmp_path / "s.csv"))
    assert "manifest.json" in str(caught.value) and "\n" not in str(caught.value)


def test_a_manifest_nested_too_deeply_is_said_plainly(tmp_path):
    (tmp_path / "manifest.json").write_text('{"models": {}, "x": ' + "[" * 100_000 + "]" * 100_000 + "}")
    with pytest.raises(ManifestError, match="manifest.json: nested too deeply to be a manifest"):
        Ensemble(tmp_path)


def test_a_manifest_that_is_a_list_or_a_missing_folder_is_said_plainly(tmp_path):
    (tmp_path / "manifest.json").write_text("[1, 2]")
    with pytest.raises(ManifestError, match="expected an object with a 'models' mapping"):
        Ensemble(tmp_path)
    with pytest.raises(ManifestError, match="weights folder not found"):
        Ensemble(tmp_path / "absent")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ManifestError, match="no trained models"):
        Ensemble(tmp_path / "empty")


def test_the_images_are_dealt_out_in_whole_batches():
    from utils.prediction.sharding import batch_shards, parse_devices

    assert batch_shards(10, 4, 2) == [[0, 1, 2, 3, 8, 9], [4, 5, 6, 7]]
    assert batch_shards(3, 4, 2) == [[0, 1, 2], []]
    assert parse_devices("cuda:0, cuda:1") == ["cuda:0", "cuda:1"]
    for bad in ("", "gpu0", "cuda:x"):
        with pytest.raises(ValueError):
            parse_devices(bad)


def _same_predictions(found, expected) -> None:
    """Image by image, in order: ids, boxes, scores, study probabilities and none."""
    assert [p.image_id for p in found] == [p.image_id for p in expected]
    for a, b in zip(found, expected):
        assert (a.error is None) == (b.error is None), a.image_id
        np.testing.assert_allclose(a.boxes, b.boxes, atol=1e-5, err_msg=a.image_id)
        np.testing.assert_allclose(a.scores, b.scores, atol=1e-5, err_msg=a.image_id)
        for x, y in ((a.study_probs, b.study_probs), (a.none_prob, b.none_prob)):
            assert (x is None) == (y is None), a.image_id
            if x is not None:
                np.testing.assert_allclose(x, y, atol=1e-5, err_msg=a.image_id)


def test_two_workers_predict_every_image_as_one_device_does(untrained_weights, siim_dataset, tmp_path):
    """Every model kind and the fusion on two CPU workers (batches dealt out alternately): each image's
    boxes, scores and probabilities, in order, are the one-device run's (both with one torch thread, so
    the sums run in the same order). The comparison is by position, so a merge that put an image's
    prediction elsewhere fails it, as reversing the merged list shows."""
    from utils.data.images_to_predict import find_test_images
    from utils.prediction.sharding import predict_on_devices

    weights = tmp_path / "weights"
    _linked_copy(untrained_weights, weights)
    manifest = json.loads((weights / "manifest.json").read_text())
    for entry in manifest["models"].values():  # one fold each: the workers load less
        entry["folds"], entry["files"] = [0], {"0": entry["files"]["0"]}
    (weights / "manifest.json").write_text(json.dumps(manifest))
    _, images = find_test_images(siim_dataset)
    config = EnsembleConfig(**{**manifest["ensemble"], "device": "cpu", "workers": 0, "fusion_workers": 0})
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        expected = Ensemble(weights, config).predict_paths(images, batch_size=2, workers=0, progress=False)
    finally:
        torch.set_num_threads(threads)
    assert sum(len(p.scores) for p in expected) > 0 and all(p.study_probs is not None for p in expected)
    sharded = predict_on_devices(weights, config, images, ["cpu", "cpu"], batch_size=2, workers=0, cpu_threads=1,
                                 progress=False)
    _same_predictions(sharded, expected)
    with pytest.raises(AssertionError):
        _same_predictions(sharded[::-1], expected)


def test_two_workers_write_a_valid_submission_and_a_failing_worker_stops_the_run(untrained_weights, siim_dataset,
                                                                                 tmp_path):
    """Kaggle's T4 x2 path through make_submission, with two CPU workers (each image's predictions are
    compared with one device's in the test above): a valid submission, nothing loaded in this process;
    a failing worker stops the run with its error."""
    from infer import make_submission, validate_submission
    from utils.data.images_to_predict import find_test_images
    from utils.prediction.sharding import ShardError, predict_on_devices

    # The study model alone: each worker loads its own copy.
    weights = tmp_path / "weights"
    shutil.copytree(untrained_weights / "study", weights / "study")
    manifest = json.loads((untrained_weights / "manifest.json").read_text())
    manifest["models"] = {"study": manifest["models"]["study"]}
    (weights / "manifest.json").write_text(json.dumps(manifest))
    two = tmp_path / "two.csv"
    assert make_submission.main(_submission_argv(siim_dataset, weights, two)
                                + ["--batch-size", "2", "--devices", "cpu,cpu"]) == 0
    assert validate_submission.main([str(two), "--sample-submission", str(siim_dataset / "sample_submission.csv")]) == 0
    summary = json.loads((tmp_path / "two_summary.json").read_text())
    assert summary["device"] == "cpu,cpu" and summary["load_seconds"] is None  # nothing loaded in this process

    _, images = find_test_images(siim_dataset)
    with pytest.raises(ShardError, match="worker 0 on cpu:.*weights folder not found"):
        predict_on_devices(tmp_path / "absent", EnsembleConfig(device="cpu"), images[:2], ["cpu", "cpu"],
                           batch_size=1, workers=0, cpu_threads=1, progress=False)


def test_bad_arguments_and_devices_are_one_line_before_any_work(untrained_weights, siim_dataset, tmp_path,
                                                                  monkeypatch, capsys):
    """--batch-size -1, --workers -1, --device gpu (argparse's usage line), a device setting that is no
    device (the config layer), a GPU this machine lacks (before a model loads): one line each, no
    traceback, nothing predicted."""
    from infer import make_submission
    from utils.core.config import ConfigError, from_mapping
    from utils.kinds.study.training import StudyConfig

    monkeypatch.setattr(Ensemble, "predict_paths", lambda *a, **k: pytest.fail("predicted before the check"))
    argv = _submission_argv(siim_dataset, untrained_weights, tmp_path / "s.csv")
    for extra, message in [(["--batch-size", "-1"], "argument --batch-size: must be at least 1, got -1"),
                           (["--batch-size", "two"], "argument --batch-size: expected an integer, got 'two'"),
                           (["--workers", "-1"], "argument --workers: must be at least 0, got -1"),
                           (["--batch-size", "1000000000000"],
                            "argument --batch-size: must be at most 1024, got 1000000000000"),
                           (["--workers", "65"], "argument --workers: must be at most 64, got 65"),
                           (["--device", "gpu"], "argument --device: device 'gpu': expected auto, cpu, cuda or cuda:N"),
                           (["--devices", "cpu,gpu"], "argument --devices: --devices: device 'gpu': expected")]:
        with pytest.raises(SystemExit) as exit_info:
            make_submission.main(argv + extra)
        assert exit_info.value.code == 2 and message in capsys.readouterr().err, extra
    with pytest.raises(SystemExit, match=r"manifest.json \[ensemble\] with overrides: device 'cuda0': expected auto"):
        make_submission.main(argv + ["--set", "device=cuda0"])
    # The batch size of the manifest's ensemble section (here through --set) has the argument's bound.
    with pytest.raises(SystemExit, match=r"manifest.json \[ensemble\] with overrides: batch_size: must be less than "
                                         r"or equal to 1024, got 1000000000000$"):
        make_submission.main(argv + ["--set", "batch_size=1000000000000"])
    with pytest.raises(ConfigError, match=r"x.yaml \[study\]: device 'gpu': expected auto, cpu, cuda or cuda:N"):
        from_mapping(StudyConfig, {"device": "gpu"}, "x.yaml [study]")
    if not torch.cuda.is_available():
        for extra in (["--device", "cuda"], ["--devices", "cuda:0,cuda:1"]):
            with pytest.raises(SystemExit, match=r"error: device 'cuda(:0)?' requested but torch sees no GPU"):
                make_submission.main(argv + extra)
    assert not (tmp_path / "s.csv").exists()


def test_a_shard_worker_killed_while_writing_leaves_no_half_file(tmp_path, monkeypatch):
    """The worker's results file appears whole or not at all, so the parent reports a dead worker, not a
    truncated-file error."""
    import multiprocessing

    from utils.prediction import sharding

    def killed_mid_write(result, handle):
        handle.write(b"\x80\x05partial")
        raise KeyboardInterrupt  # as a kill during the write

    monkeypatch.setattr(sharding.pickle, "dump", killed_mid_write)
    out = tmp_path / "shard0.pkl"
    with pytest.raises(KeyboardInterrupt):
        sharding._worker(str(tmp_path / "absent"), EnsembleConfig(device="cpu"), "cpu", [], 1, 0, None, str(out),
                         multiprocessing.Value("l", 0), os.getpid())
    assert list(tmp_path.iterdir()) == []


def _is_running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _children(pid: int) -> list[int]:
    """The live child processes of ``pid`` (read from /proc: no psutil)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                state, parent = (entry / "stat").read_text().rsplit(")", 1)[1].split()[:2]
            except OSError:
                continue
            if int(parent) == pid and state != "Z":
                found.append(int(entry.name))
    return found


STUBBORN_CHILD = """
import multiprocessing, signal, sys, time
from utils.core.interrupt import exit_interrupted

def stubborn():
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a worker that will not stop when asked
    time.sleep(120)

if __name__ == "__main__":
    child = multiprocessing.get_context("fork").Process(target=stubborn, daemon=True)
    child.start()
    print(child.pid, flush=True)
    try:
        raise KeyboardInterrupt
    except KeyboardInterrupt:
        exit_interrupted()
"""


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads /proc")
def test_ctrl_c_on_the_command_line_stops_the_run_and_its_stubborn_children_within_seconds(tmp_path):
    """What make_submission's command line does on Ctrl-C: a child that ignores SIGTERM is killed after
    the grace, and the run dies of SIGINT (the status a shell expects), without joining anything."""
    import signal
    import subprocess
    import sys
    import time

    script = tmp_path / "stubborn.py"
    script.write_text(STUBBORN_CHILD)
    started = time.monotonic()
    run = subprocess.run([sys.executable, str(script)], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert run.returncode == -signal.SIGINT, run.stderr
    assert time.monotonic() - started < 30
    assert not _is_running(int(run.stdout.split()[0]))


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads /proc")
@pytest.mark.parametrize("signal_name", ["SIGINT", "SIGKILL"])
def test_a_killed_submission_run_leaves_no_process_behind(untrained_weights, tmp_path, signal_name):
    """make_submission killed while its DataLoader workers decode (Ctrl-C, or the kernel's SIGKILL):
    within seconds no worker of it is left running."""
    import signal
    import subprocess
    import sys
    import time

    from utils.data.synthetic import make_siim_dataset

    make_siim_dataset(tmp_path / "data", train_studies=1, test_studies=30, seed=5, max_size=256, progress=False)
    run = subprocess.Popen([sys.executable, str(REPO / "infer" / "make_submission.py"), "--data-dir",
                            str(tmp_path / "data"), "--weights-dir", str(untrained_weights), "--out",
                            str(tmp_path / "s.csv"), "--workers", "2", "--batch-size", "1", "--no-progress"],
                           cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while len(workers := _children(run.pid)) < 2 and run.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert len(workers) == 2, "the loader workers never started"
        run.send_signal(getattr(signal, signal_name))
        assert run.wait(60) != 0
        deadline = time.monotonic() + 15
        while any(_is_running(pid) for pid in workers) and time.monotonic() < deadline:
            time.sleep(0.2)
        left = [pid for pid in workers if _is_running(pid)]
        assert not left, f"workers {left} still running after the run was killed"
    finally:
        run.kill()
        run.wait()


def test_a_terminated_submission_run_leaves_no_worker_behind_even_frozen(untrained_weights, shared, tmp_path):
    """make_submission on the 1,263 real test images with two decoding workers and a fusion worker,
    terminated (SIGTERM) with its helpers frozen, so none can notice by itself that its parent is gone
    (the test above lets them): every helper dies with it (before: the fusion worker, ~1 GB on a real
    run, and the DataLoader workers stayed)."""
    import time

    argv = ["infer/make_submission.py", "--data-dir", str(shared("siim-256")), "--test-meta",
            str(shared("siim-labels", "test_meta.csv")), "--weights-dir", str(untrained_weights), "--out",
            str(tmp_path / "sub.csv"), "--no-progress", "--workers", "2", "--set", "fusion_workers=1"]
    first_seen = []

    def busy() -> bool:  # the loader's two, the fusion worker and the resource tracker for 8 s: started up
        first_seen.append(time.monotonic())
        return first_seen[-1] - first_seen[0] > 8.0

    assert leftover_children_after_kill(argv, signal.SIGTERM, children=4, busy=busy) == []
