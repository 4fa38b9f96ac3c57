"""Property-based checks of the connectome and controller invariants of shared/ARCHITECTURE.md on
random small scenarios: random models (MLP, grouped and transposed convs, tied weights, attention),
granularities, optimizers, and random sequences of mask edits, optimizer steps (clipping, bf16
autocast, a GradScaler), attach/detach and optimizer reloads.

Each runs the library's public API only.
1 every pruned weight is exactly +0.0 and the moments of a zero-preserving optimizer are at their
  fresh value there after every operation; a grown synapse starts at its grow_init value with fresh moments;
3 an all-ones connectome is the plain model, forward and backward, bit for bit;
5 a save and load of model, optimizer, connectome and controller at a random step gives the same
  later masks and weights as the uninterrupted run;
2 in mask_only mode no surviving weight changes by a bit, through any sequence of edits;
6 a bad edit, connectome state or Controller raises and leaves masks, weights, optimizer state and
  hooks bit-identical.

Deterministic (``derandomize=True``) and small; ``ADAPTIVE_PROPERTY_EXAMPLES=500`` explores further.
"""
import copy

import pytest
import torch
import torch.nn.functional as F
from hypothesis import example, given
from hypothesis import strategies as st
from torch import nn

import adaptive
from _property import prop

torch.set_num_threads(1)


# ------------------------------------------------------------------------------------------- models
class Tied(nn.Module):
    """Two Linear layers sharing one weight (the second reads the first's), and a head."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(6, 6)
        self.b = nn.Linear(6, 6)
        self.b.weight = self.a.weight
        self.head = nn.Linear(6, 4)

    def forward(self, x):
        return self.head(torch.relu(self.b(torch.relu(self.a(x)))))


class Attn(nn.Module):
    def __init__(self):
        super().__init__()
        self.inp = nn.Linear(6, 8)
        self.mha = nn.MultiheadAttention(8, 2, batch_first=True)
        self.head = nn.Linear(8, 4)

    def forward(self, x):  # x: [batch, 6] -> a sequence of 3 tokens
        t = self.inp(x).unsqueeze(1).repeat(1, 3, 1) * torch.arange(1.0, 4.0).view(1, 3, 1)
        return self.head(self.mha(t, t, t)[0].mean(1))


class Conv(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(1, 4, 3, padding=1)
        self.c2 = nn.Conv2d(4, 4, 3, padding=1, groups=2)
        self.up = nn.ConvTranspose2d(4, 2, 2, stride=2)
        self.c3 = nn.Conv1d(2, 4, 3, bias=False)
        self.head = nn.Linear(4, 4)

    def forward(self, x):  # x: [batch, 6] -> 1 x 2 x 3 images
        h = torch.relu(self.c2(torch.relu(self.c1(x.view(-1, 1, 2, 3)))))
        h = self.up(h).flatten(2)  # [b, 2, 24]
        return self.head(self.c3(h).mean(2))


def mlp():
    return nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 4))


MODELS = {"mlp": mlp, "tied": Tied, "attn": Attn, "conv": Conv}
SPECS = ["synapse", "neuron", "kernel", "block:2x2", "2:4"]

OPTIMIZERS = {
    "sgd": lambda ps: torch.optim.SGD(ps, lr=0.05),
    "sgd-momentum-wd": lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=0.9, weight_decay=5e-3),
    "sgd-nesterov-dampening": lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-2),
    "adam": lambda ps: torch.optim.Adam(ps, lr=1e-2, weight_decay=1e-3),
    "adam-amsgrad": lambda ps: torch.optim.Adam(ps, lr=1e-2, amsgrad=True),
    "adamw": lambda ps: torch.optim.AdamW(ps, lr=1e-2, weight_decay=0.1),
    "adamw-foreach-off": lambda ps: torch.optim.AdamW(ps, lr=1e-2, foreach=False),
    "rmsprop-centered": lambda ps: torch.optim.RMSprop(ps, lr=1e-3, momentum=0.5, centered=True, weight_decay=1e-3),
    "adagrad": lambda ps: torch.optim.Adagrad(ps, lr=1e-2, initial_accumulator_value=0.3),
    "nadam": lambda ps: torch.optim.NAdam(ps, lr=1e-2, weight_decay=1e-2, decoupled_weight_decay=True),
    "radam": lambda ps: torch.optim.RAdam(ps, lr=1e-2),
    # not zero-preserving: re-masked after every step
    "adamax": lambda ps: torch.optim.Adamax(ps, lr=1e-2),
    "rprop": lambda ps: torch.optim.Rprop(ps, lr=1e-2),
    "asgd": lambda ps: torch.optim.ASGD(ps, lr=1e-2),
}
# a regrown synapse's state starts as a fresh optimizer's: 0, but Adagrad's sum and Rprop's step size
FRESH = {"adagrad": {"sum": 0.3}, "rprop": {"step_size": 0.01}}
# Adamax's infinity norm is max(beta2 * u, |g| + eps), eps at a pruned position, not 0: its state is not checked
UNCHECKED_STATE = ("adamax",)


def build(model_name, spec, seed):
    torch.manual_seed(seed)
    model = MODELS[model_name]()
    conn = adaptive.Connectome(model, ensemble=spec)
    return model, conn


def data(seed, n=5):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 6, generator=g), torch.randint(0, 4, (n,), generator=g)


def random_ensemble_masks(conn, density, seed):
    """Random masks at ensemble level (n:m: a valid top-n selection of random scores)."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for n, m in conn.masks.items():
        gran = conn.granularity_of(n)
        if hasattr(gran, "density"):  # n:m: a constraint, built by select
            out[n] = gran.select(torch.rand(m.shape, generator=g))
            continue
        es = gran.ensemble_shape(m.shape)
        out[n] = torch.rand(es, generator=g) < density
    return out


