"""The Python API in a long-lived process (a notebook, a sweep calling it many times): what a call leaves
behind must not pile up, and the process's own settings (matplotlib's backend) stay the user's."""
import gc
import os
import subprocess
import sys
import weakref

import pytest
import torch
from torch import nn

import adaptive
from _scripts import CHILD_TIMEOUT  # noqa: E402

torch.set_num_threads(1)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _trained_and_dropped(pruned: bool):
    """A model built, masked through an attached connectome for a step or two, then dropped without
    ``conn.detach()``, as a sweep's run ends: weak references to its weights and their gradients."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(12, 10), nn.ReLU(), nn.Linear(10, 4))
    conn = adaptive.Connectome(model)
    if pruned:
        g = torch.Generator().manual_seed(1)
        conn.set_masks({n: torch.rand(m.shape, generator=g) < 0.5 for n, m in conn.masks.items()})
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    conn.attach(opt)
    for _ in range(2):
        nn.functional.cross_entropy(model(torch.randn(16, 12)), torch.randint(0, 4, (16,))).backward()
        opt.step()
    refs = [weakref.ref(t) for p in model.parameters() for t in (p, p.grad)]
    return refs


@pytest.mark.parametrize("pruned", [True, False])
def test_a_dropped_model_trained_through_a_connectome_is_freed(pruned):
    # the gradient hooks (grad_masking) held the connectome's hot-path cache, its parameters among it: each
    # weight kept itself alive through its own C++-held hook, out of the collector's sight, so every run of a
    # sweep kept its model's pruned weights and their gradients (GPU memory, on a GPU) for good
    refs = _trained_and_dropped(pruned)
    gc.collect()
    alive = [r() for r in refs if r() is not None]
    assert not alive, f"{len(alive)} weights or gradients of the dropped model still alive: {[tuple(t.shape) for t in alive]}"


def test_a_connectome_dropped_while_attached_lets_go_of_its_masks_while_its_model_lives_on():
    # a notebook cell run again (or a sweep over one model) builds a new connectome and optimizer for the same model
    # and drops the old pair without detach(): the old gradient hooks stay on the weights (autograd holds them), and
    # each kept its connectome's masks (a tensor the size of each pruned weight) for good, one more hook a weight a run
    from adaptive.grad_masking import _GradHook

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(12, 10), nn.ReLU(), nn.Linear(10, 4))

    def run(seed):
        conn = adaptive.Connectome(model)
        g = torch.Generator().manual_seed(seed)
        conn.set_masks({n: torch.rand(m.shape, generator=g) < 0.5 for n, m in conn.masks.items()})
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        conn.attach(opt)
        for _ in range(2):
            opt.zero_grad()
            nn.functional.cross_entropy(model(torch.randn(16, 12)), torch.randint(0, 4, (16,))).backward()
            opt.step()
        assert all(bool((p.grad[~conn.masks[n]] == 0).all()) for n, p in conn.params.items())  # the hooks still mask

    def held():
        gc.collect()
        objs = gc.get_objects()
        return (sum(1 for o in objs if issubclass(type(o), torch.Tensor)),  # (type: no __class__ read)
                sum(1 for o in objs if type(o) is _GradHook))

    run(0)
    before = held()
    for seed in range(1, 4):
        run(seed)
    assert held() == before  # (tensors, hooks) alive: what one run leaves, not one more set a run


def test_connectomes_never_attached_or_detached_leave_nothing_behind_when_collected():
    # every collected connectome handed its hook handles to grad_masking's list of those to remove at the next
    # register(), an empty list where it had none (never attached, or detached): a process building connectomes
    # without attaching one (diagnostics, graph exports, a sweep of mask-only runs) piled them up for good
    from adaptive.grad_masking import _ORPHANED

    model = nn.Sequential(nn.Linear(12, 10), nn.ReLU(), nn.Linear(10, 4))
    gc.collect()
    before = len(_ORPHANED)
    for i in range(20):
        conn = adaptive.Connectome(model)
        if i % 2:
            conn.attach(torch.optim.SGD(model.parameters(), lr=0.1))
            conn.detach()
        del conn
    gc.collect()
    assert len(_ORPHANED) <= before


def test_knowledge_distribution_fine_tuned_frees_its_copy():
    # its fine-tune trains a copy of the model through an attached connectome: 6 tensors (a pruned layer's
    # weight, gradient and mask each) outlived every call before
    from adaptive.diagnostics import knowledge_distribution

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 4))
    x = torch.randn(64, 6)
    data = [(x[i:i + 16], x[i:i + 16, :4].argmax(1)) for i in range(0, 64, 16)]

    def run():
        knowledge_distribution(model, data, counts=[0, 20, 40], finetune_batches=2, finetune_loader=data)

    def tensors():
        gc.collect()
        return sum(1 for o in gc.get_objects() if issubclass(type(o), torch.Tensor))  # (type: no __class__ read)

    run()
    before = tensors()
    for _ in range(3):
        run()
    assert tensors() == before


BACKEND_SCRIPT = r"""
import sys, tempfile, torch, matplotlib
matplotlib.use("svg")
import matplotlib.pyplot as plt
plt.figure()
import adaptive, graphs
net = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2))
g = graphs.build(adaptive.Connectome(net), example_input=torch.randn(1, 4))
out = tempfile.mkdtemp(dir=sys.argv[1])
paths = graphs.figures.plot_all(g, out)
print(matplotlib.get_backend().lower(), plt.get_fignums() == [1], len(paths) > 0)
"""


def test_graph_figures_keep_the_users_backend(tmp_path):
    # graphs.figures switched matplotlib to Agg at every figure (matplotlib.use), whatever the user picked: a
    # notebook's plt.show() after it showed nothing; the diagnostics' figures already kept the user's choice
    env = {k: v for k, v in os.environ.items() if k not in ("MPLBACKEND", "DISPLAY", "WAYLAND_DISPLAY")}
    env.update(PYTHONPATH=ROOT, OMP_NUM_THREADS="1", MPLCONFIGDIR=str(tmp_path / "mpl"))
    r = subprocess.run([sys.executable, "-c", BACKEND_SCRIPT, str(tmp_path)], env=env, cwd=str(tmp_path),
                       capture_output=True, text=True, timeout=CHILD_TIMEOUT)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines()[-1] == "svg True True"  # the user's backend and open figure, figures written


def _mask_only_data():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(96, 8, generator=g)
    y = x[:, :3].argmax(1)
    train = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x[:64], y[:64]), batch_size=16)
    holdout = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x[64:], y[64:]), batch_size=16)
    return train, holdout


def _mask_only_runs():
    from adaptive.baselines.edge_popup import edge_popup

    def oc(model, train, holdout):
        r = adaptive.optimize_connectome(model, train, holdout, target=[0.3, 0.6], progress=False, seed=0)
        return r.conn, {k: (s.masks, s.holdout_loss) for k, s in r.snapshots.items()}

    def ep(model, train, holdout):
        conn, snaps = edge_popup(model, train, holdout, targets=[0.3, 0.6], progress=False, seed=0)
        return conn, {k: (s["masks"], s["holdout_loss"]) for k, s in snaps.items()}
    return {"optimize_connectome": oc, "edge_popup": ep}


@pytest.mark.parametrize("call", ["optimize_connectome", "edge_popup"])
def test_mask_only_calls_run_alike_under_no_grad_and_inference_mode(call):
    # they learn masks from gradients: called under torch.no_grad() (a notebook cell's, say) they failed on the
    # first backward with torch's "element 0 of tensors does not require grad", and under torch.inference_mode()
    # blamed loss_fn for an output not connected to the model; the diagnostics already ran under either
    run = _mask_only_runs()[call]
    train, holdout = _mask_only_data()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
    results = []
    for mode in (None, torch.no_grad, torch.inference_mode):
        if mode is None:
            conn, snaps = run(model, train, holdout)
        else:
            with mode():
                conn, snaps = run(model, train, holdout)
                assert not torch.is_grad_enabled()  # the caller's mode is back
        results.append(snaps)
        conn.set_masks({n: torch.ones_like(m) for n, m in conn.masks.items()})  # the dense start again
    for other in results[1:]:
        assert other.keys() == results[0].keys()
        for k, (masks, loss) in other.items():
            assert loss == results[0][k][1]
            assert all(torch.equal(m, results[0][k][0][n]) for n, m in masks.items())


@pytest.mark.parametrize("policy", ["rigl", "utility"])
def test_a_controller_built_under_inference_mode_trains_outside_it(policy):
    # its gradient statistics were made inference tensors there, and the first step outside it failed with torch's
    # "Inplace update to inference tensor outside InferenceMode"
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with torch.inference_mode():
        conn = adaptive.Connectome(model)
        ctrl = adaptive.Controller(conn, opt, policy=policy, density=0.5, update_every=2, end_step=6, seed=0)
    for _ in range(6):
        nn.functional.cross_entropy(model(torch.randn(16, 8)), torch.randint(0, 3, (16,))).backward()
        opt.step()
        opt.zero_grad()
    assert ctrl.step_count == 6 and abs(conn.density() - 0.5) < 0.02
