"""A compacted model is a model like any other: graphs traces it, a Connectome prunes it and graphs.compact shrinks it
again. Its FoldedConvs (a convolution plus the constants of removed dead units, folded in) are the convolutions they
wrap: ``<name>.conv.weight`` holds the synapses, and compacting again cuts the convolution and keeps the folded
constants of the outputs that stay, adding those of the inputs that go now. Computed in float64 and compared with the
twice-masked model to tight tolerances."""
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import fx, nn

import adaptive
import graphs
from _graph_edges import edge_set
from graphs.graph import EDGE_SYNAPSE
from test_graphs_compact import randomize_bn
from test_graphs_compact_transposed import UNet

torch.set_num_threads(1)


def _close(a, b):
    assert a.shape == b.shape and torch.allclose(a, b, atol=1e-12, rtol=1e-12), float((a - b).abs().max())


class Net(nn.Module):
    """Padded 3x3 convolutions with BatchNorm: a dead biased unit of ``a`` is a constant that ``b`` reads with its
    borders, which only a FoldedConv reproduces."""

    def __init__(self):
        super().__init__()
        self.a, self.bn_a = nn.Conv2d(2, 6, 3, padding=1), nn.BatchNorm2d(6)
        self.b, self.bn_b = nn.Conv2d(6, 5, 3, padding=1), nn.BatchNorm2d(5)
        self.c = nn.Conv2d(5, 3, 3, padding=1)

    def forward(self, x):
        return self.c(F.relu(self.bn_b(self.b(F.relu(self.bn_a(self.a(x)))))))


def _lift(conv, bn, channels):
    """BatchNorm lifts ``conv``'s bias on ``channels`` above zero: a dead unit there is a non-zero constant."""
    for c in channels:
        bn.weight.data[c], bn.running_mean[c] = 1.0, conv.bias[c].item() - 1


def _compacted_net():
    """Net in float64 with a's unit 1 dead (neuron pruned), and its compact copy, whose ``b`` folds it in."""
    torch.manual_seed(0)
    model = randomize_bn(Net()).double()
    _lift(model.a, model.bn_a, [1, 3])
    _lift(model.b, model.bn_b, [4])
    conn = adaptive.Connectome(model, ensemble="neuron")
    conn.set_ensemble_masks({"a.weight": torch.tensor([True, False, True, True, True, True])})
    conn.apply()
    x = torch.randn(2, 2, 8, 8, dtype=torch.float64)
    small = graphs.compact(model, conn, x)
    assert isinstance(small.b, graphs.FoldedConv) and small.b.conv.in_channels == 5  # a:1 folded in
    return model, small, x


def _compacted_unet():
    """UNet in float64 with down's units 2 and 5 dead (biased, constants through the ReLU), and its compact copy,
    whose transposed up-convolution folds them in."""
    torch.manual_seed(0)
    model = UNet().double().eval()
    model.down.bias.data.abs_()
    model.enc.bias.data.abs_()
    conn = adaptive.Connectome(model, ensemble="neuron")
    conn.set_ensemble_masks({"down.weight": torch.tensor([True, True, False, True, True, False, True, True])})
    conn.apply()
    x = torch.randn(2, 2, 8, 8, dtype=torch.float64)
    small = graphs.compact(model, conn, x)
    assert isinstance(small.up, graphs.FoldedConv) and small.up.conv.in_channels == 6
    return model, small, x


def _edges_by_perturbation(model, layer, x, source):
    """The unit edges into ``layer`` (a FoldedConv) found without graphs: perturb each channel of its input and see
    which of its outputs change. ``source``: the unit feeding input channel ``i``, by name."""
    f = model.get_submodule(layer)
    seen = {}
    hook = f.register_forward_pre_hook(lambda m, args: seen.setdefault("x", args[0]))
    with torch.no_grad():
        model(x)
        hook.remove()
        h, base = seen["x"], f(seen["x"])
        found = set()
        for i in range(h.shape[1]):
            hp = h.clone()
            hp[:, i] += 1 + torch.rand_like(hp[:, i])
            changed = (f(hp) - base).abs().flatten(2).amax((0, 2)) > 0
            found |= {(source(i), f"{layer}.conv:{j}") for j in changed.nonzero().flatten().tolist()}
    return found