# ------------------------------------------------------------------------------------------- checks
def bits(t):
    t = t.detach()
    return t.view({2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()])


def check_pruned(conn, opt, opt_name, where=""):
    """Invariant 1: pruned weights are +0.0 and a zero-preserving optimizer's moments are fresh there."""
    fresh = FRESH.get(opt_name, {})
    for n, p in conn.params.items():
        pruned = ~conn.masks[n]
        assert not bits(p)[pruned].any(), f"{where}: {n} has a pruned weight that is not +0.0: {p.detach()[pruned]}"
        if opt is None or opt_name in UNCHECKED_STATE:
            continue
        for key, v in (opt.state.get(p) or {}).items():
            if isinstance(v, torch.Tensor) and v.shape == p.shape and v.is_floating_point():
                want = fresh.get(key, 0.0)
                assert bool((v[pruned] == want).all()), f"{where}: {n}: state {key!r} is not {want} at a pruned position"


def state_copy(model, conn, opt):
    return (copy.deepcopy(model.state_dict()), {n: m.clone() for n, m in conn.masks.items()},
            copy.deepcopy(opt.state_dict()) if opt is not None else None)


def assert_same_state(a, b):
    (ma, ka, oa), (mb, kb, ob) = a, b
    for k in ma:
        assert torch.equal(bits(ma[k]), bits(mb[k])), f"weight {k} changed"
    for k in ka:
        assert torch.equal(ka[k], kb[k]), f"mask {k} changed"
    if oa is not None:
        sa, sb = oa["state"], ob["state"]
        assert sa.keys() == sb.keys()
        for i in sa:
            assert sa[i].keys() == sb[i].keys()
            for key in sa[i]:
                va, vb = sa[i][key], sb[i][key]
                if isinstance(va, torch.Tensor):
                    assert torch.equal(bits(va) if va.is_floating_point() else va, bits(vb) if vb.is_floating_point() else vb), (i, key)
                else:
                    assert va == vb, (i, key)


def laid_out(conn, n, e, layout):
    """Layer ``n``'s ensemble mask ``e`` expanded to a weight-shaped mask held in memory as ``layout``
    says: contiguous, with transposed strides, as an expanded view (stride 0 along a neuron's
    inputs) or channels_last (a 4-d weight)."""
    shape = conn.masks[n].shape
    gran = conn.granularity_of(n)
    m = e if tuple(e.shape) == tuple(shape) else gran.expand(e, shape)
    if layout == "transposed" and m.dim() >= 2:
        return m.transpose(0, 1).contiguous().transpose(0, 1)
    if layout == "expanded" and gran.spec == "neuron" and not conn.layers[n].transposed:
        return e.reshape(-1, *([1] * (len(shape) - 1))).expand(shape)
    if layout == "channels_last" and m.dim() == 4:
        return m.contiguous(memory_format=torch.channels_last)
    return m.contiguous()


