"""BandGradientScaler across devices and checkpoints: its hooks follow a model moved after it was
built, and its running band sizes survive a save and a resume bit for bit."""
import warnings
import weakref

import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from _training import cpu_accelerator, reset_accelerate
from adaptive.diagnostics import BandGradientScaler
from _tied_models import TiedHead

torch.set_num_threads(1)
accelerator = pytest.fixture(cpu_accelerator)

DEPTHS = {"0": torch.tensor([0, 0, 1, 1, 2, 2]), "2": torch.tensor([0, 1, 1, 1, 3])}


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 3))


def _batches(n, seed=1, spread=100.0):
    """``n`` batches whose input bands 0, 1, 2 are 1, sqrt(spread) and spread in size."""
    g, size = torch.Generator().manual_seed(seed), torch.tensor([1.0, 1.0, spread ** 0.5, spread ** 0.5, spread, spread])
    return [(torch.randn(8, 6, generator=g) * size, torch.randint(0, 3, (8,), generator=g)) for _ in range(n)]


def _train(net, opt, batches):
    for x, y in batches:
        opt.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(net(x), y).backward()
        opt.step()


def _scaled(momentum=0.9):
    net = _net()
    return net, torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9), BandGradientScaler(
        net, layers=["0", "2"], depths=DEPTHS, momentum=momentum)


def test_band_index_and_running_sizes_follow_the_gradient_device():
    """A model moved after the scaler was built (.cuda()) kept its band index and running sizes on
    the old device, where the hook's indexing of the new device's gradient failed. The hook takes
    both on the gradient's device: the index moved there once (no copy at later gradients there),
    the running sizes moved.
    The meta device stands in for another one here (tests/test_accelerator.py moves a model to CUDA:
    meta tensors hold no values for the hook to compute with)."""
    net, opt, scaler = _scaled()
    meta, cpu = torch.device("meta"), torch.device("cpu")
    st = scaler.state["0"]
    fresh = BandGradientScaler._running_on(st, meta)
    assert [(t.device, t.dtype, t.shape) for t in fresh] == [(meta, torch.float64, (3,)), (meta, torch.bool, (3,))]

    _train(net, opt, _batches(1))
    assert BandGradientScaler._index_on(st, cpu) is st["index"]
    index = BandGradientScaler._index_on(st, meta)
    assert index.device == meta and index.shape == st["index"].shape and index.dtype == st["index"].dtype
    assert BandGradientScaler._index_on(st, meta) is index
    moved = BandGradientScaler._running_on(st, meta)
    assert [t.device for t in moved] == [meta, meta]
    assert [t.shape for t in moved] == [st["log_typical"].shape, st["seen"].shape]
    assert all(torch.equal(t, u) for t, u in zip(BandGradientScaler._running_on(st, cpu), (st["log_typical"], st["seen"])))
    scaler.remove()


def test_no_band_index_is_kept_on_a_device_the_model_left():
    """The band index (an int64 per weight entry and call: twice an fp32 weight's bytes) was cached
    per device, so a model moved off the GPU (``.cpu()``) left every scaled layer's index there, even
    after ``remove()``. It follows the gradients: moved at the first gradient on a new device, one
    copy kept; gradients on the same device find it there and copy nothing."""
    net, opt, scaler = _scaled()
    _train(net, opt, _batches(1))
    st = scaler.state["0"]
    cpu_index = st["index"]
    assert BandGradientScaler._index_on(st, torch.device("cpu")) is cpu_index  # same device: no copy
    moved = BandGradientScaler._index_on(st, torch.device("meta"))
    assert moved.device.type == "meta" and BandGradientScaler._index_on(st, torch.device("meta")) is moved
    kept = [v for v in st.values() if isinstance(v, torch.Tensor)]
    kept += [t for v in st.values() if isinstance(v, dict) for t in v.values() if isinstance(t, torch.Tensor)]
    indexes = [t for t in kept if t.shape == cpu_index.shape]
    assert indexes and all(t.device.type == "meta" for t in indexes)
    scaler.remove()


def test_a_model_cast_to_another_dtype_after_the_scaler_was_built_is_scaled_alike():
    net, opt, scaler = _scaled()
    _train(net, opt, _batches(2, spread=4.0))  # no saturated tanh, whose tiny gradients float32 rounds apart
    double, _, scaler64 = _scaled()
    double.double()
    _train(double, torch.optim.SGD(double.parameters(), lr=0.05, momentum=0.9),
           [(x.double(), y) for x, y in _batches(2, spread=4.0)])
    ref = scaler.scales()
    for layer, scales in scaler64.scales().items():
        assert len(scales) == 3 and scales == pytest.approx(ref[layer], rel=1e-5)
    scaler.remove()
    scaler64.remove()


