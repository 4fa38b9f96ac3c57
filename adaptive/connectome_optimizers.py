"""A connectome's hooks on optimizers: :meth:`attach` masks gradients before every step and
re-masks weights after it, runs the observers (a controller reading dense gradients) first, masks
gradients inside backward at steps no observer reads them (:mod:`adaptive.grad_masking`), resets
optimizer moments where a synapse is absent, and repairs an optimizer state loaded later. One
connectome masks a weight at a time (``_MASKED_BY``). As :class:`ConnectomeOptimizersMixin`, which
:class:`~adaptive.connectome.Connectome` inherits.
"""
from __future__ import annotations

import weakref
from typing import TYPE_CHECKING, Callable, Dict, List, Optional

import torch

from . import unattached
from .discovery import writes_unseen
from .optim_state import (_is_zero_redundancy, preserves_zeros, reset_state, unresettable_state_warning, unsupported_problem,
                          unwrap_optimizer, zero_eps_warning)
from .warn import warn_user
from .wrappers import eager

if TYPE_CHECKING:
    from .connectome import Connectome

# Which connectome masks each weight through an optimizer: id(weight) -> (weakref to the weight,
# weakref to the connectome). One connectome masks a weight at a time; a second one attached to the
# same weights takes over (a notebook cell run twice builds a second Connectome on the same model,
# and the first stays alive through its optimizer hooks even when nothing else refers to it).
_MASKED_BY: Dict[int, tuple] = {}