# ------------------------------------------------------------------------------ invariant 1 (edits)
ops = st.lists(st.one_of(
    st.tuples(st.just("step"), st.sampled_from(["plain", "clip-norm", "clip-value", "bf16", "scaler", "twice"])),
    st.tuples(st.just("edit"), st.floats(0.0, 1.0), st.sampled_from(["zero", "original", "callable"]),
              st.sampled_from(["ensemble", "contiguous", "transposed", "expanded", "channels_last"])),
    st.tuples(st.just("inplace"), st.integers(0, 2**16), st.booleans()),
    st.tuples(st.just("reload"), st.booleans()),
    st.tuples(st.just("detach"), st.booleans()),
), min_size=1, max_size=10)


@prop(30)
@given(model_name=st.sampled_from(sorted(MODELS)), spec=st.sampled_from(SPECS), opt_name=st.sampled_from(sorted(OPTIMIZERS)),
       seed=st.integers(0, 2**16), pre_steps=st.integers(0, 2), script=ops)
# always run: pruned weights moved by training while detached, then grown (at 0.0); a synapse switched on
# in place and trained, then kept by an edit (its trained weight kept)
@example(model_name="mlp", spec="synapse", opt_name="sgd", seed=0, pre_steps=0,
         script=[("detach", True), ("step", "plain"), ("edit", 1.0, "zero", "ensemble")])
@example(model_name="mlp", spec="synapse", opt_name="sgd", seed=0, pre_steps=0,
         script=[("inplace", 5, True), ("step", "plain"), ("step", "plain"), ("edit", 1.0, "zero", "contiguous")])
