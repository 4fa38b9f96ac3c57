"""MNIST from ``mnist.npz`` (x_train, y_train, x_test, y_test), held in memory as uint8."""
from __future__ import annotations

import numpy as np
import torch

from ..paths import DatasetNotFoundError, downloading, find_data, resolve_data_dir
from .base import Source, register_dataset
from .tensors import TensorImages

MEAN, STD = (0.1307,), (0.3081,)
RELPATHS = ("mnist/mnist.npz", "mnist.npz", "mnist/MNIST/raw")
HOW = "or pass download=True (--download) to fetch it with torchvision where there is internet"


def _arrays(path, split):
    if path.name == "raw":  # torchvision's own layout
        import torchvision

        ds = torchvision.datasets.MNIST(str(path.parent.parent), train=split == "train", download=False)
        return ds.data, ds.targets
    with np.load(path) as f:
        return torch.from_numpy(f[f"x_{split}"]), torch.from_numpy(f[f"y_{split}"]).long()


@register_dataset("mnist", facts=lambda data_dir=None: (10, (1, 28, 28)))
def mnist(data_dir=None, download=False, augment=False) -> Source:
    """MNIST ``(1, 28, 28)``, normalised with mean/std 0.1307/0.3081; ``augment``: random shifts of
    up to 2 pixels (no flips) on the train part only. Reads the npz of the data
    folder; with ``download=True`` and no local copy, torchvision downloads it to the data dir."""
    try:
        path = find_data("mnist", RELPATHS, data_dir, how=HOW)
    except DatasetNotFoundError:
        if not download:
            raise
        import torchvision

        root = resolve_data_dir(data_dir) / "mnist"
        with downloading("mnist", root):
            torchvision.datasets.MNIST(str(root), train=True, download=True)
            torchvision.datasets.MNIST(str(root), train=False, download=True)
        path = root / "MNIST" / "raw"
    x, y = _arrays(path, "train")
    x = x.unsqueeze(1)

    def view(idx, augment=False):  # digits are not mirror images: shifts only
        return TensorImages(x, y, idx, MEAN, STD, augment=augment, pad=2, flip=False)

    def test():
        xt, yt = _arrays(path, "test")
        return TensorImages(xt.unsqueeze(1), yt, None, MEAN, STD)

    return Source(train_labels=y, train_view=lambda idx: view(idx, augment), eval_view=view, test=test, num_classes=10,
                  in_shape=(1, 28, 28), classes=[str(i) for i in range(10)])
