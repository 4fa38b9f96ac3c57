"""A policy of your own that returns a plan the controller cannot apply is refused before any mask
changes, with an error naming the policy (its registered name), what it returned and what was
expected (adaptive/plan_checks.py): and so is a density outside [0, 1] asked of ctrl.keep_plan."""
import re

import pytest
import torch

import adaptive
from adaptive.policies.base import _POLICIES, EditPlan, Policy, register_policy

L = "0.weight"


def _net():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(20, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10))


@pytest.fixture
def planned():
    """``planned(fn)``: a controller on a half-sparse net whose policy 'plan_checks_policy' returns
    ``fn(ctrl)``; the test then updates it and checks that nothing changed."""
    made = []

    def make(fn, ensemble="synapse"):
        class Planned(Policy):
            sparse_at_start = False
            needs_density = False

            def update(self, ctrl, step):
                return fn(ctrl)

        register_policy("plan_checks_policy", replace=True)(Planned)
        conn = adaptive.Connectome(_net(), ensemble=ensemble)
        g = torch.Generator().manual_seed(0)
        conn.set_ensemble_masks({n: torch.rand(m.shape, generator=g) < 0.5 for n, m in conn.ensemble_masks().items()})
        ctrl = adaptive.Controller(conn, policy="plan_checks_policy", update_every=1)
        made.append((ctrl, {n: m.clone() for n, m in conn.masks.items()},
                     {n: p.detach().clone() for n, p in conn.params.items()}))
        return ctrl

    yield make
    _POLICIES.pop("plan_checks_policy", None)
    for ctrl, masks, weights in made:  # bit-identical after every refusal
        assert all(torch.equal(masks[n], ctrl.conn.masks[n]) for n in masks)
        assert all(torch.equal(weights[n], p.detach()) for n, p in ctrl.conn.params.items())
        assert not ctrl.events


def live(ctrl, n=L):
    return ctrl.conn.masks[n].reshape(-1).nonzero().squeeze(1)


def dead(ctrl, n=L):
    return (~ctrl.conn.masks[n]).reshape(-1).nonzero().squeeze(1)


WHO = r"policy 'plan_checks_policy' \(Planned\) returned a bad EditPlan: "


@pytest.mark.parametrize("which", ["live", "absent"])
def test_a_plan_that_prunes_and_grows_the_same_ensemble_is_refused_naming_them(planned, which):
    """No built-in policy makes such a plan, but a user's can: it was refused only by the side checks,
    as 'grow holds ensembles that are already present' (or 'prune ... already absent'), which named
    neither the overlap nor the ensembles."""
    def plan(ctrl):
        i = (live if which == "live" else dead)(ctrl)[:3]
        other = (dead if which == "live" else live)(ctrl)[:2]
        prune, grow = (torch.cat([i, other[:0]]), torch.cat([other, i[1:]])) if which == "live" else (i, i)
        return EditPlan(prune={L: prune}, grow={L: grow})

    ctrl = planned(plan)
    both = (live if which == "live" else dead)(ctrl)[1 if which == "live" else 0:3].tolist()
    with pytest.raises(ValueError, match=WHO + rf"it both prunes and grows {len(both)} ensemble\(s\) of layer "
                                           rf"'0.weight': {re.escape(str(both))}.*list each in prune or in grow"):
        ctrl.update()