def test_random_edits_and_steps_keep_pruned_weights_and_moments_at_zero(model_name, spec, opt_name, seed, pre_steps, script):
    model, conn = build(model_name, spec, seed)
    opt = OPTIMIZERS[opt_name](model.parameters())
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 8)

    def step(how, i):
        x, y = data(seed * 31 + i)
        opt.zero_grad(set_to_none=i % 2 == 0)
        if how == "scaler":
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = F.cross_entropy(model(x), y)
            scaler.scale(loss).backward()
            scaler.unscale_(opt)
            nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            scaler.step(opt)
            scaler.update()
            return
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=how == "bf16"):
            loss = F.cross_entropy(model(x), y)
        loss.backward()
        if how == "twice":  # gradients accumulated over two backwards
            F.cross_entropy(model(x * 2), y).backward()
        if how == "clip-norm":
            nn.utils.clip_grad_norm_(model.parameters(), 0.1)
        if how == "clip-value":
            nn.utils.clip_grad_value_(model.parameters(), 0.01)
        opt.step()

    for i in range(pre_steps):  # dense steps first: the attach must clear the moments it finds
        step("plain", 1000 + i)
    conn.set_masks({n: m.contiguous() for n, m in
                    ((n, conn.granularity_of(n).expand(e, conn.masks[n].shape)) for n, e in random_ensemble_masks(conn, 0.6, seed).items())})
    conn.keep_original()
    conn.attach(opt)
    check_pruned(conn, opt, opt_name, "attach")
    attached = True
    for i, op in enumerate(script):
        kind = op[0]
        if kind == "step":
            step(op[1], i)
            if attached:
                check_pruned(conn, opt, opt_name, f"step {op[1]}")
        elif kind == "edit":
            _, density, how, layout = op
            old = {n: m.clone() for n, m in conn.masks.items()}
            before = {n: p.detach().clone() for n, p in conn.params.items()}
            init = {"zero": "zero", "original": "original",
                    "callable": lambda name, grown: torch.full(grown.shape, 0.25)}[how]
            ens = random_ensemble_masks(conn, density, seed + i)
            if layout == "ensemble":
                conn.set_ensemble_masks(ens, grow_init=init)
            else:
                conn.set_masks({n: laid_out(conn, n, e, layout) for n, e in ens.items()}, grow_init=init)
            for n, p in conn.params.items():
                new = conn.masks[n]
                grown, kept = new & ~old[n], new & old[n]
                w = p.detach()
                if how == "zero":
                    assert not bits(w)[grown].any(), f"{n}: a synapse grown with grow_init='zero' is not 0.0"
                elif how == "original":
                    assert torch.equal(w[grown], conn.original[n][grown])
                else:
                    assert bool((w[grown] == 0.25).all())
                assert torch.equal(bits(w)[kept], bits(before[n])[kept]), f"{n}: an edit changed a kept weight"
                if attached and opt_name not in UNCHECKED_STATE:
                    changed = new ^ old[n]
                    for key, v in (opt.state.get(p) or {}).items():
                        if isinstance(v, torch.Tensor) and v.shape == p.shape and v.is_floating_point():
                            want = FRESH.get(opt_name, {}).get(key, 0.0)
                            assert bool((v[changed] == want).all()), f"{n}: {key} not reset at a changed position"
            if attached:  # (detached, a layer the edit leaves as it was keeps what plain training did to it)
                check_pruned(conn, opt, opt_name, "edit")
        elif kind == "inplace":  # a mask written in place (a synapse switched off, or on), then conn.apply() as documented
            n = sorted(conn.masks)[op[1] % len(conn.masks)]
            if conn.granularity_of(n).spec == "synapse":
                m = conn.masks[n]
                if op[2]:  # one of the pruned synapses switched on
                    off = (~m).nonzero()
                    if len(off):
                        m[tuple(off[op[1] % len(off)].tolist())] = True
                else:
                    m[tuple(int(j) for j in torch.unravel_index(torch.tensor(op[1] % m.numel()), m.shape))] = False
                conn.apply()
                check_pruned(conn, opt if attached else None, opt_name, "inplace")
        elif kind == "reload":  # an optimizer state saved and loaded (a resume of the optimizer alone)
            sd = copy.deepcopy(opt.state_dict())
            if op[1]:
                opt.state.clear()
            opt.load_state_dict(sd)
        elif kind == "detach":
            if attached and op[1]:
                conn.detach()
                attached = False
            elif not attached:
                conn.attach(opt)
                attached = True
                check_pruned(conn, opt, opt_name, "re-attach")
    if not attached:
        conn.attach(opt)
    step("plain", 999)
    check_pruned(conn, opt, opt_name, "final step")
    assert all(torch.isfinite(p).all() for p in model.parameters())


# ------------------------------------------------------------------------------ invariant 3 (all ones)
@prop(40)
@given(model_name=st.sampled_from(sorted(MODELS)), spec=st.sampled_from(SPECS), opt_name=st.sampled_from(sorted(OPTIMIZERS)),
       seed=st.integers(0, 2**16), steps=st.integers(1, 3), edit_back=st.booleans())
def test_an_all_ones_connectome_is_the_plain_model_bit_for_bit(model_name, spec, opt_name, seed, steps, edit_back):
    model, conn = build(model_name, spec, seed)
    ref = copy.deepcopy(model)
    opt, ref_opt = OPTIMIZERS[opt_name](model.parameters()), OPTIMIZERS[opt_name](ref.parameters())
    if edit_back:  # an edit to all ones, without pruning anything
        conn.set_masks({n: torch.ones_like(m) for n, m in conn.masks.items()})
    conn.attach(opt)
    for s in range(steps):
        x, y = data(seed + s)
        out, ref_out = model(x), ref(x)
        assert torch.equal(bits(out), bits(ref_out))
        F.cross_entropy(out, y).backward()
        F.cross_entropy(ref_out, y).backward()
        for (n, p), q in zip(model.named_parameters(), ref.parameters()):
            assert torch.equal(bits(p.grad), bits(q.grad)), n
        opt.step()
        ref_opt.step()
        opt.zero_grad()
        ref_opt.zero_grad()
        for (n, p), q in zip(model.named_parameters(), ref.parameters()):
            assert torch.equal(bits(p), bits(q)), n


