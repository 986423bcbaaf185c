"""The prepared GPU check at toy sizes on the CPU: every part runs and reports, so the command is known
to work before any GPU time is spent (``make gpu-check SMOKE=1``)."""

from __future__ import annotations

import json
import sys

import pytest

from infer import gpu_check
from utils.benchmarking import gpu_check as gpu_checks


@pytest.mark.slow
def test_gpu_check_smoke_runs_every_part_and_writes_its_table(tmp_path, capsys):
    assert gpu_check.main(["--smoke", "--out", str(tmp_path / "check")]) == 0
    result = json.loads((tmp_path / "check" / "gpu_check.json").read_text())
    parts = {p["name"]: p for p in result["parts"]}
    assert list(parts) == list(gpu_checks.PARTS) and all(p["status"] == "ok" for p in parts.values())
    assert parts["training"]["figures"]["speedup"] > 0
    inference = parts["inference"]["figures"]
    assert inference["images_per_s"]["end_to_end_inline_fusion"] > 0 < inference["images_per_s"]["models"]
    assert inference["images_per_s"]["frcnn_tta_channels_last"] > 0  # the layout comparison ran
    loop = parts["loop"]["figures"]["kinds"]  # every kind's loop beside its bare model and its data
    assert set(loop) == set(gpu_checks.KINDS) and all(v["config"]["loop_images_per_s"] > 0 for v in loop.values())
    assert "| inference | end to end / models |" in (tmp_path / "check" / "gpu_check.md").read_text()
    assert "| loop | study (config) images/s |" in (tmp_path / "check" / "gpu_check.md").read_text()
    assert set(parts["real256"]["figures"]["cv"]) >= {"ensemble", "baseline_prior", "models"}
    first = next(iter(gpu_checks.KINDS))  # the smoke's epochs part trains the first kind only
    assert parts["epochs"]["figures"]["first_epochs"][first]["images_per_s"] > 0
    assert "evaluate" not in parts["epochs"]["figures"]["stage_seconds"]  # one epoch each, no CV report
    real256 = parts["real256"]["figures"]["first_epochs"]
    assert all(real256[name]["images_per_s"] > 0 for name in gpu_checks.KINDS)  # every kind's first epoch
    table = (tmp_path / "check" / "gpu_check.md").read_text()
    assert "| real256 | CV ensemble" in table and table in capsys.readouterr().out


def test_a_part_past_its_cap_is_reported_not_dropped(tmp_path):
    parts = [gpu_checks.Part("training", [sys.executable, "-c", "import time; time.sleep(30)"], cap_s=1)]
    gpu_checks.run_parts(parts, tmp_path, budget_s=60, env={})
    assert parts[0].status.startswith("did not fit: stopped at its 1 s cap")
    late = [gpu_checks.Part("inference", [sys.executable, "-c", "pass"], cap_s=10)]
    gpu_checks.run_parts(late, tmp_path, budget_s=5, env={})
    assert late[0].status.startswith("did not fit") and late[0].seconds == 0.0
