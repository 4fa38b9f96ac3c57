"""Constant-density rewiring: SET, RigL and our utility policy.

At each update a decaying fraction of every layer's live ensembles (or of all of them, under the
global budget) is pruned, lowest removal cost first, and the same number of absent ensembles is
grown, highest restoration gain first (ensembles pruned at this update are not regrown, so no more
synapses are pruned than the absent ensembles can replace: see :func:`refillable`). Under a layer
budget a layer off its count (emptied or filled by hand, wholly or nearly), under the global budget
the network off its count (a protected layer edited by hand), is brought back to it instead, alone
(:func:`swap_plan`).
SET grows at random; RigL is SET with gradient growth; utility takes both sides from an estimator.
Where RigL (Evci et al. 2020) differs: it truncates the drop count where we round, lets a weight
dropped at an update be grown back at it (keeping its weight), and grows by one batch's gradient at
the update step where the controller's default window averages every step since the last update
(``window=1`` for RigL's); RigL's code also skips the optimizer's step at an update, where the
controller updates after it. SET here drops by plain magnitude, as RigL's code does, not by Mocanu et
al.'s separate positive and negative fractions (docs/python_api.md, "Fidelity to the papers").
"""
from __future__ import annotations

import math

import torch

from .base import (EXACT, EditPlan, Policy, all_synapses, concat, concat_sizes, ensemble_size, floor_mask, highest,
                   hold_count, keep_plan, live_synapses, lowest, max_count, per_synapse, register_policy, size_sum,
                   split, synapse_targets, take_synapses, warn_if_never_rewires)


def global_candidates(ctrl, cost, gain, alive, frac, ordered=True, target=None, room=None):
    """Over all layers together: the ``frac`` of live ensembles cheapest to remove (no more synapses
    than the absent ones can replace, :func:`refillable`: ``room`` defaults to :func:`spare_synapses`,
    ``math.inf`` takes them as they come), and the most useful absent ones holding as many synapses
    as the removed ones (or, with ``target``, as many as bring the live synapses back to ``target``),
    to within half an ensemble; ensembles of different sizes are ranked by their value per synapse.
    Returns the flat scores, the layer layout and both index lists, for :func:`global_plan`."""
    c, names, sizes = concat(cost)
    g, _, _ = concat(gain)
    a, _, _ = concat(alive)
    a = a.to(c.device)
    live = int(torch.count_nonzero(a))
    k = min(int(round(frac * live)), a.numel() - live)
    size = concat_sizes(ctrl, names, sizes)
    prunable = a
    held = floor_mask(ctrl, cost, alive)
    if held is not None:  # min_density: the ensembles holding each layer's floor are not pruned
        prunable = a & ~held.to(a.device)  # (lowest takes at most the eligible ones: k needs no cap)
    p_idx = lowest(per_synapse(c, size), prunable, k, ordered)
    room = spare_synapses(size, a, target) if room is None else room
    p_idx = refillable(per_synapse(c, size), prunable, size, p_idx, room)
    g_idx = grow_candidates(per_synapse(g, size), a, size, p_idx, target, ordered)
    return c, g, names, sizes, p_idx, g_idx


def spare_synapses(size, a, target) -> float:
    """Synapses an update may prune beyond those it grows back (ensembles pruned at an update are
    not regrown): all of them less ``target``, or with no target the absent ones."""
    return all_synapses(size, a) - (live_synapses(size, a) if target is None else target)


def replaceable(size, p_idx, room) -> bool:
    """Whether pruning ``p_idx`` leaves the live synapses within half an ensemble (the largest) of
    the target when every absent ensemble is grown (``room``: :func:`spare_synapses`)."""
    return size_sum(size, p_idx) <= room + (size if isinstance(size, float) else float(size.max())) / 2


