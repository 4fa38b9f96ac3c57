"""adaptive.optimize_connectome and the crawl policy: mechanics on a tiny CNN and fake data."""
import copy
import math
import os
import re
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from adaptive import Connectome, Controller
from adaptive.baselines.edge_popup import edge_popup
from adaptive.mask_only import (changed_from, changed_weights, check_targets, evaluate, loaded_state, optimize_connectome,
                                resolve_target)
from adaptive.utility import UtilityContext
from adaptive.utility.presence import Presence

torch.set_num_threads(1)

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _global_rng import global_rng_states, moved_generators  # noqa: E402


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        return self.fc(F.adaptive_avg_pool2d(F.relu(self.bn(self.conv(x))), 1).flatten(1))


def tiny(seed=0):
    torch.manual_seed(seed)
    m = Tiny()
    with torch.no_grad():  # non-trivial BN statistics, so eval mode matters
        m.bn.running_mean.uniform_(-0.5, 0.5)
        m.bn.running_var.uniform_(0.5, 2.0)
    return m


def loaders(n=96, bs=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 4
    x = torch.randn(n, 3, 6, 6, generator=g) + y.view(-1, 1, 1, 1).float() * 0.3
    ds = TensorDataset(x, y)
    return DataLoader(ds, batch_size=bs, shuffle=True, generator=g), DataLoader(TensorDataset(x[:32], y[:32]), batch_size=16)


def run(model, target, **kw):
    tr, ho = loaders()
    kw = {**dict(passes=1.0, window=2, edit_fraction=0.1, progress=False), **kw}
    return optimize_connectome(model, tr, ho, target, **kw)


def test_weights_frozen_bit_exact_and_bn_untouched():
    m = tiny()
    before = copy.deepcopy(m.state_dict())
    r = run(m, [0.3, 0.6], eval_every=1)
    assert changed_weights(r.conn) == 0
    sd = m.state_dict()
    for k, v in before.items():
        if k in ("conv.weight", "fc.weight"):
            mask = r.conn.masks[k]
            assert torch.equal(sd[k].view(torch.int32)[mask], v.view(torch.int32)[mask])
            assert (sd[k][~mask] == 0).all()
        else:  # biases, BN affine and running statistics: bit-identical (eval mode throughout)
            assert torch.equal(sd[k], v), k
    assert m.training  # the caller's mode is given back
    assert all(p.grad is None for p in m.parameters())
    # every snapshot restores bit-exactly too
    for label in r.snapshots:
        r.use(label)
        assert changed_weights(r.conn) == 0


def test_a_result_prints_as_a_summary_not_its_masks():
    """print(res) in a notebook gave the dataclass repr: every layer's mask tensor, every history row and
    the connectome (167,804 characters for MobileNetV3-Small at two targets)."""
    r = run(tiny(), [0.3, 0.6])
    text = repr(r)
    assert len(text) < 600 and "tensor" not in text, text
    assert "label='0.3', removed=" in text and "label='0.6'" in text and f"history=<{len(r.history)} rows>" in text
    assert repr(r.snapshots["0.3"]).startswith("Snapshot(label='0.3', removed=") and "masks=<2 layers>" in text


def test_changed_from_checks_every_tensor_against_the_weights_as_loaded():
    """The recipes' "surviving weights that differ from the original" figure compared against the
    connectome's own copy (conn.original): a corrupted copy printed 0 while the exported
    state_dict differed from the loaded weights; biases and BN statistics were not compared."""
    m = tiny()
    loaded = loaded_state(m)
    r = run(m, [0.4])
    conn = r.conn
    assert changed_from(conn.dense_state_dict(), loaded, conn) == 0  # pruned zeros aside, all bit-identical
    assert (~conn.masks["conv.weight"]).any()
    # a surviving weight whose bits moved together with the connectome's own copy of it
    live = conn.masks["conv.weight"].flatten().nonzero()[0, 0]
    with torch.no_grad():
        conn.original["conv.weight"].view(-1)[live] += 1.0
        m.conv.weight.view(-1)[live] += 1.0
    assert changed_weights(conn) == 0  # measured against the corrupted copy, it cannot see it
    assert changed_from(conn.dense_state_dict(), loaded, conn) == 1
    # a bias or a normalisation statistic that moved counts too
    sd = conn.dense_state_dict()
    sd["conv.weight"].view(-1)[live] = loaded["conv.weight"].view(-1)[live]
    sd["bn.running_var"][0] += 1.0
    sd["fc.bias"][:2] = 0.0
    assert changed_from(sd, loaded, conn) == 3
    # a pruned synapse reads as pruned when it is +0.0 exactly: -0.0 is a difference
    sd = {k: v.clone() for k, v in loaded.items()}
    pruned = (~conn.masks["conv.weight"]).flatten().nonzero()[:, 0]
    sd["conv.weight"].view(-1)[pruned[1:]] = 0.0
    sd["conv.weight"].view(-1)[pruned[0]] = -0.0
    assert changed_from(sd, loaded, conn) == 1
    # a missing key or another shape counts every entry of that tensor
    del sd["fc.bias"]
    sd["bn.weight"] = torch.ones(3)
    assert changed_from(sd, loaded, conn) == 1 + 4 + 8
    with pytest.raises(TypeError, match="changed_from: state must be a state_dict .*got Tensor"):
        changed_from(sd["conv.weight"], loaded, conn)


def test_changed_weights_sees_a_one_ulp_change_and_a_sign_flipped_zero():
    """changed_weights (the oracle of invariant 2) compares bits: a surviving weight moved by one ulp
    counts, and so does a surviving 0.0 that became -0.0 (equal as numbers, not as bits)."""
    m = tiny()
    conn = run(m, [0.5]).conn
    assert changed_weights(conn) == 0
    w, orig = m.conv.weight, conn.original["conv.weight"]
    live = conn.masks["conv.weight"].flatten().nonzero()[:2, 0]
    with torch.no_grad():
        v = w.view(-1)[live[0]]
        w.view(-1)[live[0]] = torch.nextafter(v, torch.tensor(float("inf")))
    assert changed_weights(conn) == 1
    with torch.no_grad():
        w.view(-1)[live[0]] = orig.view(-1)[live[0]]
        orig.view(-1)[live[1]] = 0.0  # a surviving weight that is exactly zero ...
        w.view(-1)[live[1]] = 0.0
        assert changed_weights(conn) == 0
        w.view(-1)[live[1]] = -0.0  # ... whose sign bit flipped
    assert changed_weights(conn) == 1


def test_restoration_is_exact_after_crawling():
    m = tiny()
    orig = {n: p.detach().clone() for n, p in m.named_parameters()}
    r = run(m, 0.5, edit_fraction=0.3, verify_batches=0, window=1, passes=3.0, estimator=Presence(step=0.05))
    assert sum(e["grown"] for e in r.events) > 0, "the crawl should restore some synapses"
    r.conn.set_masks({n: torch.ones_like(v) for n, v in r.conn.masks.items()})
    for n, p in m.named_parameters():
        assert torch.equal(p.detach(), orig[n]), n


@pytest.mark.parametrize("target", [0.25, 57, [0.1, 100, 0.75]])
def test_stops_exactly_at_targets(target):
    m = tiny()
    r = run(m, target)
    total = r.conn.num_synapses()
    wanted = target if isinstance(target, list) else [target]
    assert len(r.snapshots) == len(wanted)
    # the counts a user asks for, worked out by hand for the 248 synapses of ``tiny`` (not by the
    # code under test): 0.25 -> 62, 0.1 -> 24.8 -> 25, 0.75 -> 186
    assert total == 248
    by_hand = {0.25: 62, 57: 57, 0.1: 25, 100: 100, 0.75: 186}
    for t in wanted:
        snap = r.snapshots[f"{t:g}" if isinstance(t, float) else str(t)]
        assert snap.removed == by_hand[t] == resolve_target(t, total)
        assert sum(int((~v).sum()) for v in snap.masks.values()) == snap.removed


def test_resolve_target_by_hand():
    assert resolve_target(0.1, 248) == 25 and resolve_target(0.25, 248) == 62 and resolve_target(0.0, 248) == 0
    assert resolve_target(247, 248) == 247 and resolve_target("best", 248) is None
    with pytest.raises(ValueError, match="every one of the model's 248 prunable synapses: give a count below 248"):
        resolve_target(248, 248)  # as the fraction 1.0 is refused: removing every synapse leaves no network
    with pytest.raises(ValueError, match="beyond the model's 248"):
        resolve_target(249, 248)


def test_check_targets_refuses_what_optimize_connectome_would_before_any_data():
    """The recipes' check before the data: optimize_connectome's own errors, the synapses counted as
    include/exclude select them, the model left as it was."""
    from adaptive.mask_only import check_targets

    m, (train, holdout) = tiny(), loaders()
    before = copy.deepcopy(m.state_dict())
    assert check_targets(m, [0.5, 100]) is None and check_targets(m, "best") is None
    for target, kw, match in ((248, {}, "248 synapses to remove is every one of the model's 248"),
                              (40, dict(exclude="conv"), "40 synapses to remove is beyond the model's 32"),
                              ([0.5, "best"], {}, "'best' cannot be combined with other targets"),
                              ([0.5, 124], {}, "targets 0.5 and 124 both remove 124 synapses")):
        with pytest.raises(ValueError, match=match):
            check_targets(m, target, **kw)
        with pytest.raises(ValueError, match=match):
            optimize_connectome(m, train, holdout, target, progress=False, **kw)
    assert all(torch.equal(v, before[k]) for k, v in m.state_dict().items())


def test_check_targets_reads_a_compiled_models_names_as_the_connectome_does():
    """A torch.compile wrapper's weights are named _orig_mod.*: check_targets refused --include conv
    ("matched no prunable layer") where optimize_connectome's connectome, built on the module the
    wrapper runs, took it."""
    from adaptive.mask_only import check_targets

    compiled = torch.compile(tiny())  # (nothing is compiled until a forward)
    assert Connectome(compiled, include="conv", mode="mask_only").num_synapses() == 216
    assert check_targets(compiled, 100, include="conv") is None
    with pytest.raises(ValueError, match="216 synapses to remove is every one of the model's 216"):
        check_targets(compiled, 216, include="conv")


def test_kernel_ensembles_stop_within_one_ensemble():
    m = tiny()
    r = run(m, 0.4, ensemble="kernel")
    goal = resolve_target(0.4, r.conn.num_synapses())
    # conv kernels are 3x3; linear "kernels" are single weights
    assert abs(r.snapshots["0.4"].removed - goal) < 9


def test_exported_state_dict_reproduces_outputs(tmp_path):
    m = tiny()
    r = run(m, 0.5)
    m.eval()
    x = torch.randn(5, 3, 6, 6)
    with torch.no_grad():
        want = m(x)
    torch.save(r.conn.dense_state_dict(), tmp_path / "p.pt")
    vanilla = Tiny()
    vanilla.load_state_dict(torch.load(tmp_path / "p.pt", weights_only=True))
    vanilla.eval()
    with torch.no_grad():
        assert torch.equal(vanilla(x), want)
    assert int((vanilla.conv.weight == 0).sum() + (vanilla.fc.weight == 0).sum()) >= r.snapshots["0.5"].removed


def test_threshold_mode_keeps_the_best_holdout_snapshot():
    m = tiny()
    r = run(m, "best", eval_every=1, edit_fraction=0.2, ladder=())
    evals = [h for h in r.history if h["kind"] == "eval"]
    snap = r.snapshots["best"]
    assert snap.holdout_acc == max(e["holdout_acc"] for e in evals)
    assert r.conn.num_synapses() - r.conn.num_live() == snap.removed


@pytest.mark.parametrize("patience", [1, 2])
def test_best_climbs_the_ladder_and_keeps_the_best_rung(patience):
    m = tiny()
    ladder = (0.1, 0.3, 0.5, 0.7, 0.9)
    r = run(m, "best", ladder=ladder, patience=patience)
    evals = [h for h in r.history if h["kind"] == "eval"]  # the dense network, then each rung's end
    total = r.conn.num_synapses()
    assert evals[0]["removed"] == 0
    assert [e["removed"] for e in evals[1:]] == [resolve_target(f, total) for f in ladder][: len(evals) - 1]
    accs = [e["holdout_acc"] for e in evals]
    b = accs.index(max(accs))  # the first rung reaching the best accuracy (0: dense)
    snap = r.snapshots["best"]
    assert list(r.snapshots) == ["best"] and snap.holdout_acc == accs[b] and snap.removed == evals[b]["removed"]
    assert len(evals) - 1 == min(len(ladder), b + patience)  # the climb stopped `patience` rungs after it
    assert total - r.conn.num_live() == snap.removed and changed_weights(r.conn) == 0


def _own_answers(m, ho):
    """``ho``'s images labelled with ``m``'s own predictions: a holdout the network gets all right."""
    with torch.no_grad():
        x = torch.cat([xb for xb, _ in ho])
        y = m.eval()(x).argmax(1)
    m.train()
    return DataLoader(TensorDataset(x, y), batch_size=16)


def test_best_keeps_the_dense_network_when_no_rung_beats_it():
    m = tiny()
    before = copy.deepcopy(m.state_dict())
    tr, ho = loaders()
    ho_own = _own_answers(m, ho)  # where removing half its weights cannot help
    r = optimize_connectome(m, tr, ho_own, "best", passes=0.5, ladder=(0.5, 0.9), patience=2, progress=False)
    assert r.snapshots["best"].removed == 0 and r.snapshots["best"].holdout_acc == 1.0
    assert all(torch.equal(v, before[k]) for k, v in m.state_dict().items())


def test_threshold_mode_keeps_the_earlier_candidate_on_a_tie():
    """Target "best" without a ladder: a stage that ends on the dense network's held-out accuracy
    gained nothing, so the dense network stays (it kept the pruned one; a ladder never did)."""
    m = tiny()
    tr, ho = loaders()
    ho_own = _own_answers(m, ho)
    r = optimize_connectome(m, tr, ho_own, "best", passes=1.0, ladder=(), eval_every=0, progress=False)
    ends = [h for h in r.history if h["kind"] == "eval" and h["stage"] >= 0]
    assert ends and ends[-1]["removed"] > 0 and ends[-1]["holdout_acc"] == 1.0  # a tie with the dense network
    assert r.snapshots["best"].removed == 0 and r.snapshots["best"].holdout_acc == 1.0


@pytest.mark.parametrize("target, match", [(10_000, "beyond"), (1.5, r"\[0, 1\)"), ("lots", "fraction"),
                                           (-5, "cannot be negative"), ([0.2, 0.2], "give each target once"),
                                           (float("nan"), "fraction"), (float("inf"), "fraction")])
def test_bad_target_fails_before_anything_runs(target, match):
    """A target is a model-only check: refused before either loader is read (a fixed one was refused only
    after the holdout's first batch had been read and run through the model, where the docs promise every
    model-only check before any loader is read)."""
    _refused_before_a_batch_is_read(target, match, holdout_unread=True)


@pytest.mark.parametrize("target, count", [("1e3", 1000), (50000.0, 50000), ("100.", 100)])
def test_a_whole_number_written_as_a_fraction_is_refused_naming_the_count(target, count):
    """"1e3" or 50000.0 (a count written with an exponent or a decimal point) is read as a fraction,
    and refused: the message says to write the count as a whole number (it only gave the range)."""
    from adaptive.mask_only import parse_target

    with pytest.raises(ValueError, match=rf"must be in \[0, 1\): for the count of {count} synapses give it as a whole "
                                         rf"number \({count}\)"):
        parse_target(target)
    assert parse_target(str(count)) == count
    with pytest.raises(ValueError) as refused:  # 1.0 and 1.5 are no counts of anything meant
        parse_target(1.0)
    assert re.search(r"must be in \[0, 1\): give a fraction below 1 .* or a whole count", str(refused.value))
    assert "for the count of" not in str(refused.value)


def test_a_fraction_that_rounds_to_every_synapse_is_refused_as_that_count_is():
    """0.999 of 248 synapses rounds to 248: as the count 248 (and the fraction 1.0), a target that
    removes every synapse is refused before a batch is read (it ran and removed them all)."""
    assert resolve_target(0.997, 248) == 247  # 247.256: one synapse left, allowed as the count 247
    with pytest.raises(ValueError, match=r"fraction 0.999 removes round\(0.999 x 248\) = 248 synapses, every one of "
                                         r"the model's 248 .*a fraction of at most 0.997983, or a count below 248"):
        resolve_target(0.999, 248)
    _refused_before_a_batch_is_read(0.999, "every one of the model's 248", holdout_unread=True)
    _refused_before_a_batch_is_read([0.2, 0.9999], "every one of the model's 248", holdout_unread=True)
    _refused_before_a_batch_is_read("best", "every one of the model's 248", ladder=(0.5, 0.999), holdout_unread=True)


def test_the_largest_fraction_a_refusal_names_is_accepted_and_one_above_the_true_bound_is_not():
    """The bound a refusal prints ("a fraction of at most X", for a target or a ladder rung) was the edge
    247.5 / 248 at .6g, 0.997984, which rounds up: 0.997984 of 248 removes all 248 and was refused. The
    printed figure is now itself accepted, and a fraction just above the true edge is refused."""
    from adaptive.mask_only_targets import ladder_counts

    for total in (248, 3, 7, 1001, 123457):
        with pytest.raises(ValueError) as refused:
            resolve_target(1 - 1e-12, total)
        printed = re.search(r"a fraction of at most ([0-9.e-]+),", str(refused.value)).group(1)
        with pytest.raises(ValueError) as rung:
            ladder_counts([1 - 1e-12], total)
        assert f"fractions at most {printed} " in str(rung.value)
        assert resolve_target(float(printed), total) == total - 1  # what it names is accepted
        assert ladder_counts([float(printed)], total) == [total - 1]
        above = (total - 0.5) / total + 1e-9  # just above the true edge (total - 0.5) / total
        with pytest.raises(ValueError, match="every one of"):
            resolve_target(above, total)
        with pytest.raises(ValueError, match="every one of"):
            ladder_counts([above], total)
    with pytest.raises(ValueError, match=r"at most 0\.997983,"):  # (.6g of the edge printed 0.997984)
        resolve_target(0.9999, 248)
    with pytest.raises(ValueError, match="every one of"):
        resolve_target(0.997984, 248)


def test_a_target_among_several_that_cannot_be_met_is_named_by_its_value_and_position():
    """--remove 0.2 0.9999 (or target=[...]) was refused with the lone target's words: which of the
    targets, where it stands and that it can be left out are named now; so is a rung of "best"'s ladder,
    with the largest fraction a rung may be (a count, which the lone target's fix offers, is no rung)."""
    model = tiny()
    for targets, match in (([0.2, 0.9999], r"target 2 of 2 \(0.9999\) in \[0.2, 0.9999\]: .*every one of the model's 248"),
                           ([300, 0.2, 5], r"target 1 of 3 \(300\) in \[300, 0.2, 5\]: .*beyond the model's 248"),
                           ([0.1, "248", 0.3], r"target 2 of 3 \(248\) in \[0.1, 248, 0.3\]: .*is every one of")):
        with pytest.raises(ValueError, match=match) as refused:
            check_targets(model, targets)
        assert "leave that target out" in str(refused.value)
    with pytest.raises(ValueError, match=r"^target fraction 0.9999 removes"):  # alone, it needs no position
        check_targets(model, 0.9999)
    with pytest.raises(ValueError, match=r"ladder rung 3 of 3 \(0.999\) in \[0.2, 0.5, 0.999\] removes round\(0.999 x "
                                         r"248\) = 248 synapses.*ladder's fractions at most 0.997983.*leave that rung out"):
        check_targets(model, "best", ladder=(0.2, 0.5, 0.999))  # (before: refused as "target fraction", only once the run began)
    _refused_before_a_batch_is_read("best", "ladder rung 2 of 2", ladder=(0.5, 0.999))


def test_a_target_among_several_below_a_sparse_start_is_named_by_position():
    """On a sparse start a target that removes fewer synapses than are already absent (a fraction that
    rounds to 0 removed, say) is named among the others by position too."""
    model = tiny()
    with torch.no_grad():
        model.conv.weight[:2] = 0.0  # 54 of 248 synapses absent from the start
    with pytest.raises(ValueError, match=r"target 1 of 2 \(0.001\) in \[0.001, 0.5\]: target 0.001 removes 0 .*already absent"):
        check_targets(model, [0.001, 0.5])


def _spy(loader, seen):
    """A class whose instances iterate ``loader``, appending to ``seen`` each time one is read."""
    class Spy:
        def __len__(self):
            return len(loader)

        def __iter__(self):
            seen.append(1)
            return iter(loader)

    return Spy


def _refused_before_a_batch_is_read(target, match, holdout=None, holdout_unread=False, **kw):
    """optimize_connectome(target, **kw) raises ValueError matching ``match`` before the train
    loader is read (``holdout_unread``: the holdout loader too), with the model in train mode and its
    state as it was."""
    m = tiny()
    before = copy.deepcopy(m.state_dict())
    tr, ho = loaders()
    ho = holdout or ho
    seen, seen_holdout = [], []
    Spy = _spy(tr, seen)
    if holdout_unread:
        ho = _spy(ho, seen_holdout)()

    with pytest.raises(ValueError, match=match):
        optimize_connectome(m, Spy(), ho, target, progress=False, **kw)
    assert not seen, "the loader was read before the bad input was noticed"
    assert not seen_holdout, "the holdout loader was read before the bad input was noticed"
    assert m.training and all(torch.equal(v, before[k]) for k, v in m.state_dict().items())


@pytest.mark.parametrize("kw, match", [(dict(ladder=(0.5, 0.2)), "ladder"), (dict(ladder=(0.0, 0.5)), "ladder"),
                                       (dict(patience=0), "patience"), (dict(edit_fraction=-0.5), "edit_fraction"),
                                       (dict(edit_fraction=5.0), r"edit_fraction must be in \[0, 1\]")])
def test_bad_ladder_fails_before_anything_runs(kw, match):
    m = tiny()
    before = copy.deepcopy(m.state_dict())
    tr, ho = loaders()
    with pytest.raises(ValueError, match=match):
        optimize_connectome(m, tr, ho, "best", progress=False, **kw)
    assert all(torch.equal(v, before[k]) for k, v in m.state_dict().items())


@pytest.mark.parametrize("kw, match", [(dict(callback=5), r"callback must be a callable or None, got 5"),
                                       (dict(loss_fn="ce"), r"loss_fn must be a callable, got 'ce' \(a loss: F.cross_entropy"),
                                       (dict(loss_fn=None), r"loss_fn must be a callable, got None"),
                                       (dict(accuracy_fn=3), r"accuracy_fn must be a callable or None, got 3")])
def test_a_function_that_cannot_be_called_fails_before_a_batch_is_read(kw, match):
    """callback=5 raised a TypeError only at the first record, after a training batch was read."""
    _refused_before_a_batch_is_read(0.3, match, **kw)


@pytest.mark.parametrize("kind", ["numpy", "tensor"])
def test_numpy_and_tensor_settings_run_as_their_plain_numbers(kind):
    """A one-element tensor approach or edit_fraction passed the check, then failed deep inside the
    run (a tensor has no __round__); numpy and tensor reals now run as the plain float would."""
    import numpy as np

    wrap = (lambda v: np.float32(v)) if kind == "numpy" else (lambda v: torch.tensor(v))
    plain = run(tiny(), 0.5, approach=0.5, edit_fraction=0.5, margin=0.0)
    other = run(tiny(), 0.5, approach=wrap(0.5), edit_fraction=wrap(0.5), margin=wrap(0.0))
    a, b = plain.snapshots["0.5"], other.snapshots["0.5"]
    assert a.removed == b.removed and all(torch.equal(a.masks[n], b.masks[n]) for n in a.masks)


def test_numpy_and_torch_targets_are_counts_and_fractions():
    """parse_target refused np.int64(30), torch.tensor(30) and np.float32(0.25) with a message
    asking for a count or a fraction; bools stay refused."""
    import numpy as np

    from adaptive.mask_only import parse_target

    for t, want in ((np.int64(30), 30), (torch.tensor(30), 30), (np.float32(0.25), 0.25), (torch.tensor(0.25), 0.25)):
        got = parse_target(t)
        assert got == want and type(got) is type(want), repr(t)
    for t in (True, np.True_, torch.tensor(True), torch.tensor([1, 2])):
        with pytest.raises(ValueError, match="give a fraction in"):
            parse_target(t)
    tr, ho = loaders()
    r = optimize_connectome(tiny(), tr, ho, [np.float32(0.25), torch.tensor(100)], passes=0.5, progress=False)
    assert sorted(r.snapshots) == ["0.25", "100"] and r.snapshots["100"].removed == 100
    assert r.use(np.float32(0.25)) is r.snapshots["0.25"]


@pytest.mark.parametrize("ladder", [None, "0.5", 0.5, ["a", 0.5]])
def test_a_ladder_that_is_no_list_of_fractions_is_named(ladder):
    """ladder=None failed with a bare TypeError, ladder="0.5" with float()'s "could not convert '.'"."""
    tr, ho = loaders()
    with pytest.raises(ValueError, match=r"ladder must be a list of increasing removal fractions in \(0, 1\) such as"):
        optimize_connectome(tiny(), tr, ho, "best", ladder=ladder, progress=False)


class _NoBatches(torch.utils.data.IterableDataset):
    """A streamed dataset with no length that yields nothing."""

    def __iter__(self):
        return iter(())


def test_a_holdout_without_length_that_is_empty_or_one_shot_fails_before_a_batch_is_read():
    """A holdout loader with no len() passed the empty-loader check: an empty one ran a whole stage and
    then failed with "evaluate: no examples" (or "loader yielded no batches" with a line search), and
    a generator was used up by the first evaluation and failed at the second target's."""
    m = tiny()
    before = copy.deepcopy(m.state_dict())
    tr, ho = loaders()
    seen = []
    Spy = _spy(tr, seen)

    for holdout, kw, match in ((DataLoader(_NoBatches(), batch_size=4), {}, "holdout loader is empty"),
                               (DataLoader(_NoBatches(), batch_size=4), dict(verify_batches=1), "holdout loader is empty"),
                               ((b for b in ho), {}, "holdout loader is a one-shot iterator")):
        with pytest.raises(ValueError, match=match):
            optimize_connectome(m, Spy(), holdout, [0.2, 0.5], passes=0.5, progress=False, **kw)
        assert not seen, "the train loader was read before the bad holdout was noticed"
        assert all(torch.equal(v, before[k]) for k, v in m.state_dict().items())
    # a holdout with no len() that iterates afresh runs as before
    r = optimize_connectome(m, tr, _Stream(list(ho)), [0.2, 0.5], passes=0.5, progress=False)
    assert set(r.snapshots) == {"0.2", "0.5"} and all(s.holdout_acc is not None for s in r.snapshots.values())


class _Stream:
    """Held-out batches with no length, iterable afresh each time."""

    def __init__(self, batches):
        self.batches = batches

    def __iter__(self):
        return iter(self.batches)


def test_empty_loader_and_mixed_best_fail_clearly():
    m = tiny()
    tr, ho = loaders()
    empty = DataLoader(TensorDataset(torch.zeros(0, 3, 6, 6), torch.zeros(0, dtype=torch.long)), batch_size=4)
    with pytest.raises(ValueError, match="train loader is empty"):
        optimize_connectome(m, empty, ho, 0.5, progress=False)
    with pytest.raises(ValueError, match="holdout loader is empty"):
        optimize_connectome(m, tr, empty, 0.5, progress=False)
    with pytest.raises(ValueError, match="'best' cannot be combined"):
        optimize_connectome(m, tr, ho, ["best", 0.2], progress=False)
    assert all(p.requires_grad for p in m.parameters())


class _DictBatches(torch.utils.data.Dataset):
    def __init__(self, ds):
        self.ds = ds

    def __len__(self):
        return len(self.ds)

    def __getitem__(self, i):
        x, y = self.ds[i]
        return {"image": x, "label": y}


@pytest.mark.parametrize("target", [0.5, "best"])
def test_batches_that_are_not_pairs_fail_clearly_and_leave_the_model_whole(target):
    m = tiny()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    tr, ho = loaders()
    dict_loader = DataLoader(_DictBatches(tr.dataset), batch_size=16)
    with pytest.raises(TypeError, match=r"\(inputs, targets\) pairs; this one yielded a dict with keys \['image', 'label'\]"):
        optimize_connectome(m, dict_loader, dict_loader, target, progress=False)
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())
    assert all(p.requires_grad for p in m.parameters())


