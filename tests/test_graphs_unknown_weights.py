"""An op the tracer cannot follow is named with the weights it reads, so the user knows which layer's
wiring the graph only guesses."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from graphs.trace import trace

torch.set_num_threads(1)


class MatmulOnWeight(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.scale, self.fc2 = nn.Linear(4, 6), nn.Parameter(torch.randn(6, 6)), nn.Linear(6, 3)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)) @ self.scale)


class MaskedLinear(nn.Module):  # F.linear on a weight computed in the forward (not a layer's own)
    def __init__(self):
        super().__init__()
        self.fc1, self.w, self.fc2 = nn.Linear(4, 6), nn.Parameter(torch.randn(5, 6)), nn.Linear(5, 3)
        self.register_buffer("mask", torch.ones(5, 6))

    def forward(self, x):
        return self.fc2(F.linear(self.fc1(x), self.w.t().t() * self.mask))


class BilinearHead(nn.Module):  # a torch.nn module with weights that no rule describes
    def __init__(self):
        super().__init__()
        self.fc1, self.bil = nn.Linear(4, 6), nn.Bilinear(6, 6, 3)

    def forward(self, x):
        h = self.fc1(x)
        return self.bil(h, h)


@pytest.mark.parametrize("model, what, weights", [
    (MatmulOnWeight, "'matmul' (call_function matmul)", ["scale"]),
    (MaskedLinear, "'linear' (call_function linear)", ["w"]),  # through t() and * mask, not the buffer
    (BilinearHead, "'bil' (call_module bil, a Bilinear)", ["bil.weight", "bil.bias"]),
])
def test_unknown_op_names_the_weights_it_reads(model, what, weights):
    with pytest.warns(UserWarning, match="cannot follow") as rec:
        tr = trace(model(), torch.randn(1, 4))
    assert tr.unknown_weights == {what: weights}
    msg = next(str(w.message) for w in rec if what in str(w.message))
    assert f"reading the weights {', '.join(map(repr, weights))}" in msg


def test_unknown_op_on_data_alone_names_no_weights():
    class Cum(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(4, 3), nn.Linear(3, 2)

        def forward(self, x):
            return self.b(torch.renorm(self.a(x), 2, 1, 1.0))  # reads fc a's output, not its weight

    with pytest.warns(UserWarning, match="renorm") as rec:
        tr = trace(Cum(), torch.randn(1, 4))
    assert tr.unknown_weights == {}
    assert not any("reading the weights" in str(w.message) for w in rec)


def test_a_layer_weight_read_by_an_unknown_op_is_named_once():
    """torch.matmul(x, self.a.weight.t()) is on the data path: the unknown op's warning names a.weight and
    says it gets no synapse edges; build also called a.weight 'not on the traced data path' (misleading).
    A layer that is really unused is still named so."""
    import warnings

    import adaptive
    import graphs

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.unused = nn.Linear(4, 6), nn.Linear(6, 3), nn.Linear(2, 2)

        def forward(self, x):
            return self.b(torch.matmul(x, self.a.weight.t()))

    conn = adaptive.Connectome(Net())
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        graphs.build(conn, example_input=torch.randn(2, 4))
    about_a = [str(w.message) for w in rec if "a.weight" in str(w.message)]
    assert len(about_a) == 1
    assert "'matmul'" in about_a[0] and "(which get no synapse edges from it)" in about_a[0]
    absent = [str(w.message) for w in rec if "not on the traced data path" in str(w.message)]
    assert len(absent) == 1 and "['unused.weight']" in absent[0]


def test_a_head_only_training_runs_is_named_with_its_live_synapses_and_why():
    """GoogLeNet's and Inception-v3's auxiliary heads run only in training; graphs traces eval mode, so the graph's
    live_synapses() fell short of conn.num_live() under a warning that guessed at leaf modules and said not by how
    much. It says how many live synapses are left out, and that a branch only training takes never runs."""
    import warnings

    import adaptive
    import graphs

    class Aux(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.aux = nn.Linear(4, 6), nn.Linear(6, 3), nn.Linear(6, 3)

        def forward(self, x):
            h = torch.relu(self.a(x))
            if self.training:
                return self.b(h), self.aux(h)
            return self.b(h)

    conn = adaptive.Connectome(Aux().train())
    conn.set_masks({"aux.weight": torch.arange(18).view(3, 6) < 5})
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        g = graphs.build(conn, example_input=torch.randn(2, 4))
    absent = [str(w.message) for w in rec if "not on the traced data path" in str(w.message)]
    assert len(absent) == 1 and "['aux.weight']" in absent[0]
    assert g.live_synapses() == conn.num_live() - 5
    assert "with their 5 live synapse(s)" in absent[0] and "a branch only training takes" in absent[0]
