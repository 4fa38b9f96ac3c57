"""optimize_connectome on a sparse network (adaptive.mask_only_start): weights of exactly 0.0 are
absent from the start, never restored, and counted by the targets, which count every synapse."""
import copy
import re
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import adaptive
from adaptive import Connectome
from adaptive.mask_only import changed_from, changed_weights, check_targets, loaded_state, optimize_connectome
from adaptive.policies.crawl import Crawl

torch.set_num_threads(1)


def data(n=256, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 20, generator=g)
    y = (x[:, :4].sum(1) > 0).long()
    return DataLoader(TensorDataset(x, y), batch_size=32, shuffle=True, generator=torch.Generator().manual_seed(seed))


def mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(20, 32), nn.ReLU(), nn.Linear(32, 2))


def half_pruned(attached=True):
    """A model trained with an attached Connectome at half its synapses (pruned weights exactly 0.0)."""
    m = mlp()
    opt = torch.optim.Adam(m.parameters(), 1e-2)
    conn = Connectome(m).attach(opt)
    conn.set_masks({n: p.detach().abs() > p.detach().abs().flatten().median() for n, p in conn.params.items()})
    for x, y in data():
        F.cross_entropy(m(x), y).backward()
        opt.step()
        opt.zero_grad()
    if not attached:
        conn.detach()
    return m, conn


def nonzero(model):
    return sum(int(torch.count_nonzero(m.weight)) for m in model if isinstance(m, nn.Linear))


def optimize(model, target, **kw):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = optimize_connectome(model, data(), data(64, seed=1), target, progress=False,
                                  **{"passes": 2.0, "estimator": "taylor", **kw})
    return res, [str(w.message) for w in caught]


def test_a_sparse_start_never_restores_a_zero_so_the_removed_count_is_what_the_weights_say():
    # the taylor estimator's score of a zero weight is 0: before, swaps "restored" pruned zeros in
    # place of real weights, and 0.6 removed left 29% of the weights nonzero, not 40%
    m, conn = half_pruned()
    total = conn.num_synapses()
    res, said = optimize(m, [0.6, 0.7])
    zero = {n: w == 0 for n, w in res.conn.original.items()}
    for label, snap in res.snapshots.items():
        res.use(label)
        assert not any(bool((snap.masks[n] & zero[n]).any()) for n in zero), "a zero weight was restored"
        assert snap.removed == round(float(label) * total)
        assert nonzero(m) == total - snap.removed  # the count is what the pruned weights say
        assert changed_weights(res.conn) == 0
    assert any("starts from a sparse network" in s and f"{total // 2:,} of its {total:,}" in s
               and "pruned by the Connectome attached" in s for s in said)
    assert res.start_removed == total // 2


def test_a_target_below_what_is_already_absent_is_refused_and_leaves_the_model_as_it_was():
    m, conn = half_pruned()
    before = copy.deepcopy(m.state_dict())
    for target in (0.3, 0, [0.3, 0.6], 100):
        with pytest.raises(ValueError, match=r"already absent.*give a target of at least 352 synapses \(a fraction of at "
                                             r"least 0\.5\)"):
            optimize(m, target)
        with pytest.raises(ValueError, match="already absent"):
            check_targets(m, target)  # the recipes' check before any data is read
    assert all(torch.equal(v, before[k]) for k, v in m.state_dict().items())
    check_targets(m, [0.5, 0.6])


def test_a_target_at_the_start_keeps_the_start_with_no_stage_and_best_climbs_from_it():
    m, conn = half_pruned(attached=False)  # a plain model whose weights hold zeros: the same start
    total = conn.num_synapses()
    res, said = optimize(m, [0.5, 0.6])
    assert res.snapshots["0.5"].removed == total // 2 and res.snapshots["0.5"].step == 0  # no stage ran for it
    assert "attached" not in said[0]
    res, _ = optimize(m, "best", ladder=[0.2, 0.4, 0.6, 0.8])
    stages = {h["target"] for h in res.history if h["kind"] == "update"}
    assert stages == {"best"}
    assert min(h["removed"] for h in res.history if h["kind"] == "update") >= round(0.6 * total)  # 0.2, 0.4 skipped
    assert res.snapshots["best"].removed >= total // 2
    with pytest.raises(ValueError, match="every rung of the ladder"):
        optimize(m, "best", ladder=[0.2, 0.4])