def test_line_search_events_and_history():
    m = tiny()
    r = run(m, 0.5, verify_batches=1)
    ups = [h for h in r.history if h["kind"] == "update"]
    assert ups and all(h["verify_loss"] is not None for h in ups if h["pruned"] or h["restored"])
    # removal moves monotonically towards the goal during the approach and stays there
    removed = [h["removed"] for h in ups]
    assert removed[-1] == r.snapshots["0.5"].removed
    first = removed.index(removed[-1])  # the approach only removes, then the crawl holds the goal
    assert all(b >= a for a, b in zip(removed[:first + 1], removed[1:first + 1]))
    assert all(x == removed[-1] for x in removed[first:])
    ev = [e for e in r.events if e["kind"] == "update"]
    assert all("boundaries" in e for e in ev)


def test_crawl_policy_forced_count_and_worthwhile_swaps():
    """Hand case with the magnitude estimator (cost |w|, gain |w_orig|): the schedule prunes the
    cheapest, one per update, without swaps; at the goal, swaps pay only when an absent synapse
    is bigger than a present one."""
    lin = nn.Linear(4, 1, bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[0.1, -0.4, 0.3, -0.2]]))
    conn = Connectome(lin, mode="mask_only")
    ctrl = Controller(conn, policy="crawl", estimator="magnitude", update_every=1, edit_decay="constant")
    ctrl.policy.edit_fraction = 1.0
    ctrl.policy.set_goal(2, deadline=2)  # 4 live -> 2 live, one per update
    ev = ctrl.step()
    assert conn.masks["weight"].tolist() == [[False, True, True, True]]
    assert (ev["pruned"], ev["grown"]) == (1, 0)
    ev = ctrl.step()
    assert conn.masks["weight"].tolist() == [[False, True, True, False]]
    assert (ev["pruned"], ev["grown"]) == (1, 0)
    ev = ctrl.step()  # at the goal: nothing is worth swapping
    assert (ev["pruned"], ev["grown"]) == (0, 0)
    # hand-edit a bad state at the goal: drop the largest, keep the smallest; the crawl swaps back
    conn.set_masks({"weight": torch.tensor([[True, False, True, False]])})
    ev = ctrl.step()
    assert conn.masks["weight"].tolist() == [[False, True, True, False]]  # 0.1 out, 0.4 in
    assert (ev["pruned"], ev["grown"]) == (1, 1)
    assert changed_weights(conn) == 0


