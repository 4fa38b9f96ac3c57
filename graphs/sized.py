"""Tracing a forward whose Python reads its input's sizes: ``for t in range(x.shape[1])``, ``x.size(1)`` as a
number, ``for xt in x.unbind(1)``, ``if x.dim() == 3``.

fx traces sizes as values of the graph (proxies), so Python cannot take them as numbers: ``range()`` of one
fails, and so does iterating over a tensor or over the parts ``unbind`` returns, whose count is a size.
:func:`graphs.trace` always has the example input it builds the graph of, so where fx alone fails it traces
again with :class:`SizedTracer`, which answers such a question with the size that example has: the shape read
of a value computed from the inputs (and arithmetic on shape reads), evaluated on the example input, is given to
Python as an int or bool, and iterating over a tensor or a tuple of tensors goes over as many items as the
example's value has. The graph is then that of the example (the loop unrolled over its steps), as the graph's
units and wires were always the example's; a question about data (``if x.sum() > 0``, ``int(x.max())``) is
refused as fx refuses it, and the model falls back to module order as before. :func:`graphs.compact`, whose copy
runs on inputs of any size, never traces so.
"""
from __future__ import annotations

import operator
from typing import Any, Callable, Dict, Set

import torch
from torch import fx

from .trace import SIZED_FACTORIES, SignatureTracer, _sizes_packed, _torch_own_functions, serialized

# fx's own context that takes its patches off nn.Module (its __call__ and __getattr__ make proxies while fx
# traces) while the example's values are computed; a private name of fx's: without it nothing is traced so
_REVERTED = getattr(fx._symbolic_trace, "_maybe_revert_all_patches", None)

_SHAPE_ATTRS = {"shape", "ndim"}
_SHAPE_METHODS = {"size", "dim", "ndimension", "numel", "nelement"}


def _reads_shape(n: fx.Node) -> bool:
    """Does ``n`` read a tensor's shape (its sizes, rank or element count), none of its values?"""
    if n.op == "call_function" and n.target is getattr:
        return len(n.args) == 2 and n.args[1] in _SHAPE_ATTRS
    return n.op == "call_method" and n.target in _SHAPE_METHODS


class SizedTracer(SignatureTracer):
    """:class:`SignatureTracer` that gives Python the example's sizes where it needs a number (see the module
    docstring). ``inputs``: a function of the number of placeholders giving each placeholder's value, as the
    traced graph is run (:func:`graphs.trace._placeholder_values`)."""

    def __init__(self, inputs: Callable[[int], tuple], **kwargs):
        super().__init__(**kwargs)
        self.inputs = inputs
        self.values: Dict[fx.Node, Any] = {}
        self.sizes: Dict[fx.Node, bool] = {}  # node -> is it a number computed from shape reads only

    def proxy(self, node: fx.Node) -> fx.Proxy:
        return _SizedProxy(node, self)

    def trace(self, root, concrete_args=None):
        if _REVERTED is None:
            raise RuntimeError("this torch's fx has no _maybe_revert_all_patches: sizes cannot be read while tracing")
        graph = super().trace(root, concrete_args)
        if graph._tracer_cls is SizedTracer:  # torch.load traces a saved copy's code again without an input
            graph._tracer_cls = SignatureTracer
        return graph

    def _is_size(self, n: fx.Node) -> bool:
        """Is ``n`` a number (or a size) computed from shape reads alone (``x.shape[1] - 1``), whatever the data?"""
        if n not in self.sizes:
            self.sizes[n] = _reads_shape(n) or (n.op in ("call_function", "call_method") and bool(n.all_input_nodes)
                                                and all(self._is_size(a) for a in n.all_input_nodes))
        return self.sizes[n]

    def value(self, n: fx.Node):
        """``n``'s value when the traced code so far runs on the example input: the nodes it is computed from,
        in the graph's order (no recursion: an unrolled loop makes long chains), each once."""
        need: Set[fx.Node] = set()
        todo = [n]
        while todo:
            m = todo.pop()
            if m not in need and m not in self.values:
                need.add(m)
                todo.extend(m.all_input_nodes)
        holders = [m for m in self.graph.nodes if m.op == "placeholder"]
        with _REVERTED(), torch.no_grad():
            inputs = None
            for m in self.graph.nodes:
                if m not in need:
                    continue
                if m.op == "placeholder":
                    inputs = self.inputs(len(holders)) if inputs is None else inputs
                    self.values[m] = _copied(inputs[holders.index(m)])
                    continue
                args, kwargs = fx.node.map_arg((m.args, m.kwargs), self.values.__getitem__)
                if m.op == "get_attr":
                    self.values[m] = _copied(operator.attrgetter(m.target)(self.root))
                elif m.op == "call_function":
                    self.values[m] = m.target(*args, **kwargs)
                elif m.op == "call_method":
                    self.values[m] = getattr(args[0], m.target)(*args[1:], **kwargs)
                elif m.op == "call_module":
                    self.values[m] = self.root.get_submodule(m.target)(*args, **kwargs)
                else:
                    raise RuntimeError(f"cannot compute node {m.name} ({m.op}) of the example")
        return self.values[n]

    def size(self, p: fx.Proxy):
        """The example's value of ``p``, a number read from shapes; the error fx raises for anything else."""
        if not self._is_size(p.node):
            raise fx.proxy.TraceError("symbolically traced variables cannot be used as inputs to control flow "
                                      f"({p.node.name} is computed from a tensor's values, not its shape)")
        return self.value(p.node)

    def to_bool(self, obj: fx.Proxy) -> bool:
        return bool(self.size(obj))

    def iter(self, obj: fx.Proxy):
        value = self.value(obj.node)
        if not isinstance(value, (torch.Tensor, tuple, list)) or isinstance(value, torch.Tensor) and value.dim() == 0:
            return super().iter(obj)
        return iter([obj[i] for i in range(len(value))])


def _copied(v):
    """A tensor's copy (the example's values may be changed in place by the code computed on them, which must
    change neither the caller's input nor the model's weights); anything else as it is."""
    return v.detach().clone() if isinstance(v, torch.Tensor) else v


class _SizedProxy(fx.Proxy):
    """A proxy that Python may take as a number where it reads shapes (``range(x.shape[1])``, ``int(x.size(1))``,
    ``len(x)``)."""

    def __index__(self) -> int:
        return operator.index(self.tracer.size(self))

    def __int__(self) -> int:
        return int(self.tracer.size(self))

    def __len__(self) -> int:
        value = self.tracer.value(self.node)
        if not isinstance(value, (torch.Tensor, tuple, list, torch.Size)):
            return super().__len__()
        return len(value)


@serialized
def sized_trace(root: torch.nn.Module, inputs: Callable[[int], tuple], concrete_args=None) -> fx.GraphModule:
    """:func:`graphs.trace.symbolic_trace` with :class:`SizedTracer`: the example input's sizes (``inputs``, as
    that class takes it) answer the forward's questions about sizes."""
    with _torch_own_functions(), _sizes_packed():
        tracer = SizedTracer(inputs, autowrap_functions=SIZED_FACTORIES)
        graph = tracer.trace(root, concrete_args)
    return fx.GraphModule(tracer.root, graph, type(root).__name__)
