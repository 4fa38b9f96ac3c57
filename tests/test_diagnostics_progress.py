"""progress: reads events/metrics tolerantly, derives removed counts, draws its figure."""
import json

import pytest

from adaptive.diagnostics import progress
from _figures import close_kept_figures


def write_run(d, metrics_header="step,split,loss,accuracy", with_removed=False):
    events = [
        {"step": 10, "pruned": 100, "grown": 0, "density": 0.9, "layer_density": {"a": 0.8, "b": 1.0},
         "boundaries": {"prune": 1e-4, "grow": 1e-2}, "est_loss_change": 0.01, "actual_loss_change": 0.02},
        {"step": 20, "pruned": 50, "grown": 30, "density": 0.88, "boundaries": None},  # optional keys missing
        {"step": 30, "pruned": 10},
    ]
    lines = [json.dumps(e) for e in events]
    lines.append("{not json")  # a torn last line is skipped
    (d / "events.jsonl").write_text("\n".join(lines) + "\n\n")
    rows = [metrics_header + (",removed" if with_removed else "")]
    for step, split, loss, acc, rem in [(0, "train", 2.3, 0.1, 0), (15, "train", 1.0, 0.7, 5), (15, "holdout", 1.1, "", 5),
                                        (25, "holdout", 0.9, 0.75, 7), (35, "train", 0.8, 0.8, 9)]:
        rows.append(f"{step},{split},{loss},{acc}" + (f",{rem}" if with_removed else ""))
    (d / "metrics.csv").write_text("\n".join(rows) + "\n")


def test_removed_comes_from_events_when_metrics_lack_it(tmp_path):
    write_run(tmp_path)
    p = progress(str(tmp_path))
    assert p.removed_source == "events" and len(p.events) == 3
    assert p.events["removed"] == [100, 120, 130]
    assert p.metrics["removed"] == [0, 100, 100, 120, 130]
    assert p.metrics["accuracy"][2] is None and p.metrics["loss"][0] == 2.3
    paths = p.plot(tmp_path / "out" / "progress.png")
    assert (tmp_path / "out" / "progress.png").exists() and paths == [str(tmp_path / "out" / "progress.png")]


def test_a_train_row_at_an_update_step_gets_the_count_before_the_update(tmp_path):
    """A train row of step 10 averages batches run before step 10's update (made after its optimizer
    step); a held-out row of step 10 was evaluated after it. Both were given the count after it."""
    (tmp_path / "events.jsonl").write_text(json.dumps({"step": 10, "pruned": 100, "grown": 0}) + "\n")
    rows = ["step,split,loss,accuracy", "10,train,2.0,0.3", "10,holdout,2.2,0.2", "11,train,2.1,0.2"]
    (tmp_path / "metrics.csv").write_text("\n".join(rows) + "\n")
    p = progress(str(tmp_path))
    assert p.removed_source == "events" and p.metrics["removed"] == [0, 100, 100]


def test_removed_column_and_density_axis(tmp_path):
    write_run(tmp_path, with_removed=True)
    p = progress(str(tmp_path), total_synapses=1000)
    assert p.removed_source == "metrics" and p.metrics["removed"] == [0, 5, 5, 7, 9]
    assert p.events["removed"][:2] == [100, 120]  # from density when the total is known


def test_missing_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="none of events.jsonl, metrics.csv, history.jsonl"):
        progress(str(tmp_path))
    (tmp_path / "events.jsonl").write_text(json.dumps({"step": 1}) + "\n")
    p = progress(str(tmp_path))
    assert p.removed_source == "step" and p.metrics == []


def test_a_prune_pretrained_run_is_read_from_its_history(tmp_path):
    """prune_pretrained writes history.jsonl, not metrics.csv: its train windows (at the count they
    ran with) and held-out evaluations become the metric rows."""
    hist = [{"kind": "update", "step": 1, "removed": 40, "train_removed": 0, "train_loss": 0.9, "train_acc": 0.7},
            {"kind": "update", "step": 2, "removed": 40, "train_removed": 40, "train_loss": 0.5, "train_acc": 0.8},
            {"kind": "eval", "step": 2, "removed": 40, "holdout_loss": 0.6, "holdout_acc": 0.75},
            {"kind": "resume", "step": 2}]
    (tmp_path / "history.jsonl").write_text("\n".join(json.dumps(h) for h in hist) + "\n")
    (tmp_path / "events.jsonl").write_text(json.dumps({"step": 1, "pruned": 40, "grown": 0, "removed": 40}) + "\n")
    p = progress(str(tmp_path))
    assert p.removed_source == "metrics"
    assert p.metrics["split"] == ["train", "train", "holdout"] and p.metrics["removed"] == [0, 40, 40]
    assert p.metrics["loss"] == [0.9, 0.5, 0.6]
    p.plot(tmp_path / "progress.png")


