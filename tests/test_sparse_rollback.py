"""Line-search rollback (adaptive/rollback.py): a rejected edit leaves masks, weights and every
optimizer state tensor bit for bit as they were (-0.0 included), from a snapshot of only the
synapses the plan can change."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import adaptive
from adaptive.policies.base import EditPlan
from adaptive.rollback import EditSnapshot, plan_positions

X, Y = torch.randn(16, 3, 8, 8, generator=torch.Generator().manual_seed(1)), torch.arange(16) % 5


def _net(channels_last=False):
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 16, 3), nn.ReLU(), nn.Flatten(),
                      nn.Linear(256, 32), nn.ReLU(), nn.Linear(32, 5))
    if channels_last:  # a weight (and so its moments) that is not contiguous: positions are unravelled
        m[2].to(memory_format=torch.channels_last)
    return m


OPTIMIZERS = {
    "adam": lambda p: torch.optim.Adam(p, lr=1e-2),
    "sgd_momentum": lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=1e-3),
}


def _bits(t):
    if t.is_floating_point():
        return t.detach().contiguous().view({2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()])
    return t.detach()


def _unbits(b, like):
    return b.view(like.dtype).view(like.shape)


def _capture(conn, opt):
    """Everything a rollback must put back, as bit views."""
    out = {f"mask/{n}": m.clone() for n, m in conn.masks.items()}
    out.update({f"last_set/{n}": m.clone() for n, m in conn._last_set.items()})
    out.update({f"param/{k}": _bits(v).clone() for k, v in conn.model.state_dict().items()})
    if opt is not None:
        for i, st in opt.state_dict()["state"].items():
            out.update({f"opt/{i}/{k}": _bits(v).clone() for k, v in st.items() if torch.is_tensor(v)})
    return out


def _assert_same(a, b):
    assert a.keys() == b.keys()
    bad = [k for k in a if a[k].shape != b[k].shape or not torch.equal(a[k], b[k])]
    assert not bad, f"changed by the rolled-back edit: {bad}"


def _setup(mode="train", ensemble="synapse", opt="adam", holdout=None, channels_last=False, tries=2, **kw):
    model = _net(channels_last)
    conn = adaptive.Connectome(model, ensemble=ensemble, mode=mode)
    o = OPTIMIZERS[opt](model.parameters()) if opt else None  # mask_only: the weights are put back after each step
    ctrl = adaptive.Controller(conn, o, policy="rigl" if mode == "train" else "utility", density=0.5,
                               budget="uniform", update_every=10**6, edit_fraction=0.3, edit_decay="constant",
                               seed=0, holdout_loss=holdout, line_search_tries=tries,
                               line_search_tolerance=0.0, **kw)
    for _ in range(3):  # optimizer state in place, pruned positions included
        model.zero_grad()
        F.cross_entropy(model(X), Y).backward()
        if o is not None:
            o.step()
        else:
            ctrl.observe()
    return model, conn, o, ctrl


def _negative_zeros(conn, opt):
    """-0.0 at live weights and in every moment (at a few positions of each layer): a restore that
    wrote +0.0 there (a masked_fill, a reset) would show."""
    with torch.no_grad():
        for n, p in conn.params.items():
            live = torch.unravel_index(conn.masks[n].reshape(-1).nonzero().squeeze(1)[::3], p.shape)
            if conn.mode == "train":
                p[live] = -0.0
            if opt is not None:
                for v in opt.state.get(p, {}).values():
                    if torch.is_tensor(v) and v.shape == p.shape:
                        v[torch.unravel_index(torch.arange(0, v.numel(), 5), v.shape)] = -0.0
    conn.apply()


def _rejecting(conn):
    """A held-out loss that any change of the masks since ``ref`` raises: every try is rolled back."""
    ref = {}

    def holdout():
        return float(sum(int((conn.masks[n] != ref[n]).sum()) for n in ref))

    return ref, holdout


@pytest.mark.parametrize("mode,ensemble,opt,channels_last", [
    ("train", "synapse", "adam", False),
    ("train", "synapse", "sgd_momentum", True),
    ("train", "neuron", "adam", False),
    ("train", "block:2x4", "sgd_momentum", False),
    ("train", "kernel", "adam", True),
    ("mask_only", "synapse", None, False),
    ("mask_only", "neuron", "sgd_momentum", False),
])
def test_a_rejected_update_leaves_everything_bit_for_bit(mode, ensemble, opt, channels_last):
    holder = {}
    model, conn, o, ctrl = _setup(mode, ensemble, opt, holdout=lambda: holder["f"](), channels_last=channels_last)
    ref, holder["f"] = _rejecting(conn)
    _negative_zeros(conn, o)
    ref.update({n: m.clone() for n, m in conn.masks.items()})
    before = _capture(conn, o)
    heard = []
    conn.add_edit_listener(lambda changed: heard.append(sorted(changed)))
    ev = ctrl.update()
    assert ev["line_search_fraction"] == 0.0 and ev["pruned"] == ev["grown"] == 0
    assert len(heard) >= 2 and len(heard) % 2 == 0  # every try set, and set back, through the connectome
    _assert_same(before, _capture(conn, o))
    assert all(conn._dense[n] == bool(m.all()) and not conn.edited_in_place(n) for n, m in conn.masks.items())
    # the connectome's caches follow: a step after the rollback keeps pruned weights at 0.0
    if o is not None and mode == "train":
        o.zero_grad()
        F.cross_entropy(model(X), Y).backward()
        o.step()
        assert all(bool((p[~conn.masks[n]] == 0).all()) for n, p in conn.params.items())


def _plan(conn, per_layer=12, seed=0):
    """Prune the first ``per_layer`` live ensembles and grow the first absent ones of every layer,
    in a shuffled order (line-search halving keeps a prefix)."""
    g = torch.Generator().manual_seed(seed)
    prune, grow = {}, {}
    for n, e in conn.ensemble_masks().items():
        e = e.reshape(-1)
        live, absent = e.nonzero().squeeze(1), (~e).nonzero().squeeze(1)
        prune[n] = live[torch.randperm(live.numel(), generator=g)[:per_layer]]
        grow[n] = absent[torch.randperm(absent.numel(), generator=g)[:per_layer]]
    return EditPlan(prune=prune, grow=grow)


@pytest.mark.parametrize("opt", ["adam", "sgd_momentum"])
@pytest.mark.parametrize("ensemble", ["synapse", "neuron"])
def test_a_halved_plan_that_is_accepted_equals_setting_the_half_directly(opt, ensemble):
    """Full plan rejected and rolled back, then its half accepted: the result is bit for bit the
    half set with no line search on an identical run."""
    losses = iter([0.0, 1.0, 0.0])
    model, conn, o, ctrl = _setup("train", ensemble, opt, holdout=lambda: next(losses))
    _negative_zeros(conn, o)
    twin_model, twin_conn, twin_o, twin_ctrl = _setup("train", ensemble, opt)
    _negative_zeros(twin_conn, twin_o)
    _assert_same(_capture(conn, o), _capture(twin_conn, twin_o))
    plan = _plan(conn)
    ev = ctrl._apply(plan, step=0)
    assert ev["line_search_fraction"] == 0.5
    half = twin_ctrl._shrink(plan, 0.5)[1]
    assert 0 < half.counts()[0] < plan.counts()[0]
    twin_ctrl._apply(half, step=0, line_search=False)
    _assert_same(_capture(twin_conn, twin_o), _capture(conn, o))


def test_every_try_rolled_back_from_one_snapshot():
    """Three tries (full, half, quarter) all rejected: each restore starts from a different edit."""
    holder = {}
    model, conn, o, ctrl = _setup("train", "synapse", "adam", holdout=lambda: holder["f"](), tries=3)
    ref, holder["f"] = _rejecting(conn)
    _negative_zeros(conn, o)
    ref.update({n: m.clone() for n, m in conn.masks.items()})
    before = _capture(conn, o)
    sets = []
    conn.add_edit_listener(lambda changed: sets.append(sum(int(c.sum()) for c in changed.values())))
    ev = ctrl._apply(_plan(conn, per_layer=16), step=0)
    assert ev["line_search_fraction"] == 0.0
    assert len(sets) == 8 and sets[0] > sets[2] > sets[4] > sets[6] > 0  # 4 tries, each set back
    _assert_same(before, _capture(conn, o))


def test_a_partly_present_ensemble_outside_the_plan_is_put_back():
    """A neuron only partly present (set unvalidated) is set whole by any edit of its layer, though
    no plan names it: the snapshot covers it, and the rollback puts its holes back."""
    holder = {}
    model, conn, o, ctrl = _setup("train", "neuron", "adam", holdout=lambda: holder["f"]())
    ref, holder["f"] = _rejecting(conn)
    n = "5.weight"
    m = conn.masks[n].clone()
    row = int(m.all(1).nonzero()[0])
    m[row, ::2] = False
    conn.set_masks({n: m}, validate=False)
    ref.update({k: v.clone() for k, v in conn.masks.items()})
    before = _capture(conn, o)
    plan = EditPlan(prune={n: torch.tensor([r for r in range(32) if r != row and bool(m[r].all())][:3])})
    pos = plan_positions(conn, plan)[n]
    assert pos.numel() == 3 * 256 + 128  # the three named neurons and the holes of the partial one
    ctrl._apply(plan, step=0)
    _assert_same(before, _capture(conn, o))


@pytest.mark.parametrize("opt", ["adam", "sgd_momentum"])
def test_a_layer_edited_in_place_is_kept_whole_and_rolled_back_to_what_apply_alone_gives(opt):
    """A mask written in place since it was last set: the controller's set re-imposes that layer, so its
    snapshot is whole. The rollback left it counted as set (the mask as written taken for the mask as set)
    with its moments as they were, the moments at the synapses pruned in place included, which no later
    apply() reset: the next steps moved weights the mask says are pruned (33 of a layer with momentum).
    Now the rolled-back try leaves the connectome as apply() alone leaves it (the layer still counted as
    edited in place, its moments reset and its weights zeroed where the edit pruned), and training on
    keeps every pruned weight at exactly 0.0."""
    def edited():
        holder = {}
        model, conn, o, ctrl = _setup("train", "synapse", opt, holdout=lambda: holder["f"]())
        ref, holder["f"] = _rejecting(conn)
        live = conn.masks["5.weight"].reshape(-1).nonzero().squeeze(1)
        conn.masks["5.weight"].view(-1)[live[:40]] = False  # in place, outside the plan below
        ref.update({k: v.clone() for k, v in conn.masks.items()})
        return model, conn, o, ctrl, live

    n = "5.weight"
    model, conn, o, ctrl, live = edited()
    assert conn.edited_in_place(n) and not conn.edited_in_place("7.weight")
    plan = EditPlan(prune={n: live[100:110], "7.weight": conn.masks["7.weight"].reshape(-1).nonzero().squeeze(1)[:5]})
    snap = EditSnapshot(conn, plan)
    assert snap.positions[n] is None and snap.positions["7.weight"].numel() == 5
    assert ctrl._apply(plan, step=0)["line_search_fraction"] == 0.0
    rolled_back = _capture(conn, o)
    assert conn.edited_in_place(n)

    _, conn_b, o_b, _, _ = edited()  # the same connectome, the same edit in place, then apply() alone
    conn_b.apply()
    _assert_same(_capture(conn_b, o_b), rolled_back)

    pruned = ~conn.masks[n]
    for _ in range(2):
        model.zero_grad()
        F.cross_entropy(model(X), Y).backward()
        o.step()
    assert int(torch.count_nonzero(conn.params[n].detach()[pruned])) == 0


def test_the_snapshot_holds_the_plan_not_the_layers():
    """Bytes held grow with the synapses a plan edits, not with the layers it touches: 48 edited
    synapses over two layers (4.2 million synapses) with Adam hold about a kilobyte, 21 bytes each,
    where whole copies of those layers (mask, weight, two moments: 13 bytes a synapse) held 55 MB."""
    model = nn.Sequential(nn.Linear(2048, 2048, bias=False), nn.Linear(2048, 8, bias=False))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    conn = adaptive.Connectome(model)
    conn.attach(opt)
    model(torch.randn(4, 2048)).square().mean().backward()
    opt.step()
    masks = {n: m.clone() for n, m in conn.masks.items()}
    for m in masks.values():
        m.view(-1)[::2] = False
    conn.set_masks(masks)
    sizes = {}
    for k in (12, 1200):
        plan = _plan(conn, per_layer=k)
        snap = EditSnapshot(conn, plan)
        edited = sum(p.numel() for p in snap.positions.values())
        assert edited == 4 * k  # prune and grow in both layers
        sizes[k] = snap.nbytes()
        assert sizes[k] == edited * (8 + 1 + 4 + 4 + 4)  # position, mask bit, weight, Adam's two moments
    whole = sum(p.numel() for p in conn.params.values()) * 13
    assert sizes[12] * 10_000 < whole and sizes[1200] == 100 * sizes[12]


@pytest.mark.parametrize("raises_at, error", [(2, RuntimeError), (3, KeyboardInterrupt)])
def test_a_holdout_loss_that_raises_with_a_try_set_leaves_everything_as_it_was(raises_at, error):
    """holdout_loss raising (a bug, a Ctrl-C in a notebook) while a try is set, the first (call 2) or
    a halved one after a rejection (call 3): the error goes through and the try is rolled back. It
    stayed set, an edit no event logged."""
    holder, calls = {}, []

    def holdout():
        calls.append(1)
        if len(calls) == raises_at:
            raise error("the held-out loader broke")
        return holder["f"]()

    model, conn, o, ctrl = _setup("train", "synapse", "adam", holdout=holdout)
    ref, holder["f"] = _rejecting(conn)
    ref.update({n: m.clone() for n, m in conn.masks.items()})
    before, events = _capture(conn, o), len(ctrl.events)
    with pytest.raises(error, match="loader broke"):
        ctrl._apply(_plan(conn, per_layer=16), step=0)
    assert len(calls) == raises_at and len(ctrl.events) == events
    _assert_same(before, _capture(conn, o))


def test_a_rollback_that_raises_does_not_hide_the_error_it_rolls_back_for(monkeypatch):
    """The rollback after holdout_loss raised raises in turn (memory, say): the first error goes on,
    the rollback's named on it. The rollback's error replaced it (a Ctrl-C came out a RuntimeError)."""
    holder, calls = {}, []

    def holdout():
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt("the held-out loader broke")
        return holder["f"]()

    model, conn, o, ctrl = _setup("train", "synapse", "adam", holdout=holdout)
    ref, holder["f"] = _rejecting(conn)
    ref.update({n: m.clone() for n, m in conn.masks.items()})

    def broken(self, notify=True):
        raise RuntimeError("out of memory while putting the try back")

    monkeypatch.setattr(EditSnapshot, "restore", broken)
    with pytest.raises(KeyboardInterrupt, match="loader broke") as e:
        ctrl._apply(_plan(conn, per_layer=16), step=0)
    assert any("rollback of the try" in n and "failed too (RuntimeError: out of memory" in n and "last checkpoint" in n
               for n in e.value.__notes__)


def test_an_edit_listener_that_raises_leaves_the_rolled_back_try_whole():
    """An edit listener raising at the try's set (the edit applied whole, as the connectome says)
    and again at the rollback's: everything is put back before the listeners hear of the rollback.
    The rollback's set told them first and its error left the weights and Adam's moments of the
    try in place (a pruned synapse's weight lost), and that error replaced the first."""
    holder = {}
    model, conn, o, ctrl = _setup("train", "synapse", "adam", holdout=lambda: holder["f"]())
    ref, holder["f"] = _rejecting(conn)
    _negative_zeros(conn, o)
    ref.update({n: m.clone() for n, m in conn.masks.items()})
    before, events, heard = _capture(conn, o), len(ctrl.events), []

    def listener(changed):
        heard.append(sorted(changed))
        raise ValueError(f"listener broke ({len(heard)})")

    conn.add_edit_listener(listener)
    with pytest.raises(ValueError, match=r"listener broke \(1\)") as e:
        ctrl._apply(_plan(conn, per_layer=16), step=0)
    _assert_same(before, _capture(conn, o))
    assert len(heard) == 2 and len(ctrl.events) == events  # the try, then its rollback
    notes = " ".join(e.value.__notes__)
    assert "was rolled back" in notes and "listener told of that rollback raised ValueError: listener broke (2)" in notes


@pytest.mark.parametrize("line_search, raises_at", [(False, 2), (True, 2), (True, 6)])
def test_a_grow_init_that_raises_leaves_the_connectome_unedited(line_search, raises_at):
    """A grow_init callable that raises (a bug in it) at a layer after the first of a try (call 2),
    or within a halved try after the whole one was rejected (call 6: four layers grow in each):
    nothing stays edited (bad input never leaves a half-edited connectome), no event is logged."""
    holder, calls = {"armed": False}, []

    def grow_init(name, grown):
        if holder["armed"]:
            calls.append(name)
            if len(calls) == raises_at:
                raise ZeroDivisionError("the grow init broke")
        return torch.zeros(conn.params[name].shape)

    model, conn, o, ctrl = _setup("train", "synapse", "adam", holdout=(lambda: holder["f"]()) if line_search else None,
                                  grow_init=grow_init)
    ref, holder["f"] = _rejecting(conn)
    _negative_zeros(conn, o)
    ref.update({n: m.clone() for n, m in conn.masks.items()})
    before, events = _capture(conn, o), len(ctrl.events)
    holder["armed"] = True
    with pytest.raises(ZeroDivisionError, match="grow init broke"):
        ctrl._apply(_plan(conn, per_layer=16), step=0)
    assert len(calls) == raises_at and len(ctrl.events) == events
    _assert_same(before, _capture(conn, o))


def test_a_rollback_goes_through_the_layers_in_the_connectomes_order():
    """The snapshot, the restore and the edit listeners' dict follow the connectome's layer order,
    not a set's: a set of 24 layer names iterates in an order that follows string hashing, which
    differs between runs and between the processes of one launch (a listener heard the layers in
    another order on each, practically never in the layers' own)."""
    model = nn.Sequential(*[nn.Linear(4, 4, bias=False) for _ in range(24)])
    conn = adaptive.Connectome(model)
    masks = {n: m.clone() for n, m in conn.masks.items()}
    for m in masks.values():
        m.view(-1)[::2] = False
    conn.set_masks(masks)
    plan = _plan(conn, per_layer=2)
    plan = EditPlan(prune=dict(reversed(plan.prune.items())), grow=plan.grow)  # neither dict in the layers' order
    snap = EditSnapshot(conn, plan)
    assert list(snap.positions) == conn.names
    heard = []
    conn.add_edit_listener(lambda changed: heard.append(list(changed)))
    edited = {n: m.clone().reshape(-1) for n, m in conn.masks.items()}
    for n, m in edited.items():
        m[plan.prune[n]], m[plan.grow[n]] = False, True
    conn.set_masks({n: m.view(conn.masks[n].shape) for n, m in edited.items()})
    assert list(snap.restore()) == conn.names and heard[-1] == conn.names


def test_plan_positions_refuses_a_layer_the_connectome_lacks():
    conn = adaptive.Connectome(nn.Sequential(nn.Linear(4, 4)))
    with pytest.raises(KeyError, match="'nope'.*not layers of the connectome.*conn.names"):
        plan_positions(conn, EditPlan(prune={"nope": torch.tensor([0])}))


def test_an_atomic_plan_whose_loss_rises_is_rolled_back_whole_without_halving():
    """An atomic plan (crawl's swaps) is taken whole or not at all: a rise of the held-out loss rolls it
    back at the first try, never a half of it (a mutation that ignored ``atomic`` survived every test)."""
    calls = []

    def holdout():
        calls.append(1)
        return 0.0 if len(calls) == 1 else 1.0  # every try raises the loss

    model, conn, o, ctrl = _setup("train", "synapse", "adam", holdout=holdout, tries=2)
    before = _capture(conn, o)
    plan = _plan(conn)
    plan.atomic = True
    ev = ctrl._apply(plan, step=0)
    assert ev["line_search_fraction"] == 0.0 and ev["pruned"] == ev["grown"] == 0
    assert len(calls) == 2  # the loss before, and one try: no halved tries
    _assert_same(before, _capture(conn, o))


def test_a_snapshot_restores_its_masks_again_after_the_restored_mask_was_edited_in_place():
    """A layer edited in place is saved whole, and one snapshot serves every try: its restore gave the connectome
    the saved tensor itself where it must give a copy, so an in-place edit after one rollback corrupted the mask the
    next rollback gave back. (A restore that gave the tensor itself passed every test.)"""
    torch.manual_seed(0)
    conn = adaptive.Connectome(nn.Sequential(nn.Linear(8, 8)))
    n = conn.names[0]
    conn.masks[n].view(-1)[:4] = False  # edited in place: the snapshot keeps the layer whole
    snap = EditSnapshot(conn, EditPlan(prune={n: torch.tensor([10, 11])}))
    before = conn.masks[n].clone()
    grid = torch.arange(64).view(8, 8)
    conn.set_masks({n: conn.masks[n] & (grid % 7 != 0)})
    snap.restore()
    assert torch.equal(conn.masks[n], before)
    conn.masks[n].view(-1)[20:30] = False  # the restored mask edited in place again
    conn.set_masks({n: conn.masks[n] & (grid % 5 != 0)})
    snap.restore()
    assert torch.equal(conn.masks[n], before)