class ConnectomeOptimizersMixin:
    """Optimizer hooks, observers and edit listeners of :class:`~adaptive.connectome.Connectome` (it
    reads the connectome's parameters, masks, mode and controllers)."""

    def attach(self, optimizer, *, _by=None) -> "Connectome":
        """Hook ``optimizer`` (a torch optimizer or Accelerate's wrapper) so that pruned weights stay
        exactly 0.0 through every step: observers see dense gradients, then gradients are masked
        and weights re-masked (one pass), the step runs, and the weights are re-masked again unless
        the optimizer is registered as zero-preserving (SGD, Adam, AdamW, ...: see
        :func:`adaptive.optim_state.register_zero_preserving`). Moments at pruned positions are
        reset now and at every later mask change. A ``ZeroRedundancyOptimizer`` is attached through
        its local optimizer (``.optim``). Refused before anything changes: ``torch.optim.SparseAdam``
        and an optimizer built with ``differentiable=True``, and, where a controller of this connectome
        has an estimator that reads the gradient's sign, one with ``maximize=True`` in a group holding
        a connectome weight. (``_by``: the controller whose ``attach`` calls this, checked by it
        already; the other controllers it detaches right after are not checked.)"""
        opt = self._check_optimizer(optimizer)
        stopped = {id(r()) for r in self._stopped}
        for ctrl in (r() for r in self._controllers + self._stopped):  # every controller that would read its
            if ctrl is None or ctrl.conn is not self or ctrl is _by:  # gradients refuses it now, if at all (before
                continue  # any hook)
            if _by is not None and (ctrl.optimizer is not None or id(ctrl) in stopped):
                continue  # (replaced: _by's attach detaches every other attached controller, the stopped ones too)
            ctrl._check_maximize(optimizer)
        if optimizer is not opt and not any(r() is optimizer for r in self._wrappers):
            # Accelerate's wrapper: it decides when the inner optimizer steps (see Controller.observe)
            self._wrappers.append(weakref.ref(optimizer))
        if any(r() is opt for r in self._optimizers):
            return self
        self._take_over()
        why = zero_eps_warning(opt)
        if why:
            warn_user(why)
        self._optimizers.append(weakref.ref(opt))
        if self.__dict__.pop("_was_attached", None):  # restored detached, attached again: a later detach is on purpose
            unattached.unwatch(self)
        unattached.watch()  # warns of an optimizer that steps these weights without being attached
        unattached.registry_changed()
        self._handles.append(opt.register_step_pre_hook(self._pre_step))
        self._handles.append(opt.register_step_post_hook(self._post_step))
        # An optimizer state loaded later (a resume, a dense run's state) is repaired before its
        # next step (moments zeroed where a synapse is absent then), so no moment at a pruned
        # position can move its weight.
        self._handles.append(opt.register_load_state_dict_post_hook(self._after_optimizer_load))
        if _is_zero_redundancy(optimizer):  # its load_state_dict writes .optim's state directly, past that hook
            self._handles.append(optimizer.register_load_state_dict_post_hook(lambda _: self._after_optimizer_load(opt)))
        if not self._masker.handles:
            self._masker.register(self.params)  # removed by detach() through self._masker
        self._edited()
        self.apply()
        self._reset_optimizer_state({n: ~m for n, m in self.masks.items() if not self._dense[n]}, only=[opt])
        stopped, self._stopped = self._stopped, []
        for ctrl in (r() for r in stopped):  # the controllers detach() stopped go on with this optimizer (not where
            # a controller's attach calls this: _by replaces them, and one refusing the optimizer left this half-done)
            if ctrl is not None and ctrl.optimizer is None and ctrl.conn is self and _by is None:
                # the one given, not its inner one: a ZeroRedundancyOptimizer's controller steps after its whole step
                ctrl.attach(optimizer)
        return self

    def _check_optimizer(self, optimizer) -> torch.optim.Optimizer:
        """The torch optimizer inside ``optimizer``; raises unless it can be attached."""
        opt = unwrap_optimizer(optimizer)
        self._check_params()
        self._check_not_partly_masked()
        # (a ZeroRedundancyOptimizer's groups: its local optimizer holds only this process's shard)
        ids = {id(p) for o in (opt, optimizer) for g in getattr(o, "param_groups", ()) for p in g["params"]}
        if not any(id(p) in ids for p in self.params.values()):
            raise ValueError(_holds_none(self.params, self.mode))
        why = unsupported_problem(opt)
        if why:
            raise ValueError(why)
        return opt

    def detach(self) -> None:
        """Remove every optimizer hook: training goes on plain (the masks stay as they are, and the
        optimizer may move weights at pruned positions again). A controller attached to an
        optimizer through this connectome is detached too (it cannot edit what is not masked);
        the next ``attach(optimizer)`` (of this connectome or of the controller) attaches both again."""
        self._stopped = []
        for ref in list(self._controllers):
            ctrl = ref()
            if ctrl is not None and ctrl.optimizer is not None:
                ctrl.detach()
                self._stopped.append(ref)
        for h in self._handles:
            h.remove()
        self._handles.clear()
        self._masker.remove()
        self._optimizers.clear()
        self._wrappers.clear()
        for key in [k for k, (_, c) in _MASKED_BY.items() if c() is self]:
            del _MASKED_BY[key]
        unattached.registry_changed()
        self._edited()

    def _masking_others(self) -> Dict[int, tuple]:
        """The other connectomes that mask one of these weights (attached to an optimizer, or with
        backward hooks left from one that is gone), each with the name of one shared weight."""
        for key in [k for k, (p, c) in _MASKED_BY.items() if p() is None or c() is None]:
            del _MASKED_BY[key]
        others = {}
        for n, p in self.params.items():
            entry = _MASKED_BY.get(id(p))
            other = entry[1]() if entry is not None and entry[0]() is p else None
            if other is not None and other is not self and (other._optimizers or other._masker.handles):
                others.setdefault(id(other), (other, n))
        return others

    def _check_not_partly_masked(self) -> None:
        """Raise if another attached connectome masks some of these weights and others besides:
        detaching it would leave those others unmasked while it still counts them pruned."""
        mine = {id(p) for p in self.params.values()}
        for other, n in self._masking_others().values():
            extra = [m for m, p in other.params.items() if id(p) not in mine]
            if extra:
                raise ValueError(
                    f"{n} is already masked by another Connectome attached to an optimizer, which also masks "
                    f"{', '.join(extra[:3])}{' ...' if len(extra) > 3 else ''} that this one does not: attaching this one "
                    "would leave those unmasked. Call detach() on the other one first, or build this one over the same "
                    "layers (or over disjoint ones)")

    def _take_over(self) -> None:
        """Detach any other connectome that masks these weights (with a warning naming it), and
        record this one as their connectome."""
        for other, n in self._masking_others().values():
            ctrl = [c for c in (r() for r in other._controllers) if c is not None and c.optimizer is not None]
            warn_user(
                f"{n}{' and the other weights' if len(other.params) > 1 else ''} of another Connectome"
                f"{' stepped by a Controller' if ctrl else ''} were masked by it through an optimizer (a cell run twice, "
                "or a second Connectome on the same model): that one is now detached, so that only this one masks and "
                "edits these weights. Keep one Connectome per model, or call detach() on the old one first")
            other.detach()
            other._stopped = []  # taken over: a later attach of the old one does not restart its controllers
        for p in self.params.values():
            _MASKED_BY[id(p)] = (weakref.ref(p), weakref.ref(self))

    @property
    def mask_in_backward(self) -> bool:
        """Mask each gradient inside backward as soon as it is accumulated, at steps where no
        observer reads dense gradients (default True: cheaper on small networks). Set False to keep
        ``.grad`` dense until the optimizer step: to read it yourself without an observer, to clip
        by the dense gradient norm at every step (:func:`adaptive.clip_gradients` clips by the live
        gradients' norm, the same with or without these hooks), or when your code writes gradients behind
        autograd's version counter (``.grad.data``, NumPy views), which the step's check cannot see."""
        return self._mask_in_backward

    @mask_in_backward.setter
    def mask_in_backward(self, value: bool) -> None:
        if not isinstance(value, bool):
            raise TypeError(f"mask_in_backward must be True or False, got {value!r}")
        self._mask_in_backward = value
        self._edited()

    def _edited(self) -> None:
        """Something that decides how gradients are masked changed: re-arm the backward hooks."""
        self._gen += 1
        self._static_gen += 1
        self._masker.done.clear()

    def _next_step(self) -> None:
        """A step ended: the backward hooks re-check the observers, and forget the last gradients."""
        self._gen += 1
        self._masker.done.clear()

    def add_observer(self, fn: Callable[[], None], active: Optional[Callable[[], bool]] = None) -> None:
        """Call ``fn()`` before each attached optimizer step, while gradients are still dense.

        ``active``, if given, says (before the step's backward pass ends) whether ``fn`` will read
        the gradients at the coming step; at steps where no observer is active the gradients are
        masked inside backward, which is cheaper. Without it ``fn`` is taken to read every step."""
        if not callable(fn):
            raise TypeError(f"add_observer needs a callable fn() run before each step, got {type(fn).__name__}")
        if active is not None and not callable(active):
            raise TypeError(f"add_observer's active must be None or a callable returning a bool, got {type(active).__name__}")
        self._observers.append(fn)
        self._observer_active.append(active)
        self._edited()

    def _remove_observer(self, fn: Callable[[], None]) -> None:
        for i, f in enumerate(self._observers):
            if f == fn:
                del self._observers[i], self._observer_active[i]
                self._edited()
                return

    def add_edit_listener(self, fn: Callable[[Dict[str, torch.Tensor]], None]) -> None:
        """Call ``fn(changed)`` after every mask edit, once masks, weights and optimizer state are all
        updated (``changed``: ``{name: bool tensor}`` of the positions that changed). An exception a
        listener raises reaches the caller of the edit, which stays applied."""
        if not callable(fn):
            raise TypeError(f"add_edit_listener needs a callable fn(changed) run after each mask edit, got {type(fn).__name__}")
        self._edit_listeners.append(fn)

    def _wants_dense_gradients(self) -> bool:
        return any(a is None or a() for a in self._observer_active)

    def _step_skipped(self, opt) -> bool:
        """Whether a GradScaler skips this step of ``opt`` inside the optimizer (a fused one, given
        ``found_inf``, skips in its kernel when the scaled gradients hold inf or NaN). Any other
        optimizer's skipped step is never called, so its hooks never run; these hooks then do
        nothing either (no observation, no masking, no step counted). Reading ``found_inf`` waits
        for the device, so it is read only where a scaler set it, once per step."""
        found = opt.__dict__.get("found_inf")  # an instance attribute; a dict read is the cheapest miss
        if found is None:
            return False
        seen = self.__dict__.get("_found_inf")
        # torch's GradScaler sets a new tensor at every step; a loop that keeps one tensor and
        # writes it in place moves its version counter instead: either way the answer is read anew
        if seen is None or seen[0] is not found or seen[1] != found._version:
            seen = self._found_inf = (found, found._version, bool(found))
        return seen[2]

    @property
    def grad_scale(self) -> Optional[torch.Tensor]:
        """While observers run before the step of a fused optimizer under a GradScaler: the scale the
        gradients still carry (the fused kernel unscales them itself, after the observers), which an
        observer divides out. None otherwise: other optimizers' gradients are unscaled before it."""
        return self.__dict__.get("_grad_scale")

    # The step hooks run eagerly even inside a compiled ``opt.step`` (``torch.compile(opt.step)``):
    # traced into its graph, inductor let the first observation of a window read the gradient the
    # same hook masks right after, and the hooks' Python bookkeeping is no graph's business.
    @eager
    def _pre_step(self, opt, args, kwargs):
        # ``args`` is the step's positional arguments, the optimizer itself first
        self._check_params_quickly()  # refused before the step: a replaced weight would train dense
        if self._step_skipped(opt):
            return
        self._repair_loaded_state(opt)
        self._catch_mask_writes()
        closure = kwargs.get("closure", args[1] if len(args) > 1 else None)
        if closure is not None:
            return self._wrap_closure(closure, args, kwargs)
        self._prepare_step(opt)

    def _catch_mask_writes(self) -> None:
        """Impose masks written in place through PyTorch since they were last set (``conn.masks[n][0] = False``:
        the version counter shows it), as :meth:`apply` does: the step masked by the copies it had
        cached, so such a write reached the weights only at the next edit (or in a deep copy). A write
        behind the version counter (``.data``) still needs ``apply()``. Once per write: a few dict reads
        per layer at each step otherwise."""
        seen = self.__dict__.setdefault("_mask_writes_seen", {})
        written = [k for k, m in self.masks.items() if self._touched(k) and seen.get(k) != (id(m), m._version)]
        if not written:
            return
        self._ens_cache.clear()
        self._follow_in_place_edits()
        if self.mode == "mask_only":
            self._apply()
        else:
            self._foreach_mask(grads=False, weights=True)
        for k in written:
            m = self.masks[k]
            seen[k] = (id(m), m._version)

    def _wrap_closure(self, closure, args, kwargs):
        """``opt.step(closure)``: the closure computes the gradients inside the step, after this
        hook. Weights are re-masked now; the wrapped closure lets observers see its dense
        gradients (first call) and masks them before the optimizer uses them (every call): those of
        the weights this optimizer steps, as :meth:`_prepare_step` does (:meth:`_stepped_by`), so that
        another attached optimizer's layers keep their dense gradients for its own step's observers."""
        if self.mode == "train":
            self._foreach_mask(grads=False, weights=True)
        calls = [0]
        only = self._stepped_by(args[0])

        @eager
        def masked_closure():
            loss = closure()  # the optimizer calls this under enable_grad
            calls[0] += 1
            if calls[0] == 1:
                self._run_observers(args[0])
            self.mask_gradients(only)
            return loss

        if "closure" in kwargs:
            return args, {**kwargs, "closure": masked_closure}
        return (args[0], masked_closure, *args[2:]), kwargs

    def _run_observers(self, opt=None) -> None:
        self._stepping = opt
        self._grad_scale = opt.__dict__.get("grad_scale") if opt is not None else None
        try:
            for fn in self._observers:
                fn()
        finally:
            self._stepping = self._grad_scale = None

    def stepping_layers(self, primary=None) -> Optional[List[str]]:
        """While observers run before an optimizer's step: the layers whose gradients that step
        uses, when several optimizers are attached, so that each layer is observed once per
        training step, at the step of the optimizer that owns it. A layer is owned by ``primary``
        (the optimizer the caller steps with) when it holds it, else by the first attached
        optimizer that does; layers no attached optimizer holds go with ``primary`` (or the first).
        None otherwise: every layer."""
        opt = self.__dict__.get("_stepping")
        opts = [o for o in (r() for r in self._optimizers) if o is not None]
        if opt is None or len(opts) < 2:
            return None
        first = primary if primary is not None and any(o is primary for o in opts) else opts[0]
        order = [first] + [o for o in opts if o is not first]
        owner = {}
        for o in reversed(order):  # the earliest in ``order`` holding a parameter owns it
            for g in o.param_groups:
                for p in g["params"]:
                    owner[id(p)] = o
        return [n for n, p in self.params.items() if owner.get(id(p), first) is opt]

    def _stepped_by(self, opt) -> Optional[set]:
        """The ids of the weights whose gradients are masked before ``opt``'s step: where several
        optimizers are attached, those ``opt`` holds and those none of them holds; the others keep their
        dense gradients until their own optimizer's step, where the observers read them (an optimizer
        stepped later in the same training step). None (every weight) with one optimizer attached."""
        opts = [o for o in (r() for r in self._optimizers) if o is not None]
        if len(opts) < 2:
            return None
        mine = {id(p) for g in opt.param_groups for p in g["params"]}
        held = {id(p) for o in opts if o is not opt for g in o.param_groups for p in g["params"]}
        return {id(p) for p in self.params.values() if id(p) in mine or id(p) not in held}

    def _prepare_step(self, opt) -> None:
        self._run_observers(opt)
        only = self._stepped_by(opt)
        if self.mode == "mask_only":
            self.mask_gradients(only)  # the weights are restored from the originals after the step
        elif preserves_zeros(opt) and self._weights_untouched():
            # Nothing wrote to the weights since they were last known masked (their version
            # counters have not moved), so only the gradients need masking, unless the backward
            # hooks already did it and nothing wrote to the gradients since.
            hot = self._hot
            if hot is None or not self._masker.all_masked(hot[0], hot[1]):
                self.mask_gradients(only)
        else:
            # an optimizer that is not zero-preserving (it is re-masked after the step too), or a
            # weight written outside the optimizer since the last step (an init, a load, an EMA
            # swap; exactly 0.0 again even over a loaded inf or NaN): gradients and weights in one pass
            self._foreach_mask(grads=True, weights=True, only=only)

    @eager
    def _post_step(self, opt, args, kwargs):
        # A zero-preserving optimizer (optim_state.register_zero_preserving) cannot move a weight
        # whose gradient, value and state are all 0.0, so re-masking after its step is skipped.
        if self._step_skipped(opt):
            return
        if self.mode == "mask_only":
            self._apply()
        elif not preserves_zeros(opt):
            self._foreach_mask(grads=False, weights=True)  # exactly 0.0 even where such a step left NaN (0/0)
        self._next_step()
        self._record_versions()

    def _record_versions(self) -> None:
        """Remember the in-place version counters of the weights while they are known masked, and whether
        one of them belongs to a layer that writes its weight unseen by them (:func:`~adaptive.discovery.writes_unseen`)."""
        hot, v = self._hot, getattr(self, "_versions", None)
        if hot is None:
            self._versions = None
            return
        unseen = v[2] if v is not None and v[0] is hot else any(writes_unseen(self._owner(n)) for n in hot[0])
        # the version counter and the storage: ``p.data = t`` (torch.nn.utils.vector_to_parameters, a swap of
        # weights) gives a weight new values without moving its counter
        self._versions = (hot, [(p._version, p.data_ptr()) for p in hot[1]], unseen)

    def _owner(self, name: str):
        """The module holding the weight ``name``, or None where the model no longer has it."""
        try:
            return self.model.get_submodule(name.rpartition(".")[0])
        except AttributeError:
            return None

    def _weights_untouched(self) -> bool:
        v = getattr(self, "_versions", None)
        hot = self._hot
        return (v is not None and hot is not None and v[0] is hot and not v[2]
                and [(p._version, p.data_ptr()) for p in hot[1]] == v[1])

    def _after_optimizer_load(self, opt) -> None:
        # Repaired at its next step, not now: a checkpoint's connectome is often loaded after its
        # optimizer (Accelerate's order), and the moments of synapses present in the checkpoint but
        # absent from the masks at this moment must survive until those masks are restored.
        self._repair_pending.add(opt)

    def _repair_loaded_state(self, opt) -> None:
        if opt in self._repair_pending:
            self._repair_pending.discard(opt)
            self._reset_optimizer_state({n: ~m for n, m in self.masks.items() if not self._dense[n]}, only=[opt])

    def _reset_optimizer_state(self, positions: Dict[str, torch.Tensor], only=None, grown=()) -> None:
        """Reset attached optimizers' state at ``positions`` (``{name: bool tensor}``); ``grown``: the
        layers where synapses were regrown, for which state that cannot be reset per synapse is warned
        of once per optimizer (:func:`~adaptive.optim_state.unresettable_state_warning`)."""
        opts = only if only is not None else [r() for r in self._optimizers]
        for opt in opts:
            if opt is None:
                continue
            for n in [n for n in self.params if n in positions]:  # the layers' order, whatever built positions
                where = positions[n]
                reset_state(opt, self.params[n], where)
                message = unresettable_state_warning(opt, n, self.params[n]) if n in grown else None
                if message:
                    warn_user(message)


