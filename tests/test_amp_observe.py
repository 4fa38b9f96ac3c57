"""ctrl.observe(scaler=...): a controller driven explicitly under torch.amp.GradScaler observes unscaled
gradients and leaves out the steps the scaler skips (adaptive/amp_observe.py)."""
import warnings

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import adaptive


def _run(how, bad_step=None, unscale_first=False):
    """8 explicit steps of SGD on a small MLP, the controller (consistency, whose scores are not
    scale-invariant) updating at step 4; ``how``: "plain" (no scaler), "scaler" (observe(scaler=)), or
    "trap" (a scaler, observed without scaler=). At ``bad_step`` the loss is inf."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 32), nn.ReLU(), nn.Linear(32, 5))
    conn = adaptive.Connectome(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    conn.attach(opt)
    ctrl = adaptive.Controller(conn, policy="utility", estimator="consistency", density=0.5, update_every=4,
                               start_step=4, end_step=8)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 16) if how != "plain" else None
    g = torch.Generator().manual_seed(1)
    for step in range(1, 9):
        x, y = torch.randn(16, 20, generator=g), torch.randint(0, 5, (16,), generator=g)
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y) * (float("inf") if step == bad_step else 1.0)
        if scaler is None:
            loss.backward()
            if step != bad_step:  # what the scaler does: no observation, no step
                ctrl.observe()
                opt.step()
        else:
            scaler.scale(loss).backward()
            if unscale_first:
                scaler.unscale_(opt)
            ctrl.observe(scaler=scaler) if how == "scaler" else ctrl.observe()
            scaler.step(opt)
            scaler.update()
        ctrl.step()
    return conn, ctrl


@pytest.mark.parametrize("unscale_first", [False, True])
def test_observe_with_the_scaler_sees_the_unscaled_gradients(unscale_first):
    """Observed explicitly after scaler.scale(loss).backward(), the gradients carried the scale (65536): the
    window held them so and consistency's masks moved (the "trap" run below).
    With scaler=, the scale is divided out where unscale_ has not run, and not twice where it has: the masks
    and weights are those of the run without a scaler, bit for bit (the scale is a power of two)."""
    ref, _ = _run("plain")
    conn, ctrl = _run("scaler", unscale_first=unscale_first)
    assert ctrl.skipped_observations == 0
    for n in ref.masks:
        assert torch.equal(conn.masks[n], ref.masks[n]), n
        assert torch.equal(conn.params[n], ref.params[n]), n
    if not unscale_first:  # the trap the scaler= closes: the same loop observed without it
        trap, _ = _run("trap")
        assert any(not torch.equal(trap.masks[n], ref.masks[n]) for n in ref.masks)


def test_observe_with_the_scaler_leaves_out_the_step_it_skips():
    """A step whose gradients hold inf, which the scaler skips, was observed all the same: the window held
    inf and the update at step 4 was skipped. With scaler= that step is left out (counted in
    skipped_observations) and the update runs on the other steps, as the run that never took it; without
    scaler=, the warning of the skipped window names the fix."""
    ref, _ = _run("plain", bad_step=2)
    conn, ctrl = _run("scaler", bad_step=2)
    assert ctrl.skipped_observations == 1 and ctrl.nonfinite_windows == 0
    assert conn.num_live() < conn.num_synapses()
    for n in ref.masks:
        assert torch.equal(conn.masks[n], ref.masks[n]), n
        assert torch.equal(conn.params[n], ref.params[n]), n
    with pytest.warns(UserWarning, match=r"hold NaN or inf .*ctrl\.observe\(scaler=scaler\)"):
        _, trap = _run("trap", bad_step=2)
    assert trap.nonfinite_windows == 1


def test_observe_refuses_what_is_no_grad_scaler_and_ignores_a_disabled_one():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3))
    conn = adaptive.Connectome(model)
    ctrl = adaptive.Controller(conn, policy="utility", estimator="consistency", density=0.5, update_every=2)
    F.cross_entropy(model(torch.randn(2, 4)), torch.tensor([0, 1])).backward()
    with pytest.raises(TypeError, match=r"torch.amp.GradScaler that scales the loss \(accelerator.scaler"):
        ctrl.observe(scaler=2.0 ** 16)
    assert ctrl.stats.count == 0  # nothing observed
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a disabled scaler may warn that its device is unavailable
        off = torch.amp.GradScaler("cpu", enabled=False)
    ctrl.observe(scaler=off)
    assert ctrl.stats.count == 1 and torch.equal(ctrl.stats.g_sum["0.weight"], model[0].weight.grad)


def _against_attached(explicit, case):
    """8 steps under a GradScaler, driven explicitly with observe(scaler=) or with the controller attached
    (scaler.step unscaling before its hooks), with one inf written into a gradient at step 2: a bias's
    ("bias": the scaler skips the only optimizer's step, though every weight's gradient is finite) or the
    second layer's weight's, held by a second optimizer ("two": the scaler skips that optimizer's step only).
    Returns the masks, the per-layer window counts after each step's observation, and the controller."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 32), nn.ReLU(), nn.Linear(32, 5))
    conn = adaptive.Connectome(model)
    opts = ([torch.optim.SGD(model[0].parameters(), lr=0.05), torch.optim.SGD(model[2].parameters(), lr=0.05)]
            if case == "two" else [torch.optim.SGD(model.parameters(), lr=0.05)])
    for o in opts:
        conn.attach(o)
    kw = dict(policy="utility", estimator="consistency", density=0.5, update_every=4, start_step=4, end_step=8)
    ctrl = adaptive.Controller(conn, **kw) if explicit else adaptive.Controller(conn, optimizer=opts[0], **kw)
    scaler = torch.amp.GradScaler("cpu")
    g = torch.Generator().manual_seed(1)
    counts = []
    for step in range(1, 9):
        x, y = torch.randn(16, 20, generator=g), torch.randint(0, 5, (16,), generator=g)
        for o in opts:
            o.zero_grad()
        scaler.scale(F.cross_entropy(model(x), y)).backward()
        if step == 2:
            (model[0].bias if case == "bias" else model[2].weight).grad[0, ...] = float("inf")
        if explicit:
            ctrl.observe(scaler=scaler)
            counts.append(dict(ctrl.stats.counts))
        with warnings.catch_warnings():  # attached to opts[0], stepped first: warned of, as meant here
            warnings.filterwarnings("ignore", message=".*stepped last")
            for o in opts:
                scaler.step(o)
        if not explicit:
            counts.append(dict(ctrl.stats.counts))
        scaler.update()
        # the attached controller counts only the steps taken: where the scaler skips the one optimizer's
        # step, the explicit loop leaves its ctrl.step() out to compare alike
        if explicit and not (case == "bias" and step == 2):
            ctrl.step()
    # steps 1-3 only: at step 4 the attached controller updates in the first optimizer's post-step hook, before
    # the second optimizer's pre-step hook observes, so that optimizer's step-4 gradients open the next window
    return conn.masks, counts[:3], ctrl


@pytest.mark.parametrize("case", ["bias", "two"])
def test_observe_with_the_scaler_leaves_out_what_the_attached_path_leaves_out(case):
    """GradScaler skips an optimizer's step where ANY gradient it holds is inf or NaN, a bias's too, and still
    steps the other optimizers. observe(scaler=) once judged only the connectome's weight gradients, all
    together: it observed a step skipped for a bias's inf, and left out every layer for one optimizer's inf.
    Now the window holds what the attached path's does, layer by layer (and, with one optimizer, the masks are
    the same: with two, the attached path's update window differs at the update step, see _against_attached)."""
    ref_masks, ref_counts, _ = _against_attached(False, case)
    masks, counts, ctrl = _against_attached(True, case)
    assert ctrl.skipped_observations == 1
    assert counts == ref_counts
    if case == "two":  # the first layer's optimizer stepped: its window kept that step
        assert counts[1] == {"0.weight": 2, "2.weight": 1}
    for n in (ref_masks if case == "bias" else []):
        assert torch.equal(masks[n], ref_masks[n]), n


def test_after_the_scalers_step_the_layers_read_as_unscaled():
    """scaler.step(opt) unscales first (stage STEPPED): observing then must not divide by the scale again; a check
    of UNSCALED only read them as scaled."""
    import adaptive
    from adaptive.amp_observe import split_scaled

    m = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 2))
    conn = adaptive.Connectome(m)
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    conn.attach(opt)
    scaler = torch.amp.GradScaler("cpu")
    scaler.scale(m(torch.randn(3, 4)).sum()).backward()
    scaler.step(opt)
    unscaled, scaled, _ = split_scaled(conn, scaler, list(conn.params))
    assert unscaled == ["0.weight", "1.weight"] and scaled == []


def test_a_weight_two_optimizers_hold_is_judged_by_the_primarys_gradients():
    """A weight held by two attached optimizers goes with the first (the primary): the other's inf gradient on a
    parameter of its own does not drop it (walked in the other order, it did)."""
    import adaptive
    from adaptive.amp_observe import finite_layers

    m = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 2))
    conn = adaptive.Connectome(m)
    extra = torch.nn.Parameter(torch.zeros(3))
    a = torch.optim.SGD(m.parameters(), lr=0.1)
    b = torch.optim.SGD([m[1].weight, extra], lr=0.1)
    conn.attach(a)
    conn.attach(b)
    m(torch.randn(3, 4)).sum().backward()
    extra.grad = torch.full((3,), float("inf"))
    assert finite_layers(conn, list(conn.params), primary=a) == (["0.weight", "1.weight"], False)
