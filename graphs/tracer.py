"""How graphs gets a model's fx graph: :func:`symbolic_trace` (torch's own functions in place of a library's
replacements, factories given traced sizes), :class:`SignatureTracer` (the graph written with the forward's
signature: :mod:`graphs.signature`) and :class:`_Root`, which holds a module that a rule follows as one call when
it is the whole model.
"""
from __future__ import annotations

import contextlib
import inspect
import re
import types
from typing import Any

import torch
from torch import fx, nn

from . import ops
from .folded import FoldedConv
from .locking import serialized
from .signature import _Signature, _annotate, _required_after_defaults
from .trace_types import Trace


# fx's check on an input traced as None, whose wrap() SignatureTracer drops: a private name of fx's, so None
# where a torch lacks it (graphs still imports and traces; only that drop is skipped)
_assert_is_none = getattr(fx._symbolic_trace, "_assert_is_none", None)


@contextlib.contextmanager
def _torch_own_functions():
    """Put torch's own functions back in the torch namespace where another library replaced them with
    Python functions of its own (torch_geometric's ``torch.index_select`` and ``torch.select``, which
    check ``input.dim()`` in Python), restoring the replacements on exit."""
    replaced = {name: f for name, f in vars(torch).items()
                if isinstance(f, types.FunctionType) and not name.startswith("_") and hasattr(ops.TORCH_OWN, name)
                and not (f.__module__ == "torch" or str(f.__module__).startswith("torch."))}
    try:
        for name in replaced:
            setattr(torch, name, getattr(ops.TORCH_OWN, name))
        yield
    finally:
        for name, f in replaced.items():
            setattr(torch, name, f)


# factories that take their sizes as separate ints (torch.zeros(b, c)) as well as one size (torch.zeros((b, c)))
_SIZED_FACTORIES = ("zeros", "ones", "empty", "rand", "randn")
# the functions themselves, for a forward whose module bound them by name (``from torch import zeros``): fx's
# autowrap records a call of one with a traced argument as one call_function node, sizes as given
SIZED_FACTORIES = tuple(getattr(torch, name) for name in _SIZED_FACTORIES)


@contextlib.contextmanager
def _sizes_packed():
    """Let fx trace ``torch.zeros(h.shape[0], h.shape[1])``: torch's argument parser takes separate sizes only
    as ints, and a traced shape read (a Proxy) among them failed with "zeros() takes 1 positional argument but
    2 were given", where ``torch.zeros(h.shape)`` traced. Inside, such a call is made with its sizes packed
    into one tuple, which fx records as ``torch.zeros((b, c))``: the same tensor when run. Restored on exit.
    A factory imported by name before tracing (``from torch import zeros``) is not reached so: fx's
    ``autowrap_functions`` record it (:data:`SIZED_FACTORIES`, given to :class:`SignatureTracer`)."""
    def packed(f):
        def call(*args, **kwargs):
            if len(args) > 1 and any(isinstance(a, fx.Proxy) for a in args):
                return f(args, **kwargs)
            return f(*args, **kwargs)
        return call

    own = {name: getattr(torch, name) for name in _SIZED_FACTORIES}
    try:
        for name, f in own.items():
            setattr(torch, name, packed(f))
        yield
    finally:
        for name, f in own.items():
            setattr(torch, name, f)


def _descriptor(name: str) -> bool:
    """Is ``torch.Tensor.<name>`` a method of torch's C base (``topk``, ``matmul``, ``__matmul__``), which refuses a
    Proxy as ``self``, not one written in Python on ``torch.Tensor`` itself (``split``, which fx traces), nor a
    callable that is no method of a tensor (``torch.Tensor.mro``, ``__class__``, ``_make_subclass``: a stand-in for
    one broke the trace, or ``torch.Tensor``)?"""
    bases = torch.Tensor.__mro__[1:-1]  # torch's C base, not object's
    return name not in vars(torch.Tensor) and any(
        isinstance(vars(b).get(name), (types.MethodDescriptorType, types.WrapperDescriptorType)) for b in bases)


def _codes(code):
    """``code`` and the code objects nested in it (comprehensions, lambdas, inner functions)."""
    yield code
    for c in code.co_consts:
        if isinstance(c, types.CodeType):
            yield from _codes(c)


