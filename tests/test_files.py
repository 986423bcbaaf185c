"""Atomic writes: the file appears whole or not at all, and no temporary file is left behind."""

from __future__ import annotations

import pytest

from utils.files import atomic_path


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
