"""Bit-packing of masks: 1 bit per synapse, exact round trip."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from adaptive import bitpack


@settings(max_examples=40, deadline=None)
@given(shape=st.lists(st.integers(0, 9), min_size=1, max_size=4), seed=st.integers(0, 2**16), p=st.floats(0, 1))
def test_round_trip_and_size(shape, seed, p):
    g = torch.Generator().manual_seed(seed)
    mask = torch.rand(shape, generator=g) < p
    packed = bitpack.pack(mask)
    assert packed.dtype == torch.uint8 and packed.dim() == 1
    assert packed.numel() == (mask.numel() + 7) // 8
    assert torch.equal(bitpack.unpack(packed, shape), mask)


def test_bit_order_is_most_significant_first():
    mask = torch.tensor([True, False, False, False, False, False, False, True, True])
    assert bitpack.pack(mask).tolist() == [0b10000001, 0b10000000]


def test_pack_rejects_a_non_bool_tensor():
    with pytest.raises(TypeError, match="bool"):
        bitpack.pack(torch.ones(3))


def test_unpack_rejects_a_wrong_size():
    with pytest.raises(ValueError, match="expected a flat uint8 tensor of 2 bytes"):
        bitpack.unpack(torch.zeros(3, dtype=torch.uint8), (3, 4))
    with pytest.raises(ValueError, match="uint8"):
        bitpack.unpack(torch.zeros(2, dtype=torch.int32), (3, 4))


def test_a_non_contiguous_mask_packs_in_its_own_element_order():
    mask = torch.tensor([[True, False, False], [True, True, False], [False, False, True]]).t()  # transposed
    assert not mask.is_contiguous()
    packed = bitpack.pack(mask)
    # rows of the transpose: 1 1 0 / 0 1 0 / 0 0 1, then 7 zero bits of padding
    assert packed.tolist() == [0b11001000, 0b10000000]
    assert torch.equal(bitpack.unpack(packed, mask.shape), mask)


@pytest.mark.parametrize("n", [5, 9, 13])
def test_every_padding_bit_set_is_refused_as_corrupt(n):
    """A packed mask's bits past its last synapse are 0: any of them set is a corrupt file, the first one too (an
    off-by-one in the check, bits[n + 1:], let the first through: a mutation review found no test of it)."""
    packed = bitpack.pack(torch.ones(n, dtype=torch.bool))
    assert bitpack.pack(torch.tensor([True] + [False] * 7)).tolist() == [128]  # (the first synapse: the high bit)
    for bit in range(n, 8 * len(packed)):
        bad = packed.clone()
        bad[bit // 8] |= 1 << (7 - bit % 8)
        with pytest.raises(ValueError, match="bits set past its last synapse"):
            bitpack.unpack(bad, (n,))
