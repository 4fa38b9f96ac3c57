"""collinearity: identical batches are perfectly collinear, sign-flipping batches are not."""
import pytest
import torch
from torch import nn

from adaptive.diagnostics import collinearity
from adaptive.diagnostics.collinearity import rebatch

torch.set_num_threads(1)


def sum_loss(out, y):
    return out.sum()


def test_identical_batches_are_collinear(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3))
    x, y = torch.randn(10, 6), torch.randint(0, 3, (10,))
    res = collinearity(model, [(x, y)] * 7)
    assert res.batches == 7 and set(res.cosine) == {"0.weight", "2.weight"}
    for name in res.cosine:
        assert torch.allclose(res.cosine[name], torch.ones_like(res.cosine[name]), atol=1e-6)
        assert torch.all(res.sign_agreement[name] == 1)
        assert torch.allclose(res.grad_var[name], torch.zeros_like(res.grad_var[name]), atol=1e-12)
    # the full gradient squared is exactly the one batch gradient squared
    g = torch.autograd.grad(nn.functional.cross_entropy(model(x), y), [model[2].weight])[0]
    assert torch.allclose(res.full_grad_sq["2.weight"], (g * g).reshape(-1), rtol=1e-5)
    assert res.fraction_above([0.5])[-1][">0.5"] == 1.0
    res.plot(tmp_path / "scatter.png")
    res.plot_summary(tmp_path / "summary.png")
    assert (tmp_path / "scatter.png").stat().st_size > 0 and (tmp_path / "summary.png").exists()


def test_sign_flipping_batches_are_not_collinear():
    # loss = sum(W x): batch gradient = sum of x; batches alternate x and -x (+ small noise)
    torch.manual_seed(0)
    model = nn.Linear(5, 2, bias=False)
    base = torch.randn(4, 5)
    loader = [((-1) ** b * base + 0.01 * torch.randn(4, 5), torch.zeros(4, dtype=torch.long)) for b in range(20)]
    res = collinearity(model, loader, loss_fn=sum_loss)
    c = res.cosine["weight"]
    assert float(c.max()) < 0.05
    a = res.sign_agreement["weight"]
    assert torch.all((a >= 0.45) & (a <= 0.55))  # half the batches agree with the (tiny) mean


def test_partial_agreement_matches_closed_form():
    # batch gradients 3, 3, 3, -1 for every weight: mean 2, rms sqrt(7), sign agreement 3/4
    model = nn.Linear(1, 1, bias=False)
    loader = [(torch.tensor([[v]]), torch.zeros(1, dtype=torch.long)) for v in (3.0, 3.0, 3.0, -1.0)]
    res = collinearity(model, loader, loss_fn=sum_loss)
    assert float(res.cosine["weight"]) == pytest.approx(2 / 7 ** 0.5)
    assert float(res.sign_agreement["weight"]) == pytest.approx(0.75)
    assert float(res.full_grad_sq["weight"]) == pytest.approx(4.0)


def test_sign_agreement_where_the_full_gradient_is_exactly_zero():
    """G exactly 0 has no sign: the agreement is the mean of those with + and -, half the batches whose
    gradient is not 0; a batch gradient of 0 never agrees, and a weight never reached reads 0."""
    # loss = sum(W x): each weight's batch gradient is its input. Weight 0: 3, -1, -1, -1, 0 (G = 0;
    # + would give 1/5, - 3/5, their mean 2/5); weight 1: 1, 2, 0, 1, 0 (G > 0, 3 agree); weight 2: always 0
    xs = torch.tensor([[3.0, 1, 0], [-1, 2, 0], [-1, 0, 0], [-1, 1, 0], [0, 0, 0]])
    model = nn.Linear(3, 1, bias=False)
    res = collinearity(model, [(x[None], torch.zeros(1, dtype=torch.long)) for x in xs], loss_fn=sum_loss)
    assert res.full_grad_sq["weight"].tolist() == pytest.approx([0.0, 0.64, 0.0])
    assert res.sign_agreement["weight"].tolist() == pytest.approx([0.5 * 4 / 5, 3 / 5, 0.0])
    assert res.cosine["weight"].tolist()[0] == 0.0  # (no mean to agree with: the cosine reads 0 there)


