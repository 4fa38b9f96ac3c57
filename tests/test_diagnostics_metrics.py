"""knowledge_distribution (and the diagnostics' batch handling) under the accuracy contract of
adaptive.metrics: no accuracy for regression or one-logit outputs (was 0 or 48 = 4800%), per-position
accuracy and chance from the class axis 1 for a (B, C, T) tagger, a clear refusal of non-tensor outputs,
nested (multi-input) batches."""
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from adaptive.diagnostics import KnowledgeCurve, gradient_by_depth, knowledge_distribution


def test_regression_curve_has_no_accuracy_and_fits_the_loss_alone(tmp_path):
    torch.manual_seed(0)
    X = torch.randn(128, 6); Y = X @ torch.randn(6, 1)
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 1))
    ho = DataLoader(TensorDataset(X, Y), batch_size=32)
    c = knowledge_distribution(model, ho, order_loader=ho, estimator="taylor", points=8, loss_fn=F.mse_loss)
    assert "accuracy" not in c.table.columns and "accuracy_drop" not in c.table.columns  # were 0 everywhere
    assert c.chance is None and list(c.fits) == ["loss_increase"] and "no accuracy" in c.note
    with torch.no_grad():
        assert c.table["loss"][0] == pytest.approx(float(F.mse_loss(model(X), Y)), rel=1e-5)
    c.save(str(tmp_path))
    back = KnowledgeCurve.load(str(tmp_path))
    assert back.chance is None and list(back.fits) == ["loss_increase"]
    assert c.plot(str(tmp_path / "k.png"))


def test_one_logit_bce_has_no_accuracy_unless_accuracy_fn_counts_it():
    torch.manual_seed(0)
    X = torch.randn(96, 6); Y = (X[:, :1] > 0).float()
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 1))
    ho = DataLoader(TensorDataset(X, Y), batch_size=32)
    bce = F.binary_cross_entropy_with_logits
    c = knowledge_distribution(model, ho, points=3, loss_fn=bce)
    assert "accuracy" not in c.table.columns  # was 48.0 (argmax(1) of (B, 1) broadcast against (B, 1))
    thr = lambda o, t: (int(((o > 0).float() == t).sum()), t.numel())
    c = knowledge_distribution(model, ho, points=3, loss_fn=bce, accuracy_fn=thr, num_classes=2)
    with torch.no_grad():
        want = float(((model(X) > 0).float() == Y).float().mean())
    assert c.table["accuracy"][0] == pytest.approx(want) and c.chance == 0.5


def test_sequence_tagger_accuracy_per_position_and_chance_from_axis_1():
    torch.manual_seed(0)
    V, T = 6, 5
    X = torch.randint(0, V, (64, T)); Y = (X + 1) % V

    class Tagger(nn.Module):  # (B, C, T) logits
        def __init__(self):
            super().__init__(); self.emb = nn.Embedding(V, 8); self.head = nn.Linear(8, V)
        def forward(self, x):
            return self.head(self.emb(x)).transpose(1, 2)

    model = Tagger()
    ho = DataLoader(TensorDataset(X, Y), batch_size=16)
    c = knowledge_distribution(model, ho, points=3)
    with torch.no_grad():
        want = float((model(X).argmax(1) == Y).float().mean())
    assert c.table["accuracy"][0] == pytest.approx(want) and all(0 <= a <= 1 for a in c.table["accuracy"])
    assert c.chance == pytest.approx(1 / V)  # was 1 / T, from the last axis
    assert c.meta["base"]["positions"] == 64 * T and c.meta["base"]["samples"] == 64


def _non_tensor_output_model(wrap: str):
    """A 4 -> 3 linear model class whose output is wrapped: in a dict, a tuple or an object's ``.logits``."""
    class Wrapped(nn.Module):
        def __init__(self):
            super().__init__(); self.fc = nn.Linear(4, 3)
        def forward(self, x):
            z = self.fc(x)
            return {"dict": lambda: {"out": z}, "tuple": lambda: (z, z.sum()), "hf": lambda: SimpleNamespace(logits=z)}[wrap]()

    return Wrapped


@pytest.mark.parametrize("wrap", ["dict", "tuple", "hf"])
def test_knowledge_refuses_non_tensor_outputs_clearly(wrap):
    Wrapped = _non_tensor_output_model(wrap)
    data = [(torch.randn(8, 4), torch.randint(0, 3, (8,)))]
    with pytest.raises(TypeError, match="needs a model that returns a tensor.*wrap it"):
        knowledge_distribution(Wrapped(), data, points=2)  # was AttributeError: no attribute 'shape'


