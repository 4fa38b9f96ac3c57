"""gradient_by_depth and BandGradientScaler on cases with known answers."""
import ast
import contextlib
import math
import re
import warnings

import pytest
import torch
from torch import nn

from adaptive.diagnostics import BandGradientScaler, gradient_by_depth, weight_depths
from _tied_models import TiedHead

torch.set_num_threads(1)


def sum_loss(out, y):
    return out.sum()


def constant_loader(x, batches):
    return [(x, torch.zeros(len(x), dtype=torch.long))] * batches


def test_constructed_gradients_give_known_band_medians(tmp_path):
    # loss = sum(W x) with batch size 1: dL/dW[o, j] = x_j exactly, for every output o.
    # band 0 reads features 0..3 (values 1..4: median 2.5, quartiles 1.75/3.25 over 4 weights x 2
    # outputs = values {1,1,2,2,3,3,4,4}), band 5 reads features 4..5 (1e-6 each).
    layer = nn.Linear(6, 2, bias=False)
    x = torch.tensor([[1.0, 2.0, 3.0, 4.0, 1e-6, 1e-6]])
    res = gradient_by_depth(layer, constant_loader(x, 5), layer="", batches=5, loss_fn=sum_loss,
                            depths=torch.tensor([0, 0, 0, 0, 5, 5]))
    rows = {r["depth"]: r for r in res.table}
    assert list(rows) == [0, 5]
    assert rows[0]["weights"] == 8 and rows[5]["weights"] == 4 and rows[0]["values"] == 40
    tol = 0.012  # the histogram's resolution (1/200 decade)
    assert rows[5]["median"] == pytest.approx(1e-6, rel=tol)
    assert 2.0 * (1 - tol) <= rows[0]["median"] <= 3.0 * (1 + tol)  # between the two middle values
    assert 1.0 * (1 - tol) <= rows[0]["q1"] <= 2.0 * (1 + tol)
    assert 3.0 * (1 - tol) <= rows[0]["q3"] <= 4.0 * (1 + tol)
    assert rows[0]["mean"] == pytest.approx(2.5)
    assert res.ratio() == pytest.approx(rows[0]["median"] / rows[5]["median"])
    # per-weight mean |grad| is exact
    assert torch.allclose(res.per_weight.view(2, 6), x.expand(2, 6))
    res.plot(tmp_path / "bands.png", svg=True)
    assert all((tmp_path / p).exists() for p in ["bands.png", "bands.svg"])


class TwoBandNet(nn.Module):
    """The classifier reads [h, 1000 h]: every band-1 gradient is exactly 1000x its band-0 twin."""

    def __init__(self):
        super().__init__()
        self.hidden = nn.Linear(5, 7)
        self.classifier = nn.Linear(14, 3)

    def forward(self, x):
        h = torch.tanh(self.hidden(x))
        return self.classifier(torch.cat([h, 1000 * h], 1))


class TwoBand(TwoBandNet):
    """The same net declaring the halves as bands 0 and 1 (as if they came from different depths)."""

    def input_depths(self, layer):
        assert layer == "classifier"
        return torch.tensor([0] * 7 + [1] * 7)


def test_two_bands_of_known_scale_use_model_depths():
    torch.manual_seed(0)
    model = TwoBand()
    loader = [(torch.randn(16, 5), torch.randint(0, 3, (16,))) for _ in range(6)]
    before = [p.detach().clone() for p in model.parameters()]
    res = gradient_by_depth(model, loader, layer="classifier", batches=None)
    m = res.medians()
    assert res.depths == [0, 1] and res.batches == 6
    assert m[1] / m[0] == pytest.approx(1000, rel=0.03)
    assert res.ratio() == pytest.approx(1e-3, rel=0.03)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert all(p.grad is None for p in model.parameters())


def test_missing_depths_say_how_to_pass_them(monkeypatch):
    import graphs

    def untraceable(*a, **k):
        raise RuntimeError("cannot trace")

    monkeypatch.setattr(graphs, "build", untraceable)
    with pytest.raises(ValueError, match="depths="):
        gradient_by_depth(nn.Sequential(nn.Linear(4, 2)), [(torch.randn(2, 4), torch.tensor([0, 1]))], layer="0")
    with pytest.raises(ValueError, match="4 input units"):
        weight_depths((2, 4), torch.tensor([0, 1, 2]))


def test_weight_depths_for_grouped_conv_and_flattened_maps():
    d = weight_depths((4, 2, 3, 3), torch.tensor([0, 1, 2, 3]), groups=2)
    assert d[0, :, 0, 0].tolist() == [0, 1] and d[3, :, 1, 1].tolist() == [2, 3]
    d = weight_depths((1, 6), torch.tensor([0, 1]))  # 2 channels x 3 positions, flattened
    assert d[0].tolist() == [0, 0, 0, 1, 1, 1]


def test_band_scaler_equalises_band_magnitudes():
    torch.manual_seed(0)
    model = TwoBand()
    scaler = BandGradientScaler(model, layers=["classifier"], momentum=0.0)
    x, y = torch.randn(16, 5), torch.randint(0, 3, (16,))
    nn.functional.cross_entropy(model(x), y).backward()
    g = model.classifier.weight.grad.abs()
    lo, hi = g[:, :7], g[:, 7:]
    # after scaling both bands have the same geometric-mean magnitude
    assert math.isclose(float(lo.log().mean()), float(hi.log().mean()), abs_tol=1e-4)
    s = scaler.scales()["classifier"]
    assert s[0] / s[1] == pytest.approx(1000, rel=1e-3)
    scaler.remove()
    model.zero_grad()
    nn.functional.cross_entropy(model(x), y).backward()
    g = model.classifier.weight.grad.abs()
    assert float(g[:, 7:].mean() / g[:, :7].mean()) == pytest.approx(1000, rel=1e-3)


def test_traced_depths_match_the_models_own_bookkeeping():
    from adaptive.diagnostics.gradient_depth import traced_depths
    from adaptive.models import build_model

    model = build_model("densecat", num_classes=3, in_shape=(1, 4, 4), depth=3, width=2, kind="cnn")
    x = torch.randn(2, 1, 4, 4)
    for layer in ("classifier", "layers.2"):
        assert torch.equal(traced_depths(model, layer, x), model.input_depths(layer))


def test_gradient_by_depth_traces_models_without_input_depths():
    torch.manual_seed(0)
    with pytest.warns(UserWarning, match="one band"):
        res = gradient_by_depth(TwoBandNet(), [(torch.randn(8, 5), torch.randint(0, 3, (8,)))], layer="classifier", batches=1)
    assert res.depths == [1]  # traced: both halves read the hidden layer's output, one band at depth 1


class UpNet(nn.Module):
    """A U-Net's up path: the transposed convolution is a layer, so ``dec`` reads depths 3 and 1."""

    def __init__(self):
        super().__init__()
        self.enc = nn.Conv2d(2, 4, 3, padding=1)
        self.down = nn.Conv2d(4, 4, 3, padding=1, stride=2)
        self.up = nn.ConvTranspose2d(4, 6, 2, stride=2)
        self.dec = nn.Conv2d(6 + 4, 3, 1)

    def forward(self, x):
        e = torch.relu(self.enc(x))
        return self.dec(torch.cat([self.up(torch.relu(self.down(e))), e], 1)).mean((2, 3))


def test_traced_depths_count_a_transposed_conv_as_a_layer():
    from adaptive.diagnostics.gradient_depth import traced_depths

    torch.manual_seed(0)
    x = torch.randn(2, 2, 8, 8)
    assert traced_depths(UpNet(), "dec", x).tolist() == [3] * 6 + [1] * 4
    res = gradient_by_depth(UpNet(), [(x, torch.tensor([0, 1]))], layer="dec", batches=1)
    assert res.depths == [1, 3] and res.table["weights"] == [12, 18]


class EmbedNet(nn.Module):
    """Token and positional tables, a hidden layer, and a head reading the hidden layer and both tables."""

    def __init__(self, vocab=20, length=8, width=4):
        super().__init__()
        self.tok, self.pos = nn.Embedding(vocab, width), nn.Embedding(length, width)
        self.hidden, self.head = nn.Linear(width, width), nn.Linear(3 * width, vocab)

    def forward(self, idx):
        t, p = self.tok(idx), self.pos(torch.arange(idx.shape[1], device=idx.device)).expand(idx.shape[0], -1, -1)
        return self.head(torch.cat([torch.relu(self.hidden(t + p)), t, p], -1))


def test_an_embeddings_lookup_is_at_the_depth_of_the_input_it_looks_up():
    """Depth counts the layers with units and synapses a signal passed (Linear, Conv, transposed Conv,
    recurrent and attention projections); an embedding has neither (its columns are input nodes of the
    graph) and sums nothing: each value is one table entry picked by one token. Its lookup is at depth 0,
    and a learned positional table, which reads no input, too (a source, not an unreached -1)."""
    from adaptive.diagnostics.gradient_depth import traced_depths

    idx = torch.randint(0, 20, (2, 8))
    assert traced_depths(EmbedNet(), "hidden", idx).tolist() == [0] * 4
    assert traced_depths(EmbedNet(), "head", idx).tolist() == [1] * 4 + [0] * 8