@pytest.mark.parametrize("case, plan, what", [
    ("out of range", lambda c: EditPlan(prune={L: torch.tensor([0, 640, 10**6])}),
     r"prune\['0.weight'\] holds 2 indices outside \[0, 640\) \(the layer's ensembles\): \[640, 1000000\]"),
    ("negative", lambda c: EditPlan(prune={L: torch.tensor([-1])}), r"prune\['0.weight'\] holds 1 indices outside \[0, 640\).*: \[-1\]"),
    ("duplicates", lambda c: EditPlan(prune={L: live(c)[[2, 2, 5, 5]]}),
     r"prune\['0.weight'\] lists 2 ensemble\(s\) more than once: "),
    ("float indices", lambda c: EditPlan(prune={L: live(c)[:2].float()}),
     r"prune\['0.weight'\] is a tensor of dtype float32 and shape \(2,\) \(float indices.*expected a 1-d int64"),
    ("a mask of the wrong length", lambda c: EditPlan(prune={L: torch.ones(7, dtype=torch.bool)}),
     r"prune\['0.weight'\] is a tensor of dtype bool and shape \(7,\) \(a boolean mask of 7 entries: give the indices of its True "
     r"entries, mask.reshape\(-1\).nonzero\(\).squeeze\(1\)\), expected"),
    ("a mask", lambda c: EditPlan(grow={L: ~c.conn.masks[L].reshape(-1)}), r"grow\['0.weight'\] is a tensor of dtype "
     r"bool and shape \(640,\) \(a boolean mask: give the indices"),
    ("meta indices", lambda c: EditPlan(prune={L: torch.tensor([1], device="meta")}),
     r"prune\['0.weight'\] is a tensor of dtype int64 and shape \(1,\) on meta \(the meta device holds no values"),
    ("None for a layer", lambda c: EditPlan(grow={L: None}), r"grow\['0.weight'\] is None, expected a 1-d int64"),
    ("a list of lists", lambda c: EditPlan(prune=[live(c)]), r"its prune is a list, expected a dict of layer name"),
    ("pruning absent", lambda c: EditPlan(prune={L: torch.cat([live(c)[:2], dead(c)[:3]])}),
     r"prune\['0.weight'\] holds 3 ensemble\(s\) that are already absent: \[\d+, \d+, \d+\]; prune only live"),
    ("growing present", lambda c: EditPlan(grow={L: live(c)[:1]}),
     r"grow\['0.weight'\] holds 1 ensemble\(s\) that are already present"),
    ("NaN scores", lambda c: EditPlan(prune={L: live(c)[:2]}, prune_scores={L: torch.tensor([float("nan"), 1.0])}),
     r"prune_scores\['0.weight'\] holds 1 NaN"),
    ("2-d scores", lambda c: EditPlan(prune={L: live(c)[:2]}, prune_scores={L: torch.ones(1, 2)}),
     r"prune_scores\['0.weight'\] is a tensor of dtype float32 and shape \(1, 2\), expected a 1-d real tensor"),
    ("NaN tolerance", lambda c: EditPlan(prune={L: live(c)[:1]}, tolerance=float("nan")),
     r"its tolerance is nan, expected None or a number >= 0"),
    ("a string estimate", lambda c: EditPlan(prune={L: live(c)[:1]}, est_loss_change="0.1"),
     r"its est_loss_change is '0.1', expected None or a number"),
])
def test_a_bad_plan_is_refused_naming_the_policy_what_it_returned_and_what_was_expected(planned, case, plan, what):
    """Float indices, masks, meta indices and None were refused as 'must be a 1-d integer tensor' with no
    word of what came back; a plan whose prune was a list raised a bare AttributeError, meta indices a
    bare 'Tensor.item() cannot be called on meta tensors'; NaN or 2-d scores and a NaN tolerance were
    taken (a NaN estimate in the event, a line search that rolls back every try)."""
    ctrl = planned(plan)
    with pytest.raises(ValueError, match=WHO + what):
        ctrl.update()


def test_a_bad_plan_of_ensembles_names_the_ensemble_indices(planned):
    ctrl = planned(lambda c: EditPlan(prune={L: torch.tensor([0, 32])}), ensemble="neuron")
    with pytest.raises(ValueError, match=WHO + r"prune\['0.weight'\] holds 1 indices outside \[0, 32\).*: \[32\]"):
        ctrl.update()


