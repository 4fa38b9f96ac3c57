"""Ensemble granularities: pooling and expansion round-trip for every granularity and shape."""
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from adaptive.ensembles import Granularity, get_granularity, register_granularity

torch.set_num_threads(1)

SPECS = ["synapse", "kernel", "neuron", "block:1x1", "block:2x3", "block:4x4", "1:1", "2:4", "1:3", "3:8"]

# Linear (out, in) and conv (out, in_per_group, *kernel) weight shapes, 1-d to 3-d kernels.
dims = st.integers(1, 7)
weight_shapes = st.one_of(
    st.tuples(dims, dims),
    st.tuples(dims, dims, st.integers(1, 5)),
    st.tuples(dims, dims, st.integers(1, 3), st.integers(1, 3)),
    st.tuples(dims, dims, st.integers(1, 2), st.integers(1, 2), st.integers(1, 2)),
)
FAST = settings(max_examples=25, deadline=None)


def _rand(shape, seed):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


@FAST
@given(spec=st.sampled_from(SPECS), shape=weight_shapes, seed=st.integers(0, 2**16))
def test_expand_of_pooled_mask_is_constant_over_ensembles(spec, shape, seed):
    g = get_granularity(spec)
    emask = g.pool(_rand(shape, seed), "sum") > 0
    assert tuple(emask.shape) == g.ensemble_shape(shape)
    synapse_mask = g.expand(emask, shape)
    assert tuple(synapse_mask.shape) == shape and synapse_mask.dtype == torch.bool
    f = synapse_mask.float()
    assert torch.equal(g.pool(f, "max"), g.pool(f, "min"))  # constant over each ensemble
    assert g.violation(synapse_mask.contiguous()) is None or spec in ("2:4", "1:3", "3:8")
    assert torch.equal(g.pool(f, "max") > 0, emask)


@FAST
@given(spec=st.sampled_from(SPECS), shape=weight_shapes, seed=st.integers(0, 2**16))
def test_pool_max_of_expand_is_identity(spec, shape, seed):
    g = get_granularity(spec)
    x = _rand(g.ensemble_shape(shape), seed)
    y = g.expand(x, shape)
    assert torch.equal(g.pool(y, "max"), x)
    assert torch.equal(g.pool(y, "min"), x)
    assert torch.allclose(g.pool(y, "mean"), x, atol=1e-6)


@FAST
@given(spec=st.sampled_from(SPECS), shape=weight_shapes)
def test_ensemble_sizes_sum_to_numel(spec, shape):
    g = get_granularity(spec)
    sizes = g.ensemble_sizes(torch.Size(shape))
    assert tuple(sizes.shape) == g.ensemble_shape(shape)
    assert int(sizes.sum()) == math.prod(shape)
    assert bool((sizes >= 1).all())
    assert g.num_ensembles(shape) == sizes.numel()


@FAST
@given(spec=st.sampled_from(["synapse", "kernel", "neuron", "block:3x2"]), shape=weight_shapes, seed=st.integers(0, 2**16))
def test_pool_sum_matches_a_loop_free_reference(spec, shape, seed):
    """pool(x, "sum") equals summing x over the synapses that expand() assigns to each ensemble."""
    g = get_granularity(spec)
    x = _rand(shape, seed).double()
    n = g.num_ensembles(shape)
    ids = g.expand(torch.arange(n, dtype=torch.float64).reshape(g.ensemble_shape(shape)), shape).long()
    ref = torch.zeros(n, dtype=torch.float64).index_add_(0, ids.reshape(-1), x.reshape(-1))
    assert torch.allclose(g.pool(x, "sum").reshape(-1), ref)


@FAST
@given(
    nm=st.tuples(st.integers(1, 8), st.integers(1, 8)).filter(lambda t: t[0] <= t[1]),
    shape=weight_shapes,
    seed=st.integers(0, 2**16),
    with_ties=st.booleans(),
)
def test_nm_select_keeps_exactly_min_n_groupsize_per_group(nm, shape, seed, with_ties):
    n, m = nm
    g = get_granularity(f"{n}:{m}")
    scores = _rand(shape, seed)
    if with_ties:
        scores = scores.round().clamp(-1, 1)
        scores[scores < 0] = -math.inf  # real -inf scores must still beat the padding
    keep = g.select(scores)
    assert keep.shape == scores.shape and keep.dtype == torch.bool
    rest = math.prod(shape[1:])
    flat_keep = keep.reshape(shape[0], rest)
    flat_scores = scores.reshape(shape[0], rest)
    for start in range(0, rest, m):
        block = flat_keep[:, start : start + m]
        assert torch.equal(block.sum(1), torch.full((shape[0],), min(n, block.shape[1])))
        # every kept score is >= every dropped score of its group
        s = flat_scores[:, start : start + m]
        kept_min = torch.where(block, s, torch.full_like(s, math.inf)).min(1).values
        dropped_max = torch.where(~block, s, torch.full_like(s, -math.inf)).max(1).values
        assert bool((kept_min >= dropped_max).all())
    assert g.violation(keep) is None


@FAST
@given(shape=weight_shapes, k=st.integers(0, 400), seed=st.integers(0, 2**16))
def test_select_keeps_the_top_k_ensembles(shape, k, seed):
    g = get_granularity("synapse")
    scores = _rand(shape, seed).round()  # many ties
    keep = g.select(scores, k)
    assert int(keep.sum()) == min(k, scores.numel())
    if 0 < k < scores.numel():
        assert scores[keep].min() >= scores[~keep].max()
        # ties go to the lower index: deterministic on every process
        flat, kf = scores.reshape(-1), keep.reshape(-1)
        thr = flat[kf].min()
        tied = (flat == thr).nonzero().reshape(-1)
        kept_tied = kf[tied]
        assert torch.equal(kept_tied, kept_tied.sort(descending=True).values)


