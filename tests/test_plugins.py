"""--plugins: a user's own file registers a model and an estimator, and both recipes use them by
name; a missing or broken plugin is one clear error before anything runs."""
import sys
import textwrap

import pytest

from adaptive.models import available_models
from adaptive.plugins import PluginError, load_plugin, load_plugins
from adaptive.utility.base import estimator_names
from _scripts import CHILD_TIMEOUT, load_script  # noqa: E402

PLUGIN = textwrap.dedent('''
    import torch
    from adaptive.models import register_model
    from adaptive.utility import Estimator, register_estimator

    LOADS = globals().get("LOADS", 0) + 1

    @register_model("PluginNet")
    def plugin_net(num_classes=10, in_shape=(1, 8, 8)):
        n = 1
        for s in in_shape:
            n *= s
        return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(n, 24), torch.nn.ReLU(),
                                   torch.nn.Linear(24, num_classes))

    @register_estimator("plugin_snip")
    class PluginSnip(Estimator):
        needs_gradients = True

        def removal_cost(self, ctx):
            return (ctx.stats.mean(ctx.name) * ctx.weight.detach()).abs()

        def restoration_gain(self, ctx):
            return (ctx.stats.mean(ctx.name) * ctx.w0).abs()
''')


@pytest.fixture
def plugin(tmp_path):
    path = tmp_path / "my_ext.py"
    path.write_text(PLUGIN)
    return path


def test_a_plugin_file_registers_its_names_once_per_process(plugin):
    mod = load_plugin(str(plugin))
    assert "pluginnet" in available_models() and "plugin_snip" in estimator_names()
    assert load_plugins([str(plugin)])[0] is mod and mod.LOADS == 1  # not executed again


def test_missing_and_broken_plugins_are_named(tmp_path):
    with pytest.raises(PluginError, match="plugin file .*nowhere.py not found"):
        load_plugin(str(tmp_path / "nowhere.py"))
    with pytest.raises(PluginError, match="plugin module 'no_such_module_xyz' not found"):
        load_plugin("no_such_module_xyz")
    bad = tmp_path / "bad_ext.py"
    bad.write_text("import torch\nraise RuntimeError('boom')\n")
    with pytest.raises(PluginError, match="plugin .*bad_ext.py failed while loading: RuntimeError: boom"):
        load_plugin(str(bad))
    assert "adaptive_plugin_bad_ext" not in sys.modules


def test_adaptive_recipe_trains_a_plugin_model_with_a_plugin_estimator(plugin, tmp_path, monkeypatch):
    import subprocess

    from _scripts import ROOT

    R = load_script("recipes/adaptive.py", "recipe_adaptive_plugins")
    monkeypatch.chdir(tmp_path)  # the plugin given by a relative path
    res = R.main(["--plugins", "my_ext.py", "--model", "PluginNet", "--policy", "utility", "--estimator",
                  "plugin_snip", "--density", "0.3", "--max_steps", "30", "--update_every", "10", "--threads", "1",
                  "--progress", "false", "--figures", "false", "--output_dir", str(tmp_path / "run")])
    assert [m.out_features for m in res.model.modules() if hasattr(m, "out_features")] == [24, 10]
    assert res.conn.density() == pytest.approx(0.3, abs=0.01)
    # config.yaml names the plugin by its absolute path: python -m graphs, run from elsewhere in a fresh
    # process, imports it from there to rebuild the plugin's model
    assert str(plugin.resolve()) in (tmp_path / "run" / "config.yaml").read_text()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    r = subprocess.run([sys.executable, "-m", "graphs", "export", str(tmp_path / "run"), "--format", "json",
                        "--out", str(elsewhere / "g.json")], cwd=elsewhere, capture_output=True, text=True,
                       env={**__import__("os").environ, "PYTHONPATH": str(ROOT)}, timeout=CHILD_TIMEOUT)
    assert r.returncode == 0, r.stderr[-2000:]
    assert (elsewhere / "g.json").stat().st_size > 0


