"""Gradients masked inside backward (adaptive.grad_masking): the step may skip its own masking only
when every gradient is the tensor a hook masked and nothing wrote to it since."""
import copy

import pytest

import torch
import torch.nn.functional as F
from torch import nn

import adaptive

torch.set_num_threads(1)


def masked_net(opt_cls=torch.optim.SGD, **opt_kw):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(12, 10), nn.ReLU(), nn.Linear(10, 4))
    conn = adaptive.Connectome(model)
    g = torch.Generator().manual_seed(1)
    conn.set_masks({n: torch.rand(m.shape, generator=g) < 0.5 for n, m in conn.masks.items()})
    opt = opt_cls(model.parameters(), lr=0.1, **({"momentum": 0.9} if opt_cls is torch.optim.SGD else {}), **opt_kw)
    conn.attach(opt)
    x, y = torch.randn(16, 12, generator=g), torch.randint(0, 4, (16,), generator=g)
    return model, conn, opt, x, y


def backward(model, x, y):
    nn.functional.cross_entropy(model(x), y).backward()


def pruned_grads(conn):
    return torch.cat([p.grad[~conn.masks[n]] for n, p in conn.params.items()])


def pruned_weights_zero(conn):
    return all(bool((p.detach()[~conn.masks[n]] == 0).all()) for n, p in conn.params.items())


def test_backward_masks_gradients_and_the_step_keeps_pruned_weights_at_zero():
    model, conn, opt, x, y = masked_net()
    calls = []
    real = conn.mask_gradients
    conn.mask_gradients = lambda: (calls.append(1), real())[1]
    for _ in range(3):
        opt.zero_grad()
        backward(model, x, y)
        assert bool((pruned_grads(conn) == 0).all())  # masked inside backward
        opt.step()
        assert pruned_weights_zero(conn)
    assert calls == []  # the step trusted the hooks' work


@pytest.mark.parametrize("bad", [float("inf"), float("nan"), -1.5])
def test_backward_masks_a_pruned_gradient_to_plus_zero_whatever_it_holds(bad):
    """The hook multiplied by the 0/1 mask, and 0 * inf = 0 * NaN = NaN (and 0 * -1.5 = -0.0): the
    masked gradient of a pruned position is now all bits zero, the live ones keep their bits."""
    model, conn, opt, x, y = masked_net()
    p, pruned = conn.params["0.weight"], ~conn.masks["0.weight"]
    h = p.register_hook(lambda g: g.masked_fill(pruned, bad))  # runs before the masking hook
    backward(model, x, y)
    h.remove()
    assert conn._masker.done  # the hooks masked it
    assert bool((p.grad.view(torch.int32)[pruned] == 0).all())
    dense = p.grad.clone()
    model.zero_grad()
    conn.mask_in_backward = False
    backward(model, x, y)
    assert torch.equal(p.grad[~pruned], dense[~pruned])


def test_a_write_to_the_gradient_after_backward_is_masked_by_the_step():
    model, conn, opt, x, y = masked_net()
    for _ in range(2):
        opt.zero_grad()
        backward(model, x, y)
        for p in model.parameters():  # e.g. a user's gradient edit or noise
            p.grad.add_(0.5)
        opt.step()
        assert pruned_weights_zero(conn)


def test_a_mask_edit_between_backward_and_step_is_honoured():
    model, conn, opt, x, y = masked_net()
    opt.zero_grad()
    backward(model, x, y)
    name = "0.weight"
    fewer = conn.masks[name].clone()
    fewer[:5] = False  # prune five more rows after the hooks masked with the old mask
    conn.set_masks({name: fewer})
    opt.step()
    assert pruned_weights_zero(conn)
    assert bool((model[0].weight[:5] == 0).all())


def test_gradients_accumulated_over_two_backwards_stay_masked():
    model, conn, opt, x, y = masked_net()
    opt.zero_grad()
    backward(model, x, y)
    backward(model, x * 2, y)
    assert bool((pruned_grads(conn) == 0).all())
    opt.step()
    assert pruned_weights_zero(conn)


def test_an_active_observer_sees_dense_gradients_and_an_idle_one_does_not_stop_the_hooks():
    model, conn, opt, x, y = masked_net()
    seen = []
    active = {"on": True}
    conn.add_observer(lambda: seen.append(pruned_grads(conn).abs().sum().item()), active=lambda: active["on"])
    opt.zero_grad()
    backward(model, x, y)
    opt.step()
    assert seen[-1] > 0  # dense: the hooks stood aside
    active["on"] = False
    opt.zero_grad()
    backward(model, x, y)
    assert bool((pruned_grads(conn) == 0).all())
    opt.step()
    assert pruned_weights_zero(conn)
    # an observer registered without a predicate reads every step: gradients stay dense
    conn.add_observer(lambda: None)
    opt.zero_grad()
    backward(model, x, y)
    assert pruned_grads(conn).abs().sum() > 0
    opt.step()
    assert pruned_weights_zero(conn)