def test_damaged_lines_are_skipped_with_a_warning_and_undecodable_metrics_name_the_file(tmp_path):
    """A byte flipped in a middle line of events.jsonl was skipped silently (a record left out of the
    figures unsaid); a damaged metrics.csv gave a bare 'utf-8 codec' error naming no file."""
    good = [json.dumps({"step": s, "pruned": 10}) for s in (10, 20, 30)]
    (tmp_path / "events.jsonl").write_bytes("\n".join(good).encode() + b"\n{\"step\": 4\xff0}\n" + good[0].encode()
                                            + b"\n{\"step\": 5")  # a damaged line 4, a torn last line 6
    with pytest.warns(UserWarning, match=r"events.jsonl: skipped 1 damaged line\(s\) \(line 4\)"):
        p = progress(str(tmp_path))
    assert len(p.events) == 4
    (tmp_path / "metrics.csv").write_bytes(b"step,split,loss,accuracy\n1,train,0.5,0.\xff9\n")
    with pytest.raises(ValueError, match=r"metrics.csv cannot be read .*damaged"), pytest.warns(UserWarning):
        progress(str(tmp_path))


_close_kept_figures = pytest.fixture(autouse=True)(close_kept_figures)


def _kept_figures(monkeypatch):
    import importlib

    mod = importlib.import_module("adaptive.diagnostics.progress")
    figs = []
    monkeypatch.setattr(mod, "save_figure", lambda fig, path, svg=False: figs.append(fig) or [str(path)])
    return figs


def test_non_finite_losses_are_left_out_and_the_panel_says_so(tmp_path, monkeypatch):
    """A NaN loss passed the isinstance check: an empty loss panel with a full legend and no note."""
    rows = ["step,split,loss,accuracy,removed"] + [f"{s},train,nan,0.1,800" for s in (10, 20, 30)]
    rows += ["30,holdout,nan,0.09,800", "40,holdout,0.5,0.2,900"]
    (tmp_path / "metrics.csv").write_text("\n".join(rows) + "\n")
    figs = _kept_figures(monkeypatch)
    progress(str(tmp_path)).plot(tmp_path / "progress.png")
    loss = figs[0].axes[0]
    assert [t.get_text() for t in loss.get_legend().get_texts()] == ["held-out (part of TRAIN)"]  # train has no finite point
    assert [list(line.get_ydata()) for line in loss.get_lines()] == [[0.5]]
    assert "loss not finite at 4 of 5 points (left out)" in loss.get_title()

    (tmp_path / "metrics.csv").write_text("\n".join(rows[:-1]) + "\n")  # nothing finite: said in the middle
    progress(str(tmp_path)).plot(tmp_path / "progress.png")
    loss = figs[1].axes[0]
    assert loss.get_legend() is None
    assert [t.get_text() for t in loss.texts] == ["loss not finite at 4 of 4 points (left out)"]


def test_a_run_with_no_update_draws_its_single_density_point(tmp_path, monkeypatch):
    ev = {"step": 0, "kind": "init", "pruned": 800, "grown": 0, "density": 0.2, "removed": 800,
          "layer_density": {"fc1.weight": 0.16, "fc2.weight": 0.47}}
    (tmp_path / "events.jsonl").write_text(json.dumps(ev) + "\n")
    figs = _kept_figures(monkeypatch)
    progress(str(tmp_path)).plot(tmp_path / "progress.png")
    lines = figs[0].axes[4].get_lines()
    assert [line.get_label() for line in lines] == ["all", "fc1.weight", "fc2.weight"]
    assert all(line.get_marker() not in (None, "", " ", "None") for line in lines)  # one point needs a marker


def _events(d, events):
    (d / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))


