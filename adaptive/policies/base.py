"""The policy interface, its registry, and the tensor helpers every policy shares.

A policy decides, at an update, which ensembles to prune and which to grow. It returns an
:class:`EditPlan`: per layer, flat ensemble indices to prune and to grow, each ordered best-first,
so that the controller can shrink a plan (line search) by keeping a prefix of every list. Scores
come from utility estimators (``drop_by`` for removal cost, ``grow_by`` for restoration gain).
"""
from __future__ import annotations

import math
import numbers

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Dict, Optional, Type

import torch

from .. import registry as _registry
from ..budgets import floor_synapses, rounded_up_text, too_high_error, too_low_error
from ..counts import unit_fraction
from ..warn import warn_user

if TYPE_CHECKING:  # pragma: no cover
    from ..controller import Controller

_POLICIES: Dict[str, Type["Policy"]] = {}


def register_policy(name: str, replace: bool = False):
    """Class decorator: the policy answers to ``name`` (taken names are refused unless ``replace``)."""
    return _registry.class_decorator(_POLICIES, "policy", name, replace, base=Policy, needs=("update",))


def get_policy(name, **kw) -> "Policy":
    """The policy registered as ``name`` (see :func:`policy_names`), built with ``kw``; a
    :class:`Policy` instance is returned as it is (options
    with it are refused: build it with them). An unknown name or keyword is a ValueError that lists
    what exists."""
    if isinstance(name, Policy):
        if kw:  # options for a built instance would be dropped unseen
            raise ValueError(f"policy option(s) {sorted(kw)} cannot be applied to the policy instance "
                             f"{type(name).__name__} given: build the instance with them, or give the policy "
                             f"by name ({getattr(name, 'name', '...')!r}) with the options")
        return name
    return _registry.build(_POLICIES, "policy", name, kw, via=" (neither a Controller nor a policy option)")


def policy_names():
    return sorted(_POLICIES)


def defined(value: Optional[float]) -> Optional[float]:
    """``value``, or None where it is NaN: an estimated change summed from scores that hold +inf and
    -inf (an estimator may give either: :mod:`adaptive.score_checks`) has no value, and a plan states
    no estimate rather than a NaN (which :func:`adaptive.plan_checks.check_plan` refuses)."""
    return None if value is None or math.isnan(value) else value


def estimated_change(prune_scores: torch.Tensor, grow_scores: torch.Tensor) -> Optional[float]:
    """A plan's ``est_loss_change`` from the scores of what it prunes and grows: their sums' difference,
    or None where it has no value (+inf and -inf among the scores: :func:`defined`)."""
    return defined(float(prune_scores.sum() - grow_scores.sum()))


@dataclass
class EditPlan:
    """Flat ensemble indices per layer, best first. ``info`` goes into the event."""

    prune: Dict[str, torch.Tensor] = field(default_factory=dict)
    grow: Dict[str, torch.Tensor] = field(default_factory=dict)
    est_loss_change: Optional[float] = None
    boundaries: Optional[dict] = None
    prune_scores: Dict[str, torch.Tensor] = field(default_factory=dict)  # aligned with prune
    grow_scores: Dict[str, torch.Tensor] = field(default_factory=dict)  # aligned with grow
    tolerance: Optional[float] = None  # held-out loss rise the line search accepts (None: the controller's)
    atomic: bool = False  # True: a line search applies the whole plan or none of it (paired swaps)

    def counts(self):
        return sum(int(v.numel()) for v in self.prune.values()), sum(int(v.numel()) for v in self.grow.values())

    def estimate(self) -> Optional[float]:
        """The plan's summed prune scores minus its summed grow scores: ``est_loss_change`` when the
        policy set it, else from the aligned scores (None without either, or where they hold +inf and
        -inf: :func:`defined`). The controller logs it as the edit's estimated loss change only where
        both sides are immediate loss changes, or
        where the policy set ``est_loss_change`` with no scores: that figure is the policy's own
        statement of the edit's immediate loss change, logged as it stands (see
        :meth:`Controller._estimates <adaptive.controller_reports.ControllerReportsMixin._estimates>`)."""
        if self.est_loss_change is not None or not (self.prune_scores or self.grow_scores):
            return self.est_loss_change
        prune, grow = self.score_sums()
        return defined(prune - grow)

    def score_sums(self):
        """``(summed prune scores, summed grow scores)`` of the aligned scores, each side summed in
        float64 (so the figure hardly depends on the order the plan lists its ensembles); None for a
        plan without scores."""
        if not (self.prune_scores or self.grow_scores):
            return None
        return (float(sum(v.double().sum() for v in self.prune_scores.values())),
                float(sum(v.double().sum() for v in self.grow_scores.values())))

    def shrink(self, fraction: float, groups=None) -> "EditPlan":
        """Keep the best ``fraction`` of every layer's prunes and grows. ``groups(name)`` (optional)
        gives the constraint group of each of a layer's ensembles, or None: in such a layer the plan
        ranks the groups its edits touch by their best edit and keeps every edit of the best
        ``fraction`` of those groups, since separate prefixes of prunes and grows could keep a grow
        whose paired prune was cut (n:m: a group over its n)."""

        def cut(d):
            return {n: v[: int(round(v.numel() * fraction))] for n, v in d.items()}

        prune, grow, ps, gs = cut(self.prune), cut(self.grow), cut(self.prune_scores), cut(self.grow_scores)
        for n in sorted(set(self.prune) | set(self.grow)) if groups is not None else ():
            gid = groups(n)
            if gid is None:
                continue
            # a group ranks by its best edit (its position in the prune or grow list, as a fraction of
            # that list); the best ``fraction`` of the touched groups keep all their edits
            key = torch.full((int(gid.max()) + 1 if gid.numel() else 0,), math.inf)
            for full in (self.prune, self.grow):
                if n in full and full[n].numel():
                    pos = torch.arange(full[n].numel(), dtype=torch.float) / full[n].numel()
                    key.scatter_reduce_(0, gid[full[n].cpu()], pos, "amin")
            touched = torch.isfinite(key).nonzero().squeeze(1)
            best = touched[torch.argsort(key[touched], stable=True)][: int(round(touched.numel() * fraction))]
            sel = torch.zeros_like(key, dtype=torch.bool)
            sel[best] = True
            for full, scores, out, out_scores in ((self.prune, self.prune_scores, prune, ps),
                                                  (self.grow, self.grow_scores, grow, gs)):
                if n in full:
                    keep = sel[gid[full[n].cpu()]]
                    out[n] = full[n][keep.to(full[n].device)]
                    if n in scores:
                        out_scores[n] = scores[n][keep.to(scores[n].device)]
        est = None  # a plan without scores: its policy's figure is of the whole plan, so a part has none
        if self.prune_scores or self.grow_scores:
            est = defined(float(sum(v.double().sum() for v in ps.values())) - float(sum(v.double().sum() for v in gs.values())))
        elif EditPlan(prune=prune, grow=grow).counts() == self.counts():
            est = self.est_loss_change  # the whole plan kept
        return EditPlan(
            prune=prune, grow=grow, est_loss_change=est,
            boundaries=self.boundaries, prune_scores=ps, grow_scores=gs,
            tolerance=None if self.tolerance is None else self.tolerance * fraction, atomic=self.atomic,
        )