def test_mask_in_backward_off_keeps_gradients_dense_until_the_step():
    model, conn, opt, x, y = masked_net()
    conn.mask_in_backward = False
    opt.zero_grad()
    backward(model, x, y)
    assert pruned_grads(conn).abs().sum() > 0
    opt.step()
    assert pruned_weights_zero(conn)


def test_controller_sees_dense_gradients_while_it_edits_and_masked_ones_after():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(12, 10), nn.ReLU(), nn.Linear(10, 4))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    ctrl = adaptive.Controller(adaptive.Connectome(model), opt, policy="rigl", density=0.5, update_every=4,
                               end_step=8, window=2)
    conn = ctrl.conn
    observed = []
    real = ctrl.stats.observe
    ctrl.stats.observe = lambda: (observed.append(pruned_grads(conn).abs().sum().item()), real())[1]
    x, y = torch.randn(16, 12), torch.randint(0, 4, (16,))
    dense_while_editing, masked_after = [], []
    for _ in range(12):
        opt.zero_grad()
        backward(model, x, y)
        # the same kind of gradient at every step of a phase: a clip here sees no switching
        (dense_while_editing if not ctrl.finished else masked_after).append(pruned_grads(conn).abs().sum().item())
        opt.step()
        assert pruned_weights_zero(conn)
    assert len(observed) == 4 and all(v > 0 for v in observed)  # two windows of two steps, dense every time
    assert len(dense_while_editing) == 8 and all(v > 0 for v in dense_while_editing)
    assert len(masked_after) == 4 and all(v == 0 for v in masked_after)  # finished: the hooks mask


def test_optimizer_that_may_move_zeros_is_re_masked_and_hooks_stand_aside():
    class Plain(torch.optim.Optimizer):  # not registered as zero-preserving
        def __init__(self, params, lr):
            super().__init__(params, {"lr": lr})

        @torch.no_grad()
        def step(self, closure=None):
            for g in self.param_groups:
                for p in g["params"]:
                    if p.grad is not None:
                        p.add_(p.grad + 0.01, alpha=-g["lr"])

    model, conn, opt, x, y = masked_net(Plain)
    opt.zero_grad()
    backward(model, x, y)
    assert pruned_grads(conn).abs().sum() > 0  # no hook masking: the step does a full pass anyway
    opt.step()
    assert pruned_weights_zero(conn)


def test_copies_of_the_model_carry_no_hooks_and_detach_removes_them():
    model, conn, opt, x, y = masked_net()
    twin = copy.deepcopy(model)
    backward(twin, x, y)
    assert sum(float(p.grad[~conn.masks[f"{i}.weight"]].abs().sum()) for i, p in ((0, twin[0].weight), (2, twin[2].weight))) > 0
    conn.detach()
    opt.zero_grad()
    backward(model, x, y)
    assert pruned_grads(conn).abs().sum() > 0
    clone = copy.deepcopy(conn)  # a copied connectome re-attaches cleanly
    opt2 = torch.optim.SGD(clone.model.parameters(), lr=0.1)
    clone.attach(opt2)
    opt2.zero_grad()
    backward(clone.model, x, y)
    opt2.step()
    assert pruned_weights_zero(clone)


def test_controller_driven_explicitly_observes_dense_gradients_on_an_attached_connectome():
    # The documented explicit use (ctrl.observe() after backward, ctrl.step() after the step), with
    # the connectome attached to the optimizer by the user, as recipes/benchmarks/controller.py
    # does: the backward hooks must stand aside while the controller reads gradients.
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(12, 10), nn.ReLU(), nn.Linear(10, 4))
    conn = adaptive.Connectome(model)
    ctrl = adaptive.Controller(conn, policy="rigl", density=0.5, update_every=3, end_step=100)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    conn.attach(opt)
    observed = []
    real = ctrl.stats.observe
    ctrl.stats.observe = lambda: (observed.append(pruned_grads(conn).abs().sum().item()), real())[1]
    x, y = torch.randn(16, 12), torch.randint(0, 4, (16,))
    for _ in range(4):
        opt.zero_grad()
        backward(model, x, y)
        ctrl.observe()
        opt.step()
        ctrl.step()
        assert pruned_weights_zero(conn)
    assert len(observed) == 4 and all(v > 0 for v in observed)  # dense every time, observed once per step


