"""recipes/prune_pretrained.py end to end on fake data and a randomly initialised ResNet-20."""
import argparse
import json
import re
import shutil
import warnings
from pathlib import Path

import pytest
import yaml
import torch

import adaptive
from adaptive.models import WeightsMismatchError, build_model
from _scripts import load_script  # noqa: E402
from _training import fresh_recipe_state  # noqa: E402

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[1]


def recipe():
    return load_script("recipes/prune_pretrained.py", "prune_pretrained")


recipe()  # puts the repository root on sys.path, where the recipe's parts are imported from
# the module whose run calls optimize_connectome and get_dataloaders: a test patches them there (the
# script re-exports them, but patching its names reaches no call since the split)
from recipes._prune_pretrained import run as pp_run  # noqa: E402


_fresh_accelerate_state = pytest.fixture(autouse=True)(fresh_recipe_state)  # a fresh Accelerator per in-process run


@pytest.fixture
def no_curves(monkeypatch):
    """curves.png written as an empty placeholder, not drawn: for tests of what a run does with its folder,
    options, report or weights on runs of the ordinary shape, whose claims never read the figure (drawing it
    is about half of such a tiny run's time). The test_curves_*/test_figure_* tests, the end-to-end, resume,
    sparse-start, bf16, target-0, best and multi-process runs still draw it."""
    monkeypatch.setattr(pp_run, "_plot", lambda history, rows, events, path, **kw: Path(path).write_bytes(b""))


@pytest.fixture
def weights(tmp_path):
    torch.manual_seed(0)
    m = build_model("resnet20", num_classes=10, in_shape=(3, 8, 8))
    path = tmp_path / "w.pt"
    torch.save({"state_dict": {"module." + k: v for k, v in m.state_dict().items()}}, path)
    return path


class Crash(Exception):
    """Raised by :func:`_crash_in_second_target`'s run."""


def _crash_in_second_target(mod, monkeypatch):
    """The recipe's runs raise Crash at the first update of their second target (after the first
    target's checkpoint); ``monkeypatch.setattr(pp_run, "optimize_connectome", ...)`` undoes it."""
    real = mod.optimize_connectome

    def crash(*a, callback=None, **kw):
        def cb(rec):
            if callback is not None:  # the recipe's own (progress lines, --overwrite's deletion)
                callback(rec)
            if rec["kind"] == "update" and rec["stage"] == 1:
                raise Crash

        return real(*a, callback=cb, **kw)

    monkeypatch.setattr(pp_run, "optimize_connectome", crash)


def args(weights, out, *more):
    # 8x8 images (the fake data's default is 32x32): what these runs check does not depend on the size,
    # and ResNet-20 computes 16 times less on them
    return ["--model", "resnet20", "--weights", str(weights), "--dataset", "fake", "--dataset-kw", "shape=[3, 8, 8]",
            "--output_dir", str(out), "--batch-size", "32", "--eval-batch-size", "64", "--window", "2", "--passes", "0.5",
            "--verify-batches", "1", "--eval-every", "2", "--train-eval-batches", "2", "--subset", "192",
            "--no-progress", *more]


def test_the_split_script_holds_its_names_and_its_help_still_opens_with_its_docstring():
    """recipes/prune_pretrained.py is the entry point of recipes/_prune_pretrained/: each name it held
    before the split is still its own, the object the recipe's modules use (one ``_STARTED``, which the
    run sets and Ctrl-C's note reads), and --help's description is still its docstring's first line."""
    from recipes._prune_pretrained import folder, options, parse, plot, resume

    mod = recipe()
    assert mod.build_parser().description == mod.__doc__.split("\n")[0] == options.DESCRIPTION
    assert mod._STARTED is folder._STARTED is pp_run._STARTED and mod.CHECKPOINT == "checkpoint.pt"
    for name, module in (("main", pp_run), ("_prune", pp_run), ("parse_args", parse), ("_plot", plot),
                         ("_check_resumed_settings", resume), ("DEFAULTS", options), ("RUN_FILES", folder),
                         ("optimize_connectome", pp_run), ("get_dataloaders", pp_run)):
        assert getattr(mod, name) is getattr(module, name), name
    assert all(hasattr(mod, name) for name in mod.__all__)


def test_end_to_end_outputs_and_test_split_read_last(tmp_path, weights, capsys, monkeypatch):
    mod = recipe()
    state = {"optimised": False, "test_reads_before": 0, "lazy": None}
    real = mod.optimize_connectome

    def spy_optimise(*a, **kw):
        assert not state["lazy"].materialized, "test split built before optimisation"
        r = real(*a, **kw)
        assert not state["lazy"].materialized, "test split read during optimisation"
        state["optimised"] = True
        return r

    class TestSpy:
        def __init__(self, loader):
            self.loader = loader
            state["lazy"] = loader.dataset

        def __len__(self):
            return len(self.loader)

        def __iter__(self):
            if not state["optimised"]:
                state["test_reads_before"] += 1
            return iter(self.loader)

    monkeypatch.setattr(pp_run, "optimize_connectome", spy_optimise)
    out = tmp_path / "run"
    summary = mod.main(args(weights, out, "--remove", "0.2", "300"), test_loader_hook=TestSpy)
    assert state["optimised"] and state["test_reads_before"] == 0
    printed = capsys.readouterr().out
    assert printed.count("surviving weights that differ from the original: 0") == 2
    for sub, removed in (("remove_0.2", None), ("remove_300", 300)):
        sd = torch.load(out / sub / "pruned_state_dict.pt", weights_only=True)
        vanilla = build_model("resnet20", num_classes=10, in_shape=(3, 8, 8))
        vanilla.load_state_dict(sd)
        zeros = sum(int((v == 0).sum()) for k, v in sd.items() if k.endswith("weight") and v.dim() > 1)
        if removed is not None:
            assert zeros >= removed
        assert (out / sub / "connectome.safetensors").is_file()
    rows = {r["target"]: r for r in summary["rows"]}
    assert rows["300"]["removed"] == 300 and rows["300"]["changed"] == 0
    assert set(rows) == {"dense", "0.2", "300"}
    # console counts with thousands separators, as recipes/adaptive.py prints them (268336 and | 53667 | before)
    assert "resnet20 on fake, 268,336 prunable synapses" in printed
    assert f"| 0.2 | {rows['0.2']['removed']:,} | " in printed and rows["0.2"]["removed"] >= 1000
    for f in ("results.md", "curves.png", "history.jsonl", "events.jsonl"):
        assert (out / f).is_file(), f
    hist = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    assert any(h["kind"] == "update" for h in hist) and any(h["kind"] == "eval" for h in hist)
    first = next(h for h in hist if h["kind"] == "update")  # the jump to the first target
    assert first["train_removed"] == 0 < first["removed"]  # its window ran through the dense network
    text = (out / "results.md").read_text()
    assert "read only for this report (before the run its files were only checked for faults, none scored" in text
    # the held-out part is TRAIN images, which the shared CIFAR ResNets were trained on: said where its figures are
    assert "pretrained weights may have been trained on these very images" in text
    # docs/mask_only.md names every file the recipe writes (its own folder's and each target's)
    page = (ROOT / "docs" / "mask_only.md").read_text()
    assert sorted({f.name for f in out.rglob("*") if f.is_file() and f"`{f.name}`" not in page}) == []
    # the exported state_dict reproduces the connectome model exactly
    result = summary["result"]
    result.use("300")
    vanilla = build_model("resnet20", num_classes=10, in_shape=(3, 8, 8)).eval()
    vanilla.load_state_dict(torch.load(out / "remove_300" / "pruned_state_dict.pt", weights_only=True))
    x = torch.randn(4, 3, 8, 8)
    with torch.no_grad():
        assert torch.equal(vanilla(x), result.conn.model.eval()(x))


def test_bad_inputs_fail_before_anything_runs(tmp_path, weights):
    mod = recipe()
    out = tmp_path / "bad"
    with pytest.raises(ValueError, match="beyond"):
        mod.main(args(weights, out, "--remove", "10000000"))
    assert not (out / "results.md").exists()
    wrong = tmp_path / "wrong.pt"
    torch.save(build_model("resnet32", num_classes=10, in_shape=(3, 8, 8)).state_dict(), wrong)
    with pytest.raises(WeightsMismatchError, match=r"wrong\.pt. does not match model CifarResNet: unexpected keys \[layer1\.3"):
        mod.main(args(wrong, out, "--remove", "0.5"))
    cfg = tmp_path / "c.yaml"
    cfg.write_text("remove: [0.5]\nbogus_key: 1\n")
    with pytest.raises(SystemExit, match="bogus_key"):
        mod.main(["--config", str(cfg)])


@pytest.mark.parametrize("option, value", [("--train-eval-batches", "0"), ("--train-eval-batches", "-1"),
                                           ("--eval-batch-size", "0"), ("--verify-batches", "-2"), ("--subset", "0"),
                                           ("--batch-size", "0")])
def test_bad_counts_are_refused_while_parsing(option, value):
    """They used to fail after the whole optimisation (0) or run silently (negative; --subset 0 meant all)."""
    with pytest.raises(SystemExit, match=f"{option} must be an integer >= [01], got {value}"):
        recipe().parse_args([option, value])


@pytest.mark.parametrize("where, match", [("nope.pt", "does not exist: pass the path of a saved state_dict"),
                                          (".", "is a folder: pass the weights file inside it")])
def test_a_weights_path_that_is_no_file_is_refused_before_the_data_is_read(tmp_path, monkeypatch, where, match):
    """A mistyped --weights failed in build_model, after the data had loaded (ImageNet: minutes)."""
    mod = recipe()

    def no_data(*a, **kw):
        raise AssertionError("the data was read")

    monkeypatch.setattr(pp_run, "get_dataloaders", no_data)
    with pytest.raises(SystemExit, match=rf"^--weights .* {match}"):
        mod.main(args(tmp_path / where, tmp_path / "out"))
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("given", ["", "  "])
def test_an_empty_weights_path_means_no_weights_as_it_always_did(tmp_path, given):
    """build_model reads weights '' as none (random weights, a supermask search); the check of the
    weights file that came in front of it refused '' as 'does not exist'."""
    ns = recipe().parse_args(["--model", "resnet20", "--weights", given, "--dataset", "fake", "--output_dir",
                              str(tmp_path / "out")])
    assert ns.weights is None


def test_imagenet_config_parses():
    mod = recipe()
    ns = mod.parse_args(["--config", str(ROOT / "recipes" / "configs" / "imagenet_mobilenetv3_maskonly.yaml")])
    assert ns.model == "torchvision:mobilenet_v3_large" and ns.remove == [1000000, 2760000]
    assert ns.dataset == "imagenet" and ns.num_classes == 1000


def test_a_second_config_file_is_refused_not_dropped(tmp_path):
    """argparse kept only the last --config, so the shipped ImageNet config followed by a file of one's own
    overrides ran with the defaults' cifar10 and resnet20 in place of everything the first file set."""
    mod = recipe()
    mine = tmp_path / "mine.yaml"
    mine.write_text("holdout: 0.3\n")
    shipped = str(ROOT / "recipes" / "configs" / "imagenet_mobilenetv3_maskonly.yaml")
    with pytest.raises(SystemExit, match=r"--config given 2 times \(.*imagenet_mobilenetv3_maskonly.yaml, "
                                         r".*mine.yaml\): it reads one file"):
        mod.parse_args(["--config", shipped, "--config", str(mine)])
    assert mod.parse_args(["--config", str(mine)]).holdout == 0.3


def test_step_option_builds_the_estimator_or_fails_clearly():
    from adaptive.utility.presence import Presence

    mod = recipe()
    ns = mod.parse_args(["--step", "0.02"])
    assert ns.estimator == "presence"  # the default estimator
    est = mod._estimator(ns)
    assert isinstance(est, Presence) and est.step == 0.02
    assert mod._estimator(mod.parse_args([])) == "presence"
    with pytest.raises(SystemExit, match="--step 0.1, which applies to the presence and evidence estimators, not "
                                         "'magnitude': give --step none"):
        mod.parse_args(["--estimator", "magnitude", "--step", "0.1"])  # refused before any data is read


def test_a_config_files_step_is_named_and_step_none_unsets_it():
    """The shipped ImageNet config sets step: 0.01; --estimator obd was refused pointing at --step,
    and --step none was not accepted."""
    mod = recipe()
    config = str(ROOT / "recipes" / "configs" / "imagenet_mobilenetv3_maskonly.yaml")
    with pytest.raises(SystemExit, match=r"imagenet_mobilenetv3_maskonly\.yaml sets step: 0\.01, which applies to "
                                         r"the presence and evidence estimators, not 'obd': give --step none"):
        mod.parse_args(["--config", config, "--estimator", "obd"])
    ns = mod.parse_args(["--config", config, "--estimator", "obd", "--step", "none"])
    assert ns.step is None and mod._estimator(ns) == "obd"


def _config(tmp_path, text):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize("text, match", [
    ("mixed_precision: fp16\n", r"c\.yaml: mixed_precision must be one of no, bf16, got 'fp16'"),
    ("step: fast\n", r"c\.yaml: step must be a number > 0 \(or none: the estimator's own\), got 'fast'"),
    ("passes: 0\n", r"c\.yaml: passes must be a number > 0"),
    ("holdout: lots\n", r"c\.yaml: holdout must be a fraction in \(0, 1\)"),
    ("ladder: [0.5, 0.2]\n", r"c\.yaml: ladder must be increasing removal fractions in \(0, 1\), got 0.5 0.2"),
    ("seed: one\n", r"c\.yaml: seed must be an integer, got 'one'"),
])
def test_config_file_values_are_checked_as_the_command_line_checks_them(tmp_path, text, match):
    """A config file's values went in unchecked: fp16 ran float32 under an fp16 label, step: fast
    failed deep inside with a TypeError."""
    with pytest.raises(SystemExit, match=match):
        recipe().parse_args(["--config", _config(tmp_path, text)])
    assert recipe().parse_args(["--config", _config(tmp_path, "mixed_precision: no\n")]).mixed_precision == "no"


@pytest.mark.parametrize("text, match", [
    ("estimator_kw: {1: 2}\n", r"estimator_kw: unknown argument\(s\) \['1'\]"),
    ("model_kw: {1: 2}\n", r"model_kw 1=2: model 'resnet20' takes no keyword '1'"),
    ("dataset_kw: {1: 2}\n", r"dataset_kw \['1'\]: not an argument of dataset"),
])
def test_a_config_files_mapping_with_a_key_that_is_no_text_is_named(tmp_path, text, match):
    """A key YAML reads as a number (dataset_kw: {1: 2}) failed with "'int' object is not iterable" or "keywords
    must be strings", naming neither key nor file; the same on the command line was read as text."""
    with pytest.raises(SystemExit, match=match):
        recipe().parse_args(["--config", _config(tmp_path, text)])


@pytest.mark.parametrize("text", ["overwrite: 'maybe'\n", "cpu: 'nope'\n", "download: ''\n", "resume: 0\n",
                                  "progress: 2\n"])
def test_a_config_files_flags_must_be_true_or_false(tmp_path, text):
    """A flag's value went in unchecked: a quoted overwrite: 'false' counted as true, so the earlier
    run in --output_dir was deleted instead of refused. A quoted yes/no word is now the flag's value, as
    in recipes/adaptive.py's --config (tests/test_configs.py); anything else is refused."""
    key = text.split(":")[0]
    hint = r": write true or false \(a quoted word other than true" if "'" in text else "$"
    with pytest.raises(SystemExit, match=rf"c\.yaml: {key} must be true or false, got .*{hint}"):
        recipe().parse_args(["--config", _config(tmp_path, text)])
    ns = recipe().parse_args(["--config", _config(tmp_path, "overwrite: false\ncpu: true\nprogress: false\n")])
    assert ns.overwrite is False and ns.cpu is True and ns.progress is False
    ns = recipe().parse_args(["--config", _config(tmp_path, "overwrite: 'false'\ncpu: 'no'\ndownload: 'true'\n"
                                                            "progress: 'off'\n")])
    assert ns.overwrite is False and ns.cpu is False and ns.download is True and ns.progress is False


def test_a_config_files_empty_remove_is_refused_while_parsing(tmp_path):
    """remove: [] was accepted while parsing, and the run failed only once the data had loaded and the
    model was built ("give at least one target", naming no file)."""
    with pytest.raises(SystemExit, match=r"c\.yaml: remove is empty: give at least one target"):
        recipe().parse_args(["--config", _config(tmp_path, "remove: []\n")])


def test_a_count_written_with_an_exponent_is_refused_naming_the_whole_number():
    with pytest.raises(ValueError, match=r"--remove 5e4: target fraction 50000.0 must be in \[0, 1\): for the count of "
                                         r"50000 synapses give it as a whole number \(50000\)"):
        recipe().parse_args(["--remove", "0.2", "5e4"])



