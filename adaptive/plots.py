"""Run figures: PNG files with labelled axes, written into a run folder.

- :func:`plot_loss_accuracy`: loss and accuracy against step, per split (train / holdout / test);
- :func:`plot_density`: overall and per-layer density against step, from controller events;
- :func:`plot_edits`: synapses pruned and grown at every controller update;
- :func:`plot_run`: all three, returns the paths written.
Inputs are plain lists of dicts (metric rows as in :data:`adaptive.training.METRIC_FIELDS`,
controller events), so a finished run can be re-plotted from its ``metrics.csv`` and
``events.jsonl``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional, Sequence

from .atomic import atomic_path

SPLIT_STYLE = {"train": dict(marker="", lw=1.0, alpha=0.8), "holdout": dict(marker="o", ms=3),
               "test": dict(marker="s", ms=6, ls="none")}


def boundary_scale(ax, values) -> None:
    """A y-scale for edit boundaries: linear where they are all of one sign within two decades
    (presence values, magnitudes), symmetric-log where they cross zero or span decades (loss-change
    estimates)."""
    vals = [abs(v) for v in values if v != 0]
    if not vals:
        return
    one_sign = all(v > 0 for v in values) or all(v < 0 for v in values)
    if one_sign and max(vals) / min(vals) < 100:
        return
    ax.set_yscale("symlog", linthresh=max(min(vals), 1e-12))


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_loss_accuracy(rows: Sequence[dict], path, labels: Optional[Dict[str, str]] = None) -> Path:
    """Loss and accuracy against step, one line per split; ``labels`` names a split in the legend
    (say which data fed it: ``{"holdout": "held-out: 6,000 images of TRAIN"}``)."""
    plt = _pyplot()
    labels = labels or {}
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    splits = [s for s in ("train", "holdout", "test") if any(r["split"] == s for r in rows)]
    splits += sorted({r["split"] for r in rows} - set(splits))
    for ax, key, label in ((axes[0], "loss", "loss"), (axes[1], "accuracy", "accuracy")):
        for s in splits:
            pts = [(r["step"], r[key]) for r in rows if r["split"] == s and r.get(key) is not None]
            if pts:
                xs, ys = zip(*pts)
                ax.plot(xs, ys, label=labels.get(s, s), **SPLIT_STYLE.get(s, {}))
        ax.set_xlabel("training step")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        if splits:
            ax.legend(fontsize=8)
    axes[0].set_title("loss")
    axes[1].set_title("accuracy")
    fig.tight_layout()
    return _save(fig, plt, path)


def plot_density(events: Sequence[dict], path) -> Path:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 4.5))
    evs = [e for e in events if "density" in e]
    if evs:
        steps = [e["step"] for e in evs]
        layers: List[str] = list(evs[-1].get("layer_density", {}))
        for name in layers:
            ax.plot(steps, [e.get("layer_density", {}).get(name) for e in evs], lw=1, alpha=0.8, label=name)
        ax.plot(steps, [e["density"] for e in evs], color="k", lw=2.2, label="overall")
    else:
        ax.text(0.5, 0.5, "no controller events", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("training step")
    ax.set_ylabel("density (live synapses / synapses)")
    ax.set_ylim(0, 1.05)
    ax.set_title("connectome density, overall and per layer")
    ax.grid(alpha=0.3)
    if evs:
        ax.legend(fontsize=7, ncol=2 if len(evs[-1].get("layer_density", {})) > 8 else 1)
    fig.tight_layout()
    return _save(fig, plt, path)


def plot_edits(events: Sequence[dict], path) -> Path:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 4))
    evs = [e for e in events if e.get("kind", "update") == "update"]
    if evs:
        steps = [e["step"] for e in evs]
        width = max(1.0, 0.4 * (min(b - a for a, b in zip(steps, steps[1:])) if len(steps) > 1 else 1.0))
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
             labels: Optional[Dict[str, str]] = None) -> Dict[str, Path]:
    """Write ``loss_accuracy.png``, ``density.png`` and ``edits.png`` into ``out_dir``; ``labels``
    as in :func:`plot_loss_accuracy`."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    return {
        "loss_accuracy": plot_loss_accuracy(rows, out / "loss_accuracy.png", labels),
        "density": plot_density(events, out / "density.png"),
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