@pytest.mark.parametrize("given_loss", [False, True])
def test_knowledge_with_a_gradient_order_refuses_a_tuple_output_as_it_always_does(given_loss):
    """A gradient order (taylor) ran the default loss on the output first, whose refusal of a tuple says
    to pass loss_fn=; knowledge_distribution then refused the same model with that loss_fn (it needs the
    logits as a tensor). Both now get knowledge's own refusal, which names the fix that works: wrap it."""
    class Wrapped(nn.Module):
        def __init__(self):
            super().__init__(); self.fc = nn.Linear(4, 3)
        def forward(self, x):
            return (self.fc(x),)

    torch.manual_seed(0)
    data = [(torch.randn(8, 4), torch.randint(0, 3, (8,))) for _ in range(2)]
    kw = {"loss_fn": lambda out, y: F.cross_entropy(out[0], y)} if given_loss else {}
    with pytest.raises(TypeError, match="knowledge_distribution needs a model that returns a tensor.*wrap it"):
        knowledge_distribution(Wrapped(), data, order_loader=data, estimator="taylor", points=2, **kw)


@pytest.mark.parametrize("wrap", ["dict", "tuple", "hf"])
def test_gradient_diagnostics_refuse_a_non_tensor_output_under_the_default_loss_naming_loss_fn(wrap):
    """A model returning a tuple, dict or ``.logits`` object under the default cross-entropy gave
    cross_entropy_loss()'s own "argument 'input' must be Tensor, not tuple" (or a dict's), which names
    no fix; now both measurements say to pass loss_fn= or wrap the model, and with a loss_fn that reads
    the output they measure."""
    from adaptive.diagnostics import collinearity

    Wrapped = _non_tensor_output_model(wrap)
    torch.manual_seed(0)
    data = [(torch.randn(8, 4), torch.randint(0, 3, (8,))) for _ in range(2)]
    model = Wrapped()
    for call in (lambda **kw: gradient_by_depth(model, data, layer="fc", batches=2, depths=[0, 0, 1, 1], **kw),
                 lambda **kw: collinearity(model, data, **kw)):
        with pytest.raises(TypeError, match="model's output to be a tensor.*pass loss_fn=.*or wrap the model"):
            call()
        read = {"dict": lambda o: o["out"], "tuple": lambda o: o[0], "hf": lambda o: o.logits}[wrap]
        assert call(loss_fn=lambda out, y: F.cross_entropy(read(out), y)).batches == 2


class TwoInputs(nn.Module):
    def __init__(self):
        super().__init__(); self.a = nn.Linear(4, 3); self.b = nn.Linear(2, 3)
    def forward(self, x):
        return self.a(x[0]) + self.b(x[1])


def test_diagnostics_take_multi_input_batches():
    torch.manual_seed(0)
    data = [((torch.randn(8, 4), torch.randn(8, 2)), torch.randint(0, 3, (8,))) for _ in range(3)]
    model = TwoInputs()
    c = knowledge_distribution(model, data, order_loader=data, estimator="taylor", points=3, finetune_batches=1)
    assert c.table["removed"][0] == 0 and 0 <= c.table["accuracy"][0] <= 1


def test_gradient_by_depth_takes_multi_input_batches():
    torch.manual_seed(0)
    data = [((torch.randn(8, 4), torch.randn(8, 2)), torch.randint(0, 3, (8,))) for _ in range(3)]
    model = TwoInputs()
    g = gradient_by_depth(model, data, layer="a", batches=2, depths=torch.tensor([0, 0, 1, 1]))
    assert g.batches == 2  # was AttributeError: no attribute "to" (a DataLoader collates the inputs into a list)


def test_default_cross_entropy_refuses_a_one_channel_output():
    """An autoencoder's image (B, 1, H, W) under the default F.cross_entropy: log-softmax over one class
    is 0, so the loss and every gradient were silently 0 (gradient_by_depth reported all-zero bands,
    collinearity 0 everywhere, knowledge_distribution a flat 0 loss, optimize_connectome a loss of 0.0).
    Each is now refused, naming loss_fn=; with F.mse_loss it measures."""
    from adaptive import optimize_connectome
    from adaptive.diagnostics import collinearity
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, stride=2, padding=1), nn.ReLU(),
                          nn.ConvTranspose2d(4, 1, 4, stride=2, padding=1))
    X = torch.randn(16, 1, 8, 8)
    xx = DataLoader(TensorDataset(X, X), batch_size=8)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    calls = [lambda **kw: gradient_by_depth(model, xx, layer="2", batches=1, **kw),
             lambda **kw: collinearity(model, xx, batches=2, **kw),
             lambda **kw: knowledge_distribution(model, xx, order_loader=xx, points=3, **kw),
             lambda **kw: optimize_connectome(model, xx, xx, target=[0.5], passes=1.0, progress=False, **kw)]
    for call in calls:
        with pytest.raises(ValueError, match=r"one channel on its class axis 1.*loss_fn=: F\.mse_loss"):
            call()
        assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    with pytest.raises(ValueError, match="one channel"):  # given explicitly, as a module or with a smoothing
        optimize_connectome(model, xx, xx, target=[0.5], passes=1.0, progress=False,
                            loss_fn=nn.CrossEntropyLoss(label_smoothing=0.1))
    bands = gradient_by_depth(model, xx, layer="2", batches=1, loss_fn=F.mse_loss)
    assert bands.table["median"][0] > 0
    assert knowledge_distribution(model, xx, order_loader=xx, points=3, loss_fn=F.mse_loss).table["loss"][0] > 0
