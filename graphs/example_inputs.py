"""Example inputs guessed for a model: :func:`default_example_input` lists the candidates (float features shaped
from the first layer the forward uses, token indices for embeddings), :func:`runnable_example_input` picks the
first one the model runs on."""
from __future__ import annotations

import warnings
from typing import Dict, List, Optional

import torch
from torch import fx, nn

from . import ops
from .batch_axis import checked_batch_axis
from .folded import unfolded
from .forward_inputs import _forward_inputs, _input_order, _keyword_inputs, _unsupplied_defaults
from .locking import serialized
from .trace_types import InputGuessError
from .tracer import _wrap_root, symbolic_trace
from .unchanged import _unchanged


TOKENS = 16  # the sequence length guessed for token indices (and float steps for a recurrent first layer)
# the layers whose input size shapes a float guess (a transposed conv reads its in_channels: a generator's first layer)
_FEATURE_LAYERS = ops.WEIGHTED_MODULES + ops.TRANSPOSED_MODULES + (nn.RNNBase, nn.RNNCellBase)


def default_example_input(model: nn.Module, tokens: Optional[bool] = None, batch: int = 1) -> List[torch.Tensor]:
    """Candidate example inputs (``batch`` samples), tried in order: float tensors shaped from
    ``in_shape`` or the first weighted layer, on the device and in the floating-point dtype of that
    layer's weight (a float64 or bfloat16 model cannot run a float32 input; a frozen parameter of
    another dtype registered before it says nothing of what the layer reads), else of the model's first
    floating-point parameter; and token indices (torch.long, each below the smallest ``nn.Embedding``
    / ``nn.EmbeddingBag``'s ``num_embeddings``, so in range for every table) shaped ``in_shape``, else
    ``(batch, 16)`` and ``(batch, n)`` for every smaller table size ``n`` (a positional table caps the
    sequence). The token guesses come first where the model's first layer is an embedding, after the
    float ones where a later one is, and not at all without one. The first layer is the first one the
    forward uses, in the order of its fx trace (symbolic: no input needed), so that a head registered
    before the stem is not taken for the layer reading the input; registration order where fx cannot
    trace the model. ``tokens=True`` keeps the token guesses only, ``False`` the float ones only. A
    model whose forward takes several inputs (no default; keyword-only ones too) is refused: nothing
    says what each of them is. The values come from a generator of their own, seeded 0: the same
    guesses at every call, and no draw from the global random generators (which would change what the
    caller's code draws next). A ``torch.compile`` wrapper is guessed for the module it runs."""
    from adaptive.connectome import _plain_module

    return _example_inputs(_plain_module(model), tokens, batch)


def _example_inputs(model: nn.Module, tokens: Optional[bool], batch: int,
                    gm: Optional[fx.GraphModule] = None) -> List[torch.Tensor]:
    """:func:`default_example_input`, with the model's fx graph where the caller traced it already."""
    names, keyword = _forward_inputs(model), _keyword_inputs(model)
    if len(names) > 1:
        raise InputGuessError(f"{type(model).__name__}.forward takes {len(names)} inputs ({', '.join(names)}) and "
                              f"graphs guesses a single one ({', '.join(names[1:])}: no guess)",
                              inputs=_input_order(model) or names, keyword=keyword)
    layers = _in_call_order(model, [m for m in model.modules() if isinstance(m, _FEATURE_LAYERS + ops.LOOKUP_MODULES)],
                            gm)
    tables = [m for m in layers if isinstance(m, ops.LOOKUP_MODULES)]
    first = next((m for m in layers if isinstance(m, _FEATURE_LAYERS)), None)
    w = (None if first is None else first.weight_ih_l0 if isinstance(first, nn.RNNBase)
         else first.weight_ih if isinstance(first, nn.RNNCellBase) else first.weight)
    p = w if isinstance(w, torch.Tensor) and w.is_floating_point() else next(
        (q for q in model.parameters() if q.is_floating_point()), None)
    dev = p.device if p is not None else torch.device("cpu")
    shape = getattr(model, "in_shape", None)
    g = torch.Generator().manual_seed(0)  # on the CPU, whatever the model's device: the same values anywhere
    ids = []
    if tables or tokens:
        high = min((int(m.num_embeddings) for m in tables), default=1)  # none: index 0, in range for any table
        lengths = [tuple(shape)] if shape is not None else [
            (n,) for n in sorted({TOKENS} | {int(m.num_embeddings) for m in tables if m.num_embeddings < TOKENS},
                                 reverse=True)]
        ids = [torch.randint(0, high, (batch, *s), generator=g).to(dev) for s in lengths]
    if tokens:
        return ids
    floats = []
    if shape is not None or first is not None:
        floats = [x.to(dev, p.dtype if p is not None else None) for x in _default_inputs(first, shape, batch, g)]
    elif tokens is False or not tables:  # tables: float features asked of a model of embeddings only
        raise InputGuessError(f"{type(model).__name__} has no " + ("Linear, Conv, ConvTranspose or recurrent layer to "
                                                                 "shape float features from" if tables else "Linear, "
                                                                 "Conv, ConvTranspose, recurrent or Embedding layer "
                                                                 "to guess an input from"))
    if tokens is False:
        return floats
    return ids + floats if tables and isinstance(layers[0], ops.LOOKUP_MODULES) else floats + ids


