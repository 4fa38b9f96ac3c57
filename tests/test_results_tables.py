"""Results files copied from a diagnostic's output folder carry the columns that diagnostic writes now:
a column added to the diagnostic since the copy (collinearity's no_gradient) leaves the results file
stale, its table no longer the one its Reproduce line writes."""
from pathlib import Path

from adaptive.diagnostics.collinearity import STATISTICS

RESULTS = Path(__file__).resolve().parents[1] / "recipes" / "benchmarks" / "results"


def _headers(text: str) -> list:
    """The column names of every Markdown table in ``text`` (a header row is the one above a --- row)."""
    lines = text.splitlines()
    return [[c.strip() for c in head.strip().strip("|").split("|")]
            for head, rule in zip(lines, lines[1:])
            if head.startswith("|") and rule.startswith("|") and set(rule.strip()) <= set("|-: ")]


def test_the_collinearity_results_table_has_the_columns_the_diagnostic_writes():
    """collinearity_digits.md is collinearity_layers.md of `recipes/diagnostics.py collinearity`, copied:
    its per-layer table lacked the no_gradient column the diagnostic has written since it was added (the
    share of weights whose cosine reads 0 only because no batch gave them a gradient)."""
    heads = _headers((RESULTS / "collinearity_digits.md").read_text())
    assert ["layer", "weights", *STATISTICS] in heads, heads
