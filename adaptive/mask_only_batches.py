"""The training batches of a mask-only stage: the forward and backward pass of each batch, the
controller's update at the end of each window (its edit limit decaying by a cosine over the stage,
the line search's held-out batches drawn), windows of NaN or inf left out, and the update's record.
A mixin of :class:`adaptive.mask_only_stages.StageRun`, which holds the state it reads."""
from __future__ import annotations

import math

import torch

from .distributed import agreed_call, is_distributed
from .mask_only_best import _better, _criterion
from .mask_only_data import _to_device, example_shapes, input_shapes, refuse_repeated_verify_batches
from .label_checks import guarded_batch_targets
from .mask_only_eval import _logits
from .mask_only_result import Snapshot
from .mask_only_window import _Window
from .metrics import batch_sums, call_model, takes_reduction

# what a refusal of the first training batch says of the processes whose own first batch passed
_OWN_BATCHES = ("each process checked only its own first training batch (its shard of the data), so the same problem "
                "may lie in theirs later: fix it as said, in all the data")
# what a refusal of the labels of a window says of the processes whose own batches of the window passed
_OWN_WINDOW = ("each process checked only the labels of its own training batches (its shard of the data), so the same "
               "problem may lie in theirs later: fix it as said, in all the data")


class StageBatchesMixin:
    """The batch loop of :class:`adaptive.mask_only_stages.StageRun` (``_batch`` per training batch)."""

    def start_window(self) -> None:
        """Empty the training window's sums (a new stage, an update made, a window left out)."""
        self.window = _Window()

    def _batch(self, st) -> None:
        """One training batch of stage ``st``: forward, backward and the controller's step, then, at an
        update, its record (and every ``eval_every`` updates an evaluation of the whole holdout)."""
        s, ctrl, conn, model = self.s, self.ctrl, self.conn, self.model
        x, y = _to_device(next(self.train_iter), self.device)
        for p in conn.params.values():
            p.grad = None
        try:
            out = _logits(call_model(model, x, "mask-only optimisation"), model)
        except RuntimeError as e:  # (a bare one from deep inside: 'mat1 and mat2 shapes cannot be multiplied')
            if not isinstance(e, torch.OutOfMemoryError):
                e.add_note(self._failed_note(x))
            raise
        self.ran_shapes = example_shapes(x)
        refused = None  # a later batch's labels refused on the host (several processes: at the window's update)
        if self.reduction is None:  # the loss checked on this batch before any backward pass
            with torch.no_grad():  # (each process's own first batch: a refusal on one stops every process)
                self.reduction = agreed_call(lambda: takes_reduction(s.loss_fn, out.detach(), y), passed_why=_OWN_BATCHES)
        else:  # every later batch's labels, before the loss, on the device (the first's were checked just above):
            # a label outside the head is made the ignored one here and refused at the window's update, before it edits
            try:
                y, found = guarded_batch_targets(out, y, s.loss_fn,
                                                 f"training batch {self.step + 1} of the run (stage {st.label})")
            except ValueError as e:  # labels of the wrong shape or type: no loss can be taken of them
                if not is_distributed():
                    raise  # (one process: refused at once)
                # several: refused at the window's update by every process together, as a label beyond the head (a
                # refusal here alone left the others in their next collective: "Connection closed by peer")
                refused, found = e, None
                self.window.add_refused(e, self.step + 1)
            self.window.add_labels(found, self.step + 1, tuple(out.shape))
        # a refused batch's backward pass still runs (a DDP model's collectives), of a loss of no gradient
        loss = s.loss_fn(out, y) if refused is None else out.sum() * 0.0
        loss.backward()
        ctrl.observe()
        if ctrl.batch_size is None:
            ctrl.batch_size = int(y.shape[0])
        if refused is None:  # (a refused batch's targets cannot be scored; the window is refused at its update)
            # positions for classification shapes, else examples (as evaluate); the sums stay on the
            # device (as float64, the host's Python floats) and are read at the window's update
            units, acc = batch_sums(s.accuracy_fn, out.detach(), y)
            self.window.add(loss, units, acc, y)
        self.step += 1
        if ctrl.due(ctrl.step_count + 1):
            self._refuse_window_labels(st)
            self._before_update(st)
        # the connectome the window's batches ran through (read where the update comes)
        window_removed = self.total - conn.num_live() if ctrl.due(ctrl.step_count + 1) else None
        skipped = ctrl.nonfinite_windows
        ev = ctrl.step()
        self.bar.update(1)
        if ctrl.nonfinite_windows > skipped:
            self._leave_out_window()
            return
        if ev is None:
            return
        self.left_out = 0
        self._record_update(st, ev, window_removed)
        n_upd = (self.step - st.start) // s.window
        if s.eval_every and n_upd % s.eval_every == 0 and self.step - st.start < self.plan.steps_per_stage:
            e = self.full_holdout(self.step, st.index, st.label)
            if st.goal is None and _better(e["holdout_acc"], e["holdout_loss"], st.best):
                st.best = Snapshot(st.label, e["removed"], {n: m.clone() for n, m in conn.masks.items()},
                                   e["holdout_loss"], e["holdout_acc"], self.step,
                                   selected_by=_criterion(e["holdout_acc"]))

    def _failed_note(self, x) -> str:
        """The note on an error the model raised on a training batch of inputs ``x``: which batch and its inputs'
        shape; the shape named as the likely cause only where the model has run on no training batch of inputs of
        this shape per example (the batch axis aside) before: otherwise the error is not about their shape."""
        where = f"adaptive: the model failed on training batch {self.step + 1} of the run (inputs {input_shapes(x)})"
        if self.ran_shapes is not None and self.ran_shapes == example_shapes(x):
            return (f"{where}, after running on earlier training batches of inputs of this shape (per example), so the "
                    "error above is not about their shape: look in this batch's data and the model's code it reaches")
        return (f"{where}, having run on the held-out batches: where these inputs are of another shape (image size, "
                "channels, features) than the holdout loader's, give the train loader inputs of the shape the model takes")

    def _refuse_window_labels(self, st) -> None:
        """At the update that ends a window of stage ``st``, before it edits anything: the window's sums read (in the one
        transfer the update's record uses) and a class label outside the model's head in any of its batches refused
        (or, under several processes, labels of the wrong shape or type: :meth:`_Window.add_refused`), as a check of
        that batch would (:meth:`adaptive.mask_only_window._Window.refuse_labels`: the first such batch
        named), on every process together. Its batches' loss ignored those labels (no device-side assert)."""
        window, loss_fn = self.window, self.s.loss_fn
        agreed_call(lambda: window.refuse_labels(loss_fn, lambda b: f"training batch {b} of the run (stage {st.label})"),
                    passed_why=_OWN_WINDOW)

    def _before_update(self, st) -> None:
        """Before the update that ends a window of stage ``st``: the edit limit (and an estimator's step)
        decayed by a cosine over the stage, the stage's last update settling exactly on its goal, and
        the held-out batches its line search verifies on drawn (those of a window left out, if any)."""
        s, plan, policy = self.s, self.plan, self.policy
        t = (self.step - st.start) / plan.steps_per_stage  # cosine decay of the edit limit over the stage
        decay = 0.5 * (1 + math.cos(math.pi * t))
        policy.edit_fraction = s.edit_fraction * decay
        for est in self.estimators:
            if hasattr(est, "step_scale"):
                est.step_scale = decay  # estimators with a step follow the same decay
        if self.step - st.start == plan.steps_per_stage and st.goal is not None:
            policy.edit_fraction = 0.0  # the stage's last update settles exactly on the goal
            policy.set_goal(self.total - st.goal - st.prot, self.step)
        self.verify_set[:] = self.unused_verify or self._draw_verify(s.verify_batches)
        self.unused_verify = None

    def _draw_verify(self, n: int) -> list:
        """The next ``n`` held-out batches of the cycle, on the model's device. A holdout of no length
        (checked up front where it has one) is refused here once a pass of it has proved shorter than
        ``n`` (every process reads it whole, so all refuse together), before more is drawn."""
        out, cycle = [], self.holdout_iter
        for _ in range(n):
            before = cycle.offset
            batch = next(cycle)
            if cycle.offset == 1 and before > 0:  # a new pass began: the last one held ``before`` batches
                refuse_repeated_verify_batches(n, before)
            out.append(_to_device(batch, self.device))
        return out

    def _leave_out_window(self) -> None:
        """A NaN or inf loss or gradient in the window (on any process): the controller left it out,
        and so does the stage's schedule, which draws another window in its place; a whole pass of
        such windows in a row raises ValueError."""
        window = self.s.window
        self.step -= window
        self.ctrl.step_count -= window
        self.bar.total += window
        self.start_window()
        self.unused_verify = list(self.verify_set)  # the window in its place checks its steps on these
        self.left_out += 1
        if self.left_out * window >= self.s.n_train:
            raise ValueError(
                f"every training batch of a whole pass ({self.left_out * window} in a row) had a NaN or inf "
                "loss or gradient, so the connectome cannot be scored: check the data (NaN or inf in "
                "inputs or targets), the model's output on it and the loss")

    def _record_update(self, st, ev: dict, window_removed) -> None:
        """The history record of the update ``ev`` that ended a window of stage ``st`` (the window's
        loss and accuracy over every process's batches, measured with ``window_removed`` synapses
        removed); the window starts afresh."""
        win_loss, win_correct, win_n, win_counted, win_examples, procs = self.window.totals()
        rec = {"kind": "update", "step": self.step, "stage": st.index, "target": st.label,
               "removed": self.total - self.conn.num_live(), "pruned": ev["pruned"], "restored": ev["grown"],
               "train_removed": window_removed, "train_examples": int(round(win_examples * procs)),
               "train_loss": win_loss / win_n if win_n else None, "train_acc": win_correct / win_counted if win_counted else None,
               "verify_loss": ev.get("holdout_loss"), "est_loss_change": ev.get("est_loss_change"),
               "est_score_change": ev.get("est_score_change"),
               "actual_loss_change": ev.get("actual_loss_change"),
               "line_search_fraction": ev.get("line_search_fraction")}
        self.record(rec)
        self.start_window()
        self.bar.set_postfix(removed=rec["removed"], **({} if rec["train_loss"] is None else {"loss": f"{rec['train_loss']:.3f}"}))
