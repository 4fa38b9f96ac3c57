"""The probe of :func:`graphs.compact`: the graph run on NaN inputs, where a unit with no live input emits its bias
and whatever stays finite and uniform (the same on an input twice the example's size) is a constant its readers can
fold (see :mod:`graphs.compact`)."""
from __future__ import annotations

import copy
import math
import operator
from typing import Optional

import torch
from torch import fx, nn

from .compact_check import _named_leaves
from .compact_layers import _LAYERS, _folded_outputs, _folds_into_bias, _out_in_weight
from .folded import unfolded

class _Probe(fx.Interpreter):
    """Runs the graph on NaN inputs; a weighted unit whose live weights touch only exact-zero channels emits its
    bias, and so does one whose live weights touch only constant channels where they fold into its bias (a
    Linear, a convolution with no zero padding), that bias plus what its weights make of them."""

    def __init__(self, gm, weights=None):
        """``weights``: a copy of ``gm`` (in float32, say) whose parameters the graph runs with instead."""
        module = gm if weights is None else weights
        super().__init__(module, garbage_collect_values=False, graph=gm.graph)
        self.mods = dict(module.named_modules())
        self.data = set()  # nodes whose integer or boolean tensors depend on the data (see run_node)

    def values(self, x) -> dict:
        """Every node's probe value on an input shaped like ``x`` (a tensor, or a tuple of the inputs)."""
        self.run(*(x if isinstance(x, (tuple, list)) else (x,)))
        return self.env

    def placeholder(self, target, args, kwargs):
        real = super().placeholder(target, args, kwargs)
        # integer inputs (token ids) cannot hold NaN: they pass as they are, see run_node
        return torch.full_like(real, float("nan")) if isinstance(real, torch.Tensor) and real.is_floating_point() else real

    def run_node(self, n):
        unknown = _nan_read(n, self.env)
        out = super().run_node(n)
        if unknown is not None:
            out = _nan_kept(out, unknown)
        if _from_data(n, out, self.env, self.data):
            # an integer or boolean tensor computed from the data (h > 0, token ids): NaN cannot show through it,
            # so a float made with it (torch.where(h > 0, h, 0), a ReLU written out, reads 0 where NaN > 0 is
            # False) depends on the data whatever it holds
            if not any(t.is_floating_point() for t in _tensor_leaves(out)):
                self.data.add(n)
            elif n.op != "placeholder":
                return _all_nan(out)
        if _size_dependent(n) and isinstance(out, torch.Tensor) and out.is_floating_point():
            # a sum of a constant grows with the size of what it sums: not a constant of the model
            return torch.full_like(out, float("nan"))
        if n.op != "placeholder" and isinstance(out, torch.Tensor) and out.is_floating_point():
            ins = [t for a in n.all_input_nodes for t in _tensor_leaves(self.env.get(a))]  # a split's parts too
            if n.all_input_nodes and not any(t.is_floating_point() for t in ins):
                # floats made from integer data (an embedding lookup, one_hot(x).float()) depend on it
                return torch.full_like(out, float("nan"))
            if _product(n):
                return _times_zero(out, [self.env.get(a) for a in n.args[:2] if isinstance(a, fx.Node)])
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
        # the input channels whose values the outputs reading them can count on: exact zeros, and, where a constant
        # adds the same to every output position (a Linear, an unpadded convolution), constants
        k = _channel_consts(x, axis).to(out.device, out.dtype)
        known = (k == 0) | (torch.isfinite(k) & _folds_into_bias(m))
        groups = int(getattr(m, "groups", 1))
        o, ipg = w.shape[0], w.shape[1]
        nz = (w != 0).reshape(o, ipg, math.prod(w.shape[2:])).any(-1)  # [O, ipg]; a Linear of 0 units too
        kc = known.view(groups, ipg).repeat_interleave(o // groups, 0)  # [O, ipg]
        # an output adding folded constants has their border pattern on top of its bias: input-independent but
        # not uniform, so no constant the readers could fold
        const = ~(nz & ~kc).any(1) & ~folded.to(nz.device)
        bias = m.bias.detach() if getattr(m, "bias", None) is not None else w.new_zeros(o)
        # a unit reading constants only emits its bias and what its weights (summed over the kernel) make of them,
        # as its readers' folding does: a constant folded into it in an earlier compaction was so
        reads = torch.where(nz & kc, k.view(groups, ipg).repeat_interleave(o // groups, 0), 0)
        total = bias.to(out.dtype) + (w.reshape(o, ipg, math.prod(w.shape[2:])).sum(-1).to(out.dtype) * reads).sum(1)
        val = torch.where(const, total, torch.full_like(total, float("nan")))
        shape = [1] * out.dim()
        shape[axis] = o
        return val.view(shape).expand_as(out).clone()


# ops that make a number of NaN (``nan_to_num``: 0.0 or what it is told; ``sign``/``sgn``: 0.0; ``fmax``/``fmin``:
# the other argument; ``heaviside``: its values; the nan-reductions: the sum or statistic of the rest): in the
# probe their output there would pass for a constant where the model computes from the data (fmax of a live
# layer's output and a constant had all 5 live units of the next layer removed)
_NAN_TO_NUMBER_FUNCTIONS = {torch.nan_to_num, torch.sign, torch.sgn, torch.fmax, torch.fmin, torch.heaviside,
                            torch.nansum, torch.nanmean, torch.nanmedian, torch.nanquantile}
_NAN_TO_NUMBER_METHODS = {"nan_to_num", "nan_to_num_", "sign", "sign_", "sgn", "sgn_", "fmax", "fmin", "heaviside",
                          "heaviside_", "nansum", "nanmean", "nanmedian", "nanquantile"}


def _nan_read(n, env) -> Optional[torch.Tensor]:
    """Where the data inputs of ``n``, an op that makes a number of NaN, hold NaN (read before the op runs: an
    in-place one overwrites its input), broadcast together (their shapes apart: all of them, as a reduction's
    input against its output), or None for any other node."""
    if not ((n.op == "call_function" and n.target in _NAN_TO_NUMBER_FUNCTIONS)
            or (n.op == "call_method" and n.target in _NAN_TO_NUMBER_METHODS)):
        return None
    reads = [env.get(a) for a in [*n.args, *n.kwargs.values()] if isinstance(a, fx.Node)]
    nans = [torch.isnan(x) for x in reads if isinstance(x, torch.Tensor) and x.is_floating_point()]
    if not nans:
        return None
    try:
        return torch.stack(torch.broadcast_tensors(*nans)).any(0)
    except RuntimeError:  # shapes that do not broadcast: NaN everywhere it matters (_nan_kept fills all)
        return torch.ones(1, dtype=torch.bool)


def _nan_kept(out, unknown: torch.Tensor):
    """``out`` with NaN again where its input held NaN (in place: an in-place op's input is ``out``); all NaN
    where the two shapes do not match."""
    if not (isinstance(out, torch.Tensor) and out.is_floating_point()):
        return out
    if unknown.shape != out.shape:
        return torch.full_like(out, float("nan"))
    return out.masked_fill_(unknown, float("nan"))


def _from_data(n, out, env, data: set) -> bool:
    """Does ``n``'s output depend on the data through a value NaN cannot mark: an integer or boolean input (token
    ids), or an integer or boolean tensor computed from NaN floats or from such a tensor? Nodes whose output is
    one are added to ``data`` by the caller."""
    if not _tensor_leaves(out):
        return False
    if n.op == "placeholder":
        return any(not t.is_floating_point() for t in _tensor_leaves(out))
    for a in n.all_input_nodes:
        if a in data:
            return True
        if not all(t.is_floating_point() for t in _tensor_leaves(out)) and any(
                t.is_floating_point() and bool(torch.isnan(t).any()) for t in _tensor_leaves(env.get(a))):
            return True
    return False


def _all_nan(out):
    """``out`` (a float tensor, or a tuple or list of tensors) with every float made NaN."""
    if isinstance(out, torch.Tensor):
        return torch.full_like(out, float("nan")) if out.is_floating_point() else out
    if isinstance(out, (tuple, list)):
        parts = [_all_nan(t) for t in out]
        return type(out)(*parts) if hasattr(out, "_fields") else type(out)(parts)  # a namedtuple takes its fields
    return out


def _product(n) -> bool:
    """A product of two tensors, ``a * b`` (``torch.mul``, ``a.mul(b)``; not in place)."""
    two = len(n.args) >= 2 and all(isinstance(a, fx.Node) for a in n.args[:2])
    return two and ((n.op == "call_function" and n.target in (operator.mul, torch.mul))
                    or (n.op == "call_method" and n.target == "mul"))


def _times_zero(out: torch.Tensor, factors: list) -> torch.Tensor:
    """``out``, a product's probe value, exactly 0 where a float factor is exactly 0: an input-independent zero
    times whatever the data makes of the other factor (NaN in the probe; finite in the model) is 0, a constant (a
    squeeze-excitation gate times a channel whose filter is pruned, after an activation that maps its constant to
    0)."""
    zero = None
    for f in factors:
        if isinstance(f, torch.Tensor) and f.is_floating_point():
            z = f == 0
            zero = z if zero is None else zero | z
    if zero is None or not bool(zero.any()) or torch.broadcast_shapes(zero.shape, out.shape) != out.shape:
        return out
    return torch.where(zero, torch.zeros_like(out), out)


def _size_dependent(n) -> bool:
    """A sum over some dimensions: of a constant channel it is the constant times a size (tokens,
    pixels), which changes with the input."""
    return (n.op == "call_function" and n.target is torch.sum) or (n.op == "call_method" and n.target == "sum")


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


def _node_consts(n, env, wider, axis: int) -> torch.Tensor:
    """Per channel of ``n`` (along ``axis``), in float64: its value where the probe found it a constant, finite and
    uniform on the example's input and the same (to float rounding) on the one twice its size (``wider``: those
    values, None where that input did not run), else NaN."""
    c = _channel_consts(env[n], axis).double()
    if wider is not None:
        w = wider.get(n)
        ok = isinstance(w, torch.Tensor) and w.dim() == env[n].dim() and w.shape[axis] == c.numel()
        same = ok and torch.isclose(_channel_consts(w, axis).double(), c, rtol=_SAME_RTOL, atol=0)
        c = torch.where(same, c, float("nan")) if ok else c * float("nan")
    return c


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


def _tensor_leaves(out) -> list:
    """The tensors of a model output: a tensor, or (nested) dicts, lists and tuples of them (the output
    check's walk, without the names)."""
    return [t for _, t in _named_leaves(out)]
