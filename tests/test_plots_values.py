"""The plotted data of the edits and density figures: the bars and lines hold the events' numbers."""
import matplotlib

matplotlib.use("Agg")
import pytest  # noqa: E402

from adaptive import plots  # noqa: E402


@pytest.fixture
def figures(monkeypatch):
    kept = []
    monkeypatch.setattr(plots, "_save", lambda fig, plt, path: kept.append(fig) or path)
    yield kept
    import matplotlib.pyplot as plt

    for fig in kept:
        plt.close(fig)


def test_edit_bars_show_the_pruned_and_grown_counts_of_each_update(figures):  # P5
    plots.plot_edits([{"step": 1, "kind": "update", "pruned": 30, "grown": 10},
                      {"step": 2, "kind": "update", "pruned": 7, "grown": 5}], "edits.png")
    pruned, grown = figures[0].axes[0].containers
    assert [p.get_height() for p in pruned.patches] == [30, 7]
    assert [p.get_height() for p in grown.patches] == [10, 5]


def test_an_update_that_only_pruned_or_only_grew_gets_no_idle_mark(figures):  # P8
    plots.plot_edits([{"step": 1, "kind": "update", "pruned": 30, "grown": 0},
                      {"step": 2, "kind": "update", "pruned": 0, "grown": 4},
                      {"step": 3, "kind": "update", "pruned": 0, "grown": 0}], "edits.png")
    (idle,) = [l for l in figures[0].axes[0].get_lines() if l.get_label() == "update with no edit"]
    assert list(idle.get_xdata()) == [3]


def test_density_draws_a_layer_that_events_record_only_from_a_later_one(figures):  # P6
    events = [{"step": 0, "density": 1.0, "live": 10, "removed": 0, "pruned": 0, "grown": 0},
              {"step": 5, "density": 0.5, "layer_density": {"fc1.weight": 0.4, "fc2.weight": 0.6}}]
    plots.plot_density(events, "density.png", last_step=8)
    labels = [l.get_label() for l in figures[0].axes[0].get_lines()]
    assert "fc1.weight" in labels and "fc2.weight" in labels
