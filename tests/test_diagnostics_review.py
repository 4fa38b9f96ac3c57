"""A skeptical review of the diagnostics: their numbers recomputed by hand, their bad-input
errors, their side effects on the model and what their figures say."""
import importlib
import math
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from adaptive import paths
from adaptive.connectome import Connectome
from adaptive.diagnostics import (Progress, Table, collinearity, gradient_by_depth, knowledge_distribution,
                                  removal_scores)
from adaptive.diagnostics._common import iterate_batches
from adaptive.models import build_model
from _figures import close_kept_figures

torch.set_num_threads(1)
collinearity_module = importlib.import_module("adaptive.diagnostics.collinearity")  # the package's names are the functions
gradient_depth_module = importlib.import_module("adaptive.diagnostics.gradient_depth")
progress_module = importlib.import_module("adaptive.diagnostics.progress")
SHARED_MNIST = paths.SHARED_DATA / "mnist" / "mnist.npz"


_close_kept_figures = pytest.fixture(autouse=True)(close_kept_figures)


def densecat(batchnorm=False, depth=3, width=4, in_shape=(1, 6, 6), num_classes=5):
    torch.manual_seed(0)
    return build_model("densecat", num_classes=num_classes, in_shape=in_shape, depth=depth, width=width, batchnorm=batchnorm)


def batches(n, size=8, shape=(1, 6, 6), classes=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(size, *shape, generator=g), torch.randint(0, classes, (size,), generator=g)) for _ in range(n)]


def captured_figures(monkeypatch, module):
    """Make ``module.save_figure`` keep the figure instead of writing it."""
    figs = []

    def keep(fig, path, svg=False):
        figs.append(fig)
        return [str(path)]

    monkeypatch.setattr(module, "save_figure", keep)
    return figs


# ---------------------------------------------------------------- numbers recomputed by hand
def test_depth_bands_match_hand_sliced_columns_and_order_statistics():
    net = densecat()
    data = batches(4)
    res = gradient_by_depth(net, data, layer="classifier", batches=None)
    net.train()
    grads = torch.stack([torch.autograd.grad(F.cross_entropy(net(x), y), [net.classifier.weight])[0].abs() for x, y in data])
    edges = [0, 36, 40, 44, 48]  # 36 raw pixels, then 3 layers of width 4
    assert res.depths == [0, 1, 2, 3]
    for d, row in zip(range(4), res.table):
        v = grads[:, :, edges[d]:edges[d + 1]].reshape(-1).double()
        assert row["values"] == v.numel() and row["mean"] == pytest.approx(float(v.mean()), rel=1e-6)
        assert row["zero_fraction"] == pytest.approx(float((v == 0).double().mean()))
        for q, key in ((0.25, "q1"), (0.5, "median"), (0.75, "q3")):  # an order statistic, to the 1.2% bins
            lo = float(torch.quantile(v, q, interpolation="lower"))
            hi = float(torch.quantile(v, q, interpolation="higher"))
            assert lo * 0.988 <= row[key] <= hi * 1.012, (d, key)
    assert torch.allclose(res.per_weight, grads.mean(0).reshape(-1), rtol=1e-5, atol=1e-12)


def test_collinearity_matches_explicit_batch_gradients():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(36, 6), nn.Tanh(), nn.Linear(6, 5))
    data = batches(3, size=8)
    res = collinearity(net, data, batch_size=6, train_mode=False)  # 24 samples re-cut into 4 batches of 6
    assert res.batches == 4
    X, Y = torch.cat([x for x, _ in data]), torch.cat([y for _, y in data])
    w = net[1].weight
    G = torch.stack([torch.autograd.grad(F.cross_entropy(net(X[i:i + 6]), Y[i:i + 6]), [w])[0].reshape(-1).double()
                     for i in range(0, 24, 6)])
    mean = G.mean(0)
    cos = F.cosine_similarity(G.T, mean.unsqueeze(1).expand(-1, 4), dim=1).abs()  # (g_1..g_B) against (G..G)
    assert torch.allclose(res.cosine["1.weight"].double(), cos, atol=1e-5)
    agree = (torch.sign(G) == torch.sign(mean)).double().mean(0)
    assert torch.allclose(res.sign_agreement["1.weight"].double(), agree)
    assert torch.allclose(res.full_grad_sq["1.weight"].double(), mean ** 2, rtol=1e-5, atol=1e-14)


def test_taylor_order_is_the_registry_signed_first_order_change():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(36, 6), nn.ReLU(), nn.Linear(6, 5))
    data = batches(3)
    scores = removal_scores(Connectome(net), data, "taylor", batches=None)
    net.eval()
    g = [torch.zeros_like(p) for p in (net[1].weight, net[3].weight)]
    for x, y in data:
        for acc, gi in zip(g, torch.autograd.grad(F.cross_entropy(net(x), y), [net[1].weight, net[3].weight])):
            acc += gi / len(data)
    assert torch.allclose(scores["1.weight"], -g[0] * net[1].weight.detach(), atol=1e-7)
    assert torch.allclose(scores["3.weight"], -g[1] * net[3].weight.detach(), atol=1e-7)