# ------------------------------------------------------------------------------ invariant 5 (resume)
POLICIES = {
    "set": dict(density=0.5),
    "rigl": dict(density=0.5),
    "utility": dict(density=0.5, estimator="taylor"),
    "balanced": dict(density=0.5, estimator="obd"),
    "gmp": dict(density=0.3),
    "magnitude": dict(density=0.4),
    "threshold": dict(density=None, estimator="magnitude", prune_boundary=0.05),
}


@prop(12)
@given(model_name=st.sampled_from(["mlp", "conv", "tied", "attn"]), spec=st.sampled_from(["synapse", "neuron", "block:2x2"]),
       policy=st.sampled_from(sorted(POLICIES)), budget=st.sampled_from(["erk", "uniform", "global"]),
       opt_name=st.sampled_from(["sgd-momentum-wd", "adam", "adagrad", "rmsprop-centered"]),
       seed=st.integers(0, 2**10), cut=st.integers(1, 17), total=st.integers(18, 26),
       order=st.permutations(["model", "opt", "conn", "ctrl"]), grow_init=st.sampled_from([None, "random", "original"]))
def test_save_and_load_at_a_random_step_continues_as_the_uninterrupted_run(model_name, spec, policy, budget, opt_name,
                                                                           seed, cut, total, order, grow_init):
    kw = dict(POLICIES[policy])
    if grow_init is not None and policy not in ("magnitude", "gmp"):
        kw["grow_init"] = grow_init
    if policy == "threshold" and budget != "global":
        budget = "global"

    def fresh():
        model, conn = build(model_name, spec, seed)
        opt = OPTIMIZERS[opt_name](model.parameters())
        ctrl = adaptive.Controller(conn, opt, policy=policy, budget=budget, update_every=3, end_step=20, seed=seed, **kw)
        return model, opt, conn, ctrl

    def run(model, opt, a, b):
        for i in range(a, b):
            x, y = data(seed * 7 + i)
            F.cross_entropy(model(x), y).backward()
            opt.step()
            opt.zero_grad()

    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model, opt, conn, ctrl = fresh()
        run(model, opt, 0, total)
        want = copy.deepcopy(model.state_dict()), {n: m.clone() for n, m in conn.masks.items()}, len(ctrl.events)
        check_pruned(conn, opt, opt_name, "uninterrupted")
        model, opt, conn, ctrl = fresh()
        run(model, opt, 0, cut)
        ck = copy.deepcopy({"model": model.state_dict(), "opt": opt.state_dict(), "conn": conn.state_dict(),
                            "ctrl": ctrl.state_dict()})
        del model, opt, conn, ctrl
        model, opt, conn, ctrl = fresh()
        objs = {"model": model, "opt": opt, "conn": conn, "ctrl": ctrl}
        for k in order:
            objs[k].load_state_dict(ck[k])
        run(model, opt, cut, total)
    for n, m in want[1].items():
        assert torch.equal(conn.masks[n], m), f"mask {n} differs after the resume"
    for k, v in want[0].items():
        assert torch.equal(bits(v), bits(model.state_dict()[k])), f"{k} differs after the resume"
    check_pruned(conn, opt, opt_name, "resumed")


# ------------------------------------------------------------------------------ invariant 6 (refusals)
def _bad_masks(conn, kind, seed):
    """Masks for every layer, one of them (or the call's grow_init) bad in the way ``kind`` says."""
    names = sorted(conn.masks)
    n = names[seed % len(names)]
    m = conn.masks[n]
    good = {k: v.clone() for k, v in random_ensemble_masks(conn, 0.5, seed).items()}
    good = {k: conn.granularity_of(k).expand(v, conn.masks[k].shape).contiguous() for k, v in good.items()}
    if kind == "shape":
        good[n] = torch.ones(m.shape[:-1] + (m.shape[-1] + 1,), dtype=torch.bool)
    elif kind == "dtype":
        good[n] = good[n].float()
    elif kind == "unknown":
        good["nope.weight"] = torch.ones(3, dtype=torch.bool)
    elif kind == "not-a-tensor":
        good[n] = good[n].tolist()
    elif kind == "meta":
        good[n] = torch.ones(m.shape, dtype=torch.bool, device="meta")
    elif kind == "sparse":
        good[n] = good[n].to_sparse()
    elif kind == "nan-float":
        good[n] = torch.full(m.shape, float("nan"))
    elif kind == "grow-init":
        return good, dict(grow_init="bogus")
    elif kind == "grow-init-shape":
        return good, dict(grow_init=lambda name, grown: torch.zeros(3))
    elif kind == "grow-init-raises":
        def boom(name, grown):
            raise RuntimeError("boom")
        return good, dict(grow_init=boom)
    elif kind == "scalar":
        good[n] = torch.tensor(True)
    return good, {}