class Policy:
    """Base class. ``sparse_at_start`` policies make the connectome sparse at construction."""

    name = "?"
    sparse_at_start = True
    drop_by = "magnitude"
    grow_by: Optional[str] = None  # None: the policy never grows
    needs_density = True
    supports_nm = False  # n:m granularities need policies whose scores share units
    ranks_globally = False  # True: every edit ranks all layers together, so no layer budget applies
    # whether min_density floors hold (else refused with one); None: unless the policy ranks globally
    # (a budget's floors do not apply there, so one that does keep them says so: threshold)
    keeps_floors: Optional[bool] = None
    holds_layer_counts = True  # False: its updates hold the network's live count, not each layer's (balanced)
    # None: its updates read the controller's edit_fraction and edit_decay; else how it sizes its edits without
    # them (a phrase): an edit_fraction or edit_decay other than the defaults, which it would ignore, is refused
    own_edit_limit: Optional[str] = None

    def initialize(self, ctrl: "Controller") -> Optional[EditPlan]:
        """Plan applied at construction (default: sparsify to the target with ``ctrl.init``)."""
        if not self.sparse_at_start:
            return None
        return ctrl.initial_plan()

    # whether no later update of this policy can edit (a one-shot prune done): the controller then
    # stops observing gradients, which nothing would read. A plain attribute, not a property, so that
    # a policy may set it itself (``self.finished = True``), as one written before it existed may
    finished = False

    def update(self, ctrl: "Controller", step: int) -> Optional[EditPlan]:
        raise NotImplementedError

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, sd: dict) -> None:
        pass


# --------------------------------------------------------------------------- tensor helpers
def _sort_keys(y: torch.Tensor) -> torch.Tensor:
    """Keys whose stable argsort equals ``torch.argsort(y, stable=True)``: float32 (and exactly widened
    float16/bfloat16) as int32 keys in the same order, -0.0 equal to +0.0, every NaN (either sign bit) after
    +inf as torch puts it (PyTorch's CPU sorts integer keys by radix, several times faster than a stable
    float sort); other dtypes unchanged."""
    if y.dtype in (torch.float16, torch.bfloat16):
        y = y.float()
    if y.dtype != torch.float32:
        return y
    b = y.reshape(-1).view(torch.int32)
    magnitude = b & 0x7FFFFFFF
    # non-negative floats order as their bits; negative ones reversed (-0.0 -> 0, ties +0.0); NaN (a magnitude
    # past +inf's bits) last: a NaN with its sign bit set (x86's 0/0) was keyed first
    keys = torch.where(b < 0, -magnitude, b)
    return keys.masked_fill_(magnitude > 0x7F800000, torch.iinfo(torch.int32).max)


def _stable_argsort(y: torch.Tensor) -> torch.Tensor:
    """``torch.argsort(y, stable=True)`` of flat ``y``, ties by index, computed faster."""
    return torch.argsort(_sort_keys(y), stable=True)


def _up_to(y: torch.Tensor, v: torch.Tensor, k: int) -> torch.Tensor:
    """The ``k`` smallest entries of NaN-free ``y`` in index order, given ``v``, the k-th smallest
    value: all entries below ``v``, then those equal to it in index order until there are ``k``."""
    sel = (y <= v).nonzero().squeeze(1)
    extra = sel.numel() - k
    if extra > 0:  # ties at the k-th value: keep the lowest indices
        tie = y[sel] == v
        sel = sel[~tie | (tie.cumsum(0) <= int(tie.sum()) - extra)]
    return sel


def _kth_smallest(x: torch.Tensor, k: int) -> torch.Tensor:
    """The ``k``-th smallest value of NaN-free flat ``x`` (1 <= k <= n), as ``torch.kthvalue(x, k)`` gives it:
    the largest of the ``k`` smallest (``topk``). ``kthvalue`` takes time quadratic in n on a descending input
    for k well below n/2, and ``highest`` of ascending scores is that case: 1.66 s for 2**18 entries at
    k = n/8 against 1.3 ms for ``topk``; shuffled, 2.9 ms against 2.8 (``recipes/benchmarks/update_reads.py``)."""
    return torch.topk(x, k, largest=False, sorted=False).values.max()


