"""Weight gradients of one layer grouped by the depth of the signal each weight reads.

In a net whose layers concatenate their output to their input (DenseNet-style), one weight matrix
reads signals that went through 0, 1, ..., L layers. Their gradients form distinct bands whose
typical magnitudes can differ by orders of magnitude; :func:`gradient_by_depth` measures those
bands over many batches and draws them.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Callable, List, Optional, Tuple

import torch
from torch import nn
from torch.utils._pytree import tree_leaves, tree_map

from ..connectome import _local_module, _plain_module
from ..metrics import _forward_owner, call_model, refuse_unpacked, to_device
from ._shared_calls import CallRecorder, TiedReads, TiedWeightError, parts_adding_up, tied_weight_error
from ._common import (LogHistogram, batch_loss, batch_statistics_explained, check_finite, default_loss, find_weight, iterate_batches,
                      kept_buffers, live_mask, measured_gradients, model_connectome, model_device, module_names,
                      plain_layer_name, scalers_suspended, warn_if_zeros)
from ..modes import modes_kept
from ..plots import closed_on_error
from .table import Table, pyplot, save_figure
from ..global_rng import kept_global_rng
from ..warn import warn_user

HOW_TO_PASS_DEPTHS = (
    "pass depths=LongTensor([...]) with one signal depth per input feature/channel of the layer "
    "(0 = raw input), or use a model with an input_depths(layer_name) method (adaptive.models.DenseCat)"
)


def resolve_depths(model: nn.Module, layer: str, depths=None, example: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Signal depth of each input unit of ``layer``: ``depths`` if given, else the model's own
    ``input_depths(layer)``, else the data flow traced by :mod:`graphs` (:func:`traced_depths`).
    Raises a ValueError saying how to pass them when none of these works, which includes a model fx
    cannot trace and an op the tracer cannot follow on the way to ``layer``: their depths would be wrong.
    ``example``: an input batch to trace with (its first example is used; default: an input the
    tracer builds from the model). A layer called several times in one forward: the depths its first
    call reads (:func:`resolve_call_depths` gives every call's)."""
    return resolve_call_depths(model, layer, depths, example)[0]


def resolve_call_depths(model: nn.Module, layer: str, depths=None, example=None,
                        traces: Optional[dict] = None) -> List[torch.Tensor]:
    """Signal depth of each input unit of ``layer`` at each of its calls in one forward, in call order:
    one tensor for a layer called once, one per call for a layer called several times (weight
    sharing), where each call reads a signal of another depth. ``depths``: one depth per input unit,
    or one row of them per call; else ``model.input_depths(layer)`` (one tensor); else traced (one
    per call, see :func:`traced_call_depths`), asked under ``layer`` and then under the module's other
    names (one held under several, ``self.out = self.head``: the model may know it by any of them).
    Errors as :func:`resolve_depths`. ``traces``: a dict kept by a caller that asks for many layers of
    one model and ``example`` (:class:`adaptive.diagnostics.BandGradientScaler` on a DenseNet): the
    model is traced once into it and every later layer reads that graph (see
    :func:`traced_call_depths`)."""
    if depths is not None:
        d = torch.as_tensor(depths, dtype=torch.long).cpu()
        return list(d) if d.dim() == 2 else [d.reshape(-1)]
    if hasattr(model, "input_depths"):
        module = dict(model.named_modules()).get(layer)
        names = [layer] + ([n for n in module_names(model, module) if n != layer] if module is not None else [])
        first_error = None
        for n in names:
            try:
                return [torch.as_tensor(model.input_depths(n), dtype=torch.long).reshape(-1).cpu()]
            except (KeyError, ValueError) as e:  # not a name the model knows the layer by: its next one
                first_error = first_error or e
        raise first_error
    try:
        return traced_call_depths(model, layer, example, traces)
    except TiedWeightError:  # no depths= would make its measurement right
        raise
    except Exception as e:  # tracing is best effort: say what failed and how to get past it
        raise ValueError(f"cannot tell the signal depth of the inputs of {layer!r} ({type(e).__name__}: {e}); "
                         f"{HOW_TO_PASS_DEPTHS}") from e


def traced_depths(model: nn.Module, layer: str, example: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Depth of each input unit of ``layer`` from the traced connectome graph (:func:`graphs.build`):
    the longest number of weighted layers between the model's input and that unit (0 = raw input, an
    embedding's lookup included: see :func:`graphs.analysis.signal_depth`; -1 for channels fed only by
    constants, such as zero padding). Raises a ValueError when fx cannot
    trace the model (the module-order fallback has no concatenation or residual links) or when an op
    the tracer cannot follow feeds ``layer``'s input (it would join every input to every output
    there); such an op elsewhere (on another head) is no obstacle. A layer called several times in
    one forward: its first call's (:func:`traced_call_depths` gives every call's)."""
    return traced_call_depths(model, layer, example)[0]


def first_example(batch):
    """The first example of every tensor of ``batch`` (a tensor, or nested tuples and lists of them) that
    has the batch's size first, the first such tensor's; a scalar or a table of another size beside
    them (``(x, temperature)``) is every example's, and stays whole."""
    leaves = [t for t in tree_leaves(batch) if torch.is_tensor(t) and t.dim() > 0]
    if not leaves:
        return batch
    size = leaves[0].shape[0]
    return tree_map(lambda t: t[:1] if torch.is_tensor(t) and t.dim() > 0 and t.shape[0] == size else t, batch)


