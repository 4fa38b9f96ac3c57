"""Functional layers in :func:`graphs.compact`: ``F.linear(x, self.fc.weight, self.fc.bias)`` on an
``nn.Linear``'s own parameters taken for the layer's call (torch_geometric's ``Linear``, whose forward is that call,
becomes an ``nn.Linear`` holding its parameters), and a warning for each layer whose parameters are read otherwise
(it keeps its size), and for each ``F.linear``, convolution or matrix product on a bare parameter of the model, or
``F.linear`` on a weight computed in the forward, where dead units feeding it stay (its channels keep their size)."""
from __future__ import annotations

import operator
from typing import Dict, List, Optional, Union

import torch
import torch.nn.functional as F
from torch import fx, nn

from adaptive.discovery import linear_types, writes_unseen
from adaptive.warn import warn_user

from . import ops
from .compact_layers import _LAYERS
from .flow_contract import PRODUCT_OPERANDS

def _functional_layers(gm: fx.GraphModule, src: nn.Module) -> Dict[Union[str, fx.Node], List[fx.Node]]:
    """Turn ``F.linear(x, self.fc.weight, self.fc.bias)`` on an ``nn.Linear``'s own weight and bias into the
    call ``self.fc(x)``, which compaction shrinks; warn about each layer whose parameters are still read
    directly (it keeps its size); an ``F.linear`` on a weight no ``nn.Linear`` owns (its channels stay) is left to
    :func:`_bare_readers`, warned of once per weight where dead units stay, as a convolution on a bare weight is.
    A layer with forward hooks (which its call would run and F.linear does not), or inside a module fx
    calls whole (``attn.out_proj`` of a MultiheadAttention, which reads it at its full size), is left read.
    Returns :func:`_bare_readers`, for :func:`_warn_bare_weights` once the plan says which dead units stay."""
    whole = {str(n.target) for n in gm.graph.nodes if n.op == "call_module"}
    kept: Dict[str, str] = {}  # a layer read by an F.linear left as it is -> the reason, when not its bias
    for n in list(gm.graph.nodes):
        if n.op != "call_function" or n.target is not F.linear:
            continue
        owner, _ = ops.linear_owner(n, src)
        if owner is None:
            continue  # a bare or computed weight: its channels stay, warned of by _warn_bare_weights where dead units do
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
        elif type(module).forward is not nn.Linear.forward and not writes_unseen(module):
            kept[owner] = f"{type(module).__name__}.forward is not nn.Linear's"
        if not owner or not own_bias or owner in kept or not isinstance(x, fx.Node):
            continue  # left as it is; warned below with the other direct reads of the layer's parameters
        parent, _, child = owner.rpartition(".")
        # fx kept a bare holder of the weight; torch_geometric's Linear (forward: this very F.linear) becomes the
        # nn.Linear it computes, which compaction shrinks and torch.load reads back without torch_geometric
        layer = module if isinstance(module, nn.Linear) else _as_nn_linear(module)
        setattr(gm.get_submodule(parent) if parent else gm, child, layer)
        with gm.graph.inserting_before(n):
            call = gm.graph.call_module(owner, (x,))
        n.replace_all_uses_with(call)
        reads = [a for a in n.all_input_nodes if a.op == "get_attr"]
        gm.graph.erase_node(n)
        for a in reads:
            if not a.users:
                gm.graph.erase_node(a)
    bare = _bare_readers(gm, src)
    read: Dict[str, List[str]] = {}
    for n in gm.graph.nodes:
        owner = str(n.target).rpartition(".")[0] if n.op == "get_attr" else None
        if owner and isinstance(_submodule(src, owner), _LAYERS + linear_types()):  # "": the model is the layer
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
    return bare