def test_estimates_without_a_measured_change_are_drawn_and_the_panel_says_why(tmp_path, monkeypatch):
    """A train run logs est_loss_change but no actual_loss_change (no held-out line search): the
    panel said "no loss-change estimates logged" with two estimates in the file."""
    _events(tmp_path, [{"step": 0, "kind": "init", "pruned": 800, "density": 0.2},
                       {"step": 10, "kind": "update", "pruned": 5, "grown": 5, "est_loss_change": 0.0117, "est_growth_gain": 117.4,
                        "actual_loss_change": None},
                       {"step": 20, "kind": "update", "pruned": 2, "grown": 2, "est_loss_change": 0.0051, "est_growth_gain": 51.2},
                       {"step": 30, "kind": "update", "pruned": 0, "grown": 0}])
    figs = _kept_figures(monkeypatch)
    progress(str(tmp_path)).plot(tmp_path / "progress.png")
    ax = figs[0].axes[5]
    text = ax.get_title() + " ".join(t.get_text() for t in ax.texts)
    assert "no loss-change estimates logged" not in text
    assert "2 estimate(s) logged; no measured loss change to compare (no held-out line search;\nrecipes/adaptive.py " \
           "--line_search N measures one)" in text
    assert [line.get_xydata().tolist() for line in ax.get_lines()] == [[[10, 0.0117], [20, 0.0051]]]


@pytest.mark.parametrize("measured", [False, True])
def test_estimates_logged_before_the_growth_gain_was_split_off_are_named(tmp_path, monkeypatch, measured):
    """An events.jsonl of an older run (or an older checkpoint resumed) has no est_growth_gain key: in
    train mode its est_loss_change of an update that grew subtracted the gain the grown synapses
    promise once trained (-117 against a measured +0.0002), yet the panel drew it beside the new,
    immediate figures with nothing to tell them apart."""
    actual = {"actual_loss_change": 0.0002} if measured else {}
    _events(tmp_path, [{"step": 10, "kind": "update", "pruned": 5, "grown": 5, "est_loss_change": -117.4, **actual},
                       {"step": 20, "kind": "update", "pruned": 3, "grown": 0, "est_loss_change": 0.02, **actual},
                       {"step": 30, "kind": "update", "pruned": 2, "grown": 2, "est_loss_change": 0.005,
                        "est_growth_gain": 51.2, **actual}])
    figs = _kept_figures(monkeypatch)
    progress(str(tmp_path)).plot(tmp_path / "progress.png")
    title = figs[0].axes[5].get_title()
    assert "\n1 estimate(s) of an older run (no est_growth_gain): in train mode such an estimate\n" in title
    assert "subtracts the gain that grown synapses promise once trained" in title


def test_estimates_in_the_estimators_own_units_are_named(tmp_path, monkeypatch):
    _events(tmp_path, [{"step": 2, "kind": "update", "pruned": 9, "est_score_change": 4108.5, "actual_loss_change": 0.11}])
    figs = _kept_figures(monkeypatch)
    progress(str(tmp_path)).plot(tmp_path / "progress.png")
    said = " ".join(t.get_text() for t in figs[0].axes[5].texts)
    assert "no loss-change estimates logged" in said
    assert "1 estimate(s) in the estimator's own units" in said and "1 measured loss change(s) logged" in said


def test_every_layer_gets_a_density_line_that_no_other_looks_like(tmp_path, monkeypatch):
    """Layers past the 20th were dropped silently, and every 10th line repeated colour and style; the
    legend sat inside the panel over the lines."""
    layers = {f"layer{i}.weight": 0.5 + i / 100 for i in range(33)}
    _events(tmp_path, [{"step": s, "kind": "update", "pruned": 1, "grown": 1, "density": 0.7, "layer_density": layers}
                       for s in (2, 4)])
    figs = _kept_figures(monkeypatch)
    progress(str(tmp_path)).plot(tmp_path / "progress.png")
    fig, ax = figs[0], figs[0].axes[4]
    lines = [line for line in ax.get_lines() if line.get_label() != "all"]
    assert [line.get_label() for line in lines] == list(layers)
    assert len({(line.get_color(), line.get_linestyle()) for line in lines}) == 33
    fig.canvas.draw()
    r = fig.canvas.get_renderer()
    assert not ax.get_legend().get_window_extent(r).overlaps(ax.get_window_extent(r))  # under the panel


def test_an_empty_update_panel_says_there_were_no_updates(tmp_path, monkeypatch):
    _events(tmp_path, [{"step": 0, "kind": "init", "pruned": 800, "grown": 0, "density": 0.2}])
    figs = _kept_figures(monkeypatch)
    progress(str(tmp_path)).plot(tmp_path / "progress.png")
    assert [t.get_text() for t in figs[0].axes[2].texts] == ["no controller updates (only the initial pruning)"]


