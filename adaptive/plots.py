"""Run figures: PNG files with labelled axes, written into a run folder.

- :func:`plot_loss_accuracy`: loss and accuracy against step, per split (train / holdout / test);
- :func:`plot_density`: overall and per-layer density against step, from controller events;
- :func:`plot_edits`: synapses pruned and grown at every controller update;
- :func:`plot_grad_norm`: a clipping run's gradient norm before clipping, and the share of steps clipped;
- :func:`plot_run`: all of them that the run has data for, returns the paths written.
Inputs are plain lists of dicts (metric rows as in :data:`adaptive.training.METRIC_FIELDS`,
controller events), so a finished run can be re-plotted from its ``metrics.csv`` and
``events.jsonl``. NaN and inf values are left out, and the panel says how many.
"""
from __future__ import annotations

import math
import numbers
from contextlib import contextmanager
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from .atomic import atomic_path

# one colour per split in every figure (run figures, progress.png, prune_pretrained's curves.png)
SPLIT_COLOR = {"train": "tab:blue", "holdout": "tab:orange", "test": "tab:green"}
SPLIT_STYLE = {"train": dict(marker="", lw=1.0, alpha=0.8, color=SPLIT_COLOR["train"]),
               # over the test square: a run's held-out point at its last step (the only one of a 1-epoch
               # run) falls where the test point does, and was hidden under it
               "holdout": dict(marker="o", ms=3, color=SPLIT_COLOR["holdout"], zorder=3),
               "test": dict(marker="s", ms=6, ls="none", color=SPLIT_COLOR["test"])}
# more lines than colours: the line style tells apart the lines that share a colour (10 colours each)
LINE_STYLES = ("-", "--", ":", "-.")
# the masks a run kept when they are not its last ones (mask_only --target best)
KEPT_STYLE = dict(marker="*", ms=14, ls="none", color="gold", mec="k", zorder=5, label="kept (best on held-out)")


def finite(v) -> bool:
    """Whether ``v`` is a number that can be drawn (not None, NaN or inf)."""
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)  # numpy scalars too


def note_nonfinite(ax, what: str, bad: int, total: int, drawn: bool) -> None:
    """Say on ``ax`` that ``bad`` of ``total`` values of ``what`` were NaN or inf and are not drawn:
    in the middle of an empty panel, else under the panel's title (set the title first)."""
    if not bad:
        return
    msg = f"{what} not finite at {bad} of {total} points (left out)"
    if drawn:
        ax.set_title(f"{ax.get_title()}\n{msg}", fontsize=9)
    else:
        ax.text(0.5, 0.5, msg, ha="center", va="center", transform=ax.transAxes, fontsize=9)


def single_point_marker(n: int) -> dict:
    """Line style keys that keep a one-point series visible (a line needs two points)."""
    return dict(marker="o", ms=4) if n == 1 else {}


def boundary_scale(ax, values) -> None:
    """A y-scale for edit boundaries: linear where they are all of one sign within two decades
    (presence values, magnitudes), symmetric-log where they cross zero or span decades (loss-change
    estimates). The symlog's linear part ends at a whole decade, at most four below the largest
    value: its tick labels then sit a decade apart, and values smaller still are drawn linearly
    around 0."""
    values = [v for v in values if finite(v)]
    vals = [abs(v) for v in values if v != 0]
    if not vals:
        return
    one_sign = all(v > 0 for v in values) or all(v < 0 for v in values)
    if one_sign and max(vals) / min(vals) < 100:
        return
    # linthresh off the decades (the smallest |value|, say 7.7e-8) put the decade ticks inside the
    # narrow linear part, where their labels (1e-8, 0, -1e-8) were drawn over each other
    lowest = math.floor(math.log10(min(vals)))
    top = math.ceil(math.log10(max(vals)))
    low = max(lowest, top - 4)
    ax.set_yscale("symlog", linthresh=10.0 ** low)
    # ticks at 0 and the decades from linthresh up, as matplotlib 3.11.2 places them: its own locator in 3.11.0
    # and older also ticked the decade below linthresh (1e-8 for 1e-7), its label drawn over those of 0 and 1e-7
    from matplotlib.ticker import FixedLocator

    ax.yaxis.set_major_locator(FixedLocator(sorted([0.0] + [s * 10.0 ** e for e in range(low, top + 1) for s in (-1, 1)])))


