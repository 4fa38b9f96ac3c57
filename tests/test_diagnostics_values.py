"""Numbers the diagnostics report, pinned on tiny cases where a careless edit would change them
(silent units, knowledge curves and fits, removal order, band scaler, tables, progress)."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from adaptive import Connectome
from adaptive.diagnostics import BandGradientScaler, LayerSilence, SilentUnits
from adaptive.diagnostics.knowledge import default_counts, fit_curve, fit_exponential
from adaptive.diagnostics.removal_order import removal_scores
from adaptive.diagnostics.table import Table


# ----------------------------------------------------------------------------- silent units
def test_a_layer_exactly_half_silent_of_four_units_is_alarming():
    """WARN_SHARE and WARN_MIN_UNITS are both inclusive: 2 silent of 4 units is warned about."""
    half = LayerSilence("a", 2, 4)
    assert SilentUnits.alarming([half, LayerSilence("b", 1, 4), LayerSilence("c", 2, 3)]) == [half]


def test_an_unmeasured_layer_before_a_measured_one_leaves_its_counts_in_place():
    torch.manual_seed(0)
    unused, used = nn.Linear(3, 5), nn.Linear(3, 2)
    s = SilentUnits({"unused": unused, "used": used})
    used(torch.randn(4, 3)).sum().backward()
    s.observe()
    assert s.layers() == [LayerSilence("used", 0, 2)]


def test_a_bias_free_unit_with_only_negative_gradients_is_reached():
    """Inputs >= 0 (after a ReLU) and a loss that lowers the output: every weight gradient is < 0."""
    lin = nn.Linear(3, 2, bias=False)
    s = SilentUnits({"lin": lin})
    x = torch.rand(4, 3) + 0.1
    x[:, 0] = 0.0  # a zero input: each row's largest gradient is exactly 0, the others below
    (-lin(x).sum()).backward()
    s.observe()
    assert s.layers() == [LayerSilence("lin", 0, 2)]


def test_a_negative_bias_gradient_reaches_a_unit_whose_inputs_are_zero():
    lin = nn.Linear(3, 2)
    s = SilentUnits({"lin": lin})
    (-lin(torch.zeros(4, 3)).sum()).backward()  # weight gradient 0, bias gradient -4
    s.observe()
    assert s.layers() == [LayerSilence("lin", 0, 2)]


def test_a_nan_gradient_counts_as_reached():
    lin = nn.Linear(3, 2)
    s = SilentUnits({"lin": lin})
    lin(torch.randn(4, 3)).sum().backward()
    lin.weight.grad.fill_(float("nan"))
    lin.bias.grad.fill_(float("nan"))
    s.observe()
    assert s.layers() == [LayerSilence("lin", 0, 2)]


def test_a_partly_pruned_bias_free_unit_still_has_input():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 3, bias=False))
    conn = Connectome(net)
    mask = torch.ones(3, 4, dtype=torch.bool)
    mask[0, :2] = False  # unit 0 keeps two live inputs
    mask[2] = False  # unit 2 has none
    conn.set_masks({"0.weight": mask})
    s = SilentUnits.from_connectome(conn)
    net(torch.randn(5, 4)).pow(2).sum().backward()
    s.observe()
    assert s.layers() == [LayerSilence("0.weight", 1, 3)]


def test_a_loaded_interval_leaves_an_unmeasured_layer_unmeasured():
    torch.manual_seed(0)
    a, b = nn.Linear(3, 2), nn.Linear(3, 4)
    s = SilentUnits({"a": a, "b": b})
    a(torch.randn(4, 3)).sum().backward()
    s.observe()
    t = SilentUnits({"a": a, "b": b})
    t.load_vector(s.vector())
    assert t.layers() == s.layers() == [LayerSilence("a", 0, 2)]


# ----------------------------------------------------------------------------- knowledge curves and fits
def test_default_counts_reach_the_rounded_fraction():
    assert max(default_counts(10, points=5, max_fraction=0.35)) == 4  # 3.5 rounds to 4


def test_two_points_make_no_exponential_fit():
    f = fit_exponential([0, 1, 2, 3], [1.0, 2.0, 4.0, 8.0], [False, True, True, False])
    assert f["points"] == 2 and math.isnan(f["rate"])


def test_holds_from_stays_at_the_first_point_when_the_fit_starts_there():
    x = [0, 1, 2, 3, 4, 5]
    f = fit_exponential(x, [math.exp(0.5 * v) for v in x], [True, True, True, True, False, False])
    assert f["fit_from"] == 0.0 and f["holds_from"] == 0.0 and f["holds_to"] == 5.0


def test_within_tolerance_counts_the_fitted_points_only():
    x = [0, 1, 2, 3, 4]
    y = [math.exp(v) for v in x[:4]] + [1e6]  # the last point, not fitted, far off the line
    f = fit_exponential(x, y, [True, True, True, True, False])
    assert f["within_tolerance"] == 1.0


def _acc_table(acc, loss):
    rows = [{"removed": k, "fraction": k / (len(acc) - 1), "accuracy": a, "loss": l,
             "accuracy_drop": acc[0] - a, "loss_increase": l - loss[0]} for k, (a, l) in enumerate(zip(acc, loss))]
    return Table(rows)


def test_the_collapse_point_and_beyond_are_not_fitted():
    # chance 0.5: the collapse is the first point whose drop reaches 0.9 of (1.0 - 0.5), at index 4
    acc = [1.0, 0.99, 0.97, 0.9, 0.5, 0.5]
    loss = [0.1, 0.11, 0.14, 0.3, 1.0, 2.0]
    fits = fit_curve(_acc_table(acc, loss), chance=0.5, samples=1000)
    assert fits["loss_increase"]["points"] == 3 and fits["loss_increase"]["fit_to"] == 3.0


def test_a_reloaded_curve_keeps_its_accuracy_floor_over_positions(tmp_path):
    from adaptive.diagnostics import KnowledgeCurve

    acc, loss = [1.0, 0.99, 0.97, 0.9, 0.8], [0.1, 0.11, 0.14, 0.3, 1.0]
    table = _acc_table(acc, loss)
    fits = fit_curve(table, 0.1, 40)
    curve = KnowledgeCurve(table, 4, "magnitude", 0, fits, 0.1,
                           meta={"base": {"loss": 0.1, "accuracy": 1.0, "samples": 4, "positions": 40}})
    curve.save(str(tmp_path))
    again = KnowledgeCurve.load(str(tmp_path))
    assert again.fits["accuracy_drop"]["floor"] == pytest.approx(1.5 / 40)


# ----------------------------------------------------------------------------- removal order


def test_random_scores_differ_between_layers_of_one_shape():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 4))
    scores = removal_scores(Connectome(model), estimator="random", seed=3)
    assert not torch.equal(scores["0.weight"], scores["2.weight"])


# ----------------------------------------------------------------------------- band scaler
def test_band_scaler_given_a_connectome_counts_live_synapses_only():
    """conn= given, attached to no optimizer: the running sizes still count the live synapses only."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 4, bias=False))
    conn = Connectome(net)
    mask = torch.ones(4, 6, dtype=torch.bool)
    mask[:, 3:5] = False  # half of the deep band pruned
    conn.set_masks({"0.weight": mask})
    depths = torch.tensor([0, 0, 0, 1, 1, 1])
    raws = []
    net[0].weight.register_hook(lambda g: raws.append(g.clone()))
    scaler = BandGradientScaler(net, layers=["0"], depths={"0": depths}, conn=conn)
    x = torch.randn(8, 6)
    x[:, 5] *= 1e-3  # the live deep input is small: its pruned neighbours' dense gradients are not
    F.cross_entropy(net(x), torch.randint(0, 4, (8,))).backward()
    g = raws[0].double().abs()
    band = depths.expand(4, 6)
    logs = [g[(band == b) & mask].log().mean() for b in (0, 1)]
    common = (logs[0] + logs[1]) / 2
    want = {b: float((common - logs[b]).exp()) for b in (0, 1)}
    assert scaler.scales()["0"] == pytest.approx(want, rel=1e-6)
    scaler.remove()


