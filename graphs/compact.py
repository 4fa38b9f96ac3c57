"""Compaction: turn dead units into a physically smaller dense model.

``compact(model, conn, example_input)`` returns an ``fx.GraphModule`` whose Linear/Conv/ConvTranspose/BatchNorm
layers have fewer channels and whose outputs equal the masked model's (eval mode) to float tolerance.

What may be removed. Every channel of every tensor in the traced graph is an *item*; ops that keep
channels apart (activations, BatchNorm, pooling, spatial slicing, elementwise ``+``/``*`` of equally
shaped tensors, channel concatenation, flattening before a Linear, channel zero-padding, splits) link the
items they pass a channel between. Linked items form a class, removed all together or not at all, so
a channel of a residual sum goes only if it goes from every summand, and a concatenated channel only
with its source. An item can go when each of its readers can do without it:

- a Linear/Conv reader whose weights on that channel are all zero, or whose only units that read it go too
  (the unit has no live output), or
- a Linear/Conv reader when the item is *constant*: input-independent and spatially uniform (a unit
  with no live input: its output is its bias, turned by BatchNorm and the activation into a
  per-channel constant ``k``, which is generally **not zero**; a unit whose live weights read only
  constants, where they fold into its bias, is one too). The constant is folded into the
  reader: into its bias when the reader has no zero padding (Linear, 1x1 or unpadded convs), else
  into a one-channel convolution of an all-ones image with ``k``-weighted kernels, which reproduces
  the zero-padding border effects exactly for any input size (:class:`FoldedConv`).

So one pass removes what several would: a chain of units read only by units that go goes whole, and compacting the
copy again removes nothing more (:func:`graphs.compact_plan._plan` settles the plan again with the outputs that go
taken as reading nothing, until nothing more goes; where a rule that keeps a channel, a convolution's last, groups
alike or ``align``, would keep a unit taken as gone, it stops at the plan before, and another pass may remove more).

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

Products. ``a * b`` (``torch.mul``, ``a.mul(b)``) on axis 1, a squeeze-excitation gate ``scale * h`` say, is a reader
of a factor's constant channel too: that channel is not linked to the product's, goes where its other readers let
it, and is filled back in for the product (:func:`channel_pad` with the constants: ``k * scale_c``, which depends on
the data through the gate, stays where it is read); a factor's channel that stays keeps the product's. So a depthwise
channel whose filter is pruned, a constant after its BatchNorm and activation, goes behind a gate with the expand
unit feeding it. A product with an exact-zero factor is 0 in the probe (a constant), though the other factor holds
NaN. A constant depthwise input channel (an expand unit with no live input) makes a border pattern and no constant,
so it stays; a product on a sequence's last axis keeps its factors linked.

Constants are found by a probe run in which inputs are NaN: NaN spreads through every op that
depends on data, a unit with no live input (or whose live inputs are exact zeros, or constants it folds into its bias)
emits its bias (plus what its weights make of those constants),
and whatever stays finite and uniform, with the same value on an input twice the example's size, is a
constant (integer inputs such as token ids are data, and so is every float made from them, and every float made
with an integer or boolean tensor computed from the data: ``torch.where(h > 0, h, 0)`` reads 0 where NaN > 0 is
False, yet depends on the data). Uniform and
the same are judged to float32 rounding: an average rounds a constant by a few ulps, differently at each
size (a float16 or bfloat16 model is probed on a float32 copy, whose rounding does not hide how a padded
pool's border moves a mean with the size). Items of inputs, outputs, ops the
compactor does not understand and layers whose weight is tied to another module's are kept; a
depthwise convolution (groups == channels; a transposed one too) keeps or drops input channel ``c`` together with output
channel ``c`` and its filter. Another grouped convolution (ResNeXt's, RegNet's, a grouped transposed one) keeps its groups alike
(:func:`graphs.compact_plan._uneven_groups`): a group goes whole, filters, inputs and outputs, where all
its channels could go (``groups`` drops), and every other group loses as many input channels as the one that
can lose the fewest, and likewise output channels, one of each staying at least; each kept output still reads its
own group's kept inputs, so the smaller convolution computes the rest exactly. A convolution, BatchNorm,
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
weight) keeps the channels it reads and writes, as does a convolution or matrix product on a parameter of the
model's own (``F.conv2d(h, self.w)``, ``h @ self.w``, ``h @ self.w.t()``, ``torch.addmm(self.b, h, self.w)``; or a
buffer): a warning names each weight where dead units stay, once, with the nodes that read it (a computed weight by
the node computing it).

Attention. Inside an ``nn.MultiheadAttention``, the query/key pairs and value channels that are dead in a way that
is exact to drop (a pinned key, a pinned query with no bias, a pinned or unread value) go alike from every head, and
it becomes a :class:`CompactAttention` (:mod:`graphs.compact_attention`), before the plan: the model is traced again
through it, so its projections are Linears of the plan, and what only the removed rows read goes in this pass, as
the next would remove it. An attention that stays whole keeps its input and output channels.

Here: :func:`compact`, the entry. The probe is :mod:`graphs.compact_probe`, the channel items
:mod:`graphs.compact_items`, how channels pass through ops :mod:`graphs.compact_links` (views and indexing
:mod:`graphs.compact_views`, splits :mod:`graphs.compact_splits`, filled tensors :mod:`graphs.compact_filled`), what
goes :mod:`graphs.compact_plan`, the layers it shrinks :mod:`graphs.compact_layers`, how each is cut
:mod:`graphs.compact_shrink`, the graph's rewrite :mod:`graphs.compact_rewrite`, functional layers
:mod:`graphs.compact_functional` and the check :mod:`graphs.compact_check`.
"""
from __future__ import annotations