LOG_LOSS_DECADES = 3  # a loss panel spanning more decades than this is drawn on a log scale


def loss_scale(ax, values) -> None:
    """A log y-scale for a panel of losses whose finite values are all above 0 and span more than
    :data:`LOG_LOSS_DECADES` decades (a run that diverged to 1e5 from 0.3): on a linear axis the
    useful part, before the divergence, lay flat along 0. Otherwise the axis stays linear."""
    vals = [v for v in values if finite(v)]
    if vals and min(vals) > 0 and max(vals) / min(vals) > 10.0 ** LOG_LOSS_DECADES:
        ax.set_yscale("log")


def whole_steps(ax, axis: str = "x") -> None:
    """Tick a step (or batch) axis at whole numbers only: a run of a few steps was ticked at "1.5",
    "2.5", steps that do not exist. Long runs get the same ticks as before; a run of one step its step
    alone (``min_n_ticks=1``: with the default 2, an axis holding one whole number fell back to "-0.04",
    "-0.02", ...). The default locator's tick count and steps (``nbins="auto"``, 1-2-2.5-5-10): with
    MaxNLocator's own (10 bins, every step from 1 to 10), steps 10 to 60 were ticked at 12, 18, ..., 54
    and 500 batches at 60, 120, ..., 480."""
    from matplotlib.ticker import MaxNLocator

    getattr(ax, f"{axis}axis").set_major_locator(
        MaxNLocator(nbins="auto", steps=[1, 2, 2.5, 5, 10], integer=True, min_n_ticks=1))


def line_style(i: int) -> str:
    """The line style of the ``i``-th line drawn in the default colour cycle: lines 0-9 solid, 10-19
    dashed, ... so that no two of the first 40 lines share both colour and style."""
    return LINE_STYLES[(i // 10) % len(LINE_STYLES)]


def legend_below(ax, handles=None, labels=None, ncol: Optional[int] = None, fontsize=8, inches: float = 0.5,
                 in_layout: bool = False, **kw):
    """A legend under ``ax`` (``inches`` below its bottom edge, under the tick labels and x label),
    where it can cover no data. Unless ``in_layout`` (a panel with another below it: ``tight_layout``
    then makes room between them), it is left out of ``tight_layout`` so the panels keep their size:
    save the figure with ``bbox_inches="tight"`` and :func:`tight_artists` so the canvas grows to
    hold it."""
    from matplotlib.transforms import ScaledTranslation

    if handles is None:
        handles, labels = ax.get_legend_handles_labels()
    fig = ax.figure
    leg = ax.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, 0),
                    bbox_transform=ax.transAxes + ScaledTranslation(0, -inches, fig.dpi_scale_trans),
                    ncol=ncol or min(len(handles), 2), fontsize=fontsize, **kw)
    leg.set_in_layout(in_layout)
    return leg


def tight_artists(fig) -> list:
    """What ``savefig(bbox_inches="tight", bbox_extra_artists=...)`` must hold for the saved canvas
    to take in a :func:`legend_below` too (``tight`` alone leaves out what is out of the layout)."""
    extra = fig.get_default_bbox_extra_artists()
    return extra + [ax.get_legend() for ax in fig.axes if ax.get_legend() is not None and ax.get_legend() not in extra]


@contextmanager
def closed_on_error(fig):
    """Close ``fig`` where the block raises: a plot that fails while drawing or saving leaves no figure
    open in pyplot (in a notebook or a long run each one stayed, held in memory, until matplotlib
    warned of too many open figures). Where the block ends well, the save that ends it closes the
    figure (:func:`adaptive.diagnostics.save_figure`), or a caller who kept it open to look at it does."""
    try:
        yield fig
    except BaseException:
        import matplotlib.pyplot as plt

        plt.close(fig)
        raise


