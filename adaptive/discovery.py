"""Finding the synapses of an arbitrary ``nn.Module``.

A synapse is one scalar weight of a Linear (torch's, or torch_geometric's inside GCNConv, SAGEConv, ...), Conv1d/2d/3d or ConvTranspose1d/2d/3d layer (grouped
and depthwise included; a transposed convolution's weight is stored ``(in, out/groups, *kernel)``,
see :class:`SynapseLayer`) or of a MultiheadAttention's input projections (``in_proj_weight``, or ``q_proj_weight``,
``k_proj_weight`` and ``v_proj_weight`` when keys and values have their own sizes; its
``out_proj`` is a Linear) or of a recurrent layer's matrices (``nn.RNN``, ``nn.LSTM``, ``nn.GRU``:
``weight_ih_l*``, ``weight_hh_l*``, ``weight_hr_l*``) or of a recurrent cell's (``nn.RNNCell``,
``nn.LSTMCell``, ``nn.GRUCell``: ``weight_ih``, ``weight_hh``). Complex-valued weights are not synapses (they stay
dense, named in a warning), nor are weights a parametrization or ``weight_norm`` computes, or that ``torch.nn.utils.prune`` masks (a warning names ``prune.remove``). Biases, normalisation parameters and embeddings are not synapses, but a Linear tied to an
embedding (``head.weight = emb.weight``) holds synapses, so pruning it zeroes entries of the
embedding table: the Connectome warns about any synapse weight that a non-synapse module also
holds (:func:`shared_weight_warning`), naming ``exclude=`` to keep it dense. A weight shared by
several modules is one set of synapses (one mask, so the modules can never be pruned apart),
reported under the name of the first prunable module that holds it; ``include``/``exclude``
patterns see every name it has, so excluding any module that holds a tied weight leaves it dense.
"""
from __future__ import annotations

import copy
import fnmatch
import re
import sys
from dataclasses import dataclass
from typing import Dict, Iterable, Optional, Sequence

import torch
from torch import nn
from torch.nn.utils import parametrize
from torch.nn.utils import prune as torch_prune
from torch.nn.utils.spectral_norm import SpectralNorm
from torch.nn.utils.weight_norm import WeightNorm
from .config import split_commas
from .name_patterns import PatternSet, escape
from .warn import warn_user

TRANSPOSED_TYPES = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
PRUNABLE_TYPES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d) + TRANSPOSED_TYPES
_CONV_KIND = {nn.Conv1d: "conv1d", nn.Conv2d: "conv2d", nn.Conv3d: "conv3d", nn.ConvTranspose1d: "convtranspose1d",
              nn.ConvTranspose2d: "convtranspose2d", nn.ConvTranspose3d: "convtranspose3d"}
_RNN_MATRIX = re.compile(r"weight_(ih|hh|hr)_l\d+(_reverse)?")
ATTENTION_WEIGHTS = ("in_proj_weight", "q_proj_weight", "k_proj_weight", "v_proj_weight")
CELL_WEIGHTS = ("weight_ih", "weight_hh")  # the matrices of nn.RNNCell, nn.LSTMCell and nn.GRUCell


def linear_types() -> tuple:
    """The module classes whose ``weight`` is a Linear's ``[out, in]`` matrix, read as ``F.linear(x, weight,
    bias)``: ``nn.Linear``, and torch_geometric's ``Linear`` (the layer inside ``GCNConv``, ``GATConv``,
    ``SAGEConv``, ...) once torch_geometric is imported, as it is wherever a model holds one (it is not imported
    here: a model without it never pays for the import)."""
    pyg = getattr(sys.modules.get("torch_geometric.nn.dense.linear"), "Linear", None)
    return (nn.Linear,) if pyg is None else (nn.Linear, pyg)


def writes_unseen(module: nn.Module) -> bool:
    """Whether ``module``'s own initialisation writes its weight behind autograd's version counter: torch_geometric's
    ``Linear``, whose ``reset_parameters`` (called by ``GCNConv.reset_parameters``, ``model.reset_parameters()``,
    its lazy initialisation) writes ``weight.data``. Its pruned synapses are re-masked at every step, not only after
    a write the counter saw."""
    pyg = getattr(sys.modules.get("torch_geometric.nn.dense.linear"), "Linear", None)
    return pyg is not None and isinstance(module, pyg)


def prunable_types() -> tuple:
    """The module classes whose ``weight`` holds synapses: :func:`linear_types`, ``nn.Conv1d/2d/3d`` and
    ``nn.ConvTranspose1d/2d/3d`` (``PRUNABLE_TYPES`` without torch_geometric's Linear)."""
    return linear_types() + PRUNABLE_TYPES[1:]


# the layers whose weights hold synapses, as the messages list them
PRUNABLE_LIST = ("nn.Linear (torch_geometric's Linear too), nn.Conv1d/2d/3d, nn.ConvTranspose1d/2d/3d, nn.MultiheadAttention's projections, "
                 "nn.RNN/LSTM/GRU and nn.RNNCell/LSTMCell/GRUCell matrices")


def weight_hooks(module: nn.Module) -> Dict[str, object]:
    """``{weight attribute: hook}`` for each weight of ``module`` that old-style
    ``torch.nn.utils.weight_norm`` or ``torch.nn.utils.spectral_norm`` recomputes before every call
    (from ``NAME_g`` and ``NAME_v``, or from ``NAME_orig``); the weight itself is then a plain tensor."""
    return {h.name: h for h in module._forward_pre_hooks.values() if isinstance(h, (WeightNorm, SpectralNorm))}


