"""Invariant 1 (pruned weights exactly 0.0 after every step), invariant 3 (an all-ones connectome is
the plain model) and the reset of optimizer state at regrown synapses, across torch.optim: every
optimizer with its variants (foreach on and off, fused where the CPU has it, maximize, weight decay,
several parameter groups of other learning rates, a group added after attach, an LR scheduler),
trained with dynamic sparse training (a controller pruning and regrowing every other step), and
resumed from its state_dicts. Tiny Linear nets and a few steps each."""
import copy
import io

import pytest
import torch
from torch import nn

import adaptive
from adaptive.optim_state import unwrap_optimizer

torch.set_num_threads(1)

O = torch.optim
# name -> (class, keyword arguments); every group gets its own lr on top (see groups())
OPTIMIZERS = {
    "sgd": (O.SGD, {}),
    "sgd-momentum-dampening-wd": (O.SGD, dict(momentum=0.9, dampening=0.3, weight_decay=1e-2)),
    "sgd-nesterov-wd": (O.SGD, dict(momentum=0.9, nesterov=True, weight_decay=1e-2)),
    "adam": (O.Adam, dict(weight_decay=1e-2)),
    "adam-amsgrad": (O.Adam, dict(amsgrad=True)),
    "adamw": (O.AdamW, dict(weight_decay=0.1)),
    "adamw-amsgrad": (O.AdamW, dict(weight_decay=0.1, amsgrad=True)),
    "adamax": (O.Adamax, dict(weight_decay=1e-2)),
    "nadam": (O.NAdam, dict(weight_decay=1e-2)),
    "nadam-decoupled": (O.NAdam, dict(weight_decay=1e-2, decoupled_weight_decay=True)),
    "radam": (O.RAdam, dict(weight_decay=1e-2)),
    "radam-decoupled": (O.RAdam, dict(weight_decay=1e-2, decoupled_weight_decay=True)),
    "rmsprop": (O.RMSprop, dict(weight_decay=1e-2)),
    "rmsprop-centered-momentum": (O.RMSprop, dict(centered=True, momentum=0.5, weight_decay=1e-2)),
    "adagrad": (O.Adagrad, dict(weight_decay=1e-2, lr_decay=1e-3, initial_accumulator_value=0.2)),
    "adadelta": (O.Adadelta, dict(weight_decay=1e-2)),
    "rprop": (O.Rprop, {}),
    "asgd": (O.ASGD, dict(weight_decay=1e-2, t0=2)),
}
LR = {"sgd": 0.1, "adadelta": 1.0, "rprop": 0.01, "asgd": 0.1}  # else 0.01
FUSED = {O.SGD, O.Adam, O.AdamW, O.Adagrad}  # fused=True runs on a CPU for these (torch >= 2.4)
MAXIMIZE = {O.SGD, O.Adam, O.AdamW, O.Adamax, O.NAdam, O.RAdam, O.RMSprop, O.Adagrad, O.Adadelta, O.Rprop, O.ASGD}
# what a fresh optimizer's per-synapse state starts at, where not 0: (key, the group setting it is)
FRESH = {(O.Adagrad, "sum"): "initial_accumulator_value", (O.Rprop, "step_size"): "lr"}


def variants():
    """foreach=True for every optimizer; the for-loop implementation runs in the "maximize" variant
    (foreach left at None: on a CPU, torch picks the for-loop one). No for-loop twin of "foreach": our
    code never reads the foreach setting, and both implementations keep the same state keys, shapes,
    dtypes and devices for every optimizer here (checked against torch 2.14), so the pair ran one path twice."""
    out = []
    for name, (cls, kw) in OPTIMIZERS.items():
        out.append((name, "foreach"))
        if cls in FUSED and not kw.get("nesterov") and not kw.get("dampening"):
            out.append((name, "fused"))
        if cls in MAXIMIZE:
            out.append((name, "maximize"))
    return out


VARIANTS = variants()
IDS = [f"{n}-{v}" for n, v in VARIANTS]


def make_opt(name, variant, groups):
    cls, kw = OPTIMIZERS[name]
    kw = dict(kw)
    if variant == "foreach":
        kw["foreach"] = True
    elif variant == "fused":
        kw["fused"] = True
    elif variant == "maximize":
        kw["maximize"] = True
    return cls(groups, lr=LR.get(name, 0.01), **kw)


def net(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 4))


def groups(model, name):
    """Three groups of other learning rates: the first layer, the second, the head."""
    lr = LR.get(name, 0.01)
    return [{"params": list(model[0].parameters())},
            {"params": list(model[2].parameters()), "lr": lr / 2},
            {"params": list(model[4].parameters()), "lr": lr / 4}]