@pytest.mark.parametrize("argv, match", [
    (["--holdout", "0"], r"--holdout must be a fraction in \(0, 1\)"),
    (["--passes", "0"], "--passes must be a number > 0"),
    (["--ladder", "0.6", "0.3"], r"--ladder must be increasing removal fractions in \(0, 1\), got 0.6 0.3"),
    (["--remove", "0.2", "--ladder", "0.3", "0.6"], "--ladder applies to --remove best"),
    (["--remove", "0.2", "--patience", "5"], "--patience applies to --remove best"),
    (["--dataset", "fake", "--dataset-kw", "augment=true"], "this recipe has no augmentation"),
])
def test_settings_are_refused_while_parsing(argv, match):
    """They were refused after the run folder was created (leaving it with only its .lock), or
    silently ignored (--ladder, --patience with fixed targets), or pointed at a missing --augment."""
    with pytest.raises(SystemExit, match=match):
        recipe().parse_args(argv)


@pytest.mark.parametrize("text, argv, match", [
    ("remove: [0.2]\nladder: [0.3, 0.6]\n", [],
     r"c\.yaml: ladder 0\.3 0\.6 applies to --remove best \(the climb's rungs\), not to the fixed targets 0\.2: "
     r"drop ladder from .*c\.yaml, or give --remove best"),
    ("remove: [0.2, 300]\npatience: 5\n", [], r"c\.yaml: patience 5 applies to --remove best .* fixed targets 0\.2 300"),
    ("ladder: [0.3]\npatience: 3\n", ["--remove", "0.2"], r"c\.yaml: ladder 0\.3 applies to --remove best"),
])
def test_a_config_files_ladder_or_patience_with_fixed_targets_is_refused_as_the_command_lines(
        tmp_path, text, argv, match):
    """A file's ladder or patience with fixed targets was accepted and silently unused (and recorded
    in config.yaml as if it had been used); the command line's were refused."""
    with pytest.raises(SystemExit, match=match):
        recipe().parse_args(["--config", _config(tmp_path, text), *argv])


def test_a_config_yaml_with_the_default_ladder_still_reruns_fixed_targets(tmp_path, weights, no_curves):
    """Every config.yaml a run writes holds ladder and patience, a fixed-target run's the defaults:
    it reruns (and resumes) its targets."""
    mod = recipe()
    out = tmp_path / "run"
    mod.main(args(weights, out, "--remove", "0.2"))
    ns = mod.parse_args(["--config", str(out / "config.yaml"), "--resume"])
    assert ns.remove == [0.2] and ns.ladder == mod.DEFAULTS["ladder"] and ns.patience == mod.DEFAULTS["patience"]
    mod._check_resumed_settings(ns, out)
    # one recorded before a file's ladder was refused resumes once the ladder is dropped (unused by fixed targets)
    import yaml

    saved = yaml.safe_load((out / "config.yaml").read_text())
    (out / "config.yaml").write_text(yaml.safe_dump(dict(saved, ladder=[0.3], patience=5)))
    mod._check_resumed_settings(ns, out)
    ns = mod.parse_args(["--config", _config(tmp_path, "remove: best\nladder: [0.3]\npatience: 3\n")])
    assert ns.remove == ["best"] and ns.ladder == [0.3] and ns.patience == 3  # the climb takes them


def test_a_refused_count_leaves_no_folder_behind(tmp_path, weights):
    """A count of every synapse (as --remove 1.0) or more, or a fraction that rounds to every synapse, is
    refused once the model is built: the folder the run created goes again; a folder that was there stays, with what it held."""
    mod = recipe()
    out = tmp_path / "new"
    for count, match in (("268336", "is every one of the model's 268,336"), ("300000", "beyond"),
                         ("0.9999999", "removes round.* = 268,336 synapses, every one of the model's 268,336")):
        with pytest.raises(ValueError, match=match):
            mod.main(args(weights, out, "--remove", count))
        assert not out.exists()
    there = tmp_path / "there"
    there.mkdir()
    with pytest.raises(ValueError, match="beyond"):
        mod.main(args(weights, there, "--remove", "300000"))
    assert there.is_dir()
    # the lock made the missing parents too: they go as well, down to the folder that was there
    with pytest.raises(ValueError, match="beyond"):
        mod.main(args(weights, there / "x" / "y", "--remove", "300000"))
    assert there.is_dir() and not (there / "x").exists()


def test_a_count_beyond_the_model_is_refused_before_any_data_is_read(tmp_path, weights, monkeypatch):
    """The model (its weights loaded) is built before the data where the dataset knows its classes and
    input shape unread: a count of every synapse or more is refused then, with the message the later
    check gives (it was refused only once the data had loaded)."""
    mod = recipe()

    def no_data(*a, **kw):
        raise AssertionError("the data was read")

    monkeypatch.setattr(pp_run, "get_dataloaders", no_data)
    # the counts with separators, as the console prints them; the count to give plain, to paste
    for target, match in (("300000", "300,000 synapses to remove is beyond the model's 268,336 prunable synapses: give "
                                     "a count below 268336; or leave that target out"),
                          ("0.9999999", r"removes round\(0.9999999 x 268,336\) = 268,336 synapses, every one of the "
                                        r"model's 268,336 prunable synapses: .*, or a count below 268336; or leave")):
        with pytest.raises(ValueError, match=match):
            mod.main(args(weights, tmp_path / "out", "--remove", "0.2", target))
    monkeypatch.undo()
    with pytest.raises(ValueError, match="beyond the model's"):  # MNIST's folder need not even exist
        mod.main(["--model", "resnet20", "--dataset", "mnist", "--data-dir", str(tmp_path / "nowhere"),
                  "--remove", "10000000", "--output_dir", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()


def test_a_removal_that_rounds_to_no_ensemble_is_refused_before_any_data_is_read(tmp_path, weights, monkeypatch):
    """--remove 1e-9 (0 of 268,336 synapses) ran a whole stage and wrote the dense network as its
    snapshot; so did --remove 1 with --ensemble neuron (a stage removes whole neurons, the smallest of 27
    synapses). Both are refused once the model is built, before the data, naming the target's position
    and the least fraction that removes one ensemble; no folder is left."""
    mod = recipe()

    def no_data(*a, **kw):
        raise AssertionError("the data was read")

    monkeypatch.setattr(pp_run, "get_dataloaders", no_data)
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=r"^target 2 of 2 \(1e-09\) in \[0.5, 1e-09\]: target 1e-09 asks for "
                                         r"round\(1e-09 x 268,336\) = 0 .*the dense network, unchanged\. Give a "
                                         r"fraction of at least 1.86334e-06 or a count of at least 1 "):
        mod.main(args(weights, out, "--remove", "0.5", "1e-9"))
    with pytest.raises(ValueError, match=r"target 1 asks for 1 of .*'neuron' ensembles hold 27 to 576 synapses each"
                                         r".*a count of at least 14 \(the least that removes one ensemble\)"):
        mod.main(args(weights, out, "--remove", "1", "--ensemble", "neuron"))
    assert not out.exists()


SHARED_CIFAR = ROOT.parent / "shared" / "data" / "cifar10-jpeg"


@pytest.mark.parametrize("where", ["tiny", pytest.param("shared", marks=pytest.mark.skipif(
    not (SHARED_CIFAR / "test").is_dir(), reason=f"shared cifar10-jpeg absent at {SHARED_CIFAR}"))])
def test_on_cifar10_a_count_beyond_the_model_is_refused_before_any_data_is_read(tmp_path, weights, monkeypatch, where):
    """CIFAR-10, the recipes' default dataset, knows its classes and input shape unread too (its class
    folders and one image's header): a count beyond the model, or a --num-classes other than the
    data's, is refused before a single image is decoded (it was refused once the whole copy had)."""
    mod = recipe()
    data = SHARED_CIFAR.parent
    if where == "tiny":  # one 10x12 image per class
        import numpy as np
        from PIL import Image

        from adaptive.data.cifar import CLASSES

        data = tmp_path / "data"
        for split in ("train", "test"):
            for c in CLASSES:
                (data / "cifar10-jpeg" / split / c).mkdir(parents=True)
                Image.fromarray(np.zeros((10, 12, 3), np.uint8)).save(data / "cifar10-jpeg" / split / c / "0.png")
    monkeypatch.setattr(pp_run, "get_dataloaders", lambda *a, **kw: pytest.fail("the data was read"))
    cifar = ["--model", "resnet20", "--weights", str(weights), "--dataset", "cifar10", "--data-dir", str(data),
             "--output_dir", str(tmp_path / "out")]
    with pytest.raises(ValueError, match="300,000 synapses to remove is beyond the model's 268,336 prunable"):
        mod.main(cifar + ["--remove", "0.2", "300000"])
    with pytest.raises(ValueError, match="--num-classes 5 does not match the 10 classes of the cifar10 data"):
        mod.main(cifar + ["--remove", "0.2", "--num-classes", "5"])
    assert not (tmp_path / "out").exists()


def test_best_climbs_the_given_ladder(tmp_path, weights, capsys):
    mod = recipe()
    out = tmp_path / "best"
    summary = mod.main(args(weights, out, "--remove", "best", "--ladder", "0.2", "0.4", "--patience", "1"))
    rows = {r["target"]: r for r in summary["rows"]}
    assert set(rows) == {"dense", "best"} and rows["best"]["changed"] == 0
    total = summary["result"].conn.num_synapses()
    assert rows["best"]["removed"] in (0, round(0.2 * total), round(0.4 * total))
    assert (out / "pruned_state_dict.pt").is_file()
    assert mod.parse_args(["--remove", "best", "--ladder"]).ladder == []  # no rungs: threshold mode


def test_two_processes_split_the_batches_hold_the_same_masks_and_a_crashed_job_resumes_to_them(tmp_path, weights):
    """``accelerate launch`` with 2 processes (gloo, CPU): each process gets half of the train
    batches, the processes end with identical masks at every snapshot (line search on held-out
    batches included), no weight changed. Stages of half a pass (they end inside a pass over each
    process's shard of the train loader): a 2-process job that crashed in its second target and was
    resumed with --resume ends with the masks of that job run straight through, on both processes.
    (One test, so that the straight 2-process launch runs once for both checks.)"""
    import os
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _ports import launch_two

    recipe_path = ROOT / "recipes" / "prune_pretrained.py"
    out = tmp_path / "run2"
    env = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="", MPLBACKEND="Agg")
    r = launch_two([recipe_path, *args(weights, out, "--remove", "0.2", "0.5")], env=env, cwd=ROOT)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "2 process(es), 3 train batches of 32 per process" in r.stdout  # 192 images: 6 batches on one process
    summary = json.loads((out / "summary.json").read_text())
    assert summary["processes"] == 2 and summary["mixed_precision"] == "no"  # (the precision that fed every figure)
    hashes = summary["mask_hash_per_process"]
    assert set(hashes) == {"0.2", "0.5"}
    for label, per_process in hashes.items():
        assert len(per_process) == 2 and per_process[0] == per_process[1], (label, per_process)
    assert hashes["0.2"] != hashes["0.5"]
    rows = {r["target"]: r for r in summary["rows"]}
    assert rows["0.2"]["changed"] == 0 and rows["0.5"]["changed"] == 0
    assert r.stdout.count("surviving weights that differ from the original: 0") == 2  # printed once, by the main process

    def batches_read(folder):  # each update's train loss and verification loss: which batches it saw
        hist = [json.loads(line) for line in (folder / "history.jsonl").read_text().splitlines()]
        return [(h["stage"], h["train_loss"], h["verify_loss"]) for h in hist if h["kind"] == "update"]
    straight_batches = batches_read(out)  # (before the resume below appends to the history)

    # both processes resume from the checkpoint the main process wrote: the run was finished, so
    # nothing is optimised again and every process reports the same masks as before
    r2 = launch_two([recipe_path, *args(weights, out, "--remove", "0.2", "0.5", "--resume")], env=env, cwd=ROOT)
    assert r2.returncode == 0, r2.stdout[-3000:] + r2.stderr[-3000:]
    again = json.loads((out / "summary.json").read_text())
    assert again["mask_hash_per_process"] == hashes
    hist = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    assert [h["kind"] for h in hist][-1] == "resume"
    # the train window of an update (--window 2, batches of 32) counts both processes' batches
    assert max(h["train_examples"] for h in hist if h["kind"] == "update") == 2 * 2 * 32

    # the same job crashed in its second target and resumed reaches the straight run's masks
    script = tmp_path / "crashing.py"
    marker = tmp_path / "crash_marker"
    script.write_text(CRASHING.format(script=str(recipe_path), marker=str(marker)))
    crashed = tmp_path / "crashed"
    r = launch_two([script, *args(weights, crashed, "--remove", "0.2", "0.5")], env=env, cwd=ROOT)
    # the crash was injected (the marker), whichever rank's traceback the launcher let out
    assert r.returncode != 0 and marker.read_text() == "crashed", r.stdout[-3000:] + r.stderr[-3000:]
    assert (crashed / "checkpoint.pt").is_file() and not (crashed / "summary.json").exists()
    r = launch_two([recipe_path, *args(weights, crashed, "--remove", "0.2", "0.5", "--resume")], env=env, cwd=ROOT)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert json.loads((crashed / "summary.json").read_text())["mask_hash_per_process"] == hashes
    assert batches_read(crashed) == straight_batches
    assert {stage for stage, _, _ in straight_batches} == {0, 1}


def test_bf16_autocast_moves_masks_not_weights(tmp_path, weights, capsys):
    """--mixed-precision bf16: the passes run under bf16 autocast (the masks differ from a float32
    run's), the weights stay float32 and bit-exact, and the exported state_dict still loads."""
    mod = recipe()
    runs = {}
    for mp in ("no", "bf16"):
        from accelerate.state import AcceleratorState

        AcceleratorState._reset_state(True)
        out = tmp_path / mp
        runs[mp] = mod.main(args(weights, out, "--remove", "0.3", "--mixed-precision", mp))
        assert f"mixed precision {mp}" in (out / "results.md").read_text()
        assert json.loads((out / "summary.json").read_text())["mixed_precision"] == mp  # (it said none)
    for mp, summary in runs.items():
        row = {r["target"]: r for r in summary["rows"]}["0.3"]
        assert row["changed"] == 0
        assert all(p.dtype == torch.float32 for p in summary["result"].conn.params.values())
    assert runs["no"]["mask_hash_per_process"]["0.3"] != runs["bf16"]["mask_hash_per_process"]["0.3"]
    sd = torch.load(tmp_path / "bf16" / "pruned_state_dict.pt", weights_only=True)
    build_model("resnet20", num_classes=10, in_shape=(3, 8, 8)).load_state_dict(sd)


def test_resume_continues_after_the_last_finished_target(tmp_path, weights, capsys, monkeypatch):
    mod = recipe()
    out = tmp_path / "run"
    with pytest.raises(FileNotFoundError, match="no checkpoint.pt"):
        mod.main(args(weights, out, "--remove", "0.2", "0.5", "--resume"))
    real = mod.optimize_connectome
    _crash_in_second_target(mod, monkeypatch)
    with pytest.raises(Crash):
        mod.main(args(weights, out, "--remove", "0.2", "0.5"))
    assert (out / "checkpoint.pt").is_file() and not (out / "results.md").exists()
    assert not (out / ".lock").exists()  # a run stopped by an error takes its lock file away too
    (out / ".lock").write_text("99999999")  # a killed run's: its file stays, the system let go of its lock
    monkeypatch.setattr(pp_run, "optimize_connectome", real)
    import gc
    import weakref

    real_load, loads, masks_read = torch.load, [], []

    def counted_load(f, *a, **kw):
        state = real_load(f, *a, **kw)
        loads.append(Path(f) == out / "checkpoint.pt")
        if loads[-1]:
            masks_read.append(weakref.ref(next(iter(state["masks"].values()))))
        return state

    monkeypatch.setattr(torch, "load", counted_load)
    real_data = mod.get_dataloaders
    monkeypatch.setattr(pp_run, "get_dataloaders", lambda *a, **kw: (_ for _ in ()).throw(Crash()))
    with pytest.raises(Crash) as stopped:  # a resume stopped after its check of checkpoint.pt, before its load
        mod.main(args(weights, out, "--remove", "0.2", "0.5", "--resume"))
    gc.collect()
    # what the check read is let go, though the error (its traceback, the recipe's frames) is kept:
    # a module-wide store held it for the life of the process (a large model's masks and estimator state)
    assert len(masks_read) == 1 and masks_read[0]() is None and stopped.value is not None
    monkeypatch.setattr(pp_run, "get_dataloaders", real_data)
    loads.clear()
    summary = mod.main(args(weights, out, "--remove", "0.2", "0.5", "--resume"))
    assert sum(loads) == 1  # read once: its check before the data loads passes the state on (it read it twice)
    monkeypatch.setattr(torch, "load", real_load)
    assert not (out / ".lock").exists()  # the finished run leaves no lock file (it left one in every folder)
    hist = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    resume = [h for h in hist if h["kind"] == "resume"]
    assert len(resume) == 1 and resume[0]["stage"] == 1
    assert {h["stage"] for h in hist if h["kind"] == "update"} == {0, 1}
    rows = {r["target"]: r for r in summary["rows"]}
    assert set(rows) == {"dense", "0.2", "0.5"} and rows["0.5"]["changed"] == 0
    import yaml
    assert yaml.safe_load((out / "config.yaml").read_text())["resume"] is False  # --config FILE reruns afresh
    # without --resume a folder that holds a run is refused; --overwrite starts from the first target
    with pytest.raises(RuntimeError, match=r"holds an earlier run \(checkpoint.pt, results.md.*continue it with "
                                           r"the same command and --resume"):
        mod.main(args(weights, out, "--remove", "0.2", "0.5"))
    mod.main(args(weights, out, "--remove", "0.2", "0.5", "--overwrite"))
    assert "--overwrite: the earlier run in" in capsys.readouterr().out
    hist = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    assert not any(h["kind"] == "resume" for h in hist)


