"""Line-search rollback: a snapshot of the synapses an edit plan can change, and its restore.

The controller tries an edit, scores it on held-out data and rolls it back when it costs too much
(then tries a part of it). An edit changes only the synapses its plan names: their mask bits, their
weights (pruned to 0.0, grown from 0.0 or an init) and their optimizer moments (reset). So the
snapshot keeps those positions only: a few per cent of a network for a 1% edit, where copying every
edited layer's mask, weight and moments held about 3x the prunable weights. Every shrunk try is a
subset of the plan and each is rolled back before the next, so one snapshot serves all the tries.

Whole layers are kept where an edit can change positions its plan does not name: a layer whose mask
was written in place since it was last set (its next set re-imposes the layer, see
:meth:`Connectome.edited_in_place`). L-BFGS's history (flat vectors over all its parameters, which an
edit drops whole) is kept by reference, as :func:`snapshot_state` keeps it.
"""
from __future__ import annotations

from typing import Dict, Optional

import torch

from .optim_state import restore_state, shaped_state, snapshot_state


def plan_positions(conn, plan) -> Dict[str, Optional[torch.Tensor]]:
    """For each layer ``plan`` names: the flat positions (int64, row-major over the weight's shape)
    of every synapse that the plan, or any part of it, can change when the controller sets it; None
    where the set can change any synapse of the layer (its mask was edited in place)."""
    unknown = [n for n in dict.fromkeys([*plan.prune, *plan.grow]) if n not in conn.masks]
    if unknown:
        raise KeyError(f"plan_positions: the plan names {unknown[:4]}, not layers of the connectome (its layers: "
                       f"{list(conn.masks)[:8]}): build the plan from this connectome's names (conn.names)")
    out = {}
    # the layers' order, not a set's (which differs between runs and between a launch's processes):
    # the restore sets them, and tells the edit listeners of them, in this order
    for n in [n for n in conn.masks if n in plan.prune or n in plan.grow]:
        m, g = conn.masks[n], conn.granularities[n]
        if conn.edited_in_place(n):
            out[n] = None
            continue
        named = [side[n].to(device=m.device, dtype=torch.int64) for side in (plan.prune, plan.grow) if n in side]
        es = tuple(g.ensemble_shape(m.shape))
        if es == tuple(m.shape):  # one synapse per ensemble: the plan's indices are the positions
            out[n] = torch.cat(named) if named else torch.zeros(0, dtype=torch.int64, device=m.device)
            continue
        # The controller sets every ensemble whole (alive where any of its synapses is: ensemble_mask),
        # so the absent synapses of an ensemble only partly present change too, named or not. Per
        # ensemble: 2 where the plan names it (every synapse differs from 2), else whether it is
        # alive (the synapses that differ from that), compared with the mask in one pass.
        code = conn.ensemble_mask(n).to(torch.uint8).reshape(-1)
        for idx in named:
            code[idx] = 2
        where = g.expand(code.view(es), m.shape) != m.view(torch.uint8)
        out[n] = where.reshape(-1).nonzero().squeeze(1)
    return out


def take(t: torch.Tensor, pos: Optional[torch.Tensor]) -> torch.Tensor:
    """A copy of ``t``'s values at the flat positions ``pos`` (all of ``t`` where ``pos`` is None)."""
    if pos is None:
        return t.detach().clone()
    pos = pos.to(t.device)
    if t.is_contiguous():
        return t.detach().view(-1).index_select(0, pos)
    return torch.take(t.detach(), pos)  # row-major positions over any strides (channels_last)


def put_(t: torch.Tensor, pos: Optional[torch.Tensor], values: torch.Tensor) -> None:
    """Write ``values`` (from :func:`take`) back into ``t`` at the flat positions ``pos``, in place."""
    if pos is None:
        t.copy_(values)
        return
    pos = pos.to(t.device)
    if t.is_contiguous():
        t.view(-1).index_copy_(0, pos, values)
    else:
        t.put_(pos, values)


class EditSnapshot:
    """What setting ``plan`` (or any part of it) on ``conn`` can change, saved before it is set: for
    each layer it names, the mask bits, the weights (train mode; mask_only weights follow from the
    masks and ``conn.original``) and the parameter-shaped state of every attached optimizer, at
    :func:`plan_positions` (whole where those are None). :meth:`restore` puts all of it back
    bit for bit, through the connectome's own set (so its bookkeeping and edit listeners follow)."""

    @torch.no_grad()
    def __init__(self, conn, plan):
        self.conn = conn
        self.positions = plan_positions(conn, plan)
        self.masks = {n: take(conn.masks[n], pos) for n, pos in self.positions.items()}
        # a layer whose mask was edited in place: how the connectome knew it (the mask as last set, and which
        # tensor at which version it set), put back after the restore's own set so that the layer still counts
        # as edited in place, and the restore's apply() follows that edit as the next set or apply() would have
        # (moments reset, weights zeroed where the edit pruned), instead of leaving the moments it restored
        # there to move weights the mask says are pruned
        self.in_place = {n: (conn._previous(n, conn.masks[n].device), conn._set_tensor.get(n), conn._set_version.get(n))
                         for n, pos in self.positions.items() if pos is None}
        self.weights = ({n: take(conn.params[n], pos) for n, pos in self.positions.items()}
                        if conn.mode == "train" else {})
        self.state, self.whole_state = [], []
        for opt in (r() for r in conn._optimizers):
            if opt is None:
                continue
            if isinstance(opt, torch.optim.LBFGS):
                self.whole_state += snapshot_state([opt], [])
                continue
            for n, pos in self.positions.items():
                p = conn.params[n]
                self.state += [(opt, p, key, pos, take(v, pos)) for key, v in shaped_state(opt, p)]

    def nbytes(self) -> int:
        """Bytes this snapshot holds (positions once per layer; L-BFGS's history is a reference)."""
        held = [*self.masks.values(), *self.weights.values(), *(e[4] for e in self.state)]
        held += [p for p in self.positions.values() if p is not None]
        return sum(t.numel() * t.element_size() for t in held)

    @torch.no_grad()
    def restore(self, notify: bool = True) -> Dict[str, torch.Tensor]:
        """Undo a trial edit: the masks set back (unvalidated: they are the connectome's own, as they
        were), then the weights and optimizer state put back, and the masks imposed (``conn.apply()``).
        The edit listeners hear of it once it is whole (as of a loaded state), so one that raises
        leaves nothing half put back; ``notify=False``: the caller tells them. Returns what changed
        (``{name: changed bool tensor}``, as :meth:`Connectome.set_masks`)."""
        conn, masks = self.conn, {}
        for n, pos in self.positions.items():
            masks[n] = conn.masks[n].clone() if pos is not None else self.masks[n].clone()
            if pos is not None:
                put_(masks[n], pos, self.masks[n])
        changed = conn._set(conn._unvalidated(masks), notify=False)
        for n, (last, tensor, version) in self.in_place.items():
            conn._last_set[n] = last
            if tensor is None:
                conn._set_tensor.pop(n, None)
                conn._set_version.pop(n, None)
            else:
                conn._set_tensor[n], conn._set_version[n] = tensor, version
        for n, w in self.weights.items():
            put_(conn.params[n], self.positions[n], w)
        for opt, p, key, pos, v in self.state:
            now = (opt.state.get(p) or {}).get(key)
            if isinstance(now, torch.Tensor) and now.shape == p.shape:
                put_(now, pos, v)
        restore_state(self.whole_state)
        conn.apply()
        if changed and notify:
            conn._notify_edit_listeners(changed)
        return changed
