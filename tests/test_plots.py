"""plots: the run figures show every bar, point and note they are given (inspected on the Figure)."""
import math
import matplotlib

matplotlib.use("Agg")
import pytest  # noqa: E402

from adaptive import plots  # noqa: E402

NAN = float("nan")


@pytest.fixture
def figures(monkeypatch):
    """The Figures the plot functions draw, kept open instead of written."""
    kept = []
    monkeypatch.setattr(plots, "_save", lambda fig, plt, path: kept.append(fig) or path)
    yield kept
    import matplotlib.pyplot as plt

    for fig in kept:
        plt.close(fig)


def _legend(ax):
    return [t.get_text() for t in ax.get_legend().get_texts()] if ax.get_legend() else []


@pytest.mark.parametrize("steps", [range(1, 6), range(10, 60, 10), [3, 4, 10, 30]])
def test_edit_bars_of_neighbouring_updates_never_overlap(figures, steps):
    """An update every step (mask_only's default) gave bars 1 step wide: update s's grown bar covered
    [s, s + 1], the slot of update s + 1's pruned bar, and hid it."""
    plots.plot_edits([{"step": s, "kind": "update", "pruned": 40, "grown": 40} for s in steps], "edits.png")
    pruned, grown = figures[0].axes[0].containers
    spans = sorted((p.get_x(), p.get_x() + p.get_width()) for c in (pruned, grown) for p in c.patches)
    assert all(w > 0 for a, w in spans)
    assert all(b0 <= a1 + 1e-9 for (a0, b0), (a1, b1) in zip(spans, spans[1:])), spans
    for s, p, g in zip(steps, pruned.patches, grown.patches):  # pruned left of the update's step, grown right
        assert p.get_x() + p.get_width() == pytest.approx(s) == pytest.approx(g.get_x())


def test_edit_bars_stay_visible_when_one_pair_of_updates_is_close_in_a_long_run(figures):
    """Width 0.4 of the smallest gap (1 step) on a 5,000-step axis drew every bar under a pixel."""
    steps = [0, 1, 1000, 2000, 3000, 4000, 5000]
    plots.plot_edits([{"step": s, "kind": "update", "pruned": 40, "grown": 40} for s in steps], "edits.png")
    fig = figures[0]
    fig.canvas.draw()
    ax = fig.axes[0]
    for c in ax.containers:
        for p in c.patches:
            box = p.get_window_extent(fig.canvas.get_renderer())
            assert box.width >= 1.5, (p.get_x(), box.width)  # pixels
    assert ax.containers[0].patches[2].get_width() == pytest.approx(5000 / 250)


def test_non_finite_losses_are_left_out_and_the_panel_says_so(figures):
    rows = [dict(step=s, split="train", loss=NAN, accuracy=0.1) for s in (10, 20, 30)]
    rows += [dict(step=30, split="holdout", loss=NAN, accuracy=0.1), dict(step=30, split="test", loss=NAN, accuracy=0.1)]
    plots.plot_loss_accuracy(rows, "la.png")
    loss, acc = figures[0].axes
    assert not loss.get_lines() and _legend(loss) == []  # no legend of series with nothing drawn
    assert [t.get_text() for t in loss.texts] == ["loss not finite at 5 of 5 points (left out)"]
    assert _legend(acc) == ["train", "holdout", "test"] and not acc.texts

    rows[0]["loss"], rows[3]["loss"] = 2.3, float("inf")  # some finite: drawn, and the title says what is not
    plots.plot_loss_accuracy(rows, "la.png")
    loss = figures[1].axes[0]
    assert _legend(loss) == ["train"] and [list(line.get_ydata()) for line in loss.get_lines()] == [[2.3]]
    assert "loss not finite at 4 of 5 points (left out)" in loss.get_title()


def test_a_run_with_no_update_draws_its_single_density_point(figures):
    ev = [{"step": 0, "kind": "init", "density": 0.2, "layer_density": {"fc1.weight": 0.16, "fc2.weight": 0.47}}]
    plots.plot_density(ev, "density.png")
    lines = figures[0].axes[0].get_lines()
    assert [line.get_label() for line in lines] == ["fc1.weight", "fc2.weight", "overall"]
    assert all(line.get_marker() not in (None, "", " ", "None") for line in lines)  # a line alone needs two points


