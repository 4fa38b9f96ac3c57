"""A connectome's state: its ``state_dict`` (masks, and originals of a mask_only one) and the
checks that load one whole or not at all (same mode, same layers, same granularities, well-formed
entries), the dense ``state_dict`` of the pruned model, and what a pickled or deep-copied
connectome keeps. As :class:`ConnectomeStateMixin`, which :class:`~adaptive.connectome.Connectome`
inherits; its safetensors files are in :mod:`adaptive.connectome_files`.
"""
from __future__ import annotations

import weakref
from collections import OrderedDict
from typing import Dict, List, Mapping

import torch
from torch import nn

from . import ensemble_rules
from .discovery import state_dict_keys
from .grad_masking import BackwardMasker
from .wrappers import _plain_names

FORMAT = "adaptive.connectome/1"


class ConnectomeStateMixin:
    """Saved state of :class:`~adaptive.connectome.Connectome` (it reads the connectome's model,
    masks, granularities, mode and originals)."""

    def __getstate__(self) -> dict:
        """A pickled or deep-copied connectome is detached: optimizer hooks, observers and edit
        listeners belong to the original (re-attach them on the copy); caches are rebuilt. One that was
        attached is watched once restored: an optimizer stepping its weights before it is attached again
        is warned of (:mod:`adaptive.unattached`), as nothing masks that optimizer's steps."""
        state = self.__dict__.copy()
        # (restored attached to nothing: an optimizer that then steps its weights is warned of, naming attach)
        state["_was_attached"] = bool(self.__dict__.get("_was_attached")) or any(r() is not None for r in self._optimizers)
        state.update(_optimizers=[], _wrappers=[], _handles=[], _observers=[], _observer_active=[], _edit_listeners=[], _controllers=[], _stopped=[], _hot=None, _ens_cache={},
                     _versions=None, _found_inf=None, _holders=None, _links=None)
        state.pop("_repair_pending", None)
        state.pop("_masker", None)
        return state

    def __setstate__(self, state: dict) -> None:
        state = {"_observer_active": [None] * len(state.get("_observers", [])), "_gen": 0, "_static_gen": 0, "_mask_in_backward": True,
                 "_last_set": {}, "_set_tensor": {}, "_set_version": {}, "_ens_cache": {}, "_controllers": [], "_stopped": [], "_wrappers": [], "_built_wrapped": False, **state, "_repair_pending": weakref.WeakSet()}
        self.__dict__.update(state)
        self._masker = BackwardMasker(self)
        if state.get("_was_attached"):  # torch.load / pickle / deepcopy of an attached one: attached to nothing now
            from . import unattached

            unattached.watch_unattached(self)

    def state_dict(self) -> dict:
        """Everything needed to rebuild the connectome on the same model (Accelerate checkpointing)."""
        sd = {
            "format": FORMAT,
            "ensemble": self.ensemble,
            "mode": self.mode,
            "masks": {n: m.detach().to("cpu", copy=True) for n, m in self.masks.items()},
        }
        if self._mixed():
            sd["ensembles"] = self.ensemble_specs()  # the rules string alone would do; this checks it
        if self.original:
            sd["original"] = {n: o.detach().to("cpu", copy=True) for n, o in self.original.items()}
        return sd

    @torch.inference_mode(False)
    def load_state_dict(self, sd: Mapping) -> None:
        """Restore masks (and originals) saved by :meth:`state_dict`; validated before anything changes
        (:meth:`check_state_dict`). Optimizer state is reset only where a synapse is absent, so the
        optimizer may be loaded before or after the connectome."""
        clean, original = self._loadable(sd)
        self._check_params()  # (a model whose parameters were replaced: refused before the originals are taken)
        if original:
            # in their own dtype, as saved: a connectome built before the model was cast (model.half()) keeps its
            # float32 originals, which apply() casts as it goes; cast to the model's they lost their low bits
            self.original = {n: original[n].to(self.params[n].device, copy=True) for n in self.params}
        # a restore, not an edit: an optimizer loaded from the same checkpoint (Accelerate loads it
        # first) keeps its moments where a synapse is present
        changed = self._set(clean, restore=True, notify=False)
        self.apply()
        if changed:  # listeners hear of the load once it is whole
            self._notify_edit_listeners(changed)

    def check_state_dict(self, sd: Mapping) -> None:
        """Raise what :meth:`load_state_dict` would refuse ``sd`` for (other layers, shapes, granularity
        or mode), changing nothing: :func:`~adaptive.training.load_checkpoint` asks before any of a
        checkpoint's files loads."""
        self._loadable(sd)

    def _loadable(self, sd: Mapping) -> tuple:
        """``(masks, originals)`` of ``sd``, checked against this connectome (the masks as private copies)."""
        if not isinstance(sd, Mapping) or "masks" not in sd:
            raise ValueError("not a connectome state_dict: it has no 'masks' entry")
        fmt = sd.get("format", FORMAT)  # (states saved before the field: the only format there was)
        if fmt != FORMAT:
            raise ValueError(f"a connectome state_dict of format {fmt!r}, and this version of adaptive reads "
                             f"{FORMAT!r}: load it with the version that wrote it, or carry its masks over with "
                             "conn.set_masks(sd['masks'])")
        _check_state_entries(sd)
        check_same_mode(sd.get("mode"), self.mode, "connectome state_dict",
                        f"to carry only its masks over into a {self.mode} run, pass them to conn.set_masks(sd['masks'])")
        model_params = dict(self.model.named_parameters(remove_duplicate=False))
        saved = [n for k in ("masks", "original", "ensembles") if isinstance(sd.get(k), Mapping) for n in sd[k]]
        sd = {**sd, **{k: _plain_names(sd.get(k), model_params, saved) for k in ("masks", "original", "ensembles")}}
        empty = _empty_saved({n: m.numel() for n, m in sd["masks"].items() if n not in self.masks
                              and isinstance(m, torch.Tensor)}, model_params)
        if empty:
            sd.update({k: {n: v for n, v in sd[k].items() if n not in empty} if sd[k] is not None else None
                       for k in ("masks", "original", "ensembles")})
        missing = [n for n in self.masks if n not in sd["masks"]]
        extra = [n for n in sd["masks"] if n not in self.masks]
        if missing or extra:  # said before the granularities are compared: those of these layers differ too
            raise KeyError(self._other_layers(missing, extra, model_params))
        if "ensemble" in sd:
            self._check_same_ensembles(sd["ensemble"], sd.get("ensembles"), "state_dict")
        original = sd.get("original") or {}
        check_originals(original, self.params, "state_dict", "(Connectome.state_dict() does)")
        return self._validate(sd["masks"]), original

    def _other_layers(self, missing: List[str], extra: List[str], model_params: Mapping) -> str:
        """Why a state saved over other layers is refused (``missing``: our layers it has no mask for;
        ``extra``: layers it has masks for that we lack), and how to load it."""
        def few(names):
            return f"{names[:5]}{'...' if len(names) > 5 else ''}"

        said = [f"no mask for {few(missing)}"] if missing else []
        if extra:
            absent = [n for n in extra if n not in model_params]
            said.append(f"masks for {few(extra)}, " + (f"of which the model has no {few(absent)}" if absent else
                        "which this connectome leaves out (the model has them; include=/exclude= did not select them)"))
        carry = ("conn.set_masks({n: m for n, m in sd['masks'].items() if n in conn.masks})" if extra
                 else "conn.set_masks(sd['masks'])")
        def newer(test):  # the module names of the missing layers that only a recent version prunes
            return list(dict.fromkeys(self.layers[n].module_name for n in missing if test(n)))

        up = newer(lambda n: self.layers[n].transposed)
        cells = newer(lambda n: isinstance(self.model.get_submodule(self.layers[n].module_name), nn.RNNCellBase))
        late = [(what, names) for what, names in (("transposed convolutions", up), ("recurrent cells", cells)) if names]
        return (f"state_dict has {' and '.join(said)}: it was saved from a connectome over other layers (another "
                "include=/exclude=, or another model), and nothing was loaded; build this Connectome over the layers "
                f"it was saved with, on the model it was saved from, or carry over the masks of the layers both have "
                f"with {carry} (the other layers keep theirs)" + "".join(
                    f". A state saved before {what} were synapses has no mask for them: to resume it, build the "
                    f"Connectome with exclude={names[:5]} (they stay dense, as then)" for what, names in late))

    def _check_same_ensembles(self, ensemble, per_layer, what: str) -> None:
        mine = self.ensemble_specs()
        if per_layer is None:  # saved before per-layer granularities: one spec for every layer
            try:
                per_layer = {n: g.spec for n, g in ensemble_rules.resolve(ensemble, list(self.masks))[0].items()}
            except (TypeError, ValueError):
                per_layer = None
        if per_layer != mine:
            diff = [n for n in mine if (per_layer or {}).get(n) != mine[n]]
            unmasked = [n for n in per_layer or {} if n not in mine]
            unnamed = [n for n in mine if n not in (per_layer or {})]
            if per_layer and (unmasked or unnamed):
                # the layers were compared before: an entry naming others than its masks' is malformed
                said = ([f"gives granularities for {unmasked[:5]}, layers it holds no mask for"] if unmasked else []) + (
                    [f"gives no granularity for {unnamed[:5]}, layers it holds masks for"] if unnamed else [])
                raise ValueError(f"{what} {' and '.join(said)}: it is malformed; save it again with "
                                 "Connectome.state_dict() or Connectome.save()")
            if per_layer and ensemble == self.ensemble:  # one rule spelt alike, other per-layer granularities
                raise ValueError(f"{what} was saved with other per-layer granularities than this connectome's ("
                                 + ", ".join(f"{n}: saved {per_layer[n]!r}, here {mine[n]!r}" for n in diff[:3])
                                 + "): build the Connectome with the per-layer ensemble rules it was saved with")
            raise ValueError(f"{what} was saved with ensemble {ensemble!r}, this connectome uses {self.ensemble!r}"
                             f"{f' (they differ on {diff[:3]})' if diff and per_layer else ''}: build the Connectome "
                             f"with ensemble={ensemble!r}")

    def dense_state_dict(self, device=None) -> Dict[str, torch.Tensor]:
        """An ordinary ``model.state_dict()`` (same keys) with zeros where pruned: it loads into a
        vanilla model with no project code. ``device``: where its tensors go (None: where the model's
        are); ``"cpu"`` for a file that loads on any machine, as the recipes write it (a file of CUDA
        tensors needs ``map_location`` on a machine without a GPU)."""
        self._check_params()
        src = self.model.state_dict()
        sd = OrderedDict((k, v.detach().to(device=device, copy=True)) for k, v in src.items())
        if hasattr(src, "_metadata"):  # the modules' versions, which some loaders need (torchvision's MNASNet)
            sd._metadata = src._metadata
        keys = state_dict_keys(self.model)
        for n, p in self.params.items():
            m = self.masks[n]
            for k in keys.get(id(p), [n]):
                if k in sd:
                    sd[k] = torch.where(m.to(sd[k].device), sd[k], torch.zeros((), dtype=sd[k].dtype))
        return sd


