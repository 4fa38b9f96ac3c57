"""Results files copied from a diagnostic's output folder carry the columns that diagnostic writes now:
a column added to the diagnostic since the copy (collinearity's no_gradient) leaves the results file
stale, its table no longer the one its Reproduce line writes."""
from pathlib import Path

import pytest

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


def _knowledge_columns():
    """The columns of knowledge_curve.md and knowledge_fit.md as the knowledge diagnostic writes them now."""
    from adaptive.diagnostics import KnowledgeCurve
    from adaptive.diagnostics.table import Table

    row = {"removed": 0, "fraction": 0.0, "accuracy": 0.5, "loss": 1.0, "accuracy_drop": 0.0, "loss_increase": 0.0}
    fit = {"rate": 0.1, "points": 3, "r2": 1.0, "within_tolerance": 1.0, "fit_from": 1, "fit_to": 3,
           "holds_from": 1, "holds_to": 3, "floor": 0.001}
    curve = KnowledgeCurve(Table([row]), 10, "obd", 0, {"loss_increase": fit}, 0.1)
    return curve.shown_table().columns, curve.shown_fit_table().columns


def test_the_obd_knowledge_results_tables_have_the_columns_the_diagnostic_writes():
    """knowledge_resnet20_obd.md is knowledge_curve.md and knowledge_fit.md of `recipes/diagnostics.py
    knowledge --estimator obd`, copied: it gave the accuracy as a fraction under 'accuracy' (the curve
    table has given percent, 'accuracy (%)', since) and lacked the fit table's fitted_above column."""
    heads = _headers((RESULTS / "knowledge_resnet20_obd.md").read_text())
    curve, fit = _knowledge_columns()
    assert list(curve) in heads and list(fit) in heads, (curve, fit, heads)


@pytest.mark.parametrize("name", ["knowledge_resnet20.md", "knowledge_resnet20_finetuned.md"])
def test_the_magnitude_knowledge_results_tables_have_the_columns_the_diagnostic_writes(name):
    """knowledge_resnet20.md is knowledge_curve.md and knowledge_fit.md of the one-shot `recipes/diagnostics.py
    knowledge` run the docs quote, copied: it gave the accuracy as a fraction under 'accuracy' and its drop
    under 'accuracy_drop' (percent and points since); knowledge_resnet20_finetuned.md likewise for the
    --finetune_batches run and its one-shot comparison. Every curve table and every fit table is checked."""
    heads = _headers((RESULTS / name).read_text())
    curve, fit = _knowledge_columns()
    curves = [h for h in heads if h[0] == "removed"]
    fits = [h for h in heads if h[0] == "quantity"]
    assert curves and fits and all(h == list(curve) for h in curves) and all(h == list(fit) for h in fits), heads



def test_the_prune_pretrained_best_results_table_has_the_columns_the_recipe_writes():
    """prune_pretrained_best.md is the results.md of `recipes/prune_pretrained.py --remove best`, copied: it
    kept the columns of an older recipe ('train acc', no '%'), which the recipe's table has not written since."""
    from recipes._prune_pretrained.report import _table

    row = {"target": "dense", "removed": 0, "fraction": 0.0, "train_loss": 1.0, "train_acc": 0.5,
           "holdout_loss": 1.0, "holdout_acc": 0.5, "test_loss": 1.0, "test_acc": 0.5}
    written = _headers(_table([row]))
    heads = _headers((RESULTS / "prune_pretrained_best.md").read_text())
    assert written and heads == written, (heads, written)