@pytest.mark.parametrize("case", ["cnn", "unet"])
def test_a_connectome_and_graph_of_a_compacted_model_see_the_folded_convolution_s_synapses(case):
    """The Connectome finds the FoldedConv's convolution (``<name>.conv.weight``), its masks apply there, and the graph's
    unit edges into it are exactly the input channels whose perturbation reaches each output."""
    if case == "cnn":
        _, small, x = _compacted_net()
        layer, source, reader = "b", lambda i: f"a:{i}", "a"
    else:
        _, small, x = _compacted_unet()
        layer, source, reader = "up", lambda i: f"down:{i}", "down"
    conn = adaptive.Connectome(small, ensemble="kernel")
    name = f"{layer}.conv.weight"
    assert name in conn.masks and f"{reader}.weight" in conn.masks
    transposed = case == "unet"  # stored (in, out, *kernel)
    mask = conn.masks[name].clone()
    at = (lambda o, i: (i, o)) if transposed else (lambda o, i: (o, i))
    mask[at(0, 1)] = False
    mask[at(2, 0)] = False
    mask[at(3, slice(None))] = False  # output 3 reads no input: it adds its folded constants only
    before = small(x)
    conn.set_masks({name: mask})  # applied

    w = small.get_submodule(layer).conv.weight
    assert bool((w[~mask] == 0).all()) and bool((w[mask] != 0).all()) and not torch.equal(small(x), before)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # traced, not chained in module order (which fx's failure falls back to)
        g = graphs.build(conn, level="unit", example_input=x)
    into = {(a, b) for a, b, kind in edge_set(g) if kind == EDGE_SYNAPSE and b.startswith(f"{layer}.conv:")}
    assert into == _edges_by_perturbation(small, layer, x, source)
    assert not any(b == f"{layer}.conv:3" for _, b in into) and (source(1), f"{layer}.conv:1") in into


def test_a_compacted_cnn_pruned_again_compacts_again_to_the_twice_masked_model():
    """Round two prunes the compact copy: a's unit 3 dies too (its constant is added to those b folds already), b
    stops reading a's unit 0 (it goes), b's unit 4 reads no input (it adds its folded constants, with their borders:
    no constant, it stays) and c stops reading b's unit 1 (it goes, with its folded constants)."""
    model, small, x = _compacted_net()
    kept_a = [0, 2, 3, 4, 5]  # a's units in small
    conn = adaptive.Connectome(small, ensemble="kernel")
    masks = {k: v.clone() for k, v in conn.masks.items()}
    masks["a.weight"][kept_a.index(3)] = False
    masks["b.conv.weight"][:, kept_a.index(0)] = False
    masks["b.conv.weight"][4] = False
    masks["c.weight"][:, 1] = False
    conn.set_masks(masks)
    conn.apply()
    again = graphs.compact(small, conn, x)
    assert isinstance(again.b, graphs.FoldedConv)
    assert (again.a.out_channels, again.b.conv.in_channels, again.b.conv.out_channels, again.c.in_channels) == (3, 3, 4, 4)
    assert again.compaction["removed"] == {"a": 2, "b": 1, "c": 0}
    # the original model with both rounds' masks: round two's on the positions the compact copy kept
    with torch.no_grad():
        model.a.weight[3] = 0
        model.b.weight[:, 0] = 0
        model.b.weight[4, kept_a] = 0  # its input 1, a constant folded in, stays read
        model.c.weight[:, 1] = 0
    for xi in (x, torch.randn(1, 2, 11, 6, dtype=torch.float64)):
        with torch.no_grad():
            _close(again(xi), small(xi))
            _close(again(xi), model(xi))