def traced_call_depths(model: nn.Module, layer: str, example=None, traces: Optional[dict] = None) -> List[torch.Tensor]:
    """:func:`traced_depths` for each call of ``layer`` in one (eval-mode) forward of ``example``, in
    call order. The graph has a layer for every call of a module called several times (``NAME``,
    ``NAME#2``, ...: :func:`graphs.trace`), each reading what that call reads, so the depths of every
    call, and of every layer after a shared one, come from the model itself; graphs' note that a
    module is called more than once is not repeated here, where each call is measured on its own.
    ``traces``: a dict in which the trace and graph of ``model`` and ``example`` are kept, so that the
    depths of many layers take one trace (a trace of DenseNet-121 takes about a second: a scaler of
    its 121 layers spent over two minutes tracing it once per layer); None traces afresh. Keep it
    only while the model and ``example`` stay as they are."""
    name = layer[: -len(".weight")] if layer.endswith(".weight") else layer
    tr, g = traces["graph"] if traces is not None and "graph" in traces else _trace_graph(model, example)
    if traces is not None:
        traces["graph"] = (tr, g)
    depth = g.node_attrs["depth_max"]
    found = {lf.module: (lid, lf) for lid, lf in reversed(list(enumerate(g.layers)))}  # a label's first layer
    if name not in found:
        raise KeyError(f"the traced graph has no weighted layer {name!r}; it has {[lf.module for lf in g.layers][:12]}")
    param = found[name][1].param
    unread = [what for what, weights in tr.unknown_weights.items() if param in weights]
    if unread:  # that read's part of the gradient has depths no trace gives
        raise ValueError(f"{param!r} is also read by {len(unread)} op(s) the tracer cannot follow ({', '.join(unread[:3])}), "
                         "so the depths of what those reads multiply are unknown; follow the op's warning (register it "
                         "with graphs.register_op), or pass depths=")
    names = [name]
    while f"{name}#{len(names) + 1}" in found:
        names.append(f"{name}#{len(names) + 1}")
    params = dict(model.named_parameters(remove_duplicate=False))
    mine = params.get(param)
    tied = [lf.module for lf in g.layers if mine is not None and lf.module not in names and params.get(lf.param) is mine]
    if tied:  # a layer of another name reading the same Parameter (fx names a tied weight's read after its first name)
        raise tied_weight_error(name, tied)
    calls = []
    for n in names:
        lid, lf = found[n]
        unknown = _unknown_ops_feeding(g, tr, lf.in_src) if any(before <= lid for before, _ in tr.unknown) else []
        if unknown:
            raise ValueError(f"the data flow into {name!r} passes through {len(unknown)} op(s) the tracer cannot follow "
                             f"({', '.join(unknown[:3])}), so its depths would be wrong; follow each op's warning: "
                             "register it with graphs.register_op in the category the warning suggests (if that "
                             "category's description fits what the op does), or, where it says no category "
                             "fits, write the op with ones the tracer knows")
        calls.append(depth[lf.in_src].long().cpu())
    _warn_mixed_positions(g, name, [found[n][1].in_src for n in names])
    return calls


def _mixed_depths(g, in_src: torch.Tensor) -> Tuple[int, List[int]]:
    """How many of the input units ``in_src`` of a layer in the traced graph ``g`` read signals of several
    depths at different positions, and those depths: a unit graphs gives a ``mix`` junction (its positions
    hold other nodes: a concatenation along a non-channel axis, of tokens or of the batch) whose sources
    have more than one depth (constants, depth -1, such as zero padding, left out). A residual sum is no
    such unit: each of its values is one sum, at one (longest) depth."""
    mix = torch.tensor([gr.kind == "junction" and gr.op == "mix" for gr in g.groups] + [False])  # [-1]: no group
    group = g.node_attrs["group"]
    targets = torch.unique(in_src[mix[group[in_src]]])
    if targets.numel() == 0:
        return 0, []
    slot = torch.full((g.num_nodes,), -1, dtype=torch.long)
    slot[targets] = torch.arange(targets.numel())
    into = slot[g.dst] >= 0
    src_depth, which = g.node_attrs["depth_max"][g.src[into]].long(), slot[g.dst[into]]
    signal = src_depth >= 0
    src_depth, which = src_depth[signal], which[signal]
    lo = torch.full((targets.numel(),), 1 << 62, dtype=torch.long).scatter_reduce(0, which, src_depth, "amin")
    hi = torch.full((targets.numel(),), -1, dtype=torch.long).scatter_reduce(0, which, src_depth, "amax")
    mixed = (hi >= 0) & (lo < hi)
    if not bool(mixed.any()):
        return 0, []
    # the units of in_src (an input unit read twice counts twice) at such a junction, and its sources' depths
    at = slot[in_src]
    count = int(((at >= 0) & mixed[at.clamp_min(0)]).sum())
    return count, sorted(set(src_depth[mixed[which]].tolist()))