def test_density_is_drawn_as_a_step_function_from_the_start_to_the_last_step(figures, tmp_path):
    """density.png joined the updates with straight lines (step 15 of gmp at 10 -> 20 read ~0.16,
    not 0.2125), from the first update to the last, though the run started dense and went on."""
    ev = [{"step": s, "kind": "update", "density": d, "live": live, "removed": 1000 - live, "pruned": p, "grown": 0,
           "layer_density": {"a": la}} for s, d, live, p, la in ((10, 0.5, 500, 500, 0.4), (20, 0.2125, 212, 288, 0.1))]
    rows = [dict(step=s, split="train", loss=1.0, accuracy=0.5) for s in (5, 10, 15, 20, 25, 30)]
    plots.plot_run(rows, ev, tmp_path / "run")
    lines = {line.get_label(): line for line in figures[1].axes[0].get_lines()}
    assert {line.get_drawstyle() for line in lines.values()} == {"steps-post"}
    assert lines["overall"].get_xydata().tolist() == [[0, 1.0], [10, 0.5], [20, 0.2125], [30, 0.2125]]
    assert lines["a"].get_xydata().tolist() == [[10, 0.4], [20, 0.1], [30, 0.1]]  # no layer density before the first
    assert plots.step_points([0, 10], [0.2, 0.1], start=1.0, last_step=5) == ([0, 10], [0.2, 0.1])  # nothing to add


def test_best_target_figures_mark_the_kept_masks(figures, tmp_path):
    """mask_only --target best: the lines end at the last rung tried (0.8 here) while the run kept the
    dense network, scored at step 0; a star marks what was kept and the test point sits with it."""
    events = [{"step": s, "kind": "update", "density": d, "pruned": 1, "grown": 1}
              for s, d in ((1, 0.9), (20, 0.9), (21, 0.8), (40, 0.8))]
    rows = [dict(step=s, split="holdout", loss=loss, accuracy=acc) for s, loss, acc in ((0, 0.11, 0.97), (20, 0.12, 0.96),
                                                                                      (40, 0.13, 0.95))]
    rows.append(dict(step=40, split="test", loss=0.25, accuracy=0.93))
    kept = dict(step=0, density=1.0, holdout_loss=0.11, holdout_acc=0.97)
    plots.plot_run(rows, events, tmp_path / "run", kept=kept)
    la, dens = figures[0], figures[1]
    star = [line for line in dens.axes[0].get_lines() if line.get_label() == "kept (best on held-out)"]
    assert len(star) == 1 and list(star[0].get_xydata()[0]) == [0, 1.0]
    assert "kept (best on held-out)" in _legend(dens.axes[0])
    for ax, value in zip(la.axes, (0.11, 0.97)):
        by_label = {line.get_label(): line.get_xydata().tolist() for line in ax.get_lines()}
        assert by_label["kept (best on held-out)"] == [[0, value]]
        assert by_label["test: the kept masks"] == [[0, 0.25 if value == 0.11 else 0.93]]  # measured on the kept masks
        z = {line.get_label(): line.get_zorder() for line in ax.get_lines()}
        assert z["test: the kept masks"] > z["kept (best on held-out)"]  # the star never hides the test point


