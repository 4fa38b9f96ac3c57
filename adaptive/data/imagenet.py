"""ImageNet (or any large ImageFolder with train/ and val/) with torchvision's standard transforms."""
from __future__ import annotations

from typing import Optional

import torch
from torch.utils.data import Dataset

from ..paths import DatasetNotFoundError, find_data
from .base import Source, register_dataset

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class FolderView(Dataset):
    """The samples ``indices`` of an ImageFolder, loaded and passed through ``transform``.

    A random transform draws from the global torch RNG until :meth:`set_epoch` is given a seed
    (``recipes/adaptive.py`` does so every epoch); from then on each sample's transform runs on
    the CPU RNG seeded from ``(seed, epoch, sample)`` (its state is restored after; no other
    generator is touched), so the crops depend neither on worker count nor on when a batch was
    fetched: a resumed run augments as the uninterrupted run did.
    """

    def __init__(self, folder, indices, transform):
        self.folder, self.transform = folder, transform
        self.indices = torch.arange(len(folder.samples)) if indices is None else torch.as_tensor(indices).long()
        self.epoch = 0
        self.seed: Optional[int] = None

    def set_epoch(self, epoch: int, seed: Optional[int] = None) -> None:
        """Record the epoch; with ``seed`` (once is enough), key the transform's randomness on
        ``(seed, epoch, sample)`` from now on (without one, Accelerate's own ``set_epoch`` calls
        change nothing)."""
        self.epoch = int(epoch)
        if seed is not None:
            self.seed = int(seed)

    def __len__(self):
        return int(self.indices.numel())

    @property
    def targets(self) -> torch.Tensor:
        return torch.as_tensor(self.folder.targets)[self.indices]

    def select(self, positions) -> "FolderView":
        """The view of this view's samples at ``positions``."""
        view = FolderView(self.folder, self.indices[torch.as_tensor(positions, dtype=torch.long)], self.transform)
        view.epoch, view.seed = self.epoch, self.seed
        return view

    def __getitem__(self, i):
        src = int(self.indices[i])
        path, label = self.folder.samples[src]
        image = self.folder.loader(path)
        if self.seed is None:
            return self.transform(image), label
        with torch.random.fork_rng(devices=[]):
            # the CPU generator only: torch.manual_seed would also reseed every CUDA (MPS, XPU)
            # generator, which fork_rng(devices=[]) does not restore
            torch.random.default_generator.manual_seed(
                (self.seed * 1_000_003 + self.epoch * 7919 + src * 104_729 + 11) % (2 ** 63))
            return self.transform(image), label


def transforms(train: bool, image_size: int = 224, resize: int = 256):
    import torchvision.transforms as T

    norm = [T.ToTensor(), T.Normalize(MEAN, STD)]
    if train:
        return T.Compose([T.RandomResizedCrop(image_size), T.RandomHorizontalFlip()] + norm)
    return T.Compose([T.Resize(resize), T.CenterCrop(image_size)] + norm)


@register_dataset("imagenet")
def imagenet(data_dir=None, download=False, augment=False, image_size=224, resize=256) -> Source:
    """ImageFolder ``<data>/imagenet/train`` and ``<data>/imagenet/val``. The train part uses
    RandomResizedCrop + flip when ``augment``, else the evaluation transform (resize 256, center
    crop 224), which holdout and val always use. ImageNet cannot be downloaded automatically."""
    train_dir = find_data("imagenet", ("imagenet/train", "ILSVRC2012/train"), data_dir,
                          how="laid out as imagenet/train/<wnid>/*.JPEG and imagenet/val/<wnid>/*.JPEG "
                              "(ImageNet has no automatic download)")
    if not (train_dir.parent / "val").is_dir():  # said now, not after a whole run when the report needs it
        raise DatasetNotFoundError(f"imagenet validation split not found: expected {train_dir.parent / 'val'} next to "
                                   f"{train_dir} (laid out as val/<wnid>/*.JPEG)")
    from torchvision.datasets import ImageFolder

    folder = ImageFolder(str(train_dir))
    eval_tf = transforms(False, image_size, resize)
    train_tf = transforms(True, image_size, resize) if augment else eval_tf

    def test():
        return FolderView(ImageFolder(str(train_dir.parent / "val")), None, eval_tf)

    return Source(
        train_labels=torch.as_tensor(folder.targets),
        train_view=lambda idx: FolderView(folder, idx, train_tf),
        eval_view=lambda idx: FolderView(folder, idx, eval_tf),
        test=test, num_classes=len(folder.classes), in_shape=(3, image_size, image_size), classes=folder.classes,
    )
