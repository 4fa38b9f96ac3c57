"""BandGradientScaler across devices: its hooks follow a model moved after it was built."""
import pytest
import torch
from torch import nn

from adaptive.diagnostics import BandGradientScaler

torch.set_num_threads(1)

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
    both on the gradient's device: the index copied there once and kept, the running sizes moved.
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
