"""adaptive.mask_reads: any_set and all_set answer as any() and all() do, for every shape, size and pattern of
a bool tensor (they count instead, which is faster on a CPU)."""
import pytest
import torch

from adaptive.mask_reads import all_set, any_set


@pytest.mark.parametrize("shape", [(0,), (1,), (7,), (3, 0), (64, 3, 3, 3), (100_003,)])
def test_any_set_and_all_set_answer_as_any_and_all(shape):
    g = torch.Generator().manual_seed(len(shape))
    n = torch.Size(shape).numel()
    cases = [torch.zeros(shape, dtype=torch.bool), torch.ones(shape, dtype=torch.bool),
             torch.rand(shape, generator=g) < 0.5]
    if n:
        one = torch.zeros(n, dtype=torch.bool)
        one[n - 1] = True  # a single True, last
        allbut = torch.ones(n, dtype=torch.bool)
        allbut[n // 2] = False  # a single False, in the middle
        cases += [one.reshape(shape), allbut.reshape(shape)]
    for t in cases:
        assert any_set(t) == bool(t.any()) and all_set(t) == bool(t.all()), t
        if t.dim() > 1:  # a strided view reads as its values, not its storage
            v = t.transpose(0, -1)
            assert any_set(v) == bool(v.any()) and all_set(v) == bool(v.all())