def _in_call_order(model: nn.Module, layers: List[nn.Module], gm: Optional[fx.GraphModule] = None) -> List[nn.Module]:
    """``layers`` (in registration order) in the order ``model``'s forward first uses them
    (:func:`_first_uses`); those it never uses keep their place after the others. Registration order
    where fx cannot trace the model."""
    if len(layers) < 2:
        return layers
    first = _first_uses(model, gm)
    if first is None:
        return layers
    owners = {id(m): i for i, m in enumerate(layers)}
    return sorted(layers, key=lambda m: (first.get(id(m), len(first)), owners[id(m)]))


def _first_uses(model: nn.Module, gm: Optional[fx.GraphModule] = None) -> Optional[Dict[int, int]]:
    """``{id(submodule): rank}``: the order in which ``model``'s forward first uses its submodules, as
    a module it calls or through a weight it computes with (``F.linear(x, self.fc.weight)``, a Linear
    subclass fx traces into; a read of the weight's dtype, device or shape is no use), in its fx graph
    (``gm``, else a symbolic trace: no input needed); a submodule it never uses is not in it. None where
    fx cannot trace the model or traces a torch module whole (its own first layer)."""
    if _wrap_root(model):
        return None
    if gm is None:
        try:
            with _unchanged(model), warnings.catch_warnings():  # a forward may store a proxy on the model
                warnings.simplefilter("ignore")
                gm = symbolic_trace(model, concrete_args=_unsupplied_defaults(model, 1))
        except Exception:  # noqa: BLE001 - fx raises many types: no order
            return None
    first = {}
    for n in gm.graph.nodes:
        if n.op == "call_module":
            paths = [n.target]
        elif n.op in ("call_function", "call_method") and not _reads_metadata(n):  # computes with a weight
            paths = [a.target.rpartition(".")[0] for a in n.all_input_nodes if a.op == "get_attr"]
        else:
            continue
        for path in paths:
            try:
                m = model.get_submodule(path)
            except AttributeError:
                continue
            first.setdefault(id(m), len(first))
            first.setdefault(id(unfolded(m)), len(first))  # a FoldedConv's call uses its convolution
    return first


_METADATA_ATTRS = frozenset({"dtype", "device", "shape", "ndim", "is_cuda", "layout", "requires_grad"})
_METADATA_METHODS = frozenset({"size", "dim", "numel", "nelement", "get_device", "element_size"})


def _reads_metadata(n: fx.Node) -> bool:
    """Does ``n`` read a tensor's dtype, device or shape, not its values (``x.to(self.head.weight.dtype)``
    at the top of a forward uses no head)?"""
    if n.op == "call_function" and n.target is getattr:
        return n.args[1] in _METADATA_ATTRS
    return n.op == "call_method" and n.target in _METADATA_METHODS


@serialized
def runnable_example_input(model: nn.Module, tokens: Optional[bool] = None, batch: int = 1,
                           batch_axis: Optional[int] = None) -> torch.Tensor:
    """The first of :func:`default_example_input`'s candidates that ``model`` runs on (in eval mode,
    without gradients; the model is left as it was: see :func:`_unchanged`), as :func:`graphs.trace.trace` picks one.
    ``batch_axis=1``: each candidate of two axes or more is laid out sequence-first before it is tried
    (``[B, T, ...]`` as ``[T, B, ...]``), for a model whose sequences hold their batch on axis 1.
    A ``torch.compile`` wrapper's module runs them uncompiled (compiling for each guess takes seconds)."""
    from adaptive.connectome import _plain_module

    model = _plain_module(model)
    candidates = default_example_input(model, tokens, batch)
    if checked_batch_axis(batch_axis) == 1:
        candidates = [x.movedim(0, 1).contiguous() if x.dim() >= 2 else x for x in candidates]
    if len(candidates) == 1:
        return candidates[0]
    errors = []
    with _unchanged(model):
        for x in candidates:
            try:
                with torch.no_grad():
                    model(x)
                return x
            except Exception as e:  # noqa: BLE001 - a wrong guess: try the next size
                errors.append(f"input {_described(x)}: {type(e).__name__}: {str(e)[:200]}")
    raise InputGuessError(f"could not guess an input for {type(model).__name__}", "; ".join(errors)[:400])


def _described(x) -> str:
    """A guessed input for an error message: its shape, and ``long`` for token indices."""
    return f"{tuple(x.shape)}" + ("" if x.is_floating_point() else f" {str(x.dtype).replace('torch.int64', 'long')}")


def _default_inputs(first: Optional[nn.Module], shape, batch: int, g: torch.Generator) -> List[torch.Tensor]:
    """Float guesses shaped ``shape`` where given, else from what ``first`` (the first feature layer) reads,
    drawn from ``g``."""
    if shape is not None:
        return [torch.randn(batch, *shape, generator=g)]
    if isinstance(first, nn.RNNBase):  # a sequence of TOKENS steps, on the axes the layer reads
        steps = (batch, TOKENS) if first.batch_first else (TOKENS, batch)
        return [torch.randn(*steps, first.input_size, generator=g)]
    if isinstance(first, nn.RNNCellBase):  # TOKENS steps that a loop of the model's own reads (x[:, t]), or one
        return [torch.randn(batch, TOKENS, first.input_size, generator=g),
                torch.randn(batch, first.input_size, generator=g)]
    if isinstance(first, nn.Linear):
        return [torch.randn(batch, first.in_features, generator=g)]
    c, d = first.in_channels, first.weight.dim() - 2
    sizes = {1: [64, 256, 28, 32], 2: [32, 224, 28, 64, 96], 3: [16, 32]}[d]
    return [torch.randn(batch, c, *([s] * d), generator=g) for s in sizes]