def _warn_mixed_positions(g, name: str, in_srcs: List[torch.Tensor]) -> None:
    """Warn where input units of ``name`` (any of its calls) read signals of several depths at different
    positions (:func:`_mixed_depths`): the gradient of a weight reading such a unit sums every depth's part,
    and lands in the band of the deepest, so its bands do not separate those signals."""
    found = [_mixed_depths(g, in_src) for in_src in in_srcs]
    count = sum(c for c, _ in found)
    if not count:
        return
    depths = sorted({d for _, ds in found for d in ds})
    total = sum(int(i.numel()) for i in in_srcs)
    warn_user(f"{count} of the {total} input units of {name!r} read signals of several depths ({depths}) at different "
              "positions (a concatenation along a non-channel axis: of tokens computed at other depths, such as raw "
              "inputs beside embedded ones, or of the batch): the gradient of a weight reading one sums the parts of every depth, "
              "and is counted in the band of the deepest, so the bands do not separate those signals. To measure "
              "them apart, concatenate such signals along the channel (feature) axis, or measure a layer that "
              "reads each on units of its own")


def _trace_graph(model: nn.Module, example=None):
    """``(trace, unit-level graph)`` of one eval-mode forward of ``example`` (:func:`graphs.trace`,
    :func:`graphs.build`); a ValueError where fx cannot trace the model."""
    import graphs

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"graphs: node .* uses weights used before in the forward")
        # the first example of every tensor in the input, given as one argument: the model is called
        # model(x) with x whole, while graphs takes a tuple as several arguments
        first = None if example is None else (first_example(example),)
        tr = graphs.trace(model, first)
        if not tr.traced:
            raise ValueError(" ".join(f"{tr.reason}; the module-order fallback has no concatenation or residual "
                                      "links, so its depths would be wrong".split()))
        g = graphs.build(model=model, level="unit", traced=tr)
    return tr, g


def _unknown_ops_feeding(g, tr, in_src: torch.Tensor) -> List[str]:
    """The ops the tracer could not follow (their junctions) from which a path of the traced graph
    ``g`` leads to the nodes ``in_src``: edges are walked backwards, group by group in reverse
    topological order (and again while recurrent back edges add nodes). An op that does not feed
    ``in_src`` (another head) leaves its depths alone."""
    above = torch.zeros(g.num_nodes, dtype=torch.bool)
    above[in_src] = True
    ptr = g.edge_ptr.tolist()
    spans = [(a, b) for a, b in zip(ptr[:-1], ptr[1:]) if b > a][::-1]
    while True:
        count = int(above.sum())
        for a, b in spans:
            above[g.src[a:b][above[g.dst[a:b]]]] = True
        if int(above.sum()) == count:
            break
    fed = {repr(gr.name) for gr in g.groups  # an unknown op's junction is named after its fx node
           if gr.kind == "junction" and gr.op == "unknown" and bool(above[gr.start:gr.start + gr.count].any())}
    return [d for _, d in tr.unknown if d.split(" ", 1)[0] in fed]  # d: "'node' (call_function op)"


