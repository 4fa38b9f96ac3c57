"""No host-device synchronisation in the per-step path: between two updates (and two log rows) the
connectome, the controller, the utility windows, gradient clipping, SilentUnits, the recipe's
train_one_epoch and mask-only's loop read no value on the host, so a GPU never waits on them.
Counted on CPU tensors with tests/_syncs.py (the calls that would sync on a GPU are the same)."""
import collections
import warnings

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import adaptive
from adaptive.diagnostics.silent_units import SilentUnits
from adaptive.training import TrainState, train_one_epoch
from _syncs import count_syncs
from _training import cpu_accelerator

accelerator = pytest.fixture(cpu_accelerator)
UPDATE_EVERY = 4


def test_the_counter_sees_each_kind_of_sync():
    t = torch.randn(10)
    m = t > 0
    with count_syncs() as s:
        t.sum().item(), bool(t.any()), float(t.sum()), int(t.argmax()), [0, 1][t.argmax().clamp(max=1)]
        t.tolist(), t.cpu(), t.to("cpu"), t.numpy(), f"{t.sum():.3f}"
        t[m], torch.nonzero(t), torch.where(m), torch.masked_select(t, m), torch.unique(t), torch.equal(t, t)
        torch.tensor([t.sum(), t.max()]), torch.tensor([1.0, 2.0], device=t.device)
    assert s.all == 18 and s.count == 0  # this file is not the project's code
    with count_syncs() as s:
        t * 2, t.topk(3), t.sort(), torch.count_nonzero(t), torch.where(m, t, 0.0), t.to(torch.float64)
        torch.tensor([1.0, 2.0]), torch.zeros(2, device=t.device), torch.as_tensor(t, device=t.device)
        with s.pause():
            bool(t.any())
    assert s.all == 0


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 6, 3), nn.ReLU(), nn.Flatten(), nn.Linear(6 * 6 * 6, 8), nn.ReLU(),
                         nn.Linear(8, 4))


CASES = [("rigl", None), ("set", None), ("threshold", None), ("utility", None), ("gmp", None), ("balanced", None),
         ("magnitude", None), ("gmp", "curvature")] + [
    ("utility", e) for e in ("magnitude", "random", "gradient", "taylor", "obd", "consistency", "curvature")]


@pytest.mark.parametrize("policy,estimator", CASES)
def test_a_plain_training_step_makes_no_sync(policy, estimator):
    """model, optimizer, Connectome, Controller, clip_gradients: steps 5-7 (between the updates at 4
    and 8) read nothing on the host; the update at 8 does (it may: the counter sees the project)."""
    model = _net()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    conn = adaptive.Connectome(model, ensemble="0.weight=kernel;synapse")
    kw = {} if estimator is None else {"estimator": estimator}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        adaptive.Controller(conn, opt, policy=policy, density=0.5, update_every=UPDATE_EVERY, end_step=40,
                            seed=0, **kw)
    x, y = torch.randn(4, 3, 8, 8), torch.randint(0, 4, (4,))
    counts = []
    for step in range(1, 2 * UPDATE_EVERY + 1):
        with count_syncs() as s:
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            adaptive.clip_gradients(model.parameters(), 1.0, conn)
            opt.step()
        counts.append(s.count)
    assert counts[UPDATE_EVERY:2 * UPDATE_EVERY - 1] == [0, 0, 0], counts
    if policy != "magnitude":  # (one shot at 4: nothing at 8)
        assert counts[-1] > 0


def _loader(n=96):
    g = torch.Generator().manual_seed(0)
    data = torch.utils.data.TensorDataset(torch.randn(n, 12, generator=g), torch.randint(0, 4, (n,), generator=g))
    return torch.utils.data.DataLoader(data, batch_size=8)


