"""Edge-popup (Ramanujan et al., 2020) on frozen pretrained weights: the reference for learned masks.

Every synapse gets a real-valued score, initialised from |w| divided by the layer's RMS weight
(so that one learning rate suits every layer); the forward pass uses the weights whose scores are
in the global top-k (of the signed scores, over all layers together: the paper's code keeps the top k%
of |score| in each layer; a global cut lets the layers' densities move, as ours do); the gradient reaches the scores straight through the top-k (dL/ds = dL/dw_eff
* w), and Adam updates them, its learning rate on a cosine schedule. Masks are imposed through a
``mask_only`` :class:`~adaptive.Connectome`, so the weights stay bit-exact.

Several targets are visited in increasing order of removal, one stage of ``passes`` passes each,
the scores carried from stage to stage (the same staging as :func:`adaptive.optimize_connectome`,
so both see the same data and the same number of passes, at its default window of one batch: a window
of several rounds each of its stages up to whole windows).
"""
from __future__ import annotations

import math
import numbers
import time
from typing import Callable, Dict, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..connectome import Connectome
from ..counts import whole_number
from ..data.cycle import LoaderCycle
from ..distributed import agreed_call, all_reduce_mean_, is_distributed
from ..global_rng import seeded_global_rng
from ..label_checks import _kind, guarded_batch_targets, refuse_labels_outside, refuse_mismatched_targets
from ..warn import warn_user
from ..mask_only import _logits, _model_device, _to_device, checked_passes, evaluate, listed_targets, mask_learning
from ..mask_only_eval import _agreed, check_first_batch
from ..mask_only_learning import refuse_grads_not_given_back
from ..mask_only_batches import _OWN_BATCHES, _OWN_WINDOW
from ..mask_only_settings import check_loaders
from ..mask_only_start import check_start_agrees, sparse_start
from ..mask_only_targets import _resolve_targets
from ..metrics import call_model, refuse_one_class


@torch.no_grad()
def _topk_masks(scores: Dict[str, torch.Tensor], keep: int) -> Dict[str, torch.Tensor]:
    flat = torch.cat([s.reshape(-1) for s in scores.values()])
    keep_idx = torch.topk(flat, keep, sorted=False).indices
    m = torch.zeros(flat.numel(), dtype=torch.bool, device=flat.device)
    m[keep_idx] = True
    out, off = {}, 0
    for n, s in scores.items():
        out[n] = m[off: off + s.numel()].view(s.shape)
        off += s.numel()
    return out


