"""The invariants of shared/ARCHITECTURE.md that the connectome core owns:
1 pruned weights stay exactly 0.0 through every optimizer step, 2 mask_only never changes a
surviving weight, 3 an all-ones connectome is the plain model, 6 bad input changes nothing."""
import copy
import io
import math
import pickle

import pytest
import torch
from torch import nn

import adaptive

torch.set_num_threads(1)


def small_net(seed=0):
    """Conv2d (plain, grouped, depthwise), BatchNorm, Conv1d-free but Linear head: every kind of
    state an optimizer keeps for a conv net, in a model that runs in microseconds."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1, groups=4),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False),
        nn.AdaptiveAvgPool2d(2),
        nn.Flatten(),
        nn.Linear(32, 10),
    )


def batch(seed, n=8):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 8, 8, generator=g), torch.randint(0, 10, (n,), generator=g)


def random_masks(conn, density=0.5, seed=1):
    g = torch.Generator().manual_seed(seed)
    gran = conn.granularity
    out = {}
    for n, m in conn.masks.items():
        e = torch.rand(gran.ensemble_shape(m.shape), generator=g) < density
        out[n] = gran.expand(e, m.shape).contiguous()
    return out


def snapshot(conn):
    return (
        {n: m.clone() for n, m in conn.masks.items()},
        {n: p.detach().clone() for n, p in conn.model.named_parameters()},
    )


def assert_unchanged(conn, snap):
    masks, params = snap
    for n, m in conn.masks.items():
        assert torch.equal(m, masks[n]), f"mask of {n} changed"
    for n, p in conn.model.named_parameters():
        assert torch.equal(p.detach().view(torch.int32), params[n].view(torch.int32)), f"weight {n} changed"


def attached_half_pruned(make_opt=lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=0.9)):
    """``(model, conn, opt)``: :func:`small_net` with half its synapses pruned (:func:`random_masks`) and
    its connectome attached to ``make_opt(model.parameters())``."""
    model = small_net()
    conn = adaptive.Connectome(model)
    conn.set_masks(random_masks(conn, 0.5))
    opt = make_opt(model.parameters())
    conn.attach(opt)
    return model, conn, opt


def train(model, opt, steps, seed=100, autocast=False):
    model.train()
    for s in range(steps):
        x, y = batch(seed + s)
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()


# ---------------------------------------------------------------------------------- invariant 3
@pytest.mark.parametrize("ensemble", ["synapse", "kernel", "2:4"])
def test_all_ones_connectome_is_the_plain_model_forward_backward_and_step(ensemble):
    model = small_net()
    ref = copy.deepcopy(model)
    conn = adaptive.Connectome(model, ensemble=ensemble)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    ref_opt = torch.optim.SGD(ref.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    conn.attach(opt)
    assert conn.density() == 1.0
    for step in range(3):
        x, y = batch(step)
        out, ref_out = model(x), ref(x)
        assert torch.equal(out, ref_out)
        opt.zero_grad()
        ref_opt.zero_grad()
        nn.functional.cross_entropy(out, y).backward()
        nn.functional.cross_entropy(ref_out, y).backward()
        for (n, p), q in zip(model.named_parameters(), ref.parameters()):
            assert torch.equal(p.grad, q.grad), n
        opt.step()
        ref_opt.step()
        for (n, p), q in zip(model.named_parameters(), ref.parameters()):
            assert torch.equal(p, q), n


# ---------------------------------------------------------------------------------- invariant 1
OPTIMIZERS = {
    "sgd-momentum-wd": lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=0.9, weight_decay=5e-3),
    "sgd-nesterov-wd": lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-3),
    "adam": lambda ps: torch.optim.Adam(ps, lr=1e-2, weight_decay=1e-3),
    "adamw": lambda ps: torch.optim.AdamW(ps, lr=1e-2, weight_decay=0.1),
    "rmsprop": lambda ps: torch.optim.RMSprop(ps, lr=1e-3, momentum=0.5, centered=True, weight_decay=1e-3),
    "adam-amsgrad": lambda ps: torch.optim.Adam(ps, lr=1e-2, amsgrad=True),
    "nadam-decoupled": lambda ps: torch.optim.NAdam(ps, lr=1e-2, weight_decay=1e-2, decoupled_weight_decay=True),
    "radam": lambda ps: torch.optim.RAdam(ps, lr=1e-2, weight_decay=1e-3),
    "adagrad": lambda ps: torch.optim.Adagrad(ps, lr=1e-2, weight_decay=1e-3),
}
FP32_ONLY = {"rmsprop", "adam-amsgrad", "nadam-decoupled", "radam", "adagrad"}


def assert_pruned_are_zero(conn, opt):
    inner = opt
    for n, p in conn.params.items():
        pruned = ~conn.masks[n]
        assert pruned.any()
        w = p.detach()[pruned]
        assert torch.equal(w, torch.zeros_like(w)), f"{n}: a pruned weight is not 0.0"
        for key, v in inner.state[p].items():
            if isinstance(v, torch.Tensor) and v.shape == p.shape:
                assert bool((v[pruned] == 0).all()), f"{n}: optimizer state {key!r} is non-zero at a pruned position"


CASES = [(o, a) for o in OPTIMIZERS for a in (False, True) if not (o in FP32_ONLY and a)]


@pytest.mark.parametrize("opt_name, autocast", CASES, ids=[f"{o}-{'bf16-autocast' if a else 'fp32'}" for o, a in CASES])
def test_pruned_weights_stay_exactly_zero_for_50_steps(opt_name, autocast):
    model = small_net()
    conn = adaptive.Connectome(model, ensemble="synapse")
    opt = OPTIMIZERS[opt_name](model.parameters())
    train(model, opt, 3)  # dense steps first, so the attach must clear existing moments
    conn.set_masks(random_masks(conn, 0.5))
    ids = [id(p) for p in model.parameters()]
    conn.attach(opt)
    assert_pruned_are_zero(conn, opt)
    before = {n: p.detach().clone() for n, p in conn.params.items()}
    train(model, opt, 50, autocast=autocast)
    assert_pruned_are_zero(conn, opt)
    assert [id(p) for p in model.parameters()] == ids  # parameter identity unchanged
    assert all(p is conn.params[n] for n, p in model.named_parameters() if n in conn.params)
    for n, p in conn.params.items():  # the survivors did learn (the test is not vacuous)
        assert not torch.equal(p.detach()[conn.masks[n]], before[n][conn.masks[n]]), n
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_every_zero_preserving_optimizer_is_proven_here():
    """Registered optimizers skip the post-step re-mask: each one must be in the 50-step test."""
    from adaptive.optim_state import _ZERO_PRESERVING

    proven = {type(make([nn.Parameter(torch.zeros(1))])) for make in OPTIMIZERS.values()}
    builtin = {cls for cls in _ZERO_PRESERVING if cls.__module__.startswith("torch.optim")}
    assert builtin <= proven, f"registered but not proven: {builtin - proven}"
    assert {torch.optim.SGD, torch.optim.Adam, torch.optim.AdamW} <= _ZERO_PRESERVING


class SpreadingOptimizer(torch.optim.Optimizer):
    """Not zero-preserving: mixes every gradient into every weight (as a preconditioner such as
    Shampoo or Muon's orthogonalisation does), so without re-masking pruned weights revive."""

    def __init__(self, params, lr=0.1):
        super().__init__(params, dict(lr=lr))

    @torch.no_grad()
    def step(self, closure=None):
        for g in self.param_groups:
            for p in g["params"]:
                if p.grad is not None:
                    p.sub_(g["lr"] * (p.grad.abs().mean() + 0.01))


class SubclassedSGD(torch.optim.SGD):
    """A subclass of a registered optimizer is not trusted (it may change the update)."""

    @torch.no_grad()
    def step(self, closure=None):
        super().step(closure)
        for g in self.param_groups:
            for p in g["params"]:
                p.add_(1e-3)


@pytest.mark.parametrize("make", [SpreadingOptimizer, lambda ps: SubclassedSGD(ps, lr=0.1, momentum=0.9)], ids=["spreading", "sgd-subclass"])
def test_an_optimizer_that_is_not_zero_preserving_is_re_masked_after_each_step(make):
    from adaptive.optim_state import preserves_zeros

    model = small_net()
    conn = adaptive.Connectome(model)
    conn.set_masks(random_masks(conn, 0.5))
    opt = make(model.parameters())
    assert not preserves_zeros(opt)
    conn.attach(opt)
    train(model, opt, 5)
    for n, p in conn.params.items():
        assert torch.equal(p.detach()[~conn.masks[n]], torch.zeros(int((~conn.masks[n]).sum())))
    # the same optimizer without the connectome does revive them (the test can fail)
    conn.detach()
    train(model, opt, 1)
    assert any(bool((p.detach()[~conn.masks[n]] != 0).any()) for n, p in conn.params.items())


def test_a_weight_written_outside_the_optimizer_is_pruned_again_at_the_next_step():
    model, conn, opt = attached_half_pruned()
    train(model, opt, 2)
    with torch.no_grad():
        model[0].weight.fill_(0.25)  # e.g. a re-init or a dense checkpoint loaded after attach
    train(model, opt, 1)
    pruned = ~conn.masks["0.weight"]
    assert torch.equal(model[0].weight.detach()[pruned], torch.zeros(int(pruned.sum())))
    assert_pruned_are_zero(conn, opt)


def test_an_optimizer_state_loaded_after_attach_is_repaired():
    dense_model = small_net()
    dense_opt = torch.optim.Adam(dense_model.parameters(), lr=1e-2)
    train(dense_model, dense_opt, 3)  # moments non-zero everywhere
    model, conn, opt = attached_half_pruned(lambda ps: torch.optim.Adam(ps, lr=1e-2))
    opt.load_state_dict(dense_opt.state_dict())
    train(model, opt, 1)  # repaired before the step: the moments at pruned positions cannot move a weight
    assert_pruned_are_zero(conn, opt)
    train(model, opt, 4)
    assert_pruned_are_zero(conn, opt)


def test_register_zero_preserving_checks_its_argument():
    from adaptive.optim_state import register_zero_preserving

    with pytest.raises(TypeError, match="Optimizer subclass"):
        register_zero_preserving(nn.Linear)


def test_an_edit_mid_training_resets_moments_and_starts_grown_synapses_at_zero():
    model = small_net()
    conn = adaptive.Connectome(model)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    conn.set_masks(random_masks(conn, 0.5, seed=1))
    conn.attach(opt)
    train(model, opt, 5)
    old = {n: m.clone() for n, m in conn.masks.items()}
    new = random_masks(conn, 0.5, seed=2)
    changed = conn.set_masks(new)
    assert set(changed) == set(conn.names)
    for n, p in conn.params.items():
        grown = new[n] & ~old[n]
        assert grown.any()
        assert torch.equal(p.detach()[grown], torch.zeros(int(grown.sum())))
        for v in (opt.state[p]["exp_avg"], opt.state[p]["exp_avg_sq"]):
            assert bool((v[changed[n]] == 0).all())
            assert bool((v[old[n] & new[n]] != 0).any())  # survivors keep their history
    train(model, opt, 10)
    assert_pruned_are_zero(conn, opt)


@pytest.mark.parametrize("moved_by", ["detached training", "a dense load", "in-place prune, detached training"])
def test_a_synapse_grown_at_zero_starts_at_zero_whatever_its_weight_drifted_to(moved_by):
    """grow_init='zero' promises 0.0 for a grown synapse. A pruned weight is 0.0 only while a connectome
    attached to the optimizer holds it there: after conn.detach() ("training goes on plain") or a dense
    model.load_state_dict, it held another value, and set_masks grew it back at that value (also one
    pruned by writing conn.masks in place, then conn.apply(), as documented)."""
    model = small_net()
    conn = adaptive.Connectome(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    conn.set_masks(random_masks(conn, 0.5, seed=1))
    dense = copy.deepcopy(small_net().state_dict())
    conn.attach(opt)
    train(model, opt, 2)
    if moved_by.startswith("in-place"):
        for m in conn.masks.values():
            m[0] = False
        conn.apply()
    old = {n: m.clone() for n, m in conn.masks.items()}
    if moved_by.endswith("detached training"):
        conn.detach()
        train(model, opt, 2)
    else:
        model.load_state_dict(dense)  # re-masked lazily, at the next step: here the edit comes first
    assert all(bool(p.detach()[~old[n]].ne(0).any()) for n, p in conn.params.items())  # the pruned ones moved
    conn.set_masks({n: torch.ones_like(m) for n, m in conn.masks.items()})
    for n, p in conn.params.items():
        assert not bool(p.detach()[~old[n]].any()), f"{n}: a synapse grown at grow_init='zero' did not start at 0.0"
        assert bool(p.detach()[old[n]].ne(0).all())  # the kept ones keep their values


@pytest.mark.parametrize("grow_init", ["zero", "callable"])
def test_a_synapse_grown_in_place_and_trained_keeps_its_weight_at_the_next_edit(grow_init):
    """A synapse switched on by writing its mask in place, then conn.apply() (as documented), trains
    with the others; the next edit of its layer that keeps it present must keep its trained weight, not
    grow it again at grow_init (it did, once grown-at-zero zeroed every position the mask as set lacked)."""
    model, conn, opt = attached_half_pruned()
    train(model, opt, 2)
    k = "8.weight"
    on = (~conn.masks[k]).nonzero()[:3].unbind(1)
    conn.masks[k][on] = True
    conn.apply()
    train(model, opt, 3, seed=300)
    trained = conn.params[k].detach()[on].clone()
    assert bool(trained.ne(0).all())  # they trained
    new = conn.masks[k].clone()
    new[new.nonzero()[-1].unbind()] = False  # prune another synapse of the layer
    init = "zero" if grow_init == "zero" else (lambda name, grown: torch.full_like(conn.params[name], 7.0))
    conn.set_masks({k: new}, grow_init=init)
    assert torch.equal(conn.params[k].detach()[on], trained), "an in-place grown, trained synapse was grown again"
    assert_pruned_are_zero(conn, opt)


def test_deepcopy_and_pickle_of_the_model_work_with_a_connectome_attached():
    model = small_net()
    conn = adaptive.Connectome(model, ensemble="kernel")
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    conn.set_masks(random_masks(conn, 0.5))
    conn.attach(opt)
    train(model, opt, 3)
    model.eval()
    x, _ = batch(7)
    expect = model(x)
    for clone in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        assert torch.equal(clone(x), expect)
        assert [n for n, _ in clone.named_parameters()] == [n for n, _ in model.named_parameters()]
    buf = io.BytesIO()
    torch.save(model, buf)
    buf.seek(0)
    assert torch.equal(torch.load(buf, weights_only=False)(x), expect)
    # the connectome itself copies too, detached from the optimizer, with its own model copy
    for c2 in (copy.deepcopy(conn), pickle.loads(pickle.dumps(conn))):
        assert c2.mask_hash() == conn.mask_hash()
        assert c2.params["0.weight"] is dict(c2.model.named_parameters())["0.weight"]
        assert c2.params["0.weight"] is not conn.params["0.weight"]
    train(model, opt, 2)  # the original keeps working
    assert_pruned_are_zero(conn, opt)


# ------------------------------------------------------------------ invariant 1 after a divergence
def _poison_pruned_gradients(conn, value):
    """A hook on each weight's incoming gradient (before accumulation, before the masking hooks)
    that writes ``value`` at the first pruned position: a divergence only an absent synapse sees."""
    hooks = []
    for n, p in conn.params.items():
        at = tuple((~conn.masks[n]).nonzero()[0].tolist())

        def put(g, at=at):
            g = g.clone()
            g[at] = value
            return g
        hooks.append(p.register_hook(put))
    return hooks


def assert_pruned_are_plus_zero(conn, opt):
    """Pruned weights and gradients all bits zero (+0.0: not NaN, not -0.0), optimizer state 0 there."""
    for n, p in conn.params.items():
        pruned = ~conn.masks[n]
        assert bool((_bits(p)[pruned] == 0).all()), f"{n}: a pruned weight is not +0.0: {p.detach()[pruned].unique()}"
        if p.grad is not None:
            assert bool((_bits(p.grad)[pruned] == 0).all()), f"{n}: a pruned gradient is not +0.0"
    assert_pruned_are_zero(conn, opt)


DIVERGENCES = ["nan-loss", "nan-at-a-pruned-gradient", "inf-at-a-pruned-gradient"]
MASKED = ["in-backward", "at-the-step", "observed"]


@pytest.mark.parametrize("masked_at", MASKED)
@pytest.mark.parametrize("divergence", DIVERGENCES)
@pytest.mark.parametrize("opt_name", ["sgd-momentum-wd", "adam", "spreading"])
def test_pruned_positions_stay_plus_zero_through_a_divergence(opt_name, divergence, masked_at):
    """Masking multiplied by the 0/1 mask, and 0 * NaN = 0 * inf = NaN: a NaN or inf gradient left
    NaN at pruned positions, in the optimizer's moments and weights there, and the next forward
    spread it to every output. Now pruned gradients and weights are +0.0 after every step, and a
    divergence only a pruned position saw leaves the network finite."""
    make = SpreadingOptimizer if opt_name == "spreading" else OPTIMIZERS[opt_name]
    model, conn, opt = attached_half_pruned(make)
    conn.mask_in_backward = masked_at == "in-backward"
    if masked_at == "observed":  # dense gradients until the step (as at a controller's observation)
        conn.add_observer(lambda: None)
    train(model, opt, 2)
    hooks = [] if divergence == "nan-loss" else _poison_pruned_gradients(conn, float(divergence[:3]))
    x, y = batch(7)
    opt.zero_grad(set_to_none=True)
    (nn.functional.cross_entropy(model(x), y) * (math.nan if divergence == "nan-loss" else 1.0)).backward()
    opt.step()
    assert_pruned_are_plus_zero(conn, opt)
    for h in hooks:
        h.remove()
    train(model, opt, 2)
    assert_pruned_are_plus_zero(conn, opt)
    if divergence != "nan-loss":  # only absent synapses saw it: the network is whole
        assert all(bool(torch.isfinite(p).all()) for p in model.parameters())


@pytest.mark.parametrize("behind_the_counter", [False, True])
def test_a_nan_written_at_a_pruned_weight_is_plus_zero_after_the_next_step_or_apply(behind_the_counter):
    model, conn, opt = attached_half_pruned()
    train(model, opt, 1)
    at = tuple((~conn.masks["0.weight"]).nonzero()[0].tolist())
    if behind_the_counter:  # (.data: no version counter moves, so apply() must be called)
        model[0].weight.data[at] = -math.inf
        conn.apply()
    else:
        with torch.no_grad():
            model[0].weight[at] = math.nan
    train(model, opt, 1)
    assert_pruned_are_plus_zero(conn, opt)


@pytest.mark.parametrize("opt_name", ["sgd-momentum-wd", "adam"])
def test_mask_only_keeps_pruned_gradients_and_moments_at_zero_through_a_nan(opt_name):
    model = small_net()
    original = {n: p.detach().clone() for n, p in model.named_parameters()}
    conn = adaptive.Connectome(model, mode="mask_only")
    opt = OPTIMIZERS[opt_name](model.parameters())
    conn.attach(opt)
    conn.set_masks(random_masks(conn, 0.5, seed=3))
    hooks = _poison_pruned_gradients(conn, math.nan)
    train(model, opt, 2)
    assert_pruned_are_plus_zero(conn, opt)
    for n, p in conn.params.items():
        assert torch.equal(_bits(p)[conn.masks[n]], _bits(original[n])[conn.masks[n]]), n
    for h in hooks:
        h.remove()


# ---------------------------------------------------------------------------------- invariant 2
def _bits(t):
    return t.detach().contiguous().view(torch.int32)


@pytest.mark.parametrize("ensemble", ["synapse", "kernel", "neuron"])
def test_mask_only_never_changes_a_surviving_weight_even_with_an_optimizer(ensemble):
    model = small_net()
    original = {n: p.detach().clone() for n, p in model.named_parameters()}
    conn = adaptive.Connectome(model, ensemble=ensemble, mode="mask_only")
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-2)
    conn.attach(opt)
    first = random_masks(conn, 0.5, seed=3)
    conn.set_masks(first)
    train(model, opt, 5)
    for n, p in conn.params.items():
        live = conn.masks[n]
        assert torch.equal(_bits(p)[live], _bits(original[n])[live]), n
        assert bool((p.detach()[~live] == 0).all())
    # prune more, then restore everything: every synapse comes back bit-identical
    conn.set_masks(random_masks(conn, 0.3, seed=4))
    train(model, opt, 3)
    conn.set_masks({n: torch.ones_like(m) for n, m in conn.masks.items()})
    for n, p in conn.params.items():
        assert torch.equal(_bits(p), _bits(original[n])), n
        assert torch.equal(_bits(conn.original[n]), _bits(original[n]))
    # parameters that are not synapses (BatchNorm, biases) did train
    assert not torch.equal(dict(model.named_parameters())["1.weight"], original["1.weight"])


def test_mask_only_restores_survivors_in_the_dtype_the_model_was_cast_to():
    """The step restores each weight from its original (kept in the dtype it had): after
    model.double() the survivors are the originals cast to float64, the pruned ones +0.0."""
    model = small_net()
    original = {n: p.detach().clone() for n, p in model.named_parameters()}
    conn = adaptive.Connectome(model, mode="mask_only")
    conn.set_masks(random_masks(conn, 0.5, seed=3))
    model.double()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    conn.attach(opt)
    for s in range(2):
        x, y = batch(s)
        opt.zero_grad()
        nn.functional.cross_entropy(model(x.double()), y).backward()
        opt.step()
    for n, p in conn.params.items():
        live = conn.masks[n]
        assert p.dtype == torch.float64
        assert torch.equal(p.detach()[live], original[n].double()[live]), n
        assert bool((p.detach()[~live].view(torch.int64) == 0).all()), n


def test_mask_only_prune_and_restore_without_optimizer_is_bit_identical():
    model = small_net()
    with torch.no_grad():
        model[0].weight[0, 0, 0, 0] = -0.0  # signed zero and subnormals survive too
        model[0].weight[0, 0, 0, 1] = 1e-40
    original = {n: p.detach().clone() for n, p in model.named_parameters()}
    conn = adaptive.Connectome(model, mode="mask_only")
    conn.set_masks({n: torch.zeros_like(m) for n, m in conn.masks.items()})
    assert conn.density() == 0.0
    assert all(bool((p == 0).all()) for p in conn.params.values())
    conn.set_masks({n: torch.ones_like(m) for n, m in conn.masks.items()})
    for n, p in model.named_parameters():
        assert torch.equal(_bits(p), _bits(original[n])), n


# ---------------------------------------------------------------------------------- invariant 6
def _linear_net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 4))