def weight_depths(weight_shape, depths: torch.Tensor, groups: int = 1, transposed: bool = False) -> torch.Tensor:
    """Depth of the signal read by every element of a weight of shape ``weight_shape``, which is
    ``(out, in/groups, *kernel)`` (``(in, out/groups, *kernel)`` when ``transposed``: an
    ``nn.ConvTranspose*``), from ``depths``, the depth of each of the layer's input units. A Linear (a 2-d weight) fed by a flattened ``C x H x W`` map may
    be given one depth per channel (``C`` entries): each is repeated over its positions."""
    if transposed:
        n_in = int(weight_shape[0])
        if depths.numel() != n_in:
            raise ValueError(f"got {depths.numel()} depths but the transposed convolution has {n_in} input units "
                             f"(channels; its weight is (in, out/groups, *kernel)): give {n_in}; {HOW_TO_PASS_DEPTHS}")
        return depths.view(n_in, *([1] * (len(weight_shape) - 1))).expand(*weight_shape).contiguous()
    out, in_per_group = int(weight_shape[0]), int(weight_shape[1])
    n_in = in_per_group * groups
    if depths.numel() != n_in:
        if len(weight_shape) == 2 and depths.numel() > 0 and n_in % depths.numel() == 0:
            depths = depths.repeat_interleave(n_in // depths.numel())
        elif len(weight_shape) == 2:
            raise ValueError(
                f"got {depths.numel()} depths but the layer has {n_in} input units (features): give {n_in}, or one per "
                f"channel of the flattened C x H x W map feeding it (C dividing {n_in}); {HOW_TO_PASS_DEPTHS}"
            )
        else:
            raise ValueError(
                f"got {depths.numel()} depths but the layer has {n_in} input units (channels): give {n_in}, one per "
                f"input channel; {HOW_TO_PASS_DEPTHS}"
            )
    out_per_group = out // groups
    col = (torch.arange(out) // out_per_group).unsqueeze(1) * in_per_group + torch.arange(in_per_group)
    d = depths[col]  # (out, in_per_group)
    return d.view(out, in_per_group, *([1] * (len(weight_shape) - 2))).expand(*weight_shape).contiguous()


@dataclass
class GradientByDepth:
    """Per-band statistics of ``|grad|`` of one layer's weights over many batches.

    ``table`` has one row per source depth: weights, values (weights x batches), median, q1, q3,
    mean of ``|grad|``, and the fraction of exact zeros. ``per_weight`` is each weight's mean
    ``|grad|`` over the batches (the points of the figure), ``band`` its depth. ``layer`` is the
    weight's parameter name, ``depths`` the source depths present (sorted), ``batches`` the batches
    measured; ``title`` and ``meta`` are free for the caller (the figure's title, a record of the
    run's settings) and stay empty unless set. ``calls``: how many times the layer runs in one
    forward; a layer called several times (weight sharing) has each call's part of the gradient in
    the band of the depth that call reads, so ``per_weight``, ``band`` and the table's ``weights``
    count each weight once per call (call after call). ``no_grad_calls``: the calls (counted from 1)
    that ran under ``torch.no_grad()`` in some batch (their output did not require grad): they
    contribute no gradient, and their zeros are no measurement, so they are left out of the
    statistics (``per_weight`` is NaN for a call never measured); the table then has a ``note``
    column saying which bands they read, a band read only by them has no values (NaN statistics,
    "no gradient: ...") and takes no part in :meth:`ratio`.

    A pruned model (a connectome given or attached): only the layer's live synapses are measured.
    ``live`` is the layer's weight-shaped mask (None for a dense model), ``per_weight`` and ``band``
    then hold the live weights only (call after call, each in the order of
    ``weight[live]``), ``pruned`` counts the weights left out, and the table has a ``pruned``
    column (per band) and a note on a band whose weights are all pruned (no values, NaN statistics,
    no part in :meth:`ratio`).
    """

    layer: str
    depths: List[int]
    table: Table
    per_weight: torch.Tensor
    band: torch.Tensor
    batches: int
    title: str = ""
    meta: dict = field(default_factory=dict)
    calls: int = 1
    no_grad_calls: List[int] = field(default_factory=list)
    pruned: int = 0
    live: Optional[torch.Tensor] = None

    def medians(self) -> List[float]:
        return self.table["median"]

    def ratio(self) -> float:
        """Median ``|grad|`` of the shallowest signal band (depth >= 0: the band -1 of channels fed
        only by constants, such as zero padding, is left out) over that of the deepest band (NaN when
        the layer reads a single signal depth, or both medians are 0: there is nothing to compare; inf
        when only the deepest band's median is 0). A band without values (read only by calls under
        ``torch.no_grad()``, or with every weight pruned) is left out too."""
        m = [r["median"] for r in self.table if r["depth"] >= 0 and r["values"] > 0]
        if len(m) < 2 or m[0] == m[-1] == 0:
            return math.nan
        return m[0] / m[-1] if m[-1] > 0 else math.inf

    def no_ratio_reason(self) -> str:
        """Why :meth:`ratio` is NaN, in a few words (for a title or a printed line)."""
        signal = [r for r in self.table if r["depth"] >= 0]
        if sum(1 for r in signal if r["values"] > 0) < 2 <= len(signal):
            if any(r["values"] == 0 and r["weights"] == 0 for r in signal):
                return "bands pruned entirely (or without gradient) leave one signal band: no ratio"
            return "bands without gradient (called under torch.no_grad()) leave one signal band: no ratio"
        if len(signal) < 2:
            return "one signal band: no ratio"
        return "the shallowest and deepest bands' medians are both 0: no ratio"

    def plot(self, path, svg: bool = False, max_points_per_band: int = 4000, seed: int = 0):
        """One strip per source depth on a log axis: every weight (its mean ``|grad|`` over the
        batches; a random subset beyond ``max_points_per_band``) plus the band's median and
        quartiles over all weights and batches; under a band with exact zeros, their share ("<1%
        zero" when it is below a percent); the legend right of the axes. Where every gradient
        measured is exactly 0, a log axis has nothing to show: the axis is linear, with a note
        saying so. Returns the written paths."""
        plt = pyplot()
        fig, ax = plt.subplots(figsize=(1.2 + 0.75 * len(self.depths), 4.2))
        with closed_on_error(fig):
            g = torch.Generator().manual_seed(seed)
            for i, d in enumerate(self.depths):
                vals = self.per_weight[self.band == d]
                vals = vals[vals > 0]
                if vals.numel() > max_points_per_band:
                    vals = vals[torch.randperm(vals.numel(), generator=g)[:max_points_per_band]]
                x = i + (torch.rand(vals.numel(), generator=g) - 0.5) * 0.6
                ax.scatter(x.numpy(), vals.numpy(), s=3, alpha=0.35, color=f"C{i % 10}", linewidths=0,
                           label="one weight: mean |grad| over the batches" if i == 0 else None)
            row = {r["depth"]: r for r in self.table}
            xs = list(range(len(self.depths)))
            have = [i for i, d in enumerate(self.depths) if row[d]["values"] > 0]  # a band without gradient has no median
            med = [row[self.depths[i]]["median"] for i in have]
            lo = [row[self.depths[i]]["median"] - row[self.depths[i]]["q1"] for i in have]
            hi = [row[self.depths[i]]["q3"] - row[self.depths[i]]["median"] for i in have]
            ax.errorbar(have, med, yerr=[lo, hi], fmt="D", color="black", ms=5, capsize=4, label="median, quartiles (all batches)")
            if bool((self.per_weight > 0).any()):
                ax.set_yscale("log")
                # at least a decade: gradients all of one size (a band of equal inputs) autoscaled to 1.000-1.008,
                # where the median and quartiles' histogram bins (1/200 decade) looked like a spread above every point
                shown = self.per_weight[self.per_weight > 0]
                ends = [float(shown.min()), float(shown.max())] + [row[self.depths[i]][q] for i in have for q in ("q1", "q3")]
                lo, hi = min(ends), max(ends)
                if hi < 10 * lo:
                    mid = math.sqrt(lo * hi)
                    ax.set_ylim(mid / math.sqrt(10), mid * math.sqrt(10))
            else:  # (matplotlib warns that it cannot log-scale data without a positive value)
                ax.text(0.5, 0.9, "every gradient measured is exactly 0", transform=ax.transAxes, ha="center",
                        va="top", fontsize=9, color="C3")
            for i, d in enumerate(self.depths):  # exact zeros (dead units) have no place on a log axis: say how many
                z = row[d]["zero_fraction"]
                note = ("all pruned" if row[d]["weights"] == 0 else "no gradient:\nno_grad call" if row[d]["values"] == 0
                        else f"{_percent(z)} zero" if z > 0 else "")
                if note:
                    ax.annotate(note, (i, 0), xycoords=("data", "axes fraction"), xytext=(0, 3),
                                textcoords="offset points", ha="center", va="bottom", fontsize=7, color="C3")
            ax.set_xticks(xs, [str(d) for d in self.depths])
            ax.set_xlabel("depth of the signal read (layers it went through; 0 = raw input)")
            ax.set_ylabel(f"|dL/dw| of {self.layer} weights")
            ttl = self.title or f"{self.layer}: weight gradients by source depth"
            ratio = self.ratio()
            said = self.no_ratio_reason() if math.isnan(ratio) else f"shallowest/deepest signal band median ratio {ratio:.3g}"
            shared = (f"; called {self.calls} times per forward, each call's part in the band it reads"
                      if self.calls > 1 else "")
            if self.no_grad_calls:
                calls = ", ".join(map(str, self.no_grad_calls))
                shared += f"\ncall{'s' if len(self.no_grad_calls) > 1 else ''} {calls} under torch.no_grad(): no gradient, not measured"

            if self.pruned:
                shared += f"; live weights only ({self.pruned:,} pruned left out)"
            ax.set_title(f"{ttl}\n{self.batches} batches{shared}; {said}", fontsize=9)
            # outside the axes, right of them: inside, "best" could still cover a band's zero note
            ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1), borderaxespad=0)
            ax.grid(True, which="major", axis="y", alpha=0.3)
            return save_figure(fig, path, svg=svg)


