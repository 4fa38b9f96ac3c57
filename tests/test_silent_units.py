"""adaptive.diagnostics.SilentUnits: units no gradient reaches, counted exactly on networks whose dead
units are known, carried through a checkpoint, and reported by the recipe's train rows."""
import io
import os
import sys

import pytest
import torch
from torch import nn

import adaptive
from adaptive.diagnostics import LayerSilence, SilentUnits
from adaptive.training import TrainState, read_metrics_csv

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _scripts import load_script  # noqa: E402

R = load_script("recipes/adaptive.py", "recipe_adaptive_silent")


def _dead_mlp(dead=(0, 3, 5)):
    """5 -> 8 -> 3 with the given hidden ReLUs dead: a bias of -100 keeps them below zero on any input."""
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 3))
    with torch.no_grad():
        m[0].bias[list(dead)] = -100.0
    return m


def _step(model, silent, x, loss=lambda out: out.logsumexp(-1).sum()):
    """One training step's gradients, observed as train_one_epoch observes them."""
    model.zero_grad(set_to_none=True)
    loss(model(x)).backward()
    silent.observe()


def test_dead_relus_of_a_linear_layer_are_counted_exactly():
    m = _dead_mlp()
    s = SilentUnits({"hidden": m[0], "out": m[2]})
    for _ in range(3):
        _step(m, s, torch.randn(32, 5))
    hidden, out = s.layers()
    assert (hidden.name, hidden.silent, hidden.units) == ("hidden", 3, 8)
    assert (out.silent, out.units) == (0, 3)
    assert SilentUnits.share([hidden, out]) == pytest.approx(3 / 11)
    assert SilentUnits.alarming([hidden, out]) == []  # 3 of 8 is below half
    s.reset()
    assert s.layers() == []  # nothing measured since the reset


def test_a_unit_reached_at_one_step_of_the_interval_is_not_silent():
    m = _dead_mlp()
    s = SilentUnits({"hidden": m[0], "out": m[2]})
    _step(m, s, torch.randn(32, 5))
    with torch.no_grad():
        m[0].bias[0] = 100.0  # unit 0 fires at the second step only
    _step(m, s, torch.randn(32, 5))
    assert s.layers()[0].silent == 2


def test_dead_channels_of_a_convolution_and_a_layer_called_twice():
    torch.manual_seed(0)
    conv, shared = nn.Conv2d(3, 6, 3, padding=1), nn.Conv2d(6, 6, 1)
    with torch.no_grad():
        conv.bias[[1, 2, 4, 5]] = -100.0
    net = nn.Module()
    net.conv, net.shared = conv, shared
    net.forward = lambda x: shared(torch.relu(shared(torch.relu(conv(x))))).mean((2, 3))
    s = SilentUnits({"conv": conv, "shared": shared})
    _step(net, s, torch.randn(4, 3, 8, 8), loss=lambda out: out.pow(2).sum())
    layers = {l.name: l for l in s.layers()}
    assert (layers["conv"].silent, layers["conv"].units) == (4, 6)
    # the second call's output always gets a gradient: every channel of the shared layer is reached
    assert layers["shared"].silent == 0
    assert [l.name for l in SilentUnits.alarming(list(layers.values()))] == ["conv"]  # 4 of 6


@pytest.mark.parametrize("groups", [1, 2])
@pytest.mark.parametrize("bias", [True, False])
def test_a_transposed_convolution_counts_its_output_channels(groups, bias):
    """A ConvTranspose's weight is (in, out/groups, *kernel): its units lie on axis 1. They were read
    on axis 0, as input channels: a biased layer failed with a size mismatch, a bias-free one counted
    the wrong units."""
    torch.manual_seed(0)
    ct = nn.ConvTranspose2d(4, 6, 3, groups=groups, bias=bias)
    s = SilentUnits({"ct": ct})
    ct(torch.randn(2, 4, 5, 5))[:, [1, 4]].sum().backward()  # only output channels 1 and 4 reach the loss
    s.observe()
    assert s.layers() == [LayerSilence("ct", 4, 6)]
    assert torch.equal(s.vector()[:6] > 0, torch.tensor([False, True, False, False, True, False]))


