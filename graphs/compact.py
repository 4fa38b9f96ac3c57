"""Compaction: turn dead units into a physically smaller dense model.

``compact(model, conn, example_input)`` returns an ``fx.GraphModule`` whose Linear/Conv/ConvTranspose/BatchNorm
layers have fewer channels and whose outputs equal the masked model's (eval mode) to float tolerance.

What may be removed. Every channel of every tensor in the traced graph is an *item*; ops that keep
channels apart (activations, BatchNorm, pooling, spatial slicing, elementwise ``+``/``*`` of equally
shaped tensors, channel concatenation, flattening before a Linear, channel zero-padding, splits) link the
items they pass a channel between. Linked items form a class, removed all together or not at all, so
a channel of a residual sum goes only if it goes from every summand, and a concatenated channel only
with its source. An item can go when each of its readers can do without it:

- a Linear/Conv reader whose weights on that channel are all zero (the unit has no live output), or
- a Linear/Conv reader when the item is *constant*: input-independent and spatially uniform (a unit
  with no live input: its output is its bias, turned by BatchNorm and the activation into a
  per-channel constant ``k``, which is generally **not zero**). The constant is folded into the
  reader: into its bias when the reader has no zero padding (Linear, 1x1 or unpadded convs), else
  into a one-channel convolution of an all-ones image with ``k``-weighted kernels, which reproduces
  the zero-padding border effects exactly for any input size (:class:`FoldedConv`).

A transposed convolution (``nn.ConvTranspose1d/2d/3d``, a U-Net's up-convolution, weight stored ``(in,
out/groups, *kernel)``) is a reader and a writer like a convolution: its dead output channels go, their bias
folded into their readers, and so do the input channels that no live weight reads or that are constants. A
constant input adds its kernel at every input position (the stride's tiling, the cropped borders, the output
padding), uniform only for a 1-wide kernel at stride 1 with no output padding, where it joins the bias; else a
:class:`FoldedConv` adds it as a one-channel transposed convolution of ones, at the output padding of each call
(its ``output_padding``, or what its ``output_size`` argument asks for). Its groups follow the rules below.

Compacting again. A compact copy is compacted like any model: a FoldedConv is the convolution it wraps, cut as
that one is, its kept outputs keeping the constants folded before, to which those of the inputs that go now are
added. An output of it whose every input is pruned adds those constants with their borders: input-independent
but no constant, it stays where something reads it. A module called whole and a part of it called too (a
FoldedConv and its convolution, an attention and its ``out_proj``) keep their sizes.

Constants are found by a probe run in which inputs are NaN: NaN spreads through every op that
depends on data, a unit with no live input (or whose live inputs are exact zeros) emits its bias,
and whatever stays finite and uniform, with the same value on an input twice the example's size, is a
constant (integer inputs such as token ids are data, and so is every float made from them). Uniform and
the same are judged to float32 rounding: an average rounds a constant by a few ulps, differently at each
size (a float16 or bfloat16 model is probed on a float32 copy, whose rounding does not hide how a padded
pool's border moves a mean with the size). Items of inputs, outputs, ops the
compactor does not understand and layers whose weight is tied to another module's are kept; a
depthwise convolution (groups == channels; a transposed one too) keeps or drops input channel ``c`` together with output
channel ``c`` and its filter. Another grouped convolution (ResNeXt's, RegNet's, a grouped transposed one) keeps its groups alike
(:func:`_uneven_groups`): a group goes whole, filters, inputs and outputs, where all its channels could go
(``groups`` drops), and every other group loses as many input channels as the one that can lose the fewest,
and likewise output channels, one of each staying at least; each kept output still reads its own group's kept
inputs, so the smaller convolution computes the rest exactly. A convolution, BatchNorm,
pooling or resampling whose channels could all go (a split part no one reads) keeps one: torch runs none of
them on no channels. The result is checked against the masked model on the example input, a second random input, a
batch of twice its size and, where the masked model runs on them, inputs of other sizes: twice the example's map
(the axes past the channels) and an odd, non-square one, or else twice and one more tokens (axis 1 of an
``[N, T, C]`` input or of token ids), all drawn from a generator of the check's own (the global random generators
are left as they were, and compacting the same model twice checks it on the same inputs); a mismatch raises,
naming the input's shape where it is not the example's, instead of returning a wrong model. A model that takes
its example's size only (a Linear after a flatten) is checked at that size.

Splits. ``torch.chunk``, ``torch.split`` and ``torch.tensor_split`` (functions and methods; ``hsplit``, ``vsplit``,
``dsplit`` and ``split_with_sizes`` too) are concatenation
in reverse: split along the channel axis, part ``k``'s channel ``j`` is the source's channel ``offset_k + j``
(a GLU's halves ``a, b = h.chunk(2, -1)``, linked channel for channel by ``a * sigmoid(b)``, go in pairs), and
the compacted graph splits with each part's kept count, ``torch.split(h, [3, 2], -1)``, even where the
model chunked evenly. Split along another axis (rows, tokens, the batch), every part holds every channel,
linked to the source's own, and the split stays as written. The parts must each be taken by an integer
index (``a, b = ...`` does that) or all concatenated back along the split axis
(``torch.cat(h.chunk(2, -1), -1)``); parts used otherwise (stacked, the tuple sliced) keep their channels,
and so do ``tensor_split``'s overlapping parts (indices out of order). ``torch.unbind`` (``first, second =
h.unbind(1)``) is a split along another axis whose parts lack that axis: each holds every channel, on axis 1 or the
last of a part of two axes or more, and they must be taken by an integer index or stacked back whole along the
unbound axis (``torch.stack(h.unbind(3), 3)``); an unbind along the channels keeps them.

Channel axis. A tensor's channels lie on axis 1, except where a Linear is applied to a sequence
(``[N, T, C]`` or more dimensions): its output's channels lie on the last axis, and so do those of what
is computed from it elementwise (activations, dropout, powers, residual ``+``/``*`` of tensors with the
same layout, a gate with one value per token), of reductions and integer/slice indexing over the other
axes (the mean over tokens, a class token ``x[:, 0]``, ``x[..., 1:, :]``), of views that keep the last axis
(``[N, T, C] <-> [N*T, C]``; a channel count written into the view shrinks with the channels) and of
concatenations and splits. So the hidden units of a transformer's MLP go like those of a CNN. An op that mixes
the last axis of such a tensor (pooling, batch or instance norm, padding, a transpose, a 1-D
per-channel tensor, LayerNorm's statistics, attention) keeps all its channels. Indexing may add axes
with ``None`` where the channels end on axis 1 or the last (a squeeze-excitation gate
``s[:, :, None, None]``, a token mean ``h.mean(1)[:, None]``).

Shape reads. fx traces ``x.shape``, ``x.size(3)``, ``b, c, h, w = x.shape`` and arithmetic on them as nodes, which
the compacted GraphModule recomputes from the tensors it then holds (:mod:`graphs.shape_reads`). A value that holds no
channel count (the batch, the map, ``x.shape[:-1]`` of a sequence: ``F.avg_pool2d(out, out.size()[3])``,
``out.view(out.size(0), -1)``) keeps nothing. A channel count is followed where compact rewrites its use: as the
channel entry of a view, reshape or expand that keeps the channels apart (``x.reshape(b, c, h * w)``,
``s.view(b, c, 1, 1)`` of a gate whose count is read from another tensor, whose channels then go with the gate's),
or in the sizes of a split along the channels (``h.split([2, h.shape[1] - 2], 1)``, rewritten with the kept counts).
A tensor made filled with one value from sizes (``x.new_zeros(x.size())``, ``h.new_ones(b, 1, h.size(2))``,
``torch.zeros(h.shape)``, ``new_full``, ``torch.full``) whose one channel count is a tensor's, on axis 1 or the last,
has that tensor's channels, which go with its own; ``torch.zeros_like(x)`` (``ones_like``, ``full_like``,
``empty_like``; not the random ones, whose draws would change) has x's.
A -1 in the channel entry is their count only where it is so on the probe twice the example's size too
(``h.reshape(b, -1, 16)`` merges channels with the map on a larger one).
Used otherwise (compared in ``torch._assert``, multiplied into a flattened size, an amount of channel padding) it
keeps every channel it counts.

Sizes. A sum over tokens or pixels of a constant unit is that constant times the input's size, so
it is not a constant of the model: such units stay unless no reader uses them.

Functional layers. ``F.linear(x, self.fc.weight, self.fc.bias)`` on an ``nn.Linear``'s own weight and
bias (no bias where the layer has none) is that layer's call, and is compacted as one (unless the layer has
forward hooks, which its call would run, or sits inside a module fx calls whole: an attention's ``out_proj``). A layer whose
parameters are read otherwise (``F.linear(x, self.fc.weight)`` on a layer with a bias, ``self.fc.weight.t()``)
keeps its size, and ``F.linear`` on a weight that is no ``nn.Linear``'s (a bare parameter, a computed
weight) keeps the channels it reads and writes: a warning names each.
"""
from __future__ import annotations

import copy
import inspect
import math
import operator
import warnings
from typing import Dict, List, Optional

import torch
import torch.nn.functional as F
from torch import fx, nn

from adaptive.connectome import _plain_module
from adaptive.counts import whole_number
from adaptive.discovery import copy_model, from_out_in, to_out_in
from adaptive.global_rng import kept_global_rng
from adaptive.warn import warn_user

from . import ops, shape_reads
from .folded import FoldedConv, unfolded
from .locking import serialized

_BN = nn.modules.batchnorm._BatchNorm


def channel_pad(x: torch.Tensor, spatial: tuple, index: torch.Tensor) -> torch.Tensor:
    """Spatial zero padding then a channel gather where ``index == -1`` inserts a zero channel
    (the compacted form of ``F.pad`` over channels, e.g. the CIFAR ResNet's option-A shortcut)."""
    if spatial and any(spatial):
        x = F.pad(x, spatial)
    z = x.new_zeros((x.shape[0], 1) + tuple(x.shape[2:]))
    full = torch.cat([x, z], 1)
    return full.index_select(1, torch.where(index < 0, x.shape[1], index))


torch.fx.wrap("channel_pad")


