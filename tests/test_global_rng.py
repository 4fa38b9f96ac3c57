"""Library calls leave the global random generators (torch's CPU and CUDA ones, Python's ``random``,
NumPy's) as they found them, so that a script draws the same numbers next whether or not it built a
graph, compacted a model or ran a diagnostic in between. Each case builds its model and data before
the states are taken; only the call is measured. Cases marked "guard" were already clean."""
import inspect
import json
import os
import random
import sys
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import adaptive
import graphs
from adaptive import Connectome, Controller
from adaptive import diagnostics as D
from graphs.trace import runnable_example_input

torch.set_num_threads(1)

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _global_rng import global_rng_states, moved_generators  # noqa: E402


def convnet(dropout=0.0):
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(2),
                         nn.Flatten(), nn.Dropout(dropout), nn.Linear(16, 3))


def mlp(dropout=0.0):
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Dropout(dropout), nn.Linear(16, 3))


class Tokens(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb, self.fc = nn.Embedding(20, 8), nn.Linear(8, 3)

    def forward(self, x):
        return self.fc(self.emb(x).mean(1))


class Noisy(nn.Module):
    """Draws from the global generator in every forward, eval mode too (user code graphs runs)."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 3)

    def forward(self, x):
        return self.fc(x + 0.01 * torch.randn_like(x))


def loader(shape=(8,), own_generator=True, n=32):
    """Fixed data; ``own_generator``: the loader seeds its iterators from its own generator, so the
    call's own draws are all that is measured; without, every pass draws a seed from the global one
    (PyTorch's DataLoader does), which a diagnostic must not let through."""
    g = torch.Generator().manual_seed(1)
    ds = TensorDataset(torch.randn(n, *shape, generator=g), torch.randint(0, 3, (n,), generator=g))
    return DataLoader(ds, batch_size=8, generator=torch.Generator() if own_generator else None)


def masked(model):
    conn = Connectome(model)
    g = torch.Generator().manual_seed(3)
    conn.set_masks({k: (torch.rand(v.shape, generator=g) < 0.5).to(v.device) for k, v in conn.masks.items()})
    return conn


def controller_steps(policy="set", steps=3, **kw):
    """Setup: a controller editing at every step; the call: ``steps`` optimizer steps (eval mode: no
    dropout, the controller's draws only)."""
    def setup():
        m = mlp()
        opt = torch.optim.SGD(m.parameters(), lr=0.1)
        Controller(Connectome(m), opt, policy=policy, density=0.5, update_every=1, **kw)
        x, y = torch.randn(8, 8, generator=torch.Generator().manual_seed(2)), torch.arange(8) % 3
        return m.eval(), opt, x, y

    def call(s):
        m, opt, x, y = s
        for _ in range(steps):
            opt.zero_grad()
            F.cross_entropy(m(x), y).backward()
            opt.step()
    return setup, call


def crawl_setup():
    m = mlp().eval()
    ctrl = Controller(Connectome(m, mode="mask_only"), policy="crawl", update_every=2)
    return m, ctrl


def crawl_steps(s):
    m, ctrl = s
    x, y = torch.randn(8, 8, generator=torch.Generator().manual_seed(2)), torch.arange(8) % 3
    for _ in range(4):
        F.cross_entropy(m(x), y).backward()
        ctrl.step()


def silent_units(m):
    s = D.SilentUnits({"0": m[0], "3": m[3]})
    F.cross_entropy(m.eval()(torch.zeros(2, 8)), torch.tensor([0, 1])).backward()
    s.observe()


def band_scaler_backward(m):
    D.BandGradientScaler(m, layers=["6"], depths={"6": torch.zeros(16)})
    F.cross_entropy(m.eval()(torch.zeros(2, 3, 8, 8)), torch.tensor([0, 1])).backward()


def exporters(setup):
    conn, tmp = setup
    g = graphs.build(conn, level="unit", example_input=torch.zeros(1, 3, 8, 8))
    for ext in ("graphml", "gexf", "json"):
        graphs.write(g, os.path.join(tmp, "g." + ext))
    graphs.to_networkx(g)
    graphs.summary(g)


def progress(tmp):
    with open(os.path.join(tmp, "events.jsonl"), "w") as f:
        f.write(json.dumps({"step": 10, "pruned": 100, "grown": 0, "density": 0.9}) + "\n")
    with open(os.path.join(tmp, "metrics.csv"), "w") as f:
        f.write("step,split,loss,accuracy\n0,train,2.3,0.1\n15,holdout,1.0,0.7\n")
    D.progress(tmp).plot(os.path.join(tmp, "p.png"))


def fake_loaders():
    return adaptive.get_dataloaders("fake", batch_size=16, train_size=64, test_size=32, shape=(3, 8, 8))


def one_pass(which):
    return lambda d: [b for b in getattr(d, which)]


def edge_popup(m, own_generator=True):
    from adaptive.baselines.edge_popup import edge_popup as ep
    return ep(m, loader(own_generator=own_generator), loader(), [0.5], passes=1, progress=False)


def cuda_convnet(dropout=0.0):
    return convnet(dropout).cuda()


class Drawing(torch.utils.data.Dataset):
    """Fixed examples through a random transform of every generator (a plugin's evaluation transform)."""

    def __init__(self, n=32):
        g = torch.Generator().manual_seed(1)
        self.x, self.y = torch.randn(n, 8, generator=g), torch.randint(0, 3, (n,), generator=g)

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        noise = torch.randn(8) + random.random() + float(np.random.rand())
        return self.x[i] + 0.01 * noise, int(self.y[i])


def held_out_draw(arg):
    from adaptive.holdout_check import HeldOutLoss

    model, data = arg
    return HeldOutLoss(model, data, batches=2, batch_size=8, device="cpu")


needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def case(name, setup, call, marks=()):
    """``setup()`` (or ``setup(tmp)``: a fresh folder) -> the argument of ``call``; ``name``: the test id."""
    return pytest.param(setup, call, id=name, marks=marks)


CASES = [
    # graphs: the guessed example input, the verification inputs, the model's own draws while traced
    case("graphs.build guessed input", convnet, lambda m: graphs.build(model=m, level="unit")),
    case("graphs.build guessed token ids", Tokens, lambda m: graphs.build(model=m, level="unit")),
    case("graphs.build model drawing in forward", Noisy,
         lambda m: graphs.build(model=m, level="unit", example_input=torch.zeros(1, 8))),
    case("graphs.trace guessed input", convnet, lambda m: graphs.trace(m)),
    case("graphs.trace.runnable_example_input", convnet, runnable_example_input),
    case("graphs.compact guessed input", lambda: masked(convnet()), lambda c: graphs.compact(c.model, c)),
    case("graphs.compact given input (verification)", lambda: masked(convnet()),
         lambda c: graphs.compact(c.model, c, example_input=torch.zeros(2, 3, 8, 8))),
    case("graphs.compact token ids (verification)", Tokens, lambda m: graphs.compact(m)),
    case("graphs.compact model drawing in forward", Noisy,
         lambda m: graphs.compact(m, example_input=torch.zeros(2, 8), verify=False)),
    case("guard: graphs exporters and summary", lambda tmp: (masked(convnet()), tmp), exporters),
    # adaptive: connectome and controller
    case("guard: Connectome", convnet, lambda m: Connectome(m)),
    case("guard: Controller(rigl) random init", mlp, lambda m: Controller(Connectome(m), policy="rigl", density=0.5)),
    case("guard: Controller(gmp)", mlp, lambda m: Controller(Connectome(m), policy="gmp", density=0.5, end_step=10)),
    case("guard: Controller(set, grow_init=random) steps", *controller_steps("set", grow_init="random")),
    case("guard: Controller(rigl) steps", *controller_steps("rigl")),
    case("guard: Controller(utility, estimator=random) steps", *controller_steps("utility", estimator="random")),
    case("guard: Controller(crawl, mask_only) steps", crawl_setup, crawl_steps),
    case("guard: optimize_connectome", mlp,
         lambda m: adaptive.optimize_connectome(m, loader(), loader(), [0.3], passes=1, progress=False)),
    case("guard: edge_popup", mlp, edge_popup),
    case("optimize_connectome loader without generator", lambda: mlp(0.5).train(),
         lambda m: adaptive.optimize_connectome(m, loader(own_generator=False), loader(own_generator=False), [0.3],
                                                passes=1, verify_batches=1, progress=False)),
    case("edge_popup loader without generator", mlp, lambda m: edge_popup(m, own_generator=False)),
    # diagnostics: traced depths, dropout in train mode, loaders without a generator
    case("diagnostics.resolve_depths traced", convnet, lambda m: D.resolve_depths(m, "6")),
    case("BandGradientScaler traced depths", convnet, lambda m: D.BandGradientScaler(m, layers=["6"])),
    case("guard: BandGradientScaler backward", convnet, band_scaler_backward),
    case("gradient_by_depth dropout", lambda: convnet(0.5),
         lambda m: D.gradient_by_depth(m, loader((3, 8, 8)), layer="6", batches=2, depths=torch.zeros(16))),
    case("gradient_by_depth loader without generator", convnet,
         lambda m: D.gradient_by_depth(m, loader((3, 8, 8), False), layer="6", batches=2, depths=torch.zeros(16))),
    case("collinearity dropout", lambda: mlp(0.5), lambda m: D.collinearity(m, loader(), batches=2)),
    case("knowledge_distribution finetune dropout", lambda: mlp(0.5),
         lambda m: D.knowledge_distribution(m, loader(), order_loader=loader(), points=3, finetune_batches=2,
                                        finetune_loader=loader())),
    case("knowledge_distribution loader without generator", mlp,
         lambda m: D.knowledge_distribution(m, loader(own_generator=False), order_loader=loader(), points=3)),
    case("diagnostics.evaluate loader without generator", mlp, lambda m: D.evaluate(m, loader(own_generator=False))),
    case("removal_scores loader without generator", lambda: Connectome(mlp()),
         lambda c: D.removal_scores(c, loader(own_generator=False), estimator="taylor", batches=2)),
    case("guard: SilentUnits", mlp, silent_units),
    case("guard: progress", lambda tmp: tmp, progress),
    # data: the holdout and test loaders seed their passes from their own generators
    case("guard: get_dataloaders", lambda: None, lambda _: fake_loaders()),
    case("guard: get_dataloaders train pass", fake_loaders, one_pass("train")),
    case("get_dataloaders holdout pass", fake_loaders, one_pass("holdout")),
    case("get_dataloaders test pass", fake_loaders, one_pass("test")),
    # the held-out check of recipes/adaptive.py --line_search: a dataset and a model that draw
    case("HeldOutLoss draw from a dataset that draws", lambda: (mlp(), Drawing()), lambda a: held_out_draw(a).data),
    case("HeldOutLoss check of a model that draws", lambda: held_out_draw((Noisy(), Drawing())), lambda check: check()),
    # on CUDA, the draws would move the device's generator
    case("graphs.compact on CUDA", lambda: masked(cuda_convnet()), lambda c: graphs.compact(c.model, c),
         marks=needs_cuda),
    case("optimize_connectome on CUDA loader without generator", lambda: mlp().cuda(),
         lambda m: adaptive.optimize_connectome(m, loader(own_generator=False), loader(), [0.3], passes=1,
                                                progress=False), marks=needs_cuda),
    case("gradient_by_depth dropout on CUDA", lambda: cuda_convnet(0.5),
         lambda m: D.gradient_by_depth(m, loader((3, 8, 8)), layer="6", batches=2, depths=torch.zeros(16)),
         marks=needs_cuda),
]


@pytest.mark.parametrize("setup,call", CASES)
def test_call_leaves_the_global_generators_alone(setup, call, tmp_path):
    arg = setup(str(tmp_path)) if "tmp" in inspect.signature(setup).parameters else setup()
    torch.manual_seed(123)
    random.seed(5)
    np.random.seed(7)
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.manual_seed_all(11)
    before = global_rng_states()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        call(arg)
    assert moved_generators(before, global_rng_states()) == []


class Recorder(nn.Module):
    """Keeps every real input its eager forward sees (a class attribute: compact runs copies)."""
    seen = []

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 3)

    def forward(self, x):
        if not isinstance(x, torch.fx.Proxy):
            Recorder.seen.append(x.clone())
        return self.fc(x)


def test_guessed_and_verification_inputs_do_not_depend_on_the_global_seed():
    """The library's own draws come from generators of its own: the same guesses and the same check
    inputs whatever the caller seeded, so two calls give one result."""
    def run(seed):
        torch.manual_seed(seed)
        tokens = runnable_example_input(Tokens())
        x = runnable_example_input(convnet())
        Recorder.seen.clear()
        torch.manual_seed(seed)
        graphs.compact(Recorder())
        return [tokens, x, *Recorder.seen]

    a, b = run(1), run(2)
    assert len(a) == len(b) > 4 and all(torch.equal(u, v) for u, v in zip(a, b))


def test_a_kept_call_still_warns_at_the_callers_line():
    """The wrapper that puts the generators back adds no frame outside the package, so a warning
    still names the line of the user's code that made the call."""
    with pytest.warns(UserWarning, match="removal order read") as got:
        D.knowledge_distribution(mlp(), loader(), order_loader=loader(), estimator="taylor", points=2)
    assert {w.filename for w in got if "removal order read" in str(w.message)} == {__file__}