BAD_MASKS = [
    ("wrong shape", lambda c: {"0.weight": torch.ones(6, 5, dtype=torch.bool)}, ValueError, r"shape \(6, 5\).*\(5, 6\)"),
    ("wrong dtype", lambda c: {"0.weight": torch.ones(5, 6)}, TypeError, "torch.bool"),
    ("not a tensor", lambda c: {"0.weight": [[True] * 6] * 5}, TypeError, "torch.Tensor"),
    ("unknown name", lambda c: {"0.bias": torch.ones(5, dtype=torch.bool)}, KeyError, "unknown parameter name"),
    ("not a dict", lambda c: [torch.ones(5, 6, dtype=torch.bool)], TypeError, "dict"),
    (
        "one good one bad",
        lambda c: {"0.weight": torch.zeros(5, 6, dtype=torch.bool), "2.weight": torch.zeros(4, 5, dtype=torch.uint8)},
        TypeError,
        "'2.weight'.*torch.bool",
    ),
    (
        "one good one wrong shape",
        lambda c: {"2.weight": torch.zeros(4, 5, dtype=torch.bool), "0.weight": torch.zeros(6, dtype=torch.bool)},
        ValueError,
        "'0.weight'.*shape",
    ),
]


@pytest.mark.parametrize("case, make, err, words", BAD_MASKS, ids=[b[0] for b in BAD_MASKS])
def test_bad_masks_raise_and_change_nothing(case, make, err, words):
    model = _linear_net()
    conn = adaptive.Connectome(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    conn.attach(opt)
    conn.set_masks({"2.weight": torch.rand(4, 5, generator=torch.Generator().manual_seed(0)) < 0.5})
    snap = snapshot(conn)
    with pytest.raises(err, match=words):
        conn.set_masks(make(conn))
    assert_unchanged(conn, snap)


def test_bad_grow_init_changes_nothing():
    model = _linear_net()
    conn = adaptive.Connectome(model)
    conn.set_masks({"0.weight": torch.zeros(5, 6, dtype=torch.bool)})
    snap = snapshot(conn)
    ones = {"0.weight": torch.ones(5, 6, dtype=torch.bool), "2.weight": torch.zeros(4, 5, dtype=torch.bool)}
    with pytest.raises(ValueError, match="unknown grow_init 'bogus'"):
        conn.set_masks(ones, grow_init="bogus")
    with pytest.raises(ValueError, match="original weights"):
        conn.set_masks(ones, grow_init="original")

    def explode(name, grown):
        raise RuntimeError("initialiser failed")

    with pytest.raises(RuntimeError, match="initialiser failed"):
        conn.set_masks(ones, grow_init=explode)
    with pytest.raises(ValueError, match=r"shaped \(5, 6\)"):
        conn.set_masks(ones, grow_init=lambda name, grown: torch.ones(3))

    def nan_where_grown(name, grown):  # finite only where nothing grows: refused, only grown entries count
        return torch.where(grown, torch.tensor(float("nan")), torch.tensor(1.0))

    with pytest.raises(ValueError, match=r"returned 30 NaN or inf value\(s\) for synapses it grows in '0.weight'"):
        conn.set_masks(ones, grow_init=nan_where_grown)
    with pytest.raises(ValueError, match="NaN or inf"):  # finite in float64, inf in the weight's float32
        conn.set_masks(ones, grow_init=lambda name, grown: torch.full(grown.shape, 1e300, dtype=torch.float64))
    assert_unchanged(conn, snap)
    conn.set_masks(ones, grow_init=lambda name, grown: torch.where(grown, torch.tensor(0.25), torch.tensor(float("nan"))))
    assert torch.equal(conn.params["0.weight"].detach(), torch.full((5, 6), 0.25))  # NaN where nothing grows: unused
    conn.set_masks({"0.weight": torch.zeros(5, 6, dtype=torch.bool)})
    # and the valid forms work
    conn.set_masks(ones, grow_init=lambda name, grown: torch.full(grown.shape, 0.5))
    w = conn.params["0.weight"].detach()
    assert torch.equal(w, torch.full((5, 6), 0.5))
    assert bool((conn.params["2.weight"] == 0).all())


def test_grow_init_original_restores_kept_weights_in_train_mode():
    model = _linear_net()
    conn = adaptive.Connectome(model)
    conn.keep_original()
    orig = conn.params["0.weight"].detach().clone()
    half = torch.zeros(5, 6, dtype=torch.bool)
    half[:2] = True
    conn.set_masks({"0.weight": half})
    new = torch.zeros(5, 6, dtype=torch.bool)
    new[1:4] = True  # row 0 pruned, row 1 kept, rows 2-3 grown
    conn.set_masks({"0.weight": new}, grow_init="original")
    w = conn.params["0.weight"].detach()
    assert torch.equal(w[1:4], orig[1:4]) and bool((w[0] == 0).all()) and bool((w[4:] == 0).all())


@pytest.mark.parametrize(
    "ensemble, words",
    [
        ("kernel", "not constant over each 'kernel' ensemble.*set_ensemble_masks"),
        ("neuron", "not constant over each 'neuron' ensemble.*set_ensemble_masks"),
        ("block:2x2", "not constant over each 'block:2x2' ensemble.*set_ensemble_masks"),
        ("2:4", r"more than 2 live synapses in some group of 4.*granularity_of\('0.weight'\).select\(scores\)"),
    ],
)
def test_mask_inconsistent_with_the_granularity_raises_and_changes_nothing(ensemble, words):
    model = small_net()
    conn = adaptive.Connectome(model, ensemble=ensemble)
    if ensemble == "2:4":
        good = {n: conn.granularity.select(torch.randn(m.shape)) for n, m in conn.masks.items()}
    else:
        good = random_masks(conn, 0.5)
    conn.set_masks({"3.weight": good["3.weight"]})
    snap = snapshot(conn)
    broken = torch.ones(8, 3, 3, 3, dtype=torch.bool)
    broken[0, 0, 0, 0] = False  # splits a kernel, a neuron and a 2x2 block; leaves 3 of 4 alive
    with pytest.raises(ValueError, match=f"mask for '0.weight': mask (is|has) {words}"):
        conn.set_masks({"5.weight": good["5.weight"], "0.weight": broken})
    assert_unchanged(conn, snap)


def test_an_n_m_mask_with_one_live_synapse_too_many_in_a_group_is_refused():
    """2:4 allows at most 2 live per group of 4: 3 of 4 (n + 1, not only a dense group) is refused."""
    conn = adaptive.Connectome(nn.Sequential(nn.Linear(8, 4)), ensemble="2:4")
    m = conn.granularity_of("0.weight").select(torch.randn(4, 8))
    conn.set_masks({"0.weight": m})
    snap = snapshot(conn)
    m = m.clone()
    m[0, :4] = torch.tensor([True, True, True, False])  # 3 live in the first group of 4
    with pytest.raises(ValueError, match="mask for '0.weight': mask has more than 2 live synapses in some group of 4"):
        conn.set_masks({"0.weight": m})
    assert_unchanged(conn, snap)


def test_bad_ensemble_masks_raise_and_change_nothing():
    model = small_net()
    conn = adaptive.Connectome(model, ensemble="kernel")
    snap = snapshot(conn)
    # each error names the layer and its granularity, what was wrong, and what to pass instead
    with pytest.raises(ValueError, match=r"'0.weight' has shape \(8, 3, 3, 3\), expected \(8, 3\) for 'kernel'.*"
                                         r"conn.ensemble_mask\('0.weight'\).*set_masks"):
        conn.set_ensemble_masks({"0.weight": torch.ones(8, 3, 3, 3, dtype=torch.bool)})
    with pytest.raises(TypeError, match=r"'0.weight' \('kernel' ensembles\) must be a torch.bool tensor, got "
                                        r"torch.float32; use mask.bool\(\)"):
        conn.set_ensemble_masks({"0.weight": torch.ones(8, 3)})
    with pytest.raises(TypeError, match=r"'0.weight' \('kernel' ensembles\).*got list; use torch.as_tensor"):
        conn.set_ensemble_masks({"0.weight": [[True] * 3] * 8})
    with pytest.raises(KeyError, match=r"unknown parameter name 'nope'.*prunable weights, which are \['0.weight'.*conn.names"):
        conn.set_ensemble_masks({"3.weight": torch.zeros(8, 2, dtype=torch.bool), "nope": torch.ones(1, dtype=torch.bool)})
    with pytest.raises(TypeError, match="dict"):
        conn.set_ensemble_masks([torch.ones(8, 3, dtype=torch.bool)])
    assert_unchanged(conn, snap)
    changed = conn.set_ensemble_masks({"0.weight": torch.eye(8, 3, dtype=torch.bool)})
    assert torch.equal(conn.ensemble_masks()["0.weight"], torch.eye(8, 3, dtype=torch.bool))
    assert int(changed["0.weight"].sum()) == (24 - 3) * 9


@pytest.mark.parametrize("to_sparse", [torch.Tensor.to_sparse, torch.Tensor.to_sparse_csr], ids=["coo", "csr"])
def test_sparse_masks_are_refused_with_to_dense_and_change_nothing(to_sparse):
    """A sparse mask failed deep inside the edit (NotImplementedError for bitwise_xor on SparseCPU,
    'reshape is not implemented for sparse tensors', 'unsupported tensor layout')."""
    conn = adaptive.Connectome(small_net(), ensemble="kernel")
    snap = snapshot(conn)
    pruned = {n: torch.zeros_like(m) for n, m in conn.masks.items()}  # valid edits beside the sparse mask
    sparse = {"0.weight": to_sparse(torch.ones(8, 3, 3, 3, dtype=torch.bool))}
    sparse_ensembles = {"0.weight": to_sparse(torch.ones(8, 3, dtype=torch.bool))}
    for call, edits, what in ((conn.set_masks, {**pruned, **sparse}, "mask"),
                              (conn.set_ensemble_masks, {**conn.ensemble_masks(), **sparse_ensembles}, "ensemble mask")):
        with pytest.raises(TypeError, match=rf"^{what} for '0.weight' is a sparse tensor \(torch.sparse_(coo|csr)\).*mask.to_dense\(\)"):
            call(edits)
        assert_unchanged(conn, snap)


@pytest.mark.parametrize(
    "kwargs, err, words",
    [
        (dict(ensemble="blocky"), ValueError, "unknown ensemble spec 'blocky'"),
        (dict(ensemble="5:4"), ValueError, "n <= m"),
        (dict(ensemble=None), TypeError, "spec string"),
        (dict(mode="frozen"), ValueError, "unknown mode 'frozen'"),
        (dict(include="nothing*"), ValueError, "matched no prunable layer"),
    ],
)
def test_bad_construction_raises_naming_the_problem(kwargs, err, words):
    model = small_net()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    with pytest.raises(err, match=words):
        adaptive.Connectome(model, **kwargs)
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())