def test_coarse_ensembles_are_absent_only_when_every_weight_is_zero():
    m = mlp()
    with torch.no_grad():
        m[0].weight[:8] = 0.0  # 8 whole neurons of 20 inputs
        m[0].weight[8, :5] = 0.0  # part of a ninth
    res, said = optimize(m, 0.3, ensemble="neuron")
    assert res.start_removed == 8 * 20
    assert "5 more weights of exactly 0.0 sit in 'neuron' ensembles" in said[0]
    assert not bool(res.snapshots["0.3"].masks["0.weight"][:8].any())


def test_the_pruned_state_dict_check_holds_on_a_sparse_start():
    m, _ = half_pruned(attached=False)
    loaded = loaded_state(m)
    res, _ = optimize(m, 0.7)
    res.use("0.7")
    assert changed_from(res.conn.dense_state_dict(), loaded, res.conn) == 0


def test_a_dense_model_starts_dense_and_warns_of_nothing():
    res, said = optimize(mlp(), 0.5)
    assert res.start_removed == 0 and not any("sparse" in s for s in said)
    assert res.controller.policy.restorable is None


def test_crawl_restores_only_restorable_ensembles():
    m = mlp()
    conn = Connectome(m, mode="mask_only")
    ctrl = adaptive.Controller(conn, policy="crawl", estimator="magnitude")
    masks = {n: torch.zeros_like(mk) for n, mk in conn.masks.items()}
    conn.set_masks(masks)
    policy: Crawl = ctrl.policy
    policy.restorable = {n: torch.zeros_like(mk) for n, mk in conn.masks.items()}
    policy.restorable["2.weight"][0, :3] = True
    policy.set_goal(10)
    plan = policy.update(ctrl, 0)
    assert sum(int(idx.numel()) for idx in plan.grow.values()) == 3  # only the restorable ones, short of the goal
    assert sorted(plan.grow["2.weight"].tolist()) == [0, 1, 2]


def test_a_dense_climb_keeps_a_rung_that_rounds_to_0_removed_as_before():
    # the sparse start's rung filter (rungs above the start) dropped it on a dense network too: its stage
    # went missing, and a ladder of such rungs alone was refused as "nothing to climb"
    res, _ = optimize(mlp(), "best", ladder=[0.0001, 0.3], patience=2)
    ends = [h for h in res.history if h["kind"] == "eval" and h["stage"] >= 0]
    assert [h["stage"] for h in ends] == [0, 1] and ends[0]["removed"] == 0
    res, _ = optimize(mlp(), "best", ladder=[0.0001])
    assert [h["stage"] for h in res.history if h["kind"] == "eval"] == [-1, 0]


def test_two_processes_start_alike_warn_once_and_refuse_weights_that_differ_together(tmp_path):
    """On two processes the start note is given once (process 0), and weights whose zeros differ between the
    processes are refused on both, naming each one's count (before, a target below one process's start only
    was refused there while the other went on to wait in its next collective); weights with as many zeros
    but another value on one process are refused too (they ran, mixing two networks)."""
    import json
    import os
    import sys

    here = os.path.dirname(os.path.abspath(__file__))
    sys.path.insert(0, here)
    from _ports import launch_two

    env = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    r = launch_two([os.path.join(here, "scripts", "two_process_sparse_start.py"), tmp_path], env=env)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    a, b = (json.loads((tmp_path / f"rank{i}.json").read_text()) for i in range(2))
    assert a["start_removed"] == b["start_removed"] == 320 and a["removed"] == b["removed"] == 352
    assert len(a["notes"]) == 1 and b["notes"] == []
    for rec in (a, b):
        assert "the weights differ between processes (process 0: 320 weights of exactly 0.0" in rec["differing"]
        assert "process 1: 576 weights of exactly 0.0, 576 synapses absent" in rec["differing"]
        assert "the weights differ between processes (as many zeros, other values: the state of the model" in \
            rec["other_values"], rec["other_values"]
        assert re.search(r"sha256 [0-9a-f]{16}\.\.\. on process 0, [0-9a-f]{16}\.\.\. on process 1\)", rec["other_values"])
    assert a["other_values"] == b["other_values"]


class _NoReads:
    """A loader with a length whose batches must not be read."""
    dataset = list(range(64))
    batch_size = 32

    def __len__(self):
        return 2

    def __iter__(self):
        raise AssertionError("a batch was read")


