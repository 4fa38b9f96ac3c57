"""The plan of :func:`graphs.compact`: which channel items go, from the links, the pins, the probe's constants and
what each weighted reader reads, with grouped convolutions' groups kept alike and ``align`` honoured."""
from __future__ import annotations

from typing import Dict, Optional

import torch
from torch import fx, nn

from adaptive.warn import warn_user

from . import ops, shape_reads
from .compact_items import _Items, _tensor_args
from .compact_layers import _BN, _LAYERS, _depthwise, _inputs_read, _live_weights, _module_input
from .compact_links import _link, _out_axis
from .compact_probe import _node_consts
from .compact_splits import _split
from .folded import FoldedConv, unfolded

def _stateful(module) -> bool:
    """Has parameters or buffers (a shared nn.ReLU is fine to call twice; a shared BatchNorm is not)."""
    return module is not None and (any(True for _ in module.parameters()) or any(True for _ in module.buffers()))


def _hooked(module) -> bool:
    """Has hooks of its own that its call runs (forward, forward pre, backward): a layer shrunk is a new module,
    which has none, so the hooks were dropped from the copy (one that changes the output failed the check as
    'please report this model'; a feature tap stopped seeing the layer); such a layer keeps its channels."""
    if module is None:
        return False
    from torch.nn.utils.prune import BasePruningMethod
    from torch.nn.utils.spectral_norm import SpectralNorm
    from torch.nn.utils.weight_norm import WeightNorm

    # (the hooks that compute a weight, torch.nn.utils.prune's, weight_norm's, spectral_norm's, are the layer's
    # weight as compaction reads it, not hooks of the user's)
    computes = (BasePruningMethod, WeightNorm, SpectralNorm)
    hooks = [h for d in (module._forward_hooks, module._forward_pre_hooks, module._backward_hooks,
                         getattr(module, "_backward_pre_hooks", {})) for h in d.values()]
    return any(not isinstance(h, computes) for h in hooks)


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
    shared = [names for names in owners.values() if len(names) > 1]
    tied = {mn for names in shared for mn in names}  # weight tying
    # a parameter also read directly (F.linear(x, self.fc.weight)) would be read at its old size
    tied |= {n.target.rpartition(".")[0] for n in gm.graph.nodes if n.op == "get_attr"}
    # a module called whole and a part of it called too (a FoldedConv and its convolution, an attention and its
    # out_proj): neither can shrink without the other; nor can a FoldedConv whose convolution's weight is tied
    tied |= _nested(calls)
    tied |= {t.rpartition(".")[0] for t in tied if isinstance(mods.get(t.rpartition(".")[0]), FoldedConv)}
    by_tie = set()  # the entries of items.pinned made by a layer pinned for its tied weight alone
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
        first_pin = len(items.pinned)
        if _stateful(module) and (calls[n.target] > 1 or n.target in tied):  # one set of parameters cannot be sliced two ways
            cat = "pinned"
        if _hooked(module):  # its hooks stay with it: it is not replaced by a shrunk copy
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
        if cat == "pinned" and module is not None and calls[n.target] == 1 and any(n.target in s for s in shared):
            by_tie.update(range(first_pin, len(items.pinned)))
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
    for n, off in items.offset.items():  # constant at both input sizes, with the same value (to float rounding)
        consts[off: off + items.count[n]] = _node_consts(n, env, wider_env, items.axis[n])
    # the outputs of a reader that go take with them what only they read: settled again with those rows gone until
    # nothing more goes (a chain of units read only by units that go, one layer a round), or until keeping a class
    # (a convolution's last channel, groups alike, align) would keep a row assumed gone, where the last plan stands.
    # Each round but the last removes one more row at least, so it ends within as many rounds as there are rows
    live = {r: _live_weights(mods[r.target]).cpu() for readers in weighted_inputs.values() for r in readers}
    args = (gm, mods, items, label, bad, consts, weighted_inputs, grouped, align, live)
    removed = _settle(*args, None)
    rows = torch.zeros(items.n, dtype=torch.bool)  # the output items of the readers
    for readers in weighted_inputs.values():
        for r in readers:
            if r in items.offset:
                rows[items.ids(r)] = True
    while True:
        again = _settle(*args, removed)
        if torch.equal(again, removed) or bool((removed & ~again & rows).any()):
            break
        more = bool((again & ~removed & rows).any())
        removed = again  # valid: every row taken as gone goes
        if not more:  # the same rows go: another round would only break ties otherwise
            break
    per_layer = {}
    # the classes pinned otherwise than by a tie (a model output, a layer called twice, ...): untied, they stay too
    else_bad = torch.zeros(items.n, dtype=torch.bool)
    for i, p_ in enumerate(items.pinned if shared else ()):
        if i not in by_tie:
            else_bad[p_] = True
    else_bad = (torch.zeros(items.n, dtype=torch.long).index_add_(0, label, else_bad.long()) > 0)[label]
    for n in gm.graph.nodes:
        if n.op == "call_module" and isinstance(mods[n.target], _LAYERS) and n in items.offset:
            ids = items.ids(n)
            per_layer[n.target] = int(removed[ids].sum())
            kept = int((~torch.isnan(consts[ids]) & ~removed[ids] & ~else_bad[ids]).sum())
            others = sorted({o for names in shared if n.target in names for o in names} - {n.target})
            if kept and others:  # said, as a weight read directly (compact_functional) and a bare one are
                warn_user(f"graphs.compact: layer {n.target!r} keeps {kept} constant (dead) unit(s): its weight is "
                          f"tied to {', '.join(map(repr, others))}, and one tensor cannot be cut two ways, so the "
                          "layers that share it keep their size; untie them (a weight of each one's own) to have "
                          "them compacted")
    return {"items": items, "removed": removed, "consts": consts, "weighted_inputs": weighted_inputs,
            "removed_per_layer": per_layer}