def _smallest_k(x: torch.Tensor, k: int, ordered: bool = True) -> torch.Tensor:
    """Indices of the ``k`` smallest entries of flat ``x``, ascending, ties broken by index: exactly
    ``torch.argsort(torch.nan_to_num(x, nan=inf), stable=True)[:k]`` (NaN after +inf, never selected
    while enough other entries exist). ``ordered=False``: the same set in no particular order.

    A stable sort of floats would dominate an update (millions of synapses per update), so the
    result is computed without one: sorts use int32 keys in the same order (:func:`_sort_keys`);
    a small ``k`` is cut at its k-th value (:func:`_kth_smallest`) and only those ``k`` are sorted.
    For large inputs the k-th value is bracketed from a strided sample (deterministic: the same on
    every process), the entries below the bracket are taken whole and only the few inside it are
    sorted. When the bracket misses (an unusual distribution) it falls back to an exact k-th value."""
    n = x.numel()
    # one ordering throughout: +inf as the largest float, NaN as inf (after it), -inf as the smallest
    if x.is_floating_point():
        x = torch.nan_to_num(x, nan=float("inf"))  # (+-inf become +-the largest float, as before)
    if k >= n or n <= 256:  # all of it (int32 keys: several times faster than a stable float sort)
        return _stable_argsort(x)[:k]
    if k <= 0:
        return torch.zeros(0, dtype=torch.long, device=x.device)
    if n <= 1 << 20 or k <= 2048:
        if k * 8 > n:  # most of it: one sort (by radix on CPU) beats a cut
            return _stable_argsort(x)[:k]
        sel = _up_to(x, _kth_smallest(x, k), k)
        return sel[_stable_argsort(x[sel])] if ordered else sel
    stride = max(1, n >> 18)
    sample = x[::stride]
    m = sample.numel()
    q, slack = k / n, 6.0 / m**0.5
    lo_r, hi_r = max(1, int((q - slack) * m)), min(m, int((q + slack) * m) + 1)
    sv = torch.sort(sample).values
    lo, hi = sv[lo_r - 1], sv[hi_r - 1]
    below = (x < lo).nonzero().squeeze(1)
    band = ((x >= lo) & (x <= hi)).nonzero().squeeze(1)
    need = k - below.numel()
    if need < 0 or need > band.numel():
        v = _kth_smallest(x, k)
        below = (x < v).nonzero().squeeze(1)
        band = (x == v).nonzero().squeeze(1)
        need = k - below.numel()
    band = band[_stable_argsort(x[band])[:need]]  # ties at the k-th value: lowest index
    if not ordered:
        return torch.cat([below, band])
    # every entry of ``below`` is smaller than every entry of ``band``; ``below`` is in index order
    return torch.cat([below[_stable_argsort(x[below])], band])


def lowest(scores: torch.Tensor, eligible: torch.Tensor, k: int, ordered: bool = True) -> torch.Tensor:
    """Flat indices of the ``k`` smallest eligible scores, smallest first (``ordered=False``: the
    same set in no particular order, cheaper for tens of millions of synapses)."""
    return _eligible_smallest_k(scores.reshape(-1), eligible.reshape(-1), k, ordered)


def highest(scores: torch.Tensor, eligible: torch.Tensor, k: int, ordered: bool = True) -> torch.Tensor:
    """Flat indices of the ``k`` largest eligible scores, largest first (see :func:`lowest`)."""
    return _eligible_smallest_k(scores.reshape(-1), eligible.reshape(-1), k, ordered, negate=True)


def _eligible_smallest_k(flat: torch.Tensor, ok: torch.Tensor, k: int, ordered: bool,
                         negate: bool = False) -> torch.Tensor:
    """:func:`_smallest_k` of the entries of ``flat`` (of ``-flat`` with ``negate``) where ``ok``
    holds, as indices into ``flat``."""
    count = int(torch.count_nonzero(ok))
    k = min(int(k), count)
    if k <= 0:
        return torch.zeros(0, dtype=torch.long, device=flat.device)
    if (count < flat.numel() and flat.is_floating_point() and ok.dtype == torch.bool and flat.numel() > 1 << 16
            and k > 2048):
        sel = _bracketed_eligible(flat, ok, k, count, ordered, negate)
        if sel is not None:
            return sel
    if negate:
        flat = -flat
    if count == flat.numel():
        return _smallest_k(flat, k, ordered)
    # order only the eligible entries: filling the others with +inf would tie them with eligible
    # +inf or NaN scores, and the tie (by index) could then pick an ineligible one
    idx = ok.nonzero().squeeze(1)
    return idx[_smallest_k(flat[idx], k, ordered)]


def _bracketed_eligible(x: torch.Tensor, ok: torch.Tensor, k: int, count: int, ordered: bool, negate: bool = False):
    """:func:`_smallest_k` of the ``count`` entries of float ``x`` (over 2**16 entries; of ``-x``
    with ``negate``, read without negating ``x``) where ``ok`` holds, without gathering them (a
    ``nonzero`` of half of a layer's or a network's entries and a copy, then a k-th value, cost
    more than the selection): the k-th eligible value is bracketed from a strided sample of the
    eligible entries, the eligible ones below the bracket are taken whole and only those inside it
    sorted. The same indices as gathering first (in the
    same order when ``ordered``: by value, ties by index; unordered, in index order); None where
    the bracket misses or reaches the largest floats (+-inf, NaN and the largest floats tie or
    order there as :func:`_smallest_k` says): the caller gathers instead."""
    n = x.numel()
    stride = max(16, n >> 18)  # a sample of at most 2**18 entries, and a sixteenth of a smaller layer
    sample = x[::stride][ok[::stride]]
    m = sample.numel()
    if m < 1024:  # too few eligible entries in the sample to bracket
        return None
    sv = torch.sort(torch.nan_to_num(-sample if negate else sample, nan=float("inf"))).values
    q, slack = k / count, 6.0 / m**0.5
    lo, hi = sv[max(1, int((q - slack) * m)) - 1], sv[min(m, int((q + slack) * m) + 1) - 1]
    big = torch.finfo(x.dtype).max
    if not (-big < float(lo) and float(hi) < big):  # within the finite floats: NaN and +-inf lie outside
        return None
    # y = -x with negate: y <= hi is x >= -hi (NaN never); one pass over x finds the eligible entries up to the
    # bracket's top, in index order, and their own values tell those below it from those inside it
    upto = (x >= -hi) if negate else (x <= hi)
    idx = upto.logical_and_(ok).nonzero().squeeze(1)
    y = -x[idx] if negate else x[idx]
    inside = y >= lo
    pos = inside.nonzero().squeeze(1)  # (positions in idx of the entries inside the bracket)
    need = k - (idx.numel() - pos.numel())
    if need < 0 or need > pos.numel():
        return None
    pos = pos[_stable_argsort(y[pos])[:need]]  # ties at the k-th value: lowest index
    if not ordered:  # the whole selection, read in index order (what split() reads fastest)
        keep = inside.logical_not_()  # (in place: the entries below the bracket)
        keep[pos] = True
        return idx[keep]
    below = (~inside).nonzero().squeeze(1)
    # -inf ties with the lowest float, as in _smallest_k; ``below`` is in index order
    return torch.cat([idx[below[_stable_argsort(torch.nan_to_num(y[below]))]], idx[pos]])


