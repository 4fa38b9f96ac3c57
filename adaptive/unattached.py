"""Optimizers that step a connectome's weights without being attached to it.

A connectome keeps pruned synapses at 0.0 through the optimizers it is attached to: it masks their
gradients, resets their moments at every edit and re-masks after their steps. Another optimizer over
the same weights (a second one for the head, one built anew to switch from Adam to SGD, or to restart
after a resume) gets none of that: its momentum or Adam's moments move pruned synapses off 0.0, the
forward pass reads them, and a controller attached to the first optimizer no longer counts steps. Nothing
fails. One global optimizer pre-step hook, installed at the first attach, sees every optimizer's step and
warns, once per optimizer and connectome, where an optimizer holds weights that an attached connectome
masks but is not one of that connectome's optimizers and has a gradient to step it with (a weight
without one, frozen or outside this loss, is left as it is by every torch optimizer).
"""
from __future__ import annotations

import weakref
from typing import Dict

from torch.optim.optimizer import register_optimizer_step_pre_hook

from .warn import warn_user

_HANDLE = None
_MASKED_BY = None  # connectome_optimizers._MASKED_BY, bound at the first check (that module imports this one)
# optimizer -> ((the mask registry's generation, its group sizes) when it was last checked, the weights it
# would have been warned of but had no gradient then): the check runs again only where an attach or detach
# changed the registry, add_param_group the optimizer, or one of those weights has a gradient now
_CHECKED: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
# optimizer -> the connectomes already warned about for it (weakly: a new one may take a dead one's id)
_WARNED: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
_GENERATION = [0]
# id(weight) -> (weak weight, weak connectome) of each connectome a Controller drives by hand (built without an
# optimizer): while it is attached to none, an optimizer stepping its weights gets no masking at all
_HAND_DRIVEN: Dict[int, tuple] = {}


def watch() -> None:
    """Install the global pre-step hook (once per process); called by ``Connectome.attach``."""
    global _HANDLE
    if _HANDLE is None:
        _HANDLE = register_optimizer_step_pre_hook(_check)


def watch_unattached(conn) -> None:
    """Watch ``conn``, whose Controller is driven by hand (built without an optimizer), or restored
    detached from a pickle (torch.load, copy.deepcopy): an optimizer that steps its weights while it is
    attached to none is warned of, once (nothing masks those steps: pruned
    synapses move off 0.0, and the masks change only at ``ctrl.step()``, which such a loop may never call)."""
    for p in conn.params.values():
        _HAND_DRIVEN[id(p)] = (weakref.ref(p), weakref.ref(conn))
    registry_changed()
    watch()


def unwatch(conn) -> None:
    """Stop watching ``conn`` as :func:`watch_unattached` does: a connectome restored detached (torch.load,
    deepcopy) once attached again, whose later detach is the user's own (``conn.detach()`` to train densely)."""
    for p in conn.params.values():
        entry = _HAND_DRIVEN.get(id(p))
        if entry is not None and entry[1]() is conn:
            del _HAND_DRIVEN[id(p)]
    registry_changed()


def registry_changed() -> None:
    """An attach or detach changed which connectome masks which weight: check every optimizer again."""
    _GENERATION[0] += 1


def _check(opt, args, kwargs) -> None:
    global _MASKED_BY
    if _MASKED_BY is None:
        from .connectome_optimizers import _MASKED_BY  # (not at import: that module imports this one)
    if not _MASKED_BY and not _HAND_DRIVEN:
        return
    key = (_GENERATION[0], tuple(len(g["params"]) for g in opt.param_groups))
    try:
        seen = _CHECKED.get(opt)
    except TypeError:  # an optimizer that cannot be weakly referenced: checked at every step
        seen = None
    if seen is not None and seen[0] == key and all(p.grad is None for p in seen[1]):
        return
    stepped: Dict[int, tuple] = {}  # id(connectome) -> (connectome, [names of the weights opt steps])
    idle = []  # weights it would step unattached, but with no gradient yet: checked again once they have one
    for g in opt.param_groups:
        for p in g["params"]:
            entry = _MASKED_BY.get(id(p))
            conn = entry[1]() if entry is not None and entry[0]() is p else None
            if conn is None:  # a connectome attached to no optimizer, whose Controller is driven by hand
                entry = _HAND_DRIVEN.get(id(p))
                conn = entry[1]() if entry is not None and entry[0]() is p else None
                if conn is not None and any(r() is not None for r in conn._optimizers):
                    conn = None  # attached since (to another optimizer): _MASKED_BY speaks for it
            if conn is None or any(r() is opt for r in conn._optimizers) or any(r() is opt for r in conn._wrappers):
                continue
            if p.grad is None:
                idle.append(p)
                continue
            stepped.setdefault(id(conn), (conn, []))[1].extend(n for n, q in conn.params.items() if q is p)
    try:
        _CHECKED[opt] = (key, tuple(idle))
    except TypeError:
        pass
    if not stepped:
        return
    try:
        warned = _WARNED.setdefault(opt, weakref.WeakSet())
    except TypeError:
        warned = weakref.WeakSet()
    for conn, names in stepped.values():
        if conn in warned:
            continue
        warned.add(conn)
        shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
        attached = ", ".join(type(r()).__name__ for r in conn._optimizers if r() is not None)
        if not attached and not conn._optimizers and conn.__dict__.get("_was_attached"):  # restored detached
            conn.__dict__["_unattached_warned"] = True
            warn_user(
                f"an optimizer ({type(opt).__name__}) steps the weights {shown} of a Connectome restored by "
                "torch.load, pickle or copy.deepcopy, which leaves it attached to no optimizer (optimizer hooks are "
                "not saved with it): nothing masks that optimizer's gradients or re-masks its weights, so pruned "
                "synapses move off 0.0 while density() counts them pruned, and its Controller no longer updates. "
                "Attach it again: ctrl.attach(optimizer) for a Controller restored with it, else "
                "conn.attach(optimizer) (or save and resume with conn.state_dict()/ctrl.state_dict(), which keep "
                "no hooks to lose)")
            continue
        if not attached and not conn._optimizers:  # never attached: its Controller is driven by hand
            if conn.__dict__.get("_unattached_warned"):  # (ctrl.step() said so already)
                continue
            conn.__dict__["_unattached_warned"] = True
            warn_user(
                f"an optimizer ({type(opt).__name__}) steps the weights {shown} of a Connectome attached to no "
                "optimizer, whose Controller is driven by hand: nothing masks that optimizer's gradients or re-masks "
                "its weights, so pruned synapses move off 0.0, and the masks change only at ctrl.step(). Attach it, "
                "conn.attach(optimizer), and call ctrl.observe() after each backward and ctrl.step() after each "
                "step; or build the Controller on the optimizer, Controller(conn, optimizer, ...), which does both")
            continue
        attached = (f"the Connectome is attached to {attached}" if attached else
                    "the optimizer the Connectome was attached to is gone, but it still masks these weights")
        warn_user(
            f"an optimizer this Connectome is not attached to ({type(opt).__name__}) steps its weights {shown} "
            f"({attached}): that optimizer sees dense gradients and keeps its moments at pruned positions, so its "
            "steps move pruned synapses off 0.0, and a Controller counts only the attached optimizer's steps. Attach it: "
            "conn.attach(optimizer) for a second optimizer (the Controller on the one stepped last), "
            "ctrl.attach(optimizer) for one that replaces the first; or conn.detach() to train densely on purpose")
