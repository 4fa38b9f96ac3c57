"""The channel items of :func:`graphs.compact`: every channel of every tensor node, the links that join those
removed together into classes, and the pins that keep them."""
from __future__ import annotations

from typing import Dict, List, Optional

import torch
from torch import fx

class _Items:
    """Channel items of every tensor node, links between them and pins."""

    def __init__(self):
        self.offset: Dict[fx.Node, int] = {}
        self.count: Dict[fx.Node, int] = {}
        self.axis: Dict[fx.Node, int] = {}  # the channel axis: 1, or the last of a sequence Linear's output
        self.n = 0
        self.links_a: List[torch.Tensor] = []
        self.links_b: List[torch.Tensor] = []
        self.pinned: List[torch.Tensor] = []
        # a split whose parts can be followed -> (its tensor, the split axis, the parts' sizes along it when
        # that is the channel axis, else None: every part holds every channel)
        self.splits: Dict[fx.Node, tuple] = {}
        self.shapes: Dict[fx.Node, object] = {}  # shape reads and numbers computed from them: shape_reads.value
        # the shape values a node uses in a way compact rewrites or follows (a view's channel entry): the channels
        # they count may shrink; any other use of a channel count keeps the channels it counts
        self.counted: Dict[fx.Node, set] = {}
        self.wider: Optional[dict] = None  # the probe's values on an input twice the example's size, if it ran
        # (product, factor): a product's factor on axis 1 whose constant channels are not linked to the product's,
        # which the rewrite fills back with those constants where the factor loses them and the product does not
        self.factors: List[tuple] = []

    def add(self, node, c, axis=1):
        self.offset[node], self.count[node], self.axis[node] = self.n, c, axis
        self.n += c

    def last(self, node, env) -> bool:
        """Are ``node``'s channels on the last axis of a tensor of three or more dimensions?"""
        return node in self.axis and env[node].dim() >= 3 and self.axis[node] == env[node].dim() - 1

    def ids(self, node) -> torch.Tensor:
        return torch.arange(self.offset[node], self.offset[node] + self.count[node])

    def link(self, a, b):
        self.links_a.append(a)
        self.links_b.append(b)

    def pin(self, node):
        if node in self.offset:
            self.pinned.append(self.ids(node))

    def classes(self) -> torch.Tensor:
        label = torch.arange(self.n)
        if not self.links_a:
            return label
        a, b = torch.cat(self.links_a), torch.cat(self.links_b)
        while True:
            m = torch.minimum(label[a], label[b])
            new = label.clone()
            new.scatter_reduce_(0, a, m, "amin")
            new.scatter_reduce_(0, b, m, "amin")
            new = new[new]
            if torch.equal(new, label):
                return label
            label = new


def _tensor_args(node) -> List[fx.Node]:
    found = []
    fx.node.map_arg((node.args, node.kwargs), lambda n: found.append(n) or n)
    return found
