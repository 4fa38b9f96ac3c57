"""The rewrite of :func:`graphs.compact`: the planned layers put in smaller, views, channel padding (as
:func:`channel_pad`) and splits given the kept channel counts."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import fx
from torch.overrides import handle_torch_function, has_torch_function

from . import shape_reads
from .compact_layers import _BN, _LAYERS, _depthwise, _module_input, _out_in_weight
from .compact_shrink import _refolded, _shrink_bn, _shrink_depthwise, _shrink_weighted
from .compact_views import _reshape_sizes
from .folded import unfolded

def channel_pad(x: torch.Tensor, spatial: list[int], index: torch.Tensor,
                fill: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Spatial zero padding then a channel gather where ``index == -1`` inserts a zero channel
    (the compacted form of ``F.pad`` over channels, e.g. the CIFAR ResNet's option-A shortcut), or, where ``fill``
    is given (one value per output channel), a channel holding ``fill``'s value there: the constant channels of a
    product's factor that went while the product's stayed (a squeeze-excitation gate's input whose depthwise filter
    is pruned), put back for the product to read.

    Traced (an fx Proxy for ``x``), it is recorded as one call, as torch's own Python functions (``F.pad``) are,
    whatever the tracer: torch.load traces a saved copy's code again with fx's, and ``graphs.compact`` traces a copy
    with graphs', both of which went into it and stopped at ``x.shape[2:]`` (a copy with a channel padding
    could not be read back nor compacted again: the ``torch.fx.wrap("channel_pad")`` here reached only calls written
    in this module, not the copy's, and a ``wrap(...)`` written into the copy's code holds its globals in fx for good)."""
    if fill is None:  # two calls, not one of a tuple chosen: TorchScript types each branch's tuple apart
        if has_torch_function((x, index)):
            return handle_torch_function(channel_pad, (x, index), x, spatial, index)
    elif has_torch_function((x, index, fill)):
        return handle_torch_function(channel_pad, (x, index, fill), x, spatial, index, fill)
    if any([p != 0 for p in spatial]):  # written so that TorchScript compiles it (the copy's spatial is a tuple)
        x = F.pad(x, spatial)
    z = x.new_zeros([x.shape[0], 1] + list(x.shape[2:]))
    full = torch.cat([x, z], 1)
    out = full.index_select(1, torch.where(index < 0, x.shape[1], index))
    if fill is not None:
        shape = [1, -1] + [1] * (x.dim() - 2)
        out = torch.where((index < 0).view(shape), fill.to(out.dtype).view(shape), out)
    return out


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
    for n, a in items.factors:  # a product's factor lost constant channels the product keeps: they are filled back
        ko, ka = keep(n), keep(a)
        if torch.equal(ko, ka):
            continue
        assert not bool((ka & ~ko).any()), "a factor's channel kept where its product's goes"  # _plan keeps them
        pos = torch.full((ka.numel(),), -1, dtype=torch.long)
        pos[ka] = torch.arange(int(ka.sum()))
        fill = torch.nan_to_num(consts[items.ids(a)][ko], nan=0.0)  # a constant wherever pos is -1
        dev, dtype = env[a].device, env[a].dtype
        index_buf, fill_buf = f"_graphs_fill_index_{n.name}_{a.name}", f"_graphs_fill_{n.name}_{a.name}"
        gm.register_buffer(index_buf, pos[ko].to(dev))
        gm.register_buffer(fill_buf, fill.to(dev, dtype if dtype.is_floating_point else torch.float32))
        with gm.graph.inserting_before(n):
            filled = gm.graph.call_function(channel_pad, (a, (), gm.graph.get_attr(index_buf),
                                                          gm.graph.get_attr(fill_buf)))
        n.replace_input_with(a, filled)
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
