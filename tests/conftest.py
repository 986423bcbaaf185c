"""Shared fixtures: the real material in ../shared (skipped when absent) and a tiny synthetic dataset."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


def shared_path(*parts: str) -> Path:
    """A path under ../shared, or skip the test when it is not there (a user's fresh clone)."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} not present")
    return path


@pytest.fixture(scope="session")
def shared():
    """``shared("real-xrays", "x.dcm")``: a path under ../shared, or skip. (A fixture, not an import:
    ultralytics installs a top-level ``tests`` package that would shadow ours.)"""
    return shared_path


@pytest.fixture(scope="session")
def siim_dataset(tmp_path_factory) -> Path:
    """A small synthetic competition folder, written once per test session."""
    from utils.synthetic import make_siim_dataset

    out = tmp_path_factory.mktemp("siim")
    make_siim_dataset(out, train_studies=24, test_studies=8, seed=3, max_size=160, progress=False)
    return out
