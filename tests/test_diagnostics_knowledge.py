"""knowledge_distribution: exact curves on a constructed classifier, fits, fine-tune keeps zeros."""
import math

import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from adaptive import Connectome
from adaptive.diagnostics import fit_exponential, knowledge_distribution
from _figures import close_kept_figures

torch.set_num_threads(1)


_close_kept_figures = pytest.fixture(autouse=True)(close_kept_figures)


def constructed():
    # feature j alone decides sample j (label 0) through w[0, j] = 4 - j, w[1, j] = -(4 - j);
    # the bias favours class 1 by 0.5, so a sample is lost once its feature's weights are removed.
    model = nn.Linear(4, 2)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[4.0, 3, 2, 1], [-4.0, -3, -2, -1]]))
        model.bias.copy_(torch.tensor([0.0, 0.5]))
    data = [(torch.eye(4), torch.zeros(4, dtype=torch.long))]
    return model, data


def test_one_shot_magnitude_curve_is_exact(tmp_path):
    model, data = constructed()
    before = model.weight.detach().clone()
    curve = knowledge_distribution(model, data, counts=range(9), estimator="magnitude")
    assert curve.total == 8 and curve.table["removed"] == list(range(9))
    # magnitude order removes |w| = 1, 1, 2, 2, ...; a sample dies with the second weight of its pair
    assert curve.table["accuracy"] == [1, 1, 0.75, 0.75, 0.5, 0.5, 0.25, 0.25, 0]
    assert curve.table["accuracy_drop"][0] == 0 and curve.table["loss_increase"][0] == 0
    l8 = nn.functional.cross_entropy(torch.tensor([[0.0, 0.5]]), torch.tensor([0])).item()
    assert curve.table["loss"][-1] == pytest.approx(l8)
    assert torch.equal(model.weight, before)  # the caller's model is untouched
    curve.plot(tmp_path / "k.png")
    assert (tmp_path / "k.png").exists()
    assert len(curve.fit_table()) == 2


def test_a_random_order_follows_its_seed():
    """The random order ignored any seed (knowledge_distribution passed none; the recipe's --seed reached only the
    split): every seed removed the same weights, so runs of several seeds showed a random baseline no spread."""
    model, data = constructed()
    loss = [knowledge_distribution(model, data, counts=range(9), estimator="random", seed=s).table["loss"] for s in (0, 0, 1, 2)]
    assert loss[0] == loss[1] and (loss[0] != loss[2] or loss[0] != loss[3])


def test_drops_are_from_the_intact_network_when_counts_lack_zero():
    model, data = constructed()
    curve = knowledge_distribution(model, data, counts=[3, 5], estimator="magnitude")
    assert curve.table["removed"] == [0, 3, 5]  # the intact network is measured first
    assert curve.table["accuracy_drop"] == [0, 0.25, 0.5]


@pytest.mark.parametrize("kw, name", [({"points": -3}, "points"), ({"points": 2.5}, "points"), ({"points": 0}, "points"),
                                      ({"max_fraction": -1.0}, "max_fraction"), ({"max_fraction": 2.0}, "max_fraction"),
                                      ({"max_fraction": float("nan")}, "max_fraction")])
def test_points_and_max_fraction_that_draw_no_curve_are_refused_naming_them(kw, name):
    """points=-3 raised 'number of steps must be non-negative', max_fraction=-1 was taken, and
    max_fraction=2 blamed ``counts``, which the caller never passed."""
    model, data = constructed()
    with pytest.raises(ValueError, match=rf"^{name} must .*got {kw[name]!r}"):
        knowledge_distribution(model, data, **kw)
    assert knowledge_distribution(model, data, points=1, max_fraction=0.5).table["removed"] == [0, 1, 4]


def test_points_takes_numpy_and_torch_integers_and_refuses_a_bool():
    """points checked numbers.Integral: torch.tensor(1) was refused while build_model and the
    controller took it; all three share adaptive.counts.whole_number now."""
    import numpy as np

    model, data = constructed()
    for points in (np.int64(1), torch.tensor(1)):
        assert knowledge_distribution(model, data, points=points, max_fraction=0.5).table["removed"] == [0, 1, 4]
    with pytest.raises(ValueError, match=r"^points must be a whole number .*got True"):
        knowledge_distribution(model, data, points=True)


def test_taylor_order_uses_gradients_and_needs_a_loader():
    model, data = constructed()
    with pytest.raises(ValueError, match="held-out"):
        knowledge_distribution(model, data, estimator="taylor", counts=[0, 1])
    curve = knowledge_distribution(model, data, order_loader=data, estimator="obd", counts=[0, 8])
    assert curve.table["accuracy"] == [1, 0]


def test_fine_tune_keeps_removed_weights_at_zero():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3))
    train = [(torch.randn(32, 6), torch.randint(0, 3, (32,))) for _ in range(3)]
    curve = knowledge_distribution(model, train, order_loader=train, counts=[0, 20, 60],
                                   finetune_batches=2, lr=0.1)
    work = curve.meta["model"]
    w = torch.cat([work[0].weight.reshape(-1), work[2].weight.reshape(-1)])
    assert int((w == 0).sum()) >= 60
    order = curve.meta["order"]
    assert torch.all(w[order[:60]] == 0)


def test_fit_recovers_an_exponential_and_finds_where_it_breaks():
    k = list(range(0, 100, 5))
    rate = 0.05
    y = [1e-3 * math.exp(rate * v) for v in k]
    y[0] = 1e-9  # below the noise: the fit must break there
    y[-2] = y[-1] = y[-5]  # saturation: breaks at the end too
    f = fit_exponential(k, y, [0 < i < len(k) - 2 for i in range(len(k))])
    assert f["rate"] == pytest.approx(rate, rel=0.05)
    assert f["holds_from"] == 5 and f["holds_to"] == 85