def pruning_hooks(module: nn.Module) -> Dict[str, object]:
    """``{weight attribute: hook}`` for each weight of ``module`` that ``torch.nn.utils.prune`` masks:
    it holds ``NAME_orig`` (a parameter) and ``NAME_mask`` (a buffer) and recomputes ``NAME`` as their
    product before every call, so ``NAME`` itself is a plain tensor."""
    return {h._tensor_name: h for h in module._forward_pre_hooks.values()
            if isinstance(h, torch_prune.BasePruningMethod)}


def _pruned_message(pruned: Sequence[tuple], include: str) -> str:
    """Why the weights that ``torch.nn.utils.prune`` masks (``(module name, attribute)`` pairs) hold no
    synapses, and how ``include`` them (the end of a sentence, e.g. "to include them")."""
    mname, attr = pruned[0]
    name = f"{mname}.{attr}" if mname else attr
    a = attr if all(x == attr for _, x in pruned) else "NAME"
    return (f"{_listed([f'{m}.{x}' if m else x for m, x in pruned])} are masked by torch.nn.utils.prune: each is "
            f"recomputed from {a}_orig * {a}_mask at every call, so it holds no synapses of the connectome. "
            f"{include[0].upper()}{include[1:]}, call torch.nn.utils.prune.remove(module, {a!r}) on each of those "
            f"modules first (here torch.nn.utils.prune.remove(model.get_submodule({mname!r}), {attr!r})): it makes "
            f"the pruning permanent (the weight becomes a parameter, zero where it was pruned) and drops {a}_mask. "
            f"To keep that mask as the connectome's, save mask = module.{attr}_mask.bool() before prune.remove and "
            f"pass it to conn.set_masks({{{name!r}: mask}}) once the Connectome is built")


def copy_model(model: nn.Module, purpose: str) -> nn.Module:
    """``copy.deepcopy(model)``, with an error that names the fix where torch cannot copy it: a layer
    under old-style ``torch.nn.utils.weight_norm`` or ``spectral_norm``, or under
    ``torch.nn.utils.prune``, holds a computed weight that deepcopy refuses.
    ``purpose`` names the caller in the message (e.g. ``"graphs.compact"``)."""
    try:
        return copy.deepcopy(model)
    except RuntimeError as e:
        hooked = [(f"{n or type(m).__name__}.{a}", "weight_norm" if isinstance(h, WeightNorm) else "spectral_norm")
                  for n, m in model.named_modules() for a, h in weight_hooks(m).items()]
        hooked += [(f"{n or type(m).__name__}.{a}", "torch.nn.utils.prune")
                   for n, m in model.named_modules() for a in pruning_hooks(m)]
        if not hooked:
            raise
        kinds = {k for _, k in hooked}
        fixes = []
        if kinds & {"weight_norm", "spectral_norm"}:
            fixes.append("Call torch.nn.utils.remove_weight_norm(module) (remove_spectral_norm for spectral_norm) first, "
                         "or use torch.nn.utils.parametrizations.weight_norm, which can be copied.")
        if "torch.nn.utils.prune" in kinds:
            fixes.append("For torch.nn.utils.prune, call torch.nn.utils.prune.remove(module, NAME) first (it makes that "
                         "pruning permanent), or run the model once under torch.no_grad(), which leaves a weight torch "
                         "can copy.")
        raise ValueError(f"{purpose} works on a copy of the model, and torch cannot copy a layer whose weight a "
                         f"torch.nn.utils hook computes: {', '.join(f'{w} ({k})' for w, k in hooked)}. "
                         + " ".join(fixes)) from e


def _hook_sources(module: nn.Module, hook) -> list:
    """The parameters of ``module`` from which ``hook`` (see :func:`weight_hooks`) computes its weight."""
    suffixes = ("_g", "_v") if isinstance(hook, WeightNorm) else ("_orig",)
    return [p for p in (module._parameters.get(hook.name + s) for s in suffixes) if p is not None]


def _prunable_weights(module: nn.Module):
    """``(parameter attribute, kind, groups)`` of each weight of ``module`` that holds synapses."""
    if isinstance(module, prunable_types()):
        kind = "linear" if isinstance(module, linear_types()) else next(k for c, k in _CONV_KIND.items() if isinstance(module, c))
        return [("weight", kind, int(getattr(module, "groups", 1)))]
    if isinstance(module, nn.MultiheadAttention):
        # a projection of the input to queries, keys or values: a Linear without the module. Those the
        # module does not use are None; one that torch.nn.utils.prune masks, old-style weight_norm or
        # spectral_norm recomputes, or a parametrization computes is a plain tensor, listed all the same
        # so that discover names it and the fix (left out, it stayed dense with no word said)
        hooked = {**pruning_hooks(module), **weight_hooks(module)}
        return [(a, "linear", 1) for a in ATTENTION_WEIGHTS
                if isinstance(module._parameters.get(a), nn.Parameter) or a in hooked
                or parametrize.is_parametrized(module, a)]
    if isinstance(module, nn.RNNBase):
        # weight_ih_l{k}[_reverse] (gates x input), weight_hh_l{k}[_reverse] (gates x hidden) and an
        # LSTM's weight_hr_l{k}[_reverse] (projection x hidden): each a Linear's matrix
        names = [n for n in getattr(module, "_flat_weights_names", []) if _RNN_MATRIX.fullmatch(n)]
        return [(n, "linear", 1) for n in names]
    if isinstance(module, nn.RNNCellBase):
        # nn.RNNCell/LSTMCell/GRUCell, called once per step of a loop of the user's own: weight_ih
        # (gates x input) and weight_hh (gates x hidden), as a recurrent layer's
        return [(a, "linear", 1) for a in CELL_WEIGHTS]
    return []


