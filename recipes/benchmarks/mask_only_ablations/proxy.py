"""An honest proxy of the mask-only benchmark, for choosing what the DEV split cannot choose.

Why: the pretrained ResNets saw every TRAIN image (losslessly), so DEV and holdout accuracy measure
recall through the JPEG shift, not accuracy on unseen images; a regulariser that trades recall for
generalisation (mixup, label smoothing, augmentation, mask noise) always looks worse there, and the
test split may choose nothing. This proxy rebuilds the benchmark's structure from TRAIN images alone:

- a ResNet-20 trained from scratch here on part A of TRAIN (40,000 images, stratified, seed 0), on the
  images as stored (JPEG q75): the "clean" data it memorises, like the real networks' lossless copy;
- a shift it never saw: every image re-encoded once more as JPEG at a lower quality (``--quality``);
- mask learning on the shifted A images (content the proxy saw clean, as the real networks saw TRAIN);
- and selection on the shifted B images (10,000 TRAIN images the proxy never saw at all), the part
  that plays the real benchmark's test split. The real test split is never read.

``pretrain`` trains and saves the proxy (outside the repository); :func:`proxy_loaders` then
serves the shifted loaders to ``ep.py``, ``ours.py``, ``finetune.py`` and ``ensemble.py`` (``--proxy PATH``). The proxy is a research tool, not a test.
"""
from __future__ import annotations

import argparse
import io
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from adaptive.data.cifar import NORMALIZATIONS
from adaptive.data.folder_cache import cached_folder_tensor
from adaptive.mask_only import evaluate
from adaptive.data.tensors import TensorImages, random_crop_flip
from adaptive.cli import path_type
from adaptive.models import build_model
from adaptive.paths import find_data

N_A = 40000
SPLIT_SEED = 0  # the one A/B split: pretrain trains on its A, proxy_loaders reports on its B (never --seed's)


def train_images():
    """CIFAR-10 TRAIN as decoded uint8 ``(50000, 3, 32, 32)`` and labels (the JPEG folder's cache)."""
    root = find_data("cifar10", ("cifar10-jpeg/train",), None, how="the proxy needs the cifar10-jpeg folder")
    x, y, _ = cached_folder_tensor(root, "cifar10-jpeg-train")
    return x, y


def split_ab(y: torch.Tensor, seed: int = 0):
    """Stratified random split of TRAIN into A (N_A images, the proxy's training set) and B (the rest)."""
    g = torch.Generator().manual_seed(10_000 + seed)
    a, b = [], []
    per = N_A // 10
    for c in range(10):
        idx = (y == c).nonzero().view(-1)
        idx = idx[torch.randperm(len(idx), generator=g)]
        a.append(idx[:per]); b.append(idx[per:])
    return torch.cat(a).sort().values, torch.cat(b).sort().values


def rejpeg(x: torch.Tensor, quality: int) -> torch.Tensor:
    """Every image of uint8 ``x`` re-encoded once as JPEG at ``quality`` (PIL, 4:2:0 as PIL's default)."""
    from PIL import Image
    import numpy as np

    out = torch.empty_like(x)
    arr = x.permute(0, 2, 3, 1).numpy()
    for i in range(len(arr)):
        buf = io.BytesIO()
        Image.fromarray(arr[i]).save(buf, format="JPEG", quality=int(quality))
        buf.seek(0)
        out[i] = torch.from_numpy(np.asarray(Image.open(buf).convert("RGB"))).permute(2, 0, 1)
    return out


def shifted_images(quality: int, cache: Path):
    path = cache / f"cifar10-train-rejpeg-q{quality}.pt"
    if path.exists():
        return torch.load(path, weights_only=True)
    x, _ = train_images()
    xs = rejpeg(x, quality)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(xs, path)
    return xs


def _acc(model, x, y, idx):
    """Top-1 % of ``model`` on images ``idx`` of uint8 ``x`` (the benchmarks' own evaluation)."""
    view = TensorImages(x, y, idx, *NORMALIZATIONS["imagenet"])
    return 100 * evaluate(model, DataLoader(view, batch_size=1000))[1]