def test_resumed_scaler_scales_as_an_uninterrupted_one(tmp_path):
    """Train 3 steps, save model, optimizer and scaler, train 3 more; a fresh model, optimizer and
    scaler loaded from the checkpoint (weights_only) and trained on the same 3 batches end with the
    same scales and weights, bit for bit. Without the scaler's state the running sizes restart and
    the scales differ."""
    first, rest = _batches(3), _batches(3, seed=2)
    net, opt, scaler = _scaled()
    _train(net, opt, first)
    torch.save({"model": net.state_dict(), "optimizer": opt.state_dict(), "band_scaler": scaler.state_dict()},
               tmp_path / "ckpt.pt")
    _train(net, opt, rest)

    ckpt = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    resumed, ropt, rscaler = _scaled()
    resumed.load_state_dict(ckpt["model"])
    ropt.load_state_dict(ckpt["optimizer"])
    rscaler.load_state_dict(ckpt["band_scaler"])
    _train(resumed, ropt, rest)
    assert rscaler.scales() == scaler.scales()
    for a, b in zip(net.parameters(), resumed.parameters()):
        assert torch.equal(a, b)

    restarted, sopt, restart_scaler = _scaled()
    restarted.load_state_dict(ckpt["model"])
    sopt.load_state_dict(ckpt["optimizer"])
    _train(restarted, sopt, rest)
    assert restart_scaler.scales() != scaler.scales()
    for s in (scaler, rscaler, restart_scaler):
        s.remove()


def test_a_state_loads_into_a_scaler_of_another_momentum_which_then_moves_it():
    """momentum is no part of the state: a running size is a band's typical log |grad| whatever
    momentum averaged it, so a state saved at 0.9 loads into a scaler built with 0.5 (or 0), and
    that scaler's own momentum moves it from the next gradient on."""
    net, opt, scaler = _scaled(momentum=0.9)
    _train(net, opt, _batches(2))
    sd = scaler.state_dict()
    nets = []
    for momentum in (0.5, 0.0):
        resumed, ropt, rscaler = _scaled(momentum=momentum)
        resumed.load_state_dict(net.state_dict())
        rscaler.load_state_dict(sd)
        _train(resumed, ropt, _batches(1, seed=3))  # the same weights and batch: the same raw gradients
        nets.append(rscaler)
    half, current = nets
    for layer, saved in sd["layers"].items():
        want = 0.5 * saved["log_typical"] + 0.5 * current.state[layer]["log_typical"]
        torch.testing.assert_close(half.state[layer]["log_typical"], want, rtol=1e-12, atol=1e-12)
    for s in [scaler] + nets:
        s.remove()


def test_state_before_the_first_gradient_loads_and_scales_from_scratch(tmp_path):
    _, _, saved = _scaled()
    torch.save(saved.state_dict(), tmp_path / "s.pt")
    net, opt, scaler = _scaled()
    scaler.load_state_dict(torch.load(tmp_path / "s.pt", weights_only=True))
    assert scaler.scales() == {"0": {}, "2": {}}
    _train(net, opt, _batches(1))
    assert set(scaler.scales()["0"]) == {0, 1, 2}
    for s in (saved, scaler):
        s.remove()


def test_a_state_of_another_layout_is_refused_and_changes_nothing():
    net, opt, scaler = _scaled()
    _train(net, opt, _batches(2))
    sd = scaler.state_dict()
    before = scaler.scales()

    other = _net()
    wrong_depths = BandGradientScaler(other, layers=["0", "2"], depths={**DEPTHS, "2": torch.tensor([0, 0, 1, 1, 3])})
    with pytest.raises(ValueError, match=r"layer '2' was saved with another band layout \(its band_entries .*build the "
                                         r"scaler as the saved run did"):
        wrong_depths.load_state_dict(sd)
    assert wrong_depths.scales() == {"0": {}, "2": {}}  # layer '0' matched, but is left as it was

    wider = nn.Sequential(nn.Linear(6, 7), nn.Tanh(), nn.Linear(7, 3))
    wide = BandGradientScaler(wider, layers=["0"], depths=DEPTHS)
    with pytest.raises(ValueError, match=r"layer '0' was saved with another band layout \(its weight_shape \[5, 6\], "
                                         r"here \[7, 6\]"):
        wide.load_state_dict({"layers": {"0": sd["layers"]["0"]}})
    with pytest.raises(KeyError, match=r"the state is of layers \['0', '2'\], this scaler scales \['0'\]: build it with "
                                       r"layers="):
        wide.load_state_dict(sd)
    with pytest.raises(ValueError, match="not a BandGradientScaler state_dict"):
        scaler.load_state_dict(net.state_dict())
    bad = {"layers": {**sd["layers"], "2": {**sd["layers"]["2"], "seen": sd["layers"]["2"]["seen"].float()}}}
    with pytest.raises(ValueError, match=r"the running sizes of layer '2' are not a float 'log_typical' and a bool 'seen'"):
        scaler.load_state_dict(bad)
    with pytest.raises(ValueError, match=r"the state of layer '2' is a list, not a mapping"):
        scaler.load_state_dict({"layers": {**sd["layers"], "2": []}})
    assert scaler.scales() == before
    for s in (scaler, wrong_depths, wide):
        s.remove()


def test_accelerate_checkpoints_a_registered_scaler(tmp_path, accelerator):
    """The README's way with Accelerate: register_for_checkpointing(scaler), save_state, load_state."""
    from accelerate import Accelerator
    net, opt, scaler = _scaled()
    _train(net, opt, _batches(2))
    accelerator.register_for_checkpointing(scaler)
    accelerator.save_state(str(tmp_path / "state"))
    _, _, resumed = _scaled()
    reset_accelerate()
    again = Accelerator(cpu=True)
    again.register_for_checkpointing(resumed)
    again.load_state(str(tmp_path / "state"))
    assert resumed.scales() == scaler.scales() and resumed.scales()["0"]
    for s in (scaler, resumed):
        s.remove()