def run_title(model=None, dataset=None, run_dir=None, what: str = "") -> str:
    """A figure title naming what a run trained: ``"mlp on digits (run ad1)"``, led by ``what``
    (``"controller progress: "``); the run folder's name alone where model and dataset are unknown."""
    import os

    parts = " on ".join(str(x) for x in (model, dataset) if x)
    run = os.path.basename(os.path.normpath(str(run_dir))) if run_dir else ""
    if parts and run:
        parts = f"{parts} (run {run})"
    elif run:
        parts = f"run {run} (model and dataset not recorded)"
    return f"{what}{parts}" if parts else what.rstrip(": ")


def run_config(run_dir) -> dict:
    """``model`` and ``dataset`` of the run in ``run_dir``, from its ``config.yaml`` (or its
    parent's: prune_pretrained keeps one above its ``remove_<target>`` folders); {} where there is
    none or it cannot be read (a figure title is no reason to fail)."""
    import os

    for folder in (run_dir, os.path.dirname(os.path.abspath(run_dir))):
        path = os.path.join(folder, "config.yaml")
        if os.path.isfile(path):
            try:
                from .yaml_read import load_yaml

                with open(path) as f:
                    cfg = load_yaml(f)
            except Exception:  # noqa: BLE001 - damaged or unreadable: the title names the folder alone
                return {}
            if not isinstance(cfg, dict):
                return {}
            # a mapping names its builder's keywords too ("model: {name: mlp, hidden: [8]}"): its name
            return {k: v.get("name") if isinstance(v, dict) else v for k, v in cfg.items() if k in ("model", "dataset")}
    return {}


def _pyplot():
    from .diagnostics.table import pyplot  # Agg unless the user picked a backend

    return pyplot()


def plot_loss_accuracy(rows: Sequence[dict], path, labels: Optional[Dict[str, str]] = None,
                       kept: Optional[dict] = None, title: Optional[str] = None) -> Path:
    """Loss and accuracy against step, one line per split; ``labels`` names a split in the legend
    (say which data fed it: ``{"holdout": "held-out: 6,000 images of TRAIN"}``). ``kept``
    (``step``, ``holdout_loss``, ``holdout_acc``): the held-out evaluation of the masks a run kept
    when they are not its last ones, marked with a star; the test point, measured on those masks, is
    drawn at their step. ``title``: the figure's title (name the model and dataset). The legend sits
    under each panel: inside, it hid a run's only held-out point. The loss panel is drawn on a log
    scale where its losses, all above 0, span more than three decades (:func:`loss_scale`)."""
    plt = _pyplot()
    labels = labels or {}
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    with closed_on_error(fig):
        splits = [s for s in ("train", "holdout", "test") if any(r["split"] == s for r in rows)]
        splits += sorted({r["split"] for r in rows} - set(splits))
        for ax, key, held_key in ((axes[0], "loss", "holdout_loss"), (axes[1], "accuracy", "holdout_acc")):
            given = [r for r in rows if r.get(key) is not None]
            for s in splits:
                pts = [(kept["step"] if kept is not None and s == "test" else r["step"], r[key])
                       for r in given if r["split"] == s and finite(r[key])]
                if pts:
                    xs, ys = zip(*pts)
                    label = labels.get(s, s) + (": the kept masks" if kept is not None and s == "test" else "")
                    style = dict(SPLIT_STYLE.get(s, {}))
                    if kept is not None and s == "test":
                        style["zorder"] = KEPT_STYLE["zorder"] + 1  # over the star: held-out and test can coincide
                    ax.plot(xs, ys, label=label, **style)
            held = None if kept is None else kept.get(held_key)
            if finite(held):
                ax.plot([kept["step"]], [held], **KEPT_STYLE)
            if key == "loss":
                loss_scale(ax, [y for line in ax.get_lines() for y in line.get_ydata()])
            ax.set_xlabel("training step")
            whole_steps(ax)
            # metrics.csv's fraction, where the closing line and the tables print percent: the unit said
            ax.set_ylabel("accuracy (fraction correct)" if key == "accuracy" else key)
            ax.set_title(key)
            ax.grid(alpha=0.3)
            drawn = bool(ax.get_legend_handles_labels()[0])
            if drawn:  # one column: the labels name each split at length, and two columns ran under the other panel's
                legend_below(ax, ncol=1)
            note_nonfinite(ax, key, sum(1 for r in given if not finite(r[key])), len(given), drawn)
        if title:
            fig.suptitle(title, fontsize=10)
        fig.tight_layout()
        return _save(fig, plt, path)