def test_boundary_tick_labels_never_overlap():
    """linthresh = the smallest |value| (7.7e-8) put ticks 1e-8, 0 and -1e-8 inside the narrow linear
    part, their labels drawn over each other."""
    import matplotlib.pyplot as plt

    restore = [3.0e-7, 7.2e-7, 1.5e-6, 2.0e-5, 1.2e-4, 2.5e-4]
    prune = [-7.7e-8, -8.1e-7, -3e-6, -2e-5, -1e-4, -1.7e-4]
    for values, size in ((restore + prune, (6.5, 4.5)), (restore + prune, (4.5, 3.0)), ([1e-12, 0.5, -3e-9], (5, 3.5)),
                         ([2e-3, -1e-6, 5e-4], (5, 3.5))):
        fig, ax = plt.subplots(figsize=size)
        ax.plot(range(len(values)), values, ".")
        plots.boundary_scale(ax, values)
        fig.tight_layout()
        fig.canvas.draw()
        r = fig.canvas.get_renderer()
        lo, hi = ax.get_ylim()
        boxes = [(t.get_text(), t.get_window_extent(r)) for t, y in zip(ax.get_yticklabels(), ax.get_yticks())
                 if t.get_text() and lo <= y <= hi]
        plt.close(fig)
        assert ax.get_yscale() == "symlog" and len(boxes) >= 3
        over = [(a, b) for i, (a, ba) in enumerate(boxes) for b, bb in boxes[i + 1:] if ba.overlaps(bb)]
        assert not over, (values, size, over)


def _window(fig, artist):
    fig.canvas.draw()
    return artist.get_window_extent(fig.canvas.get_renderer())


def test_the_loss_accuracy_legend_covers_no_point(figures):
    """A 2-step run has one held-out point at the top of each panel (and the test point at the
    bottom): the upper-right legend hid the held-out one. The legend now lies outside the axes."""
    rows = [dict(step=2, split="holdout", loss=2.3043, accuracy=0.0979), dict(step=2, split="test", loss=2.3023, accuracy=0.0975)]
    plots.plot_loss_accuracy(rows, "la.png")
    fig = figures[0]
    for ax in fig.axes:
        legend = _window(fig, ax.get_legend())
        assert not legend.overlaps(_window(fig, ax)), ax.get_title()  # below the panel, off the data
        assert _legend(ax) == ["holdout", "test"]


def test_a_legend_below_a_panel_is_on_the_saved_canvas(tmp_path):
    """A legend left out of the layout is left out of bbox_inches="tight" too: the canvas must be
    told to hold it, or the saved PNG cuts it off."""
    from PIL import Image

    rows = [dict(step=s, split="train", loss=1.0 / s, accuracy=0.1 * s) for s in range(1, 6)]
    without = plots.plot_loss_accuracy([], tmp_path / "empty.png")  # nothing drawn: no legend
    with_legend = plots.plot_loss_accuracy(rows, tmp_path / "la.png")
    assert Image.open(with_legend).size[1] > Image.open(without).size[1] + 20  # the canvas grew to hold it


def test_split_colours_are_the_same_whichever_splits_a_run_has(figures):
    """A 2-step run has no train row: held-out took the first colour (blue, train's elsewhere) and
    test the second (orange, held-out's elsewhere)."""
    plots.plot_loss_accuracy([dict(step=2, split="holdout", loss=2.0, accuracy=0.1),
                              dict(step=2, split="test", loss=2.1, accuracy=0.1)], "la.png")
    plots.plot_loss_accuracy([dict(step=s, split=sp, loss=2.0, accuracy=0.1) for s in (1, 2) for sp in ("train", "holdout", "test")],
                             "la.png")
    import matplotlib.colors as mc

    for fig in figures:
        colours = {line.get_label(): mc.to_hex(line.get_color()) for line in fig.axes[0].get_lines()}
        assert colours["holdout"] == mc.to_hex(plots.SPLIT_COLOR["holdout"])
        assert colours["test"] == mc.to_hex(plots.SPLIT_COLOR["test"])
    assert len(set(plots.SPLIT_COLOR.values())) == 3


