"""``nn.MultiheadAttention`` in :func:`graphs.compact`: the channels of its query/key and value projections that are
dead go, where that is exact, and the module becomes a :class:`CompactAttention` of narrower heads.

Which channels may go (eval mode, as the rest of compaction; the weights as masked):

- a query/key pair ``c`` of a head (query channel ``c`` and key channel ``c`` of that head, whose product is term
  ``c`` of every score) where the key channel has no nonzero weight: it is its bias at every key position, so term
  ``c`` is one number per query position, added alike to all its scores, which the softmax over key positions
  ignores (masks too add alike); or where the query channel has no nonzero weight and no bias (``bias=False``, or a
  bias of exactly 0): term ``c`` is 0;
- a value channel ``c`` where it has no nonzero weight: it is its bias at every position, and the attention weights
  sum to 1 over positions, so the head's output channel ``c`` is that bias, which folds into ``out_proj``'s bias; or
  where ``out_proj`` reads it with no nonzero weight.

Every head keeps the same width (the heads are one reshape of the projections): each head drops as many query/key
pairs as the head that can drop the fewest, its first such pairs, and likewise value channels; the others stay,
exactly as they were. The scores keep the original scale, ``1 / sqrt(embed_dim / num_heads)``. Not touched (kept
whole): an attention with ``add_bias_kv`` or ``add_zero_attn`` (the appended key and value differ from the biases at
the other positions), one with hooks, one called more than once or whose parameters or parts another node reads or
another module holds too (tied weights: a copy would untie them). In
training mode, dropout leaves attention weights that no longer sum to 1, so a folded value bias is not what the
model computes there: like a BatchNorm fold, the copy is the eval-mode model.
"""
from __future__ import annotations

import math
from typing import Dict, Optional, Tuple

import torch
from torch import Tensor, fx, nn


class CompactAttention(nn.Module):
    """Multi-head attention whose heads have ``qk_dim`` query/key channels and ``v_dim`` value channels each, with
    the scores scaled by ``scale`` (not necessarily ``1/sqrt(qk_dim)``): what :func:`graphs.compact` makes of an
    ``nn.MultiheadAttention`` whose dead channels went. Called as that module is (``query, key, value,
    key_padding_mask, need_weights, attn_mask, average_attn_weights, is_causal``; ``is_causal`` is the hint it is
    there: ``attn_mask`` is applied), it returns ``(output, weights or None)``.

    ``q_proj``, ``k_proj`` and ``v_proj`` project the query, key and value inputs to ``num_heads`` heads of
    ``qk_dim``, ``qk_dim`` and ``v_dim`` channels (head-major, as ``nn.MultiheadAttention``'s rows), ``out_proj``
    reads the heads' outputs; ``dropout`` (on the attention weights, in training: module ``drop``) and ``batch_first`` as
    ``nn.MultiheadAttention``'s. ``batched``: the inputs hold a batch (``[B, L, E]``, or ``[L, B, E]``), else one
    sequence ``[L, E]``; ``bool_masks``: whether ``attn_mask`` and ``key_padding_mask`` are boolean (True: not
    attended) rather than added to the scores. Both are fixed here, as the call that the copy runs gives them, so that
    the forward has no branch on its inputs and fx traces it (a compact copy is traced and compacted again)."""

    def __init__(self, q_proj: nn.Linear, k_proj: nn.Linear, v_proj: nn.Linear, out_proj: nn.Linear,
                 num_heads: int, scale: float, dropout: float = 0.0, batch_first: bool = False, batched: bool = True,
                 bool_masks: Tuple[bool, bool] = (True, True)):
        super().__init__()
        self.q_proj, self.k_proj, self.v_proj, self.out_proj = q_proj, k_proj, v_proj, out_proj
        self.num_heads, self.scale, self.dropout, self.batch_first = int(num_heads), float(scale), float(dropout), bool(batch_first)
        self.batched, self.bool_attn_mask, self.bool_padding_mask = bool(batched), bool(bool_masks[0]), bool(bool_masks[1])
        self.qk_dim = q_proj.out_features // self.num_heads
        self.v_dim = v_proj.out_features // self.num_heads
        self.embed_dim = out_proj.out_features
        # a module, not F.dropout(..., self.training): fx would trace the flag as a constant, and the copy, whose
        # graph runs this forward inline, would keep no dropout when trained (small.train())
        self.drop = nn.Dropout(self.dropout)

    def forward(self, query: Tensor, key: Tensor, value: Tensor, key_padding_mask: Optional[Tensor] = None,
                need_weights: bool = True, attn_mask: Optional[Tensor] = None, average_attn_weights: bool = True,
                is_causal: bool = False) -> Tuple[Tensor, Optional[Tensor]]:
        batched = self.batched
        if not batched:  # one sequence [L, E]
            query, key, value = query.unsqueeze(0), key.unsqueeze(0), value.unsqueeze(0)
            if key_padding_mask is not None:
                key_padding_mask = key_padding_mask.unsqueeze(0)
        elif not self.batch_first:  # [L, B, E]
            query, key, value = query.transpose(0, 1), key.transpose(0, 1), value.transpose(0, 1)
        B, L, S, H = query.shape[0], query.shape[1], key.shape[1], self.num_heads
        q = self.q_proj(query).view(B, L, H, self.qk_dim).transpose(1, 2)
        k = self.k_proj(key).view(B, S, H, self.qk_dim).transpose(1, 2)
        v = self.v_proj(value).view(B, S, H, self.v_dim).transpose(1, 2)
        scores = (q * self.scale) @ k.transpose(-2, -1)  # [B, H, L, S]
        if attn_mask is not None:  # [L, S] or [B * H, L, S]: both broadcast over [B * H, L, S] (and a mask that is a
            # buffer, no traced value, needs no traced size: fx traces this forward when a copy is compacted again)
            m, flat = attn_mask, scores.flatten(0, 1)
            flat = flat.masked_fill(m, float("-inf")) if self.bool_attn_mask else flat + m
            scores = flat.unflatten(0, (-1, H))
        if key_padding_mask is not None:
            p = key_padding_mask[:, None, None, :]  # [B, 1, 1, S]
            scores = scores.masked_fill(p, float("-inf")) if self.bool_padding_mask else scores + p
        weights = self.drop(scores.softmax(-1))
        out = self.out_proj((weights @ v).transpose(1, 2).reshape(B, L, H * self.v_dim))
        if not batched:
            out = out.squeeze(0)
        elif not self.batch_first:
            out = out.transpose(0, 1)
        if not need_weights:
            return out, None
        w = weights.mean(1) if average_attn_weights else weights
        return out, (w if batched else w.squeeze(0))