def test_rebatch_cuts_exact_sizes_and_measures_at_that_size():
    data = [(torch.arange(i, i + 5).float().unsqueeze(1), torch.zeros(5, dtype=torch.long)) for i in range(0, 15, 5)]
    sizes = [len(x) for x, _ in rebatch(data, 4)]
    assert sizes == [4, 4, 4]
    model = nn.Linear(1, 1, bias=False)
    res = collinearity(model, data, batch_size=2, loss_fn=sum_loss)
    assert res.batches == 7 and res.batch_size == 2


def test_asking_for_more_batches_than_the_loader_has_warns_and_reports_the_true_count():
    model = nn.Linear(3, 2)
    loader = [(torch.randn(4, 3), torch.zeros(4, dtype=torch.long))] * 3
    with pytest.warns(UserWarning, match="asked for 10 batches but the loader ran out after 3"):
        res = collinearity(model, loader, batches=10)
    assert res.batches == 3
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # one full pass (batches=None) or a request it meets: silent
        assert collinearity(model, loader).batches == 3
        assert collinearity(model, loader, batches=2).batches == 2


class _Two(nn.Module):
    """A model of two inputs, taking them as one tuple."""

    def __init__(self):
        super().__init__()
        self.fa, self.fb, self.head = nn.Linear(6, 4), nn.Linear(4, 4), nn.Linear(8, 3)

    def forward(self, x):
        return self.head(torch.cat([self.fa(x[0]), self.fb(x[1])], 1))


def test_batches_that_cannot_be_recut_are_refused_naming_what_is_accepted():
    """Dict batches and tuple inputs were unpacked as (x, y) and counted by len(): 'the loader holds
    only 12 samples, fewer than one batch'."""
    torch.manual_seed(0)
    a, b, y = torch.randn(3, 8, 6), torch.randn(3, 8, 4), torch.randint(0, 3, (3, 8))
    dicts = [{"x1": a[i], "x2": b[i], "label": y[i]} for i in range(3)]
    with pytest.raises(TypeError, match=r"batch_size=4\) re-cuts .*\(inputs tensor, targets tensor, \.\.\.\); "
                                        r"this loader yielded a dict with keys \['label', 'x1', 'x2'\]: .*collate_fn"):
        collinearity(_Two(), dicts, batch_size=4)
    pairs = [((a[i], b[i]), y[i]) for i in range(3)]
    with pytest.raises(TypeError, match=r"yielded a tuple of \(a tuple, tensor\): pass batch_size=None.*collate_fn"):
        collinearity(_Two(), pairs, batch_size=4)
    with pytest.raises(TypeError, match=r"must yield \(inputs, targets\) pairs; it yielded a dict.*collate_fn"):
        collinearity(_Two(), dicts)
    # the loader's own batches: inputs as a tuple of tensors go to the model as they are
    res = collinearity(_Two(), pairs)
    assert res.batches == 3 and set(res.cosine) == {"fa.weight", "fb.weight", "head.weight"}
    # (inputs tensor, targets tensor, extra) is still re-cut
    triples = [(torch.randn(8, 6), torch.randint(0, 3, (8,)), torch.rand(8)) for _ in range(3)]
    assert [len(x) for x, _ in rebatch(triples, 6)] == [6, 6, 6, 6]


