"""A plugin that breaks its part of the contract is refused with an error naming it, before it can
edit the connectome: NaN or complex estimator scores; a model builder that returns no module; a
granularity whose pool and expand disagree; and a graph writer a plugin registers is a valid
``--format``."""
import re
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import adaptive
from adaptive.ensembles import Granularity
from adaptive.utility import Estimator, register_estimator


def _net():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(20, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10))


def _train(model, opt, steps):
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        x, y = torch.randn(16, 20, generator=g), torch.randint(0, 10, (16,), generator=g)
        F.cross_entropy(model(x), y).backward()
        opt.step()
        opt.zero_grad()


@register_estimator("contract_bad_scores", replace=True)
class BadScores(Estimator):
    """|w| everywhere; ``fill`` (set from outside) spoils rows 0-15 of layer 0 on side ``where``."""
    needs_gradients = True
    fill, where = None, "cost"

    def _score(self, ctx, w, side):
        s = w.detach().abs().clone()
        if ctx.name == "0.weight" and side == self.where and self.fill is not None:
            if self.fill == "complex":
                return s.to(torch.complex64)
            if self.fill == "meta":
                return s.to("meta")
            s[:16] = self.fill
        return s

    def removal_cost(self, ctx):
        return self._score(ctx, ctx.weight, "cost")

    def restoration_gain(self, ctx):
        return self._score(ctx, ctx.w0, "gain")


@pytest.mark.parametrize("policy", ["utility", "magnitude", "gmp", "threshold", "balanced"])
@pytest.mark.parametrize("where", ["cost", "gain"])
def test_nan_scores_are_refused_at_the_update_and_nothing_is_edited(policy, where):
    model = _net()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    conn = adaptive.Connectome(model)
    budget = {} if policy == "threshold" else {"budget": "uniform"}
    ctrl = adaptive.Controller(conn, opt, policy=policy, estimator="contract_bad_scores", density=0.5,
                               update_every=4, end_step=12, seed=0, **budget)
    est = ctrl.drop_est if where == "cost" else ctrl.grow_est
    if not isinstance(est, BadScores):
        pytest.skip(f"policy {policy!r} reads no {where} from the estimator")
    est.fill, est.where = float("nan"), where
    _train(model, opt, 3)
    before = {n: m.clone() for n, m in conn.masks.items()}
    side = "removal cost" if where == "cost" else "growth gain"
    with pytest.raises(ValueError, match=rf"'contract_bad_scores'.*{side}.*layer '0.weight' holds 320 NaN of 640.*nan_to_num"):
        _train(model, opt, 1)  # step 4: the update
    assert all(torch.equal(before[n], conn.masks[n]) for n in before)
    assert all(not bool(conn.params[n].detach()[~before[n]].any()) for n in before)  # pruned stay 0
    assert ctrl.policy.state_dict().get("done") in (None, False)  # magnitude's one prune is still to come


def _controller_with_decay(name, cls_name, value):
    """A rigl Controller on a fresh small net whose edit decay, a plugin registered as ``name`` (class
    ``cls_name``), returns ``value`` at every step: (model, optimizer, controller)."""
    import dataclasses

    from adaptive.schedules import Decay, register_decay

    decay = dataclasses.dataclass(frozen=True)(type(cls_name, (Decay,), {"__call__": lambda self, step: value}))
    register_decay(name, replace=True)(decay)
    model = _net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    ctrl = adaptive.Controller(adaptive.Connectome(model), opt, policy="rigl", density=0.5, update_every=2,
                               end_step=10, seed=0, edit_decay=name)
    return model, opt, ctrl


@pytest.mark.parametrize("value", [float("nan"), 1.5, -0.2, "0.3"])
def test_an_edit_decay_giving_no_fraction_is_refused_naming_it_and_nothing_is_edited(value):
    """A plugin decay's NaN gave a bare 'cannot convert float NaN to integer'; 1.5, -0.2 or a string
    ran silently (edits of more than every live ensemble, none, or a string's)."""
    model, opt, ctrl = _controller_with_decay("contract_bad_decay", "BadDecay", value)
    conn = ctrl.conn
    masks = {n: m.clone() for n, m in conn.masks.items()}
    with pytest.raises(ValueError, match=rf"edit decay .*BadDecay gave {value!r} at step 2: a decay returns the "
                                         r"fraction of live ensembles an update edits, a number in \[0, 1\]"):
        _train(model, opt, 2)
    assert all(torch.equal(m, conn.masks[n]) for n, m in masks.items()) and len(ctrl.events) == 1  # the init's


@pytest.mark.parametrize("value, frac", [
    (0, 0.0), (1, 1.0), (np.float32(0.25), 0.25), (torch.tensor(0.5, requires_grad=True) * 1, 0.5),
    (1.0000000002, 1.0), (np.float32(1) + np.float32(1e-7), 1.0), (-1e-12, 0.0)])
