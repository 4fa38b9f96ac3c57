"""Layers called more than once in one forward (weight sharing), for the gradient-by-depth
diagnostic and the band scaler.

Each call of a shared layer reads a signal of its own depth (the traced graph has a layer per call,
``NAME#k``), and the weight's gradient is the sum of each call's part: :class:`CallRecorder` splits a
gradient into the calls' parts, and tells the calls that took no part in autograd (run under
``torch.no_grad()``), whose part is no measurement.
"""
from __future__ import annotations

import contextlib
from typing import List, Optional, Tuple

import torch
from torch import nn


class CallRecorder:
    """Records each call of ``module`` in a forward: its inputs, whether its output requires grad
    (``call["no_grad"]``: True where it ran under ``torch.no_grad()`` or ``torch.inference_mode()``,
    or returned a detached output; such a call's inputs are not kept), the autocast it ran under, and,
    once a backward pass has run through it, the gradient of the loss with respect to its output as
    the call returned it (a tensor hook: an in-place edit of the output afterwards does not change it);
    of each of its tensors where it returns several (in tuples, lists and dicts: an LSTM's
    ``(output, (h, c))``, an attention's ``(output, weights)``).
    :meth:`gradient_parts` then gives the part of the weight's gradient that each call contributes
    (they add up to the weight's gradient). ``keep_inputs=False``: only whether each call requires
    grad is kept (no parts). A call made while a backward pass runs is not recorded: it is gradient
    checkpointing (``torch.utils.checkpoint``) recomputing a call of the forward, already recorded.
    :meth:`clear` before each forward; :meth:`remove` at the end."""

    def __init__(self, module: nn.Module, keep_inputs: bool = True):
        self.module, self.calls, self.keep_inputs = module, [], keep_inputs
        self.handle = module.register_forward_hook(self._record, with_kwargs=True)

    def _record(self, module, args, kwargs, out):
        if torch._C._current_graph_task_id() != -1:  # a checkpoint's recomputation, inside the backward
            return
        tensors = _tensors(out)
        live = any(t.requires_grad for t in tensors) if tensors else torch.is_grad_enabled()
        keep = live and self.keep_inputs
        cast = [(d, torch.get_autocast_dtype(d)) for d in ("cpu", "cuda") if keep and torch.is_autocast_enabled(d)]
        call = {"args": args if keep else None, "kwargs": kwargs if keep else None, "grads": {}, "no_grad": not live,
                "autocast": cast, "derived": None}
        if keep:
            inputs = _tensors([*args, *kwargs.values()])
            # one hook per autograd edge: a tensor returned twice has its gradient once; an input returned as it
            # came has no part (the part holds the inputs fixed), and what the call computed from it is no double count
            edges, given = {}, {_edge(t) for t in inputs}
            for i, t in enumerate(tensors):
                edge = _edge(t)
                if t.requires_grad and edge not in edges and edge not in given:
                    edges[edge] = i
                    t.register_hook(lambda g, i=i: call["grads"].__setitem__(i, g))
            if len(edges) > 1:
                call["derived"] = _derived_output(edges, inputs)
        self.calls.append(call)

    def clear(self) -> None:
        self.calls = []

    def remove(self) -> None:
        self.handle.remove()
        self.calls = []

    def gradient_parts(self, weight: torch.Tensor, who: str = "CallRecorder") -> List[torch.Tensor]:
        """Per call, the gradient of the loss with respect to ``weight`` through that call alone: the
        call's output gradient pulled back through the call's own operation, its inputs held fixed
        (the calls before it reach the loss through its input, and are counted in their own part).
        Zero for a call whose output no gradient reached (run under ``torch.no_grad()``, or off the
        loss's path). Runs with grad enabled and under the autocast the call ran under (its output
        gradient has the dtype autocast gave the output), so it works inside a backward pass (a
        gradient hook); hooks on ``weight`` run for the parts too. A call returning several tensors:
        the pull-back of each one's gradient (those the loss reached). Refused (ValueError from ``who``)
        where a call returns a tensor computed from another it returns (``y`` and ``y[:, -1]``): the
        gradient reaching the first holds the second's, so its part would be counted twice."""
        parts = []
        for k, call in enumerate(self.calls):
            if call["derived"] and call["grads"]:
                i, j = call["derived"]
                raise ValueError(
                    f"{who}: call {k + 1} of {type(self.module).__name__} returns tensor {j + 1} (of the tensors it "
                    f"returns, in order) computed from tensor {i + 1}, which it returns too (as y and y[:, -1]): the "
                    f"gradient reaching tensor {i + 1} holds tensor {j + 1}'s as well, so the calls' parts of the "
                    f"weight's gradient cannot be told apart; compute tensor {j + 1} outside the layer from its "
                    "output, or measure a layer whose returned tensors are not computed from one another")
            g = None
            if call["grads"]:
                args, kwargs = _detached(call["args"]), _detached(call["kwargs"])
                with torch.enable_grad(), contextlib.ExitStack() as cast:
                    for device, dtype in call["autocast"]:
                        cast.enter_context(torch.autocast(device, dtype=dtype))
                    outs = _tensors(self.module.forward(*args, **kwargs))
                    reached = [(outs[i], grad) for i, grad in sorted(call["grads"].items()) if outs[i].requires_grad]
                    if reached:  # (a tensor computed from the inputs alone has no part)
                        (g,) = torch.autograd.grad([o for o, _ in reached], [weight], [grad for _, grad in reached],
                                                   allow_unused=True)
            parts.append(torch.zeros_like(weight) if g is None else g)
        return parts


