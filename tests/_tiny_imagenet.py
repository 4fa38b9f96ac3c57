"""A tiny ImageNet-like folder tree with a weights file for it, shared by the tests that run the shipped
MobileNetV3 ImageNet configs end to end."""
from pathlib import Path

import numpy as np
import torch
import torchvision
from PIL import Image


def tiny_imagenet_with_weights(root: Path) -> Path:
    """Write <root>/imagenet/{train,val}/<wnid>/*.JPEG (two classes, 6 and 2 random 40x40 images each) and
    a randomly initialised 2-class MobileNetV3-Large's state_dict at <root>/mnv3.pth, which it returns."""
    rng = np.random.default_rng(0)
    for split, n in (("train", 6), ("val", 2)):
        for wnid in ("n01440764", "n01443537"):
            folder = root / "imagenet" / split / wnid
            folder.mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(folder / f"{i}.JPEG")
    torch.manual_seed(0)
    weights = root / "mnv3.pth"
    torch.save(torchvision.models.mobilenet_v3_large(num_classes=2).state_dict(), weights)
    return weights
