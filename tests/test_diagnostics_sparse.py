"""collinearity and gradient_by_depth on a pruned model: only live synapses are measured, whether
the connectome is given (conn=) or found attached to an optimizer. Every number is recomputed here
in plain PyTorch (per-batch weight gradients, statistics over the live positions)."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from adaptive import Connectome
from adaptive.diagnostics import BandGradientScaler, collinearity, gradient_by_depth

torch.set_num_threads(1)


class SeqNet(nn.Module):
    """A transposed convolution, a GRU and an attention: every kind of prunable weight."""

    def __init__(self):
        super().__init__()
        self.up = nn.ConvTranspose1d(3, 4, 2, stride=2)
        self.gru = nn.GRU(4, 6, batch_first=True)
        self.att = nn.MultiheadAttention(6, 2, batch_first=True)
        self.head = nn.Linear(6, 3)

    def forward(self, x):
        h, _ = self.gru(self.up(x).transpose(1, 2))
        h, _ = self.att(h, h, h, need_weights=False)
        return self.head(h.mean(1))


def batches(shape, classes, n=4, size=8, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(size, *shape, generator=g), torch.randint(0, classes, (size,), generator=g)) for _ in range(n)]


def pruned_seqnet():
    torch.manual_seed(0)
    net = SeqNet()
    # kernels of the transposed conv, whole neurons of the head, single synapses elsewhere
    conn = Connectome(net, ensemble={"up*": "kernel", "head*": "neuron", "*": "synapse"})
    g = torch.Generator().manual_seed(2)
    conn.set_ensemble_masks({n: torch.rand(conn.granularity_of(n).ensemble_shape(m.shape), generator=g) < 0.4
                             for n, m in conn.masks.items()})
    assert all(0 < int(m.sum()) < m.numel() for m in conn.masks.values())
    return net, conn


def batch_gradients(net, data, params):
    """(batches, *shape) float64 gradients of each of ``params``, one plain backward per batch."""
    per = [torch.autograd.grad(F.cross_entropy(net(x), y), params) for x, y in data]
    return [torch.stack([g[i] for g in per]).double() for i in range(len(params))]


def reference_collinearity(net, data, conn):
    names = list(conn.params)
    out = {}
    for name, G in zip(names, batch_gradients(net, data, [conn.params[n] for n in names])):
        live = conn.masks[name].reshape(-1)
        G = G.reshape(len(data), -1)[:, live]
        mean, rms = G.mean(0), G.pow(2).mean(0).sqrt()
        assert bool((mean != 0).all())  # (no position where G's sign is undefined)
        out[name] = {"cosine": mean.abs() / rms, "agree": (torch.sign(G) == torch.sign(mean)).double().mean(0),
                     "G2": mean * mean}
    return out


def check_collinearity(res, ref, conn):
    assert set(res.cosine) == set(ref)
    for row in res.table:
        name, live = row["layer"], conn.masks[row["layer"]]
        r = ref[name]
        torch.testing.assert_close(res.cosine[name].double(), r["cosine"], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(res.sign_agreement[name].double(), r["agree"])
        torch.testing.assert_close(res.full_grad_sq[name].double(), r["G2"], rtol=1e-5, atol=0)
        assert torch.equal(res.live[name], live.reshape(-1))
        assert row["weights"] == int(live.sum()) and row["pruned"] == int((~live).sum())
        assert row["median_cosine"] == pytest.approx(float(torch.quantile(r["cosine"], 0.5)), rel=1e-5)
        assert row["mean_sign_agreement"] == pytest.approx(float(r["agree"].mean()), rel=1e-6)
        assert row["frac_cos>0.5"] == pytest.approx(float((r["cosine"] > 0.5).double().mean()))
    assert res.measured == conn.num_live() and res.pruned == conn.num_synapses() - conn.num_live()
    frac = res.fraction_above()
    assert frac["weights"][-1] == conn.num_live()  # the "all" row: live weights only


def test_collinearity_measures_only_live_synapses_of_a_given_connectome():
    net, conn = pruned_seqnet()
    data = batches((3, 5), 3)
    ref = reference_collinearity(net, data, conn)
    res = collinearity(net, data, conn=conn)
    assert set(res.cosine) == {"up.weight", "gru.weight_ih_l0", "gru.weight_hh_l0", "att.in_proj_weight",
                               "att.out_proj.weight", "head.weight"}
    check_collinearity(res, ref, conn)


def test_collinearity_finds_an_attached_connectome():
    net, conn = pruned_seqnet()
    data = batches((3, 5), 3)
    ref = reference_collinearity(net, data, conn)
    conn.attach(torch.optim.SGD(net.parameters(), lr=0.1))
    res = collinearity(net, data)
    check_collinearity(res, ref, conn)
    dense = collinearity(net, data, conn=Connectome(net))  # an all-ones connectome: every weight measured
    assert dense.measured == conn.num_synapses() and dense.pruned == 0


def test_every_attached_connectome_is_read():
    """Two connectomes over disjoint layers, each attached to its own optimizer (as Connectome
    allows): each layer is measured on its own connectome's live synapses, not dense because the
    first connectome found does not hold it."""
    net, whole = pruned_seqnet()
    data = batches((3, 5), 3)
    ref = reference_collinearity(net, data, whole)
    up = Connectome(net, include=["up"])
    rest = Connectome(net, exclude=["up"])
    for c in (up, rest):
        c.set_masks({n: whole.masks[n] for n in c.masks})
        c.attach(torch.optim.SGD(c.params.values(), lr=0.1))
    check_collinearity(collinearity(net, data), ref, whole)
    res = gradient_by_depth(net, data, layer="head", depths=torch.arange(6) % 2, batches=None)
    assert torch.equal(res.live, whole.masks["head.weight"]) and res.pruned == int((~res.live).sum()) > 0


def test_collinearity_reports_a_layer_pruned_entirely(tmp_path):
    net, conn = pruned_seqnet()
    masks = dict(conn.masks)
    masks["att.out_proj.weight"] = torch.zeros_like(masks["att.out_proj.weight"])
    conn.set_masks(masks)
    res = collinearity(net, batches((3, 5), 3), conn=conn)
    assert "att.out_proj.weight" not in res.cosine
    row = {r["layer"]: r for r in res.table}["att.out_proj.weight"]
    assert row["weights"] == 0 and row["pruned"] == 36 and math.isnan(row["median_cosine"])
    assert row["note"] == "every weight pruned: nothing measured"
    assert res.table["note"].count("") == len(res.table) - 1
    assert res.measured == conn.num_live()
    res.plot(tmp_path / "c.png")
    res.plot_summary(tmp_path / "s.png")
    conn.set_masks({n: torch.zeros_like(m) for n, m in conn.masks.items()})
    with pytest.raises(ValueError, match="every measured weight .* is pruned"):
        collinearity(net, batches((3, 5), 3), conn=conn)


def test_collinearity_refuses_where_the_layers_the_loss_reaches_are_all_pruned():
    """The only layer the loss reaches pruned whole, a live one unused: a result measuring nothing came
    back, and fraction_above(), plot() and plot_summary() failed on torch.cat of an empty list."""
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.body, self.unused = nn.Linear(4, 3), nn.Linear(4, 3)

        def forward(self, x):
            return self.body(x)

    net = Net()
    conn = Connectome(net)
    conn.set_masks({"body.weight": torch.zeros(3, 4, dtype=torch.bool), "unused.weight": torch.ones(3, 4, dtype=torch.bool)})
    g = torch.Generator().manual_seed(0)
    data = [(torch.randn(8, 4, generator=g), torch.randint(0, 3, (8,), generator=g)) for _ in range(3)]
    with pytest.warns(UserWarning, match="take no part in the loss"), \
            pytest.raises(ValueError, match=r"every weight of the layers the loss reaches \(body\.weight\) is pruned .* "
                                            r"hold live synapses \(include=/exclude=\)"):
        collinearity(net, data, conn=conn)


def test_conn_must_be_this_models_connectome():
    net, conn = pruned_seqnet()
    other, _ = pruned_seqnet()
    data = batches((3, 5), 3)
    with pytest.raises(ValueError, match="another model"):
        collinearity(other, data, conn=conn)
    with pytest.raises(ValueError, match="another model"):
        gradient_by_depth(other, data, layer="head", depths=torch.zeros(6), conn=conn)
    with pytest.raises(TypeError, match="adaptive.Connectome"):
        collinearity(net, data, conn=conn.masks)


DEPTHS = torch.tensor([0] * 6 + [1] * 6)  # given depths of the 12 inputs of layer "2"


def pruned_mlp(density=0.3):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 12), nn.Tanh(), nn.Linear(12, 4))
    conn = Connectome(net)
    g = torch.Generator().manual_seed(3)
    conn.set_masks({n: torch.rand(m.shape, generator=g) < density for n, m in conn.masks.items()})
    return net, conn


def check_bands(res, net, data, conn):
    (G,) = batch_gradients(net, data, [net[2].weight])
    live = conn.masks["2.weight"]
    band = DEPTHS.expand(4, 12)
    A = G.abs()
    assert sum(res.table["weights"]) == int(live.sum())  # the live weights, not all 48
    assert torch.equal(res.live, live) and res.pruned == int((~live).sum())
    torch.testing.assert_close(res.per_weight.double(), A.mean(0)[live].float().double(), rtol=1e-5, atol=0)
    assert torch.equal(res.band, band[live])
    for row in res.table:
        here = live & (band == row["depth"])
        vals = A[:, here].reshape(-1)
        assert row["weights"] == int(here.sum()) and row["values"] == vals.numel()
        assert row["pruned"] == int((~live & (band == row["depth"])).sum())
        assert row["mean"] == pytest.approx(float(vals.mean()), rel=1e-6)
        for q, col in ((0.25, "q1"), (0.5, "median"), (0.75, "q3")):  # the histogram's bins: 1.2% apart
            assert row[col] == pytest.approx(float(torch.quantile(vals, q)), rel=0.02)


def test_gradient_by_depth_measures_only_live_synapses():
    net, conn = pruned_mlp()
    data = batches((6,), 4)
    res = gradient_by_depth(net, data, layer="2", depths=DEPTHS, batches=None, conn=conn)
    check_bands(res, net, data, conn)


def test_gradient_by_depth_finds_an_attached_connectome():
    net, conn = pruned_mlp()
    data = batches((6,), 4)
    conn.attach(torch.optim.SGD(net.parameters(), lr=0.1))
    res = gradient_by_depth(net, data, layer="2", depths=DEPTHS, batches=None)
    check_bands(res, net, data, conn)


def test_diagnostics_of_a_data_parallel_model_name_its_layers_as_its_connectome_does():
    """accelerator.prepare(model) returns DistributedDataParallel(model), holding the model under
    "module." as DataParallel does: gradient_by_depth and collinearity of the wrapper refused the
    connectome of the model itself as "another model", and named its layers module.NAME."""
    net, conn = pruned_mlp()
    data = batches((6,), 4)
    wrapped = nn.DataParallel(net)  # (on a machine with a GPU it moves net there, as prepare would)
    bands = gradient_by_depth(wrapped, data, layer="2", depths=DEPTHS, batches=None, conn=conn)
    plain = gradient_by_depth(net, data, layer="2", depths=DEPTHS, batches=None, conn=conn)
    assert bands.table.to_markdown() == plain.table.to_markdown() and torch.equal(bands.live, conn.masks["2.weight"])
    col = collinearity(wrapped, data, conn=conn)
    assert list(col.cosine) == ["0.weight", "2.weight"] and col.measured == conn.num_live()
    assert col.table.to_markdown() == collinearity(net, data, conn=conn).table.to_markdown()


def test_diagnostics_of_a_ddp_model_run_the_module_inside_it(tmp_path, monkeypatch):
    """A DistributedDataParallel forward is a collective (it broadcasts the buffers, BatchNorm's
    statistics, from rank 0): a diagnostic one process ran alone on the model accelerator.prepare
    returned hung there, waiting for the others. It measures this process's batches, so it runs the
    module inside the wrapper."""
    import torch.distributed as dist

    from adaptive.diagnostics import knowledge_distribution

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 12), nn.BatchNorm1d(12), nn.Tanh(), nn.Linear(12, 4))
    conn = Connectome(net)
    conn.set_masks({n: torch.rand(m.shape) < 0.5 for n, m in conn.masks.items()})
    data = batches((6,), 4)
    expected = [collinearity(net, data, conn=conn).table.to_markdown(),
                gradient_by_depth(net, data, layer="3", depths=DEPTHS, batches=None, conn=conn).table.to_markdown(),
                knowledge_distribution(net, data, counts=[0, 10], conn=conn).table.to_markdown()]
    dist.init_process_group("gloo", store=dist.FileStore(str(tmp_path / "store"), 1), rank=0, world_size=1)
    try:
        ddp = nn.parallel.DistributedDataParallel(net)
        monkeypatch.setattr(nn.parallel.DistributedDataParallel, "forward",
                            lambda *a, **k: pytest.fail("a diagnostic ran the DDP forward, a collective"))
        got = [collinearity(ddp, data, conn=conn).table.to_markdown(),
               gradient_by_depth(ddp, data, layer="3", depths=DEPTHS, batches=None, conn=conn).table.to_markdown(),
               knowledge_distribution(ddp, data, counts=[0, 10], conn=conn).table.to_markdown()]
    finally:
        dist.destroy_process_group()
    assert got == expected


def test_gradient_by_depth_band_or_layer_pruned_entirely(tmp_path):
    net, conn = pruned_mlp(density=0.6)
    mask = conn.masks["2.weight"].clone()
    mask[:, 6:] = False  # every weight reading the depth-1 inputs
    conn.set_masks({"0.weight": conn.masks["0.weight"], "2.weight": mask})
    res = gradient_by_depth(net, batches((6,), 4), layer="2", depths=DEPTHS, batches=None, conn=conn)
    deep = res.table[1]
    assert deep["weights"] == deep["values"] == 0 and deep["pruned"] == 24 and math.isnan(deep["median"])
    assert deep["note"] == "every weight pruned: nothing measured" and res.table[0]["note"] == ""
    assert math.isnan(res.ratio()) and "pruned" in res.no_ratio_reason()
    res.plot(tmp_path / "b.png")
    conn.set_masks({"0.weight": conn.masks["0.weight"], "2.weight": torch.zeros_like(mask)})
    with pytest.raises(ValueError, match="every weight of '2' is pruned"):
        gradient_by_depth(net, batches((6,), 4), layer="2", depths=DEPTHS, conn=conn)


def test_zeros_without_a_connectome_get_a_warning():
    """A pruned model measured without its masks (a --weights file of zeros): its numbers are
    unchanged (every weight counted), and a warning names conn=."""
    net, conn = pruned_mlp()
    data = batches((6,), 4)
    given = collinearity(net, data, conn=conn)
    with pytest.warns(UserWarning, match=r"exactly zero.*collinearity\(model, \.\.\., conn=conn\)"):
        dense = collinearity(net, data)
    assert dense.measured == conn.num_synapses() > given.measured
    with pytest.warns(UserWarning, match=r"exactly zero.*gradient_by_depth\(model, \.\.\., conn=conn\)"):
        gradient_by_depth(net, data, layer="2", depths=DEPTHS, batches=1)


SCALER_DEPTHS = torch.tensor([0] * 4 + [1] * 4 + [2] * 4)  # three bands of layer "2"'s 12 inputs


def reference_band_scales(raws, lives, momentum):
    """BandGradientScaler's scales after each gradient of ``raws``, recomputed in plain PyTorch: the
    running mean log|grad| of each band's live, non-zero entries (``lives``: the mask at each step)."""
    band = SCALER_DEPTHS.expand(4, 12)
    typical, seen, out = torch.zeros(3, dtype=torch.float64), torch.zeros(3, dtype=torch.bool), []
    for g, live in zip(raws, lives):
        for b in range(3):
            vals = g.double().abs()[(band == b) & live & (g != 0)]
            if len(vals):
                cur = vals.log().mean()
                typical[b] = momentum * typical[b] + (1 - momentum) * cur if seen[b] else cur
                seen[b] = True
        common = typical[seen].mean()
        out.append({b: float((common - typical[b]).exp()) if seen[b] else 1.0 for b in range(3)})
    return out