def test_kernel_is_the_kh_kw_weights_joining_two_channels():
    g = get_granularity("kernel")
    w = torch.arange(2 * 3 * 2 * 2, dtype=torch.float32).reshape(2, 3, 2, 2)
    assert g.ensemble_shape(w.shape) == (2, 3)
    assert torch.equal(g.pool(w, "sum"), w.sum((2, 3)))
    assert get_granularity("kernel").ensemble_shape((5, 4)) == (5, 4)  # Linear: a kernel is one weight


def test_block_edge_tiles_are_smaller_and_counted_exactly():
    g = get_granularity("block:4x4")
    sizes = g.ensemble_sizes(torch.Size((6, 5)))
    assert sizes.tolist() == [[16.0, 4.0], [8.0, 2.0]]
    x = torch.ones(6, 5)
    x[5, 4] = -3.0
    assert g.pool(x, "min")[1, 1] == -3.0 and g.pool(x, "max")[0, 0] == 1.0


def test_block_edge_tiles_pool_max_and_min_over_their_real_synapses_only():
    """An edge tile's max is its largest real score even where every one is negative (its padding
    must not pool in as a 0), and its min its smallest where every one is positive."""
    g = get_granularity("block:4x4")
    x = -torch.arange(1.0, 31.0).reshape(6, 5)  # all negative: edge tiles (4x1, 2x4, 2x1) hold -5, -21, -25 at most
    assert g.pool(x, "max").tolist() == [[-1.0, -5.0], [-21.0, -25.0]]
    assert g.pool(-x, "min").tolist() == [[1.0, 5.0], [21.0, 25.0]]


def test_violation_reports_a_mask_that_splits_an_ensemble():
    m = torch.ones(4, 3, 3, 3, dtype=torch.bool)
    m[0, 0, 1, 1] = False
    assert "kernel" in get_granularity("kernel").violation(m)
    assert "neuron" in get_granularity("neuron").violation(m)
    assert get_granularity("synapse").violation(m) is None
    assert "2" in get_granularity("2:4").violation(m)
    assert get_granularity("2:4").violation(torch.ones(4, 8, dtype=torch.bool)) is None  # dense layer
    three = torch.tensor([[True, True, True, False, True, True, False, False]])  # n + 1 live in one group
    assert "more than 2 live" in get_granularity("2:4").violation(three)


@pytest.mark.parametrize("spec, canonical", [
    ("synapse", "synapse"), ("unstructured", "synapse"), ("kernel", "kernel"), ("neuron", "neuron"),
    ("channel", "neuron"), ("filter", "neuron"), ("block:2x8", "block:2x8"), ("2:4", "2:4"), (" Kernel ", "kernel")])
def test_specs_parse(spec, canonical):
    """Each spec, an alias or a padded, capitalised one included, parses to the granularity it names."""
    g = get_granularity(spec)
    assert isinstance(g, Granularity) and g.spec == canonical and repr(g) == f"Granularity({canonical!r})"


@pytest.mark.parametrize(
    "spec, err, words",
    [
        ("blocks:2x2", ValueError, "unknown ensemble spec"),
        ("block:0x2", ValueError, "block sizes"),
        ("5:4", ValueError, "n <= m"),
        ("0:4", ValueError, "n >= 1"),
        ("", ValueError, "unknown ensemble spec"),
        (3, TypeError, "spec string"),
    ],
)
def test_bad_specs_raise_naming_the_problem(spec, err, words):
    with pytest.raises(err, match=words):
        get_granularity(spec)


def test_unknown_reduction_raises():
    with pytest.raises(ValueError, match="reduction"):
        get_granularity("neuron").pool(torch.ones(2, 2), "median")


def test_registry_accepts_a_new_granularity():
    class Row2(Granularity):
        spec = "rowpair"

        def ensemble_shape(self, shape):
            return (math.ceil(shape[0] / 2),)

        def pool(self, scores, how="sum"):
            return get_granularity("block:2x%d" % math.prod(scores.shape[1:])).pool(scores, how).reshape(-1)

        def expand(self, values, shape):
            return values.repeat_interleave(2)[: shape[0]].reshape(-1, *[1] * (len(shape) - 1)).expand(shape)

    register_granularity(r"rowpair")(lambda s: Row2())
    g = get_granularity("rowpair")
    assert g.ensemble_shape((5, 3)) == (3,)
    assert g.pool(torch.ones(5, 3), "sum").tolist() == [6.0, 6.0, 3.0]


def test_nm_keeps_at_most_n_of_a_shorter_last_group():
    """The README's claim: a row whose length is not a multiple of m ends in a shorter group that keeps
    at most n (all of it when it holds n or fewer): a 3x3 depthwise kernel under 2:4 keeps 2 + 2 + 1."""
    g = get_granularity("2:4")
    kernel = g.select(torch.rand(6, 1, 3, 3))
    assert kernel.flatten(1).sum(1).tolist() == [5] * 6
    assert g.violation(kernel) is None
    row7 = g.select(torch.rand(5, 7))  # groups of 4 and 3: the 3 keeps only 2
    assert row7.sum(1).tolist() == [4] * 5
    assert (row7[:, 4:].sum(1) == 2).all()