def _ranked(scores: Dict[str, torch.Tensor], absent: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """The scores the top-k ranks: detached, and -inf where a synapse is ``absent`` from a sparse start (its
    weight exactly 0.0), so that the top-k never keeps one (a kept zero computes nothing, and would let a real
    weight go in its place: the snapshot would remove more than its target). A target removes at least the
    absent synapses (refused otherwise), so the top-k keeps only present ones."""
    return {n: s.detach().masked_fill(absent[n], float("-inf")) if n in absent else s.detach()
            for n, s in scores.items()}


def _batch_verdict(loss, found, refused, shape: tuple, loss_fn: Callable, where: str, grads_finite=None) -> tuple:
    """``(usable, unlabelled, bad_grads)`` of a training batch: whether its ``loss`` is finite on every process (and,
    on one process, its score gradients: ``grads_finite``, the flag of :func:`_score_grads` after the batch's
    backward, read with the others; None where there was none), whether
    some process's batch had no label to score where some loss was not finite (every one the ignored label, -100 by
    default: cross-entropy's mean over no label is NaN, so such a batch is left out, named so rather than blamed on
    NaN or inf in the data; a loss that sums over no label is finite, 0, and says nothing of it), and
    whether the loss was finite but the gradients not (one process; False under several, which check the gradients
    after the backward: :func:`_grads_agreed`); after
    its targets are refused on every process together where they were refused on any: ``refused`` (the error
    :func:`adaptive.label_checks.guarded_batch_targets` raised on this process: a shape or type, ``loss`` None) or
    ``found`` (what it found of the labels, ``[outside, low, high]`` on the device, or None: a label outside the
    head of output ``shape``, refused by :func:`adaptive.label_checks.refuse_labels_outside` with ``where`` in a
    note; no label scored where ``low > high``). One read on the host per batch, the finite flag and the labels
    together (the same one the finite check alone made); under several processes one all-reduce of three numbers,
    and an agreed refusal only where some process refused: a refusal on one process alone left the other in DDP's
    next collective (gloo: "Connection closed by peer"; NCCL: waiting until its timeout)."""

    def refuse(labels) -> None:  # this process's refusal, if any (labels: [outside, low, high] as read, or None)
        if refused is not None:
            raise refused
        if labels is not None and labels[0]:
            try:
                refuse_labels_outside(int(labels[1]), int(labels[2]), shape, loss_fn)
            except ValueError as e:
                e.add_note(f"adaptive: found in {where}")
                raise

    if not is_distributed():
        refuse(None)  # (a shape or type: nothing to read)
        flags = [torch.isfinite(loss.detach()).reshape(1).long()]
        if grads_finite is not None:
            flags.append(grads_finite.reshape(1).long())
        if found is not None:
            flags.append(found)
        read = torch.cat(flags).tolist() if len(flags) > 1 else flags[0].tolist()
        loss_ok, grads_ok = bool(read[0]), grads_finite is None or bool(read[1])
        labels = read[1 + (grads_finite is not None):] if found is not None else None
        refuse(labels)  # (no label scored explains a NaN loss only: a finite one left out was its gradient's)
        return loss_ok and grads_ok, not loss_ok and labels is not None and labels[1] > labels[2], loss_ok and not grads_ok
    ref = loss if loss is not None else found
    one = torch.ones(1, dtype=torch.float64, device=ref.device if ref is not None else None)
    flags = torch.cat([torch.isfinite(loss.detach()).reshape(1).double() if loss is not None else one * 0,
                       one if refused is not None else found[:1].double() if found is not None else one * 0,
                       (found[1:2] > found[2:3]).double() if found is not None else one * 0])
    all_reduce_mean_([flags])  # (the mean of the finite flags is 1 where every process's loss is finite)
    all_finite, any_bad, any_unlabelled = flags.tolist()
    if any_bad > 0:  # (every process takes this branch together)
        labels = found.tolist() if found is not None else None
        agreed_call(lambda: refuse(labels), passed_why=_OWN_WINDOW)
    # (the gradients: after the backward, _grads_agreed; no label scored explains a NaN loss only, not a batch whose
    # every loss was finite, left out, if at all, for its gradient)
    return all_finite == 1.0, all_finite != 1.0 and any_unlabelled > 0, False


def _left_out(nonfinite: int, unlabelled: int, ignore, bad_grads: int = 0) -> str:
    """What a message says of training batches left out: ``nonfinite`` for a NaN or inf loss, ``bad_grads`` for a
    finite loss whose gradient held NaN or inf, ``unlabelled`` with every label the ignored one (``ignore``, None
    where the loss names none), each with its fix."""
    said = []
    if nonfinite:
        said.append(f"{nonfinite} whose loss was NaN or inf (check the training data for NaN or inf, and that loss_fn "
                    "takes (logits, labels))")
    if bad_grads:
        said.append(f"{bad_grads} whose loss was finite but whose gradient held NaN or inf (none of it reached the "
                    "scores: check the training data for extreme values and the model's backward pass for an overflow, "
                    "e.g. a half-precision layer or a sqrt or log at 0)")
    if unlabelled:
        said.append(f"{unlabelled} whose every label was the ignored one ({ignore if ignore is not None else 'ignore_index'}"
                    "), so no label was left to score and the loss, a mean over none, was NaN (not the data's values): "
                    "give every batch labels to score (leave such examples out of the training data, or shuffle them in "
                    "among labelled ones)")
    return "; ".join(said)


_OWN_HOLDOUT = ("each process evaluated its own holdout loader: give every process the same, unsharded holdout (not "
                "prepared by accelerate), with labels that fit the model's head")


def _holdout_figures(model: nn.Module, holdout_loader, loss_fn: Callable) -> tuple:
    """``(loss, accuracy)`` of ``model`` over the holdout (:func:`adaptive.mask_only_eval.evaluate`), agreed by every
    process as the optimisation's (averaged: a holdout sharded by mistake gave each process its own figures for the
    same masks), and an error on any process (a label beyond the head in a held-out batch of its own) raised on all
    together (it stopped that process alone, the others going on into their next stage). One process: as evaluated."""
    hl, ha, _ = agreed_call(lambda: evaluate(model, holdout_loader, loss_fn), passed_why=_OWN_HOLDOUT)
    if ha is None:  # no accuracy (adaptive.metrics): None, never 0
        return _agreed(hl)[0], None
    return tuple(_agreed(hl, ha))


@torch.no_grad()
def _score_grads(scores: Dict[str, torch.Tensor], conn: Connectome) -> tuple:
    """``(grads, finite)``: each score's gradient straight through the top-k (``dL/ds = dL/dw_eff * w``, in the
    scores' float32: a bf16, half or float64 model's gradient was refused by the float32 scores), None for a layer
    the batch did not reach (no gradient, no step: its scores stay as they are, not stepped again with an earlier
    batch's gradient), and a 0-d bool tensor on the scores' device, True where every one is finite (read with the
    batch's other flags by :func:`_batch_verdict`, or by :func:`_grads_agreed`)."""
    grads, flags = {}, []
    for n in scores:
        g = conn.params[n].grad
        if g is None:
            grads[n] = None
            continue
        grads[n] = g.float() * conn.original[n].float()
        flags.append(torch.isfinite(grads[n]).all())
    device = next(iter(scores.values())).device
    finite = torch.stack(flags).all() if flags else torch.ones((), dtype=torch.bool, device=device)
    return grads, finite


def _grads_agreed(finite: torch.Tensor) -> bool:
    """Whether the score gradients are finite on every process (``finite``: this process's flag,
    :func:`_score_grads`): under several processes one all-reduce of one number (DDP averaged the gradients, so a
    NaN on one process reached all, but a model not wrapped in DDP would leave each its own), so that every process
    leaves the batch out together, none stepping while another draws."""
    flag = finite.reshape(1).double()
    all_reduce_mean_([flag])
    return flag.item() == 1.0


def _starting_scores(w: torch.Tensor) -> torch.Tensor:
    """A layer's starting scores, float32: ``|w|`` over the layer's RMS weight, computed in float32 at least (a
    float32 model's exactly as ever; a float16 layer of small weights, RMS below about 2.4e-4, squared to a mean
    of 0 in its own dtype, every score of it inf)."""
    w = w.to(torch.promote_types(w.dtype, torch.float32))
    return (w.abs() / w.pow(2).mean().sqrt().clamp_min(1e-12)).float().clone()


def _check_first(out: torch.Tensor, y, loss_fn: Callable) -> None:
    """The first training batch's checks: an output of one class for cross-entropy, and targets that do not fit
    the output for ``loss_fn`` (:func:`adaptive.label_checks.refuse_mismatched_targets`), each named with its fix."""
    name = getattr(loss_fn, "__name__", type(loss_fn).__name__)
    refuse_one_class(out, "edge-popup's loss_fn", loss_fn)
    refuse_mismatched_targets(out, y, loss_fn, f"edge-popup's loss_fn {name}")


@seeded_global_rng.by_argument("seed")
@torch.inference_mode(False)  # it learns masks from gradients, whatever the caller's mode: a call under
@torch.enable_grad()  # torch.no_grad() (a notebook cell) failed on the first backward
def edge_popup(model: nn.Module, train_loader, holdout_loader, targets: Optional[Sequence] = None, passes: float = 1.0,
               lr: float = 0.01, loss_fn: Callable = F.cross_entropy, progress: bool = True, include=None,
               exclude=None, seed: int = 0, *, target=None):
    """Learn masks for frozen ``model`` by edge-popup. Returns ``(conn, snapshots)`` with
    ``snapshots[label] = {"removed", "masks", "holdout_loss", "holdout_acc", "cpu_seconds", "wall_seconds"}``
    (the last two the seconds since the run began) per target (``targets``, or ``target=``, the name :func:`adaptive.optimize_connectome` gives it: one number or a list of them, as
    :func:`adaptive.optimize_connectome` takes, "best" excepted, and refused
    as it refuses them: every synapse or more, two removing one count, a positive one that removes no synapse,
    such as a fraction of 1e-9 that rounds to 0, whose snapshot would be the dense network, and one removing
    fewer synapses than a sparse model has already lost: :mod:`adaptive.mask_only_start`). As there, a synapse
    whose weight is exactly 0.0 counts as removed from the start and is never kept, so ``removed`` is what
    each target asks for. A target of 0 (on a sparse model, one of its absent count) keeps the start as its snapshot,
    scored on the holdout, with no stage of its own, as there: it reads no training batch, and the other targets
    learn exactly as without it.

    Edge-popup itself draws nothing at random; the call runs with the global generators seeded from
    ``seed`` and puts the caller's back afterwards, as :func:`adaptive.optimize_connectome` does: a
    loader without a ``generator`` of its own reads the same batches at every call with this seed,
    one with a generator shuffles by it, untouched. Like it, it computes gradients whatever the caller's mode:
    a call under ``torch.no_grad()`` or ``torch.inference_mode()`` runs alike (batches made outside inference mode).

    Edge-popup makes no collective call of its own, but under several processes the model is
    typically DistributedDataParallel (``find_unused_parameters=True``: the frozen biases get no
    gradient), whose forward and backward are collectives (the scores' gradients averaged, so every
    process learns the same masks). So, as :func:`adaptive.optimize_connectome`, call it on every
    process: its refusals are agreed (the loaders by :func:`adaptive.mask_only_settings.check_loaders`,
    train loaders of different lengths refused; a one-class output for cross-entropy, and targets that do not
    fit the output for ``loss_fn``, on the first batch by :func:`adaptive.distributed.agreed_call`; every later batch's
    targets are checked before its loss too, on the device, :func:`adaptive.label_checks.guarded_batch_targets`, and
    refused on every process together where any process's are wrong, before any score learns from the batch (under
    several processes before its backward pass; on one, the labels beyond the head ignored by the loss, read after
    it), read with its loss's finite flag (and, on one process, its gradients'): no read of its own), and a batch whose
    loss, or whose
    gradient of the scores, holds NaN or inf on any process is left out on all, another drawn in its place (as the
    mask-only path leaves out such a window; one with every label the ignored one, whose cross-entropy is NaN, named
    so in the warning, not blamed on the data; a whole pass of them in a row refused). The first held-out batch is checked before any work, as
    :func:`adaptive.optimize_connectome` checks it (:func:`adaptive.mask_only_eval.check_first_batch`: a head that
    does not fit its targets, a loss the run cannot use), agreed across processes; the model is left as given. A sparse model (weights of exactly 0.0) is given back with them
    still 0.0 where the call is interrupted, as the note says. The scores are float32 whatever the model's
    dtype (their starting values computed in float32 at least); a prunable layer no gradient reaches (one the
    forward does not use) keeps its starting scores, with a warning naming it, and a batch that does not reach a
    layer (a branch it does not take) leaves that layer's scores as they are."""
    if targets is not None and target is not None:
        raise TypeError("edge_popup got both targets= and target= (the same argument under optimize_connectome's "
                        "name): give one of them")
    if targets is None and target is None:
        raise TypeError("edge_popup needs the targets to remove: targets= (or target=, as optimize_connectome "
                        "takes it), a fraction or count of synapses or a list of them, e.g. targets=[0.5, 0.9]")
    targets = target if targets is None else targets
    if whole_number(seed, floats=True) is None:
        raise ValueError(f"seed must be an integer (a Python, numpy or torch integer), got {seed!r}: pass a whole "
                         f"number such as seed=0")
    if isinstance(lr, bool) or not isinstance(lr, numbers.Real) or not 0 < lr < math.inf:
        raise ValueError(f"edge-popup's lr must be a finite number > 0, got {lr!r} (0 would learn nothing)")
    targets = listed_targets(targets)
    passes = checked_passes(passes)
    n_train = check_loaders(train_loader, holdout_loader)
    refuse_grads_not_given_back(model)  # (before the first held-out batch's forward, which such a parameter may fail)
    # a head that does not fit the held-out labels (or a loss the run cannot use), on the first held-out batch before
    # any work, as the optimisation checks it: the holdout is read first at the end of the first stage
    check_first_batch(model, holdout_loader, loss_fn, "edge-popup")
    conn = Connectome(model, include=include, exclude=exclude, mode="mask_only")
    total = conn.num_synapses()
    if any(isinstance(t, str) and t == "best" for t in targets):
        raise ValueError("edge-popup needs numeric targets, not 'best'")
    start = sparse_start(conn)  # a sparse model's zeros: absent from the start, never kept (as the optimisation's)
    check_start_agrees(start)  # (several processes: one count for every process's refusals)
    # the optimisation's own rules (a target beyond the synapses, two removing one count, a positive one
    # removing none: a fraction of 1e-9, one below a sparse start's absent synapses), each named as it names
    # them; fewest removed first
    goals = _resolve_targets(targets, total, start)
    absent = {n: ~m for n, m in start.masks.items()} if start.absent else {}
    scores = {n: _starting_scores(o).requires_grad_(True) for n, o in conn.original.items()}
    steps = max(1, int(math.ceil(passes * n_train - 1e-9)))
    snaps, skipped, unlabelled, bad_grads = {}, 0, 0, 0  # batches left out: all, those with no label to score, and
    # those whose loss was finite but gradient not
    ignore = _kind(loss_fn)[1]
    it, device = LoaderCycle(train_loader), _model_device(model)
    t_cpu, t_wall = time.process_time(), time.time()
    from tqdm.auto import tqdm

    # a target that removes no more than the start (0 on a dense model; a sparse model's absent count) keeps the start
    # as its snapshot with no stage of its own, as the optimisation's: a stage there (every present synapse kept, so
    # no mask could change) moved the scores and the train loader on, and the other targets' masks with them
    trained = sum(removed > start.absent for _, removed in goals)
    first, drawn, graded = True, 0, set()
    # (the bar closed however the run ends, a refusal or an error in the user's loader included: one left open
    # garbled the terminal and the error's message)
    with tqdm(total=steps * trained, desc="edge-popup", unit="batch", disable=not progress, mininterval=2.0) as bar, \
            mask_learning(model, conn, absent=start.zeros):
        for label, removed in goals:
            keep = total - removed
            opt = torch.optim.Adam(list(scores.values()), lr=lr)
            sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / steps)))
            for _ in range(steps if removed > start.absent else 0):
                conn.set_masks(_topk_masks(_ranked(scores, absent), keep))
                in_a_row = row_unlabelled = row_bad_grads = 0
                while True:  # as the controller does: a batch with a non-finite loss or gradient is left out, another
                    x, y = _to_device(next(it), device)  # drawn (NaN gradients would make every score NaN)
                    for p in conn.params.values():
                        p.grad = None
                    out = _logits(call_model(model, x, "edge-popup"), model)
                    drawn += 1
                    # every batch's targets fit the output before the loss sees them (torch's own error for a label
                    # beyond the head is a bare "Target 7 is out of bounds", on a GPU a device-side assert)
                    found, refused, where = None, None, f"edge-popup's training batch {drawn} (target {label})"
                    if first:  # (each process's own first batch: a refusal on one stops every process)
                        agreed_call(lambda: _check_first(out, y, loss_fn), passed_why=_OWN_BATCHES)
                        first = False
                        y, found = guarded_batch_targets(out, y, loss_fn, where)  # (labels that fit: y's own; found
                        # says whether any is scored, read with the finite flag)
                    else:  # on the device, read with the loss's finite flag: a label outside the head is made the
                        try:  # ignored one for the loss, and refused (on every process) before any score's step
                            y, found = guarded_batch_targets(out, y, loss_fn, where)
                        except ValueError as e:  # (a shape or type: refused on every process together below)
                            refused = e
                    loss = loss_fn(out, y) if refused is None else None
                    grads = grads_finite = None
                    if loss is not None and not is_distributed():  # one process: the backward first, so that the
                        loss.backward()  # gradients' finite flag is read with the loss's (one read a batch; a NaN
                        grads, grads_finite = _score_grads(scores, conn)  # loss's backward is left out with it)
                    usable, no_label, bad_grad = _batch_verdict(loss, found, refused, tuple(out.shape), loss_fn, where,
                                                                grads_finite)
                    if usable and grads is None:  # several processes: the backward (DDP's collective) once every
                        loss.backward()  # process's loss is usable, and its gradients' flag agreed after it
                        grads, grads_finite = _score_grads(scores, conn)
                        usable = _grads_agreed(grads_finite)
                        bad_grad = not usable
                    if usable:  # (NaN or inf in a score's gradient would make Adam's moments, and so every score, NaN:
                        break  # the top-k arbitrary ever after; left out, as the mask-only path leaves out its window)
                    skipped, in_a_row = skipped + 1, in_a_row + 1
                    unlabelled, row_unlabelled = unlabelled + no_label, row_unlabelled + no_label
                    bad_grads, row_bad_grads = bad_grads + bad_grad, row_bad_grads + bad_grad
                    if in_a_row >= n_train:
                        raise ValueError(
                            f"edge-popup's training loss or gradient was NaN or inf on {in_a_row} batches in a row (a "
                            f"whole pass) at target {label}, so no score can be learned: "
                            f"{_left_out(in_a_row - row_unlabelled - row_bad_grads, row_unlabelled, ignore, row_bad_grads)}")
                for n, s in scores.items():  # a layer this batch did not reach: None, no step (its scores as they are)
                    s.grad = grads[n]
                    if grads[n] is not None:
                        graded.add(n)
                opt.step()
                sched.step()
                bar.update(1)
            conn.set_masks(_topk_masks(_ranked(scores, absent), keep))
            for p in conn.params.values():
                p.grad = None
            hl, ha = _holdout_figures(model, holdout_loader, loss_fn)
            snaps[label] = {"removed": total - conn.num_live(), "masks": {n: m.clone() for n, m in conn.masks.items()},
                            "holdout_loss": hl, "holdout_acc": ha,
                            "cpu_seconds": time.process_time() - t_cpu, "wall_seconds": time.time() - t_wall}
    ungraded = [conn.layers[n].module_name for n in scores if n not in graded]
    if ungraded and trained:  # (targets that keep the start alone train nothing)
        warn_user(f"edge-popup: no gradient reached {len(ungraded)} layer(s) in any batch ({', '.join(ungraded[:5])}"
                  f"{', ...' if len(ungraded) > 5 else ''}: not used by the forward pass, or run under torch.no_grad()), so "
                  "their synapses were ranked by their starting scores (|w| over the layer's RMS weight) alone; leave "
                  f"them out with exclude={ungraded[:5]!r} if they are not part of the network's output")
    if skipped:
        warn_user(f"edge-popup left out {skipped} training batch(es) and drew others in their place (no score learned "
                  f"from them): {_left_out(skipped - unlabelled - bad_grads, unlabelled, ignore, bad_grads)}")
    return conn, snaps
