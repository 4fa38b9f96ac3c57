"""Matrix products and einsum (``q @ k.transpose(-1, -2)``, ``torch.bmm``, ``torch.einsum('bhid,bhjd->bhij', q, k)``)
are followed exactly: each output element reads, of every operand, the elements it shares its subscripts with, over
the summed ones. They were unknown ops (a warning, every unit of the operands feeding every output element: a hand-
written attention's heads all joined). And a method called unbound that the op tables do not know,
``torch.Tensor.matmul(q, k)``, is the method call (fx refused it, and the model fell back to module order).

Checked as tests/test_graphs_rank.py checks the rank ops, against the model itself in float64: a unit of ``a`` feeds
an input channel of ``head`` when moving that unit changes it."""
import pathlib
import warnings

import pytest
import torch
from torch import nn

import adaptive
import graphs
from test_graphs_rank import _graph_feeds_of, assert_followed_exactly

torch.set_num_threads(1)

OPS = {
    "h @ h^T": lambda h: h @ h.transpose(-1, -2),
    "h^T @ h (columns)": lambda h: h.transpose(1, 2) @ h,
    "torch.matmul, a vector": lambda h: torch.matmul(h, h[0, 0]),
    "vector @ batch of matrices": lambda h: h[0, 1] @ h.transpose(1, 2),
    "broadcast batch axes": lambda h: h.unsqueeze(1) @ h[:1, :, :, None].transpose(0, 1).squeeze(-1).transpose(-1, -2),
    "bmm": lambda h: torch.bmm(h, h.transpose(1, 2)),
    "mm": lambda h: h[:, 0].mm(h[0].t()),
    "matmul method": lambda h: h.matmul(h.transpose(1, 2)),
    "einsum rows": lambda h: torch.einsum("bij,bkj->bik", h, h),
    "einsum with spaces, list form": lambda h: torch.einsum("b i j , b k j -> b k i", [h, h]),
    "einsum ellipsis": lambda h: torch.einsum("...ij,...kj->...ik", h, h),
    "einsum implicit output": lambda h: torch.einsum("...ij,...ik", h, h),
    "einsum outer product": lambda h: torch.einsum("bi,bj->bij", h[:, 0], h[:, 1]),
    "einsum diagonal": lambda h: torch.einsum("bii->bi", h[:, :, :2]),
    "einsum per sample total": lambda h: torch.einsum("bij,bij->b", h, h).unsqueeze(1),
    "einsum of three": lambda h: torch.einsum("bi,bij,bj->bi", h[:, 0, :2], h[:, :, 2:], h[:, 1, 2:]),
}

# the other products (they were unknown ops, guessed densely): sample b's row reads sample 0's matrix or vector
PRODUCTS = {
    "mv": lambda h: torch.mv(h.flatten(1), h[0].flatten()).unsqueeze(1),
    "mv method": lambda h: h[:, 0].mv(h[0, 1]).unsqueeze(1),
    "dot": lambda h: torch.dot(h[0, 0], h[-1, 1]).expand(h.shape[0], 1),
    "vdot": lambda h: torch.vdot(h[-1, 0], h[0, 1]).expand(h.shape[0], 1),
    "inner": lambda h: torch.inner(h, h[0]),
    "outer": lambda h: torch.outer(h[:, 0, 0], h[0, 1]),
    "outer method": lambda h: h[:, 1, 2].outer(h[0, 0]),
    "ger": lambda h: torch.ger(h[:, 0, 0], h[0, 1]),
    "tensordot, dims=1": lambda h: torch.tensordot(h, h[0].t(), dims=1),
    "tensordot, dims as lists": lambda h: torch.tensordot(h, h[0], dims=([2], [1])),
    "tensordot of two axes": lambda h: torch.tensordot(h, h[0], dims=2).unsqueeze(1),
    # dims given as a tensor, read as torch reads it: one number a count of axes, else the two lists
    "tensordot, dims a 0-d tensor": lambda h: torch.tensordot(h, h[0].t(), dims=torch.tensor(1)),
    "tensordot, dims a tensor of lists": lambda h: torch.tensordot(h, h[0], dims=torch.tensor([[2], [1]])),
    "inner of a scalar (a product element by element)": lambda h: torch.inner(h, h[0, 1, 2]),
    "addmm": lambda h: torch.addmm(h[:, 1, :2], h[:, 0], h[0].t()),
    "addmm, a broadcast input": lambda h: torch.addmm(h[0, 1, :2], h[:, 0], h[0].t()),
    "addmm, beta=0 (input ignored)": lambda h: torch.addmm(h[:, 1, :2], h[:, 0], h[0].t(), beta=0),
    "addmm, alpha=0 (product ignored)": lambda h: torch.addmm(h[:, 1, :2], h[:, 0], h[0].t(), alpha=0),
    "addmm method, scaled": lambda h: h[:, 1, 1:3].addmm(h[:, 0], h[-1].t(), beta=0.5, alpha=2.0),
    "baddbmm": lambda h: torch.baddbmm(h[:, :, :2], h, h.transpose(1, 2)),
    "baddbmm method, beta=0": lambda h: h[:, :, 2:].baddbmm(h, h.transpose(1, 2), beta=0),
    "addbmm (sums over its batch)": lambda h: torch.addbmm(h[:, 0, :1], h.transpose(0, 1), h[0].unsqueeze(2)),
    "addmv": lambda h: torch.addmv(h[:, 1, 0], h[:, 0], h[0, 1]).unsqueeze(1),
    "addr": lambda h: torch.addr(h[:, 0], h[:, 1, 0], h[0, 1]),
}


