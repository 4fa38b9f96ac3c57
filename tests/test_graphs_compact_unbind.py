"""graphs.compact through torch.unbind: parts along another axis than the channels' hold every channel."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import adaptive
import graphs
from test_graphs_compact import masked_output

torch.set_num_threads(1)


class Tokens(nn.Module):
    """A sequence Linear's two token positions taken apart with unbind."""

    def __init__(self, mode):
        super().__init__()
        self.mode = mode
        self.a, self.b = nn.Linear(4, 6), nn.Linear(6, 3)

    def forward(self, x):
        h = F.relu(self.a(x))  # [N, 2, 6]
        if self.mode == "unpacked":
            first, second = h.unbind(1)  # [N, 6] each
            return self.b(first * second)
        if self.mode == "stacked":
            return self.b(torch.stack(torch.unbind(h, dim=1), 1)).mean(1)
        if self.mode == "channels":  # each part one channel: kept
            return self.b(torch.stack(h.unbind(-1), -1)).mean(1)
        return self.b(torch.cat(h.unbind(1), 0))  # "catted": parts put back otherwise: kept


class Rows(nn.Module):
    """A conv's map taken apart into rows (one read by a Conv1d) and columns (stacked back)."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = nn.Conv2d(3, 6, 3, padding=1), nn.Conv2d(6, 4, 1), nn.Conv1d(6, 4, 1)
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        h = F.relu(self.a(x))
        top = torch.unbind(h, 2)[0]  # [N, 6, W]
        y = torch.stack(h.unbind(dim=3), 3)
        return self.fc(self.b(y).mean((2, 3)) + self.c(top).mean(2))


@pytest.mark.parametrize("mode, removed", [("unpacked", 2), ("stacked", 2), ("channels", 0), ("catted", 0)])
def test_unbind_parts_hold_every_channel(mode, removed):
    """b reads nothing of a:1 and a:4: they go where unbind's parts are taken by index or stacked back along the
    unbound axis; an unbind along the channels, or parts put back otherwise, keep every channel."""
    torch.manual_seed(0)
    m = Tokens(mode).eval()
    conn = adaptive.Connectome(m)
    masks = {k: torch.ones_like(v) for k, v in conn.masks.items()}
    masks["b.weight"][:, [1, 4]] = False
    conn.set_masks(masks)
    x = torch.randn(3, 2, 4)
    ref = masked_output(m, conn, x)
    small = graphs.compact(m, conn, x)
    assert small.compaction["removed"] == {"a": removed, "b": 0}
    assert small.get_submodule("b").in_features == 6 - removed
    assert torch.allclose(small(x), ref, atol=1e-5)


def test_unbind_of_a_map_into_rows_and_columns():
    """Rows (channels on axis 1 of each [N, C, W] part) and columns stacked back: a:4 and a:5, which neither b nor c
    reads, go; a:1, read by b, stays."""
    torch.manual_seed(0)
    m = Rows().eval()
    conn = adaptive.Connectome(m)
    masks = {k: torch.ones_like(v) for k, v in conn.masks.items()}
    masks["b.weight"][:, [4, 5]] = False
    masks["c.weight"][:, [1, 4, 5]] = False
    conn.set_masks(masks)
    x = torch.randn(2, 3, 5, 5)
    small = graphs.compact(m, conn, x)
    assert small.compaction["removed"] == {"a": 2, "b": 0, "c": 0, "fc": 0}
    assert small.get_submodule("c").in_channels == 4
    y = torch.randn(2, 3, 7, 6)
    assert torch.allclose(small(y), masked_output(m, conn, y), atol=1e-5)
