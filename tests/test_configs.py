"""Every shipped config parses strictly and builds its model, connectome and controller (on fake
data of the config's input shape, no weights files), and one training step runs through them.

Configs are for recipes/adaptive.py, except those written in recipes/prune_pretrained.py's keys
(imagenet_mobilenetv3_maskonly.yaml): those parse with that recipe and build its mask-only
connectome and controller."""
import dataclasses
import inspect
import math
import re
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml

import adaptive.mask_only

from adaptive import Connectome, Controller
from adaptive.data.base import get_source_builder
from adaptive.models import build_model
from adaptive.config import ConfigError, parse_config
from _scripts import load_script  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "recipes" / "configs").glob("*.yaml"))
# the input shape each dataset family has, reproduced with fake data
SHAPES = {"mnist": [1, 28, 28], "digits": [1, 8, 8], "cifar10": [3, 32, 32], "imagenet": [3, 64, 64]}
# the train part of each dataset a train-mode config names: TRAIN less the recipe's 10% held out
TRAIN_PART = {"mnist": 54_001, "cifar10": 45_000}


R = load_script("recipes/adaptive.py", "recipe_adaptive_cfg")
P = load_script("recipes/prune_pretrained.py", "recipe_prune_pretrained_cfg")


def recipe_of(path) -> str:
    keys = {k.replace("-", "_") for k in (yaml.safe_load(Path(path).read_text()) or {})}
    if keys <= {f.name for f in dataclasses.fields(R.RunConfig)}:
        return "adaptive"
    if keys <= set(P.DEFAULTS):
        return "prune_pretrained"
    raise AssertionError(f"{path.name}: keys {sorted(keys)} fit neither recipes/adaptive.py nor prune_pretrained.py")