def _projections(m: nn.MultiheadAttention):
    """(weight, bias) of the query, key and value projections (bias zeros where there is none)."""
    E = m.embed_dim
    if m._qkv_same_embed_dim:
        ws = m.in_proj_weight.detach().chunk(3)
    else:
        ws = (m.q_proj_weight.detach(), m.k_proj_weight.detach(), m.v_proj_weight.detach())
    b = m.in_proj_bias.detach() if m.in_proj_bias is not None else ws[0].new_zeros(3 * E)
    return list(zip(ws, b.chunk(3)))


def _kept(removable: Tensor, heads: int, align: int = 1) -> Tensor:
    """Flags of the channels kept: per head, all but its first ``n`` removable ones, ``n`` the fewest any head has,
    lowered where need be so that the projection keeps a multiple of ``align`` channels (``heads`` times the width
    of a head; none removed where no such width is within reach, as a Linear keeps its width then)."""
    r = removable.view(heads, -1)
    n = int(r.sum(1).min())
    while n and (heads * (r.shape[1] - n)) % align:
        n -= 1
    first = (r.cumsum(1) <= n) & r
    return ~first.reshape(-1)


def _linear(w: Tensor, b: Optional[Tensor], grad: bool) -> nn.Linear:
    """An ``nn.Linear`` holding copies of ``w`` and ``b``, its parameters requiring grad as ``grad`` says (a frozen
    attention stays frozen)."""
    layer = nn.Linear(w.shape[1], w.shape[0], bias=b is not None, device=w.device, dtype=w.dtype)
    with torch.no_grad():
        layer.weight.copy_(w)
        if b is not None:
            layer.bias.copy_(b)
    return layer.requires_grad_(grad)