def pretrain(a):
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    x, y = train_images()
    ia, ib = split_ab(y, SPLIT_SEED)  # --seed draws the weights and data order, not the split loaders read back
    mean = torch.tensor(NORMALIZATIONS["imagenet"][0]).view(1, 3, 1, 1)
    std = torch.tensor(NORMALIZATIONS["imagenet"][1]).view(1, 3, 1, 1)
    xa, ya = x[ia], y[ia]
    model = build_model("resnet20")
    steps_per = math.ceil(len(xa) / a.bs)
    opt = torch.optim.SGD(model.parameters(), lr=a.lr, momentum=0.9, nesterov=True, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=a.lr, total_steps=a.epochs * steps_per, pct_start=0.15)
    t0 = time.time()
    for ep in range(a.epochs):
        model.train()
        perm = torch.randperm(len(xa))
        tot = 0.0
        for s in range(steps_per):
            j = perm[s * a.bs:(s + 1) * a.bs]
            xb = (random_crop_flip(xa[j].float() / 255) - mean) / std
            loss = F.cross_entropy(model(xb), ya[j])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step(); sched.step()
            tot += loss.item()
        acc_b = _acc(model, x, y, ib)
        print(f"epoch {ep + 1}/{a.epochs} train loss {tot / steps_per:.4f}  B (unseen, as stored) {acc_b:.2f}%  "
              f"{(time.time() - t0) / 60:.1f} min", flush=True)
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), out)
    acc_a = _acc(model, x, y, ia[:5000])
    print(f"saved {out}; A (seen) {acc_a:.2f}%  B (unseen) {acc_b:.2f}%", flush=True)
    for q in a.qualities:
        xs = shifted_images(q, out.parent)
        sa, sb = _acc(model, xs, y, ia[:5000]), _acc(model, xs, y, ib)
        print(f"re-JPEG q{q}: A (seen content) {sa:.2f}%  B (unseen) {sb:.2f}%", flush=True)


def proxy_loaders(proxy_path: str, quality: int, seed: int, bs: int):
    """The proxy's loaders on the shifted images: mask-learning train part and holdout from A,
    ``mem`` (5,000 A images: seen content, the analogue of DEV) and ``unseen`` (all of B)."""
    _, y = train_images()
    xs = shifted_images(quality, Path(proxy_path).parent)
    ia, ib = split_ab(y, SPLIT_SEED)
    g = torch.Generator().manual_seed(1234 + seed)
    ia = ia[torch.randperm(len(ia), generator=g)]
    mean, std = NORMALIZATIONS["imagenet"]
    view = lambda idx: TensorImages(xs, y, idx, mean, std)
    mem, hold, train = view(ia[:5000]), view(ia[5000:10000]), view(ia[10000:])
    gen = torch.Generator().manual_seed(seed)
    tl = DataLoader(train, batch_size=bs, shuffle=True, generator=gen)
    return (tl, DataLoader(hold, batch_size=500), DataLoader(view(ib), batch_size=500),
            DataLoader(mem, batch_size=500))


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("command", choices=["pretrain"])
    ap.add_argument("--out", type=path_type(), default="/tmp/adaptive-proxy/resnet20_A.pt", help="where the proxy's state_dict goes (not the repository)")
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--lr", type=float, default=0.2)
    ap.add_argument("--bs", type=int, default=128)
    ap.add_argument("--seed", type=int, default=0, help="initialisation and data order (the A/B split is fixed)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--qualities", type=int, nargs="*", default=[10, 20, 30], help="re-JPEG qualities to report on")
    a = ap.parse_args()
    if a.epochs < 1 or a.bs < 1 or a.threads < 1 or not a.lr > 0:
        ap.error("--epochs, --bs and --threads must be at least 1 and --lr positive")
    if any(not 1 <= q <= 95 for q in a.qualities):
        ap.error(f"--qualities must lie in 1..95 (PIL's JPEG quality range), got {a.qualities}")
    pretrain(a)
