"""Run as ``python two_process_edge_popup.py OUT RANK``, two at once (rank 0 and 1; started by
tests/test_mask_only.py through tests/_ports.run_two_ranks): a gloo process group on the CPU with a
short timeout, then edge_popup on a DistributedDataParallel model (whose forward and backward are
collectives) once per case, each with loaders that only process 1 gets wrong (CASES): an empty
holdout, train shards of different lengths, a batch of NaN on process 1 only, a label beyond the head
in process 1's first training batch, and in its third (a later one: checked on the device), labels of the wrong
shape in its third, a holdout of other data (a sharded one), a held-out label beyond the head in its third
held-out batch, a third batch whose every label is the ignored one (-100), a first batch whose loss is finite but
whose gradient is NaN (the model's marked backward), a third batch of every label ignored and a NaN gradient under
a loss that sums (finite over no label); then one where both are right. Writes ``rank{N}.json`` into OUT: each case's error (type and message) or outcome (the
masks' live counts). A process left waiting in a collective fails there after the group's timeout
(10 seconds) and records that instead."""
import functools
import sys
import warnings

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from _rank_record import record_cases


class _NanGrad(torch.autograd.Function):
    """Identity forward; a NaN backward where ``bad`` (the batch held the marker 7.0): a finite loss, a NaN gradient."""

    @staticmethod
    def forward(ctx, h, bad):
        ctx.bad = bad
        return h.view_as(h)

    @staticmethod
    def backward(ctx, g):
        return (g * float("nan") if ctx.bad else g), None


class _Net(nn.Module):
    """Linear(4, 8), ReLU, Linear(8, 3), the first layer's gradient NaN on a batch holding the marker 7.0."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))

    def forward(self, x):
        bad = bool((x == 7.0).any())
        return self.net[2](self.net[1](_NanGrad.apply(self.net[0](x), bad)))


def _loader(n: int, rank: int = 0, nan: bool = False, label_5: bool = False, late_label_5: bool = False,
            seed: int = None, late_unlabelled: bool = False, nan_grad: bool = False, late_nan_grad: bool = False):
    g = torch.Generator().manual_seed(rank if seed is None else seed)
    x = torch.randn(n, 4, generator=g)
    if nan:
        x[:8] = float("nan")  # the first batch
    if nan_grad:
        x[0, 0] = 7.0  # the first batch: a finite loss, a NaN gradient (_Net)
    if late_nan_grad:
        x[16, 0] = 7.0  # the third batch: a NaN gradient (_Net)
    y = torch.randint(0, 3, (n,), generator=g)
    if label_5:
        y[3] = 5  # the first batch: a label beyond the 3-class head
    if late_label_5:
        y[20] = 5  # the third batch
    if late_unlabelled:
        y[16:24] = -100  # the third batch: every label the ignored one
    return DataLoader(TensorDataset(x, y), batch_size=8)


def _late_wide_labels(rank: int) -> list:
    """Four batches (a list: any loader with a length) whose third has labels of shape (8, 1)."""
    batches = list(_loader(32, rank))
    x, y = batches[2]
    batches[2] = (x, y[:, None])
    return batches


# case: (process 1's train loader, process 1's holdout); process 0 gets _loader(32) for both
CASES = {
    "empty_holdout": lambda: (_loader(32, 1), _loader(0)),
    "uneven": lambda: (_loader(16, 1), _loader(32)),
    "nan_on_one": lambda: (_loader(32, 1, nan=True), _loader(32)),
    "label_on_one": lambda: (_loader(32, 1, label_5=True), _loader(32)),
    "late_label_on_one": lambda: (_loader(32, 1, late_label_5=True), _loader(32)),
    "late_shape_on_one": lambda: (_late_wide_labels(1), _loader(32)),
    "other_holdout_on_one": lambda: (_loader(32, 1), _loader(32, seed=7)),
    "late_holdout_label_on_one": lambda: (_loader(32, 1), _loader(32, late_label_5=True)),
    "unlabelled_on_one": lambda: (_loader(32, 1, late_unlabelled=True), _loader(32)),
    "nan_grad_on_one": lambda: (_loader(32, 1, nan_grad=True), _loader(32)),
    # a third batch of process 1 with every label ignored and a NaN gradient, under a loss that sums (finite, 0,
    # over no label): left out for its gradient alone, not also counted as unlabelled (a count of -1 NaN losses)
    "summed_unlabelled_nan_grad_on_one": lambda: (_loader(32, 1, late_unlabelled=True, late_nan_grad=True),
                                                  _loader(32), functools.partial(F.cross_entropy, reduction="sum")),
    "even": lambda: (_loader(32, 1), _loader(32)),
}


def run(rank: int, folder: str) -> None:
    """Process ``rank`` of 2: every case in turn; writes ``rank<r>.json`` with what each raised or kept
    (after an error other than a ValueError, a failed collective, the group is broken: the rest is left)."""

    def attempt(loaders):
        from adaptive.baselines import edge_popup

        model = nn.parallel.DistributedDataParallel(_Net(), find_unused_parameters=True)  # (the frozen biases: no gradient)
        case = loaders()  # (train, holdout) of process 1, and the loss of both where the case names one
        train, holdout = case[:2] if rank == 1 else (_loader(32), _loader(32))
        loss_fn = case[2] if len(case) > 2 else F.cross_entropy
        with warnings.catch_warnings(record=True) as said:
            warnings.simplefilter("always")
            _, snaps = edge_popup(model, train, holdout, [0.5], passes=1.0, loss_fn=loss_fn, progress=False)
        return {"live": [int(m.sum()) for m in snaps["0.5"]["masks"].values()], "holdout_loss": snaps["0.5"]["holdout_loss"],
                "left_out": [str(w.message) for w in said if "left out" in str(w.message)],
                "holdout_acc": snaps["0.5"]["holdout_acc"],
                "masks": [m.flatten().int().tolist() for m in snaps["0.5"]["masks"].values()]}

    record_cases(rank, folder, CASES, attempt, timeout_s=10, message_chars=500, stop_unless="ValueError")


if __name__ == "__main__":
    run(int(sys.argv[2]), sys.argv[1])
