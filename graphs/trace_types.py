"""What a trace records: the kinds of nodes and edges, the :class:`Group` of node ids each event creates, the
:class:`LayerFlow` of each weighted layer and the :class:`Trace` holding them all; and the errors raised on an
example input (:class:`InputError`) or where none could be guessed (:class:`InputGuessError`)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from adaptive.discovery import to_out_in


CONST, INPUT, UNIT, JUNCTION, OUTPUT = range(5)
KIND_NAMES = ("constant", "input", "unit", "junction", "output")
# edge kinds: a live synapse (or the synapses joining two nodes), a wire into a junction (or into a
# recurrent layer's state node, from its initial state), a recurrent back edge (see _on_recurrent)
EDGE_SYNAPSE, EDGE_WIRE, EDGE_RECURRENT = 0, 1, 2


@dataclass
class Group:
    """A contiguous range of node ids created by one event (an input, a layer, a junction op)."""

    name: str
    kind: str  # constant | input | layer | junction | output
    op: str
    start: int
    count: int
    layer: int = -1  # index into Trace.layers for kind == "layer"


@dataclass
class LayerFlow:
    """One weighted layer: its units and the node feeding each of its input channels. ``module`` is
    the module's name, or for the parts of an attention or recurrent module a label under it
    (``attn.q``, ``rnn.l0_reverse.hh``), with ``#k`` for the k-th call of a module called more than once
    (``fc#2``, ``attn.q#2``: a layer of its own, sharing the weight); ``param`` is always the weight's
    parameter name. ``shape``
    is ``(out, in/groups, *kernel)``; a transposed convolution's parameter is stored
    ``(in, out/groups, *kernel)``, which :meth:`part` turns into that layout."""

    module: str
    param: str
    group: int
    kind: str  # linear | conv1d | conv2d | conv3d | convtranspose1d | convtranspose2d | convtranspose3d
    shape: tuple
    groups: int
    in_src: torch.Tensor  # LongTensor [in_units]: node id feeding each input channel/feature
    fx_node: str = ""
    rows: Optional[Tuple[int, int]] = None  # the rows of ``param`` this layer is (attention q/k/v), else all
    transposed: bool = False  # the parameter is (in, out/groups, *kernel) (nn.ConvTranspose*)

    def part(self, t: torch.Tensor) -> torch.Tensor:
        """This layer's rows of a tensor shaped like the whole parameter, laid out as ``shape``."""
        if self.transposed:
            return to_out_in(t, self.groups)  # as a transposed layer's granularity sees it
        return t if self.rows is None else t[self.rows[0]:self.rows[1]]


@dataclass
class Trace:
    groups: List[Group]
    layers: List[LayerFlow]
    wires: Dict[int, Tuple[torch.Tensor, torch.Tensor]]  # group id -> (src, dst) into that group
    concats: List[dict]  # {"node": name, "parts": [(operand name, LongTensor ids)]}
    warnings: List[str] = field(default_factory=list)
    traced: bool = True  # False: fx could not trace the model (``reason`` says why); module order stands in
    # group id of a recurrent layer's state nodes -> (src, dst): the units whose values the state
    # nodes hold at the next time step (the graph's back edges, kind "recurrent")
    recurrent: Dict[int, Tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)
    # ops the tracer could not follow (it assumed every input feeds every output there): for each, the
    # number of layers recorded before it (those layers' inputs do not depend on it) and its description
    unknown: List[Tuple[int, str]] = field(default_factory=list)
    reason: str = ""  # why fx could not trace the model, when ``traced`` is False
    # each unknown op's description (as in ``unknown``) -> the parameters it reads: a module's own, or
    # those its operands are computed from (``x @ self.w``); the layers whose wiring the graph guesses
    unknown_weights: Dict[str, List[str]] = field(default_factory=dict)
    batch_axis: Optional[int] = None  # the batch axis the caller fixed for the inputs (None: inferred per input)

    @property
    def num_nodes(self) -> int:
        g = self.groups[-1]
        return g.start + g.count

    def node_table(self) -> Dict[str, torch.Tensor]:
        """kind, group, layer and index of every node, as LongTensors of length num_nodes."""
        counts = torch.tensor([g.count for g in self.groups])
        group = torch.repeat_interleave(torch.arange(len(self.groups)), counts)
        starts = torch.tensor([g.start for g in self.groups])
        kind_of = {"constant": CONST, "input": INPUT, "layer": UNIT, "junction": JUNCTION, "output": OUTPUT}
        gkind = torch.tensor([kind_of[g.kind] for g in self.groups])
        glayer = torch.tensor([g.layer for g in self.groups])
        return {
            "kind": gkind[group],
            "group": group,
            "layer": glayer[group],
            "index": torch.arange(self.num_nodes) - starts[group],
        }


class InputError(ValueError):
    """The example input does not fit the trace (no batch dimension): raised, never taken for an
    op the tracer does not know."""


class ExampleInputError(RuntimeError):
    """The model failed on the caller's ``example_input``: ``failure`` says on what input, what and where, ``fix``
    what to pass instead (the Python API's words: the command line gives its own, naming its options)."""

    def __init__(self, failure: str, fix: str = ""):
        self.failure, self.fix = failure, fix
        super().__init__(failure + fix)


class InputGuessError(ValueError):
    """No example input could be guessed for a model (none of the guesses ran): pass one. ``what`` says
    which model and why, ``tried`` what each guess raised (empty where there was nothing to guess from),
    ``inputs`` the names of the inputs its forward takes where it takes more than one (never guessed),
    ``keyword`` those of them that are keyword-only (given in the tuple too, after the positional ones)."""

    def __init__(self, what: str, tried: str = "", inputs: Sequence[str] = (), keyword: Sequence[str] = ()):
        self.what, self.tried, self.inputs, self.keyword = what, tried, tuple(inputs), tuple(keyword)
        super().__init__(f"{what}{f' ({tried})' if tried else ''}: pass example_input={self.example()}")

    def example(self, batch: str = "") -> str:
        """What to pass as ``example_input`` (``batch``: words said of each tensor)."""
        if len(self.inputs) < 2:
            return "tensor"
        them = "it" if len(self.keyword) == 1 else "them"
        last = f" ({', '.join(self.keyword)}: keyword-only, last; graphs passes {them} by name)" if self.keyword else ""
        return f"({', '.join(self.inputs)}), a tensor each{batch}{last}"
