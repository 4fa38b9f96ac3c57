"""Property-based checks of what each growth/prune policy, budget and schedule promises, against
an independent computation on the same scores (``Controller.scores`` at the update's step):

- every update's event records exactly the synapses its masks lost and gained, pruned ones were
  present and grown ones absent, protected layers untouched;
- set/rigl/utility prune the ``round(edit_fraction * live)`` cheapest live ensembles of each layer
  (of all layers under the global budget; ties by index) and grow the most useful absent ones,
  as many synapses as they prune (to within half an ensemble): the density holds;
- gmp and magnitude hold each layer at its budget's count for the density of Zhu & Gupta's cubic
  schedule (computed here from its formula) at every update, keeping the costliest ensembles;
- threshold prunes the cheapest live ensembles off the floors and restores the best absent ones,
  net exactly its pace (even, cubic, or the limit without end_step), edits beyond the pace paired,
  below the prune boundary and above the restore boundary, as many as those and the edit limit allow;
- balanced and crawl, at their target, swap the worthwhile prefix of pairs (cheapest live against
  most useful absent, gain over cost by more than the margin) within the edit limit;
- erk/uniform budgets share the density by the paper's formula, dense-capped layers full and the
  others rescaled, within a synapse of the exact share;
- the edit fraction follows its decay's formula, and no edit comes after ``end_step`` or off the
  ``update_every`` grid;
- scores holding +inf and -inf rank as the largest and smallest: no update fails on them or logs a
  NaN estimate, floors hold, densities are reached, the costliest live synapses are kept.

Deterministic and small (tests/_property.py); ``ADAPTIVE_PROPERTY_EXAMPLES=200`` explores further.
"""
import math
import warnings

import pytest
import torch
import torch.nn.functional as F
from hypothesis import example, given
from hypothesis import strategies as st
from torch import nn

import adaptive
from adaptive.budgets import get_budget
from _property import prop

torch.set_num_threads(1)


class Conv(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(1, 4, 3, padding=1)
        self.c2 = nn.Conv2d(4, 6, 3, padding=1, groups=2)
        self.head = nn.Linear(6, 4)

    def forward(self, x):
        h = torch.relu(self.c2(torch.relu(self.c1(x.view(-1, 1, 2, 3)))))
        return self.head(h.mean((2, 3)))


def mlp():
    return nn.Sequential(nn.Linear(6, 10), nn.ReLU(), nn.Linear(10, 7), nn.Tanh(), nn.Linear(7, 4))


MODELS = {"mlp": mlp, "conv": Conv}


def data(seed, n=6):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 6, generator=g), torch.randint(0, 4, (n,), generator=g)


def synapse_masks(conn):
    return {n: m.clone() for n, m in conn.masks.items()}


def run(ctrl, model, opt, seed, steps, on_update=None):
    """Train ``steps`` steps driving ``ctrl`` explicitly; ``on_update(step, before, after, event)`` per event."""
    ctrl.conn.attach(opt)
    for i in range(steps):
        x, y = data(seed + i)
        F.cross_entropy(model(x), y).backward()
        ctrl.observe()
        opt.step()
        opt.zero_grad()
        before = synapse_masks(ctrl.conn)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # (an emptied layer's warning)
            event = ctrl.step()
        if on_update is not None:
            on_update(ctrl.step_count, before, synapse_masks(ctrl.conn), event)


def ranked(values, eligible, largest=False):
    """Indices of the eligible entries of flat ``values`` by value (ascending, or descending), ties by
    index: an independent stable ordering (a Python sort)."""
    v = values.reshape(-1).tolist()
    idx = [i for i, e in enumerate(eligible.reshape(-1).tolist()) if e]
    return sorted(idx, key=lambda i: ((-v[i]) if largest else v[i], i))


def size_of(ctrl, n):
    """Synapses per ensemble of layer ``n`` (equal sizes only: the specs used here)."""
    layer = ctrl.conn.layers[n]
    return layer.numel / ctrl.conn.granularities[n].num_ensembles(layer.shape)


def flat_record(rec, names, per_synapse=None):
    """One recorded update over the layers ``names`` as flat tensors ``(cost, gain, alive, offs)``: the
    scores (each layer's divided by ``per_synapse(name)`` where given; gain None where none was read),
    the ensembles alive, and ``offs``, the flat index where each layer starts (its last entry the total)."""
    def side(key):
        if key not in rec:
            return None
        if per_synapse is None:
            return torch.cat([rec[key][n].reshape(-1) for n in names])
        return torch.cat([rec[key][n].reshape(-1) / per_synapse(n) for n in names])

    offs = [0]
    for n in names:
        offs.append(offs[-1] + rec["alive"][n].numel())
    return side("cost"), side("gain"), torch.cat([rec["alive"][n].reshape(-1) for n in names]), offs