def test_the_progress_command_names_the_runs_model_and_dataset(tmp_path, monkeypatch):
    from _scripts import load_script

    run = tmp_path / "run_a"
    run.mkdir()
    write_run(run)
    (run / "config.yaml").write_text("model: resnet32\ndataset: cifar10\n")
    figs = _kept_figures(monkeypatch)
    load_script("recipes/diagnostics.py", "diagnostics_recipe").main(["progress", str(run), "--output_dir", str(tmp_path / "out")])
    head = figs[0]._suptitle.get_text()
    assert "resnet32 on cifar10 (run run_a)" in head


def _drawn_progress(run, monkeypatch):
    """progress.png of the run folder ``run``, drawn (its figure kept open for the test to read)."""
    figs = _kept_figures(monkeypatch)
    progress(str(run)).plot(run / "progress.png")
    figs[0].canvas.draw()
    return figs[0]


def _shown_xticks(ax) -> list:
    """The x ticks of ``ax`` within its limits."""
    lo, hi = ax.get_xlim()
    return [t for t in ax.get_xticks() if lo <= t <= hi]


def test_no_legend_of_progress_png_lies_on_a_panel(tmp_path, monkeypatch):
    """A 2-step run has one held-out and one test point per panel: the legends inside the panels
    could hide them (as in loss_accuracy.png). Every legend now lies outside every panel."""
    (tmp_path / "metrics.csv").write_text("step,split,loss,accuracy,removed\n2,holdout,2.3043,0.0979,800\n"
                                          "2,test,2.3023,0.0975,800\n")
    _events(tmp_path, [{"step": 1, "kind": "update", "pruned": 5, "grown": 5, "density": 0.2,
                        "layer_density": {"a": 0.2}, "boundaries": {"prune": 0.1, "restore": 0.2}},
                       {"step": 2, "kind": "update", "pruned": 3, "grown": 3, "density": 0.2,
                        "layer_density": {"a": 0.2}, "boundaries": {"prune": 0.1, "restore": 0.2}}])
    fig = _drawn_progress(tmp_path, monkeypatch)
    r = fig.canvas.get_renderer()
    legends = [ax.get_legend() for ax in fig.axes if ax.get_legend() is not None]
    assert len(legends) == 5  # loss, accuracy, updates, boundaries, density
    for legend in legends:
        assert not any(legend.get_window_extent(r).overlaps(ax.get_window_extent(r)) for ax in fig.axes)


_OLDER = [{"step": 10, "kind": "update", "pruned": 5, "grown": 5, "est_loss_change": -0.3},  # no est_growth_gain
          {"step": 20, "kind": "update", "pruned": 3, "grown": 0, "est_loss_change": 0.02}]


@pytest.mark.parametrize("files, noted", [
    ({"config.yaml": "mode: mask_only\nmodel: mlp\n"}, None),
    ({"history.jsonl": '{"kind": "update", "step": 10, "train_loss": 1.0}\n'}, None),  # prune_pretrained: mask-only
    ({"config.yaml": "mode: train\ncontroller_kw:\n  grow_init: original\n"}, None),  # restores to the originals
    ({"config.yaml": "mode: train\n"}, "\n1 estimate(s) of an older train-mode run (no est_growth_gain): each subtracts\n"),
    ({"config.yaml": "model: mlp\n"}, "\n1 estimate(s) of an older train-mode run"),  # the recipe's default mode
    ({}, "\n1 estimate(s) of an older run (no est_growth_gain): in train mode such an estimate\n"),  # no config: either
    # a train run's config.yaml decides, whatever else the folder holds (a history.jsonl put there)
    ({"config.yaml": "mode: train\n", "history.jsonl": '{"kind": "update", "step": 10}\n'},
     "\n1 estimate(s) of an older train-mode run"),
    # recipes/prune_pretrained.py's config.yaml (no mode: its runs are mask-only) without its history.jsonl
    ({"config.yaml": "model: lenet5\nremove: ['0.5']\npasses: 1\n"}, None),
    # a config.yaml that cannot be read: the history.jsonl still tells
    ({"config.yaml": "mode: [train\n", "history.jsonl": '{"kind": "update", "step": 10}\n'}, None),
])
def test_only_older_train_mode_estimates_are_named(tmp_path, monkeypatch, files, noted):
    """An older mask-only run's restorations (grown, no est_growth_gain) were counted as older-run
    estimates with a note worded for train mode, though a restoration's est_loss_change was always the
    immediate change: the run's config.yaml (or a prune_pretrained history.jsonl) tells the modes apart.
    The resolved config.yaml decides before a history.jsonl (a train run's folder may hold one), a
    prune_pretrained config.yaml (it records no mode) by its options, the history only where no
    config.yaml can be read."""
    _events(tmp_path, _OLDER)
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    figs = _kept_figures(monkeypatch)
    progress(str(tmp_path)).plot(tmp_path / "progress.png")
    title = figs[0].axes[5].get_title()
    if noted is None:
        assert "older" not in title, title
    else:
        assert noted in title, title


