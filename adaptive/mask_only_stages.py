"""The stages of a mask-only optimisation, run: :class:`StageRun` drives the controller through the
:class:`~adaptive.mask_only_plan.Plan`'s stages (one per target, or per rung of the "best" ladder),
batch by batch (:mod:`adaptive.mask_only_batches`), keeps a snapshot per stage, scored on the holdout,
and records the run in its checkpoint after every stage."""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import List, Optional

from torch import nn

from . import mask_only_checkpoint as ckpt
from .controller import Controller
from .data.cycle import LoaderCycle, rng_states, set_rng_states
from .distributed import RESUME_FIX, check_masks_agree, is_distributed
from .mask_only_batches import StageBatchesMixin
from .mask_only_best import _better, _criterion, _finite, _refuse_nonfinite_dense
from .mask_only_data import _model_device, _shuffled
from .mask_only_eval import _agreed, evaluate
from .mask_only_learning import _kept_note, mask_learning
from .mask_only_plan import Plan
from .mask_only_result import MaskOnlyResult, Snapshot
from .mask_only_settings import Settings
from .mask_only_start import record_result
from .warn import warn_user


def _stage_state(fp, stage, step, since_best, conn, ctrl, result, last_eval, data) -> dict:
    """What :func:`adaptive.mask_only_checkpoint.save_stage` records after ``stage``."""
    return {"fingerprint": fp, "stage": stage, "step": step, "since_best": since_best,
            "masks": {n: m.cpu() for n, m in conn.masks.items()}, "controller": ctrl.state_dict(),
            "snapshots": {k: {**vars(sn), "masks": {n: m.cpu() for n, m in sn.masks.items()}}
                          for k, sn in result.snapshots.items()},
            "history": list(result.history), "data": data, "cpu_seconds": last_eval["cpu_seconds"],
            "wall_seconds": last_eval["wall_seconds"]}


class _LineSearchLoss:
    """The line search's held-out loss, the controller's ``holdout_loss``: the mean over ``batches``
    (the held-out batches drawn for the update being verified) of ``loss_fn`` on ``model``, agreed by
    every process; ValueError when it is NaN or inf (no line-search decision could be judged on it).
    It holds only these (as the closure it was before the split did), so the controller the result
    keeps holds no loader's pass (a DataLoader's iterator, its worker processes) and no checkpoint state."""

    def __init__(self, model: nn.Module, loss_fn):
        self.model, self.loss_fn = model, loss_fn
        self.batches: List = []
        self.reduction = None  # whether loss_fn takes reduction="sum": checked before the first backward pass

    def __call__(self) -> float:
        loss = _agreed(evaluate(self.model, self.batches, self.loss_fn, accuracy_fn=None,
                                reduction=self.reduction)[0])[0]
        if not math.isfinite(loss):  # every line-search decision would compare NaN: none could be judged
            raise ValueError(f"the held-out loss of the line search is {loss} on {len(self.batches)} held-out batch(es): "
                             "the held-out data (or the model on it) gives non-finite losses; check that data for "
                             "NaN or inf, or pass verify_batches=0 to edit without a line search")
        return loss


@dataclass
class _Stage:
    """The stage being run: its index, target ``label``, ``goal`` (synapses removed at its end; None:
    none, "best" without a ladder), first step, protected live synapses and (target "best" without a
    ladder) the best snapshot so far."""

    index: int
    label: str
    goal: Optional[int]
    start: int
    prot: int
    best: Optional[Snapshot]


