"""Crawl: move the connectome to a goal size along a schedule, then crawl at it.

At every update the policy
- while away from the goal, removes (or restores) the synapses the schedule asks for: the goal's
  remaining distance divided by the updates left until its deadline, lowest removal cost (highest
  restoration gain) first, whole ensembles, exact to within one ensemble (at the last update before
  the deadline, ensembles of several sizes: then smaller ones further on in that order close what
  remains where they bring the count nearer, greedily by size, see :meth:`Crawl._fill`; a goal of
  synapses kept keeps one ensemble; an ensemble is pruned when at least half of it fits the distance,
  restored only when more than half of it does, so a count exactly half an ensemble off the goal is
  pruned and stays so, whatever the number of updates). This pruning is forced:
  the line search does not veto it (its tolerance is infinite), the estimator only orders it;
- at the goal, swaps up to ``edit_fraction`` of the live ensembles (rounded to the nearest whole
  number of them): cheapest present ones out, most useful absent ones in, only equal-sized pairs
  whose estimated restoration gain beats the removal cost by more than ``margin`` (a threshold on
  the estimated loss change); the controller's line search then keeps only what lowers the
  held-out loss;
- with no goal (``goal=None``: "best accuracy"), prunes every ensemble whose removal is estimated
  to lower the loss (cost < -margin) and restores every one whose restoration is (gain > margin),
  both within the edit limit.
Both lists are ordered best first, so the controller's line search can shrink a plan to a prefix.

The driver (:func:`adaptive.optimize_connectome`) sets the goal and the edit limit with
:meth:`Crawl.set_goal` and :attr:`Crawl.edit_fraction`; both are part of the policy's state. It may
also set :attr:`Crawl.restorable`, the absent ensembles that may be restored at all (a mask-only
start from a sparse network: a synapse whose frozen weight is exactly 0.0 changes nothing when
restored); the driver sets it afresh on every run, so it is not part of the state.
"""
from __future__ import annotations

import math
from typing import Dict, Optional

import torch

from ..counts import whole_number
from ..registry import number_option
from .base import (EditPlan, Policy, concat, estimated_change, global_synapse_target, highest, lowest,
                   register_policy, split)