def test_step_with_a_closure_keeps_pruned_weights_at_zero_and_observers_see_its_gradients():
    for opt_cls in (torch.optim.SGD, torch.optim.Adam, torch.optim.LBFGS):
        model, conn, opt, x, y = masked_net(opt_cls)
        seen = []
        conn.add_observer(lambda: seen.append(pruned_grads(conn).abs().sum().item()))

        def closure():
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(x), y)
            loss.backward()
            return loss

        for _ in range(3):
            loss = opt.step(closure)
            assert torch.isfinite(loss)
            assert pruned_weights_zero(conn), opt_cls.__name__
        assert len(seen) == 3 and all(v > 0 for v in seen)  # dense, once per step, even for LBFGS
        opt.step(closure=closure)  # passed by keyword
        assert pruned_weights_zero(conn)


def test_bad_observer_or_switch_is_refused_and_changes_nothing():
    model, conn, opt, x, y = masked_net()
    with pytest.raises(TypeError, match="callable fn"):
        conn.add_observer("not a function")
    with pytest.raises(TypeError, match="active must be None or a callable"):
        conn.add_observer(lambda: None, active=True)
    with pytest.raises(TypeError, match="True or False"):
        conn.mask_in_backward = "false"  # would read as True
    assert conn._observers == [] and conn.mask_in_backward is True
    opt.zero_grad()
    backward(model, x, y)
    assert bool((pruned_grads(conn) == 0).all())  # still masking in backward


def test_a_gradient_replaced_by_a_new_tensor_with_the_same_version_is_masked_by_the_step():
    model, conn, opt, x, y = masked_net(torch.optim.SGD)
    for step in range(2):  # the first step records the weights' versions; the second may trust the hooks
        opt.zero_grad()
        backward(model, x, y)
        if step == 1:
            for p in conn.params.values():
                fresh = torch.zeros_like(p.grad)
                fresh.add_(1.0)  # written once: its version counter equals the masked gradient's
                assert fresh._version == p.grad._version
                p.grad = fresh
        opt.step()
        assert pruned_weights_zero(conn)


@pytest.mark.filterwarnings("ignore:Using backward\\(\\) with create_graph=True")
def test_a_gradient_built_with_create_graph_is_masked_where_autograd_sees_it():
    """backward(create_graph=True) (a gradient penalty, a Hessian-vector product): the hook's masking
    is part of the graph, so a derivative taken through the masked gradient is that of the masked
    gradient. A write through the gradient's integer view changed its value behind autograd, and the
    Hessian-vector product below came out as that of the unmasked gradient."""
    model, conn, opt, x, y = masked_net()
    p, keep = conn.params["0.weight"], conn.masks["0.weight"]
    nn.functional.cross_entropy(model(x), y).backward(create_graph=True)
    assert p.grad.requires_grad and bool((p.grad.detach().view(torch.int32)[~keep] == 0).all())
    v = torch.randn_like(p)
    hvp, = torch.autograd.grad((p.grad * v).sum(), p)

    def masked_grad_dot_v(w):  # the same masked gradient, built by hand
        out = torch.func.functional_call(model, {"0.weight": w}, (x,))
        g, = torch.autograd.grad(nn.functional.cross_entropy(out, y), w, create_graph=True)
        return (torch.where(keep, g, 0.0) * v).sum()

    w = p.detach().clone().requires_grad_()
    expected, = torch.autograd.grad(masked_grad_dot_v(w), w)
    torch.testing.assert_close(hvp, expected)
    model.zero_grad(set_to_none=True)  # (breaks the parameter-gradient cycle create_graph makes)


@pytest.mark.parametrize("opt_cls", [torch.optim.SGD, torch.optim.Adam])
def test_weights_given_new_storage_by_vector_to_parameters_are_re_masked_at_the_next_step(opt_cls):
    """torch.nn.utils.vector_to_parameters sets ``p.data = ...``: new values without moving the weight's version
    counter, so a zero-preserving optimizer's step skipped re-masking and the pruned weights it filled stayed
    nonzero for good while density() counted them pruned. The step compares each weight's storage too."""
    from torch.nn.utils import parameters_to_vector, vector_to_parameters

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 12), nn.ReLU(), nn.Linear(12, 3))
    opt = opt_cls(model.parameters(), lr=0.01)
    conn = adaptive.Connectome(model)
    conn.attach(opt)
    conn.set_masks({n: torch.rand(m.shape) < 0.3 for n, m in conn.masks.items()})
    F.cross_entropy(model(torch.randn(4, 10)), torch.randint(0, 3, (4,))).backward()
    opt.step()
    v = parameters_to_vector(model.parameters())
    vector_to_parameters(v + 0.1, model.parameters())  # every weight, pruned ones too, now nonzero
    opt.zero_grad()
    F.cross_entropy(model(torch.randn(4, 10)), torch.randint(0, 3, (4,))).backward()
    opt.step()
    for n, p in conn.params.items():
        assert not bool(p.detach()[~conn.masks[n]].any()), n