def test_adaptive_recipe_refuses_a_missing_plugin_before_running(tmp_path, capsys):
    R = load_script("recipes/adaptive.py", "recipe_adaptive_plugins")
    with pytest.raises(SystemExit):
        R.main(["--plugins", str(tmp_path / "gone.py"), "--output_dir", str(tmp_path / "run")])
    assert "gone.py not found" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_prune_pretrained_prunes_a_plugin_model(plugin, tmp_path):
    P = load_script("recipes/prune_pretrained.py", "prune_pretrained_plugins")
    summary = P.main(["--plugins", str(plugin), "--model", "PluginNet", "--dataset", "fake", "--remove", "0.25",
                      "--subset", "128", "--batch-size", "32", "--eval-batch-size", "64", "--passes", "0.5",
                      "--eval-every", "2", "--train-eval-batches", "1", "--no-progress",
                      "--output_dir", str(tmp_path / "pp")])
    row = next(r for r in summary["rows"] if r["target"] == "0.25")
    assert row["changed"] == 0 and row["fraction"] == pytest.approx(0.25, abs=1e-3)
    with pytest.raises(SystemExit, match="plugin module 'nope_ext' not found"):
        P.parse_args(["--plugins", "nope_ext"])
    # a comma-separated list, as recipes/adaptive.py takes it, works here too
    assert P.parse_args(["--plugins", f"{plugin},{plugin}"]).plugins == [str(plugin.resolve())] * 2


def test_diagnostics_reads_a_plugin_model(plugin, tmp_path, capsys):
    D = load_script("recipes/diagnostics.py", "diagnostics_plugins")
    D.main(["collinearity", "--plugins", str(plugin), "--model", "PluginNet", "--dataset", "digits",
            "--batch_size", "64", "--seed", "0", "--train_steps", "3", "--batches", "3", "--grad_batch_size", "32",
            "--output_dir", str(tmp_path)])
    assert "training PluginNet from scratch" in capsys.readouterr().out
    assert (tmp_path / "collinearity_layers.csv").read_text().count("\n") >= 2  # a header and its two layers
    with pytest.raises(SystemExit, match="plugin module 'nope_ext' not found"):
        D.main(["collinearity", "--plugins", "nope_ext", "--output_dir", str(tmp_path)])


def test_two_processes_both_load_the_plugin_and_agree(plugin, tmp_path):
    import json
    import os

    from _ports import launch_two
    from _scripts import ROOT

    env = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="", MPLBACKEND="Agg")
    r = launch_two([ROOT / "recipes" / "adaptive.py", "--plugins", plugin, "--model", "PluginNet", "--estimator",
                    "plugin_snip", "--max_steps", "20", "--update_every", "10", "--threads", "1", "--progress",
                    "false", "--figures", "false", "--output_dir", tmp_path / "run"], env=env, cwd=ROOT)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    hashes = summary["mask_hash_per_process"]
    assert summary["processes"] == 2 and len(hashes) == 2 and hashes[0] == hashes[1]


def test_a_plugin_that_fails_halfway_registers_nothing(tmp_path):
    half = tmp_path / "half_ext.py"
    half.write_text(textwrap.dedent('''
        import torch
        from adaptive.models import register_model
        from adaptive.utility import Estimator, register_estimator

        @register_model("half_net")
        def half_net(num_classes=10, in_shape=(1, 8, 8)):
            return torch.nn.Linear(1, num_classes)

        @register_estimator("magnitude", replace=True)  # even a replaced built-in comes back
        class Other(Estimator):
            def removal_cost(self, ctx):
                return ctx.weight.abs()

        raise RuntimeError("boom after registering")
    '''))
    from adaptive.utility import get_estimator

    builtin = type(get_estimator("magnitude"))
    with pytest.raises(PluginError, match="boom after registering"):
        load_plugin(str(half))
    assert "half_net" not in available_models() and type(get_estimator("magnitude")) is builtin