def concat(d: Dict[str, torch.Tensor]):
    """Flatten per-layer tensors into one, remembering offsets for :func:`split`."""
    names = list(d)
    sizes = [d[n].numel() for n in names]
    flat = torch.cat([d[n].reshape(-1).float() if d[n].dtype != torch.bool else d[n].reshape(-1) for n in names])
    return flat, names, sizes


def split(indices: torch.Tensor, names, sizes, order_scores: Optional[torch.Tensor] = None):
    """Map flat global indices back to per-layer flat indices, keeping their order within a layer
    (one stable sort by layer, none where they come in layer order already, an unordered selection's
    index order; then ``torch.split``: no per-layer boolean passes)."""
    offsets = torch.tensor([0] + list(sizes), device=indices.device).cumsum(0)
    which = torch.bucketize(indices, offsets[1:], right=True)
    in_order = which.numel() < 2 or bool((which[1:] >= which[:-1]).all())
    perm = None if in_order else torch.argsort(which, stable=True)
    counts = torch.bincount(which, minlength=len(names)).tolist()
    local = indices - offsets[which]
    parts = torch.split(local if perm is None else local[perm], counts)
    out = {n: parts[i] for i, n in enumerate(names)}
    scores = {}
    if order_scores is not None:
        sparts = torch.split(order_scores if perm is None else order_scores[perm], counts)
        scores = {n: sparts[i] for i, n in enumerate(names)}
    return out, scores


# --------------------------------------------------------------------------- synapse-exact selection
# Densities are fractions of *synapses*, but policies pick *ensembles*, and ensembles can differ in
# size: a conv kernel holds k*k synapses where a Linear "kernel" holds one, neurons of different
# layers have different fan-ins, edge blocks of a block:RxC granularity are smaller. Counting
# ensembles then misses the requested density; these helpers count synapses instead.
# Synapse counts of ensembles of several sizes are summed in float64: float32 holds every whole number
# only up to 2**24 (16.8 million), and a network's live synapses pass that (ResNet-50, a ViT-S): a
# float32 cumsum on the GPU stops growing there (16777216 + 1 rounds back), and one on the CPU, though
# it adds in double, rounds each partial sum to steps of 2 or more, so a count missed its budget by
# more than half an ensemble. float64 counts whole numbers exactly up to 2**53.
EXACT = torch.float64


def ensemble_size(gran, shape):
    """Synapses per ensemble of a weight shaped ``shape``: a float when every ensemble of the layer
    has the same size (the common case), else a flat float tensor (block edges)."""
    # kept on the granularity object, not by its spec: a pattern registered again (unregistered, or
    # replace=True, or a notebook cell run again) builds another layout under the same spec; a
    # transposed convolution's TransposedLayout is its own object, its groups with it
    cache = vars(gran).setdefault("_ensemble_sizes", {}) if hasattr(gran, "__dict__") else {}
    key = tuple(shape)
    if key not in cache:
        if tuple(gran.ensemble_shape(shape)) == key:
            cache[key] = 1.0
        else:
            s = gran.ensemble_sizes(torch.Size(shape)).reshape(-1).float()
            cache[key] = float(s[0]) if bool((s == s[0]).all()) else s
    return cache[key]


def concat_sizes(ctrl, names, lengths):
    """Sizes of the ensembles of ``names`` laid out as :func:`concat` lays out their scores: a float
    when all are equal, else one flat tensor."""
    per = [ensemble_size(ctrl.conn.granularities[n], ctrl.conn.layers[n].shape) for n in names]
    if all(isinstance(s, float) for s in per) and len(set(per)) <= 1:
        return per[0] if per else 1.0
    return torch.cat([torch.full((k,), s) if isinstance(s, float) else s for s, k in zip(per, lengths)])


def per_synapse(scores: torch.Tensor, size) -> torch.Tensor:
    """``scores`` of whole ensembles (summed over their synapses) as values per synapse, the order
    in which ensembles of different sizes compete for a budget counted in synapses (a greedy
    knapsack: a 48-synapse neuron must not outrank a single weight by its size alone). Equal sizes:
    the scores unchanged (the order is the same)."""
    if isinstance(size, float):
        return scores
    return scores / size.to(scores.device, scores.dtype).reshape(scores.shape)


def size_sum(size, idx: torch.Tensor) -> float:
    """Synapses in the ensembles ``idx``."""
    if isinstance(size, float):
        return size * idx.numel()
    return float(size.to(idx.device)[idx].sum(dtype=EXACT)) if idx.numel() else 0.0


def max_count(size, budget: float, available: int) -> int:
    """How many ensembles (at most ``available``) :func:`take_synapses` may need for ``budget``."""
    if budget <= 0:
        return 0
    smallest = size if isinstance(size, float) else float(size.min())
    return max(0, min(int(available), math.ceil(budget / smallest + 0.5)))


def take_synapses(idx: torch.Tensor, size, budget: float) -> torch.Tensor:
    """The prefix of ``idx`` (ensembles, best first) whose synapse count is nearest to ``budget``
    (each ensemble is taken when more than half of it fits; one exactly half over is left): within half
    an ensemble of it."""
    if budget <= 0 or idx.numel() == 0:
        return idx[:0]
    if isinstance(size, float):
        return idx[: max(0, min(idx.numel(), math.ceil(budget / size - 0.5)))]
    # the sizes taken, then widened (whole numbers: exact in float32), and the half subtracted in place: two
    # float64 copies of the taken sizes at most, as much memory as float32 took (four copies), not a float64
    # copy of every size and four of the taken ones (800 MB, not 400 MB, at 25 million ensembles)
    s = size.to(idx.device)[idx].to(EXACT)
    return idx[: int(torch.count_nonzero(s.cumsum(0).sub_(s, alpha=0.5) < budget))]


