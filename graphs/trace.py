"""Data-flow tracing: which units feed every input channel of every weighted layer.

The model is traced with ``torch.fx`` and run once on an example input by a
:class:`torch.fx.passes.shape_prop.ShapeProp` interpreter that, next to the real values, carries an
*id tensor* for every tensor of the graph: each element holds the id of the graph node that produced
it (0 for a constant such as zero padding). Weighted layers (Linear, Conv, the projections of
attention and the matrices of recurrent layers and cells, transposed convolutions) start new units, embedding
lookups new input nodes (their tables are no synapse layers); shape
ops (view, flatten, cat, getitem, pad, split, permute) are evaluated exactly on the id tensors, so
concatenation offsets, the ``h*w`` features of each flattened channel and the CIFAR ResNet's
zero-padding shortcut come out right without special cases; per-channel ops (normalisation,
activations, pooling) keep channel ids; elementwise arithmetic of several tensors (a residual add,
a squeeze-excitation product) creates *junction* nodes, one per distinct combination of sources.

Node ids: 0 is the constant node, then groups in topological order (inputs, layers, junctions,
outputs), each a contiguous range. Everything is tensor code; Python loops run over fx nodes only.

Here: :func:`trace`, the run of each candidate input and :func:`fallback_trace`. The interpreter is
:mod:`graphs.flow` (its rules in ``graphs.flow_*``), the fx tracer :mod:`graphs.tracer`, the guessed inputs
:mod:`graphs.example_inputs`, how inputs bind to forward's parameters :mod:`graphs.forward_inputs`, what a trace
records :mod:`graphs.trace_types`, and the lock every entry point holds :mod:`graphs.locking`.
"""
from __future__ import annotations

import contextlib
import io
import re
import warnings
from typing import Mapping, Optional

import torch
from torch.utils._pytree import tree_leaves
from torch import fx, nn

from . import ops
from .batch_axis import checked_batch_axis
from .book import _Book
from .example_inputs import _described, _example_inputs
from .flow import FlowProp
from .forward_inputs import _placeholder_values, _refuse_miscounted_inputs, _refuse_named_inputs, _unsupplied_defaults
from .id_tensors import _uniform_except
from .locking import serialized
from .trace_types import ExampleInputError, InputError, InputGuessError, LayerFlow, Trace
from .tracer import _Root, _unwrap, _wrap_root, symbolic_trace
from .unchanged import _unchanged
from adaptive.discovery import linear_types, transposed_shape
from adaptive.warn import warn_user

# importable from here, as before these moved out (callers, tests, and the code of copies saved before: a copy
# traced with an input at None names none_only, and SignatureTracer as its tracer, by the module they were in)
from .example_inputs import TOKENS, _first_uses, default_example_input, runnable_example_input  # noqa: F401
from .forward_inputs import _call_with_inputs, _nested  # noqa: F401
from .locking import _new_lock_in_child  # noqa: F401
from .trace_types import (CONST, EDGE_RECURRENT, EDGE_SYNAPSE, EDGE_WIRE, INPUT, JUNCTION, KIND_NAMES,  # noqa: F401
                          OUTPUT, UNIT, Group)
from .tracer import SIZED_FACTORIES, SignatureTracer, _sizes_packed, _torch_own_functions, none_only  # noqa: F401

__all__ = ["trace", "fallback_trace", "example_input_failed", "Trace", "LayerFlow", "InputError", "InputGuessError",
           "ExampleInputError",
           # importable from here, as before they moved out (imported above)
           "TOKENS", "default_example_input", "runnable_example_input", "CONST", "EDGE_RECURRENT", "EDGE_SYNAPSE",
           "EDGE_WIRE", "INPUT", "JUNCTION",
           "KIND_NAMES", "OUTPUT", "UNIT", "Group", "SIZED_FACTORIES", "SignatureTracer", "none_only"]
# private names other modules and tests import from here (not in __all__: a star import takes the
# public names only); named here, so that the import is used
_REEXPORTED = (_first_uses, _call_with_inputs, _nested, _new_lock_in_child, _sizes_packed, _torch_own_functions)


def __getattr__(name: str):
    """``graphs.trace.TRACING``: the lock in use, read from :mod:`graphs.locking` at each access (a forked child
    replaces it there: a copy bound here at import would be the parent's)."""
    if name == "TRACING":
        from . import locking

        return locking.TRACING
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _auto_input_nodes(model: nn.Module, x: torch.Tensor) -> str:
    convs = any(isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d) + ops.TRANSPOSED_MODULES) for m in model.modules())
    first = next((t for t in tree_leaves(x) if isinstance(t, torch.Tensor) and t.dim() > 0), None)  # x nested too
    return "channels" if convs or (first is not None and first[0].numel() > 1_000_000) else "elements"