@pytest.mark.parametrize("groups", [1, 2])
def test_weight_depths_of_a_transposed_conv_follow_its_input_axis(groups):
    # nn.ConvTranspose2d's weight is (in, out/groups, kH, kW): input channel i is dim 0, whatever the groups
    torch.manual_seed(0)
    up = nn.ConvTranspose2d(8, 4, 2, stride=2, groups=groups)
    model = nn.Sequential(up, nn.Conv2d(4, 2, 1))
    x, y = torch.randn(2, 8, 3, 3), torch.randint(0, 2, (2, 6, 6))
    depths = torch.tensor([1] * 4 + [2] * 4)
    res = gradient_by_depth(model, [(x, y)], layer="0", depths=depths, batches=1)
    g = torch.autograd.grad(nn.functional.cross_entropy(model(x), y), [up.weight])[0].abs()
    assert res.table["weights"] == [64 // groups, 64 // groups]
    assert res.table["mean"] == pytest.approx([float(g[:4].mean()), float(g[4:].mean())])
    d = torch.arange(8)
    wd = weight_depths(up.weight.shape, d, groups, transposed=True)
    assert torch.equal(wd, d.view(8, 1, 1, 1).expand(up.weight.shape))
    with pytest.raises(ValueError, match="8 input units"):
        weight_depths(up.weight.shape, torch.arange(4), groups, transposed=True)


def test_depths_of_the_wrong_length_for_a_conv_are_refused():
    model = nn.Sequential(nn.Conv2d(8, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    loader = [(torch.randn(2, 8, 5, 5), torch.tensor([0, 3]))]
    with pytest.raises(ValueError, match="8 input units.*give 8, one per input channel"):
        gradient_by_depth(model, loader, layer="0", depths=[0, 1], batches=1)  # 2 divides 8: no stretch for a conv
    assert weight_depths((1, 6), torch.tensor([0, 1]))[0].tolist() == [0, 0, 0, 1, 1, 1]  # a Linear's flattened map


def test_an_untraceable_model_is_refused_not_chained_in_module_order():
    class Dynamic(nn.Module):  # fx cannot trace data-dependent control flow
        def __init__(self):
            super().__init__()
            self.a, self.b, self.classifier = nn.Linear(4, 3), nn.Linear(3, 3), nn.Linear(6, 2)

        def forward(self, x):
            if x.sum() > 0:
                x = -x
            h = torch.relu(self.a(x))
            return self.classifier(torch.cat([h, torch.relu(self.b(h))], 1))

    with pytest.warns(UserWarning, match="module order"), \
            pytest.raises(ValueError, match=r"could not trace Dynamic at .* in forward \(if x.sum\(\) > 0:.*module-order "
                                            r"fallback has no concatenation.*pass depths="):
        gradient_by_depth(Dynamic(), [(torch.randn(2, 4), torch.tensor([0, 1]))], layer="classifier", batches=1)


class Renorm(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = nn.Linear(4, 3), nn.Linear(3, 3), nn.Linear(3, 2)

    def forward(self, x):
        return torch.renorm(self.c(self.b(torch.renorm(self.a(x), 2, 1, 1.0))), 2, 1, 1.0)


def test_traced_depths_refuse_an_op_the_tracer_cannot_follow():
    from adaptive.diagnostics.gradient_depth import traced_depths

    x = torch.randn(2, 4)
    with pytest.warns(UserWarning, match="renorm"):
        assert traced_depths(Renorm(), "a", x).tolist() == [0] * 4  # the unknown ops come after it
    with pytest.warns(UserWarning, match="renorm"), \
            pytest.raises(ValueError, match=r"'b'.*1 op\(s\) the tracer cannot follow \('renorm'.*register_op.*pass depths="):
        gradient_by_depth(Renorm(), [(x, torch.tensor([0, 1]))], layer="b", batches=1, loss_fn=sum_loss)



class Logsumexp(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(4, 6), nn.Linear(3, 2)

    def forward(self, x):
        return self.b(torch.special.logsumexp(self.a(x).reshape(-1, 3, 2), 2))


def test_the_unknown_op_error_defers_to_the_category_its_warning_suggests():
    """The error told to register every unknown op 'if it acts on each channel alone' (pointwise),
    while the warning suggested the category that fits the op's shapes ("reduce" for a logsumexp)."""
    from adaptive.diagnostics.gradient_depth import traced_depths

    with pytest.warns(UserWarning, match=r'register_op\(torch\._C\._special\.special_logsumexp, "reduce"\)'), \
            pytest.raises(ValueError, match=r"'b'.*cannot follow \('special_logsumexp'.*follow each op's warning: register "
                                            r"it with graphs.register_op in the category the warning suggests") as e:
        traced_depths(Logsumexp(), "b", torch.randn(2, 4))
    assert "each channel alone" not in str(e.value)
    assert "where it says no category fits, write the op with ones the tracer knows" in str(e.value)  # (cdist, say)


class AuxHead(nn.Module):
    """An auxiliary head reads fc1's output through an op the tracer cannot follow; fc2 and out never do."""

    def __init__(self):
        super().__init__()
        self.fc1, self.aux, self.fc2, self.out = nn.Linear(6, 8), nn.Linear(8, 3), nn.Linear(8, 8), nn.Linear(8, 3)

    def forward(self, x):
        h = torch.relu(self.fc1(x))
        a = self.aux(torch.renorm(h, 2, 1, 1.0))
        return self.out(torch.relu(self.fc2(h))) + 0 * a


def test_traced_depths_ignore_an_unknown_op_that_does_not_feed_the_layer():
    """An unknown op recorded earlier in execution order refused every later layer, even one its
    output never reaches; only an op on the way into the layer (its ancestor in the graph) is refused."""
    from adaptive.diagnostics.gradient_depth import traced_depths

    x = torch.randn(2, 6)
    with pytest.warns(UserWarning, match="renorm"):
        assert traced_depths(AuxHead(), "fc2", x).tolist() == [1] * 8
    with pytest.warns(UserWarning, match="renorm"):
        assert traced_depths(AuxHead(), "out", x).tolist() == [2] * 8
    with pytest.warns(UserWarning, match="renorm"), \
            pytest.raises(ValueError, match=r"'aux'.*1 op\(s\) the tracer cannot follow \('renorm'"):
        traced_depths(AuxHead(), "aux", x)
    with pytest.warns(UserWarning) as caught:  # one context: pytest < 8 passes nothing from an inner one outwards
        res = gradient_by_depth(AuxHead(), [(x, torch.tensor([0, 1]))], layer="out", batches=1)
    said = [str(w.message) for w in caught]
    assert any("renorm" in m for m in said) and any("one band" in m for m in said), said
    assert res.depths == [2]

class PaddedCat(nn.Module):
    """``b`` reads the raw input (depth 0), ``a``'s output (depth 1) and two zero-padded channels (-1)."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 3, 3, padding=1), nn.Conv2d(3 + 3 + 2, 4, 1)

    def forward(self, x):
        a = torch.relu(self.a(x))
        return self.b(torch.cat([x, nn.functional.pad(a, (0, 0, 0, 0, 0, 2))], 1)).mean((2, 3))


def test_ratio_compares_signal_bands_not_the_constant_band(tmp_path):
    torch.manual_seed(0)
    res = gradient_by_depth(PaddedCat(), [(torch.randn(4, 3, 8, 8), torch.randint(0, 4, (4,)))], layer="b", batches=1)
    rows = {r["depth"]: r for r in res.table}
    assert res.depths == [-1, 0, 1] and rows[-1]["zero_fraction"] == 1.0
    assert res.ratio() == pytest.approx(rows[0]["median"] / rows[1]["median"]) and res.ratio() > 0


def test_diagnostics_neither_scale_nor_advance_an_attached_band_scaler():
    from adaptive.diagnostics import collinearity

    torch.manual_seed(0)
    model = TwoBand()
    loader = [(torch.randn(8, 5), torch.randint(0, 3, (8,))) for _ in range(3)]
    raw = gradient_by_depth(model, loader, layer="classifier", batches=3)
    raw_col = collinearity(model, loader)
    scaler = BandGradientScaler(model, layers=["classifier"], momentum=0.9)
    for x, y in loader[:2]:
        nn.functional.cross_entropy(model(x), y).backward()
    model.zero_grad()
    state = {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in scaler.state["classifier"].items()}
    res = gradient_by_depth(model, loader, layer="classifier", batches=3)
    col = collinearity(model, loader)
    assert res.medians() == raw.medians() and torch.equal(res.per_weight, raw.per_weight)
    assert torch.equal(col.full_grad_sq["classifier.weight"], raw_col.full_grad_sq["classifier.weight"])
    for k, v in scaler.state["classifier"].items():
        assert torch.equal(v, state[k]) if isinstance(v, torch.Tensor) else v == state[k]
    x, y = loader[0]
    nn.functional.cross_entropy(model(x), y).backward()  # training after a diagnostic is scaled again
    assert not torch.equal(scaler.state["classifier"]["log_typical"], state["log_typical"])
    g = model.classifier.weight.grad.abs()
    assert float(g[:, 7:].log().mean() - g[:, :7].log().mean()) == pytest.approx(0, abs=1e-3)



@pytest.mark.parametrize("diagnostic", ["gradient_by_depth", "collinearity"])
def test_a_diagnostic_on_another_model_in_another_thread_leaves_a_scaler_working(diagnostic):
    """Suspension was process-wide: a diagnostic measuring model B in a side thread turned off the
    scaler training model A in the main thread (no scaling, no state). It now holds only B's weights."""
    import threading

    from adaptive.diagnostics import collinearity

    torch.manual_seed(0)
    a, b = TwoBand(), TwoBand()
    scaler = BandGradientScaler(a, layers=["classifier"], momentum=0.0)
    inside, done, failed = threading.Event(), threading.Event(), []

    def held_loss(out, y):  # called inside the diagnostic's suspension: hold it there
        inside.set()
        done.wait(10)
        return nn.functional.cross_entropy(out, y)

    def side():
        try:
            loader = [(torch.randn(8, 5), torch.randint(0, 3, (8,)))]
            if diagnostic == "collinearity":
                collinearity(b, loader, loss_fn=held_loss)
            else:
                gradient_by_depth(b, loader, layer="classifier", batches=1, loss_fn=held_loss)
        except Exception as e:  # pragma: no cover - reported below
            failed.append(e)

    t = threading.Thread(target=side)
    t.start()
    try:
        assert inside.wait(10)
        x, y = torch.randn(8, 5), torch.randint(0, 3, (8,))
        nn.functional.cross_entropy(a(x), y).backward()
    finally:
        done.set()
        t.join()
    assert not failed
    assert scaler.scales()["classifier"], "the scaler on model A was suspended by a diagnostic on model B"
    g = a.classifier.weight.grad.abs()  # scaled: both bands at one typical size (raw: 1000x apart)
    assert float(g[:, 7:].log().mean() - g[:, :7].log().mean()) == pytest.approx(0, abs=1e-3)

def test_zero_notes_are_honest_and_never_under_the_legend(monkeypatch):
    """A band with 0.06% exact zeros read '0% zero', and legend(loc='best') could cover a note."""
    import importlib

    from adaptive.diagnostics.table import Table

    GD = importlib.import_module("adaptive.diagnostics.gradient_depth")
    fractions = [0.0, 0.000625, 0.0075, 0.021875, 0.995, 1.0]
    rows = [dict(depth=d, weights=50, values=500, median=1e-3, q1=5e-4, q3=2e-3, mean=1e-3, zero_fraction=z)
            for d, z in enumerate(fractions)]
    g = torch.Generator().manual_seed(0)
    band = torch.arange(len(fractions)).repeat_interleave(50)
    per_weight = torch.exp(torch.randn(band.numel(), generator=g) * 2 - 7).double()
    obj = GD.GradientByDepth(layer="classifier", depths=list(range(len(fractions))), table=Table(rows),
                             per_weight=per_weight, band=band, batches=10)
    figs = []
    monkeypatch.setattr(GD, "save_figure", lambda fig, path, svg=False: figs.append(fig) or [path])
    obj.plot("x.png")
    fig = figs[0]
    ax = fig.axes[0]
    fig.canvas.draw()
    r = fig.canvas.get_renderer()
    legend = ax.get_legend().get_window_extent(r)
    assert not legend.overlaps(ax.get_window_extent(r))  # outside the plotting area: nothing there to cover
    assert not any(t.get_window_extent(r).overlaps(legend) for t in ax.texts)
    assert [t.get_text() for t in ax.texts] == ["<1% zero", "<1% zero", "2% zero", ">99% zero", "100% zero"]
    import matplotlib.pyplot as plt

    plt.close(fig)


def _densecat():
    from adaptive.models import build_model

    torch.manual_seed(0)
    net = build_model("densecat", num_classes=10, in_shape=(1, 8, 8), depth=2, width=4)
    x, y = torch.randn(32, 1, 8, 8), torch.randint(0, 10, (32,))
    return net, [(x[i:i + 16], y[i:i + 16]) for i in range(0, 32, 16)]


@pytest.mark.parametrize("frozen", [["classifier.weight"], ["layers.0.weight"], "all"])
def test_a_frozen_layer_is_measured_on_its_real_gradient_and_keeps_its_flag(frozen):
    """torch.autograd.grad(loss, [weight]) raised 'One of the differentiated Tensors does not
    require grad' when the measured layer was frozen (requires_grad=False, a frozen backbone), and
    'element 0 of tensors does not require grad' when every parameter was."""
    net, loader = _densecat()
    ref = gradient_by_depth(net, loader, "classifier", batches=2)
    names = [n for n, _ in net.named_parameters()] if frozen == "all" else frozen
    params = dict(net.named_parameters())
    for n in names:
        params[n].requires_grad_(False)
    res = gradient_by_depth(net, loader, "classifier", batches=2)
    assert torch.equal(res.per_weight, ref.per_weight) and res.table == ref.table
    assert {n for n, p in net.named_parameters() if not p.requires_grad} == set(names)  # flags given back
    assert all(p.grad is None for p in net.parameters())


@pytest.mark.parametrize("mode", [torch.no_grad, torch.inference_mode])
def test_called_under_no_grad_or_inference_mode_it_still_measures(mode):
    """Under torch.no_grad() or torch.inference_mode() the loss had no grad_fn and autograd raised
    'element 0 of tensors does not require grad'."""
    net, loader = _densecat()
    ref = gradient_by_depth(net, loader, "classifier", batches=2)
    with mode():
        res = gradient_by_depth(net, loader, "classifier", batches=2)
    assert torch.equal(res.per_weight, ref.per_weight)
    with torch.inference_mode():  # batches made inside inference mode cannot enter autograd: say so
        made_inside = [(x.clone(), y.clone()) for x, y in loader]
    with pytest.raises(RuntimeError, match=r"call gradient_by_depth outside torch.inference_mode\(\)"):
        gradient_by_depth(net, made_inside, "classifier", batches=2)


class RunningNorm(nn.Module):
    """An input normaliser whose running mean is updated by reassignment in train mode (a common
    pattern), with a non-persistent counter and a buffer that is None."""

    def __init__(self, n):
        super().__init__()
        self.register_buffer("mean", torch.zeros(n))
        self.register_buffer("seen", torch.zeros((), dtype=torch.long), persistent=False)
        self.register_buffer("unused", None)

    def forward(self, x):
        if self.training:
            self.mean = 0.9 * self.mean + 0.1 * x.detach().mean(0)
            self.seen = self.seen + 1
        return x - self.mean


def test_a_buffer_the_module_reassigns_is_restored():
    """kept_buffers copied the saved values back into the old tensor objects, but a module that
    reassigns its buffer held a new tensor, so the diagnostic changed the model's running mean."""
    torch.manual_seed(0)
    net = nn.Sequential(RunningNorm(6), nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
    x, y = torch.randn(64, 6) + 3, torch.randint(0, 3, (64,))
    loader = [(x[i:i + 16], y[i:i + 16]) for i in range(0, 64, 16)]
    mean, seen = net[0].mean, net[0].seen
    gradient_by_depth(net, loader, layer="3", batches=4, depths=torch.arange(8) % 2)
    assert net[0].mean is mean and net[0].seen is seen  # the original objects: outside references stay valid
    assert torch.equal(mean, torch.zeros(6)) and int(seen) == 0
    assert net[0].unused is None and set(net.state_dict()) == {"0.mean", "1.weight", "1.bias", "3.weight", "3.bias"}


class _OneLinear(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 1, bias=False)


def _scaled_gradient(net, c):
    (net.fc.weight * torch.tensor([c], dtype=torch.float32)).sum().backward()
    g = net.fc.weight.grad.clone()
    net.fc.weight.grad = None
    return g


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_band_scaler_momentum_weights_the_previous_typical_size(momentum):
    """momentum is that of each band's running log-magnitude: 0 uses the current batch only, 0.9
    keeps 90% of the previous typical size. Exact scales after two batches."""
    net = _OneLinear()
    sc = BandGradientScaler(net, layers=["fc"], depths={"fc": torch.tensor([0, 0, 1, 1])}, momentum=momentum)
    _scaled_gradient(net, [1.0, 1.0, 100.0, 100.0])  # band 1 a hundred times band 0
    g = _scaled_gradient(net, [1.0, 1.0, 1.0, 1.0])  # now the bands agree
    log_t1 = momentum * math.log(100.0) + (1 - momentum) * math.log(1.0)  # band 1's typical size; band 0's is 0
    common = log_t1 / 2
    want = torch.tensor([math.exp(common)] * 2 + [math.exp(common - log_t1)] * 2)
    assert torch.allclose(g.reshape(-1), want.float(), rtol=1e-5)
    sc.remove()


def test_one_signal_band_says_there_is_no_ratio(monkeypatch):
    """A layer that reads one signal depth has nothing to compare: its title read 'median ratio nan'."""
    import importlib

    from adaptive.diagnostics.table import Table

    GD = importlib.import_module("adaptive.diagnostics.gradient_depth")
    rows = [dict(depth=0, weights=50, values=500, median=1e-3, q1=5e-4, q3=2e-3, mean=1e-3, zero_fraction=0.0)]
    obj = GD.GradientByDepth(layer="layers.0", depths=[0], table=Table(rows), per_weight=torch.full((50,), 1e-3).double(),
                             band=torch.zeros(50, dtype=torch.long), batches=5)
    figs = []
    monkeypatch.setattr(GD, "save_figure", lambda fig, path, svg=False: figs.append(fig) or [path])
    obj.plot("x.png")
    title = figs[0].axes[0].get_title()
    assert "nan" not in title and "one signal band: no ratio" in title
    import matplotlib.pyplot as plt

    plt.close(figs[0])


def test_a_non_finite_gradient_is_refused_naming_the_batch():
    """A NaN gradient (a NaN input in the second batch) crashed LogHistogram.update with torch's
    'bincount only supports 1-d non-negative integral inputs'; now a ValueError names the batch and
    the layer, and the frozen flag is given back."""
    torch.manual_seed(0)
    layer = nn.Linear(4, 2)
    layer.weight.requires_grad_(False)
    good, bad = torch.randn(3, 4), torch.randn(3, 4)
    bad[0, 1] = float("nan")
    y = torch.zeros(3, dtype=torch.long)
    with pytest.raises(ValueError, match=r"gradient of '' at batch 2 has .*NaN or inf"):
        gradient_by_depth(layer, [(good, y), (bad, y)], layer="", batches=2, depths=torch.tensor([0, 0, 1, 1]))
    assert layer.weight.requires_grad is False


def test_two_bands_with_zero_medians_have_no_ratio(tmp_path):
    """Both bands' median |grad| 0 (the inputs are all zero): ratio() was inf (0/0 read as 'the
    shallow band is infinitely larger'), the figure's title said so; now NaN, and the title says why."""
    from adaptive.diagnostics.table import pyplot

    layer = nn.Linear(4, 2, bias=False)
    res = gradient_by_depth(layer, constant_loader(torch.zeros(1, 4), 3), layer="", batches=3, loss_fn=sum_loss,
                            depths=torch.tensor([0, 0, 1, 1]))
    assert res.medians() == [0.0, 0.0] and math.isnan(res.ratio())
    plt = pyplot()
    closed = plt.close
    titles = []
    plt.close = lambda fig=None: (titles.append(fig.axes[0].get_title()), closed(fig))
    try:
        res.plot(tmp_path / "g.png")
    finally:
        plt.close = closed
    assert "medians are both 0: no ratio" in titles[0] and "inf" not in titles[0]
    # only the deepest band at 0 is still inf
    x = torch.tensor([[1.0, 1.0, 0.0, 0.0]])
    res = gradient_by_depth(layer, constant_loader(x, 3), layer="", batches=3, loss_fn=sum_loss,
                            depths=torch.tensor([0, 0, 1, 1]))
    assert res.ratio() == math.inf


def test_a_layer_the_loss_never_reaches_is_refused_clearly():
    """autograd's 'appears to not have been used in the graph. Set allow_unused=True' came through,
    which is not the fix; now a ValueError says the layer takes no part in the loss."""

    class TwoHeads(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(4, 3), nn.Linear(4, 3)

        def forward(self, x):
            return self.a(x)

    x, y = torch.randn(3, 4), torch.zeros(3, dtype=torch.long)
    with pytest.raises(ValueError, match=r"layer 'b' takes no part in the loss"):
        gradient_by_depth(TwoHeads(), [(x, y)] * 2, layer="b", batches=2, depths=torch.tensor([0, 0, 1, 1]))


def test_band_scaler_state_survives_an_infinite_gradient():
    """One inf gradient entry (a diverged step that training skips) made the band's running log
    magnitude inf and every later scale NaN or inf, for good; now non-finite entries take no part."""
    layer = nn.Linear(4, 2, bias=False)
    scaler = BandGradientScaler(layer, layers=[""], depths={"": torch.tensor([0, 0, 1, 1])}, momentum=0.5)
    x = torch.tensor([[1.0, 1.0, 1e-3, 1e-3]])
    bad = x.clone()
    bad[0, 0] = float("inf")
    layer(bad).sum().backward()
    layer.weight.grad = None
    layer(x).sum().backward()
    scales = scaler.scales()[""]
    assert all(math.isfinite(v) for v in scales.values())
    assert scales[0] == pytest.approx(10 ** -1.5, rel=1e-5) and scales[1] == pytest.approx(10 ** 1.5, rel=1e-5)
    assert torch.isfinite(layer.weight.grad).all()
    scaler.remove()


class _SharedLayer(nn.Module):
    """``b`` runs twice: its first call reads a's output (depth 1), its second its own (depth 2), each
    followed by an in-place ReLU. ``untied=True``: the second call runs a copy ``b2`` instead."""

    def __init__(self, untied=False):
        super().__init__()
        self.a, self.b, self.head = nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 3)
        self.b2 = nn.Linear(4, 4) if untied else None

    def forward(self, x):
        h = torch.relu_(self.b(torch.relu(self.a(x))))
        return self.head(torch.relu_((self.b2 or self.b)(h)))


def _shared_and_untied():
    torch.manual_seed(0)
    shared, untied = _SharedLayer(), _SharedLayer(untied=True)
    untied.load_state_dict(shared.state_dict(), strict=False)
    untied.b2.load_state_dict(shared.b.state_dict())
    return shared, untied


def test_a_layer_called_twice_puts_each_calls_part_of_the_gradient_in_its_own_band():
    """A layer run twice in one forward (weight sharing) got the one band of its first call's input:
    the tracer keeps a module's first call, so the second call's gradient went to depth 1 though it
    reads depth 2, and the head read depth 2 though it reads 3. Each call's part is measured apart
    (they are the gradients of an untied copy's two layers) and goes to the band its call reads."""
    shared, untied = _shared_and_untied()
    x, y = torch.randn(16, 4), torch.randint(0, 3, (16,))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the tracer's 'called more than once ... first call only' is gone
        res = gradient_by_depth(shared, [(x, y)], layer="b", batches=1)
    assert res.calls == 2 and res.depths == [1, 2] and res.table["weights"] == [16, 16]
    loss = nn.functional.cross_entropy(untied(x), y)
    first, second = torch.autograd.grad(loss, [untied.b.weight, untied.b2.weight])
    assert torch.allclose(res.per_weight.view(2, 4, 4), torch.stack([first, second]).abs(), atol=1e-7)
    assert torch.equal(res.band.view(2, 16), torch.tensor([[1] * 16, [2] * 16]))
    with pytest.warns(UserWarning, match="one band"):
        assert gradient_by_depth(shared, [(x, y)], layer="head", batches=1).depths == [3]
    assert shared.b.weight.grad is None  # measured without touching .grad


def test_depths_given_once_for_a_layer_called_twice_warn_and_rows_per_call_are_used():
    shared, _ = _shared_and_untied()
    data = [(torch.randn(8, 4), torch.randint(0, 3, (8,)))]
    with pytest.warns(UserWarning, match=r"'b' is called 2 times in each forward \(weight sharing\).*depths given "
                                         r"\(depths=\) describe its inputs once.*one row per call"):
        once = gradient_by_depth(shared, data, layer="b", batches=1, depths=[0, 0, 1, 1])
    assert once.depths == [0, 1] and once.table["weights"] == [16, 16]  # each call, each depth: 8 weights twice
    rows = gradient_by_depth(shared, data, layer="b", batches=1, depths=[[1] * 4, [5] * 4])
    assert rows.depths == [1, 5] and torch.equal(rows.per_weight, once.per_weight)
    with pytest.raises(ValueError, match=r"3 rows of depths for 'b', which is called 2 times in each forward"):
        gradient_by_depth(shared, data, layer="b", batches=1, depths=[[1] * 4] * 3)


class _SharedReadAttribute(nn.Module):
    """``b`` runs twice; the forward also reads ``b``'s weight's dtype, and the model holds a tensor
    that autograd made (no graph leaf), which ``copy.deepcopy`` refuses."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.head = nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 3)
        self.scale = torch.ones(1, requires_grad=True) * 1.0

    def forward(self, x):
        x = x.to(self.b.weight.dtype) * self.scale.detach()
        return self.head(torch.relu(self.b(torch.relu(self.b(torch.relu(self.a(x)))))))


def test_a_shared_layer_is_traced_in_the_model_itself_not_in_a_copy():
    """The depths of a layer called twice were traced in a deep copy of the whole model with one copy
    of the layer per call: a forward reading the layer's attributes (self.b.weight) failed there
    ('_PerCall' has no attribute 'weight'), as did a model deepcopy refuses, for every layer of the
    model; and the copy cost a model's memory (one more layer per call). The graph has every call."""
    torch.manual_seed(0)
    model = _SharedReadAttribute()
    data = [(torch.randn(8, 4), torch.randint(0, 3, (8,)))]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        res = gradient_by_depth(model, data, layer="b", batches=1)
    assert res.calls == 2 and res.depths == [1, 2]
    with pytest.warns(UserWarning, match="one band"):
        assert gradient_by_depth(model, data, layer="head", batches=1).depths == [3]


class _CalledAgainInTraining(nn.Module):
    """``b`` runs a second time in train mode only (an auxiliary path)."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.head = nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 3)

    def forward(self, x):
        h = torch.relu(self.b(torch.relu(self.a(x))))
        return self.head(h + torch.relu(self.b(h)) if self.training else h)


def test_traced_calls_other_than_the_measured_forwards_are_refused():
    """Traced (eval mode) once, called twice in train mode: both calls' parts went to the first call's
    band, with a warning blaming the model's input_depths() (it has none) and one saying every input
    carries depth 1, though the second call reads depth 2."""
    torch.manual_seed(0)
    model = _CalledAgainInTraining()
    data = [(torch.randn(8, 4), torch.randint(0, 3, (8,)))]
    with pytest.raises(ValueError, match=r"traced graph \(an eval-mode forward\) has 1 layer\(s\) using the weight of "
                                         r"'b', but the measured forward \(train mode\) called 'b' 2 time\(s\).*"
                                         r"train_mode=False"):
        gradient_by_depth(model, data, layer="b", batches=1)
    with pytest.warns(UserWarning, match="one band"):
        assert gradient_by_depth(model, data, layer="b", batches=1, train_mode=False).depths == [1]
    assert gradient_by_depth(model, data, layer="b", batches=1, depths=[[1] * 4, [2] * 4]).depths == [1, 2]


class _ReadOutsideItsCalls(nn.Module):
    """``b`` runs twice and its weight is read a third time by F.linear."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.head = nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 3)

    def forward(self, x):
        h = torch.relu(self.b(torch.relu(self.a(x))))
        h = torch.relu(nn.functional.linear(h, self.b.weight, self.b.bias))
        return self.head(torch.relu(self.b(h)))


def test_calls_parts_that_miss_a_read_of_the_weight_outside_them_are_refused():
    """The calls' parts (the module's forward hook) miss what F.linear on the weight contributes: they did
    not add up to the gradient, silently, with depths given per call."""
    torch.manual_seed(0)
    model = _ReadOutsideItsCalls()
    data = [(torch.randn(8, 4), torch.randint(0, 3, (8,)))]
    with pytest.raises(ValueError, match=r"the parts of the gradient of 'b' that its 2 calls contribute do not add up"):
        gradient_by_depth(model, data, layer="b", batches=1, depths=[[1] * 4, [3] * 4])
    with pytest.raises(ValueError, match=r"has 3 layer\(s\) using the weight of 'b'.* called 'b' 2 time\(s\)"):
        gradient_by_depth(model, data, layer="b", batches=1)


def _typical_log(g):
    return g.abs()[g != 0].log().mean()


def test_band_scaler_scales_each_call_of_a_shared_layer_by_that_calls_bands():
    """The hook sees the summed gradient of a layer called twice and scaled all of it by the bands of
    the first call (one band here, so not at all). Each call's part is scaled by its own bands: the
    untied copy's two gradients, each times its band's common / typical size."""
    shared, untied = _shared_and_untied()
    x, y = torch.randn(16, 4), torch.randint(0, 3, (16,))
    scaler = BandGradientScaler(shared, layers=["b"], momentum=0.0)  # depths traced: calls read 1 and 2
    nn.functional.cross_entropy(shared(x), y).backward()
    first, second = torch.autograd.grad(nn.functional.cross_entropy(untied(x), y), [untied.b.weight, untied.b2.weight])
    t1, t2 = _typical_log(first), _typical_log(second)
    common = (t1 + t2) / 2
    expected = first * (common - t1).exp() + second * (common - t2).exp()
    assert torch.allclose(shared.b.weight.grad, expected, rtol=1e-5, atol=1e-8)
    assert scaler.scales()["b"] == pytest.approx({1: float((common - t1).exp()), 2: float((common - t2).exp())})
    scaler.remove()
    shared.zero_grad()
    nn.functional.cross_entropy(shared(x), y).backward()
    assert torch.allclose(shared.b.weight.grad, first + second, atol=1e-7)  # hooks and recorders are off


def test_band_scaler_refuses_calls_it_cannot_match_to_their_depths():
    torch.manual_seed(0)
    x, y = torch.randn(8, 4), torch.randint(0, 3, (8,))
    model = _CalledAgainInTraining().eval()  # one call in eval mode, two rows of depths
    scaler = BandGradientScaler(model, layers=["b"], depths={"b": [[1] * 4, [2] * 4]})
    with pytest.raises(ValueError, match=r"'b' was called 1 time\(s\) in the model's latest forward, but its depths "
                                         r"have 2 rows \(one per call\).*one row per call"):
        nn.functional.cross_entropy(model(x), y).backward()
    scaler.remove()
    shared, _ = _shared_and_untied()
    scaler = BandGradientScaler(shared, layers=["b"])
    loss = nn.functional.cross_entropy(shared(x), y) + nn.functional.cross_entropy(shared(x + 1), y)
    with pytest.raises(ValueError, match=r"parts of the gradient of 'b' that its 2 calls contribute do not add up.*"
                                         r"one backward per forward"):
        loss.backward()  # two forwards, one backward: only the latest forward's calls are known
    scaler.remove()
    with pytest.warns(UserWarning, match=r"'b' is called 2 times in each forward.*depths describe its inputs once"):
        scaler = BandGradientScaler(shared, layers=["b"], depths={"b": [0, 0, 1, 1]})
        nn.functional.cross_entropy(shared(x), y).backward()
    scaler.remove()


class _CallWithoutGrad(nn.Module):
    """``b`` runs twice; its second call (``only=True``: both) runs under torch.no_grad()."""

    def __init__(self, only=False):
        super().__init__()
        self.a, self.b, self.head = nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 3)
        self.only = only

    def forward(self, x):
        with torch.no_grad() if self.only else contextlib.nullcontext():
            h = torch.relu(self.b(torch.relu(self.a(x))))
        with torch.no_grad():
            h2 = torch.relu(self.b(h))
        return self.head(h + h2)


def test_a_figure_of_gradients_that_are_all_zero_is_drawn_without_a_warning(tmp_path, monkeypatch):
    """Every band's gradient exactly 0: matplotlib warned 'Data has no positive values, and therefore
    cannot be log-scaled'. The axis is linear there and a note says why; others stay on a log axis."""
    import importlib
    import warnings

    import matplotlib.pyplot as plt

    GD = importlib.import_module("adaptive.diagnostics.gradient_depth")
    figs = []
    monkeypatch.setattr(GD, "save_figure", lambda fig, path, svg=False: figs.append(fig) or [path])
    layer = nn.Linear(4, 2, bias=False)
    for x, scale in ((torch.zeros(1, 4), "linear"), (torch.tensor([[1.0, 1.0, 0.0, 0.0]]), "log")):
        res = gradient_by_depth(layer, constant_loader(x, 3), layer="", batches=3, loss_fn=sum_loss,
                                depths=torch.tensor([0, 0, 1, 1]))
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            res.plot(tmp_path / "g.png")
            figs[-1].canvas.draw()  # (the warning came at drawing)
        ax = figs[-1].axes[0]
        texts = [t.get_text() for t in ax.texts]
        assert ax.get_yscale() == scale and ("every gradient measured is exactly 0" in texts) == (scale == "linear")
        assert "100% zero" in texts  # the band notes as before
        plt.close(figs[-1])


def test_a_call_under_no_grad_is_said_to_have_no_gradient_not_measured_as_zeros(monkeypatch, tmp_path):
    """The second call of 'b' runs under torch.no_grad(): its part is no gradient, not a zero one. The
    band it reads (depth 2) read '100% zero' with median 0 and the ratio was inf, like dead units."""
    import importlib

    GD = importlib.import_module("adaptive.diagnostics.gradient_depth")
    torch.manual_seed(0)
    model = _CallWithoutGrad()
    data = [(torch.randn(8, 4), torch.randint(0, 3, (8,)))] * 2
    res = gradient_by_depth(model, data, layer="b", batches=2)
    assert res.calls == 2 and res.no_grad_calls == [2] and res.depths == [1, 2]
    shallow, deep = res.table
    assert deep["values"] == 0 and math.isnan(deep["median"]) and math.isnan(deep["zero_fraction"])
    assert deep["note"] == "no gradient: call 2 ran under torch.no_grad(), not measured" and shallow["note"] == ""
    assert shallow["values"] == 32 and shallow["median"] > 0
    assert math.isnan(res.ratio()) and "called under torch.no_grad()" in res.no_ratio_reason()
    (g,) = torch.autograd.grad(nn.functional.cross_entropy(model(data[0][0]), data[0][1]), [model.b.weight])
    per_call = res.per_weight.view(2, 4, 4)
    assert torch.allclose(per_call[0], g.abs(), atol=1e-7) and per_call[1].isnan().all()
    assert "no gradient: call 2" in res.table.to_markdown()
    figs = []
    monkeypatch.setattr(GD, "save_figure", lambda fig, path, svg=False: figs.append(fig) or [path])
    res.plot(tmp_path / "b.png")
    ax = figs[0].axes[0]
    texts = [t.get_text() for t in ax.texts]  # band 1: its dead units' share; band 2: no gradient
    assert texts == [f"{shallow['zero_fraction']:.0%} zero", "no gradient:\nno_grad call"]
    assert "call 2 under torch.no_grad(): no gradient, not measured" in ax.get_title()
    import matplotlib.pyplot as plt

    plt.close(figs[0])
    with pytest.raises(ValueError, match=r"'b' has no gradient: the model's forward calls it only under torch.no_grad"):
        gradient_by_depth(_CallWithoutGrad(only=True), data, layer="b", batches=1)
    scaler = BandGradientScaler(model, layers=["b"], momentum=0.0)  # the band without gradient gets no size
    nn.functional.cross_entropy(model(data[0][0]), data[0][1]).backward()
    assert torch.allclose(model.b.weight.grad, g) and scaler.scales()["b"] == {1: 1.0, 2: 1.0}
    scaler.remove()


class _Checkpointed(nn.Module):
    """``inner``'s forward under gradient checkpointing (non-reentrant: recomputed in the backward)."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x, reentrant=False):
        return torch.utils.checkpoint.checkpoint(self.inner, x, use_reentrant=reentrant)


def test_gradient_checkpointings_recomputed_calls_are_not_counted_as_calls():
    """The backward recomputes a checkpointed forward, calling each layer again: those calls were recorded,
    so a shared layer was refused as called 4 times for 2 rows of depths, an ordinary layer got the scaler's
    weight-sharing warning, and gradient_by_depth counted a zero part per weight (50% zeros, weights twice)."""
    shared, _ = _shared_and_untied()
    ckpt = _Checkpointed(_shared_and_untied()[0])
    x, y = torch.randn(8, 4), torch.randint(0, 3, (8,))
    rows = [[1] * 4, [2] * 4]
    scalers = [BandGradientScaler(shared, layers=["b"], depths={"b": rows}, momentum=0.0),
               BandGradientScaler(ckpt, layers=["inner.b"], depths={"inner.b": rows}, momentum=0.0)]
    nn.functional.cross_entropy(shared(x), y).backward()
    nn.functional.cross_entropy(ckpt(x), y).backward()
    assert torch.allclose(ckpt.inner.b.weight.grad, shared.b.weight.grad, atol=1e-7)
    # a reentrant checkpoint runs the forward under no_grad: its calls have no part, refused by name
    with pytest.raises(ValueError, match=r"do not add up.*reentrant torch.utils.checkpoint.*use_reentrant=False"):
        nn.functional.cross_entropy(ckpt(x.clone().requires_grad_(), reentrant=True), y).backward()
    for s in scalers:
        s.remove()
    plain, plain_ckpt = TwoBand(), _Checkpointed(TwoBand())
    plain_ckpt.inner.load_state_dict(plain.state_dict())
    data = [(torch.randn(8, 5), torch.randint(0, 3, (8,)))]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "called 2 times in each forward (weight sharing)"
        scaler = BandGradientScaler(plain_ckpt, layers=["inner.classifier"], depths={"inner.classifier": [0] * 7 + [1] * 7})
        nn.functional.cross_entropy(plain_ckpt(data[0][0]), data[0][1]).backward()
        scaler.remove()
        res = gradient_by_depth(plain_ckpt, data, layer="inner.classifier", batches=1, depths=[0] * 7 + [1] * 7)
    assert res.calls == 1 and list(res.table) == list(gradient_by_depth(plain, data, layer="classifier", batches=1).table)


class _Autocast(nn.Module):
    """``inner``'s forward under CPU bfloat16 autocast."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return self.inner(x).float()


def test_a_shared_layers_calls_are_split_under_the_autocast_they_ran_under():
    """Under autocast a call's input (the previous layer's output) is bfloat16: recomputing the call
    in the backward, outside autocast, failed with 'mat1 and mat2 must have the same dtype'."""
    shared, untied = (_Autocast(m) for m in _shared_and_untied())
    x, y = torch.randn(16, 4), torch.randint(0, 3, (16,))
    first, second = torch.autograd.grad(nn.functional.cross_entropy(untied(x), y),
                                        [untied.inner.b.weight, untied.inner.b2.weight])
    res = gradient_by_depth(shared, [(x, y)], layer="inner.b", batches=1, depths=[[1] * 4, [2] * 4])
    assert torch.allclose(res.per_weight.view(2, 4, 4).float(), torch.stack([first, second]).abs(), atol=1e-6)
    scaler = BandGradientScaler(shared, layers=["inner.b"], depths={"inner.b": [[1] * 4, [2] * 4]}, momentum=0.0)
    nn.functional.cross_entropy(shared(x), y).backward()
    t1, t2 = _typical_log(first), _typical_log(second)
    common = (t1 + t2) / 2
    expected = first * (common - t1).exp() + second * (common - t2).exp()
    assert torch.allclose(shared.inner.b.weight.grad, expected, rtol=1e-4, atol=1e-6)
    scaler.remove()


def test_band_scaler_says_a_second_backward_over_one_forward_is_the_problem():
    """The first backward takes the calls (and their inputs) away: the second was refused as a forward
    calling the layer 0 times for 2 rows of depths, telling its reader to pass other depths."""
    shared, _ = _shared_and_untied()
    x, y = torch.randn(8, 4), torch.randint(0, 3, (8,))
    scaler = BandGradientScaler(shared, layers=["b"], depths={"b": [[1] * 4, [2] * 4]})
    out = shared(x)
    nn.functional.cross_entropy(out, y).backward(retain_graph=True)
    with pytest.raises(ValueError, match=r"no forward of the model has called it since the last backward through it: "
                                         r"a second backward over one forward \(retain_graph=True\)"):
        out.sum().backward()
    scaler.remove()


class _PairLinear(nn.Linear):
    """A Linear returning a pair, as nn.LSTM and nn.MultiheadAttention return tuples: its output and
    a second one computed from its input (not from the first); ``derived=True``: the second is a
    slice of the first."""

    def __init__(self, derived=False):
        super().__init__(4, 4)
        self.derived = derived

    def forward(self, x):
        y = super().forward(x)
        return y, (y[:, :2] if self.derived else nn.functional.linear(x.tanh(), self.weight))


class _SharedPair(nn.Module):
    """``b`` returns a pair and runs twice (the second call's second tensor unused, as an attention's
    weights often are); ``untied=True``: the second call runs a copy ``b2``."""

    def __init__(self, untied=False, derived=False):
        super().__init__()
        self.a, self.b, self.head = nn.Linear(4, 4), _PairLinear(derived), nn.Linear(4, 3)
        self.b2 = _PairLinear(derived) if untied else None

    def forward(self, x):
        y, z = self.b(torch.relu(self.a(x)))
        h = torch.relu(y + z.sum(1, keepdim=True))
        return self.head(torch.relu((self.b2 or self.b)(h)[0]))


def test_a_shared_layer_returning_a_tuple_has_each_calls_part_measured():
    """A shared layer returning a tuple had no output gradient recorded: every call's part was zero, and
    the parts' sum was refused, blaming an F.linear read of the weight the model does not make."""
    torch.manual_seed(0)
    shared, untied = _SharedPair(), _SharedPair(untied=True)
    untied.load_state_dict(shared.state_dict(), strict=False)
    untied.b2.load_state_dict(shared.b.state_dict())
    x, y = torch.randn(16, 4), torch.randint(0, 3, (16,))
    res = gradient_by_depth(shared, [(x, y)], layer="b", batches=1, depths=[[1] * 4, [2] * 4])
    first, second = torch.autograd.grad(nn.functional.cross_entropy(untied(x), y), [untied.b.weight, untied.b2.weight])
    assert torch.allclose(res.per_weight.view(2, 4, 4), torch.stack([first, second]).abs(), atol=1e-7)
    torch.manual_seed(0)
    derived = _SharedPair(derived=True)
    with pytest.raises(ValueError, match=r"gradient_by_depth: call 1 of _PairLinear returns tensor 2 \(of the tensors "
                                         r"it returns, in order\) computed from tensor 1, which it returns too"):
        gradient_by_depth(derived, [(x, y)], layer="b", batches=1, depths=[[1] * 4, [2] * 4])


def test_a_shared_lstm_given_its_own_state_has_each_calls_part_alone():
    """A call's inputs in a tuple (an LSTM's state (h, c), from its previous call) were not held fixed:
    the second call's part ran back through the first call too, and the parts did not add up."""
    from adaptive.diagnostics._shared_calls import CallRecorder

    torch.manual_seed(0)
    lstm, copy = nn.LSTM(4, 4, batch_first=True), nn.LSTM(4, 4, batch_first=True)
    copy.load_state_dict(lstm.state_dict())
    x = torch.randn(3, 5, 4)
    recorder = CallRecorder(lstm)
    o, state = lstm(x)
    o2, (h, c) = lstm(o, state)
    (o2.sum() + h.sum() + c.sum()).backward()
    parts = recorder.gradient_parts(lstm.weight_ih_l0)
    recorder.remove()
    o, state = lstm(x)  # untied: the second call runs the copy
    o2, (h, c) = copy(o, state)
    first, second = torch.autograd.grad(o2.sum() + h.sum() + c.sum(), [lstm.weight_ih_l0, copy.weight_ih_l0])
    assert torch.allclose(parts[0], first, atol=1e-6) and torch.allclose(parts[1], second, atol=1e-6)


class _Passing(nn.Linear):
    """A Linear returning its output and its input as it came (a skip for the caller to add)."""

    def forward(self, x):
        return super().forward(x), x


def test_a_shared_layer_returning_its_input_is_not_refused():
    """An input returned as it came was taken for a returned tensor the output was computed from, and
    the parts were refused; it has no part (the inputs are held fixed), so nothing counts twice."""
    from adaptive.diagnostics._shared_calls import CallRecorder

    torch.manual_seed(0)
    layer, copy, a = _Passing(4, 4), _Passing(4, 4), nn.Linear(4, 4)
    copy.load_state_dict(layer.state_dict())
    x = torch.randn(2, 4)
    recorder = CallRecorder(layer)
    y, skip = layer(a(x))
    layer(torch.relu(y) + skip)[0].sum().backward()
    parts = recorder.gradient_parts(layer.weight)
    recorder.remove()
    y, skip = layer(a(x))
    first, second = torch.autograd.grad(copy(torch.relu(y) + skip)[0].sum(), [layer.weight, copy.weight])
    assert torch.allclose(parts[0], first, atol=1e-6) and torch.allclose(parts[1], second, atol=1e-6)


class _PairInput(nn.Module):
    """Takes its two inputs as one list argument, as gradient_by_depth passes a batch's inputs."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(3, 4), nn.Linear(2, 4)
        self.head = nn.Linear(4 + 2, 2)

    def forward(self, xy):
        x, y = xy
        return self.head(torch.cat([torch.relu(self.a(x)) + self.b(y), y], 1))


def test_nested_inputs_are_traced_as_one_argument_of_their_first_example():
    """The depths of a model taking its inputs as one list were traced on ``inputs[:1]``, the first
    tensor alone, instead of the first example of each tensor: the forward failed and the depths
    could not be told."""
    g = torch.Generator().manual_seed(0)
    loader = [([torch.randn(5, 3, generator=g), torch.randn(5, 2, generator=g)], torch.randint(0, 2, (5,), generator=g))]
    res = gradient_by_depth(_PairInput(), loader, layer="head", batches=2)
    assert {r["depth"]: r["weights"] for r in res.table} == {1: 8, 0: 4}  # 4 units of a/b, 2 raw y features


def _bn_mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3), nn.ReLU(), nn.Linear(3, 2))


def test_batchnorm_in_train_mode_with_batches_of_one_sample_names_the_fix():
    """A train-mode BatchNorm given a batch of one sample failed with PyTorch's bare 'Expected more
    than 1 value per channel when training', naming neither the diagnostic nor a way out; in eval
    mode the same batches are measured."""
    net = _bn_mlp()
    one = [(torch.randn(1, 4), torch.zeros(1, dtype=torch.long))] * 2
    with pytest.raises(ValueError, match=r"gradient_by_depth: a BatchNorm .* batch of one sample.*at least 2 samples.*"
                                         r"train_mode=False"):
        gradient_by_depth(net, one, layer="3", depths=torch.zeros(3, dtype=torch.long), batches=2)
    with pytest.warns(UserWarning, match="one band"):
        r = gradient_by_depth(net, one, layer="3", depths=torch.zeros(3, dtype=torch.long), batches=2, train_mode=False)
    assert r.batches == 2


class _ScaledPair(_PairInput):
    def forward(self, inp):
        xy, scale = inp
        return super().forward(xy) * scale


def test_a_scalar_beside_the_inputs_is_not_cut_to_a_first_example():
    """The first example was cut from every tensor of a nested batch: a 0-d tensor beside the inputs
    ((x, y), temperature) failed to slice, and the depths could not be told."""
    g = torch.Generator().manual_seed(0)
    loader = [(([torch.randn(5, 3, generator=g), torch.randn(5, 2, generator=g)], torch.tensor(2.0)),
               torch.randint(0, 2, (5,), generator=g))]
    res = gradient_by_depth(_ScaledPair(), loader, layer="head", batches=2)
    assert {r["depth"]: r["weights"] for r in res.table} == {1: 8, 0: 4}


@pytest.mark.parametrize("layer", ["rnn", "rnn.weight_hh_l0", "attn.in_proj_weight"])
def test_a_recurrent_or_attention_matrix_is_refused_naming_it_and_the_layers_to_measure(layer):
    # the depth diagnostics measure a `weight`: an RNN's or an attention's matrices were refused as
    # 'the model has no layer' (it has that weight) or with no hint of what to measure instead
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn, self.attn, self.fc = nn.GRU(4, 6, batch_first=True), nn.MultiheadAttention(6, 2), nn.Linear(6, 3)

        def forward(self, x):
            return self.fc(self.rnn(x)[0][:, -1])

    data = constant_loader(torch.randn(2, 5, 4), 1)
    with pytest.raises(TypeError, match=r"has no `weight` parameter: its matrices \[.*(weight_hh_l0|in_proj_weight).*"
                                        r"are not measured here .* first, are \[.*'fc'\]"):
        gradient_by_depth(Net(), data, layer=layer, batches=1)
    with pytest.raises(TypeError, match="not a recurrent or attention module's matrices"):
        BandGradientScaler(Net(), layers=[layer], depths={layer: torch.zeros(4)})


def test_the_layers_offered_for_an_attention_start_with_those_after_it():
    """The layers offered in place of a second block's attention listed the first block's Linears among those
    'that read its output', before the ones that do: its own out_proj first, then those after it in the model's order."""
    enc = nn.TransformerEncoder(nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True), 2)
    model = nn.Sequential(enc, nn.Linear(8, 3))
    data = constant_loader(torch.randn(2, 4, 8), 1)
    with pytest.raises(TypeError) as err:
        gradient_by_depth(model, data, layer="0.layers.1.self_attn", batches=1)
    offered = re.search(r"first, are (\[.*\])", str(err.value)).group(1)
    assert ast.literal_eval(offered)[:4] == ["0.layers.1.self_attn.out_proj", "0.layers.1.linear1", "0.layers.1.linear2", "1"]


@pytest.mark.parametrize("reparametrise, source, fix", [
    (lambda m: torch.nn.utils.prune.l1_unstructured(m, "weight", amount=0.5), "['weight_orig']",
     "torch.nn.utils.prune.remove(module, 'weight')"),
    (torch.nn.utils.parametrizations.weight_norm, "['parametrizations.weight.original0', 'parametrizations.weight.original1']",
     "torch.nn.utils.parametrize.remove_parametrizations(module, 'weight', leave_parametrized=True)"),
])
def test_a_layer_whose_weight_is_computed_is_refused_naming_the_call_that_makes_it_a_parameter(reparametrise, source, fix):
    # found: a Linear pruned by torch.nn.utils.prune (or under weight_norm) was refused as "a recurrent or attention
    # module's matrices" ("its matrices ['weight_orig'] are not measured here"), offering the very layer refused
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3))
    reparametrise(net[0])
    said = (rf"layer '0': the `weight` of \w*Linear '0' is no parameter but a tensor computed at each call from "
            rf"{re.escape(source)} .*; call {re.escape(fix)} first \(here the module is model.get_submodule\('0'\)\)")
    with pytest.raises(TypeError, match=said):
        gradient_by_depth(net, constant_loader(torch.randn(3, 4), 1), layer="0", depths=[0, 0, 1, 1], batches=1)
    with pytest.raises(TypeError, match=said):
        BandGradientScaler(net, layers=["0"], depths={"0": torch.tensor([0, 0, 1, 1])})


def test_a_layer_whose_weight_is_a_buffer_is_refused_as_such():
    # found in review: a Linear whose weight was made a buffer (a frozen layer) was refused as "a tensor computed at
    # each call from [] (torch.nn.utils.prune, a parametrization, ...)": nothing computes it, and no call fixes it
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3))
    w = net[0].weight.detach().clone()
    del net[0].weight
    net[0].register_buffer("weight", w)
    said = (r"layer '0': the `weight` of Linear '0' is a buffer \(a tensor held by the module that is no parameter\), "
            r"so it gets no gradient .*make it an nn.Parameter of the module")
    with pytest.raises(TypeError, match=said) as e:
        gradient_by_depth(net, constant_loader(torch.randn(3, 4), 1), layer="0", depths=[0, 0, 1, 1], batches=1)
    assert "computed" not in str(e.value)
    with pytest.raises(TypeError, match=said):
        BandGradientScaler(net, layers=["0"], depths={"0": torch.tensor([0, 0, 1, 1])})