def band_scaled_run(how, observed):
    """Six SGD steps on a pruned MLP with a BandGradientScaler on layer "2" (its connectome given,
    attached, or absent), the deep band pruned from the start and the middle one pruned entirely
    after two steps. ``observed``: an observer wants dense gradients at every step."""
    net, conn = pruned_mlp(density=0.5)
    m = conn.masks["2.weight"].clone()
    m[:, 8:] = False
    conn.set_masks({"0.weight": conn.masks["0.weight"], "2.weight": m})
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    if how != "none":
        conn.attach(opt)
        if observed:
            conn.add_observer(lambda: None)
    raws, lives, scales, used = [], [], [], []
    net[2].weight.register_hook(lambda g: raws.append(g.clone()))  # before the scaler's: the raw gradient
    scaler = BandGradientScaler(net, layers=["2"], depths={"2": SCALER_DEPTHS}, momentum=0.5,
                                conn=conn if how == "given" else None)
    for step, (x, y) in enumerate(batches((6,), 4, n=6)):
        if step == 2:
            m = conn.masks["2.weight"].clone()
            m[:, 4:] = False
            conn.set_masks({"0.weight": conn.masks["0.weight"], "2.weight": m})
        lives.append(conn.masks["2.weight"].clone() if how != "none" else torch.ones(4, 12, dtype=torch.bool))
        F.cross_entropy(net(x), y).backward()
        scales.append(scaler.scales()["2"])
        used.append((net[2].weight.grad.clone(), raws[-1]))
        opt.step()
        opt.zero_grad()
    scaler.remove()
    return raws, lives, scales, used