@pytest.mark.parametrize("frozen", ["0.weight", "all"])
def test_frozen_layers_are_measured_and_keep_their_flags(frozen):
    """A frozen layer (requires_grad=False) made torch.autograd.grad raise 'One of the
    differentiated Tensors does not require grad' (every parameter frozen: 'element 0 of tensors
    does not require grad')."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3))
    data = [(torch.randn(10, 6), torch.randint(0, 3, (10,))) for _ in range(3)]
    ref = collinearity(model, data)
    names = [n for n, _ in model.named_parameters()] if frozen == "all" else [frozen]
    for n, p in model.named_parameters():
        p.requires_grad_(n not in names)
    res = collinearity(model, data)
    for n in ref.cosine:
        assert torch.equal(res.cosine[n], ref.cosine[n]) and torch.equal(res.full_grad_sq[n], ref.full_grad_sq[n])
    assert {n for n, p in model.named_parameters() if not p.requires_grad} == set(names)
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("mode", [torch.no_grad, torch.inference_mode])
def test_called_under_no_grad_or_inference_mode_it_still_measures(mode):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3))
    data = [(torch.randn(10, 6), torch.randint(0, 3, (10,))) for _ in range(3)]
    ref = collinearity(model, data)
    with mode():
        res = collinearity(model, data)
    assert all(torch.equal(res.cosine[n], ref.cosine[n]) for n in ref.cosine)


def test_train_mode_leaves_a_reassigned_buffer_as_it_was():
    """kept_buffers restored the old tensor objects only; a module that reassigns its running mean
    (self.mean = 0.9 * self.mean + ...) kept the value the measurement left."""
    from test_diagnostics_gradient_depth import RunningNorm

    torch.manual_seed(0)
    model = nn.Sequential(RunningNorm(6), nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
    data = [(torch.randn(16, 6) + 3, torch.randint(0, 3, (16,))) for _ in range(4)]
    mean = model[0].mean
    collinearity(model, data, train_mode=True)
    assert model[0].mean is mean and torch.equal(mean, torch.zeros(6)) and int(model[0].seen) == 0


def test_a_non_finite_gradient_is_refused_naming_the_batch():
    """A NaN gradient made every cosine of the layer 0 ('the batches cancel') and its sign agreement
    0, without a word; now a ValueError names the batch and the layer."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3))
    x, y = torch.randn(6, 4), torch.randint(0, 3, (6,))
    bad = x.clone()
    bad[2, 0] = float("nan")
    with pytest.raises(ValueError, match=r"gradient of '0.weight' at batch 3 has .*NaN or inf"):
        collinearity(model, [(x, y), (x, y), (bad, y)])


def test_plot_with_no_weight_off_zero_gradient_says_so(tmp_path):
    """Every weight with G = 0 (all-zero inputs: no gradient reaches the layer): plot() raised
    matplotlib's 'Invalid vmin or vmax' from the colorbar of an empty hexbin; now the figure is
    written and says there is nothing to draw."""
    from adaptive.diagnostics.table import pyplot

    model = nn.Sequential(nn.Linear(4, 2, bias=False))
    res = collinearity(model, [(torch.zeros(3, 4), torch.zeros(3, dtype=torch.long))] * 3)
    assert float(torch.cat(list(res.full_grad_sq.values())).abs().max()) == 0
    plt = pyplot()
    closed, texts = plt.close, []
    plt.close = lambda fig=None: (texts.extend(t.get_text() for t in fig.axes[0].texts), closed(fig))
    try:
        paths = res.plot(tmp_path / "c.png")
    finally:
        plt.close = closed
    assert (tmp_path / "c.png").is_file() and paths == [str(tmp_path / "c.png")]
    assert any("every weight has G = 0" in t for t in texts)