@serialized
def trace(model: nn.Module, example_input=None, input_nodes: str = "auto", batch_axis: Optional[int] = None) -> Trace:
    """Trace ``model``'s data flow (see module docstring). ``example_input``: a tensor or a tuple of
    tensors (batch first), one per positional input; an input that is itself a tuple or list of tensors
    (``forward(self, xy)``: ``example_input=((x, y),)``) gives an input group per tensor, ``xy[0]``,
    ``xy[1]``; None infers one. ``input_nodes``: "channels" (one node per input
    channel), "elements" (per input feature or pixel) or "auto" (elements for models without
    convolutions). ``batch_axis``: the axis of every input (of two axes or more) that holds its batch, 0 or 1
    (``[T, B, F]`` sequences); None infers it (:mod:`graphs.batch_axis`). A forward that needs a size as a Python
    number (``range(x.shape[1])``) is traced with the example input's sizes (:mod:`graphs.sized`). Falls back to
    module order, with a warning, when fx cannot trace the model."""
    if input_nodes not in ("auto", "channels", "elements"):
        raise ValueError(f"input_nodes must be 'auto', 'channels' or 'elements', got {input_nodes!r}")
    batch_axis = checked_batch_axis(batch_axis)
    if batch_axis is not None and example_input is None:
        raise ValueError(f"batch_axis={batch_axis} needs an example_input laid out so: graphs guesses inputs itself "
                         "(batch first, or as a recurrent first layer's batch_first says) and knows their batch axis")
    from adaptive.connectome import _plain_module

    model = _plain_module(model)  # a torch.compile or DDP wrapper: the module it runs, under its own names
    _refuse_call_label_names(model)
    if isinstance(example_input, Mapping):
        _refuse_named_inputs(model, example_input)
        raise TypeError(f"example_input is a dict, which {type(model).__name__}.forward takes as one argument; graphs "
                        "follows tensors only (a tensor, or a tuple of them, one per input): trace a module whose "
                        "forward takes the tensors and builds the dict")
    # trace and run the inference graph (no aux heads, dropout or batch statistics), leaving the model as it was
    with _unchanged(model):
        tr = _trace_eval(model, example_input, input_nodes, batch_axis)
    tr.batch_axis = batch_axis
    return tr


def _refuse_call_label_names(model: nn.Module) -> None:
    """Refuse a module named as graphs labels another's later call (``d.fc#2`` beside ``d.fc``, an
    ``nn.ModuleDict`` key): the two layers' units would share their names, and per-layer figures
    (``density_per_layer``, ``summary``) keep one of the two."""
    names = {n for n, _ in model.named_modules(remove_duplicate=False)}
    clash = [n for n in names if (m := re.fullmatch(r"(.+)#\d+", n)) and m.group(1) in names]
    if clash:
        n = sorted(clash)[0]
        raise ValueError(f"graphs labels a module's k-th call NAME#k, and the module {n!r} is named as the call "
                         f"#{n.rpartition('#')[2]} of {n.rpartition('#')[0]!r} would be: rename it without '#' "
                         "(an nn.ModuleDict key such as 'fc_2'), or the two layers would share their units' names")


def _failure(e: Exception) -> str:
    """``Type: message (at node 'name')`` of what running the model on an input raised. torch's ShapeProp
    re-raises an op's error as ``ShapeProp error for: node=... with meta={...}``, whose first few hundred
    characters are the node's metadata: the op's own error (its ``__cause__``) is what says what was
    wrong (a dtype, a shape), and the node fx was executing where it failed."""
    where = str(e).partition("\n\nWhile executing %")[2].split(" ", 1)[0]
    if isinstance(e, RuntimeError) and str(e).startswith("ShapeProp error") and e.__cause__ is not None:
        e = e.__cause__
    msg = str(e).split("\n\nWhile executing")[0]
    return f"{type(e).__name__}: {msg[:200]}" + (f" (at node {where!r})" if where else "")


def _input_failure(xs: tuple, e: Exception) -> str:
    """``input [shapes]: Type: message (at node 'name')`` of what running a model on the inputs ``xs`` raised."""
    shapes = ", ".join(_described(t) if isinstance(t, torch.Tensor) else type(t).__name__ for t in xs)
    return f"input [{shapes}]: {_failure(e)}"


