"""The knowledge-distribution diagnostic's work grows with the synapses once, not once per point:
its removal order sorts int32 keys (the policies' fast stable sort), and each point of the curve
removes only the weights since the last point. Both give exactly what they gave before."""
import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from adaptive import Connectome
from adaptive.diagnostics import global_order, knowledge_distribution

torch.set_num_threads(1)
INF, NAN = float("inf"), float("nan")


def _scores(g, kind):
    shapes = [(7, 5), (3, 2, 3, 3), (11,), (4, 300)]
    out = {}
    for i, s in enumerate(shapes):
        n = torch.Size(s).numel()
        if kind == "ties":
            x = torch.randint(-2, 3, (n,), generator=g).float()
        elif kind == "special":  # +-inf, NaN (ordered as +inf, after it), -0.0 tied with +0.0, the largest floats
            pick = torch.tensor([INF, -INF, NAN, -0.0, 0.0, torch.finfo(torch.float32).max, 1.0, -1.0])
            x = pick[torch.randint(0, len(pick), (n,), generator=g)]
        else:
            x = torch.randn(n, generator=g)
        out[f"l{i}"] = x.reshape(s).to(torch.float64 if i == 2 else torch.float32)  # a float64 layer too
    return out


@pytest.mark.parametrize("kind", ["randn", "ties", "special"])
def test_global_order_is_the_stable_float_sort_it_was(kind):
    g = torch.Generator().manual_seed(3)
    for _ in range(5):
        scores = _scores(g, kind)
        flat = torch.nan_to_num(torch.cat([s.reshape(-1).float() for s in scores.values()]), nan=INF)
        assert torch.equal(global_order(scores), torch.sort(flat, stable=True).indices)


def test_global_order_sorts_int32_keys_not_floats(monkeypatch):
    """A stable sort of 25.5M float scores (resnet50) took 10 s on one thread, the int32 keys 2 s."""
    seen = []
    real_sort, real_argsort = torch.sort, torch.argsort

    def sort(t, *a, **kw):
        seen.append(("sort", t.dtype))
        return real_sort(t, *a, **kw)

    def argsort(t, *a, **kw):
        seen.append(("argsort", t.dtype))
        return real_argsort(t, *a, **kw)

    monkeypatch.setattr(torch, "sort", sort)
    monkeypatch.setattr(torch, "argsort", argsort)
    global_order(_scores(torch.Generator().manual_seed(0), "special"))
    assert seen == [("argsort", torch.int32)]


class _Scatters(TorchDispatchMode):
    """Counts the indices written into 1-D bool tensors of ``n`` entries (the flat keep mask)."""

    def __init__(self, n):
        super().__init__()
        self.n, self.written = n, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in (torch.ops.aten.index_put_.default, torch.ops.aten.index_put.default):
            t, idx = args[0], args[1]
            if t.dtype == torch.bool and t.dim() == 1 and t.numel() == self.n:
                self.written += sum(int(i.numel()) for i in idx if i is not None)
        return func(*args, **(kwargs or {}))


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3))


def test_each_point_sets_the_masks_of_the_first_k_of_the_order(monkeypatch):
    """The masks at every count are the live weights less the first k of the order, as when each
    point removed ``order[:k]`` from scratch."""
    model = _net()
    data = [(torch.randn(8, 6), torch.randint(0, 3, (8,)))]
    got = []
    real = Connectome.set_masks

    def spy(self, masks, *a, **kw):
        got.append(torch.cat([m.reshape(-1).clone() for m in masks.values()]))
        return real(self, masks, *a, **kw)

    monkeypatch.setattr(Connectome, "set_masks", spy)
    curve = knowledge_distribution(model, data, data, counts=[0, 3, 4, 50, 51, 113], eval_batches=1)
    order = curve.meta["order"]
    counts = curve.table["removed"]
    assert counts == [0, 3, 4, 50, 51, 113]
    assert len(got) == len(counts)
    for k, m in zip(counts, got):
        want = torch.ones_like(m)
        want[order[:k]] = False
        assert torch.equal(m, want), k


def test_the_points_remove_each_weight_once_not_once_per_point():
    """order[:k] written from scratch at every point wrote the early weights of the order again at
    each later point (the weights many times over for the default counts)."""
    model = _net()
    n = sum(m.weight.numel() for m in model if isinstance(m, nn.Linear))
    data = [(torch.randn(8, 6), torch.randint(0, 3, (8,)))]
    counts = [0, 10, 20, 40, 80, 140]
    with _Scatters(n) as mode:
        knowledge_distribution(model, data, data, counts=counts, eval_batches=1)
    assert mode.written == counts[-1]