@pytest.mark.parametrize("policy", ["rigl", "utility", "threshold", "gmp"])
def test_train_one_epoch_syncs_only_at_updates_and_log_rows(accelerator, policy):
    """The recipe's loop with clipping and SilentUnits: the loss, correct count and gradient-norm sums
    stay on the device between rows, so a step that is neither an update nor a row's makes no sync."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 4))
    model, opt, loader = accelerator.prepare(model, torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9),
                                             _loader())
    conn = adaptive.Connectome(model)
    adaptive.Controller(conn, opt, policy=policy, density=0.5, update_every=UPDATE_EVERY, end_step=40, seed=0)
    state = TrainState()
    state.silent_units = SilentUnits.from_connectome(conn)
    seen = []
    with count_syncs() as s:
        for epoch in range(2):  # 12 steps each: the second's first steps too (its end reads the sums)
            train_one_epoch(accelerator, model, opt, loader, state, conn=conn, log_every=5, max_grad_norm=1.0,
                            on_step=lambda st: seen.append((st.step, s.count)))
            seen[-1] = (seen[-1][0], s.count)
    per_step = {step: c - before for (step, c), (_, before) in zip(seen, [(0, 0)] + seen)}
    plain = {k: v for k, v in per_step.items() if k % UPDATE_EVERY and k % 5}
    assert set(plain.values()) == {0}, per_step
    assert per_step[5] > 0 and per_step[4] > 0  # a row and an update read on the host
    assert len(state.metrics) == 4 and state.metrics[0]["grad_norm"] is not None


def test_the_training_bars_loss_reads_the_host_only_when_shown(accelerator):
    """The bar's loss (the mean since it last showed one) is summed on the device: a step that shows
    nothing makes no sync; every 10th step reads it once (and the connectome's density)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 4))
    model, opt, loader = accelerator.prepare(model, torch.optim.SGD(model.parameters(), lr=0.05), _loader())
    conn = adaptive.Connectome(model)

    class Bar:
        shown = []

        def update(self, n):
            pass

        def set_postfix(self, post, refresh=True):
            self.shown.append(post)

    state, seen = TrainState(), []
    with count_syncs() as s:
        for epoch in range(2):
            train_one_epoch(accelerator, model, opt, loader, state, conn=conn, log_every=0, progress=Bar(),
                            on_step=lambda st: seen.append((st.step, s.count)))
            seen[-1] = (seen[-1][0], s.count)
    per_step = {step: c - before for (step, c), (_, before) in zip(seen, [(0, 0)] + seen)}
    plain = {k: v for k, v in per_step.items() if k % 10 and k % 12}  # (an epoch's end reads its sums)
    assert set(plain.values()) == {0}, per_step
    assert per_step[10] > 0 and len(Bar.shown) == 2 and "loss" in Bar.shown[0]


def test_mask_only_steps_between_updates_make_no_sync():
    """optimize_connectome's window (loss, examples, correct, counted positions, -100 labels
    included) is summed on the device and read at the update; the removed count is read there too."""
    from adaptive.controller import Controller
    from adaptive.mask_only import optimize_connectome

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 4))
    loader = _loader(64)
    loader.dataset.tensors[1][::5] = -100
    seen = []
    advance = Controller._advance

    def counted(self):
        seen.append((self.step_count + 1, s.count))
        return advance(self)

    with count_syncs() as s:
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(Controller, "_advance", counted)
            r = optimize_connectome(model, loader, _loader(16), 0.3, window=UPDATE_EVERY, progress=False)
    # between the _advance of step k and that of k + 1 lies step k + 1's batch; steps 2-4 are plain
    # (the first window's update is at 4: its _advance follows the batch of step 4)
    batches = [c - before for (_, before), (_, c) in zip(seen, seen[1:])]
    assert batches[:2] == [0, 0], batches
    assert r.history[0]["train_acc"] is not None


def test_edge_popup_reads_the_host_once_per_training_batch_of_its_own():
    """Edge-popup's own reads per training batch: its loss's finite flag and its labels' range, read together in one
    transfer (adaptive.baselines.edge_popup._batch_verdict); a check of the labels on the host (a read of its own) made
    it two. Counted as the growth from one pass to two (4 more batches) of each line of edge_popup.py: only that
    read grows, by one a batch, besides Adam's step (its step counter, a CPU tensor: free on a GPU)."""
    import inspect
    import re

    import importlib

    mod = importlib.import_module("adaptive.baselines.edge_popup")  # the module (the package's name is the function)
    lines, first = inspect.getsourcelines(mod._batch_verdict)
    source = inspect.getsource(mod).splitlines()
    step_line = 1 + next(i for i, line in enumerate(source) if line.strip() == "opt.step()")

    def per_line(passes):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 4))
        with count_syncs() as s:
            mod.edge_popup(model, _loader(32), _loader(16), [0.5], passes=passes, progress=False)
        got = collections.Counter()
        for where, k in s.where.items():
            hit = re.search(r"adaptive/baselines/edge_popup\.py:(\d+)$", where)
            if hit:
                got[int(hit.group(1))] += k
        return got

    one, two = per_line(1.0), per_line(2.0)
    grew = {line: two[line] - one[line] for line in set(one) | set(two) if two[line] != one[line]}
    grew.pop(step_line, None)
    assert len(grew) == 1, grew
    (line, more), = grew.items()
    assert first <= line < first + len(lines) and more == 4, (grew, first)