def test_run_figures_name_the_model_and_dataset(figures, tmp_path):
    rows = [dict(step=s, split="train", loss=1.0, accuracy=0.5) for s in (5, 10)]
    ev = [{"step": 10, "kind": "update", "density": 0.5, "pruned": 5, "grown": 5, "layer_density": {"a": 0.5}}]
    title = plots.run_title("resnet20", "cifar10", tmp_path / "my_run")
    assert title == "resnet20 on cifar10 (run my_run)"
    plots.plot_run(rows, ev, tmp_path / "out", title=title)
    la, dens, edits = figures
    assert la._suptitle is not None and la._suptitle.get_text() == title
    for fig in (dens, edits):
        assert fig.axes[0].get_title().startswith(title + "\n")
    plots.plot_run(rows, ev, tmp_path / "out")  # without a title: as before
    assert figures[3]._suptitle is None
    assert plots.run_title(run_dir="/x/run7") == "run run7 (model and dataset not recorded)"
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "config.yaml").write_text("model: lenet5\ndataset: mnist\nlr: 0.1\n")
    assert plots.run_config(tmp_path / "r") == {"model": "lenet5", "dataset": "mnist"}
    assert plots.run_config(tmp_path / "none") == {}
    (tmp_path / "r" / "config.yaml").write_text("model:\n  name: mlp\n  hidden: [8]\n")
    assert plots.run_config(tmp_path / "r") == {"model": "mlp"}


def test_density_layers_that_share_a_colour_differ_in_line_style(figures):
    ev = [{"step": s, "kind": "update", "density": 0.5, "layer_density": {f"l{i}": 0.5 for i in range(25)}} for s in (1, 2)]
    plots.plot_density(ev, "density.png")
    ax = figures[0].axes[0]
    lines = [line for line in ax.get_lines() if line.get_label() != "overall"]
    assert len(lines) == 25
    pairs = {(line.get_color(), line.get_linestyle()) for line in lines}
    assert len(pairs) == 25  # no two layers look alike
    assert not _window(figures[0], ax.get_legend()).overlaps(_window(figures[0], ax))  # beside the axes


def _points(line) -> list:
    """A line's points, a NaN y as None (NaN compares unequal to itself)."""
    return [[x, None if math.isnan(y) else y] for x, y in line.get_xydata().tolist()]


def test_a_clipping_run_gets_a_gradient_norm_figure_with_its_limit(figures, tmp_path):
    """grad_norm.png: the rows' mean pre-clip norms (a NaN one left out and counted), the limit as a
    dashed line, the share of steps clipped on a second axis; a run that never clipped gets none."""
    rows = [dict(step=s, split="train", loss=1.0, accuracy=0.5, grad_norm=g, clipped=c)
            for s, g, c in ((5, 3.0, 1.0), (10, float("nan"), None), (15, 0.5, 0.4), (20, 0.2, 0.0))]
    rows.append(dict(step=20, split="holdout", loss=1.0, accuracy=0.5))
    files = plots.plot_run(rows, [], tmp_path / "run", max_grad_norm=1.0, title="mlp on digits")
    assert set(files) == {"loss_accuracy", "density", "edits", "grad_norm"}
    fig = figures[3]
    ax, twin = fig.axes[0], fig.axes[1]
    norm, limit = ax.get_lines()
    assert norm.get_xydata().tolist() == [[5, 3.0], [15, 0.5], [20, 0.2]]
    assert limit.get_linestyle() == "--" and list(limit.get_ydata()) == [1.0, 1.0]
    # each share over the steps its row covers: the first from step 0, the NaN row's interval empty
    shares = twin.get_lines()[0]
    assert shares.get_drawstyle() == "steps-pre"
    assert _points(shares) == [[0, None], [5, 1.0], [10, None], [15, 0.4], [20, 0.0]]
    assert "gradient norm not finite at 1 of 4 points" in ax.get_title()
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == ["gradient norm before clipping (row mean)", "--max_grad_norm 1", "share of the row's steps clipped"]
    figures.clear()
    assert "grad_norm" not in plots.plot_run([dict(step=5, split="train", loss=1.0, accuracy=0.5)], [], tmp_path / "run")


