"""The connectome's cache of ensemble masks: always what pooling the current masks gives, after every
kind of edit; callers get copies; a controller update reads it instead of pooling every layer again;
masks expanded from ensemble masks skip only the rule checks they cannot fail."""
import copy
import pickle

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import adaptive
from adaptive import ensembles
from adaptive.connectome import EnsembleRuleError
from adaptive.ensembles import BlockGranularity, NeuronGranularity, expands_exactly, get_granularity
from adaptive.policies.base import EditPlan

torch.set_num_threads(1)

ENSEMBLES = ["block:2x3", "neuron", "kernel", "2:4"]


def net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 6, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(6, 10))


def pooled(conn):
    """The ensemble masks computed afresh from the masks, by the granularities alone."""
    out = {}
    for n, m in conn.masks.items():
        g = conn.granularities[n]
        out[n] = m.clone() if tuple(g.ensemble_shape(m.shape)) == tuple(m.shape) else g.pool(m.float(), "max") > 0
    return out


def assert_fresh(conn):
    want = pooled(conn)
    got = conn.ensemble_masks()
    assert got.keys() == want.keys()
    for n in want:
        assert torch.equal(got[n], want[n]), n
        assert torch.equal(conn._ensemble_mask(n), want[n]), n  # what the controller reads


def random_masks(conn, seed):
    """Valid random synapse masks (about half alive) for every layer of ``conn``."""
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for n, m in conn.masks.items():
        g = conn.granularities[n]
        scores = torch.rand(g.ensemble_shape(m.shape), generator=gen)
        keep = g.select(scores) if hasattr(g, "density") else scores > 0.5
        out[n] = g.expand(keep, m.shape).contiguous()
    return out


def sparse(ensemble, seed=1):
    """A connectome with random valid masks whose ensemble masks are in the cache."""
    conn = adaptive.Connectome(net(), ensemble=ensemble)
    assert_fresh(conn)  # the dense masks, cached
    conn.set_masks(random_masks(conn, seed))
    conn.ensemble_masks()
    return conn


@pytest.mark.parametrize("ensemble", ENSEMBLES)
def test_after_set_masks(ensemble):
    conn = sparse(ensemble)
    assert_fresh(conn)
    conn.set_masks(random_masks(conn, 7))
    assert_fresh(conn)


@pytest.mark.parametrize("ensemble", ENSEMBLES)
def test_after_set_ensemble_masks(ensemble):
    conn = sparse(ensemble)
    ens = {n: ~e for n, e in conn.ensemble_masks().items()}
    if ensemble == "2:4":  # the complement of 2 of 4 is 2 of 4, but keep it obviously valid
        ens = {n: conn.granularities[n].select(torch.rand(e.shape)) for n, e in ens.items()}
    conn.set_ensemble_masks(ens)
    assert_fresh(conn)
    for n in conn.names:  # set_ensemble_masks stored exactly what it was given, as a copy of its own
        assert torch.equal(conn._ensemble_mask(n), ens[n].reshape(conn._ensemble_mask(n).shape))
        ens[n].fill_(True)
    assert_fresh(conn)


@pytest.mark.parametrize("ensemble", ENSEMBLES)
def test_after_an_in_place_edit_of_a_mask(ensemble):
    conn = sparse(ensemble)
    names = conn.names
    conn.masks[names[0]].zero_()  # same tensor, new version
    conn.masks[names[1]][0].fill_(False)
    assert_fresh(conn)
    conn.masks[names[0]][0].fill_(True)  # and back, partly
    assert_fresh(conn)


@pytest.mark.parametrize("ensemble", ENSEMBLES)
def test_after_a_new_tensor_replaces_a_mask(ensemble):
    conn = sparse(ensemble)
    names = conn.names
    for n in names:  # its version may equal the one pooled
        conn.masks[n] = torch.zeros_like(conn.masks[n])
    assert_fresh(conn)
    conn.masks[names[0]] = torch.ones_like(conn.masks[names[0]]).to("cpu", copy=True)  # as a move to a device does
    assert_fresh(conn)


@pytest.mark.parametrize("ensemble", ENSEMBLES)
def test_after_load_state_dict(ensemble):
    conn, other = sparse(ensemble, seed=3), sparse(ensemble, seed=2)
    conn.load_state_dict(other.state_dict())
    assert_fresh(conn)
    for n in conn.names:
        assert torch.equal(conn.masks[n], other.masks[n])


@pytest.mark.parametrize("ensemble", ENSEMBLES)
def test_a_copy_pools_its_own_masks(ensemble):
    conn = sparse(ensemble)
    clone = copy.deepcopy(conn)
    clone.masks[conn.names[0]].fill_(True)
    assert_fresh(clone)
    assert_fresh(conn)
    assert_fresh(pickle.loads(pickle.dumps(conn)))


