"""Editing a connectome's masks: :meth:`set_masks` and :meth:`set_ensemble_masks` validate the
new masks, then apply every layer's at once (pruned weights to 0.0, grown ones to their initial
values, optimizer moments reset where a mask changed) and tell the edit listeners; a mask edited in
place since it was set is caught up with. As :class:`ConnectomeEditsMixin`, which
:class:`~adaptive.connectome.Connectome` inherits.
"""
from __future__ import annotations

import weakref
from typing import Callable, Dict, Mapping, Optional

import torch

from .connectome_masking import _forget_autocast_copies
from .ensembles import expands_exactly
from .mask_reads import all_set, any_set


class EnsembleRuleError(ValueError):
    """A mask breaks a rule of its layer's granularity (n of every m kept, or a plugin
    granularity's ``violation``)."""


class ConnectomeEditsMixin:
    """Mask edits of :class:`~adaptive.connectome.Connectome` (it reads the connectome's masks,
    parameters, granularities, mode and originals)."""

    def _validate(self, masks: Mapping[str, torch.Tensor], rules_kept=()) -> Dict[str, torch.Tensor]:
        """Checked private copies of ``masks``; ``rules_kept``: layers whose masks are known to keep
        their granularity's rule (expanded from ensemble masks, see ``expands_exactly``)."""
        if not isinstance(masks, Mapping):
            raise TypeError(f"set_masks expects a dict of parameter name -> bool tensor, got {type(masks).__name__}")
        unknown = [k for k in masks if k not in self.masks]
        if unknown:
            raise KeyError(
                f"unknown parameter name(s) {unknown[:5]}{'...' if len(unknown) > 5 else ''}: "
                f"known prunable weights are {self.names[:5]}{'...' if len(self.names) > 5 else ''}"
            )
        clean = {}
        for k, m in masks.items():
            if not isinstance(m, torch.Tensor):
                raise TypeError(f"mask for {k!r} must be a torch.Tensor, got {type(m).__name__}")
            _refuse_sparse(m, f"mask for {k!r}")
            if m.dtype != torch.bool:
                raise TypeError(f"mask for {k!r} must have dtype torch.bool, got {m.dtype}; use mask.bool() or mask > 0")
            if m.is_meta:
                raise ValueError(f"mask for {k!r} is on the 'meta' device and holds no values: build it on a real device")
            if tuple(m.shape) != tuple(self.masks[k].shape):
                layer = self.layers[k]
                laid_out = layer.transposed and tuple(m.shape) == layer.out_in_shape
                raise ValueError(
                    f"mask for {k!r} has shape {tuple(m.shape)} but the weight has shape {tuple(self.masks[k].shape)}"
                    + (f": {k!r} is a transposed convolution, whose weight is stored (in, out/groups, *kernel), and "
                       f"this mask is laid out (out, in/groups, *kernel); pass conn.layers[{k!r}].stored(mask)"
                       if laid_out else ""))
            why = None if k in rules_kept else self.granularities[k].violation(m)
            if why:
                fix = (f"keep the top n of every m with conn.granularity_of({k!r}).select(scores)"
                       if hasattr(self.granularities[k], "density") else
                       "build it at ensemble level and use set_ensemble_masks()")
                raise EnsembleRuleError(f"mask for {k!r}: {why}; {fix}")
            clean[k] = m.detach().to(self.params[k].device, copy=True)
        return clean

    # Mask edits run outside inference mode, also when called inside one (an evaluate-then-edit helper
    # under torch.inference_mode()): masks made there would be inference tensors, which track no
    # version counter, so they could not be told from edited ones, nor edited in place later.
    @torch.inference_mode(False)
    @torch.no_grad()
    def set_masks(
        self, masks: Mapping[str, torch.Tensor], grow_init: str | Callable = "zero", validate: bool = True
    ) -> Dict[str, torch.Tensor]:
        """Replace the masks of the given layers (others untouched). Validated first, then applied to
        every layer at once: on any error nothing changes (but for an error an edit listener raises,
        which comes once the edit is applied whole).

        Pruned weights become 0.0; grown synapses start at zero in train mode (``grow_init="zero"``,
        or "original"/a callable ``f(name, grown_mask) -> tensor``), at their original value in
        mask_only mode. Optimizer moments of attached optimizers are reset where a mask changed.
        A mask is shaped like the weight as stored: a transposed convolution's ``(in, out/groups,
        *kernel)``; one laid out ``(out, in/groups, *kernel)`` goes in as ``conn.layers[name].stored(mask)``
        (refused otherwise, except where in == out, any groups, whose two layouts share a shape).
        Returns ``{name: changed bool tensor}``. ``validate=False`` skips the checks (and the copy)
        for callers such as the controller that build masks from this connectome's own.
        """
        return self._set(self._validate(masks) if validate else self._unvalidated(masks), grow_init)

    def _unvalidated(self, masks: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        return {k: (m.clone() if m.is_inference() else m).to(self.params[k].device) for k, m in masks.items()}

    @torch.inference_mode(False)
    @torch.no_grad()
    def _set(self, clean: Mapping[str, torch.Tensor], grow_init: str | Callable = "zero",
             restore: bool = False, notify: bool = True, pooled: Optional[Mapping[str, torch.Tensor]] = None) -> Dict[str, torch.Tensor]:
        """set_masks on validated masks. ``restore``: the masks come with the weights and optimizer
        state they were saved with (a checkpoint), so optimizer state is reset only where a synapse
        is absent (it is zero there in the checkpoint too), never where one is present. ``notify``:
        tell the edit listeners (False: the caller does, once its own changes are done). ``pooled``:
        private copies of the ensemble masks of layers in ``clean`` (what their pooling gives),
        stored in the ensemble-mask cache."""
        _check_grow_init(grow_init, self.mode, bool(self.original))
        self._check_params()
        # Plan every edit first (a grow_init callable may raise): nothing changes until all succeed.
        plan = []
        for k, new in clean.items():
            old = self._previous(k, new.device)
            ch = old ^ new
            now = self.masks[k].to(new.device)
            touched = self._touched(k) and not torch.equal(now, old)
            if touched:
                # edited in place since it was set, and an apply() may have imposed the edit: every
                # position where the mask as set, the edited one and the new one disagree counts as
                # changed (its optimizer state is reset), and the layer's weights are imposed again below
                ch = ch | (now ^ new)
            if not any_set(ch):
                continue
            # grown (at grow_init): absent from the mask the weights now follow, so also one switched off
            # in place; not one switched on in place, which the steps since apply() may have trained
            grown = new & ~now if touched else new & ~old
            any_grown = any_set(grown)
            init = None
            if self.mode == "train" and grow_init != "zero" and any_grown:
                init = self._grown_values(k, new, grown, grow_init)
            plan.append((k, new, ch, init, new._version, grown, any_grown))
        changed, regrown = {}, set()
        for k, new, ch, init, version, grown, any_grown in plan:
            self.masks[k] = new
            self._last_set[k] = new.clone()
            self._set_tensor[k], self._set_version[k] = new, version
            if pooled is not None and k in pooled:  # before the listeners, who may edit the mask again
                self._ens_cache[k] = (weakref.ref(new), new._version, new.data_ptr(), self.granularities[k], pooled[k])
            self._dense[k] = all_set(new)
            self._hot = None
            self._edited()
            changed[k] = ch  # (a layer whose mask did not change is not planned)
            if not restore and any_grown:
                regrown.add(k)
            p = self.params[k]
            if self.mode == "mask_only":
                p.copy_(torch.where(new, self.original[k].to(p.device), torch.zeros((), dtype=p.dtype, device=p.device)))
                continue
            if init is not None:
                p.copy_(init)
            else:
                # grown at 0.0: a pruned weight is 0.0 only while an attached optimizer's steps keep it so, and
                # training while detached (or a dense load) moved it; a restore keeps what it finds where a
                # synapse is present (the checkpoint's weights, loaded first)
                p.masked_fill_(~new if restore else ~new | grown, 0.0)
        if changed:
            _forget_autocast_copies()
            self._reset_optimizer_state({k: ch & ~self.masks[k] for k, ch in changed.items()} if restore else changed,
                                        grown=regrown)
            if notify:
                self._notify_edit_listeners(changed)
        return changed

    def _notify_edit_listeners(self, changed: Dict[str, torch.Tensor]) -> None:
        """Tell every edit listener of a finished edit; one that raises does not keep the others
        from hearing of it, and its error is raised afterwards, saying the edit itself was applied."""
        failed = None
        for fn in self._edit_listeners:
            try:
                fn(changed)
            except Exception as e:  # re-raised below, once every listener has heard of the edit
                failed = failed or e
        if failed is not None:
            failed.add_note("(raised by a Connectome edit listener: the mask edit itself was applied whole -- masks, "
                            "weights and optimizer state -- and every other listener was told of it)")
            raise failed

    def edited_in_place(self, name: str) -> bool:
        """Whether layer ``name``'s mask was replaced or written in place since it was last set and
        now differs from the mask as set: the next set of that layer then counts those differences
        as changed too and re-imposes its weights, so it can change synapses its edit does not name."""
        m = self.masks[name]  # compared by value: a write behind the version counter (.data) too
        return not torch.equal(m, self._previous(name, m.device))

    def _touched(self, k: str) -> bool:
        """Was ``self.masks[k]`` replaced or written in place since it was last set?"""
        m, last = self.masks[k], self._last_set.get(k)
        return last is None or m is not self._set_tensor.get(k) or m._version != self._set_version.get(k)

    def _previous(self, k: str, device) -> torch.Tensor:
        """Layer ``k``'s mask as last set (``self.masks[k]`` unless someone edited it in place)."""
        last = self._last_set.get(k)
        if last is None:  # a connectome pickled before this copy existed
            last = self._last_set[k] = self.masks[k].clone()
        if last.device != device:
            last = self._last_set[k] = last.to(device)
        return last

    @torch.inference_mode(False)
    @torch.no_grad()
    def set_ensemble_masks(self, masks: Mapping[str, torch.Tensor], grow_init: str | Callable = "zero",
                           validate: bool = True) -> Dict[str, torch.Tensor]:
        """Like :meth:`set_masks` but with one bool per ensemble (shape ``granularity.ensemble_shape``);
        ``grow_init`` and ``validate`` as there. An ensemble mask of a granularity that
        ``expands_exactly`` expands to a valid mask, so only the other granularities' rules (n:m,
        plugins) are checked."""
        if not isinstance(masks, Mapping):
            raise TypeError(f"set_ensemble_masks expects a dict of parameter name -> bool tensor, got {type(masks).__name__}")
        expanded = {}
        for k, m in masks.items():
            if k not in self.masks:
                raise KeyError(f"unknown parameter name {k!r}: set_ensemble_masks takes the names of this connectome's "
                               f"prunable weights, which are {self.names[:5]}{'...' if len(self.names) > 5 else ''} "
                               "(all in conn.names)")
            g = self.granularities[k]
            es = g.ensemble_shape(self.masks[k].shape)
            if not isinstance(m, torch.Tensor):
                raise TypeError(f"ensemble mask for {k!r} ('{g.spec}' ensembles) must be a torch.bool tensor, got "
                                f"{type(m).__name__}; use torch.as_tensor(mask, dtype=torch.bool)")
            _refuse_sparse(m, f"ensemble mask for {k!r}")
            if m.dtype != torch.bool:
                raise TypeError(f"ensemble mask for {k!r} ('{g.spec}' ensembles) must be a torch.bool tensor, got "
                                f"{m.dtype}; use mask.bool() or mask > 0")
            if tuple(m.shape) != tuple(es):
                raise ValueError(f"ensemble mask for {k!r} has shape {tuple(m.shape)}, expected {tuple(es)} for '{g.spec}' "
                                 f"(one bool per ensemble): start from conn.ensemble_mask({k!r}), or give a mask shaped "
                                 f"like the weight {tuple(self.masks[k].shape)} to set_masks()")
            expanded[k] = g.expand(m, self.masks[k].shape).contiguous()
        exact = {k for k in expanded if expands_exactly(self.granularities[k]) and expanded[k].numel()}
        clean = self._validate(expanded, rules_kept=exact) if validate else self._unvalidated(expanded)
        pooled = {k: masks[k].detach().to(clean[k].device, memory_format=torch.contiguous_format, copy=True)
                  for k in exact if masks[k].shape != expanded[k].shape}  # (the others are their own ensemble mask)
        return self._set(clean, grow_init, pooled=pooled)

    def _grown_values(self, name, new, grown, how) -> torch.Tensor:
        """The weight of layer ``name`` under its ``new`` mask: current values where kept, 0.0 where
        pruned, and grown synapses set by ``how`` ("original" or ``f(name, grown_mask) -> tensor``)."""
        p = self.params[name]
        kept = p.detach().masked_fill(~new.to(p.device), 0.0)
        if how == "original":
            src = self.original[name].to(p.device, p.dtype)
        else:
            src = how(name, grown)
            if not isinstance(src, torch.Tensor) or tuple(src.shape) != tuple(p.shape):
                raise ValueError(f"grow_init callable must return a tensor shaped {tuple(p.shape)} for {name!r}")
            src = src.to(p.device, p.dtype)
            bad = int((~torch.isfinite(src) & grown.to(p.device)).sum())  # (only the grown entries are taken)
            if bad:
                raise ValueError(f"grow_init callable returned {bad} NaN or inf value(s) for synapses it grows in "
                                 f"{name!r} (in the weight's dtype, {p.dtype}): return finite values (e.g. "
                                 "torch.nan_to_num(values))")
        return torch.where(grown.to(p.device), src, kept)

    def keep_original(self) -> None:
        """Store a copy of the current weights so that train-mode growth can restore them."""
        self.original = {n: p.detach().clone() for n, p in self.params.items()}


def _refuse_sparse(m: torch.Tensor, what: str) -> None:
    """Refuse a sparse mask (COO, CSR, ...): masks are dense bool tensors, one entry per synapse."""
    if m.layout != torch.strided:
        raise TypeError(f"{what} is a sparse tensor ({m.layout}): masks are dense bool tensors with one entry per "
                        "synapse (or ensemble); pass mask.to_dense()")


def _check_grow_init(how, mode: str, has_original: bool) -> None:
    """Validate ``grow_init`` before any mask is edited (set_masks is all or nothing)."""
    if callable(how):
        return
    if how == "zero":
        return
    if how == "original":
        if not has_original:
            raise ValueError("grow_init='original' needs the original weights (mode='mask_only' or keep_original())")
        return
    raise ValueError(f"unknown grow_init {how!r}: use 'zero', 'original' or a callable f(name, grown_mask) -> tensor")
