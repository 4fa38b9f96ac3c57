"""The utility-estimator interface and its registry.

An estimator turns the windowed statistics of a connectome into two synapse-shaped scores, both
in units of expected loss change where the estimator is a loss model:
- ``removal_cost``: expected loss increase if a present synapse is removed (low = prune first);
- ``restoration_gain``: expected loss decrease if an absent synapse is restored to its original
  value (mask_only mode: immediate) or grown and trained (train mode: once trained, not at the
  edit, where a synapse grown at 0.0 changes nothing) (high = restore first).
:meth:`Estimator.loss_units` and :meth:`Estimator.gain_loss_units` say which of them are in loss units.
The controller pools them per ensemble (sum). Adding an estimator touches one file: subclass
:class:`Estimator` and decorate it with :func:`register_estimator`.
"""
from __future__ import annotations

import inspect

from dataclasses import dataclass
from typing import Dict, Optional, Type

import torch

from .. import registry as _registry

_ESTIMATORS: Dict[str, Type["Estimator"]] = {}


def register_estimator(name: str, replace: bool = False):
    """Class decorator: the estimator answers to ``name`` (taken names are refused unless ``replace``)."""
    return _registry.class_decorator(_ESTIMATORS, "utility estimator", name, replace, base=Estimator,
                                     needs=("removal_cost", "restoration_gain", "ensemble_scores"), one_of=True)


def get_estimator(name, **kw) -> "Estimator":
    """The utility estimator registered as ``name`` (see :func:`estimator_names`), built with ``kw``;
    an :class:`Estimator` instance is returned as it is (options
    with it are refused: build it with them). An unknown name or keyword is a ValueError that lists
    what exists."""
    if isinstance(name, Estimator):
        if kw:  # options for a built instance would be dropped unseen
            raise ValueError(f"utility estimator option(s) {sorted(kw)} cannot be applied to the estimator "
                             f"instance {type(name).__name__} given: build the instance with them, or give the "
                             f"estimator by name ({getattr(name, 'name', '...')!r}) with the options")
        return name
    return _registry.build(_ESTIMATORS, "utility estimator", name, kw)


def configured_estimator(name, kw=None, option: str = "--estimator_kw"):
    """What the Controller, :func:`adaptive.optimize_connectome` and the diagnostics take for the
    estimator ``name`` with the options ``kw``: the name itself where there are none, else the
    instance built with them. A keyword its constructor does not take (or a non-number for a number)
    is a ValueError that starts with ``option`` and names the keywords it takes and the nearest one."""
    if not kw:
        return name
    try:
        return get_estimator(name, **kw)
    except ValueError as e:
        from ..cli import with_notes_of

        raise with_notes_of(ValueError(f"{option}: {e}"), e) from None  # a plugin estimator's notes kept


def estimator_arguments(name, kw, keys=None) -> dict:
    """The options the estimator registered as ``name`` is built with from ``kw``: its constructor's
    defaults with ``kw`` over them (an int for a float default as that float, as :func:`get_estimator`
    builds it), only the ``keys`` given (all: None). Two sets of options that build the same estimator
    give the same arguments. ``kw`` as given for a name not registered (a plugin not loaded)."""
    cls = _ESTIMATORS.get(name) if isinstance(name, str) else None
    if cls is None or not isinstance(kw, dict):
        return kw
    params = inspect.signature(cls).parameters.values()
    out = {p.name: p.default for p in params if p.default is not p.empty
           and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}
    for k, v in kw.items():
        float_default = isinstance(out.get(k), float) and isinstance(v, int) and not isinstance(v, bool)
        out[k] = float(v) if float_default else v
    return out if keys is None else {k: out[k] for k in sorted(keys) if k in out}


