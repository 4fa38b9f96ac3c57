"""graphs.compact through grouped (non-depthwise) convolutions: whole dead groups go, and every other group loses
the same number of input and output channels."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import adaptive
import graphs
from test_graphs_compact import masked_output, randomize_bn

torch.set_num_threads(1)


class Bottleneck(nn.Module):
    """A ResNeXt block's middle: 1x1, 3x3 of 4 groups (2 channels in and out each), 1x1."""

    def __init__(self):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 8, 1, bias=False), nn.BatchNorm2d(8)
        self.conv2, self.bn2 = nn.Conv2d(8, 8, 3, padding=1, groups=4, bias=False), nn.BatchNorm2d(8)
        self.conv3, self.bn3 = nn.Conv2d(8, 6, 1, bias=False), nn.BatchNorm2d(6)
        self.fc = nn.Linear(6, 2)

    def forward(self, x):
        h = F.relu(self.bn1(self.conv1(x)))
        h = F.relu(self.bn2(self.conv2(h)))
        return self.fc(F.relu(self.bn3(self.conv3(h))).mean((2, 3)))


@pytest.mark.parametrize("even", [True, False])
def test_grouped_conv_loses_dead_groups_and_equal_counts_per_group(even):
    """Group 1 of conv2 is dead: it goes whole (its filters, its inputs conv1:2,3 and its outputs, constants folded into
    conv3). Groups 0, 2 and 3 can each lose one input (conv1:0 and conv1:7 are constants, folded at the padded border;
    conv2 reads nothing of channel 5) and one output (conv3 reads nothing of conv2:0, 4 and 6), so they do. Where
    group 3 can lose none (conv1:7 alive, conv3 reads conv2:6), the others keep theirs too: the groups stay alike."""
    torch.manual_seed(0)
    m = randomize_bn(Bottleneck())
    conn = adaptive.Connectome(m)
    masks = {k: torch.ones_like(v) for k, v in conn.masks.items()}
    masks["conv2.weight"][2:4] = False  # group 1: no live input
    masks["conv1.weight"][0] = False  # a constant input of group 0
    masks["conv2.weight"][4:6, 1] = False  # group 2 reads nothing of its input 1 (channel 5)
    masks["conv3.weight"][:, [0, 4]] = False
    if even:
        masks["conv1.weight"][7] = False
        masks["conv3.weight"][:, 6] = False
    conn.set_masks(masks)
    x = torch.randn(2, 3, 6, 6)
    ref = masked_output(m, conn, x)
    small = graphs.compact(m, conn, x)
    conv2 = small.get_submodule("conv2")
    if even:
        assert small.compaction["removed"] == {"conv1": 5, "conv2": 5, "conv3": 0, "fc": 0}
        assert isinstance(conv2, graphs.FoldedConv)  # conv1:0 and conv1:7 reach the zero-padded border
        conv2 = conv2.conv
        assert (conv2.groups, conv2.in_channels, conv2.out_channels) == (3, 3, 3)
    else:
        assert small.compaction["removed"] == {"conv1": 2, "conv2": 2, "conv3": 0, "fc": 0}
        assert (conv2.groups, conv2.in_channels, conv2.out_channels) == (3, 6, 6)
    assert small.get_submodule("bn2").num_features == conv2.out_channels
    assert torch.allclose(small(x), ref, atol=1e-5)
    y = torch.randn(3, 3, 9, 11)  # another size: the folded border holds
    assert torch.allclose(small(y), masked_output(m, conn, y), atol=1e-5)