def test_an_edit_decay_giving_a_fraction_as_an_int_numpy_tensor_or_with_float_error_is_taken(value, frac):
    """Float error past 0 or 1 (a float32 1.0000001) was refused as 'a number in [0, 1]', in the
    middle of a run whose plugin decay ran before the check."""
    _, _, ctrl = _controller_with_decay("contract_rough_decay", "RoughDecay", value)
    assert ctrl.edit_fraction(2) == frac and type(ctrl.edit_fraction(2)) is float


@pytest.mark.parametrize("score, what", [
    (lambda w: w.abs().flatten(), r"has shape \(640,\), not the weight's \(32, 20\)"),
    (lambda w: w.abs().detach().numpy(), r"returned a ndarray, not a torch.Tensor shaped like the weight's \(32, 20\)"),
    (lambda w: None, r"returned a NoneType, not a torch.Tensor shaped like the weight's \(32, 20\)"),
])
def test_scores_of_the_wrong_shape_or_type_are_refused_naming_what_came_back(score, what):
    """A numpy array or None was reported as 'has shape ndarray'."""
    @register_estimator("contract_wrong_shape", replace=True)
    class WrongShape(Estimator):
        needs_gradients = True

        def removal_cost(self, ctx):
            return score(ctx.weight)

        def restoration_gain(self, ctx):
            return ctx.w0.abs()

    model = _net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    conn = adaptive.Connectome(model)
    adaptive.Controller(conn, opt, policy="utility", estimator="contract_wrong_shape", density=0.5, update_every=2,
                        end_step=10, seed=0)
    masks = {n: m.clone() for n, m in conn.masks.items()}
    with pytest.raises(ValueError, match=rf"estimator 'contract_wrong_shape' \(WrongShape\)'s removal_cost \(removal "
                                         rf"cost\) for layer '0.weight' {what}: it must return one score per synapse"):
        _train(model, opt, 2)
    assert all(torch.equal(m, conn.masks[n]) for n, m in masks.items())


def test_complex_scores_are_refused_and_inf_is_taken():
    model = _net()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    conn = adaptive.Connectome(model)
    ctrl = adaptive.Controller(conn, opt, policy="utility", estimator="contract_bad_scores", density=0.5,
                               update_every=4, end_step=12, seed=0, budget="uniform")
    ctrl.drop_est.fill = "complex"
    with pytest.raises(ValueError, match=r"'contract_bad_scores'.*removal cost.*layer '0.weight' is complex"):
        _train(model, opt, 4)
    ctrl.drop_est.fill = float("-inf")  # -inf: the lowest cost, removed first; allowed
    _train(model, opt, 8)
    assert abs(conn.density() - 0.5) < 0.01


def test_scores_on_the_meta_device_are_refused_naming_it_and_nothing_is_edited():
    """A meta tensor (no values) failed inside the NaN check with 'Tensor.item() cannot be called on
    meta tensors', which named neither the estimator nor the fix."""
    model = _net()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    conn = adaptive.Connectome(model)
    ctrl = adaptive.Controller(conn, opt, policy="utility", estimator="contract_bad_scores", density=0.5,
                               update_every=2, end_step=12, seed=0)
    ctrl.drop_est.fill = "meta"
    masks = {n: m.clone() for n, m in conn.masks.items()}
    with pytest.raises(ValueError, match=r"'contract_bad_scores'.*removal cost.*layer '0.weight' is on the meta "
                                         r"device.*ctx.weight"):
        _train(model, opt, 2)
    assert all(torch.equal(m, conn.masks[n]) for n, m in masks.items()) and len(ctrl.events) == 1


def test_a_bad_plan_of_an_unregistered_policy_instance_names_its_class():
    """A policy instance never registered has the name '?', and the refusal named only that."""
    from adaptive.policies.base import EditPlan, Policy

    class PruneTwice(Policy):
        sparse_at_start = False
        needs_density = False

        def update(self, ctrl, step):
            live = ctrl.conn.masks["0.weight"].reshape(-1).nonzero().squeeze(1)
            return EditPlan(prune={"0.weight": live[[0, 0]]})

    conn = adaptive.Connectome(_net())
    ctrl = adaptive.Controller(conn, policy=PruneTwice(), update_every=1)
    with pytest.raises(ValueError, match=r"policy '\?' \(PruneTwice\) returned a bad EditPlan.*more than once"):
        ctrl.update()
    assert conn.density() == 1.0 and not ctrl.events


def test_the_events_of_an_unregistered_policy_instance_name_its_class():
    """A policy instance never registered logged its events as policy '?'."""
    from adaptive.policies.base import EditPlan, Policy

    class PruneOne(Policy):
        sparse_at_start = False
        needs_density = False

        def update(self, ctrl, step):
            live = ctrl.conn.masks["0.weight"].reshape(-1).nonzero().squeeze(1)
            return EditPlan(prune={"0.weight": live[:1]})

    conn = adaptive.Connectome(_net())
    ctrl = adaptive.Controller(conn, policy=PruneOne(), update_every=1)
    ctrl.update()
    assert [e["policy"] for e in ctrl.events] == ["PruneOne"] and conn.density() < 1.0


