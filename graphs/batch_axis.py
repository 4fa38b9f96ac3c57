"""Which axis of an input holds its batch: axis 1 for the sequences of a sequence-first model ([T, B, F]
features, [T, B] tokens, read by ``nn.MultiheadAttention``, the transformer layers and ``nn.LSTM`` & co.
with ``batch_first=False``, torch's default), axis 0 otherwise.

The layers' flag alone does not tell: a model may take batch-first inputs and transpose them for its
sequence-first layers itself (``attn(x.transpose(0, 1), ...)``). So the input is followed through the fx
graph to the layers that read it as a sequence, its axes through the ops on the way (moved by transpose,
permute, movedim; kept by elementwise ops, linear layers, normalisation, embedding); axis 1 holds its batch
when it lands on the batch axis of every such layer reached with the axes known, axis 0 in every other case
(the axes lost on the way, by a reshape or an unknown op: the batch-first reading graphs always had)."""
from __future__ import annotations

from typing import Dict, Optional, Set, Tuple

import torch
import torch.nn.functional as F
from torch import fx, nn

from . import ops

Axes = Tuple[Optional[int], ...]  # for each axis of a value, the input's axis it holds (None: none, or lost)

_SWAPS = {"transpose", "swapaxes", "swapdims"}
_SWAP_FUNCTIONS = {torch.transpose, torch.swapaxes, torch.swapdims}
_KEPT_SHAPE_METHODS = {"contiguous", "clone", "detach"}


def _sequence_arguments(module: nn.Module) -> Tuple[str, ...]:
    """The arguments ``module`` reads as sequences, in forward's order (an RNN's ``hx`` holds its batch on
    axis 1 whatever ``batch_first`` says: not one of them)."""
    if isinstance(module, nn.MultiheadAttention):
        return ("query", "key", "value")
    if isinstance(module, nn.Transformer):
        return ("src", "tgt")
    if isinstance(module, (nn.TransformerDecoder, nn.TransformerDecoderLayer)):
        return ("tgt", "memory")
    if isinstance(module, (nn.TransformerEncoder, nn.TransformerEncoderLayer)):
        return ("src",)
    if isinstance(module, nn.RNNBase):
        return ("input",)
    return ()


def _layer_batch_axis(module: nn.Module) -> Optional[int]:
    """The batch axis of the sequences ``module`` reads: 0 when its attention and recurrent layers are all
    batch_first, 1 when none is, None when they disagree."""
    firsts = {bool(m.batch_first) for m in module.modules() if isinstance(m, (nn.MultiheadAttention, nn.RNNBase))}
    return {frozenset({True}): 0, frozenset({False}): 1}.get(frozenset(firsts))


def _dim(d, rank: int) -> Optional[int]:
    return d % rank if isinstance(d, int) and rank and -rank <= d < rank else None


def _moved(user: fx.Node, module: Optional[nn.Module], axes: Axes) -> Optional[Axes]:
    """The axes of ``user``'s value, given ``axes`` of its tensor argument followed; None where ``user``
    moves them in a way not followed (a reshape, an indexing, an unknown op)."""
    rank, target = len(axes), user.target
    if user.op == "call_method" and target in _SWAPS or user.op == "call_function" and target in _SWAP_FUNCTIONS:
        a, b = (_dim(d, rank) for d in (list(user.args[1:3]) + [user.kwargs.get(k) for k in ("dim0", "dim1")])[:2])
        if a is None or b is None:
            return None
        moved = list(axes)
        moved[a], moved[b] = axes[b], axes[a]
        return tuple(moved)
    if target == "t" and user.op == "call_method" and rank == 2:
        return axes[::-1]
    if target in ("permute", torch.permute):
        dims = user.args[1:] if user.op == "call_method" else user.args[1:2]
        dims = tuple(dims[0]) if len(dims) == 1 and isinstance(dims[0], (tuple, list)) else tuple(dims)
        order = [_dim(d, rank) for d in dims]
        return tuple(axes[d] for d in order) if None not in order and sorted(order) == list(range(rank)) else None
    if target in ("movedim", torch.movedim) and len(user.args) == 3:
        src, dst = _dim(user.args[1], rank), _dim(user.args[2], rank)
        if src is None or dst is None:
            return None
        moved = [a for i, a in enumerate(axes) if i != src]
        moved.insert(dst, axes[src])
        return tuple(moved)
    if user.op == "call_method" and target in _KEPT_SHAPE_METHODS:
        return axes
    if target is F.linear or isinstance(module, nn.Linear):
        return axes[:-1] + (None,)  # new features on the last axis
    category = ops.categorize(user, module)
    if category in ("pointwise", "broadcast", "normalize"):
        return axes
    if category == "lookup" and not isinstance(module, nn.EmbeddingBag) and user.target is not F.embedding_bag:
        return axes + (None,)
    if category == "weighted":  # a convolution: batch and positions kept, axis 1 its channels
        return (axes[0], None) + axes[2:]
    return None


def input_batch_axes(gm: fx.GraphModule, starts: Dict[str, Tuple[fx.Node, int]]) -> Dict[str, int]:
    """The batch axis of each input ``starts`` names (its node in ``gm`` and its rank; a tuple input's items are
    their ``getitem`` nodes): 1 where the input reaches the sequence-reading layers with its axis 1 on
    their batch axis, every time its axes are known there; 0 otherwise (see the module docstring)."""
    mods = dict(gm.named_modules())
    found = {}
    for name, (start, rank) in starts.items():
        votes: Set[Optional[int]] = set()
        todo, seen = [(start, tuple(range(rank)))], set()
        while todo:
            node, axes = todo.pop()
            for user in node.users:
                module = mods.get(user.target) if user.op == "call_module" else None
                sequences = _sequence_arguments(module) if module is not None else ()
                if sequences:
                    given = list(user.args[:len(sequences)]) + [user.kwargs.get(k) for k in sequences[len(user.args):]]
                    if any(a is node for a in given):
                        b = _layer_batch_axis(module)  # of batched sequences, 3-D; a 2-D one is unbatched
                        votes.add(axes[b] if b is not None and len(axes) == 3 else None)
                    continue
                moved = _moved(user, module, axes) if (user, axes) not in seen else None
                if moved is not None:
                    seen.add((user, axes))
                    todo.append((user, moved))
        if votes == {1}:
            found[name] = 1
    return found
