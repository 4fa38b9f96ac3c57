"""Mask-only mechanics across torchvision classifiers: exact targets, no weight changed.

For each model (random weights, random images: the mechanics do not depend on them),
``adaptive.optimize_connectome`` removes 10% and then 20% of its prunable weights over one pass of
4 batches; the table gives the removal asked for and the removal reached at each target, how many
surviving weights differ from the original (must be 0), and the wall time. Networks above 2**24
prunable weights (Swin-T, ViT-B/16, MaxViT-T, ConvNeXt-T) are the ones that float32 counting got
wrong.

    python recipes/benchmarks/mask_only_models.py [--models vit_b_16 swin_t] [--output FILE]
Writes recipes/benchmarks/results/mask_only_models.md (about 4 minutes on 2 CPU threads).
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import torch
import torchvision
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from adaptive.mask_only import changed_from, loaded_state, optimize_connectome, resolve_target  # noqa: E402
from adaptive.cli import path_type  # noqa: E402
from adaptive.atomic import write_text  # noqa: E402
from recipes.benchmarks._reproduce import command, machine  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
MODELS = ["mobilenet_v3_small", "efficientnet_b0", "shufflenet_v2_x0_5", "squeezenet1_0", "regnet_y_400mf",
          "mnasnet0_5", "googlenet", "convnext_tiny", "densenet121", "swin_t", "vit_b_16", "maxvit_t"]
FIXED_SIZE = {"swin_t": 224, "vit_b_16": 224, "maxvit_t": 224}  # these accept only their own input size
TARGETS = [0.1, 0.2]


def run(name: str) -> dict:
    kw = dict(num_classes=10, weights=None)
    if name == "googlenet":
        kw.update(aux_logits=False, init_weights=False)
    torch.manual_seed(0)
    model = torchvision.models.get_model(name, **kw).eval()
    size = FIXED_SIZE.get(name, 64)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(16, 3, size, size, generator=g), torch.randint(0, 10, (16,), generator=g)
    train = DataLoader(TensorDataset(x, y), batch_size=4)
    holdout = DataLoader(TensorDataset(x[:8], y[:8]), batch_size=4)
    loaded = loaded_state(model)  # before the connectome: what "changed" compares with
    t0 = time.time()
    res = optimize_connectome(model, train, holdout, TARGETS, passes=1.0, progress=False)
    total = res.conn.num_synapses()
    return {"model": name, "synapses": total, "wall": time.time() - t0, "changed": changed_from(res.conn.dense_state_dict(), loaded, res.conn),
            "targets": [(resolve_target(t, total), res.snapshots[f"{t:g}"].removed) for t in TARGETS]}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", nargs="+", default=MODELS, help="torchvision model names (default: 12 classifiers)")
    ap.add_argument("--output", type=path_type(), default=os.path.join(HERE, "results", "mask_only_models.md"))
    args = ap.parse_args(argv)
    unknown = [m for m in args.models if m not in torchvision.models.list_models()]
    if unknown:
        raise SystemExit(f"mask_only_models.py: error: not torchvision models: {unknown}")
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    head = ("| model | prunable weights | " + " | ".join(f"{t:g}: asked / removed" for t in TARGETS)
            + " | exact | changed surviving weights | wall s |")
    lines = [head, "|---|---:|" + "---:|" * len(TARGETS) + "---|---:|---:|"]
    failed, wrong = 0, []  # wrong: a target missed or a surviving weight changed (the table's checks)
    for name in args.models:
        try:
            r = run(name)
        except Exception as e:  # noqa: BLE001  (a failing model is a row of the table, not the end of it)
            failed += 1
            lines.append(f"| {name} | | " + " | ".join("" for _ in TARGETS) + f" | NO: {type(e).__name__}: "
                         f"{str(e)[:120]} | | |")
            print(lines[-1], flush=True)
            continue
        exact = all(a == b for a, b in r["targets"])
        wrong += [name] if not exact or r["changed"] else []
        lines.append(f"| {name} | {r['synapses']:,} | " + " | ".join(f"{a:,} / {b:,}" for a, b in r["targets"])
                     + f" | {'yes' if exact else 'NO'} | {r['changed']} | {r['wall']:.1f} |")
        print(lines[-1], flush=True)
    text = (f"# Mask-only mechanics across torchvision classifiers ({torch.get_num_threads()} threads, "
            f"{platform.machine()}, CPU)\n\n" + "\n".join(lines) + "\n\nRandom weights and images; one pass of 4 "
            "batches of 4 per target (10% then 20% removed), synapse ensembles. Changed surviving weights: "
            "entries of the last snapshot's state_dict (pruned weights zeroed; biases and normalisation statistics "
            "too) whose bits differ from the model's as built.\n\n"
            f"Machine: {machine()}.\n\n"
            f"Reproduce: `{command('mask_only_models.py', Path(HERE).parents[1], argv)}`\n")
    print(text)
    write_text(args.output, text)
    print(f"wrote {args.output}")
    if failed or wrong:
        raise SystemExit(f"{failed} model(s) failed; {len(wrong)} missed a target or changed a surviving weight"
                         + (f" ({', '.join(wrong)})" if wrong else ""))


if __name__ == "__main__":
    main()
