"""Decode an ImageFolder of small same-sized images once into a uint8 tensor, cached on disk.

Decoding CIFAR's 50,000 JPEGs takes minutes on a small machine; the cached tensor loads in well
under a second. The cache lives outside the repository (``adaptive.paths.cache_dir()``), is
written atomically, and is rebuilt when the folder's path, classes or file count change.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import List, Optional, Tuple

import numpy as np
import torch

from ..atomic import atomic_path
from ..paths import cache_dir as default_cache_dir


def scan_folder(root: Path) -> Tuple[List[str], List[Tuple[str, int]]]:
    """Classes (sorted folder names) and ``(path, class index)`` samples, as ImageFolder does."""
    from torchvision.datasets.folder import IMG_EXTENSIONS, make_dataset

    classes = sorted(e.name for e in os.scandir(root) if e.is_dir())
    if not classes:
        raise FileNotFoundError(f"{root} has no class sub-folders (expected ImageFolder layout root/<class>/*.jpg)")
    samples = make_dataset(str(root), {c: i for i, c in enumerate(classes)}, extensions=IMG_EXTENSIONS)
    return classes, samples


def decode_folder(root: Path, desc: str = "decoding") -> Tuple[torch.Tensor, torch.Tensor, List[str]]:
    """All images of ``root`` as ``(N, C, H, W)`` uint8 RGB, labels ``(N,)`` and class names."""
    from PIL import Image
    from tqdm.auto import tqdm

    classes, samples = scan_folder(root)
    with Image.open(samples[0][0]) as im:
        w, h = im.size
    images = torch.empty((len(samples), 3, h, w), dtype=torch.uint8)
    for i, (path, _) in enumerate(tqdm(samples, desc=desc, unit="img", mininterval=1.0)):
        with Image.open(path) as im:
            arr = np.array(im.convert("RGB"))  # a writable copy
        if arr.shape[:2] != (h, w):
            raise ValueError(f"{path} is {arr.shape[1]}x{arr.shape[0]}, not {w}x{h}: this cache needs same-sized images")
        images[i] = torch.from_numpy(arr).permute(2, 0, 1)
    labels = torch.tensor([c for _, c in samples], dtype=torch.long)
    return images, labels, classes


def cached_folder_tensor(root: Path, cache_name: str, cache_dir: Optional[Path] = None):
    """``decode_folder(root)``, read from ``<cache_dir>/<cache_name>.pt`` when it is up to date."""
    root = Path(root).resolve()
    cache = default_cache_dir(cache_dir) / f"{cache_name}.pt"
    classes, samples = scan_folder(root)
    meta = {"root": str(root), "count": len(samples), "classes": classes}
    if cache.is_file():
        try:
            blob = torch.load(cache, map_location="cpu", weights_only=True)
            if blob.get("meta") == meta:
                return blob["images"], blob["labels"], classes
        except Exception:  # a corrupt or foreign file: rebuild it below
            pass
    images, labels, classes = decode_folder(root, desc=f"decoding {cache_name} (once; cached to {cache})")
    with atomic_path(cache) as tmp:  # readable by others (the cache is meant to be shared), never half-written
        torch.save({"meta": meta, "images": images, "labels": labels}, tmp)
    return images, labels, classes