# ----------------------------------------------------------------------------- tables
def test_to_markdown_uses_the_float_format_given():
    assert Table([{"x": 0.123456}]).to_markdown(floatfmt=".2f").splitlines()[-1] == "| 0.12 |"



def _labels_beyond_the_head(fit=False):
    from torch.utils.data import DataLoader, TensorDataset

    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(16, 6, generator=g), torch.randint(0, 3, (16,), generator=g)
    if not fit:
        y[12] = 9  # in the second batch: a model of 3 classes, data of at least 10
    return DataLoader(TensorDataset(x, y), batch_size=8)


@pytest.mark.parametrize("run, where", [
    (lambda m, dl: __import__("adaptive").diagnostics.gradient_by_depth(m, dl, layer="2", batches=2, cycle=False),
     "gradient_by_depth's batch 2"),
    (lambda m, dl: __import__("adaptive").diagnostics.collinearity(m, dl, batches=2), "collinearity's batch 2"),
    (lambda m, dl: removal_scores(Connectome(m), dl, estimator="taylor", batches=2), "removal_scores' batch 2"),
    (lambda m, dl: __import__("adaptive").diagnostics.knowledge_distribution(m, dl, points=3), "evaluation batch 2"),
    (lambda m, dl: __import__("adaptive").diagnostics.knowledge_distribution(
        m, _labels_beyond_the_head(fit=True), order_loader=dl, estimator="taylor", points=3),
     "knowledge_distribution's removal order"),
])
def test_labels_beyond_the_head_are_named_with_the_fix_not_as_torchs_index_error(run, where):
    """The diagnostics passed a label beyond the model's head to torch's loss, which raised a bare
    "IndexError: Target 9 is out of bounds"; optimize_connectome and edge_popup named the labels and the fix."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
    with pytest.raises(ValueError, match=r"the model gives 3 classes .* labels go up to 9.*num_classes=10 or more") as e:
        run(model, _labels_beyond_the_head())
    assert any(where in n for n in getattr(e.value, "__notes__", [])), e.value.__notes__
