"""The paths a GPU run takes, on the CPU and on a CUDA device when there is one: every policy and
estimator trains on the device with pruned weights exactly 0; recurrent layers run their masked
weights (cuDNN's flat buffer on CUDA); mixed precision; a checkpoint taken on
one device resumes on the other; mask-only keeps the weights bit-exact there; the diagnostics and
the graphs of a model on the device give the CPU's numbers. CI has no GPU: the cuda cases skip
there (run them with ``pytest tests/test_accelerator.py`` on a machine that has one)."""
import copy
import os

os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # deterministic cuBLAS, before its first handle

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import adaptive
from adaptive.mask_only import changed_weights, optimize_connectome
from adaptive.policies import policy_names
from adaptive.utility import estimator_names

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
DEVICES = ["cpu", pytest.param("cuda", marks=CUDA)]


@pytest.fixture
def exact():
    """Full-precision float32 (no TF32 in cuDNN or cuBLAS) and deterministic kernels, put back after."""
    saved = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32,
             torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark)
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.benchmark = False
    torch.use_deterministic_algorithms(True)
    yield
    (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32, det,
     torch.backends.cudnn.benchmark) = saved
    torch.use_deterministic_algorithms(det)


class ConvNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):  # any input size; no pooling op without a deterministic CUDA backward
        return self.fc(F.relu(self.bn(self.conv(x))).mean((2, 3)))


def mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(20, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 10))


def batches(n, seed=1, shape=(20,), classes=10):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(16, *shape, generator=g), torch.randint(0, classes, (16,), generator=g)) for _ in range(n)]


def pruned_nonzero(conn):
    return sum(int(p.detach()[~conn.masks[n]].count_nonzero()) for n, p in conn.params.items())


def train(model, opt, conn, data, device):
    for x, y in data:
        F.cross_entropy(model(x.to(device)), y.to(device)).backward()
        opt.step()
        opt.zero_grad()
        assert pruned_nonzero(conn) == 0


def _controller(model, device, policy, estimator=None, density=0.3):
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    conn = adaptive.Connectome(model)
    kw = dict(density=density) if policy == "threshold" else dict(density=density, budget="uniform")
    if estimator is not None:
        kw["estimator"] = estimator
    ctrl = adaptive.Controller(conn, opt, policy=policy, update_every=3, end_step=12, seed=0, **kw)
    return opt, conn, ctrl


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("policy", sorted(set(policy_names()) - {"crawl"}))  # crawl: mask-only, below
def test_every_policy_trains_on_the_device(device, policy):
    model = mlp().to(device)
    opt, conn, ctrl = _controller(model, device, policy)
    train(model, opt, conn, batches(14), device)
    assert ctrl.events and all(m.device.type == device for m in conn.masks.values())
    assert conn.density() < 1.0
    if policy != "threshold":
        assert conn.density() == pytest.approx(0.3, abs=0.01)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("estimator", estimator_names())
def test_every_estimator_scores_on_the_device(device, estimator):
    model = mlp().to(device)
    opt, conn, ctrl = _controller(model, device, "utility", estimator=estimator)
    train(model, opt, conn, batches(14), device)
    assert ctrl.events and conn.density() == pytest.approx(0.3, abs=0.01)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_mixed_precision_keeps_pruned_weights_exactly_zero(device, dtype):
    if device == "cpu" and dtype == torch.float16:
        pytest.skip("float16 autocast with a GradScaler is the GPU recipe")
    model = mlp().to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    conn = adaptive.Connectome(model)
    ctrl = adaptive.Controller(conn, opt, policy="rigl", density=0.2, update_every=3, end_step=12, seed=0)
    scaler = torch.amp.GradScaler(device, enabled=dtype == torch.float16)
    for x, y in batches(14):
        with torch.autocast(device, dtype=dtype):
            loss = F.cross_entropy(model(x.to(device)), y.to(device))
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        opt.zero_grad()
        assert pruned_nonzero(conn) == 0
    assert len(ctrl.events) >= 3 and conn.density() == pytest.approx(0.2, abs=0.01)