def test_edge_popup_bit_exact_and_exact_k():
    m = tiny()
    tr, ho = loaders()
    conn, snaps = edge_popup(m, tr, ho, [0.2, 0.5], passes=1.0, lr=0.05, progress=False)
    total = conn.num_synapses()
    assert snaps["0.5"]["removed"] == resolve_target(0.5, total)
    assert snaps["0.2"]["removed"] == resolve_target(0.2, total)
    assert changed_weights(conn) == 0


def test_edge_popup_starts_from_per_layer_scaled_magnitudes():
    """Edge-popup's scores start at |w| / rms(w) of each layer, the global top-k kept: with a learning
    rate so small that no score passes another, the masks are that initial top-k."""
    m = tiny()
    tr, ho = loaders()
    w = {n: p.detach().clone() for n, p in m.named_parameters() if n in ("conv.weight", "fc.weight")}
    score = torch.cat([(v.abs() / v.pow(2).mean().sqrt()).reshape(-1) for v in w.values()])
    keep = score.numel() - 124  # remove 124 of 248
    want = torch.zeros(score.numel(), dtype=torch.bool)
    want[torch.topk(score, keep).indices] = True
    _, snaps = edge_popup(m, tr, ho, [124], passes=0.1, lr=1e-12, progress=False)
    got = torch.cat([snaps["124"]["masks"][n].reshape(-1) for n in w])
    assert torch.equal(got, want)
    # the layers' scales differ, so unscaled |w| would keep other synapses
    raw = torch.cat([v.abs().reshape(-1) for v in w.values()])
    other = torch.zeros_like(want)
    other[torch.topk(raw, keep).indices] = True
    assert not torch.equal(other, want)


def test_edge_popup_lowers_the_training_loss_of_its_initial_mask():
    """Scores follow -dL/dscore through the straight-through estimator: a few passes at lr 0.05 end
    with a lower training loss than the initial top-k (scored here on the train loader itself)."""
    tr, _ = loaders()
    _, s0 = edge_popup(tiny(), tr, tr, [0.5], passes=0.1, lr=1e-12, progress=False)  # the initial top-k
    _, s1 = edge_popup(tiny(), tr, tr, [0.5], passes=4.0, lr=0.05, progress=False)
    before, after = s0["0.5"]["holdout_loss"], s1["0.5"]["holdout_loss"]
    assert after < before - 1e-3, (before, after)


def test_edge_popup_takes_one_target_as_optimize_connectome_does():
    """A single target (not in a list) is one stage, as optimize_connectome takes it; it used to fail
    with "'float' object is not iterable"."""
    tr, _ = loaders()
    _, one = edge_popup(tiny(), tr, tr, 0.5, passes=0.1, progress=False)
    _, listed = edge_popup(tiny(), tr, tr, [0.5], passes=0.1, progress=False)
    assert sorted(one) == ["0.5"] and one["0.5"]["removed"] == listed["0.5"]["removed"]
    assert all(torch.equal(one["0.5"]["masks"][n], listed["0.5"]["masks"][n]) for n in listed["0.5"]["masks"])


