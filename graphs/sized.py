"""Tracing a forward whose Python reads its input's sizes: ``for t in range(x.shape[1])``, ``x.size(1)`` as a
number, ``for xt in x.unbind(1)``, ``if x.dim() == 3``.

fx traces sizes as values of the graph (proxies), so Python cannot take them as numbers: ``range()`` of one
fails, and so does iterating over a tensor or over the parts ``unbind`` returns, whose count is a size.
:func:`graphs.trace` always has the example input it builds the graph of, so where fx alone fails it traces
again with :class:`SizedTracer`, which answers such a question with the size that example has: the shape read
of a value computed from the inputs (and arithmetic on shape reads), evaluated on the example input's shapes
(fake tensors, no data), is given to Python as an int or bool, and iterating over a tensor or a tuple of tensors
goes over as many items as the example's value has. The graph is then that of the example (the loop unrolled over
its steps), as the graph's units and wires were always the example's; a question about data (``if x.sum() > 0``,
``int(x.max())``, and a shape only the data tells: ``len(x.nonzero())``, ``for v in x[x > 0]``) is refused as fx
refuses it, and the model falls back to module order as before. :func:`graphs.compact`, whose copy
runs on inputs of any size, never traces so.
"""
from __future__ import annotations

import operator
from typing import Any, Callable, Dict, List

import torch
from torch import fx
from torch.utils._pytree import tree_map_only

try:  # shapes without data: what a size computed from shapes alone can be computed from
    from torch._subclasses.fake_tensor import FakeTensorMode
except ImportError:  # pragma: no cover - an older torch
    FakeTensorMode = None