def data(step, n=6):
    g = torch.Generator().manual_seed(1000 + step)
    return torch.randn(n, 6, generator=g), torch.randint(0, 4, (n,), generator=g)


def train_step(model, opt, step, sched=None):
    x, y = data(step)
    if isinstance(unwrap_optimizer(opt), O.LBFGS):
        def closure():
            opt.zero_grad(set_to_none=True)
            loss = nn.functional.cross_entropy(model(x), y)
            loss.backward()
            return loss
        opt.step(closure)
    else:
        opt.zero_grad(set_to_none=True)
        loss = nn.functional.cross_entropy(model(x), y)
        if getattr(opt, "defaults", {}).get("maximize"):
            loss = -loss
        loss.backward()
        opt.step()
    if sched is not None:
        sched.step()


def fresh_value(opt, param, key):
    for (cls, k), setting in FRESH.items():
        if type(opt) is cls and key == k:
            g = next(g for g in opt.param_groups if any(p is param for p in g["params"]))
            return float(g[setting])
    return 0.0


def assert_pruned_zero(conn, where=""):
    for n, p in conn.params.items():
        w = p.detach()[~conn.masks[n]]
        assert w.numel() and bool((w.view(torch.int32) == 0).all()), f"{where}{n}: a pruned weight is not +0.0"


def state_checker(conn, opt, seen):
    """An edit listener: every parameter-shaped state entry at a changed (pruned or regrown) position holds
    a fresh optimizer's starting value, for every state key the optimizer keeps."""
    opt = unwrap_optimizer(opt)

    def check(changed):
        for n, where in changed.items():
            p = conn.params[n]
            grown = where & conn.masks[n]
            seen["grown"] += int(grown.sum())
            for key, v in opt.state.get(p, {}).items():
                if isinstance(v, torch.Tensor) and v.shape == p.shape:
                    want = fresh_value(opt, p, key)
                    got = v.detach()[where]
                    assert bool((got == want).all()), f"{n}: state {key!r} at an edited position is stale ({got[got != want][:4]})"
                    seen["keys"].add(key)
    return check


def dst(model, opt, conn_kw=None):
    conn = adaptive.Connectome(model, **(conn_kw or {}))
    ctrl = adaptive.Controller(conn, opt, policy="set", density=0.5, budget="uniform", update_every=2,
                               edit_fraction=0.3, end_step=12, seed=0)
    return conn, ctrl


# ------------------------------------------------------------------------- invariant 1 and state resets
@pytest.mark.parametrize("name, variant", VARIANTS, ids=IDS)
def test_dynamic_sparse_training_keeps_pruned_weights_zero_and_regrown_state_fresh(name, variant):
    model = net()
    opt = make_opt(name, variant, groups(model, name))
    for s in range(2):  # dense steps first: the attach must clear what the optimizer holds
        train_step(model, opt, s)
    conn, ctrl = dst(model, opt)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=3, gamma=0.5)
    seen = {"grown": 0, "keys": set()}
    conn.add_edit_listener(state_checker(conn, opt, seen))
    assert_pruned_zero(conn, "after attach: ")
    before = {n: p.detach().clone() for n, p in conn.params.items()}
    for s in range(2, 12):
        train_step(model, opt, s, sched)
        assert_pruned_zero(conn, f"step {s}: ")
    assert len(ctrl.events) >= 3 and seen["grown"] > 0, "no synapse was regrown: the test checks nothing"
    assert all(torch.isfinite(p).all() for p in model.parameters())
    moved = [n for n, p in conn.params.items() if not torch.equal(p.detach(), before[n])]
    assert moved == list(conn.params), "a layer never trained"


def _steps_a_group_added_later(name):
    """Whether torch's own optimizer (no connectome) can step a group added after construction: Adagrad made
    its state only in its constructor in torch 2.11 (a KeyError at the step; lazily made in 2.14)."""
    probe, extra = torch.nn.Parameter(torch.ones(2)), torch.nn.Parameter(torch.ones(2))
    cls, kw = OPTIMIZERS[name]
    opt = cls([probe], **kw)
    opt.add_param_group({"params": [extra]})
    (probe.sum() + extra.sum()).backward()
    try:
        opt.step()
    except KeyError:
        return False
    return True


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_a_param_group_added_after_attach_is_masked_and_reset(name):
    if not _steps_a_group_added_later(name):
        pytest.skip(f"torch {torch.__version__}'s {name} cannot step a group added after construction, "
                    "with or without a connectome (its state is made in its constructor)")
    model = net()
    gs = groups(model, name)
    opt = make_opt(name, "foreach", gs[:2])
    conn, ctrl = dst(model, opt)
    seen = {"grown": 0, "keys": set()}
    conn.add_edit_listener(state_checker(conn, opt, seen))
    train_step(model, opt, 0)
    opt.add_param_group(gs[2])
    for s in range(1, 10):
        train_step(model, opt, s)
        assert_pruned_zero(conn, f"step {s}: ")
    head = conn.params["4.weight"]
    assert not torch.equal(head.detach(), net().state_dict()["4.weight"])  # the added group trained