def _percent(fraction: float) -> str:
    """``fraction`` as a whole percentage that never reads 0% or 100% when it is neither."""
    if 0 < fraction < 0.01:
        return "<1%"
    if 0.99 < fraction < 1:
        return ">99%"
    return f"{fraction:.0%}"


def _refuse_hooked_unpacked(model: nn.Module, x) -> None:
    """The 'separate arguments' refusal (:func:`adaptive.metrics.refuse_unpacked`) for a model under a forward
    pre-hook whose tracing failed: only a call tells whether the hook unpacks the inputs for a forward taking
    them as separate arguments, so the model is called once on ``x`` (without gradients); nothing when that
    call runs, or fails otherwise (the tracing error is then the one to read)."""
    if not isinstance(x, (tuple, list)) or not _forward_owner(model)[1]:
        return
    try:
        with torch.no_grad():
            model(x)
    except TypeError as e:
        refuse_unpacked(model, x, "gradient_by_depth", e)
    except Exception:  # noqa: BLE001 - another failure of the model's own: the tracing error says more
        pass


@kept_global_rng()
@torch.inference_mode(False)  # its tensors (sums, gradients) must be normal ones, whatever the caller's mode
def gradient_by_depth(
    model: nn.Module,
    loader,
    layer: str = "classifier",
    batches: Optional[int] = 50,
    loss_fn: Callable = default_loss,
    depths=None,
    train_mode: bool = True,
    device=None,
    cycle: bool = True,
    conn=None,
) -> GradientByDepth:
    """Measure the gradients of ``layer``'s weights, grouped by the signal depth of the input each
    weight reads, over ``batches`` batches of ``loader`` (one pass when None).

    Depths come from ``depths`` (one per input unit: feature or channel; a Linear fed by a flattened
    map may take one per channel), else ``model.input_depths(layer)``, else :mod:`graphs` tracing (see
    :func:`resolve_depths`). Only the weight's gradient is computed (``torch.autograd.grad``): the
    model's ``.grad`` fields, parameters and buffers (BatchNorm running statistics, which train mode
    would otherwise update) are left untouched, and an attached :class:`~adaptive.diagnostics.BandGradientScaler` neither
    scales the gradients measured nor updates its state (:func:`scalers_suspended`). A frozen
    ``layer`` (``requires_grad=False``) is measured too: its weight requires grad for the measurement
    and gets its flag back afterwards; a call under ``torch.no_grad()`` or ``torch.inference_mode()``
    measures as well (batches and model must be made outside inference mode).
    Statistics are over all weights x batches, in bounded memory (:class:`LogHistogram`).
    A layer called several times in one forward (weight sharing) reads a signal of another depth at
    each call: its gradient is split into each call's part (the call's output gradient through that
    call alone; the parts add up to the gradient), each counted in the band its call reads, with the
    depths of every call traced (``depths=`` may give one row per call, in call order; depths given
    once serve every call, with a warning). A call the model's own forward makes under
    ``torch.no_grad()`` contributes no gradient: it is left out, not counted as zeros
    (:attr:`GradientByDepth.no_grad_calls`), and a layer only called so is refused.
    ``cycle``: restart the loader (a new epoch) until ``batches`` batches have been seen (a generator or
    iterator cannot restart: fewer are read, with a warning).
    ``loss_fn(output, targets)``: the loss whose gradients are measured (default cross-entropy).
    ``train_mode``: run the model in train mode while measuring (False: eval mode); each module's
    own mode is restored afterwards. ``device``: where batches go (default: the model's device).
    The global random generators are left as it found them (dropout masks and a loader's pass seeds
    are drawn from them, then they are put back: :mod:`adaptive.global_rng`).
    A pruned model: pass its :class:`~adaptive.Connectome` as ``conn`` (one attached to an optimizer
    of ``model`` is found without it); only the layer's live synapses (mask True) enter the
    statistics, a pruned position's dense gradient being no synapse's (:class:`GradientByDepth`
    says how many were left out). A layer pruned entirely is refused: nothing of it exists to measure.
    A DDP or DataParallel model (``accelerator.prepare``'s) runs the module inside (a DDP forward is a
    collective), and ``layer`` is named as a connectome names it: ``NAME`` (``module.NAME``, the
    wrapper's name, is taken as ``NAME``). A module held under several names (``self.out = self.head``)
    is found by any of them and reported by its first, as a connectome names it.
    """
    layer = plain_layer_name(model, layer)  # a wrapper's name (module.NAME) given: NAME, as a connectome names it
    model = _local_module(model)  # a DDP model (accelerator.prepare's): the module inside, see _local_module
    conn = model_connectome(model, conn, "gradient_by_depth", "which synapses exist")
    plain = _plain_module(model)  # layers named as a connectome names them (a compiled model too)
    name, mod, weight = find_weight(plain, layer)
    live = live_mask(conn, weight)
    if conn is None:
        warn_if_zeros([weight.detach()], "gradient_by_depth", "their gradients are counted as those of live synapses")
    if live is not None and not bool(live.any()):
        raise ValueError(f"gradient_by_depth: every weight of {name!r} is pruned (the connectome's mask): no synapse of "
                         "it exists to measure; measure a layer with live synapses")
    device = device or model_device(model)
    groups, transposed = int(getattr(mod, "groups", 1)), bool(getattr(mod, "transposed", False))
    hist = bands = call_depths = recorder = per_weight = None
    n = 0
    one_sample = ("pass batches of at least 2 samples" + (", or measure in eval mode (train_mode=False), where BatchNorm "
                                                          "uses its running statistics" if train_mode else ""))
    with measured_gradients([weight], "gradient_by_depth"), kept_buffers(model), modes_kept(model, train_mode), \
            scalers_suspended(model), batch_statistics_explained("gradient_by_depth", one_sample):
        try:
            for x, y in iterate_batches(loader, batches, desc=f"gradients of {name}", cycle=cycle, warn_short=cycle):
                x, y = to_device(x, device), to_device(y, device)  # nested inputs (a tuple of tensors) too
                if call_depths is None:
                    refuse_unpacked(model, x, "gradient_by_depth")  # before tracing, which would fail less clearly
                    try:
                        call_depths = resolve_call_depths(plain, name, depths, example=x)
                    except ValueError:
                        _refuse_hooked_unpacked(model, x)
                        raise
                    recorder = CallRecorder(mod)  # after the tracing, whose forward it would record
                    tied = TiedReads(plain, mod, weight)  # (an Embedding tied to a head reads it too)
                recorder.clear()
                loss = batch_loss(loss_fn, call_model(model, x, "gradient_by_depth"), y, f"gradient_by_depth's batch {n + 1}")
                tied.check(name, "gradient_by_depth")
                (g,) = torch.autograd.grad(loss, [weight], allow_unused=True)
                if g is None and recorder.calls and all(c["no_grad"] for c in recorder.calls):
                    raise ValueError(f"gradient_by_depth: layer {name!r} has no gradient: the model's forward calls it "
                                     "only under torch.no_grad() (or torch.inference_mode(), or detaches its output), "
                                     "so nothing it does reaches the loss's gradient; measure a layer the forward runs "
                                     "with grad enabled. A reentrant torch.utils.checkpoint (use_reentrant=True) runs "
                                     "its function so too, to run it again in the backward, out of this measurement's "
                                     "reach: pass use_reentrant=False")
                if g is None:  # autograd's own error asked for allow_unused=True, which is not the fix
                    raise ValueError(f"gradient_by_depth: layer {name!r} takes no part in the loss (the model's forward "
                                     "does not use it, or its output does not reach the loss), so it has no gradient: "
                                     "pick a layer on the way to the output")
                check_finite(g, "gradient_by_depth", name, n + 1)
                calls = len(recorder.calls)
                if bands is None:
                    source = ("given" if depths is not None else "input_depths" if hasattr(plain, "input_depths")
                              else "traced")
                    uniq, bands = _call_bands(name, weight.shape, call_depths, calls, groups, transposed, source,
                                              train_mode)
                    hist = LogHistogram(len(uniq))
                    per_weight = torch.zeros(len(bands), *weight.shape, dtype=torch.float64)
                    measured = torch.zeros(len(bands))  # batches each call's part was measured in
                elif max(calls, 1) != len(bands):  # (no call at all: the one read of the weight, as above)
                    raise ValueError(f"gradient_by_depth: {name!r} was called {len(bands)} times in the first batch's "
                                     f"forward and {calls} times in batch {n + 1}'s: its calls' depths differ from "
                                     "batch to batch; measure a layer called the same number of times in every forward")
                parts = [g] if len(bands) == 1 else parts_adding_up(
                    "gradient_by_depth", name, recorder.gradient_parts(weight, "gradient_by_depth"), g,
                    "measure a layer whose weight only its own calls read")
                for k, part in enumerate(parts):
                    if recorder.calls and recorder.calls[k]["no_grad"]:  # a zero that measures nothing
                        continue
                    a = part.detach().abs().cpu()
                    hist.update(*((a, bands[k]) if live is None else (a[live], bands[k][live])))
                    per_weight[k] += a.double()
                    measured[k] += 1
                n += 1
        finally:
            if recorder is not None:
                recorder.remove()
                tied.remove()
    per_weight /= measured.double().view(-1, *[1] * weight.dim())  # NaN for a call never measured
    q1, med, q3, mean = hist.quantile(0.25), hist.quantile(0.5), hist.quantile(0.75), hist.mean()
    tot = hist.total()
    band_of = uniq[torch.stack(bands)]  # (calls, *weight.shape)
    if live is not None:  # the live synapses only, call after call
        per_weight, band_of = per_weight[:, live], band_of[:, live]
        pruned_of = uniq[torch.stack(bands)][:, ~live].reshape(-1)
    wd_flat = band_of.reshape(-1)
    no_grad = [k + 1 for k in range(len(bands)) if measured[k] < n]
    notes = _no_grad_notes(uniq, bands, measured, n, tot)
    if live is not None:  # a band of pruned weights only: say why it has no values
        notes = [note or ("every weight pruned: nothing measured" if not bool((wd_flat == d).any()) else "")
                 for note, d in zip(notes, uniq.tolist())]
    if len(uniq) == 1:
        warn_user(f"every input of {name!r} carries a signal of depth {int(uniq[0])}: one band, nothing to "
                      "compare (ratio() is NaN); pick a layer that reads a concatenation of signals of several depths, "
                      "or pass depths=")
    rows = []
    for i, d in enumerate(uniq.tolist()):
        stat = (lambda v: float(v[i])) if tot[i] > 0 else (lambda v: math.nan)  # no value: no statistic, not 0
        rows.append({
            "depth": int(d),
            "weights": int((wd_flat == d).sum()),
            "values": int(tot[i]),
            "median": stat(med),
            "q1": stat(q1),
            "q3": stat(q3),
            "mean": stat(mean),
            "zero_fraction": stat(hist.zeros / tot.clamp_min(1)),
            **({} if live is None else {"pruned": int((pruned_of == d).sum())}),
            **({"note": notes[i]} if any(notes) else {}),
        })
    return GradientByDepth(
        layer=name,
        depths=[int(d) for d in uniq.tolist()],
        table=Table(rows),
        per_weight=per_weight.float().reshape(-1),
        band=wd_flat,
        batches=n,
        calls=len(bands),
        no_grad_calls=no_grad,
        pruned=0 if live is None else int((~live).sum()),
        live=live,
    )