def hold_count(value, live, size, target, can_grow, can_prune):
    """Ensembles to grow and to prune that bring the synapses of ``live`` (flat bool) back to
    ``target`` where they miss it by more than half an ensemble (the largest): the ``can_grow`` ones
    of highest ``value`` (per synapse), or the ``can_prune`` ones of lowest, each taken when more than
    half of it fits (:func:`take_synapses`). ``(grow, prune)``, best first; both empty within that
    tolerance, so a count already on its target is left as it is."""
    short = target - live_synapses(size, live)
    none = torch.zeros(0, dtype=torch.long, device=value.device)
    if abs(short) <= (size if isinstance(size, float) else float(size.max())) / 2:
        return none, none
    ok = (can_grow if short > 0 else can_prune).reshape(-1)
    pick = highest if short > 0 else lowest
    idx = take_synapses(pick(value, ok, max_count(size, abs(short), int(torch.count_nonzero(ok)))), size, abs(short))
    return (idx, none) if short > 0 else (none, idx)


def all_synapses(size, alive: torch.Tensor) -> float:
    """Synapses in all the ensembles laid out as ``alive``, live or not."""
    return size * alive.numel() if isinstance(size, float) else float(size.sum(dtype=EXACT))


def live_synapses(size, alive: torch.Tensor) -> float:
    a = alive.reshape(-1)
    if isinstance(size, float):
        return size * int(torch.count_nonzero(a))
    return float(size.to(a.device)[a].sum(dtype=EXACT))


def last_editing_update(ctrl) -> int:
    """The last update before ``end_step`` (which must be set): the edit fraction is 0 at end_step, so
    an update there edits nothing. Under ``max(1, start_step)``: no update can edit."""
    return ctrl.start_step + (ctrl.end_step - 1 - ctrl.start_step) // ctrl.update_every * ctrl.update_every


def warn_if_never_rewires(policy: "Policy", ctrl) -> None:
    """A rewiring policy (set, rigl, utility, balanced) whose updates all fall at or after
    ``end_step`` edits nothing there (the edit fraction is 0): dynamic sparse training would silently
    become static. Warned, as gmp and threshold warn of their own case."""
    if ctrl.end_step is None or last_editing_update(ctrl) >= max(1, ctrl.start_step):
        return
    if not getattr(ctrl.edit, "start", 1.0):  # edit_fraction=0: no rewiring asked for
        return
    warn_user(f"policy '{policy.name}': no update falls between start_step={ctrl.start_step} and end_step="
              f"{ctrl.end_step} with update_every={ctrl.update_every} (an update at end_step edits nothing), so the "
              "connectome never rewires and stays as it starts; lower update_every or move end_step later")


def reachable(ctrl, density: float, strict: bool = False) -> float:
    """``density``, or the density the network reaches with its editable layers full where they
    cannot make up their share of it: a protected layer holding fewer synapses than its share
    (emptied or pruned by hand) leaves them more than they hold. ``strict`` (at construction): a
    ValueError naming the reachable density and the fix instead. Mid-run the editable layers fill
    up to all they hold, with a warning (once per count) when ``density`` is the controller's own
    target (a schedule's intermediate densities above it, as gmp's near 1.0, are met as far as they go)."""
    prot = ctrl.protected_live()
    total = ctrl.conn.num_synapses()
    most = sum(prot.values()) + sum(ctrl.conn.layers[n].numel for n in ctrl.editable())
    if int(round(density * total)) <= most:
        return density
    if strict:
        raise too_high_error(density, prot, most, total)
    warned = ctrl.__dict__.setdefault("_warned_reach", set())
    if density == ctrl.density and most not in warned:
        warned.add(most)
        warn_user(f"density {density} is out of reach: the protected layers {sorted(prot)} hold "
                  f"{sum(prot.values()):,} live synapses and the other layers, full, {most - sum(prot.values()):,}, so "
                  f"the network stays at density {most / total:.4g} ({most:,} of the {int(round(density * total)):,} "
                  "synapses asked for); lower the density, or refill the protected layers (Connectome.set_masks) "
                  "or leave them out of protect=[...]")
    return most / total  # round(most / total * total) == most


def global_synapse_target(ctrl, density: float) -> int:
    """Live synapses of all editable layers together for ``density`` (protected layers count at the
    synapses they hold; at most all the editable layers hold, :func:`reachable`). Raises when the
    protected layers and the ``min_density`` floors alone exceed it."""
    density = reachable(ctrl, density)
    prot = sum(ctrl.protected_live().values())
    target = int(round(density * ctrl.conn.num_synapses()))
    floors = sum(layer_floors(ctrl).values())
    if prot + floors > target:
        raise too_low_error(density, ctrl.protected_live(), float(getattr(ctrl, "min_density", 0.0) or 0.0), prot + floors,
                            target, ctrl.conn.num_synapses(), least_floor_synapses(ctrl))
    return target - prot


def layer_floors(ctrl) -> Dict[str, int]:
    """Live synapses each editable layer keeps at least (``min_density`` of its synapses)."""
    md = float(getattr(ctrl, "min_density", 0.0) or 0.0)
    return {n: floor_synapses(md, ctrl.conn.layers[n].numel) for n in ctrl.editable()} if md > 0 else {}