class _Unsized:
    """A holdout loader with no length: optimize_connectome asks it for its first batch."""
    def __iter__(self):
        raise AssertionError("a batch was read")


def test_best_whose_every_rung_is_below_a_sparse_start_is_refused_before_any_data_is_read():
    """It was refused only when the run was planned, after the holdout was asked for a batch (and, in the
    recipe, after the data had loaded): check_targets did not get the ladder."""
    m, _ = half_pruned(attached=False)
    before = copy.deepcopy(m.state_dict())
    with pytest.raises(ValueError, match="every rung of the ladder") as early:
        check_targets(m, "best", ladder=[0.2, 0.4])
    with pytest.raises(ValueError, match="every rung of the ladder") as run:
        optimize_connectome(m, _NoReads(), _Unsized(), "best", ladder=[0.2, 0.4], progress=False)
    assert str(early.value) == str(run.value)
    assert all(torch.equal(v, before[k]) for k, v in m.state_dict().items())
    assert check_targets(m, "best", ladder=[0.2, 0.6]) is None and check_targets(m, "best", ladder=[]) is None
    assert check_targets(m, "best") is None  # (without the ladder: as before)
    assert check_targets(mlp(), "best", ladder=[0.2]) is None  # a dense start climbs every rung


def test_the_smallest_fractions_a_sparse_start_refusal_names_are_accepted():
    """The fraction a refusal names as "at least" (a target below the start; a ladder none of whose rungs
    climbs above it) was the share absent at .6g, which can round down: 1,234,564 of 10,000,000 printed
    0.123456, which removes 1,234,560 and was refused; 500 of 1,000 said rungs "above 0.5", and 0.5004
    (above) removes 500, no more. Each figure printed is now accepted itself."""
    import re

    from adaptive.mask_only_start import Start, refuse_below_start
    from adaptive.mask_only_targets import resolve_target, rungs_above

    for absent, total in ((1_234_564, 10_000_000), (352, 704), (500, 1000), (2, 4)):
        start = Start({}, absent, total, absent)
        with pytest.raises(ValueError) as refused:
            refuse_below_start("0", 0, start)
        least = float(re.search(r"a fraction of at least ([0-9.e-]+)\)", str(refused.value)).group(1))
        refuse_below_start(str(least), resolve_target(least, total), start)  # accepted: no error
        with pytest.raises(ValueError) as none_climbs:
            rungs_above([absent / total], total, start)
        rung = float(re.search(r"fractions of at least ([0-9.e-]+) ", str(none_climbs.value)).group(1))
        assert rungs_above([rung], total, start) == [rung]
    with pytest.raises(ValueError, match=r"at least 0\.5\)"):  # the share absent, where it is exact
        refuse_below_start("0", 0, Start({}, 352, 704, 352))
    with pytest.raises(ValueError, match=r"one synapse is left, which a rung must keep: give a fixed target of 2"):
        rungs_above([0.5], 3, Start({}, 2, 3, 2))  # (no rung removes more and keeps one: no fraction to name)


def test_a_sparse_runs_interruption_note_says_its_zero_weights_stay_zero():
    """A refusal of the first training batch (labels beyond the head) on a sparse start said the original
    weights "(every synapse present)" were restored: the start's 352 zero weights are still absent."""
    m, _ = half_pruned(attached=False)
    before = copy.deepcopy(m.state_dict())
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 20, generator=g)
    bad = DataLoader(TensorDataset(x, torch.full((64,), 5)), batch_size=32)
    with pytest.raises(ValueError, match="go up to 5") as refused:
        optimize_connectome(m, bad, data(64, seed=1), 0.6, progress=False, passes=1.0)
    notes = " ".join(refused.value.__notes__)
    assert "original weights (as given: its 352 synapses of weights exactly 0.0 still 0.0) were restored" in notes
    assert "every synapse present" not in notes
    assert all(torch.equal(v, before[k]) for k, v in m.state_dict().items())