def test_no_prunable_layers_raises():
    with pytest.raises(ValueError, match="no prunable layers"):
        adaptive.Connectome(nn.Sequential(nn.BatchNorm1d(4), nn.ReLU()))


def test_bad_optimizers_raise():
    conn = adaptive.Connectome(_linear_net())
    with pytest.raises(ValueError, match="none of this connectome's weights"):
        conn.attach(torch.optim.SGD([nn.Parameter(torch.ones(2))], lr=0.1))
    with pytest.raises(TypeError, match="torch.optim.Optimizer"):
        conn.attach(object())


def test_bad_state_dicts_raise_and_change_nothing():
    model = _linear_net()
    conn = adaptive.Connectome(model)
    conn.set_masks({"0.weight": torch.eye(5, 6, dtype=torch.bool)})
    sd = conn.state_dict()
    snap = snapshot(conn)
    with pytest.raises(ValueError, match="no 'masks' entry"):
        conn.load_state_dict({"format": "x"})
    with pytest.raises(KeyError, match="no mask for"):
        conn.load_state_dict({**sd, "masks": {"0.weight": sd["masks"]["0.weight"]}})
    with pytest.raises(ValueError, match="ensemble 'kernel'"):
        conn.load_state_dict({**sd, "ensemble": "kernel"})
    bad = {**sd, "masks": {"0.weight": torch.zeros(5, 6, dtype=torch.bool), "2.weight": torch.zeros(5, 4, dtype=torch.bool)}}
    with pytest.raises(ValueError, match="'2.weight'.*shape"):
        conn.load_state_dict(bad)
    with pytest.raises(ValueError, match="original weight for '0.weight'"):
        conn.load_state_dict({**sd, "original": {"0.weight": torch.zeros(2, 2)}})
    assert_unchanged(conn, snap)


