"""adaptive.finite.finite_flags: the one check, shared by the gradient window, the weight check and the
GradScaler path, of which tensors hold a NaN or inf."""
import pytest
import torch

from adaptive.finite import finite_flags


def test_each_tensor_is_flagged_by_what_it_holds_whatever_its_dtype_or_size():
    nan, inf = float("nan"), float("inf")
    tensors = [torch.tensor([1.0, nan, 2.0]).bfloat16(), torch.randn(3, 4), torch.zeros(0),
               torch.tensor([-inf, 0.0]).half(), torch.full((70000,), 3.0e38).double(),  # (a sum would overflow)
               torch.cat([torch.ones(100000), torch.tensor([nan])])]
    assert finite_flags(tensors).tolist() == [False, True, True, False, True, False]
    assert finite_flags([torch.zeros(0), torch.zeros(0, 3)]).tolist() == [True, True]  # (aminmax refuses these)
    assert finite_flags([]).tolist() == []


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("where", [0, 7, 33_333, 99_999])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_one_nan_or_inf_anywhere_in_a_long_tensor_is_flagged(dtype, where, bad):
    """NaN, +inf or -inf alone, at the start, inside a vector lane, in the middle or at the end of 100,000 entries
    (the least and largest values are read in vectorised chunks): flagged, and the tensor without it is not."""
    t = torch.randn(100_000, generator=torch.Generator().manual_seed(where)).to(dtype)
    assert finite_flags([t]).tolist() == [True]
    t[where] = bad
    assert finite_flags([t, t.reshape(100, 1000), t.flip(0)]).tolist() == [False, False, False]


def test_the_flags_do_not_join_the_autograd_graph():
    w = torch.nn.Parameter(torch.randn(4))
    flags = finite_flags([w])
    assert flags.tolist() == [True] and not flags.requires_grad and flags.grad_fn is None


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
def test_holds_nan_answers_as_isnan_any_also_where_the_sum_alone_is_nan(dtype):
    """holds_nan reads the sum first: NaN there also from +inf and -inf together, or from partial sums past
    the largest float of both signs, where only isnan().any() tells whether a NaN is held."""
    from adaptive.finite import holds_nan

    big = torch.finfo(dtype).max
    cases = [torch.zeros(0), torch.randn(1000), torch.tensor([1.0, float("nan")]), torch.tensor([float("inf"), 2.0]),
             torch.tensor([float("inf"), -float("inf")]), torch.tensor([float("inf"), -float("inf"), float("nan")]),
             torch.cat([torch.full((5000,), big, dtype=dtype), torch.full((5000,), -big, dtype=dtype)]),  # partial sums of both signs overflow
             torch.tensor([-float("inf")] * 3 + [float("nan")])]
    for t in cases:
        t = t.to(dtype)
        assert holds_nan(t) == bool(torch.isnan(t).any()), t


def test_a_complex_tensor_is_finite_where_its_real_and_imaginary_parts_are():
    """A complex parameter (left dense) comes to the GradScaler path's check with the others: flagged by both
    parts, as the inf norm it replaced did (aminmax takes no complex tensor)."""
    nan, inf = float("nan"), float("inf")
    ok = torch.randn(1000, dtype=torch.complex64)
    bad = [ok.clone() for _ in range(3)]
    bad[0][500] = complex(nan, 0.0)
    bad[1][999] = complex(0.0, inf)
    bad[2][0] = complex(1.0, nan)
    flags = finite_flags([ok, *bad, ok.to(torch.complex128), torch.zeros(0, dtype=torch.complex64)])
    assert flags.tolist() == [True, False, False, False, True, True]


def test_float64_values_past_the_largest_float32_are_finite():
    """The least and largest values are compared in float64, so a float64 weight or gradient sum past float32's
    range (1e39, -1e300) is finite, as it is (in float32 it read as inf, and the update was skipped)."""
    big = torch.tensor([1.0, 1e39, -1e300, 2.0], dtype=torch.float64)
    assert finite_flags([big, big.to(torch.complex128)]).tolist() == [True, True]
    big[1] = float("inf")
    assert finite_flags([big]).tolist() == [False]
