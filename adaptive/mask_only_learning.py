"""The frame of a mask-learning loop over a frozen model (:func:`mask_learning`): evaluation mode,
gradients only for the connectome's weights, and on an interruption the original weights given back
(:func:`restore_original`) with a note of what a checkpoint kept (:func:`_kept_note`)."""
from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Optional, Sequence

import torch
from torch import nn

from .connectome import Connectome
from .modes import modes_kept


def _kept_note(checkpoint, recorded: Sequence[str], climbed: Optional[Sequence[float]] = None) -> str:
    """What an interrupted :func:`~adaptive.mask_only.optimize_connectome` kept: the snapshots its ``checkpoint`` file
    holds (``recorded``: their targets) and how to continue from them, or that none was kept.
    ``climbed``: for target "best" climbing the ladder, the rungs the checkpoint records (its one
    snapshot is the best of them so far, not a finished target's)."""
    if checkpoint is None or not recorded:
        return "no snapshot was kept"
    if climbed is not None:
        return (f"the best snapshot of the ladder's rung(s) climbed before it (removing {', '.join(f'{f:g}' for f in climbed)}) "
                f"is kept in the checkpoint {checkpoint}: run it again with that checkpoint (a recipe's --resume) to "
                "continue the climb from there")
    return (f"the snapshot(s) of the target(s) finished before it ({', '.join(map(str, recorded))}) are kept in the "
            f"checkpoint {checkpoint}: run it again with that checkpoint (a recipe's --resume) to continue from them")


def refuse_grads_not_given_back(model: nn.Module) -> None:
    """Refuse a ``model`` holding a ``.grad`` PyTorch would not take back (its parameter's dtype, device
    or shape changed after the gradient was set): :func:`mask_learning` could not give it back on exit.
    Setting a gradient is where PyTorch checks it against its parameter; nothing is changed."""
    for name, p in model.named_parameters():
        try:
            p.grad = p.grad
        except RuntimeError as e:
            raise ValueError(f"{name}'s .grad no longer fits the parameter (its dtype, device or shape changed after "
                             f"the gradient was set: {e}), so mask learning could not give it back; set {name}.grad "
                             "to None, or to a gradient like the parameter, first") from None


@contextmanager
def mask_learning(model: nn.Module, conn: Connectome, kept_note: Optional[Callable[[], str]] = None,
                  absent: int = 0):
    """The frame of every mask-learning loop over a frozen ``model`` (this module's and the
    edge-popup baseline's): evaluation mode (normalisation statistics frozen), gradients only for
    the connectome's weights. An exception inside gives the model its original weights back
    (:func:`restore_original`); every exit, a refusal included, gives back each parameter's
    ``requires_grad`` and ``.grad`` as the caller had them (None stays None; a gradient comes back
    as the same tensor, untouched: the loop's gradients are its own, so a call in the middle of
    training loses no accumulated gradient) and each module's own mode (a submodule the caller put
    in eval mode stays so). A ``.grad`` PyTorch would not take back (its parameter's dtype, device or
    shape changed since) is refused on entry, before anything changed. ``kept_note``: what the restore's note
    says was kept; ``absent``: the synapses a sparse start holds absent (weights exactly 0.0), which
    it names (:func:`restore_original`)."""
    kept = [(p, p.requires_grad, p.grad) for p in model.parameters()]
    refuse_grads_not_given_back(model)  # what the exit could not give back is refused before anything changed
    with modes_kept(model, train=False):
        for p in model.parameters():
            p.grad = None  # set aside, so that no backward inside accumulates into the caller's
            p.requires_grad_(False)
        for p in conn.params.values():
            p.requires_grad_(True)
        try:
            yield
        except BaseException as exc:
            restore_original(conn, exc, kept_note, absent)
            raise
        finally:
            for p, requires_grad, grad in kept:
                p.requires_grad_(requires_grad)
                p.grad = grad


def restore_original(conn: Connectome, exc: Optional[BaseException] = None,
                     kept: Optional[Callable[[], str]] = None, absent: int = 0) -> None:
    """Give a mask_only connectome's model all its original weights back (every mask 1 again: the
    model as it was given): what an interrupted optimisation (an error, Ctrl-C) does before the
    exception propagates, so that the caller's model is never left half-pruned. ``exc`` gets a note
    saying so, and what was kept: ``kept()`` (the snapshots a checkpoint holds), else that no
    snapshot was kept. ``absent``: the synapses a sparse start held absent (weights exactly 0.0),
    which the note says stay so; 0: every synapse present again."""
    conn.set_masks({n: torch.ones_like(m) for n, m in conn.masks.items()})
    if exc is not None:
        back = (f"(as given: its {absent:,} synapses of weights exactly 0.0 still 0.0)" if absent else
                "(every synapse present)")
        exc.add_note(f"adaptive: the mask-only optimisation was interrupted; the model's original weights {back} were "
                     f"restored, and {kept() if kept else 'no snapshot was kept'}")
