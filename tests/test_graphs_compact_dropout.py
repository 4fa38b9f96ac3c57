"""graphs.compact traces the model in eval mode: a dropout the forward calls as a function with its mode
(``F.dropout(x, p, self.training)``, torchvision's StochasticDepth) holds ``training=False`` in the copy for good, so
the copy trained again drops nothing there. compact says so, once, naming the nodes; an ``nn.Dropout`` module stays
a module, which ``small.train()`` turns on, and warns of nothing."""
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import graphs

X = torch.randn(6, 8)


class Functional(nn.Module):
    def __init__(self, p=0.5, fn=F.dropout):
        super().__init__()
        self.a, self.b, self.p, self.fn = nn.Linear(8, 16), nn.Linear(16, 4), p, fn

    def forward(self, x):
        return self.b(self.fn(torch.relu(self.a(x)), self.p, self.training))


class Module(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.drop, self.b = nn.Linear(8, 16), nn.Dropout(0.5), nn.Linear(16, 4)

    def forward(self, x):
        return self.b(self.drop(torch.relu(self.a(x))))


def _compacted(model):
    with warnings.catch_warnings(record=True) as got:
        warnings.simplefilter("always")
        small = graphs.compact(model, example_input=X)
    return small, [str(w.message) for w in got if "dropout" in str(w.message)]


@pytest.mark.parametrize("fn", [F.dropout, torch.dropout, F.alpha_dropout])
def test_a_functional_dropout_traced_off_is_warned_of_once(fn):
    small, said = _compacted(Functional(fn=fn))
    assert len(said) == 1 and "dropout node(s) " in said[0] and "small.train()" in said[0] and "nn.Dropout" in said[0]
    small.train()
    with torch.no_grad():
        assert torch.equal(small(X), small(X))  # what the warning says: the copy trained again drops nothing there


def test_a_dropout_module_stays_one_and_is_not_warned_of():
    small, said = _compacted(Module())
    assert said == []
    small.train()
    with torch.no_grad():
        assert not torch.equal(small(X), small(X))


def test_a_functional_dropout_of_p_0_is_not_warned_of():
    assert _compacted(Functional(p=0.0))[1] == []


def test_torchvision_stochastic_depth_traced_off_is_warned_of():
    StochasticDepth = pytest.importorskip("torchvision.ops").StochasticDepth

    class Residual(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.sd, self.b = nn.Linear(8, 8), StochasticDepth(0.5, "row"), nn.Linear(8, 4)

        def forward(self, x):
            return self.b(x + self.sd(torch.relu(self.a(x))))

    said = _compacted(Residual())[1]
    assert len(said) == 1 and "stochastic_depth" in said[0]


def test_a_dropout_probability_read_from_the_mode_is_traced_at_eval_s_0_without_a_warning():
    """What docs/graphs.md says of the rest of what forward reads from self.training (nanoGPT's attention): the
    copy keeps eval's dropout_p=0.0, and there is no functional dropout node to warn of."""

    class Attention(nn.Module):
        def __init__(self):
            super().__init__()
            self.qkv, self.fc, self.dropout = nn.Linear(8, 24), nn.Linear(8, 4), 0.5

        def forward(self, x):
            q, k, v = self.qkv(x).split(8, dim=-1)
            return self.fc(F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0))

    with warnings.catch_warnings(record=True) as got:
        warnings.simplefilter("always")
        small = graphs.compact(Attention(), example_input=torch.randn(2, 5, 8))
    assert [str(w.message) for w in got if "dropout" in str(w.message)] == []
    sdpa = [n for n in small.graph.nodes if n.target is F.scaled_dot_product_attention]
    assert len(sdpa) == 1 and sdpa[0].kwargs.get("dropout_p") == 0.0
    small.train()
    x = torch.randn(2, 5, 8)
    with torch.no_grad():
        assert torch.equal(small(x), small(x))
