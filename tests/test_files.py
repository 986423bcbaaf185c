"""Atomic writes: the file appears whole or not at all, and no temporary file is left behind."""

from __future__ import annotations

import pytest

from utils.core.files import OverwriteError, atomic_path, check_not_an_input


def test_the_file_is_replaced_only_when_the_write_finishes(tmp_path):
    path = tmp_path / "sub" / "result.csv"
    with atomic_path(path) as temporary:
        assert temporary.parent == path.parent and temporary.suffix == ".csv" and temporary != path
        temporary.write_text("first")
    assert path.read_text() == "first"
    with pytest.raises(RuntimeError, match="killed"), atomic_path(path) as temporary:
        temporary.write_text("half")
        raise RuntimeError("killed")
    assert path.read_text() == "first"
    assert [p.name for p in path.parent.iterdir()] == ["result.csv"]


def test_an_output_that_is_an_input_is_refused_through_links_and_folders(tmp_path):
    inputs = tmp_path / "weights"
    (inputs / "study").mkdir(parents=True)
    weights = inputs / "study" / "fold0.pt"
    weights.write_bytes(b"w")
    (tmp_path / "link.csv").symlink_to(weights)
    (tmp_path / "hard.csv").hardlink_to(weights)
    for out in (weights, tmp_path / "link.csv", tmp_path / "hard.csv"):
        with pytest.raises(OverwriteError, match=rf"--out .*{out.name} is an input of this run \(.*fold0.pt\)"):
            check_not_an_input(out, [None, inputs])
    # A new path, or an existing file that is no input (an earlier submission), may be written.
    check_not_an_input(tmp_path / "new.csv", [inputs])
    (tmp_path / "old.csv").write_text("id,PredictionString\n")
    check_not_an_input(tmp_path / "old.csv", [inputs, tmp_path / "missing.csv"])