def test_density_figure_draws_the_train_rows_silent_units(figures, tmp_path):
    """The silent_units of train rows (a train-mode run's) share density.png's 0-1 axis, each value over
    the interval its row closes; non-finite values and other splits are left out; no column, no line."""
    ev = [{"step": 0, "kind": "init", "density": 0.5, "layer_density": {"a": 0.5}}]
    rows = [dict(step=s, split="train", loss=1.0, accuracy=0.5, silent_units=v)
            for s, v in ((10, 0.0), (20, 0.25), (30, NAN), (40, 0.75))]
    rows.append(dict(step=40, split="holdout", loss=1.0, accuracy=0.5, silent_units=0.9))
    plots.plot_run(rows, ev, tmp_path / "run")
    ax = figures[1].axes[0]
    lines = {line.get_label(): line for line in ax.get_lines()}
    silent = lines["silent units (no gradient over the row)"]
    assert silent.get_drawstyle() == "steps-pre"
    # 0.0 over steps 1-10 (the first row's, from step 0), nothing over the NaN row's 21-30
    assert _points(silent) == [[0, None], [10, 0.0], [20, 0.25], [30, None], [40, 0.75]]
    assert ax.get_title().endswith("; silent units")
    plots.plot_run([dict(r, silent_units=None) for r in rows], ev, tmp_path / "none")
    labels = [line.get_label() for line in figures[-2].axes[0].get_lines()]
    assert not any("silent" in label for label in labels)


def test_the_two_loss_accuracy_legends_do_not_cover_each_other(figures):
    """Each panel's legend lies under it, and the labels recipes/adaptive.py gives name each split at
    length: in two columns they were wider than a panel, and the loss panel's legend ran under the
    accuracy panel's, hiding part of 'test (2,000 of 10,000 images, drawn by --test_subset)'."""
    rows = [dict(step=s, split=sp, loss=1.0 / s, accuracy=0.1 * s) for s in (1, 2) for sp in ("train", "holdout", "test")]
    labels = {"train": "train (mean over the batches trained since the last point; loss with label smoothing 0.1)",
              "holdout": "held-out (6,000 images of TRAIN)", "test": "test (2,000 of 10,000 images, drawn by --test_subset)"}
    plots.plot_loss_accuracy(rows, "la.png", labels)
    fig = figures[0]
    loss, acc = (_window(fig, ax.get_legend()) for ax in fig.axes)
    assert not loss.overlaps(acc), (loss, acc)
    assert _legend(fig.axes[0]) == list(labels.values())


def test_a_held_out_point_at_the_test_points_step_is_drawn_over_it(figures):
    """A 1-epoch run evaluates the held-out part once, at its last step, where the test point is
    drawn too: the test square (drawn later, larger) hid the held-out point."""
    rows = [dict(step=s, split="train", loss=1.0 / s, accuracy=0.5) for s in (20, 40)]
    rows += [dict(step=40, split="holdout", loss=0.127, accuracy=0.963), dict(step=40, split="test", loss=0.120, accuracy=0.964)]
    plots.plot_loss_accuracy(rows, "la.png", {"holdout": "held-out", "test": "test"})
    for ax in figures[0].axes:
        line = {l.get_label(): l for l in ax.get_lines()}
        assert line["held-out"].get_zorder() > line["test"].get_zorder(), ax.get_title()


def _ticks_in_view(axis, lim):
    return [t for t in axis.get_majorticklocs() if lim[0] - 1e-9 <= t <= lim[1] + 1e-9]


def test_step_axes_of_a_short_run_tick_whole_steps(figures, tmp_path):
    """A run of 6 steps (an update every 2) had its step axes ticked at 1.5, 2.5, ...: steps that do
    not exist, on every run figure."""
    rows = [dict(step=s, split="train", loss=2.0 / s, accuracy=0.1 * s, grad_norm=1.0 + s, clipped=0.5)
            for s in (2, 4, 6)]
    rows.append(dict(step=6, split="holdout", loss=1.0, accuracy=0.5))
    ev = [{"step": 0, "kind": "init", "density": 0.5, "layer_density": {"a": 0.5}, "pruned": 5, "grown": 0}]
    ev += [{"step": s, "kind": "update", "density": 0.5, "layer_density": {"a": 0.5}, "pruned": 3, "grown": 3}
           for s in (2, 4)]
    plots.plot_run(rows, ev, tmp_path / "run", max_grad_norm=2.0)
    assert len(figures) == 4
    for fig in figures:
        for ax in fig.axes:
            if ax.get_xlabel().startswith("training step"):
                ticks = _ticks_in_view(ax.xaxis, ax.get_xlim())
                assert len(ticks) >= 2 and all(float(t).is_integer() for t in ticks), (ax.get_xlabel(), ticks)


