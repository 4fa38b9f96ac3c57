"""Regressions found by training sequence models of one's own (a language model whose head is tied to its
embedding, a (batch, time, classes) output) through the diagnostics and graphs.compact: a tied head's mask is
carried into knowledge_distribution, a default loss that cannot read the output names loss_fn= and the layout
fix, and compact's refusal of a size used as a Python number names the fix that works (`@torch.fx.wrap`)."""
import pytest
import torch
import torch.fx
import torch.nn.functional as F
from torch import nn

import adaptive
import graphs
from adaptive.diagnostics import collinearity, gradient_by_depth, knowledge_distribution

V, L, D = 6, 5, 8


class TiedLM(nn.Module):
    """Embedding, one Linear, and a head tied to the embedding table; logits (batch, time, V)."""

    def __init__(self, tie=True):
        super().__init__()
        self.emb = nn.Embedding(V, D)
        self.mid = nn.Linear(D, D)
        self.out = nn.Linear(D, V, bias=False)
        if tie:
            self.out.weight = self.emb.weight

    def forward(self, t):
        return self.out(torch.relu(self.mid(self.emb(t))))


def lm_loss(out, y):
    return F.cross_entropy(out.flatten(0, -2), y.flatten())


def _data(n=3):
    g = torch.Generator().manual_seed(0)
    return [(t, t) for t in (torch.randint(0, V, (4, L), generator=g) for _ in range(n))]


def test_knowledge_distribution_carries_a_tied_heads_pruning():
    """The head's weight is the embedding's too: named_parameters gives it as emb.weight, the Connectome as
    out.weight; the curve used to refuse it as 'pruned weights in ['emb.weight'] which include/exclude leave out'."""
    torch.manual_seed(0)
    model = TiedLM()
    with pytest.warns(UserWarning, match="same Parameter"):
        conn = adaptive.Connectome(model)
    conn.set_masks({n: torch.rand(m.shape) < 0.5 for n, m in conn.masks.items()})
    with pytest.warns(UserWarning):  # the copy's tied weight, and few order batches
        curve = knowledge_distribution(model, _data(), order_loader=_data(), loss_fn=lm_loss, points=3, conn=conn)
    assert curve.table["removed"][-1] == conn.num_live()  # the live synapses only: the pruning was carried



def test_knowledge_distribution_warns_of_a_tied_weight_once_per_model():
    """Every call built a Connectome on its copy of the model, which warned of the tied weight again: a sweep
    over estimators (or a notebook cell run again) repeated it at every call. Now once per model, at the first
    call; another model warns at its own first call."""
    import warnings

    def tied_warnings(model):
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            knowledge_distribution(model, _data(), order_loader=_data(), loss_fn=lm_loss, points=2, order_batches=3)
        return [str(w.message) for w in seen if "same Parameter" in str(w.message)]

    torch.manual_seed(0)
    model, other = TiedLM(), TiedLM()
    first = tied_warnings(model)
    assert len(first) == 1 and "out.weight (layer 'out') is the same Parameter as emb.weight (Embedding)" in first[0]
    assert tied_warnings(model) == [] and tied_warnings(model) == []
    assert tied_warnings(other) == first

def test_default_loss_names_loss_fn_for_classes_on_the_last_axis():
    """A (batch, time, classes) output with (batch, time) labels: torch's own error named no fix."""
    torch.manual_seed(0)
    model = TiedLM(tie=False)
    conn = adaptive.Connectome(model)
    for run in (lambda: collinearity(model, _data(), conn=conn),
                lambda: gradient_by_depth(model, _data(), layer="out", conn=conn)):
        with pytest.raises(ValueError, match=r"loss_fn=lambda out, y: F.cross_entropy\(out.flatten\(0, -2\)"):
            run()
    collinearity(model, _data(), conn=conn, loss_fn=lm_loss)  # the named fix runs


@torch.fx.wrap
def _crop(pos, t):
    return pos[:, :t.shape[1]]


class PosLM(nn.Module):
    """A position table (a buffer) cut to the input's length: by a slice (untraceable) or through a wrapped
    function."""

    def __init__(self, wrapped):
        super().__init__()
        self.wrapped = wrapped
        self.emb = nn.Embedding(V, D)
        self.register_buffer("pos", torch.randn(1, L, D))
        self.out = nn.Linear(D, V)

    def forward(self, t):
        pos = _crop(self.pos, t) if self.wrapped else self.pos[:, :t.shape[1]]
        return self.out(self.emb(t) + pos)


def test_compact_names_fx_wrap_for_a_size_used_as_a_number():
    torch.manual_seed(0)
    t = torch.randint(0, V, (2, L))
    model = PosLM(wrapped=False)
    with pytest.raises(RuntimeError, match=r"@torch\.fx\.wrap"):
        graphs.compact(model, adaptive.Connectome(model), t)
    model = PosLM(wrapped=True)  # the fix the message names
    small = graphs.compact(model, adaptive.Connectome(model), t)
    assert torch.allclose(small(t), model(t))


class CellLoop(nn.Module):
    """A GRUCell run over the input's steps (``range(x.shape[1])``, untraceable by fx alone) or over a count it holds."""

    def __init__(self, steps=None):
        super().__init__()
        self.steps = steps
        self.cell = nn.GRUCell(3, 4)
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        h = x.new_zeros(x.shape[0], 4)
        for t in range(x.shape[1] if self.steps is None else self.steps):
            h = self.cell(x[:, t], h)
        return self.head(h)


def test_compact_names_a_held_count_for_a_loop_over_the_inputs_steps():
    torch.manual_seed(0)
    x = torch.randn(2, L, 3)
    model = CellLoop()
    with pytest.raises(RuntimeError, match=r"range\(self\.steps\)"):
        graphs.compact(model, adaptive.Connectome(model), x)
    model = CellLoop(steps=L)  # the fix the message names
    small = graphs.compact(model, adaptive.Connectome(model), x)
    assert torch.allclose(small(x), model(x))


class Scaled(nn.Module):
    """A Linear's output scaled by the batch's length: by len(x) (which fx refuses) or by x.shape[0] (which it traces)."""

    def __init__(self, by_len):
        super().__init__()
        self.by_len = by_len
        self.fc = nn.Linear(3, 2)

    def forward(self, x):
        return self.fc(x) * (len(x) if self.by_len else x.shape[0])


def test_compact_names_the_size_fix_for_len_of_the_input():
    """len(x) is a size of the input read as a number too (fx: "'len' is not supported in symbolic tracing"), but its
    refusal was told to write a branch on the data with torch.where; it gets the size hint, x.shape[0] included."""
    torch.manual_seed(0)
    model = Scaled(by_len=True)
    with pytest.raises(RuntimeError, match=r"`len\(x\)`\) is used there as a Python number.*write it as `x\.shape\[0\]`") as err:
        graphs.compact(model, adaptive.Connectome(model), torch.randn(4, 3))
    assert "torch.where" not in str(err.value)
    model = Scaled(by_len=False)  # the fix the message names: the copy runs another batch size as the model does
    small = graphs.compact(model, adaptive.Connectome(model), torch.randn(4, 3))
    x = torch.randn(7, 3)
    assert torch.allclose(small(x), model(x))