ROW_LSTM = textwrap.dedent('''
    import torch
    from adaptive.models import register_model

    class RowLSTM(torch.nn.Module):
        """Reads an image row by row: its first weight is no clue to its input's shape."""

        def __init__(self, num_classes, in_shape):
            super().__init__()
            c, h, w = in_shape
            self.rnn = torch.nn.LSTM(c * w, 8, batch_first=True)
            self.head = torch.nn.Linear(8, num_classes)

        def forward(self, x):
            b, c, h, w = x.shape
            return self.head(self.rnn(x.permute(0, 2, 1, 3).reshape(b, h, c * w))[0][:, -1])

    @register_model("row_lstm_plugin")
    def row_lstm(num_classes=10, in_shape=(1, 8, 8)):
        return RowLSTM(num_classes, in_shape)
''')


def test_graphs_report_feeds_a_rebuilt_model_its_data_shape(tmp_path):
    from graphs.cli import main as graphs_main

    (tmp_path / "row_ext.py").write_text(ROW_LSTM)
    R = load_script("recipes/adaptive.py", "recipe_adaptive_plugins")
    res = R.main(["--plugins", str(tmp_path / "row_ext.py"), "--model", "row_lstm_plugin", "--density", "0.5",
                  "--max_steps", "5", "--threads", "1", "--progress", "false", "--figures", "false",
                  "--output_dir", str(tmp_path / "run")])
    assert graphs_main(["report", str(tmp_path / "run"), "--out", str(tmp_path / "report")]) == 0
    import json

    summary = json.loads((tmp_path / "report" / "summary.json").read_text())
    assert summary["live_synapses"] == res.conn.num_live() and summary["state_nodes"] == 8


def test_adaptive_resume_without_the_runs_plugin_names_it(tmp_path):
    """recipes/adaptive.py --resume of a run started with --plugins: without them a name the plugin
    registers was refused as unknown, and a recorded plugin file since moved as not found, neither
    naming the plugins the run's config.yaml records (as prune_pretrained's resume does). A run
    that recorded none gets no such mention."""
    import yaml

    R = load_script("recipes/adaptive.py", "recipe_adaptive_plugins")
    out, plugin = tmp_path / "run", tmp_path / "resume_ext.py"
    out.mkdir()
    plugin.write_text("# registers 'resume_plugin_name'\n")
    settings = {"model": "mlp", "dataset": "digits", "output_dir": str(out), "estimator": "resume_plugin_name"}
    (out / "config.yaml").write_text(yaml.safe_dump({**settings, "plugins": [str(plugin)]}))
    for resume in ({"resume": "latest", "output_dir": str(out)}, {"resume": str(out)}):
        how = resume["resume"]
        with pytest.raises(ValueError, match=rf"unknown estimator .*; the run in {out} was started with --plugins "
                                             rf"{plugin} \(its config.yaml records them\): give them again with "
                                             rf"--resume {how}, or --config {out / 'config.yaml'} --resume {how} for"):
            R.RunConfig(estimator="resume_plugin_name", **resume)
    plugin.unlink()  # moved since
    with pytest.raises(ValueError, match=rf"plugin file {plugin} not found: .*; the run in {out} records it in "
                                         rf"{out / 'config.yaml'}: put the file back, or give its new path with --plugins"):
        R.RunConfig(resume="latest", output_dir=str(out), estimator="resume_plugin_name", plugins=[str(plugin)])
    (out / "config.yaml").write_text(yaml.safe_dump(settings))  # a run that had none
    with pytest.raises(ValueError, match="unknown estimator") as e:
        R.RunConfig(resume="latest", output_dir=str(out), estimator="resume_plugin_name")
    assert "the run in" not in str(e.value) and "records" not in str(e.value)