def test_a_state_saved_under_a_wrapper_s_names_loads_into_a_plain_model_s_scaler_and_back():
    """A scaler built on a DDP model named its layers module.NAME before it took the module inside's names: such a
    state loads as NAME (one prefix for all layers), and a state of a scaler on a wrapper loads into a plain one."""
    net, opt, scaler = _scaled()
    _train(net, opt, _batches(2))
    sd = scaler.state_dict()
    old = {"layers": {f"module.{n}": v for n, v in sd["layers"].items()}}  # as saved before the rename
    plain = BandGradientScaler(_net(), layers=["0", "2"], depths=DEPTHS)
    wrapped = BandGradientScaler(nn.DataParallel(_net()), layers=["module.0", "module.2"], depths=DEPTHS)
    for s in (plain, wrapped):
        s.load_state_dict(old)
        assert s.scales() == scaler.scales()
    back = BandGradientScaler(_net(), layers=["0", "2"], depths=DEPTHS)
    back.load_state_dict(wrapped.state_dict())
    assert back.scales() == scaler.scales()
    for s in (scaler, plain, wrapped, back):
        s.remove()


class _OwnModule(nn.Module):
    """A model whose own layer is called ``module``, beside ``fc``."""

    def __init__(self):
        super().__init__()
        self.module, self.fc = nn.Linear(6, 5), nn.Linear(5, 3)

    def forward(self, x):
        return self.fc(torch.tanh(self.module(x)))


def test_a_wrapper_prefix_comes_off_every_saved_layer_alike():
    """module.module and module.fc, saved under a DDP wrapper, are the model's module and fc (not both fc); a state of
    the model's own names loads as it is."""
    depths = {"module": DEPTHS["0"], "fc": DEPTHS["2"]}
    torch.manual_seed(0)
    net = _OwnModule()
    scaler = BandGradientScaler(net, depths=depths, layers=["module", "fc"])
    nn.functional.cross_entropy(net(_batches(1)[0][0]), _batches(1)[0][1]).backward()
    sd = scaler.state_dict()
    for state in (sd, {"layers": {f"module.{n}": v for n, v in sd["layers"].items()}}):
        other = BandGradientScaler(_OwnModule(), depths=depths, layers=["module", "fc"])
        other.load_state_dict(state)
        assert other.scales() == scaler.scales() and other.scales()["module"] != other.scales()["fc"]
        other.remove()
    scaler.remove()


@pytest.fixture
def swap_on_conversion():
    torch.__future__.set_swap_module_params_on_conversion(True)
    yield
    torch.__future__.set_swap_module_params_on_conversion(False)


def _step_scales(net, scaler, dtype=torch.float32, device="cpu"):
    x, y = _batches(1)[0]
    nn.functional.cross_entropy(net(x.to(device, dtype)), y.to(device)).backward()
    return scaler.scales()


def test_weights_replaced_after_the_scaler_was_built_get_their_hooks_back(swap_on_conversion):
    """A weight's gradient hook lives on its tensor: a conversion that swaps the tensor (swap_module_params_on_conversion),
    or to_empty() after model.to('meta'), left the scaler silently scaling nothing. The next forward moves the hooks,
    with a warning, and the scales are those of a scaler built on the converted model."""
    ref_net = _net().double()
    want = _step_scales(ref_net, BandGradientScaler(ref_net, layers=["0", "2"], depths=DEPTHS), torch.float64)
    net, _, scaler = _scaled()
    net.double()  # swapped in place: the same Parameters, other tensors
    with pytest.warns(UserWarning, match=r"the weights of \['0', '2'\] were replaced since the scaler hooked them"):
        assert _step_scales(net, scaler, torch.float64) == want
    scaler.remove()

    want = _step_scales(ref_net := _net(), BandGradientScaler(ref_net, layers=["0", "2"], depths=DEPTHS))
    torch.__future__.set_swap_module_params_on_conversion(False)  # to('meta') gives new Parameters, to_empty too
    for swap in (False, True):
        torch.__future__.set_swap_module_params_on_conversion(swap)
        net, _, scaler = _scaled()
        saved = {k: v.clone() for k, v in net.state_dict().items()}
        net.to("meta")
        with pytest.warns(UserWarning, match="were replaced"):
            _step_scales(net, scaler, device="meta")  # a gradient on the meta device: nothing to size, the band index stays put
        net.to_empty(device="cpu")
        net.load_state_dict(saved)
        with pytest.warns(UserWarning, match="were replaced"):
            assert _step_scales(net, scaler) == want
        scaler.remove()


def test_a_weight_replaced_by_one_of_another_shape_is_refused():
    net, _, scaler = _scaled()
    net[0].weight = nn.Parameter(torch.randn(7, 6))
    with pytest.raises(ValueError, match=r"the weight of '0' was replaced by a Parameter of shape \(7, 6\), but the "
                                         r"scaler was built for a Parameter of shape \(5, 6\): build a new scaler"):
        net(torch.randn(2, 6))
    scaler.remove()


class _Same(nn.Module):
    def forward(self, w):
        return w * 1.0


def _prune_identity(net):
    for i in (0, 2):
        torch.nn.utils.prune.identity(net[i], "weight")  # weight = weight_orig * an all-ones mask


def _parametrize(net):
    for i in (0, 2):
        torch.nn.utils.parametrize.register_parametrization(net[i], "weight", _Same())