def test_a_failed_fit_is_written_as_strict_json(tmp_path):
    """knowledge_summary.json held a bare NaN for a fit with too few points: JSON.parse and other
    strict readers refused the whole file. A failed fit's figures are the string "NaN" now (as every JSON
    file of the project writes them, adaptive.jsonio), and it loads again."""
    import json

    from adaptive.diagnostics.knowledge import KnowledgeCurve

    model, data = constructed()
    curve = knowledge_distribution(model, data, counts=[0, 1], estimator="magnitude")  # nothing to fit
    assert any(isinstance(v, float) and math.isnan(v) for f in curve.fits.values() for v in f.values())
    curve.save(tmp_path)

    def refuse(name):
        raise ValueError(f"non-JSON constant {name}")

    doc = json.loads((tmp_path / "knowledge_summary.json").read_text(), parse_constant=refuse)
    assert doc["fits"]["loss_increase"]["rate"] == "NaN"
    assert KnowledgeCurve.load(str(tmp_path)).total == curve.total


def test_the_curve_table_people_read_gives_accuracy_in_percent_and_the_csv_keeps_fractions(tmp_path):
    """knowledge_curve.md (and the recipe's printout) showed accuracy as a fraction, 0.804, where its figure,
    the progress lines and every other table show 80.40%: it is percent now, the columns saying so; the CSV,
    which load reads back, keeps the fractions."""
    import csv

    from adaptive.diagnostics.knowledge import KnowledgeCurve

    model, data = constructed()
    curve = knowledge_distribution(model, data, counts=[0, 2, 4], estimator="magnitude")
    curve.save(tmp_path)
    lines = (tmp_path / "knowledge_curve.md").read_text().splitlines()
    assert lines[0] == "| removed | fraction | accuracy (%) | loss | accuracy drop (points) | loss_increase |"
    acc = curve.table["accuracy"]
    assert acc[0] == 1.0 and 0 < acc[-1] < 1  # the intact net gets all four right; removing 4 weights loses some
    for line, a in zip(lines[2:], acc):
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert cells[2] == f"{100 * a:.2f}" and cells[4] == f"{100 * (1.0 - a):.2f}", line
    assert lines[2].split("|")[3].strip() == "100.00"
    with open(tmp_path / "knowledge_curve.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [float(r["accuracy"]) for r in rows] == acc and "accuracy_drop" in rows[0]
    assert KnowledgeCurve.load(str(tmp_path)).table["accuracy"] == acc


def test_the_fit_table_people_read_gives_each_floor_with_its_unit_and_the_csv_keeps_fractions(tmp_path):
    """knowledge_fit.md gave the accuracy fit's floor as a fraction (0.00075) under the curve table's
    accuracy drop in percentage points, in a column whose loss row is in nats: each floor now says its
    unit (nats; points, as the curve shows the drop); knowledge_fit.csv keeps nats and a fraction."""
    import csv

    model, data = constructed()
    curve = knowledge_distribution(model, data, counts=[0, 2, 4], estimator="magnitude", noise_floor=0.002)
    curve.save(tmp_path)
    lines = (tmp_path / "knowledge_fit.md").read_text().splitlines()
    head = [c.strip() for c in lines[0].strip("|").split("|")]
    assert head[-1] == "fitted above" and "fitted_above" not in head
    rows = {c[0]: c for c in ([x.strip() for x in line.strip("|").split("|")] for line in lines[2:])}
    acc_floor = curve.fits["accuracy_drop"]["floor"]  # 1.5 of the 4 samples: 0.375
    assert rows["loss_increase"][-1] == "0.002 nats"
    assert rows["accuracy_drop"][-1] == f"{100 * acc_floor:.3g} points" == "37.5 points"
    with open(tmp_path / "knowledge_fit.csv", newline="") as f:
        saved = {r["quantity"]: float(r["fitted_above"]) for r in csv.DictReader(f)}
    assert saved == {"loss_increase": 0.002, "accuracy_drop": acc_floor}
    assert curve.fit_table()["fitted_above"] == [0.002, acc_floor]


def test_strict_json_replaces_only_non_finite_numbers():
    import json

    import numpy as np

    from adaptive import jsonio

    doc = {"a": float("nan"), "b": [1.5, float("inf"), -float("inf")], "c": torch.tensor(2.5), "d": np.float32(0.25),
           "e": (1, "x", None), "f": {"g": torch.tensor(float("nan"))}}
    out = json.loads(jsonio.dumps(doc))
    assert out == {"a": "NaN", "b": [1.5, "Infinity", "-Infinity"], "c": 2.5, "d": 0.25, "e": [1, "x", None],
                   "f": {"g": "NaN"}}


def test_strict_json_writes_a_non_finite_number_in_a_tuple_as_its_string():
    """(low, high) with a NaN was refused as 'Out of range float values', not written as "NaN"."""
    import json

    from adaptive import jsonio

    assert json.loads(jsonio.dumps({"loss_range": (0.5, float("nan"))})) == {"loss_range": [0.5, "NaN"]}


def test_strict_json_writes_a_non_finite_one_element_tensor_as_its_string():
    """A 1-d one-element tensor goes through float(): an infinite one is "Infinity", as a 0-d one is."""
    import json

    from adaptive import jsonio

    text = jsonio.dumps({"loss": torch.tensor([float("inf")]), "best": torch.tensor([0.25])})
    assert json.loads(text) == {"loss": "Infinity", "best": 0.25}


def _trained_mlp():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3))
    x, y = torch.randn(96, 6), torch.randint(0, 3, (96,))
    train = [(x[i:i + 32], y[i:i + 32]) for i in range(0, 96, 32)]
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(20):
        for xb, yb in train:
            opt.zero_grad()
            nn.functional.cross_entropy(model(xb), yb).backward()
            opt.step()
    return model, train