MALFORMED_STATE = [
    ("masks not a dict", lambda sd: {**sd, "masks": list(sd["masks"].values())}, r"'masks' must be a dict.*got list"),
    ("masks None", lambda sd: {**sd, "masks": None}, r"'masks' must be a dict.*got NoneType"),
    ("original not a dict", lambda sd: {**sd, "original": list(sd["original"].values())}, r"'original' must be a dict.*got list"),
    ("original not a tensor", lambda sd: {**sd, "original": {**sd["original"], "2.weight": [[0.0] * 5] * 4}},
     r"original weight for '2.weight' must be a torch.Tensor, got list"),
    ("ensembles not a dict", lambda sd: {**sd, "ensembles": "synapse"}, r"'ensembles' must be a dict.*got str"),
    ("ensemble not a string", lambda sd: {**sd, "ensemble": 3}, r"'ensemble' must be a granularity spec string.*got int"),
]


@pytest.mark.parametrize("case, make, words", MALFORMED_STATE, ids=[c[0] for c in MALFORMED_STATE])
def test_malformed_state_dict_entries_are_refused_clearly_and_change_nothing(case, make, words):
    # these crashed with AttributeError ('list' object has no attribute 'items' / 'shape') or TypeError
    # deep inside the load, naming neither the entry nor the fix
    model = _linear_net()
    conn = adaptive.Connectome(model, mode="mask_only")
    sd = conn.state_dict()
    conn.set_masks({"0.weight": torch.eye(5, 6, dtype=torch.bool)})
    snap, original = snapshot(conn), {n: o.clone() for n, o in conn.original.items()}
    with pytest.raises(TypeError, match=words + r".*Connectome.state_dict\(\)"):
        conn.load_state_dict(make(sd))
    assert_unchanged(conn, snap)
    assert all(torch.equal(o, original[n]) for n, o in conn.original.items())