def example_input_failed(model: nn.Module, x, e: Exception) -> RuntimeError:
    """The error :func:`graphs.build` and :func:`graphs.compact` raise when ``model`` fails on the caller's
    ``example_input`` ``x`` (a tensor or a tuple of inputs): what was wrong and at which node, without
    fx's dump of the node it was executing, and what to pass instead."""
    xs = tuple(x) if isinstance(x, (tuple, list)) else (x,)
    return example_input_error(model, xs, _input_failure(xs, e))


def example_input_error(model: nn.Module, xs: tuple, failure: str) -> "ExampleInputError":
    """:class:`ExampleInputError` of ``model`` failing on inputs ``xs`` (``failure``: what went wrong): the fix
    names the model's parameters' dtype or device only where a floating input differs from them in it (token
    indices are long, whatever the weights)."""
    p = next(model.parameters(), None)
    floats = [t for t in xs if isinstance(t, torch.Tensor) and t.is_floating_point()]
    of = []
    if p is not None and any(t.dtype != p.dtype for t in floats) and p.is_floating_point():
        of.append(f"floating inputs of {p.dtype}, as its parameters")
    if p is not None and any(t.device != p.device for t in xs if isinstance(t, torch.Tensor)):
        of.append(f"on {p.device}, as its parameters")
    return ExampleInputError(
        f"running {type(model).__name__} on example_input failed: {failure}",
        "; pass an example_input the model runs on as it is: a batch of its input" + (f" ({'; '.join(of)})" if of else "")
        + ", of the shape its forward expects (a batch of one will do), or a tuple of its inputs")


def _trace_eval(model, example_input, input_nodes, batch_axis: Optional[int] = None) -> Trace:
    root, gm, sized = _wrap_root(model), None, False
    if not root:
        given = (tuple(example_input) if isinstance(example_input, (tuple, list))
                 and not isinstance(example_input, nn.utils.rnn.PackedSequence)
                 else () if example_input is None else (example_input,))
        _refuse_miscounted_inputs(model, given)
        fixed = _unsupplied_defaults(model, len(given), given)
        try:
            gm = symbolic_trace(model, concrete_args=fixed)
        except Exception as e:
            # fx needed a size as a number (range(x.shape[1])): traced again with each example input's sizes
            failed = f"torch.fx could not trace {type(model).__name__}{_where(e)}: {type(e).__name__}: {e}"
            sized = True
    if sized:
        try:
            candidates = [example_input] if example_input is not None else _example_inputs(model, None, 1)
        except Exception:  # noqa: BLE001 - nothing to trace the sizes of: module order, as fx failed
            return fallback_trace(model, failed)
    else:
        candidates = [example_input] if example_input is not None else _example_inputs(model, None, 1, None if root else gm)
    errors = []
    for x in candidates:
        xs = tuple(x) if isinstance(x, (tuple, list)) and not isinstance(x, nn.utils.rnn.PackedSequence) else (x,)
        if any(isinstance(t, nn.utils.rnn.PackedSequence) for t in xs):
            raise ValueError(
                "graphs cannot trace a PackedSequence input: pass the padded batch instead (a tensor [B, L, features] "
                "or [L, B, features]); the graph of one time step does not depend on the sequence lengths")
        traced = _Root(model, len(xs)) if root else model
        if root:
            gm = symbolic_trace(traced, concrete_args={k: None for k in "abc"[len(xs):]})
        elif sized:
            from .sized import sized_trace
            try:
                with _unchanged(model), warnings.catch_warnings():  # the sizes are computed by running the model
                    warnings.simplefilter("ignore")
                    gm = sized_trace(model, lambda holders: _placeholder_values(model, holders, xs), fixed)
            except Exception:  # noqa: BLE001 - a question about data, or an input it does not run on: the next one
                gm = None
                continue
        mode = input_nodes if input_nodes != "auto" else _auto_input_nodes(model, xs[0])
        book = _Book()
        prop = FlowProp(gm, book, mode, traced, batch_axis)
        try:
            # torch's ShapeProp prints a traceback for a failing input; a wrong guess is not news
            with torch.no_grad(), warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
                warnings.simplefilter("ignore")  # re-emitted below, once
                holders = sum(n.op == "placeholder" for n in gm.graph.nodes)
                result = prop.propagate(*(xs if root else _placeholder_values(model, holders, xs)))
        except Exception as e:
            if isinstance(e, InputError) and example_input is not None:  # fx appends the node: said once
                raise InputError(str(e).split("\n\nWhile executing")[0]) from None
            errors.append(_input_failure(xs, e))
            continue
        _add_outputs(prop, gm, result)
        for w in book.warnings:
            warn_user(w)
        tr = Trace(book.groups, book.layers, book.wires, book.concats, book.warnings, True, book.recurrent, book.unknown,
                   unknown_weights=book.unknown_weights)
        return _unwrap(tr) if root else tr
    if sized and not errors:  # no example's sizes traced it either: module order, for fx's reason
        return fallback_trace(model, failed)
    if example_input is not None:
        raise example_input_error(model, tuple(example_input) if isinstance(example_input, (tuple, list)) else
                                  (example_input,), errors[0])
    raise InputGuessError(f"could not guess an input for {type(model).__name__}", "; ".join(errors)[:400])


