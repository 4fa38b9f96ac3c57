"""Shared by the benchmarks that train each setting once per variant and seed, every run a
``recipes/adaptive.py`` job (threshold_pace.py, zero_cost_ties.py, lenet5_stability.py,
threshold_estimators.py): the run, the figure that joins a seed's runs across the variants, and their
small argument and table helpers."""
from __future__ import annotations

import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def recipe_run(options, out: Path, label: str) -> dict:
    """One recipe job with ``options`` into ``out`` (no figures, no progress bars); its summary.json
    plus ``wall_min``, the minutes it took. A failed job stops the benchmark, naming ``label``."""
    cmd = [sys.executable, str(ROOT / "recipes" / "adaptive.py"), *options, "--output_dir", str(out), "--overwrite",
           "--figures", "false", "--progress", "false"]
    t0 = time.time()
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{label} failed (exit {done.returncode}): {' '.join(cmd)}\n{done.stderr[-3000:]}")
    from adaptive import jsonio  # (the benchmark put the repository on the path)

    summary = jsonio.loads((out / "summary.json").read_text())
    summary["wall_min"] = (time.time() - t0) / 60
    return summary


def paired_plot(results, variants, seeds, path: Path, ticks, title: str, center=statistics.mean) -> Path:
    """Held-out accuracy of every run: one panel per setting, a line per seed joining its runs across
    ``variants`` (the same split, data order and initial weights), and each variant's ``center``."""
    from adaptive.plots import _pyplot, _save, closed_on_error, legend_below

    plt = _pyplot()
    names = list(results)
    width = max(3.2, 1.1 * len(variants) + 0.4)  # room for every tick label side by side
    fig, axes = plt.subplots(1, len(names), figsize=(width * len(names), 3.7), squeeze=False)
    with closed_on_error(fig):
        for ax, name in zip(axes[0], names):
            for s in seeds:
                ax.plot(range(len(variants)), [100 * results[name][v][s]["holdout_accuracy"] for v in variants], "-",
                        color="0.6", lw=1, zorder=1)
            for i, v in enumerate(variants):
                acc = [100 * results[name][v][s]["holdout_accuracy"] for s in seeds]
                ax.plot([i] * len(acc), acc, "o", color=f"C{i}", ms=6, zorder=2, label="a seed" if i == 0 else None)
                ax.plot([i - 0.18, i + 0.18], [center(acc)] * 2, "-", color="k", lw=2, zorder=3,
                        label=center.__name__ if i == 0 else None)
            ax.set_xticks(range(len(variants)), list(ticks))
            ax.set_xlim(-0.5, len(variants) - 0.5)
            ax.set_title(name, fontsize=9)
            ax.grid(axis="y", alpha=0.3)
        axes[0][0].set_ylabel("held-out accuracy % (final network)")
        # under the first panel: inside (lower right), it lay where a seed that collapsed under the last variant falls
        legend_below(axes[0][0], fontsize=8, ncol=2, inches=0.35)
        # the panels' accuracy axes are scaled apart (a 97.2-97.7 panel beside a 10-100 one): said, so that a
        # half-point step drawn as tall as a collapse is not read as one
        spans = {tuple(round(v, 6) for v in ax.get_ylim()) for ax in axes[0]}
        fig.suptitle(title + ("\n(each panel has its own accuracy scale)" if len(spans) > 1 else ""))
        fig.tight_layout()
        return _save(fig, plt, path)


def int_list(text: str, what: str, ap) -> list:
    """Comma-separated distinct whole numbers in [0, 2**32 - 1] (seeds), or ``ap.error``."""
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        ap.error(f"{what}: comma-separated whole numbers, got {text!r}")
    if not values or len(set(values)) < len(values) or not all(0 <= v <= 2**32 - 1 for v in values):
        ap.error(f"{what}: distinct whole numbers in [0, 2**32 - 1], got {text!r}")
    return values


def name_list(text: str, known, what: str, ap, sep: str = ";") -> list:
    """The names in ``text`` separated by ``sep`` (each of ``known``, none twice), in their order, or
    ``ap.error`` naming the unknown ones and listing ``known``."""
    names = [s.strip() for s in text.split(sep) if s.strip()]
    unknown = [s for s in names if s not in known]
    if unknown or not names or len(set(names)) < len(names):
        ap.error(f"{what}: {'unknown ' + str(unknown) if unknown else 'none given or one named twice'}; "
                 f"choose from {(sep + ' ').join(known)}")
    return names


