"""How target "best" chooses among held-out evaluations: by accuracy where there is one, else by
loss; figures of NaN or inf are never chosen (and the dense network's are refused before any work)."""
from __future__ import annotations

import math
from typing import Optional

from .mask_only_result import Snapshot


def _criterion(acc: Optional[float]) -> str:
    """What target "best" chooses by: held-out accuracy where there is one, else held-out loss."""
    return "holdout_loss" if acc is None else "holdout_acc"


def _finite(acc: Optional[float], loss: float) -> bool:
    """Whether held-out figures are ones a choice can be made on: no NaN or inf (NaN compares false)."""
    return math.isfinite(loss) and (acc is None or math.isfinite(acc))


def _refuse_nonfinite_dense(loss: float, acc: Optional[float]) -> None:
    """The dense network's held-out figures, checked before any synapse is removed."""
    if not _finite(acc, loss):
        raise ValueError(f"the dense network's held-out loss is {loss} (accuracy {acc}) before any synapse was removed, "
                         "so no held-out choice could be made (NaN compares false): check the held-out data for NaN or "
                         "inf, and the model on it (weights that hold NaN or inf, an output that overflows) and the "
                         "loss function; nothing was changed")


def _better(acc: Optional[float], loss: float, than: Optional[Snapshot]) -> bool:
    """Whether a held-out evaluation (``acc``, ``loss``) beats snapshot ``than`` for target "best":
    by a strictly higher accuracy where there is one (an accuracy tie is no gain: classification
    chooses exactly as it always has), by a strictly lower loss where there is none (regression,
    probability targets; see :mod:`adaptive.metrics`). Non-finite figures never beat anything, and
    finite ones beat no snapshot (None) and a non-finite one."""
    if not _finite(acc, loss):
        return False
    if than is None or not _finite(than.holdout_acc, than.holdout_loss):
        return True
    if acc is not None and than.holdout_acc is not None:
        return acc > than.holdout_acc
    return loss < than.holdout_loss
