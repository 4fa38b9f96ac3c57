"""Transposed convolutions (``nn.ConvTranspose1d/2d/3d``) are synapse layers: their weight is stored
``(in, out/groups, *kernel)``, and every granularity, the controller, graphs and checkpoints find a unit's
synapses on the right axis. The expected synapses of a unit are derived from plain PyTorch (autograd
and perturbation), never from the library's own layout helpers."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import adaptive
import graphs
from adaptive.budgets import get_budget
from adaptive.policies.base import ensemble_size


class UNet(nn.Module):
    """Conv2d down, ConvTranspose2d up, skip concatenation."""

    def __init__(self, groups: int = 1):
        super().__init__()
        self.enc = nn.Conv2d(2, 4, 3, padding=1)
        self.down = nn.Conv2d(4, 8, 3, padding=1, stride=2)
        self.up = nn.ConvTranspose2d(8, 4, 2, stride=2, groups=groups)
        self.dec = nn.Conv2d(4 + 4, 2, 1)

    def forward(self, x):
        e = F.relu(self.enc(x))
        return self.dec(torch.cat([self.up(F.relu(self.down(e))), e], 1))


def _layers():
    return {
        "1d": (nn.ConvTranspose1d(4, 6, 3, groups=2), torch.randn(2, 4, 5)),
        "2d": (nn.ConvTranspose2d(8, 4, 2, stride=2, groups=2), torch.randn(2, 8, 3, 3)),
        "3d": (nn.ConvTranspose3d(4, 6, 2, groups=2), torch.randn(2, 4, 2, 3, 2)),
    }


def _feeds(module, x, out: int, inp=None) -> torch.Tensor:
    """The weight entries through which output channel ``out`` depends on the input (on input channel
    ``inp`` alone when given): where the gradient of its sum reaches the weight, by autograd."""
    if inp is not None:
        x = torch.zeros_like(x).index_copy_(1, torch.tensor([inp]), x[:, inp:inp + 1])
    w = module.weight.detach().clone().requires_grad_(True)
    conv = getattr(F, f"conv_transpose{x.dim() - 2}d")
    y = conv(x, w, None, module.stride, module.padding, module.output_padding, module.groups, module.dilation)
    y[:, out].sum().backward()
    return w.grad != 0


@pytest.mark.parametrize("dim", ["1d", "2d", "3d"])
def test_discovery_finds_transposed_layers_with_their_units(dim):
    layer, _ = _layers()[dim]
    conn = adaptive.Connectome(nn.Sequential(layer))
    info = conn.layers["0.weight"]
    assert info.kind == f"convtranspose{dim}" and info.transposed and info.groups == 2
    assert (info.out_units, info.in_units) == (layer.out_channels, layer.in_channels)
    assert info.out_in_shape == (layer.out_channels, layer.in_channels // 2, *layer.kernel_size)
    unet = adaptive.Connectome(UNet())
    assert unet.names == ["enc.weight", "down.weight", "up.weight", "dec.weight"]


@pytest.mark.parametrize("dim", ["1d", "2d", "3d"])
def test_a_neuron_is_one_output_channel_of_a_transposed_layer(dim):
    torch.manual_seed(0)
    layer, x = _layers()[dim]
    conn = adaptive.Connectome(nn.Sequential(layer), ensemble="neuron")
    g = conn.granularity_of("0.weight")
    assert tuple(g.ensemble_shape(layer.weight.shape)) == (layer.out_channels,)
    for o in range(layer.out_channels):
        ens = torch.zeros(layer.out_channels, dtype=torch.bool)
        ens[o] = True
        assert torch.equal(g.expand(ens, layer.weight.shape), _feeds(layer, x, o))
    keep = torch.tensor([True, False] * (layer.out_channels // 2))
    conn.set_ensemble_masks({"0.weight": keep})
    with torch.no_grad():  # a pruned output channel reads nothing: its output is its bias alone
        dead = layer(x)[:, ~keep] - layer.bias[~keep].view(1, -1, *[1] * (x.dim() - 2))
    assert bool((dead == 0).all()) and torch.equal(conn.ensemble_mask("0.weight"), keep)


@pytest.mark.parametrize("dim", ["1d", "2d", "3d"])
def test_a_kernel_joins_one_input_channel_to_one_output_channel(dim):
    torch.manual_seed(0)
    layer, x = _layers()[dim]
    conn = adaptive.Connectome(nn.Sequential(layer), ensemble="kernel")
    g = conn.granularity_of("0.weight")
    o_n, ipg = layer.out_channels, layer.in_channels // layer.groups
    assert tuple(g.ensemble_shape(layer.weight.shape)) == (o_n, ipg)
    for o in range(o_n):
        for i in range(ipg):
            ens = torch.zeros(o_n, ipg, dtype=torch.bool)
            ens[o, i] = True
            c = (o // (o_n // layer.groups)) * ipg + i  # the input channel of the pair, in group order
            assert torch.equal(g.expand(ens, layer.weight.shape), _feeds(layer, x, o, inp=c))


def test_n_m_groups_run_along_the_input_axis_of_each_output_unit():
    torch.manual_seed(0)
    layer = nn.ConvTranspose1d(3, 5, 2)  # weight (in 3, out 5, 2): 6 synapses feed each output unit
    conn = adaptive.Connectome(nn.Sequential(layer), ensemble="2:4")
    g = conn.granularity_of("0.weight")
    keep = g.select(torch.randn(g.ensemble_shape(layer.weight.shape)))
    conn.set_masks({"0.weight": keep})
    per_out = keep.transpose(0, 1).reshape(5, 6)  # each output's (input, kernel) weights, in order
    assert per_out[:, :4].sum(1).eq(2).all() and per_out[:, 4:].all()  # 2 of the first 4, a short group of 2 whole
    bad = torch.zeros_like(keep)
    bad[:2, 0] = True  # output 0's first group of 4 (inputs 0 and 1) all live: 2 too many
    with pytest.raises(ValueError, match="more than 2 live synapses"):
        conn.set_masks({"0.weight": bad})


def test_n_m_ensembles_of_a_square_transposed_layer_line_up_with_its_mask():
    # in == out: the (out, in) layout has the stored shape, so only the ensemble order can tell them apart
    torch.manual_seed(0)
    conn = adaptive.Connectome(nn.Sequential(nn.ConvTranspose2d(4, 4, 2)), ensemble="2:4")
    g = conn.granularity_of("0.weight")
    keep = g.select(torch.randn(4, 4, 2, 2))
    conn.set_masks({"0.weight": keep})
    assert torch.equal(conn.ensemble_mask("0.weight"), conn.masks["0.weight"])
    conn.set_ensemble_masks(conn.ensemble_masks())
    assert torch.equal(conn.masks["0.weight"], keep)


@pytest.mark.parametrize("ensemble", ["neuron", "kernel", "block:2x2", "2:4"])
def test_conn_granularity_refuses_a_connectome_with_a_transposed_layer_for_granularity_of(ensemble):
    # in == out: a convolution's granularity takes the stored (in, out) weight without a shape error,
    # and would pool input channels as neurons; no one granularity object serves both layers
    layer = nn.ConvTranspose2d(4, 4, 2)
    conn = adaptive.Connectome(nn.Sequential(nn.Conv2d(4, 4, 1), layer), ensemble=ensemble)
    with pytest.raises(AttributeError, match=r"transposed convolution\(s\) \['1.weight'\].*conn.granularity_of\(name\)"):
        conn.granularity
    assert conn.ensemble == ensemble and conn.state_dict()["ensemble"] == ensemble  # the spec, as checkpoints keep it
    assert conn.fixed_density == (0.5 if ensemble == "2:4" else None)
    if ensemble == "neuron":  # granularity_of pools each output channel's synapses: stored [:, o]
        w = torch.arange(64.0).view(4, 4, 2, 2)
        assert torch.equal(conn.granularity_of("1.weight").pool(w), w.sum((0, 2, 3)))
    assert adaptive.Connectome(nn.Sequential(layer), ensemble="synapse").granularity.spec == "synapse"  # fits any layout
    assert adaptive.Connectome(nn.Sequential(nn.Conv2d(4, 4, 1)), ensemble=ensemble).granularity.spec == ensemble


def test_block_tiles_a_transposed_layer_as_its_out_by_in_matrix():
    layer = nn.ConvTranspose2d(2, 4, 1)  # weight (in 2, out 4, 1, 1): the matrix is its transpose
    conn = adaptive.Connectome(nn.Sequential(layer), ensemble="block:2x1")
    ens = torch.tensor([[True, False], [False, False]])  # outputs 0-1 from input 0
    conn.set_ensemble_masks({"0.weight": ens})
    expected = torch.zeros(2, 4, dtype=torch.bool)
    expected[0, :2] = True
    assert torch.equal(conn.masks["0.weight"].view(2, 4), expected)


@pytest.mark.parametrize("ensemble,policy", [(e, p) for e in ("synapse", "kernel", "neuron", "block:2x2")
                                             for p in ("rigl", "utility")] + [("2:4", "utility")])
def test_training_keeps_pruned_transposed_synapses_exactly_zero(ensemble, policy):
    torch.manual_seed(0)
    model = UNet(groups=2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    conn = adaptive.Connectome(model, ensemble=ensemble)
    ctrl = adaptive.Controller(conn, opt, policy=policy, density=0.5, budget="uniform", update_every=2, edit_fraction=0.3,
                               end_step=8, seed=0)
    for _ in range(6):
        model(torch.randn(2, 2, 8, 8)).square().mean().backward()
        opt.step()
        opt.zero_grad()
    up, mask = model.up.weight, conn.masks["up.weight"]
    assert ctrl.events and not bool(mask.all()) and bool((up[~mask] == 0).all())
    if ensemble == "neuron":  # whole output channels: each (group, out-per-group) column of every input row alike
        cols = mask.view(2, 4, 2, -1).transpose(1, 2).reshape(4, -1)  # (out, its inputs x kernel)
        assert bool((cols.all(1) | ~cols.any(1)).all()) and not bool(cols.all())


def test_erk_budget_and_grow_init_read_a_transposed_layer_as_out_by_in():
    conv, up = nn.Conv2d(4, 8, 3, groups=2), nn.ConvTranspose2d(4, 8, 3, groups=2)
    a, b = adaptive.Connectome(nn.Sequential(conv)), adaptive.Connectome(nn.Sequential(up))
    for budget in ("erk", "er"):  # the same units and synapses: the same weight in the budget
        two = {"c": a.layers["0.weight"], "t": b.layers["0.weight"], "lin": adaptive.Connectome(nn.Linear(10, 3)).layers["weight"]}
        got = get_budget(budget)(two, 0.3)
        assert got["c"] == got["t"], budget
    wide = nn.ConvTranspose2d(2, 64, 3)  # fan-in of each output unit: 2 inputs x 9 = 18, not 64 x 9
    conn = adaptive.Connectome(nn.Sequential(wide))
    ctrl = adaptive.Controller(conn, policy="magnitude", density=0.5, grow_init="random", seed=0)
    drawn = ctrl._grow_init_fn()("0.weight", None)
    assert abs(float(drawn.std()) * 18 ** 0.5 / 0.01 - 1) < 0.1


def _edges(g, src_group: str, dst_group: str) -> set:
    grp = {x.name: x for x in g.groups}
    s, d = grp[src_group], grp[dst_group]
    keep = (g.src >= s.start) & (g.src < s.start + s.count) & (g.dst >= d.start) & (g.dst < d.start + d.count)
    return set(zip((g.src[keep] - s.start).tolist(), (g.dst[keep] - d.start).tolist()))


@pytest.mark.parametrize("groups", [1, 2])
def test_graph_edges_of_a_pruned_up_convolution_are_its_live_connections(groups):
    torch.manual_seed(0)
    model = UNet(groups=groups).eval()
    conn = adaptive.Connectome(model, ensemble="kernel")
    shape = conn.granularity_of("up.weight").ensemble_shape(model.up.weight.shape)
    conn.set_ensemble_masks({"up.weight": torch.rand(shape) < 0.5})
    x = torch.randn(1, 2, 8, 8)
    g = graphs.build(conn, level="unit", example_input=x)
    # plain PyTorch: perturb one input channel of the up-convolution, see which output channels change
    h = torch.randn(1, 8, 4, 4)
    with torch.no_grad():
        base = model.up(h)
        expected = {(c, o) for c in range(8)
                    for o in (model.up(h + torch.eye(8)[c].view(1, 8, 1, 1)) - base).abs().amax((0, 2, 3)).nonzero().flatten().tolist()}
    assert _edges(g, "down", "up") == expected and expected
    syn = graphs.build(conn, level="synapse", example_input=x)
    lid = [l.module for l in syn.layers].index("up")
    e = syn.edge_attrs["layer"] == lid
    assert int(e.sum()) == int(conn.masks["up.weight"].sum())
    live = conn.masks["up.weight"].reshape(-1).nonzero().flatten()
    assert torch.equal(syn.edge_attrs["position"][e].sort().values, live)
    pos, w = syn.edge_attrs["position"][e], model.up.weight.detach()
    cin, cout = pos // w[0].numel(), (pos % w[0].numel()) // w[0, 0].numel()  # weight[i, o, ...] read directly
    grp = {x.name: x for x in syn.groups}
    assert torch.equal(syn.src[e] - grp["down"].start, cin)
    assert torch.equal(syn.dst[e] - grp["up"].start, cin // (8 // groups) * (4 // groups) + cout)
    pyg, nxg = graphs.to_pyg(g), graphs.to_networkx(g)
    assert pyg.edge_index.shape[1] == g.src.numel() == nxg.number_of_edges()


def test_save_load_and_dense_state_dict_keep_transposed_masks(tmp_path):
    torch.manual_seed(0)
    model = UNet(groups=2)
    conn = adaptive.Connectome(model, ensemble="neuron")
    conn.set_ensemble_masks({n: torch.rand(conn.granularity_of(n).ensemble_shape(m.shape)) < 0.5
                             for n, m in conn.masks.items()})
    conn.save(tmp_path / "c.safetensors")
    again = UNet(groups=2)
    again.load_state_dict(model.state_dict())
    loaded = adaptive.Connectome.load(tmp_path / "c.safetensors", again)
    assert all(torch.equal(loaded.masks[n], conn.masks[n]) for n in conn.names)
    assert torch.equal(loaded.ensemble_mask("up.weight"), conn.ensemble_mask("up.weight"))
    vanilla = UNet(groups=2)
    vanilla.load_state_dict(conn.dense_state_dict())
    assert bool((vanilla.up.weight[~conn.masks["up.weight"]] == 0).all())
    x = torch.randn(2, 2, 8, 8)
    with torch.no_grad():
        assert torch.equal(vanilla(x), model(x))


def test_compact_shrinks_a_pruned_up_convolution():
    torch.manual_seed(0)
    model = UNet(groups=2).eval()
    conn = adaptive.Connectome(model, ensemble="neuron")
    conn.set_ensemble_masks({"enc.weight": torch.tensor([True, False, True, True]),
                             "down.weight": torch.tensor([True, False] * 4), "up.weight": torch.tensor([True, True, False, True])})
    x = torch.randn(3, 2, 8, 8)
    small = graphs.compact(model, conn, x)
    with torch.no_grad():
        assert torch.allclose(small(x), model(x), atol=1e-6)
    # enc's dead channel goes, and so do down's: each of up's two groups reads two of them (folded into up, whose
    # kernel spreads them at its stride); its dead output 2 stays, as group 0 has no dead output to match it
    down, up = (m.conv if isinstance(m, graphs.FoldedConv) else m for m in (small.down, small.up))
    assert small.enc.out_channels == 3 and down.out_channels == 4
    assert (up.groups, up.in_channels, up.out_channels) == (2, 4, 4)
    assert torch.equal(up.weight, model.up.weight.detach()[[0, 2, 4, 6]])


def test_all_ones_and_mask_only_on_a_transposed_layer():
    torch.manual_seed(0)
    plain, model = UNet(groups=2), UNet(groups=2)
    model.load_state_dict(plain.state_dict())
    original = model.up.weight.detach().clone()
    conn = adaptive.Connectome(model, ensemble="kernel", mode="mask_only")
    x = torch.randn(2, 2, 8, 8)
    assert torch.equal(model(x), plain(x))  # an all-ones connectome computes what the plain model does
    opt = torch.optim.Adam(model.parameters(), lr=0.1)
    conn.attach(opt)
    es = conn.granularity_of("up.weight").ensemble_shape(original.shape)
    conn.set_ensemble_masks({"up.weight": torch.rand(es) < 0.5})
    for _ in range(3):
        model(x).square().mean().backward()
        opt.step()
        opt.zero_grad()
    live = conn.masks["up.weight"]
    assert torch.equal(model.up.weight[live].view(torch.int32), original[live].view(torch.int32))  # not one bit moved
    assert bool((model.up.weight[~live] == 0).all())
    conn.set_masks({"up.weight": torch.ones_like(live)})
    assert torch.equal(model.up.weight.view(torch.int32), original.view(torch.int32))


def test_the_module_order_fallback_chains_a_transposed_layer_by_its_units():
    class Dynamic(nn.Module):  # data-dependent control flow: fx cannot trace it
        def __init__(self):
            super().__init__()
            self.down = nn.Conv1d(2, 4, 2, stride=2)
            self.up = nn.ConvTranspose1d(4, 6, 2, stride=2, groups=2)  # weight (in 4, out/groups 3, 2)
            self.head = nn.Conv1d(6, 1, 1)

        def forward(self, x):
            if x.sum() > 0:
                x = -x
            return self.head(self.up(self.down(x)))

    model = Dynamic()
    conn = adaptive.Connectome(model, ensemble="neuron")
    conn.set_ensemble_masks({"up.weight": torch.tensor([True, True, False, True, True, True])})
    with pytest.warns(UserWarning, match="module order"):
        g = graphs.build(conn, level="unit", example_input=torch.randn(1, 2, 8))
    # input channels 0-1 feed outputs 0-2 (output 2 pruned), 2-3 feed 3-5; up's 6 units feed head's one input each
    assert _edges(g, "down", "up") == {(c, o) for c in range(4) for o in ((0, 1) if c < 2 else (3, 4, 5))}
    assert _edges(g, "up", "head") == {(o, 0) for o in range(6)}


@pytest.mark.parametrize("policy", ["magnitude", "rigl"])
def test_a_conv_and_a_transposed_conv_of_one_stored_shape_keep_their_own_ensemble_sizes(policy):
    # Conv2d(8, 4, 3) and ConvTranspose2d(4, 8, 3) both store (4, 8, 3, 3): 4 neurons of 72 synapses,
    # 8 neurons of 36. Sizes cached by spec and stored shape alone gave the second the first's
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(8, 4, 3), nn.ConvTranspose2d(4, 8, 3))
    conn = adaptive.Connectome(model, ensemble="neuron")
    assert [ensemble_size(conn.granularity_of(n), conn.layers[n].shape) for n in conn.names] == [72.0, 36.0]
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    adaptive.Controller(conn, opt, policy=policy, density=0.5, budget="uniform", update_every=1, end_step=2, seed=0)
    for _ in range(2):
        model(torch.randn(2, 8, 6, 6)).square().mean().backward()
        opt.step()
        opt.zero_grad()
    assert {n: float(m.float().mean()) for n, m in conn.masks.items()} == {"0.weight": 0.5, "1.weight": 0.5}


@pytest.mark.parametrize("ensemble", ["neuron", {"enc": "kernel", "*": "neuron"}])
def test_a_state_saved_before_transposed_layers_were_synapses_is_refused_with_the_way_to_resume_it(ensemble):
    # the state an older version saved: a connectome over every layer but the (then dense) up-convolution
    torch.manual_seed(0)
    old = adaptive.Connectome(UNet(), ensemble=ensemble, exclude=["up"])
    old.set_ensemble_masks({n: torch.rand(old.granularity_of(n).ensemble_shape(m.shape)) < 0.5 for n, m in old.masks.items()})
    sd = old.state_dict()
    now = adaptive.Connectome(UNet(), ensemble=ensemble)
    before = {n: m.clone() for n, m in now.masks.items()}
    with pytest.raises(KeyError, match=r"no mask for \['up.weight'\].*exclude=\['up'\]"):
        now.load_state_dict(sd)
    assert all(torch.equal(now.masks[n], before[n]) for n in before)  # nothing loaded
    resumed = adaptive.Connectome(UNet(), ensemble=ensemble, exclude=["up"])  # as the message says
    resumed.load_state_dict(sd)
    assert all(torch.equal(resumed.masks[n], old.masks[n]) for n in old.names)


def test_graphs_cli_reads_the_class_count_of_a_transposed_head_from_its_output_channels(tmp_path):
    from graphs.cli import _classes_used_last

    class Segmenter(nn.Module):  # the head, an up-convolution to 5 classes, stores its weight (in 8, 5/groups 5, 2, 2)
        def __init__(self):
            super().__init__()
            self.stem = nn.Conv2d(3, 8, 3, padding=1, stride=2)
            self.head = nn.ConvTranspose2d(8, 5, 2, stride=2)

        def forward(self, x):
            return self.head(F.relu(self.stem(x)))

    net = Segmenter()
    adaptive.Connectome(net).save(tmp_path / "c.safetensors")
    assert _classes_used_last(net, str(tmp_path / "c.safetensors"), None) == 5
    torch.save(net.state_dict(), tmp_path / "w.pt")  # the head left out of the connectome: read from the weights
    adaptive.Connectome(net, exclude=["head"]).save(tmp_path / "stem.safetensors")
    assert _classes_used_last(net, str(tmp_path / "stem.safetensors"), str(tmp_path / "w.pt")) == 5


def test_the_summary_marks_a_transposed_layers_stored_shape():
    """conn.summary() prints each weight's shape as stored; a transposed convolution's (in, out/groups,
    *kernel) read like a convolution's (out, in) without the mark."""
    conn = adaptive.Connectome(nn.Sequential(nn.Conv2d(3, 8, 3), nn.ConvTranspose2d(8, 4, 2)))
    rows = {line.split()[0]: line for line in conn.summary().splitlines()}
    assert "8x3x3x3 " in rows["0.weight"] and "transposed" not in rows["0.weight"]
    assert "8x4x2x2 (transposed)" in rows["1.weight"]