@pytest.mark.parametrize("estimator", ["taylor", "obd"])
def test_a_frozen_layer_is_ordered_on_its_real_gradient(estimator):
    """A frozen layer (requires_grad=False) had no .grad, which the gradient statistics took as
    zeros: every one of its weights scored exactly 0 and was removed first. With every parameter
    frozen the order raised 'element 0 of tensors does not require grad'."""
    from adaptive.connectome import Connectome
    from adaptive.diagnostics import removal_scores

    model, train = _trained_mlp()
    ref = knowledge_distribution(model, train, order_loader=train, order_batches=None, estimator=estimator,
                                 counts=[0, 20, 60])
    ref_scores = removal_scores(Connectome(model), train, estimator, batches=None)
    for frozen in (["0.weight"], [n for n, _ in model.named_parameters()]):
        for n, p in model.named_parameters():
            p.requires_grad_(n not in frozen)
        scores = removal_scores(Connectome(model), train, estimator, batches=None)
        assert not bool((scores["0.weight"] == 0).all())
        assert all(torch.equal(scores[n], ref_scores[n]) for n in ref_scores)
        curve = knowledge_distribution(model, train, order_loader=train, order_batches=None, estimator=estimator,
                                       counts=[0, 20, 60])
        assert torch.equal(curve.meta["order"], ref.meta["order"]) and curve.table == ref.table
        assert {n for n, p in model.named_parameters() if not p.requires_grad} == set(frozen)


def test_fine_tune_trains_only_what_the_caller_left_trainable():
    model, train = _trained_mlp()
    model[0].weight.requires_grad_(False)
    curve = knowledge_distribution(model, train, order_loader=train, counts=[0, 20, 60], finetune_batches=2, lr=0.1)
    work, conn = curve.meta["model"], curve.meta["connectome"]
    assert torch.equal(work[0].weight, model[0].weight * conn.masks["0.weight"])  # frozen: only its removals
    assert not torch.equal(work[2].bias, model[2].bias)  # the trainable parameters were fine-tuned
    assert not model[0].weight.requires_grad and model[2].weight.requires_grad


def test_fine_tune_with_every_parameter_frozen_warns_and_is_one_shot():
    """With every parameter frozen the fine-tune's backward raised 'element 0 of tensors does not
    require grad'."""
    model, train = _trained_mlp()
    one_shot = knowledge_distribution(model, train, order_loader=train, counts=[0, 20, 60])
    for p in model.parameters():
        p.requires_grad_(False)
    with pytest.warns(UserWarning, match="nothing to train; the curve is one shot"):
        curve = knowledge_distribution(model, train, order_loader=train, counts=[0, 20, 60], finetune_batches=2)
    assert curve.finetune_batches == 0 and curve.table == one_shot.table


@pytest.mark.parametrize("mode", [torch.no_grad, torch.inference_mode])
def test_called_under_no_grad_or_inference_mode_it_still_measures(mode):
    model, train = _trained_mlp()
    ref = knowledge_distribution(model, train, order_loader=train, order_batches=None, estimator="taylor",
                                 counts=[0, 20], finetune_batches=1)
    with mode():
        curve = knowledge_distribution(model, train, order_loader=train, order_batches=None, estimator="taylor",
                                       counts=[0, 20], finetune_batches=1)
    assert torch.equal(curve.meta["order"], ref.meta["order"]) and curve.table == ref.table


def test_evaluate_refuses_empty_data_and_takes_batches_with_an_index():
    """evaluate([]) raised ZeroDivisionError; a loader of (x, y, index) batches, which the fine-tune
    loader of knowledge_distribution takes, raised 'too many values to unpack'."""
    from adaptive.diagnostics import evaluate

    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    with pytest.raises(ValueError, match="no examples"):
        evaluate(model, [])
    x, y = torch.randn(4, 3), torch.tensor([0, 1, 1, 0])
    assert evaluate(model, [(x, y, torch.arange(4))]) == evaluate(model, [(x, y)])


def test_a_steep_fit_drawn_out_to_the_last_count_does_not_break_the_figure(tmp_path):
    """A fit over the first few removals (e-fold every 4 weights) drawn out to the last count of
    100,000 overflowed float64 to inf: matplotlib's log ticks raised OverflowError and the figure
    (a pretrained ResNet-20 in obd order) was lost. The measured points now set the y range."""
    from adaptive.diagnostics import Table
    from adaptive.diagnostics.knowledge import KnowledgeCurve

    k = [0, 1, 2, 4, 8, 16, 100000]
    li = [0, 0.01, 0.03, 0.2, 3.0, 5.0, 6.0]
    acc = [0.8, 0.79, 0.77, 0.7, 0.6, 0.1, 0.1]
    rows = [dict(removed=a, fraction=a / k[-1], accuracy=c, loss=1 + x, accuracy_drop=0.8 - c, loss_increase=x)
            for a, x, c in zip(k, li, acc)]
    fit = dict(rate=0.24, intercept=-3.0, r2=0.9, points=4, within_tolerance=1.0, fit_from=1.0, fit_to=8.0,
               holds_from=1.0, holds_to=8.0, floor=1e-3)
    curve = KnowledgeCurve(Table(rows), k[-1], "obd", 0, {"loss_increase": dict(fit), "accuracy_drop": dict(fit)}, 0.1)
    assert 0.24 * k[-1] > 710  # exp of it is inf in float64
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # matplotlib's 'overflow encountered in exp' on the line
        curve.plot(tmp_path / "k.png")
    assert (tmp_path / "k.png").exists()
    # ResNet-20, obd order, BatchNorm re-estimated: a fit over the first 1,265 of 268,336 removals drawn out to
    # the last reached inf, and matplotlib's log-axis transform warned 'overflow encountered in exp'
    k = [0, 1, 6, 36, 212, 1265, 7544, 44994, 89445, 178891, 268336]
    li = [0, 0.01149, 0.07194, 0.4439, 2.468, 6.756, 11.12, 4.714, 5.38, 4.293, 1.343]
    acc = [0.784, 0.77, 0.76, 0.712, 0.462, 0.248, 0.128, 0.104, 0.104, 0.104, 0.1]
    rows = [dict(removed=a, fraction=a / k[-1], accuracy=c, loss=1 + x, accuracy_drop=0.784 - c, loss_increase=x)
            for a, x, c in zip(k, li, acc)]
    fit = dict(rate=0.0034684, intercept=-2.0738, r2=0.53, points=5, within_tolerance=0.4, fit_from=1.0,
               fit_to=1265.0, holds_from=1.0, holds_to=1265.0, floor=1e-3)
    real = KnowledgeCurve(Table(rows), k[-1], "obd", 1, {"loss_increase": fit,
                                                         "accuracy_drop": dict(fit, rate=0.0022081, intercept=-4.2)}, 0.1)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        real.plot(tmp_path / "r.png")