# weighted ops on a parameter of the model's own: convolutions and the matrix products (and F.linear, whose
# weight alone is followed: one of an nn.Linear is that layer's, and a computed one counts too)
_CONVS = (F.conv1d, F.conv2d, F.conv3d, F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d)
# and the other products graphs follows exactly (flow_contract.PRODUCT_OPERANDS: torch.addmm(b, h, self.w),
# h.mv(self.v), torch.tensordot(h, self.w), ...), whose channels compaction keeps alike
_PRODUCTS = (torch.matmul, torch.mm, torch.bmm, torch.einsum, operator.matmul,
             *(getattr(torch, name) for name in PRODUCT_OPERANDS))
_PRODUCT_METHODS = ("matmul", "mm", "bmm", "__matmul__", *PRODUCT_OPERANDS)
# views of a weight that keep it the model's own tensor (self.w.t(), self.w.T, self.w.view(...)): followed back to it
_VIEW_METHODS = ("t", "transpose", "permute", "view", "reshape", "contiguous", "unsqueeze", "squeeze", "flatten")
_VIEW_FUNCTIONS = (torch.t, torch.transpose, torch.permute, torch.reshape, torch.unsqueeze, torch.squeeze,
                   torch.flatten)


def _held(a: fx.Node) -> fx.Node:
    """The node ``a`` is a view of (a transpose, a reshape, ``.T``: followed back), else ``a``."""
    while a.args and isinstance(a.args[0], fx.Node) and (
            (a.op == "call_method" and a.target in _VIEW_METHODS)
            or (a.op == "call_function" and a.target in _VIEW_FUNCTIONS)
            or (a.op == "call_function" and a.target is getattr and a.args[1:] in (("T",), ("mT",)))):
        a = a.args[0]
    return a


def _bare_readers(gm: fx.GraphModule, src: nn.Module) -> Dict[Union[str, fx.Node], List[fx.Node]]:
    """Each tensor of the model's own that no layer compaction shrinks owns (a parameter, a buffer: keyed by its
    name) read by a convolution, matrix product or ``F.linear`` (``F.conv2d(x, self.w)``, ``x @ self.w``,
    ``x @ self.w.t()``, ``F.linear(x, self.w)``), and those nodes: the channels they read and write keep their size
    (one owned by an ``nn.Linear``/``nn.Conv`` read so is warned of as that layer's direct read). An ``F.linear``
    whose weight is computed in the forward (``F.linear(x, 2 * self.w)``) is keyed by the node computing it."""
    readers: Dict[Union[str, fx.Node], List[fx.Node]] = {}
    for n in gm.graph.nodes:
        if n.op == "call_function" and n.target is F.linear:
            w = n.args[1] if len(n.args) > 1 else n.kwargs.get("weight")
            if not isinstance(w, fx.Node):
                continue
            w = _held(w)
            owner = str(w.target).rpartition(".")[0] if w.op == "get_attr" else None
            if owner is None or not isinstance(_submodule(src, owner), _LAYERS + linear_types()):
                key = str(w.target) if w.op == "get_attr" else w
                if n not in readers.setdefault(key, []):
                    readers[key].append(n)
            continue
        if not ((n.op == "call_function" and (n.target in _CONVS or n.target in _PRODUCTS))
                or (n.op == "call_method" and n.target in _PRODUCT_METHODS)):
            continue
        for a in map(_held, _multiplied(n)):
            owner = str(a.target).rpartition(".")[0]
            if a.op == "get_attr" and not isinstance(_submodule(src, owner), _LAYERS + linear_types()):
                if n not in readers.setdefault(str(a.target), []):
                    readers[str(a.target)].append(n)
    return readers


def _multiplied(n: fx.Node) -> List[fx.Node]:
    """The nodes product or convolution ``n`` multiplies: its inputs, but for an ``add*`` product's added ``input``
    (``torch.addmm(self.b, h, self.w)``: a bias, added to the product, that is no weight)."""
    name = n.target if isinstance(n.target, str) else getattr(n.target, "__name__", "")
    if len(PRODUCT_OPERANDS.get(name, ())) != 3:
        return n.all_input_nodes
    added = n.args[0] if n.args else n.kwargs.get("input")
    return [a for a in n.all_input_nodes if a is not added]