def test_dataset_arguments_are_checked_before_anything_runs():
    mod = recipe()
    ns = mod.parse_args(["--dataset", "imagenet", "--dataset-kw", "resize=232", "--dataset-kw", "image_size=192"])
    assert ns.dataset_kw == {"resize": 232, "image_size": 192}
    ns = mod.parse_args(["--config", str(ROOT / "recipes" / "configs" / "imagenet_mobilenetv3_maskonly.yaml")])
    assert ns.dataset_kw == {"resize": 232}
    with pytest.raises(SystemExit, match=r"dataset_kw \['resise'\]: not an argument of dataset 'imagenet'.*'resize'"):
        mod.parse_args(["--dataset", "imagenet", "--dataset-kw", "resise=232"])
    with pytest.raises(SystemExit, match="KEY=VALUE"):
        mod.parse_args(["--dataset", "imagenet", "--dataset-kw", "232"])


def test_dataset_arguments_merge_as_in_recipes_adaptive(tmp_path):
    """--dataset-kw takes a YAML mapping as well as KEY=VALUE, as recipes/adaptive.py's does, and
    the entries merge with the --config file's mapping, later ones winning per key."""
    mod = recipe()
    config = str(ROOT / "recipes" / "configs" / "imagenet_mobilenetv3_maskonly.yaml")  # dataset_kw: {resize: 232}
    for kw in (["{image_size: 192}", "resize=240"], ["resize=1", "{image_size: 192, resize: 240}"]):
        argv = [a for item in kw for a in ("--dataset-kw", item)]
        for args in (["--config", config, *argv], [*argv, "--config", config]):
            assert mod.parse_args(args).dataset_kw == {"resize": 240, "image_size": 192}, args
    assert mod.parse_args(["--config", config, "--dataset-kw", "image_size=192"]).dataset_kw == \
        {"resize": 232, "image_size": 192}
    bad = tmp_path / "bad.yaml"
    bad.write_text("dataset_kw: resize\n")
    with pytest.raises(SystemExit, match="dataset_kw must be a mapping"):
        mod.parse_args(["--config", str(bad)])


def test_imagenet_config_runs_end_to_end_on_a_tiny_image_folder(tmp_path):
    """The shipped MobileNetV3-Large ImageNet config, pointed at a tiny ImageFolder tree (random
    JPEGs, small images) and a weights file of a randomly initialised network: the whole job runs,
    removes its two counts exactly and changes no surviving weight."""
    import torchvision

    from _tiny_imagenet import tiny_imagenet_with_weights

    tiny_imagenet_with_weights(tmp_path)
    out = tmp_path / "run"
    mod = recipe()
    argv = ["--config", str(ROOT / "recipes" / "configs" / "imagenet_mobilenetv3_maskonly.yaml"),
            "--data-dir", str(tmp_path), "--weights", str(tmp_path / "mnv3.pth"), "--output_dir", str(out),
            "--dataset-kw", "resize=36", "--dataset-kw", "image_size=32", "--holdout", "0.35",
            "--batch-size", "4", "--eval-batch-size", "4", "--num-workers", "0", "--threads", "1", "--no-progress"]
    # the config's 1000 classes against a 2-class folder: the labels would be scored against the wrong
    # outputs (a 1000-class run reported 0% everywhere), so it is refused before anything runs
    with pytest.raises(ValueError, match="--num-classes 1000 does not match the 2 classes"):
        mod.main(argv)
    assert not (out / "results.md").exists()
    summary = mod.main(argv + ["--num-classes", "2"])
    rows = {r["target"]: r for r in summary["rows"]}
    assert rows["1000000"]["removed"] == 1000000 and rows["2760000"]["removed"] == 2760000
    assert rows["1000000"]["changed"] == 0 and rows["2760000"]["changed"] == 0
    sd = torch.load(out / "remove_2760000" / "pruned_state_dict.pt", weights_only=True)
    torchvision.models.mobilenet_v3_large(num_classes=2).load_state_dict(sd)


SKEWED = '''
import importlib.util, sys
spec = importlib.util.spec_from_file_location("pp", {script!r})
P = importlib.util.module_from_spec(spec); spec.loader.exec_module(P)
from recipes._prune_pretrained import run as R  # (where the recipe's run calls optimize_connectome)
real = P.optimize_connectome

def skewed(*a, **kw):  # a bug that makes the processes disagree: process 1's estimator scores otherwise
    # (its settings alike: settings that differ, a per-process step, are refused before any work)
    import torch.distributed as dist
    from adaptive.utility import get_estimator
    est = get_estimator("presence", step=0.01)
    if dist.get_rank() == 1:
        est.removal_cost = lambda ctx, cost=est.removal_cost: -cost(ctx)
    kw["estimator"] = est
    return real(*a, **kw)

R.optimize_connectome = skewed
P.main(sys.argv[1:])
'''


def test_processes_that_disagree_stop_at_the_first_update(tmp_path, weights):
    import os
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _ports import launch_two

    script = tmp_path / "skewed.py"
    script.write_text(SKEWED.format(script=str(ROOT / "recipes" / "prune_pretrained.py")))
    out = tmp_path / "run"
    env = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="", MPLBACKEND="Agg")
    r = launch_two([script, *args(weights, out, "--remove", "0.5", "--passes", "2")], env=env, cwd=ROOT)
    assert r.returncode != 0, r.stdout[-2000:]
    # the controller checks at every update under a process group (the recipe's first evaluation is at step 4)
    assert "MaskMismatchError: connectome masks differ between processes at step 2" in r.stdout + r.stderr
    assert not (out / "summary.json").exists() and not (out / "pruned_state_dict.pt").exists()


CRASHING = '''
import importlib.util, sys
spec = importlib.util.spec_from_file_location("pp", {script!r})
P = importlib.util.module_from_spec(spec); spec.loader.exec_module(P)
from recipes._prune_pretrained import run as R  # (where the recipe's run calls optimize_connectome)
real = P.optimize_connectome

def crashing(*a, **kw):  # the job dies at the first update of the second target
    def cb(rec):
        if rec["kind"] == "update" and rec["stage"] == 1:
            open({marker!r}, "w").write("crashed")  # the launcher may kill a rank before its traceback is out
            raise RuntimeError("injected crash")
    kw["callback"] = cb
    return real(*a, **kw)

R.optimize_connectome = crashing
P.main(sys.argv[1:])
'''


def test_without_weights_it_says_the_masks_are_learned_on_random_weights(tmp_path, weights, capsys, no_curves):
    mod = recipe()
    a = args(weights, tmp_path / "random", "--remove", "0.1")
    i = a.index("--weights")
    mod.main(a[:i] + a[i + 2:])
    assert "no --weights given" in capsys.readouterr().out
    mod.main(args(weights, tmp_path / "pretrained", "--remove", "0.1"))
    assert "no --weights given" not in capsys.readouterr().out


def test_config_yaml_reruns_the_job_and_lets_graphs_rebuild_each_target(tmp_path, weights, no_curves):
    import json

    import graphs.cli as gcli

    mod = recipe()
    out = tmp_path / "run"
    mod.main(args(weights, out, "--remove", "0.1", "0.3"))
    cfg = out / "config.yaml"
    assert cfg.is_file()
    mod.main(["--config", str(cfg), "--output_dir", str(tmp_path / "again")])  # every key is one --config takes
    rows = [json.loads((d / "summary.json").read_text())["rows"] for d in (out, tmp_path / "again")]
    assert [(r["target"], r["removed"], r["holdout_acc"]) for r in rows[0]] == \
        [(r["target"], r["removed"], r["holdout_acc"]) for r in rows[1]]
    # `python -m graphs` finds the model name one folder up and the pruned weights beside the connectome
    for target in ("0.1", "0.3"):
        net, conn = gcli.load_run(str(out / f"remove_{target}"))
        assert conn.num_synapses() - conn.num_live() == next(r["removed"] for r in rows[0] if r["target"] == target)
        sd = torch.load(out / f"remove_{target}" / "pruned_state_dict.pt", weights_only=True)
        assert all(torch.equal(v, net.state_dict()[k]) for k, v in sd.items())


def test_graphs_names_a_path_that_does_not_exist(tmp_path):
    import graphs.cli as gcli

    with pytest.raises(FileNotFoundError, match="no run folder or connectome file at .*nowhere"):
        gcli.load_run(str(tmp_path / "nowhere"))


def test_figure_draws_each_stage_by_its_last_evaluation_and_the_swaps(tmp_path, monkeypatch):
    """The held-out line joins where each stage settled (an evaluation just after a jump is drawn
    apart, not as the line's value there), and the crawl panel shows the swaps at fixed counts."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.figure

    mod = recipe()
    evs = [{"kind": "eval", "step": s, "stage": st, "removed": r, "holdout_loss": 1.0 / a, "holdout_acc": a}
           for s, st, r, a in ((2, 0, 10, 0.7), (4, 0, 10, 0.8), (6, 1, 20, 0.5), (8, 1, 20, 0.6), (10, 1, 20, 0.75))]
    assert mod._stage_ends(evs) == {1, 4}
    # a stage whose count drifts (threshold mode, approach > 0) still ends once, at its last evaluation
    drifting = [{"stage": 0, "removed": r} for r in (5, 8, 9)] + [{"stage": 1, "removed": r} for r in (20, 21)]
    assert mod._stage_ends(drifting) == {2, 4}
    ups = [{"kind": "update", "step": s, "removed": 10 if s <= 5 else 20, "train_loss": 1.0, "train_acc": 0.5}
           for s in range(1, 11)]
    events = [{"kind": "update", "step": s, "pruned": p, "grown": g, "boundaries": None}
              for s, p, g in ((1, 10, 0), (2, 3, 3), (3, 1, 1), (6, 10, 0), (7, 2, 2))]
    rows = [{"removed": 0, "holdout_acc": 0.6, "holdout_loss": 1.5, "test_acc": 0.55, "test_loss": 1.6}]
    captured = {}
    real_savefig = matplotlib.figure.Figure.savefig

    def spy(fig, path, **kw):
        captured["axes"] = fig.axes
        return real_savefig(fig, path, **kw)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", spy)
    mod._plot(ups + evs, rows, events, tmp_path / "curves.png")
    assert (tmp_path / "curves.png").stat().st_size > 0
    acc = captured["axes"][1]
    line = next(l for l in acc.get_lines() if l.get_label().startswith("held-out (part of TRAIN)"))
    assert list(line.get_xdata()) == [0, 10, 20] and list(line.get_ydata()) == [0.6, 0.8, 0.75]
    during = next(l for l in acc.get_lines() if l.get_label() == "held-out, during a stage")
    assert sorted(zip(during.get_xdata(), during.get_ydata())) == [(10, 0.7), (20, 0.5), (20, 0.6)]
    twin = captured["axes"][-1]  # the crawl panel's right axis
    swaps = twin.get_lines()[0]
    assert list(swaps.get_xdata()) == [2, 3, 7] and list(swaps.get_ydata()) == [3, 1, 2]


def test_curves_show_removal_as_steps_from_step_0_with_one_legend_off_the_data(tmp_path, monkeypatch):
    """The removed count was a sloped line from the first update (a jump at step 2 read as a ramp,
    and the dense stretch before it was missing); the crawl panel's legend sat under its twin axis,
    whose dots were drawn on it; the figure named neither model nor dataset."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.figure

    mod = recipe()
    ups = [{"kind": "update", "step": s, "removed": 10 if s < 6 else 20, "train_removed": 0 if s == 2 else (10 if s <= 6 else 20),
            "train_loss": 1.0, "train_acc": 0.5} for s in (2, 4, 6, 8)]
    evs = [{"kind": "eval", "step": 9, "stage": 1, "removed": 20, "holdout_loss": 1.0, "holdout_acc": 0.5}]
    events = [{"kind": "update", "step": s, "pruned": p, "grown": g, "boundaries": {"prune": 0.2, "restore": 0.3}}
              for s, p, g in ((2, 10, 0), (4, 3, 3), (6, 10, 0), (8, 2, 2))]
    captured = {}
    real_savefig = matplotlib.figure.Figure.savefig

    def spy(fig, path, **kw):
        captured["fig"] = fig
        return real_savefig(fig, path, **kw)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", spy)
    mod._plot(ups + evs, [], events, tmp_path / "curves.png")  # the title is optional
    fig = captured["fig"]
    crawl, twin = fig.axes[2], fig.axes[-1]
    line = next(l for l in crawl.get_lines() if l.get_label() == "removed weights")
    assert line.get_drawstyle() == "steps-post"
    assert line.get_xydata().tolist() == [[0, 0], [2, 10], [4, 10], [6, 20], [8, 20], [9, 20]]
    legend = crawl.get_legend()
    assert [t.get_text() for t in legend.get_texts()] == ["removed weights", "swapped per update (right axis)"]
    assert twin.get_legend() is None
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    r = FigureCanvasAgg(fig).get_renderer()  # the figure was closed after saving: a canvas to measure it on
    assert not legend.get_window_extent(r).overlaps(crawl.get_window_extent(r))  # outside the plotting area
    mod._plot(ups + evs, [], events, tmp_path / "curves.png", title="prune_pretrained: resnet20 on cifar10 (run x)")
    assert captured["fig"]._suptitle.get_text() == "prune_pretrained: resnet20 on cifar10 (run x)"


def test_curves_of_a_run_with_no_update_tick_0_and_say_so(tmp_path, monkeypatch):
    """--remove 0 alone (the dense network, no stage run): the removed-weights axes, with no range,
    were ticked "-40 m" to "60 m", the legends held an empty "train (update windows)" entry, and the
    crawl panel was empty."""
    import matplotlib.pyplot as plt

    figs, close = [], plt.close
    monkeypatch.setattr(plt, "close", lambda fig=None: figs.append(fig))  # kept open to be inspected
    history = [dict(kind="eval", step=0, stage=0, removed=0, holdout_loss=2.3, holdout_acc=0.1)]
    rows = [dict(target=t, removed=0, holdout_loss=2.3, holdout_acc=0.1, test_loss=2.4, test_acc=0.1)
            for t in ("dense", "0")]
    recipe()._plot(history, rows, [], tmp_path / "curves.png")
    fig = figs[0]
    for ax in fig.axes[:2]:
        assert list(ax.get_xticks()) == [0]
        assert [t.get_text() for t in ax.get_legend().get_texts()] == [
            "held-out (part of TRAIN), end of each stage", "test (final report)"]
    crawl = fig.axes[2]
    assert not crawl.get_lines() and crawl.get_legend() is None
    assert [t.get_text() for t in crawl.texts] == ["no updates ran (a target of 0 is the dense network, with no stage run)"]
    assert list(crawl.get_xticks()) == [0] and not list(crawl.get_yticks())
    close(fig)


def test_the_removed_weights_axes_tick_whole_counts(tmp_path, monkeypatch):
    """A count of removed weights between 0 and 3 was ticked at "500 m" and "1.5"."""
    import matplotlib.pyplot as plt

    figs, close = [], plt.close
    monkeypatch.setattr(plt, "close", lambda fig=None: figs.append(fig))
    history = [dict(kind="update", step=1, stage=0, removed=3, train_removed=0, train_loss=0.3, train_acc=0.9),
               dict(kind="eval", step=2, stage=0, removed=3, holdout_loss=0.2, holdout_acc=0.95)]
    recipe()._plot(history, [], [], tmp_path / "curves.png")
    for ax in figs[0].axes[:2]:
        ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
        assert ticks == [0, 1, 2, 3]
    close(figs[0])