class _Encoder(nn.Module):
    """A row embedding, one nn.TransformerEncoderLayer and a head: MultiheadAttention reads its out_proj's weight
    in F.multi_head_attention_forward, never calling out_proj."""

    def __init__(self, batch_first):
        super().__init__()
        self.batch_first = batch_first
        self.embed = nn.Linear(3, 8)
        self.enc = nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=batch_first)
        self.head = nn.Linear(8, 3)

    def forward(self, x):  # x: [B, T, 3]
        h = self.embed(x)
        h = self.enc(h) if self.batch_first else self.enc(h.transpose(0, 1)).transpose(0, 1)
        return self.head(h.mean(1))


@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("train_mode", [True, False])
def test_an_attention_out_proj_is_measured(batch_first, train_mode):
    # out_proj was refused ('called 0 time(s)', in either mode) though the refusal of an attention's
    # in_proj_weight names it as the layer to measure: its weight's one read is the whole gradient
    import adaptive

    torch.manual_seed(0)
    model = _Encoder(batch_first)
    conn = adaptive.Connectome(model)
    conn.set_masks({n: torch.rand(m.shape) < 0.5 for n, m in conn.masks.items()})
    data = [(torch.randn(4, 5, 3), torch.randint(0, 3, (4,))) for _ in range(3)]
    with pytest.warns(UserWarning, match="one band"):
        res = gradient_by_depth(model, data, layer="enc.self_attn.out_proj", batches=3, train_mode=train_mode, conn=conn)
    live = conn.masks["enc.self_attn.out_proj.weight"]
    assert res.depths == [2] and res.calls == 1  # embed -> q, k, v -> out_proj
    assert res.pruned == int((~live).sum()) and res.table[0]["weights"] == int(live.sum())
    w = model.enc.self_attn.out_proj.weight
    model.train(train_mode)
    mean = sum(torch.autograd.grad(nn.functional.cross_entropy(model(x), y), [w])[0].abs().double() for x, y in data) / 3
    assert torch.allclose(res.per_weight, mean[live].float())


