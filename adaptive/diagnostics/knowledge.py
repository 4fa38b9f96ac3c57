"""Knowledge distribution: what a network still knows after its least useful weights are removed.

Weights are removed in utility order (lowest removal cost first, any estimator of the registry),
either one shot from the intact network or progressively with a light fine-tune after every point
that keeps removed weights at exactly zero (:meth:`adaptive.Connectome.attach`). The curve of
accuracy and loss against the number removed is fitted with an exponential: if knowledge is
distributed roughly exponentially over the weights, ``log(loss increase)`` grows linearly with the
number removed over a wide middle range, and the fit breaks at the first weights (changes below
the noise) and at the last (the network has collapsed to chance).
"""
from __future__ import annotations

import math
import numbers
import re
import warnings
import weakref
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence

import torch
from torch import nn

from .. import jsonio
from ..atomic import write_text
from ..connectome import Connectome, _local_module, _plain_patterns
from ..discovery import copy_model
from ..counts import whole_number
from ..metrics import (AccuracyFn, batch_accuracy, call_model, check_output, default_accuracy, example_count, loss_weight,
                       to_device, fmt_unsaturated)
from ..global_rng import kept_global_rng
from ..warn import warn_user
from ._common import (bars_off, batch_loss, batch_statistics_explained, default_loss, iterate_batches, held_masks, kept_buffers, model_connectome,
                      model_device, warn_if_zeros)
from ..modes import modes_kept
from .removal_order import global_order, removal_scores
from ..plots import closed_on_error
from .table import Table, pyplot, save_figure

DEFAULT_NOISE_FLOOR = 1e-3  # nats of loss increase: changes below are noise, not fitted
ONE_SAMPLE_FIX = ("give finetune_loader (default order_loader) batches of at least 2 samples (recipes/diagnostics.py: "
                  "--batch_size 2 or more)")


