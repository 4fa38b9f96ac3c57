"""The controller's saved state: :meth:`state_dict` and :meth:`load_state_dict`, as
:class:`ControllerStateMixin`, which :class:`~adaptive.controller.Controller` inherits.

A state holds the step count, the events, the gradient window, the policy's and estimators' own
states and the names they ran with (an estimator given as an object of a class not registered: its
class, as no name builds it). Loading checks the whole state first (the mode, the policy and
estimators' names, each layer's shapes, the zero-cost order, the line-search tolerance) and loads
it all or nothing: a bad state changes nothing. States saved by older versions load too (layers
kept under a wrapper's ``module.`` names, statistics of empty layers, no recorded zero-cost order or
line-search tolerance).
"""
from __future__ import annotations

import collections
import copy
import json
import numbers
from typing import Dict

import torch

from .connectome import _stripped, _wrapper_prefix, check_same_mode
from .controller_edits import FORMER_LINE_SEARCH_TOLERANCE, line_search_tolerance_problem
from .utility.ties import ZERO_COST_ORDERS
from .warn import warn_user


_UNRECORDED = object()  # a state entry saved before it was recorded


def _holds_tensors(v, depth: int = 4) -> bool:
    """Whether ``v`` is a tensor, or a dict, list, tuple or set holding one, nested too (a plugin's
    per-layer state: ``{layer: tensor}``, ``{layer: {"m": tensor, "v": tensor}}``, ``{layer: [tensor]}``),
    down to ``depth`` containers (a container that holds itself ends there)."""
    if isinstance(v, torch.Tensor):
        return True
    if isinstance(v, dict):
        v = v.values()
    elif not isinstance(v, (list, tuple, set, frozenset, collections.deque)):
        return False
    return depth > 0 and any(_holds_tensors(x, depth - 1) for x in v)


def _unregistered_class(est) -> "str | None":
    """The definition (module and qualified name) of ``est``'s class where the estimator registry does not
    hold that class under the name it answers to (a user's own class, or a subclass of a registered one,
    which inherits its parent's name), else None: such an estimator is known by its class, not its name.
    A class whose definition was run again (its registry entry replaced by the new class object) is
    still the registered one."""
    from .registry import _definition
    from .utility.base import is_registered

    return None if is_registered(est) else _definition(type(est))


def _same_class(saved, mine) -> bool:
    """Whether the classes recorded as ``saved`` and ``mine`` (:func:`_unregistered_class`) are one
    definition: the same module and qualified name, or the same qualified name where one side ran
    as a script (module ``__main__``: a class a script defines is ``train.MyEstimator`` to another
    script that imports it from there)."""
    if saved == mine:
        return True
    if not (isinstance(saved, str) and isinstance(mine, str)):
        return False
    for a, b in ((saved, mine), (mine, saved)):
        if a.startswith("__main__.") and b.endswith(a[len("__main__"):]):
            return True
    return False


def _estimator_as_passed(name, cls) -> "tuple[str, str]":
    """The estimator recorded as ``name`` (its registry name) and ``cls`` (:func:`_unregistered_class`)
    as a message names it, and the ``estimator=`` that builds it again: the registry name where it
    is registered, else an instance of its class (no name of it would build it)."""
    if cls is not None:
        qualname = cls.rsplit(".", 1)[-1]
        return (f"estimator={qualname}(...) ({cls}, a class not registered)",
                f"an instance of {cls} as estimator=")
    if name == "?":  # recorded before the classes were: a class not registered, which one not known
        return "an estimator object of a class not registered", "the estimator object of the class it ran with"
    return f"estimator={name!r}", f"estimator={name!r}"


def _count(value, key: str) -> int:
    """A saved counter (the step count, the skipped windows) as an int: a whole number of at least 0 (5.7 was cut
    to 5 and -3 taken as it was, a controller then counting its steps from below zero)."""
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not float(value).is_integer() or value < 0:
        raise ValueError(f"'{key}' is {value!r}, not a whole number of at least 0")
    return int(value)