def density_before(event: dict) -> Optional[float]:
    """The overall density just before ``event``, from its counts (``live``, ``removed``, ``pruned``,
    ``grown``, in synapses); None where it lacks one."""
    counts = [event.get(k) for k in ("live", "removed", "pruned", "grown")]
    if not all(isinstance(c, (int, float)) for c in counts):
        return None
    live, removed, pruned, grown = counts
    return (live + pruned - grown) / (live + removed) if live + removed else None


def step_points(steps: Sequence, values: Sequence, start=None, last_step=None) -> tuple:
    """The points of a step function drawn with ``drawstyle="steps-post"``: ``values[i]`` holds from
    ``steps[i]`` to the next step; ``start``, where known, from step 0 to the first step; the last
    value on to ``last_step``, where the run went on after it."""
    xs, ys = list(steps), list(values)
    if start is not None and xs and xs[0] > 0:
        xs, ys = [0] + xs, [start] + ys
    if last_step is not None and xs and last_step > xs[-1]:
        xs, ys = xs + [last_step], ys + [ys[-1]]
    return xs, ys


def row_intervals(rows: Sequence[dict], key: str) -> tuple:
    """The points of a step function drawn with ``drawstyle="steps-pre"`` in which each train row's
    ``key`` holds over the steps the row covers: from the previous train row's step (0 for the
    first: a row's window starts where the last one ended) to its own. A row whose value is missing
    or not finite leaves its interval empty (a NaN point) rather than lending it the next row's."""
    train = [r for r in rows if r.get("split") == "train" and isinstance(r.get("step"), (int, float))]
    return [0] + [r["step"] for r in train], [math.nan] + [r[key] if finite(r.get(key)) else math.nan for r in train]