def test_layers_without_a_gradient_are_not_measured():
    m = _dead_mlp()
    unused = nn.Linear(8, 4)
    s = SilentUnits({"hidden": m[0], "out": m[2], "unused": unused})
    s.observe()  # no backward yet: nothing to take in
    assert s.layers() == []
    _step(m, s, torch.randn(4, 5))
    assert [l.name for l in s.layers()] == ["hidden", "out"]


def test_bad_layers_are_refused():
    with pytest.raises(ValueError, match="no layers"):
        SilentUnits({})
    with pytest.raises(TypeError, match="ReLU without a weight tensor"):
        SilentUnits({"act": nn.ReLU()})


def test_a_bias_free_unit_with_no_live_input_is_silent_even_under_dense_gradients():
    """A unit of a bias-free layer whose every incoming synapse is pruned outputs a constant 0: no
    gradient reaches a live weight of it, though the dense gradient of its absent weights is not 0
    (a controller reading dense gradients at that step)."""
    from adaptive import Connectome

    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(5, 8, bias=False), nn.Tanh(), nn.Linear(8, 3))
    conn = Connectome(m)
    mask = torch.ones(8, 5, dtype=torch.bool)
    mask[[2, 6]] = False  # units 2 and 6 of the first layer lose every input
    conn.set_masks({"0.weight": mask})
    s = SilentUnits.from_connectome(conn)
    m.zero_grad()
    m(torch.randn(16, 5)).logsumexp(-1).sum().backward()  # no optimizer attached: the gradient stays dense
    assert bool(m[0].weight.grad[[2, 6]].ne(0).any())
    s.observe()
    first, last = s.layers()
    assert (first.name, first.silent, first.units) == ("0.weight", 2, 8)
    assert (last.name, last.silent) == ("2.weight", 0)


class _AttentionAndRnn(nn.Module):
    """Synapse layers of every kind the Connectome prunes: an attention's packed input projection and an
    RNN's gate matrices are weights read as plain tensors; out_proj and fc are Linear modules."""

    def __init__(self):
        super().__init__()
        self.att = nn.MultiheadAttention(8, 2, batch_first=True)
        self.rnn = nn.GRU(8, 8, batch_first=True)
        self.fc = nn.Linear(8, 3)

    def forward(self, x):
        h, _ = self.att(x, x, x)
        h, _ = self.rnn(h)
        return self.fc(h.mean(1))


def test_from_connectome_watches_every_synapse_layer_with_its_bias():
    """Weights read as plain tensors (in_proj_weight, weight_ih_l0, out_proj through F.linear) are
    measured from their gradients like any Linear (a forward-hook design had to leave them out)."""
    from adaptive import Connectome

    torch.manual_seed(0)
    conn = Connectome(_AttentionAndRnn())
    s = SilentUnits.from_connectome(conn)
    assert s.names == list(conn.layers)
    assert s.units["att.in_proj_weight"] == 24 and s.units["rnn.weight_ih_l0"] == 24
    assert s._biases["att.in_proj_weight"] is conn.model.att.in_proj_bias
    assert s._biases["rnn.weight_hh_l0"] is conn.model.rnn.bias_hh_l0
    assert s._biases["fc.weight"] is conn.model.fc.bias
    _step(conn.model, s, torch.randn(4, 5, 8))
    assert [l.name for l in s.layers()] == list(conn.layers)