@pytest.mark.parametrize("how", ["given", "attached", "none"])
def test_band_scaler_sizes_bands_by_live_synapses_only(how):
    """With a connectome (given, or attached to the optimizer) the running band sizes count live
    synapses only, so the scales equal a recomputation over the live positions and are the same
    whether or not the steps are observed (dense .grad); they counted the pruned positions' dense
    gradients. A band pruned from the start keeps scale 1; one pruned later keeps its last size."""
    raws, lives, scales, used = band_scaled_run(how, observed=True)
    want = reference_band_scales(raws, lives, 0.5)
    for got, ref in zip(scales, want):
        assert got == pytest.approx(ref, rel=1e-6)
    if how != "none":  # without a connectome every position counts, as before
        assert scales[-1][2] == 1.0 and scales[-1][1] != 1.0  # pruned from the start; pruned after being seen
        assert band_scaled_run(how, observed=False)[2] == scales
    grad, raw = used[0]  # observed: .grad keeps the pruned positions' (dense) gradient, scaled by its band
    s = torch.tensor([scales[0][int(d)] for d in SCALER_DEPTHS], dtype=raw.dtype)
    torch.testing.assert_close(grad, raw * s, rtol=1e-6, atol=0)


def test_band_scaler_refuses_another_models_connectome():
    net, conn = pruned_mlp()
    other, _ = pruned_mlp()
    with pytest.raises(ValueError, match="another model"):
        BandGradientScaler(other, layers=["2"], depths={"2": SCALER_DEPTHS}, conn=conn)