def test_edge_popup_processes_agree_on_refusals_and_left_out_batches(tmp_path):
    """Two plain processes (a gloo group of their own) run edge-popup on a DistributedDataParallel model,
    whose forward and backward are collectives, process 1's loaders wrong in each case: an empty holdout
    on process 1 alone was refused there while process 0 went on into DDP's gradient all-reduce and
    failed there (a closed connection, or the group's timeout); train shards of different lengths (so
    different steps per stage) left one waiting; a NaN batch on process 1 alone was left out there only,
    so the processes' passes no longer matched; a label beyond the head in process 1's first training batch
    was torch's error there alone, and one in a later batch (or labels of the wrong shape there) was refused
there alone while process 0 failed in DDP's next collective ("Connection closed by peer"); a holdout of other
data on process 1 (sharded) gave each process its own held-out figures for the same masks, and a held-out label
beyond the head in a later held-out batch of process 1 stopped it alone; a batch of process 1 whose every label was
the ignored one was left out on both, blamed on NaN or inf in the data. Now both raise one ValueError naming the process and the fix, a NaN batch
    is left out on both, and both learn the same masks."""

    from _ports import two_rank_records

    got = two_rank_records("two_process_edge_popup.py", tmp_path)
    assert got[0] == got[1], got  # one error (or the same masks) per case on both
    rec = got[0]
    assert rec["empty_holdout"]["error"] == "ValueError", rec
    assert "process 1 of 2: holdout loader is empty" in rec["empty_holdout"]["message"]
    assert rec["uneven"]["error"] == "ValueError", rec
    assert "different train loader lengths (process 0 of 2: 4 batches; process 1 of 2: 2 batches)" \
        in rec["uneven"]["message"]
    assert rec["nan_on_one"]["live"] == rec["even"]["live"] == [14, 14], rec
    assert "2 whose loss was NaN or inf" in rec["nan_on_one"]["left_out"][0], rec  # (its first batch, drawn twice)
    # a batch of process 1 with every label ignored (a NaN cross-entropy) left out on both, named as such on both
    # (both blamed NaN or inf in the data)
    assert rec["unlabelled_on_one"]["live"] == [14, 14] and len(rec["unlabelled_on_one"]["left_out"]) == 1, rec
    assert "1 whose every label was the ignored one (-100)" in rec["unlabelled_on_one"]["left_out"][0], rec
    assert "NaN or inf" not in rec["unlabelled_on_one"]["left_out"][0], rec
    # a first batch of process 1 whose loss was finite but gradient NaN (DDP's average made it NaN on both): it went
    # into both processes' Adam, every score of the layer NaN, with no word; now left out on both, named so
    assert rec["nan_grad_on_one"]["live"] == [14, 14] and len(rec["nan_grad_on_one"]["left_out"]) == 1, rec
    assert "whose loss was finite but whose gradient held NaN or inf" in rec["nan_grad_on_one"]["left_out"][0], rec
    # every label ignored and a NaN gradient under a summed loss (finite, 0): counted as unlabelled and as a gradient's,
    # the one batch three reasons and "-1 whose loss was NaN or inf"; now its gradient's alone
    said = rec["summed_unlabelled_nan_grad_on_one"]["left_out"]
    assert len(said) == 1 and "left out 1 training batch(es)" in said[0], rec
    assert said[0].endswith("from them): 1 whose loss was finite but whose gradient held NaN or inf (none of it reached "
                            "the scores: check the training data for extreme values and the model's backward pass for an "
                            "overflow, e.g. a half-precision layer or a sqrt or log at 0)"), said
    assert rec["label_on_one"]["error"] == "ValueError", rec  # process 1's first batch: its label check agreed
    assert "process 1 of 2: the model gives 3 classes" in rec["label_on_one"]["message"], rec
    assert "labels go up to 5" in rec["label_on_one"]["message"], rec
    # a later batch's labels (checked on the device, read with the loss's finite flag): both raise the named error
    # (process 1's alone stopped it while process 0 failed in DDP's next collective, "Connection closed by peer")
    assert rec["late_label_on_one"]["error"] == "ValueError", rec
    assert "process 1 of 2: the model gives 3 classes" in rec["late_label_on_one"]["message"], rec
    assert "labels go up to 5" in rec["late_label_on_one"]["message"], rec
    assert rec["late_shape_on_one"]["error"] == "ValueError", rec
    assert "takes one class index per example" in rec["late_shape_on_one"]["message"], rec
    # the held-out figures agreed (each process reported its own holdout's), a held-out refusal on one raised by both
    assert "live" in rec["other_holdout_on_one"], rec
    assert rec["late_holdout_label_on_one"]["error"] == "ValueError", rec
    assert "process 1 of 2: the model gives 3 classes" in rec["late_holdout_label_on_one"]["message"], rec


def test_edge_popup_interrupted_on_a_sparse_model_says_its_zeros_stay_zero():
    """An interruption gives the model its original weights back; on a sparse model (weights of exactly
    0.0) the note said "(every synapse present)", though those synapses are still 0.0. It now counts them."""
    m = tiny()
    with torch.no_grad():
        m.fc.weight[:, :5] = 0.0
    zeros = int((m.fc.weight == 0).sum()) + int((m.conv.weight == 0).sum())
    tr, ho = loaders()
    calls = []

    def loss_fn(out, y):
        calls.append(1)
        if len(calls) > 2:
            raise RuntimeError("stop")
        return F.cross_entropy(out, y)

    with pytest.raises(RuntimeError, match="stop") as info:
        edge_popup(m, tr, ho, [0.5], passes=1.0, loss_fn=loss_fn, progress=False)
    note = " ".join(getattr(info.value, "__notes__", []))
    assert f"its {zeros:,} synapses of weights exactly 0.0 still 0.0" in note, note


@pytest.mark.parametrize("kw, msg", [({"lr": 0.0}, "lr must be a finite number > 0"),
                                     ({"lr": -0.01}, "lr must be a finite number > 0"),
                                     ({"passes": 0.0}, "passes must be a finite number > 0")])
def test_edge_popup_refuses_bad_settings_before_touching_the_model(kw, msg):
    m = tiny()
    before = copy.deepcopy(m.state_dict())
    tr, ho = loaders()
    with pytest.raises(ValueError, match=msg):
        edge_popup(m, tr, ho, [0.2], progress=False, **kw)
    assert all(torch.equal(m.state_dict()[k], v) for k, v in before.items())


def test_evidence_estimator_accumulates_consistent_gradients():
    """v = |w0| + rms * E, E <- E - step * clip(t(g * w0)): a synapse whose presence consistently
    raises the loss loses value; one with noisy gradients keeps its magnitude prior."""
    lin = nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[1.0, -1.0]]))
    conn = Connectome(lin, mode="mask_only")
    ctrl = Controller(conn, policy="crawl", estimator="evidence", update_every=2, edit_decay="constant")
    ctrl.grow_est = ctrl.drop_est
    # synapse 0: g = +1.0, +1.2 (presence consistently raises the loss); synapse 1: g = +1, -1 (noise)
    for g in ([1.0, 1.0], [1.2, -1.0]):
        lin.weight.grad = torch.tensor([g])
        ctrl.observe()
    cost = ctrl.scores("cost")["weight"].reshape(-1)
    t0 = 1.1 / (0.1 / 2**0.5)  # mean / (sd / sqrt(n)), clipped at 3
    assert cost[0].item() == pytest.approx(1.0 - 0.003 * min(t0, 3.0))
    assert cost[1].item() == pytest.approx(1.0)  # mean 0: no evidence
    assert torch.equal(ctrl.scores("gain")["weight"].reshape(-1), cost)  # same value on both sides


def test_presence_estimator_follows_normalised_presence_derivative():
    """value starts at |w0| / rms(w0); each update moves it by -step * m^/sqrt(v^) of d = g * w0
    (Adam's first step is -step * sign(d)); a zero derivative leaves it; begin_stage restarts the
    moments but keeps the values; the state round-trips through state_dict."""
    lin = nn.Linear(3, 1, bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[2.0, -1.0, 0.5]]))
    conn = Connectome(lin, mode="mask_only")
    est = Presence(step=0.1)
    ctrl = Controller(conn, policy="crawl", estimator=est, update_every=1, edit_decay="constant")
    rms = (torch.tensor([4.0, 1.0, 0.25]).mean()).sqrt()
    init = torch.tensor([2.0, 1.0, 0.5]) / rms
    # d = g * w0 = [+2 (presence raises the loss), +1 (also), 0]
    lin.weight.grad = torch.tensor([[1.0, -1.0, 0.0]])
    ctrl.observe()
    v1 = ctrl.scores("cost")["weight"].reshape(-1)
    assert torch.allclose(v1, init - 0.1 * torch.tensor([1.0, 1.0, 0.0]), atol=1e-6)
    assert torch.equal(ctrl.scores("gain")["weight"].reshape(-1), v1)
    # second step, d = [-2, +1, 0]: Adam's bias-corrected moments, written out by hand
    ctrl.stats.reset()
    lin.weight.grad = torch.tensor([[-1.0, -1.0, 0.0]])
    ctrl.observe()
    v2 = ctrl.scores("cost")["weight"].reshape(-1)
    d1, d2 = torch.tensor([2.0, 1.0, 0.0]), torch.tensor([-2.0, 1.0, 0.0])
    m = (0.9 * 0.1 * d1 + 0.1 * d2) / (1 - 0.9**2)
    v = (0.999 * 0.001 * d1**2 + 0.001 * d2**2) / (1 - 0.999**2)
    expect = v1 - 0.1 * m / (v.sqrt() + 1e-8)
    assert torch.allclose(v2, expect, atol=1e-5)
    sd = est.state_dict()
    est.begin_stage()
    assert not est.m and torch.equal(est.value["weight"], v2.view(1, 3))
    twin = Presence(step=0.1)
    twin.load_state_dict(sd)
    assert torch.equal(twin.value["weight"], v2.view(1, 3)) and twin.t == {"weight": 2}
    with pytest.raises(ValueError, match="step"):
        Presence(step=0.0)


def test_presence_start_is_the_same_at_any_weight_scale():
    """|w0| / rms(w0) is scale-free: at 1e25 the squares overflowed float32 (every value 0, the
    layer's order lost), at 1e-18 they underflowed (values near 1e-7, the layer ranked below all
    others). Ordinary layers keep their bits; a layer of zeros stays 0."""
    w = torch.randn(8, 8, generator=torch.Generator().manual_seed(0))

    def start(weight):
        ctx = UtilityContext(name="l", weight=weight, mask=torch.ones_like(weight, dtype=torch.bool), restore=weight,
                             stats=None, generator=torch.Generator())
        return Presence().removal_cost(ctx)

    ref = start(w)
    assert torch.equal(ref, w.abs() / w.pow(2).mean().sqrt())
    for scale in (1e-25, 1e-18, 2.0**-60, 1e18, 1e25, 2.0**100):
        v = start(w * scale)
        assert torch.allclose(v, ref, rtol=1e-5), scale
        assert torch.equal(torch.argsort(v.reshape(-1), stable=True), torch.argsort(ref.reshape(-1), stable=True))
    assert torch.equal(start(torch.zeros(3, 4)), torch.zeros(3, 4))


def _poisoned_loaders(poison: bool):
    """128 examples in 8 unshuffled batches; ``poison`` puts a NaN pixel into batch 2, otherwise that
    batch is left out of the data (7 batches)."""
    g = torch.Generator().manual_seed(0)
    y = torch.arange(128) % 4
    x = torch.randn(128, 3, 6, 6, generator=g) + y.view(-1, 1, 1, 1).float() * 0.3
    if poison:
        x[40, 0, 2, 2] = float("nan")
    else:
        x, y = torch.cat([x[:32], x[48:]]), torch.cat([y[:32], y[48:]])
    return DataLoader(TensorDataset(x, y), batch_size=16), DataLoader(TensorDataset(x[-32:], y[-32:]), batch_size=16)