def _settle(gm, mods, items, label, bad, consts, weighted_inputs, grouped, align: int, live: dict,
            gone=None) -> torch.Tensor:
    """The items that go (flags), from ``bad`` (the pinned ones), the constants and what each weighted reader
    reads (``live``: its :func:`_live_weights`), a convolution's last channel, grouped convolutions' groups and
    ``align`` kept; ``gone`` (flags; None: none): the output units of readers taken to go, whose weights then read
    nothing."""
    # items read by weighted layers: removable only if constant or unused by every reader
    bad = bad.clone()
    for n, readers in weighted_inputs.items():
        ids = items.ids(n)
        for r in readers:
            rows = ~gone[items.ids(r)] if gone is not None and r in items.offset else None
            bad[ids] |= _inputs_read(mods[r.target], rows, live[r]) & torch.isnan(consts[ids])  # flags: on the CPU
    # a class goes only if none of its items is bad
    class_bad = torch.zeros(items.n, dtype=torch.long).index_add_(0, label, bad.long()) > 0
    removed = ~class_bad[label]
    # torch runs no convolution, BatchNorm, pooling or resampling on no channels (a conv reading none returns none):
    # where a split part or a whole layer would lose every channel such an op reads or writes, the first stays (once
    # the other rules kept what they keep: a grouped convolution's groups may keep some of them anyway)
    ends = []
    for n in gm.graph.nodes:
        m = mods.get(n.target) if n.op == "call_module" else None
        if isinstance(unfolded(m), nn.modules.conv._ConvNd):
            ends += [n, _module_input(n)]
        elif isinstance(m, _BN) or (n.op in ("call_module", "call_function", "call_method")
                                    and ops.categorize(n, m) == "pointwise" and not ops.elementwise(n, m)):
            ends.append(n)  # linked to its input
    ends = [items.ids(t) for t in ends if t in items.offset and items.count[t]]
    outs = [items.ids(n) for n in gm.graph.nodes if n.op == "call_module"
            and isinstance(mods[n.target], _LAYERS) and n in items.offset] if align > 1 else []
    changed = True
    while changed:  # keeping a class can unsettle another layer's groups or alignment: until both hold everywhere
        changed = False
        for x, n, g in grouped:
            before = (gone[items.ids(x)], gone[items.ids(n)]) if gone is not None else (None, None)
            stay = _uneven_groups(removed[items.ids(x)], removed[items.ids(n)], g, *before)
            if bool(stay[0].any()) or bool(stay[1].any()):
                class_bad[label[torch.cat([items.ids(x)[stay[0]], items.ids(n)[stay[1]]])]] = True
                removed = ~class_bad[label]
                changed = True
        for n, a in items.factors:  # a factor's constant channel that stays keeps the product's: none reads it else
            out_ids = items.ids(n)
            stay = ~removed[items.ids(a)] & removed[out_ids]
            if bool(stay.any()):
                class_bad[label[out_ids[stay]]] = True
                removed = ~class_bad[label]
                changed = True
        for ids in outs:  # keep whole classes until every weighted layer keeps a multiple of align units
            r = removed[ids]
            short = int((-(~r).sum()) % align)
            if short and bool(r.any()):
                went = gone[ids] if gone is not None else torch.zeros_like(r)  # those that stayed the round before first
                class_bad[label[torch.cat([ids[r & ~went], ids[r & went]])[:short]]] = True
                removed = ~class_bad[label]
                changed = True
        for ids in ends:
            if bool(removed[ids].all()):  # the first, or the first that stayed the round before
                stayed = ids if gone is None or bool(gone[ids].all()) else ids[~gone[ids]]
                class_bad[label[stayed[0]]] = True
                removed = ~class_bad[label]
                changed = True
    return removed


def _nested(called) -> set:
    """The modules of ``called`` (qualified names) inside another of them, and those they are inside."""
    found = set()
    for t in called:
        parts = t.split(".")
        outer = {".".join(parts[:k]) for k in range(1, len(parts))} & set(called)
        if outer:
            found |= outer | {t}
    return found


def _uneven_groups(r_in: torch.Tensor, r_out: torch.Tensor, g: int, first_in: Optional[torch.Tensor] = None,
                   first_out: Optional[torch.Tensor] = None):
    """The removable input and output channels (``r_in``, ``r_out``: flags in channel order) a convolution of ``g``
    groups must keep so that its groups stay alike, as ``(in, out)`` flags. The rule: a group goes whole (its
    filters, inputs and outputs) when all its channels could go; every other group loses the same number of
    inputs, the fewest any of them could lose, and likewise of outputs, and keeps one of each at least. The first
    removable channels of a group go, the later ones stay; those flagged in ``first_in``, ``first_out`` (the ones
    that went the round before, see :func:`_plan`) before the others. A smaller grouped convolution then computes the rest
    exactly: each kept output still reads the kept inputs of its own group."""
    r_in, r_out = r_in.view(g, -1), r_out.view(g, -1)
    kept = ~(r_in.all(1) & r_out.all(1))
    if not bool(kept.any()):  # no group left: the first stays (torch runs no convolution on no channels)
        kept[0] = True

    def excess(r, first):
        t = min(int(r[kept].sum(1).min()), r.shape[1] - 1)
        early = r & (first.view(g, -1) if first is not None else torch.zeros_like(r))
        rank = torch.where(early, early.cumsum(1), early.sum(1, keepdim=True) + (r & ~early).cumsum(1))
        return (r & kept[:, None] & (rank > t)).reshape(-1)

    return excess(r_in, first_in), excess(r_out, first_out)
