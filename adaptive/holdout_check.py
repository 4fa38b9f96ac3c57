"""The held-out loss that checks a controller's updates while a network trains: the
``holdout_loss`` of :class:`adaptive.Controller`'s line search (``recipes/adaptive.py --line_search N``).

A check must compare like with like: every check scores the same held-out examples, a fixed draw
taken once, at the first check, and kept on the device (a loader read afresh at each check would
also decode its images again at every update; a run with no update reads none). Taking the draw orders the dataset with a generator of its own, and both the
draw and every check run inside :class:`adaptive.global_rng.kept_global_rng`: a dataset or a model
that draws random numbers (a plugin's random evaluation transform, a noisy forward) leaves every
global generator as it found it; a check runs the model in eval mode under
``torch.no_grad`` (BatchNorm's running statistics stay as they are, no dropout is drawn, and each
module gets its own mode back), through the model as it is given, so a model prepared by Accelerate
runs it under the run's mixed precision. A check therefore changes nothing the training reads next:
a run whose checks accept every update trains exactly as one without them (same masks, same weights).
"""
from __future__ import annotations

import copy
import functools
from typing import Callable, List, Optional, Tuple

import torch
import torch.nn.functional as F

from .global_rng import global_states, kept_global_rng, set_global_states
from .label_checks import _kind
from .metrics import IGNORE_INDEX, is_class_target
from .modes import modes_kept