def test_a_batch_with_a_nan_is_left_out_as_if_never_drawn():
    """One NaN example made every presence value NaN for the rest of the run, and the masks were
    then chosen by index (holdout accuracy fell, no message). Now its window is left out and the
    stage draws another in its place: the masks are those of a run on the data without that batch,
    bit for bit, with one warning when it happens and a count at the end."""
    import warnings

    tr, ho = _poisoned_loaders(poison=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        bad = optimize_connectome(tiny(), tr, ho, [0.3, 0.6], passes=7 / 8, window=1, progress=False)
    said = [str(w.message) for w in caught if "NaN or inf" in str(w.message)]
    assert len(said) == 2 and "left out" in said[0] and said[1].startswith("2 window(s) of 1 training batch")
    assert bad.controller.nonfinite_windows == 2  # batch 2 of each pass
    assert all(bool(torch.isfinite(v).all()) for v in bad.controller.drop_est.value.values())
    tr, ho = _poisoned_loaders(poison=False)
    clean = optimize_connectome(tiny(), tr, ho, [0.3, 0.6], passes=1.0, window=1, progress=False)
    for label, snap in clean.snapshots.items():
        assert all(torch.equal(snap.masks[n], bad.snapshots[label].masks[n]) for n in snap.masks)
        assert snap.step == bad.snapshots[label].step


def test_a_left_out_window_leaves_its_held_out_batches_to_the_window_in_its_place():
    """The held-out batches a line search checks on were drawn for the left-out window and lost, so
    every later step was checked on other batches than in a run without the NaN batch."""
    import warnings

    g = torch.Generator().manual_seed(2)
    yh = torch.arange(64) % 4
    yh[16:32] = (yh[16:32] + 2) % 4  # batches that differ, so a shifted draw changes what is checked
    yh[48:64] = (yh[48:64] + 2) % 4
    ho = DataLoader(TensorDataset(torch.randn(64, 3, 6, 6, generator=g) + yh.view(-1, 1, 1, 1).float() * 0.3, yh),
                    batch_size=16)
    runs = {}
    for poison in (True, False):
        tr, _ = _poisoned_loaders(poison)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            runs[poison] = optimize_connectome(tiny(), tr, ho, "best", passes=7 / 8 if poison else 1.0, window=1,
                                               verify_batches=1, progress=False)
    bad, clean = runs[True], runs[False]
    assert bad.controller.nonfinite_windows > 0
    verify = [[r.get("verify_loss") for r in res.history if r["kind"] == "update"] for res in (bad, clean)]
    assert verify[0] == verify[1]
    for label, snap in clean.snapshots.items():
        assert all(torch.equal(snap.masks[n], bad.snapshots[label].masks[n]) for n in snap.masks)


def test_nan_in_every_batch_stops_with_a_clear_error_and_the_model_whole():
    m = tiny()
    before = copy.deepcopy(m.state_dict())
    tr, ho = loaders()
    calls = []

    def nan_loss(out, y, **kw):  # NaN on the training batches (with gradients), finite on the held-out ones
        calls.append(torch.is_grad_enabled())
        return F.cross_entropy(out, y, **kw) * (float("nan") if torch.is_grad_enabled() else 1.0)

    with pytest.raises(ValueError, match="every training batch of a whole pass .* NaN or inf") as info:
        optimize_connectome(m, tr, ho, [0.3, 0.6], passes=2.0, window=2, loss_fn=nan_loss, progress=False)
    assert any("original weights" in n for n in getattr(info.value, "__notes__", []))
    # a pass, not the whole run (after the check of the loss on the first held-out batch, with gradients)
    assert calls[0] and sum(calls[1:]) <= len(tr)
    sd = m.state_dict()
    assert all(torch.equal(sd[k], v) for k, v in before.items())


@pytest.mark.parametrize("target", ["best", 0.3, [0.2, 0.5]])
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_a_dense_network_with_nonfinite_holdout_loss_is_refused_before_any_work(target, bad):
    """A held-out loss of NaN or inf before any synapse is removed: no held-out choice could be made
    (NaN compares false: the dense network was kept as "best" whatever the rungs scored), and a
    fixed target learned it only at its stage's end. Refused before a training batch is read."""
    tr, ho = loaders()
    x, y = ho.dataset.tensors
    x = x.clone()
    x[5] = bad  # one corrupt held-out example
    _refused_before_a_batch_is_read(target, r"the dense network's held-out loss is (nan|inf) .*before any synapse "
                                            r"was removed.*check the held-out data for NaN or inf",
                                    holdout=DataLoader(TensorDataset(x, y), batch_size=16))


def test_masks_with_a_nan_holdout_loss_are_never_chosen_as_best():
    """A rung whose masks give a NaN held-out loss is never the best, even at a higher held-out
    accuracy; the evaluation is kept in the history and warned of."""
    m = tiny()

    def pruned():
        return bool((m.fc.weight == 0).any() or (m.conv.weight == 0).any())

    def loss_fn(out, y, **kw):  # the held-out loss (no gradients) is NaN once anything is pruned
        return F.cross_entropy(out, y, **kw) * (float("nan") if pruned() and not torch.is_grad_enabled() else 1.0)

    def accuracy_fn(out, y):  # and the held-out accuracy looks perfect: NaN must still not win
        return (y.numel() if pruned() else 0), y.numel()

    tr, ho = loaders()
    with pytest.warns(UserWarning, match=r"held-out loss nan.*never chosen as the best"):
        res = optimize_connectome(m, tr, ho, "best", ladder=(0.2, 0.4), patience=2, passes=0.5, window=2,
                                  loss_fn=loss_fn, accuracy_fn=accuracy_fn, progress=False)
    evals = [h for h in res.history if h["kind"] == "eval"]
    assert evals[0]["removed"] == 0 and all(h["holdout_loss"] != h["holdout_loss"] for h in evals[1:])
    best = res.snapshots["best"]
    assert best.removed == 0 and best.holdout_loss == best.holdout_loss  # the dense network, finite


def test_crawl_at_goal_sorts_only_candidates_and_matches_full_orders():
    """At the goal the crawl orders only ensembles that can be in a worthwhile swap; its plan is
    the one the full orders give (pairs of i-th cheapest present and i-th best absent)."""
    from adaptive.policies.base import highest, lowest

    g = torch.Generator().manual_seed(0)
    scores = torch.randn(5000, generator=g)
    alive = torch.rand(5000, generator=g) < 0.5
    few = alive & (scores < -1.5)
    full = torch.argsort(torch.where(few, scores, torch.tensor(float("inf"))), stable=True)[: int(few.sum())]
    assert torch.equal(lowest(scores, few, 10**6), full)
    assert torch.equal(highest(-scores, few, 7), full[:7])
    for margin in (0.0, 0.3):
        lin = nn.Linear(200, 50, bias=False)
        conn = Connectome(lin, mode="mask_only")
        m = torch.rand(50, 200, generator=g) < 0.5
        conn.set_masks({"weight": m})
        est = Presence(step=0.5)
        ctrl = Controller(conn, policy="crawl", estimator=est, update_every=1, edit_decay="constant", margin=margin)
        ctrl.grow_est = ctrl.drop_est
        ctrl.policy.edit_fraction = 1.0
        ctrl.policy.set_goal(int(m.sum()), deadline=0)
        lin.weight.grad = torch.randn(50, 200, generator=g)
        ctrl.observe()
        ev = ctrl.step()
        val = est.value["weight"].reshape(-1)
        a = m.reshape(-1)
        c_sorted = torch.sort(val[a]).values
        g_sorted = torch.sort(val[~a], descending=True).values
        n = min(c_sorted.numel(), g_sorted.numel())
        want = int(((g_sorted[:n] - c_sorted[:n]) > margin).cumprod(0).sum())
        assert want > 0 and ev["pruned"] == want and ev["grown"] == want
        assert int(conn.masks["weight"].sum()) == int(m.sum())


class _Interrupted(Exception):
    pass


class _BreakingLoader:
    """A train loader that fails at its ``at``-th batch (a broken file, a Ctrl-C)."""

    def __init__(self, loader, at):
        self.loader, self.at = loader, at

    def __len__(self):
        return len(self.loader)

    def __iter__(self):
        for i, b in enumerate(self.loader):
            if i == self.at:
                raise _Interrupted("batch unreadable")
            yield b


@pytest.mark.parametrize("method", ["ours", "edge-popup"])
def test_interrupted_run_gives_the_model_its_original_weights_back(method):
    m = tiny()
    before = copy.deepcopy(m.state_dict())
    tr, ho = loaders()
    broken = _BreakingLoader(tr, at=4)  # several updates in: masks are well away from dense
    with pytest.raises(_Interrupted) as info:
        if method == "ours":
            optimize_connectome(m, broken, ho, [0.3, 0.6], passes=1.0, window=1, progress=False)
        else:
            edge_popup(m, broken, ho, [0.3, 0.6], passes=1.0, progress=False)
    assert any("original weights" in n for n in getattr(info.value, "__notes__", []))
    sd = m.state_dict()
    assert all(torch.equal(sd[k], v) for k, v in before.items())
    assert m.training and all(p.grad is None for p in m.parameters())


def test_exact_counts_beyond_float32_integers(target=1):
    # 4097 x 4097 = 16,785,409 synapses: above 2**24, float32 cannot count them one by one (the
    # crawl once summed ensemble sizes in float32 and missed such targets by a synapse or two)
    torch.manual_seed(0)
    m = nn.Linear(4097, 4097, bias=False)
    x, y = torch.randn(4, 4097), torch.randint(0, 4097, (4,))
    tr = DataLoader(TensorDataset(x, y), batch_size=2)
    r = optimize_connectome(m, tr, tr, target, passes=1.0, window=1, progress=False)
    assert r.conn.num_synapses() > 2 ** 24
    assert r.snapshots[str(target)].removed == target
    assert int((~r.snapshots[str(target)].masks["weight"]).sum()) == target


def test_edits_inside_one_bf16_autocast_region_are_seen_by_the_next_forward():
    """autocast keeps one low-precision copy of each weight per region: a mask edit must drop it,
    or the snapshot scores (and any evaluation after ``use``) would be the dense network's."""
    from adaptive.mask_only import evaluate

    m = tiny()
    tr, ho = loaders()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        dense = evaluate(m.eval(), ho)
        r = optimize_connectome(m, tr, ho, 0.8, passes=1.0, window=2, edit_fraction=0.1, progress=False)
        r.use("0.8")
        inside = evaluate(m, ho)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # a fresh region: fresh copies
        fresh = evaluate(m, ho)
    assert inside == fresh
    assert r.snapshots["0.8"].holdout_loss == pytest.approx(fresh[0], abs=1e-6)
    assert abs(fresh[0] - dense[0]) > 1e-3  # 80% removed is not the dense network


def test_targets_that_print_alike_keep_distinct_names():
    """0.1000108 and 0.10001085 remove different counts of a large network but were both named
    '0.100011': one snapshot (and one output folder) silently replaced the other."""
    from adaptive.mask_only import _labels

    assert _labels([0.2, 0.5, 300]) == ["0.2", "0.5", "300"]
    names = _labels([0.1000108, 0.10001085, 300])
    assert len(set(names)) == 3 and names[2] == "300" and float(names[0]) == 0.1000108


def test_best_without_a_ladder_never_keeps_worse_than_the_dense_network():
    """Threshold editing ('best' with no ladder) only compared the stage's own evaluations: with
    an editing that hurts, it kept masks at 28% held-out where the dense network scored 81%."""
    m = tiny()
    tr, ho = loaders()
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    m.train()
    for _ in range(30):
        for x, y in tr:
            F.cross_entropy(m(x), y).backward()
            opt.step()
            opt.zero_grad()
    m.eval()
    dense = evaluate(m, ho)[1]
    r = optimize_connectome(m, tr, ho, "best", ladder=(), passes=1.0, window=2, edit_fraction=1.0, margin=-1e6,
                            progress=False, eval_every=1)
    assert r.snapshots["best"].holdout_acc >= dense


def test_edge_popup_refuses_two_targets_of_one_count():
    m = tiny()
    tr, ho = loaders()
    with pytest.raises(ValueError, match="both remove 25 synapses"):
        edge_popup(m, tr, ho, [0.1, 25], passes=0.1, progress=False)


def test_edge_popup_on_a_sparse_model_refuses_as_the_optimisation_does_and_never_keeps_a_zero():
    """On a sparse model (20 weights of exactly 0.0) edge-popup took a target of 10, reported 10 removed though
    20 compute nothing, and its top-k kept zero weights (their scores stay 0.0 while others learn below it),
    removing real weights in their place: a snapshot removed more than its target. It now refuses what
    optimize_connectome refuses, with its words, and never keeps a synapse absent from the start."""
    def sparse():
        m = tiny()
        with torch.no_grad():
            m.fc.weight[:, :5] = 0.0
        return m

    tr, ho = loaders()
    with pytest.raises(ValueError) as ours:
        optimize_connectome(sparse(), tr, ho, 10, passes=0.1, progress=False)
    m = sparse()
    before = copy.deepcopy(m.state_dict())
    with pytest.raises(ValueError, match=r"target 10 removes 10 .* but 20 \(8.1%\) are already absent") as popup:
        edge_popup(m, tr, ho, 10, passes=0.1, progress=False)
    assert str(popup.value) == str(ours.value)
    assert all(torch.equal(m.state_dict()[k], v) for k, v in before.items())
    conn, snaps = edge_popup(m, tr, ho, [20, 100], passes=2.0, lr=0.5, progress=False)
    zero = {n: w == 0 for n, w in conn.original.items()}
    for label, snap in snaps.items():
        assert not any(bool((snap["masks"][n] & zero[n]).any()) for n in zero), label
        assert snap["removed"] == int(label)


def test_edge_popup_leaves_out_non_finite_batches_as_the_controller_does():
    """A NaN in the training data made every score NaN (Adam steps by NaN) and the top-k arbitrary;
    edge-popup ran on and reported held-out figures of a mask picked by NaN comparisons (58% of the
    clean run's masks). Such a batch is now left out and another drawn in its place, with a warning,
    as the controller does; a whole pass of them in a row is refused, the model given its original
    weights back."""
    (x, y), ho = loaders()[0].dataset.tensors, loaders()[1]
    x = x.clone()
    x[5] = float("nan")  # batch 0 of 6; six steps learn from batches 1-5 and 1 again
    with pytest.warns(UserWarning, match="left out 2 training batch"):
        conn, snaps = edge_popup(tiny(), DataLoader(TensorDataset(x, y), batch_size=16), ho, [0.3], passes=1.0,
                                 progress=False)
    _, clean = edge_popup(tiny(), DataLoader(TensorDataset(x[16:], y[16:]), batch_size=16), ho, [0.3], passes=1.2,
                          progress=False)  # the same six batches, without the NaN one
    assert snaps["0.3"]["removed"] == resolve_target(0.3, conn.num_synapses())
    assert all(torch.equal(snaps["0.3"]["masks"][n], clean["0.3"]["masks"][n]) for n in conn.names)
    m = tiny()
    before = copy.deepcopy(m.state_dict())
    x[:] = float("nan")
    with pytest.raises(ValueError, match="NaN or inf on 6 batches in a row .a whole pass. at target 0.3"):
        edge_popup(m, DataLoader(TensorDataset(x, y), batch_size=16), ho, [0.3], passes=1.0, progress=False)
    sd = m.state_dict()
    assert all(torch.equal(sd[k], v) for k, v in before.items())


def test_verification_batches_mix_the_classes_of_a_class_ordered_holdout(monkeypatch):
    """The line search's held-out batches come in a seeded random order, so a holdout loader kept in
    class order (as ImageFolder splits are) still gives verification batches of several classes."""
    import adaptive.mask_only as mo
    from adaptive import mask_only_stages

    g = torch.Generator().manual_seed(0)
    y = torch.arange(96) % 4
    x = torch.randn(96, 3, 6, 6, generator=g) + y.view(-1, 1, 1, 1).float() * 0.3
    order = torch.argsort(y[:64], stable=True)  # the holdout grouped by class
    ho = DataLoader(TensorDataset(x[:64][order], y[:64][order]), batch_size=16)
    tr = DataLoader(TensorDataset(x, y), batch_size=16, shuffle=True, generator=g)
    seen = []
    real = mo.evaluate

    def spy(model, batches, *a, **kw):
        if kw.get("accuracy_fn", 0) is None:  # the line search's verification set
            seen.extend(len(torch.unique(b[1])) for b in batches)
        return real(model, batches, *a, **kw)

    monkeypatch.setattr(mask_only_stages, "evaluate", spy)  # (the module of the run's line search)
    mo.optimize_connectome(tiny(), tr, ho, 0.3, passes=1.0, window=2, verify_batches=1, progress=False)
    assert seen and min(seen) > 1, seen


def test_the_dense_check_of_a_fixed_target_draws_no_random_numbers():
    """Fixed targets scored the holdout first only at their stage's end; the dense network's check
    before any work iterated the holdout DataLoader, which draws its base seed from the global
    generator, so a train loader shuffled by that generator read other batches than before: the
    extra pass leaves every random state as it found it (target "best" scored it there already)."""
    tr, ho = loaders()
    ds = tr.dataset
    states = []

    class Shuffled:  # shuffled by the global generator; notes its state at each pass's start
        def __len__(self):
            return len(self.dl)

        def __init__(self):
            self.dl = DataLoader(ds, batch_size=16, shuffle=True)

        def __iter__(self):
            states.append(torch.get_rng_state())
            return iter(self.dl)

    runs = []
    for holdout in (list(ho), ho):  # a list draws nothing; a DataLoader draws a seed at every pass
        states.clear()
        torch.manual_seed(5)
        r = optimize_connectome(tiny(), Shuffled(), holdout, [0.3], passes=1.0, window=2, edit_fraction=0.1,
                                progress=False)
        runs.append((states[0], [h["train_loss"] for h in r.history if h["kind"] == "update"]))
    assert torch.equal(runs[0][0], runs[1][0]), "the dense check drew from the global generator"
    assert runs[0][1] == runs[1][1]


class _OneShotWithLength:
    """Held-out batches that can be read once, with a length (iter() is the object itself)."""

    def __init__(self, batches):
        self.batches = list(batches)
        self.it = iter(self.batches)

    def __len__(self):
        return len(self.batches)

    def __iter__(self):
        return self

    def __next__(self):
        return next(self.it)


class _SharedIterator:
    """Held-out batches with no length whose iter() hands out one and the same generator."""

    def __init__(self, batches):
        self.it = (b for b in list(batches))

    def __iter__(self):
        return self.it


@pytest.mark.parametrize("kind", [_OneShotWithLength, _SharedIterator])
def test_a_one_shot_holdout_is_refused_before_a_batch_is_read_even_for_one_fixed_target(kind):
    """Every run reads the holdout at least twice now (the dense network's check, then the stage's
    end): a one-shot holdout with a length passed the check, as did one whose iter() hands out the
    same generator (its first batch taken by the emptiness check), and a single fixed target then
    failed with "evaluate: no examples" after its whole stage."""
    _, ho = loaders()
    _refused_before_a_batch_is_read(0.3, "holdout loader is a one-shot iterator", holdout=kind(ho))


def _call(method, loader, seed=0, caller_seed=0):
    """One call of ``method`` on ``tiny()`` with the train loader ``loader``, after the caller seeded
    torch's global generator with ``caller_seed``: (masks, train losses or None, whether any global
    generator moved)."""
    m = tiny()
    _, ho = loaders()
    torch.manual_seed(caller_seed)  # whatever the caller drew before the call
    before = global_rng_states()
    if method == "optimize_connectome":
        r = optimize_connectome(m, loader, ho, [0.5], passes=2.0, window=2, edit_fraction=0.2, seed=seed,
                                progress=False)
        masks, losses = r.snapshots["0.5"].masks, [h["train_loss"] for h in r.history if h["kind"] == "update"]
    else:
        _, snaps = edge_popup(m, loader, ho, [0.5], passes=2.0, lr=0.05, seed=seed, progress=False)
        masks, losses = snaps["0.5"]["masks"], None
    return masks, losses, moved_generators(before, global_rng_states())


def _same_masks(a, b):
    return all(torch.equal(a[n], b[n]) for n in a)


@pytest.mark.parametrize("method", ["optimize_connectome", "edge_popup"])
def test_a_loader_without_a_generator_reads_alike_at_every_call_with_one_seed(method):
    """A DataLoader without a generator draws each pass's order from torch's global generator: two
    identical calls with seed=0 gave different masks unless the caller had seeded torch just
    before, and each call moved the caller's generator. Calls run with the global generators
    seeded from ``seed`` and put the caller's back."""
    tr = DataLoader(loaders()[0].dataset, batch_size=16, shuffle=True)  # no generator of its own
    first, second = _call(method, tr, caller_seed=1), _call(method, tr, caller_seed=2)
    assert _same_masks(first[0], second[0]) and first[1] == second[1]
    assert first[2] == second[2] == []  # torch's, Python's, NumPy's (and CUDA's) generators left where they were
    other = _call(method, tr, seed=1, caller_seed=1)  # the seed decides the order
    assert not _same_masks(first[0], other[0]) or (first[1] is not None and first[1] != other[1])


@pytest.mark.parametrize("method", ["optimize_connectome", "edge_popup"])
def test_a_loader_with_its_own_generator_is_shuffled_by_it(method):
    """A loader with a generator of its own is left to it: its state decides the order (the call's
    seed and the caller's global generator do not), and the call's passes advance it."""
    g = torch.Generator()
    tr = DataLoader(loaders()[0].dataset, batch_size=16, shuffle=True, generator=g)
    g.manual_seed(5)
    first = _call(method, tr, seed=0, caller_seed=1)
    advanced = g.get_state()
    g.manual_seed(5)
    again = _call(method, tr, seed=1, caller_seed=2)
    assert _same_masks(first[0], again[0]) and first[1] == again[1]
    assert torch.equal(g.get_state(), advanced) and not torch.equal(advanced, torch.Generator().manual_seed(5).get_state())
    g.manual_seed(6)
    other = _call(method, tr, seed=0, caller_seed=1)
    assert not _same_masks(first[0], other[0]) or (first[1] is not None and first[1] != other[1])


def test_edge_popup_refuses_a_seed_that_is_no_whole_number():
    tr, ho = loaders()
    with pytest.raises(ValueError, match="seed must be an integer"):
        edge_popup(tiny(), tr, ho, [0.2], seed=0.5, progress=False)


def test_same_bits_is_bit_exact_for_complex128_and_conjugate_views():
    """complex128 has no 16-byte integer view, so the check fell back to ==: a NaN weight read as
    changed, and -0.0 for +0.0 as unchanged. Its real and imaginary parts' bits are compared."""
    from adaptive.mask_only import _same_bits

    nan = float("nan")
    for dtype in (torch.complex128, torch.complex64):
        a = torch.tensor([complex(nan, 1.0), complex(1.0, -0.0), complex(-0.0, 2.0), complex(1.0, 2.0)], dtype=dtype)
        b = torch.tensor([complex(nan, 1.0), complex(1.0, 0.0), complex(0.0, 2.0), complex(1.0, 2.0)], dtype=dtype)
        assert _same_bits(a, b).tolist() == [True, False, False, True], dtype
        assert _same_bits(a.conj(), a.conj().resolve_conj()).all()  # a conjugate view, as it reads
        assert _same_bits(a.conj(), a).tolist() == [False] * 4  # every imaginary part's sign differs
        assert _same_bits(a[2], b[2]).shape == ()  # one entry: one answer
    x = torch.tensor([nan, -0.0, 1.0])
    assert _same_bits(x, torch.tensor([nan, 0.0, 1.0])).tolist() == [True, False, True]
    assert _same_bits(torch.tensor([True, False]), torch.tensor([True, True])).tolist() == [True, False]


class _Stop(Exception):
    pass


def test_a_target_of_0_is_the_dense_network_scored_with_no_stage_of_its_own(tmp_path):
    """Target 0 spent a whole stage (a pass over the train loader) to give back the dense network, and that pass
    moved the loader and the estimator on, so the other targets' masks were not those of a run without it. Now its
    snapshot is the dense network with the held-out figures scored before any edit; the other targets run as
    without it, and a run stopped after it resumes from its checkpoint."""
    kw = dict(approach=0.5, edit_fraction=0.5, window=1)  # a crawl towards the target: its masks follow the batches
    alone = run(tiny(), 0.3, **kw)
    with_0 = run(tiny(), [0, 0.3], **kw)
    assert list(with_0.snapshots) == ["0", "0.3"]
    dense = with_0.snapshots["0"]
    assert dense.removed == 0 and dense.step == 0 and all(bool(m.all()) for m in dense.masks.values())
    evals = [h for h in with_0.history if h["kind"] == "eval"]
    assert (evals[0]["stage"], evals[0]["removed"], evals[0]["holdout_loss"]) == (0, 0, dense.holdout_loss)
    assert not any(h["kind"] == "update" and h["stage"] == 0 for h in with_0.history)  # no pass for it
    updates = [h for h in with_0.history if h["kind"] == "update"]
    assert [(h["step"], h["train_loss"]) for h in updates] == [
        (h["step"], h["train_loss"]) for h in alone.history if h["kind"] == "update"]  # the same batches
    for n, m in alone.snapshots["0.3"].masks.items():  # the 0.3 of a run without target 0, bit for bit
        assert torch.equal(with_0.snapshots["0.3"].masks[n], m)
    assert with_0.snapshots["0.3"].holdout_loss == alone.snapshots["0.3"].holdout_loss
    only = run(tiny(), 0, **kw)
    assert list(only.snapshots) == ["0"] and not any(h["kind"] == "update" for h in only.history)

    ck = tmp_path / "ck.pt"

    def stop(rec):
        if rec["kind"] == "update":
            raise _Stop  # the first update of target 0.3, after target 0's checkpoint

    with pytest.raises(_Stop):
        run(tiny(), [0, 0.3], checkpoint=ck, callback=stop, **kw)
    assert ck.is_file()
    resumed = run(tiny(), [0, 0.3], checkpoint=ck, **kw)
    assert [h["stage"] for h in resumed.history if h["kind"] == "resume"] == [1]
    assert resumed.snapshots["0"].holdout_loss == dense.holdout_loss
    for n, m in alone.snapshots["0.3"].masks.items():
        assert torch.equal(resumed.snapshots["0.3"].masks[n], m)


class _CountedBar:
    """A stand-in for tqdm that counts the bars opened and closed."""
    opened = closed = 0

    def __init__(self, *a, **kw):
        type(self).opened += 1
        self.total = kw.get("total", 0)

    def update(self, n=1):
        pass

    def set_postfix(self, **kw):
        pass

    def close(self):
        type(self).closed += 1


def _stop(rec):
    raise KeyboardInterrupt


@pytest.mark.parametrize("how", ["loader", "interrupt"])
def test_the_progress_bar_is_closed_when_the_run_ends_in_an_exception(monkeypatch, how):
    """The bar was closed only when the run finished: an error in the user's loader or a KeyboardInterrupt left it open."""
    import tqdm.auto

    monkeypatch.setattr(tqdm.auto, "tqdm", type("Bar", (_CountedBar,), {}))
    tr, ho = loaders()
    kw = dict(callback=_stop) if how == "interrupt" else {}
    with pytest.raises(_Interrupted if how == "loader" else KeyboardInterrupt):
        optimize_connectome(tiny(), _BreakingLoader(tr, at=2) if how == "loader" else tr, ho, [0.3], passes=1.0,
                            window=1, progress=True, **kw)
    assert tqdm.auto.tqdm.opened == tqdm.auto.tqdm.closed == 1


def _mlp_and_labels(classes_in_data, seed=0):
    torch.manual_seed(seed)
    x, y = torch.randn(64, 8), torch.arange(64) % classes_in_data
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 10))
    return model, DataLoader(TensorDataset(x, y), batch_size=16)