import copy
from typing import Optional

import torch
from torch import fx, nn

from adaptive.connectome import _plain_module
from adaptive.counts import whole_number
from adaptive.discovery import copy_model
from adaptive.global_rng import kept_global_rng
from adaptive.warn import warn_user

from .compact_attention import compact_attention
from .compact_check import _axis, _verify
from .compact_dropout import _warn_fixed_off_dropouts
from .compact_functional import _functional_layers, _warn_bare_weights
from .compact_plan import _plan
from .compact_probe import _float32_weights, _probe, _probe_wider
from .compact_rewrite import _rewrite
from .locking import serialized

# importable from here, as before these moved out (callers, tests, and the code of copies saved before: a copy with
# a channel padding compacted imports channel_pad from the module it was in)
from .compact_check import CompactionMismatchError  # noqa: F401
from .compact_rewrite import channel_pad  # noqa: F401
from .compact_shrink import _shrink_weighted  # noqa: F401
from .folded import FoldedConv  # noqa: F401
from .compact_attention import CompactAttention  # noqa: F401

__all__ = ["compact",
           # importable from here, as before they moved out (imported above)
           "CompactionMismatchError", "channel_pad", "FoldedConv", "CompactAttention"]
# private names other modules and tests import from here (not in __all__: a star import takes the
# public names only); named here, so that the import is used
_REEXPORTED = (_shrink_weighted,)