def test_density_axis_names_the_silent_units_it_also_draws(figures, tmp_path):
    """density.png draws the train rows' silent_units on its density axis, whose label named density
    alone: a share of silent units of 0.04 read as a layer at 4% density."""
    ev = [{"step": 0, "kind": "init", "density": 0.5, "layer_density": {"a": 0.5}}]
    rows = [dict(step=s, split="train", loss=1.0, accuracy=0.5, silent_units=0.25) for s in (10, 20)]
    plots.plot_run(rows, ev, tmp_path / "run")
    ax = figures[1].axes[0]
    assert "silent units (share of units)" in ax.get_ylabel()
    assert any(line.get_label().startswith("silent units") for line in ax.get_lines())
    plots.plot_run([dict(r, silent_units=None) for r in rows], ev, tmp_path / "none")
    assert figures[-2].axes[0].get_ylabel() == "density (live synapses / synapses)"


def test_an_update_that_edited_nothing_is_marked_on_the_edits_figure(figures):
    """An update that pruned and grew nothing drew a bar of height 0: the console said "2 controller
    updates" and edits.png showed one."""
    ev = [{"step": 2, "kind": "update", "pruned": 30, "grown": 30}, {"step": 4, "kind": "update", "pruned": 0, "grown": 0}]
    plots.plot_edits(ev, "edits.png")
    ax = figures[0].axes[0]
    (mark,) = [line for line in ax.get_lines() if line.get_label() == "update with no edit"]
    assert list(mark.get_xdata()) == [4] and list(mark.get_ydata()) == [0]
    assert "update with no edit" in _legend(ax)
    plots.plot_edits(ev[:1], "edits.png")
    assert not figures[1].axes[0].get_lines()


def test_step_axes_of_a_one_step_run_tick_that_step_alone(figures, tmp_path):
    """A run of one step (one row, one update) had its step axes ticked at -0.04, -0.02, ..., 0.04 around it:
    MaxNLocator(integer=True) falls back to fractional ticks where the view holds fewer than two whole numbers."""
    rows = [dict(step=1, split="train", loss=1.0, accuracy=0.5, grad_norm=1.0), dict(step=1, split="test", loss=1.0,
                                                                                       accuracy=0.5)]
    ev = [{"step": 1, "kind": "update", "density": 0.5, "layer_density": {"a": 0.5}, "pruned": 3, "grown": 3}]
    plots.plot_run(rows, ev, tmp_path / "run", max_grad_norm=2.0)
    assert len(figures) == 4
    for fig in figures:
        fig.canvas.draw()
        for ax in fig.axes:
            if ax.get_xlabel().startswith("training step"):
                assert _ticks_in_view(ax.xaxis, ax.get_xlim()) == [1.0], ax.get_xlabel()


def test_a_density_legend_of_many_long_layer_names_warns_nothing_and_keeps_the_axes(tmp_path):
    """53 layers with long names (a ResNet-50's, wrapped in a module): the two-column legend beside the axes was
    wider than the figure, and tight_layout warned "Tight layout not applied" and left the margins as they were.
    The legend is now out of the layout, the axes keep their width, and the saved canvas holds the legend."""
    import warnings

    import matplotlib.pyplot as plt

    names = [f"module.backbone.layer{i // 3}.block{i % 3}.conv{i % 2}.weight_very_long_name_{i}" for i in range(53)]
    ev = [{"step": s, "kind": "update", "density": 0.9 - 0.01 * s, "layer_density": {n: 0.5 for n in names}}
          for s in range(1, 6)]
    kept = []
    real_close = plt.close
    plt.close = lambda fig=None: kept.append(fig)  # keep the figure to inspect after the real save
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            path = plots.plot_density(ev, tmp_path / "density.png", last_step=8)
    finally:
        plt.close = real_close
    (fig,) = kept
    try:
        assert path.is_file()
        ax = fig.axes[0]
        leg = ax.get_legend()
        assert not leg.get_in_layout()
        assert ax.get_position().width * fig.get_figwidth() > 5  # inches: the axes were not squeezed by the legend
        assert not _window(fig, leg).overlaps(_window(fig, ax))
        assert len(_legend(ax)) == 54
    finally:
        plt.close(fig)