def test_a_head_with_fewer_classes_than_the_labels_is_refused_up_front_leaving_the_model_whole(tmp_path):
    """A 10-class head fed 100-class labels failed with torch's "Target 63 is out of bounds" (on a GPU a
    device-side assert) inside the run; now the first held-out batch is checked before the connectome is
    built: both class counts and the fix are named, the model keeps every bit of its weights and an
    attached Connectome its masks, nothing is warned of (a sparse start's note came first) and no file is written."""
    model, dl = _mlp_and_labels(100)
    with torch.no_grad():
        model[0].weight[:, :2] = 0.0  # a sparse start: its note came before the refusal
    conn = Connectome(model)
    masks = {n: m.clone() for n, m in conn.masks.items()}
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ckpt = tmp_path / "run" / "ckpt.pt"
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ValueError, match=r"model gives 10 classes.*labels go up to \d\d.*num_classes=") as e:
            optimize_connectome(model, dl, dl, target=0.5, progress=False, checkpoint=ckpt)
    assert not any("interrupted" in n for n in getattr(e.value, "__notes__", []))  # refused, not started
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(torch.equal(masks[n], m) for n, m in conn.masks.items())
    assert not (tmp_path / "run").exists()


def test_regression_targets_under_cross_entropy_are_refused_naming_the_loss_to_pass():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 10))
    dl = DataLoader(TensorDataset(torch.randn(32, 8), torch.randn(32, 3)), batch_size=16)
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(ValueError, match=r"targets are \(16, 3\).*loss_fn=F\.mse_loss"):
        optimize_connectome(model, dl, dl, target=0.5, progress=False)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_train_labels_beyond_the_head_are_refused_by_name_with_the_weights_given_back():
    """The up-front check reads the holdout; train labels the head cannot score are named at the first
    training batch (the loss check), the original weights given back."""
    model, train = _mlp_and_labels(20)
    _, holdout = _mlp_and_labels(10)
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(ValueError, match=r"model gives 10 classes.*go up to 1\d"):
        optimize_connectome(model, train, holdout, target=0.5, progress=False)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def _labels_beyond_the_head_after_the_first_batch():
    """A 10-class MLP and data whose first batch holds labels 0..9 only (a loader ordered by class, say)
    and whose third holds a label of 12."""
    torch.manual_seed(0)
    x, y = torch.randn(48, 8), torch.arange(48) % 10
    y[40] = 12
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 10)), DataLoader(TensorDataset(x, y), batch_size=16)