class StageRun(StageBatchesMixin):
    """One optimisation of a frozen ``model``, from settings ``s`` (checked) and ``plan`` (made):
    the controller (the ``crawl`` policy, line search on ``verify_batches`` held-out batches), the
    loaders as cycles (``train_loader`` read batch by batch, ``holdout_loader`` whole at every
    evaluation and, shuffled, for the line search), the clocks and the result. :meth:`run` runs it."""

    def __init__(self, model: nn.Module, train_loader, holdout_loader, s: Settings, plan: Plan):
        self.model, self.train_loader, self.holdout_loader, self.s, self.plan = model, train_loader, holdout_loader, s, plan
        self.conn, self.total = plan.conn, plan.total
        self.device = _model_device(model)  # batches follow the model: move it to a GPU first to run there
        self.holdout_iter = LoaderCycle(_shuffled(holdout_loader, s.seed))
        # the line search's loss, the controller's holdout_loss: an object of its own, not a bound method,
        # so the controller (kept by the result) keeps no StageRun, and with it no loader's pass
        self.line_search = _LineSearchLoss(model, s.loss_fn)
        self.verify_set: List = self.line_search.batches  # (the one list: filled in place at every update)
        self.ctrl = ctrl = Controller(
            self.conn, policy="crawl", estimator=s.estimator, update_every=s.window, edit_decay="constant",
            holdout_loss=self.line_search if s.verify_batches > 0 else None, line_search_tries=s.line_search_tries,
            seed=s.seed, margin=s.margin,
        )
        self.policy = ctrl.policy
        if plan.start.absent:
            self.policy.restorable = plan.start.masks  # a zero restored would change nothing: never restored
        self.result = MaskOnlyResult(conn=self.conn, controller=ctrl, start_removed=plan.start.absent)
        # each estimator instance once (one instance often serves both sides)
        self.estimators = list({id(e): e for e in (ctrl.drop_est, ctrl.grow_est) if e is not None}.values())
        self.train_iter = LoaderCycle(train_loader)
        self.ran_shapes = None  # the inputs' shapes per example of the last training batch the model ran on

        saved = plan.saved
        self.t_cpu, self.t_wall = time.process_time(), time.time()
        if saved is not None:  # the clocks go on from where the recorded run stopped
            self.t_cpu -= saved["cpu_seconds"]
            self.t_wall -= saved["wall_seconds"]
            self.result.resumed_seconds = float(saved["wall_seconds"])
        # the targets whose snapshots the checkpoint file holds (updated once each save_stage has returned):
        # what the note of an interrupted run says is kept, and where
        self.recorded: List[str] = list(saved["snapshots"]) if saved is not None else []
        # a climb's rungs the checkpoint records as climbed: its one snapshot ("best") is the best of them
        self.climbed: List[float] = list(plan.ladder[:saved["stage"] + 1]) if plan.climb and saved is not None else []
        self.step = 0
        self.since_best = 0
        self.first_stage = 0
        self.left_out = 0  # windows left out in a row for NaN or inf gradients (see StageBatchesMixin._batch)
        self.unused_verify = None  # the held-out batches drawn for a window that was left out
        self.dense = None  # the dense network's held-out figures (a run not resumed)
        self.bar = None

    @property
    def reduction(self):
        """Whether ``loss_fn`` takes ``reduction="sum"`` (None until the first training batch checks it,
        before any backward pass); held by ``line_search`` (:class:`_LineSearchLoss`), which scores with it too."""
        return self.line_search.reduction

    @reduction.setter
    def reduction(self, value) -> None:
        self.line_search.reduction = value

    def verify_loss(self) -> float:
        """The line search's held-out loss (:class:`_LineSearchLoss`)."""
        return self.line_search()

    def record(self, rec: dict) -> None:
        """Add history record ``rec``, with the CPU and wall seconds since the start (of the first
        session, for a resumed run), and hand it to the callback."""
        rec["cpu_seconds"], rec["wall_seconds"] = time.process_time() - self.t_cpu, time.time() - self.t_wall
        self.result.history.append(rec)
        if self.s.callback is not None:
            self.s.callback(rec)

    def holdout_figures(self) -> tuple:
        """``(loss, accuracy)`` over the whole holdout, agreed by every process (accuracy None where
        there is none: :mod:`adaptive.metrics`)."""
        loss, acc, _ = evaluate(self.model, self.holdout_loader, self.s.loss_fn, accuracy_fn=self.s.accuracy_fn,
                                reduction=self.reduction)
        if acc is None:  # no accuracy (adaptive.metrics): None, never 0
            return _agreed(loss)[0], None
        return tuple(_agreed(loss, acc))

    def full_holdout(self, step: int, stage: int, target: str, figures: Optional[tuple] = None) -> dict:
        """An evaluation record at ``step`` of ``stage`` (for ``target``), of ``figures`` (or of the holdout,
        scored now), added to the history; figures of NaN or inf are warned of."""
        conn = self.conn
        if is_distributed():  # every evaluation (each stage end, every eval_every updates) checks agreement
            check_masks_agree(conn, step)
        loss, acc = figures or self.holdout_figures()
        rec = {"kind": "eval", "step": step, "stage": stage, "target": target, "removed": self.total - conn.num_live(),
               "holdout_loss": loss, "holdout_acc": acc}
        self.record(rec)
        if not _finite(acc, loss):  # the dense network's were finite (checked first): these masks broke it
            warn_user(f"held-out loss {loss}, accuracy {acc} with {rec['removed']:,} synapses removed (step {step}): "
                      "the network gives non-finite held-out figures with these masks, so they are never chosen as "
                      "the best (a fixed target's snapshot keeps them, with these figures)")
        return rec

    def _kept(self) -> str:
        """What the note of an interrupted run says was kept (:func:`adaptive.mask_only_learning._kept_note`)."""
        return _kept_note(self.s.checkpoint, self.recorded, self.climbed if self.plan.climb else None)

    def run(self) -> MaskOnlyResult:
        """Run every stage not yet recorded inside :func:`adaptive.mask_only_learning.mask_learning` (an
        interruption gives the model its original weights back), then load the best rung's masks for a
        climb; warns of the windows left out for NaN or inf."""
        plan, s, conn, result = self.plan, self.s, self.conn, self.result
        with mask_learning(self.model, conn, kept_note=self._kept, absent=plan.start.absent):
            from tqdm.auto import tqdm

            from .cli import show_progress

            self._begin()
            # a fixed target of 0 is the dense network (of a sparse start's absent count, the start): a snapshot of
            # it, scored by the held-out evaluation already made, with no stage (a pass over the train loader that
            # could only give it back); the other targets' stages run as without it. (A rung of the ladder that
            # rounds to 0 removed keeps its stage: the climb goes on.)
            passing = [r for r in plan.stages[self.first_stage:] if plan.climb or r[1] != plan.start.absent]
            self.bar = tqdm(total=plan.steps_per_stage * len(passing), desc="mask-only", unit="batch",
                            disable=not show_progress(s.progress), mininterval=2.0)
            try:  # closed however the run ends (a refusal, an interruption, an error in the user's loader)
                if plan.stages[0][0] == "best" and plan.saved is None:  # the dense network is the first candidate: removing nothing may be best
                    e = self.full_holdout(0, -1, "best", self.dense)
                    result.snapshots["best"] = Snapshot("best", e["removed"], {n: m.clone() for n, m in conn.masks.items()},
                                                        e["holdout_loss"], e["holdout_acc"], 0, e["cpu_seconds"],
                                                        e["wall_seconds"], _criterion(e["holdout_acc"]))
                for stage, (label, removed_goal) in enumerate(plan.stages):
                    if stage < self.first_stage:
                        continue
                    if removed_goal == plan.start.absent and not plan.climb:  # (the first stage, of a run not resumed: `dense` was scored above)
                        self._keep_start(stage, label)
                        continue
                    if self._run_stage(stage, label, removed_goal):
                        break
                if plan.climb:
                    conn.set_masks(result.snapshots["best"].masks)
            finally:
                self.bar.close()
        record_result(conn)  # its masks stay on the model: a later call on these weights names where its zeros came from
        if self.ctrl.nonfinite_windows:
            warn_user(f"{self.ctrl.nonfinite_windows} window(s) of {s.window} training batch(es) were left out for a NaN or "
                          "inf loss or gradient (none of it reached the estimator or the masks); check the data (NaN or "
                          "inf in inputs or targets) and the loss")
        return result

    def _begin(self) -> None:
        """Where the run starts: a sparse network's absent ensembles, or the recorded run's stage
        (:meth:`_resume`); a run not resumed scores the dense network first, refusing held-out figures
        no choice could be made on."""
        plan, conn = self.plan, self.conn
        if plan.saved is None and plan.start.absent:
            conn.set_ensemble_masks(plan.start.masks)  # (inside the frame: an error gives the weights back)
        if plan.saved is not None:
            self._resume(plan.saved)
            if is_distributed():  # (every process read the same checkpoint, its sha256 compared: agreed masks expected)
                check_masks_agree(conn, self.step, f", right after resuming from {self.s.checkpoint}", fix=RESUME_FIX)
        if plan.saved is None:  # the dense network first: held-out figures no choice could be made on stop the run here
            # a fixed target's is an extra pass: it leaves every random state (and the holdout loader's
            # generators) as it found it, so the train loader reads the batches it read without it
            states = rng_states(self.holdout_loader) if plan.stages[0][0] != "best" else None
            self.dense = self.holdout_figures()
            if states is not None:
                set_rng_states(states, self.holdout_loader)
            _refuse_nonfinite_dense(*self.dense)

    def _resume(self, saved: dict) -> None:
        """Continue after the last stage ``saved`` (a checkpoint's state) records: masks, controller,
        history, snapshots, the step and the loaders' positions; a climb that had stopped runs no stage."""
        conn, result = self.conn, self.result
        conn.set_masks(saved["masks"])
        self.ctrl.load_state_dict(saved["controller"])
        result.history[:] = saved["history"]
        result.snapshots.update({k: Snapshot(**v) for k, v in saved["snapshots"].items()})
        self.step, self.since_best, self.first_stage = saved["step"], saved["since_best"], saved["stage"] + 1
        if "data" in saved:  # the loaders stand where the recorded run left them
            self.train_iter.load_state_dict(saved["data"]["train"])
            self.holdout_iter.load_state_dict(saved["data"]["holdout"])
        if self.plan.climb and self.since_best >= self.s.patience:
            self.first_stage = len(self.plan.stages)  # the recorded climb had already stopped
        self.record({"kind": "resume", "step": self.step, "stage": self.first_stage,
                     "removed": self.total - conn.num_live(), "checkpoint": str(self.s.checkpoint)})

    def _keep_start(self, stage: int, label: str) -> None:
        """Stage ``stage``, a fixed target (``label``) of the start itself: its snapshot, scored by the
        dense network's evaluation, with no training."""
        e = self.full_holdout(self.step, stage, label, self.dense)
        self.result.snapshots[label] = Snapshot(label, e["removed"], {n: m.clone() for n, m in self.conn.masks.items()},
                                                e["holdout_loss"], e["holdout_acc"], self.step, e["cpu_seconds"],
                                                e["wall_seconds"])
        self._save(stage, e)

    def _run_stage(self, stage: int, label: str, removed_goal: Optional[int]) -> bool:
        """Run stage ``stage`` (target ``label``, ``removed_goal`` synapses removed at its end; None:
        no goal) for its batches, then keep its snapshot; whether a climb stops here."""
        s, plan, ctrl, policy = self.s, self.plan, self.ctrl, self.policy
        start = self.step
        deadline = start + max(s.window, int(round(s.approach * plan.steps_per_stage)) // s.window * s.window)
        prot = sum(ctrl.protected_live().values())
        if removed_goal is None:
            policy.set_goal(None)
        else:
            live_goal_syn = self.total - removed_goal
            policy.set_goal(live_goal_syn - prot, deadline)
        for est in self.estimators:
            if hasattr(est, "begin_stage"):
                est.begin_stage()  # a new goal: the estimator restarts its moving moments
        # "best" without a ladder (threshold editing): the dense network, scored first, competes too
        best = self.result.snapshots.get("best") if removed_goal is None and not plan.climb else None
        st = _Stage(stage, label, removed_goal, start, prot, best)
        self.start_window()
        while self.step - start < plan.steps_per_stage:
            self._batch(st)
        for p in self.conn.params.values():
            p.grad = None
        return self._end_stage(st, self.full_holdout(self.step, stage, label))

    def _end_stage(self, st: _Stage, e: dict) -> bool:
        """Keep the snapshot of stage ``st``, scored by evaluation ``e`` (the best of the stage for "best"
        without a ladder; on a climb, the rung kept if it beats the best so far) and record the run;
        whether a climb stops here (``patience`` rungs without a better one)."""
        plan, conn, result = self.plan, self.conn, self.result
        label, removed_goal, best = st.label, st.goal, st.best
        snap = Snapshot(label, e["removed"], {n: m.clone() for n, m in conn.masks.items()},
                        e["holdout_loss"], e["holdout_acc"], self.step,
                        selected_by=_criterion(e["holdout_acc"]) if removed_goal is None or plan.climb else None)
        if best is not None and not _better(snap.holdout_acc, snap.holdout_loss, best):
            snap = best  # a tie is no gain: the earlier candidate stays, as on a ladder
            conn.set_masks(snap.masks)
        if removed_goal is not None and snap.removed != removed_goal and abs(snap.removed - removed_goal) >= plan.max_ens:
            raise RuntimeError(f"stage {label!r} ended at {snap.removed} removed, not {removed_goal}: a scheduling bug")
        snap.cpu_seconds, snap.wall_seconds = e["cpu_seconds"], e["wall_seconds"]
        if not plan.climb:
            if removed_goal is not None:
                _warn_same_network(result.snapshots, snap, plan.max_ens)
            result.snapshots[label] = snap
        elif _better(snap.holdout_acc, snap.holdout_loss, result.snapshots["best"]):
            result.snapshots["best"], self.since_best = snap, 0
        else:
            self.since_best += 1
        self._save(st.index, e)
        return plan.climb and self.since_best >= self.s.patience

    def _save(self, stage: int, e: dict) -> None:
        """Record the run after ``stage`` (its last evaluation ``e``) in the checkpoint, if there is one,
        and note what the file now holds."""
        if self.s.checkpoint is None:
            return
        ckpt.save_stage(self.s.checkpoint, _stage_state(
            self.plan.fingerprint, stage, self.step, self.since_best, self.conn, self.ctrl, self.result, e,
            {"train": self.train_iter.state_dict(), "holdout": self.holdout_iter.state_dict()}))
        self.recorded[:] = list(self.result.snapshots)
        # (a fixed target's run climbs no ladder: nothing climbed, as before)
        self.climbed[:] = list(self.plan.ladder[:stage + 1]) if self.plan.climb else []


def _warn_same_network(snapshots: dict, snap: Snapshot, largest: int) -> None:
    """Warn where fixed target ``snap`` ended on the very network an earlier fixed target's snapshot holds
    (one network under two names): with ensembles of several sizes a stage ends within half an ensemble of its
    goal, not always at the nearest count, so two targets further apart than the refusal's bound
    (:func:`adaptive.mask_only_targets.refuse_indistinct`) but under ``largest`` (the largest ensemble) apart
    may land together (55 and 66 with neurons of 20 and 16 both ended at 60)."""
    for other in snapshots.values():
        if other.label == "best" or other.removed != snap.removed:
            continue
        if all(bool((other.masks[n] == m).all()) for n, m in snap.masks.items()):
            warn_user(f"targets {other.label} and {snap.label} both ended at {snap.removed:,} synapses removed, on one "
                      f"network: a stage removes whole ensembles and ends within half an ensemble of its target, not "
                      f"always at the nearest count, so with ensembles of several sizes (up to {largest:,} synapses) "
                      f"two targets under {largest:,} apart may end together. Their snapshots are that one network "
                      f"under two names; for two networks give targets at least {largest:,} synapses apart, or leave "
                      f"one of them out")
            return