def test_train_rows_are_scored_on_one_fixed_sample():
    import argparse

    from adaptive.data import get_dataloaders

    mod = recipe()
    dl = get_dataloaders("digits", batch_size=32, holdout=0.1, seed=0, eval_batch_size=50)
    args = argparse.Namespace(train_eval_batches=3, batch_size=32, seed=0, eval_batch_size=50, num_workers=0)
    a, b = mod._train_sample(dl, args), mod._train_sample(dl, args)
    assert len(a.dataset) == 96
    xa = torch.cat([x for x, _ in a])
    assert torch.equal(xa, torch.cat([x for x, _ in b])) and torch.equal(xa, torch.cat([x for x, _ in a]))
    first_two = [torch.cat([x for x, _ in [next(iter(dl.train))]]) for _ in range(2)]
    assert not torch.equal(first_two[0], first_two[1])  # what the old rows did: other images each time


FULL_DISK = '''
import errno, os, runpy, sys
import torch
real = torch.save
def save(obj, f, *a, **kw):
    if os.environ.get("RANK") == "0" and "checkpoint" in str(f):
        raise OSError(errno.ENOSPC, "No space left on device")
    return real(obj, f, *a, **kw)
torch.save = save
sys.argv = [{script!r}] + sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
'''


def test_a_stage_checkpoint_that_cannot_be_written_stops_every_process(tmp_path, weights):
    """The first process writes the stage checkpoint; when that failed (a full disk), it stopped with
    one line while the others ran on into the next stage's collectives (a gloo 'Connection closed')."""
    import os
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _ports import launch_two

    script = tmp_path / "full_disk.py"
    script.write_text(FULL_DISK.format(script=str(ROOT / "recipes" / "prune_pretrained.py")))
    env = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="", MPLBACKEND="Agg")
    r = launch_two([script, *args(weights, tmp_path / "run", "--remove", "0.2", "0.5")], env=env, cwd=ROOT)
    out = r.stdout + r.stderr  # (the two processes' lines can run together: count messages, not lines)
    assert r.returncode != 0 and out.count("recipes/prune_pretrained.py: error:") == 2, out[-3000:]  # one per process
    assert out.count("writing the stage checkpoint") == 2 and out.count("No space left on device") == 2, out[-3000:]
    assert "[rank1]: Traceback" not in out and "Connection closed" not in out, out[-3000:]


def _earlier_run_in(out):
    """The files an earlier two-target run leaves (their content does not matter to the refusal)."""
    out.mkdir(parents=True)
    for name in ("results.md", "summary.json", "config.yaml", "curves.png", "history.jsonl", "events.jsonl"):
        (out / name).write_text("earlier run")
    for target in ("0.2", "0.9"):
        (out / f"remove_{target}").mkdir()
        for name in ("pruned_state_dict.pt", "connectome.safetensors"):
            (out / f"remove_{target}" / name).write_text("earlier run")
    return {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}


def test_a_fresh_run_into_a_folder_holding_an_earlier_run_is_refused_before_anything_is_written(
        tmp_path, weights, monkeypatch):
    """It overwrote summary.json, results.md, config.yaml, ... and left the earlier run's remove_0.9/
    beside the new outputs, where it read as this run's."""
    mod = recipe()
    out = tmp_path / "run"
    before = _earlier_run_in(out)
    monkeypatch.setattr(pp_run, "get_dataloaders", lambda *a, **k: pytest.fail("refused only after loading data"))
    with pytest.raises(RuntimeError) as e:
        mod.main(args(weights, out, "--remove", "0.5"))
    msg = str(e.value)
    assert f"{out} holds an earlier run (results.md, summary.json, history.jsonl, events.jsonl ...)" in msg
    assert "another --output_dir" in msg and "--overwrite" in msg and "--resume" not in msg  # no checkpoint
    (out / "checkpoint.pt").write_text("earlier run")
    with pytest.raises(RuntimeError, match="continue it with the same command and --resume"):
        mod.main(args(weights, out, "--remove", "0.5"))
    (out / "checkpoint.pt").unlink()
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    # the default --output_dir is one fixed folder: a second default run is refused there too
    monkeypatch.chdir(tmp_path)
    _earlier_run_in(tmp_path / "runs" / "prune_pretrained")
    a = args(weights, out, "--remove", "0.5")
    i = a.index("--output_dir")
    with pytest.raises(RuntimeError, match="runs/prune_pretrained holds an earlier run"):
        mod.main(a[:i] + a[i + 2:])
    # --overwrite never deletes an input of the new run
    with pytest.raises(RuntimeError, match="is one of the files --overwrite deletes"):
        mod.main(args(out / "remove_0.2" / "pruned_state_dict.pt", out, "--remove", "0.5", "--overwrite"))
    with pytest.raises(SystemExit, match="give one of them"):
        mod.parse_args(["--resume", "--overwrite"])


def test_overwrite_deletes_only_the_earlier_runs_files_once_the_new_settings_are_accepted(tmp_path, weights, no_curves):
    mod = recipe()
    out = tmp_path / "run"
    before = _earlier_run_in(out)
    (out / "notes.txt").write_text("mine")
    (out / "remove_0.2" / "mine.txt").write_text("mine")  # a file of the user's in a result folder
    (out / "remove_0.9" / "graph_report").mkdir()  # what `python -m graphs report` wrote there
    (out / "remove_0.9" / "graph_report" / "summary.json").write_text("{}")
    (out / "connectome_notes.json").write_text("{}")  # a user's file, named alike
    with pytest.raises(ValueError, match="beyond"):  # refused settings: the earlier run stays whole
        mod.main(args(weights, out, "--remove", "10000000", "--overwrite"))
    assert all(p.read_bytes() == b for p, b in before.items())
    summary = mod.main(args(weights, out, "--remove", "0.5", "--overwrite"))
    assert {r["target"] for r in summary["rows"]} == {"dense", "0.5"}
    assert not (out / "remove_0.9").exists()  # the earlier run's result folder went, derived files and all
    assert sorted(p.name for p in (out / "remove_0.2").iterdir()) == ["mine.txt"]  # the user's file stays
    assert (out / "notes.txt").read_text() == "mine" and (out / "connectome_notes.json").exists()
    assert (out / "pruned_state_dict.pt").is_file() and "0.5" in (out / "results.md").read_text()
    import yaml

    assert yaml.safe_load((out / "config.yaml").read_text())["overwrite"] is False  # a rerun from it deletes nothing


def test_an_interrupted_overwrite_leaves_no_earlier_checkpoint(tmp_path, weights, monkeypatch):
    """Once the new settings are accepted the earlier run is gone as a whole: a Ctrl-C in the first
    target leaves neither its checkpoint (a later --resume would continue the deleted run) nor its
    other files."""
    mod = recipe()
    out = tmp_path / "run"
    _earlier_run_in(out)
    (out / "checkpoint.pt").write_text("earlier run")

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(mod.stage_checkpoint, "save_stage", interrupted)
    with pytest.raises(KeyboardInterrupt):
        mod.main(args(weights, out, "--remove", "0.5", "--overwrite"))
    assert sorted(p.name for p in out.iterdir()) == []  # the earlier run gone as a whole, and this one's lock too


@pytest.mark.parametrize("aside", [False, True])
def test_an_overwrite_stopped_before_its_settings_are_accepted_says_the_earlier_run_is_kept(
        tmp_path, weights, monkeypatch, capsys, aside):
    """An --overwrite run that stops before its settings are accepted (its first update) deletes
    nothing and puts the earlier run's checkpoint back, as it should (bad input costs no earlier run),
    but its error did not say so, and where an --overwrite run killed before that point had left the
    checkpoint set aside (``aside``: checkpoint.pt.earlier) the run said nothing of the earlier run
    at all. Both now say it is kept, and how to replace or continue it."""
    mod = recipe()
    out = tmp_path / "run"
    _earlier_run_in(out)
    (out / ("checkpoint.pt.earlier" if aside else "checkpoint.pt")).write_text("earlier run")
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}

    def refused(*a, **k):
        raise ValueError("refused before its first update")

    monkeypatch.setattr(pp_run, "optimize_connectome", refused)
    with pytest.raises(ValueError, match="refused before its first update") as e:
        mod.main(args(weights, out, "--remove", "0.5", "--overwrite"))
    assert f"--overwrite: the earlier run in {out} is deleted once this run's settings are accepted" \
        in capsys.readouterr().out
    assert e.value.__notes__ == [
        f"--overwrite: this run stopped before its settings were accepted, so the earlier run in {out} is untouched "
        "(its checkpoint.pt put back): run the command again, with what stopped it mended, to replace it, or "
        "continue it with --resume in place of --overwrite"]  # (the same command would be refused again)
    assert (out / "checkpoint.pt").read_text() == "earlier run" and not (out / "checkpoint.pt.earlier").exists()
    after = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert after == {(out / "checkpoint.pt" if p.name == "checkpoint.pt.earlier" else p): b for p, b in before.items()}


def test_ctrl_c_in_an_overwrite_run_after_another_in_the_process_says_the_earlier_run_is_untouched(
        tmp_path, weights, monkeypatch):
    """_STARTED (module state, shared by every load of the script since the split) kept an earlier
    main()'s 'replaced its earlier run' for the rest of the process: an --overwrite run interrupted
    before its settings were accepted then said the earlier run's checkpoint.pt continued it with
    --resume, as if this run had written it. main() starts _STARTED afresh."""
    mod = recipe()
    out = tmp_path / "run"
    _earlier_run_in(out)
    (out / "checkpoint.pt").write_text("earlier run")
    monkeypatch.setitem(mod._STARTED, "replaced_earlier", True)  # as an --overwrite run before in this process left it

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(pp_run, "optimize_connectome", interrupted)
    argv = args(weights, out, "--remove", "0.5", "--overwrite")
    with pytest.raises(KeyboardInterrupt):
        mod.main(argv)
    assert mod._on_interrupt(argv) == f"the earlier run in {out} is untouched; run the same command again to start afresh"
    assert (out / "checkpoint.pt").read_text() == "earlier run"


def test_cifar10_download_waits_for_the_model_checks(tmp_path, weights, monkeypatch):
    """--dataset cifar10 --download with no copy on disk downloaded it before the --remove count
    beyond the model's synapses was refused (refused before the data for every other dataset)."""
    import torchvision

    calls = []

    def recorded(root, train=True, download=False, **kw):
        calls.append(download)
        raise RuntimeError("no download in tests")

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", recorded)
    mod = recipe()
    with pytest.raises(ValueError, match="beyond the model's 268,336 prunable synapses"):
        mod.main(["--model", "resnet20", "--dataset", "cifar10", "--download", "--data-dir", str(tmp_path / "data"),
                  "--output_dir", str(tmp_path / "run"), "--remove", "99999999", "--no-progress"])
    assert calls == [] and not (tmp_path / "run").exists()


def test_a_second_run_into_a_busy_folder_is_refused(tmp_path, weights):
    import fcntl

    mod = recipe()
    out = tmp_path / "busy"
    out.mkdir()
    with open(out / ".lock", "a+") as held:  # another run holds the folder
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(RuntimeError, match=f"another run is writing into {out}"):
            mod.main(args(weights, out, "--remove", "0.5"))
    assert sorted(p.name for p in out.iterdir()) == [".lock"]


def test_a_resume_into_a_busy_folder_is_refused_before_its_files_are_read(tmp_path, weights, monkeypatch):
    """A --resume into a folder whose run still runs read its config.yaml and checkpoint (which that run
    rewrites) and loaded the data before the lock refused it: refused as busy first, reading nothing."""
    import fcntl

    mod = recipe()
    out = tmp_path / "busy"
    out.mkdir()
    (out / "config.yaml").write_text("{{{ half-written")  # what the live run is writing: never read
    monkeypatch.setattr(pp_run, "get_dataloaders", lambda *a, **k: pytest.fail("data loaded for a busy folder"))
    with open(out / ".lock", "a+") as held:  # another run holds the folder
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        for extra in (("--resume",), ()):
            with pytest.raises(RuntimeError, match=f"another run is writing into {out}"):
                mod.main(args(weights, out, "--remove", "0.5", *extra))
    assert sorted(p.name for p in out.iterdir()) == [".lock", "config.yaml"]


def test_only_the_process_that_takes_the_lock_asks_whether_the_folder_is_busy(tmp_path, weights, monkeypatch):
    """Every process of a launch asked whether the folder was busy, each at its own moment, before the
    process group existed: a process that started after the main process had taken the lock found its
    own launch's lock and refused the launch it belongs to (and one that found a run the main process
    had not seen stopped alone). Process 1 asks nothing; the main process still refuses."""
    import fcntl

    mod = recipe()
    out = tmp_path / "run"
    out.mkdir()

    class DataRead(Exception):
        pass

    monkeypatch.setattr(pp_run, "get_dataloaders", lambda *a, **k: (_ for _ in ()).throw(DataRead()))
    monkeypatch.setenv("WORLD_SIZE", "2")
    with open(out / ".lock", "a+") as held:  # the main process of the launch holds the folder
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        monkeypatch.setenv("RANK", "1")
        monkeypatch.setenv("LOCAL_RANK", "1")
        with pytest.raises(DataRead):  # process 1 goes on to its data, as the main process did
            mod.main(args(weights, out, "--remove", "0.5"))
        monkeypatch.setenv("RANK", "0")
        monkeypatch.setenv("LOCAL_RANK", "0")
        with pytest.raises(RuntimeError, match=f"another run is writing into {out}"):
            mod.main(args(weights, out, "--remove", "0.5"))


def test_overwrite_never_deletes_through_a_link_nor_in_a_folder_without_an_earlier_run(tmp_path, weights, capsys, no_curves):
    """--overwrite followed a symlinked remove_* folder and deleted the files behind it (or died half-way
    deleting); in a folder holding no earlier run it deleted a user's graph_report/ and figures. A
    recipes/adaptive.py run folder was half-deleted by it; a --resume into a missing folder created it."""
    mod = recipe()
    out = tmp_path / "run"
    mod.main(args(weights, out, "--remove", "0.2", "0.5"))
    elsewhere = tmp_path / "archive"
    elsewhere.mkdir()
    for n in ("pruned_state_dict.pt", "connectome.safetensors", "notes.txt"):
        (elsewhere / n).write_text("mine")
    (out / "remove_best").symlink_to(elsewhere, target_is_directory=True)
    mod.main(args(weights, out, "--remove", "0.3", "--overwrite"))
    assert sorted(p.name for p in elsewhere.iterdir()) == ["connectome.safetensors", "notes.txt", "pruned_state_dict.pt"]
    mod.main(args(weights, out, "--remove", "0.2", "0.5", "--overwrite"))
    with pytest.raises(mod.run_folder.RunFolderError, match="is a result folder of the recipes/prune_pretrained.py run"):
        mod.main(args(weights, out / "remove_0.2", "--remove", "0.3"))  # (its parent's lock does not cover it)
    mine = tmp_path / "mine"
    (mine / "graph_report").mkdir(parents=True)
    (mine / "graph_report" / "notes.md").write_text("mine")
    (mine / "progress.png").write_text("mine")
    mod.main(args(weights, mine, "--remove", "0.3", "--overwrite"))
    assert (mine / "graph_report" / "notes.md").is_file() and (mine / "progress.png").is_file()
    adaptive_run = tmp_path / "adaptive_run"
    adaptive_run.mkdir()
    (adaptive_run / "metrics.csv").write_text("step\n")
    with pytest.raises(mod.run_folder.RunFolderError, match="holds a run of recipes/adaptive.py"):
        mod.main(args(weights, adaptive_run, "--remove", "0.3", "--overwrite"))
    with pytest.raises(FileNotFoundError, match="no checkpoint.pt"):
        mod.main(args(weights, tmp_path / "nope", "--remove", "0.3", "--resume"))
    assert not (tmp_path / "nope").exists()


# ---- refusals before any data is read (auditor's d3, d4, d5)

MLP = ["--model", "mlp", "--dataset", "fake", "--dataset-kw", "shape=[64]", "--dataset-kw", "train_size=256",
       "--passes", "0.3", "--batch-size", "32", "--remove", "0.2", "0.5", "--eval-every", "1", "--no-progress"]


def _no_data(mod, monkeypatch):
    def refused(*a, **k):
        raise AssertionError("the data was read before the refusal")

    monkeypatch.setattr(pp_run, "get_dataloaders", refused)


