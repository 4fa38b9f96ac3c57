"""The training window of a mask-only optimisation: loss and accuracy sums over the batches since
the last update, kept on the device and read once, at the update that reports them."""
from __future__ import annotations

from typing import List

import torch

from .distributed import is_distributed, world_size
from .mask_only_eval import _agreed
from .metrics import example_count


_EMPTY_WINDOW = (0.0, 0, 0, 0, 0)  # optimize_connectome's loss sum, correct, units, counted, examples


def _on_host(*values) -> List[float]:
    """``values`` (numbers, or 0-d tensors on one device) as Python floats, the tensors read in one
    transfer."""
    tensors = [v for v in values if torch.is_tensor(v)]
    read = iter(torch.stack([t.double() for t in tensors]).tolist() if tensors else ())
    return [next(read) if torch.is_tensor(v) else float(v) for v in values]


class _Window:
    """The sums of one training window (loss, correct, units, counted, examples), from
    :data:`_EMPTY_WINDOW`: the counts start as the integer 0, so summed with 0-d int64 tensors they
    stay exact int64 ones (from 0.0 they would be float32, whose integers end at 2**24 positions)."""

    def __init__(self):
        self.loss, self.correct, self.n, self.counted, self.examples = _EMPTY_WINDOW

    def add(self, loss: torch.Tensor, units, acc, y) -> None:
        """Add a batch: its mean ``loss`` over ``units`` (positions for classification shapes, else
        examples, as :func:`adaptive.mask_only_eval.evaluate`), ``acc`` (``(correct, counted)`` or None)
        and its targets ``y``. The sums stay on the device (as float64, the host's Python floats)."""
        weighted = loss.detach().double() * units
        # a batch with no unit to score (every label the ignored one, -100) has a mean loss of NaN: it adds nothing
        # (NaN x 0 is NaN); a where, not a read on the host, so the sums stay on the device
        self.loss += torch.where(units > 0, weighted, 0.0) if torch.is_tensor(units) else (weighted if units else 0.0)
        self.n += units
        self.examples += example_count(y)
        if acc is not None:
            self.correct += acc[0]
            self.counted += acc[1]

    def totals(self) -> tuple:
        """``(loss sum, correct, units, counted, examples, processes)``: the window over every
        process's batches (averaged over ``processes``), not this process's shard, read in one
        transfer."""
        procs = 1
        win_loss, win_correct, win_n, win_counted = _on_host(self.loss, self.correct, self.n, self.counted)
        win_examples = self.examples
        if is_distributed():  # the window over every process's batches, not this process's shard
            win_loss, win_correct, win_n, win_counted, win_examples = _agreed(
                win_loss, win_correct, win_n, win_counted, win_examples)
            procs = world_size()
        return win_loss, win_correct, win_n, win_counted, win_examples, procs
