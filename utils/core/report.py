"""One home for how figures are shown: a number (or its absence) in a table cell, plain-text and
markdown tables, and the matplotlib set-up and atomic save every plot shares."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterable, Sequence

from utils.core.files import atomic_path, write_json_atomic, write_text_atomic

MISSING = "n/a"  # how every table shows a score that does not exist (e.g. an AP with no positives)


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and value != value)  # None or NaN


def show(value, digits: int = 4) -> str:
    """A score for a table: ``n/a`` when missing (None or NaN), a float with ``digits`` decimals, an
    integer as it is, anything else as text."""
    if _missing(value):
        return MISSING
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def show_general(value) -> str:
    """Like :func:`show` but with ``%g`` for numbers: measurements (rates, seconds) of any magnitude."""
    if _missing(value):
        return MISSING
    return f"{value:g}" if isinstance(value, (int, float)) and not isinstance(value, bool) else str(value)


def text_table(header: Sequence[str], rows: Iterable[Sequence], widths: Sequence[int], digits: int = 4) -> list[str]:
    """Fixed-width lines: the first column left-aligned, the others right-aligned, cells through :func:`show`."""
    def line(cells):
        first, *rest = cells
        return f"{str(first):<{widths[0]}}" + "".join(
            f"{show(c, digits):>{w}}" for c, w in zip(rest, widths[1:]))
    return [line(header), *(line(r) for r in rows)]


def markdown_table(header: Sequence[str], rows: Iterable[Sequence], digits: int = 3,
                   numeric_from: int | None = None) -> list[str]:
    """Markdown lines; cells through :func:`show`. Columns from ``numeric_from`` on are right-aligned."""
    align = ["---" if numeric_from is None or i < numeric_from else "---:" for i in range(len(header))]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(show(c, digits) for c in row) + " |" for row in rows]
    return lines


@contextmanager
def figure(*args, dpi: int = 100, path=None, **kwargs):
    """``with figure(1, 2, path=out, figsize=(9, 4)) as (fig, axes):`` draws with matplotlib's
    headless backend, then (unless the block raised) lays out and writes ``path`` atomically (a PNG
    never half-written) and frees the figure either way."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(*args, **kwargs)
    try:
        yield fig, axes
        if path is not None:
            fig.tight_layout()
            with atomic_path(path) as temporary:
                fig.savefig(temporary, format="png", dpi=dpi)
    finally:
        plt.close(fig)


def write_ablation(out, rows: list[dict], text: str) -> None:
    """An ablation's result in folder ``out``: its rows (``ablation.json``) and its markdown table
    (``ablation.md``, also printed: the README's copy)."""
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "ablation.json", rows)
    write_text_atomic(out / "ablation.md", text)
    print(text)
