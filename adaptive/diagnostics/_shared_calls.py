"""Layers called more than once in one forward (weight sharing), for the gradient-by-depth diagnostic.

Each call of a shared layer reads a signal of its own depth, and the weight's gradient is the sum of
each call's part. :func:`unrolled_for_tracing` gives the tracer a copy in which every call has a
layer of its own (so each call, and everything downstream of it, gets its own depths), and
:class:`CallRecorder` splits a measured gradient into the calls' parts.
"""
from __future__ import annotations

import copy
from typing import Dict, List

import torch
from torch import nn

from ._common import kept_buffers, training_mode


def calls_per_forward(model: nn.Module, example) -> Dict[str, int]:
    """How many times each parameter-holding leaf module of ``model`` (a Linear, a Conv, ...) is
    called in one eval-mode forward of ``example`` (a tensor or a tuple of them), for those called
    more than once. The model, its buffers included, is left as it was."""
    counts: Dict[str, int] = {}

    def count(name):
        return lambda module, args: counts.__setitem__(name, counts.get(name, 0) + 1)

    hooks = [m.register_forward_pre_hook(count(n)) for n, m in model.named_modules()
             if next(m.children(), None) is None and next(m.parameters(recurse=False), None) is not None]
    try:
        with torch.no_grad(), training_mode(model, False), kept_buffers(model):
            model(*example) if isinstance(example, (tuple, list)) else model(example)
    finally:
        for h in hooks:
            h.remove()
    return {n: c for n, c in counts.items() if c > 1}


class _PerCall(nn.Module):
    """Stands in for a module called ``calls`` times per forward: its k-th call in each forward runs
    the copy ``call{k}``, so a traced graph has one layer (and units of its own) per call."""

    def __init__(self, module: nn.Module, calls: int):
        super().__init__()
        for k in range(calls):
            self.add_module(f"call{k}", copy.deepcopy(module))
        self.calls, self.next = calls, 0

    def forward(self, *args, **kwargs):
        module = getattr(self, f"call{self.next % self.calls}")
        self.next += 1
        return module(*args, **kwargs)


def unrolled_for_tracing(model: nn.Module, calls: Dict[str, int]) -> nn.Module:
    """A copy of ``model`` in which each module of ``calls`` (name -> calls per forward) is replaced by
    one copy per call, named ``NAME.call0``, ``NAME.call1``, ... in call order. Only for tracing:
    the copies do not share their weights."""
    unrolled = copy.deepcopy(model)
    for name, n in calls.items():
        parent, _, child = name.rpartition(".")
        owner = unrolled.get_submodule(parent) if parent else unrolled
        setattr(owner, child, _PerCall(getattr(owner, child), n))
    return unrolled


class CallRecorder:
    """Records each call of ``module`` in a forward: its inputs, and, once a backward pass has run
    through it, the gradient of the loss with respect to its output as the call returned it (a
    tensor hook: an in-place edit of the output afterwards does not change it).
    :meth:`gradient_parts` then gives the part of the weight's gradient that each call contributes
    (they add up to the weight's gradient). :meth:`clear` before each forward; :meth:`remove` at the end."""

    def __init__(self, module: nn.Module):
        self.module, self.calls = module, []
        self.handle = module.register_forward_hook(self._record, with_kwargs=True)

    def _record(self, module, args, kwargs, out):
        call = {"args": args, "kwargs": kwargs, "grad": None}
        if isinstance(out, torch.Tensor) and out.requires_grad:
            out.register_hook(lambda g: call.__setitem__("grad", g))
        self.calls.append(call)

    def clear(self) -> None:
        self.calls = []

    def remove(self) -> None:
        self.handle.remove()
        self.calls = []

    def gradient_parts(self, weight: torch.Tensor) -> List[torch.Tensor]:
        """Per call, the gradient of the loss with respect to ``weight`` through that call alone: the
        call's output gradient pulled back through the call's own operation, its inputs held fixed
        (the calls before it reach the loss through its input, and are counted in their own part)."""
        parts = []
        for call in self.calls:
            g = None
            if call["grad"] is not None:
                args = [a.detach() if isinstance(a, torch.Tensor) else a for a in call["args"]]
                kwargs = {k: v.detach() if isinstance(v, torch.Tensor) else v for k, v in call["kwargs"].items()}
                out = self.module.forward(*args, **kwargs)
                (g,) = torch.autograd.grad(out, [weight], call["grad"], allow_unused=True)
            parts.append(torch.zeros_like(weight) if g is None else g)
        return parts