class _Probe(fx.Interpreter):
    """Runs the graph on NaN inputs; a weighted unit whose live weights touch only exact-zero
    channels emits its bias."""

    def __init__(self, gm, weights=None):
        """``weights``: a copy of ``gm`` (in float32, say) whose parameters the graph runs with instead."""
        module = gm if weights is None else weights
        super().__init__(module, garbage_collect_values=False, graph=gm.graph)
        self.mods = dict(module.named_modules())

    def values(self, x) -> dict:
        """Every node's probe value on an input shaped like ``x`` (a tensor, or a tuple of the inputs)."""
        self.run(*(x if isinstance(x, (tuple, list)) else (x,)))
        return self.env

    def placeholder(self, target, args, kwargs):
        real = super().placeholder(target, args, kwargs)
        # integer inputs (token ids) cannot hold NaN: they pass as they are, see run_node
        return torch.full_like(real, float("nan")) if isinstance(real, torch.Tensor) and real.is_floating_point() else real

    def run_node(self, n):
        out = super().run_node(n)
        if _size_dependent(n) and isinstance(out, torch.Tensor) and out.is_floating_point():
            # a sum of a constant grows with the size of what it sums: not a constant of the model
            return torch.full_like(out, float("nan"))
        if n.op != "placeholder" and isinstance(out, torch.Tensor) and out.is_floating_point():
            ins = [t for a in n.all_input_nodes for t in _tensor_leaves(self.env.get(a))]  # a split's parts too
            if n.all_input_nodes and not any(t.is_floating_point() for t in ins):
                # floats made from integer data (an embedding lookup, one_hot(x).float()) depend on it
                return torch.full_like(out, float("nan"))
        return out

    def call_module(self, target, args, kwargs):
        m = self.mods[target]
        if not isinstance(m, _LAYERS):
            return super().call_module(target, args, kwargs)
        x = args[0] if args else kwargs["input"]  # nn.Linear/Conv take one tensor, ``input``
        rest = {k: v for k, v in kwargs.items() if k != "input"}  # a transposed convolution's output_size
        out = m(torch.nan_to_num(x, nan=1.0), *args[1:], **rest)  # shape only
        folded = _folded_outputs(m)
        m = unfolded(m)
        w = _out_in_weight(m)
        axis = -1 if isinstance(m, nn.Linear) else 1
        xc = x.movedim(axis, 0).reshape(x.shape[axis], -1)
        zero_in = (xc == 0).all(1)  # exact-zero input channels
        groups = int(getattr(m, "groups", 1))
        o, ipg = w.shape[0], w.shape[1]
        nz = (w != 0).reshape(o, ipg, -1).any(-1)  # [O, ipg]
        zc = zero_in.view(groups, ipg).repeat_interleave(o // groups, 0)  # [O, ipg]
        # an output adding folded constants has their border pattern on top of its bias: input-independent but
        # not uniform, so no constant the readers could fold
        const = ~(nz & ~zc).any(1) & ~folded.to(nz.device)
        bias = m.bias.detach() if getattr(m, "bias", None) is not None else w.new_zeros(o)
        val = torch.where(const, bias.to(out.dtype), torch.full_like(bias, float("nan"), dtype=out.dtype))
        shape = [1] * out.dim()
        shape[axis] = o
        return val.view(shape).expand_as(out).clone()


# the layers compaction shrinks; a FoldedConv (of an earlier compaction) as the convolution it wraps
_LAYERS = ops.WEIGHTED_MODULES + ops.TRANSPOSED_MODULES + (FoldedConv,)


def _out_in_weight(m: nn.Module) -> torch.Tensor:
    """``m``'s weight laid out ``(out, in/groups, *kernel)``: a transposed convolution's, stored
    ``(in, out/groups, *kernel)``, swapped within each group (a copy); any other's as it is. A FoldedConv's is
    its convolution's."""
    m = unfolded(m)
    w = m.weight.detach()
    return to_out_in(w, m.groups) if isinstance(m, ops.TRANSPOSED_MODULES) else w


def _folded_outputs(m: nn.Module) -> torch.Tensor:
    """Per output channel of a weighted layer: does it add constants folded in by an earlier compaction (a
    :class:`FoldedConv`'s ``const_weight`` non-zero there)? All False for any other layer."""
    if not isinstance(m, FoldedConv):
        return torch.zeros(_out_in_weight(m).shape[0], dtype=torch.bool)
    transposed = isinstance(m.conv, ops.TRANSPOSED_MODULES)  # its one input channel on axis 0
    k = m.const_weight.transpose(0, 1) if transposed else m.const_weight
    return (k != 0).flatten(1).any(1).cpu()


def _size_dependent(n) -> bool:
    """A sum over some dimensions: of a constant channel it is the constant times a size (tokens,
    pixels), which changes with the input."""
    return (n.op == "call_function" and n.target is torch.sum) or (n.op == "call_method" and n.target == "sum")


def _module_input(n):
    """The input node of an ``nn.Linear``/``nn.Conv`` call, however it was passed (None if not a node)."""
    x = n.args[0] if n.args else n.kwargs.get("input")
    return x if isinstance(x, fx.Node) else None


# How far apart (relative) two probe values of a constant may lie and still be one value: a mean or an average
# pool rounds a constant differently at different sizes and over bins of different sizes (by up to ~10 float32
# ulps for ``mean`` and ``adaptive_avg_pool2d`` at any size, ~0.12 ulp per element for ``avg_pool2d`` over the
# whole map, which sums in order). 64 float32 ulps covers them, and stays far below the size effects it must
# still tell apart (a zero-padded pool's border shifts the mean of a map n wide by ~1/n). The probe computes in
# float32 at least (see _probe): an ulp of a coarser dtype (2**-7 of bfloat16, 2**-10 of float16) would hide
# those size effects on maps only a few dozen or hundred wide.
_SAME_RTOL = 2.0 ** -17


def _coarse(t) -> bool:
    """A float tensor coarser than float32 (float16, bfloat16, float8)."""
    return isinstance(t, torch.Tensor) and t.is_floating_point() and torch.finfo(t.dtype).bits < 32


def _fine(t):
    """``t`` in float32 when it is a coarser float; else as it is."""
    return t.float() if _coarse(t) else t


def _float32_weights(gm: fx.GraphModule) -> Optional[fx.GraphModule]:
    """A copy of ``gm`` with its coarse float parameters and buffers in float32 for the probe to compute
    with, or None when it holds none."""
    if not any(_coarse(t) for t in [*gm.parameters(), *gm.buffers()]):
        return None
    return copy.deepcopy(gm)._apply(_fine)


def _probe(gm: fx.GraphModule, x, weights: Optional[fx.GraphModule]) -> dict:
    """The probe's values of ``gm``'s nodes on an input shaped like ``x``, computed with ``weights`` (gm's
    float32 copy) on float32 inputs where given: the rounding of float16 or bfloat16 would hide how a
    constant changes with the input size. A model that will not run so (it casts to its own dtype itself)
    is probed in its own dtypes, where a size effect below their rounding goes unseen."""
    if weights is not None:
        try:
            return _Probe(gm, weights).values(type(x)(map(_fine, x)) if isinstance(x, (tuple, list)) else _fine(x))
        except Exception:  # noqa: BLE001 - any failure of the float32 run: the model's own dtypes decide
            pass
    return _Probe(gm).values(x)


def _channel_consts(t: torch.Tensor, axis: int = 1) -> torch.Tensor:
    """Per channel (along ``axis``): its value when finite and uniform (to float rounding), else NaN."""
    c = t.shape[axis]
    if not t.is_floating_point() or t.numel() == 0:  # integer data (token ids) is input, never a constant; nor
        return torch.full((c,), float("nan"))      # is a channel with no values (a part of the batch one sample lacks)
    flat = t.movedim(axis, 0).reshape(c, -1)
    first = flat[:, 0]
    ok = torch.isfinite(first) & torch.isclose(flat, first[:, None], rtol=_SAME_RTOL, atol=0).all(1)
    return torch.where(ok, first, torch.full_like(first, float("nan")))


class _Items:
    """Channel items of every tensor node, links between them and pins."""

    def __init__(self):
        self.offset: Dict[fx.Node, int] = {}
        self.count: Dict[fx.Node, int] = {}
        self.axis: Dict[fx.Node, int] = {}  # the channel axis: 1, or the last of a sequence Linear's output
        self.n = 0
        self.links_a: List[torch.Tensor] = []
        self.links_b: List[torch.Tensor] = []
        self.pinned: List[torch.Tensor] = []
        # a split whose parts can be followed -> (its tensor, the split axis, the parts' sizes along it when
        # that is the channel axis, else None: every part holds every channel)
        self.splits: Dict[fx.Node, tuple] = {}
        self.shapes: Dict[fx.Node, object] = {}  # shape reads and numbers computed from them: shape_reads.value
        # the shape values a node uses in a way compact rewrites or follows (a view's channel entry): the channels
        # they count may shrink; any other use of a channel count keeps the channels it counts
        self.counted: Dict[fx.Node, set] = {}
        self.wider: Optional[dict] = None  # the probe's values on an input twice the example's size, if it ran

    def add(self, node, c, axis=1):
        self.offset[node], self.count[node], self.axis[node] = self.n, c, axis
        self.n += c

    def last(self, node, env) -> bool:
        """Are ``node``'s channels on the last axis of a tensor of three or more dimensions?"""
        return node in self.axis and env[node].dim() >= 3 and self.axis[node] == env[node].dim() - 1

    def ids(self, node) -> torch.Tensor:
        return torch.arange(self.offset[node], self.offset[node] + self.count[node])

    def link(self, a, b):
        self.links_a.append(a)
        self.links_b.append(b)

    def pin(self, node):
        if node in self.offset:
            self.pinned.append(self.ids(node))

    def classes(self) -> torch.Tensor:
        label = torch.arange(self.n)
        if not self.links_a:
            return label
        a, b = torch.cat(self.links_a), torch.cat(self.links_b)
        while True:
            m = torch.minimum(label[a], label[b])
            new = label.clone()
            new.scatter_reduce_(0, a, m, "amin")
            new.scatter_reduce_(0, b, m, "amin")
            new = new[new]
            if torch.equal(new, label):
                return label
            label = new


def _tensor_args(node) -> List[fx.Node]:
    found = []
    fx.node.map_arg((node.args, node.kwargs), lambda n: found.append(n) or n)
    return found


def _flatten_like(node, module, x, out) -> bool:
    """Does ``node`` flatten [N, C, *S] into [N, C*prod(S)] without naming C?"""
    if x.dim() < 3 or out.dim() != 2 or out.shape[1] != math.prod(x.shape[1:]):
        return False
    t = node.target
    if isinstance(module, nn.Flatten):
        return module.start_dim == 1 and module.end_dim in (-1, x.dim() - 1)
    if t is torch.flatten or t == "flatten":
        start = node.args[1] if len(node.args) > 1 else node.kwargs.get("start_dim", 0)
        end = node.args[2] if len(node.args) > 2 else node.kwargs.get("end_dim", -1)
        return start == 1 and end in (-1, x.dim() - 1)
    if t in ("view", "reshape") or t is torch.reshape:
        rest = node.args[1:] if t in ("view", "reshape") else node.args[1]
        if len(rest) == 1 and isinstance(rest[0], (tuple, list)):
            rest = rest[0]
        return isinstance(rest, (tuple, list)) and len(rest) == 2 and _whole(rest[1]) and rest[1] == -1
    return False


def _keeps_channels(node, module, x, out) -> bool:
    """Does ``node`` reshape [N, C, *S] into [N, C, *S'] (``x.reshape(b, c, h * w)``, ``x.flatten(2)``,
    ``s.view(b, c, 1, 1)``)? Each sample's channel ``c`` keeps its values in channel ``c``."""
    if x.dim() < 2 or out.dim() < 2 or out.shape[:2] != x.shape[:2]:
        return False
    if isinstance(module, nn.Flatten):
        return module.start_dim % x.dim() >= 2
    if node.target is torch.flatten or node.target == "flatten":
        start = node.args[1] if len(node.args) > 1 else node.kwargs.get("start_dim", 0)
        return _whole(start) and start % x.dim() >= 2
    return _reshape(node)


def _expand_ellipsis(idx, ndim):
    """``x[idx]``'s index as a tuple with a lone ``...`` replaced by the full slices it stands for."""
    if not isinstance(idx, tuple):
        idx = (idx,)
    dots = [k for k, i in enumerate(idx) if i is Ellipsis]
    if len(dots) != 1:
        return idx
    k = dots[0]
    fill = ndim - sum(1 for i in idx if i is not Ellipsis and i is not None)
    return idx[:k] + (slice(None),) * max(fill, 0) + idx[k + 1:]


def _getitem_channel_axis(idx, ndim, xa):
    """Where ``x[idx]`` puts ``x``'s channel axis ``xa``, when it keeps the whole batch and every
    channel (ints and slices over the other axes, ``None`` and ``...`` anywhere after the batch);
    None otherwise (advanced indexing, a channel slice, a batch index)."""
    idx = _expand_ellipsis(idx, ndim)
    if not idx or idx[0] != slice(None):
        return None
    out_axis, axis = 0, 0
    for i in idx:
        if i is None:
            out_axis += 1
            continue
        if isinstance(i, bool) or not isinstance(i, (int, slice)) or axis >= ndim:
            return None
        if axis == xa:
            return out_axis if i == slice(None) else None
        if isinstance(i, slice):
            out_axis += 1
        axis += 1
    return out_axis + (xa - axis) if xa >= axis else None  # the channel axis lies past the index


@serialized  # traces, and runs models that another thread's trace would take
@kept_global_rng()
def compact(model: nn.Module, conn=None, example_input: Optional[torch.Tensor] = None,
            atol: float = 1e-4, rtol: float = 1e-4, verify: bool = True, align: int = 1,
            batch_axis: Optional[int] = None) -> fx.GraphModule:
    """A smaller dense copy of ``model`` (masked by ``conn`` when given) without its removable dead
    units. Eval-mode semantics (BatchNorm running statistics). The returned GraphModule carries
    ``compaction``: a dict with params before/after, units removed per layer and the verified
    maximum output difference. ``align`` > 1 keeps a few removable units so that every Linear/Conv
    keeps a multiple of ``align`` output units (CPU and GPU kernels run faster on such widths).
    ``example_input`` (batch first; None: the first input inferred from the first layer that the
    model runs on, as :func:`graphs.build` guesses) drives the trace and, with ``verify``, the check
    that the compact copy's outputs match the masked model's within
    ``torch.allclose(atol=atol, rtol=rtol)``. ``batch_axis=1`` says the example's inputs (of two axes or more)
    hold their batch on axis 1 (sequence-first ``[T, B, F]``): the probe takes one sample along it, not one time
    step, and the check's batch of twice the size doubles it; None or 0: batch first. Raises if fx cannot trace the model or the check
    fails (``verify=False`` skips it). Leaves the global random generators as it found them (a model
    that draws in its forward draws from them, then they are put back: :mod:`adaptive.global_rng`)."""
    if not isinstance(model, nn.Module):
        hint = (": pass the network first, graphs.compact(conn.model, conn, ...)" if hasattr(model, "masks")
                else "")
        raise TypeError(f"compact needs the nn.Module to shrink as its first argument, got {type(model).__name__}{hint}")
    if whole_number(align, floats=True) is None or align < 1:  # 2.0 is 2; 2.5 is refused, never cut to 2
        raise ValueError(f"align must be a positive integer, got {align!r}")
    align = whole_number(align, floats=True)
    from .batch_axis import checked_batch_axis
    from .example_inputs import runnable_example_input
    from .forward_inputs import _refuse_miscounted_inputs, _refuse_named_inputs, _unsupplied_defaults
    from .trace import _where, example_input_failed
    from .tracer import _wrap_root, symbolic_trace

    model = _plain_module(model)  # a torch.compile or DDP wrapper: the module it runs, under the names conn uses
    _refuse_named_inputs(model, example_input)  # a dict the forward takes as one argument (a batch) is fine
    if isinstance(example_input, (tuple, list)) and not _wrap_root(model):  # as build binds them
        _refuse_miscounted_inputs(model, tuple(example_input))
    batch = checked_batch_axis(batch_axis) or 0
    if example_input is None:
        if batch_axis is not None:
            raise ValueError(f"batch_axis={batch_axis} needs an example_input laid out so: graphs guesses inputs "
                             "itself (batch first, or as a recurrent first layer's batch_first says)")
        example_input = runnable_example_input(model)
    src = copy_model(model, "graphs.compact").eval()
    if conn is not None:
        with torch.no_grad():
            params = dict(src.named_parameters(remove_duplicate=False))
            for name in conn.layers:
                w = params[name]
                # set, not multiplied: a NaN or inf held at a pruned position (0 * inf is NaN) would
                # reach the outputs of the units that keep the rest of that row
                w.masked_fill_(~conn.masks[name].to(w.device), 0.0)
    ref = copy.deepcopy(src)  # the GraphModule shares submodules with src; keep an untouched reference
    nargs = len(example_input) if isinstance(example_input, (tuple, list)) else 1
    # forward's defaulted parameters the example does not supply are traced at their defaults, as build
    # does: first the flags (mask=None, return_features=False, mode='a'), which an `if` reads; a number
    # (temperature=1.0) stays an input of the copy unless tracing needs it fixed too
    every = _unsupplied_defaults(src, nargs, example_input if isinstance(example_input, (tuple, list)) else ()) or {}
    flags = {k: v for k, v in every.items() if v is None or isinstance(v, (bool, str))}
    for fixed in ([flags, every] if every != flags else [every]):
        try:
            gm = symbolic_trace(src, concrete_args=fixed or None)
            break
        except Exception as e:  # noqa: BLE001 - fx raises many types; the last one is reported
            failed = e
    else:
        raise RuntimeError(f"compact needs an fx-traceable model; tracing {type(model).__name__} failed"
                           f"{_where(failed)}: {failed}") from failed
    for n in gm.graph.nodes:  # fx names such a parameter mask_1: the copy takes mask=None, as the model does
        if n.op == "placeholder" and n.target.endswith("_1") and n.target[:-2] in fixed:
            n.target = n.target[:-2]
        if isinstance(n.type, str):  # an annotation left a string by `from __future__ import annotations`:
            n.type = None            # torch 2.11's pickler took it for an object, and the copy failed to save
    gm.eval()
    _functional_layers(gm, src)
    x = example_input.narrow(_axis(example_input, batch), 0, 1) if isinstance(example_input, torch.Tensor) else example_input
    weights = _float32_weights(gm)
    with torch.no_grad():
        try:
            probe_env = _probe(gm, x, weights)
            # a part of the batch one sample lacks (x.split([1, n - 1])) would hold no values to judge
            few = any(isinstance(v, torch.Tensor) and v.numel() == 0 for v in probe_env.values())
        except Exception as e:  # noqa: BLE001 - one sample is too few (the model splits its batch): the whole example
            if x is example_input:
                raise example_input_failed(model, x, e) from None
            few = True
        if few and x is not example_input:
            x = example_input
            try:
                probe_env = _probe(gm, x, weights)
            except Exception as e:  # noqa: BLE001 - the example itself does not run: said as build says it
                raise example_input_failed(model, x, e) from None
        wider_env = _probe_wider(gm, x, weights)
    del weights
    plan = _plan(gm, probe_env, int(align), wider_env)
    before = sum(t.numel() for t in gm.parameters())
    _rewrite(gm, plan, probe_env)
    after = sum(t.numel() for t in gm.parameters())
    report = {"params_before": before, "params_after": after, "removed": plan["removed_per_layer"],
              "units_removed": sum(plan["removed_per_layer"].values())}
    if verify:
        report["max_abs_diff"] = _verify(ref, gm, example_input, atol, rtol, batch)
    gm.compaction = report
    return gm


def _functional_layers(gm: fx.GraphModule, src: nn.Module) -> None:
    """Turn ``F.linear(x, self.fc.weight, self.fc.bias)`` on an ``nn.Linear``'s own weight and bias into the
    call ``self.fc(x)``, which compaction shrinks; warn about each layer whose parameters are still read
    directly (it keeps its size) and each ``F.linear`` on a weight no ``nn.Linear`` owns (its channels stay).
    A layer with forward hooks (which its call would run and F.linear does not), or inside a module fx
    calls whole (``attn.out_proj`` of a MultiheadAttention, which reads it at its full size), is left read."""
    whole = {str(n.target) for n in gm.graph.nodes if n.op == "call_module"}
    kept: Dict[str, str] = {}  # a layer read by an F.linear left as it is -> the reason, when not its bias
    for n in list(gm.graph.nodes):
        if n.op != "call_function" or n.target is not F.linear:
            continue
        owner, why = ops.linear_owner(n, src)
        if owner is None:
            warn_user(f"graphs.compact: node {ops.describe(n)} is F.linear where {why}: the channels it reads and "
                      "writes keep their size; hold the weight in an nn.Linear and call it to have them compacted")
            continue
        module = src.get_submodule(owner)
        bias = n.args[2] if len(n.args) > 2 else n.kwargs.get("bias")
        own_bias = (bias is None if module.bias is None
                    else getattr(bias, "op", None) == "get_attr" and bias.target == f"{owner}.bias")
        x = n.args[0] if n.args else n.kwargs.get("input")
        inside = next((t for t in whole if owner.startswith(t + ".")), None)
        if module._forward_hooks or module._forward_pre_hooks:
            kept[owner] = "it has forward hooks, which its call would run and F.linear does not"
        elif inside is not None:
            kept[owner] = f"{inside!r}, called whole, reads it too"
        elif type(module).forward is not nn.Linear.forward:
            kept[owner] = f"{type(module).__name__}.forward is not nn.Linear's"
        if not owner or not own_bias or owner in kept or not isinstance(x, fx.Node):
            continue  # left as it is; warned below with the other direct reads of the layer's parameters
        parent, _, child = owner.rpartition(".")
        setattr(gm.get_submodule(parent) if parent else gm, child, module)  # fx kept a bare holder of the weight
        with gm.graph.inserting_before(n):
            call = gm.graph.call_module(owner, (x,))
        n.replace_all_uses_with(call)
        reads = [a for a in n.all_input_nodes if a.op == "get_attr"]
        gm.graph.erase_node(n)
        for a in reads:
            if not a.users:
                gm.graph.erase_node(a)
    read: Dict[str, List[str]] = {}
    for n in gm.graph.nodes:
        owner = str(n.target).rpartition(".")[0] if n.op == "get_attr" else None
        if owner and isinstance(_submodule(src, owner), _LAYERS):  # "": the model is the layer
            read.setdefault(owner, []).extend(u.name for u in n.users)
    for owner, users in read.items():
        if owner in kept:
            warn_user(f"graphs.compact: layer {owner!r} keeps its size: node(s) {sorted(set(users))} read its "
                      f"parameters directly (F.linear(x, self.{owner}.weight, ...)) and {kept[owner]}, so the call is "
                      "not taken for the layer's own")
            continue
        warn_user(f"graphs.compact: layer {owner!r} keeps its size: node(s) {sorted(set(users))} read its parameters "
                  f"directly (F.linear with another bias, a transpose, ...), which a smaller layer would not fit; call "
                  f"the module itself (self.{owner}(x)) to have it compacted")
    gm.graph.lint()
    gm.recompile()


def _submodule(model: nn.Module, name: str) -> Optional[nn.Module]:
    try:
        return model.get_submodule(name)
    except AttributeError:
        return None


def _stateful(module) -> bool:
    """Has parameters or buffers (a shared nn.ReLU is fine to call twice; a shared BatchNorm is not)."""
    return module is not None and (any(True for _ in module.parameters()) or any(True for _ in module.buffers()))


def _probe_wider(gm: fx.GraphModule, x, weights=None):
    """The probe's values on an input twice as large in every spatial dimension, or None when the
    model takes no such input. A channel is constant only if it is uniform on both: on a small map
    (a 1x1 one, say) a channel whose value depends on the position (a padded pool of a constant)
    looks uniform."""
    xs = tuple(x) if isinstance(x, (tuple, list)) else (x,)
    if not any(isinstance(t, torch.Tensor) and t.is_floating_point() and t.dim() >= 3 for t in xs):
        return None
    wide = tuple(t.new_zeros(*t.shape[:2], *(2 * s for s in t.shape[2:]))
                 if isinstance(t, torch.Tensor) and t.is_floating_point() and t.dim() >= 3 else t for t in xs)
    try:
        return _probe(gm, wide, weights)
    except Exception:  # the model fixes its input size: the example's is the only one it takes
        return None


def _plan(gm: fx.GraphModule, env, align: int = 1, wider_env=None) -> dict:
    mods = dict(gm.named_modules())
    items = _Items()
    items.wider = wider_env
    calls: Dict[str, int] = {}
    for n in gm.graph.nodes:
        if n.op == "call_module":
            calls[n.target] = calls.get(n.target, 0) + 1
    owners: Dict[int, set] = {}
    for mn, m in gm.named_modules(remove_duplicate=False):
        for p in m.parameters(recurse=False):
            owners.setdefault(id(p), set()).add(mn)
    tied = {mn for names in owners.values() if len(names) > 1 for mn in names}  # weight tying
    # a parameter also read directly (F.linear(x, self.fc.weight)) would be read at its old size
    tied |= {n.target.rpartition(".")[0] for n in gm.graph.nodes if n.op == "get_attr"}
    # a module called whole and a part of it called too (a FoldedConv and its convolution, an attention and its
    # out_proj): neither can shrink without the other; nor can a FoldedConv whose convolution's weight is tied
    tied |= _nested(calls)
    tied |= {t.rpartition(".")[0] for t in tied if isinstance(mods.get(t.rpartition(".")[0]), FoldedConv)}
    weighted_inputs = {}  # node -> weighted consumer nodes
    grouped = []  # (input, node, groups) of each grouped, non-depthwise convolution whose input channels are items
    for n in gm.graph.nodes:
        out = env.get(n)
        args = [a for a in _tensor_args(n) if a in items.offset]
        module = mods.get(n.target) if n.op == "call_module" else None
        cat = ops.categorize(n, module) if n.op in ("call_module", "call_function", "call_method") else n.op
        if isinstance(out, torch.Tensor) and out.dim() >= 2:  # nodes come in order: args have their items
            axis = _out_axis(n, cat, module, args, env, items)
            items.add(n, out.shape[axis], axis)
        if n.op in ("placeholder", "get_attr", "output"):
            items.pin(n)
            for a in args:
                items.pin(a)
            continue
        shape = shape_reads.value(n, env, items.axis, items.shapes)
        if shape is not None:  # reading a shape leaves the tensor's channels free: where the value goes decides
            items.shapes[n] = shape
            continue
        if _stateful(module) and (calls[n.target] > 1 or n.target in tied):  # one set of parameters cannot be sliced two ways
            cat = "pinned"
        if cat == "weighted":
            x = _module_input(n)
            layer = unfolded(module)  # a FoldedConv: its convolution's channels
            aligned = x in items.offset and (items.last(x, env) if isinstance(layer, nn.Linear) and out.dim() > 2
                                             else items.axis[x] == 1)  # its input channels are x's items
            if aligned and _depthwise(layer):  # channel c in <-> c out: one class, the filter goes with it
                items.link(items.ids(x), items.ids(n))
            elif aligned:
                weighted_inputs.setdefault(x, []).append(n)
                if int(getattr(layer, "groups", 1)) > 1:  # its groups must stay alike: see _uneven_groups
                    grouped.append((x, n, layer.groups))
            else:  # its input's items lie on an axis it does not read (a sequence Linear's output into a
                # Conv1d, a LayerNorm's output into a sequence Linear): they stay; so do a grouped
                # convolution's output units, whose groups are tied to its input channels
                if int(getattr(layer, "groups", 1)) > 1:
                    items.pin(n)
                for a in args:
                    items.pin(a)
            continue
        if n not in items.offset:
            if not _split(n, env, items):
                for a in args:
                    items.pin(a)
            continue
        if _link(n, cat, module, args, env, items):
            continue
        items.pin(n)
        for a in args:
            items.pin(a)
    for n in gm.graph.nodes:  # a channel count used where compact cannot follow it: the channels it counts stay
        if n not in items.shapes:
            for a in n.all_input_nodes:
                if a in items.shapes and a not in items.counted.get(n, ()):
                    for x in shape_reads.counts(items.shapes[a]):
                        items.pin(x)

    label = items.classes()
    bad = torch.zeros(items.n, dtype=torch.bool)
    for p_ in items.pinned:
        bad[p_] = True
    consts = torch.full((items.n,), float("nan"), dtype=torch.float64)
    for n, off in items.offset.items():
        c = _channel_consts(env[n], items.axis[n]).double()
        if wider_env is not None:  # constant at both input sizes, with the same value (to float rounding)
            w = wider_env.get(n)
            ok = isinstance(w, torch.Tensor) and w.dim() == env[n].dim() and w.shape[items.axis[n]] == c.numel()
            same = ok and torch.isclose(_channel_consts(w, items.axis[n]).double(), c, rtol=_SAME_RTOL, atol=0)
            c = torch.where(same, c, float("nan")) if ok else c * float("nan")
        consts[off: off + items.count[n]] = c
    # items read by weighted layers: removable only if constant or unused by every reader
    for n, readers in weighted_inputs.items():
        ids = items.ids(n)
        for r in readers:
            bad[ids] |= _inputs_read(mods[r.target]).cpu() & torch.isnan(consts[ids])  # flags: on the CPU
    # a class goes only if none of its items is bad
    class_bad = torch.zeros(items.n, dtype=torch.long).index_add_(0, label, bad.long()) > 0
    removed = ~class_bad[label]
    # torch runs no convolution, BatchNorm, pooling or resampling on no channels (a conv reading none returns none):
    # where a split part or a whole layer would lose every channel such an op reads or writes, the first stays
    for n in gm.graph.nodes:
        m = mods.get(n.target) if n.op == "call_module" else None
        if isinstance(unfolded(m), nn.modules.conv._ConvNd):
            ends = (n, _module_input(n))
        elif isinstance(m, _BN) or (n.op in ("call_module", "call_function", "call_method")
                                    and ops.categorize(n, m) == "pointwise" and not ops.elementwise(n, m)):
            ends = (n,)  # linked to its input
        else:
            continue
        for t in ends:
            if t in items.offset and items.count[t] and bool(removed[items.ids(t)].all()):
                class_bad[label[items.offset[t]]] = True
                removed = ~class_bad[label]
    outs = [items.ids(n) for n in gm.graph.nodes if n.op == "call_module"
            and isinstance(mods[n.target], _LAYERS) and n in items.offset] if align > 1 else []
    changed = True
    while changed:  # keeping a class can unsettle another layer's groups or alignment: until both hold everywhere
        changed = False
        for x, n, g in grouped:
            stay = _uneven_groups(removed[items.ids(x)], removed[items.ids(n)], g)
            if bool(stay[0].any()) or bool(stay[1].any()):
                class_bad[label[torch.cat([items.ids(x)[stay[0]], items.ids(n)[stay[1]]])]] = True
                removed = ~class_bad[label]
                changed = True
        for ids in outs:  # keep whole classes until every weighted layer keeps a multiple of align units
            r = removed[ids]
            short = int((-(~r).sum()) % align)
            if short and bool(r.any()):
                class_bad[label[ids[r][:short]]] = True
                removed = ~class_bad[label]
                changed = True
    per_layer = {}
    for n in gm.graph.nodes:
        if n.op == "call_module" and isinstance(mods[n.target], _LAYERS) and n in items.offset:
            per_layer[n.target] = int(removed[items.ids(n)].sum())
    return {"items": items, "removed": removed, "consts": consts, "weighted_inputs": weighted_inputs,
            "removed_per_layer": per_layer}


def _nested(called) -> set:
    """The modules of ``called`` (qualified names) inside another of them, and those they are inside."""
    found = set()
    for t in called:
        parts = t.split(".")
        outer = {".".join(parts[:k]) for k in range(1, len(parts))} & set(called)
        if outer:
            found |= outer | {t}
    return found


def _inputs_read(m: nn.Module) -> torch.Tensor:
    """Per input channel of a Linear, Conv or ConvTranspose (grouped too; a FoldedConv's): does any live weight
    read it?"""
    w = _out_in_weight(m)
    g = int(getattr(unfolded(m), "groups", 1))
    return (w != 0).reshape(g, w.shape[0] // g, w.shape[1], -1).any(-1).any(1).reshape(-1)


def _uneven_groups(r_in: torch.Tensor, r_out: torch.Tensor, g: int):
    """The removable input and output channels (``r_in``, ``r_out``: flags in channel order) a convolution of ``g``
    groups must keep so that its groups stay alike, as ``(in, out)`` flags. The rule: a group goes whole (its
    filters, inputs and outputs) when all its channels could go; every other group loses the same number of
    inputs, the fewest any of them could lose, and likewise of outputs, and keeps one of each at least. The first
    removable channels of a group go, the later ones stay. A smaller grouped convolution then computes the rest
    exactly: each kept output still reads the kept inputs of its own group."""
    r_in, r_out = r_in.view(g, -1), r_out.view(g, -1)
    kept = ~(r_in.all(1) & r_out.all(1))
    if not bool(kept.any()):  # no group left: the first stays (torch runs no convolution on no channels)
        kept[0] = True

    def excess(r):
        t = min(int(r[kept].sum(1).min()), r.shape[1] - 1)
        return (r & kept[:, None] & (r.cumsum(1) > t)).reshape(-1)

    return excess(r_in), excess(r_out)


def _out_axis(n, cat, module, args, env, items) -> int:
    """The channel axis of ``n``'s output: the last one for a sequence Linear and for what keeps its
    layout (see the module docstring; :func:`_link` decides whether the channels really pass), else 1."""
    out = env[n]
    if out.dim() <= 2:
        return 1
    last = out.dim() - 1
    if cat == "weighted":
        return last if isinstance(module, nn.Linear) else 1
    t = n.target
    if _of_split(n, items):  # a part of a split, or its parts concatenated whole: the split tensor's layout
        return _part_axis(n, items)
    if _filled_sizes(n) is not None:  # x.new_zeros(y.size()): where it holds y's channel count
        return _filled_channel_axis(n, env, items) or 1
    if t in _FILLED_LIKE and args and env[args[0]].shape == out.shape:  # torch.zeros_like(x): x's layout
        return items.axis[args[0]]
    if t is operator.getitem and args and isinstance(env[args[0]], torch.Tensor) and args[0] in items.axis:
        oa = _getitem_channel_axis(n.args[1], env[args[0]].dim(), items.axis[args[0]])
        return oa if oa == last else 1  # channels on axis 1 or the last, as everywhere
    if cat == "shape" and _reshape(n) and args and _channels_last_like(args[0], env, items) \
            and env[args[0]].shape[-1] == out.shape[-1]:
        return last  # [N, T, C] <-> [N*T, C] and the like: the last axis is untouched
    if cat == "broadcast":  # the layout of an argument of the output's shape (others broadcast into it)
        args = [a for a in args if env[a].dim() == out.dim() and env[a].shape[-1] == out.shape[-1]] or args
    if not args or not items.last(args[0], env):
        return 1
    x = env[args[0]]
    if cat == "pointwise" and ops.elementwise(n, module) and x.shape == out.shape:
        return last
    if cat in ("broadcast", "reduce") and x.shape[-1] == out.shape[-1]:
        return last
    if cat == "shape" and (t in ops.CONCAT_FUNCTIONS or t == "contiguous"):
        return last
    return 1


def _reshape(n) -> bool:
    return (n.op == "call_method" and n.target in ("view", "reshape")) or n.target is torch.reshape


def _reshape_sizes(n):
    """``(sizes, where)`` of a view/reshape: the target sizes and how to put new ones back
    (``where(sizes)`` gives the node's new args), or None when they are not written out plainly."""
    if n.op == "call_method":
        rest = list(n.args[1:])
        if len(rest) == 1 and isinstance(rest[0], (tuple, list)):
            return list(rest[0]), lambda sz: (n.args[0], tuple(sz))
        return rest, lambda sz: (n.args[0], *sz)
    shape = n.args[1] if len(n.args) > 1 else n.kwargs.get("shape")
    if isinstance(shape, fx.Node) and not n.kwargs:  # torch.reshape(x, y.shape): one size value
        return [shape], lambda sz: (n.args[0], *sz)
    if not isinstance(shape, (tuple, list)) or n.kwargs:
        return None
    return list(shape), lambda sz: (n.args[0], tuple(sz))


def _reshape_entries(n, shapes) -> Optional[list]:
    """A view/reshape's sizes, one per output axis, as ``(size, index)``: ``size`` an int or a
    :class:`shape_reads.Dim`, ``index`` its place among the sizes written in (None for one taken from a size
    value, ``x.view(y.shape)``, which a rewrite cannot change); None when they are not all so."""
    got = _reshape_sizes(n)
    return None if got is None else _size_entries(got[0], shapes)


def _size_entries(sizes, shapes) -> Optional[list]:
    """Sizes as written (ints, shape-value nodes), one ``(size, index)`` per axis, as :func:`_reshape_entries`
    gives them."""
    entries = []
    for i, size in enumerate(sizes):
        value = shapes.get(size) if isinstance(size, fx.Node) else size
        if isinstance(value, tuple):
            entries.extend((v, None) for v in value)
        elif _whole(value) or isinstance(value, shape_reads.Dim):
            entries.append((value, i if _whole(size) else None))
        else:
            return None
    return entries if all(_whole(v) or isinstance(v, shape_reads.Dim) for v, _ in entries) else None


def _channel_entry(n, pos, x, env, items) -> bool:
    """Can the view/reshape ``n`` of ``x``, which keeps x's channels on its output axis ``pos``, follow them as
    they shrink? Its size there must be -1, a number written in (rewritten to the kept count), or a channel count
    read at run time: ``x``'s own, or another tensor's, whose channels are then linked to x's (kept or removed
    channel for channel, they keep the same count). The shape values it reads are then counted, unless another
    of its sizes holds a channel count."""
    entries = _reshape_entries(n, items.shapes)
    out = env[n]
    if entries is None or len(entries) != out.dim():
        return False
    size, index = entries[pos]
    if isinstance(size, shape_reads.Dim):
        z = size.count_of
        if z is None or env[z].shape[items.axis[z]] != out.shape[pos]:
            return False
        if z is not x:
            items.link(items.ids(z), items.ids(x))
    elif size != -1:
        if index is None or size != out.shape[pos]:
            return False
        n.meta["graphs_reshape_channels"] = index
    elif items.wider is not None:  # -1 holds the count only if the other sizes hold the rest at any input size:
        wx, wo = items.wider.get(x), items.wider.get(n)  # h.reshape(b, -1, 16) merges channels on a wider map
        if not (isinstance(wx, torch.Tensor) and isinstance(wo, torch.Tensor) and wo.dim() == out.dim()
                and wo.shape[pos] == wx.shape[items.axis[x]]):
            return False
    if not any(shape_reads.counts(e) for k, (e, _) in enumerate(entries) if k != pos):
        items.counted[n] = {a for a in n.all_input_nodes if a in items.shapes}
    return True


def _channels_last_like(a, env, items) -> bool:
    """Are ``a``'s channels on its last axis (a 2-D tensor's axis 1 included)?"""
    return a in items.axis and (items.axis[a] == env[a].dim() - 1)


_SPLITS = {torch.split, torch.chunk, torch.tensor_split, torch.split_with_sizes, torch.hsplit, torch.vsplit, torch.dsplit,
           torch.unbind}
_SPLIT_METHODS = {"split", "chunk", "tensor_split", "split_with_sizes", "hsplit", "vsplit", "dsplit", "unbind"}


def _unbinds(n) -> bool:
    """Is ``n`` an unbind (``torch.unbind(x, dim)``, ``x.unbind(dim)``), whose parts lack the axis it splits?"""
    return n.target is torch.unbind or (n.op == "call_method" and n.target == "unbind")


def _split_dim(n, ndim: int):
    """The axis a split node splits: hsplit/vsplit/dsplit name it (hsplit: the columns, axis 0 of a vector), the
    others take it as their third argument or ``dim``."""
    fixed = {"vsplit": 0, "hsplit": 1 if ndim > 1 else 0, "dsplit": 2}
    name = n.target if isinstance(n.target, str) else n.target.__name__
    if name in fixed:
        return fixed[name]
    if _unbinds(n):  # unbind(x, dim=0): no sizes before the axis
        return n.args[1] if len(n.args) > 1 else n.kwargs.get("dim", 0)
    return n.args[2] if len(n.args) > 2 else n.kwargs.get("dim", 0)


def _whole(i) -> bool:
    """Is ``i`` an int written into the graph (not a bool, not a node)?"""
    return isinstance(i, int) and not isinstance(i, bool)


def _concat_dim(n):
    return n.args[1] if len(n.args) > 1 else n.kwargs.get("dim", 0)


def _split(n, env, items) -> bool:
    """Record in ``items.splits`` a chunk / split / tensor_split (or hsplit, vsplit, dsplit, split_with_sizes)
    whose parts compaction can follow: every use of the parts' tuple takes one part by its index, or
    concatenates them all back along the split axis. Along the channel axis the parts must tile it (their
    sizes add up to its length); the parts' sizes are then rewritten to the channels each keeps. An unbind is
    followed along another axis than the channels', its parts (each without that axis) taken by their index or
    stacked back along it, where their channels end on axis 1 or the last of a part of two axes or more. False
    (nothing recorded) otherwise."""
    if n.target not in (_SPLITS if n.op == "call_function" else _SPLIT_METHODS if n.op == "call_method" else ()):
        return False
    x = n.args[0] if n.args else n.kwargs.get("input", n.kwargs.get("tensor"))
    parts = env.get(n)
    if x not in items.offset or not isinstance(parts, (tuple, list)):
        return False
    v, ax = env[x], items.axis[x]
    dim = _split_dim(n, v.dim())
    if not _whole(dim):
        return False
    d = dim % v.dim()
    unbind = _unbinds(n)
    if not parts or not all(isinstance(p, torch.Tensor) and p.dim() == v.dim() - unbind for p in parts):
        return False
    if unbind:  # a part's channels must lie where every op reads them: on axis 1, or the last of a sequence
        pa = ax - (d < ax)
        if d == ax or parts[0].dim() < 2 or pa not in (1, parts[0].dim() - 1):
            return False
    for u in n.users:
        index = u.target is operator.getitem and len(u.args) == 2 and u.args[0] is n and _whole(u.args[1])
        whole = (u.target in (_STACKS if unbind else ops.CONCAT_FUNCTIONS) and u.args and u.args[0] is n
                 and _whole(_concat_dim(u)) and _concat_dim(u) % v.dim() == d)
        if not (index or whole):
            return False
    if d != ax:  # rows, tokens or samples apart: every part has every channel
        if any(p.shape[ax - (unbind and d < ax)] != v.shape[ax] for p in parts):
            return False
        items.splits[n] = (x, d, None)
        return True
    sizes = [p.shape[d] for p in parts]
    if sum(sizes) != v.shape[d]:  # tensor_split with indices out of order: overlapping parts
        return False
    given = [a for a in n.all_input_nodes if a is not x]  # sizes computed from shapes: h.split([2, h.shape[1] - 2], 1)
    if any(a not in items.shapes or shape_reads.varies(items.shapes[a]) for a in given):
        return False  # they change with the input's size: the sizes compact writes in would hold at one size only
    items.splits[n] = (x, d, sizes)
    items.counted[n] = set(given)  # replaced by the kept counts where a tensor whose count they read loses channels
    return True


_STACKS = {torch.stack}  # what puts an unbind's parts back whole


def _of_split(n, items) -> bool:
    """Does ``n`` take a part of a split _split follows, or concatenate (stack) its parts whole?"""
    return ((n.target is operator.getitem or n.target in ops.CONCAT_FUNCTIONS or n.target in _STACKS)
            and bool(n.args) and isinstance(n.args[0], fx.Node) and n.args[0] in items.splits)


def _part_axis(n, items) -> int:
    """The channel axis of ``n``, a part of a split _split follows or its parts put back whole: the split tensor's,
    one less for a part of an unbind along an axis before the channels."""
    x, d, _ = items.splits[n.args[0]]
    ax = items.axis[x]
    return ax - (d < ax) if _unbinds(n.args[0]) and n.target is operator.getitem else ax


_FILLED_METHODS = {"new_zeros": 1, "new_ones": 1, "new_empty": 1, "new_full": 1}  # -> where the sizes start
_FILLED_FUNCTIONS = {torch.zeros: 0, torch.ones: 0, torch.empty: 0, torch.full: 0}
_FILLED_LIKE = {torch.zeros_like, torch.ones_like, torch.full_like, torch.empty_like}  # not the random ones


def _filled_sizes(n) -> Optional[list]:
    """The sizes of a tensor made filled with one value (``x.new_zeros(x.size())``, ``x.new_ones(b, c, h, w)``,
    ``torch.zeros(x.shape)``, ``torch.full(size, v)``) as written, one per argument; None for another node."""
    if n.op == "call_method" and n.target in _FILLED_METHODS:
        start = _FILLED_METHODS[n.target]
    elif n.op == "call_function" and n.target in _FILLED_FUNCTIONS:
        start = _FILLED_FUNCTIONS[n.target]
    else:
        return None
    if "size" in n.kwargs:
        sizes = [n.kwargs["size"]]
    else:
        sizes = list(n.args[start:start + 1] if n.target in ("new_full", torch.full) else n.args[start:])
    return list(sizes[0]) if len(sizes) == 1 and isinstance(sizes[0], (tuple, list)) else sizes


def _filled_channel_axis(n, env, items) -> Optional[int]:
    """Where a tensor made filled from sizes holds channels: the one size that is a tensor's channel count read at
    run time (that tensor's channels then go with its), on axis 1 or the last; None when none does so."""
    sizes = _filled_sizes(n)
    entries = None if sizes is None else _size_entries(sizes, items.shapes)
    if entries is None or len(entries) != env[n].dim():
        return None
    at = [k for k, (e, _) in enumerate(entries) if shape_reads.counts(e)]
    if len(at) != 1 or at[0] not in (1, env[n].dim() - 1):
        return None
    z = entries[at[0]][0].count_of
    return at[0] if z is not None and z in items.axis and env[z].shape[items.axis[z]] == env[n].shape[at[0]] else None


def _link_filled(n, env, items) -> bool:
    """Link the channels of a tensor made filled with one value to those it is sized after: ``torch.zeros_like(x)``'s
    to x's, ``x.new_zeros(y.size())``'s to the tensor whose channel count it reads (see
    :func:`_filled_channel_axis`), whose count it then follows. False for another node."""
    if n.op == "call_function" and n.target in _FILLED_LIKE:
        x = n.args[0] if n.args else n.kwargs.get("input")
        ok = (x in items.offset and env[x].shape == env[n].shape and items.axis[x] == items.axis[n]
              and "size" not in n.kwargs)
        if ok:
            items.link(items.ids(x), items.ids(n))
        return ok
    sizes = _filled_sizes(n)
    if sizes is None or _filled_channel_axis(n, env, items) != items.axis[n]:
        return False
    z = _size_entries(sizes, items.shapes)[items.axis[n]][0].count_of
    items.link(items.ids(z), items.ids(n))
    read = []  # the sizes' shape values only: a channel count as the fill value (torch.full(s, c)) stays counted
    fx.node.map_arg(sizes, lambda a: read.append(a) or a)
    items.counted[n] = {a for a in read if a in items.shapes}
    return True


def _link(n, cat, module, args, env, items) -> bool:
    """Link the channel items ``n`` passes through; False when ``n`` must pin its neighbours."""
    out = env[n]
    ax = items.axis[n]
    if n.target in _FILLED_LIKE or _filled_sizes(n) is not None:
        return _link_filled(n, env, items)

    def same_layout(a) -> bool:  # channel for channel: same rank, same channel axis, same channel count
        v = env[a]
        return v.dim() == out.dim() and items.axis[a] == ax and v.shape[ax] == out.shape[ax]

    others = [a for a in _tensor_args(n) if a not in items.offset]
    if any(isinstance(env.get(a), torch.Tensor) and env[a].numel() > 1 for a in others):
        return False  # a 1-D tensor (clamp(x, max=cap), x * gamma) may run along the channel axis
    if cat == "pointwise":
        if not args or not same_layout(args[0]):
            return False
        if items.last(n, env) and not ops.elementwise(n, module):
            return False  # pooling, batch norm, padding or resampling act along axis 1, not the last
        if module is not None and not isinstance(module, _BN) and any(True for _ in module.parameters()):
            return False  # per-channel parameters we do not know how to slice
        if module is None and n.target is F.batch_norm:
            return False
        items.link(items.ids(args[0]), items.ids(n))
        return all(env[a].dim() < 2 or a is args[0] for a in args)
    if cat == "broadcast":
        ones = [a for a in args if env[a].dim() == out.dim() and items.axis[a] == ax and env[a].shape[ax] == 1
                and out.shape[ax] > 1]  # one value for every channel (a per-token or per-pixel gate)
        if any(not same_layout(a) for a in args if a not in ones):
            return False
        for a in args:
            if a in ones:
                items.pin(a)
            else:
                items.link(items.ids(a), items.ids(n))
        return True
    if cat == "reduce":
        x = env[args[0]]
        xa = items.axis[args[0]]
        if out.dim() < 2 or out.shape[ax] != x.shape[xa]:
            return False
        dims = n.args[1] if len(n.args) > 1 else n.kwargs.get("dim")
        dims = [dims] if isinstance(dims, int) else list(dims or [])
        if not dims or any(d % x.dim() in (0, xa) for d in dims):
            return False
        if xa != 1 and not items.last(n, env) and out.dim() >= 3:
            return False
        items.link(items.ids(args[0]), items.ids(n))
        return True
    if cat != "shape":
        return False
    t = n.target
    if _of_split(n, items):
        x, _, sizes = items.splits[n.args[0]]
        part = _unbinds(n.args[0]) and t is operator.getitem  # one axis fewer
        if items.axis[n] != _part_axis(n, items) or env[n].dim() != env[x].dim() - part:
            return False
        if t is operator.getitem and sizes is not None:  # part k's channel j is x's channel offset_k + j
            k = n.args[1] % len(sizes)
            items.link(items.offset[x] + sum(sizes[:k]) + torch.arange(sizes[k]), items.ids(n))
        else:  # every channel of x, in order: a part along another axis, or the parts concatenated back
            items.link(items.ids(x), items.ids(n))
        return True
    if t in ops.CONCAT_FUNCTIONS:
        dim = n.args[1] if len(n.args) > 1 else n.kwargs.get("dim", 0)
        if not isinstance(n.args[0], (tuple, list)):
            return False  # a tuple of parts _split could not follow
        parts = list(n.args[0])
        if not all(p in items.offset and env[p].dim() == out.dim() and items.axis[p] == ax for p in parts):
            return False
        if dim % out.dim() == ax:
            off = items.offset[n]
            for p in parts:
                c = items.count[p]
                items.link(items.ids(p), torch.arange(off, off + c))
                off += c
            return True
        if dim % out.dim() == 0:
            return False
        for p in parts:
            items.link(items.ids(p), items.ids(n))
        return True
    x = env[args[0]] if args else None
    if x is None:
        return False
    if t == "contiguous" or (_reshape(n) and _channels_last_like(args[0], env, items) and ax == out.dim() - 1):
        if env[args[0]].shape[items.axis[args[0]]] != out.shape[ax] or (
                t != "contiguous" and not _channel_entry(n, ax, args[0], env, items)):
            return False
        items.link(items.ids(args[0]), items.ids(n))
        return True
    if t in ("expand", "expand_as") and all(same_layout(a) for a in args) and out.dim() == x.dim() and (
            t == "expand_as" or _channel_entry(n, ax, args[0], env, items)):  # a gate spread over the map
        for a in args:  # expand_as(h): h's count is the output's, so h's channels go with them too
            items.link(items.ids(a), items.ids(n))
        return True
    if t is operator.getitem and isinstance(x, torch.Tensor):
        xa = items.axis[args[0]]
        ok = _getitem_channel_axis(n.args[1], x.dim(), xa) == ax and out.shape[ax] == x.shape[xa]
        if ok:
            items.link(items.ids(args[0]), items.ids(n))
        return ok
    if items.axis[args[0]] != 1:
        return False  # flattening or padding a channels-last tensor reaches its channels
    if _flatten_like(n, module, x, out):
        hw = out.shape[1] // x.shape[1]
        items.link(items.ids(args[0]).repeat_interleave(hw), items.ids(n))
        return True
    if _keeps_channels(n, module, x, out) and (not _reshape(n) or _channel_entry(n, 1, args[0], env, items)):
        items.link(items.ids(args[0]), items.ids(n))
        return True
    if t is F.pad:
        pad = n.args[1] if len(n.args) > 1 else n.kwargs.get("pad")
        mode = n.kwargs.get("mode", n.args[2] if len(n.args) > 2 else "constant")
        value = n.kwargs.get("value", n.args[3] if len(n.args) > 3 else None)
        if mode != "constant" or (value not in (None, 0, 0.0)) or not isinstance(pad, (tuple, list)):
            return False
        pad = list(pad)
        nsp = 2 * (x.dim() - 2)
        if len(pad) > nsp + 2 or not all(_whole(p) for p in pad[nsp:]):
            return False  # channels padded by a computed amount: compact writes the amounts it keeps in
        left = pad[nsp] if len(pad) > nsp else 0
        items.link(items.ids(args[0]), items.offset[n] + left + torch.arange(x.shape[1]))
        n.meta["graphs_channel_pad"] = (tuple(pad[:nsp]), left, x.shape[1])
        return True
    return False


@torch.no_grad()
def _rewrite(gm: fx.GraphModule, plan: dict, env) -> None:
    items, removed, consts = plan["items"], plan["removed"], plan["consts"]
    mods = dict(gm.named_modules())

    def keep(node):
        return ~removed[items.ids(node)]

    def replace(name, new):
        parent, _, child = name.rpartition(".")
        setattr(gm.get_submodule(parent) if parent else gm, child, new)

    for n in list(gm.graph.nodes):
        if n.op == "call_module":
            m = mods[n.target]
            if isinstance(m, _LAYERS) and n in items.offset:
                inp = _module_input(n)
                if inp not in items.offset:
                    continue
                ko = keep(n)
                if _depthwise(unfolded(m)):
                    if not bool(ko.all()):
                        replace(n.target, _refolded(m, _shrink_depthwise(unfolded(m), ko), ko))
                    continue
                if n in plan["weighted_inputs"].get(inp, ()):  # the input's items are this layer's input channels
                    ki, k_in = keep(inp), consts[items.ids(inp)]
                else:  # they lie on another axis (a sequence Linear reading a tensor of unknown layout): all stay
                    ki = torch.ones(_out_in_weight(m).shape[1] * int(getattr(unfolded(m), "groups", 1)),
                                    dtype=torch.bool)
                    k_in = torch.full((ki.numel(),), float("nan"), dtype=torch.float64)
                if bool(ko.all()) and bool(ki.all()):
                    continue
                replace(n.target, _shrink_weighted(m, ko, ki, k_in))
            elif isinstance(m, _BN) and n in items.offset:
                k = keep(n)
                if not bool(k.all()):
                    replace(n.target, _shrink_bn(m, k))
        elif "graphs_reshape_channels" in n.meta:  # the channel count written into a view
            k, at = int(keep(n).sum()), n.meta["graphs_reshape_channels"]
            sizes, where = _reshape_sizes(n)
            if k != sizes[at]:
                n.args = where(sizes[:at] + [k] + sizes[at + 1:])
        elif n.op == "call_function" and "graphs_channel_pad" in n.meta:
            spatial, left, cin = n.meta["graphs_channel_pad"]
            ko, ki = keep(n), keep(n.args[0])
            pos_in = torch.full((cin,), -1, dtype=torch.long)
            pos_in[ki] = torch.arange(int(ki.sum()))
            src = torch.arange(items.count[n]) - left
            valid = (src >= 0) & (src < cin)
            index = torch.where(valid, pos_in[src.clamp(0, cin - 1)], torch.full_like(src, -1))[ko]
            if bool(ko.all()) and bool(ki.all()):
                continue
            buf = f"_graphs_pad_index_{n.name}"
            gm.register_buffer(buf, index.to(env[n].device))  # on the model's device, where channel_pad runs
            with gm.graph.inserting_before(n):
                idx_node = gm.graph.get_attr(buf)
            n.target = channel_pad
            n.args = (n.args[0], tuple(spatial), idx_node)
            n.kwargs = {}
    for n, (x, d, sizes) in items.splits.items():  # a split along the channel axis takes each part's kept count
        k = keep(x)
        # sizes read from tensors that keep every channel stay as written: right at any size, where the count read
        # on axis 1 of an input or a transposed tensor may be its token count or length
        counted = shape_reads.counts(tuple(items.shapes[a] for a in items.counted.get(n, ())))
        if sizes is None or (bool(k.all()) and all(bool(keep(z).all()) for z in counted)):
            continue
        kept = [int(part.sum()) for part in k.split(sizes)]
        with gm.graph.inserting_before(n):
            new = gm.graph.call_function(torch.split, (x, kept, d))
        n.replace_all_uses_with(new)
        gm.graph.erase_node(n)
    gm.graph.lint()
    gm.recompile()


def _shrink_weighted(m: nn.Module, ko: torch.Tensor, ki: torch.Tensor, k_in: torch.Tensor) -> nn.Module:
    """``m`` with the output units ``ko`` and the input channels ``ki`` (flags) only, the constants ``k_in`` of the
    inputs that go (NaN: none) folded into its bias or a :class:`FoldedConv`. A grouped convolution's flags must
    leave its groups alike (:func:`_uneven_groups`): its groups with no kept channel go. A transposed convolution is
    cut in its ``(out, in/groups, *kernel)`` layout and stored back in its own. A FoldedConv (of an earlier
    compaction) is cut as its convolution, its kept outputs keeping the constants folded in before, to which those
    of the inputs that go now are added."""
    before = m
    m = unfolded(m)
    transposed = isinstance(m, ops.TRANSPOSED_MODULES)
    w = _out_in_weight(m)
    g = int(getattr(m, "groups", 1))
    bias = m.bias.detach().clone() if m.bias is not None else w.new_zeros(w.shape[0])
    k = torch.nan_to_num(k_in.to(w.dtype), nan=0.0) * ~ki  # the flags' device (the CPU): decided there
    # outputs that stay read them: a group that goes whole takes its constants with it
    folds = bool(((k != 0).view(g, -1).any(1) & ko.view(g, -1).any(1)).any())
    k = k.to(w.device)  # and computed with on the weight's (a CUDA model's)
    wg = w.view(g, w.shape[0] // g, *w.shape[1:])  # [groups, outputs per group, inputs per group, *kernel]
    fold, into_bias = None, False
    if folds:  # output o reads the constants of its own group's inputs
        contrib = (wg * k.view(g, 1, -1, *([1] * (w.dim() - 2)))).sum(2).reshape(w.shape[0], 1, *w.shape[2:])
        pad = getattr(m, "padding", 0)
        if transposed:  # a constant input adds its kernel at every input position: uniform only for 1x1, stride 1
            uniform = all(n == 1 for n in m.kernel_size) and all(s == 1 for s in m.stride) and not any(m.output_padding)
        else:
            uniform = isinstance(m, nn.Linear) or m.padding_mode != "zeros" or (
                not isinstance(pad, str) and all(p == 0 for p in pad))
        into_bias = uniform
        if uniform:
            bias = bias + contrib.flatten(1).sum(1)
        else:  # a transposed convolution's one input channel is axis 0 of its weight
            fold = (contrib[ko].transpose(0, 1) if transposed else contrib[ko]).contiguous()
    if g == 1:
        w2, g2 = w[ko][:, ki].contiguous(), 1
    else:  # the groups that stay, each with as many kept inputs and outputs as the others
        live = ko.view(g, -1).any(1)
        g2 = int(live.sum())
        o_idx = ko.view(g, -1)[live].nonzero()[:, 1].view(g2, -1)
        i_idx = ki.view(g, -1)[live].nonzero()[:, 1].view(g2, -1)
        at = torch.arange(g2)[:, None, None]
        w2 = wg[live][at, o_idx[:, :, None], i_idx[:, None, :]].flatten(0, 1).contiguous()
    has_bias = m.bias is not None or into_bias
    if isinstance(m, nn.Linear):
        new = _uninitialised(nn.Linear, w, w2.shape[1], w2.shape[0], bias=has_bias)
    else:
        new = _uninitialised(type(m), w, w2.shape[1] * g2, w2.shape[0], m.kernel_size, bias=has_bias,
                             **_conv_options(m, g2))
    new.weight.copy_(from_out_in(w2, g2) if transposed else w2)
    if has_bias:
        new.bias.copy_(bias[ko])
    new.train(m.training)
    return _refolded(before, new, ko, fold)


def _refolded(m: nn.Module, new: nn.Module, ko: torch.Tensor, fold: Optional[torch.Tensor] = None) -> nn.Module:
    """``new``, the shrunk convolution of ``m`` keeping the outputs ``ko`` (flags), with the constants folded
    into it: those ``m`` folded before, if a :class:`FoldedConv`, on the outputs kept, plus ``fold`` (a
    ``const_weight`` of the kept outputs) where given; a FoldedConv where there are any, else ``new`` itself."""
    if isinstance(m, FoldedConv):
        k = m.const_weight
        kept = k[:, ko.to(k.device)] if isinstance(m.conv, ops.TRANSPOSED_MODULES) else k[ko.to(k.device)]
        fold = kept if fold is None else fold + kept
    return FoldedConv(new, fold.contiguous()) if fold is not None else new


def _uninitialised(cls, like: torch.Tensor, *args, **kwargs) -> nn.Module:
    """``cls(*args, **kwargs)`` on ``like``'s device and dtype with its parameters left uninitialised, for the
    caller to fill: no time spent drawing weights that are overwritten, and none of torch's warnings that
    initialising a layer left with no inputs or outputs (``nn.Linear(0, k)``) is a no-op."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Initializing zero-element tensors is a no-op")
        if "device" in inspect.signature(cls).parameters:
            return nn.utils.skip_init(cls, *args, device=like.device, dtype=like.dtype, **kwargs)
        return cls(*args, **kwargs).to(like.device, like.dtype)


def _depthwise(m) -> bool:
    """A convolution with one filter per channel (groups == in == out)."""
    return isinstance(m, nn.modules.conv._ConvNd) and m.groups > 1 and m.groups == m.in_channels == m.out_channels


def _conv_options(m: nn.Module, groups: int) -> dict:
    """The keyword arguments that build a convolution like ``m`` (a transposed one too) with ``groups`` groups."""
    options = dict(stride=m.stride, padding=m.padding, dilation=m.dilation, groups=groups, padding_mode=m.padding_mode)
    if isinstance(m, ops.TRANSPOSED_MODULES):
        options["output_padding"] = m.output_padding
    return options


def _shrink_depthwise(m: nn.Module, k: torch.Tensor) -> nn.Module:
    """``m``, a depthwise convolution (a transposed one too: its weight ``(c, 1, *kernel)`` either way), with the
    channels ``k`` (flags) only."""
    c = int(k.sum())
    new = _uninitialised(type(m), m.weight, c, c, m.kernel_size, bias=m.bias is not None, **_conv_options(m, c))
    new.weight.data.copy_(m.weight.detach()[k])
    if m.bias is not None:
        new.bias.data.copy_(m.bias.detach()[k])
    new.train(m.training)
    return new


def _shrink_bn(m: _BN, k: torch.Tensor) -> _BN:
    new = copy.deepcopy(m)
    new.num_features = int(k.sum())
    for name in ("weight", "bias"):
        p = getattr(m, name)
        if p is not None:
            setattr(new, name, nn.Parameter(p.detach()[k].clone(), requires_grad=p.requires_grad))
    for name in ("running_mean", "running_var"):
        b = getattr(m, name)
        if b is not None:
            setattr(new, name, b[k].clone())
    return new


def _tensor_leaves(out) -> list:
    """The tensors of a model output: a tensor, or (nested) dicts, lists and tuples of them."""
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, dict):
        out = list(out.values())
    if isinstance(out, (list, tuple)):
        return [t for o in out for t in _tensor_leaves(o)]
    return []


class CompactionMismatchError(RuntimeError):
    """The compact model's outputs differ from the masked model's beyond the check's tolerances."""


def _axis(t: torch.Tensor, batch: int) -> int:
    """The batch axis of input ``t`` given ``batch`` (compact's ``batch_axis``): axis 0 of a 1-D input (one value
    per sample), else ``batch``."""
    return batch if t.dim() >= 2 else 0


def _resized(x, axes: str, grow, g: torch.Generator, batch: int = 0):
    """``x`` (a tensor or a tuple / list of them) with random contents of another size, and where it says so
    (" on an input of shape ..."); None when no tensor changes. ``axes`` "map" grows the axes past the channels
    (2 on) of float tensors of rank 3 or more (images, volumes, signals), as the wider probe does; "tokens" grows
    axis 1 of float ``[N, T, C]`` and integer ``[N, T, ...]`` tensors (a sequence's length; ids are drawn from the
    example's), axis 0 of ``[T, N, C]`` and ``[T, N, ...]`` ones where ``batch`` is 1. ``grow(sizes)``: the new
    sizes. Drawn from ``g`` on the CPU, then moved to each tensor's device."""
    steps = 1 - batch  # the axis of a sequence's positions

    def one(t):
        if not isinstance(t, torch.Tensor):
            return t
        if axes == "map" and t.is_floating_point() and t.dim() >= 3:
            return torch.randn(*t.shape[:2], *grow(t.shape[2:]), generator=g, dtype=torch.float64).to(t.device, t.dtype)
        if axes == "tokens" and (t.dim() == 3 if t.is_floating_point() else t.dim() >= 2 and t.shape[steps] > 0):
            shape = list(t.shape)
            shape[steps] = grow(t.shape[steps:steps + 1])[0]
            if t.is_floating_point():
                return torch.randn(shape, generator=g, dtype=torch.float64).to(t.device, t.dtype)
            return t.index_select(steps, torch.randint(t.shape[steps], (shape[steps],), generator=g).to(t.device))
        return t

    xs = tuple(x) if isinstance(x, (tuple, list)) else (x,)
    out = tuple(one(t) for t in xs)
    changed = [(a.shape, b.shape) for a, b in zip(xs, out) if isinstance(a, torch.Tensor) and a.shape != b.shape]
    if not changed:
        return None
    was, now = changed[0]
    return (type(x)(out) if isinstance(x, (tuple, list)) else out[0],
            f" on an input of shape {tuple(now)} (the example's is {tuple(was)})")


def _other_sizes(ref, x, g: torch.Generator, batch: int = 0) -> list:
    """Inputs of other sizes than the example's that the masked model runs on, as ``(input, its outputs or None,
    where)``: twice the example's size on the axes past the channels (the wider probe's) and an odd, non-square
    one (one more, two more, ...), or else twice and one more tokens. None (an empty list) for a model that fixes
    its input's size (a Linear after a flatten, positions embedded up to the example's length): compact's check
    is then at the example's size only. ``batch``: the inputs' batch axis (:func:`_resized`)."""
    from .forward_inputs import _call_with_inputs

    for axes in ("map", "tokens"):
        wide = _resized(x, axes, lambda s: [2 * n for n in s], g, batch)
        if wide is None:
            continue
        args = tuple(wide[0]) if isinstance(wide[0], (tuple, list)) else (wide[0],)
        try:
            ra = _call_with_inputs(ref, args)
        except Exception:  # noqa: BLE001 - the model takes no input of that size
            continue
        odd = _resized(x, axes, lambda s: [n + 1 + i for i, n in enumerate(s)], g, batch)
        return [(wide[0], ra, wide[1]), (odd[0], None, odd[1])]
    return []


@torch.no_grad()
def _verify(ref: nn.Module, gm: nn.Module, x, atol, rtol, batch: int = 0) -> float:
    """Compare ``gm`` with the masked ``ref`` on the example, a second random input, a batch of twice its
    size (along axis ``batch`` of the inputs of two axes or more) and, where ``ref`` runs on them, inputs of other sizes (:func:`_other_sizes`): a view or a split
    sized for the example's map or length may be wrong on another. The largest difference; raises
    :class:`CompactionMismatchError` on a mismatch, naming the input's shape where it is not the example's."""
    from .forward_inputs import _call_with_inputs

    # the inputs are drawn from a generator of the check's own, on the CPU: the same inputs at every
    # call and on every device, and nothing drawn from the global generators
    g = torch.Generator().manual_seed(0)

    def other(t):  # a second input: random floats, or the ids (tokens) shuffled
        if not isinstance(t, torch.Tensor):
            return t
        if t.is_floating_point():
            return torch.randn(t.shape, generator=g, dtype=torch.float64).to(t.device, t.dtype)
        return t.flatten()[torch.randperm(t.numel(), generator=g).to(t.device)].view_as(t)

    x2 = type(x)(other(t) for t in x) if isinstance(x, (tuple, list)) else other(x)
    xs = [(x, None, False, ""), (x2, None, False, "")]
    ts = [t for t in (x2 if isinstance(x2, (tuple, list)) else (x2,)) if isinstance(t, torch.Tensor)]
    sizes = [t.shape[_axis(t, batch)] if t.dim() >= 1 else None for t in ts]
    if ts and None not in sizes and len(set(sizes)) == 1:  # and a batch of another size
        def double(t):
            return torch.cat([t, other(t)], _axis(t, batch)) if isinstance(t, torch.Tensor) else t
        xs.append((type(x2)(double(t) for t in x2) if isinstance(x2, (tuple, list)) else double(x2), None, True, ""))
    xs += [(xi, ra, True, where) for xi, ra, where in _other_sizes(ref, x, g, batch)]
    worst = 0.0
    for xi, ra, optional, where in xs:
        args = tuple(xi) if isinstance(xi, (tuple, list)) else (xi,)  # several inputs: one argument each
        if ra is None:
            try:  # the model takes a keyword-only input by name; gm, as fx wrote it, in its place
                ra = _call_with_inputs(ref, args)  # a tensor, or a dict / tuple of them
            except Exception:  # noqa: BLE001 - the model fixes its batch size (or this odd size): nothing to compare
                if not optional:
                    raise
                continue
        try:
            rb = _call_with_inputs(gm, args)  # its keyword-only inputs by name, as the model's
        except Exception as e:  # noqa: BLE001 - the masked model runs on this input: so must the compact one
            if not where:
                raise
            raise CompactionMismatchError(
                f"compaction broke the model{where}, where the masked model runs: {type(e).__name__}: {e}; if it "
                "persists, please report this model. Pass verify=False to get the model anyway.") from e
        pairs = [(a, b) for a, b in zip(_tensor_leaves(ra), _tensor_leaves(rb))]
        if any(a.shape != b.shape for a, b in pairs):
            raise CompactionMismatchError(
                f"compaction changed the outputs' shapes{where}: {[tuple(a.shape) for a, _ in pairs]} became "
                f"{[tuple(b.shape) for _, b in pairs]}; if it persists, please report this model. Pass verify=False "
                "to get the model anyway.")
        diff = max(float((a - b).abs().max()) for a, b in pairs) if pairs else 0.0
        worst = max(worst, diff)
        if not all(torch.allclose(a, b, atol=atol, rtol=rtol) for a, b in pairs):
            raise CompactionMismatchError(_mismatch(pairs, diff, atol, rtol, where))
    return worst


def _mismatch(pairs, diff, atol, rtol, where: str = "") -> str:
    """Why the check failed: the difference next to the outputs' scale and the tolerances, with a
    hint to check in float64 when the difference is the size of rounding at that scale."""
    scale = max(float(a.abs().max()) for a, _ in pairs)
    low = [a.dtype for a, _ in pairs if a.is_floating_point() and a.dtype != torch.float64]
    rounding = bool(low) and diff <= 1e-3 * scale  # a relative difference a bug rarely stays below
    hint = (f"; relative to outputs this large the difference looks like {str(low[0])[6:]} rounding: compact a float64 "
            "copy (model.double(), example_input.double()) to check, or pass larger atol/rtol" if rounding else "")
    return (f"compaction changed the outputs{where} (max abs diff {diff:.3g} > atol {atol} + rtol {rtol} x |output|, "
            f"with outputs up to {scale:.3g} in magnitude){hint}; if it persists, please report this model. Pass "
            "verify=False to get the model anyway.")