class _TwoHeads(nn.Module):
    """``b`` is never used by forward."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(4, 3), nn.Linear(4, 3)

    def forward(self, x):
        return self.a(x)


def test_a_layer_the_loss_never_reaches_is_left_out_with_a_warning():
    """An unused head got cosine 0 and sign agreement 0 in the table ('its batches cancel'); now it
    is left out, with a warning naming it; with nothing reached, a ValueError."""
    torch.manual_seed(0)
    model = _TwoHeads()
    data = [(torch.randn(3, 4), torch.randint(0, 3, (3,))) for _ in range(3)]
    with pytest.warns(UserWarning, match=r"left out .*b\.weight"):
        res = collinearity(model, data)
    assert set(res.cosine) == {"a.weight"} and res.table["layer"] == ["a.weight"]
    with pytest.raises(ValueError, match="takes part in the loss"):
        collinearity(model, data, include="b")


def test_the_layer_table_gives_the_share_of_weights_no_gradient_reached():
    """A weight of a dead ReLU gets a gradient of exactly 0 in every batch: its cosine and sign
    agreement read 0, as if its batches cancelled, and pull the layer's median down (LeNet-5 after
    50 steps on MNIST: fc1's median cosine 0.028, most of its weights never reached). The table
    now says how many of them there are."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3))
    with torch.no_grad():
        model[0].bias[:2] = -100.0  # units 0 and 1 never fire: their 2 x 4 input weights and 3 x 2 outputs get 0
    loader = [(torch.randn(8, 4), torch.randint(0, 3, (8,))) for _ in range(5)]
    rows = {r["layer"]: r for r in collinearity(model, loader).table}
    assert rows["0.weight"]["no_gradient"] == pytest.approx(8 / 24)
    assert rows["2.weight"]["no_gradient"] == pytest.approx(6 / 18)


def test_batchnorm_in_train_mode_with_batches_of_one_sample_names_the_fix():
    """batch_size=1 re-cuts into one-sample batches, on which a train-mode BatchNorm failed with
    PyTorch's bare 'Expected more than 1 value per channel when training'."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3), nn.ReLU(), nn.Linear(3, 2))
    data = [(torch.randn(4, 4), torch.randint(0, 2, (4,)))]
    with pytest.raises(ValueError, match=r"collinearity: a BatchNorm .* batch of one sample.*\(batch_size=\).*"
                                         r"train_mode=False"):
        collinearity(net, data, batch_size=1)
    assert collinearity(net, data, batch_size=1, train_mode=False).batches == 4


def test_the_layer_tables_fraction_above_a_half_counts_what_fraction_above_counts():
    """The layer table's frac_cos>0.5 was counted on float64 cosines and fraction_above() (and the
    summary figure) on the float32 ones the result holds, so a cosine 5e-10 above 0.5 (a weight whose
    gradient came from one batch of 4 and a rounding error of another: LeNet-5 on MNIST, 4 held-out
    batches, read 0.3128 in one table and 0.3124 in the other) counted in one and not the other."""
    model = nn.Linear(1, 2, bias=False)
    xs = [1.0, 1e-9, 0.0, 0.0]  # out.sum(): each batch's gradient is its x, so G/rms = 0.5 + 5e-10
    res = collinearity(model, [(torch.full((1, 1), x), torch.zeros(1)) for x in xs], loss_fn=sum_loss)
    held = float((res.cosine["weight"] > 0.5).double().mean())
    assert res.table["frac_cos>0.5"][0] == held == res.fraction_above([0.5])[0][">0.5"]


def test_fraction_above_and_the_layer_table_agree_to_the_last_digit():
    """fraction_above() took a float32 mean and the layer table a float64 one: one weight in three above
    0.5 read 0.3333333432674408 in collinearity_fraction_above.csv and 0.3333333333333333 in
    collinearity_layers.csv."""
    model = nn.Linear(1, 3, bias=False)
    weights = [torch.tensor([[1.0, 1.0, 1.0]]), torch.tensor([[1.0, -1.0, -1.0]])]  # weight 0 agrees, 1 and 2 cancel
    res = collinearity(model, [(torch.ones(1, 1), w) for w in weights], loss_fn=lambda out, w: (out * w).sum())
    assert res.table["frac_cos>0.5"][0] == res.fraction_above([0.5])[0][">0.5"] == 1 / 3


def test_the_result_and_its_figures_say_how_many_examples_were_measured(monkeypatch):
    """The loader's own batches (no batch_size): 4 of 64 and one of 45 are 301 examples, which the
    result records and both figures' titles state (they said only "5 batches")."""
    import importlib

    module = importlib.import_module("adaptive.diagnostics.collinearity")  # the package's name is the function

    titles = []
    monkeypatch.setattr(module, "save_figure", lambda fig, path, svg=False: titles.append(fig.axes[0].get_title()) or [path])
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3))
    data = [(torch.randn(n, 4), torch.randint(0, 3, (n,))) for n in (64, 64, 64, 64, 45)]
    res = collinearity(model, data)
    assert (res.batches, res.batch_size, res.examples) == (5, None, 301)
    assert res.describe_batches() == "5 batches, 301 examples"
    res.plot("a.png", title="net on the held-out part of TRAIN")
    res.plot_summary("b.png")
    assert all("(5 batches, 301 examples" in t for t in titles), titles
    recut = collinearity(model, data, batch_size=100)  # 301 re-cut into 3 of 100, the last one dropped
    assert recut.examples == 300 and recut.describe_batches() == "3 batches of 100, 300 examples"


