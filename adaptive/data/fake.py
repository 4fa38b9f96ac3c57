"""Random tensors of any shape, for testing mechanics (no files, no download)."""
from __future__ import annotations

import torch

from .base import Source, register_dataset
from .tensors import TensorImages
from ..warn import warn_user


def _make(n, shape, num_classes, prototypes, g, signal):
    y = torch.randperm(n, generator=g) % num_classes
    x = torch.randn((n, *shape), generator=g) + signal * prototypes[y]
    return x, y


def _shape(shape) -> tuple:
    """The ``shape`` argument as a tuple of positive sizes (a ValueError naming it otherwise)."""
    try:
        sizes = tuple(int(s) for s in ([shape] if isinstance(shape, int) else shape))
    except (TypeError, ValueError):
        sizes = ()
    if not sizes or any(s <= 0 for s in sizes):
        raise ValueError(f"dataset argument shape (--dataset-kw shape=...) must be positive sizes without the batch, "
                         f"e.g. shape=[3,32,32] or shape=[64], got {shape!r}")
    return sizes


def _facts(data_dir=None, shape=(3, 32, 32), num_classes=10, **_):
    return int(num_classes), _shape(shape)


@register_dataset("fake", facts=_facts)
def fake(data_dir=None, download=False, augment=False, shape=(3, 32, 32), num_classes=10,
         train_size=512, test_size=128, signal=1.0, data_seed=0) -> Source:
    """Gaussian noise plus a per-class prototype scaled by ``signal`` (0 gives pure noise, so the
    labels are learnable or not as a test wants). Deterministic in ``data_seed``."""
    shape = _shape(shape)
    g = torch.Generator().manual_seed(int(data_seed))
    prototypes = torch.randn((num_classes, *shape), generator=g)
    x, y = _make(int(train_size), shape, num_classes, prototypes, g, signal)
    xt, yt = _make(int(test_size), shape, num_classes, prototypes, g, signal)
    aug = augment and len(shape) == 3
    if augment and not aug:  # crops and flips are of images: a vector has none
        warn_user(f"the fake dataset augments images only (shape (C, H, W)), not shape {tuple(shape)}: "
                  "augment=True is not used")

    return Source(
        train_labels=y,
        train_view=lambda idx: TensorImages(x, y, idx, augment=aug),
        eval_view=lambda idx: TensorImages(x, y, idx),
        test=lambda: TensorImages(xt, yt),
        num_classes=int(num_classes), in_shape=shape, classes=[str(i) for i in range(num_classes)],
        test_size=len(yt),
    )
