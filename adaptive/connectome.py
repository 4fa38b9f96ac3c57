"""The connectome: for every prunable weight a boolean mask, its ensemble granularity and unit
bookkeeping; in ``mask_only`` mode also the frozen original weights. It is the single source of
truth for which synapses exist.

Execution is masked-dense: a pruned synapse is an exact 0.0 inside the ordinary dense parameter,
so PyTorch's own kernels run the forward and backward passes and gradients stay dense (growth
scores need them). :meth:`Connectome.attach` hooks an optimizer so that gradients are masked just
before its step and weights are re-masked right after it; optimizer moments are reset wherever a
mask changes. While no observer needs dense gradients, each gradient is masked as soon as backward
has accumulated it (a per-parameter hook, while it is still in cache), and the step only checks
that nothing wrote to it since. Parameters keep their identity and no hook is placed on the model's
modules (parameter hooks are neither deep-copied nor pickled), so optimizers, DDP, checkpoints,
``deepcopy`` and ``pickle`` keep working.

This module holds the class and its construction; the rest is in mixins, one concept each:
:mod:`adaptive.connectome_queries` (counts, densities, ensemble masks, the summary),
:mod:`adaptive.connectome_edits` (set_masks and set_ensemble_masks), :mod:`adaptive.connectome_masking`
(imposing the masks on weights and gradients), :mod:`adaptive.connectome_optimizers` (the optimizer
hooks, observers and edit listeners), :mod:`adaptive.connectome_state` (state_dict, load_state_dict,
pickling) and :mod:`adaptive.connectome_files` (save and load); the model wrappers it looks through
are in :mod:`adaptive.wrappers`.
"""
from __future__ import annotations

import weakref
from typing import Callable, Dict, Iterable, List, Mapping, Optional

import torch
from torch import nn

from . import connectome_files, connectome_optimizers, ensemble_rules
from .connectome_edits import ConnectomeEditsMixin
from .connectome_edits import EnsembleRuleError  # noqa: F401  (importable from here, as before)
from .connectome_files import ConnectomeFilesMixin
from .connectome_masking import ConnectomeMaskingMixin
from .connectome_optimizers import ConnectomeOptimizersMixin
from .connectome_optimizers import _MASKED_BY  # noqa: F401  (importable from here, as before)
from .connectome_queries import ConnectomeQueriesMixin
from .connectome_state import ConnectomeStateMixin
from .connectome_state import FORMAT, check_same_mode  # noqa: F401  (importable from here, as before)
from .discovery import SynapseLayer, aliases, discover, shared_weight_warning
from .ensembles import Granularity, check_granularity, for_layer
from .grad_masking import BackwardMasker
from .warn import warn_user
from .wrappers import _pattern_inside, _plain_module, _plain_patterns, sharded_model_problem
from .wrappers import _local_module, _plain_names, _stripped, _wrapper_prefix, eager  # noqa: F401  (as before)

__all__ = ["Connectome", "MODES",
           # importable from here, as before they moved out
           "EnsembleRuleError", "FORMAT", "check_same_mode", "eager"]
# private names other modules and tests import from here (not in __all__: a star import takes the
# public names only); named here, so that the import is used
_REEXPORTED = (_MASKED_BY, _local_module, _plain_names, _stripped, _wrapper_prefix)

MODES = ("train", "mask_only")