def floor_protected(ctrl, scores: Dict[str, torch.Tensor], alive) -> Dict[str, torch.Tensor]:
    """Under the global budget with ``min_density``: the live ensembles of each layer that hold its
    floor, the most valuable first (highest keep scores, or highest removal costs), as bool masks;
    ``alive`` None: any ensemble may hold it (a keep plan). Ranking others across layers leaves these in place."""
    out = {}
    for n, floor in layer_floors(ctrl).items():
        if not floor or n not in scores:
            continue
        s = scores[n].reshape(-1)
        size = ensemble_size(ctrl.conn.granularities[n], ctrl.conn.layers[n].shape)
        ok = alive[n].reshape(-1).to(s.device) if alive is not None else torch.ones_like(s, dtype=torch.bool)
        order = highest(per_synapse(s, size), ok, max_count(size, floor, int(torch.count_nonzero(ok))) + 1)
        # whole ensembles until the floor is covered (rounding to the nearest would keep none of a
        # layer whose floor is under half an ensemble)
        if isinstance(size, float):
            n_keep = math.ceil(floor / size)
        else:
            took = size.to(order.device, EXACT)[order]
            n_keep = int(torch.count_nonzero(took.cumsum(0) - took < floor))
        m = torch.zeros_like(s, dtype=torch.bool)
        m[order[:n_keep]] = True
        out[n] = m.view(scores[n].shape)
    return out


def floor_mask(ctrl, scores: Dict[str, torch.Tensor], alive) -> Optional[torch.Tensor]:
    """:func:`floor_protected` laid out as :func:`concat` lays out ``scores`` (one flat bool
    tensor), or None where no layer has a floor."""
    held = floor_protected(ctrl, scores, alive)
    if not held:
        return None
    return concat({n: held.get(n, torch.zeros_like(scores[n], dtype=torch.bool)) for n in scores})[0]


def _check_budget(ctrl, density: float, counts) -> None:
    """A layer budget's counts against its contract (adaptive.budgets): an integer per layer, none
    above its layer's size, adding up to round(density * total) (to the ensembles' rounding)."""
    name = getattr(ctrl, "budget", "?")
    layers = ctrl.conn.layers
    if not isinstance(counts, dict):
        raise ValueError(f"layer budget {name!r} returned {type(counts).__name__}: a dict of live synapses per layer "
                         "(or None for one network-wide ranking)")
    missing = [n for n in layers if n not in counts]
    bad = [n for n in layers if n in counts and not (isinstance(counts[n], numbers.Integral) and not isinstance(counts[n], bool)
                                                      and 0 <= counts[n] <= layers[n].numel)]
    target = int(round(density * sum(l.numel for l in layers.values())))
    total = sum(int(counts[n]) for n in layers if n in counts and n not in bad)
    if missing or bad or total != target:
        raise ValueError(
            f"layer budget {name!r} broke its contract at density {density}: "
            + "; ".join(filter(None, [f"no count for {missing[:3]}" if missing else "",
                                      f"counts outside 0..size for {bad[:3]}" if bad else "",
                                      f"counts add up to {total:,}, not {target:,}" if not missing and not bad and total != target else ""]))
            + " (a budget returns {layer: live synapses}, integers within each layer's size adding up to "
            "round(density * total))")


def synapse_targets(ctrl, density: float, strict: bool = False):
    """Live synapses per editable layer for ``density`` under the controller's budget, or, for the
    global budget, ``None`` and the live synapses of all editable layers together. A density the
    editable layers cannot make up even when full is met as far as they go, or with ``strict`` (at
    construction) refused (:func:`reachable`)."""
    density = reachable(ctrl, density, strict)
    floors = layer_floors(ctrl)
    if strict and floors:  # the floors, bare and in whole ensembles, before the budget's own check of the bare
        # floors (which named a density the whole ensembles then refused), each naming the density both take
        check_whole_floors(ctrl, density, global_synapse_target(ctrl, density))
    counts = ctrl.budget_fn(ctrl.conn.layers, density, protected=ctrl.protected_live(), min_density=ctrl.min_density)
    if counts is not None:
        _check_budget(ctrl, density, counts)
        return {n: whole_floor_count(ctrl, n, counts[n], floors.get(n, 0)) for n in ctrl.editable()}, None
    return None, global_synapse_target(ctrl, density)


def whole_floor_count(ctrl, name: str, count: int, floor: int) -> int:
    """Layer ``name``'s budget ``count`` (live synapses), raised where whole ensembles nearest to it
    would hold fewer than its ``min_density`` ``floor``: a layer budget's count is met to within half
    an ensemble, which rounded a count at the floor of a layer of coarse ensembles (3 synapses in
    40-synapse neurons) down to none and emptied the layer that the floor keeps. The raised count is
    the floor held in whole ensembles, as the global budget holds it (:func:`floor_protected`): the
    fewest that hold it (equal ensembles), or the floor plus half the largest (unequal ones, block
    edges), which :func:`take_synapses` never rounds under the floor."""
    if floor <= 0:
        return count
    size, numel = ensemble_size(ctrl.conn.granularities[name], ctrl.conn.layers[name].shape), ctrl.conn.layers[name].numel
    cover = floor_cover(size, numel, floor)
    if isinstance(size, float):  # the whole ensembles nearest to count hold the floor
        holds = max(0, math.ceil(count / size - 0.5)) * size >= floor
    else:  # (take_synapses never rounds a count of the cover or more under the floor)
        holds = count >= cover
    if holds:
        return count
    return min(numel, int(math.ceil(cover)))


def check_whole_floors(ctrl, density: float, target: int, who: str = "") -> None:
    """Refuse a target the ``min_density`` floors cannot make room for once held in whole ensembles
    (``target``: the live synapses of the editable layers, :func:`global_synapse_target`). A layer's
    floor is held by whole ensembles (:func:`floor_protected`): a neuron or a kernel rounds it up (a
    floor of 5 synapses in 20-synapse neurons keeps 20), which the synapse count of
    :func:`global_synapse_target` leaves out; past the target, a ranking met the target by breaking a
    floor (a Linear of 128-synapse neurons with a floor of 32 was emptied) or ended above it. Each
    layer counts at :func:`floor_cover`; a layer under its floor counts what it holds. The error names
    the lowest density that holds them (:func:`least_floor_synapses`)."""
    held, largest = _whole_floors_held(ctrl)
    if held > target + largest / 2:
        total = ctrl.conn.num_synapses()
        least = least_floor_synapses(ctrl) / total
        raise_to = f"raise the density to {rounded_up_text(least)} or more" if least <= 1 else "raise the density"
        raise ValueError(f"{who}density {density} is too low for min_density {ctrl.min_density} held in whole "
                         f"ensembles: each layer's floor rounds up to whole ensembles, which alone keep {int(held):,} of "
                         f"the {target:,} live synapses the editable layers may hold; {raise_to} or lower "
                         "min_density or use smaller ensembles")


