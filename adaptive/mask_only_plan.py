"""The plan of a mask-only optimisation, made before any training batch is read: the connectome over
the frozen weights, where it starts (:mod:`adaptive.mask_only_start`), its stages (one per target, or
per rung of the "best" ladder), the batches per stage, and the stage checkpoint it resumes from
(:mod:`adaptive.mask_only_checkpoint`), a foreign one refused before anything changes."""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Tuple

from torch import nn

from . import mask_only_checkpoint as ckpt
from .connectome import Connectome
from .distributed import rank, world_size
from .mask_only_data import _data_content, _data_identity
from .mask_only_settings import Settings, _precision, stage_batches
from .mask_only_start import Start, check_start_agrees, sparse_start, start_note
from .mask_only_targets import ensemble_step, stages_of
from .utility import get_estimator
from .warn import warn_user


@dataclass
class Plan:
    """What an optimisation does, made by :func:`plan_run`.

    - ``conn``: the mask_only connectome of the model; ``total``: its prunable synapses;
    - ``start``: where it starts (a sparse network's synapses absent from the start);
    - ``stages``: ``(label, synapses to remove)`` per stage, fewest first (None: "best" without a ladder);
    - ``climb``: whether target "best" climbs ``ladder`` (the rungs above the start);
    - ``steps_per_stage``: the training batches of each stage;
    - ``fingerprint``: the run's identity in its checkpoint, ``saved``: the state it resumes from
      (both None without a checkpoint; ``saved`` None too when the file holds no stage yet);
    - ``max_ens``: the most synapses one ensemble holds (how far a stage may end from its goal)."""

    conn: Connectome
    total: int
    start: Start
    stages: List[Tuple[str, Optional[int]]]
    climb: bool
    ladder: List[float]
    steps_per_stage: int
    fingerprint: Optional[dict]
    saved: Optional[dict]
    max_ens: int


def plan_run(model: nn.Module, s: Settings, train_loader, holdout_loader, checked: Optional[ckpt.Checked]) -> Plan:
    """The :class:`Plan` of optimising ``model`` with settings ``s``: builds the connectome (weights
    untouched), refuses the targets it cannot meet, warns (first process) of a sparse start, and reads
    ``s.checkpoint`` (``checked``: the state :func:`adaptive.mask_only_checkpoint.check_readable` read
    from it), refusing another run's file and a path no stage could be recorded in. ``train_loader`` and
    ``holdout_loader`` are not read: their sizes go into the fingerprint."""
    conn = Connectome(model, ensemble=s.ensemble, include=s.include, exclude=s.exclude, mode="mask_only")
    total = conn.num_synapses()
    at_start = sparse_start(conn)  # a sparse network's zeros: absent from the start, never restored
    check_start_agrees(at_start, model)  # (several processes: one count for every process's refusals, one state)
    step = ensemble_step(conn)  # (a positive target must remove one ensemble: a fraction of 1e-9 is refused)
    resolved, climb, ladder = stages_of(s.targets, total, at_start, s.ladder, step)
    if at_start.sparse and rank() == 0:  # once, not once per process
        warn_user(start_note(at_start, conn.ensemble))
    steps_per_stage = stage_batches(s.passes, s.n_train, s.window)
    fp = saved = None
    if s.checkpoint is not None:
        fp = ckpt.fingerprint(targets=[list(r) for r in resolved], synapses=total, steps_per_stage=steps_per_stage,
                              ensemble=s.ensemble, include=s.include, exclude=s.exclude,
                              estimator=get_estimator(s.estimator) if isinstance(s.estimator, str) else s.estimator,
                              window=s.window, edit_fraction=s.edit_fraction, approach=s.approach, margin=s.margin,
                              ladder=ladder if climb else [], patience=s.patience if climb else None,
                              verify_batches=s.verify_batches, line_search_tries=s.line_search_tries, seed=s.seed,
                              eval_every=s.eval_every,  # when the held-out evaluations (and "best"'s choice) fall
                              loss_fn=ckpt.callable_identity(s.loss_fn),
                              accuracy_fn=ckpt.callable_identity(s.accuracy_fn),
                              weights=ckpt.weights_digest(conn.original), precision=_precision(model),
                              frozen_tensors=ckpt.frozen_tensors_digest(model, conn.params.values()),
                              train_data=_data_identity(train_loader), holdout_data=_data_identity(holdout_loader),
                              train_content=_data_content(train_loader), holdout_content=_data_content(holdout_loader),
                              # each process's share of the train batches (its loader's length) follows from it
                              processes=world_size())
        # a foreign file fails here, before anything changes
        saved = ckpt.load_stage(s.checkpoint, fp, conn.original, checked=checked)
        finished = saved is not None and (saved["stage"] + 1 >= len(resolved)
                                          or (climb and saved["since_best"] >= s.patience))
        if not finished:  # a path no stage could be recorded in (a finished run's file is only read)
            ckpt.check_writable(s.checkpoint)
    return Plan(conn, total, at_start, resolved, climb, ladder, steps_per_stage, fp, saved, step.largest)