class Connectome(ConnectomeQueriesMixin, ConnectomeEditsMixin, ConnectomeMaskingMixin,
                 ConnectomeOptimizersMixin, ConnectomeStateMixin, ConnectomeFilesMixin):
    """Any ``nn.Module`` as a masked connectome of synapse ensembles.

    Args:
        model: the network. Its Linear, Conv1d/2d/3d and ConvTranspose1d/2d/3d weights are the synapses. A
            ``torch.compile``, DistributedDataParallel or DataParallel wrapper (``accelerator.prepare``'s
            model) is taken as the module it wraps (same parameters, its names).
        ensemble: granularity spec: "synapse", "kernel", "neuron", "block:RxC" or "n:m"; or rules
            giving layers different ones, first match wins: ``{"*mlp*": "neuron", "*": "synapse"}``
            or ``"*mlp*=neuron;synapse"`` (see :mod:`adaptive.ensemble_rules`).
        include / exclude: shell-style name patterns selecting prunable layers: a list, or a string
            split at commas as on the command line (``exclude="0,2"``). On a wrapper, patterns written as
            it names layers (``module.fc``, ``module.*``) select the module inside's (``fc``, ``*``), here,
            in the ``ensemble`` rules and in a :class:`~adaptive.Controller`'s ``protect=`` alike.
        mode: "train" (weights learn, pruned weights held at 0.0) or "mask_only" (weights frozen
            at their current values, which are kept so a restored synapse returns bit-identical).
    """

    @torch.inference_mode(False)  # built inside torch.inference_mode(), its masks must still track edits
    def __init__(
        self,
        model: nn.Module,
        ensemble: str | Granularity | Mapping = "synapse",
        include: Optional[Iterable[str] | str] = None,
        exclude: Optional[Iterable[str] | str] = None,
        mode: str = "train",
    ):
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}: use 'train' or 'mask_only'")
        sharded = sharded_model_problem(model)  # FSDP's shards: not whole weights (before any is taken for one)
        if sharded:
            raise ValueError(sharded)
        include, exclude = _plain_patterns(model, include), _plain_patterns(model, exclude)  # module.* of a wrapper
        wrapped, model = model, _plain_module(model)
        # built on a wrapper: the patterns given later (ensemble rules, a Controller's protect=) may name
        # layers as it does (module.fc, module.*), taken as the module inside names them
        self._built_wrapped = wrapped is not model  # (a bool: a connectome pickles and deep-copies)
        found = discover(model, include, exclude)
        shared = shared_weight_warning(model, found)
        if shared:
            warn_user(shared)
        meta = [n for n, (_, p) in found.items() if p.is_meta]
        if meta:
            raise ValueError(
                f"{len(meta)} weight(s) are on the 'meta' device and hold no values ({', '.join(meta[:3])}"
                f"{', ...' if len(meta) > 3 else ''}): materialise the model first, e.g. model.to_empty(device='cpu') "
                "and then load or initialise its weights, and build the Connectome on it"
            )
        self.model = model
        self.mode = mode
        self.layers: Dict[str, SynapseLayer] = {n: l for n, (l, _) in found.items()}
        self.params: Dict[str, nn.Parameter] = {n: p for n, (_, p) in found.items()}
        self.masks: Dict[str, torch.Tensor] = {
            n: torch.ones(p.shape, dtype=torch.bool, device=p.device) for n, p in self.params.items()
        }
        self._dense: Dict[str, bool] = {n: True for n in self.params}
        # The masks as last set (a private copy, 1 byte per synapse): what an edit is measured
        # against, even when the caller changed a tensor of ``self.masks`` in place before set_masks.
        self._last_set: Dict[str, torch.Tensor] = {n: m.clone() for n, m in self.masks.items()}
        self._set_tensor: Dict[str, torch.Tensor] = dict(self.masks)
        self._set_version: Dict[str, int] = {n: m._version for n, m in self.masks.items()}
        self.granularities: Dict[str, Granularity]
        held = aliases(model)  # a tied weight answers to every name it has, as in include/exclude
        self.granularities, self._ensemble = ensemble_rules.resolve(
            ensemble, list(self.params), {n: held.get(id(p), ()) + (n, n.rpartition(".")[0]) for n, p in self.params.items()},
            rename=self._pattern_inside())
        # a transposed convolution's granularity sees its weight laid out (out, in/groups, *kernel)
        self.granularities = {n: for_layer(g, self.layers[n]) for n, g in self.granularities.items()}
        checked = set()  # a plugin granularity's pool and expand agree (once per granularity and shape)
        for n, g in self.granularities.items():
            key = (id(g), tuple(self.masks[n].shape))  # by identity: a plugin's dataclass may not hash
            if key not in checked:
                check_granularity(g, n, self.masks[n].shape, self.masks[n].device)
                checked.add(key)
        # Hot-path cache: the non-dense layers' parameters and their masks as 0/1 integers of the
        # parameter's width on its device, multiplied into the bits of weights and gradients
        # (adaptive.exact_masking): exact even over inf and NaN, the kernel as fast as a float multiply
        # (faster than one by a bool mask; each integer view costs a little Python), and torch._foreach_mul_ does all layers in one call.
        self._hot: Optional[tuple] = None
        # Ensemble masks as last pooled (see _ensemble_mask): name -> (weakref to the mask pooled,
        # its version, its address, the granularity, the ensemble mask).
        self._ens_cache: Dict[str, tuple] = {}
        self.original: Dict[str, torch.Tensor] = {}
        if mode == "mask_only":
            self.original = {n: p.detach().clone() for n, p in self.params.items()}
        self._optimizers: List[weakref.ref] = []
        self._wrappers: List[weakref.ref] = []  # the wrappers (Accelerate's) attach() was given around them
        self._handles: list = []
        self._observers: List[Callable[[], None]] = []
        self._controllers: List[weakref.ref] = []  # controllers built on this connectome (Controller adds itself)
        self._stopped: List[weakref.ref] = []  # the controllers the last detach() stopped: attach() restarts them
        # For each observer: None (reads dense gradients at every step) or a predicate saying
        # whether it reads them at the coming step.
        self._observer_active: List[Optional[Callable[[], bool]]] = []
        # Gradients masked inside backward (adaptive.grad_masking), re-armed whenever _gen moves:
        # at every step, mask edit, observer change and attach/detach.
        self._masker = BackwardMasker(self)
        self._gen = self._static_gen = 0
        self._mask_in_backward = True
        self._edit_listeners: List[Callable[[Dict[str, torch.Tensor]], None]] = []
        self._repair_pending: "weakref.WeakSet" = weakref.WeakSet()  # optimizers loaded since their last step

    def _pattern_inside(self) -> Optional[Callable[[str], str]]:
        """For a connectome built on a wrapper, the rule taking a pattern written as the wrapper names
        layers (``module.fc``) as the module inside names them (``fc``): :func:`_plain_patterns`."""
        return _pattern_inside(self.model) if self._built_wrapped else None


# The mixins annotate methods with the class (attach, load: -> "Connectome") in modules that import it only
# for type checkers (importing it there would be circular): bound there now, typing.get_type_hints resolves them.
connectome_files.Connectome = connectome_optimizers.Connectome = Connectome
