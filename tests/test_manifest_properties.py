"""Generated bad input, as a hostile or careless hand would make it: a real weights folder's manifest
mutated (types, NaN/Inf, extreme numbers up to 10^400, NUL bytes, nesting, missing and extra keys, in the ensemble
section, the model entries and their stored configs), then make_submission on real DICOMs. Whatever the
mutation, it either writes a complete, valid submission without NaN, or stops before the first image
with one line naming the manifest; never a traceback.

The profile (tests/conftest.py) decides how many manifests are tried: ``bounded`` (the default: seeded,
part of make test) or ``long`` (``pytest tests/test_manifest_properties.py --hypothesis-profile long``)."""

from __future__ import annotations

import copy
import json
import shutil

import pandas as pd
import pytest
from conftest import REPO
from hypothesis import given
from hypothesis import strategies as st

from infer import make_submission
from utils.benchmarking.benchmarks import write_untrained_weights
from utils.data.submission import parse_prediction_string, submission_problems
from utils.prediction.predictor import Ensemble

# Two cheap members (ResNet-18 trunks at 64 px), one fold each: enough to exercise every section.
SMALL_MODELS = {
    "study": {"image_size": 64, "arch": "resnet18"},
    "frcnn": {"arch": "resnet18", "image_size": 64, "predict_size": 64, "proposals": 50, "roi_samples": 32,
              "freeze_bn": False, "fpn_channels": 32, "box_head_size": 64},
    "yolo": {"model": "yolov8n.yaml", "image_size": 64, "predict_size": 64},
    "ensemble": {"workers": 0, "device": "cpu", "batch_size": 2, "amp": "off"},
}
DELETE = object()  # a mutation that removes the key

values = st.one_of(
    st.none(), st.booleans(),
    st.integers(-3, 3), st.sampled_from([0, 32, 64, 65536, 2**31, -(2**63), 10**12, -(10**30), 10**400]),
    st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([float("nan"), float("inf"), -1e308]),
    st.text(max_size=6), st.sampled_from(["", "\x00", "../../etc/passwd", "cuda:7", "high"]),
    st.lists(st.integers(-2, 2), max_size=3), st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
    st.recursive(st.integers(), lambda inner: st.lists(inner, max_size=2), max_leaves=6),
    st.just(DELETE),
)


@pytest.fixture(scope="module")
def small_weights(tmp_path_factory):
    out = tmp_path_factory.mktemp("small_weights")
    write_untrained_weights(out, REPO / "train" / "configs" / "demo.yaml", folds=1, overrides=SMALL_MODELS)
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["models"].pop("yolo")  # its member imports ultralytics: the two torch members cover the sections
    (out / "manifest.json").write_text(json.dumps(manifest))
    shutil.rmtree(out / "yolo")
    return out, manifest


@pytest.fixture(scope="module")
def two_image_test_folder(siim_dataset, tmp_path_factory):
    """The synthetic competition test split cut to two studies (its DICOMs and sample rows)."""
    out = tmp_path_factory.mktemp("two_studies")
    studies = sorted(p for p in (siim_dataset / "test").iterdir() if p.is_dir())[:2]
    for study in studies:
        shutil.copytree(study, out / "test" / study.name)
    images = {p.stem for study in studies for p in study.rglob("*.dcm")}
    sample = pd.read_csv(siim_dataset / "sample_submission.csv")
    keep = [i for i in sample["id"] if i.rsplit("_", 1)[0] in images | {s.name for s in studies}]
    sample[sample["id"].isin(keep)].to_csv(out / "sample_submission.csv", index=False)
    return out


def _places(manifest: dict) -> list[tuple]:
    """Every key a mutation may hit: top level, each ensemble setting, each model entry's keys and its
    stored config's keys, plus a key none of them has."""
    places = [("ensemble",), ("models",), ("unknown_top_level",), ("ensemble", "unknown_setting")]
    places += [("ensemble", key) for key in manifest.get("ensemble", {})]
    for name, spec in manifest["models"].items():
        places += [("models", name), ("models", name, "unknown_entry_key"), ("models", name, "config", "unknown")]
        places += [("models", name, key) for key in spec]
        places += [("models", name, "files", "0")]
        places += [("models", name, "config", key) for key in spec["config"]]
    return places