def test_a_layer_run_under_no_grad_is_left_out_naming_that_cause():
    # found: a backbone the forward runs under torch.no_grad() was left out as taking "no part in the loss" (the
    # forward's own reason, the one to change, went unsaid: it reads as an unused layer)
    class Frozen(nn.Module):
        def __init__(self):
            super().__init__()
            self.backbone, self.head = nn.Linear(4, 6), nn.Linear(6, 3)

        def forward(self, x):
            with torch.no_grad():
                f = torch.relu(self.backbone(x))
            return self.head(f)

    torch.manual_seed(0)
    data = [(torch.randn(5, 4), torch.randint(0, 3, (5,))) for _ in range(3)]
    with pytest.warns(UserWarning, match=r"left out \(no gradient to measure\): backbone.weight \(the forward does not "
                                         r"use them, or runs them under torch.no_grad\(\) or detaches their output"):
        col = collinearity(Frozen(), data)
    assert list(col.cosine) == ["head.weight"]


def test_the_noise_line_legend_of_the_scatter_lies_off_its_cells(monkeypatch):
    """The 1/sqrt(batches) legend sat inside the hexbin panel, upper left, where cells of weights with a small G and a
    high collinearity are drawn: it now lies under the axes, off them, and on the saved canvas."""
    import importlib

    import matplotlib.pyplot as plt

    module = importlib.import_module("adaptive.diagnostics.collinearity")
    figs = []
    monkeypatch.setattr(module, "save_figure", lambda fig, path, svg=False: figs.append(fig) or [path])
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3))
    res = collinearity(model, [(torch.randn(8, 4), torch.randint(0, 3, (8,))) for _ in range(4)])
    res.plot("a.png")
    fig = figs[0]
    try:
        fig.canvas.draw()
        r = fig.canvas.get_renderer()
        legend = fig.axes[0].get_legend()
        assert [t.get_text() for t in legend.get_texts()] == ["1/sqrt(batches): one batch alone, or noise"]
        assert not any(legend.get_window_extent(r).overlaps(ax.get_window_extent(r)) for ax in fig.axes)  # nor the colorbar
    finally:
        plt.close(fig)


def test_a_layer_of_an_even_number_of_weights_has_the_mean_of_its_two_middle_cosines_as_median():
    """median_cosine of six weights is the mean of the third and fourth cosines (Tensor.median gives the lower one;
    a median that took it passed every test)."""
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(2, 3))
    data = [(torch.randn(8, 2), torch.randint(0, 3, (8,))) for _ in range(4)]
    c = collinearity(m, data, batches=4, train_mode=False)
    cos = sorted(c.cosine["0.weight"].flatten().tolist())
    assert len(cos) == 6 and cos[2] != cos[3]
    (row,) = c.table
    assert row["median_cosine"] == pytest.approx((cos[2] + cos[3]) / 2, abs=1e-6)