def test_a_mask_made_in_inference_mode_is_pooled_every_time():
    conn = adaptive.Connectome(net(), ensemble="neuron")
    n = conn.names[0]
    with torch.inference_mode():
        t = torch.ones_like(conn.masks[n])
        conn.masks[n] = t
        assert_fresh(conn)
        t[0].fill_(False)  # an inference tensor keeps no version
        assert_fresh(conn)


@pytest.mark.parametrize("ensemble", ENSEMBLES)
def test_editing_a_returned_mask_changes_nothing(ensemble):
    conn = adaptive.Connectome(net(), ensemble=ensemble)
    conn.set_masks(random_masks(conn, 4))
    first = conn.ensemble_masks()
    for e in first.values():
        e.fill_(False)
    assert_fresh(conn)
    assert any(bool(e.any()) for e in conn.ensemble_masks().values())
    ctrl = adaptive.Controller(conn, policy="magnitude", density=0.5, update_every=10**9, seed=0)
    for e in ctrl.alive().values():
        e.fill_(False)
    assert_fresh(conn)


def _train(ensemble, policy, updates):
    """A controller editing a small conv net every 2 steps; yields after every update."""
    model = net()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    conn = adaptive.Connectome(model, ensemble=ensemble)
    ctrl = adaptive.Controller(conn, opt, policy=policy, density=0.5, update_every=2, edit_fraction=0.3,
                               end_step=10**6, seed=0)
    x, y = torch.randn(8, 3, 8, 8, generator=torch.Generator().manual_seed(5)), torch.arange(8)
    done = 0
    while done < updates:
        F.cross_entropy(model(x), y).backward()
        opt.step()
        opt.zero_grad()
        if ctrl.events and ctrl.events[-1]["step"] == ctrl.step_count and ctrl.events[-1].get("kind") == "update":
            done += 1
            yield conn, ctrl


@pytest.mark.parametrize("ensemble,policy", [("block:2x3", "rigl"), ("neuron", "set"), ("kernel", "set"),
                                             ("2:4", "utility"), ("0=neuron;6=kernel;block:2x2", "rigl")])
def test_controller_updates_keep_the_cache_equal_to_pooling(ensemble, policy):
    edits = 0
    for conn, ctrl in _train(ensemble, policy, updates=4):
        assert_fresh(conn)
        edits += sum(ctrl.events[-1].get(k, 0) for k in ("pruned", "grown"))
    assert edits  # the updates edited masks


def _count_max_pools(monkeypatch):
    """Count the max-pools of masks the block and neuron granularities run (ensemble_masks and the
    rule check of Granularity.violation both run one per layer)."""
    calls = []
    for cls in (BlockGranularity, NeuronGranularity):
        def counting(self, scores, how="sum", _pool=cls.pool):
            if how == "max":
                calls.append(1)
            return _pool(self, scores, how)
        monkeypatch.setattr(cls, "pool", counting)
    return calls


@pytest.mark.parametrize("ensemble,policy", [("block:2x3", "rigl"), ("neuron", "set")])
def test_a_controller_update_reads_the_cache_instead_of_pooling(ensemble, policy, monkeypatch):
    updates = _train(ensemble, policy, updates=3)
    conn, ctrl = next(updates)  # the first edits are made
    calls = _count_max_pools(monkeypatch)
    for _ in range(2):
        conn, ctrl = next(updates)
        assert ctrl.events[-1]["pruned"]  # an update that edits masks
    # before the cache: ensemble_masks pooled every layer three times per update and the rule check
    # once more for each edited layer; now the masks it set are stored and nothing is pooled
    assert len(calls) == 0


def test_expanded_masks_keep_the_rule_of_exact_granularities():
    """What expands_exactly claims: for every ensemble mask, the expanded mask is valid and pools back."""
    gen = torch.Generator().manual_seed(0)
    for spec in ["synapse", "kernel", "neuron", "block:1x1", "block:2x3", "block:4x4", "block:5x2"]:
        g = get_granularity(spec)
        assert expands_exactly(g)
        for shape in [(3, 4), (7, 5), (5, 3, 3), (6, 2, 3, 2), (9, 1, 1, 1, 4)]:
            for _ in range(3):
                e = torch.rand(g.ensemble_shape(shape), generator=gen) > 0.5
                m = g.expand(e, shape).contiguous()
                assert g.violation(m) is None
                assert torch.equal(g.pool(m.float(), "max") > 0, e)


def test_rules_are_still_checked_where_an_expanded_mask_can_break_them(monkeypatch):
    class HalfBlocks(BlockGranularity):
        """A plugin granularity adding a rule: at least half the blocks stay."""
        def violation(self, mask):
            why = super().violation(mask)
            return why or (None if self.pool(mask.float(), "max").mean() >= 0.5 else "fewer than half the blocks live")

    monkeypatch.setitem(ensembles._REGISTRY, "halfblock", lambda s: HalfBlocks(2, 2))  # gone after the test
    assert not expands_exactly(get_granularity("halfblock"))
    assert not expands_exactly(get_granularity("2:4"))
    conn = adaptive.Connectome(net(), ensemble="halfblock")
    n = conn.names[0]
    with pytest.raises(EnsembleRuleError, match="fewer than half"):
        conn.set_ensemble_masks({n: torch.zeros(conn.granularities[n].ensemble_shape(conn.masks[n].shape), dtype=torch.bool)})
    assert bool(conn.masks[n].all())
    nm = adaptive.Connectome(net(), ensemble="2:4")
    bad = nm.granularities[n].select(torch.rand(nm.masks[n].shape))  # 2 of every 4, then 3 of 4 in one group
    bad.view(bad.shape[0], -1)[0, :4] = True
    with pytest.raises(EnsembleRuleError, match="more than 2"):
        nm.set_ensemble_masks({n: bad})