def test_the_shipped_configs_are_there():
    names = {p.name for p in CONFIGS}
    assert {"mnist_lenet300_rigl.yaml", "mnist_lenet300_utility.yaml", "mnist_lenet5.yaml", "cifar10_resnet20_dst.yaml",
            "imagenet_mobilenetv3_maskonly.yaml", "imagenet_mobilenetv3_maskonly_adaptive.yaml"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_config_builds(path):
    torch.set_num_threads(1)
    if recipe_of(path) == "prune_pretrained":
        ns = P.parse_args(["--config", str(path)])
        model = build_model(ns.model, num_classes=ns.num_classes or 10, in_shape=SHAPES[ns.dataset], **ns.model_kw).eval()
        conn = Connectome(model, ensemble=ns.ensemble, mode="mask_only")
        ctrl = Controller(conn, policy="crawl", estimator=ns.estimator, update_every=ns.window, edit_decay="constant")
        F.cross_entropy(model(torch.randn(2, *SHAPES[ns.dataset])), torch.tensor([0, 1])).backward()
        ctrl.observe()
        assert ctrl.stats.count == 1
        return
    cfg = parse_config(R.RunConfig, ["--config", str(path)])
    assert cfg.dataset in SHAPES
    tiny = parse_config(R.RunConfig, [
        "--config", str(path), "--dataset", "fake", "--dataset_kw.shape", str(SHAPES[cfg.dataset]),
        "--dataset_kw.train_size", "40", "--dataset_kw.test_size", "8", "--batch_size", "4", "--num_workers", "0",
        "--weights", "none", "--augment", "false",
        "--holdout", "0.25"])  # (4 of a class: the configs' 0.1 and 0.01 hold none out, which is refused)
    # the config's own dataset arguments fit its dataset's builder; the fake stand-in takes only its own
    assert set(cfg.dataset_kw) <= set(inspect.signature(get_source_builder(cfg.dataset)).parameters)
    tiny.dataset_kw = {k: v for k, v in tiny.dataset_kw.items() if k not in cfg.dataset_kw}
    loaders = R.get_dataloaders(tiny)
    model = build_model(tiny.model, num_classes=loaders.num_classes, in_shape=loaders.in_shape, **tiny.model_kw)
    x, y = next(iter(loaders.train))
    if tiny.mode == "mask_only":
        assert cfg.weights, "a mask-only config needs pretrained weights"
        model.eval()
        conn = R.build_connectome(tiny, model)
        ctrl = R.build_controller(tiny, conn)
        assert conn.mode == "mask_only" and ctrl.policy.name == "crawl"
        F.cross_entropy(model(x), y).backward()
        ctrl.observe()
        assert ctrl.stats.count == 1
        ev = ctrl.step()
        # an update is due after update_every batches: it consumes the window and leaves the weights
        assert (ev is not None) == (tiny.update_every == 1)
        assert adaptive.mask_only.changed_weights(conn) == 0
        return
    opt = R.build_optimizer(tiny, model)
    conn = R.build_connectome(tiny, model)
    # the config's own run length on its real data, so that a schedule that could not reach its density
    # (no update before the edits end: a gradual policy would stay dense) fails here
    total = cfg.max_steps or cfg.epochs * math.ceil(TRAIN_PART[cfg.dataset] / cfg.batch_size)
    total //= cfg.gradient_accumulation_steps
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ctrl = R.build_controller(tiny, conn, opt, total_steps=total)
    assert not [str(w.message) for w in caught if "no update falls" in str(w.message)]
    assert ctrl.density == pytest.approx(cfg.density)
    # a gradual policy (threshold, gmp) starts dense and its updates bring the network to the density
    start = tiny.density if ctrl.policy.sparse_at_start else 1.0
    assert conn.density() == pytest.approx(start, abs=2e-3)
    assert ctrl.end_step == round(tiny.end_fraction * total) and ctrl.update_every == tiny.update_every
    for n in ctrl.protected:
        assert bool(conn.masks[n].all())
    F.cross_entropy(model(x), y).backward()
    opt.step()
    for n, m in conn.masks.items():
        assert not bool(conn.params[n].detach()[~m].any())


def test_unknown_key_in_a_config_file_is_rejected(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text((ROOT / "recipes" / "configs" / "mnist_lenet300_rigl.yaml").read_text() + "\nupdate_evry: 5\n")
    with pytest.raises(ConfigError, match=r"unknown config key 'update_evry' in .*bad.yaml; did you mean 'update_every'"):
        parse_config(R.RunConfig, ["--config", str(bad)])
    bad.write_text("density: lots\n")
    with pytest.raises(ConfigError, match=r"config key 'density' in .*bad.yaml expects"):
        parse_config(R.RunConfig, ["--config", str(bad)])


def test_command_line_overrides_the_config():
    path = ROOT / "recipes" / "configs" / "mnist_lenet300_utility.yaml"
    cfg = parse_config(R.RunConfig, ["--config", str(path), "--density", "0.02", "--estimator", "obd",
                                     "--data-dir", "/somewhere", "--epochs", "3"])
    assert (cfg.density, cfg.estimator, cfg.data_dir, cfg.epochs, cfg.model) == (0.02, "obd", "/somewhere", 3, "lenet300")


def test_the_cifar_config_compares_policies_by_changing_only_the_policy():
    """The CIFAR config is the one from-scratch config of its dataset, so a comparison changes --policy
    over it: rigl and set (which take no estimator) parse, and gmp ranks by magnitude (Zhu & Gupta),
    not by an estimator the file names for the utility policy."""
    path = str(ROOT / "recipes" / "configs" / "cifar10_resnet20_dst.yaml")
    assert parse_config(R.RunConfig, ["--config", path]).estimator == "curvature"  # utility's default
    for policy, estimator in (("rigl", None), ("set", None), ("gmp", None), ("threshold", "curvature")):
        cfg = parse_config(R.RunConfig, ["--config", path, "--policy", policy])
        assert (cfg.policy, cfg.estimator) == (policy, estimator)


# the shipped train-mode configs, each run end to end by recipes/adaptive.py as a user would, at tiny settings
# given as command-line overrides (fake data of the config's input shape, a few steps); the ImageNet one on a
# tiny folder of random JPEGs with a randomly initialised network's weights file
ADAPTIVE_CONFIGS = [p for p in CONFIGS if recipe_of(p) == "adaptive"]


@pytest.mark.parametrize("path", ADAPTIVE_CONFIGS, ids=[p.stem for p in ADAPTIVE_CONFIGS])
def test_each_shipped_config_runs_end_to_end(path, tmp_path):
    """recipes/adaptive.py --config FILE runs to its end and writes its run folder, the config's own settings
    kept but those the overrides name (command line over file): what a user's first short try does."""
    cfg = parse_config(R.RunConfig, ["--config", str(path), "--num_workers", "0"])
    out = tmp_path / "run"
    common = ["--config", str(path), "--output_dir", str(out), "--threads", "1", "--num_workers", "0",
              "--progress", "false", "--figures", "false", "--batch_size", "4", "--eval_batch_size", "4"]
    if cfg.mode == "mask_only":
        from _tiny_imagenet import tiny_imagenet_with_weights

        tiny_imagenet_with_weights(tmp_path)
        argv = common + ["--data-dir", str(tmp_path), "--weights", str(tmp_path / "mnv3.pth"), "--holdout", "0.35",
                         "--dataset_kw.resize", "36", "--dataset_kw.image_size", "32"]
    else:
        argv = common + ["--dataset", "fake", "--dataset_kw.shape", str(SHAPES[cfg.dataset]),
                         "--dataset_kw.train_size", "40", "--dataset_kw.test_size", "8", "--augment", "false",
                         "--holdout", "0.25", "--max_steps", "6", "--update_every", "2", "--warmup_steps", "1",
                         "--eval_every", "3", "--checkpoint_every", "3", "--log_every", "2"]
    res = R.main(argv)
    ran = parse_config(R.RunConfig, ["--config", str(out / "config.yaml")])
    # the file's settings ran but where the command line named another value
    for key in ("model", "policy", "estimator", "budget", "ensemble", "protect", "lr", "weight_decay",
                "max_grad_norm", "edit_fraction", "end_fraction", "mode", "target", "mask_only_kw"):
        assert getattr(ran, key) == getattr(cfg, key), key
    assert (ran.batch_size, ran.eval_batch_size, ran.num_workers) == (4, 4, 0)
    assert (out / "summary.json").is_file() and (out / "connectome.safetensors").is_file()
    if cfg.mode == "mask_only":
        assert res.summary["synapses"] - res.summary["live"] == cfg.target
        assert adaptive.mask_only.changed_weights(res.conn) == 0
        return
    assert ran.update_every == 2 and ran.max_steps == 6 and res.state.step == 6
    assert res.conn.density() == pytest.approx(cfg.density, abs=2e-3)
    assert [int(p.name.split("_")[1]) for p in (out / "checkpoints").iterdir()] == [3]  # (--checkpoint_every 3)
    for n in res.controller.protected:  # (cifar10_resnet20_dst.yaml: the first convolution and the classifier)
        assert bool(res.conn.masks[n].all())


def test_prune_pretrained_reads_a_config_files_exponent_numbers(tmp_path):
    """PyYAML (YAML 1.1) reads 1e-2 (no decimal point) as text: recipes/prune_pretrained.py's --config file
    refused `step: 1e-2` ('must be a number > 0, got '1e-2'') where the command line's --step 1e-2 and
    recipes/adaptive.py's --config read the number; a text option's value stays as written."""
    f = tmp_path / "c.yaml"
    f.write_text("step: 1e-2\nholdout: 2e-1\nedit_fraction: 5e-1\napproach: 0e0\npasses: 2e0\n"
                 "remove: [best]\nladder: [1e-1, 3e-1]\n")
    ns = P.parse_args(["--config", str(f)])
    assert (ns.step, ns.holdout, ns.edit_fraction, ns.approach, ns.passes, ns.ladder) == (0.01, 0.2, 0.5, 0.0, 2.0,
                                                                                          [0.1, 0.3])
    assert ns.step == P.parse_args(["--step", "1e-2"]).step
    # the command line still wins over the file's number
    assert P.parse_args(["--config", str(f), "--step", "0.03", "--holdout", "0.1"]).step == 0.03
    f.write_text("remove: [1e6]\n")  # a count written as a float: refused, naming the whole number to write
    with pytest.raises(ValueError, match=r"give it as a whole number \(1000000\)"):
        P.parse_args(["--config", str(f)])
    f.write_text("model: 1e3\n")  # (a name: YAML's text, refused as no model, not read as the number 1000.0)
    with pytest.raises(SystemExit, match=r"1e3: unknown model"):
        P.parse_args(["--config", str(f)])



@pytest.mark.parametrize("text, read", [
    ("seed: 1e3\nbatch_size: 6.4e1\nnum_workers: 0.0\n", dict(seed=1000, batch_size=64, num_workers=0)),
    ("overwrite: 'false'\ncpu: 'yes'\n", dict(overwrite=False, cpu=True)),
    ("overwrite: 'TRUE'\ncpu: 'off'\n", dict(overwrite=True, cpu=False)),
    # a number quoted: recipes/adaptive.py's --config read it, recipes/prune_pretrained.py's refused it
    ("batch_size: '64'\nseed: ' 7 '\nholdout: '0.25'\n",
     dict(batch_size=64, seed=7, holdout=0.25)),
])
def test_both_recipes_read_a_config_files_whole_numbers_and_quoted_flags_alike(tmp_path, text, read):
    """recipes/prune_pretrained.py refused seed: 1e3 ('must be an integer, got 1000.0': YAML's text 1e3, read as
    the float) and a quoted overwrite: 'false', both of which recipes/adaptive.py's --config reads (1000; false):
    one file now means the same in both (docs/training.md)."""
    f = tmp_path / "c.yaml"
    f.write_text(text)
    ns, cfg = P.parse_args(["--config", str(f)]), parse_config(R.RunConfig, ["--config", str(f)])
    for key, value in read.items():
        assert getattr(ns, key) == value == getattr(cfg, key) and type(getattr(ns, key)) is type(value), key


@pytest.mark.parametrize("argv, read", [
    (["--seed", "1e3", "--batch_size", "6.4e1"], dict(seed=1000, batch_size=64)),
    (["--seed", "7", "--num_workers", "0.0"], dict(seed=7, num_workers=0)),
])
def test_both_recipes_read_a_command_lines_whole_numbers_alike(argv, read):
    """recipes/prune_pretrained.py --seed 1e3 stopped at argparse's "invalid int value: '1e3'", which
    recipes/adaptive.py reads as 1000 (as both read seed: 1e3 in a --config file)."""
    ns, cfg = P.parse_args(argv), parse_config(R.RunConfig, argv)
    for key, value in read.items():
        assert getattr(ns, key) == value == getattr(cfg, key) and type(getattr(ns, key)) is int, key


@pytest.mark.parametrize("value", ["2.5", "1e-3", "x"])
def test_both_recipes_refuse_a_command_lines_count_that_is_no_whole_number(value, capsys):
    with pytest.raises(SystemExit):
        P.parse_args(["--seed", value])
    assert f"argument --seed: expects a whole number (e.g. 64 or 1e3), got '{value}'" in capsys.readouterr().err
    with pytest.raises(ConfigError, match=rf"seed' .*expects int, got '{re.escape(value)}'"):
        parse_config(R.RunConfig, ["--seed", value])


@pytest.mark.parametrize("text, prune, adaptive", [
    ("seed: 2.5\n", r"c\.yaml: seed must be an integer, got 2\.5", r"seed' .*expects int, got 2\.5"),
    ("overwrite: 'maybe'\n", r"overwrite must be true or false, got 'maybe': write true or false",
     r"overwrite' .*expects bool, got 'maybe' \(use true or false\)"),
    ("overwrite: 0\n", r"overwrite must be true or false, got 0$", r"overwrite' .*expects bool, got 0"),
])
def test_both_recipes_refuse_a_fractional_count_and_a_flag_that_is_no_yes_or_no(tmp_path, text, prune, adaptive):
    """What neither recipe reads as the option's value is refused by both, naming it."""
    f = tmp_path / "c.yaml"
    f.write_text(text)
    with pytest.raises(SystemExit, match=prune):
        P.parse_args(["--config", str(f)])
    with pytest.raises(ConfigError, match=adaptive):
        parse_config(R.RunConfig, ["--config", str(f)])

def test_a_config_of_the_other_recipe_is_refused_naming_the_recipe_it_is_for(tmp_path, capsys):
    """A mask-only yaml of recipes/prune_pretrained.py given to recipes/adaptive.py (or one of
    recipes/adaptive.py's given to recipes/prune_pretrained.py) is refused before anything runs, as any
    unknown key is, and the refusal says which recipe the file is for; a misspelt key is named with the
    key it is closest to."""
    pp_yaml = str(ROOT / "recipes" / "configs" / "imagenet_mobilenetv3_maskonly.yaml")
    out = tmp_path / "run"
    for argv in (["--config", pp_yaml], [f"--config={pp_yaml}"]):
        with pytest.raises(SystemExit) as e:
            R.parse_args(argv + ["--output_dir", str(out)])
        assert e.value.code == 2
        err = capsys.readouterr().err
        assert "unknown config key" in err and "Traceback" not in err
        assert (f"{pp_yaml} is a config of recipes/prune_pretrained.py (approach, num_classes, passes, remove, step, "
                "train_eval_batches, verify_batches, window: its keys") in err
        assert f"run python recipes/prune_pretrained.py --config {pp_yaml}" in err
    assert not out.exists()
    bad = tmp_path / "bad.yaml"  # a misspelt key of this recipe's own: no word of the other recipe
    bad.write_text("update_evry: 5\n")
    with pytest.raises(SystemExit):
        R.parse_args(["--config", str(bad)])
    assert "prune_pretrained" not in capsys.readouterr().err
    for name in ("imagenet_mobilenetv3_maskonly_adaptive.yaml", "mnist_lenet300_rigl.yaml"):
        path = str(ROOT / "recipes" / "configs" / name)
        with pytest.raises(SystemExit, match=rf"{path} is a config of recipes/adaptive.py \(.*: its keys, not this "
                                             rf"recipe's\): run python recipes/adaptive.py --config {path}"):
            P.parse_args(["--config", path])
    bad.write_text("stpe: 0.01\n")
    with pytest.raises(SystemExit, match=r"unknown key\(s\) \['stpe'\].*\(did you mean 'step' for 'stpe'\?\)$"):
        P.parse_args(["--config", str(bad)])


def test_every_figure_in_a_configs_comments_is_in_a_file_it_cites():
    """A shipped config's comments quote accuracies (98.97%, 81.03%, ...) only from the results files and
    docs pages they name, with the same value, and every file they name exists: "~3 minutes on 2 CPU
    cores" (mnist_lenet300_rigl.yaml) and "~10 points below published lossless figures"
    (cifar10_resnet20_dst.yaml) were quoted from no file."""

    for path in CONFIGS:
        comments = " ".join(line.partition("#")[2] for line in path.read_text().splitlines() if "#" in line)
        cited = re.findall(r"((?:recipes/benchmarks/)?results/[\w.-]+\.md|docs/[\w.-]+\.md)", comments)
        files = [ROOT / (c if c.startswith(("recipes/", "docs/")) else f"recipes/benchmarks/{c}") for c in cited]
        assert all(f.is_file() for f in files), (path.name, cited)
        text = " ".join(f.read_text() for f in files)
        for figure in re.findall(r"(\d+\.\d+)%", comments):
            assert figure in text, f"{path.name}: {figure}% is in none of {cited}"
        assert not re.search(r"~\s*\d+ (?:minutes|points)", comments), path.name  # (the two unbacked ones)


def test_override_precedence_as_docs_training_md_says(tmp_path):
    """docs/training.md, "--key value overrides come last": the command line beats every --config file
    wherever it stands on the line, a later file beats an earlier one per key, a mapping option
    (controller_kw, dataset_kw, mask_only_kw) is merged entry by entry, a list option given anew replaces
    the file's list, a file's quoted 'false' and 1e-2 (PyYAML's text) are the boolean and the number."""
    f, g = tmp_path / "f.yaml", tmp_path / "g.yaml"
    f.write_text("model: lenet300\ndataset: mnist\ncontroller_kw: {grow_init: zero, window: 3}\nprotect: [fc1]\n"
                 "augment: 'false'\nlr: 1e-2\nweight_decay: 5e-4\n")
    g.write_text("controller_kw:\n  window: 4\nlr: 2e-2\n")
    for argv in (["--config", str(f), "--config", str(g), "--lr", "3e-2", "--controller_kw.grow_init", "gradient"],
                 ["--lr", "3e-2", "--controller_kw.grow_init", "gradient", "--config", str(f), "--config", str(g)]):
        cfg = parse_config(R.RunConfig, argv)
        assert (cfg.lr, cfg.weight_decay, cfg.augment, cfg.protect) == (0.03, 5e-4, False, ["fc1"])
        assert cfg.controller_kw == {"grow_init": "gradient", "window": 4}
    cfg = parse_config(R.RunConfig, ["--config", str(f), "--protect", "fc2", "--augment", "true",
                                     "--controller_kw", "pace=even"])
    assert (cfg.protect, cfg.augment, cfg.controller_kw) == (["fc2"], True, {"grow_init": "zero", "window": 3,
                                                                            "pace": "even"})
    shipped = str(ROOT / "recipes" / "configs" / "imagenet_mobilenetv3_maskonly.yaml")
    for argv in (["--config", shipped, "--holdout", "0.2", "--dataset-kw", "image_size=192", "--remove", "0.5"],
                 ["--holdout", "0.2", "--dataset-kw", "image_size=192", "--remove", "0.5", "--config", shipped]):
        ns = P.parse_args(argv + ["--num-workers", "0"])
        assert (ns.holdout, ns.dataset_kw, ns.remove, ns.step) == (0.2, {"resize": 232, "image_size": 192}, [0.5], 0.01)


def _comment_commands(path):
    """The command lines a config's comments show (``python recipes/...`` or ``accelerate launch ...``,
    continued over lines ending in a backslash), each as its words."""
    import shlex

    lines = [line.partition("#")[2].strip() for line in path.read_text().splitlines() if line.lstrip().startswith("#")]
    commands, current = [], None
    for line in lines:
        if current is None and not line.startswith(("python recipes/", "accelerate launch")):
            continue
        current = (current or []) + shlex.split(line.rstrip("\\"))
        if not line.endswith("\\"):
            commands.append(current)
            current = None
    return commands


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_the_commands_a_config_shows_parse_and_fit_its_schedule(path, tmp_path):
    """Every command a shipped config's comments show is accepted as written (its placeholder paths
    replaced by files that exist), and the short CPU try of cifar10_resnet20_dst.yaml runs the 72 steps
    its comment says, its shortened warmup, updates and checkpoints falling inside them."""
    weights = tmp_path / "mobilenet_v3_large-5c1a4163.pth"  # (the name the comments give: torchvision's V2 file)
    weights.write_bytes(b"")
    commands = _comment_commands(path)
    assert commands, f"{path.name} shows no command"
    for words in commands:
        script = next(w for w in words if w.startswith("recipes/") and w.endswith(".py"))
        argv = words[words.index(script) + 1:]
        if "..." in argv:  # ('--config ... (same options)': the command above, launched on several processes)
            continue
        argv = [str(weights) if a.endswith(".pth") else a for a in argv] + ["--num_workers", "0"]
        assert argv[:2] == ["--config", f"recipes/configs/{path.name}"], words
        argv[1] = str(path)
        if script == "recipes/prune_pretrained.py":
            assert P.parse_args(argv).weights == str(weights)
            continue
        cfg = R.parse_args(argv)
        if "--subset" not in argv:
            continue
        # the short try: its steps as the comment counts them (the train part less the held-out share)
        steps_per_epoch = math.ceil((cfg.subset - round(cfg.holdout * cfg.subset)) / cfg.batch_size)
        total = cfg.epochs * steps_per_epoch
        assert f"its {total} steps" in path.read_text()
        assert cfg.warmup_steps <= total and 0 < cfg.checkpoint_every <= total and cfg.update_every < total
        tiny = R.parse_args(argv + ["--dataset", "fake", "--dataset_kw.shape", str(SHAPES[cfg.dataset]),
                                    "--dataset_kw.train_size", "40", "--dataset_kw.test_size", "8", "--augment",
                                    "false", "--subset", "40", "--holdout", "0.25"])
        loaders = R.get_dataloaders(tiny)
        model = build_model(tiny.model, num_classes=loaders.num_classes, in_shape=loaders.in_shape)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            ctrl = R.build_controller(tiny, R.build_connectome(tiny, model), R.build_optimizer(tiny, model),
                                      total_steps=total)
        assert not [str(w.message) for w in caught if "no update falls" in str(w.message)]
        assert ctrl.end_step == round(cfg.end_fraction * total) > cfg.update_every


def test_no_shipped_config_gives_a_key_its_policy_ignores():
    """mnist_lenet5.yaml gave `budget: erk` to the threshold policy, which ranks the synapses of every
    layer together: no layer budget applies, and the controller lets the default 'erk' through unused
    (another budget is refused), so the key read as a setting the run did not have. A train-mode config
    names a budget only for a policy that applies one, and an estimator only for one that takes one."""
    from adaptive.policies.base import get_policy

    for path in CONFIGS:
        if recipe_of(path) != "adaptive":
            continue
        given = {k.replace("-", "_"): v for k, v in yaml.safe_load(path.read_text()).items()}
        if given.get("mode", "train") != "train":
            continue
        cfg = parse_config(R.RunConfig, ["--config", str(path)])
        if get_policy(cfg.policy).ranks_globally:
            assert "budget" not in given, f"{path.name}: policy {cfg.policy} applies no layer budget"
        if R._estimator_slots(cfg.policy)[0] is False:
            assert given.get("estimator") is None, f"{path.name}: policy {cfg.policy} takes no estimator"


def test_the_weights_file_a_config_names_for_a_pretrained_start_loads():
    """cifar10_resnet20_dst.yaml names ../shared/data/resnet-cifar10/resnet20-12fca82f.th "to start
    pretrained": given as --weights over the file's null, it loads strictly into the config's model."""

    path = ROOT / "recipes" / "configs" / "cifar10_resnet20_dst.yaml"
    (rel,) = re.findall(r"^weights: null +#.*?(\S+\.th) to start pretrained", path.read_text(), re.M)
    weights = (ROOT / rel).resolve()
    if not weights.is_file():
        pytest.skip(f"shared weights absent at {weights}")
    cfg = R.parse_args(["--config", str(path), "--weights", rel.replace("..", str(ROOT.parent), 1)])
    model = R.build_model_for(cfg, 10, SHAPES[cfg.dataset])
    sd = torch.load(weights, map_location="cpu", weights_only=True)
    sd = sd.get("state_dict", sd)
    first = next(k for k in sd if k.endswith("conv1.weight"))
    assert torch.equal(model.state_dict()["conv1.weight"], sd[first])


def test_a_config_path_that_is_no_yaml_mapping_is_refused_saying_what_a_config_is(tmp_path, capsys):
    """An image given as --config said "cannot be read ('utf-8' codec can't decode byte 0x89 in position
    0: invalid start byte)", and `lr = 0.1` (not YAML's `lr: 0.1`) "must hold a mapping of keys to
    values, got str": both now say what a config file is, in both recipes, before anything is written."""
    image = tmp_path / "c.png"
    image.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)))
    ini = tmp_path / "c.txt"
    ini.write_text("lr = 0.1\n")
    nospace = tmp_path / "c.yaml"
    nospace.write_text("lr:0.1\n")
    for path, said in ((image, "is not a text file: a config is YAML text, a 'key: value' line per option"),
                       (ini, "must hold a mapping of keys to values, got str ('lr = 0.1'): a config is YAML with a "
                             "'key: value' line per option (a space after each colon)"),
                       (nospace, "got str ('lr:0.1')")):
        out = tmp_path / "run"
        with pytest.raises(SystemExit) as e:
            R.parse_args(["--config", str(path), "--output_dir", str(out)])
        assert e.value.code == 2 and said in capsys.readouterr().err
        with pytest.raises(SystemExit, match=re.escape(said)):
            P.parse_args(["--config", str(path), "--output_dir", str(out)])
        assert not out.exists()