def test_a_curve_that_never_rises_draws_without_a_legend_warning(tmp_path):
    """Removing weights of an untrained net can only lower its loss: no point above 0 and no fit,
    and the empty legend made matplotlib warn 'No artists with labels found to put in legend'."""
    import warnings

    from adaptive.diagnostics import Table
    from adaptive.diagnostics.knowledge import KnowledgeCurve, fit_curve

    rows = [dict(removed=a, fraction=a / 8, accuracy=0.5, loss=1 - 0.01 * a, accuracy_drop=0.0, loss_increase=-0.01 * a)
            for a in (0, 1, 2, 4, 8)]
    fits = fit_curve(Table(rows), 0.5, 100)
    assert all(f["points"] == 0 and f["fit_from"] is None for f in fits.values())  # no fit to draw
    curve = KnowledgeCurve(Table(rows), 8, "magnitude", 0, fits, 0.5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        written = curve.plot(tmp_path / "k.png")
    assert [Path(p) for p in written] == [tmp_path / "k.png"] and (tmp_path / "k.png").stat().st_size > 0


def _bn_net():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(8, 4))
    train = [(torch.randn(16, 3, 8, 8), torch.randint(0, 4, (16,))) for _ in range(3)]
    with torch.no_grad():  # running statistics of its own
        model.train()
        for x, _ in train:
            model(x)
        model.eval()
    return model, train


def test_batchnorm_statistics_are_named_in_the_note_or_re_estimated_at_every_point():
    """Removal left BatchNorm with the intact network's running statistics, which a pretrained
    ResNet-20 with 17% removed turned into 3e5 nats of 'loss increase' (4.9 re-estimated), and the
    curve said nothing of it."""
    model, train = _bn_net()
    kept = knowledge_distribution(model, train, counts=[0, 100])
    assert "intact network's running statistics" in kept.note and "bn_batches" in kept.note
    curve = knowledge_distribution(model, train, counts=[0, 100], bn_batches=2, finetune_loader=train)
    assert "re-estimated at every point on 2 TRAIN batches" in curve.note
    work = curve.meta["model"]  # left at the last point: the statistics of the pruned net over the 2 batches
    with torch.no_grad():
        h = [work[0](x) for x, _ in train[:2]]
    bn = work[1]  # the mean of the two batches' statistics
    assert torch.allclose(bn.running_mean, sum(t.mean((0, 2, 3)) for t in h) / 2, atol=1e-5)
    assert torch.allclose(bn.running_var, sum(t.var((0, 2, 3)) for t in h) / 2, rtol=1e-4)
    assert bn.momentum == 0.1 and torch.equal(model[1].running_mean, _bn_net()[0][1].running_mean)
    with pytest.raises(ValueError, match="bn_batches"):
        knowledge_distribution(model, train, counts=[0, 100], bn_batches=-1)

    class Untouchable:  # refused before any batch is read (the order's gradients, the evaluation data)
        def __iter__(self):
            raise AssertionError("read before bn_batches was checked")

    with pytest.raises(ValueError, match="bn_batches must be a whole number"):
        knowledge_distribution(model, Untouchable(), order_loader=Untouchable(), estimator="taylor", bn_batches=1.5)


def test_an_overshooting_fine_tune_is_named_not_printed_as_lost_knowledge():
    model, train = _trained_mlp()
    with pytest.warns(UserWarning, match="overshooting step, not lost knowledge: use a lower lr"):
        curve = knowledge_distribution(model, train, order_loader=train, counts=[0, 20, 60], finetune_batches=1, lr=1e4)
    assert curve.meta["finetune_overshot"] == [20, 60] and "overshooting" in curve.note
    calm = knowledge_distribution(model, train, order_loader=train, counts=[0, 20, 60], finetune_batches=1, lr=1e-3)
    assert calm.meta["finetune_overshot"] == [] and "overshooting" not in calm.note


def test_a_negative_loss_that_falls_is_no_overshoot_and_instance_norm_is_left_as_it_is():
    """'after > 2 * before' flagged every improving step of a negative loss (cross-entropy - 5) as an
    overshoot; and InstanceNorm's tracked statistics, picked as BatchNorm's, were reset and never
    re-estimated (its forward reads a momentum of None as 0), while the note said re-estimated."""
    model, train = _trained_mlp()
    shifted = knowledge_distribution(model, train, order_loader=train, counts=[0, 20, 60], finetune_batches=1, lr=1e-3,
                                     loss_fn=lambda out, y: F.cross_entropy(out, y) - 5)
    assert shifted.meta["finetune_overshot"] == [] and "overshooting" not in shifted.note
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.InstanceNorm2d(4, affine=True, track_running_stats=True), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
    data = [(torch.randn(8, 3, 6, 6) * 3 + 1, torch.randint(0, 2, (8,))) for _ in range(2)]
    with torch.no_grad():
        net.train()
        for x, _ in data:
            net(x)
        net.eval()
    held = net[1].running_mean.clone()
    assert held.abs().max() > 0.05
    curve = knowledge_distribution(net, data, counts=[0, 10], bn_batches=2, finetune_loader=data)
    assert torch.equal(curve.meta["model"][1].running_mean, held)  # not wiped to 0