def default_counts(total: int, points: int = 40, max_fraction: float = 1.0) -> List[int]:
    """0, then about ``points`` geometrically spaced counts from 1 to ``max_fraction * total``,
    merged with ``points // 2`` evenly spaced ones (so both log and linear axes are covered).
    ``points``: a whole number >= 1; ``max_fraction``: in (0, 1]."""
    points = _check_points(points, max_fraction)
    if total >= 1 and round(total * max_fraction) < 1:  # (it removed one weight all the same: past the fraction)
        raise ValueError(f"max_fraction={max_fraction!r} of the {total:,} prunable weights is under one weight, so "
                         f"the curve would remove none: give at least {1 / total:.3g} (one weight), or more")
    top = max(1, int(round(total * max_fraction)))
    geo = torch.logspace(0, math.log10(top), points, dtype=torch.float64).round().long().tolist()
    lin = torch.linspace(0, top, max(2, points // 2), dtype=torch.float64).round().long().tolist()
    return sorted(set([0] + geo + lin))


def _check_points(points, max_fraction) -> int:
    """``points`` as an int; refuse a ``points`` or ``max_fraction`` that draws no curve, naming the argument."""
    if whole_number(points) is None or points < 1:
        raise ValueError(f"points must be a whole number of removal counts, at least 1, got {points!r}")
    if isinstance(max_fraction, bool) or not isinstance(max_fraction, numbers.Real) or not 0.0 < max_fraction <= 1.0:
        raise ValueError(f"max_fraction must be the fraction of prunable weights to remove at most, in (0, 1], "
                         f"got {max_fraction!r}")
    return whole_number(points)


def materialize(loader, batches: Optional[int], desc: str, warn_short: bool = False):
    """The first ``batches`` batches of ``loader`` held in memory (so each point re-reads no files);
    ``warn_short``: warn where the loader holds fewer than ``batches``."""
    return [(x, y) for x, y in iterate_batches(loader, batches, desc=desc, warn_short=warn_short)]


@kept_global_rng()
@torch.no_grad()
def evaluate(model: nn.Module, data, loss_fn: Callable = default_loss,
             accuracy_fn: Optional[AccuracyFn] = default_accuracy) -> Dict[str, float]:
    """Mean loss and top-1 accuracy of ``model`` (eval mode) over the ``(x, y)`` batches in ``data``,
    with the contract of :mod:`adaptive.metrics`: ``accuracy`` is None where there is none (by
    default anything but integer targets of the output's shape without its class axis 1), the loss
    is each batch's mean weighted by its positions (classification shapes) or examples. ``samples``:
    the examples; ``positions``, only where they differ from the examples (a sequence tagger): what
    the accuracy counted. ``loss_fn(output, targets)``: the batch's mean loss (default
    cross-entropy); ``accuracy_fn(output, targets) -> (correct, count)`` counts accuracy your way
    (None: no accuracy). Batches may carry more than ``(x, y)`` (an index): the rest is ignored; ``data``
    without a batch is refused with a ValueError. The global random generators are left as it found
    them (a DataLoader without a generator draws each pass's seed from torch's: :mod:`adaptive.global_rng`)."""
    device = model_device(model)
    tot_loss, correct, counted, n, examples = 0.0, 0, 0, 0, 0
    with modes_kept(model, False):
        for b, (x, y, *_) in enumerate(data, 1):
            x, y = to_device(x, device), to_device(y, device)
            out = check_output(call_model(model, x, "knowledge_distribution"), model, "knowledge_distribution")
            units = loss_weight(out, y)
            tot_loss += float(batch_loss(loss_fn, out, y, f"knowledge_distribution's evaluation batch {b}")) * units
            n += units
            examples += example_count(y)
            acc = batch_accuracy(accuracy_fn, out, y)
            if acc is not None:
                correct += acc[0]
                counted += acc[1]
    if not n:  # a ZeroDivisionError before
        raise ValueError("evaluate: the data yielded no examples (an empty loader or dataset): pass at least one "
                         "(inputs, targets) batch")
    r = {"loss": tot_loss / n, "accuracy": correct / counted if counted else None, "samples": examples}
    if counted and counted != examples:
        r["positions"] = counted
    return r


def fit_exponential(x: Sequence[float], y: Sequence[float], use: Sequence[bool], tolerance: float = math.log(2)) -> dict:
    """Least-squares fit ``log y = a + rate * x`` on the points where ``use`` is true (and y > 0).
    Returns rate, intercept, r2, the fitted points' range (``fit_from``/``fit_to``), the fraction of
    fitted points within ``tolerance`` (log units; ln 2 = a factor of 2) of the line, and
    ``holds_from``/``holds_to``: how far beyond the fitted range, point by consecutive point, the
    line stays within ``tolerance``; where the exponential description breaks."""
    X = torch.tensor(list(x), dtype=torch.float64)
    Y = torch.tensor(list(y), dtype=torch.float64)
    pos = Y > 0
    m = torch.tensor(list(use), dtype=torch.bool) & pos
    if int(m.sum()) < 3:
        return {"rate": float("nan"), "intercept": float("nan"), "r2": float("nan"), "points": int(m.sum()),
                "fit_from": None, "fit_to": None, "holds_from": None, "holds_to": None}
    xs, ly = X[m], Y[m].log()
    A = torch.stack([torch.ones_like(xs), xs], 1)
    coef = torch.linalg.lstsq(A, ly.unsqueeze(1)).solution.squeeze(1)
    a, r = float(coef[0]), float(coef[1])
    res = ly - (a + r * xs)
    r2 = 1 - float((res ** 2).sum()) / max(float(((ly - ly.mean()) ** 2).sum()), 1e-300)
    resid_all = torch.full_like(X, float("inf"))
    resid_all[pos] = (Y[pos].log() - (a + r * X[pos])).abs()
    ok = resid_all <= tolerance
    idx = torch.nonzero(m).squeeze(1)
    lo, hi = int(idx[0]), int(idx[-1])
    while lo > 0 and bool(ok[lo - 1]):
        lo -= 1
    while hi < len(X) - 1 and bool(ok[hi + 1]):
        hi += 1
    return {"rate": r, "intercept": a, "r2": r2, "points": int(m.sum()),
            "within_tolerance": float(ok[m].double().mean()),
            "fit_from": float(X[idx[0]]), "fit_to": float(X[idx[-1]]),
            "holds_from": float(X[lo]), "holds_to": float(X[hi])}


def has_accuracy(table: Table) -> bool:
    """Whether a knowledge curve measured accuracy (not for regression or other targets without it)."""
    return "accuracy" in table.columns and all(a is not None for a in table["accuracy"])


def fit_curve(table: Table, chance: Optional[float], samples: int,
              noise_floor: float = DEFAULT_NOISE_FLOOR) -> Dict[str, dict]:
    """Exponential fits of a knowledge curve's loss increase and accuracy drop over its middle: the
    points above a floor (the loss increase's: ``noise_floor``, in nats; the accuracy drop's: 1.5 of the
    ``samples`` it counted, its resolution, whatever ``noise_floor`` is), up to the first point
    where the accuracy has lost 90% of its way to ``chance`` (the collapse). A curve without
    accuracy gets the loss fit alone, over every point above the floor (no collapse to detect);
    so does the collapse where ``chance`` is None (an ``accuracy_fn`` of your own, no ``num_classes``)."""
    if not has_accuracy(table):
        body = [li > noise_floor for li in table["loss_increase"]]
        return {"loss_increase": {**fit_exponential(table["removed"], table["loss_increase"], body), "floor": noise_floor}}
    acc0 = table["accuracy"][0]
    if chance is None:
        chance = -math.inf  # no chance level known: no collapse cut
    span = max(acc0 - chance, 1e-9)
    drops = table["accuracy_drop"]
    collapse = next((i for i, d in enumerate(drops) if d >= 0.9 * span), len(drops))
    k = table["removed"]
    acc_floor = 1.5 / max(samples, 1)  # a fraction of the samples: a loss floor in nats is no measure of it
    body = [i < collapse and li > noise_floor for i, li in enumerate(table["loss_increase"])]
    body_acc = [i < collapse and d > acc_floor for i, d in enumerate(drops)]
    return {"loss_increase": {**fit_exponential(k, table["loss_increase"], body), "floor": noise_floor},
            "accuracy_drop": {**fit_exponential(k, drops, body_acc), "floor": acc_floor}}


def _forever(loader):
    while True:
        empty = True
        for x, y, *_ in loader:
            empty = False
            yield x, y
        if empty:
            if iter(loader) is loader:  # a generator or iterator: one pass (the order's, or its own) uses it up
                raise ValueError("the fine-tune loader yielded no batches: it is a generator or iterator, which one pass "
                                 "uses up (the removal order's, where no finetune_loader is given, or its own before the "
                                 "fine-tune had its batches), or it is empty; pass a DataLoader or a list of batches, "
                                 "which can be read again")
            raise ValueError("the fine-tune loader yielded no batches: it is empty; pass one with at least one "
                             "(inputs, targets) batch")


@dataclass
class KnowledgeCurve:
    """Accuracy and loss of what remains against the number of weights removed.

    ``table``: one row per point (removed, fraction, accuracy, loss, accuracy_drop, loss_increase; a
    curve without accuracy, see :mod:`adaptive.metrics`, has no accuracy columns).
    ``fits``: exponential fits of the loss increase and the accuracy drop (see :func:`fit_exponential`),
    each with the ``floor`` it was fitted above (the loss fit alone where there is no accuracy).
    ``chance``: 1 / the classes on the output's axis 1; None where there is no accuracy. ``noise_floor``: the loss increase below which
    :func:`fit_curve` fitted nothing (recorded in ``knowledge_summary.json``, the fit table and the figure).
    ``total``: the prunable weights live at the start; ``pruned_before``: those the model came with
    already pruned (its Connectome's masks), which stay pruned and are counted in neither.
    ``measured_of``: the model's prunable weights in all, of which include/exclude chose the
    ``total + pruned_before`` measured (the note and the figure's axis say so where that is fewer).
    ``estimator``: the removal order's estimator; ``finetune_batches``: SGD steps after each removal
    (0: one shot); ``note``: what a reader must know of the curve (no accuracy, weights pruned
    before); ``meta``: the intact network's numbers (``"base"``), the pruned copy, its connectome
    and the removal order, and whatever a caller adds (its plain entries are saved in
    ``knowledge_summary.json``).
    """

    table: Table
    total: int
    estimator: str
    finetune_batches: int
    fits: Dict[str, dict]
    chance: Optional[float]
    note: str = ""
    meta: dict = field(default_factory=dict)
    noise_floor: float = DEFAULT_NOISE_FLOOR
    pruned_before: int = 0
    measured_of: Optional[int] = None

    def save(self, out_dir: str) -> None:
        """Write ``knowledge_curve.csv/.md``, ``knowledge_fit.csv/.md`` and ``knowledge_summary.json``
        (strict JSON: a fit that failed has the strings "NaN" or "Infinity", not the bare tokens, as figures;
        :mod:`adaptive.jsonio`, which :meth:`load` reads back as floats)."""
        import os

        os.makedirs(out_dir, exist_ok=True)
        self.table.to_csv(os.path.join(out_dir, "knowledge_curve.csv"))  # fractions, for reading back (load)
        write_text(os.path.join(out_dir, "knowledge_curve.md"), self.shown_markdown() + "\n")
        fit = self.fit_table()
        fit.to_csv(os.path.join(out_dir, "knowledge_fit.csv"))
        write_text(os.path.join(out_dir, "knowledge_fit.md"), self.shown_fit_table().to_markdown() + "\n")
        keep = {k: v for k, v in self.meta.items() if isinstance(v, (int, float, str, dict, list)) or v is None}
        write_text(os.path.join(out_dir, "knowledge_summary.json"), jsonio.dumps(
            {"total_weights": self.total, "estimator": self.estimator, "finetune_batches": self.finetune_batches,
             "pruned_before": self.pruned_before, "measured_of": self.measured_of,
             "chance": self.chance, "noise_floor": self.noise_floor, "note": self.note, "fits": self.fits,
             "meta": keep}, indent=2))

    @classmethod
    def load(cls, out_dir: str, noise_floor: Optional[float] = None) -> "KnowledgeCurve":
        """Read what :meth:`save` wrote and fit again (e.g. to redraw with another noise floor), above
        ``noise_floor`` (None: the one the run recorded; 1e-3 for a run that recorded none).
        ``meta["refit_of"]`` names the folder and the noise floor its fit used (None: not recorded)."""
        import csv
        import os

        if not os.path.isdir(out_dir):
            raise FileNotFoundError(f"{out_dir} is not a folder: give the output folder of a finished knowledge run")
        missing = [n for n in ("knowledge_summary.json", "knowledge_curve.csv") if not os.path.isfile(os.path.join(out_dir, n))]
        if missing:
            raise FileNotFoundError(f"{out_dir} holds no {' or '.join(missing)}: it is not the output folder of a "
                                    "finished knowledge run (KnowledgeCurve.save writes both there)")
        try:
            with open(os.path.join(out_dir, "knowledge_summary.json")) as f:
                s = jsonio.loads(f.read())
            with open(os.path.join(out_dir, "knowledge_curve.csv"), newline="") as f:
                rows = [{k: (int(v) if k == "removed" else float(v)) for k, v in r.items()} for r in csv.DictReader(f)]
            table = Table(rows)
            meta = dict(s.get("meta", {}))
            base = meta.get("base", {})
            samples = int(base.get("positions", base.get("samples", 0)))
            recorded = s.get("noise_floor")
            if noise_floor is None:
                noise_floor = DEFAULT_NOISE_FLOOR if recorded is None else float(recorded)
            fits = fit_curve(table, s["chance"], samples, noise_floor)
            meta["refit_of"] = {"folder": os.path.abspath(out_dir), "noise_floor": recorded}
            return cls(table, s["total_weights"], s["estimator"], s["finetune_batches"], fits, s["chance"],
                       s.get("note", ""), meta, noise_floor, int(s.get("pruned_before", 0)), s.get("measured_of"))
        except (ValueError, KeyError, TypeError, AttributeError) as e:  # json.JSONDecodeError is a ValueError
            raise ValueError(f"{out_dir}: knowledge_summary.json or knowledge_curve.csv cannot be read "
                             f"({type(e).__name__}: {e}); rerun the knowledge command to write them afresh") from None

    def shown_table(self) -> Table:
        """:attr:`KnowledgeCurve.table` as people read it (``knowledge_curve.md``, the recipe's printout): the
        accuracy in percent and its drop in percentage points, 2 decimals, the columns' names saying so (``accuracy
        (%)``, ``accuracy drop (points)``), as the figure, the progress lines and the recipes' tables
        show accuracy; every other column as it is. :attr:`KnowledgeCurve.table` and ``knowledge_curve.csv`` keep the
        fractions."""
        shown = {"accuracy": "accuracy (%)", "accuracy_drop": "accuracy drop (points)"}

        def cell(key, value):
            # (one image of 50,000 is a drop of 0.002 points: "0.00" read as none, fmt_unsaturated)
            # (a NumPy number too, np.float64 from an array's sum: not a bool, which is no figure)
            number = isinstance(value, numbers.Real) and not isinstance(value, bool)
            return fmt_unsaturated(100 * value, ".2f") if key in shown and number else value

        return Table({shown.get(k, k): cell(k, v) for k, v in row.items()} for row in self.table)

    def shown_caption(self) -> str:
        """The line under :meth:`shown_table` in ``knowledge_curve.md`` and the recipe's printout: what
        ``removed`` and ``fraction`` count, the weights live at the start (not all the model's, where
        some were already pruned or only some layers measured), as the figure's top axis says."""
        some = (f" in the layers measured (the model has {self.measured_of:,})"
                if self.measured_of and self.measured_of > self.total + self.pruned_before else "")
        before = f"; {self.pruned_before:,} already pruned are not counted" if self.pruned_before else ""
        return (f"removed and fraction count the {self.total:,} prunable weights live at the start{some}"
                f"{before}: fraction is removed / {self.total:,}, not a share of all the model's weights.")

    def shown_markdown(self) -> str:
        """``knowledge_curve.md`` (and the recipe's printout of it): :meth:`shown_table` as markdown, then,
        after a blank line, :meth:`shown_caption`."""
        return f"{self.shown_table().to_markdown()}\n\n{self.shown_caption()}"

    def fit_table(self) -> Table:
        """One row per fit (:attr:`KnowledgeCurve.fits`): its points, rate, e-fold (in weights and as a fraction of
        :attr:`KnowledgeCurve.total`), r2, range and ``fitted_above`` (its floor, in the quantity's own unit: nats for
        the loss increase, a fraction for the accuracy drop), as ``knowledge_fit.csv`` holds it."""
        rows = []
        for what, f in self.fits.items():
            r = f["rate"]
            rows.append({
                "quantity": what, "points": f.get("points"), "rate_per_weight": r,
                "e_fold_weights": (1.0 / r) if r and r > 0 else float("nan"),
                "e_fold_fraction": (1.0 / (r * self.total)) if r and r > 0 else float("nan"),
                "r2": f["r2"], "within_x2": f.get("within_tolerance"), "fit_from": f["fit_from"], "fit_to": f["fit_to"],
                "holds_from": f["holds_from"], "holds_to": f["holds_to"], "fitted_above": f.get("floor"),
            })
        return Table(rows)

    def shown_fit_table(self) -> Table:
        """:meth:`fit_table` as people read it (``knowledge_fit.md``, the recipe's printout), beside
        :meth:`shown_table`: ``fitted_above`` becomes ``fitted above``, each floor with its unit (the
        loss increase's in nats, the accuracy drop's in percentage points, as the curve shows the drop).
        The rates, e-folds and ranges are in weights removed and need no unit change."""
        unit = {"loss_increase": lambda v: f"{v:.3g} nats", "accuracy_drop": lambda v: f"{100 * v:.3g} points"}

        def floor(row):
            v = row["fitted_above"]
            return unit[row["quantity"]](v) if row["quantity"] in unit and isinstance(v, (int, float)) else v

        return Table({**{k: v for k, v in row.items() if k != "fitted_above"}, "fitted above": floor(row)}
                     for row in self.fit_table())

    def plot(self, path, svg: bool = False, title: str = "", log_x: bool = False):
        """Four panels: accuracy vs removed on linear and log x; loss increase and accuracy drop on a
        log y axis with the exponential fit (straight there) and the range where it holds.
        ``log_x``: draw those two against a log axis of weights removed as well (the fit is then a
        curve), which spreads out the first removals; their 0 removed, the intact net, has no place
        there and is 0 in both by definition, so it is left out and the axis label says so."""
        plt = pyplot()
        k = self.table["removed"]
        start = "net as given" if self.pruned_before else "intact net"
        with_acc = has_accuracy(self.table)  # without accuracy the top panels draw the loss of what remains
        top = [100 * a for a in self.table["accuracy"]] if with_acc else self.table["loss"]
        fig, axes = plt.subplots(2, 2, figsize=(11, 7.5))
        with closed_on_error(fig):
            for ax, logx in ((axes[0, 0], False), (axes[0, 1], True)):
                kk = [max(v, 0.8) for v in k] if logx else k
                ax.plot(kk, top, "o-", ms=3, label=None if with_acc else "loss (no accuracy for these targets)")
                if with_acc and self.chance is not None:
                    ax.axhline(100 * self.chance, color="grey", ls=":", label="chance")
                if logx:
                    ax.set_xscale("log")
                ax.set_xlabel("weights removed (count" + (", log axis; 0 drawn at 0.8)" if logx else ")"))
                ax.set_ylabel("top-1 accuracy of what remains (%)" if with_acc else "loss of what remains")
                ax.grid(True, which="both" if logx else "major", alpha=0.3)
                ax.legend(fontsize=8)
                sec = ax.secondary_xaxis("top", functions=(lambda v, t=self.total: 100 * v / t, lambda f, t=self.total: f * t / 100))
                some = (f" (of the model's {self.measured_of:,} prunable weights)"
                        if self.measured_of and self.measured_of > self.total + self.pruned_before else "")
                sec.set_xlabel(f"% of the {self.total:,} weights live at the start ({self.pruned_before:,} already pruned)"
                               f"{some}" if self.pruned_before else
                               f"% of the {self.total:,} prunable weights measured{some}" if some
                               else "% of prunable weights", fontsize=8)
            for ax, key, label, scale in (
                (axes[1, 0], "loss_increase", f"loss increase over the {start} (nats)", 1.0),
                (axes[1, 1], "accuracy_drop", "accuracy drop (percentage points)", 100.0),
            ):
                if key == "accuracy_drop" and not with_acc:
                    ax.text(0.5, 0.5, "no accuracy: the targets are not class labels of the output's axis 1\n"
                            "(pass accuracy_fn= to count one); the loss alone is fitted",
                            ha="center", va="center", transform=ax.transAxes, fontsize=8)
                    ax.set_axis_off()
                    continue
                y = [scale * v for v in self.table[key]]
                pos = [(a, b) for a, b in zip(k, y) if b > 0]
                # a log axis has no place for a drop of 0 or below (pruning that helped): the legend counts those
                # left out, past the first removal (0 removed is 0 by definition); without it a curve whose drop
                # was 0 over its first half read as one measured from the middle on
                hidden = sum(1 for a, b in zip(k, y) if a > 0 and b <= 0)  # (a NaN is neither: not counted as one)
                past = sum(1 for a in k if a > 0)
                if pos:
                    ax.plot([p[0] for p in pos], [p[1] for p in pos], "o", ms=3,
                            label=f"measured (> 0; {hidden} of {past} at or below 0 not drawn)" if hidden else "measured (> 0)")
                elif hidden:  # every point left out: the panel was blank, with no legend to count them
                    ax.text(0.5, 0.75, f"{hidden} of {past} measured ({label.split(' (')[0]} past 0 removed) at or below 0:\n"
                            "none has a place on a log axis", ha="center", va="center", transform=ax.transAxes, fontsize=8)
                f = self.fits.get(key, {})
                if f and f.get("rate") == f.get("rate") and f.get("fit_from") is not None:
                    # on a log axis, points spaced evenly in log x (an even grid leaves the first decades empty)
                    xs = torch.logspace(0, math.log10(max(max(k), 1)), 200) if log_x else torch.linspace(0, max(k), 200)
                    line = scale * torch.exp(f["intercept"] + f["rate"] * xs.double())
                    if pos:  # held just outside the measured range, which sets the axis: a steep fit's 1e300 or
                        # inf drawn on a log axis overflows matplotlib's transforms ('overflow encountered in exp')
                        line = line.clamp(min(p[1] for p in pos) / 30, max(p[1] for p in pos) * 30)
                    ax.plot(xs, line, "-", color="C3",
                            label=f"exp fit{' (a curve on log x)' if log_x else ''}: e-fold every {1 / f['rate']:.3g} weights (R²={f['r2']:.3f})" if f["rate"] > 0 else "exp fit")
                    ax.axvspan(f["fit_from"], f["fit_to"], color="C2", alpha=0.12,
                               label=f"fitted range ({f.get('within_tolerance', float('nan')):.0%} of its points within ×2)")
                    # where the line stays within x2 of the points beyond the fitted range, point by point; an
                    # edge of the fitted range itself is no such claim (its points may lie far off the line)
                    beyond = {h for h, edge in ((f["holds_from"], f["fit_from"]), (f["holds_to"], f["fit_to"])) if h != edge}
                    for edge in beyond:
                        ax.axvline(edge, color="C2", ls="--", lw=1)
                    if beyond:
                        ax.plot([], [], color="C2", ls="--", lw=1, label="line within ×2 beyond the fitted range, to here")
                elif f:
                    ax.text(0.5, 0.5, f"no exponential fit: {f.get('points', 0)} point(s) between its floor\n"
                            "and the collapse (3 needed); measure more points (--points)",
                            ha="center", va="center", transform=ax.transAxes, fontsize=8)
                ax.set_yscale("log")
                if pos:  # the measured points set the range, not the line: a steep fit drawn out to the last
                    # count reaches 1e300 or overflows to inf (matplotlib's log ticks then fail) and flattens them
                    ys = [p[1] for p in pos]
                    ax.set_ylim(min(ys) / 3, max(ys) * 3)
                if log_x:
                    ax.set_xscale("log")
                    ax.set_xlim(0.8, 1.25 * max(max(k), 1))
                    ax.set_xlabel(f"weights removed (count, log axis; 0 removed, the {start}, left out)")
                else:
                    ax.set_xlim(-0.02 * max(max(k), 1), 1.02 * max(max(k), 1))  # (only the intact net: 0 to 1)
                    ax.set_xlabel("weights removed (count)")
                ax.set_ylabel(label + ", log axis")
                ax.grid(True, which="both", alpha=0.3)
                if ax.get_legend_handles_labels()[0]:  # no point above 0 and no fit: nothing to name
                    ax.legend(fontsize=7)
            mode = "one shot" if self.finetune_batches == 0 else (f"{self.finetune_batches} fine-tune batch"
                                                                 f"{'' if self.finetune_batches == 1 else 'es'} per point")
            head = title or "knowledge distribution"
            import textwrap

            sub = (f"removed in {self.estimator} order, {mode}; {self.note}; fitted above a loss-increase "
                   f"noise floor of {self.noise_floor:g}")
            fig.suptitle(f"{head}\n" + textwrap.fill(sub, 170), fontsize=9)
            fig.tight_layout()
            return save_figure(fig, path, svg=svg)


def _tensor_output_loss(loss_fn: Callable, model: nn.Module) -> Callable:
    """``loss_fn`` behind :func:`adaptive.metrics.check_output`: a model whose output is no tensor is refused
    as :func:`knowledge_distribution` refuses it (wrap the model), before any ``loss_fn`` reads it; labels that do
    not fit the output are refused as :func:`._common.batch_loss` refuses them."""
    def loss(out, y):
        return batch_loss(loss_fn, check_output(out, model, "knowledge_distribution"), y,
                          "a batch of knowledge_distribution's removal order")
    return loss


def _point_masks(live_flat: torch.Tensor, order: torch.Tensor, counts):
    """Yield ``(k, flat keep mask)`` for each of the ascending ``counts``: ``live_flat`` less the first
    ``k`` of ``order``, each mask a tensor of its own (set_masks may keep views of it). Each point
    removes only the weights since the last one (``order[:k]`` from scratch at every point would
    scatter every weight many times over for the default counts)."""
    kept, done = live_flat.clone(), 0
    for k in counts:
        kept[order[done:k]] = False
        done = k
        yield k, kept.clone()


def _whole_dataset(loader) -> bool:
    """Whether a DataLoader reads all of its dataset (its sampler is a plain sequential or shuffled one)."""
    sampler = getattr(loader, "sampler", None)
    return type(sampler) in (torch.utils.data.SequentialSampler, torch.utils.data.RandomSampler)


def _warn_of_evaluation_data_for_choices(eval_loader, **loaders) -> None:
    """Warn where a loader that chooses the order or trains the copy is the evaluation loader (or a
    loader over all of the same dataset): the curve is then measured on the data its removals were
    chosen or fitted on, in-sample, and shows more surviving than held-out data would."""
    for option, loader in loaders.items():
        if loader is None:
            continue
        same = loader is eval_loader or (
            getattr(loader, "dataset", None) is not None and loader.dataset is getattr(eval_loader, "dataset", None)
            and _whole_dataset(loader) and _whole_dataset(eval_loader))
        if same:
            warn_user(f"knowledge_distribution: {option} reads the same data as eval_loader, so the curve is measured "
                      "on the data its removals were chosen on (or fine-tuned on) and overstates what survives them; "
                      f"pass held-out training data as {option} (adaptive.data.get_dataloaders(holdout=...) gives "
                      "such a part) and the test split as eval_loader")


@kept_global_rng()
@torch.inference_mode(False)  # the copy and the gradients need autograd, whatever the caller's mode
def knowledge_distribution(
    model: nn.Module,
    eval_loader,
    order_loader=None,
    estimator="magnitude",
    counts: Optional[Sequence[int]] = None,
    points: int = 40,
    max_fraction: float = 1.0,
    finetune_batches: int = 0,
    finetune_loader=None,
    lr: float = 1e-3,
    momentum: float = 0.9,
    eval_batches: Optional[int] = None,
    order_batches: Optional[int] = 20,
    include=None,
    exclude=None,
    loss_fn: Callable = default_loss,
    num_classes: Optional[int] = None,
    noise_floor: float = DEFAULT_NOISE_FLOOR,
    accuracy_fn: Optional[AccuracyFn] = default_accuracy,
    conn: Optional[Connectome] = None,
    bn_batches: int = 0,
    seed: int = 0,
) -> KnowledgeCurve:
    """Remove the prunable weights of a copy of ``model`` in ``estimator`` order (a registry name, or
    an estimator instance built with options, recorded as its repr; scores from
    ``order_batches`` batches of ``order_loader``; choose held-out training data, never the test
    split) and measure loss and accuracy on ``eval_batches`` batches of ``eval_loader`` at each
    count of ``counts`` (default :func:`default_counts`; 0, the intact network that accuracy drops
    and loss increases are measured from, is always added).

    ``finetune_batches = 0`` is one shot: every point is the intact network minus the first k
    weights of the order. Otherwise the removal is progressive: after each point's removal the copy
    is fine-tuned for ``finetune_batches`` SGD steps (learning rate ``lr``, ``momentum``) on
    ``finetune_loader`` (default ``order_loader``) with the removed weights held at exactly zero.
    An ``order_loader`` or ``finetune_loader`` that is ``eval_loader`` (or reads all of its dataset) gets a
    warning: the curve is then in-sample. ``model`` is never modified. ``include``/``exclude`` choose the prunable weights as for
    :class:`adaptive.Connectome`; ``loss_fn(output, targets)`` is the loss measured, ranked by and
    fine-tuned on (default cross-entropy); ``noise_floor``: the loss increase below which the fit
    of :func:`fit_curve` takes no point (measurement noise, not lost knowledge).

    Frozen parameters (``requires_grad=False``, e.g. a frozen backbone): the removal order reads
    the real gradient of every prunable weight, a frozen layer's too (it requires grad while the
    order is measured). The fine-tune respects the flags: it trains only the parameters that
    require grad, so a frozen layer stays as it is (its removed weights at zero); where none
    requires grad there is nothing to fine-tune, a warning says so and the curve is one shot
    (``finetune_batches`` recorded as 0). Under ``torch.no_grad()`` or ``torch.inference_mode()``
    the diagnostic still measures (batches must be made outside inference mode).

    ``model`` must return a tensor (the logits, class axis 1; a dict, tuple or ``.logits`` object is
    refused); batches, nested inputs included, are moved to its device. Loss and accuracy follow
    :mod:`adaptive.metrics`: accuracy only for integer targets of the output's shape without its
    class axis 1 (``(B, C)`` with ``(B,)``, or per position ``(B, C, T)`` with ``(B, T)``), chance
    ``1 / out.shape[1]`` (or ``1 / num_classes``). ``accuracy_fn(out, y) -> (correct, count)`` counts
    it your way (chance then from ``num_classes`` only), ``accuracy_fn=None`` turns it off. Without
    accuracy (regression, probability targets) the table has no accuracy columns, the loss increase
    alone is fitted and ``note`` says so.

    BatchNorm (its running statistics; an InstanceNorm's are left as they are) evaluates with the statistics it holds: the
    intact network's, which after many removals no longer match what the layers below compute (a
    pretrained ResNet-20 read 1.046e5 nats of loss increase with 17% removed in obd order, 4.714 with them
    re-estimated: the two commands in docs/diagnostics.md); the fine-tune's train-mode steps move them only part of the way. ``bn_batches``
    re-estimates them at every point, the intact network's too, as the plain mean over that many
    batches of ``finetune_loader`` (default ``order_loader``), forward passes only; 0 (the default)
    leaves them, and ``note`` says so. A fine-tune step that leaves the loss of its first batch
    non-finite or more than doubled (``lr`` too large for the damaged network) is not knowledge
    lost: a warning names those points once, ``note`` says so and ``meta["finetune_overshot"]``
    lists them (``meta["caveats"]``: these parts of the note).

    ``seed``: the random draws of the order (the ``random`` estimator's; :func:`removal_scores`).

    ``points`` (a whole number >= 1) and ``max_fraction`` (in (0, 1]) shape the default counts; they
    are checked before any work, also when ``counts`` is given, as is that ``counts`` holds whole numbers.
    A model with a NaN or inf parameter, and evaluation data on which the intact network's loss is
    not finite (a NaN running statistic too), are refused: every loss increase would be NaN. A buffer
    may hold infinities (an attention mask of -inf).

    A pruned model: pass its :class:`~adaptive.Connectome` as ``conn`` (a Connectome attached to an
    optimizer of ``model`` is found without it). Its pruned weights stay pruned in the copy, also
    through fine-tuning, and are not counted: ``total``, ``removed`` and ``fraction`` are of the
    weights still live at the start (``pruned_before`` says how many were already pruned, and the
    note says so). Without one, a model of which 1% or more of the prunable weights are exact zeros
    gets a warning. A synapse weight also held by a module that is no synapse layer (a head tied to an
    Embedding) is warned of as the Connectome warns of it, once per model: at the first call, not again at later
    ones. A model inside DistributedDataParallel or ``nn.DataParallel`` (``accelerator.prepare``'s): the
    copy is of the module it holds (``conn`` built on either, as a connectome takes the module inside), measured
    and fine-tuned by this process alone.

    The global random generators are left as it found them (dropout masks while fine-tuning and the
    loaders' pass seeds are drawn from them, then they are put back: :mod:`adaptive.global_rng`).
    """
    points = _check_points(points, max_fraction)
    _warn_of_evaluation_data_for_choices(eval_loader, order_loader=order_loader, finetune_loader=finetune_loader)
    if counts is not None:  # int() cut 2.5 to 2 and took True as 1; a whole float (np.linspace's 5.0) is a count
        counts = list(counts)  # read once: a generator checked here would reach the measurement empty
        bad = [c for c in counts if whole_number(c, floats=True) is None]
        if bad:
            raise ValueError(f"counts must be whole numbers of weights to remove, got {bad[:4]!r}: pass ints")
    if whole_number(bn_batches) is None or bn_batches < 0:
        raise ValueError(f"bn_batches must be a whole number of batches, at least 0, got {bn_batches!r}")
    # a DDP model (accelerator.prepare's): the copy is of the module inside, measured and fine-tuned by this process
    # alone (see _local_module; a DDP copy would also sync its gradients with processes that do not run it)
    include, exclude = _plain_patterns(model, include), _plain_patterns(model, exclude)  # module.* of a wrapper
    model = _local_module(model)
    source = model_connectome(model, conn, "knowledge_distribution", "what is already pruned")
    _refuse_non_finite(model)
    work = copy_model(model, "knowledge_distribution")
    conn = _copy_connectome(model, work, include, exclude)
    carried = held_masks(model, source)  # every attached connectome's layers, not only the first one's
    if carried:
        _carry_pruning(carried, conn)
    else:
        warn_if_zeros(conn.params.values(), "knowledge_distribution",
                      "they are counted as live weights (and fine-tuning may grow them back)")
    live_flat = torch.cat([m.reshape(-1).cpu() for m in conn.masks.values()])
    every = _prunable_weights(work) if include is not None or exclude is not None else live_flat.numel()
    pruned_before = int((~live_flat).sum())
    total = live_flat.numel() - pruned_before  # what remains at the start: the already-pruned are not counted
    if total == 0:
        raise ValueError("every prunable weight of the model is already pruned (its Connectome's masks): "
                         "nothing is left to remove")
    # (before the order reads any data: a count past the weights, or a fraction under one, is refused first)
    counts = sorted(set(whole_number(c, floats=True) for c in (counts if counts is not None else default_counts(total, points, max_fraction))))
    if counts and (counts[0] < 0 or counts[-1] > total):
        what = f"live prunable weights; {pruned_before} more are already pruned" if pruned_before else "prunable weights"
        raise ValueError(f"counts must lie in [0, {total}] (the number of {what}), got {counts[0]}..{counts[-1]}")
    if not counts or counts[0] != 0:  # the intact network is always measured: the drops are from it
        counts = [0] + counts
    # the output is checked before the order's loss reads it: the default loss's own refusal of a tuple or
    # dict says to pass loss_fn=, which this diagnostic would then refuse (it needs the logits as a tensor)
    scores = removal_scores(conn, order_loader, estimator, order_batches, _tensor_output_loss(loss_fn, work), seed=seed)
    estimator = estimator if isinstance(estimator, str) else repr(estimator)  # (the curve's record: text)
    order = global_order(scores)
    if pruned_before:
        order = order[live_flat[order]]  # only live weights are removed; the pruned ones stay pruned
    # (a count asked for that the loader cannot give is said, as order_batches' is: the curve rests on fewer)
    data = materialize(eval_loader, eval_batches, desc="evaluation data", warn_short=True)
    if num_classes is None and accuracy_fn is default_accuracy:  # chance: 1 / the classes on axis 1
        with torch.no_grad(), modes_kept(work, False):
            probe = check_output(call_model(work, to_device(data[0][0], model_device(work)), "knowledge_distribution"), work,
                                 "knowledge_distribution")
        num_classes = int(probe.shape[1]) if probe.dim() >= 2 else None
    # BatchNorm's: an InstanceNorm's (rarely tracked) forward reads a momentum of None as 0, so a
    # cumulative re-estimate would leave it reset; it is left as it is
    norms = [m for m in work.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats
             and m.running_mean is not None]
    bn_data = None
    if bn_batches and norms:
        src = finetune_loader if finetune_loader is not None else order_loader
        if src is None:
            raise ValueError("bn_batches > 0 needs finetune_loader (or order_loader) of training data")
        bn_data = materialize(src, bn_batches, desc="BatchNorm statistics data")
    opt = ft_iter = None
    if finetune_batches:
        src = finetune_loader if finetune_loader is not None else order_loader
        if src is None:
            raise ValueError("finetune_batches > 0 needs finetune_loader (or order_loader) of training data")
        trainable = [p for p in work.parameters() if p.requires_grad]
        if trainable:
            opt = torch.optim.SGD(trainable, lr=lr, momentum=momentum)
            conn.attach(opt)
            ft_iter = _forever(src)
        else:
            warn_user(f"knowledge_distribution(finetune_batches={finetune_batches}): every parameter of the model has "
                      "requires_grad=False, so the fine-tune has nothing to train; the curve is one shot "
                      "(finetune_batches=0). Set requires_grad=True on the parameters to fine-tune")
            finetune_batches = 0
    sizes = [m.numel() for m in conn.masks.values()]
    names = list(conn.masks)
    rows, base, overshot = [], None, []
    from tqdm.auto import tqdm

    device = model_device(work)
    for k, flat in _point_masks(live_flat, order, tqdm(counts, desc=f"removing ({estimator})", leave=False, disable=bars_off())):
        conn.set_masks({n: m.view(conn.masks[n].shape) for n, m in zip(names, flat.split(sizes))})
        if finetune_batches and k > 0:
            with modes_kept(work, True), torch.enable_grad(), batch_statistics_explained(
                    "knowledge_distribution's fine-tune", ONE_SAMPLE_FIX):
                for i in range(finetune_batches):
                    x, y = next(ft_iter)
                    opt.zero_grad(set_to_none=True)
                    loss = batch_loss(loss_fn, call_model(work, to_device(x, device), "knowledge_distribution"),
                                      to_device(y, device), f"knowledge_distribution's fine-tune batch {i + 1}")
                    loss.backward()
                    opt.step()
                    if i == 0:
                        first, before = (x, y), float(loss.detach())
                with torch.no_grad(), kept_buffers(work):  # the same batch after the steps; its statistics not kept
                    after = float(loss_fn(call_model(work, to_device(first[0], device), "knowledge_distribution"),
                                        to_device(first[1], device)))
            # rose by more than its own size (more than doubled, for a loss that may be negative or 0)
            if not math.isfinite(after) or after - before > max(abs(before), 1e-6):
                overshot.append((k, before, after))
        if bn_data is not None:
            with batch_statistics_explained("knowledge_distribution's BatchNorm re-estimate (bn_batches)", ONE_SAMPLE_FIX):
                _recalibrate(work, norms, bn_data, device)
        r = evaluate(work, data, loss_fn, accuracy_fn)
        if base is None:
            base = r
            if not math.isfinite(base["loss"]):  # every loss increase would be NaN, and the fits nothing
                raise ValueError(f"knowledge_distribution: the intact network's loss on the evaluation data is {base['loss']} "
                                 "(a non-finite input or target in eval_loader's batches, a loss_fn that overflows, or a NaN or inf "
                                 "buffer of the model's, a running statistic), so no loss increase can be measured from "
                                 "it: check the evaluation data and the model's buffers")
        if (r["accuracy"] is None) != (base["accuracy"] is None):
            raise ValueError("accuracy_fn scored some points and not others: it must return (correct, count) for "
                             "every evaluation or None for all of them")
        if base["accuracy"] is None:
            rows.append({"removed": k, "fraction": k / total, "loss": r["loss"], "loss_increase": r["loss"] - base["loss"]})
        else:
            rows.append({
                "removed": k, "fraction": k / total, "accuracy": r["accuracy"], "loss": r["loss"],
                "accuracy_drop": base["accuracy"] - r["accuracy"], "loss_increase": r["loss"] - base["loss"],
            })
    table = Table(rows)
    chance = 1.0 / num_classes if base["accuracy"] is not None and num_classes else None
    fits = fit_curve(table, chance, base.get("positions", base["samples"]), noise_floor)
    note = f"evaluated on {base['samples']} samples"
    if "positions" in base:
        note += f" ({base['positions']} positions)"
    caveats = []  # what the recipe's own note keeps too (it dropped what was already pruned)
    if every > live_flat.numel():  # include/exclude left layers out: the counts are of those measured
        caveats.append(f"only {live_flat.numel()} of the model's {every} prunable weights measured (include/exclude): "
                       "removed and fractions are of those")
    if pruned_before:
        caveats.append(f"{pruned_before} of the {total + pruned_before} prunable weights were already pruned (the "
                       f"model's Connectome): they stay pruned and are not counted, removed and fractions are of the "
                       f"{total} live ones")
    if norms and not bn_data:
        caveats.append("BatchNorm evaluated with the intact network's running statistics" +
                       (", moved only by the fine-tune's steps" if finetune_batches else "") +
                       ", not re-estimated after removal: far along the curve the loss measures their mismatch "
                       "as much as lost knowledge (bn_batches re-estimates them)")
    elif norms:
        caveats.append(f"BatchNorm statistics re-estimated at every point on {len(bn_data)} TRAIN batches")
    if overshot:
        pts = ", ".join(f"{k} ({b:.5g} -> {a:.5g})" for k, b, a in overshot[:6]) + (" ..." if len(overshot) > 6 else "")
        msg = (f"the fine-tune at lr {lr:g} raised the loss of its own first batch (non-finite or more than doubled) at "
               f"{len(overshot)} point(s), removed (loss before -> after the steps): {pts}; the curve there measures "
               "an overshooting step, not lost knowledge: use a lower lr (--finetune_lr) or finetune_batches 0")
        warn_user(f"knowledge_distribution: {msg}")
        caveats.append(msg)
    note += "".join("; " + c for c in caveats)
    if base["accuracy"] is None:
        note += ("; no accuracy (the targets are not class labels of the output's axis 1; pass accuracy_fn= to "
                 "count one), so the loss increase alone is fitted")
    return KnowledgeCurve(table, total, estimator, finetune_batches or 0, fits, chance,
                          note=note,
                          meta={"base": base, "model": work, "connectome": conn, "order": order,
                                "finetune_overshot": [k for k, _, _ in overshot], "caveats": caveats},
                          noise_floor=noise_floor, pruned_before=pruned_before, measured_of=every)



# the tied-weight warnings (a weight also held by an Embedding) given for each model measured: the Connectome
# built on every call's copy repeated it at every call (a notebook cell, a sweep over estimators)
_TIED_WARNED: "weakref.WeakKeyDictionary[nn.Module, set]" = weakref.WeakKeyDictionary()


def _copy_connectome(model: nn.Module, work: nn.Module, include, exclude) -> Connectome:
    """The Connectome of ``work`` (the copy of ``model`` that is measured), its warning that a synapse weight is
    also held by a module that is no synapse layer (:func:`adaptive.discovery.shared_weight_warning`) given once
    per ``model`` (and per text: other include/exclude may name other weights), at the first call; later calls
    on the same model say nothing more of it. Its other warnings are given as ever."""
    from ..discovery import discover, shared_weight_warning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # (discover's own warnings: the Connectome below gives them)
        text = shared_weight_warning(work, discover(work, include, exclude))
    seen = _TIED_WARNED.setdefault(model, set())
    with warnings.catch_warnings():
        if text is not None and text in seen:
            warnings.filterwarnings("ignore", message=re.escape(text) + "$")
        conn = Connectome(work, include=include, exclude=exclude)
    if text is not None:
        seen.add(text)
    return conn

def _prunable_weights(model: nn.Module) -> int:
    """How many prunable weights ``model`` holds in all (every layer a Connectome would take: what
    include/exclude chose from), its warnings about layers left dense already given by the Connectome
    built with include/exclude."""
    import warnings

    from ..discovery import discover

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return sum(p.numel() for _, p in discover(model).values())


def _refuse_non_finite(model: nn.Module) -> None:
    """Refuse a model with a NaN or inf parameter (a diverged or damaged one): its every point's loss
    would be NaN, and a magnitude order would rank the NaN weights anywhere; the error names them.
    Buffers are not read here: an attention mask filled with -inf is a model's own, and a damaged
    running statistic shows in the intact network's loss, which is refused where it is not finite."""
    bad = [(n, int((~torch.isfinite(t)).sum())) for n, t in model.named_parameters()
           if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    if bad:
        said = ", ".join(f"{n} ({k} of them)" for n, k in bad[:4]) + (" ..." if len(bad) > 4 else "")
        raise ValueError(f"knowledge_distribution: the model holds NaN or inf values in {said}: a diverged or damaged "
                         "model, whose loss is not finite at any point of the curve; load finite weights (an earlier "
                         "checkpoint) before measuring")


@torch.no_grad()
def _recalibrate(model: nn.Module, norms, data, device) -> None:
    """Re-estimate the running statistics of ``norms`` as the plain mean over ``data`` (train-mode
    forward passes)."""
    saved = [m.momentum for m in norms]
    with modes_kept(model, True):
        for m in norms:
            m.reset_running_stats()
            m.momentum = None  # cumulative average
        try:
            for x, *_ in data:
                call_model(model, to_device(x, device), "knowledge_distribution")
        finally:
            for m, mom in zip(norms, saved):
                m.momentum = mom


def _carry_pruning(source: dict, conn: Connectome) -> None:
    """Set ``conn`` (on the copy) to the pruning ``source`` gives (the model's live masks by parameter
    name, :func:`held_masks`); refuse pruned layers that ``conn`` does not measure, whose weights
    fine-tuning would grow back."""
    # every name of each weight ``conn`` holds, by identity: a tied weight (a language model's head sharing its
    # embedding's table) is one parameter under two names, and ``conn`` keeps only one of them
    held = {id(p): n for n, p in conn.params.items()}
    alias = {n: held[id(p)] for n, p in conn.model.named_parameters(remove_duplicate=False) if id(p) in held}
    left_out = [n for n, m in source.items() if n not in alias and not bool(m.all())]
    if left_out:
        raise ValueError(f"the model's Connectome has pruned weights in {left_out[:3]}{' ...' if len(left_out) > 3 else ''}, "
                         "which include/exclude leave out of this measurement: measure them too (widen include/exclude), "
                         "or the curve would not be of the pruned model")
    conn.set_masks({alias[n]: m for n, m in source.items() if n in alias})