def test_errors_name_a_plugin_function_by_its_file_and_line(tmp_path):
    """A plugin file is loaded as a module named ``adaptive_plugin_<stem>_<hash>``: errors named a plugin's
    function by that name (``adaptive_plugin_clash_a_1f2e3d4c.build``), which is nowhere in the user's files.
    They name the file's path and the function's line. A copy of the same file loaded from another path is still
    the same definition (no clash)."""
    from adaptive.models import build_model

    body = "from adaptive.models import register_model\n\n\n@register_model('plugin_clash_net')\ndef build(**kw):\n{}\n"
    a, b, same = tmp_path / "clash_a.py", tmp_path / "clash_b.py", tmp_path / "copy" / "clash_a.py"
    a.write_text(body.format("    return 'not a module'"))
    b.write_text("# another plugin\n" + body.format("    return None"))
    same.parent.mkdir()
    same.write_text(a.read_text())
    load_plugin(str(a))
    load_plugin(str(same))
    with pytest.raises(PluginError) as e:
        load_plugin(str(b))
    # the copy, loaded last, holds the name; the line a decorated function's code starts on is its decorator's
    assert f"already registered (build in plugin {same.resolve()}, line 4); register build in plugin {b.resolve()}, line 5 " \
           "under another name" in str(e.value)
    with pytest.raises(TypeError) as e:
        build_model("plugin_clash_net")
    assert f"its builder build in plugin {same.resolve()}, line 4 returned builtins.str" in str(e.value)
    assert "adaptive_plugin_" not in str(e.value)


def test_a_partial_or_a_callable_instance_of_a_plugin_is_named_by_the_file(tmp_path):
    """A ``functools.partial`` of a plugin's function was named by its repr (``functools.functools.partial(<function
    build at 0x...>, width=8)``: neither the file nor a stable text), so a copy of the same file loaded from
    elsewhere clashed with itself; a callable instance by a repr holding the generated module name; an object whose
    ``__module__`` is no string made the naming itself fail."""
    from adaptive.models import build_model
    from adaptive.registry import _origin

    body = ("import functools\nfrom adaptive.models import register_model\n\n\ndef build(width=4, **kw):\n"
            "    return 'not a module'\n\n\nclass Maker:\n    def __call__(self, **kw):\n        return None\n\n\n"
            "register_model('plugin_partial_net')(functools.partial(build, width=8))\nmaker = Maker()\n")
    a, same = tmp_path / "partial_a.py", tmp_path / "copy" / "partial_a.py"
    a.write_text(body)
    same.parent.mkdir()
    same.write_text(body)
    mod = load_plugin(str(a))
    load_plugin(str(same))  # the same definitions: no clash
    with pytest.raises(TypeError) as e:
        build_model("plugin_partial_net")
    assert f"its builder functools.partial of build in plugin {same.resolve()}, line 5 returned" in str(e.value)
    assert _origin(mod.maker) == f"a Maker in plugin {same.resolve()}"  # the file its module was last loaded from

    class Odd:
        pass

    Odd.__module__ = 3
    assert _origin(Odd()).startswith("3.<")


NOTED = textwrap.dedent('''
    from adaptive.utility import Estimator, register_estimator

    @register_estimator("noted_est")
    class NotedEst(Estimator):
        def __init__(self, level=1.0):
            if level < 0:
                e = ValueError("level must be at least 0")
                e.add_note("noted_est: a level of 0 keeps every weight")
                raise e
            self.level = level

        def removal_cost(self, ctx):
            return ctx.weight.detach().abs()
''')


