"""The registry's promise, kept by a test: a model kind defined outside the project (tests/plugin_kind/,
found through an entry point only) trains through train_all (preparation, its stage, the CV report, the
calibration), enters the manifest and predicts the submission through make_submission, with no project
file edited for it."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pydicom
import torch
from conftest import REPO

from utils.data.inputs import find_dicoms
from utils.data.submission import parse_prediction_string

PLUGIN = REPO / "tests" / "plugin_kind"


def project_files_state() -> str:
    return subprocess.run(["git", "status", "--porcelain", "--untracked-files=all"], cwd=REPO, capture_output=True,
                          text=True, check=True).stdout


def run(args: list[str], env: dict) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def test_a_kind_from_an_entry_point_runs_through_train_all_the_report_the_manifest_and_make_submission(
        siim_dataset, tmp_path):
    before = project_files_state()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(PLUGIN), str(REPO)]), YOLO_OFFLINE="true",
               NO_ALBUMENTATIONS_UPDATE="1")
    run_dir = tmp_path / "run"
    config = tmp_path / "config.yaml"  # the user's config: the demo's sections and one for the new kind
    config.write_text((REPO / "train" / "configs" / "demo.yaml").read_text() + "\nfixed_box:\n  image_size: 48\n")
    run(["train/train_all.py", "--data-dir", str(siim_dataset), "--out", str(run_dir), "--config", str(config),
         "--kinds", "fixed_box", "--no-progress", "--set", "prepare.folds=2", "prepare.workers=1",
         "ensemble.workers=0"], env)

    stages = json.loads((run_dir / "train_all.json").read_text())
    command = stages["fixed_box"]["command"]
    assert stages["fixed_box"]["exit_code"] == 0 and "train/train_kind.py" in command and "--kind fixed_box" in command
    assert all(stages[name] == {"skipped": True} for name in ("frcnn", "yolo", "study"))
    assert stages["evaluate"]["exit_code"] == 0 and stages["calibrate"]["exit_code"] == 0

    manifest = json.loads((run_dir / "weights" / "manifest.json").read_text())
    assert list(manifest["models"]) == ["fixed_box"]
    entry = manifest["models"]["fixed_box"]
    assert entry["kind"] == "fixed_box" and entry["folds"] == [0, 1] and entry["input_size"] == 48

    # the CV report scored it as a detector, fused as the ensemble fuses (one detector: its own boxes)
    report = json.loads((run_dir / "report" / "cv_report.json").read_text())
    own = json.loads((run_dir / "fixed_box" / "oof_scores.json").read_text())
    assert report["models"]["fixed_box"]["opacity_ap"] == own["opacity_ap"]
    assert report["ensemble"]["ap"]["opacity"] == own["opacity_ap"]

    out = tmp_path / "submission.csv"
    run(["infer/make_submission.py", "--data-dir", str(siim_dataset), "--weights-dir", str(run_dir / "weights"),
         "--out", str(out), "--no-progress"], env)
    submission = pd.read_csv(out, dtype=str, keep_default_na=False).set_index("id")["PredictionString"]
    folds = np.stack([torch.load(run_dir / "weights" / entry["files"][str(k)], weights_only=True).numpy()
                      for k in (0, 1)]).astype(np.float64)
    # The predictor fuses a detector's folds (weighted boxes fusion, "avg"): the score-weighted mean box,
    # scored by the mean score; one detector and no classifier leave it as it is.
    box = (folds[:, :4] * folds[:, 4:]).sum(axis=0) / folds[:, 4].sum()
    dicoms = find_dicoms(siim_dataset / "test")
    assert dicoms
    for path in dicoms:
        header = pydicom.dcmread(path, stop_before_pixels=True)
        found = [p for p in parse_prediction_string(submission[f"{path.stem}_image"]) if p.label == "opacity"]
        assert len(found) == 1
        expected = box * [header.Columns, header.Rows, header.Columns, header.Rows]
        np.testing.assert_allclose(found[0].box, expected, atol=0.6)
        assert abs(found[0].confidence - folds[:, 4].mean()) < 1e-4
    assert project_files_state() == before  # nothing of the project was written for the new kind


BROKEN_PLUGINS = {
    "exits_at_import.py": "import sys\nsys.exit(0)\n",
    "raises_at_import.py": "raise ImportError('a dependency of this plugin is missing')\n",
    "clashing_member.py": ("from utils.kinds.member import Member\n\n\n"
                           "class TakesFasterRCNN(Member):\n    kind = 'frcnn'\n"),
}
BROKEN_ENTRY_POINTS = """[siim_covid.members]
a_exits = exits_at_import:Member
b_raises = raises_at_import:Member
c_not_a_member = json:loads
d_clash = clashing_member:TakesFasterRCNN
"""


def test_a_broken_or_clashing_plugin_is_left_out_by_name_and_every_command_still_runs(tmp_path):
    """Four bad member plugins: one calls sys.exit(0) at import, one raises, one names a function, one
    takes Faster R-CNN's manifest kind. Each is left out with a warning naming its entry point; the
    registry keeps the built-in members; make_submission still runs and fails for its own reason (here a
    missing weights folder), not with the plugin's exit code or a traceback."""
    import pytest

    from utils.core.plugins import PluginError, add_unique

    dist = tmp_path / "broken_members-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-members\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(BROKEN_ENTRY_POINTS)
    for name, text in BROKEN_PLUGINS.items():
        (tmp_path / name).write_text(text)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), str(REPO)]), YOLO_OFFLINE="true",
               NO_ALBUMENTATIONS_UPDATE="1")
    probe = ("from utils.kinds.members import MEMBER_TYPES\nfrom utils.kinds.frcnn.member import FasterRCNNMember\n"
             "assert sorted(MEMBER_TYPES) == ['frcnn', 'study', 'yolo'], MEMBER_TYPES\n"
             "assert MEMBER_TYPES['frcnn'] is FasterRCNNMember\nprint('registry ok')\n")
    result = subprocess.run([sys.executable, "-c", probe], cwd=REPO, env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0 and "registry ok" in result.stdout, result.stderr[-3000:]
    for name, why in [("a_exits", "does not load (SystemExit: 0)"),
                      ("b_raises", "does not load (ImportError: a dependency of this plugin is missing)"),
                      ("c_not_a_member", "names <function loads"),
                      ("d_clash", "takes the kind 'frcnn' of FasterRCNNMember")]:
        line = next((x for x in result.stderr.splitlines() if f"entry point {name!r}" in x), "")
        assert why in line and line.endswith("left out"), result.stderr[-3000:]
    submission = subprocess.run(
        [sys.executable, "infer/make_submission.py", "--data-dir", str(tmp_path), "--weights-dir",
         str(tmp_path / "no_weights"), "--out", str(tmp_path / "s.csv")],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert submission.returncode == 1 and "no_weights: weights folder not found" in submission.stderr
    assert "Traceback" not in submission.stderr and not (tmp_path / "s.csv").exists()
    with pytest.raises(PluginError, match="two model kinds named 'frcnn'"):
        add_unique({"frcnn": object()}, "frcnn", object(), "model kind")


def test_the_kinds_names_without_importing_a_kind_are_the_registrys():
    """utils.core.kind_names.kind_names (what the reports use, to start without importing every network)
    names the registry's kinds in its order; in a process without torch imported."""
    from utils.core.kind_names import kind_names
    from utils.kinds.registry import KINDS

    assert kind_names() == tuple(KINDS)
    probe = "import sys, infer.calibrate; assert 'torch' not in sys.modules, 'torch imported'; print('ok')"
    result = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-2000:]
