"""dtype casts (``.long()``, ``.int()``, ``.bool()``, ``.type(dtype)``, ...), flips, rolls and rotations, and running
sums and products (``cumsum``, ``cumprod``, ``logcumsumexp``) are followed exactly. They were unknown ops (a warning,
every input unit feeding every output). A method called unbound, ``torch.Tensor.topk(h, 2)``, is the method call (fx
refused it, and the model fell back to module order).

Checked as tests/test_graphs_rank.py checks the rank ops, against the model itself in float64: a unit of ``a`` feeds
an input channel of ``head`` when moving that unit changes it. A cast to an integer or bool has no gradient, so
the dependency is structural, as perturbation finds it: what the cast gives changes when the element moves (past a
whole number, or to or from zero: a ReLU before ``.bool()`` makes zeros to move away from)."""
import warnings

import pytest
import torch
import torch.nn.functional as F

import adaptive
import graphs
from test_graphs_rank import Along, _graph_feeds_of, _truth, assert_followed_exactly

torch.set_num_threads(1)

OPS = {
    "long": lambda h: (h * 10).long(),
    "int": lambda h: (h * 10).int(),
    "short": lambda h: (h * 10).short(),
    "bool of a relu": lambda h: F.relu(h).bool(),
    "type(dtype)": lambda h: (h * 10).type(torch.int64),
    "to(dtype)": lambda h: (h * 10).to(torch.int32),
    "float": lambda h: h.float(),
    "half": lambda h: h.half(),
    "flip": lambda h: h.flip(-1),
    "flip two dims": lambda h: torch.flip(h, [1, 2]),
    "fliplr": lambda h: torch.fliplr(h),
    "flipud (over the batch)": lambda h: torch.flipud(h),
    "roll": lambda h: h.roll(1, -1),
    "roll flattened": lambda h: torch.roll(h, 3),
    "roll two dims": lambda h: torch.roll(h, (1, 2), (1, 2)),
    "rot90": lambda h: torch.rot90(h, 1, (1, 2)),
    "cumsum": lambda h: h.cumsum(-1),
    "cumsum over rows, keyword dim": lambda h: torch.cumsum(h, dim=1),
    "cumprod": lambda h: torch.cumprod(h, 2),
    "logcumsumexp": lambda h: h.logcumsumexp(-1),
    "suffix sum: flip, cumsum, flip": lambda h: h.flip(-1).cumsum(-1).flip(-1),
    "cast then cumsum": lambda h: (h * 10).long().cumsum(-1),
    "cumsum_ in place, result unused": lambda h: (h.cumsum_(-1), h)[1],
    "cumsum_ in place, keyword dim": lambda h: h.cumsum_(dim=1),
    "cumprod_ in place": lambda h: h.cumprod_(2),
}


@pytest.mark.parametrize("name", list(OPS))
def test_a_cast_flip_roll_or_running_sum_is_followed_exactly(name):
    assert_followed_exactly(OPS[name])


def test_a_cast_to_bool_keeps_each_unit_its_own_channel():
    """Structural: ``.bool()`` has zero gradient, yet channel ``c`` of what it gives is unit ``c``, and nothing else."""
    model = Along(lambda h: h.bool())
    g = graphs.build(adaptive.Connectome(model), "unit", example_input=torch.randn(4, 5))
    assert torch.equal(_graph_feeds_of(g, "head", "a"), torch.eye(8, dtype=torch.bool))


UNBOUND = {
    "topk": (lambda h: torch.Tensor.topk(h, 2).values, lambda h: h.topk(2).values),
    "sort indices": (lambda h: torch.Tensor.sort(h, dim=1)[1], lambda h: h.sort(dim=1)[1]),
    "flip": (lambda h: torch.Tensor.flip(h, [2]), lambda h: h.flip([2])),
    "long": (lambda h: torch.Tensor.long(h * 10), lambda h: (h * 10).long()),
    "cumsum": (lambda h: torch.Tensor.cumsum(h, dim=-1), lambda h: h.cumsum(dim=-1)),
    "softmax": (lambda h: torch.Tensor.softmax(h, 1), lambda h: h.softmax(1)),
}


@pytest.mark.parametrize("name", list(UNBOUND))
def test_an_unbound_tensor_method_is_followed_as_the_method(name):
    """``torch.Tensor.topk(h, 2)``: fx refused it ("descriptor 'topk' ... doesn't apply to a 'Proxy' object") and the
    whole model fell back to module order; it is now the method call, with the method's graph."""
    unbound, method = UNBOUND[name]
    own = torch.Tensor.__dict__.get("topk"), torch.Tensor.topk
    graphs_of = []
    for op in (unbound, method):
        torch.manual_seed(0)
        model = Along(op).double().eval()
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no module-order fallback, no unknown op
            g = graphs.build(adaptive.Connectome(model), "unit", example_input=torch.randn(4, 5, dtype=torch.float64))
        assert g.meta["traced"] is True
        graphs_of.append(_graph_feeds_of(g, "head", "a"))
    assert torch.equal(graphs_of[0], graphs_of[1])
    assert torch.equal(graphs_of[0], _truth(model))
    assert (torch.Tensor.__dict__.get("topk"), torch.Tensor.topk) == own  # torch's own again after tracing