def test_grouped_conv_with_align_keeps_multiples_and_alike_groups():
    """align keeps whole classes, which may unsettle a grouped convolution's groups and the reverse: both hold."""
    torch.manual_seed(0)
    m = randomize_bn(Bottleneck())
    conn = adaptive.Connectome(m)
    masks = {k: torch.ones_like(v) for k, v in conn.masks.items()}
    masks["conv2.weight"][2:4] = False
    masks["conv3.weight"][:, [0, 4, 6]] = False
    conn.set_masks(masks)
    x = torch.randn(2, 3, 6, 6)
    small = graphs.compact(m, conn, x, align=2)
    conv2 = small.get_submodule("conv2")
    # group 1 goes; 3 groups of one output each would be 3 units: align keeps conv2:0, so groups 2 and 3 keep theirs
    assert small.compaction["removed"] == {"conv1": 2, "conv2": 2, "conv3": 0, "fc": 0}
    assert (conv2.groups, conv2.in_channels, conv2.out_channels) == (3, 6, 6)
    assert torch.allclose(small(x), masked_output(m, conn, x), atol=1e-5)


def _kill_group0(model, masks, unread=None):
    """Group 0 of every grouped, non-depthwise conv gets no live input; ``unread(name)``: a layer that then reads
    nothing of that group's outputs. The grouped convolutions, as ``{name: (groups, outputs per group)}``."""
    found = {}
    for name, mod in model.named_modules():
        if isinstance(mod, nn.Conv2d) and 1 < mod.groups < mod.out_channels:
            opg = mod.out_channels // mod.groups
            masks[name + ".weight"][:opg] = False
            if unread is not None:
                masks[unread(name) + ".weight"][:, :opg] = False
            found[name] = (mod.groups, opg)
    return found


@pytest.mark.parametrize("arch", ["regnet_x_400mf", "regnet_y_400mf"])
def test_torchvision_regnet_loses_its_dead_groups(arch):
    """RegNet's blocks: 1x1 (f.a), grouped 3x3 (f.b), squeeze-excitation in RegNetY (f.se), 1x1 (f.c). A dead group of
    f.b goes with its f.a units; in RegNetY the excitation gate multiplies the group's constant outputs into data,
    so they go where f.c reads nothing of them, with the gate's units (se.fc2) that scale them."""
    import torchvision

    torch.manual_seed(0)
    m = randomize_bn(getattr(torchvision.models, arch)(num_classes=10))
    conn = adaptive.Connectome(m)
    masks = {k: torch.ones_like(v) for k, v in conn.masks.items()}
    se = arch == "regnet_y_400mf"
    found = _kill_group0(m, masks, (lambda b: b[:-len("b.0")] + "c.0") if se else None)
    conn.set_masks(masks)
    x = torch.randn(2, 3, 32, 32)
    small = graphs.compact(m, conn, x)
    removed = small.compaction["removed"]
    assert len(found) == (16 if se else 22)
    for b, (groups, opg) in found.items():
        block = b[:-len("b.0")]
        assert removed[b] == opg and removed[block + "a.0"] == opg and removed[block + "c.0"] == 0
        assert small.get_submodule(b).groups == groups - 1
        if se:
            assert removed[block + "se.fc2"] == opg and removed[block + "se.fc1"] == 0
    assert sum(removed.values()) == (2 + se) * sum(opg for _, opg in found.values())
    assert torch.allclose(small(x), masked_output(m, conn, x), atol=1e-4)


def test_torchvision_resnext50_loses_its_dead_groups():
    """ResNeXt-50 32x4d: group 0 of every grouped 3x3 (conv2) dead; it goes with its conv1 units."""
    import torchvision

    torch.manual_seed(0)
    m = randomize_bn(torchvision.models.resnext50_32x4d(num_classes=10))
    conn = adaptive.Connectome(m)
    masks = {k: torch.ones_like(v) for k, v in conn.masks.items()}
    found = _kill_group0(m, masks)
    conn.set_masks(masks)
    x = torch.randn(1, 3, 32, 32)
    small = graphs.compact(m, conn, x)
    removed = small.compaction["removed"]
    assert len(found) == 16
    for b, (groups, opg) in found.items():
        assert removed[b] == opg and removed[b[:-1] + "1"] == opg and removed[b[:-1] + "3"] == 0
        assert small.get_submodule(b).groups == groups - 1 == 31
    assert torch.allclose(small(x), masked_output(m, conn, x), atol=1e-4)
