"""Train/eval modes kept per module across a temporary switch."""
from __future__ import annotations

from contextlib import contextmanager

from torch import nn


@contextmanager
def modes_kept(model: nn.Module, train: bool):
    """Run with ``model.train(train)``, then give each module its own mode back: a submodule the
    caller left in another mode than the model (a frozen BatchNorm in eval mode under a training
    model) is not swept to the model's, as a plain ``model.train(was_training)`` would."""
    modes = {m: m.training for m in model.modules()}
    model.train(train)
    try:
        yield model
    finally:
        for m, training in modes.items():
            m.training = training