@prop(30)
@given(model_name=st.sampled_from(sorted(MODELS)), spec=st.sampled_from(SPECS), opt_name=st.sampled_from(sorted(OPTIMIZERS)),
       seed=st.integers(0, 2**16),
       kind=st.sampled_from(["shape", "dtype", "unknown", "not-a-tensor", "meta", "sparse", "nan-float", "grow-init",
                             "grow-init-shape", "grow-init-raises", "scalar"]),
       ensemble_level=st.booleans())
def test_a_refused_edit_changes_nothing(model_name, spec, opt_name, seed, kind, ensemble_level):
    model, conn = build(model_name, spec, seed)
    opt = OPTIMIZERS[opt_name](model.parameters())
    conn.set_ensemble_masks(random_ensemble_masks(conn, 0.6, seed + 1))
    conn.attach(opt)
    for i in range(2):
        x, y = data(seed + i)
        F.cross_entropy(model(x), y).backward()
        opt.step()
        opt.zero_grad()
    masks, extra = _bad_masks(conn, kind, seed)
    if ensemble_level:  # the same fault at ensemble level: pool the good masks back
        pooled = {}
        for k, v in masks.items():
            if k in conn.masks and isinstance(v, torch.Tensor) and v.dtype == torch.bool and tuple(v.shape) == tuple(conn.masks[k].shape) and v.layout == torch.strided and not v.is_meta:
                pooled[k] = conn.granularity_of(k).pool(v, "max") if not hasattr(conn.granularity_of(k), "density") else v
            else:
                pooled[k] = v
        masks = pooled
    before = state_copy(model, conn, opt)
    fn = conn.set_ensemble_masks if ensemble_level else conn.set_masks
    try:
        fn(masks, **extra)
    except (TypeError, ValueError, KeyError, RuntimeError) as e:
        assert str(e), "an empty error message"
    else:
        assert kind in ("grow-init-shape", "grow-init-raises"), f"{kind} was accepted"
        return  # (these raise only where something grows, and nothing did)
    assert_same_state(before, state_copy(model, conn, opt))
    check_pruned(conn, opt, opt_name, "after refusal")


# ------------------------------------------------------------------ invariant 1 under the controller
@prop(25)
@given(model_name=st.sampled_from(sorted(MODELS)), spec=st.sampled_from(["synapse", "neuron", "kernel", "block:2x2"]),
       policy=st.sampled_from(sorted(POLICIES)), budget=st.sampled_from(["erk", "uniform", "global"]),
       opt_name=st.sampled_from(sorted(OPTIMIZERS)), seed=st.integers(0, 2**10),
       how=st.sampled_from(["plain", "clip-norm", "bf16", "scaler"]), grow_init=st.sampled_from([None, "random", "original"]),
       dtype=st.sampled_from([torch.float32, torch.float64]))