def _warn_bare_weights(readers: Dict[Union[str, fx.Node], List[fx.Node]], plan: dict, src: nn.Module) -> None:
    """Warn, once per tensor of :func:`_bare_readers`, where a node reading it reads a constant (dead) unit that
    stays (``plan``: :func:`graphs.compact_plan._plan`), naming the nodes that read it (a loop unrolled
    by the trace reads it at every step) and the fix; with no dead unit kept there, nothing is said."""
    items, consts, removed = plan["items"], plan["consts"], plan["removed"]
    kept = ~torch.isnan(consts) & ~removed

    def dead_kept(n: fx.Node) -> bool:
        # the units it reads (not the weight's own columns); those it writes are dead only where the bare weight,
        # which no connectome prunes, is zero, and its outputs may be the model's, which stay anyway
        if n.target is F.linear:  # its input alone: a computed weight is no tensor of units
            units = [a for a in [n.args[0] if n.args else n.kwargs.get("input")] if isinstance(a, fx.Node)]
        else:
            units = [a for a in _multiplied(n) if _held(a).op != "get_attr"]  # not an add* op's added input
        return any(bool(kept[items.ids(t)].any()) for t in units if t in items.offset)

    params = dict(src.named_parameters(remove_duplicate=False))
    buffers = dict(src.named_buffers(remove_duplicate=False))
    for t, nodes in readers.items():
        if not any(map(dead_kept, nodes)):
            continue
        conv = any(n.target in _CONVS for n in nodes)
        who = (f"node {ops.describe(nodes[0])} reads" if len(nodes) == 1 else
               f"nodes {', '.join(ops.describe(n) for n in nodes[:3])}{' ...' if len(nodes) > 3 else ''} "
               f"({len(nodes)} in all) read")
        if isinstance(t, fx.Node):
            tensor = (f"the weight {t.name!r}, computed in the forward (F.linear on it), not a parameter that an "
                      "nn.Linear module holds")
        else:
            what = "a parameter" if t in params else "a buffer" if t in buffers else "a tensor"
            tensor = f"{t!r}, {what} of the model's own that no {'convolution' if conv else 'nn.Linear'} module holds"
        warn_user(f"graphs.compact: {who} {tensor}: the channels it reads and writes keep "
                  f"their size (dead units feeding it included); hold the weight in "
                  f"{'an nn.Conv1d/2d/3d (or ConvTranspose)' if conv else 'an nn.Linear'} and call it to have them "
                  "compacted")


def _as_nn_linear(module: nn.Module) -> nn.Linear:
    """An ``nn.Linear`` holding ``module``'s own ``weight`` and ``bias`` (the same Parameters): torch_geometric's
    ``Linear`` as the layer its forward, ``F.linear(x, self.weight, self.bias)``, computes. It keeps the
    ``in_channels`` and ``out_channels`` users read of torch_geometric's layer (:data:`CHANNEL_ATTRS`), plain
    attributes, which :func:`graphs.compact_shrink._shrink_weighted` sets to the sizes of the shrunk layer."""
    out_features, in_features = module.weight.shape
    layer = nn.Linear(in_features, out_features, bias=module.bias is not None, device="meta")
    layer.weight = module.weight
    layer.bias = module.bias
    layer.in_channels, layer.out_channels = in_features, out_features
    return layer.train(module.training)


# the size attributes a layer taken for an nn.Linear keeps beside in_features and out_features (torch_geometric's)
CHANNEL_ATTRS = ("in_channels", "out_channels")


def _submodule(model: nn.Module, name: str) -> Optional[nn.Module]:
    try:
        return model.get_submodule(name)
    except AttributeError:
        return None
