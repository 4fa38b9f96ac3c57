"""The targets of :func:`adaptive.mask_only.optimize_connectome`: parsed, named, and resolved to removal counts.

A target is a removal count (int), a fraction of the synapses (float in [0, 1)) or ``"best"``; numpy and
torch numbers count as the Python numbers they hold (several: a list, a tuple, a 1-D array or tensor). A
positive target must remove at least one ensemble beyond the start (:func:`refuse_removing_nothing`). :func:`check_targets` and :func:`count_synapses`
answer, before any data is read, what the optimisation would refuse and what its targets count.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from .connectome import Connectome, _plain_module, _plain_patterns
from .counts import fraction_bound, real_number, whole_number
from .discovery import discover
from .metrics import fmt_unsaturated
from .mask_only_start import refuse_below_start, sparse_start, zero_weights

Target = Union[int, float, str]


def _label(t: Target) -> str:
    """A target's name: as written for a string, ``:g`` for a float, the count for a whole number; a
    value that is no target (None, a list) by its repr, so that the refusal naming it can be given."""
    if isinstance(t, str):
        return t
    if isinstance(t, float):
        return f"{t:g}"
    count = whole_number(t)
    return str(count) if count is not None else repr(t)


def _plain_number(t):
    """A numpy or torch number as the Python int (a whole-number type) or float it holds; anything
    else (strings, bools, Python numbers, other objects) as it is."""
    if isinstance(t, (str, bool, int, float)):
        return t
    if getattr(t, "ndim", None) == 0 and hasattr(t, "item") and not isinstance(t, torch.Tensor):
        t = t.item()  # a 0-d NumPy array: the number it holds (np.array(0.2) as 0.2)
        if isinstance(t, (bool, int, float)):
            return t
    count = whole_number(t)
    if count is not None:
        return count
    return float(t) if _is_real(t) else t


def _is_real(x) -> bool:
    """:func:`adaptive.counts.real_number`, the package's one check of a real number, by the name the mask-only
    modules import."""
    return real_number(x)


def _labels(targets) -> List[str]:
    """Each target's name (the snapshot key, the recipe's subfolder): short, and distinct even for
    fractions that print alike at 6 figures (0.1000108, 0.10001085: then written in full)."""
    targets = [_plain_number(t) for t in targets]  # np.float32(0.25) is "0.25", not int()'s "0"
    labels = [_label(t) for t in targets]
    if len(set(labels)) < len(labels):
        labels = [repr(float(t)) if isinstance(t, float) else lab for t, lab in zip(targets, labels)]
    return labels


def parse_target(target: Target) -> Target:
    """``target`` checked without a model: "best", a fraction in [0, 1) (a string with a decimal
    point or an exponent, or a float: numpy and torch floats too) or a count >= 0 (an int: numpy and
    torch integers too; never a bool). Raises ValueError naming the fix."""
    target = _plain_number(target)  # np.int64(30) is the count 30, np.float32(0.25) the fraction 0.25
    if isinstance(target, str) and target != "best":
        try:
            target = float(target) if any(ch in target for ch in ".eE") else int(target)
        except ValueError:
            raise ValueError(f"target {target!r}: give a fraction in [0, 1) (0.2), a count of synapses (50000) "
                             "or 'best'") from None
    if isinstance(target, str):
        return target
    if isinstance(target, bool) or not isinstance(target, (int, float)):
        raise ValueError(f"target {target!r}: give a fraction in [0, 1) (0.2), a count of synapses (50000) or 'best'")
    if target != target or target in (float("inf"), float("-inf")):
        raise ValueError(f"target {target}: give a fraction in [0, 1) (0.2), a count of synapses (50000) or 'best'")
    if target < 0:
        raise ValueError(f"target {target} cannot be negative: give a fraction in [0, 1) or a count >= 0")
    if isinstance(target, float) and target >= 1.0:
        count = (f": for the count of {int(target)} synapses give it as a whole number ({int(target)}), with no "
                 "decimal point or exponent" if target.is_integer() and target > 1 else
                 ": give a fraction below 1 (0.5 removes half the prunable synapses) or a whole count of synapses (50000)")
        raise ValueError(f"target fraction {target} must be in [0, 1){count}")
    return target


def one_synapse_note(targets, option: str) -> Optional[str]:
    """A note where the whole number 1 is the only target (``--remove 1``) or the only count among
    fractions (``--remove 0.5 1``): a count, so one synapse removed, where a user may have meant every
    synapse (a fraction of 1, which is no valid target). ``targets``: one target or a list of them;
    ``option``: the option that gave them. None otherwise (``--remove 1 100``: counts)."""
    listed = list(targets) if isinstance(targets, (list, tuple)) else [targets]
    try:
        parsed = [parse_target(t) for t in listed]
    except ValueError:  # refused elsewhere, with its own message
        return None
    counts = [t for t in parsed if isinstance(t, int)]
    if counts != [1] or any(isinstance(t, str) for t in parsed):  # (the rest fractions: parse_target's kinds)
        return None
    return (f"note: {option} 1 removes one synapse (a whole number is a count of synapses); for a fraction give "
            f"0.5 and so on (1.0, every synapse, is no valid target)")


def resolve_target(target: Target, total: int) -> Optional[int]:
    """Synapses to remove for ``target`` (None for "best"). Raises ValueError on a bad target."""
    target = parse_target(target)
    if target == "best":
        return None
    if isinstance(target, float):
        count = int(round(target * total))
        if count >= total:  # a fraction below 1 that rounds to every synapse, as the count would be
            raise ValueError(f"target fraction {target!r} removes round({target!r} x {total:,}) = {count:,} synapses, every "
                             f"one of the model's {total:,} prunable synapses: give a fraction of at most "
                             f"{fraction_bound(total - 1, total, most=True)}, or a count below {total}")
        return count
    if target >= total:  # as a fraction must be below 1: removing every synapse leaves no network
        raise ValueError(f"target of {target:,} synapses to remove {'is every one of' if target == total else 'is beyond'} "
                         f"the model's {total:,} prunable synapses: give a count below {total}")
    return int(target)


@dataclass(frozen=True)
class EnsembleStep:
    """The ensembles a stage removes whole: ``smallest`` and ``largest`` are the synapses of the
    smallest and the largest ensemble of the connectome (1 and 1 at ``synapse`` granularity), and
    ``ensemble`` its granularity as given (for messages)."""

    smallest: int = 1
    largest: int = 1
    ensemble: str = "synapse"

    @property
    def least(self) -> int:
        """The fewest synapses a stage must remove beyond its start to remove an ensemble at all: a stage
        removes whole ensembles, the nearest to its count (each taken where at least half of it fits, a
        smaller size at a stage's end too: see :class:`adaptive.policies.crawl.Crawl`), so a count of under
        half the smallest ensemble removes none: half of it, rounded up (exactly half is a tie the stage settles
        by pruning, a restore needs more than half; with ensembles of several sizes the last update's fill
        takes one of the smallest then, where it once took one only when it came first in the estimator's order)."""
        return (self.smallest + 1) // 2


def ensemble_step(conn: Connectome) -> EnsembleStep:
    """The :class:`EnsembleStep` of ``conn`` (the synapses of its smallest and largest ensemble, over every layer)."""
    smallest, largest = None, 1
    for n in conn.names:
        sizes = conn.granularities[n].ensemble_sizes(torch.Size(conn.layers[n].shape))
        lo, hi = (int(round(float(v))) for v in (sizes.min(), sizes.max()))
        smallest, largest = (lo if smallest is None else min(smallest, lo)), max(largest, hi)
    return EnsembleStep(smallest or 1, largest, str(conn.ensemble))


def refuse_removing_nothing(label: str, target, removed: int, total: int, absent: int, step: EnsembleStep) -> None:
    """Refuse a positive target (``label``, ``target`` as parsed) that removes ``removed`` synapses of
    ``total`` in all, where that is too few to remove one ensemble (``step``) beyond the ``absent`` ones of
    a sparse start: its stage would remove nothing, and its snapshot silently be the starting network
    (a fraction of 1e-9 that rounds to 0 synapses, a count of 1 with ensembles of 9). A target of 0 (of a
    sparse start's absent count: the start itself) is left alone: it asks for that network."""
    if target == 0 or (absent and removed == absent) or removed >= absent + step.least:
        return
    what = f"round({label} x {total:,}) = {removed:,}" if isinstance(target, float) else f"{removed:,}"
    beyond = f" ({removed - absent:,} beyond the {absent:,} already absent)" if absent else ""
    start = "the dense network" if not absent else "the starting network"
    if step.least == 1:
        why = ""
    else:
        sizes = (f"{step.smallest:,} synapses each" if step.smallest == step.largest else
                 f"{step.smallest:,} to {step.largest:,} synapses each")
        why = (f", but its '{step.ensemble}' ensembles hold {sizes} and a stage removes whole ensembles, the "
               "nearest to its count (within half an ensemble): it would remove none")
    one = "one synapse" if step.least == 1 else "one ensemble"
    need = absent + step.least
    fix = (f"give a fraction of at least {fraction_bound(need, total, most=False)} or a count of at least {need} "
           f"(the least that removes {one}{' beyond the start' if absent else ''})" if need < total else
           "no target below every synapse removes one more ensemble")
    raise ValueError(f"target {label} asks for {what} of the model's {total:,} prunable synapses{beyond}{why}, so its "
                     f"snapshot would be {start}, unchanged. {fix[0].upper() + fix[1:]}; for "
                     f"{start} itself give {absent if absent else 0}")


def landing(removed: int, absent: int, step: EnsembleStep) -> Optional[int]:
    """The synapses a stage asked to remove ``removed`` in all ends with, from a start of ``absent``, where
    the connectome's ensembles are all of one size (``step``): the nearest whole number of them beyond the
    start, exactly half one rounded up (a tie the stage settles by pruning: :attr:`EnsembleStep.least`).
    None for ensembles of several sizes, where it depends on the estimator's order."""
    if step.smallest != step.largest:
        return None
    size = step.smallest
    return absent + size * ((removed - absent + size // 2) // size)


def refuse_indistinct(resolved: List[Tuple[str, Optional[int]]], parsed: Dict[str, Target], total: int, absent: int,
                      step: EnsembleStep) -> None:
    """Refuse two targets (``resolved``: ``(label, synapses to remove)``, fewest first; ``parsed``: each
    label's target as parsed) that ``step``'s ensembles cannot tell apart: with ensembles of one size, two
    that land on one count (:func:`landing`: 100 and 103, or 96 and 104, with ensembles of 10 both remove
    100); of several sizes, two less than :attr:`EnsembleStep.least` apart, half the smallest (the later stage
    may remove none: where the earlier lands depends on the estimator's order).
    Their snapshots would be one network under two names, silently (as :func:`refuse_removing_nothing` for
    one target against the start)."""
    if step.least == 1:  # single synapses: every count is a network of its own
        return
    for (a, ra), (b, rb) in zip(resolved, resolved[1:]):
        if ra is None or rb is None:
            continue
        lands = landing(ra, absent, step)
        one = lands is not None
        if (lands != landing(rb, absent, step)) if one else rb - ra >= step.least:
            continue
        def asks(label, r):
            return f"round({label} x {total:,}) = {r:,}" if isinstance(parsed[label], float) else f"{r:,}"
        sizes = (f"{step.smallest:,} synapses each" if one else f"{step.smallest:,} to {step.largest:,} synapses each")
        what = (f"both would remove {lands:,}, so their snapshots would be" if one else
                f"they are {rb - ra:,} apart, under half the smallest, so the later stage may remove none and "
                "their snapshots may be")
        need = (lands + step.least) if one else ra + step.least
        fix = (f"give target {b} as a count of at least {need} or a fraction of at least "
               f"{fraction_bound(need, total, most=False)} (the least that removes one ensemble more than target {a}"
               f"{', which removes ' + format(lands, ',') if one else ''})" if need < total else
               f"no target below every synapse removes one ensemble more than target {a}")
        raise ValueError(f"targets {a} and {b} ask for {asks(a, ra)} and {asks(b, rb)} of the model's {total:,} prunable "
                         f"synapses, but its '{step.ensemble}' ensembles hold {sizes} and a stage removes whole "
                         f"ensembles, the nearest to its count (within half an ensemble): {what} one network. "
                         f"{fix[0].upper() + fix[1:]}; or leave one of them out")


def _resolve_targets(targets: list, total: int, start=None, step: EnsembleStep = EnsembleStep()) -> List[Tuple[str, Optional[int]]]:
    """``(label, synapses to remove)`` of each target against ``total`` synapses, fewest first ("best":
    None, on its own); a target beyond them, "best" among others, two removing the same count, one
    removing fewer than are absent at ``start`` (a :class:`~adaptive.mask_only_start.Start`), a
    positive one too small to remove one ensemble (``step``: :func:`refuse_removing_nothing`), or two that
    ``step``'s ensembles cannot tell apart (:func:`refuse_indistinct`) is refused
    (ValueError; one of several named with its position)."""
    resolved = []
    absent = start.absent if start is not None else 0
    for i, (t, lab) in enumerate(zip(targets, _labels(targets))):
        try:
            r = resolve_target(t, total)
            if start is not None and r is not None:
                refuse_below_start(lab, r, start)
            if r is not None:
                refuse_removing_nothing(lab, parse_target(t), r, total, absent, step)
        except ValueError as e:
            if len(targets) == 1:
                raise
            # one of several (a recipe's --remove 0.5 0.9999): which one, as given, and where it stands
            given = t if isinstance(t, str) else lab
            raise ValueError(f"target {i + 1} of {len(targets)} ({given}) in {_listing(targets)}: {e}; or leave that "
                             "target out") from None
        resolved.append((lab, r))
    if any(r is None for _, r in resolved) and len(resolved) > 1:
        raise ValueError("'best' cannot be combined with other targets: run it on its own")
    counts: Dict[int, str] = {}
    for label, r in resolved:
        if r is not None and r in counts:
            raise ValueError(f"targets {counts[r]} and {label} both remove {r:,} synapses: give each target once")
        counts.setdefault(r, label)
    resolved = sorted(resolved, key=lambda lr: -1 if lr[1] is None else lr[1])
    refuse_indistinct(resolved, dict(zip(_labels(targets), map(parse_target, targets))), total, absent, step)
    return resolved


def _listing(values) -> str:
    """``values`` (targets or ladder rungs) as the user wrote them: ``[0.5, 0.9999]``."""
    return "[" + ", ".join(v if isinstance(v, str) else _label(_plain_number(v)) for v in values) + "]"


def ladder_counts(ladder: List[float], total: int) -> List[int]:
    """The synapses each rung of ``ladder`` (removal fractions in (0, 1), checked) removes of ``total``:
    a rung that rounds to every synapse is refused (ValueError naming the rung, its value and position,
    and the largest fraction that keeps a synapse). (A rung that rounds to 0 removed keeps its stage, as
    the first candidate after the dense network.)"""
    counts = []
    for i, f in enumerate(ladder):
        count = int(round(f * total))
        if count >= total:
            raise ValueError(f"ladder rung {i + 1} of {len(ladder)} ({f:g}) in {_listing(ladder)} removes "
                             f"round({f:g} x {total:,}) = {count:,} synapses, every one of the model's {total:,} prunable "
                             f"synapses: give the ladder's fractions at most {fraction_bound(total - 1, total, most=True)} (a rung must "
                             "keep a synapse), or leave that rung out")
        counts.append(count)
    return counts


def check_targets(model: nn.Module, target: Union[Target, Sequence[Target]], include=None, exclude=None,
                  ensemble="synapse", ladder: Optional[Sequence[float]] = None) -> None:
    """Refuse, with :func:`~adaptive.mask_only.optimize_connectome`'s error and before any data is read, the ``target``
    (one or several) it would refuse on ``model`` with ``include``/``exclude``/``ensemble``: a count
    of every prunable synapse or more (or a fraction rounding to one), "best" among others, two
    targets removing the same count, a positive one too small to remove one ensemble (a fraction of
    1e-9), one removing fewer synapses than a sparse model has already
    lost (ensembles whose weights are all exactly 0.0: :mod:`adaptive.mask_only_start`), and, given the
    ``ladder`` (the run's), target "best" on such a model when every rung removes no more than it has lost. Counts the
    synapses without building a connectome (but where some weight is exactly 0.0), of the module a
    wrapper runs (``torch.compile``, DistributedDataParallel), as the connectome does (its names carry no
    ``_orig_mod.`` or ``module.``)."""
    targets = listed_targets(target)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # discovery's warnings are the connectome's to give, once
        found = discover(_plain_module(model), _plain_patterns(model, include), _plain_patterns(model, exclude))
    start, step, conn = None, EnsembleStep(), None
    sparse = zero_weights({n: p for n, (_, p) in found.items()})
    if sparse or ensemble != "synapse":  # what is already absent, or ensembles of several synapses
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            conn = Connectome(model, ensemble=ensemble, include=include, exclude=exclude)
        step = ensemble_step(conn)
        start = sparse_start(conn) if sparse else None
    del conn
    total = sum(p.numel() for _, p in found.values())
    resolved = _resolve_targets(targets, total, start, step)
    if ladder and resolved[0][1] is None:  # "best" climbs the ladder
        ladder_counts([float(f) for f in ladder], total)
        if start is not None and start.absent:
            rungs_above([float(f) for f in ladder], total, start)


def count_synapses(model: nn.Module, include=None, exclude=None) -> int:
    """The prunable synapses a connectome of ``model`` with ``include``/``exclude`` would hold, counted
    without building one (of the module a wrapper runs, as the connectome does): what targets count. Quietly:
    discovery's warnings (a parametrized weight left dense, ...) are the connectome's to give, once."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return sum(p.numel() for _, p in discover(_plain_module(model), _plain_patterns(model, include), _plain_patterns(model, exclude)).values())


def listed_targets(target) -> list:
    """``target`` (one target, or a list or tuple of them; a 1-D NumPy array or tensor too) as a
    non-empty list; another collection (a set, a dict, a generator) is refused (ValueError)."""
    if isinstance(target, (list, tuple)):
        targets = list(target)
    elif getattr(target, "ndim", None) == 0:  # a 0-d NumPy array or tensor: one target
        targets = [target]
    elif getattr(target, "ndim", None) == 1 and hasattr(target, "tolist"):  # np.array([0.2, 0.5]), a tensor
        targets = target.tolist()
    elif getattr(target, "ndim", 0) or (not isinstance(target, (str, bytes, torch.Tensor))
                                        and hasattr(target, "__iter__")):
        raise ValueError(f"target {target!r}: give one target (a fraction in [0, 1) such as 0.2, a count of synapses "
                         "such as 50000, or 'best') or a list of them ([0.2, 0.5])")
    else:
        targets = [target]
    if not targets:
        raise ValueError("give at least one target")
    return targets


def rungs_above(ladder: List[float], total: int, start) -> List[float]:
    """The rungs of ``ladder`` that remove more of ``total`` synapses than are absent at ``start`` (a
    sparse :class:`~adaptive.mask_only_start.Start`): those target "best" climbs; ValueError if none does."""
    rungs = [f for f, count in zip(ladder, ladder_counts(ladder, total)) if count > start.absent]
    if not rungs:
        raise ValueError(f"target 'best': every rung of the ladder {ladder} removes no more than the {start.absent:,} "
                         f"of {total:,} synapses ({fmt_unsaturated(100 * start.absent / total, '.1f')}%) already absent (weights exactly 0.0), "
                         "so there is nothing to climb: " + (
                             f"give a ladder with fractions of at least {fraction_bound(start.absent + 1, total, most=False)} "
                             "(which removes more than that)" if start.absent + 1 < total else
                             "one synapse is left, which a rung must keep: give a fixed target of "
                             f"{start.absent} (the start) instead"))
    return rungs


def stages_of(targets: list, total: int, start, ladder: List[float],
              step: EnsembleStep = EnsembleStep()) -> Tuple[List[Tuple[str, Optional[int]]], bool, List[float]]:
    """The stages of an optimisation of ``total`` synapses from ``start`` (a
    :class:`~adaptive.mask_only_start.Start`): ``(stages, climb, ladder)``, where ``stages`` are
    ``(label, synapses to remove)`` pairs, fewest first (:func:`_resolve_targets`, with its refusals),
    ``climb`` says whether target "best" climbs ``ladder`` (one stage per rung, each labelled "best"),
    and ``ladder`` is the rungs climbed: on a sparse start only those above it (refused if none is);
    ``step``: the connectome's ensembles (:func:`ensemble_step`), which a positive target must remove one of."""
    resolved = _resolve_targets(targets, total, start, step)
    climb = resolved[0][1] is None and bool(ladder)  # "best" by climbing the ladder
    if climb and start.absent:  # a sparse start: the rungs above it, the start the first candidate (on a dense
        # network every rung climbs, as before: one that rounds to 0 removed keeps its stage)
        ladder = rungs_above(ladder, total, start)
    if climb:
        resolved = [("best", count) for count in ladder_counts(ladder, total)]
    return resolved, climb, ladder