def test_a_weight_read_only_by_f_linear_is_measured_and_the_hint_lists_only_measurable_layers():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.norm, self.fc = nn.Linear(4, 6), nn.LayerNorm(6), nn.Linear(6, 3)

        def forward(self, x):
            return nn.functional.linear(self.norm(torch.relu(self.a(x))), self.fc.weight, self.fc.bias)

    torch.manual_seed(0)
    model = Net()
    data = [(torch.randn(8, 4), torch.randint(0, 3, (8,)))]
    with pytest.warns(UserWarning, match="one band"):
        res = gradient_by_depth(model, data, layer="fc", batches=1)
    (g,) = torch.autograd.grad(nn.functional.cross_entropy(model(data[0][0]), data[0][1]), [model.fc.weight])
    assert res.depths == [1] and torch.allclose(res.per_weight, g.abs().reshape(-1))
    with pytest.raises(KeyError, match=r"layers it can measure \(Linear, convolution\): \['a', 'fc'\]"):
        gradient_by_depth(model, data, layer="nope", batches=1)  # not the LayerNorm, which has no input units


def test_a_weight_also_read_by_an_op_the_tracer_cannot_follow_is_refused_naming_the_op():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.fc = nn.Linear(4, 4), nn.Linear(4, 3)

        def forward(self, x):
            h = torch.relu(self.a(x))
            return nn.functional.linear(h, self.fc.weight, self.fc.bias) + h[:, :3] @ self.fc.weight[:, :3].t()

    data = [(torch.randn(8, 4), torch.randint(0, 3, (8,)))]
    with pytest.warns(UserWarning, match="cannot follow"), \
            pytest.raises(ValueError, match=r"'fc.weight' is also read by 1 op\(s\) the tracer cannot follow \('matmul'"):
        gradient_by_depth(Net(), data, layer="fc", batches=1)