def test_a_yes_no_word_after_a_prune_pretrained_flag_says_the_flag_takes_none(capsys):
    """recipes/adaptive.py takes `--cpu false`; recipes/prune_pretrained.py's yes/no options are flags,
    and `--cpu false` was refused as "unrecognized arguments: false", naming no option: the refusal now
    says the flag takes no value and how to say yes or no."""
    for argv, said in ((["--cpu", "false"], "--cpu is a flag and takes no value ('false'): give --cpu alone to set "
                                            "it, or leave it out"),
                       (["--progress", "true"], "--progress is a flag and takes no value ('true'): give --progress "
                                                "alone to set it, or leave it out (--no-progress says no)"),
                       (["--no_progress", "no"], "--no-progress is a flag and takes no value ('no')")):
        with pytest.raises(SystemExit) as e:
            P.parse_args(argv)
        err = capsys.readouterr().err
        assert e.value.code == 2 and "unrecognized arguments" in err and said in err, err
    with pytest.raises(SystemExit):
        P.parse_args(["--seed", "1", "false"])  # (a stray word after an option that takes a value: argparse's own)
    assert "is a flag" not in capsys.readouterr().err


def test_a_mask_only_config_without_line_search_says_nothing_is_verified():
    """imagenet_mobilenetv3_maskonly_adaptive.yaml said its held-out images "verify every step" and its
    weights were "chosen and verified" on them, with verify_batches: 0 (no per-update check) a few lines
    below: a config whose line search is off says no other line verifies anything."""
    for path in CONFIGS:
        data = yaml.safe_load(path.read_text())
        verify = data.get("verify_batches", (data.get("mask_only_kw") or {}).get("verify_batches"))
        if verify != 0:
            continue
        said = [line for line in path.read_text().splitlines()
                if "verif" in line.partition("#")[2].lower() and "verify_batches" not in line]
        assert not said, f"{path.name}: {said}"