def test_out_in_and_stored_refuse_a_tensor_of_the_wrong_shape():
    """``out_in``/``stored`` reshaped whatever they got: a tensor of the wrong size failed in reshape ("shape
    '[2, 1, 3]' is invalid"), and one already in the other layout was swapped again, silently (a stored-layout
    tensor into ``stored`` came back shaped like the weight, wrongly laid out); a Linear's returned any tensor."""
    conn = adaptive.Connectome(nn.Sequential(nn.ConvTranspose2d(8, 4, 3, groups=2), nn.Flatten(), nn.Linear(4, 3)))
    up, fc = conn.layers["0.weight"], conn.layers["2.weight"]
    assert up.shape == (8, 2, 3, 3) and up.out_in_shape == (4, 4, 3, 3)
    with pytest.raises(ValueError, match=r"^0\.weight: out_in\(\) takes a tensor shaped like the stored weight, "
                                         r"\(8, 2, 3, 3\); got \(4, 4, 3, 3\), the other layout's shape: it is already "
                                         r"laid out \(out, in/groups, \*kernel\)$"):
        up.out_in(torch.zeros(4, 4, 3, 3))
    with pytest.raises(ValueError, match=r"^0\.weight: stored\(\) takes a tensor shaped like out_in_shape, "
                                         r"\(4, 4, 3, 3\); got \(8, 2, 3, 3\), the other layout's shape"):
        up.stored(torch.zeros(8, 2, 3, 3))
    with pytest.raises(ValueError, match=r"got \(3, 3\)$"):
        up.out_in(torch.zeros(3, 3))
    with pytest.raises(ValueError, match=r"^2\.weight: out_in\(\) takes .* \(3, 4\); got \(12,\)$"):
        fc.out_in(torch.zeros(12))
    with pytest.raises(TypeError, match="takes a weight-shaped tensor, got list"):
        up.stored([[0.0]])
    w = torch.randn(8, 2, 3, 3)
    assert torch.equal(up.stored(up.out_in(w)), w)


def test_set_masks_names_stored_as_the_fix_for_a_mask_laid_out_out_by_in():
    """A mask laid out ``(out, in/groups, *kernel)`` for a transposed layer was refused only as of the wrong
    shape; the error now says the weight is stored ``(in, out/groups, *kernel)`` and names ``stored(mask)``.
    Nothing is edited."""
    conn = adaptive.Connectome(nn.Sequential(nn.ConvTranspose2d(8, 4, 3, groups=2)))
    layer = conn.layers["0.weight"]
    mask = torch.rand(layer.out_in_shape) < 0.5
    with pytest.raises(ValueError, match=r"has shape \(4, 4, 3, 3\) but the weight has shape \(8, 2, 3, 3\): '0\.weight' "
                                         r"is a transposed convolution, .* pass conn\.layers\['0\.weight'\]\.stored\(mask\)$"):
        conn.set_masks({"0.weight": mask})
    assert conn.masks["0.weight"].all()
    conn.set_masks({"0.weight": layer.stored(mask)})
    assert torch.equal(layer.out_in(conn.masks["0.weight"]), mask)