def comparable_estimator_kw(saved: dict, now: dict) -> None:
    """Make the ``estimator_kw`` of a run's recorded settings (``saved``) and of its resume (``now``)
    comparable in place: each the arguments its estimator is built with (:func:`estimator_arguments`)
    where the two differ, so a default spelt out on one side only is the same setting (both ``{}``),
    and a value that differs is shown on both sides (``{'damping': 1e-12}`` against ``{'damping': 0.001}``)."""
    a, b = saved.get("estimator_kw"), now.get("estimator_kw")
    if not isinstance(a, dict) or not isinstance(b, dict):
        return
    keys = set(a) | set(b)
    a = estimator_arguments(saved.get("estimator"), a, keys)
    b = estimator_arguments(now.get("estimator"), b, keys)
    differ = {k for k in keys if (k in a, a.get(k)) != (k in b, b.get(k))}
    saved["estimator_kw"] = {k: a[k] for k in sorted(differ) if k in a}
    now["estimator_kw"] = {k: b[k] for k in sorted(differ) if k in b}


def estimator_names():
    """The names under which estimators are registered, sorted."""
    return sorted(_ESTIMATORS)


def is_registered(est) -> bool:
    """Whether the registry holds ``est``'s class under the name the class itself declares (a built-in,
    or a class decorated with :func:`register_estimator`). Not so for a class never registered (whose
    name is the base class's ``'?'``) or a subclass of a registered one (which inherits its parent's
    name). A class whose definition was run again (a notebook cell) is still the registered one."""
    name = vars(type(est)).get("name")  # registered under it (a subclass of a registered class: not its own)
    held = _ESTIMATORS.get(name) if isinstance(name, str) else None
    return held is not None and _registry._definition(held) == _registry._definition(type(est))


def estimator_label(est) -> str:
    """How a message or the recipes' start line names the estimator ``est``: its registry name where it
    is registered (:func:`is_registered`), else its class's qualified name (an instance of a class of
    your own, or of a subclass of a registered class, whose inherited name would name another)."""
    return est.name if is_registered(est) else type(est).__qualname__


def scores_side(est, method: str) -> bool:
    """Whether ``est`` gives the scores of ``method`` (``"removal_cost"`` or ``"restoration_gain"``):
    it defines that method, or ``ensemble_scores`` (which serves both), rather than inheriting
    :class:`Estimator`'s, which only declares it."""
    if hasattr(est, "ensemble_scores"):
        return True
    # the method a call runs: an instance attribute, the class's, or a mixin's; not Estimator's declaration
    found = getattr(est, method, None)
    return callable(found) and getattr(found, "__func__", found) is not getattr(Estimator, method)


@dataclass
class UtilityContext:
    """What an estimator may read when scoring one layer."""

    name: str
    weight: torch.Tensor  # current (masked) weight
    mask: torch.Tensor  # bool, True = present
    restore: Optional[torch.Tensor]  # value an absent synapse returns to (a present one's: its weight), else None
    stats: object  # GradientStats (may be empty for estimators that need none)
    generator: torch.Generator  # folded from (seed, step, layer): same on every process
    batch_size: Optional[int] = None

    @property
    def w0(self) -> torch.Tensor:
        """The value a synapse has when present (float): its restore value where there is one (in mask_only mode
        its original weight, which a present synapse holds; in train mode with grow_init='original' a present
        synapse's current weight and an absent one's original, as :meth:`Controller.context
        <adaptive.controller.Controller.context>` gives it), else its current weight."""
        return (self.restore if self.restore is not None else self.weight).float()


def near_unit(t: torch.Tensor):
    """``(t * 2**-e, e)``: ``t`` brought near unit scale by the power of two of its largest magnitude (exact, so
    values computed from it are the same bits as unscaled, but their squares neither overflow float32 for weights
    near 1e20 nor underflow near 1e-20). A tensor of zeros: ``e = 0``."""
    _, e = torch.frexp(t.abs().amax())
    e = e.clamp(-126, 126)
    return torch.ldexp(t, -e), e