def _states(model, opt, conn, ctrl):
    return copy.deepcopy((model.state_dict(), opt.state_dict(), conn.state_dict(), ctrl.state_dict()))


def _load(states, model, opt, conn, ctrl):
    msd, osd, csd, ksd = states
    model.load_state_dict(msd)
    opt.load_state_dict(osd)
    conn.load_state_dict(csd)
    ctrl.load_state_dict(ksd)


@pytest.mark.parametrize("device", DEVICES)
def test_resume_on_the_device_is_bit_exact(device, exact):
    """Invariant 5 where the run lives: stop at step 6, resume in a new process-like copy."""
    data = batches(12)
    model = mlp().to(device)
    opt, conn, ctrl = _controller(model, device, "rigl")
    train(model, opt, conn, data[:6], device)
    states = _states(model, opt, conn, ctrl)
    train(model, opt, conn, data[6:], device)

    model2 = mlp(seed=5).to(device)
    opt2, conn2, ctrl2 = _controller(model2, device, "rigl")
    _load(states, model2, opt2, conn2, ctrl2)
    train(model2, opt2, conn2, data[6:], device)
    assert len(ctrl2.events) == len(ctrl.events) == 5  # init, steps 3, 6, 9, 12
    for n in conn.masks:
        assert torch.equal(conn.masks[n], conn2.masks[n]), n
    for (n, p), p2 in zip(model.state_dict().items(), model2.state_dict().values()):
        assert torch.equal(p, p2), n


@pytest.mark.parametrize("src,dst", [("cuda", "cpu"), ("cpu", "cuda")])
@CUDA
def test_a_checkpoint_moves_between_devices(src, dst):
    """A run checkpointed on the GPU goes on on the CPU, and the other way: every state follows the
    model to its device (estimator statistics, optimizer moments, masks)."""
    data = batches(12)
    model = mlp().to(src)
    opt, conn, ctrl = _controller(model, src, "rigl")
    train(model, opt, conn, data[:5], src)
    states = _states(model, opt, conn, ctrl)
    model2 = mlp(seed=5).to(dst)
    opt2, conn2, ctrl2 = _controller(model2, dst, "rigl")
    _load(states, model2, opt2, conn2, ctrl2)
    for n in conn.masks:
        assert conn2.masks[n].device.type == dst and torch.equal(conn.masks[n].cpu(), conn2.masks[n].cpu())
    train(model2, opt2, conn2, data[5:], dst)
    assert len(ctrl2.events) == 5 and conn2.density() == pytest.approx(0.3, abs=0.01)


@pytest.mark.parametrize("device", DEVICES)
def test_an_all_ones_connectome_computes_the_plain_model_exactly(device, exact):
    """Invariant 3 on the device, forward and backward."""
    torch.manual_seed(0)
    plain = ConvNet().to(device)
    model = copy.deepcopy(plain)
    conn = adaptive.Connectome(model, ensemble="kernel")
    assert conn.density() == 1.0
    x = torch.randn(8, 3, 8, 8, device=device)
    y = torch.randint(0, 4, (8,), device=device)
    for m in (plain, model):
        F.cross_entropy(m(x), y).backward()
    assert torch.equal(plain(x), model(x))
    for (n, p), q in zip(plain.named_parameters(), model.parameters()):
        assert torch.equal(p.grad, q.grad), n