@register_policy("crawl")
class Crawl(Policy):
    drop_by = grow_by = "estimator"
    needs_density = False
    sparse_at_start = False
    ranks_globally = True
    keeps_floors = False
    own_edit_limit = ("keeps an edit limit of its own, which does not decay (its edit_fraction: 0.01 of the live ensembles "
                      "by default, which adaptive.optimize_connectome sets)")

    def __init__(self, edit_fraction: float = 0.01, margin: float = 0.0):
        if not 0.0 <= edit_fraction <= 1.0:
            raise ValueError(f"edit_fraction must be in [0, 1], got {edit_fraction}")
        self.edit_fraction = float(edit_fraction)
        try:
            self.margin = float(margin)
        except (TypeError, ValueError):
            self.margin = math.nan
        if isinstance(margin, bool) or not math.isfinite(self.margin):
            raise ValueError(f"margin must be a finite number (the estimated improvement a swap must promise, in the "
                             f"estimator's units; 0: any improvement), got {margin!r}")
        self.goal: Optional[int] = None  # live synapses wanted over the editable layers
        self.deadline: Optional[int] = None  # step by which the goal is reached
        self.follows_density = False  # the goal is the controller's density less the protected layers' synapses
        # per layer, one bool per ensemble: which absent ensembles may be restored (None: every one)
        self.restorable: Optional[Dict[str, torch.Tensor]] = None

    def initialize(self, ctrl):
        """A controller given ``density`` (used directly, not through optimize_connectome) sets the
        goal from it, reached by ``end_step`` (at the first update without one): it was ignored,
        and the policy crawled at the starting size. Such a goal follows what the protected layers
        hold, read again at every update (one emptied or pruned by hand mid-run leaves the others its
        share), by the controller's end_step, read again too; a goal set by :meth:`set_goal` stays as set."""
        if ctrl.density is not None and self.goal is None:
            self.set_goal(global_synapse_target(ctrl, ctrl.density), ctrl.end_step)
            self.follows_density = True
        return None

    def set_goal(self, live: Optional[int], deadline: Optional[int] = None) -> None:
        """Aim for ``live`` synapses over the editable layers (None: no size goal, threshold editing) by step
        ``deadline``. A goal that is no count of synapses (negative, 50.7, text) or a deadline that is no step is
        a ValueError, and nothing is set."""
        self.goal, self.deadline = _goal(live), _deadline(deadline)
        self.follows_density = False

    def updates_left(self, ctrl, step: int) -> int:
        """Updates until the deadline, this one included (1: the goal must be reached now)."""
        if self.deadline is None or self.deadline <= step:
            return 1
        return (self.deadline - step) // ctrl.update_every + 1

    def ensemble_sizes(self, ctrl, device=None) -> Optional[torch.Tensor]:
        """Synapses per ensemble, flat over the editable layers (in :func:`concat` order), as int32
        (counts are summed in int64: float32 cannot count one by one beyond 2**24 synapses); None
        when every ensemble is one synapse. Cached: the sizes change only with the layers edited."""
        names = tuple(ctrl.editable())
        grans = [ctrl.conn.granularities[n] for n in names]
        shapes = [tuple(ctrl.conn.layers[n].shape) for n in names]
        key = (tuple(map(id, grans)), names, tuple(shapes), str(device))
        cached = getattr(self, "_sizes", None)
        if cached is not None and cached[0] == key:
            return cached[1]
        if all(tuple(g.ensemble_shape(s)) == tuple(s) for g, s in zip(grans, shapes)):
            sizes = None
        else:
            sizes = torch.cat([g.ensemble_sizes(s).reshape(-1).round().to(torch.int32)
                               for g, s in zip(grans, shapes)]).to(device)
        self._sizes = (key, sizes)
        return sizes

    @staticmethod
    def _cover(order: torch.Tensor, sizes: Optional[torch.Tensor], count: int, ties: bool = True) -> int:
        """How many ensembles of ``order`` bring their synapses nearest to ``count``: within half an
        ensemble. With ``ties`` (pruning) each is taken when at least half of it fits, without (restoring)
        only when more than half does: a distance of exactly half an ensemble is left for pruning to close,
        never undone by a restore (symmetric, a stage flipped the ensemble out and back in at every update,
        and what it ended with depended on whether it made an even or an odd number of them)."""
        if count <= 0 or order.numel() == 0:
            return 0
        if sizes is None:
            return min(order.numel(), int(count))
        s = sizes[order].to(torch.int64)
        fits = s.cumsum(0) * 2 - s
        return int(((fits <= 2 * int(count)) if ties else (fits < 2 * int(count))).sum())

    @staticmethod
    def _fill(rest: torch.Tensor, sizes: torch.Tensor, count: int, ties: bool = True) -> torch.Tensor:
        """Ensembles of ``rest`` (in its order, the estimator's) that bring their synapses near to ``count``
        greedily by size: for each size, largest first, as many of the first ensembles of that size as each
        take the sum nearer, by :meth:`_cover`'s rule (with ``ties``, pruning, one that fits exactly half is
        taken too: a fill that left it, where a later update's prefix would take it, made the count depend
        on the number of updates). What the last update of a stage adds to the prefix :meth:`_cover` took,
        where ensembles of several sizes (neurons of layers of other fan-ins, blocks cut at a layer's edge)
        left a remainder a smaller one can close. Greedy, not the best subset: each ensemble taken brings
        the count nearer (or, at a tie, as near), so it ends at most half an ensemble past ``count`` and
        short of it by less than half of each size it has ensembles of left; a subset nearer still may
        exist (14 of sizes 10, 6 and four 1s: 10 + 6, 2 past, where 10 and the 1s reach it). A loop over
        the distinct sizes only (a few: about one per layer), not over the ensembles."""
        s = sizes[rest].to(torch.int64)
        picks = [rest[:0]]
        for size in torch.unique(s).flip(0).tolist():  # largest first
            if count <= 0:
                break
            of_size = rest[s == size]
            # each one taken while at least half of it fits (ties), or more than half
            k = min(of_size.numel(), (2 * count + size - (0 if ties else 1)) // (2 * size))
            picks.append(of_size[:k])
            count -= k * size
        return torch.cat(picks)

    def update(self, ctrl, step):
        if self.follows_density and ctrl.density is not None:  # the controller's density and end_step: a state
            # loaded into one built with others goes on with its own; into one built with no density, with the goal
            # and deadline it was saved with (it raised a TypeError)
            self.goal = global_synapse_target(ctrl, ctrl.density)
            self.deadline = ctrl.end_step
        c, names, sizes = concat(ctrl.scores("cost", step))
        g, _, _ = concat(ctrl.scores("gain", step))
        a, _, _ = concat(ctrl.alive())
        a = a.to(c.device)
        absent = ~a  # the ensembles a restoration may choose from
        restorable = getattr(self, "restorable", None)
        if restorable is not None:
            absent &= concat({n: restorable[n] for n in names})[0].to(c.device)
        sz = self.ensemble_sizes(ctrl, c.device)
        live_ens = int(torch.count_nonzero(a))  # (a bool sum slows past a few million entries: update_reads.py)
        live = live_ens if sz is None else int(sz[a].sum())  # live synapses over the editable layers: the goal's unit
        limit = int(round(self.edit_fraction * live_ens))
        # ensembles of different sizes (per-layer granularities, neurons of different fan-in) compete
        # by their value per synapse, the unit of the goal; plan scores stay whole-ensemble sums
        cs, gs = (c, g) if sz is None else (c / sz.to(c.dtype), g / sz.to(g.dtype))
        need, full = 0, None  # full: the whole order on the side the goal needs, sorted once
        extra = None  # the last update's ensembles beyond the prefix, nearer by size (_fill)
        if self.goal is not None and live != self.goal:
            last = self.updates_left(ctrl, step) == 1
            need = math.ceil(abs(live - self.goal) / self.updates_left(ctrl, step)) * (1 if live > self.goal else -1)
            if sz is not None:
                # whole ensembles nearest to the distance: none when the next one would overshoot by
                # more than it gains (coarse ensembles rarely sum to the goal exactly, and chasing the
                # remainder flipped one back and forth); then the count is as near as it gets: swap.
                # Only the last update's fill reads the whole order; before it, the prefix _cover can take
                # (_reach) is all that is read, a prefix of the whole order (ties by index)
                reach = None if last else _reach(sz, abs(need))
                full = (lowest(cs, a, min(live_ens, reach or live_ens)) if need > 0
                        else highest(gs, absent, min(a.numel() - live_ens, reach or a.numel())))
                f = self._cover(full, sz, abs(need), ties=need > 0)
                if last:  # the goal must be reached now: smaller ensembles further on may close the remainder
                    # (never full[f], the first the prefix left: it is over twice the remainder (restoring: at
                    # least twice), and _fill takes an ensemble only up to twice what remains (restoring: under
                    # it), which only shrinks; so where the prefix leaves a
                    # live ensemble the fill does too, and a goal of synapses kept keeps one: the prefix's own
                    # case is capped below, at fp)
                    extra = self._fill(full[f:], sz, abs(need) - int(sz[full[:f]].sum()), ties=need > 0)
                if f == 0 and (extra is None or extra.numel() == 0) and 2 * abs(live - self.goal) <= int(sz[full[:1]].sum() or 1):
                    need, full, extra = 0, None, None
        if self.goal is None:
            # the ensembles whose own (summed) value clears the margin, best per synapse first
            p_idx = lowest(cs, a & (c < -self.margin), limit)
            r_idx = highest(gs, absent & (g > self.margin), limit)
        else:
            pa, ra = a, absent
            if need == 0 and live_ens and bool(ra.any()) and _NARROW:
                pa, ra = self._narrow(c, g, cs, gs, a, ra, sz)
            # away from the goal the schedule's side is read only as far as its prefix reaches (``need``
            # ensembles of one synapse; ``full`` where they differ) and the other side not at all: no
            # swap is made there (n = 0 below), so neither the whole order nor the other side's was used
            none = torch.zeros(0, dtype=torch.long, device=c.device)
            p_order = ((full if full is not None else lowest(cs, a, min(live_ens, need))) if need > 0
                       else none if need < 0
                       else lowest(cs, pa, min(limit, int(torch.count_nonzero(pa)))))
            r_order = ((full if full is not None else highest(gs, absent, -need)) if need < 0
                       else none if need > 0
                       else highest(gs, ra, min(limit, int(torch.count_nonzero(ra)))))
            fp, fr = self._cover(p_order, sz, need), self._cover(r_order, sz, -need, ties=False)
            if self.goal > 0 and fp >= live_ens > 0:  # nearest by whole ensembles may be none live: a goal of
                fp = live_ens - 1  # synapses kept keeps one (every synapse removed leaves no network, as refused)
            cand_p, cand_r = p_order[fp: fp + limit], r_order[fr: fr + limit]
            n = min(cand_p.numel(), cand_r.numel()) if need == 0 else 0  # swaps only once at the goal
            # ascending costs vs descending gains: the worthwhile pairs are a prefix; only pairs of
            # equal size, so that swaps keep the synapse count
            worth = (g[cand_r[:n]] - c[cand_p[:n]]) > self.margin
            if sz is None:
                n_swap = int(worth.cumprod(0).sum()) if n else 0
                p_idx = p_order[: fp + n_swap]
                r_idx = r_order[: fr + n_swap]
            else:  # pairs of equal size only, so that swaps keep the synapse count; each on its own
                worth &= sz[cand_r[:n]] == sz[cand_p[:n]]
                p_idx = torch.cat([p_order[:fp], cand_p[:n][worth]] + ([extra] if extra is not None and need > 0 else []))
                r_idx = torch.cat([r_order[:fr], cand_r[:n][worth]] + ([extra] if extra is not None and need < 0 else []))
        plan = EditPlan(boundaries={
            "prune": float(c[p_idx[-1]]) if p_idx.numel() else None,
            "restore": float(g[r_idx[-1]]) if r_idx.numel() else None,
            "need": need, "goal": self.goal,
        })
        plan.prune, plan.prune_scores = split(p_idx, names, sizes, c[p_idx])
        plan.grow, plan.grow_scores = split(r_idx, names, sizes, g[r_idx])
        plan.est_loss_change = estimated_change(c[p_idx], g[r_idx])
        if need != 0:
            plan.tolerance = float("inf")  # the schedule's pruning goes through; its order is the estimator's
        elif self.goal is not None:
            plan.atomic = True  # swaps keep the synapse count only whole: a line search takes all or none
        return plan

    def _narrow(self, c, g, cs, gs, a, ra, sz):
        """At the goal, the live and the absent ensembles that can be in a swap worth making: a pair of equal
        size s swaps where its whole gain beats its whole cost by more than the margin, so a present ensemble
        whose cost per synapse is at or above the best gain per synapse less margin/s (the smallest such
        margin/s: margin over the largest size, or over the smallest for a negative margin) is in none, nor an
        absent one below the lowest cost per synapse plus it. Each kept set is a prefix of its side's full
        order (a bound on the very values it is ordered by), and pairs go by position, so the plan made from
        the kept sets alone is the same for a fraction of the work: every pair dropped had a member that made
        it not worth swapping. The bounds are widened by far more than float32 rounds: the pairs' own test
        rounds g - c, and at the edge (cost 1.0, gain 1.1, margin 0.1) dropped a pair it takes; one kept
        beyond the edge only lengthens the orders, which that test cuts. (With ``torch.where``, not a gather
        of the live or absent entries: a gather of millions of entries costs more than the bound saves.)"""
        g_max = float(torch.where(ra, gs, float("-inf")).max())
        c_min = float(torch.where(a, cs, float("inf")).min())
        per = self.margin if sz is None else self.margin / float(sz.max() if self.margin >= 0 else sz.min())
        slack = 2.0 ** -20 * (abs(g_max) + abs(c_min) + abs(per)) + 1e-30
        return a & (cs < g_max - per + slack), ra & (gs > c_min + per - slack)

    def state_dict(self):
        return {"edit_fraction": self.edit_fraction, "goal": self.goal, "deadline": self.deadline,
                "follows_density": self.follows_density}

    def load_state_dict(self, sd):
        # each checked before any is set: a state edited by hand (goal "abc", edit_fraction -3) loaded, and the next
        # update failed with a bare TypeError or emptied the network
        edit_fraction = number_option("policy 'crawl': the state's", "edit_fraction", sd.get("edit_fraction", self.edit_fraction),
                                      low=0.0, high=1.0, why="the most swaps per update; load an unedited state")
        goal = _goal(sd.get("goal", self.goal), "the state's ")
        deadline = _deadline(sd.get("deadline", self.deadline), "the state's ")
        self.edit_fraction, self.goal, self.deadline = edit_fraction, goal, deadline
        if "follows_density" in sd:
            self.follows_density = bool(sd["follows_density"])
        elif sd.get("goal") is not None:  # a state saved before the key: its goal stayed as saved, from
            self.follows_density = False  # the density or from set_goal alike, and still does


_NARROW = True  # Crawl._narrow at the goal (False: every live and absent ensemble ranked, for tests comparing the two)


def _reach(sizes: torch.Tensor, count: int) -> int:
    """Ensembles enough for :meth:`Crawl._cover` of ``count`` synapses over any order of ensembles of
    ``sizes``: past ``count // smallest + 1`` of them, each at least the smallest size, the sum is over
    ``count`` by at least half of the last, which _cover never takes."""
    return int(count) // max(1, int(sizes.min())) + 2


def _goal(live, whose: str = "") -> Optional[int]:
    """``live`` (a goal of live synapses) as an int, None as None; anything that is no count is a ValueError."""
    if live is None:
        return None
    n = whole_number(live, floats=True)
    if n is None or n < 0:
        raise ValueError(f"policy 'crawl': {whose}goal must be None (no size goal) or a count of live synapses, a whole "
                         f"number >= 0, got {live!r}")
    return n


def _deadline(step, whose: str = "") -> Optional[int]:
    """``step`` (the step a goal is reached by) as an int, None as None; anything that is no step is a ValueError."""
    if step is None:
        return None
    n = whole_number(step, floats=True)
    if n is None:
        raise ValueError(f"policy 'crawl': {whose}deadline must be None or a step (a whole number), got {step!r}")
    return n