from .locking import serialized
from .tracer import (SIZED_FACTORIES, SignatureTracer, _sizes_packed, _torch_own_functions, _traced_unbound,
                     _unbound_methods_lifted)

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
    traced graph is run (:func:`graphs.trace._placeholder_values`).

    The values are computed on fake tensors (torch's ``FakeTensorMode``: shapes without data), every node
    recorded so far in its order, so that a number Python is given can only have come from shapes: one that
    needs values (``bool(x.sum() > 0)``, the count of ``x.nonzero()``, ``len(x[x > 0])``, a random draw's sum)
    raises there, and the forward is refused as fx refuses it; and a shape read after an in-place op on the
    tensor (``x.unsqueeze_(0)``) reads the changed shape, as when the model runs."""

    def __init__(self, inputs: Callable[[int], tuple], **kwargs):
        super().__init__(**kwargs)
        self.inputs = inputs
        self.values: Dict[fx.Node, Any] = {}
        self.order: List[fx.Node] = []  # the nodes in the order they were recorded (and run)
        self.sizes: Dict[fx.Node, bool] = {}  # node -> is it a number computed from shape reads only
        self.fake = None

    def proxy(self, node: fx.Node) -> fx.Proxy:
        return _SizedProxy(node, self)

    def create_node(self, *args, **kwargs) -> fx.Node:
        n = super().create_node(*args, **kwargs)
        self.order.append(n)
        return n

    def trace(self, root, concrete_args=None):
        if _REVERTED is None or FakeTensorMode is None:
            raise RuntimeError("this torch's fx has no _maybe_revert_all_patches or FakeTensorMode: sizes cannot be "
                               "read while tracing")
        graph = super().trace(root, concrete_args)
        if graph._tracer_cls is SizedTracer:  # torch.load traces a saved copy's code again without an input
            graph._tracer_cls = SignatureTracer
        return graph

    def _is_size(self, n: fx.Node) -> bool:
        """Is ``n`` a number (or a size) computed from shape reads alone (``x.shape[1] - 1``)?"""
        if n not in self.sizes:
            self.sizes[n] = _reads_shape(n) or (n.op in ("call_function", "call_method") and bool(n.all_input_nodes)
                                                and all(self._is_size(a) for a in n.all_input_nodes))
        return self.sizes[n]

    def value(self, n: fx.Node):
        """``n``'s value when the traced code so far runs on the example input's fake twin (its shapes, no data):
        every node recorded up to now is run, in order, once (an op that fails leaves :class:`_Unknown`)."""
        todo = self.order[len(self.values):]
        if todo:
            holders = [m for m in self.order if m.op == "placeholder"]
            with _REVERTED(), _unbound_methods_lifted(), torch.no_grad(), self._fake_mode():
                for m in todo:
                    try:
                        self.values[m] = self._run(m, holders)
                    except Exception as e:  # noqa: BLE001 - no shape without data (nonzero), or no fake kernel
                        self.values[m] = _Unknown(e)
        return self.values[n]

    def _fake_mode(self):
        """The fake tensor mode the example's values are computed in (made at its first use: within
        :func:`graphs.tracer._unbound_methods_lifted`, as its first use imports torch._dynamo)."""
        if self.fake is None:
            self.fake = FakeTensorMode(allow_non_fake_inputs=True)
        return self.fake

    def _run(self, m: fx.Node, holders: List[fx.Node]):
        if m.op == "placeholder":
            return tree_map_only(torch.Tensor, self._faked, self.inputs(len(holders))[holders.index(m)])
        if m.op == "get_attr":
            return tree_map_only(torch.Tensor, self._faked, operator.attrgetter(m.target)(self.root))
        args, kwargs = fx.node.map_arg((m.args, m.kwargs), self._known)
        if m.op == "call_function":
            return m.target(*args, **kwargs)
        if m.op == "call_method":
            return getattr(args[0], m.target)(*args[1:], **kwargs)
        if m.op == "call_module":
            return self.root.get_submodule(m.target)(*args, **kwargs)
        return None  # the output

    def _faked(self, t: torch.Tensor) -> torch.Tensor:
        return self.fake.from_tensor(t, static_shapes=True)

    def _known(self, n: fx.Node):
        v = self.values[n]
        if isinstance(v, _Unknown):
            raise v.error
        return v

    def number(self, p: fx.Proxy, python: Callable[[Any], Any]):
        """``python`` (``int``, ``len``, ...) of the example's value of ``p``; fx's error where it needs the data."""
        value = self.value(p.node)
        try:
            if isinstance(value, _Unknown):
                raise value.error
            return python(value)
        except Exception as e:  # noqa: BLE001 - a count only the values tell (x.nonzero()), ...
            raise fx.proxy.TraceError(f"symbolically traced variables cannot be used as inputs to control flow "
                                      f"({p.node.name} needs the tensors' values, not only their shapes: "
                                      f"{type(e).__name__})") from None

    def size(self, p: fx.Proxy, python: Callable[[Any], Any]):
        """:meth:`number` of ``p``, a number read from shapes; the error fx raises for anything else."""
        if not self._is_size(p.node):
            raise fx.proxy.TraceError("symbolically traced variables cannot be used as inputs to control flow "
                                      f"({p.node.name} is computed from a tensor's values, not its shape)")
        return self.number(p, python)

    def to_bool(self, obj: fx.Proxy) -> bool:
        return self.size(obj, _concrete(bool))

    def iter(self, obj: fx.Proxy):
        value = self.value(obj.node)
        if not isinstance(value, (torch.Tensor, tuple, list)) or isinstance(value, torch.Tensor) and value.dim() == 0:
            return super().iter(obj)
        return iter([obj[i] for i in range(self.number(obj, _concrete(len, of_tensor=True)))])


class _Unknown:
    """The value of a node that could not be computed without data: the error it raised."""

    def __init__(self, error: Exception):
        self.error = error


def _concrete(python: Callable[[Any], Any], of_tensor: bool = False) -> Callable[[Any], Any]:
    """``python`` of a value giving a plain number: not of a fake tensor unless ``of_tensor`` (its length), as
    ``int(torch.tensor(x.shape)[0])`` would read a value, nor a symbolic one (a count only the data tells)."""
    def call(value):
        if isinstance(value, torch.Tensor) and not of_tensor:
            raise TypeError("a tensor's value")
        out = python(value)
        if not isinstance(out, (bool, int)):
            raise TypeError(f"not a number: {type(out).__name__}")
        return out
    return call


class _SizedProxy(fx.Proxy):
    """A proxy that Python may take as a number where it reads shapes (``range(x.shape[1])``, ``int(x.size(1))``,
    ``len(x)``)."""

    def __index__(self) -> int:
        return self.tracer.size(self, _concrete(operator.index))

    def __int__(self) -> int:
        return self.tracer.size(self, _concrete(int))

    def __len__(self) -> int:
        value = self.tracer.value(self.node)
        if not isinstance(value, (torch.Tensor, tuple, list, torch.Size, _Unknown)):
            return super().__len__()
        return self.tracer.number(self, _concrete(len, of_tensor=True))


@serialized
def sized_trace(root: torch.nn.Module, inputs: Callable[[int], tuple], concrete_args=None) -> fx.GraphModule:
    """:func:`graphs.trace.symbolic_trace` with :class:`SizedTracer`: the example input's sizes (``inputs``, as
    that class takes it) answer the forward's questions about sizes."""
    def trace_once():
        tracer = SizedTracer(inputs, autowrap_functions=SIZED_FACTORIES)
        return tracer, tracer.trace(root, concrete_args)

    with _torch_own_functions(), _sizes_packed():
        tracer, graph = _traced_unbound(trace_once, root)
    return fx.GraphModule(tracer.root, graph, type(root).__name__)
