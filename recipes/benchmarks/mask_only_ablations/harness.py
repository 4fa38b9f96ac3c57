"""Scratch harness of the mask-only ablations: ResNet on cifar10-jpeg, train part minus a 5,000-image DEV split
(decisions and the reported accuracy), the holdout kept for the method's own use; the test split is never built."""
import sys
import torch
from pathlib import Path; sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
from torch.utils.data import DataLoader
from adaptive.data import get_datasets
from adaptive.models import build_model
from adaptive.paths import resolve_data_dir

def setup(model="resnet20", seed=0, threads=2, bs=128):
    torch.set_num_threads(threads)
    dd = resolve_data_dir(None)
    sp = get_datasets("cifar10", holdout=0.1, seed=seed)
    tr = sp.train
    n = len(tr)
    g = torch.Generator().manual_seed(1234 + seed)
    perm = torch.randperm(n, generator=g)
    dev = tr.select(perm[:5000]); dev.augment = False
    train = tr.select(perm[5000:])
    gen = torch.Generator().manual_seed(seed)
    tl = DataLoader(train, batch_size=bs, shuffle=True, generator=gen)
    hl = DataLoader(sp.holdout, batch_size=500)
    dl = DataLoader(dev, batch_size=500)
    W = {"resnet20": "resnet-cifar10/resnet20-12fca82f.th", "resnet32": "resnet-cifar10/resnet32-d509ac18.th"}
    fresh = lambda: build_model(model, weights=str(dd / W[model]))
    return tl, hl, dl, fresh