def _tensors(out) -> List[torch.Tensor]:
    """The tensors a module returned, in order: ``out`` itself, or those in its tuples, lists and dicts."""
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, (tuple, list)):
        return [t for o in out for t in _tensors(o)]
    if isinstance(out, dict):
        return [t for o in out.values() for t in _tensors(o)]
    return []


def _detached(x):
    """``x`` with every tensor in it detached, in its tuples (an LSTM's state ``(h, c)``, a
    PackedSequence), lists and dicts too: a call's inputs held fixed."""
    if isinstance(x, torch.Tensor):
        return x.detach()
    if isinstance(x, tuple):
        items = [_detached(o) for o in x]
        return type(x)(*items) if hasattr(x, "_fields") else type(x)(items)
    if isinstance(x, list):
        return [_detached(o) for o in x]
    if isinstance(x, dict):
        return {k: _detached(v) for k, v in x.items()}
    return x


def _edge(t: torch.Tensor):
    """The autograd edge ``t`` stands for: its node and which of the node's outputs it is (``t``'s
    id where it has no node: a leaf)."""
    return (t.grad_fn, t.output_nr) if t.grad_fn is not None else id(t)


def _derived_output(edges: dict, inputs) -> Optional[Tuple[int, int]]:
    """``(i, j)`` where a call's returned tensor ``j`` is computed from its returned tensor ``i``, else
    None. ``edges``: each returned tensor's index by its autograd edge; the walk back from each stays
    in the call's own graph, stopping at the nodes of its ``inputs`` (every tensor it was given)."""
    stop = {t.grad_fn for t in inputs if t.grad_fn is not None}
    for edge, j in edges.items():
        todo, seen = [edge[0]] if isinstance(edge, tuple) else [], set()
        while todo:
            for nxt in todo.pop().next_functions:
                if nxt in edges and edges[nxt] != j:
                    return edges[nxt], j
                if nxt[0] is not None and nxt[0] not in seen and nxt[0] not in stop:
                    seen.add(nxt[0])
                    todo.append(nxt[0])
    return None


class TiedWeightError(ValueError):
    """A layer's weight is also another module's (tied: the same Parameter), which the forward reads too."""


def tied_weight_error(name: str, others: List[str], who: str = "", action: str = "measure") -> TiedWeightError:
    """The refusal (from ``who``) of layer ``name``, whose weight ``others`` (modules, or layers of the traced
    graph) read as their own: the gradient holds their reads' parts, which no depth of ``name``'s inputs describes.
    ``action``: what ``who`` does to a layer (measure, scale)."""
    return TiedWeightError(
        (f"{who}: " if who else "") + f"the weight of {name!r} is also that of {others[:4]} (a tied weight: the same Parameter), which the forward "
        f"reads too: its gradient holds that read's part, which the depths of {name!r}'s inputs do not describe; "
        f"{action} a layer whose weight no other module reads (give each module its own copy to {action} them apart)")


class TiedReads:
    """Watches the modules of ``model`` other than ``module`` that hold ``weight`` as a parameter of their
    own (tied: an Embedding sharing its table with a head), recording those a forward runs with grad
    enabled: their read's part of the weight's gradient is no call of ``module``'s, and no depth of its
    inputs describes it. The traced graph's check (:func:`~adaptive.diagnostics.gradient_depth.traced_call_depths`)
    misses such a module where depths are given or the tracer does not count it as a weighted layer (an
    Embedding's lookup). :meth:`check` refuses once one has run; :meth:`clear` before each forward;
    :meth:`remove` at the end."""

    def __init__(self, model: nn.Module, module: nn.Module, weight: nn.Parameter):
        self.modules = {n: m for n, m in model.named_modules()
                        if m is not module and any(p is weight for p in m.parameters(recurse=False))}
        self.ran: List[str] = []
        self._handles = [m.register_forward_hook(lambda *_, n=n: self.ran.append(n) if torch.is_grad_enabled() else None)
                         for n, m in self.modules.items()]

    def check(self, name: str, who: str, action: str = "measure") -> None:
        """Refuse (:class:`TiedWeightError`, from ``who``) layer ``name`` if a tied module ran since :meth:`clear`."""
        if self.ran:
            raise tied_weight_error(name, sorted(set(self.ran)), who, action)

    def clear(self) -> None:
        self.ran.clear()

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()


def parts_adding_up(who: str, name: str, parts: List[torch.Tensor], g: torch.Tensor, fix: str) -> List[torch.Tensor]:
    """``parts``, the calls' parts of the gradient ``g`` of layer ``name``, once checked to add up to
    it (to 1% of its largest entry: the sums run in another order); else a ValueError from ``who``
    ending in ``fix``. They miss what an op reading the weight outside the module's calls contributes."""
    gap = float((torch.stack(parts).sum(0) - g).abs().max())
    if gap > 1e-2 * float(g.abs().max()):
        raise ValueError(f"{who}: the parts of the gradient of {name!r} that its {len(parts)} calls contribute do not add "
                         f"up to the gradient (off by up to {gap:.3g}): the weight is also read outside the module's calls "
                         f"(F.linear(x, layer.weight), a tied weight), whose part no call carries; {fix}")
    return parts