def shrink_attention(m: nn.MultiheadAttention, batched: bool = True, bool_masks: Tuple[bool, bool] = (True, True),
                     align: int = 1) -> Optional[Tuple[CompactAttention, Dict[str, int]]]:
    """``m`` as a :class:`CompactAttention` without the channels that may go (see the module docstring), and the
    channels removed per part (``q``, ``k``, ``v``); None where none may (or ``m`` is no plain attention).
    ``batched`` and ``bool_masks``: what its call is given (see :class:`CompactAttention`); ``align``:
    :func:`graphs.compact`'s, each projection keeping a multiple of it."""
    if type(m) is not nn.MultiheadAttention or m.bias_k is not None or m.add_zero_attn:
        return None
    E, H = m.embed_dim, m.num_heads
    (wq, bq), (wk, bk), (wv, bv) = _projections(m)
    wo, bo = m.out_proj.weight.detach(), m.out_proj.bias
    pinned_k = ~(wk != 0).any(1)
    zero_q = ~(wq != 0).any(1) & (bq == 0)
    pinned_v = ~(wv != 0).any(1)
    unread_v = ~(wo != 0).any(0)
    keep_qk = _kept(pinned_k | zero_q, H, align)
    keep_v = _kept(pinned_v | unread_v, H, align)
    if bool(keep_qk.all()) and bool(keep_v.all()):
        return None
    bias = m.in_proj_bias is not None
    grad = any(p.requires_grad for n, p in m.named_parameters(recurse=False))
    folded = wo[:, ~keep_v] @ torch.where(unread_v, 0.0, bv)[~keep_v]  # a pinned value's bias, through out_proj
    out_bias = (bo.detach() if bo is not None else wo.new_zeros(E)) + folded
    has_out_bias = bo is not None or bool((folded != 0).any())
    new = CompactAttention(
        _linear(wq[keep_qk], bq[keep_qk] if bias else None, grad),
        _linear(wk[keep_qk], bk[keep_qk] if bias else None, grad),
        _linear(wv[keep_v], bv[keep_v] if bias else None, grad),
        _linear(wo[:, keep_v], out_bias if has_out_bias else None, m.out_proj.weight.requires_grad),
        H, 1.0 / math.sqrt(E // H), m.dropout, m.batch_first, batched, bool_masks)
    gone = {"q": int((~keep_qk).sum()), "k": int((~keep_qk).sum()), "v": int((~keep_v).sum())}
    return new.train(m.training), gone


def _given(n: fx.Node, env: dict, i: int, key: str):
    """The probe's value of argument ``i`` (or keyword ``key``) of call ``n``: None where it is not given, ``...``
    where the probe holds none."""
    a = n.args[i] if len(n.args) > i else n.kwargs.get(key)
    if not isinstance(a, fx.Node):
        return a
    return env.get(a, ...)


def compact_attention(gm: fx.GraphModule, env: dict, root: Optional[nn.Module] = None,
                      align: int = 1) -> Dict[str, int]:
    """Replace every ``nn.MultiheadAttention`` of ``gm`` that may lose channels (called once, as a whole, with no
    hooks; see the module docstring) by its :class:`CompactAttention`, in ``root`` (the module ``gm`` was traced
    from, whose submodules have the same names; None: ``gm`` itself); ``env``: the probe's values of the nodes, which
    say whether the call's inputs are batched and its masks boolean; ``align``: :func:`graphs.compact`'s (every
    projection keeps a multiple of it). Returns the channels removed, keyed ``NAME.q``, ``NAME.k`` and ``NAME.v``
    as the graph's layers are named.

    :func:`graphs.compact` puts them into the model it copies, then traces it again, through each
    :class:`CompactAttention`, whose projections are Linears: the plan shrinks them as any, in the same pass."""
    calls: Dict[str, int] = {}
    node_of: Dict[str, fx.Node] = {}
    reads = set()
    for n in gm.graph.nodes:
        if n.op == "call_module":
            calls[str(n.target)] = calls.get(str(n.target), 0) + 1
            node_of[str(n.target)] = n
        elif n.op == "get_attr":
            reads.add(str(n.target))
    owners: Dict[int, set] = {}  # each parameter's owners, by path: a tied one (or an aliased module) has several
    for path, mod in gm.named_modules(remove_duplicate=False):
        for p in mod.parameters(recurse=False):
            owners.setdefault(id(p), set()).add(path)
    removed: Dict[str, int] = {}
    for name, count in calls.items():
        m = gm.get_submodule(name)
        if type(m) is not nn.MultiheadAttention or count != 1 or m._forward_hooks or m._forward_pre_hooks:
            continue
        inner = [t for t in list(calls) + list(reads) if t.startswith(name + ".")]
        shared = [o for p in m.parameters() for o in owners[id(p)] if o != name and not o.startswith(name + ".")]
        if inner or shared:  # a copy would untie what another module holds too
            continue
        query, mask, pad = (_given(node_of[name], env, i, k) for i, k in
                            ((0, "query"), (5, "attn_mask"), (3, "key_padding_mask")))
        if not isinstance(query, torch.Tensor) or any(t is ... for t in (mask, pad)):
            continue  # what it is given is not known
        bool_masks = tuple(not isinstance(t, torch.Tensor) or t.dtype == torch.bool for t in (mask, pad))
        shrunk = shrink_attention(m, query.dim() == 3, bool_masks, align)
        if shrunk is None:
            continue
        new, gone = shrunk
        parent, _, child = name.rpartition(".")
        home = root if root is not None else gm
        setattr(home.get_submodule(parent) if parent else home, child, new)
        removed.update({f"{name}.{t}": v for t, v in gone.items()})
    return removed