def test_a_misspelt_nested_controller_kw_key_is_refused_naming_the_option(tmp_path, capsys):
    """A --config file's `controller_kw: {grow_intit: zero}` (or --controller_kw grow_intit=zero) was
    refused as "unknown argument(s) ['grow_intit'] for policy 'utility'", naming neither the option nor
    that it is a nested key of controller_kw; the refusal names it now, before the run folder is made."""
    f = tmp_path / "c.yaml"
    f.write_text("controller_kw:\n  grow_intit: zero\n")
    tiny = ["--max_steps", "2", "--threads", "1", "--progress", "false", "--figures", "false"]
    for argv in (["--config", str(f)], ["--controller_kw", "grow_intit=zero"]):
        out = tmp_path / "run"
        with pytest.raises(SystemExit) as e:
            R.main(argv + tiny + ["--output_dir", str(out)])
        err = capsys.readouterr().err
        assert e.value.code == 2 and "Traceback" not in err
        assert ("error: --controller_kw grow_intit (on the command line or in a --config file's controller_kw): "
                "unknown argument(s) ['grow_intit']") in err and "did you mean the Controller's 'grow_init'" in err
        assert not out.exists()


def test_a_config_of_this_recipe_with_a_stray_key_of_the_other_is_not_called_the_others(tmp_path, capsys):
    """A file of recipes/adaptive.py's keys with one stray key that recipes/prune_pretrained.py has (window)
    was called 'a config of recipes/prune_pretrained.py' (run it there), which would refuse its policy and
    density in turn; and the other way round (step with a stray epochs). Each is refused naming the stray key
    as the other recipe's, not sending the whole file there."""
    f = tmp_path / "c.yaml"
    f.write_text("policy: rigl\ndensity: 0.1\nwindow: 5\n")
    with pytest.raises(SystemExit):
        R.parse_args(["--config", str(f)])
    err = capsys.readouterr().err
    assert "unknown config key" in err and "is a config of recipes/prune_pretrained.py" not in err
    assert f"{f}: window: key(s) of recipes/prune_pretrained.py, not of this recipe" in err
    assert "(density, policy: this recipe's keys alone)" in err
    f.write_text("model: resnet20\nstep: 0.01\nepochs: 3\n")
    with pytest.raises(SystemExit) as e:
        P.parse_args(["--config", str(f)])
    assert "is a config of recipes/adaptive.py" not in str(e.value)
    assert str(e.value).endswith("(epochs: key(s) of recipes/adaptive.py, not of this recipe)")