def test_weight_written_between_steps_is_pruned_again_at_the_next_step():
    """The pre-step pass skips re-masking weights only while their version counters show that
    nothing wrote to them since they were last masked; any outside write is caught."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    conn = adaptive.Connectome(model)
    conn.set_masks({n: torch.rand(m.shape) < 0.5 for n, m in conn.masks.items()})
    conn.attach(opt)
    x, y = torch.randn(16, 6), torch.randint(0, 3, (16,))
    for step in range(6):
        if step == 3:
            with torch.no_grad():
                model[0].weight.fill_(0.5)  # an outside write (a re-init, a dense load...)
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        opt.zero_grad()
        for n, p in conn.params.items():
            assert torch.all(p[~conn.masks[n]] == 0), (step, n)


@pytest.mark.parametrize("policy, kw", [
    ("rigl", dict(density=0.3)),
    # threshold's adaptive boundaries are its state: a resume that dropped prune_boundary kept pruning
    # at the initial 0.05 and drifted from the uninterrupted run
    ("threshold", dict(density=None, estimator="magnitude", prune_boundary=0.05)),
], ids=["rigl", "threshold"])
@pytest.mark.parametrize("opt_name", ["sgd", "adam"])
@pytest.mark.parametrize("order", ["model,opt,conn,ctrl", "model,conn,ctrl,opt", "conn,ctrl,opt,model"])
def test_resume_through_state_dicts_is_exact_in_any_load_order(opt_name, order, policy, kw):
    """Invariant 5 through the Python API: the optimizer may be loaded before the connectome (the
    natural order, and Accelerate's). Loading it used to zero the moments wherever the fresh run's
    initial masks had no synapse, and the connectome's restore treated the saved masks as an edit."""
    import torch.nn.functional as F

    def build():
        torch.manual_seed(0)
        m = nn.Sequential(nn.Linear(20, 32), nn.ReLU(), nn.Linear(32, 5))
        opt = (torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9) if opt_name == "sgd"
               else torch.optim.Adam(m.parameters(), lr=1e-2))
        conn = adaptive.Connectome(m)
        ctrl = adaptive.Controller(conn, opt, policy=policy, update_every=5, end_step=30, seed=0, **kw)
        return m, opt, conn, ctrl

    def run(m, opt, a, b):
        for i in range(a, b):
            g = torch.Generator().manual_seed(i)
            x, y = torch.randn(16, 20, generator=g), torch.randint(0, 5, (16,), generator=g)
            F.cross_entropy(m(x), y).backward()
            opt.step()
            opt.zero_grad()

    m, opt, conn, ctrl = build()
    run(m, opt, 0, 40)
    want = copy.deepcopy(m.state_dict()), conn.mask_hash()
    m, opt, conn, ctrl = build()
    run(m, opt, 0, 17)
    ck = copy.deepcopy({"model": m.state_dict(), "opt": opt.state_dict(), "conn": conn.state_dict(), "ctrl": ctrl.state_dict()})
    boundaries = (getattr(ctrl.policy, "prune_boundary", None), getattr(ctrl.policy, "restore_boundary", None))
    m, opt, conn, ctrl = build()
    objs = {"model": m, "opt": opt, "conn": conn, "ctrl": ctrl}
    for what in order.split(","):
        objs[what].load_state_dict(ck[what])
    if policy == "threshold":
        assert boundaries[0] != 0.05  # the boundary adapted before the save, so the check below means something
        assert (ctrl.policy.prune_boundary, ctrl.policy.restore_boundary) == boundaries
    run(m, opt, 17, 40)
    assert conn.mask_hash() == want[1]
    assert all(torch.equal(v, m.state_dict()[k]) for k, v in want[0].items())


def test_a_regrown_synapse_starts_adagrad_at_its_own_groups_initial_accumulator_value():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
    conn = adaptive.Connectome(model)
    opt = torch.optim.Adagrad([{"params": [model[0].bias, model[2].bias]},  # 0.0 (the default) here
                               {"params": [model[0].weight, model[2].weight], "initial_accumulator_value": 0.7}],
                              lr=1e-2)
    conn.set_masks(random_masks(conn, 0.5, seed=1))
    conn.attach(opt)
    for s in range(3):
        opt.zero_grad()
        nn.functional.cross_entropy(model(torch.randn(4, 6)), torch.randint(0, 3, (4,))).backward()
        opt.step()
    old = {n: m.clone() for n, m in conn.masks.items()}
    conn.set_masks(random_masks(conn, 0.5, seed=2))
    for n, p in conn.params.items():
        grown = conn.masks[n] & ~old[n]
        assert grown.any()
        assert torch.equal(opt.state[p]["sum"][grown], torch.full((int(grown.sum()),), 0.7))