@pytest.mark.parametrize("ensemble,policy", [("block:2x3", "rigl"), ("neuron", "set"), ("2:4", "utility")])
def test_a_refused_edit_leaves_masks_and_cache_as_they_were(ensemble, policy):
    """The controller builds its new masks from the cached ones: an edit refused half-way (here by a
    grow_init that raises) must have edited neither the masks nor the cache."""
    def refuse(name, grown):
        raise RuntimeError("no growth today")

    updates = _train(ensemble, policy, updates=4)
    conn, ctrl = next(updates)
    before = {n: m.clone() for n, m in conn.masks.items()}
    ctrl.grow_init = refuse
    with pytest.raises(RuntimeError, match="no growth today"):
        for _ in range(3):
            next(updates)
    for n, m in conn.masks.items():
        assert torch.equal(m, before[n]), n
    assert_fresh(conn)


def test_resident_bytes_count_the_cached_ensemble_masks():
    conn = adaptive.Connectome(net(), ensemble="neuron")
    base = conn.resident_bytes()
    conn.ensemble_masks()
    assert conn.resident_bytes() == base + sum(m.shape[0] for m in conn.masks.values())


@pytest.mark.parametrize("ensemble,policy", [("block:2x3", "rigl"), ("neuron", "set")])
def test_a_controller_update_pools_no_ensemble_sizes_once_warm(ensemble, policy, monkeypatch):
    """Every update pooled a tensor of ones over each edited layer's weight to count the synapses of
    its plan (_synapse_counts): a layer's sizes never change, so they are pooled once."""
    from adaptive.ensembles import Granularity

    updates = _train(ensemble, policy, updates=3)
    conn, ctrl = next(updates)
    calls = []
    real = Granularity.ensemble_sizes
    monkeypatch.setattr(Granularity, "ensemble_sizes", lambda self, *a, **k: calls.append(1) or real(self, *a, **k))
    for _ in range(2):
        conn, ctrl = next(updates)
        assert ctrl.events[-1]["pruned"] and ctrl.events[-1]["pruned"] > ctrl.events[-1]["pruned_ensembles"]
    assert len(calls) == 0
    name = next(iter(conn.masks))
    sizes = ctrl.ensemble_sizes(name)  # a copy: editing it changes no count
    sizes.fill_(0)
    assert bool((ctrl.ensemble_sizes(name) > 0).all())


def test_a_mask_written_behind_the_version_counter_is_seen_after_apply():
    """A neuron pruned through .data (then conn.apply(), as for any write behind autograd's version
    counter) was regrown by the next controller edit of that layer: the cached ensemble mask still
    showed it alive. apply() drops the cache; a rolled-back edit of that layer is still bit-exact."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 4))
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    conn = adaptive.Connectome(model, ensemble="neuron")
    ctrl = adaptive.Controller(conn, opt, policy="rigl", density=0.5, update_every=10**6)
    x, y = torch.randn(8, 16), torch.arange(8) % 4
    F.cross_entropy(model(x), y).backward()
    opt.step()
    name = "0.weight"
    live = conn.ensemble_masks()[name].reshape(-1).nonzero().squeeze(1)
    dead_one, edited = int(live[0]), int(live[1])
    conn.masks[name].data[dead_one] = False
    conn.apply()
    assert not bool(conn.ensemble_masks()[name][dead_one].any())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    moments = {k: v.clone() for k, v in opt.state[conn.params[name]].items()}
    ctrl.holdout_loss = lambda: 0.0 if torch.equal(conn.masks[name], mask_before) else 1.0  # rejects any edit
    ctrl.line_search_tolerance = 0.0  # (train mode's default, inf, only measures)
    mask_before = conn.masks[name].clone()
    ctrl._apply(EditPlan(prune={name: torch.tensor([edited])}), step=0)
    assert torch.equal(conn.masks[name], mask_before)  # rolled back, the .data prune kept
    assert all(torch.equal(v.view(torch.uint8), before[k].view(torch.uint8)) for k, v in model.state_dict().items())
    assert all(torch.equal(v, moments[k]) for k, v in opt.state[conn.params[name]].items())
    ctrl.holdout_loss = None
    ctrl._apply(EditPlan(prune={name: torch.tensor([edited])}), step=0)
    assert not bool(conn.masks[name][dead_one].any()) and not bool(conn.masks[name][edited].any())