def _unbound_in_forwards(root) -> set:
    """The C-descriptor methods (:func:`_descriptor`) that the forwards of ``root`` and its submodules name unbound,
    ``torch.Tensor.matmul`` or ``Tensor.bmm`` (an attribute read right after a name ``Tensor`` is read), from their
    bytecode: after fx's first refusal, their stand-ins all go in for the next trace, one retrace where there used
    to be one per name. One reached otherwise (a helper function's, ``T = torch.Tensor; T.mm``) is still found by
    its refusal."""
    import dis

    modules = root.modules() if isinstance(root, nn.Module) else ()
    found = set()
    forwards = {type(m).forward for m in modules}
    if callable(root) and not isinstance(root, nn.Module):  # a function traced
        forwards.add(root)
    for fn in forwards:
        code = getattr(inspect.unwrap(fn), "__code__", None)
        if code is None:
            continue
        for c in _codes(code):
            ins = list(dis.get_instructions(c))
            found.update(b.argval for a, b in zip(ins, ins[1:]) if a.argval == "Tensor"
                         and b.opname in ("LOAD_ATTR", "LOAD_METHOD") and isinstance(b.argval, str))
    return {n for n in found if _descriptor(n)}


def _as_method(name: str, own):
    """``torch.Tensor.<name>`` that, given a Proxy as ``self``, records the method call ``self.<name>(...)``, as
    ``h.<name>(...)`` is recorded; ``own`` (torch's) otherwise."""
    def call(self, *args, **kwargs):
        if isinstance(self, fx.Proxy):
            return getattr(self, name)(*args, **kwargs)
        return own(self, *args, **kwargs)

    call.__name__ = call.__qualname__ = name
    call.__doc__ = own.__doc__
    _OWN[call] = own
    return call


# each stand-in of _as_method, and torch's descriptor it stands for: a tensor's method given a Proxy as another
# argument (``self.buf.add_(h)``, a buffer fx gives as a tensor) reaches fx as a call of ``torch.Tensor.add_``,
# the stand-in while it is there, which fx, not knowing it for a method, records as a function call;
# SignatureTracer.trace records it as the method call, as fx does with torch's
_OWN: dict = {}


@contextlib.contextmanager
def _unbound_methods_traced(names=()):
    """Let fx trace ``torch.Tensor.topk(h, 2)`` (an unbound method of torch's C base on a traced value): it failed
    with "descriptor 'topk' for 'torch._C.TensorBase' objects doesn't apply to a 'Proxy' object", and the model fell
    back to module order. Inside, such a call of one of ``names`` records the method call ``h.topk(2)``, the graph
    written as if the model called it so, followed by the same rule; on a tensor it is torch's own call. Removed on
    exit. Only ``names`` are replaced (:func:`_traced_unbound`: those the traced forward was refused or names
    unbound), as the replacement is on ``torch.Tensor`` for the whole process: a tensor subclass's
    ``__torch_function__`` in any thread is given the stand-in, not torch's method, meanwhile (torchvision's
    ``tv_tensors.Image.clone()`` gave a plain tensor)."""
    names = [n for n in names if n not in vars(torch.Tensor)]  # those a trace this one is inside has not put in
    # torch caches the methods of torch.Tensor the first time it is asked (fx asks which calls are methods): asked
    # now, while they are torch's; cached with the stand-ins, it would take torch's own for functions ever after
    torch.overrides.is_tensor_method_or_property(torch.Tensor.add)
    try:
        for name in names:
            own = getattr(torch.Tensor, name)
            stand_in = next((f for f, o in _OWN.items() if o is own), None) or _as_method(name, own)
            setattr(torch.Tensor, name, stand_in)
        yield
    finally:
        for name in names:
            if name in vars(torch.Tensor):
                delattr(torch.Tensor, name)  # torch's descriptor, inherited from TensorBase, shows again


@contextlib.contextmanager
def _unbound_methods_lifted():
    """torch's own methods on ``torch.Tensor`` while inside, where :func:`_unbound_methods_traced` put stand-ins
    (put back on exit): :class:`graphs.sized.SizedTracer` computes the example's values so, as fx lifts its own
    patches there. Its first fake tensor imports torch._dynamo, which keeps a copy of ``torch.Tensor.__dict__``: taken
    with the stand-ins in, it held them for the rest of the process."""
    lifted = {n: f for n, f in vars(torch.Tensor).items() if isinstance(f, types.FunctionType) and f in _OWN}
    try:
        for name in lifted:
            delattr(torch.Tensor, name)
        yield
    finally:
        for name, f in lifted.items():
            setattr(torch.Tensor, name, f)