def test_a_weight_computed_from_the_hooked_parameter_is_no_replacement():
    """torch.nn.utils.prune and a parametrization put a tensor computed at each call where the weight was, the hooked
    Parameter held on (weight_orig, parametrizations.weight.original) and still getting the gradient; functional_call
    puts other tensors there for one call. Every forward was refused as a weight 'replaced by a Tensor': the hooks
    stay on the Parameter, silently, and scale as before."""
    ref, _, ref_scaler = _scaled()
    want = _step_scales(ref, ref_scaler)
    ref_scaler.remove()
    for change in (_prune_identity, _parametrize):
        net, _, scaler = _scaled()
        change(net)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert _step_scales(net, scaler) == want
        scaler.remove()
    net, _, scaler = _scaled()
    params = {k: v.detach().clone().requires_grad_() for k, v in net.named_parameters()}
    x, y = _batches(1)[0]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        nn.functional.cross_entropy(torch.func.functional_call(net, params, (x,)), y).backward()
        assert scaler.scales() == {"0": {}, "2": {}}  # other tensors than the weights got that gradient
        assert _step_scales(net, scaler) == want
    scaler.remove()


def test_the_per_band_all_reduce_goes_where_all_reduce_mean_s_goes(monkeypatch):
    """Under NCCL a CPU model's per-band statistics were all-reduced as CPU tensors, which NCCL cannot reduce;
    all_reduce_mean_ moves such tensors to CUDA. The scaler now reduces on the device the shared rule chooses
    (collective_device: CUDA for a tensor off CUDA under NCCL, its own device otherwise), and copies back."""
    from adaptive import distributed as D
    from adaptive.diagnostics import band_scaling

    cpu = torch.zeros(2, dtype=torch.float64)
    monkeypatch.setattr(D.dist, "get_backend", lambda *a: "nccl")
    assert D.collective_device(cpu) == torch.device("cuda")
    monkeypatch.setattr(D.dist, "get_backend", lambda *a: "gloo")
    assert D.collective_device(cpu) == torch.device("cpu")

    chosen, reduced = [], []

    def choose(t):  # the shared rule, stood in for: this machine may have no GPU to move to
        chosen.append(t.device)
        return torch.device("cpu")

    monkeypatch.setattr(band_scaling, "collective_device", choose)
    _one_process_group(monkeypatch)
    monkeypatch.setattr(D.dist, "all_reduce", lambda t, *a, **k: reduced.append((t.device, t.dtype, tuple(t.shape))))
    net, _, scaler = _scaled()
    try:
        x, y = _batches(1)[0]
        nn.functional.cross_entropy(net(x), y).backward()
    finally:
        scaler.remove()
    assert chosen == [torch.device("cpu")] * 2  # one per scaled layer
    assert [r[:2] for r in reduced] == [(torch.device("cpu"), torch.float64)] * 2


def _one_process_group(monkeypatch, others=()):
    """The scaler under a process group, stood in for by monkeypatching: ``is_distributed()`` is True, and the
    construction's gathering of every process's band layouts gives this process's and then ``others``."""
    from adaptive.diagnostics import band_scaling

    monkeypatch.setattr(band_scaling, "is_distributed", lambda: True)
    monkeypatch.setattr(band_scaling.dist, "get_world_size", lambda *a, **k: 1 + len(others))
    monkeypatch.setattr(band_scaling.dist, "all_gather_object", lambda out, obj, *a, **k: out.__setitem__(
        slice(None), [obj, *others]))


@pytest.mark.parametrize("depths", [None, {"head": torch.tensor([0] * 4 + [2] * 4)}])
def test_a_head_tied_to_an_embedding_the_forward_runs_is_refused_as_gradient_by_depth_refuses_it(depths):
    """The head's gradient holds the embedding lookup's part, which no depth of the head's inputs describes:
    gradient_by_depth refused it (TiedWeightError), but the scaler scaled the whole gradient by the head's bands
    (the traced graph's tie check sees no Embedding as a layer, and given depths skip it). Traced, the head reads
    one band: the scaler leaves it alone (scale 1 for every part of its gradient), tied or not."""
    from adaptive.diagnostics import gradient_by_depth
    from adaptive.diagnostics._shared_calls import TiedWeightError

    torch.manual_seed(0)
    net, x, y = TiedHead(), torch.randint(0, 10, (4, 5)), torch.randint(0, 10, (4,))
    raw, = torch.autograd.grad(nn.functional.cross_entropy(net(x), y), net.head.weight)
    scaler = BandGradientScaler(net, layers=["head"], depths=depths, example=x)
    try:
        if depths is None:  # one band
            nn.functional.cross_entropy(net(x), y).backward()
            assert torch.equal(net.head.weight.grad, raw) and scaler.scales() == {"head": {1: 1.0}}
            net.zero_grad(set_to_none=True)
        else:
            with pytest.raises(TiedWeightError, match=r"^BandGradientScaler: the weight of 'head' is also that of "
                                                      r"\['emb'\] .*; scale a layer whose weight no other module reads"):
                nn.functional.cross_entropy(net(x), y).backward()
            assert scaler.scales() == {"head": {}} and scaler.state["head"]["log_typical"] is None  # nothing moved
        with pytest.raises(TiedWeightError, match=r"^gradient_by_depth: the weight of 'head' is also that of \['emb'\]"):
            gradient_by_depth(net, [(x, y)], layer="head", batches=1, depths=None if depths is None else depths["head"])
    finally:
        scaler.remove()
    # untied (each module its own copy), the same model is scaled
    net.head.weight = nn.Parameter(net.emb.weight.detach().clone())
    scaler = BandGradientScaler(net, layers=["head"], depths=depths, example=x)
    try:
        net(x).sum().backward()
        assert scaler.scales()["head"]
    finally:
        scaler.remove()


