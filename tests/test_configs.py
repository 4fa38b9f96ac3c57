"""Every shipped config parses strictly and builds its model, connectome and controller (on fake
data of the config's input shape, no weights files), and one training step runs through them.

Configs are for recipes/adaptive.py, except those written in recipes/prune_pretrained.py's keys
(imagenet_mobilenetv3_maskonly.yaml): those parse with that recipe and build its mask-only
connectome and controller."""
import dataclasses
import inspect
import math
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