def _holds_none(params: Dict[str, torch.Tensor], mode: str = "train") -> str:
    """Why an optimizer holding none of ``params`` (a connectome's weights) cannot be attached, and the fix.
    Where they are all frozen (``requires_grad=False``: an optimizer built from the trainable parameters
    rightly leaves them out), ``model.parameters()`` is no fix: the optimizer would still step none of them.
    In ``mask_only`` mode the weights never train, so the fix named is a controller without an optimizer."""
    names = list(params)
    shown = f"{names[:3]}{' ...' if len(names) > 3 else ''}"
    if names and not any(p.requires_grad for p in params.values()) and mode == "mask_only":
        return (f"the optimizer holds none of this connectome's weights: they are all frozen (requires_grad=False: "
                f"{shown}), and in mask_only mode no optimizer steps them anyway (only the masks change). Drive a "
                "Controller without an optimizer (adaptive.Controller(conn, policy=..., density=...), then "
                "ctrl.observe() after backward and ctrl.step() after each step), or use adaptive.optimize_connectome; "
                "to score by the loss, set weight.requires_grad_(True) before the forward pass (their gradients are "
                "masked and the originals restored, so they still never change), as "
                "adaptive.mask_only.mask_learning(model, conn) sets it up")
    if names and not any(p.requires_grad for p in params.values()):
        return (f"the optimizer holds none of this connectome's weights: they are all frozen (requires_grad=False: "
                f"{shown}), so no optimizer steps them. Unfreeze the layers to train and prune (weight.requires_grad_"
                "(True)) and build the optimizer from model.parameters(), or build the connectome on the layers the "
                "optimizer trains (exclude= the frozen ones); to prune frozen layers as they are, drive a Controller "
                "without an optimizer (adaptive.Controller(conn, policy='magnitude', density=...))")
    return (f"the optimizer holds none of this connectome's weights ({shown}): build it from model.parameters() of the "
            "model the Connectome was built on (not a copy of it)")
