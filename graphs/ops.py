"""How each kind of fx node moves units between tensors: the op tables the tracer dispatches on.

Every op falls in one category:

- ``weighted``: an ``nn.Linear``/``nn.Conv1d/2d/3d`` call, or a transposed convolution
  (``nn.ConvTranspose1d/2d/3d``, a U-Net's up-convolution, a prunable layer like the others; its
  weight is stored ``(in, out/groups, *kernel)``): it creates new units, each fed by every input
  channel of its group. A :class:`graphs.FoldedConv` of a compacted model is the call of the convolution
  it wraps (``<name>.conv.weight``), its folded constant term a constant like a bias.
- ``attention``: an ``nn.MultiheadAttention`` call: query, key and value units, then ``out_proj``; and
  ``F.scaled_dot_product_attention(q, k, v)``, which has no units of its own: output channel ``c`` of
  head ``h`` (every axis before the last two is a batch or head axis) is a junction of value channel
  ``c`` and every query and key channel of head ``h`` (and of a traced ``attn_mask``), as inside
  ``nn.MultiheadAttention``; positions are not units: each input channel's ids along the sequence axis are
  merged first, as a weighted layer's input is read.
- ``recurrent``: an ``nn.RNN``/``nn.LSTM``/``nn.GRU`` call, unrolled one step: gate units per layer
  and direction, fed by the input and by state nodes standing for the previous hidden state; an
  ``nn.RNNCell``/``nn.LSTMCell``/``nn.GRUCell`` call, one step of the model's own loop: gate units fed by
  the input and by the state the call is given (the previous call's output).
- ``transformer``: ``nn.Transformer`` and its encoder/decoder (layers): attention, feed-forward and
  residual junctions, written out per layer.
- ``normalize``: LayerNorm / RMSNorm / GroupNorm / LocalResponseNorm: channel ``c`` of the output reads channel
  ``c`` of the input and the statistics of the channels normalised with it (a junction per channel;
  for a LocalResponseNorm the window of ``size`` channels around ``c``). Softmax, log-softmax and softmin
  (``F.softmax``, ``torch.softmax``, ``x.softmax``, ``nn.Softmax``, ``nn.Softmax2d``, ...) and ``F.normalize``
  act along one ``dim``: followed exactly on the ids, each output element reads its own element and a
  *statistics* junction of every element along ``dim`` beside it. Over the channel axis that is the
  LayerNorm wiring (every channel reads the statistics of all); over an axis along which the units do
  not change (positions, an attention map's key axis) each channel reads only itself.
- ``pointwise``: acts on each channel separately (activations, batch and instance normalisation, pooling, dropout,
  resampling, dtype casts): channel ``c`` of the output is fed by channel ``c`` of the input. A cast
  (``.float()``, ``.long()``, ``.int()``, ``.bool()``, ``.to(dtype)``, ``.type(dtype)``, ...) passes each element's
  unit on: the dependency is structural (what the cast gives changes when its element does), so a cast to an
  integer or bool, which has zero gradient, still carries its unit.
- ``broadcast``: elementwise arithmetic of several tensors (residual ``+``, squeeze-excitation ``*``):
  each output element is fed by the elements it was computed from (a *junction* when they differ).
- ``shape``: moves elements without computing (view, flatten, cat, getitem, select, gather, pad, permute, the
  splits: split, chunk, tensor_split, hsplit/vsplit/dsplit, split_with_sizes, unbind; pixel_shuffle/pixel_unshuffle;
  flip, fliplr, flipud, roll, rot90): evaluated exactly on tensors of unit ids.
- ``reduce``: mean/sum/amax/amin, max/min (values and indices) and argmax/argmin over some dimensions.
- ``rank``: ops that order the elements along one ``dim`` (``topk``, ``sort``, ``argsort``, ``msort``,
  ``kthvalue``, ``median``/``nanmedian``/``mode``; functions and methods): each element of every result (values and
  indices alike, however many ``k`` keeps, ``largest``, ``descending`` or not) reads every element along ``dim`` of
  its own slice, a junction of them (the slices that hold the same units share one); the other axes element-wise.
  ``median()`` with no ``dim`` reads every element.
- ``scan``: running maxima, minima, sums and products along one ``dim`` (``cummax``, ``cummin``, ``cumsum``,
  ``cumprod``, ``logcumsumexp``, and in place ``cumsum_``, ``cumprod_``): position ``j`` reads positions ``0..j`` of
  its slice (the index at position 0 is a constant).
- ``lookup``: an ``nn.Embedding`` / ``F.embedding`` call: rows of a table picked by an index (or an
  ``nn.EmbeddingBag`` / ``F.embedding_bag`` call, which sums, averages or takes the max of a bag of them). The table
  is not a synapse layer (a Connectome leaves embeddings dense), so it has no units and no synapse
  edges: its output features (the ``embedding_dim`` columns) are nodes of their own, of kind input
  (op ``lookup``), wired from the nodes the index is computed from (the token positions). ``index_select``
  and ``gather`` (functions and methods) and indexing ``table[idx]`` are shape ops; on a table that carries
  no traced data (a parameter) with a traced integer index they are the same lookup, the table's units on
  its last axis (on its first where the index picks along the last: ``w[:, idx]``,
  ``w.index_select(-1, idx)``, ``w.gather(-1, idx)``).

``F.linear(x, self.fc.weight, ...)`` on the weight of an ``nn.Linear`` (a ``get_attr`` node: a subclass of
``nn.Linear`` that fx traces into, or a model reading a layer's weight directly) is, for the tracer,
that layer called (:func:`linear_owner`); it stays "unknown" here (``graphs.compact`` turns such a call
into the layer's own call where the bias is the layer's too). Any other ``F.linear`` (a computed or
shared weight) is unknown, with a warning saying why.

Anything else is unknown: the tracer warns, naming the node (and a module's type), and assumes
every input feeds every output. Extend a table (or :func:`register_op`) to teach it a new op.
"""
from __future__ import annotations

