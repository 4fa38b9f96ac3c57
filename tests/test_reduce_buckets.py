"""all_reduce_mean_ reduces in bounded buckets: the result does not depend on the bucket size
(a tensor split across buckets, non-contiguous and 0-d tensors included). The collective is
stood in for by an elementwise one, so this runs on one process; tests/test_two_process.py
checks the same on two gloo processes."""
import torch

from adaptive import distributed as D


def _fake_group(monkeypatch, sizes):
    def all_reduce(t, op=None):  # three ranks holding x, x and x + 1: summed, x + (2x + 1)
        sizes.append(t.numel())
        t.add_(t * 2.0 + 1.0)

    monkeypatch.setattr(D, "is_distributed", lambda: True)
    monkeypatch.setattr(D.dist, "get_backend", lambda *a: "gloo")
    monkeypatch.setattr(D.dist, "get_world_size", lambda *a: 3)
    monkeypatch.setattr(D.dist, "all_reduce", all_reduce)


def _tensors():
    g = torch.Generator().manual_seed(0)
    return [torch.randn(5, 7, generator=g), torch.randn(4, 6, generator=g).t(),  # non-contiguous
            torch.tensor(2.5, dtype=torch.float64), torch.zeros(0), torch.randn(3, generator=g).half(),
            torch.randn(11, generator=g)]


def test_any_bucket_size_gives_the_one_bucket_result(monkeypatch):
    sizes = []
    _fake_group(monkeypatch, sizes)
    ref = _tensors()
    D.all_reduce_mean_(ref, bucket_elements=10**9)
    assert sizes == [35 + 24 + 1 + 3 + 11]
    for t, orig in zip(ref, _tensors()):  # the mean, in float64, cast back
        x = orig.double()
        assert torch.equal(t, ((x + (x * 2.0 + 1.0)) / 3).to(orig.dtype))
    for cap in (1, 3, 7, 24, 35, 36, None):
        sizes.clear()
        got = _tensors()
        D.all_reduce_mean_(got + [None], bucket_elements=cap)
        assert all(torch.equal(a, b) and a.dtype == b.dtype and a.shape == b.shape for a, b in zip(got, ref)), cap
        assert sum(sizes) == 74 and max(sizes) <= (cap or D.BUCKET_ELEMENTS)


def test_one_process_leaves_tensors_alone():
    t = torch.arange(4.0)
    D.all_reduce_mean_([t], bucket_elements=1)
    assert torch.equal(t, torch.arange(4.0))


def test_a_bucket_size_that_is_not_a_positive_whole_number_is_refused_on_any_process(monkeypatch):
    import pytest

    for bad in (0, -3, 2.5, True):
        t = torch.arange(4.0)
        with pytest.raises(ValueError, match="bucket_elements must be a positive whole number"):
            D.all_reduce_mean_([t], bucket_elements=bad)  # one process: refused all the same
        assert torch.equal(t, torch.arange(4.0))
    _fake_group(monkeypatch, [])
    with pytest.raises(ValueError, match="bucket_elements"):
        D.all_reduce_mean_([torch.ones(3)], bucket_elements=0)
