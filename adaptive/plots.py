"""Run figures: PNG files with labelled axes, written into a run folder.

- :func:`plot_loss_accuracy`: loss and accuracy against step, per split (train / holdout / test);
- :func:`plot_density`: overall and per-layer density against step, from controller events;
- :func:`plot_edits`: synapses pruned and grown at every controller update;
- :func:`plot_run`: all three, returns the paths written.
Inputs are plain lists of dicts (metric rows as in :data:`adaptive.training.METRIC_FIELDS`,
controller events), so a finished run can be re-plotted from its ``metrics.csv`` and
``events.jsonl``. NaN and inf values are left out, and the panel says how many.
"""
from __future__ import annotations

import math
import numbers
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from .atomic import atomic_path

SPLIT_STYLE = {"train": dict(marker="", lw=1.0, alpha=0.8), "holdout": dict(marker="o", ms=3),
               "test": dict(marker="s", ms=6, ls="none")}
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
    ax.set_yscale("symlog", linthresh=10.0 ** max(lowest, math.ceil(math.log10(max(vals))) - 4))


def _pyplot():
    from .diagnostics.table import pyplot  # Agg unless the user picked a backend

    return pyplot()


def plot_loss_accuracy(rows: Sequence[dict], path, labels: Optional[Dict[str, str]] = None,
                       kept: Optional[dict] = None) -> Path:
    """Loss and accuracy against step, one line per split; ``labels`` names a split in the legend
    (say which data fed it: ``{"holdout": "held-out: 6,000 images of TRAIN"}``). ``kept``
    (``step``, ``holdout_loss``, ``holdout_acc``): the held-out evaluation of the masks a run kept
    when they are not its last ones, marked with a star; the test point, measured on those masks, is
    drawn at their step."""
    plt = _pyplot()
    labels = labels or {}
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
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
        ax.set_xlabel("training step")
        ax.set_ylabel(key)
        ax.set_title(key)
        ax.grid(alpha=0.3)
        drawn = bool(ax.get_legend_handles_labels()[0])
        if drawn:
            ax.legend(fontsize=8)
        note_nonfinite(ax, key, sum(1 for r in given if not finite(r[key])), len(given), drawn)
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


def plot_density(events: Sequence[dict], path, kept: Optional[dict] = None, last_step=None) -> Path:
    """Overall and per-layer density against step, a step function: each controller event's density
    holds until the next event, and the last one until ``last_step`` (the run's last step). The
    overall line starts at step 0 at the density before the first event (from its counts); a layer's
    starts at its first event, before which events record no layer density. ``kept`` (``step``,
    ``density``): the masks a run kept when they are not its last ones, marked with a star."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 4.5))
    evs = [e for e in events if "density" in e]
    if evs:
        steps = [e["step"] for e in evs]
        layers: List[str] = list(evs[-1].get("layer_density", {}))
        for name in layers:
            xs, ys = step_points(steps, [e.get("layer_density", {}).get(name) for e in evs], last_step=last_step)
            # a run with no update has one event: a line alone would not show
            ax.plot(xs, ys, lw=1, alpha=0.8, label=name, drawstyle="steps-post", **single_point_marker(len(xs)))
        xs, ys = step_points(steps, [e["density"] for e in evs], density_before(evs[0]), last_step)
        ax.plot(xs, ys, color="k", lw=2.2, label="overall", drawstyle="steps-post", **single_point_marker(len(xs)))
    if kept is not None:
        ax.plot([kept["step"]], [kept["density"]], **KEPT_STYLE)
    if not evs:
        ax.text(0.5, 0.5, "no controller events", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("training step")
    ax.set_ylabel("density (live synapses / synapses)")
    ax.set_ylim(0, 1.05)
    ax.set_title("connectome density, overall and per layer")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, ncol=2 if evs and len(evs[-1].get("layer_density", {})) > 8 else 1)
    fig.tight_layout()
    return _save(fig, plt, path)


def plot_edits(events: Sequence[dict], path) -> Path:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 4))
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
        counts = sorted(c for e in evs for c in (e.get("pruned", 0), e.get("grown", 0)) if c)
        if counts and counts[-1] > 50 * counts[len(counts) // 2]:
            # one large edit (a jump to the target) would flatten the many small ones: log scale
            ax.set_yscale("symlog", linthresh=1)
            ax.set_ylabel("synapses per update (log scale above 1)")
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "no controller updates", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("training step (controller update)")
    if ax.get_yscale() == "linear":
        ax.set_ylabel("synapses per update")
    ax.set_title("pruned and grown synapses per update")
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    return _save(fig, plt, path)


def plot_run(rows: Sequence[dict], events: Sequence[dict], out_dir,
             labels: Optional[Dict[str, str]] = None, kept: Optional[dict] = None) -> Dict[str, Path]:
    """Write ``loss_accuracy.png``, ``density.png`` and ``edits.png`` into ``out_dir``; ``labels``
    as in :func:`plot_loss_accuracy`; ``kept`` (``step``, ``density``, ``holdout_loss``,
    ``holdout_acc``): the masks the run kept where they are not its last ones (a mask_only run's
    ``--target best``), starred in the first two figures."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    steps = [r["step"] for r in rows if isinstance(r.get("step"), (int, float))]
    return {
        "loss_accuracy": plot_loss_accuracy(rows, out / "loss_accuracy.png", labels, kept),
        "density": plot_density(events, out / "density.png", kept, last_step=max(steps, default=None)),
        "edits": plot_edits(events, out / "edits.png"),
    }


def _save(fig, plt, path) -> Path:
    path = Path(path)
    if not path.suffix:  # matplotlib's own default: a PNG named path.png
        path = path.with_suffix(".png")
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)
    return path
