"""The fast selection paths (int32 sort keys, a cut at the k-th value, unordered keep masks) select
exactly what a full stable sort selected before them: the same indices in the same order, ties by
index, NaN after +inf, for every size around the paths' thresholds."""

import pytest
import torch
from torch import nn

import adaptive
from adaptive.policies import base
from adaptive.policies.base import _keep_top, _smallest_k, highest, lowest, max_count, take_synapses

torch.set_num_threads(1)
INF = float("inf")


def ref_smallest(x, k):
    return torch.argsort(torch.nan_to_num(x, nan=INF), stable=True)[:k]


def ref_eligible(flat, ok, k):
    idx = ok.nonzero().squeeze(1)
    return idx[ref_smallest(flat[idx], max(0, min(k, idx.numel())))]


def _values(kind, n, g):
    if kind == "randn":
        return torch.randn(n, generator=g)
    if kind == "ties":
        return torch.randint(0, 7, (n,), generator=g).float()
    if kind == "fewties":  # many distinct values, each repeated a few times
        return torch.randint(0, max(2, n // 3), (n,), generator=g).float()
    if kind == "zeros":  # -0.0 and +0.0 compare equal: ties by index
        return torch.where(torch.rand(n, generator=g) < 0.5, torch.tensor(0.0), torch.tensor(-0.0))
    if kind == "const":
        return torch.full((n,), 1.5)
    x = torch.randint(-3, 4, (n,), generator=g).float()
    r = torch.rand(n, generator=g)
    if kind == "special":  # +-inf, NaN and the largest floats (which tie with +-inf before sorting)
        big = torch.finfo(torch.float32).max
        x = torch.where(r < 0.1, torch.tensor(INF), x)
        x = torch.where((r >= 0.1) & (r < 0.2), torch.tensor(float("nan")), x)
        x = torch.where((r >= 0.2) & (r < 0.25), torch.tensor(-INF), x)
        x = torch.where((r >= 0.25) & (r < 0.3), torch.tensor(big), x)
        x = torch.where((r >= 0.3) & (r < 0.35), torch.tensor(-big), x)
        x = torch.where((r >= 0.35) & (r < 0.4), torch.tensor(-0.0), x)
        return x
    if kind == "mostlynan":
        return torch.where(r < 0.9, torch.tensor(float("nan")), x)
    if kind == "allnan":
        return torch.full((n,), float("nan"))
    raise ValueError(kind)


KINDS = ["randn", "ties", "fewties", "zeros", "const", "special", "mostlynan", "allnan"]


def _ks(n):
    ks = {0, 1, 2, 3, n // 8 - 1, n // 8, n // 8 + 1, n // 3, n // 2, n - 1, n, n + 5, 2047, 2048, 2049}
    return sorted(k for k in ks if k >= 0)


def _check(x, k):
    want = ref_smallest(x, k)
    got = _smallest_k(x, k)
    assert torch.equal(got, want), (x.numel(), k, x.dtype)
    unordered = _smallest_k(x, k, ordered=False)
    assert torch.equal(unordered.sort().values, want.sort().values), (x.numel(), k, x.dtype)


@pytest.mark.parametrize("n", [1, 2, 5, 255, 256, 257, 1000, 2048, 4097, 16384, 32767, 32768, 32769, 70000])
@pytest.mark.parametrize("kind", KINDS)
def test_smallest_k_matches_a_full_stable_sort(n, kind):
    g = torch.Generator().manual_seed(n * 31 + KINDS.index(kind))
    x = _values(kind, n, g)
    for k in _ks(n):
        _check(x, k)
        _check(-x, k)  # what highest() passes


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("kind", ["randn", "ties", "special", "zeros"])
def test_smallest_k_other_float_dtypes(dtype, kind):
    g = torch.Generator().manual_seed(7)
    for n in [300, 5000, 40000]:
        x = _values(kind, n, g).to(dtype)
        for k in [1, n // 10, n // 8 + 1, n // 2, n - 1]:
            _check(x, k)


def test_smallest_k_random_sizes_and_ks():
    g = torch.Generator().manual_seed(0)
    for t in range(60):
        n = int(torch.randint(1, 120_000, (1,), generator=g))
        kind = KINDS[t % len(KINDS)]
        x = _values(kind, n, g)
        for k in torch.randint(0, n + 2, (4,), generator=g).tolist() + [int(torch.randint(0, max(1, n // 8), (1,), generator=g))]:
            _check(x, k)


@pytest.mark.parametrize("kind", ["ties", "fewties", "special"])
def test_smallest_k_around_one_million(kind):
    """Both sides of the 2**20 threshold, the topk cut (k <= 2048) with ties at the k-th value
    included (topk alone picks an arbitrary one of tied entries), and the sampled bracket."""
    g = torch.Generator().manual_seed(3)
    for n in [(1 << 20) - 3, (1 << 20) + 3]:
        x = _values(kind, n, g)
        if kind == "fewties":
            x = torch.randint(0, 1500, (n,), generator=g).float()  # ~700 entries per value
        for k in [1, 777, 2048, 2049, 100_000, n // 2]:
            _check(x, k)


def test_lowest_and_highest_with_eligibility_match_the_reference():
    g = torch.Generator().manual_seed(1)
    for n in [10, 600, 9000, 50000]:
        for kind in ["ties", "special", "randn", "zeros"]:
            x = _values(kind, n, g)
            ok = torch.rand(n, generator=g) < 0.5
            for k in [0, 1, n // 20, n // 4, n // 2, n]:
                assert torch.equal(lowest(x, ok, k), ref_eligible(x, ok, k))
                assert torch.equal(highest(x, ok, k), ref_eligible(-x, ok, k))
                assert torch.equal(lowest(x, ok, k, ordered=False).sort().values, ref_eligible(x, ok, k).sort().values)


# --------------------------------------------------------------------------- keep_plan
def old_keep_top(scores, size, budget):
    """keep_plan's top() before the fast path: an ordered top-k by a full stable sort, then
    take_synapses's prefix."""
    flat = scores.reshape(-1)
    order = ref_eligible(-flat, torch.ones_like(flat, dtype=torch.bool), max_count(size, budget, flat.numel()))
    k = torch.zeros(flat.numel(), dtype=torch.bool)
    k[take_synapses(order, size, budget)] = True
    return k


def test_keep_top_matches_the_ordered_reference():
    g = torch.Generator().manual_seed(2)
    for n in [1, 3, 100, 5000, 60000]:
        for kind in ["randn", "ties", "special", "const", "allnan"]:
            s = _values(kind, n, g)
            uneven = (torch.randint(1, 10, (n,), generator=g)).float()
            for size in [1.0, 4.0, 9.0, uneven]:
                total = n * (size if isinstance(size, float) else float(size.mean()))
                for frac in [0.0, 1e-4, 0.1, 0.5, 0.93, 1.0, 1.2]:
                    budget = frac * total
                    ranked = base.per_synapse(s, size)
                    assert torch.equal(_keep_top(ranked, size, budget), old_keep_top(ranked, size, budget)), (n, kind, frac)


def _net():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 10, 3, padding=1), nn.Flatten(),
                        nn.Linear(10 * 4 * 4, 33), nn.ReLU(), nn.Linear(33, 10))
    with torch.no_grad():  # ties everywhere: magnitudes on a coarse grid
        for p in net.parameters():
            p.copy_((p * 8).round() / 8)
    return net


@pytest.mark.parametrize("ensemble", ["synapse", "kernel", "neuron", "block:3x5", "2:4"])
@pytest.mark.parametrize("budget", ["uniform", "global", "erk"])
def test_keep_plan_unchanged(monkeypatch, ensemble, budget):
    """Initial sparse plans (keep_plan at construction) and later keep plans with growth are the
    same masks and orders as with the old ordered top-k."""
    def build():
        net = _net()
        conn = adaptive.Connectome(net, ensemble=ensemble)
        ctrl = adaptive.Controller(conn, policy="magnitude",
                                   density=0.5 if ensemble == "2:4" else 0.4, budget=budget, init="magnitude",
                                   update_every=10**6, end_step=10**7, seed=0)
        return conn, ctrl

    def snapshot():
        conn, ctrl = build()
        masks = {n: m.clone() for n, m in conn.masks.items()}
        g = torch.Generator().manual_seed(5)
        scores = {n: (torch.randint(0, 5, conn.granularities[n].ensemble_shape(conn.layers[n].shape), generator=g)
                      .float()) for n in ctrl.editable()}
        plans = [ctrl.keep_plan(scores, d, allow_grow=True) for d in (0.1, 0.3, 0.55)]
        return masks, [(dict(p.prune), dict(p.grow)) for p in plans]

    new_masks, new_plans = snapshot()
    monkeypatch.setattr(base, "_keep_top", old_keep_top)
    monkeypatch.setattr(base, "_smallest_k", lambda x, k, ordered=True: ref_smallest(x, k))
    old_masks, old_plans = snapshot()
    assert new_masks.keys() == old_masks.keys()
    for n in new_masks:
        assert torch.equal(new_masks[n], old_masks[n]), n
    for (np_, ng), (op, og) in zip(new_plans, old_plans):
        assert np_.keys() == op.keys() and ng.keys() == og.keys()
        for n in np_:
            assert torch.equal(np_[n], op[n]), n
        for n in ng:
            assert torch.equal(ng[n], og[n]), n


@pytest.mark.parametrize("k", [5000, 5005])
def test_smallest_k_of_all_of_a_float32_input_sorts_int32_keys(monkeypatch, k):
    """Asking for every entry (a crawl jump or rigl ordering every live synapse) sorted floats
    stably, several times slower than the int32 keys the other paths sort (resnet50: 8.7 s of a
    24 s mask-only update); the result is the same indices in the same order."""
    g = torch.Generator().manual_seed(5)
    x = _values("special", 5000, g)
    want = ref_smallest(x, k)
    sorted_dtypes = []
    real = torch.argsort

    def spy(t, *args, **kwargs):
        sorted_dtypes.append(t.dtype)
        return real(t, *args, **kwargs)

    monkeypatch.setattr(torch, "argsort", spy)
    got = _smallest_k(x, k)
    assert torch.equal(got, want)
    assert sorted_dtypes == [torch.int32]


def test_synapse_counts_of_mixed_ensembles_are_exact_past_float32s_whole_numbers():
    """Ensembles of several sizes (kernels beside single weights) were counted in float32, which holds
    halves only below 2**23 (8.4 million) and whole numbers only below 2**24: take_synapses' ``cumsum -
    s/2`` rounded 8,499,999.5 up and took one single-weight ensemble too few of an 8.5-million budget (off
    by a whole ensemble where half is the promise; past 2**24 a GPU's float32 cumsum stops growing). In
    float64 now, each count is exact; budgets under 2**23 come out as before."""
    from adaptive.policies.base import live_synapses, size_sum

    n = 8_600_000
    size = torch.ones(n)
    size[:10] = 9.0  # ten 3x3 kernels, then single weights
    idx = torch.arange(n)
    for budget in (90, 1000, 8_500_000):
        took = take_synapses(idx, size, budget)
        assert 10 + budget - 90 == took.numel(), budget  # every synapse of the budget, none over
    assert live_synapses(size, torch.ones(n, dtype=torch.bool)) == size_sum(size, idx) == n + 80


def test_take_synapses_counts_in_float64_without_a_float64_copy_of_every_size():
    """Counting in float64 widened every ensemble's size before taking the ranked ones, then made four float64
    tensors of those (the taken sizes, the cumsum, the halves, the difference): twice float32's memory (800 MB
    against 400 MB at 25 million ensembles). The taken sizes are widened after the take and the half subtracted
    in place: two float64 tensors of the taken sizes at most, whatever the number of sizes left out."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Float64Bytes(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.bytes = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            fresh = [t for t in (out if isinstance(out, (tuple, list)) else [out]) if isinstance(t, torch.Tensor)
                     and t.dtype == torch.float64 and not any(t is a for a in args)]  # (an in-place op returns its input)
            self.bytes += sum(t.numel() * 8 for t in fresh)
            return out

    size = torch.ones(10_000)
    size[:100] = 9.0
    idx = torch.arange(0, 10_000, 10)  # 1,000 ranked ensembles of 10,000
    with Float64Bytes() as mode:
        took = take_synapses(idx, size, 500)
    assert took.numel() == 10 + 410  # ten 9-synapse kernels, then 410 single weights
    assert mode.bytes <= 2 * 8 * idx.numel(), mode.bytes


@pytest.mark.parametrize("kind", ["randn", "ties", "fewties", "zeros", "special", "mostlynan"])
@pytest.mark.parametrize("n, shares", [((1 << 16) + 1001, (0.5, 0.97)), ((1 << 20) + 4097, (0.05, 0.5, 0.97))])
def test_eligible_selection_of_a_large_input_without_gathering_matches_the_reference(kind, n, shares, monkeypatch):
    """Past 2**16 entries, lowest/highest bracket the k-th eligible value without gathering the eligible
    entries (base._bracketed_eligible): the same indices as the gathering reference, in its order where
    ordered, for sparse and dense eligibility, both sides, with ties, +-inf, NaN and the largest floats;
    where the bracket cannot be used (it reaches NaN or inf) the gathering path answers instead."""
    g = torch.Generator().manual_seed(11 + KINDS.index(kind) + n)
    x = _values(kind, n, g)
    if kind == "fewties":
        x = torch.randint(0, 1500, (n,), generator=g).float()
    answered = []
    bracketed = base._bracketed_eligible

    def counted(*a, **kw):
        out = bracketed(*a, **kw)
        answered.append((a[2] == a[3] - 1) or out is not None)  # (k, count): all but one may miss the sample's top
        return out

    monkeypatch.setattr(base, "_bracketed_eligible", counted)
    tries = 0
    for share in shares:
        ok = torch.rand(n, generator=g) < share
        idx = ok.nonzero().squeeze(1)
        count = idx.numel()
        for pick, sign in ((lowest, 1.0), (highest, -1.0)):
            order = idx[ref_smallest(sign * x[idx], count)]  # the whole eligible order, prefixes below
            for k in (2049, count // 20, count // 2, count - 1):
                tries += 2 * (k > 2048)  # (up to 2048 a topk of the gathered entries is the faster path)
                assert torch.equal(pick(x, ok, k), order[:k]), (share, k, pick.__name__)
                got = pick(x, ok, k, ordered=False)
                assert torch.equal(got.sort().values, order[:k].sort().values), (share, k, pick.__name__)
    assert len(answered) == tries  # tried at every selection of over 2048
    if kind in ("randn", "ties", "fewties", "zeros"):  # finite values: the bracket answers below the top
        assert all(answered), answered


def test_eligibility_given_as_numbers_selects_as_the_same_eligibility_as_bool():
    """lowest/highest take ``eligible`` as bool; given as 0/1 numbers (float, uint8, int64) they select what the
    same bool eligibility selects, as before the bracket (which reads bool only, and leaves the others to the
    gathering path)."""
    g = torch.Generator().manual_seed(5)
    n = (1 << 16) + 333
    x = torch.randn(n, generator=g)
    ok = torch.rand(n, generator=g) < 0.5
    for dtype in (torch.float32, torch.uint8, torch.int64):
        for pick in (lowest, highest):
            for ordered in (True, False):
                want, got = pick(x, ok, 10_000, ordered=ordered), pick(x, ok.to(dtype), 10_000, ordered=ordered)
                if not ordered:  # (an unordered selection's order is the path's own)
                    want, got = want.sort().values, got.sort().values
                assert torch.equal(got, want), (dtype, pick.__name__, ordered)


def test_the_kth_value_comes_from_topk_which_a_descending_input_does_not_slow(monkeypatch):
    """torch.kthvalue takes time quadratic in n on a descending input for k well below n/2 (30 s for 2**20
    entries at k = n/8; ``highest`` of ascending scores is that case): the k-th value of a cut, and of the
    fallback where a large input's bracket misses, comes from topk. Here kthvalue may not be called at all,
    and the selections equal the reference's."""
    def refused(*a, **k):
        raise AssertionError("torch.kthvalue is quadratic on a descending input")

    monkeypatch.setattr(torch, "kthvalue", refused)
    n = (1 << 17) + 5
    desc = torch.linspace(1.0, 0.0, n)
    for k in (2049, n // 8, n // 9):
        assert torch.equal(_smallest_k(desc, k), ref_smallest(desc, k)), k
        assert torch.equal(highest(-desc, torch.ones(n, dtype=torch.bool), k), ref_smallest(desc, k)), k
    # past 2**20 entries: every fourth entry (the strided sample's) far above the others, so the sampled
    # bracket misses and the exact k-th value answers
    g = torch.Generator().manual_seed(3)
    x = torch.rand((1 << 20) + 3, generator=g)
    x[::4] += 10.0
    k = x.numel() // 2
    assert torch.equal(_smallest_k(x, k), ref_smallest(x, k))
    assert torch.equal(_smallest_k(x, k, ordered=False).sort().values, ref_smallest(x, k).sort().values)


@pytest.mark.parametrize("kind", ["randn", "ties", "special"])
def test_growth_from_ranked_candidates_is_the_selection_made_again(kind):
    """balanced grows for the pairs worth swapping from the candidates it ranked for all its prunes (the
    prefix of an ordered top-k) instead of selecting again over every absent ensemble: the same indices in the
    same order, ties by index and NaN last; a ranked list too short, unordered, or a count off its target
    (need != freed) selects again."""
    from adaptive.policies.swap import grow_candidates

    g = torch.Generator().manual_seed(5)
    for n in (300, 70_000):
        gain = _values(kind, n, g)
        a = torch.rand(n, generator=g) < 0.5
        p_all = a.nonzero().squeeze(1)[: n // 10]
        ranked = grow_candidates(gain, a, 1.0, p_all, None, True)
        assert torch.equal(ranked, highest(gain, ~a, p_all.numel()))
        live = float(torch.count_nonzero(a))
        for m in (0, 1, p_all.numel() // 3, p_all.numel()):
            p = p_all[:m]
            again = grow_candidates(gain, a, 1.0, p, live, True)
            assert torch.equal(grow_candidates(gain, a, 1.0, p, live, True, ranked=ranked), again)
        # off target (two more live synapses wanted): one for one no longer holds, the selection is made again
        p = p_all[:5]
        assert grow_candidates(gain, a, 1.0, p, live + 2, True, ranked=ranked).numel() == 7
        assert torch.equal(grow_candidates(gain, a, 1.0, p_all, None, True, ranked=ranked[:3]), ranked)


def test_keep_top_of_every_ensemble_keeps_them_all():
    """A budget holding every ensemble (a gradual schedule's first update, at density 1) keeps them all without
    a selection over them: the same mask as the selection gave."""
    x = torch.randn(5000)
    for budget in (5000.0, 4999.6, 1e9):
        assert bool(_keep_top(x, 1.0, budget).all())
    assert int(_keep_top(x, 1.0, 4999.4).sum()) == 4999