def test_a_torchvision_model_searched_mask_only_without_weights_is_warned_of_at_the_start(tmp_path):
    """imagenet_mobilenetv3_maskonly.yaml run without --weights searched the masks of a randomly initialised
    MobileNetV3, said only by a note once the data had loaded (minutes of an ImageNet folder scan). Both
    recipes now warn while reading their settings, naming the weights file to pass; --weights none (or a
    file's weights: null) asks for the random network on purpose, and a model of this project's own, or a
    train-mode run (training from scratch), is not warned of."""
    def warned(parse, argv):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            parse(argv)
        return [str(w.message) for w in caught if "is given no weights" in str(w.message)]

    shipped = str(ROOT / "recipes" / "configs" / "imagenet_mobilenetv3_maskonly.yaml")
    [message] = warned(P.parse_args, ["--config", shipped])
    assert message.startswith(f"{shipped}: model torchvision:mobilenet_v3_large is given no weights, so mask-only "
                              "optimisation would search the masks of a randomly initialised network")
    assert "pass --weights FILE, torchvision's MobileNet_V3_Large_Weights.IMAGENET1K_V2 file mobilenet_v3_large-5c1a4163.pth" in message
    assert "give --weights none to search masks of the random network on purpose" in message
    assert not warned(P.parse_args, ["--config", shipped, "--weights", "none"])
    null = tmp_path / "null.yaml"
    null.write_text(Path(shipped).read_text() + "weights: null\n")
    assert not warned(P.parse_args, ["--config", str(null)])
    assert not warned(P.parse_args, ["--model", "resnet20", "--remove", "0.2"])  # (this project's own CIFAR model)
    mask_only = ["--mode", "mask_only", "--model", "torchvision:resnet18", "--dataset", "imagenet"]
    [message] = warned(R.parse_args, mask_only)
    assert message.startswith("--model torchvision:resnet18 is given no weights") and "resnet18-f37072fd.pth" in message
    assert not warned(R.parse_args, mask_only + ["--weights", "none"])
    null.write_text("mode: mask_only\nmodel: torchvision:resnet18\ndataset: imagenet\nweights: null\n")
    assert not warned(R.parse_args, ["--config", str(null)])
    null.write_text("mode: mask_only\nmodel: torchvision:resnet18\ndataset: imagenet\n")  # (named by the file that gave it)
    [message] = warned(R.parse_args, ["--config", str(null)])
    assert message.startswith(f"{null}: model torchvision:resnet18 is given no weights")
    assert not warned(R.parse_args, ["--model", "torchvision:resnet18", "--dataset", "imagenet"])  # train mode