def _own_forward(module: nn.Module) -> bool:
    """Whether ``module`` is a subclass of nn.Linear or a convolution whose class replaces the forward
    (or a convolution's ``_conv_forward``) of the torch layer it derives from: it may read its weight
    otherwise than as stored (timm's StdConv2d standardises it; a LoRA layer adds to it)."""
    base = next((c for c in PRUNABLE_TYPES if type(module) is not c and isinstance(module, c)), None)
    if base is None:
        return False
    cls = type(module)
    return cls.forward is not base.forward or getattr(cls, "_conv_forward", None) is not getattr(base, "_conv_forward", None)


def holds_synapses(module: nn.Module, attr: str) -> bool:
    """Whether ``module``'s weight ``attr`` is one whose entries are synapses (a Linear's or a
    convolution's ``weight``, an attention projection, a recurrent layer's or cell's matrix), as
    :func:`discover` finds them."""
    return any(a == attr for a, _, _ in _prunable_weights(module))


@dataclass(frozen=True)
class SynapseLayer:
    """Bookkeeping for one prunable weight (``Connectome.layers[name]``): its parameter ``name`` and
    ``module_name``, the ``kind`` of layer, the weight's shape and its convolution groups. ``out_units`` and
    ``in_units`` are the units the synapses join (channels for a convolution).

    A weight is stored ``(out, in/groups, *kernel)``, except a transposed convolution's
    (``nn.ConvTranspose1d/2d/3d``, ``transposed``), which PyTorch stores ``(in, out/groups, *kernel)``.
    Elementwise work (masks, scores, optimizer repair) reads the weight as it is stored; whatever
    needs the output axis (a neuron, a kernel, a block, an n:m group, fan-in) reads it through
    :meth:`out_in`, which lays a weight-shaped tensor out as ``out_in_shape``, ``(out, in/groups,
    *kernel)`` for every layer, and :meth:`stored`, its inverse."""

    name: str  # parameter name, e.g. "layer1.0.conv1.weight"
    module_name: str  # e.g. "layer1.0.conv1"
    kind: str  # "linear", "conv1d", "conv2d", "conv3d", "convtranspose1d", "convtranspose2d", "convtranspose3d"
    shape: tuple  # weight shape as stored: (out, in_per_group, *kernel); (in, out_per_group, *kernel) if transposed
    groups: int  # convolution groups (1 for Linear)

    @property
    def transposed(self) -> bool:
        """The weight is stored ``(in, out/groups, *kernel)`` (``nn.ConvTranspose1d/2d/3d``)."""
        return self.kind.startswith("convtranspose")

    @property
    def out_in_shape(self) -> tuple:
        """The weight's shape laid out ``(out, in/groups, *kernel)``, as :meth:`out_in` returns it."""
        return transposed_shape(self.shape, self.groups) if self.transposed else tuple(self.shape)

    @property
    def out_units(self) -> int:
        return self.out_in_shape[0]

    @property
    def in_units(self) -> int:
        return self.out_in_shape[1] * self.groups

    @property
    def numel(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n

    def out_in(self, t: torch.Tensor) -> torch.Tensor:
        """A tensor shaped like the stored weight, laid out ``(out, in/groups, *kernel)`` (itself
        unless ``transposed``): entry ``[o, i, ...]`` joins input unit ``(o // (out/groups)) *
        (in/groups) + i`` to output unit ``o``. Raises ValueError for a tensor of another shape, one
        already laid out ``out_in_shape`` included; where in == out, any groups (``ConvTranspose2d(4, 4, 3)``, ``groups=2`` too)
        the two layouts share a shape, and which one ``t`` is in cannot be told."""
        self._check_shape(t, "out_in", "the stored weight", self.shape, self.out_in_shape,
                          "laid out (out, in/groups, *kernel)")
        return to_out_in(t, self.groups) if self.transposed else t

    def stored(self, t: torch.Tensor) -> torch.Tensor:
        """The inverse of :meth:`out_in`: a tensor laid out ``out_in_shape`` back in the stored layout
        (ValueError for a tensor of another shape, as :meth:`out_in`)."""
        self._check_shape(t, "stored", "out_in_shape", self.out_in_shape, self.shape, "in the stored layout")
        return from_out_in(t, self.groups) if self.transposed else t

    def _check_shape(self, t, method: str, what: str, want: tuple, given: tuple, already: str) -> None:
        """Refuse a ``t`` that is not shaped ``want`` (``given``: the other layout's shape)."""
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{self.name}: {method}() takes a weight-shaped tensor, got {type(t).__name__}")
        if tuple(t.shape) != tuple(want):
            again = f", the other layout's shape: it is already {already}" if tuple(t.shape) == tuple(given) else ""
            raise ValueError(f"{self.name}: {method}() takes a tensor shaped like {what}, {tuple(want)}; got "
                             f"{tuple(t.shape)}{again}")


def transposed_shape(shape, groups: int) -> tuple:
    """``(a, b/groups, *kernel)`` from ``(b, a/groups, *kernel)``: a transposed convolution's
    stored weight shape to its ``(out, in/groups, *kernel)`` one, and back."""
    return (shape[1] * groups, shape[0] // groups, *shape[2:])


def to_out_in(t: torch.Tensor, groups: int) -> torch.Tensor:
    """A transposed convolution's weight-shaped tensor, stored ``(in, out/groups, *kernel)``, laid out
    ``(out, in/groups, *kernel)``: within each group the two unit axes swap (a copy)."""
    ipg, opg = t.shape[0] // groups, t.shape[1]
    return t.reshape(groups, ipg, opg, *t.shape[2:]).transpose(1, 2).reshape(groups * opg, ipg, *t.shape[2:])


def from_out_in(t: torch.Tensor, groups: int) -> torch.Tensor:
    """The inverse of :func:`to_out_in` (the same swap: it is its own inverse, read with the groups)."""
    return to_out_in(t, groups)


def _as_patterns(p: Optional[Iterable[str] | str], what: str = "include/exclude") -> Sequence[str]:
    """The patterns of ``include``/``exclude`` (and the controller's ``protect``): a string is split
    at commas, as the command line's ``--exclude 0,2`` is, except inside a ``[...]`` character class
    (``"layer[1,2]"`` stays one pattern)."""
    if p is None:
        return ()
    if isinstance(p, str):
        return tuple(split_commas(p))
    pats = tuple(p)
    for x in pats:
        if not isinstance(x, str):
            raise TypeError(f"{what} patterns must be strings, got {x!r}")
    return pats


def _matches(patterns: Sequence[str], *names: str) -> bool:
    return any(fnmatch.fnmatchcase(n, p) for p in patterns for n in names)


def _reparametrised_weight(model: nn.Module, name: str) -> Optional[str]:
    """For a parameter that stores the reparametrised weight of a prunable layer, any of its synapse
    weights (a Linear's ``weight``, a recurrent layer's ``weight_hh_l0``, an attention's
    ``in_proj_weight``: prune's ``NAME_orig``, weight_norm's ``NAME_g``/``NAME_v``, spectral_norm's
    ``NAME_orig``, a parametrization's ``parametrizations.NAME.original*``): the call that removes it;
    else None. Read from the module's hooks and parametrizations, not guessed from the name."""
    if ".parametrizations." in f".{name}":
        owner, _, rest = f".{name}".rpartition(".parametrizations.")
        attr, _, leaf = rest.partition(".")
        m = _submodule(model, owner[1:])
        if m is None or not leaf.startswith("original") or not parametrize.is_parametrized(m, attr) \
                or not holds_synapses(m, attr):
            return None
        return f"torch.nn.utils.parametrize.remove_parametrizations(module, {attr!r}, leave_parametrized=True)"
    owner, _, leaf = name.rpartition(".")
    m = _submodule(model, owner)
    if m is None:
        return None
    for h in m._forward_pre_hooks.values():
        attr = getattr(h, "name", getattr(h, "_tensor_name", None))
        if not isinstance(attr, str) or not holds_synapses(m, attr):
            continue
        which = ")" if attr == "weight" else f", {attr!r})"
        if isinstance(h, SpectralNorm) and leaf == f"{attr}_orig":
            return "torch.nn.utils.remove_spectral_norm(module" + which
        if isinstance(h, WeightNorm) and leaf in (f"{attr}_g", f"{attr}_v"):
            return "torch.nn.utils.remove_weight_norm(module" + which
        if isinstance(h, torch_prune.BasePruningMethod) and leaf == f"{attr}_orig":
            return f"torch.nn.utils.prune.remove(module, {attr!r})"
    return None


def reparametrisation_call(module: nn.Module, attr: str) -> Optional[str]:
    """The call that removes what computes ``module``'s weight ``attr`` at every call, read from the module
    as it is now: ``torch.nn.utils.parametrize.remove_parametrizations(module, attr, leave_parametrized=True)``
    for a parametrization, ``torch.nn.utils.remove_weight_norm(module[, attr])`` (``remove_spectral_norm``) for
    old-style weight_norm (spectral_norm), ``torch.nn.utils.prune.remove(module, attr)`` for
    torch.nn.utils.prune; None when nothing computes it."""
    if parametrize.is_parametrized(module, attr):
        return f"torch.nn.utils.parametrize.remove_parametrizations(module, {attr!r}, leave_parametrized=True)"
    hook = weight_hooks(module).get(attr)
    if hook is not None:
        fn = "weight_norm" if isinstance(hook, WeightNorm) else "spectral_norm"
        return f"torch.nn.utils.remove_{fn}(module" + (")" if attr == "weight" else f", {attr!r})")
    if attr in pruning_hooks(module):
        return f"torch.nn.utils.prune.remove(module, {attr!r})"
    return None


def _other_attributes(reparametrised: Sequence[tuple]) -> str:
    """For the refusal of a model whose prunable weights are all reparametrised: the exact calls for those
    whose attribute is not ``weight`` (a recurrent matrix, an attention projection), which take it by name
    ('' where every one is a ``weight``). ``reparametrised``: discover's ``((module, weight), label, call)``."""
    calls = {label: fix for (mname, pname), label, fix in reparametrised
             if "prune.remove" not in fix and not pname.endswith(".weight") and pname != "weight"}
    if not calls:
        return ""
    return "; for " + ", ".join(f"{label}: {fix}" for label, fix in list(calls.items())[:4]) + (
        ", ..." if len(calls) > 4 else "")


def _submodule(model: nn.Module, name: str) -> Optional[nn.Module]:
    try:
        return model.get_submodule(name)
    except AttributeError:
        return None


def container_hint(unused: Sequence[str], names: Iterable[str]) -> str:
    """For patterns that name a module holding prunable layers (a Sequential, a block): a pattern
    matches a layer's own name, so ``'NAME.*'`` is what takes every layer inside ('' if none)."""
    names = list(names)
    inside = [p for p in unused if any(fnmatch.fnmatchcase(n, f"{p}.*") for n in names)]
    hint = (f"; {', '.join(repr(p) for p in inside)} name(s) module(s) holding prunable layers, and a pattern matches "
            f"a layer's own name: give {', '.join(repr(p + '.*') for p in inside)} for every layer inside" if inside else "")
    # a name holding a wildcard character, given as it is spelt ('fc[1]': '[1]' is a character class matching '1')
    spelt = [p for p in unused if p in names or f"{p}.weight" in names]
    if spelt:
        hint += (f"; {', '.join(repr(p) for p in spelt)} spell(s) a name holding '*', '?' or '[', which a pattern reads "
                 f"as wildcards: write {', '.join(repr(escape(p)) for p in spelt)} for the name itself")
    return hint


def _listed(names: Sequence[str], most: int = 4) -> str:
    return ", ".join(names[:most]) + (", ..." if len(names) > most else "")


# Names of parameters that are matrix-shaped but no weight matrix: a position or bias table, a token,
# a normalisation's or a layer scale's parameters (ViT's pos_embedding, Swin's relative_position_bias_table)
_NOT_A_WEIGHT = re.compile(r"bias|embed|token|pos|norm|scale|gamma|beta", re.IGNORECASE)


def _other_weight_matrices(model: nn.Module, seen: set) -> list:
    """``(name, module type, torch's own)`` of weight tensors that no prunable layer holds: a
    parameter named ``*weight*`` with two or more dimensions (Bilinear), and a matrix
    of a module of the user's own (two or more dimensions of more than one entry: ``self.w`` read by
    ``F.linear(x, self.w)``) unless its name says it is a table, token or scale (a position
    embedding). Embeddings are not synapses by design and are not listed, nor are the tensors a
    parametrization computes its weight from (a warning of their own names the layer); ``seen``
    also holds the ``weight_g``/``weight_v`` (``weight_orig``) of a prunable layer under old-style
    weight_norm (spectral_norm), which a warning of their own names."""
    out, listed = [], set(seen)
    for mname, module in model.named_modules():
        if isinstance(module, (nn.Embedding, nn.EmbeddingBag, parametrize.ParametrizationList)):
            continue
        for pname, p in module.named_parameters(recurse=False):
            if id(p) in listed or isinstance(p, nn.parameter.UninitializedParameter) or p.dim() < 2:
                continue
            matrix = sum(s > 1 for s in p.shape) >= 2 and not _NOT_A_WEIGHT.search(pname)
            if "weight" in pname or matrix:
                listed.add(id(p))
                out.append((f"{mname}.{pname}" if mname else pname, type(module).__name__,
                            type(module).__module__.startswith("torch.")))
    return out


# How a weight of the user's own module becomes prunable (the end of a sentence)
HOLD_IN_A_LAYER = ("hold it in such a layer, in place of the Parameter: self.fc = nn.Linear(in_features, out_features, "
                   "bias=False) read as F.linear(x, self.fc.weight) (the same [out, in] layout; an nn.Conv1d/2d/3d "
                   "for a convolution kernel)")


def _memory_span(t: torch.Tensor):
    """``(device, first byte, byte past the last)`` of the memory ``t``'s elements occupy, None where none can be
    told (no elements, the meta device, a tensor without storage of its own)."""
    if isinstance(t, nn.parameter.UninitializedParameter):  # (a lazy layer's: no memory yet)
        return None
    try:
        if t.numel() == 0 or t.device.type == "meta" or not t.untyped_storage().data_ptr():
            return None
        start = t.data_ptr()
    except (RuntimeError, NotImplementedError, TypeError, ValueError):  # (a subclass without storage of its own)
        return None
    last = sum((size - 1) * abs(stride) for size, stride in zip(t.shape, t.stride()))
    return str(t.device), start, start + (last + 1) * t.element_size()


def _refuse_shared_memory(model: nn.Module, found: Dict[str, tuple]) -> None:
    """Refuse a prunable weight whose memory another parameter of ``model`` shares without being the same
    parameter (``dec.weight = nn.Parameter(enc.weight.t())``, ``b.weight.data = a.weight.data``): each would be
    masked on its own, and an optimizer step through one writes the other's pruned synapses back. A weight tied
    as one parameter (``b.weight = a.weight``) is one object, held under both names, and is fine; so are weights
    side by side in one buffer (an RNN's, flattened for cuDNN), whose memory does not overlap."""
    for name, (_, w) in found.items():  # a weight whose own elements share memory (an expand's stride 0)
        if w.layout == torch.strided and w.numel() > 1 and torch._debug_has_internal_overlap(w) == 1:  # 1: yes (2: too hard to tell)
            raise ValueError(
                f"the prunable weight {name!r} reads some of its memory at several positions (strides "
                f"{tuple(w.stride())} for shape {tuple(w.shape)}: a view made by expand() or as_strided()), so pruning "
                "one synapse would zero others the mask keeps live: give it memory of its own "
                "(nn.Parameter(w.detach().clone()), or .contiguous())")
    spans = sorted(((s, n, p) for n, p in model.named_parameters() if (s := _memory_span(p)) is not None),
                   key=lambda x: x[0])  # (each object once; by device, then address: one sweep finds every overlap)
    names = {id(w): name for name, (_, w) in found.items()}
    shared: Dict[str, list] = {}
    # (device, end, name, parameter) of the span reaching furthest so far: a span overlapping any earlier one
    # overlaps this one too, so every member of an overlapping pair is met
    reach = None
    for (dev, start, end), n, p in spans:
        if reach is not None and reach[0] == dev and start < reach[1]:
            for mine, other in ((reach[3], n), (p, reach[2])):
                if id(mine) in names:
                    shared.setdefault(names[id(mine)], []).append(other)
        if reach is None or reach[0] != dev or end > reach[1]:
            reach = (dev, end, n, p)
    if shared:
        name, others = next(iter(shared.items()))
        raise ValueError(
            f"the prunable weight {name!r} shares its memory with the parameter(s) {others[:3]}, which are other "
            "parameters (one a view of the other's data: nn.Parameter(a.weight.t()), or b.weight.data = "
            "a.weight.data): each would be masked on its own, and an optimizer step through one would write the "
            "other's pruned synapses back. Tie them as one parameter (b.weight = a.weight; a transposed tie as one "
            "parameter read transposed in the forward, F.linear(x, a.weight.t())), or give each its own copy "
            "(nn.Parameter(a.weight.detach().clone()))")


def discover(
    model: nn.Module,
    include: Optional[Iterable[str] | str] = None,
    exclude: Optional[Iterable[str] | str] = None,
) -> Dict[str, tuple[SynapseLayer, nn.Parameter]]:
    """Return ``{parameter name: (SynapseLayer, parameter)}`` for every prunable weight.

    ``include``/``exclude`` are shell-style patterns (``fnmatch``) tested against both the module
    name and the parameter name, e.g. ``include="layer*"``, ``exclude=["conv1", "fc"]`` or
    ``exclude="conv1,fc"`` (a string is split at commas, as on the command line); a lazy
    layer they leave out may stay unmaterialised. A weight with no entries (``nn.Linear(0, 4)``) holds
    no synapses and is left out. Raises ValueError when nothing prunable is found
    (naming the reparametrised, torch.nn.utils.prune-masked or complex-valued layers that are there) or a pattern matches nothing.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"expected an nn.Module, got {type(model).__name__}")
    if isinstance(model, torch.jit.ScriptModule):  # (its layers are script modules, no nn.Linear or nn.Conv2d)
        raise TypeError(f"{type(model).__name__} is a TorchScript module (torch.jit.script or torch.jit.trace), whose "
                        "layers are compiled modules a Connectome cannot mask: build the Connectome on the eager model "
                        "it was made from (the scripted one shares its parameters, so it computes with the masks too)")
    inc, exc = _as_patterns(include), _as_patterns(exclude)
    # exact names (Connectome.load passes one per saved layer) looked up, not fnmatch-ed against every weight
    inc_set, exc_set = PatternSet(inc), PatternSet(exc)
    found: Dict[str, tuple[SynapseLayer, nn.Parameter]] = {}
    seen: set[int] = set()
    candidates = 0
    candidate_names: list = []  # (module and weight names of every prunable weight, for container hints)
    weights: list = []  # the name of every prunable weight, for an error naming them
    used_inc: set[str] = set()
    used_exc: set[str] = set()
    computed = []  # layers whose weight a parametrization computes (weight_norm, spectral_norm, ...)
    own_forward = []  # subclasses of nn.Linear or a convolution that compute their output their own way
    first_computed = None  # (module name, weight name) of the first parametrized one: its exact call named
    hooked = {}  # layers whose weight a forward hook computes (old-style weight_norm / spectral_norm): label -> hook
    pruned = []  # (module name, attribute) of each weight torch.nn.utils.prune masks (weight_orig * weight_mask)
    hook_sources: set[int] = set()  # their weight_g/weight_v/weight_orig: explained by that warning, not the generic one
    complex_all, complex_ = [], []  # complex-valued weights (all; include/exclude keep): not synapses, left dense
    empty = []  # weights with no entries (nn.Linear(0, 4)): no synapse to mask, score or edit, so left out
    # ((module name, weight name), label, the call that removes it) of each reparametrised weight of a prunable
    # layer: an include/exclude pattern naming one is told why it selects nothing
    reparametrised = []
    held = aliases(model)
    for mname, module in model.named_modules():
        hooks, masked = weight_hooks(module), pruning_hooks(module)
        for attr, kind, groups in _prunable_weights(module):
            label = mname if attr == "weight" else f"{mname}.{attr}" if mname else attr
            own = (mname, f"{mname}.{attr}" if mname else attr)
            if parametrize.is_parametrized(module, attr):
                computed.append(label)
                first_computed = first_computed or (mname, attr)
                reparametrised.append((own, label, "torch.nn.utils.parametrize.remove_parametrizations(module, "
                                       f"{attr!r}, leave_parametrized=True)"))
                continue
            if attr in hooks:
                hooked[label] = hooks[attr]
                hook_sources.update(id(p) for p in _hook_sources(module, hooks[attr]))
                fn = "weight_norm" if isinstance(hooks[attr], WeightNorm) else "spectral_norm"
                reparametrised.append((own, label, f"torch.nn.utils.remove_{fn}(module" +
                                       (")" if attr == "weight" else f", {attr!r})")))
                continue
            if attr in masked:
                pruned.append((mname, attr))
                reparametrised.append((own, label, f"torch.nn.utils.prune.remove(module, {attr!r})"))
                orig = module._parameters.get(attr + "_orig")
                if orig is not None:
                    hook_sources.add(id(orig))
                continue
            w = getattr(module, attr, None)
            if not isinstance(w, nn.Parameter):
                if isinstance(w, torch.Tensor):  # a buffer, or set by another hook: named only if nothing is prunable
                    hooked[label] = None
                continue
            if id(w) in seen:
                continue  # a shared weight counts once
            seen.add(id(w))
            pname = f"{mname}.{attr}" if mname else attr
            no_entries = not isinstance(w, nn.parameter.UninitializedParameter) and w.numel() == 0
            if w.is_complex():
                # masks, optimizer-state repair and utility estimates are defined for real weights only
                complex_all.append(f"{pname} ({w.dtype})")
            elif no_entries:
                empty.append(pname)
            names = held.get(id(w), (mname, pname))  # a tied weight answers to every name it has
            if not w.is_complex() and not no_entries:
                candidates += 1
                candidate_names.extend(names)
                weights.append(pname)
            excluded = exc_set.hits(*names) if exc else ()
            used_exc.update(excluded)
            if inc:
                hit = inc_set.hits(*names)
                if not hit:
                    continue
                used_inc.update(hit)
            if excluded:
                continue
            if w.is_complex():
                complex_.append(complex_all[-1])
                continue
            if no_entries:
                continue
            if isinstance(w, nn.parameter.UninitializedParameter):  # only a layer that include/exclude keep
                raise ValueError(
                    f"layer {mname!r} has an uninitialised (lazy) weight: run one forward pass before building a "
                    f"Connectome, or exclude it (exclude={mname!r})"
                )
            found[pname] = (SynapseLayer(name=pname, module_name=mname, kind=kind, shape=tuple(w.shape), groups=groups), w)
            if attr == "weight" and _own_forward(module):
                own_forward.append(f"{pname} ({type(module).__name__})")
    _refuse_shared_memory(model, found)
    if own_forward:
        warn_user(
            f"{len(own_forward)} prunable layer(s) are subclasses of a torch layer with a forward of their own "
            f"({_listed(own_forward)}): a pruned synapse is 0.0 in the stored weight, but a forward that transforms the "
            "weight before it uses it (weight standardisation, an added low-rank term) reads it as nonzero, so the "
            "layer's real density is not the connectome's. Where the forward uses self.weight as it is, nothing is "
            "wrong; else keep such layers out (exclude=[...])")
    if computed:
        warn_user(
            f"{len(computed)} layer(s) have a parametrized weight ({', '.join(computed[:4])}{', ...' if len(computed) > 4 else ''}): "
            "it is computed at every call, so it holds no synapses of the connectome. To include them, call "
            "torch.nn.utils.parametrize.remove_parametrizations(module, NAME) first (here torch.nn.utils.parametrize."
            f"remove_parametrizations(model.get_submodule({first_computed[0]!r}), {first_computed[1]!r}))")
    for fn, labels in (("weight_norm", [l for l, h in hooked.items() if isinstance(h, WeightNorm)]),
                       ("spectral_norm", [l for l, h in hooked.items() if isinstance(h, SpectralNorm)])):
        if labels:
            warn_user(
                f"{len(labels)} layer(s) have a weight computed by torch.nn.utils.{fn} ({_listed(labels)}): it is "
                f"recomputed at every call, so it holds no synapses of the connectome and stays dense. To include them, "
                f"call torch.nn.utils.remove_{fn}(module) first (or remove_{fn}(module, NAME) for a weight other "
                "than 'weight')")
    if pruned and candidates:
        warn_user(f"{len(pruned)} weight(s) stay dense, outside the connectome: "
                  f"{_pruned_message(pruned, 'to include them')}")
    if complex_ and candidates:
        warn_user(
            f"{len(complex_)} complex-valued weight(s) are not synapses of the connectome and stay dense: "
            f"{_listed(complex_)}. A Connectome prunes real (floating-point) weights only")
    others = _other_weight_matrices(model, seen | hook_sources)
    if others:
        shown = ", ".join(f"{n} ({kind})" for n, kind, _ in others[:4]) + (", ..." if len(others) > 4 else "")
        own = [n for n, _, torchs in others if not torchs]
        warn_user(
            f"{len(others)} weight tensor(s) are not synapses of the connectome and stay dense: {shown}. A "
            f"Connectome prunes the weights of {PRUNABLE_LIST}" + (
                f"; {_listed(own)} {'is a parameter' if len(own) == 1 else 'are parameters'} of your own module(s): "
                f"to prune one, {HOLD_IN_A_LAYER}; one that is no weight matrix rightly stays dense" if own else ""))
    if candidates == 0:
        if complex_all:
            raise ValueError(
                f"{type(model).__name__} has no prunable layers: its only prunable weights are complex-valued "
                f"({_listed(complex_all)}), and a Connectome prunes real (floating-point) weights only; to prune them, hold "
                "their real and imaginary parts as real weights (two real layers)")
        reasons = []
        if empty:
            reasons.append(f"its layer(s) {_listed(empty)} have weights with no entries (a dimension of size 0), "
                           "so they hold no synapses: a Connectome needs at least one weight with entries")
        if pruned:
            reasons.append(f"its weight(s) {_pruned_message(pruned, 'to build the Connectome')}")
        if computed or hooked:
            reasons.append(
                f"its layer(s) {_listed(computed + list(hooked))} are there, "
                "but their weights are reparametrised (weight_norm, spectral_norm or another parametrization) and "
                "computed at every call, so they hold no synapses. Remove the reparametrisation before building the "
                "Connectome: torch.nn.utils.remove_weight_norm(module) (or remove_spectral_norm) for "
                "torch.nn.utils.weight_norm, torch.nn.utils.parametrize.remove_parametrizations(module, 'weight', "
                "leave_parametrized=True) for a parametrization (parametrizations.weight_norm, orthogonal, ...)"
                + _other_attributes(reparametrised))
        if reasons:
            raise ValueError(f"{type(model).__name__} has no prunable layers: " + "; and ".join(reasons))
        raise ValueError(
            f"{type(model).__name__} has no prunable layers: a Connectome needs at least one nn.Linear, "
            f"nn.Conv1d/2d/3d, nn.ConvTranspose1d/2d/3d, nn.MultiheadAttention, nn.RNN/LSTM/GRU or "
            "nn.RNNCell/LSTMCell/GRUCell weight"
        )
    for kind, patterns, used in (("include", inc, used_inc), ("exclude", exc, used_exc)):
        unused = [p for p in patterns if p not in used]
        if unused:
            others = [n for n, _ in model.named_parameters() if _matches(unused, n)]
            stored = {n: fix for n in others if (fix := _reparametrised_weight(model, n))}
            # a pattern naming the layer (or its weight) whose weight is reparametrised: the same reason
            stored.update({f"layer {label!r}": fix for own, label, fix in reparametrised if _matches(unused, *own)})
            if stored:  # the tensors a reparametrised weight is computed from: the weight is in a prunable layer
                raise ValueError(
                    f"{kind} pattern(s) {unused} matched no prunable layer: they match {_listed(list(stored))}, "
                    "prunable layers whose weights are reparametrised (weight_norm, spectral_norm, another "
                    "parametrization or torch.nn.utils.prune), or the tensors stored for such weights, which a "
                    "Connectome leaves dense" + ("; such a weight is dense already, so leave the pattern out, or to "
                                                 "prune it" if kind == "exclude" else "; ")
                    + f"remove the reparametrisation first ({' or '.join(sorted(set(stored.values())))})")
            if others:  # a bias, an embedding table, a bare Parameter read by F.linear: named, not prunable
                raise ValueError(
                    f"{kind} pattern(s) {unused} matched no prunable layer: they match the parameter(s) "
                    f"{_listed(others)}, which are not weights of a prunable layer ({PRUNABLE_LIST}), so they are "
                    "never synapses; "
                    f"to prune a weight, {HOLD_IN_A_LAYER}")
            raise ValueError(f"{kind} pattern(s) {unused} matched no prunable layer (its prunable weights: "
                             f"{_listed(weights, 8)}; a pattern matches a weight's name or its layer's); check module "
                             "names with model.named_modules() and weight names with model.named_parameters()"
                             + container_hint(unused, candidate_names))
    if not found:
        raise ValueError(
            f"include={list(inc)} / exclude={list(exc)} left no prunable layer of the {candidates} found"
        )
    return found


def prunable_names(model: nn.Module) -> list:
    """The names under which :func:`discover` (with no include/exclude) would take each weight of
    ``model`` into a connectome, found quietly (no warning, no error): real weights with entries, not
    reparametrised, a tied one once. An unmaterialised (lazy) weight is listed too."""
    out, seen = [], set()
    for mname, module in model.named_modules():
        for attr, _, _ in _prunable_weights(module):
            w = module._parameters.get(attr)
            if w is None or id(w) in seen or parametrize.is_parametrized(module, attr):
                continue
            seen.add(id(w))
            lazy = isinstance(w, nn.parameter.UninitializedParameter)
            if lazy or (not w.is_complex() and w.numel() > 0):
                out.append(f"{mname}.{attr}" if mname else attr)
    return out


def held_outside_synapse_layers(model: nn.Module, found: Dict[str, tuple]) -> Dict[str, list]:
    """``{synapse parameter name: [(name, module type), ...]}`` for every synapse weight of ``found``
    (as :func:`discover` returns it) that some module also holds as a parameter that is not one of its
    synapse weights: an ``nn.Embedding`` tied to an output head, or any other non-synapse module.
    Pruning such a weight zeroes those entries for the other module as well."""
    ids = {id(p): n for n, (_, p) in found.items()}
    out: Dict[str, list] = {}
    for mname, module in model.named_modules(remove_duplicate=False):
        synapse_attrs = {a for a, _, _ in _prunable_weights(module)}
        for pn, p in module.named_parameters(recurse=False):
            if id(p) in ids and pn not in synapse_attrs:
                entry = (f"{mname}.{pn}" if mname else pn, type(module).__name__)
                holders = out.setdefault(ids[id(p)], [])
                if entry not in holders:
                    holders.append(entry)
    return out


def shared_weight_warning(model: nn.Module, found: Dict[str, tuple]) -> Optional[str]:
    """The warning text for :func:`held_outside_synapse_layers`, or None when no synapse weight is
    shared with a non-synapse module."""
    shared = held_outside_synapse_layers(model, found)
    if not shared:
        return None
    parts = []
    for name, holders in list(shared.items())[:4]:
        others = ", ".join(f"{h} ({t})" for h, t in holders)
        parts.append(f"{name} (layer {found[name][0].module_name!r}) is the same Parameter as {others}")
    more = f"; and {len(shared) - 4} more" if len(shared) > 4 else ""
    first = next(iter(shared))
    module = found[first][0].module_name
    holder = shared[first][0][0].rpartition(".")[0] or shared[first][0][0]
    return (
        f"{len(shared)} synapse weight(s) are also held by a module that is not a synapse layer (an "
        f"embedding or another non-synapse module): {'; '.join(parts)}{more}. Pruning such a weight zeroes "
        f"the same entries there too (a tied embedding loses those entries of its table). To keep it dense, "
        f"pass exclude={module!r} (or exclude={holder!r}: any name that holds the weight selects it); "
        "otherwise accept that pruning the layer prunes the other module as well")


def aliases(model: nn.Module) -> Dict[int, tuple]:
    """Map ``id(parameter)`` to every module name and parameter name under which ``model`` holds it
    (a weight tied between a Linear and an Embedding, or between two Linears, has several)."""
    out: Dict[int, list] = {}
    for mname, module in model.named_modules(remove_duplicate=False):
        for pn, p in module.named_parameters(recurse=False):
            out.setdefault(id(p), []).extend((mname, f"{mname}.{pn}" if mname else pn))
    return {k: tuple(v) for k, v in out.items()}


def state_dict_keys(model: nn.Module) -> Dict[int, list[str]]:
    """Map ``id(parameter)`` to every state_dict key that stores it (shared weights have several)."""
    keys: Dict[int, list[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        keys.setdefault(id(p), []).append(name)
    return keys