def test_the_refusal_of_an_attention_in_a_deep_encoder_names_its_own_out_proj_first():
    # the list of layers to measure was cut at the model's first 12: a later block's out_proj was not in it
    # (then the layers after it, which may read its output, before those ahead of it, the first Linear '0')
    layer = nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True)
    model = nn.Sequential(nn.Linear(3, 8), nn.TransformerEncoder(layer, 5, enable_nested_tensor=False))
    data = constant_loader(torch.randn(2, 4, 3), 1)
    with pytest.raises(TypeError, match=r"are \['1.layers.4.self_attn.out_proj', '1.layers.4.linear1', "
                                        r"'1.layers.4.linear2', '0', "):
        gradient_by_depth(model, data, layer="1.layers.4.self_attn", batches=1)


def test_a_weight_read_once_by_f_linear_from_a_concatenation_is_split_by_the_depths_it_reads():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.l1, self.l2, self.head = nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(12, 3)

        def forward(self, x):
            h1 = torch.relu(self.l1(x))
            h2 = torch.relu(self.l2(h1))
            return nn.functional.linear(torch.cat([x, h1, h2], 1), self.head.weight, self.head.bias)

    torch.manual_seed(0)
    model = Net()
    data = [(torch.randn(8, 4), torch.randint(0, 3, (8,))) for _ in range(2)]
    res = gradient_by_depth(model, data, layer="head", batches=2)
    assert res.depths == [0, 1, 2] and res.band.view(3, 12)[0].tolist() == [0] * 4 + [1] * 4 + [2] * 4
    mean = sum(torch.autograd.grad(nn.functional.cross_entropy(model(x), y), [model.head.weight])[0].abs()
               for x, y in data) / 2
    assert torch.allclose(res.per_weight, mean.reshape(-1))