def test_the_least_fraction_named_for_a_nearly_empty_large_start_keeps_a_synapse():
    """At 6 significant figures the least fraction for a start of 1,999,998 absent of 2,000,000 rounded up to 1:
    "a fraction of at least 1" (and "a ladder with fractions of at least 1"), which is a count of one synapse as
    --remove 1 and removes every synapse as a fraction. More figures are given where 6 name none that keeps one,
    and the figure named is accepted."""
    import re

    from adaptive.mask_only_start import Start, refuse_below_start
    from adaptive.mask_only_targets import resolve_target, rungs_above

    for absent, total in ((1_999_998, 2_000_000), (999_999_997, 1_000_000_000), (1_999_999, 2_000_000)):
        start = Start({}, absent, total, absent)
        with pytest.raises(ValueError) as refused:
            refuse_below_start("0", 0, start)
        least = re.search(r"a fraction of at least ([0-9.e-]+)\)", str(refused.value)).group(1)
        assert "." in least and float(least) < 1, least
        refuse_below_start(least, resolve_target(float(least), total), start)  # accepted: no error
        if absent + 1 < total:
            with pytest.raises(ValueError) as none_climbs:
                rungs_above([0.5], total, start)
            rung = re.search(r"fractions of at least ([0-9.e-]+) ", str(none_climbs.value)).group(1)
            assert float(rung) < 1 and rungs_above([float(rung)], total, start) == [float(rung)], rung


def test_a_fraction_bound_is_the_last_figure_on_its_side_across_totals():
    """fraction_bound's figure is on the side it names and the next 6-figure fraction past it is not, for tiny
    (1, 2, 3) and huge (1e9) totals; a least figure keeps a synapse. Stepping from an edge on a power of ten
    (1.5 / 15 = 0.1, whose float product rounds up) went to 0.099999, skipping 0.0999999 .. 0.0999991."""
    from decimal import Decimal

    from hypothesis import given
    from hypothesis import strategies as st

    from _property import prop
    from adaptive.counts import fraction_bound

    def resolved(f, total):
        return int(round(float(f) * total))

    def beside(text, up):  # the next fraction of 6 significant figures above (or below) the figure printed
        d = Decimal(text)
        unit = Decimal(1).scaleb(d.adjusted() - 5)
        if not up and d == Decimal(1).scaleb(d.adjusted()):
            unit /= 10
        return d + unit if up else d - unit

    assert fraction_bound(1, 15, most=True) == "0.0999999"
    assert [fraction_bound(c, 3, most=True) for c in range(3)] == ["0.166666", "0.499999", "0.833333"]
    assert fraction_bound(0, 1, most=True) == "0.5" and fraction_bound(1, 1, most=False) == "0.500001"

    @prop(100)
    @given(st.one_of(st.integers(1, 4), st.integers(1, 10**6), st.integers(10**8, 10**10)), st.data())
    def check(total, data):
        count = data.draw(st.integers(0, total - 1))
        most = fraction_bound(count, total, most=True)
        assert resolved(most, total) <= count < resolved(beside(most, True), total), most
        if count:
            for share in (False, True):
                least = fraction_bound(count, total, most=False, share=share)
                assert count <= resolved(least, total) < total and float(least) < 1, least
                if not share and len(Decimal(least).normalize().as_tuple().digits) <= 6:
                    assert resolved(beside(least, False), total) < count, least

    check()


def test_a_second_call_on_a_model_an_earlier_call_pruned_names_that_call_and_how_to_give_its_weights_back():
    """optimize_connectome leaves the model with its result's masks (the pruned weights 0.0), so a second call on the
    same model (another seed, another target) starts from the first one's result: the start's note said only that
    the weights were exactly 0.0 and a smaller target's refusal said to "load the dense weights first", though the
    first result's connectome holds them. Both now name the earlier call and the fix; following it, the second call
    starts dense, and a call on the dense model says nothing of an earlier one."""
    m = mlp()
    first, _ = optimize(m, 0.3, passes=0.5)
    removed = first.snapshots["0.3"].removed
    second, said = optimize(m, 0.5, passes=0.5)
    note = next(w for w in said if "starts from a sparse network" in w)
    assert f"{removed:,} of them pruned by an earlier optimize_connectome" in note and "set_masks" in note, note
    with pytest.raises(ValueError, match=r"pruned by an earlier optimize_connectome.*result\.conn\.set_masks"):
        optimize(m, 0.1, passes=0.5)
    for res in (second, first):  # the fix: every mask of the earlier results 1 again
        res.conn.set_masks({n: torch.ones_like(k) for n, k in res.conn.masks.items()})
    third, said = optimize(m, 0.1, passes=0.5)
    assert third.start_removed == 0 and not any("sparse network" in w for w in said)


