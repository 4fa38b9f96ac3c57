"""The book a trace is written in as the model runs (:class:`_Book`): it allocates node ids in contiguous groups,
turns the sources of each row into one node (a junction where there are several) and records the layers, junction
wires, recurrent back edges, concatenations and unknown ops; a rule that fails halfway is undone from a snapshot."""
from __future__ import annotations

from typing import Dict, List, Tuple

import torch

from .trace_types import Group, LayerFlow


def _truncate(d: dict, n: int) -> None:
    """Drop the entries of ``d`` added after its first ``n``."""
    for k in list(d)[n:]:
        del d[k]


class _Book:
    """Allocates node ids and records junction wires and recurrent back edges."""

    def __init__(self):
        self.groups: List[Group] = [Group("constant", "constant", "zero", 0, 1)]
        self.n = 1
        self.wires: Dict[int, Tuple[torch.Tensor, torch.Tensor]] = {}
        self.layers: List[LayerFlow] = []
        self.concats: List[dict] = []
        self.warnings: List[str] = []
        self.recurrent: Dict[int, Tuple[torch.Tensor, torch.Tensor]] = {}
        self.unknown: List[Tuple[int, str]] = []
        self.unknown_weights: Dict[str, List[str]] = {}
        self._uses: Dict[tuple, int] = {}  # (param, rows) -> layers of self.layers[:self._counted] that are them
        self._counted = 0

    def snapshot(self) -> tuple:
        """Sizes of what is recorded (every record only grows: lists and insertion-ordered dicts)."""
        return (self.n, len(self.groups), len(self.layers), len(self.wires), len(self.recurrent), len(self.concats))

    def restore(self, snap: tuple) -> None:
        """Forget what was recorded since ``snap`` (a rule that failed halfway leaves nothing behind)."""
        self.n, ng, nl, nw, nr, nc = snap
        for layer in self.layers[nl:self._counted]:
            self._uses[(layer.param, layer.rows)] -= 1
        self._counted = min(self._counted, nl)
        del self.groups[ng:], self.layers[nl:], self.concats[nc:]
        _truncate(self.wires, nw)
        _truncate(self.recurrent, nr)

    def uses(self, param: str, rows=None) -> int:
        """How many recorded layers are the rows ``rows`` (None: all) of parameter ``param``: a count per
        (param, rows) brought up to date with the layers appended since the last call, not a scan of
        every layer for each new one (quadratic in the layers)."""
        for layer in self.layers[self._counted:]:
            key = (layer.param, layer.rows)
            self._uses[key] = self._uses.get(key, 0) + 1
        self._counted = len(self.layers)
        return self._uses.get((param, rows), 0)

    def new_group(self, name, kind, op, count, layer=-1) -> Tuple[int, int]:
        start = self.n
        self.groups.append(Group(name, kind, op, start, int(count), layer))
        self.n += int(count)
        return len(self.groups) - 1, start

    def combine(self, row: torch.Tensor, val: torch.Tensor, nrows: int, name: str, op: str) -> torch.Tensor:
        """Each row is fed by the node ids ``val`` listed with it; returns one id per row: 0 when
        no non-constant source, the source itself when there is one, else a new junction node."""
        keep = val != 0
        row, val = row[keep], val[keep]
        n = max(self.n, 1)
        key = torch.unique(row * n + val)
        r, v = key // n, key % n
        cnt = torch.bincount(r, minlength=nrows)
        out = torch.zeros(nrows, dtype=torch.long)
        one = cnt[r] == 1
        out[r[one]] = v[one]
        multi = (cnt >= 2).nonzero().flatten()
        if multi.numel():
            gid, start = self.new_group(name, "junction", op, multi.numel())
            jid = torch.full((nrows,), -1, dtype=torch.long)
            jid[multi] = torch.arange(start, start + multi.numel())
            out[multi] = jid[multi]
            many = ~one
            self.wires[gid] = (v[many], jid[r[many]])
        return out