class Recurrent(nn.Module):
    """A GRU classifier (batch first), a bidirectional LSTM with projections, a sequence-first RNN."""

    def __init__(self, cell):
        super().__init__()
        kw = dict(GRU=dict(num_layers=2, batch_first=True), LSTM=dict(bidirectional=True, proj_size=3, batch_first=True),
                  RNN=dict(nonlinearity="tanh"))[cell]
        self.rnn = getattr(nn, cell)(6, 8, **kw)
        self.head = nn.Linear(6 if cell == "LSTM" else 8, 4)  # the LSTM: 2 directions x 3 projected

    def forward(self, x):  # x: [B, T, 6]
        if not self.rnn.batch_first:
            return self.head(self.rnn(x.transpose(0, 1))[0][-1])
        return self.head(self.rnn(x)[0][:, -1])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("cell", ["GRU", "LSTM", "RNN"])
def test_recurrent_layers_run_on_the_device_with_their_masked_weights(device, cell, exact):
    """On CUDA an RNN runs cuDNN on one flat buffer that its matrices are views of (re-made when the
    model moves, after the connectome was built): the forward must read the masked weights, as a
    vanilla twin loaded from dense_state_dict() does, through controller edits too."""
    torch.manual_seed(0)
    model = Recurrent(cell)
    conn = adaptive.Connectome(model)
    model.to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    adaptive.Controller(conn, opt, policy="rigl", density=0.3, budget="uniform", update_every=2, end_step=8, seed=0)
    data = batches(6, shape=(5, 6), classes=4)
    train(model, opt, conn, data, device)
    assert all(w is getattr(model.rnn, n) for w, n in zip(model.rnn._flat_weights, model.rnn._flat_weights_names))
    twin = Recurrent(cell).to(device)
    twin.load_state_dict(conn.dense_state_dict())
    x = data[0][0].to(device)
    with torch.no_grad():
        assert torch.equal(model(x), twin(x))
        model.eval(), twin.eval()
        assert torch.equal(model(x), twin(x))


@pytest.mark.parametrize("device", DEVICES)
def test_connectome_files_load_onto_either_device(device, tmp_path):
    model = ConvNet().to(device)
    conn = adaptive.Connectome(model, ensemble="kernel")
    g = torch.Generator().manual_seed(0)
    conn.set_ensemble_masks({n: torch.rand(conn.granularity_of(n).ensemble_shape(m.shape), generator=g) < 0.5
                             for n, m in conn.masks.items()})
    conn.save(tmp_path / "c.safetensors")
    for other in ("cpu", device):
        conn2 = adaptive.Connectome.load(tmp_path / "c.safetensors", ConvNet().to(other))
        for n, m in conn.masks.items():
            assert conn2.masks[n].device.type == other and torch.equal(conn2.masks[n].cpu(), m.cpu())
            assert conn2.params[n].detach()[~conn2.masks[n]].count_nonzero() == 0
    on_device, on_cpu = conn.dense_state_dict(), conn.dense_state_dict(device="cpu")
    assert {v.device.type for v in on_device.values()} == {device} and {v.device.type for v in on_cpu.values()} == {"cpu"}
    torch.save(on_cpu, tmp_path / "plain.pt")  # what the recipes write: it loads on a machine without a GPU
    plain = ConvNet()
    plain.load_state_dict(torch.load(tmp_path / "plain.pt", weights_only=True))
    for k, v in plain.state_dict().items():
        assert torch.equal(v, on_device[k].cpu()), k