def refillable(scores, eligible, size, p_idx, room) -> torch.Tensor:
    """``p_idx`` (the cheapest ``eligible`` ensembles by ``scores``, as :func:`lowest` picks them)
    where the absent ensembles can replace their synapses to within half an ensemble (the largest),
    else the cheapest eligible ones that fit, best first. ``room``: the synapses that may go without
    a replacement (:func:`spare_synapses`). Pruned ensembles are not regrown, so with ensembles of
    different sizes a large live one could be pruned where only a small absent one can be grown,
    and the live synapses would miss the target by the difference at every update (near full
    density, with one small ensemble absent). The ones that fit fill the room to within half the
    smallest ensemble, so the live synapses stay as near the target as whole ensembles allow rather
    than swinging within the tolerance from update to update."""
    if replaceable(size, p_idx, room):
        return p_idx
    eligible = eligible.reshape(-1)
    if isinstance(size, float):
        return lowest(scores, eligible, min(p_idx.numel(), int((room + size / 2) // size)))
    s = size.to(eligible.device, EXACT)  # (summed: whole numbers past 2**24, see base.EXACT)
    cap = room + float(s.min()) / 2
    idx = lowest(scores, eligible & (s <= cap), p_idx.numel())
    return idx[: int((s[idx].cumsum(0) <= cap).sum())]


def grow_candidates(gain, a, size, p_idx, target, ordered, ranked=None):
    """The absent ensembles with the highest gain whose synapses replace those of ``p_idx`` (with
    ``target``: that bring the live synapses to ``target``), best first. ``ranked``: where given, the
    ordered result of this call for a longer ``p_idx`` of equal-sized ensembles (``highest`` of the
    same gains over the same absent ones, best first), whose prefix is the answer one for one: no
    second selection over every absent ensemble."""
    freed = size_sum(size, p_idx)
    need = freed if target is None else target - (live_synapses(size, a) - freed)
    if isinstance(size, float) and need == freed:  # equal sizes, density kept: one for one
        if ranked is not None and ordered and ranked.numel() >= p_idx.numel():
            return ranked[: p_idx.numel()]  # (an ordered top-k's prefix is the top of that length, ties by index)
        return highest(gain, ~a.reshape(-1), p_idx.numel(), ordered)
    absent = ~a.reshape(-1)
    g_idx = highest(gain, absent, max_count(size, need, int(torch.count_nonzero(absent))))
    return take_synapses(g_idx, size, need)


def global_plan(c, g, names, sizes, p_idx, g_idx) -> EditPlan:
    """Split flat prune/grow indices back into per-layer lists (with their scores)."""
    plan = EditPlan()
    plan.prune, plan.prune_scores = split(p_idx, names, sizes, c[p_idx])
    plan.grow, plan.grow_scores = split(g_idx, names, sizes, g[g_idx])
    return plan


def _edited_by_hand(ctrl) -> bool:
    """Whether the masks changed since the controller's last edit (``set_masks`` by hand, of a
    protected layer or any other): the live count its last event recorded differs from the
    connectome's now. False before its first event. A line search's cut leaves the network a few
    synapses off its target in ordinary runs, which the next swaps catch up: those never restore."""
    last = next((e for e in reversed(ctrl.events) if "live" in e), None)
    return last is not None and int(last["live"]) != ctrl.conn.num_live()


def global_restore(ctrl, cost, gain, alive, target):
    """Under the global budget, where the editable layers together miss ``target`` by more than one
    ensemble (its largest) per layer (a protected layer edited by hand leaves them a new share, or
    a layer was emptied or filled by hand), the plan that brings them back to within half an
    ensemble of it alone (:func:`hold_count`: the most useful absent ensembles grown, or the
    cheapest live ones above the ``min_density`` floors pruned), with an infinite line-search
    tolerance; None where they are within it, or where nothing but the controller edited the masks
    since its last update (:func:`_edited_by_hand`). The margin is what a line search's cut of a global
    swap plan can leave (each layer's prunes and grows cut to a prefix apiece: the network off by
    up to one ensemble per layer, caught up with the next swaps): restoring that alone would change
    ordinary runs."""
    if not _edited_by_hand(ctrl):
        return None
    c, names, sizes = concat(cost)
    a = concat(alive)[0].to(c.device)
    size = concat_sizes(ctrl, names, sizes)
    per_layer = (ensemble_size(ctrl.conn.granularities[n], ctrl.conn.layers[n].shape) for n in names)
    slack = sum(s if isinstance(s, float) else float(s.max()) for s in per_layer)
    if abs(target - live_synapses(size, a)) <= slack:
        return None
    g = concat(gain)[0]
    held = floor_mask(ctrl, cost, alive)
    prunable = a if held is None else a & ~held.to(a.device)
    value = torch.where(a, per_synapse(c, size), per_synapse(g, size))
    g_idx, p_idx = hold_count(value, a, size, target, ~a, prunable)
    if not g_idx.numel() and not p_idx.numel():
        return None
    plan = global_plan(c, g, names, sizes, p_idx, g_idx)
    plan.tolerance = math.inf
    return plan


def swap_plan(ctrl, step, cost, gain, alive, frac) -> EditPlan:
    """Prune the ``frac`` cheapest live ensembles of every layer (of all layers together under the
    global budget) and grow the most useful absent ones up to the budget's live synapses. Under a
    layer budget, a layer more than half an ensemble off its count (set by hand: emptied or filled,
    wholly or all but a few ensembles) is brought back to it instead (:func:`hold_count`: the most
    useful absent ones grown, or the cheapest live ones pruned); such a restoration is the whole
    plan, with an infinite line-search tolerance, as balanced restores its count: joined to the
    swaps, a held-out veto of them rolled it back too, every time, and the layer stayed off its
    count for good. Under the global budget the network's count is restored so, alone, when it is
    more than an ensemble per layer off (:func:`global_restore`: a protected layer edited by hand).
    Swaps keep every layer (the network) within half an ensemble of its count, so a run that never
    meets the case never restores."""
    # best-first order matters only when a line search may shrink the plan
    ordered = ctrl.holdout_loss is not None
    per_layer, total = synapse_targets(ctrl, ctrl.density)
    if per_layer is None:
        restore = global_restore(ctrl, cost, gain, alive, total)
        if restore is not None:
            return restore
        return global_plan(*global_candidates(ctrl, cost, gain, alive, frac, ordered, target=total))
    plan, restore = EditPlan(), EditPlan()
    for n in cost:
        a = alive[n].to(cost[n].device)
        size = ensemble_size(ctrl.conn.granularities[n], ctrl.conn.layers[n].shape)  # block edges are smaller
        largest = size if isinstance(size, float) else float(size.max())
        if abs(per_layer[n] - live_synapses(size, a)) > largest / 2:
            # off its count (a hand edit): brought back to it, best gains grown or lowest costs pruned
            value = torch.where(a, per_synapse(cost[n], size), per_synapse(gain[n], size))
            g_idx, p_idx = hold_count(value, a, size, per_layer[n], ~a, a)
            restore.prune[n], restore.prune_scores[n] = p_idx, cost[n].reshape(-1)[p_idx]
            restore.grow[n], restore.grow_scores[n] = g_idx, gain[n].reshape(-1)[g_idx]
            continue
        if restore.prune:  # the restoration comes alone: no swap to plan
            continue
        n_live = int(torch.count_nonzero(a))
        k = min(int(round(frac * n_live)), a.numel() - n_live)  # no more than can be grown
        if k == 0:
            continue
        p_idx = lowest(per_synapse(cost[n], size), a, k, ordered)
        p_idx = refillable(per_synapse(cost[n], size), a, size, p_idx, spare_synapses(size, a, per_layer[n]))
        g_idx = grow_candidates(per_synapse(gain[n], size), a, size, p_idx, per_layer[n], ordered)
        if p_idx.numel():
            plan.prune[n], plan.prune_scores[n] = p_idx, cost[n].reshape(-1)[p_idx]
            plan.grow[n], plan.grow_scores[n] = g_idx, gain[n].reshape(-1)[g_idx]
    if restore.prune:
        # alone, and no held-out loss vetoes it (as balanced restores its count): a line search
        # would roll it back with the swaps it came with, for good; swaps resume at the next update
        restore.tolerance = math.inf
        return restore
    return plan


def nm_plan(ctrl, step, cost, gain, alive) -> EditPlan:
    """n:m: re-select the top n of every group by the value of each synapse's presence (removal
    cost where present, restoration gain where absent: both in loss units)."""
    keep_scores = {n: torch.where(alive[n].to(cost[n].device), cost[n], gain[n]) for n in cost}
    return keep_plan(ctrl, keep_scores, ctrl.density, allow_grow=True, estimates=True)


@register_policy("set")
class SET(Policy):
    drop_by, grow_by = "magnitude", "random"

    def initialize(self, ctrl):
        warn_if_never_rewires(self, ctrl)
        return super().initialize(ctrl)

    def update(self, ctrl, step):
        frac = ctrl.edit_fraction(step)
        if frac <= 0:
            return None
        alive = ctrl.alive()
        cost, gain = ctrl.scores("cost", step), ctrl.scores("gain", step)
        if ctrl.conn.fixed_density is not None:
            return nm_plan(ctrl, step, cost, gain, alive)
        return self.plan(ctrl, step, cost, gain, alive, frac)

    def plan(self, ctrl, step, cost, gain, alive, frac) -> EditPlan:
        """The edits of one update, given pooled scores (the hook a rewiring policy overrides)."""
        return swap_plan(ctrl, step, cost, gain, alive, frac)


@register_policy("rigl")
class RigL(SET):
    grow_by = "gradient"


@register_policy("utility")
class Utility(SET):
    drop_by = grow_by = "estimator"
    supports_nm = True
