"""The rules of attention: ``nn.MultiheadAttention``, ``F.scaled_dot_product_attention`` and torch's standard
transformer layers, whose wiring is written out at the level of channels. As :class:`FlowAttentionMixin`, which
:class:`~graphs.flow.FlowProp` inherits.
"""
from __future__ import annotations

import operator

import torch
from torch import nn

from .id_tensors import _expand, _squeeze_uniform


def _check_standard_transformer(module: nn.Module) -> None:
    """The transformer rules write out the standard layers' forward: refuse anything else (a custom
    layer inside nn.TransformerEncoder, a custom encoder inside nn.Transformer) before recording."""
    enc_dec = {nn.TransformerEncoder: nn.TransformerEncoderLayer, nn.TransformerDecoder: nn.TransformerDecoderLayer}
    parts = [module]
    if type(module) is nn.Transformer:
        parts = [module.encoder, module.decoder]
    for part in parts:
        kind = type(part)
        if kind in enc_dec:
            odd = [type(layer).__name__ for layer in part.layers if type(layer) is not enc_dec[kind]]
        else:
            odd = [] if kind in enc_dec.values() else [kind.__name__]
        if odd:
            raise ValueError(f"its parts are not the standard torch layers ({', '.join(sorted(set(odd)))}), whose "
                             "wiring the graph writes out; write the model with standard layers or your own modules")