class HeldOutLoss:
    """``HeldOutLoss(model, dataset, batches, batch_size, device=...)()``: the mean loss of ``model``
    over a fixed draw of held-out examples of ``dataset``, the same at every call.

    The draw: ``batches`` batches of ``batch_size`` examples for each of ``processes`` processes,
    drawn without replacement (a permutation seeded by ``seed``, the same on every process), process
    ``rank`` taking every ``processes``-th batch; where the dataset holds fewer, as many whole batches
    per process as it holds (``self.batches`` says how many; every process holds as many examples,
    so the mean over processes that the controller takes is the mean over the whole draw). A dataset
    too small for one batch per process is a ValueError naming the sizes. The draw is read from
    ``dataset`` at the first call (or read of :attr:`data`), under the global generators' states of
    construction: the examples an eager draw would have taken, and none read where no check comes.

    A call: ``loss_fn(output.float(), targets, reduction="none")`` summed over the draw and divided
    by the number of losses it gave (one per example, or per token of a sequence; float64 sums), less
    those at labels the loss ignores (:func:`counted_losses`: the mean ``reduction="mean"`` takes of an
    unweighted cross-entropy; where processes hold different numbers of such labels, the controller's
    mean over processes weighs each process's mean alike, the same at every call), with ``model`` in
    eval mode and gradients off; each module's mode is given back afterwards. ``loss_fn`` defaults to plain cross-entropy (as the held-out rows of a
    run's metrics are, whatever loss it trains on). A torch loss module (``nn.CrossEntropyLoss(ignore_index=-1)``,
    ``nn.MSELoss()``), whose reduction is an attribute, not an argument, is called as a copy of itself with
    ``reduction="none"``; a loss function without a ``reduction`` argument is refused at the first call,
    naming the fix.
    """

    def __init__(self, model: torch.nn.Module, dataset, batches: int, batch_size: int, *, device,
                 seed: int = 0, rank: int = 0, processes: int = 1, loss_fn: Callable = F.cross_entropy):
        if isinstance(batches, bool) or not isinstance(batches, int) or batches < 1:
            raise ValueError(f"batches must be an integer >= 1 (held-out batches each check scores), got {batches!r}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
        if not 0 <= rank < processes:
            raise ValueError(f"rank must be in [0, processes), got rank {rank} of {processes}")
        size = len(dataset)
        per_process = min(batches, size // (batch_size * processes))
        if per_process < 1:
            raise ValueError(f"the held-out part holds {size} example(s), fewer than one batch of {batch_size} for each "
                             f"of the {processes} process(es), so the line search has nothing to check updates on: "
                             f"hold out more of TRAIN (--holdout) or lower the batch size (--eval_batch_size)")
        self.model, self.loss_fn = model, loss_fn
        self._unreduced = unreduced(loss_fn)
        self.requested, self.batches, self.batch_size = batches, per_process, batch_size
        self.calls = 0  # checks run so far (the controller calls it before and after each tried edit)
        # the draw is taken at the first call (or the first read of .data): a run whose controller never
        # calls it (no update in its steps) reads no held-out example; it is taken from the global
        # generators' states of now, so it is the draw an eager one would have been, whatever ran between
        self._source = (dataset, size, device, int(seed), rank, processes)
        self._states = global_states()
        self._data: Optional[List[Tuple[torch.Tensor, torch.Tensor]]] = None

    @property
    def data(self) -> List[Tuple[torch.Tensor, torch.Tensor]]:
        """The draw: ``(inputs, targets)`` on the device for each of this process's batches, taken
        once, at the first read."""
        if self._data is None:
            dataset, size, device, seed, rank, processes = self._source
            order = torch.randperm(size, generator=torch.Generator().manual_seed(seed))
            data = []
            with kept_global_rng():  # the dataset's own draws (a random transform) leave the training's generators
                set_global_states(self._states)  # ... and are the ones it would have drawn when this was built
                for k in range(self.batches):
                    start = (k * processes + rank) * self.batch_size
                    data.append(self._batch(dataset, order[start:start + self.batch_size].tolist(), device))
            self._data, self._source, self._states = data, None, None
        return self._data

    @staticmethod
    def _batch(dataset, indices, device) -> Tuple[torch.Tensor, torch.Tensor]:
        from torch.utils.data import default_collate

        x, y = default_collate([dataset[i] for i in indices])[:2]
        return x.to(device), y.to(device)

    def __len__(self) -> int:
        return self.batches

    def examples(self) -> int:
        """Held-out examples each call scores on this process."""
        return sum(int(y.shape[0]) for _, y in self.data)

    def __call__(self) -> float:
        self.calls += 1
        total, count = None, 0
        with torch.no_grad(), modes_kept(self.model, train=False), kept_global_rng():
            for x, y in self.data:
                out = self.model(x).float()
                try:
                    losses = self._unreduced(out, y)
                except TypeError as e:
                    if "reduction" not in str(e):
                        raise
                    name = getattr(self.loss_fn, "__name__", type(self.loss_fn).__name__)
                    raise TypeError(
                        f"the held-out check needs the loss of each example, and loss_fn {name} takes no "
                        f"reduction= argument ({e}): pass a loss function that does (F.cross_entropy, or "
                        f"functools.partial(F.cross_entropy, label_smoothing=0.1) to bind options) or a torch "
                        f"loss module (nn.CrossEntropyLoss(...)), or give {name} a reduction='none' argument") from e
                total = losses.double().sum() if total is None else total + losses.double().sum()
                count = count + counted_losses(losses, out, y, self.loss_fn)  # (a 0-d tensor: no wait per batch)
        count = int(count)
        if not count:
            raise ValueError("every target of the held-out draw is a label its loss ignores (its ignore_index, -100 "
                             "unless bound), so no held-out loss checks the updates: hold out examples with labels "
                             "(--holdout), or turn the line search off")
        return float(total) / count


def unreduced(loss_fn: Callable) -> Callable:
    """``loss_fn`` as a call ``(out, y) -> losses`` with no reduction: a torch loss module (a subclass of
    ``torch.nn.modules.loss._Loss``, whose ``reduction`` is an attribute its ``forward`` reads) as a shallow
    copy set to ``reduction="none"`` (the module given is left as it is); anything else called with
    ``reduction="none"``."""
    if isinstance(loss_fn, torch.nn.modules.loss._Loss):
        none = copy.copy(loss_fn)
        none.reduction = "none"
        return none
    return functools.partial(loss_fn, reduction="none")


def counted_losses(losses: torch.Tensor, out: torch.Tensor, y: torch.Tensor, loss_fn: Callable):
    """The losses of a batch its held-out mean is taken over: every one ``loss_fn(out, y,
    reduction="none")`` gave (``losses``: one per example, per token of a sequence, per element of an
    element-wise loss; not the targets' entries, of which class probabilities hold one per class), less
    those at the positions a class loss ignores (integer labels at its ``ignore_index``, -100 unless
    bound: cross-entropy gives them 0.0, and its mean leaves them out), as the held-out rows of a run's
    metrics count them (:func:`adaptive.metrics.loss_weight`). An int, or a 0-d tensor on ``y``'s device."""
    if tuple(losses.shape) == tuple(y.shape) and is_class_target(out, y):
        kind, ignore = _kind(loss_fn)
        return (y != (ignore if kind == "class" else IGNORE_INDEX)).sum()
    return int(losses.numel())
