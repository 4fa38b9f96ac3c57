"""In-place changes followed on the ids (``x.add_(y)``, ``torch.fill_(z, v)``, ``self.buf.fill_(h.mean())``): the
nodes that read the changed tensor or an alias of it afterwards read its new ids; a change that cannot reach another
view's ids is warned about. As :class:`FlowInPlaceMixin`, which :class:`~graphs.flow.FlowProp` inherits.
"""
from __future__ import annotations

import torch
from torch import fx

from . import ops
from adaptive.warn import warn_user


def _changes_in_place(n: fx.Node) -> bool:
    """``x.add_(y)``, ``x[:, :2].zero_()``, and torch's own in-place functions (``torch.fill_(x, v)``,
    ``torch.relu_(x)``): a call that changes its first argument."""
    if n.op == "call_method":
        return str(n.target).endswith("_")
    name = getattr(n.target, "__name__", "")
    return (n.op == "call_function" and name.endswith("_") and not name.startswith("_")
            and getattr(torch, name, None) is n.target)


def _same_storage(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether ``a`` and ``b`` hold their values in one memory (a view of it, ``x.detach()``, ``x.data``)."""
    pa = a.untyped_storage().data_ptr()
    return pa != 0 and pa == b.untyped_storage().data_ptr()


def _alias(a, b: torch.Tensor) -> bool:
    """``a`` is ``b``, or the same elements of the same memory (``b.detach()``): a change to one is the other's."""
    return a is b or (isinstance(a, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape
                      and a.stride() == b.stride() and a.storage_offset() == b.storage_offset()
                      and _same_storage(a, b))


class FlowInPlaceMixin:
    """The in-place rules of :class:`~graphs.flow.FlowProp` (they read its env, flows and book)."""

    def _in_place(self, n: fx.Node) -> None:
        """``x.add_(y)`` changes ``x``: the nodes after it that read ``x`` (fx gives them ``x``, not the
        method's result, which may go unused) read the new ids, as do those holding the same tensor
        (the ``y.add_(a)`` of ``y.add_(a).mul_(b)``) or an alias of it (``x.detach().zero_()`` zeroes ``x``).
        torch's own in-place functions (``torch.fill_(z, h.mean())``, ``torch.zero_(x)``) change their first
        argument as the methods do. A change to a view of another tensor (``x[:, :2].add_(y)``), or to a
        tensor with a view of it, cannot reach the other's ids: where the other is read after it, warned,
        and counted as unknown."""
        if not _changes_in_place(n) or not n.args or not isinstance(n.args[0], fx.Node):
            return
        base, new = n.args[0], self.flows.get(n)
        old = self.flows.get(base)
        if not isinstance(new, torch.Tensor) or not isinstance(old, torch.Tensor) or torch.equal(new, old):
            return
        t = self.env.get(base)
        if not isinstance(t, torch.Tensor):
            self.flows[base] = new
            return
        self.written.append((t, new, n))
        for v, r in self.env.items():  # every node holding this very tensor (in-place methods return it)
            if _alias(r, t):
                self.flows[v] = new
        # another view of its memory (``t``'s base, or a view of it, or a tensor sharing its storage: a view of
        # ``x.detach()`` is none of ``x``'s) read after ``n`` keeps its old ids. The env still holds every node
        # read after ``n``, however many views away it is
        root = t if t._base is None else t._base
        order = {m: i for i, m in enumerate(n.graph.nodes)}
        later = [v for v, r in self.env.items() if isinstance(r, torch.Tensor) and not _alias(r, t)
                 and (r is root or r._base is root or _same_storage(r, t))
                 and any(order[u] > order[n] for u in v.users)]
        if later:
            what = ops.describe(n)
            rel = "a view of" if self.env[later[0]] is root else "sharing memory with"
            msg = (f"graphs: node {what} changes {base.name!r} in place, {rel} {later[0].name!r}, which is read "
                   f"again after it: the graph does not see {later[0].name!r} change; write it out of place "
                   f"(x = torch.cat(...) or x = x + ...) to have it followed")
            self._unfollowed(what, msg)

    def _unfollowed(self, what: str, msg: str) -> None:
        self.book.unknown.append((len(self.book.layers), what))
        self.book.warnings.append(msg)
        warn_user(msg)

    def _attr_flow(self, n: fx.Node, result):
        """A parameter's or buffer's ids: a constant, or those an in-place change earlier in the forward wrote to
        it (``self.buf.fill_(h.mean())``, then ``self.buf`` read again). A change to a part of it
        (``self.buf[:2].add_(h)``) is warned about, as one to a view of a tensor read again later is."""
        if isinstance(result, torch.Tensor):
            for t, new, m in reversed(self.written):
                if _alias(result, t):
                    return new
                if _same_storage(result, t):
                    what = ops.describe(m)
                    self._unfollowed(what, f"graphs: node {what} changes a part of {n.target!r} in place, which is "
                                           f"read again after it: the graph does not see {n.target!r} change; write "
                                           "it out of place (x = torch.cat(...) or x = x + ...) to have it followed")
                    break
        return self._constant_like(result)