def test_zeros_a_model_came_with_are_not_said_to_be_an_earlier_calls_pruning():
    """A model that came with weights of exactly 0.0: a second call right after the first named every zero
    (those it came with among them) as pruned by the first call, and with the weights it came with loaded back
    it named the first call for the zeros it had never pruned, telling the user to give that call's weights
    back, which cannot restore them. Only the zeros the earlier call pruned are named now."""
    m = mlp()
    with torch.no_grad():
        m[0].weight[:, :3] = 0.0
    came = sum(int((v == 0).sum()) for k, v in m.state_dict().items() if k.endswith("weight"))
    given = {k: v.clone() for k, v in m.state_dict().items()}
    first, said = optimize(m, 0.3, passes=0.5)
    assert first.start_removed == came
    by_first = first.snapshots["0.3"].removed - came
    assert by_first > 0
    _, said = optimize(m, 0.5, passes=0.5)
    note = next(w for w in said if "starts from a sparse network" in w)
    assert f"{by_first:,} of them pruned by an earlier optimize_connectome" in note, note
    m.load_state_dict(given)
    back, said = optimize(m, 0.5, passes=0.5)
    note = next(w for w in said if "starts from a sparse network" in w)
    assert back.start_removed == came and "earlier optimize_connectome" not in note, note


def test_weights_loaded_since_an_earlier_call_are_not_said_to_be_its_pruning():
    """The record of an earlier optimize_connectome on a model named it for every zero its masks cover, even after
    other weights were loaded into the model (another run's pruned_state_dict.pt): the note then told the user to
    give the earlier result's weights back, which writes that call's frozen values into the weights loaded since.
    Only weights whose live values are still the ones the earlier call froze (a live one zeroed by hand aside) are
    now counted as its pruning; the dense weights loaded back count for none either."""
    m = mlp()
    dense = {k: v.clone() for k, v in m.state_dict().items()}
    first, _ = optimize(m, 0.3, passes=0.5)
    removed = first.snapshots["0.3"].removed
    with torch.no_grad():  # a live weight zeroed by hand: the others are still the earlier call's, and named so
        live = m[0].weight[first.conn.masks["0.weight"]]
        live[0] = 0.0
        m[0].weight[first.conn.masks["0.weight"]] = live
    _, said = optimize(m, 0.5, passes=0.5)
    assert any(f"{removed:,} of them pruned by an earlier optimize_connectome" in w for w in said), said
    m.load_state_dict(dense)  # the dense weights back: no zero, nothing to name
    back, said = optimize(m, 0.1, passes=0.5)
    assert back.start_removed == 0 and not any("sparse network" in w for w in said), said
    other = {k: v + 0.01 for k, v in dense.items()}  # another run's weights, half of each layer pruned by it
    for v in other.values():
        if v.dim() > 1:
            v[:, ::2] = 0
    m.load_state_dict(other)
    res, said = optimize(m, 0.6, passes=0.5)
    note = next(w for w in said if "starts from a sparse network" in w)
    assert res.start_removed == sum(int(v[:, ::2].numel()) for v in other.values() if v.dim() > 1)
    assert "earlier optimize_connectome" not in note and "set_masks" not in note, note
    del first


def test_a_synapse_weight_an_embedding_renormalises_is_refused_before_any_loader_is_read():
    """A head tied to an nn.Embedding(max_norm=...): the lookup renormalises the rows it reads in place at every
    forward, and a review's optimize_connectome changed 105 surviving synapses silently (invariant 2). Refused
    before any batch is read, naming the fix; with the head left out the run keeps every synapse as it was."""
    class LM(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb, self.mid, self.head = nn.Embedding(20, 8, max_norm=0.5), nn.Linear(8, 8), nn.Linear(8, 20, bias=False)
            self.head.weight = self.emb.weight

        def forward(self, t):
            return self.head(torch.relu(self.mid(self.emb(t).mean(1))))

    class Unread:
        def __len__(self):
            return 2

        def __iter__(self):
            raise AssertionError("a loader was read before the refusal")

    torch.manual_seed(0)
    with pytest.raises(ValueError, match=r"'head.weight' is also the weight of 'emb', an Embedding with max_norm=0.5.*"
                                         r"exclude=\['head'\]"):
        optimize_connectome(LM(), Unread(), Unread(), target=0.3, progress=False)
    data = [(torch.randint(0, 20, (4, 5)), torch.randint(0, 20, (4,))) for _ in range(6)]
    res = optimize_connectome(LM(), data, data[:2], target=0.3, exclude=["head"], progress=False)
    assert changed_weights(res.conn) == 0