import math
import operator
import sys
from typing import Any, Dict, Optional

import torch
import torch.nn.functional as F
from torch import fx, nn

from adaptive.discovery import linear_types
from .flow_contract import CONTRACTIONS
from .folded import FoldedConv

# torch's own functions: a library may put a Python function of its own in their place in the torch
# namespace (torch_geometric does for torch.index_select and torch.select); the tracer records torch's
# (see graphs.trace.symbolic_trace), so the tables name those
TORCH_OWN = torch._C._VariableFunctions
WEIGHTED_MODULES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
# weighted too, but their weight is (in, out/groups, *kernel): the graph reads them through LayerFlow.part,
# and compaction cuts them in the (out, in/groups, *kernel) layout (graphs.compact_layers._out_in_weight)
TRANSPOSED_MODULES = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
# a compacted model's convolution with constants folded in (graphs.folded): weighted, as the convolution it wraps
# (its ``conv``), which holds the synapses; the folded term, input-independent, is a constant like a bias
FOLDED_MODULES = (FoldedConv,)

POINTWISE_MODULES = (
    nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm,
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish,
    nn.Sigmoid, nn.Tanh, nn.Hardswish, nn.Hardsigmoid, nn.Hardtanh, nn.Softplus, nn.Softsign,
    nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout,
    nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
    nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d,
    nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d, nn.Upsample,
    nn.ZeroPad2d, nn.ConstantPad2d, nn.ReflectionPad2d, nn.ReplicationPad2d,
)
SHAPE_MODULES = (nn.Flatten, nn.Unflatten, nn.PixelShuffle, nn.PixelUnshuffle)
# ops acting along one ``dim`` (softmax and kin, p-norm normalisation): each element reads every element
# along ``dim`` (normalize category; the tracer's rule is FlowProp._on_along_dim)
ALONG_DIM_MODULES = (nn.Softmax, nn.LogSoftmax, nn.Softmin, nn.Softmax2d)
ALONG_DIM_FUNCTIONS = {F.softmax, F.log_softmax, F.softmin, torch.softmax, torch.log_softmax, F.normalize}
ALONG_DIM_METHODS = {"softmax", "log_softmax"}
# normalisations whose statistics span channels: every output channel also reads those statistics
# (a LocalResponseNorm's, those of a window of neighbouring channels)
NORMALIZE_MODULES = ((nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm) + ((nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ())
                     + ALONG_DIM_MODULES)
NORMALIZE_FUNCTIONS = ({F.layer_norm, F.group_norm, F.local_response_norm} | ({F.rms_norm} if hasattr(F, "rms_norm") else set())
                       | ALONG_DIM_FUNCTIONS)
ATTENTION_FUNCTIONS = {F.scaled_dot_product_attention}
TRANSFORMER_MODULES = (nn.Transformer, nn.TransformerEncoder, nn.TransformerDecoder, nn.TransformerEncoderLayer,
                       nn.TransformerDecoderLayer)

# torch's unary element-wise maths (a sinusoidal timestep embedding's sin and cos), functions and methods
_UNARY = ("sin", "cos", "tan", "asin", "acos", "atan", "sinh", "cosh", "asinh", "acosh", "atanh", "log", "log1p",
          "log2", "log10", "exp2", "expm1", "rsqrt", "reciprocal", "erf", "erfc", "erfinv", "sign", "sgn", "floor",
          "ceil", "round", "trunc", "frac", "logit", "nan_to_num", "exp", "abs", "neg", "sqrt", "square")
POINTWISE_FUNCTIONS = {
    F.relu, F.relu_, torch.relu, torch.relu_, F.relu6, F.gelu, F.silu, F.mish, F.elu, F.selu, F.leaky_relu,
    F.hardswish, F.hardsigmoid, F.hardtanh, F.softplus, torch.sigmoid, F.sigmoid, torch.tanh, F.tanh,
    torch.clamp, torch.clip, torch.abs, torch.neg, torch.exp, torch.sqrt, torch.square,
    F.logsigmoid, F.softsign, F.tanhshrink, F.softshrink, F.hardshrink, F.celu, F.threshold,
    *(getattr(torch, f) for f in _UNARY), F.dropout, F.dropout2d, F.alpha_dropout, F.batch_norm, F.instance_norm,
    F.max_pool1d, F.max_pool2d, F.max_pool3d, F.avg_pool1d, F.avg_pool2d, F.avg_pool3d,
    F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.adaptive_avg_pool3d,
    F.adaptive_max_pool1d, F.adaptive_max_pool2d, F.adaptive_max_pool3d, F.interpolate,
}
# dtype casts: element ``i`` of the result is element ``i`` of the tensor. The dependency is structural: a cast to
# an integer or bool has zero gradient, yet what it gives changes when the element moves (past a whole number, or
# to or from zero), so its units feed the result as any elementwise op's do
CAST_METHODS = ("float", "double", "half", "bfloat16", "long", "int", "short", "char", "byte", "bool", "to", "type",
                "type_as")
POINTWISE_METHODS = {
    "relu", "relu_", "sigmoid", "sigmoid_", "tanh", "tanh_", "clamp", "clamp_", "clip", "abs", "neg", "exp",
    "sqrt", "square", *CAST_METHODS, "detach", "clone", "cpu", "cuda", *_UNARY, *(f"{f}_" for f in _UNARY),
}
BROADCAST_FUNCTIONS = {
    operator.add, operator.sub, operator.mul, operator.truediv, operator.iadd, operator.isub, operator.imul,
    operator.itruediv, torch.add, torch.sub, torch.mul, torch.div, torch.maximum, torch.minimum, torch.where,
    operator.eq, operator.ne, operator.lt, operator.le, operator.gt, operator.ge, operator.and_, operator.or_,
    operator.invert, torch.eq, torch.ne, torch.lt, torch.le, torch.gt, torch.ge, torch.logical_not,
    torch.logical_and, torch.logical_or, torch.masked_fill, operator.pow, torch.pow,
}
BROADCAST_METHODS = {"add", "add_", "sub", "sub_", "mul", "mul_", "div", "div_", "pow", "maximum", "minimum", "eq", "ne", "lt",
                     "le", "gt", "ge", "logical_not", "logical_and", "logical_or", "masked_fill", "masked_fill_"}
SHAPE_FUNCTIONS = {
    torch.flatten, torch.reshape, torch.cat, torch.concat, torch.stack, torch.permute, torch.transpose,
    torch.swapaxes, torch.swapdims,
    torch.squeeze, torch.unsqueeze, torch.split, torch.chunk, torch.narrow, torch.movedim, F.pad,
    operator.getitem, torch.unflatten, torch.triu, torch.tril, F.pixel_shuffle, F.pixel_unshuffle, torch.unbind,
    torch.tensor_split, torch.hsplit, torch.vsplit, torch.dsplit, torch.split_with_sizes,
    TORCH_OWN.index_select, TORCH_OWN.select, TORCH_OWN.gather, torch.flip, torch.fliplr, torch.flipud, torch.roll,
    torch.rot90,
}
SHAPE_METHODS = {
    "view", "reshape", "flatten", "permute", "transpose", "swapaxes", "swapdims", "squeeze", "unsqueeze", "split",
    "chunk", "narrow", "expand", "expand_as", "repeat", "movedim", "unflatten", "t", "view_as", "reshape_as", "contiguous",
    "triu", "tril", "unbind", "tensor_split", "hsplit", "vsplit", "dsplit", "split_with_sizes", "index_select",
    "select", "gather", "flip", "fliplr", "flipud", "roll", "rot90",
}
# pointwise ops that act along axis 1 (statistics, pooling, padding, resampling): not elementwise
_ALONG_AXIS_ONE_MODULES = (
    nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm,
    nn.modules.pooling._MaxPoolNd, nn.modules.pooling._AvgPoolNd, nn.modules.pooling._AdaptiveAvgPoolNd,
    nn.modules.pooling._AdaptiveMaxPoolNd, nn.Upsample, nn.modules.padding._ConstantPadNd,
    nn.modules.padding._ReflectionPadNd, nn.modules.padding._ReplicationPadNd, nn.PReLU,
)
_ALONG_AXIS_ONE_FUNCTIONS = {
    F.batch_norm, F.instance_norm, F.max_pool1d, F.max_pool2d, F.max_pool3d, F.avg_pool1d, F.avg_pool2d,
    F.avg_pool3d, F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.adaptive_avg_pool3d, F.adaptive_max_pool1d,
    F.adaptive_max_pool2d, F.adaptive_max_pool3d, F.interpolate, F.dropout2d,
}
# a table's rows picked by an index (see the module docstring): no units, no synapses
LOOKUP_MODULES = (nn.Embedding, nn.EmbeddingBag)
LOOKUP_FUNCTIONS = {F.embedding, F.embedding_bag}
# max and min over a dim give values and indices (a router's top-1 pick), each reading every element along it; of
# two tensors they are element-wise (categorize tells them apart)
REDUCE_FUNCTIONS = {torch.mean, torch.sum, torch.amax, torch.amin, torch.max, torch.min, torch.argmax, torch.argmin}
REDUCE_METHODS = {"mean", "sum", "amax", "amin", "max", "min", "argmax", "argmin"}
_MAX_MIN = {torch.max, torch.min, "max", "min"}
# ops that order the elements along one dim, by name: (the position of ``dim`` among the arguments, the tensor's
# first; its default: None reads the whole tensor). Each result element reads its slice along dim (FlowRankMixin)
RANK_OPS = {"topk": (2, -1), "sort": (1, -1), "argsort": (1, -1), "msort": (None, 0), "kthvalue": (2, -1),
            "median": (1, None), "nanmedian": (1, None), "mode": (1, -1)}
# cumulative ops along one dim (its position, no default): position j reads positions 0..j (torch has no reversed
# scan: a suffix sum is written with flip, which is a shape op). The in-place ``cumsum_``, ``cumprod_`` are methods
# only; the in-place rule (graphs.flow_in_place) gives their ids to the tensor they change
SCAN_OPS = {"cummax": (1, None), "cummin": (1, None), "cumsum": (1, None), "cumprod": (1, None),
            "logcumsumexp": (1, None), "cumsum_": (1, None), "cumprod_": (1, None)}
RANK_FUNCTIONS = {getattr(torch, k) for k in RANK_OPS}
SCAN_FUNCTIONS = {getattr(torch, k) for k in SCAN_OPS if hasattr(torch, k)}
RANK_METHODS = {k for k in RANK_OPS if hasattr(torch.Tensor, k)}
SCAN_METHODS = {k for k in SCAN_OPS if hasattr(torch.Tensor, k)}
CONCAT_FUNCTIONS = {torch.cat, torch.concat}
# ops that read only their tensor's shape, dtype and device, never its values: their result is a constant
SHAPE_ONLY_FUNCTIONS = {torch.zeros_like, torch.ones_like, torch.full_like, torch.empty_like, torch.rand_like,
                        torch.randn_like, torch.randint_like}
SHAPE_ONLY_METHODS = {"new_zeros", "new_ones", "new_full", "new_empty"}
# in-place fills, ``torch.empty(b, 4).zero_()``: what the tensor held is overwritten, its shape is all they read (a
# traced fill value, ``fill_(x.mean())``, is carried as full_like's is)
FILL_METHODS = {"zero_", "fill_", "normal_", "uniform_", "bernoulli_", "random_", "exponential_", "geometric_",
                "log_normal_", "cauchy_"}
SHAPE_ONLY_FUNCTIONS |= {torch.zero_, torch.fill_}
SHAPE_ONLY_METHODS |= FILL_METHODS


def reads_shape_only(node) -> bool:
    """``torch.zeros_like(x)``, ``x.new_zeros(...)``, ``x.zero_()`` and their kind: made from ``x``'s shape, not
    its data."""
    return ((node.op == "call_function" and node.target in SHAPE_ONLY_FUNCTIONS)
            or (node.op == "call_method" and node.target in SHAPE_ONLY_METHODS))

_EXTRA: Dict[Any, str] = {}
_ELEMENTWISE_EXTRA: set = set()  # registered pointwise ops known to treat every element alike

_TORCHVISION_TAUGHT = False


def _teach_torchvision() -> None:
    """Teach the tables torchvision's per-sample residual dropout (``StochasticDepth``, identity in
    eval mode) once torchvision has loaded it. A model that holds it has loaded it, so nothing is
    missed; importing it at our import would load torchvision and ``torch._dynamo`` (seconds) for
    every user of the graphs. A category the user registered for it first is kept."""
    global _TORCHVISION_TAUGHT
    module = None if _TORCHVISION_TAUGHT else sys.modules.get("torchvision.ops.stochastic_depth")
    if module is None:
        return
    _TORCHVISION_TAUGHT = True
    for op in (module.stochastic_depth, module.StochasticDepth):
        if op not in _EXTRA:
            _EXTRA[op] = "pointwise"
            _ELEMENTWISE_EXTRA.add(op)


def register_op(target: Any, category: str) -> None:
    """Teach the tracer an op: ``target`` is a function, a method name or a module class;
    ``category`` one of "pointwise", "broadcast", "shape", "reduce"."""
    if category not in ("pointwise", "broadcast", "shape", "reduce"):
        raise ValueError(f"unknown op category {category!r}: use pointwise, broadcast, shape or reduce (weighted "
                         "layers are the Linear, Conv and ConvTranspose modules, which the tracer knows; for another "
                         "op that mixes channels through weights, pass depths= to the depth diagnostics)")
    _EXTRA[target] = category


def categorize(node, module=None) -> str:
    """The category of an fx node: weighted, attention, recurrent, transformer, normalize, lookup, pointwise,
    broadcast, shape, reduce, rank, scan, or unknown."""
    _teach_torchvision()
    op, target = node.op, node.target
    if op == "call_module":
        for cls, cat in _EXTRA.items():
            if isinstance(cls, type) and isinstance(module, cls):
                return cat
        if isinstance(module, WEIGHTED_MODULES + TRANSPOSED_MODULES + FOLDED_MODULES):
            return "weighted"
        if isinstance(module, nn.MultiheadAttention):
            return "attention"
        if isinstance(module, (nn.RNNBase, nn.RNNCellBase)):
            return "recurrent"
        if isinstance(module, TRANSFORMER_MODULES):
            return "transformer"
        if isinstance(module, NORMALIZE_MODULES):
            return "normalize"
        if isinstance(module, LOOKUP_MODULES):
            return "lookup"
        if isinstance(module, POINTWISE_MODULES):
            return "pointwise"
        if isinstance(module, SHAPE_MODULES):
            return "shape"
        return "unknown"
    if target in _EXTRA:
        return _EXTRA[target]
    if target in _MAX_MIN and (len(node.args) > 1 and isinstance(node.args[1], fx.Node) or "other" in node.kwargs):
        return "broadcast"  # torch.max(a, b), a.min(b): element-wise, as torch.maximum
    if op == "call_function":
        if target in ATTENTION_FUNCTIONS:
            return "attention"
        if target in NORMALIZE_FUNCTIONS:
            return "normalize"
        if target in LOOKUP_FUNCTIONS:
            return "lookup"
        if target in POINTWISE_FUNCTIONS:
            return "pointwise"
        if target in BROADCAST_FUNCTIONS:
            return "broadcast"
        if target in SHAPE_FUNCTIONS:
            return "shape"
        if target in REDUCE_FUNCTIONS:
            return "reduce"
        if target in RANK_FUNCTIONS:
            return "rank"
        if target in SCAN_FUNCTIONS:
            return "scan"
        return "unknown"
    if op == "call_method":
        if target in ALONG_DIM_METHODS:
            return "normalize"
        if target in POINTWISE_METHODS:
            return "pointwise"
        if target in BROADCAST_METHODS:
            return "broadcast"
        if target in SHAPE_METHODS:
            return "shape"
        if target in REDUCE_METHODS:
            return "reduce"
        if target in RANK_METHODS:
            return "rank"
        if target in SCAN_METHODS:
            return "scan"
        return "unknown"
    return "unknown"


def elementwise(node, module=None) -> bool:
    """Is this pointwise node elementwise, i.e. indifferent to which axis holds the channels? Built-in
    activations, dropout, identity and dtype/device moves are; pooling, batch/instance norm, padding,
    resampling, PReLU and ops taught with :func:`register_op` (their axis is unknown) are not."""
    _teach_torchvision()
    if node.op == "call_module":
        if type(module) in _ELEMENTWISE_EXTRA:
            return True
        return (isinstance(module, POINTWISE_MODULES) and not isinstance(module, _ALONG_AXIS_ONE_MODULES)
                and not any(isinstance(module, c) for c in _EXTRA if isinstance(c, type)))
    if node.target in _EXTRA:
        return node.target in _ELEMENTWISE_EXTRA
    if node.op == "call_function":
        return node.target in POINTWISE_FUNCTIONS and node.target not in _ALONG_AXIS_ONE_FUNCTIONS
    return node.op == "call_method" and node.target in POINTWISE_METHODS


def linear_owner(node, root: nn.Module):
    """``(name, None)`` when ``node`` is ``F.linear(x, w, ...)`` whose ``w`` is the ``weight`` of an
    ``nn.Linear`` of ``root`` (a ``get_attr`` node; ``name`` is that module's), else ``(None, why)``."""
    w = node.args[1] if len(node.args) > 1 else node.kwargs.get("weight")
    if getattr(w, "op", None) != "get_attr":
        return None, (f"its weight {getattr(w, 'name', w)!r} is computed in the forward, not a layer's parameter, "
                      "so no layer owns the synapses")
    owner, _, attr = str(w.target).rpartition(".")
    try:
        module = root.get_submodule(owner)
    except AttributeError:
        module = None
    if attr != "weight" or not isinstance(module, linear_types()):
        kind = type(module).__name__ if module is not None else "no module"
        return None, (f"its weight {w.target!r} is not the weight of an nn.Linear (it belongs to {kind}), so no "
                      "weighted layer owns the synapses")
    return owner, None


def describe(node, module=None) -> str:
    """A short human name for an fx node, for warnings (with the type of the module it calls)."""
    t = node.target
    name = getattr(t, "__name__", None) or str(t)
    kind = f", a {type(module).__name__}" if module is not None else ""
    return f"{node.name!r} ({node.op} {name}{kind})"


def fitting_category(in_shapes, out_shape) -> Optional[str]:
    """The :func:`register_op` category whose tracer rule can follow an op taking tensors of
    ``in_shapes`` to one of ``out_shape`` (None for a tuple result): "pointwise" keeps its one operand's
    shape, or its dimensions and channels (axis 1: pooling); "shape" keeps its element count; "reduce"
    drops dimensions or shrinks them to 1; "broadcast" gives the broadcast shape of several operands.
    None: no rule fits (a matmul, a diff along the channels)."""
    ins = [tuple(s) for s in in_shapes]
    if out_shape is None or not ins:
        return None
    out = tuple(out_shape)
    if len(ins) > 1:
        try:
            return "broadcast" if tuple(torch.broadcast_shapes(*ins)) == out else None
        except RuntimeError:
            return None
    x = ins[0]
    if out == x or (len(out) == len(x) >= 2 and out[1] == x[1]):
        return "pointwise"
    if math.prod(out) == math.prod(x):
        return "shape"
    if len(out) == len(x):
        kept = all(o in (i, 1) for o, i in zip(out, x))
    else:
        rest = iter(x)
        kept = all(any(o == i for i in rest) for o in out)  # ``out`` is ``x`` with some dimensions dropped
    return "reduce" if kept and math.prod(out) < math.prod(x) else None


_CATEGORY_WHEN = {
    "pointwise": "if it acts on each channel alone",
    "shape": "if it only moves elements, as a view or a transpose does",
    "reduce": "if it reduces over the dimensions it drops, as a sum or a mean does",
    "broadcast": "if each output element is computed from its operands' elements at the same (broadcast) position",
}


# ops that sum products over axes of their operands (matrix products, einsum): followed where their operands are traced
# tensors alone (graphs.flow_contract); reading a parameter (x @ self.w), or where that rule fails, unknown ops
_CONTRACTIONS = CONTRACTIONS


def _contraction(node) -> str:
    """What the graph makes of a contraction ``node`` (``torch.einsum``, a matrix product), for its warning: the
    dense guess keeps every path of the model, so it may count units live that are dead, never the other way round
    (empty for another op)."""
    if node.target not in _CONTRACTIONS:
        return ""
    eq = node.args[0] if node.target is torch.einsum and node.args and isinstance(node.args[0], str) else None
    what = f"einsum {eq!r}" if eq else "a matrix product"
    return (f". As {what} sums products over axes, the graph joins every unit of its operands to every output "
            "element: units it keeps apart (attention heads, windows) look connected, so reachability and dead units "
            "through it are an over-approximation (a unit may count as live that is not; none counts as dead that "
            "is live). One of traced tensors alone is followed exactly (graphs.flow_contract); a weight it reads is best "
            "held in an nn.Linear called as a module, and attention written as F.scaled_dot_product_attention")


def how_to_register(node, module=None, in_shapes=(), out_shape=None) -> str:
    """How to teach the tracer ``node``'s op, for warnings: the :func:`register_op` call with the
    category that fits its operands' ``in_shapes`` and result's ``out_shape`` (see
    :func:`fitting_category`), or why none does (for an ``F.linear``, how to have its layer followed)."""
    if node.op == "call_function" and node.target is F.linear:
        return ("call the nn.Linear module itself (self.fc(x)), or F.linear on its own weight, to have its units "
                "followed; no register_op category describes a weighted op")
    if module is not None:
        cls = type(module)
        target = f"{cls.__module__}.{cls.__qualname__}"
    elif node.op == "call_method":
        target = repr(node.target)
    else:
        t = node.target
        name = getattr(t, "__qualname__", None) or getattr(t, "__name__", t)
        module = getattr(t, "__module__", None) or "torch"
        if str(name).startswith("_VariableFunctionsClass."):  # a torch.* built-in: reached as torch.<name>
            module, name = "torch", getattr(t, "__name__", str(name).rsplit(".", 1)[-1])
        elif module == "_operator":  # x // 2, -x: the operator module's functions
            module = "operator"
        elif module == "torch.functional":  # torch.einsum, torch.split: reached as torch.<name>
            module = "torch"
        target = f"{module}.{name}"
    category = fitting_category(in_shapes, out_shape)
    if category is None:
        shapes = ", ".join(str(tuple(s)) for s in in_shapes) or "no traced tensor"
        result = str(tuple(out_shape)) if out_shape is not None else "a tuple"
        return (f"no graphs.register_op category fits {target}, which takes {shapes} to {result} (pointwise keeps "
                "the shape or the channels, shape the element count, reduce drops dimensions, broadcast gives the "
                "operands' broadcast shape); write it with ops the tracer knows (see graphs.ops)" + _contraction(node))
    also = ('"shape" if it only permutes the elements, as a channel shuffle does; ' if category == "pointwise"
            and tuple(out_shape) == tuple(in_shapes[0]) else "")
    return f'teach it with graphs.register_op({target}, "{category}") {_CATEGORY_WHEN[category]} ({also}see graphs.ops)'
