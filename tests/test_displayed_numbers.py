"""The numbers the recipes print at the end of a run never round onto a bound they are not at: a
share of 99.996% read "100.00" (every one), one image of 50,000 "0.00" points (none), a density of
0.99999 "1.0000" (dense) and 100 of 268,336 weights removed "0.0" %."""
import math
import types

import numpy as np
import torch

from adaptive.metrics import fmt_accuracy, fmt_unsaturated

torch.set_num_threads(1)


def test_fmt_unsaturated_keeps_the_digits_that_tell_a_value_from_its_bounds():
    """Short of 100 or above 0 by less than the last digit: the digits that say so; at a bound, or
    well inside, the text as the spec writes it; NaN and inf as they are."""
    assert fmt_unsaturated(100 * 49_999 / 50_000, ".2f") == "99.998"
    assert fmt_unsaturated(100 / 50_000, ".2f") == "0.002"
    assert fmt_unsaturated(100.0, ".2f") == "100.00" and fmt_unsaturated(0.0, ".2f") == "0.00"
    assert fmt_unsaturated(86.3, ".2f") == "86.30" and fmt_unsaturated(99.94, ".1f") == "99.9"
    assert fmt_unsaturated(0.99999, ".4f", (0.0, 1.0)) == "0.99999"
    assert fmt_unsaturated(3e-5, ".4f", (0.0,)) == "0.00003"
    assert fmt_unsaturated(1 - 1e-16, ".4f", (0.0, 1.0)) != "1.0000"
    assert fmt_unsaturated(math.nan, ".2f") == "nan" and fmt_unsaturated(math.inf, ".4f", (0.0,)) == "inf"
    assert fmt_accuracy(49_999 / 50_000) == "99.998" and fmt_accuracy(1.0) == "100.00" and fmt_accuracy(None) == "n/a"


def test_fmt_unsaturated_of_numpy_numbers_none_and_values_beyond_eighteen_decimals():
    """An np.float32 accuracy of 0.99999 printed "100.00" (only int and float kept their digits), None
    raised TypeError where fmt_accuracy says "n/a", and a loss of 1e-30 printed eighteen zeros, which
    read as 0: now "99.999", "n/a" and "1.0e-30"; a bool is written as it is."""
    import numpy as np

    assert fmt_unsaturated(np.float32(0.99999) * 100, ".2f") == "99.999"
    assert fmt_unsaturated(np.float64(1e-5), ".4f", (0.0,)) == "0.00001"
    assert fmt_unsaturated(None, ".4f", (0.0,)) == "n/a"
    assert fmt_unsaturated(1e-30, ".4f", (0.0,)) == "1.0e-30" and fmt_unsaturated(-1e-25, ".2f") == "-1.0e-25"
    assert fmt_unsaturated(1e-18, ".4f", (0.0,)) == "0.000000000000000001"
    assert fmt_unsaturated(True, ".1f") == "1.0"


def test_prune_pretrained_results_table_never_rounds_onto_0_or_100():
    """results.md's 'removed %' was `.1f` (100 of 268,336 removed: "0.0"; all but 10: "100.0"), its
    accuracies `.2f` (49,999 of 50,000: "100.00") and its losses `.4f` (3e-5: "0.0000")."""
    from recipes._prune_pretrained.report import _table

    total = 268_336
    rows = [dict(target="100", removed=100, fraction=100 / total, train_loss=3e-5, train_acc=49_999 / 50_000,
                 holdout_loss=0.25, holdout_acc=1.0, test_loss=1.5, test_acc=1 / 50_000),
            dict(target=str(total - 10), removed=total - 10, fraction=(total - 10) / total, train_loss=2.0,
                 train_acc=0.1, holdout_loss=2.0, holdout_acc=0.1, test_loss=2.0, test_acc=0.1)]
    head, _, *body = _table(rows).splitlines()
    cols = [c.strip() for c in head.strip("|").split("|")]
    first, last = ({c: v.strip() for c, v in zip(cols, line.strip("|").split("|"))} for line in body)
    assert first["removed %"] == "0.04" and last["removed %"] == "99.996", (first, last)
    assert first["train acc %"] == "99.998" and first["test acc %"] == "0.002" and first["held-out acc %"] == "100.00"
    assert first["train loss"] == "0.00003" and first["held-out loss"] == "0.2500"


def test_knowledge_table_says_a_one_image_drop_is_not_none():
    """knowledge_curve.md (and the printout) gave accuracy in percent and its drop in points with 2
    decimals: on 50,000 test images (ImageNet's) a drop of one image read "0.00", as no drop at all."""
    from adaptive.diagnostics import KnowledgeCurve
    from adaptive.diagnostics.table import Table

    rows = [{"removed": 0, "fraction": 0.0, "accuracy": 1.0, "loss": 0.1, "accuracy_drop": 0.0, "loss_increase": 0.0},
            {"removed": 5, "fraction": 0.5, "accuracy": 49_999 / 50_000, "loss": 0.1, "accuracy_drop": 1 / 50_000,
             "loss_increase": 1e-6}]
    shown = KnowledgeCurve(Table(rows), 10, "magnitude", 0, {}, 0.1).shown_table()
    assert shown["accuracy (%)"] == ["100.00", "99.998"] and shown["accuracy drop (points)"] == ["0.00", "0.002"]


