"""adaptive.exact_masking: a 0/1 mask multiplied into a tensor's bits sets pruned positions to +0.0
whatever they held (a float multiply leaves 0 * inf = 0 * NaN = NaN and 0 * -x = -0.0) and keeps
every live bit, in every floating dtype, for dense and sparse COO tensors."""
import pytest
import torch

from adaptive.exact_masking import bits, int_mask, mask_, mask_dtype, masked

SPECIAL = [float("nan"), float("inf"), -float("inf"), -0.0, 0.0, -1.5, 3.0, 1e-40, -1e-300]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_pruned_positions_become_plus_zero_and_live_ones_keep_their_bits(dtype):
    t = torch.tensor(SPECIAL * 2, dtype=dtype)
    keep = torch.tensor([True] * len(SPECIAL) + [False] * len(SPECIAL))
    m = int_mask(keep, t)
    assert m.dtype == mask_dtype(t) and m.element_size() == t.element_size()
    before = bits(t).clone()
    copy = masked(t, m)
    assert torch.equal(bits(t), before)  # masked() leaves its input alone
    mask_(t, m)
    for out in (t, copy):
        assert out.dtype == dtype
        assert torch.equal(bits(out)[keep], before[keep])  # NaN, inf, -0.0 and subnormals included
        assert bool((bits(out)[~keep] == 0).all())  # +0.0: no NaN, no -0.0
    assert bool(torch.isnan(t * 0).any())  # what the float multiply would have left


def test_a_sparse_gradient_has_its_stored_values_masked_exactly_even_uncoalesced():
    # an embedding's sparse gradient: rows 1 and 3 (row 3 twice, uncoalesced), 4 columns each
    idx = torch.tensor([[1, 3, 3]])
    vals = torch.tensor([[float("nan"), 1.0, -2.0, float("inf")], [float("inf"), 2.0, -0.5, 1.0], [1.0, 1.0, 1.0, 1.0]])
    g = torch.sparse_coo_tensor(idx, vals, (5, 4))
    keep = torch.ones(5, 4, dtype=torch.bool)
    keep[1, 0] = keep[3, 0] = keep[1, 3] = False
    m = int_mask(keep, g)
    copy = masked(g, m)
    assert torch.isnan(g.to_dense()[1, 0])  # the copy left it alone
    mask_(g, m)
    for out in (g, copy):
        dense = out.to_dense()
        assert bool((bits(dense)[~keep] == 0).all())
        assert torch.equal(dense[1], torch.tensor([0.0, 1.0, -2.0, 0.0]))
        assert torch.equal(dense[3], torch.tensor([0.0, 3.0, 0.5, 2.0]))  # the two entries of row 3 summed
        assert not bool(dense[[0, 2, 4]].any())


def test_a_mask_wider_than_the_tensor_masks_it_in_its_own_shape_and_type():
    """A connectome's cached masks follow its first weight's width: a later weight cast narrower on
    its own (model.fc.half()) keeps an int32 mask for its float16 gradient. The copy was the int32
    product viewed back as float16, twice as wide and every value split in two (clip_gradients'
    norm came out NaN)."""
    keep = torch.tensor([[True, False, True], [False, True, True]])
    g = torch.tensor([[1.5, float("nan"), -2.0], [float("inf"), 0.25, -0.0]], dtype=torch.float16)
    wide = int_mask(keep, torch.zeros(2, 3))  # int32
    out = masked(g, wide)
    assert out.shape == g.shape and out.dtype == g.dtype
    assert torch.equal(bits(out), torch.where(keep, bits(g), 0))
    inplace = g.clone()
    assert torch.equal(bits(mask_(inplace, wide)), bits(out))


def test_a_mask_is_laid_out_as_its_weight_is():
    """A channels_last weight gets a channels_last mask: a multiply of tensors whose strides differ
    runs ~4x slower on a CPU (the masks were always contiguous)."""
    w = torch.randn(8, 4, 3, 3).to(memory_format=torch.channels_last)
    keep = torch.rand(8, 4, 3, 3) < 0.5
    m = int_mask(keep, w)
    assert m.stride() == w.stride() and torch.equal(m.bool(), keep)
    w3 = torch.randn(4, 2, 3, 3, 3).to(memory_format=torch.channels_last_3d)
    assert int_mask(torch.ones(w3.shape, dtype=torch.bool), w3).stride() == w3.stride()


def test_a_tensor_autograd_records_is_masked_where_autograd_sees_it():
    """A gradient built by backward(create_graph=True) requires grad: its masking is recorded, so
    the derivative through it is the mask (the integer view's product carried no graph at all)."""
    x = torch.tensor([1.0, 2.0, 3.0], requires_grad=True)
    keep = torch.tensor([True, False, True])
    for mask_of in (masked, mask_):
        t = x * 2
        d, = torch.autograd.grad(mask_of(t, int_mask(keep, t)).sum(), x)
        assert torch.equal(d, 2 * keep.float())


