"""graphs.compact builds what it computes with on the model's device: a CUDA model's smaller layers, probe values and
channel-pad indices mix no CPU tensors in. The 'meta' device, which refuses to compute with CPU tensors as CUDA does,
stands in for a GPU where there is none."""
import importlib

import pytest
import torch
import torch.nn.functional as F
from torch import fx, nn

import adaptive
import graphs
from test_graphs_compact import masked_output, randomize_bn

compact_module = importlib.import_module("graphs.compact")

torch.set_num_threads(1)


@pytest.mark.parametrize("layer, folded", [
    (lambda: nn.Linear(8, 8, bias=False, device="meta"), False),  # a constant input folds into a new bias
    (lambda: nn.Conv2d(8, 8, 1, groups=2, bias=False, device="meta"), False),
    (lambda: nn.Conv2d(8, 8, 3, padding=1, groups=2, bias=False, device="meta"), True),  # a FoldedConv's border
    (lambda: nn.Conv2d(8, 8, 3, padding=1, groups=2, device="meta"), True),
], ids=["linear", "grouped_unpadded", "grouped_padded", "grouped_padded_bias"])
def test_a_shrunk_layer_is_built_on_its_weights_device(layer, folded):
    """Output units 0 and 4 and input channels 1 and 5 (constants 0.5, one in each of the two groups) go: the constants
    fold into a bias or a one-channel convolution computed on the weight's device (they were made on the CPU, which a
    CUDA model refused)."""
    m = layer()
    ko, ki = torch.ones(8, dtype=torch.bool), torch.ones(8, dtype=torch.bool)
    ko[[0, 4]] = False
    ki[[1, 5]] = False
    k_in = torch.full((8,), float("nan"), dtype=torch.float64)
    k_in[[1, 5]] = 0.5
    with torch.no_grad():
        new = compact_module._shrink_weighted(m, ko, ki, k_in)
    assert isinstance(new, graphs.FoldedConv) == folded
    inner = new.conv if folded else new
    assert inner.weight.shape[:2] == (6, 6 // getattr(m, "groups", 1))
    assert (inner.bias is not None) == (m.bias is not None or not folded)  # its own, or the constants folded in
    assert all(t.device.type == "meta" for t in [*new.parameters(), *new.buffers()])


def test_the_probe_of_a_layer_without_bias_runs_on_its_device():
    """A unit with no bias and no live input emits zero: the probe made those zeros on the CPU, which a CUDA model's
    probe refused to mix with its own values."""
    gm = fx.symbolic_trace(nn.Sequential(nn.Conv2d(3, 4, 3, bias=False), nn.ReLU())).to("meta")
    env = compact_module._probe(gm, torch.zeros(1, 3, 5, 5, device="meta"), None)
    assert all(v.device.type == "meta" for v in env.values() if isinstance(v, torch.Tensor))


class _Net(nn.Module):
    """A bias-free stem, a grouped 3x3 whose dead group's constants reach a padded border, and an option-A
    shortcut (channels zero-padded) around it."""

    def __init__(self):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 8, 1, bias=False), nn.BatchNorm2d(8)
        self.conv2, self.bn2 = nn.Conv2d(8, 8, 3, padding=1, groups=4, bias=False), nn.BatchNorm2d(8)
        self.conv3 = nn.Conv2d(8, 12, 3, padding=1, bias=False)
        self.fc = nn.Linear(12, 2)

    def forward(self, x):
        h = F.relu(self.bn1(self.conv1(x)))
        y = self.conv3(F.relu(self.bn2(self.conv2(h))))
        return self.fc(F.relu(y + F.pad(h, (0, 0, 0, 0, 2, 2))).mean((2, 3)))


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA device"))])
def test_a_model_compacts_on_its_device(device):
    """Each group of conv2 loses one output (conv3 reads nothing of 0, 4 and 6; 2 is a constant of the dead group 1,
    folded into conv3 at its padded border); fc reads nothing of channels 0 and 1, so conv3 loses them and the padded
    shortcut becomes a channel_pad. All of it is built on the model's device."""
    torch.manual_seed(0)
    m = randomize_bn(_Net()).to(device)
    conn = adaptive.Connectome(m)
    masks = {k: torch.ones_like(v) for k, v in conn.masks.items()}
    masks["conv2.weight"][2:4] = False
    masks["conv3.weight"][:, [0, 4, 6]] = False
    masks["fc.weight"][:, [0, 1]] = False
    conn.set_masks(masks)
    x = torch.randn(2, 3, 6, 6, device=device)
    small = graphs.compact(m, conn, x)
    assert small.compaction["removed"] == {"conv1": 0, "conv2": 4, "conv3": 2, "fc": 0}
    assert isinstance(small.get_submodule("conv3"), graphs.FoldedConv) and "channel_pad" in small.code
    assert all(t.device.type == device for t in [*small.parameters(), *small.buffers()])
    assert torch.allclose(small(x), masked_output(m, conn, x), atol=1e-4)
