"""The rules of per-channel and elementwise ops: activations and pooling keep channel ids; normalisations,
softmax and ``F.normalize`` add *statistics* junctions; arithmetic of several tensors and reductions create
junctions. As :class:`FlowChannelsMixin`, which :class:`~graphs.flow.FlowProp` inherits.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from . import ops
from .id_tensors import _expand, _squeeze_uniform, _uniform_except


class FlowChannelsMixin:
    """The per-channel rules of :class:`~graphs.flow.FlowProp` (they read its flows and write junctions to its book)."""

    def _on_pointwise(self, n, result):
        x = self._flow_of(n.args[0]) if n.args else None
        if not isinstance(x, torch.Tensor) or not isinstance(result, torch.Tensor):
            raise ValueError("no tensor input")
        if tuple(result.shape) == tuple(x.shape):
            return x
        if result.dim() == x.dim() and result.shape[1] == x.shape[1]:
            return _expand(self.readout(x, 1, n.name), result.shape, 1)
        raise ValueError(f"a per-channel op changed the channel count ({tuple(x.shape)} -> {tuple(result.shape)})")

    def _on_normalize(self, n, module, result):
        """LayerNorm (RMSNorm) / GroupNorm: output channel ``c`` is a junction of input channel ``c`` and one
        *statistics* junction per normalised group of channels (all of them for a LayerNorm over the
        channel axis; a LayerNorm over positions only acts on each channel alone). A LayerNorm's channel
        axis is the one axis along which the units vary (the last for a channels-last map), else the
        last of a sequence's and axis 1 of a map."""
        x = self._flow_of(n.args[0]) if n.args else None
        if not isinstance(x, torch.Tensor) or not isinstance(result, torch.Tensor):
            raise ValueError("no tensor input")
        real = lambda i, key: self._real(n.args[i]) if len(n.args) > i else self._real(n.kwargs.get(key))
        nd = x.dim()
        if isinstance(module, ops.ALONG_DIM_MODULES) or n.target in ops.ALONG_DIM_FUNCTIONS or n.target in ops.ALONG_DIM_METHODS:
            return self._on_along_dim(n, module, x, result)
        if isinstance(module, nn.LocalResponseNorm) or n.target is F.local_response_norm:
            size = int(module.size if module is not None else real(1, "size"))
            return _expand(self._windowed(self.readout(x, 1, f"{n.name}.input"), size, n.name), result.shape, 1)
        if isinstance(module, nn.GroupNorm) or n.target is F.group_norm:
            axis, groups = 1, int(module.num_groups if module is not None else real(1, "num_groups"))
        else:
            shape = module.normalized_shape if module is not None else real(1, "normalized_shape")
            k = 1 if isinstance(shape, int) else len(shape)
            axis = nd - 1 if nd <= 3 else 1  # channels last for sequences, first after the batch for maps
            # unless the ids say otherwise: units on the last axis only (a ConvNeXt block permutes its map
            # to channels last before its LayerNorm), or on axis 1 only (a Conv1d's [N, C, L] output)
            last, first = _uniform_except(x, nd - 1), _uniform_except(x, 1)
            if last != first:
                axis = nd - 1 if last else 1
            if axis < nd - k:  # normalised over positions only: each channel alone
                return self._on_pointwise(n, result)
            groups = 1
        out = self._normalized(self.readout(x, axis, f"{n.name}.input"), groups, n.name)
        return _expand(out, result.shape, axis)

    def _on_along_dim(self, n, module, x, result):
        """Softmax (log-softmax, softmin) and ``F.normalize`` along ``dim``, followed exactly on the ids:
        each output element is a junction of its own input element and a *statistics* node of every
        element along ``dim`` in its slice (the slices that hold the same ids share one). Along the
        channel axis of a tensor whose units vary along it alone, that is :meth:`_normalized` with one
        group (LayerNorm's wiring); along an axis the ids do not vary on (positions, an attention map's
        keys), every element reads only its own unit: the ids pass unchanged."""
        nd = x.dim()
        if module is not None:
            dim = -3 if isinstance(module, nn.Softmax2d) else module.dim
        elif n.target is F.normalize:
            dim = self._real(n.args[2]) if len(n.args) > 2 else self._real(n.kwargs.get("dim", 1))
        else:
            dim = self._real(n.args[1]) if len(n.args) > 1 else self._real(n.kwargs.get("dim"))
        if dim is None:  # torch's implicit dim (deprecated): 0 for 0-, 1- and 3-d tensors, else 1
            dim = 0 if nd in (0, 1, 3) else 1
        if tuple(result.shape) != tuple(x.shape):
            raise ValueError(f"it changed the shape ({tuple(x.shape)} -> {tuple(result.shape)})")
        d = sorted({int(k) % nd for k in (dim if isinstance(dim, (tuple, list)) else (dim,))})  # F.normalize: several
        s = _squeeze_uniform(x)
        if all(s.shape[k] == 1 for k in d):
            return x
        ends = list(range(nd - len(d), nd))
        t = s.movedim(d, ends)
        L = math.prod(t.shape[nd - len(d):])
        rows = t.reshape(-1, L).long()
        slices, which = torch.unique(rows, dim=0, return_inverse=True)
        stats = self.book.combine(torch.arange(slices.shape[0]).repeat_interleave(L), slices.reshape(-1),
                                  slices.shape[0], f"{n.name}.statistics", "statistics")
        pairs = torch.stack([rows.reshape(-1), stats[which].repeat_interleave(L)])  # [2, elements]
        combos, inverse = torch.unique(pairs, dim=1, return_inverse=True)
        m = combos.shape[1]
        ids = self.book.combine(torch.arange(m).repeat(2), combos.reshape(-1), m, n.name, "normalize")
        return ids[inverse].to(torch.float64).view(t.shape).movedim(ends, d).expand(result.shape)

    def _windowed(self, ch, size, name):
        """Channel sources ``ch`` after a LocalResponseNorm of ``size``: channel ``c`` is scaled by the
        squares of channels ``c - size // 2`` to ``c + (size - 1) // 2``, so it is a junction of them all."""
        C = ch.numel()
        src = torch.arange(C)[:, None] + torch.arange(-(size // 2), (size - 1) // 2 + 1)[None, :]
        row = torch.arange(C)[:, None].expand_as(src)
        ok = (src >= 0) & (src < C)
        return self.book.combine(row[ok], ch[src[ok]], C, name, "normalize")

    def _normalized(self, ch, groups, name):
        """Channel sources ``ch`` after a normalisation whose statistics span ``groups`` equal groups
        of channels: channel ``c`` becomes a junction of ``ch[c]`` and its group's statistics node."""
        C = ch.numel()
        if C % groups:
            raise ValueError(f"{C} channels do not split into {groups} groups")
        group_of = torch.arange(C) // (C // groups)
        stats = self.book.combine(group_of, ch, groups, f"{name}.statistics", "statistics")
        return self.book.combine(torch.arange(C).repeat(2), torch.cat([ch, stats[group_of]]), C, name, "normalize")

    def _on_broadcast(self, n, result):
        return self._junction(n, self._tensor_flows((n.args, n.kwargs)), result)

    def _junction(self, n, flows, result):
        """Each element of ``result`` fed by the elements of ``flows`` it is computed from, broadcast to its
        shape: the source itself where they agree, else a junction of them."""
        if not isinstance(result, torch.Tensor):
            raise ValueError("non-tensor result")
        if not flows:
            return self._constant_like(result)
        if len(flows) == 1:
            if tuple(flows[0].shape) == tuple(result.shape):
                return flows[0]
            return flows[0].expand(result.shape) if flows[0].dim() == result.dim() else torch.broadcast_to(flows[0], result.shape)
        small = torch.broadcast_tensors(*[_squeeze_uniform(f) for f in flows])
        shape = small[0].shape
        stacked = torch.stack([s.reshape(-1) for s in small]).long()  # [k, P]
        combos, inverse = torch.unique(stacked, dim=1, return_inverse=True)
        k, m = combos.shape
        row = torch.arange(m).repeat(k)
        op = getattr(n.target, "__name__", str(n.target)).strip("_")
        ids = self.book.combine(row, combos.reshape(-1), m, n.name, op)
        return ids[inverse].to(torch.float64).view(shape).expand(result.shape)

    def _on_reduce(self, n, result):
        x = self._flow_of(n.args[0])
        if not isinstance(x, torch.Tensor):
            raise ValueError("no tensor input")
        args = [self._real(a) for a in n.args[1:]]
        kwargs = {k: self._real(v) for k, v in n.kwargs.items() if k != "dtype"}
        if isinstance(result, tuple):  # x.max(dim): values and indices, each reading every element along dim
            one = self._on_reduce_one(n, x, args, kwargs, result[0])
            return type(result)((one, one))  # torch.return_types.max: its .values and .indices read as the result's
        return self._on_reduce_one(n, x, args, kwargs, result)

    def _on_reduce_one(self, n, x, args, kwargs, result):
        # the constant (zero padding) is no source: a padded map's mean is still each channel's own
        hi = torch.amax(x, *args, **kwargs)
        lo = torch.amin(torch.where(x == 0, torch.inf, x), *args, **kwargs)
        if torch.equal(hi, torch.where(torch.isinf(lo), 0.0, lo)):
            return hi
        return self._mix(n, [x], result, "reduce")
