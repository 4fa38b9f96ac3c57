"""Optimizer wrappers, found by a review: any object keeping an optimizer in ``.optimizer`` was unwrapped and
its inner optimizer hooked, so a Lookahead, whose step writes its slow weights over the fast ones after its
optimizer's step, brought every pruned synapse back at its first sync. Accelerate's wrapper (whose step is its
optimizer's) is unwrapped; any other is refused naming the fix, which keeps pruned synapses at 0.0."""
import pytest
import torch
from torch import nn

import adaptive


class Lookahead(torch.optim.Optimizer):
    """Lookahead as its common copies write it: the base optimizer in ``.optimizer``, the slow weights written
    over the fast ones every ``k`` steps, after the base optimizer's step."""

    def __init__(self, optimizer, alpha=0.5, k=3):
        self.optimizer, self.param_groups, self.alpha, self.k = optimizer, optimizer.param_groups, alpha, k
        self.state, self.steps = optimizer.state, 0
        self.slow = [[p.detach().clone() for p in g["params"]] for g in self.param_groups]

    def zero_grad(self, set_to_none=True):
        self.optimizer.zero_grad(set_to_none)

    def step(self, closure=None):
        loss = self.optimizer.step(closure)
        self.steps += 1
        if self.steps % self.k == 0:
            for g, slow in zip(self.param_groups, self.slow):
                for p, q in zip(g["params"], slow):
                    q.data.add_(p.data - q.data, alpha=self.alpha)
                    p.data.copy_(q.data)
        return loss


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 4))


def _pruned_nonzero(conn):
    return sum(int((p.detach()[~conn.masks[n]] != 0).sum()) for n, p in conn.params.items())


def test_a_wrapper_that_is_not_accelerates_is_refused_naming_the_fix_which_keeps_pruned_synapses_at_zero():
    net = _net()
    opt = Lookahead(torch.optim.Adam(net.parameters(), lr=1e-2))
    conn = adaptive.Connectome(net)
    with pytest.raises(TypeError, match=r"Lookahead keeps an optimizer in \.optimizer.*conn\.apply\(\) after each Lookahead\.step"):
        adaptive.Controller(conn, opt, policy="magnitude", density=0.5, budget="uniform")
    with pytest.raises(TypeError, match="Lookahead keeps an optimizer"):
        conn.attach(opt)
    assert not conn._optimizers  # nothing hooked
    ctrl = adaptive.Controller(conn, opt.optimizer, policy="magnitude", density=0.5, budget="uniform")  # the fix
    revived = 0
    for _ in range(7):
        nn.functional.cross_entropy(net(torch.randn(5, 6)), torch.randint(0, 4, (5,))).backward()
        opt.step()
        conn.apply()
        opt.zero_grad()
        revived += _pruned_nonzero(conn)
    assert ctrl.step_count == 7 and conn.num_live() < conn.num_synapses() and revived == 0


def test_a_learning_rate_scheduler_given_as_the_optimizer_is_named():
    net = _net()
    sched = torch.optim.lr_scheduler.StepLR(torch.optim.SGD(net.parameters(), lr=0.1), 1)
    with pytest.raises(TypeError, match=r"learning-rate scheduler \(StepLR\).*pass its optimizer \(StepLR\.optimizer\)"):
        adaptive.Connectome(net).attach(sched)


def test_accelerates_wrapper_is_unwrapped():
    from accelerate import Accelerator
    from accelerate.optimizer import AcceleratedOptimizer

    from adaptive.optim_state import unwrap_optimizer

    inner = torch.optim.SGD(_net().parameters(), lr=0.1)
    wrapped = Accelerator(cpu=True).prepare(inner)
    assert isinstance(wrapped, AcceleratedOptimizer) and unwrap_optimizer(wrapped) is inner