def test_band_statistics_are_the_sums_over_the_entries_kept_bit_for_bit():
    """_band_stats sums log |g| and counts the kept entries per band in one index_add_ over all the entries
    (the others add exact zeros): bit for bit what summing the kept entries alone, in their order, gives;
    zero, inf and NaN entries and entries left out (pruned) take no part, and a band with none sums to 0."""
    g = torch.Generator().manual_seed(0)
    a = (torch.randn(4000, generator=g) * torch.rand(4000, generator=g) ** 6).abs()
    a[::7], a[3], a[11], a[19] = 0.0, float("inf"), float("nan"), 1e-42  # (a float32 subnormal has a size too)
    flat = torch.randint(0, 4, (4000,), generator=g)
    flat[flat == 3] = 2  # band 3: no entry at all
    nz = (a > 0) & torch.isfinite(a) & (torch.rand(4000, generator=g) < 0.7)
    got = BandGradientScaler._band_stats(a, nz, flat, 5)
    assert got.dtype == torch.float64 and got.shape == (2, 5)
    for b in range(5):
        kept = a[nz & (flat == b)].double().log()
        want = torch.zeros((), dtype=torch.float64)
        for v in kept:  # one at a time, in entry order, as the previous hook's index_add_ summed them
            want = want + v
        assert torch.equal(got[0, b], want) and got[1, b] == len(kept)
    assert got[0, 3] == 0 and got[1, 3] == 0 and got[1, 4] == 0


class _PeakBytes(TorchDispatchMode):
    """The most bytes that the tensors made by the ops run under it held at once (a storage counts
    from the op that allocates it until the last tensor on it is freed; views and in-place results
    of tensors made outside count nothing)."""

    def __init__(self):
        super().__init__()
        self.live, self.now, self.peak = {}, 0, 0

    def _free(self, key):
        refs, size = self.live[key]
        self.live[key] = (refs - 1, size)
        if refs == 1:
            del self.live[key]
            self.now -= size

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        outside = {t.untyped_storage().data_ptr() for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)}
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if not isinstance(t, torch.Tensor) or not t.untyped_storage().nbytes():
                continue
            key = t.untyped_storage().data_ptr()
            if key in self.live:
                self.live[key] = (self.live[key][0] + 1, self.live[key][1])
            elif key in outside:
                continue
            else:
                self.live[key] = (1, t.untyped_storage().nbytes())
                self.now += self.live[key][1]
            weakref.finalize(t, self._free, key)
        self.peak = max(self.peak, self.now)
        return out


def test_band_statistics_take_one_float64_copy_of_the_entries():
    """_band_stats made the log, the masked log, a float64 count and their stack of every entry: 32
    bytes per entry at once, half a GiB for a 4096 x 4096 layer (more than the boolean indexing it
    replaced). One float64 copy serves both sums now, with a bool per entry: 9 bytes per entry."""
    n, g = 1 << 16, torch.Generator().manual_seed(0)
    a = torch.randn(n, generator=g).abs()
    a[::5] = 0.0
    nz, flat = (a > 0) & (torch.rand(n, generator=g) < 0.8), torch.randint(0, 16, (n,), generator=g)
    with _PeakBytes() as mem:
        got = BandGradientScaler._band_stats(a, nz, flat, 16)
    assert mem.peak <= 9 * n + 1024, mem.peak / n
    want = torch.zeros(2, 16, dtype=torch.float64)
    want[0].index_add_(0, flat[nz], a[nz].double().log())  # the previous hook's sums, in the same order
    want[1].index_add_(0, flat[nz], torch.ones(int(nz.sum()), dtype=torch.float64))
    assert torch.equal(got, want)


