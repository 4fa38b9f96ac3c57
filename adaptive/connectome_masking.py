"""Imposing a connectome's masks on the weights and gradients: exactly +0.0 at every pruned position
(inf and NaN included) and every other bit untouched, all layers in one ``torch._foreach_mul_`` of
their bits by cached 0/1 masks (:mod:`adaptive.exact_masking`); in mask_only mode the weights are
restored from the originals. Also the check that the model still holds the parameters the
connectome masks. As :class:`ConnectomeMaskingMixin`, which :class:`~adaptive.connectome.Connectome`
inherits.
"""
from __future__ import annotations

from typing import Optional

import torch

from .discovery import _listed, _submodule, reparametrisation_call
from .exact_masking import bits, int_mask, mask_, mask_dtype
from .wrappers import sharded_model_problem


def _forget_autocast_copies() -> None:
    """Drop autocast's cached low-precision copies of the weights. Inside one ``torch.autocast``
    region every forward pass reuses the first copy of a weight, so after a mask edit in that region
    (mask-only optimisation under bf16, an evaluation after ``result.use``) the network would still
    run with the weights as they were."""
    torch.clear_autocast_cache()


class ConnectomeMaskingMixin:
    """Masking of weights and gradients for :class:`~adaptive.connectome.Connectome` (it reads the
    connectome's model, parameters, masks, mode and originals)."""

    def _hot_lists(self) -> tuple:
        """``(names, params, masks)`` of the layers that have pruned synapses, each mask as 0/1
        integers of its parameter's width on its device (:mod:`adaptive.exact_masking`). Rebuilt
        after a mask edit or a move of the model (``model.to(...)`` keeps parameter identity and
        moves every parameter, so checking the first one per call is enough; a partial move is
        caught by :meth:`_foreach_mask`)."""
        hot = self._hot
        if hot is not None and (not hot[1] or (hot[1][0].device == hot[2][0].device
                                               and mask_dtype(hot[1][0]) == hot[2][0].dtype)):
            return hot
        names = [n for n in self.params if not self._dense[n]]
        params = [self.params[n] for n in names]
        imasks = []
        for n, p in zip(names, params):
            m = self.masks[n]
            if m.device != p.device:
                self.masks[n] = m = m.to(p.device)
            imasks.append(int_mask(m, p))
        self._hot = (names, params, imasks)
        return self._hot

    @torch.no_grad()
    def _foreach_mask(self, grads: bool, weights: bool, only: Optional[set] = None) -> None:
        """Set the gradients and/or weights of every layer with pruned synapses to exactly +0.0 at
        its pruned positions, whatever they held (inf and NaN included), and leave every other bit
        as it was: one ``torch._foreach_mul_`` of their bits by the 0/1 masks
        (:mod:`adaptive.exact_masking`). A layer's gradient and weight sit side by side in the
        list, so its mask is read from memory once for both. ``only``: the ids of the weights whose
        gradients are masked (None: every one)."""
        for attempt in range(2):
            _, params, imasks = self._hot_lists()
            ts, ms, sparse = [], [], []
            for p, f in zip(params, imasks):
                g = p.grad
                if grads and g is not None and (only is None or id(p) in only):
                    if g.is_sparse or g.is_conj() or g.is_neg():  # (an embedding's sparse gradient: its stored values
                        sparse.append((g, f))                    # masked; w.conj()'s gradient, a conjugate view)
                    else:
                        ts.append(bits(g))
                        ms.append(f)
                if weights:
                    ts.append(bits(p))
                    ms.append(f)
            try:
                if ts:
                    torch._foreach_mul_(ts, ms)
                for g, f in sparse:
                    mask_(g, f)
                return
            except RuntimeError:
                if attempt:
                    raise
                self._hot = None  # some layer moved device on its own: rebuild the cache once

    @torch.inference_mode(False)
    @torch.no_grad()
    def apply(self) -> None:
        """Impose the masks on the weights (and the originals in mask_only mode). Call it after
        writing to weights or masks behind autograd's version counter (``p.data.copy_(...)``,
        ``conn.masks[n].data[...] = False``, a NumPy view): the step re-masks weights only when that
        counter shows a write, and the pooled ensemble masks are kept until it shows one (this call
        drops them)."""
        self._ens_cache.clear()
        self._check_params()
        self._follow_in_place_edits()
        if self.mode == "mask_only":
            self._apply()
        else:
            self._foreach_mask(grads=False, weights=True)  # exactly 0.0, even over a written inf or NaN
            _forget_autocast_copies()  # as _apply does: a forward in the same autocast region reads the masked weights

    @torch.no_grad()
    def _follow_in_place_edits(self) -> None:
        """Catch up with masks written in place (by value, so a write behind the version counter
        counts too): which layers have pruned synapses is read anew (a layer pruned only in place
        was still taken as dense and skipped) and the hot-path masks, copies of the masks as they
        were, are rebuilt; attached optimizers' moments are reset where such a write pruned."""
        pruned = {}
        for n, m in self.masks.items():
            self._dense[n] = bool(m.all())
            last = self._previous(n, m.device)
            if not torch.equal(m, last):
                pruned[n] = last & ~m
        self._hot = None
        self._edited()
        self._reset_optimizer_state(pruned)

    def _check_params(self) -> None:
        """Raise if the model no longer holds the parameters this connectome masks."""
        stale = []
        for n, p in self.params.items():
            try:
                now = self.model.get_parameter(n)
            except AttributeError:
                now = None
            if now is not p:
                stale.append(n)
        if stale:
            self._holders = None
            sharded = sharded_model_problem(self.model)  # fully_shard (accelerator.prepare under FSDP) after building
            if sharded:
                raise RuntimeError(f"the model's parameter(s) {stale[:3]}{' ...' if len(stale) > 3 else ''} were "
                                   f"replaced by shards since this Connectome was built: {sharded}")
            # the exact call for a weight that something now computes (a parametrization, old-style weight_norm or
            # spectral_norm, torch.nn.utils.prune), read from its module: each takes its own remove call and
            # attribute (an LSTM's weight_hh_l0, an attention's in_proj_weight)
            calls = []
            for n in stale:
                mname = self.layers[n].module_name
                module = _submodule(self.model, mname)
                call = module is not None and reparametrisation_call(module, n[len(mname) + 1:] if mname else n)
                if call:
                    calls.append(f"{call} for {n!r}")
            if calls:
                remove = f"; to go on pruning such a weight, remove what computes it first: {_listed(calls, 2)}"
            else:
                mname = self.layers[stale[0]].module_name
                attr = stale[0][len(mname) + 1:] if mname else stale[0]
                remove = ("; to go on pruning a parametrized layer, remove its parametrization first: "
                          f"torch.nn.utils.parametrize.remove_parametrizations(module, {attr!r})")
            raise RuntimeError(
                f"the model's parameter(s) {stale[:3]}{' ...' if len(stale) > 3 else ''} are no longer the ones this "
                "Connectome masks: they were replaced (load_state_dict(..., assign=True), "
                "torch.__future__.set_overwrite_module_params_on_conversion(True), a module swapped in) or a "
                "parametrization (or torch.nn.utils.weight_norm, spectral_norm or prune) now computes them. Build a new "
                "Connectome on the model as it is now and carry the masks over: new.set_masks(old.masks)" + remove)
        if self.__dict__.get("_holders") is None:  # for the per-step check, which a get_parameter walk would slow
            holders, links = [], {}
            for n, l in self.layers.items():
                holders.append((self.model.get_submodule(l.module_name), n[len(l.module_name) + 1:] if l.module_name else n,
                                self.params[n]))
                parent, path = self.model, l.module_name.split(".") if l.module_name else []
                for name in path:  # every module on the way down, where one swapped in would take over
                    child = parent._modules[name]
                    links[(id(parent), name)] = (parent, name, child)
                    parent = child
            self._holders, self._links = holders, list(links.values())

    def _check_params_quickly(self) -> None:
        """:meth:`_check_params` at every optimizer step: each module on the way to a weight is still
        where it was (a module swapped in replaces it) and still holds its parameter object (a
        parametrization or an ``assign=True`` load replaces it there); a full check names the stale
        ones, and runs every time until one passes."""
        holders = self.__dict__.get("_holders")
        if (holders is None or any(m._parameters.get(a) is not p for m, a, p in holders)
                or any(m._modules.get(a) is not c for m, a, c in self._links)):
            self._check_params()

    @torch.no_grad()
    def _apply(self) -> None:
        if self.mode == "mask_only":
            # every weight restored from its original, bit for bit where kept and +0.0 where pruned:
            # the original's bits times the 0/1 integer mask, written into the weight in one pass
            # (17x faster on a CPU than torch.where with the bool mask)
            imasks = dict(zip(*self._hot_lists()[::2]))  # layers with pruned synapses
            for n, p in self.params.items():
                o = self.original[n]
                if o.device != p.device:
                    self.original[n] = o = o.to(p.device)
                if o.dtype != p.dtype:  # the model was cast since (model.half()): its weights follow
                    o = o.to(p.dtype)
                m = imasks.get(n)
                if m is None:
                    p.copy_(o)
                else:
                    torch.mul(bits(o), m if m.device == p.device else m.to(p.device), out=bits(p))
            _forget_autocast_copies()
            return
        self._foreach_mask(grads=False, weights=True)

    @torch.no_grad()
    def mask_gradients(self, only: Optional[set] = None) -> None:
        """Set the gradients at pruned positions to exactly +0.0, even over inf or NaN (called just
        before an optimizer step). ``only``: the ids of the weights whose gradients are masked (None:
        every one)."""
        self._foreach_mask(grads=True, weights=False, only=only)