@pytest.mark.parametrize("config, hint", [
    ("mode: train\n", "recipes/adaptive.py --line_search N measures one"),
    ("mode: mask_only\n", "recipes/adaptive.py --mask_only_kw verify_batches=N measures one"),
    ("remove: [0.2]\nverify_batches: 0\n", "recipes/prune_pretrained.py --verify-batches N measures one"),
    (None, "recipes/prune_pretrained.py --verify-batches N measures one"),  # its history.jsonl alone
])
def test_the_missing_measurement_names_the_option_of_the_runs_recipe_and_mode(tmp_path, monkeypatch, config, hint):
    """A prune_pretrained.py run (or a mask_only run of adaptive.py) without a line search was told
    that 'recipes/adaptive.py --line_search N measures one': an option of another recipe, which
    mask_only mode refuses; the runs measure with --verify-batches N and --mask_only_kw verify_batches=N."""
    _events(tmp_path, [{"step": 15, "kind": "update", "pruned": 0, "grown": 0, "est_loss_change": 0.0}])
    if config is None:
        (tmp_path / "history.jsonl").write_text(json.dumps({"kind": "update", "step": 15, "train_loss": 0.3}) + "\n")
    else:
        (tmp_path / "config.yaml").write_text(config)
    figs = _kept_figures(monkeypatch)
    progress(str(tmp_path)).plot(tmp_path / "progress.png")
    assert f"no held-out line search;\n{hint})" in figs[0].axes[5].get_title()


def test_the_density_panel_holds_the_last_update_until_the_runs_last_step(tmp_path, monkeypatch):
    """The density lines (steps-post) ended at the last update's step, so the density the run ended at
    was a bare vertical drop: a gmp run updating at steps 10..40 of 60 showed 0.51, not its final 0.5."""
    _events(tmp_path, [{"step": 10, "kind": "update", "pruned": 5, "grown": 0, "density": 0.7,
                        "layer_density": {"a.weight": 0.6, "b.weight": 1.0}},
                       {"step": 40, "kind": "update", "pruned": 2, "grown": 0, "density": 0.5,
                        "layer_density": {"a.weight": 0.4, "b.weight": 1.0}}])
    (tmp_path / "metrics.csv").write_text("step,split,loss,accuracy\n20,train,1.0,0.5\n60,train,0.9,0.6\n60,test,1.1,0.5\n")
    figs = _kept_figures(monkeypatch)
    progress(str(tmp_path)).plot(tmp_path / "progress.png")
    lines = {line.get_label(): line for line in figs[0].axes[4].get_lines()}
    for label, (first, last) in {"all": (0.7, 0.5), "a.weight": (0.6, 0.4), "b.weight": (1.0, 1.0)}.items():
        assert list(lines[label].get_xdata()) == [10, 40, 60]
        assert list(lines[label].get_ydata()) == [first, last, last]


def test_split_legends_read_train_held_out_test_as_the_run_figures_do(tmp_path, monkeypatch):
    """progress.png's legends were sorted by name ("holdout, test, train") and called the held-out
    part "holdout", where the run's own loss_accuracy.png reads train, held-out (of TRAIN), test."""
    rows = ["step,split,loss,accuracy,removed"] + [f"{s},train,1.0,0.5,800" for s in (10, 20)]
    rows += ["20,holdout,0.9,0.6,800", "20,test,0.95,0.55,800", "20,probe,1.1,0.4,800"]
    (tmp_path / "metrics.csv").write_text("\n".join(rows) + "\n")
    figs = _kept_figures(monkeypatch)
    progress(str(tmp_path)).plot(tmp_path / "progress.png")
    for ax in figs[0].axes[:2]:
        assert [t.get_text() for t in ax.get_legend().get_texts()] == [
            "train", "held-out (part of TRAIN)", "test", "probe"]


