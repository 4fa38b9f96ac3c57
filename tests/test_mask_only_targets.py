"""adaptive.mask_only_targets: targets that would silently give back the starting network, and targets
given as NumPy arrays, tensors or other collections, on a tiny model (a few seconds)."""
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from adaptive.mask_only import check_targets, optimize_connectome, resolve_target

torch.set_num_threads(1)


class Net(nn.Module):
    """A conv of 4 neurons of 27 synapses and a linear head of 3 neurons of 4: 120 synapses."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        return self.fc(F.adaptive_avg_pool2d(F.relu(self.conv(x)), 1).flatten(1))


def net():
    torch.manual_seed(0)
    return Net()


class Counted:
    """A train loader that counts the batches read from it."""

    def __init__(self, loader):
        self.loader, self.read = loader, 0

    def __len__(self):
        return len(self.loader)

    def __iter__(self):
        for batch in self.loader:
            self.read += 1
            yield batch


def data():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(32, 3, 5, 5, generator=g), torch.arange(32) % 3
    return Counted(DataLoader(TensorDataset(x, y), batch_size=8)), DataLoader(TensorDataset(x[:16], y[:16]), batch_size=8)


def _run(model, target, **kw):
    train, holdout = data()
    try:
        return optimize_connectome(model, train, holdout, target, passes=0.5, progress=False, **kw)
    finally:
        _run.read = train.read


def _refused(target, match, **kw):
    """``target`` is refused by optimize_connectome (before a training batch is read, the model
    bit-identical) and by check_targets (what the recipes call before any data is read) alike."""
    model = net()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=match) as api:
        _run(model, target, **kw)
    assert _run.read == 0
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    with pytest.raises(ValueError) as early:
        check_targets(net(), target, ensemble=kw.get("ensemble", "synapse"), include=kw.get("include"))
    assert str(early.value) == str(api.value)
    return str(api.value)


def test_a_positive_target_that_rounds_to_no_synapse_is_refused_naming_the_least_fraction():
    """A fraction of 1e-9 (or any that rounds to 0 of the model's synapses) ran, removed nothing and
    gave the dense network as its snapshot, silently. Refused now, naming the least fraction (and count)
    that removes one synapse; among several targets, which one and where it stands. 0 stays the dense
    network, as documented."""
    msg = _refused(1e-9, r"target 1e-09 asks for round\(1e-09 x 120\) = 0 of the model's 120 prunable synapses, so "
                         r"its snapshot would be the dense network, unchanged")
    least = re.search(r"a fraction of at least ([0-9.e-]+) or a count of at least 1\b", msg).group(1)
    assert resolve_target(float(least), 120) == 1 and "give 0" in msg
    _refused([0.5, 1e-9], r"^target 2 of 2 \(1e-09\) in \[0.5, 1e-09\]: target 1e-09 asks for .* = 0 .*or leave that "
                          r"target out$")
    _refused([np.float32(1e-9), 0.5], r"^target 1 of 2 \(1e-09\)")
    res = _run(net(), [0, float(least)])
    assert {k: s.removed for k, s in res.snapshots.items()} == {"0": 0, least: 1}


def test_a_positive_target_below_half_a_coarse_ensemble_is_refused_naming_the_least_that_removes_one():
    """With neurons of 4 and 27 synapses, a stage removes whole neurons, the nearest to its count: a
    count of 1 (or a fraction rounding to it) removed none, and its snapshot was the dense network.
    The least that removes one (2: half the smallest, a tie the stage's last update settles by pruning) is
    named, and does."""
    for target, given in ((1, "1"), (0.01, "round\\(0.01 x 120\\) = 1")):
        msg = _refused(target, rf"asks for {given} of the model's 120 prunable synapses, but its 'neuron' ensembles "
                               rf"hold 4 to 27 synapses each .*: it would remove none, so its snapshot would be "
                               r"the dense network, unchanged\. Give a fraction of at least [0-9.]+ or a count of at "
                               r"least 2 \(the least that removes one ensemble\)", ensemble="neuron")
    least = re.search(r"a fraction of at least ([0-9.]+)", msg).group(1)
    assert _run(net(), 2, ensemble="neuron").snapshots["2"].removed == 4  # one neuron of the head
    assert _run(net(), 3, ensemble="neuron").snapshots["3"].removed == 4
    assert _run(net(), float(least), ensemble="neuron").snapshots[least].removed == 4
    # ensembles of one size: half of one, rounded up, removes one (2 of kernels of 9 synapses refused, 5 not)
    conv_only = dict(ensemble="kernel", include="conv")
    _refused(4, r"'kernel' ensembles hold 9 synapses each .*a count of at least 5 ", **conv_only)
    assert _run(net(), 5, **conv_only).snapshots["5"].removed == 9


def test_beyond_a_sparse_start_a_target_must_remove_one_more_ensemble():
    """On a sparse start (a neuron of the head all 0.0: 4 synapses absent), a target equal to the start keeps
    it, as documented; one a synapse beyond it with neuron ensembles removed nothing more, silently."""
    model = net()
    with torch.no_grad():
        model.fc.weight[0] = 0.0
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(  # (refused before the sparse start's note)
            ValueError, match=r"target 5 asks for 5 of .*\(1 beyond the 4 already absent\).*would be the starting "
                              r"network, unchanged.*a count of at least 6 \(the least that removes one ensemble beyond "
                              r"the start\); for the starting network itself give 4"):
        _run(model, 5, ensemble="neuron")
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    with pytest.warns(UserWarning, match="sparse network"):
        res = _run(model, [4, 6], ensemble="neuron")  # (6: half a neuron of 4 beyond the start, a tie pruned)
    assert {k: s.removed for k, s in res.snapshots.items()} == {"4": 4, "6": 8}


def test_targets_as_arrays_and_tensors_are_lists_and_other_collections_are_refused_clearly():
    """A 1-D NumPy array or tensor of targets failed deep inside ('only 0-dimensional arrays can be
    converted'), a 0-d array was refused as no number, and a set, a generator or a None among the targets
    failed with int()'s TypeError; now the array is the list it holds and the rest are refused by name."""
    for target in (np.array([0.25, 0.5]), torch.tensor([0.25, 0.5]), [np.array(0.25), np.float64(0.5)]):
        res = _run(net(), target)
        assert {k: s.removed for k, s in res.snapshots.items()} == {"0.25": 30, "0.5": 60}
    assert _run(net(), np.array(7)).snapshots["7"].removed == 7
    for target in ({0.25, 0.5}, (t for t in [0.25]), {"a": 0.25}, np.array([[0.25]])):
        with pytest.raises(ValueError, match=r"give one target .* or a list of them"):
            _run(net(), target)
    with pytest.raises(ValueError, match=r"^target 1 of 2 \(None\) in \[None, 0.5\]: target None: give a fraction"):
        _run(net(), [None, 0.5])
    with pytest.raises(ValueError, match=r"target 2 of 2 \(\[0.1\]\).*give a fraction"):
        check_targets(net(), [0.5, [0.1]])


def test_exactly_half_the_smallest_of_several_sizes_removes_one_and_is_not_refused():
    """A target exactly half the smallest ensemble, with ensembles of several sizes, was refused as one that 'may
    remove none': pruning took such an ensemble only where it came first in the estimator's order (Crawl._cover
    with ties), as the last update's fill took only what brought the count strictly nearer. The fill settles
    the tie by pruning too now, so it removes one whatever the order; under half, none whatever the order."""
    from adaptive.mask_only_targets import EnsembleStep, refuse_removing_nothing
    from adaptive.policies.crawl import Crawl

    sizes = torch.tensor([4, 27], dtype=torch.int32)
    assert Crawl._cover(torch.tensor([0, 1]), sizes, 2) == 1 and Crawl._cover(torch.tensor([1, 0]), sizes, 2) == 0
    assert Crawl._fill(torch.tensor([1, 0]), sizes, 2).tolist() == [0]  # the last update's fill takes it
    step = EnsembleStep(4, 27, "neuron")
    assert step.least == 2
    refuse_removing_nothing("2", 2, 2, 120, 0, step)  # exactly half: not refused
    with pytest.raises(ValueError, match=r"it would remove none, so its snapshot would be the starting network"):
        refuse_removing_nothing("5", 5, 5, 120, 4, step)  # 1 beyond the start: under half of 4
    refuse_removing_nothing("6", 6, 6, 120, 4, step)  # 2 beyond the start: exactly half


def test_two_targets_the_ensembles_cannot_tell_apart_are_refused_naming_the_least_that_differs():
    """With neurons of 4 synapses (the head, ``include="fc"``: 12 synapses), targets 4 and 5 both removed one
    neuron, and 3 and 5 too (each the nearest whole neuron): two snapshots of one network under two names,
    silently. Refused now, naming both targets, what they remove and the least count that removes one neuron
    more; 4 and 6 (a tie settled by pruning) are two networks. With ensembles of several sizes, two targets
    within half the smallest of each other are refused (the later stage may remove none)."""
    head = dict(ensemble="neuron", include="fc")
    for pair in ([4, 5], [5, 3]):
        lo, hi = sorted(pair)
        _refused(pair, rf"^targets {lo} and {hi} ask for {lo} and {hi} of the model's 12 prunable synapses, but its "
                       r"'neuron' ensembles hold 4 synapses each .*: both would remove 4, so their snapshots would be "
                       rf"one network\. Give target {hi} as a count of at least 6 or a fraction of at least [0-9.]+ "
                       rf"\(the least that removes one ensemble more than target {lo}, which removes 4\); or leave "
                       r"one of them out$", **head)
    res = _run(net(), [4, 6], **head)
    assert {k: s.removed for k, s in res.snapshots.items()} == {"4": 4, "6": 8}
    _refused([30, 0.26], r"^targets 30 and 0.26 ask for 30 and round\(0.26 x 120\) = 31 .*'neuron' ensembles hold 4 "
                         r"to 27 synapses each .*they are 1 apart, .*may remove none and their snapshots may be one "
                         r"network\. Give target 0.26 as a count of at least 32 ", ensemble="neuron")


def test_refusals_write_counts_with_separators_and_the_count_to_give_plain():
    """The refusals of a target count synapses with thousands separators, as the console does
    (268,336; they printed 268336 while the console said 268,336), while a count the message asks the
    user to give stays plain, to paste as it stands (--remove 268335)."""
    from adaptive.mask_only_start import Start, refuse_below_start
    from adaptive.mask_only_targets import EnsembleStep, ladder_counts, refuse_indistinct, refuse_removing_nothing

    def said(call, *a):
        with pytest.raises(ValueError) as e:
            call(*a)
        return str(e.value)

    assert said(resolve_target, 300_000, 268_336) == (
        "target of 300,000 synapses to remove is beyond the model's 268,336 prunable synapses: give a count below 268336")
    msg = said(resolve_target, 0.9999999, 268_336)
    assert msg.startswith("target fraction 0.9999999 removes round(0.9999999 x 268,336) = 268,336 synapses, every one "
                          "of the model's 268,336 prunable synapses") and msg.endswith(", or a count below 268336")
    assert "x 268,336) = 268,336 synapses, every one of the model's 268,336" in said(ladder_counts, [0.5, 0.9999999], 268_336)
    step = EnsembleStep(2304, 2304, "kernel")  # ensembles of 2,304 synapses: a stage removes at least 1,152 of them
    msg = said(refuse_removing_nothing, "1000", 1000, 1000, 268_336, 0, step)
    assert "asks for 1,000 of the model's 268,336 prunable synapses, but its 'kernel' ensembles hold 2,304 synapses" in msg
    assert "or a count of at least 1152 (the least" in msg
    msg = said(refuse_indistinct, [("10000", 10_000), ("10300", 10_300)], {"10000": 10_000, "10300": 10_300},
               268_336, 0, step)
    assert "ask for 10,000 and 10,300 of the model's 268,336 prunable synapses" in msg and "both would remove 9,216" in msg
    assert "Give target 10300 as a count of at least 10368 or" in msg
    start = Start({}, absent=12_345, total=268_336, zeros=12_345)
    msg = said(refuse_below_start, "5000", 5000, start)
    assert "removes 5,000 of the model's 268,336 prunable synapses, but 12,345 (4.6%) are already absent" in msg
    assert "give a target of at least 12345 synapses" in msg


def test_a_rung_that_removes_exactly_the_absent_synapses_of_a_sparse_start_is_not_climbed():
    """On a sparse start, target "best" climbs only the rungs that remove more than is already absent: a
    rung removing exactly that many is the start itself (already the first candidate), so a ladder of
    only such a rung has nothing to climb and is refused."""
    from types import SimpleNamespace

    from adaptive.mask_only_targets import rungs_above

    start = SimpleNamespace(absent=25)
    assert rungs_above([0.25, 0.5], 100, start) == [0.5]
    with pytest.raises(ValueError, match="removes no more than the 25 of 100 synapses"):
        rungs_above([0.1, 0.25], 100, start)


def test_two_targets_that_end_on_one_network_are_warned_of():
    """Targets 55 and 66 with neurons of 20 and 16 synapses are more than half the smallest ensemble apart, so
    not refused, yet both stages ended at 60 removed on the same masks: one network under two names, silently
    (a review's sweep found 18 of 40 random pairs 8-12 apart alike). The run warns of it now, naming both
    targets and the distance that keeps two apart; targets that end apart are not warned of."""
    import warnings

    torch.manual_seed(0)
    x, w = torch.randn(256, 20), torch.randn(20, 4)
    y = (x @ w).argmax(1)
    model = nn.Sequential(nn.Linear(20, 16), nn.ReLU(), nn.Linear(16, 4))
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    for _ in range(30):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    xh = torch.randn(96, 20)
    train, hold = DataLoader(TensorDataset(x, y), batch_size=32), DataLoader(TensorDataset(xh, (xh @ w).argmax(1)), 32)
    given = {k: v.clone() for k, v in model.state_dict().items()}
    for targets, together in (([55, 66], True), ([55, 96], False)):
        model.load_state_dict(given)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            res = optimize_connectome(model, train, hold, target=targets, passes=0.25, progress=False,
                                      ensemble="neuron")
        a, b = (res.snapshots[str(t)] for t in targets)
        same = a.removed == b.removed and all(torch.equal(a.masks[n], b.masks[n]) for n in a.masks)
        said = [str(c.message) for c in caught if "on one network" in str(c.message)]
        assert same == together, (a.removed, b.removed)
        if together:
            assert said == [f"targets {targets[0]} and {targets[1]} both ended at {a.removed:,} synapses removed, on "
                            "one network: a stage removes whole ensembles and ends within half an ensemble of its "
                            "target, not always at the nearest count, so with ensembles of several sizes (up to 20 "
                            "synapses) two targets under 20 apart may end together. Their snapshots are that one "
                            "network under two names; for two networks give targets at least 20 synapses apart, or "
                            "leave one of them out"], said
        else:
            assert said == []