def test_built_in_estimators_give_no_nan_on_a_fresh_window():
    """A unit that never gets a gradient (dead ReLU: 0/0 in a signal-to-noise score) gives no NaN."""
    from adaptive.utility import estimator_names
    from adaptive.utility.base import _ESTIMATORS

    # the built-in ones only: another test's plugin estimator (one of removal costs alone, which
    # policy 'utility' refuses) stays registered in the process and failed this test after it
    for name in [n for n in estimator_names() if _ESTIMATORS[n].__module__.startswith("adaptive.utility.")]:
        model = _net()
        with torch.no_grad():
            model[0].bias[:8] = -100.0  # units 0-7 never fire: their gradients are exactly 0
        opt = torch.optim.SGD(model.parameters(), lr=0.01)
        conn = adaptive.Connectome(model)
        ctrl = adaptive.Controller(conn, opt, policy="utility", estimator=name, density=0.5,
                                   update_every=4, end_step=12, seed=0, budget="uniform")
        _train(model, opt, 12)  # raises if any update's scores hold NaN
        assert len([e for e in ctrl.events if e["kind"] == "update"]) >= 2, name


def test_a_model_builder_returning_no_module_is_a_type_error_naming_it():
    from adaptive.models import build_model, register_model

    @register_model("contract_not_a_module")
    def returns_a_function(num_classes=10, in_shape=(1, 8, 8)):
        return lambda x: x

    with pytest.raises(TypeError, match=r"model 'contract_not_a_module': its builder .*returns_a_function.* "
                                        r"returned builtins.function .*not a torch.nn.Module"):
        build_model("contract_not_a_module", num_classes=10, in_shape=(1, 8, 8))