def test_a_compacted_unet_pruned_again_compacts_again_to_the_twice_masked_model():
    """Round two: enc's unit 4 dies (biased: a constant, folded into down, a padded strided convolution, as a FoldedConv,
    and into dec's bias), down's unit 0 dies (its constant added to those up folds already), up's unit 1 reads no
    input (it stays: its folded constants are no constant) and dec stops reading up's unit 3 (it goes)."""
    model, small, x = _compacted_unet()
    kept_down = [0, 1, 3, 4, 6, 7]
    conn = adaptive.Connectome(small, ensemble="kernel")
    masks = {k: v.clone() for k, v in conn.masks.items()}
    masks["enc.weight"][4] = False
    masks["down.weight"][kept_down.index(0)] = False
    masks["up.conv.weight"][:, 1] = False  # stored (in, out, *kernel): output 1
    masks["dec.weight"][:, 3] = False
    conn.set_masks(masks)
    conn.apply()
    again = graphs.compact(small, conn, x)
    assert isinstance(again.up, graphs.FoldedConv) and isinstance(again.down, graphs.FoldedConv)
    assert (again.enc.out_channels, again.down.conv.out_channels, again.up.conv.in_channels,
            again.up.conv.out_channels, again.dec.in_channels) == (5, 5, 5, 5, 10)
    with torch.no_grad():
        model.enc.weight[4] = 0
        model.down.weight[0] = 0
        model.up.weight[kept_down, 1] = 0  # its inputs 2 and 5, constants folded in, stay read
        model.dec.weight[:, 3] = 0
    for xi in (x, torch.randn(1, 2, 10, 14, dtype=torch.float64)):
        with torch.no_grad():
            _close(again(xi), small(xi))
            _close(again(xi), model(xi))


@pytest.mark.parametrize("layer", [nn.Conv1d, nn.ConvTranspose1d, nn.Conv3d, nn.ConvTranspose3d])
def test_folded_1d_and_3d_convolutions_compact_again(layer):
    d = 1 if "1d" in layer.__name__ else 3
    conv = nn.Conv1d if d == 1 else nn.Conv3d
    options = dict(stride=2, output_padding=1) if "Transpose" in layer.__name__ else {}
    torch.manual_seed(0)
    model = nn.Sequential(conv(2, 4, 3, padding=1), nn.ReLU(), layer(4, 4, 3, padding=1, **options), nn.ReLU(),
                          conv(4, 2, 3, padding=1)).double().eval()
    model[0].bias.data.abs_()
    conn = adaptive.Connectome(model, ensemble="neuron")
    conn.set_ensemble_masks({"0.weight": torch.tensor([True, False, True, True])})
    conn.apply()
    x = torch.randn(2, 2, *([5] * d), dtype=torch.float64)
    small = graphs.compact(model, conn, x)
    assert isinstance(small.get_submodule("2"), graphs.FoldedConv)
    conn = adaptive.Connectome(small, ensemble="neuron")
    assert "2.conv.weight" in conn.masks
    conn.set_ensemble_masks({"0.weight": torch.tensor([True, False, True]),  # small's 1: the original's 2
                             "2.conv.weight": torch.tensor([False, True, True, True])})
    conn.apply()
    again = graphs.compact(small, conn, x)
    inner = again.get_submodule("2").conv
    assert (inner.in_channels, inner.out_channels) == (2, 4)  # its dead output 0 adds its folded constants: it stays
    for xi in (x, torch.randn(1, 2, *([6] * d), dtype=torch.float64)):
        with torch.no_grad():
            _close(again(xi), small(xi))


@pytest.mark.parametrize("transposed", [False, True])
def test_a_folded_convolution_traces_with_plain_fx(transposed):
    """torch.fx.symbolic_trace traces into a FoldedConv (no Python loop over a traced shape) and computes the same."""
    torch.manual_seed(0)
    conv = nn.ConvTranspose2d(3, 4, 3, stride=2, padding=1, output_padding=1) if transposed else nn.Conv2d(3, 4, 3, padding=1)
    folded = graphs.FoldedConv(conv, torch.randn((1, 4, 3, 3) if transposed else (4, 1, 3, 3)))
    model = nn.Sequential(folded, nn.ReLU())
    gm = fx.symbolic_trace(model)
    x = torch.randn(2, 3, 5, 7)
    assert torch.equal(gm(x), model(x))