# fx's refusal of an unbound method of torch's given a traced value as ``self``
_REFUSED = re.compile(r"descriptor '(\w+)' for '[\w.]+' objects doesn't apply to a '\w+' object")


def _traced_unbound(trace_once, root=None):
    """``trace_once()`` (a trace of the model ``root``); where fx refuses an unbound method of torch's C base on a
    traced value (``torch.Tensor.topk(h, 2)``, ``torch.Tensor.matmul(q, k)``), traced again with that method's
    stand-in in (:func:`_unbound_methods_traced`), and with those of every other method the forwards name so
    (:func:`_unbound_in_forwards`): one retrace for them all; one more for each reached otherwise. A model that calls
    none is traced with ``torch.Tensor`` left as it is."""
    names = []
    while True:
        try:
            with _unbound_methods_traced(names):
                return trace_once()
        except TypeError as e:
            refused = _REFUSED.search(str(e))
            if refused is None or not _descriptor(refused.group(1)) or refused.group(1) in names:
                raise
            more = _unbound_in_forwards(root) if not names and root is not None else set()
            names.extend(sorted(({refused.group(1)} | more) - set(names)))


@serialized
def symbolic_trace(root: nn.Module, concrete_args=None) -> fx.GraphModule:
    """``torch.fx.symbolic_trace`` with torch's own functions in place of a library's Python replacements
    (:func:`_torch_own_functions`): fx records torch's function as one call, as it records any torch
    function, where it traced into the replacement and stopped at its ``if`` on a traced value (once
    torch_geometric was imported, every model calling ``torch.index_select`` fell back to module order,
    and ``graphs.compact`` refused it). The graph runs torch's function. Factories given separate traced
    sizes are traced too (:func:`_sizes_packed`), and a forward with keyword-only parameters keeps its
    calling convention (``forward(self, x, y=None, *, mask)``: :class:`SignatureTracer`). An unbound method on a
    traced value, ``torch.Tensor.topk(h, 2)``, is recorded as the method call (:func:`_unbound_methods_traced`)."""
    def trace_once():
        tracer = SignatureTracer(autowrap_functions=SIZED_FACTORIES)
        return tracer, tracer.trace(root, concrete_args)

    with _torch_own_functions(), _sizes_packed():
        tracer, graph = _traced_unbound(trace_once, root)
    return fx.GraphModule(tracer.root, graph, type(root).__name__)


_NoneType = type(None)


def none_only(value: Any, msg: str) -> None:
    """The check on an input traced as None (the copy computes what the model does without it): fx's own,
    ``_assert_is_none``, which TorchScript cannot compile (its ``value: object``), so that ``torch.jit.script``
    of a copy with one failed where it scripted the model."""
    torch._assert(torch.jit.isinstance(value, _NoneType), msg)


