"""graphs.compact shrinks transposed convolutions (``nn.ConvTranspose1d/2d/3d``, weight stored ``(in, out/groups,
*kernel)``): a dead output channel goes (its bias folded into what reads it), and so does an input channel that no
live synapse reads or that is a constant (folded into the layer, whose kernel pattern of a constant is reproduced
exactly). The expected counts are read from the masks in their stored layout, never from the library's helpers."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import adaptive
import graphs
from test_graphs_compact import randomize_bn

torch.set_num_threads(1)


class UNet(nn.Module):
    """Conv2d down, ConvTranspose2d up, skip concatenation, final 1x1 conv."""

    def __init__(self, groups: int = 1, up_kernel: int = 2, sized: bool = False):
        super().__init__()
        self.enc = nn.Conv2d(2, 6, 3, padding=1)
        self.down = nn.Conv2d(6, 8, 3, padding=1, stride=2)
        pad = (up_kernel - 1) // 2
        self.up = nn.ConvTranspose2d(8, 6, up_kernel, stride=2, padding=pad, groups=groups)
        self.dec = nn.Conv2d(6 + 6, 3, 1)
        self.sized = sized

    def forward(self, x):
        e = F.relu(self.enc(x))
        h = F.relu(self.down(e))
        u = self.up(h, output_size=e.shape[2:]) if self.sized else self.up(h)
        return self.dec(torch.cat([F.relu(u), e], 1))


def _neurons(conn, layer, dead):
    """The ``neuron`` ensemble mask of ``layer`` (one flag per output channel) with the channels ``dead`` pruned."""
    m = conn.model.get_submodule(layer)
    keep = torch.ones(m.out_channels, dtype=torch.bool)
    keep[list(dead)] = False
    return keep


def _compare(small, model, x, atol=1e-6):
    with torch.no_grad():
        ref, out = model(x), small(x)
    assert out.shape == ref.shape and torch.allclose(out, ref, atol=atol, rtol=1e-6)


def _conv(small, name):
    m = small.get_submodule(name)
    return m.conv if isinstance(m, graphs.FoldedConv) else m


def test_unet_up_convolution_loses_its_dead_outputs_and_the_channels_it_does_not_read():
    """up's output channels 1 and 4 have no live synapse (neurons pruned): constants after the ReLU, folded into dec's
    bias. Its input channels are down's dead neurons 2 and 5 (constants, folded into up at its stride's pattern) and
    channel 7, whose kernels are all pruned (read by no live synapse)."""
    torch.manual_seed(0)
    model = UNet().eval()
    model.down.bias.data.abs_()  # dead neurons emit a non-zero constant through the ReLU
    conn = adaptive.Connectome(model, ensemble="kernel")  # one flag per (output, input) channel pair
    down, up = torch.ones(8, 6, dtype=torch.bool), torch.ones(6, 8, dtype=torch.bool)
    down[[2, 5]] = False  # down's neurons 2 and 5
    up[[1, 4]] = False  # up's neurons 1 and 4
    up[:, 7] = False  # every kernel reading up's input channel 7
    conn.set_ensemble_masks({"down.weight": down, "up.weight": up})
    conn.apply()
    stored = conn.masks["up.weight"]
    dead_out = int((~stored.transpose(0, 1).flatten(1).any(1)).sum())  # no live synapse into the channel
    unread = ~stored.flatten(1).any(1)  # no live synapse reads the channel
    dead_down = ~conn.masks["down.weight"].flatten(1).any(1)
    assert (dead_out, int(unread.sum()), int(dead_down.sum())) == (2, 1, 2)
    x = torch.randn(2, 2, 8, 8)
    small = graphs.compact(model, conn, x)
    _compare(small, model, x)
    up = _conv(small, "up")
    assert isinstance(small.up, graphs.FoldedConv)  # down's constants: a pattern of up's 2x2 kernel, not a bias
    assert (up.in_channels, up.out_channels) == (8 - int((unread | dead_down).sum()), 6 - dead_out)
    # down loses its dead neurons and channel 7, which nothing reads any more
    assert small.compaction["removed"]["up"] == dead_out and small.down.out_channels == 8 - int((unread | dead_down).sum())
    # the kept synapses are the original's, exactly, stored (in, out, *kernel)
    kept_in = (~(unread | dead_down)).nonzero().flatten()
    kept_out = torch.tensor([0, 2, 3, 5])
    assert torch.equal(up.weight, model.up.weight.detach()[kept_in][:, kept_out])
    assert torch.equal(up.bias, model.up.bias.detach()[kept_out])
    with torch.no_grad():  # and on another size, where the stride's pattern and the borders move
        _compare(small, model, torch.randn(1, 2, 10, 14))


def test_an_up_convolution_called_with_output_size_keeps_its_padding_for_the_folded_constants():
    """up(h, output_size=e.shape[2:]): its output padding comes from the call, and so does the folded constants'."""
    torch.manual_seed(0)
    model = UNet(up_kernel=3, sized=True).eval()
    model.down.bias.data.abs_()
    conn = adaptive.Connectome(model, ensemble="neuron")
    conn.set_ensemble_masks({"down.weight": _neurons(conn, "down", [0, 3, 6])})
    conn.apply()
    x = torch.randn(2, 2, 8, 8)  # down: 4x4; up: 7x7 unpadded, 8x8 as asked
    small = graphs.compact(model, conn, x)
    _compare(small, model, x)
    _compare(small, model, torch.randn(1, 2, 9, 12))
    assert isinstance(small.up, graphs.FoldedConv) and small.up.conv.in_channels == 5