def test_a_resume_with_other_data_or_evaluation_settings_is_refused_before_the_data_is_read(tmp_path, monkeypatch):
    """--resume took other --dataset-kw (other examples, same counts: the stage checkpoint knows the
    data only by its counts) and another --eval-every silently, mixed two cadences in history.jsonl and
    rewrote config.yaml as if the whole run had used them. Now config.yaml is written when the run
    starts and a resume is compared with it, as recipes/adaptive.py's is; where and how the run shows
    itself (--threads, --progress, --data-dir, ...) may change."""
    mod = recipe()
    out = tmp_path / "run"
    real = mod.optimize_connectome
    _crash_in_second_target(mod, monkeypatch)
    with pytest.raises(Crash):
        mod.main(MLP + ["--output_dir", str(out)])
    assert (out / "checkpoint.pt").is_file() and (out / "config.yaml").is_file()
    monkeypatch.setattr(pp_run, "optimize_connectome", real)
    recorded = (out / "config.yaml").read_bytes()
    loaders = mod.get_dataloaders
    _no_data(mod, monkeypatch)
    run_folder = mod.run_folder
    with pytest.raises(run_folder.RunFolderError, match=(
            r"--resume: .*config\.yaml records other settings \(eval_every: run 1, now 3; dataset_kw: run "
            r"\{'shape': \[64\], 'train_size': 256\}, now \{.*'data_seed': 7.*\}\): resume with the run's settings "
            r"\(--config .*config\.yaml --resume gives them all\), or start afresh")):
        mod.main(MLP + ["--dataset-kw", "data_seed=7", "--eval-every", "3", "--output_dir", str(out), "--resume"])
    for other in (["--eval-every", "3"], ["--seed", "1"], ["--estimator", "taylor"], ["--mixed-precision", "bf16"]):
        with pytest.raises(run_folder.RunFolderError, match=f"{other[0].lstrip('-').replace('-', '_')}: run "):
            mod.main(MLP + other + ["--output_dir", str(out), "--resume"])
    assert (out / "config.yaml").read_bytes() == recorded and not (out / "history.jsonl").exists()
    # the run's own config.yaml resumes it, and so does its command with other threads and progress
    monkeypatch.setattr(pp_run, "get_dataloaders", loaders)
    ns = mod.parse_args(["--config", str(out / "config.yaml"), "--resume", "--threads", "1", "--progress"])
    mod._check_resumed_settings(ns, out)
    mod.main(MLP + ["--output_dir", str(out), "--resume", "--threads", "1", "--data-dir", str(tmp_path)])
    hist = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    assert [h["kind"] for h in hist].count("resume") == 1


def test_a_resume_of_a_run_killed_before_its_first_target_names_the_command_that_starts_it(tmp_path, capsys, no_curves):
    """A run killed before its first target (SIGKILL: config.yaml written as it starts, no
    checkpoint.pt): --resume said 'run without --resume to start', and that command is refused
    (the folder holds an earlier run: config.yaml)."""
    mod = recipe()
    out = tmp_path / "run"
    argv = MLP + ["--output_dir", str(out)]
    mod.main(argv)
    for f in out.iterdir():
        if f.name not in ("config.yaml", ".lock"):
            shutil.rmtree(f) if f.is_dir() else f.unlink()  # as a run SIGKILLed before its first target leaves it
    with pytest.raises(FileNotFoundError) as e:
        mod.main(argv + ["--resume"])
    err = str(e.value)
    assert "no checkpoint.pt" in err and "config.yaml" in err and "--overwrite" in err and "another --output_dir" in err
    assert "run without --resume to start" not in err
    assert mod.main(argv + ["--overwrite"])["rows"][-1]["target"] == "0.5"  # the command it names starts the run
    with pytest.raises(FileNotFoundError, match="run without --resume to start$"):  # nothing there: that is the way
        mod.main(MLP + ["--output_dir", str(tmp_path / "none"), "--resume"])
    assert not (tmp_path / "none").exists()


def test_a_run_stopped_before_its_first_target_leaves_no_config_behind(tmp_path, monkeypatch):
    """config.yaml is written as the run starts; a run that records no stage takes it back (the
    folder it made goes too), so the same command runs again without --overwrite."""
    mod = recipe()
    out = tmp_path / "run"

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(mod.stage_checkpoint, "save_stage", interrupted)
    with pytest.raises(KeyboardInterrupt):
        mod.main(MLP + ["--output_dir", str(out)])
    assert not out.exists()


@pytest.mark.parametrize("text, match", [
    ("dataset: [digits]\n", r"c\.yaml: dataset must be text \(a dataset name\), got \['digits'\]$"),
    ("output_dir: 5\n", r"c\.yaml: output_dir must be text \(a folder path\), got 5: quote it \(output_dir: '5'\)"),
    ("weights: 7\n", r"c\.yaml: weights must be text \(a file path\), got 7: quote it"),
    ("estimator: {a: 1}\n", r"c\.yaml: estimator must be text \(an estimator name\), got \{'a': 1\}"),
    ("data_dir: [a]\n", r"c\.yaml: data_dir must be text \(a folder path\), got \['a'\]"),
    ("model: true\n", r"c\.yaml: model must be text \(a model name\), got True"),
    ("remove: [{a: 1}]\n", r"c\.yaml: remove must be targets: fractions, counts or best"),
    ("plugins: [[a.py]]\n", r"c\.yaml: plugins must be a list of \.py files or module names"),
    ("ensemble: bogus\n", r"c\.yaml: ensemble bogus: unknown ensemble spec 'bogus'"),
    ("estimator: nosuch\n", r"c\.yaml: estimator nosuch: unknown estimator: use one of .*presence"),
    ("seed: -1\n", r"c\.yaml: seed must be in \[0, 2\*\*32 - 1\] \(0 to 4294967295\), got -1"),
])
def test_a_config_files_text_values_are_checked_as_the_command_line_checks_them(tmp_path, text, match):
    """Text options (no type= in the parser) went in unchecked: `dataset: [digits]` gave 'unhashable
    type: list', `output_dir: 5` 'expected str, bytes or os.PathLike object, not int', and
    `data_dir: [a]` was accepted and recorded."""
    with pytest.raises(SystemExit, match=match):
        # (the base keys a case sets itself are left out: a key given twice is refused on its own)
        base = "".join(f"{k}: {v}\n" for k, v in (("model", "mlp"), ("dataset", "digits")) if not text.startswith(k + ":"))
        recipe().parse_args(["--config", _config(tmp_path, base + text)])
    ok = recipe().parse_args(["--config", _config(tmp_path, "remove: [0.2, 500]\nplugins: []\noutput_dir: '5'\n")])
    assert ok.remove == [0.2, 500] and ok.output_dir.endswith("5")


@pytest.mark.parametrize("argv, match", [
    (["--ensemble", "bogus"], r"^--ensemble bogus: unknown ensemble spec 'bogus': use 'synapse'"),
    (["--ensemble", "2:4"], r"^--ensemble 2:4: n:m fixes the density in every group"),
    (["--estimator", "nosuch"], r"^--estimator nosuch: unknown estimator: use one of .*presence.*--plugins"),
    (["--model", "nosuch"], r"^--model nosuch: unknown model: use one of .*resnet20.*--plugins\)$"),
    (["--model", "lenet3000"], r"^--model lenet3000: unknown model: .*; did you mean 'lenet300' for 'lenet3000'\?$"),
    (["--estimator", "taylr"], r"^--estimator taylr: unknown estimator: .*; did you mean 'taylor' for 'taylr'\?$"),
    (["--seed", "99999999999999999999"], r"^--seed must be in \[0, 2\*\*32 - 1\] \(0 to 4294967295\), got 9+$"),
    (["--seed", "-1"], r"^--seed must be in \[0, 2\*\*32 - 1\] \(0 to 4294967295\), got -1$"),
    (["--seed", "4294967296"], r"^--seed must be in \[0, 2\*\*32 - 1\] \(0 to 4294967295\), got 4294967296$"),
])
def test_names_and_seeds_are_refused_before_the_data_is_read(tmp_path, monkeypatch, argv, match):
    """--ensemble bogus and --estimator nosuch failed only after the data had loaded and the model had
    been built; --seed 99999999999999999999 'Overflow when unpacking long long', and -1 or 2**32 ran."""
    mod = recipe()
    _no_data(mod, monkeypatch)
    out = tmp_path / "run"
    with pytest.raises(SystemExit, match=match):
        mod.main(["--model", "mlp", "--dataset", "digits", "--remove", "0.2", "--output_dir", str(out), *argv])
    assert not out.exists()
    assert recipe().parse_args(["--seed", "4294967295"]).seed == 4294967295


def test_the_differ_check_counts_a_surviving_weight_moved_by_one_bit(tmp_path, weights, capsys, monkeypatch, no_curves):
    """The 'surviving weights that differ from the original' check compares pruned_state_dict.pt with
    a copy of the weights taken at load: a surviving weight moved by one ulp after the optimisation, in
    the model and in the connectome's own copy alike, prints 1 (a self-comparison would print 0)."""
    mod = recipe()
    real = mod.optimize_connectome

    def moved(model, *a, **kw):
        r = real(model, *a, **kw)
        name = next(iter(r.conn.params))
        with torch.no_grad():
            for snap in r.snapshots.values():
                live = snap.masks[name].flatten().nonzero()[0, 0]
                for t in (r.conn.params[name], r.conn.original[name]):
                    v = t.view(-1)[live]
                    t.view(-1)[live] = torch.nextafter(v, torch.full_like(v, float("inf")))
        return r

    monkeypatch.setattr(pp_run, "optimize_connectome", moved)
    summary = mod.main(args(weights, tmp_path / "run", "--remove", "300"))
    assert "surviving weights that differ from the original: 1 " in capsys.readouterr().out
    assert [r["changed"] for r in summary["rows"] if r["target"] == "300"] == [1]


def test_results_table_columns_follow_their_headers():
    """results.md puts every number under the header of the split that fed it (train, held-out, test),
    and the accuracy headers name their unit: they printed percentages (11.00) under bare 'train acc',
    'held-out acc' and 'test acc', while summary.json's rows hold fractions (0.11)."""
    row = dict(target="0.2", removed=20, fraction=0.2, train_loss=0.1111, train_acc=0.11, holdout_loss=0.2222,
               holdout_acc=0.22, test_loss=0.3333, test_acc=0.33)
    head, _, body = recipe()._table([row]).splitlines()
    cols = [c.strip() for c in head.strip("|").split("|")]
    vals = dict(zip(cols, [c.strip() for c in body.strip("|").split("|")]))
    assert (vals["train loss"], vals["held-out loss"], vals["test loss"]) == ("0.1111", "0.2222", "0.3333")
    assert [vals[f"{s} acc %"] for s in ("train", "held-out", "test")] == ["11.00", "22.00", "33.00"]
    assert vals["removed %"] == "20.0"


def test_a_subset_too_small_to_hold_out_an_example_names_a_fix_this_recipe_takes(tmp_path, weights):
    """The data layer's hint said 'holdout 0 for none', which this recipe refuses: it names a larger
    --subset or --holdout only, as the options are spelt."""
    with pytest.raises(ValueError, match=r"held-out part of fake is empty: .* of --subset 20 with --holdout 0.01 hold "
                                         r"out .*; give a --subset of at least \d+ or a larger --holdout$") as info:
        recipe().main(args(weights, tmp_path / "o", "--remove", "0.2", "--subset", "20", "--holdout", "0.01"))
    assert "no held-out part" not in str(info.value) and not (tmp_path / "o").exists()


def test_a_holdout_that_holds_out_nothing_is_refused_early_naming_the_option(tmp_path, weights, monkeypatch):
    """--holdout 0.001 without --subset (round(0.001 x 52) = 0 of every class of fake) gave an empty
    held-out part silently, and the run failed late as 'holdout loader is empty', never naming --holdout."""
    mod = recipe()
    monkeypatch.setattr(pp_run, "optimize_connectome", lambda *a, **k: pytest.fail("the empty holdout reached the run"))
    argv = args(weights, tmp_path / "o", "--remove", "0.2", "--holdout", "0.001")
    del argv[argv.index("--subset"):argv.index("--subset") + 2]
    with pytest.raises(ValueError, match=r"^the held-out part of fake is empty: --holdout 0\.001 holds out .* of every "
                                         r"class of its 512 train examples \(the largest class has \d+\); give "
                                         r"--holdout 0\.\d+ or more$"):  # (no --holdout 0: this recipe refuses it)
        mod.main(argv)
    assert not (tmp_path / "o").exists()


def test_verify_batches_above_the_held_out_batches_is_refused_naming_the_recipes_options(tmp_path, weights, monkeypatch):
    """--verify-batches 5 on a held-out part of one batch was refused by optimize_connectome in its own
    words ('verify_batches=5 ... give verify_batches <= 1'), naming no option this command takes: the
    recipe refuses it with --verify-batches and the options that set the held-out batches, before the run."""
    mod = recipe()
    monkeypatch.setattr(pp_run, "optimize_connectome", lambda *a, **k: pytest.fail("the refused setting reached the run"))
    with pytest.raises(ValueError, match=r"^--verify-batches 5 is more than the 1 batch of the held-out part "
                                         r"\(\d+ images, --eval-batch-size 64 each\): .*give --verify-batches 1 or "
                                         r"fewer, or hold out more batches \(a larger --holdout or --subset, or a "
                                         r"smaller --eval-batch-size\)$") as info:
        mod.main(args(weights, tmp_path / "o", "--remove", "0.2", "--verify-batches", "5"))
    assert "verify_batches" not in str(info.value) and not (tmp_path / "o").exists()


@pytest.mark.parametrize("text", ["output_dir: ''\n", "output_dir:\n", "output_dir: null\n"])
def test_an_empty_output_dir_is_refused_not_the_working_directory(tmp_path, text):
    """output_dir: '' wrote the run into the working directory, and output_dir: (null) crashed with
    'expected str, bytes or os.PathLike object, not NoneType' once the data had loaded."""
    with pytest.raises(SystemExit, match=r"c\.yaml: output_dir is empty \(''\): give the run folder \(default: "
                                         r"runs/prune_pretrained"):
        recipe().parse_args(["--config", _config(tmp_path, text)])
    with pytest.raises(SystemExit, match=r"--output_dir is empty"):
        recipe().parse_args(["--output_dir", " "])


def test_a_config_key_with_no_value_is_unset(tmp_path):
    """`batch_size:` (null) crashed with "'<' not supported between instances of 'NoneType' and 'int'",
    `model:` with "argument of type 'NoneType' is not iterable", `eval_batch_size:` only once the data
    had loaded; `mixed_precision:` ran under the label None."""
    mod = recipe()
    keys = [k for k in mod.DEFAULTS if k != "output_dir"]
    ns = mod.parse_args(["--config", _config(tmp_path, "".join(f"{k}:\n" for k in keys))])
    default = mod.parse_args([])
    assert {k: getattr(ns, k) for k in keys} == {k: getattr(default, k) for k in keys}


def test_remove_ladder_and_plugins_given_several_times_add_up():
    """--remove 0.1 --remove 0.2 ran only 0.2 (argparse's last one won), as did --ladder and --plugins."""
    mod = recipe()
    assert mod.parse_args(["--remove", "0.1", "--remove", "0.2", "0.3"]).remove == [0.1, 0.2, 0.3]
    assert mod.parse_args(["--remove", "best", "--ladder", "0.1", "--ladder", "0.3"]).ladder == [0.1, 0.3]
    assert mod.parse_args(["--remove", "best", "--ladder"]).ladder == []  # no values: threshold mode, as before
    assert mod.parse_args(["--plugins", "math", "--plugins", "json"]).plugins == ["math", "json"]
    with pytest.raises(ValueError, match="given twice"):
        mod.parse_args(["--remove", "0.2", "--remove", "0.2"])


@pytest.mark.parametrize("damage", [b"", b"PK\x03\x04 cut short", b"not a checkpoint at all"])
def test_a_damaged_checkpoint_is_refused_before_the_data_loads(tmp_path, monkeypatch, damage):
    """--resume with a truncated checkpoint.pt loaded the data and built the model before saying so."""
    mod = recipe()
    out = tmp_path / "run"
    out.mkdir()
    (out / "checkpoint.pt").write_bytes(damage)
    monkeypatch.setattr(pp_run, "get_dataloaders", lambda *a, **k: pytest.fail("the data was loaded"))
    with pytest.raises(ValueError, match=r"checkpoint\.pt (is empty|is not a readable mask-only checkpoint).*It "
                                         r"cannot be resumed: start afresh with --overwrite"):
        mod.main(["--output_dir", str(out), "--resume", "--dataset", "digits", "--model", "mlp"])
    assert (out / "checkpoint.pt").read_bytes() == damage


def test_test_subset_reports_on_a_stratified_draw(tmp_path, weights, capsys, no_curves):
    """The refusal named test_subset, not this recipe's --test-subset; a --test-subset of the whole
    test split or more was reported as 'a stratified draw from the test split'. A test_loader_hook
    wrapper without ``.dataset`` failed the report under --test-subset (its words read the wrapper)."""

    class Wrapped:  # reads the loader, as a test's spy does; no .dataset
        def __init__(self, loader):
            self.loader = loader

        def __iter__(self):
            return iter(self.loader)

        def __len__(self):
            return len(self.loader)

    mod = recipe()
    with pytest.raises(ValueError, match="--test-subset 5 cannot hold one test example of each of the 10 classes of "
                                         "fake: give a --test-subset of at least 10"):
        mod.main(args(weights, tmp_path / "few", "--remove", "0.5", "--test-subset", "5"))
    assert not (tmp_path / "few" / "results.md").exists()
    capsys.readouterr()
    mod.main(args(weights, tmp_path / "out", "--remove", "0.5", "--test-subset", "30"), test_loader_hook=Wrapped)
    out = capsys.readouterr().out
    results = (tmp_path / "out" / "results.md").read_text()
    for text in (out, results):
        assert "test = a stratified draw from the test split (30 of " in text and "drawn by --test-subset)" in text
    assert yaml.safe_load((tmp_path / "out" / "config.yaml").read_text())["test_subset"] == 30
    with pytest.warns(UserWarning, match=r"--test-subset 1000 asks for more examples than the test split of fake "
                                         r"holds \(128\): all 128 are used; give --test-subset 128"):
        mod.main(args(weights, tmp_path / "all", "--remove", "0.5", "--test-subset", "1000"))
    out = capsys.readouterr().out
    for text in (out, (tmp_path / "all" / "results.md").read_text()):
        assert "test = the whole test split (128 images: --test-subset 1000 is not smaller)" in text  # as typed
        assert "stratified draw from the test split" not in text


