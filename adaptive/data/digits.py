"""scikit-learn's bundled 8x8 digits: 1,797 images, 10 classes, needs no download at all."""
from __future__ import annotations

import torch

from .base import Source, register_dataset
from .split import stratified_split
from .tensors import TensorImages
from ..warn import warn_user

TEST_FRACTION = 0.2
SPLIT_SEED = 0  # fixed: the digits train/test split is part of the dataset's definition


@register_dataset("digits", facts=lambda data_dir=None: (10, (1, 8, 8)))
def digits(data_dir=None, download=False, augment=False) -> Source:
    """Digits as ``(1, 8, 8)`` images scaled to [0, 1] then standardised with the train split's
    mean and std; a fixed stratified 80/20 train/test split. ``augment`` is ignored: no augmentation
    is defined for these 8x8 digits, and so is ``data_dir`` (with a warning): they ship with scikit-learn."""
    from sklearn.datasets import load_digits

    if augment:
        warn_user("the digits dataset has no augmentation: augment=True is not used")
    if data_dir is not None:
        warn_user(f"the digits dataset ships with scikit-learn: the data directory {str(data_dir)!r} is not used")
    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(d.target, dtype=torch.long)
    tr, te = stratified_split(y, TEST_FRACTION, seed=SPLIT_SEED)
    x_tr, y_tr = x[tr], y[tr]
    mean, std = (float(x_tr.mean()),), (float(x_tr.std()),)

    def view(idx):
        return TensorImages(x_tr, y_tr, idx, mean, std)

    return Source(
        train_labels=y_tr, train_view=view, eval_view=view,
        test=lambda: TensorImages(x[te], y[te], None, mean, std),
        num_classes=10, in_shape=(1, 8, 8), classes=[str(i) for i in range(10)], test_size=len(te),
    )