@pytest.mark.parametrize("name", list(PRODUCTS))
def test_the_other_matrix_products_are_followed_exactly(name):
    """``torch.mv``, ``dot``, ``outer``, ``addmm``, ``baddbmm``, ... were unknown ops (every unit of their operands
    feeding every output element, with a warning): each output element now reads what its sum reads, and an
    ``add*`` op's input at its own position (not where ``beta`` is 0; nor the product where ``alpha`` is)."""
    assert_followed_exactly(PRODUCTS[name])


@pytest.mark.parametrize("name", list(OPS))
def test_a_matrix_product_or_einsum_is_followed_exactly(name):
    assert_followed_exactly(OPS[name])


class HandAttention(nn.Module):
    """Attention written by hand over 2 heads of 2 channels: ``qkv`` projects, ``softmax(q k^T) v`` mixes the
    positions of each head (``einsum``: the same through einsum equations; ``unbound``: through
    ``torch.Tensor.matmul``)."""

    def __init__(self, how):
        super().__init__()
        self.how, self.heads = how, 2
        self.a = nn.Linear(6, 12)  # q, k, v: 3 x 2 heads x 2 channels
        self.head = nn.Linear(4, 3)

    def forward(self, x):
        B, T, _ = x.shape
        q, k, v = self.a(x).reshape(B, T, 3, self.heads, 2).permute(2, 0, 3, 1, 4).unbind(0)
        if self.how == "einsum":
            attn = torch.einsum("bhid,bhjd->bhij", q, k).softmax(-1)
            y = torch.einsum("bhij,bhjd->bhid", attn, v)
        elif self.how == "unbound":
            attn = torch.Tensor.matmul(q, k.transpose(-1, -2)).softmax(-1)
            y = torch.Tensor.bmm(attn.flatten(0, 1), v.flatten(0, 1)).unflatten(0, (B, self.heads))
        else:
            y = (q @ k.transpose(-1, -2) * 0.5).softmax(-1) @ v
        return self.head(y.transpose(1, 2).reshape(B, T, 4))


def _truth(model, x):
    """Per input channel of ``head``, the units of ``a`` whose moving (by +-3) changes it (float64)."""
    seen, bump = {}, {}
    model.head.register_forward_pre_hook(lambda m, args: seen.__setitem__("in", args[0].detach().clone()))
    model.a.register_forward_hook(lambda m, args, out: out + bump.get("d", 0))
    n = model.a.out_features
    feeds = torch.zeros(model.head.in_features, n, dtype=torch.bool)
    with torch.no_grad():
        model(x)
        base = seen["in"]
        for u in range(n):
            for step in (3.0, -3.0):
                bump["d"] = torch.zeros(n, dtype=torch.float64).index_fill_(0, torch.tensor([u]), step)
                model(x)
                feeds[:, u] |= (seen["in"] != base).flatten(0, -2).any(0)
    return feeds