# ------------------------------------------------------------------------- invariant 3 through training
@pytest.mark.parametrize("name, variant", VARIANTS, ids=IDS)
def test_an_all_ones_connectome_trains_bit_identically_to_the_plain_model(name, variant):
    model, ref = net(), net()
    opt = make_opt(name, variant, groups(model, name))
    ref_opt = make_opt(name, variant, groups(ref, name))
    conn = adaptive.Connectome(model)
    conn.attach(opt)
    scheds = [torch.optim.lr_scheduler.StepLR(o, step_size=2, gamma=0.5) for o in (opt, ref_opt)]
    for s in range(5):
        train_step(model, opt, s, scheds[0])
        train_step(ref, ref_opt, s, scheds[1])
        for (n, p), q in zip(model.named_parameters(), ref.parameters()):
            assert torch.equal(p.detach().view(torch.int32), q.detach().view(torch.int32)), f"step {s}: {n}"


# ------------------------------------------------------------------------- resume through state_dicts
def _roundtrip(obj):
    buf = io.BytesIO()
    torch.save(obj, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=False)


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_save_and_resume_mid_dst_continues_as_the_uninterrupted_run(name):
    def build():
        model = net()
        opt = make_opt(name, "foreach", groups(model, name))
        conn, ctrl = dst(model, opt)
        return model, opt, conn, ctrl

    model, opt, conn, ctrl = build()
    for s in range(5):
        train_step(model, opt, s)
    ck = _roundtrip({"model": model.state_dict(), "opt": opt.state_dict(), "conn": conn.state_dict(), "ctrl": ctrl.state_dict()})
    for s in range(5, 11):
        train_step(model, opt, s)
    want = copy.deepcopy(model.state_dict()), conn.mask_hash()

    model, opt, conn, ctrl = build()
    for key, obj in (("model", model), ("opt", opt), ("conn", conn), ("ctrl", ctrl)):
        obj.load_state_dict(ck[key])
    for s in range(5, 11):
        train_step(model, opt, s)
        assert_pruned_zero(conn, f"resumed step {s}: ")
    assert conn.mask_hash() == want[1]
    for k, v in want[0].items():
        assert torch.equal(v, model.state_dict()[k]), k


# ------------------------------------------------------------------------- the optimizers of their own kind
# L-BFGS keeps flat history vectors (restarted by an edit that leaves any at a pruned position), Muon
# orthogonalises each 2-d update (not zero-preserving: re-masked after its step), Adafactor keeps
# factored second moments (row_var, col_var) that cannot be reset per synapse (warned of, left as they are)
OTHERS = {
    "lbfgs": lambda m: O.LBFGS(m.parameters(), lr=0.1, max_iter=3),
    "muon": lambda m: O.Muon([p for p in m.parameters() if p.ndim == 2], lr=0.02),
    "adafactor": lambda m: O.Adafactor(m.parameters(), lr=0.01),
}


@pytest.mark.filterwarnings("ignore:Adafactor keeps state")
@pytest.mark.parametrize("name", list(OTHERS))
def test_dst_with_lbfgs_muon_and_adafactor_keeps_pruned_weights_zero(name):
    model = net()
    opt = OTHERS[name](model)
    conn, ctrl = dst(model, opt)
    seen = {"grown": 0, "keys": set()}
    conn.add_edit_listener(state_checker(conn, opt, seen))
    for s in range(10):
        train_step(model, opt, s)
        assert_pruned_zero(conn, f"step {s}: ")
    assert seen["grown"] > 0
    assert all(torch.isfinite(p).all() for p in model.parameters())


@pytest.mark.parametrize("name", list(OTHERS))
def test_an_all_ones_connectome_trains_as_the_plain_model_with_lbfgs_muon_and_adafactor(name):
    model, ref = net(), net()
    opt, ref_opt = OTHERS[name](model), OTHERS[name](ref)
    adaptive.Connectome(model).attach(opt)
    for s in range(4):
        train_step(model, opt, s)
        train_step(ref, ref_opt, s)
        for (n, p), q in zip(model.named_parameters(), ref.parameters()):
            assert torch.equal(p.detach().view(torch.int32), q.detach().view(torch.int32)), f"step {s}: {n}"


