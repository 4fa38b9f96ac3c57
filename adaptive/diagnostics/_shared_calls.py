"""Layers called more than once in one forward (weight sharing), for the gradient-by-depth diagnostic.

Each call of a shared layer reads a signal of its own depth (the traced graph has a layer per call,
``NAME#k``), and the weight's gradient is the sum of each call's part: :class:`CallRecorder` splits a
measured gradient into the calls' parts.
"""
from __future__ import annotations

from typing import List

import torch
from torch import nn


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
