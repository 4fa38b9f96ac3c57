"""graphs.compact through tensors made filled with one value and sized after another (``x.new_zeros(x.size())``)."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import adaptive
import graphs
from test_graphs_compact import masked_output

torch.set_num_threads(1)


class Filled(nn.Module):
    def __init__(self, mode):
        super().__init__()
        self.mode = mode
        self.a, self.b = nn.Linear(4, 6), nn.Linear(6, 3)

    def forward(self, x):
        h = F.relu(self.a(x))  # [N, T, 6]
        made = {
            "new_zeros": lambda: h.new_zeros(h.size()),
            "new_ones_sizes": lambda: h.new_ones(h.size(0), 1, h.size(2)),  # one value per token, broadcast
            "zeros": lambda: torch.zeros(h.shape, dtype=h.dtype),
            "zeros_like": lambda: torch.zeros_like(h),
            "new_full": lambda: h.new_full(h.shape, 0.5),
            "count_filled": lambda: torch.full(h.shape, h.shape[2] * 1.0),  # the channel count is a value
            "written_count": lambda: h.new_zeros(h.shape[0], h.shape[1], 6),  # would not shrink
            "randn_like": lambda: torch.randn_like(h) * 0,  # its draws would change with the count
        }[self.mode]()
        return self.b(h + made)


@pytest.mark.parametrize("mode, removed", [("new_zeros", 2), ("new_ones_sizes", 2), ("zeros", 2), ("zeros_like", 2),
                                           ("new_full", 2), ("count_filled", 0), ("written_count", 0),
                                           ("randn_like", 0)])
def test_a_filled_tensor_sized_after_another_follows_its_channels(mode, removed):
    """b reads nothing of a:1 and a:4: they go, with the channels of a tensor whose size reads h's channel count at
    run time; a count written in, used as a value, or random draws keep them."""
    torch.manual_seed(0)
    m = Filled(mode).eval()
    conn = adaptive.Connectome(m)
    masks = {k: torch.ones_like(v) for k, v in conn.masks.items()}
    masks["b.weight"][:, [1, 4]] = False
    conn.set_masks(masks)
    x = torch.randn(2, 3, 4)
    ref = masked_output(m, conn, x)
    small = graphs.compact(m, conn, x)
    assert small.compaction["removed"] == {"a": removed, "b": 0}
    assert torch.allclose(small(x), ref, atol=1e-5)
    y = torch.randn(3, 5, 4)
    assert torch.allclose(small(y), masked_output(m, conn, y), atol=1e-5)


class SqueezeMap(nn.Module):
    """A conv map plus a zero map made from its size, in NCHW."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 6, 3, padding=1), nn.Conv2d(6, 4, 1)

    def forward(self, x):
        h = F.relu(self.a(x))
        return self.b(torch.maximum(h, h.new_zeros(h.size()))).mean((2, 3))


def test_new_zeros_of_a_maps_size():
    torch.manual_seed(0)
    m = SqueezeMap().eval()
    conn = adaptive.Connectome(m)
    masks = {k: torch.ones_like(v) for k, v in conn.masks.items()}
    masks["b.weight"][:, [0, 5]] = False
    conn.set_masks(masks)
    x = torch.randn(2, 3, 5, 5)
    small = graphs.compact(m, conn, x)
    assert small.compaction["removed"] == {"a": 2, "b": 0}
    assert small.get_submodule("b").in_channels == 4
    y = torch.randn(2, 3, 6, 9)
    assert torch.allclose(small(y), masked_output(m, conn, y), atol=1e-5)