@pytest.mark.parametrize("case", ["whole group", "even", "uneven"])
def test_grouped_up_convolution_loses_a_whole_group_or_equal_counts_per_group(case):
    """groups=2: group 0 reads down's channels 0-3 and writes up's 0-2, group 1 reads 4-7 and writes 3-5. A group
    whose inputs and outputs are all dead goes whole; otherwise each group loses as many channels as the one that
    can lose the fewest."""
    torch.manual_seed(0)
    model = UNet(groups=2).eval()
    model.down.bias.data.abs_()  # down's dead neurons: non-zero constants, folded into up group by group
    conn = adaptive.Connectome(model, ensemble="neuron")
    down_dead, up_dead = {"whole group": ([4, 5, 6, 7], [3, 4, 5]), "even": ([1, 6], [0, 5]),
                          "uneven": ([1, 2, 6], [0])}[case]
    conn.set_ensemble_masks({"down.weight": _neurons(conn, "down", down_dead), "up.weight": _neurons(conn, "up", up_dead)})
    conn.apply()
    x = torch.randn(2, 2, 8, 8)
    small = graphs.compact(model, conn, x)
    _compare(small, model, x)
    up = _conv(small, "up")
    expect = {"whole group": (1, 4, 3), "even": (2, 6, 4), "uneven": (2, 6, 6)}[case]
    assert (up.groups, up.in_channels, up.out_channels) == expect
    assert small.compaction["removed"]["up"] == 6 - expect[2]
    assert isinstance(small.up, graphs.FoldedConv) == (case != "whole group")  # a whole group's inputs fold nowhere


def test_depthwise_up_convolution_drops_channel_c_in_and_out_together():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(), nn.ConvTranspose2d(4, 4, 2, stride=2, groups=4),
                          nn.ReLU(), nn.Conv2d(4, 2, 3, padding=1)).eval()
    conn = adaptive.Connectome(model, ensemble="neuron")
    conn.set_ensemble_masks({"2.weight": torch.tensor([True, False, True, True])})
    conn.apply()
    x = torch.randn(2, 2, 5, 5)
    small = graphs.compact(model, conn, x)
    _compare(small, model, x)
    up = small.get_submodule("2")
    assert (up.groups, up.in_channels, up.out_channels) == (3, 3, 3)
    assert torch.equal(up.weight, model[2].weight.detach()[[0, 2, 3]])


@pytest.mark.parametrize("kernel", [1, 3])
def test_conv_transpose_1d_with_output_padding_and_dilation(kernel):
    """A constant input of a transposed convolution adds its kernel at each input position, the output padding and
    the cropped borders included: a bias only for a 1-wide kernel at stride 1 with no output padding."""
    torch.manual_seed(0)
    stride, out_pad = (2, 1) if kernel == 3 else (1, 1)
    model = nn.Sequential(nn.Conv1d(3, 6, 3, padding=1), nn.ReLU(),
                          nn.ConvTranspose1d(6, 5, kernel, stride=stride, padding=kernel // 2, output_padding=out_pad,
                                             dilation=2),
                          nn.ReLU(), nn.Conv1d(5, 2, 1)).eval()
    model[0].bias.data.abs_()
    conn = adaptive.Connectome(model, ensemble="neuron")
    conn.set_ensemble_masks({"0.weight": _neurons(conn, "0", [1, 4]), "2.weight": torch.tensor([True, False] + [True] * 3)})
    conn.apply()
    x = torch.randn(2, 3, 7)
    small = graphs.compact(model, conn, x)
    _compare(small, model, x)
    _compare(small, model, torch.randn(1, 3, 12))
    assert isinstance(small.get_submodule("2"), graphs.FoldedConv)  # the output padding's end holds no constant
    up = _conv(small, "2")
    assert (up.in_channels, up.out_channels, up.output_padding, up.dilation) == (4, 4, (out_pad,), (2,))