def test_an_unbound_method_in_a_compacted_copy_and_a_sized_trace():
    """The copy ``graphs.compact`` writes calls the method; a forward that fx traces only with the example's sizes
    (``range(x.shape[1])``) takes the unbound call too."""
    class Steps(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.head = torch.nn.Linear(3, 6), torch.nn.Linear(2, 2)

        def forward(self, x):  # [B, T, 3]
            h = self.a(sum(x[:, t] for t in range(x.shape[1])))
            return self.head(torch.Tensor.topk(h, 2).values)

    torch.manual_seed(0)
    x = torch.randn(4, 3, 3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        g = graphs.build(adaptive.Connectome(Steps()), "unit", example_input=x)
    assert g.meta["traced"] is True and bool(_graph_feeds_of(g, "head", "a").all())
    model = Along(lambda h: torch.Tensor.topk(h, 2).values).eval()
    conn = adaptive.Connectome(model)
    x = torch.randn(4, 5)
    small = graphs.compact(model, conn, x)
    assert "topk" in small.code
    assert torch.allclose(small(x), model(x))


def test_a_tensor_method_given_a_traced_argument_is_still_the_method_call():
    """While the unbound methods are traced, ``self.buf.add_(v)`` (fx gives the buffer as a tensor, ``v`` traced)
    reached fx as a call of the stand-in for ``torch.Tensor.add_``, recorded as a function call the rules did not
    know: an unknown op, with a warning."""
    class Written(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = torch.nn.Linear(3, 4), torch.nn.Linear(3, 2)
            self.register_buffer("buf", torch.zeros(3))

        def forward(self, x):
            h = self.a(x)
            self.buf.add_(h[:, 0].mean())
            return self.b(h[:, 1:] + self.buf)

    from graphs.tracer import symbolic_trace

    gm = symbolic_trace(Along(lambda h: torch.Tensor.topk(h, 2).values))
    assert [n.op for n in gm.graph.nodes if n.target == "topk"] == ["call_method"]
    gm = symbolic_trace(Written())
    assert [n.op for n in gm.graph.nodes if n.target == "add_"] == ["call_method"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        graphs.build(model=Written().eval(), level="unit", example_input=torch.randn(3, 3))


def test_torch_tensor_is_left_alone_unless_the_forward_calls_a_method_unbound():
    """The stand-ins are on ``torch.Tensor`` for the whole process while they are in: a tensor subclass's
    ``__torch_function__`` in any thread is given the stand-in (torchvision's ``tv_tensors.Image.clone()`` gave a
    plain tensor). A model that calls no method unbound is traced with none in (all 191 were put in for every
    trace); one that does, with those it calls only."""
    from graphs.tracer import symbolic_trace

    class Looks(torch.nn.Module):
        def __init__(self, unbound):
            super().__init__()
            self.a, self.unbound, self.seen = torch.nn.Linear(3, 4), unbound, []

        def forward(self, x):
            self.seen.append(set(vars(torch.Tensor)))
            h = self.a(x)
            return torch.Tensor.topk(h, 2).values if self.unbound else h.topk(2).values

    own = set(vars(torch.Tensor))
    plain, unbound = Looks(False), Looks(True)
    symbolic_trace(plain)
    symbolic_trace(unbound)
    assert plain.seen == [own]
    assert unbound.seen[-1] - own == {"topk"}
    assert set(vars(torch.Tensor)) == own


def test_a_sized_trace_leaves_no_stand_in_in_torch_dynamo():
    """A sized trace's first fake tensor imports torch._dynamo, which copies ``torch.Tensor.__dict__``
    (``all_tensor_attrs``): taken while the stand-ins were in, it kept them for the rest of the process. Checked in a
    fresh process, where torch._dynamo is first imported by that trace."""
    import subprocess
    import sys
    code = """
import sys, warnings, torch, adaptive, graphs
assert "torch._dynamo" not in sys.modules
class Steps(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.head = torch.nn.Linear(3, 6), torch.nn.Linear(2, 2)
    def forward(self, x):
        h = torch.Tensor.topk(self.a(x), 2).values  # refused first, then traced again with the stand-in in
        return self.head(sum(h[:, t] for t in range(h.shape[1])))  # the sizes: a fake tensor, torch._dynamo
with warnings.catch_warnings():
    warnings.simplefilter("error")
    g = graphs.build(adaptive.Connectome(Steps()), "unit", example_input=torch.randn(4, 3, 3))
assert g.meta["traced"] is True
from torch._dynamo.variables.tensor import all_tensor_attrs
print(all_tensor_attrs["topk"] is torch._C.TensorBase.__dict__["topk"])
"""
    import os
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["True"]
