"""``curves.png`` (:func:`_plot`): loss and accuracy against removed weights, the removed count and
swaps per update, and the edit boundaries; :func:`_stage_ends` marks where each stage settled."""
from __future__ import annotations

from typing import Optional

from adaptive.atomic import atomic_path
from adaptive.plots import (SPLIT_COLOR, boundary_scale, closed_on_error, finite, legend_below, note_nonfinite, step_points,
                            tight_artists, whole_steps)


def _plot(history, snapshots_rows, events, path, title: str = "", holdout_images: Optional[int] = None):
    """``curves.png``: loss and accuracy against removed weights, the removed count and swaps per
    update against step, and the edit boundaries; ``title`` (the model and dataset) heads it, and
    the held-out line's legend gives ``holdout_images``, the held-out part's size, where known."""
    from adaptive.diagnostics.table import pyplot

    # the user's backend where one was picked (matplotlib.use("Agg") here switched it away), else Agg
    plt = pyplot()
    from matplotlib.ticker import EngFormatter

    ups = [h for h in history if h["kind"] == "update"]
    evs = [h for h in history if h["kind"] == "eval"]
    fig, axes = plt.subplots(2, 2, figsize=(13, 9))
    with closed_on_error(fig):
        # the network the run started from: dense, or a sparse start's row (its absent synapses removed already)
        dense = [r for r in snapshots_rows if (r.get("target") in ("dense", "start") or r.get("removed") == 0)
                 and r.get("holdout_acc") is not None]
        held_out = "part of TRAIN" + (f", {holdout_images:,} images" if holdout_images is not None else "")
        for ax, key, name in ((axes[0, 0], "loss", "loss"), (axes[0, 1], "acc", "accuracy")):
            if ups:  # (a run whose every target is 0 has none: no empty legend entry)
                # sized for a thousand update windows, a short run's few dots (alpha 0.5) were specks beside the
                # held-out and test markers: larger where there are few, as the boundaries panel's
                ax.plot([h.get("train_removed", h["removed"]) for h in ups], [h[f"train_{key}"] for h in ups], ".",
                        ms=3 if len(ups) > 100 else 7, alpha=0.5, color=SPLIT_COLOR["train"], label="train (update windows)")
            ends = sorted(_stage_ends(evs))
            held = {evs[i]["removed"]: evs[i][f"holdout_{key}"] for i in ends}
            if dense and dense[0]["removed"] not in held:  # the starting network's score starts the line
                held[dense[0]["removed"]] = dense[0][f"holdout_{key}"]
            during = [(h["removed"], h[f"holdout_{key}"]) for i, h in enumerate(evs) if i not in ends]
            if during:  # evaluations before a stage had settled: right after a jump the network is still adapting
                ax.plot(*zip(*during), "o", ms=3, mfc="none", color=SPLIT_COLOR["holdout"], alpha=0.8, zorder=3,
                        label="held-out, during a stage")
            if held:  # (none logged: no legend entry for a line that is not there)
                ax.plot(sorted(held), [held[r] for r in sorted(held)], "o-", ms=4, color=SPLIT_COLOR["holdout"], zorder=3,
                        label=f"held-out ({held_out}), end of each stage")  # over the test squares at the same counts
            rows = [r for r in snapshots_rows if r.get(f"test_{key}") is not None]
            if rows:
                ax.plot([r["removed"] for r in rows], [r[f"test_{key}"] for r in rows], "s", ms=7,
                        color=SPLIT_COLOR["test"], label="test (final report)")
            ax.set_xlabel("removed weights")
            whole_steps(ax)  # a count: no "500 m" ticks between 0 and 3 (nor 15k, 30k, ... up to 120k)
            ax.xaxis.set_major_formatter(EngFormatter())
            counts = {x for line in ax.get_lines() for x in line.get_xdata()}
            if len(counts) == 1:  # one count (every target 0): a tick there, not "-40 m" ticks around it
                ax.set_xticks(list(counts))
            # the rows' fractions, where results.md prints percent: the unit said
            ax.set_ylabel("accuracy (fraction correct)" if key == "acc" else name)
            ax.set_title(f"{name} against removed weights", fontsize=10)
            # a NaN or inf (a bf16 overflow, NaN weights in the file) left a gap no one saw: the panel says so
            shown = ([h[f"train_{key}"] for h in ups] + list(held.values()) + [v for _, v in during]
                     + [r[f"test_{key}"] for r in rows])
            shown = [v for v in shown if v is not None]  # (no accuracy: not a value, not drawn)
            bad = sum(1 for v in shown if not finite(v))
            note_nonfinite(ax, name, bad, len(shown), drawn=bad < len(shown))
            if ax.get_lines():
                # under the panel (room made above the one below): inside ("best"), a run of one count (--remove 0)
                # had its held-out point and test square at the top and bottom of the middle, and the legend on them
                legend_below(ax, ncol=2, in_layout=True)
            ax.grid(alpha=0.3)
        ax = axes[1, 0]
        # a step function: the count jumps at an update and holds until the next; from step 0 at the count
        # the first update's window ran with (the starting network), on to the last logged step
        last = max((h["step"] for h in history if isinstance(h.get("step"), (int, float))), default=None)
        if ups:
            xs, ys = step_points([h["step"] for h in ups], [h["removed"] for h in ups],
                                 start=ups[0].get("train_removed"), last_step=last)
            ax.plot(xs, ys, color="k", label="removed weights", drawstyle="steps-post")
            ax.yaxis.set_major_formatter(EngFormatter())
            whole_steps(ax)  # (shared with the boundaries panel) a short run was ticked at batch "0.5"
        else:  # every target 0: the dense network, scored with no stage run (both lower panels share this step axis)
            at = ("a target of 0 is the dense network" if not any(r.get("target") == "start" for r in snapshots_rows)
                  else "a target at a sparse start is the network as loaded")
            ax.text(0.5, 0.5, f"no updates ran ({at}, with no stage run)", ha="center",
                    va="center", transform=ax.transAxes)
            ax.set_xticks([0])
            ax.set_yticks([])
        ax.set_xlabel("training batch")
        ax.set_ylabel("removed weights")
        ax.grid(alpha=0.3)
        swaps = [(e["step"], min(e.get("pruned") or 0, e.get("grown") or 0)) for e in events if e.get("kind") == "update"]
        swaps = [(t, n) for t, n in swaps if n > 0]
        # a run whose updates swapped nothing (a short one) drew no swaps under a title that promised them
        ax.set_title("the connectome crawling: removed weights, and synapses swapped per update" if swaps or not ups
                     else "the connectome crawling: removed weights (no update swapped a synapse)", fontsize=10)
        handles, labels = ax.get_legend_handles_labels()
        if swaps:  # at a fixed count the connectome still moves: as many pruned as restored
            twin = ax.twinx()
            twin.plot(*zip(*swaps), "o", ms=3, color="tab:purple", alpha=0.7, label="swapped per update (right axis)")
            twin.set_yscale("log")
            twin.set_ylabel("synapses swapped per update", color="tab:purple")
            more = twin.get_legend_handles_labels()
            handles, labels = handles + more[0], labels + more[1]
        if handles:  # both axes' entries in one legend under the panel: inside, the twin axis's dots fell on it
            legend_below(ax, handles, labels, ncol=2)
        ax = axes[1, 1]
        # an update's boundaries are its plan's: drawn only where the update pruned (restored) synapses, not where
        # the line search rolled it back (10 of 36 updates of a run were drawn as edits that never happened)
        pb = [(e["step"], e["boundaries"]["prune"]) for e in events
              if e.get("boundaries") and e["boundaries"].get("prune") is not None and e.get("pruned")]
        rb = [(e["step"], e["boundaries"]["restore"]) for e in events
              if e.get("boundaries") and e["boundaries"].get("restore") is not None and e.get("grown")]
        # dots sized for a thousand updates were specks on a run of a few: larger where there are few
        few = len(rb) + len(pb) <= 100
        if rb:  # drawn first and larger: at a goal the two boundaries meet, and the prune one stays visible on top
            ax.plot(*zip(*rb), ".", ms=8 if few else 4, color="tab:green",
                    label="restore boundary (restoration gain of the last restored)")
        if pb:
            ax.plot(*zip(*pb), ".", ms=4 if few else 1.5, color="tab:red", label="prune boundary (removal cost of the last pruned)")
        if rb or pb:
            boundary_scale(ax, [v for _, v in rb + pb])
            legend_below(ax, ncol=1)  # inside, it covered the boundaries at the top of the panel
        else:
            ax.text(0.5, 0.5, "no edits logged", ha="center", va="center", transform=ax.transAxes)
            ax.set_yticks([])  # (0 to 1 was no boundary's scale)
        ax.set_xlabel("training batch")
        ax.set_ylabel("edit boundary (estimator value)")
        ax.set_title("edit boundaries over time", fontsize=10)
        ax.grid(alpha=0.3)
        axes[1, 1].sharex(axes[1, 0])
        if title:
            fig.suptitle(title, fontsize=11)
        fig.tight_layout()
        with atomic_path(path) as tmp:
            # "tight": the canvas grows to hold the legend under a panel
            fig.savefig(tmp, dpi=120, bbox_inches="tight", bbox_extra_artists=tight_artists(fig))
    plt.close(fig)


def _stage_ends(evs) -> set:
    """Indices of the last evaluation of each stage (``evs`` in time order): where a stage settled
    before the next one moved on (records without a stage are grouped by removal count)."""
    last = {}
    for i, h in enumerate(evs):
        last[("stage", h["stage"]) if "stage" in h else ("removed", h["removed"])] = i
    return set(last.values())