def _image_loaders(n=96, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 4
    x = torch.randn(n, 3, 8, 8, generator=g) + y.view(-1, 1, 1, 1).float() * 0.3
    return (DataLoader(TensorDataset(x, y), batch_size=16, shuffle=True, generator=g),
            DataLoader(TensorDataset(x[:32], y[:32]), batch_size=16))


@pytest.mark.parametrize("device", DEVICES)
def test_mask_only_on_the_device_keeps_every_surviving_weight_bit_exact(device):
    torch.manual_seed(0)
    model = ConvNet().to(device)
    with torch.no_grad():
        model.bn.running_mean.uniform_(-0.5, 0.5)
        model.bn.running_var.uniform_(0.5, 2.0)
    before = copy.deepcopy(model.state_dict())
    tr, ho = _image_loaders()  # CPU batches: the optimisation moves them to the model's device
    r = optimize_connectome(model, tr, ho, [0.3, 0.6], passes=1.0, window=2, edit_fraction=0.1, progress=False)
    assert changed_weights(r.conn) == 0
    assert r.snapshots["0.6"].removed == pytest.approx(0.6 * r.conn.num_synapses(), abs=8)
    for label in r.snapshots:
        r.use(label)
        sd = model.state_dict()
        for k, v in before.items():
            if k in r.conn.masks:
                m = r.conn.masks[k]
                assert torch.equal(sd[k][m], v[m]) and not sd[k][~m].any(), k
            else:
                assert torch.equal(sd[k], v), k  # BN statistics and biases: eval mode throughout
    vanilla = ConvNet().to(device).eval()
    vanilla.load_state_dict(r.conn.dense_state_dict())
    x = torch.randn(8, 3, 8, 8, device=device)
    assert torch.equal(vanilla(x), model.eval()(x))


@pytest.mark.parametrize("device", DEVICES)
def test_edge_popup_on_the_device_freezes_the_weights(device):
    from adaptive.baselines.edge_popup import edge_popup
    torch.manual_seed(0)
    model = ConvNet().to(device)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    tr, ho = _image_loaders()
    conn, snaps = edge_popup(model, tr, ho, [0.5], passes=1.0, lr=0.05, progress=False)
    assert snaps["0.5"]["removed"] == round(0.5 * conn.num_synapses())
    for k, v in model.state_dict().items():
        m = conn.masks.get(k)
        assert torch.equal(v if m is None else v[m], before[k] if m is None else before[k][m]), k


def _digits_net():
    from adaptive.data import get_dataloaders
    from adaptive.models import build_model
    torch.manual_seed(0)
    data = get_dataloaders("digits", batch_size=64, seed=0)
    net = build_model("densecat", num_classes=10, in_shape=data.in_shape, depth=3, width=8)
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    for x, y in list(data.train)[:10]:
        F.cross_entropy(net(x), y).backward()
        opt.step()
        opt.zero_grad()
    return net, data


@CUDA
def test_diagnostics_of_a_gpu_model_match_the_cpu(exact):
    from adaptive.diagnostics import collinearity, gradient_by_depth, knowledge_distribution
    net, data = _digits_net()
    gpu = copy.deepcopy(net).cuda()
    fixed = list(data.train)[:4]  # the same batches for both (the train loader shuffles)
    a = gradient_by_depth(net, fixed, layer="classifier", batches=3, cycle=False)
    b = gradient_by_depth(gpu, fixed, layer="classifier", batches=3, cycle=False)
    torch.testing.assert_close(torch.tensor(b.medians()), torch.tensor(a.medians()), rtol=1e-4, atol=1e-9)
    ca = collinearity(net, fixed, batch_size=32, batches=4)
    cb = collinearity(gpu, fixed, batch_size=32, batches=4)
    for n in ca.cosine:
        torch.testing.assert_close(cb.cosine[n].cpu(), ca.cosine[n], rtol=1e-3, atol=1e-4)
    ka = knowledge_distribution(net, data.test, order_loader=data.holdout, estimator="magnitude", points=5)
    kb = knowledge_distribution(gpu, data.test, order_loader=data.holdout, estimator="magnitude", points=5)
    assert ka.table["removed"] == kb.table["removed"]
    torch.testing.assert_close(torch.tensor(kb.table["loss"]), torch.tensor(ka.table["loss"]), rtol=1e-4, atol=1e-6)
    assert next(gpu.parameters()).device.type == "cuda"  # the diagnostics leave the model where it was


@CUDA
def test_band_scaler_follows_a_model_moved_to_the_gpu_after_it_was_built(exact):
    """A BandGradientScaler built on a CPU model kept its band index and running sizes there when the
    model moved to the GPU, and its hook's indexing of the CUDA gradient failed: they now follow the
    gradient, and scale as on the CPU. A state saved on the CPU loads into a scaler of a GPU model."""
    from adaptive.diagnostics import BandGradientScaler
    depths = {"2": torch.tensor([0] * 16 + [1] * 8 + [2] * 8), "4": torch.tensor([0] * 8 + [3] * 24)}
    nets = [mlp(), mlp()]
    scalers = [BandGradientScaler(n, layers=["2", "4"], depths=depths) for n in nets]

    def backward(net, x, y):
        net.zero_grad(set_to_none=True)
        F.cross_entropy(net(x), y).backward()

    data = batches(4)
    for x, y in data[:2]:
        for net in nets:
            backward(net, x, y)
    saved = scalers[0].state_dict()
    nets[1].cuda()
    for x, y in data[2:]:
        backward(nets[0], x, y)
        backward(nets[1], x.cuda(), y.cuda())
    for a, b in zip(nets[0].parameters(), nets[1].parameters()):
        torch.testing.assert_close(b.grad.cpu(), a.grad, rtol=1e-4, atol=1e-7)
    for layer, scales in scalers[0].scales().items():
        assert scalers[1].scales()[layer] == pytest.approx(scales, rel=1e-4)

    resumed = [mlp(), mlp().cuda()]  # the CPU's state, resumed on the CPU and on the GPU
    more = [BandGradientScaler(n, layers=["2", "4"], depths=depths) for n in resumed]
    for net, scaler, device in zip(resumed, more, ("cpu", "cuda")):
        scaler.load_state_dict(saved)
        backward(net, data[2][0].to(device), data[2][1].to(device))
    for layer, scales in more[0].scales().items():
        assert more[1].scales()[layer] == pytest.approx(scales, rel=1e-4)
        assert more[1].state[layer]["log_typical"].device.type == "cuda"
    for s in scalers + more:
        s.remove()


@CUDA
def test_the_graph_of_a_gpu_model_is_the_cpu_graph():
    import graphs
    torch.manual_seed(0)
    model = ConvNet()
    conn = adaptive.Connectome(model, ensemble="kernel")
    g = torch.Generator().manual_seed(0)
    conn.set_ensemble_masks({n: torch.rand(conn.granularity_of(n).ensemble_shape(m.shape), generator=g) < 0.5
                             for n, m in conn.masks.items()})
    cpu_graph = graphs.build(conn, example_input=torch.randn(1, 3, 8, 8))
    model.cuda()
    gpu_graph = graphs.build(conn, example_input=torch.randn(1, 3, 8, 8, device="cuda"))
    guessed = graphs.build(conn)  # the input guessed on the model's device
    for gr in (gpu_graph, guessed):
        assert dict(graphs.density_per_layer(gr)) == dict(graphs.density_per_layer(cpu_graph))
        assert graphs.summary(gr) == graphs.summary(cpu_graph)


@pytest.mark.parametrize("device", DEVICES)
def test_evaluate_moves_the_batches_of_any_loader_to_the_device(device):
    """recipes' evaluate ran model(x) on the loader's batches as they came: a loader Accelerate had not
    prepared (a wrapped test loader) gave CPU batches to a GPU model."""
    from adaptive.training import evaluate

    class OneProcess:  # what evaluate reads of an Accelerator
        num_processes = 1

        def __init__(self, device):
            self.device = torch.device(device)

        @staticmethod
        def gather_for_metrics(t):
            return t

    torch.manual_seed(0)
    model = mlp().to(device)
    data = batches(3)
    loss, acc, n = evaluate(OneProcess(device), model, data)
    with torch.no_grad():
        ref = torch.cat([F.cross_entropy(model(x.to(device)), y.to(device), reduction="none") for x, y in data])
    assert n == 48 and loss == pytest.approx(float(ref.mean()), rel=1e-6) and 0 <= acc <= 1