def test_a_controller_keeps_pruned_weights_and_moments_at_zero_through_its_updates(
        model_name, spec, policy, budget, opt_name, seed, how, grow_init, dtype):
    import warnings
    kw = dict(POLICIES[policy])
    if POLICIES[policy].get("density") is None or policy in ("threshold",):
        budget = "global"
    if policy in ("magnitude", "gmp") or grow_init is None:
        grow = {}
    else:
        grow = dict(grow_init=grow_init)
    if how in ("bf16", "scaler") and dtype == torch.float64:
        dtype = torch.float32
    model, conn = build(model_name, spec, seed)
    model.to(dtype)
    opt = OPTIMIZERS[opt_name](model.parameters())
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 6)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ctrl = adaptive.Controller(conn, opt, policy=policy, budget=budget, update_every=2, end_step=12, seed=seed,
                                   **grow, **kw)
        check_pruned(conn, opt, opt_name, "construction")
        for i in range(14):
            x, y = data(seed + i)
            x = x.to(dtype)
            old = {n: m.clone() for n, m in conn.masks.items()}
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=how in ("bf16", "scaler")):
                loss = F.cross_entropy(model(x), y)
            if how == "scaler":
                scaler.scale(loss).backward()
                scaler.step(opt)
                scaler.update()
            else:
                loss.backward()
                if how == "clip-norm":
                    nn.utils.clip_grad_norm_(model.parameters(), 0.5)
                opt.step()
            opt.zero_grad()
            check_pruned(conn, opt, opt_name, f"step {i}")
            if opt_name in UNCHECKED_STATE:
                continue
            for n, p in conn.params.items():  # grown at this step: fresh moments (the step ran before the edit)
                grown = conn.masks[n] & ~old[n]
                for key, v in (opt.state.get(p) or {}).items():
                    if isinstance(v, torch.Tensor) and v.shape == p.shape and v.is_floating_point():
                        want = FRESH.get(opt_name, {}).get(key, 0.0)
                        assert bool((v[grown] == want).all()), f"step {i}: {n}: {key} not fresh where grown"
                if ctrl.grow_init == "zero" and conn.mode == "train":
                    assert not bits(p)[grown].any(), f"step {i}: {n}: a grown synapse does not start at 0.0"
    assert all(torch.isfinite(p).all() for p in model.parameters())


# ------------------------------------------------------------------------------ invariant 2 (mask_only)
@prop(30)
@given(model_name=st.sampled_from(sorted(MODELS)), spec=st.sampled_from(SPECS), seed=st.integers(0, 2**16),
       densities=st.lists(st.floats(0.0, 1.0), min_size=1, max_size=5), with_opt=st.sampled_from([None, "sgd-momentum-wd", "adam"]))
def test_mask_only_edits_never_change_a_surviving_weight(model_name, spec, seed, densities, with_opt):
    torch.manual_seed(seed)
    model = MODELS[model_name]()
    orig = {n: p.detach().clone() for n, p in model.named_parameters()}
    conn = adaptive.Connectome(model, ensemble=spec, mode="mask_only")
    opt = None
    if with_opt:
        # only the non-prunable parameters learn: the prunable weights are frozen
        held = {id(p) for p in conn.params.values()}
        opt = OPTIMIZERS[with_opt]([p for p in model.parameters() if id(p) not in held])
    for i, d in enumerate(densities):
        conn.set_ensemble_masks(random_ensemble_masks(conn, d, seed + i))
        x, y = data(seed + i)
        F.cross_entropy(model(x), y).backward()
        if opt is not None:
            opt.step()
        model.zero_grad()
        for n, p in conn.params.items():
            m = conn.masks[n]
            assert torch.equal(bits(p)[m], bits(orig[n])[m]), f"{n}: a surviving weight changed"
            assert not bits(p)[~m].any()
    conn.set_masks({n: torch.ones_like(m) for n, m in conn.masks.items()})
    for n, p in conn.params.items():
        assert torch.equal(bits(p), bits(orig[n])), f"{n}: not the original once every synapse is back"


# ------------------------------------------------------------------------ invariant 6 (bad state dicts)
def _corrupt(sd, kind, name):
    sd = copy.deepcopy(sd)
    if kind == "mask-shape":
        sd["masks"][name] = sd["masks"][name].flatten()[:-1]
    elif kind == "mask-dtype":
        sd["masks"][name] = sd["masks"][name].float()
    elif kind == "mask-missing":
        del sd["masks"][name]
    elif kind == "mask-extra":
        sd["masks"]["nope.weight"] = torch.ones(3, dtype=torch.bool)
    elif kind == "mode":
        sd["mode"] = "mask_only"
    elif kind == "ensemble":
        sd["ensemble"] = "block:3x3"
        sd.pop("ensembles", None)
    elif kind == "original-shape":
        sd["original"] = {n: torch.zeros(2) for n in sd["masks"]}
    elif kind == "not-a-dict":
        return [sd]
    elif kind == "mask-none":
        sd["masks"][name] = None
    return sd