@pytest.mark.parametrize("kernel", [1, 2])
def test_conv_transpose_3d(kernel):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv3d(2, 4, 1), nn.ReLU(), nn.ConvTranspose3d(4, 4, kernel, stride=kernel), nn.ReLU(),
                          nn.Conv3d(4, 2, 1)).eval()
    model[0].bias.data.abs_()
    conn = adaptive.Connectome(model, ensemble="neuron")
    conn.set_ensemble_masks({"0.weight": _neurons(conn, "0", [2]), "2.weight": torch.tensor([False, True, True, True])})
    conn.apply()
    x = torch.randn(2, 2, 3, 2, 3)
    small = graphs.compact(model, conn, x)
    _compare(small, model, x)
    # a 1x1x1 kernel at stride 1 spreads a constant input uniformly: into the bias; a 2x2x2 one at stride 2 does not
    assert isinstance(small.get_submodule("2"), graphs.FoldedConv) == (kernel == 2)
    up = _conv(small, "2")
    assert (up.in_channels, up.out_channels) == (3, 3)


def test_a_dead_biased_up_channel_feeding_batchnorm_and_a_padded_conv_is_folded():
    """up's channel 2 has no live synapse: its bias, through BatchNorm and ReLU, is a non-zero constant that the
    padded 3x3 conv reading it takes as a one-channel convolution of ones (its borders included)."""
    torch.manual_seed(0)
    model = randomize_bn(nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(), nn.ConvTranspose2d(4, 4, 2, stride=2),
                                       nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 2, 3, padding=1)))
    model[3].weight.data[2], model[3].running_mean[2] = 1.0, model[2].bias[2].item() - 1  # BN lifts it above zero
    conn = adaptive.Connectome(model, ensemble="neuron")
    conn.set_ensemble_masks({"2.weight": torch.tensor([True, True, False, True])})
    conn.apply()
    x = torch.randn(2, 2, 5, 5)
    with torch.no_grad():
        h = model[:5](x)
    assert bool((h[:, 2] == h[0, 2, 0, 0]).all()) and float(h[0, 2, 0, 0]) != 0  # a non-zero constant channel
    small = graphs.compact(model, conn, x)
    _compare(small, model, x)
    assert small.get_submodule("2").out_channels == 3 and small.get_submodule("3").num_features == 3
    assert isinstance(small.get_submodule("5"), graphs.FoldedConv) and small.get_submodule("5").conv.in_channels == 3


def test_align_counts_an_up_convolution_s_output_units():
    torch.manual_seed(0)
    model = UNet().eval()
    conn = adaptive.Connectome(model, ensemble="neuron")
    conn.set_ensemble_masks({"up.weight": _neurons(conn, "up", [1, 2, 4])})
    conn.apply()
    x = torch.randn(2, 2, 8, 8)
    assert graphs.compact(model, conn, x).up.out_channels == 3
    assert graphs.compact(model, conn, x, align=2).up.out_channels == 4


@pytest.mark.parametrize("layer", [nn.Conv2d, nn.ConvTranspose2d])
def test_a_folded_layer_called_with_its_input_by_keyword(layer):
    """``self.b(input=h)``: the FoldedConv that takes b's place takes ``input`` by name as the layer does."""

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(2, 4, 3, padding=1)
            self.b = layer(4, 3, 3, padding=1)

        def forward(self, x):
            return self.b(input=F.relu(self.a(x)))

    torch.manual_seed(0)
    model = Net().eval()
    model.a.bias.data.abs_()  # a's dead neuron emits a non-zero constant, folded into b
    conn = adaptive.Connectome(model, ensemble="neuron")
    conn.set_ensemble_masks({"a.weight": _neurons(conn, "a", [1])})
    conn.apply()
    x = torch.randn(2, 2, 6, 6)
    small = graphs.compact(model, conn, x)
    _compare(small, model, x)
    assert isinstance(small.b, graphs.FoldedConv) and small.b.conv.in_channels == 3


def test_an_input_is_guessed_from_a_first_transposed_convolution():
    """A generator (only ConvTranspose layers) was refused as having no layer to guess an input from, and a
    model whose first layer is a ConvTranspose1d(6, ...) was guessed from the Conv1d after it (3 channels),
    which the up-convolution refused: the guess now reads the transposed layer's in_channels."""
    torch.manual_seed(0)
    gen = nn.Sequential(nn.ConvTranspose2d(5, 4, 3, bias=False), nn.BatchNorm2d(4), nn.ReLU(),
                        nn.ConvTranspose2d(4, 1, 4, stride=2, padding=1))
    randomize_bn(gen)
    conn = adaptive.Connectome(gen, ensemble="neuron")
    conn.set_ensemble_masks({"0.weight": torch.tensor([True, False, True, True]), "3.weight": torch.tensor([True])})
    g = graphs.build(conn, level="unit")
    assert [grp.count for grp in g.groups if grp.kind == "input"] == [5]
    small = graphs.compact(gen.eval(), conn)
    assert small.compaction["removed"]["0"] == 1 and isinstance(small.compaction["max_abs_diff"], float)
    up_first = nn.Sequential(nn.ConvTranspose1d(6, 3, 4, stride=2, groups=3), nn.ReLU(), nn.Conv1d(3, 2, 3))
    g = graphs.build(adaptive.Connectome(up_first), level="unit")
    assert [grp.count for grp in g.groups if grp.kind == "input"] == [6]