def test_step_axes_of_a_longer_run_tick_round_steps(figures, tmp_path):
    """A run logged at steps 10, 20, ..., 60 had its step axes ticked at 12, 18, ..., 54 (whole_steps used MaxNLocator's
    own 10 bins and steps 1 to 10 where matplotlib's default picks 1-2-2.5-5-10): the ticks are the default ones again."""
    rows = [dict(step=s, split="train", loss=2.0 / s, accuracy=0.01 * s, grad_norm=1.0, clipped=0.5) for s in range(10, 70, 10)]
    ev = [{"step": s, "kind": "update", "density": 0.5, "layer_density": {"a": 0.5}, "pruned": 3, "grown": 3}
          for s in range(10, 70, 10)]
    plots.plot_run(rows, ev, tmp_path / "run", max_grad_norm=2.0)
    seen = 0
    for fig in figures:
        fig.canvas.draw()
        for ax in fig.axes:
            if ax.get_xlabel().startswith("training step"):
                ticks = _ticks_in_view(ax.xaxis, ax.get_xlim())
                assert ticks and all(t % 10 == 0 for t in ticks), (ax.get_xlabel(), ticks)
                seen += 1
    assert seen >= 3


@pytest.mark.parametrize("losses, scale", [([2.3, 1.1, 0.4, 1e5], "log"), ([2.3, 1.1, 0.4, 300.0], "linear"),
                                           ([2.3, 0.0, 1e5], "linear")])
def test_the_loss_panel_turns_log_where_the_losses_span_more_than_three_decades(figures, losses, scale):
    """A run that diverged (a loss of 1e5 after 0.4) drew its loss panel on a linear axis, flattening the
    useful part along 0: log where the positive losses span more than three decades; linear within them,
    and where a loss is 0 (no log axis holds it). The accuracy panel stays linear."""
    rows = [dict(step=10 * (i + 1), split="train", loss=v, accuracy=0.5) for i, v in enumerate(losses)]
    rows.append(dict(step=10 * len(losses), split="test", loss=0.5, accuracy=0.5))
    plots.plot_loss_accuracy(rows, "la.png")
    loss, acc = figures[0].axes
    assert (loss.get_yscale(), acc.get_yscale()) == (scale, "linear")


def test_edit_bars_show_the_pruned_and_grown_counts_of_each_update(figures):  # P5
    plots.plot_edits([{"step": 1, "kind": "update", "pruned": 30, "grown": 10},
                      {"step": 2, "kind": "update", "pruned": 7, "grown": 5}], "edits.png")
    pruned, grown = figures[0].axes[0].containers
    assert [p.get_height() for p in pruned.patches] == [30, 7]
    assert [p.get_height() for p in grown.patches] == [10, 5]


def test_an_update_that_only_pruned_or_only_grew_gets_no_idle_mark(figures):  # P8
    plots.plot_edits([{"step": 1, "kind": "update", "pruned": 30, "grown": 0},
                      {"step": 2, "kind": "update", "pruned": 0, "grown": 4},
                      {"step": 3, "kind": "update", "pruned": 0, "grown": 0}], "edits.png")
    (idle,) = [l for l in figures[0].axes[0].get_lines() if l.get_label() == "update with no edit"]
    assert list(idle.get_xdata()) == [3]


def test_density_draws_a_layer_that_events_record_only_from_a_later_one(figures):  # P6
    events = [{"step": 0, "density": 1.0, "live": 10, "removed": 0, "pruned": 0, "grown": 0},
              {"step": 5, "density": 0.5, "layer_density": {"fc1.weight": 0.4, "fc2.weight": 0.6}}]
    plots.plot_density(events, "density.png", last_step=8)
    labels = [l.get_label() for l in figures[0].axes[0].get_lines()]
    assert "fc1.weight" in labels and "fc2.weight" in labels