def test_the_notes_of_a_plugins_own_error_reach_the_recipes_error_line(tmp_path):
    """An error a plugin raises while loading, or its estimator's constructor raises on a bad
    --estimator-kw, keeps its PEP 678 notes: each follows the recipes' one line (they were dropped
    where the error was rewrapped as a PluginError, a ValueError or a SystemExit's message)."""
    bad = tmp_path / "noted_bad_ext.py"
    bad.write_text("e = ValueError('bug in the plugin')\ne.add_note('see the plugin README')\nraise e\n")
    with pytest.raises(PluginError) as e:
        load_plugin(str(bad))
    assert e.value.__notes__ == ["see the plugin README"]
    line = f"plugin {bad.resolve()} failed while loading: ValueError: bug in the plugin\nsee the plugin README"
    P = load_script("recipes/prune_pretrained.py", "prune_pretrained_plugins")
    with pytest.raises(SystemExit) as e:
        P.parse_args(["--plugins", str(bad), "--model", "resnet20", "--dataset", "fake", "--remove", "0.2",
                      "--output_dir", str(tmp_path / "pp")])
    assert e.value.code == line
    D = load_script("recipes/diagnostics.py", "diagnostics_plugins")
    with pytest.raises(SystemExit) as e:
        D.main(["collinearity", "--plugins", str(bad), "--output_dir", str(tmp_path)])
    assert e.value.code == f"recipes/diagnostics.py: error: {line}"

    noted = tmp_path / "noted_ext.py"
    noted.write_text(NOTED)
    with pytest.raises(SystemExit) as e:
        P.parse_args(["--plugins", str(noted), "--model", "resnet20", "--dataset", "fake", "--remove", "0.2",
                      "--estimator", "noted_est", "--estimator-kw", "level=-1", "--output_dir", str(tmp_path / "pp")])
    assert e.value.code == ("--estimator-kw: level must be at least 0\nnoted_est: a level of 0 keeps every weight")
    with pytest.raises(SystemExit) as e:
        D.main(["knowledge", "--plugins", str(noted), "--estimator", "noted_est", "--estimator_kw", "level=-1",
                "--output_dir", str(tmp_path)])
    assert e.value.code == ("recipes/diagnostics.py: error: --estimator_kw: level must be at least 0\n"
                            "noted_est: a level of 0 keeps every weight")
    R = load_script("recipes/adaptive.py", "recipe_adaptive_plugins")
    with pytest.raises(ValueError) as e:
        R.RunConfig(plugins=[str(bad)])
    assert e.value.__notes__ == ["see the plugin README"]


def test_a_resumed_runs_plugin_hint_follows_the_error_line_not_the_estimators_note(tmp_path):
    """prune_pretrained --resume without a plugin its config.yaml records, where a plugin estimator's
    error carries a note: what the resume adds about the plugins was glued to the end of the note
    instead of following the error's own line."""
    import yaml

    noted, other = tmp_path / "noted_ext.py", tmp_path / "other_ext.py"
    noted.write_text(NOTED)
    other.write_text("")
    out = tmp_path / "pp"
    out.mkdir()
    (out / "config.yaml").write_text(yaml.safe_dump({"plugins": [str(noted.resolve()), str(other.resolve())]}))
    P = load_script("recipes/prune_pretrained.py", "prune_pretrained_plugins_hint")
    with pytest.raises(SystemExit) as e:
        P.parse_args(["--plugins", str(noted), "--model", "resnet20", "--dataset", "fake", "--remove", "0.2", "--resume",
                      "--estimator", "noted_est", "--estimator-kw", "level=-1", "--output_dir", str(out)])
    line, note = e.value.code.split("\n")
    assert line.startswith("--estimator-kw: level must be at least 0; the run in ") and str(other.resolve()) in line
    assert note == "noted_est: a level of 0 keeps every weight"


def test_recipe_adaptive_keeps_a_plugin_estimators_notes(tmp_path):
    """recipes/adaptive.py's check of --estimator_kw kept a plugin estimator's notes, but the config's
    rewrap (adding what a resume says about its plugins) dropped them again."""
    noted = tmp_path / "noted_ext.py"
    noted.write_text(NOTED)
    R = load_script("recipes/adaptive.py", "recipe_adaptive_plugin_notes")
    with pytest.raises(ValueError) as e:
        R.RunConfig(plugins=[str(noted)], estimator="noted_est", estimator_kw={"level": -1})
    assert str(e.value) == "--estimator_kw: level must be at least 0"
    assert e.value.__notes__ == ["noted_est: a level of 0 keeps every weight"]