class FlowAttentionMixin:
    """The attention rules of :class:`~graphs.flow.FlowProp` (they use its layer and normalisation rules)."""

    def _on_attention(self, n, module, result):
        """``nn.MultiheadAttention`` called on traced query, key and value tensors (see
        :meth:`_attention_units`); ``F.scaled_dot_product_attention`` (see :meth:`_on_sdpa`)."""
        if n.op == "call_function":
            return self._on_sdpa(n, result)
        name = str(n.target)
        flows = [self._arg(n, i, k) for i, k in enumerate(("query", "key", "value"))]
        if any(not isinstance(f, torch.Tensor) for f in flows):
            raise ValueError("a query, key or value input carries no traced data")
        srcs = [self.readout(f, -1, f"{name}.{t}.input") for f, t in zip(flows, "qkv")]
        out, q, k = self._attention_units(module, name, srcs, n.name)
        y, weights = result if isinstance(result, (tuple, list)) else (result, None)
        flow_y = _expand(out, y.shape, -1)
        read = any(u.target is operator.getitem and u.args[1] == 1 for u in n.users)
        if not isinstance(weights, torch.Tensor) or not read:  # the attention weights, if the model reads them
            return (flow_y, None)
        score = self.book.combine(torch.zeros(2 * q.numel(), dtype=torch.long), torch.cat([q, k]), 1,
                                  f"{name}.weights", "attention")
        return (flow_y, torch.full((), float(score[0]), dtype=torch.float64).expand(weights.shape))

    def _attention_units(self, module, name, srcs, node_name):
        """The units of one ``nn.MultiheadAttention`` reading channel sources ``srcs`` (query, key,
        value): three layers of ``embed_dim`` units (queries, keys, values: rows of ``in_proj_weight``
        or the separate ``q/k/v_proj_weight``), then ``out_proj``. Attention mixes positions, not
        channels within a head: output channel ``c`` of head ``h`` is a sum of value unit ``c``
        weighted by scores computed from the query and key units of head ``h``. So head ``h``'s
        query and key units feed one junction, its scores (op ``attention_scores``), and output
        channel ``c`` is a junction (op ``attention``) of value unit ``c`` and those scores. The
        weights of a softmax sum to 1, so where value unit ``c`` holds its bias at every position
        (no live synapse) the channel is that constant whatever the scores: the analysis
        (:func:`graphs.analysis.closed_gates`) then passes nothing through the scores' wire; nor
        through the wires of query and key unit ``c`` of a head into its scores where key unit ``c``
        has no live synapse (a term the softmax over key positions ignores), or where query unit ``c`` has none and
        no bias (a term that is 0; :func:`graphs.graph._zero_queries` marks such queries). With
        ``add_bias_kv`` or ``add_zero_attn`` an appended key/value position differs from that
        constant, so the scores always count: channel ``c`` is then one junction of value unit ``c``
        and the head's query and key units. Returns (out_proj units, query units, key units)."""
        E, H = int(module.embed_dim), int(module.num_heads)
        if module._qkv_same_embed_dim:
            parts = [("in_proj_weight", (i * E, (i + 1) * E)) for i in range(3)]
        else:
            parts = [(f"{t}_proj_weight", None) for t in "qkv"]
        q, k, v = (self._matrix_layer(module, name, attr, f"{name}.{tag}", src, node_name, rows)
                   for (attr, rows), tag, src in zip(parts, "qkv", srcs))
        d = E // H
        per_head = torch.stack([q, k]).view(2, H, d).permute(1, 0, 2).reshape(H, 2 * d)
        if module.bias_k is None and not module.add_zero_attn:
            per_head = self.book.combine(torch.arange(H).repeat_interleave(2 * d), per_head.reshape(-1), H,
                                         f"{name}.scores", "attention_scores").view(H, 1)
        feeds = torch.cat([v.view(E, 1), per_head[torch.arange(E) // d]], dim=1)  # [E, 2] or [E, 2d + 1]
        mixed = self.book.combine(torch.arange(E).repeat_interleave(feeds.shape[1]), feeds.reshape(-1), E,
                                  f"{name}.attention", "attention")
        out = self._matrix_layer(module.out_proj, f"{name}.out_proj", "weight", f"{name}.out_proj", mixed, node_name)
        return out, q, k

    def _on_sdpa(self, n, result):
        """``F.scaled_dot_product_attention(q, k, v, attn_mask, ...)``: tensors ``[*B, L, E]`` (``*B`` the
        batch and head axes), output ``[*B, L, Ev]``. Output channel ``c`` at batch/head index ``b`` is a
        junction of value channel ``c`` and every query and key channel at ``b`` (and of a traced
        mask's ids), as :meth:`_attention_units` wires ``nn.MultiheadAttention``: the weights mix
        positions, so each channel's ids along the sequence axis are merged first (a junction where
        they differ). With ``enable_gqa`` key/value head ``j`` serves query heads ``j*r .. j*r+r-1``."""
        q, k, v = (self._arg(n, i, key) for i, key in enumerate(("query", "key", "value")))
        if any(not isinstance(f, torch.Tensor) for f in (q, k, v)):
            raise ValueError("a query, key or value input carries no traced data")
        gqa = self._real(n.args[7]) if len(n.args) > 7 else self._real(n.kwargs.get("enable_gqa", False))
        if gqa and q.dim() >= 3 and k.shape[-3] != q.shape[-3]:
            r = q.shape[-3] // k.shape[-3]
            k, v = k.repeat_interleave(r, dim=-3), v.repeat_interleave(r, dim=-3)
        qc, kc, vc = (self._positions_merged(f, -2, f"{n.name}.{t}") for f, t in zip((q, k, v), "qkv"))
        parts = [qc.unsqueeze(-2), kc.unsqueeze(-2), vc.unsqueeze(-1)]  # [*B, 1, 1, E], ..., [*B, 1, Ev, 1]
        mask = self._arg(n, 3, "attn_mask")
        if isinstance(mask, torch.Tensor):  # [*B, L, S]: its ids at b, all positions
            m = self._positions_merged(self._positions_merged(mask, -1, f"{n.name}.mask"), -2, f"{n.name}.mask")
            parts.append(m.unsqueeze(-1))
        target = torch.broadcast_shapes(*(p.shape[:-1] for p in parts))  # [*B, 1, Ev]
        feeds = torch.cat([torch.broadcast_to(p, tuple(target) + (p.shape[-1],)) for p in parts], -1)
        K = feeds.shape[-1]
        combos, inverse = torch.unique(feeds.reshape(-1, K).long(), dim=0, return_inverse=True)
        ids = self.book.combine(torch.arange(combos.shape[0]).repeat_interleave(K), combos.reshape(-1),
                                combos.shape[0], n.name, "attention")
        return torch.broadcast_to(ids[inverse].to(torch.float64).view(target), result.shape)

    def _positions_merged(self, t, axis, name):
        """``t`` with ``axis`` shrunk to size 1, each entry the node of all the ids along ``axis`` beside it
        (a junction where they differ); other axes along which ``t`` is constant shrink to 1 too."""
        s = _squeeze_uniform(t)
        axis = axis % s.dim()
        if s.shape[axis] == 1:
            return s
        m = s.movedim(axis, -1)
        L = m.shape[-1]
        rows = m.reshape(-1, L).long()
        ids = self.book.combine(torch.arange(rows.shape[0]).repeat_interleave(L), rows.reshape(-1), rows.shape[0],
                                name, "mix")
        return ids.to(torch.float64).view(m.shape[:-1]).unsqueeze(axis)

    # nn.Transformer and its parts: fx cannot trace into them (their fast-path checks branch on
    # tensor properties), so their wiring is written out here, at the level of channels. Dropout
    # keeps each channel's source; residual sums are junctions; LayerNorms are as _on_normalize.
    def _on_transformer(self, n, module, result):
        name = str(n.target)
        _check_standard_transformer(module)
        if isinstance(module, (nn.TransformerEncoderLayer, nn.TransformerEncoder)):
            flows = [self._arg(n, 0, "src")]
        elif isinstance(module, (nn.TransformerDecoderLayer, nn.TransformerDecoder)):
            flows = [self._arg(n, 0, "tgt"), self._arg(n, 1, "memory")]
        else:  # nn.Transformer(src, tgt): the decoder's input first, then the encoder's
            flows = [self._arg(n, 1, "tgt"), self._arg(n, 0, "src")]
        if any(not isinstance(f, torch.Tensor) for f in flows):
            raise ValueError("an input carries no traced data")
        ids = [self.readout(f, -1, f"{name}.input{i}") for i, f in enumerate(flows)]
        if isinstance(module, nn.TransformerEncoderLayer):
            out = self._encoder_layer(module, name, ids[0], n.name)
        elif isinstance(module, nn.TransformerDecoderLayer):
            out = self._decoder_layer(module, name, ids[0], ids[1], n.name)
        elif isinstance(module, nn.TransformerEncoder):
            out = self._encoder(module, name, ids[0], n.name)
        elif isinstance(module, nn.TransformerDecoder):
            out = self._decoder(module, name, ids[0], ids[1], n.name)
        else:
            memory = self._encoder(module.encoder, f"{name}.encoder", ids[1], n.name)
            out = self._decoder(module.decoder, f"{name}.decoder", ids[0], memory, n.name)
        return _expand(out, result.shape, -1)

    def _feed_forward(self, layer, name, x, node_name):
        h = self._matrix_layer(layer.linear1, f"{name}.linear1", "weight", f"{name}.linear1", x, node_name)
        return self._matrix_layer(layer.linear2, f"{name}.linear2", "weight", f"{name}.linear2", h, node_name)

    def _blocks(self, layer, name, x, blocks):
        """Residual blocks ``x + f(x)``, each with its LayerNorm before ``f`` (``norm_first``) or
        after the sum, as the torch layer runs them; ``blocks``: (tag, f) pairs, norm1, norm2, ..."""
        for i, (tag, f) in enumerate(blocks, 1):
            norm = lambda ids: self._normalized(ids, 1, f"{name}.norm{i}")
            if layer.norm_first:
                x = self._residual(x, f(norm(x)), f"{name}.{tag}")
            else:
                x = norm(self._residual(x, f(x), f"{name}.{tag}"))
        return x

    def _encoder_layer(self, layer, name, x, node_name):
        return self._blocks(layer, name, x, [
            ("add1", lambda h: self._attention_units(layer.self_attn, f"{name}.self_attn", [h, h, h], node_name)[0]),
            ("add2", lambda h: self._feed_forward(layer, name, h, node_name))])

    def _decoder_layer(self, layer, name, x, mem, node_name):
        return self._blocks(layer, name, x, [
            ("add1", lambda h: self._attention_units(layer.self_attn, f"{name}.self_attn", [h, h, h], node_name)[0]),
            ("add2", lambda h: self._attention_units(layer.multihead_attn, f"{name}.multihead_attn", [h, mem, mem],
                                                     node_name)[0]),
            ("add3", lambda h: self._feed_forward(layer, name, h, node_name))])

    def _encoder(self, enc, name, x, node_name):
        for i, layer in enumerate(enc.layers):
            x = self._encoder_layer(layer, f"{name}.layers.{i}", x, node_name)
        return x if enc.norm is None else self._normalized(x, 1, f"{name}.norm")

    def _decoder(self, dec, name, x, mem, node_name):
        for i, layer in enumerate(dec.layers):
            x = self._decoder_layer(layer, f"{name}.layers.{i}", x, mem, node_name)
        return x if dec.norm is None else self._normalized(x, 1, f"{name}.norm")
