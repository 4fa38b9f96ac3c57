"""Every figure the project draws is closed however its drawing ends: a plot that raised while
drawing, or whose file could not be written, left its figure open in pyplot (in a notebook or a
long process, one more per failed plot, until matplotlib warned of too many open figures)."""
import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.axes  # noqa: E402
import matplotlib.figure  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

import graphs  # noqa: E402
from adaptive import plots  # noqa: E402
from adaptive.diagnostics import collinearity, gradient_by_depth, knowledge_distribution, progress  # noqa: E402
from _scripts import load_script  # noqa: E402

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[1]

ROWS = [{"step": s, "split": "train", "loss": 1.0 / s, "accuracy": 0.5, "grad_norm": 2.0, "clipped": 0.5}
        for s in (1, 2)]
EVENTS = [{"step": 1, "kind": "update", "pruned": 3, "grown": 1, "density": 0.9, "layer_density": {"a": 0.9}}]


def _sum_loss(out, y):
    return out.sum()


def _data():
    return [(torch.randn(4, 3), torch.randint(0, 2, (4,)))] * 2


def _progress(d):
    (d / "events.jsonl").write_text(json.dumps(EVENTS[0]) + "\n")
    (d / "metrics.csv").write_text("step,split,loss,accuracy\n1,train,1.0,0.5\n2,train,0.5,0.6\n")
    progress(str(d)).plot(d / "p.png")


def _unit_graph():
    torch.manual_seed(0)
    return graphs.build(model=nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)), level="unit")


def _concats(d):
    models = pytest.importorskip("adaptive.models")
    m = models.build_model("densecat", depth=2, width=2, kind="cnn", in_shape=(3, 4, 4))
    assert graphs.figures.plot_concats(graphs.build(model=m, level="unit"), d) is not None


def _prune_pretrained(d):
    sys.path.insert(0, str(ROOT))  # the recipe's parts import from the repository root
    load_script("recipes/prune_pretrained.py", "prune_pretrained")
    from recipes._prune_pretrained.plot import _plot

    history = [{"kind": "update", "step": 1, "removed": 2, "train_loss": 1.0, "train_acc": 0.5},
               {"kind": "eval", "step": 1, "stage": 0, "removed": 2, "holdout_loss": 1.0, "holdout_acc": 0.5}]
    _plot(history, [], [], d / "curves.png")


def _paired(d):
    sys.path.insert(0, str(ROOT))
    from recipes.benchmarks._paired_runs import paired_plot

    results = {"a": {v: {0: {"holdout_accuracy": 0.5}} for v in ("x", "y")}}
    paired_plot(results, ["x", "y"], [0], d / "paired.png", ["x", "y"], "title")


PLOTS = {
    "plots.loss_accuracy": lambda d: plots.plot_loss_accuracy(ROWS, d / "la.png"),
    "plots.density": lambda d: plots.plot_density(EVENTS, d / "de.png", rows=ROWS),
    "plots.edits": lambda d: plots.plot_edits(EVENTS, d / "ed.png"),
    "plots.grad_norm": lambda d: plots.plot_grad_norm(ROWS, d / "gn.png", 1.0),
    "progress": _progress,
    "collinearity": lambda d: collinearity(nn.Linear(3, 2), _data(), loss_fn=_sum_loss).plot(d / "c.png"),
    "collinearity.summary": lambda d: collinearity(nn.Linear(3, 2), _data(), loss_fn=_sum_loss).plot_summary(d / "s.png"),
    "knowledge": lambda d: knowledge_distribution(nn.Linear(3, 2), _data(), counts=[0, 2, 4],
                                                  estimator="magnitude").plot(d / "k.png"),
    "gradient_depth": lambda d: gradient_by_depth(nn.Linear(3, 2, bias=False), _data(), layer="", batches=2,
                                                  loss_fn=_sum_loss, depths=torch.tensor([0, 0, 1])).plot(d / "g.png"),
    "graphs.density": lambda d: graphs.figures.plot_density(_unit_graph(), d),
    "graphs.degrees": lambda d: graphs.figures.plot_degrees(_unit_graph(), d),
    "graphs.dead": lambda d: graphs.figures.plot_dead(_unit_graph(), d),
    "graphs.reachability": lambda d: graphs.figures.plot_reachability(_unit_graph(), d),
    "graphs.concats": _concats,
    "prune_pretrained": _prune_pretrained,
    "benchmarks.paired": _paired,
}


class Failed(Exception):
    pass


def _fail(*args, **kwargs):
    raise Failed("made to fail")


@pytest.mark.parametrize("where", ["drawing", "saving"])
@pytest.mark.parametrize("name", sorted(PLOTS))
def test_a_figure_that_fails_while_drawing_or_saving_is_closed(name, where, tmp_path, monkeypatch):
    before = plt.get_fignums()
    PLOTS[name](tmp_path)  # it draws and writes its file when nothing fails, and closes its figure
    assert plt.get_fignums() == before
    # every plot labels a y axis after making its figure, and writes it through Figure.savefig
    target = (matplotlib.axes.Axes, "set_ylabel") if where == "drawing" else (matplotlib.figure.Figure, "savefig")
    monkeypatch.setattr(*target, _fail)
    with pytest.raises(Failed):
        PLOTS[name](tmp_path)
    assert plt.get_fignums() == before


def test_save_figure_closes_a_figure_it_could_not_write(tmp_path):
    from adaptive.diagnostics import save_figure

    fig, ax = plt.subplots()
    ax.plot([0, 1])
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(OSError):
        save_figure(fig, blocker / "under_a_file" / "x.png")  # its folder cannot be made
    assert fig.number not in plt.get_fignums()