def test_the_splits_note_and_curves_give_the_held_out_part_s_size_and_the_whole_test_split(tmp_path, weights,
                                                                                         capsys, monkeypatch):
    """The Splits note (stdout and results.md) and curves.png's legend said 'a stratified part of the
    TRAIN split' without its size; without --test-subset the note said 'the test split' uncounted."""
    import matplotlib.figure

    labels = []
    real_savefig = matplotlib.figure.Figure.savefig

    def spy(fig, path, **kw):
        labels.extend(l.get_label() for ax in fig.axes for l in ax.get_lines())
        return real_savefig(fig, path, **kw)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", spy)
    mod = recipe()
    n = len(mod.get_dataloaders("fake", batch_size=32, holdout=0.1, subset=192, seed=0).holdout.dataset)
    mod.main(args(weights, tmp_path / "out", "--remove", "0.5"))
    out = capsys.readouterr().out
    for text in (out, (tmp_path / "out" / "results.md").read_text()):
        assert (f"held-out = a stratified part of the TRAIN split ({n:,} images; used for the line search of every "
                "update; pretrained weights may have been trained on these very images") in text
        assert "test = the whole test split (128 images), read only for this report" in text
    assert f"held-out (part of TRAIN, {n:,} images), end of each stage" in labels, labels


@pytest.mark.parametrize("more, use", [
    (["--remove", "0.5", "--verify-batches", "0"],
     "scored only: fixed targets with no line search (--verify-batches 0) choose nothing by it"),
    (["--remove", "best", "--ladder", "0.5", "--verify-batches", "0"],
     "used for the choice of the best snapshot and when the climb stops (2 rungs without a better held-out score, "
     "--patience)"),
])
def test_the_splits_note_says_what_the_held_out_part_decided(tmp_path, weights, capsys, more, use):
    """It said 'used for line search and snapshot choice' in every run, also in one with fixed targets
    and --verify-batches 0 (the ImageNet configs' setting), where the held-out part chose nothing."""
    mod = recipe()
    mod.main(args(weights, tmp_path / "out", *more))
    for text in (capsys.readouterr().out, (tmp_path / "out" / "results.md").read_text()):
        assert f" images; {use}; pretrained weights may have been trained on these very images, so its figures can " \
               "read above the test split's); test = " in text


def test_the_splits_note_says_the_held_out_part_stops_the_climb():
    """For --remove best on a ladder the note said the held-out part chose the best snapshot, not that its scores
    also stop the climb (--patience rungs without a better one); threshold mode (no ladder) has no climb."""
    def note(**kw):
        settings = dict(remove=["best"], verify_batches=0, ladder=[0.5], patience=2)
        return recipe()._holdout_use(argparse.Namespace(**{**settings, **kw}), 1000)

    assert note() == ("used for the choice of the best snapshot and when the climb stops (2 rungs without a better "
                      "held-out score, --patience)")
    assert note(patience=1, verify_batches=3) == (
        "used for the line search of every update, the choice of the best snapshot and when the climb stops (1 rung "
        "without a better held-out score, --patience)")
    assert note(ladder=[]) == "used for the choice of the best snapshot"
    assert note(remove=[0.5], verify_batches=1) == "used for the line search of every update"
    # a target of 0 (a count, a fraction, one rounding to 0) runs no update: no line search to use it for
    assert note(remove=[0.5, 0], verify_batches=1) == "used for the line search of every update"
    for zero in ([0], [0.0], [0.0004], ["0"]):
        assert note(remove=zero, verify_batches=1) == "scored only: a target of 0 is the dense network, with no update to verify"


def _mlp_weights(path, hidden):
    torch.manual_seed(0)
    torch.save(build_model("mlp", num_classes=10, in_shape=(64,), hidden=hidden).state_dict(), path)
    return path


def test_model_kw_builds_the_model_its_weights_fit_and_everything_rebuilt_from_the_run_uses_it(tmp_path, no_curves):
    """prune_pretrained had no --model-kw: a network built with other arguments than its family's
    defaults (an mlp of other hidden sizes, a ViT with qkv=separate, a GoogLeNet trained without
    transform_input) could not be loaded. Now --model-kw builds it, config.yaml records it, a --resume
    with other --model-kw is refused, and `python -m graphs` rebuilds the same model."""
    import graphs.cli as gcli

    mod = recipe()
    weights = _mlp_weights(tmp_path / "w.pt", [16])
    base = MLP[:MLP.index("--remove")] + ["--remove", "0.3", "--weights", str(weights)]
    with pytest.raises(WeightsMismatchError):  # the family's default hidden sizes: the file does not fit
        mod.main(base + ["--output_dir", str(tmp_path / "plain")])
    out = tmp_path / "run"
    mod.main(base + ["--model-kw", "hidden=[16]", "--output_dir", str(out)])
    assert yaml.safe_load((out / "config.yaml").read_text())["model_kw"] == {"hidden": [16]}
    net, conn = gcli.load_run(str(out))
    assert [m.out_features for m in net.modules() if isinstance(m, torch.nn.Linear)] == [16, 10]
    sd = torch.load(out / "pruned_state_dict.pt", weights_only=True)
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in sd.items())
    # --resume compares it with the run's record, before any data is read
    with pytest.raises(mod.run_folder.RunFolderError,
                       match=r"records other settings \(model_kw: run \{'hidden': \[16\]\}, now \{'hidden': \[8\]\}\)"):
        mod.main(base + ["--model_kw.hidden", "[8]", "--output_dir", str(out), "--resume"])
    with pytest.raises(mod.run_folder.RunFolderError, match=r"model_kw: run \{'hidden': \[16\]\}, now \{\}"):
        mod.main(base + ["--output_dir", str(out), "--resume"])
    # a run recorded before the option existed was built without one
    recorded = yaml.safe_load((out / "config.yaml").read_text())
    del recorded["model_kw"]
    (out / "config.yaml").write_text(yaml.safe_dump(recorded))
    with pytest.raises(mod.run_folder.RunFolderError, match=r"model_kw: run \{\}, now \{'hidden': \[16\]\}"):
        mod._check_resumed_settings(mod.parse_args(base + ["--model-kw", "hidden=[16]", "--output_dir", str(out),
                                                           "--resume"]), out)


def test_model_kw_is_spelt_and_merged_as_in_recipes_adaptive(tmp_path):
    """KEY=VALUE, a YAML mapping or --model-kw.KEY VALUE, repeatable, merged entry by entry with a
    --config file's model_kw, later ones winning per key, as recipes/adaptive.py's --model_kw."""
    mod = recipe()
    config = tmp_path / "c.yaml"
    config.write_text("model: mlp\nmodel_kw: {hidden: [8], activation: tanh}\n")
    for argv in (["--model-kw", "hidden=[16]", "--model_kw", "{bias: false}"],
                 ["--model_kw.hidden", "[16]", "--model-kw.bias=false"],
                 ["--model-kw", "{hidden: [4], bias: true}", "--model-kw", "hidden=[16]", "--model-kw", "bias=false"]):
        for order in ([*argv, "--config", str(config)], ["--config", str(config), *argv]):
            assert mod.parse_args(order).model_kw == {"hidden": [16], "activation": "tanh", "bias": False}, order
    assert mod.parse_args([]).model_kw == {}
    assert mod.parse_args(["--dataset", "fake", "--dataset_kw.shape", "[64]"]).dataset_kw == {"shape": [64]}
    config.write_text("model: mlp\nmodel_kw: [16]\n")
    with pytest.raises(SystemExit, match=r"model_kw must be a mapping of the model builder's arguments, "
                                         r"e.g. \{hidden: \[64\]\}, got \[16\]"):
        mod.parse_args(["--config", str(config)])


@pytest.mark.parametrize("kw, match", [
    (["--model-kw", "hiden=[16]"], r"--model-kw hiden=\[16\]: model 'mlp' takes no keyword 'hiden' \(did you mean "
                                   r"'hidden'\?\); it takes \['activation', 'bias', 'hidden'\]"),
    (["--model-kw", "num_classes=3"], r"--model-kw num_classes: the recipe sets num_classes from --num-classes "
                                      r"\(default: the dataset's class count\); drop it from --model-kw"),
    (["--model-kw", "weights=x.pt"], r"the recipe sets weights from --weights FILE; drop it from --model-kw"),
    (["--model-kw", "16"], r"--model-kw '16': write KEY=VALUE or a YAML mapping, e.g. --model-kw hidden=\[64\]"),
    (["--model", "torchvision:resnet18", "--model-kw", "arch=resnet34"],
     r"--model-kw arch=resnet34: model 'torchvision:resnet18' takes no keyword 'arch'"),
])
def test_a_bad_model_kw_is_refused_before_anything_runs(tmp_path, monkeypatch, kw, match):
    mod = recipe()
    _no_data(mod, monkeypatch)
    out = tmp_path / "run"
    with pytest.raises(SystemExit, match=match):
        mod.main(MLP + kw + ["--output_dir", str(out)])
    assert not out.exists()


def test_a_model_kw_file_entry_is_named_by_the_file_and_a_bad_value_by_the_option(tmp_path, monkeypatch):
    mod = recipe()
    _no_data(mod, monkeypatch)
    config = tmp_path / "c.yaml"
    config.write_text("model: mlp\nmodel_kw: {hiden: 3}\n")
    with pytest.raises(SystemExit, match=rf"^{config}: model_kw hiden=3: model 'mlp' takes no keyword 'hiden'"):
        mod.parse_args(["--config", str(config)])
    out = tmp_path / "run"
    with pytest.raises(ValueError, match=r"--model-kw hidden=abc: hidden sizes must be whole numbers"):
        mod.main(MLP + ["--model-kw", "hidden=abc", "--output_dir", str(out)])
    assert not out.exists()


def test_curves_draw_the_held_out_points_over_the_test_squares(tmp_path, monkeypatch):
    """Each target's held-out point (the end of its stage) and its test square share the removed
    count: the larger test squares, drawn later, hid the held-out points where the two scores were close."""
    import matplotlib.pyplot as plt

    figs, close = [], plt.close
    monkeypatch.setattr(plt, "close", lambda fig=None: figs.append(fig))  # kept open to be inspected
    history = [dict(kind="update", step=1, stage=0, removed=50, train_removed=0, train_loss=0.3, train_acc=0.9),
               dict(kind="eval", step=2, stage=0, removed=50, holdout_loss=0.2, holdout_acc=0.95)]
    rows = [dict(target="dense", removed=0, holdout_loss=0.25, holdout_acc=0.94, test_loss=0.26, test_acc=0.94),
            dict(target="50", removed=50, holdout_loss=0.2, holdout_acc=0.95, test_loss=0.2, test_acc=0.95)]
    recipe()._plot(history, rows, [], tmp_path / "curves.png")
    for ax in figs[0].axes[:2]:
        line = {l.get_label(): l for l in ax.get_lines()}
        assert line["held-out (part of TRAIN), end of each stage"].get_zorder() > line["test (final report)"].get_zorder()
    close(figs[0])


@pytest.mark.parametrize("what", ["estimator", "ensemble"])
def test_a_resume_without_the_runs_plugin_names_it_before_anything_is_written(tmp_path, what):
    """A run started with --plugins (an estimator or a granularity of its own), resumed in a fresh
    process: without --plugins the name was refused as unknown, and with its file moved the plugin
    as not found, neither saying that the run recorded the plugin or how to give it again. Both are
    refused while parsing, naming the plugin and the run's config.yaml, and the folder is untouched.
    (A resume given the plugin restores it: its name is rebuilt, its state from checkpoint.pt.)"""
    mod = recipe()
    out = tmp_path / "run"
    out.mkdir()
    plugin = tmp_path / "resume_ext.py"
    plugin.write_text("# registers 'resume_plugin_name'\n")
    name = {"estimator": ["--estimator", "resume_plugin_name"], "ensemble": ["--ensemble", "resume_plugin_name"]}[what]
    (out / "config.yaml").write_text(yaml.safe_dump({
        "model": "resnet20", "dataset": "fake", "output_dir": str(out), "remove": [0.2], "plugins": [str(plugin)],
        what: "resume_plugin_name"}))
    (out / "checkpoint.pt").write_bytes(b"state")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(SystemExit, match=rf"unknown {what}.*; the run in {out} was started with --plugins {plugin} "
                                         rf"\(its config.yaml records them\): give them again with --resume, or "
                                         rf"--config {out / 'config.yaml'} --resume"):
        mod.parse_args(["--model", "resnet20", "--dataset", "fake", "--output_dir", str(out), *name, "--resume"])
    plugin.unlink()  # moved since: the run's own settings name it
    with pytest.raises(SystemExit, match=rf"^plugin file {plugin} not found: give the path of a .py file, or the name "
                                         rf"of an importable module; the run in {out} records it in "
                                         rf"{out / 'config.yaml'}: put the file back, or give its new path with --plugins"):
        mod.parse_args(["--config", str(out / "config.yaml"), "--resume"])
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    with pytest.raises(SystemExit, match=rf"unknown {what}") as fresh:  # no run resumed: no hint
        mod.parse_args(["--model", "resnet20", "--dataset", "fake", "--output_dir", str(tmp_path / "new"), *name])
    assert "was started with" not in fresh.value.code


@pytest.mark.parametrize("case", ["broken file", "module gone"])
def test_a_resume_whose_recorded_plugin_fails_says_what_is_wrong_with_it(tmp_path, case):
    """A recorded plugin file that is there but raises while loading was told to be put back or
    given by its new path (it had not moved); a recorded module no longer importable, to put its
    file back. The first gets no hint, the second one for a module."""
    mod = recipe()
    out = tmp_path / "run"
    out.mkdir()
    plugin = tmp_path / "broken_ext.py"
    plugin.write_text("raise ValueError('bug in the plugin')\n")
    spec = str(plugin) if case == "broken file" else "no_such_pkg_for_resume.ext"
    (out / "config.yaml").write_text(yaml.safe_dump({
        "model": "resnet20", "dataset": "fake", "output_dir": str(out), "remove": [0.2], "plugins": [spec]}))
    with pytest.raises(SystemExit) as e:
        mod.parse_args(["--config", str(out / "config.yaml"), "--resume"])
    if case == "broken file":
        assert e.value.code == f"plugin {plugin} failed while loading: ValueError: bug in the plugin"
    else:
        assert e.value.code.endswith(f"the run in {out} records it in {out / 'config.yaml'}: put the module back on "
                                     "PYTHONPATH, or give it (or its file's path) with --plugins (which replaces the "
                                     "recorded plugins)"), e.value.code
        assert "file" not in e.value.code.split("; the run")[1].split("(or its file")[0]


def test_a_target_of_0_writes_the_dense_network_with_no_pass_and_resumes(tmp_path, weights, monkeypatch):
    """--remove 0 spent a whole stage, a pass over the training data, to write the dense network again. It is now
    written with no stage of its own (no update record), its files are the weights as loaded and an all-ones
    connectome, and a run stopped in the next target resumes after it."""
    mod = recipe()
    out = tmp_path / "run"
    real = mod.optimize_connectome
    _crash_in_second_target(mod, monkeypatch)
    with pytest.raises(Crash):
        mod.main(args(weights, out, "--remove", "0", "0.2"))
    assert (out / "checkpoint.pt").is_file() and not (out / "results.md").exists()
    monkeypatch.setattr(pp_run, "optimize_connectome", real)
    summary = mod.main(args(weights, out, "--remove", "0", "0.2", "--resume"))
    hist = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    assert [h["stage"] for h in hist if h["kind"] == "resume"] == [1]
    assert {h["stage"] for h in hist if h["kind"] == "update"} == {1}  # target 0 took no pass
    rows = {r["target"]: r for r in summary["rows"]}
    assert set(rows) == {"dense", "0", "0.2"} and rows["0"]["removed"] == 0 and rows["0"]["changed"] == 0
    assert rows["0"]["holdout_acc"] == rows["dense"]["holdout_acc"]
    assert rows["0"]["test_acc"] == rows["dense"]["test_acc"]
    sd = torch.load(out / "remove_0" / "pruned_state_dict.pt", weights_only=True)
    loaded = {k[len("module."):]: v for k, v in torch.load(weights, weights_only=True)["state_dict"].items()}
    assert sd.keys() == loaded.keys() and all(torch.equal(sd[k], loaded[k]) for k in sd)
    conn = adaptive.Connectome.load(out / "remove_0" / "connectome.safetensors", build_model(
        "resnet20", num_classes=10, in_shape=(3, 8, 8)), mode="mask_only")
    assert all(bool(m.all()) for m in conn.masks.values())
    assert (out / "remove_0.2" / "pruned_state_dict.pt").is_file()

    only = tmp_path / "only"  # the dense network alone: no training batch read at all
    summary = mod.main(args(weights, only, "--remove", "0"))
    assert not any(json.loads(line)["kind"] == "update" for line in (only / "history.jsonl").read_text().splitlines())
    assert [r["target"] for r in summary["rows"]] == ["dense", "0"] and (only / "pruned_state_dict.pt").is_file()