# ------------------------------------------------------------------------- refused at attach
REFUSED = {
    "sparse-adam": (lambda m: O.SparseAdam(list(m.parameters()), lr=0.01), r"SparseAdam steps only sparse gradients.*Adam or AdamW"),
    "differentiable": (lambda m: O.Adam(m.parameters(), lr=0.01, differentiable=True), r"differentiable=True.*differentiable=False"),
}


@pytest.mark.parametrize("name", list(REFUSED))
@pytest.mark.parametrize("how", ["conn.attach", "Controller"])
def test_an_optimizer_that_cannot_step_a_connectome_is_refused_at_attach_changing_nothing(name, how):
    """SparseAdam (dense gradients) and differentiable=True (in-place steps of leaf parameters) failed only
    at the first step, inside torch, after the attach had masked the weights and a controller had pruned."""
    make, words = REFUSED[name]
    model = net()
    opt = make(model)
    conn = adaptive.Connectome(model)
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(ValueError, match=words):
        if how == "conn.attach":
            conn.attach(opt)
        else:
            adaptive.Controller(conn, opt, policy="set", density=0.5, update_every=2, seed=0)
    assert conn.density() == 1.0 and not conn._optimizers and not conn._observers and not conn._controllers
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())


# ------------------------------------------------------------------------- ZeroRedundancyOptimizer
def test_zero_redundancy_optimizer_on_one_process_resets_its_local_optimizers_state(tmp_path):
    """ZeroRedundancyOptimizer keeps the moments in its local optimizer (.optim.state; its own .state stays
    empty): attached as it was, no moment was ever reset (regrown synapses stepped with stale Adam moments,
    pruned ones kept theirs), and every step warned that the inner Adam stepped the weights unattached."""
    import warnings

    import torch.distributed as dist
    from torch.distributed.optim import ZeroRedundancyOptimizer

    dist.init_process_group("gloo", store=dist.FileStore(str(tmp_path / "store"), 1), rank=0, world_size=1)
    try:
        model = net()
        opt = ZeroRedundancyOptimizer(model.parameters(), optimizer_class=O.Adam, lr=0.01)
        for s in range(2):
            train_step(model, opt, s)  # dense moments everywhere
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no warning of an unattached optimizer
            conn, ctrl = dst(model, opt)
            seen = {"grown": 0, "keys": set()}
            conn.add_edit_listener(state_checker(conn, opt, seen))
            inner = opt.optim.state
            for n, p in conn.params.items():
                assert not bool(inner[p]["exp_avg"][~conn.masks[n]].any()), f"{n}: moments left at pruned positions"
            for s in range(2, 10):
                train_step(model, opt, s)
                assert_pruned_zero(conn, f"step {s}: ")
            assert seen["grown"] > 0 and seen["keys"] == {"exp_avg", "exp_avg_sq"}
            # a state loaded through ZeroRedundancyOptimizer (written into .optim.state, past the local
            # optimizer's own load hook) is repaired before the next step
            dense = {p: {k: (torch.ones_like(v) if v.shape == p.shape else v) for k, v in st.items()} for p, st in inner.items()}
            opt.consolidate_state_dict(to=0)
            sd = opt.state_dict()
            index = {p: i for i, p in enumerate(q for g in opt.param_groups for q in g["params"])}
            for p, st in dense.items():
                sd["state"][index[p]] = st
            opt.load_state_dict(sd)
            train_step(model, opt, 10)
            assert_pruned_zero(conn, "after a load: ")
            for n, p in conn.params.items():
                assert not bool(opt.optim.state[p]["exp_avg_sq"][~conn.masks[n]].any()), n
    finally:
        dist.destroy_process_group()


# ------------------------------------------------------------------------- the project's checkpoints
ALL = {**{n: (lambda n: lambda m: make_opt(n, "foreach", groups(m, n)))(n) for n in OPTIMIZERS}, **OTHERS}


