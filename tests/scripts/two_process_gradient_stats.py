"""Run as ranks 0 and 1 (tests/_ports.two_rank_records): each observes a utility window and records the
reduced statistics and two estimators' scores. ``window`` is also run on one process by the test, for
the statistics the windows of both processes must reproduce."""
import sys

import torch
import torch.nn.functional as F
from torch import nn

import adaptive
from adaptive.utility.stats import GradientStats

STEPS = 2  # observations of each process


def batches():
    """Four batches of 8: process r observes batches r and r + 2 of them."""
    g = torch.Generator().manual_seed(5)
    return [(torch.randn(8, 6, generator=g), torch.randint(0, 3, (8,), generator=g)) for _ in range(4)]


def window(observed, ddp=False):
    """The reduced statistics of a window of ``observed`` batches (mask_only, all synapses present) and
    the consistency and evidence estimators' scores of its first layer, as lists."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3))
    conn = adaptive.Connectome(net, mode="mask_only")
    model = nn.parallel.DistributedDataParallel(net) if ddp else net
    ctrl = adaptive.Controller(conn, policy="utility", estimator="consistency", density=1.0, update_every=100,
                               seed=0, verify=False, batch_size=8)
    for x, y in observed:
        net.zero_grad()
        F.cross_entropy(model(x), y).backward()
        ctrl.observe()
    s = ctrl.stats
    s.reduce()
    n = "0.weight"
    ctx = ctrl.context(n, 0)
    return {"n": s.n(n), "mean": s.mean(n).view(-1).tolist(), "variance": s.batch_variance(n).view(-1).tolist(),
            "consistency": ctrl.scores("cost")[n].view(-1).tolist(),
            "evidence": adaptive.get_estimator("evidence").removal_cost(ctx).view(-1).tolist()}


def same_gradients(threads):
    """The window count of a layer of 2**18 weights given the same gradients on every process (as DDP's averaged
    one), of magnitudes 10**-7 to 10**7, whose float sums' last bits follow the order of their additions, reduced
    with ``threads`` torch threads (each process its own number: another order of a float sum's additions)."""
    g = torch.Generator().manual_seed(0)
    net = nn.Linear(512, 512, bias=False)
    conn = adaptive.Connectome(net, mode="mask_only")
    stats = GradientStats(conn)
    for _ in range(STEPS):
        net.weight.grad = torch.randn(512, 512, generator=g) * torch.exp(torch.randn(512, 512, generator=g) * 8)
        stats.observe()
    torch.set_num_threads(threads)
    try:
        stats.reduce()
    finally:
        torch.set_num_threads(1)
    return {"n": stats.n("weight")}


def short_window_warnings():
    """The warnings of controllers in mask_only mode updating at every step, by consistency (a per-sample
    Fisher) and by evidence (a t-statistic): over two processes each window holds two batch gradients."""
    import warnings

    net = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3))
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        for est in ("consistency", "evidence"):
            adaptive.Controller(adaptive.Connectome(net, mode="mask_only"), policy="crawl", estimator=est,
                                update_every=1, verify=False)
    return [str(w.message)[:60] for w in seen]


def run(rank, folder):
    from _rank_record import record_cases

    own = batches()[rank::2]
    both = [(torch.cat([a[0], b[0]])[8 * rank:8 * rank + 8], torch.cat([a[1], b[1]])[8 * rank:8 * rank + 8])
            for a, b in zip(batches()[0::2], batches()[1::2])]
    cases = {"own": lambda _: window(own),  # each process its own batches (mask_only over several processes)
             "same": lambda _: window(batches()),  # every process the same four
             "ddp": lambda _: window(both, ddp=True),
             "same_by_threads": lambda _: same_gradients(1 + rank),  # DDP averages the gradients of a 16-example batch
             "short_window": lambda _: short_window_warnings()}
    record_cases(rank, folder, {k: k for k in cases}, lambda k: cases[k](k))


if __name__ == "__main__":
    run(int(sys.argv[2]), sys.argv[1])
