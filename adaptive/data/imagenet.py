"""ImageNet (or any large ImageFolder with train/ and val/) with torchvision's standard transforms."""
from __future__ import annotations

import torch
from torch.utils.data import Dataset

from ..paths import DatasetNotFoundError, find_data
from .base import Source, register_dataset

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class FolderView(Dataset):
    """The samples ``indices`` of an ImageFolder, loaded and passed through ``transform``."""

    def __init__(self, folder, indices, transform):
        self.folder, self.transform = folder, transform
        self.indices = torch.arange(len(folder.samples)) if indices is None else torch.as_tensor(indices).long()

    def __len__(self):
        return int(self.indices.numel())

    @property
    def targets(self) -> torch.Tensor:
        return torch.as_tensor(self.folder.targets)[self.indices]

    def select(self, positions) -> "FolderView":
        """The view of this view's samples at ``positions``."""
        return FolderView(self.folder, self.indices[torch.as_tensor(positions, dtype=torch.long)], self.transform)

    def __getitem__(self, i):
        path, label = self.folder.samples[int(self.indices[i])]
        return self.transform(self.folder.loader(path)), label


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
