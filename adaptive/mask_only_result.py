"""What :func:`adaptive.mask_only.optimize_connectome` returns: a :class:`MaskOnlyResult` holding one
:class:`Snapshot` of the masks per target, the history and the connectome and controller that ran."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Union

import torch

from .connectome import Connectome
from .controller import Controller
from .mask_only_targets import _label, _plain_number
from .metrics import fmt_unsaturated


@dataclass
class Snapshot:
    """The masks at one requested target, with the held-out numbers that chose them.

    - ``label``: the target as given ("0.2", "50000", "best"), its key in ``MaskOnlyResult.snapshots``;
    - ``removed``: synapses removed in these masks; ``masks``: one bool tensor per layer;
    - ``holdout_loss``, ``holdout_acc``: measured on the held-out part of the train split (never the
      test split); ``holdout_acc`` is None where accuracy cannot be counted (never 0);
    - ``step``: the optimisation step at which the snapshot was taken;
    - ``cpu_seconds``, ``wall_seconds``: process CPU time and wall time from the start of the
      optimisation to this snapshot;
    - ``selected_by``: for target "best", the criterion that chose it ("holdout_acc" or
      "holdout_loss"); None for a fixed target."""

    label: str
    removed: int
    masks: Dict[str, torch.Tensor]
    holdout_loss: float
    holdout_acc: Optional[float]  # None: no accuracy (see adaptive.metrics), never 0
    step: int
    cpu_seconds: float = 0.0  # process CPU time from the start of the optimisation to this snapshot
    wall_seconds: float = 0.0
    selected_by: Optional[str] = None  # target "best": "holdout_acc" or "holdout_loss", the criterion that chose it

    def __repr__(self) -> str:  # the masks as a count: printed whole they ran to megabytes
        # (neither figure shown as a bound it is not: an accuracy of 0.99999 is not "1.0000", a loss of 1e-5 not "0.0000")
        acc = "None" if self.holdout_acc is None else fmt_unsaturated(self.holdout_acc, ".4f", (0.0, 1.0))
        return (f"Snapshot(label={self.label!r}, removed={self.removed}, masks=<{len(self.masks)} layers>, "
                f"holdout_loss={fmt_unsaturated(self.holdout_loss, '.4f', (0.0,))}, holdout_acc={acc}, step={self.step}, "
                f"selected_by={self.selected_by!r})")


@dataclass
class MaskOnlyResult:
    """What :func:`~adaptive.mask_only.optimize_connectome` returns. ``history`` has one dict per update (training
    window loss/accuracy over every process's batches, measured with ``train_removed`` synapses
    removed, i.e. before the update; ``removed`` is the count after it; verification loss, edits)
    and per evaluation (held-out loss/accuracy); each names its ``target`` (the label);
    ``events`` are the controller's events; ``snapshots`` are keyed by target label. ``conn`` and
    ``controller`` are the connectome and the controller that ran (:meth:`use` loads a
    snapshot's masks into ``conn``); ``resumed_seconds`` is the wall time the
    earlier sessions of a resumed optimisation recorded in its checkpoint (0: none);
    ``start_removed`` counts the synapses absent from the start (a sparse network's ensembles whose
    weights are all exactly 0.0, :mod:`adaptive.mask_only_start`; 0 for a dense network)."""

    conn: Connectome
    controller: Controller
    snapshots: Dict[str, Snapshot] = field(default_factory=dict)
    history: List[dict] = field(default_factory=list)
    # wall seconds the earlier sessions of a resumed optimisation recorded in its checkpoint (0: none)
    resumed_seconds: float = 0.0
    # synapses absent from the start (a sparse network's weights of exactly 0.0; 0: a dense network)
    start_removed: int = 0

    def __repr__(self) -> str:  # a summary: the masks, history and connectome printed whole ran to megabytes
        snaps = ", ".join(repr(s) for s in self.snapshots.values())
        return (f"MaskOnlyResult(snapshots=[{snaps}], history=<{len(self.history)} rows>, "
                f"start_removed={self.start_removed}, conn=<{self.conn.num_synapses()} synapses>)")

    @property
    def events(self) -> List[dict]:
        return self.controller.events

    def use(self, label: Union[str, float, int]) -> Snapshot:
        """Load the masks of snapshot ``label`` into the connectome (weights restored bit-exact);
        ``label`` is a key of ``snapshots`` or the target as given (0.5 for "0.5")."""
        key = label = _plain_number(label)
        if key not in self.snapshots and isinstance(label, (int, float)) and not isinstance(label, bool):
            key = next((k for k in (_label(label), repr(float(label))) if k in self.snapshots), label)
        if key not in self.snapshots:
            raise KeyError(f"no snapshot {label!r}: have {sorted(self.snapshots)}; pass one of those labels "
                           "(or the target as given to optimize_connectome)")
        snap = self.snapshots[key]
        self.conn.set_masks(snap.masks)
        return snap