def test_the_interval_survives_a_train_state_checkpoint():
    m = _dead_mlp()
    state = TrainState(silent_units=SilentUnits({"hidden": m[0], "out": m[2]}))
    _step(m, state.silent_units, torch.randn(8, 5))
    sd = state.state_dict()
    fresh = _dead_mlp()
    back = TrainState(silent_units=SilentUnits({"hidden": fresh[0], "out": fresh[2]}))
    back.load_state_dict(sd)
    assert back.silent_units.layers() == state.silent_units.layers()
    assert back.silent_units.layers()[0].silent == 3
    # the resumed interval goes on: a gradient now reaching a unit counts with the saved ones
    with torch.no_grad():
        fresh[0].bias[0] = 100.0
    _step(fresh, back.silent_units, torch.randn(8, 5))
    assert back.silent_units.layers()[0].silent == 2
    # a checkpoint written before the state carried the interval starts a new one
    old = {k: v for k, v in sd.items() if k != "silent"}
    back.load_state_dict(old)
    assert back.silent_units.layers() == []
    # a saved interval of other layers is refused, naming both sizes
    with pytest.raises(ValueError, match="does not fit these layers"):
        back.load_state_dict({**sd, "silent": [0.0] * 5})


def test_the_recipe_reports_silent_units_and_warns_about_a_dying_layer(tmp_path, capsys):
    """A learning rate far too high kills most of the MLP's hidden ReLUs within a few steps: the
    train rows show the share rising and the recipe names the layer; a sane rate keeps them alive."""
    from accelerate.state import AcceleratorState

    common = ["--max_steps", "30", "--log_every", "10", "--threads", "1", "--progress", "false", "--figures", "false",
              "--density", "1.0", "--momentum", "0"]
    AcceleratorState._reset_state(True)
    R.main(common + ["--lr", "10", "--output_dir", str(tmp_path / "hot")])
    out = capsys.readouterr().out
    rows = [r for r in read_metrics_csv(tmp_path / "hot" / "metrics.csv") if r["split"] == "train"]
    shares = [r["silent_units"] for r in rows]
    assert all(r["loss"] == r["loss"] for r in rows)  # a finite (if huge) loss: the units died, nothing diverged to NaN
    assert len(shares) == 3 and shares[0] < 0.1 and shares[-1] > 0.8, shares
    assert "units received no gradient over steps" in out and "a lower --lr" in out
    assert "clipping the gradient, --max_grad_norm 1, kept all 24 LeNet-5 runs" in out  # the run did not clip: try clipping
    AcceleratorState._reset_state(True)
    res = R.main(common + ["--lr", "0.01", "--output_dir", str(tmp_path / "calm")])
    # the watch puts no hook on the model: the model the run returns pickles (a forward-hook design's did not)
    assert not any(m._forward_hooks for m in res.model.modules())
    torch.save(res.model, io.BytesIO())
    out = capsys.readouterr().out
    rows = [r for r in read_metrics_csv(tmp_path / "calm" / "metrics.csv") if r["split"] == "train"]
    assert all(r["silent_units"] < 0.2 for r in rows), [r["silent_units"] for r in rows]
    assert "received no gradient" not in out
    # holdout and test rows carry no such column value
    assert all(r["silent_units"] is None for r in read_metrics_csv(tmp_path / "calm" / "metrics.csv")
               if r["split"] != "train")
    AcceleratorState._reset_state(True)


def test_a_clipped_run_is_told_to_clip_harder_not_to_clip():
    from types import SimpleNamespace

    clipped = R.dying_relu_remedy(SimpleNamespace(max_grad_norm=2.5))
    assert "a smaller --max_grad_norm than 2.5 or a lower --lr" in clipped and "--max_grad_norm 1," not in clipped
    assert "--max_grad_norm 1," in R.dying_relu_remedy(SimpleNamespace(max_grad_norm=None))


def test_the_recipe_runs_a_model_with_attention(tmp_path):
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(True)
    R.main(["--model", "vit_tiny", "--max_steps", "4", "--log_every", "2", "--threads", "1", "--progress", "false",
            "--figures", "false", "--output_dir", str(tmp_path)])
    rows = [r for r in read_metrics_csv(tmp_path / "metrics.csv") if r["split"] == "train"]
    assert len(rows) == 2 and all(0 <= r["silent_units"] <= 1 for r in rows)
    AcceleratorState._reset_state(True)