@pytest.mark.parametrize("how", ["matmul", "einsum", "unbound"])
def test_a_hand_written_attention_is_wired_per_head(how):
    """Output channel ``c`` of head ``h`` reads head ``h``'s query and key units and value unit ``c``, nothing of the
    other head: the heads were joined (every unit of q, k and v feeding every channel)."""
    torch.manual_seed(0)
    model = HandAttention(how).double().eval()
    x = torch.randn(3, 5, 6, dtype=torch.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no unknown op, no module-order fallback
        g = graphs.build(adaptive.Connectome(model), "unit", example_input=x)
    assert g.meta["traced"] is True
    truth = _truth(model, x)
    q, k, v = torch.arange(12).view(3, 2, 2).unbind(0)  # units of a: [q|k|v] x head x channel
    want = torch.zeros(4, 12, dtype=torch.bool)
    for h in range(2):
        for c in range(2):
            want[2 * h + c, torch.cat([q[h], k[h], v[h, c:c + 1]])] = True
    assert torch.equal(truth, want)  # the check checks what it means to
    assert torch.equal(_graph_feeds_of(g, "head", "a"), truth)


def test_a_product_with_a_weight_no_layer_owns_is_still_an_unknown_op_naming_it():
    """``x @ self.w`` reads a parameter no Linear owns: its synapses get no edges, which the unknown op's warning
    says (and ``Trace.unknown_weights`` records)."""
    class Bare(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.w, self.head = nn.Linear(5, 4), nn.Parameter(torch.randn(4, 3)), nn.Linear(3, 2)

        def forward(self, x):
            return self.head(self.a(x) @ self.w)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # w is no synapse of the connectome: said there
        conn = adaptive.Connectome(Bare())
    with pytest.warns(UserWarning, match="reading the weights 'w'"):
        graphs.build(conn, "unit", example_input=torch.randn(2, 5))


def test_addmm_on_a_bias_and_weight_no_layer_owns_is_still_an_unknown_op_naming_them():
    """``torch.addmm(self.b, x, self.w)`` (a hand-written linear layer) reads parameters no Linear owns: like ``x @
    self.w``, an unknown op whose warning names them (its synapses get no edges)."""
    class Bare(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.head = nn.Linear(5, 4), nn.Linear(3, 2)
            self.w, self.b = nn.Parameter(torch.randn(4, 3)), nn.Parameter(torch.randn(3))

        def forward(self, x):
            return self.head(torch.addmm(self.b, self.a(x), self.w))

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # w is no synapse of the connectome: said there
        conn = adaptive.Connectome(Bare())
    with pytest.warns(UserWarning, match=r"node 'addmm'.*reading the weights 'b', 'w'.*a matrix product sums"):
        graphs.build(conn, "unit", example_input=torch.randn(2, 5))


NOT_FOLLOWED = {  # docs/graphs.md names each: an unknown op, guessed densely with a warning naming it
    "torch.kron": ("kron", lambda p, q: torch.kron(p, q)[: p.shape[0], :4]),
    "torch.linalg.multi_dot": ("linalg_multi_dot", lambda p, q: torch.linalg.multi_dot([p, q.t(), p])),
}


@pytest.mark.parametrize("name", NOT_FOLLOWED)
def test_the_products_the_docs_call_not_followed_are_unknown_ops_with_a_warning(name):
    """docs/graphs.md named the products that are followed (``@``, matmul, mm, bmm, einsum) but not those
    that are not: each of these is an unknown op (every unit of its operands feeds every output element,
    a warning naming it), and the page says so by name."""
    node, op = NOT_FOLLOWED[name]

    class Two(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.head = nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 3)

        def forward(self, x):
            return self.head(op(self.a(x), self.b(x)))

    torch.manual_seed(0)
    conn = adaptive.Connectome(Two().eval())
    with pytest.warns(UserWarning, match=rf"cannot follow the data flow through node '{node}'.*every input unit "
                                         "feeds every output"):
        graphs.build(conn, "unit", example_input=torch.randn(4, 4))
    doc = " ".join((pathlib.Path(__file__).parents[1] / "docs" / "graphs.md").read_text().split())
    said = doc.split("The other products are not followed: ")[1].split(";")[0]
    assert f"`{name}`" in said and "unknown ops" in said


def test_unbound_methods_the_tables_do_not_know_trace_with_one_retrace():
    """``torch.Tensor.matmul``, ``torch.Tensor.bmm`` and ``torch.Tensor.mm`` were refused by fx and, not being in the op
    tables, left the model to module order; each refused name cost a trace of its own."""
    from graphs import tracer

    class Calls(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.head = nn.Linear(4, 4), nn.Linear(4, 2)

        def forward(self, x):
            h = self.a(x)
            s = torch.Tensor.matmul(h, h.transpose(-1, -2))
            s = torch.Tensor.bmm(s, h) + torch.Tensor.mm(h[0], h[0].t()).sum()
            return self.head(torch.Tensor.topk(s, 4).values)

    traces = []
    own = tracer.SignatureTracer.trace
    try:
        tracer.SignatureTracer.trace = lambda self, *a, **k: traces.append(1) or own(self, *a, **k)
        gm = tracer.symbolic_trace(Calls())
    finally:
        tracer.SignatureTracer.trace = own
    assert len(traces) == 2  # refused once, then traced with every stand-in the forward names
    assert {n.target for n in gm.graph.nodes if n.op == "call_method"} >= {"matmul", "bmm", "mm", "topk"}
    assert "matmul" not in vars(torch.Tensor) and "bmm" not in vars(torch.Tensor)


def test_a_contraction_past_the_cap_is_refused_before_its_reads_are_laid_out(monkeypatch):
    """Past ``_CONTRACT_READS`` a contraction is the unknown op's dense guess, refused before its (output element,
    operand element) reads are laid out: it was refused after, when they were already in memory (2.1 GB at the peak
    for a 256-token attention whose ids vary along the tokens, ~25 GB at 1024: killed before it could refuse)."""
    from graphs import flow_contract

    laid_out = []

    class Torch:  # torch as flow_contract sees it, recording what it concatenates
        def __getattr__(self, name):
            return getattr(torch, name)

        @staticmethod
        def cat(parts, *a, **k):
            laid_out.append(sum(p.numel() for p in parts))
            return torch.cat(parts, *a, **k)

    monkeypatch.setattr(flow_contract, "torch", Torch())
    model = HandAttention("matmul").double().eval()
    x = torch.randn(3, 5, 6, dtype=torch.float64)
    graphs.build(adaptive.Connectome(model), "unit", example_input=x)
    assert laid_out  # the spy sees the reads of a contraction followed
    monkeypatch.setattr(flow_contract, "_CONTRACT_READS", min(laid_out) - 1)
    laid_out.clear()
    with pytest.warns(UserWarning, match="too many reads to follow"):
        graphs.build(adaptive.Connectome(model), "unit", example_input=x)
    assert laid_out == []


def test_a_forward_naming_callables_of_torch_tensor_that_are_no_tensor_methods_still_traces():
    """The forwards' bytecode names ``torch.Tensor.mro`` and ``torch.Tensor.__class__`` beside an unbound
    ``torch.Tensor.matmul``: only tensor methods of torch's C base get stand-ins (one for ``__class__`` raised
    "__class__ must be set to a class", one for ``mro`` left ``torch.Tensor.mro()`` missing its argument)."""
    from graphs import tracer

    class Names(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(4, 4)

        def forward(self, x):
            h = self.a(x)
            if torch.Tensor in torch.Tensor.mro() and type(x) is not torch.Tensor.__class__:
                h = h * 2
            return torch.Tensor.matmul(h, h.transpose(-1, -2))

    before = dict(vars(torch.Tensor))
    gm = tracer.symbolic_trace(Names())
    assert "matmul" in {n.target for n in gm.graph.nodes if n.op == "call_method"}
    after = dict(vars(torch.Tensor))
    assert after.keys() == before.keys() and all(after[k] is before[k] for k in before)


def test_a_trace_that_fails_after_stand_ins_went_in_leaves_torch_tensor_as_it_was():
    """The retrace with stand-ins for ``torch.Tensor.matmul`` and ``.bmm`` raises mid-forward: ``torch.Tensor``'s
    attributes are those it had before, each the same object."""
    from graphs import tracer

    class Fails(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(4, 4)

        def forward(self, x):
            h = torch.Tensor.bmm(torch.Tensor.matmul(self.a(x), self.a.weight), self.a(x).transpose(1, 2))
            raise RuntimeError(f"no further than {h}")

    before = dict(vars(torch.Tensor))
    own = {n: getattr(torch.Tensor, n) for n in ("matmul", "bmm", "__matmul__")}
    with pytest.raises(RuntimeError, match="no further than"):
        tracer.symbolic_trace(Fails())
    after = dict(vars(torch.Tensor))
    assert after.keys() == before.keys() and all(after[k] is before[k] for k in before)
    assert all(getattr(torch.Tensor, n) is f for n, f in own.items())
