"""In-memory image datasets: uint8 or float tensors, batched fetching, tensor augmentation."""
from __future__ import annotations

import copy
from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

FINGERPRINT_PIECE_BYTES = 64 << 20  # the size of the pieces TensorImages.fingerprint_all gives


def random_crop_flip(x: torch.Tensor, pad: int = 4, flip: bool = True,
                     draws: Optional[Tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = None) -> torch.Tensor:
    """Standard CIFAR augmentation on a batch ``(B, C, H, W)``: zero-pad by ``pad``, crop a random
    ``H x W`` window per image, and flip half of the images horizontally. The random offsets and
    flips come from the global torch RNG, or from ``draws`` = ``(oy, ox, flipped)`` per image."""
    b, c, h, w = x.shape
    if draws is None:
        oy = torch.randint(0, 2 * pad + 1, (b,)) if pad > 0 else None
        ox = torch.randint(0, 2 * pad + 1, (b,)) if pad > 0 else None
        flipped = torch.rand(b) < 0.5 if flip else None
    else:
        oy, ox, flipped = draws
    if pad > 0:
        xp = F.pad(x, (pad, pad, pad, pad))
        rows = (oy[:, None] + torch.arange(h))[:, None, :, None]
        cols = (ox[:, None] + torch.arange(w))[:, None, None, :]
        x = xp[torch.arange(b)[:, None, None, None], torch.arange(c)[None, :, None, None], rows, cols]
    if flip:
        x = torch.where(flipped[:, None, None, None], x.flip(-1), x)
    return x


class TensorImages(Dataset):
    """The examples ``indices`` of an in-memory image tensor, normalised on the fly.

    ``images`` is ``(N, C, H, W)`` (uint8 scaled by 1/255, or float used as is) or ``(N, F)``;
    ``labels`` is ``(N,)``. Items are ``(float tensor, int)``; ``__getitems__`` fetches whole
    batches with tensor ops (the DataLoader uses it), applying ``augment`` (random crop + flip)
    when set. The underlying tensors are shared, never copied, between views.

    Augmentation draws from the global torch RNG until :meth:`set_epoch` is given a seed
    (``recipes/adaptive.py`` does so every epoch); from then on each example's
    crop and flip are keyed on ``(seed, epoch, example)``, so they depend neither on what else drew
    random numbers nor on when the loader fetched the batch (it reads one ahead): a run resumed
    from a checkpoint crops as the uninterrupted run did.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, indices: Optional[torch.Tensor] = None,
                 mean: Optional[Sequence[float]] = None, std: Optional[Sequence[float]] = None,
                 augment: bool = False, pad: int = 4, flip: bool = True):
        self.images, self.labels = images, labels.long()
        self.indices = torch.arange(len(labels)) if indices is None else torch.as_tensor(indices).long()
        shape = (1, -1) + (1,) * (images.dim() - 2)
        self.mean = None if mean is None else torch.tensor(mean, dtype=torch.float32).view(shape)
        self.std = None if std is None else torch.tensor(std, dtype=torch.float32).view(shape)
        self.augment = augment and images.dim() == 4
        self.pad, self.flip = int(pad), bool(flip)
        self.epoch = 0
        self.seed: Optional[int] = None  # None: augmentation from the global RNG
        self._draws = None  # ((epoch, seed), (oy, ox, flipped) for every image)

    def set_epoch(self, epoch: int, seed: Optional[int] = None) -> None:
        """Record the epoch; with ``seed`` (once is enough), key the augmentation on ``(seed, epoch,
        example)`` from now on. Accelerate's loaders call ``set_epoch(epoch)`` on their own: without
        a seed that changes nothing, so code that never asked for keyed crops keeps its RNG stream."""
        self.epoch = int(epoch)
        if seed is not None:
            self.seed = int(seed)

    def _epoch_draws(self, src: torch.Tensor):
        key = (self.epoch, self.seed)
        if self._draws is None or self._draws[0] != key:
            g = torch.Generator().manual_seed((self.seed * 1_000_003 + self.epoch) % (2 ** 63))
            n, span = self.images.shape[0], 2 * self.pad + 1
            table = (torch.randint(0, span, (n,), generator=g), torch.randint(0, span, (n,), generator=g),
                     torch.rand(n, generator=g) < 0.5)
            self._draws = (key, table)
        return tuple(t[src] for t in self._draws[1])

    def __len__(self) -> int:
        return int(self.indices.numel())

    @property
    def targets(self) -> torch.Tensor:
        return self.labels[self.indices]

    def select(self, positions) -> "TensorImages":
        """The view of this view's examples at ``positions`` (sharing the tensors)."""
        view = copy.copy(self)
        view.indices = self.indices[torch.as_tensor(positions, dtype=torch.long)]
        return view

    def fingerprint_parts(self, positions) -> list:
        """The stored images and labels of the examples at ``positions`` of this view, as held in
        memory (no normalisation, no augmentation): what :func:`adaptive.data.fingerprint.dataset_fingerprint` hashes."""
        src = self.indices[torch.as_tensor(positions, dtype=torch.long)]
        return [self.images[src], self.labels[src]]

    def fingerprint_all(self):
        """The stored images of every example of this view, in order, as held in memory (no
        normalisation, no augmentation), in pieces of about :data:`FINGERPRINT_PIECE_BYTES`: what
        :func:`adaptive.data.fingerprint.dataset_fingerprint` hashes of every example, each piece
        before it asks for the next (a piece of examples not stored one after another is gathered
        into the memory of the one before): one pass over the split's bytes, nothing decoded."""
        n = self.images.shape[0]
        flat = self.images.reshape(n, -1)
        per = max(1, FINGERPRINT_PIECE_BYTES // max(1, flat.shape[1] * flat.element_size()))
        buffer = None
        for start in range(0, len(self), per):
            src = self.indices[start:start + per]
            first, last = int(src[0]), int(src[-1])
            if last - first + 1 == src.numel() and bool((src.diff() == 1).all()):
                yield self.images[first:last + 1]  # (a view: nothing copied)
                continue
            if buffer is None:  # (one buffer for every piece: a fresh one each time costs more than the copy)
                buffer = flat.new_empty((min(per, len(self)), flat.shape[1]))
            piece = buffer[:src.numel()]
            torch.index_select(flat, 0, src, out=piece)
            yield piece.view(src.numel(), *self.images.shape[1:])

    def batch(self, idx) -> tuple:
        """``(x, y)`` tensors for positions ``idx`` of this view."""
        src = self.indices[torch.as_tensor(idx, dtype=torch.long)]
        x = self.images[src]
        x = x.float().div_(255) if x.dtype == torch.uint8 else x.float()
        if self.augment:
            draws = None if self.seed is None else self._epoch_draws(src)
            x = random_crop_flip(x, self.pad, self.flip, draws)
        if self.mean is not None:
            x = (x - self.mean) / self.std
        return x, self.labels[src]

    def __getitem__(self, i):
        x, y = self.batch([int(i)])
        return x[0], int(y[0])

    def __getitems__(self, idx):
        x, y = self.batch(list(idx))
        return list(zip(x.unbind(0), y.tolist()))