def test_no_private_estimator_copy_when_the_registry_fails(monkeypatch):
    # the old fallback scored "taylor" as mean |g w|, another order under the same name
    monkeypatch.setitem(sys.modules, "adaptive.utility", None)
    net = nn.Sequential(nn.Flatten(), nn.Linear(36, 5))
    with pytest.raises(ImportError):
        removal_scores(Connectome(net), batches(1), "taylor")


@pytest.mark.skipif(not SHARED_MNIST.is_file(), reason=f"shared MNIST absent at {SHARED_MNIST}")
def test_depth_bands_on_mnist_match_hand_slicing():
    from adaptive.data import get_dataloaders

    data = get_dataloaders("mnist", batch_size=32, data_dir=paths.SHARED_DATA, subset=200, seed=0)
    net = densecat(depth=2, width=4, in_shape=data.in_shape, num_classes=10)
    loader = [b for _, b in zip(range(2), data.train)]
    res = gradient_by_depth(net, loader, layer="classifier", batches=None)
    net.train()
    g = torch.stack([torch.autograd.grad(F.cross_entropy(net(x), y), [net.classifier.weight])[0].abs() for x, y in loader])
    for d, (a, b) in enumerate(((0, 784), (784, 788), (788, 792))):
        assert res.table[d]["mean"] == pytest.approx(float(g[:, :, a:b].double().mean()), rel=1e-6)


# ---------------------------------------------------------------- side effects and bad input
def test_empty_loader_is_an_error_not_an_endless_loop():
    class Empty:
        passes = 0

        def __iter__(self):
            Empty.passes += 1
            if Empty.passes > 5:
                raise RuntimeError("iterated an empty loader again and again")
            return iter(())

    with pytest.raises(ValueError, match="gradients of classifier yielded no batches"):
        gradient_by_depth(densecat(), Empty(), layer="classifier", batches=3)
    Empty.passes = 0
    with pytest.raises(ValueError, match="loader for x yielded no batches"):
        list(iterate_batches(Empty(), 4, desc="x", cycle=True))


def test_empty_evaluation_loader_is_named():
    net = nn.Sequential(nn.Flatten(), nn.Linear(36, 5))
    with pytest.raises(ValueError, match="evaluation data yielded no batches"):
        knowledge_distribution(net, [], points=3)


def test_collinearity_batch_larger_than_the_data_says_so():
    net = nn.Sequential(nn.Flatten(), nn.Linear(36, 5))
    with pytest.raises(ValueError, match="only 16 samples.*batch_size=100"):
        collinearity(net, batches(2), batch_size=100)


@pytest.mark.parametrize("which", ["depth", "collinearity"])
def test_train_mode_measurements_leave_batchnorm_statistics_alone(which):
    net = densecat(batchnorm=True)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    if which == "depth":
        gradient_by_depth(net, batches(3), layer="classifier", batches=3, train_mode=True)
    else:
        collinearity(net, batches(3), train_mode=True)
    changed = [k for k, v in net.state_dict().items() if not torch.equal(v, before[k])]
    assert changed == []
    assert net.training  # its own mode is kept too


def test_a_layer_reading_one_depth_warns_and_has_no_ratio():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(36, 6), nn.ReLU(), nn.Linear(6, 5))
    with pytest.warns(UserWarning, match="depth 1: one band, nothing to compare"):
        res = gradient_by_depth(net, batches(2), layer="3", batches=2)
    assert len(res.depths) == 1 and math.isnan(res.ratio())


def test_unknown_layer_names_the_layers_there_are():
    with pytest.raises(KeyError, match="no layer 'clasifier'.*'classifier'"):
        gradient_by_depth(densecat(), batches(1), layer="clasifier")


# ---------------------------------------------------------------- what the figures say
def test_depth_figure_counts_zero_gradients_it_cannot_draw(monkeypatch):
    figs = captured_figures(monkeypatch, gradient_depth_module)
    res = gradient_by_depth(nn.Linear(3, 2, bias=False), [(torch.tensor([[1.0, 0.0, 2.0]]), torch.tensor([0]))],
                            layer="", batches=1, depths=[0, 1, 2])
    res.plot("unused.png")
    texts = [t.get_text() for t in figs[0].axes[0].texts]
    assert texts == ["100% zero"]  # the band reading the 0.0 input has only exact zeros