class _Tied(nn.Module):
    """``a`` is never called: its weight, tied to ``b``'s (which is called on the input, depth 0), is read by
    F.linear on a depth-1 signal."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 3)
        self.b.weight = self.a.weight

    def forward(self, x):
        return self.c(nn.functional.linear(torch.relu(self.b(x)), self.a.weight))


@pytest.mark.parametrize("model, layer, other", [(_Tied, "a", "b"), (_Tied, "b", "a"), (TiedHead, "head", "emb")])
def test_a_tied_weight_read_by_another_module_too_is_refused(model, layer, other):
    # the whole gradient, the other module's read's part included, was measured as the layer's: 'a' (never
    # called, read once by F.linear) in its depth-1 band, 'b' in its depth-0 band, a head with its embedding's part
    torch.manual_seed(0)
    x = torch.randint(0, 10, (4, 5)) if model is TiedHead else torch.randn(4, 4)
    with pytest.raises(ValueError, match=rf"the weight of '{layer}' is also that of \['{other}'\] \(a tied weight"):
        gradient_by_depth(model(), [(x, torch.randint(0, 3, (4,)))], layer=layer, batches=1)


def test_a_log_axis_of_gradients_all_of_one_size_spans_a_decade(monkeypatch):
    """Every gradient 1.0 (inputs of one value, two bands): the log axis autoscaled to 1.000-1.008, where the
    medians' and quartiles' histogram bins (1/200 decade) stood as a spread above every weight's point, with tick
    labels "1.002x10^0". The axis now spans at least a decade around what it draws."""
    import matplotlib.pyplot as plt

    import adaptive.diagnostics.gradient_depth as gd

    layer = nn.Linear(4, 2, bias=False)
    x = torch.ones(1, 4)
    res = gradient_by_depth(layer, constant_loader(x, 3), layer="", batches=3, loss_fn=sum_loss,
                            depths=torch.tensor([0, 0, 1, 1]))
    figs = []
    monkeypatch.setattr(gd, "save_figure", lambda fig, path, svg=False: figs.append(fig) or [path])
    res.plot("g.png")
    try:
        ax = figs[0].axes[0]
        lo, hi = ax.get_ylim()
        assert ax.get_yscale() == "log" and hi / lo >= 10 * 0.999 and lo < 1.0 < hi
    finally:
        plt.close(figs[0])