def declares_signed_cost(est) -> bool:
    """Whether ``est`` declares signed removal costs (``signed_cost``), the flag read only where it
    speaks of the removal cost ``est`` computes: set on the instance, or by the class that defines
    the ``removal_cost`` it runs or by a subclass of that class. A subclass that overrides
    ``removal_cost`` (a plugin deriving from OBD with a cost that is never negative) without
    restating the flag does not inherit its parent's."""
    if "signed_cost" in getattr(est, "__dict__", {}):
        return bool(est.signed_cost)
    mro = type(est).__mro__
    flag = next((k for k in mro if "signed_cost" in vars(k)), None)
    cost = next((k for k in mro if "removal_cost" in vars(k)), None)
    if flag is None:
        return False
    return bool(flag.__dict__["signed_cost"]) and (cost is None or issubclass(flag, cost))


class Estimator:
    """Base class: override ``removal_cost`` and ``restoration_gain``."""

    name = "?"
    needs_gradients = False  # True: the controller collects gradient statistics
    needs_second_moment = False
    needs_fisher = False  # True: reads GradientStats.fisher, which needs two or more batches a window
    scores_by_w0 = False  # True: values an absent synapse by g * ctx.w0, 0 in train mode without restore values
    needs_spread = False  # True: reads the batch-to-batch spread of a window's gradients (its learning needs two or more batches)
    signed_cost = False  # True: removal costs with a first-order term (-g*w), negative for many synapses
    sign_free = False  # True: reads the gradient's size alone (|g|, g^2), never its sign (see reads_gradient_sign)

    def loss_units(self, mode: str) -> bool:
        """Whether this estimator's removal costs are expected loss changes in connectome ``mode`` (a
        loss model: Taylor, OBD, ...), rather than scores that only order synapses (magnitude,
        presence, |w|). Only loss-unit values are reported as estimated loss changes."""
        return False

    def reads_gradient_sign(self, restores: bool) -> bool:
        """Whether the scores depend on the sign of the observed gradient (``restores``: whether absent
        synapses have restore values, ``ctx.restore``): those of an optimizer that maximizes
        (``maximize=True``, its gradient the objective's) would be turned around, so a controller
        with such an estimator refuses it. False for estimators reading no gradient or its size only."""
        return self.needs_gradients and not self.sign_free

    def gain_loss_units(self, restores: bool) -> bool:
        """Whether this estimator's restoration gains are in loss units. ``restores``: an absent
        synapse returns to the value ``ctx.restore`` gives (mask_only mode, or grow_init='original');
        the gain is then the expected loss decrease of that restoration, immediate, and the
        controller also evaluates it at a train-mode grow init's values (``ctx.restore`` set to them)
        to estimate what growing there does. Not ``restores`` (a synapse grown at its init, then
        trained): the loss decrease expected once it has trained, which the edit itself does not
        bring; it is logged as ``est_growth_gain``, apart from ``est_loss_change``. Default: as
        :meth:`loss_units` says for the removal costs of mask_only (``restores``) or train mode."""
        return self.loss_units("mask_only" if restores else "train")

    def removal_cost(self, ctx: UtilityContext) -> torch.Tensor:
        raise NotImplementedError

    def restoration_gain(self, ctx: UtilityContext) -> torch.Tensor:
        raise NotImplementedError

    def state_dict(self) -> dict:
        """What a stateful estimator must carry through a checkpoint (stateless ones: nothing)."""
        return {}

    def load_state_dict(self, sd: dict) -> None:
        self._check_state_keys(sd, ())

    def _check_state_keys(self, sd: dict, keys) -> None:
        """Refuse a state with entries this estimator does not keep (a checkpoint of another one)."""
        foreign = sorted(set(sd) - set(keys))
        if foreign:
            raise ValueError(f"{type(self).__name__} keeps {sorted(keys) or 'no state'}, but the checkpoint holds "
                             f"{foreign} for it: was it saved with another estimator?")

    def __repr__(self) -> str:
        """The class and its settings (the constructor's arguments kept as attributes): checkpoints
        fingerprint an estimator by this, so a resume with other settings is refused."""
        names = [p for p in inspect.signature(type(self).__init__).parameters if p != "self" and hasattr(self, p)]
        return f"{type(self).__name__}({', '.join(f'{p}={getattr(self, p)!r}' for p in names)})"