@pytest.mark.parametrize("how", ["called", "tied"])
def test_a_folded_convolution_whose_convolution_is_called_elsewhere_keeps_its_size(how):
    """One set of parameters cannot be sliced two ways: a FoldedConv whose convolution the model also calls directly,
    or whose convolution's weight another layer shares, keeps its inputs, as a layer called twice does, though one it
    reads is a constant it could fold."""

    class Twice(nn.Module):
        def __init__(self, folded):
            super().__init__()
            self.a, self.b, self.f = nn.Conv2d(2, 3, 1), nn.Conv2d(2, 3, 1), folded
            self.direct = folded.conv if how == "called" else nn.Conv2d(3, 2, 3, padding=1)
            self.direct.weight = folded.conv.weight

        def forward(self, x):
            return self.f(F.relu(self.a(x))) + self.direct(F.relu(self.b(x)))

    torch.manual_seed(0)
    model = Twice(graphs.FoldedConv(nn.Conv2d(3, 2, 3, padding=1), torch.randn(2, 1, 3, 3))).double().eval()
    model.a.bias.data.abs_()
    conn = adaptive.Connectome(model, ensemble="neuron")
    conn.set_ensemble_masks({"a.weight": torch.tensor([True, False, True])})  # a:1, a constant f reads
    conn.apply()
    x = torch.randn(2, 2, 6, 6, dtype=torch.float64)
    small = graphs.compact(model, conn, x)
    other = small.get_submodule("f.conv" if how == "called" else "direct")  # fx names the direct call f.conv
    assert small.f.conv.in_channels == 3 and small.f.conv.weight is other.weight
    with torch.no_grad():
        _close(small(x), model(x))


def test_graphs_cli_reads_the_class_count_of_a_folded_head(tmp_path):
    """A compacted segmenter's head may be a FoldedConv: the layer its forward uses last is the convolution inside."""
    from graphs.cli import _classes_used_last

    class Segmenter(nn.Module):
        def __init__(self):
            super().__init__()
            self.head = graphs.FoldedConv(nn.Conv2d(8, 5, 3, padding=1), torch.zeros(5, 1, 3, 3))
            self.stem = nn.Conv2d(3, 8, 3, padding=1)  # registered after the head

        def forward(self, x):
            return self.head(F.relu(self.stem(x)))

    net = Segmenter()
    adaptive.Connectome(net).save(tmp_path / "c.safetensors")
    assert _classes_used_last(net, str(tmp_path / "c.safetensors"), None) == 5


@pytest.mark.parametrize("layer", [nn.Conv1d, nn.Conv2d, nn.ConvTranspose2d, nn.Conv3d, nn.ConvTranspose3d])
def test_a_folded_convolution_takes_an_unbatched_input_as_its_convolution_does(layer):
    """nn.Conv*d take an input without its batch axis, ``(C, *map)``: the folded term is the one a batch of that one
    sample gets, borders included (its one-channel map was read from the channel axis, a row of the image, and came
    out broadcast over the rows)."""
    d = int(layer.__name__[-2])
    transposed = "Transpose" in layer.__name__
    torch.manual_seed(0)
    conv = layer(3, 4, 3, padding=1, **(dict(stride=2) if transposed else {})).double()
    folded = graphs.FoldedConv(conv, torch.randn((1, 4) + (3,) * d if transposed else (4, 1) + (3,) * d,
                                                 dtype=torch.float64))
    x = torch.randn(3, *[5 + i for i in range(d)], dtype=torch.float64)
    with torch.no_grad():
        _close(folded(x), folded(x[None])[0])
        if transposed:  # at the output padding output_size= asks for
            size = [2 * s for s in x.shape[1:]]
            _close(folded(x, output_size=size), folded(x[None], output_size=size)[0])


class _GatedDepthwise(nn.Module):
    """A squeeze-excitation gate on a depthwise conv: a pruned depthwise filter is a constant channel of the product's
    factor, which compaction removes and fills back in for the product (``channel_pad`` with a ``fill``)."""

    def __init__(self):
        super().__init__()
        self.a, self.dw = nn.Conv2d(3, 4, 1), nn.Conv2d(4, 4, 3, padding=1, groups=4)
        self.fc1, self.fc2, self.c = nn.Conv2d(4, 2, 1), nn.Conv2d(2, 4, 1), nn.Conv2d(4, 5, 1)

    def forward(self, x):
        h = F.relu(self.dw(F.relu(self.a(x))))
        return self.c(h * torch.sigmoid(self.fc2(F.relu(self.fc1(F.adaptive_avg_pool2d(h, 1))))))