def test_a_resumed_interval_goes_on_with_gradients_on_another_device():
    """load_vector holds the resumed interval on the CPU; a model on an accelerator then sent gradients
    from there, and torch.maximum of the two raised at the first step (a GPU run resumed from a
    checkpoint taken mid-row crashed at its first step). The meta device stands in for the accelerator."""
    hidden, out = nn.Linear(5, 8, device="meta"), nn.Linear(8, 3, device="meta")
    s = SilentUnits({"hidden": hidden, "out": out})
    saved = torch.zeros(8 + 3 + 2)
    saved[:4], saved[11] = 1.0, 1.0  # units 0-3 of hidden reached; hidden measured
    s.load_vector(saved)
    out(hidden(torch.randn(4, 5, device="meta"))).sum().backward()
    s.observe()
    assert s._peak["hidden"].device.type == "meta" and s._peak["out"].device.type == "meta"


def test_a_mask_replaced_by_a_tensor_that_reuses_the_old_ones_id_is_read_anew():
    """The live-input cache was keyed on (id(mask), mask._version): set_masks puts a new tensor in
    conn.masks, and a new one made after the cached one was freed can take its address (and its version,
    0). A unit that lost every input then still counted as fed (the cache of the old mask answered)."""
    from adaptive import Connectome

    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(5, 8, bias=False), nn.Tanh(), nn.Linear(8, 3))
    conn = Connectome(m)
    s = SilentUnits.from_connectome(conn)
    full = torch.ones(8, 5, dtype=torch.bool)
    cut = full.clone()
    cut[[2, 6]] = False  # units 2 and 6 lose every input
    other = full.clone()
    other[0, 0] = False
    x = torch.randn(16, 5)
    reused = 0
    for _ in range(1000):
        if reused == 3:
            break
        conn.set_masks({"0.weight": full.clone()})
        _step(m, s, x)  # caches the full mask's live inputs
        s.reset()
        cached = id(conn.masks["0.weight"])
        conn.set_masks({"0.weight": other.clone()})  # frees the cached mask
        conn.set_masks({"0.weight": cut.clone()})  # which this new one may replace at its address
        reused += id(conn.masks["0.weight"]) == cached
        _step(m, s, x)  # (no optimizer attached: the gradient is dense)
        assert s.layers()[0].silent == 2
        s.reset()
    if not reused:
        pytest.skip("no mask tensor took the cached one's address")


def _unit_2_reads_only_input_0():
    """A bias-free Linear(5, 8) whose unit 2 keeps one live synapse, from input 0, attached to SGD."""
    from adaptive import Connectome

    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(5, 8, bias=False), nn.Tanh(), nn.Linear(8, 3))
    conn = Connectome(m)
    mask = torch.ones(8, 5, dtype=torch.bool)
    mask[2] = False
    mask[2, 0] = True
    conn.set_masks({"0.weight": mask})
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    conn.attach(opt)
    return m, conn, mask, opt


@pytest.mark.parametrize("mask_in_backward", [True, False])
def test_a_bias_free_unit_whose_live_inputs_are_all_zero_counts_alike_under_masked_and_dense_gradients(
        mask_in_backward):
    """Unit 2 of a bias-free layer keeps one live synapse, from an input that is always 0: no gradient
    reaches a live weight of it. The dense gradient of its pruned weights reads the other inputs and is
    not 0, so it counted as reached at steps whose gradients were dense (several processes, an observer
    reading dense gradients, conn.mask_in_backward = False) and as silent on one process."""
    m, conn, mask, opt = _unit_2_reads_only_input_0()
    conn.mask_in_backward = mask_in_backward
    s = SilentUnits.from_connectome(conn)
    for _ in range(3):
        x = torch.randn(16, 5)
        x[:, 0] = 0.0
        opt.zero_grad(set_to_none=True)
        m(x).logsumexp(-1).sum().backward()
        assert bool(m[0].weight.grad[2].ne(0).any()) is not mask_in_backward  # dense: the pruned ones read x
        s.observe()
        opt.step()
    first, last = s.layers()
    assert (first.silent, last.silent) == (1, 0)