def plot_density(events: Sequence[dict], path, kept: Optional[dict] = None, last_step=None,
                 title: Optional[str] = None, rows: Sequence[dict] = ()) -> Path:
    """Overall and per-layer density against step, a step function: each controller event's density
    holds until the next event, and the last one until ``last_step`` (the run's last step). The
    overall line starts at step 0 at the density before the first event (from its counts); a layer's
    starts at its first event, before which events record no layer density. ``kept`` (``step``,
    ``density``): the masks a run kept when they are not its last ones, marked with a star.
    ``title``: a line above the figure's own (name the model and dataset). ``rows``: metric rows;
    the ``silent_units`` of train rows (the share of units no gradient reached over each row's
    steps) is drawn on the same 0-1 axis, each value over the steps its row covers (:func:`row_intervals`)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 4.5))
    with closed_on_error(fig):
        evs = [e for e in events if "density" in e]
        silent = any(r.get("split") == "train" and finite(r.get("silent_units")) for r in rows)
        if evs:
            steps = [e["step"] for e in evs]
            layers: List[str] = list(evs[-1].get("layer_density", {}))
            for i, name in enumerate(layers):
                xs, ys = step_points(steps, [e.get("layer_density", {}).get(name) for e in evs], last_step=last_step)
                # a run with no update has one event: a line alone would not show
                ax.plot(xs, ys, lw=1, alpha=0.8, ls=line_style(i), label=name, drawstyle="steps-post",
                        **single_point_marker(len(xs)))
            xs, ys = step_points(steps, [e["density"] for e in evs], density_before(evs[0]), last_step)
            ax.plot(xs, ys, color="k", lw=2.2, label="overall", drawstyle="steps-post", **single_point_marker(len(xs)))
        if silent:
            xs, ys = row_intervals(rows, "silent_units")
            ax.plot(xs, ys, color="tab:red", lw=1.2, ls=":", drawstyle="steps-pre",
                    label="silent units (no gradient over the row)")
        if kept is not None:
            ax.plot([kept["step"]], [kept["density"]], **KEPT_STYLE)
        if not evs:
            ax.text(0.5, 0.5, "no controller events", ha="center", va="center", transform=ax.transAxes)
        ax.set_xlabel("training step")
        whole_steps(ax)
        # the silent units share the axis: a reader took their 0.04 for a layer's density
        ax.set_ylabel("density (live synapses / synapses)" + ("\nsilent units (share of units)" if silent else ""))
        ax.set_ylim(0, 1.05)
        ax.set_title(_headed(title, "connectome density, overall and per layer" + ("; silent units" if silent else "")))
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            # beside the axes: inside, it covered the layers' lines. Out of tight_layout, which cannot fit
            # a wide legend (a ResNet-50's 53 long layer names in two columns) in the figure's 8 inches: it
            # warned "Tight layout not applied" and left the margins as they were; the saved canvas
            # (bbox_inches="tight" with tight_artists) grows to hold the legend instead
            leg = ax.legend(fontsize=7, ncol=2 if evs and len(evs[-1].get("layer_density", {})) > 24 else 1,
                            loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
            leg.set_in_layout(False)
        fig.tight_layout()
        return _save(fig, plt, path)


def plot_edits(events: Sequence[dict], path, title: Optional[str] = None) -> Path:
    """Synapses pruned (red) and grown (green) at every controller update, as bars, and an update
    that edited nothing as a black tick at 0; ``title``: a line above the figure's own (name the
    model and dataset)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 4))
    with closed_on_error(fig):
        evs = [e for e in events if e.get("kind", "update") == "update"]
        if evs:
            steps = [e["step"] for e in evs]
            # pruned on [s - width, s], grown on [s, s + width]: with width 0.4 of the smallest gap
            # between updates, no update's bars reach its neighbour's (a width of at least 1 step did,
            # with an update every step, and hid the pruned bars); but never under 1/250 of the steps
            # shown, or one close pair in a long run made every bar thinner than a pixel (updates that
            # close stand at one place on the axis anyway)
            distinct = sorted(set(steps))
            span = distinct[-1] - distinct[0]
            width = max(0.4 * min((b - a for a, b in zip(distinct, distinct[1:])), default=1.0), span / 250)
            ax.bar([s - width / 2 for s in steps], [e.get("pruned", 0) for e in evs], width=width, color="tab:red", label="pruned")
            ax.bar([s + width / 2 for s in steps], [e.get("grown", 0) for e in evs], width=width, color="tab:green", label="grown")
            idle = [s for s, e in zip(steps, evs) if not e.get("pruned") and not e.get("grown")]
            if idle:  # an update that edited nothing has no bar: without a mark it looked like no update ran
                ax.plot(idle, [0] * len(idle), "|", ms=12, mew=1.5, color="k", clip_on=False,
                        label="update with no edit")
            counts = sorted(c for e in evs for c in (e.get("pruned", 0), e.get("grown", 0)) if c)
            if counts and counts[-1] > 50 * counts[len(counts) // 2]:
                # one large edit (a jump to the target) would flatten the many small ones: log scale
                ax.set_yscale("symlog", linthresh=1)
                ax.set_ylabel("synapses per update (log scale above 1)")
            ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)  # covers no bar
        else:
            ax.text(0.5, 0.5, "no controller updates", ha="center", va="center", transform=ax.transAxes)
        ax.set_xlabel("training step (controller update)")
        whole_steps(ax)
        if ax.get_yscale() == "linear":
            ax.set_ylabel("synapses per update")
        ax.set_title(_headed(title, "pruned and grown synapses per update"))
        ax.grid(alpha=0.3, axis="y")
        fig.tight_layout()
        return _save(fig, plt, path)