def test_a_mask_only_run_folders_config_yaml_given_to_prune_pretrained_is_named_as_adaptive_pys(tmp_path):
    """A recipes/adaptive.py mask-only run's config.yaml records estimator_resolved beside its settings (a key
    its RECORDED_KEYS allow, not a setting): given to recipes/prune_pretrained.py, the file most likely to be
    fed to the wrong recipe was not named as recipes/adaptive.py's (only its settings' keys counted)."""
    f = tmp_path / "config.yaml"
    f.write_text((ROOT / "recipes" / "configs" / "imagenet_mobilenetv3_maskonly_adaptive.yaml").read_text()
                 + "estimator_resolved:\n  name: presence\n  arguments: {step: 0.01}\n")
    with pytest.raises(SystemExit, match=rf"{f} is a config of recipes/adaptive.py \(.*estimator_resolved.*: its keys"):
        P.parse_args(["--config", str(f)])


def test_a_prune_pretrained_run_folders_config_yaml_reruns_there_and_is_named_as_its_by_adaptive_py(tmp_path, capsys):
    """The config.yaml a recipes/prune_pretrained.py run writes is taken back by that recipe's --config (a rerun
    into another folder, no --resume), and recipes/adaptive.py refuses it naming the recipe it is for, not as a
    file of its own keys with a stray one: the other-recipe check must not refuse (or misname) a run's own
    record. (recipes/adaptive.py's own config.yaml reruns: test_each_shipped_config_runs_end_to_end.)"""
    from _training import reset_accelerate

    torch.manual_seed(0)
    torch.save(build_model("resnet20", num_classes=10, in_shape=(3, 8, 8)).state_dict(), tmp_path / "w.pt")
    out = tmp_path / "run"
    reset_accelerate()
    try:
        P.main(["--model", "resnet20", "--weights", str(tmp_path / "w.pt"), "--dataset", "fake", "--dataset-kw",
                "shape=[3, 8, 8]", "--output_dir", str(out), "--batch-size", "32", "--eval-batch-size", "64",
                "--window", "2", "--passes", "0.5", "--eval-every", "2", "--train-eval-batches", "1", "--subset", "96",
                "--test-subset", "32", "--remove", "0.2", "--step", "1e-2", "--no-progress"])
    finally:
        reset_accelerate()
    again = P.parse_args(["--config", str(out / "config.yaml"), "--output_dir", str(tmp_path / "again")])
    assert (again.remove, again.step, again.window, again.model) == ([0.2], 0.01, 2, "resnet20")
    capsys.readouterr()
    with pytest.raises(SystemExit):
        R.parse_args(["--config", str(out / "config.yaml"), "--output_dir", str(tmp_path / "a")])
    err = capsys.readouterr().err
    assert f"{out / 'config.yaml'} is a config of recipes/prune_pretrained.py (" in err and "not of this recipe;" not in err