def _mutate(manifest: dict, place: tuple, value) -> None:
    target = manifest
    for key in place[:-1]:
        if not isinstance(target, dict) or not isinstance(target.get(key), dict):
            return  # an earlier mutation replaced the container: nothing left to reach
        target = target[key]
    if value is DELETE:
        target.pop(place[-1], None)
    else:
        target[place[-1]] = value


def _like(original):
    """Values of the original's type, odd but plausible (zero, negatives, extremes, other known words):
    these pass the type checks and probe the ranges and the arithmetic."""
    if isinstance(original, bool):
        return st.booleans()
    if isinstance(original, int):
        return st.sampled_from([0, 1, -1, 2, original * 2, -original, original + 1, 10**6, 10**12, -(10**30)])
    if isinstance(original, float):
        return st.one_of(st.floats(0, 1), st.floats(-2, 2),
                         st.sampled_from([0.0, 1.0, 1e-12, 1e9, 1e308, -0.0, original * 10, 10**400]))
    if isinstance(original, str):
        return st.sampled_from([original, "auto", "off", "none", "cpu", "imagenet", "resnet18", "study/fold0.pt"])
    if isinstance(original, list):
        return st.lists(st.sampled_from(original), max_size=len(original) + 1) if original else st.just([])
    if isinstance(original, dict):
        return st.dictionaries(st.sampled_from(["study", "frcnn", "absent_model"]),
                               st.floats(0, 5) | st.sampled_from([0.0, 1e308]), max_size=3)
    return values


def _value_at(manifest: dict, place: tuple):
    target = manifest
    for key in place:
        if not isinstance(target, dict) or key not in target:
            return None
        target = target[key]
    return target


@st.composite
def mutations(draw, manifest: dict):
    """1 to 3 changes, each a plausible value of the key's own type or anything at all (half each)."""
    changes = []
    for _ in range(draw(st.integers(1, 3))):
        place = draw(st.sampled_from(_places(manifest)))
        original = _value_at(manifest, place)
        changes.append((place, draw(_like(original) if draw(st.booleans()) else values)))
    return changes


def test_a_mutated_manifest_predicts_a_valid_submission_or_stops_first_in_one_line(
        small_weights, two_image_test_folder, tmp_path_factory, monkeypatch):
    weights, original = small_weights
    out = tmp_path_factory.mktemp("property_submissions") / "submission.csv"
    predicted = []
    real_predict = Ensemble.predict_paths

    def recording_predict(self, *args, **kwargs):
        predicted.append(True)
        return real_predict(self, *args, **kwargs)

    monkeypatch.setattr(Ensemble, "predict_paths", recording_predict)

    @given(changes=mutations(original))
    def check(changes):
        manifest = copy.deepcopy(original)
        for place, value in changes:
            _mutate(manifest, place, value)
        (weights / "manifest.json").write_text(json.dumps(manifest))
        predicted.clear()
        out.unlink(missing_ok=True)
        try:
            code = make_submission.main(["--data-dir", str(two_image_test_folder), "--weights-dir", str(weights),
                                         "--out", str(out), "--no-progress"])
        except SystemExit as stop:
            message = str(stop.code)
            assert message.startswith("error: ") and "manifest.json" in message, (changes, message)
            assert "\n" not in message and not predicted and not out.exists(), (changes, message)
            assert len(message) < 600 + len(str(weights)), (changes, message)  # values are quoted cut short
            return
        assert code == 0
        sample = pd.read_csv(two_image_test_folder / "sample_submission.csv")
        submission = pd.read_csv(out, keep_default_na=False)
        assert submission_problems(submission, sample) == [], changes
        for row in submission["PredictionString"]:
            assert all(p.confidence == p.confidence for p in parse_prediction_string(row)), (changes, row)

    try:
        check()
    finally:
        (weights / "manifest.json").write_text(json.dumps(original))