def _prepared(make, hidden=8, bias=True):
    """``(accelerator, model, optimizer, conn)``: :func:`net` (its first hidden layer ``hidden`` wide; with
    biases or without) under a SET controller, prepared and registered with a fresh Accelerator."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(True)
    acc = Accelerator(cpu=True)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, hidden, bias=bias), nn.ReLU(), nn.Linear(hidden, 8, bias=bias), nn.ReLU(),
                          nn.Linear(8, 4, bias=bias))
    opt = make(model)
    conn, ctrl = dst(model, opt)
    model, opt = acc.prepare(model, opt)
    acc.register_for_checkpointing(conn, ctrl)
    return acc, model, opt, conn


@pytest.mark.filterwarnings("ignore:Adafactor keeps state")
@pytest.mark.parametrize("name", list(ALL))
def test_save_checkpoint_and_load_checkpoint_resume_dst_exactly(name, tmp_path):
    from adaptive.training import load_checkpoint, save_checkpoint

    acc, model, opt, conn = _prepared(ALL[name])
    for s in range(5):
        train_step(model, opt, s)
    ck = save_checkpoint(acc, tmp_path, 5)
    for s in range(5, 10):
        train_step(model, opt, s)
    want = {k: v.clone() for k, v in model.state_dict().items()}, conn.mask_hash()
    acc, model, opt, conn = _prepared(ALL[name])
    load_checkpoint(acc, ck)
    for s in range(5, 10):
        train_step(model, opt, s)
        assert_pruned_zero(conn, f"resumed step {s}: ")
    assert conn.mask_hash() == want[1]
    assert all(torch.equal(v, want[0][k]) for k, v in model.state_dict().items())


def _flat_state(opt):
    """The optimizer's state as comparable plain values (every tensor as a list)."""
    st = unwrap_optimizer(opt).state
    return [(k, v.tolist() if torch.is_tensor(v) else [x.tolist() for x in v] if isinstance(v, list) else v)
            for p in st for k, v in sorted(st[p].items())]


@pytest.mark.filterwarnings("ignore:Adafactor keeps state")
@pytest.mark.parametrize("name", [n for n in ALL if n != "sgd"] + ["adafactor-no-bias"])  # (plain SGD keeps no state)
def test_another_models_optimizer_state_is_refused_before_anything_loads(name, tmp_path):
    """Adafactor's factored moments (row_var, col_var) and L-BFGS's history vectors of another model were
    loaded, unchecked: Adafactor's next step failed inside torch ("The size of tensor a (8) must match the
    size of tensor b (9)"), L-BFGS's went on with another model's curvature pairs or failed likewise.
    adafactor-no-bias: no bias, so no state entry of a parameter's own shape (a bias's variance) tells the
    models apart, only the factored row_var of the first layer's weight."""
    import shutil

    from adaptive.integrity import write_manifest
    from adaptive.training import load_checkpoint, save_checkpoint

    make, bias = (ALL["adafactor"], False) if name == "adafactor-no-bias" else (ALL[name], True)
    cks = []
    for hidden in (8, 9):
        acc, model, opt, conn = _prepared(make, hidden, bias)
        for s in range(3):
            train_step(model, opt, s)
        cks.append(save_checkpoint(acc, tmp_path / str(hidden), 3))
    shutil.copy(cks[0] / "optimizer.bin", cks[1] / "optimizer.bin")  # the 8-wide model's optimizer state
    write_manifest(cks[1])
    acc, model, opt, conn = _prepared(make, 9, bias)
    before = copy.deepcopy(model.state_dict()), conn.mask_hash(), _flat_state(opt)
    words = "row_var" if not bias else ""
    with pytest.raises(ValueError, match=rf"optimizer\.bin: .*{words}.*was it saved from another model\? Load a checkpoint of this model"):
        load_checkpoint(acc, cks[1])
    assert conn.mask_hash() == before[1] and _flat_state(opt) == before[2]
    assert all(torch.equal(v, before[0][k]) for k, v in model.state_dict().items())


@pytest.mark.parametrize("saved,loaded", [("sgd-momentum-dampening-wd", "adam"), ("adam", "sgd-nesterov-wd")])
def test_another_optimizers_state_is_refused_before_anything_loads(saved, loaded, tmp_path):
    """A checkpoint saved with SGD and loaded into an Adam run passed the checks, loaded the model's weights, then
    failed inside torch's Adam (KeyError: 'step'): half loaded; saved with Adam into an SGD run it loaded silently
    and the first step failed inside torch (KeyError: 'momentum'). Refused now before anything loads, naming both."""
    from adaptive.training import load_checkpoint, save_checkpoint

    acc, model, opt, conn = _prepared(ALL[saved])
    for s in range(3):
        train_step(model, opt, s)
    ck = save_checkpoint(acc, tmp_path, 3)
    acc, model, opt, conn = _prepared(ALL[loaded])
    before = copy.deepcopy(model.state_dict()), conn.mask_hash(), _flat_state(opt)
    name = type(unwrap_optimizer(opt)).__name__
    with pytest.raises(ValueError, match=rf"optimizer\.bin: the optimizer state was saved by another optimizer than {name}.*"
                                         "Resume with the optimizer the checkpoint was saved with"):
        load_checkpoint(acc, ck)
    assert conn.mask_hash() == before[1] and _flat_state(opt) == before[2]
    assert all(torch.equal(v, before[0][k]) for k, v in model.state_dict().items())


