"""The training window of a mask-only optimisation: loss and accuracy sums over the batches since
the last update, and the first of its batches with a label outside the model's head, kept on the
device and read once, at the update that ends the window (before it edits anything)."""
from __future__ import annotations

from typing import List

import torch

from .distributed import is_distributed, world_size
from .label_checks import refuse_labels_outside
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
    stay exact int64 ones (from 0.0 they would be float32, whose integers end at 2**24 positions).
    ``labels``: on the device, ``[batch, low, high]`` of the first batch of the window with a class
    label outside the model's head (its number in the run, its smallest and largest scored label; all
    0 where none), or None where no batch's labels were checked on the device."""

    def __init__(self):
        self.loss, self.correct, self.n, self.counted, self.examples = _EMPTY_WINDOW
        self.labels = None
        self.label_shapes = {}  # the output's shape of each batch whose labels were checked, by its number
        self.refused = None  # (error, batch): the first batch whose labels were refused on the host (add_refused)
        self._read = None  # this process's sums and ``labels`` as read on the host (read once)

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

    def add_labels(self, found, batch: int, shape: tuple) -> None:
        """Add what :func:`adaptive.label_checks.guarded_batch_targets` ``found`` of the labels of training batch
        ``batch`` (its number in the run) of output ``shape`` (None: nothing checked): kept on the device, the first
        batch with a label outside the head (and its smallest and largest scored label) for :meth:`refuse_labels`."""
        if found is None:
            return
        self.label_shapes[batch] = shape
        row = torch.cat([torch.full_like(found[:1], batch), found[1:]])  # (a fill on the device: no read)
        bad = found[0].bool()
        if self.labels is None:
            self.labels = torch.where(bad, row, torch.zeros_like(row))
        else:
            self.labels = torch.where(bad & (self.labels[0] == 0), row, self.labels)

    def add_refused(self, error: ValueError, batch: int) -> None:
        """Keep ``error``, the refusal of the labels of training batch ``batch`` (its number in the run) on the host
        (a shape or type: :func:`adaptive.label_checks.guarded_batch_targets`), for :meth:`refuse_labels` to raise at
        the window's update, where every process refuses together (the first such batch of the window kept)."""
        if self.refused is None:
            self.refused = (error, batch)

    def read(self) -> List[float]:
        """This process's loss, correct, units and counted sums, then (where labels were checked) ``labels``
        (:class:`_Window`), read on the host in one transfer, at the window's update (once: the values are kept). The
        labels come as float64, as the sums: exact up to 2**53, far beyond any head's classes."""
        if self._read is None:
            extra = tuple(self.labels.unbind()) if self.labels is not None else ()
            self._read = _on_host(self.loss, self.correct, self.n, self.counted, *extra)
        return self._read

    def refuse_labels(self, loss_fn, where) -> None:
        """ValueError as :func:`adaptive.label_checks.refuse_mismatched_targets` raises for a batch, where a batch of
        the window held a class label outside the model's head for ``loss_fn``: the first such batch's labels named,
        and ``where(batch)`` (which batch: its number in the run) in a note; or the refusal kept by :meth:`add_refused`,
        where its batch came first. Reads the window (:meth:`read`): call it
        at the update, before the update edits anything. Nothing where every label fits (or none was checked)."""
        read = self.read()
        outside = int(read[4]) if len(read) >= 7 and read[4] else None  # the first batch with a label beyond the head
        if self.refused is not None and (outside is None or self.refused[1] < outside):
            raise self.refused[0]  # (its note names the batch)
        if outside is None:
            return
        batch, low, high = (int(v) for v in read[4:7])
        try:
            refuse_labels_outside(low, high, self.label_shapes[batch], loss_fn)
        except ValueError as e:
            e.add_note(f"adaptive: found in {where(batch)}")
            raise

    def totals(self) -> tuple:
        """``(loss sum, correct, units, counted, examples, processes)``: the window over every
        process's batches (averaged over ``processes``), not this process's shard, read in one
        transfer (:meth:`read`)."""
        procs = 1
        win_loss, win_correct, win_n, win_counted = self.read()[:4]
        win_examples = self.examples
        if is_distributed():  # the window over every process's batches, not this process's shard
            win_loss, win_correct, win_n, win_counted, win_examples = _agreed(
                win_loss, win_correct, win_n, win_counted, win_examples)
            procs = world_size()
        return win_loss, win_correct, win_n, win_counted, win_examples, procs