STATEFUL = ("presence", "evidence")  # estimators whose scores move with every call (learned per update)


def capture(ctrl):
    """Wrap the policy's update: each call records its step, edit fraction, ensemble masks, scores and plan
    (and, for a policy with boundaries, its prune and restore boundaries as the update found them: pb, rb).
    The scores are read before the policy runs, except for a stateful estimator (presence, evidence),
    which a second read would move on: the scores the policy itself reads (every layer) are recorded."""
    log = []
    policy = ctrl.policy
    inner = policy.update
    stateful = any(getattr(e, "name", None) in STATEFUL for e in (ctrl.drop_est, ctrl.grow_est))

    def update(c, step):
        rec = dict(step=step, frac=c.edit_fraction(step), alive={n: m.clone() for n, m in c.alive().items()})
        if hasattr(policy, "prune_boundary"):
            rec["pb"], rec["rb"] = policy.prune_boundary, policy.restore_boundary
        if not stateful:
            rec["cost"] = c.scores("cost", step)
            if c.grow_est is not None:
                rec["gain"] = c.scores("gain", step)
            rec["plan"] = inner(c, step)
        else:
            read = type(c).scores.__get__(c)

            def scores(side, step=None, names=None, **kw):
                out = read(side, step, names, **kw)
                if names is None:
                    rec.setdefault(side, {n: s.clone() for n, s in out.items()})
                return out

            c.scores = scores
            try:
                rec["plan"] = inner(c, step)
            finally:
                del c.scores
        log.append(rec)
        return rec["plan"]

    ctrl.policy.update = update
    return log


def check_event(ctrl, before, after, event, protected=()):
    """The event's counts are the masks' changes; protected layers are untouched."""
    pruned = sum(int((before[n] & ~after[n]).sum()) for n in after)
    grown = sum(int((~before[n] & after[n]).sum()) for n in after)
    assert (event["pruned"], event["grown"]) == (pruned, grown), (event, pruned, grown)
    for n in protected:
        assert torch.equal(before[n], after[n]), f"protected layer {n} edited"


# ------------------------------------------------------------------------------------------- swaps
@prop(12)
@given(model_name=st.sampled_from(sorted(MODELS)), spec=st.sampled_from(["synapse", "neuron", "kernel"]),
       policy=st.sampled_from(["set", "rigl", "utility"]), budget=st.sampled_from(["erk", "uniform", "global"]),
       density=st.sampled_from([0.2, 0.5, 0.8]), frac=st.sampled_from([0.1, 0.3, 0.7, 1.0]),
       decay=st.sampled_from(["cosine", "linear", "constant"]), seed=st.integers(0, 2**10),
       estimator=st.sampled_from(["taylor", "presence", "evidence"]))
@example(model_name="mlp", spec="synapse", policy="utility", budget="uniform", density=0.5, frac=0.3,
         decay="constant", seed=3, estimator="presence")
@example(model_name="conv", spec="kernel", policy="utility", budget="global", density=0.5, frac=0.3,
         decay="cosine", seed=5, estimator="evidence")
