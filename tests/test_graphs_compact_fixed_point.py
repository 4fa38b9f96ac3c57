"""``graphs.compact`` removes in one pass all it would remove over several: compacting its copy again (with every
synapse kept) removes nothing more. Three ways one pass used to stop short: a unit read only by units that go (their
weights then read nothing), a unit whose live weights read only constants (a constant itself, as its readers fold it),
and a convolution kept one channel where a grouped convolution's groups keep some of its channels anyway."""
import torch
from torch import nn

import adaptive
import graphs

torch.set_num_threads(1)


def _compact_twice(model, masks, x):
    """The copy ``compact`` makes of ``model`` under ``masks``, after checking that it computes the masked model and
    that compacting it again removes nothing more."""
    conn = adaptive.Connectome(model)
    conn.set_masks({**conn.masks, **masks})
    small = graphs.compact(model, conn, x)
    ref = model
    with torch.no_grad():
        for name, m in conn.masks.items():
            dict(ref.named_parameters())[name].masked_fill_(~m, 0.0)
        assert torch.allclose(small(x), ref(x), rtol=1e-10, atol=1e-10)
    again = graphs.compact(small, None, x)  # (no Connectome of a copy left with no weights)
    assert again.compaction["units_removed"] == 0, again.compaction["removed"]
    assert again.compaction["params_after"] == again.compaction["params_before"]
    return small


def _mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2)).double().eval()


def test_units_read_only_by_units_that_go_go_with_them():
    model = _mlp()
    # the head reads none of the middle layer's units: they go, and the first layer's with them, which only they read
    small = _compact_twice(model, {"4.weight": torch.zeros(2, 4, dtype=torch.bool)}, torch.randn(5, 3).double())
    assert small.compaction["removed"] == {"0": 4, "2": 4, "4": 0}


def test_a_unit_whose_live_weights_read_only_constants_is_a_constant():
    model = _mlp()
    with torch.no_grad():
        model[0].bias.fill_(0.5)  # the dead units of the first layer emit relu(0.5): constants, not zeros
    first = torch.ones(4, 3, dtype=torch.bool)
    first[:2] = False  # units 0 and 1 have no live input
    middle = torch.ones(4, 4, dtype=torch.bool)
    middle[:, 2:] = False  # the middle layer reads only those constants: each of its units is a constant too
    small = _compact_twice(model, {"0.weight": first, "2.weight": middle}, torch.randn(5, 3).double())
    assert small.compaction["removed"] == {"0": 4, "2": 4, "4": 0}


def test_unpadded_convolution_units_reading_only_constants_go_and_the_others_stay():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Conv2d(2, 3, 1), nn.ReLU(), nn.Conv2d(3, 3, 1), nn.ReLU(),
                          nn.Conv2d(3, 2, 3, padding=1)).double().eval()
    with torch.no_grad():
        model[0].bias.fill_(0.5)
    first = torch.ones(3, 2, 1, 1, dtype=torch.bool)
    first[:2] = False  # constants
    second = torch.ones(3, 3, 1, 1, dtype=torch.bool)
    second[:2, 2] = False  # units 0 and 1 read only the constants; unit 2 reads the live one too
    small = _compact_twice(model, {"0.weight": first, "2.weight": second}, torch.randn(2, 2, 6, 5).double())
    # the second layer's constants reach the padded last one through a FoldedConv
    assert small.compaction["removed"] == {"0": 2, "2": 2, "4": 0}


class _Grouped(nn.Module):
    """A 1x1 convolution into a grouped one (3 groups of 2 outputs) into a head that reads groups 1 and 2 only."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(2, 3, 1)
        self.g = nn.Conv2d(3, 6, 3, padding=1, groups=3)
        self.c = nn.Conv2d(6, 2, 1)

    def forward(self, x):
        return self.c(torch.relu(self.g(torch.relu(self.a(x)))))


def test_a_convolution_keeps_one_channel_only_where_no_group_keeps_one():
    torch.manual_seed(2)
    model = _Grouped().double().eval()
    with torch.no_grad():
        model.a.bias.fill_(0.5)  # constants, not zeros after the ReLU
    head = torch.zeros(2, 6, 1, 1, dtype=torch.bool)
    head[:, [2, 4]] = True  # one output of group 1 and one of group 2
    # every unit of a is a constant (no live input): all could go, but groups 1 and 2 keep theirs; group 0 goes whole
    masks = {"a.weight": torch.zeros(3, 2, 1, 1, dtype=torch.bool), "c.weight": head}
    small = _compact_twice(model, masks, torch.randn(2, 2, 5, 5).double())
    assert small.compaction["removed"] == {"a": 1, "g": 4, "c": 0}


def test_a_constant_no_kept_output_reads_adds_no_bias():
    # review of s52_idem: a unit the probe now takes as a constant (it reads only constants) that no kept output reads
    # gave its bias-less reader a bias of zeros: more parameters than before the change
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 3), nn.ReLU(), nn.Linear(3, 2, bias=False))
    model = model.double().eval()
    with torch.no_grad():
        model[0].bias.fill_(0.5)
        model[2].bias.fill_(0.25)
    first = torch.ones(3, 2, dtype=torch.bool)
    first[0] = False  # unit 0: the constant relu(0.5)
    middle = torch.ones(3, 3, dtype=torch.bool)
    middle[0, 1:] = False  # unit 0 reads only that constant: a constant too
    head = torch.ones(2, 3, dtype=torch.bool)
    head[:, 0] = False  # and the head reads neither
    small = _compact_twice(model, {"0.weight": first, "2.weight": middle, "4.weight": head},
                           torch.randn(5, 2).double())
    assert small.compaction["removed"] == {"0": 1, "2": 1, "4": 0}
    assert small.get_submodule("4").bias is None