def _whole_floors_held(ctrl):
    """The live synapses the editable layers' ``min_density`` floors keep in whole ensembles (each at
    :func:`floor_cover`, a layer under its floor at what it holds) and the largest ensemble's size (at
    least 1), as :func:`check_whole_floors` counts them."""
    held, largest = 0.0, 1.0
    for n, floor in layer_floors(ctrl).items():
        size = ensemble_size(ctrl.conn.granularities[n], ctrl.conn.layers[n].shape)
        largest = max(largest, size if isinstance(size, float) else float(size.max()))
        held += min(floor_cover(size, ctrl.conn.layers[n].numel, floor), int(torch.count_nonzero(ctrl.conn.masks[n])))
    return held, largest


def least_floor_synapses(ctrl) -> int:
    """The fewest live synapses of the whole network (protected layers at what they hold) at which the
    ``min_density`` floors hold, both as synapse counts (:func:`global_synapse_target`, a layer budget)
    and in whole ensembles (:func:`check_whole_floors`): a density's refusal names this over the network's
    synapses, so that the density it names is accepted (with ensembles of several synapses, the bare floors'
    density was then refused for the whole ones)."""
    prot = sum(ctrl.protected_live().values())
    bare = sum(layer_floors(ctrl).values())
    held, largest = _whole_floors_held(ctrl)
    return prot + max(bare, math.ceil(held - largest / 2))


def floor_cover(size, numel: int, floor: int) -> float:
    """The live synapses that hold a layer's ``floor`` in whole ensembles (``size``: its ensembles' sizes,
    :func:`ensemble_size`; ``numel``: its synapses), as :func:`check_whole_floors` counts them and
    :func:`whole_floor_count` holds them: the fewest equal ensembles that hold it, or, for unequal ones (block
    edges), the floor plus half the largest, at most the layer's synapses (a bare floor undercounted them: the
    most valuable block holding a floor of 1 synapse in 3x3 blocks keeps 9, and four layers were emptied for it)."""
    if isinstance(size, float):
        return math.ceil(floor / size) * size
    return min(float(numel), floor + float(size.max()) / 2)


def _keep_top(scores: torch.Tensor, size, budget: float) -> torch.Tensor:
    """Bool mask of the highest-scoring ensembles of flat ``scores`` holding ``budget`` synapses
    (:func:`take_synapses` of the ensembles ranked best first)."""
    flat = scores.reshape(-1)
    ones = torch.ones_like(flat, dtype=torch.bool)
    count = max_count(size, budget, flat.numel())
    k = torch.zeros(flat.numel(), dtype=torch.bool, device=flat.device)
    if isinstance(size, float):
        # equal ensembles: take_synapses keeps a prefix of a known length, and a prefix of the
        # ranking is the top of that length, a set that a mask holds without its order (cheaper)
        take = min(count, math.ceil(budget / size - 0.5)) if budget > 0 and count > 0 else 0
        if take >= flat.numel():  # all of them (a schedule's first update keeps every ensemble): no selection
            k.fill_(True)
        elif take > 0:
            k[highest(flat, ones, take, ordered=False)] = True
        return k
    # unequal ensembles: which prefix fits the budget depends on the order
    k[take_synapses(highest(flat, ones, count), size, budget)] = True
    return k


def _hold_network(ctrl, keep_scores, keep, density, alive, allow_grow):
    """``keep`` (per layer, each layer on its own target) with the network's count brought to
    :func:`global_synapse_target` by :func:`hold_count`, ensembles ranked by score per synapse.
    Without ``allow_grow`` an absent ensemble in ``keep`` stays absent: only live ones count, and
    only live ones are kept or let go."""
    flat, names, sizes = concat(keep_scores)
    size = concat_sizes(ctrl, names, sizes)
    k = concat(keep)[0].to(flat.device)
    a = concat({n: alive[n].reshape(keep_scores[n].shape) for n in names})[0].to(k.device)
    can_keep = torch.ones_like(a) if allow_grow else a
    held = floor_mask(ctrl, keep_scores, None if allow_grow else alive)  # (an absent one, never grown, holds no floor)
    can_drop = k & can_keep if held is None else k & can_keep & ~held.to(k.device)
    grow, drop = hold_count(per_synapse(flat, size), k & can_keep, size, global_synapse_target(ctrl, density),
                            ~k & can_keep, can_drop)
    if not grow.numel() and not drop.numel():
        return keep
    k[grow], k[drop] = True, False
    return {n: part.view(keep_scores[n].shape) for n, part in zip(names, torch.split(k, sizes))}