@prop(25)
@given(model_name=st.sampled_from(sorted(MODELS)), spec=st.sampled_from(["synapse", "neuron", "2:4"]),
       seed=st.integers(0, 2**16), which=st.integers(0, 10),
       kind=st.sampled_from(["mask-shape", "mask-dtype", "mask-missing", "mask-extra", "mode", "ensemble",
                             "original-shape", "not-a-dict", "mask-none"]))
def test_a_refused_connectome_state_changes_nothing(model_name, spec, seed, which, kind):
    model, conn = build(model_name, spec, seed)
    opt = OPTIMIZERS["adam"](model.parameters())
    conn.set_ensemble_masks(random_ensemble_masks(conn, 0.5, seed))
    conn.attach(opt)
    x, y = data(seed)
    F.cross_entropy(model(x), y).backward()
    opt.step()
    opt.zero_grad()
    sd = conn.state_dict()
    conn.set_ensemble_masks(random_ensemble_masks(conn, 0.5, seed + 1))  # the state to load differs from the one held
    names = sorted(conn.masks)
    bad = _corrupt(sd, kind, names[which % len(names)])
    before = state_copy(model, conn, opt)
    with pytest.raises((ValueError, KeyError, TypeError)) as e:
        conn.load_state_dict(bad)
    assert len(str(e.value)) > 20
    assert_same_state(before, state_copy(model, conn, opt))
    check_pruned(conn, opt, "adam", "after refusal")


# ------------------------------------------------------------------------ invariant 6 (bad controllers)
BAD_CONTROLLERS = [
    dict(density=0.0), dict(density=1.5), dict(density="half"), dict(update_every=0), dict(end_step=-1),
    dict(start_step=5, end_step=3), dict(edit_fraction=2.0), dict(min_density=-0.1), dict(init="bogus"),
    dict(grow_init="bogus"), dict(protect=["nope*"]), dict(budget="bogus"), dict(policy="bogus"),
    dict(policy="set", estimator="obd"), dict(window=0), dict(seed=0.5), dict(zero_cost_order="bogus"),
    dict(line_search_tolerance=-1.0), dict(holdout_loss=3), dict(bogus_option=1), dict(estimator="bogus"),
    dict(policy="threshold", budget="uniform", density=None, estimator="magnitude"),
    dict(policy="magnitude", density=0.5, min_density=0.9, budget="uniform", protect=["*"]),
]


@prop(25)
@given(model_name=st.sampled_from(sorted(MODELS)), spec=st.sampled_from(["synapse", "neuron", "kernel"]),
       policy=st.sampled_from(["magnitude", "rigl", "set", "gmp"]), seed=st.integers(0, 2**10),
       bad=st.sampled_from(range(len(BAD_CONTROLLERS))), pre_edit=st.booleans())
def test_a_refused_controller_leaves_the_connectome_and_optimizer_as_they_were(model_name, spec, policy, seed, bad, pre_edit):
    model, conn = build(model_name, spec, seed)
    opt = OPTIMIZERS["sgd-momentum-wd"](model.parameters())
    if pre_edit:
        conn.set_ensemble_masks(random_ensemble_masks(conn, 0.7, seed))
    conn.attach(opt)
    x, y = data(seed)
    F.cross_entropy(model(x), y).backward()
    opt.step()
    kw = dict(policy=policy, density=0.5, update_every=2, end_step=10)
    kw.update(BAD_CONTROLLERS[bad])
    before = state_copy(model, conn, opt)
    hooks = (len(opt._optimizer_step_pre_hooks), len(opt._optimizer_step_post_hooks), len(conn._observers),
             len(conn._edit_listeners), len(conn._controllers), bool(conn.original))
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    with pytest.raises((ValueError, TypeError, KeyError)) as e:
        adaptive.Controller(conn, opt, **kw)
    assert len(str(e.value)) > 20
    assert_same_state(before, state_copy(model, conn, opt))
    assert hooks == (len(opt._optimizer_step_pre_hooks), len(opt._optimizer_step_post_hooks), len(conn._observers),
                     len(conn._edit_listeners), len(conn._controllers), bool(conn.original))
    for n, p in model.named_parameters():
        assert torch.equal(p.grad, grads[n]), f"{n}: the gradient changed"