def _failing_at_an_update(monkeypatch, when):
    """The recipe module, the optimize_connectome its run calls raising a ValueError at the first update
    ``when`` takes."""
    mod = recipe()
    real = mod.optimize_connectome

    def failing(*a, callback=None, **kw):
        def cb(rec):
            if callback is not None:
                callback(rec)
            if rec["kind"] == "update" and when(rec):
                raise ValueError("a callback refused the update")
        return real(*a, callback=cb, **kw)

    monkeypatch.setattr(pp_run, "optimize_connectome", failing)
    return mod


def test_an_error_in_a_run_prints_its_original_weights_restored_note(tmp_path, weights, capsys, monkeypatch):
    """A ValueError raised mid-run gets the note that the model's original weights were restored: the
    recipe's error line printed str(error) alone, and the note was lost."""
    from adaptive.cli import run_cli

    mod = _failing_at_an_update(monkeypatch, lambda rec: True)
    monkeypatch.delenv("ADAPTIVE_TRACEBACK", raising=False)
    with pytest.raises(SystemExit) as e:
        run_cli(lambda: mod.main(args(weights, tmp_path / "run", "--remove", "0.5")), mod.PROG)
    assert e.value.code == 2
    err = capsys.readouterr().err.splitlines()
    at = err.index(f"{mod.PROG}: error: a callback refused the update")
    assert "original weights" in err[at + 1] and "were restored" in err[at + 1], err


def test_a_config_files_dashed_keys_are_its_underscored_ones(tmp_path):
    """`eval-batch-size: 50` in a --config file was refused ("unknown key(s)") while recipes/adaptive.py's
    config file, and both recipes' command lines, take dashes or underscores alike."""
    mod = recipe()
    ns = mod.parse_args(["--config", _config(tmp_path, "eval-batch-size: 50\ntest-subset: 30\nmodel: mlp\nmodel-kw: {hidden: [8]}\n")])
    assert (ns.eval_batch_size, ns.test_subset, ns.model_kw) == (50, 30, {"hidden": [8]})
    with pytest.raises(SystemExit, match="'eval-batch-size' and 'eval_batch_size' in .* are the same key.*keep one"):
        mod.parse_args(["--config", _config(tmp_path, "eval-batch-size: 50\neval_batch_size: 60\n")])
    with pytest.raises(SystemExit, match="must be an integer"):  # checked as the underscored key is
        mod.parse_args(["--config", _config(tmp_path, "eval-batch-size: fifty\n")])


def test_a_config_file_key_with_leading_dashes_is_refused_naming_the_key_to_write(tmp_path):
    """`--eval-batch-size: 50` (a command-line option pasted into a --config file) was read as
    `eval_batch_size: 50`; recipes/adaptive.py's --config refuses it, naming the key to write."""
    mod = recipe()
    for text, written in (("--eval-batch-size: 50\n", "--eval-batch-size"), ("-test_subset: 30\n", "-test_subset")):
        with pytest.raises(SystemExit, match=f"config key '{written}' in .* starts with a dash.*write '"):
            mod.parse_args(["--config", _config(tmp_path, text)])
    with pytest.raises(SystemExit, match="model 'mlp' takes no keyword '--a'"):  # a mapping's keys are the model's
        mod.parse_args(["--config", _config(tmp_path, "model: mlp\nmodel-kw: {--a: 1}\n")])


def test_a_run_that_fails_after_a_target_says_its_checkpoint_keeps_it(tmp_path, weights, capsys, monkeypatch):
    """A run that fails after its first target finished: the note said "no snapshot was kept" while
    the run folder's checkpoint held that target's snapshot, from which --resume continues."""
    from adaptive.cli import run_cli

    mod = _failing_at_an_update(monkeypatch, lambda rec: rec["stage"] == 1)
    monkeypatch.delenv("ADAPTIVE_TRACEBACK", raising=False)
    out = tmp_path / "run"
    with pytest.raises(SystemExit):
        run_cli(lambda: mod.main(args(weights, out, "--remove", "0.2", "0.5")), mod.PROG)
    err = capsys.readouterr().err.splitlines()
    note = err[err.index(f"{mod.PROG}: error: a callback refused the update") + 1]
    assert note.endswith(f"were restored, and the snapshot(s) of the target(s) finished before it (0.2) are kept in "
                         f"the checkpoint {out / mod.CHECKPOINT}: run it again with that checkpoint (a recipe's "
                         "--resume) to continue from them"), note
    assert (out / mod.CHECKPOINT).is_file()


def test_a_sparse_weights_file_starts_sparse_and_its_report_counts_what_it_removed(tmp_path, capsys):
    """A pruned state_dict (half its conv and linear weights exactly 0.0) as --weights: the report's first row is
    the start with those removed, a target counts them (0.6: a tenth more), the pruned weights of every file are
    what it says, no surviving weight differs, and a target below the start is refused before the data is read."""
    torch.manual_seed(0)
    m = build_model("resnet20", num_classes=10, in_shape=(3, 8, 8))
    conn = adaptive.Connectome(m)
    conn.set_masks({n: p.detach().abs() > p.detach().abs().flatten().median() for n, p in conn.params.items()})
    total, absent = conn.num_synapses(), conn.num_synapses() - conn.num_live()
    path = tmp_path / "sparse.pt"
    torch.save(conn.dense_state_dict(), path)
    mod = recipe()
    with pytest.raises(ValueError, match="already absent"):
        mod.main(args(path, tmp_path / "below", "--remove", "0.3", "--verify-batches", "0"))
    assert not (tmp_path / "below").exists()
    capsys.readouterr()
    with pytest.warns(UserWarning, match="starts from a sparse network"):
        out = mod.main(args(path, tmp_path / "run", "--remove", "0.6", "--verify-batches", "0"))
    rows = {r["target"]: r for r in out["rows"]}
    assert set(rows) == {"start", "0.6"} and rows["start"]["removed"] == absent
    assert rows["0.6"]["removed"] == round(0.6 * total) and rows["0.6"]["changed"] == 0
    sd = torch.load(tmp_path / "run" / "pruned_state_dict.pt", weights_only=True)
    zeros = sum(int((sd[k] == 0).sum()) for k in sd if k.endswith("weight") and sd[k].dim() > 1)
    assert zeros == rows["0.6"]["removed"]  # (the model's batch-norm weights are not synapses: dim 1)
    assert "surviving weights that differ from the original: 0" in capsys.readouterr().out


def test_best_on_a_sparse_weights_file_beyond_every_rung_is_refused_before_the_data_is_read(tmp_path, monkeypatch):
    """--remove best whose every --ladder rung removes no more than a sparse --weights file has already lost was
    refused only by optimize_connectome, once the data had loaded: the early check did not get the ladder."""
    torch.manual_seed(0)
    m = build_model("resnet20", num_classes=10, in_shape=(3, 8, 8))
    conn = adaptive.Connectome(m)
    conn.set_masks({n: p.detach().abs() > p.detach().abs().flatten().median() for n, p in conn.params.items()})
    path = tmp_path / "sparse.pt"
    torch.save(conn.dense_state_dict(), path)

    def no_data(*a, **kw):
        raise AssertionError("the data was read")

    monkeypatch.setattr(pp_run, "get_dataloaders", no_data)
    with pytest.raises(ValueError, match=r"target 'best': every rung of the ladder \[0\.2, 0\.4\] removes no more "
                                         r"than the .* already absent"):
        recipe().main(args(path, tmp_path / "out", "--remove", "best", "--ladder", "0.2", "0.4"))
    assert not (tmp_path / "out").exists()


def test_the_splits_note_of_a_run_whose_only_target_is_its_sparse_start_says_no_update_ran():
    """--remove at a sparse start's count runs no update (as 0 on a dense network): the note said the held-out
    part fed 'the line search of every update', and the empty panel said the target was the dense network."""
    from types import SimpleNamespace

    mod = recipe()
    a = SimpleNamespace(remove=[352], verify_batches=1, ladder=[0.1], patience=2)
    note = mod._holdout_use(a, 704, 352)
    assert "line search" not in note and "a target of 352 removed is the network as loaded" in note
    assert "the line search of every update" in mod._holdout_use(SimpleNamespace(**{**vars(a), "remove": [400]}), 704, 352)
    assert "a target of 0 is the dense network" in mod._holdout_use(SimpleNamespace(**{**vars(a), "remove": [0]}), 704)