class SignatureTracer(fx.Tracer):
    """``fx.Tracer`` whose graph is written with the traced forward's signature: its positional-only and
    keyword-only parameters so (:class:`_Signature`), defaults kept, and its annotations and return annotation
    on the placeholders and the output, as objects (a string one evaluated where the forward was written: the
    copy's code lives elsewhere; fx drops the return annotation of a forward with keyword-only parameters or
    inputs traced at a value, and those inputs' annotations). A
    GraphModule keeps its tracer's class, and torch.load traces the saved module's code again with it (the graph
    itself is not saved): the copy read back, whose code has that signature, is written so too; so is a copy
    with an input traced as None (its check, see below). Reading those back needs graphs importable; any other
    graph keeps ``fx.Tracer`` as its tracer, and a copy loads with torch alone. Where the placeholders are not the parameters one for one (a ``*args``, a tuple given in
    ``concrete_args``), the defaults of those a required one follows are dropped
    (:func:`_required_after_defaults`)."""

    def __init__(self, *args, autowrap_functions=(), **kwargs):
        # the check of an input traced as None, recorded as a call where torch.load traces a copy's code again
        super().__init__(*args, autowrap_functions=tuple(autowrap_functions) + (none_only,), **kwargs)

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        # a compacted model's FoldedConv is one call, taken as its convolution's (see ops.categorize)
        return isinstance(m, FoldedConv) or super().is_leaf_module(m, module_qualified_name)

    def trace(self, root, concrete_args=None):
        graph = super().trace(root, concrete_args)
        fn = getattr(type(root), self.traced_func_name) if isinstance(root, nn.Module) else root
        code = getattr(inspect.unwrap(fn), "__code__", None)
        holders = [n for n in graph.nodes if n.op == "placeholder"]
        keyword = code.co_kwonlyargcount if code is not None else 0
        bound = isinstance(root, nn.Module)  # self, not a placeholder
        own = code is not None and not code.co_flags & (inspect.CO_VARARGS | inspect.CO_VARKEYWORDS) \
            and len(holders) == code.co_argcount + keyword - bound
        if own:
            positional = max(code.co_posonlyargcount - bound, 0)
            if keyword or positional:
                graph._codegen = _Signature(keyword, positional)
            _annotate(graph, inspect.unwrap(fn), holders, code.co_varnames[bound:len(holders) + bound])
        else:
            _required_after_defaults(graph)
        for n in graph.nodes:
            if n.op == "call_function" and n.target in _OWN:  # a stand-in of _unbound_methods_traced: the method
                n.op, n.target = "call_method", n.target.__name__
        checks = [n for n in graph.nodes if n.target is none_only or _assert_is_none is not None and n.target is _assert_is_none]
        for n in checks:
            n.target = none_only
        factories = [n for n in graph.nodes if n.op == "call_function" and n.target in SIZED_FACTORIES]
        for n in factories:  # autowrapped, ``zeros(b, c)``: packed as _sizes_packed packs ``torch.zeros(b, c)``,
            if len(n.args) > 1:  # which fx alone (torch.load traces the code again) cannot trace
                n.args = (tuple(n.args),)
        for n in checks + factories:
            # fx writes wrap("torch.fx._symbolic_trace._assert_is_none") into the code of the check it puts on
            # an input traced as None (and wrap("torch.zeros") for an autowrapped factory); torch.load runs it,
            # and every later fx trace in the process failed (KeyError: no global has that dotted name). The
            # check, none_only in its place, is autowrapped by this tracer, which torch.load traces such a copy with.
            n.meta.pop("is_wrapped", None)
        if not checks and not isinstance(graph._codegen, _Signature):
            # a GraphModule pickles its tracer's class, and torch.load needs it importable: where it would
            # write nothing fx's does not, fx's, so such a copy loads where graphs is not installed
            graph._tracer_cls = fx.Tracer
        return graph


class _Root(nn.Module):
    """Holds an attention, recurrent, transformer or other torch.nn module with a rule (a Linear, a
    Conv, a normalisation, ...) given as the whole model, so that fx records it as one call (which
    the rules above follow) instead of tracing into its forward: fx never treats the root as a leaf,
    so a bare nn.Linear would otherwise become an F.linear call that no layer owns."""

    def __init__(self, m: nn.Module, nargs: int):
        super().__init__()
        self.m, self.nargs = m, nargs

    def forward(self, a, b=None, c=None):
        if isinstance(self.m, nn.MultiheadAttention) and self.nargs == 1:
            return self.m(a, a, a)  # self-attention
        return self.m(*(a, b, c)[: self.nargs])


_ROOT_RULES = (nn.MultiheadAttention, nn.RNNBase, nn.RNNCellBase) + ops.TRANSFORMER_MODULES
# modules followed as one call only when fx makes them a leaf (torch.nn's own, not a subclass defined
# elsewhere, which fx traces into wherever it is): wrapped as the root too, as inside a Sequential
_LEAF_RULES = (ops.WEIGHTED_MODULES + ops.TRANSPOSED_MODULES + ops.NORMALIZE_MODULES + ops.POINTWISE_MODULES
               + ops.SHAPE_MODULES + ops.LOOKUP_MODULES)


def _wrap_root(model: nn.Module) -> bool:
    """Is ``model`` traced as ``_Root(model)``: a module a rule follows as one call?"""
    return isinstance(model, _ROOT_RULES) or (
        isinstance(model, _LEAF_RULES) and fx.Tracer().is_leaf_module(model, "m"))


def _unwrap(tr: Trace) -> Trace:
    """Names of a trace of ``_Root(model)`` as the model's own (drop the ``m.`` prefix; ``m``, the
    model itself, is ``""`` as in ``model.named_modules()``)."""
    cut = lambda name: name[2:] if name.startswith("m.") else "" if name == "m" else name
    for g in tr.groups:
        g.name = cut(g.name)
    for l in tr.layers:
        l.module, l.param = cut(l.module), cut(l.param)
    tr.unknown_weights = {what: [cut(p) for p in names] for what, names in tr.unknown_weights.items()}
    return tr