def test_a_state_of_the_same_hyper_parameters_with_a_schedulers_keys_loads(tmp_path):
    """Adam's state into AdamW (the same hyper-parameters), saved with a learning-rate scheduler's initial_lr in its
    groups and loaded without one: not another optimizer's."""
    from adaptive.training import load_checkpoint, save_checkpoint

    acc, model, opt, conn = _prepared(ALL["adam"])
    torch.optim.lr_scheduler.StepLR(unwrap_optimizer(opt), 1)  # (adds initial_lr to every group)
    for s in range(3):
        train_step(model, opt, s)
    ck = save_checkpoint(acc, tmp_path, 3)
    saved = _flat_state(opt)
    acc, model, opt, conn = _prepared(ALL["adamw"])
    assert _flat_state(opt) != saved
    load_checkpoint(acc, ck)
    assert _flat_state(opt) == saved  # Adam's moments and steps, in AdamW
    train_step(model, opt, 3)


# ------------------------------------------------------------------------- maximize=True and the controller's scores
def _maximized_run(maximize, policy, **kw):
    """Masks and weights after 8 steps of a controller with ``policy`` on SGD with momentum, raising the
    objective -cross_entropy with ``maximize=True`` or lowering cross_entropy with ``maximize=False``."""
    model = net()
    opt = O.SGD(model.parameters(), lr=0.05, momentum=0.9, maximize=maximize)
    conn = adaptive.Connectome(model)
    adaptive.Controller(conn, opt, policy=policy, density=0.5, update_every=2, end_step=8, seed=0, **kw)
    for s in range(8):
        x, y = data(s)
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        (-loss if maximize else loss).backward()
        opt.step()
    return conn.mask_hash(), [p.detach().clone() for p in model.parameters()]


@pytest.mark.parametrize("policy, kw", [("rigl", {}), ("utility", {}), ("threshold", {})], ids=["rigl", "utility", "threshold"])
def test_a_controller_whose_scores_read_the_gradients_size_edits_alike_under_maximize(policy, kw):
    a, b = _maximized_run(True, policy, **kw), _maximized_run(False, policy, **kw)
    assert a[0] == b[0]
    assert all(torch.equal(p, q) for p, q in zip(a[1], b[1]))


@pytest.mark.parametrize("kw", [dict(estimator="obd"), dict(estimator="taylor"), dict(estimator="consistency"),
                                dict(grow_init="original")], ids=["obd", "taylor", "consistency", "curvature-restoring"])
@pytest.mark.parametrize("how", ["Controller", "ctrl.attach"])
def test_maximize_is_refused_by_a_controller_whose_scores_read_the_gradients_sign(kw, how):
    """Such estimators (-g*w, g*w0) score by the gradient of a loss to lower; an optimizer with maximize=True
    observes the gradient of an objective to raise, so they pruned the synapses that helped most."""
    model = net()
    opt = O.Adam(model.parameters(), lr=0.01, maximize=True)
    conn = adaptive.Connectome(model)
    with pytest.raises(ValueError, match=r"maximize=True.*loss = -objective with maximize=False"):
        if how == "Controller":
            adaptive.Controller(conn, opt, policy="utility", density=0.5, update_every=2, **kw)
        else:
            ctrl = adaptive.Controller(conn, policy="utility", density=0.5, update_every=2, **kw)
            before = conn.mask_hash()
            ctrl.attach(opt)
    if how == "Controller":
        assert conn.density() == 1.0 and not conn._optimizers and not conn._controllers
    else:
        assert conn.mask_hash() == before and not conn._optimizers and ctrl.optimizer is None


def test_conn_attach_of_a_maximizing_optimizer_is_refused_before_anything_when_a_stopped_controller_would_refuse_it():
    """conn.attach(opt) attaches the controllers conn.detach() stopped again; one refusing the optimizer
    must refuse the whole attach before the connectome is hooked to it."""
    model = net()
    conn = adaptive.Connectome(model)
    ctrl = adaptive.Controller(conn, O.SGD(model.parameters(), lr=0.1), policy="utility", estimator="obd",
                               density=0.5, update_every=2)
    conn.detach()
    opt = O.SGD(model.parameters(), lr=0.1, maximize=True)
    with pytest.raises(ValueError, match="maximize=True"):
        conn.attach(opt)
    assert not conn._optimizers and not conn._handles and ctrl.optimizer is None


def test_maximize_in_a_group_of_other_parameters_is_not_refused():
    """Only a group holding the connectome's weights counts: one loss lowered by its layers and raised by other
    parameters (a min-max game, gradient reversal) gave the controller loss gradients, yet was refused."""
    model = net()
    conn = adaptive.Connectome(model, exclude=["4"])
    opt = O.SGD([{"params": list(model[0].parameters()) + list(model[2].parameters())},
                 {"params": list(model[4].parameters()), "maximize": True}], lr=0.1)
    ctrl = adaptive.Controller(conn, opt, policy="utility", estimator="obd", density=0.5, update_every=2, end_step=4)
    for s in range(4):
        train_step(model, opt, s)
    assert [e["kind"] for e in ctrl.events].count("update") == 2 and conn.density() < 1.0