def live_first(scores: Dict[str, torch.Tensor], alive: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """``scores`` (one per ensemble of each layer) with every absent ensemble marked -inf, below every
    live one, for a keep plan that keeps live ensembles only (an absent one kept in place of a live one
    leaves the network below its target). A live score of -inf (an estimator may give it) becomes the
    float just above the lowest finite one: the selection reads -inf as the lowest finite float, so a
    live -inf tied with the absent ones, broken by index, and an absent one ahead of it was kept in its
    place. The order among the live ones is kept (an exact lift, no rounding)."""
    low = float(torch.nextafter(torch.tensor(torch.finfo(torch.float32).min), torch.tensor(0.0)))
    return {n: torch.where(alive[n].to(s.device).reshape(s.shape), s.float().clamp_min(low), float("-inf"))
            for n, s in scores.items()}


def keep_live(ctrl, costs: Dict[str, torch.Tensor], alive: Dict[str, torch.Tensor], density: float,
              at_least: Optional[Dict[str, int]] = None) -> EditPlan:
    """The plan that only prunes to ``density``, keeping the live ensembles costliest to remove
    (``costs``: :meth:`Controller.scores <adaptive.controller.Controller.scores>`'s removal costs; an
    absent ensemble is never kept, :func:`live_first`), carrying the estimator's own costs of what it
    prunes (a -inf reported as such, not as the lifted float it was ranked at). ``at_least``: live
    synapses per layer a layer budget's count is not taken under (:func:`keep_plan`)."""
    plan = keep_plan(ctrl, live_first(costs, alive), density, at_least=at_least)
    plan.prune_scores = {n: costs[n].reshape(-1)[idx.to(costs[n].device)] for n, idx in plan.prune.items()}
    return plan


def plan_density(ctrl, density) -> float:
    """``density`` as the float a keep plan is made for: a number in [0, 1] (an int, a numpy number or
    a one-value tensor too; float error past either end is taken as that end). Anything else (a
    policy's own schedule giving -0.3, 1.5, NaN or "0.5") is a ValueError naming the policy and the
    value, raised before the plan is made, so before any mask changes."""
    d = unit_fraction(density)
    if d is not None:
        return d
    policy = getattr(ctrl, "policy", None)
    name = getattr(policy, "name", "?")
    raise ValueError(f"policy {name!r} ({type(policy).__name__}) asked for a keep plan at density {density!r}: a "
                     "density is the fraction of synapses kept, a number in [0, 1]; fix the policy's schedule (the "
                     "controller's own target is ctrl.density)")


def keep_plan(ctrl, keep_scores: Dict[str, torch.Tensor], density: float, allow_grow: bool = False,
              network: bool = False, estimates: bool = False, at_least: Optional[Dict[str, int]] = None) -> EditPlan:
    """A plan keeping the highest-scoring ensembles (``keep_scores``: one score per ensemble of each
    layer) at ``density`` (a fraction of synapses) under ``ctrl``'s budget, to within half an ensemble per layer (per connectome for the global
    budget); n:m granularities keep the top n of every m. ``network``: under a layer budget, the
    network's count is held too (for a policy that holds it, balanced): where the layers' roundings
    to whole ensembles add up to more than half an ensemble (the largest), the best of the rest
    across layers are kept, or the worst kept ones above each layer's floor let go
    (:func:`hold_count`). Absent ensembles among the kept are grown only with ``allow_grow`` (else
    the plan only prunes). Pruned indices are ordered lowest score first, grown ones highest first.
    ``estimates``: ``keep_scores`` are the estimators' own scores (as :meth:`Controller.scores
    <adaptive.controller.Controller.scores>` gives them: removal costs of the live ensembles,
    restoration gains of the absent ones), so the plan carries each edit's score as its
    ``prune_scores``/``grow_scores``, which the event reports (a loss change only where the estimator
    is a loss model, else in its own units: ControllerReportsMixin._estimates). Leave it False for
    scores of any other kind (shifted or rescaled ones, an init's magnitudes): the plan then
    carries none. A ``density`` outside [0, 1] is refused naming the policy (:func:`plan_density`).
    ``at_least``: under a layer budget, live synapses per layer its count is raised to where the budget
    gives fewer (a pruning schedule holds each layer at its final count or above: the budget's rounding is
    not monotone in the density, so a layer could be cut under the count it was given at the end)."""
    density = plan_density(ctrl, density)
    alive = ctrl.alive()
    keep: Dict[str, torch.Tensor] = {}

    if ctrl.conn.fixed_density is not None:
        keep = {n: ctrl.conn.granularities[n].select(keep_scores[n]) for n in keep_scores}
    else:
        per_layer, total = synapse_targets(ctrl, density)
        if per_layer is not None and at_least:
            per_layer = {n: max(c, at_least.get(n, 0)) for n, c in per_layer.items()}
        if per_layer is None:
            flat, names, sizes = concat(keep_scores)
            size = concat_sizes(ctrl, names, sizes)
            ranked = per_synapse(flat, size)
            # a plan that only prunes holds each floor with live ensembles: an absent one there is
            # never grown, and holding the floor it would take budget a present one elsewhere needs
            held = floor_mask(ctrl, keep_scores, None if allow_grow else alive)
            if held is not None:  # each layer's floor first, then the best of the rest across layers
                # (the others at most the float below the largest: the selection reads +inf as the largest
                # float, so an estimator's +inf tied with the floors, by index, and took a floor's place)
                top = float(torch.nextafter(torch.tensor(torch.finfo(torch.float32).max), torch.tensor(0.0)))
                ranked = torch.where(held.to(ranked.device), float("inf"), ranked.clamp_max(top))
            k = _keep_top(ranked, size, total)
            if held is not None:
                # every ensemble holding a floor, even where the floors together reach past the target (by at most
                # half an ensemble, check_whole_floors): the ranking's cut at the target fell inside them and left
                # the last layers' below their floors, or empty
                k |= held.to(k.device)
            for n, part in zip(names, torch.split(k, sizes)):
                keep[n] = part.view(keep_scores[n].shape)
        else:
            for n, s in keep_scores.items():
                size = ensemble_size(ctrl.conn.granularities[n], ctrl.conn.layers[n].shape)
                keep[n] = _keep_top(per_synapse(s, size), size, per_layer[n]).view(s.shape)
            if network:
                keep = _hold_network(ctrl, keep_scores, keep, density, alive, allow_grow)
    plan = EditPlan()
    for n, k in keep.items():
        a = alive[n].reshape(-1).to(k.device)
        kf = k.reshape(-1)
        s = keep_scores[n].reshape(-1)
        drop = a & ~kf
        if bool(drop.any()):
            idx = drop.nonzero().squeeze(1)
            v = s[idx]
            order = _stable_argsort(v)  # (torch.argsort(v, stable=True) exactly: int32 keys, 2-3x faster)
            plan.prune[n] = idx[order]
            if estimates:
                plan.prune_scores[n] = v[order]
        if allow_grow:
            grow = ~a & kf
            if bool(grow.any()):
                idx = grow.nonzero().squeeze(1)
                v = s[idx]
                order = _stable_argsort(-v)
                plan.grow[n] = idx[order]
                if estimates:
                    plan.grow_scores[n] = v[order]
    return plan
