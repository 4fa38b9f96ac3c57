"""recipes/benchmarks/_paired_runs.paired_plot: the figure of lenet5_stability, threshold_pace and zero_cost_ties."""
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

ROOT = Path(__file__).resolve().parents[1]


def test_the_legend_lies_off_every_seed_and_differing_scales_are_said(tmp_path, monkeypatch):
    """lenet5_dst.png: the legend sat inside the first panel, lower right, where a seed that collapsed under the
    last variant is drawn; and its 88-98 % axis stood beside a 10-100 % one with nothing saying the scales differ.
    The legend now lies under the first panel, and the title says the panels have their own scales."""
    import matplotlib.pyplot as plt

    sys.path.insert(0, str(ROOT))
    from adaptive import plots
    from recipes.benchmarks._paired_runs import paired_plot

    figs = []
    monkeypatch.setattr(plots, "_save", lambda fig, plt, path: figs.append(fig) or path)
    results = {"a": {"x": {0: {"holdout_accuracy": 0.97}, 1: {"holdout_accuracy": 0.975}},
                     "y": {0: {"holdout_accuracy": 0.88}, 1: {"holdout_accuracy": 0.972}}},  # seed 0 low, lower right
               "b": {"x": {0: {"holdout_accuracy": 0.11}, 1: {"holdout_accuracy": 0.98}},
                     "y": {0: {"holdout_accuracy": 0.11}, 1: {"holdout_accuracy": 0.97}}}}
    paired_plot(results, ["x", "y"], [0, 1], tmp_path / "p.png", ["x", "y"], "title")
    fig = figs[0]
    try:
        fig.canvas.draw()
        r = fig.canvas.get_renderer()
        legend = fig.axes[0].get_legend().get_window_extent(r)
        assert not any(legend.overlaps(ax.get_window_extent(r)) for ax in fig.axes)
        assert fig._suptitle.get_text() == "title\n(each panel has its own accuracy scale)"
    finally:
        plt.close(fig)
    figs.clear()
    paired_plot({"a": results["a"]}, ["x", "y"], [0, 1], tmp_path / "p.png", ["x", "y"], "title")  # one panel: no note
    try:
        assert figs[0]._suptitle.get_text() == "title"
    finally:
        plt.close(figs[0])
