"""recipes/benchmarks/mask_only_ablations: the proxy's "unseen" images are the ones it never trained
on, and run.py's table says what DEV measures, where it ran and how to reproduce it."""
import argparse
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
HERE = ROOT / "recipes" / "benchmarks" / "mask_only_ablations"


def _load(name):
    spec = importlib.util.spec_from_file_location(f"_ablations_{name}", HERE / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_the_proxys_unseen_images_are_not_the_ones_it_trained_on_whatever_its_seed(tmp_path, monkeypatch):
    """pretrain --seed 1 trained on seed 1's A split, while proxy_loaders reads B (the "unseen"
    images every result is judged on) from seed 0's split: most of B was training data."""
    proxy = _load("proxy")
    n, n_a = 10100, 10040  # proxy_loaders keeps 10,000 of A for DEV-like and holdout parts
    y = torch.arange(n) % 10
    x = torch.randint(0, 256, (n, 3, 4, 4), dtype=torch.uint8)
    monkeypatch.setattr(proxy, "N_A", n_a)
    monkeypatch.setattr(proxy, "train_images", lambda: (x, y))
    monkeypatch.setattr(proxy, "build_model", lambda name: nn.Sequential(nn.Flatten(), nn.Linear(48, 10)))
    splits = []
    real = proxy.split_ab
    monkeypatch.setattr(proxy, "split_ab", lambda yy, seed=0: splits.append(real(yy, seed)) or splits[-1])
    out = tmp_path / "proxy.pt"
    proxy.pretrain(argparse.Namespace(threads=1, seed=1, epochs=1, bs=n_a, lr=0.1, out=str(out), qualities=[]))
    trained_on = set(splits[0][0].tolist())
    torch.save(x, tmp_path / "cifar10-train-rejpeg-q20.pt")  # the shifted images' cache, beside the proxy
    _, _, unseen, mem = proxy.proxy_loaders(str(out), 20, 1, 64)
    assert not trained_on & set(unseen.dataset.indices.tolist())
    assert set(mem.dataset.indices.tolist()) <= trained_on


def test_run_writes_what_dev_measures_the_machine_and_the_command(tmp_path, monkeypatch):
    out = tmp_path / "ablations.md"
    out.write_text("| variation | command | DEV acc % at 20% | DEV acc % at 50% | wall min |\n|---|---|---:|---:|---:|\n"
                   "| edge-popup lr 0.003 | `ep.py --lr 0.003` | 90.12 | 88.78 | 0.91 |\n\n"
                   "Machine (every row): an earlier machine.\n")
    lines = "\n".join(json.dumps({"target": t, "dev_acc": 90.0, "min": 0.5}) for t in (0.2, 0.5))
    monkeypatch.setattr(subprocess, "run", lambda cmd, **kw: subprocess.CompletedProcess(cmd, 0, stdout=lines))
    monkeypatch.setattr(sys, "argv", ["run.py"])
    _load("run").main(["--only", "edge-popup lr 0.01", "--output", str(out)])
    text = out.read_text()
    assert "| edge-popup lr 0.01 | `ep.py ` | 90.00 | 90.00 | 0.50 |" in text
    assert "| edge-popup lr 0.003 |" in text  # the row not rerun is kept
    assert "DEV accuracy is recall through the JPEG shift" in text
    assert 'Machine (the rows rerun with --only "edge-popup lr 0.01"): ' in text
    assert "Machine (every row): an earlier machine." in text  # where the kept rows ran
    assert ("Reproduce: `python recipes/benchmarks/mask_only_ablations/run.py` (every row; this writing reran only: "
            '`--only "edge-popup lr 0.01"`)') in text