def test_adaptive_closing_line_never_rounds_onto_full_density_or_accuracy(tmp_path, capsys):
    """recipes/adaptive.py's last line printed `.2f` accuracies and a `.4f` density: 199,999 of
    200,000 synapses live read "density 1.0000" (dense) and 49,999 of 50,000 test images "100.00%"."""
    from recipes._adaptive.report import _finish

    acc = types.SimpleNamespace(is_main_process=True, mixed_precision="no", native_amp=False, num_processes=1)
    summary = dict(seconds=1.0, test_accuracy=49_999 / 50_000, test_examples=50_000, holdout_accuracy=1 / 50_000,
                   density=199_999 / 200_000, live=199_999, nonzero=199_999, synapses=200_000, updates=0)
    _finish(acc, tmp_path, summary, {})
    out = capsys.readouterr().out
    assert "test accuracy 99.998% on 50,000" in out and "held-out part of TRAIN 0.002%" in out, out
    assert "density 0.99999 (199,999 of 200,000" in out, out


def _saved_axes(monkeypatch):
    """The axes of every figure saved from here on (a spy on Figure.savefig)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.figure

    saved, real = [], matplotlib.figure.Figure.savefig

    def spy(fig, path, **kw):
        saved.append(list(fig.axes))
        return real(fig, path, **kw)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", spy)
    return saved


def test_accuracy_axes_name_their_unit(tmp_path, monkeypatch):
    """loss_accuracy.png and prune_pretrained's curves.png plot accuracy as the fraction metrics.csv
    and summary.json hold (0.82), beside a closing line and results.md that print percent (82.00), under
    a bare 'accuracy' axis; the axis now says the unit."""
    from adaptive.plots import plot_loss_accuracy
    from recipes._prune_pretrained.plot import _plot

    saved = _saved_axes(monkeypatch)
    plot_loss_accuracy([{"step": 1, "split": "train", "loss": 1.0, "accuracy": 0.5},
                        {"step": 1, "split": "test", "loss": 1.0, "accuracy": 0.82}], tmp_path / "la.png")
    loss, acc = saved[-1]
    assert acc.get_ylabel() == "accuracy (fraction correct)" and loss.get_ylabel() == "loss"
    assert [list(line.get_ydata()) for line in acc.get_lines()] == [[0.5], [0.82]]  # the fractions, as labelled
    ups = [{"kind": "update", "step": 1, "removed": 10, "train_loss": 1.0, "train_acc": 0.5}]
    evs = [{"kind": "eval", "step": 1, "stage": 0, "removed": 10, "holdout_loss": 1.0, "holdout_acc": 0.6}]
    rows = [{"target": "dense", "removed": 0, "holdout_acc": 0.7, "holdout_loss": 0.9, "test_acc": 0.65, "test_loss": 1.1}]
    _plot(ups + evs, rows, [], tmp_path / "curves.png")
    assert saved[-1][1].get_ylabel() == "accuracy (fraction correct)" and saved[-1][0].get_ylabel() == "loss"


def test_prune_pretrained_curves_say_where_a_value_is_not_finite(tmp_path, monkeypatch):
    """curves.png drew a NaN or inf loss (a bf16 overflow, say) as a silent gap while results.md
    printed 'nan'; the panel now says how many of its points are left out."""
    from recipes._prune_pretrained.plot import _plot

    saved = _saved_axes(monkeypatch)
    ups = [{"kind": "update", "step": s, "removed": 10, "train_loss": v, "train_acc": 0.5}
           for s, v in ((1, 1.0), (2, math.nan), (3, math.inf))]
    evs = [{"kind": "eval", "step": 3, "stage": 0, "removed": 10, "holdout_loss": 1.0, "holdout_acc": 0.6}]
    rows = [{"target": "dense", "removed": 0, "holdout_acc": 0.7, "holdout_loss": 0.9, "test_acc": 0.65, "test_loss": 1.1},
            {"target": "10", "removed": 10, "holdout_acc": 0.6, "holdout_loss": 1.0, "test_acc": None,
             "test_loss": math.nan}]
    _plot(ups + evs, rows, [], tmp_path / "curves.png")
    loss, acc = saved[-1][:2]
    assert "loss not finite at 3 of 7 points (left out)" in loss.get_title(), loss.get_title()
    assert "not finite" not in acc.get_title()  # a missing accuracy (None) is no value, not a NaN


def test_progress_lines_never_round_onto_full_or_empty_density_or_accuracy():
    """The progress lines of recipes/adaptive.py and prune_pretrained.py printed a `.2f` accuracy and a
    `.4f` density: 49,999 of 50,000 images read "100.00%", 199,999 of 200,000 synapses "density 1.0000"
    and one of 200,000 "density 0.0000". A value that does not saturate keeps its format."""
    from adaptive.cli import mask_only_progress, progress_line

    line = progress_line(step="1/2", holdout_accuracy=49_999 / 50_000, density=199_999 / 200_000, seconds=1.0)
    assert line == "progress: step 1/2, holdout accuracy 99.998%, density 0.99999, 1 s", line
    line = progress_line(holdout_accuracy=1 / 50_000, density=1 / 200_000)
    assert line == "progress: holdout accuracy 0.002%, density 0.00001", line
    assert progress_line(holdout_accuracy=1.0, density=0.2) == "progress: holdout accuracy 100.00%, density 0.2000"
    shown = []  # prune_pretrained's lines (mask_only_progress) compute their density from the records
    on_record = mask_only_progress(200_000, shown.append)
    on_record({"kind": "eval", "step": 5, "holdout_acc": 0.875, "removed": 1, "wall_seconds": 3.0})
    assert shown == ["progress: step 5, holdout accuracy 87.50%, density 0.99999, 3 s"], shown


def test_knowledge_table_formats_numpy_numbers():
    """shown_table's cell formatted only Python int and float: an np.float64 accuracy (an array's
    mean) went into knowledge_curve.md unformatted, as a fraction under "accuracy (%)"."""
    from adaptive.diagnostics import KnowledgeCurve
    from adaptive.diagnostics.table import Table

    rows = [{"removed": 0, "fraction": 0.0, "accuracy": np.float64(0.8), "loss": 0.1,
             "accuracy_drop": np.float32(0.0), "loss_increase": 0.0},
            {"removed": 5, "fraction": 0.5, "accuracy": np.float32(49_999 / 50_000), "loss": 0.1,
             "accuracy_drop": np.float64(1 / 50_000), "loss_increase": 1e-6}]
    shown = KnowledgeCurve(Table(rows), 10, "magnitude", 0, {}, 0.1).shown_table()
    assert shown["accuracy (%)"] == ["80.00", "99.998"] and shown["accuracy drop (points)"] == ["0.00", "0.002"], shown


def test_knowledge_curve_md_says_fraction_is_of_the_weights_live_at_the_start(tmp_path):
    """knowledge_curve.md's fraction column is a share of the weights live at the start (pruned ones not
    counted), but only the printout's last line and the figure's top axis said so, not the file."""
    from adaptive.diagnostics import KnowledgeCurve
    from adaptive.diagnostics.table import Table

    rows = [{"removed": 0, "fraction": 0.0, "accuracy": 1.0, "loss": 0.1, "accuracy_drop": 0.0, "loss_increase": 0.0}]
    KnowledgeCurve(Table(rows), 600, "magnitude", 0, {}, 0.1, pruned_before=400).save(str(tmp_path))
    text = (tmp_path / "knowledge_curve.md").read_text()
    table, caption = text.strip().split("\n\n")
    assert table.startswith("| removed | fraction | accuracy (%) |")
    assert "600 prunable weights live at the start" in caption and "400 already pruned" in caption, caption
    assert KnowledgeCurve.load(str(tmp_path)).total == 600  # (load reads the CSV, not the caption)


def test_adaptive_closing_line_counts_live_synapses_at_zero_from_the_live_ones(tmp_path, capsys):
    """"N of them holding exactly 0.0" is live minus nonzero: computed from every synapse, a run at density 0.9 whose
    900 live weights are all nonzero read "100 of them holding exactly 0.0"."""
    from recipes._adaptive.report import _finish

    acc = types.SimpleNamespace(is_main_process=True, mixed_precision="no", native_amp=False, num_processes=1)
    for nonzero, said in ((900, None), (880, "(900 of 1,000 synapses live, 20 of them holding exactly 0.0)")):
        summary = dict(seconds=1.0, test_accuracy=0.5, test_examples=100, holdout_accuracy=0.5, density=0.9,
                       live=900, nonzero=nonzero, synapses=1000, updates=3)
        _finish(acc, tmp_path, summary, {})
        out = capsys.readouterr().out
        assert ("holding exactly 0.0" in out) is (said is not None) and (said is None or said in out), out


def test_the_nonzero_count_reads_live_synapses_only_even_after_a_run_diverged():
    """summary.json's nonzero counts live weights not exactly 0.0: a pruned weight is 0.0, or NaN once a run
    diverged, and is never counted (counted, the closing line's live synapses at 0.0 came out negative)."""
    from torch import nn

    from adaptive import Connectome
    from recipes._adaptive.report import _nonzero

    conn = Connectome(nn.Sequential(nn.Linear(4, 4)))
    conn.set_masks({n: (torch.arange(m.numel()) % 2 == 0).view_as(m) for n, m in conn.masks.items()})
    with torch.no_grad():
        for p in conn.params.values():
            p.fill_(float("nan"))
    assert conn.num_live() == 8 and _nonzero(conn) == 8


def test_the_held_out_lines_label_counts_the_held_out_images_not_the_train_parts():
    from recipes._adaptive.report import _split_labels

    loaders = types.SimpleNamespace(datasets=types.SimpleNamespace(train=list(range(900)), holdout=list(range(100)),
                                                                   test=list(range(500))))
    assert _split_labels(loaders, 500, "train")["holdout"] == "held-out (100 images of TRAIN)"