def _untraced_hint(model: nn.Module, failed: Optional[BaseException] = None) -> str:
    """What to do about a model fx could not trace: torch_geometric's message-passing layers (GCNConv, GATConv, ...)
    named, which no rewrite of the user's forward makes traceable; a size of the input used as a Python number
    (``failed``, fx's TypeError: a slice of a parameter or buffer, ``self.pos[:, :t.shape[1]]``, a ``range`` or an
    ``int()`` of it; its RuntimeError for ``len(x)``), which a function marked ``@torch.fx.wrap`` keeps out of the
    trace; else how to write a branch on the data."""
    import sys

    passing = getattr(sys.modules.get("torch_geometric.nn.conv"), "MessagePassing", None)
    names = [f"{n}: {type(m).__name__}" for n, m in model.named_modules() if passing and isinstance(m, passing)]
    if names:
        shown = ", ".join(names[:4]) + (f" and {len(names) - 4} more" if len(names) > 4 else "")
        return (f"torch.fx cannot trace torch_geometric's message-passing layers ({shown}), which check and route "
                "edge_index in Python: graphs.compact cannot copy a model holding them; their Linear weights are "
                "still pruned and trained sparse, and graphs.build chains them in module order")
    said = str(failed) if isinstance(failed, TypeError) else ""
    if ("Proxy" in said or "slice indices must be integers" in said
            or "'len' is not supported in symbolic tracing" in str(failed)):  # (fx's RuntimeError for len(x))
        # fx gives a size of a traced input (t.shape[1]) as a traced value, which Python cannot use as an int
        return ("a size of the input (`x.shape[1]`, `x.size(1)`, `len(x)`) is used there as a Python number, which a "
                "copy that runs inputs of any size cannot fix: in tensor arithmetic write it as `x.shape[0]` "
                "(`h * x.shape[0]`, `x.new_zeros(x.shape[0], 4)`: fx traces those), "
                "hold a loop's count in the model (`for t in range(self.steps)`, "
                "which fx unrolls), and move a slice of a parameter or buffer (`self.pos[:, :x.shape[1]]`) into a "
                "module-level function marked `@torch.fx.wrap` (`@torch.fx.wrap\ndef crop(pos, x): return "
                "pos[:, :x.shape[1]]`, called as `crop(self.pos, x)`), which the copy calls as it is")
    return ("the copy is one fixed data flow: write a branch on the data, `if x.mean() > 0`, with tensor ops: "
            "`torch.where(x.mean() > 0, a(h), b(h))`")


def _rehome(gm: fx.GraphModule, name: str, traced: CompactAttention) -> None:
    """Make ``gm``'s module ``name`` (a container of the projections fx traced through, which the copy's graph calls
    inline: the projections and the dropout ``drop``) the :class:`CompactAttention` of ``traced`` holding them, as
    compacted: the copy's attention is one."""
    try:
        parts = [gm.get_submodule(f"{name}.{p}") for p in ("q_proj", "k_proj", "v_proj", "out_proj")]
    except AttributeError:  # a projection the copy no longer calls: the container stays
        return
    if not all(isinstance(p, nn.Linear) for p in parts) or dict(gm.get_submodule(name).named_children()).keys() != \
            {"q_proj", "k_proj", "v_proj", "out_proj", "drop"}:
        return
    new = CompactAttention(*parts, traced.num_heads, traced.scale, traced.dropout, traced.batch_first, traced.batched,
                           (traced.bool_attn_mask, traced.bool_padding_mask)).train(traced.training)
    new.drop = gm.get_submodule(f"{name}.drop")  # the one the copy's graph calls
    parent, _, child = name.rpartition(".")
    setattr(gm.get_submodule(parent) if parent else gm, child, new)


def _check_fits(conn, model: nn.Module) -> None:
    """Refuse a connectome made for another model (a layer ``model`` lacks, or a mask of another shape than its
    weight) before anything is copied: the masking below failed on it with a bare KeyError or RuntimeError."""
    params = dict(model.named_parameters(remove_duplicate=False))
    wrong = [f"{n}: mask {tuple(m.shape)}, weight {tuple(params[n].shape)}" if n in params
             else f"{n}: no such weight in {type(model).__name__}"
             for n, m in conn.masks.items() if n not in params or tuple(params[n].shape) != tuple(m.shape)]
    if wrong:
        raise ValueError(f"the connectome does not fit the model ({'; '.join(wrong[:3])}"
                         f"{'; ...' if len(wrong) > 3 else ''}): it was made for another model "
                         f"({type(conn.model).__name__}); compact the model it masks, graphs.compact(conn.model, conn, "
                         "...), or build a Connectome of this model")