def test_a_nan_in_the_dense_gradient_of_a_pruned_weight_does_not_make_its_unit_reached():
    """As above, with the dense gradient at unit 2's pruned weights NaN: it was masked by a multiply
    by the 0/1 mask, 0 * NaN = NaN, and NaN counts as reached. Masked exactly, unit 2 stays silent."""
    m, conn, mask, opt = _unit_2_reads_only_input_0()
    conn.mask_in_backward = False  # the gradient is dense at observe()
    m[0].weight.register_hook(lambda g: g.masked_fill(~mask, float("nan")))
    s = SilentUnits.from_connectome(conn)
    x = torch.randn(16, 5)
    x[:, 0] = 0.0
    m(x).logsumexp(-1).sum().backward()
    s.observe()
    opt.step()
    assert s.layers()[0].silent == 1


def test_a_step_the_grad_scaler_skips_is_not_observed():
    """Under fp16 a GradScaler skips every step whose scaled gradients overflowed (several at the start
    of a run while it calibrates its scale, then now and then): its inf/NaN gradients teach nothing,
    but they counted as reached. Unit 0 of the hidden layer feeds nothing (its outgoing weights are 0),
    so its output gradient is 0 at every step, NaN (inf x 0) at the overflowing one."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    from adaptive.training import train_one_epoch

    class ScalerSkips(torch.optim.SGD):  # reports a skipped step as an AcceleratedOptimizer under fp16 does
        step_was_skipped = False

        def step(self, closure=None):
            if not self.step_was_skipped:
                return super().step(closure)

    AcceleratorState._reset_state(True)
    try:
        acc = Accelerator(cpu=True)
        m = _dead_mlp(dead=())
        with torch.no_grad():
            m[2].weight[:, 0] = 0.0
        opt = ScalerSkips(m.parameters(), lr=0.0)
        calls = []

        def loss_fn(out, y):
            calls.append(None)
            opt.step_was_skipped = len(calls) == 2  # the scaled loss overflows at the second step
            return nn.functional.cross_entropy(out, y) * (float("inf") if opt.step_was_skipped else 1.0)

        state = TrainState(silent_units=SilentUnits({"hidden": m[0], "out": m[2]}))
        loader = [(torch.randn(8, 5), torch.randint(0, 3, (8,))) for _ in range(3)]
        train_one_epoch(acc, m, opt, loader, state, loss_fn=loss_fn, log_every=3)
        hidden, out = state.silent_layers
        assert (hidden.silent, out.silent) == (1, 0)
    finally:
        AcceleratorState._reset_state(True)


@pytest.mark.parametrize("groups", [1, 2])
def test_a_transposed_connectome_layer_counts_its_output_channels(groups):
    """From a connectome, a ConvTranspose's units are its output channels (axis 1 of its weight, group by
    group), and a bias-free one whose every incoming synapse is pruned is silent. They were read on axis
    0 (its input channels): 4 units, not 6, and the pruned output channel's inputs taken for its own."""
    torch.manual_seed(0)
    ct = nn.ConvTranspose2d(4, 6, 3, groups=groups, bias=False)
    conn = adaptive.Connectome(nn.Sequential(ct), ensemble="neuron")
    conn.set_ensemble_masks({"0.weight": torch.tensor([True, True, False, True, True, True])})
    s = SilentUnits.from_connectome(conn)
    ct(torch.randn(2, 4, 5, 5)).square().sum().backward()
    s.observe()
    assert s.layers() == [LayerSilence("0.weight", 1, 6)]
    assert torch.equal(s.vector()[:6] > 0, torch.tensor([True, True, False, True, True, True]))