def test_the_graph_of_a_compacted_copy_follows_its_channel_padding():
    """graphs.compact's own ``channel_pad`` in a compact copy (torchvision's MobileNetV3, EfficientNet and RegNetY
    copies hold them) was an unknown op to the tracer: graphs.build and compacting again warned "cannot follow the
    data flow through node 'channel_pad'" and wired every channel it reads to every channel it writes. It is followed
    as F.pad is now: the filled channel carries no unit, so c:0, which reads only it, reads only the gate's unit 1."""
    torch.manual_seed(0)
    model = _GatedDepthwise().eval()
    conn = adaptive.Connectome(model)
    masks = {k: torch.ones_like(v) for k, v in conn.masks.items()}
    masks["dw.weight"][1] = False  # dw:1 holds its bias: a constant channel, filled back in for the product
    masks["c.weight"][0] = torch.tensor([False, True, False, False]).view(4, 1, 1)  # c:0 reads that channel only
    conn.set_masks(masks)
    x = torch.randn(2, 3, 6, 6)
    small = graphs.compact(model, conn, x)
    assert "channel_pad(" in small.code and small.dw.out_channels == 3
    copy = adaptive.Connectome(small)
    copy.set_masks({n: p != 0 for n, p in copy.params.items()})  # the synapses the copy holds
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        g = graphs.build(copy, example_input=x, junctions=False)
        again = graphs.compact(small, copy, x)
    assert {(s, k) for s, d, k in edge_set(g) if d == "c:0"} == {("fc2:1", EDGE_SYNAPSE)}
    old = {(s, d) for s, d, _ in edge_set(graphs.build(conn, example_input=x, junctions=False))}
    rename = {"dw:0": "dw:0", "dw:2": "dw:1", "dw:3": "dw:2", "a:0": "a:0", "a:2": "a:1", "a:3": "a:2"}
    kept = {(rename.get(s, s), rename.get(d, d)) for s, d in old if s not in ("dw:1", "a:1") and d not in ("dw:1", "a:1")}
    assert {(s, d) for s, d, _ in edge_set(g)} == kept  # the original's graph without the units that went
    assert again.compaction["params_after"] == again.compaction["params_before"]
    assert torch.allclose(again(x), model(x), atol=1e-5)


class FixedSize(nn.Module):
    """A reshape sized for a 4x4 map: the model runs at the example's size only."""

    def __init__(self):
        super().__init__()
        self.a, self.fc = nn.Conv2d(2, 3, 1), nn.Linear(48, 2)

    def forward(self, x):
        return self.fc(self.a(x).reshape(x.shape[0], 48))


def test_compacting_a_compact_copy_of_a_fixed_size_model_prints_nothing(capfd):
    """compact's check tries the model at other sizes and carries on where it runs on none; a compact copy (an fx
    GraphModule) compacted again printed the traceback of its failing reshape to stderr (found on a torchvision MaxVit,
    whose attention grids fix its input size), though nothing was wrong."""
    torch.manual_seed(0)
    model = FixedSize().eval()
    conn = adaptive.Connectome(model)
    conn.set_masks({"a.weight": torch.tensor([True, False, True])[:, None, None, None].expand(3, 2, 1, 1).clone(),
                    "fc.weight": torch.ones(2, 48, dtype=torch.bool)})
    x = torch.randn(2, 2, 4, 4)
    small = graphs.compact(model, conn, x)
    capfd.readouterr()
    again = graphs.compact(small, None, x)
    assert again.compaction["params_after"] == small.compaction["params_after"]
    assert capfd.readouterr().err == ""


class SaysThenFails(nn.Module):
    """Writes a line to stderr (a warning of its own, say), then fails: at any size but the example's."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 2)

    def forward(self, x):
        import sys

        print("model: a note of its own", file=sys.stderr)
        return self.fc(x.reshape(2, 8))


def test_a_failed_trial_call_writes_what_the_model_said_but_not_fx_s_traceback(capfd):
    """compact's trial calls captured stderr and wrote it on only where the call returned: a warning the model
    gave before failing at a size it does not take was lost (and, shown once, never shown again). Now only the
    traceback a compact copy (an fx GraphModule) prints for its failing code is dropped."""
    from graphs.forward_inputs import _trial_call_with_inputs

    model = SaysThenFails().eval()
    with pytest.raises(RuntimeError):
        _trial_call_with_inputs(model, (torch.randn(3, 8),))
    assert capfd.readouterr().err == "model: a note of its own\n"
    small = graphs.compact(model, None, torch.randn(2, 8))
    capfd.readouterr()
    with pytest.raises(RuntimeError):
        _trial_call_with_inputs(small, (torch.randn(3, 8),))
    err = capfd.readouterr().err
    assert "Traceback" not in err and "FX-traced" not in err, err