@serialized  # traces, and runs models that another thread's trace would take
@kept_global_rng()
def compact(model: nn.Module, conn=None, example_input: Optional[torch.Tensor] = None,
            atol: Optional[float] = None, rtol: Optional[float] = None, verify: bool = True, align: int = 1,
            batch_axis: Optional[int] = None) -> fx.GraphModule:
    """A smaller dense copy of ``model`` (masked by ``conn`` when given) without its removable dead
    units. Eval-mode semantics (BatchNorm running statistics; a dropout called as a function with the model's
    mode, ``F.dropout(x, p, self.training)``, stays off in the copy, which a warning says: :mod:`graphs.compact_dropout`). The returned GraphModule carries
    ``compaction``: a dict with params before/after, units removed per layer and the verified
    maximum output difference, ``max_abs_diff``, and relative to the outputs' largest magnitude, ``max_rel_diff``. ``align`` > 1 keeps a few removable units so that every Linear/Conv
    keeps a multiple of ``align`` output units (CPU and GPU kernels run faster on such widths), as does each projection
    of an attention that loses channels (:mod:`graphs.compact_attention`).
    ``example_input`` (batch first; None: the first input inferred from the first layer that the
    model runs on, as :func:`graphs.build` guesses) drives the trace and, with ``verify``, the check
    that the compact copy's outputs match the masked model's within
    ``torch.allclose(atol=atol, rtol=rtol)`` per output tensor, ``atol`` scaled down by that output's largest
    magnitude where it is below 1 (a fixed ``atol`` passed any copy of a model whose outputs are 1e-10). None
    (the default): the dtype's (its parameters'), 1e-4 each for a model in float32 or float64; for one in
    bfloat16 or float16, differences up to 4 of the dtype's roundings (``torch.finfo(dtype).eps``; the square root of the number of
    Linear/Conv layers where that is more) of each output's largest magnitude, rtol 0
    (:func:`graphs.compact_check._tolerances`); ``compaction`` reports those used (``atol``, ``rtol``, in words
    ``tolerance``). ``batch_axis=1`` says the example's inputs (of two axes or more)
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
    if conn is not None and hasattr(conn, "_check_params"):
        conn._check_params()  # its weights are still the model's (not replaced, nor computed by a parametrization)
    if conn is not None:
        _check_fits(conn, model)
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

    def traced() -> fx.GraphModule:
        for fixed in ([flags, every] if every != flags else [every]):
            try:
                gm = symbolic_trace(src, concrete_args=fixed or None)
                break
            except Exception as e:  # noqa: BLE001 - fx raises many types; the last one is reported
                failed = e
        else:
            raise RuntimeError(f"compact needs an fx-traceable model; tracing {type(model).__name__} failed"
                               f"{_where(failed)}: {failed} ({_untraced_hint(src, failed)})") from failed
        for n in gm.graph.nodes:  # fx names such a parameter mask_1: the copy takes mask=None, as the model does
            if n.op == "placeholder" and n.target.endswith("_1") and n.target[:-2] in fixed:
                n.target = n.target[:-2]
            if isinstance(n.type, str):  # an annotation left a string by `from __future__ import annotations`:
                n.type = None            # torch 2.11's pickler took it for an object, and the copy failed to save
        return gm.eval()

    x = example_input.narrow(_axis(example_input, batch), 0, 1) if isinstance(example_input, torch.Tensor) else example_input

    def probed(gm: fx.GraphModule, x, wider: bool = True):
        """The probe's values of gm's nodes (and on the wider input, with ``wider``), and the input probed."""
        weights = _float32_weights(gm)
        with torch.no_grad():
            try:
                env = _probe(gm, x, weights)
                # a part of the batch one sample lacks (x.split([1, n - 1])) would hold no values to judge
                few = any(isinstance(v, torch.Tensor) and v.numel() == 0 for v in env.values())
            except Exception as e:  # noqa: BLE001 - one sample is too few (the model splits its batch): the whole example
                if x is example_input:
                    raise example_input_failed(model, x, e) from None
                few = True
            if few and x is not example_input:
                x = example_input
                try:
                    env = _probe(gm, x, weights)
                except Exception as e:  # noqa: BLE001 - the example itself does not run: said as build says it
                    raise example_input_failed(model, x, e) from None
            return env, (_probe_wider(gm, x, weights) if wider else None), x

    gm = traced()
    before = sum(t.numel() for t in gm.parameters())  # the attentions' too, as they were
    attention = {}
    whole = {str(n.target): gm.get_submodule(n.target) for n in gm.graph.nodes if n.op == "call_module"
             and type(gm.get_submodule(n.target)) is nn.MultiheadAttention}
    if whole:
        # an attention's dead channels go first (graphs.compact_attention, put into src), and src is traced again,
        # through the CompactAttention: the plan then sees its projections as the Linears they are, so the units
        # only removed rows read, and the constants the kept rows fold, go in this pass as they would in the next
        attention = compact_attention(gm, probed(gm, x, wider=False)[0], src, int(align))
        if attention:
            try:
                gm = traced()  # gm, traced before, still holds the attentions as they were
            except RuntimeError as e:
                names = sorted({key.rpartition(".")[0] for key in attention})
                for name in names:
                    parent, _, child = name.rpartition(".")
                    setattr(src.get_submodule(parent) if parent else src, child, whole[name])
                warn_user(f"graphs.compact: the model could not be traced through the compacted attention(s) "
                          f"({e}); {', '.join(names)} stay whole (nn.MultiheadAttention): please report this")
                attention = {}
    _warn_fixed_off_dropouts(gm)  # F.dropout(x, p, self.training), traced at eval's False: off in the copy for good
    bare = _functional_layers(gm, src)
    probe_env, wider_env, x = probed(gm, x)
    plan = _plan(gm, probe_env, int(align), wider_env)
    _warn_bare_weights(bare, plan, src)
    _rewrite(gm, plan, probe_env)
    removed = dict(plan["removed_per_layer"])
    for key, count in attention.items():  # NAME.q, NAME.k, NAME.v: with the rows the plan removed (none: a view)
        removed[key] = count + removed.pop(key + "_proj", 0)
    for name in {key.rpartition(".")[0] for key in attention}:
        if not removed.get(name + ".out_proj", 1):  # out_proj's units, where some went: as the attention's layer
            del removed[name + ".out_proj"]
        _rehome(gm, name, src.get_submodule(name))
    after = sum(t.numel() for t in gm.parameters())
    report = {"params_before": before, "params_after": after, "removed": removed,
              "units_removed": sum(removed.values())}  # an attention's channels too, as "removed" lists them
    _copy_own_hooks(src, gm)
    if verify:
        report.update(_verify(ref, gm, example_input, atol, rtol, batch))
    gm.compaction = report
    return gm


_HOOK_DICTS = ("_forward_hooks", "_forward_hooks_with_kwargs", "_forward_hooks_always_called", "_forward_pre_hooks",
               "_forward_pre_hooks_with_kwargs", "_backward_hooks", "_backward_pre_hooks")


def _copy_own_hooks(src: nn.Module, gm: nn.Module) -> None:
    """The model's own hooks (on the model itself, not a layer) run on the copy too: the traced copy is a new
    module, which had none (a forward hook applying a softmax to the output was dropped, and the check failed)."""
    for name in _HOOK_DICTS:
        held = getattr(src, name, None)
        if held:
            setattr(gm, name, type(held)(held))
    if getattr(src, "_is_full_backward_hook", None) is not None:
        gm._is_full_backward_hook = src._is_full_backward_hook