@pytest.mark.parametrize("where", ["holdout", "train"])
def test_labels_beyond_the_head_in_a_later_batch_are_refused_by_name_with_the_weights_given_back(where):
    """Only the first held-out and the first training batch were checked against the head: a label beyond it in a
    later batch (a holdout ordered by class passes the first-batch check) failed with torch's bare "Target 12 is out
    of bounds" (on a GPU a device-side assert, which leaves the CUDA context, and the model's weights on it,
    unusable). Every batch's labels are now checked before the loss is called: both counts and the fix named, the
    original weights given back."""
    model, bad = _labels_beyond_the_head_after_the_first_batch()
    _, good = _mlp_and_labels(10)
    before = copy.deepcopy(model.state_dict())
    train, holdout = (good, bad) if where == "holdout" else (bad, good)
    with pytest.raises(ValueError, match=r"model gives 10 classes.*labels go up to 12.*num_classes="):
        optimize_connectome(model, train, holdout, target=0.5, passes=1.0, progress=False)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_a_label_beyond_the_head_in_a_later_training_batch_is_refused_before_its_window_is_edited(monkeypatch):
    """A later training batch's labels are checked on the device (a read on the host per batch would stall a GPU:
    tests/test_syncs.py), and read with the window's sums at its update: a label beyond the head (12, in batch 3 of
    windows of 2 batches) is given to the loss as the ignored label, so torch's loss never sees it (on a GPU a
    device-side assert), and refused at the update of batch 3's window before that update runs (the controller's
    step, its edits): the first window's update ran, the second's not. The refusal names both class counts, the
    fix and batch 3 (not 4, the batch of the update), and the original weights are given back."""
    model, bad = _labels_beyond_the_head_after_the_first_batch()
    _, good = _mlp_and_labels(10)
    before = copy.deepcopy(model.state_dict())
    seen, advanced = [], []
    loss_fn = nn.CrossEntropyLoss()
    loss_fn.register_forward_pre_hook(lambda m, args: seen.append(args[1].clone()))
    advance = Controller._advance

    def counted(self):
        advanced.append(self.step_count + 1)
        return advance(self)

    monkeypatch.setattr(Controller, "_advance", counted)
    with pytest.raises(ValueError, match=r"model gives 10 classes.*labels go up to 12.*num_classes=13") as e:
        optimize_connectome(model, bad, good, target=0.5, passes=1.0, window=2, loss_fn=loss_fn, progress=False)
    assert "adaptive: found in training batch 3 of the run (stage 0.5)" in e.value.__notes__, e.value.__notes__
    assert advanced == [1, 2, 3], advanced  # the update at 2 ran; the one at 4, ending batch 3's window, did not
    assert all(int(t.max()) < 10 for t in seen) and any(bool((t == -100).any()) for t in seen)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize("where", ["holdout", "train"])
def test_inputs_the_model_cannot_take_are_named_with_their_shape(where):
    """A loader of inputs of another shape than the model takes (6 features for a model of 8) failed with torch's
    bare "mat1 and mat2 shapes cannot be multiplied", naming neither the loader nor the batch: a note now names
    which loader's batch, its inputs' shape and the fix (the holdout's before any work, nothing changed; the train
    loader's with the weights given back)."""
    model, good = _mlp_and_labels(10)
    other = DataLoader(TensorDataset(torch.randn(32, 6), torch.arange(32) % 10), batch_size=16)
    before = copy.deepcopy(model.state_dict())
    train, holdout = (good, other) if where == "holdout" else (other, good)
    with pytest.raises(RuntimeError) as e:
        optimize_connectome(model, train, holdout, target=0.5, progress=False)
    notes = " ".join(getattr(e.value, "__notes__", []))
    which = "first held-out batch" if where == "holdout" else "training batch 1 of the run"
    assert f"{which} (inputs (16, 6))" in notes and f"give the {where} loader" in notes, notes
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


class _FailsOnAMarkedExample(nn.Module):
    """A 10-class MLP whose forward raises ``error`` (a RuntimeError unrelated to the inputs' shape: a check in
    the model's own code, say) on a batch holding an example whose first feature is 1234."""

    def __init__(self, error):
        super().__init__()
        self.net, self.error = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 10)), error

    def forward(self, x):
        if bool((x[:, 0] == 1234).any()):
            raise self.error
        return self.net(x)


@pytest.mark.parametrize("error", [RuntimeError("the model's own check failed"), torch.OutOfMemoryError("out of memory")])
def test_an_error_of_the_model_on_a_later_training_batch_of_the_same_shape_is_not_blamed_on_the_shape(error):
    """The note on an error the model raised on a training batch told the user to give the train loader inputs of
    the shape the model takes, even on a later batch whose inputs had the shape of the batches the model had just run
    on (the error from its own code or this batch's data): it now names the batch and says the error is not about
    the shape. The error itself is raised as it was (same object, type and message), and an out-of-memory error
    gets no note."""
    _, train = _mlp_and_labels(10)
    x, y = train.dataset.tensors
    x = x.clone()
    x[40, 0] = 1234  # in the third batch of 16
    model = _FailsOnAMarkedExample(error)
    with pytest.raises(type(error)) as e:
        optimize_connectome(model, DataLoader(TensorDataset(x, y), batch_size=16), train, target=0.5, passes=1.0,
                            progress=False)
    assert e.value is error and str(e.value) == str(error)
    notes = " ".join(getattr(e.value, "__notes__", []))
    if isinstance(error, torch.OutOfMemoryError):
        assert "failed on training batch" not in notes, notes
    else:
        assert "failed on training batch 3 of the run (inputs (16, 8))" in notes and "not about their shape" in notes
        assert "give the train loader inputs" not in notes, notes


def _with_ignored_labels(batch_ignored):
    """A 10-class MLP, a train loader of three batches of 16 whose batch ``batch_ignored`` holds only the ignored
    label (-100: a batch of padding positions, say) and a holdout of real labels."""
    torch.manual_seed(0)
    x, y = torch.randn(64, 8), torch.arange(64) % 10
    y_train = y[:48].clone()
    y_train[16 * batch_ignored:16 * (batch_ignored + 1)] = -100
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 10))
    return (model, DataLoader(TensorDataset(x[:48], y_train), batch_size=16),
            DataLoader(TensorDataset(x[48:], y[48:]), batch_size=8))


@pytest.mark.parametrize("window", [1, 2])
def test_a_training_batch_whose_every_label_is_ignored_neither_stops_the_run_nor_makes_its_window_loss_nan(window):
    """A training batch holding only ignored labels (-100) has a loss of NaN (a mean over no position) and a gradient
    of 0: the window's loss sum took NaN x 0 = NaN, so a window of it alone stopped the run with a bare
    ZeroDivisionError (its loss over 0 positions) and a window with other batches reported a train loss of NaN. Such
    a batch now adds nothing to the window's loss: a window of it alone reports no train loss (None, as an accuracy
    with nothing to count), the others the mean over the positions they score."""
    model, train, holdout = _with_ignored_labels(1)
    res = optimize_connectome(model, train, holdout, target=0.3, passes=1.0, window=window, progress=False)
    losses = [h["train_loss"] for h in res.history if h["kind"] == "update"]
    assert res.snapshots["0.3"].removed == round(0.3 * res.conn.num_synapses())
    if window == 1:
        assert losses[1] is None and all(math.isfinite(v) for i, v in enumerate(losses) if i != 1), losses
    else:
        assert all(v is not None and math.isfinite(v) for v in losses), losses