@pytest.mark.parametrize("density", [-0.3, 1.5, float("nan"), "0.5", torch.tensor([0.2, 0.3])])
def test_a_density_outside_0_1_from_a_policys_schedule_is_refused_naming_the_policy(planned, density):
    """A density from a policy's own schedule was taken as it came: -0.3 failed with 'math domain error',
    NaN with 'cannot convert float NaN to integer', a string with a TypeError, and 1.5 ran as 1.0."""
    ctrl = planned(lambda c: c.keep_plan(c.scores("cost"), density))
    with pytest.raises(ValueError, match=r"policy 'plan_checks_policy' \(Planned\) asked for a keep plan at density "
                                         r".*: a density is the fraction of synapses kept, a number in \[0, 1\]"):
        ctrl.update()


@pytest.mark.parametrize("density, kept", [(torch.tensor(0.25), 160), (1.0000001, 640), (-1e-9, 0)])
def test_a_density_given_as_a_tensor_or_with_float_error_is_taken(density, kept):
    from adaptive.policies.base import plan_density

    conn = adaptive.Connectome(_net())
    ctrl = adaptive.Controller(conn, policy="magnitude", density=0.5, budget="uniform", update_every=1, end_step=1)
    assert plan_density(ctrl, density) == kept / 640


class _Largest:
    """A TorchDispatchMode (built lazily) recording the largest new storage (in elements) any op makes:
    views and in-place results share an input's storage and are not counted."""

    @staticmethod
    def mode():
        from torch.utils._python_dispatch import TorchDispatchMode
        from torch.utils._pytree import tree_leaves

        class Largest(TorchDispatchMode):
            def __init__(self):
                super().__init__()
                self.most, self.ops = 0, []

            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                got = func(*args, **(kwargs or {}))
                self.ops.append(func.overloadpacket.__name__)
                old = {t.untyped_storage().data_ptr() for t in tree_leaves((args, kwargs))
                       if isinstance(t, torch.Tensor)}
                for t in tree_leaves(got):
                    if isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() not in old:
                        self.most = max(self.most, t.untyped_storage().nbytes() // max(t.element_size(), 1))
                return got

        return Largest()


def test_the_per_layer_index_check_takes_no_scratch_as_large_as_the_layer_and_no_count_per_ensemble():
    """The repeat check counted every ensemble in an int32 tensor (index_add_), then in a bool scratch
    as large as the layer: the indices are now sorted and each compared with the next, so a plan of a
    few indices into a layer of a million ensembles allocates a few entries, and the counts are gone."""
    from adaptive.plan_checks import _index_problem

    idx = torch.randperm(10**6, generator=torch.Generator().manual_seed(0))[:10]
    with _Largest.mode() as ops:
        assert _index_problem(idx, 10**6) is None
    assert not {"index_add", "index_add_"} & set(ops.ops)
    assert ops.most <= 100, ops.most
    twice = torch.cat([idx, idx[:2]])
    assert _index_problem(twice, 10**6) == (f"lists 2 ensemble(s) more than once: {sorted(idx[:2].tolist())}; "
                                            "list each ensemble once")


def test_int32_indices_into_a_layer_past_2_31_ensembles_are_not_wrapped_out_of_range():
    """``int32_tensor >= 3_000_000_000`` wraps the size to a negative int32 in torch, so every index of
    an int32 plan into a layer of more than 2**31 - 1 ensembles was called out of range (a size given
    here, no such layer made)."""
    from adaptive.plan_checks import _index_problem

    idx = torch.tensor([0, 5, 2**31 - 1], dtype=torch.int32)
    assert _index_problem(idx, 3_000_000_000) is None
    assert _index_problem(torch.tensor([5, -1], dtype=torch.int32), 3_000_000_000).startswith(
        "holds 1 indices outside [0, 3000000000) (the layer's ensembles): [-1]")
    assert _index_problem(torch.tensor([7, 7], dtype=torch.int32), 3_000_000_000).startswith(
        "lists 1 ensemble(s) more than once: [7]")
    # the batched check alike (a stand-in connectome: the layer's 3e9 ensembles named, 16 made): int32 indices
    # are clamped and compared in int64 (clamping in int32 to 3e9 - 1 overflowed, and the comparison wrapped)
    import types

    from adaptive.plan_batch import plan_looks_valid

    ens = torch.ones(16, dtype=torch.bool)
    huge = types.SimpleNamespace(num_ensembles=lambda shape: 3_000_000_000)
    conn = types.SimpleNamespace(masks={"w": ens}, granularities={"w": huge}, layers={"w": types.SimpleNamespace(shape=None)},
                                 _ensemble_mask=lambda n: ens)
    assert plan_looks_valid(conn, EditPlan(prune={"w": torch.tensor([5, 7], dtype=torch.int32)}), ())
    assert not plan_looks_valid(conn, EditPlan(prune={"w": torch.tensor([5, -1], dtype=torch.int32)}), ())


def test_the_batched_check_allocates_in_the_edited_indices_not_in_the_layers():
    """plan_looks_valid marked the indices of each side in a bool scratch as large as every edited
    layer's ensembles together (two of them: about 2 GB at 10**9 synapses) where the layer-by-layer
    check needed one layer's. It now sorts the (offset) indices: 10 edits of a layer of 10**6
    ensembles allocate tens of entries, and a repeat or an overlap is still found."""
    from adaptive.plan_batch import plan_looks_valid

    conn = adaptive.Connectome(torch.nn.Sequential(torch.nn.Linear(1000, 1000, bias=False)))
    g = torch.Generator().manual_seed(0)
    conn.set_masks({"0.weight": torch.rand(1000, 1000, generator=g) < 0.5})
    flat = conn.masks["0.weight"].reshape(-1)
    prune, grow = flat.nonzero().squeeze(1)[:5], (~flat).nonzero().squeeze(1)[:5].int()
    plan = EditPlan(prune={"0.weight": prune}, grow={"0.weight": grow},
                    prune_scores={"0.weight": torch.rand(5)}, grow_scores={"0.weight": torch.rand(5)})
    with _Largest.mode() as ops:
        assert plan_looks_valid(conn, plan, ())
    assert ops.most <= 1000, ops.most  # << 10**6
    assert not plan_looks_valid(conn, EditPlan(prune={"0.weight": torch.cat([prune, prune[:1]])}), ())
    assert not plan_looks_valid(conn, EditPlan(prune={"0.weight": prune}, grow={"0.weight": prune[:1]}), ())


def _layered(layers, ensemble="synapse"):
    torch.manual_seed(0)
    conn = adaptive.Connectome(torch.nn.Sequential(*[torch.nn.Linear(6, 6) for _ in range(layers)]), ensemble=ensemble)
    g = torch.Generator().manual_seed(0)
    conn.set_ensemble_masks({n: torch.rand(m.shape, generator=g) < 0.5 for n, m in conn.ensemble_masks().items()})
    return adaptive.Controller(conn, policy="set", density=0.5)


def _valid_plan(ctrl, k=2):
    """k live ensembles pruned and k absent ones grown in every layer (int32 and int64, scores on both)."""
    prune, grow = {}, {}
    for i, (n, e) in enumerate(ctrl.conn.ensemble_masks().items()):
        flat = e.reshape(-1)
        prune[n] = flat.nonzero().squeeze(1)[:k].to(torch.int32 if i % 2 else torch.int64)
        grow[n] = (~flat).nonzero().squeeze(1)[:k]
    return EditPlan(prune=prune, grow=grow, prune_scores={n: torch.rand(len(i)) for n, i in prune.items()},
                    grow_scores={n: torch.rand(len(i)).half() for n, i in grow.items()})


def test_a_valid_plan_is_checked_with_one_host_read_not_several_per_layer(monkeypatch):
    """check_plan read each layer's answers back one at a time (range, repeats, live, scores: about 4
    device syncs a layer, a fifth of an update on a 1,000-layer MLP); a valid plan is now checked for
    every layer at once and read back once, and the layer-by-layer checks never run."""
    from torch.utils._python_dispatch import TorchDispatchMode

    import adaptive.plan_checks as plan_checks

    class Reads(TorchDispatchMode):
        reads = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func.overloadpacket.__name__ in ("_local_scalar_dense", "nonzero", "item"):
                Reads.reads += 1  # a value read back to the host (bool(), int(), .item(), a boolean index)
            return func(*args, **(kwargs or {}))

    per_layer = []
    for f in ("_index_problem", "_scores_problem"):
        real = getattr(plan_checks, f)
        monkeypatch.setattr(plan_checks, f, lambda *a, _real=real: per_layer.append(a) or _real(*a))
    for layers in (3, 40):
        ctrl = _layered(layers)
        plan = _valid_plan(ctrl)
        Reads.reads = 0
        with Reads():
            plan_checks.check_plan(ctrl, plan)
        assert Reads.reads == 1, f"{Reads.reads} host reads to check a valid plan of {layers} layers"
        assert not per_layer


@pytest.mark.parametrize("ensemble", ["synapse", "neuron"])
def test_the_batched_check_passes_exactly_the_plans_the_layer_by_layer_checks_pass(ensemble):
    """Any problem in any layer (out of range, repeated, pruned and grown, already absent/present, NaN
    scores, scores of another length, a protected layer) sends the plan to the layer-by-layer checks,
    which name it; a plan they pass is passed without them."""
    from adaptive.plan_batch import plan_looks_valid
    from adaptive.plan_checks import _check_layers

    ctrl = _layered(6, ensemble)
    names = ctrl.conn.names
    sizes = {n: e.numel() for n, e in ctrl.conn.ensemble_masks().items()}
    rng = torch.Generator().manual_seed(1)
    spoilers = [
        lambda p, n: p.prune.__setitem__(n, torch.cat([p.prune[n], torch.tensor([sizes[n]])])),
        lambda p, n: p.grow.__setitem__(n, torch.cat([p.grow[n], torch.tensor([-1])])),
        lambda p, n: p.prune.__setitem__(n, torch.cat([p.prune[n], p.prune[n][:1]])),
        lambda p, n: p.grow.__setitem__(n, torch.cat([p.grow[n], p.prune[n][:1]])),
        lambda p, n: p.prune.__setitem__(n, torch.cat([p.prune[n], p.grow[n][:1]])),
        lambda p, n: p.prune_scores.__setitem__(n, torch.tensor([0.0, float("nan")])),
        lambda p, n: p.grow_scores.__setitem__(n, torch.rand(3)),
        lambda p, n: p.grow.__setitem__(n, p.grow[n].float()),
        lambda p, n: p.prune.__setitem__("nope", torch.tensor([0])),
        lambda p, n: ctrl.protected.append(n),
        lambda p, n: None,
    ]
    for trial in range(60):
        plan, protected = _valid_plan(ctrl), list(ctrl.protected)
        for _ in range(int(torch.randint(0, 3, (1,), generator=rng))):
            spoil = spoilers[int(torch.randint(len(spoilers), (1,), generator=rng))]
            spoil(plan, names[int(torch.randint(len(names), (1,), generator=rng))])
        try:
            _check_layers("who", ctrl, plan)
            passes = True
        except ValueError:
            passes = False
        assert plan_looks_valid(ctrl.conn, plan, ctrl.protected) == passes, trial
        ctrl.protected = protected


def _conv_mlp_controller(ensemble):
    """A conv layer (kernel/neuron ensembles count otherwise than its weights) and three linear ones,
    one fully pruned and one dense, on half-sparse masks."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(2, 4, 3), torch.nn.Flatten(), torch.nn.Linear(64, 5),
                              torch.nn.Linear(5, 7), torch.nn.Linear(7, 3))
    conn = adaptive.Connectome(net, ensemble=ensemble)
    g = torch.Generator().manual_seed(0)
    fill = {"2.weight": torch.zeros_like, "3.weight": torch.ones_like}
    conn.set_ensemble_masks({n: fill[n](m, dtype=torch.bool) if n in fill else torch.rand(m.shape, generator=g) < 0.5
                             for n, m in conn.ensemble_masks().items()})
    with pytest.warns(UserWarning, match="no live synapse"):
        return adaptive.Controller(conn, policy="set", density=0.5)


def _spoilers(ctrl):
    """Each way a plan's layer entry can be wrong (and a few that are fine): fn(plan, side, layer)."""
    ens = ctrl.conn.ensemble_masks()
    size = {n: e.numel() for n, e in ens.items()}
    on = {(n, want): e.reshape(-1).nonzero().squeeze(1) if want else (~e.reshape(-1)).nonzero().squeeze(1)
          for n, e in ens.items() for want in (True, False)}
    none = torch.zeros(0, dtype=torch.long)

    def idx(p, s, n):
        got = getattr(p, s).get(n)
        return got if isinstance(got, torch.Tensor) and got.dim() == 1 and not got.is_meta else none

    def put(p, s, n, t):
        getattr(p, s)[n] = t

    def score(p, s, n, t):
        getattr(p, s + "_scores")[n] = t

    cast = lambda dtype: lambda p, s, n: put(p, s, n, torch.cat([idx(p, s, n), torch.tensor([0])]).to(dtype))  # noqa: E731
    plus = lambda v: lambda p, s, n: put(p, s, n, torch.cat([idx(p, s, n), torch.tensor([v(n)])]))  # noqa: E731
    n_of = lambda p, s, n: idx(p, s, n).numel()  # noqa: E731
    return [
        cast(torch.float32), cast(torch.bool), cast(torch.uint8), cast(torch.int16), cast(torch.int32),
        plus(lambda n: -1), plus(lambda n: -size[n]), plus(lambda n: size[n]), plus(lambda n: size[n] - 1),
        plus(lambda n: 0),
        lambda p, s, n: put(p, s, n, torch.cat([idx(p, s, n), idx(p, s, n)[:1]])),  # twice in one side
        lambda p, s, n: put(p, "grow", n, torch.cat([idx(p, "grow", n), idx(p, "prune", n)[:1]])),  # both
        lambda p, s, n: put(p, "prune", n, torch.cat([idx(p, "prune", n), idx(p, "grow", n)[:1]])),
        lambda p, s, n: put(p, s, n, on[n, s == "grow"][:2]),  # already absent / present
        lambda p, s, n: put(p, s, n, on[n, s == "prune"][:2].int()),  # fine
        lambda p, s, n: put(p, s, n, none),
        lambda p, s, n: put(p, s, n, torch.tensor(1)),  # 0-d
        lambda p, s, n: put(p, s, n, on[n, s == "prune"][:2].view(-1, 1)),
        lambda p, s, n: put(p, s, n, torch.cat([idx(p, s, n)] * 2)[::2]),  # not contiguous
        lambda p, s, n: put(p, s, n, torch.zeros(2, dtype=torch.long, device="meta")),
        lambda p, s, n: put(p, s, n, [0]),
        lambda p, s, n: put(p, s, "nope", torch.tensor([0])),
        lambda p, s, n: score(p, s, n, torch.full((n_of(p, s, n),), float("nan"))),
        lambda p, s, n: score(p, s, n, torch.full((2 * n_of(p, s, n),), float("nan")).bfloat16()[::2]),
        lambda p, s, n: score(p, s, n, torch.full((n_of(p, s, n),), -float("inf")).half()),  # fine
        lambda p, s, n: score(p, s, n, torch.zeros(n_of(p, s, n), dtype=torch.long)),  # fine
        lambda p, s, n: score(p, s, n, torch.zeros(n_of(p, s, n), dtype=torch.complex64)),
        lambda p, s, n: score(p, s, n, torch.zeros(n_of(p, s, n) + 1)),
        lambda p, s, n: score(p, s, n, torch.tensor(0.5)),
        lambda p, s, n: score(p, s, n, torch.zeros(n_of(p, s, n), device="meta")),
        lambda p, s, n: score(p, s, "nope", torch.zeros(1)),
        lambda p, s, n: ctrl.protected.append(n),
    ]


@pytest.mark.parametrize("ensemble", ["synapse", "kernel", "neuron", "block:2x2"])
def test_check_plan_refuses_every_spoilt_plan_with_the_layer_by_layer_checks_message(ensemble):
    """A false 'valid' from plan_looks_valid would let a wrong edit through unchecked: for plans spoilt
    in every way the layer-by-layer checks know (dtype, 0-d/2-d/meta, out of range at -1 and at n,
    repeated, pruned and grown, already absent/present, NaN/complex/misaligned scores, unknown layers,
    protected ones), on layers whose ensembles count otherwise than their weights, one fully pruned
    and one dense, check_plan raises exactly what _check_layers raises, and passes what it passes."""
    from adaptive.plan_batch import plan_looks_valid
    from adaptive.plan_checks import _check_layers, check_plan

    ctrl = _conv_mlp_controller(ensemble)
    spoilers, names = _spoilers(ctrl), ctrl.conn.names
    who = f"policy 'set' ({type(ctrl.policy).__name__}) returned a bad EditPlan"
    rng = torch.Generator().manual_seed(2)
    pick = lambda n: int(torch.randint(n, (1,), generator=rng))  # noqa: E731
    refused = 0
    for trial in range(300):
        prune, grow = {}, {}
        for n, e in ctrl.conn.ensemble_masks().items():
            flat = e.reshape(-1)
            prune[n], grow[n] = flat.nonzero().squeeze(1)[:pick(3)], (~flat).nonzero().squeeze(1)[:pick(3)]
        plan = EditPlan(prune=prune, grow=grow, prune_scores={n: torch.rand(len(i)) for n, i in prune.items()})
        protected = list(ctrl.protected)
        for _ in range(1 + pick(2)):
            spoilers[pick(len(spoilers))](plan, ("prune", "grow")[pick(2)], names[pick(len(names))])
        try:
            _check_layers(who, ctrl, plan)
            expected = None
        except ValueError as e:
            expected = str(e)
        try:
            check_plan(ctrl, plan)
            got = None
        except ValueError as e:
            got = str(e)
        assert got == expected, (trial, got, expected)
        assert expected is None or not plan_looks_valid(ctrl.conn, plan, ctrl.protected), (trial, expected)
        refused += expected is not None
        ctrl.protected = protected
    assert 100 < refused < 300, refused  # both kinds of plan are tried
    for n, e in ctrl.conn.ensemble_masks().items():  # negative indices refused, never wrapped (as Python's do)
        for side in ("prune", "grow"):
            for bad in (-1, -e.numel(), e.numel()):
                plan = EditPlan(**{side: {n: torch.tensor([bad])}})
                assert not plan_looks_valid(ctrl.conn, plan, ctrl.protected)
                with pytest.raises(ValueError, match=rf"{side}\['{n}'\] holds 1 indices outside \[0, {e.numel()}\)"):
                    check_plan(ctrl, plan)


def test_repeats_by_flags_or_by_sort_agree_with_a_count_of_distinct_keys():
    """plan_batch._repeats marks the keys in a flag per ensemble where there are at most FLAGS_PER_KEY ensembles
    per key (an update's millions of edits: a sort of 3 million keys was a third of a ViT-S update), and sorts
    them otherwise: both ways answer as a count of the distinct keys does, with and without a repeat."""
    from adaptive.plan_batch import FLAGS_PER_KEY, _repeats

    g = torch.Generator().manual_seed(0)
    for total in (1, 2, 7, 100, 5000):
        for k in (0, 1, 2, 5, 60, 400):
            if k > 0:
                keys = torch.randint(0, total, (k,), generator=g)
                distinct = torch.randperm(total, generator=g)[:k]
            else:
                keys = distinct = torch.zeros(0, dtype=torch.long)
            for ks in (keys, distinct):
                want = ks.unique().numel() != ks.numel()
                assert bool(_repeats(ks, total)) == want, (total, k)  # whichever way total and k choose
                assert bool(_repeats(ks, FLAGS_PER_KEY * max(ks.numel(), 1) + total)) == want  # sorted: too few keys