def test_the_hook_s_temporaries_on_a_large_layer_stay_a_few_times_the_gradient():
    """The hook's temporaries on one part of a float32 gradient of n entries: its sizes, the kept
    entries, the statistics and the scaled gradient; they peaked at 37 bytes per entry (a 4096 x
    4096 Linear: 600 MiB in its backward), 14 now."""
    torch.manual_seed(0)
    lin = nn.Linear(256, 256)
    scaler = BandGradientScaler(lin, layers=[""], depths={"": torch.arange(256) // 16})
    try:
        hook, grad = scaler._hook(scaler.state[""], lin.weight), torch.randn(256, 256)
        with _PeakBytes() as mem:
            scaled = hook(grad)
        assert mem.peak <= 16 * grad.numel(), mem.peak / grad.numel()
        assert scaled.shape == grad.shape and len(scaler.scales()[""]) == 16
    finally:
        scaler.remove()


ONE_BAND = {"0": DEPTHS["0"], "2": torch.ones(5, dtype=torch.long)}  # layer '2' reads one band (depth 1)


class _EveryLayerHooked(BandGradientScaler):
    """The scaler as it was before a layer of one band was left alone: a hook on every layer."""

    @staticmethod
    def _hooked(bands):
        return True


def _one_band_run(cls, steps=3, state=None, batches=None):
    """A net whose layer '2' reads one band, trained ``steps`` SGD steps under a ``cls`` scaler (loaded with
    ``state`` first); the net, the scaler and the scales after each step."""
    net = _net()
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    scaler, scales = cls(net, layers=["0", "2"], depths=ONE_BAND, momentum=0.5), []
    if state is not None:
        scaler.load_state_dict(state)
    for batch in batches or _batches(steps):
        _train(net, opt, [batch])
        scales.append(scaler.scales())
    return net, scaler, scales


def test_a_one_band_layer_gets_no_hook_no_statistics_and_no_all_reduce(monkeypatch):
    """A layer of one band is scaled by common / typical = exp(0) = 1 exactly: its hook, statistics and all-reduce
    (one per layer and backward under DDP, each blocking the backward) changed nothing but the step's time. It has
    none now: its gradient, and every other layer's, the same bit for bit as with a hook on it; one all-reduce per
    backward (the layer of three bands), not two; its scale reads 1.0 from the start."""
    from adaptive.diagnostics import band_scaling

    reduced = []
    _one_process_group(monkeypatch)  # (the sum over one process: itself)
    monkeypatch.setattr(band_scaling, "collective_device", lambda t: t.device)
    monkeypatch.setattr(band_scaling.dist, "all_reduce", lambda t, *a, **k: reduced.append(tuple(t.shape)))
    net, scaler, scales = _one_band_run(BandGradientScaler)
    assert reduced == [(2, 3)] * 3  # layer '0' only, at each of the 3 backwards
    assert not net[2].weight._backward_hooks and not net[2]._forward_hooks and net[0].weight._backward_hooks
    assert scaler.state["2"]["log_typical"] is None and scaler.state["2"]["seen"] is None
    reduced.clear()
    ref_net, ref, ref_scales = _one_band_run(_EveryLayerHooked)
    assert reduced == [(2, 1), (2, 3)] * 3  # (backward reaches '2' first)
    assert scales == ref_scales and scales[0]["2"] == {1: 1.0} and len(scales[0]["0"]) == 3
    for a, b in zip(net.parameters(), ref_net.parameters()):
        assert torch.equal(a, b) and torch.equal(a.grad, b.grad)
    layer, ref_layer = scaler.state_dict()["layers"]["0"], ref.state_dict()["layers"]["0"]
    assert all(torch.equal(layer[k], ref_layer[k]) for k in ("log_typical", "seen"))
    fresh = BandGradientScaler(_net(), layers=["0", "2"], depths=ONE_BAND)
    assert fresh.scales() == {"0": {}, "2": {1: 1.0}}  # before any backward
    for s in (scaler, ref, fresh):
        s.remove()


def test_a_state_of_a_scaler_that_hooked_one_band_layers_loads_and_back():
    """A checkpoint whose one-band layer has running sizes (saved by a version that hooked it) loads: the sizes
    are kept, unused, and saved again as they were; the run goes on as the hooking scaler's, bit for bit. The
    other way, a state without them (None, as before a first gradient) loads into a scaler that hooks the layer,
    which starts them afresh, its scale 1 all the same. The state's entries are the same either way."""
    first, rest = _batches(2), _batches(2, seed=2)
    old_net, old, _ = _one_band_run(_EveryLayerHooked, batches=first)
    new_net, new, _ = _one_band_run(BandGradientScaler, batches=first)
    old_sd, new_sd = old.state_dict(), new.state_dict()
    assert old_sd["layers"]["2"]["log_typical"] is not None and new_sd["layers"]["2"]["log_typical"] is None
    assert all(set(old_sd["layers"][n]) == set(new_sd["layers"][n]) for n in ("0", "2"))
    runs = []
    for cls, sd, trained in ((BandGradientScaler, old_sd, old_net), (_EveryLayerHooked, new_sd, new_net),
                             (_EveryLayerHooked, old_sd, old_net)):
        net, scaler, scales = _one_band_run(cls, state=sd, batches=[])
        if sd is old_sd and cls is BandGradientScaler:  # the old running sizes, kept as they were
            kept = scaler.state_dict()["layers"]["2"]
            assert all(torch.equal(kept[k], sd["layers"]["2"][k]) for k in ("log_typical", "seen"))
        net.load_state_dict(trained.state_dict())
        opt = torch.optim.SGD(net.parameters(), lr=0.05)
        for x, y in rest:
            opt.zero_grad(set_to_none=True)
            nn.functional.cross_entropy(net(x), y).backward()
            opt.step()
        runs.append((list(net.parameters()), scaler.scales()))
        scaler.remove()
    for params, scales in runs[:2]:
        assert scales == runs[2][1] and all(torch.equal(a, b) for a, b in zip(params, runs[2][0]))
    for s in (old, new):
        s.remove()


def test_running_sizes_that_are_not_finite_are_refused():
    """No scaler saves an inf or NaN running size (inf gradient entries are left out since 88f544f, before states
    were saved), but a damaged or edited state's, loaded, made every scale of the layer NaN, so every later gradient
    NaN. It is refused, the
    scaler left as it was; a value in a band never seen (which no scale reads) is taken."""
    net, opt, scaler = _scaled()
    _train(net, opt, _batches(1))
    sd, before = scaler.state_dict(), scaler.scales()
    for value, seen in ((float("inf"), True), (float("nan"), True)):
        layer = {**sd["layers"]["0"], "log_typical": torch.tensor([value, 1.0, 2.0], dtype=torch.float64),
                 "seen": torch.tensor([seen, True, True])}
        with pytest.raises(ValueError, match=r"the running sizes of layer '0' are not finite .*load the checkpoint "
                                             r"without its scaler state"):
            scaler.load_state_dict({"layers": {**sd["layers"], "0": layer}})
        assert scaler.scales() == before
    layer = {**sd["layers"]["0"], "log_typical": torch.tensor([float("nan"), 1.0, 2.0], dtype=torch.float64),
             "seen": torch.tensor([False, True, True])}
    scaler.load_state_dict({"layers": {**sd["layers"], "0": layer}})
    assert scaler.scales()["0"][0] == 1.0
    scaler.remove()


class _CalledAgainInTraining(nn.Module):
    """``b`` runs a second time in train mode only (an auxiliary path), on a signal one layer deeper: traced (an
    eval-mode forward) it reads one band."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.a, self.b, self.head = nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 3)

    def forward(self, x):
        h = torch.relu(self.b(torch.relu(self.a(x))))
        return self.head(h + torch.relu(self.b(h)) if self.training else h)


def test_a_one_band_layer_called_more_times_than_its_depths_have_rows_is_warned_about():
    """A layer traced with one call at one depth but called again in training reads another depth there: it
    should be scaled, and its depths given one row per call. The hook that layer had (before a one-band layer was
    left alone) warned at its backward; unhooked, it went silent. Its calls are counted: the first training forward
    that calls it twice warns, once; its gradient is still left as autograd gives it."""
    model = _CalledAgainInTraining()
    x, y = torch.randn(8, 4), torch.randint(0, 3, (8,))
    raw, = torch.autograd.grad(nn.functional.cross_entropy(model(x), y), model.b.weight)
    scaler = BandGradientScaler(model, layers=["b"])
    try:
        assert scaler.scales() == {"b": {1: 1.0}} and not model.b.weight._backward_hooks
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            model.eval()(x)  # called once, as traced
            with torch.no_grad():
                model.train()(x)  # no gradient: no concern
        with pytest.warns(UserWarning, match=r"'b' is called 2 times in a forward, but its depths describe 1 call\(s\), "
                                             r"all of one depth \(1\).*Pass depths=\{layer: rows\} with one row per call"):
            nn.functional.cross_entropy(model(x), y).backward()
        assert torch.equal(model.b.weight.grad, raw)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # once
            model(x)
    finally:
        scaler.remove()
    assert not model._forward_hooks and not model._forward_pre_hooks and not model.b._forward_pre_hooks


def test_processes_that_found_other_band_layouts_are_refused_at_construction(monkeypatch):
    """Each process hooks its layers of several bands, one all-reduce each per backward: a layer of one band on one
    process (no all-reduce) and of two on another (depths from each process's own data) paired the all-reduces of
    other layers, a hang under NCCL at the first backward. The processes compare their layouts when the scaler is
    built, and every one refuses alike, naming the layer; nothing is left on the model."""
    others = [{"0": [0, 1, 2], "2": [1, 2]}]  # process 1: layer '2' of two bands
    _one_process_group(monkeypatch, others)
    net = _net()
    with pytest.raises(ValueError, match=r"the processes found other depth bands for the layers '2' \(process 0: \[1\], "
                                         r"process 1: \[1, 2\]\).*give every process the same layers= and depths="):
        BandGradientScaler(net, layers=["0", "2"], depths=ONE_BAND)
    assert not net[0].weight._backward_hooks and not net._forward_pre_hooks and not net[2]._forward_pre_hooks
    _one_process_group(monkeypatch, [{"0": [0, 1, 2], "2": [1]}])  # the same layouts: taken
    BandGradientScaler(net, layers=["0", "2"], depths=ONE_BAND).remove()


def test_a_compiled_forward_of_the_module_inside_reads_no_weight_as_replaced():
    """A scaler built on the model and a forward through torch.compile(model): dynamo traced the model's
    forward pre-hook, where the weights' identities read as changed, so every forward warned that the weights
    were replaced and moved their gradient hooks. The scaler must scale as it does uncompiled, silently."""
    batches = _batches(3)
    net, opt, scaler = _scaled()
    _train(net, opt, batches)
    torch._dynamo.reset()
    twin, twin_opt, twin_scaler = _scaled()
    compiled = torch.compile(twin, backend="eager")
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="BandGradientScaler")
        _train(compiled, twin_opt, batches)
    assert twin_scaler.scales() == scaler.scales()
    assert all(torch.equal(p, q) for p, q in zip(net.parameters(), twin.parameters()))
    for s in (scaler, twin_scaler):
        s.remove()


class _UpNet(nn.Module):
    """A transposed convolution reading a concatenation of the input (depth 0) and a layer's output (1)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.a, self.up, self.fc = nn.Conv2d(2, 2, 1), nn.ConvTranspose2d(4, 2, 2, stride=2), nn.Conv2d(2, 3, 1)

    def forward(self, x):
        return self.fc(self.up(torch.cat([x, self.a(x)], 1))).mean((2, 3))


def test_depths_of_a_transposed_convolution_without_layers_scale_it():
    # found: layers=None took only Linear/Conv1d-3d among the depths= names, so a ConvTranspose's depths were
    # dropped without a word (the layer left unscaled), or alone ended in "no layer to scale ... pass layers="
    net = _UpNet()
    depths = torch.tensor([0, 0, 1, 1])
    scaler = BandGradientScaler(net, depths={"up": depths}, momentum=0.0)
    try:
        assert list(scaler.state) == ["up"]
        x, y = torch.randn(3, 2, 4, 4), torch.randint(0, 3, (3,))
        twin = _UpNet()  # the same weights, no hook: the gradient as autograd gives it
        (raw,) = torch.autograd.grad(nn.functional.cross_entropy(twin(x), y), [twin.up.weight])
        nn.functional.cross_entropy(net(x), y).backward()
        scale = scaler.scales()["up"]
        assert set(scale) == {0, 1} and scale[0] != pytest.approx(1.0)
        want = raw * torch.tensor([scale[int(d)] for d in depths]).view(4, 1, 1, 1)  # its weight: (in, out, k, k)
        torch.testing.assert_close(net.up.weight.grad, want, rtol=1e-5, atol=0)
    finally:
        scaler.remove()


def test_depths_no_scaled_layer_takes_are_refused_naming_them():
    # found: a misspelt depths= name was dropped without a word, the layer meant scaled by its traced (or
    # input_depths) depths instead; a depths= entry of a layer left out of a given layers= stays the caller's choice
    with pytest.raises(ValueError, match=r"depths= gives depths for \['upp'\], but no layer it scales is named so "
                                         r"\(it scales \['fc'\]\).*one of \['a', 'up', 'fc'\]"):
        BandGradientScaler(_UpNet(), depths={"upp": torch.tensor([0, 0, 1, 1]), "fc": torch.tensor([2, 3])})
    net = _UpNet()
    with pytest.raises(ValueError, match=r"depths= gives depths for \['fc.bias'\]"):
        BandGradientScaler(net, layers=["up"], depths={"up": torch.tensor([0, 0, 1, 1]), "fc.bias": torch.tensor([2, 3])})
    assert not net.up.weight._backward_hooks  # refused: no hook left behind
    subset = BandGradientScaler(net, layers=["up"], depths={"up": torch.tensor([0, 0, 1, 1]), "fc": torch.tensor([2, 3])})
    assert list(subset.state) == ["up"]
    subset.remove()
    # the only depths= name misspelt, on a model without input_depths: "no layer to scale ... or given as
    # depths={layer: tensor}" asked for what the caller had done, without naming the name
    with pytest.raises(ValueError, match=r"depths= gives depths for \['upp'\], but no layer it scales is named so "
                                         r"\(it scales no layer\): \['upp'\]: a misspelt name.*one of \['a', 'up', 'fc'\]"):
        BandGradientScaler(_UpNet(), depths={"upp": torch.tensor([0, 0, 1, 1])})


def test_depths_under_a_weight_name_without_layers_scale_the_layer():
    # found in review: depths= takes a layer by NAME.weight (as layers= and _given_depths do), but without layers=
    # the layers were found by module name only: {"up.weight": ...} alone ended in "no layer to scale ... pass
    # layers=", and beside another layer's depths it was refused as "a misspelt name"
    depths = torch.tensor([0, 0, 1, 1])
    for given in ({"up.weight": depths}, {"up.weight": depths, "fc": torch.tensor([2, 3])}):
        scaler = BandGradientScaler(_UpNet(), depths=given, momentum=0.0)
        try:
            assert sorted(scaler.state) == sorted(k.removesuffix(".weight") for k in given)
            assert scaler.state["up"]["hooked"] and torch.equal(scaler.state["up"]["bands"], torch.tensor([0, 1]))
        finally:
            scaler.remove()


def test_depths_of_a_layer_left_out_of_depth_layers_are_refused_saying_so():
    # found in review: a model's depth_layers choose the layers scaled without layers=; depths= of another Linear
    # of it were refused as "a misspelt name, or a module without a Linear or convolution weight", neither true
    class Listed(_UpNet):
        depth_layers = ["up"]

    net = Listed()
    with pytest.raises(ValueError, match=r"\['fc'\]: layers left out of the model's depth_layers, which are the layers "
                                         r"scaled without layers=; pass layers= naming every layer to scale") as e:
        BandGradientScaler(net, depths={"up": torch.tensor([0, 0, 1, 1]), "fc": torch.tensor([2, 3])})
    assert "misspelt" not in str(e.value) and not net.up.weight._backward_hooks
    with pytest.raises(ValueError, match=r"\['fcc'\]: a misspelt name.*; \['fc'\]: layers left out of the model's"):
        BandGradientScaler(net, depths={"up": torch.tensor([0, 0, 1, 1]), "fcc": torch.tensor([2, 3]),
                                        "fc": torch.tensor([2, 3])})


def test_a_band_not_yet_seen_leaves_the_seen_bands_scales_multiplying_to_one():
    """The common level the bands are scaled to is the mean log size of the bands seen: averaging in an unseen
    band's placeholder (a band pruned whole) moved every seen band's scale (1.65/0.61 became 1.0/0.37)."""
    lt = torch.tensor([1.0, 2.0, 0.0], dtype=torch.float64)
    scales = BandGradientScaler._scale(lt, torch.tensor([True, True, False]))
    assert scales[2] == 1.0 and float(scales[0] * scales[1]) == pytest.approx(1.0)
    assert float(scales[0]) == pytest.approx(torch.e ** 0.5) and float(scales[1]) == pytest.approx(torch.e ** -0.5)
