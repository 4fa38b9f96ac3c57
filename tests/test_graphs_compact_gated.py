"""graphs.compact behind depthwise convolutions and squeeze-excitation gates: a product's factor that is a constant
channel goes while the product stays (the constant filled back in), and a product with an exact-zero factor is a
constant its readers fold."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import adaptive
import graphs
from graphs.compact_layers import _depthwise
from graphs.folded import unfolded
from test_graphs_compact import assert_same_outputs, masked_output, randomize_bn

torch.set_num_threads(1)


class DepthwiseSE(nn.Module):
    """A MobileNetV3 block: expand 1x1, depthwise 3x3, a squeeze-excitation gate (``scale * h``), project 1x1."""

    def __init__(self):
        super().__init__()
        self.expand, self.bn1 = nn.Conv2d(3, 8, 1, bias=False), nn.BatchNorm2d(8)
        self.dw, self.bn2 = nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False), nn.BatchNorm2d(8)
        self.fc1, self.fc2 = nn.Conv2d(8, 4, 1), nn.Conv2d(4, 8, 1)
        self.project, self.bn3 = nn.Conv2d(8, 4, 1, bias=False), nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        h = F.hardswish(self.bn1(self.expand(x)))
        h = F.hardswish(self.bn2(self.dw(h)))
        scale = torch.sigmoid(self.fc2(F.relu(self.fc1(F.adaptive_avg_pool2d(h, 1)))))
        return self.fc(self.bn3(self.project(scale * h)).mean((2, 3)))


def _gated_block(device="cpu"):
    torch.manual_seed(0)
    m = randomize_bn(DepthwiseSE()).to(device)
    with torch.no_grad():
        m.bn2.running_mean[2], m.bn2.bias[2] = 0.0, -5.0  # hardswish(-5) = 0: channel 2's constant is exactly 0
    conn = adaptive.Connectome(m)
    masks = {k: torch.ones_like(v) for k, v in conn.masks.items()}
    masks["dw.weight"][[1, 2]] = False  # whole depthwise filters: channels 1 and 2 are constants into the gate
    masks["fc2.weight"][3] = False  # gate 3 reads nothing: sigmoid(its bias), a constant
    masks["expand.weight"][5] = False  # constant into the depthwise: not uniform at its padded border, it stays
    conn.set_masks(masks)
    return m, conn


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA device"))])
def test_constant_channels_behind_a_depthwise_filter_go_through_the_gate(device):
    """Depthwise channels 1 and 2 (their filters pruned) carry constants: they go, with their expand units, the
    gate's squeeze folding them into fc1's bias and the product filling them back in (``k * scale``, data-dependent,
    is read by project). Channel 2's constant is 0, so its product is 0 too: fc2's unit 2 goes with it. fc2's unit 3,
    a constant gate, goes, filled back into the product. Before, all of them stayed. The fills are on the model's
    device."""
    m, conn = _gated_block(device)
    x = torch.randn(2, 3, 7, 7, device=device)
    ref = masked_output(m, conn, x)
    small = graphs.compact(m, conn, x)
    assert small.compaction["removed"] == {"expand": 2, "dw": 2, "fc1": 0, "fc2": 2, "project": 0, "fc": 0}
    assert small.get_submodule("dw").groups == 6 and small.get_submodule("bn2").num_features == 6
    assert small.get_submodule("project").in_channels == 7  # channel 2's product went, channel 1's stays
    assert small.code.count("channel_pad(") == 2  # the gate's constant 3, h's constant 1 put back
    assert all(t.device.type == device for t in [*small.parameters(), *small.buffers()])
    assert_same_outputs(small, m, ref, x, torch.randn(3, 3, 9, 11, device=device))


def test_a_constant_factor_whose_channel_stays_elsewhere_keeps_the_product():
    """h's constant channel 1 also reaches the output: it stays, and so does the product's (nothing to fill)."""

    class Tapped(DepthwiseSE):
        def forward(self, x):
            h = F.hardswish(self.bn1(self.expand(x)))
            h = F.hardswish(self.bn2(self.dw(h)))
            scale = torch.sigmoid(self.fc2(F.relu(self.fc1(F.adaptive_avg_pool2d(h, 1)))))
            return self.fc(self.bn3(self.project(scale * h)).mean((2, 3))), h

    torch.manual_seed(0)
    m = randomize_bn(Tapped())
    conn = adaptive.Connectome(m)
    masks = {k: torch.ones_like(v) for k, v in conn.masks.items()}
    masks["dw.weight"][1] = False
    masks["project.weight"][:, 1] = False  # the product's channel 1 unused: it could go, h's 1 may not
    conn.set_masks(masks)
    x = torch.randn(2, 3, 7, 7)
    small = graphs.compact(m, conn, x)
    assert small.compaction["removed"] == {"expand": 0, "dw": 0, "fc1": 0, "fc2": 0, "project": 0, "fc": 0}
    assert "channel_pad(" not in small.code
    conn.apply()
    with torch.no_grad():
        for got, want in zip(small(x), m.eval()(x)):
            assert torch.allclose(got, want, atol=1e-5)


def test_a_copy_with_a_filled_product_saves_loads_scripts_and_compacts_again(tmp_path):
    """The fill is a buffer of the copy and channel_pad one call: the copy saves, loads back, compiles with
    TorchScript (as the model does) and compacts again."""
    m, conn = _gated_block()
    x = torch.randn(2, 3, 7, 7)
    small = graphs.compact(m, conn, x)
    torch.save(small, tmp_path / "small.pt")
    back = torch.load(tmp_path / "small.pt", weights_only=False)
    assert torch.equal(back(x), small(x))
    torch.jit.script(m)
    assert torch.allclose(torch.jit.script(back)(x), small(x), atol=1e-6)
    again = graphs.compact(back, None, x)
    assert again.compaction["units_removed"] == 0 and torch.allclose(again(x), small(x), atol=1e-6)


def test_mobilenet_v3_small_loses_every_pruned_depthwise_channel():
    """torchvision's MobileNetV3-Small, 80% of every layer pruned by magnitude and a fifth of the depthwise filters
    whole: no depthwise channel whose filter is pruned stays (those behind a squeeze-excitation gate did), and the
    copy computes the masked model's outputs."""
    import torchvision

    torch.manual_seed(0)
    m = randomize_bn(torchvision.models.mobilenet_v3_small(num_classes=10))
    with torch.no_grad():
        m.classifier[-1].weight.normal_()  # outputs of a size the check's tolerance means something at
    conn = adaptive.Connectome(m)
    mods, params = dict(m.named_modules()), dict(m.named_parameters())
    gen = torch.Generator().manual_seed(0)
    masks = {}
    for k in conn.masks:
        w = params[k].detach().abs()
        masks[k] = w > w.flatten().kthvalue(int(0.8 * w.numel())).values
        if _depthwise(mods[k.rpartition(".")[0]]):
            masks[k][torch.rand(w.shape[0], generator=gen) < 0.2] = False
    conn.set_masks(masks)
    x = torch.randn(2, 3, 32, 32)
    ref = masked_output(m, conn, x)
    small = graphs.compact(m, conn, x)
    dws = [unfolded(c) for c in small.modules() if _depthwise(unfolded(c))]
    assert len(dws) == 11 and all(bool((c.weight.flatten(1) != 0).any(1).all()) for c in dws)
    assert_same_outputs(small, m, ref, x, torch.randn(3, 3, 48, 40))


