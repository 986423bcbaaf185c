"""The one way figures are shown: missing values, tables, and plots written whole or not at all."""

import math

import pytest

from utils.core.report import MISSING, figure, markdown_table, show, show_general, text_table


def test_every_missing_value_reads_the_same():
    assert show(None) == show(math.nan) == show_general(None) == show_general(math.nan) == MISSING
    assert show(0.12345) == "0.1235" and show(0.12345, 3) == "0.123"
    assert show(7) == "7" and show("fold 0") == "fold 0"
    assert show_general(1234.5) == "1234.5" and show_general(2e-7) == "2e-07"


def test_tables():
    header, row = text_table(("name", "AP"), [("opacity", None)], (10, 8))
    assert header == "name            AP" and row == "opacity        n/a"
    lines = markdown_table(("model", "mAP"), [("yolo", 0.4567), ("prior", None)], numeric_from=1)
    assert lines == ["| model | mAP |", "|---|---:|", "| yolo | 0.457 |", "| prior | n/a |"]


def test_figure_is_written_whole_or_not_at_all(tmp_path):
    path = tmp_path / "plot.png"
    with figure(figsize=(2, 2), path=path) as (_, axes):
        axes.plot([0, 1], [1, 0])
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    failed = tmp_path / "failed.png"
    with pytest.raises(RuntimeError):
        with figure(path=failed) as (_, axes):
            raise RuntimeError("drawing failed")
    assert not failed.exists() and list(tmp_path.iterdir()) == [path]