def _no_grad_notes(uniq, bands, measured, n, tot) -> List[str]:
    """Per band, what the calls run under ``torch.no_grad()`` (no gradient: not measured) left out of
    it: the whole band (``no gradient``) or some of its values; empty where no such call reads it."""
    notes = []
    for i in range(len(uniq)):
        left = [k + 1 for k in range(len(bands)) if measured[k] < n and bool((bands[k] == i).any())]
        if not left:
            notes.append("")
            continue
        which = f"call{'s' if len(left) > 1 else ''} {', '.join(map(str, left))}"
        notes.append(f"no gradient: {which} ran under torch.no_grad(), not measured" if tot[i] == 0 else
                     f"{which} ran under torch.no_grad() (in {int(n - min(measured[k - 1] for k in left))} of {n} "
                     "batches): not counted")
    return notes


def _call_bands(name, shape, call_depths, calls, groups, transposed, source, train_mode):
    """The depths present (sorted) and, per call of the layer, each weight's index among them: the
    band its part of the gradient in that call goes to. Depths given once for a layer called several
    times (``depths=`` of one row, ``input_depths``) serve every call, with a warning. ``source``:
    where ``call_depths`` came from (given, input_depths or traced)."""
    if calls == 0 and len(call_depths) == 1:
        # the module is never called: its weight is read, once, by the op that holds it (nn.MultiheadAttention
        # reads out_proj.weight in F.multi_head_attention_forward; F.linear(x, layer.weight)), so the whole
        # gradient is that read's
        calls = 1
    if source == "traced" and len(call_depths) != calls:
        raise ValueError(f"gradient_by_depth: the traced graph (an eval-mode forward) has {len(call_depths)} layer(s) "
                         f"using the weight of {name!r}, but the measured forward ({'train' if train_mode else 'eval'} mode) "
                         f"called {name!r} {calls} time(s): a call made in one mode only, or an op reading the weight "
                         "outside the module's calls (F.linear(x, layer.weight)), so the traced depths do not say which "
                         "call reads which; measure in eval mode (train_mode=False) where the calls then match, or "
                         "pass depths= with one row per call of the module, in call order")
    if len(call_depths) == 1 and calls > 1:
        what = "given (depths=)" if source == "given" else "of the model's input_depths()"
        warn_user(f"{name!r} is called {calls} times in each forward (weight sharing), and each call reads a signal of "
                  f"another depth, but the depths {what} describe its inputs once: every call's part of the gradient "
                  "goes to the bands of those depths. Pass depths= with one row per call, in call order, to give each "
                  "call its own")
        call_depths = call_depths * calls
    if len(call_depths) != calls:
        raise ValueError(f"{len(call_depths)} rows of depths for {name!r}, which is called {calls} times in each forward: "
                         "give one row of depths per call, in call order (or one row for all)")
    wds = [weight_depths(shape, d, groups, transposed) for d in call_depths]
    uniq = torch.unique(torch.stack(wds))
    return uniq, [torch.searchsorted(uniq, wd.reshape(-1)).view(shape) for wd in wds]
