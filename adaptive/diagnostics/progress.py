"""Controller progress of a run, from its ``events.jsonl`` and ``metrics.csv`` (or, for a mask-only
run of ``recipes/prune_pretrained.py``, its ``history.jsonl``).

``events.jsonl``: one JSON object per controller update, with (all optional but ``step``) keys
``step``, ``pruned``, ``grown``, ``density``, ``layer_density`` (dict), ``boundaries`` (dict or
null), ``est_loss_change`` (the immediate change of the training loss the estimators expect of the
edit, only where they are loss models; ``est_score_change`` holds the plan's summed scores in the
estimators' own units otherwise; in train mode a grown synapse starts at its grow init, 0.0 by
default, so its promised gain once trained is ``est_growth_gain``, not part of it; an older train-mode
run's events lack ``est_growth_gain`` and subtracted that gain, which the panel notes; a mask-only
run's restorations, told apart by the run's ``config.yaml`` or ``history.jsonl``, were always
immediate, so its older events are not noted),
``actual_loss_change`` (held-out, right after the edit: logged where a line search checked the
update: recipes/adaptive.py ``--line_search N`` in train mode, ``--mask_only_kw verify_batches=N``
in mask_only mode, recipes/prune_pretrained.py ``--verify-batches N``). ``metrics.csv``: columns ``step``, ``split``
and any numeric ones (``loss``, ``accuracy``, ``removed``, ...). Missing keys, blank cells and
missing files are tolerated: what is there is drawn; a NaN or inf loss or accuracy is left out and
its panel says how many.
"""
from __future__ import annotations

import csv
import json
import math
import os
from dataclasses import dataclass
from typing import Dict, List, Optional

from ..plots import SPLIT_COLOR, boundary_scale, closed_on_error, density_before, finite, legend_below, line_style, note_nonfinite, single_point_marker, whole_steps
from .table import Table, pyplot, save_figure
from ..warn import warn_user
from .. import jsonio


def _number(v):
    if v is None or isinstance(v, bool):
        return v
    if isinstance(v, (int, float)):
        return v
    try:
        f = float(v)
    except (TypeError, ValueError):
        return v
    return int(f) if f.is_integer() and "." not in str(v) and "e" not in str(v).lower() else f


def _json_lines(path: str):
    """The JSON objects of ``path``, one per line; nothing if the file does not exist. Blank lines
    and a last line cut short by a killed run are skipped quietly; a damaged line before the last
    (undecodable bytes, broken JSON, not an object) is skipped with a warning naming its number."""
    if not os.path.exists(path):
        return
    with open(path, "rb") as f:
        lines = f.read().splitlines()
    last = max((i for i, raw in enumerate(lines, 1) if raw.strip()), default=0)
    damaged = []
    for i, raw in enumerate(lines, 1):
        if not raw.strip():
            continue
        try:
            e = jsonio.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            e = None
        if isinstance(e, dict):
            yield e
        elif i < last:
            damaged.append(i)
    if damaged:
        warn_user(f"{path}: skipped {len(damaged)} damaged line(s) (line {', '.join(map(str, damaged[:5]))}"
                      f"{' ...' if len(damaged) > 5 else ''}); the figures leave those records out")


def read_events(path: str) -> List[dict]:
    """The events of ``path`` (one JSON object per line; blank or broken lines are skipped); [] if
    the file does not exist."""
    return list(_json_lines(path))


def read_metrics(path: str) -> Table:
    """Rows of ``metrics.csv`` with numeric cells converted; an empty Table if the file is absent."""
    if not os.path.exists(path):
        return Table()
    try:
        with open(path, newline="") as f:
            return Table({k: _number(v) if v != "" else None for k, v in row.items() if k is not None}
                         for row in csv.DictReader(f))
    except (UnicodeDecodeError, csv.Error) as e:
        raise ValueError(f"{path} cannot be read ({type(e).__name__}: {e}): the file is damaged; rerun the run to "
                         "write it afresh, or move it aside to draw the figures from events.jsonl alone") from None


# entries of an event's ``boundaries`` that count synapses rather than bound an estimator's values
_COUNT_KEYS = {"goal", "need", "live", "limit", "count", "removed"}