def test_an_order_read_from_a_single_batch_of_several_asked_says_so():
    """A held-out part no larger than one batch (100 images, batches of 250) gave the order one batch of
    the two asked, unsaid: the curvature estimators then read that batch's squared gradient alone."""
    from adaptive.connectome import Connectome
    from adaptive.diagnostics import removal_scores

    model, train = _trained_mlp()
    with pytest.warns(UserWarning, match=r"the obd removal order read a single batch of the 2 asked.*squared gradient"):
        removal_scores(Connectome(model), train[:1], "obd", batches=2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        removal_scores(Connectome(model), train[:2], "obd", batches=2)  # as many as asked
        removal_scores(Connectome(model), train[:2], "obd", batches=None)  # one pass of several
        removal_scores(Connectome(model), train[:1], "obd", batches=1)  # one, as asked
        removal_scores(Connectome(model), train[:1], "magnitude", batches=2)  # no gradients read


def _kept_figures(monkeypatch):
    """Make the knowledge module keep its figures instead of writing them."""
    from adaptive.diagnostics import knowledge as knowledge_module

    figs = []
    monkeypatch.setattr(knowledge_module, "save_figure", lambda fig, path, svg=False: figs.append(fig) or [str(path)])
    return figs


def test_log_x_draws_the_fit_panels_on_a_log_axis_leaving_out_the_intact_net(monkeypatch):
    """The loss-increase and accuracy-drop panels had a linear x axis only, which crowds the first removals
    into the left edge. log_x draws them on a log axis; 0 removed (0 there by definition) is left out, said."""
    figs = _kept_figures(monkeypatch)
    model, data = constructed()
    curve = knowledge_distribution(model, data, counts=range(9), estimator="magnitude", noise_floor=1e-6)
    assert curve.fits["loss_increase"]["fit_from"] is not None  # a fit line is drawn
    curve.plot("linear.png")
    curve.plot("log.png", log_x=True)
    linear, log = figs
    for i in (2, 3):  # the two lower panels
        assert linear.axes[i].get_xscale() == "linear"
        ax = log.axes[i]
        assert ax.get_xscale() == "log" and ax.get_xlim()[0] > 0
        assert "0 removed, the intact net, left out" in ax.get_xlabel()
        drawn = [x for line in ax.get_lines() for x in line.get_xdata()]
        assert drawn and min(drawn) >= 1  # the fit line too: nothing at 0, which a log axis cannot place
    assert [log.axes[i].get_xscale() for i in (0, 1)] == ["linear", "log"]  # the top row as before


def test_an_order_read_from_fewer_batches_than_asked_says_how_many():
    """Several batches but fewer than asked (a held-out part of 2 batches, order_batches 20) went unsaid:
    the order's statistics rested on 2, and nothing told the reader who asked for 20."""
    from adaptive.connectome import Connectome
    from adaptive.diagnostics import removal_scores

    model, train = _trained_mlp()
    with pytest.warns(UserWarning, match=r"the taylor removal order read 2 batches of the 20 asked: .*rest on 2 "
                                         r"batches; .*--order_batches"):
        removal_scores(Connectome(model), train[:2], "taylor", batches=20)


def test_points_help_says_what_is_measured():
    import argparse

    from _scripts import load_script
    from adaptive.diagnostics.knowledge import default_counts

    parser = load_script("recipes/diagnostics.py", "diagnostics_points_help").build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices["knowledge"]
    text = " ".join(sub.format_help().split())
    assert ("N counts spaced logarithmically from 1 to --max_fraction of the prunable weights and at max(2, N // 2) "
            "counts spaced evenly") in text and "at most 1 + N + max(2, N // 2) points" in text
    # what the help says is what default_counts measures: 0, the log-spaced and the evenly spaced counts
    for total, n in ((268_336, 40), (1_000, 7), (10, 1)):
        counts = default_counts(total, n)
        geo = set(torch.logspace(0, math.log10(total), n, dtype=torch.float64).round().long().tolist())
        lin = set(torch.linspace(0, total, max(2, n // 2), dtype=torch.float64).round().long().tolist())
        assert set(counts) == {0} | geo | lin and len(counts) <= 1 + n + max(2, n // 2)


@pytest.mark.parametrize("kw", [dict(finetune_batches=1), dict(bn_batches=1)])
def test_batchnorm_fine_tune_or_re_estimate_on_one_sample_batches_names_the_fix(kw):
    """The fine-tune and the BatchNorm re-estimate run in train mode: a one-sample batch of a
    BatchNorm1d failed with PyTorch's bare 'Expected more than 1 value per channel when training'."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3), nn.ReLU(), nn.Linear(3, 2)).eval()
    test = [(torch.randn(8, 4), torch.randint(0, 2, (8,)))]
    one = [(torch.randn(1, 4), torch.randint(0, 2, (1,)))]
    with pytest.raises(ValueError, match=r"knowledge_distribution's .*batch of one sample.*finetune_loader .*at least 2"):
        knowledge_distribution(net, test, counts=[0, 3], finetune_loader=one, **kw)


def test_a_curve_of_the_intact_net_alone_draws_without_a_warning(tmp_path):
    """counts=[0] (nothing removed) set the linear axes' limits to (0, 0): matplotlib warned
    'Attempting to set identical low and high xlims'."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 2))
    curve = knowledge_distribution(net, [(torch.randn(8, 4), torch.randint(0, 2, (8,)))], counts=[0])
    assert curve.table["removed"] == [0]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        curve.plot(tmp_path / "k.png")


def test_every_attached_connectome_counts_as_pruned():
    """Two connectomes over disjoint layers, each attached to its own optimizer: the pruned weights of
    both are carried into the curve (not only those of the first one found), so ``total`` is the live
    count and removing every live weight leaves the second layer's pruned ones pruned too."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.ReLU(), torch.nn.Linear(6, 3))
    data = [(torch.randn(8, 4), torch.randint(0, 3, (8,)))]
    first, second = Connectome(model, include=["0"]), Connectome(model, include=["2"])
    first.set_masks({"0.weight": torch.rand(6, 4) < 0.5})
    second.set_masks({"2.weight": torch.rand(3, 6) < 0.5})
    for c in (first, second):
        c.attach(torch.optim.SGD(c.params.values(), lr=0.1))
    pruned = first.num_synapses() - first.num_live() + second.num_synapses() - second.num_live()
    curve = knowledge_distribution(model, data, counts=[0, 1])
    assert curve.pruned_before == pruned and curve.total == 42 - pruned


def _curve_of(loss_increase):
    """A KnowledgeCurve of the given loss increases at 0, 1, 2, ... removed, fitted as knowledge_distribution fits."""
    from adaptive.diagnostics import KnowledgeCurve
    from adaptive.diagnostics.knowledge import fit_curve
    from adaptive.diagnostics.table import Table

    n = len(loss_increase)
    table = Table([{"removed": k, "fraction": k / (n - 1), "loss": 1.0 + li, "loss_increase": li}
                   for k, li in enumerate(loss_increase)])
    return KnowledgeCurve(table, n - 1, "magnitude", 0, fit_curve(table, None, 100, 1e-3), None)


def _holds_markers(fig):
    ax = fig.axes[2]  # the loss-increase panel
    dashed = sorted(float(line.get_xdata()[0]) for line in ax.get_lines() if line.get_linestyle() == "--"
                    and len(line.get_xdata()))
    labels = ax.get_legend_handles_labels()[1]
    return dashed, labels


def test_the_holds_marker_is_drawn_only_where_the_line_holds_beyond_the_fitted_range(monkeypatch):
    """The figure drew a dashed line labelled 'line stays within x2 up to here' at both edges of the fitted range
    even where the fit held nowhere beyond it (holds_from/holds_to equal to the fit's edges) and most fitted points lay
    far off the line (a ResNet-20 obd curve, 40% within x2): a claim about the edges the data do not make."""
    figs = _kept_figures(monkeypatch)
    scattered = _curve_of([0, 0.01, 1.0, 0.02, 2.0, 0.05, 5.0])  # the fit holds poorly, nowhere past its range
    f = scattered.fits["loss_increase"]
    assert (f["holds_from"], f["holds_to"]) == (f["fit_from"], f["fit_to"]) and f["within_tolerance"] < 0.7
    scattered.plot("scattered.png")
    dashed, labels = _holds_markers(figs[-1])
    assert dashed == [] and not any("up to here" in label for label in labels)
    # an exponential whose first points lie below the noise floor, on the line: it holds beyond the fitted range there
    steady = _curve_of([0, 0.0005, 0.001, 0.002, 0.004, 0.008, 0.016])
    f = steady.fits["loss_increase"]
    assert (f["holds_from"], f["fit_from"], f["holds_to"], f["fit_to"]) == (1.0, 3.0, 6.0, 6.0)
    steady.plot("steady.png")
    dashed, labels = _holds_markers(figs[-1])
    assert dashed == [1.0] and any("beyond the fitted range, to here" in label for label in labels)


def test_the_accuracy_fit_keeps_its_own_floor_whatever_the_loss_noise_floor():
    """The accuracy fit's floor was max(noise_floor, 1.5 / samples): a loss floor in nats read as a fraction of the
    examples, so --noise_floor 0.05 (a noisy loss) left every accuracy drop under 5 points out of the accuracy fit,
    here all but two of them (no fit). Its floor is 1.5 examples' worth whatever the loss's."""
    from adaptive.diagnostics.knowledge import fit_curve
    from adaptive.diagnostics.table import Table

    drops = [0, 0.0005, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128]  # doubling, 2,000 examples counted
    rows = [{"removed": k, "fraction": k / 8, "accuracy": 0.8 - d, "loss": 1.0 + 2 * d, "accuracy_drop": d,
             "loss_increase": 2 * d} for k, d in enumerate(drops)]
    for floor in (1e-3, 0.05):
        acc = fit_curve(Table(rows), 0.1, 2000, noise_floor=floor)["accuracy_drop"]
        assert acc["floor"] == 1.5 / 2000 and acc["points"] == 7 and (acc["fit_from"], acc["fit_to"]) == (2.0, 8.0)
        assert abs(acc["rate"] - math.log(2)) < 1e-9
    loss = fit_curve(Table(rows), 0.1, 2000, noise_floor=0.05)["loss_increase"]
    assert loss["floor"] == 0.05 and loss["points"] == 3  # the loss fit's floor is the noise floor


def test_the_fit_panels_legends_hide_no_measured_point_of_the_resnet20_curve(monkeypatch):
    """The holds marker's legend entry grew to 'beyond the fitted range, the line stays within x2 of the points up to
    here': the legend of the accuracy-drop panel of docs/figures/knowledge_resnet20.png no longer fitted in a free
    corner and was drawn over two measured points (0.2 and 0.1 points at 42,369 and 84,738 removed). Drawn from the
    curve the docs quote (recipes/benchmarks/results/knowledge_resnet20.md), no measured point lies under a legend."""
    import os

    from adaptive.diagnostics import KnowledgeCurve
    from adaptive.diagnostics.knowledge import fit_curve
    from adaptive.diagnostics.table import Table

    path = os.path.join(os.path.dirname(__file__), "..", "recipes", "benchmarks", "results", "knowledge_resnet20.md")
    with open(path) as f:
        lines = f.read().split("## Accuracy of what remains")[1].split("## ")[0].strip().splitlines()
    keys = [k.strip() for k in lines[0].strip("|").split("|")]
    rows = [dict(zip(keys, (float(v) for v in line.strip("|").split("|")))) for line in lines[2:]]
    # the file shows accuracy in percent and its drop in points (KnowledgeCurve.shown_table); the curve holds fractions
    fractions = {"accuracy (%)": "accuracy", "accuracy drop (points)": "accuracy_drop"}
    assert set(fractions) <= set(keys), keys
    table = Table([{fractions.get(k, k): v / 100 if k in fractions else v for k, v in r.items()}
                   | {"removed": int(r["removed"])} for r in rows])
    note = ("order from weights only; accuracy on 2000 cifar10 TEST images; BatchNorm evaluated with the intact "
            "network's running statistics, not re-estimated after removal: far along the curve the loss measures their "
            "mismatch as much as lost knowledge (bn_batches re-estimates them)")
    curve = KnowledgeCurve(table, 268336, "magnitude", 0, fit_curve(table, 0.1, 2000), 0.1, note)
    figs = _kept_figures(monkeypatch)
    curve.plot("knowledge_resnet20.png", title="knowledge distribution of resnet20 (resnet20-12fca82f.th) on cifar10")
    fig = figs[-1]
    fig.canvas.draw()
    for ax in fig.axes[2:4]:  # the loss-increase and accuracy-drop panels
        box = ax.get_legend().get_window_extent()
        points = next(line for line in ax.get_lines() if line.get_label().startswith("measured (> 0"))
        shown = ax.transData.transform(points.get_xydata())
        assert not any(box.contains(x, y) for x, y in shown), ax.get_ylabel()


@pytest.mark.parametrize("batches, words", [(0, "one shot"), (1, "1 fine-tune batch per point"),
                                            (2, "2 fine-tune batches per point")])
def test_the_figure_title_counts_fine_tune_batches_in_words(tmp_path, monkeypatch, batches, words):
    """The title read '1 fine-tune batches per point' for a single batch."""
    import adaptive.diagnostics.knowledge as knowledge

    model, data = constructed()
    curve = knowledge_distribution(model, data, order_loader=data, counts=[0, 2, 4], finetune_batches=batches,
                                   lr=1e-3)
    titles = []
    monkeypatch.setattr(knowledge, "save_figure", lambda fig, path, svg=False: titles.append(fig._suptitle.get_text()))
    curve.plot(tmp_path / "k.png")
    assert words in titles[0] and "1 fine-tune batches" not in titles[0]


def test_a_curve_of_some_layers_says_the_counts_are_of_those(tmp_path, monkeypatch):
    # found: with include= choosing one layer, fraction 1 (every weight of that layer) read as "% of prunable
    # weights" on the figure and nothing in the note said the other layers were left out of the count
    import json

    import adaptive.diagnostics.knowledge as K
    from adaptive.diagnostics import KnowledgeCurve

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
    data = [(torch.randn(10, 6), torch.randint(0, 3, (10,))) for _ in range(2)]
    curve = knowledge_distribution(net, data, include=["2"], counts=[0, 6, 24])
    assert curve.total == 24 and curve.table["fraction"] == [0.0, 0.25, 1.0]
    assert ("; only 24 of the model's 72 prunable weights measured (include/exclude): removed and fractions are of "
            "those") in curve.note
    curve.save(str(tmp_path))
    assert json.loads((tmp_path / "knowledge_summary.json").read_text())["measured_of"] == 72
    labels = []
    monkeypatch.setattr(K, "save_figure", lambda fig, path, svg=False: labels.extend(
        c.get_xlabel() for ax in fig.axes for c in ax.child_axes) or [str(path)])
    KnowledgeCurve.load(str(tmp_path)).plot(tmp_path / "k.png")
    assert labels and all(lab == "% of the 24 prunable weights measured (of the model's 72 prunable weights)"
                          for lab in labels)
    whole = knowledge_distribution(net, data, counts=[0, 6])  # every layer: nothing to say
    assert "include/exclude" not in whole.note and whole.measured_of == 72


def test_a_gradient_order_says_which_layers_no_gradient_reached():
    # found: a prunable head the forward never uses was scored on no gradient (its weights then counted among the
    # removed, at no cost) with no word; collinearity and gradient_by_depth name such a layer
    class Unused(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.head, self.aux = nn.Linear(4, 6), nn.Linear(6, 3), nn.Linear(6, 2)

        def forward(self, x):
            return self.head(torch.relu(self.a(x)))

    torch.manual_seed(0)
    data = [(torch.randn(8, 4), torch.randint(0, 3, (8,))) for _ in range(3)]
    order = [(torch.randn(8, 4), torch.randint(0, 3, (8,))) for _ in range(3)]  # held out: other data
    with pytest.warns(UserWarning, match=r"the taylor removal order: no gradient reached aux.weight in any batch "
                                         r"\(12 weights: the forward does not use them"):
        knowledge_distribution(Unused(), data, order_loader=order, order_batches=3, estimator="taylor", counts=[0, 12])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # every layer reached: nothing to say
        knowledge_distribution(Unused(), data, order_loader=order, order_batches=3, estimator="taylor", counts=[0, 12],
                               exclude=["aux"])


def test_order_or_finetune_data_that_is_the_evaluation_data_is_warned_of():
    """order_loader=eval_loader was taken without a word: the order was chosen on the data it was scored
    on, and the curve showed removal improving the loss (in-sample). A loader over all of the same
    dataset is the same data; one over another part of it (a sampler of its own) is not."""
    from torch.utils.data import DataLoader, Subset, TensorDataset

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3))
    ds = TensorDataset(torch.randn(48, 4), torch.randint(0, 3, (48,)))
    test = DataLoader(ds, batch_size=8)
    same = r"knowledge_distribution: {} reads the same data as eval_loader, so the curve is measured on the data"
    for kw, option in ((dict(order_loader=test), "order_loader"),
                       (dict(order_loader=DataLoader(ds, batch_size=16, shuffle=True)), "order_loader"),
                       (dict(order_loader=DataLoader(Subset(ds, range(24)), batch_size=8),
                             finetune_loader=test, finetune_batches=1), "finetune_loader")):
        with pytest.warns(UserWarning, match=same.format(option)):
            knowledge_distribution(net, test, estimator="taylor", counts=[0, 20], order_batches=2, **kw)
    part = torch.utils.data.SubsetRandomSampler
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # other data (of one dataset too, each part by its sampler): nothing to say
        for order, evaluation in ((DataLoader(Subset(ds, range(24)), batch_size=8), DataLoader(Subset(ds, range(24, 48)))),
                                  (DataLoader(ds, batch_size=8, sampler=part(range(24))),
                                   DataLoader(ds, batch_size=8, sampler=part(range(24, 48))))):
            knowledge_distribution(net, evaluation, order_loader=order, estimator="taylor", counts=[0, 20],
                                   order_batches=2, finetune_batches=1)


def test_a_knowledge_run_of_a_model_named_infinity_loads_its_name(tmp_path):
    """KnowledgeCurve.load read a model registered as "Infinity" (the registry takes the name) back as the
    float inf, and an estimator named "NaN" as a float NaN: names are text fields (adaptive.jsonio.TEXT_FIELDS)."""
    from adaptive.diagnostics.knowledge import KnowledgeCurve

    model, data = constructed()
    curve = knowledge_distribution(model, data, counts=[0, 1, 2, 3], estimator="magnitude")
    curve.estimator = "NaN"
    curve.meta.update(model="Infinity", dataset="-Infinity")
    curve.save(tmp_path)
    back = KnowledgeCurve.load(str(tmp_path))
    assert (back.meta["model"], back.meta["dataset"], back.estimator) == ("Infinity", "-Infinity", "NaN")


_REMOVED = [0, 1, 2, 4, 8]  # (synapses removed at each point of the curves below, of 8)


def _kept_curve_figure(rows, tmp_path, monkeypatch):
    """The figure of a magnitude-order knowledge curve over 8 synapses with ``rows``, drawn and kept open."""
    import matplotlib.pyplot as plt

    from adaptive.diagnostics import Table
    from adaptive.diagnostics.knowledge import KnowledgeCurve

    figs = []
    monkeypatch.setattr(plt, "close", lambda fig=None: figs.append(fig))
    KnowledgeCurve(Table(rows), 8, "magnitude", 0, {}, 0.1).plot(tmp_path / "k.png")
    return figs[0]


def test_the_log_panels_count_the_points_at_or_below_0_they_leave_out(tmp_path, monkeypatch):
    """The loss-increase and accuracy-drop panels are log axes: a removal that left the accuracy as it was (or raised
    it) has no place there, and the panel dropped it without a word; the legend now counts them (the 0-removed
    point, 0 by definition, is not counted)."""
    import matplotlib.pyplot as plt

    rows = [dict(removed=a, fraction=a / 8, accuracy=c, loss=1 + x, accuracy_drop=0.8 - c, loss_increase=x)
            for a, x, c in zip(_REMOVED, [0, 0.01, 0.02, 0.1, 1.0], [0.8, 0.8, 0.81, 0.7, 0.4])]
    fig = _kept_curve_figure(rows, tmp_path, monkeypatch)
    try:
        loss, drop = fig.axes[2], fig.axes[3]
        assert [t.get_text() for t in loss.get_legend().get_texts()] == ["measured (> 0)"]
        assert [t.get_text() for t in drop.get_legend().get_texts()] == ["measured (> 0; 2 of 4 at or below 0 not drawn)"]
    finally:
        plt.close(fig)


def test_a_log_panel_with_every_point_at_or_below_0_says_so(tmp_path, monkeypatch):
    """Pruning that never lowered the accuracy: every accuracy drop is 0, the log panel has no point to draw and no
    legend to count them in, and it stood blank without a word. It now says how many were left out; a NaN (not
    measured) is not counted as one at or below 0."""
    import matplotlib.pyplot as plt

    rows = [dict(removed=a, fraction=a / 8, accuracy=0.8, loss=1 + x, accuracy_drop=c, loss_increase=x)
            for a, x, c in zip(_REMOVED, [0, 0.01, 0.02, 0.1, 1.0], [0, 0, -0.01, 0, float("nan")])]
    fig = _kept_curve_figure(rows, tmp_path, monkeypatch)
    try:
        drop = fig.axes[3]
        assert not drop.get_lines() and drop.get_legend() is None
        said = [t.get_text() for t in drop.texts]
        assert said == ["3 of 4 measured (accuracy drop past 0 removed) at or below 0:\nnone has a place on a log axis"]
    finally:
        plt.close(fig)


def test_a_fraction_under_one_weight_is_refused_before_the_order_reads_data_and_a_short_eval_warned():
    """max_fraction=1e-9 removed one weight all the same (past the fraction asked) and drew a two-point
    curve; eval_batches beyond the loader's batches was cut in silence, where order_batches warns."""
    model, data = constructed()

    class Unread:
        def __iter__(self):
            raise AssertionError("the order read its data")

    with pytest.raises(ValueError, match=r"max_fraction=1e-09 of the 8 prunable weights is under one weight, so the "
                                         r"curve would remove none: give at least 0\.125"):
        knowledge_distribution(model, data, max_fraction=1e-9, estimator="taylor", order_loader=Unread())
    assert knowledge_distribution(model, data, points=1, max_fraction=0.07).table["removed"] == [0, 1]  # 0.56: one
    with pytest.warns(UserWarning, match=r"evaluation data: asked for 5 batches but the loader ran out after 1"):
        knowledge_distribution(model, data, counts=[2], estimator="magnitude", eval_batches=5)


def test_the_fit_tables_e_fold_fraction_is_its_e_fold_in_weights_over_the_total():
    """A rate of 1e-3 per weight removed is an e-fold every 1,000 weights, a tenth of 10,000 (the fraction was once
    1 / rate, 1000, unnoticed)."""
    from adaptive.diagnostics.knowledge import KnowledgeCurve
    from adaptive.diagnostics.table import Table

    fit = dict(rate=1e-3, r2=1.0, points=5, fit_from=1, fit_to=5, holds_from=1, holds_to=5, floor=1e-3)
    curve = KnowledgeCurve(table=Table([{"removed": 0, "fraction": 0.0, "loss": 1.0, "loss_increase": 0.0}]),
                           total=10000, estimator="magnitude", finetune_batches=0, fits={"loss_increase": fit},
                           chance=None)
    row = curve.fit_table()
    assert row["e_fold_weights"] == [pytest.approx(1000.0)] and row["e_fold_fraction"] == [pytest.approx(0.1)]