@pytest.mark.parametrize("how", ["conn.attach", "Controller"])
def test_a_controller_driven_explicitly_refuses_the_maximizing_optimizer_its_connectome_is_attached_to(how):
    """ctrl.observe() reads the gradients the connectome's optimizer steps by: conn.attach(opt) of a maximizing
    one (with the controller built before), or a controller built on a connectome attached to one, went on."""
    model = net()
    conn = adaptive.Connectome(model)
    opt = O.SGD(model.parameters(), lr=0.1, maximize=True)
    kw = dict(policy="utility", estimator="obd", density=0.5, update_every=2)
    with pytest.raises(ValueError, match="maximize=True.*loss = -objective with maximize=False"):
        if how == "conn.attach":
            ctrl = adaptive.Controller(conn, **kw)
            conn.attach(opt)
        else:
            conn.attach(opt)
            adaptive.Controller(conn, **kw)
    if how == "conn.attach":
        assert not conn._optimizers and not conn._handles and ctrl.optimizer is None
    else:
        assert len(conn._controllers) == 0


@pytest.mark.parametrize("old_state", ["attached", "stopped by conn.detach()"])
def test_a_sign_free_controller_replacing_a_sign_reading_one_takes_a_maximizing_optimizer(old_state):
    """A second Controller on the connectome replaces the first (detached, with a warning). conn.attach asked the
    controller being replaced whether it accepted the new optimizer: a 'rigl' controller on a maximizing one was
    refused for the old 'obd' estimator it was about to detach; the old one stopped by conn.detach() was even
    attached again to it inside the attach, and its refusal left the connectome hooked to an optimizer no
    controller stepped after."""
    model = net()
    conn = adaptive.Connectome(model)
    old = adaptive.Controller(conn, O.SGD(model.parameters(), lr=0.1), policy="utility", estimator="obd",
                              density=0.5, update_every=2)
    if old_state != "attached":
        conn.detach()
    opt = O.SGD(model.parameters(), lr=0.1, maximize=True)
    with pytest.warns(UserWarning, match="already edited by another Controller.*now detached"):
        new = adaptive.Controller(conn, opt, policy="rigl", density=0.5, update_every=2, end_step=6)
    assert old.optimizer is None and new.optimizer is opt
    for s in range(4):
        train_step(model, opt, s)
    assert [e["kind"] for e in new.events].count("update") == 2
    assert not [e for e in old.events if e["kind"] == "update"]
    assert_pruned_zero(conn)
    with pytest.raises(ValueError, match="maximize=True"):  # the replaced one, driven by hand, still refuses it
        old.update()


def test_a_maximizing_group_added_after_attach_is_refused_at_the_next_update_before_any_edit():
    """opt.add_param_group({..., "maximize": True}) over connectome weights after the attach was never checked:
    the controller went on scoring by the sign of an objective's gradient."""
    model = net()
    conn = adaptive.Connectome(model)
    opt = O.SGD(list(model[0].parameters()) + list(model[2].parameters()), lr=0.1)
    ctrl = adaptive.Controller(conn, opt, policy="utility", estimator="obd", density=0.5, update_every=2)
    opt.add_param_group({"params": list(model[4].parameters()), "maximize": True})
    train_step(model, opt, 0)
    before = conn.mask_hash()
    with pytest.raises(ValueError, match="maximize=True"):
        train_step(model, opt, 1)
    assert conn.mask_hash() == before and not [e for e in ctrl.events if e["kind"] == "update"]


def test_zero_redundancy_optimizer_over_two_processes_masks_and_resets_each_ranks_shard(tmp_path):
    """Each rank's local optimizer holds only its shard. The controller updated right after that local step,
    before ZeroRedundancyOptimizer broadcast the other shards' new weights, so each rank pruned by other
    weights: MaskMismatchError at the first update. It also warned that the layers of the other rank's shard
    were held by no optimizer of the connectome (their weights 'never train').
    Case "reattach": conn.detach() then conn.attach(opt) attached the stopped controller to the local optimizer
    inside, not to ZeroRedundancyOptimizer itself: the same MaskMismatchError at the first update after it."""
    from _ports import two_rank_records

    records = two_rank_records("two_process_zero_redundancy.py", tmp_path)
    for case in ("zero", "reattach"):
        recs = [r[case] for r in records]
        for r in recs:
            assert "error" not in r, (case, r)
            assert r["warnings"] == [] and r["zero"] and r["stale"] == 0 and r["events"] >= 3, (case, r)
        assert recs[0]["hash"] == recs[1]["hash"], case
        assert recs[0]["held"] != recs[1]["held"], case  # sharded indeed