REPLACING = textwrap.dedent('''
    from adaptive.utility import Estimator, register_estimator
    @register_estimator("curvature", replace=True)
    class OwnCurvature(Estimator):
        needs_gradients = True

        def removal_cost(self, ctx):
            return (ctx.stats.mean(ctx.name) * ctx.weight.detach()).abs()

        def restoration_gain(self, ctx):
            return (ctx.stats.mean(ctx.name) * ctx.w0).abs()
''')


def test_a_resume_without_a_plugin_that_replaced_a_built_in_is_refused(tmp_path):
    """A plugin registering its own 'curvature' (replace=True): a resume without it was accepted in
    silence and ran the built-in (another mask hash, 79.94% against the run's 77.72%), since only names
    nothing else registers were checked. Every recorded plugin must be loaded again: the same path, a
    file of the same content elsewhere, or a new path in place of one no longer found."""
    import yaml

    from adaptive.utility.base import _ESTIMATORS

    R = load_script("recipes/adaptive.py", "recipe_adaptive_plugins_replace")
    P = load_script("recipes/prune_pretrained.py", "prune_pretrained_plugins_replace")
    out, plugin = tmp_path / "run", tmp_path / "own_curvature.py"
    out.mkdir()
    plugin.write_text(REPLACING)
    (out / "config.yaml").write_text(yaml.safe_dump({"model": "mlp", "dataset": "digits", "plugins": [str(plugin)]}))
    built_in = _ESTIMATORS["curvature"]
    try:
        for resume in ({"resume": "latest", "output_dir": str(out)}, {"resume": str(out)}):
            with pytest.raises(ValueError, match=rf"the run in {out} was started with --plugins {plugin} .* this resume "
                                                 rf"loads none in place of {plugin}: .*give them again with --resume "
                                                 rf"{resume['resume']} \(a moved file: its new path\), or --config "
                                                 rf"{out / 'config.yaml'}"):
                R.RunConfig(**resume)
        with pytest.raises(SystemExit, match=rf"this resume loads none in place of {plugin}"):
            P.parse_args(["--model", "resnet20", "--dataset", "fake", "--remove", "0.2", "--resume", "--output_dir",
                          str(out)])
        R.RunConfig(resume="latest", output_dir=str(out), plugins=[str(plugin)])  # given again
        copy = tmp_path / "elsewhere" / "copy.py"
        copy.parent.mkdir()
        copy.write_text(REPLACING)
        R.RunConfig(resume="latest", output_dir=str(out), plugins=[str(copy)])  # the same content elsewhere
        moved = tmp_path / "renamed.py"
        plugin.rename(moved)
        R.RunConfig(resume="latest", output_dir=str(out), plugins=[str(moved)])  # in place of one gone
        with pytest.raises(ValueError, match="loads none in place of"):
            R.RunConfig(resume="latest", output_dir=str(out))
        (out / "config.yaml").write_text(yaml.safe_dump({"model": "mlp", "dataset": "digits"}))  # a run with none
        R.RunConfig(resume="latest", output_dir=str(out))
    finally:
        _ESTIMATORS["curvature"] = built_in


def test_a_plugin_module_missing_a_dependency_named_like_it_is_not_called_missing(tmp_path, monkeypatch):
    """A module plugin on the path that imports a missing package whose name begins its own (timm for
    timm_models) was reported "not found: put the module on PYTHONPATH", where it is."""
    (tmp_path / "depxyz_models.py").write_text("import depxyz  # not installed\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(PluginError, match=r"plugin depxyz_models failed while loading: ModuleNotFoundError: No module "
                                          r"named 'depxyz'"):
        load_plugin("depxyz_models")
    with pytest.raises(PluginError, match="plugin module 'depxyz_models_gone' not found"):
        load_plugin("depxyz_models_gone")
    with pytest.raises(PluginError, match=r"plugin module 'depxyz_pkg\.sub' not found"):
        load_plugin("depxyz_pkg.sub")