def test_a_complex128_tensor_is_masked_exactly_over_both_halves():
    """There is no 128-bit integer: a complex128 tensor failed with a bare KeyError: 16. Its real and
    imaginary float64 halves are masked as int64 by the same mask a float64 weight has."""
    vals = torch.tensor(SPECIAL, dtype=torch.float64)
    t = torch.complex(vals, vals.flip(0)).repeat(2).reshape(6, 3).t()  # not contiguous, NaN and inf in both halves
    keep = torch.rand(t.shape, generator=torch.Generator().manual_seed(0)) < 0.5
    m = int_mask(keep, t)
    assert m.dtype == mask_dtype(t) == mask_dtype(t.real) == torch.int64 and m.shape == t.shape
    halves = torch.view_as_real(t).view(torch.int64).clone()
    copy = masked(t, m)
    assert torch.equal(torch.view_as_real(t).view(torch.int64), halves)  # masked() leaves its input alone
    mask_(t, m)
    for out in (t, copy):
        got = torch.view_as_real(out).view(torch.int64)
        assert out.dtype == torch.complex128 and out.shape == keep.shape
        assert torch.equal(got[keep], halves[keep]) and bool((got[~keep] == 0).all())  # 0+0j: no NaN, no -0.0
    x = torch.full((2, 2), complex(float("nan"), 1.0), dtype=torch.complex64)  # one int64 per value, as before
    eye = torch.eye(2, dtype=torch.bool)
    mask_(x, int_mask(eye, x))
    assert torch.isnan(x[eye].real).all() and bool((bits(x)[~eye] == 0).all())


@pytest.mark.filterwarnings("ignore:Complex modules are a new feature")
def test_a_model_cast_to_complex128_after_its_connectome_is_masked_exactly():
    """Complex weights are refused as synapses when the connectome is built; a model cast to complex
    afterwards (model.to(torch.complex128)) failed at the next masking with KeyError: 16."""
    from adaptive import Connectome

    model = torch.nn.Linear(4, 3)
    conn = Connectome(model)
    keep = torch.tensor([[True, False, True, False]] * 3)
    conn.set_masks({"weight": keep})
    model.to(torch.complex128)
    with torch.no_grad():
        model.weight.fill_(complex(float("nan"), 2.0))
    conn.apply()
    w = torch.view_as_real(model.weight.detach()).view(torch.int64)
    assert torch.isnan(model.weight.detach()[keep].real).all() and bool((w[~keep] == 0).all())
    model(torch.randn(2, 4, dtype=torch.complex128)).abs().sum().backward()
    model.weight.grad[~keep] = complex(float("inf"), float("nan"))
    conn.mask_gradients()
    assert bool((torch.view_as_real(model.weight.grad).view(torch.int64)[~keep] == 0).all())


@pytest.mark.parametrize("dtype", [torch.complex64, torch.complex128])
def test_a_conjugate_view_is_masked_exactly(dtype):
    """A conjugate view (the gradient of a weight a forward reads as w.conj()) has no integer view:
    masked, mask_ and a connectome's mask_gradients failed on it with PyTorch's 'not supported for
    conjugate view tensors' / 'view_as_real doesn't work on unresolved conjugated tensors'."""
    import warnings

    import adaptive

    base = torch.tensor([1 + 2j, float("nan") - 1j, complex(float("inf"), -0.0), 3 - 4j], dtype=dtype)
    keep = torch.tensor([1, 0, 1, 0])
    for op in (lambda t, m: masked(t, m), lambda t, m: mask_(t, m)):
        t = base.clone().conj()
        out = torch.view_as_real(op(t, keep.to(mask_dtype(t))).resolve_conj())
        want = torch.view_as_real(base.conj().resolve_conj())
        assert torch.equal(out[0], want[0]) and torch.equal(out[2].signbit(), want[2].signbit())
        assert out[2][0] == float("inf") and torch.equal(out[[1, 3]], torch.zeros(2, 2, dtype=out.dtype))
        assert not out[[1, 3]].signbit().any()  # +0.0, as the view reads it
    lin = torch.nn.Linear(3, 2, bias=False)
    gen = torch.Generator().manual_seed(0)  # fixed numbers: the checks below must not hang on a draw
    with torch.no_grad():
        lin.weight.copy_(torch.randn(2, 3, generator=gen))
    conn = adaptive.Connectome(lin)  # cast to complex after its connectome was built
    conn.masks["weight"].view(-1)[::2] = False
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # PyTorch's 'Complex modules are a new feature'
        lin.to(dtype)
    conn.apply()
    x = torch.randn(4, 3, dtype=dtype, generator=gen)
    (x @ lin.weight.conj().t()).abs().sum().backward()
    assert lin.weight.grad.is_conj()
    before = torch.view_as_real(lin.weight.grad.resolve_conj()).clone()
    conn.mask_gradients()
    g = torch.view_as_real(lin.weight.grad.resolve_conj())
    live = conn.masks["weight"]
    assert torch.equal(g[~live], torch.zeros(3, 2, dtype=g.dtype)) and not g[~live].signbit().any()
    assert before[~live].ne(0).any()  # there was something to mask
    bits = torch.int32 if g.dtype == torch.float32 else torch.int64  # live components untouched, bit for bit
    assert torch.equal(g[live].contiguous().view(bits), before[live].contiguous().view(bits))