def test_save_checkpoint_of_a_zero_redundancy_optimizer_over_two_processes_resumes_exactly(tmp_path):
    """save_checkpoint under two processes with a ZeroRedundancyOptimizer (prepared with device_placement
    False: Accelerate's placement calls its state_dict()) failed: Accelerate's save_state called its
    state_dict() on every process, which raises unless consolidate_state_dict gathered the shards onto that
    process first (a collective), and the failure came out as a CheckpointWriteError telling to free disk
    space. It now gathers them itself, on every process, before the main process writes; load_checkpoint loads
    each process's shard back, and the resumed run ends with the uninterrupted run's masks and weights. One over a group of fewer processes is
refused before anything is written."""
    import json
    import os

    from _ports import launch_two

    script = os.path.join(os.path.dirname(__file__), "scripts", "two_process_zero_checkpoint.py")
    env = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    r = launch_two([script, tmp_path], env=env)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    for i in range(2):
        rec = json.loads((tmp_path / f"rank{i}.json").read_text())
        sub = rec.pop("subgroup")
        assert rec == {"saved_entries": 6, "params": 6, "same_masks": True, "same_weights": True,
                       "left": ["step_00000003"]}, rec
        assert sub == ("save_checkpoint(step=9): a ZeroRedundancyOptimizer over a process group of 1 of the run's 2 "
                       "processes cannot be gathered by save_checkpoint; nothing was written. Build it over every "
                       "process (the default process group), or save its state yourself "
                       "(consolidate_state_dict(to=...) on every process of its group, then "
                       "torch.save(opt.state_dict()))"), sub


def test_save_checkpoint_of_a_zero_redundancy_optimizer_writes_its_state_as_of_now(tmp_path):
    """ZeroRedundancyOptimizer.state_dict() returns the state last consolidated: after a
    consolidate_state_dict of an earlier step (the fix torch's error names), save_checkpoint wrote that
    stale state, silently (here: none at all, consolidated before the first step; on a GPU the moments of
    then), and a resume stepped with it. save_checkpoint gathers the state itself, as of the save."""
    import torch.distributed as dist
    from torch.distributed.optim import ZeroRedundancyOptimizer

    from adaptive.training import save_checkpoint

    dist.init_process_group("gloo", store=dist.FileStore(str(tmp_path / "store"), 1), rank=0, world_size=1)
    try:
        def zero(model):
            return ZeroRedundancyOptimizer(model.parameters(), optimizer_class=O.Adam, lr=0.01)

        from accelerate import Accelerator
        from accelerate.state import AcceleratorState

        AcceleratorState._reset_state(True)
        acc = Accelerator(cpu=True)
        torch.manual_seed(0)
        model = net()
        opt = zero(model)
        conn, ctrl = dst(model, opt)
        model, opt = acc.prepare(model, opt, device_placement=[True, False])
        acc.register_for_checkpointing(conn, ctrl)
        opt.optimizer.consolidate_state_dict(to=0)  # before the first step: no state yet
        for s in range(4):
            train_step(model, opt, s)
        ck = save_checkpoint(acc, tmp_path, 4)
        saved = torch.load(ck / "optimizer.bin", weights_only=False)["state"]
        index = {p: i for i, p in enumerate(q for g in opt.optimizer.param_groups for q in g["params"])}
        live = opt.optimizer.optim.state
        assert len(saved) == len(live) == len(index)
        for p, st in live.items():
            assert torch.equal(saved[index[p]]["exp_avg"], st["exp_avg"]) and int(saved[index[p]]["step"]) == 4
    finally:
        dist.destroy_process_group()


def test_lbfgs_history_restarts_where_a_pruned_synapse_follows_a_complex_parameter():
    """L-BFGS keeps one flat history over its parameters, a complex one taking two reals per value: the offset of a
    real parameter after a complex one counts them so, and a direction nonzero at a synapse pruned there restarts
    the history (counted one per value, it looked at the wrong place and kept it)."""
    from adaptive.optim_state import reset_state

    c = nn.Parameter(torch.zeros(2, dtype=torch.complex64))
    r = nn.Parameter(torch.zeros(4))
    opt = torch.optim.LBFGS([c, r])
    d = torch.zeros(8)
    d[4] = 1.0  # r's first value in the flat vector (after c's 2 complex = 4 reals)
    opt.state[c] = {"d": d, "prev_flat_grad": d.clone(), "old_dirs": [], "old_stps": []}
    reset_state(opt, r, torch.tensor([True, False, False, False]))
    assert c not in opt.state