def _empty_saved(saved_sizes: Mapping[str, int], params: Mapping) -> set:
    """Names of saved layers of no elements whose weight holds no entries in the model either
    (``nn.Linear(4, 0)``): connectomes saved before such weights were left out of them list these
    layers of no synapses; a load skips them, as the connectome it builds has no such layer."""
    return {n for n, size in saved_sizes.items() if size == 0 and n in params and params[n].numel() == 0}


def _check_state_entries(sd: Mapping) -> None:
    """Refuse a connectome state_dict whose entries are not of the kinds :meth:`adaptive.Connectome.state_dict`
    writes (a dict where one is due, tensors in 'original'), before anything reads them further."""
    fix = "pass what Connectome.state_dict() returned (or a checkpoint's copy of it)"
    if "ensemble" in sd and not isinstance(sd["ensemble"], str):
        raise TypeError(f"the connectome state_dict's 'ensemble' must be a granularity spec string such as 'synapse', "
                        f"got {type(sd['ensemble']).__name__}: {fix}")
    for key, what in (("masks", "bool tensor"), ("original", "tensor"), ("ensembles", "granularity spec")):
        entry = sd.get(key)
        if not isinstance(entry, Mapping) and (key == "masks" or entry is not None):
            raise TypeError(f"the connectome state_dict's {key!r} must be a dict of parameter name -> {what}, got "
                            f"{type(entry).__name__}: {fix}")
    for n, o in (sd.get("original") or {}).items():
        if not isinstance(o, torch.Tensor):
            raise TypeError(f"the connectome state_dict's original weight for {n!r} must be a torch.Tensor, got "
                            f"{type(o).__name__}: {fix}")
        # (a meta tensor failed the load with torch's bare NotImplementedError, a complex one lost its imaginary part)
        if not o.is_floating_point() or o.device.type == "meta":
            raise TypeError(f"the connectome state_dict's original weight for {n!r} is a {o.dtype} tensor on {o.device}: "
                            f"originals are real floating-point weights with values (not on the meta device): {fix}")