def test_an_empty_boundaries_panel_has_no_ticks_and_density_starts_at_0_as_the_run_figures(tmp_path, monkeypatch):
    """progress.png's empty boundaries panel kept matplotlib's 0 to 1 ticks (no boundary's scale), which
    curves.png's drops, and its density axis started at the lowest density logged (0.88 to 0.9 filled the
    panel) where the run's density.png starts at 0."""
    _events(tmp_path, [{"step": 10, "pruned": 100, "grown": 0, "density": 0.9},
                       {"step": 20, "pruned": 20, "grown": 0, "density": 0.88}])
    figs = _kept_figures(monkeypatch)
    progress(str(tmp_path)).plot(tmp_path / "progress.png")
    boundaries, density = figs[0].axes[3], figs[0].axes[4]
    assert [t.get_text() for t in boundaries.texts] == ["no boundaries logged"]
    assert list(boundaries.get_yticks()) == [] and list(boundaries.get_xticks()) == []  # (steps 0.0 to 1.0 were none)
    assert density.get_ylim() == (0, 1.05)
    write_run(tmp_path)  # boundaries logged: their ticks stay
    progress(str(tmp_path)).plot(tmp_path / "progress.png")
    assert len(figs[1].axes[3].get_yticks()) > 1 and figs[1].axes[4].get_ylim() == (0, 1.05)