class WhereRelu(DepthwiseSE):
    """The block with its depthwise activation written out, ``torch.where(h > 0, h, 0)``: on the probe's NaN input
    ``h > 0`` is False, so the activation reads 0 everywhere, a constant to the probe though it depends on the data."""

    def forward(self, x):
        h = F.hardswish(self.bn1(self.expand(x)))
        h = self.bn2(self.dw(h))
        h = torch.where(h > 0, h, torch.zeros_like(h))
        scale = torch.sigmoid(self.fc2(F.relu(self.fc1(F.adaptive_avg_pool2d(h, 1)))))
        return self.fc(self.bn3(self.project(scale * h)).mean((2, 3)))


def test_a_float_chosen_by_a_comparison_of_the_data_is_no_constant():
    """A float made with a boolean computed from the data (``torch.where(h > 0, h, 0)``) depends on the data: the
    probe no longer takes it for the constant 0 (every product of the gate and the squeeze's input folded away as
    zeros) and compact returns the masked model's outputs, fc2's constant unit 3 filled back into the product,
    instead of raising CompactionMismatchError."""
    torch.manual_seed(0)
    m = randomize_bn(WhereRelu())
    with torch.no_grad():
        m.fc.weight.normal_()
    conn = adaptive.Connectome(m)
    masks = {k: torch.ones_like(v) for k, v in conn.masks.items()}
    masks["fc2.weight"][3] = False  # gate 3 reads nothing: sigmoid(its bias), a constant filled back in
    conn.set_masks(masks)
    x = torch.randn(2, 3, 7, 7)
    ref = masked_output(m, conn, x)
    small = graphs.compact(m, conn, x)
    assert small.compaction["removed"] == {"expand": 0, "dw": 0, "fc1": 0, "fc2": 1, "project": 0, "fc": 0}
    assert small.code.count("channel_pad(") == 1
    assert_same_outputs(small, m, ref, x, torch.randn(3, 3, 9, 11))