class ControllerStateMixin:
    """Saving and loading :class:`~adaptive.controller.Controller`'s state (it reads the controller's
    connectome, policy, estimators and gradient window)."""

    def state_dict(self) -> dict:
        self._warn_unsaved_plugin_state()
        return {
            "step_count": self.step_count,
            "events": json.loads(json.dumps(self.events, default=float)),
            "stats": self.stats.state_dict() if self.stats is not None else None,
            "policy": self.policy.state_dict(),
            "estimators": self._estimator_states(),
            "nonfinite_windows": self.nonfinite_windows,
            "warned_missed": self._warned_missed,
            "policy_name": self.policy.name,
            "estimator_names": {side: est.name for side, est in self._estimators().items()},
            # the class of an estimator not registered (a user's subclass inherits its parent's name): None, registered
            "estimator_classes": {side: _unregistered_class(est) for side, est in self._estimators().items()},
            "zero_cost_order": self.zero_cost_order,
            # what the line search vetoed by (None: no holdout_loss, no line search ran)
            "line_search_tolerance": self.line_search_tolerance if self.holdout_loss is not None else None,
            "mode": self.conn.mode,
        }

    def _warn_unsaved_plugin_state(self) -> None:
        """Warn once of a policy or estimator (a plugin's) that keeps tensors in its attributes (or in dicts,
        lists or tuples of them, nested too) but has no ``state_dict`` of its own: the base class's saves
        nothing, so every checkpoint leaves that state out and a resumed run starts it afresh. (Every
        built-in that keeps tensors saves them.) No collective: every process warns alike."""
        from .policies.base import Policy
        from .registry import _origin
        from .utility.base import Estimator

        warned = self.__dict__.setdefault("_unsaved_state_warned", set())
        estimators = self._estimators()
        for role, obj in [("policy", self.policy)] + [(f"{side}_by estimator" if len(estimators) > 1 else "estimator", est)
                                                      for side, est in estimators.items()]:
            if role in warned or getattr(type(obj), "state_dict", None) not in (None, Policy.state_dict, Estimator.state_dict):
                continue
            held = sorted(k for k, v in getattr(obj, "__dict__", {}).items() if _holds_tensors(v))
            if held:
                warned.add(role)
                name = vars(type(obj)).get("name")  # registered under it (a subclass of a built-in: not its name)
                warn_user(f"the {role} {_origin(type(obj))}{f' ({name!r})' if name else ''} keeps tensors in its "
                          f"attribute(s) {held} but has no state_dict, so a checkpoint saves none of them and a resumed "
                          f"run starts from fresh ones: add state_dict() and load_state_dict() to {type(obj).__name__} "
                          "that return and restore them (tensors fixed at construction, not kept between updates, "
                          "need neither)")

    def _estimators(self) -> Dict[str, object]:
        out = {"drop": self.drop_est}
        if self.grow_est is not None and self.grow_est is not self.drop_est:
            out["grow"] = self.grow_est
        return out

    def _estimator_states(self) -> dict:
        return {side: est.state_dict() for side, est in self._estimators().items()}

    def _check_state_kinds(self, sd: dict) -> None:
        """Refuse, before anything loads, the state of a controller with another policy or estimator:
        what a policy keeps (boundaries, goals, a done flag) means nothing to another, which would
        take the entries it knows and silently go on from its own defaults. (States saved before
        the names were recorded are taken as they are.) Before them, a state of the other mode: its
        window and estimators were gathered on frozen weights (mask_only) or trained ones (train)."""
        check_same_mode(sd.get("mode"), self.conn.mode, "controller state",
                        f"a controller's state does not carry over into a {self.conn.mode} run: start this controller "
                        "without loading it (the masks carry over, through conn.set_masks)")
        saved = sd.get("policy_name")
        if saved is not None and saved != self.policy.name:
            raise ValueError(f"this controller state was saved by a controller with policy={saved!r}, and this one "
                             f"runs policy={self.policy.name!r}: build the controller with policy={saved!r} (and its "
                             "other settings) to resume that run, or start this one without loading it")
        estimators = self._estimators()
        classes = sd.get("estimator_classes")  # None: saved before they were recorded (the names alone compared)
        for side, name in (sd.get("estimator_names") or {}).items():
            est = estimators.get(side, estimators["drop"])  # one estimator for both sides here, two there
            saved_cls = classes.get(side) if isinstance(classes, dict) else None
            mine_cls = _unregistered_class(est)
            same = name == est.name and (classes is None or _same_class(saved_cls, mine_cls))
            if not same:  # named as the Controller takes it, estimator= (drop_by/grow_by are the policy's)
                what = "its removal costs" if side == "drop" else "its restoration gains"
                (saved, fix), (mine, _) = _estimator_as_passed(name, saved_cls), _estimator_as_passed(est.name, mine_cls)
                raise ValueError(f"this controller state was saved with another estimator, {saved} ({what}), "
                                 f"and this one uses {mine}: build the controller with {fix} to resume that run, or "
                                 "start this one without loading it")

    def _under_plain_names(self, sd: dict) -> dict:
        """``sd`` with layers kept under a wrapper's names renamed to this connectome's (a copy; ``sd``
        is left as given): a connectome built on the DDP model ``accelerator.prepare`` returns named
        them ``module.NAME`` before connectomes took the plain module's names, as the connectome's own
        state_dict and files still load (``torch.compile``'s ``_orig_mod.NAME`` alike)."""
        def keys(v):  # the events too: each update's per-layer densities
            if isinstance(v, dict):
                return list(v) + [k for x in v.values() for k in keys(x)]
            return [k for x in v for k in keys(x)] if isinstance(v, list) else []

        def rename(v):
            if isinstance(v, dict):
                return {k: rename(x) for k, x in _stripped(v, prefix).items()}
            return [rename(x) for x in v] if isinstance(v, list) else v
        # one wrapper prefix for the whole state, of the model's names (as the connectome's load_state_dict):
        # another layer's name is no wrapper's
        prefix = _wrapper_prefix(keys(sd), dict(self.conn.model.named_parameters(remove_duplicate=False)))
        return rename(sd)

    def _without_empty_layers(self, sd: dict) -> dict:
        """``sd`` without the tensors of no elements it keeps under the name of a weight that holds no
        entries in this model either (``nn.Linear(4, 0)``): states saved before such weights were left
        out of the connectome kept per-layer statistics of them (a copy; ``sd`` is left as given)."""
        empty = {n for n, p in self.conn.model.named_parameters() if p.numel() == 0} - set(self.conn.masks)
        if not empty:
            return sd

        def drop(d):
            return {k: drop(v) if isinstance(v, dict) else v for k, v in d.items()
                    if not (k in empty and isinstance(v, torch.Tensor) and v.numel() == 0)}
        return drop(sd)

    def _check_state_shapes(self, sd: dict) -> None:
        """Refuse, before anything loads, a state whose per-layer tensors do not fit this connectome
        (a checkpoint of another model or of other layers). The stats' sums are keyed by layer; an
        estimator's state is walked blind: a tensor is taken as a layer's when its key names a layer
        here and it has that layer's rank (a bare module's layers are named "weight" and "bias", so
        an estimator's own tensor of another rank under such a key is its own), or when its key has
        a dot and names no layer here (a parameter name of another model); other tensors are the
        estimator's own and left alone."""
        shapes = {n: {tuple(self.conn.masks[n].shape), tuple(self.conn.granularities[n].ensemble_shape(self.conn.masks[n].shape))}
                  for n in self.conn.masks}

        dims = {n: {len(s) for s in ss} for n, ss in shapes.items()}

        def walk(where, d, by_layer=False):
            tensors = {k: v for k, v in d.items() if isinstance(v, torch.Tensor) and v.dim() > 0}
            if not by_layer:  # a tensor of a layer's rank under its name (an estimator's own, of another rank, is not)
                tensors = {k: v for k, v in tensors.items() if isinstance(k, str) and (
                    "." in k and k not in shapes or k in shapes and v.dim() in dims[k])}
            by_layer = by_layer or bool(tensors)
            for k, v in d.items():
                if isinstance(v, dict):
                    walk(f"{where}.{k}", v)
                elif k in tensors and by_layer:
                    if k not in shapes:
                        raise ValueError(f"controller state {where} holds layer {k!r}, which this connectome does not have: "
                                         "was it saved from another model?")
                    if tuple(v.shape) not in shapes[k]:
                        raise ValueError(f"controller state {where}[{k!r}] has shape {tuple(v.shape)}, but layer {k!r} "
                                         f"is {tuple(self.conn.masks[k].shape)} here: was it saved from another model?")
        stats = sd.get("stats")
        if isinstance(stats, dict):
            for key, v in stats.items():
                if isinstance(v, dict):
                    walk(f"stats.{key}", v, by_layer=key in ("g_sum", "g2_sum"))
        if isinstance(sd.get("estimators"), dict):
            walk("estimators", sd["estimators"])

    def load_state_dict(self, sd: dict) -> None:
        """Restore a state saved by :meth:`state_dict`; checked first, so a bad one changes nothing.

        The layers' shapes, the policy and estimators' names and the controller's own counters are
        checked before anything loads; the parts (estimators, policy, gradient window) then load
        each through its own ``load_state_dict``, and one that raises has every part put back as it
        was before the error is raised (a :class:`ValueError` naming the part)."""
        sd, (step_count, nonfinite, warned_missed, events, zero_cost_order, tolerance) = self._loadable(sd)
        self._load_parts(sd, keep=True)
        self.step_count = step_count
        self.events = list(events)
        self.nonfinite_windows = nonfinite
        self._warned_missed = warned_missed
        self.zero_cost_order = zero_cost_order
        self.line_search_tolerance = tolerance
        self._drop_grad_hooks()  # what was noted belongs to the step this controller was at, not the loaded one
        self._renote_unstepped_grads()

    def _load_parts(self, sd: dict, keep: bool) -> None:
        """Load the parts (estimators, policy, gradient window) each through its own ``load_state_dict``;
        one that raises has every part put back as it was before the error is raised (a :class:`ValueError`
        naming the part). ``keep=False``: a trial, every part put back after it loaded too."""
        states = sd.get("estimators") or {}
        parts = [(f"estimators[{side!r}]", est, states.get(side) or {}) for side, est in self._estimators().items()]
        parts.append(("policy", self.policy, sd.get("policy") or {}))
        if self.stats is not None and sd.get("stats"):
            parts.append(("stats", self.stats, sd["stats"]))
        # (a trial keeps copies: a part whose load writes into the tensors its state_dict gave would change them)
        own = (lambda sd: sd) if keep else copy.deepcopy
        saved = [(obj, own(obj.state_dict()), getattr(obj, "_reduced", None)) for _, obj, _ in parts]

        def put_back(upto: int) -> None:
            for o, before, reduced in saved[:upto]:
                o.load_state_dict(before)
                if reduced is not None:
                    o._reduced = reduced

        for i, (name, obj, state) in enumerate(parts):
            try:
                if not isinstance(state, dict):
                    raise TypeError(f"a {type(state).__name__}, not a dict")
                obj.load_state_dict(state)
            except Exception as e:
                put_back(i + 1)  # all or nothing: the parts loaded so far, and this one, go back
                raise ValueError(f"controller state entry {name} does not load into this controller's "
                                 f"{type(obj).__name__} ({type(e).__name__}: {e}); nothing was changed: pass a state "
                                 "saved by Controller.state_dict() of a controller built with the same settings") from e
        if not keep:
            put_back(len(parts))

    def check_state_dict(self, sd: dict) -> None:
        """Raise what :meth:`load_state_dict` refuses ``sd`` for, leaving the controller as it was (other
        layers or shapes, another policy or estimator, malformed counters, and a part, an estimator or the
        policy, refusing its entry: each part is loaded on trial and put back, as the load puts them back
        when one refuses): :func:`~adaptive.training.load_checkpoint` asks before any of a checkpoint's
        files loads."""
        self._load_parts(self._loadable(sd)[0], keep=False)

    def _loadable(self, sd: dict) -> tuple:
        """``(sd, (step_count, nonfinite_windows, warned_missed, events, zero_cost_order, line_search_tolerance))``:
        ``sd`` under this controller's layer names, and its own entries, checked."""
        if not isinstance(sd, dict) or "step_count" not in sd:
            raise ValueError("not a controller state_dict: it has no 'step_count' entry")
        sd = self._without_empty_layers(self._under_plain_names(sd))
        self._check_state_shapes(sd)
        self._check_state_kinds(sd)
        zero_cost_order = self._loaded_zero_cost_order(sd)
        tolerance = self._loaded_line_search_tolerance(sd)
        try:
            step_count = _count(sd["step_count"], "step_count")
            nonfinite = _count(sd.get("nonfinite_windows", 0), "nonfinite_windows")
            warned_missed = bool(sd.get("warned_missed", False))  # (saved before it was recorded: not known)
            events = sd.get("events", [])
            if not isinstance(events, (list, tuple)):
                raise TypeError(f"'events' is a {type(events).__name__}, not a list")
        except (TypeError, ValueError) as e:
            raise ValueError(f"controller state entry is malformed ({e}): pass the dict that Controller.state_dict() "
                             "returned, unchanged") from e
        return sd, (step_count, nonfinite, warned_missed, events, zero_cost_order, tolerance)

    def _loaded_line_search_tolerance(self, sd: dict) -> float:
        """The line-search tolerance a resumed run goes on with: the state's, where it ran a line search
        (a state saved before the tolerance was recorded whose events hold a checked update ran with
        0.0, the default then, in train mode too); this controller's own where the state ran none. One
        given to this controller that differs from the state's is refused: the run would go on
        vetoing by another rule than it ran with."""
        recorded = sd.get("line_search_tolerance", _UNRECORDED)
        if recorded is _UNRECORDED:  # saved before it was recorded: did a line search run?
            events = sd.get("events")
            checked = isinstance(events, (list, tuple)) and any(
                isinstance(e, dict) and e.get("line_search_fraction") is not None for e in events)
            recorded = FORMER_LINE_SEARCH_TOLERANCE if checked else None
        if recorded is None:
            return self.line_search_tolerance
        problem = line_search_tolerance_problem(recorded)
        if problem:
            raise ValueError(f"the controller state's line_search_tolerance is malformed ({problem}): pass the dict "
                             "that Controller.state_dict() returned, unchanged")
        recorded = float(recorded)
        if self._line_search_tolerance_given and recorded != self.line_search_tolerance:
            raise ValueError(f"this controller state was saved by a line search with line_search_tolerance={recorded!r}"
                             f", and this controller was built with line_search_tolerance={self.line_search_tolerance!r}"
                             f": build it with line_search_tolerance={recorded!r} (or leave it unset) to continue the "
                             "run as it ran")
        return recorded

    def _loaded_zero_cost_order(self, sd: dict) -> str:
        """The zero-cost order a resumed run goes on with: the state's (a state saved before the order
        was recorded ran with "index"); one given to this controller that differs is refused."""
        recorded = sd.get("zero_cost_order")
        if recorded is not None and recorded not in ZERO_COST_ORDERS:
            raise ValueError(f"the controller state's zero_cost_order {recorded!r} is none of {ZERO_COST_ORDERS}")
        if self._zero_cost_order_given:
            if recorded is not None and recorded != self.zero_cost_order:
                raise ValueError(f"this controller state was saved with zero_cost_order={recorded!r}, and this "
                                 f"controller was built with zero_cost_order={self.zero_cost_order!r}: build it with "
                                 f"zero_cost_order={recorded!r} (or leave it unset) to continue the run as it ran")
            return self.zero_cost_order
        return recorded or "index"