def test_collinearity_figures_name_their_data_and_the_undrawn_weights(monkeypatch):
    figs = captured_figures(monkeypatch, collinearity_module)
    net = nn.Sequential(nn.Flatten(), nn.Linear(36, 5))
    data = [(torch.cat([torch.randn(8, 1, 6, 5), torch.zeros(8, 1, 6, 1)], 3), torch.randint(0, 5, (8,))) for _ in range(3)]
    res = collinearity(net, data)
    res.plot("a.png", title="net X on TRAIN")
    res.plot_summary("b.png", title="net X on TRAIN")
    main_title, summary_title = figs[0].axes[0].get_title(), figs[1].axes[0].get_title()
    assert "net X on TRAIN" in main_title and "30 with G = 0 not drawn" in main_title  # 6 zero pixels x 5 outputs
    assert "net X on TRAIN" in summary_title and "3 batches" in summary_title


def test_progress_keeps_the_initial_pruning_apart_from_the_updates(monkeypatch):
    figs = captured_figures(monkeypatch, progress_module)
    events = Table([{"step": 0, "kind": "init", "pruned": 200_000, "grown": 0, "density": 0.2},
                    {"step": 25, "kind": "update", "pruned": 100, "grown": 100, "density": 0.2},
                    {"step": 50, "kind": "update", "pruned": 50, "grown": 50, "density": 0.2}])
    Progress(events, Table(), "step").plot("p.png")
    ax = figs[0].axes[2]
    drawn = [y for line in ax.get_lines() for y in line.get_ydata()]
    assert max(drawn) == 100 and "initial pruning at step 0: 200,000" in ax.get_title()


def test_knowledge_fit_table_says_how_many_points_each_fit_has():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(36, 5))
    curve = knowledge_distribution(net, batches(2), points=4)
    assert curve.fit_table()["points"] == [curve.fits["loss_increase"]["points"], curve.fits["accuracy_drop"]["points"]]


def test_progress_reads_the_run_s_synapse_count_for_density_only_events(tmp_path):
    """Without --total_synapses (help: 'read from the run') nothing was read: density-only events
    stayed at 0 removed and the figure said 'removed stays at 0'."""
    (tmp_path / "events.jsonl").write_text("".join(
        f'{{"step": {s}, "kind": "update", "density": {d}}}\n' for s, d in ((0, 0.8), (10, 0.6), (20, 0.5))))
    (tmp_path / "metrics.csv").write_text("step,split,loss,accuracy\n5,train,1.0,0.5\n15,train,0.8,0.6\n25,train,0.7,0.7\n")
    (tmp_path / "summary.json").write_text('{"synapses": 1000}')
    prog = progress_module.progress(str(tmp_path))
    assert [e["removed"] for e in prog.events] == [200, 400, 500]
    assert [r["removed"] for r in prog.metrics] == [200, 400, 500]


def test_progress_boundaries_panel_leaves_out_synapse_counts(tmp_path, monkeypatch):
    (tmp_path / "events.jsonl").write_text("".join(
        f'{{"step": {s}, "kind": "update", "removed": {r}, "boundaries": {{"prune": -0.001, "restore": 0.002, '
        f'"need": {n}, "goal": 500}}}}\n' for s, r, n in ((10, 250, 250), (20, 500, 0))))
    (tmp_path / "metrics.csv").write_text("step,split,loss,accuracy,removed\n10,train,1.0,0.5,250\n20,train,0.9,0.6,500\n")
    figs = captured_figures(monkeypatch, progress_module)
    progress_module.progress(str(tmp_path)).plot(tmp_path / "p.png")
    labels = {line.get_label() for line in figs[0].axes[3].get_lines()}
    assert labels == {"prune", "restore"}


def test_a_markdown_share_that_rounds_to_1_keeps_the_digits_that_tell_it_from_1():
    # found: 4 significant digits wrote a zero_fraction or frac_cos>0.5 of 0.99996 as "1" (all of them) in the
    # printed and saved tables, while the figures said ">99%"
    from adaptive.diagnostics import Table

    row = Table([{"share": 0.99996, "all": 1.0, "half": 0.5, "ratio": 1.00004, "tiny": -0.9999996}]).to_markdown()
    assert row.splitlines()[2] == "| 0.99996 | 1 | 0.5 | 1.00004 | -0.9999996 |"


def test_the_same_figure_writes_the_same_svg_bytes(tmp_path):
    """--svg wrote another file at every run of the same settings (a date stamp and random ids of its
    clip paths), where the PNG, CSV and tables were byte-identical."""
    from adaptive.diagnostics.table import pyplot, save_figure

    plt = pyplot()
    digests = []
    for i in range(2):
        fig, ax = plt.subplots()
        ax.plot([0, 1, 2], [1, 3, 2], marker="o")
        ax.set_ylim(0, 2.5)  # a clip path
        paths = save_figure(fig, tmp_path / f"f{i}.png", svg=True)
        digests.append([open(p, "rb").read() for p in paths])
    assert digests[0][1] == digests[1][1] and b"<dc:date>" not in digests[0][1]