def test_a_held_out_batch_whose_every_label_is_ignored_adds_nothing_under_a_loss_without_reduction():
    """A held-out batch whose every label is the ignored one (-100) under a loss that takes no ``reduction=`` (its
    mean, NaN there, weighted by its 0 positions) made the whole held-out loss NaN, and the run was refused with
    "the dense network's held-out loss is nan ... check the held-out data for NaN or inf", though the data held
    none. Such a batch now adds nothing, as it does to a training window: the loss is the other batches' mean over
    their positions, as F.cross_entropy (which takes reduction="sum") gives it."""
    model, train, _ = _with_ignored_labels(1)
    y = torch.arange(24) % 10
    y[8:16] = -100
    holdout = DataLoader(TensorDataset(torch.randn(24, 8), y), batch_size=8)

    def mean_ce(o, t):  # (no reduction= parameter: its mean is weighted by the batch's positions)
        return F.cross_entropy(o, t)

    summed, plain = evaluate(model, holdout, F.cross_entropy), evaluate(model, holdout, mean_ce)
    assert plain[2] == summed[2] == 16 and plain[0] == pytest.approx(summed[0], rel=1e-6), (plain, summed)
    res = optimize_connectome(model, train, holdout, target=0.3, passes=1.0, loss_fn=mean_ce, progress=False)
    assert math.isfinite(res.snapshots["0.3"].holdout_loss)


def test_a_holdout_whose_every_label_is_ignored_is_refused_naming_it():
    """A holdout whose every label is the ignored one (-100) gives no held-out figure: it was refused with a bare
    "evaluate: no examples"; now the error names the ignored labels and the fix."""
    model, train, _ = _with_ignored_labels(0)
    holdout = DataLoader(TensorDataset(torch.randn(16, 8), torch.full((16,), -100)), batch_size=8)
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(ValueError, match=r"no examples to score.*ignored.*-100.*holdout"):
        optimize_connectome(model, _with_ignored_labels(1)[1], holdout, target=0.3, progress=False)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_the_first_batch_check_moves_no_random_generator():
    """check_first_batch reads the holdout's first batch (a shuffled DataLoader draws from torch's generator
    when it starts a pass): every generator is put back, so the run reads the batches it read without it."""
    from adaptive.mask_only_eval import check_first_batch

    model, dl = _mlp_and_labels(10)
    shuffled = DataLoader(dl.dataset, batch_size=16, shuffle=True)
    state = torch.get_rng_state()
    check_first_batch(model, shuffled, F.cross_entropy)
    assert torch.equal(state, torch.get_rng_state())


@pytest.mark.filterwarnings("ignore:.*no live synapse left")  # 150 of 165 removed by neurons cuts a layer
def test_the_last_update_closes_a_coarse_remainder_with_smaller_ensembles():
    """With ensembles of several sizes a stage's last update took the cheapest ensembles while at least
    half of each fit, then stopped at the first that did not: a remainder a smaller ensemble further on
    could close was left (neurons of 12, 7 and 5 synapses: 71 removed asked, 67 given; 150 asked, 145).
    It now adds, largest size first, the first ensembles of each size that bring the count nearer (pruning: or
    as near, exactly half of one fitting)."""
    from adaptive.policies.crawl import Crawl

    sizes = torch.tensor([27, 27, 8, 8, 8])
    order = torch.arange(5)
    assert Crawl._cover(order, sizes, 40) == 1  # 27: the next 27 would overshoot by more than it gains
    assert Crawl._fill(order[1:], sizes, 40 - 27).tolist() == [2, 3]  # 27 + 8 + 8 = 43: 3 away, not 13
    assert Crawl._fill(order[1:], sizes, 4).tolist() == [2]  # exactly half an 8: a tie pruning takes
    assert Crawl._fill(order[1:], sizes, 4, ties=False).tolist() == []  # restoring does not
    assert Crawl._fill(order[1:], sizes, 3).tolist() == []  # an 8 would be farther than none
    torch.manual_seed(0)
    x, y = torch.randn(96, 5), torch.randint(0, 3, (96,))
    dl = DataLoader(TensorDataset(x, y), batch_size=32)
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(5, 12), nn.ReLU(), nn.Linear(12, 7), nn.ReLU(), nn.Linear(7, 3))  # 165 synapses
    res = optimize_connectome(model, dl, dl, target=[71, 150], ensemble="neuron", progress=False, passes=1)
    assert [abs(res.snapshots[t].removed - int(t)) for t in ("71", "150")] == [2, 2]  # were 4 and 5


def test_processes_agree_on_their_loaders(tmp_path):
    """Two plain processes (a gloo group of their own, no launcher), one case after another, process 1's
    loaders wrong in each: train shards of 2 and 1 batches left both waiting in a collective until the
    group's timeout (the steps per stage came from each process's own len(train_loader)), and a loader
    refused on process 1 alone (empty, no length; an empty holdout) left process 0 to fail in its next
    collective ("Connection closed by peer"; under NCCL, a wait). Now every process raises one ValueError,
    naming each process's length (or the process refused) and the fix; loaders that agree run."""

    from _ports import two_rank_records

    got = two_rank_records("two_process_loaders.py", tmp_path)
    assert got[0] == got[1], got  # one error (or outcome) per case on both
    rec = got[0]
    for case in ("uneven", "empty_train", "unsized_train", "empty_holdout", "sharded_holdout"):
        assert rec[case]["error"] == "ValueError", rec
    assert "different train loader lengths (process 0 of 2: 2 batches; process 1 of 2: 1 batch)" \
        in rec["uneven"]["message"]
    assert "DistributedSampler" in rec["uneven"]["message"] and "drop_last=True" in rec["uneven"]["message"]
    for case, problem in (("empty_train", "train loader is empty"),
                          ("unsized_train", "the train loader needs a length (len(loader))"),
                          ("empty_holdout", "holdout loader is empty"),
                          # (a sharded holdout ran: line search and snapshots read each process's padded shard)
                          ("sharded_holdout", "holdout loader is sharded (its DistributedSampler gives each process a "
                                              "shard): every process must evaluate the whole holdout")):
        assert f"process 1 of 2: {problem}" in rec[case]["message"], rec
        assert "process 0 of 2 found no such problem: each process was given loaders of its own" \
            in rec[case]["message"], rec
    assert rec["even"] == {"removed": 28}


def test_a_holdout_prepared_by_accelerate_is_told_sharded():
    """accelerator.prepare(holdout) is the natural idiom, and under two processes it ran on padded shards
    (303 of 320 examples counted, 33 of them repeats): mask_only_data._sharded names it (the refusal itself
    is checked on two processes, with a DistributedSampler, in test_processes_agree_on_their_loaders)."""
    from accelerate import Accelerator

    from adaptive.mask_only_data import _sharded

    plain = DataLoader(TensorDataset(torch.randn(8, 4), torch.zeros(8, dtype=torch.long)), batch_size=4)
    assert _sharded(plain) == "" and _sharded([(torch.zeros(1, 4), torch.zeros(1, dtype=torch.long))]) == ""
    assert _sharded(Accelerator(cpu=True).prepare(plain)) == ("prepared by Accelerate: accelerator.prepare gives each "
                                                              "process a shard")


@pytest.mark.parametrize("n", [3, 10**18])
def test_verify_batches_above_the_holdouts_batches_is_refused_naming_the_count(n):
    """Values above the held-out batches only read some of them twice, and --verify-batches 10**18 hung:
    the first update built a list of that many batches by cycling the held-out loader. Refused in the words
    of the recipes' --window and --verify-batches refusals (adaptive.cli_checks.one_pass_problem: 'give
    verify_batches=2 or fewer', not 'give verify_batches <= 2')."""
    _refused_before_a_batch_is_read(0.3, rf"verify_batches={n} is more than the 2 batches of the held-out loader: "
                                         r"each line search would read some of them twice, which adds no evidence; give "
                                         r"verify_batches=2 or fewer, or hold out more data$",
                                    verify_batches=n)


class _Batches:
    """A holdout of no length (iterated afresh each time): its batches are counted as they are read."""

    def __init__(self, loader):
        self.batches = list(loader)

    def __iter__(self):
        return iter(self.batches)


def test_verify_batches_above_a_holdout_of_no_length_is_refused_at_the_first_pass_it_outlasts():
    """A holdout with no len() cannot be counted up front: the refusal comes once a pass of it proves
    shorter than verify_batches (a huge count hung there too), and as many as it holds run."""
    tr, ho = loaders()
    with pytest.raises(ValueError, match=r"verify_batches=1000000000000000000 is more than the 2 batches of the held-out"):
        optimize_connectome(tiny(), tr, _Batches(ho), 0.3, passes=1.0, window=2, verify_batches=10**18, progress=False)
    tr, ho = loaders()
    r = optimize_connectome(tiny(), tr, _Batches(ho), 0.3, passes=1.0, window=2, verify_batches=2, progress=False)
    assert r.history


def test_a_snapshots_repr_never_shows_an_accuracy_of_all_or_a_loss_of_none_that_it_is_not():
    """A snapshot's repr wrote its held-out figures to 4 decimals: an accuracy of 0.99999 read "1.0000" (every
    example right) and a loss of 1e-5 "0.0000"; they keep the digits that say so (fmt_unsaturated), an exact 1
    or 0, NaN and None as before."""
    from adaptive.mask_only_result import Snapshot

    assert "holdout_loss=0.00001, holdout_acc=0.99999," in repr(Snapshot("0.5", 3, {}, 1e-5, 0.99999, 4))
    assert "holdout_loss=0.0000, holdout_acc=1.0000," in repr(Snapshot("0.5", 3, {}, 0.0, 1.0, 4))
    assert "holdout_loss=nan, holdout_acc=None," in repr(Snapshot("0.5", 3, {}, float("nan"), None, 4))


def test_a_window_beyond_one_pass_of_the_train_loader_is_refused_before_a_batch_is_read():
    """window=100 over a train loader of a few batches read many passes for passes=1.0 (a stage is rounded up to
    whole windows), in silence, where the recipes refuse such a --window: refused alike, naming the largest that
    fits; a window of exactly one pass runs."""
    tr, _ = loaders()
    n = len(tr)
    _refused_before_a_batch_is_read(0.3, rf"window={n + 1} is more than the {n:,} batch(es)? of one pass of the "
                                         rf"train loader: an update's window would read some of them twice.*give "
                                         rf"window={n} or fewer", window=n + 1)
    m = tiny()
    tr, ho = loaders()
    res = optimize_connectome(m, tr, ho, 0.3, window=n, passes=1.0, progress=False)
    assert res.snapshots["0.3"].removed == round(0.3 * res.conn.num_synapses())


def test_a_window_beyond_one_pass_resumed_from_its_checkpoint_goes_on_as_it_ran(tmp_path, monkeypatch):
    """A run started with a window beyond one pass before that was refused resumes from its checkpoint with it (the
    checkpoint refuses any other window, so a smaller one is no fix there), as the recipes' --resume does."""
    from adaptive import mask_only_settings

    tr, ho = loaders()
    n = len(tr)
    ckpt_file = tmp_path / "run.ckpt"
    with monkeypatch.context() as mp:  # (the run as it ran before the refusal)
        mp.setattr(mask_only_settings, "_refuse_window_beyond_a_pass", lambda s: None)
        first = optimize_connectome(tiny(), tr, ho, [0.2, 0.3], window=n + 1, passes=0.5, progress=False,
                                    checkpoint=str(ckpt_file))
    assert ckpt_file.is_file()
    again = optimize_connectome(tiny(), tr, ho, [0.2, 0.3], window=n + 1, passes=0.5, progress=False,
                                checkpoint=str(ckpt_file))
    assert again.snapshots["0.3"].removed == first.snapshots["0.3"].removed