def plot_grad_norm(rows: Sequence[dict], path, max_grad_norm: Optional[float] = None,
                   title: Optional[str] = None) -> Path:
    """A clipping run's train rows (``grad_norm``: the mean gradient norm before clipping over each
    row's steps; ``clipped``: the share of those steps scaled down) against step, with the limit
    ``max_grad_norm`` as a dashed line where given: whether clipping acts, and how often."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    with closed_on_error(fig):
        given = [r for r in rows if r.get("split") == "train" and r.get("grad_norm") is not None]
        pts = [(r["step"], r["grad_norm"]) for r in given if finite(r["grad_norm"])]
        if pts:
            xs, ys = zip(*pts)
            ax.plot(xs, ys, color=SPLIT_COLOR["train"], lw=1.2, label="gradient norm before clipping (row mean)",
                    **single_point_marker(len(xs)))
            if min(ys) > 0 and max(ys) / min(ys) > 100:
                ax.set_yscale("log")
        if max_grad_norm is not None:
            ax.axhline(max_grad_norm, color="k", ls="--", lw=1, label=f"--max_grad_norm {max_grad_norm:g}")
        handles, names = ax.get_legend_handles_labels()
        if any(finite(r.get("clipped")) for r in given):
            twin = ax.twinx()
            # a row covers the steps since the last one: each value is drawn over that interval
            xs, ys = row_intervals(rows, "clipped")
            (line,) = twin.plot(xs, ys, color="tab:red", lw=1, alpha=0.7, drawstyle="steps-pre")
            twin.set_ylim(-0.05, 1.05)
            twin.set_ylabel("share of steps clipped")
            handles, names = handles + [line], names + ["share of the row's steps clipped"]
        ax.set_xlabel("training step")
        whole_steps(ax)
        ax.set_ylabel("gradient norm (live gradients)")
        ax.set_title(_headed(title, "gradient norm before clipping"), fontsize=9 if title else None)
        ax.grid(alpha=0.3)
        if handles:
            legend_below(ax, handles, names)
        note_nonfinite(ax, "gradient norm", len(given) - len(pts), len(given), bool(handles))
        fig.tight_layout()
        return _save(fig, plt, path)


def plot_run(rows: Sequence[dict], events: Sequence[dict], out_dir,
             labels: Optional[Dict[str, str]] = None, kept: Optional[dict] = None,
             title: Optional[str] = None, max_grad_norm: Optional[float] = None) -> Dict[str, Path]:
    """Write ``loss_accuracy.png``, ``density.png`` (with the train rows' ``silent_units`` where they
    carry it) and ``edits.png`` into ``out_dir``, and
    ``grad_norm.png`` where train rows carry a ``grad_norm`` (a run that clips its gradients; its
    limit ``max_grad_norm`` drawn where given); ``labels`` as in :func:`plot_loss_accuracy`; ``kept``
    (``step``, ``density``, ``holdout_loss``, ``holdout_acc``): the masks the run kept where they are
    not its last ones (a mask_only run's ``--target best``), starred in the first two figures;
    ``title``: named on every figure (the model and dataset, see :func:`run_title`)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    steps = [r["step"] for r in rows if isinstance(r.get("step"), (int, float))]
    files = {
        "loss_accuracy": plot_loss_accuracy(rows, out / "loss_accuracy.png", labels, kept, title=title),
        "density": plot_density(events, out / "density.png", kept, last_step=max(steps, default=None), title=title,
                                rows=rows),
        "edits": plot_edits(events, out / "edits.png", title=title),
    }
    if any(r.get("grad_norm") is not None for r in rows):
        files["grad_norm"] = plot_grad_norm(rows, out / "grad_norm.png", max_grad_norm, title=title)
    return files


def _headed(title: Optional[str], own: str) -> str:
    """A panel's ``own`` title under the figure's ``title`` (the model and dataset), where given."""
    return f"{title}\n{own}" if title else own


def _save(fig, plt, path) -> Path:
    path = Path(path)
    if not path.suffix:  # matplotlib's own default: a PNG named path.png
        path = path.with_suffix(".png")
    with atomic_path(path) as tmp:
        # "tight": the canvas grows to hold a legend under a panel
        fig.savefig(tmp, dpi=110, bbox_inches="tight", bbox_extra_artists=tight_artists(fig))
    plt.close(fig)
    return path