def _add_outputs(prop: FlowProp, gm: fx.GraphModule, result) -> None:
    out_node = next(n for n in gm.graph.nodes if n.op == "output")
    flows = prop._tensor_flows(out_node.args)
    for i, f in enumerate(flows):
        # logits [N, classes] and images [N, C, ...] keep units on axis 1; sequences [N, T, F] on the last
        if f.dim() > 1:
            axis = 1 if f.dim() == 2 or _uniform_except(f, 1) else -1
            ids = prop.readout(f, axis, "output")
        else:
            # a 0-dim value (an auxiliary loss) or one value per sample ([N]): one output node when
            # every element comes from the same node, whatever the batch size; else one per element
            ids = f.reshape(-1).long()
            if ids.numel() > 1 and bool((ids == ids[0]).all()):
                ids = ids[:1]
        gid, start = prop.book.new_group("output" if len(flows) == 1 else f"output{i}", "output", "logits", ids.numel())
        dst = torch.arange(start, start + ids.numel())
        live = ids != 0
        prop.book.wires[gid] = (ids[live], dst[live])


def _where(e: BaseException) -> str:
    """' at file:line (code)' of the innermost frame of the failure that is outside torch."""
    import traceback

    frames = [f for f in traceback.extract_tb(e.__traceback__) if "/torch/" not in f.filename.replace("\\", "/")]
    if not frames:
        return ""
    f = frames[-1]
    return f" at {f.filename}:{f.lineno} in {f.name} ({(f.line or '').strip()})"


def fallback_trace(model: nn.Module, reason: str) -> Trace:
    """Chain the weighted layers in module registration order (used when fx tracing fails).

    A layer reading as many units as the previous one wrote is wired one to one; a multiple of it
    (a flatten) maps each unit to its block of features; anything else is wired all to all."""
    msg = f"graphs: {reason}; falling back to module order (residual and concat links are missing)"
    warn_user(msg)
    book = _Book()
    book.warnings.append(msg)
    prev = None
    for name, m in model.named_modules():
        if not isinstance(m, ops.WEIGHTED_MODULES + ops.TRANSPOSED_MODULES + linear_types()):
            continue
        groups, transposed = int(getattr(m, "groups", 1)), isinstance(m, ops.TRANSPOSED_MODULES)
        # (out, in/groups, *kernel); a transposed convolution stores (in, out/groups, *kernel)
        shape = transposed_shape(m.weight.shape, groups) if transposed else tuple(m.weight.shape)
        n_in = shape[1] * groups
        if prev is None:
            _, s = book.new_group("input", "input", "channels", n_in)
            in_src = torch.arange(s, s + n_in)
        elif n_in == prev.numel():
            in_src = prev
        elif n_in % prev.numel() == 0:
            in_src = prev.repeat_interleave(n_in // prev.numel())
        else:
            row = torch.zeros(prev.numel(), dtype=torch.long)
            j = book.combine(row, prev, 1, f"{name}.input", "unknown")
            in_src = j.expand(n_in).clone()
        lid = len(book.layers)
        gid, start = book.new_group(name, "layer", type(m).__name__, shape[0], layer=lid)
        kind = "linear" if isinstance(m, linear_types()) else f"conv{'transpose' if transposed else ''}{m.weight.dim() - 2}d"
        book.layers.append(LayerFlow(name, f"{name}.weight", gid, kind, shape, groups, in_src, "", transposed=transposed))
        prev = torch.arange(start, start + shape[0])
    if prev is not None:
        gid, start = book.new_group("output", "output", "logits", prev.numel())
        book.wires[gid] = (prev, torch.arange(start, start + prev.numel()))
    return Trace(book.groups, book.layers, book.wires, book.concats, book.warnings, traced=False, reason=reason)