def _flat(d, prefix=""):
    out = {}
    for k, v in (d or {}).items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}/"))
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            out[f"{prefix}{k}"] = float(v)
    return out


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _held_to(pts: list, end) -> list:
    """``pts`` ((step, value) of a step function drawn ``steps-post``) with the last value held until
    ``end``, the run's last step, where that comes after the last point."""
    if pts and end is not None and _is_number(pts[-1][0]) and end > pts[-1][0]:
        return pts + [(end, pts[-1][1])]
    return pts


# the test and held-out points of a run often share a count (its last): the test square larger, under the circle
_SPLIT_MARK = {"test": dict(marker="s", ms=6), "holdout": dict(zorder=3)}


@dataclass
class Progress:
    """Events and metrics of one run, as tables, with ``removed`` filled in for every metrics row:
    from the ``removed`` column, else from the events (their own ``removed``, else ``density`` times
    ``total_synapses``, else the running sum of pruned - grown); ``removed_source`` says which, or
    "step" when nothing places the rows on a removal axis. ``growth``: how the run grew synapses
    (:func:`growth_mode`), which says whether its older estimates are noted. ``measure_hint``: the
    option that would have measured each update's loss change, in the run's own recipe and mode
    (:func:`measure_hint`), named where no measured change is there to compare."""

    events: Table
    metrics: Table
    removed_source: str
    # "grow at init" (train mode), "restore" (mask_only, or grow_init='original'), None: not said
    growth: Optional[str] = None
    # the option that would have measured each update's loss change, for the run's recipe and mode
    measure_hint: str = "recipes/adaptive.py --line_search N measures one"

    def plot(self, path, svg: bool = False, title: str = ""):
        plt = pyplot()
        fig, axes = plt.subplots(2, 3, figsize=(15, 8))
        with closed_on_error(fig):
            m = self.metrics
            from matplotlib.ticker import EngFormatter

            xkey = "removed" if self.removed_source != "step" else "step"
            xlabel = "synapses removed" if xkey == "removed" else "step (no removed count logged)"
            distinct = {r.get("removed") for r in m if isinstance(r.get("removed"), (int, float))}
            if xkey == "removed" and len(distinct) < 2:
                xkey = "step"
                xlabel = f"step (removed stays at {next(iter(distinct), 0):,})"
            # train, held-out, test first, as in the run's own figures (sorted, "holdout" came first), and
            # named as there: "holdout" alone did not say it is a part of TRAIN
            seen = {str(r.get("split", "all")) for r in m}
            splits = [s for s in ("train", "holdout", "test") if s in seen] + sorted(seen - {"train", "holdout", "test"})
            names = {"holdout": "held-out (part of TRAIN)"}
            for ax, key in ((axes[0, 0], "loss"), (axes[0, 1], "accuracy")):
                drawn = False
                given = [r for r in m if isinstance(r.get(key), (int, float)) and isinstance(r.get(xkey), (int, float))]
                for s in splits:
                    pts = [(r[xkey], r[key]) for r in given if str(r.get("split", "all")) == s and finite(r[key])]
                    if pts:
                        # as in loss_accuracy.png: the test point a larger square, the held-out circle over it. Drawn
                        # alike in split order, the run's last held-out point (at the test point's count) lay under it
                        style = dict(marker="o", ms=3, ls="-") | _SPLIT_MARK.get(s, {})
                        ax.plot([p[0] for p in pts], [p[1] for p in pts], label=names.get(s, s), color=SPLIT_COLOR.get(s),
                                **style)
                        drawn = True
                ax.set_xlabel(xlabel)
                # steps and removed counts are whole numbers: a short run was ticked at 1.2, 1.4, ...
                whole_steps(ax)
                ax.xaxis.set_major_formatter(EngFormatter(sep=""))
                ax.set_ylabel("loss (nats for cross-entropy)" if key == "loss" else "accuracy (fraction correct)")
                ax.set_title(f"{key} against {'removal' if xkey == 'removed' else 'step'}", fontsize=9)
                if drawn:  # under the panel (room made between the rows): inside, it could hide a lone point
                    legend_below(ax, ncol=3, in_layout=True)
                elif not given:
                    ax.text(0.5, 0.5, f"no {key} in the run's metrics", ha="center", va="center", transform=ax.transAxes)
                note_nonfinite(ax, key, sum(1 for r in given if not finite(r[key])), len(given), drawn)
                ax.grid(True, alpha=0.3)
            ev = self.events
            steps = ev["step"]
            ax = axes[0, 2]
            # the initial pruning (kind "init": the jump to the target density) is not an update; drawn
            # among the updates it would flatten them, so it is named in the title instead
            init = [e for e in ev if e.get("kind") == "init"]
            upd = [e for e in ev if e.get("kind") != "init"]
            counts = []
            for key, c in (("pruned", "C3"), ("grown", "C2")):
                pts = [(e.get("step"), e.get(key)) for e in upd if isinstance(e.get(key), (int, float))]
                if pts:
                    ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-" if key == "pruned" else "s--", ms=5 if key == "pruned" else 3,
                            color=c, label=key if key == "pruned" else "restored / grown")  # distinct when the counts coincide
                    counts += [p[1] for p in pts if p[1]]
            ax.set_xlabel("step")
            whole_steps(ax)
            ax.set_ylabel("synapses per update")
            if counts and max(counts) > 50 * sorted(counts)[len(counts) // 2]:
                ax.set_yscale("symlog", linthresh=1)
                ax.set_ylabel("synapses per update (log scale above 1)")
            init_note = "".join(f"\ninitial pruning at step {e.get('step')}: {e.get('pruned') or 0:,} (not drawn)" for e in init[:1])
            ax.set_title(f"pruned and restored per controller update{init_note}", fontsize=9)
            if ax.get_legend_handles_labels()[0]:
                legend_below(ax, ncol=2, in_layout=True)  # off the counts, as in the panels beside it
            else:
                ax.text(0.5, 0.5, "no controller updates" + (" (only the initial pruning)" if init else "")
                        if not upd else "no pruned or restored counts logged",
                        ha="center", va="center", transform=ax.transAxes)
            ax.grid(True, alpha=0.3)
            ax = axes[1, 0]
            series: Dict[str, list] = {}
            for e in ev:
                for k, v in _flat(e.get("boundaries")).items():
                    if k.rsplit("/", 1)[-1] in _COUNT_KEYS:  # synapse counts (a goal, a need), not boundaries
                        continue
                    series.setdefault(k, []).append((e.get("step"), v))
            for i, (k, pts) in enumerate(sorted(series.items())):
                ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", ms=2, label=k)
            if series:
                boundary_scale(ax, [p[1] for pts in series.values() for p in pts])
                whole_steps(ax)
                legend_below(ax, fontsize=7, ncol=max(2, min(4, math.ceil(len(series) / 8))))  # off the lines
            else:
                ax.text(0.5, 0.5, "no boundaries logged", ha="center", va="center", transform=ax.transAxes)
                ax.set_xticks([])  # (0 to 1 was no boundary's scale, nor 0.0 to 1.0 the run's steps: curves.png's
                ax.set_yticks([])  # empty panel has no ticks either)
            ax.set_xlabel("step")
            ax.set_ylabel("edit boundary\n(estimator units; loss change only for loss models)")
            ax.set_title("boundaries over time", fontsize=9)
            ax.grid(True, alpha=0.3)
            ax = axes[1, 1]
            # each density holds until the next update, the last one until the run's last step (a metrics
            # row or event after the last update): drawn to the last update only, it showed as a bare drop
            end = max((r.get("step") for t in (m, ev) for r in t if _is_number(r.get("step"))), default=None)
            logged = [(s, v, e) for s, v, e in zip(steps, ev["density"], ev) if isinstance(v, (int, float))]
            pts = _held_to([(s, v) for s, v, _ in logged], end)
            # from step 0, as the run's density.png: the density before the first event (its counts), where
            # that event came later (a gradual pruning's first update at step 25 started the line there)
            start = density_before(logged[0][2]) if logged else None
            if start is not None and _is_number(pts[0][0]) and pts[0][0] > 0:
                pts = [(0, start)] + pts
            if pts:  # a run with no update has one event: a marker keeps its single point visible
                ax.plot([p[0] for p in pts], [p[1] for p in pts], "k-", lw=2, label="all", drawstyle="steps-post",
                        **single_point_marker(len(pts)))
            layers: Dict[str, list] = {}
            for e in ev:
                for k, v in _flat(e.get("layer_density")).items():
                    layers.setdefault(k, []).append((e.get("step"), v))
            layers = {k: _held_to(lp, end) for k, lp in layers.items()}
            for i, (k, lp) in enumerate(layers.items()):  # every layer: the style tells apart those sharing a colour
                ax.plot([p[0] for p in lp], [p[1] for p in lp], lw=0.8, alpha=0.7, ls=line_style(i), label=k,
                        drawstyle="steps-post", **single_point_marker(len(lp)))
            ax.set_xlabel("step")
            whole_steps(ax)
            ax.set_ylabel("density (fraction of synapses present)")
            ax.set_ylim(0, 1.05)  # from 0, as the run's density.png: a drop from 1.0 to 0.9 looked like one to nothing
            ax.set_title("density" + (f" (legend below: all {len(layers)} layers)" if layers else ""), fontsize=9)
            if pts or layers:  # under the panel: inside, it covered the layers' lines
                ncol = max(2, min(4, math.ceil(len(layers) / 8)))
                leg = legend_below(ax, fontsize=6, ncol=ncol)
                # no wider than the panel (measured before tight_layout, which only widens it): four columns of a
                # wrapped ResNet's names ("module.backbone.layer4.block1.conv1.weight") ran under the boundaries
                # panel's legend beside it and covered it
                while ncol > 1 and leg.get_window_extent().width > ax.get_window_extent().width:
                    leg.remove()
                    ncol -= 1
                    leg = legend_below(ax, fontsize=6, ncol=ncol)
            else:
                ax.text(0.5, 0.5, "no density logged", ha="center", va="center", transform=ax.transAxes)
            ax.grid(True, alpha=0.3)
            self._plot_estimates(axes[1, 2])
            fig.suptitle(title or "controller progress", fontsize=10)
            fig.tight_layout()
            return save_figure(fig, path, svg=svg)

    def _plot_estimates(self, ax):
        """Each update's estimated loss change against the one measured (held-out line search); where
        none was measured, the estimates alone against step, and the panel says why."""
        ev = self.events
        est = [(e.get("step"), e.get("est_loss_change"), e.get("actual_loss_change")) for e in ev
               if finite(e.get("est_loss_change"))]
        measured = sum(1 for e in ev if finite(e.get("actual_loss_change")))
        in_score = sum(1 for e in ev if finite(e.get("est_score_change")))
        pts = [(a, b) for _, a, b in est if finite(b)]
        # logged before est_growth_gain was split off (an older run, or its checkpoint resumed): there a
        # train-mode update that grew subtracted the gain its synapses promise once trained; a restoration
        # (mask_only, grow_init='original') was an immediate change then as now, so its estimate stands
        older = 0 if self.growth == "restore" else sum(
            1 for e in ev if finite(e.get("est_loss_change")) and "est_growth_gain" not in e
            and isinstance(e.get("grown"), (int, float)) and e["grown"] > 0)
        if older and self.growth == "grow at init":
            older = (f"\n{older} estimate(s) of an older train-mode run (no est_growth_gain): each subtracts\n"
                     "the gain that grown synapses promise once trained")
        else:  # a folder that does not say the run's mode
            older = (f"\n{older} estimate(s) of an older run (no est_growth_gain): in train mode such an estimate\n"
                     "subtracts the gain that grown synapses promise once trained" if older else "")
        ax.grid(True, alpha=0.3)
        if pts:
            ax.scatter([p[0] for p in pts], [p[1] for p in pts], s=10)
            lo = min(min(p) for p in pts)
            hi = max(max(p) for p in pts)
            ax.plot([lo, hi], [lo, hi], "k:", lw=1, label="y = x")
            ax.legend(fontsize=8)
            ax.set_xlabel("estimated loss change of the update")
            ax.set_ylabel("actual loss change (held-out)")
            left = (f"\n{len(est) - len(pts)} of {len(est)} estimates have no measured change (not drawn)"
                    if len(est) > len(pts) else "")
            ax.set_title(f"utility estimate against outcome{left}{older}", fontsize=9)
            return
        if est and all(isinstance(s, (int, float)) for s, _, _ in est):  # nothing to compare: the estimates alone
            ax.plot([s for s, _, _ in est], [a for _, a, _ in est], "o", ms=4, color="tab:purple")
            ax.set_xlabel("step")
            whole_steps(ax)
            ax.set_ylabel("estimated loss change of the update")
            why = (f"no measured loss change to compare (no held-out line search;\n{self.measure_hint})"
                   if not measured else
                   f"the {measured} measured loss change(s) are at other updates")
            more = f"\n({in_score} more in the estimator's own units, not drawn)" if in_score else ""
            ax.set_title(f"utility estimate per update\n{len(est)} estimate(s) logged; {why}{more}{older}", fontsize=9)
            return
        if est:
            msg = f"{len(est)} loss-change estimate(s) logged, but no step to place them at"
        else:
            msg = "no loss-change estimates logged"
            if in_score:
                msg += f"\n({in_score} estimate(s) in the estimator's own units, not loss: est_score_change)"
            if measured:
                msg += f"\n{measured} measured loss change(s) logged, with no estimate to compare"
        ax.text(0.5, 0.5, msg, ha="center", va="center", transform=ax.transAxes, fontsize=8)
        ax.set_xticks([])  # (0 to 1 is no loss change's scale: the empty boundaries panel has no ticks either)
        ax.set_yticks([])
        ax.set_xlabel("estimated loss change of the update")
        ax.set_ylabel("actual loss change (held-out)")
        ax.set_title("utility estimate against outcome", fontsize=9)


def read_history(path: str) -> Table:
    """Metric rows from a mask-only ``history.jsonl`` (``optimize_connectome``'s history): each
    update's train window (at the count it ran with) and each held-out evaluation."""
    rows = []
    for h in _json_lines(path):
        if h.get("kind") == "update" and "train_loss" in h:
            rows.append({"step": h.get("step"), "split": "train", "loss": h["train_loss"],
                         "accuracy": h.get("train_acc"), "removed": h.get("train_removed", h.get("removed"))})
        elif h.get("kind") == "eval":
            rows.append({"step": h.get("step"), "split": "holdout", "loss": h.get("holdout_loss"),
                         "accuracy": h.get("holdout_acc"), "removed": h.get("removed")})
    return Table(rows)


def _read_config(run_dir: str) -> Optional[dict]:
    """The run's ``config.yaml`` as a dict; None where it is missing, unreadable or not a mapping."""
    try:
        from ..yaml_read import load_yaml

        with open(os.path.join(run_dir, "config.yaml")) as f:
            cfg = load_yaml(f)
    except Exception:  # noqa: BLE001 - none, unreadable or damaged: the caller words its note for either mode
        return None
    return cfg if isinstance(cfg, dict) else None


def measure_hint(run_dir: str) -> str:
    """The option that measures each update's held-out loss change for the run in ``run_dir``, as
    its folder records the recipe and mode: ``recipes/prune_pretrained.py --verify-batches N`` for a
    run of that recipe (a ``config.yaml`` with ``remove`` and no ``mode``, or a ``history.jsonl``
    where none can be read), ``--mask_only_kw verify_batches=N`` for a mask_only run of
    ``recipes/adaptive.py`` (which refuses ``--line_search``), else ``--line_search N``."""
    cfg = _read_config(run_dir)
    history = os.path.isfile(os.path.join(run_dir, "history.jsonl"))
    if (cfg is None and history) or (cfg is not None and cfg.get("mode") is None and ("remove" in cfg or history)):
        return "recipes/prune_pretrained.py --verify-batches N measures one"
    if cfg is not None and cfg.get("mode") == "mask_only":
        return "recipes/adaptive.py --mask_only_kw verify_batches=N measures one"
    return "recipes/adaptive.py --line_search N measures one"


def growth_mode(run_dir: str) -> Optional[str]:
    """How the run in ``run_dir`` grew synapses, as its folder records it: "restore" (a mask_only run,
    where a grown synapse's estimate was always an immediate change: ``mode: mask_only`` in the
    ``config.yaml`` of ``recipes/adaptive.py``, or a train run there with ``controller_kw: {grow_init:
    original}``; or a run of ``recipes/prune_pretrained.py``, always mask-only, whose ``config.yaml``
    records ``remove`` and no ``mode``, or whose folder holds its ``history.jsonl``); "grow at init" (a
    train run: ``mode: train``, or a ``config.yaml`` without ``mode`` of neither recipe, the default);
    None where the folder does not say (no readable ``config.yaml`` and no ``history.jsonl``). The
    ``config.yaml`` the recipe wrote (the resolved settings) decides before a ``history.jsonl``, which
    only tells where that file is missing or unreadable."""
    cfg = _read_config(run_dir)
    if cfg is None:  # the history, or the panel words its note for either mode
        return "restore" if os.path.isfile(os.path.join(run_dir, "history.jsonl")) else None
    mode = cfg.get("mode")
    if mode is None and ("remove" in cfg or os.path.isfile(os.path.join(run_dir, "history.jsonl"))):
        return "restore"  # recipes/prune_pretrained.py's (its options have no mode: it is mask-only)
    kw = cfg.get("controller_kw")
    if mode == "mask_only" or (isinstance(kw, dict) and kw.get("grow_init") == "original"):
        return "restore"
    return "grow at init" if (mode or "train") == "train" else None


def progress(run_dir: str, total_synapses: Optional[int] = None) -> Progress:
    """Read ``run_dir``/events.jsonl and ``run_dir``/metrics.csv. ``total_synapses`` lets a run whose
    metrics lack ``removed`` but whose events log ``density`` be placed on the removal axis."""
    if not os.path.isdir(run_dir):
        what = "is a file, not a run folder" if os.path.isfile(run_dir) else "does not exist"
        raise FileNotFoundError(f"run folder {run_dir!r} {what}: give the folder of a recipes/adaptive.py or "
                                "recipes/prune_pretrained.py run")
    events = Table(read_events(os.path.join(run_dir, "events.jsonl")))
    metrics = read_metrics(os.path.join(run_dir, "metrics.csv"))
    if not metrics:  # a prune_pretrained run keeps its numbers in history.jsonl
        metrics = read_history(os.path.join(run_dir, "history.jsonl"))
    if not events and not metrics:
        present = [f for f in ("events.jsonl", "metrics.csv", "history.jsonl") if os.path.isfile(os.path.join(run_dir, f))]
        if present:  # ("has none of" them misled where they were there, empty or unreadable)
            raise ValueError(f"{run_dir!r}: {', '.join(present)} hold(s) no record this can read (empty, or not "
                             "written by a recipe): give the folder of a recipes/adaptive.py or "
                             "recipes/prune_pretrained.py run")
        raise FileNotFoundError(f"{run_dir!r} has none of events.jsonl, metrics.csv, history.jsonl")
    if not total_synapses:  # the run's own count, where its summary recorded one
        try:
            with open(os.path.join(run_dir, "summary.json")) as f:
                total_synapses = int(jsonio.loads(f.read()).get("synapses") or 0) or None
        except (OSError, ValueError, TypeError, AttributeError):
            total_synapses = None
    events = Table(sorted(events, key=lambda e: e.get("step") if isinstance(e.get("step"), (int, float)) else math.inf))
    cum, removed_at = 0, []
    for e in events:
        if isinstance(e.get("removed"), (int, float)):
            cum = e["removed"]
        elif total_synapses and isinstance(e.get("density"), (int, float)):
            cum = round(total_synapses * (1 - e["density"]))
        else:
            cum += (e.get("pruned") or 0) - (e.get("grown") or 0)
        e["removed"] = cum
        removed_at.append((e.get("step"), cum))
    if metrics and all(isinstance(r.get("removed"), (int, float)) for r in metrics):
        source = "metrics"
    elif events and metrics and all(isinstance(r.get("step"), (int, float)) for r in metrics
                                    if not isinstance(r.get("removed"), (int, float))):
        source = "events"
        for r in metrics:  # a row with its own count keeps it; only blank ones are filled
            if not isinstance(r.get("removed"), (int, float)):
                # a train row's batches ran before the update of its own step (made after the optimizer
                # step); a held-out or test row at that step was evaluated after it
                train = str(r.get("split")) == "train"
                before = [c for s, c in removed_at if isinstance(s, (int, float)) and (s < r["step"] if train else s <= r["step"])]
                r["removed"] = before[-1] if before else 0
    else:
        source = "step"
    return Progress(events, metrics, source, growth_mode(run_dir), measure_hint(run_dir))