def at_least_one(args, names, ap) -> None:
    """``ap.error`` for the first of the options ``names`` (attributes of ``args``; None: not given)
    set below 1."""
    for name in names:
        value = getattr(args, name)
        if value is not None and value < 1:
            ap.error(f"--{name.replace('_', '-')} must be >= 1, got {value}")


def add_recipe_run_options(ap, name: str, seeds: str, epochs, epochs_help: str) -> None:
    """The options of a benchmark whose every run is one recipe job: ``--seeds`` (default ``seeds``),
    ``--epochs`` (default ``epochs``), ``--max-steps``, ``--subset``, ``--threads``, ``--data-dir``, ``--runs``,
    ``--output`` (default results/``name``.md); read them back with :func:`recipe_run_options`."""
    from adaptive.cli import data_dir_type, path_type

    ap.add_argument("--seeds", default=seeds, help="comma-separated seeds (split, data order, initialisation)")
    ap.add_argument("--epochs", type=int, default=epochs, help=epochs_help)
    ap.add_argument("--max-steps", type=int, default=None, help="steps of every run instead of --epochs (quick runs)")
    ap.add_argument("--subset", type=int, default=None, help="train examples (quick runs; the table says so)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads of each run (default 1)")
    ap.add_argument("--data-dir", type=data_dir_type, default=None, help="data folder (default: $ADAPTIVE_DATA or ../shared/data)")
    ap.add_argument("--runs", type=path_type(), default=None, help="folder for the runs' own folders (default: a temporary one)")
    ap.add_argument("--output", type=path_type(), default=None,
                    help=f"the table (default: recipes/benchmarks/results/{name}.md)")


def recipe_run_options(args, ap) -> list:
    """The seeds of :func:`add_recipe_run_options`' options, each checked (``ap.error`` otherwise), with
    ``args.data`` set to the data folder they name."""
    from adaptive.paths import resolve_data_dir

    seeds = int_list(args.seeds, "--seeds", ap)
    at_least_one(args, ("epochs", "max_steps", "subset", "threads"), ap)
    args.data = resolve_data_dir(args.data_dir)
    return seeds


def figure_path(args, name: str) -> Path:
    """Where a benchmark's figure goes: ``--figure``, else beside ``--output`` (a .png of the same
    name), else docs/figures/``name``.png."""
    if args.figure:
        return Path(args.figure)
    return Path(args.output).with_suffix(".png") if args.output else ROOT / "docs" / "figures" / f"{name}.png"


def table_path(args, name: str) -> Path:
    """Where a benchmark's table goes: ``--output``, else recipes/benchmarks/results/``name``.md."""
    return Path(args.output) if args.output else ROOT / "recipes" / "benchmarks" / "results" / f"{name}.md"


def write_table(out: Path, lines) -> None:
    """Write the table's ``lines`` to ``out`` (atomically), print them and say where they went."""
    from adaptive.atomic import write_text  # (the benchmark put the repository on the path)

    write_text(out, "\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"\nwritten to {out}")


def collapse_cells(rs, collapsed: float) -> str:
    """The cells a table of repeated runs gives one variant's runs ``rs`` (their summaries, in seed
    order): held-out median, mean ± sd, how many fell below ``collapsed``, test median, held-out per
    seed and wall minutes per run (zero_cost_ties.py, lenet5_stability.py)."""
    from adaptive.metrics import fmt_accuracy  # (the benchmark put the repository on the path; not 100.00 short of all)

    held = [r["holdout_accuracy"] for r in rs]
    return (f"{fmt_accuracy(statistics.median(held))} | {mean_sd(held)} | {sum(h < collapsed for h in held)} of "
            f"{len(held)} | {fmt_accuracy(statistics.median(r['test_accuracy'] for r in rs))} | "
            f"{', '.join(fmt_accuracy(h) for h in held)} | {statistics.mean(r['wall_min'] for r in rs):.1f} |")


def mean_sd(xs) -> str:
    """Fractions as percent: ``mean ± sd`` (the value alone for one)."""
    xs = [100 * x for x in xs]
    return f"{statistics.mean(xs):.2f} ± {statistics.stdev(xs):.2f}" if len(xs) > 1 else f"{xs[0]:.2f}"


def rel(path: Path) -> str:
    """``path`` relative to the repository where it lies inside it."""
    path = path.resolve()
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)