def test_swaps_prune_the_cheapest_fraction_and_grow_the_best_absent_at_constant_density(
        model_name, spec, policy, budget, density, frac, decay, seed, estimator):
    torch.manual_seed(seed)
    model = MODELS[model_name]()
    conn = adaptive.Connectome(model, ensemble=spec)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    kw = dict(estimator=estimator) if policy == "utility" else {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ctrl = adaptive.Controller(conn, None, policy=policy, density=density, budget=budget, update_every=2,
                                   end_step=9, edit_fraction=frac, edit_decay=decay, seed=seed, **kw)
    log = capture(ctrl)
    total = conn.num_synapses()
    check_density(ctrl, get_budget(budget), density, total)
    events = []

    def on_update(step, before, after, event):
        if event is None:
            assert all(torch.equal(before[n], after[n]) for n in after), f"step {step}: masks edited without an event"
            return
        events.append(event)
        check_event(ctrl, before, after, event)
        rec = log[-1]
        assert rec["step"] == step
        plan = rec["plan"]
        if plan is None:
            return
        layers = list(rec["cost"])
        if budget == "global":
            groups = [layers]
        else:
            groups = [[n] for n in layers]
        for group in groups:
            cost, gain, alive, offs = flat_record(rec, group, lambda n: size_of(ctrl, n))

            def flat(side):
                d = getattr(plan, side)
                return sorted(int(i) + offs[j] for j, n in enumerate(group) if n in d for i in d[n].tolist())

            live = int(alive.sum())
            k = min(int(round(rec["frac"] * live)), alive.numel() - live)
            p, g = flat("prune"), flat("grow")
            sizes = torch.cat([torch.full((rec["alive"][n].numel(),), size_of(ctrl, n)) for n in group])
            if bool((sizes == sizes[0]).all()):  # one for one
                assert len(p) == k, f"step {step} {group}: {len(p)} pruned, not round({rec['frac']:.3f} * {live}) = {k}"
                assert abs(len(g) - len(p)) <= 1, (len(p), len(g))
            else:  # no more than the absent ones can replace: a prefix of the cheapest that fit
                assert len(p) <= k
            fits = [i for i in ranked(cost, alive) if sizes[i] <= sizes[p].max()] if p else []
            assert p == sorted(fits[:len(p)]), f"step {step} {group}: not the cheapest {len(p)}"
            assert g == sorted(ranked(gain, ~alive, largest=True)[:len(g)]), f"step {step} {group}: not the best absent"
        check_density(ctrl, get_budget(budget), density, total)

    run(ctrl, model, opt, seed, 11, on_update)
    assert [e["step"] for e in events] == list(range(2, 10, 2))


# ------------------------------------------------------------------------------------------- schedules
@prop(20)
@given(decay=st.sampled_from(["cosine", "linear", "constant"]), frac=st.floats(0.0, 1.0),
       start=st.integers(0, 5), span=st.integers(1, 20), every=st.integers(1, 4))
def test_the_edit_fraction_follows_its_decays_formula(decay, frac, start, span, every):
    model = mlp()
    conn = adaptive.Connectome(model)
    ctrl = adaptive.Controller(conn, None, policy="set", density=0.5, update_every=every, start_step=start,
                               end_step=start + span, edit_fraction=frac, edit_decay=decay)
    for step in range(0, start + span + 3):
        p = min(1.0, max(0.0, (step - start) / span))
        want = {"cosine": frac * 0.5 * (1 + math.cos(math.pi * p)), "linear": frac * (1 - p),
                "constant": frac if step < start + span else 0.0}[decay]
        assert ctrl.edit_fraction(step) == pytest.approx(want, abs=1e-12)
        assert ctrl.due(step) == (step >= max(1, start) and step <= start + span and (step - start) % every == 0)


# ------------------------------------------------------------------------------------------- gmp / magnitude
def cubic(step, final, start, end, every):
    """Zhu & Gupta's density at ``step``: the schedule ends at the last update by ``end``."""
    last = start + (end - start) // every * every
    if step >= last:
        return final
    if step <= start:
        return 1.0
    p = (step - start) / (last - start)
    s_f = 1.0 - final
    return 1.0 - s_f * (1 - (1 - p) ** 3)


@prop(12)
@given(model_name=st.sampled_from(sorted(MODELS)), spec=st.sampled_from(["synapse", "neuron", "kernel"]),
       policy=st.sampled_from(["gmp", "magnitude"]), budget=st.sampled_from(["erk", "uniform", "global"]),
       density=st.sampled_from([0.1, 0.3, 0.6]), start=st.integers(0, 3), every=st.integers(1, 3),
       seed=st.integers(0, 2**10))
def test_gmp_and_magnitude_keep_the_costliest_at_the_schedules_density(
        model_name, spec, policy, budget, density, start, every, seed):
    torch.manual_seed(seed)
    model = MODELS[model_name]()
    conn = adaptive.Connectome(model, ensemble=spec)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    end = start + 8
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ctrl = adaptive.Controller(conn, None, policy=policy, density=density, budget=budget, update_every=every,
                                   start_step=start, end_step=end, seed=seed)
    log = capture(ctrl)
    total = conn.num_synapses()
    budget_fn = get_budget(budget)
    if policy == "magnitude":  # pruned at construction
        check_density(ctrl, budget_fn, density, total)

    def on_update(step, before, after, event):
        if event is None:
            assert all(torch.equal(before[n], after[n]) for n in after)
            return
        check_event(ctrl, before, after, event)
        assert event["grown"] == 0
        if policy == "gmp":
            check_density(ctrl, budget_fn, cubic(step, density, start, end, every), total)
            rec = log[-1]
            # the kept ones are the costliest: every pruned one costs no more than any kept one (per layer)
            for n, idx in rec["plan"].prune.items():
                c = rec["cost"][n].reshape(-1)
                after_ens = conn.ensemble_masks()[n].reshape(-1)
                if budget != "global" and after_ens.any() and idx.numel():
                    assert float(c[idx].max()) <= float(c[after_ens].min())

    run(ctrl, model, opt, seed, end + 2, on_update)
    check_density(ctrl, budget_fn, density, total)


def check_density(ctrl, budget_fn, d, total):
    conn = ctrl.conn
    counts = budget_fn(conn.layers, d, protected={}, min_density=0.0)
    if counts is None:
        slack = max(size_of(ctrl, n) for n in conn.names) / 2
        assert abs(conn.num_live() - round(d * total)) <= slack, (conn.num_live(), d * total)
        return
    for n, m in conn.masks.items():
        assert abs(int(m.sum()) - counts[n]) <= size_of(ctrl, n) / 2, (n, int(m.sum()), counts[n], d)


# ------------------------------------------------------------------------------------------- budgets
def erk_reference(layers, density, weight):
    """The paper's scaling: density_l = eps * weight_l, layers that would pass 1 made dense and eps
    solved again over the rest, until none does; returns real counts."""
    sizes = {n: l.numel for n, l in layers.items()}
    target = density * sum(sizes.values())
    dense = set()
    while True:
        rest = target - sum(sizes[n] for n in dense)
        denom = sum(weight[n] * sizes[n] for n in sizes if n not in dense)
        eps = rest / denom if denom else 0.0
        over = [n for n in sizes if n not in dense and eps * weight[n] > 1.0]
        if not over:
            return {n: float(sizes[n]) if n in dense else eps * weight[n] * sizes[n] for n in sizes}
        dense.add(max(over, key=lambda n: weight[n]))


@prop(25)
@given(model_name=st.sampled_from(sorted(MODELS)), budget=st.sampled_from(["erk", "uniform", "er"]),
       density=st.floats(0.01, 1.0))
def test_layer_budgets_share_the_density_by_their_formula(model_name, budget, density):
    conn = adaptive.Connectome(MODELS[model_name]())
    layers = conn.layers
    if budget == "erk":
        w = {n: sum(l.out_in_shape) / l.numel for n, l in layers.items()}
    elif budget == "er":
        w = {n: (l.out_in_shape[0] + l.out_in_shape[1]) / (l.out_in_shape[0] * l.out_in_shape[1]) for n, l in layers.items()}
    else:
        w = {n: 1.0 for n in layers}
    want = erk_reference(layers, density, w)
    counts = get_budget(budget)(layers, density)
    assert sum(counts.values()) == round(density * sum(l.numel for l in layers.values()))
    for n in layers:
        assert 0 <= counts[n] <= layers[n].numel
        assert abs(counts[n] - want[n]) < 1.0 + 1e-9, (n, counts[n], want[n])


# ------------------------------------------------------------------------------------------- every policy
POLICIES = {
    "set": dict(density=0.5), "rigl": dict(density=0.5), "utility": dict(density=0.5, estimator="taylor"),
    "balanced": dict(density=0.5, estimator="obd"), "gmp": dict(density=0.3), "magnitude": dict(density=0.4),
    "threshold": dict(density=0.3, estimator="magnitude", prune_boundary=0.05),
    "crawl": dict(density=0.4, estimator="curvature", edit_fraction=0.2),
}


@prop(16)
@given(model_name=st.sampled_from(sorted(MODELS)), spec=st.sampled_from(["synapse", "neuron", "block:2x2", "2:4"]),
       policy=st.sampled_from(sorted(POLICIES)), budget=st.sampled_from(["erk", "uniform", "global"]),
       protect=st.booleans(), min_density=st.sampled_from([0.0, 0.1]), seed=st.integers(0, 2**10))
def test_every_update_records_its_edits_and_keeps_protected_layers_and_floors(
        model_name, spec, policy, budget, protect, min_density, seed):
    torch.manual_seed(seed)
    model = MODELS[model_name]()
    conn = adaptive.Connectome(model, ensemble=spec)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    kw = dict(POLICIES[policy])
    if spec == "2:4":
        kw["density"] = 0.5
        if policy not in ("magnitude", "utility", "balanced"):
            return
    if policy in ("threshold", "crawl"):
        budget = "global"
    if policy == "crawl":
        min_density = 0.0
    prot = [conn.names[0]] if protect else []
    frac = kw.pop("edit_fraction", None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            ctrl = adaptive.Controller(conn, None, policy=policy, budget=budget, update_every=2, end_step=10, seed=seed,
                                       protect=prot, min_density=min_density, **kw)
        except ValueError as e:  # floors held in whole ensembles above the density, say
            assert "min_density" in str(e) or "density" in str(e)
            return
    if frac is not None:
        ctrl.policy.edit_fraction = frac
    before0 = synapse_masks(conn)
    floors = {n: math.ceil(min_density * conn.layers[n].numel - 1e-9) for n in conn.names if n not in prot}

    def on_update(step, before, after, event):
        if event is None:
            assert all(torch.equal(before[n], after[n]) for n in after), f"step {step}: masks edited without an event"
            return
        check_event(ctrl, before, after, event, prot)
        assert event["density"] == pytest.approx(conn.density())
        for n, floor in floors.items():
            if int(before[n].sum()) >= floor:
                assert int(after[n].sum()) >= floor, f"step {step}: {n} under its min_density floor"

    for n in prot:
        assert torch.equal(before0[n], conn.masks[n])
    run(ctrl, model, opt, seed, 12, on_update)


@pytest.mark.parametrize("policy,budget", [("magnitude", "erk"), ("gmp", "uniform"), ("set", "uniform")])
def test_a_layer_budget_holds_min_density_in_whole_ensembles(policy, budget):
    """A layer budget's count near a layer's floor (19 synapses of a head of four 40-synapse neurons, floor 16)
    was rounded to the nearest whole neuron, none, emptying the layer min_density keeps; the floor
    is held in whole ensembles as under the global budget, and a density they cannot fit is refused."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 40), nn.ReLU(), nn.Linear(40, 4))
    conn = adaptive.Connectome(model, ensemble="neuron")
    with pytest.raises(ValueError, match="min_density 0.1 held in whole ensembles"):
        adaptive.Controller(conn, None, policy=policy, density=0.1, budget=budget, min_density=0.1, end_step=4)
    assert conn.num_live() == conn.num_synapses()  # refused: nothing changed
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ctrl = adaptive.Controller(conn, None, policy=policy, density=0.12, budget=budget, min_density=0.1,
                                   update_every=1, end_step=4)
    run(ctrl, model, torch.optim.SGD(model.parameters(), lr=0.05), 0, 5)
    assert int(conn.masks["2.weight"].sum()) == 40  # one neuron: the fewest holding the floor of 16
    assert abs(conn.num_live() - round(0.12 * conn.num_synapses())) <= 40 + 20


# ------------------------------------------------------------------------------------------- threshold
def threshold_pace(ctrl, policy_pace, state, step, live, target, limit):
    """The net removal the threshold policy's docs promise at ``step`` (synapses = ensembles here):
    the excess over the target, all of it past the last update or with no end_step (then at most
    the edit limit), else spread evenly over the updates left or along Zhu & Gupta's cubic schedule
    from the live count of the first paced update; negative below the target (the shortfall)."""
    need = live - target
    if need <= 0:
        return need
    if ctrl.end_step is None:
        return min(need, limit)
    if policy_pace == "cubic":
        if state.get("start_live") is None:
            state["start_live"] = live
        last = ctrl.start_step + (ctrl.end_step - 1 - ctrl.start_step) // ctrl.update_every * ctrl.update_every
        if step >= last or last <= ctrl.start_step:
            return need
        p = (step - ctrl.start_step) / (last - ctrl.start_step)
        return max(0, math.ceil(live - (target + max(0, state["start_live"] - target) * (1.0 - p) ** 3)))
    return math.ceil(need / max(1, math.ceil((ctrl.end_step - step) / ctrl.update_every)))


@prop(14)
# below the target, with a prune under the prune boundary: one restore beyond the shortfall was taken
# wherever the restore boundary and the edit limit were (the shortfall's count plus one)
@example(pace="cubic", density=0.15, start_density=0.1, frac=0.05, end=None, min_density=0.0, estimator="curvature",
         boundary=1e-4, seed=0)
@given(pace=st.sampled_from(["cubic", "even"]), density=st.sampled_from([0.15, 0.4, 0.7]),
       start_density=st.sampled_from([1.0, 0.5, 0.1]), frac=st.sampled_from([0.05, 0.2, 0.5]),
       end=st.sampled_from([None, 9]), min_density=st.sampled_from([0.0, 0.1]),
       estimator=st.sampled_from(["curvature", "magnitude"]), boundary=st.sampled_from([0.0, 1e-4, 0.1]),
       seed=st.integers(0, 2**10))
def test_threshold_prunes_below_its_boundary_and_restores_above_it_at_its_pace(
        pace, density, start_density, frac, end, min_density, estimator, boundary, seed):
    """threshold's chosen sets against its rules on the scores Controller.scores gives at the update:
    the cheapest live synapses (never a floor's) and the most useful absent ones; net removal exactly
    its pace; edits beyond the pace only below the prune boundary (prunes) and above the restore
    boundary (restores), paired, as many as the boundaries and the edit limit allow; the boundaries
    then adapt to what was edited."""
    torch.manual_seed(seed)
    model = mlp()
    conn = adaptive.Connectome(model)
    g = torch.Generator().manual_seed(seed)
    conn.set_masks({n: torch.rand(m.shape, generator=g) < start_density for n, m in conn.masks.items()})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            ctrl = adaptive.Controller(conn, None, policy="threshold", density=density, update_every=2, end_step=end,
                                       edit_fraction=frac, edit_decay="constant" if end is None else "linear",
                                       estimator=estimator, min_density=min_density, pace=pace, seed=seed,
                                       prune_boundary=boundary)
        except ValueError as e:  # floors above the density
            assert "min_density" in str(e)
            return
    policy, log, state = ctrl.policy, capture(ctrl), {}
    target = round(density * conn.num_synapses())

    def on_update(step, before, after, event):
        if not log or log[-1]["step"] != step or log[-1]["plan"] is None:
            return
        rec = log.pop()
        names = list(rec["cost"])
        cost, gain, alive, offs = flat_record(rec, names)
        held = torch.zeros_like(alive)
        for j, n in enumerate(names):  # each layer's floor: its costliest live synapses
            floor = adaptive.budgets.floor_synapses(min_density, conn.layers[n].numel) if min_density else 0
            for i in ranked(rec["cost"][n], rec["alive"][n], largest=True)[:floor]:
                held[offs[j] + i] = True
        prunable, absent = alive & ~held, ~alive
        live = int(alive.sum())
        limit = max(1, int(round(rec["frac"] * live)))
        p_net = threshold_pace(ctrl, pace, state, step, live, target, limit)

        def flat(d):
            return [int(i) + offs[j] for j, n in enumerate(names) if n in d for i in d[n].tolist()]

        pruned, grown = flat(rec["plan"].prune), flat(rec["plan"].grow)
        cheapest, best = ranked(cost, prunable), ranked(gain, absent, largest=True)
        assert sorted(pruned) == sorted(cheapest[:len(pruned)]), f"step {step}: not the cheapest {len(pruned)}"
        assert sorted(grown) == sorted(best[:len(grown)]), f"step {step}: not the best {len(grown)} absent"
        forced_p, forced_r = min(max(p_net, 0), len(cheapest)), min(max(-p_net, 0), len(best))
        extra = len(pruned) - forced_p
        assert extra >= 0 and len(grown) - forced_r == extra, (step, p_net, len(pruned), len(grown))
        # beyond the pace: prunes below the prune boundary, restores above the restore boundary
        assert all(float(cost[i]) < rec["pb"] for i in cheapest[forced_p:len(pruned)]), (step, rec["pb"])
        assert all(float(gain[i]) > rec["rb"] for i in best[forced_r:len(grown)]), (step, rec["rb"])
        # ... as many pairs as the boundaries and the edit limit (per side, beyond the pace) allow
        n_below = sum(1 for i in cheapest[forced_p:] if float(cost[i]) < rec["pb"])
        n_above = sum(1 for i in best[forced_r:] if float(gain[i]) > rec["rb"])
        assert extra == min(n_below, n_above, max(limit - forced_p, 0), max(limit - forced_r, 0)), (
            step, extra, n_below, n_above, limit, forced_p, forced_r)
        if grown and policy.adapt:
            assert policy.restore_boundary == max(0.0, min(float(gain[i]) for i in grown))

    run(ctrl, model, torch.optim.SGD(model.parameters(), lr=0.05), seed, 12, on_update)


def synapse_prefix(order, size, budget):
    """The prefix of ``order`` (ensembles, best first) whose synapses make up ``budget``, each ensemble
    taken when at least half of it fits (what the docs promise of a pace counted in synapses)."""
    taken, total = [], 0.0
    for i in order if budget > 0 else ():
        if total + size[i] / 2 >= budget:
            break
        total += size[i]
        taken.append(i)
    return taken


@prop(12)
# the cheapest per synapse were the large neurons: counting the pace's ensembles by the smallest
# size, more were taken than the pace needed, and beyond it prunes above the prune boundary went
# through in pairs with restores
@example(pace="cubic", density=0.5, start_density=1.0, frac=0.2, end=None, estimator="curvature", boundary=1e-4, seed=1)
@given(pace=st.sampled_from(["cubic", "even"]), density=st.sampled_from([0.2, 0.5]),
       start_density=st.sampled_from([1.0, 0.7]), frac=st.sampled_from([0.2, 0.5]), end=st.sampled_from([None, 9]),
       estimator=st.sampled_from(["curvature", "magnitude"]), boundary=st.sampled_from([1e-4, 0.1, 1.0, 2.0, 10.0]),
       seed=st.integers(0, 2**10))
def test_threshold_with_ensembles_of_different_sizes_edits_beyond_its_pace_only_past_its_boundaries(
        pace, density, start_density, frac, end, estimator, boundary, seed):
    """Neurons of layers of different fan-in (6, 24 and 16 synapses), ranked by value per synapse: the
    cheapest per synapse live ones that make up the pace (in synapses) are pruned, and beyond them only
    ensembles whose whole cost is below the prune boundary, restores beyond the shortfall only above
    the restore boundary, at most the edit limit per side (on Controller.scores at the update)."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(6, 24), nn.ReLU(), nn.Linear(24, 16), nn.Tanh(), nn.Linear(16, 4))
    conn = adaptive.Connectome(model, ensemble="neuron")
    g = torch.Generator().manual_seed(seed)
    conn.set_masks({n: (torch.rand(m.shape[0], 1, generator=g) < start_density).expand_as(m).clone()
                    for n, m in conn.masks.items()})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ctrl = adaptive.Controller(conn, None, policy="threshold", density=density, update_every=2, end_step=end,
                                   edit_fraction=frac, edit_decay="constant" if end is None else "linear",
                                   estimator=estimator, pace=pace, seed=seed, prune_boundary=boundary)
    log = capture(ctrl)
    run(ctrl, model, torch.optim.SGD(model.parameters(), lr=0.05), seed, 12)
    target, state = round(density * conn.num_synapses()), {}
    for rec in (r for r in log if r["plan"] is not None):
        names = list(rec["cost"])
        size = torch.cat([torch.full((rec["alive"][n].numel(),), size_of(ctrl, n)) for n in names]).tolist()
        assert len(set(size)) > 1
        cost, gain, alive, offs = flat_record(rec, names)
        live, syn = int(alive.sum()), sum(s for s, a in zip(size, alive.tolist()) if a)
        limit = max(1, int(round(rec["frac"] * live)))
        cheapest = ranked(cost / torch.tensor(size), alive)
        best = ranked(gain / torch.tensor(size), ~alive, largest=True)
        if end is None:  # all the excess, at most the edit limit's cheapest
            p_net = syn - target if syn <= target else min(syn - target, sum(size[i] for i in cheapest[:limit]))
        else:
            p_net = threshold_pace(ctrl, pace, state, rec["step"], syn, target, limit)
        forced_p, forced_r = synapse_prefix(cheapest, size, p_net), synapse_prefix(best, size, -p_net)

        def flat(d):
            return [int(i) + offs[j] for j, n in enumerate(names) if n in d for i in d[n].tolist()]

        pruned, grown = flat(rec["plan"].prune), flat(rec["plan"].grow)
        assert set(forced_p) <= set(pruned) and set(forced_r) <= set(grown), (rec["step"], p_net)
        beyond_p, beyond_r = set(pruned) - set(forced_p), set(grown) - set(forced_r)
        assert all(float(cost[i]) < rec["pb"] for i in beyond_p), (
            rec["step"], p_net, rec["pb"], sorted((float(cost[i]), size[i]) for i in beyond_p))
        assert all(float(gain[i]) > rec["rb"] for i in beyond_r), (rec["step"], rec["rb"])
        assert len(pruned) <= max(limit, len(forced_p)) and len(grown) <= max(limit, len(forced_r))


# ------------------------------------------------------------------------------------------- balanced / crawl pairs
@prop(10)
@given(policy=st.sampled_from(["balanced", "crawl"]), density=st.sampled_from([0.2, 0.5]),
       frac=st.sampled_from([0.05, 0.3, 1.0]), margin=st.sampled_from([0.0, 1e-4]),
       estimator=st.sampled_from(["curvature", "obd", "presence", "evidence"]), seed=st.integers(0, 2**10))
@example(policy="crawl", density=0.5, frac=0.3, margin=0.0, estimator="evidence", seed=1)
@example(policy="balanced", density=0.5, frac=0.3, margin=0.0, estimator="presence", seed=2)
def test_balanced_and_crawl_swap_the_worthwhile_pairs_at_their_target(policy, density, frac, margin, estimator, seed):
    """At its target (no count to restore, no distance to the goal), balanced and crawl swap pairs:
    the i-th cheapest live synapse for the i-th most useful absent one, as long as each pair's gain
    beats its cost (by crawl's ``margin``), within the edit limit: the chosen sets are those prefixes,
    one for one, and the next pair is past the limit or not worth making (on Controller.scores)."""
    if policy == "balanced":
        margin = 0.0
    torch.manual_seed(seed)
    model = mlp()
    conn = adaptive.Connectome(model)
    kw = dict(edit_fraction=frac, edit_decay="constant") if policy == "balanced" else {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ctrl = adaptive.Controller(conn, None, policy=policy, density=density if policy == "balanced" else None,
                                   update_every=2, end_step=30, estimator=estimator, seed=seed, **kw)
    target = round(density * conn.num_synapses())
    if policy == "crawl":  # the goal reached by step 4, swaps after it
        ctrl.policy.edit_fraction, ctrl.policy.margin = frac, margin
        ctrl.policy.set_goal(target, 4)
    log = capture(ctrl)
    checked = []

    def on_update(step, before, after, event):
        rec = log[-1] if log and log[-1]["step"] == step else None
        plan = rec and rec["plan"]
        if plan is None or plan.tolerance == math.inf or int(sum(m.sum() for m in rec["alive"].values())) != target:
            return  # a count restored, or the goal still being reached
        names = list(rec["cost"])
        cost, gain, alive, offs = flat_record(rec, names)

        def flat(d):
            return sorted(int(i) + offs[j] for j, n in enumerate(names) if n in d for i in d[n].tolist())

        live = int(alive.sum())
        frac_now = rec["frac"] if policy == "balanced" else frac
        limit = min(int(round(frac_now * live)), alive.numel() - live)
        cheapest, best = ranked(cost, alive), ranked(gain, ~alive, largest=True)
        k = len(flat(plan.prune))
        assert flat(plan.prune) == sorted(cheapest[:k]) and flat(plan.grow) == sorted(best[:k]), f"step {step}"
        worth = [float(gain[best[i]]) - float(cost[cheapest[i]]) > margin for i in range(limit)]
        want = worth.index(False) if False in worth else limit
        assert k == want, (step, k, want, limit)
        checked.append(step)

    run(ctrl, model, torch.optim.SGD(model.parameters(), lr=0.05), seed, 12, on_update)


# ------------------------------------------------------------------------------------------- infinite scores
class _SignedInfinities(adaptive.utility.Estimator):
    """Magnitudes, with +inf and -inf at fixed random synapses (the same at every update): the largest
    and smallest scores an estimator may give (adaptive/score_checks.py admits them)."""

    def __init__(self, seed, share):
        self.seed, self.share = seed, share

    def _scores(self, ctx, base, salt):
        r = torch.rand(ctx.weight.shape, generator=torch.Generator().manual_seed(self.seed * 7 + salt + len(ctx.name)))
        return base.masked_fill(r < self.share, math.inf).masked_fill((r >= self.share) & (r < 2 * self.share), -math.inf)

    def removal_cost(self, ctx):
        return self._scores(ctx, ctx.weight.detach().abs().float(), 1)

    def restoration_gain(self, ctx):
        return self._scores(ctx, torch.rand(ctx.weight.shape, generator=ctx.generator), 2)


@prop(6)
@given(policy=st.sampled_from(["threshold", "balanced", "gmp", "magnitude", "utility"]),
       budget=st.sampled_from(["global", "uniform"]), density=st.sampled_from([0.2, 0.5]),
       min_density=st.sampled_from([0.0, 0.1]), share=st.sampled_from([0.05, 0.3]), seed=st.integers(0, 2**10))
@example(policy="magnitude", budget="global", density=0.2, min_density=0.1, share=0.3, seed=0)
@example(policy="threshold", budget="global", density=0.2, min_density=0.0, share=0.3, seed=0)
def test_infinite_scores_of_either_sign_rank_as_the_largest_and_smallest(policy, budget, density, min_density,
                                                                         share, seed):
    """Removal costs and gains holding +inf and -inf: every update goes through (no estimate is NaN),
    each layer keeps its min_density floor, the policies that reach a density reach it, and the pruning
    policies keep the costliest live synapses: no kept one cheaper than a pruned one (global budget)."""
    if policy == "threshold":
        budget = "global"  # (it ranks all layers together)
    torch.manual_seed(seed)
    model = mlp()
    conn = adaptive.Connectome(model)
    est = _SignedInfinities(seed, share)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ctrl = adaptive.Controller(conn, None, policy=policy, density=density, budget=budget, update_every=2,
                                   end_step=8, edit_fraction=0.5, min_density=min_density, estimator=est, seed=seed)
    run(ctrl, model, torch.optim.SGD(model.parameters(), lr=0.05), seed, 8)
    for e in ctrl.events:
        for key in ("est_loss_change", "est_score_change", "est_growth_gain"):
            assert e.get(key) is None or not math.isnan(e[key]), (e["step"], key)
    for n, m in conn.masks.items():
        assert int(m.sum()) >= adaptive.budgets.floor_synapses(min_density, m.numel()), n
    if policy != "utility":
        assert abs(conn.num_live() - round(density * conn.num_synapses())) <= 1
    if policy in ("gmp", "magnitude") and budget == "global" and not min_density:
        with torch.no_grad():
            cost = torch.cat([est.removal_cost(ctrl.context(n, 0)).reshape(-1) for n in conn.names])
        live = torch.cat([conn.masks[n].reshape(-1) for n in conn.names])
        # (a pruned weight is 0.0: its cost now is its magnitude's, 0, unless it drew an infinity)
        pruned_inf = cost[~live] == math.inf
        assert not bool(pruned_inf.any()) or bool((cost[live] == math.inf).all())