def test_the_density_panel_starts_at_step_0_as_the_runs_density_png(tmp_path, monkeypatch):
    """A gradual pruning logs no event at step 0 (its first update at step 25): the run's density.png
    draws the density before that update (its counts: 1.0) from step 0, while progress.png's density
    panel started at step 25. Both now draw the same overall line."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    from adaptive import plots

    events = [{"step": 25, "kind": "update", "pruned": 100, "grown": 0, "live": 900, "removed": 100, "density": 0.9,
               "layer_density": {"a.weight": 0.85, "b.weight": 1.0}},
              {"step": 50, "kind": "update", "pruned": 100, "grown": 0, "live": 800, "removed": 200, "density": 0.8,
               "layer_density": {"a.weight": 0.7, "b.weight": 1.0}}]
    _events(tmp_path, events)
    (tmp_path / "metrics.csv").write_text("step,split,loss,accuracy\n20,train,1.0,0.5\n60,train,0.9,0.6\n")
    figs = _kept_figures(monkeypatch)
    progress(str(tmp_path)).plot(tmp_path / "progress.png")
    ours = {line.get_label(): line for line in figs[0].axes[4].get_lines()}["all"]
    kept = []
    monkeypatch.setattr(plots, "_save", lambda fig, plt_, path: kept.append(fig) or path)
    plots.plot_density(events, tmp_path / "density.png", last_step=60)
    runs = {line.get_label(): line for line in kept[0].axes[0].get_lines()}["overall"]
    assert list(ours.get_xdata()) == list(runs.get_xdata()) == [0, 25, 50, 60]
    assert list(ours.get_ydata()) == list(runs.get_ydata()) == [1.0, 0.9, 0.8, 0.8]
    plt.close("all")


def test_the_held_out_point_at_the_test_points_count_is_drawn_over_it(tmp_path, monkeypatch):
    """A run's last held-out evaluation and its test report share a removed count, and often nearly a value: both
    were drawn as the same 3-point circle, the test one after, so the held-out point lay hidden under it (a real
    lenet300 run's progress.png showed no held-out point at all). As in loss_accuracy.png, the test point is now a
    larger square and the held-out circle lies over it."""
    rows = ["step,split,loss,accuracy,removed"] + [f"{s},train,1.0,0.5,{s * 10}" for s in (10, 20)]
    rows += ["20,holdout,0.9,0.6,200", "20,test,0.9,0.6,200"]
    (tmp_path / "metrics.csv").write_text("\n".join(rows) + "\n")
    figs = _kept_figures(monkeypatch)
    progress(str(tmp_path)).plot(tmp_path / "progress.png")
    for ax in figs[0].axes[:2]:
        lines = {line.get_label(): line for line in ax.get_lines()}
        held, test = lines["held-out (part of TRAIN)"], lines["test"]
        assert list(held.get_xydata()[0]) == list(test.get_xydata()[0])  # the same place
        assert held.get_zorder() > test.get_zorder()
        assert test.get_markersize() > held.get_markersize()  # the test point shows around the held-out one


def test_a_density_legend_of_many_long_layer_names_covers_no_other_legend(tmp_path, monkeypatch):
    """53 layers named as in a wrapped ResNet ("module.backbone.layer4.block1.conv1.weight"): the density panel's
    legend in four columns was twice as wide as its panel and lay over the boundaries panel's legend beside it ("restore"
    was hidden). Its columns now fit under its panel. The empty estimates panel has no 0-1 ticks, as the empty
    boundaries panel."""
    names = [f"module.backbone.layer{i // 3}.block{i % 3}.conv{i % 2}.weight" for i in range(53)]
    _events(tmp_path, [{"step": s, "kind": "update", "pruned": 100, "grown": 50, "density": 0.9 - 0.01 * s,
                        "layer_density": {n: 0.5 for n in names}, "boundaries": {"prune": 0.1, "restore": 0.2}}
                       for s in (10, 20)])
    (tmp_path / "metrics.csv").write_text("step,split,loss,accuracy,removed\n10,train,1.0,0.5,100\n20,train,1.0,0.5,200\n")
    fig = _drawn_progress(tmp_path, monkeypatch)
    r = fig.canvas.get_renderer()
    legends = [ax.get_legend() for ax in fig.axes if ax.get_legend() is not None]
    assert len(legends) == 5
    for i, a in enumerate(legends):
        assert not any(a.get_window_extent(r).overlaps(b.get_window_extent(r)) for b in legends[i + 1:])
        assert not any(a.get_window_extent(r).overlaps(ax.get_window_extent(r)) for ax in fig.axes)
    assert len(fig.axes[4].get_legend().get_texts()) == 54
    assert not list(fig.axes[5].get_xticks()) and not list(fig.axes[5].get_yticks())


def test_step_and_removal_axes_of_a_short_run_tick_whole_numbers(tmp_path, monkeypatch):
    """A two-update run (prune_pretrained --subset 512 --passes 0.5): progress.png ticked its step axes at 1.2, 1.4,
    ..., 0.96, 0.98, ... and 1.900, 1.925, ..., steps that do not exist (the run's own figures tick whole steps)."""
    _events(tmp_path, [{"step": 1, "kind": "update", "pruned": 50, "grown": 0, "density": 0.8, "layer_density": {"a": 0.8},
                        "boundaries": {"prune": 0.19}, "est_loss_change": 0.0},
                       {"step": 2, "kind": "update", "pruned": 0, "grown": 0, "density": 0.8, "layer_density": {"a": 0.8},
                        "est_loss_change": 0.01}])
    (tmp_path / "metrics.csv").write_text("step,split,loss,accuracy,removed\n1,train,0.5,0.8,0\n2,train,0.4,0.9,3\n")
    fig = _drawn_progress(tmp_path, monkeypatch)
    for ax in fig.axes:
        ticks = _shown_xticks(ax)
        assert ticks and all(float(t).is_integer() for t in ticks), (ax.get_title(), ticks)


def test_step_and_removal_axes_of_a_longer_run_tick_round_numbers(tmp_path, monkeypatch):
    """Updates at steps 10, 20, ..., 60: progress.png ticked its step axes at 12, 18, ..., 54 (whole_steps used
    MaxNLocator's own 10 bins and steps 1 to 10); they tick 10, 20, ... as matplotlib's default, as the removal axes."""
    _events(tmp_path, [{"step": s, "kind": "update", "pruned": 100, "grown": 50, "density": 0.9 - 0.001 * s,
                        "layer_density": {"a": 0.9}, "boundaries": {"prune": 0.1, "restore": 0.2}, "est_loss_change": 0.01}
                       for s in range(10, 70, 10)])
    (tmp_path / "metrics.csv").write_text("step,split,loss,accuracy,removed\n"
                                          + "".join(f"{s},train,1.0,0.5,{10 * s}\n" for s in range(10, 70, 10)))
    fig = _drawn_progress(tmp_path, monkeypatch)
    for ax in fig.axes:
        ticks = _shown_xticks(ax)
        assert ticks and all(t % 10 == 0 for t in ticks), (ax.get_title(), ticks)
    assert [t for t in fig.axes[0].get_xticks() if 100 <= t <= 600] == [100, 200, 300, 400, 500, 600]