def test_graphs_export_takes_a_format_a_plugin_registers_and_names_the_known_ones(tmp_path, capsys):
    """--format was an argparse choice fixed before plugins load: a plugin's writer worked with
    --out x.ext but --format ext was refused."""
    from graphs.cli import main

    _, run = _mlp_run(tmp_path)
    plugin = tmp_path / "contract_writer.py"
    plugin.write_text("import graphs\n\n@graphs.register_writer('.ctcsv', replace=True)\n"
                      "def write(g, path):\n    open(path, 'w').write('src,dst\\n')\n")
    assert main(["export", str(run), "--plugins", str(plugin), "--format", "ctcsv"]) == 0
    assert (run / "connectome_unit.ctcsv").read_text() == "src,dst\n"
    capsys.readouterr()
    assert main(["export", str(run), "--plugins", str(plugin), "--format", "xml"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --format 'xml'") and err.count("\n") == 1, err
    assert "ctcsv, gexf, graphml, json, pt (ctcsv: registered by a plugin)" in err
    with pytest.raises(SystemExit):
        main(["export", "--help"])
    assert "graphml, gexf, json, or pt" in " ".join(capsys.readouterr().out.split())


RUN_FILES = ["config.yaml", "connectome.safetensors", "model_state.pt"]


def _mlp_run(tmp_path):
    """A run folder (RUN_FILES) of a small MLP that the graphs command line rebuilds."""
    from adaptive.models import build_model

    torch.manual_seed(0)
    conn = adaptive.Connectome(build_model("mlp", hidden=(8,), in_shape=(1, 4, 4)))
    run = tmp_path / "run"
    conn.save(run / "connectome.safetensors")
    torch.save(conn.dense_state_dict(), run / "model_state.pt")
    (run / "config.yaml").write_text("model:\n  name: mlp\n  hidden: [8]\n  in_shape: [1, 4, 4]\n")
    return conn, run


WRITER_BUGS = {  # a plugin writer's body -> what the error says (graphs.write and the command line)
    "raises": ("open(path, 'w').write('half')\n    raise KeyError('no column')",
               r"failed writing .*KeyError: 'no column'; nothing was written"),
    "writes_nothing": ("pass", r"wrote no file for .*writes the file at the path it is given"),
    "returns_text": ("return 'src,dst'", r"wrote no file .*it returned a str \(what it returns is ignored; an exporter"),
    "writes_a_folder": ("import os; os.mkdir(path)", r"wrote a folder, not a file"),
    # a folder made before raising hid the error behind IsADirectoryError, and stayed; so did a link
    "makes_a_folder_then_raises": ("import os; os.mkdir(path)\n    raise KeyError('no column')",
                                   r"failed writing .*KeyError: 'no column'; nothing was written"),
    "links_to_nowhere": ("import os; os.symlink(path + '.nowhere', path)", r"wrote no file for"),
}


@pytest.mark.parametrize("bug", sorted(WRITER_BUGS))
def test_a_graph_writer_that_breaks_its_contract_is_named_and_leaves_no_file(bug, tmp_path, capsys):
    """A plugin writer that raised was reported by the command line as a failure to rebuild the
    model (check --model ...); one that wrote nothing, or returned its text, as os.replace's
    FileNotFoundError on a temporary name; one that made a folder as IsADirectoryError, the folder
    left behind. Each is a PluginError naming the writer, and the folder holds what it held."""
    import graphs
    from adaptive.plugins import PluginError
    from graphs.cli import main

    conn, run = _mlp_run(tmp_path)
    body, says = WRITER_BUGS[bug]
    plugin = tmp_path / f"writer_{bug}.py"
    plugin.write_text(f"import graphs\n\n@graphs.register_writer('.{bug}', replace=True)\ndef w(g, path):\n    {body}\n")
    (run / f"old.{bug}").write_text("old")
    g = graphs.build(conn, "unit")
    try:
        assert main(["export", str(run), "--plugins", str(plugin), "--out", str(run / f"old.{bug}")]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"error: graph writer '.{bug}' (w in plugin {plugin.resolve()}, line 3) "), err
        assert re.search(says, err), err
        assert err.count("\n") == 1 and "rebuilding or tracing" not in err
        with pytest.raises(PluginError, match=says):
            graphs.write(g, tmp_path / f"new.{bug}")
    finally:
        graphs.WRITERS.pop(f".{bug}", None)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run", plugin.name]
    assert sorted(p.name for p in run.iterdir()) == [*RUN_FILES, f"old.{bug}"]
    assert (run / f"old.{bug}").read_text() == "old"


def test_a_graph_writers_oserror_after_making_a_folder_is_raised_as_it_is_and_the_folder_removed(tmp_path):
    """It was replaced by atomic_path's IsADirectoryError on the temporary name, the folder left."""
    import graphs

    @graphs.register_writer(".oserr", replace=True)
    def w(g, path):
        import os
        os.mkdir(path)
        raise PermissionError("no room")

    g = graphs.build(adaptive.Connectome(torch.nn.Sequential(torch.nn.Linear(4, 3))), "unit",
                     example_input=torch.randn(2, 4))
    try:
        with pytest.raises(PermissionError, match="no room"):
            graphs.write(g, tmp_path / "g.oserr")
    finally:
        graphs.WRITERS.pop(".oserr")
    assert list(tmp_path.iterdir()) == []


def test_an_exporter_returning_nothing_is_refused_naming_it():
    import graphs
    from adaptive.plugins import PluginError

    g = graphs.build(adaptive.Connectome(torch.nn.Sequential(torch.nn.Linear(4, 3))), "unit",
                     example_input=torch.randn(2, 4))
    graphs.register_exporter("contract_none", replace=True)(lambda g: None)
    try:
        with pytest.raises(PluginError, match=r"graph exporter 'contract_none' \(.*<lambda> \(line \d+\)\) returned None"):
            graphs.export(g, "contract_none")
    finally:
        graphs.EXPORTERS.pop("contract_none")


def test_a_plugin_that_fails_to_load_is_not_called_a_failure_to_rebuild_the_model(tmp_path, capsys):
    """A plugin registering a built-in writer's extension: the error said so, then blamed the model."""
    from graphs.cli import main

    plugin = tmp_path / "clash.py"
    plugin.write_text("import graphs\n\n@graphs.register_writer('.json')\ndef w(g, path):\n    pass\n")
    _, run = _mlp_run(tmp_path)
    assert main(["export", str(run), "--plugins", str(plugin), "--format", "json"]) == 2
    err = capsys.readouterr().err
    assert "graph writer '.json' is already registered" in err and "rebuilding or tracing" not in err, err
    assert sorted(p.name for p in run.iterdir()) == RUN_FILES


class _Rows(Granularity):
    """Pairs of rows (a correct plugin granularity); ``bug`` spoils one of its three parts."""
    bug = None

    def __init__(self, spec):
        self.spec = spec

    def ensemble_shape(self, shape):
        return (shape[0] // 2,)

    def pool(self, scores, how="sum"):
        m = scores.reshape(scores.shape[0] // 2, -1)
        if self.spec == "ctrows_wrongpool":
            return scores.reshape(scores.shape[0], -1)  # forgot to reduce
        if self.spec == "ctrows_doublesum" and how == "sum":
            return 2 * m.sum(1)  # sizes twice the synapses the ensembles hold
        return {"sum": m.sum, "mean": m.mean, "max": m.amax, "min": m.amin}[how](1)

    def expand(self, values, shape):
        if self.spec == "ctrows_wrongexpand":
            return values.reshape(-1, 1)  # forgot to broadcast
        if self.spec == "ctrows_inconsistent":
            values = torch.cat([values, values])  # ensemble i -> rows i and i + n/2, not 2i and 2i+1
        else:
            values = values.repeat_interleave(2)
        if self.spec == "ctrows_untiled":  # the odd rows in no ensemble: max-pooling still gives the mask back
            values = values & (torch.arange(values.numel()) % 2 == 0)
        return values.reshape(shape[0], *([1] * (len(shape) - 1))).expand(shape)


@pytest.mark.parametrize("spec, what", [
    ("ctrows_wrongpool", r"pool\(\) returns \(32, 20\), but ensemble_shape\(\) says \(16,\)"),
    ("ctrows_wrongexpand", r"expand\(\) of an ensemble mask of shape \(16,\) returns \(16, 1\), not the weight's shape"),
    ("ctrows_inconsistent", r"pool\(expand\(mask\), 'max'\) does not give a random ensemble mask back"),
    ("ctrows_untiled", r"320 of 640 synapses are in no ensemble .* the ensembles must tile the weight"),
    ("ctrows_doublesum", r"the ensembles' sizes, pool\(\) of a weight of ones \('sum'\), add up to 1280 synapses, not the weight's 640"),
])
def test_a_plugin_granularity_that_is_not_self_consistent_is_refused_when_the_connectome_is_built(spec, what):
    from adaptive.ensembles import register_granularity
    register_granularity(spec, replace=True)(_Rows)
    with pytest.raises(ValueError, match=rf"granularity '{spec}' \(_Rows\) is not self-consistent on layer "
                                         rf"'0.weight' \(weight shape \(32, 20\)\): {what}"):
        adaptive.Connectome(_net(), ensemble=spec)


def test_a_self_consistent_plugin_granularity_and_every_built_in_pass_the_check():
    from adaptive.ensembles import check_granularity, get_granularity, register_granularity
    register_granularity("ctrows", replace=True)(_Rows)
    model = _net()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    conn = adaptive.Connectome(model, ensemble="ctrows")
    adaptive.Controller(conn, opt, policy="rigl", density=0.5, update_every=4, end_step=12, seed=0, budget="uniform")
    _train(model, opt, 12)
    m = conn.masks["0.weight"]
    assert torch.equal(m[0::2], m[1::2]) and abs(conn.density() - 0.5) < 0.05
    shapes = [(32, 20), (7, 5), (1, 1), (64, 3, 3, 3), (10, 4, 5, 5), (6, 2, 3, 3, 3), (13, 1, 7, 7)]
    for spec in ["synapse", "kernel", "neuron", "block:4x4", "block:3x2", "block:1x8", "2:4", "1:3"]:
        for shape in shapes:
            check_granularity(get_granularity(spec), "layer", shape, builtin=True)


@pytest.mark.parametrize("spec", ["synapse", "kernel", "neuron", "block:4x4", "block:3x2", "block:5x1", "2:4", "3:7"])
def test_every_built_in_granularity_tiles_transposed_grouped_recurrent_and_attention_weights(spec):
    """The tiling check (every synapse in exactly one ensemble) holds for the built-ins as the
    connectome applies them: through TransposedLayout, on grouped and depthwise convolutions with odd
    sizes, ragged blocks and short last n:m groups, on LSTM (projections), GRU and attention weights."""
    from adaptive.ensembles import check_granularity

    model = torch.nn.ModuleDict(dict(
        g=torch.nn.Conv2d(6, 9, (3, 5), groups=3), dw=torch.nn.Conv2d(6, 6, 3, groups=6),
        t=torch.nn.ConvTranspose2d(6, 9, 3, groups=3), t1=torch.nn.ConvTranspose1d(5, 7, 4),
        t3=torch.nn.ConvTranspose3d(4, 6, (2, 3, 1), groups=2), c3=torch.nn.Conv3d(2, 5, 3),
        lstm=torch.nn.LSTM(13, 7, bidirectional=True, proj_size=3), gru=torch.nn.GRU(5, 9),
        attn=torch.nn.MultiheadAttention(12, 3, kdim=5, vdim=7), fc=torch.nn.Linear(17, 13)))
    conn = adaptive.Connectome(model, ensemble=spec)
    assert {"t.weight", "lstm.weight_hr_l0", "attn.k_proj_weight"} <= set(conn.granularities)
    for n, g in conn.granularities.items():
        check_granularity(g, n, conn.masks[n].shape, builtin=True)


def test_a_whole_layer_plugin_granularity_passes_the_check_on_a_layer_float32_cannot_count_exactly():
    """pool() sums float32 ones: a whole-layer ensemble of 4097 x 4097 synapses (past 2**24, odd)
    counts 16785408, and the tiling check refused the plugin as 'add up to 1.67854e+07 synapses'."""
    from adaptive.ensembles import check_granularity

    class WholeLayer(Granularity):
        spec = "ct_whole_layer"

        def ensemble_shape(self, shape):
            return (1,)

        def pool(self, scores, how="sum"):
            return {"sum": scores.sum, "mean": scores.mean, "max": scores.amax, "min": scores.amin}[how]().reshape(1)

        def expand(self, values, shape):
            return values.reshape((1,) * len(shape)).expand(shape)

    shape = (4097, 4097)
    assert float(WholeLayer().pool(torch.ones(shape))) != 4097 * 4097  # what the check is given
    check_granularity(WholeLayer(), "big", shape)


def test_a_spec_two_patterns_match_and_a_factory_returning_no_granularity_are_refused(monkeypatch):
    """A plugin pattern matching a built-in spec ('ker.*' matches 'kernel') lost it silently to the
    pattern registered first; a factory's None went on as the layer's granularity."""
    from adaptive import ensembles
    from adaptive.ensembles import KernelGranularity, get_granularity, register_granularity

    monkeypatch.setattr(ensembles, "_REGISTRY", dict(ensembles._REGISTRY))  # undone after the test
    register_granularity("ker.*")(lambda s: KernelGranularity())
    with pytest.raises(ValueError, match=r"ensemble spec 'kernel' matches more than one registered pattern, "
                                         r"\['kernel', 'ker\.\*'\] .*: register the plugin's pattern so that"):
        get_granularity("kernel")
    assert get_granularity("kernels") == KernelGranularity()  # only the plugin's pattern matches it
    monkeypatch.delitem(ensembles._REGISTRY, "ker.*")  # a connectome saved under it, loaded without the plugin
    with pytest.raises(ValueError, match=r"unknown ensemble spec 'kernels': .* a plugin's granularity is known once "
                                         r"its file is loaded \(--plugins, adaptive.plugins.load_plugin\)"):
        get_granularity("kernels")
    register_granularity("ctnone")(lambda s: None)
    with pytest.raises(TypeError, match="pattern 'ctnone' .* returned NoneType for spec 'ctnone', not a Granularity"):
        adaptive.Connectome(_net(), ensemble="ctnone")


def test_a_dataclass_plugin_granularity_which_does_not_hash_is_checked_too():
    """A dataclass with eq=True has no __hash__: the per-(granularity, shape) memo of the check
    keyed by the granularity itself raised 'unhashable type' when the connectome was built."""
    import dataclasses

    from adaptive.ensembles import NeuronGranularity, register_granularity

    @dataclasses.dataclass
    class Units(NeuronGranularity):
        k: int = 1

    register_granularity("ct_dataclass_units", replace=True)(lambda s: Units())
    model = _net()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    conn = adaptive.Connectome(model, ensemble="ct_dataclass_units")
    assert all(type(g) is Units for g in conn.granularities.values())
    adaptive.Controller(conn, opt, policy="rigl", density=0.5, update_every=4, end_step=12, seed=0, budget="uniform")
    _train(model, opt, 12)
    m = conn.masks["0.weight"]  # whole units (rows) present or absent, half of them
    assert bool((m.all(1) | ~m.any(1)).all()) and abs(conn.density() - 0.5) < 0.05


@pytest.mark.parametrize("policy", ["gmp", "magnitude"])
def test_a_diverged_run_under_an_estimator_reading_no_gradient_skips_its_update_naming_the_weights(policy):
    """NaN weights (a diverged run) gave magnitude NaN scores, and the update was refused with advice to
    fix the built-in estimator: now the update is skipped, as a window of NaN gradients is, with a
    warning naming the weights, and a direct scores() call names them as the cause."""
    model = _net()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    conn = adaptive.Connectome(model)
    ctrl = adaptive.Controller(conn, opt, policy=policy, estimator="magnitude", density=0.5, update_every=4,
                               end_step=40, seed=0)
    _train(model, opt, 3)
    with torch.no_grad():
        model[0].weight[0, 0] = float("nan")  # the 4th step spreads it to layer 2
    before = {n: m.clone() for n, m in conn.masks.items()}
    with pytest.warns(UserWarning, match=r"step 4: the weights of 2 layer\(s\) \(0.weight, 2.weight\) hold NaN or inf"):
        _train(model, opt, 1)
    assert ctrl.nonfinite_windows == 1 and not [e for e in ctrl.events if e["kind"] == "update"]
    assert all(torch.equal(before[n], conn.masks[n]) for n in before)
    with pytest.raises(ValueError, match=r"because the layer's weights hold \d+ NaN or inf values: the run diverged"):
        ctrl.scores("cost", names=["0.weight"])


@pytest.mark.parametrize("policy", ["rigl", "utility", "balanced"])
def test_init_magnitude_over_nan_weights_is_refused_naming_the_layers_not_ranked(policy):
    """init='magnitude' pooled |w| straight into the initial plan, unchecked: a NaN weight (nan_to_num
    sorts it past +inf) was silently ranked, pruned, and zeroed, as if the model were sound, where the
    magnitude policy's and init='estimator''s scores are refused. Now refused too, before any edit."""
    model = _net()
    with torch.no_grad():
        model[0].weight[3, 4] = float("nan")
        model[2].weight[1, 1] = float("inf")
    conn = adaptive.Connectome(model)
    with pytest.raises(ValueError, match=r"init='magnitude' .* the weights of 2 layer\(s\) hold NaN or inf: "
                                         r"'0.weight' \(1\), '2.weight' \(1\).* use init='random'"):
        adaptive.Controller(conn, policy=policy, density=0.3, init="magnitude")
    assert conn.density() == 1.0 and bool(model[0].weight[3, 4].isnan()) and not conn._controllers  # untouched
    with torch.no_grad():
        model[0].weight[3, 4] = 0.5
        model[2].weight[1, 1] = 0.5
    adaptive.Controller(conn, policy=policy, density=0.3, init="magnitude")  # finite weights: built as before
    assert abs(conn.density() - 0.3) < 0.01


def test_an_ensemble_whose_scores_hold_both_infinities_is_refused_not_pooled_to_nan():
    """+inf and -inf in one ensemble sum to NaN after pooling, which the per-synapse check passed."""
    model = _net()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    conn = adaptive.Connectome(model, ensemble="neuron")
    ctrl = adaptive.Controller(conn, opt, policy="utility", estimator="contract_bad_scores", density=0.5,
                               update_every=4, end_step=12, seed=0, budget="uniform")
    _train(model, opt, 3)
    before = {n: m.clone() for n, m in conn.masks.items()}
    ctrl.drop_est.fill = float("inf")  # rows 0-15 +inf ...
    orig = BadScores._score

    def both(self, ctx, w, side):
        s = orig(self, ctx, w, side)
        if ctx.name == "0.weight" and side == "cost":
            s[:4, 0] = float("-inf")  # ... but one synapse of units 0-3 -inf
        return s

    BadScores._score = both
    try:
        with pytest.raises(ValueError, match=r"sums to NaN in 4 of 32 ensembles \(neuron\): each holds both \+inf "
                                             r"and -inf"):
            _train(model, opt, 1)
    finally:
        BadScores._score = orig
    assert all(torch.equal(before[n], conn.masks[n]) for n in before)


class _RunningMean(Estimator):
    """A plugin estimator that keeps a running mean of the gradient per layer, with no state_dict."""
    needs_gradients = True

    def __init__(self):
        self.running = {}

    def removal_cost(self, ctx):
        g = ctx.stats.mean(ctx.name)
        self.running[ctx.name] = 0.5 * self.running.get(ctx.name, g) + 0.5 * g
        return (self.running[ctx.name] * ctx.weight).abs()

    def restoration_gain(self, ctx):
        return (self.running.get(ctx.name, ctx.stats.mean(ctx.name)) * ctx.w0).abs()


def _driven(ctrl, model, steps=4):
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        model.zero_grad()
        F.cross_entropy(model(torch.randn(16, 20, generator=g)), torch.randint(0, 10, (16,), generator=g)).backward()
        ctrl.observe()
        ctrl.step()
    return ctrl


def test_a_plugin_keeping_tensors_without_a_state_dict_is_warned_of_once_at_save_time():
    model = _net()
    ctrl = _driven(adaptive.Controller(adaptive.Connectome(model), policy="utility", estimator=_RunningMean(),
                                       density=0.5, update_every=2), model)
    with pytest.warns(UserWarning, match=r"the estimator .*_RunningMean keeps tensors in its attribute\(s\) \['running'\] but has no "
                                         r"state_dict.*add state_dict\(\) and load_state_dict\(\)"):
        ctrl.state_dict()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ctrl.state_dict()  # once


def test_a_plugin_with_a_state_dict_or_no_tensors_is_not_warned_of():
    class Saved(_RunningMean):
        def state_dict(self):
            return {"running": dict(self.running)}

        def load_state_dict(self, sd):
            self.running = dict(sd.get("running", {}))

    class Fresh(_RunningMean):  # nothing kept yet: nothing to lose
        def removal_cost(self, ctx):
            return (ctx.stats.mean(ctx.name) * ctx.weight).abs()

    for est, kept in ((Saved(), ["0.weight", "2.weight"]), (Fresh(), [])):
        model = _net()
        ctrl = _driven(adaptive.Controller(adaptive.Connectome(model), policy="utility", estimator=est, density=0.5,
                                           update_every=2), model)
        assert sorted(est.running) == kept  # Saved does keep tensors: its state_dict is why it is not warned of
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            saved = ctrl.state_dict()["estimators"]["drop"]
        assert sorted(saved.get("running", {})) == kept and all(
            torch.equal(saved["running"][n], est.running[n]) for n in kept)  # ... and what it keeps is saved


@pytest.mark.parametrize("mode", ["train", "mask_only"])
def test_no_built_in_policy_or_estimator_is_warned_of_at_save_time(mode):
    from adaptive.policies.base import _POLICIES
    from adaptive.utility.base import _ESTIMATORS

    def built_in(table):  # (other tests register their own)
        return sorted(n for n, cls in table.items() if cls.__module__.startswith("adaptive."))

    built = 0
    for policy in built_in(_POLICIES):
        for estimator in [None] + built_in(_ESTIMATORS):
            model = _net()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # (a short run's own warnings)
                try:
                    ctrl = adaptive.Controller(adaptive.Connectome(model, mode=mode), policy=policy, density=0.5,
                                               update_every=2, end_step=4,
                                               **({} if estimator is None else {"estimator": estimator}))
                except ValueError:  # a policy that takes no estimator, or fixes its own
                    continue
                _driven(ctrl, model)
            built += 1
            with warnings.catch_warnings():
                warnings.simplefilter("error")
                ctrl.state_dict()
    assert built > 40


def test_a_plugin_policy_keeping_tensors_without_a_state_dict_is_warned_of_naming_it():
    from adaptive.policies.swap import SET

    class CountingSET(SET):  # counts each layer's updates in a tensor it never saves
        def update(self, ctrl, step):
            self.seen = {n: self.__dict__.get("seen", {}).get(n, torch.zeros(())) + 1 for n in ctrl.editable()}
            return super().update(ctrl, step)

    model = _net()
    ctrl = _driven(adaptive.Controller(adaptive.Connectome(model), policy=CountingSET(), density=0.5, update_every=2),
                   model)
    with pytest.warns(UserWarning, match=r"the policy .*CountingSET keeps tensors in its attribute\(s\) "
                                         r"\['seen'\] but has no state_dict") as record:
        ctrl.state_dict()
    assert len(record) == 1


def test_the_warning_names_a_plugin_files_estimator_by_its_name_and_file(tmp_path):
    from adaptive.plugins import load_plugin
    from adaptive.utility.base import _ESTIMATORS

    path = tmp_path / "running_ext.py"
    path.write_text("from adaptive.utility import Estimator, register_estimator\n\n\n"
                    "@register_estimator('running_mean_ext')\nclass Running(Estimator):\n"
                    "    needs_gradients = True\n\n"
                    "    def removal_cost(self, ctx):\n"
                    "        self.last = ctx.stats.mean(ctx.name)\n"
                    "        return (self.last * ctx.weight).abs()\n\n"
                    "    def restoration_gain(self, ctx):\n"
                    "        return (ctx.stats.mean(ctx.name) * ctx.w0).abs()\n")
    load_plugin(str(path))
    try:
        model = _net()
        ctrl = _driven(adaptive.Controller(adaptive.Connectome(model), policy="utility", estimator="running_mean_ext",
                                           density=0.5, update_every=2), model)
        with pytest.warns(UserWarning, match=re.escape(f"the estimator Running in plugin {path.resolve()} "
                                                       "('running_mean_ext') keeps tensors")):
            ctrl.state_dict()
    finally:
        _ESTIMATORS.pop("running_mean_ext", None)


class _NestedRunningMean(_RunningMean):
    """Keeps its tensors one container deeper: per layer, a dict of moments, or a list of the last gradients."""

    def __init__(self, nest):
        super().__init__()
        self.nest = nest
        self.moments = {}

    def removal_cost(self, ctx):
        g = ctx.stats.mean(ctx.name)
        self.moments[ctx.name] = {"m": g.clone()} if self.nest == "dict" else [g.clone()]
        return (g * ctx.weight).abs()


@pytest.mark.parametrize("nest", ["dict", "list"])
def test_a_plugin_keeping_tensors_in_nested_containers_is_warned_of(nest):
    """Per-layer state of several tensors ({layer: {"m": t, "v": t}}, {layer: [t, ...]}) is the usual
    shape of a plugin's state: tensors a container deeper are left out of checkpoints all the same."""
    model = _net()
    ctrl = _driven(adaptive.Controller(adaptive.Connectome(model), policy="utility", estimator=_NestedRunningMean(nest),
                                       density=0.5, update_every=2), model)
    with pytest.warns(UserWarning, match=r"_NestedRunningMean keeps tensors in its attribute\(s\) \['moments'\]"):
        ctrl.state_dict()


def test_every_estimator_flag_is_documented_with_a_default_that_warns_of_nothing():
    """The class flags the controller reads on an estimator (needs_fisher, needs_spread, scores_by_w0,
    signed_cost, ...) are the plugin contract's: docs/python_api.md names each of them, where only
    needs_gradients was named. Each is False on Estimator, so a class of one's own that sets none is
    warned of nothing: in train mode, growing, updating at every step, valuing absent synapses by ctx.w0."""
    from pathlib import Path

    flags = sorted(k for k, v in vars(Estimator).items() if isinstance(v, bool))
    assert {"needs_gradients", "needs_fisher", "needs_spread", "scores_by_w0", "signed_cost"} <= set(flags), flags
    assert not any(getattr(Estimator, k) for k in flags)
    page = (Path(__file__).resolve().parents[1] / "docs" / "python_api.md").read_text()
    assert [k for k in flags if f"`{k}`" not in page] == []

    class OwnSnip(Estimator):
        needs_gradients = True

        def removal_cost(self, ctx):
            return (ctx.stats.mean(ctx.name) * ctx.weight.detach()).abs()

        def restoration_gain(self, ctx):
            return (ctx.stats.mean(ctx.name) * ctx.w0).abs()

    model = _net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        adaptive.Controller(adaptive.Connectome(model), opt, policy="utility", estimator=OwnSnip(), density=0.5,
                            update_every=1, end_step=4, seed=0)
        _train(model, opt, 3)
