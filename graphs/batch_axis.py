"""Which axes of an input hold its batch and, for per-channel input nodes, its channels.

Its batch: axis 1 for the sequences of a sequence-first model ([T, B, F]
features, [T, B] tokens, read by ``nn.MultiheadAttention``, the transformer layers and ``nn.LSTM`` & co.
with ``batch_first=False``, torch's default), axis 0 otherwise.

The layers' flag alone does not tell: a model may take batch-first inputs and transpose them for its
sequence-first layers itself (``attn(x.transpose(0, 1), ...)``). So the input is followed through the fx
graph to the layers that read it as a sequence, its axes through the ops on the way (moved by transpose,
permute, movedim; kept by elementwise ops, linear layers, normalisation, embedding); axis 1 holds its batch
when it lands on the batch axis of every such layer reached with the axes known, axis 0 in every other case
(the axes lost on the way, by a reshape or an unknown op: the batch-first reading graphs always had).

A caller who knows better fixes it: ``batch_axis=0`` or ``1`` (:func:`checked_batch_axis`) holds for every input
of two axes or more, and nothing is inferred (a model whose sequences reach their layers through a reshape, or
that reads them by position only, leaves the inference nothing to follow).

Its channels, where input nodes are per channel: the axis that the first convolutions or linear layers reading
the input, followed so, take as their input channels (:func:`input_channel_axes`); where that is not known,
axis 1 of a batch-first input, axis 0 of a sequence-first one (axis 1 of its batch-first twin)."""
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


def _follow(gm: fx.GraphModule, start: fx.Node, rank: int, reads) -> Set[Optional[int]]:
    """Follow a value of ``rank`` axes from ``start`` through the ops that move its axes in a known way
    (:func:`_moved`) to the layers ``reads`` stops at: ``reads(user, module, node, axes)`` gives the votes of a
    layer reading ``node`` with ``axes`` (None: an axis not known; empty: it reads no axis of interest), or
    None for an op to follow past. The votes of every layer reached."""
    mods = dict(gm.named_modules())
    votes: Set[Optional[int]] = set()
    todo, seen = [(start, tuple(range(rank)))], set()
    while todo:
        node, axes = todo.pop()
        for user in node.users:
            module = mods.get(user.target) if user.op == "call_module" else None
            read = reads(user, module, node, axes)
            if read is not None:
                votes.update(read)
                continue
            moved = _moved(user, module, axes) if (user, axes) not in seen else None
            if moved is not None:
                seen.add((user, axes))
                todo.append((user, moved))
    return votes


def _sequence_reads(user: fx.Node, module: Optional[nn.Module], node: fx.Node, axes: Axes):
    """The input's axis on the batch axis of a sequence-reading layer reading ``node`` (none where ``node`` is
    not one of its sequences, a recurrent layer's ``hx``); None for any other op."""
    sequences = _sequence_arguments(module) if module is not None else ()
    if not sequences:
        return None
    given = list(user.args[:len(sequences)]) + [user.kwargs.get(k) for k in sequences[len(user.args):]]
    if not any(a is node for a in given):
        return ()
    b = _layer_batch_axis(module)  # of batched sequences, 3-D; a 2-D one is unbatched
    return (axes[b] if b is not None and len(axes) == 3 else None,)


def _channel_reads(user: fx.Node, module: Optional[nn.Module], node: fx.Node, axes: Axes):
    """The input's axis that a convolution (axis 1) or a linear layer (the last axis) reading ``node`` takes
    as its input channels; none where ``node`` is not its input; None for any other op."""
    linear = user.target is F.linear or isinstance(module, nn.Linear)
    if not linear and ops.categorize(user, module) != "weighted":
        return None
    data = user.args[0] if user.args else user.kwargs.get("input")
    if data is not node:
        return ()
    return (axes[-1] if linear else axes[1] if len(axes) > 1 else None,)


def checked_batch_axis(batch_axis) -> Optional[int]:
    """``batch_axis`` as :func:`graphs.build` and :func:`graphs.compact` take it: None (inferred), 0 (batch first,
    ``[B, T, F]``) or 1 (sequence first, ``[T, B, F]``); anything else is refused, naming those."""
    if batch_axis is None or type(batch_axis) is int and batch_axis in (0, 1):
        return batch_axis
    raise ValueError(f"batch_axis must be None (inferred from the model's layers), 0 (batch first: [B, T, F]) or 1 "
                     f"(sequence first: [T, B, F]), got {batch_axis!r}")


def input_batch_axes(gm: fx.GraphModule, starts: Dict[str, Tuple[fx.Node, int]],
                     batch_axis: Optional[int] = None) -> Dict[str, int]:
    """The batch axis of each input ``starts`` names (its node in ``gm`` and its rank; a tuple input's items are
    their ``getitem`` nodes), where it is not axis 0: 1 where the input reaches the sequence-reading layers with
    its axis 1 on their batch axis, every time its axes are known there (see the module docstring). A
    ``batch_axis`` given holds for every input of two axes or more (a 1-D one is one value per sample)."""
    if batch_axis is not None:
        return {name: batch_axis for name, (_, rank) in starts.items() if rank >= 2 and batch_axis}
    return {name: 1 for name, (start, rank) in starts.items() if _follow(gm, start, rank, _sequence_reads) == {1}}


def input_channel_axes(gm: fx.GraphModule, starts: Dict[str, Tuple[fx.Node, int]],
                       batch_axes: Optional[Dict[str, int]] = None) -> Dict[str, int]:
    """The channel axis of each input ``starts`` names (as :func:`input_batch_axes` takes them), where it is not
    axis 1: the axis the first convolutions and linear layers reading it take as their input channels, where
    they all agree and its axes are known on the way to each (a channels-last image ``x.permute(0, 3, 1, 2)``
    into a Conv2d: axis 3); in every other case (a reshape on the way: the reading graphs always had) axis 1, or
    axis 0 for an input ``batch_axes`` puts its batch on axis 1 (the channels of its batch-first twin)."""
    found = {}
    for name, (start, rank) in starts.items():
        batch = (batch_axes or {}).get(name, 0)
        votes = _follow(gm, start, rank, _channel_reads)
        axis = next(iter(votes)) if len(votes) == 1 else None
        fallback = 0 if batch == 1 else 1
        axis = fallback if axis is None or axis == batch else axis  # the batch, whatever a layer makes of it
        if axis != 1:
            found[name] = axis
    return found