def check_originals(original: Mapping, params: Mapping, what: str, saves: str) -> None:
    """Refuse stored original weights (``original``: layer name -> tensor) that do not fit the layers ``params``
    (name -> the model's weight): one of an unknown layer or of another shape, one that is no real floating-point
    tensor with values, or originals for some layers but not all (``what`` names the source, ``saves`` how a
    whole one is saved). A layer's weights would be broadcast from another shape, or cut to integers, silently."""
    for n, o in original.items():
        if n not in params:
            raise KeyError(f"{what} has original weights for unknown parameter {n!r}")
        if not isinstance(o, torch.Tensor) or not o.is_floating_point() or o.device.type == "meta":
            raise TypeError(f"{what}'s original weight for {n!r} is " + (
                f"a {o.dtype} tensor on {o.device}" if isinstance(o, torch.Tensor) else f"a {type(o).__name__}")
                + ": originals are real floating-point weights with values (not on the meta device)")
        if tuple(o.shape) != tuple(params[n].shape):
            raise ValueError(f"original weight for {n!r} has shape {tuple(o.shape)}, the model has {tuple(params[n].shape)}")
    lacking = [n for n in params if n not in original]
    if original and lacking:
        raise KeyError(f"{what} has original weights for some layers but not for {lacking[:5]}"
                       f"{'...' if len(lacking) > 5 else ''}: save it with every layer's original "
                       f"{saves}, or leave 'original' out to keep this connectome's")


def check_same_mode(saved, mine: str, what: str, carry: str) -> None:
    """Refuse a ``what`` (a connectome or controller state) saved in the other mode, before anything
    loads: a mask_only state holds the frozen original weights (and statistics of frozen weights), a
    train one none of the originals, so either taken into the other mode would go on silently as a
    run it never was. ``carry`` says what carries over instead. (A state saved before the mode was
    recorded is taken as it is.)"""
    if saved is None or saved == mine:
        return
    raise ValueError(
        f"this {what} was saved in mode={saved!r}, and this connectome runs mode={mine!r}: build the Connectome "
        f"with mode={saved!r} to resume that run; {carry}")