def test_curves_of_a_short_run_tick_whole_batches_show_its_boundaries_and_promise_no_swaps(tmp_path, monkeypatch):
    """A run of 4 updates that swapped nothing (--subset 400 --passes 0.5): the lower panels' batch axis
    was ticked at 0.5, 1.5, ...; the crawl panel's title promised swaps it did not draw; the prune
    boundary's two dots, sized for a thousand updates, were specks."""
    import matplotlib.pyplot as plt

    figs, close = [], plt.close
    monkeypatch.setattr(plt, "close", lambda fig=None: figs.append(fig))
    ups = [dict(kind="update", step=s, stage=s // 3, removed=r, train_removed=t, train_loss=0.4, train_acc=0.8)
           for s, r, t in ((1, 50, 0), (2, 50, 50), (3, 120, 50), (4, 120, 120))]
    evs = [dict(kind="eval", step=s, stage=s // 3, removed=r, holdout_loss=0.5, holdout_acc=0.8) for s, r in ((2, 50), (4, 120))]
    events = [dict(kind="update", step=s, pruned=p, grown=0, boundaries={"prune": b} if p else None)
              for s, p, b in ((1, 50, 0.2), (2, 0, None), (3, 70, 0.6), (4, 0, None))]
    recipe()._plot(ups + evs, [], events, tmp_path / "curves.png")
    fig = figs[0]
    crawl, bounds = fig.axes[2], fig.axes[3]
    for ax in (crawl, bounds):
        ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
        assert ticks and all(float(t).is_integer() for t in ticks), ticks
    assert crawl.get_title().endswith("(no update swapped a synapse)")
    (prune,) = bounds.get_lines()
    assert prune.get_markersize() >= 4
    for ax in fig.axes[:2]:  # the 4 train windows' dots were specks too (3 points, half transparent)
        (train,) = [line for line in ax.get_lines() if line.get_label() == "train (update windows)"]
        assert train.get_markersize() >= 6
    close(fig)
    figs.clear()
    events[1] = dict(kind="update", step=2, pruned=3, grown=3, boundaries=None)  # a swap: the title names swaps
    recipe()._plot(ups + evs, [], events, tmp_path / "curves.png")
    assert figs[0].axes[2].get_title() == "the connectome crawling: removed weights, and synapses swapped per update"
    close(figs[0])


@pytest.mark.parametrize("how", ["flag", "config"])
def test_an_empty_data_dir_is_refused_not_the_default_folder(tmp_path, how):
    """--data-dir '' (an unset shell variable) read $ADAPTIVE_DATA or ../shared/data without a word."""
    argv = ["--data-dir", ""] if how == "flag" else ["--config", _config(tmp_path, "data_dir: ' '\n")]
    where = "--data_dir" if how == "flag" else r"c\.yaml: data_dir"
    with pytest.raises(SystemExit, match=rf"{where} is empty \('\s?'\): give a data folder, or leave it out"):
        recipe().parse_args(argv)


def test_a_resume_of_a_run_started_with_a_window_beyond_one_pass_continues_with_a_warning(tmp_path, weights, capsys,
                                                                                          monkeypatch):
    """A run started before --window was bounded by one pass (a finished target ran with it) was refused on
    --resume, naming a smaller --window, which the resume's own check then refuses as another setting: the
    run could not be continued at all. It continues as it ran, with a warning; a fresh run is still refused."""
    mod = recipe()
    out = tmp_path / "run"
    argv = args(weights, out, "--remove", "0.2", "0.5")
    for option, value in (("--window", "4"), ("--subset", "96"), ("--verify-batches", "0")):
        argv[argv.index(option) + 1] = value  # (--subset 96, 10% held out, 32 a batch: 3 train batches a pass)
    with pytest.raises(ValueError, match=r"--window 4 is more than the 3 batches of one pass"):
        mod.main(argv)
    assert not out.exists()
    from adaptive import mask_only_settings

    real_check, real_opt = pp_run._check_window, pp_run.optimize_connectome
    real_api = mask_only_settings._refuse_window_beyond_a_pass
    monkeypatch.setattr(pp_run, "_check_window", lambda *a: None)  # the recipe before the bound
    monkeypatch.setattr(mask_only_settings, "_refuse_window_beyond_a_pass", lambda s: None)  # and the API's
    _crash_in_second_target(mod, monkeypatch)
    with pytest.raises(Crash):
        mod.main(argv)
    assert (out / "checkpoint.pt").is_file()
    monkeypatch.setattr(pp_run, "_check_window", real_check)
    monkeypatch.setattr(mask_only_settings, "_refuse_window_beyond_a_pass", real_api)
    monkeypatch.setattr(pp_run, "optimize_connectome", real_opt)
    capsys.readouterr()
    summary = mod.main(argv + ["--resume"])
    assert {r["target"] for r in summary["rows"]} == {"dense", "0.2", "0.5"}
    assert "warning: --window 4 is more than the 3 batches of one pass" in capsys.readouterr().out


@pytest.mark.parametrize("given", ["none", "None", "null"])
def test_weights_none_is_the_random_initial_weights_as_help_says(tmp_path, given):
    """--help says "none: random initial weights, a supermask search", and recipes/adaptive.py reads
    --weights none so; prune_pretrained refused it as '--weights none does not exist'. A config file's
    weights: none too."""
    ns = recipe().parse_args(["--model", "resnet20", "--weights", given, "--dataset", "fake", "--output_dir",
                              str(tmp_path / "out")])
    assert ns.weights is None
    (tmp_path / "c.yaml").write_text(f"weights: {given}\n")
    assert recipe().parse_args(["--config", str(tmp_path / "c.yaml"), "--dataset", "fake"]).weights is None


def test_a_launch_asked_for_two_processes_that_starts_one_warns_here_too(monkeypatch):
    """prune_pretrained under `accelerate launch --cpu --num_processes 2` (one process: accelerate starts
    several only with --multi_gpu) ran alone silently, as recipes/adaptive.py did; it warns, naming itself
    in the launch that starts two."""
    from adaptive import distributed
    from recipes._prune_pretrained import builders

    monkeypatch.setattr(distributed, "_launcher_view", lambda pid: (
        ["python", "-m", "accelerate.commands.launch", "--cpu", "--num_processes", "2", "x.py"], False))
    for name in ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("ACCELERATE_USE_CPU", "True")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    with pytest.warns(UserWarning, match=r"asked for 2 processes and started this one alone.*accelerate launch "
                                         r"--multi_gpu --num_processes 2 recipes/prune_pretrained.py"):
        builders._accelerator(argparse.Namespace(cpu=True, mixed_precision=None))


def test_the_differ_check_counts_what_the_load_changed_of_a_float64_file(tmp_path, weights, capsys):
    """The check compared pruned_state_dict.pt with a copy of the model taken after the load: a float64
    weights file, cast to the model's float32 as it loaded, printed 'differ from the original: 0' while
    every surviving value of pruned_state_dict.pt differed from the file. It now counts them (and says
    the load, not the optimisation, changed them); a lossless float16 file changes none."""
    sd = torch.load(weights, weights_only=True)["state_dict"]
    torch.manual_seed(1)
    wide = {k: (v.double() + 1e-12 * torch.randn(v.shape, dtype=torch.float64)) if v.is_floating_point() else v
            for k, v in sd.items()}  # values a float32 cannot hold
    w64 = tmp_path / "w64.pt"
    torch.save({"state_dict": wide}, w64)
    summary = recipe().main(args(w64, tmp_path / "run", "--remove", "300"))
    printed = capsys.readouterr().out
    pruned = torch.load(tmp_path / "run" / "pruned_state_dict.pt", weights_only=True)
    file = {k.removeprefix("module."): v for k, v in wide.items()}
    # independently: surviving (nonzero) entries of the pruned file whose value is not the file's
    differ = sum(int(((pruned[k].double() != file[k].double()) & (pruned[k] != 0)).sum()) for k in file)
    assert differ > 0
    row = next(r for r in summary["rows"] if r["target"] == "300")
    assert row["changed"] == row["changed_by_load"] == differ
    assert f"surviving weights that differ from the original: {differ:,} ({differ:,} changed by the load itself" in printed
    assert "float64 in the file, float32 in the model" in printed and "0 by the optimisation" in printed

    half = tmp_path / "w16.pt"  # float16 into float32 is exact: nothing changed, nothing said
    torch.save({"state_dict": {k: v.half() if v.is_floating_point() else v for k, v in sd.items()}}, half)
    summary = recipe().main(args(half, tmp_path / "run16", "--remove", "300"))
    assert [r["changed"] for r in summary["rows"] if r["target"] == "300"] == [0]
    assert "changed by the load itself" not in capsys.readouterr().out


def test_the_final_reports_bar_is_closed_when_the_report_raises(tmp_path, weights, monkeypatch, capsys):
    """The final report's bar was closed only after its last snapshot: a refusal inside the report (here masks
    that parted between processes, simulated) left it open, the error written onto its line. It is closed however
    the report ends, and the error comes through intact."""
    from tqdm import tqdm

    mod = recipe()
    opened, init = [], tqdm.__init__

    def keep(self, *a, **k):
        init(self, *a, **k)
        opened.append(self)

    def parted(*a, **k):
        raise RuntimeError("the masks parted (simulated)")

    monkeypatch.setattr(tqdm, "__init__", keep)
    monkeypatch.setattr(pp_run, "refuse_differing_masks", parted)
    with pytest.raises(RuntimeError) as raised:
        mod.main(args(weights, tmp_path / "out", "--remove", "0.2", "--progress"))
    assert str(raised.value) == "the masks parted (simulated)"
    bars = [b for b in opened if b.desc == "final report"]
    assert len(bars) == 1 and bars[0].n > 0, bars
    assert bars[0] not in tqdm._instances, "the final report's bar was left open"


@pytest.mark.parametrize("run", ["dense only", "stages"])
def test_curves_legends_lie_off_every_panel_and_name_only_what_is_drawn(tmp_path, monkeypatch, run):
    """--remove 0 (the dense network scored, no stage run): the top panels' one held-out point and one test square lie
    at the top and bottom of the middle, and the legend inside ("best") lay on one of them; a run with no test rows
    listed a "test (final report)" entry with nothing drawn. The legends now lie under the panels, off every axes and
    each other, and name only the lines drawn."""
    import warnings

    import matplotlib.pyplot as plt

    figs, close = [], plt.close
    monkeypatch.setattr(plt, "close", lambda fig=None: figs.append(fig))
    if run == "dense only":
        history = [dict(kind="eval", step=0, stage=0, removed=0, holdout_loss=0.5, holdout_acc=0.8)]
        rows = [dict(target="dense", removed=0, holdout_acc=0.8, holdout_loss=0.5, test_acc=0.79, test_loss=0.55)]
        events = []
    else:  # every kind of line, with the longest labels, and no test rows
        history = [dict(kind="update", step=s, stage=s // 3, removed=r, train_removed=r, train_loss=0.4, train_acc=0.8)
                   for s, r in ((1, 50_000), (2, 50_000), (3, 120_000), (4, 120_000))]
        history += [dict(kind="eval", step=s, stage=s // 3, removed=r, holdout_loss=0.5, holdout_acc=0.8)
                    for s, r in ((1, 50_000), (2, 50_000), (4, 120_000))]
        rows = []
        events = [dict(kind="update", step=s, pruned=3, grown=3, boundaries={"prune": 0.1, "restore": 0.2}) for s in (1, 2, 3, 4)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        recipe()._plot(history, rows, events, tmp_path / "curves.png", holdout_images=5000)
    fig = figs[0]
    try:
        fig.canvas.draw()
        r = fig.canvas.get_renderer()
        legends = [ax.get_legend() for ax in fig.axes[:2]]
        for legend in legends:
            assert not any(legend.get_window_extent(r).overlaps(ax.get_window_extent(r)) for ax in fig.axes)
        assert not legends[0].get_window_extent(r).overlaps(legends[1].get_window_extent(r))
        names = [t.get_text() for t in legends[0].get_texts()]
        assert ("test (final report)" in names) == (run == "dense only")
        assert ("train (update windows)" in names) == (run == "stages")
    finally:
        close(fig)


def test_curves_of_a_longer_run_tick_round_counts_and_batches(tmp_path, monkeypatch):
    """Stages of 30k removed weights over 500 batches: curves.png ticked the removed axes at 15k, 30k, ..., 105k and the
    batch axes at 60, 120, ..., 480 (MaxNLocator's own 10 bins and steps 1 to 10); they tick 20k, 40k, ... and 100, 200,
    ... as matplotlib's default."""
    import matplotlib.pyplot as plt

    figs, close = [], plt.close
    monkeypatch.setattr(plt, "close", lambda fig=None: figs.append(fig))
    ups = [dict(kind="update", step=s, stage=s // 100, removed=(s // 100) * 30_000, train_removed=(s // 100) * 30_000,
                train_loss=0.4, train_acc=0.8) for s in range(1, 500, 7)]
    evs = [dict(kind="eval", step=s, stage=s // 100, removed=(s // 100) * 30_000, holdout_loss=0.5, holdout_acc=0.8)
           for s in range(50, 500, 50)]
    events = [dict(kind="update", step=s, pruned=30, grown=3, boundaries={"prune": 0.1, "restore": 0.2}) for s in range(1, 500, 7)]
    recipe()._plot(ups + evs, [], events, tmp_path / "curves.png")
    fig = figs[0]
    try:
        fig.canvas.draw()
        for ax, unit in ((fig.axes[0], 20_000), (fig.axes[1], 20_000), (fig.axes[2], 100), (fig.axes[3], 100)):
            lo, hi = ax.get_xlim()
            ticks = [t for t in ax.get_xticks() if lo <= t <= hi]
            assert len(ticks) >= 4 and all(t % unit == 0 for t in ticks), (ax.get_title(), ticks)
    finally:
        close(fig)


def test_a_resumed_best_climb_reports_the_optimisation_time_of_every_session(tmp_path, weights, monkeypatch):
    """A best climb killed in a later rung and resumed reported the resumed session's minutes only: its one
    snapshot is the rung it chose, whose time is an earlier one, and the session before the crash was lost
    (1.4 s reported of 4.8). The time its history carries on counts: the report's minutes are at least the
    history's last wall time, and a stand-in result whose chosen rung came early reads the history's."""
    from types import SimpleNamespace

    early = SimpleNamespace(wall_seconds=1.0)
    result = SimpleNamespace(snapshots={"best": early}, history=[{"kind": "eval", "wall_seconds": 1.0},
                                                                 {"kind": "resume"}, {"kind": "eval", "wall_seconds": 4.8}])
    assert pp_run.optimisation_minutes(result, 0.5) == 4.8 / 60
    assert pp_run.optimisation_minutes(result, 600.0) == 10.0  # (this session's where it is the longer)
    mod = recipe()
    out = tmp_path / "run"
    climb = ("--remove", "best", "--ladder", "0.2", "0.4", "0.6", "--patience", "3")
    _crash_in_second_target(mod, monkeypatch)
    with pytest.raises(Crash):
        mod.main(args(weights, out, *climb))
    monkeypatch.setattr(pp_run, "optimize_connectome", mod.optimize_connectome)
    summary = mod.main(args(weights, out, *climb, "--resume"))
    hist = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    assert any(h["kind"] == "resume" for h in hist)
    # (minutes are seconds / 60: times 60 again, within float rounding, 0.2442686557769775 against ...754)
    assert summary["minutes"] * 60 >= max(h["wall_seconds"] for h in hist if "wall_seconds" in h) * (1 - 1e-12)


def test_an_unwritable_output_dir_is_refused_before_the_data_loads(tmp_path, weights, monkeypatch, capsys):
    """An --output_dir no file can be made in (an immutable folder: root ignores permission bits) was refused
    only when the run took its lock, after the data had loaded (minutes of an ImageNet folder scan), with no
    fix named. It is refused first now, naming the fix, and a writable or new folder passes the probe, which
    leaves nothing behind."""
    import errno
    import tempfile

    from adaptive import run_folder

    assert run_folder.unwritable_problem(tmp_path / "new" / "run") is None and not (tmp_path / "new").exists()
    out = tmp_path / "locked"
    out.mkdir()
    real = tempfile.TemporaryFile

    def refused(*a, dir=None, **kw):
        if dir is not None and Path(dir) == out:
            raise PermissionError(errno.EPERM, "Operation not permitted")
        return real(*a, dir=dir, **kw)

    monkeypatch.setattr(tempfile, "TemporaryFile", refused)
    monkeypatch.setattr(pp_run, "get_dataloaders", lambda *a, **kw: pytest.fail("the data was loaded"))
    mod = recipe()
    with pytest.raises(run_folder.RunFolderError, match=rf"cannot write into --output_dir {re.escape(str(out))}: "
                                                        r"Operation not permitted: give an --output_dir this user "
                                                        r"can write into"):
        mod.main(args(weights, out, "--remove", "0.2"))
    assert list(out.iterdir()) == []


def test_an_error_in_the_final_report_says_the_optimisation_is_kept_for_resume(tmp_path, weights, no_curves):
    """A test image that cannot be read failed the final report after the whole optimisation, naming only the
    image: the folder held checkpoint.pt and config.yaml, no result, and nothing said that --resume makes the
    report again without optimising again. The error says so; the resume does it."""
    mod = recipe()
    broken = {"on": True}

    class Unreadable:
        def __init__(self, loader):
            self.loader = loader

        def __len__(self):
            return len(self.loader)

        def __iter__(self):
            if broken["on"]:
                raise OSError("image file is truncated")
            return iter(self.loader)

    out = tmp_path / "run"
    with pytest.raises(OSError, match="image file is truncated") as e:
        mod.main(args(weights, out, "--remove", "0.2"), test_loader_hook=Unreadable)
    note = "\n".join(getattr(e.value, "__notes__", []))
    assert f"the optimisation finished and its masks are kept in {out / 'checkpoint.pt'}" in note and "--resume" in note
    assert not (out / "pruned_state_dict.pt").exists()
    broken["on"] = False
    summary = mod.main(args(weights, out, "--remove", "0.2", "--resume"), test_loader_hook=Unreadable)
    assert (out / "pruned_state_dict.pt").is_file() and summary["rows"][-1]["changed"] == 0


def test_a_process_whose_peer_stopped_first_says_so_in_one_line_and_how_to_continue(tmp_path, weights, monkeypatch):
    """Under two processes, when the other process failed first (its own error written above), this one's next
    collective failed with gloo's "Connection closed by peer" traceback, where recipes/adaptive.py says so in one
    line: prune_pretrained says it alike, and how to continue (the finished stages are kept in checkpoint.pt).
    (Wired here with peer_stopped patched; tests/test_two_process.py checks that it knows gloo's real error.)"""
    from adaptive.distributed import PeerStoppedError

    mod = recipe()
    out = tmp_path / "run"
    monkeypatch.setattr(pp_run, "peer_stopped", lambda e: isinstance(e, Crash))
    _crash_in_second_target(mod, monkeypatch)
    with pytest.raises(PeerStoppedError, match=r"stopped because another process of the launch stopped first.*its "
                                               r"finished stages are kept in .*checkpoint\.pt: run the same command "
                                               r"with --resume to continue") as e:
        mod.main(args(weights, out, "--remove", "0.2", "0.5"))
    assert isinstance(e.value.__cause__, Crash)
    assert (out / "checkpoint.pt").is_file()


def test_margin_and_line_search_tries_reach_the_optimisation(tmp_path, weights, no_curves, monkeypatch):
    """The issue's method has thresholds on the estimated loss change: optimize_connectome's margin= (threshold
    mode's threshold, a swap's least promise) and line_search_tries= had no option in the recipe, fixed at 0 and 2.
    Threshold mode with a margin no value can beat edits nothing; with margin 0 it prunes."""
    mod = recipe()
    runs = {}
    for margin in ("0", "1e9"):
        out = tmp_path / f"m{margin}"
        mod.main(args(weights, out, "--remove", "best", "--ladder", "--margin", margin, "--verify-batches", "0"))
        runs[margin] = [h["removed"] for h in map(json.loads, (out / "history.jsonl").read_text().splitlines())]
        assert yaml.safe_load((out / "config.yaml").read_text())["margin"] == float(margin)
    assert max(runs["0"]) > 0 == max(runs["1e9"]), runs
    seen = {}
    real = pp_run.optimize_connectome

    def spy(*a, **kw):
        seen.update(kw)
        return real(*a, **kw)

    monkeypatch.setattr(pp_run, "optimize_connectome", spy)
    mod.main(args(weights, tmp_path / "t", "--remove", "best", "--ladder", "--margin", "0.25", "--line-search-tries", "0"))
    assert (seen["margin"], seen["line_search_tries"]) == (0.25, 0)


@pytest.mark.parametrize("argv, msg", [
    (["--margin", "nan"], "--margin must be a finite number"),
    (["--margin", "inf"], "--margin must be a finite number"),
    (["--line-search-tries", "-1"], "--line-search-tries must be an integer >= 0, got -1"),
    (["--remove", "0.2", "--line-search-tries", "3"], "--line-search-tries 3 applies to a line search in threshold mode"),
    (["--remove", "best", "--ladder", "--line-search-tries", "3"], "(--remove best, --ladder with no values, "
                                                                   "--verify-batches N): with --verify-batches 0 "
                                                                   "there is no line search; drop it"),
    (["--remove", "0.2", "--line-search-tries", "1"], "--verify-batches N): at a size target an update is kept or "
                                                      "rolled back whole; drop it"),
])
def test_margin_and_line_search_tries_are_checked_before_anything_runs(argv, msg, capsys):
    with pytest.raises(SystemExit) as info:
        recipe().parse_args(argv + (["--verify-batches", "0"] if "--ladder" in argv else []))
    assert msg in str(info.value.code) + capsys.readouterr().err


def test_a_config_files_line_search_tries_for_fixed_targets_is_refused_its_default_taken(tmp_path):
    mod = recipe()
    cfg = tmp_path / "c.yaml"
    cfg.write_text("remove: [0.2]\nline_search_tries: 2\nmargin: 0.5\n")  # every config.yaml a run writes records both
    assert (mod.parse_args(["--config", str(cfg)]).margin, mod.parse_args(["--config", str(cfg)]).line_search_tries) == (0.5, 2)
    cfg.write_text("remove: [0.2]\nline_search_tries: 4\n")
    with pytest.raises(SystemExit, match="c.yaml: line_search_tries 4 applies to a line search in threshold mode"):
        mod.parse_args(["--config", str(cfg)])


def test_a_run_recorded_before_margin_and_line_search_tries_resumes(tmp_path, weights, no_curves):
    """A config.yaml written before --margin and --line-search-tries lacks them: the run had the API's defaults."""
    mod = recipe()
    out = tmp_path / "out"
    mod.main(args(weights, out, "--remove", "0.2", "0.5"))
    path = out / "config.yaml"
    saved = yaml.safe_load(path.read_text())
    path.write_text(yaml.safe_dump({k: v for k, v in saved.items() if k not in ("margin", "line_search_tries")}))
    mod.main(args(weights, out, "--remove", "0.2", "0.5", "--resume"))  # (every target done: the report again)
    with pytest.raises(Exception, match=r"records other settings \(margin"):
        mod.main(args(weights, out, "--remove", "0.2", "0.5", "--resume", "--margin", "0.1"))


def test_the_splits_note_says_pretrained_weights_may_have_seen_the_held_out_part_only_where_there_are_some(
        tmp_path, weights, no_curves):
    mod = recipe()
    for given, said in ((str(weights), True), ("none", False)):
        out = tmp_path / given.replace("/", "_")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # (--weights none: a supermask search on random weights, warned of)
            mod.main(args(weights, out, "--remove", "0.2", "--weights", given))
        text = (out / "results.md").read_text()
        assert ("pretrained weights may have been trained on these very images" in text) is said, text


def test_every_rows_removed_share_is_its_removed_count_over_the_prunable_synapses(tmp_path, weights, no_curves):
    """The table's "removed %" of each row the run builds (a test fed _table rows made by hand: the run's own
    fraction, computed as the kept share, passed every test)."""
    total = adaptive.Connectome(build_model("resnet20", num_classes=10, in_shape=(3, 8, 8))).num_synapses()
    out = tmp_path / "out"
    summary = recipe().main(args(weights, out, "--remove", "300", "0.5"))
    rows = {r["target"]: r for r in summary["rows"]}
    assert rows["300"]["removed"] == 300
    for r in rows.values():
        assert r["fraction"] == r["removed"] / total
    assert re.search(r"^\| 300 \| 300 \| 0\.1 \|", (out / "results.md").read_text(), re.M)
